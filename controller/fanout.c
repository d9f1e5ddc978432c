/* fanout: requests the controller answers by asking the regions (docs/controller.md
 * "Fan-out"): merged reads that say which regions could not be reached, writes routed to
 * the region that owns a site or instance, multi-site creates and bulk operations. */
#include "node_internal.h"

#include "ap/base.h"
#include "ap/err.h"
#include "ap/httpc.h"
#include "ap/log.h"
#include "ap/token.h"
#include "catalog.h"

#include <stdio.h>
#include <string.h>

#define MAX_CALLS      1024
#define MAX_NODES      CCAT_MAX_REGION_NODES
#define MIN_ATTEMPT_MS 300

/* ---- a batch of HTTP calls, each to one region (any of its nodes) ---- */

struct fan;
typedef void (*fan_done_fn)(struct fan *f);

struct call {
    struct fan *f;
    char region[AP_NAME_MAX];
    char nodes[MAX_NODES][64];
    size_t n_nodes, next;
    char method[8];
    char path[512];
    char *body;       /* JSON text or NULL (owned). */
    const char *tag;  /* Caller's label for the result (e.g. a site name); borrowed. */
    json_t *tag_json; /* Owned extra (e.g. the instance a bulk call is about). */
    bool reached;
    unsigned status;
    json_t *resp; /* Parsed JSON answer (owned), or NULL. */
    char *raw;    /* Raw answer body (owned). */
    char content_type[64];
    size_t raw_len;
    char err[AP_ERRMSG_SIZE];
};

struct fan {
    struct ctl_node *n;
    struct ap_http_req *req;
    char auth[AP_HTTP_MAX_AUTH_HEADER + 32];
    size_t n_calls, pending;
    struct call *calls;
    fan_done_fn done;
    json_t *ctx; /* Whatever the route needs between steps (owned). */
    const char *ctx_str;
};

static void fan_free(struct fan *f)
{
    for (size_t i = 0; i < f->n_calls; i++) {
        free(f->calls[i].body);
        json_decref(f->calls[i].resp);
        json_decref(f->calls[i].tag_json);
        ap_free(f->calls[i].raw);
    }
    ap_free(f->calls);
    json_decref(f->ctx);
    ap_free(f);
}

static struct fan *fan_new(struct ctl_node *n, struct ap_http_req *req)
{
    struct fan *f = ap_calloc(1, sizeof *f);
    if (f == NULL) {
        ap_http_reply_err(req, AP_ENOMEM, "out of memory");
        return NULL;
    }
    f->n = n;
    f->req = req;
    const char *auth = ap_http_req_header(req, "Authorization");
    if (auth != NULL && strlen(auth) <= AP_HTTP_MAX_AUTH_HEADER) {
        snprintf(f->auth, sizeof f->auth, "Authorization: %s", auth);
    }
    return f;
}

/* Add a call to region (every region when region is NULL). Returns 0 or AP_E*. */
static int fan_add(struct fan *f, const char *region, const char *method, const char *path,
                   json_t *body, const char *tag, json_t *tag_json)
{
    char names[CCAT_MAX_REGIONS][64];
    size_t n_names = 0;
    struct ap_store *st = ap_rsm_store(f->n->rsm);
    if (region != NULL) {
        ap_strlcpy(names[0], region, sizeof names[0]);
        n_names = 1;
    } else if (ccat_region_names(st, names, CCAT_MAX_REGIONS, &n_names) != 0) {
        return AP_EIO;
    }
    for (size_t i = 0; i < n_names; i++) {
        if (f->n_calls >= MAX_CALLS) {
            return AP_ETOOBIG;
        }
        struct call *nc = ap_realloc(f->calls, (f->n_calls + 1) * sizeof *nc);
        if (nc == NULL) {
            return AP_ENOMEM;
        }
        f->calls = nc;
        struct call *c = &f->calls[f->n_calls++];
        memset(c, 0, sizeof *c);
        c->f = f;
        ap_strlcpy(c->region, names[i], sizeof c->region);
        ccat_region_nodes(st, names[i], c->nodes, MAX_NODES, &c->n_nodes);
        ap_strlcpy(c->method, method, sizeof c->method);
        ap_strlcpy(c->path, path, sizeof c->path);
        c->body = body != NULL ? json_dumps(body, JSON_COMPACT) : NULL;
        c->tag = tag;
        c->tag_json = json_incref(tag_json);
        if (n_names == 1) {
            break;
        }
    }
    return 0;
}

static void call_start(struct call *c);

static void call_finish(struct call *c)
{
    struct fan *f = c->f;
    if (--f->pending == 0) {
        f->done(f);
    }
}

