/* Unit tests for store: open, migrations, statement cache, transactions, snapshots, hashing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "ap/base.h"
#include "ap/err.h"
#include "ap/log.h"
#include "ap/store.h"

#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct fixture {
    char dir[64];
    char path[128];
};

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    if (f == NULL) {
        return -1;
    }
    strcpy(f->dir, "/tmp/ap-test-store.XXXXXX");
    if (mkdtemp(f->dir) == NULL) {
        free(f);
        return -1;
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    nftw(f->dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

/* A path inside the test's directory; valid until the next call. */
static const char *tmp_path(void **state, const char *name)
{
    struct fixture *f = *state;
    snprintf(f->path, sizeof f->path, "%s/%s", f->dir, name);
    return f->path;
}

static struct ap_store *open_ok(const char *path, enum ap_store_sync sync)
{
    char errmsg[AP_ERRMSG_SIZE] = "";
    struct ap_store *s = NULL;
    int rc = ap_store_open(path, sync, &s, errmsg);
    if (rc != 0) {
        fail_msg("open %s: %s", path, errmsg);
    }
    assert_non_null(s);
    return s;
}

/* Assert that a store call succeeded, showing the store's message when it did not. */
static void ok(struct ap_store *s, int rc)
{
    if (rc != 0) {
        fail_msg("%s (%s)", ap_store_errmsg(s), ap_strerror(rc));
    }
}

static int64_t query_int(struct ap_store *s, const char *sql)
{
    sqlite3_stmt *st;
    assert_int_equal(ap_store_prepare(s, sql, &st), 0);
    assert_int_equal(ap_store_step(s, st), AP_STORE_ROW);
    int64_t v = sqlite3_column_int64(st, 0);
    ap_store_reset(st);
    return v;
}

static const char *query_text(struct ap_store *s, const char *sql, char *out, size_t size)
{
    sqlite3_stmt *st;
    assert_int_equal(ap_store_prepare(s, sql, &st), 0);
    assert_int_equal(ap_store_step(s, st), AP_STORE_ROW);
    const unsigned char *t = sqlite3_column_text(st, 0);
    ap_strlcpy(out, t != NULL ? (const char *)t : "(null)", size);
    ap_store_reset(st);
    return out;
}

static void insert_kv(struct ap_store *s, int64_t k, const char *v)
{
    sqlite3_stmt *st;
    assert_int_equal(ap_store_prepare(s, "INSERT INTO kv (k, v) VALUES (?, ?)", &st), 0);
    assert_int_equal(ap_store_bind_int64(s, st, 1, k), 0);
    assert_int_equal(ap_store_bind_text(s, st, 2, v), 0);
    int rc = ap_store_step_done(s, st);
    if (rc != 0) {
        fail_msg("insert %lld: %s", (long long)k, ap_store_errmsg(s));
    }
}

static const struct ap_store_migration kv_schema[] = {
    {1, "CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT NOT NULL)"},
};

static void test_open_close(void **state)
{
    char mode[16];
    struct ap_store *s = open_ok(tmp_path(state, "a.db"), AP_STORE_SYNC_FULL);
    assert_string_equal(query_text(s, "PRAGMA journal_mode", mode, sizeof mode), "wal");
    assert_int_equal(query_int(s, "PRAGMA foreign_keys"), 1);
    assert_int_equal(query_int(s, "PRAGMA synchronous"), 2);
    assert_false(ap_store_in_transaction(s));
    assert_string_equal(ap_store_path(s), tmp_path(state, "a.db"));
    assert_non_null(ap_store_db(s));
    ap_store_close(s);
    assert_int_equal(access(tmp_path(state, "a.db"), F_OK), 0);

    s = open_ok(tmp_path(state, "b.db"), AP_STORE_SYNC_NORMAL);
    assert_int_equal(query_int(s, "PRAGMA synchronous"), 1);
    ap_store_close(s);
    s = open_ok(":memory:", AP_STORE_SYNC_OFF);
    assert_int_equal(query_int(s, "PRAGMA synchronous"), 0);
    assert_int_equal(query_int(s, "PRAGMA foreign_keys"), 1);
    ap_store_close(s);
    ap_store_close(NULL);
}

