/* node: one archipel-edge process: the site's shard, its API, its link to the region, its
 * workloads. */
#include "node_internal.h"

#include "ap/base.h"
#include "ap/fs.h"
#include "ap/err.h"
#include "ap/log.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

/* How often a full shard is probed for room again (docs/edge.md "Full disk"). */
#define NODE_PROBE_MS 1000

void node__changed(struct edge_node *n)
{
    link__kick(n->link);
    reconcile__all(n->reconcile);
}

static void on_region_applied(void *data)
{
    struct edge_node *n = data;
    reconcile__all(n->reconcile);
    api__retry_waiters(n, false);
}

static void on_rights_answer(void *data, const char *tenant, bool ok, const char *message)
{
    struct edge_node *n = data;
    if (!ok) {
        AP_LOG(AP_LOG_INFO, "rights_refused tenant=%s message=\"%s\"", tenant, message);
    }
    api__retry_waiters(n, !ok);
}

static void on_link_state(void *data, bool connected)
{
    struct edge_node *n = data;
    ap_metric_set(n->m_link_up, connected ? 1 : 0);
    if (!connected) {
        /* Creates waiting for rights cannot get them now. */
        api__retry_waiters(n, true);
    }
}

/* docs/edge.md: a linked site gives back what it holds beyond
 * max(reserve, usage), so rights flow to where they are used. */
static void return_unused_rights(struct edge_node *n)
{
    char **tenants;
    size_t nt;
    if (!link__connected(n->link) || n->waiters != NULL ||
        shard__rights_tenants(n->shard, &tenants, &nt) != 0) {
        return;
    }
    bool returned = false;
    int rv = shard__full(n->shard) ? AP_ENOSPACE : shard__begin(n->shard);
    if (rv == 0) {
        for (size_t i = 0; rv == 0 && i < nt; i++) {
            struct shard_rights rt;
            if (shard__rights(n->shard, tenants[i], &rt) != 0) {
                continue;
            }
            for (int k = 0; rv == 0 && k < SHARD_RES_N; k++) {
                int64_t surplus = rt.granted[k] - rt.returned[k] - rt.usage[k] - rt.reserve[k];
                if (surplus <= 0) {
                    continue;
                }
                /* A failed write may have ended the transaction: stop, or the next
                 * statements would commit one by one. */
                rv = shard__rights_return(n->shard, tenants[i], (enum shard_res)k, surplus);
                if (rv == 0) {
                    returned = true;
                    AP_LOG(AP_LOG_DEBUG, "rights_returned tenant=%s resource=%s amount=%lld",
                           tenants[i], shard__res_name((enum shard_res)k), (long long)surplus);
                }
            }
        }
        if (rv == 0) {
            rv = shard__commit(n->shard);
        } else {
            shard__rollback(n->shard);
        }
        if (rv != 0) {
            returned = false;
        }
    }
    for (size_t i = 0; i < nt; i++) {
        ap_free(tenants[i]);
    }
    ap_free(tenants);
    if (returned) {
        link__kick(n->link);
    }
}

/*
 * docs/edge.md "Full disk": while the shard is full, try a small write every
 * second, so that the site notices the room coming back even when nobody
 * writes to it.
 */
static void probe_storage(struct edge_node *n, uint64_t now)
{
    if (!shard__full(n->shard) || now - n->last_probe_ms < NODE_PROBE_MS) {
        return;
    }
    n->last_probe_ms = now;
    shard__probe(n->shard);
}

static void on_waiter_timer(uv_timer_t *t)
{
    struct edge_node *n = AP_CONTAINER_OF(t, struct edge_node, waiter_timer);
    if (n->waiters != NULL) {
        api__retry_waiters(n, false);
    }
    uint64_t now = uv_now(n->loop);
    probe_storage(n, now);
    if (!shard__full(n->shard)) {
        /* Redo what could not be stored while the disk was full, if anything. */
        link__resync(n->link);
        reconcile__retry(n->reconcile);
    }
    if (now - n->last_return_ms >= 5000) {
        n->last_return_ms = now;
        return_unused_rights(n);
    }
}

