/* rsm_fsm: the state-machine half of a replicated SQLite store (a raft_fsm over an ap_store). */
#include "ap/rsm_fsm.h"

#include "ap/base.h"
#include "ap/log.h"
#include "ap/mp.h"
#include "ap/store.h"

#include <msgpack.h>
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>

/* Snapshot image: 8-byte magic+version, 8-byte applied index (big-endian),
 * then the SQLite database file. The index lets restore() skip an image
 * older than what the store already holds (docs/replication.md). */
#define SNAP_MAGIC  "APSNAP01"
#define SNAP_HEADER 16
#define MAX_MEMBERS 16

struct ap_rsm_fsm {
    struct raft_fsm raft_fsm;
    struct ap_store *st;
    struct raft *raft;
    ap_rsm_apply_fn apply;
    void *data;
    bool autocommit;
    bool in_txn;
    uint64_t applied;
    uint64_t snapshots_taken;
    uint64_t snapshots_restored;
    uint64_t snapshot_bytes;                /* Image size of the last snapshot taken. */
    uint64_t entry_bytes, entries;          /* Entries given to apply, and their bytes. */
    struct ap_rsm_batch *last; /* Results of the last applied entry. */
    /* A follower's entries wait here until the end of the loop iteration (docs/replication.md
     * "Followers apply after answering"): raft applies them before it acknowledges the next
     * append, which put the apply on every write's critical path. */
    struct deferred *defer;
    size_t n_defer, cap_defer, defer_bytes;
    /* Asynchronous snapshots (docs/replication.md "Snapshots"): a second, read-only
     * connection whose open read transaction pins the image while a worker copies it. */
    sqlite3 *reader;
    bool reader_in_txn;
    uint64_t snap_index; /* Applied index the pinned image holds. */
    char errmsg[AP_ERRMSG_SIZE];
};

struct deferred {
    uint64_t index;
    uint8_t *buf;
    size_t len;
};

/* A follower stops deferring past these (its store failing, say): raft then sees the error. */
#define MAX_DEFER_ENTRIES 65536
#define MAX_DEFER_BYTES   (256u << 20)

static int apply_now(struct ap_rsm_fsm *f, uint64_t index, const uint8_t *p, size_t len,
                     struct ap_rsm_batch **out);

static const char *schema_sql =
    "CREATE TABLE IF NOT EXISTS ap_rsm_meta(k TEXT PRIMARY KEY, v INTEGER NOT NULL);"
    "INSERT OR IGNORE INTO ap_rsm_meta(k, v) VALUES('applied_index', 0);"
    "CREATE TABLE IF NOT EXISTS ap_rsm_members(id INTEGER PRIMARY KEY, raft TEXT NOT NULL,"
    " http TEXT NOT NULL);";

static void batch_free(struct ap_rsm_batch *b)
{
    if (b == NULL) {
        return;
    }
    for (size_t i = 0; i < b->n; i++) {
        json_decref(b->results[i].value);
    }
    ap_free(b);
}

static int read_applied(struct ap_rsm_fsm *f)
{
    sqlite3_stmt *stmt;
    sqlite3 *db = ap_store_db(f->st);
    int rc = sqlite3_prepare_v2(db, "SELECT v FROM ap_rsm_meta WHERE k='applied_index'", -1, &stmt,
                                NULL);
    if (rc != SQLITE_OK) {
        ap_errmsg_set(f->errmsg, "read applied index: %s", sqlite3_errmsg(db));
        return ap_err_from_sqlite(rc);
    }
    f->applied = 0;
    if (sqlite3_step(stmt) == SQLITE_ROW) {
        f->applied = (uint64_t)sqlite3_column_int64(stmt, 0);
    }
    sqlite3_finalize(stmt);
    return 0;
}

static int write_applied(struct ap_rsm_fsm *f, uint64_t index)
{
    sqlite3_stmt *stmt;
    int rv = ap_store_prepare(f->st, "UPDATE ap_rsm_meta SET v=? WHERE k='applied_index'", &stmt);
    if (rv == 0) {
        rv = ap_store_bind_int64(f->st, stmt, 1, (int64_t)index);
    }
    if (rv == 0) {
        rv = ap_store_step_done(f->st, stmt);
    }
    if (rv != 0) {
        ap_errmsg_set(f->errmsg, "record applied index: %s", ap_store_errmsg(f->st));
    }
    return rv;
}

