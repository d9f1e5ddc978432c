/* Unit tests for conn: real TCP on 127.0.0.x, bound source IPs, bad frames, dialer, back-off. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "ap/base.h"
#include "ap/conn.h"
#include "ap/err.h"
#include "ap/log.h"
#include "ap/wire.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define SERVER_IP "127.0.0.1"
#define CLIENT_IP "127.0.0.2"
#define OTHER_IP  "127.0.0.3"

struct ctx {
    uv_loop_t loop;
    uv_timer_t deadline;
    bool deadline_hit;

    /* server side */
    struct ap_conn_listener *listener;
    struct ap_conn_listener *listener2;
    struct ap_conn_config server_cfg;
    struct ap_conn *server; /* the last accepted conn, until it closes */
    int accepted;
    char accepted_peer_ip[64];
    char accepted_local[64];
    int server_msgs;
    uint64_t server_next_hlc;
    bool server_in_order;
    char server_sender[AP_WIRE_SENDER_SIZE];
    uint8_t server_body[4096];
    size_t server_body_len;
    bool echo;               /* answer every message with an ACK of hlc + 1 */
    int close_server_after;  /* close the server conn in on_msg after this many; 0: never */
    const char *redirect_to; /* send a REDIRECT with this "ip:port" body on accept */
    int server_closed;
    int server_reason;
    char server_errmsg[AP_ERRMSG_SIZE];

    /* client side */
    struct ap_conn *client;
    struct ap_conn_dialer *dialer;
    int connects;
    int client_msgs;
    uint16_t client_last_type;
    uint64_t client_last_hlc;
    int client_closed;
    int client_reason;
    char client_peer[64];

    /* completions */
    int sent_ok;
    int sent_canceled;
    int sent_other;
    int events;       /* sequence counter for ordering checks */
    int last_sent_at; /* events value at the last send completion */
    int on_close_at;
    int close_cb_at;
    int closes_done;
};

/* ---- loop helpers ---------------------------------------------------------------------- */

static void deadline_cb(uv_timer_t *t)
{
    struct ctx *x = t->data;
    x->deadline_hit = true;
}

/* Run the loop until cond holds or ms pass; UV_RUN_ONCE wakes at least when the deadline fires. */
#define RUN_UNTIL(x, cond, ms)                                                                     \
    do {                                                                                           \
        (x)->deadline_hit = false;                                                                 \
        uv_timer_start(&(x)->deadline, deadline_cb, (ms), 0);                                      \
        for (int i_ = 0; i_ < 100000 && !(cond) && !(x)->deadline_hit; i_++) {                     \
            uv_run(&(x)->loop, UV_RUN_ONCE);                                                       \
        }                                                                                          \
        uv_timer_stop(&(x)->deadline);                                                             \
    } while (0)

static int setup(void **state)
{
    struct ctx *x = ap_calloc(1, sizeof *x);
    assert_non_null(x);
    assert_int_equal(uv_loop_init(&x->loop), 0);
    uv_timer_init(&x->loop, &x->deadline);
    x->deadline.data = x;
    x->server_in_order = true;
    *state = x;
    return 0;
}

static void listener_closed(struct ap_conn_listener *l)
{
    struct ctx *x = ap_conn_listener_data(l);
    x->closes_done++;
}

static void dialer_closed(struct ap_conn_dialer *d)
{
    AP_UNUSED(d);
}

/* Close whatever the test left open, and prove nothing is left on the loop. */
static int teardown(void **state)
{
    struct ctx *x = *state;
    if (x->server != NULL) {
        ap_conn_close(x->server, NULL);
    }
    if (x->client != NULL) {
        ap_conn_close(x->client, NULL);
    }
    if (x->dialer != NULL) {
        ap_conn_dialer_close(x->dialer, dialer_closed);
    }
    if (x->listener != NULL) {
        ap_conn_listener_close(x->listener, listener_closed);
    }
    if (x->listener2 != NULL) {
        ap_conn_listener_close(x->listener2, listener_closed);
    }
    uv_close((uv_handle_t *)&x->deadline, NULL);
    for (int i = 0; i < 100 && uv_loop_alive(&x->loop); i++) {
        uv_run(&x->loop, UV_RUN_NOWAIT);
    }
    assert_int_equal(uv_loop_close(&x->loop), 0);
    ap_free(x);
    return 0;
}

