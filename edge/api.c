/* api: the site's HTTP API (/v1 health, instances, quotas, logs) and /metrics: it answers even when
 * cut off. */
#include "node_internal.h"

#include "ap/base.h"
#include "ap/err.h"
#include "ap/instjson.h"
#include "ap/log.h"
#include "link.h"

#include <inttypes.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A create that waits for the region to grant rights (bounded by rights_wait_ms). */
struct rights_waiter {
    struct edge_node *n;
    struct ap_http_req *req;
    struct ap_instrec rec;
    uint64_t deadline_ms;
    bool asked;
    struct rights_waiter *next;
};

static void reply_record(struct ap_http_req *req, unsigned status, const struct ap_instrec *r)
{
    json_t *j = ap_instjson_render(r);
    if (j == NULL) {
        ap_http_reply_err(req, AP_ENOMEM, "out of memory");
        return;
    }
    ap_http_reply_json(req, status, j);
}

static void reply_quota(struct ap_http_req *req, const char *tenant, const struct shard_rights *rt,
                        const int64_t need[SHARD_RES_N], bool linked)
{
    char msg[384];
    int k = 0;
    for (int i = 0; i < SHARD_RES_N; i++) {
        int64_t avail = rt->granted[i] - rt->returned[i] - rt->usage[i];
        if (need[i] > avail) {
            k = i;
            break;
        }
    }
    int64_t avail = rt->granted[k] - rt->returned[k] - rt->usage[k];
    snprintf(msg, sizeof msg,
             "tenant %s: this site holds %" PRId64 " more %s (in use %" PRId64 ", held %" PRId64
             "), the instance needs %" PRId64 "%s",
             tenant, avail < 0 ? 0 : avail, shard__res_name((enum shard_res)k), rt->usage[k],
             rt->granted[k] - rt->returned[k], need[k],
             linked ? "; the region granted no more" : "; the site is cut off from its region");
    json_t *details = json_pack("{s:s, s:s, s:I, s:I, s:b}", "tenant", tenant, "resource",
                                shard__res_name((enum shard_res)k), "available",
                                (json_int_t)(avail < 0 ? 0 : avail), "needed", (json_int_t)need[k],
                                "region_linked", linked);
    ap_http_reply_error(req, 403, "quota_exceeded", msg, details);
}

/*
 * Answer a write the shard could not store. docs/api.md "Site": a full data
 * directory is 507 no_space, naming the site and what was not stored; the
 * site keeps answering reads and takes writes again once there is room.
 */
static void reply_write_failed(struct edge_node *n, struct ap_http_req *req, int rv,
                               const char *what)
{
    if (rv != AP_ENOSPACE) {
        ap_http_reply_err(req, rv, shard__errmsg(n->shard));
        return;
    }
    char msg[AP_ERRMSG_SIZE + 192];
    snprintf(msg, sizeof msg,
             "site %s: no space left in its data directory; the %s was not stored (%s)."
             " Reads still work; free space and retry",
             n->cfg.site, what, shard__errmsg(n->shard));
    ap_http_reply_error(req, 507, ap_err_code(AP_ENOSPACE), msg,
                        json_pack("{s:s, s:s}", "site", n->cfg.site, "write", what));
}

/*
 * Try to create rec: returns 0 when stored (and replied), AP_EQUOTA when the
 * site holds too few rights (nothing replied; *rt and need say why).
 */
static int try_create(struct edge_node *n, struct ap_http_req *req, struct ap_instrec *rec,
                      struct shard_rights *rt, int64_t need[SHARD_RES_N])
{
    need[SHARD_RES_INSTANCES] = 1;
    need[SHARD_RES_CPU] = rec->cpu_millis;
    need[SHARD_RES_MEMORY] = rec->memory_mb;
    bool taken = false;
    int rv = shard__begin(n->shard);
    if (rv == 0) {
        rv = shard__name_taken(n->shard, rec->tenant, rec->name, &taken);
    }
    if (rv == 0 && taken) {
        shard__rollback(n->shard);
        char msg[192];
        snprintf(msg, sizeof msg, "tenant %s already has an instance named '%s' on this site",
                 rec->tenant, rec->name);
        ap_http_reply_err(req, AP_EEXIST, msg);
        return 0;
    }
    if (rv != 0) {
        shard__rollback(n->shard);
        reply_write_failed(n, req, rv, "create");
        return 0;
    }
    if (rv == 0) {
        rv = shard__rights(n->shard, rec->tenant, rt);
    }
    if (rv == 0) {
        /* docs/merge-rules.md: a site consumes only rights it holds. */
        for (int i = 0; i < SHARD_RES_N; i++) {
            if (rt->granted[i] - rt->returned[i] - rt->usage[i] < need[i]) {
                shard__rollback(n->shard);
                return AP_EQUOTA;
            }
        }
        rv = shard__put_local(n->shard, rec);
    }
    if (rv == 0) {
        /* synchronous=FULL: the create is on disk before we answer. */
        rv = shard__commit(n->shard);
    } else {
        shard__rollback(n->shard);
    }
    if (rv != 0) {
        reply_write_failed(n, req, rv, "create");
        return 0;
    }
    ap_metric_inc(n->m_creates);
    AP_LOG(AP_LOG_INFO, "instance_created id=%s tenant=%s name=%s", rec->id, rec->tenant,
           rec->name);
    reply_record(req, 201, rec);
    node__changed(n);
    return 0;
}

