/* Unit tests for driver_process: real shims and workloads in a temporary data directory. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "ap/base.h"
#include "ap/err.h"
#include "ap/log.h"
#include "driver_process.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
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

/* Every wait in these tests is bounded by this many 10 ms steps (10 s). */
#define WAIT_STEPS 1000

/* The shim under test, built once for the whole run (or $AP_SHIM_BIN). */
static struct {
    char dir[64];
    char path[PATH_MAX];
    bool is_static;
    char marker[32]; /* argv[1] of this run's `sleep` workloads, to count them */
} shim;

#define EVENTS_MAX 256

struct fx {
    char root[64];
    char data[128];
    uv_loop_t loop;
    struct driver_process_config cfg;
    struct driver_process *d;
    struct driver_process_status events[EVENTS_MAX];
    size_t n_events;
    struct driver_process_status adopted[16];
    size_t n_adopted;
};

/* ------------------------------------------------------------------------ */
/* Helpers.                                                                  */

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* /proc/<pid>/cmdline with NULs, or -1. */
static ssize_t read_cmdline(int pid, char *buf, size_t size)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/cmdline", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    ssize_t n = read(fd, buf, size - 1);
    close(fd);
    if (n >= 0) {
        buf[n] = '\0';
    }
    return n;
}

/* State letter and parent of pid from /proc/<pid>/stat; false when gone. */
static bool proc_stat(int pid, char *state, int *ppid)
{
    char path[64];
    char buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return false;
    }
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) {
        return false;
    }
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (p == NULL) {
        return false;
    }
    return sscanf(p + 1, " %c %d", state, ppid) == 2;
}

/* Gone, or a zombie waiting for init to reap it: either way it runs nothing. */
static bool proc_gone(int pid)
{
    char st;
    int ppid;
    return !proc_stat(pid, &st, &ppid) || st == 'Z' || st == 'X';
}

static int proc_ppid(int pid)
{
    char st;
    int ppid = -1;
    proc_stat(pid, &st, &ppid);
    return ppid;
}

static bool wait_gone(int pid)
{
    for (int i = 0; i < WAIT_STEPS; i++) {
        if (proc_gone(pid)) {
            return true;
        }
        sleep_ms(10);
    }
    return false;
}

/* Live processes running exactly `sleep <marker>`. */
static int count_marker(void)
{
    int count = 0;
    DIR *dh = opendir("/proc");
    assert_non_null(dh);
    struct dirent *e;
    char want[64];
    int wl = snprintf(want, sizeof want, "sleep%c%s%c", 0, shim.marker, 0);
    while ((e = readdir(dh)) != NULL) {
        int pid = atoi(e->d_name);
        char buf[256];
        if (pid <= 0) {
            continue;
        }
        ssize_t n = read_cmdline(pid, buf, sizeof buf);
        if (n == wl && memcmp(buf, want, (size_t)wl) == 0 && !proc_gone(pid)) {
            count++;
        }
    }
    closedir(dh);
    return count;
}

/*
 * Wait (bounded) until count_marker() is n. A start returns once the exec is
 * past its point of no return, like posix_spawn; the kernel fills in the new
 * command line a moment later.
 */
static int wait_marker(int n)
{
    int c = count_marker();
    for (int i = 0; i < WAIT_STEPS && c != n; i++) {
        sleep_ms(10);
        c = count_marker();
    }
    return c;
}

/* Whether pid's command line is archipel-shim's and has an argument equal to arg. */
static bool shim_has_arg(int pid, const char *arg)
{
    char buf[8192];
    ssize_t n = read_cmdline(pid, buf, sizeof buf);
    if (n <= 0 || strstr(buf, "archipel-shim") == NULL) {
        return false;
    }
    for (ssize_t off = 0; off < n; off += (ssize_t)strlen(buf + off) + 1) {
        if (strcmp(buf + off, arg) == 0) {
            return true;
        }
    }
    return false;
}

/*
 * Live archipel-shim supervisors whose command line names dir (`--dir DIR`),
 * not counting their children (a namespace's init is a fork of its shim).
 */
static int shims_for(const char *dir)
{
    int pids[64];
    int n = 0;
    DIR *dh = opendir("/proc");
    assert_non_null(dh);
    struct dirent *e;
    while ((e = readdir(dh)) != NULL && n < 64) {
        int pid = atoi(e->d_name);
        if (pid > 0 && !proc_gone(pid) && shim_has_arg(pid, dir)) {
            pids[n++] = pid;
        }
    }
    closedir(dh);
    int count = 0;
    for (int i = 0; i < n; i++) {
        int parent = proc_ppid(pids[i]);
        bool nested = false;
        for (int j = 0; j < n; j++) {
            nested = nested || pids[j] == parent;
        }
        count += nested ? 0 : 1;
    }
    return count;
}

/* The pid of a live idle shim of the fixture's data dir (title "(idle)"), or 0. */
static int idle_shim(const char *inst_dir)
{
    int found = 0;
    DIR *dh = opendir("/proc");
    assert_non_null(dh);
    struct dirent *e;
    while ((e = readdir(dh)) != NULL && found == 0) {
        int pid = atoi(e->d_name);
        if (pid > 0 && !proc_gone(pid) && shim_has_arg(pid, inst_dir) &&
            shim_has_arg(pid, "(idle)")) {
            found = pid;
        }
    }
    closedir(dh);
    return found;
}

/* Who holds DIR/shim.lock (F_GETLK), 0 when nobody. */
static int lock_holder_of(const char *dir)
{
    char path[PATH_MAX + 16];
    int len = snprintf(path, sizeof path, "%s/shim.lock", dir);
    if (len < 0 || (size_t)len >= sizeof path) {
        return 0;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return 0;
    }
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    int rc = fcntl(fd, F_GETLK, &fl);
    close(fd);
    return rc == 0 && fl.l_type != F_UNLCK ? (int)fl.l_pid : 0;
}

static bool path_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* SIGKILL whatever this fixture left: shims of its data dir, then marked workloads. */
static void kill_leftovers(const char *root)
{
    for (int pass = 0; pass < 2; pass++) {
        DIR *dh = opendir("/proc");
        if (dh == NULL) {
            return;
        }
        struct dirent *e;
        while ((e = readdir(dh)) != NULL) {
            int pid = atoi(e->d_name);
            char buf[4096];
            if (pid <= 0 || pid == getpid()) {
                continue;
            }
            ssize_t n = read_cmdline(pid, buf, sizeof buf);
            if (n <= 0) {
                continue;
            }
            bool shim_of_ours = false;
            for (ssize_t off = 0; off < n; off += (ssize_t)strlen(buf + off) + 1) {
                if (strncmp(buf + off, root, strlen(root)) == 0) {
                    shim_of_ours = true;
                }
            }
            bool marked = pass == 1 && strcmp(buf, "sleep") == 0 &&
                          strcmp(buf + strlen(buf) + 1, shim.marker) == 0;
            if ((shim_of_ours && strstr(buf, "archipel-shim") != NULL) || marked) {
                kill(pid, SIGKILL);
                wait_gone(pid);
            }
        }
        closedir(dh);
    }
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static void rm_tree(const char *path)
{
    nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

static size_t file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (size_t)st.st_size : 0;
}

static void read_text(const char *path, char *buf, size_t size)
{
    buf[0] = '\0';
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return;
    }
    size_t n = fread(buf, 1, size - 1, f);
    buf[n] = '\0';
    fclose(f);
}

/* ------------------------------------------------------------------------ */
/* Fixture.                                                                  */

static void on_event(void *data, const struct driver_process_status *st)
{
    struct fx *f = data;
    if (f->n_events < EVENTS_MAX) {
        f->events[f->n_events++] = *st;
    }
}

static void on_adopt(void *data, const struct driver_process_status *st)
{
    struct fx *f = data;
    if (f->n_adopted < AP_ARRAY_LEN(f->adopted)) {
        f->adopted[f->n_adopted++] = *st;
    }
}

static void on_closed(void *data)
{
    *(bool *)data = true;
}

static void fx_open(struct fx *f)
{
    char errmsg[AP_ERRMSG_SIZE] = "";
    int rc = driver_process__new(&f->d, &f->cfg, errmsg);
    if (rc != 0) {
        print_message("driver_process__new: %s\n", errmsg);
    }
    assert_int_equal(rc, 0);
}

