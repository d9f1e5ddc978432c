/* Unit tests for httpc: blocking and threadpool requests against an http server on 127.0.0.1. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "ap/base.h"
#include "ap/err.h"
#include "ap/http.h"
#include "ap/httpc.h"
#include "ap/log.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#define WATCHDOG_MS 10000

/*
 * The server runs on its own loop and thread, so that the test thread can
 * block in ap_httpc_do(); the async tests run a second server on the test's
 * own loop.
 */
struct fx {
    uv_loop_t loop;
    uv_thread_t thread;
    uv_async_t stop;
    struct ap_http_server *srv;
    char base[64];
    struct ap_http_req *parked; /* touched on the server thread only */
};

static void h_echo(struct ap_http_req *req, void *data)
{
    size_t len;
    const uint8_t *body = ap_http_req_body(req, &len);
    const char *auth = ap_http_req_header(req, "Authorization");
    const char *ct = ap_http_req_header(req, "Content-Type");
    AP_UNUSED(data);
    ap_http_req_add_resp_header(req, "X-Leader", "127.0.0.9:7000");
    ap_http_reply_json(req, 200,
                       json_pack("{s:s,s:s?,s:s?,s:s%,s:s}", "method", ap_http_req_method(req),
                                 "auth", auth, "ct", ct, "body",
                                 body != NULL ? (const char *)body : "", len, "peer",
                                 ap_http_req_peer(req)));
}

static void h_big(struct ap_http_req *req, void *data)
{
    char buf[4096];
    AP_UNUSED(data);
    memset(buf, 'b', sizeof buf);
    ap_http_reply_raw(req, 200, "text/plain", buf, sizeof buf);
}

static void h_status(struct ap_http_req *req, void *data)
{
    AP_UNUSED(data);
    ap_http_reply_err(req, AP_ENOTLEADER, "ask the leader");
}

static void h_park(struct ap_http_req *req, void *data)
{
    struct fx *f = data;
    f->parked = req;
}

static void add_routes(struct fx *f)
{
    static const char *const methods[] = {"GET", "POST", "PUT", "DELETE", "PATCH"};
    for (size_t i = 0; i < AP_ARRAY_LEN(methods); i++) {
        assert_int_equal(ap_http_route_ex(f->srv, methods[i], "/echo", AP_HTTP_RAW_BODY, h_echo, f),
                         0);
    }
    assert_int_equal(ap_http_route(f->srv, "GET", "/big", h_big, f), 0);
    assert_int_equal(ap_http_route(f->srv, "GET", "/status", h_status, f), 0);
    assert_int_equal(ap_http_route(f->srv, "GET", "/park", h_park, f), 0);
}

static void server_start(struct fx *f)
{
    char errmsg[AP_ERRMSG_SIZE];
    assert_int_equal(uv_loop_init(&f->loop), 0);
    assert_int_equal(ap_http_server_new(&f->srv, &f->loop, "127.0.0.1", 0, 1 << 20, errmsg), 0);
    ap_http_server_set_close_grace(f->srv, 0);
    snprintf(f->base, sizeof f->base, "http://127.0.0.1:%u", ap_http_server_port(f->srv));
    add_routes(f);
}

static void on_server_closed(void *data)
{
    struct fx *f = data;
    /* A late reply to a request the server already answered is harmless. */
    if (f->parked != NULL) {
        ap_http_reply_json(f->parked, 200, NULL);
        f->parked = NULL;
    }
    uv_close((uv_handle_t *)&f->stop, NULL);
}

static void on_stop(uv_async_t *a)
{
    struct fx *f = a->data;
    ap_http_server_close(f->srv, on_server_closed, f);
}

static void server_thread(void *arg)
{
    struct fx *f = arg;
    uv_run(&f->loop, UV_RUN_DEFAULT);
}

static int setup_thread(void **state)
{
    struct fx *f = ap_calloc(1, sizeof *f);
    assert_non_null(f);
    server_start(f);
    f->stop.data = f;
    assert_int_equal(uv_async_init(&f->loop, &f->stop, on_stop), 0);
    assert_int_equal(uv_thread_create(&f->thread, server_thread, f), 0);
    *state = f;
    return 0;
}

static int teardown_thread(void **state)
{
    struct fx *f = *state;
    uv_async_send(&f->stop);
    uv_thread_join(&f->thread);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    ap_free(f);
    return 0;
}

