/* instrec: an instance record as every tier stores and exchanges it: identity, spec, desired and
 * actual state. */
#ifndef AP_INSTREC_H
#define AP_INSTREC_H

#include <msgpack.h>
#include <stdbool.h>
#include <stdint.h>

#include "ap/crdt.h"
#include "ap/hlc.h"
#include "ap/mp.h"

#define AP_INSTREC_ID_SIZE   37
#define AP_INSTREC_NAME_SIZE 64
/** Largest spec (JSON text), bytes. */
#define AP_INSTREC_MAX_SPEC (16u * 1024u)

/**
 * What a site's shard and its region's catalog both hold about the site, in
 * the column order of the content hashes that `GET /v1/state/hash` reports on
 * both tiers (docs/api.md): equal hashes mean equal instance records and equal
 * rights. Both tables name these columns alike.
 */
#define AP_STATE_HASH_INSTANCE_COLUMNS                                                           \
    "id, tenant, name, spec, cpu_millis, memory_mb, created_ts, created_node, desired, "          \
    "desired_ts, desired_node, actual, actual_ts, actual_node, pid, exit_code, restarts"
#define AP_STATE_HASH_RIGHTS_COLUMNS "tenant, resource, granted, returned, reserve"

/**
 * One instance. Identity and spec are written once, where the instance is
 * created; desired is a last-writer-wins register in which delete dominates;
 * actual (with pid, exit code, restarts) has one writer, the site
 * (docs/merge-rules.md).
 */
struct ap_instrec {
    char id[AP_INSTREC_ID_SIZE];
    char tenant[AP_INSTREC_NAME_SIZE];
    char name[AP_INSTREC_NAME_SIZE];
    char site[AP_INSTREC_NAME_SIZE];
    char *spec; /* JSON text, ap_malloc'd, owned by the record (may be NULL). */
    int64_t cpu_millis;
    int64_t memory_mb;
    struct ap_hlc_ts created;
    enum ap_desired desired;
    struct ap_hlc_ts desired_ts;
    enum ap_actual actual;
    struct ap_hlc_ts actual_ts;
    int64_t pid;
    int64_t exit_code;
    int64_t restarts;
};

/** Text of a desired state ("running", "stopped", "deleted"): ap_desired_str. */
const char *ap_desired_name(enum ap_desired d);
/** Text of an actual state ("pending", ..., "stopped"): ap_actual_str. */
const char *ap_actual_name(enum ap_actual a);

/** Release what the record owns (its spec); the struct itself is the caller's. */
void ap_instrec_clear(struct ap_instrec *r);

/** Deep copy (the spec is duplicated). Returns 0 or AP_ENOMEM. */
int ap_instrec_copy(struct ap_instrec *dst, const struct ap_instrec *src);

/**
 * Merge other into into (same id) with the rules of ap_inst_merge
 * (common/crdt, docs/merge-rules.md): desired by HLC last-writer-wins with
 * delete dominating; actual by HLC (single writer); identity (spec and
 * names) from the earlier creation stamp. Returns true when into changed.
 */
bool ap_instrec_merge(struct ap_instrec *into, const struct ap_instrec *other);

/** Whether a and b hold the same replicated state (identity, desired, actual). */
bool ap_instrec_equal(const struct ap_instrec *a, const struct ap_instrec *b);

/** Local desired-state write; ignored (returns false) once the record is deleted. */
bool ap_instrec_set_desired(struct ap_instrec *r, enum ap_desired d, struct ap_hlc_ts ts);

/** Append the record as one msgpack map (docs/edge.md "Message bodies"). */
void ap_instrec_write(struct ap_mp_writer *w, const struct ap_instrec *r);

/**
 * Read a record from a msgpack map, checking every type and length; the spec
 * is copied. Returns 0, or AP_EPROTO with errmsg naming the field.
 */
int ap_instrec_read(const msgpack_object *o, struct ap_instrec *r, char *errmsg);

#endif