static void call_done(int err, struct ap_httpc_resp *resp, const char *errmsg, void *data)
{
    struct call *c = data;
    /* A node that cannot answer for its region (down, no leader): ask the next. */
    if (err != 0 || resp->status == 502 || resp->status == 503) {
        snprintf(c->err, sizeof c->err, "%s",
                 err != 0 ? (errmsg != NULL ? errmsg : ap_strerror(err))
                          : "no leader in the region");
        if (c->next < c->n_nodes) {
            call_start(c);
            return;
        }
        call_finish(c);
        return;
    }
    c->reached = true;
    c->status = resp->status;
    ap_strlcpy(c->content_type,
               resp->content_type != NULL ? resp->content_type : "application/json",
               sizeof c->content_type);
    if (resp->body != NULL) {
        c->raw = ap_malloc(resp->body_len + 1);
        if (c->raw != NULL) {
            memcpy(c->raw, resp->body, resp->body_len + 1);
            c->raw_len = resp->body_len;
        }
        c->resp = json_loadb(resp->body, resp->body_len, 0, NULL);
    }
    call_finish(c);
}

static void call_start(struct call *c)
{
    struct fan *f = c->f;
    if (c->next >= c->n_nodes) {
        if (c->err[0] == '\0') {
            snprintf(c->err, sizeof c->err, "region %s has no known endpoint", c->region);
        }
        call_finish(c);
        return;
    }
    unsigned deadline = f->n->cfg.fanout_timeout_ms != 0 ? f->n->cfg.fanout_timeout_ms : 2000;
    unsigned attempt = deadline / (unsigned)c->n_nodes;
    char url[640];
    snprintf(url, sizeof url, "http://%s%s", c->nodes[c->next++], c->path);
    const char *headers[4];
    size_t nh = 0;
    if (f->auth[0] != '\0') {
        headers[nh++] = f->auth;
    }
    if (c->body != NULL) {
        headers[nh++] = "Content-Type: application/json";
    }
    headers[nh] = NULL;
    struct ap_httpc_req hr = {
        .method = c->method,
        .url = url,
        .body = c->body,
        .body_len = c->body != NULL ? strlen(c->body) : 0,
        .headers = headers,
        .timeout_ms = attempt < MIN_ATTEMPT_MS ? MIN_ATTEMPT_MS : attempt,
        .source_ip = f->n->cfg.ip,
    };
    int rv = ap_httpc_start(f->n->loop, &hr, call_done, c);
    if (rv != 0) {
        snprintf(c->err, sizeof c->err, "%s", ap_strerror(rv));
        call_finish(c);
    }
}

static void fan_run(struct fan *f, fan_done_fn done)
{
    f->done = done;
    f->pending = f->n_calls;
    if (f->n_calls == 0) {
        done(f);
        return;
    }
    ap_metric_inc(f->n->m_fanouts);
    /* pending counts down from n_calls; a call that fails at once finishes synchronously. */
    size_t n = f->n_calls;
    f->pending++;
    for (size_t i = 0; i < n; i++) {
        call_start(&f->calls[i]);
    }
    if (--f->pending == 0) {
        done(f);
    }
}

/* Regions that could not answer, as a JSON array. */
static json_t *unreachable(struct fan *f)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < f->n_calls; i++) {
        if (!f->calls[i].reached) {
            json_array_append_new(arr, json_string(f->calls[i].region));
        }
    }
    return arr;
}

/* Relay one call's answer as the controller's answer. */
static void relay(struct fan *f, struct call *c)
{
    if (!c->reached) {
        char msg[AP_ERRMSG_SIZE + 96];
        snprintf(msg, sizeof msg, "region %s is unreachable: %s", c->region, c->err);
        ap_http_reply_error(f->req, 503, "region_unreachable", msg,
                            json_pack("{s:s}", "region", c->region));
    } else {
        ap_http_reply_raw(f->req, c->status, c->content_type, c->raw != NULL ? c->raw : "",
                          c->raw_len);
    }
}

static bool authed(struct ctl_node *n, struct ap_http_req *req)
{
    return ap_authn_request(n->authn, req) != NULL;
}

/* ---- merged lists: GET /v1/sites, GET /v1/instances ---- */

static void merged_done(struct fan *f)
{
    const char *key = f->ctx_str;
    json_t *all = json_array();
    json_t *errors = json_array();
    for (size_t i = 0; i < f->n_calls; i++) {
        struct call *c = &f->calls[i];
        if (!c->reached) {
            continue;
        }
        json_t *items = json_object_get(c->resp, key);
        if (c->status != 200 || !json_is_array(items)) {
            json_t *e = json_object_get(c->resp, "error");
            json_array_append_new(errors,
                                  json_pack("{s:s, s:i, s:O}", "region", c->region, "status",
                                            (int)c->status, "error", e != NULL ? e : json_null()));
            continue;
        }
        size_t k;
        json_t *it;
        json_array_foreach(items, k, it)
        {
            json_object_set_new(it, "region", json_string(c->region));
            json_array_append(all, it);
        }
    }
    json_t *un = unreachable(f);
    bool partial = json_array_size(un) > 0 || json_array_size(errors) > 0;
    json_t *body = json_pack("{s:o, s:b, s:o}", key, all, "partial", partial, "unreachable", un);
    if (json_array_size(errors) > 0) {
        json_object_set_new(body, "errors", errors);
    } else {
        json_decref(errors);
    }
    ap_http_reply_json(f->req, 200, body);
    fan_free(f);
}

