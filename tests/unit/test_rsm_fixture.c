/* Deterministic tests of the replicated state machine on canonical/raft's in-memory fixture. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "ap/base.h"
#include "ap/log.h"
#include "ap/rsm.h"
#include "ap/rsm_fsm.h"
#include "ap/store.h"

#include <raft.h>
#include <raft/fixture.h>
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>

#define N 3

static const char *const kv_tables[] = {"kv", NULL};

/* The test application: "put <key> <value>" upserts; "fail <key>" writes then fails;
 * "break" releases the savepoint rsm opened for it, so that rsm's own release fails: a
 * store error in the middle of an entry. */
static void kv_apply(void *data, struct ap_store *st, uint64_t index, const uint8_t *cmd,
                     size_t len, struct ap_rsm_result *res)
{
    char text[256], key[64] = "", value[128] = "";
    AP_UNUSED(data);
    AP_UNUSED(index);
    if (len >= sizeof text) {
        res->status = AP_ETOOBIG;
        return;
    }
    memcpy(text, cmd, len);
    text[len] = '\0';
    if (strcmp(text, "break") == 0) {
        res->status = ap_store_release(st, "cmd");
        return;
    }
    bool fail = strncmp(text, "fail ", 5) == 0;
    if (sscanf(text + (fail ? 5 : 4), "%63s %127s", key, value) < 1) {
        res->status = AP_EINVAL;
        ap_errmsg_set(res->message, "bad command");
        return;
    }
    sqlite3_stmt *stmt;
    if (ap_store_prepare(st,
                         "INSERT INTO kv(k, v) VALUES(?1, ?2) ON CONFLICT(k) DO UPDATE SET v=?2",
                         &stmt) != 0) {
        res->status = AP_EIO;
        return;
    }
    ap_store_bind_text(st, stmt, 1, key);
    ap_store_bind_text(st, stmt, 2, value);
    res->status = ap_store_step_done(st, stmt);
    if (res->status == 0 && fail) {
        res->status = AP_ECONFLICT;
        ap_errmsg_set(res->message, "asked to fail");
        return;
    }
    res->value = json_pack("{s:s}", "k", key);
}

static const struct ap_store_migration kv_schema[] = {
    {1, "CREATE TABLE kv(k TEXT PRIMARY KEY, v TEXT NOT NULL);"},
};

struct cluster {
    struct raft_fixture f;
    struct ap_store *st[N + 1];
    struct ap_rsm_fsm *fsm[N + 1];
    unsigned n;
};

static void add_server(struct cluster *c)
{
    char errmsg[AP_ERRMSG_SIZE];
    unsigned i = c->n++;
    assert_int_equal(ap_store_open(":memory:", AP_STORE_SYNC_OFF, &c->st[i], errmsg), 0);
    assert_int_equal(ap_store_migrate(c->st[i], kv_schema, AP_ARRAY_LEN(kv_schema)), 0);
    assert_int_equal(ap_rsm_fsm_new(&c->fsm[i], c->st[i], kv_apply, NULL, errmsg), 0);
    assert_int_equal(raft_fixture_grow(&c->f, ap_rsm_fsm_raft(c->fsm[i])), 0);
    struct raft *r = raft_fixture_get(&c->f, i);
    ap_rsm_fsm_attach(c->fsm[i], r);
    raft_set_snapshot_threshold(r, 32);
    raft_set_snapshot_trailing(r, 8);
}

static int setup(void **state)
{
    struct cluster *c = ap_calloc(1, sizeof *c);
    ap_log_init("test", AP_LOG_WARN, NULL);
    assert_int_equal(raft_fixture_initialize(&c->f), 0);
    for (unsigned i = 0; i < N; i++) {
        add_server(c);
    }
    struct raft_configuration conf;
    assert_int_equal(raft_fixture_configuration(&c->f, N, &conf), 0);
    assert_int_equal(raft_fixture_bootstrap(&c->f, &conf), 0);
    raft_configuration_close(&conf);
    assert_int_equal(raft_fixture_start(&c->f), 0);
    *state = c;
    return 0;
}

static int teardown(void **state)
{
    struct cluster *c = *state;
    raft_fixture_close(&c->f);
    for (unsigned i = 0; i < c->n; i++) {
        ap_rsm_fsm_free(c->fsm[i]);
        ap_store_close(c->st[i]);
    }
    ap_free(c);
    return 0;
}

