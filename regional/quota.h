/* quota: a tenant's regional quota as a bounded counter: limits, rights held by sites, what is left
 * to grant (pure arithmetic, no I/O). */
#ifndef REGIONAL_QUOTA_H
#define REGIONAL_QUOTA_H

#include <stdbool.h>
#include <stdint.h>

/** Quota resources, in the order every array indexed by resource uses. */
enum quota_res { QUOTA_INSTANCES = 0, QUOTA_CPU, QUOTA_MEMORY, QUOTA_RES_N };

/** Largest amount of one resource a limit, reserve or request may name. */
#define QUOTA_MAX_AMOUNT (INT64_C(1) << 40)

/** Wire and JSON name of a resource ("instances", "cpu_millis", "memory_mb"). */
const char *quota__res_name(enum quota_res r);

/** Parse a resource name; false for anything else (a newer peer's resource). */
bool quota__res_parse(const char *s, enum quota_res *out);

/**
 * What the region knows of one tenant (docs/catalog.md "Quotas"): per
 * resource, whether a limit is set and its value, and the rights assigned to
 * sites (the sum over sites of max(0, granted - returned)). A resource
 * without a limit is unlimited.
 */
struct quota_tenant {
    bool limited[QUOTA_RES_N];
    int64_t limit[QUOTA_RES_N];
    int64_t assigned[QUOTA_RES_N];
};

/**
 * Rights of resource r not assigned to any site: limit - assigned, at least
 * 0 (a lowered limit can be below what is assigned: nothing is revoked, new
 * grants stop). INT64_MAX when the resource is unlimited.
 */
int64_t quota__unassigned(const struct quota_tenant *q, enum quota_res r);

/**
 * Whether the unassigned rights cover need (every resource). When they do
 * not, *short_res (may be NULL) is the first resource that falls short.
 */
bool quota__covers(const struct quota_tenant *q, const int64_t need[QUOTA_RES_N],
                   enum quota_res *short_res);

/**
 * What to grant a site that holds held[] (granted - returned) and should hold
 * at least reserve[]: per resource, the missing part of the reserve, cut to
 * what is unassigned (a partial grant; the rest follows when rights come
 * back). Results go to grant[] and are >= 0.
 */
void quota__reserve_grant(const struct quota_tenant *q, const int64_t held[QUOTA_RES_N],
                          const int64_t reserve[QUOTA_RES_N], int64_t grant[QUOTA_RES_N]);

#endif
