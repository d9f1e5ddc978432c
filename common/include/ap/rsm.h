/* rsm: a replicated state machine: canonical/raft over libuv, applying typed commands to SQLite. */
#ifndef AP_RSM_H
#define AP_RSM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "ap/rsm_fsm.h"
#include "ap/store.h"

struct ap_metrics;
struct ap_rsm;

enum ap_rsm_role {
    AP_RSM_UNAVAILABLE = 0,
    AP_RSM_FOLLOWER,
    AP_RSM_CANDIDATE,
    AP_RSM_LEADER,
};

/** How a node of a group is set up. Strings are copied by ap_rsm_new. */
struct ap_rsm_config {
    uint64_t id;                       /* Raft id, > 0, unique in the group. */
    const char *dir;                   /* Data directory: raft/ log and state.db. */
    const char *raft_addr;             /* "ip:port" raft listens on; outgoing links bind to ip. */
    const char *http_addr;             /* "ip:port" of this node's HTTP API (for redirects). */
    const struct ap_rsm_member *peers; /* Initial voters, this node included. */
    size_t n_peers;
    bool join;                     /* Start empty and wait to be added by the leader. */
    unsigned election_timeout_ms;  /* 0: 1000. */
    unsigned heartbeat_timeout_ms; /* 0: 100. */
    unsigned snapshot_threshold;   /* 0: AP_RSM_SNAPSHOT_THRESHOLD. */
    unsigned snapshot_trailing;    /* 0: AP_RSM_SNAPSHOT_TRAILING. */
    const struct ap_store_migration *migrations; /* The application's schema. */
    size_t n_migrations;
    ap_rsm_apply_fn apply; /* Deterministic command application. */
    void *apply_data;
    struct ap_metrics *metrics; /* Optional registry for raft metrics (borrowed). */
    const char *metric_labels;  /* Labels for those series, e.g. "region=\"r1\"". */
};

/** Entries between snapshots (docs/replication.md says why). */
#define AP_RSM_SNAPSHOT_THRESHOLD 8192
/** Entries kept in the log after a snapshot, so a briefly lagging follower needs no snapshot. */
#define AP_RSM_SNAPSHOT_TRAILING 2048
/** The log may grow to the last image's size before the next snapshot, up to these. */
#define AP_RSM_SNAPSHOT_MAX_LOG_BYTES (256u << 20)
#define AP_RSM_SNAPSHOT_MAX_FACTOR    64u

/** Entries between snapshots after one of image_bytes, with entries of entry_bytes on average. */
unsigned ap_rsm_snapshot_threshold_for(unsigned base, uint64_t image_bytes, uint64_t entry_bytes);

/**
 * Entries kept behind a snapshot when the threshold is `threshold`: the configured trailing
 * scaled like the threshold (same ratio), never fewer than base_trailing.
 */
unsigned ap_rsm_snapshot_trailing_for(unsigned base_threshold, unsigned base_trailing,
                                      unsigned threshold);

/**
 * Open the store and raft state under cfg->dir and prepare the node. The node
 * bootstraps the initial configuration from cfg->peers the first time it
 * starts (unless cfg->join). Returns 0 or an AP_E* code with errmsg filled.
 */
int ap_rsm_new(struct ap_rsm **out, uv_loop_t *loop, const struct ap_rsm_config *cfg, char *errmsg);

/** Start raft: replay the log, listen for peers, take part in elections. */
int ap_rsm_start(struct ap_rsm *r, char *errmsg);

/**
 * Stop raft and release everything; cb fires once afterwards (may be NULL).
 * Outstanding proposals and barriers complete with AP_ESHUTDOWN first.
 */
void ap_rsm_close(struct ap_rsm *r, void (*cb)(void *data), void *data);

/**
 * Callback of a proposal: res is valid during the call only; the callee may
 * take res->value (set it to NULL). res->status is AP_ENOTLEADER when
 * leadership was lost before the command committed (it may or may not have
 * been applied), AP_ESHUTDOWN when the node closed.
 */
typedef void (*ap_rsm_propose_cb)(void *data, struct ap_rsm_result *res);

/**
 * Propose a command (copied). Commands proposed in the same loop iteration
 * share one raft entry (batching). Returns 0 and later calls cb exactly once,
 * or returns AP_ENOTLEADER / AP_ETOOBIG / AP_ENOMEM and never calls it.
 */
int ap_rsm_propose(struct ap_rsm *r, const uint8_t *cmd, size_t len, ap_rsm_propose_cb cb,
                   void *data);

/** Callback of ap_rsm_barrier: status 0 means a read now sees every write acknowledged before. */
typedef void (*ap_rsm_barrier_cb)(void *data, int status);

/**
 * Linearizable read point: cb fires after this node, still leader, has
 * applied every committed entry. Returns AP_ENOTLEADER on a follower (and cb
 * never fires).
 */
int ap_rsm_barrier(struct ap_rsm *r, ap_rsm_barrier_cb cb, void *data);

/** Callback of a membership change; status 0 or AP_E*; msg says why. */
typedef void (*ap_rsm_change_cb)(void *data, int status, const char *msg);

/** Add a voter (leader only): record its addresses, add it, promote it once it caught up. */
int ap_rsm_add_member(struct ap_rsm *r, const struct ap_rsm_member *m, ap_rsm_change_cb cb,
                      void *data);

/** Remove a member (leader only). */
int ap_rsm_remove_member(struct ap_rsm *r, uint64_t id, ap_rsm_change_cb cb, void *data);

/** This node's role now. */
enum ap_rsm_role ap_rsm_role(struct ap_rsm *r);

/** Role as "leader", "follower", "candidate" or "unavailable". */
const char *ap_rsm_role_name(enum ap_rsm_role role);

/** Current leader as this node knows it; AP_ENOTFOUND when there is none. */
int ap_rsm_leader(struct ap_rsm *r, struct ap_rsm_member *out);

/** A member of the current configuration with its role ("voter", "standby", "spare"). */
struct ap_rsm_member_info {
    struct ap_rsm_member m;
    const char *role;
};

/** Members of the current raft configuration; *out is ap_malloc'd, caller frees. */
int ap_rsm_members(struct ap_rsm *r, struct ap_rsm_member_info **out, size_t *n);

uint64_t ap_rsm_id(const struct ap_rsm *r);
uint64_t ap_rsm_term(struct ap_rsm *r);
uint64_t ap_rsm_commit_index(struct ap_rsm *r);
uint64_t ap_rsm_applied_index(struct ap_rsm *r);
uint64_t ap_rsm_last_index(struct ap_rsm *r);

/** The replicated store, for reads on the loop thread (writes only through proposals). */
struct ap_store *ap_rsm_store(struct ap_rsm *r);

#endif
