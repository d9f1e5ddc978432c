/* api: the regional node's HTTP API (/v1 health, cluster, members, sites, instances, quotas) and
 * /metrics. */
#include "node_internal.h"

#include "ap/base.h"
#include "ap/err.h"
#include "ap/hlc.h"
#include "ap/httpc.h"
#include "ap/rsm_http.h"
#include "ap/instjson.h"
#include "ap/log.h"
#include "ap/uuid.h"
#include "catalog.h"
#include "placement.h"
#include "site.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void forward(struct regional_node *n, struct ap_http_req *req)
{
    ap_rsm_http_forward(n->rh, req);
}

static void propose_ex(struct regional_node *n, struct ap_http_req *req, uint8_t *cmd, size_t len,
                       unsigned ok_status, bool add_region)
{
    ap_rsm_http_propose(n->rh, req, cmd, len, ok_status, add_region ? "region" : NULL,
                        n->cfg.region);
}

static void propose_or_forward(struct regional_node *n, struct ap_http_req *req, uint8_t *cmd,
                               size_t len, unsigned ok_status)
{
    propose_ex(n, req, cmd, len, ok_status, false);
}

static void read_linearizable(struct regional_node *n, struct ap_http_req *req,
                              ap_rsm_http_read_fn fn)
{
    ap_rsm_http_read(n->rh, req, fn, n);
}

/* ---- who is asking (docs/security.md) ---- */

/*
 * Authenticate req: true with *c set (NULL when this region runs without a
 * controller, i.e. with authentication off); false after answering 401.
 */
static bool who(struct regional_node *n, struct ap_http_req *req, const struct ap_claims **c)
{
    *c = NULL;
    if (n->authn == NULL) {
        return true;
    }
    *c = ap_authn_request(n->authn, req);
    return *c != NULL;
}

/* May c do act on tenant's things at site (NULL: anywhere in the region)? Answers 403. */
static bool allow(struct regional_node *n, struct ap_http_req *req, const struct ap_claims *c,
                  enum ap_action act, const char *tenant, const char *site)
{
    return c == NULL || ap_authn_allow(req, c, act, tenant, n->cfg.region, site);
}

static bool can_see(struct regional_node *n, const struct ap_claims *c, const char *tenant,
                    const char *site)
{
    struct ap_target t = {.tenant = tenant, .region = n->cfg.region, .site = site};
    return c == NULL || ap_authz_check(c, AP_ACT_READ, &t, NULL) == 0;
}

/* Authenticated, and an operator when write: the guard of /v1/cluster and of site writes. */
static bool operator_guard(struct ap_http_req *req, bool write, void *data)
{
    struct regional_node *n = data;
    const struct ap_claims *c;
    return who(n, req, &c) && (!write || allow(n, req, c, AP_ACT_OPERATE, NULL, NULL));
}

/* ---- handlers ---- */

static void h_health(struct ap_http_req *req, void *data)
{
    struct regional_node *n = data;
    json_t *body = json_pack(
        "{s:s, s:s, s:I, s:s, s:o, s:I, s:I, s:I}", "tier", "regional", "region", n->cfg.region,
        "node", (json_int_t)n->cfg.id, "role", ap_rsm_role_name(ap_rsm_role(n->rsm)), "leader",
        ap_rsm_http_leader_json(n->rh), "applied_index", (json_int_t)ap_rsm_applied_index(n->rsm),
        "commit_index", (json_int_t)ap_rsm_commit_index(n->rsm), "term",
        (json_int_t)ap_rsm_term(n->rsm));
    ap_http_reply_json(req, 200, body);
}

/* This replica's content hashes, read locally (comparing replicas is the point). */
static void h_state_hash(struct ap_http_req *req, void *data)
{
    struct regional_node *n = data;
    if (!operator_guard(req, false, n)) {
        return;
    }
    json_t *body;
    int rv = catalog__state_hash(ap_rsm_store(n->rsm), &body);
    if (rv != 0) {
        ap_http_reply_err(req, rv, "could not read the catalog");
        return;
    }
    json_object_set_new(body, "tier", json_string("regional"));
    json_object_set_new(body, "region", json_string(n->cfg.region));
    json_object_set_new(body, "node", json_integer((json_int_t)n->cfg.id));
    json_object_set_new(body, "applied_index",
                        json_integer((json_int_t)ap_rsm_applied_index(n->rsm)));
    ap_http_reply_json(req, 200, body);
}

