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
#define DP_READY_LINE_MAX   512
#define DP_PROBE_OUT_MAX    2048
#define DP_NAME_MAX         255
#define DP_PATH_STR_MAX     1024
#define DP_HOSTNAME_MAX     63
#define DP_DEFAULT_PATH_ENV "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

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

struct driver_process {
    uv_loop_t *loop;
    uv_timer_t timer;
    char *data_dir; /* absolute and canonical: it is compared with shims' cmdlines */
    char *inst_dir; /* data_dir/instances */
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

static bool valid_id(const char *id)
{
    if (id == NULL) {
        return false;
    }
    size_t n = strlen(id);
    if (n == 0 || n > DRIVER_PROCESS_ID_MAX || strcmp(id, ".") == 0 || strcmp(id, "..") == 0) {
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

/*
 * Replace a file atomically: temporary file, rename (and fsync first when
 * durable), so a reader sees the old or the new content, never a mix.
 */
static int write_atomic(const char *path, const char *data, size_t len, bool durable, char *errmsg)
{
    char tmp[PATH_MAX];
    int n = snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if (n < 0 || (size_t)n >= sizeof tmp) {
        ap_errmsg_set(errmsg, "path too long");
        return AP_EINVAL;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        ap_errmsg_set(errmsg, "open %s: %s", tmp, strerror(errno));
        return err_from_errno(errno);
    }
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, data + off, len - off);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w < 0) {
            int e = errno;
            ap_errmsg_set(errmsg, "write %s: %s", tmp, strerror(e));
            close(fd);
            unlink(tmp);
            return err_from_errno(e);
        }
        off += (size_t)w;
    }
    if (durable && fsync(fd) != 0) {
        int e = errno;
        ap_errmsg_set(errmsg, "fsync %s: %s", tmp, strerror(e));
        close(fd);
        unlink(tmp);
        return err_from_errno(e);
    }
    close(fd);
    if (rename(tmp, path) != 0) {
        int e = errno;
        ap_errmsg_set(errmsg, "rename %s: %s", tmp, strerror(e));
        unlink(tmp);
        return err_from_errno(e);
    }
    return 0;
}

/*
 * Whether pid runs `archipel-shim ... --dir <dir> ...`. A zombie's cmdline
 * is empty, so a dead shim not yet reaped by init reads as not ours.
 */
static bool cmdline_is_shim(int pid, const char *dir)
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
    bool name_ok = false;
    bool dir_ok = false;
    const char *prev = NULL;
    for (size_t off = 0; off < len;) {
        const char *arg = buf + off;
        size_t al = strnlen(arg, len - off);
        if (off == 0) {
            const char *base = strrchr(arg, '/');
            name_ok = strstr(base != NULL ? base + 1 : arg, "archipel-shim") != NULL;
        } else if (prev != NULL && strcmp(prev, "--dir") == 0 && strcmp(arg, dir) == 0) {
            dir_ok = true;
        }
        if (off + al >= len) {
            break; /* cut at the buffer's end: not a complete argument */
        }
        prev = arg;
        off += al + 1;
    }
    return name_ok && dir_ok;
}

/*
 * Whether shim pid is alive and ours for dir. When pidfd is not NULL and it
 * is, *pidfd gets a pidfd for it (-1 where pidfds are unsupported), which
 * the caller closes.
 */
static bool shim_alive(int pid, const char *dir, int *pidfd)
{
    if (pid <= 0) {
        return false;
    }
    int fd = pidfd_open_(pid);
    if (fd < 0 && errno == ESRCH) {
        return false;
    }
    /* Checked after the pidfd is open, so the pidfd refers to the process we checked. */
    bool ok = cmdline_is_shim(pid, dir);
    if (ok && fd >= 0) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 0) > 0) {
            ok = false; /* exited in between */
        }
    }
    if (ok && pidfd != NULL) {
        *pidfd = fd;
    } else if (fd >= 0) {
        close(fd);
    }
    return ok;
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
 * fields are ignored, so a newer shim's file still reads. Errors:
 * AP_ECORRUPT with errmsg.
 */