static json_t *body_json(const struct ap_httpc_resp *resp)
{
    assert_non_null(resp->body);
    json_t *j = json_loads(resp->body, 0, NULL);
    assert_non_null(j);
    return j;
}

static void url_of(const struct fx *f, const char *path, char *url, size_t size)
{
    snprintf(url, size, "%s%s", f->base, path);
}

/* ---- synchronous ---- */

static void test_get_round_trip(void **state)
{
    struct fx *f = *state;
    char url[128];
    char errmsg[AP_ERRMSG_SIZE];
    char leader[64];
    struct ap_httpc_resp resp;
    url_of(f, "/echo", url, sizeof url);
    struct ap_httpc_req req = {.url = url};

    assert_int_equal(ap_httpc_do(&req, &resp, errmsg), 0);
    assert_int_equal(resp.status, 200);
    assert_string_equal(resp.content_type, "application/json");
    assert_int_equal(resp.body_len, strlen(resp.body));
    assert_string_equal(ap_httpc_resp_header(&resp, "x-leader", leader, sizeof leader),
                        "127.0.0.9:7000");
    assert_null(ap_httpc_resp_header(&resp, "X-Missing", leader, sizeof leader));
    json_t *j = body_json(&resp);
    assert_string_equal(json_string_value(json_object_get(j, "method")), "GET");
    assert_string_equal(json_string_value(json_object_get(j, "body")), "");
    assert_null(json_string_value(json_object_get(j, "ct")));
    json_decref(j);
    ap_httpc_resp_free(&resp);
    ap_httpc_resp_free(&resp); /* a freed resp is fine */

    /* An error status is a response, not a failure. */
    url_of(f, "/status", url, sizeof url);
    assert_int_equal(ap_httpc_do(&req, &resp, errmsg), 0);
    assert_int_equal(resp.status, 503);
    j = body_json(&resp);
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "error"), "code")),
                        "not_leader");
    json_decref(j);
    ap_httpc_resp_free(&resp);
}

static void test_post_headers(void **state)
{
    struct fx *f = *state;
    char url[128];
    char errmsg[AP_ERRMSG_SIZE];
    struct ap_httpc_resp resp;
    const char *const hdrs[] = {"Authorization: Bearer t0k3n", NULL};
    const char body[] = "{\"k\":\"v\"}";
    url_of(f, "/echo", url, sizeof url);
    struct ap_httpc_req req = {
        .method = "POST", .url = url, .body = body, .body_len = strlen(body), .headers = hdrs};

    assert_int_equal(ap_httpc_do(&req, &resp, errmsg), 0);
    assert_int_equal(resp.status, 200);
    json_t *j = body_json(&resp);
    assert_string_equal(json_string_value(json_object_get(j, "method")), "POST");
    assert_string_equal(json_string_value(json_object_get(j, "auth")), "Bearer t0k3n");
    /* A body without a Content-Type goes as JSON. */
    assert_string_equal(json_string_value(json_object_get(j, "ct")), "application/json");
    assert_string_equal(json_string_value(json_object_get(j, "body")), body);
    json_decref(j);
    ap_httpc_resp_free(&resp);

    /* Other methods carry their body too, and a given Content-Type is kept. */
    static const char *const methods[] = {"PUT", "PATCH", "DELETE"};
    const char *const text[] = {"Content-Type: text/plain", NULL};
    for (size_t i = 0; i < AP_ARRAY_LEN(methods); i++) {
        struct ap_httpc_req r2 = {
            .method = methods[i], .url = url, .body = "abc", .body_len = 3, .headers = text};
        assert_int_equal(ap_httpc_do(&r2, &resp, errmsg), 0);
        assert_int_equal(resp.status, 200);
        j = body_json(&resp);
        assert_string_equal(json_string_value(json_object_get(j, "method")), methods[i]);
        assert_string_equal(json_string_value(json_object_get(j, "ct")), "text/plain");
        assert_string_equal(json_string_value(json_object_get(j, "body")), "abc");
        json_decref(j);
        ap_httpc_resp_free(&resp);
    }
}