/* A stable HLC node id for the site, away from regional node ids (1..n). */
static uint32_t site_node_id(const char *site)
{
    uint32_t h = 2166136261u;
    for (const char *p = site; *p != '\0'; p++) {
        h = (h ^ (uint8_t)*p) * 16777619u;
    }
    return h | 0x80000000u;
}

static int authn_key(void *data, uint8_t pk[AP_TOKEN_PK_SIZE])
{
    struct edge_node *n = data;
    return shard__auth_key(n->shard, pk);
}

static int authn_user(void *data, const char *user, uint64_t *min_gen, bool *deleted)
{
    struct edge_node *n = data;
    return shard__auth_user(n->shard, user, min_gen, deleted);
}

int edge_node_start(struct edge_node **out, uv_loop_t *loop, const struct edge_config *cfg,
                    char *errmsg)
{
    char path[600], labels[96] = "";
    int rv;
    struct edge_node *n = ap_calloc(1, sizeof *n);
    if (n == NULL) {
        ap_errmsg_set(errmsg, "out of memory");
        return AP_ENOMEM;
    }
    n->loop = loop;
    n->cfg = *cfg;
    if (n->cfg.rights_wait_ms == 0) {
        n->cfg.rights_wait_ms = 3000;
    }
    if (ap_fs_mkdir_p(cfg->dir) != 0) {
        ap_errmsg_set(errmsg, "create %s: %s", cfg->dir, strerror(errno));
        ap_free(n);
        return AP_EIO;
    }
    snprintf(path, sizeof path, "%s/shard.db", cfg->dir);
    if ((rv = shard__open(&n->shard, path, errmsg)) != 0) {
        ap_free(n);
        return rv;
    }
    struct ap_authn_source authn_src = {
        .key = authn_key, .user = authn_user, .data = n, .lookup_ttl_ms = 1000};
    if ((rv = ap_hlc_new(&n->hlc, site_node_id(cfg->site), AP_HLC_DEFAULT_MAX_OFFSET_MS,
                         ap_hlc_wall_realtime, NULL)) != 0 ||
        (rv = ap_uuid_gen_init(&n->uuids)) != 0 || (rv = ap_metrics_new(&n->metrics)) != 0 ||
        (rv = ap_authn_new(&n->authn, &authn_src, 8)) != 0) {
        ap_errmsg_set(errmsg, "init: %s", ap_strerror(rv));
        return rv;
    }
    /* Never issue a stamp below one already stored (a restart with a slower clock). */
    struct ap_instrec *list;
    size_t count;
    if (shard__list(n->shard, NULL, true, &list, &count) == 0) {
        for (size_t i = 0; i < count; i++) {
            ap_hlc_observe(n->hlc, list[i].desired_ts);
            ap_hlc_observe(n->hlc, list[i].actual_ts);
        }
        shard__free_list(list, count);
    }
    ap_metrics_label_append(labels, sizeof labels, "site", cfg->site);
    n->m_link_up = ap_metrics_gauge(n->metrics, "archipel_site_link_up",
                                    "1 when the site is linked to its region.", labels);
    n->m_deltas_sent = ap_metrics_gauge(n->metrics, "archipel_site_deltas_sent",
                                        "DELTA frames sent to the region since start.", labels);
    n->m_deltas_applied = ap_metrics_gauge(n->metrics, "archipel_site_deltas_applied",
                                           "Region DELTA frames applied since start.", labels);
    n->m_creates = ap_metrics_counter(n->metrics, "archipel_site_instances_created_total",
                                      "Instances created through this site's API.", labels);
    n->m_quota_refused = ap_metrics_counter(n->metrics, "archipel_site_quota_refused_total",
                                            "Creates refused for lack of quota rights.", labels);
    n->m_disk_full = ap_metrics_gauge(
        n->metrics, "archipel_site_disk_full",
        "1 while the site's data directory is full (its last write failed for lack of space).",
        labels);
    n->m_disk_full_writes =
        ap_metrics_counter(n->metrics, "archipel_site_disk_full_writes_total",
                           "Shard writes that failed for lack of space since start.", labels);
    n->m_log_dropped = ap_metrics_counter(
        n->metrics, "archipel_site_log_dropped_bytes_total",
        "Workload output bytes the shims could not write to their log files (disk full).", labels);

    if ((rv = reconcile__start(&n->reconcile, n, errmsg)) != 0) {
        return rv;
    }
    if ((rv = ap_http_server_new(&n->http, loop, cfg->ip, cfg->http_port, 0, errmsg)) != 0) {
        ap_errmsg_wrap(errmsg, "http %s:%u", cfg->ip, cfg->http_port);
        return rv;
    }
    if ((rv = api__register(n)) != 0) {
        ap_errmsg_set(errmsg, "routes: %s", ap_http_server_errmsg(n->http));
        return rv;
    }
    json_t *caps = reconcile__capabilities(n->reconcile);
    const char *cap_names[32];
    size_t n_caps = 0;
    for (size_t i = 0; i < json_array_size(caps) && n_caps < AP_ARRAY_LEN(cap_names); i++) {
        cap_names[n_caps++] = json_string_value(json_array_get(caps, i));
    }
    char http[64];
    snprintf(http, sizeof http, "%s:%u", cfg->ip, cfg->http_port);
    struct link_config lc = {
        .site = cfg->site,
        .http = http,
        .region = cfg->region,
        .local_ip = cfg->ip,
        .n_targets = cfg->n_targets,
        .heartbeat_ms = cfg->heartbeat_ms,
        .misses = cfg->misses,
        .seed = site_node_id(cfg->site),
        .caps = cap_names,
        .n_caps = n_caps,
        .cpu_millis = cfg->cpu_millis,
        .memory_mb = cfg->memory_mb,
        .instances = cfg->instances,
    };
    for (size_t i = 0; i < cfg->n_targets; i++) {
        lc.targets[i] = cfg->targets[i];
    }
    struct link_hooks hooks = {
        .region_applied = on_region_applied,
        .rights_answer = on_rights_answer,
        .state_changed = on_link_state,
        .data = n,
    };
    rv = link__start(&n->link, loop, n->shard, &lc, &hooks, errmsg);
    json_decref(caps);
    if (rv != 0) {
        return rv;
    }
    uv_timer_init(loop, &n->waiter_timer);
    uv_timer_start(&n->waiter_timer, on_waiter_timer, 200, 200);
    reconcile__all(n->reconcile);
    AP_LOG(AP_LOG_INFO, "edge_started site=%s region=%s http=%s:%u dir=%s seq=%llu", cfg->site,
           cfg->region, cfg->ip, cfg->http_port, cfg->dir,
           (unsigned long long)shard__seq(n->shard));
    *out = n;
    return 0;
}

