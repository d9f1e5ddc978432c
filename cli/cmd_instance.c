/* cmd_instance: `archipel instance create|list|show|logs|stop|start|delete`, one or in bulk. */
#include "cli.h"
#include "output.h"

#include "ap/base.h"

#include <stdint.h>
#include <string.h>
#include <time.h>

/* How often `instance create --wait` asks for the instance (issue 5: every 250 ms). */
#define WAIT_POLL_MS 250L

enum { INSTANCE_COLS = 8 };

static const char *const instance_cols[INSTANCE_COLS] = {
    "ID", "NAME", "TENANT", "SITE", "DESIRED", "ACTUAL", "PID", "RESTARTS",
};

static int instance_row(struct output_table *t, const json_t *inst)
{
    static const char *const keys[INSTANCE_COLS] = {"id",      "name",   "tenant", "site",
                                                    "desired", "actual", "pid",    "restarts"};
    char *cells[INSTANCE_COLS];
    for (size_t i = 0; i < INSTANCE_COLS; i++) {
        cells[i] = output__cell(json_object_get(inst, keys[i]));
    }
    return output__table_add_owned(t, cells);
}

/* {"instances":[...]} from any tier, or one instance. */
static int instances_table(struct cli *c, json_t *doc)
{
    struct output_table *t = output__table_new(instance_cols, INSTANCE_COLS);
    if (t == NULL) {
        return cli__nomem(c);
    }
    const json_t *list = json_object_get(doc, "instances");
    int rv = 0;
    if (json_is_array(list)) {
        size_t i;
        const json_t *inst;
        json_array_foreach(list, i, inst)
        {
            rv = rv != 0 ? rv : instance_row(t, inst);
        }
    } else {
        rv = instance_row(t, doc);
    }
    if (rv == 0) {
        output__table_print(t, c->out);
    }
    output__table_free(t);
    return rv == 0 ? CLI_OK : cli__nomem(c);
}

/* A result's error as one cell: the message of {"code","message"}, or the value itself. */
static char *error_cell(const json_t *err)
{
    const json_t *msg = json_object_get(err, "message");
    if (json_is_string(msg)) {
        const char *code = json_string_value(json_object_get(err, "code"));
        size_t n = json_string_length(msg) + (code != NULL ? strlen(code) : 0) + 4;
        char *out = ap_malloc(n);
        if (out != NULL && code != NULL) {
            snprintf(out, n, "%s (%s)", json_string_value(msg), code);
        } else if (out != NULL) {
            snprintf(out, n, "%s", json_string_value(msg));
        }
        return out;
    }
    return output__cell(err);
}

/* Whether one entry of "results" failed: it carries an error, or an HTTP status >= 400. */
static bool result_failed(const json_t *res)
{
    const json_t *err = json_object_get(res, "error");
    const json_t *status = json_object_get(res, "status");
    return (err != NULL && !json_is_null(err)) ||
           (json_is_integer(status) && json_integer_value(status) >= 400);
}

/* Count the failed entries of doc's "results". */
static size_t failures(const json_t *doc)
{
    size_t n = 0, i;
    const json_t *res;
    json_array_foreach(json_object_get(doc, "results"), i, res)
    {
        n += result_failed(res);
    }
    return n;
}

/* Multi-site create: SITE STATUS ID/ERROR. */
static int create_results_table(struct cli *c, json_t *doc)
{
    static const char *const cols[] = {"SITE", "STATUS", "ID/ERROR"};
    struct output_table *t = output__table_new(cols, AP_ARRAY_LEN(cols));
    if (t == NULL) {
        return cli__nomem(c);
    }
    int rv = 0;
    size_t i;
    const json_t *res;
    json_array_foreach(json_object_get(doc, "results"), i, res)
    {
        const json_t *err = json_object_get(res, "error");
        char *cells[] = {
            output__cell(json_object_get(res, "site")),
            output__cell(json_object_get(res, "status")),
            err != NULL && !json_is_null(err)
                ? error_cell(err)
                : output__cell(json_object_get(json_object_get(res, "instance"), "id")),
        };
        rv = rv != 0 ? rv : output__table_add_owned(t, cells);
    }
    if (rv == 0) {
        output__table_print(t, c->out);
    }
    output__table_free(t);
    return rv == 0 ? CLI_OK : cli__nomem(c);
}

