/* link: the site's end of the site-region link: HELLO, anti-entropy deltas both ways, heartbeats,
 * rights. */
#include "link.h"

#include "ap/base.h"
#include "ap/conn.h"
#include "ap/err.h"
#include "ap/hlc.h"
#include "ap/log.h"
#include "ap/mp.h"
#include "ap/wire.h"

#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DELTA_RECORDS 500
#define MAX_INFLIGHT  8
#define FLUSH_MS      100

struct link {
    uv_loop_t *loop;
    struct shard *sh;
    struct link_hooks hooks;
    char site[64];
    char region[32];
    char local_ip[48];
    char http[64];
    char targets[LINK_MAX_TARGETS][64];
    size_t n_targets;
    size_t target;
    unsigned heartbeat_ms;
    unsigned misses;
    char **caps;
    size_t n_caps;
    int64_t cpu_millis, memory_mb, instances;

    struct ap_conn_dialer *dialer;
    struct ap_conn *conn; /* Current link, when up. */
    bool hello_done;
    /* A region DELTA could not be stored (disk full): later ones on this connection are
     * ignored, since applying them would skip the first; link__resync reconnects so that
     * the region resends from what the shard holds (docs/edge.md "Full disk"). */
    bool deltas_blocked;
    uint64_t sent_seq; /* Local changes up to here were sent on this link. */
    unsigned inflight; /* DELTAs sent and not yet acknowledged. */
    uint64_t last_rx_ms;
    char peer[64];
    uv_timer_t heartbeat;
    uv_timer_t flush;
    struct link_stats stats;
    bool stopping;
    int closing;
    void (*stop_cb)(void *data);
    void *stop_data;
};

static int send_body(struct link *l, uint16_t type, const uint8_t *body, size_t len)
{
    if (l->conn == NULL) {
        return AP_ECONN;
    }
    struct ap_wire_msg m;
    memset(&m, 0, sizeof m);
    m.version = AP_WIRE_VERSION;
    m.type = type;
    ap_strlcpy(m.sender, l->site, sizeof m.sender);
    m.hlc = (uint64_t)ap_hlc_wall_realtime(NULL) << 16;
    m.body = body;
    m.body_len = len;
    int rv = ap_conn_send(l->conn, &m);
    if (rv == 0) {
        l->stats.bytes_sent += len;
    }
    return rv;
}

static void send_hello(struct link *l)
{
    struct ap_mp_writer w;
    uint8_t *body;
    size_t len;
    ap_mp_writer_init(&w);
    ap_mp_write_map(&w, 6);
    ap_mp_write_str(&w, "site");
    ap_mp_write_str(&w, l->site);
    ap_mp_write_str(&w, "http");
    ap_mp_write_str(&w, l->http);
    ap_mp_write_str(&w, "region");
    ap_mp_write_str(&w, l->region);
    ap_mp_write_str(&w, "caps");
    ap_mp_write_array(&w, (uint32_t)l->n_caps);
    for (size_t i = 0; i < l->n_caps; i++) {
        ap_mp_write_str(&w, l->caps[i]);
    }
    ap_mp_write_str(&w, "capacity");
    ap_mp_write_map(&w, 3);
    ap_mp_write_str(&w, "cpu_millis");
    ap_mp_write_int(&w, l->cpu_millis);
    ap_mp_write_str(&w, "memory_mb");
    ap_mp_write_int(&w, l->memory_mb);
    ap_mp_write_str(&w, "instances");
    ap_mp_write_int(&w, l->instances);
    ap_mp_write_str(&w, "applied");
    ap_mp_write_uint(&w, shard__meta(l->sh, "region_applied"));
    if (ap_mp_writer_finish(&w, &body, &len) == 0) {
        send_body(l, AP_WIRE_HELLO, body, len);
        ap_free(body);
    }
}

/* Send local changes the region has not seen, a bounded window at a time. */
static void flush_changes(struct link *l)
{
    while (l->hello_done && l->conn != NULL && l->inflight < MAX_INFLIGHT &&
           l->sent_seq < shard__seq(l->sh)) {
        uint8_t *body;
        size_t len, count;
        uint64_t to;
        if (shard__delta_after(l->sh, l->sent_seq, DELTA_RECORDS, &body, &len, &to, &count) != 0) {
            AP_LOG(AP_LOG_WARN, "link_delta_failed err=\"%s\"", shard__errmsg(l->sh));
            return;
        }
        if (count == 0) {
            /* Only rows the region itself sent: nothing to send up to here. */
            ap_free(body);
            l->sent_seq = shard__seq(l->sh);
            return;
        }
        int rv = send_body(l, AP_WIRE_DELTA, body, len);
        ap_free(body);
        if (rv != 0) {
            return;
        }
        l->sent_seq = to;
        l->inflight++;
        l->stats.deltas_sent++;
        l->stats.records_sent += count;
    }
}

