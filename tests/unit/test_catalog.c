/* Unit tests of the regional catalog: instance, quota and site-delta commands applied directly. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "ap/base.h"
#include "ap/err.h"
#include "ap/mp.h"
#include "catalog.h"

struct fx {
    struct ap_store *st;
    uint64_t index; /* Raft index of the next command. */
    struct ap_rsm_result res;
};

static int setup(void **state)
{
    struct fx *f = ap_calloc(1, sizeof *f);
    assert_non_null(f);
    assert_int_equal(ap_store_open(":memory:", AP_STORE_SYNC_OFF, &f->st, NULL), 0);
    assert_int_equal(ap_store_migrate(f->st, catalog__migrations, catalog__n_migrations), 0);
    assert_int_equal(ap_store_begin(f->st), 0);
    f->index = 1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    json_decref(f->res.value);
    ap_store_rollback(f->st);
    ap_store_close(f->st);
    ap_free(f);
    return 0;
}

/* Apply cmd (taken) as the rsm fsm does: in a savepoint undone when the command fails. */
static int apply(struct fx *f, uint8_t *cmd, size_t len)
{
    assert_non_null(cmd);
    json_decref(f->res.value);
    memset(&f->res, 0, sizeof f->res);
    f->res.want_value = true; /* As on the leader that proposed it. */
    assert_int_equal(ap_store_savepoint(f->st, "cmd"), 0);
    catalog__apply(NULL, f->st, f->index++, cmd, len, &f->res);
    if (f->res.status != 0) {
        print_message("apply: %s\n", f->res.message);
        assert_int_equal(ap_store_rollback_to(f->st, "cmd"), 0);
    } else {
        assert_int_equal(ap_store_release(f->st, "cmd"), 0);
    }
    ap_free(cmd);
    return f->res.status;
}

static void add_site(struct fx *f, const char *name)
{
    struct site_spec spec;
    uint8_t *cmd;
    size_t len;
    memset(&spec, 0, sizeof spec);
    ap_strlcpy(spec.name, name, sizeof spec.name);
    assert_int_equal(catalog__encode_site_create(&spec, 1000, &cmd, &len), 0);
    assert_int_equal(apply(f, cmd, len), 0);
}

static struct ap_hlc_ts ts_at(uint64_t ms, uint32_t node)
{
    struct ap_hlc_ts t = {.physical_ms = ms, .logical = 0, .node = node};
    return t;
}

/* A record as the HTTP layer makes one (or a site, with site_node). */
static void make_rec(struct ap_instrec *r, const char *id, const char *tenant, const char *name,
                     const char *site, int64_t cpu, int64_t mem, struct ap_hlc_ts created)
{
    memset(r, 0, sizeof *r);
    ap_strlcpy(r->id, id, sizeof r->id);
    ap_strlcpy(r->tenant, tenant, sizeof r->tenant);
    ap_strlcpy(r->name, name, sizeof r->name);
    ap_strlcpy(r->site, site, sizeof r->site);
    r->spec = ap_strdup("{\"command\":[\"sleep\",\"1000\"]}");
    assert_non_null(r->spec);
    r->cpu_millis = cpu;
    r->memory_mb = mem;
    r->created = created;
    r->desired = AP_DESIRED_RUNNING;
    r->desired_ts = created;
    r->actual = AP_ACTUAL_PENDING;
}

static int create(struct fx *f, const char *id, const char *tenant, const char *name,
                  const char *site, int64_t cpu, int64_t mem)
{
    struct ap_instrec r;
    uint8_t *cmd;
    size_t len;
    make_rec(&r, id, tenant, name, site, cpu, mem, ts_at(5000 + f->index, 1));
    assert_int_equal(catalog__encode_instance_create(&r, 5000, &cmd, &len), 0);
    ap_instrec_clear(&r);
    return apply(f, cmd, len);
}

static int desire(struct fx *f, const char *id, enum ap_desired d, struct ap_hlc_ts ts)
{
    uint8_t *cmd;
    size_t len;
    assert_int_equal(catalog__encode_instance_desire(id, d, ts, 6000, &cmd, &len), 0);
    return apply(f, cmd, len);
}