static void h_site_create(struct ap_http_req *req, void *data)
{
    struct regional_node *n = data;
    if (!operator_guard(req, true, n)) {
        return;
    }
    struct site_spec spec;
    char errmsg[AP_ERRMSG_SIZE];
    int rv = site__from_json(ap_http_req_json(req), &spec, errmsg);
    if (rv != 0) {
        ap_http_reply_err(req, rv, errmsg);
        return;
    }
    uint8_t *cmd;
    size_t len;
    rv = catalog__encode_site_create(&spec, ap_hlc_wall_realtime(NULL), &cmd, &len);
    if (rv != 0) {
        ap_http_reply_err(req, rv, "could not encode the command");
        return;
    }
    propose_or_forward(n, req, cmd, len, 201);
}

static void h_site_delete(struct ap_http_req *req, void *data)
{
    struct regional_node *n = data;
    if (!operator_guard(req, true, n)) {
        return;
    }
    const char *name = ap_http_req_param(req, "name");
    if (!site__valid_name(name)) {
        ap_http_reply_err(req, AP_ENOTFOUND, "no site has this name");
        return;
    }
    uint8_t *cmd;
    size_t len;
    int rv = catalog__encode_site_delete(name, ap_hlc_wall_realtime(NULL), &cmd, &len);
    if (rv != 0) {
        ap_http_reply_err(req, rv, "could not encode the command");
        return;
    }
    propose_or_forward(n, req, cmd, len, 200);
}

static void read_sites(void *data, struct ap_http_req *req)
{
    struct regional_node *n = data;
    if (!operator_guard(req, false, n)) {
        return;
    }
    json_t *sites;
    int rv = catalog__sites_list(ap_rsm_store(n->rsm), &sites);
    if (rv != 0) {
        ap_http_reply_err(req, rv, "could not read the catalog");
        return;
    }
    ap_http_reply_json(req, 200, json_pack("{s:o, s:s}", "sites", sites, "region", n->cfg.region));
}

static void read_site(void *data, struct ap_http_req *req)
{
    struct regional_node *n = data;
    if (!operator_guard(req, false, n)) {
        return;
    }
    json_t *site;
    const char *name = ap_http_req_param(req, "name");
    int rv = catalog__site_get(ap_rsm_store(n->rsm), name, &site);
    if (rv == AP_ENOTFOUND) {
        char msg[128];
        snprintf(msg, sizeof msg, "site '%.64s' not found in region %s", name, n->cfg.region);
        ap_http_reply_err(req, rv, msg);
        return;
    }
    if (rv != 0) {
        ap_http_reply_err(req, rv, "could not read the catalog");
        return;
    }
    ap_http_reply_json(req, 200, site);
}

static void h_sites_list(struct ap_http_req *req, void *data)
{
    read_linearizable(data, req, read_sites);
}

static void h_site_get(struct ap_http_req *req, void *data)
{
    read_linearizable(data, req, read_site);
}

/* ---- instances (docs/api.md "Instances") ---- */

/* A create refused for quota: 403 with what was short (docs/api.md). */
static void reply_quota_exceeded(struct regional_node *n, struct ap_http_req *req,
                                 const char *tenant, const int64_t need[QUOTA_RES_N],
                                 const char *message)
{
    struct quota_tenant q;
    enum quota_res r = QUOTA_INSTANCES;
    json_t *details = NULL;
    if (catalog__quota_tenant(ap_rsm_store(n->rsm), tenant, &q) == 0) {
        quota__covers(&q, need, &r);
        details = json_pack("{s:s, s:s, s:I, s:I, s:I}", "tenant", tenant, "resource",
                            quota__res_name(r), "limit", (json_int_t)q.limit[r], "unassigned",
                            (json_int_t)quota__unassigned(&q, r), "needed", (json_int_t)need[r]);
    }
    ap_http_reply_error(req, 403, "quota_exceeded", message, details);
}

