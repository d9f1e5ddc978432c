/* http: HTTP/JSON server on libmicrohttpd, driven from the daemon's libuv loop. */
#include "ap/http.h"
#include "ap/metrics.h"

#include "ap/base.h"
#include "ap/err.h"
#include "ap/log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

/* How long closing lets answered responses drain before stopping MHD. */
#define CLOSE_FLUSH_MS 1000
/* Idle keep-alive connections are dropped after this long. */
#define IDLE_TIMEOUT_S  60
/* libmicrohttpd's per-connection pool (request line, headers, read buffer, answer headers).
 * Its default of 32 KiB is zeroed on every request of a keep-alive connection; 16 KiB still
 * takes 8 KiB of headers (nginx's default limit) and costs half as much. */
#define CONN_MEMORY (16 * 1024)
#define LISTEN_BACKLOG  128
#define MAX_PATTERN_LEN 1024
#define MAX_METHOD_LEN  16

struct kv {
    char *key;
    char *val;
};

/* A small owned list of strings: headers, query arguments, path parameters. */
struct kv_list {
    struct kv *items;
    size_t n;
    size_t cap;
};

/* One pattern segment: a literal, or a parameter with an optional literal suffix. */
struct segment {
    char *lit;
    char *param;
    char *suffix;
};

struct route {
    char *method;
    char *pattern;
    unsigned flags;
    ap_http_handler handler;
    void *data;
    size_t nseg;
    struct segment seg[AP_HTTP_MAX_SEGMENTS];
};

/* A request path cut into raw segments, pointing into the path string. */
struct path_split {
    size_t n;
    const char *p[AP_HTTP_MAX_SEGMENTS];
    size_t len[AP_HTTP_MAX_SEGMENTS];
};

enum close_phase {
    CLOSE_NONE,    /* serving */
    CLOSE_GRACE,   /* not accepting; handlers may still reply */
    CLOSE_FLUSH,   /* every request answered; responses draining */
    CLOSE_HANDLES, /* MHD stopped; uv handles closing */
};

struct ap_http_server {
    uv_loop_t *loop;
    struct MHD_Daemon *mhd;
    uv_poll_t poll;         /* MHD's epoll fd */
    uv_timer_t timer;       /* MHD_get_timeout, and kicks during a run */
    uv_check_t kick_check;  /* kicks after a resume outside a run: same loop iteration */
    uv_idle_t kick_idle;    /* ... and keeps the loop from blocking in poll before it */
    uv_timer_t close_timer; /* grace and flush deadlines */
    size_t max_body;
    uint16_t port;
    uint64_t grace_ms;
    struct route *routes;
    size_t nroutes;
    size_t cap_routes;
    struct ap_http_req *reqs; /* every request not yet freed or detached */
    bool in_run;
    bool kicked;
    bool quiesced;
    bool deadline;
    enum close_phase phase;
    int open_handles;
    void (*close_cb)(void *data);
    void *close_data;
    char errmsg[AP_ERRMSG_SIZE];
};

struct ap_http_req {
    struct ap_http_server *server; /* NULL once detached by a closed server */
    struct MHD_Connection *conn;   /* NULL once MHD is done with the request */
    struct ap_http_req *prev;
    struct ap_http_req *next;
    size_t route_idx;
    char *method;
    char *path;
    char peer[INET6_ADDRSTRLEN + 8];
    struct kv_list headers;
    struct kv_list query;
    struct kv_list params;
    struct kv_list resp_headers;
    uint8_t *body;
    size_t body_len;
    size_t body_cap;
    json_t *json;
    uint64_t start_ns;
    bool bad_query;
    bool oom;
    bool in_access; /* inside MHD's access handler: replies queue directly */
    bool handed;    /* given to a handler that has not replied yet */
    bool answered;  /* a response exists, from the handler or the server */
    bool queued;
    bool suspended;
    struct MHD_Response *pending; /* answered while suspended, queued on resume */
    unsigned pending_status;
};

static void server_kick(struct ap_http_server *s);
static void close_progress(struct ap_http_server *s);

/* ---- small helpers ---- */

static void kv_list_free(struct kv_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        ap_free(l->items[i].key);
        ap_free(l->items[i].val);
    }
    ap_free(l->items);
    memset(l, 0, sizeof *l);
}

/* Append a pair; takes key and val (freed on failure). */
static int kv_list_add(struct kv_list *l, char *key, char *val)
{
    if (key == NULL || val == NULL) {
        goto err_free;
    }
    if (l->n == l->cap) {
        size_t cap = l->cap == 0 ? 8 : l->cap * 2;
        struct kv *items = ap_realloc(l->items, cap * sizeof *items);
        if (items == NULL) {
            goto err_free;
        }
        l->items = items;
        l->cap = cap;
    }
    l->items[l->n].key = key;
    l->items[l->n].val = val;
    l->n++;
    return 0;

err_free:
    ap_free(key);
    ap_free(val);
    return AP_ENOMEM;
}

static const char *kv_list_get(const struct kv_list *l, const char *key, bool nocase)
{
    for (size_t i = 0; i < l->n; i++) {
        if ((nocase ? strcasecmp(l->items[i].key, key) : strcmp(l->items[i].key, key)) == 0) {
            return l->items[i].val;
        }
    }
    return NULL;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/*
 * Percent-decode len bytes of in into a new string. Malformed escapes and
 * %00 (which would cut the C string) are AP_EINVAL.
 */
static int pct_decode(const char *in, size_t len, char **out)
{
    char *d = ap_malloc(len + 1);
    if (d == NULL) {
        return AP_ENOMEM;
    }
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (in[i] != '%') {
            d[o++] = in[i];
            continue;
        }
        int hi = i + 2 < len ? hex_value(in[i + 1]) : -1;
        int lo = i + 2 < len ? hex_value(in[i + 2]) : -1;
        if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
            ap_free(d);
            return AP_EINVAL;
        }
        d[o++] = (char)(hi * 16 + lo);
        i += 2;
    }
    d[o] = '\0';
    *out = d;
    return 0;
}

/*
 * A JSON string for text that may hold bytes that are not UTF-8 (paths,
 * parser messages quoting the input): such bytes become '?'.
 */
static json_t *json_string_lossy(const char *text)
{
    json_t *v = json_string(text);
    if (v != NULL) {
        return v;
    }
    char *copy = ap_strdup(text);
    if (copy == NULL) {
        return NULL;
    }
    for (char *p = copy; *p != '\0'; p++) {
        if ((unsigned char)*p >= 0x80) {
            *p = '?';
        }
    }
    v = json_string(copy);
    ap_free(copy);
    return v;
}

