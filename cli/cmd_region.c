/* cmd_region: `archipel region list`. */
#include "cli.h"
#include "output.h"

#include "ap/base.h"

#include <stdio.h>

/* A node of a region as a cell: its HTTP address or id when it is an object. */
static char *nodes_cell(const json_t *nodes)
{
    if (!json_is_array(nodes)) {
        return output__cell(nodes);
    }
    json_t *names = json_array();
    if (names == NULL) {
        return NULL;
    }
    size_t i;
    json_t *n;
    json_array_foreach(nodes, i, n)
    {
        json_t *http = json_object_get(n, "http");
        json_t *id = json_object_get(n, "id");
        json_array_append(names, http != NULL ? http : id != NULL ? id : n);
    }
    char *out = output__cell(names);
    json_decref(names);
    return out;
}

/* {"regions":[{"name","nodes":[...],"link","sites"}]}: NAME NODES LINK SITES. */
static int regions_table(struct cli *c, json_t *doc)
{
    static const char *const cols[] = {"NAME", "NODES", "LINK", "SITES"};
    struct output_table *t = output__table_new(cols, AP_ARRAY_LEN(cols));
    if (t == NULL) {
        return cli__nomem(c);
    }
    int rv = 0;
    size_t i;
    const json_t *r;
    json_array_foreach(json_object_get(doc, "regions"), i, r)
    {
        const json_t *sites = json_object_get(r, "sites");
        char count[32];
        snprintf(count, sizeof count, "%zu", json_array_size(sites));
        char *cells[] = {
            output__cell(json_object_get(r, "name")),
            nodes_cell(json_object_get(r, "nodes")),
            output__cell(json_object_get(r, "link")),
            /* A list of sites would not fit a column: count it. */
            json_is_array(sites) ? ap_strdup(count) : output__cell(sites),
        };
        rv = rv != 0 ? rv : output__table_add_owned(t, cells);
    }
    if (rv == 0) {
        output__table_print(t, c->out);
    }
    output__table_free(t);
    return rv == 0 ? CLI_OK : cli__nomem(c);
}

static int run_list(struct cli *c, const struct cli_args *a)
{
    (void)a;
    struct cli_reply r;
    int rv = cli__call(c, "GET", "/v1/regions", NULL, 0, &r);
    if (rv == CLI_OK) {
        rv = cli__print(c, &r, regions_table);
        cli__reply_free(&r);
    }
    return rv;
}

static const struct cli_opt no_opts[] = {{NULL, 0, NULL, NULL}};

static const struct cli_cmd region_cmds[] = {
    {"list", "", "List regions (NAME NODES LINK SITES) as the controller sees them.", no_opts, 0, 0,
     false, run_list},
};

const struct cli_noun cmd_region__noun = {
    "region",
    "Regions: groups of sites, each with its own replicated catalog.",
    region_cmds,
    AP_ARRAY_LEN(region_cmds),
};
