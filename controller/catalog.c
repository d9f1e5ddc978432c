/* catalog: the controller's replicated catalog (docs/controller.md): schema, typed commands,
 * their deterministic apply, and reads. */
#include "catalog.h"

#include "ap/base.h"
#include "ap/err.h"
#include "ap/log.h"
#include "ap/mp.h"

#include <inttypes.h>
#include <msgpack.h>
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>

const char *const ccat_res_names[CCAT_RES_N] = {"instances", "cpu_millis", "memory_mb"};

const struct ap_store_migration ccat_migrations[] = {
    {1, "CREATE TABLE signing_key("
        " id INTEGER PRIMARY KEY CHECK (id = 1), pk BLOB NOT NULL, sk BLOB NOT NULL);"
        "CREATE TABLE regions("
        " name TEXT PRIMARY KEY, nodes TEXT NOT NULL,"
        " registered_at_ms INTEGER NOT NULL, hello_at_ms INTEGER NOT NULL);"
        "CREATE TABLE tenants("
        " name TEXT PRIMARY KEY, q_instances INTEGER, q_cpu_millis INTEGER, q_memory_mb INTEGER,"
        " created_at_ms INTEGER NOT NULL);"
        "CREATE TABLE allotments("
        " tenant TEXT NOT NULL, region TEXT NOT NULL,"
        " instances INTEGER, cpu_millis INTEGER, memory_mb INTEGER,"
        " PRIMARY KEY(tenant, region));"
        "CREATE TABLE users("
        " name TEXT PRIMARY KEY, tenant TEXT NOT NULL, pw_hash TEXT NOT NULL,"
        " gen INTEGER NOT NULL, deleted INTEGER NOT NULL DEFAULT 0,"
        " created_at_ms INTEGER NOT NULL);"
        "CREATE TABLE grants("
        " id INTEGER PRIMARY KEY, user TEXT NOT NULL, grant_json TEXT NOT NULL);"
        "CREATE INDEX grants_by_user ON grants(user);"},
    /* 2: grant ids only grow (a retried revoke never hits a newer grant). */
    {2, "CREATE TABLE counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL);"
        "INSERT INTO counters(name, value) SELECT 'grant', COALESCE(MAX(id), 0) FROM grants;"},
};
const size_t ccat_n_migrations = AP_ARRAY_LEN(ccat_migrations);

#define OP_KEY_INIT      "key.init"
#define OP_TENANT_PUT    "tenant.put"
#define OP_TENANT_DELETE "tenant.delete"
#define OP_USER_CREATE   "user.create"
#define OP_USER_DELETE   "user.delete"
#define OP_GRANT_ADD     "grant.add"
#define OP_GRANT_REMOVE  "grant.remove"
#define OP_REGION_HELLO  "region.hello"
#define OP_REGION_DELETE "region.delete"

/* ---- encoders ---- */

static void write_amounts(struct ap_mp_writer *w, const struct ccat_amounts *a)
{
    ap_mp_write_array(w, CCAT_RES_N);
    for (int i = 0; i < CCAT_RES_N; i++) {
        ap_mp_write_int(w, a->v[i]);
    }
}

int ccat_encode_key_init(const uint8_t pk[32], const uint8_t sk[64], uint8_t **out, size_t *len)
{
    struct ap_mp_writer w;
    ap_mp_writer_init(&w);
    ap_mp_write_map(&w, 3);
    ap_mp_write_str(&w, "op");
    ap_mp_write_str(&w, OP_KEY_INIT);
    ap_mp_write_str(&w, "pk");
    ap_mp_write_bin(&w, pk, 32);
    ap_mp_write_str(&w, "sk");
    ap_mp_write_bin(&w, sk, 64);
    return ap_mp_writer_finish(&w, out, len);
}

int ccat_encode_tenant_put(const char *name, bool create, const struct ccat_amounts *quota,
                           const char *const *regions, const struct ccat_amounts *allot,
                           size_t n_regions, uint64_t at_ms, uint8_t **out, size_t *len)
{
    struct ap_mp_writer w;
    ap_mp_writer_init(&w);
    ap_mp_write_map(&w, 6);
    ap_mp_write_str(&w, "op");
    ap_mp_write_str(&w, OP_TENANT_PUT);
    ap_mp_write_str(&w, "name");
    ap_mp_write_str(&w, name);
    ap_mp_write_str(&w, "create");
    ap_mp_write_bool(&w, create);
    ap_mp_write_str(&w, "quota");
    write_amounts(&w, quota);
    ap_mp_write_str(&w, "allot");
    ap_mp_write_array(&w, (uint32_t)n_regions);
    for (size_t i = 0; i < n_regions; i++) {
        ap_mp_write_array(&w, 2);
        ap_mp_write_str(&w, regions[i]);
        write_amounts(&w, &allot[i]);
    }
    ap_mp_write_str(&w, "at_ms");
    ap_mp_write_uint(&w, at_ms);
    return ap_mp_writer_finish(&w, out, len);
}

static int encode_name_op(const char *op, const char *key, const char *name, uint8_t **out,
                          size_t *len)
{
    struct ap_mp_writer w;
    ap_mp_writer_init(&w);
    ap_mp_write_map(&w, 2);
    ap_mp_write_str(&w, "op");
    ap_mp_write_str(&w, op);
    ap_mp_write_str(&w, key);
    ap_mp_write_str(&w, name);
    return ap_mp_writer_finish(&w, out, len);
}

int ccat_encode_tenant_delete(const char *name, uint8_t **out, size_t *len)
{
    return encode_name_op(OP_TENANT_DELETE, "name", name, out, len);
}

