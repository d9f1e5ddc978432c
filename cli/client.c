/* client: the CLI's HTTP requests to one archipel endpoint (libcurl) and their error messages. */
#include "client.h"

#include "ap/base.h"
#include "ap/err.h"

#include <ctype.h>
#include <curl/curl.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

struct client {
    CURL *curl;
    char endpoint[CLIENT_ENDPOINT_SIZE];
    char *auth_header; /* "Authorization: Bearer ...", or NULL */
    long timeout_ms;
    long connect_timeout_ms;
    char errmsg[AP_ERRMSG_SIZE];
};

/* A growing response body that refuses to pass CLIENT_MAX_BODY. */
struct sink {
    char *buf;
    size_t len;
    size_t cap;
    bool too_big;
};

int client__endpoint_norm(const char *in, char *out, size_t size, char *errmsg)
{
    const char *rest = in;
    const char *scheme = "http://";
    if (strncmp(in, "http://", 7) == 0) {
        rest = in + 7;
    } else if (strncmp(in, "https://", 8) == 0) {
        scheme = "https://";
        rest = in + 8;
    } else if (strstr(in, "://") != NULL) {
        ap_errmsg_set(errmsg, "endpoint '%.200s' must be an http:// or https:// URL", in);
        return AP_EINVAL;
    }
    size_t n = strlen(rest);
    while (n > 0 && rest[n - 1] == '/') {
        n--;
    }
    if (n == 0 || rest[0] == '/' || rest[0] == ':') {
        ap_errmsg_set(errmsg, "endpoint '%.200s' names no host", in);
        return AP_EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)rest[i];
        if (ch <= ' ' || ch >= 0x7f || ch == '?' || ch == '#') {
            ap_errmsg_set(errmsg,
                          "endpoint '%.200s' is not a plain URL (spaces, query or fragment)", in);
            return AP_EINVAL;
        }
    }
    int w = snprintf(out, size, "%s%.*s", scheme, (int)n, rest);
    if (w < 0 || (size_t)w >= size) {
        ap_errmsg_set(errmsg, "endpoint is longer than %zu bytes", size - 1);
        return AP_EINVAL;
    }
    return 0;
}

int client__token_ok(const char *token)
{
    size_t n = strlen(token);
    if (n == 0 || n > 4095) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)token[i];
        if (ch <= ' ' || ch >= 0x7f) {
            return 0;
        }
    }
    return 1;
}

int client__new(const struct client_opts *o, struct client **out, char *errmsg)
{
    *out = NULL;
    struct client *c = ap_calloc(1, sizeof *c);
    if (c == NULL) {
        ap_errmsg_set(errmsg, "out of memory");
        return AP_ENOMEM;
    }
    int rv = client__endpoint_norm(o->endpoint != NULL ? o->endpoint : "", c->endpoint,
                                   sizeof c->endpoint, errmsg);
    if (rv != 0) {
        goto err_after_alloc;
    }
    if (o->token != NULL && o->token[0] != '\0') {
        if (!client__token_ok(o->token)) {
            ap_errmsg_set(errmsg, "the token must be printable ASCII without spaces");
            rv = AP_EINVAL;
            goto err_after_alloc;
        }
        size_t n = strlen(o->token) + sizeof "Authorization: Bearer ";
        c->auth_header = ap_malloc(n);
        if (c->auth_header == NULL) {
            ap_errmsg_set(errmsg, "out of memory");
            rv = AP_ENOMEM;
            goto err_after_alloc;
        }
        snprintf(c->auth_header, n, "Authorization: Bearer %s", o->token);
    }
    c->timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : CLIENT_TIMEOUT_MS;
    c->connect_timeout_ms =
        o->connect_timeout_ms > 0 ? o->connect_timeout_ms : CLIENT_CONNECT_TIMEOUT_MS;
    /* The CLI is single-threaded; curl_global_init is reference-counted. */
    CURLcode crc = curl_global_init(CURL_GLOBAL_ALL);
    if (crc != CURLE_OK) {
        ap_errmsg_set(errmsg, "curl_global_init: %s", curl_easy_strerror(crc));
        rv = AP_EIO;
        goto err_after_header;
    }
    c->curl = curl_easy_init();
    if (c->curl == NULL) {
        ap_errmsg_set(errmsg, "curl_easy_init failed");
        rv = AP_ENOMEM;
        goto err_after_global;
    }
    *out = c;
    return 0;

err_after_global:
    curl_global_cleanup();
err_after_header:
    ap_free(c->auth_header);
err_after_alloc:
    ap_free(c);
    return rv;
}