/* Free the driver without stopping anything, as a crashing daemon would. */
static void fx_close(struct fx *f)
{
    if (f->d == NULL) {
        return;
    }
    bool closed = false;
    driver_process__close(f->d, on_closed, &closed);
    f->d = NULL;
    for (int i = 0; i < 100 && !closed; i++) {
        uv_run(&f->loop, UV_RUN_NOWAIT);
    }
    assert_true(closed);
}

/* Let the driver's loop run for about ms (its timer refills the idle shims and polls). */
static void fx_run(struct fx *f, int ms)
{
    for (int i = 0; i < ms / 5; i++) {
        uv_run(&f->loop, UV_RUN_NOWAIT);
        sleep_ms(5);
    }
}

/* Wait (bounded) for an idle shim of the fixture other than not_pid, with its spare ready. */
static int fx_wait_idle(struct fx *f, int not_pid)
{
    char inst[PATH_MAX], spare[PATH_MAX + 32];
    snprintf(inst, sizeof inst, "%s/instances", f->data);
    for (int i = 0; i < WAIT_STEPS; i++) {
        int pid = idle_shim(inst);
        snprintf(spare, sizeof spare, "%s/.idle-%d", inst, pid);
        if (pid > 0 && pid != not_pid && lock_holder_of(spare) == pid) {
            return pid;
        }
        uv_run(&f->loop, UV_RUN_NOWAIT);
        sleep_ms(10);
    }
    fail_msg("no idle shim in %s", inst);
    return 0;
}

static int fx_setup(void **state)
{
    struct fx *f = ap_calloc(1, sizeof *f);
    assert_non_null(f);
    snprintf(f->root, sizeof f->root, "/tmp/ap-dp-XXXXXX");
    assert_non_null(mkdtemp(f->root));
    snprintf(f->data, sizeof f->data, "%s/data", f->root);
    assert_int_equal(mkdir(f->data, 0755), 0);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    f->cfg.loop = &f->loop;
    f->cfg.data_dir = f->data;
    f->cfg.shim_path = shim.path;
    f->cfg.cgroup_parent = ""; /* the host's cgroups are left alone, see test_fake_cgroup */
    f->cfg.poll_ms = 20;
    f->cfg.stop_grace_ms = 3000;
    f->cfg.on_event = on_event;
    f->cfg.data = f;
    *state = f;
    return 0;
}

static int fx_teardown(void **state)
{
    struct fx *f = *state;
    if (f->d != NULL) {
        fx_close(f);
    }
    kill_leftovers(f->root);
    uv_run(&f->loop, UV_RUN_NOWAIT);
    uv_loop_close(&f->loop);
    rm_tree(f->root);
    ap_free(f);
    return 0;
}

static int group_setup(void **state)
{
    (void)state;
    ap_log_init("test", ap_log_level_from_env(AP_LOG_OFF), NULL);
    snprintf(shim.marker, sizeof shim.marker, "%d", 1000000 + (int)getpid());
    const char *env = getenv("AP_SHIM_BIN");
    if (env != NULL && env[0] != '\0') {
        snprintf(shim.path, sizeof shim.path, "%s", env);
        return 0;
    }
    /* Build the shim by hand from its source next to this file. */
    snprintf(shim.dir, sizeof shim.dir, "/tmp/ap-dp-shim-XXXXXX");
    if (mkdtemp(shim.dir) == NULL) {
        return -1;
    }
    snprintf(shim.path, sizeof shim.path, "%s/archipel-shim", shim.dir);
    char src[PATH_MAX];
    const char *here = __FILE__;
    const char *slash = strrchr(here, '/');
    snprintf(src, sizeof src, "%.*s/../../edge/shim/main.c",
             slash != NULL ? (int)(slash - here) : 1, slash != NULL ? here : ".");
    char cmd[3 * PATH_MAX];
    static const char flags[] = "-std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -Werror";
    snprintf(cmd, sizeof cmd, "cc %s -static -o '%s' '%s' 2>/dev/null", flags, shim.path, src);
    shim.is_static = system(cmd) == 0;
    if (!shim.is_static) {
        snprintf(cmd, sizeof cmd, "cc %s -o '%s' '%s'", flags, shim.path, src);
        if (system(cmd) != 0) {
            print_message("cannot build the shim from %s\n", src);
            return -1;
        }
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    if (shim.dir[0] != '\0') {
        rm_tree(shim.dir);
    }
    return 0;
}

static struct driver_process_spec spec_of(const char *const *argv, size_t argc,
                                          enum driver_process_restart restart)
{
    struct driver_process_spec s;
    memset(&s, 0, sizeof s);
    s.name = "test";
    s.argv = argv;
    s.argc = argc;
    s.restart = restart;
    return s;
}

/* What a start's callback reported. */
struct start_result {
    bool done;
    int rc;
    int calls;
    char id[DRIVER_PROCESS_ID_MAX + 1];
    struct driver_process_status st;
};

static void on_started(void *data, const char *id, int rc, const struct driver_process_status *st)
{
    struct start_result *res = data;
    res->calls++;
    res->done = true;
    res->rc = rc;
    ap_strlcpy(res->id, id, sizeof res->id);
    if (st != NULL) {
        res->st = *st;
    }
}

/*
 * Start and run the loop until the start's callback fired (bounded): the
 * error start returned, else the callback's rc. *st (may be NULL) gets the
 * status it reported.
 */
static int start_wait(struct fx *f, const char *id, const struct driver_process_spec *spec,
                      struct driver_process_status *st)
{
    struct start_result res;
    memset(&res, 0, sizeof res);
    int rc = driver_process__start(f->d, id, spec, on_started, &res);
    if (rc != 0) {
        assert_false(res.done); /* the async contract: no callback after an error */
        return rc;
    }
    for (int i = 0; i < WAIT_STEPS && !res.done; i++) {
        uv_run(&f->loop, UV_RUN_ONCE);
    }
    assert_true(res.done);
    assert_int_equal(res.calls, 1);
    assert_string_equal(res.id, id);
    if (res.rc == 0) {
        assert_string_equal(res.st.id, id);
        assert_int_equal(res.st.state, DRIVER_PROCESS_RUNNING);
        assert_true(res.st.alive);
    }
    if (st != NULL) {
        *st = res.st;
    }
    return res.rc;
}

static void start_ok(struct fx *f, const char *id, const struct driver_process_spec *spec)
{
    int rc = start_wait(f, id, spec, NULL);
    if (rc != 0) {
        print_message("start %s: %s\n", id, driver_process__errmsg(f->d));
    }
    assert_int_equal(rc, 0);
}

static void status_ok(struct fx *f, const char *id, struct driver_process_status *st)
{
    int rc = driver_process__status(f->d, id, st);
    if (rc != 0) {
        print_message("status %s: %s\n", id, driver_process__errmsg(f->d));
    }
    assert_int_equal(rc, 0);
}

/* Poll the status until state and liveness match; fails after the bound. */
static void wait_state(struct fx *f, const char *id, enum driver_process_state state, bool alive,
                       struct driver_process_status *st)
{
    for (int i = 0; i < WAIT_STEPS; i++) {
        status_ok(f, id, st);
        if (st->state == state && st->alive == alive) {
            return;
        }
        sleep_ms(10);
    }
    print_message("instance %s: want %s alive=%d, have %s alive=%d error='%s'\n", id,
                  driver_process__state_name(state), alive, driver_process__state_name(st->state),
                  st->alive, st->error);
    fail();
}

static void start_sleeper(struct fx *f, const char *id, enum driver_process_restart restart,
                          struct driver_process_status *st)
{
    const char *argv[] = {"sleep", shim.marker};
    struct driver_process_spec spec = spec_of(argv, 2, restart);
    start_ok(f, id, &spec);
    status_ok(f, id, st);
    assert_int_equal(st->state, DRIVER_PROCESS_RUNNING);
    assert_true(st->alive);
    assert_true(st->shim_pid > 0);
    assert_true(st->workload_pid > 0);
}

/* ------------------------------------------------------------------------ */
/* Tests.                                                                    */

static void test_capabilities(void **state)
{
    struct fx *f = *state;
    fx_open(f);
    struct driver_process_caps caps;
    driver_process__capabilities(f->d, &caps);
    assert_int_equal(caps.namespaces, caps.pid_ns && caps.mount_ns && caps.uts_ns);
    /* Cgroups disabled by this fixture's config: reported, not guessed. */
    assert_false(caps.cgroup_v2);
    assert_false(caps.memory_limit);
    assert_false(caps.cpu_limit);
    assert_string_equal(caps.cgroup_parent, "");
    assert_non_null(strstr(caps.detail, "disabled"));
    json_t *j = driver_process__caps_to_json(&caps);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "driver")), "process");
    assert_true(json_is_boolean(json_object_get(j, "pid_ns")));
    assert_true(json_is_null(json_object_get(j, "cgroup_parent")));
    char *text = json_dumps(j, JSON_COMPACT);
    print_message("capabilities: %s\n", text);
    free(text);
    json_decref(j);
}