static void test_open_errors(void **state)
{
    char errmsg[AP_ERRMSG_SIZE] = "";
    struct ap_store *s = (struct ap_store *)&s;

    int rc = ap_store_open("/nonexistent-ap-dir/x.db", AP_STORE_SYNC_FULL, &s, errmsg);
    assert_int_equal(rc, AP_EIO);
    assert_null(s);
    assert_string_equal(errmsg,
                        "open /nonexistent-ap-dir/x.db: sqlite: unable to open database file");

    /* A file that is not a database is refused, not overwritten. */
    const char *junk = tmp_path(state, "junk.db");
    FILE *fp = fopen(junk, "wb");
    assert_non_null(fp);
    for (int i = 0; i < 4096; i++) {
        fputc((i * 7 + 3) & 0xff, fp);
    }
    fclose(fp);
    rc = ap_store_open(junk, AP_STORE_SYNC_FULL, &s, errmsg);
    assert_int_equal(rc, AP_ECORRUPT);
    assert_null(s);
    assert_non_null(strstr(errmsg, "file is not a database"));
    assert_memory_equal(errmsg, "open ", 5);

    rc = ap_store_open(tmp_path(state, "c.db"), (enum ap_store_sync)42, &s, errmsg);
    assert_int_equal(rc, AP_EINVAL);
    assert_null(s);
    rc = ap_store_open(NULL, AP_STORE_SYNC_OFF, &s, NULL);
    assert_int_equal(rc, AP_EINVAL);
}

static const struct ap_store_migration steps[] = {
    {1, "CREATE TABLE site (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)"},
    {2, "CREATE TABLE inst (id INTEGER PRIMARY KEY,"
        " site INTEGER NOT NULL REFERENCES site(id));"
        " INSERT INTO site (name) VALUES ('seed')"},
    {5, "ALTER TABLE inst ADD COLUMN state TEXT NOT NULL DEFAULT 'new'"},
};

static void test_migrations(void **state)
{
    const char *path = tmp_path(state, "m.db");
    struct ap_store *s = open_ok(path, AP_STORE_SYNC_OFF);
    int version = -1;
    assert_int_equal(ap_store_schema_version(s, &version), 0);
    assert_int_equal(version, 0);

    /* Up to version 2 first, as an older program would. */
    assert_int_equal(ap_store_migrate(s, steps, 2), 0);
    assert_int_equal(ap_store_schema_version(s, &version), 0);
    assert_int_equal(version, 2);
    assert_int_equal(ap_store_migrate(s, steps, AP_ARRAY_LEN(steps)), 0);
    assert_int_equal(ap_store_schema_version(s, &version), 0);
    assert_int_equal(version, 5);
    assert_int_equal(ap_store_exec(s, "INSERT INTO inst (site, state) VALUES (1, 'run')"), 0);
    /* Foreign keys are enforced. */
    assert_int_equal(ap_store_exec(s, "INSERT INTO inst (site) VALUES (99)"), AP_EEXIST);
    assert_non_null(strstr(ap_store_errmsg(s), "FOREIGN KEY constraint failed"));
    ap_store_close(s);

    /* Re-open: nothing is applied again (step 2's CREATE and INSERT would show). */
    s = open_ok(path, AP_STORE_SYNC_OFF);
    assert_int_equal(ap_store_migrate(s, steps, AP_ARRAY_LEN(steps)), 0);
    assert_int_equal(query_int(s, "SELECT count(*) FROM site"), 1);
    assert_int_equal(query_int(s, "SELECT count(*) FROM ap_schema_version"), 3);

    /* A failing step is undone as a whole and the version stays. */
    const struct ap_store_migration bad[] = {
        steps[0],
        steps[1],
        steps[2],
        {6, "CREATE TABLE w (x); INSERT INTO nosuch VALUES (1)"},
    };
    assert_int_equal(ap_store_migrate(s, bad, AP_ARRAY_LEN(bad)), AP_EINTERNAL);
    assert_non_null(strstr(ap_store_errmsg(s), "migrate to version 6"));
    assert_non_null(strstr(ap_store_errmsg(s), "no such table: nosuch"));
    assert_false(ap_store_in_transaction(s));
    assert_int_equal(ap_store_schema_version(s, &version), 0);
    assert_int_equal(version, 5);
    assert_int_equal(query_int(s, "SELECT count(*) FROM sqlite_master WHERE name = 'w'"), 0);

    /* Malformed step lists. */
    const struct ap_store_migration unordered[] = {{2, "SELECT 1"}, {1, "SELECT 1"}};
    assert_int_equal(ap_store_migrate(s, unordered, 2), AP_EINVAL);
    const struct ap_store_migration zero[] = {{0, "SELECT 1"}};
    assert_int_equal(ap_store_migrate(s, zero, 1), AP_EINVAL);
    const struct ap_store_migration nosql[] = {{7, NULL}};
    assert_int_equal(ap_store_migrate(s, nosql, 1), AP_EINVAL);
    ap_store_close(s);
}

static void test_refuse_newer(void **state)
{
    const char *path = tmp_path(state, "n.db");
    struct ap_store *s = open_ok(path, AP_STORE_SYNC_OFF);
    assert_int_equal(ap_store_migrate(s, steps, AP_ARRAY_LEN(steps)), 0);
    ap_store_close(s);

    s = open_ok(path, AP_STORE_SYNC_OFF);
    assert_int_equal(ap_store_migrate(s, steps, 2), AP_EINVAL);
    assert_string_equal(ap_store_errmsg(s), "migrate: database schema version 5 is newer than "
                                            "this program knows (2)");
    assert_int_equal(ap_store_migrate(s, steps, 0), AP_EINVAL);
    ap_store_close(s);
}

