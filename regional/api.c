/* api: the regional node's HTTP API (/v1 health, cluster, members, sites, instances, quotas) and
 * /metrics. */
#include "node_internal.h"

#include "ap/base.h"
#include "ap/err.h"
#include "ap/hlc.h"
#include "ap/httpc.h"
#include "ap/instjson.h"
#include "ap/log.h"
#include "ap/uuid.h"
#include "catalog.h"
#include "site.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FORWARDED_HEADER "X-Archipel-Forwarded"

/* ---- forwarding to the leader (docs/api.md: followers answer as if the leader were asked) ---- */

struct forward {
    struct regional_node *n;
    struct ap_http_req *req;
    uint64_t leader_id;
    char leader_http[64];
};

static json_t *leader_json(struct regional_node *n)
{
    struct ap_rsm_member l;
    if (ap_rsm_leader(n->rsm, &l) != 0) {
        return json_null();
    }
    return json_pack("{s:I, s:s}", "id", (json_int_t)l.id, "http", l.http);
}

static void reply_no_leader(struct regional_node *n, struct ap_http_req *req, const char *why)
{
    char msg[160];
    snprintf(msg, sizeof msg, "region %s: %s; retry shortly", n->cfg.region, why);
    ap_http_reply_error(req, 503, "no_leader", msg, json_pack("{s:o}", "leader", leader_json(n)));
}

static void forward_done(int err, struct ap_httpc_resp *resp, const char *errmsg, void *data)
{
    struct forward *f = data;
    if (err != 0) {
        char msg[AP_ERRMSG_SIZE + 96];
        snprintf(msg, sizeof msg, "forward to leader %" PRIu64 " at %s: %s", f->leader_id,
                 f->leader_http, errmsg != NULL ? errmsg : ap_strerror(err));
        ap_http_reply_error(f->req, 503, "leader_unreachable", msg, NULL);
    } else {
        ap_http_reply_raw(f->req, resp->status,
                          resp->content_type != NULL ? resp->content_type : "application/json",
                          resp->body != NULL ? resp->body : "", resp->body_len);
    }
    ap_free(f);
}

/*
 * The query arguments the leader needs, percent-encoded ("?site=a&tenant=b" or
 * ""). ap_http gives decoded arguments only, so the known ones are rebuilt;
 * "stale" is never forwarded (a follower answers stale reads itself).
 */
static void forwarded_query(struct ap_http_req *req, char *out, size_t n)
{
    static const char *const keys[] = {"site", "tenant", "deleted"};
    static const char hex[] = "0123456789ABCDEF";
    size_t k = 0;
    out[0] = '\0';
    for (size_t i = 0; i < AP_ARRAY_LEN(keys); i++) {
        const char *v = ap_http_req_query(req, keys[i]);
        if (v == NULL) {
            continue;
        }
        size_t need = 1 + strlen(keys[i]) + 1 + 3 * strlen(v) + 1;
        if (k + need > n) {
            break; /* Longer than any valid value: the leader answers without it. */
        }
        k += (size_t)snprintf(out + k, n - k, "%c%s=", k == 0 ? '?' : '&', keys[i]);
        for (const unsigned char *p = (const unsigned char *)v; *p != '\0'; p++) {
            if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
                *p == '-' || *p == '_' || *p == '.' || *p == '~') {
                out[k++] = (char)*p;
            } else {
                out[k++] = '%';
                out[k++] = hex[*p >> 4];
                out[k++] = hex[*p & 15];
            }
        }
        out[k] = '\0';
    }
}

/* Send req to the leader and relay its answer. */
static void forward(struct regional_node *n, struct ap_http_req *req)
{
    struct ap_rsm_member leader;
    if (ap_http_req_header(req, FORWARDED_HEADER) != NULL) {
        /* Already forwarded once: our view of the leader is stale; let the client retry. */
        reply_no_leader(n, req, "this node is not the leader any more");
        return;
    }
    if (ap_rsm_leader(n->rsm, &leader) != 0 || leader.id == n->cfg.id || leader.http[0] == '\0') {
        reply_no_leader(n, req, "no leader is known");
        return;
    }
    struct forward *f = ap_calloc(1, sizeof *f);
    if (f == NULL) {
        ap_http_reply_err(req, AP_ENOMEM, "out of memory");
        return;
    }
    f->n = n;
    f->req = req;
    f->leader_id = leader.id;
    ap_strlcpy(f->leader_http, leader.http, sizeof f->leader_http);

    char url[512], fwd_hdr[64], auth_hdr[1024];
    const char *headers[4];
    size_t nh = 0, body_len = 0;
    const uint8_t *body = ap_http_req_body(req, &body_len);
    char query[256];
    forwarded_query(req, query, sizeof query);
    snprintf(url, sizeof url, "http://%s%s%s", leader.http, ap_http_req_path(req), query);
    snprintf(fwd_hdr, sizeof fwd_hdr, FORWARDED_HEADER ": %" PRIu64, n->cfg.id);
    headers[nh++] = fwd_hdr;
    if (body_len > 0) {
        headers[nh++] = "Content-Type: application/json";
    }
    const char *auth = ap_http_req_header(req, "Authorization");
    if (auth != NULL && strlen(auth) < sizeof auth_hdr - 32) {
        snprintf(auth_hdr, sizeof auth_hdr, "Authorization: %s", auth);
        headers[nh++] = auth_hdr;
    }
    headers[nh] = NULL;
    struct ap_httpc_req hr = {
        .method = ap_http_req_method(req),
        .url = url,
        .body = body,
        .body_len = body_len,
        .headers = headers,
        .timeout_ms = n->cfg.forward_timeout_ms,
        .source_ip = n->cfg.ip,
    };
    ap_metric_inc(n->m_forwarded);
    int rv = ap_httpc_start(n->loop, &hr, forward_done, f);
    if (rv != 0) {
        ap_free(f);
        ap_http_reply_err(req, rv, "could not forward the request to the leader");
    }
}

