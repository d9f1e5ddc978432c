/* output: what the CLI prints: tables, "key: value" lines, pretty JSON, partial warnings. */
#include "output.h"

#include "ap/base.h"
#include "ap/err.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

struct output_table {
    size_t ncols;
    char *headers[OUTPUT_MAX_COLS];
    char **cells; /* rows * ncols, row-major */
    size_t rows;
    size_t cap;
};

/* A copy with control characters replaced, so a name cannot drive the terminal. */
static char *clean_dup(const char *s)
{
    char *out = ap_strdup(s);
    if (out == NULL) {
        return NULL;
    }
    for (char *p = out; *p != '\0'; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch < 0x20 || ch == 0x7f) {
            *p = '?';
        }
    }
    return out;
}

/* Width in UTF-8 characters: every byte that does not continue a sequence. */
static size_t width(const char *s)
{
    size_t n = 0;
    for (; *s != '\0'; s++) {
        n += ((unsigned char)*s & 0xc0) != 0x80;
    }
    return n;
}

struct output_table *output__table_new(const char *const *headers, size_t ncols)
{
    AP_ASSERT(ncols >= 1 && ncols <= OUTPUT_MAX_COLS);
    struct output_table *t = ap_calloc(1, sizeof *t);
    if (t == NULL) {
        return NULL;
    }
    t->ncols = ncols;
    for (size_t i = 0; i < ncols; i++) {
        t->headers[i] = clean_dup(headers[i]);
        if (t->headers[i] == NULL) {
            output__table_free(t);
            return NULL;
        }
    }
    return t;
}

int output__table_add(struct output_table *t, const char *const *cells)
{
    if (t->rows == t->cap) {
        size_t cap = t->cap == 0 ? 16 : t->cap * 2;
        char **c = ap_realloc(t->cells, cap * t->ncols * sizeof *c);
        if (c == NULL) {
            return AP_ENOMEM;
        }
        t->cells = c;
        t->cap = cap;
    }
    char **row = t->cells + t->rows * t->ncols;
    for (size_t i = 0; i < t->ncols; i++) {
        const char *s = cells[i] != NULL && cells[i][0] != '\0' ? cells[i] : "-";
        row[i] = clean_dup(s);
        if (row[i] == NULL) {
            for (size_t j = 0; j < i; j++) {
                ap_free(row[j]);
            }
            return AP_ENOMEM;
        }
    }
    t->rows++;
    return 0;
}

int output__table_add_owned(struct output_table *t, char **cells)
{
    int rv = 0;
    for (size_t i = 0; i < t->ncols; i++) {
        rv = cells[i] == NULL ? AP_ENOMEM : rv;
    }
    if (rv == 0) {
        rv = output__table_add(t, (const char *const *)cells);
    }
    for (size_t i = 0; i < t->ncols; i++) {
        ap_free(cells[i]);
        cells[i] = NULL;
    }
    return rv;
}

size_t output__table_rows(const struct output_table *t)
{
    return t->rows;
}

static void print_row(FILE *out, char *const *row, const size_t *widths, size_t ncols)
{
    for (size_t i = 0; i < ncols; i++) {
        if (i + 1 == ncols) {
            fprintf(out, "%s\n", row[i]);
        } else {
            fprintf(out, "%s%*s", row[i], (int)(widths[i] - width(row[i]) + 2), "");
        }
    }
}

void output__table_print(const struct output_table *t, FILE *out)
{
    size_t widths[OUTPUT_MAX_COLS];
    for (size_t i = 0; i < t->ncols; i++) {
        widths[i] = width(t->headers[i]);
        for (size_t r = 0; r < t->rows; r++) {
            size_t w = width(t->cells[r * t->ncols + i]);
            widths[i] = w > widths[i] ? w : widths[i];
        }
    }
    print_row(out, t->headers, widths, t->ncols);
    for (size_t r = 0; r < t->rows; r++) {
        print_row(out, t->cells + r * t->ncols, widths, t->ncols);
    }
}

void output__table_free(struct output_table *t)
{
    if (t == NULL) {
        return;
    }
    for (size_t i = 0; i < t->ncols; i++) {
        ap_free(t->headers[i]);
    }
    for (size_t i = 0; i < t->rows * t->ncols; i++) {
        ap_free(t->cells[i]);
    }
    ap_free(t->cells);
    ap_free(t);
}

/* A string that needs quoting inside a joined list: empty, or holding a separator. */
static bool needs_quotes(const char *s)
{
    return s[0] == '\0' || strpbrk(s, " ,=\"") != NULL;
}