static void send_ack(struct link *l, uint64_t to)
{
    struct ap_mp_writer w;
    uint8_t *body;
    size_t len;
    ap_mp_writer_init(&w);
    ap_mp_write_map(&w, 1);
    ap_mp_write_str(&w, "to");
    ap_mp_write_uint(&w, to);
    if (ap_mp_writer_finish(&w, &body, &len) == 0) {
        send_body(l, AP_WIRE_ACK, body, len);
        ap_free(body);
    }
}

static enum shard_res res_parse(const char *s, bool *ok)
{
    for (int i = 0; i < SHARD_RES_N; i++) {
        if (strcmp(s, shard__res_name((enum shard_res)i)) == 0) {
            *ok = true;
            return (enum shard_res)i;
        }
    }
    *ok = false;
    return SHARD_RES_INSTANCES;
}

/* Apply a region DELTA in one transaction, then acknowledge it. */
static int apply_delta(struct link *l, const msgpack_object *d, char *errmsg)
{
    const msgpack_object *inst = NULL, *rights = NULL;
    uint64_t to = 0;
    int rv;
    if ((rv = ap_mp_get_u64(d, "to", &to, INT64_MAX, true, errmsg)) != 0 ||
        (rv = ap_mp_get_array(d, "inst", &inst, 100000, false, errmsg)) != 0 ||
        (rv = ap_mp_get_array(d, "rights", &rights, 100000, false, errmsg)) != 0) {
        return rv;
    }
    if ((rv = shard__begin(l->sh)) != 0) {
        ap_errmsg_set(errmsg, "%s", shard__errmsg(l->sh));
        return rv;
    }
    size_t applied = 0;
    for (uint32_t i = 0; inst != NULL && i < inst->via.array.size; i++) {
        struct ap_instrec r;
        bool changed;
        rv = ap_instrec_read(&inst->via.array.ptr[i], &r, errmsg);
        if (rv == 0 && strcmp(r.site, l->site) != 0) {
            ap_errmsg_set(errmsg, "record %s belongs to site %s", r.id, r.site);
            rv = AP_EPROTO;
        }
        if (rv == 0) {
            rv = shard__merge_remote(l->sh, &r, &changed);
        }
        ap_instrec_clear(&r);
        if (rv != 0) {
            goto err;
        }
        applied++;
    }
    for (uint32_t i = 0; rights != NULL && i < rights->via.array.size; i++) {
        const msgpack_object *o = &rights->via.array.ptr[i];
        char tenant[AP_INSTREC_NAME_SIZE], res[16];
        int64_t granted = 0, reserve = 0;
        bool ok;
        if ((rv = ap_mp_get_str(o, "tenant", tenant, sizeof tenant, true, errmsg)) != 0 ||
            (rv = ap_mp_get_str(o, "res", res, sizeof res, true, errmsg)) != 0 ||
            (rv = ap_mp_get_i64(o, "granted", &granted, 0, INT64_MAX, true, errmsg)) != 0 ||
            (rv = ap_mp_get_i64(o, "reserve", &reserve, 0, INT64_MAX, false, errmsg)) != 0) {
            goto err;
        }
        enum shard_res r = res_parse(res, &ok);
        if (!ok) {
            continue; /* A resource a newer region knows and we do not. */
        }
        if ((rv = shard__rights_merge_remote(l->sh, tenant, r, granted, reserve)) != 0) {
            goto err;
        }
        applied++;
    }
    if (to > shard__meta(l->sh, "region_applied") &&
        (rv = shard__set_meta(l->sh, "region_applied", to)) != 0) {
        goto err;
    }
    if ((rv = shard__commit(l->sh)) != 0) {
        ap_errmsg_set(errmsg, "%s", shard__errmsg(l->sh));
        return rv;
    }
    l->stats.deltas_applied++;
    l->stats.records_applied += applied;
    send_ack(l, to);
    if (l->hooks.region_applied != NULL) {
        l->hooks.region_applied(l->hooks.data);
    }
    /* Merges that kept newer local data go back to the region. */
    flush_changes(l);
    return 0;
err:
    shard__rollback(l->sh);
    if (errmsg[0] == '\0') {
        ap_errmsg_set(errmsg, "%s", shard__errmsg(l->sh));
    }
    return rv;
}

