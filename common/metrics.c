/* metrics: counters, gauges and histograms rendered in Prometheus text format 0.0.4. */
#include "ap/metrics.h"

#include "ap/base.h"
#include "ap/err.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Most labels one series may carry; more is refused as an invalid label set. */
#define MAX_LABELS 16

const double AP_METRICS_LATENCY_BOUNDS[AP_METRICS_LATENCY_BOUNDS_LEN] = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
};

enum metric_type {
    METRIC_COUNTER,
    METRIC_GAUGE,
    METRIC_HISTOGRAM,
};

static const char *const type_names[] = {"counter", "gauge", "histogram"};

/* All series of one name: they share the HELP and TYPE lines. */
struct family {
    char *name;
    char *help; /* NULL: no HELP line */
    enum metric_type type;
    struct ap_metric *first;
    struct ap_metric *last;
    struct family *next;
};

struct ap_metric {
    struct family *family;
    char *labels;     /* validated exposition syntax without braces; "" when none */
    double value;     /* counter, gauge */
    double *bounds;   /* histogram: n_bounds finite upper bounds, increasing */
    uint64_t *counts; /* histogram: n_bounds + 1 per-bucket counts (last is +Inf) */
    size_t n_bounds;
    double sum;
    uint64_t count;
    struct ap_metric *next;
};

struct ap_metrics {
    struct family *first;
    struct family *last;
    char errmsg[AP_ERRMSG_SIZE];
};

int ap_metrics_new(struct ap_metrics **out)
{
    if (out == NULL) {
        return AP_EINVAL;
    }
    struct ap_metrics *m = ap_calloc(1, sizeof *m);
    if (m == NULL) {
        return AP_ENOMEM;
    }
    *out = m;
    return 0;
}

static void series_free(struct ap_metric *s)
{
    ap_free(s->labels);
    ap_free(s->bounds);
    ap_free(s->counts);
    ap_free(s);
}

static void family_free(struct family *f)
{
    struct ap_metric *s = f->first;
    while (s != NULL) {
        struct ap_metric *next = s->next;
        series_free(s);
        s = next;
    }
    ap_free(f->name);
    ap_free(f->help);
    ap_free(f);
}

void ap_metrics_free(struct ap_metrics *m)
{
    if (m == NULL) {
        return;
    }
    struct family *f = m->first;
    while (f != NULL) {
        struct family *next = f->next;
        family_free(f);
        f = next;
    }
    ap_free(m);
}

const char *ap_metrics_errmsg(const struct ap_metrics *m)
{
    return m->errmsg;
}

/* ---- validation ---- */

static bool is_alpha_(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Prometheus metric names: [a-zA-Z_:][a-zA-Z0-9_:]*. */
static bool name_valid(const char *s)
{
    if (s == NULL || !(is_alpha_(s[0]) || s[0] == ':')) {
        return false;
    }
    for (s++; *s != '\0'; s++) {
        if (!(is_alpha_(*s) || is_digit(*s) || *s == ':')) {
            return false;
        }
    }
    return true;
}

/*
 * Length of the label name at s ([a-zA-Z_][a-zA-Z0-9_]*), 0 if there is
 * none or it is reserved (a leading "__" is Prometheus's own).
 */
static size_t label_name_len(const char *s)
{
    if (!is_alpha_(s[0]) || (s[0] == '_' && s[1] == '_')) {
        return 0;
    }
    size_t n = 1;
    while (is_alpha_(s[n]) || is_digit(s[n])) {
        n++;
    }
    return n;
}

/*
 * Whether s is a label set in exposition syntax without braces:
 * name="value" pairs joined by ',', values using only the escapes \\ \" \n,
 * label names distinct, at most MAX_LABELS, and no "le" if forbid_le.
 */
static bool labels_valid(const char *s, bool forbid_le)
{
    const char *names[MAX_LABELS];
    size_t lens[MAX_LABELS];
    size_t count = 0;

    if (*s == '\0') {
        return true;
    }
    for (;;) {
        size_t n = label_name_len(s);
        if (n == 0 || count == MAX_LABELS) {
            return false;
        }
        if (forbid_le && n == 2 && memcmp(s, "le", 2) == 0) {
            return false;
        }
        for (size_t i = 0; i < count; i++) {
            if (lens[i] == n && memcmp(names[i], s, n) == 0) {
                return false;
            }
        }
        names[count] = s;
        lens[count] = n;
        count++;
        s += n;
        if (s[0] != '=' || s[1] != '"') {
            return false;
        }
        for (s += 2; *s != '"'; s++) {
            if (*s == '\0' || *s == '\n') {
                return false;
            }
            if (*s == '\\') {
                s++;
                if (*s != '\\' && *s != '"' && *s != 'n') {
                    return false;
                }
            }
        }
        s++; /* the closing quote */
        if (*s == '\0') {
            return true;
        }
        if (*s != ',') {
            return false;
        }
        s++;
    }
}

static bool bounds_valid(const double *bounds, size_t n)
{
    if (n > 0 && bounds == NULL) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(bounds[i]) || (i > 0 && !(bounds[i] > bounds[i - 1]))) {
            return false;
        }
    }
    return true;
}

