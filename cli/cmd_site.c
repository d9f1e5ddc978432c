/* cmd_site: `archipel site list|show|create|delete|cordon|uncordon`. */
#include "cli.h"
#include "output.h"

#include "ap/base.h"

#include <stdio.h>
#include <string.h>

enum { SITE_COLS = 7 };

/* The link state, and ",cordoned" when placement must leave the site alone. */
static char *state_cell(const json_t *site)
{
    char *state = output__cell(json_object_get(site, "state"));
    if (state == NULL || !json_is_true(json_object_get(site, "cordoned"))) {
        return state;
    }
    size_t n = strlen(state) + sizeof ",cordoned";
    char *out = ap_malloc(n);
    if (out != NULL) {
        snprintf(out, n, "%s,cordoned", state);
    }
    ap_free(state);
    return out;
}

/* One site as a row: NAME REGION STATE CPU MEM INSTANCES LABELS. */
static int site_row(struct output_table *t, const json_t *site, const char *region)
{
    const json_t *cap = json_object_get(site, "capacity");
    /* The regional catalog has no usage yet; a tier that adds it gets used/cap. */
    const json_t *used = json_object_get(site, "usage");
    if (used == NULL) {
        used = json_object_get(site, "used");
    }
    const json_t *r = json_object_get(site, "region");
    char *cells[SITE_COLS] = {
        output__cell(json_object_get(site, "name")),
        r != NULL ? output__cell(r) : ap_strdup(region != NULL ? region : "-"),
        state_cell(site),
        cli__ratio_cell(json_object_get(used, "cpu_millis"), json_object_get(cap, "cpu_millis")),
        cli__ratio_cell(json_object_get(used, "memory_mb"), json_object_get(cap, "memory_mb")),
        cli__ratio_cell(json_object_get(used, "instances"), json_object_get(cap, "instances")),
        output__cell(json_object_get(site, "labels")),
    };
    return output__table_add_owned(t, cells);
}

/* A list ({"sites":[...]}, from any tier) or one site. */
static int sites_table(struct cli *c, json_t *doc)
{
    static const char *const cols[SITE_COLS] = {"NAME", "REGION",    "STATE", "CPU",
                                                "MEM",  "INSTANCES", "LABELS"};
    struct output_table *t = output__table_new(cols, SITE_COLS);
    if (t == NULL) {
        return cli__nomem(c);
    }
    const char *region = json_string_value(json_object_get(doc, "region"));
    const json_t *sites = json_object_get(doc, "sites");
    int rv = 0;
    if (json_is_array(sites)) {
        size_t i;
        const json_t *s;
        json_array_foreach(sites, i, s)
        {
            rv = rv != 0 ? rv : site_row(t, s, region);
        }
    } else {
        rv = site_row(t, doc, NULL);
    }
    if (rv == 0) {
        output__table_print(t, c->out);
    }
    output__table_free(t);
    return rv == 0 ? CLI_OK : cli__nomem(c);
}

static int run_list(struct cli *c, const struct cli_args *a)
{
    char path[256] = "/v1/sites";
    const char *region = cli__get(a, "region");
    int rv;
    if ((region != NULL && (rv = cli__check_name(c, "--region", region)) != CLI_OK) ||
        (rv = cli__query(c, path, sizeof path, "region", region)) != CLI_OK) {
        return rv;
    }
    struct cli_reply r;
    if ((rv = cli__call(c, "GET", path, NULL, 0, &r)) != CLI_OK) {
        return rv;
    }
    rv = cli__print(c, &r, sites_table);
    cli__reply_free(&r);
    return rv;
}

/* GET/DELETE/POST on /v1/sites/NAME[suffix], printed with printer. */
static int on_site(struct cli *c, const struct cli_args *a, const char *method, const char *suffix,
                   int (*printer)(struct cli *c, json_t *doc))
{
    const char *name = a->pos[0];
    int rv = cli__check_name(c, "site name", name);
    if (rv != CLI_OK) {
        return rv;
    }
    char path[256];
    snprintf(path, sizeof path, "/v1/sites/%s%s", name, suffix);
    struct cli_reply r;
    if ((rv = cli__call(c, method, path, NULL, 0, &r)) != CLI_OK) {
        return rv;
    }
    rv = cli__print(c, &r, printer);
    cli__reply_free(&r);
    return rv;
}

