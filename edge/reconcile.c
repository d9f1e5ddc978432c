/* reconcile: drive workloads toward the shard's desired states and record their actual states. */
#include "reconcile.h"

#include "ap/base.h"
#include "ap/err.h"
#include "ap/log.h"
#include "driver_process.h"
#include "link.h"
#include "node_internal.h"

#include <stdio.h>
#include <string.h>

/* The desired stamp each instance was last acted on, so that a new "start"
 * restarts an instance whose workload ended under its restart policy. */
struct acted {
    char id[AP_INSTREC_ID_SIZE];
    uint64_t desired_ts;
};

/* An actual state the shard could not store (disk full), to store once it can. */
struct unrecorded {
    char id[AP_INSTREC_ID_SIZE];
    enum ap_actual actual;
    int64_t pid, exit_code, restarts;
};

struct reconcile {
    struct edge_node *n;
    struct driver_process *driver;
    struct driver_process_caps caps;
    struct acted *acted;
    size_t n_acted, cap_acted;
    struct unrecorded *unrec;
    size_t n_unrec, cap_unrec;
    bool running; /* Re-entrance guard: events fire while we act. */
    void (*stop_cb)(void *data);
    void *stop_data;
};

static struct acted *acted_find(struct reconcile *r, const char *id, bool create)
{
    for (size_t i = 0; i < r->n_acted; i++) {
        if (strcmp(r->acted[i].id, id) == 0) {
            return &r->acted[i];
        }
    }
    if (!create) {
        return NULL;
    }
    if (r->n_acted == r->cap_acted) {
        size_t cap = r->cap_acted == 0 ? 64 : r->cap_acted * 2;
        struct acted *grown = ap_realloc(r->acted, cap * sizeof *grown);
        if (grown == NULL) {
            return NULL;
        }
        r->acted = grown;
        r->cap_acted = cap;
    }
    struct acted *a = &r->acted[r->n_acted++];
    ap_strlcpy(a->id, id, sizeof a->id);
    a->desired_ts = 0;
    return a;
}

static enum ap_actual actual_of(const struct driver_process_status *st)
{
    switch (st->state) {
    case DRIVER_PROCESS_STARTING:
        return AP_ACTUAL_STARTING;
    case DRIVER_PROCESS_RUNNING:
        return AP_ACTUAL_RUNNING;
    case DRIVER_PROCESS_EXITED:
        return AP_ACTUAL_EXITED;
    case DRIVER_PROCESS_STOPPED:
        return AP_ACTUAL_STOPPED;
    case DRIVER_PROCESS_FAILED:
    case DRIVER_PROCESS_LOST:
    default:
        return AP_ACTUAL_FAILED;
    }
}

static struct unrecorded *unrec_find(struct reconcile *r, const char *id)
{
    for (size_t i = 0; i < r->n_unrec; i++) {
        if (strcmp(r->unrec[i].id, id) == 0) {
            return &r->unrec[i];
        }
    }
    return NULL;
}

static void unrec_drop(struct reconcile *r, const char *id)
{
    struct unrecorded *u = unrec_find(r, id);
    if (u != NULL) {
        *u = r->unrec[--r->n_unrec];
    }
}

/* Keep the latest state that could not be stored for id; false when it was already kept. */
static bool unrec_keep(struct reconcile *r, const char *id, enum ap_actual actual, int64_t pid,
                       int64_t exit_code, int64_t restarts)
{
    struct unrecorded *u = unrec_find(r, id);
    bool fresh = u == NULL;
    if (u == NULL) {
        if (r->n_unrec == r->cap_unrec) {
            size_t cap = r->cap_unrec == 0 ? 16 : r->cap_unrec * 2;
            struct unrecorded *grown = ap_realloc(r->unrec, cap * sizeof *grown);
            if (grown == NULL) {
                return false; /* Lost until the driver reports this instance again. */
            }
            r->unrec = grown;
            r->cap_unrec = cap;
        }
        u = &r->unrec[r->n_unrec++];
        ap_strlcpy(u->id, id, sizeof u->id);
    }
    u->actual = actual;
    u->pid = pid;
    u->exit_code = exit_code;
    u->restarts = restarts;
    return fresh;
}

/*
 * Record what the driver says in the shard (the site owns the actual state).
 * A state that cannot be stored (disk full) is kept and stored by
 * reconcile__retry once the shard takes writes again (docs/edge.md "Full disk").
 */
