/* conn: framed TCP links on libuv, bound to a chosen local IP, with a reconnecting dialer. */
#include "ap/conn.h"

#include "ap/base.h"
#include "ap/err.h"
#include "ap/log.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LISTEN_BACKLOG 128
#define IP_SIZE        INET6_ADDRSTRLEN
#define ADDR_SIZE      (INET6_ADDRSTRLEN + 8) /* "[ip]:port" */

/*
 * A conn's life: CONNECTING (dialed only) -> OPEN -> CLOSING -> freed.
 * CLOSING starts with uv_close() on both handles; when both close callbacks
 * have run, on_close and the close callback fire and the conn is freed.
 */
enum conn_state {
    CONN_CONNECTING,
    CONN_OPEN,
    CONN_CLOSING,
};

struct ap_conn {
    uv_loop_t *loop;
    uv_tcp_t tcp;
    uv_timer_t timer; /* connect timeout while CONNECTING, idle timeout while OPEN */
    uv_connect_t connect_req;
    struct ap_wire_reader *reader;
    struct ap_conn_config cfg;
    struct ap_conn_handlers h;
    struct ap_conn_dialer *dialer; /* set when a dialer owns this link */
    enum conn_state state;
    int open_handles;
    bool owed_close; /* on_close is owed: the caller has seen this conn */
    bool up;         /* the link came up (connected or accepted) */
    int reason;
    size_t queued;
    ap_conn_close_cb close_cb;
    char peer[ADDR_SIZE];
    char peer_ip[IP_SIZE];
    char local[ADDR_SIZE];
    char local_ip[IP_SIZE];
    char errmsg[AP_ERRMSG_SIZE];
};

struct send_req {
    uv_write_t req;
    struct ap_conn *c;
    uint8_t *frame;
    size_t len;
    ap_conn_sent_cb cb;
    void *data;
};

struct ap_conn_listener {
    uv_loop_t *loop;
    uv_tcp_t tcp;
    struct ap_conn_config cfg;
    ap_conn_accept_cb on_accept;
    void *data;
    uint16_t port;
    char addr[ADDR_SIZE];
    ap_conn_listener_close_cb close_cb;
};

struct ap_conn_dialer {
    uv_loop_t *loop;
    uv_timer_t timer; /* waits out the back-off between attempts */
    struct ap_conn_backoff backoff;
    struct ap_conn_config conn_cfg;
    struct ap_conn_handlers h;
    char local_ip[IP_SIZE];
    bool has_local;
    char remote_ip[IP_SIZE];
    uint16_t remote_port;
    uint64_t stable_ms;
    struct ap_conn *conn; /* the attempt in progress or the link, NULL between attempts */
    uint64_t up_since;
    /* Freed at 0: one for the caller (dropped by ap_conn_dialer_close), one for the
     * timer handle, one per conn not yet freed. */
    int refs;
    bool closing;
    ap_conn_dialer_close_cb close_cb;
};

static void dialer_conn_up(struct ap_conn_dialer *d, struct ap_conn *c);
static void dialer_conn_gone(struct ap_conn_dialer *d, struct ap_conn *c);
static void dialer_unref(struct ap_conn_dialer *d);

static void set_errmsg(char *errmsg, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void set_errmsg(char *errmsg, const char *fmt, ...)
{
    if (errmsg == NULL) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errmsg, AP_ERRMSG_SIZE, fmt, ap);
    va_end(ap);
}

/* ---- addresses ------------------------------------------------------------------------- */

static int parse_addr(const char *ip, uint16_t port, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof *ss);
    if (ip == NULL) {
        return AP_EINVAL;
    }
    if (uv_ip4_addr(ip, port, (struct sockaddr_in *)ss) == 0) {
        return 0;
    }
    if (uv_ip6_addr(ip, port, (struct sockaddr_in6 *)ss) == 0) {
        return 0;
    }
    return AP_EINVAL;
}

/* Write the address as "ip" into ip and "ip:port" ("[ip]:port" for IPv6) into both. */
static void name_addr(const struct sockaddr_storage *ss, char *ip, char *both)
{
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        uv_ip6_name(a, ip, IP_SIZE);
        snprintf(both, ADDR_SIZE, "[%s]:%u", ip, (unsigned)ntohs(a->sin6_port));
    } else {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        uv_ip4_name(a, ip, IP_SIZE);
        snprintf(both, ADDR_SIZE, "%s:%u", ip, (unsigned)ntohs(a->sin_port));
    }
}