static void put_scalar(FILE *f, const json_t *v, bool inner)
{
    switch (json_typeof(v)) {
    case JSON_STRING:
        if (inner && needs_quotes(json_string_value(v))) {
            char *q = json_dumps(v, JSON_ENCODE_ANY);
            fputs(q != NULL ? q : "?", f);
            free(q);
        } else {
            fputs(json_string_value(v), f);
        }
        break;
    case JSON_INTEGER:
        fprintf(f, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        break;
    case JSON_REAL:
        fprintf(f, "%g", json_real_value(v));
        break;
    case JSON_TRUE:
        fputs("true", f);
        break;
    case JSON_FALSE:
        fputs("false", f);
        break;
    case JSON_NULL:
        fputs(inner ? "null" : "-", f);
        break;
    default: {
        /* A container inside a container: compact JSON says it without ambiguity. */
        char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        fputs(s != NULL ? s : "?", f);
        free(s);
        break;
    }
    }
}

static void put_value(FILE *f, const json_t *v, const char *sep)
{
    if (json_is_array(v)) {
        size_t i;
        const json_t *item;
        json_array_foreach(v, i, item)
        {
            fputs(i > 0 ? sep : "", f);
            put_scalar(f, item, true);
        }
    } else if (json_is_object(v)) {
        const char *k;
        const json_t *item;
        bool first = true;
        /* json_object_foreach wants a non-const object; iteration does not change it. */
        json_object_foreach((json_t *)v, k, item)
        {
            fprintf(f, "%s%s=", first ? "" : sep, k);
            put_scalar(f, item, true);
            first = false;
        }
    } else {
        put_scalar(f, v, false);
    }
}

static char *render(const json_t *v, const char *sep)
{
    if (v == NULL || json_is_null(v) || (json_is_string(v) && json_string_length(v) == 0) ||
        (json_is_array(v) && json_array_size(v) == 0) ||
        (json_is_object(v) && json_object_size(v) == 0)) {
        return ap_strdup("-");
    }
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (f == NULL) {
        return NULL;
    }
    put_value(f, v, sep);
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    /* open_memstream allocates with malloc; hand out an ap_malloc'd copy. */
    char *out = ap_strdup(buf);
    free(buf);
    return out;
}

char *output__cell(const json_t *v)
{
    return render(v, ",");
}

int output__kv(FILE *out, const json_t *v)
{
    if (!json_is_object(v)) {
        char *s = render(v, " ");
        if (s == NULL) {
            return AP_ENOMEM;
        }
        char *c = clean_dup(s);
        ap_free(s);
        if (c == NULL) {
            return AP_ENOMEM;
        }
        fprintf(out, "%s\n", c);
        ap_free(c);
        return 0;
    }
    size_t w = 0;
    const char *k;
    json_t *item;
    json_object_foreach((json_t *)v, k, item)
    {
        size_t n = width(k);
        w = n > w ? n : w;
    }
    json_object_foreach((json_t *)v, k, item)
    {
        char *s = render(item, " ");
        char *c = s != NULL ? clean_dup(s) : NULL;
        char *ck = clean_dup(k);
        if (c == NULL || ck == NULL) {
            ap_free(s);
            ap_free(c);
            ap_free(ck);
            return AP_ENOMEM;
        }
        fprintf(out, "%s:%*s%s\n", ck, (int)(w - width(k) + 1), "", c);
        ap_free(s);
        ap_free(c);
        ap_free(ck);
    }
    return 0;
}

int output__json(FILE *out, const json_t *v)
{
    /* jansson keeps an object's keys in insertion order, which for a parsed
     * answer is the order the server sent them. */
    char *s = json_dumps(v, JSON_INDENT(2) | JSON_ENCODE_ANY);
    if (s == NULL) {
        return AP_ENOMEM;
    }
    fprintf(out, "%s\n", s);
    free(s);
    return 0;
}

/* How an "unreachable" entry is named: a string as is, an object by its region, site or name. */
static void put_unreachable(FILE *f, const json_t *item)
{
    static const char *const keys[] = {"region", "site", "name", "id"};
    for (size_t i = 0; json_is_object(item) && i < AP_ARRAY_LEN(keys); i++) {
        const char *s = json_string_value(json_object_get(item, keys[i]));
        if (s != NULL) {
            fputs(s, f);
            return;
        }
    }
    put_scalar(f, item, false);
}

int output__warn_partial(FILE *err, const json_t *doc)
{
    const json_t *unreachable = json_object_get(doc, "unreachable");
    bool partial = json_is_true(json_object_get(doc, "partial"));
    if (!partial && json_array_size(unreachable) == 0) {
        return 0;
    }
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (f != NULL) {
        size_t i;
        const json_t *item;
        json_array_foreach(unreachable, i, item)
        {
            fputs(i > 0 ? ", " : "", f);
            put_unreachable(f, item);
        }
        if (fclose(f) != 0) {
            free(buf);
            buf = NULL;
        }
    }
    char *clean = buf != NULL && buf[0] != '\0' ? clean_dup(buf) : NULL;
    fprintf(err, "warning: partial answer; unreachable: %s\n", clean != NULL ? clean : "unknown");
    ap_free(clean);
    free(buf);
    return 1;
}
