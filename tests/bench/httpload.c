/* httpload: closed-loop HTTP/1.1 keep-alive load generator on libuv, for the benchmarks. */
#include "ap/base.h"

#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <uv.h>

#define MAX_TARGETS     16
#define MAX_CLIENTS     1024
#define MAX_HEADERS     16
#define REQ_CAP         16384 /* one expanded request, head and body */
#define RESP_MAX        (1u << 20)
#define RESP_CHUNK      4096
#define MAX_DURATION_S  600.0
#define STOP_GRACE_MS   2000 /* after the window, closing handles may take at most this */
#define MAX_SAMPLES     (32u * 1024 * 1024)
#define MAX_STATUS_KIND 8
/* A gap counts as the marked event's when it overlaps [mark - BEFORE, mark + AFTER]: answers
 * already on their way when the mark arrives must not hide the outage that follows. */
#define MARK_BEFORE_NS (50ull * 1000000)
#define MARK_AFTER_NS  (500ull * 1000000)

/* ---- templates: literal text, {n} (the request counter), {b64:TEXT} (TEXT expanded, base64) ----
 */

enum seg_kind { SEG_LIT, SEG_N, SEG_B64 };

struct tmpl;

struct seg {
    enum seg_kind kind;
    const char *text; /* SEG_LIT: points into the option string */
    size_t len;
    struct tmpl *inner; /* SEG_B64 */
};

struct tmpl {
    struct seg *segs;
    size_t n;
};

static int tmpl_push(struct tmpl *t, struct seg s)
{
    struct seg *segs = ap_realloc(t->segs, (t->n + 1) * sizeof *segs);
    if (segs == NULL) {
        return -1;
    }
    t->segs = segs;
    t->segs[t->n++] = s;
    return 0;
}

static void tmpl_free(struct tmpl *t)
{
    for (size_t i = 0; i < t->n; i++) {
        if (t->segs[i].inner != NULL) {
            tmpl_free(t->segs[i].inner);
            ap_free(t->segs[i].inner);
        }
    }
    ap_free(t->segs);
    t->segs = NULL;
    t->n = 0;
}

/* Parse s[0..len) into t. Other braces (JSON's) are literal. Returns 0 or -1 (message printed). */
static int tmpl_parse(const char *s, size_t len, struct tmpl *t)
{
    size_t lit = 0, i = 0;
    memset(t, 0, sizeof *t);
    while (i < len) {
        bool is_n = len - i >= 3 && memcmp(s + i, "{n}", 3) == 0;
        bool is_b64 = len - i >= 5 && memcmp(s + i, "{b64:", 5) == 0;
        if (!is_n && !is_b64) {
            i++;
            continue;
        }
        if (i > lit && tmpl_push(t, (struct seg){SEG_LIT, s + lit, i - lit, NULL}) != 0) {
            return -1;
        }
        if (is_n) {
            if (tmpl_push(t, (struct seg){SEG_N, NULL, 0, NULL}) != 0) {
                return -1;
            }
            i += 3;
        } else {
            size_t start = i + 5, j = start;
            int depth = 1;
            for (; j < len && depth > 0; j++) {
                depth += s[j] == '{' ? 1 : s[j] == '}' ? -1 : 0;
            }
            if (depth != 0) {
                fprintf(stderr, "httpload: unterminated {b64:...} in template\n");
                return -1;
            }
            struct tmpl *inner = ap_malloc(sizeof *inner);
            if (inner == NULL || tmpl_parse(s + start, j - 1 - start, inner) != 0) {
                ap_free(inner);
                return -1;
            }
            if (tmpl_push(t, (struct seg){SEG_B64, NULL, 0, inner}) != 0) {
                tmpl_free(inner);
                ap_free(inner);
                return -1;
            }
            i = j;
        }
        lit = i;
    }
    if (i > lit && tmpl_push(t, (struct seg){SEG_LIT, s + lit, i - lit, NULL}) != 0) {
        return -1;
    }
    return 0;
}

static size_t base64(const uint8_t *in, size_t n, char *out)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        v |= i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0;
        v |= i + 2 < n ? in[i + 2] : 0;
        out[o++] = tab[(v >> 18) & 63];
        out[o++] = tab[(v >> 12) & 63];
        out[o++] = i + 1 < n ? tab[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? tab[v & 63] : '=';
    }
    return o;
}

/* Expand t for counter n into out (cap bytes). Returns the length, or -1 if it does not fit. */
static long tmpl_expand(const struct tmpl *t, uint64_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < t->n; i++) {
        const struct seg *s = &t->segs[i];
        if (s->kind == SEG_LIT) {
            if (o + s->len > cap) {
                return -1;
            }
            memcpy(out + o, s->text, s->len);
            o += s->len;
        } else if (s->kind == SEG_N) {
            char num[24];
            int k = snprintf(num, sizeof num, "%" PRIu64, n);
            if (o + (size_t)k > cap) {
                return -1;
            }
            memcpy(out + o, num, (size_t)k);
            o += (size_t)k;
        } else {
            char raw[2048];
            long k = tmpl_expand(s->inner, n, raw, sizeof raw);
            if (k < 0 || o + ((size_t)k + 2) / 3 * 4 > cap) {
                return -1;
            }
            o += base64((const uint8_t *)raw, (size_t)k, out + o);
        }
    }
    return (long)o;
}

