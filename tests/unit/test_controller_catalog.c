/* Unit tests of the controller's catalog (controller/catalog.c) and quota split (split.c):
 * every command applied directly as the rsm fsm does, its result, refusals and determinism. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "ap/base.h"
#include "ap/err.h"
#include "ap/mp.h"
/* regional/ also has a catalog.h, earlier on the include path: name the controller's. */
#include "../../controller/catalog.h"
#include "../../controller/split.h"

#define GRANT_ADMIN "{\"role\":\"admin\",\"tenant\":\"acme\",\"scope\":\"*\"}"
#define GRANT_VIEW  "{\"role\":\"viewer\",\"tenant\":\"acme\",\"scope\":\"*\"}"
#define GRANT_OP    "{\"role\":\"operator\",\"tenant\":\"*\",\"scope\":\"*\"}"

/* Every table of the controller's schema, for content hashes. */
static const char *const all_tables[] = {"signing_key", "regions", "allotments", "tenants",
                                         "users",       "grants",  NULL};

struct fx {
    struct ap_store *st;
    uint64_t index; /* Raft index of the next command. */
    struct ap_rsm_result res;
};

static struct ap_store *open_store(const char *path)
{
    struct ap_store *st = NULL;
    assert_int_equal(ap_store_open(path, AP_STORE_SYNC_OFF, &st, NULL), 0);
    assert_int_equal(ap_store_migrate(st, ccat_migrations, ccat_n_migrations), 0);
    return st;
}

