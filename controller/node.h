/* node: one archipel-controller process: raft group member, HTTP API, region links, metrics. */
#ifndef CONTROLLER_NODE_H
#define CONTROLLER_NODE_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "ap/rsm.h"

#define CTL_MAX_PEERS 16

/** How a controller node is set up (from flags). */
struct ctl_config {
    uint64_t id;
    char ip[48];
    uint16_t http_port;
    uint16_t raft_port;
    uint16_t link_port; /* Regions link here (docs/controller.md); 0: none. */
    char dir[400];
    struct ap_rsm_member peers[CTL_MAX_PEERS];
    size_t n_peers;
    bool join;
    unsigned election_timeout_ms;
    unsigned snapshot_threshold;
    unsigned token_ttl_s;        /* Default token lifetime; 0: AP_TOKEN_DEFAULT_TTL. */
    unsigned fanout_timeout_ms;  /* Deadline of a fan-out to the regions; 0: 2000. */
    char admin_password_file[400]; /* Bootstrap user "admin" (operator) from this file. */
};

struct ctl_node;

/** Open the data directory, start raft, HTTP and the region link listener. */
int ctl_node_start(struct ctl_node **out, uv_loop_t *loop, const struct ctl_config *cfg,
                   char *errmsg);

/** Stop serving and release everything; cb(data) fires once afterwards. */
void ctl_node_stop(struct ctl_node *n, void (*cb)(void *data), void *data);

#endif