/* ---- HTTP/1.1 response framing ---- */

struct resp_info {
    int status;
    size_t total; /* bytes of this response (head and body) */
    bool close;   /* the server closes the connection after it */
};

/* 1: a whole response is in buf (ri filled); 0: need more bytes; -1: malformed. */
static int parse_response(const char *buf, size_t len, struct resp_info *ri)
{
    const char *end = memmem(buf, len, "\r\n\r\n", 4);
    if (end == NULL) {
        return len > 65536 ? -1 : 0;
    }
    size_t head = (size_t)(end - buf) + 4;
    if (head < 13 || memcmp(buf, "HTTP/1.", 7) != 0 || buf[8] != ' ') {
        return -1;
    }
    int status = 0;
    for (int i = 9; i < 12; i++) {
        if (buf[i] < '0' || buf[i] > '9') {
            return -1;
        }
        status = status * 10 + (buf[i] - '0');
    }
    bool chunked = false, have_len = false, close = buf[7] == '0';
    unsigned long long clen = 0;
    const char *line = (const char *)memchr(buf, '\n', head) + 1;
    while (line < buf + head - 2) {
        const char *eol = memchr(line, '\n', (size_t)(buf + head - line));
        size_t n = (size_t)(eol - line);
        if (n > 15 && strncasecmp(line, "content-length:", 15) == 0) {
            clen = strtoull(line + 15, NULL, 10);
            have_len = true;
        } else if (n > 18 && strncasecmp(line, "transfer-encoding:", 18) == 0) {
            chunked = memmem(line, n, "chunked", 7) != NULL;
        } else if (n > 11 && strncasecmp(line, "connection:", 11) == 0) {
            close = memmem(line, n, "close", 5) != NULL || memmem(line, n, "Close", 5) != NULL;
        }
        line = eol + 1;
    }
    ri->status = status;
    ri->close = close;
    if (status == 204 || status == 304 || (status >= 100 && status < 200)) {
        ri->total = head;
        return status >= 200 ? 1 : -1;
    }
    if (chunked) {
        size_t p = head;
        for (;;) {
            const char *crlf = memmem(buf + p, len - p, "\r\n", 2);
            if (crlf == NULL) {
                return 0;
            }
            char *hex_end;
            unsigned long long size = strtoull(buf + p, &hex_end, 16);
            if (hex_end == buf + p || size > RESP_MAX) {
                return -1;
            }
            p = (size_t)(crlf - buf) + 2;
            if (size == 0) {
                /* No trailers are expected: the body ends with an empty line. */
                if (len - p < 2) {
                    return 0;
                }
                if (memcmp(buf + p, "\r\n", 2) != 0) {
                    return -1;
                }
                ri->total = p + 2;
                return 1;
            }
            if (len - p < size + 2) {
                return 0;
            }
            p += size + 2;
        }
    }
    if (!have_len || clen > RESP_MAX) {
        return -1; /* a body delimited by closing the connection is not supported */
    }
    if (len < head + clen) {
        return 0;
    }
    ri->total = head + clen;
    return 1;
}

/* ---- the load generator ---- */

struct options {
    struct sockaddr_in targets[MAX_TARGETS];
    char target_names[MAX_TARGETS][64];
    int n_targets;
    const char *method;
    const char *path;
    const char *body;
    const char *headers[MAX_HEADERS];
    int n_headers;
    int concurrency;
    double duration_s;
    double warmup_s;
    uint64_t max_requests; /* 0: no limit */
    uint64_t start_n;
    unsigned timeout_ms;
    unsigned retry_delay_ms;
    unsigned timeline_ms; /* 0: no timeline */
    const char *bind_ip;
    bool verbose;
};

enum client_state { C_CONNECTING, C_WAITING, C_BACKOFF, C_CLOSING, C_DONE };

struct client {
    struct bench *b;
    int target;
    enum client_state state;
    bool connected;    /* the socket is open (a backoff resends instead of reconnecting) */
    bool rotate;       /* after closing, move on to the next target */
    bool writing;      /* write_req is in use */
    bool send_pending; /* an answer came before the write completed: send from on_write */
    uv_tcp_t tcp;
    uv_connect_t connect_req;
    uv_write_t write_req;
    uv_timer_t timer;
    char *req;
    size_t req_len;
    char *resp;
    size_t resp_len, resp_cap;
    uint64_t sent_ns;
};

