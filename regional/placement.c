/* placement: the leader's view of its sites for ap_sched_pick (docs/scheduler.md). The view is
 * rebuilt from the catalog when it is stale and no pick is pending; between rebuilds each pick
 * adds its instance to the chosen site, so a burst of creates spreads as it should. */
#include "placement.h"

#include "ap/authz.h"
#include "ap/base.h"
#include "ap/err.h"
#include "ap/log.h"
#include "scheduler.h"

#include <sqlite3.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/** How often, with no pick pending, the sites table is checked for changes (a cheap query). */
#define CHECK_MS 250
/** A view older than this is rebuilt once no pick is pending (usage changed by other paths:
 * creates naming their site, deletes, site-local creates). */
#define STALE_MS 5000

struct placement {
    char region[AP_NAME_MAX];
    struct ap_sched_site *sites;
    size_t n_sites;
    char caps[AP_SCHED_MAX_CAPS][AP_SCHED_LABEL];
    const char *cap_ptrs[AP_SCHED_MAX_CAPS];
    size_t n_caps;
    struct ap_sched_labelcount *labels; /* Instance label counts, all sites, grouped by site. */
    size_t n_labels;
    bool labels_built;
    uint64_t built_index;
    uint64_t built_ms;
    uint64_t checked_ms;
    int64_t sites_version[2]; /* COUNT(*) and MAX(updated_at_ms) of sites when built. */
    unsigned pending;
    struct ap_sched_verdict *verdicts;
};

int placement__new(struct placement **out, const char *region)
{
    struct placement *p = ap_calloc(1, sizeof *p);
    if (p == NULL) {
        return AP_ENOMEM;
    }
    ap_strlcpy(p->region, region, sizeof p->region);
    *out = p;
    return 0;
}

