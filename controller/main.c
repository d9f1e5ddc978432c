/* archipel-controller: entry point; parses flags and runs one node of the controller's raft group. */
#include "ap/base.h"
#include "ap/log.h"
#include "node.h"

#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: archipel-controller --id N --ip IP --dir DIR [options]\n"
            "\n"
            "One node of the controller's raft group: regions and their endpoints,\n"
            "tenants and their quotas, users, grants and the token signing key, served\n"
            "over HTTP at /v1 (with fan-out across the regions), and the end of the\n"
            "links the regions dial.\n"
            "\n"
            "options:\n"
            "  --id N                   raft id of this node (1, 2, ...)\n"
            "  --ip IP                  address every socket of this node binds to\n"
            "  --http-port PORT         HTTP API port (default 7000)\n"
            "  --raft-port PORT         raft port (default 7001)\n"
            "  --link-port PORT         port regions link to (default 7002; 0: none)\n"
            "  --dir DIR                data directory (raft log and catalog)\n"
            "  --peer ID,RAFT,HTTP      an initial voter, e.g. 2,127.0.10.2:7001,127.0.10.2:7000;\n"
            "                           repeat for each (this node included)\n"
            "  --join                   start empty and wait to be added with\n"
            "                           POST /v1/cluster/members on the leader\n"
            "  --election-timeout-ms N  raft election timeout (default 1000)\n"
            "  --snapshot-threshold N   entries between snapshots (default 8192)\n"
            "  --admin-password-file F  create user 'admin' (operator) with the password in F\n"
            "                           when no such user exists\n"
            "  --token-ttl S            default token lifetime in seconds (default 3600)\n"
            "  --fanout-timeout-ms N    deadline of a request fanned out to regions (default 2000)\n"
            "  --log-level LEVEL        debug, info, warn, error or off (default info, or "
            "$AP_LOG_LEVEL)\n"
            "  -h, --help               print this help and exit\n"
            "  -V, --version            print the version and exit\n");
}