static void rotate_target(struct link *l)
{
    char ip[48];
    uint16_t port;
    l->target = (l->target + 1) % l->n_targets;
    if (ap_conn_split_addr(l->targets[l->target], ip, sizeof ip, &port) == 0) {
        ap_conn_dialer_set_target(l->dialer, ip, port);
    }
}

static void on_msg(struct ap_conn *c, const struct ap_wire_msg *m)
{
    struct link *l = ap_conn_data(c);
    msgpack_unpacked up;
    char errmsg[AP_ERRMSG_SIZE] = "";
    if (l->stopping) {
        return;
    }
    l->last_rx_ms = uv_now(l->loop);
    if (ap_mp_unpack(m->body, m->body_len, AP_WIRE_MAX_FRAME, &up, errmsg) != 0) {
        AP_LOG(AP_LOG_WARN, "link_frame_rejected type=%s err=\"%s\"", ap_wire_type_name(m->type),
               errmsg);
        ap_conn_close(c, NULL);
        return;
    }
    uint64_t v = 0;
    char text[96] = "", code[32] = "";
    bool ok = false;
    int rv;
    switch (m->type) {
    case AP_WIRE_HELLO:
        if (ap_mp_get_u64(&up.data, "applied", &v, INT64_MAX, true, errmsg) != 0) {
            AP_LOG(AP_LOG_WARN, "link_hello_rejected err=\"%s\"", errmsg);
            ap_conn_close(c, NULL);
            break;
        }
        l->hello_done = true;
        l->sent_seq = v;
        l->inflight = 0;
        l->stats.connects++;
        ap_strlcpy(l->peer, ap_conn_peer(c), sizeof l->peer);
        AP_LOG(AP_LOG_INFO, "link_up peer=%s site_seq_acked=%llu local_seq=%llu", l->peer,
               (unsigned long long)v, (unsigned long long)shard__seq(l->sh));
        shard__set_meta(l->sh, "site_seq_acked", v);
        if (l->hooks.state_changed != NULL) {
            l->hooks.state_changed(l->hooks.data, true);
        }
        flush_changes(l);
        break;
    case AP_WIRE_REDIRECT:
        ap_mp_get_str(&up.data, "link", text, sizeof text, false, NULL);
        AP_LOG(AP_LOG_INFO, "link_redirected from=%s to=%s", ap_conn_peer(c),
               text[0] != '\0' ? text : "(no leader)");
        {
            char ip[48];
            uint16_t port;
            if (text[0] != '\0' && ap_conn_split_addr(text, ip, sizeof ip, &port) == 0) {
                ap_conn_dialer_set_target(l->dialer, ip, port);
            } else {
                rotate_target(l);
            }
        }
        break;
    case AP_WIRE_ERROR:
        ap_mp_get_str(&up.data, "code", code, sizeof code, false, NULL);
        ap_mp_get_str(&up.data, "message", text, sizeof text, false, NULL);
        AP_LOG(AP_LOG_WARN, "link_refused peer=%s code=%s message=\"%s\"", ap_conn_peer(c), code,
               text);
        ap_conn_close(c, NULL);
        break;
    case AP_WIRE_DELTA:
        if (l->deltas_blocked) {
            l->stats.deltas_deferred++;
            break;
        }
        rv = apply_delta(l, &up.data, errmsg);
        if (rv == AP_ENOSPACE) {
            /* Keep the link (heartbeats, our own changes) and wait for room. */
            l->deltas_blocked = true;
            l->stats.deltas_deferred++;
            AP_LOG(AP_LOG_WARN, "link_deltas_deferred peer=%s reason=no_space err=\"%s\"",
                   ap_conn_peer(c), errmsg);
        } else if (rv != 0) {
            AP_LOG(AP_LOG_WARN, "link_delta_rejected peer=%s err=\"%s\"", ap_conn_peer(c), errmsg);
            /* Reconnecting makes the region resend from what we applied. */
            ap_conn_close(c, NULL);
        }
        break;
    case AP_WIRE_STATE:
        /* docs/security.md: what this site authenticates with while cut off. */
        rv = shard__auth_put(l->sh, &up.data);
        if (rv != 0) {
            AP_LOG(AP_LOG_WARN, "link_state_rejected err=\"%s\"", shard__errmsg(l->sh));
        }
        if (rv == AP_ENOSPACE) {
            /* The region sends STATE again on a new connection: resync once there is room. */
            l->deltas_blocked = true;
        }
        break;
    case AP_WIRE_ACK:
        if (ap_mp_get_u64(&up.data, "to", &v, INT64_MAX, true, NULL) == 0) {
            if (l->inflight > 0) {
                l->inflight--;
            }
            if (v > shard__meta(l->sh, "site_seq_acked")) {
                shard__set_meta(l->sh, "site_seq_acked", v);
            }
            flush_changes(l);
        }
        break;
    case AP_WIRE_RIGHTS_GRANT:
        ap_mp_get_str(&up.data, "tenant", code, sizeof code, false, NULL);
        ap_mp_get_bool(&up.data, "ok", &ok, false, NULL);
        ap_mp_get_str(&up.data, "message", text, sizeof text, false, NULL);
        if (l->hooks.rights_answer != NULL) {
            l->hooks.rights_answer(l->hooks.data, code, ok, text);
        }
        break;
    default:
        break; /* HEARTBEAT, or a frame of a newer region: nothing to do. */
    }
    msgpack_unpacked_destroy(&up);
}

