/* Unit tests for mp: writer round trips, typed getters and their messages, hostile unpack input. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "ap/base.h"
#include "ap/err.h"
#include "ap/mp.h"

#include <string.h>

/* A decoded map that each test fills through the writer and frees in teardown. */
struct fixture {
    uint8_t *bytes;
    size_t len;
    msgpack_unpacked u;
    bool unpacked;
    char errmsg[AP_ERRMSG_SIZE];
};

static int setup(void **state)
{
    struct fixture *f = ap_calloc(1, sizeof *f);
    assert_non_null(f);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    if (f->unpacked) {
        msgpack_unpacked_destroy(&f->u);
    }
    ap_free(f->bytes);
    ap_free(f);
    return 0;
}

/* Finish w and decode its bytes into f->u. */
static const msgpack_object *decode(struct fixture *f, struct ap_mp_writer *w)
{
    assert_int_equal(ap_mp_writer_finish(w, &f->bytes, &f->len), 0);
    assert_int_equal(ap_mp_unpack(f->bytes, f->len, 1 << 20, &f->u, f->errmsg), 0);
    f->unpacked = true;
    return &f->u.data;
}

/* One map holding a field of every type the getters know. */
static const msgpack_object *sample(struct fixture *f)
{
    static const uint8_t blob[] = {0, 1, 2, 0xff};
    struct ap_mp_writer w;
    ap_mp_writer_init(&w);
    ap_mp_write_map(&w, 11);
    ap_mp_write_str(&w, "name");
    ap_mp_write_str(&w, "site-a");
    ap_mp_write_str(&w, "count");
    ap_mp_write_uint(&w, 70000);
    ap_mp_write_str(&w, "delta");
    ap_mp_write_int(&w, -42);
    ap_mp_write_str(&w, "on");
    ap_mp_write_bool(&w, true);
    ap_mp_write_str(&w, "blob");
    ap_mp_write_bin(&w, blob, sizeof blob);
    ap_mp_write_str(&w, "labels");
    ap_mp_write_map(&w, 2);
    ap_mp_write_str(&w, "zone");
    ap_mp_write_str(&w, "eu");
    ap_mp_write_str(&w, "gpu");
    ap_mp_write_bool(&w, false);
    ap_mp_write_str(&w, "sites");
    ap_mp_write_array(&w, 3);
    ap_mp_write_str(&w, "a");
    ap_mp_write_str(&w, "b");
    ap_mp_write_str(&w, "c");
    ap_mp_write_str(&w, "gone");
    ap_mp_write_nil(&w);
    ap_mp_write_str(&w, "cpu");
    ap_mp_write_double(&w, 0.5);
    ap_mp_write_str(&w, "big");
    ap_mp_write_uint(&w, UINT64_MAX);
    ap_mp_write_str(&w, "nul");
    ap_mp_write_strn(&w, "a\0b", 3);
    return decode(f, &w);
}

static void test_round_trip(void **state)
{
    struct fixture *f = *state;
    const msgpack_object *m = sample(f);
    char name[16];
    uint64_t count = 0;
    int64_t delta = 0;
    bool on = false;
    double cpu = 0;
    const uint8_t *blob = NULL;
    size_t blob_len = 0;
    const msgpack_object *labels = NULL;
    const msgpack_object *sites = NULL;

    assert_int_equal(ap_mp_get_str(m, "name", name, sizeof name, true, f->errmsg), 0);
    assert_string_equal(name, "site-a");
    assert_int_equal(ap_mp_get_u64(m, "count", &count, UINT32_MAX, true, f->errmsg), 0);
    assert_int_equal(count, 70000);
    assert_int_equal(ap_mp_get_i64(m, "delta", &delta, -100, 100, true, f->errmsg), 0);
    assert_int_equal(delta, -42);
    assert_int_equal(ap_mp_get_bool(m, "on", &on, true, f->errmsg), 0);
    assert_true(on);
    assert_int_equal(ap_mp_get_double(m, "cpu", &cpu, true, f->errmsg), 0);
    assert_true(cpu == 0.5);
    assert_int_equal(ap_mp_get_bin(m, "blob", &blob, &blob_len, 4, true, f->errmsg), 0);
    assert_int_equal(blob_len, 4);
    assert_memory_equal(blob, "\0\1\2\xff", 4);
    /* The bin points into the input bytes, not a copy. */
    assert_true(blob > f->bytes && blob < f->bytes + f->len);
    assert_int_equal(ap_mp_get_map(m, "labels", &labels, 2, true, f->errmsg), 0);
    assert_int_equal(ap_mp_get_str(labels, "zone", name, sizeof name, true, f->errmsg), 0);
    assert_string_equal(name, "eu");
    assert_int_equal(ap_mp_get_array(m, "sites", &sites, 3, true, f->errmsg), 0);
    assert_int_equal(sites->via.array.size, 3);
    assert_int_equal(
        ap_mp_as_str(&sites->via.array.ptr[2], "sites[2]", name, sizeof name, f->errmsg), 0);
    assert_string_equal(name, "c");
    assert_int_equal(ap_mp_get_u64(m, "big", &count, UINT64_MAX, true, f->errmsg), 0);
    assert_true(count == UINT64_MAX);
    /* Integers read as doubles too. */
    assert_int_equal(ap_mp_get_double(m, "count", &cpu, true, f->errmsg), 0);
    assert_true(cpu == 70000.0);
}

