/* shard: a site's local SQLite shard: its instances, quota rights and link bookkeeping; always
 * writable. */
#include "shard.h"

#include "ap/base.h"
#include "ap/err.h"
#include "ap/instrec.h"
#include "ap/log.h"
#include "ap/mp.h"
#include "ap/store.h"

#include <errno.h>
#include <sqlite3.h>
#include <string.h>

struct shard {
    struct ap_store *st;
    uint64_t seq;
    bool full;            /* The last write failed for lack of space (docs/edge.md). */
    uint64_t full_errors; /* Writes that failed for lack of space since open. */
    uint64_t probes;      /* shard__probe calls, the value it writes. */
    char errmsg[AP_ERRMSG_SIZE];
};

/* `echo` is 1 when the row is exactly what the region sent last: it is not
 * sent back (docs/edge.md). `seq` orders every change made here. */
static const struct ap_store_migration migrations[] = {
    {1, "CREATE TABLE meta(k TEXT PRIMARY KEY, v INTEGER NOT NULL);"
        "CREATE TABLE instances("
        " id TEXT PRIMARY KEY, tenant TEXT NOT NULL, name TEXT NOT NULL, site TEXT NOT NULL,"
        " spec TEXT NOT NULL, cpu_millis INTEGER NOT NULL, memory_mb INTEGER NOT NULL,"
        " created_ts INTEGER NOT NULL, created_node INTEGER NOT NULL,"
        " desired TEXT NOT NULL, desired_ts INTEGER NOT NULL, desired_node INTEGER NOT NULL,"
        " actual TEXT NOT NULL, actual_ts INTEGER NOT NULL, actual_node INTEGER NOT NULL,"
        " pid INTEGER NOT NULL, exit_code INTEGER NOT NULL, restarts INTEGER NOT NULL,"
        " seq INTEGER NOT NULL, echo INTEGER NOT NULL DEFAULT 0);"
        "CREATE INDEX instances_by_seq ON instances(seq);"
        "CREATE TABLE rights("
        " tenant TEXT NOT NULL, resource TEXT NOT NULL,"
        " granted INTEGER NOT NULL DEFAULT 0, returned INTEGER NOT NULL DEFAULT 0,"
        " reserve INTEGER NOT NULL DEFAULT 0, seq INTEGER NOT NULL DEFAULT 0,"
        " echo INTEGER NOT NULL DEFAULT 1,"
        " PRIMARY KEY(tenant, resource));"},
    /* 2: what the region passes down from the controller, to authenticate while cut off
     * (docs/security.md): the signing public key and users' grant generations. */
    {2, "CREATE TABLE auth_key(id INTEGER PRIMARY KEY CHECK (id = 1), pk BLOB NOT NULL,"
        " version INTEGER NOT NULL);"
        "CREATE TABLE auth_users("
        " name TEXT PRIMARY KEY, gen INTEGER NOT NULL, deleted INTEGER NOT NULL DEFAULT 0);"},
};

static const char *res_names[SHARD_RES_N] = {"instances", "cpu_millis", "memory_mb"};

const char *shard__res_name(enum shard_res r)
{
    return (unsigned)r < SHARD_RES_N ? res_names[r] : "unknown";
}

/*
 * A write failed for lack of space: SQLite says SQLITE_FULL (AP_ENOSPACE), or
 * an I/O error whose system errno is ENOSPC (growing the WAL index). The first
 * such failure after a successful write is logged; the shard stays "full"
 * until a write succeeds again (docs/edge.md "Full disk").
 */
static int note_error(struct shard *s, int rv)
{
    if (rv == AP_EIO && sqlite3_system_errno(ap_store_db(s->st)) == ENOSPC) {
        rv = AP_ENOSPACE;
    }
    if (rv != AP_ENOSPACE) {
        return rv;
    }
    s->full_errors++;
    if (!s->full) {
        s->full = true;
        AP_LOG(AP_LOG_WARN, "disk_full path=%s err=\"%s\"", ap_store_path(s->st), s->errmsg);
    }
    return rv;
}

