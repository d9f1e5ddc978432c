/* token: signed access tokens (Ed25519), password hashes (Argon2id) and the JSON form of grants. */
#ifndef AP_TOKEN_H
#define AP_TOKEN_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/** Longest token text accepted or produced, in bytes, including the terminating NUL. */
#define AP_TOKEN_MAX_LEN 4096
/** Size of a name (user, tenant, region, site) including the NUL: at most 63 characters. */
#define AP_NAME_MAX 64
/** Most regions a grant's scope lists. */
#define AP_GRANT_MAX_REGIONS 8
/** Most sites a grant's scope lists. */
#define AP_GRANT_MAX_SITES 32
/** Most grants one token carries. */
#define AP_CLAIMS_MAX_GRANTS 16
/** Ed25519 public key size (== crypto_sign_PUBLICKEYBYTES). */
#define AP_TOKEN_PK_SIZE 32
/** Ed25519 secret key size (== crypto_sign_SECRETKEYBYTES). */
#define AP_TOKEN_SK_SIZE 64
/** Size of a password hash string including its NUL (== crypto_pwhash_STRBYTES). */
#define AP_PASSWORD_HASH_SIZE 128
/** Password lengths accepted by ap_password_hash, in bytes. */
#define AP_PASSWORD_MIN_LEN 8
#define AP_PASSWORD_MAX_LEN 256
/**
 * Seconds a token is honoured before its iat, so a verifier whose clock is a
 * little behind the controller's accepts a token issued a moment ago. Expiry
 * gets no such allowance.
 */
#define AP_TOKEN_CLOCK_SKEW 60
/** Latest iat/exp a token may carry: 9999-12-31T23:59:59Z, so RFC 3339 stays four-digit. */
#define AP_TOKEN_TIME_MAX INT64_C(253402300799)
/** Default token lifetime in seconds (docs/security.md "Revocation"). */
#define AP_TOKEN_DEFAULT_TTL 3600
/** Size of a buffer that holds a key of either kind as base64url text, with its NUL. */
#define AP_TOKEN_KEY_TEXT_SIZE 88

/** What a grant lets its holder do; a higher role includes every lower one. */
enum ap_role { AP_ROLE_READER = 1, AP_ROLE_MEMBER = 2, AP_ROLE_ADMIN = 3, AP_ROLE_OPERATOR = 4 };

/** One role on one tenant over one scope. Plain value; embeds no pointers. */
struct ap_grant {
    enum ap_role role;
    char tenant[AP_NAME_MAX]; /* "" for operator grants (they cover every tenant) */
    size_t n_regions;
    char regions[AP_GRANT_MAX_REGIONS][AP_NAME_MAX];
    size_t n_sites;
    char sites[AP_GRANT_MAX_SITES][AP_NAME_MAX];
    /* scope: n_regions == 0 && n_sites == 0 means all; otherwise the union of the regions listed
     * (every site in them) and the sites listed */
};

/**
 * What a verified token says about its holder. Plain value of about 40 KiB:
 * keep it off small stacks (threads of a work pool) and out of arrays.
 */
struct ap_claims {
    char user[AP_NAME_MAX];
    char tenant[AP_NAME_MAX]; /* the user's home tenant ("" for operators) */
    uint64_t gen;             /* the user's grant generation when issued (revocation) */
    int64_t iat, exp;         /* unix seconds */
    size_t n_grants;
    struct ap_grant grants[AP_CLAIMS_MAX_GRANTS];
};

/** "reader", "member", "admin" or "operator"; "unknown" for any other value. Static string. */
const char *ap_role_name(enum ap_role r);

/** Parse a role name (exact, lowercase) into *out. Returns 0, or AP_EINVAL for anything else. */
int ap_role_parse(const char *s, enum ap_role *out);

/**
 * Whether s is a valid name for a user, tenant, region or site: a DNS label
 * of 1-63 lowercase letters, digits or '-', not starting or ending with '-'.
 * NULL is not valid.
 */
bool ap_token_name_valid(const char *s);

/** Generate a fresh Ed25519 signing key pair. Returns 0, or AP_EINTERNAL if libsodium cannot start.
 */
int ap_token_keygen(uint8_t pk[AP_TOKEN_PK_SIZE], uint8_t sk[AP_TOKEN_SK_SIZE]);

/** Derive the public key of secret key sk (so only sk needs storing). Returns 0 or AP_EINTERNAL. */
int ap_token_pk_from_sk(const uint8_t sk[AP_TOKEN_SK_SIZE], uint8_t pk[AP_TOKEN_PK_SIZE]);

/**
 * Write key (key_size bytes: AP_TOKEN_PK_SIZE or AP_TOKEN_SK_SIZE) as
 * NUL-terminated base64url text without padding into out, for configuration
 * files, catalogs and the key stream to child tiers. Returns 0, AP_EINVAL for
 * another key size, or AP_ETOOBIG when out_size is too small
 * (AP_TOKEN_KEY_TEXT_SIZE always fits).
 */
int ap_token_key_to_text(const uint8_t *key, size_t key_size, char *out, size_t out_size);

/**
 * Decode text made by ap_token_key_to_text into key, which must be exactly
 * key_size bytes long once decoded. Returns 0, or AP_EINVAL for bad base64,
 * another length, or a NULL text.
 */
int ap_token_key_from_text(const char *text, uint8_t *key, size_t key_size);

