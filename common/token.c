/* token: signed access tokens (Ed25519), password hashes (Argon2id) and the JSON form of grants. */
#include "ap/token.h"

#include "ap/base.h"
#include "ap/err.h"

#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

_Static_assert(AP_TOKEN_PK_SIZE == crypto_sign_PUBLICKEYBYTES, "public key size");
_Static_assert(AP_TOKEN_SK_SIZE == crypto_sign_SECRETKEYBYTES, "secret key size");
_Static_assert(AP_PASSWORD_HASH_SIZE == crypto_pwhash_STRBYTES, "password hash size");

/* docs/security.md "Token format": "ap1." base64url(payload) "." base64url(signature). */
#define TOKEN_PREFIX     "ap1."
#define TOKEN_PREFIX_LEN 4
#define TOKEN_VERSION    1
#define B64_VARIANT      sodium_base64_VARIANT_URLSAFE_NO_PADDING
/* 64 signature bytes are 86 base64url characters without padding. */
#define TOKEN_SIG_B64_LEN 86

static const char *const role_names[] = {NULL, "reader", "member", "admin", "operator"};

/* libsodium must be initialised before use; sodium_init() is idempotent and
 * thread-safe, so every entry point that needs it calls it. */
static int sodium_ready(void)
{
    return sodium_init() < 0 ? AP_EINTERNAL : 0;
}

/* ap_errmsg_set for buffers that may be NULL. */
static void msg_set(char *errmsg, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void msg_set(char *errmsg, const char *fmt, ...)
{
    if (errmsg == NULL) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errmsg, AP_ERRMSG_SIZE, fmt, ap);
    va_end(ap);
}

/* Say that a payload field error makes the token malformed. */
static void msg_malformed(char *errmsg)
{
    if (errmsg != NULL) {
        ap_errmsg_wrap(errmsg, "malformed token");
    }
}

const char *ap_role_name(enum ap_role r)
{
    if (r >= AP_ROLE_READER && r <= AP_ROLE_OPERATOR) {
        return role_names[r];
    }
    return "unknown";
}

int ap_role_parse(const char *s, enum ap_role *out)
{
    if (s == NULL) {
        return AP_EINVAL;
    }
    for (int r = AP_ROLE_READER; r <= AP_ROLE_OPERATOR; r++) {
        if (strcmp(s, role_names[r]) == 0) {
            *out = (enum ap_role)r;
            return 0;
        }
    }
    return AP_EINVAL;
}

/* A DNS label of n bytes (which may hold NULs, from JSON strings). */
static bool label_valid(const char *s, size_t n)
{
    if (n == 0 || n >= AP_NAME_MAX || s[0] == '-' || s[n - 1] == '-') {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-')) {
            return false;
        }
    }
    return true;
}

bool ap_token_name_valid(const char *s)
{
    return s != NULL && label_valid(s, strnlen(s, AP_NAME_MAX));
}

/* A name field of a struct: terminated inside its array and a valid label. */
static bool field_name_valid(const char name[AP_NAME_MAX])
{
    size_t n = strnlen(name, AP_NAME_MAX);
    return n < AP_NAME_MAX && label_valid(name, n);
}

#define NAME_RULE "must be a DNS label (1-63 lowercase letters, digits or '-', not at either end)"

/* Whether s[0..n) uses only the base64url alphabet. libsodium 1.0.18's
 * decoder maps a byte with its top bit set onto the character without it, so
 * a token would have several spellings; check the alphabet first. */
static bool b64_alphabet_ok(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '_')) {
            return false;
        }
    }
    return true;
}

/* ---- keys ---------------------------------------------------------------- */

int ap_token_keygen(uint8_t pk[AP_TOKEN_PK_SIZE], uint8_t sk[AP_TOKEN_SK_SIZE])
{
    int rv = sodium_ready();
    if (rv != 0) {
        return rv;
    }
    return crypto_sign_keypair(pk, sk) == 0 ? 0 : AP_EINTERNAL;
}

