/* cmd_placement: `archipel placement explain`, and the placement flags `instance create` shares. */
#include "cli.h"
#include "output.h"

#include "ap/base.h"

#include <string.h>

int cmd_placement__resources(struct cli *c, const struct cli_args *a, json_t **out)
{
    int rv;
    *out = NULL;
    if ((rv = cli__uint_field(c, a, "cpu-millis", out, "cpu_millis")) != CLI_OK ||
        (rv = cli__uint_field(c, a, "memory-mb", out, "memory_mb")) != CLI_OK) {
        json_decref(*out);
        *out = NULL;
    }
    return rv;
}

static int capabilities(struct cli *c, const struct cli_args *a, json_t **out)
{
    const char *s;
    for (size_t i = 0; (s = cli__nth(a, "require-capability", i)) != NULL; i++) {
        /* Capabilities look like "driver:process" (docs/workloads.md). */
        size_t n = strlen(s);
        if (n == 0 || n > 63 ||
            strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/") != n) {
            return cli__usage_error(c,
                                    "--require-capability '%s' must be 1-63 letters, digits, '-', "
                                    "'_', '.', ':' or '/'",
                                    s);
        }
        if (*out == NULL && (*out = json_array()) == NULL) {
            return cli__nomem(c);
        }
        if (json_array_append_new(*out, json_string(s)) != 0) {
            return cli__nomem(c);
        }
    }
    return CLI_OK;
}

int cmd_placement__body(struct cli *c, const struct cli_args *a, json_t **out)
{
    json_t *labels = NULL, *caps = NULL, *aff = NULL, *anti = NULL;
    const char *strategy = cli__get(a, "strategy");
    int rv;
    *out = NULL;
    if (strategy != NULL && strcmp(strategy, "spread") != 0 && strcmp(strategy, "pack") != 0) {
        return cli__usage_error(c, "--strategy must be 'spread' or 'pack', got '%s'", strategy);
    }
    if ((rv = cli__kv_field(c, a, "require-label", CLI_KV_LABEL, &labels)) != CLI_OK ||
        (rv = capabilities(c, a, &caps)) != CLI_OK ||
        (rv = cli__kv_field(c, a, "affinity", CLI_KV_LABEL, &aff)) != CLI_OK ||
        (rv = cli__kv_field(c, a, "anti-affinity", CLI_KV_LABEL, &anti)) != CLI_OK) {
        goto err_after_parts;
    }
    if (labels == NULL && caps == NULL && strategy == NULL && aff == NULL && anti == NULL) {
        return CLI_OK;
    }
    /* "o*": left out when NULL; the reference is taken either way. */
    *out = json_pack("{s:o*, s:o*, s:s*, s:o*, s:o*}", "labels", labels, "capabilities", caps,
                     "strategy", strategy, "affinity", aff, "anti_affinity", anti);
    return *out != NULL ? CLI_OK : cli__nomem(c);

err_after_parts:
    json_decref(labels);
    json_decref(caps);
    json_decref(aff);
    json_decref(anti);
    return rv;
}

/* {"region","chosen","candidates":[{"site","kept","why","score"}],"unreachable":[]} */
static int explain_table(struct cli *c, json_t *doc)
{
    static const char *const cols[] = {"SITE", "KEPT", "SCORE", "WHY"};
    json_t *head = json_object();
    if (head == NULL) {
        return cli__nomem(c);
    }
    const char *k;
    json_t *v;
    json_object_foreach(doc, k, v)
    {
        if (strcmp(k, "candidates") != 0 && strcmp(k, "unreachable") != 0) {
            json_object_set(head, k, v);
        }
    }
    int rv = output__kv(c->out, head);
    json_decref(head);
    struct output_table *t = output__table_new(cols, AP_ARRAY_LEN(cols));
    if (rv != 0 || t == NULL) {
        output__table_free(t);
        return cli__nomem(c);
    }
    size_t i;
    json_t *cand;
    json_array_foreach(json_object_get(doc, "candidates"), i, cand)
    {
        char *cells[] = {
            output__cell(json_object_get(cand, "site")),
            output__cell(json_object_get(cand, "kept")),
            output__cell(json_object_get(cand, "score")),
            output__cell(json_object_get(cand, "why")),
        };
        rv = rv != 0 ? rv : output__table_add_owned(t, cells);
    }
    if (rv == 0) {
        fprintf(c->out, "\n");
        output__table_print(t, c->out);
    }
    output__table_free(t);
    return rv == 0 ? CLI_OK : cli__nomem(c);
}

static int run_explain(struct cli *c, const struct cli_args *a)
{
    const char *tenant = cli__get(a, "tenant");
    json_t *res = NULL, *placement = NULL, *body = NULL;
    int rv;
    if (tenant == NULL) {
        return cli__usage_error(c, "'placement explain' needs --tenant T; run 'archipel placement "
                                   "explain --help'");
    }
    if ((rv = cli__check_name(c, "--tenant", tenant)) != CLI_OK ||
        (rv = cmd_placement__resources(c, a, &res)) != CLI_OK ||
        (rv = cmd_placement__body(c, a, &placement)) != CLI_OK) {
        goto out;
    }
    body =
        json_pack("{s:s, s:o*, s:o*}", "tenant", tenant, "resources", res, "placement", placement);
    res = placement = NULL;
    if (body == NULL) {
        rv = cli__nomem(c);
        goto out;
    }
    struct cli_reply r;
    if ((rv = cli__call(c, "POST", "/v1/placements:explain", body, 0, &r)) == CLI_OK) {
        rv = cli__print(c, &r, explain_table);
        cli__reply_free(&r);
    }
out:
    json_decref(res);
    json_decref(placement);
    json_decref(body);
    return rv;
}

static const struct cli_opt explain_opts[] = {
    {"tenant", CLI_OPT_VALUE, "T", "tenant the instance would belong to (required)"},
    {"cpu-millis", CLI_OPT_VALUE, "N", "CPU the instance would need, in thousandths of a core"},
    {"memory-mb", CLI_OPT_VALUE, "N", "memory the instance would need, in MiB"},
    CLI_PLACEMENT_OPTS,
    {NULL, 0, NULL, NULL},
};

static const struct cli_cmd placement_cmds[] = {
    {"explain",
     "--tenant T [--cpu-millis N] [--memory-mb N] [--require-label K=V]... "
     "[--require-capability C]... [--strategy spread|pack] [--affinity K=V]... "
     "[--anti-affinity K=V]...",
     "Show which site placement would choose for an instance, and why each candidate was kept "
     "or not.",
     explain_opts, 0, 0, false, run_explain},
};

const struct cli_noun cmd_placement__noun = {
    "placement",
    "Placement: how the system chooses a site when an instance names none.",
    placement_cmds,
    AP_ARRAY_LEN(placement_cmds),
};
