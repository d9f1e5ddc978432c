/* instjson: an instance's JSON shape and the validation of a create request, shared by region and
 * site APIs. */
#ifndef AP_INSTJSON_H
#define AP_INSTJSON_H

#include <jansson.h>

#include "ap/instrec.h"

/** Most argv entries, env entries, and bytes of one argument or value. */
#define AP_INSTJSON_MAX_ARGS    64
#define AP_INSTJSON_MAX_ENV     64
#define AP_INSTJSON_MAX_ARG_LEN 1024

/**
 * Validate a POST /v1/instances body and fill r (identity fields name,
 * tenant, site; resources; spec as canonical JSON text with command, env,
 * cwd, resources and restart). The id, stamps and states are the caller's
 * to set. A missing "site" is allowed when default_site is not NULL (a
 * site's own API). Errors: AP_EINVAL with errmsg naming the field; unknown
 * fields are rejected. On error r owns nothing.
 */
int ap_instjson_parse_create(json_t *body, const char *default_site, struct ap_instrec *r,
                             char *errmsg);

/**
 * The JSON shape of an instance (docs/api.md): id, name, tenant, site,
 * command, env, cwd, resources, restart, desired, actual, pid, exit_code,
 * restarts, created_at, desired_at, actual_at. New reference.
 */
json_t *ap_instjson_render(const struct ap_instrec *r);

#endif