void client__free(struct client *c)
{
    if (c == NULL) {
        return;
    }
    curl_easy_cleanup(c->curl);
    curl_global_cleanup();
    ap_free(c->auth_header);
    ap_free(c);
}

const char *client__endpoint(const struct client *c)
{
    return c->endpoint;
}

const char *client__errmsg(const struct client *c)
{
    return c->errmsg;
}

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct sink *s = userdata;
    size_t n = size * nmemb;
    if (n > CLIENT_MAX_BODY - s->len) {
        s->too_big = true;
        return 0; /* curl: anything but n aborts the transfer */
    }
    if (s->len + n + 1 > s->cap) {
        size_t cap = s->cap == 0 ? 4096 : s->cap;
        while (cap < s->len + n + 1) {
            cap *= 2;
        }
        char *b = ap_realloc(s->buf, cap);
        if (b == NULL) {
            return 0;
        }
        s->buf = b;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, ptr, n);
    s->len += n;
    s->buf[s->len] = '\0';
    return n;
}

/* curl_easy_setopt, keeping the first failure in *rc. */
#define SETOPT(c, rc, opt, val)                                                                    \
    do {                                                                                           \
        if (*(rc) == CURLE_OK) {                                                                   \
            *(rc) = curl_easy_setopt((c), (opt), (val));                                           \
        }                                                                                          \
    } while (0)

static CURLcode configure(struct client *c, const char *method, const char *url, const char *body,
                          long timeout_ms, struct curl_slist *hdrs, struct sink *sink, char *errbuf)
{
    CURL *h = c->curl;
    CURLcode rc = CURLE_OK;
    /* Reset drops the previous request's options but keeps the open connection. */
    curl_easy_reset(h);
    SETOPT(h, &rc, CURLOPT_URL, url);
    SETOPT(h, &rc, CURLOPT_NOSIGNAL, 1L);
    SETOPT(h, &rc, CURLOPT_ERRORBUFFER, errbuf);
    /* Like every archipel client, the CLI talks to the endpoint directly: docs/cli.md. */
    SETOPT(h, &rc, CURLOPT_PROXY, "");
    SETOPT(h, &rc, CURLOPT_FOLLOWLOCATION, 0L);
    SETOPT(h, &rc, CURLOPT_PROTOCOLS_STR, "http,https");
    SETOPT(h, &rc, CURLOPT_TIMEOUT_MS, timeout_ms);
    SETOPT(h, &rc, CURLOPT_CONNECTTIMEOUT_MS,
           c->connect_timeout_ms < timeout_ms ? c->connect_timeout_ms : timeout_ms);
    SETOPT(h, &rc, CURLOPT_WRITEFUNCTION, on_body);
    SETOPT(h, &rc, CURLOPT_WRITEDATA, sink);
    SETOPT(h, &rc, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)CLIENT_MAX_BODY);
    SETOPT(h, &rc, CURLOPT_USERAGENT, "archipel-cli/" AP_VERSION);
    if (strcmp(method, "GET") == 0) {
        SETOPT(h, &rc, CURLOPT_HTTPGET, 1L);
    } else if (strcmp(method, "POST") == 0 || body != NULL) {
        SETOPT(h, &rc, CURLOPT_POSTFIELDS, body != NULL ? body : "");
        SETOPT(h, &rc, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(body != NULL ? strlen(body) : 0));
        if (strcmp(method, "POST") != 0) {
            SETOPT(h, &rc, CURLOPT_CUSTOMREQUEST, method);
        }
    } else {
        SETOPT(h, &rc, CURLOPT_CUSTOMREQUEST, method);
    }
    SETOPT(h, &rc, CURLOPT_HTTPHEADER, hdrs);
    return rc;
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
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_WEIRD_SERVER_REPLY:
        return AP_ECONN;
    case CURLE_FILESIZE_EXCEEDED:
        return AP_ETOOBIG;
    case CURLE_WRITE_ERROR:
        return too_big ? AP_ETOOBIG : AP_ENOMEM;
    case CURLE_OUT_OF_MEMORY:
        return AP_ENOMEM;
    default:
        return AP_EIO;
    }
}

/* Content-Type without parameters, lowercased; NULL when absent or out of memory. */
static char *bare_content_type(const char *ct)
{
    if (ct == NULL) {
        return NULL;
    }
    size_t n = strcspn(ct, "; \t");
    char *out = ap_malloc(n + 1);
    if (out == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        out[i] = (char)tolower((unsigned char)ct[i]);
    }
    out[n] = '\0';
    return out;
}

