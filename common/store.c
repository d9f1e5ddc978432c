/* store: SQLite access shared by every tier (open, migrations, statements, snapshots). */
#include "ap/store.h"

#include "ap/base.h"
#include "ap/err.h"
#include "ap/log.h"

#include <limits.h>
#include <pthread.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Longest savepoint name; names are spliced into SQL, so they are checked. */
#define SAVEPOINT_NAME_MAX 64

/* How much of a statement's SQL an error message quotes. */
#define SQL_QUOTE_LEN 60

/* Offsets in the 100-byte database header (https://sqlite.org/fileformat.html). */
#define HDR_SIZE          100
#define HDR_PAGE_SIZE     16
#define HDR_WRITE_VERSION 18
#define HDR_READ_VERSION  19
#define HDR_RESERVED      20
#define HDR_PAYLOAD_FRACS 21
#define HDR_TEXT_ENCODING 56

static const char sqlite_magic[16] = "SQLite format 3";

struct stmt_entry {
    sqlite3_stmt *stmt; /* NULL for a free slot. */
    uint32_t hash;      /* FNV-1a of the SQL text, checked before strcmp. */
    uint64_t last_use;  /* Value of use_clock at the last prepare. */
};

struct ap_store {
    sqlite3 *db;
    char *path;
    enum ap_store_sync sync;
    struct stmt_entry cache[AP_STORE_STMT_CACHE];
    uint64_t use_clock;
    struct ap_store_stats stats;
    char errmsg[AP_ERRMSG_SIZE];
};

/* Set errmsg to "<prefix>: sqlite: <sqlite message>" and return the translated code. */
static int fail_sqlite(struct ap_store *s, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail_sqlite(struct ap_store *s, int rc, const char *fmt, ...)
{
    char prefix[AP_ERRMSG_SIZE];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    /* The connection's message is only about rc when its last error is rc. */
    const char *msg = s->db != NULL && (sqlite3_errcode(s->db) & 0xff) == (rc & 0xff)
                          ? sqlite3_errmsg(s->db)
                          : sqlite3_errstr(rc);
    ap_errmsg_set(s->errmsg, "sqlite: %s", msg);
    ap_errmsg_wrap(s->errmsg, "%s", prefix);
    int err = ap_err_from_sqlite(rc);
    return err != 0 ? err : AP_EINTERNAL;
}

/* Set errmsg to a formatted message and return err. */
static int fail(struct ap_store *s, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(struct ap_store *s, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->errmsg, sizeof s->errmsg, fmt, ap);
    va_end(ap);
    return err;
}

static uint32_t fnv1a(const char *text)
{
    uint32_t h = 2166136261u;
    for (const unsigned char *p = (const unsigned char *)text; *p != '\0'; p++) {
        h ^= *p;
        h *= 16777619u;
    }
    return h;
}

static const char *sync_pragma(enum ap_store_sync sync)
{
    switch (sync) {
    case AP_STORE_SYNC_FULL:
        return "PRAGMA synchronous=FULL";
    case AP_STORE_SYNC_NORMAL:
        /* docs/store.md: NORMAL, not OFF, so a power cut loses commits, never consistency. */
        return "PRAGMA synchronous=NORMAL";
    case AP_STORE_SYNC_OFF:
        return "PRAGMA synchronous=OFF";
    }
    return NULL;
}

/* Run a one-row PRAGMA (or query) and copy its first text column into out. */
static int query_text(sqlite3 *db, const char *sql, char *out, size_t out_size)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK) {
        return rc;
    }
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(st, 0);
        ap_strlcpy(out, t != NULL ? (const char *)t : "", out_size);
        rc = SQLITE_OK;
    } else if (rc == SQLITE_DONE) {
        out[0] = '\0';
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    return rc;
}

static int query_int(sqlite3 *db, const char *sql, int64_t *out)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK) {
        return rc;
    }
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *out = sqlite3_column_int64(st, 0);
        rc = SQLITE_OK;
    } else if (rc == SQLITE_DONE) {
        *out = 0;
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    return rc;
}