static void merged_list(struct ctl_node *n, struct ap_http_req *req, const char *key,
                        const char *path, const char *const *query_keys)
{
    if (!authed(n, req)) {
        return;
    }
    struct fan *f = fan_new(n, req);
    if (f == NULL) {
        return;
    }
    char q[512], full[600];
    ap_http_req_query_string(req, query_keys, q, sizeof q);
    snprintf(full, sizeof full, "%s%s", path, q);
    const char *region = ap_http_req_query(req, "region");
    if (region != NULL && !ap_token_name_valid(region)) {
        fan_free(f);
        ap_http_reply_err(req, AP_EINVAL, "query 'region' must be a region name");
        return;
    }
    int rv = fan_add(f, region, "GET", full, NULL, NULL, NULL);
    if (rv != 0) {
        fan_free(f);
        ap_http_reply_err(req, rv, "could not list the regions");
        return;
    }
    f->ctx_str = key;
    fan_run(f, merged_done);
}

static void h_sites_list(struct ap_http_req *req, void *data)
{
    static const char *const keys[] = {"stale", NULL};
    merged_list(data, req, "sites", "/v1/sites", keys);
}

static void h_instances_list(struct ap_http_req *req, void *data)
{
    static const char *const keys[] = {"site", "tenant", "deleted", "stale", NULL};
    merged_list(data, req, "instances", "/v1/instances", keys);
}

/* ---- find the region that owns something, then act there ---- */

/* After a lookup fan (GET on every region): the first region that answered 200. */
static struct call *found_in(struct fan *f)
{
    for (size_t i = 0; i < f->n_calls; i++) {
        if (f->calls[i].reached && f->calls[i].status == 200) {
            return &f->calls[i];
        }
    }
    return NULL;
}

/* Answer the lookup's miss: 404, or 503 naming the regions that could not say. */
static void reply_missing(struct fan *f, const char *what)
{
    json_t *un = unreachable(f);
    char msg[256];
    if (json_array_size(un) > 0) {
        snprintf(msg, sizeof msg, "%s not found in the regions reached; %zu could not be reached",
                 what, json_array_size(un));
        ap_http_reply_error(f->req, 503, "region_unreachable", msg,
                            json_pack("{s:b, s:o}", "partial", true, "unreachable", un));
        return;
    }
    json_decref(un);
    /* Every region answered; relay a region's own 401/403 rather than hide it as a 404. */
    for (size_t i = 0; i < f->n_calls; i++) {
        if (f->calls[i].status == 401 || f->calls[i].status == 403) {
            relay(f, &f->calls[i]);
            return;
        }
    }
    snprintf(msg, sizeof msg, "%s not found in any region", what);
    ap_http_reply_err(f->req, AP_ENOTFOUND, msg);
}

static void owner_act_done(struct fan *f)
{
    relay(f, &f->calls[0]);
    fan_free(f);
}

/* Step 2 of a routed request: send the original method/path/body to the owner region. */
static void routed_lookup_done(struct fan *f)
{
    struct call *c = found_in(f);
    if (c == NULL) {
        reply_missing(f, json_string_value(json_object_get(f->ctx, "what")));
        fan_free(f);
        return;
    }
    struct fan *g = fan_new(f->n, f->req);
    if (g == NULL) {
        fan_free(f);
        return;
    }
    json_t *body = json_object_get(f->ctx, "body");
    int rv = fan_add(g, c->region, json_string_value(json_object_get(f->ctx, "method")),
                     json_string_value(json_object_get(f->ctx, "path")),
                     json_is_object(body) ? body : NULL, NULL, NULL);
    fan_free(f);
    if (rv != 0) {
        ap_http_reply_err(g->req, rv, "could not route the request");
        fan_free(g);
        return;
    }
    fan_run(g, owner_act_done);
}

/* Find what (GET lookup_path in every region), then send req as is to the owner. */
static void routed(struct ctl_node *n, struct ap_http_req *req, const char *lookup_path,
                   const char *what, json_t *body)
{
    if (!authed(n, req)) {
        json_decref(body);
        return;
    }
    struct fan *f = fan_new(n, req);
    if (f == NULL) {
        json_decref(body);
        return;
    }
    static const char *const keys[] = {"stream", "tail", "tail_bytes", NULL};
    char q[256], path[640];
    ap_http_req_query_string(req, keys, q, sizeof q);
    snprintf(path, sizeof path, "%s%s", ap_http_req_path(req), q);
    f->ctx = json_pack("{s:s, s:s, s:s, s:o}", "what", what, "method", ap_http_req_method(req),
                       "path", path, "body", body != NULL ? body : json_null());
    int rv = fan_add(f, NULL, "GET", lookup_path, NULL, NULL, NULL);
    if (rv != 0) {
        fan_free(f);
        ap_http_reply_err(req, rv, "could not list the regions");
        return;
    }
    fan_run(f, routed_lookup_done);
}

static json_t *body_copy(struct ap_http_req *req)
{
    json_t *b = ap_http_req_json(req);
    return b != NULL ? json_deep_copy(b) : NULL;
}

