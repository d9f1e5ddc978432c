/* crdt: merge rules for replicated records: instance state, LWW registers, add-wins OR-sets. */
#include "ap/crdt.h"

#include "ap/base.h"
#include "ap/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static void crdt_errmsg(char *errmsg, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void crdt_errmsg(char *errmsg, const char *fmt, ...)
{
    if (errmsg == NULL) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errmsg, AP_ERRMSG_SIZE, fmt, ap);
    va_end(ap);
}

static bool ts_is_zero(struct ap_hlc_ts ts)
{
    return ts.physical_ms == 0 && ts.logical == 0 && ts.node == 0;
}

static bool ts_in_range(struct ap_hlc_ts ts)
{
    return ts.physical_ms <= AP_HLC_PHYSICAL_MAX;
}

static struct ap_hlc_ts ts_max(struct ap_hlc_ts a, struct ap_hlc_ts b)
{
    return ap_hlc_compare(a, b) >= 0 ? a : b;
}

static bool ts_equal(struct ap_hlc_ts a, struct ap_hlc_ts b)
{
    return ap_hlc_compare(a, b) == 0;
}

static int cmp_int(int64_t a, int64_t b)
{
    return (a > b) - (a < b);
}

/* ---- instance state --------------------------------------------------------------------- */

static const char *desired_names[] = {"running", "stopped", "deleted"};
static const char *actual_names[] = {"pending", "starting", "running",
                                     "exited",  "failed",   "stopped"};

const char *ap_desired_str(enum ap_desired d)
{
    return (unsigned)d < AP_ARRAY_LEN(desired_names) ? desired_names[d] : "?";
}

int ap_desired_parse(const char *s, enum ap_desired *out)
{
    for (size_t i = 0; s != NULL && i < AP_ARRAY_LEN(desired_names); i++) {
        if (strcmp(s, desired_names[i]) == 0) {
            *out = (enum ap_desired)i;
            return 0;
        }
    }
    return AP_EINVAL;
}

const char *ap_actual_str(enum ap_actual a)
{
    return (unsigned)a < AP_ARRAY_LEN(actual_names) ? actual_names[a] : "?";
}

int ap_actual_parse(const char *s, enum ap_actual *out)
{
    for (size_t i = 0; s != NULL && i < AP_ARRAY_LEN(actual_names); i++) {
        if (strcmp(s, actual_names[i]) == 0) {
            *out = (enum ap_actual)i;
            return 0;
        }
    }
    return AP_EINVAL;
}

static bool desired_valid(enum ap_desired d)
{
    return (unsigned)d <= AP_DESIRED_DELETED;
}

static bool actual_valid(enum ap_actual a)
{
    return (unsigned)a <= AP_ACTUAL_STOPPED;
}

static bool write_stamp_valid(struct ap_hlc_ts ts)
{
    return !ts_is_zero(ts) && ts_in_range(ts);
}

int ap_inst_init(struct ap_inst_state *s, const char *spec_digest, enum ap_desired desired,
                 struct ap_hlc_ts ts)
{
    if (spec_digest == NULL || spec_digest[0] == '\0' ||
        strlen(spec_digest) >= AP_INST_DIGEST_SIZE || !desired_valid(desired) ||
        !write_stamp_valid(ts)) {
        return AP_EINVAL;
    }
    memset(s, 0, sizeof *s);
    ap_strlcpy(s->spec_digest, spec_digest, sizeof s->spec_digest);
    s->spec_ts = ts;
    s->desired = desired;
    s->desired_ts = ts;
    s->actual = AP_ACTUAL_PENDING;
    return 0;
}

int ap_inst_validate(const struct ap_inst_state *s, char *errmsg)
{
    if (memchr(s->spec_digest, '\0', sizeof s->spec_digest) == NULL) {
        crdt_errmsg(errmsg, "instance: spec digest not terminated");
        return AP_EINVAL;
    }
    if (!desired_valid(s->desired)) {
        crdt_errmsg(errmsg, "instance: desired state %d out of range", (int)s->desired);
        return AP_EINVAL;
    }
    if (!actual_valid(s->actual)) {
        crdt_errmsg(errmsg, "instance: actual state %d out of range", (int)s->actual);
        return AP_EINVAL;
    }
    if (!ts_in_range(s->spec_ts) || !ts_in_range(s->desired_ts) || !ts_in_range(s->actual_ts)) {
        crdt_errmsg(errmsg, "instance: stamp beyond the clock's range");
        return AP_EINVAL;
    }
    return 0;
}

