/* config: the CLI config file (endpoint, token): where it lives, reading, atomic writing. */
#ifndef CLI_CONFIG_H
#define CLI_CONFIG_H

#include <stddef.h>

/** Longest endpoint URL kept, terminator included. */
#define CLI_CONFIG_ENDPOINT_SIZE 512

/** Longest token kept, terminator included. */
#define CLI_CONFIG_TOKEN_SIZE 4096

/** What the config file holds; an empty string means "not set". */
struct cli_config {
    char endpoint[CLI_CONFIG_ENDPOINT_SIZE];
    char token[CLI_CONFIG_TOKEN_SIZE];
};

/**
 * The default config path: $XDG_CONFIG_HOME/archipel/config.json when
 * XDG_CONFIG_HOME is set to an absolute path, else
 * $HOME/.config/archipel/config.json. Writes it into out (size bytes).
 * Returns 0, AP_EINVAL when neither variable is usable, or AP_ETOOBIG when
 * the path does not fit.
 */
int cli_config_path(char *out, size_t size);

/**
 * Read the config file at path (the default path when NULL) into *cfg.
 * A missing file is not an error: *cfg is then empty and 0 is returned.
 * Unknown keys are ignored. Errors, with errmsg (AP_ERRMSG_SIZE bytes)
 * naming the file: AP_EIO (unreadable), AP_EPROTO (not a JSON object, or
 * "endpoint"/"token" not strings), AP_ETOOBIG (a value too long), and the
 * errors of cli_config_path().
 */
int cli_config_load(const char *path, struct cli_config *cfg, char *errmsg);

/**
 * Store endpoint and token in the config file at path (the default path
 * when NULL), keeping any other key the file already holds. A NULL
 * endpoint or token keeps the stored value; "" removes it. Missing
 * directories are created; the file is written with mode 0600 to a
 * temporary file in the same directory, synced, and renamed over the old
 * one, so a reader sees the old or the new file, never a half-written one.
 * Strings are borrowed. Returns 0, or AP_EINVAL (unusable default path),
 * AP_ETOOBIG, AP_EPROTO (the existing file is not a JSON object), AP_EIO
 * or AP_ENOMEM, with errmsg (AP_ERRMSG_SIZE bytes) saying what failed.
 */
int cli_config_write(const char *path_or_null_for_default, const char *endpoint, const char *token,
                     char *errmsg);

#endif