static void by_site(struct ap_http_req *req, void *data)
{
    const char *name = ap_http_req_param(req, "site");
    if (name == NULL) {
        name = ap_http_req_param(req, "name");
    }
    if (!ap_token_name_valid(name)) {
        ap_http_reply_err(req, AP_ENOTFOUND, "no site has this name");
        return;
    }
    char path[128], what[96];
    snprintf(path, sizeof path, "/v1/sites/%s", name);
    snprintf(what, sizeof what, "site '%s'", name);
    routed(data, req, path, what, body_copy(req));
}

static void by_instance(struct ap_http_req *req, void *data)
{
    const char *id = ap_http_req_param(req, "id");
    if (id == NULL || strlen(id) != 36) {
        ap_http_reply_err(req, AP_ENOTFOUND, "no instance has this id (ids are UUIDs)");
        return;
    }
    char path[128], what[96];
    snprintf(path, sizeof path, "/v1/instances/%s", id);
    snprintf(what, sizeof what, "instance %s", id);
    routed(data, req, path, what, body_copy(req));
}

/* POST /v1/sites {"region": R, ...}: create the site in region R. */
static void h_site_create(struct ap_http_req *req, void *data)
{
    struct ctl_node *n = data;
    if (!authed(n, req)) {
        return;
    }
    json_t *body = ap_http_req_json(req);
    const char *region = json_string_value(json_object_get(body, "region"));
    if (region == NULL || !ap_token_name_valid(region)) {
        ap_http_reply_err(req, AP_EINVAL,
                          "field 'region': the controller needs the region the site belongs to");
        return;
    }
    char nodes[1][64];
    size_t nn;
    if (ccat_region_nodes(ap_rsm_store(n->rsm), region, nodes, 1, &nn) != 0) {
        char msg[128];
        snprintf(msg, sizeof msg, "region '%s' is not registered with the controller", region);
        ap_http_reply_err(req, AP_ENOTFOUND, msg);
        return;
    }
    struct fan *f = fan_new(n, req);
    if (f == NULL) {
        return;
    }
    json_t *copy = json_deep_copy(body);
    json_object_del(copy, "region");
    int rv = fan_add(f, region, "POST", "/v1/sites", copy, NULL, NULL);
    json_decref(copy);
    if (rv != 0) {
        fan_free(f);
        ap_http_reply_err(req, rv, "could not route the request");
        return;
    }
    fan_run(f, owner_act_done);
}

/* ---- POST /v1/instances: one site, a list of sites, or placement ---- */

static void multi_create_done(struct fan *f)
{
    json_t *results = json_array();
    size_t failed = 0;
    for (size_t i = 0; i < f->n_calls; i++) {
        struct call *c = &f->calls[i];
        json_t *r = json_pack("{s:s, s:s}", "site", c->tag, "region", c->region);
        if (!c->reached) {
            failed++;
            json_object_set_new(r, "status", json_integer(503));
            json_object_set_new(
                r, "error",
                json_pack("{s:s, s:s}", "code", "region_unreachable", "message", c->err));
        } else {
            json_object_set_new(r, "status", json_integer(c->status));
            bool ok = c->status >= 200 && c->status < 300;
            failed += ok ? 0 : 1;
            json_t *e = json_object_get(c->resp, "error");
            json_object_set(r, ok ? "instance" : "error",
                            ok ? (c->resp != NULL ? c->resp : json_null())
                               : (e != NULL ? e : json_null()));
        }
        json_array_append_new(results, r);
    }
    /* Sites the lookup could not place in a region. */
    size_t k;
    json_t *m;
    json_array_foreach(json_object_get(f->ctx, "missing"), k, m)
    {
        failed++;
        json_array_append(results, m);
    }
    unsigned status = failed == 0 ? 201 : 207;
    ap_http_reply_json(f->req, status,
                       json_pack("{s:o, s:I, s:I}", "results", results, "created",
                                 (json_int_t)(json_array_size(results) - failed), "failed",
                                 (json_int_t)failed));
    fan_free(f);
}

/* Map site name -> region from a GET /v1/sites lookup fan. */
static const char *site_region(struct fan *f, const char *site)
{
    for (size_t i = 0; i < f->n_calls; i++) {
        size_t k;
        json_t *s;
        json_array_foreach(json_object_get(f->calls[i].resp, "sites"), k, s)
        {
            const char *name = json_string_value(json_object_get(s, "name"));
            if (name != NULL && strcmp(name, site) == 0) {
                return f->calls[i].region;
            }
        }
    }
    return NULL;
}

