/* bcounter: quota as a bounded counter (escrow): rights granted by the region, consumed by sites.
 */
#include "ap/bcounter.h"

#include "ap/base.h"
#include "ap/err.h"

#include <stdio.h>
#include <string.h>

static const char *resource_names[] = {"instances", "cpu_millis", "memory_mb"};

const char *ap_bc_resource_str(enum ap_bc_resource r)
{
    return (unsigned)r < AP_ARRAY_LEN(resource_names) ? resource_names[r] : "?";
}

int ap_bc_resource_parse(const char *s, enum ap_bc_resource *out)
{
    for (size_t i = 0; s != NULL && i < AP_ARRAY_LEN(resource_names); i++) {
        if (strcmp(s, resource_names[i]) == 0) {
            *out = (enum ap_bc_resource)i;
            return 0;
        }
    }
    return AP_EINVAL;
}

static bool stamp_valid(struct ap_hlc_ts ts)
{
    return (ts.physical_ms != 0 || ts.logical != 0 || ts.node != 0) &&
           ts.physical_ms <= AP_HLC_PHYSICAL_MAX;
}

/* Order of two stamped values: the stamp, then the value, so ties never depend on argument order.
 */
static int stamped_cmp(struct ap_hlc_ts ta, uint64_t va, struct ap_hlc_ts tb, uint64_t vb)
{
    int c = ap_hlc_compare(ta, tb);
    return c != 0 ? c : (va > vb) - (va < vb);
}

int ap_bc_region_set_limit(struct ap_bc_region *r, uint64_t limit, struct ap_hlc_ts ts)
{
    if (!stamp_valid(ts)) {
        return AP_EINVAL;
    }
    if (ap_hlc_compare(ts, r->limit_ts) <= 0) {
        return AP_EAGAIN;
    }
    r->limit = limit;
    r->limit_ts = ts;
    return 0;
}

bool ap_bc_merge_region(struct ap_bc_region *into, const struct ap_bc_region *other)
{
    /*
     * Ties (same stamp, different limits) cannot come from one clock; when
     * they do, the smaller limit is the safe choice.
     */
    int c = ap_hlc_compare(other->limit_ts, into->limit_ts);
    if (c < 0 || (c == 0 && other->limit >= into->limit)) {
        return false;
    }
    *into = *other;
    return true;
}

uint64_t ap_bc_site_held(const struct ap_bc_site *s)
{
    return s->granted >= s->returned ? s->granted - s->returned : 0;
}

uint64_t ap_bc_site_available(const struct ap_bc_site *s)
{
    uint64_t held = ap_bc_site_held(s);
    return held >= s->consumed ? held - s->consumed : 0;
}

uint64_t ap_bc_site_shortfall(const struct ap_bc_site *s, uint64_t amount)
{
    uint64_t avail = ap_bc_site_available(s);
    return amount > avail ? amount - avail : 0;
}

uint64_t ap_bc_assigned(const struct ap_bc_site *sites, size_t n)
{
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t held = ap_bc_site_held(&sites[i]);
        sum = held > UINT64_MAX - sum ? UINT64_MAX : sum + held;
    }
    return sum;
}

uint64_t ap_bc_region_unassigned(const struct ap_bc_region *r, uint64_t assigned)
{
    /* docs/merge-rules.md: a limit below what is assigned stops grants, revokes nothing. */
    return r->limit > assigned ? r->limit - assigned : 0;
}

uint64_t ap_bc_region_grant(const struct ap_bc_region *r, uint64_t assigned,
                            struct ap_bc_site *site, uint64_t amount)
{
    uint64_t n = ap_bc_region_unassigned(r, assigned);
    if (amount < n) {
        n = amount;
    }
    if (n > UINT64_MAX - site->granted) {
        return 0;
    }
    site->granted += n;
    return n;
}

uint64_t ap_bc_region_top_up(const struct ap_bc_region *r, uint64_t assigned,
                             struct ap_bc_site *site)
{
    uint64_t held = ap_bc_site_held(site);
    if (held >= site->reserve) {
        return 0;
    }
    return ap_bc_region_grant(r, assigned, site, site->reserve - held);
}

