/* split: how a tenant's global quota is divided into regional allotments (docs/controller.md). */
#ifndef CONTROLLER_SPLIT_H
#define CONTROLLER_SPLIT_H

#include <stddef.h>
#include <stdint.h>

#include "ap/store.h"
#include "catalog.h"

/**
 * Split quota over n regions, evenly, the remainder going one unit each to the
 * first regions (in name order); an unlimited resource (< 0) stays unlimited
 * in every region. Pure.
 */
void split__even(const struct ccat_amounts *quota, size_t n, struct ccat_amounts *out);

/**
 * Encode tenant.put for name with quota split over every region in st now.
 * Returns 0 or an AP_E* code; *cmd is ap_malloc'd.
 */
int split__encode_tenant(struct ap_store *st, const char *name, bool create,
                         const struct ccat_amounts *quota, uint8_t **cmd, size_t *len);

#endif