static int setup(void **state)
{
    struct fx *f = ap_calloc(1, sizeof *f);
    assert_non_null(f);
    f->st = open_store(":memory:");
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

/* Apply cmd (taken) as common/rsm_fsm.c does: in a savepoint undone when the command fails. */
static int apply(struct fx *f, uint8_t *cmd, size_t len)
{
    assert_non_null(cmd);
    json_decref(f->res.value);
    memset(&f->res, 0, sizeof f->res);
    assert_int_equal(ap_store_savepoint(f->st, "cmd"), 0);
    ccat_apply(NULL, f->st, f->index++, cmd, len, &f->res);
    ap_free(cmd);
    if (f->res.status != 0) {
        assert_int_equal(ap_store_rollback_to(f->st, "cmd"), 0);
        /* A refusal always says why. */
        assert_true(f->res.message[0] != '\0');
    } else {
        assert_int_equal(ap_store_release(f->st, "cmd"), 0);
    }
    return f->res.status;
}

/* Apply a copy of fixed bytes. */
static int apply_bytes(struct fx *f, const void *bytes, size_t len)
{
    uint8_t *cmd = ap_malloc(len > 0 ? len : 1);
    assert_non_null(cmd);
    memcpy(cmd, bytes, len);
    return apply(f, cmd, len);
}

static struct ccat_amounts amounts(int64_t inst, int64_t cpu, int64_t mem)
{
    struct ccat_amounts a = {{inst, cpu, mem}};
    return a;
}

static int key_init(struct fx *f, uint8_t fill)
{
    uint8_t pk[32], sk[64], *cmd;
    size_t len;
    memset(pk, fill, sizeof pk);
    memset(sk, fill ^ 0xff, sizeof sk);
    assert_int_equal(ccat_encode_key_init(pk, sk, &cmd, &len), 0);
    return apply(f, cmd, len);
}

static int tenant_put(struct fx *f, const char *name, bool create, struct ccat_amounts quota,
                      const char *const *regions, const struct ccat_amounts *allot, size_t n,
                      uint64_t at_ms)
{
    uint8_t *cmd;
    size_t len;
    assert_int_equal(
        ccat_encode_tenant_put(name, create, &quota, regions, allot, n, at_ms, &cmd, &len), 0);
    return apply(f, cmd, len);
}

static int tenant_delete(struct fx *f, const char *name)
{
    uint8_t *cmd;
    size_t len;
    assert_int_equal(ccat_encode_tenant_delete(name, &cmd, &len), 0);
    return apply(f, cmd, len);
}

static int user_create(struct fx *f, const char *name, const char *tenant, const char *hash,
                       const char *grant)
{
    uint8_t *cmd;
    size_t len;
    assert_int_equal(ccat_encode_user_create(name, tenant, hash, grant, 1000, &cmd, &len), 0);
    return apply(f, cmd, len);
}

static int user_delete(struct fx *f, const char *name)
{
    uint8_t *cmd;
    size_t len;
    assert_int_equal(ccat_encode_user_delete(name, &cmd, &len), 0);
    return apply(f, cmd, len);
}

static int grant_add(struct fx *f, const char *user, const char *grant)
{
    uint8_t *cmd;
    size_t len;
    assert_int_equal(ccat_encode_grant_add(user, grant, &cmd, &len), 0);
    return apply(f, cmd, len);
}

static int grant_remove(struct fx *f, const char *user, int64_t id)
{
    uint8_t *cmd;
    size_t len;
    assert_int_equal(ccat_encode_grant_remove(user, id, &cmd, &len), 0);
    return apply(f, cmd, len);
}

static int region_hello(struct fx *f, const char *name, const char *const *nodes, size_t n,
                        uint64_t at_ms)
{
    uint8_t *cmd;
    size_t len;
    assert_int_equal(ccat_encode_region_hello(name, nodes, n, at_ms, &cmd, &len), 0);
    return apply(f, cmd, len);
}

static int region_delete(struct fx *f, const char *name)
{
    uint8_t *cmd;
    size_t len;
    assert_int_equal(ccat_encode_region_delete(name, &cmd, &len), 0);
    return apply(f, cmd, len);
}

/* The raw users row: its generation, deleted flag and hash; false when there is no row. */
static bool user_row(struct fx *f, const char *name, int64_t *gen, bool *deleted, char *hash,
                     size_t hash_size)
{
    sqlite3_stmt *s;
    assert_int_equal(sqlite3_prepare_v2(ap_store_db(f->st),
                                        "SELECT gen, deleted, pw_hash FROM users WHERE name=?1", -1,
                                        &s, NULL),
                     SQLITE_OK);
    sqlite3_bind_text(s, 1, name, -1, SQLITE_TRANSIENT);
    bool found = sqlite3_step(s) == SQLITE_ROW;
    if (found) {
        *gen = sqlite3_column_int64(s, 0);
        *deleted = sqlite3_column_int(s, 1) != 0;
        ap_strlcpy(hash, (const char *)sqlite3_column_text(s, 2), hash_size);
    }
    sqlite3_finalize(s);
    return found;
}

static int64_t user_gen(struct fx *f, const char *name)
{
    int64_t gen = -1;
    bool deleted;
    char hash[160];
    assert_true(user_row(f, name, &gen, &deleted, hash, sizeof hash));
    return gen;
}

/* An integer member of a JSON object (-1 for null, -2 when missing or another type). */
static int64_t jint(const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    if (json_is_null(v)) {
        return -1;
    }
    return json_is_integer(v) ? (int64_t)json_integer_value(v) : -2;
}

static int64_t allot_of(struct fx *f, const char *tenant, const char *region, int res)
{
    json_t *t = NULL;
    assert_int_equal(ccat_tenant_json(f->st, tenant, &t), 0);
    const json_t *a = json_object_get(json_object_get(t, "allotments"), region);
    int64_t v = a != NULL ? jint(a, ccat_res_names[res]) : -3;
    json_decref(t);
    return v;
}

static void content_hash(struct ap_store *st, unsigned char out[32])
{
    assert_int_equal(ap_store_content_hash(st, all_tables, out), 0);
}

/* ---- signing key ---- */

static void test_key_init_first_key_wins(void **state)
{
    struct fx *f = *state;
    uint8_t pk[32], sk[64], want[64];
    assert_int_equal(ccat_key(f->st, pk, sk), AP_ENOTFOUND);
    assert_int_equal(key_init(f, 0x11), 0);
    assert_int_equal(ccat_key(f->st, pk, sk), 0);
    memset(want, 0x11, 32);
    assert_memory_equal(pk, want, 32);
    memset(want, 0x11 ^ 0xff, 64);
    assert_memory_equal(sk, want, 64);

    /* Another leader's key, proposed in the same start-up race: applied, ignored. */
    assert_int_equal(key_init(f, 0x22), 0);
    assert_int_equal(ccat_key(f->st, pk, NULL), 0);
    memset(want, 0x11, 32);
    assert_memory_equal(pk, want, 32);
}

static void test_key_init_rejects_bad_sizes(void **state)
{
    struct fx *f = *state;
    static const uint8_t short_pk[16], sk[64];
    struct ap_mp_writer w;
    uint8_t *cmd, pk[32];
    size_t len;
    ap_mp_writer_init(&w);
    ap_mp_write_map(&w, 3);
    ap_mp_write_str(&w, "op");
    ap_mp_write_str(&w, "key.init");
    ap_mp_write_str(&w, "pk");
    ap_mp_write_bin(&w, short_pk, sizeof short_pk);
    ap_mp_write_str(&w, "sk");
    ap_mp_write_bin(&w, sk, sizeof sk);
    assert_int_equal(ap_mp_writer_finish(&w, &cmd, &len), 0);
    assert_int_equal(apply(f, cmd, len), AP_EPROTO);
    assert_int_equal(ccat_key(f->st, pk, NULL), AP_ENOTFOUND);
}

/* ---- tenants ---- */

static void two_regions(struct fx *f)
{
    static const char *const nodes[] = {"127.0.0.1:7001"};
    assert_int_equal(region_hello(f, "r1", nodes, 1, 100), 0);
    assert_int_equal(region_hello(f, "r2", nodes, 1, 100), 0);
}

static void test_tenant_put_create(void **state)
{
    struct fx *f = *state;
    static const char *const regions[] = {"r1", "r2"};
    const struct ccat_amounts allot[] = {amounts(5, 2000, -1), amounts(5, 2000, -1)};
    two_regions(f);
    assert_int_equal(tenant_put(f, "acme", true, amounts(10, 4000, -1), regions, allot, 2, 555), 0);

    /* The result is the tenant as GET shows it. */
    json_t *v = f->res.value;
    assert_non_null(v);
    assert_string_equal(json_string_value(json_object_get(v, "name")), "acme");
    assert_int_equal(jint(json_object_get(v, "quota"), "instances"), 10);
    assert_int_equal(jint(json_object_get(v, "quota"), "cpu_millis"), 4000);
    assert_int_equal(jint(json_object_get(v, "quota"), "memory_mb"), -1); /* null: unlimited */
    assert_int_equal(jint(v, "created_at_ms"), 555);
    const json_t *a1 = json_object_get(json_object_get(v, "allotments"), "r1");
    assert_int_equal(jint(a1, "instances"), 5);
    assert_int_equal(jint(a1, "cpu_millis"), 2000);
    assert_int_equal(jint(a1, "memory_mb"), -1);
    assert_int_equal(json_object_size(json_object_get(v, "allotments")), 2);

    struct ccat_amounts q;
    assert_int_equal(ccat_tenant_quota(f->st, "acme", &q), 0);
    assert_int_equal(q.v[0], 10);
    assert_int_equal(q.v[1], 4000);
    assert_int_equal(q.v[2], -1);
    assert_int_equal(ccat_tenant_quota(f->st, "nope", &q), AP_ENOTFOUND);

    json_t *all = NULL;
    assert_int_equal(ccat_tenants_json(f->st, &all), 0);
    assert_int_equal(json_array_size(all), 1);
    json_decref(all);
}

static void test_tenant_put_duplicate_is_eexist(void **state)
{
    struct fx *f = *state;
    unsigned char before[32], after[32];
    assert_int_equal(tenant_put(f, "acme", true, amounts(10, -1, -1), NULL, NULL, 0, 1), 0);
    content_hash(f->st, before);
    assert_int_equal(tenant_put(f, "acme", true, amounts(99, 1, 1), NULL, NULL, 0, 2), AP_EEXIST);
    assert_non_null(strstr(f->res.message, "tenant 'acme' already exists"));
    content_hash(f->st, after);
    assert_memory_equal(before, after, sizeof before);
}

static void test_tenant_put_update(void **state)
{
    struct fx *f = *state;
    static const char *const regions[] = {"r1", "r2"};
    const struct ccat_amounts allot[] = {amounts(5, -1, 100), amounts(5, -1, 100)};
    const struct ccat_amounts allot2[] = {amounts(2, 300, -1), amounts(1, 300, -1)};
    two_regions(f);
    assert_int_equal(tenant_put(f, "acme", true, amounts(10, -1, 200), regions, allot, 2, 10), 0);
    assert_int_equal(tenant_put(f, "acme", false, amounts(3, 600, -1), regions, allot2, 2, 20), 0);
    struct ccat_amounts q;
    assert_int_equal(ccat_tenant_quota(f->st, "acme", &q), 0);
    assert_int_equal(q.v[0], 3);
    assert_int_equal(q.v[1], 600);
    assert_int_equal(q.v[2], -1);
    assert_int_equal(allot_of(f, "acme", "r1", 0), 2);
    assert_int_equal(allot_of(f, "acme", "r2", 0), 1);
    assert_int_equal(allot_of(f, "acme", "r2", 1), 300);
    assert_int_equal(allot_of(f, "acme", "r2", 2), -1);
    /* A change keeps the creation time. */
    assert_int_equal(jint(f->res.value, "created_at_ms"), 10);
}

static void test_tenant_put_update_unknown_is_enotfound(void **state)
{
    struct fx *f = *state;
    assert_int_equal(tenant_put(f, "ghost", false, amounts(1, 1, 1), NULL, NULL, 0, 1),
                     AP_ENOTFOUND);
    assert_non_null(strstr(f->res.message, "tenant 'ghost' not found"));
    struct ccat_amounts q;
    assert_int_equal(ccat_tenant_quota(f->st, "ghost", &q), AP_ENOTFOUND);
}

/* The split a tenant.put carries is the tenant's whole split: the sum of its allotments never
 * exceeds the quota. A region.delete ordered before a put that was split while the region still
 * existed (two requests racing at the leader) leaves an allotment to a region that no longer
 * exists; the next change must not keep it. */
static void test_tenant_put_allotments_are_the_carried_split(void **state)
{
    struct fx *f = *state;
    static const char *const both[] = {"r1", "r2"};
    static const char *const r1[] = {"r1"};
    const struct ccat_amounts half[] = {amounts(5, -1, -1), amounts(5, -1, -1)};
    const struct ccat_amounts four[] = {amounts(4, -1, -1)};
    two_regions(f);
    assert_int_equal(tenant_put(f, "acme", true, amounts(10, -1, -1), both, half, 2, 1), 0);
    assert_int_equal(region_delete(f, "r2"), 0);
    assert_int_equal(allot_of(f, "acme", "r2", 0), -3); /* gone with its region */
    /* The stale put, split over [r1, r2] before r2 was deleted. */
    assert_int_equal(tenant_put(f, "acme", false, amounts(10, -1, -1), both, half, 2, 2), 0);
    /* The next change, split over the regions that exist now. */
    assert_int_equal(tenant_put(f, "acme", false, amounts(4, -1, -1), r1, four, 1, 3), 0);
    json_t *allots = json_object_get(f->res.value, "allotments");
    int64_t sum = 0;
    const char *region;
    json_t *a;
    json_object_foreach(allots, region, a)
    {
        sum += jint(a, "instances");
    }
    assert_true(sum <= 4);
    assert_int_equal(allot_of(f, "acme", "r2", 0), -3);
}

static void test_tenant_put_malformed_allotment_says_why(void **state)
{
    struct fx *f = *state;
    struct ap_mp_writer w;
    uint8_t *cmd;
    size_t len;
    ap_mp_writer_init(&w);
    ap_mp_write_map(&w, 6);
    ap_mp_write_str(&w, "op");
    ap_mp_write_str(&w, "tenant.put");
    ap_mp_write_str(&w, "name");
    ap_mp_write_str(&w, "acme");
    ap_mp_write_str(&w, "create");
    ap_mp_write_bool(&w, true);
    ap_mp_write_str(&w, "quota");
    ap_mp_write_array(&w, 3);
    for (int i = 0; i < 3; i++) {
        ap_mp_write_int(&w, 1);
    }
    ap_mp_write_str(&w, "allot");
    ap_mp_write_array(&w, 1);
    ap_mp_write_uint(&w, 7); /* not [region, amounts] */
    ap_mp_write_str(&w, "at_ms");
    ap_mp_write_uint(&w, 1);
    assert_int_equal(ap_mp_writer_finish(&w, &cmd, &len), 0);
    /* apply() checks the refusal carries a message. */
    assert_int_equal(apply(f, cmd, len), AP_EPROTO);
    assert_non_null(strstr(f->res.message, "allot"));
    struct ccat_amounts q;
    assert_int_equal(ccat_tenant_quota(f->st, "acme", &q), AP_ENOTFOUND);
}

static void test_tenant_put_rejects_negative_amounts(void **state)
{
    struct fx *f = *state;
    assert_int_equal(tenant_put(f, "acme", true, amounts(-2, 1, 1), NULL, NULL, 0, 1), AP_EPROTO);
    assert_non_null(strstr(f->res.message, "instances"));
}

static void test_tenant_delete(void **state)
{
    struct fx *f = *state;
    static const char *const regions[] = {"r1", "r2"};
    const struct ccat_amounts allot[] = {amounts(1, -1, -1), amounts(1, -1, -1)};
    two_regions(f);
    assert_int_equal(tenant_put(f, "acme", true, amounts(2, -1, -1), regions, allot, 2, 1), 0);
    assert_int_equal(tenant_put(f, "other", true, amounts(2, -1, -1), regions, allot, 2, 1), 0);
    assert_int_equal(tenant_delete(f, "acme"), 0);
    /* The result is the tenant as it was. */
    assert_string_equal(json_string_value(json_object_get(f->res.value, "name")), "acme");
    json_t *t = NULL;
    assert_int_equal(ccat_tenant_json(f->st, "acme", &t), AP_ENOTFOUND);
    sqlite3_stmt *s;
    assert_int_equal(sqlite3_prepare_v2(ap_store_db(f->st),
                                        "SELECT COUNT(*) FROM allotments WHERE tenant='acme'", -1,
                                        &s, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(s, 0), 0);
    sqlite3_finalize(s);
    assert_int_equal(allot_of(f, "other", "r1", 0), 1);

    assert_int_equal(tenant_delete(f, "acme"), AP_ENOTFOUND);
    assert_non_null(strstr(f->res.message, "tenant 'acme' not found"));
}

/* ---- users and grants ---- */

static void test_user_create(void **state)
{
    struct fx *f = *state;
    assert_int_equal(tenant_put(f, "acme", true, amounts(-1, -1, -1), NULL, NULL, 0, 1), 0);
    assert_int_equal(user_create(f, "alice", "acme", "$argon2id$h1", GRANT_ADMIN), 0);
    json_t *v = f->res.value;
    assert_string_equal(json_string_value(json_object_get(v, "name")), "alice");
    assert_string_equal(json_string_value(json_object_get(v, "tenant")), "acme");
    assert_int_equal(jint(v, "gen"), 1);
    assert_int_equal(jint(v, "created_at_ms"), 1000);
    assert_null(json_object_get(v, "pw_hash")); /* never in a result */
    const json_t *grants = json_object_get(v, "grants");
    assert_int_equal(json_array_size(grants), 1);
    const json_t *g = json_array_get(grants, 0);
    assert_string_equal(json_string_value(json_object_get(g, "role")), "admin");
    assert_int_equal(jint(g, "id"), 1);

    char hash[160], tenant[64];
    uint64_t gen = 0;
    json_t *ag = NULL;
    assert_int_equal(
        ccat_user_auth(f->st, "alice", hash, sizeof hash, tenant, sizeof tenant, &gen, &ag), 0);
    assert_string_equal(hash, "$argon2id$h1");
    assert_string_equal(tenant, "acme");
    assert_int_equal(gen, 1);
    assert_int_equal(json_array_size(ag), 1);
    json_decref(ag);

    /* An operator: no home tenant, no grant. */
    assert_int_equal(user_create(f, "root", "", "$argon2id$h2", NULL), 0);
    assert_int_equal(json_array_size(json_object_get(f->res.value, "grants")), 0);
    json_t *all = NULL;
    assert_int_equal(ccat_users_json(f->st, NULL, &all), 0);
    assert_int_equal(json_array_size(all), 2);
    json_decref(all);
    assert_int_equal(ccat_users_json(f->st, "acme", &all), 0);
    assert_int_equal(json_array_size(all), 1);
    json_decref(all);
}

static void test_user_create_refusals(void **state)
{
    struct fx *f = *state;
    unsigned char before[32], after[32];
    assert_int_equal(user_create(f, "bob", "nope", "h", NULL), AP_ENOTFOUND);
    assert_non_null(strstr(f->res.message, "tenant 'nope' not found"));
    json_t *u = NULL;
    assert_int_equal(ccat_user_json(f->st, "bob", &u), AP_ENOTFOUND);

    assert_int_equal(user_create(f, "bob", "", "h1", GRANT_OP), 0);
    content_hash(f->st, before);
    assert_int_equal(user_create(f, "bob", "", "h2", NULL), AP_EEXIST);
    assert_non_null(strstr(f->res.message, "user 'bob' already exists"));
    content_hash(f->st, after);
    assert_memory_equal(before, after, sizeof before);
}

static void test_user_delete_keeps_a_revoked_row(void **state)
{
    struct fx *f = *state;
    int64_t gen;
    bool deleted;
    char hash[160];
    assert_int_equal(user_create(f, "carol", "", "$argon2id$c", GRANT_OP), 0);
    assert_int_equal(user_create(f, "dave", "", "$argon2id$d", NULL), 0);
    assert_int_equal(user_delete(f, "carol"), 0);
    assert_string_equal(json_string_value(json_object_get(f->res.value, "name")), "carol");
    assert_string_equal(json_string_value(json_object_get(f->res.value, "status")), "deleted");

    assert_true(user_row(f, "carol", &gen, &deleted, hash, sizeof hash));
    assert_int_equal(gen, 2);
    assert_true(deleted);
    assert_string_equal(hash, ""); /* the password no longer works anywhere */

    json_t *all = NULL, *u = NULL, *grants = NULL;
    assert_int_equal(ccat_users_json(f->st, NULL, &all), 0);
    assert_int_equal(json_array_size(all), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(all, 0), "name")), "dave");
    json_decref(all);
    assert_int_equal(ccat_user_json(f->st, "carol", &u), AP_ENOTFOUND);
    char tenant[64];
    uint64_t g;
    assert_int_equal(
        ccat_user_auth(f->st, "carol", hash, sizeof hash, tenant, sizeof tenant, &g, &grants),
        AP_ENOTFOUND);

    /* Deleted twice, or a grant to the deleted user: not found, nothing changes. */
    assert_int_equal(user_delete(f, "carol"), AP_ENOTFOUND);
    assert_non_null(strstr(f->res.message, "user 'carol' not found"));
    assert_int_equal(grant_add(f, "carol", GRANT_VIEW), AP_ENOTFOUND);
    assert_non_null(strstr(f->res.message, "user 'carol' not found"));
    assert_int_equal(user_delete(f, "nobody"), AP_ENOTFOUND);
    assert_int_equal(user_gen(f, "carol"), 2);
}

