/* instrec: an instance record as every tier stores and exchanges it: identity, spec, desired and
 * actual state. */
#include "ap/instrec.h"

#include "ap/base.h"
#include "ap/err.h"

#include <sodium.h>
#include <string.h>

const char *ap_desired_name(enum ap_desired d)
{
    return ap_desired_str(d);
}

const char *ap_actual_name(enum ap_actual a)
{
    return ap_actual_str(a);
}

void ap_instrec_clear(struct ap_instrec *r)
{
    ap_free(r->spec);
    r->spec = NULL;
}

int ap_instrec_copy(struct ap_instrec *dst, const struct ap_instrec *src)
{
    *dst = *src;
    dst->spec = NULL;
    if (src->spec != NULL) {
        dst->spec = ap_strdup(src->spec);
        if (dst->spec == NULL) {
            return AP_ENOMEM;
        }
    }
    return 0;
}

static bool ts_equal(struct ap_hlc_ts a, struct ap_hlc_ts b)
{
    return ap_hlc_compare(a, b) == 0;
}

/* The spec's sha256 in hex: what the merge compares identities by. */
static void spec_digest(const char *spec, char out[AP_INST_DIGEST_SIZE])
{
    unsigned char h[crypto_hash_sha256_BYTES];
    const char *text = spec != NULL ? spec : "";
    crypto_hash_sha256(h, (const unsigned char *)text, strlen(text));
    sodium_bin2hex(out, AP_INST_DIGEST_SIZE, h, sizeof h);
}

static void to_state(const struct ap_instrec *r, struct ap_inst_state *s)
{
    memset(s, 0, sizeof *s);
    spec_digest(r->spec, s->spec_digest);
    s->spec_ts = r->created;
    s->desired = r->desired;
    s->desired_ts = r->desired_ts;
    s->actual = r->actual;
    s->pid = (int32_t)r->pid;
    s->exit_code = (int32_t)r->exit_code;
    s->restarts = (uint32_t)r->restarts;
    s->actual_ts = r->actual_ts;
}

bool ap_instrec_merge(struct ap_instrec *into, const struct ap_instrec *other)
{
    struct ap_inst_state a, b;
    to_state(into, &a);
    to_state(other, &b);
    char before[AP_INST_DIGEST_SIZE];
    memcpy(before, a.spec_digest, sizeof before);
    /* docs/merge-rules.md: the rules live in one place, ap_inst_merge. */
    if (!ap_inst_merge(&a, &b)) {
        return false;
    }
    if (strcmp(a.spec_digest, before) != 0 || !ts_equal(a.spec_ts, into->created)) {
        /* The other side's identity won: take its spec and names too. */
        char *spec = other->spec != NULL ? ap_strdup(other->spec) : NULL;
        if (other->spec == NULL || spec != NULL) {
            ap_free(into->spec);
            into->spec = spec;
            memcpy(into->tenant, other->tenant, sizeof into->tenant);
            memcpy(into->name, other->name, sizeof into->name);
            memcpy(into->site, other->site, sizeof into->site);
            into->cpu_millis = other->cpu_millis;
            into->memory_mb = other->memory_mb;
            into->created = other->created;
        }
    }
    into->desired = a.desired;
    into->desired_ts = a.desired_ts;
    into->actual = a.actual;
    into->actual_ts = a.actual_ts;
    into->pid = a.pid;
    into->exit_code = a.exit_code;
    into->restarts = a.restarts;
    return true;
}

bool ap_instrec_equal(const struct ap_instrec *a, const struct ap_instrec *b)
{
    return strcmp(a->id, b->id) == 0 && ts_equal(a->created, b->created) &&
           a->desired == b->desired && ts_equal(a->desired_ts, b->desired_ts) &&
           a->actual == b->actual && ts_equal(a->actual_ts, b->actual_ts) && a->pid == b->pid &&
           a->exit_code == b->exit_code && a->restarts == b->restarts;
}

bool ap_instrec_set_desired(struct ap_instrec *r, enum ap_desired d, struct ap_hlc_ts ts)
{
    if (r->desired == AP_DESIRED_DELETED) {
        return false;
    }
    r->desired = d;
    r->desired_ts = ts;
    return true;
}

static void write_ts(struct ap_mp_writer *w, const char *k_ts, const char *k_node,
                     struct ap_hlc_ts ts)
{
    ap_mp_write_str(w, k_ts);
    ap_mp_write_uint(w, ap_hlc_pack(ts));
    ap_mp_write_str(w, k_node);
    ap_mp_write_uint(w, ts.node);
}