struct create_ctx {
    struct regional_node *n;
    struct ap_http_req *req;
    bool placed; /* Placed here: settle the pending placement when done. */
    char site[AP_INSTREC_NAME_SIZE];
    char tenant[AP_INSTREC_NAME_SIZE];
    int64_t need[QUOTA_RES_N];
};

static void create_done(void *data, struct ap_http_req *req, struct ap_rsm_result *res)
{
    struct create_ctx *c = data;
    (void)req;
    if (c->placed) {
        placement__settle(c->n->placement, c->site, c->need[QUOTA_CPU], c->need[QUOTA_MEMORY],
                          res->status == 0);
    }
    if (res->status == AP_EQUOTA) {
        reply_quota_exceeded(c->n, c->req, c->tenant, c->need, res->message);
    } else if (res->status != 0) {
        ap_http_reply_err(c->req, res->status, res->message);
    } else {
        json_t *v = res->value;
        res->value = NULL;
        ap_http_reply_json(c->req, 201, v != NULL ? v : json_object());
    }
    ap_free(c);
}

static void h_instance_create(struct ap_http_req *req, void *data)
{
    struct regional_node *n = data;
    struct ap_instrec rec;
    char errmsg[AP_ERRMSG_SIZE];
    const struct ap_claims *claims;
    if (ap_rsm_role(n->rsm) != AP_RSM_LEADER) {
        /* The leader names, stamps and places the instance. */
        forward(n, req);
        return;
    }
    if (!who(n, req, &claims)) {
        return;
    }
    json_t *body = ap_http_req_json(req);
    int rv = ap_instjson_parse_create(body, "", &rec, errmsg);
    if (rv != 0) {
        ap_http_reply_err(req, rv, errmsg);
        return;
    }
    bool placed = rec.site[0] == '\0';
    if (placed) {
        /* Implicit placement (docs/scheduler.md): among the sites this user may write to. */
        if (claims != NULL && !ap_authz_any_tenant(claims, rec.tenant)) {
            allow(n, req, claims, AP_ACT_WRITE, rec.tenant, NULL);
            ap_instrec_clear(&rec);
            return;
        }
        rv = placement__pick(n->placement, ap_rsm_store(n->rsm), ap_rsm_applied_index(n->rsm),
                             json_object_get(body, "placement"), rec.tenant, rec.cpu_millis,
                             rec.memory_mb, claims, rec.site, errmsg);
        if (rv != 0) {
            ap_instrec_clear(&rec);
            if (rv == AP_ENOTFOUND) {
                ap_http_reply_error(req, 409, "no_capacity", errmsg, NULL);
            } else {
                ap_http_reply_err(req, rv, errmsg);
            }
            return;
        }
    } else if (!allow(n, req, claims, AP_ACT_WRITE, rec.tenant, rec.site)) {
        ap_instrec_clear(&rec);
        return;
    }
    uint64_t now = ap_hlc_wall_realtime(NULL);
    rv = ap_uuid_gen_next(&n->uuids, now, rec.id);
    if (rv != 0) {
        if (placed) {
            placement__settle(n->placement, rec.site, rec.cpu_millis, rec.memory_mb, false);
        }
        ap_instrec_clear(&rec);
        ap_http_reply_err(req, AP_EINTERNAL, "could not generate an instance id");
        return;
    }
    /* docs/catalog.md: the actual state is the site's to write; stamp 0 until it reports. */
    rec.created = ap_hlc_now(n->hlc);
    rec.desired = AP_DESIRED_RUNNING;
    rec.desired_ts = rec.created;
    rec.actual = AP_ACTUAL_PENDING;
    uint8_t *cmd;
    size_t len;
    rv = catalog__encode_instance_create(&rec, now, &cmd, &len);
    struct create_ctx *c = rv == 0 ? ap_calloc(1, sizeof *c) : NULL;
    if (c == NULL) {
        if (rv == 0) {
            ap_free(cmd);
        }
        if (placed) {
            placement__settle(n->placement, rec.site, rec.cpu_millis, rec.memory_mb, false);
        }
        ap_instrec_clear(&rec);
        ap_http_reply_err(req, rv != 0 ? rv : AP_ENOMEM, "could not encode the command");
        return;
    }
    c->n = n;
    c->req = req;
    c->placed = placed;
    ap_strlcpy(c->site, rec.site, sizeof c->site);
    ap_strlcpy(c->tenant, rec.tenant, sizeof c->tenant);
    c->need[QUOTA_INSTANCES] = 1;
    c->need[QUOTA_CPU] = rec.cpu_millis;
    c->need[QUOTA_MEMORY] = rec.memory_mb;
    ap_instrec_clear(&rec);
    if (ap_rsm_http_propose_cb(n->rh, req, cmd, len, create_done, c) != 0) {
        if (placed) {
            placement__settle(n->placement, c->site, c->need[QUOTA_CPU], c->need[QUOTA_MEMORY],
                              false);
        }
        ap_free(c);
    }
}

