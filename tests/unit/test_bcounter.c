/* Unit and property tests for bcounter: escrow arithmetic, merges, and the quota under a lossy
 * network. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "ap/base.h"
#include "ap/bcounter.h"
#include "ap/err.h"
#include "ap/hlc.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- property-test harness (see test_crdt.c) ------------------------------------------ */

#define DEFAULT_SEED  UINT64_C(0xb0c0a11e7)
#define DEFAULT_CASES 100000

struct pcase {
    uint64_t seed;
    uint64_t rng;
};

static uint64_t env_u64(const char *name, uint64_t dflt)
{
    const char *v = getenv(name);
    if (v == NULL || *v == '\0') {
        return dflt;
    }
    char *end = NULL;
    unsigned long long n = strtoull(v, &end, 0);
    return (end != NULL && *end == '\0') ? (uint64_t)n : dflt;
}

static uint64_t prop_cases(void)
{
    return env_u64("AP_PROP_CASES", DEFAULT_CASES);
}

static uint64_t rnd(struct pcase *pc)
{
    uint64_t z = (pc->rng += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static uint64_t below(struct pcase *pc, uint64_t n)
{
    return rnd(pc) % n;
}

#define CHECK(pc, cond)                                                                            \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            print_error("property failed: %s (%s:%d)\nreplay: AP_PROP_SEED=%" PRIu64               \
                        " AP_PROP_CASES=1\n",                                                      \
                        #cond, __FILE__, __LINE__, (pc)->seed);                                    \
            fail();                                                                                \
        }                                                                                          \
    } while (0)

typedef void (*prop_fn)(struct pcase *pc, void *ctx);

