/* conn: framed TCP links on libuv, bound to a chosen local IP, with a reconnecting dialer. */
#ifndef AP_CONN_H
#define AP_CONN_H

#include "ap/wire.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/**
 * One framed TCP link, accepted or dialed. Opaque. Lifecycle: every conn
 * handed to a caller ends with exactly one on_close, after its socket is
 * closed, and is freed right after on_close (and the close callback of
 * ap_conn_close(), if any) return. Callbacks run on the loop thread.
 */
struct ap_conn;

/** A listening socket that hands out accepted conns. Opaque. */
struct ap_conn_listener;

/** An outgoing link that reconnects by itself with back-off. Opaque. */
struct ap_conn_dialer;

/** Default back-off base, maximum, and the uptime that resets it. */
#define AP_CONN_BACKOFF_BASE_MS 100
#define AP_CONN_BACKOFF_MAX_MS  5000
#define AP_CONN_STABLE_MS       1000
/** Default time a connect may take before it fails with AP_ETIMEDOUT. */
#define AP_CONN_CONNECT_TIMEOUT_MS 5000
/** Default most bytes a conn queues for sending before ap_conn_send() says AP_EAGAIN. */
#define AP_CONN_MAX_QUEUED (64u << 20)

/** Limits of one conn; a zero field means its default, so `{0}` is a valid config. */
struct ap_conn_config {
    size_t max_frame;            /* largest frame body accepted; 0 or above: AP_WIRE_MAX_FRAME */
    size_t max_queued;           /* send queue limit in bytes; 0: AP_CONN_MAX_QUEUED */
    uint64_t connect_timeout_ms; /* dialed conns only; 0: AP_CONN_CONNECT_TIMEOUT_MS */
    uint64_t idle_timeout_ms;    /* close with AP_ETIMEDOUT after this long without a byte
                                    received; 0: never */
};

/** A link came up (dialed conns; for a dialer, every time it reconnects). */
typedef void (*ap_conn_connect_cb)(struct ap_conn *c);

/**
 * A whole frame arrived and decoded. m (and m->body) is valid only during
 * the call. Unknown m->type values are delivered too: callers skip them.
 */
typedef void (*ap_conn_msg_cb)(struct ap_conn *c, const struct ap_wire_msg *m);

/**
 * The link is gone and its socket closed: reason is 0 when closed locally,
 * else AP_ECONN (peer closed, reset, refused), AP_ETIMEDOUT, AP_ETOOBIG or
 * AP_EPROTO (a bad frame), ...; ap_conn_errmsg() says more. Fires exactly
 * once per conn; c is freed after it returns.
 */
typedef void (*ap_conn_closed_cb)(struct ap_conn *c, int reason);

/** ap_conn_close() finished: fires once, after on_close, just before c is freed. */
typedef void (*ap_conn_close_cb)(struct ap_conn *c);

/** A frame queued by ap_conn_send_cb() was written (0) or not (AP_ECANCELED, AP_ECONN). */
typedef void (*ap_conn_sent_cb)(struct ap_conn *c, int status, void *data);

/** A conn was accepted; set its handlers here (ap_conn_set_handlers) or close it. */
typedef void (*ap_conn_accept_cb)(struct ap_conn_listener *l, struct ap_conn *c);

/** ap_conn_listener_close() finished; l is freed after this returns. */
typedef void (*ap_conn_listener_close_cb)(struct ap_conn_listener *l);

/** ap_conn_dialer_close() finished (its link closed too); d is freed after this returns. */
typedef void (*ap_conn_dialer_close_cb)(struct ap_conn_dialer *d);

/** What a conn calls; any may be NULL. data is returned by ap_conn_data(). */
struct ap_conn_handlers {
    ap_conn_connect_cb on_connect;
    ap_conn_msg_cb on_msg;
    ap_conn_closed_cb on_close;
    void *data;
};

