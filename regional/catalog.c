/* catalog: the region's replicated catalog: schema, typed commands, their deterministic apply,
 * reads. */
#include "catalog.h"

#include "ap/base.h"
#include "ap/err.h"
#include "ap/instjson.h"
#include "ap/instrec.h"
#include "ap/log.h"
#include "ap/mp.h"
#include "ap/uuid.h"

#include <inttypes.h>
#include <msgpack.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* docs/catalog.md describes every table. Sites are complete in this version;
 * the quota, instance and placement tables are used by the edge tier. */
const struct ap_store_migration catalog__migrations[] = {
    {1, "CREATE TABLE sites("
        " name TEXT PRIMARY KEY,"
        " labels TEXT NOT NULL DEFAULT '{}',"
        " cpu_millis INTEGER NOT NULL DEFAULT 0,"
        " memory_mb INTEGER NOT NULL DEFAULT 0,"
        " max_instances INTEGER NOT NULL DEFAULT 0,"
        " capabilities TEXT NOT NULL DEFAULT '[]',"
        " state TEXT NOT NULL DEFAULT 'registered',"
        " last_heartbeat_ms INTEGER NOT NULL DEFAULT 0,"
        " created_at_ms INTEGER NOT NULL,"
        " updated_at_ms INTEGER NOT NULL,"
        " created_index INTEGER NOT NULL);"
        "CREATE TABLE quota_pools("
        " tenant TEXT NOT NULL, resource TEXT NOT NULL,"
        " allotted INTEGER NOT NULL DEFAULT 0,"
        " granted_to_sites INTEGER NOT NULL DEFAULT 0,"
        " PRIMARY KEY(tenant, resource));"
        "CREATE TABLE site_rights("
        " site TEXT NOT NULL, tenant TEXT NOT NULL, resource TEXT NOT NULL,"
        " granted INTEGER NOT NULL DEFAULT 0,"
        " consumed INTEGER NOT NULL DEFAULT 0,"
        " reserve INTEGER NOT NULL DEFAULT 0,"
        " PRIMARY KEY(site, tenant, resource));"
        "CREATE TABLE instances("
        " id TEXT PRIMARY KEY, tenant TEXT NOT NULL, name TEXT NOT NULL, site TEXT NOT NULL,"
        " spec TEXT NOT NULL,"
        " desired TEXT NOT NULL, desired_hlc TEXT NOT NULL,"
        " actual TEXT NOT NULL DEFAULT 'pending', actual_hlc TEXT NOT NULL DEFAULT '',"
        " deleted INTEGER NOT NULL DEFAULT 0,"
        " created_at_ms INTEGER NOT NULL);"
        "CREATE INDEX instances_by_site ON instances(site);"
        "CREATE TABLE placements("
        " instance_id TEXT PRIMARY KEY, site TEXT NOT NULL, reason TEXT NOT NULL,"
        " placed_at_ms INTEGER NOT NULL);"
        "CREATE TABLE events("
        " seq INTEGER PRIMARY KEY, raft_index INTEGER NOT NULL, at_ms INTEGER NOT NULL,"
        " kind TEXT NOT NULL, subject TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '{}');"},
    /* 2: the site link (docs/edge.md): instance records as CRDTs with the
     * raft index of their last change, rights as escrow counters. */
    {2, "ALTER TABLE sites ADD COLUMN site_seq_applied INTEGER NOT NULL DEFAULT 0;"
        "DROP TABLE instances;"
        "CREATE TABLE instances("
        " id TEXT PRIMARY KEY, tenant TEXT NOT NULL, name TEXT NOT NULL, site TEXT NOT NULL,"
        " spec TEXT NOT NULL, cpu_millis INTEGER NOT NULL, memory_mb INTEGER NOT NULL,"
        " created_ts INTEGER NOT NULL, created_node INTEGER NOT NULL,"
        " desired TEXT NOT NULL, desired_ts INTEGER NOT NULL, desired_node INTEGER NOT NULL,"
        " actual TEXT NOT NULL, actual_ts INTEGER NOT NULL, actual_node INTEGER NOT NULL,"
        " pid INTEGER NOT NULL DEFAULT 0, exit_code INTEGER NOT NULL DEFAULT 0,"
        " restarts INTEGER NOT NULL DEFAULT 0,"
        " changed_index INTEGER NOT NULL, changed_by TEXT NOT NULL DEFAULT '');"
        "CREATE INDEX instances_by_site ON instances(site, changed_index);"
        "CREATE INDEX instances_by_tenant ON instances(tenant);"
        "DROP TABLE site_rights;"
        "CREATE TABLE site_rights("
        " site TEXT NOT NULL, tenant TEXT NOT NULL, resource TEXT NOT NULL,"
        " granted INTEGER NOT NULL DEFAULT 0, returned INTEGER NOT NULL DEFAULT 0,"
        " reserve INTEGER NOT NULL DEFAULT 0, changed_index INTEGER NOT NULL DEFAULT 0,"
        " changed_by TEXT NOT NULL DEFAULT '',"
        " PRIMARY KEY(site, tenant, resource));"
        "DROP TABLE quota_pools;"
        "CREATE TABLE quotas("
        " tenant TEXT NOT NULL, resource TEXT NOT NULL, quota_limit INTEGER NOT NULL,"
        " changed_index INTEGER NOT NULL, PRIMARY KEY(tenant, resource));"},
    /* 3: instances and quotas in use (docs/catalog.md): name lookups per
     * tenant and site, and rights rows streamed to a site in change order. */
    {3, "CREATE INDEX instances_by_name ON instances(tenant, site, name);"
        "CREATE INDEX site_rights_by_change ON site_rights(site, changed_index);"
        "CREATE INDEX site_rights_by_tenant ON site_rights(tenant, site);"},
    /* 4: what the controller pushes down (docs/controller.md): the token
     * signing public key, users' grant generations, the state's version;
     * cordoned sites take no new placements. */
    {4, "CREATE TABLE auth_key(id INTEGER PRIMARY KEY CHECK (id = 1), pk BLOB NOT NULL);"
        "CREATE TABLE auth_users("
        " name TEXT PRIMARY KEY, gen INTEGER NOT NULL, deleted INTEGER NOT NULL DEFAULT 0);"
        "CREATE TABLE ctrl_state(id INTEGER PRIMARY KEY CHECK (id = 1),"
        " version INTEGER NOT NULL, changed_index INTEGER NOT NULL);"
        "ALTER TABLE sites ADD COLUMN cordoned INTEGER NOT NULL DEFAULT 0;"},
    /* 5: each tenant's assigned rights (the sum over sites of granted - returned), kept by
     * triggers in the same transaction as every change of site_rights, so a quota check
     * reads one row instead of summing a row per site (docs/catalog.md). No "OR IGNORE" in
     * the triggers: an outer upsert's conflict mode would override it. */
    {5, "CREATE TABLE quota_assigned(tenant TEXT NOT NULL, resource TEXT NOT NULL,"
        " assigned INTEGER NOT NULL DEFAULT 0, PRIMARY KEY(tenant, resource));"
        "INSERT INTO quota_assigned(tenant, resource, assigned)"
        " SELECT tenant, resource, sum(max(granted - returned, 0)) FROM site_rights"
        " GROUP BY tenant, resource;"
        "CREATE TRIGGER site_rights_assigned_ins AFTER INSERT ON site_rights BEGIN"
        " INSERT INTO quota_assigned(tenant, resource, assigned)"
        "  SELECT NEW.tenant, NEW.resource, 0 WHERE NOT EXISTS (SELECT 1 FROM quota_assigned"
        "  WHERE tenant = NEW.tenant AND resource = NEW.resource);"
        " UPDATE quota_assigned SET assigned = assigned + max(NEW.granted - NEW.returned, 0)"
        "  WHERE tenant = NEW.tenant AND resource = NEW.resource;"
        " END;"
        "CREATE TRIGGER site_rights_assigned_upd AFTER UPDATE ON site_rights BEGIN"
        " UPDATE quota_assigned SET assigned = assigned - max(OLD.granted - OLD.returned, 0)"
        "  WHERE tenant = OLD.tenant AND resource = OLD.resource;"
        " INSERT INTO quota_assigned(tenant, resource, assigned)"
        "  SELECT NEW.tenant, NEW.resource, 0 WHERE NOT EXISTS (SELECT 1 FROM quota_assigned"
        "  WHERE tenant = NEW.tenant AND resource = NEW.resource);"
        " UPDATE quota_assigned SET assigned = assigned + max(NEW.granted - NEW.returned, 0)"
        "  WHERE tenant = NEW.tenant AND resource = NEW.resource;"
        " END;"
        "CREATE TRIGGER site_rights_assigned_del AFTER DELETE ON site_rights BEGIN"
        " UPDATE quota_assigned SET assigned = assigned - max(OLD.granted - OLD.returned, 0)"
        "  WHERE tenant = OLD.tenant AND resource = OLD.resource;"
        " END;"},
    /* 6: the site's own HTTP address, from its HELLO: where the region reads logs. */
    {6, "ALTER TABLE sites ADD COLUMN http TEXT NOT NULL DEFAULT '';"},
    /* 7: the leader lists connected sites twice per heartbeat period; without an index that
     * scanned every site (13% of a loaded leader's CPU with 100,000 sites). Partial, so
     * creating a site (state 'registered') does not write to it. */
    {7, "CREATE INDEX sites_connected ON sites(name) WHERE state = 'connected';"},
};
const size_t catalog__n_migrations = AP_ARRAY_LEN(catalog__migrations);

const char *const catalog__tables[] = {"sites",      "quotas", "site_rights", "instances",
                                       "placements", "events", NULL};

static void format_time(int64_t ms, char *buf, size_t n)
{
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    size_t k = strftime(buf, n, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + k, n - k, ".%03dZ", (int)(ms % 1000));
}

int catalog__encode_site_create(const struct site_spec *spec, uint64_t at_ms, uint8_t **out,
                                size_t *len)
{
    struct ap_mp_writer w;
    ap_mp_writer_init(&w);
    ap_mp_write_map(&w, 7);
    ap_mp_write_str(&w, "op");
    ap_mp_write_str(&w, CATALOG_OP_SITE_CREATE);
    ap_mp_write_str(&w, "name");
    ap_mp_write_str(&w, spec->name);
    ap_mp_write_str(&w, "labels");
    ap_mp_write_map(&w, (uint32_t)spec->n_labels);
    for (size_t i = 0; i < spec->n_labels; i++) {
        ap_mp_write_str(&w, spec->labels[i].key);
        ap_mp_write_str(&w, spec->labels[i].value);
    }
    ap_mp_write_str(&w, "cpu_millis");
    ap_mp_write_int(&w, spec->cpu_millis);
    ap_mp_write_str(&w, "memory_mb");
    ap_mp_write_int(&w, spec->memory_mb);
    ap_mp_write_str(&w, "instances");
    ap_mp_write_int(&w, spec->instances);
    ap_mp_write_str(&w, "at_ms");
    ap_mp_write_uint(&w, at_ms);
    return ap_mp_writer_finish(&w, out, len);
}

int catalog__encode_site_delete(const char *name, uint64_t at_ms, uint8_t **out, size_t *len)
{
    struct ap_mp_writer w;
    ap_mp_writer_init(&w);
    ap_mp_write_map(&w, 3);
    ap_mp_write_str(&w, "op");
    ap_mp_write_str(&w, CATALOG_OP_SITE_DELETE);
    ap_mp_write_str(&w, "name");
    ap_mp_write_str(&w, name);
    ap_mp_write_str(&w, "at_ms");
    ap_mp_write_uint(&w, at_ms);
    return ap_mp_writer_finish(&w, out, len);
}

int catalog__encode_site_state(const char *site, const char *state, uint64_t at_ms,
                               const uint8_t *hello, size_t hello_len, uint8_t **out, size_t *len)
{
    struct ap_mp_writer w;
    ap_mp_writer_init(&w);
    ap_mp_write_map(&w, hello != NULL ? 5 : 4);
    ap_mp_write_str(&w, "op");
    ap_mp_write_str(&w, CATALOG_OP_SITE_STATE);
    ap_mp_write_str(&w, "name");
    ap_mp_write_str(&w, site);
    ap_mp_write_str(&w, "state");
    ap_mp_write_str(&w, state);
    ap_mp_write_str(&w, "at_ms");
    ap_mp_write_uint(&w, at_ms);
    if (hello != NULL) {
        ap_mp_write_str(&w, "hello");
        ap_mp_write_bin(&w, hello, hello_len);
    }
    return ap_mp_writer_finish(&w, out, len);
}

