/* metrics: counters, gauges and histograms rendered in Prometheus text format 0.0.4. */
#ifndef AP_METRICS_H
#define AP_METRICS_H

#include <stddef.h>

/**
 * A registry of metrics, one per daemon, owned by it. Not thread-safe:
 * register, update and render on one thread (the daemon's libuv loop
 * thread); work done in uv_queue_work reports in its after-work callback.
 */
struct ap_metrics;

/**
 * One series: a metric name plus one fixed label set. Owned by its
 * registry and valid until ap_metrics_free.
 */
struct ap_metric;

/** Number of bounds in AP_METRICS_LATENCY_BOUNDS. */
#define AP_METRICS_LATENCY_BOUNDS_LEN 14

/**
 * Default histogram bounds for latencies, in seconds, from 0.5 ms to 10 s:
 * 0.0005 0.001 0.0025 0.005 0.01 0.025 0.05 0.1 0.25 0.5 1 2.5 5 10.
 */
extern const double AP_METRICS_LATENCY_BOUNDS[AP_METRICS_LATENCY_BOUNDS_LEN];

/**
 * Create an empty registry; on success *out is the caller's
 * (ap_metrics_free). Returns 0, AP_EINVAL (out NULL) or AP_ENOMEM.
 */
int ap_metrics_new(struct ap_metrics **out);

/** Free a registry and every metric in it; NULL is fine. */
void ap_metrics_free(struct ap_metrics *m);

/**
 * Register (or find) a counter series: a value that only goes up.
 *
 * `name` must match [a-zA-Z_:][a-zA-Z0-9_:]*. `help` (may be NULL: no HELP
 * line) is any text; it is escaped when rendered, and the first one given
 * for a name is kept. `labels` is NULL, "" or a fixed label set in
 * exposition syntax without braces, values already escaped, no spaces:
 * `region="r1",site="s\"2"` (ap_metrics_label_append builds one safely).
 * Label names match [a-zA-Z_][a-zA-Z0-9_]* and may not start with "__".
 *
 * Series of one name with different labels share one HELP/TYPE header.
 * Asking again for the same name and the same labels string returns the
 * same series. Returns NULL (and sets ap_metrics_errmsg) when m is NULL, on
 * allocation failure, an invalid name or label set, or a name already
 * registered as another type or clashing with a histogram's _bucket, _sum
 * or _count series. The result is owned by the registry.
 */
struct ap_metric *ap_metrics_counter(struct ap_metrics *m, const char *name, const char *help,
                                     const char *labels);

/** Register (or find) a gauge series: a value that goes up and down. As ap_metrics_counter. */
struct ap_metric *ap_metrics_gauge(struct ap_metrics *m, const char *name, const char *help,
                                   const char *labels);

/**
 * Register (or find) a histogram series with upper bounds `bounds[0..n_bounds)`
 * (finite, strictly increasing; the +Inf bucket is added, and n_bounds 0
 * means only +Inf). The bounds are copied. A label named "le" is refused.
 * Asking again for the same name and labels returns the same series if the
 * bounds are the same too, NULL otherwise. Otherwise as ap_metrics_counter.
 */
struct ap_metric *ap_metrics_histogram(struct ap_metrics *m, const char *name, const char *help,
                                       const char *labels, const double *bounds, size_t n_bounds);

/** Add 1 to a counter or gauge. NULL, or a histogram, is ignored. */
void ap_metric_inc(struct ap_metric *c);

/**
 * Add v to a counter (v >= 0; a negative or NaN v is ignored, counters only
 * go up) or a gauge (any v). NULL, or a histogram, is ignored.
 */
void ap_metric_add(struct ap_metric *c, double v);

/** Set a gauge to v. NULL, or a counter or histogram, is ignored. */
void ap_metric_set(struct ap_metric *g, double v);

/**
 * Record one observation in a histogram: it counts in every bucket whose
 * bound is >= v, and in _sum and _count. NaN, NULL, or a counter or gauge,
 * is ignored.
 */
void ap_metric_observe(struct ap_metric *h, double v);

/**
 * Current value of a counter or gauge, or a histogram's number of
 * observations; 0 for NULL.
 */
double ap_metric_value(const struct ap_metric *metric);

/**
 * Render every metric, in registration order, in the Prometheus text
 * exposition format 0.0.4 (Content-Type: text/plain; version=0.0.4).
 * *out is NUL-terminated, *len its length (without the NUL); the caller
 * frees *out with ap_free. Returns 0, or AP_EINVAL (NULL argument) or
 * AP_ENOMEM (then *out is NULL).
 */
int ap_metrics_render(struct ap_metrics *m, char **out, size_t *len);

/**
 * Append `name="value"` to the label set in buf (n bytes, NUL-terminated),
 * preceded by a comma when buf is not empty; value is escaped (backslash,
 * double quote, newline). Returns 0, AP_EINVAL for an invalid label name
 * or NULL argument, or AP_ETOOBIG when the result does not fit (buf is
 * then unchanged).
 */
int ap_metrics_label_append(char *buf, size_t n, const char *name, const char *value);

/** Why the last constructor call returned NULL (empty before any); owned by m. */
const char *ap_metrics_errmsg(const struct ap_metrics *m);

#endif
