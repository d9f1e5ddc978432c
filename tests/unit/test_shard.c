/* Unit tests of the site shard: local writes, merges from the region, the change stream, rights. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "ap/base.h"
#include "ap/err.h"
#include "ap/log.h"
#include "ap/mp.h"
#include "shard.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct fx {
    char dir[64];
    char path[96];
    struct shard *s;
};

static int setup(void **state)
{
    struct fx *f = ap_calloc(1, sizeof *f);
    char errmsg[AP_ERRMSG_SIZE];
    ap_log_init("test", AP_LOG_WARN, NULL);
    strcpy(f->dir, "/tmp/ap-shard-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof f->path, "%s/shard.db", f->dir);
    assert_int_equal(shard__open(&f->s, f->path, errmsg), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    char cmd[128];
    shard__close(f->s);
    snprintf(cmd, sizeof cmd, "rm -rf %s", f->dir);
    assert_int_equal(system(cmd), 0);
    ap_free(f);
    return 0;
}

static void make(struct ap_instrec *r, int k, const char *tenant, uint64_t ms)
{
    memset(r, 0, sizeof *r);
    snprintf(r->id, sizeof r->id, "0190b3f0-0000-7000-8000-%012d", k);
    snprintf(r->name, sizeof r->name, "w%d", k);
    ap_strlcpy(r->tenant, tenant, sizeof r->tenant);
    strcpy(r->site, "r1-s1");
    r->spec = ap_strdup("{\"command\":[\"sleep\",\"9\"]}");
    r->cpu_millis = 100;
    r->memory_mb = 64;
    r->created = (struct ap_hlc_ts){ms, 0, 7};
    r->desired_ts = r->created;
    r->actual_ts = r->created;
}

static void put(struct fx *f, struct ap_instrec *r)
{
    assert_int_equal(shard__begin(f->s), 0);
    assert_int_equal(shard__put_local(f->s, r), 0);
    assert_int_equal(shard__commit(f->s), 0);
}

/* Decode a delta body and count its instance and rights records. */
static void decode_delta(const uint8_t *body, size_t len, size_t *n_inst, size_t *n_rights,
                         uint64_t *to)
{
    msgpack_unpacked up;
    const msgpack_object *inst, *rights;
    assert_int_equal(ap_mp_unpack(body, len, 1 << 24, &up, NULL), 0);
    assert_int_equal(ap_mp_get_array(&up.data, "inst", &inst, 100000, true, NULL), 0);
    assert_int_equal(ap_mp_get_array(&up.data, "rights", &rights, 100000, true, NULL), 0);
    assert_int_equal(ap_mp_get_u64(&up.data, "to", to, UINT64_MAX, true, NULL), 0);
    *n_inst = inst->via.array.size;
    *n_rights = rights->via.array.size;
    msgpack_unpacked_destroy(&up);
}

static void test_local_writes_survive_reopen(void **state)
{
    struct fx *f = *state;
    struct ap_instrec r, got;
    char errmsg[AP_ERRMSG_SIZE];
    make(&r, 1, "acme", 1000);
    put(f, &r);
    assert_int_equal(shard__seq(f->s), 1);
    assert_int_equal(shard__set_meta(f->s, "region_applied", 42), 0);
    shard__close(f->s);
    assert_int_equal(shard__open(&f->s, f->path, errmsg), 0);
    assert_int_equal(shard__seq(f->s), 1);
    assert_int_equal(shard__meta(f->s, "region_applied"), 42);
    assert_int_equal(shard__get(f->s, r.id, &got), 0);
    assert_true(ap_instrec_equal(&r, &got));
    assert_string_equal(got.spec, r.spec);
    bool taken;
    assert_int_equal(shard__name_taken(f->s, "acme", "w1", &taken), 0);
    assert_true(taken);
    assert_int_equal(shard__name_taken(f->s, "other", "w1", &taken), 0);
    assert_false(taken);
    struct ap_instrec none;
    assert_int_equal(shard__get(f->s, "nope", &none), AP_ENOTFOUND);
    ap_instrec_clear(&got);
    ap_instrec_clear(&r);
}