static void test_stmt_cache(void **state)
{
    (void)state;
    struct ap_store *s = open_ok(":memory:", AP_STORE_SYNC_OFF);
    struct ap_store_stats st0, st1;
    assert_int_equal(ap_store_migrate(s, kv_schema, 1), 0);
    ap_store_stats(s, &st0);

    sqlite3_stmt *a, *b, *c;
    assert_int_equal(ap_store_prepare(s, "SELECT ?1 IS NULL", &a), 0);
    assert_int_equal(ap_store_bind_int64(s, a, 1, 7), 0);
    assert_int_equal(ap_store_step(s, a), AP_STORE_ROW);
    assert_int_equal(sqlite3_column_int(a, 0), 0);
    /* Same text: same statement, reset and with its bindings cleared. */
    assert_int_equal(ap_store_prepare(s, "SELECT ?1 IS NULL", &b), 0);
    assert_ptr_equal(a, b);
    assert_int_equal(ap_store_step(s, b), AP_STORE_ROW);
    assert_int_equal(sqlite3_column_int(b, 0), 1);
    ap_store_reset(b);
    assert_int_equal(ap_store_prepare(s, "SELECT ?1 IS NOT NULL", &c), 0);
    assert_ptr_not_equal(a, c);
    ap_store_stats(s, &st1);
    assert_int_equal(st1.stmt_hits - st0.stmt_hits, 1);
    assert_int_equal(st1.stmt_misses - st0.stmt_misses, 2);

    /* One statement per prepare; errors say what failed. */
    assert_int_equal(ap_store_prepare(s, "SELECT 1; SELECT 2", &a), AP_EINVAL);
    assert_null(a);
    assert_non_null(strstr(ap_store_errmsg(s), "more than one statement"));
    assert_int_equal(ap_store_prepare(s, "SELECT 1; -- trailing comment", &a), 0);
    assert_int_equal(ap_store_prepare(s, "  ", &a), AP_EINVAL);
    assert_int_equal(ap_store_prepare(s, "SELEC 1", &a), AP_EINTERNAL);
    assert_non_null(strstr(ap_store_errmsg(s), "prepare \"SELEC 1\": sqlite: near \"SELEC\""));

    /* A running statement survives a flood of other statements; idle ones are evicted. */
    for (int i = 0; i < 3; i++) {
        insert_kv(s, i, "x");
    }
    sqlite3_stmt *running;
    assert_int_equal(ap_store_prepare(s, "SELECT k FROM kv ORDER BY k", &running), 0);
    assert_int_equal(ap_store_step(s, running), AP_STORE_ROW);
    assert_int_equal(sqlite3_column_int64(running, 0), 0);
    char sql[64];
    for (int i = 0; i < 2 * AP_STORE_STMT_CACHE; i++) {
        sqlite3_stmt *tmp;
        snprintf(sql, sizeof sql, "SELECT %d", i);
        assert_int_equal(ap_store_prepare(s, sql, &tmp), 0);
        assert_int_equal(ap_store_step(s, tmp), AP_STORE_ROW);
        assert_int_equal(sqlite3_column_int(tmp, 0), i);
        ap_store_reset(tmp);
    }
    assert_int_equal(ap_store_step(s, running), AP_STORE_ROW);
    assert_int_equal(sqlite3_column_int64(running, 0), 1);
    assert_int_equal(ap_store_step(s, running), AP_STORE_ROW);
    assert_int_equal(ap_store_step(s, running), AP_STORE_DONE);
    ap_store_stats(s, &st1);
    assert_true(st1.stmt_evictions >= (uint64_t)AP_STORE_STMT_CACHE);
    ap_store_close(s);
}