static struct ap_wire_msg make_msg(uint16_t type, uint64_t hlc, const void *body, size_t len)
{
    struct ap_wire_msg m;
    memset(&m, 0, sizeof m);
    m.version = AP_WIRE_VERSION;
    m.type = type;
    ap_strlcpy(m.sender, "r1-s1", sizeof m.sender);
    m.hlc = hlc;
    m.hlc_node = 7;
    m.body = body;
    m.body_len = len;
    return m;
}

/* ---- server callbacks ------------------------------------------------------------------ */

static void server_on_msg(struct ap_conn *c, const struct ap_wire_msg *m)
{
    struct ctx *x = ap_conn_data(c);
    x->server_msgs++;
    if (m->hlc != x->server_next_hlc) {
        x->server_in_order = false;
    }
    x->server_next_hlc = m->hlc + 1;
    ap_strlcpy(x->server_sender, m->sender, sizeof x->server_sender);
    x->server_body_len = m->body_len < sizeof x->server_body ? m->body_len : 0;
    if (m->body_len > 0 && m->body_len < sizeof x->server_body) {
        memcpy(x->server_body, m->body, m->body_len);
    }
    if (x->echo) {
        struct ap_wire_msg ack = make_msg(AP_WIRE_ACK, m->hlc + 1, NULL, 0);
        assert_int_equal(ap_conn_send(c, &ack), 0);
    }
    if (x->close_server_after > 0 && x->server_msgs == x->close_server_after) {
        ap_conn_close(c, NULL);
    }
}

static void server_on_close(struct ap_conn *c, int reason)
{
    struct ctx *x = ap_conn_data(c);
    x->server_closed++;
    x->server_reason = reason;
    ap_strlcpy(x->server_errmsg, ap_conn_errmsg(c), sizeof x->server_errmsg);
    if (x->server == c) {
        x->server = NULL;
    }
}

static void server_on_accept(struct ap_conn_listener *l, struct ap_conn *c)
{
    struct ctx *x = ap_conn_listener_data(l);
    struct ap_conn_handlers h = {.on_msg = server_on_msg, .on_close = server_on_close, .data = x};
    ap_conn_set_handlers(c, &h);
    if (x->server != NULL) {
        ap_conn_close(x->server, NULL);
    }
    x->server = c;
    x->accepted++;
    ap_strlcpy(x->accepted_peer_ip, ap_conn_peer_ip(c), sizeof x->accepted_peer_ip);
    ap_strlcpy(x->accepted_local, ap_conn_local(c), sizeof x->accepted_local);
    if (x->redirect_to != NULL && l == x->listener) {
        struct ap_wire_msg r =
            make_msg(AP_WIRE_REDIRECT, 1, x->redirect_to, strlen(x->redirect_to));
        assert_int_equal(ap_conn_send(c, &r), 0);
    }
}

static struct ap_conn_listener *listen_on(struct ctx *x, const char *ip, uint16_t port)
{
    struct ap_conn_listener *l = NULL;
    char errmsg[AP_ERRMSG_SIZE] = "";
    int rc = ap_conn_listen(&x->loop, ip, port, &x->server_cfg, server_on_accept, x, &l, errmsg);
    if (rc != 0) {
        fail_msg("listen %s:%u: %s", ip, (unsigned)port, errmsg);
    }
    assert_true(ap_conn_listener_port(l) != 0);
    return l;
}

/* ---- client callbacks ------------------------------------------------------------------ */

static void client_on_connect(struct ap_conn *c)
{
    struct ctx *x = ap_conn_data(c);
    x->connects++;
    ap_strlcpy(x->client_peer, ap_conn_peer(c), sizeof x->client_peer);
}

