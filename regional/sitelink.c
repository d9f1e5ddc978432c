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
/* A site DELTA above this is proposed as several site.delta commands (one
 * raft command may not exceed AP_RSM_MAX_COMMAND). */
#define DELTA_CHUNK_BYTES (512u * 1024u)
#define MAX_HELLO_BYTES   (16u * 1024u)
/* Most records and rights rows one site DELTA may carry (a site sends about
 * 500): one frame must not hold the region's loop for long. */
#define DELTA_MAX_ROWS 4096

/* One linked site (leader only). */
struct session {
    struct sitelink *owner;
    struct ap_conn *conn;
    char site[SITE_NAME_MAX + 1];
    bool hello;
    uint8_t *hello_body; /* The site's HELLO (capabilities, capacity), kept to re-propose it. */
    size_t hello_len;
    uint64_t sent_index; /* Region changes up to this raft index were sent. */
    uint64_t sent_auth;  /* Controller state version last sent (STATE), +1 (0: none yet). */
    uint64_t last_hb_ms;
};

/* What the leader remembers of a site's heartbeats (in memory only). */
struct beat {
    char site[SITE_NAME_MAX + 1];
    uint64_t last_ms;
    bool proposed_unreachable;
    bool connect_pending; /* A "connected" proposal is in flight. */
};

/*
 * Every proposal made for a site carries one of these first: the proposal's
 * callback can fire after the sitelink is gone (raft completes it when the
 * rsm closes, which happens after the sitelink stopped), so stop detaches them.
 */
struct pending {
    struct sitelink *s; /* NULL once detached. */
    struct pending *prev, *next;
};

struct sitelink {
    struct regional_node *n;
    struct ap_conn_listener *listener;
    uint16_t port;
    unsigned heartbeat_ms;
    unsigned misses;
    uv_timer_t timer;
    uv_check_t check;
    uint64_t flushed_applied; /* Applied index at the last flush. */
    struct session *sessions[MAX_SESSIONS];
    unsigned n_sessions;
    struct beat *beats;
    size_t n_beats;
    struct pending pending; /* List head of proposals in flight. */
    bool was_leader;
    bool stopping;
    int closing_handles;
    void (*stop_cb)(void *data);
    void *stop_data;
};

static void maybe_finish(struct sitelink *s);

static uint64_t now_ms(struct sitelink *s)
{
    return uv_now(s->n->loop);
}

static void pending_add(struct sitelink *s, struct pending *p)
{
    p->s = s;
    p->prev = &s->pending;
    p->next = s->pending.next;
    if (p->next != NULL) {
        p->next->prev = p;
    }
    s->pending.next = p;
}

/* Unlink p (if still attached) and return its sitelink, or NULL when detached by a stop. */
static struct sitelink *pending_take(struct pending *p)
{
    struct sitelink *s = p->s;
    if (s != NULL) {
        p->prev->next = p->next;
        if (p->next != NULL) {
            p->next->prev = p->prev;
        }
        p->s = NULL;
    }
    return s;
}

static void update_gauge(struct sitelink *s)
{
    ap_metric_set(s->n->m_sites_linked, (double)sitelink__count(s));
}

static int send_body(struct ap_conn *c, struct regional_node *n, uint16_t type, const uint8_t *body,
                     size_t len)
{
    struct ap_wire_msg m;
    memset(&m, 0, sizeof m);
    m.version = AP_WIRE_VERSION;
    m.type = type;
    snprintf(m.sender, sizeof m.sender, "%s/%llu", n->cfg.region, (unsigned long long)n->cfg.id);
    struct ap_hlc_ts ts = ap_hlc_now(n->hlc);
    m.hlc = ap_hlc_pack(ts);
    m.hlc_node = ts.node;
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
    ap_free(ss->hello_body);
    ap_free(ss);
}

/* End a session's link: it stops counting as linked at once; on_close frees it later. */
static void end_session(struct session *ss)
{
    ss->hello = false;
    ap_conn_close(ss->conn, NULL);
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
    struct pending p;
    char site[SITE_NAME_MAX + 1];
    char state[16];
};

