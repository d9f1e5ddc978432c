/* node: one archipel-regional process: raft group member, HTTP API, site links, metrics. */
#include "node_internal.h"

#include "ap/base.h"
#include "ap/err.h"
#include "ap/log.h"
#include "catalog.h"
#include "ctrllink.h"
#include "placement.h"
#include "sitelink.h"

#include <stdio.h>
#include <string.h>

static int authn_key(void *data, uint8_t pk[AP_TOKEN_PK_SIZE])
{
    struct regional_node *n = data;
    return catalog__auth_key(ap_rsm_store(n->rsm), pk);
}

static int authn_user(void *data, const char *user, uint64_t *min_gen, bool *deleted)
{
    struct regional_node *n = data;
    return catalog__auth_user(ap_rsm_store(n->rsm), user, min_gen, deleted);
}

int regional_node_start(struct regional_node **out, uv_loop_t *loop,
                        const struct regional_config *cfg, char *errmsg)
{
    char labels[96];
    int rv;
    struct regional_node *n = ap_calloc(1, sizeof *n);
    if (n == NULL) {
        ap_errmsg_set(errmsg, "out of memory");
        return AP_ENOMEM;
    }
    n->loop = loop;
    n->cfg = *cfg;
    if (n->cfg.forward_timeout_ms == 0) {
        n->cfg.forward_timeout_ms = 10000;
    }
    snprintf(n->http_addr, sizeof n->http_addr, "%s:%u", cfg->ip, cfg->http_port);
    snprintf(n->raft_addr, sizeof n->raft_addr, "%s:%u", cfg->ip, cfg->raft_port);

    /* docs/catalog.md: stamps carry the raft id, unique in the region. */
    rv = ap_hlc_new(&n->hlc, (uint32_t)cfg->id, AP_HLC_DEFAULT_MAX_OFFSET_MS, ap_hlc_wall_realtime,
                    NULL);
    if (rv == 0) {
        rv = ap_uuid_gen_init(&n->uuids);
    }
    if (rv != 0) {
        ap_errmsg_set(errmsg, "clock and ids: %s", ap_strerror(rv));
        goto err_after_hlc;
    }
    rv = ap_metrics_new(&n->metrics);
    if (rv != 0) {
        ap_errmsg_set(errmsg, "metrics: %s", ap_strerror(rv));
        goto err_after_hlc;
    }
    labels[0] = '\0';
    ap_metrics_label_append(labels, sizeof labels, "region", cfg->region);
    n->m_forwarded = ap_metrics_counter(n->metrics, "archipel_http_forwarded_total",
                                        "Requests a follower forwarded to its leader.", labels);
    n->m_sites_linked = ap_metrics_gauge(n->metrics, "archipel_sites_linked",
                                         "Sites linked to this node (the leader).", labels);
    n->m_site_deltas = ap_metrics_counter(n->metrics, "archipel_site_deltas_applied_total",
                                          "Site DELTA frames applied through raft.", labels);
    n->m_site_records = ap_metrics_counter(n->metrics, "archipel_site_delta_records_total",
                                           "Records carried by the site DELTAs applied.", labels);
    n->m_site_deltas_sent = ap_metrics_counter(n->metrics, "archipel_site_deltas_sent_total",
                                               "DELTA frames sent to sites.", labels);

    struct ap_rsm_config rc = {
        .id = cfg->id,
        .dir = cfg->dir,
        .raft_addr = n->raft_addr,
        .http_addr = n->http_addr,
        .peers = cfg->peers,
        .n_peers = cfg->n_peers,
        .join = cfg->join,
        .election_timeout_ms = cfg->election_timeout_ms,
        .snapshot_threshold = cfg->snapshot_threshold,
        .migrations = catalog__migrations,
        .n_migrations = catalog__n_migrations,
        .apply = catalog__apply,
        .apply_data = n,
        .metrics = n->metrics,
        .metric_labels = labels,
    };
    rv = ap_rsm_new(&n->rsm, loop, &rc, errmsg);
    if (rv != 0) {
        goto err_after_metrics;
    }
    static const char *const query_keys[] = {"site", "tenant", "deleted", NULL};
    struct ap_rsm_http_config hc = {
        .loop = loop,
        .rsm = n->rsm,
        .id = cfg->id,
        .ip = cfg->ip,
        .group_key = "region",
        .group_name = n->cfg.region,
        .forward_timeout_ms = cfg->forward_timeout_ms,
        .query_keys = query_keys,
        .m_forwarded = n->m_forwarded,
    };
    struct ap_authn_source src = {
        .key = authn_key, .user = authn_user, .data = n, .lookup_ttl_ms = 1000};
    rv = ap_rsm_http_new(&n->rh, &hc);
    if (rv == 0 && cfg->n_controllers > 0) {
        rv = ap_authn_new(&n->authn, &src, 64);
    }
    if (rv == 0) {
        rv = placement__new(&n->placement, cfg->region);
    }
    if (rv != 0) {
        ap_errmsg_set(errmsg, "http: %s", ap_strerror(rv));
        goto err_after_rsm;
    }
    rv = ap_http_server_new(&n->http, loop, cfg->ip, cfg->http_port, 0, errmsg);
    if (rv != 0) {
        ap_errmsg_wrap(errmsg, "http %s", n->http_addr);
        goto err_after_rsm;
    }
    rv = api__register(n);
    if (rv != 0) {
        ap_errmsg_set(errmsg, "routes: %s", ap_http_server_errmsg(n->http));
        goto err_after_rsm;
    }
    rv = ap_rsm_start(n->rsm, errmsg);
    if (rv != 0) {
        goto err_after_rsm;
    }
    if (cfg->link_port != 0) {
        rv = sitelink__start(&n->link, n, cfg->link_port, cfg->site_heartbeat_ms,
                             cfg->site_heartbeat_misses, errmsg);
        if (rv != 0) {
            goto err_after_rsm;
        }
    }
    if (cfg->n_controllers > 0) {
        rv = ctrllink__start(&n->ctrl, n, cfg->controllers, cfg->n_controllers, errmsg);
        if (rv != 0) {
            goto err_after_rsm;
        }
    }
    if (cfg->n_controllers == 0) {
        AP_LOG(AP_LOG_WARN, "auth_off reason=\"no --controller: requests are not authenticated\"");
    }
    AP_LOG(AP_LOG_INFO, "regional_started region=%s node=%llu http=%s raft=%s link=%s:%u dir=%s",
           cfg->region, (unsigned long long)cfg->id, n->http_addr, n->raft_addr, cfg->ip,
           cfg->link_port, cfg->dir);
    *out = n;
    return 0;

err_after_rsm:
    /* Closing needs the loop; the caller exits on a start failure, so the
     * process tear-down releases what is left. */
    return rv;
err_after_metrics:
    ap_metrics_free(n->metrics);
err_after_hlc:
    ap_hlc_free(n->hlc);
    ap_free(n);
    return rv;
}