int ap_token_pk_from_sk(const uint8_t sk[AP_TOKEN_SK_SIZE], uint8_t pk[AP_TOKEN_PK_SIZE])
{
    int rv = sodium_ready();
    if (rv != 0) {
        return rv;
    }
    return crypto_sign_ed25519_sk_to_pk(pk, sk) == 0 ? 0 : AP_EINTERNAL;
}

int ap_token_key_to_text(const uint8_t *key, size_t key_size, char *out, size_t out_size)
{
    if (key_size != AP_TOKEN_PK_SIZE && key_size != AP_TOKEN_SK_SIZE) {
        return AP_EINVAL;
    }
    if (out_size < sodium_base64_ENCODED_LEN(key_size, B64_VARIANT)) {
        if (out_size > 0) {
            out[0] = '\0';
        }
        return AP_ETOOBIG;
    }
    sodium_bin2base64(out, out_size, key, key_size, B64_VARIANT);
    return 0;
}

int ap_token_key_from_text(const char *text, uint8_t *key, size_t key_size)
{
    if (text == NULL || key_size == 0) {
        return AP_EINVAL;
    }
    size_t n = strnlen(text, AP_TOKEN_KEY_TEXT_SIZE);
    size_t bin_len = 0;
    /* As for tokens: one text per key. */
    if (n >= AP_TOKEN_KEY_TEXT_SIZE || !b64_alphabet_ok(text, n) ||
        sodium_base642bin(key, key_size, text, n, NULL, &bin_len, NULL, B64_VARIANT) != 0 ||
        bin_len != key_size) {
        return AP_EINVAL;
    }
    return 0;
}

/* ---- times --------------------------------------------------------------- */