static void multi_create_lookup_done(struct fan *f)
{
    struct fan *g = fan_new(f->n, f->req);
    if (g == NULL) {
        fan_free(f);
        return;
    }
    json_t *body = json_object_get(f->ctx, "body");
    json_t *sites = json_object_get(body, "sites");
    json_t *missing = json_array();
    json_t *un = unreachable(f);
    size_t i;
    json_t *s;
    json_array_foreach(sites, i, s)
    {
        const char *site = json_string_value(s);
        const char *region = site_region(f, site);
        if (region == NULL) {
            json_array_append_new(
                missing,
                json_pack("{s:s, s:i, s:{s:s, s:s}}", "site", site, "status",
                          json_array_size(un) > 0 ? 503 : 404, "error", "code",
                          json_array_size(un) > 0 ? "region_unreachable" : "not_found", "message",
                          json_array_size(un) > 0 ? "site not found in the regions reached"
                                                  : "no region has this site"));
            continue;
        }
        json_t *one = json_deep_copy(body);
        json_object_del(one, "sites");
        json_object_set_new(one, "site", json_string(site));
        /* tag points into f->ctx, which g keeps alive below. */
        int rv = fan_add(g, region, "POST", "/v1/instances", one, site, NULL);
        json_decref(one);
        if (rv != 0) {
            json_decref(missing);
            json_decref(un);
            ap_http_reply_err(f->req, rv, "too many sites");
            fan_free(f);
            fan_free(g);
            return;
        }
    }
    json_decref(un);
    g->ctx = json_incref(f->ctx);
    json_object_set_new(g->ctx, "missing", missing);
    fan_free(f);
    fan_run(g, multi_create_done);
}

/* Placement: ask the regions in turn until one places the instance. */
static void place_next(struct fan *f);

static void place_done(struct fan *f)
{
    struct call *c = &f->calls[0];
    if (c->reached && c->status != 409 && c->status != 503) {
        relay(f, c);
        fan_free(f);
        return;
    }
    /* No site fits there (409 no_capacity) or the region is unreachable: try the next. */
    struct fan *g = fan_new(f->n, f->req);
    if (g == NULL) {
        fan_free(f);
        return;
    }
    g->ctx = json_incref(f->ctx);
    json_t *tried = json_object_get(g->ctx, "tried");
    json_t *err = c->reached ? json_object_get(c->resp, "error") : NULL;
    json_array_append_new(
        tried, json_pack("{s:s, s:i, s:o}", "region", c->region, "status",
                         c->reached ? (int)c->status : 503, "error",
                         err != NULL ? json_incref(err)
                                     : json_pack("{s:s, s:s}", "code", "region_unreachable",
                                                 "message", c->err)));
    fan_free(f);
    place_next(g);
}

static void place_next(struct fan *f)
{
    json_t *regions = json_object_get(f->ctx, "regions");
    size_t next = (size_t)json_integer_value(json_object_get(f->ctx, "next"));
    if (next >= json_array_size(regions)) {
        /* Every region unreachable: 503; some answered that nothing fits: 409. */
        json_t *tried = json_object_get(f->ctx, "tried");
        size_t i, unreachable_n = 0;
        json_t *x;
        json_array_foreach(tried, i, x)
        {
            unreachable_n += json_integer_value(json_object_get(x, "status")) == 503;
        }
        bool none_reached = json_array_size(tried) > 0 && unreachable_n == json_array_size(tried);
        ap_http_reply_error(f->req, none_reached ? 503 : 409,
                            none_reached ? "region_unreachable" : "no_capacity",
                            none_reached ? "no region could be reached to place the instance"
                                         : "no region could place the instance (see details.tried)",
                            json_pack("{s:O}", "tried", tried));
        fan_free(f);
        return;
    }
    json_object_set_new(f->ctx, "next", json_integer((json_int_t)next + 1));
    int rv = fan_add(f, json_string_value(json_array_get(regions, next)), "POST", "/v1/instances",
                     json_object_get(f->ctx, "body"), NULL, NULL);
    if (rv != 0) {
        ap_http_reply_err(f->req, rv, "could not route the request");
        fan_free(f);
        return;
    }
    fan_run(f, place_done);
}

static void h_instance_create(struct ap_http_req *req, void *data)
{
    struct ctl_node *n = data;
    json_t *body = ap_http_req_json(req);
    if (!authed(n, req)) {
        return;
    }
    if (body == NULL) {
        ap_http_reply_err(req, AP_EINVAL, "a JSON body describing the instance is required");
        return;
    }
    json_t *sites = json_object_get(body, "sites");
    const char *site = json_string_value(json_object_get(body, "site"));
    const char *region = json_string_value(json_object_get(body, "region"));
    if (sites != NULL) {
        if (!json_is_array(sites) || json_array_size(sites) == 0 || json_array_size(sites) > 256 ||
            json_object_get(body, "site") != NULL) {
            ap_http_reply_err(req, AP_EINVAL,
                              "field 'sites': a list of 1-256 site names (and no 'site')");
            return;
        }
        size_t i;
        json_t *s;
        json_array_foreach(sites, i, s)
        {
            if (!ap_token_name_valid(json_string_value(s))) {
                ap_http_reply_err(req, AP_EINVAL, "field 'sites': every entry is a site name");
                return;
            }
        }
        struct fan *f = fan_new(n, req);
        if (f == NULL) {
            return;
        }
        f->ctx = json_pack("{s:o}", "body", json_deep_copy(body));
        json_object_del(json_object_get(f->ctx, "body"), "region");
        if (fan_add(f, NULL, "GET", "/v1/sites?stale=1", NULL, NULL, NULL) != 0) {
            fan_free(f);
            ap_http_reply_err(req, AP_EIO, "could not list the regions");
            return;
        }
        fan_run(f, multi_create_lookup_done);
        return;
    }
    if (site != NULL) {
        if (!ap_token_name_valid(site)) {
            ap_http_reply_err(req, AP_EINVAL, "field 'site' must be a site name");
            return;
        }
        char path[128], what[96];
        snprintf(path, sizeof path, "/v1/sites/%s?stale=1", site);
        snprintf(what, sizeof what, "site '%s'", site);
        json_t *copy = json_deep_copy(body);
        json_object_del(copy, "region"); /* The region is the site's; regions take no such field. */
        routed(n, req, path, what, copy);
        return;
    }
    /* Placement (L2.2): the named region, or each region in turn. */
    struct fan *f = fan_new(n, req);
    if (f == NULL) {
        return;
    }
    json_t *copy = json_deep_copy(body);
    json_object_del(copy, "region");
    json_t *regions = json_array();
    if (region != NULL) {
        json_array_append_new(regions, json_string(region));
    } else {
        char names[CCAT_MAX_REGIONS][64];
        size_t nn = 0;
        ccat_region_names(ap_rsm_store(n->rsm), names, CCAT_MAX_REGIONS, &nn);
        for (size_t i = 0; i < nn; i++) {
            json_array_append_new(regions, json_string(names[i]));
        }
    }
    f->ctx =
        json_pack("{s:o, s:o, s:i, s:[]}", "body", copy, "regions", regions, "next", 0, "tried");
    place_next(f);
}

