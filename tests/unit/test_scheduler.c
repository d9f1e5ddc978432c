/* Unit tests for scheduler: constraints against a brute-force oracle on seeded random topologies,
 * scoring, ties, balance, verdict texts, JSON parsing, and the cost of one placement. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "ap/base.h"
#include "ap/err.h"
#include "scheduler.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

/* splitmix64: a seeded generator, so a failing topology replays from its seed. */
struct rng {
    uint64_t s;
};

static uint64_t rng_next(struct rng *r)
{
    uint64_t z = (r->s += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

/* Uniform-enough integer in [0, n). */
static uint32_t rng_below(struct rng *r, uint32_t n)
{
    return (uint32_t)(rng_next(r) % n);
}

static const char *pick_str(struct rng *r, const char *const *v, size_t n)
{
    return v[rng_below(r, (uint32_t)n)];
}

static void label_add(struct ap_sched_labels *l, const char *k, const char *v)
{
    assert_true(l->n < AP_SCHED_MAX_LABELS);
    ap_strlcpy(l->kv[l->n].key, k, sizeof l->kv[l->n].key);
    ap_strlcpy(l->kv[l->n].value, v, sizeof l->kv[l->n].value);
    l->n++;
}

static void count_set(struct ap_sched_labelcount *c, const char *k, const char *v, uint32_t n)
{
    ap_strlcpy(c->key, k, sizeof c->key);
    ap_strlcpy(c->value, v, sizeof c->value);
    c->count = n;
}

/* The label space random topologies draw from: small, so constraints often match. */
static const char *const site_keys[] = {"zone", "tier", "hw"};
static const char *const zone_vals[] = {"north", "south", "east"};
static const char *const tier_vals[] = {"gold", "silver"};
static const char *const hw_vals[] = {"gpu", "arm"};
static const char *const app_vals[] = {"web", "db", "cache"};
static const char *const team_vals[] = {"a", "b"};

static const char *site_value(struct rng *r, size_t key)
{
    switch (key) {
    case 0:
        return pick_str(r, zone_vals, AP_ARRAY_LEN(zone_vals));
    case 1:
        return pick_str(r, tier_vals, AP_ARRAY_LEN(tier_vals));
    default:
        return pick_str(r, hw_vals, AP_ARRAY_LEN(hw_vals));
    }
}

#define TOPO_MAX_SITES 200
#define TOPO_MAX_INST  6

struct topo {
    size_t n;
    struct ap_sched_site sites[TOPO_MAX_SITES];
    struct ap_sched_labelcount counts[TOPO_MAX_SITES][TOPO_MAX_INST];
    struct ap_sched_verdict verdicts[TOPO_MAX_SITES];
    const char *exclude[2];
    struct ap_sched_request req;
};

static struct topo *topo_new(void)
{
    struct topo *t = test_calloc(1, sizeof *t);
    assert_non_null(t);
    return t;
}

static void gen_site(struct rng *r, struct topo *t, size_t i, size_t n)
{
    struct ap_sched_site *s = &t->sites[i];
    memset(s, 0, sizeof *s);
    /* Names out of index order, and now and then a duplicate, so ties exercise both rules. */
    uint32_t id = rng_below(r, 20) == 0 ? rng_below(r, (uint32_t)n) : (uint32_t)((i * 37) % 211);
    snprintf(s->name, sizeof s->name, "s%03u", (unsigned)id);
    for (size_t k = 0; k < AP_ARRAY_LEN(site_keys); k++) {
        if (rng_below(r, 3) != 0) {
            label_add(&s->labels, site_keys[k], site_value(r, k));
        }
    }
    s->capabilities = rng_next(r) & 0xf;
    s->schedulable = rng_below(r, 10) != 0;
    s->unschedulable_why = s->schedulable ? NULL : "unreachable";
    static const int64_t cpus[] = {0, 1000, 2000, 4000, 8000};
    static const int64_t mems[] = {0, 1024, 4096};
    s->cap_cpu_millis = cpus[rng_below(r, AP_ARRAY_LEN(cpus))];
    s->cap_memory_mb = mems[rng_below(r, AP_ARRAY_LEN(mems))];
    s->cap_instances = rng_below(r, 11);
    /* Coarse amounts make equal scores common; some sites are over-committed. */
    s->used_cpu_millis = 500 * (int64_t)rng_below(r, (uint32_t)(s->cap_cpu_millis / 500 + 2));
    s->used_memory_mb = 256 * (int64_t)rng_below(r, (uint32_t)(s->cap_memory_mb / 256 + 2));
    s->used_instances = rng_below(r, (uint32_t)s->cap_instances + 1);
    s->inst_labels = t->counts[i];
    s->n_inst_labels = rng_below(r, TOPO_MAX_INST + 1);
    for (size_t k = 0; k < s->n_inst_labels; k++) {
        bool app = rng_below(r, 3) != 0;
        count_set(&s->inst_labels[k], app ? "app" : "team",
                  app ? pick_str(r, app_vals, AP_ARRAY_LEN(app_vals))
                      : pick_str(r, team_vals, AP_ARRAY_LEN(team_vals)),
                  rng_below(r, 4)); /* a count of 0 means no instance carries it */
    }
}

static void gen_topo(struct rng *r, struct topo *t)
{
    t->n = 1 + rng_below(r, TOPO_MAX_SITES);
    for (size_t i = 0; i < t->n; i++) {
        gen_site(r, t, i, t->n);
    }
    struct ap_sched_request *q = &t->req;
    memset(q, 0, sizeof *q);
    static const int64_t cpus[] = {0, 100, 500, 1000};
    static const int64_t mems[] = {0, 64, 512};
    q->cpu_millis = cpus[rng_below(r, AP_ARRAY_LEN(cpus))];
    q->memory_mb = mems[rng_below(r, AP_ARRAY_LEN(mems))];
    for (size_t k = 0; k < AP_ARRAY_LEN(site_keys); k++) {
        if (rng_below(r, 4) == 0) {
            label_add(&q->require_labels, site_keys[k], site_value(r, k));
        }
    }
    q->require_capabilities = rng_below(r, 2) == 0 ? 0 : (rng_next(r) & rng_next(r) & 0xf);
    q->strategy = rng_below(r, 2) == 0 ? AP_SCHED_SPREAD : AP_SCHED_PACK;
    if (rng_below(r, 4) == 0) {
        label_add(&q->affinity, "app", pick_str(r, app_vals, AP_ARRAY_LEN(app_vals)));
    }
    if (rng_below(r, 8) == 0) {
        label_add(&q->affinity, "team", pick_str(r, team_vals, AP_ARRAY_LEN(team_vals)));
    }
    if (rng_below(r, 4) == 0) {
        label_add(&q->anti_affinity, "app", pick_str(r, app_vals, AP_ARRAY_LEN(app_vals)));
    }
    q->n_exclude = rng_below(r, 3);
    for (size_t k = 0; k < q->n_exclude; k++) {
        t->exclude[k] = t->sites[rng_below(r, (uint32_t)t->n)].name;
    }
    q->exclude_sites = q->n_exclude > 0 ? t->exclude : NULL;
}

/* The oracle: every rule of docs/scheduler.md, written out plainly, and the utilisation. */
static bool oracle_runs(const struct ap_sched_site *s, const char *k, const char *v)
{
    for (size_t i = 0; i < s->n_inst_labels; i++) {
        if (s->inst_labels[i].count > 0 && strcmp(s->inst_labels[i].key, k) == 0 &&
            strcmp(s->inst_labels[i].value, v) == 0) {
            return true;
        }
    }
    return false;
}

static bool oracle_ok(const struct ap_sched_site *s, const struct ap_sched_request *q, double *util)
{
    if (!s->schedulable) {
        return false;
    }
    for (size_t i = 0; i < q->n_exclude; i++) {
        if (strcmp(q->exclude_sites[i], s->name) == 0) {
            return false;
        }
    }
    if ((s->capabilities & q->require_capabilities) != q->require_capabilities) {
        return false;
    }
    for (size_t i = 0; i < q->require_labels.n; i++) {
        bool found = false;
        for (size_t j = 0; j < s->labels.n; j++) {
            found = found || (strcmp(s->labels.kv[j].key, q->require_labels.kv[i].key) == 0 &&
                              strcmp(s->labels.kv[j].value, q->require_labels.kv[i].value) == 0);
        }
        if (!found) {
            return false;
        }
    }
    for (size_t i = 0; i < q->anti_affinity.n; i++) {
        if (oracle_runs(s, q->anti_affinity.kv[i].key, q->anti_affinity.kv[i].value)) {
            return false;
        }
    }
    for (size_t i = 0; i < q->affinity.n; i++) {
        if (!oracle_runs(s, q->affinity.kv[i].key, q->affinity.kv[i].value)) {
            return false;
        }
    }
    if (s->cap_instances == 0 || s->used_instances + 1 > s->cap_instances) {
        return false;
    }
    if (s->cap_cpu_millis != 0 && s->used_cpu_millis + q->cpu_millis > s->cap_cpu_millis) {
        return false;
    }
    if (s->cap_memory_mb != 0 && s->used_memory_mb + q->memory_mb > s->cap_memory_mb) {
        return false;
    }
    double u = (double)(s->used_instances + 1) / (double)s->cap_instances;
    if (s->cap_cpu_millis != 0) {
        double c = (double)(s->used_cpu_millis + q->cpu_millis) / (double)s->cap_cpu_millis;
        u = c > u ? c : u;
    }
    if (s->cap_memory_mb != 0) {
        double m = (double)(s->used_memory_mb + q->memory_mb) / (double)s->cap_memory_mb;
        u = m > u ? m : u;
    }
    *util = u;
    return true;
}

/* The site the oracle expects, or -1: best utilisation, then lowest name, then lowest index. */
static int oracle_pick(const struct topo *t, bool ok[], double util[])
{
    int best = -1;
    for (size_t i = 0; i < t->n; i++) {
        ok[i] = oracle_ok(&t->sites[i], &t->req, &util[i]);
        if (!ok[i]) {
            continue;
        }
        if (best < 0) {
            best = (int)i;
            continue;
        }
        double b = util[best];
        bool wins = t->req.strategy == AP_SCHED_SPREAD ? util[i] < b : util[i] > b;
        if (wins || (util[i] == b && strcmp(t->sites[i].name, t->sites[best].name) < 0)) {
            best = (int)i;
        }
    }
    return best;
}

static void test_random_topologies(void **state)
{
    (void)state;
    struct topo *t = topo_new();
    bool ok[TOPO_MAX_SITES];
    double util[TOPO_MAX_SITES];
    size_t found = 0, none = 0;
    for (uint64_t seed = 1; seed <= 2000; seed++) {
        struct rng r = {seed};
        gen_topo(&r, t);
        int want = oracle_pick(t, ok, util);
        int got = ap_sched_pick(t->sites, t->n, &t->req, t->verdicts);
        if (got != (want >= 0 ? want : AP_ENOTFOUND)) {
            print_error("seed %llu: picked %d, oracle %d\n", (unsigned long long)seed, got, want);
        }
        assert_int_equal(got, want >= 0 ? want : AP_ENOTFOUND);
        /* Verdicts are optional and change nothing. */
        assert_int_equal(ap_sched_pick(t->sites, t->n, &t->req, NULL), got);
        bool any = false;
        for (size_t i = 0; i < t->n; i++) {
            const struct ap_sched_verdict *v = &t->verdicts[i];
            assert_int_equal(v->site, i);
            assert_int_equal(v->kept, ok[i]);
            assert_true(v->why[0] != '\0');
            if (ok[i]) {
                any = true;
                assert_true(v->score == util[i]);
                assert_true(v->score > 0.0 && v->score <= 1.0);
                assert_non_null(strstr(v->why, (int)i == got ? "chosen" : "fits"));
            }
        }
        /* No site is chosen iff no site satisfies the constraints. */
        assert_int_equal(got >= 0, any);
        if (got >= 0) {
            found++;
        } else {
            none++;
        }
    }
    /* The generator must exercise both outcomes, or the properties prove little. */
    assert_true(found > 200 && none > 200);
    test_free(t);
}

/* N identical sites: name i is "site-<i>" with capacity 8000 millis, 16384 MB, 100 instances. */
static void identical_sites(struct ap_sched_site *s, size_t n)
{
    memset(s, 0, n * sizeof *s);
    for (size_t i = 0; i < n; i++) {
        snprintf(s[i].name, sizeof s[i].name, "site-%zu", i);
        s[i].schedulable = true;
        s[i].cap_cpu_millis = 8000;
        s[i].cap_memory_mb = 16384;
        s[i].cap_instances = 100;
    }
}

static void place(struct ap_sched_site *s, const struct ap_sched_request *q)
{
    s->used_cpu_millis += q->cpu_millis;
    s->used_memory_mb += q->memory_mb;
    s->used_instances++;
}

static void test_ties_by_name(void **state)
{
    (void)state;
    struct ap_sched_site s[3];
    identical_sites(s, 3);
    ap_strlcpy(s[0].name, "c", sizeof s[0].name);
    ap_strlcpy(s[1].name, "a", sizeof s[1].name);
    ap_strlcpy(s[2].name, "b", sizeof s[2].name);
    struct ap_sched_request q = {.cpu_millis = 100, .memory_mb = 64};
    assert_int_equal(ap_sched_pick(s, 3, &q, NULL), 1);
    q.strategy = AP_SCHED_PACK;
    assert_int_equal(ap_sched_pick(s, 3, &q, NULL), 1);

    /* A better score beats a lower name: "c" is emptier, "b" fuller. */
    s[1].used_instances = 10;
    s[2].used_instances = 20;
    q.strategy = AP_SCHED_SPREAD;
    assert_int_equal(ap_sched_pick(s, 3, &q, NULL), 0);
    q.strategy = AP_SCHED_PACK;
    assert_int_equal(ap_sched_pick(s, 3, &q, NULL), 2);

    /* The same name twice: the earlier index wins. */
    identical_sites(s, 3);
    ap_strlcpy(s[0].name, "z", sizeof s[0].name);
    ap_strlcpy(s[1].name, "x", sizeof s[1].name);
    ap_strlcpy(s[2].name, "x", sizeof s[2].name);
    assert_int_equal(ap_sched_pick(s, 3, &q, NULL), 1);
}

static void test_scoring(void **state)
{
    (void)state;
    struct ap_sched_site s[3];
    identical_sites(s, 3);
    /* Utilisation after placement is the busiest dimension: cpu on 0, memory on 1, instances
     * on 2. */
    s[0].used_cpu_millis = 3900; /* (3900+100)/8000 = 0.5 */
    s[1].used_memory_mb = 4032;  /* (4032+64)/16384 = 0.25 */
    s[2].used_instances = 69;    /* 70/100 = 0.7 */
    struct ap_sched_request q = {.cpu_millis = 100, .memory_mb = 64};
    struct ap_sched_verdict v[3];
    assert_int_equal(ap_sched_pick(s, 3, &q, v), 1);
    assert_true(v[0].score == 0.5);
    assert_true(v[1].score == 0.25);
    assert_true(v[2].score == 0.7);
    assert_string_equal(v[1].why, "chosen (spread): utilisation 0.250 after placement");
    assert_string_equal(v[0].why, "fits: utilisation 0.500 after placement");
    q.strategy = AP_SCHED_PACK;
    assert_int_equal(ap_sched_pick(s, 3, &q, v), 2);
    assert_string_equal(v[2].why, "chosen (pack): utilisation 0.700 after placement");

    /* Pack still skips a site the instance does not fit on. */
    s[2].used_cpu_millis = 7950;
    assert_int_equal(ap_sched_pick(s, 3, &q, v), 0);
    assert_false(v[2].kept);
}

static void test_capacity_rules(void **state)
{
    (void)state;
    struct ap_sched_site s[1];
    identical_sites(s, 1);
    struct ap_sched_request q = {.cpu_millis = INT64_MAX, .memory_mb = INT64_MAX};
    struct ap_sched_verdict v[1];

    /* 0 cpu or memory capacity is no limit: only instances count. */
    s[0].cap_cpu_millis = 0;
    s[0].cap_memory_mb = 0;
    s[0].used_instances = 24;
    assert_int_equal(ap_sched_pick(s, 1, &q, v), 0);
    assert_true(v[0].score == 0.25);

    /* 0 instances capacity fits nothing. */
    s[0].cap_instances = 0;
    s[0].used_instances = 0;
    assert_int_equal(ap_sched_pick(s, 1, &q, v), AP_ENOTFOUND);
    assert_string_equal(v[0].why, "instances: capacity 0");

    /* Exactly full fits; one more does not. No overflow near INT64_MAX. */
    identical_sites(s, 1);
    q.cpu_millis = 100;
    q.memory_mb = 0;
    s[0].used_cpu_millis = 7900;
    assert_int_equal(ap_sched_pick(s, 1, &q, v), 0);
    assert_true(v[0].score == 1.0);
    s[0].used_cpu_millis = 7901;
    assert_int_equal(ap_sched_pick(s, 1, &q, v), AP_ENOTFOUND);
    s[0].cap_cpu_millis = INT64_MAX;
    s[0].used_cpu_millis = INT64_MAX - 10;
    assert_int_equal(ap_sched_pick(s, 1, &q, v), AP_ENOTFOUND);
    assert_string_equal(v[0].why, "cpu: needs 100 millis, 10 free of 9223372036854775807");
    q.cpu_millis = INT64_MAX;
    s[0].used_cpu_millis = 1;
    assert_int_equal(ap_sched_pick(s, 1, &q, v), AP_ENOTFOUND);

    /* An over-committed site (capacity lowered below use) takes nothing, not even 0 cpu. */
    identical_sites(s, 1);
    s[0].used_memory_mb = 20000;
    q.cpu_millis = 0;
    assert_int_equal(ap_sched_pick(s, 1, &q, v), AP_ENOTFOUND);
    assert_string_equal(v[0].why, "memory: needs 0 MB, 0 free of 16384");
}

static void test_spread_balances(void **state)
{
    (void)state;
    enum { N = 7, PLACEMENTS = 200 };
    struct ap_sched_site s[N];
    identical_sites(s, N);
    struct ap_sched_request q = {.cpu_millis = 100, .memory_mb = 64};
    for (int k = 0; k < PLACEMENTS; k++) {
        int i = ap_sched_pick(s, N, &q, NULL);
        assert_true(i >= 0 && i < N);
        place(&s[i], &q);
        int64_t lo = INT64_MAX, hi = 0;
        for (size_t j = 0; j < N; j++) {
            lo = s[j].used_instances < lo ? s[j].used_instances : lo;
            hi = s[j].used_instances > hi ? s[j].used_instances : hi;
        }
        assert_true(hi - lo <= 1);
    }
    /* Different capacities: spread keeps utilisation within one instance's share. */
    identical_sites(s, N);
    for (size_t j = 0; j < N; j++) {
        s[j].cap_instances = (int64_t)(10 * (j + 1));
        s[j].cap_cpu_millis = 0;
        s[j].cap_memory_mb = 0;
    }
    for (int k = 0; k < 140; k++) {
        int i = ap_sched_pick(s, N, &q, NULL);
        assert_true(i >= 0);
        place(&s[i], &q);
    }
    for (size_t j = 0; j < N; j++) {
        assert_int_equal(s[j].used_instances, s[j].cap_instances / 2);
    }
}

static void test_pack_fills(void **state)
{
    (void)state;
    enum { N = 4 };
    struct ap_sched_site s[N];
    identical_sites(s, N);
    for (size_t j = 0; j < N; j++) {
        s[j].cap_instances = 10;
    }
    /* Pack fills the lowest-named site first, then the next, until all are full. */
    struct ap_sched_request q = {.cpu_millis = 100, .memory_mb = 64, .strategy = AP_SCHED_PACK};
    for (int k = 0; k < 25; k++) {
        int i = ap_sched_pick(s, N, &q, NULL);
        assert_true(i >= 0);
        place(&s[i], &q);
    }
    assert_int_equal(s[0].used_instances, 10);
    assert_int_equal(s[1].used_instances, 10);
    assert_int_equal(s[2].used_instances, 5);
    assert_int_equal(s[3].used_instances, 0);
    for (int k = 0; k < 15; k++) {
        int i = ap_sched_pick(s, N, &q, NULL);
        assert_true(i >= 0);
        place(&s[i], &q);
    }
    assert_int_equal(ap_sched_pick(s, N, &q, NULL), AP_ENOTFOUND);
}

static void test_verdict_texts(void **state)
{
    (void)state;
    enum { N = 15 };
    static const char *const caps[] = {"pid_ns", "net_ns", "cgroup_v2"};
    struct ap_sched_site s[N];
    struct ap_sched_labelcount counts[N][2];
    struct ap_sched_verdict v[N];
    memset(counts, 0, sizeof counts);
    identical_sites(s, N);
    /* Every site would fit (zone=south, pid_ns, app=db, no app=web) but for one rule. */
    for (size_t i = 0; i < N; i++) {
        snprintf(s[i].name, sizeof s[i].name, "s%02zu", i);
        label_add(&s[i].labels, "tier", "gold");
        label_add(&s[i].labels, "zone", "south");
        s[i].capabilities = 1;
        s[i].inst_labels = counts[i];
        s[i].n_inst_labels = 1;
        count_set(&counts[i][0], "app", "db", 2);
    }
    s[0].schedulable = false;
    s[0].unschedulable_why = "unreachable";
    s[1].schedulable = false;
    s[2].schedulable = false;
    s[2].unschedulable_why = "cordoned";
    /* s[3] is excluded by name. */
    s[4].capabilities = 2;
    ap_strlcpy(s[5].labels.kv[1].value, "north", sizeof s[5].labels.kv[1].value);
    s[6].n_inst_labels = 2;
    count_set(&counts[6][1], "app", "web", 1);
    count_set(&counts[7][0], "app", "db", 0); /* counted 0 times: nothing runs it */
    s[8].used_instances = 100;
    s[9].cap_instances = 0;
    s[10].used_cpu_millis = 7950;
    s[11].cap_memory_mb = 4096;
    s[11].used_memory_mb = 3996;
    s[12].used_cpu_millis = -1;
    s[13].used_instances = 50; /* fits, fuller than s[14] */
    s[14].used_instances = 4;  /* the emptiest that fits: 5/100 beats memory's 512/16384 */

    const char *exclude[] = {"nope", NULL, "s03"};
    struct ap_sched_request q = {.cpu_millis = 100, .memory_mb = 512};
    char errmsg[AP_ERRMSG_SIZE];
    json_error_t jerr;
    json_t *j = json_loads("{\"labels\":{\"zone\":\"south\"},\"capabilities\":[\"pid_ns\"],"
                           "\"affinity\":{\"app\":\"db\"},\"anti_affinity\":{\"app\":\"web\"}}",
                           0, &jerr);
    assert_non_null(j);
    assert_int_equal(ap_sched_request_from_json(j, caps, AP_ARRAY_LEN(caps), &q, errmsg), 0);
    json_decref(j);
    q.exclude_sites = exclude;
    q.n_exclude = AP_ARRAY_LEN(exclude);

    assert_int_equal(ap_sched_pick(s, N, &q, v), 14);
    static const char *const want[N] = {
        "unreachable",
        "unschedulable",
        "cordoned",
        "excluded by the request",
        "missing capability pid_ns",
        "missing label zone=south",
        "anti-affinity: runs app=web",
        "affinity: runs no app=db",
        "instances: needs 1, 0 free of 100",
        "instances: capacity 0",
        "cpu: needs 100 millis, 50 free of 8000",
        "memory: needs 512 MB, 100 free of 4096",
        "invalid site record: negative cpu",
        "fits: utilisation 0.510 after placement",
        "chosen (spread): utilisation 0.050 after placement",
    };
    for (size_t i = 0; i < N; i++) {
        assert_int_equal(v[i].site, i);
        assert_string_equal(v[i].why, want[i]);
        assert_int_equal(v[i].kept, i >= 13);
    }

    /* Without a capability table the bit is named. */
    q.cap_names = NULL;
    q.require_capabilities = (UINT64_C(1) << 2) | 1;
    assert_int_equal(ap_sched_pick(s, N, &q, v), AP_ENOTFOUND);
    assert_string_equal(v[13].why, "missing capability bit 2");
}

static void test_bad_requests(void **state)
{
    (void)state;
    struct ap_sched_site s[2];
    identical_sites(s, 2);
    struct ap_sched_request q = {.cpu_millis = 100};
    struct ap_sched_verdict v[2];
    memset(v, 0x5a, sizeof v);

    assert_int_equal(ap_sched_pick(s, 0, &q, v), AP_ENOTFOUND);
    assert_int_equal(ap_sched_pick(NULL, 0, &q, NULL), AP_ENOTFOUND);
    assert_int_equal(ap_sched_pick(NULL, 2, &q, NULL), AP_EINVAL);
    assert_int_equal(ap_sched_pick(s, 2, NULL, NULL), AP_EINVAL);
    q.cpu_millis = -1;
    assert_int_equal(ap_sched_pick(s, 2, &q, v), AP_EINVAL);
    q.cpu_millis = 0;
    q.memory_mb = -5;
    assert_int_equal(ap_sched_pick(s, 2, &q, v), AP_EINVAL);
    q.memory_mb = 0;
    q.n_exclude = 1;
    assert_int_equal(ap_sched_pick(s, 2, &q, v), AP_EINVAL);
    q.n_exclude = 0;
    q.affinity.n = AP_SCHED_MAX_LABELS + 1;
    assert_int_equal(ap_sched_pick(s, 2, &q, v), AP_EINVAL);
    q.affinity.n = 0;
    q.strategy = (enum ap_sched_strategy)7;
    assert_int_equal(ap_sched_pick(s, 2, &q, v), AP_EINVAL);
    /* Verdicts are untouched on AP_EINVAL. */
    assert_int_equal(v[0].why[0], 0x5a);
    q.strategy = AP_SCHED_PACK;
    assert_int_equal(ap_sched_pick(s, 2, &q, v), 0);
}

static const char *const test_caps[] = {"pid_ns", "net_ns", "cgroup_v2"};

static int parse(const char *text, struct ap_sched_request *q, char *errmsg)
{
    json_error_t jerr;
    json_t *j = json_loads(text, JSON_DECODE_ANY, &jerr);
    if (j == NULL) {
        print_error("bad test JSON %s: %s\n", text, jerr.text);
    }
    assert_non_null(j);
    int rv = ap_sched_request_from_json(j, test_caps, AP_ARRAY_LEN(test_caps), q, errmsg);
    json_decref(j);
    return rv;
}

static void test_json_good(void **state)
{
    (void)state;
    struct ap_sched_request q;
    char errmsg[AP_ERRMSG_SIZE] = "";
    memset(&q, 0x7f, sizeof q);
    q.cpu_millis = 250;
    q.memory_mb = 128;
    assert_int_equal(parse("{\"labels\":{\"zone\":\"south\",\"hw\":\"gpu\"},"
                           "\"capabilities\":[\"pid_ns\",\"cgroup_v2\",\"pid_ns\"],"
                           "\"strategy\":\"pack\",\"affinity\":{\"app\":\"db\"},"
                           "\"anti_affinity\":{\"app\":\"web\",\"tier\":\"\"}}",
                           &q, errmsg),
                     0);
    /* The resources stay as the caller set them; everything else comes from the body. */
    assert_int_equal(q.cpu_millis, 250);
    assert_int_equal(q.memory_mb, 128);
    assert_int_equal(q.require_labels.n, 2);
    assert_string_equal(q.require_labels.kv[0].key, "zone");
    assert_string_equal(q.require_labels.kv[0].value, "south");
    assert_string_equal(q.require_labels.kv[1].key, "hw");
    assert_string_equal(q.require_labels.kv[1].value, "gpu");
    assert_int_equal(q.require_capabilities, 5);
    assert_int_equal(q.strategy, AP_SCHED_PACK);
    assert_int_equal(q.affinity.n, 1);
    assert_string_equal(q.affinity.kv[0].value, "db");
    assert_int_equal(q.anti_affinity.n, 2);
    assert_string_equal(q.anti_affinity.kv[1].key, "tier");
    assert_string_equal(q.anti_affinity.kv[1].value, "");
    assert_null(q.exclude_sites);
    assert_int_equal(q.n_exclude, 0);
    assert_ptr_equal(q.cap_names, test_caps);
    assert_int_equal(q.n_cap_names, 3);

    /* Defaults: NULL, a JSON null, and an empty object. */
    static const char *const defaults[] = {NULL, "null", "{}", "{\"strategy\":\"spread\"}"};
    for (size_t i = 0; i < AP_ARRAY_LEN(defaults); i++) {
        memset(&q, 0x7f, sizeof q);
        int rv = defaults[i] == NULL ? ap_sched_request_from_json(NULL, test_caps, 3, &q, errmsg)
                                     : parse(defaults[i], &q, errmsg);
        assert_int_equal(rv, 0);
        assert_int_equal(q.strategy, AP_SCHED_SPREAD);
        assert_int_equal(q.require_labels.n + q.affinity.n + q.anti_affinity.n, 0);
        assert_int_equal(q.require_capabilities, 0);
        assert_null(q.exclude_sites);
    }
    assert_string_equal(ap_sched_strategy_name(AP_SCHED_PACK), "pack");
    assert_string_equal(ap_sched_strategy_name(AP_SCHED_SPREAD), "spread");
}

static void test_json_bad(void **state)
{
    (void)state;
    char many[2048], longval[200];
    size_t pos = (size_t)snprintf(many, sizeof many, "{\"labels\":{");
    for (int i = 0; i <= AP_SCHED_MAX_LABELS; i++) {
        pos += (size_t)snprintf(many + pos, sizeof many - pos, "%s\"k%d\":\"v\"", i ? "," : "", i);
    }
    snprintf(many + pos, sizeof many - pos, "}}");
    char v64[65];
    memset(v64, 'x', 64);
    v64[64] = '\0';
    snprintf(longval, sizeof longval, "{\"affinity\":{\"app\":\"%s\"}}", v64);

    static const struct {
        const char *body;
        const char *want;
    } cases[] = {
        {"[]", "placement: must be an object"},
        {"\"spread\"", "placement: must be an object"},
        {"{\"foo\":1}", "placement.foo: unknown field"},
        {"{\"strategy\":\"fast\"}", "placement.strategy: must be spread or pack"},
        {"{\"strategy\":1}", "placement.strategy: must be spread or pack"},
        {"{\"strategy\":null}", "placement.strategy: must be spread or pack"},
        {"{\"labels\":[]}", "placement.labels: must be an object"},
        {"{\"labels\":{\"zone\":1}}", "placement.labels.zone: value must be a string"},
        {"{\"labels\":{\"\":\"x\"}}", "placement.labels: key '' must be"},
        {"{\"labels\":{\"zone\":\"a b\"}}", "placement.labels.zone: value must be"},
        {"{\"capabilities\":\"pid_ns\"}", "placement.capabilities: must be an array"},
        {"{\"capabilities\":[\"gpu\"]}", "placement.capabilities[0]: unknown capability 'gpu'"},
        {"{\"capabilities\":[\"pid_ns\",3]}", "placement.capabilities[1]: must be a string"},
        {"{\"affinity\":\"app=db\"}", "placement.affinity: must be an object"},
        {"{\"anti_affinity\":{\"app\":null}}", "placement.anti_affinity.app: value must be"},
        {"{\"strategy\":\"pack\",\"labels\":{\"zone\":\"s\"},\"extra\":{}}",
         "placement.extra: unknown field"},
    };
    struct ap_sched_request q;
    char errmsg[AP_ERRMSG_SIZE];
    for (size_t i = 0; i < AP_ARRAY_LEN(cases) + 2; i++) {
        const char *body =
            i < AP_ARRAY_LEN(cases) ? cases[i].body : (i == AP_ARRAY_LEN(cases) ? many : longval);
        const char *want = i < AP_ARRAY_LEN(cases)
                               ? cases[i].want
                               : (i == AP_ARRAY_LEN(cases) ? "placement.labels: at most 32 labels"
                                                           : "placement.affinity.app: value must");
        memset(&q, 0, sizeof q);
        q.cpu_millis = 42;
        errmsg[0] = '\0';
        assert_int_equal(parse(body, &q, errmsg), AP_EINVAL);
        if (strstr(errmsg, want) != errmsg) {
            print_error("body %s: errmsg '%s', want '%s...'\n", body, errmsg, want);
        }
        assert_ptr_equal(strstr(errmsg, want), errmsg);
        /* On error the request is back to defaults, resources kept. */
        assert_int_equal(q.cpu_millis, 42);
        assert_int_equal(q.strategy, AP_SCHED_SPREAD);
        assert_int_equal(q.require_labels.n + q.affinity.n + q.anti_affinity.n, 0);
    }
    /* errmsg may be NULL. */
    assert_int_equal(parse("{\"foo\":1}", &q, NULL), AP_EINVAL);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The cost of one placement among 1,000 sites shaped like a real region: a few labels each, a few
 * instance label counts, a label constraint matching a third of them and an anti-affinity. */
static void test_cost_1000_sites(void **state)
{
    (void)state;
    enum { N = 1000, INST = 8, PLACEMENTS = 3000, WITH_VERDICTS = 300 };
    struct ap_sched_site *s = test_calloc(N, sizeof *s);
    struct ap_sched_labelcount *counts = test_calloc((size_t)N * INST, sizeof *counts);
    struct ap_sched_verdict *v = test_calloc(N, sizeof *v);
    assert_non_null(s);
    assert_non_null(counts);
    assert_non_null(v);
    identical_sites(s, N);
    struct rng r = {42};
    for (size_t i = 0; i < N; i++) {
        snprintf(s[i].name, sizeof s[i].name, "r1-site-%04u", (unsigned)((i * 7919) % N));
        label_add(&s[i].labels, "hw", pick_str(&r, hw_vals, AP_ARRAY_LEN(hw_vals)));
        label_add(&s[i].labels, "tier", pick_str(&r, tier_vals, AP_ARRAY_LEN(tier_vals)));
        label_add(&s[i].labels, "rack", "r12");
        label_add(&s[i].labels, "zone", zone_vals[i % 3]);
        s[i].capabilities = 0x7;
        s[i].cap_instances = 1000;
        s[i].inst_labels = &counts[i * INST];
        s[i].n_inst_labels = INST;
        for (size_t k = 0; k < INST; k++) {
            char val[16];
            snprintf(val, sizeof val, "svc-%zu", (i + k) % 50);
            count_set(&s[i].inst_labels[k], "app", val, 1 + rng_below(&r, 3));
        }
        s[i].schedulable = rng_below(&r, 50) != 0;
        s[i].unschedulable_why = "unreachable";
    }
    struct ap_sched_request q = {.cpu_millis = 100, .memory_mb = 64};
    label_add(&q.require_labels, "zone", "south");
    label_add(&q.anti_affinity, "app", "svc-7");
    q.require_capabilities = 0x3;

    double t0 = now_s();
    for (int k = 0; k < PLACEMENTS; k++) {
        q.strategy = (k & 1) != 0 ? AP_SCHED_PACK : AP_SCHED_SPREAD;
        int i = ap_sched_pick(s, N, &q, NULL);
        assert_true(i >= 0);
        assert_string_equal(s[i].labels.kv[3].value, "south");
        place(&s[i], &q);
    }
    double t1 = now_s();
    for (int k = 0; k < WITH_VERDICTS; k++) {
        int i = ap_sched_pick(s, N, &q, v);
        assert_true(i >= 0);
        place(&s[i], &q);
    }
    double t2 = now_s();
    printf("scheduler: %d sites: %.1f us per placement, %.1f us with verdicts\n", N,
           (t1 - t0) / PLACEMENTS * 1e6, (t2 - t1) / WITH_VERDICTS * 1e6);
    test_free(v);
    test_free(counts);
    test_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random_topologies), cmocka_unit_test(test_ties_by_name),
        cmocka_unit_test(test_scoring),           cmocka_unit_test(test_capacity_rules),
        cmocka_unit_test(test_spread_balances),   cmocka_unit_test(test_pack_fills),
        cmocka_unit_test(test_verdict_texts),     cmocka_unit_test(test_bad_requests),
        cmocka_unit_test(test_json_good),         cmocka_unit_test(test_json_bad),
        cmocka_unit_test(test_cost_1000_sites),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
