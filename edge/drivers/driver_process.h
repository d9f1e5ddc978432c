/* driver_process: runs instances as supervised processes through archipel-shim (docs/workloads.md).
 */
#ifndef EDGE_DRIVER_PROCESS_H
#define EDGE_DRIVER_PROCESS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct driver_process;

/**
 * Longest instance id: 1 to 64 of [A-Za-z0-9._-] (a UUIDv7 fits), not starting with '.'
 * (DATA/instances/.idle-<pid> are the idle shims' spare directories).
 */
#define DRIVER_PROCESS_ID_MAX 64
/** Most argv entries, and most env entries, of a spec. */
#define DRIVER_PROCESS_MAX_ARGS 256
#define DRIVER_PROCESS_MAX_ENV  256
/** Longest single argv or env string. */
#define DRIVER_PROCESS_STR_MAX (32 * 1024)
/** Largest encoded spec.json; the shim refuses anything bigger. */
#define DRIVER_PROCESS_SPEC_MAX (256 * 1024)
/** Largest cpu_millis (1000 CPUs) and memory_mb (16 TiB) a spec may ask for. */
#define DRIVER_PROCESS_CPU_MILLIS_MAX 1000000
#define DRIVER_PROCESS_MEMORY_MB_MAX  16777216
/** Longest tail driver_process__logs() returns. */
#define DRIVER_PROCESS_LOGS_MAX (16 * 1024 * 1024)
/** Room for a path or a message in the structs below. */
#define DRIVER_PROCESS_TEXT_MAX 256

/* Defaults used when the config leaves a field at 0 (or NULL). */
#define DRIVER_PROCESS_DEFAULT_POLL_MS          500
#define DRIVER_PROCESS_DEFAULT_START_TIMEOUT_MS 5000
#define DRIVER_PROCESS_DEFAULT_GRACE_MS         5000
#define DRIVER_PROCESS_DEFAULT_LOG_MAX_BYTES    (1024 * 1024)
#define DRIVER_PROCESS_DEFAULT_CGROUP_PARENT    "/sys/fs/cgroup/archipel"
#define DRIVER_PROCESS_DEFAULT_IDLE_SHIMS       1
/** Most idle shims a driver keeps. */
#define DRIVER_PROCESS_IDLE_SHIMS_MAX 8

/** When the shim restarts a workload that exited. */
enum driver_process_restart {
    DRIVER_PROCESS_RESTART_NEVER,
    DRIVER_PROCESS_RESTART_ON_FAILURE, /* non-zero exit or killed by a signal */
    DRIVER_PROCESS_RESTART_ALWAYS,
};

/**
 * An instance's state as the driver sees it. The first five are what the
 * shim records in status.json; LOST is the driver's: the shim is gone without
 * having recorded an end (killed with SIGKILL, host rebooted), so nothing runs.
 */
enum driver_process_state {
    DRIVER_PROCESS_STARTING,
    DRIVER_PROCESS_RUNNING,
    DRIVER_PROCESS_EXITED, /* exited; alive means a restart is pending (back-off) */
    DRIVER_PROCESS_FAILED, /* could not start: bad spec, exec or chdir failed */
    DRIVER_PROCESS_STOPPED,
    DRIVER_PROCESS_LOST,
};

enum driver_process_stream {
    DRIVER_PROCESS_STDOUT,
    DRIVER_PROCESS_STDERR,
};

/** What to run. Every pointer is borrowed for the duration of the call. */
struct driver_process_spec {
    const char *name;   /* optional; also the workload's host name when it is a valid one */
    const char *tenant; /* optional, recorded in spec.json */
    const char *const *argv;
    size_t argc;            /* 1 .. DRIVER_PROCESS_MAX_ARGS */
    const char *const *env; /* "NAME=value" entries; PATH defaults to the usual one */
    size_t n_env;           /* 0 .. DRIVER_PROCESS_MAX_ENV */
    const char *cwd;        /* absolute, or NULL for "/" */
    int64_t cpu_millis;     /* 0: no limit */
    int64_t memory_mb;      /* 0: no limit */
    enum driver_process_restart restart;
};

/** The isolation in effect for one instance (status.json "isolation"). */
struct driver_process_isolation {
    bool pid_ns;
    bool mount_ns;
    bool uts_ns;
    char cgroup[DRIVER_PROCESS_TEXT_MAX]; /* the instance's cgroup v2 group, "" when none */
    bool memory_limit;
    bool cpu_limit;
};