int ap_bc_set_reserve(struct ap_bc_site *s, uint64_t reserve, struct ap_hlc_ts ts)
{
    if (!stamp_valid(ts)) {
        return AP_EINVAL;
    }
    if (ap_hlc_compare(ts, s->reserve_ts) <= 0) {
        return AP_EAGAIN;
    }
    s->reserve = reserve;
    s->reserve_ts = ts;
    return 0;
}

/* Checks shared by the site's writes of consumed. */
static int consumed_write_check(const struct ap_bc_site *s, struct ap_hlc_ts ts)
{
    if (!stamp_valid(ts)) {
        return AP_EINVAL;
    }
    if (ap_hlc_compare(ts, s->consumed_ts) <= 0) {
        return AP_EAGAIN;
    }
    return 0;
}

int ap_bc_site_consume(struct ap_bc_site *s, uint64_t amount, struct ap_hlc_ts ts)
{
    int rc = consumed_write_check(s, ts);
    if (rc != 0) {
        return rc;
    }
    /* docs/merge-rules.md: a site spends only rights it holds, connected or not. */
    if (amount > ap_bc_site_available(s)) {
        return AP_EQUOTA;
    }
    s->consumed += amount;
    s->consumed_ts = ts;
    return 0;
}

int ap_bc_site_release(struct ap_bc_site *s, uint64_t amount, struct ap_hlc_ts ts)
{
    int rc = consumed_write_check(s, ts);
    if (rc != 0) {
        return rc;
    }
    if (amount > s->consumed) {
        return AP_EINVAL;
    }
    s->consumed -= amount;
    s->consumed_ts = ts;
    return 0;
}

int ap_bc_site_set_consumed(struct ap_bc_site *s, uint64_t usage, struct ap_hlc_ts ts)
{
    int rc = consumed_write_check(s, ts);
    if (rc != 0) {
        return rc;
    }
    if (usage > ap_bc_site_held(s)) {
        return AP_EQUOTA;
    }
    s->consumed = usage;
    s->consumed_ts = ts;
    return 0;
}

uint64_t ap_bc_site_return_surplus(struct ap_bc_site *s, uint64_t keep)
{
    uint64_t target = s->consumed > UINT64_MAX - keep ? UINT64_MAX : s->consumed + keep;
    if (s->reserve > target) {
        target = s->reserve;
    }
    uint64_t held = ap_bc_site_held(s);
    if (held <= target) {
        return 0;
    }
    uint64_t n = held - target;
    s->returned += n;
    return n;
}

bool ap_bc_merge_site(struct ap_bc_site *into, const struct ap_bc_site *other)
{
    bool changed = false;
    if (other->granted > into->granted) {
        into->granted = other->granted;
        changed = true;
    }
    if (other->returned > into->returned) {
        into->returned = other->returned;
        changed = true;
    }
    if (stamped_cmp(other->consumed_ts, other->consumed, into->consumed_ts, into->consumed) > 0) {
        into->consumed = other->consumed;
        into->consumed_ts = other->consumed_ts;
        changed = true;
    }
    if (stamped_cmp(other->reserve_ts, other->reserve, into->reserve_ts, into->reserve) > 0) {
        into->reserve = other->reserve;
        into->reserve_ts = other->reserve_ts;
        changed = true;
    }
    return changed;
}

bool ap_bc_site_equal(const struct ap_bc_site *a, const struct ap_bc_site *b)
{
    return a->granted == b->granted && a->returned == b->returned &&
           stamped_cmp(a->consumed_ts, a->consumed, b->consumed_ts, b->consumed) == 0 &&
           stamped_cmp(a->reserve_ts, a->reserve, b->reserve_ts, b->reserve) == 0;
}

int ap_bc_site_validate(const struct ap_bc_site *s, char *errmsg)
{
    if (s->returned > s->granted) {
        if (errmsg != NULL) {
            snprintf(errmsg, AP_ERRMSG_SIZE, "rights: returned %llu exceeds granted %llu",
                     (unsigned long long)s->returned, (unsigned long long)s->granted);
        }
        return AP_EINVAL;
    }
    if (s->consumed > s->granted - s->returned) {
        if (errmsg != NULL) {
            snprintf(errmsg, AP_ERRMSG_SIZE, "rights: consumed %llu exceeds held %llu",
                     (unsigned long long)s->consumed,
                     (unsigned long long)(s->granted - s->returned));
        }
        return AP_EINVAL;
    }
    return 0;
}
