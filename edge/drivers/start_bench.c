/* edge-start-bench: instance start latency of driver_process beside a raw spawn
 * (docs/benchmarks.md).
 */
/*
 * One process, shaped like archipel-edge (a libuv loop, the process driver,
 * the instances it started), alternates three ways of starting the same
 * command, in rotating order, and times each from the call:
 *
 *   driver    driver_process__start(): "exec" until the workload has exec'd
 *             (the time the shim's spawn of it returned, which it logs in
 *             shim.log as exec_mono_us, CLOCK_MONOTONIC like ours), and
 *             "answer" until its callback fired (the shim's answer reached
 *             us through the loop)
 *   spawn     posix_spawnp() until it returns (glibc's vfork-style clone: it
 *             returns once the child has exec'd)
 *   fork      fork() + execvp() in the child, until a close-on-exec pipe
 *             reports the exec
 *
 * Between two rounds the loop runs for --gap-ms, as the daemon's loop does
 * between two API requests; that is when the driver spawns its next idle
 * shim. Prints key=value lines. A benchmark, not a test: it asserts nothing
 * but counts starts that failed or did not run the command.
 */
#include "ap/base.h"
#include "ap/err.h"
#include "ap/log.h"
#include "driver_process.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

extern char **environ;

#define BENCH_MAX_COUNT 1000

struct bench {
    const char *shim;
    const char *work;
    int count;
    int gap_ms;
    char *const *argv; /* the command every method starts */
    size_t argc;
    uv_loop_t loop;
};

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double pct_ms(int64_t *v, int n, double q)
{
    qsort(v, (size_t)n, sizeof v[0], cmp_i64);
    int k = (int)(q * (n - 1) + 0.5);
    return (double)v[k] / 1e6;
}

static void on_gap(uv_timer_t *t)
{
    uv_stop(t->loop);
}

/* Run the loop for ms milliseconds (the daemon's idle time between requests). */
static void run_loop_for(struct bench *b, int ms)
{
    uv_timer_t t;
    uv_timer_init(&b->loop, &t);
    uv_timer_start(&t, on_gap, (uint64_t)ms, 0);
    uv_run(&b->loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&b->loop, UV_RUN_NOWAIT);
}

static void on_event(void *data, const struct driver_process_status *st)
{
    (void)data;
    (void)st;
}

struct started {
    bool done;
    int rc;
    int64_t at_ns; /* when the callback fired */
};

static void on_started(void *data, const char *id, int rc, const struct driver_process_status *st)
{
    struct started *res = data;
    (void)id;
    (void)st;
    res->at_ns = now_ns();
    res->done = true;
    res->rc = rc;
}

/* posix_spawnp: returns once the child has exec'd. -1 on failure. */
static int64_t time_spawn(struct bench *b, pid_t *pid)
{
    int64_t t0 = now_ns();
    if (posix_spawnp(pid, b->argv[0], NULL, NULL, b->argv, environ) != 0) {
        return -1;
    }
    return now_ns() - t0;
}

/* fork + execvp, the exec seen through a close-on-exec pipe reaching EOF. */
static int64_t time_fork(struct bench *b, pid_t *pid)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) {
        return -1;
    }
    int64_t t0 = now_ns();
    *pid = fork();
    if (*pid == 0) {
        execvp(b->argv[0], b->argv);
        _exit(127);
    }
    close(p[1]);
    char c;
    while (read(p[0], &c, 1) < 0 && errno == EINTR) {
    }
    int64_t dt = now_ns() - t0;
    close(p[0]);
    return *pid > 0 ? dt : -1;
}

static void end_child(pid_t pid)
{
    if (pid > 0) {
        kill(pid, SIGKILL);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
        }
    }
}

/*
 * Whether pid runs the command: its /proc/PID/comm is argv[0]'s base name
 * within 100 ms. The kernel closes close-on-exec descriptors (which is how
 * the shim, like posix_spawn, learns of the exec) a little before it renames
 * the process, so a check at once could still see the shim's name.
 */
