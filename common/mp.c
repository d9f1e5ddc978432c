/* mp: bounded msgpack helpers: a writer, a hostile-input-safe unpack, and typed field getters. */
#include "ap/mp.h"

#include "ap/base.h"
#include "ap/err.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static void mp_errmsg(char *errmsg, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void mp_errmsg(char *errmsg, const char *fmt, ...)
{
    if (errmsg == NULL) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errmsg, AP_ERRMSG_SIZE, fmt, ap);
    va_end(ap);
}

/* ---- writer ---------------------------------------------------------------------------- */

/* First buffer of a writer. msgpack_sbuffer_write starts at 8 KiB: a malloc that size makes
 * glibc consolidate its fast bins, which was 7% of a loaded regional leader's CPU when every
 * site create encoded a command of a few hundred bytes. */
#define WRITER_FIRST_ALLOC 256

/* Like msgpack_sbuffer_write (same buffer, same free()), growing from WRITER_FIRST_ALLOC. */
static int writer_append(void *data, const char *buf, size_t len)
{
    msgpack_sbuffer *sb = data;
    if (sb->alloc - sb->size < len) {
        size_t need = sb->size + len;
        if (need < sb->size) {
            return -1;
        }
        size_t n = sb->alloc != 0 ? sb->alloc : WRITER_FIRST_ALLOC;
        while (n < need) {
            if (n > SIZE_MAX / 2) {
                n = need;
                break;
            }
            n *= 2;
        }
        char *grown = ap_realloc(sb->data, n);
        if (grown == NULL) {
            return -1;
        }
        sb->data = grown;
        sb->alloc = n;
    }
    memcpy(sb->data + sb->size, buf, len);
    sb->size += len;
    return 0;
}

void ap_mp_writer_init(struct ap_mp_writer *w)
{
    msgpack_sbuffer_init(&w->sbuf);
    msgpack_packer_init(&w->pk, &w->sbuf, writer_append);
    w->err = 0;
}

void ap_mp_writer_destroy(struct ap_mp_writer *w)
{
    msgpack_sbuffer_destroy(&w->sbuf);
    msgpack_sbuffer_init(&w->sbuf);
}

int ap_mp_writer_finish(struct ap_mp_writer *w, uint8_t **out, size_t *len)
{
    int err = w->err;
    if (err != 0) {
        ap_mp_writer_destroy(w);
        w->err = 0;
        return err;
    }
    *len = w->sbuf.size;
    *out = (uint8_t *)msgpack_sbuffer_release(&w->sbuf);
    if (*len == 0) {
        ap_free(*out);
        *out = NULL;
    }
    return 0;
}

/* msgpack-c's packers return -1 only when the sbuffer cannot grow. */
static int writer_rc(struct ap_mp_writer *w, int rc)
{
    if (rc != 0 && w->err == 0) {
        w->err = AP_ENOMEM;
    }
    return w->err;
}

int ap_mp_write_str(struct ap_mp_writer *w, const char *s)
{
    return ap_mp_write_strn(w, s, strlen(s));
}

int ap_mp_write_strn(struct ap_mp_writer *w, const char *s, size_t len)
{
    if (w->err != 0) {
        return w->err;
    }
    if (len > UINT32_MAX) {
        w->err = AP_ETOOBIG;
        return w->err;
    }
    int rc = msgpack_pack_str(&w->pk, len);
    if (rc == 0 && len > 0) {
        rc = msgpack_pack_str_body(&w->pk, s, len);
    }
    return writer_rc(w, rc);
}

int ap_mp_write_uint(struct ap_mp_writer *w, uint64_t v)
{
    if (w->err != 0) {
        return w->err;
    }
    return writer_rc(w, msgpack_pack_uint64(&w->pk, v));
}

int ap_mp_write_int(struct ap_mp_writer *w, int64_t v)
{
    if (w->err != 0) {
        return w->err;
    }
    return writer_rc(w, msgpack_pack_int64(&w->pk, v));
}

int ap_mp_write_bool(struct ap_mp_writer *w, bool v)
{
    if (w->err != 0) {
        return w->err;
    }
    return writer_rc(w, v ? msgpack_pack_true(&w->pk) : msgpack_pack_false(&w->pk));
}

int ap_mp_write_double(struct ap_mp_writer *w, double v)
{
    if (w->err != 0) {
        return w->err;
    }
    return writer_rc(w, msgpack_pack_double(&w->pk, v));
}

