/* uuid: UUIDv7 ids (RFC 9562) made locally, monotonic within one generator. */
#include "ap/uuid.h"

#include "ap/base.h"
#include "ap/err.h"

#include <sodium.h>
#include <string.h>
#include <time.h>

#define COUNTER_BITS 42
#define COUNTER_MAX  ((UINT64_C(1) << COUNTER_BITS) - 1)
/* A new ms starts the counter below 2^41, leaving at least 2^41 ids of room. */
#define COUNTER_SEED_MASK ((UINT64_C(1) << (COUNTER_BITS - 1)) - 1)

static int sodium_ready(void)
{
    /* 0: initialized now, 1: already was; -1: failed. */
    return sodium_init() < 0 ? AP_EIO : 0;
}

static uint64_t random_u64(void)
{
    uint64_t v;
    randombytes_buf(&v, sizeof v);
    return v;
}

/*
 * RFC 9562 section 5.7 layout: 48-bit big-endian unix ms, version 7 in the
 * top nibble of byte 6, variant 0b10 in the top bits of byte 8. The other 74
 * bits come from the low 42 bits of rand_hi (rand_a, then the top 30 bits of
 * rand_b: the generator's counter) and the low 32 bits of rand_lo.
 */
static void layout(uint8_t b[16], uint64_t unix_ms, uint64_t rand_hi, uint64_t rand_lo)
{
    for (int i = 0; i < 6; i++) {
        b[i] = (uint8_t)(unix_ms >> (40 - 8 * i));
    }
    b[6] = (uint8_t)(0x70 | ((rand_hi >> 38) & 0x0f));
    b[7] = (uint8_t)(rand_hi >> 30);
    b[8] = (uint8_t)(0x80 | ((rand_hi >> 24) & 0x3f));
    b[9] = (uint8_t)(rand_hi >> 16);
    b[10] = (uint8_t)(rand_hi >> 8);
    b[11] = (uint8_t)rand_hi;
    for (int i = 0; i < 4; i++) {
        b[12 + i] = (uint8_t)(rand_lo >> (24 - 8 * i));
    }
}

static void to_text(const uint8_t b[16], char out[AP_UUID_STR_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    size_t pos = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) {
            out[pos++] = '-';
        }
        out[pos++] = hex[b[i] >> 4];
        out[pos++] = hex[b[i] & 0x0f];
    }
    out[pos] = '\0';
}

int ap_uuid_gen_init(struct ap_uuid_gen *gen)
{
    memset(gen, 0, sizeof *gen);
    return sodium_ready();
}

int ap_uuid_gen_next(struct ap_uuid_gen *gen, uint64_t unix_ms, char out[AP_UUID_STR_LEN + 1])
{
    if (unix_ms > AP_UUID_MS_MAX) {
        out[0] = '\0';
        return AP_EINVAL;
    }
    if (!gen->started || unix_ms > gen->last_ms) {
        gen->started = true;
        gen->last_ms = unix_ms;
        gen->counter = random_u64() & COUNTER_SEED_MASK;
    } else if (gen->counter < COUNTER_MAX) {
        /* Same ms, or the clock stepped back: count on in the last ms. */
        gen->counter++;
    } else if (gen->last_ms < AP_UUID_MS_MAX) {
        /* RFC 9562 6.2: on counter overflow the timestamp may move ahead. */
        gen->last_ms++;
        gen->counter = random_u64() & COUNTER_SEED_MASK;
    } else {
        out[0] = '\0';
        return AP_EINVAL;
    }
    uint8_t b[16];
    layout(b, gen->last_ms, gen->counter, random_u64());
    to_text(b, out);
    return 0;
}

int ap_uuid_v7_at(uint64_t unix_ms, char out[AP_UUID_STR_LEN + 1])
{
    if (unix_ms > AP_UUID_MS_MAX) {
        out[0] = '\0';
        return AP_EINVAL;
    }
    if (sodium_ready() != 0) {
        out[0] = '\0';
        return AP_EIO;
    }
    uint8_t b[16];
    layout(b, unix_ms, random_u64(), random_u64());
    to_text(b, out);
    return 0;
}

int ap_uuid_v7(char out[AP_UUID_STR_LEN + 1])
{
    struct timespec now;
    if (clock_gettime(CLOCK_REALTIME, &now) != 0 || now.tv_sec < 0) {
        out[0] = '\0';
        return AP_EIO;
    }
    uint64_t ms = (uint64_t)now.tv_sec * 1000u + (uint64_t)now.tv_nsec / 1000000u;
    int rc = ap_uuid_v7_at(ms, out);
    return rc == AP_EINVAL ? AP_EIO : rc;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    return -1;
}

bool ap_uuid_valid(const char *s)
{
    if (s == NULL) {
        return false;
    }
    for (size_t i = 0; i < AP_UUID_STR_LEN; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-') {
                return false;
            }
        } else if (hex_value(s[i]) < 0) {
            /* Also stops at a terminator before position 36. */
            return false;
        }
    }
    return s[AP_UUID_STR_LEN] == '\0';
}

bool ap_uuid_is_v7(const char *s)
{
    /* Version: the first digit of the third group; variant: top bits of the fourth. */
    return ap_uuid_valid(s) && s[14] == '7' && (hex_value(s[19]) & 0xc) == 0x8;
}

uint64_t ap_uuid_v7_time(const char *s)
{
    if (!ap_uuid_is_v7(s)) {
        return 0;
    }
    /* The first 12 hex digits, around the dash at position 8. */
    uint64_t ms = 0;
    for (size_t i = 0; i < 13; i++) {
        if (i != 8) {
            ms = ms << 4 | (uint64_t)hex_value(s[i]);
        }
    }
    return ms;
}