static int set_quota(struct fx *f, const char *tenant, int64_t inst, int64_t cpu, int64_t mem)
{
    bool limited[QUOTA_RES_N] = {inst >= 0, cpu >= 0, mem >= 0};
    int64_t limit[QUOTA_RES_N] = {inst, cpu, mem};
    uint8_t *cmd;
    size_t len;
    assert_int_equal(catalog__encode_quota_set(tenant, limited, limit, 7000, &cmd, &len), 0);
    return apply(f, cmd, len);
}

static int set_reserve(struct fx *f, const char *tenant, const char *site, int64_t inst,
                       int64_t cpu, int64_t mem)
{
    int64_t v[QUOTA_RES_N] = {inst, cpu, mem};
    uint8_t *cmd;
    size_t len;
    assert_int_equal(catalog__encode_reserve_set(tenant, site, v, 7000, &cmd, &len), 0);
    return apply(f, cmd, len);
}

/* Rights row fields, -1 when there is no row. */
static int64_t rights(struct fx *f, const char *site, const char *tenant, const char *res,
                      const char *column)
{
    char sql[160];
    sqlite3_stmt *stmt;
    int64_t v = -1;
    snprintf(sql, sizeof sql,
             "SELECT %s FROM site_rights WHERE site=?1 AND tenant=?2 AND resource=?3", column);
    assert_int_equal(ap_store_prepare(f->st, sql, &stmt), 0);
    ap_store_bind_text(f->st, stmt, 1, site);
    ap_store_bind_text(f->st, stmt, 2, tenant);
    ap_store_bind_text(f->st, stmt, 3, res);
    if (ap_store_step(f->st, stmt) == AP_STORE_ROW) {
        v = sqlite3_column_int64(stmt, 0);
        ap_store_reset(stmt);
    }
    return v;
}

static size_t count_instances(struct fx *f, const char *site, const char *tenant, bool deleted)
{
    json_t *arr;
    assert_int_equal(catalog__instances_list(f->st, site, tenant, deleted, &arr), 0);
    size_t n = json_array_size(arr);
    json_decref(arr);
    return n;
}

static json_int_t view_int(struct fx *f, const char *tenant, const char *part, const char *res)
{
    json_t *v;
    assert_int_equal(catalog__quota_view(f->st, tenant, &v), 0);
    json_t *x = json_object_get(json_object_get(v, part), res);
    json_int_t out = json_is_integer(x) ? json_integer_value(x) : -1;
    json_decref(v);
    return out;
}

#define ID1 "01890a5d-ac96-774b-bcce-b302099a8057"
#define ID2 "01890a5d-ac96-774b-bcce-b302099a8058"
#define ID3 "01890a5d-ac96-774b-bcce-b302099a8059"
#define ID4 "01890a5d-ac96-774b-bcce-b302099a805a"

/* A site create answers with the stored site (built without reading it back), and a
 * follower, whom nobody waits for, builds no answer at all. */
static void test_site_create_result_matches_stored(void **state)
{
    struct fx *f = *state;
    struct site_spec spec;
    uint8_t *cmd;
    size_t len;
    memset(&spec, 0, sizeof spec);
    ap_strlcpy(spec.name, "lyon-1", sizeof spec.name);
    ap_strlcpy(spec.labels[0].key, "zone", sizeof spec.labels[0].key);
    ap_strlcpy(spec.labels[0].value, "south", sizeof spec.labels[0].value);
    ap_strlcpy(spec.labels[1].key, "az", sizeof spec.labels[1].key);
    ap_strlcpy(spec.labels[1].value, "b", sizeof spec.labels[1].value);
    spec.n_labels = 2;
    spec.cpu_millis = 8000;
    spec.memory_mb = 16384;
    spec.instances = 100;
    assert_int_equal(catalog__encode_site_create(&spec, 1700000000123ULL, &cmd, &len), 0);
    assert_int_equal(apply(f, cmd, len), 0);
    json_t *stored = NULL;
    assert_int_equal(catalog__site_get(f->st, "lyon-1", &stored), 0);
    assert_non_null(f->res.value);
    char *a = json_dumps(f->res.value, JSON_SORT_KEYS | JSON_COMPACT);
    char *b = json_dumps(stored, JSON_SORT_KEYS | JSON_COMPACT);
    assert_string_equal(a, b);
    assert_non_null(strstr(a, "\"created_at\":\"2023-11-14T22:13:20.123Z\""));
    free(a);
    free(b);
    json_decref(stored);

    /* As a follower applies it. */
    ap_strlcpy(spec.name, "lyon-2", sizeof spec.name);
    assert_int_equal(catalog__encode_site_create(&spec, 1000, &cmd, &len), 0);
    json_decref(f->res.value);
    memset(&f->res, 0, sizeof f->res);
    assert_int_equal(ap_store_savepoint(f->st, "cmd"), 0);
    catalog__apply(NULL, f->st, f->index++, cmd, len, &f->res);
    ap_free(cmd);
    assert_int_equal(f->res.status, 0);
    assert_null(f->res.value);
    assert_int_equal(ap_store_release(f->st, "cmd"), 0);
    assert_int_equal(catalog__site_get(f->st, "lyon-2", &stored), 0);
    json_decref(stored);
}

