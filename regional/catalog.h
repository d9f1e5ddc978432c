/* catalog: the region's replicated catalog: schema, typed commands, their deterministic apply,
 * reads. */
#ifndef REGIONAL_CATALOG_H
#define REGIONAL_CATALOG_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "ap/rsm_fsm.h"
#include "ap/store.h"
#include "site.h"

/** Command kinds; the "op" field of every catalog command. */
#define CATALOG_OP_SITE_CREATE "site.create"
#define CATALOG_OP_SITE_DELETE "site.delete"

/** The schema, as migrations for ap_store_migrate (docs/catalog.md). */
extern const struct ap_store_migration catalog__migrations[];
extern const size_t catalog__n_migrations;

/** Tables whose content defines the catalog (for content hashes). */
extern const char *const catalog__tables[];

/**
 * Encode a site.create command. at_ms is the leader's wall clock, filled in
 * before proposing so that apply stays deterministic. *out is ap_malloc'd.
 */
int catalog__encode_site_create(const struct site_spec *spec, uint64_t at_ms, uint8_t **out,
                                size_t *len);

/** Encode a site.delete command. */
int catalog__encode_site_delete(const char *name, uint64_t at_ms, uint8_t **out, size_t *len);

/**
 * The rsm apply function (ap_rsm_apply_fn): decodes a command (size limits,
 * type checks; AP_EPROTO for garbage) and applies it. Results: site.create →
 * the stored site (AP_EEXIST when the name is taken); site.delete → the
 * deleted site (AP_ENOTFOUND when absent).
 */
void catalog__apply(void *data, struct ap_store *st, uint64_t index, const uint8_t *cmd, size_t len,
                    struct ap_rsm_result *res);

/** The site named name as JSON (*out new reference); AP_ENOTFOUND when absent. */
int catalog__site_get(struct ap_store *st, const char *name, json_t **out);

/** All sites, ordered by name, as a JSON array (*out new reference). */
int catalog__sites_list(struct ap_store *st, json_t **out);

#endif