void ap_instrec_write(struct ap_mp_writer *w, const struct ap_instrec *r)
{
    ap_mp_write_map(w, 18);
    ap_mp_write_str(w, "id");
    ap_mp_write_str(w, r->id);
    ap_mp_write_str(w, "tenant");
    ap_mp_write_str(w, r->tenant);
    ap_mp_write_str(w, "name");
    ap_mp_write_str(w, r->name);
    ap_mp_write_str(w, "site");
    ap_mp_write_str(w, r->site);
    ap_mp_write_str(w, "spec");
    ap_mp_write_str(w, r->spec != NULL ? r->spec : "{}");
    ap_mp_write_str(w, "cpu");
    ap_mp_write_int(w, r->cpu_millis);
    ap_mp_write_str(w, "mem");
    ap_mp_write_int(w, r->memory_mb);
    write_ts(w, "ct", "cn", r->created);
    ap_mp_write_str(w, "d");
    ap_mp_write_str(w, ap_desired_name(r->desired));
    write_ts(w, "dt", "dn", r->desired_ts);
    ap_mp_write_str(w, "a");
    ap_mp_write_str(w, ap_actual_name(r->actual));
    write_ts(w, "at", "an", r->actual_ts);
    ap_mp_write_str(w, "pid");
    ap_mp_write_int(w, r->pid);
    ap_mp_write_str(w, "exit");
    ap_mp_write_int(w, r->exit_code);
    ap_mp_write_str(w, "rs");
    ap_mp_write_int(w, r->restarts);
}

static int read_ts(const msgpack_object *o, const char *k_ts, const char *k_node,
                   struct ap_hlc_ts *out, char *errmsg)
{
    uint64_t packed = 0, node = 0;
    int rv = ap_mp_get_u64(o, k_ts, &packed, UINT64_MAX, true, errmsg);
    if (rv == 0) {
        rv = ap_mp_get_u64(o, k_node, &node, UINT32_MAX, true, errmsg);
    }
    if (rv == 0) {
        *out = ap_hlc_unpack(packed, (uint32_t)node);
    }
    return rv;
}

int ap_instrec_read(const msgpack_object *o, struct ap_instrec *r, char *errmsg)
{
    char desired[16], actual[16];
    const msgpack_object *spec;
    int rv;
    memset(r, 0, sizeof *r);
    if ((rv = ap_mp_get_str(o, "id", r->id, sizeof r->id, true, errmsg)) != 0 ||
        (rv = ap_mp_get_str(o, "tenant", r->tenant, sizeof r->tenant, true, errmsg)) != 0 ||
        (rv = ap_mp_get_str(o, "name", r->name, sizeof r->name, true, errmsg)) != 0 ||
        (rv = ap_mp_get_str(o, "site", r->site, sizeof r->site, true, errmsg)) != 0 ||
        (rv = ap_mp_get_i64(o, "cpu", &r->cpu_millis, 0, INT64_C(1) << 40, true, errmsg)) != 0 ||
        (rv = ap_mp_get_i64(o, "mem", &r->memory_mb, 0, INT64_C(1) << 40, true, errmsg)) != 0 ||
        (rv = read_ts(o, "ct", "cn", &r->created, errmsg)) != 0 ||
        (rv = ap_mp_get_str(o, "d", desired, sizeof desired, true, errmsg)) != 0 ||
        (rv = read_ts(o, "dt", "dn", &r->desired_ts, errmsg)) != 0 ||
        (rv = ap_mp_get_str(o, "a", actual, sizeof actual, true, errmsg)) != 0 ||
        (rv = read_ts(o, "at", "an", &r->actual_ts, errmsg)) != 0 ||
        (rv = ap_mp_get_i64(o, "pid", &r->pid, 0, INT32_MAX, true, errmsg)) != 0 ||
        (rv = ap_mp_get_i64(o, "exit", &r->exit_code, INT32_MIN, INT32_MAX, true, errmsg)) != 0 ||
        (rv = ap_mp_get_i64(o, "rs", &r->restarts, 0, INT64_MAX, true, errmsg)) != 0) {
        return rv;
    }
    if (ap_desired_parse(desired, &r->desired) != 0 || ap_actual_parse(actual, &r->actual) != 0) {
        if (errmsg != NULL) {
            ap_errmsg_set(errmsg, "field '%s': unknown state",
                          ap_desired_parse(desired, &r->desired) != 0 ? "d" : "a");
        }
        return AP_EPROTO;
    }
    spec = ap_mp_find(o, "spec");
    if (spec == NULL || spec->type != MSGPACK_OBJECT_STR ||
        spec->via.str.size > AP_INSTREC_MAX_SPEC) {
        if (errmsg != NULL) {
            ap_errmsg_set(errmsg, "field 'spec': expected a string of at most %u bytes",
                          AP_INSTREC_MAX_SPEC);
        }
        return AP_EPROTO;
    }
    r->spec = ap_malloc(spec->via.str.size + 1);
    if (r->spec == NULL) {
        return AP_ENOMEM;
    }
    memcpy(r->spec, spec->via.str.ptr, spec->via.str.size);
    r->spec[spec->via.str.size] = '\0';
    if (memchr(spec->via.str.ptr, '\0', spec->via.str.size) != NULL) {
        ap_instrec_clear(r);
        if (errmsg != NULL) {
            ap_errmsg_set(errmsg, "field 'spec': contains a NUL byte");
        }
        return AP_EPROTO;
    }
    return 0;
}
