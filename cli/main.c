/* archipel: the command-line tool; dispatches to its subcommands. */
#include "ap/log.h"
#include "dev.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out, "usage: archipel <command> [options]\n"
                 "\n"
                 "commands:\n"
                 "  dev        start a whole local topology (see 'archipel dev --help')\n"
                 "\n"
                 "options:\n"
                 "  -h, --help     print this help and exit\n"
                 "  -V, --version  print the version and exit\n");
}

int main(int argc, char **argv)
{
    ap_log_init("cli", ap_log_level_from_env(AP_LOG_WARN), NULL);
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "-V") == 0 || strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
        printf("archipel %s\n", AP_VERSION);
        return 0;
    }
    if (strcmp(cmd, "dev") == 0) {
        return dev__main(argc - 1, argv + 1, argv[0]);
    }
    if (cmd[0] == '-') {
        fprintf(stderr, "archipel: unknown option '%s'; run 'archipel --help'\n", cmd);
    } else {
        fprintf(stderr, "archipel: unknown command '%s'; run 'archipel --help'\n", cmd);
    }
    return 2;
}