struct stats {
    uint64_t sent;
    uint64_t ok;
    uint64_t http_errors;
    uint64_t conn_errors;
    uint64_t timeouts;
    uint64_t malformed;
    int status_code[MAX_STATUS_KIND];
    uint64_t status_count[MAX_STATUS_KIND];
    uint32_t *lat_us; /* latencies of the successful requests of the window */
    size_t n_lat, cap_lat;
    uint64_t last_ok_ns;
    uint64_t max_gap_ns, gap_from_ns, gap_to_ns;
    uint64_t mark_ns;                    /* when SIGUSR1 arrived, 0 if it did not */
    uint64_t mark_gap_ns;                /* the longest gap around the mark (MARK_*_NS) */
    uint64_t mark_gap_from, mark_gap_to; /* its ends; to == 0 until a success ends it */
    uint64_t *timeline;                  /* successes per bucket */
    uint64_t *err_timeline;              /* errors per bucket */
    size_t n_buckets;
};

struct bench {
    const struct options *o;
    uv_loop_t loop;
    uv_timer_t deadline;
    uv_timer_t hard_stop;
    uv_signal_t mark_signal; /* SIGUSR1: the caller marks an event (a kill) */
    struct client *clients;
    struct tmpl path, body;
    uint64_t next_n;
    uint64_t window_start_ns, window_end_ns;
    bool stopping;
    bool printed_error;
    const char *fatal;
    struct stats st;
};

static void client_connect(struct client *c);
static void client_send(struct client *c);
static void bench_stop(struct bench *b);

static bool in_window(struct bench *b, uint64_t t)
{
    return t >= b->window_start_ns && t <= b->window_end_ns;
}

static void count_status(struct stats *st, int status)
{
    for (int i = 0; i < MAX_STATUS_KIND; i++) {
        if (st->status_code[i] == status || st->status_code[i] == 0) {
            st->status_code[i] = status;
            st->status_count[i]++;
            return;
        }
    }
}

/* Count an error that happened now in *counter (and the timeline) if now is in the window. */
static void note_error(struct bench *b, uint64_t *counter)
{
    uint64_t now = uv_hrtime();
    if (!in_window(b, now)) {
        return;
    }
    (*counter)++;
    if (b->st.err_timeline != NULL) {
        size_t k = (size_t)((now - b->window_start_ns) / (b->o->timeline_ms * 1000000ull));
        if (k < b->st.n_buckets) {
            b->st.err_timeline[k]++;
        }
    }
}