static void test_start_stop(void **state)
{
    struct fx *f = *state;
    fx_open(f);
    struct driver_process_status st;
    start_sleeper(f, "web", DRIVER_PROCESS_RESTART_ALWAYS, &st);
    assert_int_equal(wait_marker(1), 1);
    /* The workload belongs to the shim (directly, or under its namespace's init), not to us. */
    int parent = proc_ppid(st.workload_pid);
    assert_true(parent == st.shim_pid || proc_ppid(parent) == st.shim_pid);
    assert_int_equal(proc_ppid(st.child_pid), st.shim_pid);
    assert_int_not_equal(parent, getpid());
    /* The shim is in a session of its own: the daemon's process group and terminal leave it be. */
    assert_int_equal(getsid(st.shim_pid), st.shim_pid);
    assert_int_not_equal(getsid(st.shim_pid), getsid(0));
    /* ps shows which instance it supervises, and there is one supervisor for it. */
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/instances/web", f->data);
    assert_true(shim_has_arg(st.shim_pid, dir));
    assert_int_equal(shims_for(dir), 1);
    int shim_pid = st.shim_pid;
    int workload = st.workload_pid;

    assert_int_equal(driver_process__stop(f->d, "web"), 0);
    wait_state(f, "web", DRIVER_PROCESS_STOPPED, false, &st);
    /* Ended by the forwarded SIGTERM, not by the SIGKILL after the grace period. */
    assert_int_equal(st.signal, SIGTERM);
    assert_int_equal(st.shim_pid, 0);
    assert_int_equal(st.workload_pid, 0);
    assert_true(wait_gone(workload));
    assert_true(wait_gone(shim_pid));
    assert_int_equal(wait_marker(0), 0);
    /* Stopping again is harmless. */
    assert_int_equal(driver_process__stop(f->d, "web"), 0);
}

static void test_restart_always_backs_off(void **state)
{
    struct fx *f = *state;
    fx_open(f);
    const char *argv[] = {"sh", "-c", "exit 3"};
    struct driver_process_spec spec = spec_of(argv, 3, DRIVER_PROCESS_RESTART_ALWAYS);
    int64_t t0 = now_ms();
    start_ok(f, "crashy", &spec);
    struct driver_process_status st;
    int64_t last_backoff = 0;
    int increases = 0;
    for (int i = 0; i < WAIT_STEPS; i++) {
        status_ok(f, "crashy", &st);
        assert_true(st.alive);
        if (st.backoff_ms > last_backoff) {
            /* docs/workloads.md: 100 ms, doubling. */
            assert_int_equal(st.backoff_ms, last_backoff == 0 ? 100 : last_backoff * 2);
            last_backoff = st.backoff_ms;
            increases++;
        }
        assert_true(st.backoff_ms >= last_backoff);
        if (st.restarts >= 3) {
            break;
        }
        sleep_ms(10);
    }
    assert_true(st.restarts >= 3);
    assert_true(increases >= 2);
    /* Three restarts cannot come sooner than 100 + 200 + 400 ms of back-off. */
    assert_true(now_ms() - t0 >= 700);
    assert_true(st.exit_code == 3 || st.state == DRIVER_PROCESS_RUNNING);

    assert_int_equal(driver_process__stop(f->d, "crashy"), 0);
    wait_state(f, "crashy", DRIVER_PROCESS_STOPPED, false, &st);
    assert_true(st.restarts >= 3);
}

static void test_restart_on_failure(void **state)
{
    struct fx *f = *state;
    fx_open(f);
    const char *ok[] = {"sh", "-c", "exit 0"};
    struct driver_process_spec spec = spec_of(ok, 3, DRIVER_PROCESS_RESTART_ON_FAILURE);
    start_ok(f, "fine", &spec);
    struct driver_process_status st;
    wait_state(f, "fine", DRIVER_PROCESS_EXITED, false, &st);
    assert_int_equal(st.exit_code, 0);
    assert_int_equal(st.signal, 0);
    assert_int_equal(st.restarts, 0);

    const char *bad[] = {"sh", "-c", "exit 5"};
    spec = spec_of(bad, 3, DRIVER_PROCESS_RESTART_ON_FAILURE);
    start_ok(f, "failing", &spec);
    for (int i = 0; i < WAIT_STEPS; i++) {
        status_ok(f, "failing", &st);
        if (st.restarts >= 1) {
            break;
        }
        sleep_ms(10);
    }
    assert_true(st.restarts >= 1);
    assert_true(st.alive);
    assert_int_equal(driver_process__stop(f->d, "failing"), 0);
    wait_state(f, "failing", DRIVER_PROCESS_STOPPED, false, &st);
}

static void test_restart_never(void **state)
{
    struct fx *f = *state;
    fx_open(f);
    const char *code[] = {"sh", "-c", "exit 7"};
    struct driver_process_spec spec = spec_of(code, 3, DRIVER_PROCESS_RESTART_NEVER);
    start_ok(f, "once", &spec);
    struct driver_process_status st;
    wait_state(f, "once", DRIVER_PROCESS_EXITED, false, &st);
    assert_int_equal(st.exit_code, 7);
    assert_int_equal(st.restarts, 0);

    const char *killed[] = {"sh", "-c", "kill -KILL $$"};
    spec = spec_of(killed, 3, DRIVER_PROCESS_RESTART_NEVER);
    start_ok(f, "killed", &spec);
    wait_state(f, "killed", DRIVER_PROCESS_EXITED, false, &st);
    assert_int_equal(st.exit_code, -1);
    assert_int_equal(st.signal, SIGKILL);
}

static void test_logs_capped(void **state)
{
    struct fx *f = *state;
    f->cfg.log_max_bytes = 1024 * 1024;
    fx_open(f);
    /* seq 1 500000 prints 3388895 bytes: about 3.2 MiB. */
    const char *argv[] = {"sh", "-c", "seq 1 500000; echo done-err >&2"};
    struct driver_process_spec spec = spec_of(argv, 3, DRIVER_PROCESS_RESTART_NEVER);
    start_ok(f, "chatty", &spec);
    struct driver_process_status st;
    wait_state(f, "chatty", DRIVER_PROCESS_EXITED, false, &st);
    assert_int_equal(st.exit_code, 0);

    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/instances/chatty/stdout.log", f->data);
    assert_int_equal(file_size(path), 3388895 - 3 * 1024 * 1024);
    snprintf(path, sizeof path, "%s/instances/chatty/stdout.log.1", f->data);
    assert_int_equal(file_size(path), 1024 * 1024);
    snprintf(path, sizeof path, "%s/instances/chatty/stdout.log.2", f->data);
    assert_int_equal(file_size(path), 0);

    char *buf;
    size_t len;
    assert_int_equal(driver_process__logs(f->d, "chatty", DRIVER_PROCESS_STDOUT, 14, &buf, &len),
                     0);
    assert_int_equal(len, 14);
    assert_string_equal(buf, "499999\n500000\n");
    ap_free(buf);

    /* A tail longer than the current file continues seamlessly into the rotated one. */
    size_t want = 1200 * 1024;
    assert_int_equal(driver_process__logs(f->d, "chatty", DRIVER_PROCESS_STDOUT, want, &buf, &len),
                     0);
    assert_int_equal(len, want);
    char *p = strchr(buf, '\n');
    assert_non_null(p);
    long prev = -1;
    size_t lines = 0;
    while (p != NULL && p[1] != '\0') {
        char *end;
        long v = strtol(p + 1, &end, 10);
        assert_int_equal(*end, '\n');
        if (prev >= 0) {
            assert_int_equal(v, prev + 1);
        }
        prev = v;
        lines++;
        p = end;
    }
    assert_int_equal(prev, 500000);
    assert_true(lines > 170000);
    ap_free(buf);
    /* Asking for more than is kept gives both files whole. */
    assert_int_equal(
        driver_process__logs(f->d, "chatty", DRIVER_PROCESS_STDOUT, 4 << 20, &buf, &len), 0);
    assert_int_equal(len, 3388895 - 2 * 1024 * 1024);
    ap_free(buf);

    assert_int_equal(driver_process__logs(f->d, "chatty", DRIVER_PROCESS_STDERR, 100, &buf, &len),
                     0);
    assert_string_equal(buf, "done-err\n");
    ap_free(buf);

    assert_int_equal(driver_process__logs(f->d, "nobody", DRIVER_PROCESS_STDOUT, 10, &buf, &len),
                     AP_ENOTFOUND);
}