static void test_bind_step(void **state)
{
    (void)state;
    struct ap_store *s = open_ok(":memory:", AP_STORE_SYNC_OFF);
    assert_int_equal(ap_store_exec(s, "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE,"
                                      " n INTEGER, data BLOB)"),
                     0);
    const char *ins = "INSERT INTO t (id, name, n, data) VALUES (?, ?, ?, ?)";
    const uint8_t blob[] = {0, 1, 2, 0xff, 0};
    sqlite3_stmt *st;
    assert_int_equal(ap_store_prepare(s, ins, &st), 0);
    assert_int_equal(ap_store_bind_int64(s, st, 1, 1), 0);
    assert_int_equal(ap_store_bind_text(s, st, 2, "alpha"), 0);
    assert_int_equal(ap_store_bind_int64(s, st, 3, INT64_MIN), 0);
    assert_int_equal(ap_store_bind_blob(s, st, 4, blob, sizeof blob), 0);
    assert_int_equal(ap_store_step_done(s, st), 0);

    assert_int_equal(ap_store_prepare(s, ins, &st), 0);
    assert_int_equal(ap_store_bind_int64(s, st, 1, 2), 0);
    assert_int_equal(ap_store_bind_text(s, st, 2, NULL), 0);
    assert_int_equal(ap_store_bind_null(s, st, 3), 0);
    assert_int_equal(ap_store_bind_blob(s, st, 4, NULL, 0), 0);
    assert_int_equal(ap_store_step_done(s, st), 0);

    assert_int_equal(ap_store_prepare(s, "SELECT name, n, data FROM t WHERE id = ?", &st), 0);
    assert_int_equal(ap_store_bind_int64(s, st, 1, 1), 0);
    assert_int_equal(ap_store_step(s, st), AP_STORE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "alpha");
    assert_true(sqlite3_column_int64(st, 1) == INT64_MIN);
    assert_int_equal(sqlite3_column_bytes(st, 2), sizeof blob);
    assert_memory_equal(sqlite3_column_blob(st, 2), blob, sizeof blob);
    assert_int_equal(ap_store_step(s, st), AP_STORE_DONE);

    assert_int_equal(ap_store_prepare(s,
                                      "SELECT name IS NULL, n IS NULL, typeof(data),"
                                      " length(data) FROM t WHERE id = 2",
                                      &st),
                     0);
    assert_int_equal(ap_store_step(s, st), AP_STORE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 1);
    assert_int_equal(sqlite3_column_int(st, 1), 1);
    assert_string_equal((const char *)sqlite3_column_text(st, 2), "blob");
    assert_int_equal(sqlite3_column_int(st, 3), 0);
    ap_store_reset(st);

    /* Constraint errors come back translated, with the statement named. */
    assert_int_equal(ap_store_prepare(s, ins, &st), 0);
    assert_int_equal(ap_store_bind_int64(s, st, 1, 3), 0);
    assert_int_equal(ap_store_bind_text(s, st, 2, "alpha"), 0);
    assert_int_equal(ap_store_step_done(s, st), AP_EEXIST);
    assert_string_equal(ap_store_errmsg(s), "step \"INSERT INTO t (id, name, n, data) VALUES "
                                            "(?, ?, ?, ?)\": sqlite: UNIQUE constraint failed: "
                                            "t.name");
    /* The statement was reset: it can run again at once. */
    assert_int_equal(ap_store_bind_text(s, st, 2, "beta"), 0);
    assert_int_equal(ap_store_step_done(s, st), 0);

    assert_int_equal(ap_store_bind_int64(s, st, 9, 1), AP_EINVAL);
    assert_non_null(strstr(ap_store_errmsg(s), "bind int64 9"));
    assert_int_equal(ap_store_prepare(s, "SELECT 1", &st), 0);
    assert_int_equal(ap_store_step_done(s, st), AP_EINVAL);
    assert_int_equal(query_int(s, "SELECT count(*) FROM t"), 3);
    ap_store_close(s);
}

static void test_transactions(void **state)
{
    struct ap_store *s = open_ok(tmp_path(state, "t.db"), AP_STORE_SYNC_OFF);
    assert_int_equal(ap_store_migrate(s, kv_schema, 1), 0);
    assert_int_equal(ap_store_rollback(s), 0);

    assert_int_equal(ap_store_begin(s), 0);
    assert_true(ap_store_in_transaction(s));
    insert_kv(s, 1, "gone");
    assert_int_equal(ap_store_rollback(s), 0);
    assert_false(ap_store_in_transaction(s));
    assert_int_equal(query_int(s, "SELECT count(*) FROM kv"), 0);

    /* Three commands in one transaction; the second fails and only it is undone. */
    assert_int_equal(ap_store_begin(s), 0);
    assert_int_equal(ap_store_savepoint(s, "cmd"), 0);
    insert_kv(s, 1, "one");
    assert_int_equal(ap_store_release(s, "cmd"), 0);
    assert_int_equal(ap_store_savepoint(s, "cmd"), 0);
    insert_kv(s, 2, "two");
    assert_int_equal(ap_store_exec(s, "UPDATE kv SET v = 'changed' WHERE k = 1"), 0);
    assert_int_equal(ap_store_exec(s, "INSERT INTO kv (k, v) VALUES (1, 'dup')"), AP_EEXIST);
    assert_int_equal(ap_store_rollback_to(s, "cmd"), 0);
    assert_true(ap_store_in_transaction(s));
    assert_int_equal(ap_store_savepoint(s, "cmd_3"), 0);
    insert_kv(s, 3, "three");
    assert_int_equal(ap_store_release(s, "cmd_3"), 0);
    /* The rolled-back savepoint was dropped too. */
    assert_int_equal(ap_store_release(s, "cmd"), AP_EINTERNAL);
    assert_non_null(strstr(ap_store_errmsg(s), "no such savepoint"));
    assert_int_equal(ap_store_commit(s), 0);
    assert_false(ap_store_in_transaction(s));
    assert_int_equal(query_int(s, "SELECT count(*) FROM kv"), 2);
    assert_int_equal(query_int(s, "SELECT sum(k) FROM kv"), 4);
    char v[16];
    assert_string_equal(query_text(s, "SELECT v FROM kv WHERE k = 1", v, sizeof v), "one");

    assert_int_equal(ap_store_savepoint(s, "bad name"), AP_EINVAL);
    assert_int_equal(ap_store_savepoint(s, "x; DROP TABLE kv"), AP_EINVAL);
    assert_int_equal(ap_store_savepoint(s, "1st"), AP_EINVAL);
    assert_int_equal(ap_store_savepoint(s, ""), AP_EINVAL);
    assert_int_equal(ap_store_rollback_to(s, NULL), AP_EINVAL);
    assert_int_equal(ap_store_commit(s), AP_EINTERNAL);
    assert_non_null(strstr(ap_store_errmsg(s), "commit"));
    ap_store_close(s);
}

