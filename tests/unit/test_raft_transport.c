/* Unit tests for raft_transport: real TCP on 127.0.0.x; bound source address, raft's handshake,
 * and the watch that reports a peer closing an outgoing connection. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "ap/base.h"
#include "ap/raft_transport.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PEER_IP "127.0.0.1"
#define SELF    "127.0.0.2:7999"

struct ctx {
    uv_loop_t loop;
    uv_timer_t deadline;
    bool deadline_hit;
    uv_tcp_t server;
    int port;
    uv_tcp_t *accepted; /* the peer's end of our outgoing connection */
    char peer_of_accepted[64];
    uint8_t handshake[128];
    size_t handshake_len;

    struct ap_raft_transport t;
    struct raft_uv_connect req;
    uv_stream_t *stream; /* what the transport handed to "raft" */
    int connect_status;
    bool connected;

    int lost;
    raft_id lost_id;
    char lost_address[64];

    uv_write_t write;
    int write_status;
    bool written;
    bool transport_closed;
};

static void on_deadline(uv_timer_t *t)
{
    struct ctx *c = t->data;
    c->deadline_hit = true;
    uv_stop(&c->loop);
}

/* Run the loop until *flag is true (bounded by a 5 s deadline). */
static void run_until(struct ctx *c, const bool *flag)
{
    uv_timer_start(&c->deadline, on_deadline, 5000, 0);
    for (int i = 0; i < 10000 && !*flag && !c->deadline_hit; i++) {
        uv_run(&c->loop, UV_RUN_ONCE);
    }
    uv_timer_stop(&c->deadline);
    assert_false(c->deadline_hit);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct ctx *c = h->data;
    AP_UNUSED(suggested);
    buf->base = (char *)c->handshake + c->handshake_len;
    buf->len = sizeof c->handshake - c->handshake_len;
}

static void on_server_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct ctx *c = s->data;
    AP_UNUSED(buf);
    if (n > 0) {
        c->handshake_len += (size_t)n;
    }
}

static void on_connection(uv_stream_t *server, int status)
{
    struct ctx *c = server->data;
    assert_int_equal(status, 0);
    c->accepted = calloc(1, sizeof *c->accepted);
    assert_non_null(c->accepted);
    uv_tcp_init(&c->loop, c->accepted);
    c->accepted->data = c;
    assert_int_equal(uv_accept(server, (uv_stream_t *)c->accepted), 0);
    struct sockaddr_in peer;
    int len = sizeof peer;
    uv_tcp_getpeername(c->accepted, (struct sockaddr *)&peer, &len);
    uv_ip4_name(&peer, c->peer_of_accepted, sizeof c->peer_of_accepted);
    uv_read_start((uv_stream_t *)c->accepted, alloc_cb, on_server_read);
}

static void on_connected(struct raft_uv_connect *req, uv_stream_t *stream, int status)
{
    struct ctx *c = req->data;
    c->stream = stream;
    c->connect_status = status;
    c->connected = true;
}

static void on_lost(void *data, raft_id id, const char *address)
{
    struct ctx *c = data;
    c->lost++;
    c->lost_id = id;
    snprintf(c->lost_address, sizeof c->lost_address, "%s", address);
}

static void on_written(uv_write_t *w, int status)
{
    struct ctx *c = w->data;
    c->write_status = status;
    c->written = true;
}

static void on_transport_closed(struct raft_uv_transport *t)
{
    struct ap_raft_transport *rt = AP_CONTAINER_OF(t, struct ap_raft_transport, iface);
    struct ctx *c = AP_CONTAINER_OF(rt, struct ctx, t);
    c->transport_closed = true;
}

static void free_handle(uv_handle_t *h)
{
    raft_free(h);
}

static void free_accepted(uv_handle_t *h)
{
    free(h);
}

