/* archipel-shim: the per-instance supervisor of the process driver; libc only, see
 * docs/workloads.md. */
/*
 * One shim runs per instance, detached from archipel-edge so that workloads
 * survive the daemon. It reads DIR/spec.json, starts the workload (in new PID,
 * mount and UTS namespaces and a cgroup v2 group when the host allows), copies
 * its stdout/stderr into size-capped log files, restarts it per policy with
 * exponential back-off, and records every change in DIR/status.json (written
 * to a temporary file, fsynced, renamed). SIGTERM stops it.
 *
 * It links nothing but libc and keeps its buffers small, so that a shim stays
 * well under 1 MiB resident. The spec decoder (shim_spec_parse) takes bytes
 * from disk: it is bounded, never asserts, and is fuzzed by
 * tests/fuzz/fuzz_shim_spec.c, which includes this file with
 * AP_SHIM_PARSER_ONLY defined to get the decoder alone.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SHIM_SPEC_VERSION      1
#define SHIM_SPEC_MAX_BYTES    (256 * 1024)
#define SHIM_MAX_ARGS          256
#define SHIM_MAX_ENV           256
#define SHIM_STR_MAX           (32 * 1024)
#define SHIM_ID_MAX            64
#define SHIM_NAME_MAX          255
#define SHIM_HOSTNAME_MAX      64
#define SHIM_PATH_STR_MAX      1024
#define SHIM_CPU_MILLIS_MAX    1000000
#define SHIM_MEMORY_MB_MAX     16777216
#define SHIM_GRACE_MAX_MS      600000
#define SHIM_LOG_MIN_BYTES     4096
#define SHIM_LOG_MAX_BYTES     (1024LL * 1024 * 1024)
#define SHIM_DEFAULT_GRACE_MS  5000
#define SHIM_DEFAULT_LOG_BYTES (1024 * 1024)
#define SHIM_DEFAULT_PATH      "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#define SHIM_BACKOFF_MIN_MS    100
#define SHIM_BACKOFF_MAX_MS    10000
#define SHIM_BACKOFF_RESET_MS  10000
#define SHIM_EXEC_WAIT_MS      10000
#define SHIM_CPU_PERIOD_US     100000
#define SHIM_READ_BUF          16384
#define SHIM_STACK_SIZE        (64 * 1024)
#define SHIM_FILE_PATH_MAX     4096
#define SHIM_DIR_MAX           3000
#define SHIM_ERR_MAX           256
#define SHIM_SHIM_LOG_MAX      (64 * 1024)

/* ------------------------------------------------------------------------ */
/* The spec and its decoder.                                                 */

enum shim_restart {
    SHIM_RESTART_NEVER,
    SHIM_RESTART_ON_FAILURE,
    SHIM_RESTART_ALWAYS,
};

/** A decoded spec.json. Every string points into arena (shim_spec_free()). */
struct shim_spec {
    char *arena;
    size_t arena_used;
    size_t arena_size;
    const char *id;
    const char *name;
    const char *tenant;
    const char *cwd;
    const char *hostname;
    const char *cgroup_parent;
    const char *path; /* PATH used to find argv[0]: the env's, or the default */
    char *argv[SHIM_MAX_ARGS + 1];
    size_t argc;
    char *env[SHIM_MAX_ENV + 2];
    size_t envc;
    int64_t cpu_millis;
    int64_t memory_mb;
    int64_t grace_ms;
    int64_t log_max_bytes;
    enum shim_restart restart;
    bool namespaces;
};

struct jp {
    const char *start;
    const char *p;
    const char *end;
    struct shim_spec *spec;
    char *err;
    size_t errsz;
};

static const char *const spec_keys[] = {
    "version", "id",       "name",          "tenant",     "argv",
    "env",     "cwd",      "hostname",      "cpu_millis", "memory_mb",
    "restart", "grace_ms", "log_max_bytes", "namespaces", "cgroup_parent",
};

enum spec_key {
    K_VERSION,
    K_ID,
    K_NAME,
    K_TENANT,
    K_ARGV,
    K_ENV,
    K_CWD,
    K_HOSTNAME,
    K_CPU,
    K_MEMORY,
    K_RESTART,
    K_GRACE,
    K_LOG_MAX,
    K_NAMESPACES,
    K_CGROUP_PARENT,
    K_COUNT,
};