static void test_delta_pages_and_no_echo(void **state)
{
    struct fx *f = *state;
    for (int k = 0; k < 25; k++) {
        struct ap_instrec r;
        make(&r, k, "acme", 1000 + (uint64_t)k);
        put(f, &r);
        ap_instrec_clear(&r);
    }
    uint8_t *body;
    size_t len, count, ni, nr;
    uint64_t to, after = 0;
    size_t total = 0;
    for (int page = 0; page < 10; page++) {
        assert_int_equal(shard__delta_after(f->s, after, 10, &body, &len, &to, &count), 0);
        decode_delta(body, len, &ni, &nr, &to);
        ap_free(body);
        total += ni;
        if (count == 0) {
            break;
        }
        assert_true(to > after);
        after = to;
    }
    assert_int_equal(total, 25);

    /* A record from the region, merged unchanged, is not sent back. */
    struct ap_instrec remote;
    bool changed;
    make(&remote, 100, "acme", 5000);
    strcpy(remote.site, "r1-s1");
    assert_int_equal(shard__begin(f->s), 0);
    assert_int_equal(shard__merge_remote(f->s, &remote, &changed), 0);
    assert_int_equal(shard__commit(f->s), 0);
    assert_true(changed);
    assert_int_equal(shard__delta_after(f->s, after, 10, &body, &len, &to, &count), 0);
    assert_int_equal(count, 0);
    ap_free(body);

    /* A newer local actual state on that record goes back. */
    struct ap_instrec mine;
    assert_int_equal(shard__get(f->s, remote.id, &mine), 0);
    mine.actual = AP_ACTUAL_RUNNING;
    mine.actual_ts = (struct ap_hlc_ts){6000, 0, 9};
    put(f, &mine);
    assert_int_equal(shard__delta_after(f->s, after, 10, &body, &len, &to, &count), 0);
    assert_int_equal(count, 1);
    ap_free(body);

    /* The region later deletes it: delete dominates, and the site's newer
     * actual state survives the merge, so the row goes back to the region. */
    remote.desired = AP_DESIRED_DELETED;
    remote.desired_ts = (struct ap_hlc_ts){5500, 0, 1};
    assert_int_equal(shard__begin(f->s), 0);
    assert_int_equal(shard__merge_remote(f->s, &remote, &changed), 0);
    assert_int_equal(shard__commit(f->s), 0);
    struct ap_instrec now;
    assert_int_equal(shard__get(f->s, remote.id, &now), 0);
    assert_int_equal(now.desired, AP_DESIRED_DELETED);
    assert_int_equal(now.actual, AP_ACTUAL_RUNNING);
    ap_instrec_clear(&now);
    ap_instrec_clear(&mine);
    ap_instrec_clear(&remote);
}

static void test_rights_and_usage(void **state)
{
    struct fx *f = *state;
    struct shard_rights rt;
    assert_int_equal(shard__begin(f->s), 0);
    assert_int_equal(shard__rights_merge_remote(f->s, "acme", SHARD_RES_INSTANCES, 5, 2), 0);
    assert_int_equal(shard__rights_merge_remote(f->s, "acme", SHARD_RES_CPU, 1000, 0), 0);
    /* granted only grows: an older, smaller grant changes nothing. */
    assert_int_equal(shard__rights_merge_remote(f->s, "acme", SHARD_RES_INSTANCES, 3, 2), 0);
    assert_int_equal(shard__commit(f->s), 0);
    for (int k = 0; k < 3; k++) {
        struct ap_instrec r;
        make(&r, k, "acme", 1000 + (uint64_t)k);
        if (k == 2) {
            r.desired = AP_DESIRED_DELETED;
        }
        put(f, &r);
        ap_instrec_clear(&r);
    }
    assert_int_equal(shard__rights(f->s, "acme", &rt), 0);
    assert_int_equal(rt.granted[SHARD_RES_INSTANCES], 5);
    assert_int_equal(rt.reserve[SHARD_RES_INSTANCES], 2);
    assert_int_equal(rt.usage[SHARD_RES_INSTANCES], 2); /* the deleted one does not count */
    assert_int_equal(rt.usage[SHARD_RES_CPU], 200);
    assert_int_equal(shard__begin(f->s), 0);
    assert_int_equal(shard__rights_return(f->s, "acme", SHARD_RES_INSTANCES, 2), 0);
    assert_int_equal(shard__commit(f->s), 0);
    assert_int_equal(shard__rights(f->s, "acme", &rt), 0);
    assert_int_equal(rt.returned[SHARD_RES_INSTANCES], 2);
    /* The return travels in the next delta. */
    uint8_t *body;
    size_t len, count, ni, nr;
    uint64_t to;
    assert_int_equal(shard__delta_after(f->s, 3, 10, &body, &len, &to, &count), 0);
    decode_delta(body, len, &ni, &nr, &to);
    ap_free(body);
    assert_int_equal(ni, 0);
    assert_int_equal(nr, 1);
    char **tenants;
    size_t nt;
    assert_int_equal(shard__rights_tenants(f->s, &tenants, &nt), 0);
    assert_int_equal(nt, 1);
    assert_string_equal(tenants[0], "acme");
    ap_free(tenants[0]);
    ap_free(tenants);
}