static void test_user_recreate_continues_generation(void **state)
{
    struct fx *f = *state;
    assert_int_equal(user_create(f, "erin", "", "old", GRANT_OP), 0);
    assert_int_equal(grant_add(f, "erin", GRANT_VIEW), 0);
    int64_t before = user_gen(f, "erin");
    assert_int_equal(before, 2);
    assert_int_equal(user_delete(f, "erin"), 0);
    assert_int_equal(user_create(f, "erin", "", "new", NULL), 0);
    /* A token of the old erin carries gen <= 3: still revoked. */
    assert_int_equal(jint(f->res.value, "gen"), before + 2);
    assert_int_equal(json_array_size(json_object_get(f->res.value, "grants")), 0);
    char hash[160], tenant[64];
    uint64_t gen;
    json_t *grants = NULL;
    assert_int_equal(
        ccat_user_auth(f->st, "erin", hash, sizeof hash, tenant, sizeof tenant, &gen, &grants), 0);
    assert_string_equal(hash, "new");
    assert_int_equal(gen, (uint64_t)before + 2);
    assert_int_equal(json_array_size(grants), 0);
    json_decref(grants);
}

static void test_grants_bump_generation(void **state)
{
    struct fx *f = *state;
    assert_int_equal(user_create(f, "fay", "", "h", GRANT_OP), 0);
    int64_t first = jint(json_array_get(json_object_get(f->res.value, "grants"), 0), "id");
    assert_int_equal(user_gen(f, "fay"), 1);

    assert_int_equal(grant_add(f, "fay", GRANT_VIEW), 0);
    json_t *v = f->res.value;
    assert_string_equal(json_string_value(json_object_get(v, "role")), "viewer");
    assert_string_equal(json_string_value(json_object_get(v, "user")), "fay");
    int64_t id = jint(v, "id");
    assert_true(id > first);
    assert_int_equal(user_gen(f, "fay"), 2);

    assert_int_equal(grant_remove(f, "fay", id), 0);
    assert_string_equal(json_string_value(json_object_get(f->res.value, "status")), "revoked");
    assert_int_equal(jint(f->res.value, "id"), id);
    assert_int_equal(user_gen(f, "fay"), 3);
    json_t *u = NULL;
    assert_int_equal(ccat_user_json(f->st, "fay", &u), 0);
    assert_int_equal(json_array_size(json_object_get(u, "grants")), 1);
    json_decref(u);

    /* Removing it again, or another user's grant: not found and no bump. */
    assert_int_equal(grant_remove(f, "fay", id), AP_ENOTFOUND);
    assert_non_null(strstr(f->res.message, "user 'fay' has no grant"));
    assert_int_equal(user_create(f, "gus", "", "h", NULL), 0);
    assert_int_equal(grant_remove(f, "gus", first), AP_ENOTFOUND);
    assert_int_equal(user_gen(f, "fay"), 3);
    assert_int_equal(user_gen(f, "gus"), 1);
    assert_int_equal(grant_add(f, "ghost", GRANT_VIEW), AP_ENOTFOUND);
    assert_non_null(strstr(f->res.message, "user 'ghost' not found"));
    assert_int_equal(grant_remove(f, "fay", 0), AP_EPROTO); /* ids are positive */
}