static int jp_fail(struct jp *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int jp_fail(struct jp *j, const char *fmt, ...)
{
    char msg[SHIM_ERR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(j->err, j->errsz, "offset %zu: %s", (size_t)(j->p - j->start), msg);
    return -1;
}

static void jp_ws(struct jp *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) {
        j->p++;
    }
}

static int jp_expect(struct jp *j, char c, const char *what)
{
    jp_ws(j);
    if (j->p >= j->end || *j->p != c) {
        return jp_fail(j, "expected %s", what);
    }
    j->p++;
    return 0;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

static int jp_hex4(struct jp *j, unsigned *out)
{
    if (j->end - j->p < 4) {
        return jp_fail(j, "truncated \\u escape");
    }
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int d = hex_digit(j->p[i]);
        if (d < 0) {
            return jp_fail(j, "bad \\u escape");
        }
        v = v * 16 + (unsigned)d;
    }
    j->p += 4;
    *out = v;
    return 0;
}

/*
 * Decode a JSON string into the arena. A decoded string is never longer than
 * its encoding, and the two quotes pay for its NUL, so an arena as large as
 * the input always has room; the check below is defensive.
 */
static int jp_string(struct jp *j, const char *field, size_t max, char **out)
{
    jp_ws(j);
    if (j->p >= j->end || *j->p != '"') {
        return jp_fail(j, "field '%s': expected a string", field);
    }
    j->p++;
    struct shim_spec *s = j->spec;
    char *dst = s->arena + s->arena_used;
    size_t room = s->arena_size - s->arena_used;
    size_t n = 0;
    for (;;) {
        if (j->p >= j->end) {
            return jp_fail(j, "field '%s': unterminated string", field);
        }
        unsigned char c = (unsigned char)*j->p++;
        if (c == '"') {
            break;
        }
        if (c < 0x20) {
            return jp_fail(j, "field '%s': control character in string", field);
        }
        unsigned char enc[4];
        size_t k = 1;
        enc[0] = c;
        if (c == '\\') {
            if (j->p >= j->end) {
                return jp_fail(j, "field '%s': unterminated string", field);
            }
            char e = *j->p++;
            switch (e) {
            case '"':
            case '\\':
            case '/':
                enc[0] = (unsigned char)e;
                break;
            case 'b':
                enc[0] = '\b';
                break;
            case 'f':
                enc[0] = '\f';
                break;
            case 'n':
                enc[0] = '\n';
                break;
            case 'r':
                enc[0] = '\r';
                break;
            case 't':
                enc[0] = '\t';
                break;
            case 'u': {
                unsigned cp;
                if (jp_hex4(j, &cp) != 0) {
                    return -1;
                }
                if (cp >= 0xDC00 && cp <= 0xDFFF) {
                    return jp_fail(j, "field '%s': lone surrogate in string", field);
                }
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    unsigned lo;
                    if (j->end - j->p < 2 || j->p[0] != '\\' || j->p[1] != 'u') {
                        return jp_fail(j, "field '%s': lone surrogate in string", field);
                    }
                    j->p += 2;
                    if (jp_hex4(j, &lo) != 0) {
                        return -1;
                    }
                    if (lo < 0xDC00 || lo > 0xDFFF) {
                        return jp_fail(j, "field '%s': lone surrogate in string", field);
                    }
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                }
                if (cp == 0) {
                    return jp_fail(j, "field '%s': NUL character in string", field);
                }
                if (cp < 0x80) {
                    enc[0] = (unsigned char)cp;
                } else if (cp < 0x800) {
                    enc[0] = (unsigned char)(0xC0 | (cp >> 6));
                    enc[1] = (unsigned char)(0x80 | (cp & 0x3F));
                    k = 2;
                } else if (cp < 0x10000) {
                    enc[0] = (unsigned char)(0xE0 | (cp >> 12));
                    enc[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
                    enc[2] = (unsigned char)(0x80 | (cp & 0x3F));
                    k = 3;
                } else {
                    enc[0] = (unsigned char)(0xF0 | (cp >> 18));
                    enc[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
                    enc[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
                    enc[3] = (unsigned char)(0x80 | (cp & 0x3F));
                    k = 4;
                }
                break;
            }
            default:
                return jp_fail(j, "field '%s': bad escape '\\%c'", field,
                               (e >= 0x20 && e < 0x7F) ? e : '?');
            }
        }
        if (n + k > max) {
            return jp_fail(j, "field '%s': string longer than %zu bytes", field, max);
        }
        if (n + k + 1 > room) {
            return jp_fail(j, "field '%s': string does not fit", field);
        }
        memcpy(dst + n, enc, k);
        n += k;
    }
    dst[n] = '\0';
    s->arena_used += n + 1;
    *out = dst;
    return 0;
}

static int jp_int(struct jp *j, const char *field, int64_t min, int64_t max, int64_t *out)
{
    jp_ws(j);
    bool neg = false;
    if (j->p < j->end && *j->p == '-') {
        neg = true;
        j->p++;
    }
    const char *digits = j->p;
    int64_t v = 0;
    while (j->p < j->end && *j->p >= '0' && *j->p <= '9') {
        if (j->p - digits >= 18) {
            return jp_fail(j, "field '%s': number too large", field);
        }
        v = v * 10 + (*j->p - '0');
        j->p++;
    }
    if (j->p == digits) {
        return jp_fail(j, "field '%s': expected an integer", field);
    }
    if (j->p - digits > 1 && digits[0] == '0') {
        return jp_fail(j, "field '%s': leading zero in number", field);
    }
    if (j->p < j->end && (*j->p == '.' || *j->p == 'e' || *j->p == 'E')) {
        return jp_fail(j, "field '%s': expected an integer", field);
    }
    if (neg) {
        v = -v;
    }
    if (v < min || v > max) {
        return jp_fail(j, "field '%s': %lld is outside [%lld, %lld]", field, (long long)v,
                       (long long)min, (long long)max);
    }
    *out = v;
    return 0;
}

static int jp_bool(struct jp *j, const char *field, bool *out)
{
    jp_ws(j);
    size_t left = (size_t)(j->end - j->p);
    if (left >= 4 && memcmp(j->p, "true", 4) == 0) {
        j->p += 4;
        *out = true;
        return 0;
    }
    if (left >= 5 && memcmp(j->p, "false", 5) == 0) {
        j->p += 5;
        *out = false;
        return 0;
    }
    return jp_fail(j, "field '%s': expected true or false", field);
}

static int jp_str_array(struct jp *j, const char *field, char **out, size_t max_items, size_t *n)
{
    if (jp_expect(j, '[', "'[' (an array)") != 0) {
        return jp_fail(j, "field '%s': expected an array of strings", field);
    }
    *n = 0;
    jp_ws(j);
    if (j->p < j->end && *j->p == ']') {
        j->p++;
        return 0;
    }
    for (;;) {
        if (*n >= max_items) {
            return jp_fail(j, "field '%s': more than %zu entries", field, max_items);
        }
        if (jp_string(j, field, SHIM_STR_MAX, &out[*n]) != 0) {
            return -1;
        }
        (*n)++;
        jp_ws(j);
        if (j->p < j->end && *j->p == ',') {
            j->p++;
            continue;
        }
        if (j->p < j->end && *j->p == ']') {
            j->p++;
            return 0;
        }
        return jp_fail(j, "field '%s': expected ',' or ']'", field);
    }
}

static bool valid_id(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > SHIM_ID_MAX || strcmp(id, ".") == 0 || strcmp(id, "..") == 0) {
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

static bool printable_ascii(const char *s)
{
    for (; *s != '\0'; s++) {
        if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7F) {
            return false;
        }
    }
    return true;
}

static int jp_value(struct jp *j, enum spec_key key, int64_t *version)
{
    struct shim_spec *s = j->spec;
    const char *field = spec_keys[key];
    char *str;
    int64_t v;
    switch (key) {
    case K_VERSION:
        return jp_int(j, field, 0, INT32_MAX, version);
    case K_ID:
        if (jp_string(j, field, SHIM_ID_MAX, &str) != 0) {
            return -1;
        }
        if (!valid_id(str)) {
            return jp_fail(j, "field 'id': want 1 to %d of [A-Za-z0-9._-]", SHIM_ID_MAX);
        }
        s->id = str;
        return 0;
    case K_NAME:
        if (jp_string(j, field, SHIM_NAME_MAX, &str) != 0) {
            return -1;
        }
        s->name = str;
        return 0;
    case K_TENANT:
        if (jp_string(j, field, SHIM_NAME_MAX, &str) != 0) {
            return -1;
        }
        s->tenant = str;
        return 0;
    case K_ARGV:
        if (jp_str_array(j, field, s->argv, SHIM_MAX_ARGS, &s->argc) != 0) {
            return -1;
        }
        if (s->argc == 0 || s->argv[0][0] == '\0') {
            return jp_fail(j, "field 'argv': needs a non-empty argv[0]");
        }
        return 0;
    case K_ENV:
        if (jp_str_array(j, field, s->env, SHIM_MAX_ENV, &s->envc) != 0) {
            return -1;
        }
        for (size_t i = 0; i < s->envc; i++) {
            const char *eq = strchr(s->env[i], '=');
            if (eq == NULL || eq == s->env[i]) {
                return jp_fail(j, "field 'env': entry %zu is not NAME=value", i);
            }
        }
        return 0;
    case K_CWD:
        if (jp_string(j, field, SHIM_PATH_STR_MAX, &str) != 0) {
            return -1;
        }
        if (str[0] != '\0' && str[0] != '/') {
            return jp_fail(j, "field 'cwd': must be an absolute path");
        }
        s->cwd = str;
        return 0;
    case K_HOSTNAME:
        if (jp_string(j, field, SHIM_HOSTNAME_MAX, &str) != 0) {
            return -1;
        }
        s->hostname = str;
        return 0;
    case K_CPU:
        return jp_int(j, field, 0, SHIM_CPU_MILLIS_MAX, &s->cpu_millis);
    case K_MEMORY:
        return jp_int(j, field, 0, SHIM_MEMORY_MB_MAX, &s->memory_mb);
    case K_RESTART:
        if (jp_string(j, field, 16, &str) != 0) {
            return -1;
        }
        if (strcmp(str, "always") == 0) {
            s->restart = SHIM_RESTART_ALWAYS;
        } else if (strcmp(str, "on-failure") == 0) {
            s->restart = SHIM_RESTART_ON_FAILURE;
        } else if (strcmp(str, "never") == 0) {
            s->restart = SHIM_RESTART_NEVER;
        } else {
            return jp_fail(j, "field 'restart': want always, on-failure or never");
        }
        return 0;
    case K_GRACE:
        return jp_int(j, field, 0, SHIM_GRACE_MAX_MS, &s->grace_ms);
    case K_LOG_MAX:
        if (jp_int(j, field, SHIM_LOG_MIN_BYTES, SHIM_LOG_MAX_BYTES, &v) != 0) {
            return -1;
        }
        s->log_max_bytes = v;
        return 0;
    case K_NAMESPACES:
        return jp_bool(j, field, &s->namespaces);
    case K_CGROUP_PARENT:
        if (jp_string(j, field, SHIM_PATH_STR_MAX, &str) != 0) {
            return -1;
        }
        if (str[0] != '\0' && (str[0] != '/' || !printable_ascii(str))) {
            return jp_fail(j, "field 'cgroup_parent': must be an absolute ASCII path");
        }
        s->cgroup_parent = str;
        return 0;
    case K_COUNT:
        break;
    }
    return jp_fail(j, "internal: unknown key");
}

static void shim_spec_free(struct shim_spec *spec)
{
    free(spec->arena);
    spec->arena = NULL;
}

/*
 * Decode spec.json (docs/workloads.md, "spec.json"). Returns 0 with *spec
 * filled (free it with shim_spec_free()), or -1 with a message in err and
 * nothing to free. Never asserts on the input.
 */
static int shim_spec_parse(const char *buf, size_t len, struct shim_spec *spec, char *err,
                           size_t errsz)
{
    static const char default_path[] = "PATH=" SHIM_DEFAULT_PATH;
    memset(spec, 0, sizeof *spec);
    if (len == 0) {
        snprintf(err, errsz, "empty file");
        return -1;
    }
    if (len > SHIM_SPEC_MAX_BYTES) {
        snprintf(err, errsz, "%zu bytes, more than the %d allowed", len, SHIM_SPEC_MAX_BYTES);
        return -1;
    }
    spec->arena_size = len + sizeof default_path;
    spec->arena = malloc(spec->arena_size);
    if (spec->arena == NULL) {
        snprintf(err, errsz, "out of memory");
        return -1;
    }
    spec->id = spec->name = spec->tenant = spec->cwd = spec->hostname = spec->cgroup_parent = "";
    spec->grace_ms = SHIM_DEFAULT_GRACE_MS;
    spec->log_max_bytes = SHIM_DEFAULT_LOG_BYTES;
    spec->namespaces = true;
    spec->restart = SHIM_RESTART_NEVER;

    struct jp j = {buf, buf, buf + len, spec, err, errsz};
    unsigned seen = 0;
    int64_t version = -1;
    if (jp_expect(&j, '{', "'{' (a JSON object)") != 0) {
        goto err;
    }
    jp_ws(&j);
    if (j.p < j.end && *j.p == '}') {
        j.p++;
    } else {
        for (;;) {
            char *key;
            if (jp_string(&j, "(key)", 32, &key) != 0) {
                goto err;
            }
            /* Keys are not kept: give their arena bytes back. */
            spec->arena_used -= strlen(key) + 1;
            size_t k = 0;
            while (k < K_COUNT && strcmp(spec_keys[k], key) != 0) {
                k++;
            }
            if (k == K_COUNT) {
                jp_fail(&j, "unknown field '%s'", key);
                goto err;
            }
            if (seen & (1u << k)) {
                jp_fail(&j, "duplicate field '%s'", spec_keys[k]);
                goto err;
            }
            seen |= 1u << k;
            if (jp_expect(&j, ':', "':'") != 0) {
                goto err;
            }
            if (jp_value(&j, (enum spec_key)k, &version) != 0) {
                goto err;
            }
            jp_ws(&j);
            if (j.p < j.end && *j.p == ',') {
                j.p++;
                continue;
            }
            if (j.p < j.end && *j.p == '}') {
                j.p++;
                break;
            }
            jp_fail(&j, "expected ',' or '}'");
            goto err;
        }
    }
    jp_ws(&j);
    if (j.p != j.end) {
        jp_fail(&j, "trailing bytes after the object");
        goto err;
    }
    static const enum spec_key required[] = {K_VERSION, K_ID, K_ARGV, K_RESTART};
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++) {
        if (!(seen & (1u << required[i]))) {
            snprintf(err, errsz, "missing field '%s'", spec_keys[required[i]]);
            goto err;
        }
    }
    if (version != SHIM_SPEC_VERSION) {
        snprintf(err, errsz, "field 'version': %lld is not supported (want %d)", (long long)version,
                 SHIM_SPEC_VERSION);
        goto err;
    }
    spec->argv[spec->argc] = NULL;
    spec->path = NULL;
    for (size_t i = 0; i < spec->envc; i++) {
        if (strncmp(spec->env[i], "PATH=", 5) == 0) {
            spec->path = spec->env[i] + 5;
        }
    }
    if (spec->path == NULL) {
        /* docs/workloads.md: a workload without PATH gets the default one. */
        char *p = spec->arena + spec->arena_used;
        memcpy(p, default_path, sizeof default_path);
        spec->arena_used += sizeof default_path;
        spec->env[spec->envc++] = p;
        spec->path = p + 5;
    }
    spec->env[spec->envc] = NULL;
    return 0;
err:
    shim_spec_free(spec);
    return -1;
}

#ifndef AP_SHIM_PARSER_ONLY

/* ------------------------------------------------------------------------ */
/* Small helpers.                                                            */

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void logf_shim(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* One line per event on stderr, which is DIR/shim.log once detached. */
static void logf_shim(const char *fmt, ...)
{
    char line[512];
    int n = snprintf(line, sizeof line, "ts=%lld pid=%d msg=", (long long)wall_ms(), (int)getpid());
    if (n < 0 || (size_t)n >= sizeof line) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len >= sizeof line - 1) {
        len = sizeof line - 2;
    }
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}

static int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Write val to an existing file (cgroup knobs: never created). Returns 0 or -errno. */
static int write_knob(const char *path, const char *val)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) {
        return -errno;
    }
    int rc = write_all(fd, val, strlen(val)) == 0 ? 0 : -errno;
    close(fd);
    return rc;
}