static const char *instance_id(struct regional_node *n, struct ap_http_req *req);

/* ---- logs: read from the site that runs the instance ---- */

struct logs_relay {
    struct ap_http_req *req;
    char site[AP_INSTREC_NAME_SIZE];
};

static void logs_done(int err, struct ap_httpc_resp *resp, const char *errmsg, void *data)
{
    struct logs_relay *l = data;
    if (err != 0) {
        char msg[AP_ERRMSG_SIZE + 96];
        snprintf(msg, sizeof msg, "site %s is unreachable: %s; its logs stay on the site", l->site,
                 errmsg != NULL ? errmsg : ap_strerror(err));
        ap_http_reply_error(l->req, 503, "site_unreachable", msg,
                            json_pack("{s:s}", "site", l->site));
    } else {
        ap_http_reply_raw(l->req, resp->status,
                          resp->content_type != NULL ? resp->content_type : "text/plain",
                          resp->body != NULL ? resp->body : "", resp->body_len);
    }
    ap_free(l);
}

/* GET /v1/instances/{id}/logs: the logs live on the site; the region relays them, the site
 * checks the token again (docs/api.md). Served from this node's replica. */
static void h_instance_logs(struct ap_http_req *req, void *data)
{
    struct regional_node *n = data;
    const struct ap_claims *claims;
    struct ap_instrec r;
    if (!who(n, req, &claims)) {
        return;
    }
    const char *id = instance_id(n, req);
    if (id == NULL) {
        return;
    }
    if (catalog__instance_get(ap_rsm_store(n->rsm), id, &r) != 0) {
        char msg[128];
        snprintf(msg, sizeof msg, "instance %s not found in region %s", id, n->cfg.region);
        ap_http_reply_err(req, AP_ENOTFOUND, msg);
        return;
    }
    bool ok = allow(n, req, claims, AP_ACT_READ, r.tenant, r.site);
    json_t *site = NULL;
    const char *http = NULL;
    if (ok && catalog__site_get(ap_rsm_store(n->rsm), r.site, &site) == 0) {
        http = json_string_value(json_object_get(site, "http"));
    }
    struct logs_relay *l = ok ? ap_calloc(1, sizeof *l) : NULL;
    if (ok && (l == NULL || http == NULL || http[0] == '\0')) {
        char msg[256];
        snprintf(msg, sizeof msg, "site %s has not linked to region %s yet: no address to read "
                 "the logs from", r.site, n->cfg.region);
        ap_http_reply_error(req, 503, "site_unreachable", msg, NULL);
        ap_free(l);
        ok = false;
    }
    if (ok) {
        l->req = req;
        ap_strlcpy(l->site, r.site, sizeof l->site);
        static const char *const keys[] = {"stream", "tail_bytes"};
        char url[512], auth[AP_HTTP_MAX_AUTH_HEADER + 32];
        size_t k = (size_t)snprintf(url, sizeof url, "http://%s/v1/instances/%s/logs", http, id);
        for (size_t i = 0; i < AP_ARRAY_LEN(keys); i++) {
            const char *v = ap_http_req_query(req, keys[i]);
            /* Values the site accepts are digits or stdout/stderr: anything else is dropped. */
            if (v != NULL && strspn(v, "0123456789abcdefghijklmnopqrstuvwxyz") == strlen(v) &&
                k + strlen(keys[i]) + strlen(v) + 3 < sizeof url) {
                k += (size_t)snprintf(url + k, sizeof url - k, "%c%s=%s",
                                      strchr(url, '?') != NULL ? '&' : '?', keys[i], v);
            }
        }
        const char *headers[2] = {NULL, NULL};
        const char *a = ap_http_req_header(req, "Authorization");
        if (a != NULL && strlen(a) <= AP_HTTP_MAX_AUTH_HEADER) {
            snprintf(auth, sizeof auth, "Authorization: %s", a);
            headers[0] = auth;
        }
        struct ap_httpc_req hr = {.method = "GET",
                                  .url = url,
                                  .headers = headers,
                                  .timeout_ms = 5000,
                                  .source_ip = n->cfg.ip};
        if (ap_httpc_start(n->loop, &hr, logs_done, l) != 0) {
            ap_free(l);
            ap_http_reply_err(req, AP_EINTERNAL, "could not ask the site for the logs");
        }
    }
    json_decref(site);
    ap_instrec_clear(&r);
}

