/* Unit tests for wire: envelope round trip, every malformed input class, frame splitting. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "ap/base.h"
#include "ap/err.h"
#include "ap/mp.h"
#include "ap/wire.h"

#include <stdio.h>
#include <string.h>

static const uint8_t sample_body[] = {0x82, 0xa2, 'i', 'd', 0x07, 0xa2, 'o', 'k', 0xc3};

static struct ap_wire_msg sample_msg(void)
{
    struct ap_wire_msg m;
    memset(&m, 0, sizeof m);
    m.version = AP_WIRE_VERSION;
    m.type = AP_WIRE_DELTA;
    ap_strlcpy(m.sender, "r1-s1", sizeof m.sender);
    m.hlc = ((uint64_t)1700000000000 << 16) | 3;
    m.hlc_node = 0xdeadbeef;
    m.body = sample_body;
    m.body_len = sizeof sample_body;
    return m;
}

static uint32_t prefix_of(const uint8_t *f)
{
    return (uint32_t)f[0] << 24 | (uint32_t)f[1] << 16 | (uint32_t)f[2] << 8 | f[3];
}

static void test_round_trip(void **state)
{
    (void)state;
    struct ap_wire_msg m = sample_msg();
    uint8_t *frame = NULL;
    size_t len = 0;
    char errmsg[AP_ERRMSG_SIZE] = "";
    assert_int_equal(ap_wire_encode(&m, &frame, &len), 0);
    assert_int_equal(prefix_of(frame), len - AP_WIRE_PREFIX);

    struct ap_wire_msg d;
    assert_int_equal(ap_wire_decode(frame + AP_WIRE_PREFIX, len - AP_WIRE_PREFIX, &d, errmsg), 0);
    assert_int_equal(d.version, AP_WIRE_VERSION);
    assert_int_equal(d.type, AP_WIRE_DELTA);
    assert_string_equal(d.sender, "r1-s1");
    assert_true(d.hlc == m.hlc);
    assert_int_equal(d.hlc_node, 0xdeadbeef);
    assert_int_equal(d.body_len, sizeof sample_body);
    assert_memory_equal(d.body, sample_body, sizeof sample_body);
    /* The body is not copied: it points into the payload. */
    assert_true(d.body > frame && d.body + d.body_len <= frame + len);

    /* An empty body and extreme values survive too. */
    m.body = NULL;
    m.body_len = 0;
    m.hlc = UINT64_MAX;
    m.hlc_node = UINT32_MAX;
    m.type = UINT16_MAX;
    m.version = UINT16_MAX;
    memset(m.sender, 'x', sizeof m.sender - 1);
    m.sender[sizeof m.sender - 1] = '\0';
    ap_free(frame);
    assert_int_equal(ap_wire_encode(&m, &frame, &len), 0);
    assert_int_equal(ap_wire_decode(frame + AP_WIRE_PREFIX, len - AP_WIRE_PREFIX, &d, errmsg), 0);
    assert_int_equal(d.body_len, 0);
    assert_true(d.hlc == UINT64_MAX);
    assert_int_equal(d.hlc_node, UINT32_MAX);
    assert_int_equal(d.type, UINT16_MAX);
    assert_int_equal(strlen(d.sender), 63);
    ap_free(frame);
}

static void test_encode_refuses(void **state)
{
    (void)state;
    struct ap_wire_msg m = sample_msg();
    uint8_t *frame = NULL;
    size_t len = 0;
    m.version = 0;
    assert_int_equal(ap_wire_encode(&m, &frame, &len), AP_EINVAL);
    m = sample_msg();
    memset(m.sender, 'x', sizeof m.sender); /* not terminated */
    assert_int_equal(ap_wire_encode(&m, &frame, &len), AP_EINVAL);

    /* A body of exactly the maximum leaves no room for the envelope. */
    uint8_t *big = ap_calloc(1, AP_WIRE_MAX_FRAME + 1);
    assert_non_null(big);
    m = sample_msg();
    m.body = big;
    m.body_len = AP_WIRE_MAX_FRAME + 1;
    assert_int_equal(ap_wire_encode(&m, &frame, &len), AP_ETOOBIG);
    m.body_len = AP_WIRE_MAX_FRAME;
    assert_int_equal(ap_wire_encode(&m, &frame, &len), AP_ETOOBIG);
    /* Just under it fits, decodes, and passes a reader at the default limit. */
    m.body_len = AP_WIRE_MAX_FRAME - 64;
    assert_int_equal(ap_wire_encode(&m, &frame, &len), 0);
    assert_true(len - AP_WIRE_PREFIX <= AP_WIRE_MAX_FRAME);
    struct ap_wire_reader *r = NULL;
    assert_int_equal(ap_wire_reader_new(0, &r), 0);
    assert_int_equal(ap_wire_reader_feed(r, frame, len), 0);
    const uint8_t *p = NULL;
    size_t n = 0;
    assert_int_equal(ap_wire_reader_next(r, &p, &n), 1);
    struct ap_wire_msg d;
    assert_int_equal(ap_wire_decode(p, n, &d, NULL), 0);
    assert_int_equal(d.body_len, AP_WIRE_MAX_FRAME - 64);
    ap_wire_reader_free(r);
    ap_free(frame);
    ap_free(big);
}

