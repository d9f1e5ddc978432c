/* mp: bounded msgpack helpers: a writer, a hostile-input-safe unpack, and typed field getters. */
#ifndef AP_MP_H
#define AP_MP_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/**
 * Deepest container nesting ap_mp_unpack() accepts (a top-level map is depth
 * 1). msgpack-c itself stops at 32 with a misleading "out of memory" error;
 * no message of ours nests anywhere near 16.
 */
#define AP_MP_MAX_DEPTH 16

/**
 * Most objects (scalars, containers and each key and value) one ap_mp_unpack()
 * accepts. msgpack-c allocates 24 bytes per object up front, so this bounds
 * what one input can make it allocate to 24 MiB whatever the input claims.
 */
#define AP_MP_MAX_OBJECTS (1u << 20)

/**
 * A growing output buffer plus a packer. A caller embeds it (usually on the
 * stack): ap_mp_writer_init(), any number of ap_mp_write_*(), then
 * ap_mp_writer_finish() or ap_mp_writer_destroy(). The first error sticks: later
 * writes do nothing and return it, so a caller may check only finish().
 */
struct ap_mp_writer {
    msgpack_sbuffer sbuf; /* the bytes so far (sbuf.data, sbuf.size) */
    msgpack_packer pk;    /* packs into sbuf */
    int err;              /* first error, 0 while all writes succeeded */
};

/** Start an empty writer. Allocates nothing until the first write. */
void ap_mp_writer_init(struct ap_mp_writer *w);

/** Free the writer's buffer (after an error, or when the bytes are not wanted). */
void ap_mp_writer_destroy(struct ap_mp_writer *w);

/**
 * Hand the written bytes to the caller, who frees *out with ap_free(). Returns
 * the sticky error instead (the buffer is freed then, *out untouched); on an
 * empty writer *out is NULL and *len 0. The writer is empty afterwards either way.
 */
int ap_mp_writer_finish(struct ap_mp_writer *w, uint8_t **out, size_t *len);

/** Append a NUL-terminated string as msgpack str. 0, AP_ENOMEM, or AP_ETOOBIG (> 4 GiB). */
int ap_mp_write_str(struct ap_mp_writer *w, const char *s);

/** Append len bytes of s as msgpack str (s need not be terminated). Errors as ap_mp_write_str. */
int ap_mp_write_strn(struct ap_mp_writer *w, const char *s, size_t len);

/** Append an unsigned integer in its shortest encoding. 0 or AP_ENOMEM. */
int ap_mp_write_uint(struct ap_mp_writer *w, uint64_t v);

/** Append a signed integer in its shortest encoding. 0 or AP_ENOMEM. */
int ap_mp_write_int(struct ap_mp_writer *w, int64_t v);

/** Append a boolean. 0 or AP_ENOMEM. */
int ap_mp_write_bool(struct ap_mp_writer *w, bool v);

/** Append a 64-bit float. 0 or AP_ENOMEM. */
int ap_mp_write_double(struct ap_mp_writer *w, double v);

/** Append nil. 0 or AP_ENOMEM. */
int ap_mp_write_nil(struct ap_mp_writer *w);

/** Append len bytes (p may be NULL when len is 0) as msgpack bin. 0, AP_ENOMEM or AP_ETOOBIG. */
int ap_mp_write_bin(struct ap_mp_writer *w, const void *p, size_t len);

/** Append a map header; exactly n key/value pairs (2n writes) must follow. 0 or AP_ENOMEM. */
int ap_mp_write_map(struct ap_mp_writer *w, uint32_t n);

/** Append an array header; exactly n values must follow. 0 or AP_ENOMEM. */
int ap_mp_write_array(struct ap_mp_writer *w, uint32_t n);

/**
 * Append len bytes as they are: an already-encoded msgpack value, or a
 * framing prefix the caller patches later in w->sbuf.data. 0 or AP_ENOMEM.
 */
int ap_mp_write_raw(struct ap_mp_writer *w, const void *p, size_t len);

/**
 * Decode exactly one msgpack value that fills buf[0, len). Safe on hostile
 * input: before msgpack-c sees the bytes, a walk over them rejects truncated
 * values, trailing bytes, invalid type bytes, containers or strings claiming
 * more than the bytes left, nesting deeper than AP_MP_MAX_DEPTH and more than
 * AP_MP_MAX_OBJECTS objects, so msgpack-c never allocates more than a small
 * multiple of len.
 *
 * On success returns 0 and *out holds the value; strings and bins in it point
 * into buf (which must outlive their use) and the caller must call
 * msgpack_unpacked_destroy(out). On error *out needs no cleanup and the return
 * is AP_ETOOBIG (len > max_len, or too many objects), AP_EPROTO (malformed),
 * or AP_ENOMEM, with a message in errmsg (AP_ERRMSG_SIZE bytes, may be NULL).
 */
