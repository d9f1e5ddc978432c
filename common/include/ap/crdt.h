/* crdt: merge rules for replicated records: instance state, LWW registers, add-wins OR-sets. */
#ifndef AP_CRDT_H
#define AP_CRDT_H

#include "ap/hlc.h"
#include "ap/mp.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Everything here is pure: plain structs the callers embed, functions that
 * read their arguments and nothing else (no clock, no I/O, no allocation).
 * Stamps come from the caller's struct ap_hlc. The rules, the anomaly each
 * prevents and what an operator sees are in docs/merge-rules.md.
 *
 * Every merge is a join: commutative, associative and idempotent, on any
 * pair of values (not only on values a correct history produces; for sets,
 * within their capacity), so duplicated, reordered or replayed messages are
 * harmless.
 */

/* ---- instance state --------------------------------------------------------------------- */

/** Room for an instance's spec digest: 64 hex digits of a sha256 and a NUL. */
#define AP_INST_DIGEST_SIZE 65

/** Desired state; may be written by the region and by the site. */
enum ap_desired {
    AP_DESIRED_RUNNING = 0,
    AP_DESIRED_STOPPED = 1,
    AP_DESIRED_DELETED = 2,
};

/** Actual state; written only by the site that runs the instance. */
enum ap_actual {
    AP_ACTUAL_PENDING = 0,
    AP_ACTUAL_STARTING = 1,
    AP_ACTUAL_RUNNING = 2,
    AP_ACTUAL_EXITED = 3,
    AP_ACTUAL_FAILED = 4,
    AP_ACTUAL_STOPPED = 5,
};

/**
 * An instance record as the merge sees it. Plain value type, embedded by the
 * caller; the spec itself is stored elsewhere and named here by its digest.
 * An all-zero struct is the empty record (nothing known yet): merging
 * anything into it yields that thing.
 */
struct ap_inst_state {
    /* Identity: immutable after creation. The smaller creation stamp wins. */
    char spec_digest[AP_INST_DIGEST_SIZE]; /* "" while unknown */
    struct ap_hlc_ts spec_ts;              /* creation stamp */

    /* Desired state: last writer wins by stamp, except that deleted dominates. */
    enum ap_desired desired;
    struct ap_hlc_ts desired_ts;

    /* Actual state and its details: one writer (the site); they move together. */
    enum ap_actual actual;
    int32_t pid;       /* 0 when no process */
    int32_t exit_code; /* last exit code, or -signal */
    uint32_t restarts; /* restarts so far */
    struct ap_hlc_ts actual_ts;
};

/**
 * Start a record created locally: spec digest and creation stamp, desired
 * state `desired` stamped `ts` too, actual PENDING with a zero stamp.
 * Returns 0, or AP_EINVAL (digest empty or longer than 64 bytes, desired out
 * of range, zero stamp, or physical part beyond AP_HLC_PHYSICAL_MAX).
 */
int ap_inst_init(struct ap_inst_state *s, const char *spec_digest, enum ap_desired desired,
                 struct ap_hlc_ts ts);

/**
 * Check a record that came from outside (decoder, database row) before it is
 * merged: enums in range, digest terminated, stamps within range. Returns 0
 * or AP_EINVAL with a message in errmsg (AP_ERRMSG_SIZE bytes, may be NULL).
 */
int ap_inst_validate(const struct ap_inst_state *s, char *errmsg);

/**
 * Merge `other` into `into`. Per part: the spec of the smaller creation stamp
 * (a known spec beats an unknown one; equal stamps keep the smaller digest);
 * desired: a deleted side wins, with the greater delete stamp, otherwise the
 * greater stamp; actual: the greater stamp, with pid, exit code and restarts.
 * Equal stamps with different values (impossible from correct writers) are
 * broken by value, so the result never depends on argument order.
 * Returns whether `into` changed. `into` and `other` may be the same record.
 */
bool ap_inst_merge(struct ap_inst_state *into, const struct ap_inst_state *other);

/**
 * Local write of the desired state, stamped `ts` by the writer's clock (which
 * should have observed ap_inst_max_ts(s) first, so ts is newer). Returns 0
 * when applied; AP_ECONFLICT when the record is deleted and `desired` is not
 * (delete dominates; the API's 409 "conflict"); AP_EAGAIN when a non-delete
 * write finds a desired stamp >= ts (a newer write is there: observe and
 * restamp to retry); AP_EINVAL for an out-of-range state or zero stamp.
 * Nothing changes on error. A delete applies whatever its stamp; deleting a
 * deleted record returns 0 and changes nothing (the first delete stays).
 */