void placement__free(struct placement *p)
{
    if (p != NULL) {
        ap_free(p->sites);
        ap_free(p->labels);
        ap_free(p->verdicts);
        ap_free(p);
    }
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int cap_bit(struct placement *p, const char *name)
{
    for (size_t i = 0; i < p->n_caps; i++) {
        if (strcmp(p->caps[i], name) == 0) {
            return (int)i;
        }
    }
    if (p->n_caps >= AP_SCHED_MAX_CAPS) {
        return -1;
    }
    ap_strlcpy(p->caps[p->n_caps], name, sizeof p->caps[0]);
    p->cap_ptrs[p->n_caps] = p->caps[p->n_caps];
    return (int)p->n_caps++;
}

static struct ap_sched_site *find_site(struct placement *p, const char *name)
{
    for (size_t i = 0; i < p->n_sites; i++) {
        if (strcmp(p->sites[i].name, name) == 0) {
            return &p->sites[i];
        }
    }
    return NULL;
}

static void fill_labels(struct ap_sched_labels *out, json_t *obj)
{
    const char *k;
    json_t *v;
    out->n = 0;
    json_object_foreach(obj, k, v)
    {
        if (out->n < AP_SCHED_MAX_LABELS && json_is_string(v)) {
            ap_strlcpy(out->kv[out->n].key, k, sizeof out->kv[0].key);
            ap_strlcpy(out->kv[out->n].value, json_string_value(v), sizeof out->kv[0].value);
            out->n++;
        }
    }
}

/* A cheap fingerprint of the sites table: it moves when a site is added, removed or changed. */
static void sites_version(struct ap_store *st, int64_t out[2])
{
    sqlite3_stmt *s;
    out[0] = out[1] = -1;
    if (ap_store_prepare(st, "SELECT COUNT(*), COALESCE(MAX(updated_at_ms), 0) FROM sites", &s) ==
        0) {
        if (ap_store_step(st, s) == AP_STORE_ROW) {
            out[0] = sqlite3_column_int64(s, 0);
            out[1] = sqlite3_column_int64(s, 1);
        }
        ap_store_reset(s);
    }
}

static int rebuild(struct placement *p, struct ap_store *st, uint64_t applied)
{
    sqlite3_stmt *s;
    int rv = ap_store_prepare(st, "SELECT COUNT(*) FROM sites", &s);
    if (rv != 0) {
        return rv;
    }
    size_t count = ap_store_step(st, s) == AP_STORE_ROW ? (size_t)sqlite3_column_int64(s, 0) : 0;
    ap_store_reset(s);
    struct ap_sched_site *sites = ap_calloc(count > 0 ? count : 1, sizeof *sites);
    struct ap_sched_verdict *verdicts = ap_calloc(count > 0 ? count : 1, sizeof *verdicts);
    if (sites == NULL || verdicts == NULL) {
        ap_free(sites);
        ap_free(verdicts);
        return AP_ENOMEM;
    }
    rv = ap_store_prepare(st,
                          "SELECT name, labels, cpu_millis, memory_mb, max_instances,"
                          " capabilities, state, cordoned FROM sites ORDER BY name",
                          &s);
    size_t n = 0;
    p->n_caps = 0;
    while (rv == 0 && n < count && ap_store_step(st, s) == AP_STORE_ROW) {
        struct ap_sched_site *x = &sites[n++];
        ap_strlcpy(x->name, (const char *)sqlite3_column_text(s, 0), sizeof x->name);
        json_t *labels = json_loads((const char *)sqlite3_column_text(s, 1), 0, NULL);
        fill_labels(&x->labels, labels);
        json_decref(labels);
        x->cap_cpu_millis = sqlite3_column_int64(s, 2);
        x->cap_memory_mb = sqlite3_column_int64(s, 3);
        x->cap_instances = sqlite3_column_int64(s, 4);
        json_t *caps = json_loads((const char *)sqlite3_column_text(s, 5), 0, NULL);
        size_t i;
        json_t *c;
        json_array_foreach(caps, i, c)
        {
            int bit = json_is_string(c) ? cap_bit(p, json_string_value(c)) : -1;
            if (bit >= 0) {
                x->capabilities |= UINT64_C(1) << bit;
            }
        }
        json_decref(caps);
        const char *state = (const char *)sqlite3_column_text(s, 6);
        bool cordoned = sqlite3_column_int(s, 7) != 0;
        x->schedulable = !cordoned && strcmp(state, "unreachable") != 0;
        x->unschedulable_why = cordoned ? "cordoned" : "unreachable";
    }
    if (rv == 0) {
        ap_store_reset(s);
        rv = ap_store_prepare(st,
                              "SELECT site, COUNT(*), SUM(cpu_millis), SUM(memory_mb) FROM"
                              " instances WHERE desired != 'deleted' GROUP BY site",
                              &s);
    }
    while (rv == 0 && ap_store_step(st, s) == AP_STORE_ROW) {
        struct placement tmp = {.sites = sites, .n_sites = n};
        struct ap_sched_site *x = find_site(&tmp, (const char *)sqlite3_column_text(s, 0));
        if (x != NULL) {
            x->used_instances = sqlite3_column_int64(s, 1);
            x->used_cpu_millis = sqlite3_column_int64(s, 2);
            x->used_memory_mb = sqlite3_column_int64(s, 3);
        }
    }
    if (rv == 0) {
        ap_store_reset(s);
    }
    if (rv != 0) {
        ap_free(sites);
        ap_free(verdicts);
        return rv;
    }
    ap_free(p->sites);
    ap_free(p->verdicts);
    p->sites = sites;
    p->verdicts = verdicts;
    p->n_sites = n;
    p->labels_built = false;
    p->built_index = applied;
    p->built_ms = p->checked_ms = now_ms();
    sites_version(st, p->sites_version);
    return 0;
}

/* Instance label counts per site, for affinity rules (built only when a request uses them). */
static int build_labels(struct placement *p, struct ap_store *st)
{
    sqlite3_stmt *s;
    int rv = ap_store_prepare(st,
                              "SELECT site, json_extract(spec, '$.labels') FROM instances"
                              " WHERE desired != 'deleted' ORDER BY site",
                              &s);
    if (rv != 0) {
        return rv;
    }
    ap_free(p->labels);
    p->labels = NULL;
    p->n_labels = 0;
    size_t cap = 0;
    for (size_t i = 0; i < p->n_sites; i++) {
        p->sites[i].inst_labels = NULL;
        p->sites[i].n_inst_labels = 0;
    }
    /* First pass: collect (site index, key, value) counts. */
    struct entry {
        size_t site;
        struct ap_sched_labelcount lc;
    } *entries = NULL;
    size_t n_entries = 0;
    while (ap_store_step(st, s) == AP_STORE_ROW) {
        const char *site = (const char *)sqlite3_column_text(s, 0);
        const char *text = (const char *)sqlite3_column_text(s, 1);
        struct ap_sched_site *x = find_site(p, site);
        json_t *labels = text != NULL ? json_loads(text, 0, NULL) : NULL;
        const char *k;
        json_t *v;
        json_object_foreach(labels, k, v)
        {
            if (x == NULL || !json_is_string(v)) {
                continue;
            }
            size_t si = (size_t)(x - p->sites), j;
            for (j = 0; j < n_entries; j++) {
                if (entries[j].site == si && strcmp(entries[j].lc.key, k) == 0 &&
                    strcmp(entries[j].lc.value, json_string_value(v)) == 0) {
                    entries[j].lc.count++;
                    break;
                }
            }
            if (j == n_entries) {
                if (n_entries == cap) {
                    cap = cap == 0 ? 64 : cap * 2;
                    struct entry *ne = ap_realloc(entries, cap * sizeof *ne);
                    if (ne == NULL) {
                        break;
                    }
                    entries = ne;
                }
                memset(&entries[n_entries], 0, sizeof entries[0]);
                entries[n_entries].site = si;
                ap_strlcpy(entries[n_entries].lc.key, k, sizeof entries[0].lc.key);
                ap_strlcpy(entries[n_entries].lc.value, json_string_value(v),
                           sizeof entries[0].lc.value);
                entries[n_entries].lc.count = 1;
                n_entries++;
            }
        }
        json_decref(labels);
    }
    ap_store_reset(s);
    p->labels = ap_calloc(n_entries > 0 ? n_entries : 1, sizeof *p->labels);
    if (p->labels == NULL) {
        ap_free(entries);
        return AP_ENOMEM;
    }
    /* Group by site (entries are in site order since rows were). */
    for (size_t j = 0; j < n_entries; j++) {
        struct ap_sched_site *x = &p->sites[entries[j].site];
        if (x->inst_labels == NULL) {
            x->inst_labels = &p->labels[p->n_labels];
        }
        p->labels[p->n_labels++] = entries[j].lc;
        x->n_inst_labels++;
    }
    ap_free(entries);
    p->labels_built = true;
    return 0;
}

/* Sites c may not write to, for the request's exclude list; NULL when none is excluded. */
static const char **excluded(struct placement *p, const struct ap_claims *c, const char *tenant,
                             size_t *n)
{
    *n = 0;
    struct ap_target region_wide = {.tenant = tenant, .region = p->region};
    if (c == NULL || ap_authz_check(c, AP_ACT_WRITE, &region_wide, NULL) == 0) {
        return NULL;
    }
    const char **ex = ap_calloc(p->n_sites > 0 ? p->n_sites : 1, sizeof *ex);
    for (size_t i = 0; ex != NULL && i < p->n_sites; i++) {
        struct ap_target t = {.tenant = tenant, .region = p->region, .site = p->sites[i].name};
        if (ap_authz_check(c, AP_ACT_WRITE, &t, NULL) != 0) {
            ex[(*n)++] = p->sites[i].name;
        }
    }
    return ex;
}

/* fresh: rebuild whenever the catalog moved and nothing is pending (explain), not only after
 * STALE_MS (the throttle that keeps bursts of creates cheap). */
static int prepare(struct placement *p, struct ap_store *st, uint64_t applied, json_t *pj,
                   int64_t cpu, int64_t memory, bool fresh, struct ap_sched_request *req,
                   char *errmsg)
{
    uint64_t now = now_ms();
    bool sites_moved = false;
    if (p->sites != NULL && p->pending == 0 && p->built_index != applied &&
        (fresh || now - p->checked_ms >= CHECK_MS)) {
        int64_t v[2];
        sites_version(st, v);
        p->checked_ms = now;
        sites_moved = v[0] != p->sites_version[0] || v[1] != p->sites_version[1];
    }
    if (p->sites == NULL || sites_moved ||
        (p->pending == 0 && p->built_index != applied && (fresh || now - p->built_ms >= STALE_MS))) {
        int rv = rebuild(p, st, applied);
        if (rv != 0) {
            ap_errmsg_set(errmsg, "could not read the sites: %s", ap_strerror(rv));
            return rv;
        }
    }
    memset(req, 0, sizeof *req);
    int rv = ap_sched_request_from_json(pj, p->cap_ptrs, p->n_caps, req, errmsg);
    if (rv != 0) {
        return rv;
    }
    req->cpu_millis = cpu;
    req->memory_mb = memory;
    if ((req->affinity.n > 0 || req->anti_affinity.n > 0) && !p->labels_built) {
        rv = build_labels(p, st);
        if (rv != 0) {
            ap_errmsg_set(errmsg, "could not read instance labels");
            return rv;
        }
    }
    return 0;
}

int placement__pick(struct placement *p, struct ap_store *st, uint64_t applied, json_t *pj,
                    const char *tenant, int64_t cpu, int64_t memory, const struct ap_claims *c,
                    char *site, char *errmsg)
{
    struct ap_sched_request req;
    int rv = prepare(p, st, applied, pj, cpu, memory, false, &req, errmsg);
    if (rv != 0) {
        return rv;
    }
    size_t n_ex;
    const char **ex = excluded(p, c, tenant, &n_ex);
    req.exclude_sites = ex;
    req.n_exclude = n_ex;
    int idx = ap_sched_pick(p->sites, p->n_sites, &req, NULL);
    if (idx < 0) {
        /* Say why, from the verdicts of every site. */
        if (p->n_sites > 0 && ap_sched_pick(p->sites, p->n_sites, &req, p->verdicts) < 0) {
            ap_errmsg_set(errmsg,
                          "no site of region %s fits: %zu site(s) considered, first refusal: "
                          "%s: %s (POST /v1/placements:explain lists every site)",
                          p->region, p->n_sites, p->sites[p->verdicts[0].site].name,
                          p->verdicts[0].why);
        } else {
            ap_errmsg_set(errmsg, "region %s has no site to place on", p->region);
        }
        ap_free(ex);
        return AP_ENOTFOUND;
    }
    ap_free(ex);
    struct ap_sched_site *x = &p->sites[idx];
    x->used_instances++;
    x->used_cpu_millis += cpu;
    x->used_memory_mb += memory;
    p->pending++;
    ap_strlcpy(site, x->name, AP_SCHED_NAME);
    return 0;
}

void placement__settle(struct placement *p, const char *site, int64_t cpu, int64_t memory,
                       bool committed)
{
    if (p->pending > 0) {
        p->pending--;
    }
    struct ap_sched_site *x = committed ? NULL : find_site(p, site);
    if (x != NULL) {
        x->used_instances--;
        x->used_cpu_millis -= cpu;
        x->used_memory_mb -= memory;
    }
}

json_t *placement__explain(struct placement *p, struct ap_store *st, uint64_t applied, json_t *pj,
                           const char *tenant, int64_t cpu, int64_t memory,
                           const struct ap_claims *c, char *errmsg)
{
    struct ap_sched_request req;
    if (prepare(p, st, applied, pj, cpu, memory, true, &req, errmsg) != 0) {
        return NULL;
    }
    size_t n_ex;
    const char **ex = excluded(p, c, tenant, &n_ex);
    req.exclude_sites = ex;
    req.n_exclude = n_ex;
    int idx = p->n_sites > 0 ? ap_sched_pick(p->sites, p->n_sites, &req, p->verdicts) : -1;
    json_t *cands = json_array();
    for (size_t i = 0; i < p->n_sites; i++) {
        const struct ap_sched_verdict *v = &p->verdicts[i];
        json_array_append_new(cands, json_pack("{s:s, s:b, s:s, s:f}", "site",
                                               p->sites[v->site].name, "kept", v->kept, "why",
                                               v->why, "score", v->score));
    }
    ap_free(ex);
    return json_pack("{s:o, s:o, s:s}", "chosen",
                     idx >= 0 ? json_string(p->sites[idx].name) : json_null(), "candidates",
                     cands, "strategy", ap_sched_strategy_name(req.strategy));
}