static bool is_json_media_type(const char *ct)
{
    while (*ct == ' ' || *ct == '\t') {
        ct++;
    }
    size_t n = strlen("application/json");
    if (strncasecmp(ct, "application/json", n) != 0) {
        return false;
    }
    ct += n;
    while (*ct == ' ' || *ct == '\t') {
        ct++;
    }
    return *ct == '\0' || *ct == ';';
}

/* ---- routes ---- */

static void route_free(struct route *rt)
{
    ap_free(rt->method);
    ap_free(rt->pattern);
    for (size_t i = 0; i < rt->nseg; i++) {
        ap_free(rt->seg[i].lit);
        ap_free(rt->seg[i].param);
        ap_free(rt->seg[i].suffix);
    }
}

static bool valid_param_name(const char *p, size_t len)
{
    if (len == 0) {
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        char c = p[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_')) {
            return false;
        }
    }
    return true;
}

static char *strndup_checked(const char *p, size_t len)
{
    char *d = ap_malloc(len + 1);
    if (d != NULL) {
        memcpy(d, p, len);
        d[len] = '\0';
    }
    return d;
}

/* Parse one pattern segment [p, p+len) into seg. */
static int segment_parse(struct segment *seg, const char *p, size_t len, char *errmsg)
{
    if (memchr(p, '{', len) == NULL && memchr(p, '}', len) == NULL) {
        seg->lit = strndup_checked(p, len);
        return seg->lit != NULL ? 0 : AP_ENOMEM;
    }
    const char *rbrace = memchr(p, '}', len);
    if (p[0] != '{' || rbrace == NULL) {
        ap_errmsg_set(errmsg, "bad parameter segment '%.*s'", (int)len, p);
        return AP_EINVAL;
    }
    size_t name_len = (size_t)(rbrace - p) - 1;
    size_t rest_len = len - name_len - 2;
    const char *rest = rbrace + 1;
    if (!valid_param_name(p + 1, name_len)) {
        ap_errmsg_set(errmsg, "bad parameter name in '%.*s'", (int)len, p);
        return AP_EINVAL;
    }
    if (rest_len > 0 && (rest[0] != ':' || rest_len < 2 || memchr(rest, '{', rest_len) != NULL ||
                         memchr(rest, '}', rest_len) != NULL)) {
        ap_errmsg_set(errmsg, "bad action suffix in '%.*s'", (int)len, p);
        return AP_EINVAL;
    }
    seg->param = strndup_checked(p + 1, name_len);
    if (seg->param == NULL) {
        return AP_ENOMEM;
    }
    if (rest_len > 0) {
        seg->suffix = strndup_checked(rest, rest_len);
        if (seg->suffix == NULL) {
            return AP_ENOMEM;
        }
    }
    return 0;
}

/* Cut an absolute path into its segments; "/" is one empty segment. */
static bool path_split(const char *path, struct path_split *out)
{
    if (path[0] != '/') {
        return false;
    }
    out->n = 0;
    const char *p = path + 1;
    for (;;) {
        if (out->n == AP_HTTP_MAX_SEGMENTS) {
            return false;
        }
        const char *slash = strchr(p, '/');
        size_t len = slash != NULL ? (size_t)(slash - p) : strlen(p);
        out->p[out->n] = p;
        out->len[out->n] = len;
        out->n++;
        if (slash == NULL) {
            return true;
        }
        p = slash + 1;
    }
}

static int route_parse(struct route *rt, const char *pattern, char *errmsg)
{
    struct path_split ps;
    size_t plen = strlen(pattern);
    if (plen == 0 || plen > MAX_PATTERN_LEN || !path_split(pattern, &ps)) {
        ap_errmsg_set(errmsg, "pattern must be an absolute path of at most %d segments",
                      AP_HTTP_MAX_SEGMENTS);
        return AP_EINVAL;
    }
    for (size_t i = 0; i < ps.n; i++) {
        if (ps.len[i] == 0 && !(ps.n == 1)) {
            ap_errmsg_set(errmsg, "empty segment");
            return AP_EINVAL;
        }
        int rc = segment_parse(&rt->seg[i], ps.p[i], ps.len[i], errmsg);
        rt->nseg = i + 1;
        if (rc != 0) {
            return rc;
        }
    }
    return 0;
}

static bool segment_matches(const struct segment *seg, const char *p, size_t len)
{
    if (seg->lit != NULL) {
        return strlen(seg->lit) == len && memcmp(seg->lit, p, len) == 0;
    }
    size_t slen = seg->suffix != NULL ? strlen(seg->suffix) : 0;
    if (len <= slen) {
        return false;
    }
    return slen == 0 || memcmp(p + len - slen, seg->suffix, slen) == 0;
}

static bool route_matches(const struct route *rt, const struct path_split *ps)
{
    if (rt->nseg != ps->n) {
        return false;
    }
    for (size_t i = 0; i < ps->n; i++) {
        if (!segment_matches(&rt->seg[i], ps->p[i], ps->len[i])) {
            return false;
        }
    }
    return true;
}

static int segment_rank(const struct segment *seg)
{
    return seg->lit != NULL ? 2 : seg->suffix != NULL ? 1 : 0;
}

/* Whether a is more specific than b: a literal where b has a parameter, earliest first. */
static bool route_more_specific(const struct route *a, const struct route *b)
{
    for (size_t i = 0; i < a->nseg && i < b->nseg; i++) {
        int ra = segment_rank(&a->seg[i]);
        int rb = segment_rank(&b->seg[i]);
        if (ra != rb) {
            return ra > rb;
        }
    }
    return false;
}