/* Apply the deferred entries in order; one that fails stays queued with those after it. */
static int drain_deferred(struct ap_rsm_fsm *f)
{
    size_t i = 0;
    int rv = 0;
    if (f->n_defer == 0) {
        return 0;
    }
    for (; i < f->n_defer; i++) {
        struct deferred *d = &f->defer[i];
        struct ap_rsm_batch *b = NULL;
        rv = apply_now(f, d->index, d->buf, d->len, &b);
        batch_free(b);
        if (rv != 0) {
            break;
        }
        f->defer_bytes -= d->len;
        ap_free(d->buf);
    }
    memmove(f->defer, f->defer + i, (f->n_defer - i) * sizeof *f->defer);
    f->n_defer -= i;
    return rv;
}

int ap_rsm_fsm_flush(struct ap_rsm_fsm *f)
{
    int drained = drain_deferred(f);
    if (!f->in_txn) {
        return drained;
    }
    f->in_txn = false;
    int rv = ap_store_commit(f->st);
    if (rv != 0) {
        AP_LOG(AP_LOG_ERROR, "rsm_commit_failed err=\"%s\"", ap_store_errmsg(f->st));
    }
    return rv != 0 ? rv : drained;
}

/* Apply one member record carried by an entry. */
static int apply_member(struct ap_rsm_fsm *f, const msgpack_object *m)
{
    uint64_t id = 0;
    char raft_addr[64] = "", http[64] = "";
    if (m->type != MSGPACK_OBJECT_MAP) {
        return AP_EPROTO;
    }
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object *k = &m->via.map.ptr[i].key;
        const msgpack_object *v = &m->via.map.ptr[i].val;
        if (k->type != MSGPACK_OBJECT_STR) {
            return AP_EPROTO;
        }
        if (k->via.str.size == 2 && memcmp(k->via.str.ptr, "id", 2) == 0 &&
            v->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
            id = v->via.u64;
        } else if (v->type == MSGPACK_OBJECT_STR && v->via.str.size < 64) {
            char *dst = NULL;
            if (k->via.str.size == 4 && memcmp(k->via.str.ptr, "raft", 4) == 0) {
                dst = raft_addr;
            } else if (k->via.str.size == 4 && memcmp(k->via.str.ptr, "http", 4) == 0) {
                dst = http;
            }
            if (dst != NULL) {
                memcpy(dst, v->via.str.ptr, v->via.str.size);
                dst[v->via.str.size] = '\0';
            }
        }
    }
    if (id == 0) {
        return AP_EPROTO;
    }
    sqlite3 *db = ap_store_db(f->st);
    sqlite3_stmt *stmt;
    const char *sql = http[0] != '\0'
                          ? "INSERT INTO ap_rsm_members(id, raft, http) VALUES(?1, ?2, ?3) "
                            "ON CONFLICT(id) DO UPDATE SET raft=?2, http=?3"
                          : "DELETE FROM ap_rsm_members WHERE id=?1";
    int rc = sqlite3_prepare_v2(db, sql, -1, &stmt, NULL);
    if (rc != SQLITE_OK) {
        return ap_err_from_sqlite(rc);
    }
    sqlite3_bind_int64(stmt, 1, (sqlite3_int64)id);
    if (http[0] != '\0') {
        sqlite3_bind_text(stmt, 2, raft_addr, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(stmt, 3, http, -1, SQLITE_TRANSIENT);
    }
    rc = sqlite3_step(stmt);
    sqlite3_finalize(stmt);
    return rc == SQLITE_DONE ? 0 : ap_err_from_sqlite(rc);
}

static const msgpack_object *map_get(const msgpack_object *map, const char *key)
{
    size_t klen = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == klen &&
            memcmp(k->via.str.ptr, key, klen) == 0) {
            return &map->via.map.ptr[i].val;
        }
    }
    return NULL;
}

