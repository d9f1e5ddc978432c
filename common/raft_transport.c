/* raft_transport: a canonical/raft TCP transport that binds outgoing connections to the node's own
 * IP. */
#include "ap/raft_transport.h"

#include "ap/base.h"
#include "ap/err.h"
#include "ap/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* raft's TCP handshake (src/uv_tcp_connect.c of canonical/raft): three
 * little-endian uint64 (protocol 1, server id, address buffer size) and the
 * NUL-terminated address padded to a multiple of 8 bytes. */
#define HANDSHAKE_PROTOCOL 1

/* The watch over one outgoing connection (see ap_raft_transport_init). */
struct ap_raft_watch {
    uv_poll_t poll;
    struct ap_raft_transport *t;
    int fd; /* dup of the stream's descriptor, closed with the watch */
    raft_id id;
    char address[64];
    struct ap_raft_watch *prev, *next;
};

/* One outgoing connection attempt. */
struct ap_raft_dial {
    struct ap_raft_transport *t;
    struct raft_uv_connect *req;
    raft_id id;
    char address[64];
    uv_tcp_t *tcp;
    uv_connect_t connect;
    uv_write_t write;
    uv_buf_t handshake;
    int status;
    struct ap_raft_dial *prev, *next;
};

static struct ap_raft_transport *from_iface(struct raft_uv_transport *iface)
{
    return AP_CONTAINER_OF(iface, struct ap_raft_transport, iface);
}

static void dial_unlink(struct ap_raft_dial *d)
{
    struct ap_raft_transport *t = d->t;
    if (d->prev != NULL) {
        d->prev->next = d->next;
    } else {
        t->pending = d->next;
    }
    if (d->next != NULL) {
        d->next->prev = d->prev;
    }
    d->prev = d->next = NULL;
}

static int split_address(const char *address, char *ip, size_t ip_size, int *port)
{
    const char *colon = strrchr(address, ':');
    if (colon == NULL || (size_t)(colon - address) >= ip_size) {
        return AP_EINVAL;
    }
    memcpy(ip, address, (size_t)(colon - address));
    ip[colon - address] = '\0';
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (*end != '\0' || p <= 0 || p > 65535) {
        return AP_EINVAL;
    }
    *port = (int)p;
    return 0;
}

static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

static int encode_handshake(struct ap_raft_transport *t, uv_buf_t *buf)
{
    size_t addr_len = strlen(t->address) + 1;
    addr_len = (addr_len + 7) / 8 * 8;
    buf->len = 24 + addr_len;
    buf->base = raft_calloc(1, buf->len);
    if (buf->base == NULL) {
        return RAFT_NOMEM;
    }
    uint8_t *p = (uint8_t *)buf->base;
    put_le64(p, HANDSHAKE_PROTOCOL);
    put_le64(p + 8, t->id);
    put_le64(p + 16, addr_len);
    memcpy(p + 24, t->address, strlen(t->address));
    return 0;
}

/* The handle is closed after a failure or a cancel: report it. */
static void dial_closed(uv_handle_t *h)
{
    struct ap_raft_dial *d = h->data;
    d->req->cb(d->req, NULL, d->status);
    raft_free(d->tcp);
    raft_free(d);
}

static void dial_fail(struct ap_raft_dial *d, int status)
{
    dial_unlink(d);
    d->status = status;
    uv_close((uv_handle_t *)d->tcp, dial_closed);
}

static void watch_freed(uv_handle_t *h)
{
    struct ap_raft_watch *w = h->data;
    close(w->fd);
    ap_free(w);
}

static void watch_close(struct ap_raft_watch *w)
{
    struct ap_raft_transport *t = w->t;
    if (w->prev != NULL) {
        w->prev->next = w->next;
    } else {
        t->watches = w->next;
    }
    if (w->next != NULL) {
        w->next->prev = w->prev;
    }
    uv_poll_stop(&w->poll);
    uv_close((uv_handle_t *)&w->poll, watch_freed);
}