static void test_source_ip(void **state)
{
    struct fx *f = *state;
    char url[128];
    char errmsg[AP_ERRMSG_SIZE];
    struct ap_httpc_resp resp;
    url_of(f, "/echo", url, sizeof url);
    /* All of 127.0.0.0/8 is local on Linux: a node's own loopback address. */
    struct ap_httpc_req req = {.url = url, .source_ip = "127.0.11.2"};

    assert_int_equal(ap_httpc_do(&req, &resp, errmsg), 0);
    json_t *j = body_json(&resp);
    assert_true(strncmp(json_string_value(json_object_get(j, "peer")), "127.0.11.2:", 11) == 0);
    json_decref(j);
    ap_httpc_resp_free(&resp);
}

static void test_timeout(void **state)
{
    struct fx *f = *state;
    char url[128];
    char errmsg[AP_ERRMSG_SIZE];
    struct ap_httpc_resp resp;
    url_of(f, "/park", url, sizeof url);
    struct ap_httpc_req req = {.url = url, .timeout_ms = 200};

    uint64_t start = uv_hrtime();
    assert_int_equal(ap_httpc_do(&req, &resp, errmsg), AP_ETIMEDOUT);
    uint64_t ms = (uv_hrtime() - start) / 1000000;
    assert_true(ms >= 150 && ms < 3000);
    assert_non_null(strstr(errmsg, "GET http://127.0.0.1:"));
    assert_non_null(strstr(errmsg, "/park"));
    assert_null(resp.body);
    assert_int_equal(resp.status, 0);
}

/* A port nothing listens on: bind one, note it, close it. */
static uint16_t dead_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t len = sizeof sa;
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

static void test_connection_refused(void **state)
{
    char url[128];
    char errmsg[AP_ERRMSG_SIZE];
    struct ap_httpc_resp resp;
    AP_UNUSED(state);
    snprintf(url, sizeof url, "http://127.0.0.1:%u/x", dead_port());
    struct ap_httpc_req req = {.url = url, .timeout_ms = 2000};

    assert_int_equal(ap_httpc_do(&req, &resp, errmsg), AP_ECONN);
    assert_non_null(strstr(errmsg, "connect"));
    assert_null(resp.body);
}

static void test_response_limit(void **state)
{
    struct fx *f = *state;
    char url[128];
    char errmsg[AP_ERRMSG_SIZE];
    struct ap_httpc_resp resp;
    url_of(f, "/big", url, sizeof url);
    struct ap_httpc_req req = {.url = url, .max_resp = 1024};

    assert_int_equal(ap_httpc_do(&req, &resp, errmsg), AP_ETOOBIG);
    assert_non_null(strstr(errmsg, "larger than 1024 bytes"));
    assert_null(resp.body);

    req.max_resp = 4096;
    assert_int_equal(ap_httpc_do(&req, &resp, errmsg), 0);
    assert_int_equal(resp.body_len, 4096);
    assert_string_equal(resp.content_type, "text/plain");
    ap_httpc_resp_free(&resp);
}

static void test_bad_requests(void **state)
{
    char errmsg[AP_ERRMSG_SIZE];
    struct ap_httpc_resp resp;
    AP_UNUSED(state);
    struct ap_httpc_req req = {.url = NULL};
    assert_int_equal(ap_httpc_do(&req, &resp, errmsg), AP_EINVAL);
    req.url = "http://127.0.0.1:1/";
    req.method = "GET /evil";
    assert_int_equal(ap_httpc_do(&req, &resp, errmsg), AP_EINVAL);
    req.method = NULL;
    req.url = "ftp://127.0.0.1/";
    assert_int_equal(ap_httpc_do(&req, &resp, errmsg), AP_EINVAL);
    req.url = "http://[::1";
    assert_int_equal(ap_httpc_do(&req, &resp, errmsg), AP_EINVAL);
    assert_null(resp.body);
}

/* ---- asynchronous, with the server on the same loop ---- */

struct done {
    int calls;
    int err;
    char errmsg[AP_ERRMSG_SIZE];
    unsigned status;
    char *body;
};

static void on_done(int err, struct ap_httpc_resp *resp, const char *errmsg, void *data)
{
    struct done *d = data;
    d->calls++;
    d->err = err;
    d->status = resp->status;
    ap_strlcpy(d->errmsg, errmsg, sizeof d->errmsg);
    d->body = resp->body; /* taken */
    resp->body = NULL;
}

static void on_watchdog(uv_timer_t *t)
{
    *(bool *)t->data = true;
}

static void on_dog_closed(uv_handle_t *h)
{
    *(bool *)h->data = true;
}

