/* reconcile: drive workloads toward the shard's desired states and record their actual states. */
#ifndef EDGE_RECONCILE_H
#define EDGE_RECONCILE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

struct edge_node;
struct reconcile;

/**
 * Create the workload driver over DIR/instances, re-adopt the workloads that
 * survived a restart of the daemon, and start watching them.
 */
int reconcile__start(struct reconcile **out, struct edge_node *n, char *errmsg);

/** Compare every instance's desired state with what runs, and act. */
void reconcile__all(struct reconcile *r);

/**
 * Store the actual states that could not be stored when the driver reported
 * them (disk full); called once the shard takes writes again. Stops at the
 * first that still fails.
 */
void reconcile__retry(struct reconcile *r);

/** Workload output bytes the shims dropped (could not write to their logs) since start. */
uint64_t reconcile__log_dropped(const struct reconcile *r);

/** Stop watching (workloads keep running); cb(data) fires once afterwards. */
void reconcile__stop(struct reconcile *r, void (*cb)(void *data), void *data);

/**
 * The tail of an instance's log stream ("stdout" or "stderr"), at most max
 * bytes, into *buf (ap_malloc'd). AP_ENOTFOUND when there is none.
 */
int reconcile__logs(struct reconcile *r, const char *id, const char *stream, size_t max, char **buf,
                    size_t *len);

/** Capability names this site offers ("driver:process", "isolation:pid-ns", ...). New reference. */
json_t *reconcile__capabilities(struct reconcile *r);

#endif
