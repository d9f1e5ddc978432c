/* sitelink: the region's end of the site links: HELLO, redirects, heartbeats, reachability, deltas.
 */
#include "sitelink.h"

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

#define MAX_SESSIONS      1024
#define DELTA_MAX_RECORDS 512

/* One linked site (leader only). */
struct session {
    struct sitelink *owner;
    struct ap_conn *conn;
    char site[SITE_NAME_MAX + 1];
    bool hello;
    uint64_t sent_index; /* Region changes up to this raft index were sent. */
    uint64_t last_hb_ms;
    unsigned inflight; /* Site deltas proposed, not yet acknowledged. */
};

/* What the leader remembers of a site's heartbeats (in memory only). */
struct beat {
    char site[SITE_NAME_MAX + 1];
    uint64_t last_ms;
    bool proposed_unreachable;
};

struct sitelink {
    struct regional_node *n;
    struct ap_conn_listener *listener;
    uint16_t port;
    unsigned heartbeat_ms;
    unsigned misses;
    uv_timer_t timer;
    struct session *sessions[MAX_SESSIONS];
    unsigned n_sessions;
    struct beat *beats;
    size_t n_beats;
    bool was_leader;
    bool stopping;
    int closing_handles;
    void (*stop_cb)(void *data);
    void *stop_data;
};

static uint64_t now_ms(struct sitelink *s)
{
    return uv_now(s->n->loop);
}

static int send_body(struct ap_conn *c, struct regional_node *n, uint16_t type, const uint8_t *body,
                     size_t len)
{
    struct ap_wire_msg m;
    memset(&m, 0, sizeof m);
    m.version = AP_WIRE_VERSION;
    m.type = type;
    snprintf(m.sender, sizeof m.sender, "%s/%llu", n->cfg.region, (unsigned long long)n->cfg.id);
    m.hlc = (uint64_t)ap_hlc_wall_realtime(NULL) << 16;
    m.hlc_node = (uint32_t)n->cfg.id;
    m.body = body;
    m.body_len = len;
    return ap_conn_send(c, &m);
}

static void send_error(struct ap_conn *c, struct regional_node *n, const char *code,
                       const char *message)
{
    struct ap_mp_writer w;
    uint8_t *body;
    size_t len;
    ap_mp_writer_init(&w);
    ap_mp_write_map(&w, 2);
    ap_mp_write_str(&w, "code");
    ap_mp_write_str(&w, code);
    ap_mp_write_str(&w, "message");
    ap_mp_write_str(&w, message);
    if (ap_mp_writer_finish(&w, &body, &len) == 0) {
        send_body(c, n, AP_WIRE_ERROR, body, len);
        ap_free(body);
    }
}

static struct session *find_session(struct sitelink *s, const char *site)
{
    for (unsigned i = 0; i < s->n_sessions; i++) {
        if (s->sessions[i]->hello && strcmp(s->sessions[i]->site, site) == 0) {
            return s->sessions[i];
        }
    }
    return NULL;
}

static void drop_session(struct sitelink *s, struct session *ss)
{
    for (unsigned i = 0; i < s->n_sessions; i++) {
        if (s->sessions[i] == ss) {
            s->sessions[i] = s->sessions[--s->n_sessions];
            break;
        }
    }
    ap_free(ss);
}

static struct beat *beat_for(struct sitelink *s, const char *site)
{
    for (size_t i = 0; i < s->n_beats; i++) {
        if (strcmp(s->beats[i].site, site) == 0) {
            return &s->beats[i];
        }
    }
    struct beat *nb = ap_realloc(s->beats, (s->n_beats + 1) * sizeof *nb);
    if (nb == NULL) {
        return NULL;
    }
    s->beats = nb;
    struct beat *b = &s->beats[s->n_beats++];
    memset(b, 0, sizeof *b);
    ap_strlcpy(b->site, site, sizeof b->site);
    b->last_ms = now_ms(s);
    return b;
}

/* ---- proposals made on behalf of sites ---- */

struct state_ctx {
    char site[SITE_NAME_MAX + 1];
    char state[16];
};