/* POST /v1/placements:explain: the scheduler's dry run, nothing written. */
static void read_explain(void *data, struct ap_http_req *req)
{
    struct regional_node *n = data;
    const struct ap_claims *claims;
    char errmsg[AP_ERRMSG_SIZE];
    struct ap_instrec rec;
    if (!who(n, req, &claims)) {
        return;
    }
    json_t *body = json_deep_copy(ap_http_req_json(req));
    if (body == NULL) {
        ap_http_reply_err(req, AP_EINVAL, "a JSON body describing the instance is required");
        return;
    }
    /* Only what placement needs is required: fill the rest of an instance body. */
    if (json_object_get(body, "name") == NULL) {
        json_object_set_new(body, "name", json_string("explain"));
    }
    if (json_object_get(body, "command") == NULL) {
        json_object_set_new(body, "command", json_pack("[s]", "true"));
    }
    json_object_del(body, "site");
    int rv = ap_instjson_parse_create(body, "", &rec, errmsg);
    if (rv != 0) {
        json_decref(body);
        ap_http_reply_err(req, rv, errmsg);
        return;
    }
    json_t *out = placement__explain(n->placement, ap_rsm_store(n->rsm),
                                     ap_rsm_applied_index(n->rsm),
                                     json_object_get(body, "placement"), rec.tenant,
                                     rec.cpu_millis, rec.memory_mb, claims, errmsg);
    ap_instrec_clear(&rec);
    json_decref(body);
    if (out == NULL) {
        ap_http_reply_err(req, AP_EINVAL, errmsg);
        return;
    }
    json_object_set_new(out, "region", json_string(n->cfg.region));
    ap_http_reply_json(req, 200, out);
}

static void h_explain(struct ap_http_req *req, void *data)
{
    struct regional_node *n = data;
    if (ap_rsm_role(n->rsm) != AP_RSM_LEADER) {
        forward(n, req); /* The leader's view counts pending placements. */
        return;
    }
    read_explain(n, req);
}

static void site_cordon(struct ap_http_req *req, struct regional_node *n, bool cordoned)
{
    if (!operator_guard(req, true, n)) {
        return;
    }
    const char *name = ap_http_req_param(req, "name");
    if (!site__valid_name(name)) {
        ap_http_reply_err(req, AP_ENOTFOUND, "no site has this name");
        return;
    }
    uint8_t *cmd;
    size_t len;
    int rv = catalog__encode_site_cordon(name, cordoned, ap_hlc_wall_realtime(NULL), &cmd, &len);
    if (rv != 0) {
        ap_http_reply_err(req, rv, "could not encode the command");
        return;
    }
    propose_or_forward(n, req, cmd, len, 200);
}

static void h_site_cordon(struct ap_http_req *req, void *data)
{
    site_cordon(req, data, true);
}