/*
 * Each part of the record is merged by taking the greater of the two under
 * a total order, which is what makes the merge a join (commutative,
 * associative, idempotent) whatever the inputs.
 */

/* Spec order: a known spec beats an unknown one; then the smaller creation stamp, then digest. */
static int spec_cmp(const struct ap_inst_state *a, const struct ap_inst_state *b)
{
    bool ka = a->spec_digest[0] != '\0';
    bool kb = b->spec_digest[0] != '\0';
    if (ka != kb) {
        return ka ? 1 : -1;
    }
    int c = ap_hlc_compare(a->spec_ts, b->spec_ts);
    if (c != 0) {
        return -c;
    }
    c = strncmp(a->spec_digest, b->spec_digest, AP_INST_DIGEST_SIZE);
    return (c < 0) - (c > 0);
}

/* Desired order: deleted above anything else (docs/merge-rules.md: delete dominates), then stamp.
 */
static int desired_cmp(const struct ap_inst_state *a, const struct ap_inst_state *b)
{
    bool da = a->desired == AP_DESIRED_DELETED;
    bool db = b->desired == AP_DESIRED_DELETED;
    if (da != db) {
        return da ? 1 : -1;
    }
    int c = ap_hlc_compare(a->desired_ts, b->desired_ts);
    if (c != 0) {
        return c;
    }
    return cmp_int(a->desired, b->desired);
}

/* Actual order: the stamp, then the values, which move as one. */
static int actual_cmp(const struct ap_inst_state *a, const struct ap_inst_state *b)
{
    int c = ap_hlc_compare(a->actual_ts, b->actual_ts);
    if (c == 0) {
        c = cmp_int(a->actual, b->actual);
    }
    if (c == 0) {
        c = cmp_int(a->pid, b->pid);
    }
    if (c == 0) {
        c = cmp_int(a->exit_code, b->exit_code);
    }
    if (c == 0) {
        c = cmp_int(a->restarts, b->restarts);
    }
    return c;
}

bool ap_inst_merge(struct ap_inst_state *into, const struct ap_inst_state *other)
{
    if (into == other) {
        return false;
    }
    bool changed = false;
    if (spec_cmp(other, into) > 0) {
        memcpy(into->spec_digest, other->spec_digest, sizeof into->spec_digest);
        into->spec_ts = other->spec_ts;
        changed = true;
    }
    if (desired_cmp(other, into) > 0) {
        into->desired = other->desired;
        into->desired_ts = other->desired_ts;
        changed = true;
    }
    if (actual_cmp(other, into) > 0) {
        into->actual = other->actual;
        into->pid = other->pid;
        into->exit_code = other->exit_code;
        into->restarts = other->restarts;
        into->actual_ts = other->actual_ts;
        changed = true;
    }
    return changed;
}

int ap_inst_set_desired(struct ap_inst_state *s, enum ap_desired desired, struct ap_hlc_ts ts)
{
    if (!desired_valid(desired) || !write_stamp_valid(ts)) {
        return AP_EINVAL;
    }
    if (s->desired == AP_DESIRED_DELETED) {
        /*
         * docs/merge-rules.md: a deleted instance never comes back. Deleting
         * it again is a no-op, so it makes no new delta.
         */
        return desired == AP_DESIRED_DELETED ? 0 : AP_ECONFLICT;
    }
    if (desired != AP_DESIRED_DELETED && ap_hlc_compare(ts, s->desired_ts) <= 0) {
        return AP_EAGAIN;
    }
    /* A delete applies whatever its stamp, as it would through the merge. */
    s->desired = desired;
    s->desired_ts = ts;
    return 0;
}

