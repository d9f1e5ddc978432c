/* node_internal: the regional node's state, shared by node.c and api.c only. */
#ifndef REGIONAL_NODE_INTERNAL_H
#define REGIONAL_NODE_INTERNAL_H

#include "node.h"

#include "ap/http.h"
#include "ap/metrics.h"

struct regional_node {
    uv_loop_t *loop;
    struct regional_config cfg;
    char http_addr[64];
    char raft_addr[64];
    struct ap_rsm *rsm;
    struct ap_http_server *http;
    struct ap_metrics *metrics;
    struct ap_metric *m_forwarded;
    struct ap_metric *m_requests;
    bool stopping;
    void (*stop_cb)(void *data);
    void *stop_data;
};

/** Register every /v1 route and /metrics on n->http. Returns 0 or an AP_E* code. */
int api__register(struct regional_node *n);

#endif