static void client_on_msg(struct ap_conn *c, const struct ap_wire_msg *m)
{
    struct ctx *x = ap_conn_data(c);
    x->client_msgs++;
    x->client_last_type = m->type;
    x->client_last_hlc = m->hlc;
    if (m->type == AP_WIRE_REDIRECT && x->dialer != NULL) {
        /* "ip:port" in the body, as a follower would name its leader. */
        char target[64];
        size_t n = m->body_len < sizeof target - 1 ? m->body_len : sizeof target - 1;
        memcpy(target, m->body, n);
        target[n] = '\0';
        char *colon = strrchr(target, ':');
        assert_non_null(colon);
        *colon = '\0';
        assert_int_equal(ap_conn_dialer_set_target(x->dialer, target, (uint16_t)atoi(colon + 1)),
                         0);
    }
}

static void client_on_close(struct ap_conn *c, int reason)
{
    struct ctx *x = ap_conn_data(c);
    x->client_closed++;
    x->client_reason = reason;
    x->on_close_at = ++x->events;
    if (x->client == c) {
        x->client = NULL;
    }
}

static const struct ap_conn_handlers client_handlers = {
    .on_connect = client_on_connect,
    .on_msg = client_on_msg,
    .on_close = client_on_close,
};

static void dial(struct ctx *x, const char *to_ip, uint16_t port, const struct ap_conn_config *cfg)
{
    struct ap_conn_handlers h = client_handlers;
    h.data = x;
    char errmsg[AP_ERRMSG_SIZE] = "";
    int rc = ap_conn_dial(&x->loop, CLIENT_IP, to_ip, port, cfg, &h, &x->client, errmsg);
    if (rc != 0) {
        fail_msg("dial: %s", errmsg);
    }
}

/* Connect a client from CLIENT_IP to a fresh listener on SERVER_IP. */
static void connect_pair(struct ctx *x, const struct ap_conn_config *client_cfg)
{
    x->listener = listen_on(x, SERVER_IP, 0);
    dial(x, SERVER_IP, ap_conn_listener_port(x->listener), client_cfg);
    RUN_UNTIL(x, x->connects == 1 && x->accepted == 1, 5000);
    assert_int_equal(x->connects, 1);
    assert_int_equal(x->accepted, 1);
}

/* ---- tests ----------------------------------------------------------------------------- */

static void test_round_trip_both_ways(void **state)
{
    struct ctx *x = *state;
    x->echo = true;
    connect_pair(x, NULL);

    /* The accepted side sees the dialer's configured source address. */
    assert_string_equal(x->accepted_peer_ip, CLIENT_IP);
    assert_string_equal(ap_conn_local_ip(x->client), CLIENT_IP);
    assert_string_equal(ap_conn_peer_ip(x->client), SERVER_IP);
    char want[64];
    snprintf(want, sizeof want, "%s:%u", SERVER_IP, (unsigned)ap_conn_listener_port(x->listener));
    assert_string_equal(x->client_peer, want);
    assert_string_equal(x->accepted_local, want);

    static const uint8_t body[] = {0x81, 0xa2, 'i', 'd', 0x2a};
    x->server_next_hlc = 100;
    struct ap_wire_msg m = make_msg(AP_WIRE_DELTA, 100, body, sizeof body);
    assert_int_equal(ap_conn_send(x->client, &m), 0);
    RUN_UNTIL(x, x->client_msgs == 1, 5000);
    assert_int_equal(x->server_msgs, 1);
    assert_string_equal(x->server_sender, "r1-s1");
    assert_int_equal(x->server_body_len, sizeof body);
    assert_memory_equal(x->server_body, body, sizeof body);
    assert_int_equal(x->client_msgs, 1);
    assert_int_equal(x->client_last_type, AP_WIRE_ACK);
    assert_int_equal(x->client_last_hlc, 101);
    assert_int_equal(ap_conn_queued(x->client), 0);

    /* The server speaks first too. */
    struct ap_wire_msg hb = make_msg(AP_WIRE_HEARTBEAT, 500, NULL, 0);
    assert_int_equal(ap_conn_send(x->server, &hb), 0);
    RUN_UNTIL(x, x->client_msgs == 2, 5000);
    assert_int_equal(x->client_last_type, AP_WIRE_HEARTBEAT);
    assert_int_equal(x->client_last_hlc, 500);

    /* A local close is reason 0 here and a lost peer there. */
    ap_conn_close(x->client, NULL);
    RUN_UNTIL(x, x->client_closed == 1 && x->server_closed == 1, 5000);
    assert_int_equal(x->client_reason, 0);
    assert_int_equal(x->server_reason, AP_ECONN);
    assert_string_equal(x->server_errmsg, "peer closed the connection");
    assert_null(x->client);
    assert_null(x->server);
}

