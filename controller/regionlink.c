/* regionlink: the controller's end of the region links (docs/controller.md "Region link").
 * A region's leader dials any controller node; followers redirect it to the leader, which
 * records the region's endpoints and pushes STATE whenever its catalog changes. */
#include "regionlink.h"

#include "ap/base.h"
#include "ap/conn.h"
#include "ap/err.h"
#include "ap/hlc.h"
#include "ap/log.h"
#include "ap/mp.h"
#include "ap/token.h"
#include "ap/wire.h"
#include "catalog.h"
#include "node_internal.h"
#include "split.h"

#include <msgpack.h>
#include <stdio.h>
#include <string.h>

#define MAX_SESSIONS    CCAT_MAX_REGIONS
#define MAX_HELLO_BYTES (16u * 1024u)
#define FLUSH_MS        100

struct session {
    struct regionlink *owner;
    struct ap_conn *conn;
    char region[AP_NAME_MAX];
    bool hello;
    uint64_t sent_version; /* Applied index of the last STATE sent. */
    uint64_t last_ms;
};

struct regionlink {
    struct ctl_node *n;
    struct ap_conn_listener *listener;
    uint16_t port;
    uv_timer_t timer;
    struct session *sessions[MAX_SESSIONS];
    unsigned n_sessions;
    bool stopping;
    int closing;
    void (*stop_cb)(void *data);
    void *stop_data;
};

static void maybe_done(struct regionlink *l);

static int send_body(struct ap_conn *c, struct ctl_node *n, unsigned type, const uint8_t *body,
                     size_t len)
{
    struct ap_wire_msg m;
    memset(&m, 0, sizeof m);
    m.version = AP_WIRE_VERSION;
    m.type = (uint16_t)type;
    snprintf(m.sender, sizeof m.sender, "controller/%llu", (unsigned long long)n->cfg.id);
    m.body = body;
    m.body_len = len;
    return ap_conn_send(c, &m);
}

/* Send a one-string-field body ({"link": ...} or {"code","message"}). */
static void send_fields(struct ap_conn *c, struct ctl_node *n, unsigned type, const char *k1,
                        const char *v1, const char *k2, const char *v2)
{
    struct ap_mp_writer w;
    uint8_t *body;
    size_t len;
    ap_mp_writer_init(&w);
    ap_mp_write_map(&w, k2 != NULL ? 2 : 1);
    ap_mp_write_str(&w, k1);
    ap_mp_write_str(&w, v1);
    if (k2 != NULL) {
        ap_mp_write_str(&w, k2);
        ap_mp_write_str(&w, v2);
    }
    if (ap_mp_writer_finish(&w, &body, &len) == 0) {
        send_body(c, n, type, body, len);
        ap_free(body);
    }
}

bool regionlink__connected(struct regionlink *l, const char *region)
{
    for (unsigned i = 0; i < l->n_sessions; i++) {
        if (l->sessions[i]->hello && strcmp(l->sessions[i]->region, region) == 0) {
            return true;
        }
    }
    return false;
}

static void send_state(struct regionlink *l, struct session *ss)
{
    uint64_t version = ap_rsm_applied_index(l->n->rsm);
    uint8_t *body;
    size_t len;
    if (ccat_region_state(ap_rsm_store(l->n->rsm), ss->region, version, &body, &len) != 0) {
        return;
    }
    if (send_body(ss->conn, l->n, AP_WIRE_STATE, body, len) == 0) {
        ss->sent_version = version;
    }
    ap_free(body);
}

/* After a new region registered: re-split every tenant's quota over all regions. */
static void resplit_done(void *data, struct ap_rsm_result *res)
{
    AP_UNUSED(data);
    if (res->status != 0) {
        AP_LOG(AP_LOG_WARN, "quota_resplit_failed err=\"%s\"", res->message);
    }
}

static void resplit_all(struct regionlink *l)
{
    struct ap_store *st = ap_rsm_store(l->n->rsm);
    json_t *tenants;
    if (ccat_tenants_json(st, &tenants) != 0) {
        return;
    }
    size_t i;
    json_t *t;
    json_array_foreach(tenants, i, t)
    {
        const char *name = json_string_value(json_object_get(t, "name"));
        struct ccat_amounts q;
        uint8_t *cmd;
        size_t len;
        if (ccat_tenant_quota(st, name, &q) == 0 &&
            split__encode_tenant(st, name, false, &q, &cmd, &len) == 0) {
            ap_rsm_propose(l->n->rsm, cmd, len, resplit_done, NULL);
            ap_free(cmd);
        }
    }
    json_decref(tenants);
}

