/* ctrllink: the region's end of the controller link (docs/controller.md "Region link"). Only
 * the region's leader keeps it up; STATE frames become ctrl.state entries so every replica
 * holds the same public key, users' generations and quota allotments. */
#include "ctrllink.h"

#include "ap/base.h"
#include "ap/conn.h"
#include "ap/err.h"
#include "ap/hlc.h"
#include "ap/log.h"
#include "ap/mp.h"
#include "ap/wire.h"
#include "catalog.h"
#include "node_internal.h"

#include <msgpack.h>
#include <stdio.h>
#include <string.h>

#define TICK_MS         250
#define HEARTBEAT_MS    1000
#define SILENCE_MS      3000
#define MAX_STATE_BYTES (4u << 20)

struct ctrllink {
    struct regional_node *n;
    char targets[CTRLLINK_MAX_TARGETS][64];
    size_t n_targets, cur;
    struct ap_conn_dialer *dialer;
    struct ap_conn *conn; /* Up link, or NULL. */
    uv_timer_t timer;
    uint64_t last_rx_ms, last_tx_ms;
    bool stopping;
    int closing;
    void (*stop_cb)(void *data);
    void *stop_data;
};

bool ctrllink__connected(const struct ctrllink *l)
{
    return l != NULL && l->conn != NULL;
}

static int send_body(struct ctrllink *l, unsigned type, const uint8_t *body, size_t len)
{
    struct regional_node *n = l->n;
    if (l->conn == NULL) {
        return AP_ECONN;
    }
    struct ap_wire_msg m;
    memset(&m, 0, sizeof m);
    m.version = AP_WIRE_VERSION;
    m.type = (uint16_t)type;
    snprintf(m.sender, sizeof m.sender, "%s/%llu", n->cfg.region, (unsigned long long)n->cfg.id);
    struct ap_hlc_ts ts = ap_hlc_now(n->hlc);
    m.hlc = ap_hlc_pack(ts);
    m.hlc_node = ts.node;
    m.body = body;
    m.body_len = len;
    l->last_tx_ms = uv_now(n->loop);
    return ap_conn_send(l->conn, &m);
}

static void send_hello(struct ctrllink *l)
{
    struct ap_rsm_member_info *ms = NULL;
    size_t count = 0;
    if (ap_rsm_members(l->n->rsm, &ms, &count) != 0) {
        return;
    }
    struct ap_mp_writer w;
    uint8_t *body;
    size_t len;
    ap_mp_writer_init(&w);
    ap_mp_write_map(&w, 2);
    ap_mp_write_str(&w, "region");
    ap_mp_write_str(&w, l->n->cfg.region);
    ap_mp_write_str(&w, "nodes");
    size_t n = count < 8 ? count : 8;
    ap_mp_write_array(&w, (uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        ap_mp_write_str(&w, ms[i].m.http);
    }
    ap_free(ms);
    if (ap_mp_writer_finish(&w, &body, &len) == 0) {
        send_body(l, AP_WIRE_HELLO, body, len);
        ap_free(body);
    }
}

/* data is the node, which outlives raft (the link may be gone when this fires). */
static void state_done(void *data, struct ap_rsm_result *res)
{
    struct regional_node *n = data;
    if (res->status != 0) {
        AP_LOG(AP_LOG_WARN, "controller_state_failed err=\"%s\"", res->message);
    }
    n->ctrl_proposing = 0;
}

/* The STATE body with "op" and "at_ms" added: the ctrl.state command. */
static int encode_state(const msgpack_object *body, uint64_t at_ms, uint8_t **out, size_t *len)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    uint32_t keep = 0;
    for (uint32_t i = 0; i < body->via.map.size; i++) {
        const msgpack_object *k = &body->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR &&
            !(k->via.str.size == 2 && memcmp(k->via.str.ptr, "op", 2) == 0) &&
            !(k->via.str.size == 5 && memcmp(k->via.str.ptr, "at_ms", 5) == 0)) {
            keep++;
        }
    }
    msgpack_pack_map(&pk, keep + 2);
    msgpack_pack_str_with_body(&pk, "op", 2);
    msgpack_pack_str_with_body(&pk, CATALOG_OP_CTRL_STATE, strlen(CATALOG_OP_CTRL_STATE));
    msgpack_pack_str_with_body(&pk, "at_ms", 5);
    msgpack_pack_uint64(&pk, at_ms);
    for (uint32_t i = 0; i < body->via.map.size; i++) {
        const msgpack_object *k = &body->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR &&
            !(k->via.str.size == 2 && memcmp(k->via.str.ptr, "op", 2) == 0) &&
            !(k->via.str.size == 5 && memcmp(k->via.str.ptr, "at_ms", 5) == 0)) {
            msgpack_pack_object(&pk, *k);
            msgpack_pack_object(&pk, body->via.map.ptr[i].val);
        }
    }
    *out = ap_malloc(sb.size);
    if (*out == NULL) {
        msgpack_sbuffer_destroy(&sb);
        return AP_ENOMEM;
    }
    memcpy(*out, sb.data, sb.size);
    *len = sb.size;
    msgpack_sbuffer_destroy(&sb);
    return 0;
}

