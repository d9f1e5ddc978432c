/* ctrllink: the region's end of the controller link: the leader dials the controller, says
 * HELLO with the region's endpoints, and turns each STATE into a ctrl.state raft entry. */
#ifndef REGIONAL_CTRLLINK_H
#define REGIONAL_CTRLLINK_H

#include <stdbool.h>
#include <stddef.h>

struct regional_node;
struct ctrllink;

#define CTRLLINK_MAX_TARGETS 8

/** targets: "ip:port" of controller nodes' link ports (copied). */
int ctrllink__start(struct ctrllink **out, struct regional_node *n, const char (*targets)[64],
                    size_t n_targets, char *errmsg);
void ctrllink__stop(struct ctrllink *l, void (*cb)(void *data), void *data);
/** Whether this node holds an up link to the controller. */
bool ctrllink__connected(const struct ctrllink *l);

#endif
