/* quota: a tenant's regional quota as a bounded counter: limits, rights held by sites, what is left
 * to grant (pure arithmetic, no I/O). */
#include "quota.h"

#include <string.h>

static const char *const res_names[QUOTA_RES_N] = {"instances", "cpu_millis", "memory_mb"};

const char *quota__res_name(enum quota_res r)
{
    return (unsigned)r < QUOTA_RES_N ? res_names[r] : "unknown";
}

bool quota__res_parse(const char *s, enum quota_res *out)
{
    for (int i = 0; i < QUOTA_RES_N; i++) {
        if (strcmp(s, res_names[i]) == 0) {
            *out = (enum quota_res)i;
            return true;
        }
    }
    return false;
}

int64_t quota__unassigned(const struct quota_tenant *q, enum quota_res r)
{
    if (!q->limited[r]) {
        return INT64_MAX;
    }
    int64_t left = q->limit[r] - q->assigned[r];
    return left > 0 ? left : 0;
}

bool quota__covers(const struct quota_tenant *q, const int64_t need[QUOTA_RES_N],
                   enum quota_res *short_res)
{
    for (int i = 0; i < QUOTA_RES_N; i++) {
        if (need[i] > quota__unassigned(q, (enum quota_res)i)) {
            if (short_res != NULL) {
                *short_res = (enum quota_res)i;
            }
            return false;
        }
    }
    return true;
}

void quota__reserve_grant(const struct quota_tenant *q, const int64_t held[QUOTA_RES_N],
                          const int64_t reserve[QUOTA_RES_N], int64_t grant[QUOTA_RES_N])
{
    for (int i = 0; i < QUOTA_RES_N; i++) {
        int64_t missing = reserve[i] - held[i];
        int64_t left = quota__unassigned(q, (enum quota_res)i);
        grant[i] = missing <= 0 ? 0 : (missing < left ? missing : left);
    }
}