/**
 * Sign claims c with secret key sk and write the NUL-terminated token text
 * (docs/security.md "Token format") to out. c must be valid: user a name,
 * tenant "" or a name, gen <= INT64_MAX, 0 <= iat < exp <= AP_TOKEN_TIME_MAX,
 * at most AP_CLAIMS_MAX_GRANTS grants each passing ap_grant_validate.
 * Returns 0; AP_EINVAL for invalid claims; AP_ETOOBIG when out_size is too
 * small or the token would exceed AP_TOKEN_MAX_LEN (too many grants or scope
 * entries); AP_ENOMEM; AP_EINTERNAL if libsodium cannot start. On error out
 * holds "" (when out_size > 0).
 */
int ap_token_sign(const struct ap_claims *c, const uint8_t sk[AP_TOKEN_SK_SIZE], char *out,
                  size_t out_size);

/**
 * Verify token text (len bytes, not necessarily NUL-terminated; the caller
 * keeps it) with public key pk at time now (unix seconds), and fill *out.
 * Returns 0, or AP_EAUTH with a user-facing reason in errmsg
 * (AP_ERRMSG_SIZE bytes, may be NULL): "malformed token: ...", "token
 * signature is not valid", "token expired at 2026-11-27T21:00:00Z", "token not
 * valid yet (issued at ...)". The signature is checked before the payload's
 * JSON is parsed. Never crashes on any input; inputs over AP_TOKEN_MAX_LEN - 1
 * bytes are rejected before decoding. On error *out is zeroed. Revocation is
 * the caller's next step (ap_token_check_revoked).
 */
int ap_token_verify(const char *token, size_t len, const uint8_t pk[AP_TOKEN_PK_SIZE], int64_t now,
                    struct ap_claims *out, char *errmsg);

/**
 * The revocation check every tier applies after ap_token_verify
 * (docs/security.md "Revocation"): min_gen is the lowest grant generation the
 * tier knows to be valid for c->user, deleted whether it knows the user was
 * deleted. Returns 0, or AP_EAUTH with "token revoked: user 'alice' was
 * deleted" or "token revoked: grants of 'alice' changed; log in again" in
 * errmsg (may be NULL).
 */
int ap_token_check_revoked(const struct ap_claims *c, uint64_t min_gen, bool deleted, char *errmsg);

/**
 * Hash password (NUL-terminated, 8..256 bytes) with Argon2id
 * (crypto_pwhash_str, OPSLIMIT/MEMLIMIT_INTERACTIVE: about 64 MiB and a
 * fraction of a second, see docs/security.md): blocking, so daemons call it
 * from a work thread. Writes a NUL-terminated, salted, self-describing string
 * to out. Returns 0, AP_EINVAL for a NULL or out-of-range password, AP_ENOMEM
 * when the memory cost cannot be allocated, AP_EINTERNAL if libsodium cannot
 * start.
 */
int ap_password_hash(const char *password, char out[AP_PASSWORD_HASH_SIZE]);

/**
 * Check password against hash (a string from ap_password_hash). Blocking like
 * ap_password_hash. Returns 0 on a match; AP_EAUTH on a mismatch, including a
 * password outside 8..256 bytes (which no hash can match); AP_EINVAL when hash
 * is NULL, not terminated within AP_PASSWORD_HASH_SIZE or not an Argon2 string.
 */
int ap_password_verify(const char *hash, const char *password);

/**
 * Whether hash was made with other parameters than ap_password_hash uses now,
 * so the caller should re-hash the password after a successful verify. A hash
 * that is not an Argon2id string also needs rehashing.
 */
bool ap_password_needs_rehash(const char *hash);

/**
 * Check that g is well formed: role in range; an operator grant has tenant ""
 * and scope all; any other grant has a tenant name; counts within bounds;
 * every region and site a terminated, valid name, none listed twice.
 * Returns 0, or AP_EINVAL naming the field in errmsg (may be NULL), e.g.
 * "grant.scope.sites[2]: must be a DNS label ...".
 */
int ap_grant_validate(const struct ap_grant *g, char *errmsg);

/**
 * Parse the JSON form of a grant (used by the HTTP API, stored as JSON text
 * in catalogs): {"role":"member","tenant":"acme","scope":{"sites":["r1-s1"]}};
 * scope is {"regions":[...]}, {"sites":[...]}, both (their union), or {} or
 * absent for every site; a list given must not be empty. Operator grants have
 * no tenant and no scope lists; every other grant needs a tenant. j is
 * borrowed. Returns 0 and fills *out; or AP_EINVAL for unknown fields, bad
 * types, bad names, duplicates or too many entries, with errmsg (may be NULL)
 * naming the field ("grant.scope.sites[2]: must be a DNS label ...").
 */
int ap_grant_from_json(json_t *j, struct ap_grant *out, char *errmsg);

/** The JSON form of g (as above, scope always present). New reference; NULL on ENOMEM. */
json_t *ap_grant_to_json(const struct ap_grant *g);

/**
 * The JSON form of c for people: {"user","tenant","grants":[...],
 * "issued_at","expires_at"} with RFC 3339 UTC times; tenant is left out for
 * operators (tenant ""). New reference; NULL on ENOMEM.
 */
json_t *ap_claims_to_json(const struct ap_claims *c);

/**
 * Format unix seconds t as RFC 3339 UTC ("2026-11-27T21:00:00Z") into out
 * (at least 21 bytes). Times outside 0..AP_TOKEN_TIME_MAX are clamped.
 */
void ap_token_format_time(int64_t t, char out[21]);

#endif