static void test_type_errors(void **state)
{
    struct fixture *f = *state;
    const msgpack_object *m = sample(f);
    char s[64];
    uint64_t u;
    int64_t i;
    bool b;
    double d;
    const uint8_t *p;
    size_t n;
    const msgpack_object *o;

    assert_int_equal(ap_mp_get_str(m, "count", s, sizeof s, true, f->errmsg), AP_EPROTO);
    assert_string_equal(f->errmsg, "field 'count': expected string");
    assert_int_equal(ap_mp_get_u64(m, "name", &u, UINT64_MAX, true, f->errmsg), AP_EPROTO);
    assert_string_equal(f->errmsg, "field 'name': expected unsigned integer");
    assert_int_equal(ap_mp_get_u64(m, "delta", &u, UINT64_MAX, true, f->errmsg), AP_EPROTO);
    assert_string_equal(f->errmsg, "field 'delta': expected unsigned integer");
    assert_int_equal(ap_mp_get_i64(m, "on", &i, INT64_MIN, INT64_MAX, true, f->errmsg), AP_EPROTO);
    assert_string_equal(f->errmsg, "field 'on': expected integer");
    assert_int_equal(ap_mp_get_bool(m, "count", &b, true, f->errmsg), AP_EPROTO);
    assert_string_equal(f->errmsg, "field 'count': expected boolean");
    assert_int_equal(ap_mp_get_double(m, "name", &d, true, f->errmsg), AP_EPROTO);
    assert_string_equal(f->errmsg, "field 'name': expected number");
    /* A str is not a bin, even though both are bytes. */
    assert_int_equal(ap_mp_get_bin(m, "name", &p, &n, 100, true, f->errmsg), AP_EPROTO);
    assert_string_equal(f->errmsg, "field 'name': expected binary");
    assert_int_equal(ap_mp_get_map(m, "sites", &o, 10, true, f->errmsg), AP_EPROTO);
    assert_string_equal(f->errmsg, "field 'sites': expected map");
    assert_int_equal(ap_mp_get_array(m, "labels", &o, 10, true, f->errmsg), AP_EPROTO);
    assert_string_equal(f->errmsg, "field 'labels': expected array");
    /* A required nil is the wrong type, not an absent field. */
    assert_int_equal(ap_mp_get_str(m, "gone", s, sizeof s, true, f->errmsg), AP_EPROTO);
    assert_string_equal(f->errmsg, "field 'gone': expected string");
    /* Getters on something that is not a map say so instead of crashing. */
    assert_int_equal(ap_mp_get_str(&m->via.map.ptr[0].val, "x", s, sizeof s, true, f->errmsg),
                     AP_EPROTO);
    assert_string_equal(f->errmsg, "expected a map holding field 'x'");
    assert_int_equal(ap_mp_get_str(NULL, "x", s, sizeof s, false, NULL), AP_EPROTO);
}

