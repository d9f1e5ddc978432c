/* Unit tests for authz: a table of (grants, action, target) -> allowed or denied, and why. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "ap/authz.h"
#include "ap/base.h"
#include "ap/err.h"

#include <stdio.h>
#include <string.h>

/* The people of the table, each with their grants as the JSON the API takes. */
struct person {
    const char *user;
    const char *grants[4];
};

static const struct person people[] = {
    {"root", {"{\"role\":\"operator\"}"}},
    {"alice",
     {"{\"role\":\"member\",\"tenant\":\"acme\",\"scope\":{\"sites\":[\"r1-s1\"]}}",
      "{\"role\":\"reader\",\"tenant\":\"acme\",\"scope\":{\"regions\":[\"r2\"]}}"}},
    {"bob", {"{\"role\":\"reader\",\"tenant\":\"acme\",\"scope\":{}}"}},
    {"carol",
     {"{\"role\":\"admin\",\"tenant\":\"acme\"}",
      "{\"role\":\"member\",\"tenant\":\"beta\",\"scope\":{\"regions\":[\"r1\"]}}"}},
    {"dave",
     {"{\"role\":\"member\",\"tenant\":\"acme\",\"scope\":{\"regions\":[\"r1\"],\"sites\":"
      "[\"r2-s5\"]}}"}},
    {"nobody", {NULL}},
};

static void load(const char *user, struct ap_claims *c)
{
    memset(c, 0, sizeof *c);
    for (size_t p = 0; p < sizeof people / sizeof people[0]; p++) {
        if (strcmp(people[p].user, user) != 0) {
            continue;
        }
        ap_strlcpy(c->user, user, sizeof c->user);
        c->iat = 1;
        c->exp = 2;
        for (size_t i = 0; i < 4 && people[p].grants[i] != NULL; i++) {
            char errmsg[AP_ERRMSG_SIZE];
            json_t *j = json_loads(people[p].grants[i], 0, NULL);
            assert_non_null(j);
            if (ap_grant_from_json(j, &c->grants[c->n_grants++], errmsg) != 0) {
                fail_msg("%s: %s", people[p].grants[i], errmsg);
            }
            json_decref(j);
        }
        return;
    }
    fail_msg("no person %s", user);
}

struct row {
    const char *user;
    enum ap_action action;
    const char *tenant, *region, *site;
    int want;        /* 0 or AP_EPERM */
    const char *why; /* the whole message when exact, else a part of it */
    bool exact;
};

#define ALLOW(u, a, t, r, s)                                                                       \
    {                                                                                              \
        u, a, t, r, s, 0, NULL, false                                                              \
    }
#define DENY(u, a, t, r, s, w)                                                                     \
    {                                                                                              \
        u, a, t, r, s, AP_EPERM, w, false                                                          \
    }
#define DENY_EXACT(u, a, t, r, s, w)                                                               \
    {                                                                                              \
        u, a, t, r, s, AP_EPERM, w, true                                                           \
    }