static int run_show(struct cli *c, const struct cli_args *a)
{
    return on_site(c, a, "GET", "", cli__print_kv);
}

static int run_delete(struct cli *c, const struct cli_args *a)
{
    return on_site(c, a, "DELETE", "", sites_table);
}

static int run_cordon(struct cli *c, const struct cli_args *a)
{
    return on_site(c, a, "POST", "/cordon", sites_table);
}

static int run_uncordon(struct cli *c, const struct cli_args *a)
{
    return on_site(c, a, "POST", "/uncordon", sites_table);
}

static int run_create(struct cli *c, const struct cli_args *a)
{
    const char *name = a->pos[0];
    const char *region = cli__get(a, "region");
    json_t *labels = NULL, *cap = NULL, *body = NULL;
    int rv;
    if ((rv = cli__check_name(c, "site name", name)) != CLI_OK ||
        (region != NULL && (rv = cli__check_name(c, "--region", region)) != CLI_OK) ||
        (rv = cli__kv_field(c, a, "label", CLI_KV_LABEL, &labels)) != CLI_OK ||
        (rv = cli__uint_field(c, a, "cpu-millis", &cap, "cpu_millis")) != CLI_OK ||
        (rv = cli__uint_field(c, a, "memory-mb", &cap, "memory_mb")) != CLI_OK ||
        (rv = cli__uint_field(c, a, "instances", &cap, "instances")) != CLI_OK) {
        goto out;
    }
    body = json_pack("{s:s, s:s*, s:o, s:o}", "name", name, "region", region, "labels",
                     labels != NULL ? labels : json_object(), "capacity",
                     cap != NULL ? cap : json_object());
    labels = cap = NULL; /* json_pack's "o" took them, also on failure */
    if (body == NULL) {
        rv = cli__nomem(c);
        goto out;
    }
    struct cli_reply r;
    if ((rv = cli__call(c, "POST", "/v1/sites", body, 0, &r)) == CLI_OK) {
        rv = cli__print(c, &r, sites_table);
        cli__reply_free(&r);
    }
out:
    json_decref(labels);
    json_decref(cap);
    json_decref(body);
    return rv;
}

static const struct cli_opt list_opts[] = {
    {"region", CLI_OPT_VALUE, "R", "only the sites of region R (through the controller)"},
    {NULL, 0, NULL, NULL},
};

static const struct cli_opt no_opts[] = {{NULL, 0, NULL, NULL}};

static const struct cli_opt create_opts[] = {
    {"region", CLI_OPT_VALUE, "R", "region the site belongs to (through the controller)"},
    {"label", CLI_OPT_LIST, "K=V", "a label of the site"},
    {"cpu-millis", CLI_OPT_VALUE, "N", "CPU capacity, in thousandths of a core"},
    {"memory-mb", CLI_OPT_VALUE, "N", "memory capacity, in MiB"},
    {"instances", CLI_OPT_VALUE, "N", "most instances the site runs"},
    {NULL, 0, NULL, NULL},
};

static const struct cli_cmd site_cmds[] = {
    {"list", "[--region R]", "List sites (NAME REGION STATE CPU MEM INSTANCES LABELS).", list_opts,
     0, 0, false, run_list},
    {"show", "NAME", "Show every field of one site.", no_opts, 1, 1, false, run_show},
    {"create",
     "NAME [--region R] [--label K=V]... [--cpu-millis N] [--memory-mb N] [--instances N]",
     "Register a site.", create_opts, 1, 1, false, run_create},
    {"delete", "NAME", "Remove a site from the catalog.", no_opts, 1, 1, false, run_delete},
    {"cordon", "NAME", "Stop placing new instances on a site.", no_opts, 1, 1, false, run_cordon},
    {"uncordon", "NAME", "Let placement use a cordoned site again.", no_opts, 1, 1, false,
     run_uncordon},
};

const struct cli_noun cmd_site__noun = {
    "site",
    "Sites: the places instances run, registered in their region.",
    site_cmds,
    AP_ARRAY_LEN(site_cmds),
};