struct hello_ctx {
    struct regionlink *l;
    bool is_new;
};

static void hello_done(void *data, struct ap_rsm_result *res)
{
    struct hello_ctx *h = data;
    if (res->status == 0 && h->is_new && !h->l->stopping) {
        resplit_all(h->l);
    }
    ap_free(h);
}

static void on_hello(struct regionlink *l, struct session *ss, const msgpack_object *body)
{
    struct ctl_node *n = l->n;
    char errmsg[AP_ERRMSG_SIZE], region[AP_NAME_MAX];
    const msgpack_object *nodes;
    int rv = ap_mp_get_str(body, "region", region, sizeof region, true, errmsg);
    if (rv == 0) {
        rv = ap_mp_get_array(body, "nodes", &nodes, CCAT_MAX_REGION_NODES, true, errmsg);
    }
    if (rv == 0 && !ap_token_name_valid(region)) {
        rv = AP_EINVAL;
        ap_errmsg_set(errmsg, "region name '%s' is not a DNS label", region);
    }
    char node_buf[CCAT_MAX_REGION_NODES][64];
    const char *node_ptrs[CCAT_MAX_REGION_NODES];
    for (uint32_t i = 0; rv == 0 && i < nodes->via.array.size; i++) {
        rv = ap_mp_as_str(&nodes->via.array.ptr[i], "nodes[]", node_buf[i], sizeof node_buf[i],
                          errmsg);
        node_ptrs[i] = node_buf[i];
    }
    if (rv != 0) {
        send_fields(ss->conn, n, AP_WIRE_ERROR, "code", "protocol_error", "message", errmsg);
        ap_conn_close(ss->conn, NULL);
        return;
    }
    if (ap_rsm_role(n->rsm) != AP_RSM_LEADER) {
        struct ap_rsm_member leader;
        char link[80] = "";
        /* Every controller node serves the link on the same port. */
        if (ap_rsm_leader(n->rsm, &leader) == 0 && leader.http[0] != '\0') {
            char ip[64];
            ap_strlcpy(ip, leader.http, sizeof ip);
            char *colon = strrchr(ip, ':');
            if (colon != NULL) {
                *colon = '\0';
                snprintf(link, sizeof link, "%s:%u", ip, l->port);
            }
        }
        send_fields(ss->conn, n, AP_WIRE_REDIRECT, "link", link, NULL, NULL);
        ap_conn_close(ss->conn, NULL);
        return;
    }
    /* A second link of the same region replaces the first (its leader changed). */
    for (unsigned i = 0; i < l->n_sessions; i++) {
        struct session *o = l->sessions[i];
        if (o != ss && o->hello && strcmp(o->region, region) == 0) {
            o->hello = false;
            ap_conn_close(o->conn, NULL);
        }
    }
    ap_strlcpy(ss->region, region, sizeof ss->region);
    ss->hello = true;
    char known[64];
    size_t n_known = 0;
    bool is_new = ccat_region_nodes(ap_rsm_store(n->rsm), region, &known, 1, &n_known) ==
                  AP_ENOTFOUND;
    struct hello_ctx *h = ap_calloc(1, sizeof *h);
    uint8_t *cmd;
    size_t len;
    if (h != NULL && ccat_encode_region_hello(region, node_ptrs, nodes->via.array.size,
                                              ap_hlc_wall_realtime(NULL), &cmd, &len) == 0) {
        h->l = l;
        h->is_new = is_new;
        if (ap_rsm_propose(n->rsm, cmd, len, hello_done, h) != 0) {
            ap_free(h);
        }
        ap_free(cmd);
    } else {
        ap_free(h);
    }
    AP_LOG(AP_LOG_INFO, "region_linked region=%s peer=%s new=%s", region, ap_conn_peer(ss->conn),
           is_new ? "true" : "false");
    send_state(l, ss);
}

static void on_msg(struct ap_conn *c, const struct ap_wire_msg *m)
{
    struct session *ss = ap_conn_data(c);
    struct regionlink *l = ss->owner;
    char errmsg[AP_ERRMSG_SIZE];
    msgpack_unpacked up;
    ss->last_ms = uv_now(l->n->loop);
    if (ap_mp_unpack(m->body, m->body_len, MAX_HELLO_BYTES, &up, errmsg) != 0) {
        send_fields(c, l->n, AP_WIRE_ERROR, "code", "protocol_error", "message", errmsg);
        ap_conn_close(c, NULL);
        return;
    }
    switch (m->type) {
    case AP_WIRE_HELLO:
        on_hello(l, ss, &up.data);
        break;
    case AP_WIRE_HEARTBEAT:
        if (ss->hello) {
            send_body(c, l->n, AP_WIRE_HEARTBEAT, (const uint8_t *)"\x80", 1);
        }
        break;
    default:
        break; /* Newer peers may send more. */
    }
    msgpack_unpacked_destroy(&up);
}