static void on_connect(struct ap_conn *c)
{
    struct link *l = ap_conn_data(c);
    l->conn = c;
    l->hello_done = false;
    l->deltas_blocked = false;
    l->last_rx_ms = uv_now(l->loop);
    send_hello(l);
}

static void on_close(struct ap_conn *c, int reason)
{
    struct link *l = ap_conn_data(c);
    bool was_up = l->hello_done;
    l->conn = NULL;
    l->hello_done = false;
    l->inflight = 0;
    l->peer[0] = '\0';
    if (was_up) {
        AP_LOG(AP_LOG_INFO, "link_down reason=\"%s\"", reason != 0 ? ap_conn_errmsg(c) : "closed");
        if (l->hooks.state_changed != NULL && !l->stopping) {
            l->hooks.state_changed(l->hooks.data, false);
        }
    } else if (!l->stopping && reason != 0) {
        /* This node did not answer: try the next one. */
        rotate_target(l);
    }
}

static void on_heartbeat(uv_timer_t *t)
{
    struct link *l = AP_CONTAINER_OF(t, struct link, heartbeat);
    if (l->conn == NULL) {
        return;
    }
    if (uv_now(l->loop) - l->last_rx_ms > (uint64_t)l->heartbeat_ms * l->misses) {
        AP_LOG(AP_LOG_WARN, "link_silent peer=%s ms=%llu", ap_conn_peer(l->conn),
               (unsigned long long)(uv_now(l->loop) - l->last_rx_ms));
        ap_conn_close(l->conn, NULL);
        return;
    }
    if (l->hello_done) {
        send_body(l, AP_WIRE_HEARTBEAT, (const uint8_t *)"\x80", 1);
    }
}

static void on_flush(uv_timer_t *t)
{
    flush_changes(AP_CONTAINER_OF(t, struct link, flush));
}

void link__kick(struct link *l)
{
    /* Re-adopting workloads at start-up records their states before the link exists; the
     * link sends every change after the acknowledged sequence once it is up. */
    if (l != NULL) {
        flush_changes(l);
    }
}

void link__resync(struct link *l)
{
    if (!l->deltas_blocked || l->conn == NULL || l->stopping) {
        return;
    }
    l->deltas_blocked = false;
    AP_LOG(AP_LOG_INFO, "link_resync peer=%s reason=space_recovered deferred=%llu",
           ap_conn_peer(l->conn), (unsigned long long)l->stats.deltas_deferred);
    /* The region's HELLO answer makes it resend everything after region_applied. */
    ap_conn_close(l->conn, NULL);
}

int link__request_rights(struct link *l, const char *tenant, const int64_t want[SHARD_RES_N])
{
    if (!l->hello_done) {
        return AP_ECONN;
    }
    struct ap_mp_writer w;
    uint8_t *body;
    size_t len;
    ap_mp_writer_init(&w);
    ap_mp_write_map(&w, 2);
    ap_mp_write_str(&w, "tenant");
    ap_mp_write_str(&w, tenant);
    ap_mp_write_str(&w, "want");
    ap_mp_write_map(&w, SHARD_RES_N);
    for (int i = 0; i < SHARD_RES_N; i++) {
        ap_mp_write_str(&w, shard__res_name((enum shard_res)i));
        ap_mp_write_int(&w, want[i] > 0 ? want[i] : 0);
    }
    int rv = ap_mp_writer_finish(&w, &body, &len);
    if (rv == 0) {
        rv = send_body(l, AP_WIRE_RIGHTS_REQUEST, body, len);
        ap_free(body);
    }
    return rv;
}

bool link__connected(const struct link *l)
{
    return l->hello_done;
}