/*
 * Build an envelope map field by field. skip names a key to leave out; swap
 * names a key whose value is replaced by the raw msgpack bytes in `with`.
 */
struct env_opts {
    const char *skip;
    const char *swap;
    const uint8_t *with;
    size_t with_len;
    bool extra; /* add an unknown key, as a newer peer would */
};

static void build(const struct env_opts *o, uint8_t **out, size_t *len)
{
    const char *keys[] = {"v", "t", "s", "h", "n", "b"};
    struct ap_mp_writer w;
    ap_mp_writer_init(&w);
    uint32_t n = 6 + (o->extra ? 1 : 0) - (o->skip != NULL ? 1 : 0);
    ap_mp_write_map(&w, n);
    if (o->extra) {
        ap_mp_write_str(&w, "future");
        ap_mp_write_array(&w, 2);
        ap_mp_write_uint(&w, 1);
        ap_mp_write_str(&w, "x");
    }
    for (size_t i = 0; i < AP_ARRAY_LEN(keys); i++) {
        if (o->skip != NULL && strcmp(o->skip, keys[i]) == 0) {
            continue;
        }
        ap_mp_write_str(&w, keys[i]);
        if (o->swap != NULL && strcmp(o->swap, keys[i]) == 0) {
            ap_mp_write_raw(&w, o->with, o->with_len);
            continue;
        }
        switch (keys[i][0]) {
        case 'v':
            ap_mp_write_uint(&w, 1);
            break;
        case 't':
            ap_mp_write_uint(&w, AP_WIRE_ACK);
            break;
        case 's':
            ap_mp_write_str(&w, "r1/2");
            break;
        case 'h':
            ap_mp_write_uint(&w, 12345);
            break;
        case 'n':
            ap_mp_write_uint(&w, 2);
            break;
        default:
            ap_mp_write_bin(&w, "\xc0", 1);
            break;
        }
    }
    assert_int_equal(ap_mp_writer_finish(&w, out, len), 0);
}

static int decode_with(const struct env_opts *o, struct ap_wire_msg *m, char *errmsg)
{
    uint8_t *p = NULL;
    size_t n = 0;
    build(o, &p, &n);
    int rc = ap_wire_decode(p, n, m, errmsg);
    ap_free(p);
    return rc;
}

static void test_builder_baseline(void **state)
{
    (void)state;
    struct env_opts o = {0};
    struct ap_wire_msg m;
    char errmsg[AP_ERRMSG_SIZE] = "";
    assert_int_equal(decode_with(&o, &m, errmsg), 0);
    assert_int_equal(m.type, AP_WIRE_ACK);
    assert_string_equal(m.sender, "r1/2");
    assert_int_equal(m.hlc_node, 2);
}

static void test_missing_fields(void **state)
{
    (void)state;
    const char *keys[] = {"v", "t", "s", "h", "n", "b"};
    char errmsg[AP_ERRMSG_SIZE];
    char want[64];
    struct ap_wire_msg m;
    for (size_t i = 0; i < AP_ARRAY_LEN(keys); i++) {
        struct env_opts o = {.skip = keys[i]};
        assert_int_equal(decode_with(&o, &m, errmsg), AP_EPROTO);
        snprintf(want, sizeof want, "missing field '%s'", keys[i]);
        assert_string_equal(errmsg, want);
    }
}