static void test_grant_ids_are_deterministic(void **state)
{
    struct fx *f = *state;
    struct fx g = {.st = open_store(":memory:"), .index = 1};
    assert_int_equal(ap_store_begin(g.st), 0);
    int64_t ids[2][4];
    struct fx *both[2] = {f, &g};
    for (int k = 0; k < 2; k++) {
        struct fx *x = both[k];
        assert_int_equal(user_create(x, "u1", "", "h", GRANT_OP), 0);
        ids[k][0] = jint(json_array_get(json_object_get(x->res.value, "grants"), 0), "id");
        assert_int_equal(user_create(x, "u2", "", "h", NULL), 0);
        assert_int_equal(grant_add(x, "u2", GRANT_VIEW), 0);
        ids[k][1] = jint(x->res.value, "id");
        assert_int_equal(grant_add(x, "u1", GRANT_ADMIN), 0);
        ids[k][2] = jint(x->res.value, "id");
        assert_int_equal(grant_remove(x, "u2", ids[k][1]), 0);
        assert_int_equal(grant_add(x, "u2", GRANT_ADMIN), 0);
        ids[k][3] = jint(x->res.value, "id");
    }
    assert_memory_equal(ids[0], ids[1], sizeof ids[0]);
    /* Grant ids are unique across users. */
    assert_true(ids[0][0] > 0);
    assert_true(ids[0][1] != ids[0][0]);
    assert_true(ids[0][2] != ids[0][0] && ids[0][2] != ids[0][1]);
    assert_true(ids[0][3] != ids[0][0] && ids[0][3] != ids[0][2]);
    unsigned char h1[32], h2[32];
    content_hash(f->st, h1);
    content_hash(g.st, h2);
    assert_memory_equal(h1, h2, sizeof h1);
    json_decref(g.res.value);
    ap_store_rollback(g.st);
    ap_store_close(g.st);
}