static void on_state(struct ctrllink *l, const msgpack_object *body)
{
    uint64_t version = 0;
    if (body->type != MSGPACK_OBJECT_MAP ||
        ap_mp_get_u64(body, "version", &version, INT64_MAX, true, NULL) != 0) {
        return;
    }
    struct ap_store *st = ap_rsm_store(l->n->rsm);
    if (version <= catalog__ctrl_version(st) || l->n->ctrl_proposing >= version ||
        ap_rsm_role(l->n->rsm) != AP_RSM_LEADER) {
        return;
    }
    uint8_t *cmd;
    size_t len;
    if (encode_state(body, ap_hlc_wall_realtime(NULL), &cmd, &len) != 0) {
        return;
    }
    if (ap_rsm_propose(l->n->rsm, cmd, len, state_done, l->n) == 0) {
        l->n->ctrl_proposing = version;
        AP_LOG(AP_LOG_DEBUG, "controller_state version=%llu", (unsigned long long)version);
    }
    ap_free(cmd);
}

static void on_msg(struct ap_conn *c, const struct ap_wire_msg *m)
{
    struct ctrllink *l = ap_conn_data(c);
    msgpack_unpacked up;
    char errmsg[AP_ERRMSG_SIZE], text[128] = "", code[48] = "";
    l->last_rx_ms = uv_now(l->n->loop);
    if (ap_mp_unpack(m->body, m->body_len, MAX_STATE_BYTES, &up, errmsg) != 0) {
        AP_LOG(AP_LOG_WARN, "controller_link_bad_frame err=\"%s\"", errmsg);
        ap_conn_close(c, NULL);
        return;
    }
    switch (m->type) {
    case AP_WIRE_STATE:
        on_state(l, &up.data);
        break;
    case AP_WIRE_REDIRECT: {
        char ip[48];
        uint16_t port;
        ap_mp_get_str(&up.data, "link", text, sizeof text, false, NULL);
        AP_LOG(AP_LOG_INFO, "controller_link_redirected to=%s", text[0] ? text : "(no leader)");
        if (text[0] != '\0' && ap_conn_split_addr(text, ip, sizeof ip, &port) == 0) {
            ap_conn_dialer_set_target(l->dialer, ip, port);
        } else if (l->n_targets > 0) {
            l->cur = (l->cur + 1) % l->n_targets;
            if (ap_conn_split_addr(l->targets[l->cur], ip, sizeof ip, &port) == 0) {
                ap_conn_dialer_set_target(l->dialer, ip, port);
            }
        }
        break;
    }
    case AP_WIRE_ERROR:
        ap_mp_get_str(&up.data, "code", code, sizeof code, false, NULL);
        ap_mp_get_str(&up.data, "message", text, sizeof text, false, NULL);
        AP_LOG(AP_LOG_WARN, "controller_link_refused code=%s message=\"%s\"", code, text);
        ap_conn_close(c, NULL);
        break;
    default:
        break; /* HEARTBEAT (counted above) and newer types. */
    }
    msgpack_unpacked_destroy(&up);
}

static void on_connect(struct ap_conn *c)
{
    struct ctrllink *l = ap_conn_data(c);
    l->conn = c;
    l->last_rx_ms = uv_now(l->n->loop);
    AP_LOG(AP_LOG_INFO, "controller_link_up peer=%s", ap_conn_peer(c));
    send_hello(l);
}