int catalog__encode_site_delta(const char *site, const uint8_t *delta, size_t delta_len,
                               uint8_t **out, size_t *len)
{
    struct ap_mp_writer w;
    ap_mp_writer_init(&w);
    ap_mp_write_map(&w, 3);
    ap_mp_write_str(&w, "op");
    ap_mp_write_str(&w, CATALOG_OP_SITE_DELTA);
    ap_mp_write_str(&w, "name");
    ap_mp_write_str(&w, site);
    ap_mp_write_str(&w, "delta");
    ap_mp_write_bin(&w, delta, delta_len);
    return ap_mp_writer_finish(&w, out, len);
}

int catalog__encode_instance_create(const struct ap_instrec *r, uint64_t at_ms, uint8_t **out,
                                    size_t *len)
{
    struct ap_mp_writer w;
    ap_mp_writer_init(&w);
    ap_mp_write_map(&w, 3);
    ap_mp_write_str(&w, "op");
    ap_mp_write_str(&w, CATALOG_OP_INST_CREATE);
    ap_mp_write_str(&w, "rec");
    ap_instrec_write(&w, r);
    ap_mp_write_str(&w, "at_ms");
    ap_mp_write_uint(&w, at_ms);
    return ap_mp_writer_finish(&w, out, len);
}

int catalog__encode_instance_desire(const char *id, enum ap_desired d, struct ap_hlc_ts ts,
                                    uint64_t at_ms, uint8_t **out, size_t *len)
{
    struct ap_mp_writer w;
    ap_mp_writer_init(&w);
    ap_mp_write_map(&w, 6);
    ap_mp_write_str(&w, "op");
    ap_mp_write_str(&w, CATALOG_OP_INST_DESIRE);
    ap_mp_write_str(&w, "id");
    ap_mp_write_str(&w, id);
    ap_mp_write_str(&w, "desired");
    ap_mp_write_str(&w, ap_desired_name(d));
    ap_mp_write_str(&w, "ts");
    ap_mp_write_uint(&w, ap_hlc_pack(ts));
    ap_mp_write_str(&w, "node");
    ap_mp_write_uint(&w, ts.node);
    ap_mp_write_str(&w, "at_ms");
    ap_mp_write_uint(&w, at_ms);
    return ap_mp_writer_finish(&w, out, len);
}

/* A map {"instances":n, "cpu_millis":n, "memory_mb":n} of the resources whose mask bit is set. */
static void write_amounts(struct ap_mp_writer *w, const bool *mask, const int64_t v[QUOTA_RES_N])
{
    uint32_t n = 0;
    for (int i = 0; i < QUOTA_RES_N; i++) {
        n += mask == NULL || mask[i] ? 1 : 0;
    }
    ap_mp_write_map(w, n);
    for (int i = 0; i < QUOTA_RES_N; i++) {
        if (mask == NULL || mask[i]) {
            ap_mp_write_str(w, quota__res_name((enum quota_res)i));
            ap_mp_write_int(w, v[i]);
        }
    }
}

int catalog__encode_quota_set(const char *tenant, const bool limited[QUOTA_RES_N],
                              const int64_t limit[QUOTA_RES_N], uint64_t at_ms, uint8_t **out,
                              size_t *len)
{
    struct ap_mp_writer w;
    ap_mp_writer_init(&w);
    ap_mp_write_map(&w, 4);
    ap_mp_write_str(&w, "op");
    ap_mp_write_str(&w, CATALOG_OP_QUOTA_SET);
    ap_mp_write_str(&w, "tenant");
    ap_mp_write_str(&w, tenant);
    ap_mp_write_str(&w, "limit");
    write_amounts(&w, limited, limit);
    ap_mp_write_str(&w, "at_ms");
    ap_mp_write_uint(&w, at_ms);
    return ap_mp_writer_finish(&w, out, len);
}

int catalog__encode_reserve_set(const char *tenant, const char *site,
                                const int64_t reserve[QUOTA_RES_N], uint64_t at_ms, uint8_t **out,
                                size_t *len)
{
    struct ap_mp_writer w;
    ap_mp_writer_init(&w);
    ap_mp_write_map(&w, 5);
    ap_mp_write_str(&w, "op");
    ap_mp_write_str(&w, CATALOG_OP_RESERVE_SET);
    ap_mp_write_str(&w, "tenant");
    ap_mp_write_str(&w, tenant);
    ap_mp_write_str(&w, "site");
    ap_mp_write_str(&w, site);
    ap_mp_write_str(&w, "reserve");
    write_amounts(&w, NULL, reserve);
    ap_mp_write_str(&w, "at_ms");
    ap_mp_write_uint(&w, at_ms);
    return ap_mp_writer_finish(&w, out, len);
}

int catalog__encode_rights_grant(const char *site, const char *tenant,
                                 const int64_t want[QUOTA_RES_N], uint64_t at_ms, uint8_t **out,
                                 size_t *len)
{
    struct ap_mp_writer w;
    ap_mp_writer_init(&w);
    ap_mp_write_map(&w, 5);
    ap_mp_write_str(&w, "op");
    ap_mp_write_str(&w, CATALOG_OP_RIGHTS);
    ap_mp_write_str(&w, "site");
    ap_mp_write_str(&w, site);
    ap_mp_write_str(&w, "tenant");
    ap_mp_write_str(&w, tenant);
    ap_mp_write_str(&w, "want");
    write_amounts(&w, NULL, want);
    ap_mp_write_str(&w, "at_ms");
    ap_mp_write_uint(&w, at_ms);
    return ap_mp_writer_finish(&w, out, len);
}

/*
 * Read a map of resource amounts. Keys that are not resources are skipped (a
 * newer leader's resource); present[] (may be NULL) says which were given.
 */
static int read_amounts(const msgpack_object *map, const char *field, int64_t v[QUOTA_RES_N],
                        bool present[QUOTA_RES_N], char *errmsg)
{
    const msgpack_object *m = NULL;
    int rv = ap_mp_get_map(map, field, &m, 16, false, errmsg);
    if (rv != 0) {
        return rv;
    }
    for (int i = 0; i < QUOTA_RES_N; i++) {
        v[i] = 0;
        if (present != NULL) {
            present[i] = false;
        }
    }
    for (uint32_t i = 0; m != NULL && i < m->via.map.size; i++) {
        char key[32], name[64];
        enum quota_res r;
        if (ap_mp_as_str(&m->via.map.ptr[i].key, field, key, sizeof key, errmsg) != 0 ||
            !quota__res_parse(key, &r)) {
            continue;
        }
        snprintf(name, sizeof name, "%s.%s", field, key);
        rv = ap_mp_as_i64(&m->via.map.ptr[i].val, name, &v[r], 0, QUOTA_MAX_AMOUNT, errmsg);
        if (rv != 0) {
            return rv;
        }
        if (present != NULL) {
            present[r] = true;
        }
    }
    return 0;
}

/* ---- instance rows ---- */

static const char *inst_columns =
    "SELECT id, tenant, name, site, spec, cpu_millis, memory_mb, created_ts, created_node,"
    " desired, desired_ts, desired_node, actual, actual_ts, actual_node, pid, exit_code, restarts,"
    " changed_index FROM instances";

static struct ap_hlc_ts col_ts(sqlite3_stmt *stmt, int i)
{
    return ap_hlc_unpack((uint64_t)sqlite3_column_int64(stmt, i),
                         (uint32_t)sqlite3_column_int64(stmt, i + 1));
}

/* Fill r from a row of inst_columns; r->spec is ap_malloc'd. */
static int inst_from_row(sqlite3_stmt *stmt, struct ap_instrec *r)
{
    memset(r, 0, sizeof *r);
    ap_strlcpy(r->id, (const char *)sqlite3_column_text(stmt, 0), sizeof r->id);
    ap_strlcpy(r->tenant, (const char *)sqlite3_column_text(stmt, 1), sizeof r->tenant);
    ap_strlcpy(r->name, (const char *)sqlite3_column_text(stmt, 2), sizeof r->name);
    ap_strlcpy(r->site, (const char *)sqlite3_column_text(stmt, 3), sizeof r->site);
    r->spec = ap_strdup((const char *)sqlite3_column_text(stmt, 4));
    r->cpu_millis = sqlite3_column_int64(stmt, 5);
    r->memory_mb = sqlite3_column_int64(stmt, 6);
    r->created = col_ts(stmt, 7);
    ap_desired_parse((const char *)sqlite3_column_text(stmt, 9), &r->desired);
    r->desired_ts = col_ts(stmt, 10);
    ap_actual_parse((const char *)sqlite3_column_text(stmt, 12), &r->actual);
    r->actual_ts = col_ts(stmt, 13);
    r->pid = sqlite3_column_int64(stmt, 15);
    r->exit_code = sqlite3_column_int64(stmt, 16);
    r->restarts = sqlite3_column_int64(stmt, 17);
    return r->spec != NULL ? 0 : AP_ENOMEM;
}

/* Insert or replace r, marking the change with the raft index and who made it. */
static int inst_store(struct ap_store *st, const struct ap_instrec *r, uint64_t index,
                      const char *changed_by)
{
    sqlite3_stmt *stmt;
    int rv = ap_store_prepare(
        st,
        "INSERT OR REPLACE INTO instances(id, tenant, name, site, spec, cpu_millis, memory_mb,"
        " created_ts, created_node, desired, desired_ts, desired_node, actual, actual_ts,"
        " actual_node, pid, exit_code, restarts, changed_index, changed_by)"
        " VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,?20)",
        &stmt);
    if (rv != 0) {
        return rv;
    }
    ap_store_bind_text(st, stmt, 1, r->id);
    ap_store_bind_text(st, stmt, 2, r->tenant);
    ap_store_bind_text(st, stmt, 3, r->name);
    ap_store_bind_text(st, stmt, 4, r->site);
    ap_store_bind_text(st, stmt, 5, r->spec != NULL ? r->spec : "{}");
    ap_store_bind_int64(st, stmt, 6, r->cpu_millis);
    ap_store_bind_int64(st, stmt, 7, r->memory_mb);
    ap_store_bind_int64(st, stmt, 8, (int64_t)ap_hlc_pack(r->created));
    ap_store_bind_int64(st, stmt, 9, r->created.node);
    ap_store_bind_text(st, stmt, 10, ap_desired_name(r->desired));
    ap_store_bind_int64(st, stmt, 11, (int64_t)ap_hlc_pack(r->desired_ts));
    ap_store_bind_int64(st, stmt, 12, r->desired_ts.node);
    ap_store_bind_text(st, stmt, 13, ap_actual_name(r->actual));
    ap_store_bind_int64(st, stmt, 14, (int64_t)ap_hlc_pack(r->actual_ts));
    ap_store_bind_int64(st, stmt, 15, r->actual_ts.node);
    ap_store_bind_int64(st, stmt, 16, r->pid);
    ap_store_bind_int64(st, stmt, 17, r->exit_code);
    ap_store_bind_int64(st, stmt, 18, r->restarts);
    ap_store_bind_int64(st, stmt, 19, (int64_t)index);
    ap_store_bind_text(st, stmt, 20, changed_by);
    return ap_store_step_done(st, stmt);
}

int catalog__instance_get(struct ap_store *st, const char *id, struct ap_instrec *out)
{
    char sql[512];
    sqlite3_stmt *stmt;
    snprintf(sql, sizeof sql, "%s WHERE id=?1", inst_columns);
    int rv = ap_store_prepare(st, sql, &stmt);
    if (rv != 0) {
        return rv;
    }
    ap_store_bind_text(st, stmt, 1, id);
    rv = ap_store_step(st, stmt);
    if (rv != AP_STORE_ROW) {
        return rv == AP_STORE_DONE ? AP_ENOTFOUND : rv;
    }
    rv = inst_from_row(stmt, out);
    ap_store_reset(stmt);
    if (rv != 0) {
        ap_instrec_clear(out);
    }
    return rv;
}