static void record_ok(struct bench *b, uint64_t now, uint64_t lat_ns)
{
    struct stats *st = &b->st;
    if (!in_window(b, now)) {
        return;
    }
    st->ok++;
    if (st->n_lat == st->cap_lat && st->cap_lat < MAX_SAMPLES) {
        size_t cap = st->cap_lat == 0 ? 65536 : st->cap_lat * 2;
        uint32_t *l = ap_realloc(st->lat_us, cap * sizeof *l);
        if (l != NULL) {
            st->lat_us = l;
            st->cap_lat = cap;
        }
    }
    if (st->n_lat < st->cap_lat) {
        uint64_t us = lat_ns / 1000;
        st->lat_us[st->n_lat++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
    }
    if (st->mark_ns != 0 && st->last_ok_ns <= st->mark_ns + MARK_AFTER_NS &&
        now + MARK_BEFORE_NS >= st->mark_ns && now - st->last_ok_ns > st->mark_gap_ns) {
        st->mark_gap_ns = now - st->last_ok_ns;
        st->mark_gap_from = st->last_ok_ns;
        st->mark_gap_to = now;
    }
    if (now - st->last_ok_ns > st->max_gap_ns) {
        st->max_gap_ns = now - st->last_ok_ns;
        st->gap_from_ns = st->last_ok_ns;
        st->gap_to_ns = now;
    }
    st->last_ok_ns = now;
    if (st->timeline != NULL) {
        size_t k = (size_t)((now - b->window_start_ns) / (b->o->timeline_ms * 1000000ull));
        if (k < st->n_buckets) {
            st->timeline[k]++;
        }
    }
}

static void on_close(uv_handle_t *h);

/* Drop the connection (counted by the caller) and reconnect after the retry delay. */
static void client_fail(struct client *c, bool rotate)
{
    if (c->state == C_CLOSING || c->state == C_DONE || (c->state == C_BACKOFF && !c->connected)) {
        return; /* the socket is closed already */
    }
    uv_timer_stop(&c->timer);
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->state = C_CLOSING;
    c->connected = false;
    c->rotate = rotate;
    uv_close((uv_handle_t *)&c->tcp, on_close);
}

static void on_timer(uv_timer_t *t)
{
    struct client *c = AP_CONTAINER_OF(t, struct client, timer);
    struct bench *b = c->b;
    if (b->stopping) {
        return;
    }
    switch (c->state) {
    case C_CONNECTING:
    case C_WAITING:
        note_error(b, &b->st.timeouts);
        client_fail(c, true);
        break;
    case C_BACKOFF:
        if (c->connected) {
            client_send(c);
        } else {
            client_connect(c);
        }
        break;
    case C_CLOSING:
    case C_DONE:
        break;
    }
}

static void on_close(uv_handle_t *h)
{
    struct client *c = AP_CONTAINER_OF(h, struct client, tcp);
    struct bench *b = c->b;
    if (b->stopping) {
        c->state = C_DONE;
        return;
    }
    if (c->rotate) {
        c->target = (c->target + 1) % b->o->n_targets;
    }
    c->state = C_BACKOFF;
    uv_timer_start(&c->timer, on_timer, b->o->retry_delay_ms, 0);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct client *c = AP_CONTAINER_OF(h, struct client, tcp);
    AP_UNUSED(suggested);
    if (c->resp_cap - c->resp_len < RESP_CHUNK && c->resp_cap < RESP_MAX + RESP_CHUNK) {
        size_t cap = c->resp_cap * 2;
        char *r = ap_realloc(c->resp, cap);
        if (r != NULL) {
            c->resp = r;
            c->resp_cap = cap;
        }
    }
    *buf = uv_buf_init(c->resp + c->resp_len, (unsigned)(c->resp_cap - c->resp_len));
}

static void on_response(struct client *c, const struct resp_info *ri)
{
    struct bench *b = c->b;
    uint64_t now = uv_hrtime();
    uv_timer_stop(&c->timer);
    bool ok = ri->status >= 200 && ri->status < 300;
    if (ok) {
        record_ok(b, now, now - c->sent_ns);
    } else {
        if (in_window(b, now)) {
            count_status(&b->st, ri->status);
        }
        note_error(b, &b->st.http_errors);
        if (b->o->verbose && !b->printed_error) {
            b->printed_error = true;
            fprintf(stderr, "httpload: first error answer: %.*s\n", (int)ri->total, c->resp);
        }
    }
    if (b->o->max_requests > 0 &&
        b->st.ok + b->st.http_errors + b->st.conn_errors >= b->o->max_requests) {
        bench_stop(b);
        return;
    }
    if (c->resp_len != ri->total) {
        /* Bytes after the answer to a request not pipelined: the framing is broken. */
        b->st.malformed++;
        client_fail(c, false);
    } else if (ri->close) {
        client_fail(c, false);
    } else if (!ok && b->o->retry_delay_ms > 0) {
        c->state = C_BACKOFF;
        uv_timer_start(&c->timer, on_timer, b->o->retry_delay_ms, 0);
    } else {
        client_send(c);
    }
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct client *c = AP_CONTAINER_OF(s, struct client, tcp);
    struct bench *b = c->b;
    AP_UNUSED(buf);
    if (c->state != C_WAITING) {
        if (nread < 0 && c->state != C_CLOSING) {
            client_fail(c, true); /* closed by the server between requests */
        }
        return;
    }
    if (nread < 0) {
        note_error(b, &b->st.conn_errors);
        client_fail(c, true);
        return;
    }
    c->resp_len += (size_t)nread;
    struct resp_info ri;
    int rv = parse_response(c->resp, c->resp_len, &ri);
    if (rv == 0) {
        return;
    }
    if (rv < 0) {
        b->st.malformed++;
        if (b->o->verbose && !b->printed_error) {
            b->printed_error = true;
            fprintf(stderr, "httpload: malformed answer: %.*s\n", (int)c->resp_len, c->resp);
        }
        client_fail(c, false);
        return;
    }
    on_response(c, &ri);
}

static void on_write(uv_write_t *w, int status)
{
    struct client *c = AP_CONTAINER_OF(w, struct client, write_req);
    c->writing = false;
    if (c->send_pending && status == 0 && c->state == C_WAITING) {
        c->send_pending = false;
        client_send(c);
        return;
    }
    c->send_pending = false;
    if (status < 0 && c->state == C_WAITING) {
        note_error(c->b, &c->b->st.conn_errors);
        client_fail(c, true);
    }
}

static void client_send(struct client *c)
{
    struct bench *b = c->b;
    const struct options *o = b->o;
    if (b->stopping) {
        return;
    }
    if (c->writing) {
        /* The server answered before our write completed: reuse write_req only after it. */
        c->state = C_WAITING;
        c->send_pending = true;
        return;
    }
    uint64_t n = b->next_n++;
    char body[REQ_CAP / 2], path[1024];
    long body_len = tmpl_expand(&b->body, n, body, sizeof body);
    long path_len = tmpl_expand(&b->path, n, path, sizeof path);
    if (body_len < 0 || path_len < 0) {
        b->fatal = "the path or body template expands to too many bytes";
        bench_stop(b);
        return;
    }
    int k = snprintf(c->req, REQ_CAP, "%s %.*s HTTP/1.1\r\nHost: %s\r\n", o->method, (int)path_len,
                     path, o->target_names[c->target]);
    for (int i = 0; i < o->n_headers && k > 0 && k < REQ_CAP; i++) {
        k += snprintf(c->req + k, REQ_CAP - (size_t)k, "%s\r\n", o->headers[i]);
    }
    if (k > 0 && k < REQ_CAP) {
        k += snprintf(c->req + k, REQ_CAP - (size_t)k, "Content-Length: %ld\r\n\r\n", body_len);
    }
    if (k < 0 || (size_t)k + (size_t)body_len > REQ_CAP) {
        b->fatal = "the request does not fit in its buffer";
        bench_stop(b);
        return;
    }
    memcpy(c->req + k, body, (size_t)body_len);
    c->req_len = (size_t)k + (size_t)body_len;
    c->resp_len = 0;
    c->state = C_WAITING;
    c->sent_ns = uv_hrtime();
    if (in_window(b, c->sent_ns)) {
        b->st.sent++;
    }
    uv_buf_t buf = uv_buf_init(c->req, (unsigned)c->req_len);
    c->writing = true;
    int rv = uv_write(&c->write_req, (uv_stream_t *)&c->tcp, &buf, 1, on_write);
    if (rv != 0) {
        c->writing = false;
        note_error(b, &b->st.conn_errors);
        client_fail(c, true);
        return;
    }
    uv_timer_start(&c->timer, on_timer, o->timeout_ms, 0);
}

static void on_connect(uv_connect_t *req, int status)
{
    struct client *c = AP_CONTAINER_OF(req, struct client, connect_req);
    struct bench *b = c->b;
    if (c->state != C_CONNECTING) {
        return; /* timed out or stopping: the handle is closing */
    }
    uv_timer_stop(&c->timer);
    if (status < 0) {
        note_error(b, &b->st.conn_errors);
        client_fail(c, true);
        return;
    }
    c->connected = true;
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
        client_fail(c, true);
        return;
    }
    client_send(c);
}