/* Run the shim by hand on a directory and wait for its first process (it detaches). */
static void run_shim_on(const char *dir)
{
    char *argv[] = {shim.path, (char *)"--dir", (char *)dir, NULL};
    pid_t pid;
    assert_int_equal(posix_spawn(&pid, shim.path, NULL, NULL, argv, environ), 0);
    int wst;
    assert_int_equal(waitpid(pid, &wst, 0), pid);
}

static void test_adopt_after_daemon_restart(void **state)
{
    struct fx *f = *state;
    fx_open(f);
    struct driver_process_status st;
    start_sleeper(f, "survivor", DRIVER_PROCESS_RESTART_ALWAYS, &st);
    int shim_pid = st.shim_pid;
    int workload = st.workload_pid;

    char inst[PATH_MAX];
    snprintf(inst, sizeof inst, "%s/instances", f->data);
    int idle = fx_wait_idle(f, 0);

    /* The daemon goes away without stopping anything; a new one takes over the same dir. */
    fx_close(f);
    assert_false(proc_gone(workload));
    /* Its idle shim saw its control socket close: it leaves, spare directory and all. */
    assert_true(wait_gone(idle));
    char spare[PATH_MAX + 32];
    snprintf(spare, sizeof spare, "%s/.idle-%d", inst, idle);
    for (int i = 0; i < WAIT_STEPS && path_exists(spare); i++) {
        sleep_ms(10);
    }
    assert_false(path_exists(spare));
    fx_open(f);
    assert_int_equal(driver_process__adopt_all(f->d, on_adopt, f), 1);
    assert_int_equal(f->n_adopted, 1);
    assert_string_equal(f->adopted[0].id, "survivor");
    assert_true(f->adopted[0].alive);
    assert_int_equal(f->adopted[0].state, DRIVER_PROCESS_RUNNING);
    assert_int_equal(f->adopted[0].shim_pid, shim_pid);
    assert_int_equal(f->adopted[0].workload_pid, workload);
    char sdir[PATH_MAX + 16];
    snprintf(sdir, sizeof sdir, "%s/survivor", inst);
    assert_int_equal(shims_for(sdir), 1);

    /* Never a duplicate: a second start is refused and one workload runs. */
    const char *argv[] = {"sleep", shim.marker};
    struct driver_process_spec spec = spec_of(argv, 2, DRIVER_PROCESS_RESTART_ALWAYS);
    assert_int_equal(start_wait(f, "survivor", &spec, NULL), AP_EEXIST);
    assert_non_null(strstr(driver_process__errmsg(f->d), "already running"));
    assert_int_equal(count_marker(), 1);
    status_ok(f, "survivor", &st);
    assert_int_equal(st.shim_pid, shim_pid);

    /* Even a shim started behind the driver's back leaves at once: the instance's lock is held. */
    char dir[PATH_MAX], log[PATH_MAX + 16], text[8192] = "";
    snprintf(dir, sizeof dir, "%s/instances/survivor", f->data);
    snprintf(log, sizeof log, "%s/shim.log", dir);
    run_shim_on(dir);
    for (int i = 0; i < WAIT_STEPS && strstr(text, "lock_failed") == NULL; i++) {
        sleep_ms(10);
        read_text(log, text, sizeof text);
    }
    assert_non_null(strstr(text, "another shim runs this instance"));
    sleep_ms(50);
    status_ok(f, "survivor", &st);
    assert_int_equal(st.state, DRIVER_PROCESS_RUNNING);
    assert_int_equal(st.shim_pid, shim_pid);
    assert_int_equal(count_marker(), 1);

    /* The adopted instance is followed: its stop shows up as an event. */
    assert_int_equal(driver_process__stop(f->d, "survivor"), 0);
    for (int i = 0; i < WAIT_STEPS; i++) {
        if (f->n_events > 0 && !f->events[f->n_events - 1].alive) {
            break;
        }
        uv_run(&f->loop, UV_RUN_ONCE);
    }
    assert_true(f->n_events > 0);
    assert_int_equal(f->events[f->n_events - 1].state, DRIVER_PROCESS_STOPPED);
    assert_false(f->events[f->n_events - 1].alive);
    assert_true(wait_gone(workload));
}

static void kill_shim_case(struct fx *f)
{
    fx_open(f);
    struct driver_process_status st;
    start_sleeper(f, "victim", DRIVER_PROCESS_RESTART_ALWAYS, &st);
    int workload = st.workload_pid;
    assert_int_equal(kill(st.shim_pid, SIGKILL), 0);
    /* PR_SET_PDEATHSIG: the workload does not outlive its shim. */
    assert_true(wait_gone(workload));
    assert_int_equal(count_marker(), 0);

    fx_close(f);
    fx_open(f);
    assert_int_equal(driver_process__adopt_all(f->d, on_adopt, f), 1);
    assert_false(f->adopted[0].alive);
    assert_int_equal(f->adopted[0].state, DRIVER_PROCESS_LOST);
    assert_int_equal(f->adopted[0].workload_pid, 0);
    assert_non_null(strstr(f->adopted[0].error, "gone"));

    /* The daemon restarts it per policy: exactly one copy again. */
    start_sleeper(f, "victim", DRIVER_PROCESS_RESTART_ALWAYS, &st);
    assert_int_equal(wait_marker(1), 1);
    assert_int_equal(driver_process__stop(f->d, "victim"), 0);
    wait_state(f, "victim", DRIVER_PROCESS_STOPPED, false, &st);
    assert_int_equal(wait_marker(0), 0);
}

static void test_kill_shim_namespaces(void **state)
{
    kill_shim_case(*state);
}

static void test_kill_shim_plain(void **state)
{
    struct fx *f = *state;
    f->cfg.no_namespaces = true;
    kill_shim_case(f);
    struct driver_process_status st;
    status_ok(f, "victim", &st);
    assert_false(st.isolation.pid_ns);
    assert_false(st.isolation.mount_ns);
}

static int count_lines(const char *text)
{
    int n = 0;
    for (const char *p = text; (p = strchr(p, '\n')) != NULL; p++) {
        n++;
    }
    return n;
}