/* Read a small file into buf (NUL-terminated). Returns its length or -errno. */
static ssize_t read_small(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return -errno;
    }
    size_t used = 0;
    while (used < size - 1) {
        ssize_t n = read(fd, buf + used, size - 1 - used);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            int e = errno;
            close(fd);
            return -e;
        }
        if (n == 0) {
            break;
        }
        used += (size_t)n;
    }
    close(fd);
    buf[used] = '\0';
    return (ssize_t)used;
}

/* Whether the whitespace-separated list holds word (cgroup.controllers lines). */
static bool has_word(const char *list, const char *word)
{
    size_t wl = strlen(word);
    const char *p = list;
    while (*p != '\0') {
        while (*p == ' ' || *p == '\n' || *p == '\t') {
            p++;
        }
        const char *b = p;
        while (*p != '\0' && *p != ' ' && *p != '\n' && *p != '\t') {
            p++;
        }
        if ((size_t)(p - b) == wl && memcmp(b, word, wl) == 0) {
            return true;
        }
    }
    return false;
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a;
    int y = *(const int *)b;
    return (x > y) - (x < y);
}

static void close_span(unsigned lo, unsigned hi)
{
    if (close_range(lo, hi, 0) == 0) {
        return;
    }
    /* No close_range (kernel < 5.9): close the usual range by hand. */
    unsigned top = hi < 4095 ? hi : 4095;
    for (unsigned fd = lo; fd <= top; fd++) {
        close((int)fd);
    }
}

/* Close every descriptor >= 3 except those in keep (at most 8). */
static void close_all_except(const int *keep, size_t n)
{
    int k[8];
    size_t m = 0;
    for (size_t i = 0; i < n && m < 8; i++) {
        if (keep[i] >= 3) {
            k[m++] = keep[i];
        }
    }
    qsort(k, m, sizeof k[0], cmp_int);
    unsigned lo = 3;
    for (size_t i = 0; i < m; i++) {
        unsigned fd = (unsigned)k[i];
        if (fd > lo) {
            close_span(lo, fd - 1);
        }
        if (fd + 1 > lo) {
            lo = fd + 1;
        }
    }
    close_span(lo, ~0u);
}

/* Append to dst (size dsz, NUL-terminated) src as JSON string contents. */
static void json_escape(char *dst, size_t dsz, const char *src)
{
    size_t o = 0;
    for (; *src != '\0' && o + 7 < dsz; src++) {
        unsigned char c = (unsigned char)*src;
        if (c == '"' || c == '\\') {
            dst[o++] = '\\';
            dst[o++] = (char)c;
        } else if (c < 0x20) {
            o += (size_t)snprintf(dst + o, dsz - o, "\\u%04x", c);
        } else if (c >= 0x80) {
            /* Status messages stay ASCII, so a stray byte never makes the file invalid JSON. */
            dst[o++] = '?';
        } else {
            dst[o++] = (char)c;
        }
    }
    dst[o] = '\0';
}

/* ------------------------------------------------------------------------ */
/* Log files.                                                                */

struct shim_log {
    int fd;
    int64_t size;
    int64_t cap;
    bool warned;
    char path[SHIM_FILE_PATH_MAX];
    char old[SHIM_FILE_PATH_MAX];
};