void ap_token_format_time(int64_t t, char out[21])
{
    if (t < 0) {
        t = 0;
    } else if (t > AP_TOKEN_TIME_MAX) {
        t = AP_TOKEN_TIME_MAX;
    }
    time_t s = (time_t)t;
    struct tm tm;
    if (gmtime_r(&s, &tm) == NULL || strftime(out, 21, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0) {
        ap_strlcpy(out, "1970-01-01T00:00:00Z", 21);
    }
}

/* ---- grants: validation and JSON ----------------------------------------- */

/* Validate a list of n names in list (rows of AP_NAME_MAX) called what. */
static int list_validate(const char *prefix, const char *what, size_t n,
                         const char (*list)[AP_NAME_MAX], char *errmsg)
{
    for (size_t i = 0; i < n; i++) {
        if (!field_name_valid(list[i])) {
            msg_set(errmsg, "%s.scope.%s[%zu]: " NAME_RULE, prefix, what, i);
            return AP_EINVAL;
        }
        for (size_t k = 0; k < i; k++) {
            if (strcmp(list[k], list[i]) == 0) {
                msg_set(errmsg, "%s.scope.%s[%zu]: '%s' is listed twice", prefix, what, i, list[i]);
                return AP_EINVAL;
            }
        }
    }
    return 0;
}

static int grant_validate(const struct ap_grant *g, const char *prefix, char *errmsg)
{
    if (g->role < AP_ROLE_READER || g->role > AP_ROLE_OPERATOR) {
        msg_set(errmsg, "%s.role: must be reader, member, admin or operator", prefix);
        return AP_EINVAL;
    }
    if (g->n_regions > AP_GRANT_MAX_REGIONS) {
        msg_set(errmsg, "%s.scope.regions: at most %d regions", prefix, AP_GRANT_MAX_REGIONS);
        return AP_EINVAL;
    }
    if (g->n_sites > AP_GRANT_MAX_SITES) {
        msg_set(errmsg, "%s.scope.sites: at most %d sites", prefix, AP_GRANT_MAX_SITES);
        return AP_EINVAL;
    }
    if (g->role == AP_ROLE_OPERATOR) {
        if (g->tenant[0] != '\0') {
            msg_set(errmsg, "%s.tenant: operator grants cover every tenant and take none", prefix);
            return AP_EINVAL;
        }
        if (g->n_regions != 0 || g->n_sites != 0) {
            msg_set(errmsg, "%s.scope: operator grants cover every site and take no list", prefix);
            return AP_EINVAL;
        }
        return 0;
    }
    if (g->tenant[0] == '\0') {
        msg_set(errmsg, "%s.tenant: required for role %s", prefix, ap_role_name(g->role));
        return AP_EINVAL;
    }
    if (!field_name_valid(g->tenant)) {
        msg_set(errmsg, "%s.tenant: " NAME_RULE, prefix);
        return AP_EINVAL;
    }
    int rv = list_validate(prefix, "regions", g->n_regions, g->regions, errmsg);
    if (rv != 0) {
        return rv;
    }
    return list_validate(prefix, "sites", g->n_sites, g->sites, errmsg);
}

int ap_grant_validate(const struct ap_grant *g, char *errmsg)
{
    return grant_validate(g, "grant", errmsg);
}

/* Fill list (max rows) from the JSON array at scope[what]; *n gets the count. */
static int list_from_json(json_t *scope, const char *prefix, const char *what, size_t max,
                          char (*list)[AP_NAME_MAX], size_t *n, char *errmsg)
{
    json_t *arr = json_object_get(scope, what);
    if (arr == NULL) {
        return 0;
    }
    if (!json_is_array(arr)) {
        msg_set(errmsg, "%s.scope.%s: must be an array of names", prefix, what);
        return AP_EINVAL;
    }
    size_t count = json_array_size(arr);
    if (count == 0) {
        /* An empty list would read as "every site": refuse it rather than
         * widen a grant someone meant to narrow. */
        msg_set(errmsg, "%s.scope.%s: must not be empty (leave scope empty for every site)", prefix,
                what);
        return AP_EINVAL;
    }
    if (count > max) {
        msg_set(errmsg, "%s.scope.%s: at most %zu %s", prefix, what, max, what);
        return AP_EINVAL;
    }
    for (size_t i = 0; i < count; i++) {
        json_t *v = json_array_get(arr, i);
        if (!json_is_string(v) || !label_valid(json_string_value(v), json_string_length(v))) {
            msg_set(errmsg, "%s.scope.%s[%zu]: " NAME_RULE, prefix, what, i);
            return AP_EINVAL;
        }
        ap_strlcpy(list[i], json_string_value(v), AP_NAME_MAX);
        for (size_t k = 0; k < i; k++) {
            if (strcmp(list[k], list[i]) == 0) {
                msg_set(errmsg, "%s.scope.%s[%zu]: '%s' is listed twice", prefix, what, i, list[i]);
                return AP_EINVAL;
            }
        }
    }
    *n = count;
    return 0;
}

/* Reject keys of obj not in allowed (NULL-terminated), naming the first. */
static int check_fields(json_t *obj, const char *prefix, const char *const *allowed, char *errmsg)
{
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v)
    {
        bool known = false;
        for (size_t i = 0; allowed[i] != NULL && !known; i++) {
            known = strcmp(key, allowed[i]) == 0;
        }
        if (!known) {
            msg_set(errmsg, "%s.%.64s: unknown field", prefix, key);
            return AP_EINVAL;
        }
    }
    return 0;
}