static void watch_event(uv_poll_t *p, int status, int events)
{
    struct ap_raft_watch *w = p->data;
    AP_UNUSED(events);
    char buf[64];
    ssize_t n = status == 0 ? recv(w->fd, buf, sizeof buf, MSG_DONTWAIT) : -1;
    if (n > 0 || (n < 0 && status == 0 && (errno == EAGAIN || errno == EINTR))) {
        return; /* the peer sends nothing this way; drop stray bytes */
    }
    shutdown(w->fd, SHUT_WR);
    AP_LOG(AP_LOG_INFO, "raft_peer_closed id=%llu address=%s", (unsigned long long)w->id,
           w->address);
    struct ap_raft_transport *t = w->t;
    raft_id id = w->id;
    char address[sizeof w->address];
    ap_strlcpy(address, w->address, sizeof address);
    watch_close(w);
    if (!t->closing && t->peer_lost != NULL) {
        t->peer_lost(t->peer_lost_data, id, address);
    }
}

/* Watch the connection d hands to raft; without a watch it works as raft's stock one. */
static void watch_start(struct ap_raft_dial *d)
{
    struct ap_raft_transport *t = d->t;
    for (struct ap_raft_watch *o = t->watches; o != NULL; o = o->next) {
        if (o->id == d->id) {
            watch_close(o); /* raft replaced that connection */
            break;
        }
    }
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)d->tcp, &fd) != 0) {
        return;
    }
    if (d->address[0] == '\0') {
        return; /* too long to keep: peer_lost must hand raft_uv the exact address it knows */
    }
    struct ap_raft_watch *w = ap_calloc(1, sizeof *w);
    if (w == NULL) {
        return;
    }
    w->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (w->fd < 0 || uv_poll_init(t->loop, &w->poll, w->fd) != 0) {
        if (w->fd >= 0) {
            close(w->fd);
        }
        ap_free(w);
        return;
    }
    w->t = t;
    w->id = d->id;
    ap_strlcpy(w->address, d->address, sizeof w->address);
    w->poll.data = w;
    w->next = t->watches;
    if (w->next != NULL) {
        w->next->prev = w;
    }
    t->watches = w;
    if (uv_poll_start(&w->poll, UV_READABLE | UV_DISCONNECT, watch_event) != 0) {
        watch_close(w);
    }
}

static void dial_written(uv_write_t *w, int status)
{
    struct ap_raft_dial *d = w->data;
    raft_free(d->handshake.base);
    d->handshake.base = NULL;
    if (d->status == RAFT_CANCELED) {
        return; /* close() already closes the handle. */
    }
    if (status != 0) {
        dial_fail(d, RAFT_NOCONNECTION);
        return;
    }
    dial_unlink(d);
    watch_start(d);
    /* The stream now belongs to raft, which closes and frees it with raft_free. */
    d->req->cb(d->req, (uv_stream_t *)d->tcp, 0);
    raft_free(d);
}

static void dial_connected(uv_connect_t *c, int status)
{
    struct ap_raft_dial *d = c->data;
    if (d->status == RAFT_CANCELED) {
        return;
    }
    if (status != 0) {
        dial_fail(d, RAFT_NOCONNECTION);
        return;
    }
    int rv = encode_handshake(d->t, &d->handshake);
    if (rv != 0) {
        dial_fail(d, rv);
        return;
    }
    d->write.data = d;
    if (uv_write(&d->write, (uv_stream_t *)d->tcp, &d->handshake, 1, dial_written) != 0) {
        raft_free(d->handshake.base);
        d->handshake.base = NULL;
        dial_fail(d, RAFT_NOCONNECTION);
    }
}

static int transport_init(struct raft_uv_transport *iface, raft_id id, const char *address)
{
    struct ap_raft_transport *t = from_iface(iface);
    int port;
    if (strlen(address) >= sizeof t->address ||
        split_address(address, t->local_ip, sizeof t->local_ip, &port) != 0) {
        snprintf(iface->errmsg, sizeof iface->errmsg, "invalid raft address '%s'", address);
        return RAFT_INVALID;
    }
    t->id = id;
    ap_strlcpy(t->address, address, sizeof t->address);
    return t->inner.init(&t->inner, id, address);
}