static void test_create_and_read(void **state)
{
    struct fx *f = *state;
    add_site(f, "s1");
    assert_int_equal(create(f, ID1, "acme", "web", "s1", 100, 64), 0);
    json_t *v = f->res.value;
    assert_string_equal(json_string_value(json_object_get(v, "id")), ID1);
    assert_string_equal(json_string_value(json_object_get(v, "desired")), "running");
    assert_string_equal(json_string_value(json_object_get(v, "actual")), "pending");

    struct ap_instrec r;
    assert_int_equal(catalog__instance_get(f->st, ID1, &r), 0);
    assert_string_equal(r.name, "web");
    assert_int_equal(r.cpu_millis, 100);
    ap_instrec_clear(&r);
    assert_int_equal(catalog__instance_get(f->st, ID2, &r), AP_ENOTFOUND);

    /* No quota set: unlimited, and the site still got rights for exactly this instance. */
    assert_int_equal(view_int(f, "acme", "limit", "instances"), -1);
    assert_int_equal(rights(f, "s1", "acme", "instances", "granted"), 1);
    assert_int_equal(rights(f, "s1", "acme", "cpu_millis", "granted"), 100);
    assert_int_equal(rights(f, "s1", "acme", "memory_mb", "granted"), 64);
    assert_int_equal(view_int(f, "acme", "usage", "cpu_millis"), 100);

    assert_int_equal(count_instances(f, NULL, NULL, false), 1);
    assert_int_equal(count_instances(f, "s1", "acme", false), 1);
    assert_int_equal(count_instances(f, "s2", NULL, false), 0);
    assert_int_equal(count_instances(f, NULL, "other", false), 0);
}

static void test_create_refusals(void **state)
{
    struct fx *f = *state;
    add_site(f, "s1");
    add_site(f, "s2");
    assert_int_equal(create(f, ID1, "acme", "web", "nowhere", 100, 64), AP_ENOTFOUND);
    assert_non_null(strstr(f->res.message, "nowhere"));
    assert_int_equal(create(f, ID1, "acme", "web", "s1", 100, 64), 0);
    assert_int_equal(create(f, ID2, "acme", "web", "s1", 100, 64), AP_EEXIST);
    assert_non_null(strstr(f->res.message, "web"));
    /* Names are unique per tenant and site. */
    assert_int_equal(create(f, ID2, "acme", "web", "s2", 100, 64), 0);
    assert_int_equal(create(f, ID3, "other", "web", "s1", 100, 64), 0);
    /* A deleted instance frees its name. */
    assert_int_equal(desire(f, ID1, AP_DESIRED_DELETED, ts_at(9000, 1)), 0);
    assert_int_equal(create(f, ID4, "acme", "web", "s1", 100, 64), 0);
    assert_int_equal(count_instances(f, "s1", "acme", false), 1);
    assert_int_equal(count_instances(f, "s1", "acme", true), 2);
}