int ccat_encode_user_create(const char *name, const char *tenant, const char *pw_hash,
                            const char *grant_json, uint64_t at_ms, uint8_t **out, size_t *len)
{
    struct ap_mp_writer w;
    ap_mp_writer_init(&w);
    ap_mp_write_map(&w, grant_json != NULL ? 6 : 5);
    ap_mp_write_str(&w, "op");
    ap_mp_write_str(&w, OP_USER_CREATE);
    ap_mp_write_str(&w, "name");
    ap_mp_write_str(&w, name);
    ap_mp_write_str(&w, "tenant");
    ap_mp_write_str(&w, tenant);
    ap_mp_write_str(&w, "hash");
    ap_mp_write_str(&w, pw_hash);
    ap_mp_write_str(&w, "at_ms");
    ap_mp_write_uint(&w, at_ms);
    if (grant_json != NULL) {
        ap_mp_write_str(&w, "grant");
        ap_mp_write_str(&w, grant_json);
    }
    return ap_mp_writer_finish(&w, out, len);
}

int ccat_encode_user_delete(const char *name, uint8_t **out, size_t *len)
{
    return encode_name_op(OP_USER_DELETE, "name", name, out, len);
}

int ccat_encode_grant_add(const char *user, const char *grant_json, uint8_t **out, size_t *len)
{
    struct ap_mp_writer w;
    ap_mp_writer_init(&w);
    ap_mp_write_map(&w, 3);
    ap_mp_write_str(&w, "op");
    ap_mp_write_str(&w, OP_GRANT_ADD);
    ap_mp_write_str(&w, "user");
    ap_mp_write_str(&w, user);
    ap_mp_write_str(&w, "grant");
    ap_mp_write_str(&w, grant_json);
    return ap_mp_writer_finish(&w, out, len);
}

int ccat_encode_grant_remove(const char *user, int64_t id, uint8_t **out, size_t *len)
{
    struct ap_mp_writer w;
    ap_mp_writer_init(&w);
    ap_mp_write_map(&w, 3);
    ap_mp_write_str(&w, "op");
    ap_mp_write_str(&w, OP_GRANT_REMOVE);
    ap_mp_write_str(&w, "user");
    ap_mp_write_str(&w, user);
    ap_mp_write_str(&w, "id");
    ap_mp_write_int(&w, id);
    return ap_mp_writer_finish(&w, out, len);
}

int ccat_encode_region_hello(const char *name, const char *const *nodes, size_t n_nodes,
                             uint64_t at_ms, uint8_t **out, size_t *len)
{
    struct ap_mp_writer w;
    ap_mp_writer_init(&w);
    ap_mp_write_map(&w, 4);
    ap_mp_write_str(&w, "op");
    ap_mp_write_str(&w, OP_REGION_HELLO);
    ap_mp_write_str(&w, "name");
    ap_mp_write_str(&w, name);
    ap_mp_write_str(&w, "nodes");
    ap_mp_write_array(&w, (uint32_t)n_nodes);
    for (size_t i = 0; i < n_nodes; i++) {
        ap_mp_write_str(&w, nodes[i]);
    }
    ap_mp_write_str(&w, "at_ms");
    ap_mp_write_uint(&w, at_ms);
    return ap_mp_writer_finish(&w, out, len);
}

int ccat_encode_region_delete(const char *name, uint8_t **out, size_t *len)
{
    return encode_name_op(OP_REGION_DELETE, "name", name, out, len);
}

/* ---- apply ---- */

/* Run sql with up to three text binds and an int64; 0 or AP_EIO with res filled. */
static int exec_stmt(struct ap_store *st, const char *sql, const char *t1, const char *t2,
                     const char *t3, const int64_t *i4)
{
    sqlite3_stmt *s;
    int rv = ap_store_prepare(st, sql, &s);
    if (rv != 0) {
        return rv;
    }
    if (t1 != NULL) {
        ap_store_bind_text(st, s, 1, t1);
    }
    if (t2 != NULL) {
        ap_store_bind_text(st, s, 2, t2);
    }
    if (t3 != NULL) {
        ap_store_bind_text(st, s, 3, t3);
    }
    if (i4 != NULL) {
        ap_store_bind_int64(st, s, 4, *i4);
    }
    return ap_store_step_done(st, s);
}

static void fail(struct ap_rsm_result *res, int status, const char *what, struct ap_store *st)
{
    res->status = status;
    ap_errmsg_set(res->message, "%s: %s", what, st != NULL ? ap_store_errmsg(st) : "failed");
}

static void apply_key_init(struct ap_store *st, const msgpack_object *cmd,
                           struct ap_rsm_result *res)
{
    const uint8_t *pk, *sk;
    size_t pk_len, sk_len;
    int rv;
    if ((rv = ap_mp_get_bin(cmd, "pk", &pk, &pk_len, 32, true, res->message)) != 0 ||
        (rv = ap_mp_get_bin(cmd, "sk", &sk, &sk_len, 64, true, res->message)) != 0) {
        res->status = rv;
        return;
    }
    if (pk_len != 32 || sk_len != 64) {
        res->status = AP_EPROTO;
        ap_errmsg_set(res->message, "key.init: bad key sizes");
        return;
    }
    /* The first key wins: two leaders racing at start-up both propose one. */
    sqlite3_stmt *s;
    rv = ap_store_prepare(st, "INSERT OR IGNORE INTO signing_key(id, pk, sk) VALUES(1, ?1, ?2)",
                          &s);
    if (rv == 0) {
        ap_store_bind_blob(st, s, 1, pk, 32);
        ap_store_bind_blob(st, s, 2, sk, 64);
        rv = ap_store_step_done(st, s);
    }
    if (rv != 0) {
        fail(res, rv, "key.init", st);
    }
}

