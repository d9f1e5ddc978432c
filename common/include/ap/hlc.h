/* hlc: hybrid logical clock (48-bit physical ms + 16-bit logical, node id as tie-break). */
#ifndef AP_HLC_H
#define AP_HLC_H

#include <stddef.h>
#include <stdint.h>

/** Largest physical part a stamp can hold: 2^48 - 1 ms (year 10889). */
#define AP_HLC_PHYSICAL_MAX ((UINT64_C(1) << 48) - 1)

/** Largest logical counter; one more advances the physical part by 1 ms. */
#define AP_HLC_LOGICAL_MAX UINT16_MAX

/**
 * Default bound on how far a remote stamp may be ahead of the local wall
 * clock. Edge hosts drift, so it is generous; it exists so that one wildly
 * wrong clock (or a corrupt message) cannot drag every clock in the tree
 * into the future, which could never be undone.
 */
#define AP_HLC_DEFAULT_MAX_OFFSET_MS UINT64_C(60000)

/**
 * Room for ap_hlc_format's text, terminator included:
 * 15 digits + '.' + 5 digits + '@' + 10 digits + NUL = 33.
 */
#define AP_HLC_STR_SIZE 40

/**
 * One stamp. Plain value type: callers embed, copy and persist it. Ordered
 * by physical_ms, then logical, then node (ap_hlc_compare).
 */
struct ap_hlc_ts {
    uint64_t physical_ms; /* unix milliseconds, at most AP_HLC_PHYSICAL_MAX */
    uint16_t logical;     /* orders stamps within one physical ms */
    uint32_t node;        /* id of the node that issued the stamp */
};

/**
 * Wall-clock source in unix milliseconds. The clock calls it once per
 * ap_hlc_now/ap_hlc_update, with the data pointer given to ap_hlc_new.
 * It may go backwards; the clock stays monotonic regardless.
 */
typedef uint64_t (*ap_hlc_wall_cb)(void *data);

/** A clock: last stamp issued, node id, max offset, wall source. Opaque. */
struct ap_hlc;

/**
 * Create a clock for node `node`. The clock reads time only through `wall`
 * (called with `data`, which the caller keeps alive while the clock lives);
 * pass ap_hlc_wall_realtime in daemons and a fake in tests. Remote stamps
 * more than max_offset_ms ahead of the wall clock are rejected by
 * ap_hlc_update. On success *out is owned by the caller (ap_hlc_free).
 * Returns 0, AP_EINVAL (out or wall NULL) or AP_ENOMEM.
 */
int ap_hlc_new(struct ap_hlc **out, uint32_t node, uint64_t max_offset_ms, ap_hlc_wall_cb wall,
               void *data);

/** Free a clock; NULL is fine. */
void ap_hlc_free(struct ap_hlc *c);

/**
 * Wall source for daemons: CLOCK_REALTIME in unix ms. `data` is ignored.
 * This is the only function of the module that reads the system clock.
 */
uint64_t ap_hlc_wall_realtime(void *data);

/**
 * Stamp a local or send event. The result is strictly greater than every
 * stamp this clock issued, observed or received before, and carries the
 * clock's node id. Never fails: when the logical counter would pass
 * AP_HLC_LOGICAL_MAX the physical part advances by 1 ms instead. (At
 * AP_HLC_PHYSICAL_MAX, 8,000 years out, the clock saturates.)
 */
struct ap_hlc_ts ap_hlc_now(struct ap_hlc *c);

/**
 * Merge a stamp received from another node and stamp the receive event:
 * *out (may be NULL) is strictly greater than both `remote` and every stamp
 * this clock issued before, and later ap_hlc_now stamps are greater still.
 * Returns 0, or AP_EINVAL when remote.physical_ms is more than the max
 * offset ahead of the wall clock; then the clock is not changed, *out is
 * left alone, and ap_hlc_errmsg says by how many ms the remote was ahead.
 */
int ap_hlc_update(struct ap_hlc *c, struct ap_hlc_ts remote, struct ap_hlc_ts *out);

/**
 * Restore after a restart: make sure later stamps are greater than `seen`
 * (e.g. the highest stamp found in the local database). Unlike
 * ap_hlc_update it applies no max-offset check and issues no stamp; a
 * stamp at or below the last one issued changes nothing.
 */
void ap_hlc_observe(struct ap_hlc *c, struct ap_hlc_ts seen);

/** The last stamp the clock issued or observed (physical 0 before any). */
struct ap_hlc_ts ap_hlc_last(const struct ap_hlc *c);

/** The node id the clock stamps with. */
uint32_t ap_hlc_node(const struct ap_hlc *c);

/** Message of the last failure (empty before any); owned by the clock. */
const char *ap_hlc_errmsg(const struct ap_hlc *c);

/** Total order on stamps: -1, 0 or 1 comparing physical_ms, then logical, then node. */
int ap_hlc_compare(struct ap_hlc_ts a, struct ap_hlc_ts b);

/**
 * Pack physical and logical into one integer, physical << 16 | logical,
 * that sorts like ap_hlc_compare except for the node (which is dropped).
 * Bits of physical_ms above 48 are dropped.
 */
uint64_t ap_hlc_pack(struct ap_hlc_ts ts);

/** Inverse of ap_hlc_pack, with the node id given separately. */
struct ap_hlc_ts ap_hlc_unpack(uint64_t packed, uint32_t node);

/**
 * Write "<physical>.<logical>@<node>" (decimal, e.g. "1700000000000.3@7")
 * into buf of n bytes, terminated; AP_HLC_STR_SIZE always suffices.
 * Returns the text length, or AP_ETOOBIG when it does not fit (buf then
 * holds "" if n > 0).
 */
int ap_hlc_format(struct ap_hlc_ts ts, char *buf, size_t n);

/**
 * Parse the text of ap_hlc_format into *out. Accepts exactly three runs of
 * decimal digits separated by '.' and '@' (no sign, no spaces), each within
 * its field's range (physical at most AP_HLC_PHYSICAL_MAX). Returns 0, or
 * AP_EINVAL on anything else (*out left alone).
 */
int ap_hlc_parse(const char *s, struct ap_hlc_ts *out);

#endif