int ap_inst_set_actual(struct ap_inst_state *s, enum ap_actual actual, int32_t pid,
                       int32_t exit_code, uint32_t restarts, struct ap_hlc_ts ts)
{
    if (!actual_valid(actual) || !write_stamp_valid(ts)) {
        return AP_EINVAL;
    }
    if (ap_hlc_compare(ts, s->actual_ts) <= 0) {
        return AP_EAGAIN;
    }
    s->actual = actual;
    s->pid = pid;
    s->exit_code = exit_code;
    s->restarts = restarts;
    s->actual_ts = ts;
    return 0;
}

struct ap_hlc_ts ap_inst_max_ts(const struct ap_inst_state *s)
{
    return ts_max(s->spec_ts, ts_max(s->desired_ts, s->actual_ts));
}

bool ap_inst_newer_than(const struct ap_inst_state *s, struct ap_hlc_ts acked)
{
    return ap_hlc_compare(ap_inst_max_ts(s), acked) > 0;
}

bool ap_inst_equal(const struct ap_inst_state *a, const struct ap_inst_state *b)
{
    return spec_cmp(a, b) == 0 && desired_cmp(a, b) == 0 && actual_cmp(a, b) == 0;
}

/* ---- last-writer-wins register ---------------------------------------------------------- */

int ap_lww_set(struct ap_lww *r, const void *value, size_t len, struct ap_hlc_ts ts)
{
    if (len > AP_LWW_VALUE_MAX) {
        return AP_ETOOBIG;
    }
    if ((value == NULL && len > 0) || !write_stamp_valid(ts)) {
        return AP_EINVAL;
    }
    if (ap_hlc_compare(ts, r->ts) <= 0) {
        return AP_EAGAIN;
    }
    r->ts = ts;
    r->len = (uint16_t)len;
    if (len > 0) {
        memcpy(r->value, value, len);
    }
    return 0;
}

static int lww_cmp(const struct ap_lww *a, const struct ap_lww *b)
{
    AP_ASSERT(a->len <= AP_LWW_VALUE_MAX && b->len <= AP_LWW_VALUE_MAX);
    int c = ap_hlc_compare(a->ts, b->ts);
    if (c == 0) {
        c = cmp_int(a->len, b->len);
    }
    if (c == 0 && a->len > 0) {
        c = memcmp(a->value, b->value, a->len);
        c = (c > 0) - (c < 0);
    }
    return c;
}

bool ap_lww_merge(struct ap_lww *into, const struct ap_lww *other)
{
    if (into == other || lww_cmp(other, into) <= 0) {
        return false;
    }
    into->ts = other->ts;
    into->len = other->len;
    memcpy(into->value, other->value, other->len);
    return true;
}

bool ap_lww_equal(const struct ap_lww *a, const struct ap_lww *b)
{
    return lww_cmp(a, b) == 0;
}

/* ---- add-wins observed-remove set ------------------------------------------------------- */

void ap_orset_init(struct ap_orset *s)
{
    /* Slots past the counts are never read, so there is no need to clear 13 KiB. */
    s->n_elems = 0;
    s->n_tags = 0;
}

static bool elem_valid(const char *elem)
{
    return elem != NULL && elem[0] != '\0' &&
           strnlen(elem, AP_ORSET_ELEM_SIZE) < AP_ORSET_ELEM_SIZE;
}

/* Binary search: index of elem, or -(insertion point) - 1. */
static int find_elem(const struct ap_orset *s, const char *elem)
{
    int lo = 0;
    int hi = (int)s->n_elems;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(s->elems[mid], elem);
        if (c == 0) {
            return mid;
        }
        if (c < 0) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return -lo - 1;
}

static int tag_cmp(const struct ap_orset_tag *a, const struct ap_orset_tag *b)
{
    int c = cmp_int(a->elem, b->elem);
    return c != 0 ? c : ap_hlc_compare(a->add, b->add);
}

static bool tag_live(const struct ap_orset_tag *t)
{
    return ts_is_zero(t->removed);
}