static int read_amounts(const msgpack_object *o, struct ccat_amounts *a, char *errmsg)
{
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != CCAT_RES_N) {
        ap_errmsg_set(errmsg, "amounts must be an array of %d", CCAT_RES_N);
        return AP_EPROTO;
    }
    for (int i = 0; i < CCAT_RES_N; i++) {
        int rv = ap_mp_as_i64(&o->via.array.ptr[i], ccat_res_names[i], &a->v[i], -1, INT64_MAX,
                              errmsg);
        if (rv != 0) {
            return rv;
        }
    }
    return 0;
}

static void bind_amount(struct ap_store *st, sqlite3_stmt *s, int idx, int64_t v)
{
    if (v < 0) {
        ap_store_bind_null(st, s, idx);
    } else {
        ap_store_bind_int64(st, s, idx, v);
    }
}

static void apply_tenant_put(struct ap_store *st, const msgpack_object *cmd,
                             struct ap_rsm_result *res)
{
    char name[64];
    bool create = false;
    uint64_t at_ms = 0;
    const msgpack_object *quota, *allot;
    struct ccat_amounts q;
    int rv;
    if ((rv = ap_mp_get_str(cmd, "name", name, sizeof name, true, res->message)) != 0 ||
        (rv = ap_mp_get_bool(cmd, "create", &create, true, res->message)) != 0 ||
        (rv = ap_mp_get_u64(cmd, "at_ms", &at_ms, INT64_MAX, true, res->message)) != 0 ||
        (rv = ap_mp_get_array(cmd, "quota", &quota, CCAT_RES_N, true, res->message)) != 0 ||
        (rv = ap_mp_get_array(cmd, "allot", &allot, CCAT_MAX_REGIONS, true, res->message)) != 0 ||
        (rv = read_amounts(quota, &q, res->message)) != 0) {
        res->status = rv;
        return;
    }
    json_t *existing = NULL;
    rv = ccat_tenant_json(st, name, &existing);
    json_decref(existing);
    if (create && rv == 0) {
        res->status = AP_EEXIST;
        ap_errmsg_set(res->message, "tenant '%s' already exists", name);
        return;
    }
    if (!create && rv == AP_ENOTFOUND) {
        res->status = AP_ENOTFOUND;
        ap_errmsg_set(res->message, "tenant '%s' not found", name);
        return;
    }
    sqlite3_stmt *s;
    rv = ap_store_prepare(st,
                          "INSERT INTO tenants(name, q_instances, q_cpu_millis, q_memory_mb,"
                          " created_at_ms) VALUES(?1, ?2, ?3, ?4, ?5) ON CONFLICT(name) DO UPDATE"
                          " SET q_instances=?2, q_cpu_millis=?3, q_memory_mb=?4",
                          &s);
    if (rv == 0) {
        ap_store_bind_text(st, s, 1, name);
        for (int i = 0; i < CCAT_RES_N; i++) {
            bind_amount(st, s, 2 + i, q.v[i]);
        }
        ap_store_bind_int64(st, s, 5, (int64_t)at_ms);
        rv = ap_store_step_done(st, s);
    }
    /* The split carried replaces the tenant's allotments whole: a region left out (deleted
     * meanwhile) keeps nothing, so the allotments never sum past the quota. */
    if (rv == 0) {
        rv = exec_stmt(st, "DELETE FROM allotments WHERE tenant=?1", name, NULL, NULL, NULL);
    }
    for (uint32_t i = 0; rv == 0 && i < allot->via.array.size; i++) {
        const msgpack_object *e = &allot->via.array.ptr[i];
        char region[64];
        struct ccat_amounts a;
        if (e->type != MSGPACK_OBJECT_ARRAY || e->via.array.size != 2 ||
            ap_mp_as_str(&e->via.array.ptr[0], "region", region, sizeof region, res->message) !=
                0 ||
            read_amounts(&e->via.array.ptr[1], &a, res->message) != 0) {
            res->status = AP_EPROTO;
            if (res->message[0] == '\0') {
                ap_errmsg_set(res->message, "field 'allot': element %u is not [region, amounts]",
                              i);
            }
            return;
        }
        rv = ap_store_prepare(st,
                              "INSERT OR REPLACE INTO allotments(tenant, region, instances,"
                              " cpu_millis, memory_mb) VALUES(?1, ?2, ?3, ?4, ?5)",
                              &s);
        if (rv == 0) {
            ap_store_bind_text(st, s, 1, name);
            ap_store_bind_text(st, s, 2, region);
            for (int k = 0; k < CCAT_RES_N; k++) {
                bind_amount(st, s, 3 + k, a.v[k]);
            }
            rv = ap_store_step_done(st, s);
        }
    }
    if (rv != 0) {
        fail(res, rv, "tenant", st);
        return;
    }
    rv = ccat_tenant_json(st, name, &res->value);
    if (rv != 0) {
        fail(res, rv, "tenant read", st);
    }
}

static void apply_tenant_delete(struct ap_store *st, const msgpack_object *cmd,
                                struct ap_rsm_result *res)
{
    char name[64];
    int rv = ap_mp_get_str(cmd, "name", name, sizeof name, true, res->message);
    if (rv != 0) {
        res->status = rv;
        return;
    }
    rv = ccat_tenant_json(st, name, &res->value);
    if (rv == AP_ENOTFOUND) {
        res->status = rv;
        ap_errmsg_set(res->message, "tenant '%s' not found", name);
        return;
    }
    if (rv == 0) {
        rv = exec_stmt(st, "DELETE FROM tenants WHERE name=?1", name, NULL, NULL, NULL);
    }
    if (rv == 0) {
        rv = exec_stmt(st, "DELETE FROM allotments WHERE tenant=?1", name, NULL, NULL, NULL);
    }
    if (rv != 0) {
        fail(res, rv, "tenant delete", st);
    }
}