static void test_desire_and_delete_dominates(void **state)
{
    struct fx *f = *state;
    struct ap_instrec r;
    add_site(f, "s1");
    assert_int_equal(create(f, ID1, "acme", "web", "s1", 100, 64), 0);
    assert_int_equal(desire(f, ID1, AP_DESIRED_STOPPED, ts_at(9000, 1)), 0);
    assert_string_equal(json_string_value(json_object_get(f->res.value, "desired")), "stopped");
    /* A stamp older than the stored one still wins: the region orders its write last. */
    assert_int_equal(desire(f, ID1, AP_DESIRED_RUNNING, ts_at(10, 1)), 0);
    assert_int_equal(catalog__instance_get(f->st, ID1, &r), 0);
    assert_int_equal(r.desired, AP_DESIRED_RUNNING);
    assert_true(r.desired_ts.physical_ms >= 9000);
    ap_instrec_clear(&r);

    assert_int_equal(desire(f, ID1, AP_DESIRED_DELETED, ts_at(9100, 1)), 0);
    assert_string_equal(json_string_value(json_object_get(f->res.value, "desired")), "deleted");
    assert_int_equal(desire(f, ID1, AP_DESIRED_RUNNING, ts_at(99999, 1)), AP_ECONFLICT);
    assert_int_equal(desire(f, ID1, AP_DESIRED_DELETED, ts_at(99999, 1)), 0);
    assert_int_equal(desire(f, ID2, AP_DESIRED_STOPPED, ts_at(9000, 1)), AP_ENOTFOUND);
    assert_int_equal(catalog__instance_get(f->st, ID1, &r), 0);
    assert_int_equal(r.desired, AP_DESIRED_DELETED);
    ap_instrec_clear(&r);
    /* Deleted instances no longer count as usage; the site keeps its rights. */
    assert_int_equal(view_int(f, "acme", "usage", "instances"), 0);
    assert_int_equal(rights(f, "s1", "acme", "instances", "granted"), 1);
}

static void test_quota_exceeded_writes_nothing(void **state)
{
    struct fx *f = *state;
    unsigned char before[32], after[32];
    static const char *const tables[] = {"instances", "site_rights", "events", NULL};
    add_site(f, "s1");
    assert_int_equal(set_quota(f, "acme", 2, 150, -1), 0);
    assert_int_equal(view_int(f, "acme", "limit", "instances"), 2);
    assert_int_equal(view_int(f, "acme", "limit", "memory_mb"), -1); /* null: unlimited */
    assert_int_equal(create(f, ID1, "acme", "a", "s1", 100, 64), 0);

    assert_int_equal(ap_store_content_hash(f->st, tables, before), 0);
    assert_int_equal(create(f, ID2, "acme", "b", "s1", 100, 64), AP_EQUOTA);
    assert_non_null(strstr(f->res.message, "cpu_millis"));
    assert_non_null(strstr(f->res.message, "limit 150"));
    assert_non_null(strstr(f->res.message, "50 not yet assigned"));
    assert_int_equal(ap_store_content_hash(f->st, tables, after), 0);
    assert_memory_equal(before, after, sizeof before);
    assert_int_equal(count_instances(f, NULL, NULL, true), 1);

    assert_int_equal(create(f, ID2, "acme", "b", "s1", 50, 64), 0);
    assert_int_equal(create(f, ID3, "acme", "c", "s1", 1, 1), AP_EQUOTA);
    assert_non_null(strstr(f->res.message, "instances"));
    assert_int_equal(view_int(f, "acme", "unassigned", "instances"), 0);
    assert_int_equal(view_int(f, "acme", "unassigned", "cpu_millis"), 0);
    /* Another tenant has its own quota (none: unlimited). */
    assert_int_equal(create(f, ID3, "other", "c", "s1", 1000, 1), 0);
}

static void test_lowering_a_limit(void **state)
{
    struct fx *f = *state;
    add_site(f, "s1");
    assert_int_equal(set_quota(f, "acme", 10, -1, -1), 0);
    assert_int_equal(create(f, ID1, "acme", "a", "s1", 1, 1), 0);
    assert_int_equal(create(f, ID2, "acme", "b", "s1", 1, 1), 0);
    assert_int_equal(create(f, ID3, "acme", "c", "s1", 1, 1), 0);
    assert_int_equal(set_quota(f, "acme", 2, -1, -1), 0);
    /* Nothing is revoked: the site keeps its 3 rights; new grants stop. */
    assert_int_equal(rights(f, "s1", "acme", "instances", "granted"), 3);
    assert_int_equal(view_int(f, "acme", "assigned", "instances"), 3);
    assert_int_equal(view_int(f, "acme", "unassigned", "instances"), 0);
    assert_int_equal(count_instances(f, NULL, "acme", false), 3);
    assert_int_equal(create(f, ID4, "acme", "d", "s1", 1, 1), AP_EQUOTA);
    assert_int_equal(set_quota(f, "acme", 4, -1, -1), 0);
    assert_int_equal(create(f, ID4, "acme", "d", "s1", 1, 1), 0);
}