static void client_connect(struct client *c)
{
    struct bench *b = c->b;
    const struct options *o = b->o;
    if (b->stopping) {
        c->state = C_DONE;
        return;
    }
    c->state = C_CONNECTING;
    uv_tcp_init(&b->loop, &c->tcp);
    int rv = 0;
    if (o->bind_ip != NULL) {
        struct sockaddr_in src;
        uv_ip4_addr(o->bind_ip, 0, &src);
        rv = uv_tcp_bind(&c->tcp, (const struct sockaddr *)&src, 0);
    }
    if (rv == 0) {
        uv_tcp_nodelay(&c->tcp, 1);
        rv = uv_tcp_connect(&c->connect_req, &c->tcp,
                            (const struct sockaddr *)&o->targets[c->target], on_connect);
    }
    if (rv != 0) {
        note_error(b, &b->st.conn_errors);
        client_fail(c, true);
        return;
    }
    uv_timer_start(&c->timer, on_timer, o->timeout_ms, 0);
}

static void close_timer_cb(uv_handle_t *h)
{
    AP_UNUSED(h);
}

static void bench_stop(struct bench *b)
{
    if (b->stopping) {
        return;
    }
    b->stopping = true;
    uv_timer_stop(&b->deadline);
    for (int i = 0; i < b->o->concurrency; i++) {
        struct client *c = &b->clients[i];
        uv_close((uv_handle_t *)&c->timer, close_timer_cb);
        if (c->state == C_CONNECTING || c->state == C_WAITING ||
            (c->state == C_BACKOFF && c->connected)) {
            c->state = C_CLOSING;
            uv_read_stop((uv_stream_t *)&c->tcp);
            uv_close((uv_handle_t *)&c->tcp, on_close);
        } else if (c->state == C_BACKOFF) {
            c->state = C_DONE;
        }
    }
    uv_close((uv_handle_t *)&b->deadline, close_timer_cb);
    uv_close((uv_handle_t *)&b->mark_signal, close_timer_cb);
}

static void on_mark(uv_signal_t *h, int signum)
{
    struct bench *b = AP_CONTAINER_OF(h, struct bench, mark_signal);
    AP_UNUSED(signum);
    if (b->st.mark_ns == 0) {
        b->st.mark_ns = uv_hrtime();
    }
}

static void on_deadline(uv_timer_t *t)
{
    bench_stop(AP_CONTAINER_OF(t, struct bench, deadline));
}