static void conn_fill_names(struct ap_conn *c)
{
    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
        name_addr(&ss, c->peer_ip, c->peer);
    }
    len = sizeof ss;
    if (uv_tcp_getsockname(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
        name_addr(&ss, c->local_ip, c->local);
    }
}

/* ---- conn ------------------------------------------------------------------------------ */

static void config_defaults(struct ap_conn_config *out, const struct ap_conn_config *in)
{
    memset(out, 0, sizeof *out);
    if (in != NULL) {
        *out = *in;
    }
    if (out->max_frame == 0 || out->max_frame > AP_WIRE_MAX_FRAME) {
        out->max_frame = AP_WIRE_MAX_FRAME;
    }
    if (out->max_queued == 0) {
        out->max_queued = AP_CONN_MAX_QUEUED;
    }
    if (out->connect_timeout_ms == 0) {
        out->connect_timeout_ms = AP_CONN_CONNECT_TIMEOUT_MS;
    }
}

static int conn_new(uv_loop_t *loop, const struct ap_conn_config *cfg,
                    const struct ap_conn_handlers *h, struct ap_conn **out)
{
    struct ap_conn *c = ap_calloc(1, sizeof *c);
    if (c == NULL) {
        return AP_ENOMEM;
    }
    config_defaults(&c->cfg, cfg);
    if (h != NULL) {
        c->h = *h;
    }
    int rc = ap_wire_reader_new(c->cfg.max_frame, &c->reader);
    if (rc != 0) {
        ap_free(c);
        return rc;
    }
    rc = uv_tcp_init(loop, &c->tcp);
    if (rc != 0) {
        ap_wire_reader_free(c->reader);
        ap_free(c);
        return ap_err_from_uv(rc);
    }
    uv_timer_init(loop, &c->timer);
    c->loop = loop;
    c->open_handles = 2;
    *out = c;
    return 0;
}

/* All handles are closed: tell whoever is owed it, then free. */
static void conn_finish(struct ap_conn *c)
{
    struct ap_conn_dialer *d = c->dialer;
    if (d != NULL) {
        dialer_conn_gone(d, c);
    } else if (c->owed_close && c->h.on_close != NULL) {
        c->h.on_close(c, c->reason);
    }
    if (c->close_cb != NULL) {
        c->close_cb(c);
    }
    ap_wire_reader_free(c->reader);
    ap_free(c);
    if (d != NULL) {
        dialer_unref(d);
    }
}

static void conn_handle_closed(uv_handle_t *h)
{
    struct ap_conn *c = h->data;
    if (--c->open_handles == 0) {
        conn_finish(c);
    }
}

/*
 * Start closing. libuv then completes unsent writes with UV_ECANCELED and a
 * pending connect with UV_ECANCELED before the close callbacks run.
 */
static void conn_begin_close(struct ap_conn *c)
{
    c->state = CONN_CLOSING;
    c->tcp.data = c;
    c->timer.data = c;
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, conn_handle_closed);
    uv_close((uv_handle_t *)&c->tcp, conn_handle_closed);
}

/* Throw away a conn nobody has seen: no callback will fire for it. */
static void conn_discard(struct ap_conn *c)
{
    c->owed_close = false;
    memset(&c->h, 0, sizeof c->h);
    conn_begin_close(c);
}

static void conn_fail(struct ap_conn *c, int reason, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Close the link for a reason (0: closed locally) and log it, once. */
static void conn_fail(struct ap_conn *c, int reason, const char *fmt, ...)
{
    if (c->state == CONN_CLOSING) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->errmsg, sizeof c->errmsg, fmt, ap);
    va_end(ap);
    c->reason = reason;
    /* A link that was up and broke deserves a warning; a refused attempt or a
     * local close is routine. */
    enum ap_log_level level = reason != 0 && c->up ? AP_LOG_WARN : AP_LOG_INFO;
    AP_LOG(level, "conn_closed peer=%s local=%s reason=\"%s\"", c->peer, c->local, c->errmsg);
    conn_begin_close(c);
}