static void h_site_uncordon(struct ap_http_req *req, void *data)
{
    site_cordon(req, data, false);
}

/* The {id} of an instance route, or NULL after answering 404. */
static const char *instance_id(struct regional_node *n, struct ap_http_req *req)
{
    const char *id = ap_http_req_param(req, "id");
    if (id == NULL || !ap_uuid_valid(id)) {
        char msg[160];
        snprintf(msg, sizeof msg, "no instance has id '%.64s' in region %s (ids are UUIDs)",
                 id != NULL ? id : "", n->cfg.region);
        ap_http_reply_err(req, AP_ENOTFOUND, msg);
        return NULL;
    }
    return id;
}

static void desire(struct regional_node *n, struct ap_http_req *req, enum ap_desired d)
{
    static const char *const none[] = {NULL};
    char errmsg[AP_ERRMSG_SIZE];
    const char *id = instance_id(n, req);
    if (id == NULL) {
        return;
    }
    int rv = ap_http_json_check_fields(ap_http_req_json(req), none, errmsg);
    if (rv != 0) {
        ap_http_reply_err(req, rv, errmsg);
        return;
    }
    if (ap_rsm_role(n->rsm) != AP_RSM_LEADER) {
        forward(n, req);
        return;
    }
    const struct ap_claims *claims;
    if (!who(n, req, &claims)) {
        return;
    }
    if (claims != NULL) {
        /* The instance's tenant and site decide; an unknown id is the apply's 404. */
        struct ap_instrec r;
        if (catalog__instance_get(ap_rsm_store(n->rsm), id, &r) == 0) {
            bool ok = allow(n, req, claims, AP_ACT_WRITE, r.tenant, r.site);
            ap_instrec_clear(&r);
            if (!ok) {
                return;
            }
        }
    }
    uint8_t *cmd;
    size_t len;
    rv = catalog__encode_instance_desire(id, d, ap_hlc_now(n->hlc), ap_hlc_wall_realtime(NULL),
                                         &cmd, &len);
    if (rv != 0) {
        ap_http_reply_err(req, rv, "could not encode the command");
        return;
    }
    propose_or_forward(n, req, cmd, len, 200);
}

static void h_instance_stop(struct ap_http_req *req, void *data)
{
    desire(data, req, AP_DESIRED_STOPPED);
}

static void h_instance_start(struct ap_http_req *req, void *data)
{
    desire(data, req, AP_DESIRED_RUNNING);
}

static void h_instance_delete(struct ap_http_req *req, void *data)
{
    desire(data, req, AP_DESIRED_DELETED);
}

static bool query_flag(struct ap_http_req *req, const char *name)
{
    const char *s = ap_http_req_query(req, name);
    return s != NULL && (strcmp(s, "1") == 0 || strcmp(s, "true") == 0);
}

static void read_instances(void *data, struct ap_http_req *req)
{
    struct regional_node *n = data;
    const struct ap_claims *claims;
    if (!who(n, req, &claims)) {
        return;
    }
    const char *site = ap_http_req_query(req, "site");
    const char *tenant = ap_http_req_query(req, "tenant");
    json_t *arr;
    if ((site != NULL && !site__valid_name(site)) ||
        (tenant != NULL && !site__valid_name(tenant))) {
        ap_http_reply_err(req, AP_EINVAL,
                          site != NULL && !site__valid_name(site)
                              ? "query 'site' must be a site name"
                              : "query 'tenant' must be a tenant name");
        return;
    }
    int rv = catalog__instances_list(ap_rsm_store(n->rsm), site, tenant, query_flag(req, "deleted"),
                                     &arr);
    if (rv != 0) {
        ap_http_reply_err(req, rv, "could not read the catalog");
        return;
    }
    if (claims != NULL) {
        /* Only what this user may read (docs/security.md). */
        json_t *visible = json_array();
        size_t i;
        json_t *it;
        json_array_foreach(arr, i, it)
        {
            if (can_see(n, claims, json_string_value(json_object_get(it, "tenant")),
                        json_string_value(json_object_get(it, "site")))) {
                json_array_append(visible, it);
            }
        }
        json_decref(arr);
        arr = visible;
    }
    ap_http_reply_json(req, 200,
                       json_pack("{s:o, s:s}", "instances", arr, "region", n->cfg.region));
}