static void run_until_calls(uv_loop_t *loop, const int *calls, int want)
{
    uv_timer_t dog;
    bool expired = false;
    bool closed = false;
    uv_timer_init(loop, &dog);
    dog.data = &expired;
    uv_timer_start(&dog, on_watchdog, WATCHDOG_MS, 0);
    for (int i = 0; i < 100000 && *calls < want && !expired; i++) {
        uv_run(loop, UV_RUN_ONCE);
    }
    /* dog lives on this stack frame: wait until libuv lets go of it. */
    dog.data = &closed;
    uv_close((uv_handle_t *)&dog, on_dog_closed);
    for (int i = 0; i < 1000 && !closed; i++) {
        uv_run(loop, UV_RUN_NOWAIT);
    }
    assert_true(closed);
    assert_false(expired);
}

static void on_async_closed(void *data)
{
    *(bool *)data = true;
}

static void test_async(void **state)
{
    struct fx f;
    struct done d = {0};
    struct done refused = {0};
    bool closed = false;
    AP_UNUSED(state);
    memset(&f, 0, sizeof f);
    server_start(&f);

    /* The request is copied: its buffers are gone before it runs. */
    char *url = ap_malloc(128);
    char *body = ap_strdup("{\"async\":true}");
    char *hdr = ap_strdup("Authorization: Bearer async");
    const char **hdrs = ap_calloc(2, sizeof *hdrs);
    assert_true(url != NULL && body != NULL && hdr != NULL && hdrs != NULL);
    url_of(&f, "/echo", url, 128);
    hdrs[0] = hdr;
    struct ap_httpc_req req = {
        .method = "PUT", .url = url, .body = body, .body_len = strlen(body), .headers = hdrs};
    assert_int_equal(ap_httpc_start(&f.loop, &req, on_done, &d), 0);
    memset(url, 'x', 127);
    memset(body, 'x', strlen(body));
    memset(hdr, 'x', strlen(hdr));
    ap_free(url);
    ap_free(body);
    ap_free(hdr);
    ap_free(hdrs);

    char refused_url[64];
    snprintf(refused_url, sizeof refused_url, "http://127.0.0.1:%u/", dead_port());
    struct ap_httpc_req r2 = {.url = refused_url};
    assert_int_equal(ap_httpc_start(&f.loop, &r2, on_done, &refused), 0);

    struct ap_httpc_req none = {.url = NULL};
    assert_int_equal(ap_httpc_start(&f.loop, &none, on_done, &d), AP_EINVAL);

    run_until_calls(&f.loop, &d.calls, 1);
    run_until_calls(&f.loop, &refused.calls, 1);
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.err, 0);
    assert_int_equal(d.status, 200);
    assert_string_equal(d.errmsg, "");
    json_t *j = json_loads(d.body, 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "method")), "PUT");
    assert_string_equal(json_string_value(json_object_get(j, "body")), "{\"async\":true}");
    assert_string_equal(json_string_value(json_object_get(j, "auth")), "Bearer async");
    json_decref(j);
    ap_free(d.body);

    assert_int_equal(refused.calls, 1);
    assert_int_equal(refused.err, AP_ECONN);
    assert_non_null(strstr(refused.errmsg, refused_url));
    assert_null(refused.body);

    ap_http_server_close(f.srv, on_async_closed, &closed);
    for (int i = 0; i < 100000 && !closed; i++) {
        uv_run(&f.loop, UV_RUN_ONCE);
    }
    assert_true(closed);
    assert_int_equal(uv_run(&f.loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&f.loop), 0);
    /* Callbacks fired exactly once. */
    assert_int_equal(d.calls, 1);
    assert_int_equal(refused.calls, 1);
}

int main(void)
{
    ap_log_init("test_httpc", ap_log_level_from_env(AP_LOG_WARN), NULL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_get_round_trip, setup_thread, teardown_thread),
        cmocka_unit_test_setup_teardown(test_post_headers, setup_thread, teardown_thread),
        cmocka_unit_test_setup_teardown(test_source_ip, setup_thread, teardown_thread),
        cmocka_unit_test_setup_teardown(test_timeout, setup_thread, teardown_thread),
        cmocka_unit_test_setup_teardown(test_response_limit, setup_thread, teardown_thread),
        cmocka_unit_test(test_connection_refused),
        cmocka_unit_test(test_bad_requests),
        cmocka_unit_test(test_async),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
