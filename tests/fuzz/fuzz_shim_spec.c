/* fuzz_shim_spec: archipel-shim's spec and start-message decoders (edge/shim/main.c) on arbitrary
 * bytes. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The decoders alone: the shim's supervisor and main() are left out. */
#define AP_SHIM_PARSER_ONLY 1
#include "../../edge/shim/main.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A decoded string must lie in the arena and end there. */
static void check_str(const struct shim_spec *spec, const char *s)
{
    if (s == NULL) {
        abort();
    }
    if (s[0] == '\0') {
        return; /* defaults point to a literal "" */
    }
    if (s < spec->arena || s >= spec->arena + spec->arena_used ||
        memchr(s, '\0', (size_t)(spec->arena + spec->arena_used - s)) == NULL) {
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct shim_spec *spec = malloc(sizeof *spec);
    if (spec == NULL) {
        return 0;
    }
    char err[SHIM_ERR_MAX];
    err[0] = '\0';
    if (shim_spec_parse((const char *)data, size, spec, err, sizeof err) == 0) {
        /* What the supervisor relies on once a spec is accepted. */
        if (spec->argc == 0 || spec->argc > SHIM_MAX_ARGS || spec->argv[spec->argc] != NULL ||
            spec->envc == 0 || spec->envc > SHIM_MAX_ENV + 1 || spec->env[spec->envc] != NULL ||
            spec->path == NULL || spec->arena_used > spec->arena_size || !valid_id(spec->id) ||
            spec->grace_ms < 0 || spec->log_max_bytes < SHIM_LOG_MIN_BYTES) {
            abort();
        }
        for (size_t i = 0; i < spec->argc; i++) {
            check_str(spec, spec->argv[i]);
        }
        for (size_t i = 0; i < spec->envc; i++) {
            check_str(spec, spec->env[i]);
            if (strchr(spec->env[i], '=') == NULL) {
                abort();
            }
        }
        check_str(spec, spec->cwd);
        check_str(spec, spec->cgroup_parent);
        check_str(spec, spec->hostname);
        shim_spec_free(spec);
    } else if (err[0] == '\0') {
        abort(); /* every rejection says why */
    }
    free(spec);

    /* The driver's "START <len>\n" header: a verdict, and a sane one when complete. */
    size_t hdr_len = 0, body_len = 0;
    int h = shim_ctl_header((const char *)data, size, &hdr_len, &body_len);
    if (h == 0 && (hdr_len > size || hdr_len > SHIM_CTL_HEADER_MAX || data[hdr_len - 1] != '\n' ||
                   body_len == 0 || body_len > SHIM_SPEC_MAX_BYTES)) {
        abort();
    }
    if (h != 0 && h != 1 && h != -1) {
        abort();
    }
    if (h == 1 && size >= SHIM_CTL_HEADER_MAX) {
        abort(); /* a header never needs more than SHIM_CTL_HEADER_MAX bytes */
    }
    if (h == 0 && body_len <= size - hdr_len) {
        /* What the shim decodes next: the spec that follows the header. */
        struct shim_spec *body = malloc(sizeof *body);
        if (body != NULL) {
            if (shim_spec_parse((const char *)data + hdr_len, body_len, body, err, sizeof err) ==
                0) {
                shim_spec_free(body);
            }
            free(body);
        }
    }
    return 0;
}