int ap_orset_add(struct ap_orset *s, const char *elem, struct ap_hlc_ts tag)
{
    if (!elem_valid(elem) || !write_stamp_valid(tag)) {
        return AP_EINVAL;
    }
    int e = find_elem(s, elem);
    if (e < 0) {
        if (s->n_elems >= AP_ORSET_MAX_ELEMS || s->n_tags >= AP_ORSET_MAX_TAGS) {
            return AP_ETOOBIG;
        }
        /* Insert the element and shift the indexes of the tags after it. */
        e = -e - 1;
        memmove(s->elems[e + 1], s->elems[e], (size_t)(s->n_elems - e) * AP_ORSET_ELEM_SIZE);
        ap_strlcpy(s->elems[e], elem, AP_ORSET_ELEM_SIZE);
        s->n_elems++;
        for (size_t i = 0; i < s->n_tags; i++) {
            if (s->tags[i].elem >= e) {
                s->tags[i].elem++;
            }
        }
    }
    struct ap_orset_tag t = {.add = tag, .removed = {0, 0, 0}, .elem = (uint8_t)e};
    size_t pos = 0;
    while (pos < s->n_tags && tag_cmp(&s->tags[pos], &t) < 0) {
        pos++;
    }
    if (pos < s->n_tags && tag_cmp(&s->tags[pos], &t) == 0) {
        return 0;
    }
    if (s->n_tags >= AP_ORSET_MAX_TAGS) {
        /* Only reachable for an existing element, so no element was inserted above. */
        return AP_ETOOBIG;
    }
    memmove(&s->tags[pos + 1], &s->tags[pos], (s->n_tags - pos) * sizeof s->tags[0]);
    s->tags[pos] = t;
    s->n_tags++;
    return 0;
}

int ap_orset_remove(struct ap_orset *s, const char *elem, struct ap_hlc_ts ts)
{
    if (!write_stamp_valid(ts)) {
        return AP_EINVAL;
    }
    if (!elem_valid(elem)) {
        return AP_ENOTFOUND;
    }
    int e = find_elem(s, elem);
    if (e < 0) {
        return AP_ENOTFOUND;
    }
    bool found = false;
    for (size_t i = 0; i < s->n_tags; i++) {
        /* docs/merge-rules.md: a remove tombstones only the tags it observed. */
        if (s->tags[i].elem == e && tag_live(&s->tags[i])) {
            s->tags[i].removed = ts;
            found = true;
        }
    }
    return found ? 0 : AP_ENOTFOUND;
}

static bool elem_present(const struct ap_orset *s, int e)
{
    for (size_t i = 0; i < s->n_tags; i++) {
        if (s->tags[i].elem == e && tag_live(&s->tags[i])) {
            return true;
        }
    }
    return false;
}

bool ap_orset_contains(const struct ap_orset *s, const char *elem)
{
    if (!elem_valid(elem)) {
        return false;
    }
    int e = find_elem(s, elem);
    return e >= 0 && elem_present(s, e);
}

size_t ap_orset_list(const struct ap_orset *s, const char **out, size_t max)
{
    size_t n = 0;
    for (int e = 0; e < (int)s->n_elems; e++) {
        if (elem_present(s, e)) {
            if (n < max) {
                out[n] = s->elems[e];
            }
            n++;
        }
    }
    return n;
}

/* Order of two tags of different sets, once their element indexes are mapped into the union. */
static int mapped_cmp(const struct ap_orset_tag *a, const uint8_t *map_a,
                      const struct ap_orset_tag *b, const uint8_t *map_b)
{
    int c = cmp_int(map_a[a->elem], map_b[b->elem]);
    return c != 0 ? c : ap_hlc_compare(a->add, b->add);
}

