/* archipel-regional: entry point; parses flags and runs one node of a region's raft group. */
#include "ap/base.h"
#include "ap/log.h"
#include "node.h"
#include "sitelink.h"

#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: archipel-regional --region NAME --id N --ip IP --dir DIR [options]\n"
            "\n"
            "One node of a region's raft group: the replicated catalog of the region's\n"
            "sites, quotas, placements and instances, served over HTTP at /v1, and the\n"
            "end of the links the region's sites dial.\n"
            "\n"
            "options:\n"
            "  --region NAME            region name (e.g. r1)\n"
            "  --id N                   raft id of this node, unique in the region (1, 2, ...)\n"
            "  --ip IP                  address every socket of this node binds to\n"
            "  --http-port PORT         HTTP API port (default 7100)\n"
            "  --raft-port PORT         raft port (default 7101)\n"
            "  --link-port PORT         port sites link to (default 7102; 0: no site link)\n"
            "  --site-heartbeat-ms N    heartbeat interval sites are held to (default 1000)\n"
            "  --site-heartbeat-misses N  missed heartbeats before a site is marked\n"
            "                           unreachable (default 3)\n"
            "  --dir DIR                data directory (raft log and catalog)\n"
            "  --peer ID,RAFT,HTTP      an initial voter, e.g. 2,127.0.11.2:7101,127.0.11.2:7100;\n"
            "                           repeat for each (this node included)\n"
            "  --join                   start empty and wait to be added with\n"
            "                           POST /v1/cluster/members on the leader\n"
            "  --election-timeout-ms N  raft election timeout (default 1000)\n"
            "  --snapshot-threshold N   entries between snapshots (default 8192)\n"
            "  --controller IP:PORT     link address of a controller node (repeat for each);\n"
            "                           tokens are checked with the key it sends\n"
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
    struct regional_node *node;
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
    regional_node_stop(a->node, on_stopped, a->loop);
}

