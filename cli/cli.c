/* cli: what all commands share: context, command tables, flags, checks, requests. */
#include "cli.h"

#include "output.h"

#include "ap/base.h"
#include "ap/log.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

void cli__global_help(FILE *out)
{
    fprintf(out,
            "global flags (before or after the command):\n"
            "  --endpoint URL|HOST:PORT  API endpoint (default: $ARCHIPEL_ENDPOINT, then the "
            "config file)\n"
            "  --token TOKEN             bearer token (default: $ARCHIPEL_TOKEN, then the config "
            "file)\n"
            "  -o, --output table|json   output format (default table)\n"
            "  --timeout S               seconds each request, and each wait, may take (default "
            "30)\n"
            "  --progress                print progress while waiting, even when stderr is not a "
            "terminal\n"
            "  -h, --help                print help and exit\n");
}

static void cmd_name(const struct cli_noun *noun, const struct cli_cmd *cmd, char *out, size_t size)
{
    if (cmd->verb != NULL) {
        snprintf(out, size, "%s %s", noun->name, cmd->verb);
    } else {
        snprintf(out, size, "%s", noun->name);
    }
}

static void noun_help(const struct cli_noun *noun, FILE *out)
{
    fprintf(out, "usage: archipel %s <command> [flags]\n\n%s\n\ncommands:\n", noun->name,
            noun->summary);
    for (size_t i = 0; i < noun->n_cmds; i++) {
        fprintf(out, "  %-10s %s\n", noun->cmds[i].verb, noun->cmds[i].summary);
    }
    fprintf(out, "\nrun 'archipel %s <command> --help' for a command's flags\n", noun->name);
}

static void cmd_help(const struct cli_noun *noun, const struct cli_cmd *cmd, FILE *out)
{
    char name[64];
    cmd_name(noun, cmd, name, sizeof name);
    fprintf(out, "usage: archipel %s%s%s\n\n%s\n", name, cmd->synopsis[0] != '\0' ? " " : "",
            cmd->synopsis, cmd->summary);
    if (cmd->opts[0].name != NULL) {
        fprintf(out, "\nflags:\n");
        for (const struct cli_opt *o = cmd->opts; o->name != NULL; o++) {
            char left[64];
            snprintf(left, sizeof left, "--%s%s%s", o->name, o->arg != NULL ? " " : "",
                     o->arg != NULL ? o->arg : "");
            fprintf(out, "  %-26s%s%s\n", left, o->help,
                    o->kind == CLI_OPT_LIST ? " (repeatable)" : "");
        }
    }
    fprintf(out, "\n");
    cli__global_help(out);
}

static const struct cli_opt *find_opt(const struct cli_cmd *cmd, const char *name, size_t len,
                                      size_t *index)
{
    for (size_t i = 0; cmd->opts[i].name != NULL; i++) {
        if (strlen(cmd->opts[i].name) == len && strncmp(cmd->opts[i].name, name, len) == 0) {
            *index = i;
            return &cmd->opts[i];
        }
    }
    return NULL;
}

static bool is_help(const char *s)
{
    return strcmp(s, "--help") == 0 || strcmp(s, "-h") == 0;
}