/* ---- regions ---- */

static void test_region_hello_upserts(void **state)
{
    struct fx *f = *state;
    static const char *const two[] = {"127.0.0.1:7101", "127.0.0.2:7101"};
    static const char *const one[] = {"127.0.0.3:7101"};
    char nodes[CCAT_MAX_REGION_NODES][64], names[4][64];
    size_t n;
    assert_int_equal(region_hello(f, "rb", two, 2, 100), 0);
    assert_int_equal(region_hello(f, "ra", one, 1, 150), 0);
    assert_int_equal(ccat_region_nodes(f->st, "rb", nodes, CCAT_MAX_REGION_NODES, &n), 0);
    assert_int_equal(n, 2);
    assert_string_equal(nodes[0], "127.0.0.1:7101");
    assert_string_equal(nodes[1], "127.0.0.2:7101");

    /* A later HELLO replaces the endpoints and keeps the registration time. */
    assert_int_equal(region_hello(f, "rb", one, 1, 200), 0);
    assert_int_equal(ccat_region_nodes(f->st, "rb", nodes, CCAT_MAX_REGION_NODES, &n), 0);
    assert_int_equal(n, 1);
    assert_string_equal(nodes[0], "127.0.0.3:7101");
    json_t *all = NULL;
    assert_int_equal(ccat_regions_json(f->st, &all), 0);
    assert_int_equal(json_array_size(all), 2);
    const json_t *rb = json_array_get(all, 1);
    assert_string_equal(json_string_value(json_object_get(rb, "name")), "rb");
    assert_int_equal(jint(rb, "registered_at_ms"), 100);
    assert_int_equal(jint(rb, "hello_at_ms"), 200);
    assert_int_equal(json_array_size(json_object_get(rb, "nodes")), 1);
    json_decref(all);

    assert_int_equal(ccat_region_names(f->st, names, 4, &n), 0);
    assert_int_equal(n, 2);
    assert_string_equal(names[0], "ra");
    assert_string_equal(names[1], "rb");
    assert_int_equal(ccat_region_nodes(f->st, "rz", nodes, CCAT_MAX_REGION_NODES, &n),
                     AP_ENOTFOUND);
}

static void test_region_hello_limits_nodes(void **state)
{
    struct fx *f = *state;
    const char *nodes[CCAT_MAX_REGION_NODES + 1];
    for (size_t i = 0; i < AP_ARRAY_LEN(nodes); i++) {
        nodes[i] = "127.0.0.1:7101";
    }
    assert_int_equal(region_hello(f, "r1", nodes, AP_ARRAY_LEN(nodes), 1), AP_EPROTO);
    char names[2][64];
    size_t n;
    assert_int_equal(ccat_region_names(f->st, names, 2, &n), 0);
    assert_int_equal(n, 0);
}

static void test_region_delete(void **state)
{
    struct fx *f = *state;
    static const char *const regions[] = {"r1", "r2"};
    const struct ccat_amounts allot[] = {amounts(1, -1, -1), amounts(1, -1, -1)};
    two_regions(f);
    assert_int_equal(tenant_put(f, "acme", true, amounts(2, -1, -1), regions, allot, 2, 1), 0);
    assert_int_equal(region_delete(f, "r2"), 0);
    assert_string_equal(json_string_value(json_object_get(f->res.value, "status")), "deleted");
    char names[4][64];
    size_t n;
    assert_int_equal(ccat_region_names(f->st, names, 4, &n), 0);
    assert_int_equal(n, 1);
    assert_string_equal(names[0], "r1");
    assert_int_equal(allot_of(f, "acme", "r2", 0), -3);
    assert_int_equal(allot_of(f, "acme", "r1", 0), 1);
    assert_int_equal(region_delete(f, "r2"), AP_ENOTFOUND);
    assert_non_null(strstr(f->res.message, "region 'r2' not found"));
}

static void test_region_delete_without_name_says_which_field(void **state)
{
    struct fx *f = *state;
    struct ap_mp_writer w;
    uint8_t *cmd;
    size_t len;
    ap_mp_writer_init(&w);
    ap_mp_write_map(&w, 1);
    ap_mp_write_str(&w, "op");
    ap_mp_write_str(&w, "region.delete");
    assert_int_equal(ap_mp_writer_finish(&w, &cmd, &len), 0);
    assert_int_equal(apply(f, cmd, len), AP_EPROTO);
    /* The decoder's "missing field 'name'", as for every other command. */
    assert_non_null(strstr(f->res.message, "'name'"));
}

/* ---- what a region caches ---- */