struct outcome {
    bool done;
    int raft_status;
    int cmd_status;
};

static void applied_cb(struct raft_apply *req, int status, void *result)
{
    struct outcome *o = req->data;
    struct ap_rsm_batch *b = result;
    o->done = true;
    o->raft_status = status;
    o->cmd_status = (status == 0 && b != NULL && b->n == 1) ? b->results[0].status : -1000;
    ap_free(req);
}

/* Propose one command on server i; returns raft_apply's code. */
static int propose(struct cluster *c, unsigned i, const char *cmd, struct outcome *o)
{
    const uint8_t *cmds[1] = {(const uint8_t *)cmd};
    size_t lens[1] = {strlen(cmd)};
    struct raft_buffer buf;
    assert_int_equal(ap_rsm_entry_encode(cmds, lens, 1, NULL, 0, &buf), 0);
    assert_int_equal(buf.len % 8, 0);
    struct raft_apply *req = ap_calloc(1, sizeof *req);
    memset(o, 0, sizeof *o);
    req->data = o;
    int rv = raft_apply(raft_fixture_get(&c->f, i), req, &buf, 1, applied_cb);
    if (rv != 0) {
        raft_free(buf.base);
        ap_free(req);
    }
    return rv;
}

static unsigned leader(struct cluster *c)
{
    assert_true(raft_fixture_step_until_has_leader(&c->f, 10000));
    return raft_fixture_leader_index(&c->f);
}

static void write_n(struct cluster *c, int from, int count)
{
    for (int k = from; k < from + count; k++) {
        char cmd[64];
        struct outcome o;
        unsigned l = leader(c);
        snprintf(cmd, sizeof cmd, "put key%d value%d", k % 50, k);
        assert_int_equal(propose(c, l, cmd, &o), 0);
        raft_fixture_step_until_applied(&c->f, l, raft_last_index(raft_fixture_get(&c->f, l)),
                                        5000);
        assert_true(o.done);
        assert_int_equal(o.raft_status, 0);
        assert_int_equal(o.cmd_status, 0);
    }
}

/* Like a real client: retry a write that failed (bounded), for fault tests. */
static void write_n_retrying(struct cluster *c, int from, int count)
{
    for (int k = from; k < from + count; k++) {
        char cmd[64];
        struct outcome o = {0};
        snprintf(cmd, sizeof cmd, "put key%d value%d", k % 50, k);
        for (int attempt = 0; attempt < 20; attempt++) {
            unsigned l = leader(c);
            if (propose(c, l, cmd, &o) == 0) {
                for (int t = 0; t < 50 && !o.done; t++) {
                    raft_fixture_step_until_elapsed(&c->f, 100);
                }
                if (o.done && o.raft_status == 0) {
                    break;
                }
            }
            raft_fixture_step_until_elapsed(&c->f, 500);
        }
        assert_true(o.done);
        assert_int_equal(o.raft_status, 0);
    }
}

/* Every live server has applied the same index and holds identical content. */
static void assert_converged(struct cluster *c)
{
    unsigned l = leader(c);
    raft_index last = raft_last_index(raft_fixture_get(&c->f, l));
    for (unsigned i = 0; i < c->n; i++) {
        if (raft_fixture_alive(&c->f, i)) {
            raft_fixture_step_until_applied(&c->f, i, last, 20000);
        }
    }
    unsigned char ref[32], h[32];
    assert_int_equal(ap_store_content_hash(c->st[l], kv_tables, ref), 0);
    for (unsigned i = 0; i < c->n; i++) {
        if (!raft_fixture_alive(&c->f, i)) {
            continue;
        }
        assert_int_equal(ap_rsm_fsm_applied(c->fsm[i]), ap_rsm_fsm_applied(c->fsm[l]));
        assert_int_equal(ap_store_content_hash(c->st[i], kv_tables, h), 0);
        assert_memory_equal(h, ref, 32);
    }
}

static int64_t count_rows(struct ap_store *st)
{
    sqlite3_stmt *stmt;
    assert_int_equal(ap_store_prepare(st, "SELECT count(*) FROM kv", &stmt), 0);
    assert_int_equal(ap_store_step(st, stmt), AP_STORE_ROW);
    int64_t n = sqlite3_column_int64(stmt, 0);
    ap_store_reset(stmt);
    return n;
}