static void test_reserve_grant(void **state)
{
    struct fx *f = *state;
    add_site(f, "s1");
    add_site(f, "s2");
    assert_int_equal(set_reserve(f, "acme", "nowhere", 1, 1, 1), AP_ENOTFOUND);
    assert_int_equal(set_quota(f, "acme", 10, 1000, -1), 0);
    assert_int_equal(set_reserve(f, "acme", "s1", 4, 400, 256), 0);
    assert_int_equal(rights(f, "s1", "acme", "instances", "granted"), 4);
    assert_int_equal(rights(f, "s1", "acme", "cpu_millis", "granted"), 400);
    assert_int_equal(rights(f, "s1", "acme", "memory_mb", "granted"), 256);
    assert_int_equal(rights(f, "s1", "acme", "instances", "reserve"), 4);
    /* Only what is unassigned: s2 gets 6 of the 8 instances it should keep. */
    assert_int_equal(set_reserve(f, "acme", "s2", 8, 100, 0), 0);
    assert_int_equal(rights(f, "s2", "acme", "instances", "granted"), 6);
    assert_int_equal(view_int(f, "acme", "unassigned", "instances"), 0);
    /* Setting the same reserve again grants nothing more. */
    assert_int_equal(set_reserve(f, "acme", "s1", 4, 400, 256), 0);
    assert_int_equal(rights(f, "s1", "acme", "instances", "granted"), 4);
    /* A raised limit tops the reserve up. */
    assert_int_equal(set_quota(f, "acme", 20, 1000, -1), 0);
    assert_int_equal(rights(f, "s2", "acme", "instances", "granted"), 8);
    assert_int_equal(view_int(f, "acme", "unassigned", "instances"), 8);
}

static void test_rights_grant_all_or_nothing(void **state)
{
    struct fx *f = *state;
    uint8_t *cmd;
    size_t len;
    add_site(f, "s1");
    assert_int_equal(set_quota(f, "acme", 3, 300, 300), 0);
    int64_t want[QUOTA_RES_N] = {2, 400, 10};
    assert_int_equal(catalog__encode_rights_grant("s1", "acme", want, 1, &cmd, &len), 0);
    assert_int_equal(apply(f, cmd, len), AP_EQUOTA);
    assert_int_equal(rights(f, "s1", "acme", "instances", "granted"), -1);
    want[1] = 300;
    assert_int_equal(catalog__encode_rights_grant("s1", "acme", want, 1, &cmd, &len), 0);
    assert_int_equal(apply(f, cmd, len), 0);
    assert_int_equal(rights(f, "s1", "acme", "instances", "granted"), 2);
    assert_int_equal(rights(f, "s1", "acme", "cpu_millis", "granted"), 300);
    assert_int_equal(catalog__encode_rights_grant("s9", "acme", want, 1, &cmd, &len), 0);
    assert_int_equal(apply(f, cmd, len), AP_ENOTFOUND);
}

/* ---- site deltas ---- */

struct rights_row {
    const char *tenant, *res;
    int64_t granted, returned, reserve;
};

