/* authn: who sent an HTTP request: the bearer token, verified offline with the signing public key
 * and checked against the revocations this tier knows (docs/security.md). */
#ifndef AP_AUTHN_H
#define AP_AUTHN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ap/authz.h"
#include "ap/http.h"
#include "ap/token.h"

/** Where a tier keeps what it knows: the public key and users' generations. */
struct ap_authn_source {
    /** 0 with pk filled, or AP_ENOTFOUND while no key is known yet. */
    int (*key)(void *data, uint8_t pk[AP_TOKEN_PK_SIZE]);
    /**
     * The lowest valid generation of user and whether it was deleted; 0, or
     * AP_ENOTFOUND when the tier has not heard of the user yet (then a token
     * with a valid signature is honoured).
     */
    int (*user)(void *data, const char *user, uint64_t *min_gen, bool *deleted);
    void *data;
    /**
     * How long the answers of key() and user() are reused, ms (0: asked at every
     * request). Each is a SQLite read; reusing them for a second adds at most that
     * to a revocation's delay (docs/security.md).
     */
    unsigned lookup_ttl_ms;
};

struct ap_authn;

/**
 * cache_size: verified tokens remembered (a hit skips the signature check but
 * never the expiry or revocation checks); 0 disables the cache.
 * Returns 0 or AP_ENOMEM.
 */
int ap_authn_new(struct ap_authn **out, const struct ap_authn_source *src, size_t cache_size);
void ap_authn_free(struct ap_authn *a);

/** Forget cached tokens (after a key change). */
void ap_authn_flush(struct ap_authn *a);

/**
 * Authenticate a request's "Authorization: Bearer <token>". Returns the
 * claims (valid until the next call on this authn), or NULL after answering
 * 401 with the reason ("authentication required: send Authorization: Bearer
 * <token>", "token expired at ...", "token revoked: ...", "this node has not
 * received the signing key yet").
 */
const struct ap_claims *ap_authn_request(struct ap_authn *a, struct ap_http_req *req);

/**
 * ap_authz_check() for a request: true when allowed; otherwise answers 403
 * (code "forbidden") with the reason and returns false.
 */
bool ap_authn_allow(struct ap_http_req *req, const struct ap_claims *c, enum ap_action act,
                    const char *tenant, const char *region, const char *site);

#endif
