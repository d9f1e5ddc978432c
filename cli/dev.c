/* dev: `archipel dev`, a whole local topology as child processes on loopback addresses. */
#include "dev.h"

#include "ap/base.h"
#include "ap/fs.h"
#include "ap/err.h"
#include "ap/httpc.h"
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <sodium.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_REGIONS     8
#define MAX_NODES       7
#define MAX_SITES       32
#define LINK_PORT       7102
#define SITE_PORT       7200
#define MAX_ARGS        32
#define HTTP_PORT       7100
#define RAFT_PORT       7101
#define START_TIMEOUT_S 60
#define CTL_IP          "127.0.10.1"
#define CTL_HTTP_PORT   7000
#define CTL_RAFT_PORT   7001
#define CTL_LINK_PORT   7002
/** Lifetime of the admin token dev writes (the most the controller grants: 7 days). */
#define ADMIN_TOKEN_TTL_S (7 * 24 * 3600)

/* One child process and the exact command line that restarts it. */
struct proc {
    char name[32];
    char ip[32];
    char log_path[PATH_MAX];
    char *argv[MAX_ARGS];
    int argc;
    pid_t pid;
    bool exited;
};

struct topo {
    char dir[PATH_MAX];
    char bin_dir[PATH_MAX];
    int regions;
    int nodes;
    int sites;
    struct proc procs[MAX_REGIONS * MAX_NODES + MAX_REGIONS * MAX_SITES + 1];
    int n_procs;
    int first_site; /* Index in procs of the first site process. */
    int ctl;        /* Index in procs of the controller (the last one). */
    char token[4096]; /* The admin token (DIR/admin.token). */
};

static volatile sig_atomic_t stop_requested;

static void on_stop_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static void usage(FILE *out)
{
    fprintf(
        out,
        "usage: archipel dev [--dir DIR] [--regions N] [--nodes-per-region N] [--sites N]\n"
        "\n"
        "Start a whole local archipel topology as child processes, each on its own\n"
        "loopback address: the controller on 127.0.10.1, region rK node I on\n"
        "127.0.(10+K).I (HTTP port %d, raft port %d), region rK's edge site sI on\n"
        "127.0.(20+K).I. Waits until every region has a leader, writes\n"
        "DIR/topology.json and an admin token (DIR/admin.token), and stays in the\n"
        "foreground; Ctrl-C (SIGINT) or SIGTERM stops every process.\n"
        "Running it again with the same DIR restarts the topology with its data.\n"
        "\n"
        "options:\n"
        "  --dir DIR                data, logs and topology.json (default .archipel-dev)\n"
        "  --regions N              regions to start, 1-%d (default 1)\n"
        "  --nodes-per-region N     raft nodes per region, 1-%d (default 3)\n"
        "  --sites N                edge sites per region, 0-%d (default 3)\n"
        "  -h, --help               print this help and exit\n",
        HTTP_PORT, RAFT_PORT, MAX_REGIONS, MAX_NODES, MAX_SITES);
}