static void test_namespaces(void **state)
{
    struct fx *f = *state;
    fx_open(f);
    struct driver_process_caps caps;
    driver_process__capabilities(f->d, &caps);
    if (!caps.namespaces) {
        print_message("namespaces not allowed here (%s): skipped\n", caps.detail);
        skip();
    }
    char script[128];
    snprintf(script, sizeof script,
             "echo pid=$$; cat /proc/sys/kernel/hostname; cat /proc/1/comm; exec sleep %s",
             shim.marker);
    const char *argv[] = {"sh", "-c", script};
    struct driver_process_spec spec = spec_of(argv, 3, DRIVER_PROCESS_RESTART_NEVER);
    spec.name = "web-1";
    start_ok(f, "nsd", &spec);
    struct driver_process_status st;
    status_ok(f, "nsd", &st);
    assert_true(st.isolation.pid_ns);
    assert_true(st.isolation.mount_ns);
    assert_true(st.isolation.uts_ns);
    char path[PATH_MAX];
    char text[256] = "";
    snprintf(path, sizeof path, "%s/instances/nsd/stdout.log", f->data);
    for (int i = 0; i < WAIT_STEPS && count_lines(text) < 3; i++) {
        sleep_ms(10);
        read_text(path, text, sizeof text);
    }
    /*
     * pid 2: the namespace's init is 1. The host name is the instance's own,
     * and /proc is the namespace's (its pid 1 is the shim's init), even though
     * this start came right after the driver spawned its idle shim.
     */
    char want[128];
    const char *base = strrchr(shim.path, '/');
    base = base != NULL ? base + 1 : shim.path;
    snprintf(want, sizeof want, "pid=2\nweb-1\n%.15s\n", base); /* comm: 15 bytes at most */
    assert_string_equal(text, want);
    char mine[64], theirs[64];
    snprintf(path, sizeof path, "/proc/%d/ns/pid", st.workload_pid);
    ssize_t n = readlink(path, theirs, sizeof theirs - 1);
    assert_true(n > 0);
    theirs[n] = '\0';
    n = readlink("/proc/self/ns/pid", mine, sizeof mine - 1);
    assert_true(n > 0);
    mine[n] = '\0';
    assert_string_not_equal(mine, theirs);
    /* The script execs sleep right after printing: give it the time to get there. */
    for (int i = 0; i < WAIT_STEPS && count_marker() == 0; i++) {
        sleep_ms(10);
    }
    assert_int_equal(wait_marker(1), 1);
    assert_int_equal(driver_process__stop(f->d, "nsd"), 0);
    wait_state(f, "nsd", DRIVER_PROCESS_STOPPED, false, &st);
}

static void test_bad_spec_files(void **state)
{
    struct fx *f = *state;
    fx_open(f);
    static char big[300 * 1024];
    memset(big, ' ', sizeof big - 1);
    big[0] = '{';
    big[sizeof big - 2] = '}';
    static const struct {
        const char *text;
        const char *want;
    } cases[] = {
        {"not json", "expected '{'"},
        {"", "empty file"},
        {"{\"version\":1,\"id\":\"x\",\"restart\":\"never\"}", "missing field 'argv'"},
        {"{\"version\":1,\"id\":\"x\",\"argv\":[],\"restart\":\"never\"}", "argv[0]"},
        {"{\"version\":1,\"id\":\"x\",\"argv\":[\"true\"],\"restart\":\"sometimes\"}",
         "want always, on-failure or never"},
        {"{\"version\":2,\"id\":\"x\",\"argv\":[\"true\"],\"restart\":\"never\"}", "not supported"},
        {"{\"version\":1,\"id\":\"x\",\"argv\":[\"true\"],\"restart\":\"never\",\"bogus\":1}",
         "unknown field 'bogus'"},
        {"{\"version\":1,\"id\":\"x\",\"argv\":[\"a\\u0000b\"],\"restart\":\"never\"}",
         "NUL character"},
        {"{\"version\":1,\"version\":1}", "duplicate field 'version'"},
        {"{\"version\":1,\"id\":\"x\",\"argv\":[\"true\"],\"restart\":\"never\"} x",
         "trailing bytes"},
        {"{\"version\":1,\"id\":\"../x\",\"argv\":[\"true\"],\"restart\":\"never\"}", "field 'id'"},
        {"{\"version\":1,\"id\":\"x\",\"argv\":[\"true\"],\"restart\":\"never\",\"memory_mb\":-1}",
         "outside"},
        {big, "more than the"},
    };
    for (size_t i = 0; i < AP_ARRAY_LEN(cases); i++) {
        char id[16], dir[PATH_MAX], path[PATH_MAX + 32];
        snprintf(id, sizeof id, "bad%zu", i);
        snprintf(dir, sizeof dir, "%s/instances/%s", f->data, id);
        assert_int_equal(mkdir(dir, 0755), 0);
        snprintf(path, sizeof path, "%s/spec.json", dir);
        write_text(path, cases[i].text);
        run_shim_on(dir);
        struct driver_process_status st;
        wait_state(f, id, DRIVER_PROCESS_FAILED, false, &st);
        if (strstr(st.error, cases[i].want) == NULL) {
            print_message("case %zu: error '%s' lacks '%s'\n", i, st.error, cases[i].want);
            fail();
        }
        assert_non_null(strstr(st.error, "spec.json: "));
    }
}

static void test_start_errors(void **state)
{
    struct fx *f = *state;
    fx_open(f);
    const char *argv[] = {"sleep", shim.marker};
    struct driver_process_spec spec = spec_of(argv, 2, DRIVER_PROCESS_RESTART_NEVER);
    assert_int_equal(start_wait(f, "../x", &spec, NULL), AP_EINVAL);
    assert_non_null(strstr(driver_process__errmsg(f->d), "invalid instance id"));
    assert_int_equal(start_wait(f, "", &spec, NULL), AP_EINVAL);
    /* Names starting with '.' are the idle shims' spare directories. */
    assert_int_equal(start_wait(f, ".idle-1", &spec, NULL), AP_EINVAL);

    struct driver_process_spec bad = spec;
    bad.argc = 0;
    assert_int_equal(start_wait(f, "a", &bad, NULL), AP_EINVAL);
    const char *env[] = {"NOEQUALS"};
    bad = spec;
    bad.env = env;
    bad.n_env = 1;
    assert_int_equal(start_wait(f, "a", &bad, NULL), AP_EINVAL);
    assert_non_null(strstr(driver_process__errmsg(f->d), "env[0]"));
    bad = spec;
    bad.cwd = "relative";
    assert_int_equal(start_wait(f, "a", &bad, NULL), AP_EINVAL);
    bad = spec;
    bad.restart = (enum driver_process_restart)7;
    assert_int_equal(start_wait(f, "a", &bad, NULL), AP_EINVAL);
    bad = spec;
    bad.memory_mb = -1;
    assert_int_equal(start_wait(f, "a", &bad, NULL), AP_EINVAL);

    /* A command that cannot run fails the start and leaves a "failed" record. */
    const char *missing[] = {"/nonexistent/archipel-test-cmd"};
    bad = spec_of(missing, 1, DRIVER_PROCESS_RESTART_ALWAYS);
    assert_int_equal(start_wait(f, "nocmd", &bad, NULL), AP_EINVAL);
    assert_non_null(strstr(driver_process__errmsg(f->d), "exec '/nonexistent/archipel-test-cmd'"));
    assert_non_null(strstr(driver_process__errmsg(f->d), "No such file"));
    struct driver_process_status st;
    wait_state(f, "nocmd", DRIVER_PROCESS_FAILED, false, &st);
    assert_non_null(strstr(st.error, "exec"));
    const char *nopath[] = {"archipel-no-such-command-anywhere"};
    bad = spec_of(nopath, 1, DRIVER_PROCESS_RESTART_NEVER);
    assert_int_equal(start_wait(f, "nopath", &bad, NULL), AP_EINVAL);
    bad = spec;
    bad.cwd = "/nonexistent-dir";
    assert_int_equal(start_wait(f, "nocwd", &bad, NULL), AP_EINVAL);
    assert_non_null(strstr(driver_process__errmsg(f->d), "chdir '/nonexistent-dir'"));

    assert_int_equal(driver_process__status(f->d, "nobody", &st), AP_ENOTFOUND);
    assert_int_equal(driver_process__stop(f->d, "nobody"), AP_ENOTFOUND);
    assert_int_equal(driver_process__status(f->d, "a/b", &st), AP_EINVAL);

    /* remove: refused while running, then deletes everything. */
    start_sleeper(f, "tmp", DRIVER_PROCESS_RESTART_NEVER, &st);
    assert_int_equal(driver_process__remove(f->d, "tmp"), AP_EBUSY);
    assert_int_equal(driver_process__stop(f->d, "tmp"), 0);
    wait_state(f, "tmp", DRIVER_PROCESS_STOPPED, false, &st);
    assert_int_equal(driver_process__remove(f->d, "tmp"), 0);
    assert_int_equal(driver_process__status(f->d, "tmp", &st), AP_ENOTFOUND);
    assert_int_equal(driver_process__remove(f->d, "tmp"), AP_ENOTFOUND);
}