/* Whether full is base followed by one of a histogram's series suffixes. */
static bool is_histogram_part(const char *full, const char *base)
{
    size_t n = strlen(base);
    if (strncmp(full, base, n) != 0) {
        return false;
    }
    const char *rest = full + n;
    return strcmp(rest, "_bucket") == 0 || strcmp(rest, "_sum") == 0 || strcmp(rest, "_count") == 0;
}

/* The family whose series would collide with a new family (name, type), or NULL. */
static const struct family *find_clash(const struct ap_metrics *m, const char *name,
                                       enum metric_type type)
{
    for (const struct family *f = m->first; f != NULL; f = f->next) {
        if ((f->type == METRIC_HISTOGRAM && is_histogram_part(name, f->name)) ||
            (type == METRIC_HISTOGRAM && is_histogram_part(f->name, name))) {
            return f;
        }
    }
    return NULL;
}

/* ---- registration ---- */

static struct family *find_family(const struct ap_metrics *m, const char *name)
{
    for (struct family *f = m->first; f != NULL; f = f->next) {
        if (strcmp(f->name, name) == 0) {
            return f;
        }
    }
    return NULL;
}

static struct ap_metric *find_series(const struct family *f, const char *labels)
{
    for (struct ap_metric *s = f->first; s != NULL; s = s->next) {
        if (strcmp(s->labels, labels) == 0) {
            return s;
        }
    }
    return NULL;
}

static bool same_bounds(const struct ap_metric *s, const double *bounds, size_t n)
{
    return s->n_bounds == n && (n == 0 || memcmp(s->bounds, bounds, n * sizeof *bounds) == 0);
}

static struct family *family_new(const char *name, const char *help, enum metric_type type)
{
    struct family *f = ap_calloc(1, sizeof *f);
    if (f == NULL) {
        return NULL;
    }
    f->type = type;
    f->name = ap_strdup(name);
    if (f->name == NULL) {
        goto err_after_alloc;
    }
    if (help != NULL) {
        f->help = ap_strdup(help);
        if (f->help == NULL) {
            goto err_after_alloc;
        }
    }
    return f;

err_after_alloc:
    family_free(f);
    return NULL;
}

static struct ap_metric *series_new(const char *labels, const double *bounds, size_t n_bounds,
                                    enum metric_type type)
{
    struct ap_metric *s = ap_calloc(1, sizeof *s);
    if (s == NULL) {
        return NULL;
    }
    s->labels = ap_strdup(labels);
    if (s->labels == NULL) {
        goto err_after_alloc;
    }
    if (type == METRIC_HISTOGRAM) {
        s->n_bounds = n_bounds;
        if (n_bounds > 0) {
            s->bounds = ap_malloc(n_bounds * sizeof *s->bounds);
            if (s->bounds == NULL) {
                goto err_after_alloc;
            }
            memcpy(s->bounds, bounds, n_bounds * sizeof *s->bounds);
        }
        s->counts = ap_calloc(n_bounds + 1, sizeof *s->counts);
        if (s->counts == NULL) {
            goto err_after_alloc;
        }
    }
    return s;

err_after_alloc:
    series_free(s);
    return NULL;
}