static void waiter_free(struct rights_waiter *w)
{
    ap_instrec_clear(&w->rec);
    ap_free(w);
}

void api__retry_waiters(struct edge_node *n, bool region_answered_no)
{
    struct rights_waiter **pp = &n->waiters;
    uint64_t now = uv_now(n->loop);
    while (*pp != NULL) {
        struct rights_waiter *w = *pp;
        struct shard_rights rt;
        int64_t need[SHARD_RES_N];
        int rv = try_create(n, w->req, &w->rec, &rt, need);
        if (rv == AP_EQUOTA && !region_answered_no && now < w->deadline_ms &&
            link__connected(n->link) && !shard__full(n->shard)) {
            pp = &w->next;
            continue;
        }
        if (rv == AP_EQUOTA && shard__full(n->shard)) {
            /* The grant cannot be stored either: say what is wrong, not "no quota". */
            reply_write_failed(n, w->req, AP_ENOSPACE, "create");
        } else if (rv == AP_EQUOTA) {
            ap_metric_inc(n->m_quota_refused);
            reply_quota(w->req, w->rec.tenant, &rt, need, link__connected(n->link));
        }
        *pp = w->next;
        waiter_free(w);
    }
}

void api__drop_waiters(struct edge_node *n)
{
    while (n->waiters != NULL) {
        struct rights_waiter *w = n->waiters;
        n->waiters = w->next;
        ap_http_reply_err(w->req, AP_ESHUTDOWN, "the site is shutting down");
        waiter_free(w);
    }
}

/* ---- who is asking (docs/security.md) ---- */

/*
 * Authenticate req: true with *c (NULL while this site has never received a
 * signing key: authentication is off until its region passes one down);
 * false after answering 401.
 */
static bool who(struct edge_node *n, struct ap_http_req *req, const struct ap_claims **c)
{
    uint8_t pk[AP_TOKEN_PK_SIZE];
    *c = NULL;
    if (shard__auth_key(n->shard, pk) != 0) {
        return true;
    }
    *c = ap_authn_request(n->authn, req);
    return *c != NULL;
}

static bool allow(struct edge_node *n, struct ap_http_req *req, const struct ap_claims *c,
                  enum ap_action act, const char *tenant)
{
    return c == NULL || ap_authn_allow(req, c, act, tenant, n->cfg.region, n->cfg.site);
}

static struct ap_hlc_ts stamp(struct edge_node *n)
{
    return ap_hlc_now(n->hlc);
}