int catalog__instances_list(struct ap_store *st, const char *site, const char *tenant,
                            bool include_deleted, json_t **out)
{
    char sql[768];
    sqlite3_stmt *stmt;
    snprintf(sql, sizeof sql,
             "%s WHERE (?1 IS NULL OR site=?1) AND (?2 IS NULL OR tenant=?2)"
             " AND (?3 OR desired != 'deleted') ORDER BY created_ts, id",
             inst_columns);
    int rv = ap_store_prepare(st, sql, &stmt);
    if (rv != 0) {
        return rv;
    }
    ap_store_bind_text(st, stmt, 1, site);
    ap_store_bind_text(st, stmt, 2, tenant);
    ap_store_bind_int64(st, stmt, 3, include_deleted ? 1 : 0);
    json_t *arr = json_array();
    if (arr == NULL) {
        ap_store_reset(stmt);
        return AP_ENOMEM;
    }
    while ((rv = ap_store_step(st, stmt)) == AP_STORE_ROW) {
        struct ap_instrec r;
        json_t *j = NULL;
        if (inst_from_row(stmt, &r) == 0) {
            j = ap_instjson_render(&r);
        }
        ap_instrec_clear(&r);
        if (j == NULL || json_array_append_new(arr, j) != 0) {
            ap_store_reset(stmt);
            rv = AP_ENOMEM;
            break;
        }
    }
    if (rv != AP_STORE_DONE) {
        json_decref(arr);
        return rv;
    }
    *out = arr;
    return 0;
}

/* ---- quotas ---- */

int catalog__quota_tenant(struct ap_store *st, const char *tenant, struct quota_tenant *out)
{
    sqlite3_stmt *stmt;
    enum quota_res r;
    memset(out, 0, sizeof *out);
    int rv =
        ap_store_prepare(st, "SELECT resource, quota_limit FROM quotas WHERE tenant=?1", &stmt);
    if (rv != 0) {
        return rv;
    }
    ap_store_bind_text(st, stmt, 1, tenant);
    while ((rv = ap_store_step(st, stmt)) == AP_STORE_ROW) {
        if (quota__res_parse((const char *)sqlite3_column_text(stmt, 0), &r)) {
            out->limited[r] = true;
            out->limit[r] = sqlite3_column_int64(stmt, 1);
        }
    }
    if (rv != AP_STORE_DONE) {
        return rv;
    }
    /* docs/catalog.md: a site holds granted - returned; a site that returned
     * more than it was granted (never, unless corrupt) holds nothing. The sum
     * over sites is kept by triggers (migration 5). */
    rv = ap_store_prepare(st, "SELECT resource, assigned FROM quota_assigned WHERE tenant=?1",
                          &stmt);
    if (rv != 0) {
        return rv;
    }
    ap_store_bind_text(st, stmt, 1, tenant);
    while ((rv = ap_store_step(st, stmt)) == AP_STORE_ROW) {
        if (quota__res_parse((const char *)sqlite3_column_text(stmt, 0), &r)) {
            out->assigned[r] = sqlite3_column_int64(stmt, 1);
        }
    }
    return rv == AP_STORE_DONE ? 0 : rv;
}

static json_t *amounts_json(const int64_t v[QUOTA_RES_N], const bool *present)
{
    json_t *o = json_object();
    for (int i = 0; o != NULL && i < QUOTA_RES_N; i++) {
        json_object_set_new(o, quota__res_name((enum quota_res)i),
                            present == NULL || present[i] ? json_integer(v[i]) : json_null());
    }
    return o;
}

/* One site's rights and usage in a quota view. */
struct holder {
    char site[SITE_NAME_MAX + 1];
    int64_t granted[QUOTA_RES_N], returned[QUOTA_RES_N], reserve[QUOTA_RES_N], usage[QUOTA_RES_N];
};

static struct holder *holder_for(struct holder **hs, size_t *n, const char *site)
{
    for (size_t i = 0; i < *n; i++) {
        if (strcmp((*hs)[i].site, site) == 0) {
            return &(*hs)[i];
        }
    }
    struct holder *grown = ap_realloc(*hs, (*n + 1) * sizeof *grown);
    if (grown == NULL) {
        return NULL;
    }
    *hs = grown;
    struct holder *h = &grown[(*n)++];
    memset(h, 0, sizeof *h);
    ap_strlcpy(h->site, site, sizeof h->site);
    return h;
}

int catalog__quota_view(struct ap_store *st, const char *tenant, json_t **out)
{
    struct quota_tenant q;
    struct holder *hs = NULL;
    size_t nh = 0;
    sqlite3_stmt *stmt;
    enum quota_res r;
    int rv = catalog__quota_tenant(st, tenant, &q);
    if (rv != 0) {
        return rv;
    }
    /* Holders in site order: rights rows first, then sites that only have instances. */
    rv = ap_store_prepare(st,
                          "SELECT site, resource, granted, returned, reserve FROM site_rights"
                          " WHERE tenant=?1 ORDER BY site, resource",
                          &stmt);
    if (rv != 0) {
        return rv;
    }
    ap_store_bind_text(st, stmt, 1, tenant);
    while ((rv = ap_store_step(st, stmt)) == AP_STORE_ROW) {
        struct holder *h = holder_for(&hs, &nh, (const char *)sqlite3_column_text(stmt, 0));
        if (h == NULL) {
            ap_store_reset(stmt);
            rv = AP_ENOMEM;
            break;
        }
        if (quota__res_parse((const char *)sqlite3_column_text(stmt, 1), &r)) {
            h->granted[r] = sqlite3_column_int64(stmt, 2);
            h->returned[r] = sqlite3_column_int64(stmt, 3);
            h->reserve[r] = sqlite3_column_int64(stmt, 4);
        }
    }
    if (rv == AP_STORE_DONE) {
        rv = ap_store_prepare(
            st,
            "SELECT site, count(*), sum(cpu_millis), sum(memory_mb) FROM instances"
            " WHERE tenant=?1 AND desired != 'deleted' GROUP BY site ORDER BY site",
            &stmt);
    }
    if (rv == 0) {
        ap_store_bind_text(st, stmt, 1, tenant);
        while ((rv = ap_store_step(st, stmt)) == AP_STORE_ROW) {
            struct holder *h = holder_for(&hs, &nh, (const char *)sqlite3_column_text(stmt, 0));
            if (h == NULL) {
                ap_store_reset(stmt);
                rv = AP_ENOMEM;
                break;
            }
            for (int i = 0; i < QUOTA_RES_N; i++) {
                h->usage[i] = sqlite3_column_int64(stmt, 1 + i);
            }
        }
    }
    if (rv != AP_STORE_DONE) {
        ap_free(hs);
        return rv;
    }
    int64_t usage[QUOTA_RES_N] = {0}, unassigned[QUOTA_RES_N];
    json_t *holders = json_array();
    for (size_t i = 0; i < nh; i++) {
        int64_t held[QUOTA_RES_N];
        for (int k = 0; k < QUOTA_RES_N; k++) {
            usage[k] += hs[i].usage[k];
            held[k] = hs[i].granted[k] - hs[i].returned[k];
            held[k] = held[k] > 0 ? held[k] : 0;
        }
        json_array_append_new(
            holders, json_pack("{s:s, s:o, s:o, s:o, s:o, s:o}", "site", hs[i].site, "granted",
                               amounts_json(hs[i].granted, NULL), "returned",
                               amounts_json(hs[i].returned, NULL), "held", amounts_json(held, NULL),
                               "reserve", amounts_json(hs[i].reserve, NULL), "usage",
                               amounts_json(hs[i].usage, NULL)));
    }
    ap_free(hs);
    for (int k = 0; k < QUOTA_RES_N; k++) {
        unassigned[k] = quota__unassigned(&q, (enum quota_res)k);
    }
    *out = json_pack("{s:s, s:o, s:o, s:o, s:o, s:o}", "tenant", tenant, "limit",
                     amounts_json(q.limit, q.limited), "usage", amounts_json(usage, NULL),
                     "assigned", amounts_json(q.assigned, NULL), "unassigned",
                     amounts_json(unassigned, q.limited), "holders", holders);
    return *out != NULL ? 0 : AP_ENOMEM;
}

/* ---- content hashes (GET /v1/state/hash) ---- */

static json_t *hash_json(const unsigned char h[32])
{
    char hex[65];
    sodium_bin2hex(hex, sizeof hex, h, 32);
    return json_string(hex);
}

static int site_hashes(struct ap_store *st, const char *site, json_t *sites)
{
    unsigned char hi[32], hr[32];
    int rv = ap_store_query_hash(st,
                                 "SELECT " AP_STATE_HASH_INSTANCE_COLUMNS
                                 " FROM instances WHERE site = ?1 ORDER BY id",
                                 site, hi);
    if (rv == 0) {
        rv = ap_store_query_hash(st,
                                 "SELECT " AP_STATE_HASH_RIGHTS_COLUMNS
                                 " FROM site_rights WHERE site = ?1 ORDER BY tenant, resource",
                                 site, hr);
    }
    if (rv == 0) {
        json_object_set_new(sites, site,
                            json_pack("{s:o, s:o}", "instances", hash_json(hi), "rights",
                                      hash_json(hr)));
    }
    return rv;
}

int catalog__state_hash(struct ap_store *st, json_t **out)
{
    unsigned char h[32];
    int rv = ap_store_content_hash(st, catalog__tables, h);
    if (rv != 0) {
        return rv;
    }
    json_t *names = json_array();
    sqlite3_stmt *stmt;
    rv = ap_store_prepare(st, "SELECT name FROM sites ORDER BY name", &stmt);
    if (rv == 0) {
        while ((rv = ap_store_step(st, stmt)) == AP_STORE_ROW) {
            json_array_append_new(names, json_string((const char *)sqlite3_column_text(stmt, 0)));
        }
        rv = rv == AP_STORE_DONE ? 0 : rv;
    }
    json_t *sites = json_object();
    size_t i;
    json_t *name;
    json_array_foreach(names, i, name)
    {
        if (rv == 0) {
            rv = site_hashes(st, json_string_value(name), sites);
        }
    }
    json_decref(names);
    if (rv != 0) {
        json_decref(sites);
        return rv;
    }
    *out = json_pack("{s:o, s:o}", "catalog", hash_json(h), "sites", sites);
    return *out != NULL ? 0 : AP_ENOMEM;
}

/* ---- the site link's view: what a site has not seen yet ---- */

