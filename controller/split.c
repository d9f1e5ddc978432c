/* split: a tenant's global quota divided evenly into regional allotments (docs/controller.md). */
#include "split.h"

#include "ap/base.h"
#include "ap/err.h"
#include "ap/hlc.h"

void split__even(const struct ccat_amounts *quota, size_t n, struct ccat_amounts *out)
{
    for (size_t r = 0; r < n; r++) {
        for (int i = 0; i < CCAT_RES_N; i++) {
            int64_t q = quota->v[i];
            out[r].v[i] = q < 0 ? -1 : q / (int64_t)n + ((int64_t)r < q % (int64_t)n ? 1 : 0);
        }
    }
}

int split__encode_tenant(struct ap_store *st, const char *name, bool create,
                         const struct ccat_amounts *quota, uint8_t **cmd, size_t *len)
{
    char names[CCAT_MAX_REGIONS][64];
    const char *ptrs[CCAT_MAX_REGIONS];
    struct ccat_amounts allot[CCAT_MAX_REGIONS];
    size_t n = 0;
    int rv = ccat_region_names(st, names, CCAT_MAX_REGIONS, &n);
    if (rv != 0) {
        return rv;
    }
    for (size_t i = 0; i < n; i++) {
        ptrs[i] = names[i];
    }
    split__even(quota, n, allot);
    return ccat_encode_tenant_put(name, create, quota, ptrs, allot, n, ap_hlc_wall_realtime(NULL),
                                  cmd, len);
}