static void conn_timer_cb(uv_timer_t *t)
{
    struct ap_conn *c = AP_CONTAINER_OF(t, struct ap_conn, timer);
    if (c->state == CONN_CONNECTING) {
        conn_fail(c, AP_ETIMEDOUT, "connect: timed out after %" PRIu64 " ms",
                  c->cfg.connect_timeout_ms);
    } else if (c->state == CONN_OPEN) {
        conn_fail(c, AP_ETIMEDOUT, "idle: nothing received for %" PRIu64 " ms",
                  c->cfg.idle_timeout_ms);
    }
}

static void conn_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct ap_conn *c = AP_CONTAINER_OF(h, struct ap_conn, tcp);
    uint8_t *p = NULL;
    size_t n = 0;
    AP_UNUSED(suggested);
    /* The reader sizes the room: a small chunk, or the rest of a big frame. A
     * zero-length buffer makes libuv report UV_ENOBUFS. */
    if (ap_wire_reader_prepare(c->reader, 0, &p, &n) != 0) {
        p = NULL;
        n = 0;
    }
    buf->base = (char *)p;
    buf->len = n;
}

static void conn_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct ap_conn *c = AP_CONTAINER_OF(s, struct ap_conn, tcp);
    AP_UNUSED(buf);
    if (c->state != CONN_OPEN || nread == 0) {
        return;
    }
    if (nread < 0) {
        if (nread == UV_EOF) {
            conn_fail(c, AP_ECONN, "peer closed the connection");
        } else if (nread == UV_ENOBUFS) {
            conn_fail(c, AP_ENOMEM, "read: out of memory");
        } else {
            conn_fail(c, AP_ECONN, "read: %s", uv_strerror((int)nread));
        }
        return;
    }
    if (c->cfg.idle_timeout_ms > 0) {
        uv_timer_start(&c->timer, conn_timer_cb, c->cfg.idle_timeout_ms, 0);
    }
    int rc = ap_wire_reader_commit(c->reader, (size_t)nread);
    while (rc == 0 && c->state == CONN_OPEN) {
        const uint8_t *p = NULL;
        size_t n = 0;
        rc = ap_wire_reader_next(c->reader, &p, &n);
        if (rc <= 0) {
            break;
        }
        rc = 0;
        struct ap_wire_msg m;
        char err[AP_ERRMSG_SIZE] = "";
        int drc = ap_wire_decode(p, n, &m, err);
        if (drc != 0) {
            conn_fail(c, drc, "bad frame: %s", err);
            return;
        }
        if (c->h.on_msg != NULL) {
            c->h.on_msg(c, &m);
        }
    }
    if (rc < 0 && c->state == CONN_OPEN) {
        conn_fail(c, rc, "bad frame: %s", ap_wire_reader_errmsg(c->reader));
    }
}

static void conn_start_reading(struct ap_conn *c)
{
    if (c->state != CONN_OPEN) {
        return;
    }
    int rc = uv_read_start((uv_stream_t *)&c->tcp, conn_alloc_cb, conn_read_cb);
    if (rc != 0) {
        conn_fail(c, ap_err_from_uv(rc), "read: %s", uv_strerror(rc));
        return;
    }
    if (c->cfg.idle_timeout_ms > 0) {
        uv_timer_start(&c->timer, conn_timer_cb, c->cfg.idle_timeout_ms, 0);
    }
}

static void conn_connect_cb(uv_connect_t *req, int status)
{
    struct ap_conn *c = AP_CONTAINER_OF(req, struct ap_conn, connect_req);
    if (c->state != CONN_CONNECTING) {
        return; /* closing: UV_ECANCELED */
    }
    if (status < 0) {
        conn_fail(c, status == UV_ETIMEDOUT ? AP_ETIMEDOUT : AP_ECONN, "connect: %s",
                  uv_strerror(status));
        return;
    }
    uv_timer_stop(&c->timer);
    uv_tcp_nodelay(&c->tcp, 1);
    conn_fill_names(c);
    c->state = CONN_OPEN;
    c->up = true;
    AP_LOG(AP_LOG_INFO, "conn_up peer=%s local=%s", c->peer, c->local);
    if (c->dialer != NULL) {
        dialer_conn_up(c->dialer, c);
    } else if (c->h.on_connect != NULL) {
        c->h.on_connect(c);
    }
    conn_start_reading(c);
}