static void on_close(struct ap_conn *c, int reason)
{
    struct ctrllink *l = ap_conn_data(c);
    if (l->conn == c) {
        AP_LOG(AP_LOG_INFO, "controller_link_down reason=\"%s\"",
               reason != 0 ? ap_strerror(reason) : "closed");
        l->conn = NULL;
    }
}

static void maybe_done(struct ctrllink *l)
{
    if (l->closing > 0) {
        return;
    }
    void (*cb)(void *) = l->stop_cb;
    void *data = l->stop_data;
    ap_free(l);
    if (cb != NULL) {
        cb(data);
    }
}

static void dialer_closed(struct ap_conn_dialer *d)
{
    struct ctrllink *l = ap_conn_dialer_data(d);
    l->closing--;
    if (l->stopping) {
        maybe_done(l);
    }
}

static void start_dialer(struct ctrllink *l)
{
    char ip[48], errmsg[AP_ERRMSG_SIZE];
    uint16_t port;
    if (ap_conn_split_addr(l->targets[l->cur], ip, sizeof ip, &port) != 0) {
        return;
    }
    struct ap_conn_dialer_config dc = {
        .local_ip = l->n->cfg.ip,
        .remote_ip = ip,
        .remote_port = port,
        .seed = l->n->cfg.id * 7919u + 17u,
        .conn = {.max_frame = MAX_STATE_BYTES},
        .handlers = {.on_connect = on_connect, .on_msg = on_msg, .on_close = on_close, .data = l},
    };
    if (ap_conn_dialer_start(l->n->loop, &dc, &l->dialer, errmsg) != 0) {
        AP_LOG(AP_LOG_WARN, "controller_link_failed err=\"%s\"", errmsg);
        l->dialer = NULL;
    }
}

static void on_tick(uv_timer_t *t)
{
    struct ctrllink *l = t->data;
    uint64_t now = uv_now(l->n->loop);
    bool leader = ap_rsm_role(l->n->rsm) == AP_RSM_LEADER;
    if (leader && l->dialer == NULL) {
        start_dialer(l);
    } else if (!leader && l->dialer != NULL) {
        l->closing++;
        ap_conn_dialer_close(l->dialer, dialer_closed);
        l->dialer = NULL;
        l->conn = NULL;
        return;
    }
    if (l->conn == NULL) {
        return;
    }
    if (now - l->last_rx_ms > SILENCE_MS) {
        AP_LOG(AP_LOG_INFO, "controller_link_silent ms=%llu",
               (unsigned long long)(now - l->last_rx_ms));
        ap_conn_close(l->conn, NULL);
        return;
    }
    if (now - l->last_tx_ms >= HEARTBEAT_MS) {
        send_body(l, AP_WIRE_HEARTBEAT, (const uint8_t *)"\x80", 1);
    }
}

int ctrllink__start(struct ctrllink **out, struct regional_node *n, const char (*targets)[64],
                    size_t n_targets, char *errmsg)
{
    if (n_targets == 0 || n_targets > CTRLLINK_MAX_TARGETS) {
        ap_errmsg_set(errmsg, "controller link: 1-%d targets", CTRLLINK_MAX_TARGETS);
        return AP_EINVAL;
    }
    struct ctrllink *l = ap_calloc(1, sizeof *l);
    if (l == NULL) {
        ap_errmsg_set(errmsg, "out of memory");
        return AP_ENOMEM;
    }
    l->n = n;
    for (size_t i = 0; i < n_targets; i++) {
        ap_strlcpy(l->targets[i], targets[i], sizeof l->targets[i]);
    }
    l->n_targets = n_targets;
    uv_timer_init(n->loop, &l->timer);
    l->timer.data = l;
    uv_timer_start(&l->timer, on_tick, TICK_MS, TICK_MS);
    *out = l;
    return 0;
}

static void timer_closed(uv_handle_t *h)
{
    struct ctrllink *l = h->data;
    l->closing--;
    maybe_done(l);
}

void ctrllink__stop(struct ctrllink *l, void (*cb)(void *data), void *data)
{
    l->stopping = true;
    l->stop_cb = cb;
    l->stop_data = data;
    l->closing++;
    uv_timer_stop(&l->timer);
    if (l->dialer != NULL) {
        l->closing++;
        ap_conn_dialer_close(l->dialer, dialer_closed);
        l->dialer = NULL;
    }
    uv_close((uv_handle_t *)&l->timer, timer_closed);
}