static void fill_snapshot_source(struct ap_store *s)
{
    assert_int_equal(ap_store_migrate(s, steps, AP_ARRAY_LEN(steps)), 0);
    assert_int_equal(ap_store_begin(s), 0);
    for (int i = 0; i < 200; i++) {
        char name[32];
        sqlite3_stmt *st;
        snprintf(name, sizeof name, "site-%03d", i);
        assert_int_equal(ap_store_prepare(s, "INSERT INTO site (name) VALUES (?)", &st), 0);
        assert_int_equal(ap_store_bind_text(s, st, 1, name), 0);
        assert_int_equal(ap_store_step_done(s, st), 0);
    }
    assert_int_equal(ap_store_exec(s, "INSERT INTO inst (site, state) SELECT id, 'run' FROM site"),
                     0);
    assert_int_equal(ap_store_commit(s), 0);
}

static const char *const snap_tables[] = {"site", "inst", "ap_schema_version", NULL};

static void test_serialize_restore(void **state)
{
    unsigned char ha[32], hb[32];
    char mode[16];
    struct ap_store *a = open_ok(tmp_path(state, "src.db"), AP_STORE_SYNC_NORMAL);
    fill_snapshot_source(a);
    uint8_t *img = NULL;
    size_t len = 0;
    ok(a, ap_store_serialize(a, &img, &len));
    assert_non_null(img);
    assert_true(len >= 4096 && len % 4096 == 0);
    assert_memory_equal(img, "SQLite format 3", 16);
    /* RAFT-NOTES pitfall 2 is live: the image is marked WAL. */
    assert_int_equal(img[18], 2);
    assert_int_equal(img[19], 2);
    assert_int_equal(ap_store_content_hash(a, snap_tables, ha), 0);

    const char *bpath = tmp_path(state, "dst.db");
    struct ap_store *b = open_ok(bpath, AP_STORE_SYNC_FULL);
    assert_int_equal(ap_store_exec(b, "CREATE TABLE old (x); INSERT INTO old VALUES (1)"), 0);
    sqlite3_stmt *st;
    assert_int_equal(ap_store_prepare(b, "SELECT count(*) FROM old", &st), 0);
    ok(b, ap_store_restore(b, img, len));
    assert_int_equal(query_int(b, "SELECT count(*) FROM site"), 201);
    assert_int_equal(query_int(b, "SELECT count(*) FROM inst"), 201);
    assert_int_equal(query_int(b, "SELECT count(*) FROM sqlite_master WHERE name = 'old'"), 0);
    assert_int_equal(ap_store_content_hash(b, snap_tables, hb), 0);
    assert_memory_equal(ha, hb, 32);
    /* The restored store stays a WAL file database and takes writes. */
    assert_string_equal(query_text(b, "PRAGMA journal_mode", mode, sizeof mode), "wal");
    assert_int_equal(ap_store_exec(b, "INSERT INTO site (name) VALUES ('after')"), 0);
    ap_store_close(b);

    /* Durability: the image went into the file, not into a private memory copy. */
    b = open_ok(bpath, AP_STORE_SYNC_FULL);
    assert_int_equal(query_int(b, "SELECT count(*) FROM site"), 202);
    int version = 0;
    assert_int_equal(ap_store_schema_version(b, &version), 0);
    assert_int_equal(version, 5);
    assert_int_equal(ap_store_migrate(b, steps, AP_ARRAY_LEN(steps)), 0);
    assert_int_equal(ap_store_exec(b, "DELETE FROM site WHERE name = 'after'"), 0);
    assert_int_equal(ap_store_content_hash(b, snap_tables, hb), 0);
    assert_memory_equal(ha, hb, 32);
    assert_string_equal(query_text(b, "PRAGMA journal_mode", mode, sizeof mode), "wal");
    assert_string_equal(query_text(b, "PRAGMA integrity_check", mode, sizeof mode), "ok");
    ap_store_close(b);

    /* An in-memory store restores the same image. */
    struct ap_store *m = open_ok(":memory:", AP_STORE_SYNC_OFF);
    ok(m, ap_store_restore(m, img, len));
    assert_int_equal(ap_store_content_hash(m, snap_tables, hb), 0);
    assert_memory_equal(ha, hb, 32);
    ap_store_close(m);
    ap_free(img);
    ap_store_close(a);
}