int ap_orset_merge(struct ap_orset *into, const struct ap_orset *other, bool *changed)
{
    if (changed != NULL) {
        *changed = false;
    }
    if (into == other) {
        return 0;
    }

    /*
     * First pass, read only: where each side's elements land in the sorted
     * union, how many tags the union has, and whether `into` grows. An
     * overflow is found here, before anything is written.
     */
    uint8_t map_a[AP_ORSET_MAX_ELEMS];
    uint8_t map_b[AP_ORSET_MAX_ELEMS];
    bool new_b[AP_ORSET_MAX_ELEMS];
    size_t na = into->n_elems;
    size_t nb = other->n_elems;
    size_t ia = 0;
    size_t ib = 0;
    size_t n = 0;
    while (ia < na || ib < nb) {
        int c = ia == na ? 1 : ib == nb ? -1 : strcmp(into->elems[ia], other->elems[ib]);
        if (n == AP_ORSET_MAX_ELEMS) {
            return AP_ETOOBIG;
        }
        if (c <= 0) {
            map_a[ia++] = (uint8_t)n;
        }
        if (c >= 0) {
            new_b[ib] = c > 0;
            map_b[ib++] = (uint8_t)n;
        }
        n++;
    }
    size_t ta = 0;
    size_t tb = 0;
    size_t nt = 0;
    bool grew = false;
    while (ta < into->n_tags || tb < other->n_tags) {
        int c = ta == into->n_tags    ? 1
                : tb == other->n_tags ? -1
                                      : mapped_cmp(&into->tags[ta], map_a, &other->tags[tb], map_b);
        if (nt == AP_ORSET_MAX_TAGS) {
            return AP_ETOOBIG;
        }
        if (c < 0) {
            ta++;
        } else if (c > 0) {
            tb++;
            grew = true;
        } else {
            /* The same add on both sides: tombstoned if either side removed it. */
            grew |= ap_hlc_compare(other->tags[tb].removed, into->tags[ta].removed) > 0;
            ta++;
            tb++;
        }
        nt++;
    }
    if (!grew) {
        return 0;
    }

    /*
     * Second pass, in place: an element or tag of `into` only moves towards
     * the end, so filling from the back never overwrites one not yet moved.
     */
    for (size_t i = na; i-- > 0;) {
        if (map_a[i] != i) {
            ap_strlcpy(into->elems[map_a[i]], into->elems[i], AP_ORSET_ELEM_SIZE);
        }
    }
    for (size_t j = 0; j < nb; j++) {
        if (new_b[j]) {
            ap_strlcpy(into->elems[map_b[j]], other->elems[j], AP_ORSET_ELEM_SIZE);
        }
    }
    size_t k = nt;
    ta = into->n_tags;
    tb = other->n_tags;
    while (k > 0) {
        int c = ta == 0   ? -1
                : tb == 0 ? 1
                          : mapped_cmp(&into->tags[ta - 1], map_a, &other->tags[tb - 1], map_b);
        struct ap_orset_tag t;
        if (c > 0) {
            t = into->tags[--ta];
            t.elem = map_a[t.elem];
        } else if (c < 0) {
            t = other->tags[--tb];
            t.elem = map_b[t.elem];
        } else {
            t = into->tags[--ta];
            t.elem = map_a[t.elem];
            t.removed = ts_max(t.removed, other->tags[--tb].removed);
        }
        into->tags[--k] = t;
    }
    into->n_elems = (uint16_t)n;
    into->n_tags = (uint16_t)nt;
    if (changed != NULL) {
        *changed = true;
    }
    return 0;
}

/* Keep the tags keep() accepts and the elements still referenced, in canonical form. */
static size_t filter_tags(const struct ap_orset *s, struct ap_orset *out,
                          bool (*keep)(const struct ap_orset_tag *t, struct ap_hlc_ts at),
                          struct ap_hlc_ts at)
{
    int map[AP_ORSET_MAX_ELEMS];
    size_t n_elems = 0;
    size_t n_tags = 0;
    size_t dropped = 0;
    for (size_t e = 0; e < s->n_elems; e++) {
        map[e] = -1;
    }
    /* Tags are sorted by element, so elements are met in order and out may alias s. */
    for (size_t i = 0; i < s->n_tags; i++) {
        struct ap_orset_tag t = s->tags[i];
        if (!keep(&t, at)) {
            dropped++;
            continue;
        }
        if (map[t.elem] < 0) {
            map[t.elem] = (int)n_elems;
            if (out != s || n_elems != t.elem) {
                ap_strlcpy(out->elems[n_elems], s->elems[t.elem], AP_ORSET_ELEM_SIZE);
            }
            n_elems++;
        }
        t.elem = (uint8_t)map[t.elem];
        out->tags[n_tags++] = t;
    }
    out->n_elems = (uint16_t)n_elems;
    out->n_tags = (uint16_t)n_tags;
    return dropped;
}