const char *link__peer(const struct link *l)
{
    return l->peer;
}

void link__stats(const struct link *l, struct link_stats *out)
{
    *out = l->stats;
}

int link__start(struct link **out, uv_loop_t *loop, struct shard *sh, const struct link_config *cfg,
                const struct link_hooks *hooks, char *errmsg)
{
    if (cfg->n_targets == 0 || cfg->n_targets > LINK_MAX_TARGETS) {
        ap_errmsg_set(errmsg, "link: give 1 to %d region link addresses", LINK_MAX_TARGETS);
        return AP_EINVAL;
    }
    struct link *l = ap_calloc(1, sizeof *l);
    if (l == NULL) {
        ap_errmsg_set(errmsg, "link: out of memory");
        return AP_ENOMEM;
    }
    l->loop = loop;
    l->sh = sh;
    l->hooks = *hooks;
    ap_strlcpy(l->site, cfg->site, sizeof l->site);
    ap_strlcpy(l->region, cfg->region, sizeof l->region);
    ap_strlcpy(l->http, cfg->http != NULL ? cfg->http : "", sizeof l->http);
    ap_strlcpy(l->local_ip, cfg->local_ip, sizeof l->local_ip);
    for (size_t i = 0; i < cfg->n_targets; i++) {
        ap_strlcpy(l->targets[i], cfg->targets[i], sizeof l->targets[i]);
    }
    l->n_targets = cfg->n_targets;
    l->target = cfg->seed % cfg->n_targets;
    l->heartbeat_ms = cfg->heartbeat_ms != 0 ? cfg->heartbeat_ms : 1000;
    l->misses = cfg->misses != 0 ? cfg->misses : 3;
    l->cpu_millis = cfg->cpu_millis;
    l->memory_mb = cfg->memory_mb;
    l->instances = cfg->instances;
    l->caps = ap_calloc(cfg->n_caps + 1, sizeof *l->caps);
    for (size_t i = 0; l->caps != NULL && i < cfg->n_caps; i++) {
        l->caps[l->n_caps++] = ap_strdup(cfg->caps[i]);
    }

    char ip[48];
    uint16_t port;
    if (ap_conn_split_addr(l->targets[l->target], ip, sizeof ip, &port) != 0) {
        ap_errmsg_set(errmsg, "link: bad region address '%s' (want ip:port)",
                      l->targets[l->target]);
        ap_free(l->caps);
        ap_free(l);
        return AP_EINVAL;
    }
    struct ap_conn_dialer_config dc = {
        .local_ip = l->local_ip,
        .remote_ip = ip,
        .remote_port = port,
        .backoff_base_ms = 100,
        .backoff_max_ms = 2000,
        .seed = cfg->seed,
        .handlers = {.on_connect = on_connect, .on_msg = on_msg, .on_close = on_close, .data = l},
    };
    int rv = ap_conn_dialer_start(loop, &dc, &l->dialer, errmsg);
    if (rv != 0) {
        for (size_t i = 0; i < l->n_caps; i++) {
            ap_free(l->caps[i]);
        }
        ap_free(l->caps);
        ap_free(l);
        return rv;
    }
    uv_timer_init(loop, &l->heartbeat);
    uv_timer_start(&l->heartbeat, on_heartbeat, l->heartbeat_ms, l->heartbeat_ms);
    uv_timer_init(loop, &l->flush);
    uv_timer_start(&l->flush, on_flush, FLUSH_MS, FLUSH_MS);
    *out = l;
    return 0;
}

static void maybe_done(struct link *l)
{
    if (--l->closing > 0) {
        return;
    }
    void (*cb)(void *) = l->stop_cb;
    void *data = l->stop_data;
    for (size_t i = 0; i < l->n_caps; i++) {
        ap_free(l->caps[i]);
    }
    ap_free(l->caps);
    ap_free(l);
    if (cb != NULL) {
        cb(data);
    }
}

static void timer_closed(uv_handle_t *h)
{
    maybe_done(h->data);
}

static void dialer_closed(struct ap_conn_dialer *d)
{
    maybe_done(ap_conn_dialer_data(d));
}

void link__stop(struct link *l, void (*cb)(void *data), void *data)
{
    l->stopping = true;
    l->stop_cb = cb;
    l->stop_data = data;
    l->closing = 3;
    l->heartbeat.data = l;
    l->flush.data = l;
    uv_close((uv_handle_t *)&l->heartbeat, timer_closed);
    uv_close((uv_handle_t *)&l->flush, timer_closed);
    ap_conn_dialer_close(l->dialer, dialer_closed);
}
