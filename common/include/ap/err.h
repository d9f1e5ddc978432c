/* err: archipel's error codes, translators from foreign codes, errmsg buffers. */
#ifndef AP_ERR_H
#define AP_ERR_H

#include <stddef.h>

/**
 * The one table of error codes. Columns: name, value (negative), the HTTP
 * status it maps to when it reaches a client, the JSON error code string,
 * and a human message.
 */
#define AP_ERR_TABLE(X)                                                                            \
    X(AP_ENOMEM, -1, 500, "out_of_memory", "out of memory")                                        \
    X(AP_EINVAL, -2, 400, "invalid_argument", "invalid argument")                                  \
    X(AP_EPROTO, -3, 400, "protocol_error", "protocol error")                                      \
    X(AP_EIO, -4, 500, "io_error", "I/O error")                                                    \
    X(AP_ENOTFOUND, -5, 404, "not_found", "not found")                                             \
    X(AP_EEXIST, -6, 409, "already_exists", "already exists")                                      \
    X(AP_ECANCELED, -7, 503, "canceled", "operation canceled")                                     \
    X(AP_ETOOBIG, -8, 413, "too_large", "too large")                                               \
    X(AP_EBUSY, -9, 503, "busy", "resource busy")                                                  \
    X(AP_ENOTLEADER, -10, 503, "not_leader", "not the leader")                                     \
    X(AP_ETIMEDOUT, -11, 504, "timeout", "timed out")                                              \
    X(AP_ECONN, -12, 502, "connection_failed", "connection failed")                                \
    X(AP_ECORRUPT, -13, 500, "corrupt", "data corrupt")                                            \
    X(AP_EQUOTA, -14, 403, "quota_exceeded", "quota exceeded")                                     \
    X(AP_EPERM, -15, 403, "forbidden", "permission denied")                                        \
    X(AP_EAGAIN, -16, 503, "unavailable", "temporarily unavailable")                               \
    X(AP_ESHUTDOWN, -17, 503, "shutting_down", "shutting down")                                    \
    X(AP_EAUTH, -18, 401, "unauthenticated", "authentication required")                            \
    X(AP_ECONFLICT, -19, 409, "conflict", "conflict")                                              \
    X(AP_ENOSPACE, -20, 507, "no_space", "no space left")                                          \
    X(AP_EMETHOD, -21, 405, "method_not_allowed", "method not allowed")                            \
    X(AP_EUNSUPPORTED, -22, 415, "unsupported_media_type", "unsupported media type")               \
    X(AP_EINTERNAL, -23, 500, "internal", "internal error")

enum ap_err {
#define AP_ERR_ENUM(name, value, http, code, msg) name = (value),
    AP_ERR_TABLE(AP_ERR_ENUM)
#undef AP_ERR_ENUM
};

/** Size of every errmsg buffer a long-lived object keeps. */
#define AP_ERRMSG_SIZE 256

/** Human message for an AP_E* code (or "success" for 0, "unknown error" otherwise). */
const char *ap_strerror(int err);

/** Stable machine-readable name used in JSON error bodies ("not_found"). */
const char *ap_err_code(int err);

/** HTTP status an error maps to when a client sees it (500 for unknown codes). */
int ap_err_http_status(int err);

/** Translate an SQLite result code (primary or extended) into an AP_E* code; SQLITE_OK → 0. */
int ap_err_from_sqlite(int rc);

/** Translate a canonical/raft result code (positive RAFT_*) into an AP_E* code; 0 → 0. */
int ap_err_from_raft(int rc);

/** Translate a libuv result (negative errno, UV_*) into an AP_E* code; 0 → 0. */
int ap_err_from_uv(int rc);

/** Replace the content of errmsg (AP_ERRMSG_SIZE bytes) with a formatted message. */
void ap_errmsg_set(char *errmsg, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/**
 * Prefix errmsg with a formatted context and ": ", so each layer says what it
 * was doing: "open catalog" + "sqlite: disk I/O error" →
 * "open catalog: sqlite: disk I/O error". The result is cut to fit.
 */
void ap_errmsg_wrap(char *errmsg, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