static void test_corrupt_status(void **state)
{
    struct fx *f = *state;
    fx_open(f);
    char dir[PATH_MAX], path[PATH_MAX + 32];
    snprintf(dir, sizeof dir, "%s/instances/junk", f->data);
    assert_int_equal(mkdir(dir, 0755), 0);
    snprintf(path, sizeof path, "%s/status.json", dir);
    write_text(path, "{\"version\":1,\"state\":");
    struct driver_process_status st;
    assert_int_equal(driver_process__status(f->d, "junk", &st), AP_ECORRUPT);
    assert_non_null(strstr(driver_process__errmsg(f->d), "status.json"));
    write_text(path, "{\"version\":1,\"state\":\"dancing\",\"isolation\":{}}");
    assert_int_equal(driver_process__status(f->d, "junk", &st), AP_ECORRUPT);
    assert_non_null(strstr(driver_process__errmsg(f->d), "field 'state'"));
    write_text(path, "{\"version\":1,\"state\":\"running\",\"shim_pid\":\"12\",\"isolation\":{}}");
    assert_int_equal(driver_process__status(f->d, "junk", &st), AP_ECORRUPT);
    assert_non_null(strstr(driver_process__errmsg(f->d), "field 'shim_pid'"));
    /* Adoption skips what it cannot read and carries on. */
    assert_int_equal(driver_process__adopt_all(f->d, on_adopt, f), 0);
    /* A directory without status reads as lost. */
    snprintf(dir, sizeof dir, "%s/instances/empty", f->data);
    assert_int_equal(mkdir(dir, 0755), 0);
    assert_int_equal(driver_process__status(f->d, "empty", &st), 0);
    assert_int_equal(st.state, DRIVER_PROCESS_LOST);
    assert_false(st.alive);
    /* An empty status.json (a write torn by power loss) also reads as lost, not corrupt. */
    snprintf(path, sizeof path, "%s/status.json", dir);
    write_text(path, "");
    assert_int_equal(driver_process__status(f->d, "empty", &st), 0);
    assert_int_equal(st.state, DRIVER_PROCESS_LOST);
    assert_non_null(strstr(st.error, "empty"));
}

/* A stand-in cgroup v2 group: the interface files exist, as in the real one. */
static void fake_group(const char *dir)
{
    char p[PATH_MAX + 32];
    assert_int_equal(mkdir(dir, 0755), 0);
    snprintf(p, sizeof p, "%s/cgroup.controllers", dir);
    write_text(p, "cpuset cpu io memory pids\n");
    snprintf(p, sizeof p, "%s/cgroup.subtree_control", dir);
    write_text(p, "cpu memory\n");
}

static void test_fake_cgroup(void **state)
{
    struct fx *f = *state;
    char cg[PATH_MAX], p[PATH_MAX + 64];

    /* No cgroup v2 anywhere above the parent: said so, and no limits. */
    snprintf(cg, sizeof cg, "%s/nocg/archipel", f->root);
    f->cfg.cgroup_parent = cg;
    fx_open(f);
    struct driver_process_caps caps;
    driver_process__capabilities(f->d, &caps);
    assert_false(caps.cgroup_v2);
    assert_false(caps.memory_limit);
    assert_non_null(strstr(caps.detail, "no cgroup v2 hierarchy"));
    fx_close(f);

    /* A nested parent (root/archipel/site-a), as one host running several sites uses. */
    snprintf(cg, sizeof cg, "%s/cg", f->root);
    fake_group(cg);
    snprintf(cg, sizeof cg, "%s/cg/archipel", f->root);
    fake_group(cg);
    snprintf(cg, sizeof cg, "%s/cg/archipel/site-a", f->root);
    fake_group(cg);
    snprintf(p, sizeof p, "%s/lim", cg);
    assert_int_equal(mkdir(p, 0755), 0);
    static const char *const knobs[] = {"memory.max", "cpu.max", "cgroup.procs"};
    for (size_t i = 0; i < AP_ARRAY_LEN(knobs); i++) {
        snprintf(p, sizeof p, "%s/lim/%s", cg, knobs[i]);
        write_text(p, "");
    }
    f->cfg.cgroup_parent = cg;
    fx_open(f);
    driver_process__capabilities(f->d, &caps);
    assert_true(caps.cgroup_v2);
    assert_true(caps.memory_limit);
    assert_true(caps.cpu_limit);
    assert_string_equal(caps.cgroup_parent, cg);

    const char *argv[] = {"sleep", shim.marker};
    struct driver_process_spec spec = spec_of(argv, 2, DRIVER_PROCESS_RESTART_NEVER);
    spec.cpu_millis = 250;
    spec.memory_mb = 64;
    start_ok(f, "lim", &spec);
    struct driver_process_status st;
    status_ok(f, "lim", &st);
    snprintf(p, sizeof p, "%s/lim", cg);
    assert_string_equal(st.isolation.cgroup, p);
    assert_true(st.isolation.memory_limit);
    assert_true(st.isolation.cpu_limit);
    char text[64];
    snprintf(p, sizeof p, "%s/lim/memory.max", cg);
    read_text(p, text, sizeof text);
    assert_string_equal(text, "67108864");
    snprintf(p, sizeof p, "%s/lim/cpu.max", cg);
    read_text(p, text, sizeof text);
    assert_string_equal(text, "25000 100000");
    /*
     * The workload joins by itself before exec ("0" is cgroupfs for "the
     * writing process"); with namespaces the shim then moves the namespace's
     * init in by pid, before its first status.json. The stand-in file keeps
     * the last write.
     */
    char status_path[PATH_MAX + 32];
    snprintf(status_path, sizeof status_path, "%s/instances/lim/status.json", f->data);
    for (int i = 0; i < WAIT_STEPS && !path_exists(status_path); i++) {
        sleep_ms(10);
    }
    snprintf(p, sizeof p, "%s/lim/cgroup.procs", cg);
    read_text(p, text, sizeof text);
    char want[16] = "0";
    if (st.isolation.pid_ns) {
        snprintf(want, sizeof want, "%d", st.child_pid);
    }
    assert_string_equal(text, want);
    assert_int_equal(driver_process__stop(f->d, "lim"), 0);
    wait_state(f, "lim", DRIVER_PROCESS_STOPPED, false, &st);

    /* Without namespaces there is no init: the workload's own "0" is all, before start returns. */
    fx_close(f);
    f->cfg.no_namespaces = true;
    fx_open(f);
    write_text(p, "");
    start_ok(f, "lim", &spec);
    read_text(p, text, sizeof text);
    assert_string_equal(text, "0");
    status_ok(f, "lim", &st);
    assert_true(st.isolation.memory_limit);
    assert_int_equal(driver_process__stop(f->d, "lim"), 0);
    wait_state(f, "lim", DRIVER_PROCESS_STOPPED, false, &st);
}

static void test_events(void **state)
{
    struct fx *f = *state;
    fx_open(f);
    const char *argv[] = {"sh", "-c", "sleep 0.2; exit 4"};
    struct driver_process_spec spec = spec_of(argv, 3, DRIVER_PROCESS_RESTART_NEVER);
    start_ok(f, "ev", &spec);
    int64_t deadline = now_ms() + 10000;
    while (now_ms() < deadline && (f->n_events == 0 || f->events[f->n_events - 1].alive)) {
        uv_run(&f->loop, UV_RUN_ONCE);
    }
    assert_true(f->n_events > 0);
    const struct driver_process_status *last = &f->events[f->n_events - 1];
    assert_string_equal(last->id, "ev");
    assert_int_equal(last->state, DRIVER_PROCESS_EXITED);
    assert_int_equal(last->exit_code, 4);
    assert_false(last->alive);
    json_t *j = driver_process__status_to_json(last);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "state")), "exited");
    assert_int_equal(json_integer_value(json_object_get(j, "exit_code")), 4);
    assert_true(json_is_null(json_object_get(j, "shim_pid")));
    json_decref(j);
    /* No more events once it ended. */
    size_t n = f->n_events;
    for (int i = 0; i < 5; i++) {
        uv_run(&f->loop, UV_RUN_ONCE);
    }
    assert_int_equal(f->n_events, n);
}