/* ---- bulk stop/start/delete: POST /v1/instances:stop {"tenant","name","sites"|"selector"} ---- */

static bool labels_match(json_t *labels, json_t *selector)
{
    const char *k;
    json_t *v;
    json_object_foreach(selector, k, v)
    {
        json_t *have = json_object_get(labels, k);
        if (!json_is_string(have) || !json_equal(have, v)) {
            return false;
        }
    }
    return true;
}

static void bulk_act_done(struct fan *f)
{
    json_t *results = json_array();
    size_t failed = 0;
    for (size_t i = 0; i < f->n_calls; i++) {
        struct call *c = &f->calls[i];
        bool ok = c->reached && c->status == 200;
        failed += ok ? 0 : 1;
        json_t *r = json_pack("{s:O, s:O, s:s, s:i}", "id", json_object_get(c->tag_json, "id"),
                              "site", json_object_get(c->tag_json, "site"), "region", c->region,
                              "status", c->reached ? (int)c->status : 503);
        if (!ok) {
            json_t *e = json_object_get(c->resp, "error");
            json_object_set_new(r, "error",
                                e != NULL ? json_incref(e)
                                          : json_pack("{s:s, s:s}", "code", "region_unreachable",
                                                      "message", c->err));
        }
        json_array_append_new(results, r);
    }
    json_t *un = json_object_get(f->ctx, "unreachable");
    json_t *errs = json_object_get(f->ctx, "errors");
    json_t *body =
        json_pack("{s:o, s:I, s:I, s:b, s:O}", "results", results, "matched",
                  (json_int_t)f->n_calls, "failed", (json_int_t)failed, "partial",
                  json_array_size(un) > 0 || json_array_size(errs) > 0, "unreachable", un);
    if (json_array_size(errs) > 0) {
        json_object_set(body, "errors", errs);
    }
    ap_http_reply_json(f->req, failed == 0 ? 200 : 207, body);
    fan_free(f);
}

static void bulk_list_done(struct fan *f)
{
    json_t *b = json_object_get(f->ctx, "body");
    const char *name = json_string_value(json_object_get(b, "name"));
    json_t *sites = json_object_get(b, "sites");
    json_t *selector = json_object_get(b, "selector");
    const char *action = json_string_value(json_object_get(f->ctx, "action"));
    struct fan *g = fan_new(f->n, f->req);
    if (g == NULL) {
        fan_free(f);
        return;
    }
    json_t *errors = json_array();
    for (size_t i = 0; i < f->n_calls; i++) {
        struct call *c = &f->calls[i];
        if (c->reached && c->status != 200) {
            json_t *e = json_object_get(c->resp, "error");
            json_array_append_new(errors,
                                  json_pack("{s:s, s:i, s:O}", "region", c->region, "status",
                                            (int)c->status, "error", e != NULL ? e : json_null()));
        }
    }
    g->ctx = json_pack("{s:o, s:o}", "unreachable", unreachable(f), "errors", errors);
    /* Site labels, for a selector: the sites lists fetched with the instances. */
    for (size_t i = 0; i < f->n_calls; i++) {
        struct call *c = &f->calls[i];
        if (!c->reached || c->status != 200 || strcmp(c->tag, "instances") != 0) {
            continue;
        }
        size_t k;
        json_t *inst;
        json_array_foreach(json_object_get(c->resp, "instances"), k, inst)
        {
            const char *iname = json_string_value(json_object_get(inst, "name"));
            const char *site = json_string_value(json_object_get(inst, "site"));
            const char *id = json_string_value(json_object_get(inst, "id"));
            if (id == NULL || site == NULL ||
                (name != NULL && (iname == NULL || strcmp(name, iname) != 0))) {
                continue;
            }
            bool in_scope = sites == NULL && selector == NULL;
            size_t si;
            json_t *sv;
            json_array_foreach(sites, si, sv)
            {
                in_scope = in_scope || strcmp(json_string_value(sv), site) == 0;
            }
            if (selector != NULL) {
                /* The site's labels come from the same region's site list. */
                for (size_t j = 0; j < f->n_calls; j++) {
                    struct call *sc = &f->calls[j];
                    if (strcmp(sc->tag, "sites") != 0 || strcmp(sc->region, c->region) != 0) {
                        continue;
                    }
                    size_t q;
                    json_t *s;
                    json_array_foreach(json_object_get(sc->resp, "sites"), q, s)
                    {
                        const char *sn = json_string_value(json_object_get(s, "name"));
                        if (sn != NULL && strcmp(sn, site) == 0 &&
                            labels_match(json_object_get(s, "labels"), selector)) {
                            in_scope = true;
                        }
                    }
                }
            }
            if (!in_scope) {
                continue;
            }
            char path[160];
            if (strcmp(action, "delete") == 0) {
                snprintf(path, sizeof path, "/v1/instances/%s", id);
            } else {
                snprintf(path, sizeof path, "/v1/instances/%s/%s", id, action);
            }
            json_t *tag = json_pack("{s:s, s:s}", "id", id, "site", site);
            int rv = fan_add(g, c->region, strcmp(action, "delete") == 0 ? "DELETE" : "POST", path,
                             NULL, NULL, tag);
            json_decref(tag);
            if (rv != 0) {
                break;
            }
        }
    }
    fan_free(f);
    fan_run(g, bulk_act_done);
}