int ap_mp_write_nil(struct ap_mp_writer *w)
{
    if (w->err != 0) {
        return w->err;
    }
    return writer_rc(w, msgpack_pack_nil(&w->pk));
}

int ap_mp_write_bin(struct ap_mp_writer *w, const void *p, size_t len)
{
    if (w->err != 0) {
        return w->err;
    }
    if (len > UINT32_MAX) {
        w->err = AP_ETOOBIG;
        return w->err;
    }
    int rc = msgpack_pack_bin(&w->pk, len);
    if (rc == 0 && len > 0) {
        rc = msgpack_pack_bin_body(&w->pk, p, len);
    }
    return writer_rc(w, rc);
}

int ap_mp_write_map(struct ap_mp_writer *w, uint32_t n)
{
    if (w->err != 0) {
        return w->err;
    }
    return writer_rc(w, msgpack_pack_map(&w->pk, n));
}

int ap_mp_write_array(struct ap_mp_writer *w, uint32_t n)
{
    if (w->err != 0) {
        return w->err;
    }
    return writer_rc(w, msgpack_pack_array(&w->pk, n));
}

int ap_mp_write_raw(struct ap_mp_writer *w, const void *p, size_t len)
{
    if (w->err != 0) {
        return w->err;
    }
    if (len == 0) {
        return 0;
    }
    return writer_rc(w, writer_append(&w->sbuf, p, len));
}

/* ---- bounded unpack -------------------------------------------------------------------- */

/*
 * What one msgpack header says: how many bytes the header itself takes, how
 * many payload bytes follow it (str, bin, ext), and how many child values
 * follow it (array elements, or twice the pairs of a map).
 */
struct mp_head {
    size_t head;
    uint64_t payload;
    uint64_t children;
    const char *what;
};

static uint64_t read_be(const uint8_t *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        v = (v << 8) | p[i];
    }
    return v;
}

/*
 * Parse the header at buf[off]; avail = len - off > 0. Returns 0, or
 * AP_EPROTO for an invalid type byte or a header cut short.
 */
static int parse_head(const uint8_t *p, size_t avail, struct mp_head *h, char *errmsg, size_t off)
{
    uint8_t b = p[0];
    size_t lenbytes = 0; /* size of a length field that follows the type byte */
    h->head = 1;
    h->payload = 0;
    h->children = 0;
    h->what = "value";

    if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
        return 0;
    }
    if (b >= 0x80 && b <= 0x8f) {
        h->what = "map";
        h->children = 2u * (b & 0x0fu);
        return 0;
    }
    if (b >= 0x90 && b <= 0x9f) {
        h->what = "array";
        h->children = b & 0x0fu;
        return 0;
    }
    if (b >= 0xa0 && b <= 0xbf) {
        h->what = "str";
        h->payload = b & 0x1fu;
        return 0;
    }
    switch (b) {
    case 0xc4: /* bin 8/16/32 */
    case 0xc5:
    case 0xc6:
        h->what = "bin";
        lenbytes = (size_t)1 << (b - 0xc4);
        break;
    case 0xc7: /* ext 8/16/32: length, then a type byte counted in the header */
    case 0xc8:
    case 0xc9:
        h->what = "ext";
        lenbytes = (size_t)1 << (b - 0xc7);
        h->head = 2;
        break;
    case 0xca:
        h->payload = 4;
        return 0;
    case 0xcb:
        h->payload = 8;
        return 0;
    case 0xcc: /* uint 8/16/32/64 */
    case 0xcd:
    case 0xce:
    case 0xcf:
        h->payload = (uint64_t)1 << (b - 0xcc);
        return 0;
    case 0xd0: /* int 8/16/32/64 */
    case 0xd1:
    case 0xd2:
    case 0xd3:
        h->payload = (uint64_t)1 << (b - 0xd0);
        return 0;
    case 0xd4: /* fixext 1/2/4/8/16: a type byte, then the data */
    case 0xd5:
    case 0xd6:
    case 0xd7:
    case 0xd8:
        h->what = "ext";
        h->head = 2;
        h->payload = (uint64_t)1 << (b - 0xd4);
        break;
    case 0xd9: /* str 8/16/32 */
    case 0xda:
    case 0xdb:
        h->what = "str";
        lenbytes = (size_t)1 << (b - 0xd9);
        break;
    case 0xdc:
    case 0xdd:
        h->what = "array";
        lenbytes = b == 0xdc ? 2 : 4;
        break;
    case 0xde:
    case 0xdf:
        h->what = "map";
        lenbytes = b == 0xde ? 2 : 4;
        break;
    default: /* 0xc1 is never used */
        mp_errmsg(errmsg, "msgpack: invalid type byte 0x%02x at offset %zu", b, off);
        return AP_EPROTO;
    }
    h->head += lenbytes;
    if (h->head > avail) {
        mp_errmsg(errmsg, "msgpack: truncated %s header at offset %zu", h->what, off);
        return AP_EPROTO;
    }
    if (lenbytes > 0) {
        uint64_t n = read_be(p + 1, lenbytes);
        if (b == 0xdc || b == 0xdd) {
            h->children = n;
        } else if (b == 0xde || b == 0xdf) {
            h->children = 2 * n;
        } else {
            h->payload = n;
        }
    }
    return 0;
}