static void test_replicates_and_converges(void **state)
{
    struct cluster *c = *state;
    write_n(c, 0, 40);
    assert_converged(c);
    assert_int_equal(count_rows(c->st[0]), 40);
}

/* As on a real node (autocommit off, a commit per loop iteration): followers queue what raft
 * applies and apply it at the flush, after acknowledging; the leader applies at once. */
static void test_followers_apply_at_flush(void **state)
{
    struct cluster *c = *state;
    for (unsigned i = 0; i < c->n; i++) {
        ap_rsm_fsm_set_autocommit(c->fsm[i], false);
    }
    write_n(c, 0, 40);
    unsigned l = leader(c);
    raft_index last = raft_last_index(raft_fixture_get(&c->f, l));
    for (unsigned i = 0; i < c->n; i++) {
        raft_fixture_step_until_applied(&c->f, i, last, 20000);
    }
    assert_int_equal(ap_rsm_fsm_applied(c->fsm[l]), raft_last_applied(raft_fixture_get(&c->f, l)));
    unsigned behind = 0;
    for (unsigned i = 0; i < c->n; i++) {
        if (i != l && ap_rsm_fsm_applied(c->fsm[i]) < raft_last_applied(raft_fixture_get(&c->f, i))) {
            behind++;
        }
    }
    assert_int_equal(behind, c->n - 1);
    for (unsigned i = 0; i < c->n; i++) {
        assert_int_equal(ap_rsm_fsm_flush(c->fsm[i]), 0);
        assert_int_equal(ap_rsm_fsm_applied(c->fsm[i]), raft_last_applied(raft_fixture_get(&c->f, i)));
    }
    assert_converged(c);
    assert_int_equal(count_rows(c->st[0]), 40);
}

/* docs/replication.md "Snapshots": the log grows to about the last image's size between
 * snapshots, within [base, 64 x base] entries and 256 MiB of log. */
static void test_snapshot_threshold_follows_image_size(void **state)
{
    AP_UNUSED(state);
    /* No entry seen yet, or a small catalog: the configured threshold. */
    assert_int_equal(ap_rsm_snapshot_threshold_for(8192, 0, 0), 8192);
    assert_int_equal(ap_rsm_snapshot_threshold_for(8192, 4u << 20, 500), 8388);
    assert_int_equal(ap_rsm_snapshot_threshold_for(8192, 1u << 20, 500), 8192);
    /* 150 MB catalog, 500-byte entries (one write each): 300,000 entries between snapshots. */
    assert_int_equal(ap_rsm_snapshot_threshold_for(8192, 150000000, 500), 300000);
    /* Big batched entries: the log, not the count, is what grows. */
    assert_int_equal(ap_rsm_snapshot_threshold_for(8192, 150000000, 60000), 8192);
    /* Capped: 256 MiB of log, and 64 x the base. */
    assert_int_equal(ap_rsm_snapshot_threshold_for(8192, 4ull << 30, 4096), 65536);
    assert_int_equal(ap_rsm_snapshot_threshold_for(8192, 4ull << 30, 100), 524288);
}

static void test_snapshot_trailing_follows_threshold(void **state)
{
    AP_UNUSED(state);
    /* At the configured threshold, or below it: the configured trailing. */
    assert_int_equal(ap_rsm_snapshot_trailing_for(8192, 2048, 8192), 2048);
    assert_int_equal(ap_rsm_snapshot_trailing_for(8192, 2048, 4096), 2048);
    /* The benchmark's case: a 143 MB image, 3.5 KB entries -> 40,169 entries between
     * snapshots; a follower down for ~3,300 entries must not need the image. */
    unsigned t = ap_rsm_snapshot_threshold_for(8192, 142802944, 3555);
    unsigned kept = ap_rsm_snapshot_trailing_for(8192, 2048, t);
    assert_int_equal(kept, 10042);
    assert_true(kept > 3300);
    /* Same ratio at the cap: 64 x the threshold keeps 64 x the trailing. */
    assert_int_equal(ap_rsm_snapshot_trailing_for(8192, 2048, 524288), 131072);
}