static void h_create(struct ap_http_req *req, void *data)
{
    struct edge_node *n = data;
    char errmsg[AP_ERRMSG_SIZE];
    struct ap_instrec rec;
    const struct ap_claims *c;
    if (!who(n, req, &c)) {
        return;
    }
    int rv = ap_instjson_parse_create(ap_http_req_json(req), n->cfg.site, &rec, errmsg);
    if (rv != 0) {
        ap_http_reply_err(req, rv, errmsg);
        return;
    }
    if (!allow(n, req, c, AP_ACT_WRITE, rec.tenant)) {
        ap_instrec_clear(&rec);
        return;
    }
    if (ap_uuid_gen_next(&n->uuids, ap_hlc_wall_realtime(NULL), rec.id) != 0) {
        ap_instrec_clear(&rec);
        ap_http_reply_err(req, AP_EIO, "could not generate an instance id");
        return;
    }
    rec.created = stamp(n);
    rec.desired = AP_DESIRED_RUNNING;
    rec.desired_ts = rec.created;
    rec.actual = AP_ACTUAL_PENDING;
    rec.actual_ts = rec.created;
    struct shard_rights rt;
    int64_t need[SHARD_RES_N];
    rv = try_create(n, req, &rec, &rt, need);
    if (rv != AP_EQUOTA) {
        ap_instrec_clear(&rec);
        return;
    }
    if (shard__full(n->shard)) {
        /* Rights the region would grant could not be stored: no point in asking. */
        reply_write_failed(n, req, AP_ENOSPACE, "create");
        ap_instrec_clear(&rec);
        return;
    }
    if (!link__connected(n->link)) {
        ap_metric_inc(n->m_quota_refused);
        reply_quota(req, rec.tenant, &rt, need, false);
        ap_instrec_clear(&rec);
        return;
    }
    /* Short of rights and linked: ask the region, answer when it grants. */
    int64_t want[SHARD_RES_N];
    for (int i = 0; i < SHARD_RES_N; i++) {
        int64_t avail = rt.granted[i] - rt.returned[i] - rt.usage[i];
        want[i] = need[i] > avail ? need[i] - avail : 0;
    }
    struct rights_waiter *w = ap_calloc(1, sizeof *w);
    if (w == NULL || link__request_rights(n->link, rec.tenant, want) != 0) {
        ap_free(w);
        ap_metric_inc(n->m_quota_refused);
        reply_quota(req, rec.tenant, &rt, need, link__connected(n->link));
        ap_instrec_clear(&rec);
        return;
    }
    w->n = n;
    w->req = req;
    w->rec = rec;
    w->deadline_ms = uv_now(n->loop) + n->cfg.rights_wait_ms;
    w->next = n->waiters;
    n->waiters = w;
}

static void h_list(struct ap_http_req *req, void *data)
{
    struct edge_node *n = data;
    struct ap_instrec *list;
    size_t count;
    const struct ap_claims *c;
    if (!who(n, req, &c)) {
        return;
    }
    const char *tenant = ap_http_req_query(req, "tenant");
    const char *site = ap_http_req_query(req, "site");
    if (site != NULL && strcmp(site, n->cfg.site) != 0) {
        ap_http_reply_json(req, 200, json_pack("{s:[], s:s}", "instances", "site", n->cfg.site));
        return;
    }
    const char *deleted = ap_http_req_query(req, "deleted");
    bool with_deleted = deleted != NULL && strcmp(deleted, "1") == 0;
    int rv = shard__list(n->shard, tenant, with_deleted, &list, &count);
    if (rv != 0) {
        ap_http_reply_err(req, rv, shard__errmsg(n->shard));
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < count; i++) {
        struct ap_target t = {
            .tenant = list[i].tenant, .region = n->cfg.region, .site = n->cfg.site};
        if (c == NULL || ap_authz_check(c, AP_ACT_READ, &t, NULL) == 0) {
            json_array_append_new(arr, ap_instjson_render(&list[i]));
        }
    }
    shard__free_list(list, count);
    ap_http_reply_json(req, 200, json_pack("{s:o, s:s}", "instances", arr, "site", n->cfg.site));
}

/* The instance of an {id} route, after checking c may do act on it; else answered. */
static int load(struct edge_node *n, struct ap_http_req *req, struct ap_instrec *rec,
                enum ap_action act)
{
    const struct ap_claims *c;
    if (!who(n, req, &c)) {
        return AP_EAUTH;
    }
    const char *id = ap_http_req_param(req, "id");
    int rv = shard__get(n->shard, id, rec);
    if (rv == 0 && !allow(n, req, c, act, rec->tenant)) {
        ap_instrec_clear(rec);
        return AP_EPERM;
    }
    if (rv == AP_ENOTFOUND) {
        char msg[160];
        snprintf(msg, sizeof msg, "instance %.40s not found on site %s", id, n->cfg.site);
        ap_http_reply_err(req, rv, msg);
    } else if (rv != 0) {
        ap_http_reply_err(req, rv, shard__errmsg(n->shard));
    }
    return rv;
}

static void h_get(struct ap_http_req *req, void *data)
{
    struct edge_node *n = data;
    struct ap_instrec rec;
    if (load(n, req, &rec, AP_ACT_READ) == 0) {
        reply_record(req, 200, &rec);
        ap_instrec_clear(&rec);
    }
}