/* Apply journal mode, synchronous mode and foreign keys to a fresh connection. */
static int configure(struct ap_store *s)
{
    char mode[16];
    int rc = sqlite3_busy_timeout(s->db, AP_STORE_BUSY_TIMEOUT_MS);
    if (rc != SQLITE_OK) {
        return fail_sqlite(s, rc, "busy timeout");
    }
    /* The first statement reads the header: a non-database file fails here. */
    rc = query_text(s->db, "PRAGMA journal_mode=WAL", mode, sizeof mode);
    if (rc != SQLITE_OK) {
        return fail_sqlite(s, rc, "journal mode");
    }
    /* An in-memory database has no WAL; its journal stays in memory. */
    if (strcmp(mode, "wal") != 0 && strcmp(mode, "memory") != 0) {
        return fail(s, AP_EIO, "journal mode: got %s instead of wal", mode);
    }
    rc = sqlite3_exec(s->db, sync_pragma(s->sync), NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        return fail_sqlite(s, rc, "synchronous mode");
    }
    rc = sqlite3_exec(s->db, "PRAGMA foreign_keys=ON", NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        return fail_sqlite(s, rc, "foreign keys");
    }
    /* docs/store.md: a group-committed batch of entries dirties many pages; with SQLite's
     * default 2 MiB cache they spill to the WAL in the middle of the transaction. The cache
     * grows only as pages are used, so small stores (a site's shard) stay small. */
    /* Savepoints (one per applied command) keep the original of every page they touch in a
     * sub-journal: in memory, not in a temporary file written at every insert. */
    rc = sqlite3_exec(s->db, "PRAGMA temp_store=MEMORY", NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        return fail_sqlite(s, rc, "temp store");
    }
    char pragma[64];
    snprintf(pragma, sizeof pragma, "PRAGMA cache_size=-%d", AP_STORE_CACHE_KIB);
    rc = sqlite3_exec(s->db, pragma, NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        return fail_sqlite(s, rc, "cache size");
    }
    return 0;
}

static pthread_once_t sqlite_tuned = PTHREAD_ONCE_INIT;

/* Before SQLite's first use in the process; a no-op (SQLITE_MISUSE) if it was already used. */
static void tune_sqlite(void)
{
    (void)sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
}

int ap_store_open(const char *path, enum ap_store_sync sync, struct ap_store **out, char *errmsg)
{
    int err;
    *out = NULL;
    if (path == NULL || path[0] == '\0' || sync_pragma(sync) == NULL) {
        if (errmsg != NULL) {
            ap_errmsg_set(errmsg, "open store: invalid path or sync mode");
        }
        return AP_EINVAL;
    }
    struct ap_store *s = ap_calloc(1, sizeof *s);
    if (s == NULL) {
        err = AP_ENOMEM;
        goto err_report;
    }
    s->sync = sync;
    s->path = ap_strdup(path);
    if (s->path == NULL) {
        err = AP_ENOMEM;
        goto err_after_alloc;
    }
    /* docs/store.md: a store belongs to one thread (its loop): no per-connection mutex, and no
     * global memory statistics (a process-wide mutex taken at every allocation). */
    pthread_once(&sqlite_tuned, tune_sqlite);
    int rc = sqlite3_open_v2(path, &s->db,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        err = fail_sqlite(s, rc, "open %s", path);
        goto err_after_open;
    }
    sqlite3_extended_result_codes(s->db, 1);
    err = configure(s);
    if (err != 0) {
        ap_errmsg_wrap(s->errmsg, "open %s", path);
        goto err_after_open;
    }
    AP_LOG(AP_LOG_DEBUG, "store_open path=%s sync=%d", path, (int)sync);
    *out = s;
    return 0;

err_after_open:
    /* sqlite3_open_v2 returns a handle even when it fails; it must be closed. */
    sqlite3_close_v2(s->db);
    if (errmsg != NULL) {
        ap_strlcpy(errmsg, s->errmsg, AP_ERRMSG_SIZE);
    }
    ap_free(s->path);
    ap_free(s);
    return err;
err_after_alloc:
    ap_free(s);
err_report:
    if (errmsg != NULL) {
        ap_errmsg_set(errmsg, "open %s: %s", path, ap_strerror(err));
    }
    return err;
}

static void cache_clear(struct ap_store *s)
{
    for (size_t i = 0; i < AP_STORE_STMT_CACHE; i++) {
        if (s->cache[i].stmt != NULL) {
            sqlite3_finalize(s->cache[i].stmt);
            s->cache[i].stmt = NULL;
        }
    }
}

void ap_store_close(struct ap_store *s)
{
    if (s == NULL) {
        return;
    }
    cache_clear(s);
    /* close_v2 defers the close if a caller still holds a raw statement. */
    int rc = sqlite3_close_v2(s->db);
    if (rc != SQLITE_OK) {
        AP_LOG(AP_LOG_WARN, "store_close_failed path=%s err=\"%s\"", s->path, sqlite3_errstr(rc));
    }
    ap_free(s->path);
    ap_free(s);
}

const char *ap_store_errmsg(const struct ap_store *s)
{
    return s->errmsg;
}

const char *ap_store_path(const struct ap_store *s)
{
    return s->path;
}

sqlite3 *ap_store_db(struct ap_store *s)
{
    return s->db;
}

int ap_store_set_busy_timeout(struct ap_store *s, int ms)
{
    if (ms < 0) {
        return fail(s, AP_EINVAL, "busy timeout: %d ms is negative", ms);
    }
    int rc = sqlite3_busy_timeout(s->db, ms);
    if (rc != SQLITE_OK) {
        return fail_sqlite(s, rc, "busy timeout");
    }
    return 0;
}

int ap_store_exec(struct ap_store *s, const char *sql)
{
    int rc = sqlite3_exec(s->db, sql, NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        return fail_sqlite(s, rc, "exec \"%.*s\"", SQL_QUOTE_LEN, sql);
    }
    return 0;
}

