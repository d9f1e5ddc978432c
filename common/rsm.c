/* rsm: a replicated state machine: canonical/raft over libuv, applying typed commands to SQLite. */
#include "ap/rsm.h"

#include "ap/base.h"
#include "ap/fs.h"
#include "ap/log.h"
#include "ap/metrics.h"
#include "ap/raft_transport.h"

#include <errno.h>
#include <raft/uv.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#define MAX_PEERS 16

/* A command waiting to be put into an entry, or riding in one. */
struct proposal {
    uint8_t *cmd;
    size_t len;
    ap_rsm_propose_cb cb;
    void *data;
    uint64_t start_ns;
    struct proposal *next;
};

/* One raft entry in flight. */
struct apply_req {
    struct raft_apply req;
    struct ap_rsm *rsm;
    struct proposal *props; /* In order of the commands in the entry. */
    size_t n;
};

struct waiter {
    ap_rsm_barrier_cb cb;
    void *data;
    struct waiter *next;
};

struct barrier_req {
    struct raft_barrier req;
    struct ap_rsm *rsm;
    struct waiter *waiters;
};

/* A membership change goes through three steps: record addresses, raft_add, raft_assign. */
struct change_req {
    struct raft_change req;
    struct ap_rsm *rsm;
    struct ap_rsm_member m;
    bool remove;
    int step;
    ap_rsm_change_cb cb;
    void *data;
};

struct ap_rsm {
    uv_loop_t *loop;
    struct raft raft;
    struct raft_io io;
    /* raft_uv's own start and the recv callback raft gave it (see io_recv). */
    int (*uv_start)(struct raft_io *io, unsigned msecs, raft_io_tick_cb tick, raft_io_recv_cb recv);
    raft_io_recv_cb raft_recv;
    uint64_t leader_contact_ms; /* When a leader's message last arrived (loop time). */
    uint64_t leader_closed_ms;  /* When the leader closed our connection (peer_lost), or 0. */
    uint64_t rng;               /* io_random's state: differs per node and per start. */
    struct ap_raft_transport transport;
    struct ap_store *store;
    struct ap_rsm_fsm *fsm;
    uint64_t id;
    char dir[512];
    char raft_addr[64];
    char http_addr[64];
    struct ap_rsm_member peers[MAX_PEERS];
    size_t n_peers;
    bool join;
    unsigned election_ms, heartbeat_ms, threshold, trailing;

    uv_idle_t flush_idle;    /* Runs the batcher in the iteration a proposal arrived. */
    uv_check_t commit_check; /* Group commit at the end of every loop iteration. */
    struct proposal *queue_head, *queue_tail;
    size_t queue_len;
    struct waiter *barrier_waiters;

    bool raft_inited, started, closing;
    int handles_open;
    void (*close_cb)(void *data);
    void *close_data;

    uint64_t recorded_term;       /* Term in which this leader recorded the initial peers. */
    enum ap_rsm_role logged_role; /* Last role written to the log. */
    uint64_t logged_leader;       /* Last leader id written to the log. */
    struct ap_metric *m_proposals, *m_entries, *m_latency, *m_term, *m_commit, *m_applied,
        *m_snapshots, *m_is_leader;
    uint64_t snapshots_seen;
};

/*
 * Every message raft receives passes here first (docs/replication.md
 * "Elections"). canonical/raft 0.15 refuses a vote while the voter still
 * believes in a leader, and a follower forgets its leader only when its own
 * randomized timeout fires: after a leader dies the region waits for the
 * later of the two survivors' timeouts. The thesis' rule (section 4.2.3) is
 * to refuse only "within the minimum election timeout of hearing from a
 * current leader": past that, a follower marks the request as allowed to
 * disrupt the leader it no longer hears from, so the first survivor to time
 * out wins. A leader, or a follower that heard from its leader recently,
 * still refuses, which keeps removed or partitioned servers from disrupting
 * a healthy group.
 */
static int io_random(struct raft_io *io, int min, int max);

/* Term of the last entry in raft's in-memory log (or of its last snapshot). */
static raft_term last_log_term(const struct raft *rf)
{
    const struct raft_log *l = &rf->log;
    if (l->front == l->back) {
        return l->snapshot.last_term;
    }
    size_t last = l->back == 0 ? l->size - 1 : l->back - 1;
    return l->entries[last].term;
}

/* True when our log is more up to date than the candidate's (section 3.6.1): we must refuse. */
static bool log_is_behind_ours(struct raft *rf, const struct raft_request_vote *rv)
{
    raft_term ours = last_log_term(rf);
    if (rv->last_log_term != ours) {
        return rv->last_log_term < ours;
    }
    return rv->last_log_index < raft_last_index(rf);
}

/*
 * Make a follower's election timer expire within max_jitter_ms (raft checks it
 * at its next tick after that, every heartbeat_ms). Used when waiting for the
 * randomized timeout would only cost time: a follower that hears no leader
 * and refuses a candidate whose log is behind its own knows that candidate
 * cannot win with its vote; a follower whose leader's connection closed has
 * most likely lost its leader (peer_lost). Starting an election early is
 * always safe in raft; it only changes who is first.
 */
