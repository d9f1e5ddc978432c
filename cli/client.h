/* client: the CLI's HTTP requests to one archipel endpoint (libcurl) and their error messages. */
#ifndef CLI_CLIENT_H
#define CLI_CLIENT_H

#include <stddef.h>

/** Connect timeout used when the options say 0. */
#define CLIENT_CONNECT_TIMEOUT_MS 3000L

/** Whole-request timeout used when the options say 0. */
#define CLIENT_TIMEOUT_MS 30000L

/** Largest response body accepted. */
#define CLIENT_MAX_BODY (16u * 1024u * 1024u)

/** Longest normalised endpoint, terminator included. */
#define CLIENT_ENDPOINT_SIZE 512

struct client;

/** How to reach the endpoint. Strings are copied by client__new(). */
struct client_opts {
    const char *endpoint;    /**< "http://host:port" or "host:port" (see client__endpoint_norm) */
    const char *token;       /**< sent as "Authorization: Bearer <token>"; NULL or "" for none */
    long timeout_ms;         /**< whole request; 0: CLIENT_TIMEOUT_MS */
    long connect_timeout_ms; /**< 0: CLIENT_CONNECT_TIMEOUT_MS (never more than timeout_ms) */
};

/** One answer, owned by the caller; release with client__resp_free(). */
struct client_resp {
    long status;        /**< HTTP status; a 4xx or 5xx is an answer, not an error */
    char *body;         /**< NUL-terminated (not counted in len); never NULL after success */
    size_t len;         /**< body length in bytes */
    char *content_type; /**< Content-Type without parameters, lowercase, or NULL */
};

/**
 * Normalise an endpoint as a user types it: "host:port" gets "http://", a
 * trailing '/' goes. Only http:// and https:// URLs with a host are
 * accepted. Writes into out (size bytes). Returns 0, or AP_EINVAL with
 * errmsg (AP_ERRMSG_SIZE bytes) saying what is wrong.
 */
int client__endpoint_norm(const char *in, char *out, size_t size, char *errmsg);

/**
 * Whether a token can be put in a header as is: 1-4095 printable ASCII
 * characters without spaces.
 */
int client__token_ok(const char *token);

/**
 * Make a client for o. *out is owned by the caller (client__free). Returns
 * 0, AP_EINVAL (bad endpoint or token) or AP_ENOMEM / AP_EIO (libcurl could
 * not start), with errmsg (AP_ERRMSG_SIZE bytes).
 */
int client__new(const struct client_opts *o, struct client **out, char *errmsg);

/** Free c and its connection; NULL is fine. */
void client__free(struct client *c);

/** The normalised endpoint ("http://127.0.99.1:7100"); valid while c lives. */
const char *client__endpoint(const struct client *c);

/**
 * Send method to endpoint + path (path starts with '/' and carries any
 * query string, already encoded) with an optional JSON body (borrowed; NULL
 * for none) and wait for the answer, at most timeout_ms (0: the client's
 * timeout). The connection is kept for the next request. On success *resp is
 * filled and owned by the caller. Errors, with client__errmsg() saying why:
 * AP_ECONN or AP_ETIMEDOUT ("cannot reach http://...: <curl's reason>"),
 * AP_ETOOBIG (body over CLIENT_MAX_BODY), AP_ENOMEM, AP_EIO.
 */
int client__do(struct client *c, const char *method, const char *path, const char *body,
               long timeout_ms, struct client_resp *resp);

/** Message of the last failed client__do(); valid until the next call. */
const char *client__errmsg(const struct client *c);

/**
 * One line describing an error answer (not 2xx) into out (size
 * bytes): "<message> (<code>, HTTP <status>)" from the documented error
 * shape {"error":{"code","message","details"}}, else the first line of the
 * body (or the reason phrase) and "(HTTP <status>)".
 */
void client__describe_error(const struct client_resp *resp, char *out, size_t size);

/** Free what resp holds and zero it; a zeroed resp is fine. */
void client__resp_free(struct client_resp *resp);

#endif