/* Only blanks and comments may follow the one statement of a prepare. */
static bool tail_is_empty(sqlite3 *db, const char *tail)
{
    while (tail != NULL && *tail != '\0') {
        sqlite3_stmt *st = NULL;
        const char *next = NULL;
        if (sqlite3_prepare_v2(db, tail, -1, &st, &next) != SQLITE_OK || st != NULL) {
            sqlite3_finalize(st);
            return false;
        }
        if (next == tail) {
            break;
        }
        tail = next;
    }
    return true;
}

/* The slot for a new statement: a free one, else the least recently used idle one. */
static struct stmt_entry *cache_slot(struct ap_store *s)
{
    struct stmt_entry *victim = NULL;
    for (size_t i = 0; i < AP_STORE_STMT_CACHE; i++) {
        struct stmt_entry *e = &s->cache[i];
        if (e->stmt == NULL) {
            return e;
        }
        if (sqlite3_stmt_busy(e->stmt)) {
            continue;
        }
        if (victim == NULL || e->last_use < victim->last_use) {
            victim = e;
        }
    }
    if (victim != NULL) {
        sqlite3_finalize(victim->stmt);
        victim->stmt = NULL;
        s->stats.stmt_evictions++;
    }
    return victim;
}

int ap_store_prepare(struct ap_store *s, const char *sql, sqlite3_stmt **stmt)
{
    *stmt = NULL;
    if (sql == NULL) {
        return fail(s, AP_EINVAL, "prepare: no SQL");
    }
    uint32_t h = fnv1a(sql);
    for (size_t i = 0; i < AP_STORE_STMT_CACHE; i++) {
        struct stmt_entry *e = &s->cache[i];
        if (e->stmt != NULL && e->hash == h && strcmp(sqlite3_sql(e->stmt), sql) == 0) {
            sqlite3_reset(e->stmt);
            sqlite3_clear_bindings(e->stmt);
            e->last_use = ++s->use_clock;
            s->stats.stmt_hits++;
            *stmt = e->stmt;
            return 0;
        }
    }

    sqlite3_stmt *st = NULL;
    const char *tail = NULL;
    int rc = sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, &tail);
    if (rc != SQLITE_OK) {
        return fail_sqlite(s, rc, "prepare \"%.*s\"", SQL_QUOTE_LEN, sql);
    }
    if (st == NULL) {
        return fail(s, AP_EINVAL, "prepare \"%.*s\": no statement", SQL_QUOTE_LEN, sql);
    }
    if (!tail_is_empty(s->db, tail)) {
        sqlite3_finalize(st);
        return fail(s, AP_EINVAL, "prepare \"%.*s\": more than one statement", SQL_QUOTE_LEN, sql);
    }
    struct stmt_entry *e = cache_slot(s);
    if (e == NULL) {
        sqlite3_finalize(st);
        return fail(s, AP_EBUSY, "prepare \"%.*s\": all %d cached statements are running",
                    SQL_QUOTE_LEN, sql, AP_STORE_STMT_CACHE);
    }
    e->stmt = st;
    e->hash = h;
    e->last_use = ++s->use_clock;
    s->stats.stmt_misses++;
    *stmt = st;
    return 0;
}

int ap_store_bind_text(struct ap_store *s, sqlite3_stmt *stmt, int idx, const char *value)
{
    int rc = value != NULL ? sqlite3_bind_text(stmt, idx, value, -1, SQLITE_TRANSIENT)
                           : sqlite3_bind_null(stmt, idx);
    if (rc != SQLITE_OK) {
        return fail_sqlite(s, rc, "bind text %d", idx);
    }
    return 0;
}

int ap_store_bind_int64(struct ap_store *s, sqlite3_stmt *stmt, int idx, int64_t value)
{
    int rc = sqlite3_bind_int64(stmt, idx, (sqlite3_int64)value);
    if (rc != SQLITE_OK) {
        return fail_sqlite(s, rc, "bind int64 %d", idx);
    }
    return 0;
}

int ap_store_bind_blob(struct ap_store *s, sqlite3_stmt *stmt, int idx, const void *data,
                       size_t len)
{
    if (len > (size_t)INT_MAX) {
        return fail(s, AP_ETOOBIG, "bind blob %d: %zu bytes", idx, len);
    }
    /* A NULL pointer would bind SQL NULL; an empty blob is a zero-length zeroblob. */
    int rc = len == 0 ? sqlite3_bind_zeroblob(stmt, idx, 0)
                      : sqlite3_bind_blob(stmt, idx, data, (int)len, SQLITE_TRANSIENT);
    if (rc != SQLITE_OK) {
        return fail_sqlite(s, rc, "bind blob %d", idx);
    }
    return 0;
}

int ap_store_bind_null(struct ap_store *s, sqlite3_stmt *stmt, int idx)
{
    int rc = sqlite3_bind_null(stmt, idx);
    if (rc != SQLITE_OK) {
        return fail_sqlite(s, rc, "bind null %d", idx);
    }
    return 0;
}