/* A write reached the disk: the space problem, if any, is over. */
static void note_written(struct shard *s)
{
    if (s->full) {
        s->full = false;
        AP_LOG(AP_LOG_INFO, "disk_space_recovered path=%s refused_writes=%llu",
               ap_store_path(s->st), (unsigned long long)s->full_errors);
    }
}

static int fail(struct shard *s, int rv, const char *what)
{
    ap_errmsg_set(s->errmsg, "%s: %s", what, ap_store_errmsg(s->st));
    return note_error(s, rv);
}

static int load_seq(struct shard *s)
{
    sqlite3_stmt *stmt;
    int rv = ap_store_prepare(s->st,
                              "SELECT max(COALESCE((SELECT max(seq) FROM instances), 0),"
                              " COALESCE((SELECT max(seq) FROM rights), 0))",
                              &stmt);
    if (rv != 0) {
        return rv;
    }
    rv = ap_store_step(s->st, stmt);
    if (rv == AP_STORE_ROW) {
        s->seq = (uint64_t)sqlite3_column_int64(stmt, 0);
        ap_store_reset(stmt);
        return 0;
    }
    return rv;
}

int shard__open(struct shard **out, const char *path, char *errmsg)
{
    struct shard *s = ap_calloc(1, sizeof *s);
    if (s == NULL) {
        ap_errmsg_set(errmsg, "shard: out of memory");
        return AP_ENOMEM;
    }
    int rv = ap_store_open(path, AP_STORE_SYNC_FULL, &s->st, errmsg);
    if (rv != 0) {
        ap_free(s);
        return rv;
    }
    /* docs/edge.md "Full disk": keep shard.db-wal and -shm when the daemon stops. SQLite
     * deletes them at the last close otherwise, and a daemon restarted on a full disk could
     * not create them again: it could not even read its shard. */
    int persist = 1;
    sqlite3_file_control(ap_store_db(s->st), "main", SQLITE_FCNTL_PERSIST_WAL, &persist);
    rv = ap_store_migrate(s->st, migrations, AP_ARRAY_LEN(migrations));
    if (rv == 0) {
        rv = load_seq(s);
    }
    if (rv != 0) {
        ap_errmsg_set(errmsg, "shard %s: %s", path, ap_store_errmsg(s->st));
        ap_store_close(s->st);
        ap_free(s);
        return rv;
    }
    *out = s;
    return 0;
}

void shard__close(struct shard *s)
{
    if (s != NULL) {
        ap_store_close(s->st);
        ap_free(s);
    }
}

const char *shard__errmsg(const struct shard *s)
{
    return s->errmsg;
}

int shard__begin(struct shard *s)
{
    int rv = ap_store_begin(s->st);
    return rv != 0 ? fail(s, rv, "begin") : 0;
}

int shard__commit(struct shard *s)
{
    int rv = ap_store_commit(s->st);
    if (rv != 0) {
        /* The store's message already says "commit: ...". */
        ap_errmsg_set(s->errmsg, "%s", ap_store_errmsg(s->st));
        rv = note_error(s, rv);
        ap_store_rollback(s->st);
        return rv;
    }
    note_written(s);
    return 0;
}

void shard__rollback(struct shard *s)
{
    ap_store_rollback(s->st);
}

static const char *select_cols =
    "SELECT id, tenant, name, site, spec, cpu_millis, memory_mb, created_ts, created_node,"
    " desired, desired_ts, desired_node, actual, actual_ts, actual_node, pid, exit_code, restarts"
    " FROM instances";

static struct ap_hlc_ts col_ts(sqlite3_stmt *stmt, int i)
{
    return ap_hlc_unpack((uint64_t)sqlite3_column_int64(stmt, i),
                         (uint32_t)sqlite3_column_int64(stmt, i + 1));
}

