/* Unit tests for hlc: monotonicity, causality under skew, max offset, encodings, order. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "ap/err.h"
#include "ap/hlc.h"

#include <stdbool.h>
#include <string.h>

/* A wall clock the test moves by hand. */
struct fake_wall {
    uint64_t ms;
};

static uint64_t fake_wall_read(void *data)
{
    return ((struct fake_wall *)data)->ms;
}

/* splitmix64: a seeded generator so a failure replays exactly. */
static uint64_t next_rand(uint64_t *state)
{
    uint64_t z = (*state += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static struct ap_hlc *make_clock(uint32_t node, uint64_t max_offset, struct fake_wall *wall)
{
    struct ap_hlc *c = NULL;
    assert_int_equal(ap_hlc_new(&c, node, max_offset, fake_wall_read, wall), 0);
    assert_non_null(c);
    return c;
}

static void test_new_args(void **state)
{
    (void)state;
    struct ap_hlc *c = NULL;
    struct fake_wall wall = {1000};
    assert_int_equal(ap_hlc_new(NULL, 1, 0, fake_wall_read, &wall), AP_EINVAL);
    assert_int_equal(ap_hlc_new(&c, 1, 0, NULL, &wall), AP_EINVAL);
    assert_null(c);
    ap_hlc_free(NULL);

    c = make_clock(42, 0, &wall);
    assert_int_equal(ap_hlc_node(c), 42);
    assert_int_equal(ap_hlc_last(c).physical_ms, 0);
    assert_string_equal(ap_hlc_errmsg(c), "");
    ap_hlc_free(c);

    /* The real wall clock reads some time after 2020-01-01. */
    assert_true(ap_hlc_wall_realtime(NULL) > UINT64_C(1577836800000));
}

static void test_now_follows_wall(void **state)
{
    (void)state;
    struct fake_wall wall = {1000};
    struct ap_hlc *c = make_clock(7, 0, &wall);

    struct ap_hlc_ts t = ap_hlc_now(c);
    assert_int_equal(t.physical_ms, 1000);
    assert_int_equal(t.logical, 0);
    assert_int_equal(t.node, 7);

    /* Same ms: the logical part counts. */
    t = ap_hlc_now(c);
    assert_int_equal(t.physical_ms, 1000);
    assert_int_equal(t.logical, 1);

    /* The wall moves on: physical follows and logical resets. */
    wall.ms = 1005;
    t = ap_hlc_now(c);
    assert_int_equal(t.physical_ms, 1005);
    assert_int_equal(t.logical, 0);
    ap_hlc_free(c);
}

static void test_monotonic_under_backwards_wall(void **state)
{
    (void)state;
    uint64_t seed = 1;
    struct fake_wall wall = {UINT64_C(1700000000000)};
    struct ap_hlc *c = make_clock(3, 0, &wall);

    /* A big jump back first: nothing may go below what was issued. */
    struct ap_hlc_ts prev = ap_hlc_now(c);
    wall.ms -= 3600 * 1000;
    struct ap_hlc_ts t = ap_hlc_now(c);
    assert_int_equal(ap_hlc_compare(t, prev), 1);
    assert_int_equal(t.physical_ms, prev.physical_ms);
    assert_int_equal(t.logical, prev.logical + 1);
    prev = t;

    for (int i = 0; i < 20000; i++) {
        /* Steps of -50..+49 ms, so the wall often goes back or stalls. */
        int64_t step = (int64_t)(next_rand(&seed) % 100) - 50;
        wall.ms = (uint64_t)((int64_t)wall.ms + step);
        t = ap_hlc_now(c);
        assert_int_equal(ap_hlc_compare(t, prev), 1);
        assert_true(t.physical_ms >= wall.ms);
        assert_int_equal(t.node, 3);
        prev = t;
    }
    ap_hlc_free(c);
}

/*
 * A message from `from` to `to`: the receive stamp is above the send stamp,
 * and the receiver's next stamp is above the receive stamp.
 */
static void check_message(struct ap_hlc *from, struct ap_hlc *to)
{
    struct ap_hlc_ts sent = ap_hlc_now(from);
    struct ap_hlc_ts received;
    assert_int_equal(ap_hlc_update(to, sent, &received), 0);
    assert_int_equal(ap_hlc_compare(received, sent), 1);
    assert_int_equal(received.node, ap_hlc_node(to));
    struct ap_hlc_ts next = ap_hlc_now(to);
    assert_int_equal(ap_hlc_compare(next, received), 1);
}

static void test_causality_with_skew(void **state)
{
    (void)state;
    uint64_t seed = 99;
    /* A's clock runs 5 s ahead of B's; both drift and sometimes step back. */
    struct fake_wall wall_a = {UINT64_C(1700000005000)};
    struct fake_wall wall_b = {UINT64_C(1700000000000)};
    struct ap_hlc *a = make_clock(1, 10000, &wall_a);
    struct ap_hlc *b = make_clock(2, 10000, &wall_b);

    /* The simplest case: B's wall is behind A's send stamp. */
    check_message(a, b);
    check_message(b, a);

    struct ap_hlc_ts last_b = ap_hlc_last(b);
    for (int i = 0; i < 5000; i++) {
        uint64_t r = next_rand(&seed);
        wall_a.ms += r % 7;
        wall_b.ms += (r >> 8) % 7;
        if ((r >> 16) % 50 == 0) {
            wall_b.ms -= 20; /* an NTP step back */
        }
        if ((r >> 24) % 2 == 0) {
            check_message(a, b);
        } else {
            check_message(b, a);
        }
        /* Every stamp B issues, sends and receives alike, is above the last. */
        assert_int_equal(ap_hlc_compare(ap_hlc_last(b), last_b), 1);
        last_b = ap_hlc_last(b);
    }

    /* A chain A -> B -> A: A's reply-receive stamp is above its own first send. */
    struct ap_hlc_ts a_send = ap_hlc_now(a);
    struct ap_hlc_ts b_recv, a_recv;
    assert_int_equal(ap_hlc_update(b, a_send, &b_recv), 0);
    struct ap_hlc_ts b_send = ap_hlc_now(b);
    assert_int_equal(ap_hlc_update(a, b_send, &a_recv), 0);
    assert_int_equal(ap_hlc_compare(a_recv, b_send), 1);
    assert_int_equal(ap_hlc_compare(b_send, a_send), 1);
    ap_hlc_free(a);
    ap_hlc_free(b);
}

static void test_max_offset_rejection(void **state)
{
    (void)state;
    struct fake_wall wall = {10000};
    struct ap_hlc *c = make_clock(1, 500, &wall);
    struct ap_hlc_ts before = ap_hlc_now(c);

    /* 501 ms ahead: rejected, clock untouched, message says by how much. */
    struct ap_hlc_ts remote = {.physical_ms = 10501, .logical = 4, .node = 9};
    struct ap_hlc_ts out = {.physical_ms = 77, .logical = 0, .node = 0};
    assert_int_equal(ap_hlc_update(c, remote, &out), AP_EINVAL);
    assert_int_equal(out.physical_ms, 77);
    assert_int_equal(ap_hlc_compare(ap_hlc_last(c), before), 0);
    assert_non_null(strstr(ap_hlc_errmsg(c), "501 ms ahead"));
    assert_non_null(strstr(ap_hlc_errmsg(c), "node 9"));
    struct ap_hlc_ts t = ap_hlc_now(c);
    assert_int_equal(t.physical_ms, 10000);
    assert_int_equal(t.logical, before.logical + 1);

    /* Far beyond the 48-bit range: rejected too. */
    remote.physical_ms = UINT64_MAX;
    assert_int_equal(ap_hlc_update(c, remote, NULL), AP_EINVAL);

    /* Exactly the max offset ahead: accepted, and the clock jumps to it. */
    remote.physical_ms = 10500;
    assert_int_equal(ap_hlc_update(c, remote, &out), 0);
    assert_int_equal(out.physical_ms, 10500);
    assert_int_equal(out.logical, 5);
    assert_int_equal(out.node, 1);

    /* A remote stamp behind the wall is always fine. */
    remote.physical_ms = 1;
    assert_int_equal(ap_hlc_update(c, remote, NULL), 0);
    assert_int_equal(ap_hlc_compare(ap_hlc_last(c), out), 1);
    ap_hlc_free(c);
}

static void test_logical_overflow(void **state)
{
    (void)state;
    struct fake_wall wall = {1000};
    struct ap_hlc *c = make_clock(5, 100, &wall);

    struct ap_hlc_ts seen = {.physical_ms = 1000, .logical = AP_HLC_LOGICAL_MAX - 1, .node = 5};
    ap_hlc_observe(c, seen);
    struct ap_hlc_ts t = ap_hlc_now(c);
    assert_int_equal(t.physical_ms, 1000);
    assert_int_equal(t.logical, AP_HLC_LOGICAL_MAX);
    t = ap_hlc_now(c);
    assert_int_equal(t.physical_ms, 1001);
    assert_int_equal(t.logical, 0);
    t = ap_hlc_now(c);
    assert_int_equal(t.physical_ms, 1001);
    assert_int_equal(t.logical, 1);

    /* Receiving a stamp with a full counter spills the same way. */
    struct ap_hlc_ts remote = {.physical_ms = 1050, .logical = AP_HLC_LOGICAL_MAX, .node = 8};
    assert_int_equal(ap_hlc_update(c, remote, &t), 0);
    assert_int_equal(t.physical_ms, 1051);
    assert_int_equal(t.logical, 0);
    assert_int_equal(ap_hlc_compare(t, remote), 1);

    /* Counting through a whole ms of logical values stays strictly increasing. */
    struct ap_hlc_ts prev = t;
    for (int i = 0; i < 70000; i++) {
        t = ap_hlc_now(c);
        assert_int_equal(ap_hlc_compare(t, prev), 1);
        prev = t;
    }
    assert_int_equal(t.physical_ms, 1052);
    ap_hlc_free(c);
}

static void test_observe_after_restart(void **state)
{
    (void)state;
    /* Before the restart the clock had issued stamps at 5000 ms... */
    struct ap_hlc_ts persisted = {.physical_ms = 5000, .logical = 12, .node = 4};
    /* ...and after it the wall reads 4000 (it was stepped back meanwhile). */
    struct fake_wall wall = {4000};
    struct ap_hlc *c = make_clock(4, 100, &wall);
    ap_hlc_observe(c, persisted);
    struct ap_hlc_ts t = ap_hlc_now(c);
    assert_int_equal(ap_hlc_compare(t, persisted), 1);
    assert_int_equal(t.physical_ms, 5000);
    assert_int_equal(t.logical, 13);

    /* A later stamp in the same ms (another replica's write) counts too. */
    struct ap_hlc_ts same_ms = {.physical_ms = 5000, .logical = 40, .node = 9};
    ap_hlc_observe(c, same_ms);
    t = ap_hlc_now(c);
    assert_int_equal(t.physical_ms, 5000);
    assert_int_equal(t.logical, 41);
    assert_int_equal(t.node, 4);

    /* Observing something older changes nothing. */
    struct ap_hlc_ts old = {.physical_ms = 10, .logical = 0, .node = 4};
    ap_hlc_observe(c, old);
    assert_int_equal(ap_hlc_compare(ap_hlc_last(c), t), 0);
    ap_hlc_free(c);
}

static void test_pack_unpack(void **state)
{
    (void)state;
    struct ap_hlc_ts ts = {.physical_ms = UINT64_C(1700000000123), .logical = 42, .node = 77};
    uint64_t p = ap_hlc_pack(ts);
    assert_int_equal(p, (UINT64_C(1700000000123) << 16) | 42);
    struct ap_hlc_ts back = ap_hlc_unpack(p, 77);
    assert_int_equal(ap_hlc_compare(back, ts), 0);

    struct ap_hlc_ts top = {.physical_ms = AP_HLC_PHYSICAL_MAX, .logical = 0xffff, .node = 1};
    assert_int_equal(ap_hlc_pack(top), UINT64_MAX);
    assert_int_equal(ap_hlc_compare(ap_hlc_unpack(UINT64_MAX, 1), top), 0);

    /* Packed integers sort like the stamps when the node is equal. */
    uint64_t seed = 7;
    for (int i = 0; i < 2000; i++) {
        struct ap_hlc_ts a = ap_hlc_unpack(next_rand(&seed) >> (next_rand(&seed) % 40), 1);
        struct ap_hlc_ts b = ap_hlc_unpack(next_rand(&seed) >> (next_rand(&seed) % 40), 1);
        assert_int_equal(ap_hlc_compare(ap_hlc_unpack(ap_hlc_pack(a), 1), a), 0);
        int want = ap_hlc_compare(a, b);
        uint64_t pa = ap_hlc_pack(a), pb = ap_hlc_pack(b);
        assert_int_equal(want, pa < pb ? -1 : (pa > pb ? 1 : 0));
    }
}

static void test_format_parse(void **state)
{
    (void)state;
    char buf[AP_HLC_STR_SIZE];
    struct ap_hlc_ts ts = {.physical_ms = UINT64_C(1700000000000), .logical = 3, .node = 7};
    assert_int_equal(ap_hlc_format(ts, buf, sizeof buf), (int)strlen("1700000000000.3@7"));
    assert_string_equal(buf, "1700000000000.3@7");
    struct ap_hlc_ts back;
    assert_int_equal(ap_hlc_parse(buf, &back), 0);
    assert_int_equal(ap_hlc_compare(back, ts), 0);

    /* The widest stamp fits AP_HLC_STR_SIZE and round-trips. */
    struct ap_hlc_ts top = {
        .physical_ms = AP_HLC_PHYSICAL_MAX, .logical = 65535, .node = UINT32_MAX};
    assert_true(ap_hlc_format(top, buf, sizeof buf) > 0);
    assert_string_equal(buf, "281474976710655.65535@4294967295");
    assert_int_equal(ap_hlc_parse(buf, &back), 0);
    assert_int_equal(ap_hlc_compare(back, top), 0);

    struct ap_hlc_ts zero = {0, 0, 0};
    assert_int_equal(ap_hlc_format(zero, buf, sizeof buf), 5);
    assert_string_equal(buf, "0.0@0");

    /* A buffer too small is refused, and left terminated. */
    char small[6];
    assert_int_equal(ap_hlc_format(ts, small, sizeof small), AP_ETOOBIG);
    assert_string_equal(small, "");

    /* Random round trips. */
    uint64_t seed = 5;
    for (int i = 0; i < 2000; i++) {
        uint64_t r = next_rand(&seed);
        struct ap_hlc_ts t = ap_hlc_unpack(r, (uint32_t)next_rand(&seed));
        assert_true(ap_hlc_format(t, buf, sizeof buf) > 0);
        assert_int_equal(ap_hlc_parse(buf, &back), 0);
        assert_int_equal(ap_hlc_compare(back, t), 0);
    }

    /* Bad text is rejected and leaves *out alone. */
    static const char *const bad[] = {
        "",
        "1",
        "1.2",
        "1.2@",
        "1@2",
        ".2@3",
        "1.@3",
        "a.2@3",
        "1.2@3x",
        " 1.2@3",
        "1.2@3 ",
        "-1.2@3",
        "+1.2@3",
        "1..2@3",
        "1.2@@3",
        "1.65536@3",
        "1.2@4294967296",
        "281474976710656.0@0",
        "99999999999999999999999.0@0",
        "1,2@3",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct ap_hlc_ts keep = {.physical_ms = 11, .logical = 22, .node = 33};
        assert_int_equal(ap_hlc_parse(bad[i], &keep), AP_EINVAL);
        assert_int_equal(keep.physical_ms, 11);
        assert_int_equal(keep.logical, 22);
        assert_int_equal(keep.node, 33);
    }
    assert_int_equal(ap_hlc_parse(NULL, &back), AP_EINVAL);
    assert_int_equal(ap_hlc_parse("1.2@3", NULL), AP_EINVAL);
}

/* A random stamp from a small domain, so that ties in each field are common. */
static struct ap_hlc_ts small_stamp(uint64_t *seed)
{
    uint64_t r = next_rand(seed);
    struct ap_hlc_ts ts = {
        .physical_ms = r % 3,
        .logical = (uint16_t)((r >> 8) % 3),
        .node = (uint32_t)((r >> 16) % 3),
    };
    return ts;
}

static void test_compare_total_order(void **state)
{
    (void)state;
    uint64_t seed = 2024;
    for (int i = 0; i < 20000; i++) {
        struct ap_hlc_ts a = small_stamp(&seed);
        struct ap_hlc_ts b = small_stamp(&seed);
        struct ap_hlc_ts c = small_stamp(&seed);
        int ab = ap_hlc_compare(a, b);
        assert_true(ab >= -1 && ab <= 1);
        /* Reflexive, antisymmetric, and equal only when every field is. */
        assert_int_equal(ap_hlc_compare(a, a), 0);
        assert_int_equal(ap_hlc_compare(b, a), -ab);
        bool same = a.physical_ms == b.physical_ms && a.logical == b.logical && a.node == b.node;
        assert_int_equal(ab == 0, same);
        /* Transitive. */
        if (ab <= 0 && ap_hlc_compare(b, c) <= 0) {
            assert_true(ap_hlc_compare(a, c) <= 0);
        }
    }
    /* Field precedence: physical beats logical beats node. */
    struct ap_hlc_ts x = {.physical_ms = 2, .logical = 0, .node = 0};
    struct ap_hlc_ts y = {.physical_ms = 1, .logical = 9, .node = 9};
    assert_int_equal(ap_hlc_compare(x, y), 1);
    x = (struct ap_hlc_ts){.physical_ms = 1, .logical = 2, .node = 0};
    y = (struct ap_hlc_ts){.physical_ms = 1, .logical = 1, .node = 9};
    assert_int_equal(ap_hlc_compare(x, y), 1);
    x = (struct ap_hlc_ts){.physical_ms = 1, .logical = 1, .node = 1};
    assert_int_equal(ap_hlc_compare(x, y), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_args),
        cmocka_unit_test(test_now_follows_wall),
        cmocka_unit_test(test_monotonic_under_backwards_wall),
        cmocka_unit_test(test_causality_with_skew),
        cmocka_unit_test(test_max_offset_rejection),
        cmocka_unit_test(test_logical_overflow),
        cmocka_unit_test(test_observe_after_restart),
        cmocka_unit_test(test_pack_unpack),
        cmocka_unit_test(test_format_parse),
        cmocka_unit_test(test_compare_total_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