static int parse_count(const char *flag, const char *s, int min, int max, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < min || v > max) {
        fprintf(stderr, "archipel dev: %s must be an integer from %d to %d, got '%s'\n", flag, min,
                max, s);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int add_arg(struct proc *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int add_arg(struct proc *p, const char *fmt, ...)
{
    char buf[PATH_MAX + 64];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (p->argc >= MAX_ARGS - 1) {
        return -1;
    }
    p->argv[p->argc] = ap_strdup(buf);
    if (p->argv[p->argc] == NULL) {
        return -1;
    }
    p->argc++;
    p->argv[p->argc] = NULL;
    return 0;
}

static int plan_regions(struct topo *t)
{
    for (int r = 1; r <= t->regions; r++) {
        for (int i = 1; i <= t->nodes; i++) {
            struct proc *p = &t->procs[t->n_procs++];
            memset(p, 0, sizeof *p);
            snprintf(p->name, sizeof p->name, "r%d-%d", r, i);
            snprintf(p->ip, sizeof p->ip, "127.0.%d.%d", 10 + r, i);
            char log_path[sizeof p->log_path + 64];
            snprintf(log_path, sizeof log_path, "%s/logs/%s.log", t->dir, p->name);
            if (ap_strlcpy(p->log_path, log_path, sizeof p->log_path) >= sizeof p->log_path) {
                return -1;
            }
            int rv = add_arg(p, "%s/archipel-regional", t->bin_dir);
            rv |= add_arg(p, "--region");
            rv |= add_arg(p, "r%d", r);
            rv |= add_arg(p, "--id");
            rv |= add_arg(p, "%d", i);
            rv |= add_arg(p, "--ip");
            rv |= add_arg(p, "%s", p->ip);
            rv |= add_arg(p, "--http-port");
            rv |= add_arg(p, "%d", HTTP_PORT);
            rv |= add_arg(p, "--raft-port");
            rv |= add_arg(p, "%d", RAFT_PORT);
            rv |= add_arg(p, "--dir");
            rv |= add_arg(p, "%s/r%d/node%d", t->dir, r, i);
            rv |= add_arg(p, "--controller");
            rv |= add_arg(p, "%s:%d", CTL_IP, CTL_LINK_PORT);
            for (int j = 1; j <= t->nodes; j++) {
                rv |= add_arg(p, "--peer");
                rv |= add_arg(p, "%d,127.0.%d.%d:%d,127.0.%d.%d:%d", j, 10 + r, j, RAFT_PORT,
                              10 + r, j, HTTP_PORT);
            }
            if (rv != 0) {
                return -1;
            }
        }
    }
    return 0;
}

static int plan_sites(struct topo *t)
{
    t->first_site = t->n_procs;
    for (int r = 1; r <= t->regions; r++) {
        for (int i = 1; i <= t->sites; i++) {
            struct proc *p = &t->procs[t->n_procs++];
            memset(p, 0, sizeof *p);
            snprintf(p->name, sizeof p->name, "r%d-s%d", r, i);
            snprintf(p->ip, sizeof p->ip, "127.0.%d.%d", 20 + r, i);
            char log_path[sizeof p->log_path + 64];
            snprintf(log_path, sizeof log_path, "%s/logs/%s.log", t->dir, p->name);
            if (ap_strlcpy(p->log_path, log_path, sizeof p->log_path) >= sizeof p->log_path) {
                return -1;
            }
            int rv = add_arg(p, "%s/archipel-edge", t->bin_dir);
            rv |= add_arg(p, "--site");
            rv |= add_arg(p, "%s", p->name);
            rv |= add_arg(p, "--region");
            rv |= add_arg(p, "r%d", r);
            rv |= add_arg(p, "--ip");
            rv |= add_arg(p, "%s", p->ip);
            rv |= add_arg(p, "--http-port");
            rv |= add_arg(p, "%d", SITE_PORT);
            rv |= add_arg(p, "--dir");
            rv |= add_arg(p, "%s/sites/%s", t->dir, p->name);
            for (int j = 1; j <= t->nodes; j++) {
                rv |= add_arg(p, "--region-node");
                rv |= add_arg(p, "127.0.%d.%d:%d", 10 + r, j, LINK_PORT);
            }
            if (rv != 0) {
                return -1;
            }
        }
    }
    return 0;
}

static void reap(struct topo *t);
static void sleep_ms(long ms);

/* The controller: one node in dev, after every other process in procs. */
static int plan_controller(struct topo *t)
{
    t->ctl = t->n_procs;
    struct proc *p = &t->procs[t->n_procs++];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "controller");
    snprintf(p->ip, sizeof p->ip, "%s", CTL_IP);
    char log_path[sizeof p->log_path + 64];
    snprintf(log_path, sizeof log_path, "%s/logs/controller.log", t->dir);
    if (ap_strlcpy(p->log_path, log_path, sizeof p->log_path) >= sizeof p->log_path) {
        return -1;
    }
    int rv = add_arg(p, "%s/archipel-controller", t->bin_dir);
    rv |= add_arg(p, "--id");
    rv |= add_arg(p, "1");
    rv |= add_arg(p, "--ip");
    rv |= add_arg(p, "%s", CTL_IP);
    rv |= add_arg(p, "--http-port");
    rv |= add_arg(p, "%d", CTL_HTTP_PORT);
    rv |= add_arg(p, "--raft-port");
    rv |= add_arg(p, "%d", CTL_RAFT_PORT);
    rv |= add_arg(p, "--link-port");
    rv |= add_arg(p, "%d", CTL_LINK_PORT);
    rv |= add_arg(p, "--dir");
    rv |= add_arg(p, "%s/controller/node1", t->dir);
    rv |= add_arg(p, "--admin-password-file");
    rv |= add_arg(p, "%s/admin.password", t->dir);
    return rv;
}

/* Write a secret file (mode 0600) atomically. */
static int write_secret(const char *path, const char *text)
{
    char tmp[PATH_MAX + 8];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        return -1;
    }
    size_t len = strlen(text);
    bool ok = write(fd, text, len) == (ssize_t)len && write(fd, "\n", 1) == 1 && fsync(fd) == 0;
    close(fd);
    return ok && rename(tmp, path) == 0 ? 0 : -1;
}