/* ---- writes: propose on the leader, forward elsewhere ---- */

struct write_ctx {
    struct ap_http_req *req;
    unsigned ok_status;
    const char *region; /* Added to an object result when not NULL (quota views). */
};

static void write_done(void *data, struct ap_rsm_result *res)
{
    struct write_ctx *w = data;
    if (res->status != 0) {
        ap_http_reply_err(w->req, res->status, res->message);
    } else {
        json_t *v = res->value;
        res->value = NULL;
        if (v != NULL && w->region != NULL) {
            json_object_set_new(v, "region", json_string(w->region));
        }
        ap_http_reply_json(w->req, w->ok_status, v != NULL ? v : json_object());
    }
    ap_free(w);
}

/* Propose cmd (taken: freed here) for req, answering ok_status with the result. */
static void propose_ex(struct regional_node *n, struct ap_http_req *req, uint8_t *cmd, size_t len,
                       unsigned ok_status, bool add_region)
{
    struct write_ctx *w = ap_calloc(1, sizeof *w);
    if (w == NULL) {
        ap_free(cmd);
        ap_http_reply_err(req, AP_ENOMEM, "out of memory");
        return;
    }
    w->req = req;
    w->ok_status = ok_status;
    w->region = add_region ? n->cfg.region : NULL;
    int rv = ap_rsm_propose(n->rsm, cmd, len, write_done, w);
    ap_free(cmd);
    if (rv == AP_ENOTLEADER) {
        ap_free(w);
        forward(n, req);
    } else if (rv != 0) {
        ap_free(w);
        ap_http_reply_err(req, rv, "could not propose the write");
    }
}

static void propose_or_forward(struct regional_node *n, struct ap_http_req *req, uint8_t *cmd,
                               size_t len, unsigned ok_status)
{
    propose_ex(n, req, cmd, len, ok_status, false);
}

/* ---- reads: linearizable on the leader (barrier), forwarded from followers, or ?stale=1 ---- */

typedef void (*read_fn)(struct regional_node *n, struct ap_http_req *req);

struct read_ctx {
    struct regional_node *n;
    struct ap_http_req *req;
    read_fn fn;
};

static void read_barrier_done(void *data, int status)
{
    struct read_ctx *c = data;
    if (status != 0) {
        ap_http_reply_err(c->req, status, "could not confirm leadership for a linearizable read");
    } else {
        c->fn(c->n, c->req);
    }
    ap_free(c);
}

static bool is_stale(struct ap_http_req *req)
{
    const char *s = ap_http_req_query(req, "stale");
    return s != NULL && (strcmp(s, "1") == 0 || strcmp(s, "true") == 0);
}

static void read_linearizable(struct regional_node *n, struct ap_http_req *req, read_fn fn)
{
    if (is_stale(req)) {
        fn(n, req);
        return;
    }
    struct read_ctx *c = ap_calloc(1, sizeof *c);
    if (c == NULL) {
        ap_http_reply_err(req, AP_ENOMEM, "out of memory");
        return;
    }
    c->n = n;
    c->req = req;
    c->fn = fn;
    int rv = ap_rsm_barrier(n->rsm, read_barrier_done, c);
    if (rv == AP_ENOTLEADER) {
        ap_free(c);
        forward(n, req);
    } else if (rv != 0) {
        ap_free(c);
        ap_http_reply_err(req, rv, "could not start a linearizable read");
    }
}

/* ---- handlers ---- */