static void test_limits(void **state)
{
    struct fixture *f = *state;
    const msgpack_object *m = sample(f);
    char small[6];
    uint64_t u = 0;
    int64_t i = 0;
    const uint8_t *p;
    size_t n;
    const msgpack_object *o;

    /* "site-a" is 6 bytes: it needs 7 with the terminator. */
    assert_int_equal(ap_mp_get_str(m, "name", small, sizeof small, true, f->errmsg), AP_EPROTO);
    assert_string_equal(f->errmsg, "field 'name': longer than 5 bytes");
    char seven[7];
    assert_int_equal(ap_mp_get_str(m, "name", seven, sizeof seven, true, f->errmsg), 0);
    assert_string_equal(seven, "site-a");
    char s[8];
    assert_int_equal(ap_mp_get_str(m, "nul", s, sizeof s, true, f->errmsg), AP_EPROTO);
    assert_string_equal(f->errmsg, "field 'nul': contains a NUL byte");
    assert_int_equal(ap_mp_get_u64(m, "count", &u, UINT16_MAX, true, f->errmsg), AP_EPROTO);
    assert_string_equal(f->errmsg, "field 'count': above 65535");
    assert_int_equal(u, 0);
    assert_int_equal(ap_mp_get_i64(m, "delta", &i, -10, 10, true, f->errmsg), AP_EPROTO);
    assert_string_equal(f->errmsg, "field 'delta': outside [-10, 10]");
    assert_int_equal(ap_mp_get_i64(m, "big", &i, INT64_MIN, INT64_MAX, true, f->errmsg), AP_EPROTO);
    assert_int_equal(ap_mp_get_i64(m, "count", &i, -5, -1, true, f->errmsg), AP_EPROTO);
    assert_int_equal(ap_mp_get_bin(m, "blob", &p, &n, 3, true, f->errmsg), AP_EPROTO);
    assert_string_equal(f->errmsg, "field 'blob': longer than 3 bytes");
    assert_int_equal(ap_mp_get_map(m, "labels", &o, 1, true, f->errmsg), AP_EPROTO);
    assert_string_equal(f->errmsg, "field 'labels': more than 1 entries");
    assert_int_equal(ap_mp_get_array(m, "sites", &o, 2, true, f->errmsg), AP_EPROTO);
    assert_string_equal(f->errmsg, "field 'sites': more than 2 elements");
}

static void test_missing(void **state)
{
    struct fixture *f = *state;
    const msgpack_object *m = sample(f);
    char s[16] = "default";
    uint64_t u = 7;
    bool b = true;
    const msgpack_object *o = NULL;

    assert_int_equal(ap_mp_get_str(m, "nope", s, sizeof s, true, f->errmsg), AP_EPROTO);
    assert_string_equal(f->errmsg, "missing field 'nope'");
    assert_int_equal(ap_mp_get_array(m, "nope", &o, 1, true, f->errmsg), AP_EPROTO);
    assert_string_equal(f->errmsg, "missing field 'nope'");
    /* Optional and absent, or optional and nil: success, outputs untouched. */
    assert_int_equal(ap_mp_get_str(m, "nope", s, sizeof s, false, f->errmsg), 0);
    assert_string_equal(s, "default");
    assert_int_equal(ap_mp_get_u64(m, "gone", &u, 10, false, f->errmsg), 0);
    assert_int_equal(u, 7);
    assert_int_equal(ap_mp_get_bool(m, "nope", &b, false, NULL), 0);
    assert_true(b);
    assert_int_equal(ap_mp_get_map(m, "gone", &o, 1, false, NULL), 0);
    assert_null(o);
    assert_null(ap_mp_find(m, "nope"));
    assert_null(ap_mp_find(NULL, "name"));
    assert_non_null(ap_mp_find(m, "labels"));
    /* A prefix of a key is not the key. */
    assert_null(ap_mp_find(m, "nam"));
    assert_int_equal(ap_mp_as_u64(NULL, "x", &u, 1, f->errmsg), AP_EPROTO);
    assert_string_equal(f->errmsg, "missing field 'x'");
}

static void test_writer_empty_and_raw(void **state)
{
    struct fixture *f = *state;
    struct ap_mp_writer w;
    uint8_t *out = (uint8_t *)&w;
    size_t len = 99;
    ap_mp_writer_init(&w);
    assert_int_equal(ap_mp_writer_finish(&w, &out, &len), 0);
    assert_null(out);
    assert_int_equal(len, 0);

    /* Raw bytes are an already-encoded value: [1, "x"] spliced into a map. */
    static const uint8_t arr[] = {0x92, 0x01, 0xa1, 'x'};
    ap_mp_writer_init(&w);
    ap_mp_write_map(&w, 1);
    ap_mp_write_str(&w, "k");
    ap_mp_write_raw(&w, arr, sizeof arr);
    const msgpack_object *m = decode(f, &w);
    const msgpack_object *a = NULL;
    assert_int_equal(ap_mp_get_array(m, "k", &a, 2, true, f->errmsg), 0);
    assert_int_equal(a->via.array.ptr[0].via.u64, 1);

    /* A destroyed writer leaks nothing (ASan checks). */
    ap_mp_writer_init(&w);
    ap_mp_write_str(&w, "dropped");
    ap_mp_writer_destroy(&w);
}