static int row_to_rec(sqlite3_stmt *stmt, struct ap_instrec *r)
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

int shard__get(struct shard *s, const char *id, struct ap_instrec *out)
{
    char sql[512];
    sqlite3_stmt *stmt;
    snprintf(sql, sizeof sql, "%s WHERE id=?1", select_cols);
    int rv = ap_store_prepare(s->st, sql, &stmt);
    if (rv != 0) {
        return fail(s, rv, "get instance");
    }
    ap_store_bind_text(s->st, stmt, 1, id);
    rv = ap_store_step(s->st, stmt);
    if (rv != AP_STORE_ROW) {
        return rv == AP_STORE_DONE ? AP_ENOTFOUND : fail(s, rv, "get instance");
    }
    rv = row_to_rec(stmt, out);
    ap_store_reset(stmt);
    return rv;
}

void shard__free_list(struct ap_instrec *list, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        ap_instrec_clear(&list[i]);
    }
    ap_free(list);
}

int shard__list(struct shard *s, const char *tenant, bool include_deleted, struct ap_instrec **out,
                size_t *n)
{
    char sql[640];
    sqlite3_stmt *stmt;
    snprintf(sql, sizeof sql,
             "%s WHERE (?1 IS NULL OR tenant=?1) AND (?2 OR desired != 'deleted')"
             " ORDER BY created_ts, id",
             select_cols);
    *out = NULL;
    *n = 0;
    int rv = ap_store_prepare(s->st, sql, &stmt);
    if (rv != 0) {
        return fail(s, rv, "list instances");
    }
    ap_store_bind_text(s->st, stmt, 1, tenant);
    ap_store_bind_int64(s->st, stmt, 2, include_deleted ? 1 : 0);
    size_t cap = 0;
    while ((rv = ap_store_step(s->st, stmt)) == AP_STORE_ROW) {
        if (*n == cap) {
            cap = cap == 0 ? 16 : cap * 2;
            struct ap_instrec *grown = ap_realloc(*out, cap * sizeof *grown);
            if (grown == NULL) {
                ap_store_reset(stmt);
                rv = AP_ENOMEM;
                break;
            }
            *out = grown;
        }
        if (row_to_rec(stmt, &(*out)[*n]) != 0) {
            ap_store_reset(stmt);
            rv = AP_ENOMEM;
            break;
        }
        (*n)++;
    }
    if (rv != AP_STORE_DONE) {
        shard__free_list(*out, *n);
        *out = NULL;
        *n = 0;
        return rv == AP_ENOMEM ? rv : fail(s, rv, "list instances");
    }
    return 0;
}

int shard__name_taken(struct shard *s, const char *tenant, const char *name, bool *taken)
{
    sqlite3_stmt *stmt;
    int rv = ap_store_prepare(s->st,
                              "SELECT 1 FROM instances WHERE tenant=?1 AND name=?2"
                              " AND desired != 'deleted' LIMIT 1",
                              &stmt);
    if (rv != 0) {
        return fail(s, rv, "check name");
    }
    ap_store_bind_text(s->st, stmt, 1, tenant);
    ap_store_bind_text(s->st, stmt, 2, name);
    rv = ap_store_step(s->st, stmt);
    if (rv == AP_STORE_ROW) {
        ap_store_reset(stmt);
    }
    *taken = rv == AP_STORE_ROW;
    return rv < 0 ? fail(s, rv, "check name") : 0;
}

