/* authz: decide whether a token's grants allow an action on a tenant, region and site. */
#include "ap/authz.h"

#include "ap/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Per action: the role it needs, what it does to a tenant, and its plural for
 * "<plural> need <role>" (docs/security.md "Roles and scopes"). */
struct action_row {
    enum ap_role need;
    const char *does;
    const char *plural;
};

static const struct action_row actions[] = {
    [AP_ACT_READ] = {AP_ROLE_READER, "read instances of", "reads need"},
    [AP_ACT_WRITE] = {AP_ROLE_MEMBER, "write instances of", "writes need"},
    [AP_ACT_TENANT_ADMIN] = {AP_ROLE_ADMIN, "manage users and grants of",
                             "managing users and grants needs"},
    [AP_ACT_OPERATE] = {AP_ROLE_OPERATOR, "operate", "operating needs"},
};

/* A bounded string builder over a why buffer that may be NULL. */
struct why_buf {
    char *s;
    size_t len;
};

static void why_add(struct why_buf *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void why_add(struct why_buf *w, const char *fmt, ...)
{
    if (w->s == NULL || w->len >= AP_ERRMSG_SIZE - 1) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(w->s + w->len, AP_ERRMSG_SIZE - w->len, fmt, ap);
    va_end(ap);
    if (n > 0) {
        w->len += (size_t)n;
        if (w->len > AP_ERRMSG_SIZE - 1) {
            w->len = AP_ERRMSG_SIZE - 1;
        }
    }
}

static size_t n_grants(const struct ap_claims *c)
{
    return c->n_grants < AP_CLAIMS_MAX_GRANTS ? c->n_grants : AP_CLAIMS_MAX_GRANTS;
}

static bool listed(const char (*list)[AP_NAME_MAX], size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++) {
        if (strncmp(list[i], name, AP_NAME_MAX) == 0) {
            return true;
        }
    }
    return false;
}

/* The scope rules of ap_authz_check. */
static bool scope_covers(const struct ap_grant *g, const struct ap_target *t)
{
    size_t nr = g->n_regions < AP_GRANT_MAX_REGIONS ? g->n_regions : AP_GRANT_MAX_REGIONS;
    size_t ns = g->n_sites < AP_GRANT_MAX_SITES ? g->n_sites : AP_GRANT_MAX_SITES;
    if (nr == 0 && ns == 0) {
        return true;
    }
    if (t->region != NULL && listed(g->regions, nr, t->region)) {
        return true;
    }
    return t->site != NULL && listed(g->sites, ns, t->site);
}

/* A non-operator grant on tenant (operator grants carry no tenant). */
static bool on_tenant(const struct ap_grant *g, const char *tenant)
{
    return g->role != AP_ROLE_OPERATOR && g->tenant[0] != '\0' &&
           strncmp(g->tenant, tenant, AP_NAME_MAX) == 0;
}

enum ap_role ap_authz_required_role(enum ap_action a)
{
    if ((unsigned)a < sizeof actions / sizeof actions[0]) {
        return actions[a].need;
    }
    return AP_ROLE_OPERATOR;
}

bool ap_authz_is_operator(const struct ap_claims *c)
{
    for (size_t i = 0; i < n_grants(c); i++) {
        if (c->grants[i].role == AP_ROLE_OPERATOR) {
            return true;
        }
    }
    return false;
}

bool ap_authz_any_tenant(const struct ap_claims *c, const char *tenant)
{
    if (ap_authz_is_operator(c)) {
        return true;
    }
    if (tenant == NULL || tenant[0] == '\0') {
        return false;
    }
    for (size_t i = 0; i < n_grants(c); i++) {
        if (on_tenant(&c->grants[i], tenant)) {
            return true;
        }
    }
    return false;
}