static void state_done(void *data, struct ap_rsm_result *res)
{
    struct state_ctx *c = data;
    if (res->status != 0 && res->status != AP_ENOTFOUND) {
        AP_LOG(AP_LOG_WARN, "site_state_failed site=%s state=%s err=\"%s\"", c->site, c->state,
               res->message);
    } else if (res->status == 0) {
        AP_LOG(AP_LOG_INFO, "site_state site=%s state=%s", c->site, c->state);
    }
    ap_free(c);
}

static void propose_state(struct sitelink *s, const char *site, const char *state,
                          const char *hello_body_caps, size_t caps_len)
{
    uint8_t *cmd;
    size_t len;
    if (catalog__encode_site_state(site, state, ap_hlc_wall_realtime(NULL),
                                   (const uint8_t *)hello_body_caps, caps_len, &cmd, &len) != 0) {
        return;
    }
    struct state_ctx *c = ap_calloc(1, sizeof *c);
    if (c == NULL) {
        ap_free(cmd);
        return;
    }
    ap_strlcpy(c->site, site, sizeof c->site);
    ap_strlcpy(c->state, state, sizeof c->state);
    if (ap_rsm_propose(s->n->rsm, cmd, len, state_done, c) != 0) {
        ap_free(c);
    }
    ap_free(cmd);
}

struct delta_ctx {
    struct sitelink *s;
    char site[SITE_NAME_MAX + 1];
    uint64_t to;
};

static void delta_done(void *data, struct ap_rsm_result *res)
{
    struct delta_ctx *c = data;
    struct session *ss = c->s->stopping ? NULL : find_session(c->s, c->site);
    if (ss != NULL && ss->inflight > 0) {
        ss->inflight--;
    }
    if (res->status != 0) {
        AP_LOG(AP_LOG_WARN, "site_delta_failed site=%s to=%llu err=\"%s\"", c->site,
               (unsigned long long)c->to, res->message);
        /* The site resends everything unacknowledged on its next link. */
        if (ss != NULL) {
            ap_conn_close(ss->conn, NULL);
        }
    } else if (ss != NULL) {
        struct ap_mp_writer w;
        uint8_t *body;
        size_t len;
        ap_mp_writer_init(&w);
        ap_mp_write_map(&w, 1);
        ap_mp_write_str(&w, "to");
        ap_mp_write_uint(&w, c->to);
        if (ap_mp_writer_finish(&w, &body, &len) == 0) {
            send_body(ss->conn, c->s->n, AP_WIRE_ACK, body, len);
            ap_free(body);
        }
    }
    ap_free(c);
}

/* ---- frames from a site ---- */