int main(int argc, char **argv)
{
    enum {
        O_REGION = 256,
        O_ID,
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
        O_HB_MS,
        O_HB_MISSES,
        O_CONTROLLER
    };
    static const struct option opts[] = {
        {"region", required_argument, NULL, O_REGION},
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
        {"site-heartbeat-ms", required_argument, NULL, O_HB_MS},
        {"site-heartbeat-misses", required_argument, NULL, O_HB_MISSES},
        {"controller", required_argument, NULL, O_CONTROLLER},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    struct regional_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.http_port = 7100;
    cfg.raft_port = 7101;
    cfg.link_port = 7102;
    cfg.site_heartbeat_ms = SITELINK_HEARTBEAT_MS;
    cfg.site_heartbeat_misses = SITELINK_HEARTBEAT_MISSES;
    enum ap_log_level level = ap_log_level_from_env(AP_LOG_INFO);
    unsigned long long v;
    int c;
    while ((c = getopt_long(argc, argv, "hV", opts, NULL)) != -1) {
        switch (c) {
        case O_REGION:
            if (strlen(optarg) == 0 ||
                ap_strlcpy(cfg.region, optarg, sizeof cfg.region) >= sizeof cfg.region) {
                fprintf(stderr, "archipel-regional: --region must be 1-31 characters\n");
                return 2;
            }
            break;
        case O_ID:
            if (parse_uint(optarg, UINT32_MAX, &v) != 0 || v == 0) {
                fprintf(stderr, "archipel-regional: --id must be a positive integer, got '%s'\n",
                        optarg);
                return 2;
            }
            cfg.id = v;
            break;
        case O_IP:
            if (ap_strlcpy(cfg.ip, optarg, sizeof cfg.ip) >= sizeof cfg.ip) {
                fprintf(stderr, "archipel-regional: --ip is too long\n");
                return 2;
            }
            break;
        case O_HTTP:
        case O_RAFT:
            if (parse_uint(optarg, 65535, &v) != 0 || v == 0) {
                fprintf(stderr, "archipel-regional: --%s must be a port (1-65535), got '%s'\n",
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
                fprintf(stderr, "archipel-regional: --dir is too long\n");
                return 2;
            }
            break;
        case O_PEER:
            if (cfg.n_peers >= REGIONAL_MAX_PEERS ||
                parse_peer(optarg, &cfg.peers[cfg.n_peers]) != 0) {
                fprintf(stderr,
                        "archipel-regional: --peer wants ID,RAFT_IP:PORT,HTTP_IP:PORT (at most "
                        "%d), got '%s'\n",
                        REGIONAL_MAX_PEERS, optarg);
                return 2;
            }
            cfg.n_peers++;
            break;
        case O_JOIN:
            cfg.join = true;
            break;
        case O_ELECTION:
            if (parse_uint(optarg, 60000, &v) != 0 || v < 50) {
                fprintf(stderr, "archipel-regional: --election-timeout-ms must be 50-60000\n");
                return 2;
            }
            cfg.election_timeout_ms = (unsigned)v;
            break;
        case O_SNAP:
            if (parse_uint(optarg, 10000000, &v) != 0 || v < 4) {
                fprintf(stderr, "archipel-regional: --snapshot-threshold must be 4-10000000\n");
                return 2;
            }
            cfg.snapshot_threshold = (unsigned)v;
            break;
        case O_LINK:
            if (parse_uint(optarg, 65535, &v) != 0) {
                fprintf(stderr, "archipel-regional: --link-port must be 0-65535, got '%s'\n",
                        optarg);
                return 2;
            }
            cfg.link_port = (uint16_t)v;
            break;
        case O_HB_MS:
            if (parse_uint(optarg, 600000, &v) != 0 || v < 20) {
                fprintf(stderr, "archipel-regional: --site-heartbeat-ms must be 20-600000\n");
                return 2;
            }
            cfg.site_heartbeat_ms = (unsigned)v;
            break;
        case O_HB_MISSES:
            if (parse_uint(optarg, 1000, &v) != 0 || v < 1) {
                fprintf(stderr, "archipel-regional: --site-heartbeat-misses must be 1-1000\n");
                return 2;
            }
            cfg.site_heartbeat_misses = (unsigned)v;
            break;
        case O_CONTROLLER:
            if (cfg.n_controllers >= AP_ARRAY_LEN(cfg.controllers) || strchr(optarg, ':') == NULL ||
                ap_strlcpy(cfg.controllers[cfg.n_controllers], optarg,
                           sizeof cfg.controllers[0]) >= sizeof cfg.controllers[0]) {
                fprintf(stderr,
                        "archipel-regional: --controller wants IP:PORT (at most 8), got '%s'\n",
                        optarg);
                return 2;
            }
            cfg.n_controllers++;
            break;
        case O_LOG:
            if (ap_log_parse_level(optarg, &level) != 0) {
                fprintf(stderr,
                        "archipel-regional: invalid --log-level '%s' (want debug, info, warn, "
                        "error or off)\n",
                        optarg);
                return 2;
            }
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("archipel-regional %s\n", AP_VERSION);
            return 0;
        default:
            fprintf(stderr,
                    "archipel-regional: run 'archipel-regional --help' for the list of options\n");
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "archipel-regional: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    const char *missing = cfg.region[0] == '\0' ? "--region"
                          : cfg.id == 0         ? "--id"
                          : cfg.ip[0] == '\0'   ? "--ip"
                          : cfg.dir[0] == '\0'  ? "--dir"
                                                : NULL;
    if (missing != NULL) {
        fprintf(stderr, "archipel-regional: %s is required (see --help)\n", missing);
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
    snprintf(comp, sizeof comp, "regional/%s/%llu", cfg.region, (unsigned long long)cfg.id);
    ap_log_init(comp, level, NULL);

    /* Forwarded requests run blocking libcurl calls on libuv's threadpool,
     * which raft's disk I/O shares: give the pool room for both. */
    setenv("UV_THREADPOOL_SIZE", "32", 0);
    ap_malloc_tune_server();
    struct app a;
    memset(&a, 0, sizeof a);
    a.loop = uv_default_loop();
    char errmsg[AP_ERRMSG_SIZE] = "";
    int rv = regional_node_start(&a.node, a.loop, &cfg, errmsg);
    if (rv != 0) {
        fprintf(stderr, "archipel-regional: start: %s\n", errmsg);
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