static void test_failed_command_is_undone(void **state)
{
    struct cluster *c = *state;
    struct outcome o;
    unsigned l = leader(c);
    assert_int_equal(propose(c, l, "fail ghost boo", &o), 0);
    raft_fixture_step_until_applied(&c->f, N, raft_last_index(raft_fixture_get(&c->f, l)), 5000);
    assert_true(o.done);
    assert_int_equal(o.raft_status, 0);
    assert_int_equal(o.cmd_status, AP_ECONFLICT);
    assert_converged(c);
    assert_int_equal(count_rows(c->st[0]), 0);
    /* The entry still counts as applied everywhere. */
    assert_int_equal(ap_rsm_fsm_applied(c->fsm[0]), raft_last_applied(raft_fixture_get(&c->f, 0)));
}

static void test_partitioned_leader(void **state)
{
    struct cluster *c = *state;
    write_n(c, 0, 10);
    unsigned old = leader(c);
    for (unsigned i = 0; i < N; i++) {
        if (i != old) {
            raft_fixture_disconnect(&c->f, old, i);
        }
    }
    /* A write on the isolated leader never commits. */
    struct outcome lost;
    assert_int_equal(propose(c, old, "put isolated yes", &lost), 0);
    raft_fixture_step_until_elapsed(&c->f, 3000);
    assert_true(!lost.done || lost.raft_status != 0);
    /* The majority elects a new leader and keeps writing. */
    unsigned l = old;
    for (int k = 0; k < 200 && (l == old); k++) {
        raft_fixture_step_until_elapsed(&c->f, 500);
        for (unsigned i = 0; i < N; i++) {
            if (i != old && raft_state(raft_fixture_get(&c->f, i)) == RAFT_LEADER) {
                l = i;
            }
        }
    }
    assert_true(l != old);
    struct outcome o;
    assert_int_equal(propose(c, l, "put after partition", &o), 0);
    raft_fixture_step_until_applied(&c->f, l, raft_last_index(raft_fixture_get(&c->f, l)), 5000);
    assert_true(o.done);
    assert_int_equal(o.raft_status, 0);
    for (unsigned i = 0; i < N; i++) {
        if (i != old) {
            raft_fixture_reconnect(&c->f, old, i);
        }
    }
    write_n(c, 100, 5);
    assert_converged(c);
    /* The uncommitted write of the deposed leader is gone everywhere. */
    sqlite3_stmt *stmt;
    for (unsigned i = 0; i < N; i++) {
        assert_int_equal(
            ap_store_prepare(c->st[i], "SELECT count(*) FROM kv WHERE k='isolated'", &stmt), 0);
        assert_int_equal(ap_store_step(c->st[i], stmt), AP_STORE_ROW);
        assert_int_equal(sqlite3_column_int64(stmt, 0), 0);
        ap_store_reset(stmt);
    }
}

static void test_killed_follower_catches_up_by_snapshot(void **state)
{
    struct cluster *c = *state;
    write_n(c, 0, 5);
    unsigned l = leader(c);
    unsigned victim = (l + 1) % N;
    raft_fixture_kill(&c->f, victim);
    /* Far more entries than threshold + trailing: the leader must send a snapshot. */
    write_n(c, 5, 120);
    raft_fixture_revive(&c->f, victim);
    write_n(c, 200, 3);
    assert_converged(c);
    assert_true(ap_rsm_fsm_snapshots_taken(c->fsm[l]) > 0);
    assert_true(ap_rsm_fsm_snapshots_restored(c->fsm[victim]) > 0);
    assert_int_equal(count_rows(c->st[victim]), 50);
}

static void test_new_server_joins(void **state)
{
    struct cluster *c = *state;
    write_n(c, 0, 80);
    add_server(c);
    unsigned newi = c->n - 1;
    assert_int_equal(raft_start(raft_fixture_get(&c->f, newi)), 0);
    unsigned l = leader(c);
    struct raft_change *req = ap_calloc(1, sizeof *req);
    assert_int_equal(raft_add(raft_fixture_get(&c->f, l), req, newi + 1, "4", NULL), 0);
    raft_fixture_step_until_elapsed(&c->f, 2000);
    ap_free(req);
    req = ap_calloc(1, sizeof *req);
    assert_int_equal(raft_assign(raft_fixture_get(&c->f, l), req, newi + 1, RAFT_VOTER, NULL), 0);
    raft_fixture_step_until_elapsed(&c->f, 5000);
    ap_free(req);
    write_n(c, 300, 2);
    assert_converged(c);
    assert_int_equal(count_rows(c->st[newi]), 50);
}

