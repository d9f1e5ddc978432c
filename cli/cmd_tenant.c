/* cmd_tenant: `archipel tenant create|list`. */
#include "cli.h"
#include "output.h"

#include "ap/base.h"

/* One tenant: NAME INSTANCES CPU MEM, each "usage/limit". */
static int tenant_row(struct output_table *t, const json_t *tenant)
{
    const json_t *quota = json_object_get(tenant, "quota");
    const json_t *usage = json_object_get(tenant, "usage");
    char *cells[] = {
        output__cell(json_object_get(tenant, "name")),
        cli__ratio_cell(json_object_get(usage, "instances"), json_object_get(quota, "instances")),
        cli__ratio_cell(json_object_get(usage, "cpu_millis"), json_object_get(quota, "cpu_millis")),
        cli__ratio_cell(json_object_get(usage, "memory_mb"), json_object_get(quota, "memory_mb")),
    };
    return output__table_add_owned(t, cells);
}

static int tenants_table(struct cli *c, json_t *doc)
{
    static const char *const cols[] = {"NAME", "INSTANCES", "CPU", "MEM"};
    struct output_table *t = output__table_new(cols, AP_ARRAY_LEN(cols));
    if (t == NULL) {
        return cli__nomem(c);
    }
    const json_t *list = json_object_get(doc, "tenants");
    int rv = 0;
    if (json_is_array(list)) {
        size_t i;
        const json_t *tenant;
        json_array_foreach(list, i, tenant)
        {
            rv = rv != 0 ? rv : tenant_row(t, tenant);
        }
    } else {
        rv = tenant_row(t, doc);
    }
    if (rv == 0) {
        output__table_print(t, c->out);
    }
    output__table_free(t);
    return rv == 0 ? CLI_OK : cli__nomem(c);
}

static int run_create(struct cli *c, const struct cli_args *a)
{
    json_t *quota = NULL;
    int rv;
    if ((rv = cli__check_name(c, "tenant name", a->pos[0])) != CLI_OK ||
        (rv = cli__uint_field(c, a, "instances", &quota, "instances")) != CLI_OK ||
        (rv = cli__uint_field(c, a, "cpu-millis", &quota, "cpu_millis")) != CLI_OK ||
        (rv = cli__uint_field(c, a, "memory-mb", &quota, "memory_mb")) != CLI_OK) {
        json_decref(quota);
        return rv;
    }
    json_t *body = json_pack("{s:s, s:o*}", "name", a->pos[0], "quota", quota);
    if (body == NULL) {
        return cli__nomem(c);
    }
    struct cli_reply r;
    rv = cli__call(c, "POST", "/v1/tenants", body, 0, &r);
    json_decref(body);
    if (rv == CLI_OK) {
        rv = cli__print(c, &r, tenants_table);
        cli__reply_free(&r);
    }
    return rv;
}

static int run_list(struct cli *c, const struct cli_args *a)
{
    (void)a;
    struct cli_reply r;
    int rv = cli__call(c, "GET", "/v1/tenants", NULL, 0, &r);
    if (rv == CLI_OK) {
        rv = cli__print(c, &r, tenants_table);
        cli__reply_free(&r);
    }
    return rv;
}

static const struct cli_opt create_opts[] = {
    {"instances", CLI_OPT_VALUE, "N", "quota: most instances"},
    {"cpu-millis", CLI_OPT_VALUE, "N", "quota: most CPU, in thousandths of a core"},
    {"memory-mb", CLI_OPT_VALUE, "N", "quota: most memory, in MiB"},
    {NULL, 0, NULL, NULL},
};

static const struct cli_opt no_opts[] = {{NULL, 0, NULL, NULL}};

static const struct cli_cmd tenant_cmds[] = {
    {"create", "NAME [--instances N] [--cpu-millis N] [--memory-mb N]",
     "Create a tenant, with a global quota (a resource left out has no limit).", create_opts, 1, 1,
     false, run_create},
    {"list", "", "List tenants with their usage and quota (NAME INSTANCES CPU MEM, as used/limit).",
     no_opts, 0, 0, false, run_list},
};

const struct cli_noun cmd_tenant__noun = {
    "tenant",
    "Tenants: who owns instances, and their global quotas.",
    tenant_cmds,
    AP_ARRAY_LEN(tenant_cmds),
};