int ap_conn_dial(uv_loop_t *loop, const char *local_ip, const char *remote_ip, uint16_t remote_port,
                 const struct ap_conn_config *cfg, const struct ap_conn_handlers *h,
                 struct ap_conn **out, char *errmsg)
{
    struct sockaddr_storage remote;
    struct sockaddr_storage local;
    if (parse_addr(remote_ip, remote_port, &remote) != 0) {
        set_errmsg(errmsg, "dial: bad remote address '%s'", remote_ip != NULL ? remote_ip : "");
        return AP_EINVAL;
    }
    if (local_ip != NULL && parse_addr(local_ip, 0, &local) != 0) {
        set_errmsg(errmsg, "dial: bad local address '%s'", local_ip);
        return AP_EINVAL;
    }
    struct ap_conn *c = NULL;
    int rc = conn_new(loop, cfg, h, &c);
    if (rc != 0) {
        set_errmsg(errmsg, "dial: %s", ap_strerror(rc));
        return rc;
    }
    c->state = CONN_CONNECTING;
    /* Until the link is up, the names are the configured ones. */
    name_addr(&remote, c->peer_ip, c->peer);
    if (local_ip != NULL) {
        name_addr(&local, c->local_ip, c->local);
        /* Binding the source address is what lets tests cut exactly this link. */
        rc = uv_tcp_bind(&c->tcp, (const struct sockaddr *)&local, 0);
        if (rc != 0) {
            set_errmsg(errmsg, "dial: bind %s: %s", local_ip, uv_strerror(rc));
            conn_discard(c);
            return ap_err_from_uv(rc);
        }
    }
    rc =
        uv_tcp_connect(&c->connect_req, &c->tcp, (const struct sockaddr *)&remote, conn_connect_cb);
    if (rc != 0) {
        set_errmsg(errmsg, "dial: connect %s: %s", c->peer, uv_strerror(rc));
        conn_discard(c);
        return ap_err_from_uv(rc);
    }
    uv_timer_start(&c->timer, conn_timer_cb, c->cfg.connect_timeout_ms, 0);
    c->owed_close = true;
    *out = c;
    return 0;
}

void ap_conn_set_handlers(struct ap_conn *c, const struct ap_conn_handlers *h)
{
    if (h != NULL) {
        c->h = *h;
    } else {
        memset(&c->h, 0, sizeof c->h);
    }
}

static void conn_write_cb(uv_write_t *req, int status)
{
    struct send_req *s = AP_CONTAINER_OF(req, struct send_req, req);
    struct ap_conn *c = s->c;
    ap_conn_sent_cb cb = s->cb;
    void *data = s->data;
    c->queued -= s->len;
    ap_free(s->frame);
    ap_free(s);
    int result = 0;
    if (status == UV_ECANCELED) {
        result = AP_ECANCELED;
    } else if (status < 0) {
        result = AP_ECONN;
        conn_fail(c, AP_ECONN, "write: %s", uv_strerror(status));
    }
    if (cb != NULL) {
        cb(c, result, data);
    }
}

int ap_conn_send_cb(struct ap_conn *c, const struct ap_wire_msg *m, ap_conn_sent_cb cb, void *data)
{
    if (c->state != CONN_OPEN) {
        return AP_ECONN;
    }
    uint8_t *frame = NULL;
    size_t len = 0;
    int rc = ap_wire_encode(m, &frame, &len);
    if (rc != 0) {
        return rc;
    }
    /* One frame always fits an empty queue, whatever the limit. */
    if (c->queued > 0 && c->queued + len > c->cfg.max_queued) {
        ap_free(frame);
        return AP_EAGAIN;
    }
    struct send_req *s = ap_malloc(sizeof *s);
    if (s == NULL) {
        ap_free(frame);
        return AP_ENOMEM;
    }
    s->c = c;
    s->frame = frame;
    s->len = len;
    s->cb = cb;
    s->data = data;
    uv_buf_t b = uv_buf_init((char *)frame, (unsigned)len);
    rc = uv_write(&s->req, (uv_stream_t *)&c->tcp, &b, 1, conn_write_cb);
    if (rc != 0) {
        ap_free(frame);
        ap_free(s);
        return AP_ECONN;
    }
    c->queued += len;
    return 0;
}

int ap_conn_send(struct ap_conn *c, const struct ap_wire_msg *m)
{
    return ap_conn_send_cb(c, m, NULL, NULL);
}

void ap_conn_close(struct ap_conn *c, ap_conn_close_cb cb)
{
    if (cb != NULL && c->close_cb == NULL) {
        c->close_cb = cb;
    }
    conn_fail(c, 0, "closed locally");
}