static int log_open(struct shim_log *l)
{
    l->fd = open(l->path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (l->fd < 0) {
        return -errno;
    }
    struct stat st;
    l->size = fstat(l->fd, &st) == 0 ? (int64_t)st.st_size : 0;
    return 0;
}

/* Keep one old file: the current one becomes NAME.1 and a fresh one starts. */
static void log_rotate(struct shim_log *l)
{
    if (l->fd >= 0) {
        close(l->fd);
    }
    if (rename(l->path, l->old) != 0 && !l->warned) {
        logf_shim("log_rotate_failed path=%s errno=%d", l->path, errno);
        l->warned = true;
    }
    l->fd = open(l->path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0640);
    l->size = 0;
}

/* Write workload output; never more than cap bytes per file. Failures drop data. */
static void log_write(struct shim_log *l, const char *buf, size_t len)
{
    while (len > 0) {
        if (l->size >= l->cap) {
            log_rotate(l);
        }
        if (l->fd < 0) {
            return;
        }
        size_t chunk = (size_t)(l->cap - l->size);
        if (chunk > len) {
            chunk = len;
        }
        if (write_all(l->fd, buf, chunk) != 0) {
            if (!l->warned) {
                logf_shim("log_write_failed path=%s errno=%d", l->path, errno);
                l->warned = true;
            }
            return;
        }
        l->size += (int64_t)chunk;
        buf += chunk;
        len -= chunk;
    }
}

/* ------------------------------------------------------------------------ */
/* The workload's processes.                                                 */

/* What the workload's side reports on the exec socket before exec. */
enum report_kind {
    REPORT_PID = 'P',    /* about to exec; the credentials carry its pid */
    REPORT_SETUP = 'S',  /* stdio setup failed */
    REPORT_CHDIR = 'C',  /* chdir(cwd) failed */
    REPORT_EXEC = 'X',   /* execve failed */
    REPORT_FORK = 'F',   /* the namespace's init could not fork */
    REPORT_CGROUP = 'G', /* could not join the cgroup (not fatal: runs without limits) */
};

struct report {
    int32_t kind;
    int32_t err;
};

struct child_args {
    const struct shim_spec *spec;
    const char *cgroup_procs; /* the instance's cgroup.procs, or NULL */
    int life_r;               /* only the shim holds the write end: hang-up means it died */
    int report_w;             /* SOCK_SEQPACKET, close-on-exec: EOF tells the shim exec worked */
    int out_w;
    int err_w;
    int status_w; /* namespace mode: init writes the workload's wait status here */
};

static void child_report(int fd, int kind, int err)
{
    struct report r = {kind, err};
    ssize_t n = send(fd, &r, sizeof r, MSG_NOSIGNAL);
    (void)n;
}

/*
 * First steps of the shim's child: die with the shim (PDEATHSIG), and close
 * the race where the shim died before that was set (its life pipe then hangs
 * up). Then join the instance's cgroup, so that everything forked from here
 * is accounted and limited.
 */
static void child_attach(const struct child_args *a)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    struct pollfd p = {a->life_r, POLLIN, 0};
    if (poll(&p, 1, 0) != 0) {
        _exit(1);
    }
    close(a->life_r);
    int rc = a->cgroup_procs != NULL ? write_knob(a->cgroup_procs, "0") : 0;
    if (rc != 0) {
        child_report(a->report_w, REPORT_CGROUP, -rc);
    }
}

/* execvpe() with PATH taken from the workload's environment, not the shim's. */
static void exec_search(char *const argv[], char *const envp[], const char *path)
{
    if (strchr(argv[0], '/') != NULL) {
        execve(argv[0], argv, envp);
        return;
    }
    char buf[SHIM_FILE_PATH_MAX];
    size_t alen = strlen(argv[0]);
    bool eacces = false;
    const char *p = path;
    for (;;) {
        const char *colon = strchr(p, ':');
        size_t dlen = colon != NULL ? (size_t)(colon - p) : strlen(p);
        if (dlen + 1 + alen + 1 <= sizeof buf) {
            if (dlen == 0) {
                buf[0] = '.';
                dlen = 1;
            } else {
                memcpy(buf, p, dlen);
            }
            buf[dlen] = '/';
            memcpy(buf + dlen + 1, argv[0], alen + 1);
            execve(buf, argv, envp);
            if (errno == EACCES) {
                eacces = true;
            } else if (errno != ENOENT && errno != ENOTDIR) {
                return;
            }
        }
        if (colon == NULL) {
            break;
        }
        p = colon + 1;
    }
    errno = eacces ? EACCES : ENOENT;
}

/* The workload process itself: reset what the shim changed, then exec. */
static _Noreturn void workload_exec(const struct child_args *a)
{
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; sig++) {
        if (sig != SIGKILL && sig != SIGSTOP) {
            sigaction(sig, &dfl, NULL);
        }
    }
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    setpgid(0, 0);
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (devnull < 0 || dup2(devnull, STDIN_FILENO) < 0 || dup2(a->out_w, STDOUT_FILENO) < 0 ||
        dup2(a->err_w, STDERR_FILENO) < 0) {
        child_report(a->report_w, REPORT_SETUP, errno);
        _exit(127);
    }
    int keep[] = {a->report_w};
    close_all_except(keep, 1);
    const char *cwd = a->spec->cwd[0] != '\0' ? a->spec->cwd : "/";
    if (chdir(cwd) != 0) {
        child_report(a->report_w, REPORT_CHDIR, errno);
        _exit(127);
    }
    child_report(a->report_w, REPORT_PID, 0);
    exec_search(a->spec->argv, a->spec->env, a->spec->path);
    child_report(a->report_w, REPORT_EXEC, errno);
    _exit(127);
}

static void init_noop_handler(int sig)
{
    (void)sig;
}

/*
 * PID 1 of the workload's namespace. The kernel drops signals sent to a
 * namespace's init unless it handles them, and someone must reap orphans, so
 * the workload runs as pid 2 under this small init (fork of the shim, never
 * exec'd): it forwards stop signals, reaps, and exits when the workload does,
 * handing its wait status to the shim through status_w. Its exit tears the
 * whole namespace down.
 */
static int init_main(void *arg)
{
    struct child_args *a = arg;
    int keep[] = {a->life_r, a->report_w, a->out_w, a->err_w, a->status_w};
    close_all_except(keep, 5);
    child_attach(a);
    /* Private propagation first, so the /proc mount never reaches the host. */
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) == 0) {
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    }
    if (a->spec->hostname[0] != '\0') {
        if (sethostname(a->spec->hostname, strlen(a->spec->hostname)) != 0) {
            /* Not fatal: the workload keeps the host's name. */
        }
    }
    static const int fwd[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH};
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = init_noop_handler;
    for (size_t i = 0; i < sizeof fwd / sizeof fwd[0]; i++) {
        sigaction(fwd[i], &sa, NULL);
        sigaddset(&set, fwd[i]);
    }
    sigprocmask(SIG_BLOCK, &set, NULL);
    int sfd = signalfd(-1, &set, SFD_CLOEXEC);
    pid_t w = fork();
    if (w == 0) {
        if (sfd >= 0) {
            close(sfd);
        }
        close(a->status_w);
        workload_exec(a);
    }
    if (w < 0) {
        child_report(a->report_w, REPORT_FORK, errno);
        _exit(127);
    }
    close(a->report_w);
    close(a->out_w);
    close(a->err_w);
    for (;;) {
        struct signalfd_siginfo si;
        ssize_t n = sfd >= 0 ? read(sfd, &si, sizeof si) : -1;
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n != (ssize_t)sizeof si) {
            /* No signalfd: fall back to a plain wait (stop then needs the grace period). */
            int st;
            while (waitpid(w, &st, 0) < 0 && errno == EINTR) {
            }
            ssize_t wr = write(a->status_w, &st, sizeof st);
            (void)wr;
            _exit(0);
        }
        if (si.ssi_signo != SIGCHLD) {
            kill(w, (int)si.ssi_signo);
            continue;
        }
        int st;
        pid_t p;
        while ((p = waitpid(-1, &st, WNOHANG)) > 0) {
            if (p == w) {
                ssize_t wr = write(a->status_w, &st, sizeof st);
                (void)wr;
                _exit(0);
            }
        }
    }
}

/* ------------------------------------------------------------------------ */
/* The supervisor.                                                           */

enum shim_phase {
    PHASE_RUN,      /* the workload runs */
    PHASE_BACKOFF,  /* waiting to restart it */
    PHASE_STOPPING, /* SIGTERM forwarded; SIGKILL at kill_at */
    PHASE_DONE,
};