static int status_decode(const char *text, size_t len, struct driver_process_status *st,
                         char *errmsg)
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
        json_int_or_null(root, "updated_at_ms", 0, INT64_MAX, &st->updated_at_ms, 0, errmsg) != 0) {
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

/* Fill st for instance id; *file_st gets status.json's stat when it exists. */
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
    inst_path(d, id, "status.json", path, sizeof path);
    char *text = NULL;
    size_t len = 0;
    int rc = read_file(path, DP_STATUS_MAX, &text, &len, file_st);
    if (rc == AP_ENOTFOUND) {
        /* No shim ever recorded anything (or the daemon died before it could). */
        st->state = DRIVER_PROCESS_LOST;
        ap_strlcpy(st->error, "no status.json: the shim never started", sizeof st->error);
        return 0;
    }
    if (rc != 0) {
        ap_errmsg_set(d->errmsg, "instance %s: read status.json: %s", id, ap_strerror(rc));
        return rc == AP_ETOOBIG ? AP_ECORRUPT : rc;
    }
    *have_file = true;
    if (len == 0) {
        /* Shims never write an empty file: a power loss tore the last write. Nothing runs. */
        ap_free(text);
        st->state = DRIVER_PROCESS_LOST;
        ap_strlcpy(st->error, "status.json is empty (torn by a crash)", sizeof st->error);
        return 0;
    }
    char msg[AP_ERRMSG_SIZE] = "";
    rc = status_decode(text, len, st, msg);
    ap_free(text);
    if (rc != 0) {
        ap_errmsg_set(d->errmsg, "instance %s: status.json: %s", id, msg);
        return rc;
    }
    st->alive = shim_alive(st->shim_pid, dir, NULL);
    if (!st->alive) {
        bool unfinished = st->state == DRIVER_PROCESS_STARTING ||
                          st->state == DRIVER_PROCESS_RUNNING ||
                          (st->state == DRIVER_PROCESS_EXITED && st->shim_pid != 0);
        if (unfinished) {
            /* docs/workloads.md: the shim died without a last word; its workload died with it. */
            if (st->error[0] == '\0') {
                snprintf(st->error, sizeof st->error, "shim %d is gone", st->shim_pid);
            }
            st->state = DRIVER_PROCESS_LOST;
        }
        st->shim_pid = st->child_pid = st->workload_pid = 0;
    }
    return 0;
}