static void on_hard_stop(uv_timer_t *t)
{
    /* A handle that does not close within the grace: give up on a clean loop end. */
    uv_stop(t->loop);
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static double pct_ms(const struct stats *st, double q)
{
    if (st->n_lat == 0) {
        return 0.0;
    }
    size_t k = (size_t)(q * (double)st->n_lat + 0.999999);
    k = k == 0 ? 0 : k - 1;
    return st->lat_us[k < st->n_lat ? k : st->n_lat - 1] / 1000.0;
}

static void report(struct bench *b, double window_s)
{
    struct stats *st = &b->st;
    const struct options *o = b->o;
    qsort(st->lat_us, st->n_lat, sizeof *st->lat_us, cmp_u32);
    /* The gap from the last success to the end of the window counts as well. */
    if (b->window_end_ns > st->last_ok_ns && b->window_end_ns - st->last_ok_ns > st->max_gap_ns) {
        st->max_gap_ns = b->window_end_ns - st->last_ok_ns;
        st->gap_from_ns = st->last_ok_ns;
        st->gap_to_ns = b->window_end_ns;
    }
    printf("target=%s\n", o->target_names[0]);
    printf("clients=%d\n", o->concurrency);
    printf("window_s=%.3f\n", window_s);
    printf("requests=%" PRIu64 "\n", st->sent);
    printf("ok=%" PRIu64 "\n", st->ok);
    printf("errors=%" PRIu64 "\n",
           st->http_errors + st->conn_errors + st->timeouts + st->malformed);
    printf("http_errors=%" PRIu64 "\n", st->http_errors);
    printf("conn_errors=%" PRIu64 "\n", st->conn_errors);
    printf("timeouts=%" PRIu64 "\n", st->timeouts);
    printf("malformed=%" PRIu64 "\n", st->malformed);
    for (int i = 0; i < MAX_STATUS_KIND && st->status_code[i] != 0; i++) {
        printf("status_%d=%" PRIu64 "\n", st->status_code[i], st->status_count[i]);
    }
    printf("writes_per_s=%.1f\n", window_s > 0 ? (double)st->ok / window_s : 0.0);
    printf("p50_ms=%.3f\n", pct_ms(st, 0.50));
    printf("p90_ms=%.3f\n", pct_ms(st, 0.90));
    printf("p99_ms=%.3f\n", pct_ms(st, 0.99));
    printf("max_ms=%.3f\n", st->n_lat > 0 ? st->lat_us[st->n_lat - 1] / 1000.0 : 0.0);
    printf("max_gap_ms=%.1f\n", (double)st->max_gap_ns / 1e6);
    printf("max_gap_from_s=%.3f\n", (double)(st->gap_from_ns - b->window_start_ns) / 1e9);
    printf("max_gap_to_s=%.3f\n", (double)(st->gap_to_ns - b->window_start_ns) / 1e9);
    if (st->mark_ns != 0) {
        /* No success after the outage: it lasts until the end of the window. */
        bool recovered = true;
        if (st->last_ok_ns <= st->mark_ns + MARK_AFTER_NS &&
            b->window_end_ns - st->last_ok_ns >= st->mark_gap_ns) {
            st->mark_gap_ns = b->window_end_ns - st->last_ok_ns;
            st->mark_gap_from = st->last_ok_ns;
            st->mark_gap_to = b->window_end_ns;
            recovered = false;
        }
        printf("mark_s=%.3f\n", (double)(st->mark_ns - b->window_start_ns) / 1e9);
        printf("mark_recovered=%d\n", recovered);
        printf("mark_gap_ms=%.1f\n", (double)st->mark_gap_ns / 1e6);
        printf("mark_gap_from_s=%.3f\n", (double)(st->mark_gap_from - b->window_start_ns) / 1e9);
        printf("mark_to_first_ok_ms=%.1f\n",
               st->mark_gap_to > st->mark_ns ? (double)(st->mark_gap_to - st->mark_ns) / 1e6 : 0.0);
    }
    if (st->timeline != NULL) {
        printf("timeline_ms=%u\ntimeline=", o->timeline_ms);
        for (size_t i = 0; i < st->n_buckets; i++) {
            printf("%s%" PRIu64, i > 0 ? "," : "", st->timeline[i]);
        }
        printf("\nerror_timeline=");
        for (size_t i = 0; i < st->n_buckets; i++) {
            printf("%s%" PRIu64, i > 0 ? "," : "", st->err_timeline[i]);
        }
        printf("\n");
    }
}

static void usage(FILE *out)
{
    fprintf(
        out,
        "usage: httpload -t HOST:PORT [-t HOST:PORT ...] [options]\n"
        "\n"
        "Closed-loop HTTP/1.1 load: each client holds one keep-alive connection and sends\n"
        "its next request when the previous answer arrived. Every client starts on the\n"
        "first target; after a connection failure or timeout it reconnects to the next one.\n"
        "Templates expand {n} to a request counter unique in the run, and {b64:TEXT} to the\n"
        "base64 of TEXT (itself expanded). Prints key=value lines.\n"
        "\n"
        "options:\n"
        "  -t, --target HOST:PORT   IPv4 target; repeat for fail-over order\n"
        "  -m, --method M           HTTP method (default POST)\n"
        "  -p, --path TEMPLATE      request path (default /)\n"
        "  -b, --body TEMPLATE      request body (default empty)\n"
        "  -H, --header 'K: V'      extra request header (repeatable)\n"
        "  -c, --concurrency N      clients, 1-%d (default 1)\n"
        "  -d, --duration S         measured window in seconds (default 10)\n"
        "  -w, --warmup S           unmeasured seconds before the window (default 0)\n"
        "  -n, --requests N         stop after N answers in the window (default: none)\n"
        "      --start-n N          first value of {n} (default 0)\n"
        "      --timeout-ms MS      per request and connect timeout (default 2000)\n"
        "      --retry-delay-ms MS  pause after an error before retrying (default 10)\n"
        "      --timeline-ms MS     print successes and errors per MS-wide bucket of the window\n"
        "      --bind IP            source address of the client sockets\n"
        "  -v, --verbose            print the first error answer on stderr\n"
        "  -h, --help               print this help\n"
        "SIGUSR1 marks an event (e.g. a kill): the report adds mark_gap_ms, the longest time\n"
        "without a success among the gaps overlapping [mark - 50 ms, mark + 500 ms], and\n"
        "mark_to_first_ok_ms, from the mark to the end of that gap.\n",
        MAX_CLIENTS);
}

static int parse_target(struct options *o, const char *s)
{
    char host[64];
    const char *colon = strrchr(s, ':');
    if (o->n_targets >= MAX_TARGETS || colon == NULL || (size_t)(colon - s) >= sizeof host) {
        return -1;
    }
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end != '\0' || port <= 0 || port > 65535 ||
        uv_ip4_addr(host, (int)port, &o->targets[o->n_targets]) != 0) {
        return -1;
    }
    ap_strlcpy(o->target_names[o->n_targets], s, sizeof o->target_names[0]);
    o->n_targets++;
    return 0;
}