struct shim {
    const char *dir;
    char status_path[SHIM_FILE_PATH_MAX];
    char status_tmp[SHIM_FILE_PATH_MAX];
    char cgroup[SHIM_FILE_PATH_MAX];
    int ready_fd;
    int sigfd;
    int lock_fd;
    struct shim_spec spec;
    struct shim_log logs[2];
    char *stack;
    /* Isolation in effect (docs/workloads.md, "isolation"). */
    bool ns;
    bool cg;
    bool memory_limit;
    bool cpu_limit;
    /* The current run. */
    pid_t child;    /* our direct child: the namespace's init, or the workload */
    pid_t workload; /* the exec'd command, as seen from here */
    int out_r;
    int err_r;
    int status_r;
    enum shim_phase phase;
    int64_t run_started_mono;
    int64_t backoff_ms;
    int64_t next_start_mono;
    int64_t kill_at_mono;
    bool killed;
    bool stop_requested;
    /* What status.json says. */
    const char *state;
    bool alive;
    int exit_code;
    int exit_signal;
    int64_t restarts;
    int64_t started_at_ms;
    char error[SHIM_ERR_MAX];
};

/*
 * docs/workloads.md, "status.json": readers see the old or the new file,
 * never a torn one (rename). Only the last word is fsynced: the file
 * describes live processes, which a power loss kills anyway, and an fsync on
 * the start path costs milliseconds.
 */
static void status_write(struct shim *s, bool durable)
{
    char err[SHIM_ERR_MAX * 2];
    char cg[SHIM_FILE_PATH_MAX + 64];
    char pids[96];
    char exitf[64];
    char buf[SHIM_FILE_PATH_MAX + 1024];
    if (s->alive) {
        snprintf(pids, sizeof pids, "\"shim_pid\":%d,\"child_pid\":", (int)getpid());
        size_t o = strlen(pids);
        if (s->child > 0) {
            snprintf(pids + o, sizeof pids - o, "%d,\"workload_pid\":%d", (int)s->child,
                     (int)s->workload);
        } else {
            snprintf(pids + o, sizeof pids - o, "null,\"workload_pid\":null");
        }
    } else {
        snprintf(pids, sizeof pids, "\"shim_pid\":null,\"child_pid\":null,\"workload_pid\":null");
    }
    if (s->exit_code >= 0) {
        snprintf(exitf, sizeof exitf, "\"exit_code\":%d,\"signal\":null", s->exit_code);
    } else if (s->exit_signal > 0) {
        snprintf(exitf, sizeof exitf, "\"exit_code\":null,\"signal\":%d", s->exit_signal);
    } else {
        snprintf(exitf, sizeof exitf, "\"exit_code\":null,\"signal\":null");
    }
    if (s->error[0] != '\0') {
        char e[SHIM_ERR_MAX * 2 - 2];
        json_escape(e, sizeof e, s->error);
        snprintf(err, sizeof err, "\"%s\"", e);
    } else {
        snprintf(err, sizeof err, "null");
    }
    if (s->cg) {
        char e[SHIM_FILE_PATH_MAX + 32];
        json_escape(e, sizeof e, s->cgroup);
        snprintf(cg, sizeof cg, "\"%s\"", e);
    } else {
        snprintf(cg, sizeof cg, "null");
    }
    int n = snprintf(buf, sizeof buf,
                     "{\"version\":1,%s,\"state\":\"%s\",%s,\"restarts\":%lld,"
                     "\"backoff_ms\":%lld,\"started_at_ms\":%lld,\"updated_at_ms\":%lld,"
                     "\"error\":%s,\"isolation\":{\"pid_ns\":%s,\"mount_ns\":%s,\"uts_ns\":%s,"
                     "\"cgroup\":%s,\"memory_limit\":%s,\"cpu_limit\":%s}}\n",
                     pids, s->state, exitf, (long long)s->restarts, (long long)s->backoff_ms,
                     (long long)s->started_at_ms, (long long)wall_ms(), err,
                     s->ns ? "true" : "false", s->ns ? "true" : "false", s->ns ? "true" : "false",
                     cg, s->memory_limit ? "true" : "false", s->cpu_limit ? "true" : "false");
    if (n < 0 || (size_t)n >= sizeof buf) {
        logf_shim("status_too_long");
        return;
    }
    int fd = open(s->status_tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        logf_shim("status_write_failed errno=%d", errno);
        return;
    }
    if (write_all(fd, buf, (size_t)n) != 0 || (durable && fsync(fd) != 0)) {
        logf_shim("status_write_failed errno=%d", errno);
        close(fd);
        return;
    }
    close(fd);
    if (rename(s->status_tmp, s->status_path) != 0) {
        logf_shim("status_rename_failed errno=%d", errno);
    }
}

/* Tell archipel-edge how the start went: "OK <shim pid>" or "ERR <kind> <message>". */
static void ready_send(struct shim *s, const char *kind, const char *msg)
{
    if (s->ready_fd < 0) {
        return;
    }
    char line[SHIM_ERR_MAX + 64];
    if (kind == NULL) {
        snprintf(line, sizeof line, "OK %d\n", (int)getpid());
    } else {
        snprintf(line, sizeof line, "ERR %s %s\n", kind, msg);
    }
    if (write_all(s->ready_fd, line, strlen(line)) != 0) {
        logf_shim("ready_write_failed errno=%d", errno);
    }
    close(s->ready_fd);
    s->ready_fd = -1;
}

static void cgroup_setup(struct shim *s)
{
    const struct shim_spec *sp = &s->spec;
    if (sp->cgroup_parent[0] == '\0') {
        return;
    }
    int n = snprintf(s->cgroup, sizeof s->cgroup, "%s/%s", sp->cgroup_parent, sp->id);
    if (n < 0 || (size_t)n >= sizeof s->cgroup) {
        return;
    }
    if (mkdir(s->cgroup, 0755) != 0 && errno != EEXIST) {
        logf_shim("cgroup_unavailable path=%s errno=%d", s->cgroup, errno);
        return;
    }
    s->cg = true;
    char knob[SHIM_FILE_PATH_MAX + 32];
    char val[64];
    if (sp->memory_mb > 0) {
        snprintf(knob, sizeof knob, "%s/memory.max", s->cgroup);
        snprintf(val, sizeof val, "%lld", (long long)sp->memory_mb * 1024 * 1024);
        int rc = write_knob(knob, val);
        s->memory_limit = rc == 0;
        if (rc != 0) {
            logf_shim("cgroup_memory_limit_failed errno=%d", -rc);
        }
    }
    if (sp->cpu_millis > 0) {
        /* 1000 millis = one CPU = the whole period; the kernel wants >= 1 ms of quota. */
        long long quota = (long long)sp->cpu_millis * (SHIM_CPU_PERIOD_US / 1000);
        if (quota < 1000) {
            quota = 1000;
        }
        snprintf(knob, sizeof knob, "%s/cpu.max", s->cgroup);
        snprintf(val, sizeof val, "%lld %d", quota, SHIM_CPU_PERIOD_US);
        int rc = write_knob(knob, val);
        s->cpu_limit = rc == 0;
        if (rc != 0) {
            logf_shim("cgroup_cpu_limit_failed errno=%d", -rc);
        }
    }
}

