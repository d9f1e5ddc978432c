/* rsm_http: forwarding to the leader, writes as proposals, linearizable reads and /v1/cluster for
 * any replicated state machine (docs/api.md: followers answer as if the leader were asked). */
#include "ap/rsm_http.h"

#include "ap/base.h"
#include "ap/conn.h"
#include "ap/err.h"
#include "ap/httpc.h"
#include "ap/log.h"
#include "ap/metrics.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ap_rsm_http {
    struct ap_rsm_http_config cfg;
    bool (*guard)(struct ap_http_req *req, bool write, void *data);
    void *guard_data;
};

int ap_rsm_http_new(struct ap_rsm_http **out, const struct ap_rsm_http_config *cfg)
{
    struct ap_rsm_http *h = ap_calloc(1, sizeof *h);
    if (h == NULL) {
        return AP_ENOMEM;
    }
    h->cfg = *cfg;
    if (h->cfg.forward_timeout_ms == 0) {
        h->cfg.forward_timeout_ms = 10000;
    }
    *out = h;
    return 0;
}

void ap_rsm_http_free(struct ap_rsm_http *h)
{
    ap_free(h);
}

/* ---- forwarding ---- */

struct forward {
    struct ap_http_req *req;
    uint64_t leader_id;
    char leader_http[64];
};

json_t *ap_rsm_http_leader_json(struct ap_rsm_http *h)
{
    struct ap_rsm_member l;
    if (ap_rsm_leader(h->cfg.rsm, &l) != 0) {
        return json_null();
    }
    return json_pack("{s:I, s:s}", "id", (json_int_t)l.id, "http", l.http);
}

