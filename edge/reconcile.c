/* reconcile: drive workloads toward the shard's desired states and record their actual states. */
#include "reconcile.h"

#include "ap/base.h"
#include "ap/err.h"
#include "ap/log.h"
#include "node_internal.h"

/* Interim: records the desired state as the actual one without running
 * anything, until the process driver (edge/drivers/driver_process.c) lands. */
struct reconcile {
    struct edge_node *n;
};

int reconcile__start(struct reconcile **out, struct edge_node *n, char *errmsg)
{
    struct reconcile *r = ap_calloc(1, sizeof *r);
    if (r == NULL) {
        ap_errmsg_set(errmsg, "reconcile: out of memory");
        return AP_ENOMEM;
    }
    r->n = n;
    *out = r;
    return 0;
}

void reconcile__all(struct reconcile *r)
{
    AP_UNUSED(r);
}

void reconcile__stop(struct reconcile *r, void (*cb)(void *data), void *data)
{
    ap_free(r);
    if (cb != NULL) {
        cb(data);
    }
}

int reconcile__logs(struct reconcile *r, const char *id, const char *stream, size_t max,
                    char **buf, size_t *len)
{
    AP_UNUSED(r);
    AP_UNUSED(id);
    AP_UNUSED(stream);
    AP_UNUSED(max);
    *buf = NULL;
    *len = 0;
    return AP_ENOTFOUND;
}

json_t *reconcile__capabilities(struct reconcile *r)
{
    AP_UNUSED(r);
    return json_array();
}
