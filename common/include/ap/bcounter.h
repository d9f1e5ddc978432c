/* bcounter: quota as a bounded counter (escrow): rights granted by the region, consumed by sites.
 */
#ifndef AP_BCOUNTER_H
#define AP_BCOUNTER_H

#include "ap/hlc.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * A tenant's limit for one resource is split into rights. The region grants
 * rights to sites; a site consumes only rights it holds and returns the ones
 * it does not need. Every field has one writer, and each is either a
 * grow-only counter (merged by max) or a stamped register (merged by stamp),
 * so the merge is a join and the quota holds whatever the network does:
 *
 *   site holds       = granted - returned
 *   site available   = granted - returned - consumed
 *   region assigned  = sum over sites of (granted - returned)
 *   region unassigned = limit - assigned
 *
 * Invariants: consumed <= held at every site, and assigned <= limit as long
 * as the limit is not lowered below what is assigned; so the sum of usage
 * never exceeds the limit, partitioned or not. Lowering a limit stops new
 * grants and never revokes what sites hold (docs/merge-rules.md, "Quotas").
 *
 * Pure functions over plain structs; stamps come from the caller's clock.
 */

/** The resources a quota counts. */
enum ap_bc_resource {
    AP_BC_INSTANCES = 0,
    AP_BC_CPU_MILLIS = 1,
    AP_BC_MEMORY_MB = 2,
};

/** Number of resources in enum ap_bc_resource. */
#define AP_BC_RESOURCE_COUNT 3

/** Wire name of a resource ("instances", "cpu_millis", "memory_mb"; "?" if out of range). */
const char *ap_bc_resource_str(enum ap_bc_resource r);

/** Parse a wire name into *out. Returns 0 or AP_EINVAL (*out untouched). */
int ap_bc_resource_parse(const char *s, enum ap_bc_resource *out);

/** Region side of one (tenant, resource): the operator's limit, last writer wins. */
struct ap_bc_region {
    uint64_t limit;
    struct ap_hlc_ts limit_ts;
};

/**
 * Rights of one (site, tenant, resource), the same struct on both sides of
 * the link (each side has its own copy and they merge). Zero-initialized is
 * "nothing granted yet".
 */
struct ap_bc_site {
    uint64_t granted;             /* grow-only; written only by the region */
    uint64_t returned;            /* grow-only; written only by the site */
    uint64_t consumed;            /* current usage; written only by the site */
    struct ap_hlc_ts consumed_ts; /* stamp of the last consumed write */
    uint64_t reserve;             /* operator's autonomy reserve; written by the region */
    struct ap_hlc_ts reserve_ts;  /* stamp of the last reserve write */
};

/**
 * Operator write of the limit at the region, stamped ts. Lowering it below
 * what is assigned only stops new grants (nothing is revoked). Returns 0, or
 * AP_EAGAIN when the region holds a stamp >= ts (unchanged), or AP_EINVAL
 * for a zero stamp.
 */
int ap_bc_region_set_limit(struct ap_bc_region *r, uint64_t limit, struct ap_hlc_ts ts);

/** Merge two copies of a region limit: the greater stamp wins (ties: the smaller limit). */
bool ap_bc_merge_region(struct ap_bc_region *into, const struct ap_bc_region *other);

/** Rights a site holds: granted - returned (0 if a corrupt record has returned > granted). */
uint64_t ap_bc_site_held(const struct ap_bc_site *s);

/** Rights a site can still consume: held - consumed, or 0. */
uint64_t ap_bc_site_available(const struct ap_bc_site *s);

/** How many more rights a site must obtain to consume `amount`: amount - available, or 0. */
uint64_t ap_bc_site_shortfall(const struct ap_bc_site *s, uint64_t amount);

/**
 * Sum of held over n site records (the region's view of one tenant and
 * resource); saturates at UINT64_MAX. Pass it as `assigned` below.
 */
uint64_t ap_bc_assigned(const struct ap_bc_site *sites, size_t n);

/** What the region may still grant: limit - assigned, or 0 when the limit is at or below it. */
uint64_t ap_bc_region_unassigned(const struct ap_bc_region *r, uint64_t assigned);

/**
 * Region grant to one site: raise site->granted by min(amount, unassigned)
 * and return that amount (0 when nothing is left, or when the counter would
 * overflow). `assigned` is ap_bc_assigned over every site of the tenant and
 * resource, this one included. Deterministic, so raft replicas applying the
 * same entry grant the same.
 */
uint64_t ap_bc_region_grant(const struct ap_bc_region *r, uint64_t assigned,
                            struct ap_bc_site *site, uint64_t amount);

/**
 * Grant the site what it lacks to hold its autonomy reserve (reserve - held),
 * within what is unassigned; returns the amount granted.
 */
uint64_t ap_bc_region_top_up(const struct ap_bc_region *r, uint64_t assigned,
                             struct ap_bc_site *site);

/**
 * Operator write of a site's autonomy reserve, at the region, stamped ts.
 * Returns 0, AP_EAGAIN (stamp not newer, unchanged) or AP_EINVAL (zero stamp).
 */
int ap_bc_set_reserve(struct ap_bc_site *s, uint64_t reserve, struct ap_hlc_ts ts);

/**
 * Site: consume amount rights, stamped ts. The caller makes the new record
 * durable (fsync) before it answers the request it consumed for. Returns 0;
 * AP_EQUOTA when amount exceeds what the site has available (unchanged: ask
 * the region for ap_bc_site_shortfall() more); AP_EAGAIN when the record
 * holds a consumed stamp >= ts; AP_EINVAL for a zero stamp.
 */
int ap_bc_site_consume(struct ap_bc_site *s, uint64_t amount, struct ap_hlc_ts ts);

/**
 * Site: release amount rights (an instance was deleted), stamped ts. Returns
 * 0; AP_EINVAL when amount exceeds consumed or for a zero stamp;
 * AP_EAGAIN when the stamp is not newer. Unchanged on error.
 */
int ap_bc_site_release(struct ap_bc_site *s, uint64_t amount, struct ap_hlc_ts ts);

/**
 * Site: set consumed to a recomputed usage (e.g. summed over its live
 * instances), stamped ts. Returns 0; AP_EQUOTA when usage exceeds held;
 * AP_EAGAIN / AP_EINVAL as ap_bc_site_release. Unchanged on error.
 */
int ap_bc_site_set_consumed(struct ap_bc_site *s, uint64_t usage, struct ap_hlc_ts ts);

/**
 * Site: give back what it holds beyond max(reserve, consumed + keep), where
 * keep is unused headroom the caller wants to keep (0 for the rule "hold no
 * more than max(reserve, usage)"). Raises returned; returns the amount given
 * back. Never returns consumed rights.
 */
uint64_t ap_bc_site_return_surplus(struct ap_bc_site *s, uint64_t keep);

/**
 * Merge two copies of a site's rights: max of granted and of returned; the
 * greater stamp for consumed and for reserve (equal stamps: the greater
 * value). Returns whether `into` changed.
 */
bool ap_bc_merge_site(struct ap_bc_site *into, const struct ap_bc_site *other);

/** Whether two copies hold the same values and stamps. */
bool ap_bc_site_equal(const struct ap_bc_site *a, const struct ap_bc_site *b);

/**
 * Check a record that came from outside: returned <= granted and consumed <=
 * held, which every correct replica keeps. Returns 0 or AP_EINVAL with a
 * message in errmsg (AP_ERRMSG_SIZE bytes, may be NULL).
 */
int ap_bc_site_validate(const struct ap_bc_site *s, char *errmsg);

#endif
