/* Fuzz target for http's request-body path: JSON parsing and handler field validation. */
#include "ap/base.h"
#include "ap/err.h"
#include "ap/http.h"

#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const allowed[] = {"name", "count", "flag", "meta", "tags", NULL};

/* Every message must be a terminated string that fits the errmsg buffer. */
static void check_msg(const char *errmsg)
{
    AP_ASSERT(memchr(errmsg, '\0', AP_ERRMSG_SIZE) != NULL);
}

/* Run each validator on key, the way a handler would. */
static void validate_key(json_t *obj, const char *key)
{
    char errmsg[AP_ERRMSG_SIZE];
    const char *s = NULL;
    int64_t i = 0;
    bool b = false;
    json_t *o = NULL;
    int rc;

    rc = ap_http_json_get_str(obj, key, true, 16, &s, errmsg);
    AP_ASSERT(rc == 0 || rc == AP_EINVAL);
    if (rc == 0) {
        AP_ASSERT(s != NULL && strlen(s) <= 16);
    } else {
        check_msg(errmsg);
    }
    rc = ap_http_json_get_int(obj, key, false, -5, 1000, &i, errmsg);
    AP_ASSERT(rc == 0 || rc == AP_EINVAL);
    AP_ASSERT(rc != 0 || (i >= -5 && i <= 1000));
    rc = ap_http_json_get_bool(obj, key, true, &b, errmsg);
    AP_ASSERT(rc == 0 || rc == AP_EINVAL);
    rc = ap_http_json_get_obj(obj, key, false, &o, errmsg);
    AP_ASSERT(rc != 0 || o == NULL || json_is_object(o));
    o = NULL;
    rc = ap_http_json_get_array(obj, key, true, 4, &o, errmsg);
    AP_ASSERT(rc != 0 || (json_is_array(o) && json_array_size(o) <= 4));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char errmsg[AP_ERRMSG_SIZE];
    json_t *obj = NULL;
    json_t *details = NULL;

    int rc = ap_http_parse_json_body(data, size, &obj, &details, errmsg);
    if (rc != 0) {
        AP_ASSERT(rc == AP_EPROTO && obj == NULL);
        check_msg(errmsg);
        AP_ASSERT(details == NULL || json_is_object(details));
        json_decref(details);
        return 0;
    }
    AP_ASSERT(details == NULL);
    if (obj == NULL) {
        AP_ASSERT(size == 0);
        return 0;
    }
    AP_ASSERT(json_is_object(obj));

    rc = ap_http_json_check_fields(obj, allowed, errmsg);
    AP_ASSERT(rc == 0 || rc == AP_EINVAL);
    for (size_t k = 0; allowed[k] != NULL; k++) {
        validate_key(obj, allowed[k]);
    }
    const char *key;
    json_t *value;
    json_object_foreach(obj, key, value)
    {
        validate_key(obj, key);
    }

    /* What was accepted serializes and parses back to the same value. */
    char *text = json_dumps(obj, JSON_COMPACT);
    if (text != NULL) {
        json_t *again = NULL;
        rc = ap_http_parse_json_body((const uint8_t *)text, strlen(text), &again, NULL, errmsg);
        AP_ASSERT(rc == 0 && json_equal(obj, again));
        json_decref(again);
        free(text);
    }
    json_decref(obj);
    return 0;
}