/* ---- a full disk, simulated by a VFS whose writes fail with SQLITE_FULL on demand ---- */

struct full_file {
    sqlite3_file base;
    sqlite3_file *real; /* Right after this struct, szOsFile of the real VFS. */
};

static struct {
    sqlite3_vfs vfs;
    sqlite3_vfs *real;
    bool full;
} full_vfs;

#define REAL(f) (((struct full_file *)(f))->real)

static int ff_close(sqlite3_file *f)
{
    return REAL(f)->pMethods->xClose(REAL(f));
}
static int ff_read(sqlite3_file *f, void *b, int n, sqlite3_int64 off)
{
    return REAL(f)->pMethods->xRead(REAL(f), b, n, off);
}
static int ff_write(sqlite3_file *f, const void *b, int n, sqlite3_int64 off)
{
    return full_vfs.full ? SQLITE_FULL : REAL(f)->pMethods->xWrite(REAL(f), b, n, off);
}
static int ff_truncate(sqlite3_file *f, sqlite3_int64 size)
{
    return REAL(f)->pMethods->xTruncate(REAL(f), size);
}
static int ff_sync(sqlite3_file *f, int flags)
{
    return REAL(f)->pMethods->xSync(REAL(f), flags);
}
static int ff_file_size(sqlite3_file *f, sqlite3_int64 *size)
{
    return REAL(f)->pMethods->xFileSize(REAL(f), size);
}
static int ff_lock(sqlite3_file *f, int l)
{
    return REAL(f)->pMethods->xLock(REAL(f), l);
}
static int ff_unlock(sqlite3_file *f, int l)
{
    return REAL(f)->pMethods->xUnlock(REAL(f), l);
}
static int ff_check_reserved(sqlite3_file *f, int *out)
{
    return REAL(f)->pMethods->xCheckReservedLock(REAL(f), out);
}
static int ff_file_control(sqlite3_file *f, int op, void *arg)
{
    return REAL(f)->pMethods->xFileControl(REAL(f), op, arg);
}
static int ff_sector_size(sqlite3_file *f)
{
    return REAL(f)->pMethods->xSectorSize(REAL(f));
}
static int ff_device_chars(sqlite3_file *f)
{
    return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f));
}
static int ff_shm_map(sqlite3_file *f, int pg, int pgsz, int extend, void volatile **pp)
{
    return REAL(f)->pMethods->xShmMap(REAL(f), pg, pgsz, extend, pp);
}
static int ff_shm_lock(sqlite3_file *f, int offset, int n, int flags)
{
    return REAL(f)->pMethods->xShmLock(REAL(f), offset, n, flags);
}
static void ff_shm_barrier(sqlite3_file *f)
{
    REAL(f)->pMethods->xShmBarrier(REAL(f));
}
static int ff_shm_unmap(sqlite3_file *f, int del)
{
    return REAL(f)->pMethods->xShmUnmap(REAL(f), del);
}

static const sqlite3_io_methods ff_methods = {
    2,
    ff_close,
    ff_read,
    ff_write,
    ff_truncate,
    ff_sync,
    ff_file_size,
    ff_lock,
    ff_unlock,
    ff_check_reserved,
    ff_file_control,
    ff_sector_size,
    ff_device_chars,
    ff_shm_map,
    ff_shm_lock,
    ff_shm_barrier,
    ff_shm_unmap,
    NULL,
    NULL,
};