int ap_http_route_ex(struct ap_http_server *s, const char *method, const char *pattern,
                     unsigned flags, ap_http_handler h, void *data)
{
    AP_ASSERT(s->phase == CLOSE_NONE && h != NULL);
    size_t mlen = method != NULL ? strlen(method) : 0;
    if (mlen == 0 || mlen > MAX_METHOD_LEN ||
        strspn(method, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") != mlen) {
        ap_errmsg_set(s->errmsg, "route: bad method");
        return AP_EINVAL;
    }
    if (pattern == NULL) {
        ap_errmsg_set(s->errmsg, "route: no pattern");
        return AP_EINVAL;
    }
    for (size_t i = 0; i < s->nroutes; i++) {
        if (strcmp(s->routes[i].method, method) == 0 &&
            strcmp(s->routes[i].pattern, pattern) == 0) {
            ap_errmsg_set(s->errmsg, "route %s %s: already registered", method, pattern);
            return AP_EEXIST;
        }
    }
    if (s->nroutes == s->cap_routes) {
        size_t cap = s->cap_routes == 0 ? 16 : s->cap_routes * 2;
        struct route *routes = ap_realloc(s->routes, cap * sizeof *routes);
        if (routes == NULL) {
            ap_errmsg_set(s->errmsg, "route: out of memory");
            return AP_ENOMEM;
        }
        s->routes = routes;
        s->cap_routes = cap;
    }
    struct route *rt = &s->routes[s->nroutes];
    memset(rt, 0, sizeof *rt);
    rt->flags = flags;
    rt->handler = h;
    rt->data = data;
    rt->method = ap_strdup(method);
    rt->pattern = ap_strdup(pattern);
    if (rt->method == NULL || rt->pattern == NULL) {
        route_free(rt);
        ap_errmsg_set(s->errmsg, "route: out of memory");
        return AP_ENOMEM;
    }
    char msg[AP_ERRMSG_SIZE] = "";
    int rc = route_parse(rt, pattern, msg);
    if (rc != 0) {
        route_free(rt);
        ap_errmsg_set(s->errmsg, "route %s %.128s: %s", method, pattern,
                      rc == AP_ENOMEM ? "out of memory" : msg);
        return rc;
    }
    s->nroutes++;
    return 0;
}

int ap_http_route(struct ap_http_server *s, const char *method, const char *pattern,
                  ap_http_handler h, void *data)
{
    return ap_http_route_ex(s, method, pattern, 0, h, data);
}

/* ---- requests ---- */

static void req_free(struct ap_http_req *req)
{
    struct ap_http_server *s = req->server;
    if (s != NULL) {
        if (req->prev != NULL) {
            req->prev->next = req->next;
        } else {
            s->reqs = req->next;
        }
        if (req->next != NULL) {
            req->next->prev = req->prev;
        }
    }
    if (req->pending != NULL) {
        MHD_destroy_response(req->pending);
    }
    kv_list_free(&req->headers);
    kv_list_free(&req->query);
    kv_list_free(&req->params);
    kv_list_free(&req->resp_headers);
    json_decref(req->json);
    ap_free(req->body);
    ap_free(req->method);
    ap_free(req->path);
    ap_free(req);
}

/* Free req once neither its handler nor MHD holds it. */
static void req_maybe_free(struct ap_http_req *req)
{
    if (!req->handed && req->conn == NULL) {
        req_free(req);
    }
}

static enum MHD_Result collect_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                      const char *value)
{
    struct ap_http_req *req = cls;
    AP_UNUSED(kind);
    if (kv_list_add(&req->headers, ap_strdup(key), ap_strdup(value != NULL ? value : "")) != 0) {
        req->oom = true;
        return MHD_NO;
    }
    return MHD_YES;
}

/* Query arguments reach us raw (see unescape_none); decode them here. */
static enum MHD_Result collect_query(void *cls, enum MHD_ValueKind kind, const char *key,
                                     const char *value)
{
    struct ap_http_req *req = cls;
    AP_UNUSED(kind);
    char *k = NULL;
    char *v = NULL;
    int rc = pct_decode(key, strlen(key), &k);
    if (rc == 0) {
        rc = pct_decode(value != NULL ? value : "", value != NULL ? strlen(value) : 0, &v);
        if (rc != 0) {
            ap_free(k);
        }
    }
    if (rc == AP_EINVAL) {
        req->bad_query = true;
        return MHD_YES;
    }
    if (rc == 0) {
        rc = kv_list_add(&req->query, k, v);
    }
    if (rc != 0) {
        req->oom = true;
        return MHD_NO;
    }
    return MHD_YES;
}

static void format_peer(struct MHD_Connection *conn, char *out, size_t size)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    ap_strlcpy(out, "unknown", size);
    if (ci == NULL || ci->client_addr == NULL) {
        return;
    }
    char ip[INET6_ADDRSTRLEN];
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
        if (inet_ntop(AF_INET, &in->sin_addr, ip, sizeof ip) != NULL) {
            snprintf(out, size, "%s:%u", ip, (unsigned)ntohs(in->sin_port));
        }
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)(const void *)sa;
        if (inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof ip) != NULL) {
            snprintf(out, size, "[%s]:%u", ip, (unsigned)ntohs(in6->sin6_port));
        }
    }
}

/*
 * A request copies all it needs out of MHD's connection, so it stays valid
 * after the connection is gone (a late asynchronous reply).
 */
static int req_new(struct ap_http_server *s, struct MHD_Connection *conn, const char *url,
                   const char *method, struct ap_http_req **out)
{
    struct ap_http_req *req = ap_calloc(1, sizeof *req);
    if (req == NULL) {
        return AP_ENOMEM;
    }
    req->server = s;
    req->conn = conn;
    req->start_ns = uv_hrtime();
    req->method = ap_strdup(method);
    req->path = ap_strdup(url);
    req->next = s->reqs;
    if (s->reqs != NULL) {
        s->reqs->prev = req;
    }
    s->reqs = req;
    if (req->method == NULL || req->path == NULL) {
        goto err_after_alloc;
    }
    format_peer(conn, req->peer, sizeof req->peer);
    MHD_get_connection_values(conn, MHD_HEADER_KIND, collect_header, req);
    MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, collect_query, req);
    if (req->oom) {
        goto err_after_alloc;
    }
    *out = req;
    return 0;

err_after_alloc:
    req->conn = NULL;
    req_free(req);
    return AP_ENOMEM;
}

static void add_resp_headers(struct ap_http_req *req, struct MHD_Response *resp,
                             const char *content_type)
{
    /* Failures to add a header only happen on exhaustion of MHD's pool; the
     * response still goes out. */
    if (content_type != NULL) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    }
    for (size_t i = 0; i < req->resp_headers.n; i++) {
        MHD_add_response_header(resp, req->resp_headers.items[i].key,
                                req->resp_headers.items[i].val);
    }
    if (req->server != NULL && req->server->phase != CLOSE_NONE) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    }
}

/*
 * Give req its one response: buf (malloc'd, taken) of len bytes. Queued at
 * once inside MHD's access handler, else (the connection is suspended)
 * parked and queued when MHD calls back after the resume.
 */