int catalog__delta_for_site(struct ap_store *st, const char *site, uint64_t after, size_t max,
                            uint8_t **body, size_t *len, uint64_t *to, size_t *count)
{
    sqlite3_stmt *stmt;
    char sql[768];
    uint64_t upto = INT64_MAX;
    int rv;
    *to = after;
    *count = 0;
    /* docs/edge.md: rows are sent in raft-index order, and one delta never
     * splits the rows of one entry, so the site's `applied` is exact. The
     * cut is the index of the max-th changed row; every row of that index
     * goes in, so a delta may hold a few more than max rows. */
    rv = ap_store_prepare(st,
                          "SELECT changed_index FROM (SELECT changed_index FROM instances"
                          " WHERE site=?1 AND changed_index > ?2 AND changed_by != ?1"
                          " UNION ALL SELECT changed_index FROM site_rights"
                          " WHERE site=?1 AND changed_index > ?2 AND changed_by != ?1)"
                          " ORDER BY changed_index LIMIT 1 OFFSET ?3",
                          &stmt);
    if (rv != 0) {
        return rv;
    }
    ap_store_bind_text(st, stmt, 1, site);
    ap_store_bind_int64(st, stmt, 2, (int64_t)after);
    ap_store_bind_int64(st, stmt, 3, max > 0 ? (int64_t)max - 1 : 0);
    rv = ap_store_step(st, stmt);
    if (rv == AP_STORE_ROW) {
        upto = (uint64_t)sqlite3_column_int64(stmt, 0);
        ap_store_reset(stmt);
    } else if (rv != AP_STORE_DONE) {
        return rv;
    }

    /* Records go to their own writers; the arrays' lengths are known at the end. */
    struct ap_mp_writer wi, wr, w;
    size_t n_inst = 0, n_rights = 0;
    ap_mp_writer_init(&wi);
    ap_mp_writer_init(&wr);
    snprintf(sql, sizeof sql,
             "%s WHERE site=?1 AND changed_index > ?2 AND changed_index <= ?3 AND changed_by != ?1"
             " ORDER BY changed_index, id",
             inst_columns);
    rv = ap_store_prepare(st, sql, &stmt);
    if (rv == 0) {
        ap_store_bind_text(st, stmt, 1, site);
        ap_store_bind_int64(st, stmt, 2, (int64_t)after);
        ap_store_bind_int64(st, stmt, 3, (int64_t)upto);
        while ((rv = ap_store_step(st, stmt)) == AP_STORE_ROW) {
            struct ap_instrec r;
            uint64_t ci = (uint64_t)sqlite3_column_int64(stmt, 18);
            if (inst_from_row(stmt, &r) != 0) {
                ap_instrec_clear(&r);
                ap_store_reset(stmt);
                rv = AP_ENOMEM;
                break;
            }
            ap_instrec_write(&wi, &r);
            ap_instrec_clear(&r);
            *to = ci > *to ? ci : *to;
            n_inst++;
        }
    }
    if (rv == AP_STORE_DONE) {
        rv = ap_store_prepare(st,
                              "SELECT tenant, resource, granted, returned, reserve, changed_index"
                              " FROM site_rights WHERE site=?1 AND changed_index > ?2"
                              " AND changed_index <= ?3 AND changed_by != ?1"
                              " ORDER BY changed_index, tenant, resource",
                              &stmt);
    }
    if (rv == 0) {
        ap_store_bind_text(st, stmt, 1, site);
        ap_store_bind_int64(st, stmt, 2, (int64_t)after);
        ap_store_bind_int64(st, stmt, 3, (int64_t)upto);
        while ((rv = ap_store_step(st, stmt)) == AP_STORE_ROW) {
            uint64_t ci = (uint64_t)sqlite3_column_int64(stmt, 5);
            ap_mp_write_map(&wr, 5);
            ap_mp_write_str(&wr, "tenant");
            ap_mp_write_str(&wr, (const char *)sqlite3_column_text(stmt, 0));
            ap_mp_write_str(&wr, "res");
            ap_mp_write_str(&wr, (const char *)sqlite3_column_text(stmt, 1));
            ap_mp_write_str(&wr, "granted");
            ap_mp_write_int(&wr, sqlite3_column_int64(stmt, 2));
            ap_mp_write_str(&wr, "returned");
            ap_mp_write_int(&wr, sqlite3_column_int64(stmt, 3));
            ap_mp_write_str(&wr, "reserve");
            ap_mp_write_int(&wr, sqlite3_column_int64(stmt, 4));
            *to = ci > *to ? ci : *to;
            n_rights++;
        }
    }
    if (rv != AP_STORE_DONE || wi.err != 0 || wr.err != 0) {
        rv = rv != AP_STORE_DONE ? rv : (wi.err != 0 ? wi.err : wr.err);
        ap_mp_writer_destroy(&wi);
        ap_mp_writer_destroy(&wr);
        *to = after;
        return rv;
    }
    ap_mp_writer_init(&w);
    ap_mp_write_map(&w, 4);
    ap_mp_write_str(&w, "from");
    ap_mp_write_uint(&w, after);
    ap_mp_write_str(&w, "inst");
    ap_mp_write_array(&w, (uint32_t)n_inst);
    ap_mp_write_raw(&w, wi.sbuf.data, wi.sbuf.size);
    ap_mp_write_str(&w, "rights");
    ap_mp_write_array(&w, (uint32_t)n_rights);
    ap_mp_write_raw(&w, wr.sbuf.data, wr.sbuf.size);
    ap_mp_write_str(&w, "to");
    ap_mp_write_uint(&w, *to);
    ap_mp_writer_destroy(&wi);
    ap_mp_writer_destroy(&wr);
    *count = n_inst + n_rights;
    return ap_mp_writer_finish(&w, body, len);
}

int catalog__site_link_info(struct ap_store *st, const char *site, struct catalog_link_info *out)
{
    sqlite3_stmt *stmt;
    int rv = ap_store_prepare(st, "SELECT state, site_seq_applied FROM sites WHERE name=?1", &stmt);
    if (rv != 0) {
        return rv;
    }
    ap_store_bind_text(st, stmt, 1, site);
    rv = ap_store_step(st, stmt);
    if (rv != AP_STORE_ROW) {
        return rv == AP_STORE_DONE ? AP_ENOTFOUND : rv;
    }
    ap_strlcpy(out->state, (const char *)sqlite3_column_text(stmt, 0), sizeof out->state);
    out->site_seq_applied = (uint64_t)sqlite3_column_int64(stmt, 1);
    ap_store_reset(stmt);
    return 0;
}

int catalog__connected_sites(struct ap_store *st, char ***names, size_t *n)
{
    sqlite3_stmt *stmt;
    *names = NULL;
    *n = 0;
    /* The literal state lets SQLite use the partial index sites_connected (migration 7). */
    int rv = ap_store_prepare(st, "SELECT name FROM sites WHERE state='connected' ORDER BY name",
                              &stmt);
    if (rv != 0) {
        return rv;
    }
    size_t cap = 0;
    while ((rv = ap_store_step(st, stmt)) == AP_STORE_ROW) {
        if (*n == cap) {
            cap = cap == 0 ? 16 : cap * 2;
            char **grown = ap_realloc(*names, cap * sizeof *grown);
            if (grown == NULL) {
                ap_store_reset(stmt);
                rv = AP_ENOMEM;
                break;
            }
            *names = grown;
        }
        (*names)[(*n)++] = ap_strdup((const char *)sqlite3_column_text(stmt, 0));
    }
    if (rv != AP_STORE_DONE) {
        for (size_t i = 0; i < *n; i++) {
            ap_free((*names)[i]);
        }
        ap_free(*names);
        *names = NULL;
        *n = 0;
        return rv;
    }
    return 0;
}

/* ---- reads ---- */

static const char *site_columns =
    "SELECT name, labels, cpu_millis, memory_mb, max_instances, capabilities, state,"
    " last_heartbeat_ms, created_at_ms, updated_at_ms, cordoned, http FROM sites";

/* A site as the API shows it (docs/api.md); labels and caps are references the JSON takes. */
struct site_view {
    const char *name;
    json_t *labels;
    int64_t cpu_millis, memory_mb, instances;
    json_t *caps;
    const char *state;
    int64_t heartbeat_ms, created_ms, updated_ms;
    bool cordoned;
    const char *http;
};

static json_t *site_view_json(const struct site_view *v)
{
    char created[40], updated[40], hb[40];
    format_time(v->created_ms, created, sizeof created);
    format_time(v->updated_ms, updated, sizeof updated);
    format_time(v->heartbeat_ms, hb, sizeof hb);
    return json_pack("{s:s, s:o, s:{s:I, s:I, s:I}, s:o, s:s, s:o, s:s, s:s, s:b, s:s}", "name",
                     v->name, "labels", v->labels != NULL ? v->labels : json_object(), "capacity",
                     "cpu_millis", (json_int_t)v->cpu_millis, "memory_mb",
                     (json_int_t)v->memory_mb, "instances", (json_int_t)v->instances,
                     "capabilities", v->caps != NULL ? v->caps : json_array(), "state", v->state,
                     "last_heartbeat", v->heartbeat_ms > 0 ? json_string(hb) : json_null(),
                     "created_at", created, "updated_at", updated, "cordoned", v->cordoned,
                     "http", v->http);
}

static json_t *site_row_json(sqlite3_stmt *stmt)
{
    struct site_view v = {
        .name = (const char *)sqlite3_column_text(stmt, 0),
        .labels = json_loads((const char *)sqlite3_column_text(stmt, 1), 0, NULL),
        .cpu_millis = sqlite3_column_int64(stmt, 2),
        .memory_mb = sqlite3_column_int64(stmt, 3),
        .instances = sqlite3_column_int64(stmt, 4),
        .caps = json_loads((const char *)sqlite3_column_text(stmt, 5), 0, NULL),
        .state = (const char *)sqlite3_column_text(stmt, 6),
        .heartbeat_ms = sqlite3_column_int64(stmt, 7),
        .created_ms = sqlite3_column_int64(stmt, 8),
        .updated_ms = sqlite3_column_int64(stmt, 9),
        .cordoned = sqlite3_column_int(stmt, 10) != 0,
        .http = (const char *)sqlite3_column_text(stmt, 11),
    };
    return site_view_json(&v);
}

int catalog__site_get(struct ap_store *st, const char *name, json_t **out)
{
    char sql[512];
    sqlite3_stmt *stmt;
    snprintf(sql, sizeof sql, "%s WHERE name=?1", site_columns);
    int rv = ap_store_prepare(st, sql, &stmt);
    if (rv != 0) {
        return rv;
    }
    ap_store_bind_text(st, stmt, 1, name);
    rv = ap_store_step(st, stmt);
    if (rv != AP_STORE_ROW) {
        return rv == AP_STORE_DONE ? AP_ENOTFOUND : rv;
    }
    *out = site_row_json(stmt);
    ap_store_reset(stmt);
    return *out != NULL ? 0 : AP_ENOMEM;
}

int catalog__sites_list(struct ap_store *st, json_t **out)
{
    char sql[512];
    sqlite3_stmt *stmt;
    snprintf(sql, sizeof sql, "%s ORDER BY name", site_columns);
    int rv = ap_store_prepare(st, sql, &stmt);
    if (rv != 0) {
        return rv;
    }
    json_t *arr = json_array();
    while ((rv = ap_store_step(st, stmt)) == AP_STORE_ROW) {
        json_array_append_new(arr, site_row_json(stmt));
    }
    if (rv != AP_STORE_DONE) {
        json_decref(arr);
        return rv;
    }
    *out = arr;
    return 0;
}

/* ---- apply ---- */

static int log_event(struct ap_store *st, uint64_t index, uint64_t at_ms, const char *kind,
                     const char *subject, const char *detail)
{
    sqlite3_stmt *stmt;
    int rv = ap_store_prepare(
        st, "INSERT INTO events(raft_index, at_ms, kind, subject, detail) VALUES(?1,?2,?3,?4,?5)",
        &stmt);
    if (rv != 0) {
        return rv;
    }
    ap_store_bind_int64(st, stmt, 1, (int64_t)index);
    ap_store_bind_int64(st, stmt, 2, (int64_t)at_ms);
    ap_store_bind_text(st, stmt, 3, kind);
    ap_store_bind_text(st, stmt, 4, subject);
    ap_store_bind_text(st, stmt, 5, detail);
    return ap_store_step_done(st, stmt);
}