static void test_wrong_types(void **state)
{
    (void)state;
    static const uint8_t str_x[] = {0xa1, 'x'};
    static const uint8_t neg[] = {0xff};
    static const uint8_t u7[] = {0x07};
    static const uint8_t fl[] = {0xca, 0, 0, 0, 0};
    static const uint8_t arr[] = {0x90};
    static const struct {
        const char *key;
        const uint8_t *with;
        size_t len;
        const char *msg;
    } cases[] = {
        {"v", str_x, sizeof str_x, "field 'v': expected unsigned integer"},
        {"v", neg, sizeof neg, "field 'v': expected unsigned integer"},
        {"t", fl, sizeof fl, "field 't': expected unsigned integer"},
        {"s", u7, sizeof u7, "field 's': expected string"},
        {"s", arr, sizeof arr, "field 's': expected string"},
        {"h", str_x, sizeof str_x, "field 'h': expected unsigned integer"},
        {"n", neg, sizeof neg, "field 'n': expected unsigned integer"},
        {"b", str_x, sizeof str_x, "field 'b': expected binary"},
        {"b", u7, sizeof u7, "field 'b': expected binary"},
    };
    char errmsg[AP_ERRMSG_SIZE];
    struct ap_wire_msg m;
    for (size_t i = 0; i < AP_ARRAY_LEN(cases); i++) {
        struct env_opts o = {.swap = cases[i].key, .with = cases[i].with, .with_len = cases[i].len};
        assert_int_equal(decode_with(&o, &m, errmsg), AP_EPROTO);
        assert_string_equal(errmsg, cases[i].msg);
    }
}

static void test_out_of_range(void **state)
{
    (void)state;
    static const uint8_t v0[] = {0x00};
    static const uint8_t u16_over[] = {0xce, 0x00, 0x01, 0x00, 0x00}; /* 65536 */
    static const uint8_t u32_over[] = {0xcf, 0, 0, 0, 1, 0, 0, 0, 0}; /* 2^32 */
    uint8_t s64[2 + 64];
    s64[0] = 0xd9; /* str8 of 64 bytes: one too long for the sender */
    s64[1] = 64;
    memset(s64 + 2, 'x', 64);
    static const uint8_t nul[] = {0xa3, 'a', 0, 'b'};
    const struct {
        const char *key;
        const uint8_t *with;
        size_t len;
        const char *msg;
    } cases[] = {
        {"v", v0, sizeof v0, "field 'v': version 0 is invalid"},
        {"v", u16_over, sizeof u16_over, "field 'v': above 65535"},
        {"t", u16_over, sizeof u16_over, "field 't': above 65535"},
        {"n", u32_over, sizeof u32_over, "field 'n': above 4294967295"},
        {"s", s64, sizeof s64, "field 's': longer than 63 bytes"},
        {"s", nul, sizeof nul, "field 's': contains a NUL byte"},
    };
    char errmsg[AP_ERRMSG_SIZE];
    struct ap_wire_msg m;
    for (size_t i = 0; i < AP_ARRAY_LEN(cases); i++) {
        struct env_opts o = {.swap = cases[i].key, .with = cases[i].with, .with_len = cases[i].len};
        assert_int_equal(decode_with(&o, &m, errmsg), AP_EPROTO);
        assert_string_equal(errmsg, cases[i].msg);
    }
}

static void test_forward_compatible(void **state)
{
    (void)state;
    static const uint8_t v9[] = {0x09};
    static const uint8_t t99[] = {0x63};
    struct env_opts o = {.swap = "v", .with = v9, .with_len = 1, .extra = true};
    struct ap_wire_msg m;
    char errmsg[AP_ERRMSG_SIZE] = "";
    /* A newer version with a key we do not know decodes; the key is ignored. */
    assert_int_equal(decode_with(&o, &m, errmsg), 0);
    assert_int_equal(m.version, 9);
    /* An unknown type decodes too: callers skip it. */
    struct env_opts t = {.swap = "t", .with = t99, .with_len = 1};
    assert_int_equal(decode_with(&t, &m, errmsg), 0);
    assert_int_equal(m.type, 99);
    assert_string_equal(ap_wire_type_name(m.type), "unknown");
}