static void test_burst_in_order(void **state)
{
    struct ctx *x = *state;
    connect_pair(x, NULL);
    uint8_t body[300];
    for (size_t i = 0; i < sizeof body; i++) {
        body[i] = (uint8_t)i;
    }
    enum { COUNT = 2000 };
    for (uint64_t i = 0; i < COUNT; i++) {
        struct ap_wire_msg m = make_msg(AP_WIRE_DELTA, i, body, i % sizeof body);
        assert_int_equal(ap_conn_send(x->client, &m), 0);
    }
    RUN_UNTIL(x, x->server_msgs == COUNT, 10000);
    assert_int_equal(x->server_msgs, COUNT);
    assert_true(x->server_in_order);
    /* The last one carried (COUNT-1) % 300 bytes of the pattern. */
    assert_int_equal(x->server_body_len, (COUNT - 1) % sizeof body);
    assert_memory_equal(x->server_body, body, x->server_body_len);
}

static void test_oversized_frame_closes(void **state)
{
    struct ctx *x = *state;
    char *logbuf = NULL;
    size_t loglen = 0;
    FILE *logf = open_memstream(&logbuf, &loglen);
    assert_non_null(logf);
    ap_log_init("test", AP_LOG_WARN, logf);

    x->server_cfg.max_frame = 1024;
    connect_pair(x, NULL);
    static uint8_t big[2000];
    struct ap_wire_msg m = make_msg(AP_WIRE_DELTA, 0, big, sizeof big);
    assert_int_equal(ap_conn_send(x->client, &m), 0);
    RUN_UNTIL(x, x->server_closed == 1 && x->client_closed == 1, 5000);
    assert_int_equal(x->server_msgs, 0);
    assert_int_equal(x->server_reason, AP_ETOOBIG);
    assert_non_null(strstr(x->server_errmsg, "above the limit of 1024"));
    assert_int_equal(x->client_reason, AP_ECONN);

    ap_log_init("test", AP_LOG_WARN, NULL);
    fclose(logf);
    assert_non_null(strstr(logbuf, "msg=conn_closed peer=127.0.0.2:"));
    assert_non_null(strstr(logbuf, "reason=\"bad frame: frame length"));
    free(logbuf);
}

/* A plain blocking socket from CLIENT_IP, for bytes ap_conn would never send. */
static int raw_connect(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    inet_pton(AF_INET, CLIENT_IP, &a.sin_addr);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    inet_pton(AF_INET, SERVER_IP, &a.sin_addr);
    a.sin_port = htons(port);
    /* The kernel completes the handshake from the backlog, so this does not block. */
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    return fd;
}

static void test_undecodable_frames_close(void **state)
{
    struct ctx *x = *state;
    x->listener = listen_on(x, SERVER_IP, 0);
    uint16_t port = ap_conn_listener_port(x->listener);
    static const struct {
        const char *bytes;
        size_t len;
        int reason;
        const char *why;
    } cases[] = {
        {"\0\0\0\3\x01\x02\x03", 7, AP_EPROTO, "bad frame: msgpack: 2 trailing bytes"},
        {"\0\0\0\1\x90", 5, AP_EPROTO, "bad frame: frame is not a map"},
        {"\0\0\0\0", 4, AP_EPROTO, "bad frame: frame length 0"},
        {"\xff\xff\xff\xff", 4, AP_ETOOBIG, "bad frame: frame length 4294967295 above"},
    };
    for (size_t i = 0; i < AP_ARRAY_LEN(cases); i++) {
        int fd = raw_connect(port);
        assert_int_equal(write(fd, cases[i].bytes, cases[i].len), (ssize_t)cases[i].len);
        RUN_UNTIL(x, x->server_closed == (int)i + 1, 5000);
        assert_int_equal(x->server_closed, (int)i + 1);
        assert_int_equal(x->server_reason, cases[i].reason);
        assert_true(strncmp(x->server_errmsg, cases[i].why, strlen(cases[i].why)) == 0);
        close(fd);
    }
    assert_int_equal(x->server_msgs, 0);
}