/* Run every command of an entry, each in its own savepoint. */
static int apply_entry(struct ap_rsm_fsm *f, uint64_t index, const msgpack_object *entry,
                       struct ap_rsm_batch **out)
{
    const msgpack_object *cmds = map_get(entry, "c");
    const msgpack_object *members = map_get(entry, "m");
    size_t n = 0;
    if (cmds != NULL) {
        if (cmds->type != MSGPACK_OBJECT_ARRAY || cmds->via.array.size > AP_RSM_MAX_BATCH) {
            return AP_EPROTO;
        }
        n = cmds->via.array.size;
    }
    if (members != NULL &&
        (members->type != MSGPACK_OBJECT_ARRAY || members->via.array.size > MAX_MEMBERS)) {
        return AP_EPROTO;
    }
    struct ap_rsm_batch *b = ap_calloc(1, sizeof *b + n * sizeof b->results[0]);
    if (b == NULL) {
        return AP_ENOMEM;
    }
    b->n = n;
    for (size_t i = 0; i < n; i++) {
        const msgpack_object *c = &cmds->via.array.ptr[i];
        struct ap_rsm_result *res = &b->results[i];
        if (c->type != MSGPACK_OBJECT_BIN) {
            res->status = AP_EPROTO;
            ap_errmsg_set(res->message, "command %zu is not a binary blob", i);
            continue;
        }
        int rv = ap_store_savepoint(f->st, "cmd");
        if (rv != 0) {
            batch_free(b);
            return rv;
        }
        /* Only a leader's proposers wait for results (a node without raft: tests, restore). */
        res->want_value = f->raft == NULL || raft_state(f->raft) == RAFT_LEADER;
        f->apply(f->data, f->st, index, (const uint8_t *)c->via.bin.ptr, c->via.bin.size, res);
        if (res->status != 0) {
            json_decref(res->value);
            res->value = NULL;
            rv = ap_store_rollback_to(f->st, "cmd");
        } else {
            rv = ap_store_release(f->st, "cmd");
        }
        if (rv != 0) {
            batch_free(b);
            return rv;
        }
    }
    if (members != NULL) {
        for (uint32_t i = 0; i < members->via.array.size; i++) {
            int rv = apply_member(f, &members->via.array.ptr[i]);
            if (rv != 0 && rv != AP_EPROTO) {
                batch_free(b);
                return rv;
            }
        }
    }
    *out = b;
    return 0;
}

/* Queue a follower's entry (copied: raft may free its buffer once apply returns). */
static int defer_entry(struct ap_rsm_fsm *f, uint64_t index, const struct raft_buffer *buf)
{
    if (f->n_defer >= MAX_DEFER_ENTRIES || f->defer_bytes + buf->len > MAX_DEFER_BYTES) {
        AP_LOG(AP_LOG_ERROR, "rsm_apply_backlog index=%llu entries=%zu bytes=%zu",
               (unsigned long long)index, f->n_defer, f->defer_bytes);
        return RAFT_IOERR;
    }
    if (f->n_defer == f->cap_defer) {
        size_t cap = f->cap_defer == 0 ? 16 : f->cap_defer * 2;
        struct deferred *grown = ap_realloc(f->defer, cap * sizeof *grown);
        if (grown == NULL) {
            return RAFT_NOMEM;
        }
        f->defer = grown;
        f->cap_defer = cap;
    }
    uint8_t *copy = ap_malloc(buf->len > 0 ? buf->len : 1);
    if (copy == NULL) {
        return RAFT_NOMEM;
    }
    if (buf->len > 0) {
        memcpy(copy, buf->base, buf->len);
    }
    f->defer[f->n_defer++] = (struct deferred){.index = index, .buf = copy, .len = buf->len};
    f->defer_bytes += buf->len;
    return 0;
}