int driver_process__status(struct driver_process *d, const char *id,
                           struct driver_process_status *st)
{
    int rc = check_id(d, id);
    if (rc != 0) {
        return rc;
    }
    struct stat fst;
    bool have_file;
    return status_read(d, id, st, &fst, &have_file);
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
    return json_pack("{s:s, s:s, s:b, s:o, s:o, s:o, s:o, s:o, s:I, s:I, s:I, s:I, s:o, "
                     "s:{s:b, s:b, s:b, s:o, s:b, s:b}}",
                     "id", st->id, "state", driver_process__state_name(st->state), "alive",
                     st->alive, "shim_pid", pid, "child_pid", child, "workload_pid", wl,
                     "exit_code", code, "signal", sig, "restarts", (json_int_t)st->restarts,
                     "backoff_ms", (json_int_t)st->backoff_ms, "started_at_ms",
                     (json_int_t)st->started_at_ms, "updated_at_ms", (json_int_t)st->updated_at_ms,
                     "error", err, "isolation", "pid_ns", is->pid_ns, "mount_ns", is->mount_ns,
                     "uts_ns", is->uts_ns, "cgroup", cg, "memory_limit", is->memory_limit,
                     "cpu_limit", is->cpu_limit);
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

/* Follow instance st->id from now on, with st as the last state reported. */
static void inst_track(struct driver_process *d, const struct driver_process_status *st)
{
    struct dp_inst *old = inst_find(d, st->id);
    if (old != NULL) {
        inst_untrack(old);
    }
    struct dp_inst *i = ap_calloc(1, sizeof *i);
    if (i == NULL) {
        /* Not followed: status calls still work; only events are missed. */
        AP_LOG(AP_LOG_WARN, "instance_untracked id=%s reason=out_of_memory", st->id);
        return;
    }
    ap_strlcpy(i->id, st->id, sizeof i->id);
    i->pidfd = -1;
    i->last = *st;
    char dir[PATH_MAX];
    if (st->alive && inst_path(d, st->id, NULL, dir, sizeof dir) == 0) {
        int fd = -1;
        if (shim_alive(st->shim_pid, dir, &fd)) {
            i->pidfd = fd;
        }
    }
    i->next = d->insts;
    d->insts = i;
    if (!d->in_tick) {
        insts_sweep(d);
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

static void poll_one(struct driver_process *d, struct dp_inst *i)
{
    char path[PATH_MAX];
    bool exited = false;
    if (i->pidfd >= 0) {
        struct pollfd p = {i->pidfd, POLLIN, 0};
        exited = poll(&p, 1, 0) > 0;
    }
    if (i->pidfd >= 0 && !exited && i->have_file &&
        inst_path(d, i->id, "status.json", path, sizeof path) == 0) {
        struct stat fst;
        if (stat(path, &fst) == 0 && fst.st_ino == i->ino && fst.st_size == i->size &&
            fst.st_mtim.tv_sec == i->mtime.tv_sec && fst.st_mtim.tv_nsec == i->mtime.tv_nsec) {
            return; /* nothing new */
        }
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
    i->have_file = have_file;
    if (have_file) {
        i->ino = fst.st_ino;
        i->size = fst.st_size;
        i->mtime = fst.st_mtim;
    }
    bool changed = status_changed(&i->last, &st);
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

static void on_timer(uv_timer_t *t)
{
    struct driver_process *d = AP_CONTAINER_OF(t, struct driver_process, timer);
    d->in_tick = true;
    for (struct dp_inst *i = d->insts; i != NULL && !d->closing; i = i->next) {
        if (!i->dead) {
            poll_one(d, i);
        }
    }
    d->in_tick = false;
    insts_sweep(d);
}

/* ------------------------------------------------------------------------ */
/* Spawning the shim.                                                        */

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
 * Run the shim with argv, its descriptor target_fd (1 or 3) being a pipe to
 * us, and read what it writes until EOF, a newline when until_newline, or
 * timeout_ms. The spawned process is reaped (it exits at once after
 * detaching, or after probing). Returns 0 with out NUL-terminated and
 * *exit_status set, else AP_ETIMEDOUT / AP_EIO with errmsg.
 */
static int shim_run(struct driver_process *d, char *const argv[], int target_fd, bool until_newline,
                    uint64_t timeout_ms, char *out, size_t out_size, int *exit_status)
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
    if (target_fd == 1) {
        posix_spawn_file_actions_adddup2(&fa, p[1], 1);
    } else {
        posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
        posix_spawn_file_actions_adddup2(&fa, p[1], target_fd);
    }
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    /* The shim starts with default signal dispositions and nothing blocked, whatever the daemon
     * does. */
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
    for (;;) {
        if (until_newline && memchr(out, '\n', used) != NULL) {
            break;
        }
        if (used + 1 >= out_size) {
            break;
        }
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
    int rc = shim_run(d, argv, 1, false, DP_PROBE_TIMEOUT_MS, out, sizeof out, &status);
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
    if (strlen(d->inst_dir) + DRIVER_PROCESS_ID_MAX + 32 >= PATH_MAX / 2) {
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
    if (d->on_event != NULL) {
        uv_timer_start(&d->timer, on_timer, d->poll_ms, d->poll_ms);
    }
    AP_LOG(AP_LOG_INFO,
           "driver_process_ready data_dir=%s namespaces=%d cgroup=%s memory_limit=%d cpu_limit=%d",
           d->data_dir, d->caps.namespaces, d->caps.cgroup_v2 ? d->caps.cgroup_parent : "none",
           d->caps.memory_limit, d->caps.cpu_limit);
    *out = d;
    return 0;

err_after_alloc:
    ap_free(d->data_dir);
    ap_free(d->inst_dir);
    ap_free(d->shim_path);
    ap_free(d);
    return rc;
}

static void on_timer_closed(uv_handle_t *h)
{
    struct driver_process *d = AP_CONTAINER_OF((uv_timer_t *)h, struct driver_process, timer);
    for (struct dp_inst *i = d->insts; i != NULL; i = i->next) {
        inst_untrack(i);
    }
    insts_sweep(d);
    void (*cb)(void *) = d->close_cb;
    void *data = d->close_data;
    ap_free(d->data_dir);
    ap_free(d->inst_dir);
    ap_free(d->shim_path);
    ap_free(d);
    if (cb != NULL) {
        cb(data);
    }
}

void driver_process__close(struct driver_process *d, void (*cb)(void *data), void *data)
{
    AP_ASSERT(!d->closing);
    d->closing = true;
    d->close_cb = cb;
    d->close_data = data;
    uv_timer_stop(&d->timer);
    uv_close((uv_handle_t *)&d->timer, on_timer_closed);
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

static int ready_error(struct driver_process *d, const char *id, const char *line)
{
    /* "ERR <kind> <message>" (edge/shim/main.c, ready_send). */
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

int driver_process__start(struct driver_process *d, const char *id,
                          const struct driver_process_spec *spec)
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
    char dir[PATH_MAX];
    char path[PATH_MAX];
    inst_path(d, id, NULL, dir, sizeof dir);
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        ap_errmsg_set(d->errmsg, "start instance %s: mkdir %s: %s", id, dir, strerror(errno));
        return err_from_errno(errno);
    }
    /* docs/workloads.md: never a second shim for an instance. */
    struct driver_process_status cur;
    struct stat fst;
    bool have_file;
    if (status_read(d, id, &cur, &fst, &have_file) == 0 && cur.alive) {
        ap_errmsg_set(d->errmsg, "start instance %s: already running (shim pid %d)", id,
                      cur.shim_pid);
        return AP_EEXIST;
    }
    json_t *js = spec_to_json(d, id, spec);
    if (js == NULL) {
        ap_errmsg_set(d->errmsg, "start instance %s: spec: out of memory or a string is not UTF-8",
                      id);
        return AP_EINVAL;
    }
    char *text = json_dumps(js, JSON_COMPACT);
    json_decref(js);
    if (text == NULL) {
        ap_errmsg_set(d->errmsg, "start instance %s: out of memory", id);
        return AP_ENOMEM;
    }
    size_t len = strlen(text);
    if (len > DRIVER_PROCESS_SPEC_MAX) {
        free(text);
        ap_errmsg_set(d->errmsg, "start instance %s: spec is %zu bytes, more than %d", id, len,
                      DRIVER_PROCESS_SPEC_MAX);
        return AP_ETOOBIG;
    }
    inst_path(d, id, "spec.json", path, sizeof path);
    /*
     * Not fsynced: the daemon's shard is the source of truth and every start
     * rewrites this file; an fsync here would dominate start latency.
     */
    rc = write_atomic(path, text, len, false, d->errmsg);
    free(text);
    if (rc != 0) {
        ap_errmsg_wrap(d->errmsg, "start instance %s", id);
        return rc;
    }
    /* A status left by an earlier shim must not be mistaken for the new one's. */
    inst_path(d, id, "status.json", path, sizeof path);
    if (unlink(path) != 0 && errno != ENOENT) {
        ap_errmsg_set(d->errmsg, "start instance %s: unlink %s: %s", id, path, strerror(errno));
        return err_from_errno(errno);
    }
    char *argv[] = {d->shim_path, (char *)"--dir", dir, (char *)"--ready-fd", (char *)"3", NULL};
    char line[DP_READY_LINE_MAX];
    int status;
    rc = shim_run(d, argv, 3, true, d->start_timeout_ms, line, sizeof line, &status);
    if (rc != 0) {
        ap_errmsg_wrap(d->errmsg, "start instance %s", id);
        return rc;
    }
    if (strncmp(line, "ERR ", 4) == 0) {
        rc = ready_error(d, id, line);
        AP_LOG(AP_LOG_WARN, "instance_start_failed id=%s err=\"%s\"", id, d->errmsg);
        return rc;
    }
    if (strncmp(line, "OK ", 3) != 0) {
        ap_errmsg_set(
            d->errmsg,
            "start instance %s: shim exited (status %d) without reporting; see %s/shim.log", id,
            status, dir);
        return AP_EIO;
    }
    rc = status_read(d, id, &cur, &fst, &have_file);
    if (rc != 0) {
        ap_errmsg_wrap(d->errmsg, "start instance %s", id);
        return rc;
    }
    inst_track(d, &cur);
    struct dp_inst *i = inst_find(d, id);
    if (i != NULL && have_file) {
        i->have_file = true;
        i->ino = fst.st_ino;
        i->size = fst.st_size;
        i->mtime = fst.st_mtim;
    }
    AP_LOG(AP_LOG_INFO, "instance_started id=%s shim_pid=%d workload_pid=%d namespaces=%d", id,
           cur.shim_pid, cur.workload_pid, cur.isolation.pid_ns);
    return 0;
}

int driver_process__stop(struct driver_process *d, const char *id)
{
    int rc = check_id(d, id);
    if (rc != 0) {
        return rc;
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
    int fd = -1;
    if (!shim_alive(st.shim_pid, dir, &fd)) {
        return 0; /* it ended in between */
    }
    /* The pidfd pins the process we checked, so a recycled pid is never signalled. */
    int src = fd >= 0 ? pidfd_signal_(fd, SIGTERM) : kill(st.shim_pid, SIGTERM);
    int e = errno;
    if (fd >= 0) {
        close(fd);
    }
    if (src != 0 && e != ESRCH) {
        ap_errmsg_set(d->errmsg, "stop instance %s: signal shim %d: %s", id, st.shim_pid,
                      strerror(e));
        return AP_EIO;
    }
    AP_LOG(AP_LOG_INFO, "instance_stop_requested id=%s shim_pid=%d", id, st.shim_pid);
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
        if (e->d_name[0] == '.' && (e->d_name[1] == '\0' || strcmp(e->d_name, "..") == 0)) {
            continue;
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
            inst_track(d, &st);
            struct dp_inst *i = inst_find(d, id);
            if (i != NULL && have_file) {
                i->have_file = true;
                i->ino = fst.st_ino;
                i->size = fst.st_size;
                i->mtime = fst.st_mtim;
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