/* DIR/admin.password: kept across restarts (the admin user exists with it). */
static int admin_password(struct topo *t, char *out, size_t size)
{
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/admin.password", t->dir);
    FILE *f = fopen(path, "r");
    if (f != NULL) {
        bool ok = fgets(out, (int)size, f) != NULL;
        fclose(f);
        out[strcspn(out, "\r\n")] = '\0';
        if (ok && strlen(out) >= 8) {
            return 0;
        }
    }
    uint8_t raw[18];
    randombytes_buf(raw, sizeof raw);
    sodium_bin2base64(out, size, raw, sizeof raw, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    return write_secret(path, out);
}

/* POST to the controller or a region with the admin token; the status, or -1. */
static int http_call(const char *method, const char *url, const char *body, const char *token,
                     json_t **out)
{
    char errmsg[AP_ERRMSG_SIZE], auth[4200];
    const char *headers[3];
    size_t nh = 0;
    headers[nh++] = "Content-Type: application/json";
    if (token != NULL && token[0] != '\0') {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
        headers[nh++] = auth;
    }
    headers[nh] = NULL;
    struct ap_httpc_req req = {.method = method,
                               .url = url,
                               .body = body,
                               .body_len = body != NULL ? strlen(body) : 0,
                               .headers = headers,
                               .timeout_ms = 5000};
    struct ap_httpc_resp resp;
    if (ap_httpc_do(&req, &resp, errmsg) != 0) {
        return -1;
    }
    int status = (int)resp.status;
    if (out != NULL) {
        *out = resp.body != NULL ? json_loads(resp.body, 0, NULL) : NULL;
    }
    ap_httpc_resp_free(&resp);
    return status;
}

/* Wait for the controller, log in as admin, write DIR/admin.token and the CLI config. */
static int controller_ready(struct topo *t)
{
    char password[64], url[128], body[256], errmsg[AP_ERRMSG_SIZE];
    if (admin_password(t, password, sizeof password) != 0) {
        fprintf(stderr, "archipel dev: cannot write %s/admin.password\n", t->dir);
        return -1;
    }
    printf("waiting for the controller and its admin user");
    fflush(stdout);
    snprintf(url, sizeof url, "http://%s:%d/v1/tokens", CTL_IP, CTL_HTTP_PORT);
    snprintf(body, sizeof body, "{\"user\":\"admin\",\"password\":\"%s\",\"ttl_seconds\":%d}",
             password, ADMIN_TOKEN_TTL_S);
    time_t start = time(NULL);
    while (!stop_requested) {
        reap(t);
        if (t->procs[t->ctl].exited) {
            printf("\n");
            fprintf(stderr, "archipel dev: the controller exited; see %s\n",
                    t->procs[t->ctl].log_path);
            return -1;
        }
        json_t *resp = NULL;
        int status = http_call("POST", url, body, NULL, &resp);
        const char *tok = json_string_value(json_object_get(resp, "token"));
        if (status == 201 && tok != NULL && strlen(tok) < sizeof t->token) {
            ap_strlcpy(t->token, tok, sizeof t->token);
            json_decref(resp);
            break;
        }
        json_decref(resp);
        if (time(NULL) - start > START_TIMEOUT_S) {
            printf("\n");
            fprintf(stderr, "archipel dev: no admin token after %d s; see %s\n", START_TIMEOUT_S,
                    t->procs[t->ctl].log_path);
            return -1;
        }
        printf(".");
        fflush(stdout);
        sleep_ms(250);
    }
    sodium_memzero(password, sizeof password);
    if (stop_requested) {
        return -1;
    }
    char path[PATH_MAX + 32], endpoint[64];
    snprintf(path, sizeof path, "%s/admin.token", t->dir);
    if (write_secret(path, t->token) != 0) {
        fprintf(stderr, "\narchipel dev: cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    snprintf(endpoint, sizeof endpoint, "http://%s:%d", CTL_IP, CTL_HTTP_PORT);
    char cfg_path[PATH_MAX];
    if (cli_config_write(NULL, endpoint, t->token, errmsg) != 0) {
        fprintf(stderr, "\narchipel dev: could not write the CLI config: %s\n", errmsg);
    } else if (cli_config_path(cfg_path, sizeof cfg_path) == 0) {
        printf("\n  controller ready after %lds; admin token in %s, CLI config %s",
               (long)(time(NULL) - start), path, cfg_path);
    }
    printf("\n");
    return 0;
}

/* Wait until each region's leader has the signing key from the controller. */
static int wait_for_keys(struct topo *t)
{
    time_t start = time(NULL);
    for (int r = 1; r <= t->regions && !stop_requested; r++) {
        char url[128];
        snprintf(url, sizeof url, "http://127.0.%d.1:%d/v1/sites", 10 + r, HTTP_PORT);
        for (;;) {
            int status = http_call("GET", url, NULL, t->token, NULL);
            if (status == 200) {
                break;
            }
            if (time(NULL) - start > START_TIMEOUT_S || stop_requested) {
                fprintf(stderr,
                        "archipel dev: region r%d did not get the signing key from the "
                        "controller (HTTP %d); see %s/logs\n",
                        r, status, t->dir);
                return -1;
            }
            sleep_ms(200);
        }
    }
    return stop_requested ? -1 : 0;
}

static int spawn(struct proc *p)
{
    int fd = open(p->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        fprintf(stderr, "archipel dev: open %s: %s\n", p->log_path, strerror(errno));
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        close(fd);
        fprintf(stderr, "archipel dev: fork: %s\n", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        /* The child gets its own process group: Ctrl-C reaches archipel dev,
         * which then stops the children in order. */
        setpgid(0, 0);
        dup2(fd, STDOUT_FILENO);
        dup2(fd, STDERR_FILENO);
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0) {
            dup2(devnull, STDIN_FILENO);
        }
        execv(p->argv[0], p->argv);
        fprintf(stderr, "exec %s: %s\n", p->argv[0], strerror(errno));
        _exit(127);
    }
    close(fd);
    p->pid = pid;
    p->exited = false;
    return 0;
}

/* Reap children that exited; report each once. */
static void reap(struct topo *t)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (int i = 0; i < t->n_procs; i++) {
            struct proc *p = &t->procs[i];
            if (p->pid == pid && !p->exited) {
                p->exited = true;
                if (!stop_requested) {
                    if (WIFSIGNALED(status)) {
                        fprintf(stderr, "archipel dev: %s (pid %d) killed by signal %d; see %s\n",
                                p->name, (int)pid, WTERMSIG(status), p->log_path);
                    } else {
                        fprintf(stderr, "archipel dev: %s (pid %d) exited with status %d; see %s\n",
                                p->name, (int)pid, WEXITSTATUS(status), p->log_path);
                    }
                }
            }
        }
    }
}

static json_t *health_at(const char *ip, int port)
{
    char url[128], errmsg[AP_ERRMSG_SIZE];
    snprintf(url, sizeof url, "http://%s:%d/v1/health", ip, port);
    struct ap_httpc_req req = {.url = url, .timeout_ms = 1000};
    struct ap_httpc_resp resp;
    if (ap_httpc_do(&req, &resp, errmsg) != 0) {
        return NULL;
    }
    json_t *j = resp.status == 200 && resp.body != NULL ? json_loads(resp.body, 0, NULL) : NULL;
    ap_httpc_resp_free(&resp);
    return j;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Wait until each region has a leader, printing progress. Returns 0 or -1. */
static int wait_for_leaders(struct topo *t)
{
    bool led[MAX_REGIONS + 1] = {false};
    int done = 0;
    time_t start = time(NULL);
    printf("waiting for %d region%s to elect a leader", t->regions, t->regions == 1 ? "" : "s");
    fflush(stdout);
    while (done < t->regions && !stop_requested) {
        if (time(NULL) - start > START_TIMEOUT_S) {
            printf("\n");
            fprintf(stderr, "archipel dev: no leader after %d s; see the logs in %s/logs\n",
                    START_TIMEOUT_S, t->dir);
            return -1;
        }
        reap(t);
        for (int i = 0; i < t->n_procs; i++) {
            if (t->procs[i].exited) {
                printf("\n");
                fprintf(stderr, "archipel dev: %s exited during start-up; see %s\n",
                        t->procs[i].name, t->procs[i].log_path);
                return -1;
            }
        }
        for (int r = 1; r <= t->regions; r++) {
            if (led[r]) {
                continue;
            }
            char ip[32];
            snprintf(ip, sizeof ip, "127.0.%d.1", 10 + r);
            for (int i = 1; i <= t->nodes && !led[r]; i++) {
                snprintf(ip, sizeof ip, "127.0.%d.%d", 10 + r, i);
                json_t *h = health_at(ip, HTTP_PORT);
                const char *role = json_string_value(json_object_get(h, "role"));
                if (role != NULL && strcmp(role, "leader") == 0) {
                    led[r] = true;
                    done++;
                    printf("\n  region r%d: leader is node %d (%s) after %lds", r, i, ip,
                           (long)(time(NULL) - start));
                }
                json_decref(h);
            }
        }
        if (done < t->regions) {
            printf(".");
            fflush(stdout);
            sleep_ms(250);
        }
    }
    printf("\n");
    return stop_requested ? -1 : 0;
}

/* Register every site in its region's catalog (an existing one is fine). */
static int register_sites(struct topo *t)
{
    for (int k = t->first_site; k < t->ctl; k++) {
        struct proc *p = &t->procs[k];
        int r = atoi(p->name + 1);
        char url[128], body[256];
        snprintf(url, sizeof url, "http://127.0.%d.1:%d/v1/sites", 10 + r, HTTP_PORT);
        snprintf(body, sizeof body,
                 "{\"name\":\"%s\",\"labels\":{\"region\":\"r%d\"},"
                 "\"capacity\":{\"cpu_millis\":4000,\"memory_mb\":8192,\"instances\":100}}",
                 p->name, r);
        int ok = 0;
        for (int attempt = 0; attempt < 20 && !ok && !stop_requested; attempt++) {
            int status = http_call("POST", url, body, t->token, NULL);
            ok = status == 201 || status == 409;
            if (!ok) {
                sleep_ms(250);
            }
        }
        if (!ok) {
            fprintf(stderr, "archipel dev: could not register site %s in region r%d\n", p->name, r);
            return -1;
        }
    }
    return 0;
}

/* Wait until every site says its link to the region is up. */
static int wait_for_sites(struct topo *t)
{
    int n_sites = t->ctl - t->first_site;
    if (n_sites == 0) {
        return 0;
    }
    printf("waiting for %d site%s to link to their region", n_sites, n_sites == 1 ? "" : "s");
    fflush(stdout);
    time_t start = time(NULL);
    while (!stop_requested) {
        int linked = 0;
        reap(t);
        for (int k = t->first_site; k < t->ctl; k++) {
            if (t->procs[k].exited) {
                printf("\n");
                fprintf(stderr, "archipel dev: %s exited during start-up; see %s\n",
                        t->procs[k].name, t->procs[k].log_path);
                return -1;
            }
            json_t *h = health_at(t->procs[k].ip, SITE_PORT);
            const char *link = json_string_value(json_object_get(h, "link"));
            linked += link != NULL && strcmp(link, "connected") == 0;
            json_decref(h);
        }
        if (linked == n_sites) {
            printf("\n  %d site%s linked after %lds\n", n_sites, n_sites == 1 ? "" : "s",
                   (long)(time(NULL) - start));
            return 0;
        }
        if (time(NULL) - start > START_TIMEOUT_S) {
            printf("\n");
            fprintf(stderr, "archipel dev: only %d of %d sites linked after %d s; see %s/logs\n",
                    linked, n_sites, START_TIMEOUT_S, t->dir);
            return -1;
        }
        printf(".");
        fflush(stdout);
        sleep_ms(250);
    }
    return -1;
}

static json_t *cmd_json(const struct proc *p)
{
    json_t *cmd = json_array();
    for (int a = 0; a < p->argc; a++) {
        json_array_append_new(cmd, json_string(p->argv[a]));
    }
    return cmd;
}

static int write_topology(struct topo *t)
{
    json_t *regions = json_array();
    for (int r = 1; r <= t->regions; r++) {
        json_t *nodes = json_array();
        for (int i = 1; i <= t->nodes; i++) {
            struct proc *p = &t->procs[(r - 1) * t->nodes + (i - 1)];
            json_t *cmd = json_array();
            for (int a = 0; a < p->argc; a++) {
                json_array_append_new(cmd, json_string(p->argv[a]));
            }
            char http[48], raft_addr[48];
            snprintf(http, sizeof http, "%s:%d", p->ip, HTTP_PORT);
            snprintf(raft_addr, sizeof raft_addr, "%s:%d", p->ip, RAFT_PORT);
            json_array_append_new(nodes,
                                  json_pack("{s:i, s:s, s:s, s:s, s:i, s:o, s:s}", "id", i, "ip",
                                            p->ip, "http", http, "raft", raft_addr, "pid",
                                            (int)p->pid, "cmd", cmd, "log", p->log_path));
        }
        char name[16];
        snprintf(name, sizeof name, "r%d", r);
        json_array_append_new(regions, json_pack("{s:s, s:o}", "name", name, "nodes", nodes));
    }
    json_t *sites = json_array();
    for (int k = t->first_site; k < t->ctl; k++) {
        const struct proc *p = &t->procs[k];
        char http[48], region[16];
        snprintf(http, sizeof http, "%s:%d", p->ip, SITE_PORT);
        snprintf(region, sizeof region, "r%d", atoi(p->name + 1));
        json_array_append_new(sites,
                              json_pack("{s:s, s:s, s:s, s:s, s:i, s:o, s:s}", "name", p->name,
                                        "region", region, "ip", p->ip, "http", http, "pid",
                                        (int)p->pid, "cmd", cmd_json(p), "log", p->log_path));
    }
    const struct proc *cp = &t->procs[t->ctl];
    char c_http[48], c_raft[48], c_link[48], token_file[PATH_MAX + 32];
    snprintf(c_http, sizeof c_http, "%s:%d", CTL_IP, CTL_HTTP_PORT);
    snprintf(c_raft, sizeof c_raft, "%s:%d", CTL_IP, CTL_RAFT_PORT);
    snprintf(c_link, sizeof c_link, "%s:%d", CTL_IP, CTL_LINK_PORT);
    snprintf(token_file, sizeof token_file, "%s/admin.token", t->dir);
    json_t *controller = json_pack(
        "{s:[{s:i, s:s, s:s, s:s, s:s, s:i, s:o, s:s}]}", "nodes", "id", 1, "ip", CTL_IP, "http",
        c_http, "raft", c_raft, "link", c_link, "pid", (int)cp->pid, "cmd", cmd_json(cp), "log",
        cp->log_path);
    json_t *top = json_pack("{s:o, s:o, s:o, s:s, s:s}", "regions", regions, "sites", sites,
                            "controller", controller, "admin_token_file", token_file, "dir",
                            t->dir);
    char path[PATH_MAX + 32], tmp[PATH_MAX + 40];
    snprintf(path, sizeof path, "%s/topology.json", t->dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int rv = json_dump_file(top, tmp, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(top);
    if (rv != 0 || rename(tmp, path) != 0) {
        fprintf(stderr, "archipel dev: write %s: %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

/* Workloads outlive their site daemon by design (docs/workloads.md); a dev
 * topology that stops takes its workloads with it: every archipel-shim
 * whose instance directory is under DIR gets SIGTERM and stops its workload. */
static int stop_workloads(struct topo *t)
{
    char needle[PATH_MAX + 16];
    int n = 0;
    snprintf(needle, sizeof needle, "%s/sites/", t->dir);
    DIR *proc = opendir("/proc");
    if (proc == NULL) {
        return 0;
    }
    struct dirent *e;
    while ((e = readdir(proc)) != NULL) {
        char path[64], cmd[PATH_MAX * 2];
        if (e->d_name[0] < '1' || e->d_name[0] > '9') {
            continue;
        }
        snprintf(path, sizeof path, "/proc/%.20s/cmdline", e->d_name);
        FILE *f = fopen(path, "r");
        if (f == NULL) {
            continue;
        }
        size_t len = fread(cmd, 1, sizeof cmd - 1, f);
        fclose(f);
        for (size_t i = 0; i < len; i++) {
            cmd[i] = cmd[i] == '\0' ? ' ' : cmd[i];
        }
        cmd[len] = '\0';
        if (strstr(cmd, "archipel-shim") != NULL && strstr(cmd, needle) != NULL) {
            kill((pid_t)atoi(e->d_name), SIGTERM);
            n++;
        }
    }
    closedir(proc);
    return n;
}

static void stop_all(struct topo *t)
{
    for (int i = t->n_procs - 1; i >= 0; i--) {
        if (t->procs[i].pid > 0 && !t->procs[i].exited) {
            kill(t->procs[i].pid, SIGTERM);
        }
    }
    /* Give every process 10 s to close cleanly, then kill what is left. */
    for (int tick = 0; tick < 100; tick++) {
        reap(t);
        bool alive = false;
        for (int i = 0; i < t->n_procs; i++) {
            alive = alive || (t->procs[i].pid > 0 && !t->procs[i].exited);
        }
        if (!alive) {
            return;
        }
        sleep_ms(100);
    }
    for (int i = 0; i < t->n_procs; i++) {
        if (t->procs[i].pid > 0 && !t->procs[i].exited) {
            fprintf(stderr, "archipel dev: %s did not stop in 10 s; killing it\n",
                    t->procs[i].name);
            kill(t->procs[i].pid, SIGKILL);
        }
    }
    sleep_ms(200);
    reap(t);
}

static void stop_everything(struct topo *t)
{
    stop_all(t);
    int shims = stop_workloads(t);
    if (shims > 0) {
        printf("archipel dev: stopping the workloads of %d instance%s\n", shims,
               shims == 1 ? "" : "s");
        /* Shims give their workload a 5 s grace period. */
        sleep_ms(500);
        for (int i = 0; i < 60 && stop_workloads(t) > 0; i++) {
            sleep_ms(100);
        }
    }
}

static void free_topo(struct topo *t)
{
    for (int i = 0; i < t->n_procs; i++) {
        for (int a = 0; a < t->procs[i].argc; a++) {
            ap_free(t->procs[i].argv[a]);
        }
    }
}

int dev__main(int argc, char **argv, const char *self_path)
{
    static const struct option opts[] = {
        {"dir", required_argument, NULL, 'd'},
        {"regions", required_argument, NULL, 'r'},
        {"nodes-per-region", required_argument, NULL, 'n'},
        {"sites", required_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    static struct topo t;
    const char *dir = ".archipel-dev";
    int c;
    memset(&t, 0, sizeof t);
    t.regions = 1;
    t.nodes = 3;
    t.sites = 3;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'd':
            dir = optarg;
            break;
        case 'r':
            if (parse_count("--regions", optarg, 1, MAX_REGIONS, &t.regions) != 0) {
                return 2;
            }
            break;
        case 'n':
            if (parse_count("--nodes-per-region", optarg, 1, MAX_NODES, &t.nodes) != 0) {
                return 2;
            }
            break;
        case 's':
            if (parse_count("--sites", optarg, 0, MAX_SITES, &t.sites) != 0) {
                return 2;
            }
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            fprintf(stderr, "archipel dev: run 'archipel dev --help' for the list of options\n");
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "archipel dev: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (ap_fs_mkdir_p(dir) != 0 || realpath(dir, t.dir) == NULL) {
        fprintf(stderr, "archipel dev: cannot create --dir %s: %s\n", dir, strerror(errno));
        return 1;
    }
    char self[PATH_MAX];
    if (realpath(self_path, self) == NULL) {
        fprintf(stderr, "archipel dev: cannot find my own binary (%s): %s\n", self_path,
                strerror(errno));
        return 1;
    }
    ap_strlcpy(t.bin_dir, self, sizeof t.bin_dir);
    char *slash = strrchr(t.bin_dir, '/');
    if (slash != NULL) {
        *slash = '\0';
    }
    char logs[PATH_MAX + 8];
    snprintf(logs, sizeof logs, "%s/logs", t.dir);
    if (ap_fs_mkdir_p(logs) != 0) {
        fprintf(stderr, "archipel dev: cannot create %s: %s\n", logs, strerror(errno));
        return 1;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    int code = 1;
    if (plan_regions(&t) != 0 || plan_sites(&t) != 0 || plan_controller(&t) != 0) {
        fprintf(stderr, "archipel dev: out of memory\n");
        goto out;
    }
    printf("archipel dev: starting a controller and %d region%s of %d node%s in %s\n",
           t.regions, t.regions == 1 ? "" : "s", t.nodes, t.nodes == 1 ? "" : "s", t.dir);
    if (spawn(&t.procs[t.ctl]) != 0) {
        goto out_stop;
    }
    printf("  started %-10s pid %-7d http %s:%d  log %s\n", "controller", (int)t.procs[t.ctl].pid,
           CTL_IP, CTL_HTTP_PORT, t.procs[t.ctl].log_path);
    fflush(stdout);
    if (controller_ready(&t) != 0) {
        goto out_stop;
    }
    for (int i = 0; i < t.first_site; i++) {
        if (spawn(&t.procs[i]) != 0) {
            goto out_stop;
        }
        printf("  started %-8s pid %-7d http %s:%d  log %s\n", t.procs[i].name, (int)t.procs[i].pid,
               t.procs[i].ip, HTTP_PORT, t.procs[i].log_path);
    }
    fflush(stdout);
    if (wait_for_leaders(&t) != 0 || wait_for_keys(&t) != 0 || register_sites(&t) != 0) {
        goto out_stop;
    }
    for (int i = t.first_site; i < t.ctl; i++) {
        if (spawn(&t.procs[i]) != 0) {
            goto out_stop;
        }
        printf("  started %-8s pid %-7d http %s:%d  log %s\n", t.procs[i].name, (int)t.procs[i].pid,
               t.procs[i].ip, SITE_PORT, t.procs[i].log_path);
    }
    fflush(stdout);
    if (wait_for_sites(&t) != 0 || write_topology(&t) != 0) {
        goto out_stop;
    }
    printf("archipel dev: ready; topology in %s/topology.json\n", t.dir);
    printf("  try: build/bin/archipel site list   (or: curl -s http://%s:%d/v1/health)\n", CTL_IP,
           CTL_HTTP_PORT);
    printf("press Ctrl-C to stop\n");
    fflush(stdout);
    while (!stop_requested) {
        reap(&t);
        sleep_ms(200);
    }
    code = 0;
out_stop:
    printf("archipel dev: stopping\n");
    fflush(stdout);
    stop_everything(&t);
    printf("archipel dev: stopped\n");
out:
    free_topo(&t);
    return code;
}