static struct ap_metric *metric_register(struct ap_metrics *m, enum metric_type type,
                                         const char *name, const char *help, const char *labels,
                                         const double *bounds, size_t n_bounds)
{
    if (m == NULL) {
        return NULL;
    }
    const char *tname = type_names[type];
    if (!name_valid(name)) {
        ap_errmsg_set(m->errmsg, "%s %s: invalid metric name", tname,
                      name != NULL ? name : "(null)");
        return NULL;
    }
    if (labels == NULL) {
        labels = "";
    }
    if (!labels_valid(labels, type == METRIC_HISTOGRAM)) {
        ap_errmsg_set(m->errmsg, "%s %s: invalid label set {%s}", tname, name, labels);
        return NULL;
    }
    if (type == METRIC_HISTOGRAM && !bounds_valid(bounds, n_bounds)) {
        ap_errmsg_set(m->errmsg, "%s %s: bounds must be finite and strictly increasing", tname,
                      name);
        return NULL;
    }

    struct family *f = find_family(m, name);
    if (f != NULL) {
        if (f->type != type) {
            ap_errmsg_set(m->errmsg, "%s %s: already registered as a %s", tname, name,
                          type_names[f->type]);
            return NULL;
        }
        struct ap_metric *s = find_series(f, labels);
        if (s != NULL) {
            if (type == METRIC_HISTOGRAM && !same_bounds(s, bounds, n_bounds)) {
                ap_errmsg_set(m->errmsg, "%s %s{%s}: already registered with other bounds", tname,
                              name, labels);
                return NULL;
            }
            return s;
        }
    } else {
        const struct family *clash = find_clash(m, name, type);
        if (clash != NULL) {
            ap_errmsg_set(m->errmsg, "%s %s: clashes with the series of %s %s", tname, name,
                          type_names[clash->type], clash->name);
            return NULL;
        }
    }

    bool new_family = f == NULL;
    if (new_family) {
        f = family_new(name, help, type);
        if (f == NULL) {
            ap_errmsg_set(m->errmsg, "%s %s: out of memory", tname, name);
            return NULL;
        }
    }
    struct ap_metric *s = series_new(labels, bounds, n_bounds, type);
    if (s == NULL) {
        if (new_family) {
            family_free(f);
        }
        ap_errmsg_set(m->errmsg, "%s %s: out of memory", tname, name);
        return NULL;
    }
    s->family = f;
    if (f->last != NULL) {
        f->last->next = s;
    } else {
        f->first = s;
    }
    f->last = s;
    if (new_family) {
        if (m->last != NULL) {
            m->last->next = f;
        } else {
            m->first = f;
        }
        m->last = f;
    }
    return s;
}

struct ap_metric *ap_metrics_counter(struct ap_metrics *m, const char *name, const char *help,
                                     const char *labels)
{
    return metric_register(m, METRIC_COUNTER, name, help, labels, NULL, 0);
}

struct ap_metric *ap_metrics_gauge(struct ap_metrics *m, const char *name, const char *help,
                                   const char *labels)
{
    return metric_register(m, METRIC_GAUGE, name, help, labels, NULL, 0);
}

struct ap_metric *ap_metrics_histogram(struct ap_metrics *m, const char *name, const char *help,
                                       const char *labels, const double *bounds, size_t n_bounds)
{
    return metric_register(m, METRIC_HISTOGRAM, name, help, labels, bounds, n_bounds);
}

/* ---- updates ---- */

void ap_metric_inc(struct ap_metric *c)
{
    ap_metric_add(c, 1.0);
}

void ap_metric_add(struct ap_metric *c, double v)
{
    if (c == NULL || c->family->type == METRIC_HISTOGRAM) {
        return;
    }
    /* Counters only go up: "!(v >= 0)" also refuses NaN. */
    if (c->family->type == METRIC_COUNTER && !(v >= 0)) {
        return;
    }
    c->value += v;
}

void ap_metric_set(struct ap_metric *g, double v)
{
    if (g == NULL || g->family->type != METRIC_GAUGE) {
        return;
    }
    g->value = v;
}

void ap_metric_observe(struct ap_metric *h, double v)
{
    if (h == NULL || h->family->type != METRIC_HISTOGRAM || isnan(v)) {
        return;
    }
    /* Buckets hold per-bucket counts; rendering makes them cumulative. */
    size_t i = 0;
    while (i < h->n_bounds && v > h->bounds[i]) {
        i++;
    }
    h->counts[i]++;
    h->count++;
    h->sum += v;
}

double ap_metric_value(const struct ap_metric *metric)
{
    if (metric == NULL) {
        return 0;
    }
    if (metric->family->type == METRIC_HISTOGRAM) {
        return (double)metric->count;
    }
    return metric->value;
}

/* ---- rendering ---- */

struct buf {
    char *p;
    size_t len;
    size_t cap;
    bool failed;
};

static bool buf_reserve(struct buf *b, size_t extra)
{
    if (b->failed) {
        return false;
    }
    if (b->cap - b->len > extra) {
        return true;
    }
    size_t cap = b->cap > 0 ? b->cap : 1024;
    while (cap - b->len <= extra) {
        if (cap > SIZE_MAX / 2) {
            b->failed = true;
            return false;
        }
        cap *= 2;
    }
    char *p = ap_realloc(b->p, cap);
    if (p == NULL) {
        b->failed = true;
        return false;
    }
    b->p = p;
    b->cap = cap;
    return true;
}