static int fsm_apply(struct raft_fsm *rf, const struct raft_buffer *buf, void **result)
{
    struct ap_rsm_fsm *f = rf->data;
    /* RAFT-NOTES pitfall 4: apply is not told its index. */
    uint64_t index = f->raft != NULL ? raft_last_applied(f->raft) + 1 : f->applied + 1;
    batch_free(f->last);
    f->last = NULL;
    *result = NULL;

    f->entry_bytes += buf->len;
    f->entries++;
    /* Pitfall 5: after a restart raft replays entries the store already
     * holds; the stored applied index makes the replay a no-op. */
    uint64_t have = f->n_defer > 0 ? f->defer[f->n_defer - 1].index : f->applied;
    if (index <= have) {
        return 0;
    }
    /* Nobody waits for a follower's results: apply at the end of the iteration, after raft
     * has acknowledged. Behind a queue, every entry queues, so the order holds. */
    if (f->n_defer > 0 ||
        (!f->autocommit && f->raft != NULL && raft_state(f->raft) == RAFT_FOLLOWER)) {
        return defer_entry(f, index, buf);
    }
    struct ap_rsm_batch *b = NULL;
    int rv = apply_now(f, index, buf->base, buf->len, &b);
    if (rv != 0) {
        return rv;
    }
    f->last = b;
    *result = b;
    if (f->autocommit && ap_rsm_fsm_flush(f) != 0) {
        return RAFT_IOERR;
    }
    return 0;
}

/* Apply one entry into the open group transaction; *out gets its results. */
static int apply_now(struct ap_rsm_fsm *f, uint64_t index, const uint8_t *p, size_t len,
                     struct ap_rsm_batch **out)
{
    *out = NULL;
    if (!f->in_txn) {
        int rv = ap_store_begin(f->st);
        if (rv != 0) {
            AP_LOG(AP_LOG_ERROR, "rsm_apply_failed index=%llu err=\"%s\"",
                   (unsigned long long)index, ap_store_errmsg(f->st));
            return RAFT_IOERR;
        }
        f->in_txn = true;
    }

    /* The whole entry is one savepoint: a store error after some of its commands undoes
     * them, so the retry (next flush, or raft's) applies each command exactly once. */
    if (ap_store_savepoint(f->st, "entry") != 0) {
        AP_LOG(AP_LOG_ERROR, "rsm_apply_failed index=%llu err=\"%s\"", (unsigned long long)index,
               ap_store_errmsg(f->st));
        return RAFT_IOERR;
    }
    msgpack_unpacked up;
    struct ap_rsm_batch *b = NULL;
    char why[AP_ERRMSG_SIZE] = "";
    int rv = 0;
    /* Entry layout (docs/replication.md): 8-byte little-endian payload
     * length, the msgpack map, zero padding to a multiple of 8 bytes. */
    uint64_t plen = 0;
    for (int i = 7; i >= 0 && len >= 8; i--) {
        plen = (plen << 8) | p[i];
    }
    if (len < 8 || plen > len - 8 ||
        ap_mp_unpack(p + 8, (size_t)plen, AP_RSM_MAX_ENTRY, &up, why) != 0) {
        AP_LOG(AP_LOG_ERROR, "rsm_entry_undecodable index=%llu len=%zu err=\"%s\"",
               (unsigned long long)index, len, why);
    } else if (up.data.type != MSGPACK_OBJECT_MAP) {
        AP_LOG(AP_LOG_ERROR, "rsm_entry_undecodable index=%llu err=\"not a map\"",
               (unsigned long long)index);
        msgpack_unpacked_destroy(&up);
    } else {
        const msgpack_object *v = map_get(&up.data, "v");
        if (v == NULL || v->type != MSGPACK_OBJECT_POSITIVE_INTEGER || v->via.u64 == 0) {
            AP_LOG(AP_LOG_ERROR, "rsm_entry_bad_version index=%llu", (unsigned long long)index);
        } else {
            rv = apply_entry(f, index, &up.data, &b);
        }
        msgpack_unpacked_destroy(&up);
    }
    if (rv == AP_EPROTO) {
        /* A malformed entry is skipped identically on every replica. */
        AP_LOG(AP_LOG_ERROR, "rsm_entry_malformed index=%llu", (unsigned long long)index);
        rv = 0;
    }
    if (rv == 0) {
        rv = write_applied(f, index);
    }
    if (rv == 0) {
        rv = ap_store_release(f->st, "entry");
    } else if (ap_store_rollback_to(f->st, "entry") != 0) {
        AP_LOG(AP_LOG_ERROR, "rsm_entry_rollback_failed index=%llu err=\"%s\"",
               (unsigned long long)index, ap_store_errmsg(f->st));
    }
    if (rv != 0) {
        batch_free(b);
        AP_LOG(AP_LOG_ERROR, "rsm_apply_failed index=%llu err=\"%s\"", (unsigned long long)index,
               ap_strerror(rv));
        return RAFT_IOERR;
    }
    f->applied = index;
    *out = b;
    return 0;
}