static int store_rec(struct shard *s, const struct ap_instrec *r, int echo)
{
    sqlite3_stmt *stmt;
    int rv = ap_store_prepare(
        s->st,
        "INSERT OR REPLACE INTO instances(id, tenant, name, site, spec, cpu_millis, memory_mb,"
        " created_ts, created_node, desired, desired_ts, desired_node, actual, actual_ts,"
        " actual_node, pid, exit_code, restarts, seq, echo)"
        " VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,?20)",
        &stmt);
    if (rv != 0) {
        return fail(s, rv, "store instance");
    }
    ap_store_bind_text(s->st, stmt, 1, r->id);
    ap_store_bind_text(s->st, stmt, 2, r->tenant);
    ap_store_bind_text(s->st, stmt, 3, r->name);
    ap_store_bind_text(s->st, stmt, 4, r->site);
    ap_store_bind_text(s->st, stmt, 5, r->spec != NULL ? r->spec : "{}");
    ap_store_bind_int64(s->st, stmt, 6, r->cpu_millis);
    ap_store_bind_int64(s->st, stmt, 7, r->memory_mb);
    ap_store_bind_int64(s->st, stmt, 8, (int64_t)ap_hlc_pack(r->created));
    ap_store_bind_int64(s->st, stmt, 9, r->created.node);
    ap_store_bind_text(s->st, stmt, 10, ap_desired_name(r->desired));
    ap_store_bind_int64(s->st, stmt, 11, (int64_t)ap_hlc_pack(r->desired_ts));
    ap_store_bind_int64(s->st, stmt, 12, r->desired_ts.node);
    ap_store_bind_text(s->st, stmt, 13, ap_actual_name(r->actual));
    ap_store_bind_int64(s->st, stmt, 14, (int64_t)ap_hlc_pack(r->actual_ts));
    ap_store_bind_int64(s->st, stmt, 15, r->actual_ts.node);
    ap_store_bind_int64(s->st, stmt, 16, r->pid);
    ap_store_bind_int64(s->st, stmt, 17, r->exit_code);
    ap_store_bind_int64(s->st, stmt, 18, r->restarts);
    ap_store_bind_int64(s->st, stmt, 19, (int64_t)++s->seq);
    ap_store_bind_int64(s->st, stmt, 20, echo);
    rv = ap_store_step_done(s->st, stmt);
    return rv != 0 ? fail(s, rv, "store instance") : 0;
}

int shard__put_local(struct shard *s, const struct ap_instrec *r)
{
    return store_rec(s, r, 0);
}

int shard__merge_remote(struct shard *s, const struct ap_instrec *r, bool *changed)
{
    struct ap_instrec cur;
    int rv = shard__get(s, r->id, &cur);
    *changed = false;
    if (rv == AP_ENOTFOUND) {
        *changed = true;
        return store_rec(s, r, 1);
    }
    if (rv != 0) {
        return rv;
    }
    if (ap_instrec_merge(&cur, r)) {
        *changed = true;
        /* docs/edge.md: echo only what the region does not have yet. */
        rv = store_rec(s, &cur, ap_instrec_equal(&cur, r) ? 1 : 0);
    } else if (!ap_instrec_equal(&cur, r)) {
        /* The region is behind on this record: make sure it goes back. */
        rv = store_rec(s, &cur, 0);
    }
    ap_instrec_clear(&cur);
    return rv;
}

int shard__rights(struct shard *s, const char *tenant, struct shard_rights *out)
{
    sqlite3_stmt *stmt;
    memset(out, 0, sizeof *out);
    int rv = ap_store_prepare(
        s->st, "SELECT resource, granted, returned, reserve FROM rights WHERE tenant=?1", &stmt);
    if (rv != 0) {
        return fail(s, rv, "read rights");
    }
    ap_store_bind_text(s->st, stmt, 1, tenant);
    while ((rv = ap_store_step(s->st, stmt)) == AP_STORE_ROW) {
        const char *res = (const char *)sqlite3_column_text(stmt, 0);
        for (int i = 0; i < SHARD_RES_N; i++) {
            if (strcmp(res, res_names[i]) == 0) {
                out->granted[i] = sqlite3_column_int64(stmt, 1);
                out->returned[i] = sqlite3_column_int64(stmt, 2);
                out->reserve[i] = sqlite3_column_int64(stmt, 3);
            }
        }
    }
    if (rv != AP_STORE_DONE) {
        return fail(s, rv, "read rights");
    }
    rv = ap_store_prepare(
        s->st,
        "SELECT count(*), COALESCE(sum(cpu_millis), 0), COALESCE(sum(memory_mb), 0)"
        " FROM instances WHERE tenant=?1 AND desired != 'deleted'",
        &stmt);
    if (rv != 0) {
        return fail(s, rv, "read usage");
    }
    ap_store_bind_text(s->st, stmt, 1, tenant);
    rv = ap_store_step(s->st, stmt);
    if (rv != AP_STORE_ROW) {
        return fail(s, rv, "read usage");
    }
    for (int i = 0; i < SHARD_RES_N; i++) {
        out->usage[i] = sqlite3_column_int64(stmt, i);
    }
    ap_store_reset(stmt);
    return 0;
}