static void cgroup_remove(struct shim *s)
{
    if (!s->cg) {
        return;
    }
    char knob[SHIM_FILE_PATH_MAX + 32];
    snprintf(knob, sizeof knob, "%s/cgroup.kill", s->cgroup);
    write_knob(knob, "1");
    for (int i = 0; i < 20; i++) {
        if (rmdir(s->cgroup) == 0 || errno != EBUSY) {
            return;
        }
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

static void close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

static const char *report_what(int kind)
{
    switch (kind) {
    case REPORT_SETUP:
        return "stdio setup";
    case REPORT_CHDIR:
        return "chdir";
    case REPORT_FORK:
        return "fork";
    default:
        return "exec";
    }
}

/*
 * Start one run of the workload. Returns 0 once it has exec'd, or -1 with
 * s->error set (the child, if any, is reaped).
 */
static int workload_start(struct shim *s)
{
    int out[2] = {-1, -1}, err[2] = {-1, -1}, rep[2] = {-1, -1}, life[2] = {-1, -1};
    int stat[2] = {-1, -1};
    pid_t pid = -1;
    if (pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0 || pipe2(life, O_CLOEXEC) != 0 ||
        pipe2(stat, O_CLOEXEC) != 0 ||
        socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, rep) != 0) {
        snprintf(s->error, sizeof s->error, "pipe: %s", strerror(errno));
        goto fail;
    }
    int one = 1;
    setsockopt(rep[0], SOL_SOCKET, SO_PASSCRED, &one, sizeof one);
    char procs[SHIM_FILE_PATH_MAX + 32];
    snprintf(procs, sizeof procs, "%s/cgroup.procs", s->cgroup);
    struct child_args a = {&s->spec, s->cg ? procs : NULL, life[0], rep[1], out[1], err[1],
                           stat[1]};
    if (s->ns) {
        pid = clone(init_main, s->stack + SHIM_STACK_SIZE,
                    CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS | SIGCHLD, &a);
        if (pid < 0) {
            /* docs/workloads.md: no namespaces allowed here; run it as a plain child. */
            logf_shim("namespaces_unavailable errno=%d", errno);
            s->ns = false;
        }
    }
    if (!s->ns) {
        pid = fork();
        if (pid == 0) {
            close(life[1]);
            child_attach(&a);
            workload_exec(&a);
        }
        if (pid > 0) {
            setpgid(pid, pid);
        }
    }
    if (pid < 0) {
        snprintf(s->error, sizeof s->error, "fork: %s", strerror(errno));
        goto fail;
    }
    close_fd(&life[0]);
    close_fd(&rep[1]);
    close_fd(&out[1]);
    close_fd(&err[1]);
    close_fd(&stat[1]);

    /* Wait for the exec: the socket reaches EOF when the workload's copy closes on exec. */
    pid_t workload = 0;
    bool about_to_exec = false;
    int cgroup_err = 0;
    int64_t deadline = mono_ms() + SHIM_EXEC_WAIT_MS;
    for (;;) {
        struct pollfd pfd = {rep[0], POLLIN, 0};
        int64_t left = deadline - mono_ms();
        if (left <= 0) {
            snprintf(s->error, sizeof s->error, "workload did not exec within %d ms",
                     SHIM_EXEC_WAIT_MS);
            goto fail_child;
        }
        int pr = poll(&pfd, 1, (int)left);
        if (pr < 0 && errno == EINTR) {
            continue;
        }
        if (pr <= 0) {
            continue;
        }
        struct report r;
        union {
            struct cmsghdr h;
            char buf[CMSG_SPACE(sizeof(struct ucred))];
        } ctl;
        struct iovec iov = {&r, sizeof r};
        struct msghdr msg;
        memset(&msg, 0, sizeof msg);
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = ctl.buf;
        msg.msg_controllen = sizeof ctl.buf;
        ssize_t n = recvmsg(rep[0], &msg, MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n == 0 || n < 0) {
            break;
        }
        if (n != (ssize_t)sizeof r) {
            continue;
        }
        if (r.kind == REPORT_CGROUP) {
            cgroup_err = r.err;
            continue;
        }
        if (r.kind == REPORT_PID) {
            about_to_exec = true;
            for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
                if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) {
                    struct ucred cr;
                    memcpy(&cr, CMSG_DATA(c), sizeof cr);
                    workload = cr.pid;
                }
            }
            continue;
        }
        if (r.kind == REPORT_CHDIR) {
            snprintf(s->error, sizeof s->error, "chdir '%.200s': %s", s->spec.cwd, strerror(r.err));
        } else if (r.kind == REPORT_EXEC) {
            snprintf(s->error, sizeof s->error, "exec '%.200s': %s", s->spec.argv[0],
                     strerror(r.err));
        } else {
            snprintf(s->error, sizeof s->error, "%s: %s", report_what(r.kind), strerror(r.err));
        }
        goto fail_child;
    }
    if (!about_to_exec) {
        snprintf(s->error, sizeof s->error, "workload exited before exec");
        goto fail_child;
    }
    if (workload <= 0) {
        workload = pid; /* no credentials came: only the plain mode can get here */
    }
    close_fd(&rep[0]);
    close_fd(&life[1]);
    if (cgroup_err != 0) {
        logf_shim("cgroup_join_failed path=%s errno=%d", s->cgroup, cgroup_err);
        s->cg = s->memory_limit = s->cpu_limit = false;
    }
    fcntl(out[0], F_SETFL, O_NONBLOCK);
    fcntl(err[0], F_SETFL, O_NONBLOCK);
    s->child = pid;
    s->workload = workload;
    s->out_r = out[0];
    s->err_r = err[0];
    s->status_r = stat[0];
    s->phase = PHASE_RUN;
    s->run_started_mono = mono_ms();
    s->started_at_ms = wall_ms();
    s->exit_code = -1;
    s->exit_signal = 0;
    s->error[0] = '\0';
    s->state = "running";
    return 0;

fail_child:
    kill(pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
    }
fail:
    close_fd(&out[0]);
    close_fd(&out[1]);
    close_fd(&err[0]);
    close_fd(&err[1]);
    close_fd(&rep[0]);
    close_fd(&rep[1]);
    close_fd(&life[0]);
    close_fd(&life[1]);
    close_fd(&stat[0]);
    close_fd(&stat[1]);
    return -1;
}

static void pump(struct shim *s, int which, int max_reads)
{
    int *fd = which == 0 ? &s->out_r : &s->err_r;
    char buf[SHIM_READ_BUF];
    for (int i = 0; i < max_reads && *fd >= 0; i++) {
        ssize_t n = read(*fd, buf, sizeof buf);
        if (n > 0) {
            log_write(&s->logs[which], buf, (size_t)n);
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && errno == EAGAIN) {
            return;
        }
        close_fd(fd);
    }
}

static void signal_workload(struct shim *s, int sig)
{
    if (s->child <= 0) {
        return;
    }
    /* Namespace: init forwards (SIGKILL takes the whole namespace). Plain: its process group. */
    if (s->ns || kill(-s->child, sig) != 0) {
        kill(s->child, sig);
    }
}

/* The shim's last word: final state, no pids, cgroup gone. */
static void finish(struct shim *s, const char *state)
{
    cgroup_remove(s);
    s->state = state;
    s->alive = false;
    s->child = 0;
    s->workload = 0;
    s->phase = PHASE_DONE;
    status_write(s, true);
    logf_shim("shim_exit state=%s", state);
}

static void restart_now(struct shim *s)
{
    s->restarts++;
    if (workload_start(s) != 0) {
        logf_shim("restart_failed error=\"%s\"", s->error);
        finish(s, "failed");
        return;
    }
    status_write(s, false);
}

static void on_workload_exit(struct shim *s, int wst)
{
    if (s->status_r >= 0) {
        int st;
        if (read(s->status_r, &st, sizeof st) == (ssize_t)sizeof st) {
            wst = st; /* the workload's own status, relayed by the namespace's init */
        }
        close_fd(&s->status_r);
    }
    pump(s, 0, 64);
    pump(s, 1, 64);
    close_fd(&s->out_r);
    close_fd(&s->err_r);
    s->child = 0;
    s->workload = 0;
    s->exit_code = WIFEXITED(wst) ? WEXITSTATUS(wst) : -1;
    s->exit_signal = WIFSIGNALED(wst) ? WTERMSIG(wst) : 0;
    logf_shim("workload_exit code=%d signal=%d", s->exit_code, s->exit_signal);
    if (s->stop_requested) {
        finish(s, "stopped");
        return;
    }
    bool failed = s->exit_code != 0;
    bool again = s->spec.restart == SHIM_RESTART_ALWAYS ||
                 (s->spec.restart == SHIM_RESTART_ON_FAILURE && failed);
    if (!again) {
        finish(s, "exited");
        return;
    }
    int64_t now = mono_ms();
    /* docs/workloads.md: 100 ms doubling to 10 s; a run of 10 s or more resets it. */
    if (s->backoff_ms == 0 || now - s->run_started_mono >= SHIM_BACKOFF_RESET_MS) {
        s->backoff_ms = SHIM_BACKOFF_MIN_MS;
    } else {
        s->backoff_ms =
            s->backoff_ms * 2 > SHIM_BACKOFF_MAX_MS ? SHIM_BACKOFF_MAX_MS : s->backoff_ms * 2;
    }
    s->phase = PHASE_BACKOFF;
    s->next_start_mono = now + s->backoff_ms;
    s->state = "exited";
    status_write(s, false);
}