static void record_actual(struct reconcile *r, const char *id, enum ap_actual actual, int64_t pid,
                          int64_t exit_code, int64_t restarts)
{
    struct edge_node *n = r->n;
    struct ap_instrec rec;
    int rv = shard__get(n->shard, id, &rec);
    if (rv != 0) {
        if (rv == AP_ENOTFOUND) {
            unrec_drop(r, id);
        }
        return;
    }
    if (rec.actual == actual && rec.pid == pid && rec.exit_code == exit_code &&
        rec.restarts == restarts) {
        unrec_drop(r, id);
        ap_instrec_clear(&rec);
        return;
    }
    rec.actual = actual;
    rec.pid = pid;
    rec.exit_code = exit_code;
    rec.restarts = restarts;
    rec.actual_ts = ap_hlc_now(n->hlc);
    rv = shard__begin(n->shard);
    if (rv == 0) {
        rv = shard__put_local(n->shard, &rec);
        if (rv == 0) {
            rv = shard__commit(n->shard);
        } else {
            shard__rollback(n->shard);
        }
    }
    if (rv == 0) {
        unrec_drop(r, id);
        AP_LOG(AP_LOG_INFO, "instance_actual id=%s actual=%s pid=%lld restarts=%lld", id,
               ap_actual_name(actual), (long long)pid, (long long)restarts);
        link__kick(n->link);
    } else if (unrec_keep(r, id, actual, pid, exit_code, restarts)) {
        AP_LOG(AP_LOG_WARN, "instance_actual_deferred id=%s actual=%s err=\"%s\"", id,
               ap_actual_name(actual), shard__errmsg(n->shard));
    }
    ap_instrec_clear(&rec);
}

void reconcile__retry(struct reconcile *r)
{
    if (r->running || r->n->stopping) {
        return;
    }
    /* From the end: record_actual removes the entry it stores. */
    for (size_t i = r->n_unrec; i > 0; i--) {
        if (i > r->n_unrec) {
            continue;
        }
        struct unrecorded u = r->unrec[i - 1];
        record_actual(r, u.id, u.actual, u.pid, u.exit_code, u.restarts);
        if (shard__full(r->n->shard)) {
            return; /* Still no room: the next tick tries again. */
        }
    }
}

uint64_t reconcile__log_dropped(const struct reconcile *r)
{
    return driver_process__log_dropped(r->driver);
}

static void record_status(struct reconcile *r, const struct driver_process_status *st)
{
    bool running =
        st->alive && (st->state == DRIVER_PROCESS_RUNNING || st->state == DRIVER_PROCESS_STARTING);
    record_actual(r, st->id, actual_of(st), running ? st->workload_pid : 0,
                  st->exit_code < 0 ? 0 : st->exit_code, st->restarts);
}

static void on_event(void *data, const struct driver_process_status *st)
{
    struct reconcile *r = data;
    record_status(r, st);
    if (!st->alive && st->state == DRIVER_PROCESS_LOST) {
        /* The shim died without an end of its own: restart per desired state. */
        struct acted *a = acted_find(r, st->id, false);
        if (a != NULL) {
            a->desired_ts = 0;
        }
        reconcile__all(r);
    }
}

static void on_adopt(void *data, const struct driver_process_status *st)
{
    struct reconcile *r = data;
    struct ap_instrec rec;
    if (shard__get(r->n->shard, st->id, &rec) != 0) {
        return;
    }
    /* A live shim was acted on before the restart; a dead one is reconsidered. */
    struct acted *a = acted_find(r, st->id, true);
    if (a != NULL && st->alive) {
        a->desired_ts = ap_hlc_pack(rec.desired_ts);
    }
    AP_LOG(AP_LOG_INFO, "instance_adopted id=%s alive=%s state=%s shim_pid=%d", st->id,
           st->alive ? "true" : "false", driver_process__state_name(st->state), st->shim_pid);
    ap_instrec_clear(&rec);
    record_status(r, st);
}

/* A start handed to the driver is over (driver_process_start_cb). */
static void on_started(void *data, const char *id, int rc, const struct driver_process_status *st)
{
    struct reconcile *r = data;
    if (rc == 0) {
        record_status(r, st);
        return;
    }
    if (rc == AP_ECANCELED || rc == AP_EEXIST) {
        return; /* closing (a later daemon adopts it), or another shim has it */
    }
    /* The driver logged why (instance_start_failed). */
    struct ap_instrec rec;
    if (shard__get(r->n->shard, id, &rec) == 0) {
        record_actual(r, id, AP_ACTUAL_FAILED, 0, 0, rec.restarts);
        ap_instrec_clear(&rec);
    }
}

