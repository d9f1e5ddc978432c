/* node: one archipel-regional process: raft group member, HTTP API, site links, metrics. */
#ifndef REGIONAL_NODE_H
#define REGIONAL_NODE_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "ap/rsm.h"

#define REGIONAL_MAX_PEERS 16

/** How a regional node is set up (from flags). */
struct regional_config {
    char region[32];                                /* Region name, e.g. "r1". */
    uint64_t id;                                    /* Raft id within the region. */
    char ip[48];                                    /* Loopback or host IP all sockets bind to. */
    uint16_t http_port;                             /* HTTP API port. */
    uint16_t raft_port;                             /* Raft port. */
    char dir[400];                                  /* Data directory. */
    struct ap_rsm_member peers[REGIONAL_MAX_PEERS]; /* Initial voters. */
    size_t n_peers;
    bool join; /* Start empty; an operator adds this node. */
    unsigned election_timeout_ms;
    unsigned snapshot_threshold;
    unsigned forward_timeout_ms;
    uint16_t link_port;             /* Site link port (docs/edge.md); 0: no site link. */
    unsigned site_heartbeat_ms;     /* Sites' heartbeat interval; 0: SITELINK_HEARTBEAT_MS. */
    unsigned site_heartbeat_misses; /* Missed beats before unreachable; 0: default. */
    char controllers[8][64];        /* Controller link addresses (docs/controller.md). */
    size_t n_controllers;           /* 0: no controller (then no token is accepted). */
};

struct regional_node;

/**
 * Open the data directory, start raft, the HTTP server and the site link
 * listener on loop.
 * Returns 0 or an AP_E* code with errmsg saying what failed.
 */
int regional_node_start(struct regional_node **out, uv_loop_t *loop,
                        const struct regional_config *cfg, char *errmsg);

/** Stop serving and release everything; cb(data) fires once afterwards. */
void regional_node_stop(struct regional_node *n, void (*cb)(void *data), void *data);

#endif