/* Parse argv (after the verb) into a; prints and returns CLI_USAGE on a mistake. */
static int parse(struct cli *c, const char *name, int argc, char **argv, struct cli_args *a)
{
    const struct cli_cmd *cmd = a->cmd;
    bool only_pos = false;
    for (int i = 0; i < argc; i++) {
        const char *s = argv[i];
        if (!only_pos && strcmp(s, "--") == 0) {
            if (cmd->takes_rest) {
                a->rest = argv + i + 1;
                a->n_rest = (size_t)(argc - i - 1);
                break;
            }
            only_pos = true;
            continue;
        }
        if (only_pos || s[0] != '-' || strcmp(s, "-") == 0) {
            if (a->n_pos >= cmd->max_pos) {
                return cli__usage_error(
                    c, "unexpected argument '%s' for '%s'; run 'archipel %s --help'", s, name,
                    name);
            }
            a->pos[a->n_pos++] = s;
            continue;
        }
        const char *flag = s + (s[1] == '-' ? 2 : 1);
        const char *eq = strchr(flag, '=');
        size_t len = eq != NULL ? (size_t)(eq - flag) : strlen(flag);
        size_t idx;
        const struct cli_opt *o = s[1] == '-' ? find_opt(cmd, flag, len, &idx) : NULL;
        if (o == NULL) {
            return cli__usage_error(c, "unknown flag '%.*s' for '%s'; run 'archipel %s --help'",
                                    (int)(eq != NULL ? (size_t)(eq - s) : strlen(s)), s, name,
                                    name);
        }
        const char *value = NULL;
        if (o->kind == CLI_OPT_BOOL) {
            if (eq != NULL) {
                return cli__usage_error(c, "flag '--%s' takes no value; run 'archipel %s --help'",
                                        o->name, name);
            }
        } else if (eq != NULL) {
            value = eq + 1;
        } else if (i + 1 < argc) {
            value = argv[++i];
        } else {
            return cli__usage_error(c, "flag '--%s' needs a value (%s); run 'archipel %s --help'",
                                    o->name, o->arg, name);
        }
        size_t count = 0;
        for (size_t k = 0; k < a->n_given; k++) {
            count += a->given[k].opt == idx;
        }
        if (o->kind != CLI_OPT_LIST && count > 0) {
            return cli__usage_error(c, "flag '--%s' given twice", o->name);
        }
        if (count >= CLI_MAX_LIST) {
            return cli__usage_error(c, "flag '--%s' given more than %d times", o->name,
                                    CLI_MAX_LIST);
        }
        a->given[a->n_given].opt = idx;
        a->given[a->n_given].value = value;
        a->n_given++;
    }
    if (a->n_pos < cmd->min_pos) {
        return cli__usage_error(c, "'%s' needs %s; run 'archipel %s --help'", name, cmd->synopsis,
                                name);
    }
    if (cmd->takes_rest && a->n_rest == 0) {
        return cli__usage_error(c,
                                "'%s' needs the command to run after '--'; run 'archipel %s "
                                "--help'",
                                name, name);
    }
    return CLI_OK;
}

int cli__dispatch(struct cli *c, const struct cli_noun *noun, int argc, char **argv)
{
    const struct cli_cmd *cmd = NULL;
    int first = 1;
    if (noun->n_cmds == 1 && noun->cmds[0].verb == NULL) {
        cmd = &noun->cmds[0];
    } else {
        if (argc < 2) {
            return cli__usage_error(c, "'%s' needs a command; run 'archipel %s --help'", noun->name,
                                    noun->name);
        }
        if (is_help(argv[1]) || strcmp(argv[1], "help") == 0) {
            noun_help(noun, c->out);
            return CLI_OK;
        }
        for (size_t i = 0; i < noun->n_cmds && cmd == NULL; i++) {
            if (strcmp(noun->cmds[i].verb, argv[1]) == 0) {
                cmd = &noun->cmds[i];
            }
        }
        if (cmd == NULL) {
            return cli__usage_error(c, "unknown command '%s %s'; run 'archipel %s --help'",
                                    noun->name, argv[1], noun->name);
        }
        first = 2;
    }
    /* --help anywhere before "--" wins over every other mistake. */
    for (int i = first; i < argc && strcmp(argv[i], "--") != 0; i++) {
        if (is_help(argv[i])) {
            cmd_help(noun, cmd, c->out);
            return CLI_OK;
        }
    }
    char name[64];
    cmd_name(noun, cmd, name, sizeof name);
    struct cli_args a = {.cmd = cmd, .noun = noun->name};
    a.given = ap_calloc((size_t)argc + 1, sizeof *a.given);
    if (a.given == NULL) {
        return cli__nomem(c);
    }
    int rv = parse(c, name, argc - first, argv + first, &a);
    if (rv == CLI_OK) {
        rv = cmd->run(c, &a);
    }
    ap_free(a.given);
    return rv;
}