/* One raft buffer "APSNAP01" + index + image (the image is copied; the caller frees it). */
static struct raft_buffer *snapshot_buffer(uint64_t index, const uint8_t *img, size_t len)
{
    struct raft_buffer *b = raft_malloc(sizeof *b);
    size_t total = (SNAP_HEADER + len + 7) / 8 * 8;
    uint8_t *data = raft_calloc(1, total);
    if (b == NULL || data == NULL) {
        raft_free(b);
        raft_free(data);
        return NULL;
    }
    memcpy(data, SNAP_MAGIC, 8);
    for (int i = 0; i < 8; i++) {
        data[8 + i] = (uint8_t)(index >> (56 - 8 * i));
    }
    memcpy(data + SNAP_HEADER, img, len);
    b->base = data;
    b->len = SNAP_HEADER + len;
    return b;
}

/* ---- asynchronous snapshots (fsm version 3) ---- */

/* Loop: commit what was applied, then pin a read view of exactly that on the reader. */
static int fsm_snapshot_pin(struct raft_fsm *rf, struct raft_buffer *bufs[], unsigned *n_bufs)
{
    struct ap_rsm_fsm *f = rf->data;
    *bufs = NULL;
    *n_bufs = 0;
    if (ap_rsm_fsm_flush(f) != 0) {
        return RAFT_IOERR;
    }
    if (f->reader == NULL) {
        int rc = sqlite3_open_v2(ap_store_path(f->st), &f->reader,
                                 SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL);
        if (rc != SQLITE_OK) {
            AP_LOG(AP_LOG_ERROR, "rsm_snapshot_failed err=\"open reader: %s\"",
                   f->reader != NULL ? sqlite3_errmsg(f->reader) : sqlite3_errstr(rc));
            sqlite3_close(f->reader);
            f->reader = NULL;
            return RAFT_IOERR;
        }
    }
    /* A read transaction starts at its first read: this one pins the WAL snapshot. */
    int rc = sqlite3_exec(f->reader, "BEGIN; SELECT count(*) FROM sqlite_master;", NULL, NULL,
                          NULL);
    if (rc != SQLITE_OK) {
        AP_LOG(AP_LOG_ERROR, "rsm_snapshot_failed err=\"pin: %s\"", sqlite3_errmsg(f->reader));
        sqlite3_exec(f->reader, "ROLLBACK", NULL, NULL, NULL);
        return RAFT_IOERR;
    }
    f->reader_in_txn = true;
    f->snap_index = f->applied;
    return 0;
}

/* Threadpool: copy the pinned view into the snapshot buffer. Touches only the reader. */
static int fsm_snapshot_copy(struct raft_fsm *rf, struct raft_buffer *bufs[], unsigned *n_bufs)
{
    struct ap_rsm_fsm *f = rf->data;
    sqlite3_int64 size = 0;
    unsigned char *img = sqlite3_serialize(f->reader, "main", &size, 0);
    if (img == NULL) {
        return RAFT_IOERR;
    }
    struct raft_buffer *b = snapshot_buffer(f->snap_index, img, (size_t)size);
    sqlite3_free(img);
    if (b == NULL) {
        return RAFT_NOMEM;
    }
    *bufs = b;
    *n_bufs = 1;
    return 0;
}

