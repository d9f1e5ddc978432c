/* archipel-edge: entry point; parses flags and runs one site's daemon. */
#include "ap/base.h"
#include "ap/err.h"
#include "ap/log.h"
#include "node.h"

#include <getopt.h>
#include <signal.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: archipel-edge --site NAME --region NAME --ip IP --dir DIR --region-node "
            "IP:PORT... [options]\n"
            "\n"
            "One site's daemon: a local shard that is always writable, the site's /v1 API,\n"
            "its workloads (each under an archipel-shim supervisor), and a link to any node\n"
            "of its region over which both sides converge.\n"
            "\n"
            "options:\n"
            "  --site NAME              site name, as registered in the region (e.g. r1-s1)\n"
            "  --region NAME            region name (e.g. r1)\n"
            "  --ip IP                  address every socket of this site binds to\n"
            "  --http-port PORT         HTTP API port (default 7200)\n"
            "  --dir DIR                data directory (shard, instances, logs)\n"
            "  --region-node IP:PORT    site-link address of a regional node (repeat for each)\n"
            "  --heartbeat-ms N         heartbeat interval on the link (default 1000)\n"
            "  --heartbeat-misses N     silent intervals before the link is dropped (default 3)\n"
            "  --cpu-millis N           CPU capacity offered (default 4000)\n"
            "  --memory-mb N            memory capacity offered (default 8192)\n"
            "  --max-instances N        instance capacity offered (default 100)\n"
            "  --shim PATH              archipel-shim binary (default: next to this binary)\n"
            "  --log-level LEVEL        debug, info, warn, error or off (default info, or "
            "$AP_LOG_LEVEL)\n"
            "  -h, --help               print this help and exit\n"
            "  -V, --version            print the version and exit\n");
}

static int parse_u64(const char *s, unsigned long long min, unsigned long long max,
                     unsigned long long *out)
{
    char *end;
    if (s == NULL || *s == '\0' || *s == '-') {
        return -1;
    }
    unsigned long long v = strtoull(s, &end, 10);
    if (*end != '\0' || v < min || v > max) {
        return -1;
    }
    *out = v;
    return 0;
}

static int copy_flag(const char *flag, const char *value, char *dst, size_t size)
{
    if (value[0] == '\0' || ap_strlcpy(dst, value, size) >= size) {
        fprintf(stderr, "archipel-edge: --%s must be 1-%zu characters\n", flag, size - 1);
        return -1;
    }
    return 0;
}

struct app {
    uv_loop_t *loop;
    struct edge_node *node;
    uv_signal_t sigint, sigterm;
    int stopping;
};

static void on_stopped(void *data)
{
    uv_stop(data);
}

static void on_signal(uv_signal_t *h, int signum)
{
    struct app *a = h->data;
    if (a->stopping++) {
        return;
    }
    AP_LOG(AP_LOG_INFO, "signal_received signal=%d", signum);
    uv_signal_stop(&a->sigint);
    uv_signal_stop(&a->sigterm);
    edge_node_stop(a->node, on_stopped, a->loop);
}