static void test_close_inside_on_msg_stops_delivery(void **state)
{
    struct ctx *x = *state;
    x->close_server_after = 3;
    connect_pair(x, NULL);
    /* Ten frames that arrive in one read: delivery stops at the close. */
    for (uint64_t i = 0; i < 10; i++) {
        struct ap_wire_msg m = make_msg(AP_WIRE_DELTA, i, NULL, 0);
        assert_int_equal(ap_conn_send(x->client, &m), 0);
    }
    RUN_UNTIL(x, x->server_closed == 1 && x->client_closed == 1, 5000);
    assert_int_equal(x->server_msgs, 3);
    assert_int_equal(x->server_reason, 0);
    assert_string_equal(x->server_errmsg, "closed locally");
}

static void on_sent(struct ap_conn *c, int status, void *data)
{
    struct ctx *x = data;
    AP_UNUSED(c);
    if (status == 0) {
        x->sent_ok++;
    } else if (status == AP_ECANCELED) {
        x->sent_canceled++;
    } else {
        x->sent_other++;
    }
    x->last_sent_at = ++x->events;
}

static void client_close_done(struct ap_conn *c)
{
    struct ctx *x = ap_conn_data(c);
    x->close_cb_at = ++x->events;
    x->closes_done++;
}

/* A listening socket that never accepts: connects succeed, nothing is read. */
static int silent_listener(uint16_t *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    inet_pton(AF_INET, SERVER_IP, &a.sin_addr);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(fd, 4), 0);
    socklen_t len = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    *port = ntohs(a.sin_port);
    return fd;
}

static void test_close_cancels_pending_sends(void **state)
{
    struct ctx *x = *state;
    uint16_t port = 0;
    int lfd = silent_listener(&port);
    struct ap_conn_config cfg = {.max_queued = 8u << 20};
    dial(x, SERVER_IP, port, &cfg);
    /* Not connected yet: nothing can be queued. */
    struct ap_wire_msg early = make_msg(AP_WIRE_HEARTBEAT, 0, NULL, 0);
    assert_int_equal(ap_conn_send(x->client, &early), AP_ECONN);
    RUN_UNTIL(x, x->connects == 1, 5000);
    assert_int_equal(x->connects, 1);

    /* 3 MiB frames to a peer that reads nothing: the socket buffers fill. */
    size_t n = 3u << 20;
    uint8_t *big = ap_calloc(1, n);
    assert_non_null(big);
    struct ap_wire_msg m = make_msg(AP_WIRE_DELTA, 0, big, n);
    assert_int_equal(ap_conn_send_cb(x->client, &m, on_sent, x), 0);
    assert_int_equal(ap_conn_send_cb(x->client, &m, on_sent, x), 0);
    /* The queue limit (8 MiB) refuses a third; its callback never fires. */
    assert_int_equal(ap_conn_send_cb(x->client, &m, on_sent, x), AP_EAGAIN);
    assert_true(ap_conn_queued(x->client) > n);
    ap_free(big);

    ap_conn_close(x->client, client_close_done);
    ap_conn_close(x->client, NULL); /* a second close is harmless */
    assert_int_equal(ap_conn_send(x->client, &early), AP_ECONN);
    RUN_UNTIL(x, x->closes_done == 1, 5000);
    assert_int_equal(x->closes_done, 1);
    assert_int_equal(x->sent_ok + x->sent_canceled + x->sent_other, 2);
    assert_true(x->sent_canceled >= 1);
    assert_int_equal(x->sent_other, 0);
    /* Sends complete, then on_close, then the close callback. */
    assert_true(x->last_sent_at < x->on_close_at);
    assert_true(x->on_close_at < x->close_cb_at);
    assert_int_equal(x->client_reason, 0);
    close(lfd);
}

