/* scheduler: implicit placement, picking a site for an instance from the region's view of its
 * sites (pure code, no I/O; rules in docs/scheduler.md). */
#include "scheduler.h"

#include "ap/base.h"
#include "ap/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Write a verdict text when the caller asked for verdicts (why != NULL) and say "rejected". The
 * hot path (no verdicts) never formats anything. */
__attribute__((format(printf, 2, 3))) static bool reject(char *why, const char *fmt, ...)
{
    if (why != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, AP_SCHED_WHY, fmt, ap);
        va_end(ap);
    }
    return false;
}

/* Equality of two label texts bounded by their buffer size. Written out because nearly every
 * comparison differs in its first bytes, where a loop stops at once and strncmp() pays its call
 * and setup (strncmp was half the cost of a placement among 1,000 sites). */
static bool text_eq(const char *a, const char *b)
{
    for (size_t i = 0; i < AP_SCHED_LABEL; i++) {
        if (a[i] != b[i]) {
            return false;
        }
        if (a[i] == '\0') {
            return true;
        }
    }
    return true;
}

/* Whether the site's own labels hold key=value exactly. */
static bool has_label(const struct ap_sched_labels *l, const char *key, const char *value)
{
    for (size_t i = 0; i < l->n; i++) {
        if (text_eq(l->kv[i].key, key)) {
            return text_eq(l->kv[i].value, value);
        }
    }
    return false;
}

/* Whether at least one instance on the site carries key=value. */
static bool runs_label(const struct ap_sched_site *s, const char *key, const char *value)
{
    for (size_t i = 0; i < s->n_inst_labels; i++) {
        const struct ap_sched_labelcount *c = &s->inst_labels[i];
        if (c->count > 0 && text_eq(c->key, key) && text_eq(c->value, value)) {
            return true;
        }
    }
    return false;
}

static bool excluded(const struct ap_sched_site *s, const struct ap_sched_request *req)
{
    for (size_t i = 0; i < req->n_exclude; i++) {
        const char *name = req->exclude_sites[i];
        if (name != NULL && strncmp(s->name, name, AP_SCHED_NAME) == 0) {
            return true;
        }
    }
    return false;
}

static const char *site_invalid(const struct ap_sched_site *s)
{
    if (s->cap_cpu_millis < 0 || s->used_cpu_millis < 0) {
        return "negative cpu";
    }
    if (s->cap_memory_mb < 0 || s->used_memory_mb < 0) {
        return "negative memory";
    }
    if (s->cap_instances < 0 || s->used_instances < 0) {
        return "negative instances";
    }
    if (s->labels.n > AP_SCHED_MAX_LABELS) {
        return "too many labels";
    }
    if (s->inst_labels == NULL && s->n_inst_labels > 0) {
        return "no instance labels";
    }
    return NULL;
}

/* One resource with a limit: whether need more fits beside used, and the share of cap in use
 * after placement. used + need cannot overflow once need <= cap - used holds. */
static bool fits(int64_t used, int64_t need, int64_t cap, double *share)
{
    if (used > cap || need > cap - used) {
        return false;
    }
    double s = (double)(used + need) / (double)cap;
    if (s > *share) {
        *share = s;
    }
    return true;
}

static int64_t free_of(int64_t used, int64_t cap)
{
    return used < cap ? cap - used : 0;
}

/* Check every rule of docs/scheduler.md in order; the first failing rule is the verdict. Returns
 * whether the site is kept, and then its utilisation after placement in *score. */