static void set_desired(struct edge_node *n, struct ap_http_req *req, enum ap_desired d)
{
    struct ap_instrec rec;
    if (load(n, req, &rec, AP_ACT_WRITE) != 0) {
        return;
    }
    if (rec.desired == AP_DESIRED_DELETED) {
        /* docs/merge-rules.md: a deleted instance never comes back. */
        ap_http_reply_error(req, 409, "deleted", "the instance was deleted; create a new one",
                            NULL);
        ap_instrec_clear(&rec);
        return;
    }
    ap_instrec_set_desired(&rec, d, stamp(n));
    int rv = shard__begin(n->shard);
    if (rv == 0 && (rv = shard__put_local(n->shard, &rec)) == 0) {
        rv = shard__commit(n->shard);
    } else if (rv == 0) {
        shard__rollback(n->shard);
    }
    if (rv != 0) {
        reply_write_failed(n, req, rv,
                           d == AP_DESIRED_DELETED   ? "delete"
                           : d == AP_DESIRED_STOPPED ? "stop"
                                                     : "start");
    } else {
        AP_LOG(AP_LOG_INFO, "instance_desired id=%s desired=%s", rec.id, ap_desired_name(d));
        reply_record(req, 200, &rec);
        node__changed(n);
    }
    ap_instrec_clear(&rec);
}

static void h_stop(struct ap_http_req *req, void *data)
{
    set_desired(data, req, AP_DESIRED_STOPPED);
}

static void h_start(struct ap_http_req *req, void *data)
{
    set_desired(data, req, AP_DESIRED_RUNNING);
}

static void h_delete(struct ap_http_req *req, void *data)
{
    set_desired(data, req, AP_DESIRED_DELETED);
}

static void h_logs(struct ap_http_req *req, void *data)
{
    struct edge_node *n = data;
    struct ap_instrec rec;
    if (load(n, req, &rec, AP_ACT_READ) != 0) {
        return;
    }
    ap_instrec_clear(&rec);
    const char *stream = ap_http_req_query(req, "stream");
    const char *tail = ap_http_req_query(req, "tail_bytes");
    if (stream == NULL) {
        stream = "stdout";
    }
    if (strcmp(stream, "stdout") != 0 && strcmp(stream, "stderr") != 0) {
        ap_http_reply_err(req, AP_EINVAL, "query 'stream' must be stdout or stderr");
        return;
    }
    size_t max = 65536;
    if (tail != NULL) {
        char *end;
        unsigned long long v = strtoull(tail, &end, 10);
        if (*end != '\0' || v == 0 || v > 1048576) {
            ap_http_reply_err(req, AP_EINVAL, "query 'tail_bytes' must be 1-1048576");
            return;
        }
        max = (size_t)v;
    }
    char *buf = NULL;
    size_t len = 0;
    int rv = reconcile__logs(n->reconcile, ap_http_req_param(req, "id"), stream, max, &buf, &len);
    if (rv == AP_ENOTFOUND) {
        ap_http_reply_raw(req, 200, "text/plain; charset=utf-8", "", 0);
        return;
    }
    if (rv != 0) {
        ap_http_reply_err(req, rv, "could not read the log");
        return;
    }
    ap_http_reply_raw(req, 200, "text/plain; charset=utf-8", buf, len);
    ap_free(buf);
}

static void h_quota(struct ap_http_req *req, void *data)
{
    struct edge_node *n = data;
    struct shard_rights rt;
    const struct ap_claims *c;
    if (!who(n, req, &c)) {
        return;
    }
    const char *tenant = ap_http_req_param(req, "tenant");
    if (c != NULL && !ap_authz_any_tenant(c, tenant)) {
        allow(n, req, c, AP_ACT_READ, tenant);
        return;
    }
    int rv = shard__rights(n->shard, tenant, &rt);
    if (rv != 0) {
        ap_http_reply_err(req, rv, shard__errmsg(n->shard));
        return;
    }
    json_t *held = json_object(), *usage = json_object(), *reserve = json_object(),
           *available = json_object();
    for (int i = 0; i < SHARD_RES_N; i++) {
        const char *k = shard__res_name((enum shard_res)i);
        json_object_set_new(held, k, json_integer(rt.granted[i] - rt.returned[i]));
        json_object_set_new(usage, k, json_integer(rt.usage[i]));
        json_object_set_new(reserve, k, json_integer(rt.reserve[i]));
        int64_t a = rt.granted[i] - rt.returned[i] - rt.usage[i];
        json_object_set_new(available, k, json_integer(a < 0 ? 0 : a));
    }
    ap_http_reply_json(req, 200,
                       json_pack("{s:s, s:s, s:o, s:o, s:o, s:o}", "tenant", tenant, "site",
                                 n->cfg.site, "held", held, "usage", usage, "reserve", reserve,
                                 "available", available));
}

