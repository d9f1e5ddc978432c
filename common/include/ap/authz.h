/* authz: decide whether a token's grants allow an action on a tenant, region and site. */
#ifndef AP_AUTHZ_H
#define AP_AUTHZ_H

#include <stdbool.h>

#include "ap/token.h"

/** What a request does; each needs a minimum role (docs/security.md "Roles and scopes"). */
enum ap_action {
    AP_ACT_READ,         /* see a tenant's instances, quotas (reader and up) */
    AP_ACT_WRITE,        /* create/stop/start/delete a tenant's instances (member and up) */
    AP_ACT_TENANT_ADMIN, /* manage a tenant's users and grants (admin and up) */
    AP_ACT_OPERATE,      /* sites, regions, tenants, quotas: the infrastructure owner (operator) */
};

/** What a request acts on. Strings are borrowed for the duration of the call. */
struct ap_target {
    const char *tenant; /* NULL: not tenant-specific (operator actions) */
    const char *region; /* NULL: unknown or every region */
    const char *site;   /* NULL: not site-specific */
};

/**
 * The role an action needs at least: reader, member, admin or operator.
 * AP_ROLE_OPERATOR for an unknown action.
 */
enum ap_role ap_authz_required_role(enum ap_action a);

/**
 * Whether some grant of c allows action a on target t. Rules: an operator
 * grant allows everything; otherwise the target needs a tenant, and a grant
 * applies when its tenant equals t->tenant, its role is at least the one a
 * needs (admin > member > reader) and its scope covers (region, site): scope
 * all covers everything; a regions scope covers a target whose region is
 * listed; a sites scope covers a target whose site is listed. A target with
 * site == NULL (e.g. listing all of a tenant's instances) is covered only by
 * scope all or by a regions scope naming t->region; a target with
 * region == NULL is never covered by a regions scope, so callers fill in the
 * region whenever they know it. AP_ACT_OPERATE needs an operator grant.
 * c and t are borrowed. Returns 0, or AP_EPERM with a message in why
 * (AP_ERRMSG_SIZE bytes, may be NULL) naming the user and what is missing:
 * "user 'alice' may not write instances of tenant 'acme' on site 'r1-s2':
 * granted sites r1-s1", "user 'bob' has role reader on tenant 'acme': writes
 * need member".
 */
int ap_authz_check(const struct ap_claims *c, enum ap_action a, const struct ap_target *t,
                   char *why);

/**
 * True when some grant lets c read something of tenant, whatever its scope
 * (an operator grant, or any grant on tenant): lists are filtered with this
 * first and then row by row with ap_authz_check. False for a NULL tenant
 * unless c is an operator.
 */
bool ap_authz_any_tenant(const struct ap_claims *c, const char *tenant);

/** True when c holds an operator grant. */
bool ap_authz_is_operator(const struct ap_claims *c);

#endif