int ap_store_step(struct ap_store *s, sqlite3_stmt *stmt)
{
    int rc = sqlite3_step(stmt);
    if (rc == SQLITE_ROW) {
        return AP_STORE_ROW;
    }
    if (rc == SQLITE_DONE) {
        sqlite3_reset(stmt);
        return AP_STORE_DONE;
    }
    int err = fail_sqlite(s, rc, "step \"%.*s\"", SQL_QUOTE_LEN, sqlite3_sql(stmt));
    sqlite3_reset(stmt);
    return err;
}

int ap_store_step_done(struct ap_store *s, sqlite3_stmt *stmt)
{
    int rc = ap_store_step(s, stmt);
    if (rc == AP_STORE_ROW) {
        sqlite3_reset(stmt);
        return fail(s, AP_EINVAL, "step \"%.*s\": returned a row", SQL_QUOTE_LEN,
                    sqlite3_sql(stmt));
    }
    return rc;
}

void ap_store_reset(sqlite3_stmt *stmt)
{
    sqlite3_reset(stmt);
}

bool ap_store_in_transaction(struct ap_store *s)
{
    return sqlite3_get_autocommit(s->db) == 0;
}

/* Run a cached statement that returns no rows, such as BEGIN or COMMIT. */
static int run_cached(struct ap_store *s, const char *sql, const char *what)
{
    sqlite3_stmt *st;
    int err = ap_store_prepare(s, sql, &st);
    if (err == 0) {
        err = ap_store_step_done(s, st);
    }
    if (err != 0) {
        ap_errmsg_wrap(s->errmsg, "%s", what);
    }
    return err;
}

int ap_store_begin(struct ap_store *s)
{
    return run_cached(s, "BEGIN IMMEDIATE", "begin");
}

int ap_store_commit(struct ap_store *s)
{
    return run_cached(s, "COMMIT", "commit");
}

int ap_store_rollback(struct ap_store *s)
{
    if (!ap_store_in_transaction(s)) {
        return 0;
    }
    return run_cached(s, "ROLLBACK", "rollback");
}