/* Bump a user's grant generation: every token issued before is revoked. */
static int bump_gen(struct ap_store *st, const char *user)
{
    return exec_stmt(st, "UPDATE users SET gen = gen + 1 WHERE name=?1", user, NULL, NULL, NULL);
}

static int user_state(struct ap_store *st, const char *name, bool *deleted)
{
    sqlite3_stmt *s;
    int rv = ap_store_prepare(st, "SELECT deleted FROM users WHERE name=?1", &s);
    if (rv != 0) {
        return rv;
    }
    ap_store_bind_text(st, s, 1, name);
    rv = ap_store_step(st, s);
    if (rv == AP_STORE_ROW) {
        *deleted = sqlite3_column_int(s, 0) != 0;
        ap_store_reset(s);
        return 0;
    }
    ap_store_reset(s);
    return rv == AP_STORE_DONE ? AP_ENOTFOUND : rv;
}

static int insert_grant(struct ap_store *st, const char *user, const char *grant_json,
                        int64_t *id)
{
    sqlite3_stmt *s;
    int rv = ap_store_exec(st, "UPDATE counters SET value = value + 1 WHERE name='grant'");
    if (rv == 0) {
        rv = ap_store_prepare(st, "SELECT value FROM counters WHERE name='grant'", &s);
    }
    if (rv != 0) {
        return rv;
    }
    rv = ap_store_step(st, s);
    *id = rv == AP_STORE_ROW ? sqlite3_column_int64(s, 0) : 1;
    ap_store_reset(s);
    rv = ap_store_prepare(st, "INSERT INTO grants(id, user, grant_json) VALUES(?4, ?1, ?2)", &s);
    if (rv != 0) {
        return rv;
    }
    ap_store_bind_text(st, s, 1, user);
    ap_store_bind_text(st, s, 2, grant_json);
    ap_store_bind_int64(st, s, 4, *id);
    return ap_store_step_done(st, s);
}

static void apply_user_create(struct ap_store *st, const msgpack_object *cmd,
                              struct ap_rsm_result *res)
{
    char name[64], tenant[64], hash[160], grant[4096] = "";
    uint64_t at_ms = 0;
    int rv;
    if ((rv = ap_mp_get_str(cmd, "name", name, sizeof name, true, res->message)) != 0 ||
        (rv = ap_mp_get_str(cmd, "tenant", tenant, sizeof tenant, true, res->message)) != 0 ||
        (rv = ap_mp_get_str(cmd, "hash", hash, sizeof hash, true, res->message)) != 0 ||
        (rv = ap_mp_get_str(cmd, "grant", grant, sizeof grant, false, res->message)) != 0 ||
        (rv = ap_mp_get_u64(cmd, "at_ms", &at_ms, INT64_MAX, true, res->message)) != 0) {
        res->status = rv;
        return;
    }
    bool deleted = false;
    rv = user_state(st, name, &deleted);
    if (rv == 0 && !deleted) {
        res->status = AP_EEXIST;
        ap_errmsg_set(res->message, "user '%s' already exists", name);
        return;
    }
    if (tenant[0] != '\0') {
        json_t *t = NULL;
        if (ccat_tenant_json(st, tenant, &t) != 0) {
            res->status = AP_ENOTFOUND;
            ap_errmsg_set(res->message, "tenant '%s' not found", tenant);
            return;
        }
        json_decref(t);
    }
    /* A re-created user continues the old generation: old tokens stay revoked. */
    sqlite3_stmt *s;
    rv = ap_store_prepare(st,
                          "INSERT INTO users(name, tenant, pw_hash, gen, deleted, created_at_ms)"
                          " VALUES(?1, ?2, ?3, 1, 0, ?4) ON CONFLICT(name) DO UPDATE SET"
                          " tenant=?2, pw_hash=?3, gen=gen+1, deleted=0, created_at_ms=?4",
                          &s);
    if (rv == 0) {
        ap_store_bind_text(st, s, 1, name);
        ap_store_bind_text(st, s, 2, tenant);
        ap_store_bind_text(st, s, 3, hash);
        ap_store_bind_int64(st, s, 4, (int64_t)at_ms);
        rv = ap_store_step_done(st, s);
    }
    if (rv == 0) {
        rv = exec_stmt(st, "DELETE FROM grants WHERE user=?1", name, NULL, NULL, NULL);
    }
    int64_t id;
    if (rv == 0 && grant[0] != '\0') {
        rv = insert_grant(st, name, grant, &id);
    }
    if (rv == 0) {
        rv = ccat_user_json(st, name, &res->value);
    }
    if (rv != 0) {
        fail(res, rv, "user create", st);
    }
}

static void apply_user_delete(struct ap_store *st, const msgpack_object *cmd,
                              struct ap_rsm_result *res)
{
    char name[64];
    bool deleted = true;
    int rv = ap_mp_get_str(cmd, "name", name, sizeof name, true, res->message);
    if (rv != 0) {
        res->status = rv;
        return;
    }
    if (user_state(st, name, &deleted) != 0 || deleted) {
        res->status = AP_ENOTFOUND;
        ap_errmsg_set(res->message, "user '%s' not found", name);
        return;
    }
    /* The row stays, marked deleted, so regions and sites learn the revocation. */
    rv = exec_stmt(st, "UPDATE users SET deleted=1, gen=gen+1, pw_hash='' WHERE name=?1", name,
                   NULL, NULL, NULL);
    if (rv == 0) {
        rv = exec_stmt(st, "DELETE FROM grants WHERE user=?1", name, NULL, NULL, NULL);
    }
    if (rv == 0) {
        res->value = json_pack("{s:s, s:s}", "name", name, "status", "deleted");
    } else {
        fail(res, rv, "user delete", st);
    }
}

