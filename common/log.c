/* log: one line per event, "ts=... level=... comp=... msg=<event> key=value ...". */
#include "ap/log.h"

#include "ap/base.h"
#include "ap/err.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static struct {
    char comp[32];
    enum ap_log_level level;
    FILE *stream;
} logger = {"archipel", AP_LOG_INFO, NULL};

static const char *level_names[] = {"debug", "info", "warn", "error", "off"};

void ap_log_init(const char *comp, enum ap_log_level level, FILE *stream)
{
    ap_strlcpy(logger.comp, comp != NULL ? comp : "archipel", sizeof logger.comp);
    logger.level = level;
    logger.stream = stream;
}

void ap_log_set_level(enum ap_log_level level)
{
    logger.level = level;
}

int ap_log_parse_level(const char *s, enum ap_log_level *level)
{
    if (s == NULL) {
        return AP_EINVAL;
    }
    for (size_t i = 0; i < AP_ARRAY_LEN(level_names); i++) {
        if (strcasecmp(s, level_names[i]) == 0) {
            *level = (enum ap_log_level)i;
            return 0;
        }
    }
    return AP_EINVAL;
}

enum ap_log_level ap_log_level_from_env(enum ap_log_level fallback)
{
    enum ap_log_level l;
    if (ap_log_parse_level(getenv("AP_LOG_LEVEL"), &l) == 0) {
        return l;
    }
    return fallback;
}

bool ap_log_enabled(enum ap_log_level level)
{
    return level >= logger.level && level < AP_LOG_OFF;
}

void ap_log_write(enum ap_log_level level, const char *fmt, ...)
{
    char body[2048];
    char ts[40];
    struct timespec now;
    struct tm tm;
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    /* One event per line: a newline inside a value would split it. */
    for (char *p = body; *p != '\0'; p++) {
        if (*p == '\n' || *p == '\r') {
            *p = ' ';
        }
    }

    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    size_t n = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof ts - n, ".%03ldZ", now.tv_nsec / 1000000);

    const char *rest = strchr(body, ' ');
    int event_len = rest != NULL ? (int)(rest - body) : (int)strlen(body);
    FILE *out = logger.stream != NULL ? logger.stream : stderr;
    fprintf(out, "ts=%s level=%s comp=%s msg=%.*s%s\n", ts,
            level_names[level < AP_LOG_OFF ? level : AP_LOG_ERROR], logger.comp, event_len, body,
            rest != NULL ? rest : "");
    fflush(out);
}
