/* instjson: an instance's JSON shape and the validation of a create request, shared by region and
 * site APIs. */
#include "ap/instjson.h"

#include "ap/base.h"
#include "ap/err.h"
#include "ap/http.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

static int valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n >= AP_INSTREC_NAME_SIZE || s[0] == '-' || s[n - 1] == '-') {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) {
            return 0;
        }
    }
    return 1;
}

static int get_name(json_t *body, const char *key, bool required, char *out, size_t size,
                    char *errmsg)
{
    const char *v = NULL;
    int rv = ap_http_json_get_str(body, key, required, size - 1, &v, errmsg);
    if (rv != 0 || v == NULL) {
        return rv;
    }
    if (!valid_name(v)) {
        ap_errmsg_set(errmsg,
                      "field '%s' must be 1-63 lowercase letters, digits or '-', not starting or "
                      "ending with '-'",
                      key);
        return AP_EINVAL;
    }
    ap_strlcpy(out, v, size);
    return 0;
}

/* Instance labels: at most 32, keys and values 1-63 of [A-Za-z0-9._/-]. */
static int check_labels(json_t *labels, char *errmsg)
{
    const char *k;
    json_t *v;
    if (labels == NULL) {
        return 0;
    }
    if (json_object_size(labels) > 32) {
        ap_errmsg_set(errmsg, "field 'labels': at most 32 labels");
        return AP_EINVAL;
    }
    json_object_foreach(labels, k, v)
    {
        const char *val = json_string_value(v);
        const char *parts[2] = {k, val};
        for (int i = 0; i < 2; i++) {
            size_t len = parts[i] != NULL ? strlen(parts[i]) : 0;
            bool ok = len >= 1 && len <= 63;
            for (size_t j = 0; ok && j < len; j++) {
                char c = parts[i][j];
                ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                     c == '-' || c == '_' || c == '.' || c == '/';
            }
            if (!ok) {
                ap_errmsg_set(errmsg,
                              "field 'labels': key and value of '%.63s' must be strings of 1-63 "
                              "letters, digits, '-', '_', '.', '/'",
                              k);
                return AP_EINVAL;
            }
        }
    }
    return 0;
}