static void test_type_names(void **state)
{
    (void)state;
    assert_string_equal(ap_wire_type_name(AP_WIRE_HELLO), "hello");
    assert_string_equal(ap_wire_type_name(AP_WIRE_DELTA), "delta");
    assert_string_equal(ap_wire_type_name(AP_WIRE_ACK), "ack");
    assert_string_equal(ap_wire_type_name(AP_WIRE_HEARTBEAT), "heartbeat");
    assert_string_equal(ap_wire_type_name(AP_WIRE_RIGHTS_REQUEST), "rights_request");
    assert_string_equal(ap_wire_type_name(AP_WIRE_RIGHTS_GRANT), "rights_grant");
    assert_string_equal(ap_wire_type_name(AP_WIRE_REDIRECT), "redirect");
    assert_string_equal(ap_wire_type_name(AP_WIRE_ERROR), "error");
    assert_string_equal(ap_wire_type_name(AP_WIRE_STATE), "state");
    assert_string_equal(ap_wire_type_name(0), "unknown");
    assert_string_equal(ap_wire_type_name(10), "unknown");
}

static void test_not_a_map_and_trailing(void **state)
{
    (void)state;
    char errmsg[AP_ERRMSG_SIZE];
    struct ap_wire_msg m;
    static const uint8_t arr[] = {0x92, 0x01, 0x02};
    static const uint8_t num[] = {0x2a};
    static const uint8_t str[] = {0xa2, 'h', 'i'};
    assert_int_equal(ap_wire_decode(arr, sizeof arr, &m, errmsg), AP_EPROTO);
    assert_string_equal(errmsg, "frame is not a map");
    assert_int_equal(ap_wire_decode(num, sizeof num, &m, errmsg), AP_EPROTO);
    assert_int_equal(ap_wire_decode(str, sizeof str, &m, errmsg), AP_EPROTO);
    assert_int_equal(ap_wire_decode(arr, 0, &m, errmsg), AP_EPROTO);

    struct ap_wire_msg s = sample_msg();
    uint8_t *frame = NULL;
    size_t len = 0;
    assert_int_equal(ap_wire_encode(&s, &frame, &len), 0);
    uint8_t *more = ap_malloc(len + 3);
    assert_non_null(more);
    memcpy(more, frame, len);
    memcpy(more + len, "\x01\x02\x03", 3);
    assert_int_equal(ap_wire_decode(more + AP_WIRE_PREFIX, len + 3 - AP_WIRE_PREFIX, &m, errmsg),
                     AP_EPROTO);
    assert_string_equal(errmsg, "msgpack: 3 trailing bytes after the value");
    /* A payload over the frame limit is refused before it is parsed. */
    assert_int_equal(ap_wire_decode(frame, AP_WIRE_MAX_FRAME + 1, &m, errmsg), AP_ETOOBIG);
    ap_free(more);
    ap_free(frame);
}

static void test_truncated_every_offset(void **state)
{
    (void)state;
    struct ap_wire_msg s = sample_msg();
    uint8_t *frame = NULL;
    size_t len = 0;
    char errmsg[AP_ERRMSG_SIZE];
    assert_int_equal(ap_wire_encode(&s, &frame, &len), 0);
    const uint8_t *payload = frame + AP_WIRE_PREFIX;
    size_t plen = len - AP_WIRE_PREFIX;
    for (size_t cut = 0; cut < plen; cut++) {
        struct ap_wire_msg m;
        /* Decode a copy of exactly cut bytes, so ASan sees any read past it. */
        uint8_t *c = ap_malloc(cut + 1);
        assert_non_null(c);
        memcpy(c, payload, cut);
        assert_int_equal(ap_wire_decode(c, cut, &m, errmsg), AP_EPROTO);
        ap_free(c);
    }
    /* And a reader given the frame cut at every offset waits for more. */
    for (size_t cut = 0; cut < len; cut++) {
        struct ap_wire_reader *r = NULL;
        const uint8_t *p;
        size_t n;
        assert_int_equal(ap_wire_reader_new(0, &r), 0);
        assert_int_equal(ap_wire_reader_feed(r, frame, cut), 0);
        assert_int_equal(ap_wire_reader_next(r, &p, &n), 0);
        assert_int_equal(ap_wire_reader_pending(r), cut);
        ap_wire_reader_free(r);
    }
    ap_free(frame);
}

