/* log: one line per event, "ts=... level=... comp=... msg=<event> key=value ...". */
#ifndef AP_LOG_H
#define AP_LOG_H

#include <stdbool.h>
#include <stdio.h>

enum ap_log_level {
    AP_LOG_DEBUG = 0,
    AP_LOG_INFO = 1,
    AP_LOG_WARN = 2,
    AP_LOG_ERROR = 3,
    AP_LOG_OFF = 4,
};

/**
 * Log one event. The format's first word is the event name (it becomes
 * msg=...), the rest are key=value pairs:
 *   AP_LOG(AP_LOG_INFO, "site_connected site=%s addr=%s", name, addr);
 * The level is checked before anything is formatted.
 */
#define AP_LOG(level, ...)                                                                         \
    do {                                                                                           \
        if (ap_log_enabled(level)) {                                                               \
            ap_log_write((level), __VA_ARGS__);                                                    \
        }                                                                                          \
    } while (0)

/**
 * Configure the process's logger: its component name (comp=, copied), the
 * minimum level and the stream (stderr when NULL). Called once from main();
 * the logger is the one process-wide setting, because every module logs and
 * threading a context through pure code for it would defeat its purpose.
 */
void ap_log_init(const char *comp, enum ap_log_level level, FILE *stream);

/** Change the minimum level. */
void ap_log_set_level(enum ap_log_level level);

/**
 * Parse "debug", "info", "warn", "error" or "off" (case-insensitive) into
 * *level. Returns 0, or AP_EINVAL for anything else.
 */
int ap_log_parse_level(const char *s, enum ap_log_level *level);

/**
 * The level from the AP_LOG_LEVEL environment variable when set and valid,
 * else fallback.
 */
enum ap_log_level ap_log_level_from_env(enum ap_log_level fallback);

/** Whether an event at this level would be written. */
bool ap_log_enabled(enum ap_log_level level);

/** Format and write one event line; prefer AP_LOG, which checks the level first. */
void ap_log_write(enum ap_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