/* Element i of an array object, checked. */
static const msgpack_object *arr_at(const msgpack_object *a, uint32_t i)
{
    assert_int_equal(a->type, MSGPACK_OBJECT_ARRAY);
    assert_true(i < a->via.array.size);
    return &a->via.array.ptr[i];
}

static void assert_str_obj(const msgpack_object *o, const char *want)
{
    assert_int_equal(o->type, MSGPACK_OBJECT_STR);
    assert_int_equal(o->via.str.size, strlen(want));
    assert_memory_equal(o->via.str.ptr, want, strlen(want));
}

static int64_t int_obj(const msgpack_object *o)
{
    int64_t v = 0;
    assert_int_equal(ap_mp_as_i64(o, "v", &v, INT64_MIN, INT64_MAX, NULL), 0);
    return v;
}

static void assert_user_entry(const msgpack_object *e, const char *name, int64_t gen, bool deleted)
{
    assert_int_equal(e->via.array.size, 3);
    assert_str_obj(arr_at(e, 0), name);
    assert_int_equal(int_obj(arr_at(e, 1)), gen);
    assert_int_equal(arr_at(e, 2)->type, MSGPACK_OBJECT_BOOLEAN);
    assert_int_equal(arr_at(e, 2)->via.boolean, deleted);
}

static void assert_tenant_entry(const msgpack_object *e, const char *name, int64_t inst,
                                int64_t cpu, int64_t mem)
{
    assert_int_equal(e->via.array.size, 1 + CCAT_RES_N);
    assert_str_obj(arr_at(e, 0), name);
    assert_int_equal(int_obj(arr_at(e, 1)), inst);
    assert_int_equal(int_obj(arr_at(e, 2)), cpu);
    assert_int_equal(int_obj(arr_at(e, 3)), mem);
}

static void test_region_state(void **state)
{
    struct fx *f = *state;
    static const char *const regions[] = {"r1", "r2"};
    const struct ccat_amounts acme[] = {amounts(3, 1500, -1), amounts(2, 1500, -1)};
    const struct ccat_amounts beta[] = {amounts(-1, -1, 512)};
    uint8_t *buf;
    size_t len;
    msgpack_unpacked up;
    char errmsg[AP_ERRMSG_SIZE];

    /* Before anything: a version, no key, empty lists. */
    assert_int_equal(ccat_region_state(f->st, "r1", 1, &buf, &len), 0);
    assert_int_equal(ap_mp_unpack(buf, len, len, &up, errmsg), 0);
    assert_null(ap_mp_find(&up.data, "pk"));
    assert_int_equal(ap_mp_find(&up.data, "users")->via.array.size, 0);
    assert_int_equal(ap_mp_find(&up.data, "tenants")->via.array.size, 0);
    msgpack_unpacked_destroy(&up);
    ap_free(buf);

    two_regions(f);
    assert_int_equal(key_init(f, 0x5a), 0);
    assert_int_equal(tenant_put(f, "acme", true, amounts(5, 3000, -1), regions, acme, 2, 1), 0);
    assert_int_equal(tenant_put(f, "beta", true, amounts(-1, -1, 512), regions, beta, 1, 1), 0);
    /* A tenant with no allotment in r2 yet. */
    assert_int_equal(tenant_put(f, "zeta", true, amounts(1, 1, 1), NULL, NULL, 0, 1), 0);
    assert_int_equal(user_create(f, "zed", "", "h", GRANT_OP), 0);
    assert_int_equal(user_create(f, "amy", "acme", "h", GRANT_ADMIN), 0);
    assert_int_equal(grant_add(f, "amy", GRANT_VIEW), 0);
    assert_int_equal(user_create(f, "bo", "", "h", NULL), 0);
    assert_int_equal(user_delete(f, "bo"), 0);

    assert_int_equal(ccat_region_state(f->st, "r1", 42, &buf, &len), 0);
    assert_int_equal(ap_mp_unpack(buf, len, len, &up, errmsg), 0);
    uint64_t version = 0;
    assert_int_equal(ap_mp_get_u64(&up.data, "version", &version, UINT64_MAX, true, errmsg), 0);
    assert_int_equal(version, 42);
    const uint8_t *pk;
    size_t pk_len;
    uint8_t want[32];
    memset(want, 0x5a, sizeof want);
    assert_int_equal(ap_mp_get_bin(&up.data, "pk", &pk, &pk_len, 64, true, errmsg), 0);
    assert_int_equal(pk_len, 32);
    assert_memory_equal(pk, want, 32);
    assert_null(ap_mp_find(&up.data, "sk")); /* the secret key never leaves the controller */

    const msgpack_object *users = ap_mp_find(&up.data, "users");
    assert_non_null(users);
    assert_int_equal(users->via.array.size, 3);
    assert_user_entry(arr_at(users, 0), "amy", 2, false);
    assert_user_entry(arr_at(users, 1), "bo", 2, true);
    assert_user_entry(arr_at(users, 2), "zed", 1, false);

    const msgpack_object *tenants = ap_mp_find(&up.data, "tenants");
    assert_non_null(tenants);
    assert_int_equal(tenants->via.array.size, 2);
    assert_tenant_entry(arr_at(tenants, 0), "acme", 3, 1500, -1);
    assert_tenant_entry(arr_at(tenants, 1), "beta", -1, -1, 512);
    msgpack_unpacked_destroy(&up);
    ap_free(buf);

    /* r2 gets its own allotments only. */
    assert_int_equal(ccat_region_state(f->st, "r2", 43, &buf, &len), 0);
    assert_int_equal(ap_mp_unpack(buf, len, len, &up, errmsg), 0);
    tenants = ap_mp_find(&up.data, "tenants");
    assert_int_equal(tenants->via.array.size, 1);
    assert_tenant_entry(arr_at(tenants, 0), "acme", 2, 1500, -1);
    msgpack_unpacked_destroy(&up);
    ap_free(buf);
}

/* ---- malformed and unknown commands ---- */