static void test_hostile_payloads(void **state)
{
    (void)state;
    char errmsg[AP_ERRMSG_SIZE];
    struct ap_wire_msg m;
    /* Claims of 4 billion entries, bytes, elements, in a 20-byte payload. */
    static const uint8_t map32[] = {0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, 'v', 1,    0xa1, 't',
                                    1,    0xa1, 's',  0xa0, 0xa1, 'h',  0,   0xa1, 'n',  0};
    static const uint8_t sender32[] = {0x81, 0xa1, 's', 0xdb, 0xff, 0xff, 0xff,
                                       0xff, 'a',  'b', 'c',  'd',  'e'};
    static const uint8_t body32[] = {0x81, 0xa1, 'b', 0xc6, 0xff, 0xff, 0xff, 0xff, 0, 0};
    static const uint8_t arr32[] = {0x81, 0xa1, 'x', 0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0, 0xc0};
    assert_int_equal(ap_wire_decode(map32, sizeof map32, &m, errmsg), AP_EPROTO);
    assert_non_null(strstr(errmsg, "claims"));
    assert_int_equal(ap_wire_decode(sender32, sizeof sender32, &m, errmsg), AP_EPROTO);
    assert_non_null(strstr(errmsg, "claims"));
    assert_int_equal(ap_wire_decode(body32, sizeof body32, &m, errmsg), AP_EPROTO);
    assert_non_null(strstr(errmsg, "claims"));
    assert_int_equal(ap_wire_decode(arr32, sizeof arr32, &m, errmsg), AP_EPROTO);
    assert_non_null(strstr(errmsg, "claims"));

    /* Deep nesting under an unknown key is refused, not recursed into. */
    uint8_t deep[64];
    size_t n = 0;
    deep[n++] = 0x81;
    deep[n++] = 0xa1;
    deep[n++] = 'x';
    while (n < sizeof deep - 1) {
        deep[n++] = 0x91;
    }
    deep[n++] = 0xc0;
    assert_int_equal(ap_wire_decode(deep, n, &m, errmsg), AP_EPROTO);
    assert_non_null(strstr(errmsg, "nested deeper"));
}

static void test_reader_bad_lengths(void **state)
{
    (void)state;
    struct ap_wire_reader *r = NULL;
    const uint8_t *p;
    size_t n;
    /* 4 MiB + 1 is one byte over the hard maximum. */
    static const uint8_t over[] = {0x00, 0x40, 0x00, 0x01};
    assert_int_equal(ap_wire_reader_new(0, &r), 0);
    assert_int_equal(ap_wire_reader_feed(r, over, 2), 0);
    assert_int_equal(ap_wire_reader_feed(r, over + 2, 2), AP_ETOOBIG);
    assert_string_equal(ap_wire_reader_errmsg(r),
                        "frame length 4194305 above the limit of 4194304");
    /* Refused from then on. */
    assert_int_equal(ap_wire_reader_feed(r, (const uint8_t *)"\0\0\0\1\xc0", 5), AP_ETOOBIG);
    assert_int_equal(ap_wire_reader_next(r, &p, &n), AP_ETOOBIG);
    uint8_t *room;
    assert_int_equal(ap_wire_reader_prepare(r, 10, &room, &n), AP_ETOOBIG);
    ap_wire_reader_free(r);

    static const uint8_t zero[] = {0, 0, 0, 0};
    assert_int_equal(ap_wire_reader_new(0, &r), 0);
    assert_int_equal(ap_wire_reader_feed(r, zero, sizeof zero), AP_EPROTO);
    assert_string_equal(ap_wire_reader_errmsg(r), "frame length 0");
    assert_int_equal(ap_wire_reader_next(r, &p, &n), AP_EPROTO);
    ap_wire_reader_free(r);

    /* A caller's smaller limit applies; the length at the limit is fine. */
    static const uint8_t at[] = {0, 0, 0x04, 0x00};
    static const uint8_t above[] = {0, 0, 0x04, 0x01};
    assert_int_equal(ap_wire_reader_new(1024, &r), 0);
    assert_int_equal(ap_wire_reader_feed(r, at, sizeof at), 0);
    ap_wire_reader_free(r);
    assert_int_equal(ap_wire_reader_new(1024, &r), 0);
    assert_int_equal(ap_wire_reader_feed(r, above, sizeof above), AP_ETOOBIG);
    ap_wire_reader_free(r);
}

/* Encode count frames whose hlc is their index, back to back in one buffer. */
static uint8_t *many_frames(size_t count, size_t *total)
{
    uint8_t *all = NULL;
    *total = 0;
    for (size_t i = 0; i < count; i++) {
        struct ap_wire_msg m = sample_msg();
        m.hlc = i;
        uint8_t *f = NULL;
        size_t len = 0;
        assert_int_equal(ap_wire_encode(&m, &f, &len), 0);
        uint8_t *grown = ap_realloc(all, *total + len);
        assert_non_null(grown);
        all = grown;
        memcpy(all + *total, f, len);
        *total += len;
        ap_free(f);
    }
    return all;
}

