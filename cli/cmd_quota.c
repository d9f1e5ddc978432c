/* cmd_quota: `archipel quota show|set|reserve`. */
#include "cli.h"
#include "output.h"

#include "ap/base.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

/* How deep the generic walk goes into a quota view before it stops looking. */
#define QUOTA_MAX_DEPTH 4

static const char *const resources[] = {"instances", "cpu_millis", "memory_mb"};

/* An object of amounts: it has at least one of the resource keys. */
static bool is_amounts(const json_t *v)
{
    for (size_t i = 0; i < AP_ARRAY_LEN(resources); i++) {
        if (json_object_get(v, resources[i]) != NULL) {
            return true;
        }
    }
    return false;
}

/* What names one element of an array of holders or allotments. */
static void element_name(const json_t *item, size_t index, char *out, size_t size)
{
    static const char *const keys[] = {"site", "region", "tenant", "name", "id"};
    for (size_t i = 0; i < AP_ARRAY_LEN(keys); i++) {
        const char *s = json_string_value(json_object_get(item, keys[i]));
        if (s != NULL) {
            snprintf(out, size, "%s", s);
            return;
        }
    }
    snprintf(out, size, "%zu", index);
}

static int walk(struct output_table *t, const char *prefix, const json_t *v, int depth);

static int walk_member(struct output_table *t, const char *prefix, const char *key, const json_t *v,
                       int depth)
{
    char label[256];
    snprintf(label, sizeof label, "%.180s%s%.60s", prefix, prefix[0] != '\0' ? " " : "", key);
    if (json_is_object(v) && is_amounts(v)) {
        char *cells[] = {ap_strdup(label), output__cell(json_object_get(v, "instances")),
                         output__cell(json_object_get(v, "cpu_millis")),
                         output__cell(json_object_get(v, "memory_mb"))};
        return output__table_add_owned(t, cells);
    }
    if (json_is_null(v) && depth == 0) {
        /* A limit of null: nothing set, so no limit on any resource. */
        char *cells[] = {ap_strdup(label), ap_strdup("-"), ap_strdup("-"), ap_strdup("-")};
        return output__table_add_owned(t, cells);
    }
    if (json_is_object(v)) {
        return walk(t, label, v, depth + 1);
    }
    if (json_is_array(v)) {
        size_t i;
        const json_t *item;
        int rv = 0;
        json_array_foreach(v, i, item)
        {
            char name[256];
            char ident[64];
            if (!json_is_object(item)) {
                continue;
            }
            element_name(item, i, ident, sizeof ident);
            snprintf(name, sizeof name, "%.180s %.60s", label, ident);
            rv = rv != 0 ? rv : walk(t, name, item, depth + 1);
        }
        return rv;
    }
    return 0; /* scalars inside the view are names, printed in the row labels or the header */
}

static int walk(struct output_table *t, const char *prefix, const json_t *v, int depth)
{
    if (depth > QUOTA_MAX_DEPTH) {
        return 0;
    }
    const char *key;
    json_t *member;
    int rv = 0;
    json_object_foreach((json_t *)v, key, member)
    {
        rv = rv != 0 ? rv : walk_member(t, prefix, key, member, depth);
    }
    return rv;
}

/*
 * A quota view of any tier: its scalars as "key: value" lines, then one row
 * per object of amounts found anywhere in it (limit, usage, holders' granted
 * and reserve, regional allotments...): QUOTA INSTANCES CPU MEM.
 */
static int quota_table(struct cli *c, json_t *doc)
{
    static const char *const cols[] = {"QUOTA", "INSTANCES", "CPU", "MEM"};
    json_t *head = json_object();
    struct output_table *t = output__table_new(cols, AP_ARRAY_LEN(cols));
    int rv = head == NULL || t == NULL ? AP_ENOMEM : 0;
    const char *key;
    json_t *v;
    json_object_foreach(doc, key, v)
    {
        bool scalar = !json_is_object(v) && !json_is_array(v) && !json_is_null(v);
        if (rv == 0 && scalar) {
            rv = json_object_set(head, key, v) == 0 ? 0 : AP_ENOMEM;
        }
    }
    if (rv == 0) {
        rv = walk(t, "", doc, 0);
    }
    if (rv == 0) {
        rv = output__kv(c->out, head);
    }
    if (rv == 0 && output__table_rows(t) > 0) {
        fprintf(c->out, "\n");
        output__table_print(t, c->out);
    }
    json_decref(head);
    output__table_free(t);
    return rv == 0 ? CLI_OK : cli__nomem(c);
}