static void read_instance(void *data, struct ap_http_req *req)
{
    struct regional_node *n = data;
    struct ap_instrec r;
    const struct ap_claims *claims;
    if (!who(n, req, &claims)) {
        return;
    }
    const char *id = instance_id(n, req);
    if (id == NULL) {
        return;
    }
    int rv = catalog__instance_get(ap_rsm_store(n->rsm), id, &r);
    if (rv == AP_ENOTFOUND) {
        char msg[128];
        snprintf(msg, sizeof msg, "instance %s not found in region %s", id, n->cfg.region);
        ap_http_reply_err(req, rv, msg);
        return;
    }
    if (rv != 0) {
        ap_http_reply_err(req, rv, "could not read the catalog");
        return;
    }
    if (!allow(n, req, claims, AP_ACT_READ, r.tenant, r.site)) {
        ap_instrec_clear(&r);
        return;
    }
    json_t *j = ap_instjson_render(&r);
    ap_instrec_clear(&r);
    if (j == NULL) {
        ap_http_reply_err(req, AP_ENOMEM, "out of memory");
        return;
    }
    ap_http_reply_json(req, 200, j);
}

static void h_instances_list(struct ap_http_req *req, void *data)
{
    read_linearizable(data, req, read_instances);
}

static void h_instance_get(struct ap_http_req *req, void *data)
{
    read_linearizable(data, req, read_instance);
}

/* ---- quotas (docs/api.md "Quotas") ---- */

/* The {tenant} of a quota route, or NULL after answering 400. */
static const char *quota_tenant(struct ap_http_req *req)
{
    const char *t = ap_http_req_param(req, "tenant");
    if (t == NULL || !site__valid_name(t)) {
        ap_http_reply_err(req, AP_EINVAL,
                          "tenant names are 1-63 lowercase letters, digits or '-', not starting "
                          "or ending with '-'");
        return NULL;
    }
    return t;
}

/* Read {"instances","cpu_millis","memory_mb"} amounts; present[i] says which were given. */
static int amounts_from_json(json_t *body, int64_t v[QUOTA_RES_N], bool present[QUOTA_RES_N],
                             char *errmsg)
{
    static const char *const allowed[] = {"instances", "cpu_millis", "memory_mb", NULL};
    if (body == NULL) {
        ap_errmsg_set(errmsg,
                      "a JSON body {\"instances\",\"cpu_millis\",\"memory_mb\"} is required");
        return AP_EINVAL;
    }
    int rv = ap_http_json_check_fields(body, allowed, errmsg);
    for (int i = 0; rv == 0 && i < QUOTA_RES_N; i++) {
        const char *key = quota__res_name((enum quota_res)i);
        v[i] = -1;
        rv = ap_http_json_get_int(body, key, false, 0, QUOTA_MAX_AMOUNT, &v[i], errmsg);
        present[i] = v[i] >= 0;
        if (!present[i]) {
            v[i] = 0;
        }
    }
    return rv;
}

static void h_quota_set(struct ap_http_req *req, void *data)
{
    struct regional_node *n = data;
    if (!operator_guard(req, true, n)) {
        return;
    }
    char errmsg[AP_ERRMSG_SIZE];
    int64_t limit[QUOTA_RES_N];
    bool present[QUOTA_RES_N];
    const char *tenant = quota_tenant(req);
    if (tenant == NULL) {
        return;
    }
    int rv = amounts_from_json(ap_http_req_json(req), limit, present, errmsg);
    if (rv != 0) {
        ap_http_reply_err(req, rv, errmsg);
        return;
    }
    uint8_t *cmd;
    size_t len;
    rv = catalog__encode_quota_set(tenant, present, limit, ap_hlc_wall_realtime(NULL), &cmd, &len);
    if (rv != 0) {
        ap_http_reply_err(req, rv, "could not encode the command");
        return;
    }
    propose_ex(n, req, cmd, len, 200, true);
}

