/* regionlink: the controller's end of the region links: HELLO, redirects to the leader,
 * heartbeats, and STATE pushed down (signing key, users' generations, allotments). */
#ifndef CONTROLLER_REGIONLINK_H
#define CONTROLLER_REGIONLINK_H

#include <stdbool.h>
#include <stdint.h>

struct ctl_node;
struct regionlink;

/** Heartbeat interval regions are held to, and misses before a link is dropped. */
#define REGIONLINK_HEARTBEAT_MS 1000
#define REGIONLINK_MISSES       3

int regionlink__start(struct regionlink **out, struct ctl_node *n, uint16_t port, char *errmsg);
void regionlink__stop(struct regionlink *l, void (*cb)(void *data), void *data);
/** Whether region is linked to this node now. */
bool regionlink__connected(struct regionlink *l, const char *region);

#endif