/* An image with another page size (and no WAL marks) still restores into a WAL file. */
static void test_restore_other_page_size(void **state)
{
    sqlite3 *raw = NULL;
    assert_int_equal(sqlite3_open(":memory:", &raw), SQLITE_OK);
    assert_int_equal(sqlite3_exec(raw,
                                  "PRAGMA page_size=8192; CREATE TABLE kv (k INTEGER PRIMARY KEY,"
                                  " v TEXT NOT NULL); INSERT INTO kv VALUES (1, 'big-pages')",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_int64 size = 0;
    unsigned char *img = sqlite3_serialize(raw, "main", &size, 0);
    assert_non_null(img);
    sqlite3_close(raw);

    const char *path = tmp_path(state, "pg.db");
    struct ap_store *s = open_ok(path, AP_STORE_SYNC_FULL);
    assert_int_equal(ap_store_migrate(s, steps, 1), 0);
    ok(s, ap_store_restore(s, img, (size_t)size));
    sqlite3_free(img);
    ap_store_close(s);

    char text[32];
    s = open_ok(path, AP_STORE_SYNC_FULL);
    assert_string_equal(query_text(s, "SELECT v FROM kv", text, sizeof text), "big-pages");
    assert_int_equal(query_int(s, "PRAGMA page_size"), 8192);
    assert_string_equal(query_text(s, "PRAGMA journal_mode", text, sizeof text), "wal");
    assert_int_equal(query_int(s, "SELECT count(*) FROM sqlite_master WHERE name = 'site'"), 0);
    ap_store_close(s);
}

static void expect_corrupt(struct ap_store *s, const uint8_t *buf, size_t len,
                           const unsigned char before[32])
{
    unsigned char after[32];
    int rc = ap_store_restore(s, buf, len);
    if (rc != AP_ECORRUPT) {
        fail_msg("restore of %zu bytes gave %d (%s)", len, rc, ap_store_errmsg(s));
    }
    assert_memory_equal(ap_store_errmsg(s), "restore: ", 9);
    /* The store is untouched and usable. */
    assert_int_equal(ap_store_content_hash(s, snap_tables, after), 0);
    assert_memory_equal(before, after, 32);
    assert_int_equal(ap_store_begin(s), 0);
    assert_int_equal(ap_store_exec(s, "INSERT INTO site (name) VALUES ('probe')"), 0);
    assert_int_equal(ap_store_rollback(s), 0);
}

static void test_restore_garbage(void **state)
{
    unsigned char before[32];
    struct ap_store *s = open_ok(tmp_path(state, "g.db"), AP_STORE_SYNC_OFF);
    fill_snapshot_source(s);
    uint8_t *img = NULL;
    size_t len = 0;
    ok(s, ap_store_serialize(s, &img, &len));
    assert_int_equal(ap_store_content_hash(s, snap_tables, before), 0);
    uint8_t *bad = ap_malloc(len);
    assert_non_null(bad);

    expect_corrupt(s, NULL, 0, before);
    expect_corrupt(s, img, 0, before);
    expect_corrupt(s, img, 99, before);
    expect_corrupt(s, img, 512, before);
    expect_corrupt(s, img, len / 2 + 1, before);
    expect_corrupt(s, img, len - 1, before);
    /* Whole pages but cut short: the b-trees point past the end. */
    expect_corrupt(s, img, len - 4096, before);
    expect_corrupt(s, img, 4096, before);

    memset(bad, 0, len);
    expect_corrupt(s, bad, len, before);
    uint32_t x = 12345;
    for (size_t i = 0; i < len; i++) {
        x = x * 1103515245u + 12345u;
        bad[i] = (uint8_t)(x >> 16);
    }
    expect_corrupt(s, bad, len, before);

    /* A valid header over scrambled pages. */
    memcpy(bad, img, 100);
    expect_corrupt(s, bad, len, before);
    /* Bad page sizes and format bytes. */
    memcpy(bad, img, len);
    bad[16] = 0x03;
    bad[17] = 0x00;
    expect_corrupt(s, bad, len, before);
    memcpy(bad, img, len);
    bad[18] = 3;
    expect_corrupt(s, bad, len, before);
    memcpy(bad, img, len);
    bad[20] = 8;
    expect_corrupt(s, bad, len, before);
    /* A scribbled interior page. */
    memcpy(bad, img, len);
    memset(bad + 2 * 4096, 0xa5, 4096);
    expect_corrupt(s, bad, len, before);

    /* Restoring inside a transaction is refused; afterwards the image still restores. */
    assert_int_equal(ap_store_begin(s), 0);
    assert_int_equal(ap_store_restore(s, img, len), AP_EBUSY);
    assert_int_equal(ap_store_rollback(s), 0);
    assert_int_equal(ap_store_restore(s, img, len), 0);
    ap_free(bad);
    ap_free(img);
    ap_store_close(s);
}

static void test_content_hash(void **state)
{
    (void)state;
    unsigned char h1[32], h2[32], h3[32];
    const char *const kv[] = {"kv", NULL};
    struct ap_store *a = open_ok(":memory:", AP_STORE_SYNC_OFF);
    struct ap_store *b = open_ok(":memory:", AP_STORE_SYNC_OFF);
    assert_int_equal(ap_store_migrate(a, kv_schema, 1), 0);
    assert_int_equal(ap_store_migrate(b, kv_schema, 1), 0);
    for (int i = 0; i < 10; i++) {
        insert_kv(a, i, "v");
        insert_kv(b, 9 - i, "v");
    }
    assert_int_equal(ap_store_content_hash(a, kv, h1), 0);
    assert_int_equal(ap_store_content_hash(b, kv, h2), 0);
    assert_memory_equal(h1, h2, 32);

    assert_int_equal(ap_store_exec(b, "UPDATE kv SET v = 'w' WHERE k = 4"), 0);
    assert_int_equal(ap_store_content_hash(b, kv, h2), 0);
    assert_memory_not_equal(h1, h2, 32);
    assert_int_equal(ap_store_exec(b, "UPDATE kv SET v = 'v' WHERE k = 4"), 0);
    assert_int_equal(ap_store_content_hash(b, kv, h2), 0);
    assert_memory_equal(h1, h2, 32);

    /* Moving a byte across a value boundary changes the hash. */
    assert_int_equal(ap_store_exec(a, "CREATE TABLE p (a TEXT, b TEXT, PRIMARY KEY (a, b))"
                                      " WITHOUT ROWID; INSERT INTO p VALUES ('ab', 'c')"),
                     0);
    assert_int_equal(ap_store_exec(b, "CREATE TABLE p (a TEXT, b TEXT, PRIMARY KEY (a, b))"
                                      " WITHOUT ROWID; INSERT INTO p VALUES ('a', 'bc')"),
                     0);
    const char *const kvp[] = {"kv", "p", NULL};
    assert_int_equal(ap_store_content_hash(a, kvp, h1), 0);
    assert_int_equal(ap_store_content_hash(b, kvp, h2), 0);
    assert_memory_not_equal(h1, h2, 32);

    /* An integer and the same digits as text differ; a table without a key hashes in rowid order.
     */
    assert_int_equal(ap_store_exec(a, "CREATE TABLE loose (x); INSERT INTO loose VALUES (1)"), 0);
    assert_int_equal(ap_store_exec(b, "CREATE TABLE loose (x); INSERT INTO loose VALUES ('1')"), 0);
    const char *const loose[] = {"loose", NULL};
    assert_int_equal(ap_store_content_hash(a, loose, h1), 0);
    assert_int_equal(ap_store_content_hash(b, loose, h2), 0);
    assert_memory_not_equal(h1, h2, 32);

    /* The empty list is the hash of nothing; a missing table is an error. */
    const char *const none[] = {NULL};
    assert_int_equal(ap_store_content_hash(a, none, h3), 0);
    const unsigned char empty_sha256[4] = {0xe3, 0xb0, 0xc4, 0x42};
    assert_memory_equal(h3, empty_sha256, 4);
    const char *const missing[] = {"kv", "nope", NULL};
    assert_int_equal(ap_store_content_hash(a, missing, h3), AP_ENOTFOUND);
    assert_string_equal(ap_store_errmsg(a), "content hash: no table \"nope\"");
    const char *const hostile[] = {"kv\"; DROP TABLE kv; --", NULL};
    assert_int_equal(ap_store_content_hash(a, hostile, h3), AP_ENOTFOUND);
    assert_int_equal(query_int(a, "SELECT count(*) FROM kv"), 10);
    ap_store_close(a);
    ap_store_close(b);
}

/* A projection of two differently shaped tables hashes alike when the projected rows agree. */
static void test_query_hash(void **state)
{
    (void)state;
    unsigned char h1[32], h2[32];
    struct ap_store *a = open_ok(":memory:", AP_STORE_SYNC_OFF);
    struct ap_store *b = open_ok(":memory:", AP_STORE_SYNC_OFF);
    assert_int_equal(ap_store_exec(a, "CREATE TABLE t(id TEXT PRIMARY KEY, site TEXT, v INTEGER);"
                                      "INSERT INTO t VALUES ('x', 's1', 1), ('y', 's2', 2),"
                                      " ('z', 's1', 3)"),
                     0);
    assert_int_equal(ap_store_exec(b, "CREATE TABLE u(v INTEGER, id TEXT, extra TEXT);"
                                      "INSERT INTO u VALUES (3, 'z', 'a'), (1, 'x', 'b')"),
                     0);
    const char *qa = "SELECT id, v FROM t WHERE site = ?1 ORDER BY id";
    const char *qb = "SELECT id, v FROM u ORDER BY id";
    assert_int_equal(ap_store_query_hash(a, qa, "s1", h1), 0);
    assert_int_equal(ap_store_query_hash(b, qb, NULL, h2), 0);
    assert_memory_equal(h1, h2, 32);

    /* One value differs, one row more: different hashes. */
    assert_int_equal(ap_store_exec(b, "UPDATE u SET v = 4 WHERE id = 'z'"), 0);
    assert_int_equal(ap_store_query_hash(b, qb, NULL, h2), 0);
    assert_memory_not_equal(h1, h2, 32);
    assert_int_equal(ap_store_query_hash(a, qa, "s2", h2), 0);
    assert_memory_not_equal(h1, h2, 32);

    /* Bad SQL is an error with a message, not a crash. */
    assert_true(ap_store_query_hash(a, "SELECT nope FROM t", NULL, h2) < 0);
    assert_non_null(strstr(ap_store_errmsg(a), "content hash"));
    ap_store_close(a);
    ap_store_close(b);
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void *commit_later(void *arg)
{
    struct ap_store *holder = arg;
    struct timespec delay = {0, 150 * 1000 * 1000};
    nanosleep(&delay, NULL);
    return (void *)(intptr_t)ap_store_commit(holder);
}

static void test_busy(void **state)
{
    const char *path = tmp_path(state, "busy.db");
    struct ap_store *a = open_ok(path, AP_STORE_SYNC_OFF);
    struct ap_store *b = open_ok(path, AP_STORE_SYNC_OFF);
    assert_int_equal(ap_store_migrate(a, kv_schema, 1), 0);

    /* A short timeout: the second writer gives up with AP_EBUSY after waiting. */
    assert_int_equal(ap_store_set_busy_timeout(b, 50), 0);
    assert_int_equal(ap_store_set_busy_timeout(b, -1), AP_EINVAL);
    assert_int_equal(ap_store_begin(a), 0);
    insert_kv(a, 1, "a");
    double t0 = now_ms();
    assert_int_equal(ap_store_begin(b), AP_EBUSY);
    assert_true(now_ms() - t0 >= 40.0);
    assert_string_equal(ap_store_errmsg(b), "begin: step \"BEGIN IMMEDIATE\": sqlite: database "
                                            "is locked");
    assert_false(ap_store_in_transaction(b));
    /* WAL: the reader is not blocked by the writer and sees the last commit. */
    assert_int_equal(query_int(b, "SELECT count(*) FROM kv"), 0);
    assert_int_equal(ap_store_commit(a), 0);
    assert_int_equal(query_int(b, "SELECT count(*) FROM kv"), 1);

    /* A long timeout: the second writer waits for the first to commit, then proceeds. */
    assert_int_equal(ap_store_set_busy_timeout(b, AP_STORE_BUSY_TIMEOUT_MS), 0);
    assert_int_equal(ap_store_begin(a), 0);
    insert_kv(a, 2, "a");
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, commit_later, a), 0);
    t0 = now_ms();
    int rc = ap_store_begin(b);
    double waited = now_ms() - t0;
    void *res = NULL;
    assert_int_equal(pthread_join(th, &res), 0);
    assert_int_equal((int)(intptr_t)res, 0);
    assert_int_equal(rc, 0);
    assert_true(waited >= 100.0);
    insert_kv(b, 3, "b");
    assert_int_equal(ap_store_commit(b), 0);
    assert_int_equal(query_int(a, "SELECT count(*) FROM kv"), 3);
    ap_store_close(b);
    ap_store_close(a);
}

int main(void)
{
    ap_log_init("test_store", ap_log_level_from_env(AP_LOG_WARN), NULL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_open_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_migrations, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refuse_newer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stmt_cache, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bind_step, setup, teardown),
        cmocka_unit_test_setup_teardown(test_transactions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_serialize_restore, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restore_other_page_size, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restore_garbage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_content_hash, setup, teardown),
        cmocka_unit_test(test_query_hash),
        cmocka_unit_test_setup_teardown(test_busy, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
