/* Unit tests for uuid: UUIDv7 text form, version/variant, time, monotonic generator, validation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "ap/err.h"
#include "ap/uuid.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#define N_IDS 10000

/* The checks a user of an id would make on its text. */
static void check_v7_text(const char *id)
{
    assert_int_equal(strlen(id), AP_UUID_STR_LEN);
    for (size_t i = 0; i < AP_UUID_STR_LEN; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            assert_int_equal(id[i], '-');
        } else {
            assert_true((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f'));
        }
    }
    /* Version 7: the top nibble of byte 6. */
    assert_int_equal(id[14], '7');
    /* Variant 0b10: the top two bits of byte 8, so the digit is 8, 9, a or b. */
    assert_non_null(strchr("89ab", id[19]));
    assert_true(ap_uuid_valid(id));
    assert_true(ap_uuid_is_v7(id));
}

static void test_format(void **state)
{
    (void)state;
    char id[AP_UUID_STR_LEN + 1];
    assert_int_equal(ap_uuid_v7(id), 0);
    check_v7_text(id);

    /* The time in it is now, give or take a clock tick. */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t now_ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    uint64_t t = ap_uuid_v7_time(id);
    assert_true(t <= now_ms && now_ms - t < 5000);

    /* Two stateless ids of the same ms still differ (74 random bits). */
    char other[AP_UUID_STR_LEN + 1];
    assert_int_equal(ap_uuid_v7_at(1234, id), 0);
    assert_int_equal(ap_uuid_v7_at(1234, other), 0);
    check_v7_text(id);
    check_v7_text(other);
    assert_string_not_equal(id, other);
}

static void test_time_round_trip(void **state)
{
    (void)state;
    static const uint64_t times[] = {
        0, 1, 255, 256, UINT64_C(1645557742000), UINT64_C(1700000000123), AP_UUID_MS_MAX,
    };
    char id[AP_UUID_STR_LEN + 1];
    struct ap_uuid_gen gen;
    assert_int_equal(ap_uuid_gen_init(&gen), 0);
    for (size_t i = 0; i < sizeof times / sizeof times[0]; i++) {
        assert_int_equal(ap_uuid_v7_at(times[i], id), 0);
        check_v7_text(id);
        assert_int_equal(ap_uuid_v7_time(id), times[i]);
        assert_int_equal(ap_uuid_gen_next(&gen, times[i], id), 0);
        check_v7_text(id);
        assert_int_equal(ap_uuid_v7_time(id), times[i]);
    }
    /* The time is the leading 48 bits, big-endian. */
    assert_int_equal(ap_uuid_v7_at(UINT64_C(0x0123456789ab), id), 0);
    assert_memory_equal(id, "01234567-89ab-7", 15);

    /* RFC 9562 appendix A.6's example, lowercased. */
    assert_int_equal(ap_uuid_v7_time("017f22e2-79b0-7cc3-98c4-dc0c0c07398f"),
                     UINT64_C(1645557742000));

    /* Out of the 48-bit range. */
    assert_int_equal(ap_uuid_v7_at(AP_UUID_MS_MAX + 1, id), AP_EINVAL);
    assert_string_equal(id, "");
    assert_int_equal(ap_uuid_gen_next(&gen, AP_UUID_MS_MAX + 1, id), AP_EINVAL);
    assert_string_equal(id, "");
}

static int cmp_ids(const void *a, const void *b)
{
    return strcmp((const char *)a, (const char *)b);
}

static void test_same_ms_unique_and_sorted(void **state)
{
    (void)state;
    char(*ids)[AP_UUID_STR_LEN + 1] = malloc(N_IDS * sizeof *ids);
    assert_non_null(ids);
    struct ap_uuid_gen gen;
    assert_int_equal(ap_uuid_gen_init(&gen), 0);
    const uint64_t ms = UINT64_C(1700000000000);
    for (int i = 0; i < N_IDS; i++) {
        assert_int_equal(ap_uuid_gen_next(&gen, ms, ids[i]), 0);
        check_v7_text(ids[i]);
        assert_int_equal(ap_uuid_v7_time(ids[i]), ms);
        if (i > 0) {
            /* Strictly increasing in generation order: sorted and unique. */
            assert_true(strcmp(ids[i - 1], ids[i]) < 0);
        }
    }

    /* Stateless ids of one ms are not ordered but are still all distinct. */
    for (int i = 0; i < N_IDS; i++) {
        assert_int_equal(ap_uuid_v7_at(ms, ids[i]), 0);
    }
    qsort(ids, N_IDS, sizeof *ids, cmp_ids);
    for (int i = 1; i < N_IDS; i++) {
        assert_true(strcmp(ids[i - 1], ids[i]) < 0);
    }
    free(ids);
}

static void test_generator_clock_steps(void **state)
{
    (void)state;
    char a[AP_UUID_STR_LEN + 1], b[AP_UUID_STR_LEN + 1];
    struct ap_uuid_gen gen;
    assert_int_equal(ap_uuid_gen_init(&gen), 0);

    /* Later ms: later id, with that ms. */
    assert_int_equal(ap_uuid_gen_next(&gen, 5000, a), 0);
    assert_int_equal(ap_uuid_gen_next(&gen, 5001, b), 0);
    assert_true(strcmp(a, b) < 0);
    assert_int_equal(ap_uuid_v7_time(b), 5001);

    /* The wall clock steps back: ids keep increasing, in the last ms. */
    assert_int_equal(ap_uuid_gen_next(&gen, 4000, a), 0);
    assert_true(strcmp(b, a) < 0);
    assert_int_equal(ap_uuid_v7_time(a), 5001);

    /* The counter of one ms runs out: the time moves on by 1 ms. */
    gen.counter = (UINT64_C(1) << 42) - 1;
    assert_int_equal(ap_uuid_gen_next(&gen, 5001, b), 0);
    assert_true(strcmp(a, b) < 0);
    assert_int_equal(ap_uuid_v7_time(b), 5002);
    check_v7_text(b);
}

static void test_validation(void **state)
{
    (void)state;
    assert_true(ap_uuid_valid("017f22e2-79b0-7cc3-98c4-dc0c0c07398f"));
    /* A version 4 id is a valid UUID but not a v7. */
    assert_true(ap_uuid_valid("550e8400-e29b-41d4-a716-446655440000"));
    assert_false(ap_uuid_is_v7("550e8400-e29b-41d4-a716-446655440000"));
    assert_int_equal(ap_uuid_v7_time("550e8400-e29b-41d4-a716-446655440000"), 0);
    /* Version 7 but variant 0b11 (Microsoft's reserved range). */
    assert_true(ap_uuid_valid("017f22e2-79b0-7cc3-c8c4-dc0c0c07398f"));
    assert_false(ap_uuid_is_v7("017f22e2-79b0-7cc3-c8c4-dc0c0c07398f"));

    static const char *const bad[] = {
        "",
        "017f22e2",
        "017F22E2-79B0-7CC3-98C4-DC0C0C07398F",
        "017f22e2-79b0-7cc3-98c4-dc0c0c07398",
        "017f22e2-79b0-7cc3-98c4-dc0c0c07398f0",
        "017f22e2-79b0-7cc3-98c4-dc0c0c07398f ",
        " 017f22e2-79b0-7cc3-98c4-dc0c0c07398f",
        "017f22e279b07cc398c4dc0c0c07398f",
        "017f22e2-79b07-cc3-98c4-dc0c0c07398f",
        "017f22e2_79b0_7cc3_98c4_dc0c0c07398f",
        "017f22e2-79b0-7cc3-98c4-dc0c0c07398g",
        "{017f22e2-79b0-7cc3-98c4-dc0c0c07398f}",
        "urn:uuid:017f22e2-79b0-7cc3-98c4-dc0c0c07398f",
        "017f22e2-79b0-7cc3-98c4-dc0c0c0739-f",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_false(ap_uuid_valid(bad[i]));
        assert_false(ap_uuid_is_v7(bad[i]));
        assert_int_equal(ap_uuid_v7_time(bad[i]), 0);
    }
    assert_false(ap_uuid_valid(NULL));
    assert_int_equal(ap_uuid_v7_time(NULL), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_format),
        cmocka_unit_test(test_time_round_trip),
        cmocka_unit_test(test_same_ms_unique_and_sorted),
        cmocka_unit_test(test_generator_clock_steps),
        cmocka_unit_test(test_validation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