static void on_hello(struct session *ss, const struct ap_wire_msg *m)
{
    struct sitelink *s = ss->owner;
    struct regional_node *n = s->n;
    msgpack_unpacked up;
    char errmsg[AP_ERRMSG_SIZE];
    char site[SITE_NAME_MAX + 1], region[32];
    uint64_t applied = 0;

    if (ap_mp_unpack(m->body, m->body_len, AP_WIRE_MAX_FRAME, &up, errmsg) != 0) {
        send_error(ss->conn, n, "protocol_error", errmsg);
        ap_conn_close(ss->conn, NULL);
        return;
    }
    int rv = ap_mp_get_str(&up.data, "site", site, sizeof site, true, errmsg);
    if (rv == 0) {
        rv = ap_mp_get_str(&up.data, "region", region, sizeof region, true, errmsg);
    }
    if (rv == 0) {
        rv = ap_mp_get_u64(&up.data, "applied", &applied, UINT64_MAX, true, errmsg);
    }
    msgpack_unpacked_destroy(&up);
    if (rv != 0) {
        send_error(ss->conn, n, "protocol_error", errmsg);
        ap_conn_close(ss->conn, NULL);
        return;
    }
    if (ap_rsm_role(n->rsm) != AP_RSM_LEADER) {
        struct ap_rsm_member leader;
        char link[80] = "";
        if (ap_rsm_leader(n->rsm, &leader) == 0 && leader.http[0] != '\0') {
            char ip[64];
            ap_strlcpy(ip, leader.http, sizeof ip);
            char *colon = strrchr(ip, ':');
            if (colon != NULL) {
                *colon = '\0';
                snprintf(link, sizeof link, "%s:%u", ip, s->port);
            }
        }
        struct ap_mp_writer w;
        uint8_t *body;
        size_t len;
        ap_mp_writer_init(&w);
        ap_mp_write_map(&w, 1);
        ap_mp_write_str(&w, "link");
        ap_mp_write_str(&w, link);
        if (ap_mp_writer_finish(&w, &body, &len) == 0) {
            send_body(ss->conn, n, AP_WIRE_REDIRECT, body, len);
            ap_free(body);
        }
        AP_LOG(AP_LOG_DEBUG, "site_redirected site=%s to=%s", site, link);
        ap_conn_close(ss->conn, NULL);
        return;
    }
    if (strcmp(region, n->cfg.region) != 0) {
        char msg[128];
        snprintf(msg, sizeof msg, "this is region %s, not %.32s", n->cfg.region, region);
        send_error(ss->conn, n, "wrong_region", msg);
        ap_conn_close(ss->conn, NULL);
        return;
    }
    struct catalog_link_info info;
    rv = catalog__site_link_info(ap_rsm_store(n->rsm), site, &info);
    if (rv != 0) {
        char msg[192];
        snprintf(msg, sizeof msg, "site %s is not registered in region %s", site, n->cfg.region);
        send_error(ss->conn, n, "not_found", msg);
        ap_conn_close(ss->conn, NULL);
        return;
    }
    struct session *old = find_session(s, site);
    if (old != NULL) {
        /* The site reconnected before we noticed the old link died. */
        old->hello = false;
        ap_conn_close(old->conn, NULL);
    }
    ap_strlcpy(ss->site, site, sizeof ss->site);
    ss->hello = true;
    ss->sent_index = applied;
    ss->last_hb_ms = now_ms(s);
    struct beat *b = beat_for(s, site);
    if (b != NULL) {
        b->last_ms = now_ms(s);
        b->proposed_unreachable = false;
    }
    /* The HELLO body is kept as the site's reported capabilities. */
    propose_state(s, site, "connected", (const char *)m->body, m->body_len);

    struct ap_mp_writer w;
    uint8_t *body;
    size_t len;
    ap_mp_writer_init(&w);
    ap_mp_write_map(&w, 3);
    ap_mp_write_str(&w, "region");
    ap_mp_write_str(&w, n->cfg.region);
    ap_mp_write_str(&w, "node");
    ap_mp_write_uint(&w, n->cfg.id);
    ap_mp_write_str(&w, "applied");
    ap_mp_write_uint(&w, info.site_seq_applied);
    if (ap_mp_writer_finish(&w, &body, &len) == 0) {
        send_body(ss->conn, n, AP_WIRE_HELLO, body, len);
        ap_free(body);
    }
    AP_LOG(AP_LOG_INFO, "site_linked site=%s peer=%s region_applied=%llu site_applied=%llu", site,
           ap_conn_peer(ss->conn), (unsigned long long)applied,
           (unsigned long long)info.site_seq_applied);
    sitelink__flush(s);
}

static void on_delta(struct session *ss, const struct ap_wire_msg *m)
{
    struct sitelink *s = ss->owner;
    msgpack_unpacked up;
    char errmsg[AP_ERRMSG_SIZE];
    uint64_t to = 0;
    if (ap_mp_unpack(m->body, m->body_len, AP_WIRE_MAX_FRAME, &up, errmsg) != 0) {
        AP_LOG(AP_LOG_WARN, "site_delta_rejected site=%s err=\"%s\"", ss->site, errmsg);
        ap_conn_close(ss->conn, NULL);
        return;
    }
    int rv = ap_mp_get_u64(&up.data, "to", &to, UINT64_MAX, true, errmsg);
    msgpack_unpacked_destroy(&up);
    if (rv != 0) {
        AP_LOG(AP_LOG_WARN, "site_delta_rejected site=%s err=\"%s\"", ss->site, errmsg);
        ap_conn_close(ss->conn, NULL);
        return;
    }
    uint8_t *cmd;
    size_t len;
    if (catalog__encode_site_delta(ss->site, m->body, m->body_len, &cmd, &len) != 0) {
        ap_conn_close(ss->conn, NULL);
        return;
    }
    struct delta_ctx *c = ap_calloc(1, sizeof *c);
    if (c == NULL) {
        ap_free(cmd);
        ap_conn_close(ss->conn, NULL);
        return;
    }
    c->s = s;
    c->to = to;
    ap_strlcpy(c->site, ss->site, sizeof c->site);
    rv = ap_rsm_propose(s->n->rsm, cmd, len, delta_done, c);
    ap_free(cmd);
    if (rv != 0) {
        ap_free(c);
        ap_conn_close(ss->conn, NULL);
        return;
    }
    ss->inflight++;
}

