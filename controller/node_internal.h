/* node_internal: the controller node's state, shared by its modules only. */
#ifndef CONTROLLER_NODE_INTERNAL_H
#define CONTROLLER_NODE_INTERNAL_H

#include "node.h"

#include "ap/authn.h"
#include "ap/http.h"
#include "ap/metrics.h"
#include "ap/rsm_http.h"

struct regionlink;

struct ctl_node {
    uv_loop_t *loop;
    struct ctl_config cfg;
    char http_addr[64];
    char raft_addr[64];
    struct ap_rsm *rsm;
    struct ap_rsm_http *rh;
    struct ap_http_server *http;
    struct ap_metrics *metrics;
    struct ap_authn *authn;
    struct regionlink *link;  /* NULL when cfg.link_port is 0. */
    uv_timer_t tick;          /* Leader duties: signing key, bootstrap admin. */
    bool bootstrap_pending;   /* A key.init or admin create is in flight. */
    struct ap_metric *m_forwarded;
    struct ap_metric *m_tokens;
    struct ap_metric *m_fanouts;
    bool stopping;
    void (*stop_cb)(void *data);
    void *stop_data;
};

/** Register every /v1 route and /metrics. Returns 0 or an AP_E* code. */
int api__register(struct ctl_node *n);

/** Fan-out routes (fanout.c). */
int fanout__register(struct ctl_node *n);

#endif
