/* driver_process: runs instances as supervised processes through archipel-shim (docs/workloads.md).
 */
#include "driver_process.h"

#include "ap/base.h"
#include "ap/err.h"
#include "ap/log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* status.json is a few hundred bytes; anything much larger is not the shim's. */
#define DP_STATUS_MAX       (16 * 1024)
#define DP_CMDLINE_MAX      8192
#define DP_PROBE_TIMEOUT_MS 5000
#define DP_REPLY_MAX        8192
#define DP_PROBE_OUT_MAX    2048
#define DP_NAME_MAX         255
#define DP_PATH_STR_MAX     1024
#define DP_HOSTNAME_MAX     63
#define DP_DEFAULT_PATH_ENV "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
/* The idle shims' spare directories: DATA/instances/.idle-<pid> (edge/shim/main.c). */
#define DP_SPARE_PREFIX ".idle-"

/** An instance the driver follows: started by it, or adopted alive. */
struct dp_inst {
    struct dp_inst *next;
    char id[DRIVER_PROCESS_ID_MAX + 1];
    int pidfd; /* the shim's pidfd (no pid-reuse race), -1 when unsupported */
    bool dead; /* no longer followed; freed once no tick iterates */
    bool have_file;
    ino_t ino; /* status.json identity at the last read */
    struct timespec mtime;
    off_t size;
    struct driver_process_status last;
};

/** A shim spawned ahead of time, prepared and waiting for a spec on ctl. */
struct dp_idle {
    int pid;
    int pidfd; /* -1 where pidfds are unsupported */
    int ctl;   /* our end of its control socket */
};

/** A start in flight: the spec is with shim sh, whose answer we wait for on sh.ctl. */
struct dp_start {
    struct dp_start *next;
    struct driver_process *d;
    char id[DRIVER_PROCESS_ID_MAX + 1];
    struct dp_idle sh;
    uv_poll_t poll;
    uv_timer_t timer;
    int open_handles; /* freed when both handles have closed */
    size_t used;
    char reply[DP_REPLY_MAX];
    driver_process_start_cb cb;
    void *data;
    bool stop_after; /* A stop came while it started: stop it once it answered. */
};

struct driver_process {
    uv_loop_t *loop;
    uv_timer_t timer;
    char *data_dir; /* absolute and canonical */
    char *inst_dir; /* data_dir/instances, as shims are told (--pool) */
    char *shim_path;
    bool no_namespaces;
    uint64_t poll_ms;
    uint64_t start_timeout_ms;
    uint64_t grace_ms;
    uint64_t log_max;
    driver_process_event_cb on_event;
    void *data;
    struct driver_process_caps caps;
    struct dp_inst *insts;
    uint64_t log_dropped;    /* output bytes shims reported dropped while we followed them */
    struct dp_start *starts; /* in flight */
    int open_handles;        /* the timer's and the starts' uv handles not yet closed */
    struct dp_idle idle[DRIVER_PROCESS_IDLE_SHIMS_MAX];
    size_t n_idle;
    size_t idle_target;
    int *children; /* shims we spawned and have not reaped yet */
    size_t n_children;
    size_t cap_children;
    bool in_tick;
    bool closing;
    void (*close_cb)(void *data);
    void *close_data;
    char errmsg[AP_ERRMSG_SIZE];
};

/* ------------------------------------------------------------------------ */
/* Small helpers.                                                            */

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int pidfd_open_(int pid)
{
#ifdef SYS_pidfd_open
    return (int)syscall(SYS_pidfd_open, pid, 0);
#else
    (void)pid;
    errno = ENOSYS;
    return -1;
#endif
}

static int pidfd_signal_(int fd, int sig)
{
#ifdef SYS_pidfd_send_signal
    return (int)syscall(SYS_pidfd_send_signal, fd, sig, NULL, 0);
#else
    (void)fd;
    (void)sig;
    errno = ENOSYS;
    return -1;
#endif
}

/* Whether the process a pidfd refers to has exited (a pidfd polls readable then). */
static bool pidfd_exited(int fd)
{
    struct pollfd p = {fd, POLLIN, 0};
    return poll(&p, 1, 0) > 0;
}

static bool valid_id(const char *id)
{
    if (id == NULL) {
        return false;
    }
    size_t n = strlen(id);
    /* A leading '.' is reserved (the idle shims' spare directories). */
    if (n == 0 || n > DRIVER_PROCESS_ID_MAX || id[0] == '.') {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '_' || c == '.';
        if (!ok) {
            return false;
        }
    }
    return true;
}

static bool valid_hostname(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > DP_HOSTNAME_MAX || s[0] == '-' || s[0] == '.') {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '.';
        if (!ok) {
            return false;
        }
    }
    return true;
}

static int check_id(struct driver_process *d, const char *id)
{
    if (!valid_id(id)) {
        ap_errmsg_set(d->errmsg, "invalid instance id '%.80s': want 1 to %d of [A-Za-z0-9._-]",
                      id != NULL ? id : "(null)", DRIVER_PROCESS_ID_MAX);
        return AP_EINVAL;
    }
    return 0;
}

/* DIR/instances/<id>[/<file>] into buf; AP_EINVAL when it does not fit. */
static int inst_path(const struct driver_process *d, const char *id, const char *file, char *buf,
                     size_t size)
{
    int n = file != NULL ? snprintf(buf, size, "%s/%s/%s", d->inst_dir, id, file)
                         : snprintf(buf, size, "%s/%s", d->inst_dir, id);
    return (n < 0 || (size_t)n >= size) ? AP_EINVAL : 0;
}

static int err_from_errno(int e)
{
    switch (e) {
    case ENOENT:
        return AP_ENOTFOUND;
    case ENOMEM:
        return AP_ENOMEM;
    case EACCES:
    case EPERM:
        return AP_EPERM;
    case ENOSPC:
        return AP_ENOSPACE;
    default:
        return AP_EIO;
    }
}

/*
 * Read a whole small file into a new NUL-terminated buffer. Errors:
 * AP_ENOTFOUND, AP_ETOOBIG (over max), AP_EIO, AP_ENOMEM.
 */
static int read_file(const char *path, size_t max, char **out, size_t *len, struct stat *st_out)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return err_from_errno(errno);
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return AP_EIO;
    }
    if (st.st_size < 0 || (uint64_t)st.st_size > max) {
        close(fd);
        return AP_ETOOBIG;
    }
    size_t size = (size_t)st.st_size;
    char *buf = ap_malloc(size + 1);
    if (buf == NULL) {
        close(fd);
        return AP_ENOMEM;
    }
    size_t used = 0;
    while (used < size) {
        ssize_t n = read(fd, buf + used, size - used);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            ap_free(buf);
            close(fd);
            return AP_EIO;
        }
        if (n == 0) {
            break;
        }
        used += (size_t)n;
    }
    close(fd);
    buf[used] = '\0';
    *out = buf;
    *len = used;
    if (st_out != NULL) {
        *st_out = st;
    }
    return 0;
}

/* Drop a pid from the children to reap. */
static void child_forget(struct driver_process *d, size_t k)
{
    d->children[k] = d->children[--d->n_children];
}

/* Remember a shim we spawned: it is our child until reaped. */
static void child_add(struct driver_process *d, int pid)
{
    if (d->n_children == d->cap_children) {
        size_t cap = d->cap_children == 0 ? 16 : d->cap_children * 2;
        int *grown = ap_realloc(d->children, cap * sizeof *grown);
        if (grown == NULL) {
            return; /* not reaped: a zombie, which reads as dead anyway */
        }
        d->children = grown;
        d->cap_children = cap;
    }
    d->children[d->n_children++] = pid;
}

/* Reap every shim of ours that has exited (never waitpid(-1): other children are not ours). */
static void children_reap(struct driver_process *d)
{
    for (size_t k = 0; k < d->n_children;) {
        pid_t r = waitpid(d->children[k], NULL, WNOHANG);
        if (r > 0 || (r < 0 && errno == ECHILD)) {
            child_forget(d, k);
        } else {
            k++;
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Finding the live shim of an instance.                                     */

/*
 * Who holds DIR/shim.lock: its pid, 0 when nobody does (or there is no lock
 * file), -1 when a process we cannot see does (another pid namespace). The
 * shim takes a POSIX record lock for its whole life, and the kernel answers
 * F_GETLK with the holder's pid: no file the shim writes is needed to know it
 * lives, and the lock goes away with the process (also on SIGKILL).
 */
static int lock_holder(const char *dir)
{
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/shim.lock", dir) >= (int)sizeof path) {
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
    if (rc != 0 || fl.l_type == F_UNLCK) {
        return 0;
    }
    return fl.l_pid > 0 ? (int)fl.l_pid : -1;
}

/*
 * Whether pid's command line is `archipel-shim ...` for this driver: an
 * argument is our instances directory (--pool) or dir (--dir). A sanity
 * check before we signal what holds an instance's lock. An exiting process
 * has released its memory, and with it its command line, a moment before its
 * descriptors and locks: *exiting says that the command line was empty.
 */
static bool cmdline_is_shim(int pid, const char *inst_dir, const char *dir, bool *exiting)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/cmdline", pid);
    /* procfs files report size 0: read until EOF into a bounded buffer. */
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return false;
    }
    char buf[DP_CMDLINE_MAX];
    size_t len = 0;
    while (len < sizeof buf) {
        ssize_t n = read(fd, buf + len, sizeof buf - len);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            break;
        }
        len += (size_t)n;
    }
    close(fd);
    if (exiting != NULL) {
        *exiting = len == 0;
    }
    bool name_ok = false;
    bool dir_ok = false;
    for (size_t off = 0; off < len;) {
        const char *arg = buf + off;
        size_t al = strnlen(arg, len - off);
        if (off + al >= len) {
            break; /* cut at the buffer's end: not a complete argument */
        }
        if (off == 0) {
            const char *base = strrchr(arg, '/');
            name_ok = strstr(base != NULL ? base + 1 : arg, "archipel-shim") != NULL;
        } else if (strcmp(arg, inst_dir) == 0 || strcmp(arg, dir) == 0) {
            dir_ok = true;
        }
        off += al + 1;
    }
    return name_ok && dir_ok;
}