static void apply_site_create(struct ap_store *st, uint64_t index, const msgpack_object *cmd,
                              struct ap_rsm_result *res)
{
    struct site_spec spec;
    const msgpack_object *labels = NULL;
    uint64_t at_ms = 0;
    int rv;
    memset(&spec, 0, sizeof spec);
    if ((rv = ap_mp_get_str(cmd, "name", spec.name, sizeof spec.name, true, res->message)) != 0 ||
        (rv = ap_mp_get_map(cmd, "labels", &labels, SITE_MAX_LABELS, false, res->message)) != 0 ||
        (rv = ap_mp_get_i64(cmd, "cpu_millis", &spec.cpu_millis, 0, INT64_MAX, true,
                            res->message)) != 0 ||
        (rv = ap_mp_get_i64(cmd, "memory_mb", &spec.memory_mb, 0, INT64_MAX, true, res->message)) !=
            0 ||
        (rv = ap_mp_get_i64(cmd, "instances", &spec.instances, 0, INT64_MAX, true, res->message)) !=
            0 ||
        (rv = ap_mp_get_u64(cmd, "at_ms", &at_ms, INT64_MAX, true, res->message)) != 0) {
        res->status = rv;
        return;
    }
    if (!site__valid_name(spec.name)) {
        res->status = AP_EINVAL;
        ap_errmsg_set(res->message, "invalid site name");
        return;
    }
    json_t *lj = json_object();
    if (labels != NULL) {
        for (uint32_t i = 0; i < labels->via.map.size; i++) {
            char k[SITE_LABEL_MAX + 1], v[SITE_LABEL_MAX + 1];
            if ((rv = ap_mp_as_str(&labels->via.map.ptr[i].key, "labels key", k, sizeof k,
                                   res->message)) != 0 ||
                (rv = ap_mp_as_str(&labels->via.map.ptr[i].val, "labels value", v, sizeof v,
                                   res->message)) != 0) {
                json_decref(lj);
                res->status = rv;
                return;
            }
            json_object_set_new(lj, k, json_string(v));
        }
    }
    char *labels_text = json_dumps(lj, JSON_COMPACT | JSON_SORT_KEYS);
    if (labels_text == NULL) {
        json_decref(lj);
        res->status = AP_ENOMEM;
        return;
    }
    sqlite3_stmt *stmt;
    rv = ap_store_prepare(st,
                          "INSERT INTO sites(name, labels, cpu_millis, memory_mb, max_instances,"
                          " created_at_ms, updated_at_ms, created_index)"
                          " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7)",
                          &stmt);
    if (rv == 0) {
        ap_store_bind_text(st, stmt, 1, spec.name);
        ap_store_bind_text(st, stmt, 2, labels_text);
        ap_store_bind_int64(st, stmt, 3, spec.cpu_millis);
        ap_store_bind_int64(st, stmt, 4, spec.memory_mb);
        ap_store_bind_int64(st, stmt, 5, spec.instances);
        ap_store_bind_int64(st, stmt, 6, (int64_t)at_ms);
        ap_store_bind_int64(st, stmt, 7, (int64_t)index);
        rv = ap_store_step_done(st, stmt);
    }
    free(labels_text);
    if (rv == AP_EEXIST) {
        json_decref(lj);
        res->status = AP_EEXIST;
        ap_errmsg_set(res->message, "site '%s' already exists", spec.name);
        return;
    }
    if (rv == 0) {
        rv = log_event(st, index, at_ms, "site_created", spec.name, "{}");
    }
    if (rv == 0 && res->want_value) {
        /* The row just inserted, with the columns' defaults (migrations 1, 4 and 6): no
         * read-back, which cost a tenth of a loaded leader's CPU. test_catalog compares it
         * with a GET. */
        struct site_view v = {.name = spec.name, .labels = json_incref(lj),
                              .cpu_millis = spec.cpu_millis, .memory_mb = spec.memory_mb,
                              .instances = spec.instances, .state = "registered",
                              .created_ms = (int64_t)at_ms, .updated_ms = (int64_t)at_ms,
                              .http = ""};
        res->value = site_view_json(&v);
        rv = res->value != NULL ? 0 : AP_ENOMEM;
    }
    json_decref(lj);
    if (rv != 0) {
        res->status = rv;
        ap_errmsg_set(res->message, "create site: %s", ap_store_errmsg(st));
    }
}

static void apply_site_delete(struct ap_store *st, uint64_t index, const msgpack_object *cmd,
                              struct ap_rsm_result *res)
{
    char name[SITE_NAME_MAX + 1];
    uint64_t at_ms = 0;
    int rv;
    if ((rv = ap_mp_get_str(cmd, "name", name, sizeof name, true, res->message)) != 0 ||
        (rv = ap_mp_get_u64(cmd, "at_ms", &at_ms, INT64_MAX, true, res->message)) != 0) {
        res->status = rv;
        return;
    }
    rv = catalog__site_get(st, name, &res->value);
    if (rv == AP_ENOTFOUND) {
        res->status = AP_ENOTFOUND;
        ap_errmsg_set(res->message, "site '%s' not found", name);
        return;
    }
    sqlite3_stmt *stmt;
    if (rv == 0) {
        rv = ap_store_prepare(st, "DELETE FROM sites WHERE name=?1", &stmt);
    }
    if (rv == 0) {
        ap_store_bind_text(st, stmt, 1, name);
        rv = ap_store_step_done(st, stmt);
    }
    if (rv == 0) {
        rv = log_event(st, index, at_ms, "site_deleted", name, "{}");
    }
    if (rv != 0) {
        res->status = rv;
        ap_errmsg_set(res->message, "delete site: %s", ap_store_errmsg(st));
    }
}

static void apply_site_state(struct ap_store *st, uint64_t index, const msgpack_object *cmd,
                             struct ap_rsm_result *res)
{
    char name[SITE_NAME_MAX + 1], state[16];
    uint64_t at_ms = 0;
    const uint8_t *hello = NULL;
    size_t hello_len = 0;
    int rv;
    if ((rv = ap_mp_get_str(cmd, "name", name, sizeof name, true, res->message)) != 0 ||
        (rv = ap_mp_get_str(cmd, "state", state, sizeof state, true, res->message)) != 0 ||
        (rv = ap_mp_get_u64(cmd, "at_ms", &at_ms, INT64_MAX, true, res->message)) != 0 ||
        (rv = ap_mp_get_bin(cmd, "hello", &hello, &hello_len, AP_RSM_MAX_COMMAND, false,
                            res->message)) != 0) {
        res->status = rv;
        return;
    }
    if (strcmp(state, "connected") != 0 && strcmp(state, "unreachable") != 0) {
        res->status = AP_EINVAL;
        ap_errmsg_set(res->message, "unknown site state '%s'", state);
        return;
    }
    /* Capabilities and capacity are the site's to say (one writer per field). */
    char *caps_text = NULL;
    char http[64] = "";
    int64_t cpu = -1, mem = -1, inst = -1;
    msgpack_unpacked up;
    bool have_hello = false;
    if (hello != NULL && ap_mp_unpack(hello, hello_len, AP_RSM_MAX_COMMAND, &up, NULL) == 0) {
        have_hello = true;
        const msgpack_object *caps = NULL, *cap = NULL;
        if (ap_mp_get_array(&up.data, "caps", &caps, 64, false, NULL) == 0 && caps != NULL) {
            json_t *arr = json_array();
            for (uint32_t i = 0; i < caps->via.array.size; i++) {
                char c[64];
                if (ap_mp_as_str(&caps->via.array.ptr[i], "caps", c, sizeof c, NULL) == 0) {
                    json_array_append_new(arr, json_string(c));
                }
            }
            caps_text = json_dumps(arr, JSON_COMPACT);
            json_decref(arr);
        }
        if (ap_mp_get_str(&up.data, "http", http, sizeof http, false, NULL) != 0) {
            http[0] = '\0';
        }
        if (ap_mp_get_map(&up.data, "capacity", &cap, 8, false, NULL) == 0 && cap != NULL) {
            ap_mp_get_i64(cap, "cpu_millis", &cpu, 0, INT64_MAX, false, NULL);
            ap_mp_get_i64(cap, "memory_mb", &mem, 0, INT64_MAX, false, NULL);
            ap_mp_get_i64(cap, "instances", &inst, 0, INT64_MAX, false, NULL);
        }
    }
    sqlite3_stmt *stmt;
    rv = ap_store_prepare(
        st,
        "UPDATE sites SET state=?2, updated_at_ms=?3,"
        " last_heartbeat_ms=CASE WHEN ?2='connected' THEN ?3 ELSE last_heartbeat_ms END,"
        " capabilities=COALESCE(?4, capabilities),"
        " cpu_millis=CASE WHEN ?5>=0 THEN ?5 ELSE cpu_millis END,"
        " memory_mb=CASE WHEN ?6>=0 THEN ?6 ELSE memory_mb END,"
        " max_instances=CASE WHEN ?7>=0 THEN ?7 ELSE max_instances END,"
        " http=CASE WHEN ?8 != '' THEN ?8 ELSE http END"
        " WHERE name=?1",
        &stmt);
    if (rv == 0) {
        ap_store_bind_text(st, stmt, 1, name);
        ap_store_bind_text(st, stmt, 2, state);
        ap_store_bind_int64(st, stmt, 3, (int64_t)at_ms);
        ap_store_bind_text(st, stmt, 4, caps_text);
        ap_store_bind_int64(st, stmt, 5, cpu);
        ap_store_bind_int64(st, stmt, 6, mem);
        ap_store_bind_int64(st, stmt, 7, inst);
        ap_store_bind_text(st, stmt, 8, http);
        rv = ap_store_step_done(st, stmt);
    }
    free(caps_text);
    if (have_hello) {
        msgpack_unpacked_destroy(&up);
    }
    if (rv == 0 && sqlite3_changes(ap_store_db(st)) == 0) {
        res->status = AP_ENOTFOUND;
        ap_errmsg_set(res->message, "site '%s' not found", name);
        return;
    }
    if (rv == 0) {
        rv = log_event(st, index, at_ms,
                       strcmp(state, "connected") == 0 ? "site_connected" : "site_unreachable",
                       name, "{}");
    }
    if (rv != 0) {
        res->status = rv;
        ap_errmsg_set(res->message, "site state: %s", ap_store_errmsg(st));
    }
}

/* Add amount[] to site's granted rights of tenant (docs/catalog.md "Quotas"). */
static int grant_rights(struct ap_store *st, uint64_t index, const char *site, const char *tenant,
                        const int64_t amount[QUOTA_RES_N])
{
    sqlite3_stmt *stmt;
    for (int i = 0; i < QUOTA_RES_N; i++) {
        if (amount[i] <= 0) {
            continue;
        }
        int rv = ap_store_prepare(st,
                                  "INSERT INTO site_rights(site, tenant, resource, granted,"
                                  " changed_index, changed_by) VALUES(?1, ?2, ?3, ?4, ?5, '')"
                                  " ON CONFLICT(site, tenant, resource) DO UPDATE SET"
                                  " granted=granted+?4, changed_index=?5, changed_by=''",
                                  &stmt);
        if (rv != 0) {
            return rv;
        }
        ap_store_bind_text(st, stmt, 1, site);
        ap_store_bind_text(st, stmt, 2, tenant);
        ap_store_bind_text(st, stmt, 3, quota__res_name((enum quota_res)i));
        ap_store_bind_int64(st, stmt, 4, amount[i]);
        ap_store_bind_int64(st, stmt, 5, (int64_t)index);
        if ((rv = ap_store_step_done(st, stmt)) != 0) {
            return rv;
        }
    }
    return 0;
}

/* "tenant acme: cpu_millis quota exceeded: limit 4000, 300 unassigned, 500 needed". */
static void quota_message(char *errmsg, const char *tenant, const struct quota_tenant *q,
                          enum quota_res r, const int64_t need[QUOTA_RES_N])
{
    ap_errmsg_set(errmsg,
                  "tenant %s: %s quota exceeded: regional limit %" PRId64 ", %" PRId64
                  " not yet assigned to sites, %" PRId64 " needed",
                  tenant, quota__res_name(r), q->limit[r], quota__unassigned(q, r), need[r]);
}

/*
 * Grant every site of tenant the part of its autonomy reserve it lacks, as
 * far as the unassigned quota goes, sites in name order (docs/catalog.md).
 */
static int top_up_reserves(struct ap_store *st, uint64_t index, const char *tenant)
{
    struct row {
        char site[SITE_NAME_MAX + 1];
        int64_t held[QUOTA_RES_N], reserve[QUOTA_RES_N];
    } *rows = NULL;
    size_t n = 0;
    sqlite3_stmt *stmt;
    enum quota_res r;
    int rv = ap_store_prepare(st,
                              "SELECT site, resource, granted - returned, reserve FROM site_rights"
                              " WHERE tenant=?1 ORDER BY site",
                              &stmt);
    if (rv != 0) {
        return rv;
    }
    ap_store_bind_text(st, stmt, 1, tenant);
    while ((rv = ap_store_step(st, stmt)) == AP_STORE_ROW) {
        const char *site = (const char *)sqlite3_column_text(stmt, 0);
        if (n == 0 || strcmp(rows[n - 1].site, site) != 0) {
            struct row *grown = ap_realloc(rows, (n + 1) * sizeof *grown);
            if (grown == NULL) {
                ap_store_reset(stmt);
                rv = AP_ENOMEM;
                break;
            }
            rows = grown;
            memset(&rows[n], 0, sizeof rows[n]);
            ap_strlcpy(rows[n].site, site, sizeof rows[n].site);
            n++;
        }
        if (quota__res_parse((const char *)sqlite3_column_text(stmt, 1), &r)) {
            rows[n - 1].held[r] = sqlite3_column_int64(stmt, 2);
            rows[n - 1].reserve[r] = sqlite3_column_int64(stmt, 3);
        }
    }
    if (rv != AP_STORE_DONE) {
        ap_free(rows);
        return rv;
    }
    struct quota_tenant q;
    rv = catalog__quota_tenant(st, tenant, &q);
    for (size_t i = 0; rv == 0 && i < n; i++) {
        int64_t grant[QUOTA_RES_N];
        quota__reserve_grant(&q, rows[i].held, rows[i].reserve, grant);
        rv = grant_rights(st, index, rows[i].site, tenant, grant);
        for (int k = 0; k < QUOTA_RES_N; k++) {
            q.assigned[k] += grant[k];
        }
    }
    ap_free(rows);
    return rv;
}