/* Loop: release the read view and the buffer (raft owns nothing in version 3). */
static int fsm_snapshot_finalize(struct raft_fsm *rf, struct raft_buffer *bufs[],
                                 unsigned *n_bufs)
{
    struct ap_rsm_fsm *f = rf->data;
    if (f->reader_in_txn) {
        sqlite3_exec(f->reader, "COMMIT", NULL, NULL, NULL);
        f->reader_in_txn = false;
    }
    if (*bufs != NULL) {
        size_t len = (*bufs)[0].len;
        for (unsigned i = 0; i < *n_bufs; i++) {
            raft_free((*bufs)[i].base);
        }
        raft_free(*bufs);
        *bufs = NULL;
        *n_bufs = 0;
        f->snapshots_taken++;
        f->snapshot_bytes = len - SNAP_HEADER;
        AP_LOG(AP_LOG_INFO, "rsm_snapshot_taken applied=%llu bytes=%zu async=true",
               (unsigned long long)f->snap_index, len - SNAP_HEADER);
    }
    return 0;
}

void ap_rsm_fsm_enable_async_snapshots(struct ap_rsm_fsm *f)
{
    f->raft_fsm.version = 3;
    f->raft_fsm.snapshot = fsm_snapshot_pin;
    f->raft_fsm.snapshot_async = fsm_snapshot_copy;
    f->raft_fsm.snapshot_finalize = fsm_snapshot_finalize;
}

static int fsm_snapshot(struct raft_fsm *rf, struct raft_buffer *bufs[], unsigned *n_bufs)
{
    struct ap_rsm_fsm *f = rf->data;
    uint8_t *img = NULL;
    size_t len = 0;
    /* The image must hold exactly the applied entries: commit them first. */
    if (ap_rsm_fsm_flush(f) != 0) {
        return RAFT_IOERR;
    }
    int rv = ap_store_serialize(f->st, &img, &len);
    if (rv != 0) {
        AP_LOG(AP_LOG_ERROR, "rsm_snapshot_failed err=\"%s\"", ap_store_errmsg(f->st));
        return rv == AP_ENOMEM ? RAFT_NOMEM : RAFT_IOERR;
    }
    /* raft frees both the array and the buffer with raft_free (fsm version 1). */
    struct raft_buffer *b = snapshot_buffer(f->applied, img, len);
    ap_free(img);
    if (b == NULL) {
        return RAFT_NOMEM;
    }
    *bufs = b;
    *n_bufs = 1;
    f->snapshots_taken++;
    f->snapshot_bytes = len;
    AP_LOG(AP_LOG_INFO, "rsm_snapshot_taken applied=%llu bytes=%zu", (unsigned long long)f->applied,
           len);
    return 0;
}

static int fsm_restore(struct raft_fsm *rf, struct raft_buffer *buf)
{
    struct ap_rsm_fsm *f = rf->data;
    const uint8_t *p = buf->base;
    if (buf->len < SNAP_HEADER || memcmp(p, SNAP_MAGIC, 8) != 0) {
        AP_LOG(AP_LOG_ERROR, "rsm_restore_failed reason=\"bad snapshot header\" len=%zu", buf->len);
        return RAFT_CORRUPT;
    }
    uint64_t index = 0;
    for (int i = 0; i < 8; i++) {
        index = (index << 8) | p[8 + i];
    }
    if (ap_rsm_fsm_flush(f) != 0) {
        return RAFT_IOERR;
    }
    /* docs/replication.md: a store already at or past the image (a restart)
     * keeps its own content; raft then replays only what the store lacks. */
    if (index > f->applied) {
        int rv = ap_store_restore(f->st, p + SNAP_HEADER, buf->len - SNAP_HEADER);
        if (rv != 0) {
            AP_LOG(AP_LOG_ERROR, "rsm_restore_failed err=\"%s\"", ap_store_errmsg(f->st));
            return rv == AP_ECORRUPT ? RAFT_CORRUPT : RAFT_IOERR;
        }
        if (read_applied(f) != 0) {
            return RAFT_IOERR;
        }
        f->snapshots_restored++;
        AP_LOG(AP_LOG_INFO, "rsm_snapshot_restored applied=%llu", (unsigned long long)f->applied);
    }
    raft_free(buf->base);
    return 0;
}