/*
 * Find the live shim of instance directory dir: true when one holds its
 * lock, with *pid (0 when it cannot be seen from here) and, when pidfd is
 * not NULL, a pidfd pinned to it (-1 when pidfds are unsupported or the
 * holder is not a shim of ours), which the caller closes.
 */
static bool shim_find(const struct driver_process *d, const char *dir, int *pid, int *pidfd)
{
    if (pidfd != NULL) {
        *pidfd = -1;
    }
    *pid = 0;
    /* A holder can die and a new shim take the lock between two looks: look again, bounded. */
    for (int attempt = 0; attempt < 3; attempt++) {
        int h = lock_holder(dir);
        if (h == 0) {
            return false;
        }
        if (h < 0) {
            return true;
        }
        int fd = pidfd_open_(h);
        if (fd < 0 && errno == ESRCH) {
            continue;
        }
        /* The pidfd pins process h: if h still holds the lock now, the pidfd is the holder. */
        if (lock_holder(dir) != h || (fd >= 0 && pidfd_exited(fd))) {
            if (fd >= 0) {
                close(fd);
            }
            continue;
        }
        *pid = h;
        bool exiting = false;
        if (!cmdline_is_shim(h, d->inst_dir, dir, &exiting)) {
            /*
             * Something else locks our file, or a shim in its last moments: the instance
             * counts as taken either way, but we signal nothing.
             */
            if (!exiting) {
                AP_LOG(AP_LOG_WARN, "instance_lock_foreign dir=%s pid=%d", dir, h);
            }
            if (fd >= 0) {
                close(fd);
            }
            return true;
        }
        if (pidfd != NULL) {
            *pidfd = fd;
        } else if (fd >= 0) {
            close(fd);
        }
        return true;
    }
    return lock_holder(dir) != 0;
}

/* ------------------------------------------------------------------------ */
/* status.json                                                               */

static const char *const state_names[] = {"starting", "running", "exited",
                                          "failed",   "stopped", "lost"};

const char *driver_process__state_name(enum driver_process_state state)
{
    if ((size_t)state >= AP_ARRAY_LEN(state_names)) {
        return "unknown";
    }
    return state_names[state];
}

static int json_int_or_null(json_t *obj, const char *key, int64_t min, int64_t max, int64_t *out,
                            int64_t null_value, char *errmsg)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL || json_is_null(v)) {
        *out = null_value;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        ap_errmsg_set(errmsg, "field '%s': want an integer in [%lld, %lld] or null", key,
                      (long long)min, (long long)max);
        return AP_ECORRUPT;
    }
    *out = json_integer_value(v);
    return 0;
}

static int json_bool_field(json_t *obj, const char *key, bool *out, char *errmsg)
{
    json_t *v = json_object_get(obj, key);
    if (!json_is_boolean(v)) {
        ap_errmsg_set(errmsg, "field '%s': want a boolean", key);
        return AP_ECORRUPT;
    }
    *out = json_is_true(v);
    return 0;
}

static int json_text_or_null(json_t *obj, const char *key, char *out, size_t size, char *errmsg)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL || json_is_null(v)) {
        out[0] = '\0';
        return 0;
    }
    if (!json_is_string(v)) {
        ap_errmsg_set(errmsg, "field '%s': want a string or null", key);
        return AP_ECORRUPT;
    }
    ap_strlcpy(out, json_string_value(v), size);
    return 0;
}

/*
 * Decode status.json into st (docs/workloads.md, "status.json"). Unknown
 * fields are ignored, so a newer shim's file still reads. *writer gets the
 * pid of the shim that wrote it (writer_pid, or shim_pid in files without
 * it; 0 when neither). Errors: AP_ECORRUPT with errmsg.
 */
static int status_decode(const char *text, size_t len, struct driver_process_status *st,
                         int *writer, char *errmsg)
{
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        ap_errmsg_set(errmsg, "line %d: %s", jerr.line, jerr.text);
        return AP_ECORRUPT;
    }
    int rc = AP_ECORRUPT;
    int64_t v;
    if (!json_is_object(root)) {
        ap_errmsg_set(errmsg, "not a JSON object");
        goto out;
    }
    if (json_int_or_null(root, "version", 1, 1, &v, 0, errmsg) != 0 || v != 1) {
        ap_errmsg_set(errmsg, "field 'version': want 1");
        goto out;
    }
    json_t *state = json_object_get(root, "state");
    const char *sname = json_string_value(state);
    size_t i = 0;
    while (sname != NULL && i < DRIVER_PROCESS_LOST && strcmp(state_names[i], sname) != 0) {
        i++;
    }
    if (sname == NULL || i == DRIVER_PROCESS_LOST) {
        ap_errmsg_set(errmsg, "field 'state': want starting, running, exited, failed or stopped");
        goto out;
    }
    st->state = (enum driver_process_state)i;
    if (json_int_or_null(root, "shim_pid", 1, INT_MAX, &v, 0, errmsg) != 0) {
        goto out;
    }
    st->shim_pid = (int)v;
    if (json_int_or_null(root, "writer_pid", 1, INT_MAX, &v, st->shim_pid, errmsg) != 0) {
        goto out;
    }
    *writer = (int)v;
    if (json_int_or_null(root, "child_pid", 1, INT_MAX, &v, 0, errmsg) != 0) {
        goto out;
    }
    st->child_pid = (int)v;
    if (json_int_or_null(root, "workload_pid", 1, INT_MAX, &v, 0, errmsg) != 0) {
        goto out;
    }
    st->workload_pid = (int)v;
    if (json_int_or_null(root, "exit_code", 0, 255, &v, -1, errmsg) != 0) {
        goto out;
    }
    st->exit_code = (int)v;
    if (json_int_or_null(root, "signal", 1, 128, &v, 0, errmsg) != 0) {
        goto out;
    }
    st->signal = (int)v;
    if (json_int_or_null(root, "restarts", 0, INT64_MAX, &st->restarts, 0, errmsg) != 0 ||
        json_int_or_null(root, "backoff_ms", 0, INT64_MAX, &st->backoff_ms, 0, errmsg) != 0 ||
        json_int_or_null(root, "started_at_ms", 0, INT64_MAX, &st->started_at_ms, 0, errmsg) != 0 ||
        json_int_or_null(root, "updated_at_ms", 0, INT64_MAX, &st->updated_at_ms, 0, errmsg) != 0 ||
        json_int_or_null(root, "log_dropped_bytes", 0, INT64_MAX, &st->log_dropped_bytes, 0,
                         errmsg) != 0) {
        goto out;
    }
    if (json_text_or_null(root, "error", st->error, sizeof st->error, errmsg) != 0) {
        goto out;
    }
    json_t *iso = json_object_get(root, "isolation");
    if (!json_is_object(iso)) {
        ap_errmsg_set(errmsg, "field 'isolation': want an object");
        goto out;
    }
    struct driver_process_isolation *is = &st->isolation;
    if (json_bool_field(iso, "pid_ns", &is->pid_ns, errmsg) != 0 ||
        json_bool_field(iso, "mount_ns", &is->mount_ns, errmsg) != 0 ||
        json_bool_field(iso, "uts_ns", &is->uts_ns, errmsg) != 0 ||
        json_bool_field(iso, "memory_limit", &is->memory_limit, errmsg) != 0 ||
        json_bool_field(iso, "cpu_limit", &is->cpu_limit, errmsg) != 0 ||
        json_text_or_null(iso, "cgroup", is->cgroup, sizeof is->cgroup, errmsg) != 0) {
        ap_errmsg_wrap(errmsg, "isolation");
        goto out;
    }
    rc = 0;
out:
    json_decref(root);
    return rc;
}

static struct dp_inst *inst_find(struct driver_process *d, const char *id);

static struct dp_start *start_find(struct driver_process *d, const char *id)
{
    for (struct dp_start *st = d->starts; st != NULL; st = st->next) {
        if (strcmp(st->id, id) == 0) {
            return st;
        }
    }
    return NULL;
}

/*
 * Fill st for instance id; *file_st gets status.json's stat when it exists.
 * A live shim (the holder of shim.lock) whose status.json is missing or
 * was written by an earlier shim has not written its own yet: st is then
 * what it answered the start with when we started it, else "starting".
 */