static void state_done(void *data, struct ap_rsm_result *res)
{
    struct state_ctx *c = data;
    struct sitelink *s = pending_take(&c->p);
    if (res->status != 0 && res->status != AP_ENOTFOUND) {
        AP_LOG(AP_LOG_WARN, "site_state_failed site=%s state=%s err=\"%s\"", c->site, c->state,
               res->message);
    } else if (res->status == 0) {
        AP_LOG(AP_LOG_INFO, "site_state site=%s state=%s", c->site, c->state);
    }
    if (s != NULL && strcmp(c->state, "connected") == 0) {
        struct beat *b = beat_for(s, c->site);
        if (b != NULL) {
            b->connect_pending = false;
        }
    }
    ap_free(c);
}

static void propose_state(struct sitelink *s, const char *site, const char *state,
                          const uint8_t *hello, size_t hello_len)
{
    uint8_t *cmd;
    size_t len;
    if (catalog__encode_site_state(site, state, ap_hlc_wall_realtime(NULL), hello, hello_len, &cmd,
                                   &len) != 0) {
        return;
    }
    struct state_ctx *c = ap_calloc(1, sizeof *c);
    if (c == NULL) {
        ap_free(cmd);
        return;
    }
    ap_strlcpy(c->site, site, sizeof c->site);
    ap_strlcpy(c->state, state, sizeof c->state);
    pending_add(s, &c->p);
    if (ap_rsm_propose(s->n->rsm, cmd, len, state_done, c) != 0) {
        pending_take(&c->p);
        ap_free(c);
    } else if (strcmp(state, "connected") == 0) {
        struct beat *b = beat_for(s, site);
        if (b != NULL) {
            b->connect_pending = true;
        }
    }
    ap_free(cmd);
}

/* One site DELTA frame, proposed as one or more site.delta commands. */
struct delta_batch {
    struct pending p;
    char site[SITE_NAME_MAX + 1];
    struct ap_conn *conn; /* The link the DELTA came on (valid while its session lives). */
    uint64_t to;
    size_t records;
    unsigned outstanding; /* Chunks proposed and not yet applied. */
    bool failed;
};

static void delta_chunk_done(void *data, struct ap_rsm_result *res)
{
    struct delta_batch *b = data;
    if (res->status != 0 && !b->failed) {
        b->failed = true;
        AP_LOG(AP_LOG_WARN, "site_delta_failed site=%s to=%llu err=\"%s\"", b->site,
               (unsigned long long)b->to, res->message);
    }
    if (--b->outstanding > 0) {
        return;
    }
    struct sitelink *s = pending_take(&b->p);
    struct session *ss = s != NULL ? find_session(s, b->site) : NULL;
    if (ss != NULL && ss->conn != b->conn) {
        ss =
            NULL; /* Applied, but the site reconnected since: its new HELLO says where it stands. */
    }
    if (b->failed) {
        /* The site resends everything unacknowledged on its next link. */
        if (ss != NULL) {
            end_session(ss);
        }
    } else if (s != NULL) {
        ap_metric_inc(s->n->m_site_deltas);
        ap_metric_add(s->n->m_site_records, (double)b->records);
        if (ss != NULL) {
            struct ap_mp_writer w;
            uint8_t *body;
            size_t len;
            ap_mp_writer_init(&w);
            ap_mp_write_map(&w, 1);
            ap_mp_write_str(&w, "to");
            ap_mp_write_uint(&w, b->to);
            if (ap_mp_writer_finish(&w, &body, &len) == 0) {
                send_body(ss->conn, s->n, AP_WIRE_ACK, body, len);
                ap_free(body);
            }
        }
    }
    ap_free(b);
}