static void campaign_soon(struct ap_rsm *r, unsigned max_jitter_ms, const char *reason)
{
    if (raft_state(&r->raft) != RAFT_FOLLOWER) {
        return;
    }
    /* We voted this term for someone other than the leader we knew: an election is under
     * way or was just won, and its winner's first heartbeat may still be in flight. */
    raft_id voted = r->raft.voted_for;
    if (voted != 0 && voted != r->id && voted != r->raft.follower_state.current_leader.id) {
        return;
    }
    raft_time now = r->io.time(&r->io);
    unsigned timeout = r->raft.follower_state.randomized_election_timeout;
    unsigned jitter = (unsigned)io_random(&r->io, 0, (int)max_jitter_ms);
    if (now - r->raft.election_timer_start + jitter < timeout) {
        r->raft.election_timer_start = now - timeout + jitter;
    }
    AP_LOG(AP_LOG_INFO, "raft_campaign_early id=%llu reason=%s in_ms=%u", (unsigned long long)r->id,
           reason, jitter);
}

static bool is_member(const struct raft *rf, raft_id id)
{
    for (unsigned i = 0; i < rf->configuration.n; i++) {
        if (rf->configuration.servers[i].id == id) {
            return true;
        }
    }
    return false;
}

static void probe_sent(struct raft_io_send *req, int status)
{
    AP_UNUSED(status);
    ap_free(req);
}

/*
 * The transport saw a peer close our connection to it and shut it for
 * writing (ap_raft_transport_init). Send one message nobody would act on (an
 * append-entries result of term 0, ignored by any server, and failing anyway
 * on the shut connection): its failure makes raft_uv reconnect now, while
 * the next real message (maybe the vote request that ends an election) would
 * otherwise be the one lost. When that peer was our leader, its process is
 * most likely gone: campaign now (docs/replication.md "Elections").
 * Accepted corner: if raft_uv is already reconnecting to that peer, the probe
 * joins its queue of at most 3 messages and may push the oldest out; it is
 * then delivered later to the live peer, which ignores it.
 */
static void peer_lost(void *data, raft_id id, const char *address)
{
    struct ap_rsm *r = data;
    if (r->closing || !r->started || !is_member(&r->raft, id)) {
        return; /* a removed member is never written to again: let raft_uv forget it */
    }
    struct raft_io_send *req = ap_calloc(1, sizeof *req);
    if (req == NULL) {
        return;
    }
    struct raft_message m;
    memset(&m, 0, sizeof m);
    m.type = RAFT_IO_APPEND_ENTRIES_RESULT;
    m.server_id = id;
    m.server_address = address;
    m.append_entries_result.rejected = 1;
    if (r->io.send(&r->io, req, &m, probe_sent) != 0) {
        ap_free(req);
    }
    raft_id leader = 0;
    const char *leader_address = NULL;
    raft_leader(&r->raft, &leader, &leader_address);
    if (raft_state(&r->raft) == RAFT_FOLLOWER && leader == id) {
        /* Most likely the leader's process is gone (its kernel closed the
         * connection); a live leader that closed it sends its next heartbeat
         * within 100 ms, which turns an early candidate back. Campaign
         * without waiting for the election timeout, spread over a few ticks
         * so that the survivors do not split the vote. */
        r->leader_closed_ms = uv_now(r->loop);
        campaign_soon(r, 3 * r->heartbeat_ms, "leader_connection_closed");
    }
}

/* The sender's term in a message only a leader sends. */
static raft_term leader_term(const struct raft_message *m)
{
    switch (m->type) {
    case RAFT_IO_APPEND_ENTRIES:
        return m->append_entries.term;
    case RAFT_IO_INSTALL_SNAPSHOT:
        return m->install_snapshot.term;
    default:
        return m->timeout_now.term;
    }
}

static void io_recv(struct raft_io *io, struct raft_message *m)
{
    struct ap_rsm *r = AP_CONTAINER_OF(io, struct ap_rsm, io);
    uint64_t now = uv_now(r->loop);
    switch (m->type) {
    case RAFT_IO_APPEND_ENTRIES:
    case RAFT_IO_INSTALL_SNAPSHOT:
    case RAFT_IO_TIMEOUT_NOW:
        /* Only a leader of our term or a later one counts (a deposed one's late message not). */
        if (leader_term(m) >= r->raft.current_term) {
            r->leader_contact_ms = now;
            r->leader_closed_ms = 0;
        }
        break;
    case RAFT_IO_REQUEST_VOTE:
        if (raft_state(&r->raft) == RAFT_FOLLOWER &&
            (now - r->leader_contact_ms >= r->election_ms ||
             (r->leader_closed_ms != 0 && now - r->leader_closed_ms < r->election_ms))) {
            m->request_vote.disrupt_leader = true;
            if (log_is_behind_ours(&r->raft, &m->request_vote)) {
                r->raft_recv(io, m);
                campaign_soon(r, r->heartbeat_ms, "candidate_log_behind");
                return;
            }
        }
        break;
    default:
        break;
    }
    r->raft_recv(io, m);
}

/* raft_uv (0.15) has no async_work: run it on libuv's threadpool (snapshots, fsm version 3). */
struct async_job {
    uv_work_t work;
    struct raft_io_async_work *req;
    raft_io_async_work_cb cb;
    int status;
};

static void async_job_run(uv_work_t *w)
{
    struct async_job *j = w->data;
    j->status = j->req->work(j->req);
}

static void async_job_done(uv_work_t *w, int status)
{
    struct async_job *j = w->data;
    j->cb(j->req, status != 0 ? RAFT_CANCELED : j->status);
    ap_free(j);
}

static int io_async_work(struct raft_io *io, struct raft_io_async_work *req,
                         raft_io_async_work_cb cb)
{
    struct ap_rsm *r = AP_CONTAINER_OF(io, struct ap_rsm, io);
    struct async_job *j = ap_calloc(1, sizeof *j);
    if (j == NULL) {
        return RAFT_NOMEM;
    }
    j->req = req;
    j->cb = cb;
    j->work.data = j;
    if (uv_queue_work(r->loop, &j->work, async_job_run, async_job_done) != 0) {
        ap_free(j);
        return RAFT_IOERR;
    }
    return 0;
}