static void test_unknown_and_malformed_commands(void **state)
{
    struct fx *f = *state;
    unsigned char before[32], after[32];
    struct ap_mp_writer w;
    uint8_t *cmd;
    size_t len;
    assert_int_equal(user_create(f, "u", "", "h", NULL), 0);
    content_hash(f->st, before);

    ap_mp_writer_init(&w);
    ap_mp_write_map(&w, 2);
    ap_mp_write_str(&w, "op");
    ap_mp_write_str(&w, "tenant.rename");
    ap_mp_write_str(&w, "name");
    ap_mp_write_str(&w, "acme");
    assert_int_equal(ap_mp_writer_finish(&w, &cmd, &len), 0);
    assert_int_equal(apply(f, cmd, len), AP_EPROTO);
    assert_non_null(strstr(f->res.message, "unknown controller command 'tenant.rename'"));

    static const uint8_t not_a_map[] = {0x92, 0x01, 0x02};
    assert_int_equal(apply_bytes(f, not_a_map, sizeof not_a_map), AP_EPROTO);
    static const uint8_t no_op[] = {0x81, 0xa1, 'x', 0x01};
    assert_int_equal(apply_bytes(f, no_op, sizeof no_op), AP_EPROTO);
    assert_non_null(strstr(f->res.message, "op"));
    static const uint8_t truncated[] = {0x82, 0xa2, 'o', 'p', 0xab, 'u', 's', 'e'};
    assert_int_equal(apply_bytes(f, truncated, sizeof truncated), AP_EPROTO);
    assert_int_equal(apply_bytes(f, "", 0), AP_EPROTO);

    /* user.delete with a number for a name. */
    ap_mp_writer_init(&w);
    ap_mp_write_map(&w, 2);
    ap_mp_write_str(&w, "op");
    ap_mp_write_str(&w, "user.delete");
    ap_mp_write_str(&w, "name");
    ap_mp_write_uint(&w, 3);
    assert_int_equal(ap_mp_writer_finish(&w, &cmd, &len), 0);
    assert_int_equal(apply(f, cmd, len), AP_EPROTO);
    assert_non_null(strstr(f->res.message, "name"));

    content_hash(f->st, after);
    assert_memory_equal(before, after, sizeof before);
}

/* ---- determinism ---- */

