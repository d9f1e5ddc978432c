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
#define CATALOG_OP_SITE_STATE  "site.state"
#define CATALOG_OP_SITE_DELTA  "site.delta"

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

/**
 * Encode a site.state command: state is "connected" or "unreachable"; hello
 * (may be NULL) is the site's HELLO body, from which capabilities and
 * capacity are recorded.
 */
int catalog__encode_site_state(const char *site, const char *state, uint64_t at_ms,
                               const uint8_t *hello, size_t hello_len, uint8_t **out, size_t *len);

/** Encode a site.delta command carrying a site's DELTA body (copied). */
int catalog__encode_site_delta(const char *site, const uint8_t *delta, size_t delta_len,
                               uint8_t **out, size_t *len);

/** What the link needs to know of a registered site. */
struct catalog_link_info {
    char state[16];
    uint64_t site_seq_applied; /* Highest site change sequence the region applied. */
};

/** Link facts of site; AP_ENOTFOUND when it is not registered. */
int catalog__site_link_info(struct ap_store *st, const char *site, struct catalog_link_info *out);

/** Names of the sites in state (*names and each name ap_malloc'd; caller frees). */
int catalog__sites_in_state(struct ap_store *st, const char *state, char ***names, size_t *n);

/**
 * Build a DELTA body for site: instance and rights records of that site
 * changed after raft index `after` (oldest first, at most max records),
 * leaving out rows the site itself sent unchanged. *to is the highest change
 * index included, *count the number of records; *body is ap_malloc'd.
 */
int catalog__delta_for_site(struct ap_store *st, const char *site, uint64_t after, size_t max,
                            uint8_t **body, size_t *len, uint64_t *to, size_t *count);

/** The site named name as JSON (*out new reference); AP_ENOTFOUND when absent. */
int catalog__site_get(struct ap_store *st, const char *name, json_t **out);

/** All sites, ordered by name, as a JSON array (*out new reference). */
int catalog__sites_list(struct ap_store *st, json_t **out);

#endif