static void req_answer(struct ap_http_req *req, unsigned status, const char *content_type,
                       char *buf, size_t len)
{
    AP_ASSERT(!req->answered);
    req->answered = true;
    AP_LOG(AP_LOG_DEBUG, "http_request method=%s path=%s status=%u dur_ms=%.3f", req->method,
           req->path, status, (double)(uv_hrtime() - req->start_ns) / 1e6);
    if (req->conn == NULL) {
        ap_free(buf);
        return;
    }
    struct MHD_Response *resp;
    if (len == 0) {
        ap_free(buf);
        resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    } else {
        resp = MHD_create_response_from_buffer_with_free_callback(len, buf, free);
        if (resp == NULL) {
            ap_free(buf);
        }
    }
    if (resp != NULL) {
        add_resp_headers(req, resp, content_type);
    }
    if (req->in_access) {
        if (resp != NULL) {
            req->queued = MHD_queue_response(req->conn, status, resp) == MHD_YES;
            MHD_destroy_response(resp);
        }
        return;
    }
    AP_ASSERT(req->suspended);
    req->pending = resp;
    req->pending_status = status;
    req->suspended = false;
    MHD_resume_connection(req->conn);
    if (req->server != NULL) {
        server_kick(req->server);
    }
}

static void req_answer_json(struct ap_http_req *req, unsigned status, json_t *body)
{
    char *txt = NULL;
    if (body != NULL) {
        txt = json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY);
        json_decref(body);
    }
    if (txt == NULL) {
        static const char oom[] =
            "{\"error\":{\"code\":\"out_of_memory\",\"message\":\"out of memory\",\"details\":{}}}";
        status = 500;
        txt = ap_strdup(oom);
    }
    req_answer(req, status, "application/json", txt, txt != NULL ? strlen(txt) : 0);
}

static json_t *error_body(const char *code, const char *message, json_t *details)
{
    json_t *err = json_object();
    json_t *root = json_object();
    if (details == NULL) {
        details = json_object();
    }
    if (err == NULL || root == NULL || details == NULL ||
        json_object_set_new(err, "code", json_string_lossy(code != NULL ? code : "internal")) !=
            0 ||
        json_object_set_new(err, "message", json_string_lossy(message != NULL ? message : "")) !=
            0) {
        goto err_after_alloc;
    }
    /* Steals details even on failure. */
    if (json_object_set_new(err, "details", details) != 0) {
        details = NULL;
        goto err_after_alloc;
    }
    if (json_object_set_new(root, "error", err) != 0) {
        json_decref(root);
        return NULL;
    }
    return root;

err_after_alloc:
    json_decref(details);
    json_decref(err);
    json_decref(root);
    return NULL;
}

static void req_answer_error(struct ap_http_req *req, unsigned status, const char *code,
                             const char *message, json_t *details)
{
    req_answer_json(req, status, error_body(code, message, details));
}

/* The handler's reply: answers req unless the server already did, then lets go of it. */
static void user_reply(struct ap_http_req *req, unsigned status, const char *content_type,
                       char *buf, size_t len)
{
    AP_ASSERT(req->handed);
    req->handed = false;
    if (req->answered) {
        ap_free(buf);
    } else {
        req_answer(req, status, content_type, buf, len);
    }
    req_maybe_free(req);
}

/* ---- the request path: checks before the body, body, dispatch ---- */

static json_t *path_details(const struct ap_http_req *req)
{
    json_t *d = json_object();
    if (d != NULL) {
        json_object_set_new(d, "path", json_string_lossy(req->path));
    }
    return d;
}

static bool json_array_has_str(json_t *arr, const char *str)
{
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v)
    {
        if (strcmp(json_string_value(v), str) == 0) {
            return true;
        }
    }
    return false;
}

/* Checks made when the headers are in; may answer. */
static void req_begin(struct ap_http_server *s, struct ap_http_req *req)
{
    if (s->phase != CLOSE_NONE) {
        req_answer_error(req, 503, ap_err_code(AP_ESHUTDOWN), "server is shutting down", NULL);
        return;
    }
    struct path_split ps;
    bool split = path_split(req->path, &ps);
    const struct route *found = NULL;
    char allow[128] = "";
    json_t *allowed = json_array();
    for (size_t i = 0; split && i < s->nroutes; i++) {
        const struct route *rt = &s->routes[i];
        if (!route_matches(rt, &ps)) {
            continue;
        }
        if (strcmp(rt->method, req->method) == 0) {
            if (found == NULL || route_more_specific(rt, found)) {
                found = rt;
                req->route_idx = i;
            }
        } else if (!json_array_has_str(allowed, rt->method)) {
            size_t n = strlen(allow);
            snprintf(allow + n, sizeof allow - n, "%s%s", n > 0 ? ", " : "", rt->method);
            json_array_append_new(allowed, json_string(rt->method));
        }
    }
    if (found == NULL && allow[0] == '\0') {
        json_decref(allowed);
        req_answer_error(req, 404, ap_err_code(AP_ENOTFOUND), "no such resource",
                         path_details(req));
        return;
    }
    if (found == NULL) {
        json_t *d = path_details(req);
        json_object_set_new(d, "method", json_string_lossy(req->method));
        json_object_set_new(d, "allowed", allowed);
        kv_list_add(&req->resp_headers, ap_strdup("Allow"), ap_strdup(allow));
        req_answer_error(req, 405, ap_err_code(AP_EMETHOD), "method not allowed on this resource",
                         d);
        return;
    }
    json_decref(allowed);
    if (req->bad_query) {
        req_answer_error(req, 400, ap_err_code(AP_EINVAL),
                         "invalid percent-encoding in the query string", NULL);
        return;
    }
    for (size_t i = 0; i < found->nseg; i++) {
        const struct segment *seg = &found->seg[i];
        if (seg->param == NULL) {
            continue;
        }
        size_t vlen = ps.len[i] - (seg->suffix != NULL ? strlen(seg->suffix) : 0);
        char *val = NULL;
        int rc = pct_decode(ps.p[i], vlen, &val);
        if (rc == 0) {
            rc = kv_list_add(&req->params, ap_strdup(seg->param), val);
        }
        if (rc != 0) {
            req_answer_error(req, (unsigned)ap_err_http_status(rc), ap_err_code(rc),
                             rc == AP_EINVAL ? "invalid percent-encoding in the path"
                                             : ap_strerror(rc),
                             path_details(req));
            return;
        }
    }
    const char *cl = ap_http_req_header(req, MHD_HTTP_HEADER_CONTENT_LENGTH);
    uint64_t content_length = cl != NULL ? strtoull(cl, NULL, 10) : 0;
    if (content_length > s->max_body) {
        json_t *d = json_object();
        json_object_set_new(d, "max_body", json_integer((json_int_t)s->max_body));
        req_answer_error(req, 413, ap_err_code(AP_ETOOBIG), "request body too large", d);
        return;
    }
    bool has_body =
        content_length > 0 || ap_http_req_header(req, MHD_HTTP_HEADER_TRANSFER_ENCODING) != NULL;
    const char *ct = ap_http_req_header(req, MHD_HTTP_HEADER_CONTENT_TYPE);
    if (!(found->flags & AP_HTTP_RAW_BODY) && has_body && ct != NULL && !is_json_media_type(ct)) {
        json_t *d = json_object();
        json_object_set_new(d, "content_type", json_string_lossy(ct));
        req_answer_error(req, 415, ap_err_code(AP_EUNSUPPORTED),
                         "request body must be application/json", d);
        return;
    }
}

