/* rsm_http: the HTTP face of a replicated state machine: forwarding to the leader, writes as
 * proposals, linearizable reads and the /v1/cluster routes, shared by the controller and regions. */
#ifndef AP_RSM_HTTP_H
#define AP_RSM_HTTP_H

#include <jansson.h>
#include <stdint.h>
#include <uv.h>

#include "ap/http.h"
#include "ap/rsm.h"

struct ap_metric;

/** The header that marks a forwarded request (never forwarded twice). */
#define AP_RSM_HTTP_FORWARDED "X-Archipel-Forwarded"

/** How a group's HTTP face is set up. Pointers are borrowed and must outlive it. */
struct ap_rsm_http_config {
    uv_loop_t *loop;
    struct ap_rsm *rsm;
    uint64_t id;                   /* This node's raft id. */
    const char *ip;                /* Outgoing forwards bind to this address. */
    const char *group_key;         /* Key naming the group in /v1/cluster, e.g. "region". */
    const char *group_name;        /* e.g. "r1" or "controller". */
    unsigned forward_timeout_ms;   /* 0: 10000. */
    const char *const *query_keys; /* NULL-terminated query arguments kept when forwarding. */
    struct ap_metric *m_forwarded; /* Counter of forwarded requests (may be NULL). */
};

struct ap_rsm_http;

/** Returns 0 or AP_ENOMEM. */
int ap_rsm_http_new(struct ap_rsm_http **out, const struct ap_rsm_http_config *cfg);
void ap_rsm_http_free(struct ap_rsm_http *h);

/** {"id":N,"http":"ip:port"} of the leader as this node knows it, or JSON null. */
json_t *ap_rsm_http_leader_json(struct ap_rsm_http *h);

/** Answer 503 no_leader ("<group>: <why>; retry shortly"). */
void ap_rsm_http_reply_no_leader(struct ap_rsm_http *h, struct ap_http_req *req, const char *why);

/** Send req to the leader and relay its answer (503 when there is none or it is unreachable). */
void ap_rsm_http_forward(struct ap_rsm_http *h, struct ap_http_req *req);

/**
 * Result of a proposal made for a request: answer req. res is valid during the
 * call only; take res->value by setting it to NULL.
 */
typedef void (*ap_rsm_http_result_fn)(void *data, struct ap_http_req *req,
                                      struct ap_rsm_result *res);

/**
 * Propose cmd (always freed here) for req. On a follower the request is
 * forwarded instead; on a failed proposal req is answered with the error.
 * Otherwise done(data, req, res) fires once the command applied (or failed).
 * Returns 0 when done will fire; otherwise req is already answered (or
 * forwarded) and done never fires, so the caller frees data.
 */
int ap_rsm_http_propose_cb(struct ap_rsm_http *h, struct ap_http_req *req, uint8_t *cmd,
                            size_t len, ap_rsm_http_result_fn done, void *data);

/**
 * ap_rsm_http_propose_cb() answering ok_status with the result document, to
 * which "add_key": "add_value" is added when add_key is not NULL.
 */
void ap_rsm_http_propose(struct ap_rsm_http *h, struct ap_http_req *req, uint8_t *cmd, size_t len,
                         unsigned ok_status, const char *add_key, const char *add_value);

/** A read served from the local store. */
typedef void (*ap_rsm_http_read_fn)(void *data, struct ap_http_req *req);

/**
 * Serve a read linearizably: on the leader after a barrier, forwarded from a
 * follower; `?stale=1` serves it from the local replica at once.
 */
void ap_rsm_http_read(struct ap_rsm_http *h, struct ap_http_req *req, ap_rsm_http_read_fn fn,
                      void *data);

/** True when the request asks for ?stale=1 (or true). */
bool ap_rsm_http_is_stale(struct ap_http_req *req);

/**
 * Register GET /v1/cluster, POST /v1/cluster/members and DELETE
 * /v1/cluster/members/{id} on s, served by h. Returns 0 or an AP_E* code.
 * guard (may be NULL) runs first and returns false after answering the
 * request itself (e.g. 401/403).
 */
int ap_rsm_http_route_cluster(struct ap_rsm_http *h, struct ap_http_server *s,
                              bool (*guard)(struct ap_http_req *req, bool write, void *data),
                              void *guard_data);

#endif
