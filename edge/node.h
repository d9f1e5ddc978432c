/* node: one archipel-edge process: the site's shard, its API, its link to the region, its
 * workloads. */
#ifndef EDGE_NODE_H
#define EDGE_NODE_H

#include <stdint.h>
#include <uv.h>

#include "link.h"

/** How a site daemon is set up (from flags). */
struct edge_config {
    char site[64];
    char region[32];
    char ip[48];
    uint16_t http_port;
    char dir[400];
    char targets[LINK_MAX_TARGETS][64];
    size_t n_targets;
    unsigned heartbeat_ms;
    unsigned misses;
    int64_t cpu_millis, memory_mb, instances; /* Capacity this site offers. */
    char shim_path[512];                      /* archipel-shim binary. */
    unsigned rights_wait_ms;                  /* How long a create waits for rights. */
};

struct edge_node;

/** Open the shard, adopt running workloads, start the API and the link. */
int edge_node_start(struct edge_node **out, uv_loop_t *loop, const struct edge_config *cfg,
                    char *errmsg);

/** Stop serving (workloads keep running under their shims); cb(data) fires once afterwards. */
void edge_node_stop(struct edge_node *n, void (*cb)(void *data), void *data);

#endif