static enum driver_process_restart restart_of(const char *s)
{
    if (s != NULL && strcmp(s, "never") == 0) {
        return DRIVER_PROCESS_RESTART_NEVER;
    }
    if (s != NULL && strcmp(s, "on-failure") == 0) {
        return DRIVER_PROCESS_RESTART_ON_FAILURE;
    }
    return DRIVER_PROCESS_RESTART_ALWAYS;
}

static int start_instance(struct reconcile *r, const struct ap_instrec *rec)
{
    json_t *spec = json_loads(rec->spec != NULL ? rec->spec : "{}", 0, NULL);
    json_t *cmd = json_object_get(spec, "command");
    json_t *env = json_object_get(spec, "env");
    const char *argv[DRIVER_PROCESS_MAX_ARGS];
    const char *envv[DRIVER_PROCESS_MAX_ENV];
    char *env_buf[DRIVER_PROCESS_MAX_ENV];
    size_t argc = 0, n_env = 0;
    for (size_t i = 0; i < json_array_size(cmd) && argc < DRIVER_PROCESS_MAX_ARGS; i++) {
        argv[argc++] = json_string_value(json_array_get(cmd, i));
    }
    const char *k;
    json_t *v;
    json_object_foreach(env, k, v)
    {
        if (n_env >= DRIVER_PROCESS_MAX_ENV) {
            break;
        }
        size_t len = strlen(k) + json_string_length(v) + 2;
        env_buf[n_env] = ap_malloc(len);
        if (env_buf[n_env] == NULL) {
            break;
        }
        snprintf(env_buf[n_env], len, "%s=%s", k, json_string_value(v));
        envv[n_env] = env_buf[n_env];
        n_env++;
    }
    struct driver_process_spec ds = {
        .name = rec->name,
        .tenant = rec->tenant,
        .argv = argv,
        .argc = argc,
        .env = envv,
        .n_env = n_env,
        .cwd = json_string_value(json_object_get(spec, "cwd")),
        .cpu_millis = rec->cpu_millis,
        .memory_mb = rec->memory_mb,
        .restart = restart_of(json_string_value(json_object_get(spec, "restart"))),
    };
    int rv = argc == 0 ? AP_EINVAL : driver_process__start(r->driver, rec->id, &ds, on_started, r);
    for (size_t i = 0; i < n_env; i++) {
        ap_free(env_buf[i]);
    }
    json_decref(spec);
    return rv;
}

static void reconcile_one(struct reconcile *r, const struct ap_instrec *rec)
{
    struct driver_process_status st;
    int rv = driver_process__status(r->driver, rec->id, &st);
    bool exists = rv == 0;
    bool alive = exists && st.alive;
    struct acted *a = acted_find(r, rec->id, true);
    uint64_t dts = ap_hlc_pack(rec->desired_ts);
    bool new_intent = a != NULL && a->desired_ts != dts;

    if (rec->desired == AP_DESIRED_RUNNING) {
        /* Start when nothing runs and either we were asked anew, or the
         * workload was lost or stopped (an ended run obeys its restart policy). */
        bool ended_by_policy =
            exists && (st.state == DRIVER_PROCESS_EXITED || st.state == DRIVER_PROCESS_FAILED);
        if (!alive && (new_intent || !ended_by_policy)) {
            /* On success the driver calls on_started once the workload has exec'd. */
            rv = start_instance(r, rec);
            if (rv != 0 && rv != AP_EEXIST) {
                AP_LOG(AP_LOG_WARN, "instance_start_failed id=%s err=\"%s\"", rec->id,
                       driver_process__errmsg(r->driver));
                record_actual(r, rec->id, AP_ACTUAL_FAILED, 0, 0, rec->restarts);
            }
        }
    } else if (alive) {
        driver_process__stop(r->driver, rec->id);
    } else if (rec->desired == AP_DESIRED_DELETED && exists) {
        driver_process__remove(r->driver, rec->id);
        if (rec->actual != AP_ACTUAL_STOPPED && rec->actual != AP_ACTUAL_EXITED) {
            record_actual(r, rec->id, AP_ACTUAL_STOPPED, 0, rec->exit_code, rec->restarts);
        }
    } else if (rec->desired == AP_DESIRED_STOPPED && exists && st.state != DRIVER_PROCESS_STOPPED &&
               rec->actual != AP_ACTUAL_STOPPED) {
        record_actual(r, rec->id, AP_ACTUAL_STOPPED, 0, rec->exit_code, rec->restarts);
    } else if (!exists && rec->desired != AP_DESIRED_RUNNING &&
               (rec->actual == AP_ACTUAL_PENDING || rec->actual == AP_ACTUAL_STARTING ||
                rec->actual == AP_ACTUAL_RUNNING)) {
        /* Stopped or deleted before it ever ran (e.g. while the site was away), or removed
         * just before a kill -9 of this daemon kept it from recording that (found by the
         * chaos suite's clock-skew scenario, seed 5): nothing runs, say so. */
        record_actual(r, rec->id, AP_ACTUAL_STOPPED, 0, rec->exit_code, rec->restarts);
    }
    if (a != NULL) {
        a->desired_ts = dts;
    }
}