static void h_reserve_set(struct ap_http_req *req, void *data)
{
    struct regional_node *n = data;
    if (!operator_guard(req, true, n)) {
        return;
    }
    char errmsg[AP_ERRMSG_SIZE];
    int64_t reserve[QUOTA_RES_N];
    bool present[QUOTA_RES_N];
    const char *tenant = quota_tenant(req);
    if (tenant == NULL) {
        return;
    }
    const char *site = ap_http_req_param(req, "site");
    if (site == NULL || !site__valid_name(site)) {
        ap_http_reply_err(req, AP_ENOTFOUND, "no site has this name");
        return;
    }
    int rv = amounts_from_json(ap_http_req_json(req), reserve, present, errmsg);
    if (rv != 0) {
        ap_http_reply_err(req, rv, errmsg);
        return;
    }
    uint8_t *cmd;
    size_t len;
    rv = catalog__encode_reserve_set(tenant, site, reserve, ap_hlc_wall_realtime(NULL), &cmd, &len);
    if (rv != 0) {
        ap_http_reply_err(req, rv, "could not encode the command");
        return;
    }
    propose_ex(n, req, cmd, len, 200, true);
}

static void read_quota(void *data, struct ap_http_req *req)
{
    struct regional_node *n = data;
    json_t *v;
    const struct ap_claims *claims;
    if (!who(n, req, &claims)) {
        return;
    }
    const char *tenant = quota_tenant(req);
    if (tenant == NULL) {
        return;
    }
    if (claims != NULL && !ap_authz_any_tenant(claims, tenant)) {
        allow(n, req, claims, AP_ACT_READ, tenant, NULL);
        return;
    }
    int rv = catalog__quota_view(ap_rsm_store(n->rsm), tenant, &v);
    if (rv != 0) {
        ap_http_reply_err(req, rv, "could not read the catalog");
        return;
    }
    json_object_set_new(v, "region", json_string(n->cfg.region));
    ap_http_reply_json(req, 200, v);
}

static void h_quota_get(struct ap_http_req *req, void *data)
{
    read_linearizable(data, req, read_quota);
}

static void h_metrics(struct ap_http_req *req, void *data)
{
    struct regional_node *n = data;
    ap_http_reply_metrics(req, n->metrics);
}

int api__register(struct regional_node *n)
{
    static const struct {
        const char *method;
        const char *pattern;
        ap_http_handler h;
    } routes[] = {
        {"GET", "/v1/health", h_health},
        {"GET", "/v1/state/hash", h_state_hash},
        {"GET", "/v1/sites", h_sites_list},
        {"POST", "/v1/sites", h_site_create},
        {"GET", "/v1/sites/{name}", h_site_get},
        {"DELETE", "/v1/sites/{name}", h_site_delete},
        {"GET", "/v1/instances", h_instances_list},
        {"POST", "/v1/instances", h_instance_create},
        {"GET", "/v1/instances/{id}", h_instance_get},
        {"DELETE", "/v1/instances/{id}", h_instance_delete},
        {"POST", "/v1/instances/{id}/stop", h_instance_stop},
        {"POST", "/v1/instances/{id}/start", h_instance_start},
        {"GET", "/v1/quotas/{tenant}", h_quota_get},
        {"PUT", "/v1/quotas/{tenant}", h_quota_set},
        {"PUT", "/v1/quotas/{tenant}/reserves/{site}", h_reserve_set},
        {"GET", "/metrics", h_metrics},
        {"POST", "/v1/placements:explain", h_explain},
        {"GET", "/v1/instances/{id}/logs", h_instance_logs},
        {"POST", "/v1/sites/{name}/cordon", h_site_cordon},
        {"POST", "/v1/sites/{name}/uncordon", h_site_uncordon},
    };
    int rv = ap_rsm_http_route_cluster(n->rh, n->http, operator_guard, n);
    if (rv != 0) {
        return rv;
    }
    for (size_t i = 0; i < AP_ARRAY_LEN(routes); i++) {
        rv = ap_http_route(n->http, routes[i].method, routes[i].pattern, routes[i].h, n);
        if (rv != 0) {
            return rv;
        }
    }
    return 0;
}