static void stop_step(void *data)
{
    struct edge_node *n = data;
    if (--n->stop_pending > 0) {
        return;
    }
    void (*cb)(void *) = n->stop_cb;
    void *cb_data = n->stop_data;
    shard__close(n->shard);
    ap_hlc_free(n->hlc);
    ap_metrics_free(n->metrics);
    ap_authn_free(n->authn);
    ap_free(n);
    if (cb != NULL) {
        cb(cb_data);
    }
}

static void timer_closed(uv_handle_t *h)
{
    stop_step(AP_CONTAINER_OF((uv_timer_t *)h, struct edge_node, waiter_timer));
}

void edge_node_stop(struct edge_node *n, void (*cb)(void *data), void *data)
{
    AP_ASSERT(!n->stopping);
    n->stopping = true;
    n->stop_cb = cb;
    n->stop_data = data;
    AP_LOG(AP_LOG_INFO, "edge_stopping site=%s", n->cfg.site);
    api__drop_waiters(n);
    n->stop_pending = 4;
    uv_close((uv_handle_t *)&n->waiter_timer, timer_closed);
    ap_http_server_close(n->http, stop_step, n);
    link__stop(n->link, stop_step, n);
    /* docs/workloads.md: workloads keep running under their shims. */
    reconcile__stop(n->reconcile, stop_step, n);
}
