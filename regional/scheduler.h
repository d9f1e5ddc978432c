/* scheduler: implicit placement, picking a site for an instance from the region's view of its
 * sites (pure code, no I/O; rules in docs/scheduler.md). */
#ifndef REGIONAL_SCHEDULER_H
#define REGIONAL_SCHEDULER_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/** Size of a site name buffer (63 characters and the terminator). */
#define AP_SCHED_NAME 64

/** Most labels in one label set (site labels, required labels, affinity, anti-affinity). */
#define AP_SCHED_MAX_LABELS 32

/** Size of a label key or value buffer (63 characters and the terminator). */
#define AP_SCHED_LABEL 64

/** Most capabilities a capability table may name (one bit each of a uint64_t). */
#define AP_SCHED_MAX_CAPS 64

/** Size of a verdict's explanation buffer. */
#define AP_SCHED_WHY 128

/** A set of key=value labels; keys and values are NUL-terminated inside their buffers. */
struct ap_sched_labels {
    size_t n;
    struct {
        char key[AP_SCHED_LABEL];
        char value[AP_SCHED_LABEL];
    } kv[AP_SCHED_MAX_LABELS];
};

/** How many instances on a site carry the label key=value. */
struct ap_sched_labelcount {
    char key[AP_SCHED_LABEL];
    char value[AP_SCHED_LABEL];
    uint32_t count;
};

/**
 * What the scheduler knows of one site. The caller owns every pointer and
 * keeps them valid for the duration of ap_sched_pick(). Amounts are >= 0; a
 * site with a negative amount, more than AP_SCHED_MAX_LABELS labels or a NULL
 * inst_labels with n_inst_labels > 0 is rejected as "invalid site record".
 */
struct ap_sched_site {
    char name[AP_SCHED_NAME];
    struct ap_sched_labels labels;
    /** Bit set: bit i is capability i of the caller's capability table. */
    uint64_t capabilities;
    /** False when unreachable, cordoned or being deleted. */
    bool schedulable;
    /** Why not schedulable, e.g. "unreachable", "cordoned" (a static string; NULL is fine). */
    const char *unschedulable_why;
    /** Capacity. 0 cpu or memory means no limit; 0 instances means no instance fits. */
    int64_t cap_cpu_millis, cap_memory_mb, cap_instances;
    /** Committed and pending placements. */
    int64_t used_cpu_millis, used_memory_mb, used_instances;
    /** Label sets of the instances on the site, for affinity: counts per key=value. Borrowed. */
    struct ap_sched_labelcount *inst_labels;
    size_t n_inst_labels;
};

/** Which of the sites that fit wins (docs/scheduler.md "Scoring"). */
enum ap_sched_strategy {
    /** Lowest utilisation after placement: instances spread over sites. */
    AP_SCHED_SPREAD = 0,
    /** Highest utilisation after placement: sites fill one after another. */
    AP_SCHED_PACK = 1,
};

/**
 * One placement request. ap_sched_request_from_json() fills the constraints;
 * the caller fills the resources and, optionally, exclude_sites.
 */
struct ap_sched_request {
    /** Resources of the instance (instances: always 1); >= 0. */
    int64_t cpu_millis, memory_mb;
    /** Site labels that must match exactly. */
    struct ap_sched_labels require_labels;
    /** Capability bits that must all be set on the site. */
    uint64_t require_capabilities;
    enum ap_sched_strategy strategy;
    /**
     * Hard filter: the site must run instances carrying these labels (every
     * key=value counted at least once in the site's inst_labels).
     */
    struct ap_sched_labels affinity;
    /** Hard filter: exclude sites running an instance with ANY of these key=value. */
    struct ap_sched_labels anti_affinity;
    /** Site names never to pick (optional, borrowed; NULL entries are skipped). */
    const char *const *exclude_sites;
    size_t n_exclude;
    /**
     * Capability names by bit, used only to word verdicts ("missing capability
     * pid_ns"); NULL words them "missing capability bit 3". Borrowed; set by
     * ap_sched_request_from_json() to its caps_table.
     */
    const char *const *cap_names;
    size_t n_cap_names;
};

/** Why one site was kept or rejected. */
struct ap_sched_verdict {
    /** Index of the site in the array given to ap_sched_pick(). */
    size_t site;
    /** Whether the site satisfies every constraint. */
    bool kept;
    /** The first rule the site fails, or "fits: ..." / "chosen: ..." with its utilisation. */
    char why[AP_SCHED_WHY];
    /** Utilisation after placement (0..1) when kept, 0 otherwise. */
    double score;
};

/**
 * Pick a site index for req among sites[0..n). Returns the index (>= 0), or
 * AP_ENOTFOUND when no site qualifies, or AP_EINVAL when req is NULL, sites is
 * NULL with n > 0, n > INT32_MAX, a resource is negative, a label set holds more than
 * AP_SCHED_MAX_LABELS entries, exclude_sites is NULL with n_exclude > 0 or the
 * strategy is unknown (then verdicts is left untouched). When verdicts is
 * non-NULL it receives one verdict per site (n entries, caller-owned) saying
 * why each was rejected ("missing label zone=south", "cpu: needs 100 millis,
 * 50 free of 8000", "anti-affinity: runs app=web", "unreachable") or its score
 * when kept. Deterministic: among equal scores the lowest site name wins (then
 * the lowest index). Nothing is kept across calls: the caller adds the
 * placement to used_* before the next call.
 */
int ap_sched_pick(const struct ap_sched_site *sites, size_t n, const struct ap_sched_request *req,
                  struct ap_sched_verdict *verdicts);

/**
 * Parse the "placement" object of an instance create body into req:
 * {"labels":{"zone":"south"},"capabilities":["pid_ns"],"strategy":"spread"|"pack",
 * "affinity":{"app":"db"},"anti_affinity":{"app":"web"}}, every field optional.
 * NULL j (or a JSON null) means defaults (no constraint, spread). Every field of req but the
 * resources (cpu_millis, memory_mb, which the caller fills before or after)
 * is reset, also on error; cap_names is set to caps_table. caps_table/n_caps
 * (n_caps <= AP_SCHED_MAX_CAPS, borrowed, must outlive req) map capability
 * names to bits. Errors: AP_EINVAL for unknown fields, wrong types, bad label
 * text, too many labels or an unknown capability name, with errmsg
 * (AP_ERRMSG_SIZE bytes, may be NULL) naming the field, e.g.
 * "placement.strategy: must be spread or pack". j is borrowed.
 */
int ap_sched_request_from_json(json_t *j, const char *const *caps_table, size_t n_caps,
                               struct ap_sched_request *req, char *errmsg);

/** Name of a strategy as in JSON ("spread", "pack"), or "unknown". */
const char *ap_sched_strategy_name(enum ap_sched_strategy s);

#endif