int ap_inst_set_desired(struct ap_inst_state *s, enum ap_desired desired, struct ap_hlc_ts ts);

/**
 * Local write of the actual state and its details, by the site only, stamped
 * `ts`. Returns 0, AP_EAGAIN when the record holds an actual stamp >= ts
 * (nothing changes), or AP_EINVAL (state out of range, zero stamp).
 */
int ap_inst_set_actual(struct ap_inst_state *s, enum ap_actual actual, int32_t pid,
                       int32_t exit_code, uint32_t restarts, struct ap_hlc_ts ts);

/** Greatest of the record's creation, desired and actual stamps. */
struct ap_hlc_ts ap_inst_max_ts(const struct ap_inst_state *s);

/**
 * Whether the record belongs in a delta to a peer that acknowledged
 * everything up to `acked`: its greatest stamp is greater than acked. See
 * docs/merge-rules.md for why this is exact between a site and its region.
 */
bool ap_inst_newer_than(const struct ap_inst_state *s, struct ap_hlc_ts acked);

/** Whether two records hold the same values (stamps included). */
bool ap_inst_equal(const struct ap_inst_state *a, const struct ap_inst_state *b);

/** Wire name of a desired state ("running", "stopped", "deleted"; "?" if out of range). */
const char *ap_desired_str(enum ap_desired d);

/** Parse a wire name into *out. Returns 0 or AP_EINVAL (*out untouched). */
int ap_desired_parse(const char *s, enum ap_desired *out);

/** Wire name of an actual state ("pending", ..., "stopped"; "?" if out of range). */
const char *ap_actual_str(enum ap_actual a);

/** Parse a wire name into *out. Returns 0 or AP_EINVAL (*out untouched). */
int ap_actual_parse(const char *s, enum ap_actual *out);

/* ---- last-writer-wins register ---------------------------------------------------------- */

/** Most bytes an LWW register holds (capacity as text, capability lists). */
#define AP_LWW_VALUE_MAX 256

/**
 * A single-writer scalar (a site's capacity, its capabilities): the value of
 * the greatest stamp wins. No delete. All-zero is the empty register.
 */
struct ap_lww {
    struct ap_hlc_ts ts;
    uint16_t len;
    uint8_t value[AP_LWW_VALUE_MAX];
};

/**
 * Local write of len bytes stamped ts. Returns 0; AP_ETOOBIG when len >
 * AP_LWW_VALUE_MAX; AP_EINVAL for a zero stamp or a NULL value with len > 0;
 * AP_EAGAIN when the register already holds a stamp >= ts. The register is
 * unchanged on error.
 */
int ap_lww_set(struct ap_lww *r, const void *value, size_t len, struct ap_hlc_ts ts);

/**
 * Merge: the greater stamp wins; equal stamps keep the greater value (longer,
 * then memcmp), so the order of arguments never matters. Returns whether
 * `into` changed. Both registers must have len <= AP_LWW_VALUE_MAX (asserted).
 */
bool ap_lww_merge(struct ap_lww *into, const struct ap_lww *other);

/** Whether two registers hold the same stamp and value. */
bool ap_lww_equal(const struct ap_lww *a, const struct ap_lww *b);

/* ---- add-wins observed-remove set of short strings -------------------------------------- */

/** Room for one element, NUL included: elements are 1..127 bytes. */
#define AP_ORSET_ELEM_SIZE 128

/** Most distinct elements (live or only tombstoned) a set holds. */
#define AP_ORSET_MAX_ELEMS 64

/** Most tags (live adds plus tombstones not yet collected) a set holds. */
#define AP_ORSET_MAX_TAGS 128

/** Version written by ap_orset_encode and the only one ap_orset_decode accepts. */
#define AP_ORSET_WIRE_VERSION 1

/**
 * Upper bound of ap_orset_encode's output for any set; callers pass it (or
 * more, for a message carrying several sets) as ap_mp_unpack's max_len.
 */
#define AP_ORSET_ENCODED_MAX 12288

/** One add: its unique tag, and the stamp of the remove that observed it. */
struct ap_orset_tag {
    struct ap_hlc_ts add;     /* unique tag of the add */
    struct ap_hlc_ts removed; /* all zero while live; else the remove's stamp */
    uint8_t elem;             /* index into elems */
};