static void bulk(struct ap_http_req *req, struct ctl_node *n, const char *action)
{
    static const char *const allowed[] = {"tenant", "name", "sites", "selector", NULL};
    char errmsg[AP_ERRMSG_SIZE];
    if (!authed(n, req)) {
        return;
    }
    json_t *body = ap_http_req_json(req), *sel = NULL, *sites = NULL;
    const char *tenant = NULL, *name = NULL;
    int rv;
    if (body == NULL) {
        ap_http_reply_err(req, AP_EINVAL,
                          "a JSON body {\"tenant\",\"name\",\"sites\"|\"selector\"} is required");
        return;
    }
    if ((rv = ap_http_json_check_fields(body, allowed, errmsg)) != 0 ||
        (rv = ap_http_json_get_str(body, "tenant", true, AP_NAME_MAX - 1, &tenant, errmsg)) != 0 ||
        (rv = ap_http_json_get_str(body, "name", false, AP_NAME_MAX - 1, &name, errmsg)) != 0 ||
        (rv = ap_http_json_get_obj(body, "selector", false, &sel, errmsg)) != 0 ||
        (rv = ap_http_json_get_array(body, "sites", false, 256, &sites, errmsg)) != 0) {
        ap_http_reply_err(req, rv, errmsg);
        return;
    }
    if (!ap_token_name_valid(tenant)) {
        ap_http_reply_err(req, AP_EINVAL, "field 'tenant' must be a tenant name");
        return;
    }
    struct fan *f = fan_new(n, req);
    if (f == NULL) {
        return;
    }
    char path[160];
    snprintf(path, sizeof path, "/v1/instances?tenant=%s", tenant);
    f->ctx = json_pack("{s:O, s:s}", "body", body, "action", action);
    rv = fan_add(f, NULL, "GET", path, NULL, "instances", NULL);
    if (rv == 0 && sel != NULL) {
        rv = fan_add(f, NULL, "GET", "/v1/sites?stale=1", NULL, "sites", NULL);
    }
    if (rv != 0) {
        fan_free(f);
        ap_http_reply_err(req, rv, "could not list the regions");
        return;
    }
    fan_run(f, bulk_list_done);
}

static void h_bulk_stop(struct ap_http_req *req, void *data)
{
    bulk(req, data, "stop");
}

static void h_bulk_start(struct ap_http_req *req, void *data)
{
    bulk(req, data, "start");
}

static void h_bulk_delete(struct ap_http_req *req, void *data)
{
    bulk(req, data, "delete");
}

/* ---- quotas: the global view with every region's ---- */

static void quota_done(struct fan *f)
{
    json_t *regions = json_object(), *errors = json_array();
    for (size_t i = 0; i < f->n_calls; i++) {
        struct call *c = &f->calls[i];
        if (c->reached && c->status == 200 && c->resp != NULL) {
            json_object_set(regions, c->region, c->resp);
        } else if (c->reached) {
            /* A region that answered an error is not silently left out. */
            json_t *e = json_object_get(c->resp, "error");
            json_array_append_new(errors,
                                  json_pack("{s:s, s:i, s:O}", "region", c->region, "status",
                                            (int)c->status, "error", e != NULL ? e : json_null()));
        }
    }
    json_t *un = unreachable(f);
    json_t *body = json_incref(f->ctx);
    json_object_set_new(body, "regions", regions);
    json_object_set_new(body, "partial",
                        json_boolean(json_array_size(un) > 0 || json_array_size(errors) > 0));
    json_object_set_new(body, "unreachable", un);
    if (json_array_size(errors) > 0) {
        json_object_set_new(body, "errors", errors);
    } else {
        json_decref(errors);
    }
    ap_http_reply_json(f->req, 200, body);
    fan_free(f);
}

