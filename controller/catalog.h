/* catalog: the controller's replicated catalog: regions, tenants and their allotments, users,
 * grants and the token signing key; typed commands, their deterministic apply, reads. */
#ifndef CONTROLLER_CATALOG_H
#define CONTROLLER_CATALOG_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ap/rsm_fsm.h"
#include "ap/store.h"

/** Largest controller command, bytes. */
#define CCAT_MAX_COMMAND (256u * 1024u)
/** Most regions the controller splits quotas over. */
#define CCAT_MAX_REGIONS 64
/** Most nodes a region registers. */
#define CCAT_MAX_REGION_NODES 8

/** Resources of a quota, in this order everywhere: instances, cpu_millis, memory_mb. */
#define CCAT_RES_N 3
extern const char *const ccat_res_names[CCAT_RES_N];

/** A quota: limit[i] < 0 means no limit on resource i. */
struct ccat_amounts {
    int64_t v[CCAT_RES_N];
};

extern const struct ap_store_migration ccat_migrations[];
extern const size_t ccat_n_migrations;

/** ap_rsm_apply_fn of the controller. */
void ccat_apply(void *data, struct ap_store *st, uint64_t index, const uint8_t *cmd, size_t len,
                struct ap_rsm_result *res);

/* ---- command encoders (the leader fills in everything non-deterministic) ---- */
int ccat_encode_key_init(const uint8_t pk[32], const uint8_t sk[64], uint8_t **out, size_t *len);
/* allot: one amounts per region in regions[] (the split made by the leader). */
int ccat_encode_tenant_put(const char *name, bool create, const struct ccat_amounts *quota,
                           const char *const *regions, const struct ccat_amounts *allot,
                           size_t n_regions, uint64_t at_ms, uint8_t **out, size_t *len);
int ccat_encode_tenant_delete(const char *name, uint8_t **out, size_t *len);
int ccat_encode_user_create(const char *name, const char *tenant, const char *pw_hash,
                            const char *grant_json, uint64_t at_ms, uint8_t **out, size_t *len);
int ccat_encode_user_delete(const char *name, uint8_t **out, size_t *len);
int ccat_encode_grant_add(const char *user, const char *grant_json, uint8_t **out, size_t *len);
int ccat_encode_grant_remove(const char *user, int64_t id, uint8_t **out, size_t *len);
int ccat_encode_region_hello(const char *name, const char *const *nodes, size_t n_nodes,
                             uint64_t at_ms, uint8_t **out, size_t *len);
int ccat_encode_region_delete(const char *name, uint8_t **out, size_t *len);

/* ---- reads (loop thread) ---- */
/** The signing key pair; AP_ENOTFOUND before key.init applied. sk may be NULL. */
int ccat_key(struct ap_store *st, uint8_t pk[32], uint8_t sk[64]);
/** Region names, sorted; at most max. */
int ccat_region_names(struct ap_store *st, char (*names)[64], size_t max, size_t *n);
/** {"regions":[{"name","nodes":[...],"registered_at"}]} */
int ccat_regions_json(struct ap_store *st, json_t **out);
/** The HTTP endpoints of a region; AP_ENOTFOUND. */
int ccat_region_nodes(struct ap_store *st, const char *region, char (*nodes)[64], size_t max,
                      size_t *n);
int ccat_tenants_json(struct ap_store *st, json_t **out);
int ccat_tenant_json(struct ap_store *st, const char *name, json_t **out);
/** The tenant's quota; AP_ENOTFOUND. */
int ccat_tenant_quota(struct ap_store *st, const char *name, struct ccat_amounts *out);
int ccat_users_json(struct ap_store *st, const char *tenant, json_t **out);
int ccat_user_json(struct ap_store *st, const char *name, json_t **out);
/** What POST /v1/tokens needs: the hash, home tenant, generation, grants (JSON array). */
int ccat_user_auth(struct ap_store *st, const char *name, char *hash, size_t hash_size,
                   char *tenant, size_t tenant_size, uint64_t *gen, json_t **grants);
/**
 * What a region caches (controller link STATE body, msgpack): applied-state
 * version, public key, every user's generation and deletion, and the tenants'
 * allotments for region. *out is ap_malloc'd.
 */
int ccat_region_state(struct ap_store *st, const char *region, uint64_t version, uint8_t **out,
                      size_t *len);

#endif