static void h_health(struct ap_http_req *req, void *data)
{
    struct regional_node *n = data;
    json_t *body = json_pack(
        "{s:s, s:s, s:I, s:s, s:o, s:I, s:I, s:I}", "tier", "regional", "region", n->cfg.region,
        "node", (json_int_t)n->cfg.id, "role", ap_rsm_role_name(ap_rsm_role(n->rsm)), "leader",
        leader_json(n), "applied_index", (json_int_t)ap_rsm_applied_index(n->rsm), "commit_index",
        (json_int_t)ap_rsm_commit_index(n->rsm), "term", (json_int_t)ap_rsm_term(n->rsm));
    ap_http_reply_json(req, 200, body);
}

static void h_cluster(struct ap_http_req *req, void *data)
{
    struct regional_node *n = data;
    struct ap_rsm_member_info *ms;
    size_t count;
    struct ap_rsm_member leader = {0};
    if (ap_rsm_members(n->rsm, &ms, &count) != 0) {
        ap_http_reply_err(req, AP_ENOMEM, "out of memory");
        return;
    }
    ap_rsm_leader(n->rsm, &leader);
    json_t *arr = json_array();
    for (size_t i = 0; i < count; i++) {
        json_array_append_new(arr,
                              json_pack("{s:I, s:s, s:s, s:s, s:b}", "id", (json_int_t)ms[i].m.id,
                                        "raft", ms[i].m.raft, "http", ms[i].m.http, "role",
                                        ms[i].role, "leader", ms[i].m.id == leader.id));
    }
    ap_free(ms);
    json_t *body = json_pack("{s:s, s:I, s:o, s:o, s:I, s:I, s:I, s:I}", "region", n->cfg.region,
                             "node", (json_int_t)n->cfg.id, "members", arr, "leader",
                             leader_json(n), "term", (json_int_t)ap_rsm_term(n->rsm),
                             "commit_index", (json_int_t)ap_rsm_commit_index(n->rsm),
                             "applied_index", (json_int_t)ap_rsm_applied_index(n->rsm),
                             "last_index", (json_int_t)ap_rsm_last_index(n->rsm));
    ap_http_reply_json(req, 200, body);
}

struct change_ctx {
    struct ap_http_req *req;
    json_t *member;
    unsigned ok_status;
};

static void change_done(void *data, int status, const char *msg)
{
    struct change_ctx *c = data;
    if (status != 0) {
        json_decref(c->member);
        ap_http_reply_err(c->req, status, msg);
    } else {
        ap_http_reply_json(c->req, c->ok_status, c->member);
    }
    ap_free(c);
}

static int valid_hostport(const char *s)
{
    const char *colon = strrchr(s, ':');
    if (colon == NULL || colon == s || strlen(s) >= 64) {
        return 0;
    }
    char *end;
    long port = strtol(colon + 1, &end, 10);
    return *end == '\0' && port > 0 && port < 65536;
}

static void h_member_add(struct ap_http_req *req, void *data)
{
    struct regional_node *n = data;
    static const char *const allowed[] = {"id", "raft", "http", NULL};
    char errmsg[AP_ERRMSG_SIZE];
    json_t *body = ap_http_req_json(req);
    int64_t id = 0;
    const char *raft_addr = NULL, *http = NULL;
    int rv;
    if (body == NULL) {
        ap_http_reply_err(req, AP_EINVAL, "a JSON body {\"id\",\"raft\",\"http\"} is required");
        return;
    }
    if ((rv = ap_http_json_check_fields(body, allowed, errmsg)) != 0 ||
        (rv = ap_http_json_get_int(body, "id", true, 1, INT64_MAX, &id, errmsg)) != 0 ||
        (rv = ap_http_json_get_str(body, "raft", true, 63, &raft_addr, errmsg)) != 0 ||
        (rv = ap_http_json_get_str(body, "http", true, 63, &http, errmsg)) != 0) {
        ap_http_reply_err(req, rv, errmsg);
        return;
    }
    if (!valid_hostport(raft_addr) || !valid_hostport(http)) {
        ap_http_reply_err(req, AP_EINVAL,
                          !valid_hostport(raft_addr) ? "field 'raft' must be ip:port"
                                                     : "field 'http' must be ip:port");
        return;
    }
    struct ap_rsm_member m = {.id = (uint64_t)id};
    ap_strlcpy(m.raft, raft_addr, sizeof m.raft);
    ap_strlcpy(m.http, http, sizeof m.http);
    struct change_ctx *c = ap_calloc(1, sizeof *c);
    if (c == NULL) {
        ap_http_reply_err(req, AP_ENOMEM, "out of memory");
        return;
    }
    c->req = req;
    c->ok_status = 201;
    c->member = json_pack("{s:I, s:s, s:s, s:s}", "id", (json_int_t)id, "raft", m.raft, "http",
                          m.http, "role", "voter");
    rv = ap_rsm_add_member(n->rsm, &m, change_done, c);
    if (rv != 0) {
        json_decref(c->member);
        ap_free(c);
        if (rv == AP_ENOTLEADER) {
            forward(n, req);
        } else {
            ap_http_reply_err(req, rv,
                              rv == AP_EEXIST ? "a member with this id already exists"
                                              : "could not add the member");
        }
    }
}