/* " on site 's' (region 'r')", " in region 'r'" or " across all sites". */
static void add_where(struct why_buf *w, const struct ap_target *t)
{
    if (t->site != NULL) {
        why_add(w, " on site '%.64s'", t->site);
        if (t->region != NULL) {
            why_add(w, " (region '%.64s')", t->region);
        }
    } else if (t->region != NULL) {
        why_add(w, " in region '%.64s'", t->region);
    } else {
        why_add(w, " across all sites");
    }
}

/* The regions, then the sites, that grants of role >= need on tenant cover. */
static void add_granted_scope(struct why_buf *w, const struct ap_claims *c, const char *tenant,
                              enum ap_role need)
{
    static const char *const kinds[] = {"regions", "sites"};
    bool any = false;
    for (size_t kind = 0; kind < 2; kind++) {
        size_t shown = 0;
        for (size_t i = 0; i < n_grants(c); i++) {
            const struct ap_grant *g = &c->grants[i];
            if (!on_tenant(g, tenant) || g->role < need) {
                continue;
            }
            size_t n = kind == 0 ? g->n_regions : g->n_sites;
            size_t max = kind == 0 ? AP_GRANT_MAX_REGIONS : AP_GRANT_MAX_SITES;
            for (size_t k = 0; k < n && k < max; k++) {
                if (shown == 0) {
                    why_add(w, "%s%s ", any ? "; " : "", kinds[kind]);
                    any = true;
                }
                why_add(w, "%s%.64s", shown > 0 ? ", " : "",
                        kind == 0 ? g->regions[k] : g->sites[k]);
                shown++;
            }
        }
    }
}

int ap_authz_check(const struct ap_claims *c, enum ap_action a, const struct ap_target *t,
                   char *why)
{
    struct why_buf w = {why, 0};
    if (why != NULL) {
        why[0] = '\0';
    }
    if (ap_authz_is_operator(c)) {
        return 0;
    }
    if ((unsigned)a >= sizeof actions / sizeof actions[0]) {
        why_add(&w, "user '%s' may not do action %d: unknown action", c->user, (int)a);
        return AP_EPERM;
    }
    const struct action_row *row = &actions[a];
    if (a == AP_ACT_OPERATE) {
        why_add(&w,
                "user '%s' may not operate sites, regions, tenants or quotas: that needs role "
                "operator",
                c->user);
        return AP_EPERM;
    }
    if (t->tenant == NULL || t->tenant[0] == '\0') {
        why_add(&w, "user '%s' may not %s every tenant: that needs role operator", c->user,
                row->does);
        return AP_EPERM;
    }

    /* Find a grant that applies; otherwise remember the best role the user
     * holds on the tenant, over the target's scope and anywhere, to say what
     * is missing. */
    enum ap_role best_covering = 0, best_anywhere = 0;
    bool strong_enough_elsewhere = false;
    for (size_t i = 0; i < n_grants(c); i++) {
        const struct ap_grant *g = &c->grants[i];
        if (!on_tenant(g, t->tenant)) {
            continue;
        }
        bool covers = scope_covers(g, t);
        if (covers && g->role >= row->need) {
            return 0;
        }
        if (covers && g->role > best_covering) {
            best_covering = g->role;
        }
        if (g->role > best_anywhere) {
            best_anywhere = g->role;
        }
        strong_enough_elsewhere = strong_enough_elsewhere || g->role >= row->need;
    }

    if (best_anywhere == 0) {
        why_add(&w, "user '%s' has no grant on tenant '%.64s'", c->user, t->tenant);
    } else if (strong_enough_elsewhere) {
        /* The role is there, the scope is not. */
        why_add(&w, "user '%s' may not %s tenant '%.64s'", c->user, row->does, t->tenant);
        add_where(&w, t);
        why_add(&w, ": granted ");
        add_granted_scope(&w, c, t->tenant, row->need);
    } else {
        enum ap_role has = best_covering != 0 ? best_covering : best_anywhere;
        why_add(&w, "user '%s' has role %s on tenant '%.64s': %s %s", c->user, ap_role_name(has),
                t->tenant, row->plural, ap_role_name(row->need));
    }
    return AP_EPERM;
}