/* Take one piece of the body; past max_body the connection is dropped. */
static enum MHD_Result req_take_body(struct ap_http_server *s, struct ap_http_req *req,
                                     const char *data, size_t *size)
{
    size_t n = *size;
    if (req->answered) {
        *size = 0;
        return MHD_YES;
    }
    if (n > s->max_body - req->body_len) {
        /* Only a chunked body gets here (a Content-Length was checked before);
         * MHD cannot queue a response in mid-body, so stop reading now. */
        AP_LOG(AP_LOG_INFO, "http_body_too_large method=%s path=%s peer=%s max_body=%zu",
               req->method, req->path, req->peer, s->max_body);
        return MHD_NO;
    }
    if (req->body_len + n + 1 > req->body_cap) {
        /* The first piece is usually the whole body: size the buffer to it, so a small body
         * is a small allocation (1 KiB and up is a "large" one that makes glibc consolidate). */
        size_t cap = req->body_cap == 0 ? (n + 1 + 63) / 64 * 64 : req->body_cap;
        while (cap < req->body_len + n + 1) {
            cap *= 2;
        }
        uint8_t *b = ap_realloc(req->body, cap);
        if (b == NULL) {
            return MHD_NO;
        }
        req->body = b;
        req->body_cap = cap;
    }
    memcpy(req->body + req->body_len, data, n);
    req->body_len += n;
    req->body[req->body_len] = '\0';
    *size = 0;
    return MHD_YES;
}

/* The whole body is in: parse it and hand the request to its handler. */
static void req_dispatch(struct ap_http_server *s, struct ap_http_req *req)
{
    if (s->phase != CLOSE_NONE) {
        req_answer_error(req, 503, ap_err_code(AP_ESHUTDOWN), "server is shutting down", NULL);
        return;
    }
    const struct route *rt = &s->routes[req->route_idx];
    if (!(rt->flags & AP_HTTP_RAW_BODY)) {
        char msg[AP_ERRMSG_SIZE];
        json_t *details = NULL;
        int rc = ap_http_parse_json_body(req->body, req->body_len, &req->json, &details, msg);
        if (rc != 0) {
            req_answer_error(req, 400, "invalid_json", msg, details);
            return;
        }
    }
    req->handed = true;
    rt->handler(req, rt->data);
    /* req is still valid: MHD holds it until its completion callback. */
    if (!req->answered) {
        MHD_suspend_connection(req->conn);
        req->suspended = true;
    }
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version, const char *upload_data,
                                 size_t *upload_data_size, void **con_cls)
{
    struct ap_http_server *s = cls;
    struct ap_http_req *req = *con_cls;
    enum MHD_Result ret = MHD_YES;
    AP_UNUSED(version);

    if (req == NULL) {
        if (req_new(s, conn, url, method, &req) != 0) {
            AP_LOG(AP_LOG_WARN, "http_request_dropped reason=out_of_memory");
            return MHD_NO;
        }
        *con_cls = req;
        req->in_access = true;
        req_begin(s, req);
        req->in_access = false;
        return req->answered && !req->queued ? MHD_NO : MHD_YES;
    }
    req->in_access = true;
    if (*upload_data_size != 0) {
        ret = req_take_body(s, req, upload_data, upload_data_size);
    } else if (req->pending != NULL) {
        req->queued = MHD_queue_response(conn, req->pending_status, req->pending) == MHD_YES;
        MHD_destroy_response(req->pending);
        req->pending = NULL;
        ret = req->queued ? MHD_YES : MHD_NO;
    } else if (req->answered) {
        ret = req->queued ? MHD_YES : MHD_NO;
    } else {
        req_dispatch(s, req);
        if (req->answered && !req->queued) {
            ret = MHD_NO;
        }
    }
    req->in_access = false;
    return ret;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct ap_http_req *req = *con_cls;
    AP_UNUSED(cls);
    AP_UNUSED(conn);
    if (req == NULL) {
        return;
    }
    *con_cls = NULL;
    req->conn = NULL;
    if (!req->answered) {
        AP_LOG(AP_LOG_DEBUG, "http_request_aborted method=%s path=%s peer=%s toe=%d", req->method,
               req->path, req->peer, (int)toe);
    }
    req_maybe_free(req);
}

/* MHD gets the URL raw; we decode path segments and query values ourselves. */
static size_t unescape_none(void *cls, struct MHD_Connection *conn, char *s)
{
    AP_UNUSED(cls);
    AP_UNUSED(conn);
    return strlen(s);
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    char line[512];
    AP_UNUSED(cls);
    vsnprintf(line, sizeof line, fmt, ap);
    size_t n = strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) {
        line[--n] = '\0';
    }
    AP_LOG(AP_LOG_WARN, "http_mhd_error msg=\"%s\"", line);
}

/* ---- driving MHD from the loop ---- */

static void on_timer(uv_timer_t *t);

static void server_run(struct ap_http_server *s)
{
    MHD_UNSIGNED_LONG_LONG timeout;
    s->kicked = false;
    s->in_run = true;
    MHD_run(s->mhd);
    s->in_run = false;
    if (s->phase != CLOSE_NONE) {
        close_progress(s);
        if (s->phase == CLOSE_HANDLES) {
            return;
        }
    }
    /* A resume during the run needs another run (MHD_resume_connection docs). */
    if (s->kicked) {
        uv_timer_start(&s->timer, on_timer, 0, 0);
    } else if (MHD_get_timeout(s->mhd, &timeout) == MHD_YES) {
        uv_timer_start(&s->timer, on_timer, (uint64_t)timeout, 0);
    } else {
        uv_timer_stop(&s->timer);
    }
}

static void on_timer(uv_timer_t *t)
{
    server_run(t->data);
}

static void on_poll(uv_poll_t *p, int status, int events)
{
    AP_UNUSED(status);
    AP_UNUSED(events);
    server_run(p->data);
}

static void kick_run(struct ap_http_server *s)
{
    uv_check_stop(&s->kick_check);
    uv_idle_stop(&s->kick_idle);
    server_run(s);
}

static void on_kick_check(uv_check_t *h)
{
    kick_run(h->data);
}

static void on_kick_idle(uv_idle_t *h)
{
    kick_run(h->data);
}