static bool keep_newer(const struct ap_orset_tag *t, struct ap_hlc_ts acked)
{
    return ap_hlc_compare(t->add, acked) > 0 || ap_hlc_compare(t->removed, acked) > 0;
}

void ap_orset_delta(const struct ap_orset *s, struct ap_hlc_ts acked, struct ap_orset *out)
{
    filter_tags(s, out, keep_newer, acked);
}

static bool keep_uncollected(const struct ap_orset_tag *t, struct ap_hlc_ts acked_by_both)
{
    return tag_live(t) || ap_hlc_compare(t->removed, acked_by_both) > 0;
}

size_t ap_orset_gc(struct ap_orset *s, struct ap_hlc_ts acked_by_both)
{
    /* docs/merge-rules.md, "Tombstone collection". */
    return filter_tags(s, s, keep_uncollected, acked_by_both);
}

bool ap_orset_equal(const struct ap_orset *a, const struct ap_orset *b)
{
    if (a->n_elems != b->n_elems || a->n_tags != b->n_tags) {
        return false;
    }
    for (size_t e = 0; e < a->n_elems; e++) {
        if (strcmp(a->elems[e], b->elems[e]) != 0) {
            return false;
        }
    }
    for (size_t i = 0; i < a->n_tags; i++) {
        if (tag_cmp(&a->tags[i], &b->tags[i]) != 0 ||
            !ts_equal(a->tags[i].removed, b->tags[i].removed)) {
            return false;
        }
    }
    return true;
}

size_t ap_orset_tombstones(const struct ap_orset *s)
{
    size_t n = 0;
    for (size_t i = 0; i < s->n_tags; i++) {
        n += !tag_live(&s->tags[i]);
    }
    return n;
}

int ap_orset_encode(const struct ap_orset *s, struct ap_mp_writer *w)
{
    ap_mp_write_map(w, 3);
    ap_mp_write_str(w, "v");
    ap_mp_write_uint(w, AP_ORSET_WIRE_VERSION);
    ap_mp_write_str(w, "e");
    ap_mp_write_array(w, s->n_elems);
    for (size_t e = 0; e < s->n_elems; e++) {
        ap_mp_write_str(w, s->elems[e]);
    }
    ap_mp_write_str(w, "t");
    ap_mp_write_array(w, s->n_tags);
    for (size_t i = 0; i < s->n_tags; i++) {
        const struct ap_orset_tag *t = &s->tags[i];
        ap_mp_write_array(w, 5);
        ap_mp_write_uint(w, t->elem);
        ap_mp_write_uint(w, ap_hlc_pack(t->add));
        ap_mp_write_uint(w, t->add.node);
        ap_mp_write_uint(w, ap_hlc_pack(t->removed));
        ap_mp_write_uint(w, t->removed.node);
    }
    return w->err;
}

/* Read [elem, add packed, add node, removed packed, removed node] into *t (elem index unchecked).
 */
static int decode_tag(const msgpack_object *o, size_t n_elems, struct ap_orset_tag *t, char *errmsg)
{
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != 5) {
        crdt_errmsg(errmsg, "field 't': each tag must be an array of 5");
        return AP_EPROTO;
    }
    const msgpack_object *f = o->via.array.ptr;
    uint64_t elem;
    uint64_t add;
    uint64_t add_node;
    uint64_t rm;
    uint64_t rm_node;
    int rc = ap_mp_as_u64(&f[0], "t.elem", &elem, n_elems > 0 ? n_elems - 1 : 0, errmsg);
    if (rc == 0) {
        rc = ap_mp_as_u64(&f[1], "t.add", &add, UINT64_MAX, errmsg);
    }
    if (rc == 0) {
        rc = ap_mp_as_u64(&f[2], "t.add_node", &add_node, UINT32_MAX, errmsg);
    }
    if (rc == 0) {
        rc = ap_mp_as_u64(&f[3], "t.removed", &rm, UINT64_MAX, errmsg);
    }
    if (rc == 0) {
        rc = ap_mp_as_u64(&f[4], "t.removed_node", &rm_node, UINT32_MAX, errmsg);
    }
    if (rc != 0) {
        return rc;
    }
    if (n_elems == 0) {
        crdt_errmsg(errmsg, "field 't': tag without element");
        return AP_EPROTO;
    }
    t->elem = (uint8_t)elem;
    t->add = ap_hlc_unpack(add, (uint32_t)add_node);
    t->removed = ap_hlc_unpack(rm, (uint32_t)rm_node);
    if (ts_is_zero(t->add)) {
        crdt_errmsg(errmsg, "field 't': zero add tag");
        return AP_EPROTO;
    }
    return 0;
}