/* Propose one chunk (a DELTA body) of batch b. */
static int propose_chunk(struct sitelink *s, struct delta_batch *b, const uint8_t *body, size_t len)
{
    uint8_t *cmd;
    size_t cmd_len;
    int rv = catalog__encode_site_delta(b->site, body, len, &cmd, &cmd_len);
    if (rv != 0) {
        return rv;
    }
    rv = ap_rsm_propose(s->n->rsm, cmd, cmd_len, delta_chunk_done, b);
    ap_free(cmd);
    if (rv == 0) {
        b->outstanding++;
    }
    return rv;
}

/* Write a chunk body: {from, to, inst:[raw records], rights:[raw rows]}. */
static int chunk_body(uint64_t from, uint64_t to, size_t n_inst, const struct ap_mp_writer *inst,
                      size_t n_rights, const struct ap_mp_writer *rights, uint8_t **out,
                      size_t *len)
{
    struct ap_mp_writer w;
    ap_mp_writer_init(&w);
    ap_mp_write_map(&w, 4);
    ap_mp_write_str(&w, "from");
    ap_mp_write_uint(&w, from);
    ap_mp_write_str(&w, "to");
    ap_mp_write_uint(&w, to);
    ap_mp_write_str(&w, "inst");
    ap_mp_write_array(&w, (uint32_t)n_inst);
    ap_mp_write_raw(&w, inst->sbuf.data, inst->sbuf.size);
    ap_mp_write_str(&w, "rights");
    ap_mp_write_array(&w, (uint32_t)n_rights);
    ap_mp_write_raw(&w, rights->sbuf.data, rights->sbuf.size);
    return ap_mp_writer_finish(&w, out, len);
}

/*
 * Propose a big DELTA as several commands of about DELTA_CHUNK_BYTES each:
 * instance records first, then rights rows, in the site's order. Each chunk
 * applies on its own with `to` = 0 (which changes nothing); the last one
 * carries the real `to`. A replay after a partial failure is harmless: every
 * merge is idempotent.
 */