/* Make MHD run after a resume. Outside a run, that happens in the check phase of this
 * loop iteration (docs/replication.md "Answering before the group commit"): libuv runs the
 * check handle started last first, so a reply whose entry was just applied leaves before
 * rsm's commit check writes the iteration's SQLite transaction. The order only moves
 * latency; the entry is already durable in the raft log either way. An active check handle
 * does not stop the loop from blocking in poll, so a kick made before poll (from a timer or
 * an idle callback) also starts an idle handle: whichever of the two runs first runs MHD. */
static void server_kick(struct ap_http_server *s)
{
    s->kicked = true;
    if (!s->in_run && s->phase != CLOSE_HANDLES) {
        uv_check_start(&s->kick_check, on_kick_check);
        uv_idle_start(&s->kick_idle, on_kick_idle);
    }
}

/* ---- closing ---- */

static void on_handle_closed(uv_handle_t *h)
{
    struct ap_http_server *s = h->data;
    if (--s->open_handles > 0) {
        return;
    }
    for (size_t i = 0; i < s->nroutes; i++) {
        route_free(&s->routes[i]);
    }
    ap_free(s->routes);
    void (*cb)(void *) = s->close_cb;
    void *data = s->close_data;
    ap_free(s);
    if (cb != NULL) {
        cb(data);
    }
}

static void on_close_timer(uv_timer_t *t)
{
    struct ap_http_server *s = t->data;
    s->deadline = true;
    server_run(s);
}

static void close_progress(struct ap_http_server *s)
{
    if (s->in_run) {
        return;
    }
    if (!s->quiesced) {
        s->quiesced = true;
        MHD_socket fd = MHD_quiesce_daemon(s->mhd);
        if (fd != MHD_INVALID_SOCKET) {
            close(fd);
        }
    }
    if (s->phase == CLOSE_GRACE) {
        bool waiting = false;
        for (struct ap_http_req *r = s->reqs; r != NULL; r = r->next) {
            waiting = waiting || (r->handed && !r->answered);
        }
        if (waiting && !s->deadline) {
            return;
        }
        for (struct ap_http_req *r = s->reqs; r != NULL; r = r->next) {
            if (r->handed && !r->answered) {
                req_answer_error(r, 503, ap_err_code(AP_ESHUTDOWN), "server is shutting down",
                                 NULL);
            }
        }
        s->phase = CLOSE_FLUSH;
        s->deadline = false;
        uv_timer_start(&s->close_timer, on_close_timer, CLOSE_FLUSH_MS, 0);
        server_kick(s);
        return;
    }
    if (s->phase != CLOSE_FLUSH) {
        return;
    }
    bool busy = false;
    for (struct ap_http_req *r = s->reqs; r != NULL; r = r->next) {
        busy = busy || r->conn != NULL;
    }
    if (busy && !s->deadline) {
        return;
    }
    /* No connection is suspended now: every handed request was answered and
     * resumed, and MHD_run has run since (MHD forbids stopping otherwise). */
    s->phase = CLOSE_HANDLES;
    /* Unwatch MHD's epoll fd before MHD closes it. */
    s->open_handles = 5;
    uv_close((uv_handle_t *)&s->poll, on_handle_closed);
    uv_close((uv_handle_t *)&s->timer, on_handle_closed);
    uv_close((uv_handle_t *)&s->kick_check, on_handle_closed);
    uv_close((uv_handle_t *)&s->kick_idle, on_handle_closed);
    uv_close((uv_handle_t *)&s->close_timer, on_handle_closed);
    MHD_stop_daemon(s->mhd);
    s->mhd = NULL;
    while (s->reqs != NULL) {
        struct ap_http_req *r = s->reqs;
        s->reqs = r->next;
        if (s->reqs != NULL) {
            s->reqs->prev = NULL;
        }
        r->server = NULL;
        r->prev = r->next = NULL;
        r->conn = NULL;
        /* Requests still handed out stay alive until their late reply. */
        req_maybe_free(r);
    }
}

void ap_http_server_close(struct ap_http_server *s, void (*cb)(void *data), void *data)
{
    AP_ASSERT(s->phase == CLOSE_NONE);
    s->phase = CLOSE_GRACE;
    s->close_cb = cb;
    s->close_data = data;
    if (s->grace_ms == 0) {
        s->deadline = true;
    } else {
        uv_timer_start(&s->close_timer, on_close_timer, s->grace_ms, 0);
    }
    /* The rest happens outside MHD_run, from the timer. */
    server_kick(s);
}

void ap_http_server_set_close_grace(struct ap_http_server *s, uint64_t grace_ms)
{
    s->grace_ms = grace_ms;
}

/* ---- creation ---- */

static int listen_socket(const char *ip, uint16_t port, int *out_fd, uint16_t *out_port, bool *ipv6,
                         char *errmsg)
{
    struct sockaddr_storage ss;
    socklen_t sslen;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *in = (struct sockaddr_in *)(void *)&ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)(void *)&ss;
    if (ip != NULL && inet_pton(AF_INET, ip, &in->sin_addr) == 1) {
        in->sin_family = AF_INET;
        in->sin_port = htons(port);
        sslen = sizeof *in;
        *ipv6 = false;
    } else if (ip != NULL && inet_pton(AF_INET6, ip, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(port);
        sslen = sizeof *in6;
        *ipv6 = true;
    } else {
        ap_errmsg_set(errmsg, "listen address '%.64s' is not an IP literal",
                      ip != NULL ? ip : "(null)");
        return AP_EINVAL;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        ap_errmsg_set(errmsg, "socket: %s", strerror(errno));
        return errno == EMFILE || errno == ENFILE ? AP_EBUSY : AP_EIO;
    }
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, (struct sockaddr *)&ss, sslen) != 0 || listen(fd, LISTEN_BACKLOG) != 0) {
        int e = errno;
        close(fd);
        ap_errmsg_set(errmsg, "bind %s port %u: %s", ip, (unsigned)port, strerror(e));
        switch (e) {
        case EADDRINUSE:
            return AP_EBUSY;
        case EACCES:
        case EPERM:
            return AP_EPERM;
        case EADDRNOTAVAIL:
            return AP_EINVAL;
        default:
            return AP_EIO;
        }
    }
    sslen = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &sslen) != 0) {
        ap_errmsg_set(errmsg, "getsockname: %s", strerror(errno));
        close(fd);
        return AP_EIO;
    }
    *out_port = ntohs(ss.ss_family == AF_INET ? in->sin_port : in6->sin6_port);
    *out_fd = fd;
    return 0;
}

static void on_failed_poll_closed(uv_handle_t *h)
{
    ap_free(h->data);
}