static bool check_site(const struct ap_sched_site *s, const struct ap_sched_request *req, char *why,
                       double *score)
{
    if (!s->schedulable) {
        return reject(why, "%s",
                      s->unschedulable_why != NULL ? s->unschedulable_why : "unschedulable");
    }
    if (req->n_exclude > 0 && excluded(s, req)) {
        return reject(why, "excluded by the request");
    }
    const char *bad = site_invalid(s);
    if (bad != NULL) {
        return reject(why, "invalid site record: %s", bad);
    }

    uint64_t missing = req->require_capabilities & ~s->capabilities;
    if (missing != 0) {
        unsigned bit = 0;
        while ((missing & (UINT64_C(1) << bit)) == 0) {
            bit++;
        }
        if (req->cap_names != NULL && bit < req->n_cap_names && req->cap_names[bit] != NULL) {
            return reject(why, "missing capability %s", req->cap_names[bit]);
        }
        return reject(why, "missing capability bit %u", bit);
    }

    for (size_t i = 0; i < req->require_labels.n; i++) {
        const char *k = req->require_labels.kv[i].key, *v = req->require_labels.kv[i].value;
        if (!has_label(&s->labels, k, v)) {
            return reject(why, "missing label %.63s=%.63s", k, v);
        }
    }
    for (size_t i = 0; i < req->anti_affinity.n; i++) {
        const char *k = req->anti_affinity.kv[i].key, *v = req->anti_affinity.kv[i].value;
        if (runs_label(s, k, v)) {
            return reject(why, "anti-affinity: runs %.63s=%.63s", k, v);
        }
    }
    for (size_t i = 0; i < req->affinity.n; i++) {
        const char *k = req->affinity.kv[i].key, *v = req->affinity.kv[i].value;
        if (!runs_label(s, k, v)) {
            return reject(why, "affinity: runs no %.63s=%.63s", k, v);
        }
    }

    /* docs/scheduler.md "Capacity": 0 instances fits nothing; 0 cpu or memory is no limit. */
    double share = 0.0;
    if (s->cap_instances == 0) {
        return reject(why, "instances: capacity 0");
    }
    if (!fits(s->used_instances, 1, s->cap_instances, &share)) {
        return reject(why, "instances: needs 1, 0 free of %lld", (long long)s->cap_instances);
    }
    if (s->cap_cpu_millis > 0 &&
        !fits(s->used_cpu_millis, req->cpu_millis, s->cap_cpu_millis, &share)) {
        return reject(why, "cpu: needs %lld millis, %lld free of %lld", (long long)req->cpu_millis,
                      (long long)free_of(s->used_cpu_millis, s->cap_cpu_millis),
                      (long long)s->cap_cpu_millis);
    }
    if (s->cap_memory_mb > 0 &&
        !fits(s->used_memory_mb, req->memory_mb, s->cap_memory_mb, &share)) {
        return reject(why, "memory: needs %lld MB, %lld free of %lld", (long long)req->memory_mb,
                      (long long)free_of(s->used_memory_mb, s->cap_memory_mb),
                      (long long)s->cap_memory_mb);
    }
    *score = share;
    return true;
}

static bool labels_ok(const struct ap_sched_labels *l)
{
    return l->n <= AP_SCHED_MAX_LABELS;
}

static bool request_ok(const struct ap_sched_request *req)
{
    return req->cpu_millis >= 0 && req->memory_mb >= 0 && labels_ok(&req->require_labels) &&
           labels_ok(&req->affinity) && labels_ok(&req->anti_affinity) &&
           (req->exclude_sites != NULL || req->n_exclude == 0) &&
           (req->strategy == AP_SCHED_SPREAD || req->strategy == AP_SCHED_PACK);
}

/* Whether candidate (score, name) beats the best so far under the strategy; equal scores go to
 * the lower name, and equal names keep the earlier index (the best so far). */
static bool better(enum ap_sched_strategy st, double score, const char *name, double best_score,
                   const char *best_name)
{
    if (score != best_score) {
        return st == AP_SCHED_SPREAD ? score < best_score : score > best_score;
    }
    return strncmp(name, best_name, AP_SCHED_NAME) < 0;
}