/* Bulk stop/start/delete: ID SITE STATUS ERROR. */
static int bulk_results_table(struct cli *c, json_t *doc)
{
    static const char *const cols[] = {"ID", "SITE", "STATUS", "ERROR"};
    struct output_table *t = output__table_new(cols, AP_ARRAY_LEN(cols));
    if (t == NULL) {
        return cli__nomem(c);
    }
    int rv = 0;
    size_t i;
    const json_t *res;
    json_array_foreach(json_object_get(doc, "results"), i, res)
    {
        char *cells[] = {
            output__cell(json_object_get(res, "id")),
            output__cell(json_object_get(res, "site")),
            output__cell(json_object_get(res, "status")),
            error_cell(json_object_get(res, "error")),
        };
        rv = rv != 0 ? rv : output__table_add_owned(t, cells);
    }
    if (rv == 0) {
        output__table_print(t, c->out);
    }
    output__table_free(t);
    return rv == 0 ? CLI_OK : cli__nomem(c);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int64_t ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/*
 * Poll instance id until its actual state is running, failed or exited, or
 * until deadline (monotonic ms). *final receives the last instance seen (a
 * new reference). Returns CLI_OK when it runs (or exited with status 0),
 * CLI_FAIL otherwise (printed).
 */
static int wait_instance(struct cli *c, const char *id, int64_t start, int64_t deadline,
                         json_t **final)
{
    char path[128], last[32] = "";
    snprintf(path, sizeof path, "/v1/instances/%s", id);
    *final = NULL;
    for (;;) {
        int64_t left = deadline - now_ms();
        if (left <= 0) {
            return cli__fail(c, "instance %s is still %s after %ld s (--timeout)", id,
                             last[0] != '\0' ? last : "unknown", c->timeout_ms / 1000);
        }
        struct cli_reply r;
        int rv = cli__call(c, "GET", path, NULL,
                           (long)(left < c->timeout_ms ? left : c->timeout_ms), &r);
        if (rv != CLI_OK) {
            return rv;
        }
        const char *actual = json_string_value(json_object_get(r.json, "actual"));
        actual = actual != NULL ? actual : "unknown";
        if (c->progress && strcmp(actual, last) != 0) {
            fprintf(c->err, "instance %s: %s (%.1f s)\n", id, actual,
                    (double)(now_ms() - start) / 1000.0);
            fflush(c->err);
        }
        snprintf(last, sizeof last, "%s", actual);
        bool done = strcmp(actual, "running") == 0 || strcmp(actual, "failed") == 0 ||
                    strcmp(actual, "exited") == 0;
        if (done) {
            json_int_t code = json_integer_value(json_object_get(r.json, "exit_code"));
            *final = json_incref(r.json);
            cli__reply_free(&r);
            if (strcmp(last, "running") == 0 || (strcmp(last, "exited") == 0 && code == 0)) {
                return CLI_OK;
            }
            if (strcmp(last, "exited") == 0) {
                return cli__fail(c, "instance %s exited with code %" JSON_INTEGER_FORMAT, id, code);
            }
            return cli__fail(c,
                             "instance %s failed to start; see 'archipel instance logs %s "
                             "--stream stderr'",
                             id, id);
        }
        cli__reply_free(&r);
        left = deadline - now_ms();
        sleep_ms(left < WAIT_POLL_MS ? (left > 0 ? left : 0) : WAIT_POLL_MS);
    }
}

/* --wait for what a create answered: one instance, or each instance of "results". */
static int wait_created(struct cli *c, json_t *doc)
{
    int64_t start = now_ms();
    int64_t deadline = start + c->timeout_ms;
    json_t *results = json_object_get(doc, "results");
    int rv = CLI_OK;
    if (!json_is_array(results)) {
        const char *id = json_string_value(json_object_get(doc, "id"));
        json_t *final = NULL;
        if (id == NULL) {
            return cli__fail(c, "the answer names no instance id to wait for");
        }
        rv = wait_instance(c, id, start, deadline, &final);
        if (final != NULL) {
            /* Show the state waited for, not the one at creation. */
            json_object_update(doc, final);
            json_decref(final);
        }
        return rv;
    }
    size_t i;
    json_t *res;
    json_array_foreach(results, i, res)
    {
        json_t *inst = json_object_get(res, "instance");
        const char *id = json_string_value(json_object_get(inst, "id"));
        json_t *final = NULL;
        if (result_failed(res) || id == NULL) {
            continue;
        }
        int one = wait_instance(c, id, start, deadline, &final);
        if (final != NULL) {
            json_object_update(inst, final);
            json_decref(final);
        }
        rv = rv != CLI_OK ? rv : one;
    }
    return rv;
}

static int create_body(struct cli *c, const struct cli_args *a, json_t **out)
{
    const char *name = a->pos[0];
    const char *tenant = cli__get(a, "tenant");
    const char *site = cli__get(a, "site");
    const char *restart = cli__get(a, "restart");
    const char *cwd = cli__get(a, "cwd");
    json_t *sites = NULL, *labels = NULL, *env = NULL, *res = NULL, *placement = NULL;
    json_t *cmd = NULL;
    int rv;
    *out = NULL;
    if (tenant == NULL) {
        return cli__usage_error(c, "'instance create' needs --tenant T; run 'archipel instance "
                                   "create --help'");
    }
    if (site != NULL && cli__has(a, "sites")) {
        return cli__usage_error(c, "give --site or --sites, not both");
    }
    if (restart != NULL && strcmp(restart, "always") != 0 && strcmp(restart, "on-failure") != 0 &&
        strcmp(restart, "never") != 0) {
        return cli__usage_error(c, "--restart must be always, on-failure or never, got '%s'",
                                restart);
    }
    if (cwd != NULL && (cwd[0] != '/' || strlen(cwd) > 4095)) {
        return cli__usage_error(c,
                                "--cwd must be an absolute path of at most 4095 bytes, got "
                                "'%.100s'",
                                cwd);
    }
    if ((rv = cli__check_name(c, "instance name", name)) != CLI_OK ||
        (rv = cli__check_name(c, "--tenant", tenant)) != CLI_OK ||
        (site != NULL && (rv = cli__check_name(c, "--site", site)) != CLI_OK) ||
        (rv = cli__names_field(c, a, "sites", &sites)) != CLI_OK ||
        (rv = cli__kv_field(c, a, "label", CLI_KV_LABEL, &labels)) != CLI_OK ||
        (rv = cli__kv_field(c, a, "env", CLI_KV_ENV, &env)) != CLI_OK ||
        (rv = cmd_placement__resources(c, a, &res)) != CLI_OK ||
        (rv = cmd_placement__body(c, a, &placement)) != CLI_OK) {
        goto err_after_parts;
    }
    if ((cmd = json_array()) == NULL) {
        rv = cli__nomem(c);
        goto err_after_parts;
    }
    for (size_t i = 0; i < a->n_rest; i++) {
        if (json_array_append_new(cmd, json_string(a->rest[i])) != 0) {
            rv = cli__usage_error(c, "the command's argument %zu is not valid UTF-8", i + 1);
            goto err_after_parts;
        }
    }
    *out = json_pack("{s:s, s:s, s:s*, s:o*, s:o*, s:o, s:o*, s:s*, s:o*, s:s*, s:o*}", "name",
                     name, "tenant", tenant, "site", site, "sites", sites, "labels", labels,
                     "command", cmd, "env", env, "cwd", cwd, "resources", res, "restart", restart,
                     "placement", placement);
    return *out != NULL ? CLI_OK : cli__nomem(c);

err_after_parts:
    json_decref(sites);
    json_decref(labels);
    json_decref(env);
    json_decref(res);
    json_decref(placement);
    json_decref(cmd);
    return rv;
}

static int run_create(struct cli *c, const struct cli_args *a)
{
    json_t *body;
    int rv = create_body(c, a, &body);
    if (rv != CLI_OK) {
        return rv;
    }
    struct cli_reply r;
    rv = cli__call(c, "POST", "/v1/instances", body, 0, &r);
    json_decref(body);
    if (rv != CLI_OK) {
        return rv;
    }
    bool multi = json_is_array(json_object_get(r.json, "results"));
    int waited = CLI_OK;
    if (cli__has(a, "wait") && r.json != NULL) {
        waited = wait_created(c, r.json);
    }
    rv = cli__print(c, &r, multi ? create_results_table : instances_table);
    if (rv == CLI_OK && multi && failures(r.json) > 0) {
        rv = cli__fail(c, "%zu of %zu sites failed", failures(r.json),
                       json_array_size(json_object_get(r.json, "results")));
    }
    cli__reply_free(&r);
    return rv != CLI_OK ? rv : waited;
}

static int run_list(struct cli *c, const struct cli_args *a)
{
    char path[512] = "/v1/instances";
    static const char *const filters[] = {"tenant", "site", "region"};
    int rv;
    for (size_t i = 0; i < AP_ARRAY_LEN(filters); i++) {
        const char *v = cli__get(a, filters[i]);
        char what[32];
        snprintf(what, sizeof what, "--%s", filters[i]);
        if (v != NULL && ((rv = cli__check_name(c, what, v)) != CLI_OK ||
                          (rv = cli__query(c, path, sizeof path, filters[i], v)) != CLI_OK)) {
            return rv;
        }
    }
    if (cli__has(a, "deleted") &&
        (rv = cli__query(c, path, sizeof path, "deleted", "1")) != CLI_OK) {
        return rv;
    }
    struct cli_reply r;
    if ((rv = cli__call(c, "GET", path, NULL, 0, &r)) != CLI_OK) {
        return rv;
    }
    rv = cli__print(c, &r, instances_table);
    cli__reply_free(&r);
    return rv;
}

static int run_show(struct cli *c, const struct cli_args *a)
{
    int rv = cli__check_id(c, a->pos[0]);
    if (rv != CLI_OK) {
        return rv;
    }
    char path[128];
    snprintf(path, sizeof path, "/v1/instances/%s", a->pos[0]);
    struct cli_reply r;
    if ((rv = cli__call(c, "GET", path, NULL, 0, &r)) != CLI_OK) {
        return rv;
    }
    rv = cli__print(c, &r, cli__print_kv);
    cli__reply_free(&r);
    return rv;
}

/* The last n lines of text (the whole text when it has fewer). */
static const char *last_lines(const char *text, size_t len, long long n)
{
    const char *p = text + len;
    /* A final newline ends the last line rather than starting an empty one. */
    if (p > text && p[-1] == '\n') {
        p--;
    }
    while (p > text) {
        if (p[-1] == '\n' && --n == 0) {
            return p;
        }
        p--;
    }
    return text;
}

static int run_logs(struct cli *c, const struct cli_args *a)
{
    const char *stream = cli__get(a, "stream");
    const char *tail = cli__get(a, "tail");
    long long lines = 0;
    int rv = cli__check_id(c, a->pos[0]);
    if (rv != CLI_OK) {
        return rv;
    }
    if (stream != NULL && strcmp(stream, "stdout") != 0 && strcmp(stream, "stderr") != 0) {
        return cli__usage_error(c, "--stream must be stdout or stderr, got '%s'", stream);
    }
    if (tail != NULL && (rv = cli__parse_uint(c, "--tail", tail, 1000000, &lines)) != CLI_OK) {
        return rv;
    }
    char path[256];
    snprintf(path, sizeof path, "/v1/instances/%s/logs", a->pos[0]);
    if ((rv = cli__query(c, path, sizeof path, "stream", stream)) != CLI_OK ||
        (rv = cli__query(c, path, sizeof path, "tail", tail)) != CLI_OK) {
        return rv;
    }
    struct cli_reply r;
    if ((rv = cli__call(c, "GET", path, NULL, 0, &r)) != CLI_OK) {
        return rv;
    }
    if (r.json != NULL) {
        rv = cli__print(c, &r, cli__print_kv);
    } else if (tail != NULL) {
        /* A tier that does not cut by lines (a site cuts by bytes) still gets --tail right. */
        const char *from =
            lines == 0 ? r.resp.body + r.resp.len : last_lines(r.resp.body, r.resp.len, lines);
        fwrite(from, 1, (size_t)(r.resp.body + r.resp.len - from), c->out);
    } else {
        rv = cli__print(c, &r, cli__print_kv);
    }
    cli__reply_free(&r);
    return rv;
}

/* stop/start/delete of one instance (ID given) or many (--tenant and filters). */
static int act(struct cli *c, const struct cli_args *a, const char *action)
{
    int rv;
    struct cli_reply r;
    char path[128];
    if (a->n_pos == 1) {
        static const char *const bulk_flags[] = {"tenant", "name", "sites", "selector"};
        for (size_t i = 0; i < AP_ARRAY_LEN(bulk_flags); i++) {
            if (cli__has(a, bulk_flags[i])) {
                return cli__usage_error(c,
                                        "give an instance ID or --%s and the other bulk "
                                        "flags, not both",
                                        bulk_flags[i]);
            }
        }
        if ((rv = cli__check_id(c, a->pos[0])) != CLI_OK) {
            return rv;
        }
        bool del = strcmp(action, "delete") == 0;
        snprintf(path, sizeof path, "/v1/instances/%s%s%s", a->pos[0], del ? "" : "/",
                 del ? "" : action);
        if ((rv = cli__call(c, del ? "DELETE" : "POST", path, NULL, 0, &r)) != CLI_OK) {
            return rv;
        }
        rv = cli__print(c, &r, instances_table);
        cli__reply_free(&r);
        return rv;
    }
    const char *tenant = cli__get(a, "tenant");
    const char *name = cli__get(a, "name");
    json_t *sites = NULL, *selector = NULL;
    if (tenant == NULL) {
        return cli__usage_error(c,
                                "'instance %s' needs an instance ID, or --tenant T for many; "
                                "run 'archipel instance %s --help'",
                                action, action);
    }
    if (cli__has(a, "sites") && cli__has(a, "selector")) {
        return cli__usage_error(c, "give --sites or --selector, not both");
    }
    if ((rv = cli__check_name(c, "--tenant", tenant)) != CLI_OK ||
        (name != NULL && (rv = cli__check_name(c, "--name", name)) != CLI_OK) ||
        (rv = cli__names_field(c, a, "sites", &sites)) != CLI_OK ||
        (rv = cli__kv_field(c, a, "selector", CLI_KV_LABEL, &selector)) != CLI_OK) {
        json_decref(sites);
        json_decref(selector);
        return rv;
    }
    json_t *body = json_pack("{s:s, s:s*, s:o*, s:o*}", "tenant", tenant, "name", name, "sites",
                             sites, "selector", selector);
    if (body == NULL) {
        return cli__nomem(c);
    }
    snprintf(path, sizeof path, "/v1/instances:%s", action);
    rv = cli__call(c, "POST", path, body, 0, &r);
    json_decref(body);
    if (rv != CLI_OK) {
        return rv;
    }
    rv = cli__print(c, &r, bulk_results_table);
    size_t failed = failures(r.json);
    if (rv == CLI_OK && failed > 0) {
        rv = cli__fail(c, "%zu of %zu instances failed to %s", failed,
                       json_array_size(json_object_get(r.json, "results")), action);
    }
    cli__reply_free(&r);
    return rv;
}

static int run_stop(struct cli *c, const struct cli_args *a)
{
    return act(c, a, "stop");
}

static int run_start(struct cli *c, const struct cli_args *a)
{
    return act(c, a, "start");
}

static int run_delete(struct cli *c, const struct cli_args *a)
{
    return act(c, a, "delete");
}

static const struct cli_opt create_opts[] = {
    {"tenant", CLI_OPT_VALUE, "T", "tenant the instance belongs to (required)"},
    {"site", CLI_OPT_VALUE, "S", "run it on site S"},
    {"sites", CLI_OPT_VALUE, "S1,S2", "run one on each of these sites"},
    {"label", CLI_OPT_LIST, "K=V", "a label of the instance"},
    {"cpu-millis", CLI_OPT_VALUE, "N", "CPU, in thousandths of a core"},
    {"memory-mb", CLI_OPT_VALUE, "N", "memory, in MiB"},
    {"restart", CLI_OPT_VALUE, "always|on-failure|never", "restart policy (default always)"},
    {"env", CLI_OPT_LIST, "K=V", "an environment variable"},
    {"cwd", CLI_OPT_VALUE, "DIR", "working directory"},
    CLI_PLACEMENT_OPTS,
    {"wait", CLI_OPT_BOOL, NULL, "wait until it runs (or fails), at most --timeout"},
    {NULL, 0, NULL, NULL},
};

static const struct cli_opt list_opts[] = {
    {"tenant", CLI_OPT_VALUE, "T", "only instances of tenant T"},
    {"site", CLI_OPT_VALUE, "S", "only instances on site S"},
    {"region", CLI_OPT_VALUE, "R", "only instances in region R (through the controller)"},
    {"deleted", CLI_OPT_BOOL, NULL, "include deleted instances"},
    {NULL, 0, NULL, NULL},
};

static const struct cli_opt no_opts[] = {{NULL, 0, NULL, NULL}};

static const struct cli_opt logs_opts[] = {
    {"stream", CLI_OPT_VALUE, "stdout|stderr", "which output (default stdout)"},
    {"tail", CLI_OPT_VALUE, "N", "only the last N lines"},
    {NULL, 0, NULL, NULL},
};

static const struct cli_opt bulk_opts[] = {
    {"tenant", CLI_OPT_VALUE, "T", "without an ID: the instances of tenant T"},
    {"name", CLI_OPT_VALUE, "N", "without an ID: only those called N"},
    {"sites", CLI_OPT_VALUE, "S1,S2", "without an ID: only on these sites"},
    {"selector", CLI_OPT_LIST, "K=V", "without an ID: a label selector"},
    {NULL, 0, NULL, NULL},
};

static const struct cli_cmd instance_cmds[] = {
    {"create",
     "NAME --tenant T [--site S | --sites S1,S2] [--label K=V]... [--cpu-millis N] "
     "[--memory-mb N] [--restart always|on-failure|never] [--env K=V]... [--cwd DIR] "
     "[placement flags] [--wait] -- CMD ARGS...",
     "Create an instance running CMD: on one site, on each of several, or (with neither) where "
     "placement chooses.",
     create_opts, 1, 1, true, run_create},
    {"list", "[--tenant T] [--site S] [--region R] [--deleted]",
     "List instances (ID NAME TENANT SITE DESIRED ACTUAL PID RESTARTS).", list_opts, 0, 0, false,
     run_list},
    {"show", "ID", "Show every field of one instance.", no_opts, 1, 1, false, run_show},
    {"logs", "ID [--stream stdout|stderr] [--tail N]", "Print an instance's output.", logs_opts, 1,
     1, false, run_logs},
    {"stop", "ID | --tenant T [--name N] [--sites S1,S2 | --selector K=V]",
     "Stop one instance, or every instance matching the flags.", bulk_opts, 0, 1, false, run_stop},
    {"start", "ID | --tenant T [--name N] [--sites S1,S2 | --selector K=V]",
     "Start one stopped instance, or every instance matching the flags.", bulk_opts, 0, 1, false,
     run_start},
    {"delete", "ID | --tenant T [--name N] [--sites S1,S2 | --selector K=V]",
     "Delete one instance, or every instance matching the flags.", bulk_opts, 0, 1, false,
     run_delete},
};

const struct cli_noun cmd_instance__noun = {
    "instance",
    "Instances: workloads (a command, resources, a restart policy) running on sites.",
    instance_cmds,
    AP_ARRAY_LEN(instance_cmds),
};
