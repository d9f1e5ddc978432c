/* node_internal: the site daemon's state, shared by node.c, api.c and reconcile.c only. */
#ifndef EDGE_NODE_INTERNAL_H
#define EDGE_NODE_INTERNAL_H

#include "ap/authn.h"
#include "node.h"

#include "ap/hlc.h"
#include "ap/http.h"
#include "ap/metrics.h"
#include "ap/uuid.h"
#include "reconcile.h"
#include "shard.h"

struct rights_waiter;

struct edge_node {
    uv_loop_t *loop;
    struct edge_config cfg;
    struct shard *shard;
    struct link *link;
    struct reconcile *reconcile;
    struct ap_http_server *http;
    struct ap_metrics *metrics;
    struct ap_authn *authn; /* Tokens, checked with the key the region passed down. */
    struct ap_hlc *hlc;
    struct ap_uuid_gen uuids;
    struct rights_waiter *waiters; /* Creates waiting for rights from the region. */
    uv_timer_t waiter_timer;
    uint64_t last_return_ms; /* When unused rights were last given back. */
    uint64_t last_probe_ms;  /* When the full shard was last probed for room. */
    struct ap_metric *m_instances, *m_link_up, *m_deltas_sent, *m_deltas_applied, *m_creates,
        *m_quota_refused, *m_disk_full, *m_disk_full_writes, *m_log_dropped;
    bool stopping;
    int stop_pending;
    void (*stop_cb)(void *data);
    void *stop_data;
};

/** Register every /v1 route and /metrics. */
int api__register(struct edge_node *n);

/** Re-try the creates waiting for rights (after a region delta or a rights answer). */
void api__retry_waiters(struct edge_node *n, bool region_answered_no);

/** Fail every waiting create (shutting down). */
void api__drop_waiters(struct edge_node *n);

/** A local change was committed: tell the link and the reconciler. */
void node__changed(struct edge_node *n);

#endif