static void on_msg(struct ap_conn *c, const struct ap_wire_msg *m)
{
    struct session *ss = ap_conn_data(c);
    if (ss->owner->stopping) {
        return;
    }
    if (!ss->hello && m->type != AP_WIRE_HELLO) {
        send_error(c, ss->owner->n, "protocol_error", "HELLO must come first");
        ap_conn_close(c, NULL);
        return;
    }
    struct beat *b;
    switch (m->type) {
    case AP_WIRE_HELLO:
        on_hello(ss, m);
        break;
    case AP_WIRE_DELTA:
        on_delta(ss, m);
        break;
    case AP_WIRE_HEARTBEAT:
        ss->last_hb_ms = now_ms(ss->owner);
        b = beat_for(ss->owner, ss->site);
        if (b != NULL) {
            b->last_ms = ss->last_hb_ms;
        }
        send_body(c, ss->owner->n, AP_WIRE_HEARTBEAT, (const uint8_t *)"\x80", 1);
        break;
    case AP_WIRE_ACK:
        break;
    default:
        /* A newer site's frame we do not know: skip it (docs/edge.md). */
        break;
    }
}

static void on_close(struct ap_conn *c, int reason)
{
    struct session *ss = ap_conn_data(c);
    if (ss->hello) {
        AP_LOG(AP_LOG_INFO, "site_unlinked site=%s reason=\"%s\"", ss->site,
               reason != 0 ? ap_conn_errmsg(c) : "closed");
    }
    drop_session(ss->owner, ss);
}

static void on_accept(struct ap_conn_listener *l, struct ap_conn *c)
{
    struct sitelink *s = ap_conn_listener_data(l);
    struct session *ss = ap_calloc(1, sizeof *ss);
    if (ss == NULL || s->n_sessions >= MAX_SESSIONS || s->stopping) {
        ap_free(ss);
        ap_conn_close(c, NULL);
        return;
    }
    ss->owner = s;
    ss->conn = c;
    s->sessions[s->n_sessions++] = ss;
    struct ap_conn_handlers h = {.on_msg = on_msg, .on_close = on_close, .data = ss};
    ap_conn_set_handlers(c, &h);
}

/* ---- streaming region changes to sites ---- */

void sitelink__flush(struct sitelink *s)
{
    if (s->stopping || ap_rsm_role(s->n->rsm) != AP_RSM_LEADER) {
        return;
    }
    struct ap_store *st = ap_rsm_store(s->n->rsm);
    uint64_t applied = ap_rsm_applied_index(s->n->rsm);
    for (unsigned i = 0; i < s->n_sessions; i++) {
        struct session *ss = s->sessions[i];
        /* Bounded: at most a few chunks per iteration per site. */
        for (int chunk = 0; chunk < 4 && ss->hello && ss->sent_index < applied; chunk++) {
            uint8_t *body = NULL;
            size_t len = 0;
            uint64_t to = 0;
            size_t count = 0;
            if (catalog__delta_for_site(st, ss->site, ss->sent_index, DELTA_MAX_RECORDS, &body,
                                        &len, &to, &count) != 0) {
                break;
            }
            if (count == 0) {
                ap_free(body);
                ss->sent_index = applied;
                break;
            }
            int rv = send_body(ss->conn, s->n, AP_WIRE_DELTA, body, len);
            ap_free(body);
            if (rv != 0) {
                break;
            }
            ss->sent_index = to;
        }
    }
}

/* ---- reachability ---- */