static void test_start_async(void **state)
{
    struct fx *f = *state;
    fx_open(f);
    const char *argv[] = {"sleep", shim.marker};
    struct driver_process_spec spec = spec_of(argv, 2, DRIVER_PROCESS_RESTART_NEVER);
    struct start_result res;
    memset(&res, 0, sizeof res);
    assert_int_equal(driver_process__start(f->d, "early", &spec, on_started, &res), 0);
    /* Handed over, not answered yet: "starting", alive, and never a second one. */
    assert_false(res.done);
    struct driver_process_status st;
    status_ok(f, "early", &st);
    assert_int_equal(st.state, DRIVER_PROCESS_STARTING);
    assert_true(st.alive);
    assert_true(st.shim_pid > 0);
    struct start_result res2;
    memset(&res2, 0, sizeof res2);
    assert_int_equal(driver_process__start(f->d, "early", &spec, on_started, &res2), AP_EEXIST);
    assert_non_null(strstr(driver_process__errmsg(f->d), "already starting"));
    assert_int_equal(driver_process__remove(f->d, "early"), AP_EBUSY);
    for (int i = 0; i < WAIT_STEPS && !res.done; i++) {
        uv_run(&f->loop, UV_RUN_ONCE);
    }
    assert_true(res.done);
    assert_int_equal(res.rc, 0);
    assert_int_equal(res.st.state, DRIVER_PROCESS_RUNNING);
    assert_int_equal(res.st.shim_pid, st.shim_pid);
    assert_false(res2.done);
    assert_int_equal(wait_marker(1), 1);

    /* A stop while it starts: the shim stops it as soon as it runs. */
    memset(&res, 0, sizeof res);
    assert_int_equal(driver_process__start(f->d, "brief", &spec, on_started, &res), 0);
    assert_int_equal(driver_process__stop(f->d, "brief"), 0);
    for (int i = 0; i < WAIT_STEPS && !res.done; i++) {
        uv_run(&f->loop, UV_RUN_ONCE);
    }
    assert_true(res.done);
    assert_int_equal(res.rc, 0);
    wait_state(f, "brief", DRIVER_PROCESS_STOPPED, false, &st);
    assert_int_equal(wait_marker(1), 1);

    /* The daemon goes away mid-start: cancelled here, started all the same, adopted next time. */
    memset(&res, 0, sizeof res);
    assert_int_equal(driver_process__start(f->d, "orphan", &spec, on_started, &res), 0);
    fx_close(f);
    assert_true(res.done);
    assert_int_equal(res.rc, AP_ECANCELED);
    assert_int_equal(wait_marker(2), 2);
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/instances/orphan", f->data);
    for (int i = 0; i < WAIT_STEPS && shims_for(dir) != 1; i++) {
        sleep_ms(10);
    }
    fx_open(f);
    f->n_adopted = 0;
    assert_int_equal(driver_process__adopt_all(f->d, on_adopt, f), 3);
    for (size_t i = 0; i < f->n_adopted; i++) {
        if (strcmp(f->adopted[i].id, "orphan") == 0) {
            assert_true(f->adopted[i].alive);
        }
    }
    assert_int_equal(shims_for(dir), 1);
    assert_int_equal(driver_process__stop(f->d, "orphan"), 0);
    assert_int_equal(driver_process__stop(f->d, "early"), 0);
    wait_state(f, "orphan", DRIVER_PROCESS_STOPPED, false, &st);
    wait_state(f, "early", DRIVER_PROCESS_STOPPED, false, &st);
    assert_int_equal(wait_marker(0), 0);
}

static void test_idle_shim(void **state)
{
    struct fx *f = *state;
    fx_open(f);
    char inst[PATH_MAX], spare[PATH_MAX + 32], dir[PATH_MAX + 32];
    snprintf(inst, sizeof inst, "%s/instances", f->data);
    /* One shim waits, prepared: its spare directory made and locked. */
    int idle = fx_wait_idle(f, 0);
    snprintf(spare, sizeof spare, "%s/.idle-%d", inst, idle);
    assert_int_equal(lock_holder_of(spare), idle);
    /* Spare directories are not instances. */
    assert_int_equal(driver_process__adopt_all(f->d, on_adopt, f), 0);

    /* A start hands it the instance: the same process, the spare renamed into place. */
    struct driver_process_status st;
    start_sleeper(f, "first", DRIVER_PROCESS_RESTART_NEVER, &st);
    assert_int_equal(st.shim_pid, idle);
    assert_false(path_exists(spare));
    snprintf(dir, sizeof dir, "%s/first", inst);
    assert_int_equal(lock_holder_of(dir), idle);
    assert_true(shim_has_arg(idle, dir));
    assert_false(shim_has_arg(idle, "(idle)"));
    assert_int_equal(wait_marker(1), 1);

    /* The loop spawns the next one. */
    int next = fx_wait_idle(f, idle);
    assert_int_not_equal(next, idle);
    start_sleeper(f, "second", DRIVER_PROCESS_RESTART_NEVER, &st);
    assert_int_equal(st.shim_pid, next);
    /* No loop iteration in between: no idle shim is ready, one is spawned for this start. */
    start_sleeper(f, "third", DRIVER_PROCESS_RESTART_NEVER, &st);
    assert_int_not_equal(st.shim_pid, next);
    assert_int_equal(wait_marker(3), 3);

    /* An idle shim killed while waiting: the start uses a fresh one instead. */
    int doomed = fx_wait_idle(f, 0);
    assert_int_equal(kill(doomed, SIGKILL), 0);
    assert_true(wait_gone(doomed));
    start_sleeper(f, "fourth", DRIVER_PROCESS_RESTART_NEVER, &st);
    assert_int_not_equal(st.shim_pid, doomed);
    assert_int_equal(wait_marker(4), 4);
    /* Its spare directory stays behind until a driver starts and sweeps it. */
    snprintf(spare, sizeof spare, "%s/.idle-%d", inst, doomed);
    assert_true(path_exists(spare));
    fx_close(f);
    fx_open(f);
    assert_false(path_exists(spare));
    assert_int_equal(driver_process__adopt_all(f->d, on_adopt, f), 4);
    static const char *const ids[] = {"first", "second", "third", "fourth"};
    for (size_t i = 0; i < AP_ARRAY_LEN(ids); i++) {
        assert_int_equal(driver_process__stop(f->d, ids[i]), 0);
    }
    for (size_t i = 0; i < AP_ARRAY_LEN(ids); i++) {
        wait_state(f, ids[i], DRIVER_PROCESS_STOPPED, false, &st);
    }
    assert_int_equal(wait_marker(0), 0);
}

/* A process that holds DIR/shim.lock until its pipe closes (a shim as the kernel sees it). */
static pid_t hold_lock(const char *dir, int *release_w)
{
    int p[2], ready[2];
    assert_int_equal(pipe(p), 0);
    assert_int_equal(pipe(ready), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(p[1]);
        close(ready[0]);
        char path[PATH_MAX + 16];
        snprintf(path, sizeof path, "%s/shim.lock", dir);
        int fd = open(path, O_RDWR | O_CREAT, 0644);
        struct flock fl;
        memset(&fl, 0, sizeof fl);
        fl.l_type = F_WRLCK;
        fl.l_whence = SEEK_SET;
        char ok = fd >= 0 && fcntl(fd, F_SETLK, &fl) == 0 ? 'y' : 'n';
        ssize_t w = write(ready[1], &ok, 1);
        (void)w;
        char c;
        ssize_t r = read(p[0], &c, 1);
        (void)r;
        _exit(0);
    }
    close(p[0]);
    close(ready[1]);
    char ok = 'n';
    assert_int_equal(read(ready[0], &ok, 1), 1);
    close(ready[0]);
    assert_int_equal(ok, 'y');
    *release_w = p[1];
    return pid;
}