static int status_read(struct driver_process *d, const char *id, struct driver_process_status *st,
                       struct stat *file_st, bool *have_file)
{
    char path[PATH_MAX];
    memset(st, 0, sizeof *st);
    ap_strlcpy(st->id, id, sizeof st->id);
    st->exit_code = -1;
    *have_file = false;
    if (inst_path(d, id, NULL, path, sizeof path) != 0) {
        ap_errmsg_set(d->errmsg, "instance %s: path too long", id);
        return AP_EINVAL;
    }
    struct stat dst;
    if (stat(path, &dst) != 0 || !S_ISDIR(dst.st_mode)) {
        ap_errmsg_set(d->errmsg, "instance %s not found", id);
        return AP_ENOTFOUND;
    }
    char dir[PATH_MAX];
    ap_strlcpy(dir, path, sizeof dir);
    int holder = 0;
    bool alive = shim_find(d, dir, &holder, NULL);
    inst_path(d, id, "status.json", path, sizeof path);
    char *text = NULL;
    size_t len = 0;
    int rc = read_file(path, DP_STATUS_MAX, &text, &len, file_st);
    if (rc != 0 && rc != AP_ENOTFOUND) {
        ap_errmsg_set(d->errmsg, "instance %s: read status.json: %s", id, ap_strerror(rc));
        return rc == AP_ETOOBIG ? AP_ECORRUPT : rc;
    }
    *have_file = rc == 0;
    int writer = 0;
    bool decoded = false;
    if (rc == 0 && len > 0) {
        char msg[AP_ERRMSG_SIZE] = "";
        rc = status_decode(text, len, st, &writer, msg);
        if (rc != 0) {
            ap_free(text);
            ap_errmsg_set(d->errmsg, "instance %s: status.json: %s", id, msg);
            return rc;
        }
        decoded = true;
    }
    ap_free(text);
    if (alive) {
        if (!decoded || (holder > 0 && writer != holder)) {
            /* Not written by the live shim yet. */
            struct dp_inst *i = inst_find(d, id);
            if (i != NULL && i->last.alive && holder > 0 && i->last.shim_pid == holder) {
                *st = i->last;
            } else {
                memset(st, 0, sizeof *st);
                ap_strlcpy(st->id, id, sizeof st->id);
                st->exit_code = -1;
                st->state = DRIVER_PROCESS_STARTING;
            }
        }
        if (holder > 0) {
            st->shim_pid = holder;
        }
        st->alive = true;
        return 0;
    }
    if (!decoded) {
        /* No shim ever recorded anything, or a power loss tore its last write (empty file). */
        st->state = DRIVER_PROCESS_LOST;
        ap_strlcpy(st->error,
                   *have_file ? "status.json is empty (torn by a crash)"
                              : "no status.json: the shim never started or is gone",
                   sizeof st->error);
        return 0;
    }
    bool unfinished = st->state == DRIVER_PROCESS_STARTING || st->state == DRIVER_PROCESS_RUNNING ||
                      (st->state == DRIVER_PROCESS_EXITED && st->shim_pid != 0);
    if (unfinished) {
        /* docs/workloads.md: the shim died without a last word; its workload died with it. */
        if (st->error[0] == '\0') {
            snprintf(st->error, sizeof st->error, "shim %d is gone", st->shim_pid);
        }
        st->state = DRIVER_PROCESS_LOST;
    }
    st->shim_pid = st->child_pid = st->workload_pid = 0;
    return 0;
}

static void inst_note_file(struct dp_inst *i, bool have_file, const struct stat *fst)
{
    i->have_file = have_file;
    if (have_file) {
        i->ino = fst->st_ino;
        i->size = fst->st_size;
        i->mtime = fst->st_mtim;
    }
}

static bool status_changed(const struct driver_process_status *a,
                           const struct driver_process_status *b)
{
    return a->state != b->state || a->alive != b->alive || a->restarts != b->restarts ||
           a->shim_pid != b->shim_pid || a->child_pid != b->child_pid ||
           a->workload_pid != b->workload_pid || a->exit_code != b->exit_code ||
           a->signal != b->signal || strcmp(a->error, b->error) != 0;
}

/* Whether status.json still is the file i->last was read from. */
static bool status_file_same(struct driver_process *d, const struct dp_inst *i)
{
    char path[PATH_MAX];
    struct stat fst;
    return i->have_file && inst_path(d, i->id, "status.json", path, sizeof path) == 0 &&
           stat(path, &fst) == 0 && fst.st_ino == i->ino && fst.st_size == i->size &&
           fst.st_mtim.tv_sec == i->mtime.tv_sec && fst.st_mtim.tv_nsec == i->mtime.tv_nsec;
}

int driver_process__status(struct driver_process *d, const char *id,
                           struct driver_process_status *st)
{
    int rc = check_id(d, id);
    if (rc != 0) {
        return rc;
    }
    /*
     * A followed instance whose shim lives (its pidfd) and whose status.json
     * has not changed since the last poll is what that poll read: reconcile
     * asks for every instance on every pass, and this keeps that to two
     * system calls each.
     */
    struct dp_inst *i = inst_find(d, id);
    bool live = i != NULL && i->pidfd >= 0 && !pidfd_exited(i->pidfd);
    if (live && status_file_same(d, i)) {
        *st = i->last;
        return 0;
    }
    /* Handed to a shim that has not answered yet: it is the instance's shim, starting it. */
    struct dp_start *ds = start_find(d, id);
    if (ds != NULL) {
        memset(st, 0, sizeof *st);
        ap_strlcpy(st->id, id, sizeof st->id);
        st->state = DRIVER_PROCESS_STARTING;
        st->alive = true;
        st->shim_pid = ds->sh.pid;
        st->exit_code = -1;
        return 0;
    }
    struct stat fst;
    bool have_file;
    rc = status_read(d, id, st, &fst, &have_file);
    if (rc == 0 && live && !status_changed(&i->last, st) &&
        st->log_dropped_bytes == i->last.log_dropped_bytes) {
        /* Nothing an event would report: remember the file, so the next call is quick. */
        inst_note_file(i, have_file, &fst);
    }
    return rc;
}

json_t *driver_process__status_to_json(const struct driver_process_status *st)
{
    const struct driver_process_isolation *is = &st->isolation;
    json_t *pid = st->shim_pid > 0 ? json_integer(st->shim_pid) : json_null();
    json_t *child = st->child_pid > 0 ? json_integer(st->child_pid) : json_null();
    json_t *wl = st->workload_pid > 0 ? json_integer(st->workload_pid) : json_null();
    json_t *code = st->exit_code >= 0 ? json_integer(st->exit_code) : json_null();
    json_t *sig = st->signal > 0 ? json_integer(st->signal) : json_null();
    json_t *err = st->error[0] != '\0' ? json_string(st->error) : json_null();
    json_t *cg = is->cgroup[0] != '\0' ? json_string(is->cgroup) : json_null();
    return json_pack("{s:s, s:s, s:b, s:o, s:o, s:o, s:o, s:o, s:I, s:I, s:I, s:I, s:o, s:I, "
                     "s:{s:b, s:b, s:b, s:o, s:b, s:b}}",
                     "id", st->id, "state", driver_process__state_name(st->state), "alive",
                     st->alive, "shim_pid", pid, "child_pid", child, "workload_pid", wl,
                     "exit_code", code, "signal", sig, "restarts", (json_int_t)st->restarts,
                     "backoff_ms", (json_int_t)st->backoff_ms, "started_at_ms",
                     (json_int_t)st->started_at_ms, "updated_at_ms", (json_int_t)st->updated_at_ms,
                     "error", err, "log_dropped_bytes", (json_int_t)st->log_dropped_bytes,
                     "isolation", "pid_ns", is->pid_ns, "mount_ns", is->mount_ns, "uts_ns",
                     is->uts_ns, "cgroup", cg, "memory_limit", is->memory_limit, "cpu_limit",
                     is->cpu_limit);
}

/* ------------------------------------------------------------------------ */
/* Tracking.                                                                 */

static struct dp_inst *inst_find(struct driver_process *d, const char *id)
{
    for (struct dp_inst *i = d->insts; i != NULL; i = i->next) {
        if (!i->dead && strcmp(i->id, id) == 0) {
            return i;
        }
    }
    return NULL;
}

static void inst_untrack(struct dp_inst *i)
{
    i->dead = true;
    if (i->pidfd >= 0) {
        close(i->pidfd);
        i->pidfd = -1;
    }
}

static void insts_sweep(struct driver_process *d)
{
    struct dp_inst **pp = &d->insts;
    while (*pp != NULL) {
        struct dp_inst *i = *pp;
        if (i->dead) {
            *pp = i->next;
            ap_free(i);
        } else {
            pp = &i->next;
        }
    }
}

/*
 * Follow instance st->id from now on, with st as the last state reported.
 * pidfd (owned from now on; -1 to look the shim up) pins its shim.
 */
static struct dp_inst *inst_track(struct driver_process *d, const struct driver_process_status *st,
                                  int pidfd)
{
    struct dp_inst *old = inst_find(d, st->id);
    if (old != NULL) {
        inst_untrack(old);
    }
    struct dp_inst *i = ap_calloc(1, sizeof *i);
    if (i == NULL) {
        /* Not followed: status calls still work; only events are missed. */
        AP_LOG(AP_LOG_WARN, "instance_untracked id=%s reason=out_of_memory", st->id);
        if (pidfd >= 0) {
            close(pidfd);
        }
        return NULL;
    }
    ap_strlcpy(i->id, st->id, sizeof i->id);
    i->pidfd = pidfd;
    i->last = *st;
    char dir[PATH_MAX];
    if (i->pidfd < 0 && st->alive && inst_path(d, st->id, NULL, dir, sizeof dir) == 0) {
        int pid;
        shim_find(d, dir, &pid, &i->pidfd);
    }
    i->next = d->insts;
    d->insts = i;
    if (!d->in_tick) {
        insts_sweep(d);
    }
    return i;
}

