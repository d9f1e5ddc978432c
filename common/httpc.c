/* httpc: HTTP client on libcurl, blocking or on the libuv threadpool, for forwarding and the CLI.
 */
#include "ap/httpc.h"

#include "ap/base.h"
#include "ap/err.h"
#include "ap/log.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

/*
 * libcurl must see curl_global_init() once before anything else, and that
 * call was not thread-safe before 7.84. pthread_once runs it on the first
 * request from whichever thread comes first. These two statics are written
 * exactly once and never changed again; curl_global_cleanup() is never
 * called, the process's exit reclaims it.
 */
static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_FAILED_INIT;

static void curl_init(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_ALL);
}

/* A growing buffer that refuses to pass max bytes. */
struct sink {
    char *buf;
    size_t len;
    size_t cap;
    size_t max;
    bool too_big;
};

static bool sink_append(struct sink *s, const char *p, size_t n)
{
    if (s->len + n + 1 > s->cap) {
        size_t cap = s->cap == 0 ? 1024 : s->cap;
        while (cap < s->len + n + 1) {
            cap *= 2;
        }
        char *b = ap_realloc(s->buf, cap);
        if (b == NULL) {
            return false;
        }
        s->buf = b;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, p, n);
    s->len += n;
    s->buf[s->len] = '\0';
    return true;
}

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct sink *s = userdata;
    size_t n = size * nmemb;
    if (n > s->max - s->len) {
        s->too_big = true;
        return 0; /* curl: anything but n aborts the transfer */
    }
    return sink_append(s, ptr, n) ? n : 0;
}

static size_t on_header(char *ptr, size_t size, size_t nitems, void *userdata)
{
    struct sink *s = userdata;
    size_t n = size * nitems;
    /* A status line starts a new response (after "100 Continue"): keep the last. */
    if (n >= 5 && memcmp(ptr, "HTTP/", 5) == 0) {
        s->len = 0;
        if (s->buf != NULL) {
            s->buf[0] = '\0';
        }
        return n;
    }
    /* Past the limit, further headers are dropped rather than failing. */
    if (n <= s->max - s->len) {
        sink_append(s, ptr, n);
    }
    return n;
}

static int err_from_curl(CURLcode rc, bool too_big)
{
    switch (rc) {
    case CURLE_OK:
        return 0;
    case CURLE_OPERATION_TIMEDOUT:
        return AP_ETIMEDOUT;
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_INTERFACE_FAILED:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_WEIRD_SERVER_REPLY:
        return AP_ECONN;
    case CURLE_FILESIZE_EXCEEDED:
        return AP_ETOOBIG;
    case CURLE_WRITE_ERROR:
        return too_big ? AP_ETOOBIG : AP_ENOMEM;
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_BAD_FUNCTION_ARGUMENT:
        return AP_EINVAL;
    case CURLE_OUT_OF_MEMORY:
        return AP_ENOMEM;
    default:
        return AP_EIO;
    }
}