static void h_quota_get(struct ap_http_req *req, void *data)
{
    struct ctl_node *n = data;
    const struct ap_claims *c = ap_authn_request(n->authn, req);
    if (c == NULL) {
        return;
    }
    const char *tenant = ap_http_req_param(req, "tenant");
    json_t *t;
    if (!ap_token_name_valid(tenant) || ccat_tenant_json(ap_rsm_store(n->rsm), tenant, &t) != 0) {
        ap_http_reply_err(req, AP_ENOTFOUND, "no tenant has this name");
        return;
    }
    if (!ap_authn_allow(req, c, AP_ACT_READ, tenant, NULL, NULL)) {
        json_decref(t);
        return;
    }
    struct fan *f = fan_new(n, req);
    if (f == NULL) {
        json_decref(t);
        return;
    }
    f->ctx = t;
    char path[128];
    snprintf(path, sizeof path, "/v1/quotas/%s", tenant);
    if (fan_add(f, NULL, "GET", path, NULL, NULL, NULL) != 0) {
        fan_free(f);
        ap_http_reply_err(req, AP_EIO, "could not list the regions");
        return;
    }
    fan_run(f, quota_done);
}

/* ---- placement explain: every region's dry run ---- */

static void explain_done(struct fan *f)
{
    json_t *regions = json_array();
    json_t *chosen = json_null();
    for (size_t i = 0; i < f->n_calls; i++) {
        struct call *c = &f->calls[i];
        if (!c->reached || c->resp == NULL) {
            continue;
        }
        json_t *r = json_deep_copy(c->resp);
        json_object_set_new(r, "region", json_string(c->region));
        json_object_set_new(r, "status", json_integer(c->status));
        const char *site = json_string_value(json_object_get(c->resp, "chosen"));
        if (json_is_null(chosen) && site != NULL) {
            chosen = json_pack("{s:s, s:s}", "region", c->region, "site", site);
        }
        json_array_append_new(regions, r);
    }
    json_t *un = unreachable(f);
    ap_http_reply_json(f->req, 200,
                       json_pack("{s:o, s:o, s:b, s:o}", "chosen", chosen, "regions", regions,
                                 "partial", json_array_size(un) > 0, "unreachable", un));
    fan_free(f);
}

static void h_explain(struct ap_http_req *req, void *data)
{
    struct ctl_node *n = data;
    json_t *body = ap_http_req_json(req);
    if (!authed(n, req)) {
        return;
    }
    if (body == NULL) {
        ap_http_reply_err(req, AP_EINVAL, "a JSON body describing the instance is required");
        return;
    }
    const char *region = json_string_value(json_object_get(body, "region"));
    json_t *copy = json_deep_copy(body);
    json_object_del(copy, "region");
    struct fan *f = fan_new(n, req);
    if (f == NULL || fan_add(f, region, "POST", "/v1/placements:explain", copy, NULL, NULL) != 0) {
        json_decref(copy);
        if (f != NULL) {
            fan_free(f);
            ap_http_reply_err(req, AP_EIO, "could not list the regions");
        }
        return;
    }
    json_decref(copy);
    fan_run(f, explain_done);
}

int fanout__register(struct ctl_node *n)
{
    static const struct {
        const char *method;
        const char *pattern;
        ap_http_handler h;
    } routes[] = {
        {"GET", "/v1/sites", h_sites_list},
        {"POST", "/v1/sites", h_site_create},
        {"GET", "/v1/sites/{name}", by_site},
        {"DELETE", "/v1/sites/{name}", by_site},
        {"POST", "/v1/sites/{name}/cordon", by_site},
        {"POST", "/v1/sites/{name}/uncordon", by_site},
        {"GET", "/v1/instances", h_instances_list},
        {"POST", "/v1/instances", h_instance_create},
        {"POST", "/v1/instances:stop", h_bulk_stop},
        {"POST", "/v1/instances:start", h_bulk_start},
        {"POST", "/v1/instances:delete", h_bulk_delete},
        {"GET", "/v1/instances/{id}", by_instance},
        {"DELETE", "/v1/instances/{id}", by_instance},
        {"POST", "/v1/instances/{id}/stop", by_instance},
        {"POST", "/v1/instances/{id}/start", by_instance},
        {"GET", "/v1/instances/{id}/logs", by_instance},
        {"GET", "/v1/quotas/{tenant}", h_quota_get},
        {"PUT", "/v1/quotas/{tenant}/reserves/{site}", by_site},
        {"POST", "/v1/placements:explain", h_explain},
    };
    for (size_t i = 0; i < AP_ARRAY_LEN(routes); i++) {
        int rv = ap_http_route(n->http, routes[i].method, routes[i].pattern, routes[i].h, n);
        if (rv != 0) {
            return rv;
        }
    }
    return 0;
}