static void poll_one(struct driver_process *d, struct dp_inst *i)
{
    bool exited = i->pidfd >= 0 && pidfd_exited(i->pidfd);
    if (i->pidfd >= 0 && !exited && status_file_same(d, i)) {
        return; /* nothing new */
    }
    struct driver_process_status st;
    struct stat fst;
    bool have_file;
    int rc = status_read(d, i->id, &st, &fst, &have_file);
    if (rc == AP_ENOTFOUND) {
        inst_untrack(i);
        return;
    }
    if (rc != 0) {
        AP_LOG(AP_LOG_WARN, "instance_status_unreadable id=%s err=\"%s\"", i->id, d->errmsg);
        return;
    }
    inst_note_file(i, have_file, &fst);
    bool changed = status_changed(&i->last, &st);
    /* A shim counts from 0: a smaller count comes from a new shim of the instance. */
    d->log_dropped += (uint64_t)(st.log_dropped_bytes >= i->last.log_dropped_bytes
                                     ? st.log_dropped_bytes - i->last.log_dropped_bytes
                                     : st.log_dropped_bytes);
    i->last = st;
    if (!st.alive) {
        inst_untrack(i);
    }
    if (changed) {
        AP_LOG(AP_LOG_INFO, "instance_changed id=%s state=%s alive=%d restarts=%lld", st.id,
               driver_process__state_name(st.state), st.alive, (long long)st.restarts);
        if (d->on_event != NULL) {
            d->on_event(d->data, &st);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Idle shims.                                                               */

/* Forget an idle shim: its control socket closes, so it leaves (it is reaped later). */
static void idle_drop(struct dp_idle *sh)
{
    if (sh->ctl >= 0) {
        close(sh->ctl);
    }
    if (sh->pidfd >= 0) {
        close(sh->pidfd);
    }
    sh->ctl = sh->pidfd = -1;
}

/* Move a descriptor to >= 10 so that it never collides with stdio or fd 3 in the child. */
static int fd_high(int fd)
{
    if (fd >= 10) {
        return fd;
    }
    int h = fcntl(fd, F_DUPFD_CLOEXEC, 10);
    close(fd);
    return h;
}

/*
 * Spawn a shim that prepares itself and waits for a spec:
 * `archipel-shim --pool DATA/instances --ctl-fd 3 [--no-namespaces] --dir SLOT`,
 * in a session of its own (the daemon's process group and terminal signals do
 * not reach it), empty signal mask, default dispositions, stdio on /dev/null,
 * environment reduced to PATH. SLOT is a placeholder as long as any instance
 * directory: the shim writes its instance's directory there once it has one,
 * so ps shows `--dir DATA/instances/<id>`. Returns 0 or AP_EIO with errmsg.
 */
static int idle_spawn(struct driver_process *d, struct dp_idle *out)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        ap_errmsg_set(d->errmsg, "socketpair: %s", strerror(errno));
        return AP_EIO;
    }
    sv[0] = fd_high(sv[0]);
    sv[1] = fd_high(sv[1]);
    if (sv[0] < 0 || sv[1] < 0) {
        ap_errmsg_set(d->errmsg, "dup: %s", strerror(errno));
        if (sv[0] >= 0) {
            close(sv[0]);
        }
        if (sv[1] >= 0) {
            close(sv[1]);
        }
        return AP_EIO;
    }
    size_t slot_len = strlen(d->inst_dir) + 1 + DRIVER_PROCESS_ID_MAX;
    char *slot = ap_malloc(slot_len + 1);
    if (slot == NULL) {
        close(sv[0]);
        close(sv[1]);
        ap_errmsg_set(d->errmsg, "out of memory");
        return AP_ENOMEM;
    }
    memset(slot, '.', slot_len);
    slot[slot_len] = '\0';
    char *argv[9];
    size_t argc = 0;
    argv[argc++] = d->shim_path;
    argv[argc++] = (char *)"--pool";
    argv[argc++] = d->inst_dir;
    argv[argc++] = (char *)"--ctl-fd";
    argv[argc++] = (char *)"3";
    if (!d->caps.namespaces) {
        argv[argc++] = (char *)"--no-namespaces";
    }
    argv[argc++] = (char *)"--dir";
    argv[argc++] = slot; /* last, so the zeroed tail of the title ends the command line */
    argv[argc] = NULL;

    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&attr);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, sv[1], 3);
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setflags(&attr,
                             POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSID);
    char *envp[] = {(char *)DP_DEFAULT_PATH_ENV, NULL};
    pid_t pid;
    int src = posix_spawn(&pid, d->shim_path, &fa, &attr, argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    ap_free(slot);
    close(sv[1]);
    if (src != 0) {
        close(sv[0]);
        ap_errmsg_set(d->errmsg, "spawn %s: %s", d->shim_path, strerror(src));
        return AP_EIO;
    }
    child_add(d, pid);
    /* Our unreaped child: its pid cannot be reused, so this pidfd is surely it. */
    out->pid = pid;
    out->pidfd = pidfd_open_(pid);
    out->ctl = sv[0];
    return 0;
}

/* Bring the idle shims up to their number; a failure is logged and retried next tick. */
static void idle_refill(struct driver_process *d)
{
    while (!d->closing && d->n_idle < d->idle_target) {
        struct dp_idle sh;
        int rc = idle_spawn(d, &sh);
        if (rc != 0) {
            AP_LOG(AP_LOG_WARN, "idle_shim_spawn_failed err=\"%s\"", d->errmsg);
            return;
        }
        d->idle[d->n_idle++] = sh;
    }
}

/* Drop idle shims that died while waiting (killed, or their namespace init died). */
static void idle_check(struct driver_process *d)
{
    for (size_t k = 0; k < d->n_idle;) {
        if (d->idle[k].pidfd >= 0 && pidfd_exited(d->idle[k].pidfd)) {
            AP_LOG(AP_LOG_WARN, "idle_shim_died pid=%d", d->idle[k].pid);
            idle_drop(&d->idle[k]);
            d->idle[k] = d->idle[--d->n_idle];
        } else {
            k++;
        }
    }
}

static void on_timer(uv_timer_t *t)
{
    struct driver_process *d = AP_CONTAINER_OF(t, struct driver_process, timer);
    d->in_tick = true;
    if (d->on_event != NULL) {
        for (struct dp_inst *i = d->insts; i != NULL && !d->closing; i = i->next) {
            if (!i->dead) {
                poll_one(d, i);
            }
        }
    }
    d->in_tick = false;
    insts_sweep(d);
    children_reap(d);
    idle_check(d);
    /* At most one spawn per tick after a failure: a broken shim binary cannot spin us. */
    idle_refill(d);
}

/* Run the timer's work on the next loop iteration (after a start), then every poll_ms. */
static void tick_soon(struct driver_process *d)
{
    if (!d->closing) {
        uv_timer_start(&d->timer, on_timer, 0, d->poll_ms);
    }
}

/*
 * Remove the spare directories of idle shims that are gone (killed before
 * they could clean up): DATA/instances/.idle-<pid> whose lock nobody holds.
 */
static void spares_sweep(struct driver_process *d)
{
    DIR *dh = opendir(d->inst_dir);
    if (dh == NULL) {
        return;
    }
    struct dirent *e;
    while ((e = readdir(dh)) != NULL) {
        if (strncmp(e->d_name, DP_SPARE_PREFIX, strlen(DP_SPARE_PREFIX)) != 0) {
            continue;
        }
        char dir[PATH_MAX], path[PATH_MAX];
        if (snprintf(dir, sizeof dir, "%s/%s", d->inst_dir, e->d_name) >= (int)sizeof dir ||
            snprintf(path, sizeof path, "%s/shim.lock", dir) >= (int)sizeof path ||
            lock_holder(dir) != 0) {
            continue;
        }
        unlink(path);
        if (rmdir(dir) == 0) {
            AP_LOG(AP_LOG_INFO, "idle_spare_removed dir=%s", dir);
        }
    }
    closedir(dh);
}

/* ------------------------------------------------------------------------ */
/* The probe.                                                                */

/*
 * Run the shim with argv, its stdout a pipe to us, and read what it writes
 * until EOF or timeout_ms. The process is reaped. Returns 0 with out
 * NUL-terminated and *exit_status set, else AP_ETIMEDOUT / AP_EIO with
 * errmsg.
 */
static int shim_run(struct driver_process *d, char *const argv[], uint64_t timeout_ms, char *out,
                    size_t out_size, int *exit_status)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) {
        ap_errmsg_set(d->errmsg, "pipe: %s", strerror(errno));
        return AP_EIO;
    }
    p[0] = fd_high(p[0]);
    p[1] = fd_high(p[1]);
    if (p[0] < 0 || p[1] < 0) {
        ap_errmsg_set(d->errmsg, "dup: %s", strerror(errno));
        if (p[0] >= 0) {
            close(p[0]);
        }
        if (p[1] >= 0) {
            close(p[1]);
        }
        return AP_EIO;
    }
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&attr);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, p[1], 1);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    char *envp[] = {(char *)DP_DEFAULT_PATH_ENV, NULL};
    pid_t pid;
    int src = posix_spawn(&pid, d->shim_path, &fa, &attr, argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    close(p[1]);
    if (src != 0) {
        close(p[0]);
        ap_errmsg_set(d->errmsg, "spawn %s: %s", d->shim_path, strerror(src));
        return AP_EIO;
    }
    size_t used = 0;
    int rc = 0;
    int64_t deadline = mono_ms() + (int64_t)timeout_ms;
    while (used + 1 < out_size) {
        int64_t left = deadline - mono_ms();
        if (left <= 0) {
            rc = AP_ETIMEDOUT;
            break;
        }
        struct pollfd pfd = {p[0], POLLIN, 0};
        int pr = poll(&pfd, 1, (int)left);
        if (pr < 0 && errno != EINTR) {
            rc = AP_EIO;
            break;
        }
        if (pr <= 0) {
            continue;
        }
        ssize_t n = read(p[0], out + used, out_size - 1 - used);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            break;
        }
        used += (size_t)n;
    }
    out[used] = '\0';
    close(p[0]);
    if (rc == AP_ETIMEDOUT) {
        kill(pid, SIGKILL);
        ap_errmsg_set(d->errmsg, "%s did not answer within %llu ms", d->shim_path,
                      (unsigned long long)timeout_ms);
    } else if (rc != 0) {
        ap_errmsg_set(d->errmsg, "read from %s: %s", d->shim_path, strerror(errno));
    }
    int wst = 0;
    while (waitpid(pid, &wst, 0) < 0 && errno == EINTR) {
    }
    *exit_status = WIFEXITED(wst) ? WEXITSTATUS(wst) : 128 + (WIFSIGNALED(wst) ? WTERMSIG(wst) : 0);
    return rc;
}