/* splitmix64: a small seeded generator, so a failing seed replays exactly. */
static uint64_t next_rand(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

static uint64_t below(uint64_t *s, uint64_t n)
{
    return next_rand(s) % n;
}

static int64_t rand_amount(uint64_t *s)
{
    return below(s, 4) == 0 ? -1 : (int64_t)below(s, 5000);
}

/* One random command over a small domain of names, so commands collide and refusals happen. */
static void random_command(uint64_t *s, uint8_t **cmd, size_t *len)
{
    static const char *const users[] = {"ann", "ben", "cy"};
    static const char *const tenants[] = {"", "t1", "t2"};
    static const char *const regions[] = {"r1", "r2", "r3"};
    static const char *const grants[] = {GRANT_ADMIN, GRANT_VIEW, GRANT_OP};
    static const char *const nodes[] = {"127.0.0.1:1", "127.0.0.2:2", "127.0.0.3:3"};
    const char *user = users[below(s, 3)];
    const char *tenant = tenants[below(s, 3)];
    const char *region = regions[below(s, 3)];
    uint64_t at_ms = below(s, 1u << 20);
    switch (below(s, 10)) {
    case 0: {
        uint8_t pk[32], sk[64];
        memset(pk, (int)below(s, 256), sizeof pk);
        memset(sk, (int)below(s, 256), sizeof sk);
        assert_int_equal(ccat_encode_key_init(pk, sk, cmd, len), 0);
        return;
    }
    case 1: {
        struct ccat_amounts q = amounts(rand_amount(s), rand_amount(s), rand_amount(s));
        struct ccat_amounts allot[3];
        size_t n = below(s, 4);
        split__even(&q, n, allot);
        assert_int_equal(ccat_encode_tenant_put(below(s, 2) ? "t1" : "t2", below(s, 2) == 0, &q,
                                                regions, allot, n, at_ms, cmd, len),
                         0);
        return;
    }
    case 2:
        assert_int_equal(ccat_encode_tenant_delete(below(s, 2) ? "t1" : "t2", cmd, len), 0);
        return;
    case 3:
        assert_int_equal(ccat_encode_user_create(user, tenant, "$argon2id$x",
                                                 below(s, 2) ? grants[below(s, 3)] : NULL, at_ms,
                                                 cmd, len),
                         0);
        return;
    case 4:
        assert_int_equal(ccat_encode_user_delete(user, cmd, len), 0);
        return;
    case 5:
        assert_int_equal(ccat_encode_grant_add(user, grants[below(s, 3)], cmd, len), 0);
        return;
    case 6:
        assert_int_equal(ccat_encode_grant_remove(user, 1 + (int64_t)below(s, 8), cmd, len), 0);
        return;
    case 7:
        assert_int_equal(ccat_encode_region_hello(region, nodes, 1 + below(s, 3), at_ms, cmd, len),
                         0);
        return;
    case 8:
        assert_int_equal(ccat_encode_region_delete(region, cmd, len), 0);
        return;
    default: {
        /* A valid command cut short: refused the same way everywhere. */
        assert_int_equal(ccat_encode_user_create(user, tenant, "h", NULL, at_ms, cmd, len), 0);
        *len = 1 + below(s, *len - 1);
        return;
    }
    }
}

static void apply_to(struct ap_store *st, bool own_tx, uint64_t index, const uint8_t *cmd,
                     size_t len, struct ap_rsm_result *res)
{
    memset(res, 0, sizeof *res);
    if (own_tx) {
        assert_int_equal(ap_store_begin(st), 0);
    }
    assert_int_equal(ap_store_savepoint(st, "cmd"), 0);
    ccat_apply(NULL, st, index, cmd, len, res);
    if (res->status != 0) {
        assert_int_equal(ap_store_rollback_to(st, "cmd"), 0);
    } else {
        assert_int_equal(ap_store_release(st, "cmd"), 0);
    }
    if (own_tx) {
        assert_int_equal(ap_store_commit(st), 0);
    }
}

/* The same sequence on two replicas, one in memory with one long transaction, the other on
 * disk committing every command: equal results at every step and equal content at the end. */
static void test_random_sequences_are_deterministic(void **state)
{
    struct fx *f = *state;
    char path[] = "/tmp/ap-ccat-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    struct ap_store *b = open_store(path);
    int ok = 0, refused = 0;
    for (uint64_t seed = 1; seed <= 4; seed++) {
        uint64_t s = seed;
        for (uint64_t i = 0; i < 250; i++) {
            uint8_t *cmd;
            size_t len;
            struct ap_rsm_result ra, rb;
            random_command(&s, &cmd, &len);
            apply_to(f->st, false, f->index, cmd, len, &ra);
            apply_to(b, true, f->index, cmd, len, &rb);
            f->index++;
            ap_free(cmd);
            assert_int_equal(ra.status, rb.status);
            assert_string_equal(ra.message, rb.message);
            assert_true((ra.value == NULL && rb.value == NULL) || json_equal(ra.value, rb.value));
            json_decref(ra.value);
            json_decref(rb.value);
            if (ra.status == 0) {
                ok++;
            } else {
                refused++;
            }
        }
        unsigned char ha[32], hb[32];
        content_hash(f->st, ha);
        content_hash(b, hb);
        assert_memory_equal(ha, hb, sizeof ha);
        uint8_t *sa, *sb;
        size_t la, lb;
        assert_int_equal(ccat_region_state(f->st, "r1", seed, &sa, &la), 0);
        assert_int_equal(ccat_region_state(b, "r1", seed, &sb, &lb), 0);
        assert_int_equal(la, lb);
        assert_memory_equal(sa, sb, la);
        ap_free(sa);
        ap_free(sb);
    }
    /* The sequences exercised both paths. */
    assert_true(ok > 100);
    assert_true(refused > 100);
    ap_store_close(b);
    char extra[sizeof path + 8];
    unlink(path);
    snprintf(extra, sizeof extra, "%s-wal", path);
    unlink(extra);
    snprintf(extra, sizeof extra, "%s-shm", path);
    unlink(extra);
}

/* ---- the quota split ---- */

static void test_split_even(void **state)
{
    (void)state;
    const struct ccat_amounts q = amounts(10, 7, -1);
    struct ccat_amounts out[3];
    split__even(&q, 3, out);
    assert_int_equal(out[0].v[0], 4); /* remainder to the first regions */
    assert_int_equal(out[1].v[0], 3);
    assert_int_equal(out[2].v[0], 3);
    assert_int_equal(out[0].v[1], 3);
    assert_int_equal(out[1].v[1], 2);
    assert_int_equal(out[2].v[1], 2);
    for (int r = 0; r < 3; r++) {
        assert_int_equal(out[r].v[2], -1); /* unlimited stays unlimited */
    }

    const struct ccat_amounts small = amounts(2, 0, 1);
    split__even(&small, 3, out);
    assert_int_equal(out[0].v[0] + out[1].v[0] + out[2].v[0], 2);
    assert_int_equal(out[2].v[0], 0);
    assert_int_equal(out[0].v[1] + out[1].v[1] + out[2].v[1], 0);
    assert_int_equal(out[0].v[2], 1);
    assert_int_equal(out[1].v[2], 0);

    split__even(&q, 1, out);
    assert_int_equal(out[0].v[0], 10);
    assert_int_equal(out[0].v[1], 7);
    assert_int_equal(out[0].v[2], -1);

    /* No region: nothing written, nothing divided by zero. */
    struct ccat_amounts untouched = amounts(77, 77, 77);
    split__even(&q, 0, &untouched);
    assert_int_equal(untouched.v[0], 77);
    assert_int_equal(untouched.v[2], 77);
}

static void test_split_even_properties(void **state)
{
    (void)state;
    uint64_t s = 12345;
    struct ccat_amounts out[CCAT_MAX_REGIONS];
    for (int round = 0; round < 500; round++) {
        size_t n = 1 + below(&s, CCAT_MAX_REGIONS);
        struct ccat_amounts q;
        for (int i = 0; i < CCAT_RES_N; i++) {
            uint64_t kind = below(&s, 5);
            q.v[i] = kind == 0   ? -1
                     : kind == 1 ? INT64_MAX - (int64_t)below(&s, 100)
                                 : (int64_t)below(&s, 1000);
        }
        split__even(&q, n, out);
        for (int i = 0; i < CCAT_RES_N; i++) {
            if (q.v[i] < 0) {
                for (size_t r = 0; r < n; r++) {
                    assert_int_equal(out[r].v[i], -1);
                }
                continue;
            }
            /* Sum exactly the quota, shares differ by at most one, larger shares first. */
            uint64_t sum = 0;
            for (size_t r = 0; r < n; r++) {
                assert_true(out[r].v[i] >= 0);
                sum += (uint64_t)out[r].v[i];
                if (r > 0) {
                    assert_true(out[r].v[i] <= out[r - 1].v[i]);
                    assert_true(out[0].v[i] - out[r].v[i] <= 1);
                }
            }
            assert_int_equal(sum, (uint64_t)q.v[i]);
        }
    }
}

static void test_split_encode_tenant_over_known_regions(void **state)
{
    struct fx *f = *state;
    static const char *const nodes[] = {"127.0.0.1:7001"};
    const struct ccat_amounts q = amounts(5, -1, 3);
    uint8_t *cmd;
    size_t len;
    /* Registered out of name order: the remainder still goes to r1. */
    assert_int_equal(region_hello(f, "r2", nodes, 1, 1), 0);
    assert_int_equal(region_hello(f, "r1", nodes, 1, 1), 0);
    assert_int_equal(split__encode_tenant(f->st, "acme", true, &q, &cmd, &len), 0);
    assert_int_equal(apply(f, cmd, len), 0);
    assert_int_equal(allot_of(f, "acme", "r1", 0), 3);
    assert_int_equal(allot_of(f, "acme", "r2", 0), 2);
    assert_int_equal(allot_of(f, "acme", "r1", 1), -1);
    assert_int_equal(allot_of(f, "acme", "r1", 2), 2);
    assert_int_equal(allot_of(f, "acme", "r2", 2), 1);

    /* With no region, the tenant exists with its quota and no allotment. */
    assert_int_equal(region_delete(f, "r1"), 0);
    assert_int_equal(region_delete(f, "r2"), 0);
    assert_int_equal(split__encode_tenant(f->st, "solo", true, &q, &cmd, &len), 0);
    assert_int_equal(apply(f, cmd, len), 0);
    assert_int_equal(json_object_size(json_object_get(f->res.value, "allotments")), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_key_init_first_key_wins, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_init_rejects_bad_sizes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tenant_put_create, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tenant_put_duplicate_is_eexist, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tenant_put_update, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tenant_put_update_unknown_is_enotfound, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_tenant_put_allotments_are_the_carried_split, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_tenant_put_malformed_allotment_says_why, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_tenant_put_rejects_negative_amounts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tenant_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_user_create, setup, teardown),
        cmocka_unit_test_setup_teardown(test_user_create_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_user_delete_keeps_a_revoked_row, setup, teardown),
        cmocka_unit_test_setup_teardown(test_user_recreate_continues_generation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_grants_bump_generation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_grant_ids_are_deterministic, setup, teardown),
        cmocka_unit_test_setup_teardown(test_region_hello_upserts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_region_hello_limits_nodes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_region_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_region_delete_without_name_says_which_field, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_region_state, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_and_malformed_commands, setup, teardown),
        cmocka_unit_test_setup_teardown(test_random_sequences_are_deterministic, setup, teardown),
        cmocka_unit_test(test_split_even),
        cmocka_unit_test(test_split_even_properties),
        cmocka_unit_test_setup_teardown(test_split_encode_tenant_over_known_regions, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