static int transport_listen(struct raft_uv_transport *iface, raft_uv_accept_cb cb)
{
    struct ap_raft_transport *t = from_iface(iface);
    /* raft's accept callback finds its state through transport->data. */
    t->inner.data = iface->data;
    int rv = t->inner.listen(&t->inner, cb);
    if (rv != 0) {
        memcpy(iface->errmsg, t->inner.errmsg, sizeof iface->errmsg);
    }
    return rv;
}

static int transport_connect(struct raft_uv_transport *iface, struct raft_uv_connect *req,
                             raft_id id, const char *address, raft_uv_connect_cb cb)
{
    struct ap_raft_transport *t = from_iface(iface);
    struct sockaddr_in local, remote;
    char ip[48];
    int port;

    if (t->closing) {
        return RAFT_CANCELED;
    }
    if (split_address(address, ip, sizeof ip, &port) != 0 || uv_ip4_addr(ip, port, &remote) != 0 ||
        uv_ip4_addr(t->local_ip, 0, &local) != 0) {
        return RAFT_NOCONNECTION;
    }
    struct ap_raft_dial *d = raft_calloc(1, sizeof *d);
    if (d == NULL) {
        return RAFT_NOMEM;
    }
    d->tcp = raft_calloc(1, sizeof *d->tcp);
    if (d->tcp == NULL) {
        raft_free(d);
        return RAFT_NOMEM;
    }
    d->t = t;
    d->req = req;
    d->id = id;
    if (strlen(address) < sizeof d->address) {
        ap_strlcpy(d->address, address, sizeof d->address);
    }
    req->cb = cb;
    uv_tcp_init(t->loop, d->tcp);
    d->tcp->data = d;
    d->connect.data = d;
    uv_tcp_nodelay(d->tcp, 1);
    /* docs/architecture.md: outgoing sockets carry the node's own address, so
     * an iptables rule between two loopback IPs cuts exactly one link. */
    int rv = uv_tcp_bind(d->tcp, (const struct sockaddr *)&local, 0);
    if (rv == 0) {
        rv = uv_tcp_connect(&d->connect, d->tcp, (const struct sockaddr *)&remote, dial_connected);
    }
    if (rv != 0) {
        AP_LOG(AP_LOG_DEBUG, "raft_dial_failed id=%llu address=%s err=\"%s\"",
               (unsigned long long)id, address, uv_strerror(rv));
        uv_close((uv_handle_t *)d->tcp, (uv_close_cb)raft_free);
        raft_free(d);
        return RAFT_NOCONNECTION;
    }
    d->next = t->pending;
    if (d->next != NULL) {
        d->next->prev = d;
    }
    t->pending = d;
    return 0;
}

static void inner_closed(struct raft_uv_transport *inner)
{
    struct ap_raft_transport *t = AP_CONTAINER_OF(inner, struct ap_raft_transport, inner);
    if (t->close_cb != NULL) {
        t->close_cb(&t->iface);
    }
}

static void transport_close(struct raft_uv_transport *iface, raft_uv_transport_close_cb cb)
{
    struct ap_raft_transport *t = from_iface(iface);
    t->closing = 1;
    t->close_cb = cb;
    while (t->watches != NULL) {
        watch_close(t->watches);
    }
    while (t->pending != NULL) {
        struct ap_raft_dial *d = t->pending;
        dial_unlink(d);
        d->status = RAFT_CANCELED;
        uv_close((uv_handle_t *)d->tcp, dial_closed);
    }
    t->inner.close(&t->inner, inner_closed);
}

int ap_raft_transport_init(struct ap_raft_transport *t, uv_loop_t *loop)
{
    memset(t, 0, sizeof *t);
    t->loop = loop;
    int rv = raft_uv_tcp_init(&t->inner, loop);
    if (rv != 0) {
        return ap_err_from_raft(rv);
    }
    t->iface.init = transport_init;
    t->iface.listen = transport_listen;
    t->iface.connect = transport_connect;
    t->iface.close = transport_close;
    return 0;
}

void ap_raft_transport_close(struct ap_raft_transport *t)
{
    raft_uv_tcp_close(&t->inner);
}