static int caps_decode(const char *text, struct driver_process_caps *caps, char *errmsg)
{
    json_error_t jerr;
    json_t *root = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(root)) {
        ap_errmsg_set(errmsg, "probe output is not a JSON object: %s", jerr.text);
        json_decref(root);
        return AP_EIO;
    }
    int rc = AP_EIO;
    if (json_bool_field(root, "pid_ns", &caps->pid_ns, errmsg) != 0 ||
        json_bool_field(root, "mount_ns", &caps->mount_ns, errmsg) != 0 ||
        json_bool_field(root, "uts_ns", &caps->uts_ns, errmsg) != 0 ||
        json_bool_field(root, "namespaces", &caps->namespaces, errmsg) != 0 ||
        json_bool_field(root, "cgroup_v2", &caps->cgroup_v2, errmsg) != 0 ||
        json_bool_field(root, "memory_limit", &caps->memory_limit, errmsg) != 0 ||
        json_bool_field(root, "cpu_limit", &caps->cpu_limit, errmsg) != 0 ||
        json_text_or_null(root, "cgroup_parent", caps->cgroup_parent, sizeof caps->cgroup_parent,
                          errmsg) != 0 ||
        json_text_or_null(root, "detail", caps->detail, sizeof caps->detail, errmsg) != 0) {
        ap_errmsg_wrap(errmsg, "probe output");
        goto out;
    }
    rc = 0;
out:
    json_decref(root);
    return rc;
}

static int probe(struct driver_process *d, const char *cgroup_parent)
{
    char *argv[] = {d->shim_path, (char *)"--probe", (char *)"--cgroup-parent",
                    (char *)cgroup_parent, NULL};
    char out[DP_PROBE_OUT_MAX];
    int status;
    int rc = shim_run(d, argv, DP_PROBE_TIMEOUT_MS, out, sizeof out, &status);
    if (rc != 0) {
        ap_errmsg_wrap(d->errmsg, "probe");
        return AP_EIO;
    }
    if (status != 0) {
        ap_errmsg_set(d->errmsg, "probe: %s --probe exited with status %d", d->shim_path, status);
        return AP_EIO;
    }
    rc = caps_decode(out, &d->caps, d->errmsg);
    if (rc != 0) {
        return rc;
    }
    if (d->no_namespaces && d->caps.namespaces) {
        d->caps.namespaces = false;
        size_t o = strlen(d->caps.detail);
        snprintf(d->caps.detail + o, sizeof d->caps.detail - o,
                 "%snamespaces disabled by configuration", o > 0 ? "; " : "");
    }
    if (!d->caps.cgroup_v2) {
        d->caps.cgroup_parent[0] = '\0';
        d->caps.memory_limit = d->caps.cpu_limit = false;
    }
    return 0;
}

void driver_process__capabilities(const struct driver_process *d, struct driver_process_caps *caps)
{
    *caps = d->caps;
}

json_t *driver_process__caps_to_json(const struct driver_process_caps *caps)
{
    json_t *parent =
        caps->cgroup_parent[0] != '\0' ? json_string(caps->cgroup_parent) : json_null();
    json_t *detail = caps->detail[0] != '\0' ? json_string(caps->detail) : json_null();
    return json_pack("{s:s, s:b, s:b, s:b, s:b, s:b, s:o, s:b, s:b, s:o}", "driver", "process",
                     "pid_ns", caps->pid_ns, "mount_ns", caps->mount_ns, "uts_ns", caps->uts_ns,
                     "namespaces", caps->namespaces, "cgroup_v2", caps->cgroup_v2, "cgroup_parent",
                     parent, "memory_limit", caps->memory_limit, "cpu_limit", caps->cpu_limit,
                     "detail", detail);
}

/* ------------------------------------------------------------------------ */
/* Lifecycle.                                                                */

static void start_done(struct dp_start *ds, int rc, const struct driver_process_status *st);

int driver_process__new(struct driver_process **out, const struct driver_process_config *cfg,
                        char *errmsg)
{
    if (cfg == NULL || cfg->loop == NULL || cfg->data_dir == NULL || cfg->data_dir[0] == '\0' ||
        cfg->shim_path == NULL || cfg->shim_path[0] == '\0') {
        ap_errmsg_set(errmsg, "driver_process: loop, data_dir and shim_path are required");
        return AP_EINVAL;
    }
    const char *cg =
        cfg->cgroup_parent != NULL ? cfg->cgroup_parent : DRIVER_PROCESS_DEFAULT_CGROUP_PARENT;
    if (strlen(cg) >= DRIVER_PROCESS_TEXT_MAX - DRIVER_PROCESS_ID_MAX - 2 ||
        (cg[0] != '\0' && cg[0] != '/')) {
        ap_errmsg_set(errmsg,
                      "driver_process: cgroup_parent '%.80s' must be an absolute path "
                      "shorter than %d bytes",
                      cg, DRIVER_PROCESS_TEXT_MAX - DRIVER_PROCESS_ID_MAX - 2);
        return AP_EINVAL;
    }
    if (cfg->idle_shims > DRIVER_PROCESS_IDLE_SHIMS_MAX) {
        ap_errmsg_set(errmsg, "driver_process: idle_shims must be at most %d",
                      DRIVER_PROCESS_IDLE_SHIMS_MAX);
        return AP_EINVAL;
    }
    if (access(cfg->shim_path, X_OK) != 0) {
        ap_errmsg_set(errmsg, "driver_process: shim '%.160s' is not executable: %s", cfg->shim_path,
                      strerror(errno));
        return AP_EINVAL;
    }
    char real[PATH_MAX];
    if (realpath(cfg->data_dir, real) == NULL) {
        ap_errmsg_set(errmsg, "driver_process: data dir '%.160s': %s", cfg->data_dir,
                      strerror(errno));
        return err_from_errno(errno) == AP_ENOTFOUND ? AP_EINVAL : AP_EIO;
    }
    struct driver_process *d = ap_calloc(1, sizeof *d);
    if (d == NULL) {
        ap_errmsg_set(errmsg, "driver_process: out of memory");
        return AP_ENOMEM;
    }
    int rc = AP_ENOMEM;
    size_t inst_len = strlen(real) + sizeof "/instances";
    d->data_dir = ap_strdup(real);
    d->inst_dir = ap_malloc(inst_len);
    d->shim_path = ap_strdup(cfg->shim_path);
    if (d->data_dir == NULL || d->inst_dir == NULL || d->shim_path == NULL) {
        ap_errmsg_set(errmsg, "driver_process: out of memory");
        goto err_after_alloc;
    }
    snprintf(d->inst_dir, inst_len, "%s/instances", real);
    rc = AP_EINVAL;
    /* The shim's limit for --pool (edge/shim/main.c: SHIM_DIR_MAX - SHIM_ID_MAX - 2). */
    if (strlen(d->inst_dir) + DRIVER_PROCESS_ID_MAX + 32 >= 2900) {
        ap_errmsg_set(errmsg, "driver_process: data dir path too long");
        goto err_after_alloc;
    }
    if (mkdir(d->inst_dir, 0755) != 0 && errno != EEXIST) {
        ap_errmsg_set(errmsg, "driver_process: mkdir %s: %s", d->inst_dir, strerror(errno));
        rc = err_from_errno(errno);
        goto err_after_alloc;
    }
    d->loop = cfg->loop;
    d->no_namespaces = cfg->no_namespaces;
    d->poll_ms = cfg->poll_ms != 0 ? cfg->poll_ms : DRIVER_PROCESS_DEFAULT_POLL_MS;
    d->start_timeout_ms = cfg->start_timeout_ms != 0 ? cfg->start_timeout_ms
                                                     : DRIVER_PROCESS_DEFAULT_START_TIMEOUT_MS;
    d->grace_ms = cfg->stop_grace_ms != 0 ? cfg->stop_grace_ms : DRIVER_PROCESS_DEFAULT_GRACE_MS;
    d->log_max =
        cfg->log_max_bytes != 0 ? cfg->log_max_bytes : DRIVER_PROCESS_DEFAULT_LOG_MAX_BYTES;
    d->idle_target = cfg->spawn_on_start    ? 0
                     : cfg->idle_shims != 0 ? cfg->idle_shims
                                            : DRIVER_PROCESS_DEFAULT_IDLE_SHIMS;
    if (d->grace_ms > 600000 || d->log_max < 4096 || d->log_max > 1024ull * 1024 * 1024) {
        ap_errmsg_set(errmsg, "driver_process: stop_grace_ms must be <= 600000 and "
                              "log_max_bytes within [4096, 1 GiB]");
        goto err_after_alloc;
    }
    d->on_event = cfg->on_event;
    d->data = cfg->data;
    rc = probe(d, cg);
    if (rc != 0) {
        ap_errmsg_set(errmsg, "driver_process: %s", d->errmsg);
        goto err_after_alloc;
    }
    int urc = uv_timer_init(d->loop, &d->timer);
    if (urc != 0) {
        ap_errmsg_set(errmsg, "driver_process: timer: %s", uv_strerror(urc));
        rc = ap_err_from_uv(urc);
        goto err_after_alloc;
    }
    d->open_handles = 1;
    /* The timer also refills the idle shims and reaps ours, so it runs without on_event too. */
    uv_timer_start(&d->timer, on_timer, d->poll_ms, d->poll_ms);
    spares_sweep(d);
    idle_refill(d);
    AP_LOG(AP_LOG_INFO,
           "driver_process_ready data_dir=%s namespaces=%d cgroup=%s memory_limit=%d cpu_limit=%d "
           "idle_shims=%zu",
           d->data_dir, d->caps.namespaces, d->caps.cgroup_v2 ? d->caps.cgroup_parent : "none",
           d->caps.memory_limit, d->caps.cpu_limit, d->idle_target);
    *out = d;
    return 0;

err_after_alloc:
    ap_free(d->data_dir);
    ap_free(d->inst_dir);
    ap_free(d->shim_path);
    ap_free(d);
    return rc;
}

