/* Unit tests for token: signing and verifying tokens, grant JSON, password hashes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "ap/base.h"
#include "ap/err.h"
#include "ap/token.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* 2026-11-27T20:00:00Z and one hour later. */
#define T_IAT INT64_C(1795809600)
#define T_EXP INT64_C(1795813200)

static void add_grant(struct ap_claims *c, enum ap_role role, const char *tenant,
                      const char *const *regions, const char *const *sites)
{
    assert_true(c->n_grants < AP_CLAIMS_MAX_GRANTS);
    struct ap_grant *g = &c->grants[c->n_grants++];
    memset(g, 0, sizeof *g);
    g->role = role;
    ap_strlcpy(g->tenant, tenant, sizeof g->tenant);
    for (size_t i = 0; regions != NULL && regions[i] != NULL; i++) {
        ap_strlcpy(g->regions[g->n_regions++], regions[i], AP_NAME_MAX);
    }
    for (size_t i = 0; sites != NULL && sites[i] != NULL; i++) {
        ap_strlcpy(g->sites[g->n_sites++], sites[i], AP_NAME_MAX);
    }
}

/* alice of acme: member on two sites, reader in region r1, admin of beta everywhere. */
static void make_claims(struct ap_claims *c)
{
    static const char *const sites[] = {"r1-s1", "r2-s7", NULL};
    static const char *const regions[] = {"r1", NULL};
    memset(c, 0, sizeof *c);
    ap_strlcpy(c->user, "alice", sizeof c->user);
    ap_strlcpy(c->tenant, "acme", sizeof c->tenant);
    c->gen = 7;
    c->iat = T_IAT;
    c->exp = T_EXP;
    add_grant(c, AP_ROLE_MEMBER, "acme", NULL, sites);
    add_grant(c, AP_ROLE_READER, "acme", regions, NULL);
    add_grant(c, AP_ROLE_ADMIN, "beta", NULL, NULL);
}

/* Sign arbitrary payload text the way ap_token_sign frames it, so tests can
 * reach the payload checks that only run after the signature verifies. */