/*
 * Walk one value without allocating: the stack holds, per open container,
 * how many child values are still to come.
 */
static int mp_check(const uint8_t *buf, size_t len, char *errmsg)
{
    uint64_t pending[AP_MP_MAX_DEPTH + 1];
    size_t depth = 0;
    size_t off = 0;
    size_t objects = 0;
    pending[0] = 1;

    for (;;) {
        if (pending[depth] == 0) {
            if (depth == 0) {
                break;
            }
            depth--;
            continue;
        }
        if (off >= len) {
            mp_errmsg(errmsg, "msgpack: truncated at offset %zu", off);
            return AP_EPROTO;
        }
        struct mp_head h;
        int rc = parse_head(buf + off, len - off, &h, errmsg, off);
        if (rc != 0) {
            return rc;
        }
        if (++objects > AP_MP_MAX_OBJECTS) {
            mp_errmsg(errmsg, "msgpack: more than %u objects", AP_MP_MAX_OBJECTS);
            return AP_ETOOBIG;
        }
        size_t left = len - off - h.head;
        if (h.payload > left) {
            mp_errmsg(errmsg, "msgpack: %s at offset %zu claims %" PRIu64 " bytes, %zu left",
                      h.what, off, h.payload, left);
            return AP_EPROTO;
        }
        pending[depth]--;
        off += h.head + (size_t)h.payload;
        if (h.children > 0) {
            /* Every child takes at least one byte: a bigger claim is a lie. */
            if (h.children > left) {
                mp_errmsg(errmsg,
                          "msgpack: %s at offset %zu claims %" PRIu64 " values, %zu bytes left",
                          h.what, off - h.head, h.children, left);
                return AP_EPROTO;
            }
            if (depth + 1 > AP_MP_MAX_DEPTH) {
                mp_errmsg(errmsg, "msgpack: nested deeper than %d at offset %zu", AP_MP_MAX_DEPTH,
                          off - h.head);
                return AP_EPROTO;
            }
            pending[++depth] = h.children;
        }
    }
    if (off != len) {
        mp_errmsg(errmsg, "msgpack: %zu trailing bytes after the value", len - off);
        return AP_EPROTO;
    }
    return 0;
}

int ap_mp_unpack(const uint8_t *buf, size_t len, size_t max_len, msgpack_unpacked *out,
                 char *errmsg)
{
    msgpack_unpacked_init(out);
    if (len > max_len) {
        mp_errmsg(errmsg, "msgpack: %zu bytes, more than the limit of %zu", len, max_len);
        return AP_ETOOBIG;
    }
    if (len == 0) {
        mp_errmsg(errmsg, "msgpack: empty input");
        return AP_EPROTO;
    }
    int rc = mp_check(buf, len, errmsg);
    if (rc != 0) {
        return rc;
    }
    size_t off = 0;
    msgpack_unpack_return ur = msgpack_unpack_next(out, (const char *)buf, len, &off);
    if (ur != MSGPACK_UNPACK_SUCCESS || off != len) {
        msgpack_unpacked_destroy(out);
        msgpack_unpacked_init(out);
        if (ur == MSGPACK_UNPACK_NOMEM_ERROR) {
            mp_errmsg(errmsg, "msgpack: out of memory");
            return AP_ENOMEM;
        }
        /* mp_check accepted it, so msgpack-c disagreeing is worth a clear message. */
        mp_errmsg(errmsg, "msgpack: unpack failed (%d) at offset %zu", (int)ur, off);
        return AP_EPROTO;
    }
    return 0;
}

/* ---- reading fields -------------------------------------------------------------------- */