/** One instance's status: status.json plus a liveness check of its shim. */
struct driver_process_status {
    char id[DRIVER_PROCESS_ID_MAX + 1];
    enum driver_process_state state;
    bool alive;         /* its shim runs (checked: it holds the instance's shim.lock) */
    int shim_pid;       /* 0 when none */
    int child_pid;      /* the shim's child: the namespace's init, or the workload; 0 when none */
    int workload_pid;   /* the exec'd command as seen from the host; 0 when none */
    int exit_code;      /* of the last run; -1 when none or killed by a signal */
    int signal;         /* that killed the last run; 0 when none */
    int64_t restarts;   /* restarts done by this shim */
    int64_t backoff_ms; /* delay before the last or pending restart */
    int64_t started_at_ms;               /* wall clock of the current or last run's start */
    int64_t updated_at_ms;               /* wall clock of the shim's last write */
    char error[DRIVER_PROCESS_TEXT_MAX]; /* why it failed, "" when nothing failed */
    int64_t log_dropped_bytes; /* output this shim could not write to the logs (disk full) */
    struct driver_process_isolation isolation;
};

/** What isolation this host gives workloads (a site capability). */
struct driver_process_caps {
    bool pid_ns;
    bool mount_ns;
    bool uts_ns;
    bool namespaces; /* all three together, and in use (not disabled by config) */
    bool cgroup_v2;  /* the cgroup parent is a usable cgroup v2 group */
    char cgroup_parent[DRIVER_PROCESS_TEXT_MAX]; /* "" when no cgroup is used */
    bool memory_limit;                           /* memory.max can be set for instances */
    bool cpu_limit;                              /* cpu.max can be set for instances */
    char detail[DRIVER_PROCESS_TEXT_MAX];        /* why something is missing, "" when all works */
};

/**
 * Fires on the loop thread when a tracked instance changes (state, restarts,
 * pids, exit, error, liveness). st is borrowed for the call. The callback may
 * call any driver function except driver_process__close().
 */
typedef void (*driver_process_event_cb)(void *data, const struct driver_process_status *st);

/** Fires once per instance during driver_process__adopt_all(); st is borrowed. */
typedef void (*driver_process_adopt_cb)(void *data, const struct driver_process_status *st);

/**
 * Fires once, on the loop thread, for every driver_process__start() that
 * returned 0: rc is 0 when the workload exec'd (st: its status, "running";
 * the instance is followed from then on), AP_EINVAL when it could not start
 * (exec or chdir failed, the message in driver_process__errmsg(); status.json
 * says "failed"), AP_EEXIST (another shim holds the instance), AP_ETIMEDOUT,
 * AP_EIO, or AP_ECANCELED when the driver closed first (the shim goes on;
 * the next driver adopts what it started). st is borrowed, NULL unless rc is
 * 0. The callback may call any driver function except driver_process__close().
 */
typedef void (*driver_process_start_cb)(void *data, const char *id, int rc,
                                        const struct driver_process_status *st);

struct driver_process_config {
    uv_loop_t *loop;
    const char *data_dir;      /* must exist; instances live in DATA/instances/<id>/ */
    const char *shim_path;     /* the archipel-shim executable */
    const char *cgroup_parent; /* NULL: DRIVER_PROCESS_DEFAULT_CGROUP_PARENT; "": no cgroups */
    bool no_namespaces;        /* run workloads as plain processes even where namespaces work */
    uint64_t poll_ms;          /* status poll period; 0: default */
    uint64_t start_timeout_ms; /* how long start waits for the shim's report; 0: default */
    uint64_t stop_grace_ms;    /* SIGTERM to SIGKILL; 0: default */
    uint64_t log_max_bytes;    /* cap of each log file (one rotated copy kept); 0: default */
    unsigned idle_shims;       /* shims kept spawned and prepared for the next starts
                                  (docs/workloads.md); 0: default, at most
                                  DRIVER_PROCESS_IDLE_SHIMS_MAX */
    bool spawn_on_start;       /* keep no idle shim: spawn one per start (slower) */
    driver_process_event_cb on_event; /* may be NULL: then nothing is polled */
    void *data;
};

/**
 * Create the driver: check the config, create DATA/instances, remove the
 * spare directories of idle shims that died, run `archipel-shim --probe` to
 * learn (and prepare, for cgroups) what isolation the host allows, and spawn
 * the idle shims. Blocks for the probe (a few milliseconds). Nothing is
 * adopted yet: call driver_process__adopt_all(). Strings are copied. On
 * success *out owns the driver until driver_process__close() calls back.
 * Shims are this process's children: the driver reaps them (waitpid on their
 * pids only). Errors: AP_EINVAL (bad config, shim not executable), AP_EIO
 * (probe failed), AP_ENOMEM; errmsg (AP_ERRMSG_SIZE bytes) says what failed.
 */
int driver_process__new(struct driver_process **out, const struct driver_process_config *cfg,
                        char *errmsg);

/**
 * Close the driver without touching workloads: their shims keep them running
 * and a later driver adopts them. Starts in flight complete with
 * AP_ECANCELED first. Idle shims see their control socket close and exit.
 * cb(data) fires once on the loop, after which d is freed. cb may be NULL.
 * Calling it twice is a bug.
 */