/* A disk fault stops raft on the node it hits (state UNAVAILABLE); the daemon
 * then exits, which the fixture models with kill. The rest keeps going. */
static void fault_and_continue(struct cluster *c, unsigned victim)
{
    struct outcome o;
    raft_fixture_io_fault(&c->f, victim, 0, 1);
    for (int k = 0; k < 50 && raft_state(raft_fixture_get(&c->f, victim)) != RAFT_UNAVAILABLE;
         k++) {
        if (raft_state(raft_fixture_get(&c->f, victim)) == RAFT_LEADER) {
            /* A leader hits the fault on its next append. */
            propose(c, victim, "put during fault x", &o);
        }
        raft_fixture_step_until_elapsed(&c->f, 100);
    }
    assert_int_equal(raft_state(raft_fixture_get(&c->f, victim)), RAFT_UNAVAILABLE);
    raft_fixture_kill(&c->f, victim);
    write_n(c, 5, 20);
    assert_converged(c);
    assert_true(count_rows(c->st[leader(c)]) >= 20);
}

static void test_disk_fault_on_follower(void **state)
{
    struct cluster *c = *state;
    write_n(c, 0, 5);
    fault_and_continue(c, (leader(c) + 2) % N);
}

/* A leader whose disk write fails reports the failure to the proposer (the
 * write is not acknowledged) and the group goes on. */
static void test_disk_fault_on_leader(void **state)
{
    struct cluster *c = *state;
    write_n(c, 0, 5);
    unsigned l = leader(c);
    struct outcome o;
    raft_fixture_io_fault(&c->f, l, 0, 1);
    int rv = propose(c, l, "put faulty 1", &o);
    if (rv == 0) {
        for (int k = 0; k < 50 && !o.done; k++) {
            raft_fixture_step_until_elapsed(&c->f, 100);
        }
        assert_true(o.done);
        assert_int_not_equal(o.raft_status, 0);
    } else {
        assert_int_equal(rv, RAFT_IOERR);
    }
    write_n_retrying(c, 5, 20);
    assert_converged(c);
}

/* A node without raft: an in-memory kv store and its fsm. */
static struct raft_fsm *open_kv_fsm(struct ap_store **st, struct ap_rsm_fsm **f)
{
    char errmsg[AP_ERRMSG_SIZE];
    assert_int_equal(ap_store_open(":memory:", AP_STORE_SYNC_OFF, st, errmsg), 0);
    assert_int_equal(ap_store_migrate(*st, kv_schema, 1), 0);
    assert_int_equal(ap_rsm_fsm_new(f, *st, kv_apply, NULL, errmsg), 0);
    return ap_rsm_fsm_raft(*f);
}

static void encode_cmds(struct raft_buffer *out, size_t n, const char *const *texts)
{
    const uint8_t *cmds[4];
    size_t lens[4];
    for (size_t i = 0; i < n; i++) {
        cmds[i] = (const uint8_t *)texts[i];
        lens[i] = strlen(texts[i]);
    }
    assert_int_equal(ap_rsm_entry_encode(cmds, lens, n, NULL, 0, out), 0);
}

/* A store error after some commands of an entry: none of them stays, and the entry's retry
 * applies each command once. */
static void test_store_error_mid_entry_undoes_the_entry(void **state)
{
    AP_UNUSED(state);
    struct ap_store *st;
    struct ap_rsm_fsm *f;
    struct raft_fsm *rf = open_kv_fsm(&st, &f);
    struct raft_buffer bad, good;
    encode_cmds(&bad, 3, (const char *const[]){"put a 1", "put b 2", "break"});
    encode_cmds(&good, 2, (const char *const[]){"put a 1", "put c 3"});
    void *result = NULL;
    assert_int_equal(rf->apply(rf, &bad, &result), RAFT_IOERR);
    assert_int_equal(count_rows(st), 0);
    assert_int_equal(ap_rsm_fsm_applied(f), 0);
    /* The store still works: the next entry applies once, at index 1. */
    assert_int_equal(rf->apply(rf, &good, &result), 0);
    assert_int_equal(ap_rsm_fsm_applied(f), 1);
    assert_int_equal(count_rows(st), 2);
    raft_free(bad.base);
    raft_free(good.base);
    ap_rsm_fsm_free(f);
    ap_store_close(st);
}