const msgpack_object *ap_mp_find(const msgpack_object *map, const char *key)
{
    if (map == NULL || map->type != MSGPACK_OBJECT_MAP) {
        return NULL;
    }
    size_t klen = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == klen &&
            (klen == 0 || memcmp(k->via.str.ptr, key, klen) == 0)) {
            return &map->via.map.ptr[i].val;
        }
    }
    return NULL;
}

/*
 * Shared front of the getters: find the field, and say whether the caller
 * should go on (1), stop with success because an optional field is absent
 * (0), or fail (negative).
 */
static int lookup(const msgpack_object *map, const char *key, bool required,
                  const msgpack_object **o, char *errmsg)
{
    if (map == NULL || map->type != MSGPACK_OBJECT_MAP) {
        mp_errmsg(errmsg, "expected a map holding field '%s'", key);
        return AP_EPROTO;
    }
    *o = ap_mp_find(map, key);
    if (*o == NULL || (!required && (*o)->type == MSGPACK_OBJECT_NIL)) {
        if (required) {
            mp_errmsg(errmsg, "missing field '%s'", key);
            return AP_EPROTO;
        }
        return 0;
    }
    return 1;
}

static int missing(const char *name, char *errmsg)
{
    mp_errmsg(errmsg, "missing field '%s'", name);
    return AP_EPROTO;
}

static int expected(const char *name, const char *what, char *errmsg)
{
    mp_errmsg(errmsg, "field '%s': expected %s", name, what);
    return AP_EPROTO;
}

int ap_mp_as_str(const msgpack_object *o, const char *name, char *out, size_t out_size,
                 char *errmsg)
{
    if (o == NULL) {
        return missing(name, errmsg);
    }
    if (o->type != MSGPACK_OBJECT_STR) {
        return expected(name, "string", errmsg);
    }
    size_t n = o->via.str.size;
    if (out_size == 0 || n >= out_size) {
        mp_errmsg(errmsg, "field '%s': longer than %zu bytes", name,
                  out_size > 0 ? out_size - 1 : 0);
        return AP_EPROTO;
    }
    if (n > 0 && memchr(o->via.str.ptr, '\0', n) != NULL) {
        mp_errmsg(errmsg, "field '%s': contains a NUL byte", name);
        return AP_EPROTO;
    }
    if (n > 0) {
        memcpy(out, o->via.str.ptr, n);
    }
    out[n] = '\0';
    return 0;
}

int ap_mp_as_u64(const msgpack_object *o, const char *name, uint64_t *out, uint64_t max,
                 char *errmsg)
{
    if (o == NULL) {
        return missing(name, errmsg);
    }
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
        return expected(name, "unsigned integer", errmsg);
    }
    if (o->via.u64 > max) {
        mp_errmsg(errmsg, "field '%s': above %" PRIu64, name, max);
        return AP_EPROTO;
    }
    *out = o->via.u64;
    return 0;
}

int ap_mp_as_i64(const msgpack_object *o, const char *name, int64_t *out, int64_t min, int64_t max,
                 char *errmsg)
{
    if (o == NULL) {
        return missing(name, errmsg);
    }
    int64_t v;
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        if (max < 0 || o->via.u64 > (uint64_t)max) {
            mp_errmsg(errmsg, "field '%s': outside [%" PRId64 ", %" PRId64 "]", name, min, max);
            return AP_EPROTO;
        }
        v = (int64_t)o->via.u64;
    } else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        v = o->via.i64;
    } else {
        return expected(name, "integer", errmsg);
    }
    if (v < min || v > max) {
        mp_errmsg(errmsg, "field '%s': outside [%" PRId64 ", %" PRId64 "]", name, min, max);
        return AP_EPROTO;
    }
    *out = v;
    return 0;
}

int ap_mp_as_bool(const msgpack_object *o, const char *name, bool *out, char *errmsg)
{
    if (o == NULL) {
        return missing(name, errmsg);
    }
    if (o->type != MSGPACK_OBJECT_BOOLEAN) {
        return expected(name, "boolean", errmsg);
    }
    *out = o->via.boolean;
    return 0;
}

int ap_mp_as_double(const msgpack_object *o, const char *name, double *out, char *errmsg)
{
    if (o == NULL) {
        return missing(name, errmsg);
    }
    switch (o->type) {
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        *out = o->via.f64;
        return 0;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        *out = (double)o->via.u64;
        return 0;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        *out = (double)o->via.i64;
        return 0;
    default:
        return expected(name, "number", errmsg);
    }
}

