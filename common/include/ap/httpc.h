/* httpc: HTTP client on libcurl, blocking or on the libuv threadpool, for forwarding and the CLI.
 */
#ifndef AP_HTTPC_H
#define AP_HTTPC_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/** Whole-request timeout used when a request says 0. */
#define AP_HTTPC_DEFAULT_TIMEOUT_MS 10000u

/** Response body limit used when a request says 0. */
#define AP_HTTPC_DEFAULT_MAX_RESP (16u * 1024u * 1024u)

/** Most bytes of response headers kept. */
#define AP_HTTPC_MAX_HEADER_BYTES (64u * 1024u)

/**
 * One request. Embedded by the caller; every pointer is borrowed for the
 * duration of ap_httpc_do(), or only of the ap_httpc_start() call (it copies).
 */
struct ap_httpc_req {
    const char *method;         /**< "GET" when NULL */
    const char *url;            /**< http:// or https:// URL */
    const void *body;           /**< request body, or NULL */
    size_t body_len;            /**< its length in bytes */
    const char *const *headers; /**< NULL-terminated "Name: value" lines, or NULL */
    uint64_t timeout_ms;        /**< whole request; 0: AP_HTTPC_DEFAULT_TIMEOUT_MS */
    const char *source_ip;      /**< bind outgoing connections to this local IP, or NULL */
    size_t max_resp;            /**< response body limit; 0: AP_HTTPC_DEFAULT_MAX_RESP */
};

/** A response. Filled by the client; release with ap_httpc_resp_free(). */
struct ap_httpc_resp {
    unsigned status;    /**< HTTP status (a 4xx or 5xx is a response, not an error) */
    char *body;         /**< malloc'd, NUL-terminated (not counted in body_len); NULL if empty */
    size_t body_len;    /**< body length in bytes */
    char *content_type; /**< malloc'd Content-Type, or NULL when absent */
    char *headers; /**< malloc'd raw header block of the final response ("Name: value\r\n"...) */
};

/**
 * Called once on the loop thread when an ap_httpc_start() request ends. err
 * is 0 or an AP_E* code as from ap_httpc_do() (AP_ECANCELED if the work was
 * canceled) with errmsg describing it ("" on success). resp is filled when err
 * is 0, zeroed otherwise, and valid only during the call; the callback
 * may take resp->body (and set it to NULL) to keep it.
 */
typedef void (*ap_httpc_cb)(int err, struct ap_httpc_resp *resp, const char *errmsg, void *data);

/**
 * Perform req and block until the response is in or the timeout passes.
 * Without a Content-Type header a body is sent as application/json; curl's
 * proxy settings from the environment are ignored and redirects are not
 * followed. Safe to call from any thread (libcurl is initialised once,
 * process-wide, through pthread_once, and never cleaned up). On success
 * *resp is filled and owned by the caller. Errors (with errmsg,
 * AP_ERRMSG_SIZE bytes, naming the method, URL and curl's message):
 * AP_ETIMEDOUT; AP_ECONN (refused, reset, could not bind source_ip,
 * unresolvable host); AP_ETOOBIG (response body over max_resp); AP_EINVAL
 * (bad URL or method); AP_ENOMEM; AP_EIO (anything else). *resp is then
 * empty.
 */
int ap_httpc_do(const struct ap_httpc_req *req, struct ap_httpc_resp *resp, char *errmsg);

/**
 * Start req on loop's threadpool (uv_queue_work; the request is copied, so
 * the caller's buffers need not outlive this call). Returns 0 and cb(data)
 * fires exactly once on the loop thread, or returns AP_ENOMEM / AP_EINVAL
 * (no URL or no cb) and cb never fires. The loop stays alive until cb has fired,
 * which takes at most about the request's timeout. Note that the request
 * occupies a threadpool thread (UV_THREADPOOL_SIZE, default 4) meanwhile.
 */
int ap_httpc_start(uv_loop_t *loop, const struct ap_httpc_req *req, ap_httpc_cb cb, void *data);

/** A response header by case-insensitive name, copied into buf (size bytes); NULL if absent. */
const char *ap_httpc_resp_header(const struct ap_httpc_resp *resp, const char *name, char *buf,
                                 size_t size);

/** Free what resp holds and zero it; a zeroed or freed resp is fine. */
void ap_httpc_resp_free(struct ap_httpc_resp *resp);

#endif