static bool site_exists(struct ap_store *st, const char *site, int *rv)
{
    struct catalog_link_info info;
    *rv = catalog__site_link_info(st, site, &info);
    if (*rv == AP_ENOTFOUND) {
        *rv = 0;
        return false;
    }
    return *rv == 0;
}

static void apply_inst_create(struct ap_store *st, uint64_t index, const msgpack_object *cmd,
                              struct ap_rsm_result *res)
{
    struct ap_instrec r;
    uint64_t at_ms = 0;
    int rv = ap_mp_get_u64(cmd, "at_ms", &at_ms, INT64_MAX, true, res->message);
    if (rv == 0) {
        rv = ap_instrec_read(ap_mp_find(cmd, "rec"), &r, res->message);
        if (rv != 0) {
            ap_errmsg_wrap(res->message, "field 'rec'");
        }
    }
    if (rv != 0) {
        res->status = rv;
        return;
    }
    if (!ap_uuid_valid(r.id) || !site__valid_name(r.tenant) || !site__valid_name(r.name) ||
        !site__valid_name(r.site)) {
        res->status = AP_EINVAL;
        ap_errmsg_set(res->message, "instance record: invalid id, tenant, name or site");
        goto done;
    }
    if (!site_exists(st, r.site, &rv)) {
        res->status = rv != 0 ? rv : AP_ENOTFOUND;
        ap_errmsg_set(res->message, "site '%s' not found", r.site);
        goto done;
    }
    sqlite3_stmt *stmt;
    rv = ap_store_prepare(st,
                          "SELECT 'name' FROM instances WHERE tenant=?1 AND site=?2 AND name=?3"
                          " AND desired != 'deleted' UNION ALL SELECT 'id' FROM instances"
                          " WHERE id=?4 LIMIT 1",
                          &stmt);
    if (rv == 0) {
        ap_store_bind_text(st, stmt, 1, r.tenant);
        ap_store_bind_text(st, stmt, 2, r.site);
        ap_store_bind_text(st, stmt, 3, r.name);
        ap_store_bind_text(st, stmt, 4, r.id);
        rv = ap_store_step(st, stmt);
        if (rv == AP_STORE_ROW) {
            bool by_id = strcmp((const char *)sqlite3_column_text(stmt, 0), "id") == 0;
            ap_store_reset(stmt);
            res->status = AP_EEXIST;
            if (by_id) {
                ap_errmsg_set(res->message, "an instance with id %s already exists", r.id);
            } else {
                ap_errmsg_set(res->message,
                              "tenant %s already has an instance named '%s' on site %s", r.tenant,
                              r.name, r.site);
            }
            goto done;
        }
    }
    /* docs/edge.md: a region create grants the site fresh rights for exactly
     * this instance, in the same entry, from the tenant's unassigned quota. */
    int64_t need[QUOTA_RES_N] = {1, r.cpu_millis, r.memory_mb};
    struct quota_tenant q;
    enum quota_res short_res;
    if (rv == AP_STORE_DONE) {
        rv = catalog__quota_tenant(st, r.tenant, &q);
    }
    if (rv == 0 && !quota__covers(&q, need, &short_res)) {
        res->status = AP_EQUOTA;
        quota_message(res->message, r.tenant, &q, short_res, need);
        goto done;
    }
    if (rv == 0) {
        rv = inst_store(st, &r, index, "");
    }
    if (rv == 0) {
        rv = grant_rights(st, index, r.site, r.tenant, need);
    }
    if (rv == 0) {
        char detail[256];
        snprintf(detail, sizeof detail, "{\"tenant\":\"%s\",\"site\":\"%s\",\"name\":\"%s\"}",
                 r.tenant, r.site, r.name);
        rv = log_event(st, index, at_ms, "instance_created", r.id, detail);
    }
    if (rv != 0) {
        res->status = rv;
        ap_errmsg_set(res->message, "create instance: %s", ap_store_errmsg(st));
        goto done;
    }
    if (res->want_value) {
        res->value = ap_instjson_render(&r);
    }
done:
    ap_instrec_clear(&r);
}

static void apply_inst_desire(struct ap_store *st, uint64_t index, const msgpack_object *cmd,
                              struct ap_rsm_result *res)
{
    char id[AP_INSTREC_ID_SIZE], desired[16];
    uint64_t at_ms = 0, packed = 0, node = 0;
    enum ap_desired d;
    struct ap_instrec r;
    int rv;
    if ((rv = ap_mp_get_str(cmd, "id", id, sizeof id, true, res->message)) != 0 ||
        (rv = ap_mp_get_str(cmd, "desired", desired, sizeof desired, true, res->message)) != 0 ||
        (rv = ap_mp_get_u64(cmd, "ts", &packed, INT64_MAX, true, res->message)) != 0 ||
        (rv = ap_mp_get_u64(cmd, "node", &node, UINT32_MAX, true, res->message)) != 0 ||
        (rv = ap_mp_get_u64(cmd, "at_ms", &at_ms, INT64_MAX, true, res->message)) != 0) {
        res->status = rv;
        return;
    }
    if (ap_desired_parse(desired, &d) != 0) {
        res->status = AP_EINVAL;
        ap_errmsg_set(res->message, "unknown desired state '%s'", desired);
        return;
    }
    rv = catalog__instance_get(st, id, &r);
    if (rv != 0) {
        res->status = rv;
        ap_errmsg_set(res->message,
                      rv == AP_ENOTFOUND ? "instance %s not found" : "instance %s: %s", id,
                      ap_store_errmsg(st));
        return;
    }
    if (r.desired == AP_DESIRED_DELETED) {
        /* docs/merge-rules.md: delete dominates; deleting again is a no-op. */
        if (d != AP_DESIRED_DELETED) {
            res->status = AP_ECONFLICT;
            ap_errmsg_set(res->message, "instance %s is deleted", id);
        } else {
            res->value = ap_instjson_render(&r);
        }
        ap_instrec_clear(&r);
        return;
    }
    /* The region acknowledges this write as the latest it knows of: order it
     * after the stored stamp even if the leader's clock is behind a site's. */
    struct ap_hlc_ts ts = ap_hlc_unpack(packed, (uint32_t)node);
    if (ap_hlc_compare(ts, r.desired_ts) <= 0) {
        ts = r.desired_ts;
        ts.node = (uint32_t)node;
        if (ts.logical == AP_HLC_LOGICAL_MAX) {
            ts.physical_ms++;
            ts.logical = 0;
        } else {
            ts.logical++;
        }
    }
    ap_instrec_set_desired(&r, d, ts);
    rv = inst_store(st, &r, index, "");
    if (rv == 0 && d == AP_DESIRED_DELETED) {
        rv = log_event(st, index, at_ms, "instance_deleted", id, "{}");
    }
    if (rv != 0) {
        res->status = rv;
        ap_errmsg_set(res->message, "instance %s: %s", id, ap_store_errmsg(st));
    } else if (res->want_value) {
        res->value = ap_instjson_render(&r);
    }
    ap_instrec_clear(&r);
}

/* Merge one instance record from site's delta (docs/edge.md). *merged says whether it was taken. */
static int merge_site_record(struct ap_store *st, uint64_t index, const char *site,
                             const struct ap_instrec *in, bool *taken)
{
    struct ap_instrec cur;
    *taken = false;
    if (strcmp(in->site, site) != 0 || !ap_uuid_valid(in->id)) {
        return 0; /* A site writes only its own records. */
    }
    int rv = catalog__instance_get(st, in->id, &cur);
    if (rv == AP_ENOTFOUND) {
        *taken = true;
        return inst_store(st, in, index, site);
    }
    if (rv != 0) {
        return rv;
    }
    if (strcmp(cur.site, site) == 0) {
        *taken = true;
        /* Unchanged rows are left alone (a replay changes nothing); a changed
         * row is echoed back unless it is exactly what the site sent. */
        if (ap_instrec_merge(&cur, in)) {
            rv = inst_store(st, &cur, index, ap_instrec_equal(&cur, in) ? site : "");
        }
    }
    ap_instrec_clear(&cur);
    return rv;
}

/* Merge one rights row of site's delta: the site is the only writer of returned. */
static int merge_site_rights(struct ap_store *st, uint64_t index, const char *site,
                             const msgpack_object *o, char *tenant, size_t tenant_size, bool *taken,
                             bool *changed)
{
    char res_name[32];
    int64_t granted = 0, returned = 0, reserve = 0;
    enum quota_res r;
    *taken = false;
    *changed = false;
    if (ap_mp_get_str(o, "tenant", tenant, tenant_size, true, NULL) != 0 ||
        ap_mp_get_str(o, "res", res_name, sizeof res_name, true, NULL) != 0 ||
        ap_mp_get_i64(o, "returned", &returned, 0, INT64_MAX, true, NULL) != 0 ||
        ap_mp_get_i64(o, "granted", &granted, 0, INT64_MAX, false, NULL) != 0 ||
        ap_mp_get_i64(o, "reserve", &reserve, 0, INT64_MAX, false, NULL) != 0 ||
        !quota__res_parse(res_name, &r) || !site__valid_name(tenant)) {
        return 0;
    }
    sqlite3_stmt *stmt;
    int rv = ap_store_prepare(st,
                              "SELECT granted, returned, reserve FROM site_rights"
                              " WHERE site=?1 AND tenant=?2 AND resource=?3",
                              &stmt);
    if (rv != 0) {
        return rv;
    }
    ap_store_bind_text(st, stmt, 1, site);
    ap_store_bind_text(st, stmt, 2, tenant);
    ap_store_bind_text(st, stmt, 3, res_name);
    int64_t cur_granted = 0, cur_returned = 0, cur_reserve = 0;
    rv = ap_store_step(st, stmt);
    if (rv == AP_STORE_ROW) {
        cur_granted = sqlite3_column_int64(stmt, 0);
        cur_returned = sqlite3_column_int64(stmt, 1);
        cur_reserve = sqlite3_column_int64(stmt, 2);
        ap_store_reset(stmt);
    } else if (rv != AP_STORE_DONE) {
        return rv;
    }
    *taken = true;
    if (returned <= cur_returned) {
        return 0; /* Nothing new (a replay, or an older row). */
    }
    *changed = true;
    bool same = granted == cur_granted && reserve == cur_reserve;
    rv = ap_store_prepare(st,
                          "INSERT INTO site_rights(site, tenant, resource, returned, changed_index,"
                          " changed_by) VALUES(?1, ?2, ?3, ?4, ?5, ?6)"
                          " ON CONFLICT(site, tenant, resource) DO UPDATE SET"
                          " returned=?4, changed_index=?5, changed_by=?6",
                          &stmt);
    if (rv != 0) {
        return rv;
    }
    ap_store_bind_text(st, stmt, 1, site);
    ap_store_bind_text(st, stmt, 2, tenant);
    ap_store_bind_text(st, stmt, 3, res_name);
    ap_store_bind_int64(st, stmt, 4, returned);
    ap_store_bind_int64(st, stmt, 5, (int64_t)index);
    ap_store_bind_text(st, stmt, 6, same ? site : "");
    return ap_store_step_done(st, stmt);
}

#define DELTA_MAX_RECORDS 100000

