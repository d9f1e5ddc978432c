/* cmd_user: `archipel user create|grant|revoke|list`. */
#include "cli.h"
#include "output.h"

#include "ap/base.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Longest password read, terminator included. */
#define PASSWORD_SIZE 1024

/* A grant's scope as one cell: "all", "sites=a,b", "regions=r1" (and its tenant when another). */
static char *scope_cell(const json_t *grant, const char *user_tenant)
{
    const json_t *scope = json_object_get(grant, "scope");
    const char *tenant = json_string_value(json_object_get(grant, "tenant"));
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (f == NULL) {
        return NULL;
    }
    if (tenant != NULL && (user_tenant == NULL || strcmp(tenant, user_tenant) != 0)) {
        fprintf(f, "tenant=%s ", tenant);
    }
    if (json_object_size(scope) == 0) {
        fputs("all", f);
    }
    const char *key;
    json_t *v;
    bool first = true;
    json_object_foreach((json_t *)scope, key, v)
    {
        /* {"sites":["a","b"]} reads best as sites=a,b. */
        char *list = output__cell(v);
        fprintf(f, "%s%s=%s", first ? "" : " ", key, list != NULL ? list : "?");
        ap_free(list);
        first = false;
    }
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    char *out = ap_strdup(buf);
    free(buf);
    return out;
}

/* One row per grant (one with "-" for a user without any): NAME TENANT GRANT ROLE SCOPE. */
static int user_rows(struct output_table *t, const json_t *user)
{
    const char *tenant = json_string_value(json_object_get(user, "tenant"));
    const json_t *grants = json_object_get(user, "grants");
    int rv = 0;
    if (json_array_size(grants) == 0) {
        char *cells[] = {output__cell(json_object_get(user, "name")),
                         output__cell(json_object_get(user, "tenant")), ap_strdup("-"),
                         ap_strdup("-"), ap_strdup("-")};
        return output__table_add_owned(t, cells);
    }
    size_t i;
    const json_t *g;
    json_array_foreach(grants, i, g)
    {
        char *cells[] = {output__cell(json_object_get(user, "name")),
                         output__cell(json_object_get(user, "tenant")),
                         output__cell(json_object_get(g, "id")),
                         output__cell(json_object_get(g, "role")), scope_cell(g, tenant)};
        rv = rv != 0 ? rv : output__table_add_owned(t, cells);
    }
    return rv;
}

static int users_table(struct cli *c, json_t *doc)
{
    static const char *const cols[] = {"NAME", "TENANT", "GRANT", "ROLE", "SCOPE"};
    struct output_table *t = output__table_new(cols, AP_ARRAY_LEN(cols));
    if (t == NULL) {
        return cli__nomem(c);
    }
    const json_t *list = json_object_get(doc, "users");
    int rv = 0;
    if (json_is_array(list)) {
        size_t i;
        const json_t *u;
        json_array_foreach(list, i, u)
        {
            rv = rv != 0 ? rv : user_rows(t, u);
        }
    } else {
        rv = user_rows(t, doc);
    }
    if (rv == 0) {
        output__table_print(t, c->out);
    }
    output__table_free(t);
    return rv == 0 ? CLI_OK : cli__nomem(c);
}

static int run_create(struct cli *c, const struct cli_args *a)
{
    const char *name = a->pos[0];
    const char *tenant = cli__get(a, "tenant");
    const char *given = cli__get(a, "password");
    char password[PASSWORD_SIZE];
    int rv;
    if (tenant == NULL) {
        return cli__usage_error(c, "'user create' needs --tenant T; run 'archipel user create "
                                   "--help'");
    }
    if (given != NULL && cli__has(a, "password-stdin")) {
        return cli__usage_error(c, "give --password or --password-stdin, not both");
    }
    if ((rv = cli__check_name(c, "user name", name)) != CLI_OK ||
        (rv = cli__check_name(c, "--tenant", tenant)) != CLI_OK) {
        return rv;
    }
    if (given == NULL) {
        char prompt[128];
        snprintf(prompt, sizeof prompt, "password for %s: ", name);
        rv =
            cli__read_password(c, cli__has(a, "password-stdin"), prompt, password, sizeof password);
        if (rv != CLI_OK) {
            return rv;
        }
        given = password;
    }
    json_t *body = json_pack("{s:s, s:s, s:s}", "name", name, "tenant", tenant, "password", given);
    memset(password, 0, sizeof password);
    if (body == NULL) {
        return cli__usage_error(c, "the password is not valid UTF-8");
    }
    struct cli_reply r;
    rv = cli__call(c, "POST", "/v1/users", body, 0, &r);
    json_decref(body);
    if (rv == CLI_OK) {
        rv = cli__print(c, &r, users_table);
        cli__reply_free(&r);
    }
    return rv;
}

