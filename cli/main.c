/* archipel: the command-line tool; global flags, then dispatch to its nouns and `dev`. */
#include "ap/base.h"
#include "ap/log.h"
#include "cli.h"
#include "dev.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const struct cli_noun *const nouns[] = {
    &cmd_login__noun,  &cmd_region__noun, &cmd_site__noun,  &cmd_instance__noun,
    &cmd_tenant__noun, &cmd_user__noun,   &cmd_quota__noun, &cmd_placement__noun,
};

static void usage(FILE *out)
{
    fprintf(out, "usage: archipel [global flags] <command> [args] [flags]\n"
                 "\n"
                 "commands:\n");
    for (size_t i = 0; i < AP_ARRAY_LEN(nouns); i++) {
        fprintf(out, "  %-10s %s\n", nouns[i]->name, nouns[i]->summary);
    }
    fprintf(out, "  %-10s %s\n", "dev",
            "Start a whole local topology (see 'archipel dev --help').");
    fprintf(out, "  %-10s %s\n", "version", "Print the version.");
    fprintf(out, "\nrun 'archipel <command> --help' for its commands and flags\n\n");
    cli__global_help(out);
}

/* Whether argv[i] is global flag name (long form), with its value inline or next. */
static int match(char **argv, int argc, int i, const char *name, const char **value, int *used)
{
    size_t n = strlen(name);
    if (strncmp(argv[i], name, n) != 0) {
        return 0;
    }
    if (argv[i][n] == '=') {
        *value = argv[i] + n + 1;
        *used = 1;
        return 1;
    }
    if (argv[i][n] != '\0') {
        return 0;
    }
    *value = i + 1 < argc ? argv[i + 1] : NULL;
    *used = 2;
    return 1;
}

/*
 * Take the global flags out of argv (anywhere before "--"), set them in c,
 * and leave the rest in argv/argc. Returns CLI_OK or CLI_USAGE (printed).
 */
static int take_globals(struct cli *c, int *argc, char **argv)
{
    int out = 0;
    for (int i = 0; i < *argc;) {
        const char *v = NULL;
        int used = 0;
        if (strcmp(argv[i], "--") == 0) {
            while (i < *argc) {
                argv[out++] = argv[i++];
            }
            break;
        }
        if (strcmp(argv[i], "--progress") == 0) {
            c->progress = true;
            i++;
            continue;
        }
        const char *flag = NULL;
        if (match(argv, *argc, i, "--endpoint", &v, &used)) {
            flag = "--endpoint";
        } else if (match(argv, *argc, i, "--token", &v, &used)) {
            flag = "--token";
        } else if (match(argv, *argc, i, "--output", &v, &used) ||
                   match(argv, *argc, i, "-o", &v, &used)) {
            flag = "--output";
        } else if (match(argv, *argc, i, "--timeout", &v, &used)) {
            flag = "--timeout";
        } else {
            argv[out++] = argv[i++];
            continue;
        }
        if (v == NULL) {
            return cli__usage_error(c, "flag '%s' needs a value; run 'archipel --help'", flag);
        }
        if (strcmp(flag, "--endpoint") == 0) {
            c->flag_endpoint = v;
        } else if (strcmp(flag, "--token") == 0) {
            c->flag_token = v;
        } else if (strcmp(flag, "--output") == 0) {
            if (strcmp(v, "table") == 0) {
                c->format = CLI_FORMAT_TABLE;
            } else if (strcmp(v, "json") == 0) {
                c->format = CLI_FORMAT_JSON;
            } else {
                return cli__usage_error(c, "-o must be 'table' or 'json', got '%s'", v);
            }
        } else {
            long long s;
            int rv = cli__parse_uint(c, "--timeout", v, 86400, &s);
            if (rv != CLI_OK) {
                return rv;
            }
            if (s == 0) {
                return cli__usage_error(c, "--timeout must be at least 1 second");
            }
            c->timeout_ms = (long)s * 1000L;
        }
        i += used;
    }
    *argc = out;
    argv[out] = NULL;
    return CLI_OK;
}

static int run(struct cli *c, int argc, char **argv)
{
    if (argc < 1) {
        usage(c->err);
        return CLI_USAGE;
    }
    const char *cmd = argv[0];
    if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
        if (argc > 1) {
            /* "archipel help site" is "archipel site --help". */
            char help[] = "--help";
            char *again[] = {argv[1], help, NULL};
            return run(c, 2, again);
        }
        usage(c->out);
        return CLI_OK;
    }
    if (strcmp(cmd, "-V") == 0 || strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
        fprintf(c->out, "archipel %s\n", AP_VERSION);
        return CLI_OK;
    }
    for (size_t i = 0; i < AP_ARRAY_LEN(nouns); i++) {
        if (strcmp(cmd, nouns[i]->name) == 0) {
            return cli__dispatch(c, nouns[i], argc, argv);
        }
    }
    if (cmd[0] == '-') {
        return cli__usage_error(c, "unknown flag '%s'; run 'archipel --help'", cmd);
    }
    return cli__usage_error(c, "unknown command '%s'; run 'archipel --help'", cmd);
}

int main(int argc, char **argv)
{
    ap_log_init("cli", ap_log_level_from_env(AP_LOG_WARN), NULL);
    /* `dev` has flags of its own and runs daemons, not requests: hand it everything. */
    if (argc >= 2 && strcmp(argv[1], "dev") == 0) {
        return dev__main(argc - 1, argv + 1, argv[0]);
    }
    struct cli c = {
        .out = stdout,
        .err = stderr,
        .format = CLI_FORMAT_TABLE,
        .timeout_ms = CLIENT_TIMEOUT_MS,
        .progress = isatty(STDERR_FILENO) != 0,
    };
    int n = argc - 1;
    int rv = take_globals(&c, &n, argv + 1);
    if (rv == CLI_OK) {
        rv = run(&c, n, argv + 1);
    }
    client__free(c.client);
    if (fflush(stdout) != 0 && rv == CLI_OK) {
        /* A full disk or a closed pipe must not look like success. */
        fprintf(stderr, "archipel: cannot write the output\n");
        rv = CLI_FAIL;
    }
    return rv;
}