static void apply_site_delta(struct ap_store *st, uint64_t index, const msgpack_object *cmd,
                             struct ap_rsm_result *res)
{
    char site[SITE_NAME_MAX + 1];
    const uint8_t *body = NULL;
    size_t body_len = 0;
    msgpack_unpacked up;
    const msgpack_object *inst = NULL, *rights = NULL;
    uint64_t to = 0;
    int rv;
    if ((rv = ap_mp_get_str(cmd, "name", site, sizeof site, true, res->message)) != 0 ||
        (rv = ap_mp_get_bin(cmd, "delta", &body, &body_len, CATALOG_MAX_COMMAND, true,
                            res->message)) != 0) {
        res->status = rv;
        return;
    }
    if (!site_exists(st, site, &rv)) {
        res->status = rv != 0 ? rv : AP_ENOTFOUND;
        ap_errmsg_set(res->message, "site '%s' not found", site);
        return;
    }
    if ((rv = ap_mp_unpack(body, body_len, CATALOG_MAX_COMMAND, &up, res->message)) != 0) {
        ap_errmsg_wrap(res->message, "delta of site %s", site);
        res->status = rv;
        return;
    }
    if ((rv = ap_mp_get_u64(&up.data, "to", &to, INT64_MAX, false, res->message)) != 0 ||
        (rv = ap_mp_get_array(&up.data, "inst", &inst, DELTA_MAX_RECORDS, false, res->message)) !=
            0 ||
        (rv = ap_mp_get_array(&up.data, "rights", &rights, DELTA_MAX_RECORDS, false,
                              res->message)) != 0) {
        ap_errmsg_wrap(res->message, "delta of site %s", site);
        res->status = rv;
        msgpack_unpacked_destroy(&up);
        return;
    }
    size_t applied = 0, skipped = 0, n_tenants = 0;
    char(*tenants)[AP_INSTREC_NAME_SIZE] = NULL;
    for (uint32_t i = 0; rv == 0 && inst != NULL && i < inst->via.array.size; i++) {
        struct ap_instrec r;
        bool taken = false;
        /* A malformed record is skipped, identically on every replica: the
         * rest of the delta still applies and the site is not stuck on it. */
        if (ap_instrec_read(&inst->via.array.ptr[i], &r, NULL) == 0) {
            rv = merge_site_record(st, index, site, &r, &taken);
        }
        ap_instrec_clear(&r);
        taken ? applied++ : skipped++;
    }
    for (uint32_t i = 0; rv == 0 && rights != NULL && i < rights->via.array.size; i++) {
        char tenant[AP_INSTREC_NAME_SIZE];
        bool taken = false, changed = false;
        rv = merge_site_rights(st, index, site, &rights->via.array.ptr[i], tenant, sizeof tenant,
                               &taken, &changed);
        if (rv != 0 || !taken) {
            skipped++;
            continue;
        }
        applied++;
        if (!changed) {
            continue;
        }
        size_t k = 0;
        while (k < n_tenants && strcmp(tenants[k], tenant) != 0) {
            k++;
        }
        if (k == n_tenants) {
            char(*grown)[AP_INSTREC_NAME_SIZE] = ap_realloc(tenants, (k + 1) * sizeof *grown);
            if (grown == NULL) {
                rv = AP_ENOMEM;
                break;
            }
            tenants = grown;
            ap_strlcpy(tenants[n_tenants++], tenant, sizeof tenants[0]);
        }
    }
    msgpack_unpacked_destroy(&up);
    /* Rights a site gave back can fill other sites' autonomy reserves. */
    for (size_t k = 0; rv == 0 && k < n_tenants; k++) {
        rv = top_up_reserves(st, index, tenants[k]);
    }
    ap_free(tenants);
    sqlite3_stmt *stmt;
    if (rv == 0) {
        rv = ap_store_prepare(
            st, "UPDATE sites SET site_seq_applied=max(site_seq_applied, ?2) WHERE name=?1", &stmt);
    }
    if (rv == 0) {
        ap_store_bind_text(st, stmt, 1, site);
        ap_store_bind_int64(st, stmt, 2, (int64_t)to);
        rv = ap_store_step_done(st, stmt);
    }
    if (rv != 0) {
        res->status = rv;
        ap_errmsg_set(res->message, "delta of site %s: %s", site, ap_store_errmsg(st));
        return;
    }
    res->value = json_pack("{s:s, s:I, s:I, s:I}", "site", site, "to", (json_int_t)to, "applied",
                           (json_int_t)applied, "skipped", (json_int_t)skipped);
}

/* Replace a tenant's limits (quota.set, ctrl.state). */
static int put_limits(struct ap_store *st, uint64_t index, uint64_t at_ms, const char *tenant,
                      const int64_t limit[QUOTA_RES_N], const bool present[QUOTA_RES_N])
{
    int rv;
    /* Replaces the tenant's limits. Lowering one revokes nothing already
     * granted; it only stops new grants (docs/catalog.md). */
    sqlite3_stmt *stmt;
    rv = ap_store_prepare(st, "DELETE FROM quotas WHERE tenant=?1", &stmt);
    if (rv == 0) {
        ap_store_bind_text(st, stmt, 1, tenant);
        rv = ap_store_step_done(st, stmt);
    }
    for (int i = 0; rv == 0 && i < QUOTA_RES_N; i++) {
        if (!present[i]) {
            continue;
        }
        rv = ap_store_prepare(st,
                              "INSERT INTO quotas(tenant, resource, quota_limit, changed_index)"
                              " VALUES(?1, ?2, ?3, ?4)",
                              &stmt);
        if (rv == 0) {
            ap_store_bind_text(st, stmt, 1, tenant);
            ap_store_bind_text(st, stmt, 2, quota__res_name((enum quota_res)i));
            ap_store_bind_int64(st, stmt, 3, limit[i]);
            ap_store_bind_int64(st, stmt, 4, (int64_t)index);
            rv = ap_store_step_done(st, stmt);
        }
    }
    if (rv == 0) {
        rv = top_up_reserves(st, index, tenant);
    }
    if (rv == 0) {
        rv = log_event(st, index, at_ms, "quota_set", tenant, "{}");
    }
    return rv;
}

static void apply_quota_set(struct ap_store *st, uint64_t index, const msgpack_object *cmd,
                            struct ap_rsm_result *res)
{
    char tenant[AP_INSTREC_NAME_SIZE];
    int64_t limit[QUOTA_RES_N];
    bool present[QUOTA_RES_N];
    uint64_t at_ms = 0;
    int rv;
    if ((rv = ap_mp_get_str(cmd, "tenant", tenant, sizeof tenant, true, res->message)) != 0 ||
        (rv = read_amounts(cmd, "limit", limit, present, res->message)) != 0 ||
        (rv = ap_mp_get_u64(cmd, "at_ms", &at_ms, INT64_MAX, true, res->message)) != 0) {
        res->status = rv;
        return;
    }
    if (!site__valid_name(tenant)) {
        res->status = AP_EINVAL;
        ap_errmsg_set(res->message, "invalid tenant name");
        return;
    }
    rv = put_limits(st, index, at_ms, tenant, limit, present);
    if (rv == 0) {
        rv = catalog__quota_view(st, tenant, &res->value);
    }
    if (rv != 0) {
        res->status = rv;
        ap_errmsg_set(res->message, "set quota of %s: %s", tenant, ap_store_errmsg(st));
    }
}

static void apply_reserve_set(struct ap_store *st, uint64_t index, const msgpack_object *cmd,
                              struct ap_rsm_result *res)
{
    char tenant[AP_INSTREC_NAME_SIZE], site[SITE_NAME_MAX + 1];
    int64_t reserve[QUOTA_RES_N];
    uint64_t at_ms = 0;
    int rv;
    if ((rv = ap_mp_get_str(cmd, "tenant", tenant, sizeof tenant, true, res->message)) != 0 ||
        (rv = ap_mp_get_str(cmd, "site", site, sizeof site, true, res->message)) != 0 ||
        (rv = read_amounts(cmd, "reserve", reserve, NULL, res->message)) != 0 ||
        (rv = ap_mp_get_u64(cmd, "at_ms", &at_ms, INT64_MAX, true, res->message)) != 0) {
        res->status = rv;
        return;
    }
    if (!site__valid_name(tenant)) {
        res->status = AP_EINVAL;
        ap_errmsg_set(res->message, "invalid tenant name");
        return;
    }
    if (!site_exists(st, site, &rv)) {
        res->status = rv != 0 ? rv : AP_ENOTFOUND;
        ap_errmsg_set(res->message, "site '%s' not found", site);
        return;
    }
    sqlite3_stmt *stmt;
    for (int i = 0; rv == 0 && i < QUOTA_RES_N; i++) {
        rv = ap_store_prepare(st,
                              "INSERT INTO site_rights(site, tenant, resource, reserve,"
                              " changed_index, changed_by) VALUES(?1, ?2, ?3, ?4, ?5, '')"
                              " ON CONFLICT(site, tenant, resource) DO UPDATE SET"
                              " reserve=?4, changed_index=?5, changed_by=''",
                              &stmt);
        if (rv == 0) {
            ap_store_bind_text(st, stmt, 1, site);
            ap_store_bind_text(st, stmt, 2, tenant);
            ap_store_bind_text(st, stmt, 3, quota__res_name((enum quota_res)i));
            ap_store_bind_int64(st, stmt, 4, reserve[i]);
            ap_store_bind_int64(st, stmt, 5, (int64_t)index);
            rv = ap_store_step_done(st, stmt);
        }
    }
    if (rv == 0) {
        rv = top_up_reserves(st, index, tenant);
    }
    if (rv == 0) {
        rv = log_event(st, index, at_ms, "reserve_set", tenant, "{}");
    }
    if (rv == 0) {
        rv = catalog__quota_view(st, tenant, &res->value);
    }
    if (rv != 0) {
        res->status = rv;
        ap_errmsg_set(res->message, "set reserve of %s at %s: %s", tenant, site,
                      ap_store_errmsg(st));
    }
}

static void apply_rights_grant(struct ap_store *st, uint64_t index, const msgpack_object *cmd,
                               struct ap_rsm_result *res)
{
    char tenant[AP_INSTREC_NAME_SIZE], site[SITE_NAME_MAX + 1];
    int64_t want[QUOTA_RES_N];
    uint64_t at_ms = 0;
    int rv;
    if ((rv = ap_mp_get_str(cmd, "site", site, sizeof site, true, res->message)) != 0 ||
        (rv = ap_mp_get_str(cmd, "tenant", tenant, sizeof tenant, true, res->message)) != 0 ||
        (rv = read_amounts(cmd, "want", want, NULL, res->message)) != 0 ||
        (rv = ap_mp_get_u64(cmd, "at_ms", &at_ms, INT64_MAX, true, res->message)) != 0) {
        res->status = rv;
        return;
    }
    if (!site__valid_name(tenant)) {
        res->status = AP_EINVAL;
        ap_errmsg_set(res->message, "invalid tenant name");
        return;
    }
    if (!site_exists(st, site, &rv)) {
        res->status = rv != 0 ? rv : AP_ENOTFOUND;
        ap_errmsg_set(res->message, "site '%s' not found", site);
        return;
    }
    /* All or nothing: the site asks for what one create lacks (docs/catalog.md). */
    struct quota_tenant q;
    enum quota_res short_res;
    rv = catalog__quota_tenant(st, tenant, &q);
    if (rv == 0 && !quota__covers(&q, want, &short_res)) {
        res->status = AP_EQUOTA;
        quota_message(res->message, tenant, &q, short_res, want);
        return;
    }
    if (rv == 0) {
        rv = grant_rights(st, index, site, tenant, want);
    }
    if (rv != 0) {
        res->status = rv;
        ap_errmsg_set(res->message, "grant rights of %s to %s: %s", tenant, site,
                      ap_store_errmsg(st));
        return;
    }
    json_t *g = json_object();
    for (int i = 0; i < QUOTA_RES_N; i++) {
        json_object_set_new(g, quota__res_name((enum quota_res)i), json_integer(want[i]));
    }
    res->value = json_pack("{s:s, s:s, s:o}", "site", site, "tenant", tenant, "granted", g);
}