void *ap_conn_data(const struct ap_conn *c)
{
    return c->h.data;
}

const char *ap_conn_peer(const struct ap_conn *c)
{
    return c->peer;
}

const char *ap_conn_peer_ip(const struct ap_conn *c)
{
    return c->peer_ip;
}

const char *ap_conn_local(const struct ap_conn *c)
{
    return c->local;
}

const char *ap_conn_local_ip(const struct ap_conn *c)
{
    return c->local_ip;
}

int ap_conn_split_addr(const char *addr, char *ip, size_t ip_size, uint16_t *port)
{
    const char *colon = strrchr(addr, ':');
    if (colon == NULL || colon == addr || (size_t)(colon - addr) >= ip_size) {
        return AP_EINVAL;
    }
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end != '\0' || p <= 0 || p > 65535) {
        return AP_EINVAL;
    }
    memcpy(ip, addr, (size_t)(colon - addr));
    ip[colon - addr] = '\0';
    *port = (uint16_t)p;
    return 0;
}

const char *ap_conn_errmsg(const struct ap_conn *c)
{
    return c->errmsg;
}

size_t ap_conn_queued(const struct ap_conn *c)
{
    return c->queued;
}

/* ---- listener -------------------------------------------------------------------------- */

static void listener_on_connection(uv_stream_t *server, int status)
{
    struct ap_conn_listener *l = AP_CONTAINER_OF(server, struct ap_conn_listener, tcp);
    if (status < 0) {
        AP_LOG(AP_LOG_WARN, "accept_failed listen=%s reason=\"%s\"", l->addr, uv_strerror(status));
        return;
    }
    struct ap_conn *c = NULL;
    int rc = conn_new(l->loop, &l->cfg, NULL, &c);
    if (rc != 0) {
        /* libuv pauses this listener until the pending connection is accepted. */
        AP_LOG(AP_LOG_ERROR, "accept_failed listen=%s reason=\"%s\"", l->addr, ap_strerror(rc));
        return;
    }
    rc = uv_accept(server, (uv_stream_t *)&c->tcp);
    if (rc != 0) {
        AP_LOG(AP_LOG_WARN, "accept_failed listen=%s reason=\"%s\"", l->addr, uv_strerror(rc));
        conn_discard(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    conn_fill_names(c);
    c->state = CONN_OPEN;
    c->up = true;
    c->owed_close = true;
    AP_LOG(AP_LOG_INFO, "conn_accepted peer=%s local=%s", c->peer, c->local);
    if (l->on_accept != NULL) {
        l->on_accept(l, c);
    } else {
        ap_conn_close(c, NULL);
    }
    conn_start_reading(c);
}

static void listener_free_cb(uv_handle_t *h)
{
    ap_free(h->data);
}

int ap_conn_listen(uv_loop_t *loop, const char *bind_ip, uint16_t port,
                   const struct ap_conn_config *cfg, ap_conn_accept_cb on_accept, void *data,
                   struct ap_conn_listener **out, char *errmsg)
{
    struct sockaddr_storage addr;
    if (parse_addr(bind_ip, port, &addr) != 0) {
        set_errmsg(errmsg, "listen: bad address '%s'", bind_ip != NULL ? bind_ip : "");
        return AP_EINVAL;
    }
    struct ap_conn_listener *l = ap_calloc(1, sizeof *l);
    if (l == NULL) {
        set_errmsg(errmsg, "listen: out of memory");
        return AP_ENOMEM;
    }
    l->loop = loop;
    config_defaults(&l->cfg, cfg);
    l->on_accept = on_accept;
    l->data = data;
    char ip[IP_SIZE];
    name_addr(&addr, ip, l->addr);
    int rc = uv_tcp_init(loop, &l->tcp);
    if (rc != 0) {
        set_errmsg(errmsg, "listen %s: %s", l->addr, uv_strerror(rc));
        ap_free(l);
        return ap_err_from_uv(rc);
    }
    l->tcp.data = l;
    rc = uv_tcp_bind(&l->tcp, (const struct sockaddr *)&addr, 0);
    if (rc == 0) {
        rc = uv_listen((uv_stream_t *)&l->tcp, LISTEN_BACKLOG, listener_on_connection);
    }
    if (rc != 0) {
        set_errmsg(errmsg, "listen %s: %s", l->addr, uv_strerror(rc));
        uv_close((uv_handle_t *)&l->tcp, listener_free_cb);
        return ap_err_from_uv(rc);
    }
    struct sockaddr_storage bound;
    int len = sizeof bound;
    if (uv_tcp_getsockname(&l->tcp, (struct sockaddr *)&bound, &len) == 0) {
        name_addr(&bound, ip, l->addr);
        l->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                    : ((struct sockaddr_in *)&bound)->sin_port);
    }
    AP_LOG(AP_LOG_INFO, "listening addr=%s", l->addr);
    *out = l;
    return 0;
}

uint16_t ap_conn_listener_port(const struct ap_conn_listener *l)
{
    return l->port;
}

void *ap_conn_listener_data(const struct ap_conn_listener *l)
{
    return l->data;
}

static void listener_closed_cb(uv_handle_t *h)
{
    struct ap_conn_listener *l = h->data;
    if (l->close_cb != NULL) {
        l->close_cb(l);
    }
    ap_free(l);
}

void ap_conn_listener_close(struct ap_conn_listener *l, ap_conn_listener_close_cb cb)
{
    l->close_cb = cb;
    uv_close((uv_handle_t *)&l->tcp, listener_closed_cb);
}

/* ---- back-off -------------------------------------------------------------------------- */

/* splitmix64: tiny, seedable, and good enough to spread retries. */
static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void ap_conn_backoff_init(struct ap_conn_backoff *b, uint64_t base_ms, uint64_t max_ms,
                          uint64_t seed)
{
    b->base_ms = base_ms != 0 ? base_ms : AP_CONN_BACKOFF_BASE_MS;
    b->max_ms = max_ms != 0 ? max_ms : AP_CONN_BACKOFF_MAX_MS;
    if (b->max_ms < b->base_ms) {
        b->max_ms = b->base_ms;
    }
    b->attempt = 0;
    b->rng = seed;
}

uint64_t ap_conn_backoff_next(struct ap_conn_backoff *b)
{
    uint64_t cap = b->base_ms;
    for (uint32_t i = 0; i < b->attempt && cap < b->max_ms && cap <= UINT64_MAX / 2; i++) {
        cap *= 2;
    }
    if (cap > b->max_ms) {
        cap = b->max_ms;
    }
    if (b->attempt < UINT32_MAX) {
        b->attempt++;
    }
    uint64_t half = cap / 2;
    return half + splitmix64(&b->rng) % (cap - half + 1);
}

void ap_conn_backoff_reset(struct ap_conn_backoff *b)
{
    b->attempt = 0;
}

/* ---- dialer ---------------------------------------------------------------------------- */

static void dialer_attempt(struct ap_conn_dialer *d);

static void dialer_timer_cb(uv_timer_t *t)
{
    dialer_attempt(AP_CONTAINER_OF(t, struct ap_conn_dialer, timer));
}

static void dialer_schedule(struct ap_conn_dialer *d)
{
    uint64_t delay = ap_conn_backoff_next(&d->backoff);
    AP_LOG(AP_LOG_DEBUG, "dial_retry remote=%s:%u attempt=%u in_ms=%" PRIu64, d->remote_ip,
           (unsigned)d->remote_port, d->backoff.attempt, delay);
    uv_timer_start(&d->timer, dialer_timer_cb, delay, 0);
}

static void dialer_attempt(struct ap_conn_dialer *d)
{
    if (d->closing || d->conn != NULL) {
        return;
    }
    char err[AP_ERRMSG_SIZE] = "";
    struct ap_conn *c = NULL;
    int rc = ap_conn_dial(d->loop, d->has_local ? d->local_ip : NULL, d->remote_ip, d->remote_port,
                          &d->conn_cfg, &d->h, &c, err);
    if (rc != 0) {
        AP_LOG(AP_LOG_WARN, "dial_failed remote=%s:%u reason=\"%s\"", d->remote_ip,
               (unsigned)d->remote_port, err);
        dialer_schedule(d);
        return;
    }
    c->dialer = d;
    d->conn = c;
    d->refs++;
}

static void dialer_conn_up(struct ap_conn_dialer *d, struct ap_conn *c)
{
    d->up_since = uv_now(d->loop);
    if (d->h.on_connect != NULL) {
        d->h.on_connect(c);
    }
}

/* The link or attempt c is closed; c is freed after this returns. */
static void dialer_conn_gone(struct ap_conn_dialer *d, struct ap_conn *c)
{
    d->conn = NULL;
    if (c->up) {
        if (d->h.on_close != NULL) {
            d->h.on_close(c, c->reason);
        }
        if (uv_now(d->loop) - d->up_since >= d->stable_ms) {
            ap_conn_backoff_reset(&d->backoff);
        }
    }
    if (!d->closing) {
        dialer_schedule(d);
    }
}

static void dialer_unref(struct ap_conn_dialer *d)
{
    AP_ASSERT(d->refs > 0);
    if (--d->refs > 0) {
        return;
    }
    if (d->close_cb != NULL) {
        d->close_cb(d);
    }
    ap_free(d);
}

static void dialer_timer_closed(uv_handle_t *h)
{
    dialer_unref(AP_CONTAINER_OF(h, struct ap_conn_dialer, timer));
}

/* Copy a validated address into a dialer field. */
static int dialer_copy_ip(const char *ip, char *dst)
{
    struct sockaddr_storage ss;
    if (parse_addr(ip, 0, &ss) != 0) {
        return AP_EINVAL;
    }
    ap_strlcpy(dst, ip, IP_SIZE);
    return 0;
}

int ap_conn_dialer_start(uv_loop_t *loop, const struct ap_conn_dialer_config *cfg,
                         struct ap_conn_dialer **out, char *errmsg)
{
    struct ap_conn_dialer *d = ap_calloc(1, sizeof *d);
    if (d == NULL) {
        set_errmsg(errmsg, "dialer: out of memory");
        return AP_ENOMEM;
    }
    if (dialer_copy_ip(cfg->remote_ip, d->remote_ip) != 0) {
        set_errmsg(errmsg, "dialer: bad remote address '%s'",
                   cfg->remote_ip != NULL ? cfg->remote_ip : "");
        ap_free(d);
        return AP_EINVAL;
    }
    if (cfg->local_ip != NULL) {
        if (dialer_copy_ip(cfg->local_ip, d->local_ip) != 0) {
            set_errmsg(errmsg, "dialer: bad local address '%s'", cfg->local_ip);
            ap_free(d);
            return AP_EINVAL;
        }
        d->has_local = true;
    }
    d->loop = loop;
    d->remote_port = cfg->remote_port;
    d->stable_ms = cfg->stable_ms != 0 ? cfg->stable_ms : AP_CONN_STABLE_MS;
    d->conn_cfg = cfg->conn;
    d->h = cfg->handlers;
    ap_conn_backoff_init(&d->backoff, cfg->backoff_base_ms, cfg->backoff_max_ms, cfg->seed);
    uv_timer_init(loop, &d->timer);
    d->refs = 2; /* the caller's, and the timer handle's */
    *out = d;
    dialer_attempt(d);
    return 0;
}

int ap_conn_dialer_set_target(struct ap_conn_dialer *d, const char *remote_ip, uint16_t remote_port)
{
    char ip[IP_SIZE];
    if (dialer_copy_ip(remote_ip, ip) != 0) {
        return AP_EINVAL;
    }
    memcpy(d->remote_ip, ip, sizeof ip);
    d->remote_port = remote_port;
    AP_LOG(AP_LOG_INFO, "dial_target remote=%s:%u", d->remote_ip, (unsigned)d->remote_port);
    if (d->conn != NULL) {
        conn_fail(d->conn, 0, "redirected to %s:%u", d->remote_ip, (unsigned)d->remote_port);
    }
    return 0;
}

void *ap_conn_dialer_data(const struct ap_conn_dialer *d)
{
    return d->h.data;
}

struct ap_conn *ap_conn_dialer_conn(const struct ap_conn_dialer *d)
{
    return d->conn != NULL && d->conn->state == CONN_OPEN ? d->conn : NULL;
}

uint32_t ap_conn_dialer_attempts(const struct ap_conn_dialer *d)
{
    return d->backoff.attempt;
}

void ap_conn_dialer_close(struct ap_conn_dialer *d, ap_conn_dialer_close_cb cb)
{
    if (d->closing) {
        return;
    }
    d->closing = true;
    d->close_cb = cb;
    uv_timer_stop(&d->timer);
    uv_close((uv_handle_t *)&d->timer, dialer_timer_closed);
    if (d->conn != NULL) {
        ap_conn_close(d->conn, NULL);
    }
    dialer_unref(d);
}