int shard__rights_merge_remote(struct shard *s, const char *tenant, enum shard_res res,
                               int64_t granted, int64_t reserve)
{
    sqlite3_stmt *stmt;
    int rv = ap_store_prepare(s->st,
                              "INSERT INTO rights(tenant, resource, granted, reserve, seq, echo)"
                              " VALUES(?1, ?2, ?3, ?4, 0, 1)"
                              " ON CONFLICT(tenant, resource) DO UPDATE SET"
                              " granted=max(granted, ?3), reserve=?4",
                              &stmt);
    if (rv != 0) {
        return fail(s, rv, "merge rights");
    }
    ap_store_bind_text(s->st, stmt, 1, tenant);
    ap_store_bind_text(s->st, stmt, 2, shard__res_name(res));
    ap_store_bind_int64(s->st, stmt, 3, granted);
    ap_store_bind_int64(s->st, stmt, 4, reserve);
    rv = ap_store_step_done(s->st, stmt);
    return rv != 0 ? fail(s, rv, "merge rights") : 0;
}

int shard__rights_return(struct shard *s, const char *tenant, enum shard_res res, int64_t amount)
{
    sqlite3_stmt *stmt;
    int rv = ap_store_prepare(s->st,
                              "INSERT INTO rights(tenant, resource, returned, seq, echo)"
                              " VALUES(?1, ?2, ?3, ?4, 0)"
                              " ON CONFLICT(tenant, resource) DO UPDATE SET"
                              " returned=returned+?3, seq=?4, echo=0",
                              &stmt);
    if (rv != 0) {
        return fail(s, rv, "return rights");
    }
    ap_store_bind_text(s->st, stmt, 1, tenant);
    ap_store_bind_text(s->st, stmt, 2, shard__res_name(res));
    ap_store_bind_int64(s->st, stmt, 3, amount);
    ap_store_bind_int64(s->st, stmt, 4, (int64_t)++s->seq);
    rv = ap_store_step_done(s->st, stmt);
    return rv != 0 ? fail(s, rv, "return rights") : 0;
}

int shard__rights_tenants(struct shard *s, char ***out, size_t *n)
{
    sqlite3_stmt *stmt;
    *out = NULL;
    *n = 0;
    int rv = ap_store_prepare(s->st, "SELECT DISTINCT tenant FROM rights ORDER BY tenant", &stmt);
    if (rv != 0) {
        return fail(s, rv, "list tenants");
    }
    size_t cap = 0;
    while ((rv = ap_store_step(s->st, stmt)) == AP_STORE_ROW) {
        if (*n == cap) {
            cap = cap == 0 ? 8 : cap * 2;
            char **grown = ap_realloc(*out, cap * sizeof *grown);
            if (grown == NULL) {
                ap_store_reset(stmt);
                rv = AP_ENOMEM;
                break;
            }
            *out = grown;
        }
        (*out)[(*n)++] = ap_strdup((const char *)sqlite3_column_text(stmt, 0));
    }
    if (rv != AP_STORE_DONE) {
        for (size_t i = 0; i < *n; i++) {
            ap_free((*out)[i]);
        }
        ap_free(*out);
        *out = NULL;
        *n = 0;
        return rv;
    }
    return 0;
}