/* ctrl.state: the controller's STATE (docs/controller.md), kept only when newer. */
static void apply_ctrl_state(struct ap_store *st, uint64_t index, const msgpack_object *cmd,
                             struct ap_rsm_result *res)
{
    uint64_t version = 0, at_ms = 0;
    const uint8_t *pk = NULL;
    size_t pk_len = 0;
    const msgpack_object *users = NULL, *tenants = NULL;
    int rv;
    if ((rv = ap_mp_get_u64(cmd, "version", &version, INT64_MAX, true, res->message)) != 0 ||
        (rv = ap_mp_get_u64(cmd, "at_ms", &at_ms, INT64_MAX, true, res->message)) != 0 ||
        (rv = ap_mp_get_bin(cmd, "pk", &pk, &pk_len, 32, false, res->message)) != 0 ||
        (rv = ap_mp_get_array(cmd, "users", &users, 1u << 20, true, res->message)) != 0 ||
        (rv = ap_mp_get_array(cmd, "tenants", &tenants, 1u << 20, true, res->message)) != 0) {
        res->status = rv;
        return;
    }
    if (version <= catalog__ctrl_version(st)) {
        return; /* A replay or an older controller replica's view: nothing to do. */
    }
    sqlite3_stmt *stmt;
    rv = ap_store_exec(st, "DELETE FROM auth_users");
    if (rv == 0 && pk != NULL && pk_len == 32) {
        rv = ap_store_prepare(st, "INSERT OR REPLACE INTO auth_key(id, pk) VALUES(1, ?1)", &stmt);
        if (rv == 0) {
            ap_store_bind_blob(st, stmt, 1, pk, 32);
            rv = ap_store_step_done(st, stmt);
        }
    }
    for (uint32_t i = 0; rv == 0 && i < users->via.array.size; i++) {
        const msgpack_object *u = &users->via.array.ptr[i];
        char name[64];
        uint64_t gen = 0;
        bool deleted = false;
        if (u->type != MSGPACK_OBJECT_ARRAY || u->via.array.size != 3 ||
            ap_mp_as_str(&u->via.array.ptr[0], "user", name, sizeof name, res->message) != 0 ||
            ap_mp_as_u64(&u->via.array.ptr[1], "gen", &gen, INT64_MAX, res->message) != 0 ||
            ap_mp_as_bool(&u->via.array.ptr[2], "deleted", &deleted, res->message) != 0) {
            res->status = AP_EPROTO;
            return;
        }
        rv = ap_store_prepare(st, "INSERT OR REPLACE INTO auth_users(name, gen, deleted)"
                                  " VALUES(?1, ?2, ?3)",
                              &stmt);
        if (rv == 0) {
            ap_store_bind_text(st, stmt, 1, name);
            ap_store_bind_int64(st, stmt, 2, (int64_t)gen);
            ap_store_bind_int64(st, stmt, 3, deleted ? 1 : 0);
            rv = ap_store_step_done(st, stmt);
        }
    }
    /* Tenants: [name, instances, cpu_millis, memory_mb], -1 meaning no limit. */
    for (uint32_t i = 0; rv == 0 && i < tenants->via.array.size; i++) {
        const msgpack_object *t = &tenants->via.array.ptr[i];
        char name[64];
        int64_t limit[QUOTA_RES_N];
        bool present[QUOTA_RES_N];
        if (t->type != MSGPACK_OBJECT_ARRAY || t->via.array.size != 1 + QUOTA_RES_N ||
            ap_mp_as_str(&t->via.array.ptr[0], "tenant", name, sizeof name, res->message) != 0 ||
            !site__valid_name(name)) {
            res->status = AP_EPROTO;
            return;
        }
        for (int k = 0; k < QUOTA_RES_N; k++) {
            /* The controller's order: instances, cpu_millis, memory_mb. */
            static const enum quota_res order[3] = {QUOTA_INSTANCES, QUOTA_CPU, QUOTA_MEMORY};
            int64_t v = -1;
            if (ap_mp_as_i64(&t->via.array.ptr[1 + k], "amount", &v, -1, QUOTA_MAX_AMOUNT,
                             res->message) != 0) {
                res->status = AP_EPROTO;
                return;
            }
            present[order[k]] = v >= 0;
            limit[order[k]] = v >= 0 ? v : 0;
        }
        rv = put_limits(st, index, at_ms, name, limit, present);
    }
    if (rv == 0) {
        rv = ap_store_prepare(st, "INSERT OR REPLACE INTO ctrl_state(id, version, changed_index)"
                                  " VALUES(1, ?1, ?2)",
                              &stmt);
        if (rv == 0) {
            ap_store_bind_int64(st, stmt, 1, (int64_t)version);
            ap_store_bind_int64(st, stmt, 2, (int64_t)index);
            rv = ap_store_step_done(st, stmt);
        }
    }
    if (rv != 0) {
        res->status = rv;
        ap_errmsg_set(res->message, "controller state: %s", ap_store_errmsg(st));
    }
}

static void apply_site_cordon(struct ap_store *st, uint64_t index, const msgpack_object *cmd,
                              struct ap_rsm_result *res)
{
    char name[SITE_NAME_MAX + 1];
    bool cordoned = false;
    uint64_t at_ms = 0;
    int rv;
    if ((rv = ap_mp_get_str(cmd, "name", name, sizeof name, true, res->message)) != 0 ||
        (rv = ap_mp_get_bool(cmd, "cordoned", &cordoned, true, res->message)) != 0 ||
        (rv = ap_mp_get_u64(cmd, "at_ms", &at_ms, INT64_MAX, true, res->message)) != 0) {
        res->status = rv;
        return;
    }
    sqlite3_stmt *stmt;
    rv = ap_store_prepare(st, "UPDATE sites SET cordoned=?2, updated_at_ms=?3 WHERE name=?1",
                          &stmt);
    if (rv == 0) {
        ap_store_bind_text(st, stmt, 1, name);
        ap_store_bind_int64(st, stmt, 2, cordoned ? 1 : 0);
        ap_store_bind_int64(st, stmt, 3, (int64_t)at_ms);
        rv = ap_store_step_done(st, stmt);
    }
    if (rv == 0 && sqlite3_changes(ap_store_db(st)) == 0) {
        res->status = AP_ENOTFOUND;
        ap_errmsg_set(res->message, "site '%s' not found", name);
        return;
    }
    if (rv == 0) {
        rv = log_event(st, index, at_ms, cordoned ? "site_cordoned" : "site_uncordoned", name,
                       "{}");
    }
    if (rv == 0 && res->want_value) {
        rv = catalog__site_get(st, name, &res->value);
    }
    if (rv != 0) {
        res->status = rv;
        ap_errmsg_set(res->message, "cordon: %s", ap_store_errmsg(st));
    }
}

/* ---- controller state reads ---- */

uint64_t catalog__ctrl_version(struct ap_store *st)
{
    sqlite3_stmt *stmt;
    uint64_t v = 0;
    if (ap_store_prepare(st, "SELECT version FROM ctrl_state WHERE id=1", &stmt) == 0) {
        if (ap_store_step(st, stmt) == AP_STORE_ROW) {
            v = (uint64_t)sqlite3_column_int64(stmt, 0);
        }
        ap_store_reset(stmt);
    }
    return v;
}

int catalog__auth_key(struct ap_store *st, uint8_t pk[32])
{
    sqlite3_stmt *stmt;
    int rv = ap_store_prepare(st, "SELECT pk FROM auth_key WHERE id=1", &stmt);
    if (rv != 0) {
        return rv;
    }
    rv = ap_store_step(st, stmt) == AP_STORE_ROW && sqlite3_column_bytes(stmt, 0) == 32
             ? 0
             : AP_ENOTFOUND;
    if (rv == 0) {
        memcpy(pk, sqlite3_column_blob(stmt, 0), 32);
    }
    ap_store_reset(stmt);
    return rv;
}

int catalog__auth_user(struct ap_store *st, const char *user, uint64_t *gen, bool *deleted)
{
    sqlite3_stmt *stmt;
    int rv = ap_store_prepare(st, "SELECT gen, deleted FROM auth_users WHERE name=?1", &stmt);
    if (rv != 0) {
        return rv;
    }
    ap_store_bind_text(st, stmt, 1, user);
    rv = AP_ENOTFOUND;
    if (ap_store_step(st, stmt) == AP_STORE_ROW) {
        *gen = (uint64_t)sqlite3_column_int64(stmt, 0);
        *deleted = sqlite3_column_int(stmt, 1) != 0;
        rv = 0;
    }
    ap_store_reset(stmt);
    return rv;
}

int catalog__auth_state(struct ap_store *st, uint8_t **out, size_t *len)
{
    uint8_t pk[32];
    bool have_key = catalog__auth_key(st, pk) == 0;
    struct ap_mp_writer w;
    sqlite3_stmt *stmt;
    int64_t count = 0;
    int rv = ap_store_prepare(st, "SELECT COUNT(*) FROM auth_users", &stmt);
    if (rv != 0) {
        return rv;
    }
    if (ap_store_step(st, stmt) == AP_STORE_ROW) {
        count = sqlite3_column_int64(stmt, 0);
    }
    ap_store_reset(stmt);
    rv = ap_store_prepare(st, "SELECT name, gen, deleted FROM auth_users ORDER BY name", &stmt);
    if (rv != 0) {
        return rv;
    }
    ap_mp_writer_init(&w);
    ap_mp_write_map(&w, have_key ? 3 : 2);
    ap_mp_write_str(&w, "version");
    ap_mp_write_uint(&w, catalog__ctrl_version(st));
    if (have_key) {
        ap_mp_write_str(&w, "pk");
        ap_mp_write_bin(&w, pk, 32);
    }
    ap_mp_write_str(&w, "users");
    ap_mp_write_array(&w, (uint32_t)count);
    int64_t written = 0;
    while (written < count && ap_store_step(st, stmt) == AP_STORE_ROW) {
        ap_mp_write_array(&w, 3);
        ap_mp_write_str(&w, (const char *)sqlite3_column_text(stmt, 0));
        ap_mp_write_uint(&w, (uint64_t)sqlite3_column_int64(stmt, 1));
        ap_mp_write_bool(&w, sqlite3_column_int(stmt, 2) != 0);
        written++;
    }
    ap_store_reset(stmt);
    if (written != count) {
        ap_mp_writer_destroy(&w);
        return AP_EIO;
    }
    return ap_mp_writer_finish(&w, out, len);
}

int catalog__encode_site_cordon(const char *name, bool cordoned, uint64_t at_ms, uint8_t **out,
                                size_t *len)
{
    struct ap_mp_writer w;
    ap_mp_writer_init(&w);
    ap_mp_write_map(&w, 4);
    ap_mp_write_str(&w, "op");
    ap_mp_write_str(&w, CATALOG_OP_SITE_CORDON);
    ap_mp_write_str(&w, "name");
    ap_mp_write_str(&w, name);
    ap_mp_write_str(&w, "cordoned");
    ap_mp_write_bool(&w, cordoned);
    ap_mp_write_str(&w, "at_ms");
    ap_mp_write_uint(&w, at_ms);
    return ap_mp_writer_finish(&w, out, len);
}

void catalog__apply(void *data, struct ap_store *st, uint64_t index, const uint8_t *cmd, size_t len,
                    struct ap_rsm_result *res)
{
    msgpack_unpacked up;
    char op[32];
    AP_UNUSED(data);
    int rv = ap_mp_unpack(cmd, len, CATALOG_MAX_COMMAND, &up, res->message);
    if (rv != 0) {
        res->status = rv;
        return;
    }
    rv = ap_mp_get_str(&up.data, "op", op, sizeof op, true, res->message);
    if (rv != 0) {
        res->status = rv;
    } else if (strcmp(op, CATALOG_OP_SITE_CREATE) == 0) {
        apply_site_create(st, index, &up.data, res);
    } else if (strcmp(op, CATALOG_OP_SITE_DELETE) == 0) {
        apply_site_delete(st, index, &up.data, res);
    } else if (strcmp(op, CATALOG_OP_SITE_STATE) == 0) {
        apply_site_state(st, index, &up.data, res);
    } else if (strcmp(op, CATALOG_OP_SITE_DELTA) == 0) {
        apply_site_delta(st, index, &up.data, res);
    } else if (strcmp(op, CATALOG_OP_INST_CREATE) == 0) {
        apply_inst_create(st, index, &up.data, res);
    } else if (strcmp(op, CATALOG_OP_INST_DESIRE) == 0) {
        apply_inst_desire(st, index, &up.data, res);
    } else if (strcmp(op, CATALOG_OP_QUOTA_SET) == 0) {
        apply_quota_set(st, index, &up.data, res);
    } else if (strcmp(op, CATALOG_OP_RESERVE_SET) == 0) {
        apply_reserve_set(st, index, &up.data, res);
    } else if (strcmp(op, CATALOG_OP_RIGHTS) == 0) {
        apply_rights_grant(st, index, &up.data, res);
    } else if (strcmp(op, CATALOG_OP_CTRL_STATE) == 0) {
        apply_ctrl_state(st, index, &up.data, res);
    } else if (strcmp(op, CATALOG_OP_SITE_CORDON) == 0) {
        apply_site_cordon(st, index, &up.data, res);
    } else {
        /* A newer leader's command: every replica rejects it the same way. */
        res->status = AP_EPROTO;
        ap_errmsg_set(res->message, "unknown catalog command '%s'", op);
    }
    msgpack_unpacked_destroy(&up);
}
