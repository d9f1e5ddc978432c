/* placement: the region leader's in-memory view of its sites for the scheduler (capacity,
 * usage including placements not yet applied, labels, capabilities), and explain. */
#ifndef REGIONAL_PLACEMENT_H
#define REGIONAL_PLACEMENT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ap/token.h"
#include "ap/store.h"

struct placement;

int placement__new(struct placement **out, const char *region);
void placement__free(struct placement *p);

/**
 * Pick a site for an instance of tenant needing cpu/memory under the
 * "placement" object pj (may be NULL), among the sites c may write to (c NULL:
 * all). On success the site is copied to site (AP_SCHED_NAME bytes) and the
 * instance counts as pending there until placement__settle(). Returns 0,
 * AP_EINVAL (bad placement object, errmsg says why) or AP_ENOTFOUND (no site
 * fits; errmsg summarises the reasons).
 */
int placement__pick(struct placement *p, struct ap_store *st, uint64_t applied, json_t *pj,
                    const char *tenant, int64_t cpu, int64_t memory, const struct ap_claims *c,
                    char *site, char *errmsg);

/** A pick's create was applied (committed true) or failed: it is no longer pending. */
void placement__settle(struct placement *p, const char *site, int64_t cpu, int64_t memory,
                       bool committed);

/**
 * Dry run: {"chosen": site|null, "candidates":[{"site","kept","why","score"}]}.
 * Returns NULL with errmsg on a bad placement object.
 */
json_t *placement__explain(struct placement *p, struct ap_store *st, uint64_t applied, json_t *pj,
                           const char *tenant, int64_t cpu, int64_t memory,
                           const struct ap_claims *c, char *errmsg);

#endif
