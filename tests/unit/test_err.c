/* Unit tests for err: codes, messages, translators, errmsg wrapping. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "ap/err.h"

#include <raft.h>
#include <sqlite3.h>
#include <string.h>
#include <uv.h>

static void test_messages(void **state)
{
    (void)state;
    assert_string_equal(ap_strerror(0), "success");
    assert_string_equal(ap_strerror(AP_ENOTFOUND), "not found");
    assert_string_equal(ap_strerror(-9999), "unknown error");
    assert_string_equal(ap_err_code(AP_EQUOTA), "quota_exceeded");
    assert_int_equal(ap_err_http_status(AP_ENOTFOUND), 404);
    assert_int_equal(ap_err_http_status(AP_EEXIST), 409);
    assert_int_equal(ap_err_http_status(AP_EQUOTA), 403);
    assert_int_equal(ap_err_http_status(AP_EINVAL), 400);
    assert_int_equal(ap_err_http_status(AP_EAUTH), 401);
    assert_int_equal(ap_err_http_status(-9999), 500);
}

static void test_translators(void **state)
{
    (void)state;
    assert_int_equal(ap_err_from_sqlite(SQLITE_OK), 0);
    assert_int_equal(ap_err_from_sqlite(SQLITE_DONE), 0);
    assert_int_equal(ap_err_from_sqlite(SQLITE_BUSY), AP_EBUSY);
    assert_int_equal(ap_err_from_sqlite(SQLITE_CONSTRAINT_UNIQUE), AP_EEXIST);
    assert_int_equal(ap_err_from_sqlite(SQLITE_IOERR_FSYNC), AP_EIO);
    assert_int_equal(ap_err_from_sqlite(SQLITE_FULL), AP_ENOSPACE);
    assert_int_equal(ap_err_from_raft(0), 0);
    assert_int_equal(ap_err_from_raft(RAFT_NOTLEADER), AP_ENOTLEADER);
    assert_int_equal(ap_err_from_raft(RAFT_LEADERSHIPLOST), AP_ENOTLEADER);
    assert_int_equal(ap_err_from_raft(RAFT_SHUTDOWN), AP_ESHUTDOWN);
    assert_int_equal(ap_err_from_raft(RAFT_NOMEM), AP_ENOMEM);
    assert_int_equal(ap_err_from_uv(0), 0);
    assert_int_equal(ap_err_from_uv(UV_ECONNREFUSED), AP_ECONN);
    assert_int_equal(ap_err_from_uv(UV_ECANCELED), AP_ECANCELED);
    assert_int_equal(ap_err_from_uv(UV_EADDRINUSE), AP_EBUSY);
}

static void test_errmsg_wrap(void **state)
{
    (void)state;
    char m[AP_ERRMSG_SIZE];
    ap_errmsg_set(m, "sqlite: %s", "disk I/O error");
    ap_errmsg_wrap(m, "open %s", "catalog");
    assert_string_equal(m, "open catalog: sqlite: disk I/O error");

    /* An empty message takes the prefix alone. */
    m[0] = '\0';
    ap_errmsg_wrap(m, "start");
    assert_string_equal(m, "start");

    /* Wrapping never overflows: the result is cut at the buffer size. */
    char big[400];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    ap_errmsg_set(m, "%s", big);
    ap_errmsg_wrap(m, "%s", big);
    assert_int_equal(strlen(m), AP_ERRMSG_SIZE - 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_messages),
        cmocka_unit_test(test_translators),
        cmocka_unit_test(test_errmsg_wrap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
