/* site: a site's registration record: validation from JSON, and its JSON shape. */
#include "site.h"

#include "ap/base.h"
#include "ap/err.h"
#include "ap/http.h"

#include <ctype.h>
#include <string.h>

int site__valid_name(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > SITE_NAME_MAX || name[0] == '-' || name[n - 1] == '-') {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) {
            return 0;
        }
    }
    return 1;
}

/* Label keys and values: 1-63 chars of letters, digits, '-', '_', '.', '/'. */
static int valid_label_text(const char *s, int allow_empty)
{
    size_t n = strlen(s);
    if ((n == 0 && !allow_empty) || n > SITE_LABEL_MAX) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!(isalnum(c) || c == '-' || c == '_' || c == '.' || c == '/')) {
            return 0;
        }
    }
    return 1;
}

int site__from_json(json_t *body, struct site_spec *spec, char *errmsg)
{
    static const char *const allowed[] = {"name", "labels", "capacity", NULL};
    static const char *const cap_allowed[] = {"cpu_millis", "memory_mb", "instances", NULL};
    const char *name = NULL;
    json_t *labels = NULL, *cap = NULL;
    int rv;

    memset(spec, 0, sizeof *spec);
    if (body == NULL) {
        ap_errmsg_set(errmsg, "a JSON body is required");
        return AP_EINVAL;
    }
    if ((rv = ap_http_json_check_fields(body, allowed, errmsg)) != 0 ||
        (rv = ap_http_json_get_str(body, "name", true, 0, &name, errmsg)) != 0 ||
        (rv = ap_http_json_get_obj(body, "labels", false, &labels, errmsg)) != 0 ||
        (rv = ap_http_json_get_obj(body, "capacity", false, &cap, errmsg)) != 0) {
        return rv;
    }
    if (!site__valid_name(name)) {
        ap_errmsg_set(errmsg,
                      "field 'name': must be 1-63 lowercase letters, digits or '-', not starting "
                      "or ending with '-'");
        return AP_EINVAL;
    }
    ap_strlcpy(spec->name, name, sizeof spec->name);

    if (labels != NULL) {
        const char *key;
        json_t *value;
        if (json_object_size(labels) > SITE_MAX_LABELS) {
            ap_errmsg_set(errmsg, "field 'labels': at most %d labels", SITE_MAX_LABELS);
            return AP_EINVAL;
        }
        json_object_foreach(labels, key, value)
        {
            if (!valid_label_text(key, 0)) {
                ap_errmsg_set(errmsg,
                              "field 'labels': key '%.64s' must be 1-63 letters, digits, '-', "
                              "'_', '.' or '/'",
                              key);
                return AP_EINVAL;
            }
            if (!json_is_string(value) || !valid_label_text(json_string_value(value), 1)) {
                ap_errmsg_set(errmsg,
                              "field 'labels.%.64s': value must be a string of at most 63 letters, "
                              "digits, '-', '_', '.' or '/'",
                              key);
                return AP_EINVAL;
            }
            struct site_label *l = &spec->labels[spec->n_labels++];
            ap_strlcpy(l->key, key, sizeof l->key);
            ap_strlcpy(l->value, json_string_value(value), sizeof l->value);
        }
    }

    if (cap != NULL) {
        char inner[AP_ERRMSG_SIZE];
        if ((rv = ap_http_json_check_fields(cap, cap_allowed, inner)) != 0 ||
            (rv = ap_http_json_get_int(cap, "cpu_millis", false, 0, INT64_C(1) << 40,
                                       &spec->cpu_millis, inner)) != 0 ||
            (rv = ap_http_json_get_int(cap, "memory_mb", false, 0, INT64_C(1) << 40,
                                       &spec->memory_mb, inner)) != 0 ||
            (rv = ap_http_json_get_int(cap, "instances", false, 0, 1000000, &spec->instances,
                                       inner)) != 0) {
            ap_errmsg_set(errmsg, "in 'capacity': %s", inner);
            return rv;
        }
    }
    return 0;
}