static void test_duplicate_keys_first_wins(void **state)
{
    struct fixture *f = *state;
    struct ap_mp_writer w;
    ap_mp_writer_init(&w);
    ap_mp_write_map(&w, 2);
    ap_mp_write_str(&w, "k");
    ap_mp_write_uint(&w, 1);
    ap_mp_write_str(&w, "k");
    ap_mp_write_uint(&w, 2);
    const msgpack_object *m = decode(f, &w);
    uint64_t u = 0;
    assert_int_equal(ap_mp_get_u64(m, "k", &u, 10, true, f->errmsg), 0);
    assert_int_equal(u, 1);
}

/* Run ap_mp_unpack on bytes that must be refused, and return its error. */
static int refuse(const uint8_t *buf, size_t len, char *errmsg)
{
    msgpack_unpacked u;
    int rc = ap_mp_unpack(buf, len, 1 << 20, &u, errmsg);
    if (rc == 0) {
        msgpack_unpacked_destroy(&u);
    }
    return rc;
}

static void test_unpack_truncated_every_offset(void **state)
{
    struct fixture *f = *state;
    sample(f);
    for (size_t cut = 0; cut < f->len; cut++) {
        int rc = refuse(f->bytes, cut, f->errmsg);
        assert_int_equal(rc, AP_EPROTO);
        assert_true(strncmp(f->errmsg, "msgpack: ", 9) == 0);
    }
}

static void test_unpack_trailing_and_empty(void **state)
{
    struct fixture *f = *state;
    sample(f);
    uint8_t *more = ap_malloc(f->len + 1);
    assert_non_null(more);
    memcpy(more, f->bytes, f->len);
    more[f->len] = 0xc0;
    assert_int_equal(refuse(more, f->len + 1, f->errmsg), AP_EPROTO);
    assert_string_equal(f->errmsg, "msgpack: 1 trailing bytes after the value");
    ap_free(more);
    assert_int_equal(refuse((const uint8_t *)"", 0, f->errmsg), AP_EPROTO);
    assert_string_equal(f->errmsg, "msgpack: empty input");
    static const uint8_t bad[] = {0xc1};
    assert_int_equal(refuse(bad, sizeof bad, f->errmsg), AP_EPROTO);
    assert_string_equal(f->errmsg, "msgpack: invalid type byte 0xc1 at offset 0");
    /* Over the caller's size limit, before looking at a byte. */
    msgpack_unpacked u;
    assert_int_equal(ap_mp_unpack(f->bytes, f->len, f->len - 1, &u, f->errmsg), AP_ETOOBIG);
}

/*
 * 20 bytes claiming 4 billion elements: msgpack-c alone would try to
 * allocate ~96 GiB (ASan aborts on it); the walk refuses it first.
 */
static void test_unpack_huge_claims(void **state)
{
    struct fixture *f = *state;
    uint8_t buf[20];
    memset(buf, 0xc0, sizeof buf);
    const uint8_t heads[][5] = {
        {0xdd, 0xff, 0xff, 0xff, 0xff}, /* array32 */
        {0xdf, 0xff, 0xff, 0xff, 0xff}, /* map32 */
        {0xdb, 0xff, 0xff, 0xff, 0xff}, /* str32 */
        {0xc6, 0xff, 0xff, 0xff, 0xff}, /* bin32 */
        {0xc9, 0xff, 0xff, 0xff, 0xff}, /* ext32 */
        {0xdc, 0xff, 0xff, 0xc0, 0xc0}, /* array16 */
        {0xde, 0x00, 0x0a, 0xc0, 0xc0}, /* map16 of 10 pairs needs 20 values, 17 bytes left */
    };
    for (size_t i = 0; i < AP_ARRAY_LEN(heads); i++) {
        memcpy(buf, heads[i], 5);
        assert_int_equal(refuse(buf, sizeof buf, f->errmsg), AP_EPROTO);
        assert_non_null(strstr(f->errmsg, "claims"));
    }
    /* The same claim nested inside a valid-looking map. */
    static const uint8_t nested[] = {0x81, 0xa1, 'k', 0xdd, 0x7f, 0xff, 0xff, 0xff, 0x00};
    assert_int_equal(refuse(nested, sizeof nested, f->errmsg), AP_EPROTO);
}