static void apply_grant_add(struct ap_store *st, const msgpack_object *cmd,
                            struct ap_rsm_result *res)
{
    char user[64], grant[4096];
    bool deleted = true;
    int rv;
    if ((rv = ap_mp_get_str(cmd, "user", user, sizeof user, true, res->message)) != 0 ||
        (rv = ap_mp_get_str(cmd, "grant", grant, sizeof grant, true, res->message)) != 0) {
        res->status = rv;
        return;
    }
    if (user_state(st, user, &deleted) != 0 || deleted) {
        res->status = AP_ENOTFOUND;
        ap_errmsg_set(res->message, "user '%s' not found", user);
        return;
    }
    int64_t id = 0;
    rv = insert_grant(st, user, grant, &id);
    if (rv == 0) {
        rv = bump_gen(st, user);
    }
    if (rv != 0) {
        fail(res, rv, "grant add", st);
        return;
    }
    json_t *g = json_loads(grant, 0, NULL);
    if (g == NULL) {
        g = json_object();
    }
    json_object_set_new(g, "id", json_integer(id));
    json_object_set_new(g, "user", json_string(user));
    res->value = g;
}

static void apply_grant_remove(struct ap_store *st, const msgpack_object *cmd,
                               struct ap_rsm_result *res)
{
    char user[64];
    int64_t id = 0;
    int rv;
    if ((rv = ap_mp_get_str(cmd, "user", user, sizeof user, true, res->message)) != 0 ||
        (rv = ap_mp_get_i64(cmd, "id", &id, 1, INT64_MAX, true, res->message)) != 0) {
        res->status = rv;
        return;
    }
    sqlite3_stmt *s;
    rv = ap_store_prepare(st, "DELETE FROM grants WHERE user=?1 AND id=?4", &s);
    if (rv == 0) {
        ap_store_bind_text(st, s, 1, user);
        ap_store_bind_int64(st, s, 4, id);
        rv = ap_store_step_done(st, s);
    }
    if (rv != 0) {
        fail(res, rv, "grant remove", st);
        return;
    }
    if (sqlite3_changes(ap_store_db(st)) == 0) {
        res->status = AP_ENOTFOUND;
        ap_errmsg_set(res->message, "user '%s' has no grant %" PRId64, user, id);
        return;
    }
    rv = bump_gen(st, user);
    if (rv != 0) {
        fail(res, rv, "grant remove", st);
        return;
    }
    res->value = json_pack("{s:s, s:I, s:s}", "user", user, "id", (json_int_t)id, "status",
                           "revoked");
}

static void apply_region_hello(struct ap_store *st, const msgpack_object *cmd,
                               struct ap_rsm_result *res)
{
    char name[64];
    uint64_t at_ms = 0;
    const msgpack_object *nodes;
    int rv;
    if ((rv = ap_mp_get_str(cmd, "name", name, sizeof name, true, res->message)) != 0 ||
        (rv = ap_mp_get_u64(cmd, "at_ms", &at_ms, INT64_MAX, true, res->message)) != 0 ||
        (rv = ap_mp_get_array(cmd, "nodes", &nodes, CCAT_MAX_REGION_NODES, true, res->message)) !=
            0) {
        res->status = rv;
        return;
    }
    json_t *arr = json_array();
    for (uint32_t i = 0; i < nodes->via.array.size; i++) {
        char node[64];
        if (ap_mp_as_str(&nodes->via.array.ptr[i], "node", node, sizeof node, res->message) != 0) {
            json_decref(arr);
            res->status = AP_EPROTO;
            return;
        }
        json_array_append_new(arr, json_string(node));
    }
    char *text = json_dumps(arr, JSON_COMPACT);
    json_decref(arr);
    if (text == NULL) {
        res->status = AP_ENOMEM;
        return;
    }
    sqlite3_stmt *s;
    rv = ap_store_prepare(st,
                          "INSERT INTO regions(name, nodes, registered_at_ms, hello_at_ms)"
                          " VALUES(?1, ?2, ?3, ?3) ON CONFLICT(name) DO UPDATE SET nodes=?2,"
                          " hello_at_ms=?3",
                          &s);
    if (rv == 0) {
        ap_store_bind_text(st, s, 1, name);
        ap_store_bind_text(st, s, 2, text);
        ap_store_bind_int64(st, s, 3, (int64_t)at_ms);
        rv = ap_store_step_done(st, s);
    }
    free(text);
    if (rv != 0) {
        fail(res, rv, "region hello", st);
    }
}

static void apply_region_delete(struct ap_store *st, const msgpack_object *cmd,
                                struct ap_rsm_result *res)
{
    char name[64];
    int rv = ap_mp_get_str(cmd, "name", name, sizeof name, true, res->message);
    if (rv != 0) {
        res->status = rv;
        return;
    }
    rv = exec_stmt(st, "DELETE FROM regions WHERE name=?1", name, NULL, NULL, NULL);
    if (rv == 0 && sqlite3_changes(ap_store_db(st)) == 0) {
        res->status = AP_ENOTFOUND;
        ap_errmsg_set(res->message, "region '%s' not found", name);
        return;
    }
    if (rv == 0) {
        rv = exec_stmt(st, "DELETE FROM allotments WHERE region=?1", name, NULL, NULL, NULL);
    }
    if (rv != 0) {
        fail(res, rv, "region delete", st);
        return;
    }
    res->value = json_pack("{s:s, s:s}", "name", name, "status", "deleted");
}