/* Every handle is closed: free the driver and tell whoever closed it. */
static void driver_free(struct driver_process *d)
{
    void (*cb)(void *) = d->close_cb;
    void *data = d->close_data;
    ap_free(d->children);
    ap_free(d->data_dir);
    ap_free(d->inst_dir);
    ap_free(d->shim_path);
    ap_free(d);
    if (cb != NULL) {
        cb(data);
    }
}

static void on_timer_closed(uv_handle_t *h)
{
    struct driver_process *d = AP_CONTAINER_OF((uv_timer_t *)h, struct driver_process, timer);
    for (struct dp_inst *i = d->insts; i != NULL; i = i->next) {
        inst_untrack(i);
    }
    insts_sweep(d);
    /* Idle shims leave when their control socket closes; what has exited by now is reaped. */
    for (size_t k = 0; k < d->n_idle; k++) {
        idle_drop(&d->idle[k]);
    }
    d->n_idle = 0;
    children_reap(d);
    if (--d->open_handles == 0) {
        driver_free(d);
    }
}

void driver_process__close(struct driver_process *d, void (*cb)(void *data), void *data)
{
    AP_ASSERT(!d->closing);
    d->closing = true;
    d->close_cb = cb;
    d->close_data = data;
    /* docs/workloads.md: a shim with a spec goes on; the next driver adopts what it started. */
    while (d->starts != NULL) {
        ap_errmsg_set(d->errmsg, "start instance %s: driver closed", d->starts->id);
        start_done(d->starts, AP_ECANCELED, NULL);
    }
    uv_timer_stop(&d->timer);
    uv_close((uv_handle_t *)&d->timer, on_timer_closed);
}

uint64_t driver_process__log_dropped(const struct driver_process *d)
{
    return d->log_dropped;
}

const char *driver_process__errmsg(const struct driver_process *d)
{
    return d->errmsg;
}

/* ------------------------------------------------------------------------ */
/* Start, stop, remove.                                                      */

static int check_str(struct driver_process *d, const char *what, size_t index, const char *s,
                     size_t max)
{
    if (s == NULL) {
        ap_errmsg_set(d->errmsg, "%s[%zu] is NULL", what, index);
        return AP_EINVAL;
    }
    if (strlen(s) > max) {
        ap_errmsg_set(d->errmsg, "%s[%zu] is longer than %zu bytes", what, index, max);
        return AP_EINVAL;
    }
    return 0;
}

static int check_spec(struct driver_process *d, const struct driver_process_spec *spec)
{
    if (spec == NULL || spec->argv == NULL || spec->argc == 0 ||
        spec->argc > DRIVER_PROCESS_MAX_ARGS) {
        ap_errmsg_set(d->errmsg, "argv needs 1 to %d entries", DRIVER_PROCESS_MAX_ARGS);
        return AP_EINVAL;
    }
    for (size_t i = 0; i < spec->argc; i++) {
        int rc = check_str(d, "argv", i, spec->argv[i], DRIVER_PROCESS_STR_MAX);
        if (rc != 0) {
            return rc;
        }
    }
    if (spec->argv[0][0] == '\0') {
        ap_errmsg_set(d->errmsg, "argv[0] is empty");
        return AP_EINVAL;
    }
    if (spec->n_env > DRIVER_PROCESS_MAX_ENV || (spec->n_env > 0 && spec->env == NULL)) {
        ap_errmsg_set(d->errmsg, "env must be an array of at most %d entries",
                      DRIVER_PROCESS_MAX_ENV);
        return AP_EINVAL;
    }
    for (size_t i = 0; i < spec->n_env; i++) {
        int rc = check_str(d, "env", i, spec->env[i], DRIVER_PROCESS_STR_MAX);
        if (rc != 0) {
            return rc;
        }
        const char *eq = strchr(spec->env[i], '=');
        if (eq == NULL || eq == spec->env[i]) {
            ap_errmsg_set(d->errmsg, "env[%zu] is not NAME=value", i);
            return AP_EINVAL;
        }
    }
    if (spec->cwd != NULL && spec->cwd[0] != '\0' &&
        (spec->cwd[0] != '/' || strlen(spec->cwd) > DP_PATH_STR_MAX)) {
        ap_errmsg_set(d->errmsg, "cwd must be an absolute path of at most %d bytes",
                      DP_PATH_STR_MAX);
        return AP_EINVAL;
    }
    if ((spec->name != NULL && strlen(spec->name) > DP_NAME_MAX) ||
        (spec->tenant != NULL && strlen(spec->tenant) > DP_NAME_MAX)) {
        ap_errmsg_set(d->errmsg, "name and tenant are at most %d bytes", DP_NAME_MAX);
        return AP_EINVAL;
    }
    if (spec->cpu_millis < 0 || spec->cpu_millis > DRIVER_PROCESS_CPU_MILLIS_MAX ||
        spec->memory_mb < 0 || spec->memory_mb > DRIVER_PROCESS_MEMORY_MB_MAX) {
        ap_errmsg_set(d->errmsg, "cpu_millis must be within [0, %d] and memory_mb within [0, %d]",
                      DRIVER_PROCESS_CPU_MILLIS_MAX, DRIVER_PROCESS_MEMORY_MB_MAX);
        return AP_EINVAL;
    }
    if (spec->restart != DRIVER_PROCESS_RESTART_NEVER &&
        spec->restart != DRIVER_PROCESS_RESTART_ON_FAILURE &&
        spec->restart != DRIVER_PROCESS_RESTART_ALWAYS) {
        ap_errmsg_set(d->errmsg, "unknown restart policy %d", (int)spec->restart);
        return AP_EINVAL;
    }
    return 0;
}

static json_t *str_array(const char *const *v, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; a != NULL && i < n; i++) {
        json_t *s = json_string(v[i]);
        if (s == NULL || json_array_append_new(a, s) != 0) {
            json_decref(a);
            return NULL;
        }
    }
    return a;
}

/* spec.json (docs/workloads.md). NULL: out of memory or a string that is not UTF-8. */
static json_t *spec_to_json(struct driver_process *d, const char *id,
                            const struct driver_process_spec *spec)
{
    static const char *const restart_names[] = {"never", "on-failure", "always"};
    const char *name = spec->name != NULL ? spec->name : "";
    const char *hostname = valid_hostname(name) ? name : id;
    json_t *argv = str_array(spec->argv, spec->argc);
    json_t *env = str_array(spec->env, spec->n_env);
    if (argv == NULL || env == NULL) {
        json_decref(argv);
        json_decref(env);
        return NULL;
    }
    return json_pack("{s:i, s:s, s:s, s:s, s:o, s:o, s:s, s:s, s:I, s:I, s:s, s:I, s:I, s:b, s:s}",
                     "version", 1, "id", id, "name", name, "tenant",
                     spec->tenant != NULL ? spec->tenant : "", "argv", argv, "env", env, "cwd",
                     spec->cwd != NULL ? spec->cwd : "", "hostname", hostname, "cpu_millis",
                     (json_int_t)spec->cpu_millis, "memory_mb", (json_int_t)spec->memory_mb,
                     "restart", restart_names[spec->restart], "grace_ms", (json_int_t)d->grace_ms,
                     "log_max_bytes", (json_int_t)d->log_max, "namespaces", d->caps.namespaces,
                     "cgroup_parent", d->caps.cgroup_v2 ? d->caps.cgroup_parent : "");
}

/* "ERR <kind> <message>" (edge/shim/main.c, reply_send) into errmsg and an error code. */
static int reply_error(struct driver_process *d, const char *id, const char *line)
{
    const char *kind = line + 4;
    const char *msg = strchr(kind, ' ');
    size_t klen = msg != NULL ? (size_t)(msg - kind) : strlen(kind);
    msg = msg != NULL ? msg + 1 : "";
    char m[AP_ERRMSG_SIZE];
    ap_strlcpy(m, msg, sizeof m);
    m[strcspn(m, "\n")] = '\0';
    ap_errmsg_set(d->errmsg, "start instance %s: %s", id, m);
    if (klen == 4 && strncmp(kind, "busy", 4) == 0) {
        return AP_EEXIST;
    }
    if ((klen == 4 && strncmp(kind, "exec", 4) == 0) ||
        (klen == 4 && strncmp(kind, "spec", 4) == 0)) {
        return AP_EINVAL;
    }
    return AP_EIO;
}