static const struct cli_opt *opt_named(const struct cli_args *a, const char *name, size_t *idx)
{
    const struct cli_opt *o = find_opt(a->cmd, name, strlen(name), idx);
    /* Asking for a flag the command does not declare is a bug in the command table. */
    AP_ASSERT(o != NULL);
    return o;
}

const char *cli__get(const struct cli_args *a, const char *name)
{
    size_t idx;
    opt_named(a, name, &idx);
    for (size_t k = 0; k < a->n_given; k++) {
        if (a->given[k].opt == idx) {
            return a->given[k].value;
        }
    }
    return NULL;
}

bool cli__has(const struct cli_args *a, const char *name)
{
    size_t idx;
    opt_named(a, name, &idx);
    for (size_t k = 0; k < a->n_given; k++) {
        if (a->given[k].opt == idx) {
            return true;
        }
    }
    return false;
}

const char *cli__nth(const struct cli_args *a, const char *name, size_t i)
{
    size_t idx;
    opt_named(a, name, &idx);
    for (size_t k = 0; k < a->n_given; k++) {
        if (a->given[k].opt == idx && i-- == 0) {
            return a->given[k].value;
        }
    }
    return NULL;
}

static void vreport(struct cli *c, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

static void vreport(struct cli *c, const char *fmt, va_list ap)
{
    fputs("archipel: ", c->err);
    vfprintf(c->err, fmt, ap);
    fputc('\n', c->err);
}

int cli__usage_error(struct cli *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport(c, fmt, ap);
    va_end(ap);
    return CLI_USAGE;
}

int cli__fail(struct cli *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport(c, fmt, ap);
    va_end(ap);
    return CLI_FAIL;
}

int cli__nomem(struct cli *c)
{
    return cli__fail(c, "out of memory");
}

bool cli__valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 63 || s[0] == '-' || s[n - 1] == '-') {
        return false;
    }
    return strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789-") == n;
}

int cli__check_name(struct cli *c, const char *what, const char *s)
{
    if (cli__valid_name(s)) {
        return CLI_OK;
    }
    return cli__usage_error(c,
                            "%s '%s' is not a valid name: 1-63 lowercase letters, digits or '-', "
                            "not starting or ending with '-'",
                            what, s);
}

int cli__check_id(struct cli *c, const char *s)
{
    /* 8-4-4-4-12 hexadecimal digits. */
    bool ok = strlen(s) == 36;
    for (size_t i = 0; ok && i < 36; i++) {
        ok = (i == 8 || i == 13 || i == 18 || i == 23) ? s[i] == '-'
                                                       : isxdigit((unsigned char)s[i]) != 0;
    }
    if (ok) {
        return CLI_OK;
    }
    return cli__usage_error(c,
                            "'%s' is not an instance id (a UUID such as "
                            "019abf3e-5f0c-7d2a-9b1e-0c4f6a7e8d21); see 'archipel instance list'",
                            s);
}

int cli__parse_uint(struct cli *c, const char *flag, const char *s, long long max, long long *out)
{
    size_t n = strlen(s);
    if (n == 0 || n > 18 || strspn(s, "0123456789") != n) {
        return cli__usage_error(c, "%s must be a non-negative integer, got '%s'", flag, s);
    }
    long long v = strtoll(s, NULL, 10);
    if (v > max) {
        return cli__usage_error(c, "%s must be at most %lld, got '%s'", flag, max, s);
    }
    *out = v;
    return CLI_OK;
}

static bool label_text(const char *s, size_t n, bool allow_empty);

/* Largest count or amount the CLI passes on; the server applies its own limits. */
#define CLI_MAX_AMOUNT (1LL << 40)