void driver_process__close(struct driver_process *d, void (*cb)(void *data), void *data);

/**
 * Bytes of workload output the shims of followed instances reported dropped
 * (status.json "log_dropped_bytes": their log files could not be written,
 * e.g. the disk was full) since this driver was created.
 */
uint64_t driver_process__log_dropped(const struct driver_process *d);

/** The message of d's last failed call. */
const char *driver_process__errmsg(const struct driver_process *d);

/** Copy the host's isolation capabilities (learned by driver_process__new()) into *caps. */
void driver_process__capabilities(const struct driver_process *d, struct driver_process_caps *caps);

/** caps as a JSON object (new reference), or NULL when out of memory. */
json_t *driver_process__caps_to_json(const struct driver_process_caps *caps);

/** st as a JSON object (new reference) for the API, or NULL when out of memory. */
json_t *driver_process__status_to_json(const struct driver_process_status *st);

/** "starting", "running", "exited", "failed", "stopped" or "lost". */
const char *driver_process__state_name(enum driver_process_state state);

/**
 * Start instance id: hand the spec to an idle shim (or, when none is ready,
 * to one spawned now) and return; the shim reports when the workload has
 * exec'd, about as long after the call as a posix_spawn of the same command
 * takes (docs/workloads.md, "Footprint and start latency"), and cb(data, id, rc, st) fires
 * then, once, bounded by start_timeout_ms. The shim owns
 * DATA/instances/<id>/ (spec.json, status.json, logs). Meanwhile the
 * instance reads "starting" and alive, and a second start is refused. A new
 * idle shim is spawned once the answer is in. Errors (cb never fires):
 * AP_EINVAL (bad id or spec), AP_EEXIST (a shim already runs or starts this
 * instance: never two), AP_ETOOBIG (spec over DRIVER_PROCESS_SPEC_MAX),
 * AP_EIO (no shim could be spawned or reached), AP_ENOMEM, AP_ESHUTDOWN
 * (closing); the message is in driver_process__errmsg().
 */
int driver_process__start(struct driver_process *d, const char *id,
                          const struct driver_process_spec *spec, driver_process_start_cb cb,
                          void *data);

/**
 * Ask the instance's shim to stop it (SIGTERM to the shim, which forwards it
 * and sends SIGKILL after the grace period; a shim still starting it stops
 * it once it runs). Returns at once; the shim records "stopped" and exits,
 * which on_event reports. Stopping an instance that does not run is not an
 * error. Errors: AP_EINVAL (bad id), AP_ENOTFOUND
 * (no such instance), AP_ECORRUPT (unreadable status.json), AP_EIO (signal
 * failed, or the holder of the instance's lock is not a shim of ours: it is
 * never signalled).
 */
int driver_process__stop(struct driver_process *d, const char *id);

/**
 * Delete a stopped instance's directory (spec, status, logs). Errors:
 * AP_EBUSY (its shim runs: stop it first), AP_ENOTFOUND, AP_EINVAL, AP_EIO.
 */
int driver_process__remove(struct driver_process *d, const char *id);

/**
 * Fill *st from the instance's status.json and a check of its shim (the
 * process holding DIR/shim.lock, pinned by a pidfd). A live shim that has not
 * written its status yet reads as DRIVER_PROCESS_STARTING (or as what it
 * answered the start with); no live shim and a missing status.json, or a
 * shim gone without a final state, read as DRIVER_PROCESS_LOST. Errors:
 * AP_EINVAL (bad id), AP_ENOTFOUND (no such instance), AP_ECORRUPT
 * (status.json is not what a shim writes), AP_EIO.
 */
int driver_process__status(struct driver_process *d, const char *id,
                           struct driver_process_status *st);

/**
 * At daemon start: scan DATA/instances/, call cb(data, st) once per instance
 * before returning, and track those whose shim is alive (no second shim is
 * ever started for them; on_event follows them from now on). Instances whose
 * shim is dead are reported (alive false, state LOST if it died without a
 * final state) so the daemon can restart them per policy with
 * driver_process__start(). Unreadable entries are logged and skipped.
 * Returns the number of instances reported, or AP_EIO / AP_ENOMEM.
 */
int driver_process__adopt_all(struct driver_process *d, driver_process_adopt_cb cb, void *data);

/**
 * Read the last max_bytes (at most DRIVER_PROCESS_LOGS_MAX) of an
 * instance's stdout or stderr, reaching into the rotated file when the
 * current one is shorter. On success *buf (NUL-terminated, caller frees
 * with ap_free) holds *len bytes. Errors: AP_EINVAL, AP_ENOTFOUND (no such
 * instance), AP_EIO, AP_ENOMEM.
 */
int driver_process__logs(struct driver_process *d, const char *id,
                         enum driver_process_stream stream, size_t max_bytes, char **buf,
                         size_t *len);

#endif