/* Case i uses seed AP_PROP_SEED + i, so a printed seed replays its case alone. */
static void run_prop(const char *name, prop_fn fn, void *ctx)
{
    uint64_t seed = env_u64("AP_PROP_SEED", DEFAULT_SEED);
    uint64_t cases = prop_cases();
    /* The clock only reports the run time; no case depends on it. */
    struct timespec t0;
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (uint64_t i = 0; i < cases; i++) {
        struct pcase pc = {seed + i, seed + i};
        fn(&pc, ctx);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long ms = (long)(t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    print_message("%s: %" PRIu64 " cases from seed %" PRIu64 " in %ld ms\n", name, cases, seed, ms);
}

static struct ap_hlc_ts ts_of(uint64_t physical, uint16_t logical, uint32_t node)
{
    struct ap_hlc_ts ts = {physical, logical, node};
    return ts;
}

/* ---- rules ----------------------------------------------------------------------------- */

static void test_resource_names(void **state)
{
    (void)state;
    enum ap_bc_resource r = AP_BC_INSTANCES;
    for (int i = 0; i < AP_BC_RESOURCE_COUNT; i++) {
        assert_int_equal(ap_bc_resource_parse(ap_bc_resource_str((enum ap_bc_resource)i), &r), 0);
        assert_int_equal(r, i);
    }
    assert_string_equal(ap_bc_resource_str(AP_BC_MEMORY_MB), "memory_mb");
    assert_string_equal(ap_bc_resource_str((enum ap_bc_resource)3), "?");
    assert_int_equal(ap_bc_resource_parse("cpu", &r), AP_EINVAL);
    assert_int_equal(ap_bc_resource_parse(NULL, &r), AP_EINVAL);
    assert_int_equal(r, AP_BC_MEMORY_MB);
}

static void test_site_consume_release(void **state)
{
    (void)state;
    struct ap_bc_region region = {0, {0, 0, 0}};
    struct ap_bc_site s;
    memset(&s, 0, sizeof s);
    assert_int_equal(ap_bc_region_set_limit(&region, 10, ts_of(1, 0, 1)), 0);
    assert_int_equal(ap_bc_region_grant(&region, 0, &s, 10), 10);

    assert_int_equal(ap_bc_site_consume(&s, 4, ts_of(2, 0, 7)), 0);
    assert_int_equal(ap_bc_site_available(&s), 6);
    assert_int_equal(ap_bc_site_consume(&s, 7, ts_of(3, 0, 7)), AP_EQUOTA);
    assert_int_equal(s.consumed, 4);
    assert_int_equal(ap_hlc_compare(s.consumed_ts, ts_of(2, 0, 7)), 0);
    assert_int_equal(ap_bc_site_shortfall(&s, 7), 1);
    assert_int_equal(ap_bc_site_shortfall(&s, 6), 0);
    assert_int_equal(ap_bc_site_consume(&s, 6, ts_of(2, 0, 7)), AP_EAGAIN);
    assert_int_equal(ap_bc_site_consume(&s, 6, ts_of(0, 0, 0)), AP_EINVAL);
    assert_int_equal(ap_bc_site_consume(&s, 6, ts_of(4, 0, 7)), 0);
    assert_int_equal(ap_bc_site_available(&s), 0);
    assert_int_equal(ap_bc_site_consume(&s, 1, ts_of(5, 0, 7)), AP_EQUOTA);

    assert_int_equal(ap_bc_site_release(&s, 11, ts_of(6, 0, 7)), AP_EINVAL);
    assert_int_equal(ap_bc_site_release(&s, 3, ts_of(6, 0, 7)), 0);
    assert_int_equal(s.consumed, 7);
    assert_int_equal(ap_bc_site_release(&s, 1, ts_of(6, 0, 7)), AP_EAGAIN);

    /* A recomputed usage: any value up to what the site holds. */
    assert_int_equal(ap_bc_site_set_consumed(&s, 11, ts_of(7, 0, 7)), AP_EQUOTA);
    assert_int_equal(ap_bc_site_set_consumed(&s, 2, ts_of(7, 0, 7)), 0);
    assert_int_equal(ap_bc_site_set_consumed(&s, 10, ts_of(8, 0, 7)), 0);
    assert_int_equal(ap_bc_site_validate(&s, NULL), 0);
}

static void test_return_surplus(void **state)
{
    (void)state;
    struct ap_bc_site s;
    memset(&s, 0, sizeof s);
    s.granted = 20;
    assert_int_equal(ap_bc_set_reserve(&s, 5, ts_of(1, 0, 1)), 0);
    assert_int_equal(ap_bc_set_reserve(&s, 6, ts_of(1, 0, 1)), AP_EAGAIN);
    assert_int_equal(ap_bc_set_reserve(&s, 6, ts_of(0, 0, 0)), AP_EINVAL);
    assert_int_equal(ap_bc_site_consume(&s, 3, ts_of(2, 0, 7)), 0);

    /* Holds 20, uses 3, reserve 5: keeps max(5, 3 + 0) = 5, returns 15. */
    assert_int_equal(ap_bc_site_return_surplus(&s, 0), 15);
    assert_int_equal(s.returned, 15);
    assert_int_equal(ap_bc_site_held(&s), 5);
    assert_int_equal(ap_bc_site_return_surplus(&s, 0), 0);

    /* Usage above the reserve is never returned, whatever keep says. */
    s.granted += 10; /* a region grant */
    assert_int_equal(ap_bc_site_consume(&s, 9, ts_of(3, 0, 7)), 0);
    assert_int_equal(ap_bc_site_return_surplus(&s, 1), 2); /* holds 15, keeps 12 + 1 */
    assert_int_equal(ap_bc_site_held(&s), 13);
    assert_int_equal(ap_bc_site_return_surplus(&s, UINT64_MAX), 0);
    assert_int_equal(ap_bc_site_validate(&s, NULL), 0);
    assert_int_equal(s.returned, 17);
}

static void test_region_grant(void **state)
{
    (void)state;
    struct ap_bc_region region = {0, {0, 0, 0}};
    struct ap_bc_site sites[3];
    memset(sites, 0, sizeof sites);
    assert_int_equal(ap_bc_region_set_limit(&region, 10, ts_of(5, 0, 1)), 0);
    assert_int_equal(ap_bc_region_set_limit(&region, 99, ts_of(4, 0, 1)), AP_EAGAIN);
    assert_int_equal(ap_bc_region_set_limit(&region, 99, ts_of(0, 0, 0)), AP_EINVAL);
    assert_int_equal(region.limit, 10);

    assert_int_equal(ap_bc_region_grant(&region, ap_bc_assigned(sites, 3), &sites[0], 6), 6);
    assert_int_equal(ap_bc_region_grant(&region, ap_bc_assigned(sites, 3), &sites[1], 6), 4);
    assert_int_equal(ap_bc_region_grant(&region, ap_bc_assigned(sites, 3), &sites[2], 1), 0);
    assert_int_equal(ap_bc_region_unassigned(&region, ap_bc_assigned(sites, 3)), 0);

    /* Site 0 returns 3 of its rights; once the region has merged that, it can grant them again. */
    struct ap_bc_site site0 = sites[0];
    assert_int_equal(ap_bc_site_return_surplus(&site0, 3), 3);
    assert_int_equal(ap_bc_region_grant(&region, ap_bc_assigned(sites, 3), &sites[2], 1), 0);
    assert_true(ap_bc_merge_site(&sites[0], &site0));
    assert_int_equal(ap_bc_region_unassigned(&region, ap_bc_assigned(sites, 3)), 3);

    /* Top up to the autonomy reserve, within what is left. */
    assert_int_equal(ap_bc_set_reserve(&sites[2], 5, ts_of(6, 0, 1)), 0);
    assert_int_equal(ap_bc_region_top_up(&region, ap_bc_assigned(sites, 3), &sites[2]), 3);
    assert_int_equal(ap_bc_region_top_up(&region, ap_bc_assigned(sites, 3), &sites[2]), 0);
    assert_int_equal(ap_bc_assigned(sites, 3), 10);

    /* A counter that would overflow is not granted to. */
    struct ap_bc_site huge;
    memset(&huge, 0, sizeof huge);
    huge.granted = UINT64_MAX - 1;
    huge.returned = UINT64_MAX - 1;
    struct ap_bc_region big = {UINT64_MAX, {1, 0, 1}};
    assert_int_equal(ap_bc_region_grant(&big, 0, &huge, 5), 0);
    assert_int_equal(ap_bc_region_grant(&big, 0, &huge, 1), 1);
    struct ap_bc_site many[2] = {huge, huge};
    many[0].returned = 0;
    many[1].returned = 0;
    assert_int_equal(ap_bc_assigned(many, 2), UINT64_MAX);
}

/*
 * Lowering a limit below what is assigned stops new grants and revokes
 * nothing: rights sites hold stay theirs until they return them.
 */
static void test_lower_limit(void **state)
{
    (void)state;
    struct ap_bc_region region = {0, {0, 0, 0}};
    struct ap_bc_site sites[2];
    memset(sites, 0, sizeof sites);
    assert_int_equal(ap_bc_region_set_limit(&region, 10, ts_of(1, 0, 1)), 0);
    assert_int_equal(ap_bc_region_grant(&region, ap_bc_assigned(sites, 2), &sites[0], 6), 6);
    assert_int_equal(ap_bc_region_grant(&region, ap_bc_assigned(sites, 2), &sites[1], 4), 4);
    assert_int_equal(ap_bc_site_consume(&sites[0], 5, ts_of(2, 0, 7)), 0);

    assert_int_equal(ap_bc_region_set_limit(&region, 4, ts_of(3, 0, 1)), 0);
    assert_int_equal(ap_bc_region_unassigned(&region, ap_bc_assigned(sites, 2)), 0);
    assert_int_equal(ap_bc_region_grant(&region, ap_bc_assigned(sites, 2), &sites[1], 1), 0);
    /* What sites hold is still theirs. */
    assert_int_equal(ap_bc_site_consume(&sites[0], 1, ts_of(4, 0, 7)), 0);
    assert_int_equal(sites[0].consumed, 6);
    /* As connected sites return surplus, assigned falls; grants resume only below the limit. */
    assert_int_equal(ap_bc_site_return_surplus(&sites[1], 0), 4);
    assert_int_equal(ap_bc_assigned(sites, 2), 6);
    assert_int_equal(ap_bc_region_grant(&region, ap_bc_assigned(sites, 2), &sites[1], 1), 0);
    assert_int_equal(ap_bc_site_release(&sites[0], 4, ts_of(5, 0, 7)), 0);
    assert_int_equal(ap_bc_site_return_surplus(&sites[0], 0), 4);
    assert_int_equal(ap_bc_region_grant(&region, ap_bc_assigned(sites, 2), &sites[1], 5), 2);
}

static void test_merge_site(void **state)
{
    (void)state;
    struct ap_bc_site region_view;
    memset(&region_view, 0, sizeof region_view);
    region_view.granted = 8;
    assert_int_equal(ap_bc_set_reserve(&region_view, 3, ts_of(1, 0, 1)), 0);
    struct ap_bc_site site;
    memset(&site, 0, sizeof site);
    assert_true(ap_bc_merge_site(&site, &region_view));
    assert_int_equal(site.reserve, 3);
    assert_int_equal(ap_bc_site_consume(&site, 6, ts_of(2, 0, 7)), 0);
    struct ap_bc_site snapshot1 = site;
    assert_int_equal(ap_bc_site_release(&site, 5, ts_of(3, 0, 7)), 0);
    assert_int_equal(ap_bc_site_return_surplus(&site, 0), 5);
    struct ap_bc_site snapshot2 = site;

    /* Newer snapshot first, older after: consumed follows its stamp, not the larger number. */
    assert_true(ap_bc_merge_site(&region_view, &snapshot2));
    assert_false(ap_bc_merge_site(&region_view, &snapshot1));
    assert_int_equal(region_view.consumed, 1);
    assert_int_equal(region_view.returned, 5);
    assert_true(ap_bc_site_equal(&region_view, &site));
    assert_false(ap_bc_merge_site(&region_view, &region_view));

    /* Equal stamps with different values (a corrupt peer) still merge the same both ways. */
    struct ap_bc_site x = site;
    struct ap_bc_site y = site;
    y.consumed = 0;
    struct ap_bc_site xy = x;
    struct ap_bc_site yx = y;
    ap_bc_merge_site(&xy, &y);
    ap_bc_merge_site(&yx, &x);
    assert_true(ap_bc_site_equal(&xy, &yx));

    struct ap_bc_region r1 = {10, {5, 0, 1}};
    struct ap_bc_region r2 = {20, {6, 0, 1}};
    assert_true(ap_bc_merge_region(&r1, &r2));
    assert_int_equal(r1.limit, 20);
    assert_false(ap_bc_merge_region(&r1, &r2));
    struct ap_bc_region r3 = {15, {6, 0, 1}};
    assert_true(ap_bc_merge_region(&r1, &r3)); /* tie: the smaller limit */
    assert_int_equal(r1.limit, 15);
    assert_false(ap_bc_merge_region(&r3, &r2));
}

static void test_validate(void **state)
{
    (void)state;
    char err[AP_ERRMSG_SIZE];
    struct ap_bc_site s;
    memset(&s, 0, sizeof s);
    assert_int_equal(ap_bc_site_validate(&s, err), 0);
    s.granted = 5;
    s.returned = 6;
    assert_int_equal(ap_bc_site_validate(&s, err), AP_EINVAL);
    assert_string_equal(err, "rights: returned 6 exceeds granted 5");
    assert_int_equal(ap_bc_site_held(&s), 0);
    s.returned = 2;
    s.consumed = 4;
    assert_int_equal(ap_bc_site_validate(&s, err), AP_EINVAL);
    assert_string_equal(err, "rights: consumed 4 exceeds held 3");
    assert_int_equal(ap_bc_site_available(&s), 0);
    assert_int_equal(ap_bc_site_validate(&s, NULL), AP_EINVAL);
}

/*
 * A site cut off from its region lives on its reserve: it can consume what
 * it holds and not one right more, while the region grants the rest of the
 * limit to other sites; once healed, the totals still fit the limit.
 */
static void test_partitioned_site(void **state)
{
    (void)state;
    struct ap_bc_region region = {0, {0, 0, 0}};
    struct ap_bc_site view[2]; /* the region's copies */
    memset(view, 0, sizeof view);
    assert_int_equal(ap_bc_region_set_limit(&region, 12, ts_of(1, 0, 1)), 0);
    assert_int_equal(ap_bc_set_reserve(&view[0], 5, ts_of(2, 0, 1)), 0);
    assert_int_equal(ap_bc_region_top_up(&region, ap_bc_assigned(view, 2), &view[0]), 5);
    struct ap_bc_site cut = view[0]; /* delivered, then the link fails */

    int made = 0;
    for (int i = 0; i < 10; i++) {
        if (ap_bc_site_consume(&cut, 1, ts_of(10 + (uint64_t)i, 0, 7)) == 0) {
            made++;
        }
    }
    assert_int_equal(made, 5);
    assert_int_equal(ap_bc_region_grant(&region, ap_bc_assigned(view, 2), &view[1], 100), 7);
    assert_int_equal(ap_bc_site_consume(&view[1], 7, ts_of(30, 0, 8)), 0);

    assert_true(ap_bc_merge_site(&view[0], &cut));
    assert_false(ap_bc_merge_site(&cut, &view[0])); /* the site already had the region's part */
    assert_true(ap_bc_site_equal(&cut, &view[0]));
    assert_int_equal(view[0].consumed + view[1].consumed, 12);
}

/* ---- properties: merge laws ------------------------------------------------------------ */

static struct ap_hlc_ts small_ts(struct pcase *pc)
{
    return ts_of(below(pc, 4), (uint16_t)below(pc, 2), (uint32_t)below(pc, 3));
}

static void rnd_site(struct pcase *pc, struct ap_bc_site *s)
{
    s->granted = below(pc, 6);
    s->returned = below(pc, 6);
    s->consumed = below(pc, 6);
    s->consumed_ts = small_ts(pc);
    s->reserve = below(pc, 4);
    s->reserve_ts = small_ts(pc);
}

static struct ap_bc_site site_join(const struct ap_bc_site *a, const struct ap_bc_site *b)
{
    struct ap_bc_site r = *a;
    ap_bc_merge_site(&r, b);
    return r;
}

static void prop_site_laws(struct pcase *pc, void *ctx)
{
    (void)ctx;
    struct ap_bc_site a;
    struct ap_bc_site b;
    struct ap_bc_site c;
    rnd_site(pc, &a);
    rnd_site(pc, &b);
    rnd_site(pc, &c);
    struct ap_bc_site ab = site_join(&a, &b);
    struct ap_bc_site ba = site_join(&b, &a);
    CHECK(pc, ap_bc_site_equal(&ab, &ba));
    struct ap_bc_site ab_c = site_join(&ab, &c);
    struct ap_bc_site bc = site_join(&b, &c);
    struct ap_bc_site a_bc = site_join(&a, &bc);
    CHECK(pc, ap_bc_site_equal(&ab_c, &a_bc));
    struct ap_bc_site aa = a;
    CHECK(pc, !ap_bc_merge_site(&aa, &a));
    CHECK(pc, ap_bc_site_equal(&aa, &a));
    struct ap_bc_site x = a;
    bool changed = ap_bc_merge_site(&x, &b);
    CHECK(pc, changed == !ap_bc_site_equal(&x, &a));
    /* The grow-only counters never go down. */
    CHECK(pc, ab.granted >= a.granted && ab.granted >= b.granted);
    CHECK(pc, ab.returned >= a.returned && ab.returned >= b.returned);

    struct ap_bc_region ra = {below(pc, 4), small_ts(pc)};
    struct ap_bc_region rb = {below(pc, 4), small_ts(pc)};
    struct ap_bc_region rc = {below(pc, 4), small_ts(pc)};
    struct ap_bc_region rab = ra;
    ap_bc_merge_region(&rab, &rb);
    struct ap_bc_region rba = rb;
    ap_bc_merge_region(&rba, &ra);
    CHECK(pc, rab.limit == rba.limit && ap_hlc_compare(rab.limit_ts, rba.limit_ts) == 0);
    struct ap_bc_region rab_c = rab;
    ap_bc_merge_region(&rab_c, &rc);
    struct ap_bc_region rbc = rb;
    ap_bc_merge_region(&rbc, &rc);
    struct ap_bc_region ra_bc = ra;
    ap_bc_merge_region(&ra_bc, &rbc);
    CHECK(pc, rab_c.limit == ra_bc.limit && ap_hlc_compare(rab_c.limit_ts, ra_bc.limit_ts) == 0);
    struct ap_bc_region raa = ra;
    CHECK(pc, !ap_bc_merge_region(&raa, &ra));
    struct ap_bc_region rx = ra;
    bool rchanged = ap_bc_merge_region(&rx, &rb);
    CHECK(pc, rchanged == (rx.limit != ra.limit || ap_hlc_compare(rx.limit_ts, ra.limit_ts) != 0));
}

static void test_prop_merge_laws(void **state)
{
    (void)state;
    run_prop("site and region merge laws", prop_site_laws, NULL);
}

/* ---- property: the quota under a lossy, duplicating, reordering network ------------- */

/*
 * One region (a raft group, so one logical replica) and SIM_SITES sites.
 * Each side keeps its own copy of every site's rights record. Messages are
 * a bag: any one may be delivered next, delivered and kept (a duplicate),
 * or dropped; a partitioned site neither sends nor receives. A site short
 * of rights sends a request; the region answers with a grant, within what
 * is unassigned. The operator raises and lowers the limit (never below
 * what the region sees assigned) and changes reserves.
 */
#define SIM_SITES 3
#define BAG_CAP   12
#define SITE_NODE 10

enum msg_kind {
    MSG_TO_REGION, /* a site's record */
    MSG_TO_SITE,   /* the region's copy of a site's record */
    MSG_REQUEST,   /* a site asks for `want` more rights */
};

struct msg {
    enum msg_kind kind;
    uint8_t site;
    uint64_t want;
    struct ap_bc_site rec;
};

struct sim {
    struct ap_bc_region region;
    struct ap_bc_site view[SIM_SITES]; /* the region's copies */
    struct ap_bc_site site[SIM_SITES]; /* each site's own record */
    uint64_t region_clock;
    uint64_t site_clock[SIM_SITES];
    bool cut[SIM_SITES];
    struct msg bag[BAG_CAP];
    size_t n;
};

struct sim_stats {
    uint64_t steps;
    uint64_t consumed_ok;
    uint64_t consumed_while_cut;
    uint64_t refused;
    uint64_t granted;
    uint64_t returned;
    uint64_t lowered;
    uint64_t duplicated;
    uint64_t dropped;
    uint64_t at_limit; /* steps that ended with usage equal to the limit */
};

static struct ap_hlc_ts region_ts(struct sim *s)
{
    return ts_of(++s->region_clock, 0, 1);
}

static struct ap_hlc_ts site_ts(struct sim *s, size_t i)
{
    return ts_of(++s->site_clock[i], 0, SITE_NODE + (uint32_t)i);
}

static void bag_put(struct sim *s, enum msg_kind kind, size_t site, uint64_t want)
{
    if (s->n == BAG_CAP || s->cut[site]) {
        return; /* a full link or a partition loses the message */
    }
    struct msg *m = &s->bag[s->n++];
    m->kind = kind;
    m->site = (uint8_t)site;
    m->want = want;
    if (kind == MSG_TO_REGION || kind == MSG_REQUEST) {
        m->rec = s->site[site];
    } else {
        m->rec = s->view[site];
    }
}

static void region_grant(struct sim *s, struct sim_stats *st, size_t i, uint64_t amount)
{
    uint64_t assigned = ap_bc_assigned(s->view, SIM_SITES);
    st->granted += ap_bc_region_grant(&s->region, assigned, &s->view[i], amount);
}

/* Deliver message k; keep it in the bag (a duplicate) when `keep`. */
static void deliver(struct sim *s, struct sim_stats *st, size_t k, bool keep)
{
    struct msg m = s->bag[k];
    if (s->cut[m.site]) {
        return; /* held up by the partition */
    }
    if (!keep) {
        s->bag[k] = s->bag[--s->n];
    }
    switch (m.kind) {
    case MSG_TO_REGION:
        ap_bc_merge_site(&s->view[m.site], &m.rec);
        break;
    case MSG_TO_SITE:
        ap_bc_merge_site(&s->site[m.site], &m.rec);
        break;
    case MSG_REQUEST:
        /* The request carries the site's record, as a DELTA before it would. */
        ap_bc_merge_site(&s->view[m.site], &m.rec);
        region_grant(s, st, m.site, m.want);
        bag_put(s, MSG_TO_SITE, m.site, 0);
        break;
    }
}

/* Check the quota at this step; returns the total usage. */
static uint64_t check_invariants(struct pcase *pc, const struct sim *s)
{
    uint64_t used = 0;
    uint64_t held = 0;
    for (size_t i = 0; i < SIM_SITES; i++) {
        const struct ap_bc_site *own = &s->site[i];
        const struct ap_bc_site *view = &s->view[i];
        CHECK(pc, ap_bc_site_validate(own, NULL) == 0);
        CHECK(pc, ap_bc_site_validate(view, NULL) == 0);
        /* Each field's writer is ahead of (or equal to) every copy. */
        CHECK(pc, own->granted <= view->granted);
        CHECK(pc, view->returned <= own->returned);
        used += own->consumed;
        held += view->granted - own->returned; /* rights truly out at the site */
    }
    /* The quota: usage, and even what sites hold, never exceeds the limit. */
    CHECK(pc, used <= s->region.limit);
    CHECK(pc, held <= s->region.limit);
    CHECK(pc, held <= ap_bc_assigned(s->view, SIM_SITES));
    return used;
}

static void sim_step(struct pcase *pc, struct sim *s, struct sim_stats *st)
{
    size_t i = (size_t)below(pc, SIM_SITES);
    struct ap_bc_site *own = &s->site[i];
    switch (below(pc, 15)) {
    case 0:
    case 1: { /* a site creates an instance */
        uint64_t amount = 1 + below(pc, 4);
        int rc = ap_bc_site_consume(own, amount, site_ts(s, i));
        if (rc == 0) {
            st->consumed_ok++;
            st->consumed_while_cut += s->cut[i];
        } else {
            CHECK(pc, rc == AP_EQUOTA);
            st->refused++;
            bag_put(s, MSG_REQUEST, i, ap_bc_site_shortfall(own, amount));
        }
        break;
    }
    case 2: /* a site deletes an instance */
        if (own->consumed > 0) {
            CHECK(pc, ap_bc_site_release(own, 1 + below(pc, own->consumed), site_ts(s, i)) == 0);
        }
        break;
    case 3: /* a site recomputes its usage */
        CHECK(pc, ap_bc_site_set_consumed(own, below(pc, ap_bc_site_held(own) + 1),
                                          site_ts(s, i)) == 0);
        break;
    case 4: /* a connected site gives back its surplus */
        if (!s->cut[i]) {
            st->returned += ap_bc_site_return_surplus(own, below(pc, 3));
        }
        break;
    case 5: /* the region grants on its own (a region create for that site) */
        region_grant(s, st, i, below(pc, 8));
        break;
    case 6: /* the operator changes a reserve; the region tops the site up */
        CHECK(pc, ap_bc_set_reserve(&s->view[i], below(pc, 6), region_ts(s)) == 0);
        st->granted +=
            ap_bc_region_top_up(&s->region, ap_bc_assigned(s->view, SIM_SITES), &s->view[i]);
        break;
    case 7: { /* the operator raises or lowers the limit, never below what is assigned */
        uint64_t assigned = ap_bc_assigned(s->view, SIM_SITES);
        uint64_t limit = s->region.limit;
        if (below(pc, 3) != 0) {
            limit += below(pc, 10);
        } else if (limit > assigned) {
            limit = assigned + below(pc, limit - assigned + 1);
            st->lowered++;
        }
        CHECK(pc, ap_bc_region_set_limit(&s->region, limit, region_ts(s)) == 0);
        break;
    }
    case 8: /* a site sends its record */
        bag_put(s, MSG_TO_REGION, i, 0);
        break;
    case 9: /* the region sends its copy */
        bag_put(s, MSG_TO_SITE, i, 0);
        break;
    case 10:
    case 11:
    case 12: /* the network delivers any message, sometimes twice */
        if (s->n > 0) {
            bool keep = below(pc, 4) == 0;
            st->duplicated += keep;
            deliver(s, st, (size_t)below(pc, s->n), keep);
        }
        break;
    case 13: /* or loses one */
        if (s->n > 0) {
            size_t k = (size_t)below(pc, s->n);
            s->bag[k] = s->bag[--s->n];
            st->dropped++;
        }
        break;
    default: /* a partition starts or heals */
        s->cut[i] = !s->cut[i];
        break;
    }
}

static void prop_quota(struct pcase *pc, void *ctx)
{
    struct sim_stats *st = ctx;
    struct sim s;
    memset(&s, 0, sizeof s);
    CHECK(pc, ap_bc_region_set_limit(&s.region, below(pc, 20), region_ts(&s)) == 0);

    uint64_t steps = 20 + below(pc, 60);
    for (uint64_t k = 0; k < steps; k++) {
        sim_step(pc, &s, st);
        uint64_t used = check_invariants(pc, &s);
        st->at_limit += used > 0 && used == s.region.limit;
    }
    st->steps += steps;

    /* Heal: deliver everything (requests may add grants), then one exchange both ways. */
    memset(s.cut, 0, sizeof s.cut);
    for (size_t guard = 0; s.n > 0 && guard < 4 * BAG_CAP; guard++) {
        deliver(&s, st, (size_t)below(pc, s.n), false);
        check_invariants(pc, &s);
    }
    CHECK(pc, s.n == 0);
    for (size_t i = 0; i < SIM_SITES; i++) {
        bag_put(&s, MSG_TO_REGION, i, 0);
        bag_put(&s, MSG_TO_SITE, i, 0);
    }
    while (s.n > 0) {
        deliver(&s, st, (size_t)below(pc, s.n), false);
    }
    check_invariants(pc, &s);
    for (size_t i = 0; i < SIM_SITES; i++) {
        CHECK(pc, ap_bc_site_equal(&s.site[i], &s.view[i]));
    }
}

static void test_prop_quota(void **state)
{
    (void)state;
    struct sim_stats st;
    memset(&st, 0, sizeof st);
    run_prop("quota invariant under loss, duplication, reordering, partitions", prop_quota, &st);
    print_message("steps %" PRIu64 ", consumes %" PRIu64 " (%" PRIu64
                  " while cut off), refused %" PRIu64 ", granted %" PRIu64 ", returned %" PRIu64
                  ", limit lowered %" PRIu64 ", duplicated %" PRIu64 ", dropped %" PRIu64
                  ", steps at the limit %" PRIu64 "\n",
                  st.steps, st.consumed_ok, st.consumed_while_cut, st.refused, st.granted,
                  st.returned, st.lowered, st.duplicated, st.dropped, st.at_limit);
    /* In a full run every path must have been taken, or the invariant proved little. */
    if (prop_cases() >= 1000) {
        assert_true(st.consumed_while_cut > 0);
        assert_true(st.refused > 0);
        assert_true(st.returned > 0);
        assert_true(st.lowered > 0);
        assert_true(st.duplicated > 0);
        assert_true(st.dropped > 0);
        assert_true(st.at_limit > 0);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_resource_names),  cmocka_unit_test(test_site_consume_release),
        cmocka_unit_test(test_return_surplus),  cmocka_unit_test(test_region_grant),
        cmocka_unit_test(test_lower_limit),     cmocka_unit_test(test_merge_site),
        cmocka_unit_test(test_validate),        cmocka_unit_test(test_partitioned_site),
        cmocka_unit_test(test_prop_merge_laws), cmocka_unit_test(test_prop_quota),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