static const struct row table[] = {
    /* An operator may do everything, on every tenant or none. */
    ALLOW("root", AP_ACT_OPERATE, NULL, NULL, NULL),
    ALLOW("root", AP_ACT_READ, NULL, NULL, NULL),
    ALLOW("root", AP_ACT_WRITE, "acme", "r9", "r9-s9"),
    ALLOW("root", AP_ACT_TENANT_ADMIN, "beta", NULL, NULL),

    /* admin > member > reader; only operators operate. */
    ALLOW("carol", AP_ACT_READ, "acme", "r1", "r1-s1"),
    ALLOW("carol", AP_ACT_WRITE, "acme", NULL, "r1-s1"),
    ALLOW("carol", AP_ACT_TENANT_ADMIN, "acme", NULL, NULL),
    DENY_EXACT("carol", AP_ACT_OPERATE, NULL, NULL, NULL,
               "user 'carol' may not operate sites, regions, tenants or quotas: that needs role "
               "operator"),
    DENY_EXACT("carol", AP_ACT_OPERATE, "acme", "r1", "r1-s1",
               "user 'carol' may not operate sites, regions, tenants or quotas: that needs role "
               "operator"),
    ALLOW("bob", AP_ACT_READ, "acme", "r1", "r1-s1"),
    DENY_EXACT("bob", AP_ACT_WRITE, "acme", "r1", "r1-s1",
               "user 'bob' has role reader on tenant 'acme': writes need member"),
    DENY_EXACT("bob", AP_ACT_TENANT_ADMIN, "acme", NULL, NULL,
               "user 'bob' has role reader on tenant 'acme': managing users and grants needs "
               "admin"),
    DENY_EXACT("carol", AP_ACT_TENANT_ADMIN, "beta", "r1", NULL,
               "user 'carol' has role member on tenant 'beta': managing users and grants needs "
               "admin"),

    /* A grant applies only to its own tenant; tenant-less targets need an operator. */
    DENY_EXACT("bob", AP_ACT_READ, "beta", NULL, NULL, "user 'bob' has no grant on tenant 'beta'"),
    DENY_EXACT("nobody", AP_ACT_READ, "acme", "r1", "r1-s1",
               "user 'nobody' has no grant on tenant 'acme'"),
    DENY_EXACT("carol", AP_ACT_READ, NULL, NULL, NULL,
               "user 'carol' may not read instances of every tenant: that needs role operator"),
    DENY("carol", AP_ACT_READ, "", NULL, NULL, "that needs role operator"),

    /* Scope all covers every target, with or without site and region. */
    ALLOW("bob", AP_ACT_READ, "acme", NULL, NULL),
    ALLOW("bob", AP_ACT_READ, "acme", "r7", NULL),
    ALLOW("bob", AP_ACT_READ, "acme", NULL, "r7-s2"),

    /* A sites scope covers the sites listed, whatever the region... */
    ALLOW("alice", AP_ACT_WRITE, "acme", "r1", "r1-s1"),
    ALLOW("alice", AP_ACT_WRITE, "acme", NULL, "r1-s1"),
    DENY_EXACT("alice", AP_ACT_WRITE, "acme", NULL, "r1-s2",
               "user 'alice' may not write instances of tenant 'acme' on site 'r1-s2': granted "
               "sites r1-s1"),
    DENY_EXACT("alice", AP_ACT_WRITE, "acme", "r1", "r1-s2",
               "user 'alice' may not write instances of tenant 'acme' on site 'r1-s2' (region "
               "'r1'): granted sites r1-s1"),
    /* ...and never a target without a site (listing a whole region or tenant). */
    DENY_EXACT("alice", AP_ACT_WRITE, "acme", "r1", NULL,
               "user 'alice' may not write instances of tenant 'acme' in region 'r1': granted "
               "sites r1-s1"),
    DENY_EXACT("alice", AP_ACT_WRITE, "acme", NULL, NULL,
               "user 'alice' may not write instances of tenant 'acme' across all sites: granted "
               "sites r1-s1"),

    /* A regions scope covers targets whose region is listed, site or not... */
    ALLOW("alice", AP_ACT_READ, "acme", "r2", "r2-s3"),
    ALLOW("alice", AP_ACT_READ, "acme", "r2", NULL),
    /* ...but not a target whose region is unknown. */
    DENY_EXACT("alice", AP_ACT_READ, "acme", NULL, "r2-s3",
               "user 'alice' may not read instances of tenant 'acme' on site 'r2-s3': granted "
               "regions r2; sites r1-s1"),
    DENY("alice", AP_ACT_READ, "acme", "r3", NULL, "granted regions r2; sites r1-s1"),
    /* A higher role on one site includes the lower one there. */
    ALLOW("alice", AP_ACT_READ, "acme", "r1", "r1-s1"),
    /* The reader grant covers r2 but is too weak to write; the member grant is elsewhere. */
    DENY_EXACT("alice", AP_ACT_WRITE, "acme", "r2", "r2-s3",
               "user 'alice' may not write instances of tenant 'acme' on site 'r2-s3' (region "
               "'r2'): granted sites r1-s1"),
    DENY_EXACT("alice", AP_ACT_TENANT_ADMIN, "acme", "r1", "r1-s1",
               "user 'alice' has role member on tenant 'acme': managing users and grants needs "
               "admin"),
    ALLOW("carol", AP_ACT_WRITE, "beta", "r1", "r1-s4"),
    ALLOW("carol", AP_ACT_WRITE, "beta", "r1", NULL),
    DENY("carol", AP_ACT_WRITE, "beta", "r2", "r2-s4", "granted regions r1"),

    /* Both lists: their union. */
    ALLOW("dave", AP_ACT_WRITE, "acme", "r1", "r1-s9"),
    ALLOW("dave", AP_ACT_WRITE, "acme", "r2", "r2-s5"),
    ALLOW("dave", AP_ACT_WRITE, "acme", NULL, "r2-s5"),
    ALLOW("dave", AP_ACT_WRITE, "acme", "r1", NULL),
    DENY_EXACT("dave", AP_ACT_WRITE, "acme", "r2", "r2-s6",
               "user 'dave' may not write instances of tenant 'acme' on site 'r2-s6' (region "
               "'r2'): granted regions r1; sites r2-s5"),
    DENY("dave", AP_ACT_WRITE, "acme", "r2", NULL, "granted regions r1; sites r2-s5"),
};

