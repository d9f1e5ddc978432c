/* archipel-controller: entry point; parses flags and runs the daemon. */
#include "ap/log.h"

#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

static void usage(FILE *out)
{
    fprintf(
        out,
        "usage: archipel-controller [options]\n"
        "\n"
        "The archipel controller daemon (not yet implemented beyond its flags).\n"
        "\n"
        "options:\n"
        "  --log-level LEVEL  debug, info, warn, error or off (default: info, or $AP_LOG_LEVEL)\n"
        "  -h, --help         print this help and exit\n"
        "  -V, --version      print the version and exit\n");
}

int main(int argc, char **argv)
{
    /* A peer that closes mid-write must give EPIPE, not kill the daemon. */
    signal(SIGPIPE, SIG_IGN);
    static const struct option opts[] = {
        {"log-level", required_argument, NULL, 'l'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    enum ap_log_level level = ap_log_level_from_env(AP_LOG_INFO);
    int c;
    while ((c = getopt_long(argc, argv, "hV", opts, NULL)) != -1) {
        switch (c) {
        case 'l':
            if (ap_log_parse_level(optarg, &level) != 0) {
                fprintf(stderr,
                        "archipel-controller: invalid --log-level '%s' (want debug, info, warn, "
                        "error or off)\n",
                        optarg);
                return 2;
            }
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("archipel-controller %s\n", AP_VERSION);
            return 0;
        default:
            fprintf(
                stderr,
                "archipel-controller: run 'archipel-controller --help' for the list of options\n");
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "archipel-controller: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    ap_log_init("controller", level, NULL);
    fprintf(stderr, "archipel-controller: nothing to run yet; see --help\n");
    return 1;
}
