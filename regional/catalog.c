/* catalog: the region's replicated catalog: schema, typed commands, their deterministic apply,
 * reads. */
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
};
const size_t catalog__n_migrations = AP_ARRAY_LEN(catalog__migrations);

const char *const catalog__tables[] = {"sites",      "quotas", "site_rights", "instances",
                                       "placements", "events", NULL};

/* Largest catalog command; sites are small. */
#define MAX_COMMAND (64u * 1024u)

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

int catalog__sites_in_state(struct ap_store *st, const char *state, char ***names, size_t *n)
{
    sqlite3_stmt *stmt;
    *names = NULL;
    *n = 0;
    int rv = ap_store_prepare(st, "SELECT name FROM sites WHERE state=?1 ORDER BY name", &stmt);
    if (rv != 0) {
        return rv;
    }
    ap_store_bind_text(st, stmt, 1, state);
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
    " last_heartbeat_ms, created_at_ms, updated_at_ms FROM sites";

static json_t *site_row_json(sqlite3_stmt *stmt)
{
    char created[40], updated[40], hb[40];
    json_t *labels = json_loads((const char *)sqlite3_column_text(stmt, 1), 0, NULL);
    json_t *caps = json_loads((const char *)sqlite3_column_text(stmt, 5), 0, NULL);
    int64_t hb_ms = sqlite3_column_int64(stmt, 7);
    format_time(sqlite3_column_int64(stmt, 8), created, sizeof created);
    format_time(sqlite3_column_int64(stmt, 9), updated, sizeof updated);
    format_time(hb_ms, hb, sizeof hb);
    return json_pack("{s:s, s:o, s:{s:I, s:I, s:I}, s:o, s:s, s:o, s:s, s:s}", "name",
                     (const char *)sqlite3_column_text(stmt, 0), "labels",
                     labels != NULL ? labels : json_object(), "capacity", "cpu_millis",
                     (json_int_t)sqlite3_column_int64(stmt, 2), "memory_mb",
                     (json_int_t)sqlite3_column_int64(stmt, 3), "instances",
                     (json_int_t)sqlite3_column_int64(stmt, 4), "capabilities",
                     caps != NULL ? caps : json_array(), "state",
                     (const char *)sqlite3_column_text(stmt, 6), "last_heartbeat",
                     hb_ms > 0 ? json_string(hb) : json_null(), "created_at", created, "updated_at",
                     updated);
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
    json_decref(lj);
    if (labels_text == NULL) {
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
        res->status = AP_EEXIST;
        ap_errmsg_set(res->message, "site '%s' already exists", spec.name);
        return;
    }
    if (rv == 0) {
        rv = log_event(st, index, at_ms, "site_created", spec.name, "{}");
    }
    if (rv == 0) {
        rv = catalog__site_get(st, spec.name, &res->value);
    }
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
        " max_instances=CASE WHEN ?7>=0 THEN ?7 ELSE max_instances END"
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

void catalog__apply(void *data, struct ap_store *st, uint64_t index, const uint8_t *cmd, size_t len,
                    struct ap_rsm_result *res)
{
    msgpack_unpacked up;
    char op[32];
    AP_UNUSED(data);
    int rv = ap_mp_unpack(cmd, len, MAX_COMMAND, &up, res->message);
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
    } else {
        /* A newer leader's command: every replica rejects it the same way. */
        res->status = AP_EPROTO;
        ap_errmsg_set(res->message, "unknown catalog command '%s'", op);
    }
    msgpack_unpacked_destroy(&up);
}