void ap_rsm_http_reply_no_leader(struct ap_rsm_http *h, struct ap_http_req *req, const char *why)
{
    char msg[160];
    snprintf(msg, sizeof msg, "%s %s: %s; retry shortly", h->cfg.group_key, h->cfg.group_name, why);
    ap_http_reply_error(req, 503, "no_leader", msg,
                        json_pack("{s:o}", "leader", ap_rsm_http_leader_json(h)));
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

void ap_rsm_http_forward(struct ap_rsm_http *h, struct ap_http_req *req)
{
    struct ap_rsm_member leader;
    if (ap_http_req_header(req, AP_RSM_HTTP_FORWARDED) != NULL) {
        /* Already forwarded once: our view of the leader is stale; let the client retry. */
        ap_rsm_http_reply_no_leader(h, req, "this node is not the leader any more");
        return;
    }
    if (ap_rsm_leader(h->cfg.rsm, &leader) != 0 || leader.id == h->cfg.id ||
        leader.http[0] == '\0') {
        ap_rsm_http_reply_no_leader(h, req, "no leader is known");
        return;
    }
    struct forward *f = ap_calloc(1, sizeof *f);
    if (f == NULL) {
        ap_http_reply_err(req, AP_ENOMEM, "out of memory");
        return;
    }
    f->req = req;
    f->leader_id = leader.id;
    ap_strlcpy(f->leader_http, leader.http, sizeof f->leader_http);

    char url[512], fwd_hdr[64], auth_hdr[AP_HTTP_MAX_AUTH_HEADER + 32], query[256];
    const char *headers[4];
    size_t nh = 0, body_len = 0;
    const uint8_t *body = ap_http_req_body(req, &body_len);
    /* "stale" is never forwarded: a follower answers stale reads itself. */
    ap_http_req_query_string(req, h->cfg.query_keys, query, sizeof query);
    snprintf(url, sizeof url, "http://%s%s%s", leader.http, ap_http_req_path(req), query);
    snprintf(fwd_hdr, sizeof fwd_hdr, AP_RSM_HTTP_FORWARDED ": %" PRIu64, h->cfg.id);
    headers[nh++] = fwd_hdr;
    if (body_len > 0) {
        headers[nh++] = "Content-Type: application/json";
    }
    const char *auth = ap_http_req_header(req, "Authorization");
    if (auth != NULL && strlen(auth) <= AP_HTTP_MAX_AUTH_HEADER) {
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
        .timeout_ms = h->cfg.forward_timeout_ms,
        .source_ip = h->cfg.ip,
    };
    if (h->cfg.m_forwarded != NULL) {
        ap_metric_inc(h->cfg.m_forwarded);
    }
    int rv = ap_httpc_start(h->cfg.loop, &hr, forward_done, f);
    if (rv != 0) {
        ap_free(f);
        ap_http_reply_err(req, rv, "could not forward the request to the leader");
    }
}

/* ---- writes: propose on the leader, forward elsewhere ---- */

struct write_ctx {
    struct ap_http_req *req;
    ap_rsm_http_result_fn done;
    void *data;
};

static void write_done(void *data, struct ap_rsm_result *res)
{
    struct write_ctx *w = data;
    w->done(w->data, w->req, res);
    ap_free(w);
}

int ap_rsm_http_propose_cb(struct ap_rsm_http *h, struct ap_http_req *req, uint8_t *cmd, size_t len,
                           ap_rsm_http_result_fn done, void *data)
{
    struct write_ctx *w = ap_calloc(1, sizeof *w);
    if (w == NULL) {
        ap_free(cmd);
        ap_http_reply_err(req, AP_ENOMEM, "out of memory");
        return AP_ENOMEM;
    }
    w->req = req;
    w->done = done;
    w->data = data;
    int rv = ap_rsm_propose(h->cfg.rsm, cmd, len, write_done, w);
    ap_free(cmd);
    if (rv == AP_ENOTLEADER) {
        ap_free(w);
        ap_rsm_http_forward(h, req);
    } else if (rv != 0) {
        ap_free(w);
        ap_http_reply_err(req, rv, "could not propose the write");
    }
    return rv;
}

struct plain_ctx {
    unsigned ok_status;
    const char *add_key;
    const char *add_value;
};

static void plain_done(void *data, struct ap_http_req *req, struct ap_rsm_result *res)
{
    struct plain_ctx *p = data;
    if (res->status != 0) {
        ap_http_reply_err(req, res->status, res->message);
    } else {
        json_t *v = res->value;
        res->value = NULL;
        if (v != NULL && p->add_key != NULL && json_is_object(v)) {
            json_object_set_new(v, p->add_key, json_string(p->add_value));
        }
        ap_http_reply_json(req, p->ok_status, v != NULL ? v : json_object());
    }
    ap_free(p);
}

void ap_rsm_http_propose(struct ap_rsm_http *h, struct ap_http_req *req, uint8_t *cmd, size_t len,
                         unsigned ok_status, const char *add_key, const char *add_value)
{
    struct plain_ctx *p = ap_calloc(1, sizeof *p);
    if (p == NULL) {
        ap_free(cmd);
        ap_http_reply_err(req, AP_ENOMEM, "out of memory");
        return;
    }
    p->ok_status = ok_status;
    p->add_key = add_key;
    p->add_value = add_value;
    if (ap_rsm_http_propose_cb(h, req, cmd, len, plain_done, p) != 0) {
        ap_free(p);
    }
}

/* ---- reads: linearizable on the leader (barrier), forwarded from followers, or ?stale=1 ---- */

struct read_ctx {
    struct ap_http_req *req;
    ap_rsm_http_read_fn fn;
    void *data;
};

static void read_barrier_done(void *data, int status)
{
    struct read_ctx *c = data;
    if (status != 0) {
        ap_http_reply_err(c->req, status, "could not confirm leadership for a linearizable read");
    } else {
        c->fn(c->data, c->req);
    }
    ap_free(c);
}

bool ap_rsm_http_is_stale(struct ap_http_req *req)
{
    const char *s = ap_http_req_query(req, "stale");
    return s != NULL && (strcmp(s, "1") == 0 || strcmp(s, "true") == 0);
}

void ap_rsm_http_read(struct ap_rsm_http *h, struct ap_http_req *req, ap_rsm_http_read_fn fn,
                      void *data)
{
    if (ap_rsm_http_is_stale(req)) {
        fn(data, req);
        return;
    }
    struct read_ctx *c = ap_calloc(1, sizeof *c);
    if (c == NULL) {
        ap_http_reply_err(req, AP_ENOMEM, "out of memory");
        return;
    }
    c->req = req;
    c->fn = fn;
    c->data = data;
    int rv = ap_rsm_barrier(h->cfg.rsm, read_barrier_done, c);
    if (rv == AP_ENOTLEADER) {
        ap_free(c);
        ap_rsm_http_forward(h, req);
    } else if (rv != 0) {
        ap_free(c);
        ap_http_reply_err(req, rv, "could not start a linearizable read");
    }
}

/* ---- /v1/cluster ---- */

static bool guarded(struct ap_rsm_http *h, struct ap_http_req *req, bool write)
{
    return h->guard == NULL || h->guard(req, write, h->guard_data);
}

static void h_cluster(struct ap_http_req *req, void *data)
{
    struct ap_rsm_http *h = data;
    struct ap_rsm_member_info *ms;
    size_t count;
    struct ap_rsm_member leader = {0};
    if (!guarded(h, req, false)) {
        return;
    }
    if (ap_rsm_members(h->cfg.rsm, &ms, &count) != 0) {
        ap_http_reply_err(req, AP_ENOMEM, "out of memory");
        return;
    }
    ap_rsm_leader(h->cfg.rsm, &leader);
    json_t *arr = json_array();
    for (size_t i = 0; i < count; i++) {
        json_array_append_new(arr,
                              json_pack("{s:I, s:s, s:s, s:s, s:b}", "id", (json_int_t)ms[i].m.id,
                                        "raft", ms[i].m.raft, "http", ms[i].m.http, "role",
                                        ms[i].role, "leader", ms[i].m.id == leader.id));
    }
    ap_free(ms);
    struct ap_rsm *r = h->cfg.rsm;
    json_t *body = json_pack(
        "{s:s, s:I, s:o, s:o, s:I, s:I, s:I, s:I}", h->cfg.group_key, h->cfg.group_name, "node",
        (json_int_t)h->cfg.id, "members", arr, "leader", ap_rsm_http_leader_json(h), "term",
        (json_int_t)ap_rsm_term(r), "commit_index", (json_int_t)ap_rsm_commit_index(r),
        "applied_index", (json_int_t)ap_rsm_applied_index(r), "last_index",
        (json_int_t)ap_rsm_last_index(r));
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
    char ip[64];
    uint16_t port;
    return ap_conn_split_addr(s, ip, sizeof ip, &port) == 0;
}

static void h_member_add(struct ap_http_req *req, void *data)
{
    struct ap_rsm_http *h = data;
    static const char *const allowed[] = {"id", "raft", "http", NULL};
    char errmsg[AP_ERRMSG_SIZE];
    if (!guarded(h, req, true)) {
        return;
    }
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
    rv = ap_rsm_add_member(h->cfg.rsm, &m, change_done, c);
    if (rv != 0) {
        json_decref(c->member);
        ap_free(c);
        if (rv == AP_ENOTLEADER) {
            ap_rsm_http_forward(h, req);
        } else {
            ap_http_reply_err(req, rv,
                              rv == AP_EEXIST ? "a member with this id already exists"
                                              : "could not add the member");
        }
    }
}

static void h_member_remove(struct ap_http_req *req, void *data)
{
    struct ap_rsm_http *h = data;
    if (!guarded(h, req, true)) {
        return;
    }
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
    int rv = ap_rsm_remove_member(h->cfg.rsm, id, change_done, c);
    if (rv != 0) {
        json_decref(c->member);
        ap_free(c);
        if (rv == AP_ENOTLEADER) {
            ap_rsm_http_forward(h, req);
        } else {
            char msg[96];
            snprintf(msg, sizeof msg, "member %llu %s", id,
                     rv == AP_ENOTFOUND ? "is not in the cluster" : "could not be removed");
            ap_http_reply_err(req, rv, msg);
        }
    }
}

int ap_rsm_http_route_cluster(struct ap_rsm_http *h, struct ap_http_server *s,
                              bool (*guard)(struct ap_http_req *req, bool write, void *data),
                              void *guard_data)
{
    h->guard = guard;
    h->guard_data = guard_data;
    int rv = ap_http_route(s, "GET", "/v1/cluster", h_cluster, h);
    if (rv == 0) {
        rv = ap_http_route(s, "POST", "/v1/cluster/members", h_member_add, h);
    }
    if (rv == 0) {
        rv = ap_http_route(s, "DELETE", "/v1/cluster/members/{id}", h_member_remove, h);
    }
    return rv;
}
