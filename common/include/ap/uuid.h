/* uuid: UUIDv7 ids (RFC 9562) made locally, monotonic within one generator. */
#ifndef AP_UUID_H
#define AP_UUID_H

#include <stdbool.h>
#include <stdint.h>

/** Length of the text form "xxxxxxxx-xxxx-7xxx-yxxx-xxxxxxxxxxxx", terminator excluded. */
#define AP_UUID_STR_LEN 36

/** Largest unix ms a UUIDv7 can hold (48 bits, year 10889). */
#define AP_UUID_MS_MAX ((UINT64_C(1) << 48) - 1)

/**
 * Monotonic generator state (RFC 9562 section 6.2, method 1): a 42-bit
 * counter sits right after the timestamp, in rand_a (12 bits) and the top
 * 30 bits of rand_b; the last 32 bits are fresh random for every id. The
 * counter starts at a random value below 2^41 in each new ms and counts up
 * within it, so ids from one generator sort in the order they were made.
 * The caller owns and embeds it (one per daemon, used on the loop thread);
 * the fields belong to this module.
 */
struct ap_uuid_gen {
    uint64_t last_ms; /* timestamp of the last id; never goes back */
    uint64_t counter; /* 42-bit counter of the last id */
    bool started;     /* false until the first id */
};

/**
 * Initialize a generator and libsodium (sodium_init(), idempotent).
 * Returns 0, or AP_EIO when libsodium cannot initialize (no entropy).
 */
int ap_uuid_gen_init(struct ap_uuid_gen *gen);

/**
 * Write the next id for time unix_ms into out (36 lowercase characters and
 * a terminator). The id is greater (as text and as bytes) than every id
 * this generator made before: if unix_ms is behind the last id's time (the
 * wall clock stepped back) the last time is reused, and if the counter of
 * one ms is exhausted the time moves on by 1 ms. ap_uuid_v7_time can thus
 * return a little more than unix_ms. Returns 0, or AP_EINVAL when unix_ms
 * exceeds AP_UUID_MS_MAX or the generator ran past it (out is then "").
 * Call ap_uuid_gen_init first.
 */
int ap_uuid_gen_next(struct ap_uuid_gen *gen, uint64_t unix_ms, char out[AP_UUID_STR_LEN + 1]);

/**
 * Stateless helper: a fresh UUIDv7 for the current CLOCK_REALTIME time,
 * with 74 random bits (no ordering among ids of the same ms). Returns 0,
 * or AP_EIO when libsodium or the clock fails (out is then "").
 */
int ap_uuid_v7(char out[AP_UUID_STR_LEN + 1]);

/**
 * Like ap_uuid_v7 with the time given, for tests and replays. Returns 0,
 * AP_EINVAL when unix_ms exceeds AP_UUID_MS_MAX, or AP_EIO when libsodium
 * fails (out is then "").
 */
int ap_uuid_v7_at(uint64_t unix_ms, char out[AP_UUID_STR_LEN + 1]);

/**
 * Whether s is a UUID in canonical text form: 36 characters, lowercase hex
 * in groups 8-4-4-4-12 separated by '-'. Uppercase is refused so that one
 * id has one spelling in database keys (lowercase user input first).
 * Version and variant are not checked (see ap_uuid_is_v7). NULL is invalid.
 */
bool ap_uuid_valid(const char *s);

/** Whether s is valid (ap_uuid_valid) with version 7 and variant 0b10. */
bool ap_uuid_is_v7(const char *s);

/** The unix ms of a UUIDv7, or 0 when s is not one (ap_uuid_is_v7). */
uint64_t ap_uuid_v7_time(const char *s);

#endif