static bool savepoint_name_ok(const char *name)
{
    if (name == NULL || name[0] == '\0' || (name[0] >= '0' && name[0] <= '9')) {
        return false;
    }
    size_t n = 0;
    for (const char *p = name; *p != '\0'; p++, n++) {
        char c = *p;
        bool ok =
            (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
        if (!ok || n >= SAVEPOINT_NAME_MAX) {
            return false;
        }
    }
    return true;
}

/* Run "<verb> <name>" for a checked savepoint name. */
static int savepoint_sql(struct ap_store *s, const char *verb, const char *name)
{
    char sql[128];
    if (!savepoint_name_ok(name)) {
        return fail(s, AP_EINVAL, "%s: bad savepoint name", verb);
    }
    snprintf(sql, sizeof sql, "%s %s", verb, name);
    return run_cached(s, sql, verb);
}

int ap_store_savepoint(struct ap_store *s, const char *name)
{
    return savepoint_sql(s, "SAVEPOINT", name);
}

int ap_store_release(struct ap_store *s, const char *name)
{
    return savepoint_sql(s, "RELEASE SAVEPOINT", name);
}

int ap_store_rollback_to(struct ap_store *s, const char *name)
{
    /* ROLLBACK TO keeps the savepoint open; RELEASE then drops it (now empty). */
    int err = savepoint_sql(s, "ROLLBACK TO SAVEPOINT", name);
    if (err != 0) {
        return err;
    }
    return savepoint_sql(s, "RELEASE SAVEPOINT", name);
}

/* ---- migrations ---- */

static const char schema_table_sql[] =
    "CREATE TABLE IF NOT EXISTS ap_schema_version (version INTEGER PRIMARY KEY NOT NULL)";

static int read_version(struct ap_store *s, int *version)
{
    int64_t exists = 0;
    int64_t v = 0;
    int rc = query_int(s->db,
                       "SELECT count(*) FROM sqlite_master"
                       " WHERE type = 'table' AND name = 'ap_schema_version'",
                       &exists);
    if (rc == SQLITE_OK && exists != 0) {
        rc = query_int(s->db, "SELECT coalesce(max(version), 0) FROM ap_schema_version", &v);
    }
    if (rc != SQLITE_OK) {
        return fail_sqlite(s, rc, "read schema version");
    }
    if (v < 0 || v > INT_MAX) {
        return fail(s, AP_ECORRUPT, "read schema version: %lld is out of range", (long long)v);
    }
    *version = (int)v;
    return 0;
}

int ap_store_schema_version(struct ap_store *s, int *version)
{
    return read_version(s, version);
}

/* Apply one step in its own transaction, unless another process got there first. */
static int migrate_step(struct ap_store *s, const struct ap_store_migration *m)
{
    int current = 0;
    int err = ap_store_begin(s);
    if (err != 0) {
        return err;
    }
    err = ap_store_exec(s, schema_table_sql);
    if (err == 0) {
        err = read_version(s, &current);
    }
    if (err == 0 && current < m->version) {
        err = ap_store_exec(s, m->sql);
        if (err == 0) {
            sqlite3_stmt *st;
            err = ap_store_prepare(s, "INSERT INTO ap_schema_version (version) VALUES (?)", &st);
            if (err == 0) {
                err = ap_store_bind_int64(s, st, 1, m->version);
            }
            if (err == 0) {
                err = ap_store_step_done(s, st);
            }
        }
    }
    if (err == 0) {
        err = ap_store_commit(s);
    }
    if (err != 0) {
        /* Keep the step's message: the rollback of an aborted transaction is a no-op anyway. */
        char saved[AP_ERRMSG_SIZE];
        memcpy(saved, s->errmsg, sizeof saved);
        ap_store_rollback(s);
        memcpy(s->errmsg, saved, sizeof saved);
        return err;
    }
    if (current < m->version) {
        AP_LOG(AP_LOG_INFO, "store_migrated path=%s version=%d", s->path, m->version);
    }
    return 0;
}

int ap_store_migrate(struct ap_store *s, const struct ap_store_migration *migrations, size_t n)
{
    int last = 0;
    for (size_t i = 0; i < n; i++) {
        if (migrations[i].version <= last || migrations[i].sql == NULL) {
            return fail(s, AP_EINVAL,
                        "migrate: step %zu: versions must be positive and increasing, with SQL", i);
        }
        last = migrations[i].version;
    }
    if (ap_store_in_transaction(s)) {
        return fail(s, AP_EINVAL, "migrate: a transaction is open");
    }
    int current = 0;
    int err = read_version(s, &current);
    if (err != 0) {
        ap_errmsg_wrap(s->errmsg, "migrate");
        return err;
    }
    if (current > last) {
        return fail(s, AP_EINVAL,
                    "migrate: database schema version %d is newer than this program knows (%d)",
                    current, last);
    }
    for (size_t i = 0; i < n; i++) {
        if (migrations[i].version <= current) {
            continue;
        }
        err = migrate_step(s, &migrations[i]);
        if (err != 0) {
            ap_errmsg_wrap(s->errmsg, "migrate to version %d", migrations[i].version);
            return err;
        }
    }
    return 0;
}

/* ---- snapshots ---- */

int ap_store_serialize(struct ap_store *s, uint8_t **buf, size_t *len)
{
    *buf = NULL;
    *len = 0;
    sqlite3_int64 size = 0;
    unsigned char *img = sqlite3_serialize(s->db, "main", &size, 0);
    if (img == NULL) {
        int rc = sqlite3_errcode(s->db);
        if (size == 0 && rc == SQLITE_OK) {
            return fail(s, AP_EINVAL, "serialize: the database is empty");
        }
        return rc != SQLITE_OK ? fail_sqlite(s, rc, "serialize")
                               : fail(s, AP_ENOMEM, "serialize: out of memory");
    }
    /* Callers free with ap_free, which need not be SQLite's allocator. */
    uint8_t *copy = ap_malloc((size_t)size);
    if (copy == NULL) {
        sqlite3_free(img);
        return fail(s, AP_ENOMEM, "serialize: out of memory for %lld bytes", (long long)size);
    }
    memcpy(copy, img, (size_t)size);
    sqlite3_free(img);
    *buf = copy;
    *len = (size_t)size;
    return 0;
}

/* Check the header of an image; returns its page size, or 0 with errmsg set. */
static unsigned image_page_size(struct ap_store *s, const uint8_t *buf, size_t len)
{
    if (len < HDR_SIZE || len < 512) {
        fail(s, AP_ECORRUPT, "restore: image of %zu bytes is too short", len);
        return 0;
    }
    if (memcmp(buf, sqlite_magic, sizeof sqlite_magic) != 0) {
        fail(s, AP_ECORRUPT, "restore: image is not an SQLite database (bad magic)");
        return 0;
    }
    unsigned page = ((unsigned)buf[HDR_PAGE_SIZE] << 8) | buf[HDR_PAGE_SIZE + 1];
    if (page == 1) {
        page = 65536;
    }
    if (page < 512 || page > 65536 || (page & (page - 1)) != 0) {
        fail(s, AP_ECORRUPT, "restore: bad page size %u", page);
        return 0;
    }
    if (len % page != 0) {
        fail(s, AP_ECORRUPT, "restore: %zu bytes is not a whole number of %u-byte pages", len,
             page);
        return 0;
    }
    /* 1 = rollback journal, 2 = WAL; anything else is a format this code cannot write. */
    if (buf[HDR_WRITE_VERSION] < 1 || buf[HDR_WRITE_VERSION] > 2 || buf[HDR_READ_VERSION] < 1 ||
        buf[HDR_READ_VERSION] > 2) {
        fail(s, AP_ECORRUPT, "restore: bad file format versions %u/%u", buf[HDR_WRITE_VERSION],
             buf[HDR_READ_VERSION]);
        return 0;
    }
    /* Our stores use no reserved bytes (no checksum or encryption extension) and UTF-8. */
    if (buf[HDR_RESERVED] != 0 || buf[HDR_PAYLOAD_FRACS] != 64 ||
        buf[HDR_PAYLOAD_FRACS + 1] != 32 || buf[HDR_PAYLOAD_FRACS + 2] != 32) {
        fail(s, AP_ECORRUPT, "restore: unsupported page layout in header");
        return 0;
    }
    uint32_t enc = ((uint32_t)buf[HDR_TEXT_ENCODING] << 24) |
                   ((uint32_t)buf[HDR_TEXT_ENCODING + 1] << 16) |
                   ((uint32_t)buf[HDR_TEXT_ENCODING + 2] << 8) | buf[HDR_TEXT_ENCODING + 3];
    if (enc != 0 && enc != SQLITE_UTF8) {
        fail(s, AP_ECORRUPT, "restore: text encoding %u is not UTF-8", (unsigned)enc);
        return 0;
    }
    return page;
}

/*
 * Open a private in-memory connection on a copy of the image, with WAL marks
 * cleared, and check it. On success *tmp and *copy belong to the caller, who
 * closes *tmp before freeing *copy.
 */
static int image_open(struct ap_store *s, const uint8_t *buf, size_t len, sqlite3 **tmp,
                      uint8_t **copy)
{
    char result[AP_ERRMSG_SIZE];
    *tmp = NULL;
    *copy = NULL;
    uint8_t *img = ap_malloc(len);
    if (img == NULL) {
        return fail(s, AP_ENOMEM, "restore: out of memory for %zu bytes", len);
    }
    memcpy(img, buf, len);
    /* RAFT-NOTES pitfall 2: a WAL image (18/19 = 2) deserializes without its data. */
    img[HDR_WRITE_VERSION] = 1;
    img[HDR_READ_VERSION] = 1;

    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(":memory:", &db, SQLITE_OPEN_READWRITE, NULL);
    if (rc != SQLITE_OK) {
        sqlite3_close_v2(db);
        ap_free(img);
        return fail(s, ap_err_from_sqlite(rc), "restore: open scratch connection: sqlite: %s",
                    sqlite3_errstr(rc));
    }
    /* The image is untrusted until checked: no schema-defined side effects. */
    sqlite3_db_config(db, SQLITE_DBCONFIG_DEFENSIVE, 1, (int *)NULL);
    sqlite3_db_config(db, SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, (int *)NULL);
    sqlite3_db_config(db, SQLITE_DBCONFIG_ENABLE_TRIGGER, 0, (int *)NULL);
    sqlite3_db_config(db, SQLITE_DBCONFIG_ENABLE_VIEW, 0, (int *)NULL);
    /* Without FREEONCLOSE the buffer stays ours; READONLY: the checks only read. */
    rc = sqlite3_deserialize(db, "main", img, (sqlite3_int64)len, (sqlite3_int64)len,
                             SQLITE_DESERIALIZE_READONLY);
    if (rc == SQLITE_OK) {
        rc = query_text(db, "PRAGMA cell_size_check=ON", result, sizeof result);
    }
    if (rc == SQLITE_OK) {
        /* quick_check is O(pages): it proves the b-trees sound, not index contents. */
        rc = query_text(db, "PRAGMA quick_check(1)", result, sizeof result);
    }
    if (rc != SQLITE_OK) {
        int err = ap_err_from_sqlite(rc);
        fail(s, err == AP_ENOMEM ? AP_ENOMEM : AP_ECORRUPT, "restore: check image: sqlite: %s",
             sqlite3_errmsg(db));
        err = err == AP_ENOMEM ? AP_ENOMEM : AP_ECORRUPT;
        sqlite3_close_v2(db);
        ap_free(img);
        return err;
    }
    if (strcmp(result, "ok") != 0) {
        fail(s, AP_ECORRUPT, "restore: check image: %s", result);
        sqlite3_close_v2(db);
        ap_free(img);
        return AP_ECORRUPT;
    }
    *tmp = db;
    *copy = img;
    return 0;
}

/* Copy every page of src into the live database, in one write transaction. */
static int copy_into_live(struct ap_store *s, sqlite3 *src)
{
    sqlite3_backup *b = sqlite3_backup_init(s->db, "main", src, "main");
    if (b == NULL) {
        return fail_sqlite(s, sqlite3_errcode(s->db), "restore: start copy");
    }
    int rc = sqlite3_backup_step(b, -1);
    int frc = sqlite3_backup_finish(b);
    if (rc == SQLITE_DONE) {
        rc = frc;
    }
    if (rc != SQLITE_OK) {
        return fail_sqlite(s, rc, "restore: copy image");
    }
    return 0;
}

int ap_store_restore(struct ap_store *s, const uint8_t *buf, size_t len)
{
    if (buf == NULL && len != 0) {
        return fail(s, AP_EINVAL, "restore: no buffer");
    }
    if (len > AP_STORE_MAX_IMAGE) {
        return fail(s, AP_ETOOBIG, "restore: image of %zu bytes exceeds %zu", len,
                    AP_STORE_MAX_IMAGE);
    }
    unsigned page = image_page_size(s, buf, len);
    if (page == 0) {
        return AP_ECORRUPT;
    }
    if (ap_store_in_transaction(s)) {
        return fail(s, AP_EBUSY, "restore: a transaction is open");
    }
    sqlite3 *tmp;
    uint8_t *img;
    int err = image_open(s, buf, len, &tmp, &img);
    if (err != 0) {
        return err;
    }
    /* Cached statements may hold a read snapshot and would point at the old schema. */
    cache_clear(s);

    int64_t live_page = 0;
    char mode[16] = "";
    int rc = query_int(s->db, "PRAGMA page_size", &live_page);
    if (rc == SQLITE_OK) {
        rc = query_text(s->db, "PRAGMA journal_mode", mode, sizeof mode);
    }
    if (rc != SQLITE_OK) {
        err = fail_sqlite(s, rc, "restore: read live settings");
        goto err_after_open;
    }
    bool wal = strcmp(mode, "wal") == 0;
    if (live_page != (int64_t)page && !wal) {
        /* SQLite cannot change the page size of an in-memory destination. */
        err = fail(s, AP_EINVAL, "restore: image page size %u differs from the store's %lld", page,
                   (long long)live_page);
        goto err_after_open;
    }
    if (live_page != (int64_t)page) {
        /* A WAL destination cannot take a new page size: copy in rollback mode. */
        rc = query_text(s->db, "PRAGMA journal_mode=DELETE", mode, sizeof mode);
        if (rc != SQLITE_OK || strcmp(mode, "delete") != 0) {
            err = rc != SQLITE_OK ? fail_sqlite(s, rc, "restore: leave WAL for a new page size")
                                  : fail(s, AP_EBUSY, "restore: cannot leave WAL mode");
            goto err_after_open;
        }
    }
    err = copy_into_live(s, tmp);
    if (live_page != (int64_t)page) {
        char saved[AP_ERRMSG_SIZE];
        memcpy(saved, s->errmsg, sizeof saved);
        rc = query_text(s->db, "PRAGMA journal_mode=WAL", mode, sizeof mode);
        if (err == 0 && (rc != SQLITE_OK || strcmp(mode, "wal") != 0)) {
            err = rc != SQLITE_OK ? fail_sqlite(s, rc, "restore: back to WAL")
                                  : fail(s, AP_EIO, "restore: cannot go back to WAL mode");
        } else if (err != 0) {
            memcpy(s->errmsg, saved, sizeof saved);
        }
    }
    if (err != 0) {
        goto err_after_open;
    }
    /* The image is now in the WAL; the automatic checkpoint after that commit moves it on. */
    sqlite3_close_v2(tmp);
    ap_free(img);
    AP_LOG(AP_LOG_INFO, "store_restored path=%s bytes=%zu", s->path, len);
    return 0;

err_after_open:
    sqlite3_close_v2(tmp);
    ap_free(img);
    return err;
}

/* ---- content hash ---- */

static void hash_u64(crypto_hash_sha256_state *h, uint64_t v)
{
    unsigned char b[8];
    for (int i = 0; i < 8; i++) {
        b[i] = (unsigned char)(v >> (56 - 8 * i));
    }
    crypto_hash_sha256_update(h, b, sizeof b);
}

static void hash_tagged(crypto_hash_sha256_state *h, unsigned char tag, const void *data,
                        size_t len)
{
    crypto_hash_sha256_update(h, &tag, 1);
    hash_u64(h, len);
    if (len > 0) {
        crypto_hash_sha256_update(h, data, len);
    }
}

static void hash_value(crypto_hash_sha256_state *h, sqlite3_stmt *st, int col)
{
    unsigned char tag;
    switch (sqlite3_column_type(st, col)) {
    case SQLITE_INTEGER:
        tag = 'I';
        crypto_hash_sha256_update(h, &tag, 1);
        hash_u64(h, (uint64_t)sqlite3_column_int64(st, col));
        break;
    case SQLITE_FLOAT: {
        double d = sqlite3_column_double(st, col);
        uint64_t bits;
        memcpy(&bits, &d, sizeof bits);
        tag = 'F';
        crypto_hash_sha256_update(h, &tag, 1);
        hash_u64(h, bits);
        break;
    }
    case SQLITE_TEXT: {
        const unsigned char *t = sqlite3_column_text(st, col);
        hash_tagged(h, 'T', t, (size_t)sqlite3_column_bytes(st, col));
        break;
    }
    case SQLITE_BLOB: {
        const void *b = sqlite3_column_blob(st, col);
        hash_tagged(h, 'B', b, (size_t)sqlite3_column_bytes(st, col));
        break;
    }
    default:
        tag = 'N';
        crypto_hash_sha256_update(h, &tag, 1);
        break;
    }
}

/* "SELECT * FROM t ORDER BY <primary key columns or rowid>", quoted; NULL on failure. */
static char *table_query(struct ap_store *s, const char *table, int *err)
{
    sqlite3_stmt *st = NULL;
    sqlite3_str *q = sqlite3_str_new(s->db);
    sqlite3_str_appendf(q, "SELECT * FROM \"%w\" ORDER BY ", table);
    int rc = sqlite3_prepare_v2(
        s->db, "SELECT name FROM pragma_table_info(?) WHERE pk > 0 ORDER BY pk", -1, &st, NULL);
    int keys = 0;
    if (rc == SQLITE_OK) {
        sqlite3_bind_text(st, 1, table, -1, SQLITE_STATIC);
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            const unsigned char *name = sqlite3_column_text(st, 0);
            sqlite3_str_appendf(q, "%s\"%w\"", keys > 0 ? ", " : "",
                                name != NULL ? (const char *)name : "");
            keys++;
        }
        if (rc == SQLITE_DONE) {
            rc = SQLITE_OK;
        }
    }
    sqlite3_finalize(st);
    if (keys == 0) {
        sqlite3_str_appendall(q, "rowid");
    }
    char *sql = sqlite3_str_finish(q);
    if (rc != SQLITE_OK || sql == NULL) {
        *err = rc != SQLITE_OK ? fail_sqlite(s, rc, "content hash: columns of %s", table)
                               : fail(s, AP_ENOMEM, "content hash: out of memory");
        sqlite3_free(sql);
        return NULL;
    }
    return sql;
}