static void test_table(void **state)
{
    (void)state;
    struct ap_claims c;
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        const struct row *r = &table[i];
        const struct ap_target t = {r->tenant, r->region, r->site};
        char why[AP_ERRMSG_SIZE] = "unset";
        load(r->user, &c);
        int rc = ap_authz_check(&c, r->action, &t, why);
        if (rc != r->want) {
            fail_msg("row %zu (%s action %d on %s/%s/%s): got %d, want %d; why '%s'", i, r->user,
                     (int)r->action, r->tenant ? r->tenant : "-", r->region ? r->region : "-",
                     r->site ? r->site : "-", rc, r->want, why);
        }
        /* The verdict does not depend on whether the caller wants a reason. */
        assert_int_equal(ap_authz_check(&c, r->action, &t, NULL), rc);
        if (rc == 0) {
            assert_string_equal(why, "");
            continue;
        }
        char who[AP_NAME_MAX + 8];
        snprintf(who, sizeof who, "user '%s'", r->user);
        if (strncmp(why, who, strlen(who)) != 0) {
            fail_msg("row %zu: '%s' does not start with %s", i, why, who);
        }
        if (r->exact ? strcmp(why, r->why) != 0 : strstr(why, r->why) == NULL) {
            fail_msg("row %zu: got '%s', want %s'%s'", i, why, r->exact ? "" : "a part ", r->why);
        }
    }
}

static void test_helpers(void **state)
{
    (void)state;
    struct ap_claims c;

    assert_int_equal(ap_authz_required_role(AP_ACT_READ), AP_ROLE_READER);
    assert_int_equal(ap_authz_required_role(AP_ACT_WRITE), AP_ROLE_MEMBER);
    assert_int_equal(ap_authz_required_role(AP_ACT_TENANT_ADMIN), AP_ROLE_ADMIN);
    assert_int_equal(ap_authz_required_role(AP_ACT_OPERATE), AP_ROLE_OPERATOR);

    load("root", &c);
    assert_true(ap_authz_is_operator(&c));
    assert_true(ap_authz_any_tenant(&c, "acme"));
    assert_true(ap_authz_any_tenant(&c, NULL));

    load("alice", &c);
    assert_false(ap_authz_is_operator(&c));
    assert_true(ap_authz_any_tenant(&c, "acme"));
    assert_false(ap_authz_any_tenant(&c, "beta"));
    assert_false(ap_authz_any_tenant(&c, NULL));
    assert_false(ap_authz_any_tenant(&c, ""));

    load("carol", &c);
    assert_true(ap_authz_any_tenant(&c, "beta"));

    load("nobody", &c);
    assert_false(ap_authz_is_operator(&c));
    assert_false(ap_authz_any_tenant(&c, "acme"));

    /* An unknown action is refused, even to an admin. */
    char why[AP_ERRMSG_SIZE];
    const struct ap_target t = {"acme", NULL, NULL};
    load("carol", &c);
    assert_int_equal(ap_authz_check(&c, (enum ap_action)42, &t, why), AP_EPERM);
    assert_non_null(strstr(why, "user 'carol'"));

    /* Long target names are cut, never overflow the message. */
    char longname[600];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    const struct ap_target lt = {"acme", longname, longname};
    load("alice", &c);
    assert_int_equal(ap_authz_check(&c, AP_ACT_WRITE, &lt, why), AP_EPERM);
    assert_true(strlen(why) < AP_ERRMSG_SIZE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_helpers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
