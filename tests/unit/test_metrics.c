/* Unit tests for metrics: Prometheus text rendering of each type, labels, validation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "ap/base.h"
#include "ap/err.h"
#include "ap/metrics.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct ap_metrics *make_registry(void)
{
    struct ap_metrics *m = NULL;
    assert_int_equal(ap_metrics_new(&m), 0);
    assert_non_null(m);
    assert_string_equal(ap_metrics_errmsg(m), "");
    return m;
}

/*
 * Render m and compare it line by line with want[0..n): every line ends in
 * '\n' and nothing else follows.
 */
static void assert_render(struct ap_metrics *m, const char *const *want, size_t n)
{
    char *out = NULL;
    size_t len = 0;
    assert_int_equal(ap_metrics_render(m, &out, &len), 0);
    assert_non_null(out);
    assert_int_equal(len, strlen(out));
    const char *p = out;
    for (size_t i = 0; i < n; i++) {
        const char *nl = strchr(p, '\n');
        assert_non_null(nl);
        size_t line_len = (size_t)(nl - p);
        char line[512];
        assert_true(line_len < sizeof line);
        memcpy(line, p, line_len);
        line[line_len] = '\0';
        assert_string_equal(line, want[i]);
        p = nl + 1;
    }
    assert_string_equal(p, "");
    ap_free(out);
}

static void test_empty_registry(void **state)
{
    (void)state;
    struct ap_metrics *m = make_registry();
    char *out = NULL;
    size_t len = 99;
    assert_int_equal(ap_metrics_render(m, &out, &len), 0);
    assert_string_equal(out, "");
    assert_int_equal(len, 0);
    ap_free(out);
    assert_int_equal(ap_metrics_render(m, NULL, &len), AP_EINVAL);
    assert_int_equal(ap_metrics_render(NULL, &out, &len), AP_EINVAL);
    assert_int_equal(ap_metrics_new(NULL), AP_EINVAL);
    ap_metrics_free(m);
    ap_metrics_free(NULL);
}

static void test_counter(void **state)
{
    (void)state;
    struct ap_metrics *m = make_registry();
    struct ap_metric *c = ap_metrics_counter(m, "ap_requests_total", "Requests served.", NULL);
    assert_non_null(c);
    ap_metric_inc(c);
    ap_metric_add(c, 2.5);
    /* Counters only go up: negative and NaN additions are dropped. */
    ap_metric_add(c, -1);
    ap_metric_add(c, NAN);
    /* Setting is for gauges only. */
    ap_metric_set(c, 100);
    assert_true(ap_metric_value(c) == 3.5);

    /* The same name and labels give back the same series. */
    assert_ptr_equal(ap_metrics_counter(m, "ap_requests_total", "other help", ""), c);

    const char *const want[] = {
        "# HELP ap_requests_total Requests served.",
        "# TYPE ap_requests_total counter",
        "ap_requests_total 3.5",
    };
    assert_render(m, want, AP_ARRAY_LEN(want));
    ap_metrics_free(m);
}

static void test_gauge_series_share_header(void **state)
{
    (void)state;
    struct ap_metrics *m = make_registry();
    struct ap_metric *r1 = ap_metrics_gauge(m, "ap_sites_up", "Sites reachable.", "region=\"r1\"");
    struct ap_metric *r2 =
        ap_metrics_gauge(m, "ap_sites_up", "Sites reachable.", "region=\"r2\",zone=\"z\"");
    struct ap_metric *other = ap_metrics_gauge(m, "ap_temperature", NULL, NULL);
    assert_non_null(r1);
    assert_non_null(r2);
    assert_non_null(other);
    assert_ptr_not_equal(r1, r2);

    ap_metric_set(r1, 10);
    ap_metric_add(r1, -3);
    ap_metric_inc(r1);
    ap_metric_set(r2, 0.1);
    ap_metric_set(other, -0.5);
    ap_metric_observe(other, 5); /* not a histogram: ignored */

    const char *const want[] = {
        "# HELP ap_sites_up Sites reachable.", "# TYPE ap_sites_up gauge",
        "ap_sites_up{region=\"r1\"} 8",        "ap_sites_up{region=\"r2\",zone=\"z\"} 0.1",
        "# TYPE ap_temperature gauge",         "ap_temperature -0.5",
    };
    assert_render(m, want, AP_ARRAY_LEN(want));
    ap_metrics_free(m);
}