static int hash_rows(struct ap_store *s, crypto_hash_sha256_state *h, sqlite3_stmt *st,
                     const char *what);

static int hash_table(struct ap_store *s, crypto_hash_sha256_state *h, const char *table)
{
    int64_t exists = 0;
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(
        s->db, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?", -1, &st,
        NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_text(st, 1, table, -1, SQLITE_STATIC);
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            exists = sqlite3_column_int64(st, 0);
            rc = SQLITE_OK;
        }
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_OK) {
        return fail_sqlite(s, rc, "content hash: find %s", table);
    }
    if (exists == 0) {
        return fail(s, AP_ENOTFOUND, "content hash: no table \"%s\"", table);
    }

    int err = 0;
    char *sql = table_query(s, table, &err);
    if (sql == NULL) {
        return err;
    }
    rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
    sqlite3_free(sql);
    if (rc != SQLITE_OK) {
        return fail_sqlite(s, rc, "content hash: read %s", table);
    }
    hash_tagged(h, 'S', table, strlen(table));
    err = hash_rows(s, h, st, table);
    sqlite3_finalize(st);
    return err;
}

/* Column names, then every row of st (stepped to the end), then the row count. */
static int hash_rows(struct ap_store *s, crypto_hash_sha256_state *h, sqlite3_stmt *st,
                     const char *what)
{
    int rc;
    int ncol = sqlite3_column_count(st);
    for (int c = 0; c < ncol; c++) {
        const char *name = sqlite3_column_name(st, c);
        hash_tagged(h, 'C', name, name != NULL ? strlen(name) : 0);
    }
    uint64_t rows = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        unsigned char tag = 'R';
        crypto_hash_sha256_update(h, &tag, 1);
        for (int c = 0; c < ncol; c++) {
            hash_value(h, st, c);
        }
        rows++;
    }
    if (rc != SQLITE_DONE) {
        return fail_sqlite(s, rc, "content hash: read %s", what);
    }
    unsigned char tag = 'E';
    crypto_hash_sha256_update(h, &tag, 1);
    hash_u64(h, rows);
    return 0;
}