static void on_close(struct ap_conn *c, int reason)
{
    struct session *ss = ap_conn_data(c);
    struct regionlink *l = ss->owner;
    if (ss->hello) {
        AP_LOG(AP_LOG_INFO, "region_unlinked region=%s reason=\"%s\"", ss->region,
               reason != 0 ? ap_strerror(reason) : "closed");
    }
    for (unsigned i = 0; i < l->n_sessions; i++) {
        if (l->sessions[i] == ss) {
            l->sessions[i] = l->sessions[--l->n_sessions];
            break;
        }
    }
    ap_free(ss);
    if (l->stopping) {
        maybe_done(l);
    }
}

static void on_accept(struct ap_conn_listener *listener, struct ap_conn *c)
{
    struct regionlink *l = ap_conn_listener_data(listener);
    struct session *ss = l->n_sessions < MAX_SESSIONS && !l->stopping ? ap_calloc(1, sizeof *ss)
                                                                      : NULL;
    struct ap_conn_handlers h = {.on_msg = on_msg, .on_close = on_close, .data = ss};
    if (ss == NULL) {
        ap_conn_close(c, NULL);
        return;
    }
    ss->owner = l;
    ss->conn = c;
    ss->last_ms = uv_now(l->n->loop);
    l->sessions[l->n_sessions++] = ss;
    ap_conn_set_handlers(c, &h);
}

/* Push STATE where the catalog moved on; drop silent links; leave when no longer leader. */
static void on_timer(uv_timer_t *t)
{
    struct regionlink *l = t->data;
    uint64_t now = uv_now(l->n->loop);
    uint64_t applied = ap_rsm_applied_index(l->n->rsm);
    bool leader = ap_rsm_role(l->n->rsm) == AP_RSM_LEADER;
    for (unsigned i = 0; i < l->n_sessions; i++) {
        struct session *ss = l->sessions[i];
        if (now - ss->last_ms > (uint64_t)REGIONLINK_HEARTBEAT_MS * REGIONLINK_MISSES ||
            (ss->hello && !leader)) {
            ss->hello = false;
            ap_conn_close(ss->conn, NULL);
        } else if (ss->hello && ss->sent_version != applied) {
            send_state(l, ss);
        }
    }
}

int regionlink__start(struct regionlink **out, struct ctl_node *n, uint16_t port, char *errmsg)
{
    struct regionlink *l = ap_calloc(1, sizeof *l);
    if (l == NULL) {
        ap_errmsg_set(errmsg, "out of memory");
        return AP_ENOMEM;
    }
    l->n = n;
    l->port = port;
    struct ap_conn_config cc = {.max_frame = MAX_HELLO_BYTES};
    int rv = ap_conn_listen(n->loop, n->cfg.ip, port, &cc, on_accept, l, &l->listener, errmsg);
    if (rv != 0) {
        ap_errmsg_wrap(errmsg, "region link %s:%u", n->cfg.ip, port);
        ap_free(l);
        return rv;
    }
    uv_timer_init(n->loop, &l->timer);
    l->timer.data = l;
    uv_timer_start(&l->timer, on_timer, FLUSH_MS, FLUSH_MS);
    *out = l;
    return 0;
}

static void maybe_done(struct regionlink *l)
{
    if (l->closing > 0 || l->n_sessions > 0) {
        return;
    }
    void (*cb)(void *) = l->stop_cb;
    void *data = l->stop_data;
    ap_free(l);
    if (cb != NULL) {
        cb(data);
    }
}

static void timer_closed(uv_handle_t *h)
{
    struct regionlink *l = h->data;
    l->closing--;
    maybe_done(l);
}

static void listener_closed(struct ap_conn_listener *listener)
{
    struct regionlink *l = ap_conn_listener_data(listener);
    l->closing--;
    maybe_done(l);
}

void regionlink__stop(struct regionlink *l, void (*cb)(void *data), void *data)
{
    l->stopping = true;
    l->stop_cb = cb;
    l->stop_data = data;
    l->closing = 2;
    uv_timer_stop(&l->timer);
    uv_close((uv_handle_t *)&l->timer, timer_closed);
    ap_conn_listener_close(l->listener, listener_closed);
    /* Each session is freed by its on_close, which calls maybe_done. */
    for (unsigned i = 0; i < l->n_sessions; i++) {
        ap_conn_close(l->sessions[i]->conn, NULL);
    }
}
