/* site: a site's registration record: validation from JSON, and its JSON shape. */
#ifndef REGIONAL_SITE_H
#define REGIONAL_SITE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define SITE_NAME_MAX   63
#define SITE_LABEL_MAX  63
#define SITE_MAX_LABELS 32

struct site_label {
    char key[SITE_LABEL_MAX + 1];
    char value[SITE_LABEL_MAX + 1];
};

/** What an operator registers: name, labels and capacity. */
struct site_spec {
    char name[SITE_NAME_MAX + 1];
    struct site_label labels[SITE_MAX_LABELS];
    size_t n_labels;
    int64_t cpu_millis;
    int64_t memory_mb;
    int64_t instances;
};

/**
 * Whether name is a valid site name: 1 to 63 characters of lowercase
 * letters, digits and '-', starting with a letter or digit and not ending
 * with '-' (a DNS label, so names fit host names and URLs unescaped).
 */
int site__valid_name(const char *name);

/**
 * Fill spec from a POST /v1/sites body. Unknown fields, wrong types, bad
 * names, labels or negative capacities give AP_EINVAL with errmsg naming the
 * field ("field 'capacity.cpu_millis': ..."). body is borrowed.
 */
int site__from_json(json_t *body, struct site_spec *spec, char *errmsg);

#endif
