/* Fuzz the decoders of replicated bytes: a raft log entry (rsm_fsm) and a catalog command. */
#include "ap/base.h"
#include "ap/log.h"
#include "ap/rsm_fsm.h"
#include "ap/store.h"
#include "catalog.h"

#include <raft.h>
#include <stdlib.h>
#include <string.h>

static struct ap_store *st;
static struct ap_rsm_fsm *fsm;

static void setup(void)
{
    char errmsg[AP_ERRMSG_SIZE];
    ap_log_init("fuzz", AP_LOG_OFF, NULL);
    if (ap_store_open(":memory:", AP_STORE_SYNC_OFF, &st, errmsg) != 0 ||
        ap_store_migrate(st, catalog__migrations, catalog__n_migrations) != 0 ||
        ap_rsm_fsm_new(&fsm, st, catalog__apply, NULL, errmsg) != 0) {
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (st == NULL) {
        setup();
    }
    /* 1. The bytes as one catalog command, applied inside a savepoint. */
    struct ap_rsm_result res;
    memset(&res, 0, sizeof res);
    res.want_value = size % 2 == 0; /* Both paths: leader (renders results) and follower. */
    if (ap_store_savepoint(st, "fuzz") != 0) {
        abort();
    }
    catalog__apply(NULL, st, 1, data, size, &res);
    json_decref(res.value);
    ap_store_rollback_to(st, "fuzz");

    /* 2. The bytes as a whole raft entry, through the state machine. */
    struct raft_fsm *rf = ap_rsm_fsm_raft(fsm);
    struct raft_buffer buf = {raft_malloc(size + 1), size};
    if (buf.base == NULL) {
        return 0;
    }
    memcpy(buf.base, data, size);
    void *result = NULL;
    rf->apply(rf, &buf, &result);
    raft_free(buf.base);

    /* 3. The bytes wrapped as a valid entry carrying them as one command. */
    const uint8_t *cmds[1] = {data};
    size_t lens[1] = {size};
    if (size > 0 && ap_rsm_entry_encode(cmds, lens, 1, NULL, 0, &buf) == 0) {
        rf->apply(rf, &buf, &result);
        raft_free(buf.base);
    }
    return 0;
}