int ap_mp_as_bin(const msgpack_object *o, const char *name, const uint8_t **out, size_t *out_len,
                 size_t max_len, char *errmsg)
{
    if (o == NULL) {
        return missing(name, errmsg);
    }
    if (o->type != MSGPACK_OBJECT_BIN) {
        return expected(name, "binary", errmsg);
    }
    if (o->via.bin.size > max_len) {
        mp_errmsg(errmsg, "field '%s': longer than %zu bytes", name, max_len);
        return AP_EPROTO;
    }
    *out = o->via.bin.size > 0 ? (const uint8_t *)o->via.bin.ptr : NULL;
    *out_len = o->via.bin.size;
    return 0;
}

int ap_mp_as_map(const msgpack_object *o, const char *name, size_t max_entries, char *errmsg)
{
    if (o == NULL) {
        return missing(name, errmsg);
    }
    if (o->type != MSGPACK_OBJECT_MAP) {
        return expected(name, "map", errmsg);
    }
    if (o->via.map.size > max_entries) {
        mp_errmsg(errmsg, "field '%s': more than %zu entries", name, max_entries);
        return AP_EPROTO;
    }
    return 0;
}

int ap_mp_as_array(const msgpack_object *o, const char *name, size_t max_elems, char *errmsg)
{
    if (o == NULL) {
        return missing(name, errmsg);
    }
    if (o->type != MSGPACK_OBJECT_ARRAY) {
        return expected(name, "array", errmsg);
    }
    if (o->via.array.size > max_elems) {
        mp_errmsg(errmsg, "field '%s': more than %zu elements", name, max_elems);
        return AP_EPROTO;
    }
    return 0;
}

int ap_mp_get_str(const msgpack_object *map, const char *key, char *out, size_t out_size,
                  bool required, char *errmsg)
{
    const msgpack_object *o = NULL;
    int rc = lookup(map, key, required, &o, errmsg);
    return rc <= 0 ? rc : ap_mp_as_str(o, key, out, out_size, errmsg);
}

int ap_mp_get_u64(const msgpack_object *map, const char *key, uint64_t *out, uint64_t max,
                  bool required, char *errmsg)
{
    const msgpack_object *o = NULL;
    int rc = lookup(map, key, required, &o, errmsg);
    return rc <= 0 ? rc : ap_mp_as_u64(o, key, out, max, errmsg);
}

int ap_mp_get_i64(const msgpack_object *map, const char *key, int64_t *out, int64_t min,
                  int64_t max, bool required, char *errmsg)
{
    const msgpack_object *o = NULL;
    int rc = lookup(map, key, required, &o, errmsg);
    return rc <= 0 ? rc : ap_mp_as_i64(o, key, out, min, max, errmsg);
}

int ap_mp_get_bool(const msgpack_object *map, const char *key, bool *out, bool required,
                   char *errmsg)
{
    const msgpack_object *o = NULL;
    int rc = lookup(map, key, required, &o, errmsg);
    return rc <= 0 ? rc : ap_mp_as_bool(o, key, out, errmsg);
}

int ap_mp_get_double(const msgpack_object *map, const char *key, double *out, bool required,
                     char *errmsg)
{
    const msgpack_object *o = NULL;
    int rc = lookup(map, key, required, &o, errmsg);
    return rc <= 0 ? rc : ap_mp_as_double(o, key, out, errmsg);
}

int ap_mp_get_bin(const msgpack_object *map, const char *key, const uint8_t **out, size_t *out_len,
                  size_t max_len, bool required, char *errmsg)
{
    const msgpack_object *o = NULL;
    int rc = lookup(map, key, required, &o, errmsg);
    return rc <= 0 ? rc : ap_mp_as_bin(o, key, out, out_len, max_len, errmsg);
}

int ap_mp_get_map(const msgpack_object *map, const char *key, const msgpack_object **out,
                  size_t max_entries, bool required, char *errmsg)
{
    const msgpack_object *o = NULL;
    int rc = lookup(map, key, required, &o, errmsg);
    if (rc <= 0) {
        return rc;
    }
    rc = ap_mp_as_map(o, key, max_entries, errmsg);
    if (rc == 0) {
        *out = o;
    }
    return rc;
}

int ap_mp_get_array(const msgpack_object *map, const char *key, const msgpack_object **out,
                    size_t max_elems, bool required, char *errmsg)
{
    const msgpack_object *o = NULL;
    int rc = lookup(map, key, required, &o, errmsg);
    if (rc <= 0) {
        return rc;
    }
    rc = ap_mp_as_array(o, key, max_elems, errmsg);
    if (rc == 0) {
        *out = o;
    }
    return rc;
}