int ap_http_server_new(struct ap_http_server **out, uv_loop_t *loop, const char *ip, uint16_t port,
                       size_t max_body, char *errmsg)
{
    int fd = -1;
    bool ipv6 = false;
    struct ap_http_server *s = ap_calloc(1, sizeof *s);
    if (s == NULL) {
        ap_errmsg_set(errmsg, "http server: out of memory");
        return AP_ENOMEM;
    }
    s->loop = loop;
    s->max_body = max_body != 0 ? max_body : AP_HTTP_DEFAULT_MAX_BODY;
    s->grace_ms = AP_HTTP_DEFAULT_CLOSE_GRACE_MS;
    int rc = listen_socket(ip, port, &fd, &s->port, &ipv6, errmsg);
    if (rc != 0) {
        ap_errmsg_wrap(errmsg, "http server");
        goto err_after_alloc;
    }
    /* No internal threads: MHD runs when the loop sees its epoll fd or timer. */
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (ipv6) {
        flags |= MHD_USE_IPv6;
    }
    /* The logger goes first so that MHD reports option errors through it. */
    s->mhd = MHD_start_daemon(
        flags, 0, NULL, NULL, on_access, s, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, NULL,
        MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd, MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
        MHD_OPTION_UNESCAPE_CALLBACK, unescape_none, NULL, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)IDLE_TIMEOUT_S, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONN_MEMORY,
        MHD_OPTION_END);
    if (s->mhd == NULL) {
        close(fd);
        ap_errmsg_set(errmsg, "http server: libmicrohttpd failed to start");
        rc = AP_EIO;
        goto err_after_alloc;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    if (info == NULL) {
        ap_errmsg_set(errmsg, "http server: libmicrohttpd has no epoll fd");
        rc = AP_EIO;
        goto err_after_mhd;
    }
    rc = uv_poll_init(loop, &s->poll, info->epoll_fd);
    if (rc != 0) {
        ap_errmsg_set(errmsg, "http server: poll: %s", uv_strerror(rc));
        rc = ap_err_from_uv(rc);
        goto err_after_mhd;
    }
    s->poll.data = s;
    rc = uv_poll_start(&s->poll, UV_READABLE, on_poll);
    if (rc != 0) {
        ap_errmsg_set(errmsg, "http server: poll: %s", uv_strerror(rc));
        /* The handle is live now: s goes when it has closed. */
        uv_close((uv_handle_t *)&s->poll, on_failed_poll_closed);
        MHD_stop_daemon(s->mhd);
        return ap_err_from_uv(rc);
    }
    /* uv_timer_init cannot fail (libuv documents no error for it). */
    uv_timer_init(loop, &s->timer);
    uv_timer_init(loop, &s->close_timer);
    uv_check_init(loop, &s->kick_check);
    uv_idle_init(loop, &s->kick_idle);
    s->timer.data = s;
    s->kick_check.data = s;
    s->kick_idle.data = s;
    s->close_timer.data = s;
    uv_timer_start(&s->timer, on_timer, 0, 0);
    *out = s;
    AP_LOG(AP_LOG_INFO, "http_listening addr=%s port=%u", ip, (unsigned)s->port);
    return 0;

err_after_mhd:
    MHD_stop_daemon(s->mhd);
err_after_alloc:
    ap_free(s);
    return rc;
}

uint16_t ap_http_server_port(const struct ap_http_server *s)
{
    return s->port;
}

const char *ap_http_server_errmsg(const struct ap_http_server *s)
{
    return s->errmsg;
}

/* ---- request accessors ---- */

const char *ap_http_req_method(const struct ap_http_req *r)
{
    return r->method;
}

const char *ap_http_req_path(const struct ap_http_req *r)
{
    return r->path;
}

const char *ap_http_req_param(const struct ap_http_req *r, const char *name)
{
    return kv_list_get(&r->params, name, false);
}

void ap_http_req_query_string(const struct ap_http_req *r, const char *const *keys, char *out,
                              size_t size)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t k = 0;
    out[0] = '\0';
    for (size_t i = 0; keys != NULL && keys[i] != NULL; i++) {
        const char *v = ap_http_req_query(r, keys[i]);
        if (v == NULL || k + 1 + strlen(keys[i]) + 1 + 3 * strlen(v) + 1 > size) {
            continue;
        }
        k += (size_t)snprintf(out + k, size - k, "%c%s=", k == 0 ? '?' : '&', keys[i]);
        for (const unsigned char *p = (const unsigned char *)v; *p != '\0'; p++) {
            if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
                *p == '-' || *p == '_' || *p == '.' || *p == '~') {
                out[k++] = (char)*p;
            } else {
                out[k++] = '%';
                out[k++] = hex[*p >> 4];
                out[k++] = hex[*p & 15];
            }
        }
        out[k] = '\0';
    }
}

const char *ap_http_req_query(const struct ap_http_req *r, const char *name)
{
    return kv_list_get(&r->query, name, false);
}

const char *ap_http_req_header(const struct ap_http_req *r, const char *name)
{
    return kv_list_get(&r->headers, name, true);
}

const uint8_t *ap_http_req_body(const struct ap_http_req *r, size_t *len)
{
    if (len != NULL) {
        *len = r->body_len;
    }
    return r->body_len > 0 ? r->body : NULL;
}

json_t *ap_http_req_json(struct ap_http_req *r)
{
    return r->json;
}

const char *ap_http_req_peer(const struct ap_http_req *r)
{
    return r->peer;
}

static bool has_ctl(const char *s)
{
    for (; *s != '\0'; s++) {
        if ((unsigned char)*s < 0x20 || *s == 0x7f) {
            return true;
        }
    }
    return false;
}

int ap_http_req_add_resp_header(struct ap_http_req *r, const char *name, const char *value)
{
    if (name == NULL || value == NULL || name[0] == '\0' || has_ctl(name) || has_ctl(value) ||
        strchr(name, ':') != NULL || strchr(name, ' ') != NULL) {
        return AP_EINVAL;
    }
    return kv_list_add(&r->resp_headers, ap_strdup(name), ap_strdup(value));
}

/* ---- replies ---- */

void ap_http_reply_json(struct ap_http_req *r, unsigned status, json_t *body)
{
    if (body == NULL) {
        body = json_object();
    }
    char *txt = body != NULL ? json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    json_decref(body);
    if (txt == NULL) {
        /* Only exhaustion makes dumping fail: answer for the handler. */
        AP_ASSERT(r->handed);
        r->handed = false;
        if (!r->answered) {
            req_answer_json(r, 500, NULL);
        }
        req_maybe_free(r);
        return;
    }
    user_reply(r, status, "application/json", txt, strlen(txt));
}