/**
 * Listen on bind_ip:port (IPv4 or IPv6 literal; port 0 picks a free port,
 * see ap_conn_listener_port()). Each accepted conn goes to on_accept, where
 * the caller sets its handlers; reading starts when on_accept returns.
 * Accepted conns then belong to the caller and outlive the listener. data is
 * returned by ap_conn_listener_data(); cfg may be NULL (defaults) and is
 * copied. Returns 0 and *out, or AP_EINVAL (bad address), AP_EBUSY (address
 * in use or not local), AP_ENOMEM, ... with errmsg (AP_ERRMSG_SIZE bytes, may
 * be NULL) saying what failed; then no callback fires and the caller has
 * nothing to close (the loop frees the half-made socket on its next run).
 */
int ap_conn_listen(uv_loop_t *loop, const char *bind_ip, uint16_t port,
                   const struct ap_conn_config *cfg, ap_conn_accept_cb on_accept, void *data,
                   struct ap_conn_listener **out, char *errmsg);

/** The port the listener is bound to. */
uint16_t ap_conn_listener_port(const struct ap_conn_listener *l);

/** The data given to ap_conn_listen(). */
void *ap_conn_listener_data(const struct ap_conn_listener *l);

/**
 * Stop listening. cb (may be NULL) fires once the socket is closed, and l is
 * freed after it. Accepted conns are not affected. Call once.
 */
void ap_conn_listener_close(struct ap_conn_listener *l, ap_conn_listener_close_cb cb);

/**
 * Connect once from local_ip (bound with port 0 before connecting, so the
 * link has that source address; NULL lets the kernel choose) to
 * remote_ip:remote_port. On success returns 0 and *out: on_connect fires when
 * the link is up, and on_close fires exactly once in any case (a failed
 * connect: reason AP_ECONN or AP_ETIMEDOUT, without on_connect). h and cfg
 * (may be NULL) are copied. On error (AP_EINVAL for a bad address, AP_ENOMEM,
 * a bind error such as AP_EBUSY) nothing fires, errmsg says why, and the loop
 * frees the half-made socket on its next run.
 */
int ap_conn_dial(uv_loop_t *loop, const char *local_ip, const char *remote_ip, uint16_t remote_port,
                 const struct ap_conn_config *cfg, const struct ap_conn_handlers *h,
                 struct ap_conn **out, char *errmsg);

/** Set or replace a conn's handlers (copied); meant for on_accept. */
void ap_conn_set_handlers(struct ap_conn *c, const struct ap_conn_handlers *h);

/**
 * Queue m as one frame. Returns 0 (the write completes asynchronously),
 * AP_ECONN when the link is not up (yet, or any more), AP_EAGAIN when
 * max_queued bytes are already waiting, or an ap_wire_encode() error.
 * m is encoded before the call returns; the caller keeps ownership of it.
 */
int ap_conn_send(struct ap_conn *c, const struct ap_wire_msg *m);

/**
 * ap_conn_send() with a completion: when it returns 0, cb (may be NULL) fires
 * exactly once with 0 when the frame was handed to the kernel, AP_ECANCELED
 * when the conn closed first, or AP_ECONN on a write error; when it returns
 * an error cb never fires.
 */
int ap_conn_send_cb(struct ap_conn *c, const struct ap_wire_msg *m, ap_conn_sent_cb cb, void *data);

/**
 * Close the link. Unsent frames complete with AP_ECANCELED, then on_close
 * fires (reason 0, unless the link had already failed), then cb (may be
 * NULL), then c is freed. Safe to call more than once and from any of c's
 * callbacks, on_close included; only the first cb given is kept.
 */
void ap_conn_close(struct ap_conn *c, ap_conn_close_cb cb);

/** The handlers' data pointer. */
void *ap_conn_data(const struct ap_conn *c);

/** The peer as "ip:port" (for a dialed conn, its target until the link is up). */
const char *ap_conn_peer(const struct ap_conn *c);

/** The peer's IP alone. */
const char *ap_conn_peer_ip(const struct ap_conn *c);

/**
 * The local end as "ip:port" (for a dialed conn, before the link is up: the
 * configured local IP with port 0, or "" when none was configured).
 */
const char *ap_conn_local(const struct ap_conn *c);

/** The local IP alone. */
const char *ap_conn_local_ip(const struct ap_conn *c);

/** Why the link closed, "" while it is healthy. Valid until c is freed. */
const char *ap_conn_errmsg(const struct ap_conn *c);

