/* err: archipel's error codes, translators from foreign codes, errmsg buffers. */
#include "ap/err.h"

#include <errno.h>
#include <raft.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <uv.h>

struct err_row {
    int value;
    int http;
    const char *code;
    const char *msg;
};

static const struct err_row err_rows[] = {
#define AP_ERR_ROW(name, value, http, code, msg) {value, http, code, msg},
    AP_ERR_TABLE(AP_ERR_ROW)
#undef AP_ERR_ROW
};

static const struct err_row *err_find(int err)
{
    for (size_t i = 0; i < sizeof err_rows / sizeof err_rows[0]; i++) {
        if (err_rows[i].value == err) {
            return &err_rows[i];
        }
    }
    return NULL;
}

const char *ap_strerror(int err)
{
    if (err == 0) {
        return "success";
    }
    const struct err_row *r = err_find(err);
    return r != NULL ? r->msg : "unknown error";
}

const char *ap_err_code(int err)
{
    const struct err_row *r = err_find(err);
    return r != NULL ? r->code : "internal";
}

int ap_err_http_status(int err)
{
    const struct err_row *r = err_find(err);
    return r != NULL ? r->http : 500;
}

int ap_err_from_sqlite(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_OK:
    case SQLITE_ROW:
    case SQLITE_DONE:
        return 0;
    case SQLITE_NOMEM:
        return AP_ENOMEM;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return AP_EBUSY;
    case SQLITE_CONSTRAINT:
        return AP_EEXIST;
    case SQLITE_NOTFOUND:
        return AP_ENOTFOUND;
    case SQLITE_FULL:
        return AP_ENOSPACE;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
        return AP_ECORRUPT;
    case SQLITE_TOOBIG:
        return AP_ETOOBIG;
    case SQLITE_MISUSE:
    case SQLITE_RANGE:
    case SQLITE_MISMATCH:
        return AP_EINVAL;
    case SQLITE_PERM:
    case SQLITE_AUTH:
    case SQLITE_READONLY:
        return AP_EPERM;
    case SQLITE_IOERR:
    case SQLITE_CANTOPEN:
    case SQLITE_PROTOCOL:
        return AP_EIO;
    default:
        return AP_EINTERNAL;
    }
}

int ap_err_from_raft(int rc)
{
    switch (rc) {
    case 0:
        return 0;
    case RAFT_NOMEM:
        return AP_ENOMEM;
    case RAFT_BADID:
    case RAFT_DUPLICATEID:
    case RAFT_DUPLICATEADDRESS:
    case RAFT_BADROLE:
    case RAFT_MALFORMED:
    case RAFT_INVALID:
        return AP_EINVAL;
    case RAFT_NOTLEADER:
    case RAFT_LEADERSHIPLOST:
        return AP_ENOTLEADER;
    case RAFT_SHUTDOWN:
        return AP_ESHUTDOWN;
    case RAFT_CANCELED:
        return AP_ECANCELED;
    case RAFT_CANTBOOTSTRAP:
    case RAFT_CANTCHANGE:
    case RAFT_BUSY:
        return AP_EBUSY;
    case RAFT_CORRUPT:
        return AP_ECORRUPT;
    case RAFT_NOCONNECTION:
        return AP_ECONN;
    case RAFT_NOSPACE:
        return AP_ENOSPACE;
    case RAFT_TOOBIG:
        return AP_ETOOBIG;
    case RAFT_IOERR:
        return AP_EIO;
    case RAFT_UNAUTHORIZED:
        return AP_EPERM;
    default:
        return AP_EINTERNAL;
    }
}

int ap_err_from_uv(int rc)
{
    if (rc >= 0) {
        return 0;
    }
    switch (rc) {
    case UV_ENOMEM:
        return AP_ENOMEM;
    case UV_EINVAL:
    case UV_EAFNOSUPPORT:
        return AP_EINVAL;
    case UV_ECANCELED:
        return AP_ECANCELED;
    case UV_ETIMEDOUT:
        return AP_ETIMEDOUT;
    case UV_ECONNREFUSED:
    case UV_ECONNRESET:
    case UV_ECONNABORTED:
    case UV_EHOSTUNREACH:
    case UV_ENETUNREACH:
    case UV_EPIPE:
    case UV_ENOTCONN:
    case UV_EOF:
        return AP_ECONN;
    case UV_EADDRINUSE:
    case UV_EADDRNOTAVAIL:
    case UV_EBUSY:
        return AP_EBUSY;
    case UV_EAGAIN:
        return AP_EAGAIN;
    case UV_ENOSPC:
        return AP_ENOSPACE;
    case UV_EACCES:
    case UV_EPERM:
        return AP_EPERM;
    case UV_ENOENT:
        return AP_ENOTFOUND;
    case UV_EEXIST:
        return AP_EEXIST;
    default:
        return AP_EIO;
    }
}

void ap_errmsg_set(char *errmsg, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errmsg, AP_ERRMSG_SIZE, fmt, ap);
    va_end(ap);
}

void ap_errmsg_wrap(char *errmsg, const char *fmt, ...)
{
    char prefix[AP_ERRMSG_SIZE];
    char old[AP_ERRMSG_SIZE];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, errmsg, AP_ERRMSG_SIZE);
    old[AP_ERRMSG_SIZE - 1] = '\0';
    /* Build "prefix: old" by hand; cutting at the buffer size is intended. */
    size_t pos = 0;
    for (const char *part = prefix; *part != '\0' && pos < AP_ERRMSG_SIZE - 1; part++) {
        errmsg[pos++] = *part;
    }
    if (old[0] != '\0') {
        for (const char *part = ": "; *part != '\0' && pos < AP_ERRMSG_SIZE - 1; part++) {
            errmsg[pos++] = *part;
        }
        for (const char *part = old; *part != '\0' && pos < AP_ERRMSG_SIZE - 1; part++) {
            errmsg[pos++] = *part;
        }
    }
    errmsg[pos] = '\0';
}