/* Write all of buf to a non-blocking socket before deadline. Returns 0 or -1 with errno. */
static int send_all(int fd, const char *buf, size_t len, int64_t deadline)
{
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            buf += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno != EAGAIN && errno != EINTR) {
            return -1;
        }
        int64_t left = deadline - mono_ms();
        if (left <= 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        struct pollfd p = {fd, POLLOUT, 0};
        poll(&p, 1, (int)left);
    }
    return 0;
}

static void start_handle_closed(uv_handle_t *h)
{
    struct dp_start *ds = h->data;
    struct driver_process *d = ds->d;
    if (--ds->open_handles == 0) {
        ap_free(ds);
        if (--d->open_handles == 0 && d->closing) {
            driver_free(d);
        }
    }
}

/*
 * The start is over: report rc (and st when 0) to its callback, follow the
 * instance when it runs, and let go of the shim (it lives on as the
 * instance's supervisor, or has exited and is reaped later).
 */
static void start_done(struct dp_start *ds, int rc, const struct driver_process_status *st)
{
    struct driver_process *d = ds->d;
    for (struct dp_start **pp = &d->starts; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == ds) {
            *pp = ds->next;
            break;
        }
    }
    uv_poll_stop(&ds->poll);
    uv_timer_stop(&ds->timer);
    if (rc == 0) {
        inst_track(d, st, ds->sh.pidfd);
        ds->sh.pidfd = -1;
        AP_LOG(AP_LOG_INFO, "instance_started id=%s shim_pid=%d workload_pid=%d namespaces=%d",
               ds->id, st->shim_pid, st->workload_pid, st->isolation.pid_ns);
    } else if (rc != AP_ECANCELED) {
        AP_LOG(AP_LOG_WARN, "instance_start_failed id=%s err=\"%s\"", ds->id, d->errmsg);
    }
    uv_close((uv_handle_t *)&ds->poll, start_handle_closed);
    uv_close((uv_handle_t *)&ds->timer, start_handle_closed);
    /* The socket is closed after the poll handle stopped watching it. */
    idle_drop(&ds->sh);
    /* The next idle shim is spawned now, not while this one starts its workload. */
    tick_soon(d);
    if (ds->cb != NULL) {
        ds->cb(ds->data, ds->id, rc, rc == 0 ? st : NULL);
    }
    if (rc == 0 && ds->stop_after && driver_process__stop(d, ds->id) != 0) {
        AP_LOG(AP_LOG_WARN, "instance_stop_failed id=%s err=\"%s\"", ds->id, d->errmsg);
    }
}

/* The shim's answer line is complete (or the socket ended): decode it. */
static void start_answer(struct dp_start *ds, bool eof)
{
    struct driver_process *d = ds->d;
    char *nl = memchr(ds->reply, '\n', ds->used);
    if (nl == NULL && !eof) {
        return;
    }
    ds->reply[nl != NULL ? (size_t)(nl - ds->reply) : ds->used] = '\0';
    const char *line = ds->reply;
    if (strncmp(line, "ERR ", 4) == 0) {
        start_done(ds, reply_error(d, ds->id, line), NULL);
        return;
    }
    if (strncmp(line, "OK ", 3) != 0) {
        ap_errmsg_set(d->errmsg,
                      "start instance %s: shim %d ended without answering; see "
                      "%s/%s/shim.log",
                      ds->id, ds->sh.pid, d->inst_dir, ds->id);
        start_done(ds, AP_EIO, NULL);
        return;
    }
    struct driver_process_status st;
    int writer = 0;
    char msg[AP_ERRMSG_SIZE] = "";
    memset(&st, 0, sizeof st);
    if (status_decode(line + 3, strlen(line + 3), &st, &writer, msg) != 0) {
        ap_errmsg_set(d->errmsg, "start instance %s: shim answer: %s", ds->id, msg);
        start_done(ds, AP_EIO, NULL);
        return;
    }
    ap_strlcpy(st.id, ds->id, sizeof st.id);
    st.alive = true;
    start_done(ds, 0, &st);
}

static void on_start_readable(uv_poll_t *h, int status, int events)
{
    struct dp_start *ds = h->data;
    (void)events;
    bool eof = status < 0;
    while (!eof && ds->used + 1 < sizeof ds->reply) {
        ssize_t n =
            recv(ds->sh.ctl, ds->reply + ds->used, sizeof ds->reply - 1 - ds->used, MSG_DONTWAIT);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && errno == EAGAIN) {
            break;
        }
        if (n <= 0) {
            eof = true;
            break;
        }
        ds->used += (size_t)n;
    }
    start_answer(ds, eof || ds->used + 1 >= sizeof ds->reply);
}

static void on_start_timeout(uv_timer_t *t)
{
    struct dp_start *ds = t->data;
    struct driver_process *d = ds->d;
    /* It may be stuck with the instance half taken: end it; the instance then reads lost. */
    if (ds->sh.pidfd >= 0) {
        pidfd_signal_(ds->sh.pidfd, SIGKILL);
    }
    ap_errmsg_set(d->errmsg, "start instance %s: shim %d did not answer within %llu ms", ds->id,
                  ds->sh.pid, (unsigned long long)d->start_timeout_ms);
    start_done(ds, AP_ETIMEDOUT, NULL);
}

/*
 * Take a shim for a start: an idle one whose process still lives, else one
 * spawned now. Returns 0 with *sh, or AP_EIO with errmsg.
 */
static int shim_take(struct driver_process *d, struct dp_idle *sh)
{
    while (d->n_idle > 0) {
        *sh = d->idle[0];
        d->idle[0] = d->idle[--d->n_idle];
        if (sh->pidfd < 0 || !pidfd_exited(sh->pidfd)) {
            return 0;
        }
        AP_LOG(AP_LOG_WARN, "idle_shim_died pid=%d", sh->pid);
        idle_drop(sh);
    }
    return idle_spawn(d, sh);
}

int driver_process__start(struct driver_process *d, const char *id,
                          const struct driver_process_spec *spec, driver_process_start_cb cb,
                          void *data)
{
    int rc = check_id(d, id);
    if (rc != 0) {
        return rc;
    }
    if (d->closing) {
        ap_errmsg_set(d->errmsg, "driver closing");
        return AP_ESHUTDOWN;
    }
    rc = check_spec(d, spec);
    if (rc != 0) {
        ap_errmsg_wrap(d->errmsg, "start instance %s: spec", id);
        return rc;
    }
    /* docs/workloads.md: never a second shim for an instance (the shim's lock enforces it too). */
    char dir[PATH_MAX];
    inst_path(d, id, NULL, dir, sizeof dir);
    int holder;
    struct dp_start *busy = start_find(d, id);
    if (busy != NULL || (access(dir, F_OK) == 0 && shim_find(d, dir, &holder, NULL))) {
        ap_errmsg_set(d->errmsg, "start instance %s: already %s (shim pid %d)", id,
                      busy != NULL ? "starting" : "running", busy != NULL ? busy->sh.pid : holder);
        return AP_EEXIST;
    }
    json_t *js = spec_to_json(d, id, spec);
    if (js == NULL) {
        ap_errmsg_set(d->errmsg, "start instance %s: spec: out of memory or a string is not UTF-8",
                      id);
        return AP_EINVAL;
    }
    /* One message, "START <len>\n<spec>", sent with one system call: the shim wakes once. */
    enum { HEAD_MAX = 32 };
    size_t len = json_dumpb(js, NULL, 0, JSON_COMPACT);
    char *msg = len > 0 && len <= DRIVER_PROCESS_SPEC_MAX ? ap_malloc(HEAD_MAX + len) : NULL;
    if (msg == NULL) {
        json_decref(js);
        if (len > DRIVER_PROCESS_SPEC_MAX) {
            ap_errmsg_set(d->errmsg, "start instance %s: spec is %zu bytes, more than %d", id, len,
                          DRIVER_PROCESS_SPEC_MAX);
            return AP_ETOOBIG;
        }
        ap_errmsg_set(d->errmsg, "start instance %s: out of memory", id);
        return AP_ENOMEM;
    }
    int hl = snprintf(msg, HEAD_MAX, "START %zu\n", len);
    json_dumpb(js, msg + hl, len, JSON_COMPACT);
    json_decref(js);
    struct dp_start *ds = ap_calloc(1, sizeof *ds);
    if (ds == NULL) {
        ap_free(msg);
        ap_errmsg_set(d->errmsg, "start instance %s: out of memory", id);
        return AP_ENOMEM;
    }
    ds->d = d;
    ap_strlcpy(ds->id, id, sizeof ds->id);
    ds->cb = cb;
    ds->data = data;
    /* A shim that died after our check leaves EPIPE: a fresh one is tried, once. */
    for (int attempt = 0; attempt < 2; attempt++) {
        rc = shim_take(d, &ds->sh);
        if (rc != 0) {
            ap_errmsg_wrap(d->errmsg, "start instance %s", id);
            break;
        }
        int64_t deadline = mono_ms() + (int64_t)d->start_timeout_ms;
        if (send_all(ds->sh.ctl, msg, (size_t)hl + len, deadline) == 0) {
            rc = 0;
            break;
        }
        ap_errmsg_set(d->errmsg, "start instance %s: send to shim %d: %s", id, ds->sh.pid,
                      strerror(errno));
        rc = AP_EIO;
        idle_drop(&ds->sh);
    }
    ap_free(msg);
    if (rc != 0) {
        tick_soon(d);
        ap_free(ds);
        return rc;
    }
    int urc = uv_poll_init(d->loop, &ds->poll, ds->sh.ctl);
    if (urc != 0) {
        ap_errmsg_set(d->errmsg, "start instance %s: poll: %s", id, uv_strerror(urc));
        /* The shim has the spec: it starts the instance, which the next adopt finds. */
        idle_drop(&ds->sh);
        ap_free(ds);
        return ap_err_from_uv(urc);
    }
    uv_timer_init(d->loop, &ds->timer);
    ds->poll.data = ds;
    ds->timer.data = ds;
    ds->open_handles = 2;
    d->open_handles++;
    uv_poll_start(&ds->poll, UV_READABLE | UV_DISCONNECT, on_start_readable);
    uv_timer_start(&ds->timer, on_start_timeout, d->start_timeout_ms, 0);
    ds->next = d->starts;
    d->starts = ds;
    return 0;
}

