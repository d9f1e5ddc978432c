/* sitelink: the region's end of the site links: HELLO, redirects, heartbeats, reachability, deltas.
 */
#ifndef REGIONAL_SITELINK_H
#define REGIONAL_SITELINK_H

#include <stdint.h>

struct regional_node;
struct sitelink;

/** Defaults (docs/edge.md "Reachability"). */
#define SITELINK_HEARTBEAT_MS     1000
#define SITELINK_HEARTBEAT_MISSES 3

/**
 * Listen for sites on the node's IP at port, for node n (borrowed). Every
 * node listens; only the leader keeps links (followers redirect).
 * Returns 0 or an AP_E* code with errmsg.
 */
int sitelink__start(struct sitelink **out, struct regional_node *n, uint16_t port,
                    unsigned heartbeat_ms, unsigned misses, char *errmsg);

/** Close the listener and every link; cb(data) fires once afterwards. */
void sitelink__stop(struct sitelink *s, void (*cb)(void *data), void *data);

/** Called once per loop iteration (after commits): stream new catalog changes to linked sites. */
void sitelink__flush(struct sitelink *s);

/** Number of sites linked to this node right now. */
unsigned sitelink__count(const struct sitelink *s);

#endif