/** Bytes queued for sending and not yet written. */
size_t ap_conn_queued(const struct ap_conn *c);

/**
 * Exponential back-off with "equal jitter": attempt k waits a random delay in
 * [cap/2, cap] where cap = min(max, base * 2^k), so delays grow with failures
 * yet never exceed max and retries from many sites spread out. Pure: the
 * random state is seeded by the caller (no rand()), so a seed replays
 * exactly. A caller embeds it.
 */
struct ap_conn_backoff {
    uint64_t base_ms;
    uint64_t max_ms;
    uint32_t attempt; /* failures since the last reset */
    uint64_t rng;     /* splitmix64 state */
};

/** Start a back-off (base 0: AP_CONN_BACKOFF_BASE_MS, max 0: AP_CONN_BACKOFF_MAX_MS; max >= base).
 */
void ap_conn_backoff_init(struct ap_conn_backoff *b, uint64_t base_ms, uint64_t max_ms,
                          uint64_t seed);

/** The delay before the next attempt, in ms, within [0, max]; counts one more failure. */
uint64_t ap_conn_backoff_next(struct ap_conn_backoff *b);

/** Forget past failures (after a link that stayed up). */
void ap_conn_backoff_reset(struct ap_conn_backoff *b);

/** What a dialer connects to and how. Strings are copied. */
struct ap_conn_dialer_config {
    const char *local_ip;  /* source address of every attempt; NULL: kernel's choice */
    const char *remote_ip; /* required */
    uint16_t remote_port;
    uint64_t backoff_base_ms; /* 0: AP_CONN_BACKOFF_BASE_MS */
    uint64_t backoff_max_ms;  /* 0: AP_CONN_BACKOFF_MAX_MS */
    uint64_t stable_ms;       /* a link up this long resets the back-off; 0: AP_CONN_STABLE_MS */
    uint64_t seed;            /* jitter seed; give each dialer its own */
    struct ap_conn_config conn;
    /* on_connect fires each time a link comes up, on_close each time an up link
     * goes down (failed attempts are only logged); data is every link's
     * ap_conn_data(). */
    struct ap_conn_handlers handlers;
};

/**
 * Start dialing now, and again after every failure or lost link, waiting
 * ap_conn_backoff delays in between. Returns 0 and *out, or AP_EINVAL (bad
 * address) / AP_ENOMEM with errmsg; then nothing fires.
 */
int ap_conn_dialer_start(uv_loop_t *loop, const struct ap_conn_dialer_config *cfg,
                         struct ap_conn_dialer **out, char *errmsg);

/**
 * Point the dialer at another peer (a REDIRECT): the current link or attempt
 * is closed (on_close with reason 0 if it was up) and the next attempt, after
 * the usual back-off, goes to remote_ip:remote_port. Safe from the dialer's
 * callbacks. Returns 0, or AP_EINVAL for a bad address (nothing changes).
 */
int ap_conn_dialer_set_target(struct ap_conn_dialer *d, const char *remote_ip,
                              uint16_t remote_port);

/** The handlers' data pointer given in the dialer's config (also in its close callback). */
void *ap_conn_dialer_data(const struct ap_conn_dialer *d);

/**
 * Split "ip:port" (the last ':' separates them) into ip (ip_size bytes) and a
 * port of 1-65535. Returns 0, or AP_EINVAL (nothing useful written).
 */
int ap_conn_split_addr(const char *addr, char *ip, size_t ip_size, uint16_t *port);

/** The current link when it is up, else NULL. */
struct ap_conn *ap_conn_dialer_conn(const struct ap_conn_dialer *d);

/** Attempts since the last reset of the back-off (for metrics and tests). */
uint32_t ap_conn_dialer_attempts(const struct ap_conn_dialer *d);

/**
 * Stop dialing and close the current link (its on_close fires with reason 0).
 * cb (may be NULL) fires once everything is closed, and d is freed after it.
 * Safe from the dialer's callbacks. Call once.
 */
void ap_conn_dialer_close(struct ap_conn_dialer *d, ap_conn_dialer_close_cb cb);

#endif