void ccat_apply(void *data, struct ap_store *st, uint64_t index, const uint8_t *cmd, size_t len,
                struct ap_rsm_result *res)
{
    static const struct {
        const char *op;
        void (*fn)(struct ap_store *st, const msgpack_object *cmd, struct ap_rsm_result *res);
    } ops[] = {
        {OP_KEY_INIT, apply_key_init},         {OP_TENANT_PUT, apply_tenant_put},
        {OP_TENANT_DELETE, apply_tenant_delete}, {OP_USER_CREATE, apply_user_create},
        {OP_USER_DELETE, apply_user_delete},   {OP_GRANT_ADD, apply_grant_add},
        {OP_GRANT_REMOVE, apply_grant_remove}, {OP_REGION_HELLO, apply_region_hello},
        {OP_REGION_DELETE, apply_region_delete},
    };
    msgpack_unpacked up;
    char op[32];
    AP_UNUSED(data);
    AP_UNUSED(index);
    int rv = ap_mp_unpack(cmd, len, CCAT_MAX_COMMAND, &up, res->message);
    if (rv != 0) {
        res->status = rv;
        return;
    }
    rv = ap_mp_get_str(&up.data, "op", op, sizeof op, true, res->message);
    if (rv != 0) {
        res->status = rv;
        msgpack_unpacked_destroy(&up);
        return;
    }
    for (size_t i = 0; i < AP_ARRAY_LEN(ops); i++) {
        if (strcmp(op, ops[i].op) == 0) {
            ops[i].fn(st, &up.data, res);
            msgpack_unpacked_destroy(&up);
            return;
        }
    }
    /* A newer leader's command: every replica rejects it the same way. */
    res->status = AP_EPROTO;
    ap_errmsg_set(res->message, "unknown controller command '%s'", op);
    msgpack_unpacked_destroy(&up);
}

/* ---- reads ---- */

int ccat_key(struct ap_store *st, uint8_t pk[32], uint8_t sk[64])
{
    sqlite3_stmt *s;
    int rv = ap_store_prepare(st, "SELECT pk, sk FROM signing_key WHERE id=1", &s);
    if (rv != 0) {
        return rv;
    }
    rv = ap_store_step(st, s);
    if (rv != AP_STORE_ROW) {
        ap_store_reset(s);
        return rv == AP_STORE_DONE ? AP_ENOTFOUND : rv;
    }
    if (sqlite3_column_bytes(s, 0) != 32 || sqlite3_column_bytes(s, 1) != 64) {
        ap_store_reset(s);
        return AP_ECORRUPT;
    }
    memcpy(pk, sqlite3_column_blob(s, 0), 32);
    if (sk != NULL) {
        memcpy(sk, sqlite3_column_blob(s, 1), 64);
    }
    ap_store_reset(s);
    return 0;
}

int ccat_region_names(struct ap_store *st, char (*names)[64], size_t max, size_t *n)
{
    sqlite3_stmt *s;
    *n = 0;
    int rv = ap_store_prepare(st, "SELECT name FROM regions ORDER BY name", &s);
    if (rv != 0) {
        return rv;
    }
    while ((rv = ap_store_step(st, s)) == AP_STORE_ROW) {
        if (*n < max) {
            ap_strlcpy(names[(*n)++], (const char *)sqlite3_column_text(s, 0), 64);
        }
    }
    ap_store_reset(s);
    return rv == AP_STORE_DONE ? 0 : rv;
}

static json_t *region_row(sqlite3_stmt *s)
{
    json_t *nodes = json_loads((const char *)sqlite3_column_text(s, 1), 0, NULL);
    return json_pack("{s:s, s:o, s:I, s:I}", "name", (const char *)sqlite3_column_text(s, 0),
                     "nodes", nodes != NULL ? nodes : json_array(), "registered_at_ms",
                     (json_int_t)sqlite3_column_int64(s, 2), "hello_at_ms",
                     (json_int_t)sqlite3_column_int64(s, 3));
}

int ccat_regions_json(struct ap_store *st, json_t **out)
{
    sqlite3_stmt *s;
    int rv = ap_store_prepare(
        st, "SELECT name, nodes, registered_at_ms, hello_at_ms FROM regions ORDER BY name", &s);
    if (rv != 0) {
        return rv;
    }
    json_t *arr = json_array();
    while ((rv = ap_store_step(st, s)) == AP_STORE_ROW) {
        json_array_append_new(arr, region_row(s));
    }
    ap_store_reset(s);
    if (rv != AP_STORE_DONE) {
        json_decref(arr);
        return rv;
    }
    *out = arr;
    return 0;
}

int ccat_region_nodes(struct ap_store *st, const char *region, char (*nodes)[64], size_t max,
                      size_t *n)
{
    sqlite3_stmt *s;
    *n = 0;
    int rv = ap_store_prepare(st, "SELECT nodes FROM regions WHERE name=?1", &s);
    if (rv != 0) {
        return rv;
    }
    ap_store_bind_text(st, s, 1, region);
    rv = ap_store_step(st, s);
    if (rv != AP_STORE_ROW) {
        ap_store_reset(s);
        return rv == AP_STORE_DONE ? AP_ENOTFOUND : rv;
    }
    json_t *arr = json_loads((const char *)sqlite3_column_text(s, 0), 0, NULL);
    ap_store_reset(s);
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v)
    {
        if (*n < max && json_is_string(v)) {
            ap_strlcpy(nodes[(*n)++], json_string_value(v), 64);
        }
    }
    json_decref(arr);
    return 0;
}

static json_t *amount_json(sqlite3_stmt *s, int col)
{
    return sqlite3_column_type(s, col) == SQLITE_NULL ? json_null()
                                                       : json_integer(sqlite3_column_int64(s, col));
}

static json_t *amounts_json(sqlite3_stmt *s, int first_col)
{
    json_t *o = json_object();
    for (int i = 0; i < CCAT_RES_N; i++) {
        json_object_set_new(o, ccat_res_names[i], amount_json(s, first_col + i));
    }
    return o;
}