static int run_grant(struct cli *c, const struct cli_args *a)
{
    const char *name = a->pos[0];
    const char *role = cli__get(a, "role");
    const char *tenant = cli__get(a, "tenant");
    json_t *sites = NULL, *regions = NULL;
    int rv;
    if (role == NULL) {
        return cli__usage_error(c, "'user grant' needs --role R; run 'archipel user grant --help'");
    }
    if (strcmp(role, "reader") != 0 && strcmp(role, "member") != 0 && strcmp(role, "admin") != 0 &&
        strcmp(role, "operator") != 0) {
        return cli__usage_error(c, "--role must be reader, member, admin or operator, got '%s'",
                                role);
    }
    if (cli__has(a, "sites") && cli__has(a, "regions")) {
        return cli__usage_error(c, "give --sites or --regions, not both");
    }
    if ((rv = cli__check_name(c, "user name", name)) != CLI_OK ||
        (tenant != NULL && (rv = cli__check_name(c, "--tenant", tenant)) != CLI_OK) ||
        (rv = cli__names_field(c, a, "sites", &sites)) != CLI_OK ||
        (rv = cli__names_field(c, a, "regions", &regions)) != CLI_OK) {
        json_decref(sites);
        json_decref(regions);
        return rv;
    }
    json_t *body = json_pack("{s:s, s:s*, s:{s:o*, s:o*}}", "role", role, "tenant", tenant, "scope",
                             "sites", sites, "regions", regions);
    if (body == NULL) {
        return cli__nomem(c);
    }
    char path[128];
    snprintf(path, sizeof path, "/v1/users/%s/grants", name);
    struct cli_reply r;
    rv = cli__call(c, "POST", path, body, 0, &r);
    json_decref(body);
    if (rv == CLI_OK) {
        rv = cli__print(c, &r, cli__print_kv);
        cli__reply_free(&r);
    }
    return rv;
}

static int run_revoke(struct cli *c, const struct cli_args *a)
{
    const char *name = a->pos[0];
    long long id;
    int rv;
    if ((rv = cli__check_name(c, "user name", name)) != CLI_OK ||
        (rv = cli__parse_uint(c, "GRANT_ID", a->pos[1], INT64_MAX / 2, &id)) != CLI_OK) {
        return rv;
    }
    char path[128];
    snprintf(path, sizeof path, "/v1/users/%s/grants/%lld", name, id);
    struct cli_reply r;
    if ((rv = cli__call(c, "DELETE", path, NULL, 0, &r)) != CLI_OK) {
        return rv;
    }
    if (r.json == NULL && r.resp.len == 0) {
        fprintf(c->out, "revoked grant %lld of %s\n", id, name);
    } else {
        rv = cli__print(c, &r, cli__print_kv);
    }
    cli__reply_free(&r);
    return rv;
}

static int run_list(struct cli *c, const struct cli_args *a)
{
    char path[256] = "/v1/users";
    const char *tenant = cli__get(a, "tenant");
    int rv;
    if (tenant != NULL && ((rv = cli__check_name(c, "--tenant", tenant)) != CLI_OK ||
                           (rv = cli__query(c, path, sizeof path, "tenant", tenant)) != CLI_OK)) {
        return rv;
    }
    struct cli_reply r;
    if ((rv = cli__call(c, "GET", path, NULL, 0, &r)) != CLI_OK) {
        return rv;
    }
    rv = cli__print(c, &r, users_table);
    cli__reply_free(&r);
    return rv;
}

static const struct cli_opt create_opts[] = {
    {"tenant", CLI_OPT_VALUE, "T", "tenant the user belongs to (required)"},
    {"password", CLI_OPT_VALUE, "P",
     "the password (visible to other local users: prefer the "
     "prompt or --password-stdin)"},
    {"password-stdin", CLI_OPT_BOOL, NULL, "read the password from stdin's first line"},
    {NULL, 0, NULL, NULL},
};

static const struct cli_opt grant_opts[] = {
    {"role", CLI_OPT_VALUE, "reader|member|admin|operator", "the role granted (required)"},
    {"tenant", CLI_OPT_VALUE, "T", "tenant the role applies to (default: the user's)"},
    {"sites", CLI_OPT_VALUE, "S1,S2", "only on these sites"},
    {"regions", CLI_OPT_VALUE, "R1,R2", "only in these regions"},
    {NULL, 0, NULL, NULL},
};

static const struct cli_opt list_opts[] = {
    {"tenant", CLI_OPT_VALUE, "T", "only the users of tenant T"},
    {NULL, 0, NULL, NULL},
};

static const struct cli_opt no_opts[] = {{NULL, 0, NULL, NULL}};

static const struct cli_cmd user_cmds[] = {
    {"create", "NAME --tenant T [--password P | --password-stdin]",
     "Create a user (the password is asked for when not given).", create_opts, 1, 1, false,
     run_create},
    {"grant",
     "NAME --role reader|member|admin|operator [--tenant T] [--sites S1,S2 | --regions "
     "R1,R2]",
     "Grant a user a role, everywhere or only on some sites or regions.", grant_opts, 1, 1, false,
     run_grant},
    {"revoke", "NAME GRANT_ID", "Take a grant back (GRANT_ID from 'archipel user list').", no_opts,
     2, 2, false, run_revoke},
    {"list", "[--tenant T]", "List users and their grants (NAME TENANT GRANT ROLE SCOPE).",
     list_opts, 0, 0, false, run_list},
};

const struct cli_noun cmd_user__noun = {
    "user",
    "Users: people and robots, their passwords and their grants.",
    user_cmds,
    AP_ARRAY_LEN(user_cmds),
};