/* Take every frame the reader has, check each is the next in sequence. */
static void drain(struct ap_wire_reader *r, uint64_t *next_hlc)
{
    const uint8_t *p;
    size_t n;
    int rc;
    while ((rc = ap_wire_reader_next(r, &p, &n)) == 1) {
        struct ap_wire_msg m;
        char errmsg[AP_ERRMSG_SIZE];
        assert_int_equal(ap_wire_decode(p, n, &m, errmsg), 0);
        assert_true(m.hlc == *next_hlc);
        assert_memory_equal(m.body, sample_body, sizeof sample_body);
        (*next_hlc)++;
    }
    assert_int_equal(rc, 0);
}

static void test_reader_one_byte_at_a_time(void **state)
{
    (void)state;
    size_t total = 0;
    uint8_t *all = many_frames(5, &total);
    struct ap_wire_reader *r = NULL;
    assert_int_equal(ap_wire_reader_new(0, &r), 0);
    uint64_t next = 0;
    for (size_t i = 0; i < total; i++) {
        assert_int_equal(ap_wire_reader_feed(r, all + i, 1), 0);
        drain(r, &next);
    }
    assert_int_equal(next, 5);
    assert_int_equal(ap_wire_reader_pending(r), 0);
    ap_wire_reader_free(r);
    ap_free(all);
}

static void test_reader_many_in_one_chunk(void **state)
{
    (void)state;
    size_t total = 0;
    uint8_t *all = many_frames(500, &total);
    struct ap_wire_reader *r = NULL;
    assert_int_equal(ap_wire_reader_new(0, &r), 0);
    uint64_t next = 0;
    assert_int_equal(ap_wire_reader_feed(r, all, total), 0);
    drain(r, &next);
    assert_int_equal(next, 500);
    assert_int_equal(ap_wire_reader_pending(r), 0);

    /* Uneven chunks through prepare/commit, as a socket delivers them. */
    next = 0;
    size_t off = 0;
    for (size_t step = 1; off < total; step = step * 7 % 97 + 1) {
        uint8_t *room;
        size_t room_len;
        assert_int_equal(ap_wire_reader_prepare(r, step, &room, &room_len), 0);
        assert_true(room_len >= step);
        size_t n = total - off < step ? total - off : step;
        memcpy(room, all + off, n);
        assert_int_equal(ap_wire_reader_commit(r, n), 0);
        off += n;
        drain(r, &next);
    }
    assert_int_equal(next, 500);
    ap_wire_reader_free(r);
    ap_free(all);
}

static void test_reader_good_frame_before_bad_one(void **state)
{
    (void)state;
    size_t total = 0;
    uint8_t *all = many_frames(1, &total);
    uint8_t *buf = ap_malloc(total + 4);
    assert_non_null(buf);
    memcpy(buf, all, total);
    memcpy(buf + total, "\xff\xff\xff\xff", 4);
    struct ap_wire_reader *r = NULL;
    assert_int_equal(ap_wire_reader_new(0, &r), 0);
    assert_int_equal(ap_wire_reader_feed(r, buf, total + 4), 0);
    const uint8_t *p;
    size_t n;
    /* The whole frame that came first is still delivered. */
    assert_int_equal(ap_wire_reader_next(r, &p, &n), 1);
    assert_int_equal(n, total - AP_WIRE_PREFIX);
    assert_int_equal(ap_wire_reader_next(r, &p, &n), AP_ETOOBIG);
    ap_wire_reader_free(r);
    ap_free(buf);
    ap_free(all);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_encode_refuses),
        cmocka_unit_test(test_builder_baseline),
        cmocka_unit_test(test_missing_fields),
        cmocka_unit_test(test_wrong_types),
        cmocka_unit_test(test_out_of_range),
        cmocka_unit_test(test_forward_compatible),
        cmocka_unit_test(test_type_names),
        cmocka_unit_test(test_not_a_map_and_trailing),
        cmocka_unit_test(test_truncated_every_offset),
        cmocka_unit_test(test_hostile_payloads),
        cmocka_unit_test(test_reader_bad_lengths),
        cmocka_unit_test(test_reader_one_byte_at_a_time),
        cmocka_unit_test(test_reader_many_in_one_chunk),
        cmocka_unit_test(test_reader_good_frame_before_bad_one),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