static void test_value_formatting(void **state)
{
    (void)state;
    struct ap_metrics *m = make_registry();
    static const double values[] = {
        1e300, 1.0 / 3, 12345678901.0, INFINITY, -INFINITY, NAN, 0, 2.5e-7,
    };
    char labels[64];
    for (size_t i = 0; i < AP_ARRAY_LEN(values); i++) {
        snprintf(labels, sizeof labels, "i=\"%zu\"", i);
        struct ap_metric *g = ap_metrics_gauge(m, "v", NULL, labels);
        assert_non_null(g);
        ap_metric_set(g, values[i]);
    }
    const char *const want[] = {
        "# TYPE v gauge",         "v{i=\"0\"} 1e+300", "v{i=\"1\"} 0.33333333333333331",
        "v{i=\"2\"} 12345678901", "v{i=\"3\"} +Inf",   "v{i=\"4\"} -Inf",
        "v{i=\"5\"} NaN",         "v{i=\"6\"} 0",      "v{i=\"7\"} 2.5e-07",
    };
    assert_render(m, want, AP_ARRAY_LEN(want));
    ap_metrics_free(m);
}

static void test_histogram(void **state)
{
    (void)state;
    struct ap_metrics *m = make_registry();
    static const double bounds[] = {0.125, 0.5, 1};
    struct ap_metric *h = ap_metrics_histogram(m, "ap_rpc_seconds", "RPC latency.", "peer=\"a\"",
                                               bounds, AP_ARRAY_LEN(bounds));
    struct ap_metric *bare =
        ap_metrics_histogram(m, "ap_rpc_seconds", NULL, NULL, bounds, AP_ARRAY_LEN(bounds));
    assert_non_null(h);
    assert_non_null(bare);

    /* A value equal to a bound counts in that bucket (le = less or equal). */
    static const double obs[] = {0.0625, 0.125, 0.375, 0.75, 2, 100};
    for (size_t i = 0; i < AP_ARRAY_LEN(obs); i++) {
        ap_metric_observe(h, obs[i]);
    }
    ap_metric_observe(h, NAN); /* ignored */
    ap_metric_inc(h);          /* not a counter: ignored */
    ap_metric_set(h, 3);       /* not a gauge: ignored */
    assert_true(ap_metric_value(h) == 6);

    const char *const want[] = {
        "# HELP ap_rpc_seconds RPC latency.",
        "# TYPE ap_rpc_seconds histogram",
        "ap_rpc_seconds_bucket{peer=\"a\",le=\"0.125\"} 2",
        "ap_rpc_seconds_bucket{peer=\"a\",le=\"0.5\"} 3",
        "ap_rpc_seconds_bucket{peer=\"a\",le=\"1\"} 4",
        "ap_rpc_seconds_bucket{peer=\"a\",le=\"+Inf\"} 6",
        "ap_rpc_seconds_sum{peer=\"a\"} 103.3125",
        "ap_rpc_seconds_count{peer=\"a\"} 6",
        "ap_rpc_seconds_bucket{le=\"0.125\"} 0",
        "ap_rpc_seconds_bucket{le=\"0.5\"} 0",
        "ap_rpc_seconds_bucket{le=\"1\"} 0",
        "ap_rpc_seconds_bucket{le=\"+Inf\"} 0",
        "ap_rpc_seconds_sum 0",
        "ap_rpc_seconds_count 0",
    };
    assert_render(m, want, AP_ARRAY_LEN(want));

    /* Same name and labels: same series with the same bounds, refused with others. */
    assert_ptr_equal(ap_metrics_histogram(m, "ap_rpc_seconds", NULL, "peer=\"a\"", bounds, 3), h);
    assert_null(ap_metrics_histogram(m, "ap_rpc_seconds", NULL, "peer=\"a\"", bounds, 2));
    assert_non_null(strstr(ap_metrics_errmsg(m), "other bounds"));

    ap_metrics_free(m);

    /* Only the +Inf bucket. */
    m = make_registry();
    struct ap_metric *inf_only = ap_metrics_histogram(m, "ap_sizes", NULL, NULL, NULL, 0);
    assert_non_null(inf_only);
    ap_metric_observe(inf_only, -4);
    const char *const want_inf[] = {
        "# TYPE ap_sizes histogram",
        "ap_sizes_bucket{le=\"+Inf\"} 1",
        "ap_sizes_sum -4",
        "ap_sizes_count 1",
    };
    assert_render(m, want_inf, AP_ARRAY_LEN(want_inf));
    ap_metrics_free(m);
}

