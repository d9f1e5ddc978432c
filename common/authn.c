/* authn: bearer tokens of HTTP requests, verified offline, with a small cache of verified tokens
 * (docs/security.md). */
#include "ap/authn.h"

#include "ap/base.h"
#include "ap/err.h"
#include "ap/log.h"

#include <sodium.h>
#include <string.h>
#include <time.h>

#define HASH_SIZE 16
#define USER_SLOTS 32

struct cache_entry {
    bool used;
    uint8_t hash[HASH_SIZE];
    struct ap_claims claims;
};

/* A remembered answer of src.user (or of src.key, in struct ap_authn). */
struct user_slot {
    char name[AP_NAME_MAX];
    uint64_t at_ms; /* 0: empty. */
    int rv;
    uint64_t gen;
    bool deleted;
};

struct ap_authn {
    struct ap_authn_source src;
    uint64_t key_at_ms; /* 0: not cached. */
    uint8_t key[AP_TOKEN_PK_SIZE];
    struct user_slot users[USER_SLOTS];
    unsigned next_slot;
    size_t cache_size;
    struct cache_entry *cache;
    struct ap_claims scratch;
};

int ap_authn_new(struct ap_authn **out, const struct ap_authn_source *src, size_t cache_size)
{
    struct ap_authn *a = ap_calloc(1, sizeof *a);
    if (a == NULL) {
        return AP_ENOMEM;
    }
    if (cache_size > 0) {
        a->cache = ap_calloc(cache_size, sizeof *a->cache);
        if (a->cache == NULL) {
            ap_free(a);
            return AP_ENOMEM;
        }
    }
    a->src = *src;
    a->cache_size = cache_size;
    if (sodium_init() < 0) {
        ap_free(a->cache);
        ap_free(a);
        return AP_EINTERNAL;
    }
    *out = a;
    return 0;
}

void ap_authn_free(struct ap_authn *a)
{
    if (a != NULL) {
        ap_free(a->cache);
        ap_free(a);
    }
}

void ap_authn_flush(struct ap_authn *a)
{
    a->key_at_ms = 0;
    memset(a->users, 0, sizeof a->users);
    for (size_t i = 0; i < a->cache_size; i++) {
        a->cache[i].used = false;
    }
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u + 1u;
}

static bool fresh(const struct ap_authn *a, uint64_t at_ms, uint64_t now)
{
    return at_ms != 0 && now - at_ms < a->src.lookup_ttl_ms;
}

static int lookup_key(struct ap_authn *a, uint8_t pk[AP_TOKEN_PK_SIZE])
{
    uint64_t now = mono_ms();
    if (!fresh(a, a->key_at_ms, now)) {
        /* Only a known key is remembered: the first one is picked up at once. */
        a->key_at_ms = a->src.key(a->src.data, a->key) == 0 ? now : 0;
        if (a->key_at_ms == 0) {
            return AP_ENOTFOUND;
        }
    }
    memcpy(pk, a->key, sizeof a->key);
    return 0;
}

static int lookup_user(struct ap_authn *a, const char *user, uint64_t *gen, bool *deleted)
{
    uint64_t now = mono_ms();
    struct user_slot *slot = NULL;
    for (unsigned i = 0; i < USER_SLOTS; i++) {
        if (a->users[i].at_ms != 0 && strcmp(a->users[i].name, user) == 0) {
            slot = &a->users[i];
            break;
        }
    }
    if (slot == NULL || !fresh(a, slot->at_ms, now)) {
        if (slot == NULL) {
            slot = &a->users[a->next_slot++ % USER_SLOTS];
            ap_strlcpy(slot->name, user, sizeof slot->name);
        }
        slot->gen = 0;
        slot->deleted = false;
        slot->rv = a->src.user(a->src.data, user, &slot->gen, &slot->deleted);
        slot->at_ms = a->src.lookup_ttl_ms > 0 ? now : 0;
    }
    *gen = slot->gen;
    *deleted = slot->deleted;
    return slot->rv;
}

static void reply_401(struct ap_http_req *req, const char *msg)
{
    ap_http_req_add_resp_header(req, "WWW-Authenticate", "Bearer realm=\"archipel\"");
    ap_http_reply_error(req, 401, "unauthenticated", msg, NULL);
}

const struct ap_claims *ap_authn_request(struct ap_authn *a, struct ap_http_req *req)
{
    char errmsg[AP_ERRMSG_SIZE];
    const char *h = ap_http_req_header(req, "Authorization");
    if (h == NULL || strncasecmp(h, "Bearer ", 7) != 0) {
        reply_401(req, "authentication required: send 'Authorization: Bearer <token>' (get one "
                       "with POST /v1/tokens or 'archipel login')");
        return NULL;
    }
    const char *tok = h + 7;
    while (*tok == ' ') {
        tok++;
    }
    size_t len = strlen(tok);
    if (len == 0 || len >= AP_TOKEN_MAX_LEN) {
        reply_401(req, "malformed token");
        return NULL;
    }
    uint8_t pk[AP_TOKEN_PK_SIZE];
    if (lookup_key(a, pk) != 0) {
        reply_401(req, "this node has not received the signing key from its parent tier yet; "
                       "retry shortly");
        return NULL;
    }
    int64_t now = (int64_t)time(NULL);
    const struct ap_claims *c = NULL;
    struct cache_entry *e = NULL;
    uint8_t hash[HASH_SIZE];
    if (a->cache_size > 0) {
        /* Keyed by the public key too: a new key never honours an old entry. */
        crypto_generichash_state st;
        crypto_generichash_init(&st, NULL, 0, HASH_SIZE);
        crypto_generichash_update(&st, pk, sizeof pk);
        crypto_generichash_update(&st, (const uint8_t *)tok, len);
        crypto_generichash_final(&st, hash, HASH_SIZE);
        uint32_t slot;
        memcpy(&slot, hash, sizeof slot);
        e = &a->cache[slot % a->cache_size];
        if (e->used && sodium_memcmp(e->hash, hash, HASH_SIZE) == 0) {
            c = &e->claims;
            if (now >= c->exp) {
                e->used = false;
                c = NULL; /* Near or past expiry: verify decides and says how it expired. */
            }
        }
    }
    if (c == NULL) {
        if (ap_token_verify(tok, len, pk, now, &a->scratch, errmsg) != 0) {
            reply_401(req, errmsg);
            return NULL;
        }
        c = &a->scratch;
        if (e != NULL) {
            e->claims = a->scratch;
            memcpy(e->hash, hash, HASH_SIZE);
            e->used = true;
            c = &e->claims;
        }
    }
    uint64_t min_gen = 0;
    bool deleted = false;
    if (a->src.user != NULL && lookup_user(a, c->user, &min_gen, &deleted) == 0 &&
        ap_token_check_revoked(c, min_gen, deleted, errmsg) != 0) {
        reply_401(req, errmsg);
        return NULL;
    }
    return c;
}

bool ap_authn_allow(struct ap_http_req *req, const struct ap_claims *c, enum ap_action act,
                    const char *tenant, const char *region, const char *site)
{
    char why[AP_ERRMSG_SIZE];
    struct ap_target t = {.tenant = tenant, .region = region, .site = site};
    if (ap_authz_check(c, act, &t, why) == 0) {
        return true;
    }
    ap_http_reply_error(req, 403, "forbidden", why, NULL);
    return false;
}