int ap_orset_decode(const msgpack_object *o, struct ap_orset *out, char *errmsg)
{
    const msgpack_object *elems = NULL;
    const msgpack_object *tags = NULL;
    uint64_t version = 0;
    int rc = ap_mp_as_map(o, "orset", 8, errmsg);
    if (rc == 0) {
        rc = ap_mp_get_u64(o, "v", &version, UINT32_MAX, true, errmsg);
    }
    if (rc == 0 && version != AP_ORSET_WIRE_VERSION) {
        crdt_errmsg(errmsg, "orset: unsupported version %llu", (unsigned long long)version);
        return AP_EPROTO;
    }
    if (rc == 0) {
        rc = ap_mp_get_array(o, "e", &elems, AP_ORSET_MAX_ELEMS, true, errmsg);
    }
    if (rc == 0) {
        rc = ap_mp_get_array(o, "t", &tags, AP_ORSET_MAX_TAGS, true, errmsg);
    }
    if (rc != 0) {
        return rc;
    }

    /* Elements as sent, then their sorted positions, since the wire order is not trusted. */
    char sent[AP_ORSET_MAX_ELEMS][AP_ORSET_ELEM_SIZE];
    size_t n_elems = elems->via.array.size;
    ap_orset_init(out);
    for (size_t i = 0; i < n_elems; i++) {
        rc = ap_mp_as_str(&elems->via.array.ptr[i], "e", sent[i], AP_ORSET_ELEM_SIZE, errmsg);
        if (rc != 0) {
            return rc;
        }
        if (sent[i][0] == '\0') {
            crdt_errmsg(errmsg, "field 'e': empty element");
            return AP_EPROTO;
        }
        int pos = find_elem(out, sent[i]);
        if (pos >= 0) {
            crdt_errmsg(errmsg, "field 'e': duplicate element");
            return AP_EPROTO;
        }
        pos = -pos - 1;
        memmove(out->elems[pos + 1], out->elems[pos],
                (size_t)(out->n_elems - pos) * AP_ORSET_ELEM_SIZE);
        memcpy(out->elems[pos], sent[i], AP_ORSET_ELEM_SIZE);
        out->n_elems++;
    }
    bool used[AP_ORSET_MAX_ELEMS] = {false};
    for (size_t i = 0; i < tags->via.array.size; i++) {
        struct ap_orset_tag t;
        rc = decode_tag(&tags->via.array.ptr[i], n_elems, &t, errmsg);
        if (rc != 0) {
            return rc;
        }
        t.elem = (uint8_t)find_elem(out, sent[t.elem]);
        used[t.elem] = true;
        size_t pos = 0;
        while (pos < out->n_tags && tag_cmp(&out->tags[pos], &t) < 0) {
            pos++;
        }
        if (pos < out->n_tags && tag_cmp(&out->tags[pos], &t) == 0) {
            crdt_errmsg(errmsg, "field 't': duplicate tag");
            return AP_EPROTO;
        }
        memmove(&out->tags[pos + 1], &out->tags[pos], (out->n_tags - pos) * sizeof t);
        out->tags[pos] = t;
        out->n_tags++;
    }
    for (size_t e = 0; e < out->n_elems; e++) {
        if (!used[e]) {
            crdt_errmsg(errmsg, "field 'e': element without tag");
            return AP_EPROTO;
        }
    }
    return 0;
}
