/* http: HTTP/JSON server on libmicrohttpd, driven from the daemon's libuv loop. */
#ifndef AP_HTTP_H
#define AP_HTTP_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct ap_http_server;
struct ap_http_req;

/** Body limit used when ap_http_server_new() is given max_body 0. */
#define AP_HTTP_DEFAULT_MAX_BODY (1024u * 1024u)

/** How long ap_http_server_close() waits for pending requests unless told otherwise. */
#define AP_HTTP_DEFAULT_CLOSE_GRACE_MS 2000u

/** Most path segments a route pattern or a routed request path may have. */
#define AP_HTTP_MAX_SEGMENTS 16

/** Longest Authorization header value relayed when forwarding (a token is at most 4 KiB). */
#define AP_HTTP_MAX_AUTH_HEADER 4200u

/** Route flag: hand the body over as bytes; no JSON parsing, any content type. */
#define AP_HTTP_RAW_BODY 0x1u

/**
 * A route handler. It runs on the loop thread, owns nothing but must answer
 * req exactly once with one of the ap_http_reply_* functions, either before it
 * returns or later (asynchronously, e.g. from a raft or HTTP client callback).
 * The reply frees req; touching req after it is a bug.
 */
typedef void (*ap_http_handler)(struct ap_http_req *req, void *data);

/**
 * Start a server listening on ip:port (port 0 picks an ephemeral port, see
 * ap_http_server_port()). All its work runs on loop: libmicrohttpd's epoll fd
 * is watched with a uv_poll and its timeouts with a uv_timer, so handlers run
 * on the loop thread and may touch daemon state. Request bodies larger than
 * max_body bytes (0: AP_HTTP_DEFAULT_MAX_BODY) are refused with 413.
 * ip is an IPv4 or IPv6 literal. On success *out owns the server until
 * ap_http_server_close() calls back. Errors: AP_EINVAL (bad address),
 * AP_EBUSY (address in use), AP_EPERM, AP_ENOMEM, AP_EIO, with errmsg
 * (AP_ERRMSG_SIZE bytes) saying what failed.
 */
int ap_http_server_new(struct ap_http_server **out, uv_loop_t *loop, const char *ip, uint16_t port,
                       size_t max_body, char *errmsg);

/** The port the server is bound to (the real one when 0 was asked for). */
uint16_t ap_http_server_port(const struct ap_http_server *s);

/** The message of the server's last failed call (ap_http_route). */
const char *ap_http_server_errmsg(const struct ap_http_server *s);

/**
 * Route requests for method on pattern to h, with data passed through, for a
 * JSON route: a request body must be JSON (Content-Type application/json or
 * none, else 415) holding an object (else 400 invalid_json) before h runs.
 * pattern is a path of literal segments and "{name}" segments, each of which
 * matches one non-empty segment whose percent-decoded value
 * ap_http_req_param() returns; a segment may end with a literal action suffix
 * after a colon ("/v1/placements:explain", "/v1/sites/{name}:drain"). When
 * several routes match, the one with a literal earliest wins. Strings are
 * copied. Errors: AP_EINVAL (malformed pattern or method), AP_EEXIST (same
 * method and pattern twice), AP_ENOMEM; the message is in
 * ap_http_server_errmsg().
 */
int ap_http_route(struct ap_http_server *s, const char *method, const char *pattern,
                  ap_http_handler h, void *data);

/** ap_http_route() with flags (AP_HTTP_RAW_BODY). */
int ap_http_route_ex(struct ap_http_server *s, const char *method, const char *pattern,
                     unsigned flags, ap_http_handler h, void *data);

/** How long ap_http_server_close() lets pending handlers reply before it answers for them. */
void ap_http_server_set_close_grace(struct ap_http_server *s, uint64_t grace_ms);

/**
 * Close the server: stop accepting at once, answer new requests on open
 * connections with 503 shutting_down, give handlers that have not replied yet
 * the grace period (ap_http_server_set_close_grace) to do so, then answer the
 * rest with 503 shutting_down, let responses drain (at most one more second),
 * stop libmicrohttpd and close the uv handles. cb(data) then fires once on the
 * loop and s is freed. A handler that replies after its request was answered
 * for it is harmless: that late reply is discarded and frees the request,
 * which outlives the server until then (so every handed request must still
 * be replied to). Calling this twice is a bug.
 */
void ap_http_server_close(struct ap_http_server *s, void (*cb)(void *data), void *data);

/** The request method ("GET"). Owned by req. */
const char *ap_http_req_method(const struct ap_http_req *r);

/** The request path as sent, without the query string (not percent-decoded). Owned by req. */
const char *ap_http_req_path(const struct ap_http_req *r);

/** The percent-decoded value of the route's {name} segment, or NULL. Owned by req. */
const char *ap_http_req_param(const struct ap_http_req *r, const char *name);