/* This shard's content hashes, to compare with the region's view of this site. */
static void h_state_hash(struct ap_http_req *req, void *data)
{
    struct edge_node *n = data;
    const struct ap_claims *c;
    if (!who(n, req, &c) || !allow(n, req, c, AP_ACT_OPERATE, NULL)) {
        return;
    }
    unsigned char hi[32], hr[32];
    char xi[65], xr[65];
    if (shard__state_hash(n->shard, hi, hr) != 0) {
        ap_http_reply_err(req, AP_EIO, shard__errmsg(n->shard));
        return;
    }
    sodium_bin2hex(xi, sizeof xi, hi, sizeof hi);
    sodium_bin2hex(xr, sizeof xr, hr, sizeof hr);
    ap_http_reply_json(req, 200,
                       json_pack("{s:s, s:s, s:s, s:s, s:I, s:I}", "tier", "edge", "site",
                                 n->cfg.site, "instances", xi, "rights", xr, "local_seq",
                                 (json_int_t)shard__seq(n->shard), "region_applied",
                                 (json_int_t)shard__meta(n->shard, "region_applied")));
}

static void h_health(struct ap_http_req *req, void *data)
{
    struct edge_node *n = data;
    struct ap_instrec *list;
    size_t count = 0;
    if (shard__list(n->shard, NULL, false, &list, &count) == 0) {
        shard__free_list(list, count);
    }
    ap_http_reply_json(req, 200,
                       json_pack("{s:s, s:s, s:s, s:s, s:s, s:I, s:o, s:I, s:I, s:s}", "tier",
                                 "edge", "site", n->cfg.site, "region", n->cfg.region, "link",
                                 link__connected(n->link) ? "connected" : "disconnected",
                                 "region_node", link__peer(n->link), "instances", (json_int_t)count,
                                 "capabilities", reconcile__capabilities(n->reconcile), "local_seq",
                                 (json_int_t)shard__seq(n->shard), "region_applied",
                                 (json_int_t)shard__meta(n->shard, "region_applied"), "storage",
                                 shard__full(n->shard) ? "full" : "ok"));
}

static void h_metrics(struct ap_http_req *req, void *data)
{
    struct edge_node *n = data;
    struct link_stats ls;
    link__stats(n->link, &ls);
    ap_metric_set(n->m_link_up, link__connected(n->link) ? 1 : 0);
    ap_metric_set(n->m_deltas_sent, (double)ls.deltas_sent);
    ap_metric_set(n->m_deltas_applied, (double)ls.deltas_applied);
    ap_metric_set(n->m_disk_full, shard__full(n->shard) ? 1 : 0);
    /* Counters only go up: add what happened since the last scrape. */
    ap_metric_add(n->m_disk_full_writes,
                  (double)shard__full_errors(n->shard) - ap_metric_value(n->m_disk_full_writes));
    ap_metric_add(n->m_log_dropped,
                  (double)reconcile__log_dropped(n->reconcile) - ap_metric_value(n->m_log_dropped));
    ap_http_reply_metrics(req, n->metrics);
}

int api__register(struct edge_node *n)
{
    static const struct {
        const char *method;
        const char *pattern;
        ap_http_handler h;
    } routes[] = {
        {"GET", "/v1/health", h_health},
        {"GET", "/v1/state/hash", h_state_hash},
        {"POST", "/v1/instances", h_create},
        {"GET", "/v1/instances", h_list},
        {"GET", "/v1/instances/{id}", h_get},
        {"DELETE", "/v1/instances/{id}", h_delete},
        {"POST", "/v1/instances/{id}/stop", h_stop},
        {"POST", "/v1/instances/{id}/start", h_start},
        {"GET", "/v1/instances/{id}/logs", h_logs},
        {"GET", "/v1/quotas/{tenant}", h_quota},
        {"GET", "/metrics", h_metrics},
    };
    for (size_t i = 0; i < AP_ARRAY_LEN(routes); i++) {
        int rv = ap_http_route(n->http, routes[i].method, routes[i].pattern, routes[i].h, n);
        if (rv != 0) {
            return rv;
        }
    }
    return 0;
}