void reconcile__all(struct reconcile *r)
{
    struct ap_instrec *list;
    size_t count;
    if (r->running || r->n->stopping) {
        return;
    }
    r->running = true;
    if (shard__list(r->n->shard, NULL, true, &list, &count) == 0) {
        for (size_t i = 0; i < count; i++) {
            reconcile_one(r, &list[i]);
        }
        shard__free_list(list, count);
    }
    r->running = false;
}

int reconcile__start(struct reconcile **out, struct edge_node *n, char *errmsg)
{
    char cgroup[300];
    struct reconcile *r = ap_calloc(1, sizeof *r);
    if (r == NULL) {
        ap_errmsg_set(errmsg, "reconcile: out of memory");
        return AP_ENOMEM;
    }
    r->n = n;
    /* One cgroup parent per site, so several sites can share a host. */
    snprintf(cgroup, sizeof cgroup, "%s/%s", DRIVER_PROCESS_DEFAULT_CGROUP_PARENT, n->cfg.site);
    struct driver_process_config dc = {
        .loop = n->loop,
        .data_dir = n->cfg.dir,
        .shim_path = n->cfg.shim_path,
        .cgroup_parent = cgroup,
        .on_event = on_event,
        .data = r,
    };
    int rv = driver_process__new(&r->driver, &dc, errmsg);
    if (rv != 0) {
        ap_errmsg_wrap(errmsg, "process driver");
        ap_free(r);
        return rv;
    }
    driver_process__capabilities(r->driver, &r->caps);
    AP_LOG(AP_LOG_INFO,
           "driver_ready driver=process namespaces=%s cgroup_v2=%s memory_limit=%s cpu_limit=%s "
           "detail=\"%s\"",
           r->caps.namespaces ? "true" : "false", r->caps.cgroup_v2 ? "true" : "false",
           r->caps.memory_limit ? "true" : "false", r->caps.cpu_limit ? "true" : "false",
           r->caps.detail);
    rv = driver_process__adopt_all(r->driver, on_adopt, r);
    if (rv < 0) {
        ap_errmsg_set(errmsg, "adopt workloads: %s", driver_process__errmsg(r->driver));
        driver_process__close(r->driver, NULL, NULL);
        ap_free(r);
        return rv;
    }
    *out = r;
    return 0;
}

static void driver_closed(void *data)
{
    struct reconcile *r = data;
    void (*cb)(void *) = r->stop_cb;
    void *cb_data = r->stop_data;
    ap_free(r->acted);
    ap_free(r->unrec);
    ap_free(r);
    if (cb != NULL) {
        cb(cb_data);
    }
}

void reconcile__stop(struct reconcile *r, void (*cb)(void *data), void *data)
{
    r->stop_cb = cb;
    r->stop_data = data;
    /* docs/workloads.md: closing the driver leaves every workload running. */
    driver_process__close(r->driver, driver_closed, r);
}

int reconcile__logs(struct reconcile *r, const char *id, const char *stream, size_t max, char **buf,
                    size_t *len)
{
    enum driver_process_stream s =
        strcmp(stream, "stderr") == 0 ? DRIVER_PROCESS_STDERR : DRIVER_PROCESS_STDOUT;
    return driver_process__logs(r->driver, id, s, max, buf, len);
}

json_t *reconcile__capabilities(struct reconcile *r)
{
    json_t *caps = json_array();
    json_array_append_new(caps, json_string("driver:process"));
    if (r->caps.namespaces) {
        json_array_append_new(caps, json_string("isolation:namespaces"));
    }
    if (r->caps.cgroup_v2) {
        json_array_append_new(caps, json_string("isolation:cgroup-v2"));
    }
    if (r->caps.memory_limit) {
        json_array_append_new(caps, json_string("limits:memory"));
    }
    if (r->caps.cpu_limit) {
        json_array_append_new(caps, json_string("limits:cpu"));
    }
    return caps;
}