static bool valid_method(const char *m)
{
    size_t n = strlen(m);
    return n > 0 && n <= 16 && strspn(m, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") == n;
}

/* curl_easy_setopt, keeping the first failure in *rc. */
#define SETOPT(c, rc, opt, val)                                                                    \
    do {                                                                                           \
        if (*(rc) == CURLE_OK) {                                                                   \
            *(rc) = curl_easy_setopt((c), (opt), (val));                                           \
        }                                                                                          \
    } while (0)

static CURLcode configure(CURL *c, const struct ap_httpc_req *req, const char *method,
                          struct curl_slist **hdrs, struct sink *body, struct sink *headers,
                          char *errbuf, char *iface, size_t iface_size)
{
    CURLcode rc = CURLE_OK;
    uint64_t timeout = req->timeout_ms != 0 ? req->timeout_ms : AP_HTTPC_DEFAULT_TIMEOUT_MS;
    SETOPT(c, &rc, CURLOPT_URL, req->url);
    SETOPT(c, &rc, CURLOPT_NOSIGNAL, 1L); /* required when used from threads */
    SETOPT(c, &rc, CURLOPT_ERRORBUFFER, errbuf);
    /* Traffic between nodes never goes through an http_proxy from the environment. */
    SETOPT(c, &rc, CURLOPT_PROXY, "");
    SETOPT(c, &rc, CURLOPT_FOLLOWLOCATION, 0L);
    SETOPT(c, &rc, CURLOPT_PROTOCOLS_STR, "http,https");
    SETOPT(c, &rc, CURLOPT_TIMEOUT_MS, (long)timeout);
    SETOPT(c, &rc, CURLOPT_CONNECTTIMEOUT_MS, (long)timeout);
    SETOPT(c, &rc, CURLOPT_WRITEFUNCTION, on_body);
    SETOPT(c, &rc, CURLOPT_WRITEDATA, body);
    SETOPT(c, &rc, CURLOPT_HEADERFUNCTION, on_header);
    SETOPT(c, &rc, CURLOPT_HEADERDATA, headers);
    SETOPT(c, &rc, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)body->max);
    if (req->source_ip != NULL) {
        /* "host!" makes curl bind to that address rather than look up an interface name. */
        snprintf(iface, iface_size, "host!%s", req->source_ip);
        SETOPT(c, &rc, CURLOPT_INTERFACE, iface);
    }
    if (strcmp(method, "GET") == 0 && req->body_len == 0) {
        SETOPT(c, &rc, CURLOPT_HTTPGET, 1L);
    } else if (strcmp(method, "HEAD") == 0) {
        SETOPT(c, &rc, CURLOPT_NOBODY, 1L);
    } else {
        SETOPT(c, &rc, CURLOPT_POSTFIELDS, req->body_len > 0 ? req->body : "");
        SETOPT(c, &rc, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
        if (strcmp(method, "POST") != 0) {
            SETOPT(c, &rc, CURLOPT_CUSTOMREQUEST, method);
        }
    }
    bool has_ct = false;
    for (size_t i = 0; req->headers != NULL && req->headers[i] != NULL; i++) {
        has_ct = has_ct || strncasecmp(req->headers[i], "Content-Type:", 13) == 0;
        struct curl_slist *l = curl_slist_append(*hdrs, req->headers[i]);
        if (l == NULL) {
            return CURLE_OUT_OF_MEMORY;
        }
        *hdrs = l;
    }
    const char *extra[] = {
        /* Send the body at once instead of waiting for "100 Continue". */
        "Expect:",
        req->body_len > 0 && !has_ct ? "Content-Type: application/json" : NULL,
    };
    for (size_t i = 0; i < AP_ARRAY_LEN(extra); i++) {
        if (extra[i] == NULL) {
            continue;
        }
        struct curl_slist *l = curl_slist_append(*hdrs, extra[i]);
        if (l == NULL) {
            return CURLE_OUT_OF_MEMORY;
        }
        *hdrs = l;
    }
    SETOPT(c, &rc, CURLOPT_HTTPHEADER, *hdrs);
    return rc;
}

int ap_httpc_do(const struct ap_httpc_req *req, struct ap_httpc_resp *resp, char *errmsg)
{
    const char *method = req->method != NULL ? req->method : "GET";
    char errbuf[CURL_ERROR_SIZE] = "";
    char iface[128];
    struct curl_slist *hdrs = NULL;
    struct sink body = {.max = req->max_resp != 0 ? req->max_resp : AP_HTTPC_DEFAULT_MAX_RESP};
    struct sink headers = {.max = AP_HTTPC_MAX_HEADER_BYTES};
    int err;

    memset(resp, 0, sizeof *resp);
    if (req->url == NULL || !valid_method(method)) {
        ap_errmsg_set(errmsg, "http request: %s", req->url == NULL ? "no URL" : "bad method");
        return AP_EINVAL;
    }
    pthread_once(&curl_once, curl_init);
    if (curl_init_rc != CURLE_OK) {
        ap_errmsg_set(errmsg, "%s %s: curl_global_init: %s", method, req->url,
                      curl_easy_strerror(curl_init_rc));
        return AP_EIO;
    }
    CURL *c = curl_easy_init();
    if (c == NULL) {
        ap_errmsg_set(errmsg, "%s %s: curl_easy_init failed", method, req->url);
        return AP_ENOMEM;
    }
    uint64_t start = uv_hrtime();
    CURLcode rc = configure(c, req, method, &hdrs, &body, &headers, errbuf, iface, sizeof iface);
    if (rc == CURLE_OK) {
        rc = curl_easy_perform(c);
    }
    err = err_from_curl(rc, body.too_big);
    if (err != 0) {
        if (err == AP_ETOOBIG) {
            ap_errmsg_set(errmsg, "%s %s: response larger than %zu bytes", method, req->url,
                          body.max);
        } else {
            ap_errmsg_set(errmsg, "%s %s: %s%s%s", method, req->url, curl_easy_strerror(rc),
                          errbuf[0] != '\0' ? ": " : "", errbuf);
        }
        AP_LOG(AP_LOG_DEBUG, "httpc_failed method=%s url=%s err=%s", method, req->url,
               ap_err_code(err));
        goto err_after_init;
    }
    long status = 0;
    char *ct = NULL;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(c, CURLINFO_CONTENT_TYPE, &ct);
    if (ct != NULL) {
        resp->content_type = ap_strdup(ct);
        if (resp->content_type == NULL) {
            ap_errmsg_set(errmsg, "%s %s: out of memory", method, req->url);
            err = AP_ENOMEM;
            goto err_after_init;
        }
    }
    resp->status = (unsigned)status;
    resp->body = body.buf;
    resp->body_len = body.len;
    resp->headers = headers.buf;
    AP_LOG(AP_LOG_DEBUG, "httpc_request method=%s url=%s status=%ld dur_ms=%.3f", method, req->url,
           status, (double)(uv_hrtime() - start) / 1e6);
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(c);
    return 0;

err_after_init:
    ap_free(body.buf);
    ap_free(headers.buf);
    ap_httpc_resp_free(resp);
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(c);
    return err;
}

void ap_httpc_resp_free(struct ap_httpc_resp *resp)
{
    ap_free(resp->body);
    ap_free(resp->content_type);
    ap_free(resp->headers);
    memset(resp, 0, sizeof *resp);
}

const char *ap_httpc_resp_header(const struct ap_httpc_resp *resp, const char *name, char *buf,
                                 size_t size)
{
    size_t nlen = strlen(name);
    for (const char *line = resp->headers; line != NULL && *line != '\0';) {
        const char *eol = strchr(line, '\n');
        size_t llen = eol != NULL ? (size_t)(eol - line) : strlen(line);
        if (llen > nlen && line[nlen] == ':' && strncasecmp(line, name, nlen) == 0) {
            const char *v = line + nlen + 1;
            const char *end = line + llen;
            while (v < end && (*v == ' ' || *v == '\t')) {
                v++;
            }
            while (end > v && (end[-1] == '\r' || end[-1] == ' ' || end[-1] == '\t')) {
                end--;
            }
            if (size == 0) {
                return NULL;
            }
            size_t n = (size_t)(end - v) < size - 1 ? (size_t)(end - v) : size - 1;
            memcpy(buf, v, n);
            buf[n] = '\0';
            return buf;
        }
        line = eol != NULL ? eol + 1 : line + llen;
    }
    return NULL;
}

/* ---- asynchronous requests on the threadpool ---- */

struct job {
    uv_work_t work;
    struct ap_httpc_req req; /* points into the copies below */
    char *method;
    char *url;
    char *source_ip;
    void *body;
    char **headers;
    struct ap_httpc_resp resp;
    int err;
    char errmsg[AP_ERRMSG_SIZE];
    ap_httpc_cb cb;
    void *data;
};

static void job_free(struct job *j)
{
    for (size_t i = 0; j->headers != NULL && j->headers[i] != NULL; i++) {
        ap_free(j->headers[i]);
    }
    ap_free(j->headers);
    ap_free(j->method);
    ap_free(j->url);
    ap_free(j->source_ip);
    ap_free(j->body);
    ap_httpc_resp_free(&j->resp);
    ap_free(j);
}

static int job_copy(struct job *j, const struct ap_httpc_req *req)
{
    j->req = *req;
    j->url = ap_strdup(req->url);
    j->req.url = j->url;
    if (j->url == NULL) {
        return AP_ENOMEM;
    }
    if (req->method != NULL) {
        j->method = ap_strdup(req->method);
        j->req.method = j->method;
        if (j->method == NULL) {
            return AP_ENOMEM;
        }
    }
    if (req->source_ip != NULL) {
        j->source_ip = ap_strdup(req->source_ip);
        j->req.source_ip = j->source_ip;
        if (j->source_ip == NULL) {
            return AP_ENOMEM;
        }
    }
    if (req->body_len > 0) {
        j->body = ap_malloc(req->body_len);
        if (j->body == NULL) {
            return AP_ENOMEM;
        }
        memcpy(j->body, req->body, req->body_len);
    }
    j->req.body = j->body;
    if (req->headers != NULL) {
        size_t n = 0;
        while (req->headers[n] != NULL) {
            n++;
        }
        j->headers = ap_calloc(n + 1, sizeof *j->headers);
        if (j->headers == NULL) {
            return AP_ENOMEM;
        }
        for (size_t i = 0; i < n; i++) {
            j->headers[i] = ap_strdup(req->headers[i]);
            if (j->headers[i] == NULL) {
                return AP_ENOMEM;
            }
        }
        j->req.headers = (const char *const *)j->headers;
    }
    return 0;
}

static void job_work(uv_work_t *w)
{
    struct job *j = AP_CONTAINER_OF(w, struct job, work);
    j->err = ap_httpc_do(&j->req, &j->resp, j->errmsg);
}

static void job_done(uv_work_t *w, int status)
{
    struct job *j = AP_CONTAINER_OF(w, struct job, work);
    if (status == UV_ECANCELED) {
        ap_httpc_resp_free(&j->resp);
        j->err = AP_ECANCELED;
        ap_errmsg_set(j->errmsg, "%s %s: canceled", j->req.method != NULL ? j->req.method : "GET",
                      j->req.url);
    }
    j->cb(j->err, &j->resp, j->err != 0 ? j->errmsg : "", j->data);
    job_free(j);
}

int ap_httpc_start(uv_loop_t *loop, const struct ap_httpc_req *req, ap_httpc_cb cb, void *data)
{
    if (req->url == NULL || cb == NULL) {
        return AP_EINVAL;
    }
    struct job *j = ap_calloc(1, sizeof *j);
    if (j == NULL) {
        return AP_ENOMEM;
    }
    int rc = job_copy(j, req);
    if (rc != 0) {
        goto err_after_alloc;
    }
    j->cb = cb;
    j->data = data;
    rc = uv_queue_work(loop, &j->work, job_work, job_done);
    if (rc != 0) {
        rc = ap_err_from_uv(rc);
        goto err_after_alloc;
    }
    return 0;

err_after_alloc:
    job_free(j);
    return rc;
}