static void rsm_closed(void *data)
{
    struct regional_node *n = data;
    void (*cb)(void *) = n->stop_cb;
    void *cb_data = n->stop_data;
    ap_rsm_http_free(n->rh);
    ap_authn_free(n->authn);
    placement__free(n->placement);
    ap_metrics_free(n->metrics);
    ap_hlc_free(n->hlc);
    ap_free(n);
    if (cb != NULL) {
        cb(cb_data);
    }
}

static void link_closed(void *data)
{
    struct regional_node *n = data;
    n->link = NULL;
    ap_rsm_close(n->rsm, rsm_closed, n);
}

static void ctrl_closed(void *data)
{
    struct regional_node *n = data;
    n->ctrl = NULL;
    /* Site links before raft: their proposals need the rsm until they are detached. */
    if (n->link != NULL) {
        sitelink__stop(n->link, link_closed, n);
    } else {
        link_closed(n);
    }
}

static void http_closed(void *data)
{
    struct regional_node *n = data;
    if (n->ctrl != NULL) {
        ctrllink__stop(n->ctrl, ctrl_closed, n);
    } else {
        ctrl_closed(n);
    }
}

void regional_node_stop(struct regional_node *n, void (*cb)(void *data), void *data)
{
    AP_ASSERT(!n->stopping);
    n->stopping = true;
    n->stop_cb = cb;
    n->stop_data = data;
    AP_LOG(AP_LOG_INFO, "regional_stopping region=%s node=%llu", n->cfg.region,
           (unsigned long long)n->cfg.id);
    /* HTTP first: pending requests get their answers while raft still runs. */
    ap_http_server_close(n->http, http_closed, n);
}
