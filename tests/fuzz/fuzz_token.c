/* Fuzz target for token: token text, signed payloads and grant JSON from arbitrary bytes. */
#include "ap/base.h"
#include "ap/err.h"
#include "ap/token.h"

#include <jansson.h>
#include <sodium.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The seed corpus's tokens are valid at this time (2026-11-27T20:00:10Z). */
#define FUZZ_NOW INT64_C(1795809610)
/* Grant JSON bigger than this is not worth parsing. */
#define FUZZ_JSON_MAX 65536

/* A fixed key pair, so seed tokens signed with it verify. */
static void fixed_keys(uint8_t pk[AP_TOKEN_PK_SIZE], uint8_t sk[AP_TOKEN_SK_SIZE])
{
    unsigned char seed[crypto_sign_SEEDBYTES];
    memset(seed, 0x5a, sizeof seed);
    AP_ASSERT(sodium_init() >= 0);
    AP_ASSERT(crypto_sign_seed_keypair(pk, sk, seed) == 0);
}

static bool all_zero(const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        if (b[i] != 0) {
            return false;
        }
    }
    return true;
}

/* Verify and check the contract: 0 with claims that sign again to the same
 * claims, or AP_EAUTH with a terminated message and zeroed claims. */
static void verify(const char *tok, size_t len, const uint8_t pk[AP_TOKEN_PK_SIZE],
                   const uint8_t sk[AP_TOKEN_SK_SIZE])
{
    struct ap_claims *c = ap_malloc(sizeof *c);
    struct ap_claims *again = ap_malloc(sizeof *again);
    char *resigned = ap_malloc(AP_TOKEN_MAX_LEN);
    char errmsg[AP_ERRMSG_SIZE];
    AP_ASSERT(c != NULL && again != NULL && resigned != NULL);

    int rc = ap_token_verify(tok, len, pk, FUZZ_NOW, c, errmsg);
    if (rc != 0) {
        AP_ASSERT(rc == AP_EAUTH);
        AP_ASSERT(memchr(errmsg, '\0', AP_ERRMSG_SIZE) != NULL);
        AP_ASSERT(strncmp(errmsg, "malformed token", 15) == 0 || strncmp(errmsg, "token ", 6) == 0);
        AP_ASSERT(all_zero(c, sizeof *c));
    } else {
        /* What was accepted is valid claims: they sign, verify back the
         * same, and render. */
        AP_ASSERT(c->n_grants <= AP_CLAIMS_MAX_GRANTS);
        AP_ASSERT(ap_token_sign(c, sk, resigned, AP_TOKEN_MAX_LEN) == 0);
        AP_ASSERT(ap_token_verify(resigned, strlen(resigned), pk, FUZZ_NOW, again, errmsg) == 0);
        AP_ASSERT(memcmp(c, again, sizeof *c) == 0);
        json_t *j = ap_claims_to_json(c);
        AP_ASSERT(j != NULL);
        json_decref(j);
    }
    ap_free(resigned);
    ap_free(again);
    ap_free(c);
}

/* Frame data as a token's payload and sign it, so the payload checks behind
 * the signature see arbitrary bytes too. */
static void verify_signed_payload(const uint8_t *data, size_t size,
                                  const uint8_t pk[AP_TOKEN_PK_SIZE],
                                  const uint8_t sk[AP_TOKEN_SK_SIZE])
{
    const int variant = sodium_base64_VARIANT_URLSAFE_NO_PADDING;
    unsigned char sig[crypto_sign_BYTES];
    char tok[AP_TOKEN_MAX_LEN];
    size_t b64 = sodium_base64_ENCODED_LEN(size, variant);
    if (4 + b64 + 87 > sizeof tok) {
        return;
    }
    memcpy(tok, "ap1.", 4);
    sodium_bin2base64(tok + 4, b64, data, size, variant);
    size_t signed_len = 4 + b64 - 1;
    AP_ASSERT(crypto_sign_detached(sig, NULL, (const unsigned char *)tok, signed_len, sk) == 0);
    tok[signed_len] = '.';
    sodium_bin2base64(tok + signed_len + 1, sizeof tok - signed_len - 1, sig, sizeof sig, variant);
    verify(tok, strlen(tok), pk, sk);
}

/* Parse data as grant JSON; what is accepted validates and survives a round trip. */
static void parse_grant(const uint8_t *data, size_t size)
{
    char errmsg[AP_ERRMSG_SIZE];
    struct ap_grant g, again;
    if (size > FUZZ_JSON_MAX) {
        return;
    }
    json_t *j = json_loadb((const char *)data, size, 0, NULL);
    if (j == NULL) {
        return;
    }
    int rc = ap_grant_from_json(j, &g, errmsg);
    if (rc != 0) {
        AP_ASSERT(rc == AP_EINVAL);
        AP_ASSERT(memchr(errmsg, '\0', AP_ERRMSG_SIZE) != NULL);
        AP_ASSERT(strncmp(errmsg, "grant", 5) == 0);
    } else {
        AP_ASSERT(ap_grant_validate(&g, errmsg) == 0);
        json_t *out = ap_grant_to_json(&g);
        AP_ASSERT(out != NULL);
        AP_ASSERT(ap_grant_from_json(out, &again, errmsg) == 0);
        AP_ASSERT(memcmp(&g, &again, sizeof g) == 0);
        json_decref(out);
    }
    json_decref(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t pk[AP_TOKEN_PK_SIZE], sk[AP_TOKEN_SK_SIZE];
    fixed_keys(pk, sk);
    verify((const char *)data, size, pk, sk);
    verify_signed_payload(data, size, pk, sk);
    parse_grant(data, size);
    return 0;
}
