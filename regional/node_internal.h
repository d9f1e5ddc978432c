/* node_internal: the regional node's state, shared by node.c and api.c only. */
#ifndef REGIONAL_NODE_INTERNAL_H
#define REGIONAL_NODE_INTERNAL_H

#include "node.h"

#include "ap/authn.h"
#include "ap/hlc.h"
#include "ap/http.h"
#include "ap/metrics.h"
#include "ap/rsm_http.h"
#include "ap/uuid.h"

struct sitelink;
struct ctrllink;
struct placement;

struct regional_node {
    uv_loop_t *loop;
    struct regional_config cfg;
    char http_addr[64];
    char raft_addr[64];
    struct ap_rsm *rsm;
    struct ap_rsm_http *rh; /* Forwarding, proposals, linearizable reads, /v1/cluster. */
    struct ap_http_server *http;
    struct ap_metrics *metrics;
    struct ap_hlc *hlc;       /* Stamps of writes made here (node id: the raft id). */
    struct ap_uuid_gen uuids; /* Instance ids. */
    struct sitelink *link;    /* NULL when cfg.link_port is 0. */
    struct ctrllink *ctrl;    /* NULL without a controller. */
    struct ap_authn *authn;   /* Bearer tokens, checked with what the controller sent. */
    struct placement *placement; /* The scheduler's view of the sites (leader). */
    uint64_t ctrl_proposing;  /* Controller STATE version being proposed (0: none). */
    struct ap_metric *m_forwarded;
    struct ap_metric *m_requests;
    struct ap_metric *m_sites_linked;     /* Gauge: sites linked to this node. */
    struct ap_metric *m_site_deltas;      /* Counter: site DELTAs applied. */
    struct ap_metric *m_site_records;     /* Counter: records in them. */
    struct ap_metric *m_site_deltas_sent; /* Counter: DELTAs sent to sites. */
    bool stopping;
    void (*stop_cb)(void *data);
    void *stop_data;
};

/** Register every /v1 route and /metrics on n->http. Returns 0 or an AP_E* code. */
int api__register(struct regional_node *n);

#endif
