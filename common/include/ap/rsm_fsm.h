/* rsm_fsm: the state-machine half of a replicated SQLite store (a raft_fsm over an ap_store). */
#ifndef AP_RSM_FSM_H
#define AP_RSM_FSM_H

#include <jansson.h>
#include <raft.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ap/err.h"

struct ap_store;

/** Version of the log-entry encoding (docs/replication.md). */
#define AP_RSM_ENTRY_VERSION 1
/** Most commands one entry may batch. */
#define AP_RSM_MAX_BATCH 256
/** Largest encoded entry (a batch of commands), bytes. */
#define AP_RSM_MAX_ENTRY (64u << 20)
/** Largest single command, bytes. */
#define AP_RSM_MAX_COMMAND (1u << 20)

/** What applying one command produced, handed back to its proposer. */
struct ap_rsm_result {
    int status;                   /* 0, or AP_E* (the command's effects were undone). */
    char message[AP_ERRMSG_SIZE]; /* Why, when status != 0. */
    json_t *value;                /* Result document or NULL; owned by whoever holds the result. */
    bool want_value;              /* Set before apply: false where no proposer can be waiting
                                     (a follower), so apply may skip building value. */
};

/**
 * Apply one command to the store, deterministically: the same store content
 * and command must give the same writes and result on every replica, so the
 * function may not read clocks, randomness or anything but its arguments.
 * It runs inside a savepoint: when it sets res->status != 0 its writes are
 * rolled back and the entry still counts as applied. `index` is the Raft index
 * of the entry that carries the command.
 */
typedef void (*ap_rsm_apply_fn)(void *data, struct ap_store *st, uint64_t index, const uint8_t *cmd,
                                size_t len, struct ap_rsm_result *res);

/** A member of the group as the state machine records it (raft id, raft and HTTP addresses). */
struct ap_rsm_member {
    uint64_t id;
    char raft[64];
    char http[64];
};

struct ap_rsm_fsm;

/**
 * Create a state machine over st (borrowed; must outlive the fsm). Creates
 * its own bookkeeping table (ap_rsm_meta, ap_rsm_members) if missing and
 * reads the applied index stored there. Returns 0 or an AP_E* code with
 * errmsg filled.
 */
int ap_rsm_fsm_new(struct ap_rsm_fsm **out, struct ap_store *st, ap_rsm_apply_fn apply, void *data,
                   char *errmsg);

/** Free the fsm (commits an open group transaction first). NULL is fine. */
void ap_rsm_fsm_free(struct ap_rsm_fsm *f);

/**
 * Take snapshots off the loop (raft fsm version 3; docs/replication.md "Snapshots"):
 * the loop only pins a read view on a second connection to the store's file, a
 * worker thread copies it. Needs a file-backed store and a raft_io with async_work.
 */
void ap_rsm_fsm_enable_async_snapshots(struct ap_rsm_fsm *f);

/** The raft_fsm to pass to raft_init(); owned by f. */
struct raft_fsm *ap_rsm_fsm_raft(struct ap_rsm_fsm *f);

/** Tell the fsm which raft instance drives it (it learns entry indexes from it). */
void ap_rsm_fsm_attach(struct ap_rsm_fsm *f, struct raft *r);

/**
 * With autocommit on (the default), every entry is committed as it is
 * applied. A daemon turns it off and calls ap_rsm_fsm_flush() once per loop
 * iteration, so entries applied together share one SQLite transaction
 * (group commit, docs/replication.md).
 */
void ap_rsm_fsm_set_autocommit(struct ap_rsm_fsm *f, bool on);

/** Commit the open group transaction, if any. Returns 0 or an AP_E* code. */
int ap_rsm_fsm_flush(struct ap_rsm_fsm *f);

/** Index of the last entry whose effects are in the store. */
uint64_t ap_rsm_fsm_applied(const struct ap_rsm_fsm *f);

/** Image size of the last snapshot taken (0 before the first). */
uint64_t ap_rsm_fsm_snapshot_bytes(const struct ap_rsm_fsm *f);

/** Mean size of the entries raft gave to apply since the last call (0 if none); restarts it. */
uint64_t ap_rsm_fsm_take_mean_entry_bytes(struct ap_rsm_fsm *f);

/** Number of snapshots taken and restored since the fsm was created. */
uint64_t ap_rsm_fsm_snapshots_taken(const struct ap_rsm_fsm *f);
uint64_t ap_rsm_fsm_snapshots_restored(const struct ap_rsm_fsm *f);

/**
 * Encode one log entry carrying cmds (each a caller-encoded command) and
 * member upserts/removals (remove: http[0] == '\0'). *out is raft_malloc'd,
 * padded to a multiple of 8 bytes (RAFT-NOTES pitfall 1), and owned by the
 * caller until raft_apply() accepts it.
 */
int ap_rsm_entry_encode(const uint8_t *const *cmds, const size_t *lens, size_t n_cmds,
                        const struct ap_rsm_member *members, size_t n_members,
                        struct raft_buffer *out);

/**
 * After an entry was applied on this node, the per-command results of the
 * most recent entry (NULL when it was skipped as already applied). The raft
 * apply callback receives the same pointer as its `result`.
 */
struct ap_rsm_batch {
    size_t n;
    struct ap_rsm_result results[];
};

/** Member records replicated through entries (see ap_rsm_entry_encode); *out is ap_malloc'd. */
int ap_rsm_fsm_members(struct ap_rsm_fsm *f, struct ap_rsm_member **out, size_t *n);

#endif