int shard__delta_after(struct shard *s, uint64_t after, size_t max, uint8_t **body, size_t *len,
                       uint64_t *to, size_t *count)
{
    char sql[640];
    sqlite3_stmt *stmt;
    struct ap_instrec *recs = NULL;
    uint64_t *seqs = NULL;
    size_t n = 0;
    int rv;
    *to = after;
    *count = 0;
    snprintf(sql, sizeof sql, "%s WHERE seq > ?1 AND echo = 0 ORDER BY seq LIMIT ?2", select_cols);
    /* select_cols has no seq column: read it with a second statement below. */
    rv = ap_store_prepare(s->st, sql, &stmt);
    if (rv != 0) {
        return fail(s, rv, "read changes");
    }
    recs = ap_calloc(max, sizeof *recs);
    seqs = ap_calloc(max, sizeof *seqs);
    if (recs == NULL || seqs == NULL) {
        ap_free(recs);
        ap_free(seqs);
        return AP_ENOMEM;
    }
    ap_store_bind_int64(s->st, stmt, 1, (int64_t)after);
    ap_store_bind_int64(s->st, stmt, 2, (int64_t)max);
    while (n < max && (rv = ap_store_step(s->st, stmt)) == AP_STORE_ROW) {
        if (row_to_rec(stmt, &recs[n]) != 0) {
            ap_store_reset(stmt);
            rv = AP_ENOMEM;
            break;
        }
        n++;
    }
    if (n == max) {
        ap_store_reset(stmt);
        rv = AP_STORE_DONE;
    }
    if (rv != AP_STORE_DONE) {
        shard__free_list(recs, n);
        ap_free(seqs);
        return rv == AP_ENOMEM ? rv : fail(s, rv, "read changes");
    }
    /* The seq of each record, to know how far this delta reaches. */
    sqlite3_stmt *q;
    rv = ap_store_prepare(s->st, "SELECT seq FROM instances WHERE id=?1", &q);
    for (size_t i = 0; rv == 0 && i < n; i++) {
        ap_store_bind_text(s->st, q, 1, recs[i].id);
        if (ap_store_step(s->st, q) == AP_STORE_ROW) {
            seqs[i] = (uint64_t)sqlite3_column_int64(q, 0);
            ap_store_reset(q);
        }
        if (seqs[i] > *to) {
            *to = seqs[i];
        }
    }
    /* When the instance page is full, rights past its end wait for the next delta. */
    uint64_t rights_limit = n == max ? *to : UINT64_MAX;

    struct ap_mp_writer w;
    ap_mp_writer_init(&w);
    ap_mp_write_map(&w, 4);
    ap_mp_write_str(&w, "from");
    ap_mp_write_uint(&w, after);
    ap_mp_write_str(&w, "inst");
    ap_mp_write_array(&w, (uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        ap_instrec_write(&w, &recs[i]);
    }
    shard__free_list(recs, n);
    ap_free(seqs);

    /* Rights rows this site changed (returned), within the same range. */
    struct {
        char tenant[AP_INSTREC_NAME_SIZE];
        char res[16];
        int64_t granted, returned, reserve;
    } rows[64];
    size_t nr = 0;
    rv = ap_store_prepare(s->st,
                          "SELECT tenant, resource, granted, returned, reserve, seq FROM rights"
                          " WHERE seq > ?1 AND seq <= ?2 AND echo = 0 ORDER BY seq LIMIT 64",
                          &stmt);
    if (rv == 0) {
        ap_store_bind_int64(s->st, stmt, 1, (int64_t)after);
        ap_store_bind_int64(s->st, stmt, 2,
                            rights_limit == UINT64_MAX ? INT64_MAX : (int64_t)rights_limit);
        while (nr < AP_ARRAY_LEN(rows) && (rv = ap_store_step(s->st, stmt)) == AP_STORE_ROW) {
            ap_strlcpy(rows[nr].tenant, (const char *)sqlite3_column_text(stmt, 0),
                       sizeof rows[nr].tenant);
            ap_strlcpy(rows[nr].res, (const char *)sqlite3_column_text(stmt, 1),
                       sizeof rows[nr].res);
            rows[nr].granted = sqlite3_column_int64(stmt, 2);
            rows[nr].returned = sqlite3_column_int64(stmt, 3);
            rows[nr].reserve = sqlite3_column_int64(stmt, 4);
            uint64_t seq = (uint64_t)sqlite3_column_int64(stmt, 5);
            if (seq > *to) {
                *to = seq;
            }
            nr++;
        }
        if (nr == AP_ARRAY_LEN(rows)) {
            ap_store_reset(stmt);
        }
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
    ap_mp_write_str(&w, "to");
    ap_mp_write_uint(&w, *to);
    *count = n + nr;
    return ap_mp_writer_finish(&w, body, len);
}

int shard__state_hash(struct shard *s, unsigned char instances[32], unsigned char rights[32])
{
    int rv = ap_store_query_hash(
        s->st, "SELECT " AP_STATE_HASH_INSTANCE_COLUMNS " FROM instances ORDER BY id", NULL,
        instances);
    if (rv == 0) {
        rv = ap_store_query_hash(
            s->st, "SELECT " AP_STATE_HASH_RIGHTS_COLUMNS " FROM rights ORDER BY tenant, resource",
            NULL, rights);
    }
    if (rv != 0) {
        ap_errmsg_set(s->errmsg, "%s", ap_store_errmsg(s->st));
    }
    return rv;
}

uint64_t shard__seq(const struct shard *s)
{
    return s->seq;
}

uint64_t shard__meta(struct shard *s, const char *key)
{
    sqlite3_stmt *stmt;
    uint64_t v = 0;
    if (ap_store_prepare(s->st, "SELECT v FROM meta WHERE k=?1", &stmt) != 0) {
        return 0;
    }
    ap_store_bind_text(s->st, stmt, 1, key);
    if (ap_store_step(s->st, stmt) == AP_STORE_ROW) {
        v = (uint64_t)sqlite3_column_int64(stmt, 0);
        ap_store_reset(stmt);
    }
    return v;
}

int shard__set_meta(struct shard *s, const char *key, uint64_t value)
{
    sqlite3_stmt *stmt;
    int rv = ap_store_prepare(s->st,
                              "INSERT INTO meta(k, v) VALUES(?1, ?2)"
                              " ON CONFLICT(k) DO UPDATE SET v=?2",
                              &stmt);
    if (rv != 0) {
        return fail(s, rv, "write meta");
    }
    ap_store_bind_text(s->st, stmt, 1, key);
    ap_store_bind_int64(s->st, stmt, 2, (int64_t)value);
    rv = ap_store_step_done(s->st, stmt);
    if (rv != 0) {
        return fail(s, rv, "write meta");
    }
    if (!ap_store_in_transaction(s->st)) {
        note_written(s); /* autocommit: it is on disk */
    }
    return 0;
}

bool shard__full(const struct shard *s)
{
    return s->full;
}

uint64_t shard__full_errors(const struct shard *s)
{
    return s->full_errors;
}

int shard__probe(struct shard *s)
{
    int rv = shard__begin(s);
    if (rv == 0) {
        rv = shard__set_meta(s, "disk_probe", ++s->probes);
    }
    if (rv == 0) {
        return shard__commit(s);
    }
    shard__rollback(s);
    return rv;
}

/* ---- identity state from the region (docs/security.md) ---- */

int shard__auth_put(struct shard *s, const msgpack_object *state)
{
    uint64_t version = 0;
    const uint8_t *pk = NULL;
    size_t pk_len = 0;
    const msgpack_object *users = NULL;
    int rv;
    if ((rv = ap_mp_get_u64(state, "version", &version, INT64_MAX, true, s->errmsg)) != 0 ||
        (rv = ap_mp_get_bin(state, "pk", &pk, &pk_len, 32, false, s->errmsg)) != 0 ||
        (rv = ap_mp_get_array(state, "users", &users, 1u << 20, true, s->errmsg)) != 0) {
        return rv;
    }
    if (pk == NULL || pk_len != 32) {
        return 0; /* The region has no key yet: nothing to enforce. */
    }
    if ((rv = shard__begin(s)) != 0) {
        return rv;
    }
    sqlite3_stmt *stmt;
    rv = ap_store_exec(s->st, "DELETE FROM auth_users");
    if (rv == 0) {
        rv = ap_store_prepare(
            s->st, "INSERT OR REPLACE INTO auth_key(id, pk, version) VALUES(1, ?1, ?2)", &stmt);
    }
    if (rv == 0) {
        ap_store_bind_blob(s->st, stmt, 1, pk, 32);
        ap_store_bind_int64(s->st, stmt, 2, (int64_t)version);
        rv = ap_store_step_done(s->st, stmt);
    }
    for (uint32_t i = 0; rv == 0 && i < users->via.array.size; i++) {
        const msgpack_object *u = &users->via.array.ptr[i];
        char name[64];
        uint64_t gen = 0;
        bool deleted = false;
        if (u->type != MSGPACK_OBJECT_ARRAY || u->via.array.size != 3 ||
            ap_mp_as_str(&u->via.array.ptr[0], "user", name, sizeof name, s->errmsg) != 0 ||
            ap_mp_as_u64(&u->via.array.ptr[1], "gen", &gen, INT64_MAX, s->errmsg) != 0 ||
            ap_mp_as_bool(&u->via.array.ptr[2], "deleted", &deleted, s->errmsg) != 0) {
            rv = AP_EPROTO;
            break;
        }
        rv = ap_store_prepare(s->st,
                              "INSERT OR REPLACE INTO auth_users(name, gen, deleted)"
                              " VALUES(?1, ?2, ?3)",
                              &stmt);
        if (rv == 0) {
            ap_store_bind_text(s->st, stmt, 1, name);
            ap_store_bind_int64(s->st, stmt, 2, (int64_t)gen);
            ap_store_bind_int64(s->st, stmt, 3, deleted ? 1 : 0);
            rv = ap_store_step_done(s->st, stmt);
        }
    }
    if (rv == 0) {
        rv = shard__commit(s);
    } else {
        if (rv != AP_EPROTO) {
            rv = fail(s, rv, "store identity state");
        }
        shard__rollback(s);
    }
    return rv;
}

int shard__auth_key(struct shard *s, uint8_t pk[32])
{
    sqlite3_stmt *stmt;
    int rv = ap_store_prepare(s->st, "SELECT pk FROM auth_key WHERE id=1", &stmt);
    if (rv != 0) {
        return rv;
    }
    rv = ap_store_step(s->st, stmt) == AP_STORE_ROW && sqlite3_column_bytes(stmt, 0) == 32
             ? 0
             : AP_ENOTFOUND;
    if (rv == 0) {
        memcpy(pk, sqlite3_column_blob(stmt, 0), 32);
    }
    ap_store_reset(stmt);
    return rv;
}

int shard__auth_user(struct shard *s, const char *user, uint64_t *gen, bool *deleted)
{
    sqlite3_stmt *stmt;
    int rv = ap_store_prepare(s->st, "SELECT gen, deleted FROM auth_users WHERE name=?1", &stmt);
    if (rv != 0) {
        return rv;
    }
    ap_store_bind_text(s->st, stmt, 1, user);
    rv = AP_ENOTFOUND;
    if (ap_store_step(s->st, stmt) == AP_STORE_ROW) {
        *gen = (uint64_t)sqlite3_column_int64(stmt, 0);
        *deleted = sqlite3_column_int(stmt, 1) != 0;
        rv = 0;
    }
    ap_store_reset(stmt);
    return rv;
}