/*
 * Randomized election timeouts must differ between the members of a group: the
 * members of a region are started together and drew equal timeouts (two
 * candidates within 15 ms of each other, every election taking the full 2T).
 * splitmix64 seeded with the raft id, the pid and the clock.
 */
static int io_random(struct raft_io *io, int min, int max)
{
    struct ap_rsm *r = AP_CONTAINER_OF(io, struct ap_rsm, io);
    uint64_t z = (r->rng += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    z ^= z >> 31;
    return max > min ? min + (int)(z % (uint64_t)(max - min)) : min;
}

static int io_start(struct raft_io *io, unsigned msecs, raft_io_tick_cb tick,
                    raft_io_recv_cb recv)
{
    struct ap_rsm *r = AP_CONTAINER_OF(io, struct ap_rsm, io);
    r->raft_recv = recv;
    return r->uv_start(io, msecs, tick, io_recv);
}

static uint64_t now_ns(void)
{
    return uv_hrtime();
}

enum ap_rsm_role ap_rsm_role(struct ap_rsm *r)
{
    switch (raft_state(&r->raft)) {
    case RAFT_FOLLOWER:
        return AP_RSM_FOLLOWER;
    case RAFT_CANDIDATE:
        return AP_RSM_CANDIDATE;
    case RAFT_LEADER:
        return AP_RSM_LEADER;
    default:
        return AP_RSM_UNAVAILABLE;
    }
}

const char *ap_rsm_role_name(enum ap_rsm_role role)
{
    static const char *names[] = {"unavailable", "follower", "candidate", "leader"};
    return (size_t)role < AP_ARRAY_LEN(names) ? names[role] : "unavailable";
}

/* docs/replication.md "Snapshots": after each snapshot, let the log grow to about the
 * image's size (at most AP_RSM_SNAPSHOT_MAX_LOG_BYTES) before the next one, so writing images
 * costs at most about as many bytes as the log itself; never below the configured threshold,
 * never above AP_RSM_SNAPSHOT_MAX_FACTOR times it. Offset per node as at start. */
unsigned ap_rsm_snapshot_threshold_for(unsigned base, uint64_t image_bytes, uint64_t entry_bytes)
{
    uint64_t t = base;
    if (entry_bytes > 0) {
        uint64_t log_bytes = image_bytes < AP_RSM_SNAPSHOT_MAX_LOG_BYTES
                                 ? image_bytes
                                 : AP_RSM_SNAPSHOT_MAX_LOG_BYTES;
        t = log_bytes / entry_bytes;
    }
    uint64_t max = (uint64_t)base * AP_RSM_SNAPSHOT_MAX_FACTOR;
    t = t < base ? base : t > max ? max : t;
    return (unsigned)t;
}

/* docs/replication.md "Snapshots": a follower that was down as long as before the threshold
 * grew must still catch up from the log, not from a transfer of the (now large) image. */
unsigned ap_rsm_snapshot_trailing_for(unsigned base_threshold, unsigned base_trailing,
                                      unsigned threshold)
{
    if (base_threshold == 0 || threshold <= base_threshold) {
        return base_trailing;
    }
    return (unsigned)((uint64_t)base_trailing * threshold / base_threshold);
}

static void resize_snapshot_threshold(struct ap_rsm *r)
{
    uint64_t image = ap_rsm_fsm_snapshot_bytes(r->fsm);
    uint64_t entry = ap_rsm_fsm_take_mean_entry_bytes(r->fsm);
    unsigned t = ap_rsm_snapshot_threshold_for(r->threshold, image, entry);
    t += (unsigned)((r->id - 1) % 4) * (t / 4);
    if (t != r->raft.snapshot.threshold) {
        unsigned trailing = ap_rsm_snapshot_trailing_for(r->threshold, r->trailing, t);
        AP_LOG(AP_LOG_INFO,
               "rsm_snapshot_threshold entries=%u trailing=%u image_bytes=%llu entry_bytes=%llu",
               t, trailing, (unsigned long long)image, (unsigned long long)entry);
        raft_set_snapshot_threshold(&r->raft, t);
        raft_set_snapshot_trailing(&r->raft, trailing);
    }
}

static void update_gauges(struct ap_rsm *r)
{
    ap_metric_set(r->m_term, (double)r->raft.current_term);
    ap_metric_set(r->m_commit, (double)r->raft.commit_index);
    ap_metric_set(r->m_applied, (double)ap_rsm_fsm_applied(r->fsm));
    ap_metric_set(r->m_is_leader, ap_rsm_role(r) == AP_RSM_LEADER ? 1 : 0);
    uint64_t snaps = ap_rsm_fsm_snapshots_taken(r->fsm);
    if (snaps > r->snapshots_seen) {
        ap_metric_add(r->m_snapshots, (double)(snaps - r->snapshots_seen));
        r->snapshots_seen = snaps;
        resize_snapshot_threshold(r);
    }
}

static void fail_result(struct ap_rsm_result *res, int status, const char *msg)
{
    memset(res, 0, sizeof *res);
    res->status = status;
    ap_errmsg_set(res->message, "%s", msg);
}

static void complete_proposal(struct proposal *p, struct ap_rsm_result *res)
{
    p->cb(p->data, res);
    ap_free(p->cmd);
    ap_free(p);
}

static int status_from_raft(int status)
{
    int e = ap_err_from_raft(status);
    return e == 0 ? AP_EINTERNAL : e;
}

static void apply_done(struct raft_apply *req, int status, void *result)
{
    struct apply_req *a = req->data;
    struct ap_rsm *r = a->rsm;
    struct ap_rsm_batch *batch = result;
    uint64_t t = now_ns();
    struct proposal *p = a->props;
    for (size_t i = 0; p != NULL; i++) {
        struct proposal *next = p->next;
        struct ap_rsm_result res;
        if (status != 0) {
            fail_result(&res, status_from_raft(status), raft_strerror(status));
            complete_proposal(p, &res);
        } else if (batch == NULL || i >= batch->n) {
            fail_result(&res, AP_EINTERNAL, "entry applied without a result");
            complete_proposal(p, &res);
        } else {
            ap_metric_observe(r->m_latency, (double)(t - p->start_ns) / 1e9);
            complete_proposal(p, &batch->results[i]);
        }
        p = next;
    }
    ap_free(a);
}

/* Put every queued command into one entry (up to AP_RSM_MAX_BATCH each). */
static void flush_queue(struct ap_rsm *r)
{
    while (r->queue_head != NULL) {
        const uint8_t *cmds[AP_RSM_MAX_BATCH];
        size_t lens[AP_RSM_MAX_BATCH];
        size_t n = 0;
        struct proposal *first = r->queue_head, *last = NULL;
        for (struct proposal *p = first; p != NULL && n < AP_RSM_MAX_BATCH; p = p->next) {
            cmds[n] = p->cmd;
            lens[n] = p->len;
            n++;
            last = p;
        }
        r->queue_head = last->next;
        if (r->queue_head == NULL) {
            r->queue_tail = NULL;
        }
        r->queue_len -= n;
        last->next = NULL;

        struct apply_req *a = ap_calloc(1, sizeof *a);
        struct raft_buffer buf = {NULL, 0};
        int rv = a == NULL ? AP_ENOMEM : ap_rsm_entry_encode(cmds, lens, n, NULL, 0, &buf);
        if (rv == 0) {
            a->rsm = r;
            a->props = first;
            a->n = n;
            a->req.data = a;
            int rrv = raft_apply(&r->raft, &a->req, &buf, 1, apply_done);
            if (rrv != 0) {
                raft_free(buf.base);
                rv = status_from_raft(rrv);
            } else {
                ap_metric_inc(r->m_entries);
            }
        }
        if (rv != 0) {
            ap_free(a);
            for (struct proposal *p = first; p != NULL;) {
                struct proposal *next = p->next;
                struct ap_rsm_result res;
                fail_result(&res, rv, ap_strerror(rv));
                complete_proposal(p, &res);
                p = next;
            }
        }
    }
}

static void barrier_done(struct raft_barrier *req, int status)
{
    struct barrier_req *b = req->data;
    int st = status == 0 ? 0 : status_from_raft(status);
    for (struct waiter *w = b->waiters; w != NULL;) {
        struct waiter *next = w->next;
        w->cb(w->data, st);
        ap_free(w);
        w = next;
    }
    ap_free(b);
}

static void flush_barriers(struct ap_rsm *r)
{
    if (r->barrier_waiters == NULL) {
        return;
    }
    struct waiter *ws = r->barrier_waiters;
    r->barrier_waiters = NULL;
    struct barrier_req *b = ap_calloc(1, sizeof *b);
    int rv = AP_ENOMEM;
    if (b != NULL) {
        b->rsm = r;
        b->waiters = ws;
        b->req.data = b;
        int rrv = raft_barrier(&r->raft, &b->req, barrier_done);
        if (rrv == 0) {
            return;
        }
        rv = status_from_raft(rrv);
        ap_free(b);
    }
    for (struct waiter *w = ws; w != NULL;) {
        struct waiter *next = w->next;
        w->cb(w->data, rv);
        ap_free(w);
        w = next;
    }
}

static void on_flush_idle(uv_idle_t *h)
{
    struct ap_rsm *r = AP_CONTAINER_OF(h, struct ap_rsm, flush_idle);
    uv_idle_stop(h);
    flush_queue(r);
    flush_barriers(r);
}

static void record_peers_applied(struct raft_apply *req, int status, void *result)
{
    AP_UNUSED(status);
    AP_UNUSED(result);
    ap_free(req);
}

/* A new leader makes sure every initial peer's HTTP address is in the
 * replicated member table, so nodes that joined later (and never saw the
 * --peer flags) can redirect to any of them. */
static void record_initial_peers(struct ap_rsm *r)
{
    if (r->n_peers == 0 || r->recorded_term == r->raft.current_term ||
        raft_state(&r->raft) != RAFT_LEADER) {
        return;
    }
    r->recorded_term = r->raft.current_term;
    struct ap_rsm_member *known;
    size_t n_known;
    if (ap_rsm_fsm_members(r->fsm, &known, &n_known) != 0) {
        return;
    }
    struct ap_rsm_member missing[MAX_PEERS];
    size_t n_missing = 0;
    for (size_t i = 0; i < r->n_peers; i++) {
        bool found = false;
        for (size_t j = 0; j < n_known; j++) {
            found = found || known[j].id == r->peers[i].id;
        }
        if (!found) {
            missing[n_missing++] = r->peers[i];
        }
    }
    ap_free(known);
    if (n_missing == 0) {
        return;
    }
    struct raft_buffer buf;
    struct raft_apply *req = ap_calloc(1, sizeof *req);
    if (req == NULL || ap_rsm_entry_encode(NULL, NULL, 0, missing, n_missing, &buf) != 0) {
        ap_free(req);
        return;
    }
    if (raft_apply(&r->raft, req, &buf, 1, record_peers_applied) != 0) {
        raft_free(buf.base);
        ap_free(req);
    }
}

/* raft 0.15 has no leadership callback (RAFT-NOTES pitfall 6): poll once
 * per loop iteration and log each change, so an operator can follow elections. */
static void log_role_changes(struct ap_rsm *r)
{
    enum ap_rsm_role role = ap_rsm_role(r);
    raft_id leader = 0;
    const char *addr = NULL;
    raft_leader(&r->raft, &leader, &addr);
    if (role != r->logged_role || leader != r->logged_leader) {
        AP_LOG(AP_LOG_INFO, "raft_role_changed id=%llu role=%s term=%llu leader=%llu",
               (unsigned long long)r->id, ap_rsm_role_name(role),
               (unsigned long long)r->raft.current_term, (unsigned long long)leader);
        r->logged_role = role;
        r->logged_leader = leader;
    }
}

static void on_commit_check(uv_check_t *h)
{
    struct ap_rsm *r = AP_CONTAINER_OF(h, struct ap_rsm, commit_check);
    log_role_changes(r);
    record_initial_peers(r);
    /* Proposals made in this iteration's I/O callbacks go to raft now, before the commit
     * below, instead of from the idle handle at the start of the next iteration
     * (docs/replication.md "Group commit"); the batch is the same. */
    if (r->queue_head != NULL || r->barrier_waiters != NULL) {
        uv_idle_stop(&r->flush_idle);
        flush_queue(r);
        flush_barriers(r);
    }
    /* docs/replication.md: entries applied in one loop iteration share one
     * SQLite transaction; they are already durable in the raft log. */
    ap_rsm_fsm_flush(r->fsm);
    update_gauges(r);
}

int ap_rsm_propose(struct ap_rsm *r, const uint8_t *cmd, size_t len, ap_rsm_propose_cb cb,
                   void *data)
{
    if (r->closing) {
        return AP_ESHUTDOWN;
    }
    if (len == 0 || len > AP_RSM_MAX_COMMAND) {
        return len == 0 ? AP_EINVAL : AP_ETOOBIG;
    }
    if (raft_state(&r->raft) != RAFT_LEADER) {
        return AP_ENOTLEADER;
    }
    struct proposal *p = ap_calloc(1, sizeof *p);
    uint8_t *copy = ap_malloc(len);
    if (p == NULL || copy == NULL) {
        ap_free(p);
        ap_free(copy);
        return AP_ENOMEM;
    }
    memcpy(copy, cmd, len);
    p->cmd = copy;
    p->len = len;
    p->cb = cb;
    p->data = data;
    p->start_ns = now_ns();
    if (r->queue_tail != NULL) {
        r->queue_tail->next = p;
    } else {
        r->queue_head = p;
    }
    r->queue_tail = p;
    r->queue_len++;
    ap_metric_inc(r->m_proposals);
    uv_idle_start(&r->flush_idle, on_flush_idle);
    return 0;
}

int ap_rsm_barrier(struct ap_rsm *r, ap_rsm_barrier_cb cb, void *data)
{
    if (r->closing) {
        return AP_ESHUTDOWN;
    }
    if (raft_state(&r->raft) != RAFT_LEADER) {
        return AP_ENOTLEADER;
    }
    struct waiter *w = ap_calloc(1, sizeof *w);
    if (w == NULL) {
        return AP_ENOMEM;
    }
    w->cb = cb;
    w->data = data;
    w->next = r->barrier_waiters;
    r->barrier_waiters = w;
    uv_idle_start(&r->flush_idle, on_flush_idle);
    return 0;
}

/* Look up the HTTP address of a member: replicated records first, then the initial peers. */
static bool lookup_member(struct ap_rsm *r, uint64_t id, struct ap_rsm_member *out)
{
    struct ap_rsm_member *ms;
    size_t n;
    if (ap_rsm_fsm_members(r->fsm, &ms, &n) == 0) {
        for (size_t i = 0; i < n; i++) {
            if (ms[i].id == id) {
                *out = ms[i];
                ap_free(ms);
                return true;
            }
        }
        ap_free(ms);
    }
    for (size_t i = 0; i < r->n_peers; i++) {
        if (r->peers[i].id == id) {
            *out = r->peers[i];
            return true;
        }
    }
    if (id == r->id) {
        out->id = r->id;
        ap_strlcpy(out->raft, r->raft_addr, sizeof out->raft);
        ap_strlcpy(out->http, r->http_addr, sizeof out->http);
        return true;
    }
    return false;
}

int ap_rsm_leader(struct ap_rsm *r, struct ap_rsm_member *out)
{
    raft_id id = 0;
    const char *addr = NULL;
    raft_leader(&r->raft, &id, &addr);
    if (id == 0) {
        return AP_ENOTFOUND;
    }
    memset(out, 0, sizeof *out);
    if (!lookup_member(r, id, out)) {
        out->id = id;
        ap_strlcpy(out->raft, addr != NULL ? addr : "", sizeof out->raft);
    }
    return 0;
}

int ap_rsm_members(struct ap_rsm *r, struct ap_rsm_member_info **out, size_t *n)
{
    const struct raft_configuration *c = &r->raft.configuration;
    *out = NULL;
    *n = 0;
    if (c->n == 0) {
        return 0;
    }
    struct ap_rsm_member_info *infos = ap_calloc(c->n, sizeof *infos);
    if (infos == NULL) {
        return AP_ENOMEM;
    }
    for (unsigned i = 0; i < c->n; i++) {
        struct ap_rsm_member_info *mi = &infos[i];
        if (!lookup_member(r, c->servers[i].id, &mi->m)) {
            mi->m.id = c->servers[i].id;
        }
        ap_strlcpy(mi->m.raft, c->servers[i].address, sizeof mi->m.raft);
        mi->role = c->servers[i].role == RAFT_VOTER     ? "voter"
                   : c->servers[i].role == RAFT_STANDBY ? "standby"
                                                        : "spare";
    }
    *out = infos;
    *n = c->n;
    return 0;
}

uint64_t ap_rsm_id(const struct ap_rsm *r)
{
    return r->id;
}

uint64_t ap_rsm_term(struct ap_rsm *r)
{
    return r->raft.current_term;
}

uint64_t ap_rsm_commit_index(struct ap_rsm *r)
{
    return r->raft.commit_index;
}

uint64_t ap_rsm_applied_index(struct ap_rsm *r)
{
    return ap_rsm_fsm_applied(r->fsm);
}

uint64_t ap_rsm_last_index(struct ap_rsm *r)
{
    return raft_last_index(&r->raft);
}

struct ap_store *ap_rsm_store(struct ap_rsm *r)
{
    return r->store;
}

/* ---- membership ---- */

static void change_finish(struct change_req *c, int status, const char *msg)
{
    AP_LOG(status == 0 ? AP_LOG_INFO : AP_LOG_WARN,
           "rsm_member_change id=%llu op=%s status=%s msg=\"%s\"", (unsigned long long)c->m.id,
           c->remove ? "remove" : "add", status == 0 ? "ok" : ap_err_code(status), msg);
    if (c->cb != NULL) {
        c->cb(c->data, status, msg);
    }
    ap_free(c);
}

static void change_step(struct change_req *c, int status);

static void change_raft_cb(struct raft_change *req, int status)
{
    struct change_req *c = req->data;
    change_step(c, status == 0 ? 0 : status_from_raft(status));
}

/* The entry carrying a member record. */
struct record_req {
    struct raft_apply req;
    struct change_req *change;
};

static void record_applied(struct raft_apply *req, int status, void *result)
{
    struct record_req *rr = req->data;
    struct change_req *c = rr->change;
    AP_UNUSED(result);
    ap_free(rr);
    change_step(c, status == 0 ? 0 : status_from_raft(status));
}

/* Propose the member's addresses (or their removal) as an entry of its own;
 * the next step runs once it is applied, so redirects know the new node. */
static int propose_member_record(struct change_req *c)
{
    struct ap_rsm *r = c->rsm;
    struct ap_rsm_member rec = c->m;
    struct raft_buffer buf = {NULL, 0};
    if (c->remove) {
        rec.http[0] = '\0';
    }
    struct record_req *rr = ap_calloc(1, sizeof *rr);
    if (rr == NULL) {
        return AP_ENOMEM;
    }
    int rv = ap_rsm_entry_encode(NULL, NULL, 0, &rec, 1, &buf);
    if (rv != 0) {
        ap_free(rr);
        return rv;
    }
    rr->change = c;
    rr->req.data = rr;
    int rrv = raft_apply(&r->raft, &rr->req, &buf, 1, record_applied);
    if (rrv != 0) {
        raft_free(buf.base);
        ap_free(rr);
        return status_from_raft(rrv);
    }
    return 0;
}

static void change_step(struct change_req *c, int status)
{
    struct ap_rsm *r = c->rsm;
    if (status != 0) {
        change_finish(c, status, ap_strerror(status));
        return;
    }
    int rv = 0;
    c->step++;
    c->req.data = c;
    if (!c->remove) {
        switch (c->step) {
        case 1: /* record addresses, then wait until applied */
            rv = propose_member_record(c);
            break;
        case 2:
            rv = ap_err_from_raft(raft_add(&r->raft, &c->req, c->m.id, c->m.raft, change_raft_cb));
            break;
        case 3:
            /* raft promotes after the new member caught up (catch-up rounds). */
            rv = ap_err_from_raft(
                raft_assign(&r->raft, &c->req, c->m.id, RAFT_VOTER, change_raft_cb));
            break;
        default:
            change_finish(c, 0, "member added");
            return;
        }
    } else {
        switch (c->step) {
        case 1:
            rv = ap_err_from_raft(raft_remove(&r->raft, &c->req, c->m.id, change_raft_cb));
            break;
        case 2:
            rv = propose_member_record(c);
            break;
        default:
            change_finish(c, 0, "member removed");
            return;
        }
    }
    if (rv != 0) {
        change_finish(c, rv, r->raft.errmsg[0] != '\0' ? r->raft.errmsg : ap_strerror(rv));
    }
}

int ap_rsm_add_member(struct ap_rsm *r, const struct ap_rsm_member *m, ap_rsm_change_cb cb,
                      void *data)
{
    if (raft_state(&r->raft) != RAFT_LEADER) {
        return AP_ENOTLEADER;
    }
    if (m->id == 0 || m->raft[0] == '\0' || m->http[0] == '\0') {
        return AP_EINVAL;
    }
    const struct raft_configuration *conf = &r->raft.configuration;
    for (unsigned i = 0; i < conf->n; i++) {
        if (conf->servers[i].id == m->id) {
            return AP_EEXIST;
        }
    }
    struct change_req *c = ap_calloc(1, sizeof *c);
    if (c == NULL) {
        return AP_ENOMEM;
    }
    c->rsm = r;
    c->m = *m;
    c->cb = cb;
    c->data = data;
    change_step(c, 0);
    return 0;
}

int ap_rsm_remove_member(struct ap_rsm *r, uint64_t id, ap_rsm_change_cb cb, void *data)
{
    if (raft_state(&r->raft) != RAFT_LEADER) {
        return AP_ENOTLEADER;
    }
    bool found = false;
    const struct raft_configuration *conf = &r->raft.configuration;
    for (unsigned i = 0; i < conf->n; i++) {
        found = found || conf->servers[i].id == id;
    }
    if (!found) {
        return AP_ENOTFOUND;
    }
    struct change_req *c = ap_calloc(1, sizeof *c);
    if (c == NULL) {
        return AP_ENOMEM;
    }
    c->rsm = r;
    c->m.id = id;
    c->remove = true;
    c->cb = cb;
    c->data = data;
    change_step(c, 0);
    return 0;
}

/* ---- life cycle ---- */

static void register_metrics(struct ap_rsm *r, struct ap_metrics *m, const char *labels)
{
    if (m == NULL) {
        return;
    }
    r->m_proposals = ap_metrics_counter(m, "archipel_raft_proposals_total",
                                        "Commands proposed on this node while leader.", labels);
    r->m_entries =
        ap_metrics_counter(m, "archipel_raft_entries_total",
                           "Raft entries appended by this node (batches of commands).", labels);
    r->m_latency = ap_metrics_histogram(m, "archipel_raft_apply_latency_seconds",
                                        "Time from proposal to applied result.", labels,
                                        AP_METRICS_LATENCY_BOUNDS, AP_METRICS_LATENCY_BOUNDS_LEN);
    r->m_term = ap_metrics_gauge(m, "archipel_raft_term", "Current raft term.", labels);
    r->m_commit = ap_metrics_gauge(m, "archipel_raft_commit_index", "Raft commit index.", labels);
    r->m_applied = ap_metrics_gauge(m, "archipel_raft_applied_index",
                                    "Index of the last entry applied to the catalog.", labels);
    r->m_snapshots = ap_metrics_counter(m, "archipel_raft_snapshots_total",
                                        "Snapshots taken by this node.", labels);
    r->m_is_leader =
        ap_metrics_gauge(m, "archipel_raft_is_leader", "1 when this node leads.", labels);
}

int ap_rsm_new(struct ap_rsm **out, uv_loop_t *loop, const struct ap_rsm_config *cfg, char *errmsg)
{
    char path[600];
    int rv;
    if (cfg->id == 0 || cfg->dir == NULL || cfg->raft_addr == NULL || cfg->http_addr == NULL ||
        cfg->n_peers > MAX_PEERS || cfg->apply == NULL) {
        ap_errmsg_set(errmsg, "replicated state machine: invalid configuration");
        return AP_EINVAL;
    }
    struct ap_rsm *r = ap_calloc(1, sizeof *r);
    if (r == NULL) {
        ap_errmsg_set(errmsg, "replicated state machine: out of memory");
        return AP_ENOMEM;
    }
    r->loop = loop;
    r->id = cfg->id;
    ap_strlcpy(r->dir, cfg->dir, sizeof r->dir);
    ap_strlcpy(r->raft_addr, cfg->raft_addr, sizeof r->raft_addr);
    ap_strlcpy(r->http_addr, cfg->http_addr, sizeof r->http_addr);
    for (size_t i = 0; i < cfg->n_peers; i++) {
        r->peers[i] = cfg->peers[i];
    }
    r->n_peers = cfg->n_peers;
    r->join = cfg->join;
    r->election_ms = cfg->election_timeout_ms != 0 ? cfg->election_timeout_ms : 1000;
    r->heartbeat_ms = cfg->heartbeat_timeout_ms != 0 ? cfg->heartbeat_timeout_ms : 100;
    r->threshold =
        cfg->snapshot_threshold != 0 ? cfg->snapshot_threshold : AP_RSM_SNAPSHOT_THRESHOLD;
    r->trailing = cfg->snapshot_trailing != 0 ? cfg->snapshot_trailing : AP_RSM_SNAPSHOT_TRAILING;

    snprintf(path, sizeof path, "%s/raft", r->dir);
    if (ap_fs_mkdir_p(path) != 0) {
        ap_errmsg_set(errmsg, "create data directory %s: %s", path, strerror(errno));
        rv = AP_EIO;
        goto err_after_alloc;
    }
    snprintf(path, sizeof path, "%s/state.db", r->dir);
    /* docs/store.md: the raft log is the durable copy; the state store may lag. */
    rv = ap_store_open(path, AP_STORE_SYNC_NORMAL, &r->store, errmsg);
    if (rv != 0) {
        goto err_after_alloc;
    }
    rv = ap_store_migrate(r->store, cfg->migrations, cfg->n_migrations);
    if (rv != 0) {
        ap_errmsg_set(errmsg, "migrate %s: %s", path, ap_store_errmsg(r->store));
        goto err_after_store;
    }
    rv = ap_rsm_fsm_new(&r->fsm, r->store, cfg->apply, cfg->apply_data, errmsg);
    if (rv == 0) {
        ap_rsm_fsm_enable_async_snapshots(r->fsm);
    }
    if (rv != 0) {
        goto err_after_store;
    }
    ap_rsm_fsm_set_autocommit(r->fsm, false);
    register_metrics(r, cfg->metrics, cfg->metric_labels);
    *out = r;
    return 0;

err_after_store:
    ap_store_close(r->store);
err_after_alloc:
    ap_free(r);
    return rv;
}

int ap_rsm_start(struct ap_rsm *r, char *errmsg)
{
    char path[600];
    int rv;
    snprintf(path, sizeof path, "%s/raft", r->dir);
    rv = ap_raft_transport_init(&r->transport, r->loop);
    if (rv != 0) {
        ap_errmsg_set(errmsg, "raft transport: %s", ap_strerror(rv));
        return rv;
    }
    rv = raft_uv_init(&r->io, r->loop, path, &r->transport.iface);
    if (rv != 0) {
        ap_errmsg_set(errmsg, "raft io %s: %s", path, r->io.errmsg);
        ap_raft_transport_close(&r->transport);
        return ap_err_from_raft(rv);
    }
    r->transport.peer_lost = peer_lost;
    r->transport.peer_lost_data = r;
    raft_uv_set_snapshot_compression(&r->io, false);
    raft_uv_set_connect_retry_delay(&r->io, 200);
    r->uv_start = r->io.start;
    r->io.start = io_start;
    r->rng = r->id * UINT64_C(0x9E3779B97F4A7C15) ^ uv_hrtime() ^ ((uint64_t)getpid() << 32);
    r->io.random = io_random;
    if (r->io.version < 2) {
        r->io.version = 2;
        r->io.async_work = io_async_work;
    }
    r->leader_contact_ms = uv_now(r->loop);
    rv = raft_init(&r->raft, &r->io, ap_rsm_fsm_raft(r->fsm), r->id, r->raft_addr);
    if (rv != 0) {
        /* RAFT-NOTES pitfall 8: the reason is in raft_errmsg(). */
        ap_errmsg_set(errmsg, "raft init: %s", raft_errmsg(&r->raft));
        raft_uv_close(&r->io);
        ap_raft_transport_close(&r->transport);
        return ap_err_from_raft(rv);
    }
    r->raft_inited = true;
    r->raft.data = r;
    ap_rsm_fsm_attach(r->fsm, &r->raft);
    raft_set_election_timeout(&r->raft, r->election_ms);
    raft_set_heartbeat_timeout(&r->raft, r->heartbeat_ms);
    /* Offset per node, so the members of a group do not all pause for a snapshot at the same
     * index (docs/replication.md "Snapshots"). */
    raft_set_snapshot_threshold(&r->raft,
                                r->threshold + (unsigned)((r->id - 1) % 4) * (r->threshold / 4));
    raft_set_snapshot_trailing(&r->raft, r->trailing);
    raft_set_pre_vote(&r->raft, true);

    if (!r->join && r->n_peers > 0) {
        struct raft_configuration conf;
        raft_configuration_init(&conf);
        for (size_t i = 0; i < r->n_peers; i++) {
            rv = raft_configuration_add(&conf, r->peers[i].id, r->peers[i].raft, RAFT_VOTER);
            if (rv != 0) {
                raft_configuration_close(&conf);
                ap_errmsg_set(errmsg, "raft configuration: %s", raft_strerror(rv));
                return ap_err_from_raft(rv);
            }
        }
        rv = raft_bootstrap(&r->raft, &conf);
        raft_configuration_close(&conf);
        if (rv != 0 && rv != RAFT_CANTBOOTSTRAP) {
            ap_errmsg_set(errmsg, "raft bootstrap: %s", raft_errmsg(&r->raft));
            return ap_err_from_raft(rv);
        }
        AP_LOG(AP_LOG_INFO, "rsm_bootstrap id=%llu peers=%zu fresh=%s", (unsigned long long)r->id,
               r->n_peers, rv == 0 ? "true" : "false");
    }
    uv_idle_init(r->loop, &r->flush_idle);
    uv_check_init(r->loop, &r->commit_check);
    uv_check_start(&r->commit_check, on_commit_check);
    r->handles_open = 2;
    rv = raft_start(&r->raft);
    if (rv != 0) {
        ap_errmsg_set(errmsg, "raft start: %s", raft_errmsg(&r->raft));
        return ap_err_from_raft(rv);
    }
    r->started = true;
    AP_LOG(AP_LOG_INFO, "rsm_started id=%llu raft=%s applied=%llu last_index=%llu",
           (unsigned long long)r->id, r->raft_addr, (unsigned long long)ap_rsm_fsm_applied(r->fsm),
           (unsigned long long)raft_last_index(&r->raft));
    return 0;
}

static void finish_close(struct ap_rsm *r)
{
    void (*cb)(void *) = r->close_cb;
    void *data = r->close_data;
    if (r->raft_inited) {
        raft_uv_close(&r->io);
        ap_raft_transport_close(&r->transport);
    }
    ap_rsm_fsm_free(r->fsm);
    ap_store_close(r->store);
    ap_free(r);
    if (cb != NULL) {
        cb(data);
    }
}

static void handle_closed(uv_handle_t *h)
{
    struct ap_rsm *r = h->data;
    if (--r->handles_open == 0) {
        finish_close(r);
    }
}

static void raft_closed(struct raft *raft)
{
    struct ap_rsm *r = raft->data;
    if (r->handles_open == 0) {
        finish_close(r);
        return;
    }
    r->flush_idle.data = r;
    r->commit_check.data = r;
    uv_close((uv_handle_t *)&r->flush_idle, handle_closed);
    uv_close((uv_handle_t *)&r->commit_check, handle_closed);
}

void ap_rsm_close(struct ap_rsm *r, void (*cb)(void *data), void *data)
{
    AP_ASSERT(!r->closing);
    r->closing = true;
    r->close_cb = cb;
    r->close_data = data;
    /* Commands never handed to raft complete now. */
    while (r->queue_head != NULL) {
        struct proposal *p = r->queue_head;
        r->queue_head = p->next;
        struct ap_rsm_result res;
        fail_result(&res, AP_ESHUTDOWN, "node is shutting down");
        complete_proposal(p, &res);
    }
    r->queue_tail = NULL;
    while (r->barrier_waiters != NULL) {
        struct waiter *w = r->barrier_waiters;
        r->barrier_waiters = w->next;
        w->cb(w->data, AP_ESHUTDOWN);
        ap_free(w);
    }
    if (r->raft_inited) {
        raft_close(&r->raft, raft_closed);
    } else {
        finish_close(r);
    }
}