static int grant_from_json(json_t *j, const char *prefix, struct ap_grant *out, char *errmsg)
{
    static const char *const allowed[] = {"role", "tenant", "scope", NULL};
    static const char *const scope_allowed[] = {"regions", "sites", NULL};
    char scope_prefix[32];
    int rv;

    memset(out, 0, sizeof *out);
    if (!json_is_object(j)) {
        msg_set(errmsg, "%s: must be an object", prefix);
        return AP_EINVAL;
    }
    if ((rv = check_fields(j, prefix, allowed, errmsg)) != 0) {
        return rv;
    }
    json_t *role = json_object_get(j, "role");
    if (!json_is_string(role) || strlen(json_string_value(role)) != json_string_length(role) ||
        ap_role_parse(json_string_value(role), &out->role) != 0) {
        msg_set(errmsg, "%s.role: must be \"reader\", \"member\", \"admin\" or \"operator\"",
                prefix);
        return AP_EINVAL;
    }
    json_t *tenant = json_object_get(j, "tenant");
    if (out->role == AP_ROLE_OPERATOR) {
        if (tenant != NULL) {
            msg_set(errmsg, "%s.tenant: operator grants cover every tenant and take none", prefix);
            return AP_EINVAL;
        }
    } else if (tenant == NULL) {
        msg_set(errmsg, "%s.tenant: required for role %s", prefix, ap_role_name(out->role));
        return AP_EINVAL;
    } else if (!json_is_string(tenant) ||
               !label_valid(json_string_value(tenant), json_string_length(tenant))) {
        msg_set(errmsg, "%s.tenant: " NAME_RULE, prefix);
        return AP_EINVAL;
    } else {
        ap_strlcpy(out->tenant, json_string_value(tenant), sizeof out->tenant);
    }
    json_t *scope = json_object_get(j, "scope");
    if (scope != NULL) {
        if (!json_is_object(scope)) {
            msg_set(errmsg, "%s.scope: must be an object", prefix);
            return AP_EINVAL;
        }
        snprintf(scope_prefix, sizeof scope_prefix, "%s.scope", prefix);
        if ((rv = check_fields(scope, scope_prefix, scope_allowed, errmsg)) != 0 ||
            (rv = list_from_json(scope, prefix, "regions", AP_GRANT_MAX_REGIONS, out->regions,
                                 &out->n_regions, errmsg)) != 0 ||
            (rv = list_from_json(scope, prefix, "sites", AP_GRANT_MAX_SITES, out->sites,
                                 &out->n_sites, errmsg)) != 0) {
            return rv;
        }
        if (out->role == AP_ROLE_OPERATOR && (out->n_regions != 0 || out->n_sites != 0)) {
            msg_set(errmsg, "%s.scope: operator grants cover every site and take no list", prefix);
            return AP_EINVAL;
        }
    }
    return 0;
}

int ap_grant_from_json(json_t *j, struct ap_grant *out, char *errmsg)
{
    int rv = grant_from_json(j, "grant", out, errmsg);
    if (rv != 0) {
        memset(out, 0, sizeof *out);
    }
    return rv;
}