int ap_sched_pick(const struct ap_sched_site *sites, size_t n, const struct ap_sched_request *req,
                  struct ap_sched_verdict *verdicts)
{
    /* The index is returned as an int; a region holds a few thousand sites. */
    if (req == NULL || (sites == NULL && n > 0) || n > (size_t)INT32_MAX || !request_ok(req)) {
        return AP_EINVAL;
    }
    size_t best = SIZE_MAX;
    double best_score = 0.0;
    for (size_t i = 0; i < n; i++) {
        struct ap_sched_verdict *v = verdicts != NULL ? &verdicts[i] : NULL;
        double score = 0.0;
        bool kept = check_site(&sites[i], req, v != NULL ? v->why : NULL, &score);
        if (v != NULL) {
            v->site = i;
            v->kept = kept;
            v->score = kept ? score : 0.0;
            if (kept) {
                snprintf(v->why, sizeof v->why, "fits: utilisation %.3f after placement", score);
            }
        }
        if (kept && (best == SIZE_MAX ||
                     better(req->strategy, score, sites[i].name, best_score, sites[best].name))) {
            best = i;
            best_score = score;
        }
    }
    if (best == SIZE_MAX) {
        return AP_ENOTFOUND;
    }
    if (verdicts != NULL) {
        snprintf(verdicts[best].why, sizeof verdicts[best].why,
                 "chosen (%s): utilisation %.3f after placement",
                 ap_sched_strategy_name(req->strategy), best_score);
    }
    return (int)best;
}

const char *ap_sched_strategy_name(enum ap_sched_strategy s)
{
    switch (s) {
    case AP_SCHED_SPREAD:
        return "spread";
    case AP_SCHED_PACK:
        return "pack";
    }
    return "unknown";
}

/* JSON parsing. */

__attribute__((format(printf, 2, 3))) static int fail(char *errmsg, const char *fmt, ...)
{
    if (errmsg != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(errmsg, AP_ERRMSG_SIZE, fmt, ap);
        va_end(ap);
    }
    return AP_EINVAL;
}

/* Label keys and values: at most 63 letters, digits, '-', '_', '.' or '/' (the rule site
 * registration applies, so anything else could never match); keys are not empty. */
static bool valid_label_text(const char *s, bool allow_empty)
{
    size_t n = strlen(s);
    if ((n == 0 && !allow_empty) || n >= AP_SCHED_LABEL) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.' || c == '/')) {
            return false;
        }
    }
    return true;
}

static int parse_labels(json_t *j, const char *field, struct ap_sched_labels *out, char *errmsg)
{
    const char *key;
    json_t *value;

    if (!json_is_object(j)) {
        return fail(errmsg, "placement.%s: must be an object of string labels", field);
    }
    if (json_object_size(j) > AP_SCHED_MAX_LABELS) {
        return fail(errmsg, "placement.%s: at most %d labels", field, AP_SCHED_MAX_LABELS);
    }
    json_object_foreach(j, key, value)
    {
        if (!valid_label_text(key, false)) {
            return fail(errmsg,
                        "placement.%s: key '%.64s' must be 1-63 letters, digits, '-', '_', '.' "
                        "or '/'",
                        field, key);
        }
        if (!json_is_string(value) || !valid_label_text(json_string_value(value), true)) {
            return fail(errmsg,
                        "placement.%s.%s: value must be a string of at most 63 letters, digits, "
                        "'-', '_', '.' or '/'",
                        field, key);
        }
        ap_strlcpy(out->kv[out->n].key, key, sizeof out->kv[out->n].key);
        ap_strlcpy(out->kv[out->n].value, json_string_value(value), sizeof out->kv[out->n].value);
        out->n++;
    }
    return 0;
}

