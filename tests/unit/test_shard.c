/* Unit tests of the site shard: local writes, merges from the region, the change stream, rights. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "ap/base.h"
#include "ap/err.h"
#include "ap/log.h"
#include "ap/mp.h"
#include "shard.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct fx {
    char dir[64];
    char path[96];
    struct shard *s;
};

static int setup(void **state)
{
    struct fx *f = ap_calloc(1, sizeof *f);
    char errmsg[AP_ERRMSG_SIZE];
    ap_log_init("test", AP_LOG_WARN, NULL);
    strcpy(f->dir, "/tmp/ap-shard-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof f->path, "%s/shard.db", f->dir);
    assert_int_equal(shard__open(&f->s, f->path, errmsg), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    char cmd[128];
    shard__close(f->s);
    snprintf(cmd, sizeof cmd, "rm -rf %s", f->dir);
    assert_int_equal(system(cmd), 0);
    ap_free(f);
    return 0;
}

static void make(struct ap_instrec *r, int k, const char *tenant, uint64_t ms)
{
    memset(r, 0, sizeof *r);
    snprintf(r->id, sizeof r->id, "0190b3f0-0000-7000-8000-%012d", k);
    snprintf(r->name, sizeof r->name, "w%d", k);
    ap_strlcpy(r->tenant, tenant, sizeof r->tenant);
    strcpy(r->site, "r1-s1");
    r->spec = ap_strdup("{\"command\":[\"sleep\",\"9\"]}");
    r->cpu_millis = 100;
    r->memory_mb = 64;
    r->created = (struct ap_hlc_ts){ms, 0, 7};
    r->desired_ts = r->created;
    r->actual_ts = r->created;
}

static void put(struct fx *f, struct ap_instrec *r)
{
    assert_int_equal(shard__begin(f->s), 0);
    assert_int_equal(shard__put_local(f->s, r), 0);
    assert_int_equal(shard__commit(f->s), 0);
}

/* Decode a delta body and count its instance and rights records. */
static void decode_delta(const uint8_t *body, size_t len, size_t *n_inst, size_t *n_rights,
                         uint64_t *to)
{
    msgpack_unpacked up;
    const msgpack_object *inst, *rights;
    assert_int_equal(ap_mp_unpack(body, len, 1 << 24, &up, NULL), 0);
    assert_int_equal(ap_mp_get_array(&up.data, "inst", &inst, 100000, true, NULL), 0);
    assert_int_equal(ap_mp_get_array(&up.data, "rights", &rights, 100000, true, NULL), 0);
    assert_int_equal(ap_mp_get_u64(&up.data, "to", to, UINT64_MAX, true, NULL), 0);
    *n_inst = inst->via.array.size;
    *n_rights = rights->via.array.size;
    msgpack_unpacked_destroy(&up);
}

static void test_local_writes_survive_reopen(void **state)
{
    struct fx *f = *state;
    struct ap_instrec r, got;
    char errmsg[AP_ERRMSG_SIZE];
    make(&r, 1, "acme", 1000);
    put(f, &r);
    assert_int_equal(shard__seq(f->s), 1);
    assert_int_equal(shard__set_meta(f->s, "region_applied", 42), 0);
    shard__close(f->s);
    assert_int_equal(shard__open(&f->s, f->path, errmsg), 0);
    assert_int_equal(shard__seq(f->s), 1);
    assert_int_equal(shard__meta(f->s, "region_applied"), 42);
    assert_int_equal(shard__get(f->s, r.id, &got), 0);
    assert_true(ap_instrec_equal(&r, &got));
    assert_string_equal(got.spec, r.spec);
    bool taken;
    assert_int_equal(shard__name_taken(f->s, "acme", "w1", &taken), 0);
    assert_true(taken);
    assert_int_equal(shard__name_taken(f->s, "other", "w1", &taken), 0);
    assert_false(taken);
    struct ap_instrec none;
    assert_int_equal(shard__get(f->s, "nope", &none), AP_ENOTFOUND);
    ap_instrec_clear(&got);
    ap_instrec_clear(&r);
}

