/* archipel-shim: the per-instance supervisor of the process driver; libc only, see
 * docs/workloads.md. */
/*
 * One shim runs per instance, in its own session, so that workloads survive
 * archipel-edge. The driver keeps one shim spawned ahead of time ("idle",
 * --pool): it has already made and locked a spare instance directory and, in
 * namespace mode, cloned the namespace's init. A start then only sends it the
 * spec over a socket; the shim renames the spare directory into place, starts
 * the workload the way posix_spawn does (vfork-style clone, then exec) and
 * answers "OK <status>" once it has exec'd. It copies the workload's
 * stdout/stderr into size-capped log files, restarts it per policy with
 * exponential back-off, and records every change in DIR/status.json. SIGTERM
 * stops it. `--dir DIR` runs DIR/spec.json by hand.
 *
 * It links nothing but libc and keeps its buffers small, so that a shim stays
 * well under 1 MiB resident. The spec decoder (shim_spec_parse) and the
 * control header decoder (shim_ctl_header) take bytes from outside: they are
 * bounded, never assert, and are fuzzed by tests/fuzz/fuzz_shim_spec.c, which
 * includes this file with AP_SHIM_PARSER_ONLY defined to get them alone.
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
#include <sys/mman.h>
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
#define SHIM_STACK_SIZE        (128 * 1024)
#define SHIM_FILE_PATH_MAX     4096
#define SHIM_DIR_MAX           3000
#define SHIM_ERR_MAX           256
#define SHIM_SHIM_LOG_MAX      (64 * 1024)
#define SHIM_CTL_HEADER_MAX    32
#define SHIM_CTL_WAIT_MS       10000
#define SHIM_TOUCH_MAX         (64UL * 1024 * 1024)
#define SHIM_STATUS_RETRY_MS   1000

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
    /* Names starting with '.' are the driver's (the idle shims' spare directories). */
    if (n == 0 || n > SHIM_ID_MAX || id[0] == '.') {
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
            return jp_fail(j, "field 'id': want 1 to %d of [A-Za-z0-9._-], not starting with '.'",
                           SHIM_ID_MAX);
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

/*
 * Decode the header of a control message from the driver, "START <len>\n",
 * at the start of buf (len bytes so far). Returns 0 with *hdr_len (header
 * bytes, newline included) and *body_len (the spec's size, 1 to
 * SHIM_SPEC_MAX_BYTES) set, 1 when more bytes are needed, or -1 when buf
 * cannot be a header. Never asserts on the input.
 */
static int shim_ctl_header(const char *buf, size_t len, size_t *hdr_len, size_t *body_len)
{
    static const char word[] = "START ";
    size_t wl = sizeof word - 1;
    size_t cmp = len < wl ? len : wl;
    if (memcmp(buf, word, cmp) != 0) {
        return -1;
    }
    size_t i = wl;
    size_t v = 0;
    for (; i < len && i < SHIM_CTL_HEADER_MAX; i++) {
        char c = buf[i];
        if (c == '\n') {
            if (i == wl || v == 0 || v > SHIM_SPEC_MAX_BYTES) {
                return -1;
            }
            *hdr_len = i + 1;
            *body_len = v;
            return 0;
        }
        if (c < '0' || c > '9' || (i == wl && c == '0')) {
            return -1;
        }
        v = v * 10 + (size_t)(c - '0');
        if (v > SHIM_SPEC_MAX_BYTES) {
            return -1;
        }
    }
    return i >= SHIM_CTL_HEADER_MAX ? -1 : 1;
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

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void logf_shim(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* One line per event on stderr, which is DIR/shim.log once the shim has an instance. */
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

/*
 * Close every descriptor >= 3 except those in keep (at most 8). Safe in a
 * vfork-style child: no allocation, no library state.
 */
static void close_all_except(const int *keep, size_t n)
{
    int k[8];
    size_t m = 0;
    for (size_t i = 0; i < n && m < 8; i++) {
        if (keep[i] >= 3) {
            size_t j = m++;
            while (j > 0 && k[j - 1] > keep[i]) {
                k[j] = k[j - 1];
                j--;
            }
            k[j] = keep[i];
        }
    }
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

static void close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

/*
 * Show text as this process's last argument in ps and /proc/PID/cmdline (the
 * setproctitle technique: argv strings are ours to modify). The driver
 * spawns idle shims with a placeholder `--dir` argument long enough for any
 * instance directory, so an assigned shim reads `--dir DATA/instances/<id>`.
 * The bytes after text are zeroed up to the slot's own terminating NUL.
 */
static void title_set(char *slot, size_t cap, const char *text)
{
    if (slot == NULL || cap == 0) {
        return;
    }
    size_t n = strlen(text);
    if (n > cap - 1) {
        n = cap - 1;
    }
    memmove(slot, text, n);
    memset(slot + n, 0, cap - n);
}

/*
 * Give this process its own copy of every resident page it may write
 * (private writable mappings). After a fork both sides share those pages
 * copy-on-write, and each first write costs a page fault; on a VM that is tens
 * of microseconds each. Doing it while idle keeps them off the start path.
 * Pages not yet resident are left alone, so the resident size does not grow.
 * It reads memory no C object owns (malloc's and a sanitizer's redzones), so
 * AddressSanitizer must not check it.
 */
__attribute__((no_sanitize_address)) static void touch_resident(void)
{
    char maps[16384];
    ssize_t len = read_small("/proc/self/maps", maps, sizeof maps);
    long page = sysconf(_SC_PAGESIZE);
    if (len <= 0 || page <= 0) {
        return;
    }
    for (char *line = maps; *line != '\0';) {
        char *nl = strchr(line, '\n');
        char *end;
        unsigned long lo = strtoul(line, &end, 16);
        unsigned long hi = *end == '-' ? strtoul(end + 1, &end, 16) : 0;
        /*
         * "lo-hi rw-p ...": writable and private. Mappings larger than the shim ever
         * makes (a sanitizer's shadow memory spans terabytes) are left alone.
         */
        if (hi > lo && hi - lo <= SHIM_TOUCH_MAX && end[0] == ' ' && end[1] == 'r' &&
            end[2] == 'w' && end[4] == 'p') {
            unsigned char vec[64];
            for (unsigned long a = lo; a < hi;) {
                size_t pages = (hi - a) / (unsigned long)page;
                if (pages > sizeof vec) {
                    pages = sizeof vec;
                }
                if (mincore((void *)a, pages * (size_t)page, vec) == 0) {
                    for (size_t i = 0; i < pages; i++) {
                        if (vec[i] & 1) {
                            volatile char *p = (volatile char *)(a + i * (unsigned long)page);
                            *p = *p;
                        }
                    }
                }
                a += pages * (unsigned long)page;
            }
        }
        if (nl == NULL) {
            break;
        }
        line = nl + 1;
    }
}

/* A stack for clone(), with a guard page below it. NULL when out of memory. */
static char *stack_new(void)
{
    long page = sysconf(_SC_PAGESIZE);
    size_t guard = page > 0 ? (size_t)page : 4096;
    char *m = mmap(NULL, SHIM_STACK_SIZE + guard, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (m == MAP_FAILED) {
        return NULL;
    }
    if (mprotect(m, guard, PROT_NONE) != 0) {
        /* No guard page; the stack still works. */
    }
    return m + guard;
}

/* ------------------------------------------------------------------------ */
/* Log files.                                                                */

struct shim_log {
    int fd;
    int64_t size;
    int64_t cap;
    bool warned;     /* a rotation failed (logged once) */
    bool failing;    /* the last write failed: output is being dropped */
    bool news;       /* failing or dropped changed: status.json should say so */
    int64_t dropped; /* output bytes that could not be written (status.json) */
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

/* Output that could not be written: drop and count it; say so once per failing spell. */
static void log_drop(struct shim_log *l, size_t len, int err)
{
    l->dropped += (int64_t)len;
    l->news = true;
    if (!l->failing) {
        l->failing = true;
        logf_shim("log_write_failed path=%s errno=%d dropping=1", l->path, err);
    }
}

/*
 * Write workload output; never more than cap bytes per file. docs/workloads.md
 * "Logs": a write error (disk full) drops the output and counts it, it never
 * blocks or stops the workload; writing resumes when the disk takes it again.
 */
static void log_write(struct shim_log *l, const char *buf, size_t len)
{
    while (len > 0) {
        if (l->size >= l->cap) {
            log_rotate(l);
        }
        if (l->fd < 0 && log_open(l) != 0) {
            log_drop(l, len, errno);
            return;
        }
        size_t chunk = (size_t)(l->cap - l->size);
        if (chunk > len) {
            chunk = len;
        }
        ssize_t n = write(l->fd, buf, chunk);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            log_drop(l, len, n < 0 ? errno : ENOSPC);
            return;
        }
        if (l->failing) {
            l->failing = false;
            l->news = true;
            logf_shim("log_write_resumed path=%s dropped_bytes=%lld", l->path,
                      (long long)l->dropped);
        }
        l->size += (int64_t)n;
        buf += n;
        len -= (size_t)n;
    }
}

/* ------------------------------------------------------------------------ */
/* The workload's processes.                                                 */

/* Why the workload's side gave up before exec (struct spawn_args.err_kind). */
enum child_failure {
    FAIL_SETUP = 1, /* stdio setup failed */
    FAIL_CHDIR,     /* chdir(cwd) failed */
    FAIL_EXEC,      /* execve failed */
    FAIL_NS,        /* could not enter the namespaces */
};

/* What the vfork-style child that becomes the workload needs. */
struct spawn_args {
    const struct shim_spec *spec;
    const char *cgroup_procs; /* the instance's cgroup.procs to join, or NULL */
    int life_r;               /* only the shim holds the write end: hang-up means it died */
    int devnull;
    int out_w;
    int err_w;
    int mnt_fd; /* namespace mode: the namespaces to enter (init's), else -1 */
    int uts_fd;
    /* Written by the child, read by the shim once clone() returns (shared memory). */
    volatile int err_kind; /* enum child_failure; 0 when it exec'd */
    volatile int err_no;
    volatile int cgroup_err; /* joining the cgroup failed (not fatal: no limits) */
};

/*
 * First steps of a child that outlives the call that made it: die with the
 * shim (PDEATHSIG), and close the race where the shim died before that was
 * set (its life pipe then hangs up).
 */
static void child_attach(int life_r)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    struct pollfd p = {life_r, POLLIN, 0};
    if (poll(&p, 1, 0) != 0) {
        _exit(1);
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

static _Noreturn void child_fail(struct spawn_args *sa, int kind, int err)
{
    sa->err_no = err;
    sa->err_kind = kind;
    _exit(127);
}

/*
 * The workload's side, in the vfork-style child (memory shared with the
 * suspended shim, so: no allocation, nothing but system calls on its own
 * stack). With namespaces it enters init's mount and UTS namespaces (the
 * shim already pointed its children's PID namespace at init's, so this
 * child is pid 2 there) and names the host. It joins the cgroup, resets what
 * the shim changed, sets up stdio and execs. A failure is written into *sa.
 */
static int workload_child(void *arg)
{
    struct spawn_args *sa = arg;
    child_attach(sa->life_r);
    if (sa->mnt_fd >= 0) {
        if (setns(sa->mnt_fd, CLONE_NEWNS) != 0 || setns(sa->uts_fd, CLONE_NEWUTS) != 0) {
            child_fail(sa, FAIL_NS, errno);
        }
        if (sa->spec->hostname[0] != '\0') {
            if (sethostname(sa->spec->hostname, strlen(sa->spec->hostname)) != 0) {
                /* Not fatal: the workload keeps the host's name. */
            }
        }
    }
    int rc = sa->cgroup_procs != NULL ? write_knob(sa->cgroup_procs, "0") : 0;
    if (rc != 0) {
        sa->cgroup_err = -rc;
    }
    /*
     * exec resets caught signals; only ignored ones survive it, and the only
     * one the shim ignores is SIGPIPE (main() reset every other disposition).
     */
    signal(SIGPIPE, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    setpgid(0, 0);
    if (dup2(sa->devnull, STDIN_FILENO) < 0 || dup2(sa->out_w, STDOUT_FILENO) < 0 ||
        dup2(sa->err_w, STDERR_FILENO) < 0) {
        child_fail(sa, FAIL_SETUP, errno);
    }
    close_all_except(NULL, 0);
    const char *cwd = sa->spec->cwd[0] != '\0' ? sa->spec->cwd : "/";
    if (chdir(cwd) != 0) {
        child_fail(sa, FAIL_CHDIR, errno);
    }
    exec_search(sa->spec->argv, sa->spec->env, sa->spec->path);
    child_fail(sa, FAIL_EXEC, errno);
}

/*
 * Start the workload as a child of the shim the way posix_spawn does:
 * clone(CLONE_VM | CLONE_VFORK), so no page tables are copied, and the shim
 * resumes once the child has exec'd (past the point of no return) or given
 * up, which sa->err_kind then says (the child is reaped then). Every signal
 * is blocked around it, so no handler runs on the shared memory. Returns the
 * child's pid, or -1 with errno.
 */
static pid_t spawn_workload(struct spawn_args *sa, char *stack)
{
    sigset_t all, old;
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, &old);
    sa->err_kind = sa->err_no = sa->cgroup_err = 0;
    pid_t pid =
        clone(workload_child, stack + SHIM_STACK_SIZE, CLONE_VM | CLONE_VFORK | SIGCHLD, sa);
    int e = errno;
    sigprocmask(SIG_SETMASK, &old, NULL);
    if (pid > 0 && sa->err_kind != 0) {
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
        }
    }
    errno = e;
    return pid;
}

/*
 * PID 1 of the workload's namespace, cloned ahead of time (while the shim is
 * idle, or right before a restart) with new PID, mount and UTS namespaces.
 * It makes mount propagation private and mounts the namespace's own /proc,
 * then only reaps: the workload itself is the shim's child, created into
 * these namespaces (setns), and orphans of the namespace come to init. The
 * kernel drops signals to a namespace's init that it has no handler for,
 * which is why the workload is never pid 1. When init dies (the shim kills it
 * once the workload has ended, or the shim itself died: PDEATHSIG), the
 * kernel kills whatever is left in the namespace.
 */
struct init_args {
    int life_r;
    int ready_w; /* init writes one byte here once the namespace is ready */
    char *title; /* the shim's title slot, which init's copy of memory also has */
    size_t title_cap;
};

static int init_main(void *arg)
{
    const struct init_args *a = arg;
    int keep[] = {a->life_r, a->ready_w};
    close_all_except(keep, 2);
    child_attach(a->life_r);
    close(a->life_r);
    title_set(a->title, a->title_cap, "(init)");
    /* Private propagation first, so the /proc mount never reaches the host. */
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) == 0) {
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    }
    /* Ready: PDEATHSIG armed and /proc ours. Only now may the workload enter. */
    ssize_t w = write(a->ready_w, "R", 1);
    (void)w;
    close(a->ready_w);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &set, NULL);
    for (;;) {
        siginfo_t si;
        if (sigwaitinfo(&set, &si) < 0 && errno != EINTR) {
            struct timespec ts = {1, 0};
            nanosleep(&ts, NULL);
        }
        while (waitpid(-1, NULL, WNOHANG) > 0) {
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* The supervisor.                                                           */

enum shim_phase {
    PHASE_IDLE,     /* pool mode: no instance yet */
    PHASE_RUN,      /* the workload runs */
    PHASE_BACKOFF,  /* waiting to restart it */
    PHASE_STOPPING, /* SIGTERM forwarded; SIGKILL at kill_at */
    PHASE_DONE,
};

/*
 * A run prepared ahead of its start: pipes made and, with namespaces, init
 * cloned and its namespaces opened for the workload to enter.
 */
struct shim_prep {
    bool ready;
    bool ns;
    pid_t init;
    int pid_fd; /* init's namespaces: /proc/<init>/ns/{pid,mnt,uts} */
    int mnt_fd;
    int uts_fd;
    int out[2];
    int err[2];
    int life[2];
};

struct shim {
    char dir[SHIM_DIR_MAX + SHIM_ID_MAX + 2]; /* the instance's directory; "" while idle */
    const char *pool_dir;                     /* pool mode: DATA/instances */
    char *title;                              /* our title slot (title_set) */
    size_t title_cap;
    char status_path[SHIM_FILE_PATH_MAX];
    char status_tmp[SHIM_FILE_PATH_MAX];
    char status_spare[SHIM_FILE_PATH_MAX];
    char cgroup[SHIM_FILE_PATH_MAX];
    char spare[SHIM_FILE_PATH_MAX]; /* pool mode: our pre-made, locked directory; "" if none */
    int spare_lock;
    int ctl_fd; /* pool mode: the driver's socket, until the start is answered */
    int sigfd;
    int lock_fd;
    char *spec_text; /* the spec as received; kept for restarts in namespace mode */
    size_t spec_len;
    struct shim_spec spec;
    bool have_spec;
    struct shim_log logs[2];
    char *stack;  /* the namespace init's stack */
    char *vstack; /* the stack of the vfork-style child that becomes the workload */
    int devnull;
    int self_pidns; /* our own PID namespace, to point our children back at it */
    struct shim_prep prep;
    /* Isolation in effect (docs/workloads.md, "isolation"). */
    bool ns;
    bool cg;
    bool memory_limit;
    bool cpu_limit;
    /* The current run. */
    pid_t workload; /* the exec'd command (our child), as seen from here */
    pid_t init;     /* namespace mode: the namespace's init (our child too) */
    int out_r;
    int err_r;
    enum shim_phase phase;
    int64_t run_started_mono;
    int64_t backoff_ms;
    int64_t next_start_mono;
    int64_t kill_at_mono;
    bool killed;
    bool stop_requested;
    bool stop_pending; /* SIGTERM came while the start was under way: stop once it runs */
    /* What status.json says. */
    const char *state;
    bool alive;
    int exit_code;
    int exit_signal;
    int64_t restarts;
    int64_t started_at_ms;
    char error[SHIM_ERR_MAX];
    /* status.json upkeep (status_write). */
    bool have_spare;     /* status.json.spare exists, its block allocated */
    bool status_dirty;   /* status.json is behind: write it at status_due_mono */
    bool status_failing; /* the last write failed (logged once) */
    int64_t status_due_mono;
    int64_t status_written_mono; /* the last successful write */
    /* Pool mode: when each step of the start ended (CLOCK_MONOTONIC, us), for shim.log. */
    int64_t t_recv;  /* the start message was read */
    int64_t t_taken; /* the instance's directory and lock are ours */
    int64_t t_go;    /* the workload was told to start */
    int64_t t_exec;  /* it exec'd */
};

/*
 * status.json's content (docs/workloads.md), one line ending in a newline,
 * into buf. Returns its length, or -1 when it does not fit.
 */
static int status_format(const struct shim *s, char *buf, size_t size)
{
    char err[SHIM_ERR_MAX * 2];
    char cg[SHIM_FILE_PATH_MAX + 64];
    char pids[96];
    char exitf[64];
    if (s->alive) {
        snprintf(pids, sizeof pids, "\"shim_pid\":%d,\"child_pid\":", (int)getpid());
        size_t o = strlen(pids);
        if (s->workload > 0) {
            snprintf(pids + o, sizeof pids - o, "%d,\"workload_pid\":%d",
                     (int)(s->init > 0 ? s->init : s->workload), (int)s->workload);
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
    int n = snprintf(buf, size,
                     "{\"version\":1,\"writer_pid\":%d,%s,\"state\":\"%s\",%s,\"restarts\":%lld,"
                     "\"backoff_ms\":%lld,\"started_at_ms\":%lld,\"updated_at_ms\":%lld,"
                     "\"error\":%s,\"log_dropped_bytes\":%lld,"
                     "\"isolation\":{\"pid_ns\":%s,\"mount_ns\":%s,\"uts_ns\":%s,"
                     "\"cgroup\":%s,\"memory_limit\":%s,\"cpu_limit\":%s}}\n",
                     (int)getpid(), pids, s->state, exitf, (long long)s->restarts,
                     (long long)s->backoff_ms, (long long)s->started_at_ms, (long long)wall_ms(),
                     err, (long long)(s->logs[0].dropped + s->logs[1].dropped),
                     s->ns ? "true" : "false", s->ns ? "true" : "false", s->ns ? "true" : "false",
                     cg, s->memory_limit ? "true" : "false", s->cpu_limit ? "true" : "false");
    return n < 0 || (size_t)n >= size ? -1 : n;
}

/* Replace path atomically with data: temporary file, optional fsync, rename. */
static int file_replace(const char *path, const char *tmp, const char *data, size_t len,
                        bool durable)
{
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        return -1;
    }
    if (write_all(fd, data, len) != 0 || (durable && fsync(fd) != 0)) {
        int e = errno;
        close(fd);
        unlink(tmp);
        errno = e;
        return -1;
    }
    close(fd);
    return rename(tmp, path);
}

/*
 * Make status.json.spare: one block, written while there is room, so that a
 * status write still works when the disk is full (status_write_spare).
 */
static void status_spare_make(struct shim *s)
{
    char block[4096];
    memset(block, '\n', sizeof block);
    int fd = open(s->status_spare, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        return;
    }
    s->have_spare = write_all(fd, block, sizeof block) == 0;
    close(fd);
    if (!s->have_spare) {
        unlink(s->status_spare);
    }
}

/*
 * The full-disk way to replace status.json: overwrite the spare's allocated
 * block in place, then trade names with status.json (RENAME_EXCHANGE), so
 * readers still see the old or the new file and the old one becomes the
 * spare, its block kept. Returns 0, or -1 with errno.
 */
static int status_write_spare(struct shim *s, const char *data, size_t len, bool durable)
{
    int fd = open(s->status_spare, O_WRONLY | O_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    ssize_t n;
    do {
        n = pwrite(fd, data, len, 0);
    } while (n < 0 && errno == EINTR);
    int e = n < 0 ? errno : ENOSPC;
    bool ok = n == (ssize_t)len;
    if (ok && (ftruncate(fd, (off_t)len) != 0 || (durable && fsync(fd) != 0))) {
        ok = false;
        e = errno;
    }
    close(fd);
    if (!ok) {
        errno = e;
        return -1;
    }
    if (renameat2(AT_FDCWD, s->status_spare, AT_FDCWD, s->status_path, RENAME_EXCHANGE) == 0) {
        return 0;
    }
    /* No status.json yet, or no exchange on this file system: the spare is used up. */
    s->have_spare = false;
    return rename(s->status_spare, s->status_path);
}

/* status.json is behind: write it again in a while (supervise does), at most once a second. */
static void status_mark(struct shim *s)
{
    if (!s->status_dirty) {
        s->status_dirty = true;
        s->status_due_mono = s->status_written_mono + SHIM_STATUS_RETRY_MS;
    }
}

/*
 * docs/workloads.md, "status.json": readers see the old or the new file,
 * never a torn one (rename). Only the last word is fsynced: the file
 * describes live processes, which a power loss kills anyway, and an fsync on
 * the start path costs milliseconds. When the disk is full the spare block is
 * used (status_write_spare); when even that fails, the write is retried every
 * SHIM_STATUS_RETRY_MS by supervise().
 */
static void status_write(struct shim *s, bool durable)
{
    char buf[SHIM_FILE_PATH_MAX + 1024];
    int n = status_format(s, buf, sizeof buf);
    if (n < 0) {
        logf_shim("status_too_long");
        return;
    }
    int rc = file_replace(s->status_path, s->status_tmp, buf, (size_t)n, durable);
    int e = errno;
    struct stat st;
    if (rc != 0 && !s->have_spare && stat(s->status_spare, &st) == 0 && S_ISREG(st.st_mode) &&
        st.st_size > 0) {
        s->have_spare = true; /* left by an earlier shim of this instance */
    }
    if (rc != 0 && (e == ENOSPC || e == EDQUOT) && s->have_spare) {
        rc = status_write_spare(s, buf, (size_t)n, durable);
        e = errno;
    }
    if (rc == 0) {
        if (s->status_failing) {
            s->status_failing = false;
            logf_shim("status_write_resumed");
        }
        s->status_dirty = false;
        s->status_written_mono = mono_ms();
        s->logs[0].news = s->logs[1].news = false;
        if (!s->have_spare) {
            status_spare_make(s);
        }
        return;
    }
    if (!s->status_failing) {
        s->status_failing = true;
        logf_shim("status_write_failed errno=%d retry_ms=%d", e, SHIM_STATUS_RETRY_MS);
    }
    s->status_dirty = true;
    s->status_due_mono = mono_ms() + SHIM_STATUS_RETRY_MS;
}

/*
 * Answer the driver's start (pool mode): "OK <status.json line>" once the
 * workload has exec'd, or "ERR <spec|exec|busy|internal> <message>". The
 * socket is closed afterwards: the driver has no further say.
 */
static void reply_send(struct shim *s, const char *kind, const char *msg)
{
    if (s->ctl_fd < 0) {
        return;
    }
    char line[SHIM_FILE_PATH_MAX + 1100];
    if (kind == NULL) {
        memcpy(line, "OK ", 3);
        if (status_format(s, line + 3, sizeof line - 3) < 0) {
            snprintf(line, sizeof line, "ERR internal status too long\n");
        }
    } else {
        char m[SHIM_ERR_MAX];
        json_escape(m, sizeof m, msg); /* one line, ASCII */
        snprintf(line, sizeof line, "ERR %s %s\n", kind, m);
    }
    if (write_all(s->ctl_fd, line, strlen(line)) != 0) {
        logf_shim("reply_write_failed errno=%d", errno);
    }
    close_fd(&s->ctl_fd);
}

/* Make DIR/shim.log our stderr (truncated past SHIM_SHIM_LOG_MAX). */
static void shim_log_open(const char *dir)
{
    char path[SHIM_FILE_PATH_MAX];
    snprintf(path, sizeof path, "%s/shim.log", dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (fd < 0) {
        return;
    }
    struct stat st;
    if (fstat(fd, &st) == 0 && st.st_size > SHIM_SHIM_LOG_MAX) {
        if (ftruncate(fd, 0) != 0) {
            /* An oversized shim.log is harmless. */
        }
    }
    dup2(fd, STDERR_FILENO);
    close(fd);
}

/*
 * Take DIR/shim.lock: a POSIX record lock, released by the kernel when this
 * process ends. The driver asks the kernel who holds it (F_GETLK), which is
 * how it finds a live shim and its pid. Returns the descriptor, or -1 with
 * errno (EAGAIN or EACCES: another process holds it).
 */
static int lock_take(const char *dir)
{
    char path[SHIM_FILE_PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/shim.lock", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        return -1;
    }
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    if (fcntl(fd, F_SETLK, &fl) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

static bool lock_busy(int e)
{
    return e == EAGAIN || e == EACCES;
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

/*
 * Move the namespace's init into the instance's cgroup too, so that all of
 * the instance is accounted there (the workload joined by itself before its
 * exec; init was cloned before the group existed). Not on the start path.
 */
static void cgroup_add_init(struct shim *s)
{
    if (!s->cg || s->init <= 0) {
        return;
    }
    char knob[SHIM_FILE_PATH_MAX + 32];
    char val[32];
    snprintf(knob, sizeof knob, "%s/cgroup.procs", s->cgroup);
    snprintf(val, sizeof val, "%d", (int)s->init);
    int rc = write_knob(knob, val);
    if (rc != 0) {
        logf_shim("cgroup_init_join_failed errno=%d", -rc);
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

/* s->error from the reason the workload's side gave up before exec. */
static void child_error(struct shim *s, int kind, int err)
{
    switch (kind) {
    case FAIL_CHDIR:
        snprintf(s->error, sizeof s->error, "chdir '%.200s': %s", s->spec.cwd, strerror(err));
        break;
    case FAIL_EXEC:
        snprintf(s->error, sizeof s->error, "exec '%.200s': %s", s->spec.argv[0], strerror(err));
        break;
    case FAIL_NS:
        snprintf(s->error, sizeof s->error, "enter namespaces: %s", strerror(err));
        break;
    default:
        snprintf(s->error, sizeof s->error, "stdio setup: %s", strerror(err));
        break;
    }
}

static void prep_close(struct shim_prep *p)
{
    int *fds[] = {&p->pid_fd, &p->mnt_fd, &p->uts_fd,  &p->out[0], &p->out[1],
                  &p->err[0], &p->err[1], &p->life[0], &p->life[1]};
    for (size_t i = 0; i < sizeof fds / sizeof fds[0]; i++) {
        close_fd(fds[i]);
    }
    p->ready = false;
}

static void prep_reset(struct shim_prep *p)
{
    memset(p, 0, sizeof *p);
    p->pid_fd = p->mnt_fd = p->uts_fd = -1;
    for (int i = 0; i < 2; i++) {
        p->out[i] = p->err[i] = p->life[i] = -1;
    }
}

/* Kill and reap a namespace's init: the kernel then kills what is left in the namespace. */
static void init_end(pid_t init)
{
    if (init > 0) {
        kill(init, SIGKILL);
        while (waitpid(init, NULL, 0) < 0 && errno == EINTR) {
        }
    }
}

/* Drop a prepared run that will not be used (its init, if any, ends). */
static void prep_discard(struct shim *s)
{
    struct shim_prep *p = &s->prep;
    if (p->ns) {
        init_end(p->init);
    }
    prep_close(p);
    prep_reset(p);
}

/* Open /proc/<pid>/ns/<name>. */
static int ns_open(pid_t pid, const char *name)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/ns/%s", (int)pid, name);
    return open(path, O_RDONLY | O_CLOEXEC);
}

/*
 * Prepare the next run ahead of its start: pipes for stdout and stderr and
 * the life pipe and, with namespaces, the namespace's init, cloned now with
 * its namespaces opened for the workload to enter. A clone refused (EPERM in
 * an unprivileged container, ...) falls back to plain mode for good.
 * Returns 0, or -1 with s->error.
 */
static int run_prepare(struct shim *s)
{
    struct shim_prep *p = &s->prep;
    prep_reset(p);
    if (pipe2(p->out, O_CLOEXEC) != 0 || pipe2(p->err, O_CLOEXEC) != 0 ||
        pipe2(p->life, O_CLOEXEC) != 0) {
        snprintf(s->error, sizeof s->error, "pipe: %s", strerror(errno));
        prep_close(p);
        return -1;
    }
    int ready[2];
    if (s->ns && pipe2(ready, O_CLOEXEC) != 0) {
        snprintf(s->error, sizeof s->error, "pipe: %s", strerror(errno));
        prep_close(p);
        return -1;
    }
    if (s->ns) {
        struct init_args a = {p->life[0], ready[1], s->title, s->title_cap};
        pid_t pid = clone(init_main, s->stack + SHIM_STACK_SIZE,
                          CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS | SIGCHLD, &a);
        int e = errno;
        close(ready[1]);
        char c = 0;
        if (pid > 0) {
            /* Bounded: init only mounts /proc; it hangs up if it dies first. */
            struct pollfd pfd = {ready[0], POLLIN, 0};
            if (poll(&pfd, 1, SHIM_EXEC_WAIT_MS) != 1 || read(ready[0], &c, 1) != 1) {
                c = 0;
            }
        }
        close(ready[0]);
        if (pid < 0) {
            /* docs/workloads.md: no namespaces allowed here; run it as a plain child. */
            logf_shim("namespaces_unavailable errno=%d", e);
            s->ns = false;
        } else {
            p->init = pid;
            p->pid_fd = ns_open(pid, "pid");
            p->mnt_fd = ns_open(pid, "mnt");
            p->uts_fd = ns_open(pid, "uts");
            if (c != 'R' || p->pid_fd < 0 || p->mnt_fd < 0 || p->uts_fd < 0 || s->self_pidns < 0) {
                logf_shim("namespaces_unavailable errno=%d ready=%d", errno, c == 'R');
                init_end(pid);
                close_fd(&p->pid_fd);
                close_fd(&p->mnt_fd);
                close_fd(&p->uts_fd);
                s->ns = false;
            } else {
                p->ns = true;
            }
        }
    }
    p->ready = true;
    return 0;
}

/*
 * Start the prepared run: the workload becomes our child by a vfork-style
 * spawn, in plain mode directly, with namespaces inside init's (our
 * children's PID namespace points at init's for that one clone). Returns 0
 * once the workload has exec'd, or -1 with s->error set (nothing of the run
 * is left). The preparation is used up either way.
 */
static int run_go(struct shim *s)
{
    struct shim_prep *p = &s->prep;
    if (!p->ready && run_prepare(s) != 0) {
        return -1;
    }
    s->t_go = mono_us();
    char procs[SHIM_FILE_PATH_MAX + 32];
    snprintf(procs, sizeof procs, "%s/cgroup.procs", s->cgroup);
    struct spawn_args sa = {&s->spec,
                            s->cg ? procs : NULL,
                            p->life[0],
                            s->devnull,
                            p->out[1],
                            p->err[1],
                            p->ns ? p->mnt_fd : -1,
                            p->ns ? p->uts_fd : -1,
                            0,
                            0,
                            0};
    if (p->ns && setns(p->pid_fd, CLONE_NEWPID) != 0) {
        snprintf(s->error, sizeof s->error, "enter namespaces: %s", strerror(errno));
        goto fail;
    }
    pid_t pid = spawn_workload(&sa, s->vstack);
    int e = errno;
    if (p->ns && setns(s->self_pidns, CLONE_NEWPID) != 0) {
        /* Cannot happen (our own namespace); the next init would then nest in this one. */
        logf_shim("pidns_restore_failed errno=%d", errno);
    }
    if (pid < 0) {
        snprintf(s->error, sizeof s->error, "fork: %s", strerror(e));
        goto fail;
    }
    if (sa.err_kind != 0) {
        child_error(s, sa.err_kind, sa.err_no); /* the child is reaped already */
        goto fail;
    }
    s->t_exec = mono_us();
    if (sa.cgroup_err != 0) {
        logf_shim("cgroup_join_failed path=%s errno=%d", s->cgroup, sa.cgroup_err);
        s->cg = s->memory_limit = s->cpu_limit = false;
    }
    fcntl(p->out[0], F_SETFL, O_NONBLOCK);
    fcntl(p->err[0], F_SETFL, O_NONBLOCK);
    s->workload = pid;
    s->init = p->ns ? p->init : 0;
    s->out_r = p->out[0];
    s->err_r = p->err[0];
    /* Exec'd: the child has PDEATHSIG armed, so the life pipe has done its job. */
    p->out[0] = p->err[0] = -1;
    prep_close(p);
    prep_reset(p);
    s->phase = PHASE_RUN;
    s->run_started_mono = mono_ms();
    s->started_at_ms = wall_ms();
    s->exit_code = -1;
    s->exit_signal = 0;
    s->error[0] = '\0';
    s->state = "running";
    return 0;

fail:
    prep_discard(s);
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
    if (s->workload <= 0) {
        return;
    }
    /* Its process group (it made one); SIGKILL to init takes the whole namespace. */
    if (kill(-s->workload, sig) != 0) {
        kill(s->workload, sig);
    }
    if (sig == SIGKILL && s->init > 0) {
        kill(s->init, SIGKILL);
    }
}

/* The shim's last word: final state, no pids, cgroup gone. */
static void finish(struct shim *s, const char *state)
{
    cgroup_remove(s);
    s->state = state;
    s->alive = false;
    s->workload = 0;
    init_end(s->init);
    s->init = 0;
    s->phase = PHASE_DONE;
    status_write(s, true);
    logf_shim("shim_exit state=%s", state);
}

static void restart_now(struct shim *s)
{
    s->restarts++;
    if (run_go(s) != 0) {
        logf_shim("restart_failed error=\"%s\"", s->error);
        finish(s, "failed");
        return;
    }
    cgroup_add_init(s);
    status_write(s, false);
}

static void on_workload_exit(struct shim *s, int wst)
{
    /* docs/workloads.md: whatever the workload left in its namespace goes with init. */
    init_end(s->init);
    s->init = 0;
    pump(s, 0, 64);
    pump(s, 1, 64);
    close_fd(&s->out_r);
    close_fd(&s->err_r);
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
        if (p == s->workload) {
            on_workload_exit(s, wst);
        } else if (p == s->init) {
            s->init = 0; /* killed from outside: the kernel killed the workload with it */
        }
        /* Other pids are the workload's orphans (plain mode): we are their subreaper. */
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
        if (s->status_dirty) {
            int due = (int)(s->status_due_mono > now ? s->status_due_mono - now : 0);
            timeout = timeout < 0 || due < timeout ? due : timeout;
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
        if (s->logs[0].news || s->logs[1].news) {
            status_mark(s); /* publish log_dropped_bytes */
        }
        now = mono_ms();
        if (s->status_dirty && now >= s->status_due_mono && s->phase != PHASE_DONE) {
            status_write(s, false);
        }
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

/* DIR/spec.json into s->spec_text (manual mode). Returns 0, or -1 with err. */
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
    s->spec_text = buf;
    s->spec_len = used;
    return 0;
}

/* Decode s->spec_text. Returns 0, or -1 with err ("spec.json: ..."). */
static int decode_spec(struct shim *s, char *err, size_t errsz)
{
    char perr[SHIM_ERR_MAX];
    if (shim_spec_parse(s->spec_text, s->spec_len, &s->spec, perr, sizeof perr) != 0) {
        snprintf(err, errsz, "spec.json: %.240s", perr);
        return -1;
    }
    s->have_spec = true;
    return 0;
}

/* The instance directory is known: name its files. */
static void set_dir(struct shim *s, const char *dir)
{
    snprintf(s->dir, sizeof s->dir, "%s", dir);
    snprintf(s->status_path, sizeof s->status_path, "%s/status.json", dir);
    snprintf(s->status_tmp, sizeof s->status_tmp, "%s/status.json.tmp", dir);
    snprintf(s->status_spare, sizeof s->status_spare, "%s/status.json.spare", dir);
}

static void logs_open(struct shim *s)
{
    for (int i = 0; i < 2; i++) {
        struct shim_log *l = &s->logs[i];
        const char *name = i == 0 ? "stdout" : "stderr";
        char path[sizeof l->path];
        l->cap = s->spec.log_max_bytes;
        /* Through a local buffer: some compilers cannot tell s->dir and l->path apart. */
        snprintf(path, sizeof path, "%s/%s.log", s->dir, name);
        memcpy(l->path, path, sizeof path);
        snprintf(path, sizeof path, "%s/%s.log.1", s->dir, name);
        memcpy(l->old, path, sizeof path);
        if (log_open(l) != 0) {
            logf_shim("log_open_failed path=%s errno=%d", l->path, errno);
        }
    }
}

/* Remove our spare directory (pool mode), unless it became the instance's. */
static void spare_remove(struct shim *s)
{
    if (s->spare[0] == '\0') {
        return;
    }
    char path[SHIM_FILE_PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/shim.lock", s->spare);
    unlink(path);
    rmdir(s->spare);
    close_fd(&s->spare_lock);
    s->spare[0] = '\0';
}

/*
 * Make the spare directory POOL/.idle-<pid> and lock it ahead of time, so
 * that taking a new instance costs one rename instead of a mkdir, a file
 * creation and a lock (docs/workloads.md). Failing here only slows the start.
 */
static void spare_make(struct shim *s)
{
    s->spare_lock = -1;
    int n = snprintf(s->spare, sizeof s->spare, "%s/.idle-%d", s->pool_dir, (int)getpid());
    if (n < 0 || (size_t)n >= sizeof s->spare || mkdir(s->spare, 0755) != 0) {
        s->spare[0] = '\0';
        return;
    }
    s->spare_lock = lock_take(s->spare);
    if (s->spare_lock < 0) {
        rmdir(s->spare);
        s->spare[0] = '\0';
    }
}

/*
 * Take the instance's directory and its lock: rename the spare directory
 * into place when the instance has none yet (the lock moves with it), else
 * lock the existing one. Returns 0, or -1 with errno (EAGAIN/EACCES: another
 * shim holds it).
 */
static int instance_take(struct shim *s)
{
    if (s->spare[0] != '\0' &&
        renameat2(AT_FDCWD, s->spare, AT_FDCWD, s->dir, RENAME_NOREPLACE) == 0) {
        s->lock_fd = s->spare_lock;
        s->spare_lock = -1;
        s->spare[0] = '\0';
        return 0;
    }
    if (mkdir(s->dir, 0755) != 0 && errno != EEXIST) {
        return -1;
    }
    s->lock_fd = lock_take(s->dir);
    return s->lock_fd >= 0 ? 0 : -1;
}

/* Release the instance: the driver then sees no live shim. */
static void instance_release(struct shim *s)
{
    close_fd(&s->lock_fd);
}

/* Write spec.json beside status.json, for whoever inspects the instance (pool mode). */
static void spec_file_write(struct shim *s)
{
    char path[SHIM_FILE_PATH_MAX + 16];
    char tmp[SHIM_FILE_PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/spec.json", s->dir);
    snprintf(tmp, sizeof tmp, "%s/spec.json.tmp", s->dir);
    if (file_replace(path, tmp, s->spec_text, s->spec_len, false) != 0) {
        logf_shim("spec_write_failed errno=%d", errno);
    }
}

/*
 * Wait (pool mode) for the driver's start: "START <len>\n" and the spec.
 * Returns 0 with s->spec_text set, 1 when the driver went away or we are
 * told to leave, -1 on a protocol error (with err).
 */
static int pool_wait(struct shim *s, char *err, size_t errsz)
{
    char hdr[SHIM_CTL_HEADER_MAX];
    size_t have = 0;
    size_t hdr_len = 0;
    size_t body_len = 0;
    char *body = NULL;
    size_t got = 0;
    int64_t deadline = -1;
    for (;;) {
        int timeout = -1;
        if (deadline >= 0) {
            int64_t left = deadline - mono_ms();
            if (left <= 0) {
                snprintf(err, errsz, "start message incomplete after %d ms", SHIM_CTL_WAIT_MS);
                free(body);
                return -1;
            }
            timeout = (int)left;
        }
        struct pollfd pfd[2] = {{s->ctl_fd, POLLIN, 0}, {s->sigfd, POLLIN, 0}};
        int n = poll(pfd, 2, timeout);
        if (n < 0 && errno != EINTR) {
            snprintf(err, errsz, "poll: %s", strerror(errno));
            free(body);
            return -1;
        }
        if (n > 0 && pfd[1].revents != 0) {
            struct signalfd_siginfo si;
            bool leave = false;
            while (read(s->sigfd, &si, sizeof si) == (ssize_t)sizeof si) {
                if (si.ssi_signo == SIGCHLD) {
                    /* Our prepared init died: the driver spawns another shim. */
                    leave = leave || waitpid(-1, NULL, WNOHANG) > 0;
                } else if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
                    s->stop_pending = true;
                }
            }
            /*
             * A stop for a start we have (its first bytes are here) is carried out once the
             * workload runs; an idle shim told to stop just leaves.
             */
            struct pollfd c = {s->ctl_fd, POLLIN, 0};
            if (s->stop_pending && body == NULL && have == 0 && poll(&c, 1, 0) <= 0) {
                leave = true;
            }
            if (leave) {
                free(body);
                return 1;
            }
        }
        if (n <= 0 || pfd[0].revents == 0) {
            continue;
        }
        ssize_t r;
        if (body == NULL) {
            r = read(s->ctl_fd, hdr + have, sizeof hdr - have);
        } else {
            r = read(s->ctl_fd, body + got, body_len - got);
        }
        if (r < 0 && (errno == EINTR || errno == EAGAIN)) {
            continue;
        }
        if (r <= 0) {
            bool nothing = body == NULL && have == 0;
            free(body);
            if (nothing) {
                return 1; /* the driver closed its end: it went away while we were idle */
            }
            snprintf(err, errsz, "start message cut short");
            return -1;
        }
        deadline = mono_ms() + SHIM_CTL_WAIT_MS;
        if (body != NULL) {
            got += (size_t)r;
        } else {
            have += (size_t)r;
            int h = shim_ctl_header(hdr, have, &hdr_len, &body_len);
            if (h < 0) {
                snprintf(err, errsz, "bad start message header");
                return -1;
            }
            if (h > 0) {
                continue;
            }
            body = malloc(body_len);
            if (body == NULL) {
                snprintf(err, errsz, "out of memory");
                return -1;
            }
            got = have - hdr_len < body_len ? have - hdr_len : body_len;
            memcpy(body, hdr + hdr_len, got);
        }
        if (got == body_len) {
            s->t_recv = mono_us();
            s->spec_text = body;
            s->spec_len = body_len;
            return 0;
        }
    }
}

/* Everything after the exec: files, logs, then supervise until the end. */
static int instance_run(struct shim *s)
{
    cgroup_add_init(s);
    status_write(s, false);
    logs_open(s);
    if (s->stop_pending) {
        request_stop(s);
    }
    supervise(s);
    return 0;
}

/*
 * The workload could not start (bad spec, exec or chdir): record "failed"
 * with the reason, then let go of the instance.
 */
static void instance_failed(struct shim *s, const char *what)
{
    logf_shim("%s error=\"%s\"", what, s->error);
    prep_discard(s);
    finish(s, "failed");
    instance_release(s);
}

/*
 * Pool mode (spawned idle by the driver): prepare everything that does not
 * depend on the instance, then wait for the spec on ctl_fd, start it and
 * answer.
 */
static int pool_main(struct shim *s, bool want_ns)
{
    s->ns = want_ns;
    spare_make(s);
    if (s->ns && (s->stack = stack_new()) == NULL) {
        s->ns = false;
    }
    if (run_prepare(s) != 0) {
        /* Pipes failed: nothing to prepare now; the start tries again. */
        logf_shim("prepare_failed error=\"%s\"", s->error);
        s->error[0] = '\0';
    }
    touch_resident();
    s->phase = PHASE_IDLE;
    char err[SHIM_ERR_MAX];
    int rc = pool_wait(s, err, sizeof err);
    if (rc != 0) {
        prep_discard(s);
        spare_remove(s);
        if (rc < 0) {
            reply_send(s, "internal", err);
            return 1;
        }
        return 0;
    }
    if (decode_spec(s, err, sizeof err) != 0) {
        prep_discard(s);
        spare_remove(s);
        reply_send(s, "spec", err);
        return 2;
    }
    char dir[sizeof s->dir];
    snprintf(dir, sizeof dir, "%s/%s", s->pool_dir, s->spec.id);
    set_dir(s, dir);
    title_set(s->title, s->title_cap, dir);
    if (s->spec.namespaces != s->prep.ns) {
        /* Prepared for the other mode: redo it for this spec. */
        prep_discard(s);
        s->ns = s->spec.namespaces && (s->stack != NULL || (s->stack = stack_new()) != NULL);
    }
    /* docs/workloads.md: one shim per instance; a second one leaves at once. */
    if (instance_take(s) != 0) {
        int e = errno;
        prep_discard(s);
        spare_remove(s);
        snprintf(err, sizeof err, "%s",
                 lock_busy(e) ? "another shim runs this instance" : strerror(e));
        if (!lock_busy(e)) {
            shim_log_open(s->dir);
            logf_shim("lock_failed error=\"%s\"", err);
        }
        reply_send(s, lock_busy(e) ? "busy" : "internal", err);
        return 3;
    }
    s->t_taken = mono_us();
    cgroup_setup(s);
    if (run_go(s) != 0) {
        shim_log_open(s->dir);
        char msg[SHIM_ERR_MAX];
        snprintf(msg, sizeof msg, "%s", s->error);
        instance_failed(s, "start_failed");
        spec_file_write(s);
        spare_remove(s);
        reply_send(s, "exec", msg);
        return 1;
    }
    /* Answer first: everything below is off the start's critical path. */
    reply_send(s, NULL, NULL);
    int64_t t_reply = mono_us();
    shim_log_open(s->dir);
    /* How the start went, step by step (CLOCK_MONOTONIC; edge-start-bench reads exec_mono_us). */
    logf_shim("shim_start dir=%s workload_pid=%d namespaces=%d recv_mono_us=%lld "
              "exec_mono_us=%lld take_us=%lld setup_us=%lld spawn_us=%lld reply_us=%lld",
              s->dir, (int)s->workload, s->ns, (long long)s->t_recv, (long long)s->t_exec,
              (long long)(s->t_taken - s->t_recv), (long long)(s->t_go - s->t_taken),
              (long long)(s->t_exec - s->t_go), (long long)(t_reply - s->t_exec));
    spare_remove(s);
    spec_file_write(s);
    return instance_run(s);
}

/* Manual mode: `archipel-shim --dir DIR` runs DIR/spec.json. */
static int manual_main(struct shim *s, const char *dir)
{
    set_dir(s, dir);
    title_set(s->title, s->title_cap, dir);
    shim_log_open(dir);
    /* docs/workloads.md: one shim per instance; a second one leaves at once. */
    s->lock_fd = lock_take(dir);
    if (s->lock_fd < 0) {
        int e = errno;
        logf_shim("lock_failed error=\"%s\"",
                  lock_busy(e) ? "another shim runs this instance" : strerror(e));
        return 3;
    }
    logf_shim("shim_start dir=%s", dir);
    if (read_spec(s, s->error, sizeof s->error) != 0 ||
        decode_spec(s, s->error, sizeof s->error) != 0) {
        logf_shim("spec_rejected error=\"%s\"", s->error);
        finish(s, "failed");
        return 2;
    }
    s->ns = s->spec.namespaces;
    if (s->ns && (s->stack = stack_new()) == NULL) {
        s->ns = false;
    }
    cgroup_setup(s);
    if (run_prepare(s) != 0 || run_go(s) != 0) {
        instance_failed(s, "start_failed");
        return 1;
    }
    return instance_run(s);
}

static void usage(FILE *out)
{
    fprintf(out, "usage: archipel-shim --pool DIR --ctl-fd FD [--no-namespaces] --dir TITLE\n"
                 "       archipel-shim --dir DIR [--foreground]\n"
                 "       archipel-shim --probe [--cgroup-parent PATH]\n"
                 "\n"
                 "Supervises one instance of archipel-edge's process driver\n"
                 "(docs/workloads.md): --pool waits, prepared, for the spec the driver\n"
                 "sends on FD and runs it in DIR/<id>; --dir runs DIR/spec.json.\n"
                 "Not meant to be run by hand.\n");
}

int main(int argc, char **argv)
{
    const char *dir = NULL;
    const char *pool = NULL;
    const char *cgroup_parent = NULL;
    char *title = NULL;
    int ctl_fd = -1;
    bool foreground = false;
    bool do_probe = false;
    bool no_ns = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has_val = i + 1 < argc;
        if (strcmp(a, "--dir") == 0 && has_val) {
            title = argv[++i];
            dir = title;
        } else if (strcmp(a, "--pool") == 0 && has_val) {
            pool = argv[++i];
        } else if (strcmp(a, "--ctl-fd") == 0 && has_val) {
            char *end;
            long v = strtol(argv[++i], &end, 10);
            if (*end != '\0' || v < 3 || v > 1023) {
                fprintf(stderr, "archipel-shim: bad --ctl-fd\n");
                return 2;
            }
            ctl_fd = (int)v;
        } else if (strcmp(a, "--cgroup-parent") == 0 && has_val) {
            cgroup_parent = argv[++i];
        } else if (strcmp(a, "--no-namespaces") == 0) {
            no_ns = true;
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
    bool pool_mode = pool != NULL;
    if (pool_mode) {
        if (pool[0] != '/' || strlen(pool) > SHIM_DIR_MAX - SHIM_ID_MAX - 2 || ctl_fd < 0 ||
            title == NULL) {
            fprintf(stderr, "archipel-shim: --pool needs an absolute path, --ctl-fd and --dir\n");
            return 2;
        }
        if (fcntl(ctl_fd, F_SETFD, FD_CLOEXEC) != 0) {
            return 2;
        }
    } else if (dir == NULL || dir[0] != '/' || strlen(dir) > SHIM_DIR_MAX) {
        fprintf(stderr, "archipel-shim: --dir needs an absolute path\n");
        usage(stderr);
        return 2;
    }
    /* Nothing inherited from the daemon but stdio and the control socket. */
    int keep[] = {ctl_fd};
    close_all_except(keep, ctl_fd >= 0 ? 1 : 0);

    if (!pool_mode && !foreground) {
        /* Detach: the caller reaps the parent at once; the child is reparented to init. */
        pid_t pid = fork();
        if (pid < 0) {
            return 1;
        }
        if (pid > 0) {
            _exit(0);
        }
    }
    /* Pool mode: the driver spawned us in a session of our own (POSIX_SPAWN_SETSID). */
    if (!pool_mode) {
        setsid();
    }
    umask(022);

    struct shim shim;
    struct shim *s = &shim;
    memset(s, 0, sizeof *s);
    s->pool_dir = pool;
    s->ctl_fd = pool_mode ? ctl_fd : -1;
    s->title = title;
    s->title_cap = title != NULL ? strlen(title) + 1 : 0;
    s->sigfd = s->lock_fd = s->out_r = s->err_r = s->spare_lock = -1;
    s->logs[0].fd = s->logs[1].fd = -1;
    s->exit_code = -1;
    s->state = "starting";
    s->alive = true;
    prep_reset(&s->prep);
    if (pool_mode) {
        title_set(s->title, s->title_cap, "(idle)");
    }

    s->devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (s->devnull >= 0) {
        dup2(s->devnull, STDIN_FILENO);
        dup2(s->devnull, STDOUT_FILENO);
        if (pool_mode) {
            dup2(s->devnull, STDERR_FILENO); /* shim.log once it has an instance */
        }
    }
    s->self_pidns = open("/proc/self/ns/pid", O_RDONLY | O_CLOEXEC);

    /*
     * Default dispositions for everything, whatever we inherited (a shell's
     * ignored SIGHUP...), and SIGPIPE ignored: the workload then needs only
     * SIGPIPE reset before its exec (workload_child).
     */
    for (int sig = 1; sig < NSIG; sig++) {
        if (sig != SIGKILL && sig != SIGSTOP) {
            signal(sig, SIG_DFL);
        }
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
    s->vstack = stack_new();
    if (s->sigfd < 0 || s->vstack == NULL || s->devnull < 0) {
        if (pool_mode) {
            reply_send(s, "internal", s->sigfd < 0 ? "signalfd failed" : "out of memory");
        }
        return 1;
    }
    int rc = pool_mode ? pool_main(s, !no_ns) : manual_main(s, dir);
    shim_spec_free(&s->spec);
    free(s->spec_text);
    return rc;
}

#endif /* AP_SHIM_PARSER_ONLY */