int client__do(struct client *c, const char *method, const char *path, const char *body,
               long timeout_ms, struct client_resp *resp)
{
    char errbuf[CURL_ERROR_SIZE] = "";
    struct sink sink = {0};
    struct curl_slist *hdrs = NULL;
    int err = AP_ENOMEM;

    memset(resp, 0, sizeof *resp);
    c->errmsg[0] = '\0';
    size_t url_len = strlen(c->endpoint) + strlen(path) + 1;
    char *url = ap_malloc(url_len);
    if (url == NULL) {
        ap_errmsg_set(c->errmsg, "out of memory");
        return AP_ENOMEM;
    }
    snprintf(url, url_len, "%s%s", c->endpoint, path);
    const char *lines[] = {
        "Accept: application/json, text/plain",
        /* Send the body at once instead of waiting for "100 Continue". */
        "Expect:",
        body != NULL ? "Content-Type: application/json" : NULL,
        c->auth_header,
    };
    for (size_t i = 0; i < AP_ARRAY_LEN(lines); i++) {
        if (lines[i] == NULL) {
            continue;
        }
        struct curl_slist *l = curl_slist_append(hdrs, lines[i]);
        if (l == NULL) {
            ap_errmsg_set(c->errmsg, "out of memory");
            goto out;
        }
        hdrs = l;
    }
    CURLcode rc = configure(c, method, url, body, timeout_ms > 0 ? timeout_ms : c->timeout_ms, hdrs,
                            &sink, errbuf);
    if (rc == CURLE_OK) {
        rc = curl_easy_perform(c->curl);
    }
    err = err_from_curl(rc, sink.too_big);
    if (err == AP_ECONN || err == AP_ETIMEDOUT) {
        ap_errmsg_set(c->errmsg, "cannot reach %s: %s", c->endpoint,
                      errbuf[0] != '\0' ? errbuf : curl_easy_strerror(rc));
        goto out;
    }
    if (err == AP_ETOOBIG) {
        ap_errmsg_set(c->errmsg, "%s %s: the answer is larger than %u bytes", method, url,
                      CLIENT_MAX_BODY);
        goto out;
    }
    if (err != 0) {
        ap_errmsg_set(c->errmsg, "%s %s: %s", method, url,
                      errbuf[0] != '\0' ? errbuf : curl_easy_strerror(rc));
        goto out;
    }
    if (sink.buf == NULL) {
        sink.buf = ap_malloc(1);
        if (sink.buf == NULL) {
            ap_errmsg_set(c->errmsg, "out of memory");
            err = AP_ENOMEM;
            goto out;
        }
        sink.buf[0] = '\0';
    }
    char *ct = NULL;
    curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &resp->status);
    curl_easy_getinfo(c->curl, CURLINFO_CONTENT_TYPE, &ct);
    resp->content_type = bare_content_type(ct);
    resp->body = sink.buf;
    resp->len = sink.len;
    sink.buf = NULL;

out:
    ap_free(sink.buf);
    curl_slist_free_all(hdrs);
    ap_free(url);
    return err;
}

void client__describe_error(const struct client_resp *resp, char *out, size_t size)
{
    json_t *doc = resp->body != NULL ? json_loadb(resp->body, resp->len, 0, NULL) : NULL;
    json_t *e = json_object_get(doc, "error");
    const char *msg = json_string_value(json_object_get(e, "message"));
    const char *code = json_string_value(json_object_get(e, "code"));
    if (msg != NULL) {
        if (code != NULL) {
            snprintf(out, size, "%s (%s, HTTP %ld)", msg, code, resp->status);
        } else {
            snprintf(out, size, "%s (HTTP %ld)", msg, resp->status);
        }
        json_decref(doc);
        return;
    }
    json_decref(doc);
    /* Not the documented shape (a proxy, another server): its first line says most. */
    const char *text = resp->body != NULL ? resp->body : "";
    text += strspn(text, " \t\r\n");
    int n = (int)strcspn(text, "\r\n");
    if (n > 200) {
        n = 200;
    }
    if (n == 0) {
        snprintf(out, size, "the server answered with an error (HTTP %ld)", resp->status);
    } else {
        snprintf(out, size, "%.*s (HTTP %ld)", n, text, resp->status);
    }
}

void client__resp_free(struct client_resp *resp)
{
    ap_free(resp->body);
    ap_free(resp->content_type);
    memset(resp, 0, sizeof *resp);
}