static bool exec_done(const struct bench *b, int pid)
{
    const char *base = strrchr(b->argv[0], '/');
    base = base != NULL ? base + 1 : b->argv[0];
    for (int i = 0; i < 100; i++) {
        char path[64], comm[64] = "";
        snprintf(path, sizeof path, "/proc/%d/comm", pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            return false;
        }
        ssize_t n = read(fd, comm, sizeof comm - 1);
        close(fd);
        if (n > 0) {
            comm[n] = '\0';
            comm[strcspn(comm, "\n")] = '\0';
            if (strncmp(comm, base, 15) == 0) {
                return true;
            }
        }
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    return false;
}

/* The steps of one start as its shim logged them (shim.log, "shim_start ..."). */
struct shim_steps {
    int64_t recv_ns;  /* CLOCK_MONOTONIC: the start message was read */
    int64_t exec_ns;  /* CLOCK_MONOTONIC: the spawn of the workload returned (it exec'd) */
    int64_t take_ns;  /* durations: decode and take the instance's directory */
    int64_t spawn_ns; /* the vfork-style spawn, exec included */
};

static int64_t field_us(const char *line, const char *key)
{
    const char *p = strstr(line, key);
    return p != NULL ? strtoll(p + strlen(key), NULL, 10) : 0;
}

/* Read the first "shim_start" line of instance id's shim.log. Returns false when absent. */
static bool shim_steps_read(const char *data, const char *id, struct shim_steps *out)
{
    char path[PATH_MAX + 128];
    snprintf(path, sizeof path, "%s/instances/%s/shim.log", data, id);
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return false;
    }
    char line[1024];
    bool found = false;
    while (!found && fgets(line, sizeof line, f) != NULL) {
        if (strstr(line, "shim_start") != NULL && strstr(line, "exec_mono_us=") != NULL) {
            out->recv_ns = field_us(line, "recv_mono_us=") * 1000;
            out->exec_ns = field_us(line, "exec_mono_us=") * 1000;
            out->take_ns = field_us(line, "take_us=") * 1000;
            out->spawn_ns = field_us(line, "spawn_us=") * 1000;
            found = out->exec_ns > 0;
        }
    }
    fclose(f);
    return found;
}

/*
 * One mode: a driver with the given config over WORK/<mode>, count rounds of
 * driver / spawn / fork in rotating order, then every instance stopped.
 */