static int tenant_allotments(struct ap_store *st, const char *tenant, json_t **out)
{
    sqlite3_stmt *s;
    int rv = ap_store_prepare(st,
                              "SELECT region, instances, cpu_millis, memory_mb FROM allotments"
                              " WHERE tenant=?1 ORDER BY region",
                              &s);
    if (rv != 0) {
        return rv;
    }
    ap_store_bind_text(st, s, 1, tenant);
    json_t *o = json_object();
    while ((rv = ap_store_step(st, s)) == AP_STORE_ROW) {
        json_object_set_new(o, (const char *)sqlite3_column_text(s, 0), amounts_json(s, 1));
    }
    ap_store_reset(s);
    if (rv != AP_STORE_DONE) {
        json_decref(o);
        return rv;
    }
    *out = o;
    return 0;
}

static int tenants_query(struct ap_store *st, const char *name, json_t **out)
{
    sqlite3_stmt *s;
    int rv = ap_store_prepare(
        st,
        name != NULL ? "SELECT name, q_instances, q_cpu_millis, q_memory_mb, created_at_ms FROM"
                       " tenants WHERE name=?1"
                     : "SELECT name, q_instances, q_cpu_millis, q_memory_mb, created_at_ms FROM"
                       " tenants ORDER BY name",
        &s);
    if (rv != 0) {
        return rv;
    }
    if (name != NULL) {
        ap_store_bind_text(st, s, 1, name);
    }
    json_t *arr = json_array();
    while ((rv = ap_store_step(st, s)) == AP_STORE_ROW) {
        json_array_append_new(arr, json_pack("{s:s, s:o, s:I}", "name",
                                             (const char *)sqlite3_column_text(s, 0), "quota",
                                             amounts_json(s, 1), "created_at_ms",
                                             (json_int_t)sqlite3_column_int64(s, 4)));
    }
    ap_store_reset(s);
    if (rv != AP_STORE_DONE) {
        json_decref(arr);
        return rv;
    }
    size_t i;
    json_t *t;
    json_array_foreach(arr, i, t)
    {
        json_t *allot;
        rv = tenant_allotments(st, json_string_value(json_object_get(t, "name")), &allot);
        if (rv != 0) {
            json_decref(arr);
            return rv;
        }
        json_object_set_new(t, "allotments", allot);
    }
    *out = arr;
    return 0;
}

int ccat_tenants_json(struct ap_store *st, json_t **out)
{
    return tenants_query(st, NULL, out);
}

int ccat_tenant_json(struct ap_store *st, const char *name, json_t **out)
{
    json_t *arr;
    int rv = tenants_query(st, name, &arr);
    if (rv != 0) {
        return rv;
    }
    if (json_array_size(arr) == 0) {
        json_decref(arr);
        return AP_ENOTFOUND;
    }
    *out = json_incref(json_array_get(arr, 0));
    json_decref(arr);
    return 0;
}

int ccat_tenant_quota(struct ap_store *st, const char *name, struct ccat_amounts *out)
{
    sqlite3_stmt *s;
    int rv = ap_store_prepare(
        st, "SELECT q_instances, q_cpu_millis, q_memory_mb FROM tenants WHERE name=?1", &s);
    if (rv != 0) {
        return rv;
    }
    ap_store_bind_text(st, s, 1, name);
    rv = ap_store_step(st, s);
    if (rv != AP_STORE_ROW) {
        ap_store_reset(s);
        return rv == AP_STORE_DONE ? AP_ENOTFOUND : rv;
    }
    for (int i = 0; i < CCAT_RES_N; i++) {
        out->v[i] = sqlite3_column_type(s, i) == SQLITE_NULL ? -1 : sqlite3_column_int64(s, i);
    }
    ap_store_reset(s);
    return 0;
}

static int user_grants(struct ap_store *st, const char *user, json_t **out)
{
    sqlite3_stmt *s;
    int rv = ap_store_prepare(st, "SELECT id, grant_json FROM grants WHERE user=?1 ORDER BY id",
                              &s);
    if (rv != 0) {
        return rv;
    }
    ap_store_bind_text(st, s, 1, user);
    json_t *arr = json_array();
    while ((rv = ap_store_step(st, s)) == AP_STORE_ROW) {
        json_t *g = json_loads((const char *)sqlite3_column_text(s, 1), 0, NULL);
        if (g == NULL) {
            g = json_object();
        }
        json_object_set_new(g, "id", json_integer(sqlite3_column_int64(s, 0)));
        json_array_append_new(arr, g);
    }
    ap_store_reset(s);
    if (rv != AP_STORE_DONE) {
        json_decref(arr);
        return rv;
    }
    *out = arr;
    return 0;
}

static int users_query(struct ap_store *st, const char *name, const char *tenant, json_t **out)
{
    sqlite3_stmt *s;
    int rv = ap_store_prepare(st,
                              "SELECT name, tenant, gen, created_at_ms FROM users WHERE deleted=0"
                              " AND (?1 IS NULL OR name=?1) AND (?2 IS NULL OR tenant=?2)"
                              " ORDER BY name",
                              &s);
    if (rv != 0) {
        return rv;
    }
    if (name != NULL) {
        ap_store_bind_text(st, s, 1, name);
    } else {
        ap_store_bind_null(st, s, 1);
    }
    if (tenant != NULL) {
        ap_store_bind_text(st, s, 2, tenant);
    } else {
        ap_store_bind_null(st, s, 2);
    }
    json_t *arr = json_array();
    while ((rv = ap_store_step(st, s)) == AP_STORE_ROW) {
        json_array_append_new(arr, json_pack("{s:s, s:s, s:I, s:I}", "name",
                                             (const char *)sqlite3_column_text(s, 0), "tenant",
                                             (const char *)sqlite3_column_text(s, 1), "gen",
                                             (json_int_t)sqlite3_column_int64(s, 2),
                                             "created_at_ms",
                                             (json_int_t)sqlite3_column_int64(s, 3)));
    }
    ap_store_reset(s);
    if (rv != AP_STORE_DONE) {
        json_decref(arr);
        return rv;
    }
    size_t i;
    json_t *u;
    json_array_foreach(arr, i, u)
    {
        json_t *g;
        rv = user_grants(st, json_string_value(json_object_get(u, "name")), &g);
        if (rv != 0) {
            json_decref(arr);
            return rv;
        }
        json_object_set_new(u, "grants", g);
    }
    *out = arr;
    return 0;
}

