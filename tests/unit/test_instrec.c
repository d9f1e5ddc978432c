/* Unit and property tests of the instance record: merge rules and codec. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "ap/base.h"
#include "ap/err.h"
#include "ap/instjson.h"
#include "ap/instrec.h"
#include "ap/mp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* splitmix64: a seeded generator so a failing case replays exactly. */
static uint64_t rng_state;

static uint64_t rnd(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static struct ap_hlc_ts rnd_ts(void)
{
    /* Few distinct values so ties on physical and logical parts happen often. */
    struct ap_hlc_ts t = {1000 + rnd() % 4, (uint16_t)(rnd() % 3), (uint32_t)(1 + rnd() % 3)};
    return t;
}

/* One writer per stamp: the same stamp always carries the same value, as in
 * the system, where a stamp names one write of one node. */
static uint64_t mix(struct ap_hlc_ts t)
{
    return t.physical_ms * 31 + t.logical * 7 + t.node;
}

static void rnd_rec(struct ap_instrec *r)
{
    memset(r, 0, sizeof *r);
    strcpy(r->id, "0190b3f0-0000-7000-8000-000000000001");
    strcpy(r->name, "web");
    strcpy(r->site, "r1-s1");
    r->cpu_millis = 100;
    r->memory_mb = 64;
    r->created = rnd_ts();
    snprintf(r->tenant, sizeof r->tenant, "t%d", (int)(mix(r->created) % 2));
    r->spec = ap_strdup(mix(r->created) % 3 ? "{\"a\":1}" : "{\"b\":2}");
    r->desired_ts = rnd_ts();
    r->desired = (enum ap_desired)(mix(r->desired_ts) % 3);
    r->actual_ts = rnd_ts();
    r->actual = (enum ap_actual)(mix(r->actual_ts) % 6);
    r->pid = (int64_t)(mix(r->actual_ts) % 5);
    r->exit_code = (int64_t)(mix(r->actual_ts) % 3);
    r->restarts = (int64_t)(mix(r->actual_ts) % 4);
}

static bool same(const struct ap_instrec *a, const struct ap_instrec *b)
{
    return ap_instrec_equal(a, b) && strcmp(a->tenant, b->tenant) == 0 &&
           strcmp(a->spec, b->spec) == 0;
}

static void merged(struct ap_instrec *out, const struct ap_instrec *a, const struct ap_instrec *b)
{
    assert_int_equal(ap_instrec_copy(out, a), 0);
    ap_instrec_merge(out, b);
}

static unsigned cases(void)
{
    const char *s = getenv("AP_PROP_CASES");
    return s != NULL ? (unsigned)strtoul(s, NULL, 10) : 100000;
}

static void seed(void)
{
    const char *s = getenv("AP_PROP_SEED");
    rng_state = s != NULL ? strtoull(s, NULL, 10) : 20261127;
}

static void test_merge_properties(void **state)
{
    (void)state;
    seed();
    uint64_t start_seed = rng_state;
    unsigned n = cases();
    for (unsigned i = 0; i < n; i++) {
        struct ap_instrec a, b, c, ab, ba, ab_c, bc, a_bc, aa;
        rnd_rec(&a);
        rnd_rec(&b);
        rnd_rec(&c);
        merged(&ab, &a, &b);
        merged(&ba, &b, &a);
        merged(&ab_c, &ab, &c);
        merged(&bc, &b, &c);
        merged(&a_bc, &a, &bc);
        merged(&aa, &a, &a);
        if (!same(&ab, &ba) || !same(&ab_c, &a_bc) || !same(&aa, &a)) {
            fail_msg("merge property broken at case %u (AP_PROP_SEED=%llu)", i,
                     (unsigned long long)start_seed);
        }
        /* Delete dominates: once either side is deleted, the merge is deleted. */
        if ((a.desired == AP_DESIRED_DELETED || b.desired == AP_DESIRED_DELETED) &&
            ab.desired != AP_DESIRED_DELETED) {
            fail_msg("a deleted instance came back at case %u", i);
        }
        struct ap_instrec *all[] = {&a, &b, &c, &ab, &ba, &ab_c, &bc, &a_bc, &aa};
        for (size_t k = 0; k < AP_ARRAY_LEN(all); k++) {
            ap_instrec_clear(all[k]);
        }
    }
    printf("merge properties: %u cases, seed %llu\n", n, (unsigned long long)start_seed);
}

static void test_delete_wins_over_later_start(void **state)
{
    (void)state;
    struct ap_instrec a, b;
    seed();
    rnd_rec(&a);
    assert_int_equal(ap_instrec_copy(&b, &a), 0);
    struct ap_hlc_ts early = {1000, 0, 1}, late = {9000, 0, 2};
    a.desired = AP_DESIRED_DELETED;
    a.desired_ts = early;
    b.desired = AP_DESIRED_RUNNING;
    b.desired_ts = late;
    assert_true(ap_instrec_merge(&b, &a));
    assert_int_equal(b.desired, AP_DESIRED_DELETED);
    /* And a local write cannot undo it. */
    assert_false(ap_instrec_set_desired(&b, AP_DESIRED_RUNNING, (struct ap_hlc_ts){99999, 0, 1}));
    assert_int_equal(b.desired, AP_DESIRED_DELETED);
    ap_instrec_clear(&a);
    ap_instrec_clear(&b);
}

static void test_codec_round_trip_and_garbage(void **state)
{
    (void)state;
    seed();
    for (int i = 0; i < 1000; i++) {
        struct ap_instrec a, b;
        struct ap_mp_writer w;
        uint8_t *buf;
        size_t len;
        msgpack_unpacked up;
        char errmsg[AP_ERRMSG_SIZE];
        rnd_rec(&a);
        ap_mp_writer_init(&w);
        ap_instrec_write(&w, &a);
        assert_int_equal(ap_mp_writer_finish(&w, &buf, &len), 0);
        assert_int_equal(ap_mp_unpack(buf, len, 1 << 20, &up, errmsg), 0);
        if (ap_instrec_read(&up.data, &b, errmsg) != 0) {
            fail_msg("read: %s", errmsg);
        }
        assert_true(same(&a, &b));
        assert_int_equal(a.cpu_millis, b.cpu_millis);
        msgpack_unpacked_destroy(&up);
        /* Every truncation is refused by the bounded unpacker, never crashes. */
        for (size_t cut = 0; cut < len; cut += 7) {
            assert_int_not_equal(ap_mp_unpack(buf, cut, 1 << 20, &up, errmsg), 0);
        }
        ap_free(buf);
        ap_instrec_clear(&a);
        ap_instrec_clear(&b);
    }
    /* A map with a field of the wrong type names it. */
    struct ap_mp_writer w;
    uint8_t *buf;
    size_t len;
    msgpack_unpacked up;
    char errmsg[AP_ERRMSG_SIZE] = "";
    struct ap_instrec r;
    ap_mp_writer_init(&w);
    ap_mp_write_map(&w, 1);
    ap_mp_write_str(&w, "id");
    ap_mp_write_uint(&w, 7);
    assert_int_equal(ap_mp_writer_finish(&w, &buf, &len), 0);
    assert_int_equal(ap_mp_unpack(buf, len, 1 << 20, &up, errmsg), 0);
    assert_int_equal(ap_instrec_read(&up.data, &r, errmsg), AP_EPROTO);
    assert_non_null(strstr(errmsg, "id"));
    msgpack_unpacked_destroy(&up);
    ap_free(buf);
}

static void test_create_body_validation(void **state)
{
    (void)state;
    struct {
        const char *body;
        const char *site;
        int rv;
        const char *needle;
    } cases_[] = {
        {"{\"name\":\"web\",\"tenant\":\"acme\",\"site\":\"r1-s1\",\"command\":[\"sleep\",\"1\"]}",
         NULL, 0, NULL},
        {"{\"name\":\"web\",\"tenant\":\"acme\",\"command\":[\"sleep\"]}", "r1-s1", 0, NULL},
        {"{\"name\":\"web\",\"tenant\":\"acme\",\"command\":[\"sleep\"]}", NULL, AP_EINVAL, "site"},
        {"{\"name\":\"Web\",\"tenant\":\"acme\",\"site\":\"s\",\"command\":[\"x\"]}", NULL,
         AP_EINVAL, "name"},
        {"{\"name\":\"web\",\"tenant\":\"acme\",\"site\":\"s\",\"command\":[]}", NULL, AP_EINVAL,
         "command"},
        {"{\"name\":\"web\",\"tenant\":\"acme\",\"site\":\"s\",\"command\":[1]}", NULL, AP_EINVAL,
         "command[0]"},
        {"{\"name\":\"web\",\"tenant\":\"acme\",\"site\":\"s\",\"command\":[\"x\"],\"restart\":"
         "\"sometimes\"}",
         NULL, AP_EINVAL, "restart"},
        {"{\"name\":\"web\",\"tenant\":\"acme\",\"site\":\"s\",\"command\":[\"x\"],\"resources\":{"
         "\"cpu_millis\":0}}",
         NULL, AP_EINVAL, "cpu_millis"},
        {"{\"name\":\"web\",\"tenant\":\"acme\",\"site\":\"s\",\"command\":[\"x\"],\"colour\":1}",
         NULL, AP_EINVAL, "colour"},
        {"{\"name\":\"web\",\"tenant\":\"acme\",\"site\":\"r1-s2\",\"command\":[\"x\"]}", "r1-s1",
         AP_EINVAL, "site"},
        {"{\"name\":\"web\",\"tenant\":\"acme\",\"site\":\"s\",\"command\":[\"x\"],\"env\":{\"A="
         "B\":"
         "\"c\"}}",
         NULL, AP_EINVAL, "env"},
    };
    for (size_t i = 0; i < AP_ARRAY_LEN(cases_); i++) {
        json_t *body = json_loads(cases_[i].body, 0, NULL);
        struct ap_instrec r;
        char errmsg[AP_ERRMSG_SIZE] = "";
        int rv = ap_instjson_parse_create(body, cases_[i].site, &r, errmsg);
        if (rv != cases_[i].rv) {
            fail_msg("case %zu: got %d (%s), want %d", i, rv, errmsg, cases_[i].rv);
        }
        if (cases_[i].needle != NULL && strstr(errmsg, cases_[i].needle) == NULL) {
            fail_msg("case %zu: message '%s' does not name '%s'", i, errmsg, cases_[i].needle);
        }
        if (rv == 0) {
            assert_string_equal(r.site, "r1-s1");
            assert_non_null(strstr(r.spec, "\"restart\":\"always\""));
            assert_int_equal(r.cpu_millis, 100);
            json_t *shape = ap_instjson_render(&r);
            assert_non_null(json_object_get(shape, "command"));
            json_decref(shape);
            ap_instrec_clear(&r);
        }
        json_decref(body);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_merge_properties),
        cmocka_unit_test(test_delete_wins_over_later_start),
        cmocka_unit_test(test_codec_round_trip_and_garbage),
        cmocka_unit_test(test_create_body_validation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