int cli__uint_field(struct cli *c, const struct cli_args *a, const char *flag, json_t **obj,
                    const char *key)
{
    const char *s = cli__get(a, flag);
    if (s == NULL) {
        return CLI_OK;
    }
    char what[64];
    snprintf(what, sizeof what, "--%s", flag);
    long long v = 0;
    int rv = cli__parse_uint(c, what, s, CLI_MAX_AMOUNT, &v);
    if (rv != CLI_OK) {
        return rv;
    }
    if (*obj == NULL && (*obj = json_object()) == NULL) {
        return cli__nomem(c);
    }
    if (json_object_set_new(*obj, key, json_integer((json_int_t)v)) != 0) {
        return cli__nomem(c);
    }
    return CLI_OK;
}

bool cli__valid_label(const char *s, bool allow_empty)
{
    return label_text(s, strlen(s), allow_empty);
}

static bool label_text(const char *s, size_t n, bool allow_empty)
{
    if ((n == 0 && !allow_empty) || n > 63) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (!(isalnum(ch) || ch == '-' || ch == '_' || ch == '.' || ch == '/')) {
            return false;
        }
    }
    return true;
}

static bool env_name(const char *s, size_t n)
{
    if (n == 0 || n > 255 || isdigit((unsigned char)s[0])) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (!(isalnum(ch) || ch == '_')) {
            return false;
        }
    }
    return true;
}

int cli__kv_field(struct cli *c, const struct cli_args *a, const char *flag, enum cli_kv_kind kind,
                  json_t **obj)
{
    const char *s;
    for (size_t i = 0; (s = cli__nth(a, flag, i)) != NULL; i++) {
        const char *eq = strchr(s, '=');
        if (eq == NULL) {
            return cli__usage_error(c, "--%s wants %s, got '%s'", flag,
                                    kind == CLI_KV_ENV ? "NAME=VALUE" : "key=value", s);
        }
        size_t klen = (size_t)(eq - s);
        if (kind == CLI_KV_LABEL &&
            (!label_text(s, klen, false) || !label_text(eq + 1, strlen(eq + 1), true))) {
            return cli__usage_error(c,
                                    "--%s '%s': keys are 1-63 and values 0-63 letters, digits, "
                                    "'-', '_', '.' or '/'",
                                    flag, s);
        }
        if (kind == CLI_KV_ENV && !env_name(s, klen)) {
            return cli__usage_error(c,
                                    "--%s '%s': the name must be letters, digits and '_', not "
                                    "starting with a digit",
                                    flag, s);
        }
        char key[256];
        snprintf(key, sizeof key, "%.*s", (int)klen, s);
        if (*obj == NULL && (*obj = json_object()) == NULL) {
            return cli__nomem(c);
        }
        if (json_object_get(*obj, key) != NULL) {
            return cli__usage_error(c, "--%s: '%s' given twice", flag, key);
        }
        if (json_object_set_new(*obj, key, json_string(eq + 1)) != 0) {
            return cli__usage_error(c, "--%s '%s': the value is not valid UTF-8", flag, s);
        }
    }
    return CLI_OK;
}

int cli__names_field(struct cli *c, const struct cli_args *a, const char *flag, json_t **arr)
{
    const char *s = cli__get(a, flag);
    if (s == NULL) {
        return CLI_OK;
    }
    char what[64];
    snprintf(what, sizeof what, "--%s", flag);
    json_t *out = json_array();
    if (out == NULL) {
        return cli__nomem(c);
    }
    const char *p = s;
    int rv = CLI_OK;
    for (;;) {
        size_t n = strcspn(p, ",");
        char name[72];
        if (n > 63) {
            rv = cli__usage_error(c, "%s: '%.20s...' is longer than 63 characters", what, p);
            goto err_after_array;
        }
        snprintf(name, sizeof name, "%.*s", (int)n, p);
        if ((rv = cli__check_name(c, what, name)) != CLI_OK) {
            goto err_after_array;
        }
        for (size_t i = 0; i < json_array_size(out); i++) {
            if (strcmp(json_string_value(json_array_get(out, i)), name) == 0) {
                rv = cli__usage_error(c, "%s names '%s' twice", what, name);
                goto err_after_array;
            }
        }
        if (json_array_append_new(out, json_string(name)) != 0) {
            rv = cli__nomem(c);
            goto err_after_array;
        }
        if (p[n] == '\0') {
            break;
        }
        p += n + 1;
    }
    *arr = out;
    return CLI_OK;

err_after_array:
    json_decref(out);
    return rv;
}