static void reap(struct shim *s)
{
    int wst;
    pid_t p;
    while ((p = waitpid(-1, &wst, WNOHANG)) > 0) {
        if (p == s->child) {
            on_workload_exit(s, wst);
        }
        /* Other pids are the workload's orphans: we are their subreaper. */
    }
}

static void request_stop(struct shim *s)
{
    if (s->stop_requested) {
        return;
    }
    s->stop_requested = true;
    logf_shim("stop_requested phase=%d", (int)s->phase);
    if (s->phase == PHASE_BACKOFF) {
        finish(s, "stopped");
        return;
    }
    if (s->phase == PHASE_RUN) {
        s->phase = PHASE_STOPPING;
        s->kill_at_mono = mono_ms() + s->spec.grace_ms;
        signal_workload(s, s->spec.grace_ms > 0 ? SIGTERM : SIGKILL);
        s->killed = s->spec.grace_ms == 0;
    }
}

static void supervise(struct shim *s)
{
    while (s->phase != PHASE_DONE) {
        int64_t now = mono_ms();
        int timeout = -1;
        if (s->phase == PHASE_BACKOFF) {
            timeout = (int)(s->next_start_mono > now ? s->next_start_mono - now : 0);
        } else if (s->phase == PHASE_STOPPING && !s->killed) {
            timeout = (int)(s->kill_at_mono > now ? s->kill_at_mono - now : 0);
        }
        struct pollfd pfd[3] = {
            {s->sigfd, POLLIN, 0},
            {s->out_r, POLLIN, 0},
            {s->err_r, POLLIN, 0},
        };
        int n = poll(pfd, 3, timeout);
        if (n < 0 && errno != EINTR) {
            logf_shim("poll_failed errno=%d", errno);
            struct timespec ts = {0, 100 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        if (n > 0) {
            if (pfd[1].revents != 0) {
                pump(s, 0, 4);
            }
            if (pfd[2].revents != 0) {
                pump(s, 1, 4);
            }
            if (pfd[0].revents != 0) {
                struct signalfd_siginfo si;
                while (read(s->sigfd, &si, sizeof si) == (ssize_t)sizeof si) {
                    if (si.ssi_signo == SIGCHLD) {
                        reap(s);
                    } else if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
                        request_stop(s);
                    }
                }
            }
        }
        now = mono_ms();
        if (s->phase == PHASE_BACKOFF && now >= s->next_start_mono) {
            restart_now(s);
        } else if (s->phase == PHASE_STOPPING && !s->killed && now >= s->kill_at_mono) {
            logf_shim("stop_grace_expired grace_ms=%lld", (long long)s->spec.grace_ms);
            signal_workload(s, SIGKILL);
            s->killed = true;
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Probe: what isolation this host allows.                                   */

static int probe_child(void *arg)
{
    (void)arg;
    _exit(0);
}

static bool probe_clone(char *stack, int flags, int *err)
{
    pid_t pid = clone(probe_child, stack + SHIM_STACK_SIZE, flags | SIGCHLD, NULL);
    if (pid < 0) {
        *err = errno;
        return false;
    }
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    return true;
}

/* Make controller available to children of dir (cgroup v2 subtree_control). */
static bool cg_enable(const char *dir, const char *controller)
{
    char path[SHIM_FILE_PATH_MAX + 32];
    char buf[512];
    snprintf(path, sizeof path, "%s/cgroup.subtree_control", dir);
    if (read_small(path, buf, sizeof buf) >= 0 && has_word(buf, controller)) {
        return true;
    }
    char val[32];
    snprintf(val, sizeof val, "+%s", controller);
    if (write_knob(path, val) != 0) {
        return false;
    }
    return read_small(path, buf, sizeof buf) >= 0 && has_word(buf, controller);
}

/*
 * Prepare cgroup v2 group parent for instance groups: from the deepest level
 * of it that already is a cgroup v2 group down to parent itself, let each
 * level's children have the memory and cpu controllers (where offered) and
 * create the next level. *mem and *cpu say whether instance groups under
 * parent get them. Returns false with detail when parent cannot be a group.
 */
static bool cg_prepare(const char *parent, bool *mem, bool *cpu, char *detail, size_t dsz)
{
    char path[SHIM_FILE_PATH_MAX];
    char knob[SHIM_FILE_PATH_MAX + 32];
    char buf[512];
    size_t len = strlen(parent);
    memcpy(path, parent, len + 1);
    while (len > 1 && path[len - 1] == '/') {
        path[--len] = '\0';
    }
    size_t top = len;
    for (;;) {
        path[top] = '\0';
        snprintf(knob, sizeof knob, "%s/cgroup.controllers", path);
        if (read_small(knob, buf, sizeof buf) >= 0) {
            break;
        }
        char *slash = strrchr(path, '/');
        if (slash == NULL || slash == path) {
            snprintf(detail, dsz, "no cgroup v2 hierarchy at or above %.300s", parent);
            return false;
        }
        top = (size_t)(slash - path);
    }
    for (;;) {
        snprintf(knob, sizeof knob, "%s/cgroup.controllers", path);
        if (read_small(knob, buf, sizeof buf) < 0) {
            snprintf(detail, dsz, "%.300s is not a cgroup v2 group", path);
            return false;
        }
        bool m = has_word(buf, "memory") && cg_enable(path, "memory");
        bool c = has_word(buf, "cpu") && cg_enable(path, "cpu");
        if (top == len) {
            *mem = m;
            *cpu = c;
            return true;
        }
        /* Levels cut off while looking upwards end in NUL: restore one, cut the next. */
        path[top] = '/';
        size_t next = top + 1;
        while (next < len && path[next] != '/' && path[next] != '\0') {
            next++;
        }
        path[next] = '\0';
        if (mkdir(path, 0755) != 0 && errno != EEXIST) {
            snprintf(detail, dsz, "cannot create %.300s: %s", path, strerror(errno));
            return false;
        }
        top = next;
    }
}

/*
 * Print one JSON object saying which namespaces and cgroup v2 controllers
 * work, preparing cgroup_parent on the way (cg_prepare()). Exit code 0
 * unless the output cannot be written.
 */
static int probe(const char *cgroup_parent)
{
    char *stack = malloc(SHIM_STACK_SIZE);
    if (stack == NULL) {
        return 1;
    }
    int e_all = 0, e_pid = 0, e_mnt = 0, e_uts = 0;
    bool all = probe_clone(stack, CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS, &e_all);
    bool pid_ns = all || probe_clone(stack, CLONE_NEWPID, &e_pid);
    bool mnt_ns = all || probe_clone(stack, CLONE_NEWNS, &e_mnt);
    bool uts_ns = all || probe_clone(stack, CLONE_NEWUTS, &e_uts);
    free(stack);

    char detail[512] = "";
    bool v2 = false, mem = false, cpu = false;
    if (cgroup_parent == NULL || cgroup_parent[0] == '\0') {
        snprintf(detail, sizeof detail, "cgroups disabled by configuration");
    } else if (cgroup_parent[0] != '/' || strlen(cgroup_parent) >= SHIM_DIR_MAX) {
        snprintf(detail, sizeof detail, "cgroup parent must be an absolute path");
    } else if (cg_prepare(cgroup_parent, &mem, &cpu, detail, sizeof detail)) {
        v2 = true;
        if (!mem || !cpu) {
            snprintf(detail, sizeof detail, "cgroup v2 at %.300s without the %s%s%s controller%s",
                     cgroup_parent, mem ? "" : "memory", !mem && !cpu ? " and " : "",
                     cpu ? "" : "cpu", !mem && !cpu ? "s" : "");
        }
    }
    if (!pid_ns || !mnt_ns || !uts_ns) {
        size_t o = strlen(detail);
        snprintf(detail + o, sizeof detail - o, "%snamespaces refused (%s)", o > 0 ? "; " : "",
                 strerror(e_all));
    }
    char det[1024];
    char par[SHIM_FILE_PATH_MAX + 64];
    json_escape(det, sizeof det, detail);
    if (v2) {
        char e[SHIM_FILE_PATH_MAX + 32];
        json_escape(e, sizeof e, cgroup_parent);
        snprintf(par, sizeof par, "\"%s\"", e);
    } else {
        snprintf(par, sizeof par, "null");
    }
    printf("{\"pid_ns\":%s,\"mount_ns\":%s,\"uts_ns\":%s,\"namespaces\":%s,\"cgroup_v2\":%s,"
           "\"cgroup_parent\":%s,\"memory_limit\":%s,\"cpu_limit\":%s,\"detail\":\"%s\"}\n",
           pid_ns ? "true" : "false", mnt_ns ? "true" : "false", uts_ns ? "true" : "false",
           all ? "true" : "false", v2 ? "true" : "false", par, mem ? "true" : "false",
           cpu ? "true" : "false", det);
    return fflush(stdout) == 0 ? 0 : 1;
}

/* ------------------------------------------------------------------------ */
/* Start-up.                                                                 */

static int read_spec(struct shim *s, char *err, size_t errsz)
{
    char path[SHIM_FILE_PATH_MAX];
    snprintf(path, sizeof path, "%s/spec.json", s->dir);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errsz, "spec.json: %s", strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errsz, "spec.json: not a regular file");
        close(fd);
        return -1;
    }
    if (st.st_size > SHIM_SPEC_MAX_BYTES) {
        snprintf(err, errsz, "spec.json: %lld bytes, more than the %d allowed",
                 (long long)st.st_size, SHIM_SPEC_MAX_BYTES);
        close(fd);
        return -1;
    }
    size_t size = (size_t)st.st_size;
    char *buf = malloc(size + 1);
    if (buf == NULL) {
        snprintf(err, errsz, "spec.json: out of memory");
        close(fd);
        return -1;
    }
    size_t used = 0;
    while (used < size) {
        ssize_t n = read(fd, buf + used, size - used);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            break;
        }
        used += (size_t)n;
    }
    close(fd);
    char perr[SHIM_ERR_MAX];
    int rc = shim_spec_parse(buf, used, &s->spec, perr, sizeof perr);
    free(buf);
    if (rc != 0) {
        snprintf(err, errsz, "spec.json: %.240s", perr);
        return -1;
    }
    return 0;
}

static void usage(FILE *out)
{
    fprintf(out, "usage: archipel-shim --dir DIR [--ready-fd FD] [--foreground]\n"
                 "       archipel-shim --probe [--cgroup-parent PATH]\n"
                 "\n"
                 "Supervises the workload described by DIR/spec.json for archipel-edge's\n"
                 "process driver (docs/workloads.md). Not meant to be run by hand.\n");
}

int main(int argc, char **argv)
{
    const char *dir = NULL;
    const char *cgroup_parent = NULL;
    int ready_fd = -1;
    bool foreground = false;
    bool do_probe = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has_val = i + 1 < argc;
        if (strcmp(a, "--dir") == 0 && has_val) {
            dir = argv[++i];
        } else if (strcmp(a, "--ready-fd") == 0 && has_val) {
            char *end;
            long v = strtol(argv[++i], &end, 10);
            if (*end != '\0' || v < 3 || v > 1023) {
                fprintf(stderr, "archipel-shim: bad --ready-fd\n");
                return 2;
            }
            ready_fd = (int)v;
        } else if (strcmp(a, "--cgroup-parent") == 0 && has_val) {
            cgroup_parent = argv[++i];
        } else if (strcmp(a, "--foreground") == 0) {
            foreground = true;
        } else if (strcmp(a, "--probe") == 0) {
            do_probe = true;
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (do_probe) {
        return probe(cgroup_parent);
    }
    if (dir == NULL || dir[0] != '/' || strlen(dir) > SHIM_DIR_MAX) {
        fprintf(stderr, "archipel-shim: --dir needs an absolute path\n");
        usage(stderr);
        return 2;
    }
    if (ready_fd >= 0 && fcntl(ready_fd, F_SETFD, FD_CLOEXEC) != 0) {
        ready_fd = -1;
    }
    /* Nothing inherited from the daemon but stdio and the ready pipe. */
    int keep[] = {ready_fd};
    close_all_except(keep, ready_fd >= 0 ? 1 : 0);

    if (!foreground) {
        /* Detach: the daemon reaps the parent at once; the child is reparented to init. */
        pid_t pid = fork();
        if (pid < 0) {
            return 1;
        }
        if (pid > 0) {
            _exit(0);
        }
        setsid();
    }
    umask(022);

    struct shim shim;
    struct shim *s = &shim;
    memset(s, 0, sizeof *s);
    s->dir = dir;
    s->ready_fd = ready_fd;
    s->sigfd = s->lock_fd = s->out_r = s->err_r = s->status_r = -1;
    s->exit_code = -1;
    s->state = "starting";
    s->alive = true;
    snprintf(s->status_path, sizeof s->status_path, "%s/status.json", dir);
    snprintf(s->status_tmp, sizeof s->status_tmp, "%s/status.json.tmp", dir);

    char path[SHIM_FILE_PATH_MAX];
    snprintf(path, sizeof path, "%s/shim.log", dir);
    int lfd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (lfd >= 0) {
        struct stat st;
        if (fstat(lfd, &st) == 0 && st.st_size > SHIM_SHIM_LOG_MAX) {
            if (ftruncate(lfd, 0) != 0) {
                /* An oversized shim.log is harmless. */
            }
        }
        dup2(lfd, STDERR_FILENO);
        close(lfd);
    }
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (devnull >= 0) {
        dup2(devnull, STDIN_FILENO);
        dup2(devnull, STDOUT_FILENO);
        close(devnull);
    }

    signal(SIGPIPE, SIG_IGN);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigprocmask(SIG_BLOCK, &set, NULL);
    s->sigfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    /* Orphans of a plain (namespace-less) workload come back to us to be reaped. */
    prctl(PR_SET_CHILD_SUBREAPER, 1);

    char err[SHIM_ERR_MAX];
    if (s->sigfd < 0) {
        snprintf(err, sizeof err, "signalfd: %s", strerror(errno));
        ready_send(s, "internal", err);
        return 1;
    }
    /* docs/workloads.md: one shim per directory; a second one leaves at once. */
    snprintf(path, sizeof path, "%s/shim.lock", dir);
    s->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (s->lock_fd < 0 || flock(s->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        snprintf(err, sizeof err, "%s",
                 e == EWOULDBLOCK ? "another shim runs this instance" : strerror(e));
        logf_shim("lock_failed error=\"%s\"", err);
        ready_send(s, e == EWOULDBLOCK ? "busy" : "internal", err);
        return 3;
    }
    logf_shim("shim_start dir=%s", dir);
    /* Claim the instance at once, so a daemon restarting now sees a live shim. */
    status_write(s, false);
    if (read_spec(s, s->error, sizeof s->error) != 0) {
        logf_shim("spec_rejected error=\"%s\"", s->error);
        finish(s, "failed");
        ready_send(s, "spec", s->error);
        return 2;
    }
    for (int i = 0; i < 2; i++) {
        struct shim_log *l = &s->logs[i];
        const char *name = i == 0 ? "stdout" : "stderr";
        l->cap = s->spec.log_max_bytes;
        snprintf(l->path, sizeof l->path, "%s/%s.log", dir, name);
        snprintf(l->old, sizeof l->old, "%s/%s.log.1", dir, name);
        if (log_open(l) != 0) {
            logf_shim("log_open_failed path=%s errno=%d", l->path, errno);
        }
    }
    s->ns = s->spec.namespaces;
    if (s->ns) {
        s->stack = malloc(SHIM_STACK_SIZE);
        if (s->stack == NULL) {
            s->ns = false;
        }
    }
    cgroup_setup(s);
    if (workload_start(s) != 0) {
        logf_shim("start_failed error=\"%s\"", s->error);
        char msg[SHIM_ERR_MAX];
        snprintf(msg, sizeof msg, "%s", s->error);
        finish(s, "failed");
        ready_send(s, "exec", msg);
        return 1;
    }
    status_write(s, false);
    ready_send(s, NULL, NULL);
    supervise(s);
    shim_spec_free(&s->spec);
    free(s->stack);
    return 0;
}

#endif /* AP_SHIM_PARSER_ONLY */