static void test_dial_refused_and_bad_addresses(void **state)
{
    struct ctx *x = *state;
    /* A port that was free a moment ago and has no listener. */
    uint16_t port = 0;
    int fd = silent_listener(&port);
    close(fd);
    dial(x, SERVER_IP, port, NULL);
    RUN_UNTIL(x, x->client_closed == 1, 5000);
    assert_int_equal(x->client_closed, 1);
    assert_int_equal(x->client_reason, AP_ECONN);
    assert_int_equal(x->connects, 0);

    char errmsg[AP_ERRMSG_SIZE] = "";
    struct ap_conn *c = NULL;
    assert_int_equal(ap_conn_dial(&x->loop, NULL, "not-an-ip", 1, NULL, NULL, &c, errmsg),
                     AP_EINVAL);
    assert_string_equal(errmsg, "dial: bad remote address 'not-an-ip'");
    assert_int_equal(ap_conn_dial(&x->loop, "300.1.1.1", SERVER_IP, 1, NULL, NULL, &c, errmsg),
                     AP_EINVAL);
    struct ap_conn_listener *l = NULL;
    assert_int_equal(ap_conn_listen(&x->loop, "nope", 0, NULL, server_on_accept, x, &l, errmsg),
                     AP_EINVAL);
    /* A port already listened on is busy. */
    x->listener = listen_on(x, SERVER_IP, 0);
    assert_int_equal(ap_conn_listen(&x->loop, SERVER_IP, ap_conn_listener_port(x->listener), NULL,
                                    server_on_accept, x, &l, errmsg),
                     AP_EBUSY);
    assert_non_null(strstr(errmsg, "address already in use"));
    struct ap_conn_dialer *d = NULL;
    struct ap_conn_dialer_config dc = {.remote_ip = "x", .remote_port = 1};
    assert_int_equal(ap_conn_dialer_start(&x->loop, &dc, &d, errmsg), AP_EINVAL);
}

static void test_idle_timeout(void **state)
{
    struct ctx *x = *state;
    x->server_cfg.idle_timeout_ms = 100;
    connect_pair(x, NULL);
    RUN_UNTIL(x, x->server_closed == 1 && x->client_closed == 1, 5000);
    assert_int_equal(x->server_reason, AP_ETIMEDOUT);
    assert_string_equal(x->server_errmsg, "idle: nothing received for 100 ms");
    assert_int_equal(x->client_reason, AP_ECONN);
}

static void start_dialer_stable(struct ctx *x, uint16_t port, uint64_t stable_ms)
{
    struct ap_conn_dialer_config dc = {
        .local_ip = CLIENT_IP,
        .remote_ip = SERVER_IP,
        .remote_port = port,
        .backoff_base_ms = 20,
        .backoff_max_ms = 200,
        .stable_ms = stable_ms,
        .seed = 42,
        .handlers = client_handlers,
    };
    dc.handlers.data = x;
    char errmsg[AP_ERRMSG_SIZE] = "";
    if (ap_conn_dialer_start(&x->loop, &dc, &x->dialer, errmsg) != 0) {
        fail_msg("dialer: %s", errmsg);
    }
}

static void start_dialer(struct ctx *x, uint16_t port)
{
    start_dialer_stable(x, port, 60000);
}

