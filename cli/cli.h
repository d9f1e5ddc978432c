/* cli: what all commands share: context, command tables, flags, checks, requests. */
#ifndef CLI_CLI_H
#define CLI_CLI_H

#include "client.h"
#include "config.h"

#include "ap/err.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

/** Exit codes: success, a failure (server error, unreachable), bad usage. */
enum { CLI_OK = 0, CLI_FAIL = 1, CLI_USAGE = 2 };

/** Most positional arguments a command takes before "--". */
#define CLI_MAX_POS 8

/** Most times one list flag (--label, --env, ...) may be given. */
#define CLI_MAX_LIST 64

enum cli_format { CLI_FORMAT_TABLE, CLI_FORMAT_JSON };

/**
 * One run of the CLI. main() fills the global flags; the client is made on
 * the first request from flags, environment and config file (cli__client).
 */
struct cli {
    FILE *out; /**< results (stdout) */
    FILE *err; /**< errors, warnings, progress (stderr) */
    enum cli_format format;
    long timeout_ms;           /**< --timeout: each request, and each wait as a whole */
    bool progress;             /**< print progress lines (--progress, or stderr is a TTY) */
    const char *flag_endpoint; /**< --endpoint, or NULL (borrowed from argv) */
    const char *flag_token;    /**< --token, or NULL (borrowed from argv) */
    bool no_token;             /**< send no token even when one is configured (login) */
    struct client *client;     /**< NULL until the first request */
    char endpoint[CLIENT_ENDPOINT_SIZE]; /**< resolved and normalised by cli__client */
};

/** How a flag takes its value. */
enum cli_opt_kind {
    CLI_OPT_BOOL,  /**< --wait */
    CLI_OPT_VALUE, /**< --tenant T, or --tenant=T; at most once */
    CLI_OPT_LIST,  /**< --label k=v, repeatable */
};

/** One flag of a command; tables end with {NULL}. */
struct cli_opt {
    const char *name; /**< without the dashes: "tenant" */
    enum cli_opt_kind kind;
    const char *arg;  /**< value placeholder in the help ("T"), NULL for BOOL */
    const char *help; /**< one line */
};

struct cli_args;

/** One command ("site list"), with what is needed to parse, check and run it. */
struct cli_cmd {
    const char *verb;           /**< "list"; NULL for a noun that is itself the command (login) */
    const char *synopsis;       /**< arguments after the verb, for the usage line */
    const char *summary;        /**< one sentence */
    const struct cli_opt *opts; /**< its flags, ending with {NULL} */
    size_t min_pos, max_pos;    /**< positional arguments accepted before "--" */
    bool takes_rest;            /**< "-- CMD ARGS..." is required (instance create) */
    /** Run it; returns an exit code (CLI_OK, CLI_FAIL, CLI_USAGE). */
    int (*run)(struct cli *c, const struct cli_args *a);
};

/** A noun and its commands ("site" and list, show, create, ...). */
struct cli_noun {
    const char *name;
    const char *summary;
    const struct cli_cmd *cmds;
    size_t n_cmds;
};

/** The parsed arguments of one command; valid while argv lives. */
struct cli_args {
    const struct cli_cmd *cmd;
    const char *noun;
    const char *pos[CLI_MAX_POS];
    size_t n_pos;
    char **rest; /**< after "--" (takes_rest commands), n_rest items */
    size_t n_rest;
    struct cli_given {
        size_t opt; /**< index in cmd->opts */
        const char *value;
    } * given; /**< every flag occurrence in order (owned; freed by the dispatcher) */
    size_t n_given;
};

/** The nouns, in the order `archipel --help` lists them. */
extern const struct cli_noun cmd_login__noun;
extern const struct cli_noun cmd_region__noun;
extern const struct cli_noun cmd_site__noun;
extern const struct cli_noun cmd_instance__noun;
extern const struct cli_noun cmd_tenant__noun;
extern const struct cli_noun cmd_user__noun;
extern const struct cli_noun cmd_quota__noun;
extern const struct cli_noun cmd_placement__noun;

