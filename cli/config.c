/* config: the CLI config file (endpoint, token): where it lives, reading, atomic writing. */
#include "config.h"

#include "ap/base.h"
#include "ap/err.h"
#include "ap/fs.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int cli_config_path(char *out, size_t size)
{
    const char *xdg = getenv("XDG_CONFIG_HOME");
    const char *home = getenv("HOME");
    int n;
    /* XDG Base Directory spec: a relative XDG_CONFIG_HOME is invalid and ignored. */
    if (xdg != NULL && xdg[0] == '/') {
        n = snprintf(out, size, "%s/archipel/config.json", xdg);
    } else if (home != NULL && home[0] != '\0') {
        n = snprintf(out, size, "%s/.config/archipel/config.json", home);
    } else {
        return AP_EINVAL;
    }
    return n < 0 || (size_t)n >= size ? AP_ETOOBIG : 0;
}

/* The path to use: the given one, or the default. */
static int resolve(const char *path, char *buf, size_t size, char *errmsg)
{
    if (path != NULL) {
        if (ap_strlcpy(buf, path, size) >= size) {
            ap_errmsg_set(errmsg, "config path too long");
            return AP_ETOOBIG;
        }
        return 0;
    }
    int rv = cli_config_path(buf, size);
    if (rv == AP_EINVAL) {
        ap_errmsg_set(errmsg, "no config path: neither XDG_CONFIG_HOME nor HOME is set");
    } else if (rv != 0) {
        ap_errmsg_set(errmsg, "config path too long");
    }
    return rv;
}

/*
 * Parse the file at path. *out is NULL when it does not exist. Returns 0,
 * AP_EIO or AP_EPROTO with errmsg.
 */
static int read_doc(const char *path, json_t **out, char *errmsg)
{
    *out = NULL;
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        if (errno == ENOENT) {
            return 0;
        }
        ap_errmsg_set(errmsg, "config %s: %s", path, strerror(errno));
        return AP_EIO;
    }
    json_error_t jerr;
    json_t *doc = json_loadf(f, JSON_REJECT_DUPLICATES, &jerr);
    fclose(f);
    if (doc == NULL) {
        ap_errmsg_set(errmsg, "config %s: line %d: %s", path, jerr.line, jerr.text);
        return AP_EPROTO;
    }
    if (!json_is_object(doc)) {
        json_decref(doc);
        ap_errmsg_set(errmsg, "config %s: not a JSON object", path);
        return AP_EPROTO;
    }
    *out = doc;
    return 0;
}

static int copy_field(json_t *doc, const char *key, char *dst, size_t size, const char *path,
                      char *errmsg)
{
    json_t *v = json_object_get(doc, key);
    if (v == NULL || json_is_null(v)) {
        return 0;
    }
    if (!json_is_string(v)) {
        ap_errmsg_set(errmsg, "config %s: \"%s\" must be a string", path, key);
        return AP_EPROTO;
    }
    if (ap_strlcpy(dst, json_string_value(v), size) >= size) {
        dst[0] = '\0';
        ap_errmsg_set(errmsg, "config %s: \"%s\" is longer than %zu bytes", path, key, size - 1);
        return AP_ETOOBIG;
    }
    return 0;
}

int cli_config_load(const char *path, struct cli_config *cfg, char *errmsg)
{
    char buf[PATH_MAX];
    json_t *doc;
    memset(cfg, 0, sizeof *cfg);
    int rv = resolve(path, buf, sizeof buf, errmsg);
    if (rv != 0) {
        return rv;
    }
    rv = read_doc(buf, &doc, errmsg);
    if (rv != 0 || doc == NULL) {
        return rv;
    }
    rv = copy_field(doc, "endpoint", cfg->endpoint, sizeof cfg->endpoint, buf, errmsg);
    if (rv == 0) {
        rv = copy_field(doc, "token", cfg->token, sizeof cfg->token, buf, errmsg);
    }
    json_decref(doc);
    return rv;
}

static int set_or_remove(json_t *doc, const char *key, const char *value)
{
    if (value == NULL) {
        return 0;
    }
    if (value[0] == '\0') {
        json_object_del(doc, key);
        return 0;
    }
    return json_object_set_new(doc, key, json_string(value)) == 0 ? 0 : AP_ENOMEM;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Write text and a newline to a fresh mode-0600 file next to path and rename it over path. */
static int replace_file(const char *path, const char *text, char *errmsg)
{
    char tmp[PATH_MAX + 32];
    char dir[PATH_MAX];
    int n = snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    if (n < 0 || (size_t)n >= sizeof tmp) {
        ap_errmsg_set(errmsg, "config path too long");
        return AP_ETOOBIG;
    }
    ap_strlcpy(dir, path, sizeof dir);
    char *slash = strrchr(dir, '/');
    if (slash != NULL && slash != dir) {
        *slash = '\0';
        if (ap_fs_mkdir_p(dir) != 0) {
            ap_errmsg_set(errmsg, "create %s: %s", dir, strerror(errno));
            return AP_EIO;
        }
    } else {
        ap_strlcpy(dir, slash == dir ? "/" : ".", sizeof dir);
    }
    /* O_EXCL: never write through a file or link someone else put there. */
    unlink(tmp);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        ap_errmsg_set(errmsg, "create %s: %s", tmp, strerror(errno));
        return AP_EIO;
    }
    /* The umask may have taken bits away; the token must stay private, nothing more. */
    if (fchmod(fd, 0600) != 0 || write_all(fd, text, strlen(text)) != 0 ||
        write_all(fd, "\n", 1) != 0 || fsync(fd) != 0) {
        ap_errmsg_set(errmsg, "write %s: %s", tmp, strerror(errno));
        close(fd);
        goto err_after_create;
    }
    if (close(fd) != 0) {
        ap_errmsg_set(errmsg, "write %s: %s", tmp, strerror(errno));
        goto err_after_create;
    }
    if (rename(tmp, path) != 0) {
        ap_errmsg_set(errmsg, "rename %s to %s: %s", tmp, path, strerror(errno));
        goto err_after_create;
    }
    /* Make the rename itself durable; failing to is not worth failing the write for. */
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    return 0;

err_after_create:
    unlink(tmp);
    return AP_EIO;
}

int cli_config_write(const char *path_or_null_for_default, const char *endpoint, const char *token,
                     char *errmsg)
{
    char path[PATH_MAX];
    json_t *doc;
    int rv = resolve(path_or_null_for_default, path, sizeof path, errmsg);
    if (rv != 0) {
        return rv;
    }
    rv = read_doc(path, &doc, errmsg);
    if (rv != 0) {
        return rv;
    }
    if (doc == NULL) {
        doc = json_object();
        if (doc == NULL) {
            ap_errmsg_set(errmsg, "out of memory");
            return AP_ENOMEM;
        }
    }
    char *text = NULL;
    if ((rv = set_or_remove(doc, "endpoint", endpoint)) != 0 ||
        (rv = set_or_remove(doc, "token", token)) != 0 ||
        (text = json_dumps(doc, JSON_INDENT(2))) == NULL) {
        json_decref(doc);
        ap_errmsg_set(errmsg, "out of memory");
        return AP_ENOMEM;
    }
    json_decref(doc);
    rv = replace_file(path, text, errmsg);
    free(text); /* jansson's default allocator is malloc */
    return rv;
}