int driver_process__stop(struct driver_process *d, const char *id)
{
    int rc = check_id(d, id);
    if (rc != 0) {
        return rc;
    }
    struct dp_start *ds = start_find(d, id);
    if (ds != NULL) {
        /* Signalling a shim that has not taken the start yet would end it without an answer:
         * the stop waits for the answer (start_done), then goes as for any running instance. */
        ds->stop_after = true;
        AP_LOG(AP_LOG_INFO, "instance_stop_requested id=%s shim_pid=%d starting=1", id, ds->sh.pid);
        return 0;
    }
    struct driver_process_status st;
    rc = driver_process__status(d, id, &st);
    if (rc != 0) {
        return rc;
    }
    if (!st.alive) {
        return 0;
    }
    char dir[PATH_MAX];
    inst_path(d, id, NULL, dir, sizeof dir);
    int pid;
    int fd = -1;
    if (!shim_find(d, dir, &pid, &fd)) {
        return 0; /* it ended in between */
    }
    bool exiting = false;
    if (fd < 0 && pid > 0 && !cmdline_is_shim(pid, d->inst_dir, dir, &exiting) && exiting) {
        return 0; /* it is ending anyway */
    }
    if (fd < 0 && (pid <= 0 || !cmdline_is_shim(pid, d->inst_dir, dir, NULL))) {
        ap_errmsg_set(d->errmsg, "stop instance %s: its lock holder (pid %d) is not a shim of ours",
                      id, pid);
        return AP_EIO;
    }
    /* The pidfd pins the process we checked, so a recycled pid is never signalled. */
    int src = fd >= 0 ? pidfd_signal_(fd, SIGTERM) : kill(pid, SIGTERM);
    int e = errno;
    if (fd >= 0) {
        close(fd);
    }
    if (src != 0 && e != ESRCH) {
        ap_errmsg_set(d->errmsg, "stop instance %s: signal shim %d: %s", id, pid, strerror(e));
        return AP_EIO;
    }
    AP_LOG(AP_LOG_INFO, "instance_stop_requested id=%s shim_pid=%d", id, pid);
    return 0;
}

int driver_process__remove(struct driver_process *d, const char *id)
{
    int rc = check_id(d, id);
    if (rc != 0) {
        return rc;
    }
    struct driver_process_status st;
    rc = driver_process__status(d, id, &st);
    if (rc == AP_ENOTFOUND) {
        return rc;
    }
    if (rc == 0 && st.alive) {
        ap_errmsg_set(d->errmsg, "remove instance %s: still running (shim pid %d)", id,
                      st.shim_pid);
        return AP_EBUSY;
    }
    /* A corrupt status.json does not prevent removal: there is no live shim to find anyway. */
    char dir[PATH_MAX];
    inst_path(d, id, NULL, dir, sizeof dir);
    DIR *dh = opendir(dir);
    if (dh == NULL) {
        ap_errmsg_set(d->errmsg, "remove instance %s: %s", id, strerror(errno));
        return err_from_errno(errno);
    }
    int dfd = dirfd(dh);
    struct dirent *e;
    while ((e = readdir(dh)) != NULL) {
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) {
            unlinkat(dfd, e->d_name, 0);
        }
    }
    closedir(dh);
    if (rmdir(dir) != 0) {
        ap_errmsg_set(d->errmsg, "remove instance %s: rmdir: %s", id, strerror(errno));
        return AP_EIO;
    }
    struct dp_inst *i = inst_find(d, id);
    if (i != NULL) {
        inst_untrack(i);
        if (!d->in_tick) {
            insts_sweep(d);
        }
    }
    AP_LOG(AP_LOG_INFO, "instance_removed id=%s", id);
    return 0;
}

int driver_process__adopt_all(struct driver_process *d, driver_process_adopt_cb cb, void *data)
{
    DIR *dh = opendir(d->inst_dir);
    if (dh == NULL) {
        ap_errmsg_set(d->errmsg, "adopt: opendir %s: %s", d->inst_dir, strerror(errno));
        return err_from_errno(errno);
    }
    int count = 0;
    struct dirent *e;
    while ((e = readdir(dh)) != NULL) {
        if (e->d_name[0] == '.') {
            continue; /* ".", "..", and idle shims' spare directories */
        }
        if (!valid_id(e->d_name)) {
            AP_LOG(AP_LOG_WARN, "adopt_skipped entry=\"%.80s\" reason=invalid_id", e->d_name);
            continue;
        }
        char id[DRIVER_PROCESS_ID_MAX + 1];
        ap_strlcpy(id, e->d_name, sizeof id);
        struct driver_process_status st;
        struct stat fst;
        bool have_file;
        int rc = status_read(d, id, &st, &fst, &have_file);
        if (rc != 0) {
            AP_LOG(AP_LOG_WARN, "adopt_skipped id=%s err=\"%s\"", id, d->errmsg);
            continue;
        }
        if (st.alive) {
            struct dp_inst *i = inst_track(d, &st, -1);
            if (i != NULL) {
                inst_note_file(i, have_file, &fst);
            }
        }
        AP_LOG(AP_LOG_INFO, "instance_adopt id=%s alive=%d state=%s shim_pid=%d", id, st.alive,
               driver_process__state_name(st.state), st.shim_pid);
        count++;
        if (cb != NULL) {
            cb(data, &st);
        }
    }
    closedir(dh);
    return count;
}

/* ------------------------------------------------------------------------ */
/* Logs.                                                                     */

/* Read the last want bytes of fd into dst; returns how many were read. */
static size_t read_tail(int fd, char *dst, size_t want)
{
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || st.st_size <= 0) {
        return 0;
    }
    size_t size = (size_t)st.st_size;
    size_t n = size < want ? size : want;
    off_t off = (off_t)(size - n);
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, dst + got, n - got, off + (off_t)got);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            break;
        }
        got += (size_t)r;
    }
    return got;
}

int driver_process__logs(struct driver_process *d, const char *id,
                         enum driver_process_stream stream, size_t max_bytes, char **buf,
                         size_t *len)
{
    int rc = check_id(d, id);
    if (rc != 0) {
        return rc;
    }
    if (stream != DRIVER_PROCESS_STDOUT && stream != DRIVER_PROCESS_STDERR) {
        ap_errmsg_set(d->errmsg, "logs: unknown stream %d", (int)stream);
        return AP_EINVAL;
    }
    char dir[PATH_MAX];
    inst_path(d, id, NULL, dir, sizeof dir);
    struct stat dst;
    if (stat(dir, &dst) != 0 || !S_ISDIR(dst.st_mode)) {
        ap_errmsg_set(d->errmsg, "instance %s not found", id);
        return AP_ENOTFOUND;
    }
    if (max_bytes > DRIVER_PROCESS_LOGS_MAX) {
        max_bytes = DRIVER_PROCESS_LOGS_MAX;
    }
    const char *name = stream == DRIVER_PROCESS_STDOUT ? "stdout.log" : "stderr.log";
    const char *old = stream == DRIVER_PROCESS_STDOUT ? "stdout.log.1" : "stderr.log.1";
    char path[PATH_MAX];
    /*
     * Open the current file, then the rotated one: if a rotation happened in
     * between, both are the same file and the old one is dropped. Once both
     * are open, later rotations do not change what we read.
     */
    inst_path(d, id, name, path, sizeof path);
    int cur = open(path, O_RDONLY | O_CLOEXEC);
    inst_path(d, id, old, path, sizeof path);
    int prev = open(path, O_RDONLY | O_CLOEXEC);
    struct stat cs, ps;
    if (cur >= 0 && prev >= 0 && fstat(cur, &cs) == 0 && fstat(prev, &ps) == 0 &&
        cs.st_ino == ps.st_ino && cs.st_dev == ps.st_dev) {
        close(prev);
        prev = -1;
    }
    char *out = ap_malloc(max_bytes + 1);
    if (out == NULL) {
        if (cur >= 0) {
            close(cur);
        }
        if (prev >= 0) {
            close(prev);
        }
        ap_errmsg_set(d->errmsg, "logs: out of memory");
        return AP_ENOMEM;
    }
    /* The current file's tail goes last; what is left of the budget comes from the old one. */
    size_t cur_size = 0;
    if (cur >= 0 && fstat(cur, &cs) == 0 && cs.st_size > 0) {
        cur_size = (size_t)cs.st_size < max_bytes ? (size_t)cs.st_size : max_bytes;
    }
    size_t from_old = read_tail(prev, out, max_bytes - cur_size);
    size_t from_cur = read_tail(cur, out + from_old, cur_size);
    if (cur >= 0) {
        close(cur);
    }
    if (prev >= 0) {
        close(prev);
    }
    out[from_old + from_cur] = '\0';
    *buf = out;
    *len = from_old + from_cur;
    return 0;
}
