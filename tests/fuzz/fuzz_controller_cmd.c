/* Fuzz the controller's catalog commands (controller/catalog.c): arbitrary bytes applied as one
 * command, then as a sequence of commands, each input undone afterwards; and the reads a region
 * and the API make over whatever the input wrote. */
#include "ap/base.h"
#include "ap/log.h"
#include "ap/store.h"
/* regional/ also has a catalog.h, earlier on the include path: name the controller's. */
#include "../../controller/catalog.h"

#include <stdlib.h>
#include <string.h>

/* Splits an input into several commands: 0xc1 is never valid msgpack, so no command holds it. */
#define SEP_BYTE  0xc1
#define MAX_PARTS 16

static struct ap_store *st;
static uint64_t next_index = 1;

static void apply_one(const uint8_t *cmd, size_t len)
{
    struct ap_rsm_result res;
    memset(&res, 0, sizeof res);
    if (ap_store_savepoint(st, "cmd") != 0) {
        abort();
    }
    ccat_apply(NULL, st, next_index++, cmd, len, &res);
    if (res.status > 0) {
        abort(); /* statuses are 0 or negative AP_E* codes */
    }
    if (res.status != 0) {
        ap_store_rollback_to(st, "cmd");
    } else {
        ap_store_release(st, "cmd");
    }
    json_decref(res.value);
}

/* A base state, committed once, so commands also meet existing rows. */
static void seed_state(void)
{
    static const char *const regions[] = {"r1", "r2"};
    static const char *const nodes[] = {"127.0.0.1:7001", "127.0.0.2:7001"};
    const struct ccat_amounts quota = {{10, 4000, -1}};
    const struct ccat_amounts allot[] = {{{5, 2000, -1}}, {{5, 2000, -1}}};
    uint8_t pk[32], sk[64];
    uint8_t *cmd[7];
    size_t len[7];
    memset(pk, 1, sizeof pk);
    memset(sk, 2, sizeof sk);
    if (ccat_encode_key_init(pk, sk, &cmd[0], &len[0]) != 0 ||
        ccat_encode_region_hello("r1", nodes, 2, 1, &cmd[1], &len[1]) != 0 ||
        ccat_encode_region_hello("r2", nodes, 1, 1, &cmd[2], &len[2]) != 0 ||
        ccat_encode_tenant_put("acme", true, &quota, regions, allot, 2, 1, &cmd[3], &len[3]) != 0 ||
        ccat_encode_user_create("alice", "acme", "h",
                                "{\"role\":\"admin\",\"tenant\":\"acme\",\"scope\":\"*\"}", 1,
                                &cmd[4], &len[4]) != 0 ||
        ccat_encode_user_create("root", "", "h", NULL, 1, &cmd[5], &len[5]) != 0 ||
        ccat_encode_user_delete("root", &cmd[6], &len[6]) != 0) {
        abort();
    }
    if (ap_store_begin(st) != 0) {
        abort();
    }
    for (size_t i = 0; i < AP_ARRAY_LEN(cmd); i++) {
        apply_one(cmd[i], len[i]);
        ap_free(cmd[i]);
    }
    if (ap_store_commit(st) != 0) {
        abort();
    }
}

static void setup(void)
{
    char errmsg[AP_ERRMSG_SIZE];
    ap_log_init("fuzz", AP_LOG_OFF, NULL);
    if (ap_store_open(":memory:", AP_STORE_SYNC_OFF, &st, errmsg) != 0 ||
        ap_store_migrate(st, ccat_migrations, ccat_n_migrations) != 0) {
        abort();
    }
    seed_state();
}

/* What the API and the region link read, over whatever the input left. */
static void read_back(void)
{
    json_t *j = NULL;
    if (ccat_tenants_json(st, &j) == 0) {
        json_decref(j);
    }
    if (ccat_users_json(st, NULL, &j) == 0) {
        json_decref(j);
    }
    if (ccat_regions_json(st, &j) == 0) {
        json_decref(j);
    }
    uint8_t *buf;
    size_t len;
    if (ccat_region_state(st, "r1", next_index, &buf, &len) == 0) {
        ap_free(buf);
    }
    char hash[160], tenant[64];
    uint64_t gen;
    if (ccat_user_auth(st, "alice", hash, sizeof hash, tenant, sizeof tenant, &gen, &j) == 0) {
        json_decref(j);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (st == NULL) {
        setup();
    }
    if (ap_store_savepoint(st, "input") != 0) {
        abort();
    }
    /* 1. The bytes as one command. */
    apply_one(data, size);

    /* 2. The bytes as commands separated by SEP_BYTE, applied in order on the same state. */
    const uint8_t *sep = memchr(data, SEP_BYTE, size);
    if (sep != NULL) {
        const uint8_t *p = data, *end = data + size;
        for (int parts = 0; parts < MAX_PARTS && p <= end; parts++) {
            const uint8_t *q = memchr(p, SEP_BYTE, (size_t)(end - p));
            size_t n = (size_t)((q != NULL ? q : end) - p);
            apply_one(p, n);
            if (q == NULL) {
                break;
            }
            p = q + 1;
        }
    }
    read_back();
    ap_store_rollback_to(st, "input");
    return 0;
}