int cli__query(struct cli *c, char *buf, size_t size, const char *key, const char *value)
{
    if (value == NULL) {
        return CLI_OK;
    }
    size_t len = strlen(buf);
    int n = snprintf(buf + len, size - len, "%c%s=", strchr(buf, '?') != NULL ? '&' : '?', key);
    if (n < 0 || (size_t)n >= size - len) {
        goto too_long;
    }
    len += (size_t)n;
    for (const unsigned char *p = (const unsigned char *)value; *p != '\0'; p++) {
        if (len + 4 > size) {
            goto too_long;
        }
        if (isalnum(*p) || *p == '-' || *p == '_' || *p == '.' || *p == '~') {
            buf[len++] = (char)*p;
        } else {
            snprintf(buf + len, 4, "%%%02X", *p);
            len += 3;
        }
    }
    buf[len] = '\0';
    return CLI_OK;

too_long:
    return cli__usage_error(c, "the request path is too long");
}

int cli__client(struct cli *c, struct client **out)
{
    if (c->client != NULL) {
        *out = c->client;
        return CLI_OK;
    }
    char errmsg[AP_ERRMSG_SIZE];
    struct cli_config cfg;
    const char *endpoint = c->flag_endpoint;
    const char *token = c->flag_token;
    const char *env_endpoint = getenv("ARCHIPEL_ENDPOINT");
    const char *env_token = getenv("ARCHIPEL_TOKEN");
    if (endpoint == NULL && env_endpoint != NULL && env_endpoint[0] != '\0') {
        endpoint = env_endpoint;
    }
    if (token == NULL && env_token != NULL && env_token[0] != '\0') {
        token = env_token;
    }
    memset(&cfg, 0, sizeof cfg);
    if (endpoint == NULL || (token == NULL && !c->no_token)) {
        int rv = cli_config_load(NULL, &cfg, errmsg);
        /* No HOME and no XDG_CONFIG_HOME: there is simply no config file. */
        if (rv != 0 && rv != AP_EINVAL) {
            return cli__fail(c, "%s", errmsg);
        }
        if (endpoint == NULL && cfg.endpoint[0] != '\0') {
            endpoint = cfg.endpoint;
        }
        if (token == NULL && cfg.token[0] != '\0') {
            token = cfg.token;
        }
    }
    if (endpoint == NULL) {
        return cli__usage_error(c, "no endpoint: pass --endpoint URL, set ARCHIPEL_ENDPOINT, or "
                                   "run 'archipel login --endpoint URL'");
    }
    struct client_opts o = {
        .endpoint = endpoint,
        .token = c->no_token ? NULL : token,
        .timeout_ms = c->timeout_ms,
    };
    int rv = client__new(&o, &c->client, errmsg);
    if (rv == AP_EINVAL) {
        return cli__usage_error(c, "%s", errmsg);
    }
    if (rv != 0) {
        return cli__fail(c, "%s", errmsg);
    }
    ap_strlcpy(c->endpoint, client__endpoint(c->client), sizeof c->endpoint);
    *out = c->client;
    return CLI_OK;
}