/* A restarted node: its store is ahead of the snapshot raft hands back. */
static void test_restart_neither_loses_nor_reapplies(void **state)
{
    AP_UNUSED(state);
    char errmsg[AP_ERRMSG_SIZE];
    struct ap_store *st;
    struct ap_rsm_fsm *f;
    struct raft_fsm *rf = open_kv_fsm(&st, &f);
    struct raft_buffer entries[6];
    for (int k = 0; k < 6; k++) {
        char cmd[32];
        snprintf(cmd, sizeof cmd, "put k%d v%d", k, k);
        const uint8_t *cmds[1] = {(const uint8_t *)cmd};
        size_t lens[1] = {strlen(cmd)};
        assert_int_equal(ap_rsm_entry_encode(cmds, lens, 1, NULL, 0, &entries[k]), 0);
    }
    void *result;
    for (int k = 0; k < 3; k++) {
        assert_int_equal(rf->apply(rf, &entries[k], &result), 0);
    }
    struct raft_buffer *snap;
    unsigned n_snap;
    assert_int_equal(rf->snapshot(rf, &snap, &n_snap), 0); /* image at index 3 */
    for (int k = 3; k < 6; k++) {
        assert_int_equal(rf->apply(rf, &entries[k], &result), 0);
    }
    assert_int_equal(ap_rsm_fsm_applied(f), 6);
    ap_rsm_fsm_free(f);

    /* "Restart": a new fsm over the same store reads the applied index back. */
    assert_int_equal(ap_rsm_fsm_new(&f, st, kv_apply, NULL, errmsg), 0);
    rf = ap_rsm_fsm_raft(f);
    assert_int_equal(ap_rsm_fsm_applied(f), 6);
    /* raft restores the older snapshot: the store keeps its newer content. */
    struct raft_buffer copy = {raft_malloc(snap[0].len), snap[0].len};
    memcpy(copy.base, snap[0].base, snap[0].len);
    assert_int_equal(rf->restore(rf, &copy), 0);
    assert_int_equal(ap_rsm_fsm_applied(f), 6);
    assert_int_equal(count_rows(st), 6);
    assert_int_equal(ap_rsm_fsm_snapshots_restored(f), 0);
    ap_rsm_fsm_free(f);

    /* A store that is behind the snapshot (a fresh node) takes the image. */
    struct ap_store *st2;
    rf = open_kv_fsm(&st2, &f);
    assert_int_equal(rf->restore(rf, &snap[0]), 0);
    assert_int_equal(ap_rsm_fsm_applied(f), 3);
    assert_int_equal(count_rows(st2), 3);
    /* Garbage is refused, not crashed on. */
    struct raft_buffer junk = {raft_calloc(1, 64), 64};
    assert_int_equal(rf->restore(rf, &junk), RAFT_CORRUPT);
    raft_free(junk.base);
    raft_free(snap);
    for (int k = 0; k < 6; k++) {
        raft_free(entries[k].base);
    }
    ap_rsm_fsm_free(f);
    ap_store_close(st2);
    ap_store_close(st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_replicates_and_converges, setup, teardown),
        cmocka_unit_test_setup_teardown(test_followers_apply_at_flush, setup, teardown),
        cmocka_unit_test(test_snapshot_threshold_follows_image_size),
        cmocka_unit_test(test_snapshot_trailing_follows_threshold),
        cmocka_unit_test(test_store_error_mid_entry_undoes_the_entry),
        cmocka_unit_test_setup_teardown(test_failed_command_is_undone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_partitioned_leader, setup, teardown),
        cmocka_unit_test_setup_teardown(test_killed_follower_catches_up_by_snapshot, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_new_server_joins, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disk_fault_on_follower, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disk_fault_on_leader, setup, teardown),
        cmocka_unit_test(test_restart_neither_loses_nor_reapplies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
