/* store: SQLite access shared by every tier (open, migrations, statements, snapshots). */
#ifndef AP_STORE_H
#define AP_STORE_H

#include <sqlite3.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/** An open SQLite database with its statement cache and errmsg. Not thread-safe. */
struct ap_store;

/**
 * How hard a commit waits for the disk; docs/store.md says which tier uses
 * which mode and why. Every file-backed store runs in WAL mode.
 */
enum ap_store_sync {
    /** synchronous=FULL: the database is the only copy (edge shard). */
    AP_STORE_SYNC_FULL = 0,
    /**
     * synchronous=NORMAL: a Raft state machine (regional catalog, controller);
     * the fsynced Raft log is replayed after a crash, so the database may lose
     * its last commits but never its consistency.
     */
    AP_STORE_SYNC_NORMAL = 1,
    /** synchronous=OFF: tests and scratch databases; a crash may corrupt them. */
    AP_STORE_SYNC_OFF = 2,
};

/** One schema step: the SQL that takes the schema from version-1 (or less) to version. */
struct ap_store_migration {
    int version;     /**< > 0, strictly increasing along the array. */
    const char *sql; /**< One or more statements; runs inside a transaction. */
};

/** Counters of the statement cache, for tests and diagnostics. */
struct ap_store_stats {
    uint64_t stmt_hits;      /**< ap_store_prepare calls served from the cache. */
    uint64_t stmt_misses;    /**< ap_store_prepare calls that compiled the SQL. */
    uint64_t stmt_evictions; /**< Cached statements finalized to make room. */
};

/** How long a statement waits for another connection's lock by default. */
#define AP_STORE_BUSY_TIMEOUT_MS 5000

/** Statements the per-store cache keeps before evicting the least recently used idle one. */
#define AP_STORE_STMT_CACHE 64

/** Page cache limit of a store, KiB (PRAGMA cache_size; docs/store.md). */
#define AP_STORE_CACHE_KIB 32768

/** Largest image ap_store_restore accepts. */
#define AP_STORE_MAX_IMAGE ((size_t)1 << 30)

/** ap_store_step: a row is available. */
#define AP_STORE_ROW 1

/** ap_store_step: the statement has finished. */
#define AP_STORE_DONE 0

/**
 * Open (creating it if needed) the database at path, or an in-memory one for
 * ":memory:", in WAL mode with foreign keys on, a busy timeout of
 * AP_STORE_BUSY_TIMEOUT_MS and the given synchronous mode. path is copied.
 * On success *out owns the store; release it with ap_store_close.
 * Errors: AP_EINVAL (bad argument), AP_EIO/AP_EPERM (cannot open),
 * AP_ECORRUPT (not a database), AP_ENOMEM. On failure *out is NULL and, when
 * errmsg (AP_ERRMSG_SIZE bytes) is not NULL, it says what failed:
 * "open /path/x.db: sqlite: unable to open database file".
 */
int ap_store_open(const char *path, enum ap_store_sync sync, struct ap_store **out, char *errmsg);

/** Finalize cached statements and close the database. NULL is fine. */
void ap_store_close(struct ap_store *s);

/** The message of the last failure on this store; owned by the store. */
const char *ap_store_errmsg(const struct ap_store *s);

/** The path the store was opened with; owned by the store. */
const char *ap_store_path(const struct ap_store *s);

/**
 * Raw access for modules that need SQLite directly (functions, hooks, column
 * readers). The connection stays owned by the store; do not close it, and do
 * not leave a transaction or a statement open across store calls that say
 * they need none (ap_store_restore).
 */
sqlite3 *ap_store_db(struct ap_store *s);

/** Change the busy timeout (ms >= 0; 0 fails at once on a lock). Errors: AP_EINVAL. */
int ap_store_set_busy_timeout(struct ap_store *s, int ms);

/**
 * Bring the schema up to date: apply, in order, every step whose version is
 * above the version recorded in the table ap_schema_version, each step and its
 * version row in their own BEGIN IMMEDIATE transaction (a failed step leaves
 * the schema at the previous version). migrations may be empty (n == 0).
 * Errors: AP_EINVAL when versions are not positive and increasing, or when
 * the database is newer than the last step ("database schema version 7 is
 * newer than this program knows (5)"); a step's SQL error (AP_EINTERNAL,
 * AP_EEXIST...) and AP_EBUSY, all with errmsg set. Needs no open transaction.
 */
int ap_store_migrate(struct ap_store *s, const struct ap_store_migration *migrations, size_t n);

/** The schema version recorded by ap_store_migrate (0 for a fresh database) into *version. */
int ap_store_schema_version(struct ap_store *s, int *version);

/**
 * Run plain SQL (one or more statements, no parameters, rows discarded).
 * Errors: the failing statement's code through ap_err_from_sqlite, with
 * errmsg "exec \"<sql>\": sqlite: ...".
 */
int ap_store_exec(struct ap_store *s, const char *sql);

/**
 * A prepared statement for one SQL statement, from the per-store cache keyed
 * by the SQL text: the first call compiles it, later calls return the same
 * statement, reset and with its bindings cleared. The store owns *stmt: never
 * finalize it. It stays valid until ap_store_close, ap_store_restore, or until
 * AP_STORE_STMT_CACHE other SQL texts have been prepared while it was idle (the
 * least recently used idle statement is evicted; a statement between a
 * AP_STORE_ROW and its reset is never evicted). The same text always gives
 * the same statement, and preparing it resets it: do not nest a query inside
 * a loop over the same query.
 * Errors: AP_EINVAL (empty or several statements), AP_EBUSY (every cached
 * statement is running), the translated prepare error (syntax:
 * AP_EINTERNAL), with errmsg set.
 */