int ap_store_content_hash(struct ap_store *s, const char *const *tables, unsigned char out[32])
{
    crypto_hash_sha256_state h;
    if (tables == NULL) {
        return fail(s, AP_EINVAL, "content hash: no table list");
    }
    if (sodium_init() < 0) {
        return fail(s, AP_EINTERNAL, "content hash: libsodium failed to initialize");
    }
    crypto_hash_sha256_init(&h);
    for (size_t i = 0; tables[i] != NULL; i++) {
        int err = hash_table(s, &h, tables[i]);
        if (err != 0) {
            return err;
        }
    }
    crypto_hash_sha256_final(&h, out);
    return 0;
}

int ap_store_query_hash(struct ap_store *s, const char *sql, const char *param,
                        unsigned char out[32])
{
    if (sodium_init() < 0) {
        return fail(s, AP_EINTERNAL, "content hash: libsodium failed to initialize");
    }
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK) {
        return fail_sqlite(s, rc, "content hash: prepare query");
    }
    if (param != NULL && sqlite3_bind_parameter_count(st) >= 1) {
        sqlite3_bind_text(st, 1, param, -1, SQLITE_TRANSIENT);
    }
    crypto_hash_sha256_state h;
    crypto_hash_sha256_init(&h);
    int err = hash_rows(s, &h, st, "query");
    sqlite3_finalize(st);
    if (err == 0) {
        crypto_hash_sha256_final(&h, out);
    }
    return err;
}

void ap_store_stats(const struct ap_store *s, struct ap_store_stats *out)
{
    *out = s->stats;
}