static json_t *names_to_json(size_t n, const char (*list)[AP_NAME_MAX])
{
    json_t *arr = json_array();
    if (arr == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        if (json_array_append_new(arr, json_stringn(list[i], strnlen(list[i], AP_NAME_MAX))) != 0) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

json_t *ap_grant_to_json(const struct ap_grant *g)
{
    json_t *j = json_object();
    json_t *scope = json_object();
    if (j == NULL || scope == NULL) {
        goto err_after_alloc;
    }
    if (json_object_set_new(j, "role", json_string(ap_role_name(g->role))) != 0) {
        goto err_after_alloc;
    }
    if (g->tenant[0] != '\0' &&
        json_object_set_new(j, "tenant",
                            json_stringn(g->tenant, strnlen(g->tenant, AP_NAME_MAX))) != 0) {
        goto err_after_alloc;
    }
    size_t n_regions = g->n_regions < AP_GRANT_MAX_REGIONS ? g->n_regions : AP_GRANT_MAX_REGIONS;
    size_t n_sites = g->n_sites < AP_GRANT_MAX_SITES ? g->n_sites : AP_GRANT_MAX_SITES;
    if ((n_regions > 0 &&
         json_object_set_new(scope, "regions", names_to_json(n_regions, g->regions)) != 0) ||
        (n_sites > 0 &&
         json_object_set_new(scope, "sites", names_to_json(n_sites, g->sites)) != 0)) {
        goto err_after_alloc;
    }
    /* set_new takes the reference even when it fails. */
    json_t *s = scope;
    scope = NULL;
    if (json_object_set_new(j, "scope", s) != 0) {
        goto err_after_alloc;
    }
    return j;

err_after_alloc:
    json_decref(scope);
    json_decref(j);
    return NULL;
}

static json_t *grants_to_json(const struct ap_claims *c)
{
    json_t *arr = json_array();
    if (arr == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < c->n_grants && i < AP_CLAIMS_MAX_GRANTS; i++) {
        if (json_array_append_new(arr, ap_grant_to_json(&c->grants[i])) != 0) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

json_t *ap_claims_to_json(const struct ap_claims *c)
{
    char iat[21], exp[21];
    ap_token_format_time(c->iat, iat);
    ap_token_format_time(c->exp, exp);
    json_t *j = json_object();
    if (j == NULL) {
        return NULL;
    }
    if (json_object_set_new(j, "user", json_stringn(c->user, strnlen(c->user, AP_NAME_MAX))) != 0 ||
        (c->tenant[0] != '\0' &&
         json_object_set_new(j, "tenant",
                             json_stringn(c->tenant, strnlen(c->tenant, AP_NAME_MAX))) != 0) ||
        json_object_set_new(j, "grants", grants_to_json(c)) != 0 ||
        json_object_set_new(j, "issued_at", json_string(iat)) != 0 ||
        json_object_set_new(j, "expires_at", json_string(exp)) != 0) {
        json_decref(j);
        return NULL;
    }
    return j;
}

/* ---- claims: validation and the signed payload --------------------------- */

static int claims_validate(const struct ap_claims *c)
{
    if (!field_name_valid(c->user) || (c->tenant[0] != '\0' && !field_name_valid(c->tenant)) ||
        c->gen > (uint64_t)INT64_MAX || c->iat < 0 || c->exp > AP_TOKEN_TIME_MAX ||
        c->iat >= c->exp || c->n_grants > AP_CLAIMS_MAX_GRANTS) {
        return AP_EINVAL;
    }
    for (size_t i = 0; i < c->n_grants; i++) {
        if (grant_validate(&c->grants[i], "grant", NULL) != 0) {
            return AP_EINVAL;
        }
    }
    return 0;
}

/* docs/security.md "Token format": the payload's keys, in this order. */
static json_t *payload_to_json(const struct ap_claims *c)
{
    json_t *j = json_object();
    if (j == NULL) {
        return NULL;
    }
    if (json_object_set_new(j, "v", json_integer(TOKEN_VERSION)) != 0 ||
        json_object_set_new(j, "sub", json_string(c->user)) != 0 ||
        json_object_set_new(j, "ten", json_string(c->tenant)) != 0 ||
        json_object_set_new(j, "gen", json_integer((json_int_t)c->gen)) != 0 ||
        json_object_set_new(j, "iat", json_integer((json_int_t)c->iat)) != 0 ||
        json_object_set_new(j, "exp", json_integer((json_int_t)c->exp)) != 0 ||
        json_object_set_new(j, "grants", grants_to_json(c)) != 0) {
        json_decref(j);
        return NULL;
    }
    return j;
}

/* An integer field of the payload within [min, max]. */
static int payload_int(json_t *j, const char *key, json_int_t min, json_int_t max, json_int_t *out,
                       char *errmsg)
{
    json_t *v = json_object_get(j, key);
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        msg_set(errmsg, "malformed token: %s must be an integer from %lld to %lld", key,
                (long long)min, (long long)max);
        return AP_EAUTH;
    }
    *out = json_integer_value(v);
    return 0;
}

static int payload_name(json_t *j, const char *key, bool may_be_empty, char out[AP_NAME_MAX],
                        char *errmsg)
{
    json_t *v = json_object_get(j, key);
    if (!json_is_string(v) || (!(may_be_empty && json_string_length(v) == 0) &&
                               !label_valid(json_string_value(v), json_string_length(v)))) {
        msg_set(errmsg, "malformed token: %s " NAME_RULE, key);
        return AP_EAUTH;
    }
    ap_strlcpy(out, json_string_value(v), AP_NAME_MAX);
    return 0;
}

static int payload_parse(json_t *j, struct ap_claims *out, char *errmsg)
{
    static const char *const allowed[] = {"v", "sub", "ten", "gen", "iat", "exp", "grants", NULL};
    json_int_t v = 0, gen = 0, iat = 0, exp = 0;
    char prefix[32];

    if (!json_is_object(j)) {
        msg_set(errmsg, "malformed token: payload is not a JSON object");
        return AP_EAUTH;
    }
    if (check_fields(j, "payload", allowed, errmsg) != 0) {
        msg_malformed(errmsg);
        return AP_EAUTH;
    }
    json_t *version = json_object_get(j, "v");
    if (json_is_integer(version) && json_integer_value(version) != TOKEN_VERSION) {
        msg_set(errmsg, "malformed token: version %lld is not supported (this build knows %d)",
                (long long)json_integer_value(version), TOKEN_VERSION);
        return AP_EAUTH;
    }
    int rv;
    if ((rv = payload_int(j, "v", TOKEN_VERSION, TOKEN_VERSION, &v, errmsg)) != 0 ||
        (rv = payload_name(j, "sub", false, out->user, errmsg)) != 0 ||
        (rv = payload_name(j, "ten", true, out->tenant, errmsg)) != 0 ||
        (rv = payload_int(j, "gen", 0, INT64_MAX, &gen, errmsg)) != 0 ||
        (rv = payload_int(j, "iat", 0, AP_TOKEN_TIME_MAX, &iat, errmsg)) != 0 ||
        (rv = payload_int(j, "exp", 0, AP_TOKEN_TIME_MAX, &exp, errmsg)) != 0) {
        return rv;
    }
    if (iat >= exp) {
        msg_set(errmsg, "malformed token: exp must be after iat");
        return AP_EAUTH;
    }
    out->gen = (uint64_t)gen;
    out->iat = (int64_t)iat;
    out->exp = (int64_t)exp;
    json_t *grants = json_object_get(j, "grants");
    if (!json_is_array(grants) || json_array_size(grants) > AP_CLAIMS_MAX_GRANTS) {
        msg_set(errmsg, "malformed token: grants must be an array of at most %d grants",
                AP_CLAIMS_MAX_GRANTS);
        return AP_EAUTH;
    }
    for (size_t i = 0; i < json_array_size(grants); i++) {
        snprintf(prefix, sizeof prefix, "grants[%zu]", i);
        if (grant_from_json(json_array_get(grants, i), prefix, &out->grants[i], errmsg) != 0) {
            msg_malformed(errmsg);
            return AP_EAUTH;
        }
    }
    out->n_grants = json_array_size(grants);
    return 0;
}

int ap_token_sign(const struct ap_claims *c, const uint8_t sk[AP_TOKEN_SK_SIZE], char *out,
                  size_t out_size)
{
    unsigned char sig[crypto_sign_BYTES];
    size_t limit = out_size < AP_TOKEN_MAX_LEN ? out_size : AP_TOKEN_MAX_LEN;
    char *text = NULL;
    int rv;

    if (out_size > 0) {
        out[0] = '\0';
    }
    if ((rv = sodium_ready()) != 0) {
        return rv;
    }
    if (claims_validate(c) != 0) {
        return AP_EINVAL;
    }
    json_t *payload = payload_to_json(c);
    if (payload == NULL) {
        return AP_ENOMEM;
    }
    text = json_dumps(payload, JSON_COMPACT);
    json_decref(payload);
    if (text == NULL) {
        return AP_ENOMEM;
    }
    size_t text_len = strlen(text);
    /* ENCODED_LEN counts the NUL: "ap1." payload "." signature NUL. */
    size_t payload_b64 = sodium_base64_ENCODED_LEN(text_len, B64_VARIANT) - 1;
    size_t total = TOKEN_PREFIX_LEN + payload_b64 + 1 + TOKEN_SIG_B64_LEN + 1;
    if (total > limit) {
        rv = AP_ETOOBIG;
        goto err_after_dump;
    }
    memcpy(out, TOKEN_PREFIX, TOKEN_PREFIX_LEN);
    sodium_bin2base64(out + TOKEN_PREFIX_LEN, payload_b64 + 1, (const unsigned char *)text,
                      text_len, B64_VARIANT);
    size_t signed_len = TOKEN_PREFIX_LEN + payload_b64;
    if (crypto_sign_detached(sig, NULL, (const unsigned char *)out, signed_len, sk) != 0) {
        rv = AP_EINTERNAL;
        goto err_after_dump;
    }
    out[signed_len] = '.';
    sodium_bin2base64(out + signed_len + 1, TOKEN_SIG_B64_LEN + 1, sig, sizeof sig, B64_VARIANT);
    free(text);
    return 0;

err_after_dump:
    free(text);
    out[0] = '\0';
    return rv;
}

int ap_token_verify(const char *token, size_t len, const uint8_t pk[AP_TOKEN_PK_SIZE], int64_t now,
                    struct ap_claims *out, char *errmsg)
{
    unsigned char sig[crypto_sign_BYTES];
    unsigned char payload[AP_TOKEN_MAX_LEN];
    size_t payload_len = 0, sig_len = 0;
    char when[21];
    int rv;

    memset(out, 0, sizeof *out);
    if (sodium_ready() != 0) {
        msg_set(errmsg, "cannot verify tokens: libsodium failed to start");
        return AP_EAUTH;
    }
    /* Bound the work before decoding anything. */
    if (token == NULL || len == 0) {
        msg_set(errmsg, "malformed token: empty");
        return AP_EAUTH;
    }
    if (len > AP_TOKEN_MAX_LEN - 1) {
        msg_set(errmsg, "malformed token: longer than %d bytes", AP_TOKEN_MAX_LEN - 1);
        return AP_EAUTH;
    }
    if (len < TOKEN_PREFIX_LEN || memcmp(token, TOKEN_PREFIX, TOKEN_PREFIX_LEN) != 0) {
        msg_set(errmsg, "malformed token: does not start with \"ap1.\"");
        return AP_EAUTH;
    }
    const char *p64 = token + TOKEN_PREFIX_LEN;
    const char *dot = memchr(p64, '.', len - TOKEN_PREFIX_LEN);
    if (dot == NULL || dot == p64) {
        msg_set(errmsg, "malformed token: not ap1.<payload>.<signature>");
        return AP_EAUTH;
    }
    const char *s64 = dot + 1;
    size_t p64_len = (size_t)(dot - p64);
    size_t s64_len = len - (size_t)(s64 - token);
    /* The alphabet check refuses a further '.', NUL, padding and trailing
     * garbage; a NULL b64_end makes libsodium refuse non-zero leftover bits;
     * so each payload and signature has exactly one text. */
    if (!b64_alphabet_ok(p64, p64_len) ||
        sodium_base642bin(payload, sizeof payload, p64, p64_len, NULL, &payload_len, NULL,
                          B64_VARIANT) != 0) {
        msg_set(errmsg, "malformed token: payload is not base64url");
        return AP_EAUTH;
    }
    if (s64_len != TOKEN_SIG_B64_LEN || !b64_alphabet_ok(s64, s64_len) ||
        sodium_base642bin(sig, sizeof sig, s64, s64_len, NULL, &sig_len, NULL, B64_VARIANT) != 0 ||
        sig_len != sizeof sig) {
        msg_set(errmsg, "malformed token: signature is not %d base64url characters",
                TOKEN_SIG_B64_LEN);
        return AP_EAUTH;
    }
    /* Authenticate before parsing: only the controller's own bytes reach the
     * JSON parser. */
    if (crypto_sign_verify_detached(sig, (const unsigned char *)token, TOKEN_PREFIX_LEN + p64_len,
                                    pk) != 0) {
        msg_set(errmsg, "token signature is not valid");
        return AP_EAUTH;
    }
    json_error_t jerr;
    json_t *j = json_loadb((const char *)payload, payload_len, JSON_REJECT_DUPLICATES, &jerr);
    if (j == NULL) {
        msg_set(errmsg, "malformed token: payload is not JSON: %s", jerr.text);
        return AP_EAUTH;
    }
    rv = payload_parse(j, out, errmsg);
    json_decref(j);
    if (rv != 0) {
        goto err_after_parse;
    }
    if (now < out->iat - AP_TOKEN_CLOCK_SKEW) {
        ap_token_format_time(out->iat, when);
        msg_set(errmsg, "token not valid yet (issued at %s; check this machine's clock)", when);
        rv = AP_EAUTH;
        goto err_after_parse;
    }
    if (now >= out->exp) {
        ap_token_format_time(out->exp, when);
        msg_set(errmsg, "token expired at %s", when);
        rv = AP_EAUTH;
        goto err_after_parse;
    }
    return 0;

err_after_parse:
    memset(out, 0, sizeof *out);
    return rv;
}

int ap_token_check_revoked(const struct ap_claims *c, uint64_t min_gen, bool deleted, char *errmsg)
{
    if (deleted) {
        msg_set(errmsg, "token revoked: user '%s' was deleted", c->user);
        return AP_EAUTH;
    }
    if (c->gen < min_gen) {
        msg_set(errmsg, "token revoked: grants of '%s' changed; log in again", c->user);
        return AP_EAUTH;
    }
    return 0;
}

/* ---- passwords ----------------------------------------------------------- */

int ap_password_hash(const char *password, char out[AP_PASSWORD_HASH_SIZE])
{
    out[0] = '\0';
    if (password == NULL) {
        return AP_EINVAL;
    }
    size_t n = strnlen(password, AP_PASSWORD_MAX_LEN + 1);
    if (n < AP_PASSWORD_MIN_LEN || n > AP_PASSWORD_MAX_LEN) {
        return AP_EINVAL;
    }
    int rv = sodium_ready();
    if (rv != 0) {
        return rv;
    }
    /* libsodium fails here only when it cannot allocate the memory cost. */
    if (crypto_pwhash_str(out, password, n, crypto_pwhash_OPSLIMIT_INTERACTIVE,
                          crypto_pwhash_MEMLIMIT_INTERACTIVE) != 0) {
        out[0] = '\0';
        return AP_ENOMEM;
    }
    return 0;
}

/* A terminated string that claims to be an Argon2 hash. */
static bool hash_plausible(const char *hash)
{
    return hash != NULL && strnlen(hash, AP_PASSWORD_HASH_SIZE) < AP_PASSWORD_HASH_SIZE &&
           strncmp(hash, "$argon2", 7) == 0;
}

int ap_password_verify(const char *hash, const char *password)
{
    if (!hash_plausible(hash)) {
        return AP_EINVAL;
    }
    if (password == NULL) {
        return AP_EAUTH;
    }
    size_t n = strnlen(password, AP_PASSWORD_MAX_LEN + 1);
    if (n < AP_PASSWORD_MIN_LEN || n > AP_PASSWORD_MAX_LEN) {
        return AP_EAUTH;
    }
    if (sodium_ready() != 0) {
        return AP_EINTERNAL;
    }
    return crypto_pwhash_str_verify(hash, password, n) == 0 ? 0 : AP_EAUTH;
}

bool ap_password_needs_rehash(const char *hash)
{
    if (!hash_plausible(hash) || sodium_ready() != 0) {
        return true;
    }
    /* 0: same algorithm and parameters; 1: other parameters; -1: not argon2id. */
    return crypto_pwhash_str_needs_rehash(hash, crypto_pwhash_OPSLIMIT_INTERACTIVE,
                                          crypto_pwhash_MEMLIMIT_INTERACTIVE) != 0;
}