void ap_http_reply_raw(struct ap_http_req *r, unsigned status, const char *content_type,
                       const void *body, size_t len)
{
    char *buf = NULL;
    if (len > 0) {
        buf = ap_malloc(len);
        if (buf == NULL) {
            ap_http_reply_err(r, AP_ENOMEM, NULL);
            return;
        }
        memcpy(buf, body, len);
    }
    user_reply(r, status, content_type != NULL ? content_type : "application/octet-stream", buf,
               len);
}

void ap_http_reply_error(struct ap_http_req *r, unsigned status, const char *code,
                         const char *message, json_t *details)
{
    json_t *body = error_body(code, message, details);
    if (body == NULL) {
        status = 500;
    }
    ap_http_reply_json(r, status, body);
}

void ap_http_reply_err(struct ap_http_req *r, int ap_err, const char *message)
{
    ap_http_reply_error(r, (unsigned)ap_err_http_status(ap_err), ap_err_code(ap_err),
                        message != NULL ? message : ap_strerror(ap_err), NULL);
}

/* ---- JSON bodies and fields ---- */

int ap_http_parse_json_body(const uint8_t *body, size_t len, json_t **out, json_t **details,
                            char *errmsg)
{
    json_error_t e;
    *out = NULL;
    if (details != NULL) {
        *details = NULL;
    }
    if (len == 0) {
        return 0;
    }
    /* Duplicate keys would make the meaning of a body depend on the parser. */
    json_t *v = json_loadb((const char *)body, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &e);
    if (v == NULL) {
        ap_errmsg_set(errmsg, "invalid JSON: %s", e.text);
        if (details != NULL) {
            *details = json_pack("{s:i,s:i,s:I}", "line", e.line, "column", e.column, "position",
                                 (json_int_t)e.position);
        }
        return AP_EPROTO;
    }
    if (!json_is_object(v)) {
        static const char *const names[] = {"an object", "an array", "a string", "an integer",
                                            "a real",    "true",     "false",    "null"};
        int t = json_typeof(v);
        ap_errmsg_set(errmsg, "body must be a JSON object, not %s",
                      t >= 0 && (size_t)t < AP_ARRAY_LEN(names) ? names[t] : "something else");
        json_decref(v);
        return AP_EPROTO;
    }
    *out = v;
    return 0;
}

/* obj[key], with a JSON null read as absent. */
static json_t *field_get(json_t *obj, const char *key)
{
    json_t *v = obj != NULL ? json_object_get(obj, key) : NULL;
    return v != NULL && !json_is_null(v) ? v : NULL;
}

static int field_absent(const char *key, bool required, char *errmsg)
{
    if (required) {
        ap_errmsg_set(errmsg, "field '%s' is required", key);
        return AP_EINVAL;
    }
    return 0;
}

int ap_http_json_get_str(json_t *obj, const char *key, bool required, size_t max_len,
                         const char **out, char *errmsg)
{
    json_t *v = field_get(obj, key);
    if (v == NULL) {
        return field_absent(key, required, errmsg);
    }
    if (!json_is_string(v)) {
        ap_errmsg_set(errmsg, "field '%s' must be a string", key);
        return AP_EINVAL;
    }
    if (max_len != 0 && json_string_length(v) > max_len) {
        ap_errmsg_set(errmsg, "field '%s' must be at most %zu bytes", key, max_len);
        return AP_EINVAL;
    }
    *out = json_string_value(v);
    return 0;
}

int ap_http_json_get_int(json_t *obj, const char *key, bool required, int64_t min, int64_t max,
                         int64_t *out, char *errmsg)
{
    json_t *v = field_get(obj, key);
    if (v == NULL) {
        return field_absent(key, required, errmsg);
    }
    if (!json_is_integer(v)) {
        ap_errmsg_set(errmsg, "field '%s' must be an integer", key);
        return AP_EINVAL;
    }
    json_int_t i = json_integer_value(v);
    if (i < min || i > max) {
        ap_errmsg_set(errmsg, "field '%s' must be between %" PRId64 " and %" PRId64, key, min, max);
        return AP_EINVAL;
    }
    *out = (int64_t)i;
    return 0;
}

int ap_http_json_get_bool(json_t *obj, const char *key, bool required, bool *out, char *errmsg)
{
    json_t *v = field_get(obj, key);
    if (v == NULL) {
        return field_absent(key, required, errmsg);
    }
    if (!json_is_boolean(v)) {
        ap_errmsg_set(errmsg, "field '%s' must be a boolean", key);
        return AP_EINVAL;
    }
    *out = json_is_true(v);
    return 0;
}

int ap_http_json_get_obj(json_t *obj, const char *key, bool required, json_t **out, char *errmsg)
{
    json_t *v = field_get(obj, key);
    if (v == NULL) {
        return field_absent(key, required, errmsg);
    }
    if (!json_is_object(v)) {
        ap_errmsg_set(errmsg, "field '%s' must be an object", key);
        return AP_EINVAL;
    }
    *out = v;
    return 0;
}

int ap_http_json_get_array(json_t *obj, const char *key, bool required, size_t max_items,
                           json_t **out, char *errmsg)
{
    json_t *v = field_get(obj, key);
    if (v == NULL) {
        return field_absent(key, required, errmsg);
    }
    if (!json_is_array(v)) {
        ap_errmsg_set(errmsg, "field '%s' must be an array", key);
        return AP_EINVAL;
    }
    if (max_items != 0 && json_array_size(v) > max_items) {
        ap_errmsg_set(errmsg, "field '%s' must have at most %zu items", key, max_items);
        return AP_EINVAL;
    }
    *out = v;
    return 0;
}

int ap_http_json_check_fields(json_t *obj, const char *const *allowed, char *errmsg)
{
    const char *key;
    json_t *value;
    if (obj == NULL) {
        return 0;
    }
    json_object_foreach(obj, key, value)
    {
        bool known = false;
        for (size_t i = 0; allowed != NULL && allowed[i] != NULL && !known; i++) {
            known = strcmp(allowed[i], key) == 0;
        }
        if (!known) {
            ap_errmsg_set(errmsg, "unknown field '%.64s'", key);
            return AP_EINVAL;
        }
    }
    return 0;
}

void ap_http_reply_metrics(struct ap_http_req *r, struct ap_metrics *m)
{
    char *text;
    size_t len;
    int rv = ap_metrics_render(m, &text, &len);
    if (rv != 0) {
        ap_http_reply_err(r, rv, "could not render metrics");
        return;
    }
    ap_http_reply_raw(r, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
    ap_free(text);
}
