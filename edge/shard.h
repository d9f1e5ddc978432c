/* shard: a site's local SQLite shard: its instances, quota rights and link bookkeeping; always
 * writable. */
#ifndef EDGE_SHARD_H
#define EDGE_SHARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ap/instrec.h"

struct shard;

/** Quota resources, in the order every array indexed by resource uses. */
enum shard_res { SHARD_RES_INSTANCES = 0, SHARD_RES_CPU, SHARD_RES_MEMORY, SHARD_RES_N };

/** Wire and JSON name of a resource ("instances", "cpu_millis", "memory_mb"). */
const char *shard__res_name(enum shard_res r);

/** A tenant's rights at this site, per resource. */
struct shard_rights {
    int64_t granted[SHARD_RES_N];  /* Written by the region (monotonic). */
    int64_t returned[SHARD_RES_N]; /* Written by this site (monotonic). */
    int64_t reserve[SHARD_RES_N];  /* Autonomy reserve set by the operator. */
    int64_t usage[SHARD_RES_N];    /* Derived: resources of instances not deleted. */
};

/**
 * Open (creating) the shard at path with synchronous=FULL: an answered write
 * is on disk (docs/store.md). Returns 0 or an AP_E* code with errmsg.
 */
int shard__open(struct shard **out, const char *path, char *errmsg);

void shard__close(struct shard *s);

const char *shard__errmsg(const struct shard *s);

/** Transactions (BEGIN IMMEDIATE / COMMIT / ROLLBACK). */
int shard__begin(struct shard *s);
int shard__commit(struct shard *s);
void shard__rollback(struct shard *s);

/** The record with this id into *out (caller clears it); AP_ENOTFOUND. */
int shard__get(struct shard *s, const char *id, struct ap_instrec *out);

/**
 * Records, oldest first, optionally of one tenant; deleted ones only when
 * include_deleted. *out is ap_malloc'd; free with shard__free_list.
 */
int shard__list(struct shard *s, const char *tenant, bool include_deleted, struct ap_instrec **out,
                size_t *n);

void shard__free_list(struct ap_instrec *list, size_t n);

/** Whether a non-deleted instance of tenant is called name. */
int shard__name_taken(struct shard *s, const char *tenant, const char *name, bool *taken);

/**
 * Store r (insert or replace) as a local change: it gets the next change
 * sequence number and will be sent to the region.
 */
int shard__put_local(struct shard *s, const struct ap_instrec *r);

/**
 * Merge a record from the region. The merged row is stored; it is marked as
 * needing to go back to the region only when the merge kept newer local data.
 * *changed says whether the row changed.
 */
int shard__merge_remote(struct shard *s, const struct ap_instrec *r, bool *changed);

/** A tenant's rights and derived usage at this site. */
int shard__rights(struct shard *s, const char *tenant, struct shard_rights *out);

/** Merge the region's view of a tenant's rights (granted and reserve; max). */
int shard__rights_merge_remote(struct shard *s, const char *tenant, enum shard_res res,
                               int64_t granted, int64_t reserve);

/** Give back amount of rights (returned += amount), as a local change. */
int shard__rights_return(struct shard *s, const char *tenant, enum shard_res res, int64_t amount);

/** Tenants with a rights row at this site (*out and each string ap_malloc'd). */
int shard__rights_tenants(struct shard *s, char ***out, size_t *n);

/**
 * A DELTA body (docs/edge.md) with local changes after sequence `after`
 * (at most max records): *to is the highest sequence included (== after when
 * there is nothing), *count the number of records. *body is ap_malloc'd.
 */
int shard__delta_after(struct shard *s, uint64_t after, size_t max, uint8_t **body, size_t *len,
                       uint64_t *to, size_t *count);

/**
 * Content hashes of this shard's instance records and rights over the
 * AP_STATE_HASH_* projections (ap/instrec.h): equal to what the region's
 * catalog reports for this site once the two have converged.
 */
int shard__state_hash(struct shard *s, unsigned char instances[32], unsigned char rights[32]);

/** The highest change sequence number given so far. */
uint64_t shard__seq(const struct shard *s);

/**
 * Whether the last write failed for lack of space in the data directory
 * (docs/edge.md "Full disk"): set by a write that fails with AP_ENOSPACE
 * (logged once as disk_full), cleared by the next write that reaches the disk
 * (logged as disk_space_recovered). Reads work either way.
 */
bool shard__full(const struct shard *s);

/** Writes that failed for lack of space since the shard was opened. */
uint64_t shard__full_errors(const struct shard *s);

/**
 * Try a small durable write (meta "disk_probe") to learn whether the disk
 * has room again: 0 (and shard__full() is false again), or the write's
 * error (AP_ENOSPACE while still full).
 */
int shard__probe(struct shard *s);

/** Persistent counters of the link ("region_applied", "site_seq_acked"); 0 when unset. */
uint64_t shard__meta(struct shard *s, const char *key);
int shard__set_meta(struct shard *s, const char *key, uint64_t value);

/**
 * Replace the identity state with a STATE body from the region (msgpack
 * {"version","pk","users":[[name,gen,deleted]]}), durably. A body without a key
 * changes nothing. Returns 0 or an AP_E* code.
 */
int shard__auth_put(struct shard *s, const msgpack_object *state);

/** The signing public key; AP_ENOTFOUND until a region sent one (then auth is off). */
int shard__auth_key(struct shard *s, uint8_t pk[32]);

/** A user's generation and deletion as last heard; AP_ENOTFOUND. */
int shard__auth_user(struct shard *s, const char *user, uint64_t *gen, bool *deleted);

#endif