static void test_delta_pages_and_no_echo(void **state)
{
    struct fx *f = *state;
    for (int k = 0; k < 25; k++) {
        struct ap_instrec r;
        make(&r, k, "acme", 1000 + (uint64_t)k);
        put(f, &r);
        ap_instrec_clear(&r);
    }
    uint8_t *body;
    size_t len, count, ni, nr;
    uint64_t to, after = 0;
    size_t total = 0;
    for (int page = 0; page < 10; page++) {
        assert_int_equal(shard__delta_after(f->s, after, 10, &body, &len, &to, &count), 0);
        decode_delta(body, len, &ni, &nr, &to);
        ap_free(body);
        total += ni;
        if (count == 0) {
            break;
        }
        assert_true(to > after);
        after = to;
    }
    assert_int_equal(total, 25);

    /* A record from the region, merged unchanged, is not sent back. */
    struct ap_instrec remote;
    bool changed;
    make(&remote, 100, "acme", 5000);
    strcpy(remote.site, "r1-s1");
    assert_int_equal(shard__begin(f->s), 0);
    assert_int_equal(shard__merge_remote(f->s, &remote, &changed), 0);
    assert_int_equal(shard__commit(f->s), 0);
    assert_true(changed);
    assert_int_equal(shard__delta_after(f->s, after, 10, &body, &len, &to, &count), 0);
    assert_int_equal(count, 0);
    ap_free(body);

    /* A newer local actual state on that record goes back. */
    struct ap_instrec mine;
    assert_int_equal(shard__get(f->s, remote.id, &mine), 0);
    mine.actual = AP_ACTUAL_RUNNING;
    mine.actual_ts = (struct ap_hlc_ts){6000, 0, 9};
    put(f, &mine);
    assert_int_equal(shard__delta_after(f->s, after, 10, &body, &len, &to, &count), 0);
    assert_int_equal(count, 1);
    ap_free(body);

    /* The region later deletes it: delete dominates, and the site's newer
     * actual state survives the merge, so the row goes back to the region. */
    remote.desired = AP_DESIRED_DELETED;
    remote.desired_ts = (struct ap_hlc_ts){5500, 0, 1};
    assert_int_equal(shard__begin(f->s), 0);
    assert_int_equal(shard__merge_remote(f->s, &remote, &changed), 0);
    assert_int_equal(shard__commit(f->s), 0);
    struct ap_instrec now;
    assert_int_equal(shard__get(f->s, remote.id, &now), 0);
    assert_int_equal(now.desired, AP_DESIRED_DELETED);
    assert_int_equal(now.actual, AP_ACTUAL_RUNNING);
    ap_instrec_clear(&now);
    ap_instrec_clear(&mine);
    ap_instrec_clear(&remote);
}

static void test_rights_and_usage(void **state)
{
    struct fx *f = *state;
    struct shard_rights rt;
    assert_int_equal(shard__begin(f->s), 0);
    assert_int_equal(shard__rights_merge_remote(f->s, "acme", SHARD_RES_INSTANCES, 5, 2), 0);
    assert_int_equal(shard__rights_merge_remote(f->s, "acme", SHARD_RES_CPU, 1000, 0), 0);
    /* granted only grows: an older, smaller grant changes nothing. */
    assert_int_equal(shard__rights_merge_remote(f->s, "acme", SHARD_RES_INSTANCES, 3, 2), 0);
    assert_int_equal(shard__commit(f->s), 0);
    for (int k = 0; k < 3; k++) {
        struct ap_instrec r;
        make(&r, k, "acme", 1000 + (uint64_t)k);
        if (k == 2) {
            r.desired = AP_DESIRED_DELETED;
        }
        put(f, &r);
        ap_instrec_clear(&r);
    }
    assert_int_equal(shard__rights(f->s, "acme", &rt), 0);
    assert_int_equal(rt.granted[SHARD_RES_INSTANCES], 5);
    assert_int_equal(rt.reserve[SHARD_RES_INSTANCES], 2);
    assert_int_equal(rt.usage[SHARD_RES_INSTANCES], 2); /* the deleted one does not count */
    assert_int_equal(rt.usage[SHARD_RES_CPU], 200);
    assert_int_equal(shard__begin(f->s), 0);
    assert_int_equal(shard__rights_return(f->s, "acme", SHARD_RES_INSTANCES, 2), 0);
    assert_int_equal(shard__commit(f->s), 0);
    assert_int_equal(shard__rights(f->s, "acme", &rt), 0);
    assert_int_equal(rt.returned[SHARD_RES_INSTANCES], 2);
    /* The return travels in the next delta. */
    uint8_t *body;
    size_t len, count, ni, nr;
    uint64_t to;
    assert_int_equal(shard__delta_after(f->s, 3, 10, &body, &len, &to, &count), 0);
    decode_delta(body, len, &ni, &nr, &to);
    ap_free(body);
    assert_int_equal(ni, 0);
    assert_int_equal(nr, 1);
    char **tenants;
    size_t nt;
    assert_int_equal(shard__rights_tenants(f->s, &tenants, &nt), 0);
    assert_int_equal(nt, 1);
    assert_string_equal(tenants[0], "acme");
    ap_free(tenants[0]);
    ap_free(tenants);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_local_writes_survive_reopen, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delta_pages_and_no_echo, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rights_and_usage, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