int ap_rsm_fsm_new(struct ap_rsm_fsm **out, struct ap_store *st, ap_rsm_apply_fn apply, void *data,
                   char *errmsg)
{
    struct ap_rsm_fsm *f = ap_calloc(1, sizeof *f);
    if (f == NULL) {
        ap_errmsg_set(errmsg, "create state machine: out of memory");
        return AP_ENOMEM;
    }
    f->st = st;
    f->apply = apply;
    f->data = data;
    f->autocommit = true;
    int rv = ap_store_exec(st, schema_sql);
    if (rv == 0) {
        rv = read_applied(f);
    } else {
        ap_errmsg_set(f->errmsg, "%s", ap_store_errmsg(st));
    }
    if (rv != 0) {
        ap_errmsg_set(errmsg, "create state machine: %s", f->errmsg);
        ap_free(f);
        return rv;
    }
    f->raft_fsm.version = 1;
    f->raft_fsm.data = f;
    f->raft_fsm.apply = fsm_apply;
    f->raft_fsm.snapshot = fsm_snapshot;
    f->raft_fsm.restore = fsm_restore;
    *out = f;
    return 0;
}

void ap_rsm_fsm_free(struct ap_rsm_fsm *f)
{
    if (f == NULL) {
        return;
    }
    ap_rsm_fsm_flush(f);
    batch_free(f->last);
    for (size_t i = 0; i < f->n_defer; i++) {
        ap_free(f->defer[i].buf);
    }
    ap_free(f->defer);
    if (f->reader != NULL) {
        sqlite3_close(f->reader);
    }
    ap_free(f);
}

struct raft_fsm *ap_rsm_fsm_raft(struct ap_rsm_fsm *f)
{
    return &f->raft_fsm;
}

void ap_rsm_fsm_attach(struct ap_rsm_fsm *f, struct raft *r)
{
    f->raft = r;
}

void ap_rsm_fsm_set_autocommit(struct ap_rsm_fsm *f, bool on)
{
    f->autocommit = on;
    if (on) {
        ap_rsm_fsm_flush(f);
    }
}

uint64_t ap_rsm_fsm_applied(const struct ap_rsm_fsm *f)
{
    return f->applied;
}

uint64_t ap_rsm_fsm_snapshot_bytes(const struct ap_rsm_fsm *f)
{
    return f->snapshot_bytes;
}

uint64_t ap_rsm_fsm_take_mean_entry_bytes(struct ap_rsm_fsm *f)
{
    uint64_t mean = f->entries > 0 ? f->entry_bytes / f->entries : 0;
    f->entry_bytes = 0;
    f->entries = 0;
    return mean;
}

uint64_t ap_rsm_fsm_snapshots_taken(const struct ap_rsm_fsm *f)
{
    return f->snapshots_taken;
}

uint64_t ap_rsm_fsm_snapshots_restored(const struct ap_rsm_fsm *f)
{
    return f->snapshots_restored;
}

static int pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    return msgpack_pack_str(pk, n) | msgpack_pack_str_body(pk, s, n);
}

/* A msgpack write target of fixed capacity (the entry's bound, computed up front). */
struct fixed_buf {
    uint8_t *p;
    size_t len, cap;
};

static int fixed_buf_write(void *data, const char *buf, size_t len)
{
    struct fixed_buf *fb = data;
    if (len > fb->cap - fb->len) {
        return -1;
    }
    memcpy(fb->p + fb->len, buf, len);
    fb->len += len;
    return 0;
}

/* Bytes a packed string of length len takes at most (str32 header). */
#define PACKED_STR_MAX(len) (5 + (len))