static int setup(void **state)
{
    signal(SIGPIPE, SIG_IGN); /* as the daemons do: writes to a shut connection fail */
    struct ctx *c = calloc(1, sizeof *c);
    assert_non_null(c);
    assert_int_equal(uv_loop_init(&c->loop), 0);
    uv_timer_init(&c->loop, &c->deadline);
    c->deadline.data = c;
    uv_tcp_init(&c->loop, &c->server);
    c->server.data = c;
    struct sockaddr_in addr;
    uv_ip4_addr(PEER_IP, 0, &addr);
    assert_int_equal(uv_tcp_bind(&c->server, (const struct sockaddr *)&addr, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&c->server, 8, on_connection), 0);
    int len = sizeof addr;
    uv_tcp_getsockname(&c->server, (struct sockaddr *)&addr, &len);
    c->port = ntohs(addr.sin_port);

    assert_int_equal(ap_raft_transport_init(&c->t, &c->loop), 0);
    assert_int_equal(c->t.iface.init(&c->t.iface, 5, SELF), 0);
    c->t.peer_lost = on_lost;
    c->t.peer_lost_data = c;
    *state = c;
    return 0;
}

static int teardown(void **state)
{
    struct ctx *c = *state;
    if (c->stream != NULL) {
        uv_close((uv_handle_t *)c->stream, free_handle);
    }
    if (c->accepted != NULL) {
        uv_close((uv_handle_t *)c->accepted, free_accepted);
    }
    c->t.iface.close(&c->t.iface, on_transport_closed);
    run_until(c, &c->transport_closed);
    ap_raft_transport_close(&c->t);
    uv_close((uv_handle_t *)&c->server, NULL);
    uv_close((uv_handle_t *)&c->deadline, NULL);
    for (int i = 0; i < 1000 && uv_run(&c->loop, UV_RUN_NOWAIT) != 0; i++) {
    }
    assert_int_equal(uv_loop_close(&c->loop), 0);
    free(c);
    return 0;
}

static void dial(struct ctx *c)
{
    char peer[64];
    snprintf(peer, sizeof peer, "%s:%d", PEER_IP, c->port);
    c->req.data = c;
    assert_int_equal(c->t.iface.connect(&c->t.iface, &c->req, 7, peer, on_connected), 0);
    run_until(c, &c->connected);
    assert_int_equal(c->connect_status, 0);
    assert_non_null(c->stream);
}

static uint64_t le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) {
        v = (v << 8) | p[i];
    }
    return v;
}

/* The connection leaves from the node's own IP and opens with raft's handshake. */
static void test_bound_and_handshake(void **state)
{
    struct ctx *c = *state;
    dial(c);
    bool got = false;
    for (int i = 0; i < 200 && !got; i++) {
        uv_run(&c->loop, UV_RUN_NOWAIT);
        got = c->handshake_len >= 24 + 16;
        if (!got) {
            uv_sleep(5);
        }
    }
    assert_true(got);
    assert_string_equal(c->peer_of_accepted, "127.0.0.2");
    assert_int_equal(le64(c->handshake), 1);     /* protocol */
    assert_int_equal(le64(c->handshake + 8), 5); /* our id */
    assert_int_equal(le64(c->handshake + 16), 16);
    assert_string_equal((const char *)c->handshake + 24, SELF);
    assert_int_equal(c->lost, 0);
}

/* The peer closes: the owner hears about it, and the next write fails instead of vanishing. */
static void test_peer_close_is_reported(void **state)
{
    struct ctx *c = *state;
    dial(c);
    bool accepted = false;
    for (int i = 0; i < 200 && !accepted; i++) {
        uv_run(&c->loop, UV_RUN_NOWAIT);
        accepted = c->accepted != NULL;
        if (!accepted) {
            uv_sleep(5);
        }
    }
    assert_true(accepted);
    uv_close((uv_handle_t *)c->accepted, free_accepted);
    c->accepted = NULL;
    bool lost = false;
    for (int i = 0; i < 400 && !lost; i++) {
        uv_run(&c->loop, UV_RUN_NOWAIT);
        lost = c->lost > 0;
        if (!lost) {
            uv_sleep(5);
        }
    }
    assert_int_equal(c->lost, 1);
    assert_int_equal(c->lost_id, 7);
    char peer[64];
    snprintf(peer, sizeof peer, "%s:%d", PEER_IP, c->port);
    assert_string_equal(c->lost_address, peer);

    uv_buf_t buf = uv_buf_init("x", 1);
    c->write.data = c;
    assert_int_equal(uv_write(&c->write, c->stream, &buf, 1, on_written), 0);
    run_until(c, &c->written);
    assert_true(c->write_status < 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_bound_and_handshake, setup, teardown),
        cmocka_unit_test_setup_teardown(test_peer_close_is_reported, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
