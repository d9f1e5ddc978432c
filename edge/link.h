/* link: the site's end of the site-region link: HELLO, anti-entropy deltas both ways, heartbeats,
 * rights. */
#ifndef EDGE_LINK_H
#define EDGE_LINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "shard.h"

#define LINK_MAX_TARGETS 16

struct link;

/** How the site reaches its region. Strings are copied. */
struct link_config {
    const char *site;
    const char *region;
    const char *local_ip;                  /* Every outgoing socket binds to it. */
    const char *http;                      /* This site's HTTP API "ip:port" (in HELLO). */
    const char *targets[LINK_MAX_TARGETS]; /* Link addresses "ip:port" of the region's nodes. */
    size_t n_targets;
    unsigned heartbeat_ms;   /* 0: 1000. */
    unsigned misses;         /* 0: 3. */
    uint64_t seed;           /* Jitter and first target. */
    const char *const *caps; /* Capabilities reported in HELLO. */
    size_t n_caps;
    int64_t cpu_millis, memory_mb, instances; /* Capacity reported in HELLO. */
};

/** What the link tells the daemon. */
struct link_hooks {
    void (*region_applied)(void *data); /* A region DELTA was applied to the shard. */
    void (*rights_answer)(void *data, const char *tenant, bool ok, const char *message);
    void (*state_changed)(void *data, bool connected);
    void *data;
};

/** Start dialing the region. sh is borrowed. Returns 0 or an AP_E* code with errmsg. */
int link__start(struct link **out, uv_loop_t *loop, struct shard *sh, const struct link_config *cfg,
                const struct link_hooks *hooks, char *errmsg);

/** Close the link; cb(data) fires once afterwards. */
void link__stop(struct link *l, void (*cb)(void *data), void *data);

/** Whether the region answered our HELLO on the current link. */
bool link__connected(const struct link *l);

/** "ip:port" of the region node we are linked to, "" when not linked. */
const char *link__peer(const struct link *l);

/** A local change was committed: send it soon. l may be NULL (not started yet). */
void link__kick(struct link *l);

/**
 * Once the shard takes writes again after a region DELTA failed for lack of
 * space: reconnect, so that the region resends what was not stored. Does
 * nothing when no DELTA was deferred on the current connection.
 */
void link__resync(struct link *l);

/**
 * Ask the region for more rights for tenant (amounts per shard_res).
 * Returns 0 (the answer comes through hooks.rights_answer) or AP_ECONN when
 * not linked.
 */
int link__request_rights(struct link *l, const char *tenant, const int64_t want[SHARD_RES_N]);

/** Counters for metrics: deltas sent/received, bytes sent. */
struct link_stats {
    uint64_t deltas_sent, deltas_applied, records_sent, records_applied, bytes_sent, connects;
    uint64_t deltas_deferred; /* Region DELTAs not applied for lack of space (resent later). */
};
void link__stats(const struct link *l, struct link_stats *out);

#endif