static int ff_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *f, int flags, int *out_flags)
{
    (void)vfs;
    struct full_file *ff = (struct full_file *)f;
    ff->real = (sqlite3_file *)(ff + 1);
    int rc = full_vfs.real->xOpen(full_vfs.real, name, ff->real, flags, out_flags);
    /* SQLite calls xClose only when pMethods is set: only on success. */
    f->pMethods = rc == SQLITE_OK && ff->real->pMethods != NULL ? &ff_methods : NULL;
    return rc;
}

static void full_vfs_install(void)
{
    full_vfs.real = sqlite3_vfs_find(NULL);
    assert_non_null(full_vfs.real);
    full_vfs.vfs = *full_vfs.real;
    full_vfs.vfs.zName = "ap-test-full";
    full_vfs.vfs.szOsFile = (int)sizeof(struct full_file) + full_vfs.real->szOsFile;
    full_vfs.vfs.xOpen = ff_open;
    full_vfs.vfs.pAppData = NULL;
    full_vfs.full = false;
    assert_int_equal(sqlite3_vfs_register(&full_vfs.vfs, 1), SQLITE_OK);
}

static void full_vfs_remove(void)
{
    assert_int_equal(sqlite3_vfs_unregister(&full_vfs.vfs), SQLITE_OK);
    assert_int_equal(sqlite3_vfs_register(full_vfs.real, 1), SQLITE_OK);
}

/* docs/edge.md "Full disk": failed writes say AP_ENOSPACE and change nothing, reads work, the
 * shard knows it is full until a write (the probe) reaches the disk again. */
static void test_full_disk(void **state)
{
    struct fx *f = *state;
    char errmsg[AP_ERRMSG_SIZE];
    struct ap_instrec a, b, got;
    shard__close(f->s);
    full_vfs_install();
    assert_int_equal(shard__open(&f->s, f->path, errmsg), 0);
    make(&a, 1, "acme", 1000);
    make(&b, 2, "acme", 2000);
    put(f, &a);
    assert_false(shard__full(f->s));

    full_vfs.full = true;
    assert_int_equal(shard__begin(f->s), 0);
    assert_int_equal(shard__put_local(f->s, &b), 0);
    assert_int_equal(shard__commit(f->s), AP_ENOSPACE);
    assert_true(shard__full(f->s));
    assert_int_equal(shard__full_errors(f->s), 1);
    assert_non_null(strstr(shard__errmsg(f->s), "full"));
    assert_int_equal(shard__get(f->s, b.id, &got), AP_ENOTFOUND);
    struct ap_instrec *list;
    size_t n;
    assert_int_equal(shard__list(f->s, NULL, true, &list, &n), 0);
    assert_int_equal(n, 1);
    shard__free_list(list, n);
    assert_int_equal(shard__set_meta(f->s, "region_applied", 7), AP_ENOSPACE);
    assert_int_equal(shard__probe(f->s), AP_ENOSPACE);
    assert_true(shard__full(f->s));
    assert_int_equal(shard__full_errors(f->s), 3);

    full_vfs.full = false;
    assert_int_equal(shard__probe(f->s), 0);
    assert_false(shard__full(f->s));
    put(f, &b);
    shard__close(f->s);
    full_vfs_remove();
    assert_int_equal(shard__open(&f->s, f->path, errmsg), 0);
    assert_int_equal(shard__get(f->s, a.id, &got), 0);
    ap_instrec_clear(&got);
    assert_int_equal(shard__get(f->s, b.id, &got), 0);
    ap_instrec_clear(&got);
    assert_int_equal(shard__meta(f->s, "region_applied"), 0);
    ap_instrec_clear(&a);
    ap_instrec_clear(&b);
    /* The WAL and its index outlive a clean close: a restart on a full disk can read. */
    shard__close(f->s);
    char p[128];
    snprintf(p, sizeof p, "%s-wal", f->path);
    assert_int_equal(access(p, F_OK), 0);
    snprintf(p, sizeof p, "%s-shm", f->path);
    assert_int_equal(access(p, F_OK), 0);
    assert_int_equal(shard__open(&f->s, f->path, errmsg), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_local_writes_survive_reopen, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delta_pages_and_no_echo, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rights_and_usage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_full_disk, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