static void sign_raw(const uint8_t sk[AP_TOKEN_SK_SIZE], const char *payload, char *out,
                     size_t out_size)
{
    unsigned char sig[crypto_sign_BYTES];
    size_t n = strlen(payload);
    size_t b64 = sodium_base64_ENCODED_LEN(n, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    assert_true(4 + b64 + 87 < out_size);
    memcpy(out, "ap1.", 4);
    sodium_bin2base64(out + 4, b64, (const unsigned char *)payload, n,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    size_t signed_len = strlen(out);
    assert_int_equal(crypto_sign_detached(sig, NULL, (const unsigned char *)out, signed_len, sk),
                     0);
    out[signed_len] = '.';
    sodium_bin2base64(out + signed_len + 1, out_size - signed_len - 1, sig, sizeof sig,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
}

static bool starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static void test_roles(void **state)
{
    (void)state;
    enum ap_role r = AP_ROLE_READER;
    assert_string_equal(ap_role_name(AP_ROLE_READER), "reader");
    assert_string_equal(ap_role_name(AP_ROLE_OPERATOR), "operator");
    assert_string_equal(ap_role_name((enum ap_role)9), "unknown");
    assert_int_equal(ap_role_parse("admin", &r), 0);
    assert_int_equal(r, AP_ROLE_ADMIN);
    assert_int_equal(ap_role_parse("member", &r), 0);
    assert_int_equal(r, AP_ROLE_MEMBER);
    assert_int_equal(ap_role_parse("Admin", &r), AP_EINVAL);
    assert_int_equal(ap_role_parse("", &r), AP_EINVAL);
    assert_int_equal(ap_role_parse(NULL, &r), AP_EINVAL);

    assert_true(ap_token_name_valid("r1-s1"));
    assert_true(ap_token_name_valid("a"));
    assert_false(ap_token_name_valid(""));
    assert_false(ap_token_name_valid("-a"));
    assert_false(ap_token_name_valid("a-"));
    assert_false(ap_token_name_valid("Acme"));
    assert_false(ap_token_name_valid("a.b"));
    assert_false(ap_token_name_valid(NULL));
    char long_name[70];
    memset(long_name, 'a', sizeof long_name);
    long_name[63] = '\0';
    assert_true(ap_token_name_valid(long_name));
    long_name[63] = 'a';
    long_name[64] = '\0';
    assert_false(ap_token_name_valid(long_name));
}

static void test_round_trip(void **state)
{
    (void)state;
    uint8_t pk[AP_TOKEN_PK_SIZE], sk[AP_TOKEN_SK_SIZE];
    struct ap_claims c, got;
    char tok[AP_TOKEN_MAX_LEN];
    char errmsg[AP_ERRMSG_SIZE] = "";

    assert_int_equal(ap_token_keygen(pk, sk), 0);
    make_claims(&c);
    assert_int_equal(ap_token_sign(&c, sk, tok, sizeof tok), 0);
    assert_true(starts_with(tok, "ap1."));
    assert_int_equal(ap_token_verify(tok, strlen(tok), pk, T_IAT + 10, &got, errmsg), 0);
    assert_memory_equal(&c, &got, sizeof c);

    /* The payload is the documented compact JSON, in the documented order. */
    char *dot = strchr(tok + 4, '.');
    assert_non_null(dot);
    assert_null(strchr(dot + 1, '.'));
    char payload[AP_TOKEN_MAX_LEN];
    size_t n = 0;
    assert_int_equal(sodium_base642bin((unsigned char *)payload, sizeof payload - 1, tok + 4,
                                       (size_t)(dot - tok - 4), NULL, &n, NULL,
                                       sodium_base64_VARIANT_URLSAFE_NO_PADDING),
                     0);
    payload[n] = '\0';
    assert_string_equal(
        payload, "{\"v\":1,\"sub\":\"alice\",\"ten\":\"acme\",\"gen\":7,\"iat\":1795809600,"
                 "\"exp\":1795813200,\"grants\":["
                 "{\"role\":\"member\",\"tenant\":\"acme\",\"scope\":{\"sites\":"
                 "[\"r1-s1\",\"r2-s7\"]}},"
                 "{\"role\":\"reader\",\"tenant\":\"acme\",\"scope\":{\"regions\":[\"r1\"]}},"
                 "{\"role\":\"admin\",\"tenant\":\"beta\",\"scope\":{}}]}");

    /* Signing is deterministic (Ed25519): the same claims give the same token. */
    char again[AP_TOKEN_MAX_LEN];
    assert_int_equal(ap_token_sign(&c, sk, again, sizeof again), 0);
    assert_string_equal(tok, again);

    /* The text need not be NUL-terminated: only len bytes are read. */
    size_t len = strlen(tok);
    char *copy = malloc(len);
    assert_non_null(copy);
    memcpy(copy, tok, len);
    assert_int_equal(ap_token_verify(copy, len, pk, T_IAT, &got, errmsg), 0);
    free(copy);

    /* An operator: no home tenant, one grant without tenant. */
    memset(&c, 0, sizeof c);
    ap_strlcpy(c.user, "root", sizeof c.user);
    c.iat = T_IAT;
    c.exp = T_EXP;
    add_grant(&c, AP_ROLE_OPERATOR, "", NULL, NULL);
    assert_int_equal(ap_token_sign(&c, sk, tok, sizeof tok), 0);
    assert_int_equal(ap_token_verify(tok, strlen(tok), pk, T_IAT, &got, errmsg), 0);
    assert_memory_equal(&c, &got, sizeof c);
}

static void test_every_byte_flip(void **state)
{
    (void)state;
    uint8_t pk[AP_TOKEN_PK_SIZE], sk[AP_TOKEN_SK_SIZE];
    struct ap_claims c, got;
    char tok[AP_TOKEN_MAX_LEN], bad[AP_TOKEN_MAX_LEN];
    char errmsg[AP_ERRMSG_SIZE];

    assert_int_equal(ap_token_keygen(pk, sk), 0);
    make_claims(&c);
    assert_int_equal(ap_token_sign(&c, sk, tok, sizeof tok), 0);
    size_t len = strlen(tok);
    assert_true(len < AP_TOKEN_MAX_LEN);
    for (size_t i = 0; i < len; i++) {
        for (unsigned bit = 0; bit < 8; bit++) {
            memcpy(bad, tok, len);
            bad[i] = (char)(bad[i] ^ (1u << bit));
            if (ap_token_verify(bad, len, pk, T_IAT, &got, errmsg) != AP_EAUTH) {
                fail_msg("flipping bit %u of byte %zu was accepted", bit, i);
            }
            /* Nothing of a rejected token leaks into the result. */
            assert_int_equal(got.user[0], 0);
            assert_int_equal(got.n_grants, 0);
        }
    }
}

static void test_times(void **state)
{
    (void)state;
    uint8_t pk[AP_TOKEN_PK_SIZE], sk[AP_TOKEN_SK_SIZE];
    struct ap_claims c, got;
    char tok[AP_TOKEN_MAX_LEN];
    char errmsg[AP_ERRMSG_SIZE];

    assert_int_equal(ap_token_keygen(pk, sk), 0);
    make_claims(&c);
    assert_int_equal(ap_token_sign(&c, sk, tok, sizeof tok), 0);
    size_t len = strlen(tok);

    assert_int_equal(ap_token_verify(tok, len, pk, T_EXP - 1, &got, errmsg), 0);
    assert_int_equal(ap_token_verify(tok, len, pk, T_EXP, &got, errmsg), AP_EAUTH);
    assert_string_equal(errmsg, "token expired at 2026-11-27T21:00:00Z");
    assert_int_equal(ap_token_verify(tok, len, pk, T_EXP + 86400, &got, errmsg), AP_EAUTH);
    assert_true(starts_with(errmsg, "token expired at "));

    /* A verifier's clock may lag the controller's by AP_TOKEN_CLOCK_SKEW. */
    assert_int_equal(ap_token_verify(tok, len, pk, T_IAT - AP_TOKEN_CLOCK_SKEW, &got, errmsg), 0);
    assert_int_equal(ap_token_verify(tok, len, pk, T_IAT - AP_TOKEN_CLOCK_SKEW - 1, &got, errmsg),
                     AP_EAUTH);
    assert_true(starts_with(errmsg, "token not valid yet"));
    assert_non_null(strstr(errmsg, "2026-11-27T20:00:00Z"));
    assert_int_equal(ap_token_verify(tok, len, pk, 0, &got, errmsg), AP_EAUTH);
    assert_int_equal(ap_token_verify(tok, len, pk, INT64_MIN, &got, errmsg), AP_EAUTH);
    assert_int_equal(ap_token_verify(tok, len, pk, INT64_MAX, &got, errmsg), AP_EAUTH);

    char when[21];
    ap_token_format_time(0, when);
    assert_string_equal(when, "1970-01-01T00:00:00Z");
    ap_token_format_time(INT64_C(1800000000), when);
    assert_string_equal(when, "2027-01-15T08:00:00Z");
    ap_token_format_time(INT64_MAX, when);
    assert_string_equal(when, "9999-12-31T23:59:59Z");
}

static void test_wrong_key(void **state)
{
    (void)state;
    uint8_t pk[AP_TOKEN_PK_SIZE], sk[AP_TOKEN_SK_SIZE];
    uint8_t pk2[AP_TOKEN_PK_SIZE], sk2[AP_TOKEN_SK_SIZE];
    struct ap_claims c, got;
    char tok[AP_TOKEN_MAX_LEN];
    char errmsg[AP_ERRMSG_SIZE];

    assert_int_equal(ap_token_keygen(pk, sk), 0);
    assert_int_equal(ap_token_keygen(pk2, sk2), 0);
    assert_memory_not_equal(pk, pk2, sizeof pk);
    make_claims(&c);
    assert_int_equal(ap_token_sign(&c, sk2, tok, sizeof tok), 0);
    assert_int_equal(ap_token_verify(tok, strlen(tok), pk, T_IAT, &got, errmsg), AP_EAUTH);
    assert_string_equal(errmsg, "token signature is not valid");
    assert_int_equal(ap_token_verify(tok, strlen(tok), pk2, T_IAT, &got, errmsg), 0);

    /* Claims moved from one token onto another token's signature. */
    char other[AP_TOKEN_MAX_LEN], spliced[2 * AP_TOKEN_MAX_LEN];
    c.gen = 8;
    assert_int_equal(ap_token_sign(&c, sk2, other, sizeof other), 0);
    const char *sig = strrchr(tok, '.');
    const char *other_sig = strrchr(other, '.');
    snprintf(spliced, sizeof spliced, "%.*s%s", (int)(other_sig - other), other, sig);
    assert_int_equal(ap_token_verify(spliced, strlen(spliced), pk2, T_IAT, &got, errmsg), AP_EAUTH);
    assert_string_equal(errmsg, "token signature is not valid");
}

static void expect_malformed(const char *tok, size_t len, const uint8_t pk[AP_TOKEN_PK_SIZE])
{
    struct ap_claims got;
    char errmsg[AP_ERRMSG_SIZE];
    if (ap_token_verify(tok, len, pk, T_IAT, &got, errmsg) != AP_EAUTH) {
        fail_msg("accepted: %.*s", (int)len, tok);
    }
    if (!starts_with(errmsg, "malformed token")) {
        fail_msg("message '%s' for: %.*s", errmsg, (int)len, tok);
    }
}

static void test_malformed(void **state)
{
    (void)state;
    uint8_t pk[AP_TOKEN_PK_SIZE], sk[AP_TOKEN_SK_SIZE];
    struct ap_claims c, got;
    char tok[AP_TOKEN_MAX_LEN], bad[2 * AP_TOKEN_MAX_LEN];
    char errmsg[AP_ERRMSG_SIZE];

    assert_int_equal(ap_token_keygen(pk, sk), 0);
    make_claims(&c);
    assert_int_equal(ap_token_sign(&c, sk, tok, sizeof tok), 0);
    size_t len = strlen(tok);
    size_t sig_at = (size_t)(strrchr(tok, '.') - tok) + 1;

    /* Truncated anywhere. */
    for (size_t cut = 0; cut < len; cut++) {
        assert_int_equal(ap_token_verify(tok, cut, pk, T_IAT, &got, errmsg), AP_EAUTH);
    }
    expect_malformed(tok, sig_at - 1, pk);
    expect_malformed(tok, len - 1, pk);
    expect_malformed("", 0, pk);
    assert_int_equal(ap_token_verify(NULL, 0, pk, T_IAT, &got, errmsg), AP_EAUTH);

    /* Trailing garbage after a valid token. */
    static const char *const tails[] = {"x", "A", ".", "=", "==", " ", "\n", ".x", "\0"};
    for (size_t i = 0; i < sizeof tails / sizeof tails[0]; i++) {
        size_t tl = tails[i][0] == '\0' ? 1 : strlen(tails[i]);
        memcpy(bad, tok, len);
        memcpy(bad + len, tails[i], tl);
        expect_malformed(bad, len + tl, pk);
    }

    /* Oversized: over the limit is refused before any decoding. */
    memset(bad, 'A', sizeof bad);
    memcpy(bad, tok, sig_at);
    expect_malformed(bad, AP_TOKEN_MAX_LEN, pk);
    expect_malformed(bad, sizeof bad, pk);

    /* Bad base64 in the payload and in the signature. */
    static const char bad_chars[] = {'+', '/', '=', '*', ' ', '\0', (char)0xc3};
    for (size_t i = 0; i < sizeof bad_chars; i++) {
        memcpy(bad, tok, len);
        bad[10] = bad_chars[i];
        expect_malformed(bad, len, pk);
        memcpy(bad, tok, len);
        bad[sig_at + 5] = bad_chars[i];
        expect_malformed(bad, len, pk);
    }

    /* Wrong framing. */
    static const char *const frames[] = {
        "ap1.",     "ap1..",     "ap1.e30", "ap2.e30.AAAA", "AP1.e30.AAAA", "ap1.e30.AAAA.AAAA",
        "e30.AAAA", "ap1.e30..",
    };
    for (size_t i = 0; i < sizeof frames / sizeof frames[0]; i++) {
        expect_malformed(frames[i], strlen(frames[i]), pk);
    }
    memcpy(bad, "ap2", 3);
    memcpy(bad + 3, tok + 3, len - 3);
    expect_malformed(bad, len, pk);
}

static void expect_bad_payload(const uint8_t pk[AP_TOKEN_PK_SIZE],
                               const uint8_t sk[AP_TOKEN_SK_SIZE], const char *payload)
{
    char tok[AP_TOKEN_MAX_LEN];
    struct ap_claims got;
    char errmsg[AP_ERRMSG_SIZE];
    sign_raw(sk, payload, tok, sizeof tok);
    if (ap_token_verify(tok, strlen(tok), pk, T_IAT, &got, errmsg) != AP_EAUTH) {
        fail_msg("accepted payload %s", payload);
    }
    if (!starts_with(errmsg, "malformed token")) {
        fail_msg("message '%s' for payload %s", errmsg, payload);
    }
    assert_int_equal(got.user[0], 0);
}

#define P_HEAD "{\"v\":1,\"sub\":\"bob\",\"ten\":\"acme\",\"gen\":1,"

static void test_bad_payloads(void **state)
{
    (void)state;
    uint8_t pk[AP_TOKEN_PK_SIZE], sk[AP_TOKEN_SK_SIZE];
    char tok[AP_TOKEN_MAX_LEN];
    struct ap_claims got;
    char errmsg[AP_ERRMSG_SIZE];

    assert_int_equal(ap_token_keygen(pk, sk), 0);

    /* The hand-made signer is right: a well-formed payload passes. */
    sign_raw(sk, P_HEAD "\"iat\":1795809600,\"exp\":1795813200,\"grants\":[]}", tok, sizeof tok);
    assert_int_equal(ap_token_verify(tok, strlen(tok), pk, T_IAT, &got, errmsg), 0);
    assert_string_equal(got.user, "bob");
    assert_int_equal(got.gen, 1);

    static const char *const payloads[] = {
        /* not an object */
        "[]",
        "42",
        "\"ap1\"",
        "null",
        "",
        "{",
        /* trailing garbage after the object */
        P_HEAD "\"iat\":1795809600,\"exp\":1795813200,\"grants\":[]}x",
        P_HEAD "\"iat\":1795809600,\"exp\":1795813200,\"grants\":[]}{}",
        /* missing, unknown, duplicate fields */
        "{}",
        P_HEAD "\"iat\":1795809600,\"exp\":1795813200}",
        P_HEAD "\"iat\":1795809600,\"exp\":1795813200,\"grants\":[],\"admin\":true}",
        P_HEAD "\"iat\":1795809600,\"exp\":1795813200,\"grants\":[],\"sub\":\"root\"}",
        /* version */
        "{\"v\":2,\"sub\":\"bob\",\"ten\":\"acme\",\"gen\":1,\"iat\":1795809600,\"exp\":1795813200,"
        "\"grants\":[]}",
        "{\"v\":\"1\",\"sub\":\"bob\",\"ten\":\"acme\",\"gen\":1,\"iat\":1795809600,"
        "\"exp\":1795813200,\"grants\":[]}",
        /* names */
        "{\"v\":1,\"sub\":\"\",\"ten\":\"acme\",\"gen\":1,\"iat\":1795809600,\"exp\":1795813200,"
        "\"grants\":[]}",
        "{\"v\":1,\"sub\":\"Bob\",\"ten\":\"acme\",\"gen\":1,\"iat\":1795809600,\"exp\":1795813200,"
        "\"grants\":[]}",
        "{\"v\":1,\"sub\":\"b\\u0000b\",\"ten\":\"acme\",\"gen\":1,\"iat\":1795809600,"
        "\"exp\":1795813200,\"grants\":[]}",
        "{\"v\":1,\"sub\":\"bob\",\"ten\":7,\"gen\":1,\"iat\":1795809600,\"exp\":1795813200,"
        "\"grants\":[]}",
        /* numbers out of range or of the wrong type */
        "{\"v\":1,\"sub\":\"bob\",\"ten\":\"acme\",\"gen\":-1,\"iat\":1795809600,\"exp\":"
        "1795813200,"
        "\"grants\":[]}",
        "{\"v\":1,\"sub\":\"bob\",\"ten\":\"acme\",\"gen\":1.0,\"iat\":1795809600,"
        "\"exp\":1795813200,\"grants\":[]}",
        "{\"v\":1,\"sub\":\"bob\",\"ten\":\"acme\",\"gen\":99999999999999999999,"
        "\"iat\":1795809600,\"exp\":1795813200,\"grants\":[]}",
        P_HEAD "\"iat\":-5,\"exp\":1795813200,\"grants\":[]}",
        P_HEAD "\"iat\":1795809600,\"exp\":253402300800,\"grants\":[]}",
        P_HEAD "\"iat\":1795813200,\"exp\":1795813200,\"grants\":[]}",
        P_HEAD "\"iat\":1795813200,\"exp\":1795809600,\"grants\":[]}",
        P_HEAD "\"iat\":\"now\",\"exp\":1795813200,\"grants\":[]}",
        /* grants */
        P_HEAD "\"iat\":1795809600,\"exp\":1795813200,\"grants\":{}}",
        P_HEAD "\"iat\":1795809600,\"exp\":1795813200,\"grants\":[1]}",
        P_HEAD "\"iat\":1795809600,\"exp\":1795813200,\"grants\":[{\"role\":\"god\"}]}",
        P_HEAD "\"iat\":1795809600,\"exp\":1795813200,\"grants\":[{\"role\":\"member\"}]}",
        P_HEAD "\"iat\":1795809600,\"exp\":1795813200,\"grants\":[{\"role\":\"member\","
               "\"tenant\":\"acme\",\"scope\":{\"sites\":[\"R1\"]}}]}",
        P_HEAD "\"iat\":1795809600,\"exp\":1795813200,\"grants\":[{\"role\":\"operator\","
               "\"tenant\":\"acme\"}]}",
        P_HEAD "\"iat\":1795809600,\"exp\":1795813200,\"grants\":[{\"role\":\"admin\","
               "\"tenant\":\"acme\",\"scope\":{\"sites\":[]}}]}",
        P_HEAD "\"iat\":1795809600,\"exp\":1795813200,\"grants\":[{\"role\":\"admin\","
               "\"tenant\":\"acme\",\"scope\":{},\"extra\":1}]}",
    };
    for (size_t i = 0; i < sizeof payloads / sizeof payloads[0]; i++) {
        expect_bad_payload(pk, sk, payloads[i]);
    }

    /* More grants than a token may carry. */
    char many[AP_TOKEN_MAX_LEN];
    size_t n = (size_t)snprintf(many, sizeof many,
                                P_HEAD "\"iat\":1795809600,\"exp\":1795813200,\"grants\":[");
    for (int i = 0; i <= AP_CLAIMS_MAX_GRANTS; i++) {
        n += (size_t)snprintf(many + n, sizeof many - n,
                              "%s{\"role\":\"reader\",\"tenant\":\"t%d\"}", i == 0 ? "" : ",", i);
    }
    snprintf(many + n, sizeof many - n, "]}");
    expect_bad_payload(pk, sk, many);

    /* Messages say which field. */
    sign_raw(sk,
             P_HEAD "\"iat\":1795809600,\"exp\":1795813200,\"grants\":[{\"role\":\"member\","
                    "\"tenant\":\"acme\"},{\"role\":\"member\",\"tenant\":\"acme\",\"scope\":"
                    "{\"sites\":[\"a\",\"b\",\"C\"]}}]}",
             tok, sizeof tok);
    assert_int_equal(ap_token_verify(tok, strlen(tok), pk, T_IAT, &got, errmsg), AP_EAUTH);
    assert_true(
        starts_with(errmsg, "malformed token: grants[1].scope.sites[2]: must be a DNS label"));
}

static void test_grants_round_trip(void **state)
{
    (void)state;
    uint8_t pk[AP_TOKEN_PK_SIZE], sk[AP_TOKEN_SK_SIZE];
    struct ap_claims c, got;
    char tok[AP_TOKEN_MAX_LEN];
    char errmsg[AP_ERRMSG_SIZE];
    static const char *const regions[] = {"r1", "r2", "r3", NULL};
    static const char *const sites[] = {"r4-s1", "r5-s2", NULL};

    assert_int_equal(ap_token_keygen(pk, sk), 0);
    memset(&c, 0, sizeof c);
    ap_strlcpy(c.user, "carol", sizeof c.user);
    c.gen = INT64_MAX;
    c.iat = 0;
    c.exp = AP_TOKEN_TIME_MAX;
    add_grant(&c, AP_ROLE_ADMIN, "acme", regions, sites);
    for (int i = 1; i < AP_CLAIMS_MAX_GRANTS; i++) {
        char tenant[16];
        snprintf(tenant, sizeof tenant, "t%d", i);
        add_grant(&c, (enum ap_role)(1 + i % 3), tenant, NULL, i % 2 ? sites : NULL);
    }
    assert_int_equal(ap_token_sign(&c, sk, tok, sizeof tok), 0);
    assert_int_equal(ap_token_verify(tok, strlen(tok), pk, 1, &got, errmsg), 0);
    assert_memory_equal(&c, &got, sizeof c);
    assert_int_equal(got.n_grants, AP_CLAIMS_MAX_GRANTS);
    assert_int_equal(got.grants[0].n_regions, 3);
    assert_string_equal(got.grants[0].sites[1], "r5-s2");

    /* Too small a buffer, and claims too big for any token. */
    size_t len = strlen(tok);
    assert_int_equal(ap_token_sign(&c, sk, tok, len), AP_ETOOBIG);
    assert_string_equal(tok, "");
    assert_int_equal(ap_token_sign(&c, sk, tok, len + 1), 0);
    memset(&c, 0, sizeof c);
    ap_strlcpy(c.user, "dave", sizeof c.user);
    c.iat = T_IAT;
    c.exp = T_EXP;
    for (int k = 0; k < 4; k++) {
        add_grant(&c, AP_ROLE_READER, "acme", NULL, NULL);
        struct ap_grant *g = &c.grants[k];
        for (size_t i = 0; i < AP_GRANT_MAX_SITES; i++) {
            snprintf(g->sites[i], AP_NAME_MAX, "site-%d-%02zu-%s", k, i,
                     "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz");
        }
        g->n_sites = AP_GRANT_MAX_SITES;
    }
    assert_int_equal(ap_grant_validate(&c.grants[3], NULL), 0);
    char big[4 * AP_TOKEN_MAX_LEN];
    assert_int_equal(ap_token_sign(&c, sk, big, sizeof big), AP_ETOOBIG);
}

static void test_sign_rejects_invalid_claims(void **state)
{
    (void)state;
    uint8_t pk[AP_TOKEN_PK_SIZE], sk[AP_TOKEN_SK_SIZE];
    struct ap_claims c;
    char tok[AP_TOKEN_MAX_LEN];

    assert_int_equal(ap_token_keygen(pk, sk), 0);
    make_claims(&c);
    ap_strlcpy(c.user, "Alice", sizeof c.user);
    assert_int_equal(ap_token_sign(&c, sk, tok, sizeof tok), AP_EINVAL);
    assert_string_equal(tok, "");
    make_claims(&c);
    c.exp = c.iat;
    assert_int_equal(ap_token_sign(&c, sk, tok, sizeof tok), AP_EINVAL);
    make_claims(&c);
    c.gen = UINT64_MAX;
    assert_int_equal(ap_token_sign(&c, sk, tok, sizeof tok), AP_EINVAL);
    make_claims(&c);
    c.n_grants = AP_CLAIMS_MAX_GRANTS + 1;
    assert_int_equal(ap_token_sign(&c, sk, tok, sizeof tok), AP_EINVAL);
    make_claims(&c);
    c.grants[2].role = AP_ROLE_OPERATOR; /* an operator grant with a tenant */
    assert_int_equal(ap_token_sign(&c, sk, tok, sizeof tok), AP_EINVAL);
    make_claims(&c);
    ap_strlcpy(c.grants[0].sites[1], "r1-s1", AP_NAME_MAX); /* listed twice */
    assert_int_equal(ap_token_sign(&c, sk, tok, sizeof tok), AP_EINVAL);
    make_claims(&c);
    memset(c.grants[1].regions[0], 'a', AP_NAME_MAX); /* not terminated */
    assert_int_equal(ap_token_sign(&c, sk, tok, sizeof tok), AP_EINVAL);
}

static void expect_grant_error(const char *text, const char *message_start)
{
    struct ap_grant g;
    char errmsg[AP_ERRMSG_SIZE] = "";
    json_t *j = json_loads(text, 0, NULL);
    assert_non_null(j);
    assert_int_equal(ap_grant_from_json(j, &g, errmsg), AP_EINVAL);
    if (!starts_with(errmsg, message_start)) {
        fail_msg("%s: got '%s', want '%s...'", text, errmsg, message_start);
    }
    json_decref(j);
}

static void test_grant_json(void **state)
{
    (void)state;
    struct ap_grant g, again;
    char errmsg[AP_ERRMSG_SIZE];

    static const char *const good[] = {
        "{\"role\":\"member\",\"tenant\":\"acme\",\"scope\":{\"sites\":[\"r1-s1\"]}}",
        "{\"role\":\"reader\",\"tenant\":\"acme\",\"scope\":{\"regions\":[\"r1\",\"r2\"]}}",
        ("{\"role\":\"admin\",\"tenant\":\"acme\",\"scope\":{\"regions\":[\"r1\"],"
         "\"sites\":[\"r2-s1\"]}}"),
        "{\"role\":\"admin\",\"tenant\":\"acme\",\"scope\":{}}",
        "{\"role\":\"operator\",\"scope\":{}}",
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        json_t *j = json_loads(good[i], 0, NULL);
        assert_non_null(j);
        assert_int_equal(ap_grant_from_json(j, &g, errmsg), 0);
        assert_int_equal(ap_grant_validate(&g, errmsg), 0);
        json_t *out = ap_grant_to_json(&g);
        assert_non_null(out);
        if (!json_equal(j, out)) {
            fail_msg("%s did not come back the same", good[i]);
        }
        assert_int_equal(ap_grant_from_json(out, &again, errmsg), 0);
        assert_memory_equal(&g, &again, sizeof g);
        json_decref(out);
        json_decref(j);
    }

    /* The fields land where authz reads them; an absent scope means all. */
    json_t *j = json_loads("{\"role\":\"member\",\"tenant\":\"acme\",\"scope\":{\"regions\":"
                           "[\"r1\"],\"sites\":[\"r2-s1\",\"r2-s2\"]}}",
                           0, NULL);
    assert_int_equal(ap_grant_from_json(j, &g, errmsg), 0);
    assert_int_equal(g.role, AP_ROLE_MEMBER);
    assert_string_equal(g.tenant, "acme");
    assert_int_equal(g.n_regions, 1);
    assert_string_equal(g.regions[0], "r1");
    assert_int_equal(g.n_sites, 2);
    assert_string_equal(g.sites[1], "r2-s2");
    json_decref(j);
    j = json_loads("{\"role\":\"reader\",\"tenant\":\"acme\"}", 0, NULL);
    assert_int_equal(ap_grant_from_json(j, &g, errmsg), 0);
    assert_int_equal(g.n_regions + g.n_sites, 0);
    json_decref(j);
    j = json_loads("{\"role\":\"operator\"}", 0, NULL);
    assert_int_equal(ap_grant_from_json(j, &g, errmsg), 0);
    assert_int_equal(g.role, AP_ROLE_OPERATOR);
    assert_string_equal(g.tenant, "");
    json_decref(j);

    expect_grant_error("[]", "grant: must be an object");
    expect_grant_error("{\"role\":\"member\",\"tenant\":\"acme\",\"sites\":[\"a\"]}",
                       "grant.sites: unknown field");
    expect_grant_error("{\"tenant\":\"acme\"}", "grant.role: must be");
    expect_grant_error("{\"role\":\"owner\",\"tenant\":\"acme\"}", "grant.role: must be");
    expect_grant_error("{\"role\":3,\"tenant\":\"acme\"}", "grant.role: must be");
    expect_grant_error("{\"role\":\"member\"}", "grant.tenant: required for role member");
    expect_grant_error("{\"role\":\"member\",\"tenant\":\"\"}",
                       "grant.tenant: must be a DNS label");
    expect_grant_error("{\"role\":\"member\",\"tenant\":\"ACME\"}",
                       "grant.tenant: must be a DNS label");
    expect_grant_error("{\"role\":\"member\",\"tenant\":[\"acme\"]}",
                       "grant.tenant: must be a DNS label");
    expect_grant_error("{\"role\":\"operator\",\"tenant\":\"acme\"}",
                       "grant.tenant: operator grants cover every tenant");
    expect_grant_error("{\"role\":\"operator\",\"scope\":{\"sites\":[\"r1-s1\"]}}",
                       "grant.scope: operator grants cover every site");
    expect_grant_error("{\"role\":\"member\",\"tenant\":\"acme\",\"scope\":[]}",
                       "grant.scope: must be an object");
    expect_grant_error("{\"role\":\"member\",\"tenant\":\"acme\",\"scope\":{\"zones\":[\"z\"]}}",
                       "grant.scope.zones: unknown field");
    expect_grant_error("{\"role\":\"member\",\"tenant\":\"acme\",\"scope\":{\"sites\":\"r1-s1\"}}",
                       "grant.scope.sites: must be an array");
    expect_grant_error("{\"role\":\"member\",\"tenant\":\"acme\",\"scope\":{\"sites\":[]}}",
                       "grant.scope.sites: must not be empty");
    expect_grant_error("{\"role\":\"member\",\"tenant\":\"acme\",\"scope\":{\"regions\":[]}}",
                       "grant.scope.regions: must not be empty");
    expect_grant_error("{\"role\":\"member\",\"tenant\":\"acme\",\"scope\":{\"sites\":"
                       "[\"r1-s1\",\"r1-s2\",\"r1_s3\"]}}",
                       "grant.scope.sites[2]: must be a DNS label");
    expect_grant_error("{\"role\":\"member\",\"tenant\":\"acme\",\"scope\":{\"sites\":[\"a\",7]}}",
                       "grant.scope.sites[1]: must be a DNS label");
    expect_grant_error("{\"role\":\"member\",\"tenant\":\"acme\",\"scope\":{\"regions\":"
                       "[\"r1\",\"r1\"]}}",
                       "grant.scope.regions[1]: 'r1' is listed twice");
    expect_grant_error("{\"role\":\"member\",\"tenant\":\"acme\",\"scope\":{\"regions\":"
                       "[\"a\",\"b\",\"c\",\"d\",\"e\",\"f\",\"g\",\"h\",\"i\"]}}",
                       "grant.scope.regions: at most 8 regions");

    char text[4096];
    size_t n = (size_t)snprintf(text, sizeof text,
                                "{\"role\":\"member\",\"tenant\":\"acme\",\"scope\":{\"sites\":[");
    for (int i = 0; i <= AP_GRANT_MAX_SITES; i++) {
        n += (size_t)snprintf(text + n, sizeof text - n, "%s\"s%d\"", i == 0 ? "" : ",", i);
    }
    snprintf(text + n, sizeof text - n, "]}}");
    expect_grant_error(text, "grant.scope.sites: at most 32 sites");
    assert_int_equal(ap_grant_from_json(NULL, &g, errmsg), AP_EINVAL);
    assert_int_equal(ap_grant_from_json(NULL, &g, NULL), AP_EINVAL);
}

static void test_claims_json(void **state)
{
    (void)state;
    struct ap_claims c;
    make_claims(&c);
    json_t *j = ap_claims_to_json(&c);
    assert_non_null(j);
    json_t *want = json_loads(
        "{\"user\":\"alice\",\"tenant\":\"acme\",\"grants\":["
        "{\"role\":\"member\",\"tenant\":\"acme\",\"scope\":{\"sites\":[\"r1-s1\",\"r2-s7\"]}},"
        "{\"role\":\"reader\",\"tenant\":\"acme\",\"scope\":{\"regions\":[\"r1\"]}},"
        "{\"role\":\"admin\",\"tenant\":\"beta\",\"scope\":{}}],"
        "\"issued_at\":\"2026-11-27T20:00:00Z\",\"expires_at\":\"2026-11-27T21:00:00Z\"}",
        0, NULL);
    assert_non_null(want);
    assert_true(json_equal(j, want));
    json_decref(want);
    json_decref(j);

    memset(&c, 0, sizeof c);
    ap_strlcpy(c.user, "root", sizeof c.user);
    c.exp = 1;
    add_grant(&c, AP_ROLE_OPERATOR, "", NULL, NULL);
    j = ap_claims_to_json(&c);
    assert_non_null(j);
    assert_null(json_object_get(j, "tenant"));
    assert_string_equal(json_string_value(json_object_get(j, "expires_at")),
                        "1970-01-01T00:00:01Z");
    json_t *g0 = json_array_get(json_object_get(j, "grants"), 0);
    assert_string_equal(json_string_value(json_object_get(g0, "role")), "operator");
    assert_null(json_object_get(g0, "tenant"));
    json_decref(j);
}

static void test_keys_and_revocation(void **state)
{
    (void)state;
    uint8_t pk[AP_TOKEN_PK_SIZE], sk[AP_TOKEN_SK_SIZE], pk2[AP_TOKEN_PK_SIZE],
        sk2[AP_TOKEN_SK_SIZE];
    char text[AP_TOKEN_KEY_TEXT_SIZE];

    assert_int_equal(ap_token_keygen(pk, sk), 0);
    assert_int_equal(ap_token_pk_from_sk(sk, pk2), 0);
    assert_memory_equal(pk, pk2, sizeof pk);

    assert_int_equal(ap_token_key_to_text(pk, sizeof pk, text, sizeof text), 0);
    assert_int_equal(strlen(text), 43);
    memset(pk2, 0, sizeof pk2);
    assert_int_equal(ap_token_key_from_text(text, pk2, sizeof pk2), 0);
    assert_memory_equal(pk, pk2, sizeof pk);
    assert_int_equal(ap_token_key_from_text(text, sk2, sizeof sk2), AP_EINVAL);
    assert_int_equal(ap_token_key_to_text(sk, sizeof sk, text, sizeof text), 0);
    assert_int_equal(strlen(text), 86);
    assert_int_equal(ap_token_key_from_text(text, sk2, sizeof sk2), 0);
    assert_memory_equal(sk, sk2, sizeof sk);
    assert_int_equal(ap_token_key_to_text(sk, sizeof sk, text, 86), AP_ETOOBIG);
    assert_int_equal(ap_token_key_to_text(sk, 10, text, sizeof text), AP_EINVAL);
    assert_int_equal(ap_token_key_from_text("not base64!", pk2, sizeof pk2), AP_EINVAL);
    assert_int_equal(ap_token_key_from_text("", pk2, sizeof pk2), AP_EINVAL);
    assert_int_equal(ap_token_key_from_text(NULL, pk2, sizeof pk2), AP_EINVAL);

    struct ap_claims c;
    char errmsg[AP_ERRMSG_SIZE];
    make_claims(&c);
    assert_int_equal(ap_token_check_revoked(&c, 0, false, errmsg), 0);
    assert_int_equal(ap_token_check_revoked(&c, 7, false, errmsg), 0);
    assert_int_equal(ap_token_check_revoked(&c, 8, false, errmsg), AP_EAUTH);
    assert_string_equal(errmsg, "token revoked: grants of 'alice' changed; log in again");
    assert_int_equal(ap_token_check_revoked(&c, 0, true, errmsg), AP_EAUTH);
    assert_string_equal(errmsg, "token revoked: user 'alice' was deleted");
    assert_int_equal(ap_token_check_revoked(&c, 8, false, NULL), AP_EAUTH);
}

static void test_password(void **state)
{
    (void)state;
    char hash[AP_PASSWORD_HASH_SIZE], hash2[AP_PASSWORD_HASH_SIZE];

    assert_int_equal(ap_password_hash("correct horse battery", hash), 0);
    assert_true(starts_with(hash, "$argon2id$"));
    assert_int_equal(ap_password_verify(hash, "correct horse battery"), 0);
    assert_int_equal(ap_password_verify(hash, "correct horse batterY"), AP_EAUTH);
    assert_int_equal(ap_password_verify(hash, "short"), AP_EAUTH);
    assert_int_equal(ap_password_verify(hash, NULL), AP_EAUTH);
    assert_false(ap_password_needs_rehash(hash));

    /* Salted: the same password hashes differently each time. */
    assert_int_equal(ap_password_hash("correct horse battery", hash2), 0);
    assert_string_not_equal(hash, hash2);
    assert_int_equal(ap_password_verify(hash2, "correct horse battery"), 0);

    /* Lengths: 8..256 bytes. */
    char pw[300];
    memset(pw, 'p', sizeof pw);
    pw[7] = '\0';
    assert_int_equal(ap_password_hash(pw, hash2), AP_EINVAL);
    assert_string_equal(hash2, "");
    assert_int_equal(ap_password_hash("", hash2), AP_EINVAL);
    assert_int_equal(ap_password_hash(NULL, hash2), AP_EINVAL);
    pw[7] = 'p';
    pw[257] = '\0';
    assert_int_equal(ap_password_hash(pw, hash2), AP_EINVAL);
    assert_int_equal(ap_password_verify(hash, pw), AP_EAUTH);

    /* A stored hash that is not one. */
    assert_int_equal(ap_password_verify("plain text", "correct horse battery"), AP_EINVAL);
    assert_int_equal(ap_password_verify(NULL, "correct horse battery"), AP_EINVAL);
    assert_true(ap_password_needs_rehash("plain text"));
    char unterminated[AP_PASSWORD_HASH_SIZE];
    memcpy(unterminated, hash, sizeof unterminated);
    memset(unterminated + strlen(hash), 'x', sizeof unterminated - strlen(hash));
    assert_int_equal(ap_password_verify(unterminated, "correct horse battery"), AP_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roles),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_every_byte_flip),
        cmocka_unit_test(test_times),
        cmocka_unit_test(test_wrong_key),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_bad_payloads),
        cmocka_unit_test(test_grants_round_trip),
        cmocka_unit_test(test_sign_rejects_invalid_claims),
        cmocka_unit_test(test_grant_json),
        cmocka_unit_test(test_claims_json),
        cmocka_unit_test(test_keys_and_revocation),
        cmocka_unit_test(test_password),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