/* splitmix64: a seeded generator so a failure replays exactly. */
static uint64_t next_rand(uint64_t *state)
{
    uint64_t z = (*state += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static void test_histogram_cumulative_default_bounds(void **state)
{
    (void)state;
    struct ap_metrics *m = make_registry();
    struct ap_metric *h = ap_metrics_histogram(m, "lat", "h", NULL, AP_METRICS_LATENCY_BOUNDS,
                                               AP_METRICS_LATENCY_BOUNDS_LEN);
    assert_non_null(h);
    assert_true(AP_METRICS_LATENCY_BOUNDS[0] == 0.0005);
    assert_true(AP_METRICS_LATENCY_BOUNDS[AP_METRICS_LATENCY_BOUNDS_LEN - 1] == 10);

    /* Observations spread over 0..20 s; count by hand what each bucket must hold. */
    uint64_t seed = 11;
    uint64_t want[AP_METRICS_LATENCY_BOUNDS_LEN] = {0};
    const int n_obs = 3000;
    for (int i = 0; i < n_obs; i++) {
        double v = (double)(next_rand(&seed) % 20000000) / 1e6;
        ap_metric_observe(h, v);
        for (size_t b = 0; b < AP_METRICS_LATENCY_BOUNDS_LEN; b++) {
            if (v <= AP_METRICS_LATENCY_BOUNDS[b]) {
                want[b]++;
            }
        }
    }

    char *out = NULL;
    size_t len = 0;
    assert_int_equal(ap_metrics_render(m, &out, &len), 0);
    char *save = NULL;
    size_t bucket = 0;
    unsigned long long prev = 0;
    bool saw_inf = false, saw_count = false;
    for (char *line = strtok_r(out, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        unsigned long long n;
        char le[32];
        if (sscanf(line, "lat_bucket{le=\"%31[^\"]\"} %llu", le, &n) == 2) {
            /* Cumulative: never decreasing, and +Inf holds everything. */
            assert_true(n >= prev);
            prev = n;
            if (strcmp(le, "+Inf") == 0) {
                assert_int_equal(n, n_obs);
                saw_inf = true;
            } else {
                assert_true(bucket < AP_METRICS_LATENCY_BOUNDS_LEN);
                assert_true(strtod(le, NULL) == AP_METRICS_LATENCY_BOUNDS[bucket]);
                assert_int_equal(n, want[bucket]);
                bucket++;
            }
        } else if (sscanf(line, "lat_count %llu", &n) == 1) {
            assert_int_equal(n, n_obs);
            saw_count = true;
        }
    }
    assert_int_equal(bucket, AP_METRICS_LATENCY_BOUNDS_LEN);
    assert_true(saw_inf);
    assert_true(saw_count);
    ap_free(out);
    ap_metrics_free(m);
}

static void test_label_escaping(void **state)
{
    (void)state;
    char labels[128] = "";
    assert_int_equal(ap_metrics_label_append(labels, sizeof labels, "path", "C:\\dir"), 0);
    assert_int_equal(ap_metrics_label_append(labels, sizeof labels, "msg", "say \"hi\"\nbye"), 0);
    assert_string_equal(labels, "path=\"C:\\\\dir\",msg=\"say \\\"hi\\\"\\nbye\"");

    /* Bad names and a full buffer are refused, leaving the buffer as it was. */
    assert_int_equal(ap_metrics_label_append(labels, sizeof labels, "1x", "v"), AP_EINVAL);
    assert_int_equal(ap_metrics_label_append(labels, sizeof labels, "a-b", "v"), AP_EINVAL);
    assert_int_equal(ap_metrics_label_append(labels, sizeof labels, "__name__", "v"), AP_EINVAL);
    char small[12] = "a=\"1\"";
    assert_int_equal(ap_metrics_label_append(small, sizeof small, "b", "22"), AP_ETOOBIG);
    assert_string_equal(small, "a=\"1\"");
    assert_int_equal(ap_metrics_label_append(small, sizeof small, "b", "2"), 0);
    assert_string_equal(small, "a=\"1\",b=\"2\"");

    struct ap_metrics *m = make_registry();
    struct ap_metric *c =
        ap_metrics_counter(m, "ap_events_total", "Events \\ by path.\nTwo lines.", labels);
    assert_non_null(c);
    ap_metric_inc(c);
    const char *const want[] = {
        "# HELP ap_events_total Events \\\\ by path.\\nTwo lines.",
        "# TYPE ap_events_total counter",
        "ap_events_total{path=\"C:\\\\dir\",msg=\"say \\\"hi\\\"\\nbye\"} 1",
    };
    assert_render(m, want, AP_ARRAY_LEN(want));
    ap_metrics_free(m);
}

static void test_invalid_names_and_labels(void **state)
{
    (void)state;
    struct ap_metrics *m = make_registry();
    static const char *const bad_names[] = {"", "1abc", "a-b", "a b", "a.b", "caf\xc3\xa9", "a{"};
    for (size_t i = 0; i < AP_ARRAY_LEN(bad_names); i++) {
        assert_null(ap_metrics_counter(m, bad_names[i], "h", NULL));
        assert_null(ap_metrics_gauge(m, bad_names[i], "h", NULL));
        assert_null(ap_metrics_histogram(m, bad_names[i], "h", NULL, NULL, 0));
        assert_non_null(strstr(ap_metrics_errmsg(m), "invalid metric name"));
    }
    assert_null(ap_metrics_counter(m, NULL, "h", NULL));
    assert_null(ap_metrics_counter(NULL, "ok", "h", NULL));

    static const char *const good_names[] = {"a", "_a", ":a", "a:b_c9", "A_Z"};
    for (size_t i = 0; i < AP_ARRAY_LEN(good_names); i++) {
        assert_non_null(ap_metrics_counter(m, good_names[i], "h", NULL));
    }

    static const char *const bad_labels[] = {
        "region=r1",
        "\"r1\"",
        "region",
        "1a=\"x\"",
        "__name__=\"x\"",
        "a=\"x\",",
        "a=\"x\" ,b=\"y\"",
        "a = \"x\"",
        "a=\"x\",a=\"y\"",
        "a=\"unterminated",
        "a=\"bad\\escape\"",
        "a=\"raw\nnewline\"",
        "a=\"x\"b=\"y\"",
        ",a=\"x\"",
        "{a=\"x\"}",
    };
    for (size_t i = 0; i < AP_ARRAY_LEN(bad_labels); i++) {
        assert_null(ap_metrics_gauge(m, "g", "h", bad_labels[i]));
        assert_non_null(strstr(ap_metrics_errmsg(m), "invalid label set"));
    }
    /* "le" is the bucket label: fine on a gauge, refused on a histogram. */
    assert_non_null(ap_metrics_gauge(m, "g", "h", "le=\"1\""));
    assert_null(ap_metrics_histogram(m, "hist", "h", "le=\"1\"", NULL, 0));

    /* Bounds: finite and strictly increasing. */
    static const double dup[] = {1, 1};
    static const double down[] = {2, 1};
    static const double inf[] = {1, INFINITY};
    static const double nan[] = {NAN};
    assert_null(ap_metrics_histogram(m, "hist", "h", NULL, dup, 2));
    assert_null(ap_metrics_histogram(m, "hist", "h", NULL, down, 2));
    assert_null(ap_metrics_histogram(m, "hist", "h", NULL, inf, 2));
    assert_null(ap_metrics_histogram(m, "hist", "h", NULL, nan, 1));
    assert_null(ap_metrics_histogram(m, "hist", "h", NULL, NULL, 3));

    /* One name, one type; and no clash with a histogram's own series. */
    assert_non_null(ap_metrics_counter(m, "x", "h", NULL));
    assert_null(ap_metrics_gauge(m, "x", "h", "a=\"1\""));
    assert_non_null(strstr(ap_metrics_errmsg(m), "already registered as a counter"));
    assert_non_null(ap_metrics_histogram(m, "lat", "h", NULL, NULL, 0));
    assert_null(ap_metrics_counter(m, "lat_count", "h", NULL));
    assert_null(ap_metrics_gauge(m, "lat_bucket", "h", NULL));
    assert_non_null(ap_metrics_counter(m, "lat_total", "h", NULL));
    assert_non_null(ap_metrics_counter(m, "q_sum", "h", NULL));
    assert_null(ap_metrics_histogram(m, "q", "h", NULL, NULL, 0));
    ap_metrics_free(m);
}

static void test_long_lines(void **state)
{
    (void)state;
    /* Lines longer than any small internal buffer come out whole. */
    char value[301];
    memset(value, 'v', sizeof value - 1);
    value[sizeof value - 1] = '\0';
    char labels[400] = "";
    assert_int_equal(ap_metrics_label_append(labels, sizeof labels, "long", value), 0);
    struct ap_metrics *m = make_registry();
    static const double bounds[] = {1};
    struct ap_metric *h = ap_metrics_histogram(m, "h", NULL, labels, bounds, 1);
    assert_non_null(h);
    ap_metric_observe(h, 0.5);

    char want_bucket[512], want_inf[512], want_sum[512], want_count[512];
    snprintf(want_bucket, sizeof want_bucket, "h_bucket{long=\"%s\",le=\"1\"} 1", value);
    snprintf(want_inf, sizeof want_inf, "h_bucket{long=\"%s\",le=\"+Inf\"} 1", value);
    snprintf(want_sum, sizeof want_sum, "h_sum{long=\"%s\"} 0.5", value);
    snprintf(want_count, sizeof want_count, "h_count{long=\"%s\"} 1", value);
    const char *const want[] = {"# TYPE h histogram", want_bucket, want_inf, want_sum, want_count};
    assert_render(m, want, AP_ARRAY_LEN(want));
    ap_metrics_free(m);
}

static void test_null_metrics_are_ignored(void **state)
{
    (void)state;
    /* A daemon that could not allocate a metric keeps calling it. */
    ap_metric_inc(NULL);
    ap_metric_add(NULL, 1);
    ap_metric_set(NULL, 1);
    ap_metric_observe(NULL, 1);
    assert_true(ap_metric_value(NULL) == 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_registry),
        cmocka_unit_test(test_counter),
        cmocka_unit_test(test_gauge_series_share_header),
        cmocka_unit_test(test_value_formatting),
        cmocka_unit_test(test_histogram),
        cmocka_unit_test(test_histogram_cumulative_default_bounds),
        cmocka_unit_test(test_label_escaping),
        cmocka_unit_test(test_invalid_names_and_labels),
        cmocka_unit_test(test_long_lines),
        cmocka_unit_test(test_null_metrics_are_ignored),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
