/* catalog: the region's replicated catalog: schema, typed commands, their deterministic apply,
 * reads. */
#ifndef REGIONAL_CATALOG_H
#define REGIONAL_CATALOG_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ap/hlc.h"
#include "ap/instrec.h"
#include "ap/rsm_fsm.h"
#include "ap/store.h"
#include "quota.h"
#include "site.h"

/** Command kinds; the "op" field of every catalog command. */
#define CATALOG_OP_SITE_CREATE "site.create"
#define CATALOG_OP_SITE_DELETE "site.delete"
#define CATALOG_OP_SITE_STATE  "site.state"
#define CATALOG_OP_SITE_DELTA  "site.delta"
#define CATALOG_OP_INST_CREATE "instance.create"
#define CATALOG_OP_INST_DESIRE "instance.desire"
#define CATALOG_OP_QUOTA_SET   "quota.set"
#define CATALOG_OP_RESERVE_SET "reserve.set"
#define CATALOG_OP_RIGHTS      "rights.grant"
#define CATALOG_OP_CTRL_STATE  "ctrl.state"
#define CATALOG_OP_SITE_CORDON "site.cordon"

/** Largest catalog command the apply function decodes (a site delta is the big one). */
#define CATALOG_MAX_COMMAND AP_RSM_MAX_COMMAND

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
 * type checks; AP_EPROTO for garbage) and applies it. Results
 * (docs/catalog.md "Commands"): site.create → the stored site (AP_EEXIST when
 * the name is taken); site.delete → the deleted site (AP_ENOTFOUND when
 * absent); site.state → nothing; site.delta → {site, to, applied, skipped};
 * instance.create and instance.desire → the instance (AP_ENOTFOUND for an
 * unknown site or id, AP_EEXIST for a taken name, AP_EQUOTA when the tenant's
 * unassigned quota is short, AP_ECONFLICT to start or stop a deleted
 * instance); quota.set and reserve.set → the quota view of the tenant;
 * rights.grant → {site, tenant, granted:{...}} (AP_EQUOTA when short).
 * data is unused (may be NULL).
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

/** Names of the connected sites, by name (*names and each name ap_malloc'd; caller frees). */
int catalog__connected_sites(struct ap_store *st, char ***names, size_t *n);

/**
 * Build a DELTA body for site: instance and rights records of that site
 * changed after raft index `after` (oldest first, at most max records),
 * leaving out rows the site itself sent unchanged. *to is the highest change
 * index included, *count the number of records; *body is ap_malloc'd.
 */
int catalog__delta_for_site(struct ap_store *st, const char *site, uint64_t after, size_t max,
                            uint8_t **body, size_t *len, uint64_t *to, size_t *count);

/**
 * Encode an instance.create command for r (every field filled by the HTTP
 * layer: id, stamps, states). at_ms is the leader's wall clock.
 */
int catalog__encode_instance_create(const struct ap_instrec *r, uint64_t at_ms, uint8_t **out,
                                    size_t *len);

/**
 * Encode an instance.desire command: set instance id's desired state to d
 * with stamp ts (the leader's HLC). Apply moves the stamp past the stored one
 * when needed, so the write the region acknowledged is the latest it knows.
 */
int catalog__encode_instance_desire(const char *id, enum ap_desired d, struct ap_hlc_ts ts,
                                    uint64_t at_ms, uint8_t **out, size_t *len);

/**
 * Encode a quota.set command: tenant's regional limits, limited[r] false
 * meaning no limit on resource r. It replaces every limit of the tenant.
 */
int catalog__encode_quota_set(const char *tenant, const bool limited[QUOTA_RES_N],
                              const int64_t limit[QUOTA_RES_N], uint64_t at_ms, uint8_t **out,
                              size_t *len);

/** Encode a reserve.set command: site's autonomy reserve for tenant, per resource. */
int catalog__encode_reserve_set(const char *tenant, const char *site,
                                const int64_t reserve[QUOTA_RES_N], uint64_t at_ms, uint8_t **out,
                                size_t *len);

/** Encode a rights.grant command: site asks for want[] more rights of tenant (all or nothing). */
int catalog__encode_rights_grant(const char *site, const char *tenant,
                                 const int64_t want[QUOTA_RES_N], uint64_t at_ms, uint8_t **out,
                                 size_t *len);

/** The instance with this id into *out (the caller clears it); AP_ENOTFOUND. */
int catalog__instance_get(struct ap_store *st, const char *id, struct ap_instrec *out);

/**
 * Instances as a JSON array (ap_instjson_render shape), oldest first,
 * filtered by site and tenant when not NULL; deleted ones (tombstones) only
 * when include_deleted. *out is a new reference.
 */
int catalog__instances_list(struct ap_store *st, const char *site, const char *tenant,
                            bool include_deleted, json_t **out);

/**
 * Tenant's limits and the rights assigned to sites (quota arithmetic input).
 * A tenant nobody set a quota for has no limits.
 */
int catalog__quota_tenant(struct ap_store *st, const char *tenant, struct quota_tenant *out);

/**
 * The quota view of tenant (docs/api.md): limit, usage, assigned,
 * unassigned, and per holder site granted, returned, held, reserve, usage.
 * *out is a new reference.
 */
int catalog__quota_view(struct ap_store *st, const char *tenant, json_t **out);

/**
 * Content hashes of this replica (GET /v1/state/hash, docs/api.md): "catalog"
 * over catalog__tables, equal on replicas at the same applied index, and per
 * site "instances" and "rights" over the AP_STATE_HASH_* projections, equal to
 * what the site reports once the two have converged. Hex SHA-256 strings.
 * *out is a new reference.
 */
int catalog__state_hash(struct ap_store *st, json_t **out);

/** The site named name as JSON (*out new reference); AP_ENOTFOUND when absent. */
int catalog__site_get(struct ap_store *st, const char *name, json_t **out);

/** All sites, ordered by name, as a JSON array (*out new reference). */
int catalog__sites_list(struct ap_store *st, json_t **out);

/* ---- what the controller pushes down (docs/controller.md) ---- */

/** Version (controller applied index) of the controller state held; 0 before any. */
uint64_t catalog__ctrl_version(struct ap_store *st);

/** The token signing public key; AP_ENOTFOUND before the controller sent one. */
int catalog__auth_key(struct ap_store *st, uint8_t pk[32]);

/** A user's grant generation and deletion as the controller last said; AP_ENOTFOUND. */
int catalog__auth_user(struct ap_store *st, const char *user, uint64_t *gen, bool *deleted);

/**
 * The site link's STATE body (msgpack {"version","pk","users":[[name,gen,deleted]]}), what
 * sites cache to authenticate offline. *out is ap_malloc'd.
 */
int catalog__auth_state(struct ap_store *st, uint8_t **out, size_t *len);

/** site.cordon: a cordoned site takes no new placements (docs/scheduler.md). */
int catalog__encode_site_cordon(const char *name, bool cordoned, uint64_t at_ms, uint8_t **out,
                                size_t *len);

#endif