static int parse_opts(int argc, char **argv, struct options *o)
{
    enum { O_START_N = 256, O_TIMEOUT, O_RETRY, O_TIMELINE, O_BIND };
    static const struct option opts[] = {
        {"target", required_argument, NULL, 't'},
        {"method", required_argument, NULL, 'm'},
        {"path", required_argument, NULL, 'p'},
        {"body", required_argument, NULL, 'b'},
        {"header", required_argument, NULL, 'H'},
        {"concurrency", required_argument, NULL, 'c'},
        {"duration", required_argument, NULL, 'd'},
        {"warmup", required_argument, NULL, 'w'},
        {"requests", required_argument, NULL, 'n'},
        {"start-n", required_argument, NULL, O_START_N},
        {"timeout-ms", required_argument, NULL, O_TIMEOUT},
        {"retry-delay-ms", required_argument, NULL, O_RETRY},
        {"timeline-ms", required_argument, NULL, O_TIMELINE},
        {"bind", required_argument, NULL, O_BIND},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int ch;
    char *end;
    memset(o, 0, sizeof *o);
    o->method = "POST";
    o->path = "/";
    o->body = "";
    o->concurrency = 1;
    o->duration_s = 10.0;
    o->timeout_ms = 2000;
    o->retry_delay_ms = 10;
    while ((ch = getopt_long(argc, argv, "t:m:p:b:H:c:d:w:n:vh", opts, NULL)) != -1) {
        unsigned long long v = 0;
        if (ch == 'c' || ch == 'n' || ch == O_START_N || ch == O_TIMEOUT || ch == O_RETRY ||
            ch == O_TIMELINE) {
            v = strtoull(optarg, &end, 10);
            if (*optarg == '\0' || *optarg == '-' || *end != '\0') {
                fprintf(stderr, "httpload: option -%c wants a non-negative integer, got '%s'\n",
                        ch < 256 ? ch : '-', optarg);
                return -1;
            }
        }
        switch (ch) {
        case 't':
            if (parse_target(o, optarg) != 0) {
                fprintf(stderr, "httpload: bad target '%s' (want IPv4:PORT, at most %d)\n", optarg,
                        MAX_TARGETS);
                return -1;
            }
            break;
        case 'm':
            o->method = optarg;
            break;
        case 'p':
            o->path = optarg;
            break;
        case 'b':
            o->body = optarg;
            break;
        case 'H':
            if (o->n_headers >= MAX_HEADERS) {
                fprintf(stderr, "httpload: at most %d headers\n", MAX_HEADERS);
                return -1;
            }
            o->headers[o->n_headers++] = optarg;
            break;
        case 'c':
            if (v < 1 || v > MAX_CLIENTS) {
                fprintf(stderr, "httpload: --concurrency must be 1-%d\n", MAX_CLIENTS);
                return -1;
            }
            o->concurrency = (int)v;
            break;
        case 'd':
        case 'w': {
            double d = strtod(optarg, &end);
            if (*end != '\0' || !(d >= 0.0 && d <= MAX_DURATION_S) || (ch == 'd' && d <= 0.0)) {
                fprintf(stderr, "httpload: --%s must be seconds in (0, %.0f]\n",
                        ch == 'd' ? "duration" : "warmup", MAX_DURATION_S);
                return -1;
            }
            *(ch == 'd' ? &o->duration_s : &o->warmup_s) = d;
            break;
        }
        case 'n':
            o->max_requests = v;
            break;
        case O_START_N:
            o->start_n = v;
            break;
        case O_TIMEOUT:
            if (v < 1 || v > 600000) {
                fprintf(stderr, "httpload: --timeout-ms must be 1-600000\n");
                return -1;
            }
            o->timeout_ms = (unsigned)v;
            break;
        case O_RETRY:
            o->retry_delay_ms = v > 60000 ? 60000 : (unsigned)v;
            break;
        case O_TIMELINE:
            if (v < 1 || v > 60000) {
                fprintf(stderr, "httpload: --timeline-ms must be 1-60000\n");
                return -1;
            }
            o->timeline_ms = (unsigned)v;
            break;
        case O_BIND: {
            struct sockaddr_in tmp;
            if (uv_ip4_addr(optarg, 0, &tmp) != 0) {
                fprintf(stderr, "httpload: --bind wants an IPv4 address, got '%s'\n", optarg);
                return -1;
            }
            o->bind_ip = optarg;
            break;
        }
        case 'v':
            o->verbose = true;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            return -1;
        }
    }
    if (optind < argc || o->n_targets == 0) {
        fprintf(stderr, "httpload: %s\n",
                optind < argc ? "unexpected argument" : "at least one --target is required");
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    static struct options o;
    static struct bench b;
    if (parse_opts(argc, argv, &o) != 0) {
        return 2;
    }
    memset(&b, 0, sizeof b);
    b.o = &o;
    b.next_n = o.start_n;
    int code = 1;
    if (tmpl_parse(o.path, strlen(o.path), &b.path) != 0 ||
        tmpl_parse(o.body, strlen(o.body), &b.body) != 0) {
        fprintf(stderr, "httpload: cannot parse the templates\n");
        return 2;
    }
    uint64_t window_ns = (uint64_t)(o.duration_s * 1e9);
    if (o.timeline_ms > 0) {
        b.st.n_buckets = (size_t)(window_ns / (o.timeline_ms * 1000000ull)) + 1;
        b.st.timeline = ap_calloc(b.st.n_buckets, sizeof *b.st.timeline);
        b.st.err_timeline = ap_calloc(b.st.n_buckets, sizeof *b.st.err_timeline);
    }
    b.clients = ap_calloc((size_t)o.concurrency, sizeof *b.clients);
    if (b.clients == NULL ||
        (o.timeline_ms > 0 && (b.st.timeline == NULL || b.st.err_timeline == NULL)) ||
        uv_loop_init(&b.loop) != 0) {
        fprintf(stderr, "httpload: out of memory\n");
        goto out_free;
    }
    uint64_t t0 = uv_hrtime();
    b.window_start_ns = t0 + (uint64_t)(o.warmup_s * 1e9);
    b.window_end_ns = b.window_start_ns + window_ns;
    b.st.last_ok_ns = b.window_start_ns;
    uint64_t run_ms = (b.window_end_ns - t0) / 1000000 + 1;
    uv_timer_init(&b.loop, &b.deadline);
    uv_timer_start(&b.deadline, on_deadline, run_ms, 0);
    uv_timer_init(&b.loop, &b.hard_stop);
    uv_timer_start(&b.hard_stop, on_hard_stop, run_ms + STOP_GRACE_MS, 0);
    uv_unref((uv_handle_t *)&b.hard_stop);
    uv_signal_init(&b.loop, &b.mark_signal);
    uv_signal_start(&b.mark_signal, on_mark, SIGUSR1);
    for (int i = 0; i < o.concurrency; i++) {
        struct client *c = &b.clients[i];
        c->b = &b;
        c->req = ap_malloc(REQ_CAP);
        c->resp_cap = 2 * RESP_CHUNK;
        c->resp = ap_malloc(c->resp_cap);
        if (c->req == NULL || c->resp == NULL) {
            fprintf(stderr, "httpload: out of memory\n");
            goto out_clients;
        }
        uv_timer_init(&b.loop, &c->timer);
    }
    for (int i = 0; i < o.concurrency; i++) {
        client_connect(&b.clients[i]);
    }
    uv_run(&b.loop, UV_RUN_DEFAULT);
    uint64_t end = uv_hrtime();
    if (b.fatal != NULL) {
        fprintf(stderr, "httpload: %s\n", b.fatal);
        goto out_clients;
    }
    /* Stopped early by --requests: the window ends at the stop. */
    if (end < b.window_end_ns) {
        b.window_end_ns = end > b.window_start_ns ? end : b.window_start_ns;
    }
    report(&b, (double)(b.window_end_ns - b.window_start_ns) / 1e9);
    code = 0;
out_clients:
    for (int i = 0; i < o.concurrency; i++) {
        ap_free(b.clients[i].req);
        ap_free(b.clients[i].resp);
    }
    /* Closing what is left lets uv_loop_close succeed; a loop cut by the hard stop may not. */
    uv_close((uv_handle_t *)&b.hard_stop, NULL);
    uv_run(&b.loop, UV_RUN_NOWAIT);
    uv_loop_close(&b.loop);
out_free:
    ap_free(b.st.timeline);
    ap_free(b.st.err_timeline);
    ap_free(b.st.lat_us);
    ap_free(b.clients);
    tmpl_free(&b.path);
    tmpl_free(&b.body);
    return code;
}