static int parse_uint(const char *s, unsigned long long max, unsigned long long *out)
{
    char *end;
    if (s == NULL || *s == '\0' || *s == '-') {
        return -1;
    }
    unsigned long long v = strtoull(s, &end, 10);
    if (*end != '\0' || v > max) {
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_peer(const char *s, struct ap_rsm_member *m)
{
    char buf[160];
    if (strlen(s) >= sizeof buf) {
        return -1;
    }
    strcpy(buf, s);
    char *id = strtok(buf, ",");
    char *raft = strtok(NULL, ",");
    char *http = strtok(NULL, ",");
    unsigned long long v;
    if (id == NULL || raft == NULL || http == NULL || strtok(NULL, ",") != NULL ||
        parse_uint(id, UINT32_MAX, &v) != 0 || v == 0 || strlen(raft) >= sizeof m->raft ||
        strlen(http) >= sizeof m->http || strchr(raft, ':') == NULL || strchr(http, ':') == NULL) {
        return -1;
    }
    m->id = v;
    ap_strlcpy(m->raft, raft, sizeof m->raft);
    ap_strlcpy(m->http, http, sizeof m->http);
    return 0;
}

static void on_stopped(void *data)
{
    uv_loop_t *loop = data;
    uv_stop(loop);
}

struct app {
    uv_loop_t *loop;
    struct ctl_node *node;
    uv_signal_t sigint, sigterm;
    int stopping;
};

static void on_signal(uv_signal_t *h, int signum)
{
    struct app *a = h->data;
    if (a->stopping++) {
        return;
    }
    AP_LOG(AP_LOG_INFO, "signal_received signal=%d", signum);
    uv_signal_stop(&a->sigint);
    uv_signal_stop(&a->sigterm);
    ctl_node_stop(a->node, on_stopped, a->loop);
}

int main(int argc, char **argv)
{
    enum {
        O_ID = 256,
        O_IP,
        O_HTTP,
        O_RAFT,
        O_DIR,
        O_PEER,
        O_JOIN,
        O_ELECTION,
        O_SNAP,
        O_LOG,
        O_LINK,
        O_ADMIN_PW,
        O_TOKEN_TTL,
        O_FANOUT
    };
    static const struct option opts[] = {
        {"id", required_argument, NULL, O_ID},
        {"ip", required_argument, NULL, O_IP},
        {"http-port", required_argument, NULL, O_HTTP},
        {"raft-port", required_argument, NULL, O_RAFT},
        {"dir", required_argument, NULL, O_DIR},
        {"peer", required_argument, NULL, O_PEER},
        {"join", no_argument, NULL, O_JOIN},
        {"election-timeout-ms", required_argument, NULL, O_ELECTION},
        {"snapshot-threshold", required_argument, NULL, O_SNAP},
        {"log-level", required_argument, NULL, O_LOG},
        {"link-port", required_argument, NULL, O_LINK},
        {"admin-password-file", required_argument, NULL, O_ADMIN_PW},
        {"token-ttl", required_argument, NULL, O_TOKEN_TTL},
        {"fanout-timeout-ms", required_argument, NULL, O_FANOUT},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    struct ctl_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.http_port = 7000;
    cfg.raft_port = 7001;
    cfg.link_port = 7002;
    enum ap_log_level level = ap_log_level_from_env(AP_LOG_INFO);
    unsigned long long v;
    int c;
    while ((c = getopt_long(argc, argv, "hV", opts, NULL)) != -1) {
        switch (c) {
        case O_ID:
            if (parse_uint(optarg, UINT32_MAX, &v) != 0 || v == 0) {
                fprintf(stderr, "archipel-controller: --id must be a positive integer, got '%s'\n",
                        optarg);
                return 2;
            }
            cfg.id = v;
            break;
        case O_IP:
            if (ap_strlcpy(cfg.ip, optarg, sizeof cfg.ip) >= sizeof cfg.ip) {
                fprintf(stderr, "archipel-controller: --ip is too long\n");
                return 2;
            }
            break;
        case O_HTTP:
        case O_RAFT:
            if (parse_uint(optarg, 65535, &v) != 0 || v == 0) {
                fprintf(stderr, "archipel-controller: --%s must be a port (1-65535), got '%s'\n",
                        c == O_HTTP ? "http-port" : "raft-port", optarg);
                return 2;
            }
            if (c == O_HTTP) {
                cfg.http_port = (uint16_t)v;
            } else {
                cfg.raft_port = (uint16_t)v;
            }
            break;
        case O_DIR:
            if (ap_strlcpy(cfg.dir, optarg, sizeof cfg.dir) >= sizeof cfg.dir) {
                fprintf(stderr, "archipel-controller: --dir is too long\n");
                return 2;
            }
            break;
        case O_PEER:
            if (cfg.n_peers >= CTL_MAX_PEERS ||
                parse_peer(optarg, &cfg.peers[cfg.n_peers]) != 0) {
                fprintf(stderr,
                        "archipel-controller: --peer wants ID,RAFT_IP:PORT,HTTP_IP:PORT (at most "
                        "%d), got '%s'\n",
                        CTL_MAX_PEERS, optarg);
                return 2;
            }
            cfg.n_peers++;
            break;
        case O_JOIN:
            cfg.join = true;
            break;
        case O_ELECTION:
            if (parse_uint(optarg, 60000, &v) != 0 || v < 50) {
                fprintf(stderr, "archipel-controller: --election-timeout-ms must be 50-60000\n");
                return 2;
            }
            cfg.election_timeout_ms = (unsigned)v;
            break;
        case O_SNAP:
            if (parse_uint(optarg, 10000000, &v) != 0 || v < 4) {
                fprintf(stderr, "archipel-controller: --snapshot-threshold must be 4-10000000\n");
                return 2;
            }
            cfg.snapshot_threshold = (unsigned)v;
            break;
        case O_LINK:
            if (parse_uint(optarg, 65535, &v) != 0) {
                fprintf(stderr, "archipel-controller: --link-port must be 0-65535, got '%s'\n",
                        optarg);
                return 2;
            }
            cfg.link_port = (uint16_t)v;
            break;
        case O_ADMIN_PW:
            if (ap_strlcpy(cfg.admin_password_file, optarg, sizeof cfg.admin_password_file) >=
                sizeof cfg.admin_password_file) {
                fprintf(stderr, "archipel-controller: --admin-password-file is too long\n");
                return 2;
            }
            break;
        case O_TOKEN_TTL:
            if (parse_uint(optarg, 7 * 24 * 3600, &v) != 0 || v < 60) {
                fprintf(stderr, "archipel-controller: --token-ttl must be 60-604800 seconds\n");
                return 2;
            }
            cfg.token_ttl_s = (unsigned)v;
            break;
        case O_FANOUT:
            if (parse_uint(optarg, 600000, &v) != 0 || v < 100) {
                fprintf(stderr, "archipel-controller: --fanout-timeout-ms must be 100-600000\n");
                return 2;
            }
            cfg.fanout_timeout_ms = (unsigned)v;
            break;
        case O_LOG:
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
            fprintf(stderr,
                    "archipel-controller: run 'archipel-controller --help' for the list of options\n");
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "archipel-controller: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    const char *missing = cfg.id == 0              ? "--id"
                          : cfg.ip[0] == '\0'   ? "--ip"
                          : cfg.dir[0] == '\0'  ? "--dir"
                                                : NULL;
    if (missing != NULL) {
        fprintf(stderr, "archipel-controller: %s is required (see --help)\n", missing);
        return 2;
    }
    if (cfg.n_peers == 0 && !cfg.join) {
        /* A group of one: this node alone. */
        cfg.peers[0].id = cfg.id;
        snprintf(cfg.peers[0].raft, sizeof cfg.peers[0].raft, "%s:%u", cfg.ip, cfg.raft_port);
        snprintf(cfg.peers[0].http, sizeof cfg.peers[0].http, "%s:%u", cfg.ip, cfg.http_port);
        cfg.n_peers = 1;
    }
    char comp[48];
    snprintf(comp, sizeof comp, "controller/%llu", (unsigned long long)cfg.id);
    ap_log_init(comp, level, NULL);

    /* Forwards and fan-outs run blocking libcurl calls on libuv's threadpool,
     * which raft's disk I/O and password hashing share: give the pool room. */
    setenv("UV_THREADPOOL_SIZE", "32", 0);
    ap_malloc_tune_server();
    struct app a;
    memset(&a, 0, sizeof a);
    a.loop = uv_default_loop();
    char errmsg[AP_ERRMSG_SIZE] = "";
    int rv = ctl_node_start(&a.node, a.loop, &cfg, errmsg);
    if (rv != 0) {
        fprintf(stderr, "archipel-controller: start: %s\n", errmsg);
        AP_LOG(AP_LOG_ERROR, "start_failed err=\"%s\"", errmsg);
        return 1;
    }
    /* A site or peer that vanishes mid-write must cost an EPIPE, not the process. */
    signal(SIGPIPE, SIG_IGN);
    uv_signal_init(a.loop, &a.sigint);
    uv_signal_init(a.loop, &a.sigterm);
    a.sigint.data = a.sigterm.data = &a;
    uv_signal_start(&a.sigint, on_signal, SIGINT);
    uv_signal_start(&a.sigterm, on_signal, SIGTERM);
    uv_run(a.loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&a.sigint, NULL);
    uv_close((uv_handle_t *)&a.sigterm, NULL);
    uv_run(a.loop, UV_RUN_DEFAULT);
    uv_loop_close(a.loop);
    AP_LOG(AP_LOG_INFO, "stopped");
    return 0;
}