/** Print the global flags' help (for every usage text). */
void cli__global_help(FILE *out);

/**
 * Run a noun's command from argv (argv[0] is the noun): find the verb,
 * answer --help (stdout, CLI_OK), parse and check flags and positional
 * arguments (one line on stderr and CLI_USAGE when wrong), then call run.
 * Returns the exit code.
 */
int cli__dispatch(struct cli *c, const struct cli_noun *noun, int argc, char **argv);

/** Value of VALUE flag name, or NULL when not given. */
const char *cli__get(const struct cli_args *a, const char *name);

/** Whether flag name (any kind) was given. */
bool cli__has(const struct cli_args *a, const char *name);

/** The i-th value of LIST flag name (0-based), or NULL past the last. */
const char *cli__nth(const struct cli_args *a, const char *name, size_t i);

/** Print "archipel: <message>" on stderr; returns CLI_USAGE. */
int cli__usage_error(struct cli *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/** Print "archipel: <message>" on stderr; returns CLI_FAIL. */
int cli__fail(struct cli *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/** Whether s is a DNS label: 1-63 of a-z, 0-9, '-', not starting or ending with '-'. */
bool cli__valid_name(const char *s);

/** Whether s is label text: 1-63 (0-63 when allow_empty) letters, digits, '-', '_', '.', '/'. */
bool cli__valid_label(const char *s, bool allow_empty);

/**
 * Check that s is a valid name (what says which: "site name", "--tenant");
 * returns CLI_OK, or CLI_USAGE after one line on stderr.
 */
int cli__check_name(struct cli *c, const char *what, const char *s);

/** Check that s is an instance id (a UUID); returns CLI_OK or CLI_USAGE (printed). */
int cli__check_id(struct cli *c, const char *s);

/**
 * Parse s as a non-negative decimal integer of at most max into *out;
 * returns CLI_OK or CLI_USAGE (printed, naming flag).
 */
int cli__parse_uint(struct cli *c, const char *flag, const char *s, long long max, long long *out);

/**
 * When VALUE flag is given, check it is a non-negative integer and set
 * obj[key] to it (creating *obj when NULL). Returns CLI_OK, CLI_USAGE
 * (printed) or CLI_FAIL (out of memory, printed).
 */
int cli__uint_field(struct cli *c, const struct cli_args *a, const char *flag, json_t **obj,
                    const char *key);

/** Kinds of k=v lists: labels (key and value checked like site labels) or env variables. */
enum cli_kv_kind { CLI_KV_LABEL, CLI_KV_ENV };

/**
 * Collect every value of LIST flag as k=v into object *obj (made when the
 * flag is given and *obj is NULL; left NULL otherwise). Labels: keys 1-63
 * and values 0-63 of letters, digits, '-', '_', '.', '/'. Env: names 1-255
 * bytes of letters, digits and '_', not starting with a digit; values any.
 * A key given twice is an error. Returns CLI_OK, CLI_USAGE or CLI_FAIL.
 */
int cli__kv_field(struct cli *c, const struct cli_args *a, const char *flag, enum cli_kv_kind kind,
                  json_t **obj);

/**
 * Split a comma-separated VALUE flag ("s1,s2") into a new array of names in
 * *arr (left NULL when the flag is absent); each must be a valid name, none
 * twice. Returns CLI_OK, CLI_USAGE or CLI_FAIL.
 */
int cli__names_field(struct cli *c, const struct cli_args *a, const char *flag, json_t **arr);

/**
 * Append "key=value" (value percent-encoded) to a query string in buf (size
 * bytes), starting it with '?' or continuing with '&'; a NULL value is
 * skipped. Returns CLI_OK, or CLI_USAGE when it does not fit (printed).
 */
int cli__query(struct cli *c, char *buf, size_t size, const char *key, const char *value);

/**
 * The client, made on first use from --endpoint/--token, else
 * ARCHIPEL_ENDPOINT/ARCHIPEL_TOKEN, else the config file. Returns CLI_OK
 * with *out borrowed from c, or prints why and returns CLI_USAGE (no
 * endpoint anywhere, bad endpoint) or CLI_FAIL (unreadable config).
 */
int cli__client(struct cli *c, struct client **out);

/** An answer to a request that succeeded (a 2xx status). */
struct cli_reply {
    long status;
    json_t *json;            /**< parsed body when it is JSON, else NULL (owned) */
    struct client_resp resp; /**< the raw answer (owned) */
};

/**
 * Send a request (body borrowed; NULL for none) and wait for it, at most
 * timeout_ms (0: --timeout). On an answer that is not 2xx prints
 * "archipel: <message> (<code>, HTTP <status>)"; on no answer,
 * "archipel: cannot reach ...: <reason>"; both return CLI_FAIL. Otherwise
 * fills *r (release with cli__reply_free) and returns CLI_OK. A JSON
 * Content-Type whose body does not parse is a failure too.
 */
int cli__call(struct cli *c, const char *method, const char *path, const json_t *body,
              long timeout_ms, struct cli_reply *r);

/** Release what r holds; a zeroed r is fine. */
void cli__reply_free(struct cli_reply *r);

/**
 * Print an answer: with -o json its JSON (or its text as is); else
 * table(c, json) for JSON answers, the text as is otherwise. Then the
 * partial-answer warning when the answer says so. Returns table's code
 * (CLI_OK when printing JSON).
 */
int cli__print(struct cli *c, const struct cli_reply *r, int (*table)(struct cli *c, json_t *doc));

/**
 * A table cell for an amount and its bound, malloc'd (ap_free): "used/cap"
 * when used is given, else the cap alone; a missing or null side prints
 * as "-" ("1/-": no limit). NULL when out of memory.
 */
char *cli__ratio_cell(const json_t *used, const json_t *cap);

/** table callback for cli__print: "key: value" lines. */
int cli__print_kv(struct cli *c, json_t *doc);

/** The placement flags of `instance create` and `placement explain`, for their opts tables. */
/* clang-format off */
#define CLI_PLACEMENT_OPTS                                                                         \
    {"require-label", CLI_OPT_LIST, "K=V", "only sites carrying this label"},                      \
    {"require-capability", CLI_OPT_LIST, "C", "only sites with this capability"},                  \
    {"strategy", CLI_OPT_VALUE, "spread|pack", "spread instances out, or pack them together"},     \
    {"affinity", CLI_OPT_LIST, "K=V", "prefer sites running instances labelled K=V"},              \
    {"anti-affinity", CLI_OPT_LIST, "K=V", "avoid sites running instances labelled K=V"}
/* clang-format on */

/**
 * The "placement" object from the CLI_PLACEMENT_OPTS flags into *out (left
 * NULL when none is given): {"labels","capabilities","strategy","affinity",
 * "anti_affinity"}, each only when given. Returns CLI_OK, CLI_USAGE or
 * CLI_FAIL (printed).
 */
int cmd_placement__body(struct cli *c, const struct cli_args *a, json_t **out);

/**
 * The "resources" object from --cpu-millis and --memory-mb into *out (left
 * NULL when neither is given). Returns CLI_OK, CLI_USAGE or CLI_FAIL.
 */
int cmd_placement__resources(struct cli *c, const struct cli_args *a, json_t **out);

/** Report an out-of-memory failure; returns CLI_FAIL. */
int cli__nomem(struct cli *c);

/**
 * Read a password: from stdin's first line when from_stdin, else from the
 * terminal with echo off after prompt (or stdin's first line when stdin is
 * not a terminal). Writes at most size-1 bytes into buf without the newline.
 * Returns CLI_OK, or CLI_FAIL / CLI_USAGE (empty) with the reason printed.
 */
int cli__read_password(struct cli *c, bool from_stdin, const char *prompt, char *buf, size_t size);

#endif