/**
 * The decoded value of query argument name ('+' reads as a space, %XX as
 * that byte), "" when it has no value, NULL if absent (the first one wins
 * when repeated). Owned by req.
 */
const char *ap_http_req_query(const struct ap_http_req *r, const char *name);

/**
 * Rebuild the query arguments among keys (NULL-terminated) that r carries,
 * percent-encoded, as "?a=b&c=d" (or "" when none) into out (size bytes),
 * for relaying a request. An argument that does not fit is left out.
 */
void ap_http_req_query_string(const struct ap_http_req *r, const char *const *keys, char *out,
                              size_t size);

/** A request header by case-insensitive name, or NULL. Owned by req. */
const char *ap_http_req_header(const struct ap_http_req *r, const char *name);

/** The request body and its length (NUL-terminated for convenience; NULL when empty). */
const uint8_t *ap_http_req_body(const struct ap_http_req *r, size_t *len);

/** The body parsed as a JSON object, borrowed from req; NULL when the body is empty or raw. */
json_t *ap_http_req_json(struct ap_http_req *r);

/** The client's address, "ip:port" ("[ip]:port" for IPv6). Owned by req. */
const char *ap_http_req_peer(const struct ap_http_req *r);

/**
 * Add a header to the coming reply (copied; e.g. Location, Retry-After).
 * Returns 0, AP_EINVAL for a name or value with control characters, or AP_ENOMEM.
 */
int ap_http_req_add_resp_header(struct ap_http_req *r, const char *name, const char *value);

/**
 * Answer req with status and body (stolen; NULL sends an empty object),
 * serialized with Content-Type application/json. Frees req. Exactly one
 * reply per request; a reply after the client went away is discarded.
 */
void ap_http_reply_json(struct ap_http_req *r, unsigned status, json_t *body);

/** Answer req with raw bytes (copied) of content_type (NULL: application/octet-stream). Frees req.
 */
void ap_http_reply_raw(struct ap_http_req *r, unsigned status, const char *content_type,
                       const void *body, size_t len);

/**
 * Answer req with the one error shape,
 * {"error":{"code":code,"message":message,"details":details}}, details
 * (stolen) being {} when NULL. Frees req.
 */
void ap_http_reply_error(struct ap_http_req *r, unsigned status, const char *code,
                         const char *message, json_t *details);

/**
 * Answer req with the error shape for an AP_E* code: status from
 * ap_err_http_status(), code from ap_err_code(), message (NULL:
 * ap_strerror()). Frees req.
 */
void ap_http_reply_err(struct ap_http_req *r, int ap_err, const char *message);

struct ap_metrics;

/** Answer 200 with the Prometheus text of m (text/plain; version=0.0.4), or a 500 error. */
void ap_http_reply_metrics(struct ap_http_req *r, struct ap_metrics *m);

/**
 * Parse a request body the way the server does for JSON routes: an empty body
 * gives 0 and *out NULL; a JSON object gives 0 and *out (new reference, the
 * caller decrefs). Invalid JSON or UTF-8, duplicate keys, or a value that is
 * not an object give AP_EPROTO with errmsg (AP_ERRMSG_SIZE bytes) and, when
 * details is not NULL, *details set to a new object {"line","column","position"}
 * locating the error (or NULL).
 */
int ap_http_parse_json_body(const uint8_t *body, size_t len, json_t **out, json_t **details,
                            char *errmsg);

/*
 * Field validation for handlers. Each reads obj[key] (obj may be NULL, which
 * reads as an empty object; a JSON null reads as absent). Absent and not
 * required: returns 0 and leaves *out untouched, so preset a default.
 * Otherwise returns 0 with *out set, or AP_EINVAL with a message naming the
 * field in errmsg (AP_ERRMSG_SIZE bytes), fit for ap_http_reply_err().
 */

/** A string of at most max_len bytes (0: no limit); *out is borrowed from obj. */
int ap_http_json_get_str(json_t *obj, const char *key, bool required, size_t max_len,
                         const char **out, char *errmsg);

/** An integer (not a real) within [min, max]. */
int ap_http_json_get_int(json_t *obj, const char *key, bool required, int64_t min, int64_t max,
                         int64_t *out, char *errmsg);

/** A boolean. */
int ap_http_json_get_bool(json_t *obj, const char *key, bool required, bool *out, char *errmsg);

/** An object; *out is borrowed from obj. */
int ap_http_json_get_obj(json_t *obj, const char *key, bool required, json_t **out, char *errmsg);

/** An array of at most max_items elements (0: no limit); *out is borrowed from obj. */
int ap_http_json_get_array(json_t *obj, const char *key, bool required, size_t max_items,
                           json_t **out, char *errmsg);

/**
 * Reject keys of obj that are not in allowed (NULL-terminated): AP_EINVAL
 * with "unknown field 'x'". A NULL obj has no fields. Returns 0 otherwise.
 */
int ap_http_json_check_fields(json_t *obj, const char *const *allowed, char *errmsg);

#endif