int main(int argc, char **argv)
{
    /* A peer that closes mid-write must give EPIPE, not kill the daemon. */
    signal(SIGPIPE, SIG_IGN);
    enum {
        O_SITE = 256,
        O_REGION,
        O_IP,
        O_HTTP,
        O_DIR,
        O_NODE,
        O_HB,
        O_MISSES,
        O_CPU,
        O_MEM,
        O_INST,
        O_SHIM,
        O_LOG
    };
    static const struct option opts[] = {
        {"site", required_argument, NULL, O_SITE},
        {"region", required_argument, NULL, O_REGION},
        {"ip", required_argument, NULL, O_IP},
        {"http-port", required_argument, NULL, O_HTTP},
        {"dir", required_argument, NULL, O_DIR},
        {"region-node", required_argument, NULL, O_NODE},
        {"heartbeat-ms", required_argument, NULL, O_HB},
        {"heartbeat-misses", required_argument, NULL, O_MISSES},
        {"cpu-millis", required_argument, NULL, O_CPU},
        {"memory-mb", required_argument, NULL, O_MEM},
        {"max-instances", required_argument, NULL, O_INST},
        {"shim", required_argument, NULL, O_SHIM},
        {"log-level", required_argument, NULL, O_LOG},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    struct edge_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.http_port = 7200;
    cfg.cpu_millis = 4000;
    cfg.memory_mb = 8192;
    cfg.instances = 100;
    enum ap_log_level level = ap_log_level_from_env(AP_LOG_INFO);
    unsigned long long v;
    int c;
    while ((c = getopt_long(argc, argv, "hV", opts, NULL)) != -1) {
        switch (c) {
        case O_SITE:
            if (copy_flag("site", optarg, cfg.site, sizeof cfg.site) != 0) {
                return 2;
            }
            break;
        case O_REGION:
            if (copy_flag("region", optarg, cfg.region, sizeof cfg.region) != 0) {
                return 2;
            }
            break;
        case O_IP:
            if (copy_flag("ip", optarg, cfg.ip, sizeof cfg.ip) != 0) {
                return 2;
            }
            break;
        case O_DIR:
            if (copy_flag("dir", optarg, cfg.dir, sizeof cfg.dir) != 0) {
                return 2;
            }
            break;
        case O_SHIM:
            if (copy_flag("shim", optarg, cfg.shim_path, sizeof cfg.shim_path) != 0) {
                return 2;
            }
            break;
        case O_NODE:
            if (cfg.n_targets >= LINK_MAX_TARGETS || strchr(optarg, ':') == NULL ||
                copy_flag("region-node", optarg, cfg.targets[cfg.n_targets],
                          sizeof cfg.targets[0]) != 0) {
                fprintf(stderr,
                        "archipel-edge: --region-node wants IP:PORT (at most %d), got '%s'\n",
                        LINK_MAX_TARGETS, optarg);
                return 2;
            }
            cfg.n_targets++;
            break;
        case O_HTTP:
            if (parse_u64(optarg, 1, 65535, &v) != 0) {
                fprintf(stderr, "archipel-edge: --http-port must be 1-65535, got '%s'\n", optarg);
                return 2;
            }
            cfg.http_port = (uint16_t)v;
            break;
        case O_HB:
        case O_MISSES:
            if (parse_u64(optarg, c == O_HB ? 50 : 1, c == O_HB ? 60000 : 100, &v) != 0) {
                fprintf(stderr, "archipel-edge: --%s out of range, got '%s'\n",
                        c == O_HB ? "heartbeat-ms (50-60000)" : "heartbeat-misses (1-100)", optarg);
                return 2;
            }
            if (c == O_HB) {
                cfg.heartbeat_ms = (unsigned)v;
            } else {
                cfg.misses = (unsigned)v;
            }
            break;
        case O_CPU:
        case O_MEM:
        case O_INST:
            if (parse_u64(optarg, 0, 1ull << 40, &v) != 0) {
                fprintf(stderr,
                        "archipel-edge: capacity flags take a non-negative integer, got '%s'\n",
                        optarg);
                return 2;
            }
            if (c == O_CPU) {
                cfg.cpu_millis = (int64_t)v;
            } else if (c == O_MEM) {
                cfg.memory_mb = (int64_t)v;
            } else {
                cfg.instances = (int64_t)v;
            }
            break;
        case O_LOG:
            if (ap_log_parse_level(optarg, &level) != 0) {
                fprintf(stderr,
                        "archipel-edge: invalid --log-level '%s' (want debug, info, warn, error or "
                        "off)\n",
                        optarg);
                return 2;
            }
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("archipel-edge %s\n", AP_VERSION);
            return 0;
        default:
            fprintf(stderr, "archipel-edge: run 'archipel-edge --help' for the list of options\n");
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "archipel-edge: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    const char *missing = cfg.site[0] == '\0'     ? "--site"
                          : cfg.region[0] == '\0' ? "--region"
                          : cfg.ip[0] == '\0'     ? "--ip"
                          : cfg.dir[0] == '\0'    ? "--dir"
                          : cfg.n_targets == 0    ? "--region-node"
                                                  : NULL;
    if (missing != NULL) {
        fprintf(stderr, "archipel-edge: %s is required (see --help)\n", missing);
        return 2;
    }
    if (cfg.shim_path[0] == '\0') {
        char self[PATH_MAX];
        ssize_t k = readlink("/proc/self/exe", self, sizeof self - 1);
        if (k <= 0) {
            fprintf(stderr, "archipel-edge: cannot find my own path; give --shim\n");
            return 2;
        }
        self[k] = '\0';
        char *slash = strrchr(self, '/');
        if (slash != NULL) {
            *slash = '\0';
        }
        snprintf(cfg.shim_path, sizeof cfg.shim_path, "%.490s/archipel-shim", self);
    }
    char comp[80];
    snprintf(comp, sizeof comp, "edge/%s", cfg.site);
    ap_log_init(comp, level, NULL);

    struct app a;
    memset(&a, 0, sizeof a);
    a.loop = uv_default_loop();
    char errmsg[AP_ERRMSG_SIZE] = "";
    if (edge_node_start(&a.node, a.loop, &cfg, errmsg) != 0) {
        fprintf(stderr, "archipel-edge: start: %s\n", errmsg);
        AP_LOG(AP_LOG_ERROR, "start_failed err=\"%s\"", errmsg);
        return 1;
    }
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