static void on_timer(uv_timer_t *t)
{
    struct sitelink *s = AP_CONTAINER_OF(t, struct sitelink, timer);
    bool leader = ap_rsm_role(s->n->rsm) == AP_RSM_LEADER;
    if (!leader) {
        if (s->was_leader) {
            /* Sites must follow the new leader: drop every link. */
            for (unsigned i = 0; i < s->n_sessions; i++) {
                s->sessions[i]->hello = false;
                ap_conn_close(s->sessions[i]->conn, NULL);
            }
            s->n_beats = 0;
        }
        s->was_leader = false;
        return;
    }
    uint64_t now = now_ms(s);
    if (!s->was_leader) {
        /* A new leader gives every site a full grace period. */
        s->was_leader = true;
        for (size_t i = 0; i < s->n_beats; i++) {
            s->beats[i].last_ms = now;
        }
    }
    char **connected = NULL;
    size_t n_connected = 0;
    if (catalog__sites_in_state(ap_rsm_store(s->n->rsm), "connected", &connected, &n_connected) !=
        0) {
        return;
    }
    uint64_t limit = (uint64_t)s->heartbeat_ms * s->misses;
    for (size_t i = 0; i < n_connected; i++) {
        struct beat *b = beat_for(s, connected[i]);
        if (b != NULL && !b->proposed_unreachable && now - b->last_ms > limit &&
            find_session(s, connected[i]) == NULL) {
            b->proposed_unreachable = true;
            propose_state(s, connected[i], "unreachable", NULL, 0);
        } else if (b != NULL && !b->proposed_unreachable && now - b->last_ms > limit) {
            /* Linked but silent: the link is dead even if TCP has not noticed. */
            struct session *ss = find_session(s, connected[i]);
            ss->hello = false;
            ap_conn_close(ss->conn, NULL);
        }
        ap_free(connected[i]);
    }
    ap_free(connected);
    sitelink__flush(s);
}

int sitelink__start(struct sitelink **out, struct regional_node *n, uint16_t port,
                    unsigned heartbeat_ms, unsigned misses, char *errmsg)
{
    struct sitelink *s = ap_calloc(1, sizeof *s);
    if (s == NULL) {
        ap_errmsg_set(errmsg, "site link: out of memory");
        return AP_ENOMEM;
    }
    s->n = n;
    s->port = port;
    s->heartbeat_ms = heartbeat_ms != 0 ? heartbeat_ms : SITELINK_HEARTBEAT_MS;
    s->misses = misses != 0 ? misses : SITELINK_HEARTBEAT_MISSES;
    struct ap_conn_config cfg = {.idle_timeout_ms = (uint64_t)s->heartbeat_ms * s->misses * 2};
    int rv = ap_conn_listen(n->loop, n->cfg.ip, port, &cfg, on_accept, s, &s->listener, errmsg);
    if (rv != 0) {
        ap_errmsg_wrap(errmsg, "site link %s:%u", n->cfg.ip, port);
        ap_free(s);
        return rv;
    }
    uv_timer_init(n->loop, &s->timer);
    uv_timer_start(&s->timer, on_timer, s->heartbeat_ms / 2, s->heartbeat_ms / 2);
    *out = s;
    return 0;
}

unsigned sitelink__count(const struct sitelink *s)
{
    unsigned k = 0;
    for (unsigned i = 0; i < s->n_sessions; i++) {
        k += s->sessions[i]->hello ? 1 : 0;
    }
    return k;
}

static void maybe_finish(struct sitelink *s)
{
    if (s->closing_handles > 0 || s->n_sessions > 0) {
        return;
    }
    void (*cb)(void *) = s->stop_cb;
    void *data = s->stop_data;
    ap_free(s->beats);
    ap_free(s);
    if (cb != NULL) {
        cb(data);
    }
}

static void conn_closed_for_stop(struct ap_conn *c)
{
    AP_UNUSED(c);
}

static void timer_closed(uv_handle_t *h)
{
    struct sitelink *s = AP_CONTAINER_OF((uv_timer_t *)h, struct sitelink, timer);
    s->closing_handles--;
    maybe_finish(s);
}

static void listener_closed(struct ap_conn_listener *l)
{
    struct sitelink *s = ap_conn_listener_data(l);
    s->closing_handles--;
    /* Sessions were asked to close before; each frees itself in on_close. */
    maybe_finish(s);
}

void sitelink__stop(struct sitelink *s, void (*cb)(void *data), void *data)
{
    s->stopping = true;
    s->stop_cb = cb;
    s->stop_data = data;
    s->closing_handles = 2;
    /* Closing a conn runs on_close (which frees the session) later on the loop. */
    for (unsigned i = 0; i < s->n_sessions; i++) {
        ap_conn_close(s->sessions[i]->conn, conn_closed_for_stop);
    }
    uv_close((uv_handle_t *)&s->timer, timer_closed);
    ap_conn_listener_close(s->listener, listener_closed);
}