int ap_store_prepare(struct ap_store *s, const char *sql, sqlite3_stmt **stmt);

/** Bind UTF-8 text (copied; NULL binds SQL NULL) to the 1-based parameter idx. */
int ap_store_bind_text(struct ap_store *s, sqlite3_stmt *stmt, int idx, const char *value);

/** Bind a 64-bit integer to the 1-based parameter idx. */
int ap_store_bind_int64(struct ap_store *s, sqlite3_stmt *stmt, int idx, int64_t value);

/**
 * Bind a blob of len bytes (copied; len 0 binds an empty blob, never NULL) to
 * the 1-based parameter idx. Errors: AP_ETOOBIG, AP_EINVAL (bad index).
 */
int ap_store_bind_blob(struct ap_store *s, sqlite3_stmt *stmt, int idx, const void *data,
                       size_t len);

/** Bind SQL NULL to the 1-based parameter idx. */
int ap_store_bind_null(struct ap_store *s, sqlite3_stmt *stmt, int idx);

/**
 * Step a statement: AP_STORE_ROW when a row is available (read it with
 * sqlite3_column_*), AP_STORE_DONE when finished, or a negative AP_E* code
 * (AP_EEXIST for constraints, AP_EBUSY, AP_EIO...) with errmsg
 * "step \"<sql>\": sqlite: ...". On DONE or error the statement is reset;
 * a caller that stops before DONE calls ap_store_reset.
 */
int ap_store_step(struct ap_store *s, sqlite3_stmt *stmt);

/**
 * Step a statement that must not return rows (INSERT, UPDATE...): 0, AP_EINVAL
 * when it returns a row, or the step error. The statement is reset in every case.
 */
int ap_store_step_done(struct ap_store *s, sqlite3_stmt *stmt);

/** Reset a statement that was left before AP_STORE_DONE, releasing its read lock. */
void ap_store_reset(sqlite3_stmt *stmt);

/** Whether a transaction is open on the store's connection. */
bool ap_store_in_transaction(struct ap_store *s);

/** BEGIN IMMEDIATE: take the write lock now (waiting up to the busy timeout). Errors: AP_EBUSY...
 */
int ap_store_begin(struct ap_store *s);

/** COMMIT. On error the transaction stays open and the caller rolls back. */
int ap_store_commit(struct ap_store *s);

/** ROLLBACK of the open transaction; 0 when none is open. */
int ap_store_rollback(struct ap_store *s);

/**
 * Open a savepoint named name (letters, digits, '_', not starting with a
 * digit, at most 64 bytes) inside the current transaction, so one command can
 * be undone without undoing the others. Errors: AP_EINVAL for a bad name.
 */
int ap_store_savepoint(struct ap_store *s, const char *name);

/** Keep the work done since savepoint name and forget the savepoint. */
int ap_store_release(struct ap_store *s, const char *name);

/**
 * Undo the work done since savepoint name and forget the savepoint (ROLLBACK
 * TO then RELEASE); the enclosing transaction and earlier work stay.
 */
int ap_store_rollback_to(struct ap_store *s, const char *name);

/**
 * Copy the whole "main" database (as this connection sees it, uncommitted
 * changes of an open transaction included) into *buf, *len bytes: a Raft
 * snapshot. The caller owns *buf and frees it with ap_free. Errors: AP_ENOMEM,
 * AP_EINVAL (empty database), translated SQLite errors.
 */
int ap_store_serialize(struct ap_store *s, uint8_t **buf, size_t *len);

/**
 * Replace the database content with an image from ap_store_serialize (buf is
 * not kept). The image is checked (size, header, page size, quick_check) on a
 * private in-memory copy, then copied into the live database in one
 * transaction, so a file-backed store stays durable and file-backed, and a
 * failed restore leaves the content as it was. Cached statements are
 * finalized. Needs no open transaction and no running statement.
 * Errors: AP_ECORRUPT for an image that is not a sound database (hostile or
 * truncated bytes never crash), AP_ETOOBIG, AP_EBUSY (transaction open,
 * another connection holds a lock), AP_ENOMEM, AP_EIO; errmsg says which.
 */
int ap_store_restore(struct ap_store *s, const uint8_t *buf, size_t len);

/**
 * SHA-256 of the rows of the named tables (NULL-terminated list), each in
 * primary-key order (rowid order without a declared key), with column names,
 * types and values encoded unambiguously (docs/store.md): equal for replicas
 * with equal content. Errors: AP_ENOTFOUND (no such table), AP_EINVAL.
 */
int ap_store_content_hash(struct ap_store *s, const char *const *tables, unsigned char out[32]);

/**
 * SHA-256 of the rows a SELECT returns, in the same encoding as
 * ap_store_content_hash (column names, typed values, row count): for
 * comparing a projection of two different schemas, e.g. a site's instances in
 * its shard and in its region's catalog. param, when not NULL, is bound to ?1.
 * The query must order its rows. Errors: AP_EINVAL (bad SQL), AP_EIO.
 */
int ap_store_query_hash(struct ap_store *s, const char *sql, const char *param,
                        unsigned char out[32]);

/** Statement cache counters into *out. */
void ap_store_stats(const struct ap_store *s, struct ap_store_stats *out);

#endif