int ap_rsm_entry_encode(const uint8_t *const *cmds, const size_t *lens, size_t n_cmds,
                        const struct ap_rsm_member *members, size_t n_members,
                        struct raft_buffer *out)
{
    if (n_cmds > AP_RSM_MAX_BATCH || n_members > MAX_MEMBERS) {
        return AP_EINVAL;
    }
    /* An upper bound of the packed size, so the entry is packed once, in place, into the
     * buffer raft will own (no growing buffer, no copy, no zeroing of the whole entry). */
    size_t bound = 1 + 2 * PACKED_STR_MAX(1) + 5 + 5 + 5, payload = 0;
    for (size_t i = 0; i < n_cmds; i++) {
        payload += lens[i];
        if (payload > AP_RSM_MAX_ENTRY) {
            return AP_ETOOBIG; /* the commands alone are over the limit */
        }
        bound += 5 + lens[i];
    }
    for (size_t i = 0; i < n_members; i++) {
        bound += 1 + PACKED_STR_MAX(2) + 9 + PACKED_STR_MAX(4) * 2 +
                 PACKED_STR_MAX(strlen(members[i].raft)) + PACKED_STR_MAX(strlen(members[i].http));
    }
    size_t cap = (8 + bound + 7) / 8 * 8;
    struct fixed_buf fb = {.p = raft_malloc(cap), .len = 8, .cap = cap};
    if (fb.p == NULL) {
        return AP_ENOMEM;
    }
    msgpack_packer pk;
    msgpack_packer_init(&pk, &fb, fixed_buf_write);
    int bad = msgpack_pack_map(&pk, n_members > 0 ? 3 : 2);
    bad |= pack_str(&pk, "v");
    bad |= msgpack_pack_uint32(&pk, AP_RSM_ENTRY_VERSION);
    bad |= pack_str(&pk, "c");
    bad |= msgpack_pack_array(&pk, n_cmds);
    for (size_t i = 0; i < n_cmds; i++) {
        bad |= msgpack_pack_bin(&pk, lens[i]);
        bad |= msgpack_pack_bin_body(&pk, cmds[i], lens[i]);
    }
    if (n_members > 0) {
        bad |= pack_str(&pk, "m");
        bad |= msgpack_pack_array(&pk, n_members);
        for (size_t i = 0; i < n_members; i++) {
            bad |= msgpack_pack_map(&pk, 3);
            bad |= pack_str(&pk, "id");
            bad |= msgpack_pack_uint64(&pk, members[i].id);
            bad |= pack_str(&pk, "raft");
            bad |= pack_str(&pk, members[i].raft);
            bad |= pack_str(&pk, "http");
            bad |= pack_str(&pk, members[i].http);
        }
    }
    size_t size = fb.len - 8;
    if (bad != 0 || size > AP_RSM_MAX_ENTRY) {
        raft_free(fb.p);
        return bad != 0 ? AP_EINVAL : AP_ETOOBIG;
    }
    /* RAFT-NOTES pitfall 1: entries must be a multiple of 8 bytes; the padding is zeroed. */
    size_t padded = (8 + size + 7) / 8 * 8;
    memset(fb.p + fb.len, 0, padded - fb.len);
    for (int i = 0; i < 8; i++) {
        fb.p[i] = (uint8_t)((uint64_t)size >> (8 * i));
    }
    out->base = fb.p;
    out->len = padded;
    return 0;
}

int ap_rsm_fsm_members(struct ap_rsm_fsm *f, struct ap_rsm_member **out, size_t *n)
{
    sqlite3 *db = ap_store_db(f->st);
    sqlite3_stmt *stmt;
    *out = NULL;
    *n = 0;
    int rc = sqlite3_prepare_v2(db, "SELECT id, raft, http FROM ap_rsm_members ORDER BY id", -1,
                                &stmt, NULL);
    if (rc != SQLITE_OK) {
        return ap_err_from_sqlite(rc);
    }
    struct ap_rsm_member *m = ap_calloc(MAX_MEMBERS, sizeof *m);
    if (m == NULL) {
        sqlite3_finalize(stmt);
        return AP_ENOMEM;
    }
    size_t count = 0;
    while (count < MAX_MEMBERS && sqlite3_step(stmt) == SQLITE_ROW) {
        m[count].id = (uint64_t)sqlite3_column_int64(stmt, 0);
        ap_strlcpy(m[count].raft, (const char *)sqlite3_column_text(stmt, 1), sizeof m[count].raft);
        ap_strlcpy(m[count].http, (const char *)sqlite3_column_text(stmt, 2), sizeof m[count].http);
        count++;
    }
    sqlite3_finalize(stmt);
    *out = m;
    *n = count;
    return 0;
}