static void h_member_remove(struct ap_http_req *req, void *data)
{
    struct regional_node *n = data;
    const char *ids = ap_http_req_param(req, "id");
    char *end;
    /* strtoull accepts "-1" (as 2^64 - 1) and leading spaces: digits only. */
    unsigned long long id = ids[0] >= '0' && ids[0] <= '9' ? strtoull(ids, &end, 10) : 0;
    if (id == 0 || *end != '\0') {
        ap_http_reply_err(req, AP_EINVAL, "member id must be a positive integer");
        return;
    }
    struct change_ctx *c = ap_calloc(1, sizeof *c);
    if (c == NULL) {
        ap_http_reply_err(req, AP_ENOMEM, "out of memory");
        return;
    }
    c->req = req;
    c->ok_status = 200;
    c->member = json_pack("{s:I, s:s}", "id", (json_int_t)id, "status", "removed");
    int rv = ap_rsm_remove_member(n->rsm, id, change_done, c);
    if (rv != 0) {
        json_decref(c->member);
        ap_free(c);
        if (rv == AP_ENOTLEADER) {
            forward(n, req);
        } else {
            char msg[96];
            snprintf(msg, sizeof msg, "member %llu %s", id,
                     rv == AP_ENOTFOUND ? "is not in the cluster" : "could not be removed");
            ap_http_reply_err(req, rv, msg);
        }
    }
}

static void h_site_create(struct ap_http_req *req, void *data)
{
    struct regional_node *n = data;
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

static void read_sites(struct regional_node *n, struct ap_http_req *req)
{
    json_t *sites;
    int rv = catalog__sites_list(ap_rsm_store(n->rsm), &sites);
    if (rv != 0) {
        ap_http_reply_err(req, rv, "could not read the catalog");
        return;
    }
    ap_http_reply_json(req, 200, json_pack("{s:o, s:s}", "sites", sites, "region", n->cfg.region));
}

static void read_site(struct regional_node *n, struct ap_http_req *req)
{
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
    char tenant[AP_INSTREC_NAME_SIZE];
    int64_t need[QUOTA_RES_N];
};

static void create_done(void *data, struct ap_rsm_result *res)
{
    struct create_ctx *c = data;
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
    if (ap_rsm_role(n->rsm) != AP_RSM_LEADER) {
        /* The leader names and stamps the instance. */
        forward(n, req);
        return;
    }
    int rv = ap_instjson_parse_create(ap_http_req_json(req), NULL, &rec, errmsg);
    if (rv != 0) {
        ap_http_reply_err(req, rv, errmsg);
        return;
    }
    uint64_t now = ap_hlc_wall_realtime(NULL);
    rv = ap_uuid_gen_next(&n->uuids, now, rec.id);
    if (rv != 0) {
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
        ap_instrec_clear(&rec);
        ap_http_reply_err(req, rv != 0 ? rv : AP_ENOMEM, "could not encode the command");
        return;
    }
    c->n = n;
    c->req = req;
    ap_strlcpy(c->tenant, rec.tenant, sizeof c->tenant);
    c->need[QUOTA_INSTANCES] = 1;
    c->need[QUOTA_CPU] = rec.cpu_millis;
    c->need[QUOTA_MEMORY] = rec.memory_mb;
    ap_instrec_clear(&rec);
    rv = ap_rsm_propose(n->rsm, cmd, len, create_done, c);
    ap_free(cmd);
    if (rv == AP_ENOTLEADER) {
        ap_free(c);
        forward(n, req);
    } else if (rv != 0) {
        ap_free(c);
        ap_http_reply_err(req, rv, "could not propose the write");
    }
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

static void read_instances(struct regional_node *n, struct ap_http_req *req)
{
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
    ap_http_reply_json(req, 200,
                       json_pack("{s:o, s:s}", "instances", arr, "region", n->cfg.region));
}

static void read_instance(struct regional_node *n, struct ap_http_req *req)
{
    struct ap_instrec r;
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

static void read_quota(struct regional_node *n, struct ap_http_req *req)
{
    json_t *v;
    const char *tenant = quota_tenant(req);
    if (tenant == NULL) {
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
        {"GET", "/v1/cluster", h_cluster},
        {"POST", "/v1/cluster/members", h_member_add},
        {"DELETE", "/v1/cluster/members/{id}", h_member_remove},
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
    };
    for (size_t i = 0; i < AP_ARRAY_LEN(routes); i++) {
        int rv = ap_http_route(n->http, routes[i].method, routes[i].pattern, routes[i].h, n);
        if (rv != 0) {
            return rv;
        }
    }
    return 0;
}