static int run_mode(struct bench *b, const char *mode, bool no_ns, bool spawn_on_start)
{
    char data[PATH_MAX];
    snprintf(data, sizeof data, "%s/%s", b->work, mode);
    if (mkdir(data, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "mkdir %s: %s\n", data, strerror(errno));
        return 1;
    }
    struct driver_process_config cfg = {
        .loop = &b->loop,
        .data_dir = data,
        .shim_path = b->shim,
        .cgroup_parent = "", /* the host's cgroups are left alone */
        .no_namespaces = no_ns,
        .spawn_on_start = spawn_on_start,
        .on_event = on_event,
    };
    struct driver_process *d;
    char errmsg[AP_ERRMSG_SIZE];
    if (driver_process__new(&d, &cfg, errmsg) != 0) {
        fprintf(stderr, "%s: %s\n", mode, errmsg);
        return 1;
    }
    struct driver_process_caps caps;
    driver_process__capabilities(d, &caps);
    run_loop_for(b, 200);
    int64_t *drv = calloc((size_t)b->count, sizeof *drv);
    int64_t *dex = calloc((size_t)b->count, sizeof *dex);
    int64_t *hand = calloc((size_t)b->count, sizeof *hand);
    int64_t *call = calloc((size_t)b->count, sizeof *call);
    int64_t *take = calloc((size_t)b->count, sizeof *take);
    int64_t *sspawn = calloc((size_t)b->count, sizeof *sspawn);
    int64_t *t0s = calloc((size_t)b->count, sizeof *t0s);
    int64_t *spw = calloc((size_t)b->count, sizeof *spw);
    int64_t *frk = calloc((size_t)b->count, sizeof *frk);
    if (drv == NULL || dex == NULL || t0s == NULL || spw == NULL || frk == NULL || hand == NULL ||
        take == NULL || sspawn == NULL || call == NULL) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    int failures = 0;
    struct driver_process_spec spec = {
        .name = "bench",
        .argv = (const char *const *)b->argv,
        .argc = b->argc,
        .restart = DRIVER_PROCESS_RESTART_NEVER,
    };
    for (int i = 0; i < b->count; i++) {
        char id[32];
        snprintf(id, sizeof id, "b%04d", i);
        pid_t sp = -1, fp = -1;
        /* Rotate the order, so that no method always runs first after the gap. */
        for (int k = 0; k < 3; k++) {
            int which = (i + k) % 3;
            if (which == 0) {
                struct started res = {false, 0, 0};
                t0s[i] = now_ns();
                int rc = driver_process__start(d, id, &spec, on_started, &res);
                call[i] = now_ns() - t0s[i];
                /* The daemon's loop waits in epoll for the shim's answer, as here. */
                while (rc == 0 && !res.done) {
                    uv_run(&b->loop, UV_RUN_ONCE);
                }
                drv[i] = (rc == 0 ? res.at_ns : now_ns()) - t0s[i];
                rc = rc != 0 ? rc : res.rc;
                struct driver_process_status st;
                if (rc != 0 || driver_process__status(d, id, &st) != 0 ||
                    st.state != DRIVER_PROCESS_RUNNING || !exec_done(b, st.workload_pid)) {
                    fprintf(stderr, "%s: start %s: %s\n", mode, id,
                            rc != 0 ? driver_process__errmsg(d) : "not running after start");
                    failures++;
                }
            } else if (which == 1) {
                spw[i] = time_spawn(b, &sp);
            } else {
                frk[i] = time_fork(b, &fp);
            }
        }
        end_child(sp);
        end_child(fp);
        if (spw[i] < 0 || frk[i] < 0) {
            failures++;
        }
        run_loop_for(b, b->gap_ms);
    }
    for (int i = 0; i < b->count; i++) {
        char id[32];
        snprintf(id, sizeof id, "b%04d", i);
        driver_process__stop(d, id);
    }
    /* Bounded: every shim has 5 s (the default grace) to record "stopped". */
    for (int step = 0; step < 100; step++) {
        int running = 0;
        for (int i = 0; i < b->count; i++) {
            char id[32];
            struct driver_process_status st;
            snprintf(id, sizeof id, "b%04d", i);
            if (driver_process__status(d, id, &st) == 0 && st.alive) {
                running++;
            }
        }
        if (running == 0) {
            break;
        }
        run_loop_for(b, 100);
    }
    for (int i = 0; i < b->count; i++) {
        char id[32];
        snprintf(id, sizeof id, "b%04d", i);
        struct shim_steps ss;
        if (shim_steps_read(data, id, &ss)) {
            dex[i] = ss.exec_ns - t0s[i];
            hand[i] = ss.recv_ns - t0s[i];
            take[i] = ss.take_ns;
            sspawn[i] = ss.spawn_ns;
        } else {
            dex[i] = drv[i];
            failures++;
        }
    }
    double e50 = pct_ms(dex, b->count, 0.5), e99 = pct_ms(dex, b->count, 0.99);
    double d50 = pct_ms(drv, b->count, 0.5), d99 = pct_ms(drv, b->count, 0.99);
    double s50 = pct_ms(spw, b->count, 0.5), s99 = pct_ms(spw, b->count, 0.99);
    double f50 = pct_ms(frk, b->count, 0.5), f99 = pct_ms(frk, b->count, 0.99);
    printf("mode=%s namespaces=%d idle_shim=%d count=%d gap_ms=%d failures=%d\n", mode,
           caps.namespaces, !spawn_on_start, b->count, b->gap_ms, failures);
    printf("%s.exec_p50_ms=%.3f\n%s.exec_p99_ms=%.3f\n", mode, e50, mode, e99);
    /* Where the time goes, medians of each step (they need not add up to the median total). */
    printf("%s.step_call_p50_ms=%.3f\n", mode, pct_ms(call, b->count, 0.5));
    printf("%s.step_handoff_p50_ms=%.3f\n", mode, pct_ms(hand, b->count, 0.5));
    printf("%s.step_take_p50_ms=%.3f\n", mode, pct_ms(take, b->count, 0.5));
    printf("%s.step_spawn_p50_ms=%.3f\n", mode, pct_ms(sspawn, b->count, 0.5));
    printf("%s.answer_p50_ms=%.3f\n%s.answer_p99_ms=%.3f\n", mode, d50, mode, d99);
    printf("%s.spawn_p50_ms=%.3f\n%s.spawn_p99_ms=%.3f\n", mode, s50, mode, s99);
    printf("%s.fork_p50_ms=%.3f\n%s.fork_p99_ms=%.3f\n", mode, f50, mode, f99);
    printf("%s.exec_ratio_p50=%.2f\n", mode, s50 > 0 ? e50 / s50 : 0.0);
    printf("%s.answer_ratio_p50=%.2f\n", mode, s50 > 0 ? d50 / s50 : 0.0);
    fflush(stdout);
    free(drv);
    free(dex);
    free(t0s);
    free(hand);
    free(call);
    free(take);
    free(sspawn);
    free(spw);
    free(frk);
    driver_process__close(d, NULL, NULL);
    run_loop_for(b, 50);
    return failures == 0 ? 0 : 1;
}