static void buf_append(struct buf *b, const char *s, size_t n)
{
    if (!buf_reserve(b, n)) {
        return;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void buf_puts(struct buf *b, const char *s)
{
    buf_append(b, s, strlen(s));
}

static void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void buf_printf(struct buf *b, const char *fmt, ...)
{
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->failed = true;
        return;
    }
    if ((size_t)n < sizeof tmp) {
        buf_append(b, tmp, (size_t)n);
        return;
    }
    if (!buf_reserve(b, (size_t)n)) {
        return;
    }
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/*
 * A float as Prometheus reads it (Go's ParseFloat): "+Inf", "-Inf", "NaN",
 * else the shortest of %.15g/%.17g that reads back exactly. Daemons never
 * call setlocale(), so the decimal point is '.'.
 */
static void format_double(double v, char out[32])
{
    if (isnan(v)) {
        strcpy(out, "NaN");
    } else if (isinf(v)) {
        strcpy(out, v > 0 ? "+Inf" : "-Inf");
    } else {
        snprintf(out, 32, "%.15g", v);
        if (strtod(out, NULL) != v) {
            snprintf(out, 32, "%.17g", v);
        }
    }
}

/* HELP text escapes backslash and newline (exposition format 0.0.4). */
static void put_help(struct buf *b, const char *help)
{
    for (const char *p = help; *p != '\0'; p++) {
        if (*p == '\\') {
            buf_puts(b, "\\\\");
        } else if (*p == '\n') {
            buf_puts(b, "\\n");
        } else {
            buf_append(b, p, 1);
        }
    }
}

/* "name{labels}" or "name" when there are no labels; the suffix goes on name. */
static void put_series_name(struct buf *b, const struct ap_metric *s, const char *suffix)
{
    buf_puts(b, s->family->name);
    buf_puts(b, suffix);
    if (s->labels[0] != '\0') {
        buf_printf(b, "{%s}", s->labels);
    }
}

static void put_bucket(struct buf *b, const struct ap_metric *s, const char *le, uint64_t n)
{
    buf_printf(b, "%s_bucket{%s%sle=\"%s\"} %" PRIu64 "\n", s->family->name, s->labels,
               s->labels[0] != '\0' ? "," : "", le, n);
}

static void render_series(struct buf *b, const struct ap_metric *s)
{
    char num[32];
    if (s->family->type != METRIC_HISTOGRAM) {
        put_series_name(b, s, "");
        format_double(s->value, num);
        buf_printf(b, " %s\n", num);
        return;
    }
    uint64_t cumulative = 0;
    for (size_t i = 0; i < s->n_bounds; i++) {
        cumulative += s->counts[i];
        format_double(s->bounds[i], num);
        put_bucket(b, s, num, cumulative);
    }
    put_bucket(b, s, "+Inf", s->count);
    put_series_name(b, s, "_sum");
    format_double(s->sum, num);
    buf_printf(b, " %s\n", num);
    put_series_name(b, s, "_count");
    buf_printf(b, " %" PRIu64 "\n", s->count);
}

int ap_metrics_render(struct ap_metrics *m, char **out, size_t *len)
{
    if (m == NULL || out == NULL || len == NULL) {
        return AP_EINVAL;
    }
    struct buf b = {0};
    /* Start with an empty string so an empty registry renders "". */
    buf_append(&b, "", 0);
    for (const struct family *f = m->first; f != NULL; f = f->next) {
        if (f->help != NULL) {
            buf_printf(&b, "# HELP %s ", f->name);
            put_help(&b, f->help);
            buf_puts(&b, "\n");
        }
        buf_printf(&b, "# TYPE %s %s\n", f->name, type_names[f->type]);
        for (const struct ap_metric *s = f->first; s != NULL; s = s->next) {
            render_series(&b, s);
        }
    }
    if (b.failed) {
        ap_free(b.p);
        *out = NULL;
        return AP_ENOMEM;
    }
    *out = b.p;
    *len = b.len;
    return 0;
}

/* ---- label sets ---- */

int ap_metrics_label_append(char *buf, size_t n, const char *name, const char *value)
{
    if (buf == NULL || name == NULL || value == NULL) {
        return AP_EINVAL;
    }
    size_t name_len = label_name_len(name);
    if (name_len == 0 || name[name_len] != '\0') {
        return AP_EINVAL;
    }
    size_t cur = strnlen(buf, n);
    if (cur == n) {
        return AP_EINVAL; /* not terminated within n */
    }
    size_t value_len = 0;
    for (const char *p = value; *p != '\0'; p++) {
        value_len += (*p == '\\' || *p == '"' || *p == '\n') ? 2 : 1;
    }
    /* [","] name "=\"" value "\"" NUL */
    size_t need = cur + (cur > 0 ? 1 : 0) + name_len + 2 + value_len + 1 + 1;
    if (need > n) {
        return AP_ETOOBIG;
    }
    char *w = buf + cur;
    if (cur > 0) {
        *w++ = ',';
    }
    memcpy(w, name, name_len);
    w += name_len;
    *w++ = '=';
    *w++ = '"';
    for (const char *p = value; *p != '\0'; p++) {
        if (*p == '\\' || *p == '"') {
            *w++ = '\\';
            *w++ = *p;
        } else if (*p == '\n') {
            *w++ = '\\';
            *w++ = 'n';
        } else {
            *w++ = *p;
        }
    }
    *w++ = '"';
    *w = '\0';
    return 0;
}