int cli__call(struct cli *c, const char *method, const char *path, const json_t *body,
              long timeout_ms, struct cli_reply *r)
{
    struct client *cl;
    memset(r, 0, sizeof *r);
    int rv = cli__client(c, &cl);
    if (rv != CLI_OK) {
        return rv;
    }
    char *text = NULL;
    if (body != NULL && (text = json_dumps(body, JSON_COMPACT)) == NULL) {
        return cli__nomem(c);
    }
    AP_LOG(AP_LOG_DEBUG, "request method=%s path=%s", method, path);
    int err = client__do(cl, method, path, text, timeout_ms, &r->resp);
    free(text); /* jansson's default allocator is malloc */
    if (err != 0) {
        return cli__fail(c, "%s", client__errmsg(cl));
    }
    r->status = r->resp.status;
    /* Redirects are not followed (a region forwards to its leader itself): any 3xx is wrong. */
    if (r->status < 200 || r->status >= 300) {
        char line[1024];
        client__describe_error(&r->resp, line, sizeof line);
        for (char *p = line; *p != '\0'; p++) {
            *p = (unsigned char)*p < 0x20 ? '?' : *p;
        }
        cli__reply_free(r);
        return cli__fail(c, "%s", line);
    }
    bool is_json =
        r->resp.content_type != NULL && strcmp(r->resp.content_type, "application/json") == 0;
    if (is_json && r->resp.len > 0) {
        json_error_t jerr;
        r->json = json_loadb(r->resp.body, r->resp.len, 0, &jerr);
        if (r->json == NULL) {
            cli__reply_free(r);
            return cli__fail(c, "%s%s answered invalid JSON: %s", c->endpoint, path, jerr.text);
        }
    }
    return CLI_OK;
}

void cli__reply_free(struct cli_reply *r)
{
    json_decref(r->json);
    client__resp_free(&r->resp);
    memset(r, 0, sizeof *r);
}

int cli__print(struct cli *c, const struct cli_reply *r, int (*table)(struct cli *c, json_t *doc))
{
    int rv = CLI_OK;
    if (r->json == NULL) {
        /* Text answers (logs) print as they are, in either format. */
        if (r->resp.len > 0) {
            fwrite(r->resp.body, 1, r->resp.len, c->out);
        }
        return CLI_OK;
    }
    if (c->format == CLI_FORMAT_JSON) {
        if (output__json(c->out, r->json) != 0) {
            return cli__nomem(c);
        }
    } else {
        rv = table(c, r->json);
    }
    fflush(c->out);
    output__warn_partial(c->err, r->json);
    return rv;
}

char *cli__ratio_cell(const json_t *used, const json_t *cap)
{
    bool has_used = used != NULL && !json_is_null(used);
    if (!has_used) {
        return output__cell(cap);
    }
    char *u = output__cell(used);
    char *l = output__cell(cap);
    char *out = NULL;
    if (u != NULL && l != NULL) {
        size_t n = strlen(u) + strlen(l) + 2;
        out = ap_malloc(n);
        if (out != NULL) {
            snprintf(out, n, "%s/%s", u, l);
        }
    }
    ap_free(u);
    ap_free(l);
    return out;
}

int cli__print_kv(struct cli *c, json_t *doc)
{
    return output__kv(c->out, doc) == 0 ? CLI_OK : cli__nomem(c);
}

/* Read one line from f into buf without its newline. Returns 0, or -1 at EOF or on error. */
static int read_line(FILE *f, char *buf, size_t size)
{
    if (fgets(buf, (int)size, f) == NULL) {
        return -1;
    }
    buf[strcspn(buf, "\r\n")] = '\0';
    return 0;
}

int cli__read_password(struct cli *c, bool from_stdin, const char *prompt, char *buf, size_t size)
{
    int rv;
    if (from_stdin || !isatty(STDIN_FILENO)) {
        rv = read_line(stdin, buf, size);
    } else {
        struct termios old, quiet;
        if (tcgetattr(STDIN_FILENO, &old) != 0) {
            return cli__fail(c, "cannot read the password from the terminal: %s", strerror(errno));
        }
        quiet = old;
        quiet.c_lflag &= ~(tcflag_t)ECHO;
        quiet.c_lflag |= ECHONL;
        fputs(prompt, c->err);
        fflush(c->err);
        if (tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet) != 0) {
            return cli__fail(c, "cannot turn the terminal's echo off: %s", strerror(errno));
        }
        rv = read_line(stdin, buf, size);
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &old);
    }
    if (rv != 0) {
        return cli__fail(c, "no password given (end of input)");
    }
    if (buf[0] == '\0') {
        return cli__usage_error(c, "the password is empty");
    }
    return CLI_OK;
}