static void test_dialer_reconnects_after_restart(void **state)
{
    struct ctx *x = *state;
    x->echo = true;
    x->listener = listen_on(x, SERVER_IP, 0);
    uint16_t port = ap_conn_listener_port(x->listener);
    start_dialer(x, port);
    RUN_UNTIL(x, x->connects == 1 && x->accepted == 1, 5000);
    assert_int_equal(x->connects, 1);
    assert_string_equal(x->accepted_peer_ip, CLIENT_IP);
    assert_non_null(ap_conn_dialer_conn(x->dialer));

    /* The server goes away entirely. */
    ap_conn_close(x->server, NULL);
    ap_conn_listener_close(x->listener, listener_closed);
    x->listener = NULL;
    RUN_UNTIL(x, x->client_closed == 1, 5000);
    assert_int_equal(x->client_closed, 1);
    assert_int_equal(x->client_reason, AP_ECONN);
    assert_null(ap_conn_dialer_conn(x->dialer));

    /* While it is down the dialer keeps trying, refused each time. */
    RUN_UNTIL(x, ap_conn_dialer_attempts(x->dialer) >= 3, 3000);
    assert_true(ap_conn_dialer_attempts(x->dialer) >= 3);
    assert_int_equal(x->connects, 1);

    /* Back on the same port: the dialer finds it, from the same source address. */
    x->listener = listen_on(x, SERVER_IP, port);
    RUN_UNTIL(x, x->connects == 2 && x->accepted == 2, 5000);
    assert_int_equal(x->connects, 2);
    assert_string_equal(x->accepted_peer_ip, CLIENT_IP);
    struct ap_wire_msg m = make_msg(AP_WIRE_HELLO, 0, NULL, 0);
    assert_int_equal(ap_conn_send(ap_conn_dialer_conn(x->dialer), &m), 0);
    RUN_UNTIL(x, x->client_msgs == 1, 5000);
    assert_int_equal(x->client_last_type, AP_WIRE_ACK);

    /* Closing the dialer closes its link: on_close with reason 0. */
    ap_conn_dialer_close(x->dialer, dialer_closed);
    x->dialer = NULL;
    RUN_UNTIL(x, x->client_closed == 2 && x->server_closed == 2, 5000);
    assert_int_equal(x->client_reason, 0);
}

static void test_dialer_follows_redirect(void **state)
{
    struct ctx *x = *state;
    /* The follower on SERVER_IP redirects to the leader on OTHER_IP. */
    x->listener2 = listen_on(x, OTHER_IP, 0);
    char target[64];
    snprintf(target, sizeof target, "%s:%u", OTHER_IP,
             (unsigned)ap_conn_listener_port(x->listener2));
    x->listener = listen_on(x, SERVER_IP, 0);
    x->redirect_to = target;
    start_dialer(x, ap_conn_listener_port(x->listener));
    RUN_UNTIL(x, x->connects == 1, 5000);
    RUN_UNTIL(x, x->connects == 2, 5000);
    assert_int_equal(x->connects, 2);
    assert_string_equal(x->client_peer, target);
    /* The redirected link closed locally (reason 0), once. */
    assert_int_equal(x->client_closed, 1);
    assert_int_equal(x->client_reason, 0);
    assert_string_equal(x->accepted_peer_ip, CLIENT_IP);
    assert_int_equal(ap_conn_dialer_set_target(x->dialer, "bad", 1), AP_EINVAL);
}

static void test_dialer_backoff_resets_after_stable_link(void **state)
{
    struct ctx *x = *state;
    x->listener = listen_on(x, SERVER_IP, 0);
    start_dialer_stable(x, ap_conn_listener_port(x->listener), 50);
    RUN_UNTIL(x, x->accepted == 1, 5000);
    assert_int_equal(x->connects, 1);
    assert_int_equal(ap_conn_dialer_attempts(x->dialer), 0);

    /* Up for longer than stable_ms: the next wait starts from the base again. */
    RUN_UNTIL(x, false, 120);
    ap_conn_close(x->server, NULL);
    RUN_UNTIL(x, x->client_closed == 1, 5000);
    assert_int_equal(x->client_closed, 1);
    assert_int_equal(ap_conn_dialer_attempts(x->dialer), 1);

    /* A link that drops at once does not reset it: the wait keeps growing. */
    RUN_UNTIL(x, x->accepted == 2, 5000);
    assert_int_equal(x->connects, 2);
    ap_conn_close(x->server, NULL);
    RUN_UNTIL(x, x->client_closed == 2, 5000);
    assert_int_equal(ap_conn_dialer_attempts(x->dialer), 2);
}