static int amounts_body(struct cli *c, const struct cli_args *a, json_t **body)
{
    int rv;
    *body = json_object();
    if (*body == NULL) {
        return cli__nomem(c);
    }
    if ((rv = cli__uint_field(c, a, "instances", body, "instances")) != CLI_OK ||
        (rv = cli__uint_field(c, a, "cpu-millis", body, "cpu_millis")) != CLI_OK ||
        (rv = cli__uint_field(c, a, "memory-mb", body, "memory_mb")) != CLI_OK) {
        json_decref(*body);
        *body = NULL;
    }
    return rv;
}

static int quota_call(struct cli *c, const char *method, const char *path, const json_t *body)
{
    struct cli_reply r;
    int rv = cli__call(c, method, path, body, 0, &r);
    if (rv == CLI_OK) {
        rv = cli__print(c, &r, quota_table);
        cli__reply_free(&r);
    }
    return rv;
}

static int run_show(struct cli *c, const struct cli_args *a)
{
    int rv = cli__check_name(c, "tenant name", a->pos[0]);
    if (rv != CLI_OK) {
        return rv;
    }
    char path[128];
    snprintf(path, sizeof path, "/v1/quotas/%s", a->pos[0]);
    return quota_call(c, "GET", path, NULL);
}

static int run_set(struct cli *c, const struct cli_args *a)
{
    json_t *body;
    int rv = cli__check_name(c, "tenant name", a->pos[0]);
    if (rv != CLI_OK || (rv = amounts_body(c, a, &body)) != CLI_OK) {
        return rv;
    }
    char path[128];
    snprintf(path, sizeof path, "/v1/quotas/%s", a->pos[0]);
    rv = quota_call(c, "PUT", path, body);
    json_decref(body);
    return rv;
}

static int run_reserve(struct cli *c, const struct cli_args *a)
{
    json_t *body;
    int rv;
    if ((rv = cli__check_name(c, "tenant name", a->pos[0])) != CLI_OK ||
        (rv = cli__check_name(c, "site name", a->pos[1])) != CLI_OK ||
        (rv = amounts_body(c, a, &body)) != CLI_OK) {
        return rv;
    }
    char path[256];
    snprintf(path, sizeof path, "/v1/quotas/%s/reserves/%s", a->pos[0], a->pos[1]);
    rv = quota_call(c, "PUT", path, body);
    json_decref(body);
    return rv;
}

static const struct cli_opt amount_opts[] = {
    {"instances", CLI_OPT_VALUE, "N", "instances"},
    {"cpu-millis", CLI_OPT_VALUE, "N", "CPU, in thousandths of a core"},
    {"memory-mb", CLI_OPT_VALUE, "N", "memory, in MiB"},
    {NULL, 0, NULL, NULL},
};

static const struct cli_opt no_opts[] = {{NULL, 0, NULL, NULL}};

static const struct cli_cmd quota_cmds[] = {
    {"show", "TENANT",
     "Show a tenant's limits, usage and how they are split (QUOTA INSTANCES CPU MEM).", no_opts, 1,
     1, false, run_show},
    {"set", "TENANT [--instances N] [--cpu-millis N] [--memory-mb N]",
     "Replace a tenant's limits; a resource left out has no limit.", amount_opts, 1, 1, false,
     run_set},
    {"reserve", "TENANT SITE [--instances N] [--cpu-millis N] [--memory-mb N]",
     "Set the part of a tenant's quota a site keeps for when it is cut off (left out: 0).",
     amount_opts, 2, 2, false, run_reserve},
};

const struct cli_noun cmd_quota__noun = {
    "quota",
    "Quotas: tenants' limits, and the reserves sites keep for when they are cut off.",
    quota_cmds,
    AP_ARRAY_LEN(quota_cmds),
};