static int parse_capabilities(json_t *j, const char *const *caps_table, size_t n_caps,
                              uint64_t *bits, char *errmsg)
{
    if (!json_is_array(j)) {
        return fail(errmsg, "placement.capabilities: must be an array of capability names");
    }
    if (json_array_size(j) > AP_SCHED_MAX_CAPS) {
        return fail(errmsg, "placement.capabilities: at most %d names", AP_SCHED_MAX_CAPS);
    }
    size_t i;
    json_t *name;
    json_array_foreach(j, i, name)
    {
        if (!json_is_string(name)) {
            return fail(errmsg, "placement.capabilities[%zu]: must be a string", i);
        }
        const char *s = json_string_value(name);
        size_t bit = 0;
        while (bit < n_caps && (caps_table[bit] == NULL || strcmp(caps_table[bit], s) != 0)) {
            bit++;
        }
        if (bit == n_caps) {
            return fail(errmsg, "placement.capabilities[%zu]: unknown capability '%.64s'", i, s);
        }
        *bits |= UINT64_C(1) << bit;
    }
    return 0;
}

static int parse_placement(json_t *j, const char *const *caps_table, size_t n_caps,
                           struct ap_sched_request *req, char *errmsg)
{
    static const char *const allowed[] = {"labels", "capabilities", "strategy", "affinity",
                                          "anti_affinity"};
    const char *key;
    json_t *value;
    int rv;

    if (!json_is_object(j)) {
        return fail(errmsg, "placement: must be an object");
    }
    json_object_foreach(j, key, value)
    {
        size_t k = 0;
        while (k < AP_ARRAY_LEN(allowed) && strcmp(allowed[k], key) != 0) {
            k++;
        }
        if (k == AP_ARRAY_LEN(allowed)) {
            return fail(errmsg, "placement.%.64s: unknown field", key);
        }
    }
    if ((value = json_object_get(j, "labels")) != NULL &&
        (rv = parse_labels(value, "labels", &req->require_labels, errmsg)) != 0) {
        return rv;
    }
    if ((value = json_object_get(j, "affinity")) != NULL &&
        (rv = parse_labels(value, "affinity", &req->affinity, errmsg)) != 0) {
        return rv;
    }
    if ((value = json_object_get(j, "anti_affinity")) != NULL &&
        (rv = parse_labels(value, "anti_affinity", &req->anti_affinity, errmsg)) != 0) {
        return rv;
    }
    if ((value = json_object_get(j, "capabilities")) != NULL &&
        (rv = parse_capabilities(value, caps_table, n_caps, &req->require_capabilities, errmsg)) !=
            0) {
        return rv;
    }
    if ((value = json_object_get(j, "strategy")) != NULL) {
        const char *s = json_string_value(value); /* NULL when not a string */
        if (s != NULL && strcmp(s, "spread") == 0) {
            req->strategy = AP_SCHED_SPREAD;
        } else if (s != NULL && strcmp(s, "pack") == 0) {
            req->strategy = AP_SCHED_PACK;
        } else {
            return fail(errmsg, "placement.strategy: must be spread or pack");
        }
    }
    return 0;
}

/* Back to defaults, keeping the resources the caller may already have filled. */
static void reset_request(struct ap_sched_request *req, const char *const *caps_table,
                          size_t n_caps)
{
    int64_t cpu = req->cpu_millis, mem = req->memory_mb;
    memset(req, 0, sizeof *req);
    req->cpu_millis = cpu;
    req->memory_mb = mem;
    req->strategy = AP_SCHED_SPREAD;
    req->cap_names = caps_table;
    req->n_cap_names = n_caps;
}

int ap_sched_request_from_json(json_t *j, const char *const *caps_table, size_t n_caps,
                               struct ap_sched_request *req, char *errmsg)
{
    AP_ASSERT(req != NULL);
    AP_ASSERT(n_caps <= AP_SCHED_MAX_CAPS && (caps_table != NULL || n_caps == 0));
    reset_request(req, caps_table, n_caps);
    if (j == NULL || json_is_null(j)) {
        return 0;
    }
    int rv = parse_placement(j, caps_table, n_caps, req, errmsg);
    if (rv != 0) {
        reset_request(req, caps_table, n_caps);
    }
    return rv;
}