static void test_lock_is_liveness(void **state)
{
    struct fx *f = *state;
    fx_open(f);
    char dir[PATH_MAX], path[PATH_MAX + 32];
    snprintf(dir, sizeof dir, "%s/instances/held", f->data);
    assert_int_equal(mkdir(dir, 0755), 0);
    /* An earlier shim's last word, and now a live holder of the lock that has not written yet. */
    snprintf(path, sizeof path, "%s/status.json", dir);
    write_text(path,
               "{\"version\":1,\"writer_pid\":1,\"shim_pid\":null,\"state\":\"stopped\","
               "\"signal\":15,\"isolation\":{\"pid_ns\":false,\"mount_ns\":false,"
               "\"uts_ns\":false,\"cgroup\":null,\"memory_limit\":false,\"cpu_limit\":false}}");
    int release;
    pid_t holder = hold_lock(dir, &release);
    struct driver_process_status st;
    status_ok(f, "held", &st);
    assert_true(st.alive);
    assert_int_equal(st.state, DRIVER_PROCESS_STARTING);
    assert_int_equal(st.shim_pid, holder);
    /* Never two: the lock alone refuses a start. */
    const char *argv[] = {"sleep", shim.marker};
    struct driver_process_spec spec = spec_of(argv, 2, DRIVER_PROCESS_RESTART_NEVER);
    assert_int_equal(start_wait(f, "held", &spec, NULL), AP_EEXIST);
    assert_int_equal(count_marker(), 0);
    assert_int_equal(driver_process__remove(f->d, "held"), AP_EBUSY);
    /* The holder is not a shim of ours: it is never signalled. */
    assert_int_equal(driver_process__stop(f->d, "held"), AP_EIO);
    assert_non_null(strstr(driver_process__errmsg(f->d), "not a shim"));
    assert_false(proc_gone(holder));
    /* The lock goes with the process, and the file speaks again. */
    close(release);
    assert_int_equal(waitpid(holder, NULL, 0), holder);
    status_ok(f, "held", &st);
    assert_false(st.alive);
    assert_int_equal(st.state, DRIVER_PROCESS_STOPPED);
    assert_int_equal(st.shim_pid, 0);
    /* And the instance can start now, in its existing directory. */
    start_sleeper(f, "held", DRIVER_PROCESS_RESTART_NEVER, &st);
    assert_int_equal(lock_holder_of(dir), st.shim_pid);
    assert_int_equal(driver_process__stop(f->d, "held"), 0);
    wait_state(f, "held", DRIVER_PROCESS_STOPPED, false, &st);
}

static void test_restart_in_place(void **state)
{
    struct fx *f = *state;
    fx_open(f);
    const char *argv[] = {"sh", "-c", "echo run; exec sleep 100000"};
    struct driver_process_spec spec = spec_of(argv, 3, DRIVER_PROCESS_RESTART_NEVER);
    struct driver_process_status st;
    for (int round = 0; round < 3; round++) {
        fx_run(f, 50); /* an idle shim, as between two API calls */
        start_ok(f, "again", &spec);
        /* What the shim answered, even before its status.json is on disk. */
        status_ok(f, "again", &st);
        assert_int_equal(st.state, DRIVER_PROCESS_RUNNING);
        assert_true(st.alive);
        assert_int_equal(st.restarts, 0);
        /* Stop once it has spoken (a SIGTERM before its echo would end it silently). */
        char out[PATH_MAX], got[256] = "";
        snprintf(out, sizeof out, "%s/instances/again/stdout.log", f->data);
        size_t want = 4 * (size_t)(round + 1);
        for (int i = 0; i < WAIT_STEPS && strlen(got) < want; i++) {
            sleep_ms(10);
            read_text(out, got, sizeof got);
        }
        assert_int_equal(strlen(got), want);
        assert_int_equal(driver_process__stop(f->d, "again"), 0);
        wait_state(f, "again", DRIVER_PROCESS_STOPPED, false, &st);
    }
    /* Logs and shim.log are appended across shims. */
    char path[PATH_MAX], text[8192];
    snprintf(path, sizeof path, "%s/instances/again/stdout.log", f->data);
    read_text(path, text, sizeof text);
    assert_string_equal(text, "run\nrun\nrun\n");
    snprintf(path, sizeof path, "%s/instances/again/shim.log", f->data);
    read_text(path, text, sizeof text);
    int starts = 0;
    for (const char *p = text; (p = strstr(p, "shim_start")) != NULL; p++) {
        starts++;
    }
    assert_int_equal(starts, 3);
    /* spec.json says what the last shim ran. */
    snprintf(path, sizeof path, "%s/instances/again/spec.json", f->data);
    read_text(path, text, sizeof text);
    assert_non_null(strstr(text, "\"argv\":[\"sh\",\"-c\",\"echo run; exec sleep 100000\"]"));
}

static void test_spawn_on_start(void **state)
{
    struct fx *f = *state;
    f->cfg.spawn_on_start = true;
    fx_open(f);
    char inst[PATH_MAX];
    snprintf(inst, sizeof inst, "%s/instances", f->data);
    fx_run(f, 100);
    assert_int_equal(idle_shim(inst), 0);
    struct driver_process_status st;
    start_sleeper(f, "solo", DRIVER_PROCESS_RESTART_NEVER, &st);
    fx_run(f, 100);
    assert_int_equal(idle_shim(inst), 0);
    assert_int_equal(driver_process__stop(f->d, "solo"), 0);
    wait_state(f, "solo", DRIVER_PROCESS_STOPPED, false, &st);
    /* Config bounds. */
    fx_close(f);
    f->cfg.spawn_on_start = false;
    f->cfg.idle_shims = DRIVER_PROCESS_IDLE_SHIMS_MAX + 1;
    char errmsg[AP_ERRMSG_SIZE];
    assert_int_equal(driver_process__new(&f->d, &f->cfg, errmsg), AP_EINVAL);
    assert_non_null(strstr(errmsg, "idle_shims"));
    f->d = NULL;
}

static long vmrss_kb(int pid)
{
    char path[64], line[256];
    long kb = 0;
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    while (fgets(line, sizeof line, fp) != NULL) {
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1) {
            break;
        }
    }
    fclose(fp);
    return kb;
}

/* Start latency is measured by edge-start-bench (docs/benchmarks.md); this checks the footprint. */
static void test_shim_footprint(void **state)
{
    struct fx *f = *state;
    fx_open(f);
    enum { N = 5 };
    long rss_max = 0;
    const char *argv[] = {"sleep", shim.marker};
    char inst[PATH_MAX];
    snprintf(inst, sizeof inst, "%s/instances", f->data);
    for (int i = 0; i < N; i++) {
        char id[16];
        snprintf(id, sizeof id, "fp%d", i);
        int idle = fx_wait_idle(f, 0);
        long rss = vmrss_kb(idle);
        rss_max = rss > rss_max ? rss : rss_max;
        struct driver_process_spec spec = spec_of(argv, 2, DRIVER_PROCESS_RESTART_NEVER);
        start_ok(f, id, &spec);
        struct driver_process_status st;
        status_ok(f, id, &st);
        assert_int_equal(st.shim_pid, idle);
        rss = vmrss_kb(st.shim_pid);
        rss_max = rss > rss_max ? rss : rss_max;
    }
    for (int i = 0; i < N; i++) {
        char id[16];
        snprintf(id, sizeof id, "fp%d", i);
        assert_int_equal(driver_process__stop(f->d, id), 0);
    }
    for (int i = 0; i < N; i++) {
        char id[16];
        snprintf(id, sizeof id, "fp%d", i);
        struct driver_process_status st;
        wait_state(f, id, DRIVER_PROCESS_STOPPED, false, &st);
    }
    print_message("shim VmRSS max %ld kB (idle and running, %s build)\n", rss_max,
                  shim.is_static ? "static" : "prebuilt or dynamic");
    assert_true(rss_max > 0);
    if (shim.is_static) {
        /* The benchmark budget: at most 1 MiB resident per shim. */
        assert_true(rss_max <= 1024);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_capabilities, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_start_stop, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_restart_always_backs_off, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_restart_on_failure, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_restart_never, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_logs_capped, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_adopt_after_daemon_restart, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_kill_shim_namespaces, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_kill_shim_plain, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_namespaces, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_bad_spec_files, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_start_errors, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_status, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_fake_cgroup, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_events, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_start_async, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_idle_shim, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_lock_is_liveness, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_restart_in_place, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_spawn_on_start, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_shim_footprint, fx_setup, fx_teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