static void usage(FILE *out)
{
    fprintf(out, "usage: edge-start-bench --shim PATH --work DIR [--count N] [--gap-ms N]\n"
                 "                        [--modes ns,plain,spawn] [-- COMMAND ARGS...]\n"
                 "\n"
                 "Times driver_process__start() beside posix_spawnp() and fork()+exec() of\n"
                 "the same COMMAND (default: sleep 100000), alternated in one process.\n"
                 "Modes: ns (namespaces, idle shim), plain (no namespaces, idle shim),\n"
                 "spawn (namespaces, a shim spawned per start). DIR must not exist.\n");
}

int main(int argc, char **argv)
{
    struct bench b;
    memset(&b, 0, sizeof b);
    b.count = 100;
    b.gap_ms = 20;
    const char *modes = "ns,plain,spawn";
    static char *default_cmd[] = {(char *)"sleep", (char *)"100000", NULL};
    b.argv = default_cmd;
    b.argc = 2;
    for (int i = 1; i < argc; i++) {
        bool val = i + 1 < argc;
        if (strcmp(argv[i], "--shim") == 0 && val) {
            b.shim = argv[++i];
        } else if (strcmp(argv[i], "--work") == 0 && val) {
            b.work = argv[++i];
        } else if (strcmp(argv[i], "--count") == 0 && val) {
            b.count = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--gap-ms") == 0 && val) {
            b.gap_ms = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--modes") == 0 && val) {
            modes = argv[++i];
        } else if (strcmp(argv[i], "--") == 0 && val) {
            b.argv = argv + i + 1;
            b.argc = (size_t)(argc - i - 1);
            break;
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (b.shim == NULL || b.work == NULL || b.count < 1 || b.count > BENCH_MAX_COUNT ||
        b.gap_ms < 0 || b.gap_ms > 10000) {
        usage(stderr);
        return 2;
    }
    if (mkdir(b.work, 0755) != 0) {
        fprintf(stderr, "mkdir %s: %s\n", b.work, strerror(errno));
        return 2;
    }
    ap_log_init("edge-start-bench", ap_log_level_from_env(AP_LOG_WARN), NULL);
    signal(SIGPIPE, SIG_IGN);
    uv_loop_init(&b.loop);
    double loads[3] = {0, 0, 0};
    if (getloadavg(loads, 3) == 3) {
        printf("loadavg_before=%.2f %.2f %.2f\n", loads[0], loads[1], loads[2]);
    }
    int rc = 0;
    if (strstr(modes, "ns") != NULL) {
        rc |= run_mode(&b, "ns", false, false);
    }
    if (strstr(modes, "plain") != NULL) {
        rc |= run_mode(&b, "plain", true, false);
    }
    if (strstr(modes, "spawn") != NULL) {
        rc |= run_mode(&b, "spawn", false, true);
    }
    if (getloadavg(loads, 3) == 3) {
        printf("loadavg_after=%.2f %.2f %.2f\n", loads[0], loads[1], loads[2]);
    }
    uv_run(&b.loop, UV_RUN_NOWAIT);
    uv_loop_close(&b.loop);
    return rc;
}