static int propose_chunked(struct sitelink *s, struct delta_batch *b, const msgpack_object *d,
                           uint64_t from)
{
    const msgpack_object *arrays[2] = {NULL, NULL};
    struct ap_mp_writer w[2]; /* Instance records, rights rows. */
    size_t count[2] = {0, 0};
    uint8_t *body;
    size_t len;
    int rv;
    if ((rv = ap_mp_get_array(d, "inst", &arrays[0], DELTA_MAX_ROWS, false, NULL)) != 0 ||
        (rv = ap_mp_get_array(d, "rights", &arrays[1], DELTA_MAX_ROWS, false, NULL)) != 0) {
        return rv;
    }
    ap_mp_writer_init(&w[0]);
    ap_mp_writer_init(&w[1]);
    for (int a = 0; a < 2 && rv == 0; a++) {
        for (uint32_t i = 0; arrays[a] != NULL && i < arrays[a]->via.array.size; i++) {
            if (msgpack_pack_object(&w[a].pk, arrays[a]->via.array.ptr[i]) != 0) {
                rv = AP_ENOMEM;
                break;
            }
            b->records++;
            count[a]++;
            if (w[0].sbuf.size + w[1].sbuf.size < DELTA_CHUNK_BYTES) {
                continue;
            }
            rv = chunk_body(from, 0, count[0], &w[0], count[1], &w[1], &body, &len);
            if (rv == 0) {
                rv = propose_chunk(s, b, body, len);
                ap_free(body);
            }
            ap_mp_writer_destroy(&w[0]);
            ap_mp_writer_destroy(&w[1]);
            count[0] = count[1] = 0;
            if (rv != 0) {
                break;
            }
        }
    }
    if (rv == 0) {
        rv = chunk_body(from, b->to, count[0], &w[0], count[1], &w[1], &body, &len);
    }
    if (rv == 0) {
        rv = propose_chunk(s, b, body, len);
        ap_free(body);
    }
    ap_mp_writer_destroy(&w[0]);
    ap_mp_writer_destroy(&w[1]);
    return rv;
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

    if (ss->hello) {
        send_error(ss->conn, n, "protocol_error", "HELLO was already received on this link");
        end_session(ss);
        return;
    }
    if (m->body_len > MAX_HELLO_BYTES ||
        ap_mp_unpack(m->body, m->body_len, MAX_HELLO_BYTES, &up, errmsg) != 0) {
        send_error(ss->conn, n, "protocol_error",
                   m->body_len > MAX_HELLO_BYTES ? "HELLO too large" : errmsg);
        ap_conn_close(ss->conn, NULL);
        return;
    }
    int rv = ap_mp_get_str(&up.data, "site", site, sizeof site, true, errmsg);
    if (rv == 0) {
        rv = ap_mp_get_str(&up.data, "region", region, sizeof region, true, errmsg);
    }
    if (rv == 0) {
        rv = ap_mp_get_u64(&up.data, "applied", &applied, INT64_MAX, true, errmsg);
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
        /* docs/edge.md: every node of a region serves the link on the same port. */
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
        end_session(old);
    }
    ss->hello_body = ap_malloc(m->body_len);
    if (ss->hello_body != NULL) {
        memcpy(ss->hello_body, m->body, m->body_len);
        ss->hello_len = m->body_len;
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
    propose_state(s, site, "connected", m->body, m->body_len);

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
    update_gauge(s);
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
    uint64_t to = 0, from = 0;
    if (ap_mp_unpack(m->body, m->body_len, AP_WIRE_MAX_FRAME, &up, errmsg) != 0) {
        AP_LOG(AP_LOG_WARN, "site_delta_rejected site=%s err=\"%s\"", ss->site, errmsg);
        end_session(ss);
        return;
    }
    int rv = ap_mp_get_u64(&up.data, "to", &to, INT64_MAX, true, errmsg);
    if (rv == 0) {
        rv = ap_mp_get_u64(&up.data, "from", &from, INT64_MAX, false, errmsg);
    }
    if (rv != 0) {
        msgpack_unpacked_destroy(&up);
        AP_LOG(AP_LOG_WARN, "site_delta_rejected site=%s err=\"%s\"", ss->site, errmsg);
        end_session(ss);
        return;
    }
    const msgpack_object *inst = NULL, *rights = NULL;
    if (ap_mp_get_array(&up.data, "inst", &inst, DELTA_MAX_ROWS, false, errmsg) != 0 ||
        ap_mp_get_array(&up.data, "rights", &rights, DELTA_MAX_ROWS, false, errmsg) != 0 ||
        (inst != NULL ? inst->via.array.size : 0) + (rights != NULL ? rights->via.array.size : 0) >
            DELTA_MAX_ROWS) {
        msgpack_unpacked_destroy(&up);
        char msg[AP_ERRMSG_SIZE + 64];
        snprintf(msg, sizeof msg, "DELTA: at most %d records and rights rows in all",
                 DELTA_MAX_ROWS);
        AP_LOG(AP_LOG_WARN, "site_delta_rejected site=%s err=\"%s\"", ss->site, msg);
        send_error(ss->conn, s->n, "protocol_error", msg);
        end_session(ss);
        return;
    }
    struct delta_batch *b = ap_calloc(1, sizeof *b);
    if (b == NULL) {
        msgpack_unpacked_destroy(&up);
        end_session(ss);
        return;
    }
    ap_strlcpy(b->site, ss->site, sizeof b->site);
    b->conn = ss->conn;
    b->to = to;
    if (m->body_len <= DELTA_CHUNK_BYTES) {
        b->records = (inst != NULL ? inst->via.array.size : 0) +
                     (rights != NULL ? rights->via.array.size : 0);
        rv = propose_chunk(s, b, m->body, m->body_len);
    } else {
        rv = propose_chunked(s, b, &up.data, from);
    }
    msgpack_unpacked_destroy(&up);
    if (b->outstanding == 0) {
        /* Nothing was proposed: no callback will fire. */
        ap_free(b);
        AP_LOG(AP_LOG_WARN, "site_delta_not_proposed site=%s err=\"%s\"", ss->site,
               ap_strerror(rv));
        end_session(ss);
        return;
    }
    pending_add(s, &b->p);
    if (rv != 0) {
        /* Some chunks are in flight: they apply harmlessly; no ACK, the site resends. */
        b->failed = true;
        end_session(ss);
    }
}

/* RIGHTS_REQUEST {tenant, want:{...}}: propose rights.grant, answer RIGHTS_GRANT once applied. */
struct rights_ctx {
    struct pending p;
    char site[SITE_NAME_MAX + 1];
    char tenant[AP_INSTREC_NAME_SIZE];
    struct ap_conn *conn;
};

static void send_grant(struct ap_conn *c, struct regional_node *n, const char *tenant, bool ok,
                       const char *message)
{
    struct ap_mp_writer w;
    uint8_t *body;
    size_t len;
    ap_mp_writer_init(&w);
    ap_mp_write_map(&w, 3);
    ap_mp_write_str(&w, "tenant");
    ap_mp_write_str(&w, tenant);
    ap_mp_write_str(&w, "ok");
    ap_mp_write_bool(&w, ok);
    ap_mp_write_str(&w, "message");
    ap_mp_write_str(&w, message);
    if (ap_mp_writer_finish(&w, &body, &len) == 0) {
        send_body(c, n, AP_WIRE_RIGHTS_GRANT, body, len);
        ap_free(body);
    }
}

static void rights_done(void *data, struct ap_rsm_result *res)
{
    struct rights_ctx *c = data;
    struct sitelink *s = pending_take(&c->p);
    struct session *ss = s != NULL ? find_session(s, c->site) : NULL;
    if (ss != NULL && ss->conn == c->conn) {
        if (res->status == 0) {
            /* The new granted totals travel in a DELTA, which must arrive first. */
            sitelink__flush(s);
        }
        send_grant(ss->conn, s->n, c->tenant, res->status == 0,
                   res->status == 0 ? "" : res->message);
    }
    AP_LOG(res->status == 0 ? AP_LOG_INFO : AP_LOG_WARN,
           "site_rights_request site=%s tenant=%s ok=%d msg=\"%s\"", c->site, c->tenant,
           res->status == 0, res->status == 0 ? "" : res->message);
    ap_free(c);
}

static void on_rights_request(struct session *ss, const struct ap_wire_msg *m)
{
    struct sitelink *s = ss->owner;
    msgpack_unpacked up;
    char errmsg[AP_ERRMSG_SIZE];
    char tenant[AP_INSTREC_NAME_SIZE] = "";
    const msgpack_object *want = NULL;
    int64_t amounts[QUOTA_RES_N] = {0};
    if (ap_mp_unpack(m->body, m->body_len, MAX_HELLO_BYTES, &up, errmsg) != 0) {
        AP_LOG(AP_LOG_WARN, "site_rights_rejected site=%s err=\"%s\"", ss->site, errmsg);
        return;
    }
    int rv = ap_mp_get_str(&up.data, "tenant", tenant, sizeof tenant, true, errmsg);
    if (rv == 0) {
        rv = ap_mp_get_map(&up.data, "want", &want, 16, true, errmsg);
    }
    for (uint32_t i = 0; rv == 0 && i < want->via.map.size; i++) {
        char key[32];
        enum quota_res r;
        if (ap_mp_as_str(&want->via.map.ptr[i].key, "want", key, sizeof key, NULL) != 0 ||
            !quota__res_parse(key, &r)) {
            continue; /* A resource this region does not know. */
        }
        rv = ap_mp_as_i64(&want->via.map.ptr[i].val, key, &amounts[r], 0, QUOTA_MAX_AMOUNT, errmsg);
    }
    msgpack_unpacked_destroy(&up);
    if (rv == 0 && !site__valid_name(tenant)) {
        rv = AP_EPROTO;
        ap_errmsg_set(errmsg, "invalid tenant name");
    }
    if (rv != 0) {
        send_grant(ss->conn, s->n, tenant, false, errmsg);
        return;
    }
    uint8_t *cmd;
    size_t len;
    struct rights_ctx *c = ap_calloc(1, sizeof *c);
    rv = c == NULL ? AP_ENOMEM
                   : catalog__encode_rights_grant(ss->site, tenant, amounts,
                                                  ap_hlc_wall_realtime(NULL), &cmd, &len);
    if (rv == 0) {
        ap_strlcpy(c->site, ss->site, sizeof c->site);
        ap_strlcpy(c->tenant, tenant, sizeof c->tenant);
        c->conn = ss->conn;
        pending_add(s, &c->p);
        rv = ap_rsm_propose(s->n->rsm, cmd, len, rights_done, c);
        ap_free(cmd);
        if (rv != 0) {
            pending_take(&c->p);
        }
    }
    if (rv != 0) {
        ap_free(c);
        send_grant(ss->conn, s->n, tenant, false, ap_strerror(rv));
    }
}

static void on_msg(struct ap_conn *c, const struct ap_wire_msg *m)
{
    struct session *ss = ap_conn_data(c);
    struct sitelink *s = ss->owner;
    if (s->stopping) {
        return;
    }
    /* Keep the region's clock ahead of every stamp a site sent (a wild one is ignored). */
    ap_hlc_update(s->n->hlc, ap_hlc_unpack(m->hlc, m->hlc_node), NULL);
    if (!ss->hello && m->type != AP_WIRE_HELLO) {
        send_error(c, s->n, "protocol_error", "HELLO must come first");
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
    case AP_WIRE_RIGHTS_REQUEST:
        on_rights_request(ss, m);
        break;
    case AP_WIRE_HEARTBEAT:
        ss->last_hb_ms = now_ms(s);
        b = beat_for(s, ss->site);
        if (b != NULL) {
            b->last_ms = ss->last_hb_ms;
        }
        send_body(c, s->n, AP_WIRE_HEARTBEAT, (const uint8_t *)"\x80", 1);
        break;
    case AP_WIRE_ACK:
        /* Anti-entropy makes the site's ACKs advisory: its HELLO says what it applied. */
        break;
    default:
        /* A newer site's frame we do not know: skip it (docs/edge.md). */
        break;
    }
}

static void on_close(struct ap_conn *c, int reason)
{
    struct session *ss = ap_conn_data(c);
    struct sitelink *s = ss->owner;
    if (ss->site[0] != '\0' && (ss->hello || reason != 0)) {
        AP_LOG(AP_LOG_INFO, "site_unlinked site=%s reason=\"%s\"", ss->site,
               reason != 0 ? ap_conn_errmsg(c) : "closed");
    }
    drop_session(s, ss);
    update_gauge(s);
    if (s->stopping) {
        maybe_finish(s);
    }
}

static void on_accept(struct ap_conn_listener *l, struct ap_conn *c)
{
    struct sitelink *s = ap_conn_listener_data(l);
    struct session *ss = NULL;
    if (s->n_sessions < MAX_SESSIONS && !s->stopping) {
        ss = ap_calloc(1, sizeof *ss);
    }
    if (ss == NULL) {
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
    uint64_t auth_version = catalog__ctrl_version(st) + 1;
    s->flushed_applied = applied;
    for (unsigned i = 0; i < s->n_sessions; i++) {
        struct session *ss = s->sessions[i];
        /* What sites authenticate with (docs/security.md), before any delta. */
        if (ss->hello && ss->sent_auth != auth_version) {
            uint8_t *body;
            size_t len;
            if (catalog__auth_state(st, &body, &len) == 0) {
                if (send_body(ss->conn, s->n, AP_WIRE_STATE, body, len) == 0) {
                    ss->sent_auth = auth_version;
                }
                ap_free(body);
            }
        }
        /* Bounded: at most a few chunks per iteration per site; the rest on the next. */
        for (int chunk = 0; chunk < 4 && ss->hello && ss->sent_index < applied; chunk++) {
            uint8_t *body = NULL;
            size_t len = 0;
            uint64_t to = 0;
            size_t count = 0;
            if (catalog__delta_for_site(st, ss->site, ss->sent_index, DELTA_MAX_RECORDS, &body,
                                        &len, &to, &count) != 0) {
                AP_LOG(AP_LOG_WARN, "site_delta_read_failed site=%s err=\"%s\"", ss->site,
                       ap_store_errmsg(st));
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
                /* AP_EAGAIN: the link's queue is full; the timer tries again. */
                s->flushed_applied = 0;
                break;
            }
            ap_metric_inc(s->n->m_site_deltas_sent);
            ss->sent_index = to;
        }
        if (ss->hello && ss->sent_index < applied) {
            s->flushed_applied = 0; /* More to send: flush again on the next iteration. */
        }
    }
}

/* Once per loop iteration: stream what the entries applied in it changed. */
static void on_check(uv_check_t *h)
{
    struct sitelink *s = AP_CONTAINER_OF(h, struct sitelink, check);
    if (s->n_sessions > 0 && ap_rsm_applied_index(s->n->rsm) != s->flushed_applied) {
        sitelink__flush(s);
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
                if (s->sessions[i]->hello) {
                    end_session(s->sessions[i]);
                }
            }
            s->n_beats = 0;
            update_gauge(s);
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
    struct ap_store *st = ap_rsm_store(s->n->rsm);
    char **connected = NULL;
    size_t n_connected = 0;
    if (catalog__connected_sites(st, &connected, &n_connected) != 0) {
        return;
    }
    uint64_t limit = (uint64_t)s->heartbeat_ms * s->misses;
    for (size_t i = 0; i < n_connected; i++) {
        struct beat *b = beat_for(s, connected[i]);
        struct session *ss = find_session(s, connected[i]);
        if (b != NULL && !b->proposed_unreachable && now - b->last_ms > limit) {
            if (ss == NULL) {
                b->proposed_unreachable = true;
                AP_LOG(AP_LOG_WARN, "site_unreachable site=%s silent_ms=%llu", connected[i],
                       (unsigned long long)(now - b->last_ms));
                propose_state(s, connected[i], "unreachable", NULL, 0);
            } else {
                /* Linked but silent: the link is dead even if TCP has not noticed. */
                end_session(ss);
                update_gauge(s);
            }
        }
        ap_free(connected[i]);
    }
    ap_free(connected);
    /* A linked site whose "connected" write was lost (leader change) is written again. */
    for (unsigned i = 0; i < s->n_sessions; i++) {
        struct session *ss = s->sessions[i];
        struct catalog_link_info info;
        if (!ss->hello || catalog__site_link_info(st, ss->site, &info) != 0 ||
            strcmp(info.state, "connected") == 0) {
            continue;
        }
        struct beat *b = beat_for(s, ss->site);
        if (b != NULL && !b->connect_pending) {
            propose_state(s, ss->site, "connected", ss->hello_body, ss->hello_len);
        }
    }
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
    uv_check_init(n->loop, &s->check);
    uv_check_start(&s->check, on_check);
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

static void handle_closed(uv_handle_t *h)
{
    struct sitelink *s = h->data;
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
    AP_ASSERT(!s->stopping);
    s->stopping = true;
    s->stop_cb = cb;
    s->stop_data = data;
    s->closing_handles = 3;
    /* Proposals still in flight complete after we are gone: detach them. */
    while (s->pending.next != NULL) {
        pending_take(s->pending.next);
    }
    /* Closing a conn runs on_close (which frees the session) later on the loop. */
    for (unsigned i = 0; i < s->n_sessions; i++) {
        ap_conn_close(s->sessions[i]->conn, NULL);
    }
    s->timer.data = s;
    s->check.data = s;
    uv_close((uv_handle_t *)&s->timer, handle_closed);
    uv_close((uv_handle_t *)&s->check, handle_closed);
    ap_conn_listener_close(s->listener, listener_closed);
}