int ap_instjson_parse_create(json_t *body, const char *default_site, struct ap_instrec *r,
                             char *errmsg)
{
    static const char *const allowed[] = {"name",    "tenant",    "site",    "command",
                                          "env",     "cwd",       "resources", "restart",
                                          "labels",  "placement", NULL};
    static const char *const res_allowed[] = {"cpu_millis", "memory_mb", NULL};
    json_t *command = NULL, *env = NULL, *res = NULL, *labels = NULL, *placement = NULL;
    const char *cwd = NULL, *restart = "always";
    int rv;

    memset(r, 0, sizeof *r);
    if (body == NULL) {
        ap_errmsg_set(errmsg, "a JSON body is required");
        return AP_EINVAL;
    }
    if ((rv = ap_http_json_check_fields(body, allowed, errmsg)) != 0 ||
        (rv = get_name(body, "name", true, r->name, sizeof r->name, errmsg)) != 0 ||
        (rv = get_name(body, "tenant", true, r->tenant, sizeof r->tenant, errmsg)) != 0 ||
        (rv = get_name(body, "site", default_site == NULL, r->site, sizeof r->site, errmsg)) != 0 ||
        (rv = ap_http_json_get_array(body, "command", true, AP_INSTJSON_MAX_ARGS, &command,
                                     errmsg)) != 0 ||
        (rv = ap_http_json_get_obj(body, "env", false, &env, errmsg)) != 0 ||
        (rv = ap_http_json_get_str(body, "cwd", false, 4095, &cwd, errmsg)) != 0 ||
        (rv = ap_http_json_get_obj(body, "resources", false, &res, errmsg)) != 0 ||
        (rv = ap_http_json_get_obj(body, "labels", false, &labels, errmsg)) != 0 ||
        (rv = ap_http_json_get_obj(body, "placement", false, &placement, errmsg)) != 0 ||
        (rv = check_labels(labels, errmsg)) != 0 ||
        (rv = ap_http_json_get_str(body, "restart", false, 16, &restart, errmsg)) != 0) {
        return rv;
    }
    if (r->site[0] == '\0') {
        if (default_site != NULL && strcmp(default_site, "") != 0) {
            ap_strlcpy(r->site, default_site, sizeof r->site);
        }
    } else if (default_site != NULL && default_site[0] != '\0' && strcmp(r->site, default_site) != 0) {
        ap_errmsg_set(errmsg, "field 'site': this is site '%s', not '%s'", default_site, r->site);
        return AP_EINVAL;
    }
    if (json_array_size(command) == 0) {
        ap_errmsg_set(errmsg, "field 'command' must hold at least the program to run");
        return AP_EINVAL;
    }
    for (size_t i = 0; i < json_array_size(command); i++) {
        json_t *a = json_array_get(command, i);
        if (!json_is_string(a) || json_string_length(a) > AP_INSTJSON_MAX_ARG_LEN ||
            (i == 0 && json_string_length(a) == 0)) {
            ap_errmsg_set(errmsg, "field 'command[%zu]' must be a%s string of at most %d bytes", i,
                          i == 0 ? " non-empty" : "", AP_INSTJSON_MAX_ARG_LEN);
            return AP_EINVAL;
        }
    }
    if (env != NULL) {
        const char *k;
        json_t *v;
        if (json_object_size(env) > AP_INSTJSON_MAX_ENV) {
            ap_errmsg_set(errmsg, "field 'env' holds more than %d variables", AP_INSTJSON_MAX_ENV);
            return AP_EINVAL;
        }
        json_object_foreach(env, k, v)
        {
            if (strlen(k) == 0 || strchr(k, '=') != NULL || strlen(k) > 255 || !json_is_string(v) ||
                json_string_length(v) > AP_INSTJSON_MAX_ARG_LEN) {
                ap_errmsg_set(errmsg,
                              "field 'env.%.64s': names are 1-255 bytes without '=', values "
                              "strings of at most %d bytes",
                              k, AP_INSTJSON_MAX_ARG_LEN);
                return AP_EINVAL;
            }
        }
    }
    if (strcmp(restart, "always") != 0 && strcmp(restart, "on-failure") != 0 &&
        strcmp(restart, "never") != 0) {
        ap_errmsg_set(errmsg, "field 'restart' must be \"always\", \"on-failure\" or \"never\"");
        return AP_EINVAL;
    }
    r->cpu_millis = 100;
    r->memory_mb = 64;
    if (res != NULL) {
        char inner[AP_ERRMSG_SIZE];
        if ((rv = ap_http_json_check_fields(res, res_allowed, inner)) != 0 ||
            (rv = ap_http_json_get_int(res, "cpu_millis", false, 1, 1000000, &r->cpu_millis,
                                       inner)) != 0 ||
            (rv = ap_http_json_get_int(res, "memory_mb", false, 1, 1048576, &r->memory_mb,
                                       inner)) != 0) {
            ap_errmsg_set(errmsg, "in 'resources': %s", inner);
            return rv;
        }
    }
    json_t *spec = json_pack("{s:O, s:o, s:s?, s:{s:I, s:I}, s:s, s:o}", "command", command,
                             "env", env != NULL ? json_deep_copy(env) : json_object(), "cwd", cwd,
                             "resources", "cpu_millis", (json_int_t)r->cpu_millis, "memory_mb",
                             (json_int_t)r->memory_mb, "restart", restart, "labels",
                             labels != NULL ? json_deep_copy(labels) : json_object());
    if (spec == NULL) {
        return AP_ENOMEM;
    }
    r->spec = json_dumps(spec, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(spec);
    if (r->spec == NULL) {
        return AP_ENOMEM;
    }
    if (strlen(r->spec) > AP_INSTREC_MAX_SPEC) {
        ap_instrec_clear(r);
        ap_errmsg_set(errmsg, "the instance spec is larger than %u bytes", AP_INSTREC_MAX_SPEC);
        return AP_EINVAL;
    }
    return 0;
}

static json_t *time_json(struct ap_hlc_ts ts)
{
    if (ts.physical_ms == 0) {
        return json_null();
    }
    char buf[40];
    time_t s = (time_t)(ts.physical_ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    size_t k = strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + k, sizeof buf - k, ".%03dZ", (int)(ts.physical_ms % 1000));
    return json_string(buf);
}

json_t *ap_instjson_render(const struct ap_instrec *r)
{
    json_t *spec = r->spec != NULL ? json_loads(r->spec, 0, NULL) : NULL;
    json_t *out = json_pack("{s:s, s:s, s:s, s:s}", "id", r->id, "name", r->name, "tenant",
                            r->tenant, "site", r->site);
    if (out == NULL) {
        json_decref(spec);
        return NULL;
    }
    static const char *const spec_keys[] = {"command",   "env",     "cwd",
                                            "resources", "restart", "labels"};
    for (size_t i = 0; i < AP_ARRAY_LEN(spec_keys); i++) {
        json_t *v = json_object_get(spec, spec_keys[i]);
        json_object_set(out, spec_keys[i], v != NULL ? v : json_null());
    }
    json_decref(spec);
    json_object_set_new(out, "desired", json_string(ap_desired_name(r->desired)));
    json_object_set_new(out, "actual", json_string(ap_actual_name(r->actual)));
    json_object_set_new(out, "pid", r->pid > 0 ? json_integer(r->pid) : json_null());
    json_object_set_new(out, "exit_code", json_integer(r->exit_code));
    json_object_set_new(out, "restarts", json_integer(r->restarts));
    json_object_set_new(out, "created_at", time_json(r->created));
    json_object_set_new(out, "desired_at", time_json(r->desired_ts));
    json_object_set_new(out, "actual_at", time_json(r->actual_ts));
    return out;
}