int ccat_users_json(struct ap_store *st, const char *tenant, json_t **out)
{
    return users_query(st, NULL, tenant, out);
}

int ccat_user_json(struct ap_store *st, const char *name, json_t **out)
{
    json_t *arr;
    int rv = users_query(st, name, NULL, &arr);
    if (rv != 0) {
        return rv;
    }
    if (json_array_size(arr) == 0) {
        json_decref(arr);
        return AP_ENOTFOUND;
    }
    *out = json_incref(json_array_get(arr, 0));
    json_decref(arr);
    return 0;
}

int ccat_user_auth(struct ap_store *st, const char *name, char *hash, size_t hash_size,
                   char *tenant, size_t tenant_size, uint64_t *gen, json_t **grants)
{
    sqlite3_stmt *s;
    int rv = ap_store_prepare(
        st, "SELECT pw_hash, tenant, gen FROM users WHERE name=?1 AND deleted=0", &s);
    if (rv != 0) {
        return rv;
    }
    ap_store_bind_text(st, s, 1, name);
    rv = ap_store_step(st, s);
    if (rv != AP_STORE_ROW) {
        ap_store_reset(s);
        return rv == AP_STORE_DONE ? AP_ENOTFOUND : rv;
    }
    ap_strlcpy(hash, (const char *)sqlite3_column_text(s, 0), hash_size);
    ap_strlcpy(tenant, (const char *)sqlite3_column_text(s, 1), tenant_size);
    *gen = (uint64_t)sqlite3_column_int64(s, 2);
    ap_store_reset(s);
    return user_grants(st, name, grants);
}

int ccat_region_state(struct ap_store *st, const char *region, uint64_t version, uint8_t **out,
                      size_t *len)
{
    uint8_t pk[32];
    bool have_key = ccat_key(st, pk, NULL) == 0;
    struct ap_mp_writer w;
    sqlite3_stmt *s;
    int rv;
    ap_mp_writer_init(&w);
    ap_mp_write_map(&w, have_key ? 4 : 3);
    ap_mp_write_str(&w, "version");
    ap_mp_write_uint(&w, version);
    if (have_key) {
        ap_mp_write_str(&w, "pk");
        ap_mp_write_bin(&w, pk, 32);
    }
    /* Users: [name, gen, deleted]. Counting first keeps the array header exact. */
    int64_t count = 0;
    rv = ap_store_prepare(st, "SELECT COUNT(*) FROM users", &s);
    if (rv == 0 && ap_store_step(st, s) == AP_STORE_ROW) {
        count = sqlite3_column_int64(s, 0);
    }
    if (rv == 0) {
        ap_store_reset(s);
        rv = ap_store_prepare(st, "SELECT name, gen, deleted FROM users ORDER BY name", &s);
    }
    if (rv != 0) {
        ap_mp_writer_destroy(&w);
        return rv;
    }
    ap_mp_write_str(&w, "users");
    ap_mp_write_array(&w, (uint32_t)count);
    int64_t written = 0;
    while (written < count && (rv = ap_store_step(st, s)) == AP_STORE_ROW) {
        ap_mp_write_array(&w, 3);
        ap_mp_write_str(&w, (const char *)sqlite3_column_text(s, 0));
        ap_mp_write_uint(&w, (uint64_t)sqlite3_column_int64(s, 1));
        ap_mp_write_bool(&w, sqlite3_column_int(s, 2) != 0);
        written++;
    }
    ap_store_reset(s);
    int64_t users_short = count - written;
    /* Tenants with this region's allotment: [name, instances, cpu_millis, memory_mb] (-1: none). */
    rv = ap_store_prepare(st,
                          "SELECT COUNT(*) FROM tenants t JOIN allotments a ON a.tenant = t.name"
                          " WHERE a.region=?1",
                          &s);
    count = 0;
    if (rv == 0) {
        ap_store_bind_text(st, s, 1, region);
        if (ap_store_step(st, s) == AP_STORE_ROW) {
            count = sqlite3_column_int64(s, 0);
        }
        ap_store_reset(s);
        rv = ap_store_prepare(st,
                              "SELECT t.name, a.instances, a.cpu_millis, a.memory_mb FROM tenants"
                              " t JOIN allotments a ON a.tenant = t.name WHERE a.region=?1"
                              " ORDER BY t.name",
                              &s);
    }
    if (rv != 0 || users_short != 0) {
        ap_mp_writer_destroy(&w);
        return rv != 0 ? rv : AP_EIO;
    }
    ap_store_bind_text(st, s, 1, region);
    ap_mp_write_str(&w, "tenants");
    ap_mp_write_array(&w, (uint32_t)count);
    written = 0;
    while (written < count && (rv = ap_store_step(st, s)) == AP_STORE_ROW) {
        ap_mp_write_array(&w, 1 + CCAT_RES_N);
        ap_mp_write_str(&w, (const char *)sqlite3_column_text(s, 0));
        for (int i = 0; i < CCAT_RES_N; i++) {
            ap_mp_write_int(&w, sqlite3_column_type(s, 1 + i) == SQLITE_NULL
                                    ? -1
                                    : sqlite3_column_int64(s, 1 + i));
        }
        written++;
    }
    ap_store_reset(s);
    if (written != count) {
        ap_mp_writer_destroy(&w);
        return AP_EIO;
    }
    return ap_mp_writer_finish(&w, out, len);
}