int ap_mp_unpack(const uint8_t *buf, size_t len, size_t max_len, msgpack_unpacked *out,
                 char *errmsg);

/**
 * The value stored under the string key in map, or NULL when map is NULL,
 * not a map, or has no such key. With duplicate keys the first one wins.
 * The result points into map.
 */
const msgpack_object *ap_mp_find(const msgpack_object *map, const char *key);

/*
 * Typed getters. Each looks up key in map and checks the value's type and
 * limits. They return 0 on success; AP_EPROTO with a message naming the field
 * in errmsg (AP_ERRMSG_SIZE bytes, may be NULL) when the value has the wrong
 * type ("field 'name': expected string"), breaks a limit ("field 'name':
 * longer than 63 bytes"), or is missing while required ("missing field
 * 'name'"), or when map is not a map. A missing optional field (absent or nil)
 * returns 0 and leaves the outputs untouched, so callers preset defaults.
 * Pointers they return point into map.
 */

/**
 * String field copied into out (out_size bytes, terminated). Rejects strings
 * of out_size bytes or more and strings containing a NUL byte.
 */
int ap_mp_get_str(const msgpack_object *map, const char *key, char *out, size_t out_size,
                  bool required, char *errmsg);

/** Unsigned integer field at most max. */
int ap_mp_get_u64(const msgpack_object *map, const char *key, uint64_t *out, uint64_t max,
                  bool required, char *errmsg);

/** Signed integer field within [min, max]. */
int ap_mp_get_i64(const msgpack_object *map, const char *key, int64_t *out, int64_t min,
                  int64_t max, bool required, char *errmsg);

/** Boolean field. */
int ap_mp_get_bool(const msgpack_object *map, const char *key, bool *out, bool required,
                   char *errmsg);

/** Number field (float or integer) as a double. */
int ap_mp_get_double(const msgpack_object *map, const char *key, double *out, bool required,
                     char *errmsg);

/** Bin field of at most max_len bytes: *out points into the object (NULL when empty). */
int ap_mp_get_bin(const msgpack_object *map, const char *key, const uint8_t **out, size_t *out_len,
                  size_t max_len, bool required, char *errmsg);

/** Map field of at most max_entries key/value pairs. */
int ap_mp_get_map(const msgpack_object *map, const char *key, const msgpack_object **out,
                  size_t max_entries, bool required, char *errmsg);

/** Array field of at most max_elems elements. */
int ap_mp_get_array(const msgpack_object *map, const char *key, const msgpack_object **out,
                    size_t max_elems, bool required, char *errmsg);

/*
 * The same checks on a value already in hand (an array element, a map value
 * found otherwise); name is what error messages call it ("field 'name': ...").
 * Errors are AP_EPROTO as above; a NULL o is "missing field 'name'".
 */

/** See ap_mp_get_str. */
int ap_mp_as_str(const msgpack_object *o, const char *name, char *out, size_t out_size,
                 char *errmsg);

/** See ap_mp_get_u64. */
int ap_mp_as_u64(const msgpack_object *o, const char *name, uint64_t *out, uint64_t max,
                 char *errmsg);

/** See ap_mp_get_i64. */
int ap_mp_as_i64(const msgpack_object *o, const char *name, int64_t *out, int64_t min, int64_t max,
                 char *errmsg);

/** See ap_mp_get_bool. */
int ap_mp_as_bool(const msgpack_object *o, const char *name, bool *out, char *errmsg);

/** See ap_mp_get_double. */
int ap_mp_as_double(const msgpack_object *o, const char *name, double *out, char *errmsg);

/** See ap_mp_get_bin. */
int ap_mp_as_bin(const msgpack_object *o, const char *name, const uint8_t **out, size_t *out_len,
                 size_t max_len, char *errmsg);

/** See ap_mp_get_map. */
int ap_mp_as_map(const msgpack_object *o, const char *name, size_t max_entries, char *errmsg);

/** See ap_mp_get_array. */
int ap_mp_as_array(const msgpack_object *o, const char *name, size_t max_elems, char *errmsg);

#endif