static void apply_delta(struct fx *f, const char *site, uint64_t to, const struct ap_instrec *recs,
                        size_t n, const struct rights_row *rows, size_t nr, int expect)
{
    struct ap_mp_writer w;
    uint8_t *body, *cmd;
    size_t body_len, len;
    ap_mp_writer_init(&w);
    ap_mp_write_map(&w, 4);
    ap_mp_write_str(&w, "from");
    ap_mp_write_uint(&w, 0);
    ap_mp_write_str(&w, "to");
    ap_mp_write_uint(&w, to);
    ap_mp_write_str(&w, "inst");
    ap_mp_write_array(&w, (uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        ap_instrec_write(&w, &recs[i]);
    }
    ap_mp_write_str(&w, "rights");
    ap_mp_write_array(&w, (uint32_t)nr);
    for (size_t i = 0; i < nr; i++) {
        ap_mp_write_map(&w, 5);
        ap_mp_write_str(&w, "tenant");
        ap_mp_write_str(&w, rows[i].tenant);
        ap_mp_write_str(&w, "res");
        ap_mp_write_str(&w, rows[i].res);
        ap_mp_write_str(&w, "granted");
        ap_mp_write_int(&w, rows[i].granted);
        ap_mp_write_str(&w, "returned");
        ap_mp_write_int(&w, rows[i].returned);
        ap_mp_write_str(&w, "reserve");
        ap_mp_write_int(&w, rows[i].reserve);
    }
    assert_int_equal(ap_mp_writer_finish(&w, &body, &body_len), 0);
    assert_int_equal(catalog__encode_site_delta(site, body, body_len, &cmd, &len), 0);
    ap_free(body);
    assert_int_equal(apply(f, cmd, len), expect);
}

/* What catalog__delta_for_site gives after `after`: counts and ids in order. */
struct out_delta {
    uint64_t to;
    size_t n_inst, n_rights;
    char ids[8][AP_INSTREC_ID_SIZE];
    struct ap_instrec first;
};

static void delta_for(struct fx *f, const char *site, uint64_t after, size_t max,
                      struct out_delta *o)
{
    uint8_t *body;
    size_t len, count;
    msgpack_unpacked up;
    const msgpack_object *inst = NULL, *rights = NULL;
    uint64_t to_field = 0;
    memset(o, 0, sizeof *o);
    assert_int_equal(catalog__delta_for_site(f->st, site, after, max, &body, &len, &o->to, &count),
                     0);
    assert_int_equal(ap_mp_unpack(body, len, AP_RSM_MAX_COMMAND, &up, NULL), 0);
    assert_int_equal(ap_mp_get_array(&up.data, "inst", &inst, 1000, true, NULL), 0);
    assert_int_equal(ap_mp_get_array(&up.data, "rights", &rights, 1000, true, NULL), 0);
    assert_int_equal(ap_mp_get_u64(&up.data, "to", &to_field, UINT64_MAX, true, NULL), 0);
    assert_int_equal(to_field, o->to);
    o->n_inst = inst->via.array.size;
    o->n_rights = rights->via.array.size;
    assert_int_equal(count, o->n_inst + o->n_rights);
    for (size_t i = 0; i < o->n_inst; i++) {
        struct ap_instrec r;
        assert_int_equal(ap_instrec_read(&inst->via.array.ptr[i], &r, NULL), 0);
        assert_string_equal(r.site, site);
        if (i < 8) {
            ap_strlcpy(o->ids[i], r.id, sizeof o->ids[i]);
        }
        if (i == 0) {
            o->first = r;
        } else {
            ap_instrec_clear(&r);
        }
    }
    msgpack_unpacked_destroy(&up);
    ap_free(body);
}

static uint64_t site_seq_applied(struct fx *f, const char *site)
{
    struct catalog_link_info info;
    assert_int_equal(catalog__site_link_info(f->st, site, &info), 0);
    return info.site_seq_applied;
}

static void test_site_delta_merge_and_replay(void **state)
{
    struct fx *f = *state;
    static const char *const tables[] = {"instances", "site_rights", "sites", NULL};
    unsigned char h1[32], h2[32];
    struct out_delta o;
    add_site(f, "s1");
    add_site(f, "s2");
    assert_int_equal(set_reserve(f, "acme", "s1", 2, 200, 128), 0);

    /* The site created two instances while cut off, one of which a record of s2 (refused). */
    struct ap_instrec recs[2];
    make_rec(&recs[0], ID1, "acme", "local", "s1", 100, 64, ts_at(4000, 77));
    recs[0].actual = AP_ACTUAL_RUNNING;
    recs[0].actual_ts = ts_at(4001, 77);
    recs[0].pid = 42;
    make_rec(&recs[1], ID2, "acme", "foreign", "s2", 100, 64, ts_at(4000, 77));
    apply_delta(f, "s1", 17, recs, 2, NULL, 0, 0);
    assert_int_equal(json_integer_value(json_object_get(f->res.value, "applied")), 1);
    assert_int_equal(json_integer_value(json_object_get(f->res.value, "skipped")), 1);
    assert_int_equal(site_seq_applied(f, "s1"), 17);

    struct ap_instrec r;
    assert_int_equal(catalog__instance_get(f->st, ID1, &r), 0);
    assert_int_equal(r.actual, AP_ACTUAL_RUNNING);
    assert_int_equal(r.pid, 42);
    ap_instrec_clear(&r);
    assert_int_equal(catalog__instance_get(f->st, ID2, &r), AP_ENOTFOUND);

    /* No echo: the site gets its reserve rights, not its own record back. */
    delta_for(f, "s1", 0, 100, &o);
    assert_int_equal(o.n_inst, 0);
    assert_int_equal(o.n_rights, 3);

    /* Replaying the same delta (and an older `to`) changes nothing. */
    assert_int_equal(ap_store_content_hash(f->st, tables, h1), 0);
    apply_delta(f, "s1", 17, recs, 1, NULL, 0, 0);
    apply_delta(f, "s1", 5, recs, 1, NULL, 0, 0);
    assert_int_equal(ap_store_content_hash(f->st, tables, h2), 0);
    assert_memory_equal(h1, h2, sizeof h1);
    assert_int_equal(site_seq_applied(f, "s1"), 17);

    /* The region stops it; the site, not knowing, reports a later actual state. */
    uint64_t before_stop = f->index;
    assert_int_equal(desire(f, ID1, AP_DESIRED_STOPPED, ts_at(4500, 1)), 0);
    delta_for(f, "s1", before_stop - 1, 100, &o);
    assert_int_equal(o.n_inst, 1);
    assert_int_equal(o.first.desired, AP_DESIRED_STOPPED);
    ap_instrec_clear(&o.first);
    recs[0].actual_ts = ts_at(4600, 77);
    recs[0].restarts = 1;
    uint64_t merge_index = f->index;
    apply_delta(f, "s1", 18, recs, 1, NULL, 0, 0);
    assert_int_equal(catalog__instance_get(f->st, ID1, &r), 0);
    assert_int_equal(r.desired, AP_DESIRED_STOPPED); /* the region's later write */
    assert_int_equal(r.restarts, 1);                 /* the site's later report */
    ap_instrec_clear(&r);
    /* The merged row differs from what the site sent: it flows back. */
    delta_for(f, "s1", merge_index - 1, 100, &o);
    assert_int_equal(o.n_inst, 1);
    assert_int_equal(o.to, merge_index);
    assert_int_equal(o.first.desired, AP_DESIRED_STOPPED);
    assert_int_equal(o.first.restarts, 1);
    ap_instrec_clear(&o.first);

    /* The site merges and sends exactly that: no echo any more. */
    recs[0].desired = AP_DESIRED_STOPPED;
    assert_int_equal(catalog__instance_get(f->st, ID1, &r), 0);
    recs[0].desired_ts = r.desired_ts;
    recs[0].actual = AP_ACTUAL_STOPPED;
    recs[0].actual_ts = ts_at(4700, 77);
    ap_instrec_clear(&r);
    uint64_t equal_index = f->index;
    apply_delta(f, "s1", 19, recs, 1, NULL, 0, 0);
    delta_for(f, "s1", equal_index - 1, 100, &o);
    assert_int_equal(o.n_inst, 0);
    assert_int_equal(o.to, equal_index - 1);

    /* A site's delete dominates a later region start. */
    recs[0].desired = AP_DESIRED_DELETED;
    recs[0].desired_ts = ts_at(4800, 77);
    apply_delta(f, "s1", 20, recs, 1, NULL, 0, 0);
    assert_int_equal(desire(f, ID1, AP_DESIRED_RUNNING, ts_at(99999, 1)), AP_ECONFLICT);
    ap_instrec_clear(&recs[0]);
    ap_instrec_clear(&recs[1]);
}

static void test_site_delta_rights_returned_max(void **state)
{
    struct fx *f = *state;
    struct out_delta o;
    add_site(f, "s1");
    add_site(f, "s2");
    assert_int_equal(set_quota(f, "acme", 5, -1, -1), 0);
    assert_int_equal(set_reserve(f, "acme", "s1", 4, 0, 0), 0);
    assert_int_equal(set_reserve(f, "acme", "s2", 3, 0, 0), 0);
    assert_int_equal(rights(f, "s1", "acme", "instances", "granted"), 4);
    assert_int_equal(rights(f, "s2", "acme", "instances", "granted"), 1);

    /* s1 gives back 2 (its reserve was lowered): they fill s2's reserve. */
    assert_int_equal(set_reserve(f, "acme", "s1", 2, 0, 0), 0);
    struct rights_row row = {"acme", "instances", 4, 2, 2};
    uint64_t idx = f->index;
    apply_delta(f, "s1", 3, NULL, 0, &row, 1, 0);
    assert_int_equal(rights(f, "s1", "acme", "instances", "returned"), 2);
    assert_int_equal(rights(f, "s2", "acme", "instances", "granted"), 3);
    assert_int_equal(view_int(f, "acme", "assigned", "instances"), 5);
    /* Exactly what s1 sent: not echoed. */
    delta_for(f, "s1", idx - 1, 100, &o);
    assert_int_equal(o.n_rights, 0);

    /* An older row (returned 1) cannot lower it: returned only grows. */
    row.returned = 1;
    apply_delta(f, "s1", 4, NULL, 0, &row, 1, 0);
    assert_int_equal(rights(f, "s1", "acme", "instances", "returned"), 2);
    assert_int_equal(site_seq_applied(f, "s1"), 4);

    /* A row that lags the region's granted value is merged and sent back. */
    struct rights_row stale = {"acme", "instances", 3, 3, 2};
    idx = f->index;
    apply_delta(f, "s1", 5, NULL, 0, &stale, 1, 0);
    assert_int_equal(rights(f, "s1", "acme", "instances", "returned"), 3);
    delta_for(f, "s1", idx - 1, 100, &o);
    assert_int_equal(o.n_rights, 1);
    /* A delta for an unknown site is refused whole. */
    apply_delta(f, "nowhere", 5, NULL, 0, &stale, 1, AP_ENOTFOUND);
}

static void test_delta_for_site_paging(void **state)
{
    struct fx *f = *state;
    struct out_delta o;
    add_site(f, "s1");
    add_site(f, "s2");
    uint64_t start = f->index - 1;
    assert_int_equal(create(f, ID1, "acme", "a", "s1", 1, 1), 0); /* 1 record + 3 rights rows */
    assert_int_equal(create(f, ID2, "acme", "b", "s2", 1, 1), 0); /* another site */
    assert_int_equal(create(f, ID3, "beta", "c", "s1", 1, 1), 0);
    uint64_t third = f->index - 1;

    /* An entry's rows are never split: max 2 still takes all 4 rows of the first create. */
    delta_for(f, "s1", start, 2, &o);
    assert_int_equal(o.n_inst, 1);
    assert_int_equal(o.n_rights, 3);
    assert_string_equal(o.ids[0], ID1);
    ap_instrec_clear(&o.first);
    delta_for(f, "s1", o.to, 2, &o);
    assert_int_equal(o.n_inst, 1);
    assert_int_equal(o.n_rights, 3);
    assert_string_equal(o.ids[0], ID3);
    assert_int_equal(o.to, third);
    ap_instrec_clear(&o.first);
    delta_for(f, "s1", o.to, 2, &o);
    assert_int_equal(o.n_inst + o.n_rights, 0);
    assert_int_equal(o.to, third);
    /* Everything at once, oldest first. */
    delta_for(f, "s1", 0, 100, &o);
    assert_int_equal(o.n_inst, 2);
    assert_int_equal(o.n_rights, 6);
    assert_string_equal(o.ids[0], ID1);
    assert_string_equal(o.ids[1], ID3);
    ap_instrec_clear(&o.first);
}

static void test_garbage_commands(void **state)
{
    struct fx *f = *state;
    static const uint8_t junk[] = {0x81, 0xa2, 'o', 'p', 0xa9, 'q', 'u',
                                   'o',  't',  'a', '.', 's',  'e', 't'};
    uint8_t *cmd = ap_malloc(sizeof junk);
    memcpy(cmd, junk, sizeof junk);
    assert_int_equal(apply(f, cmd, sizeof junk), AP_EPROTO);
    add_site(f, "s1");
    struct ap_mp_writer w;
    size_t len;
    ap_mp_writer_init(&w);
    ap_mp_write_map(&w, 3);
    ap_mp_write_str(&w, "op");
    ap_mp_write_str(&w, "site.delta");
    ap_mp_write_str(&w, "name");
    ap_mp_write_str(&w, "s1");
    ap_mp_write_str(&w, "delta");
    ap_mp_write_bin(&w, "\x93\x01", 2);
    assert_int_equal(ap_mp_writer_finish(&w, &cmd, &len), 0);
    assert_int_equal(apply(f, cmd, len), AP_EPROTO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_site_create_result_matches_stored, setup, teardown),
        cmocka_unit_test_setup_teardown(test_create_and_read, setup, teardown),
        cmocka_unit_test_setup_teardown(test_create_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_desire_and_delete_dominates, setup, teardown),
        cmocka_unit_test_setup_teardown(test_quota_exceeded_writes_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lowering_a_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reserve_grant, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rights_grant_all_or_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_site_delta_merge_and_replay, setup, teardown),
        cmocka_unit_test_setup_teardown(test_site_delta_rights_returned_max, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delta_for_site_paging, setup, teardown),
        cmocka_unit_test_setup_teardown(test_garbage_commands, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