/**
 * Add-wins observed-remove set (labels "k=v", replica site names, grants).
 * An element is present iff one of its tags is live. Kept canonical: elems
 * sorted and unique, tags sorted by (elem, add) and unique; only the first
 * n_elems / n_tags slots are meaningful. About 13 KiB: callers embed it in
 * heap objects rather than on small stacks. Initialize with ap_orset_init.
 */
struct ap_orset {
    uint16_t n_elems;
    uint16_t n_tags;
    char elems[AP_ORSET_MAX_ELEMS][AP_ORSET_ELEM_SIZE];
    struct ap_orset_tag tags[AP_ORSET_MAX_TAGS];
};

/** Make s the empty set. */
void ap_orset_init(struct ap_orset *s);

/**
 * Add elem with the fresh unique tag `tag` (a stamp from the writer's
 * clock). Adding an element that is already present still records the tag,
 * so a concurrent remove that did not observe it cannot remove the element
 * (add wins). Returns 0 (also when this exact tag is already there);
 * AP_EINVAL when elem is empty, longer than 127 bytes, or the tag is zero or
 * out of range; AP_ETOOBIG when the set is full (s unchanged).
 */
int ap_orset_add(struct ap_orset *s, const char *elem, struct ap_hlc_ts tag);

/**
 * Remove elem: tombstone every live tag of it seen here, with stamp ts.
 * Tags added elsewhere and not merged yet survive (add wins). Returns 0;
 * AP_ENOTFOUND when elem is not present; AP_EINVAL for a zero stamp.
 */
int ap_orset_remove(struct ap_orset *s, const char *elem, struct ap_hlc_ts ts);

/** Whether elem is present (has a live tag). */
bool ap_orset_contains(const struct ap_orset *s, const char *elem);

/**
 * Present elements in byte order: stores up to max pointers into out (they
 * point into s and live as long as s is unchanged) and returns how many are
 * present (may exceed max).
 */
size_t ap_orset_list(const struct ap_orset *s, const char **out, size_t max);

/**
 * Merge `other` into `into`: union of elements and tags; a tag tombstoned on
 * either side is tombstoned, with the greater remove stamp. Returns 0 and
 * sets *changed (may be NULL); AP_ETOOBIG when the union would pass
 * AP_ORSET_MAX_ELEMS or AP_ORSET_MAX_TAGS, and then `into` is unchanged.
 */
int ap_orset_merge(struct ap_orset *into, const struct ap_orset *other, bool *changed);

/**
 * The part of s a peer that acknowledged everything up to `acked` lacks:
 * every tag added or removed after acked (with its element). Merging *out
 * into such a peer gives what merging all of s gives. Never fails: *out is a
 * subset of s.
 */
void ap_orset_delta(const struct ap_orset *s, struct ap_hlc_ts acked, struct ap_orset *out);

/**
 * Collect tombstones: drop every tag whose remove stamp is <= acked_by_both,
 * and elements left without tags. acked_by_both must be a stamp that BOTH
 * sides of the link have acknowledged (docs/merge-rules.md, "Tombstone
 * collection"); collecting earlier lets an add come back. Returns how many
 * tags were dropped.
 */
size_t ap_orset_gc(struct ap_orset *s, struct ap_hlc_ts acked_by_both);

/** Whether two sets hold the same elements, tags and tombstones. */
bool ap_orset_equal(const struct ap_orset *a, const struct ap_orset *b);

/** Number of tombstoned tags (what ap_orset_gc may collect). */
size_t ap_orset_tombstones(const struct ap_orset *s);

/**
 * Append s as one msgpack value:
 * {"v":1,"e":[elem...],"t":[[elem index, add packed, add node, removed packed, removed node]...]}
 * (packed = ap_hlc_pack; a live tag has removed 0, 0). At most
 * AP_ORSET_ENCODED_MAX bytes. Returns 0 or the writer's sticky error.
 */
int ap_orset_encode(const struct ap_orset *s, struct ap_mp_writer *w);

/**
 * Decode what ap_orset_encode wrote into *out (o points into an
 * ap_mp_unpack result). Checks the version, types, counts against the
 * capacity, element lengths, indexes, stamp ranges, and rejects duplicate
 * elements or tags and elements without a tag; the order of elements and
 * tags on the wire does not matter. Returns 0, or AP_EPROTO with a message
 * in errmsg (AP_ERRMSG_SIZE bytes, may be NULL); *out is then unspecified.
 */
int ap_orset_decode(const msgpack_object *o, struct ap_orset *out, char *errmsg);

#endif