static void test_unpack_depth(void **state)
{
    struct fixture *f = *state;
    uint8_t buf[64];
    /* n nested one-element arrays around a nil. */
    for (size_t n = 1; n <= 40; n++) {
        memset(buf, 0x91, n);
        buf[n] = 0xc0;
        int rc = refuse(buf, n + 1, f->errmsg);
        if (n <= AP_MP_MAX_DEPTH) {
            assert_int_equal(rc, 0);
        } else {
            assert_int_equal(rc, AP_EPROTO);
            assert_non_null(strstr(f->errmsg, "nested deeper than 16"));
        }
    }
    /* Depth counts nesting, not siblings: many flat arrays side by side are fine. */
    uint8_t flat[1 + 20];
    flat[0] = 0xdc;
    flat[1] = 0;
    flat[2] = 18;
    memset(flat + 3, 0x90, 18);
    assert_int_equal(refuse(flat, sizeof flat, f->errmsg), 0);
}

static void test_unpack_object_limit(void **state)
{
    struct fixture *f = *state;
    /* An array32 of n nils is 5 + n bytes and 1 + n objects. */
    size_t n = AP_MP_MAX_OBJECTS;
    uint8_t *buf = ap_malloc(5 + n);
    assert_non_null(buf);
    memset(buf, 0xc0, 5 + n);
    buf[0] = 0xdd;
    buf[1] = (uint8_t)(n >> 24);
    buf[2] = (uint8_t)(n >> 16);
    buf[3] = (uint8_t)(n >> 8);
    buf[4] = (uint8_t)n;
    msgpack_unpacked u;
    assert_int_equal(ap_mp_unpack(buf, 5 + n, 5 + n, &u, f->errmsg), AP_ETOOBIG);
    assert_non_null(strstr(f->errmsg, "objects"));
    /* One fewer element is exactly at the limit. */
    n--;
    buf[1] = (uint8_t)(n >> 24);
    buf[2] = (uint8_t)(n >> 16);
    buf[3] = (uint8_t)(n >> 8);
    buf[4] = (uint8_t)n;
    assert_int_equal(ap_mp_unpack(buf, 5 + n, 5 + n, &u, f->errmsg), 0);
    assert_int_equal(u.data.via.array.size, n);
    msgpack_unpacked_destroy(&u);
    ap_free(buf);
}

static void test_unpack_every_type(void **state)
{
    struct fixture *f = *state;
    /* One array with every msgpack encoding the walk must size correctly. */
    static const uint8_t all[] = {
        0xdc, 0x00, 0x1b,                                       /* array16 of 27 */
        0x05, 0xe0, 0xc0, 0xc2, 0xc3,                           /* fixints, nil, bools */
        0xcc, 0xff, 0xcd, 0,    1,    0xce, 0,    0,    0,   1, /* uint8/16/32 */
        0xcf, 0,    0,    0,    0,    0,    0,    0,    1,      /* uint64 */
        0xd0, 0x80, 0xd1, 0x80, 0,    0xd2, 0x80, 0,    0,   0, /* int8/16/32 */
        0xd3, 0x80, 0,    0,    0,    0,    0,    0,    0,      /* int64 */
        0xca, 0,    0,    0,    0,    0xcb, 0,    0,    0,   0, 0, 0, 0, 0, /* float32/64 */
        0xa1, 'a',  0xd9, 1,    'b',  0xda, 0,    1,    'c',             /* fixstr, str8, str16 */
        0xdb, 0,    0,    0,    1,    'd',                               /* str32 */
        0xc4, 1,    9,    0xc5, 0,    1,    9,    0xc6, 0,   0, 0, 1, 9, /* bin8/16/32 */
        0xd4, 1,    9,    0xd5, 1,    9,    9,                           /* fixext1/2 */
        0xd6, 1,    9,    9,    9,    9,                                 /* fixext4 */
        0xc7, 1,    1,    9,                                             /* ext8 */
        0x80,                                                            /* empty map */
    };
    msgpack_unpacked u;
    assert_int_equal(ap_mp_unpack(all, sizeof all, sizeof all, &u, f->errmsg), 0);
    assert_int_equal(u.data.type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(u.data.via.array.size, 27);
    msgpack_unpacked_destroy(&u);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_type_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_writer_empty_and_raw, setup, teardown),
        cmocka_unit_test_setup_teardown(test_duplicate_keys_first_wins, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unpack_truncated_every_offset, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unpack_trailing_and_empty, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unpack_huge_claims, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unpack_depth, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unpack_object_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unpack_every_type, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