static void test_dialer_close_while_waiting(void **state)
{
    struct ctx *x = *state;
    uint16_t port = 0;
    int fd = silent_listener(&port);
    close(fd);
    /* Nobody listens: the dialer is between attempts or mid-attempt when closed. */
    start_dialer(x, port);
    RUN_UNTIL(x, ap_conn_dialer_attempts(x->dialer) >= 2, 3000);
    assert_true(ap_conn_dialer_attempts(x->dialer) >= 2);
    /* Failed attempts never reach the caller's callbacks. */
    assert_int_equal(x->connects, 0);
    assert_int_equal(x->client_closed, 0);
}

static void test_backoff(void **state)
{
    AP_UNUSED(state);
    struct ap_conn_backoff b;
    ap_conn_backoff_init(&b, 100, 5000, 1);
    uint64_t first[20];
    uint64_t cap = 100;
    for (int k = 0; k < 20; k++) {
        uint64_t d = ap_conn_backoff_next(&b);
        first[k] = d;
        assert_true(d <= 5000);
        assert_true(d >= cap / 2 && d <= cap);
        cap = cap * 2 > 5000 ? 5000 : cap * 2;
    }
    /* Delays grow: late ones are at least half the maximum, early ones at most the base. */
    assert_true(first[0] <= 100);
    assert_true(first[19] >= 2500);
    assert_true(first[6] > first[0]);

    /* The same seed replays exactly; another seed differs. */
    struct ap_conn_backoff same;
    struct ap_conn_backoff other;
    ap_conn_backoff_init(&same, 100, 5000, 1);
    ap_conn_backoff_init(&other, 100, 5000, 2);
    bool differs = false;
    for (int k = 0; k < 20; k++) {
        assert_true(ap_conn_backoff_next(&same) == first[k]);
        differs = differs || ap_conn_backoff_next(&other) != first[k];
    }
    assert_true(differs);

    /* Reset starts over at the base. */
    ap_conn_backoff_reset(&b);
    assert_true(ap_conn_backoff_next(&b) <= 100);

    /* Defaults, and a max below the base is raised to it. */
    ap_conn_backoff_init(&b, 0, 0, 9);
    assert_int_equal(b.base_ms, AP_CONN_BACKOFF_BASE_MS);
    assert_int_equal(b.max_ms, AP_CONN_BACKOFF_MAX_MS);
    ap_conn_backoff_init(&b, 300, 10, 9);
    for (int k = 0; k < 5; k++) {
        assert_true(ap_conn_backoff_next(&b) <= 300);
    }
    /* Many failures never overflow past the maximum. */
    ap_conn_backoff_init(&b, 1, UINT64_MAX, 3);
    b.attempt = UINT32_MAX - 1;
    assert_true(ap_conn_backoff_next(&b) >= UINT64_MAX / 4);
    assert_int_equal(b.attempt, UINT32_MAX);
    ap_conn_backoff_next(&b);
    assert_int_equal(b.attempt, UINT32_MAX);
}

static void test_split_addr(void **state)
{
    (void)state;
    char ip[16];
    uint16_t port = 0;
    assert_int_equal(ap_conn_split_addr("127.0.11.1:7102", ip, sizeof ip, &port), 0);
    assert_string_equal(ip, "127.0.11.1");
    assert_int_equal(port, 7102);
    static const char *const bad[] = {"127.0.0.1",
                                      ":80",
                                      "127.0.0.1:",
                                      "127.0.0.1:0",
                                      "127.0.0.1:65536",
                                      "127.0.0.1:8x",
                                      "too-long-for-16-bytes:1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(ap_conn_split_addr(bad[i], ip, sizeof ip, &port), AP_EINVAL);
    }
}

int main(void)
{
    ap_log_init("test", AP_LOG_WARN, NULL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_trip_both_ways, setup, teardown),
        cmocka_unit_test_setup_teardown(test_burst_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_oversized_frame_closes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_undecodable_frames_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_inside_on_msg_stops_delivery, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_cancels_pending_sends, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dial_refused_and_bad_addresses, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idle_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dialer_reconnects_after_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dialer_follows_redirect, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dialer_backoff_resets_after_stable_link, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_dialer_close_while_waiting, setup, teardown),
        cmocka_unit_test(test_backoff),
        cmocka_unit_test(test_split_addr),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
