/* Fuzz target for ap_store_restore: hostile snapshot images must never crash or damage a store. */
#include "ap/base.h"
#include "ap/err.h"
#include "ap/log.h"
#include "ap/store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/*
 * A fuzz harness is one process with one store, so its state lives in a
 * file-scope struct (the no-mutable-globals rule is for the daemons).
 * Input layout: the first byte picks a mode.
 *   even: the remaining bytes are the image, as is.
 *   odd:  the remaining bytes are 3-byte patches (offset high, offset low,
 *         value) applied to a valid image, so the fuzzer reaches deep checks
 *         without having to invent a database from nothing.
 */
static struct {
    char dir[128];
    char path[160];
    struct ap_store *store;
    uint8_t *base;
    size_t base_len;
    unsigned char base_hash[32];
} fz;

static const char *const tables[] = {"site", "inst", NULL};

static void die(const char *what)
{
    fprintf(stderr, "fuzz_store_restore: %s: %s\n", what,
            fz.store != NULL ? ap_store_errmsg(fz.store) : "");
    abort();
}

static void cleanup(void)
{
    static const char *const suffixes[] = {"", "-wal", "-shm", "-journal"};
    ap_store_close(fz.store);
    fz.store = NULL;
    ap_free(fz.base);
    for (size_t i = 0; i < AP_ARRAY_LEN(suffixes); i++) {
        char p[200];
        snprintf(p, sizeof p, "%s%s", fz.path, suffixes[i]);
        unlink(p);
    }
    rmdir(fz.dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char errmsg[AP_ERRMSG_SIZE];
    ap_log_init("fuzz_store_restore", AP_LOG_ERROR, NULL);
    const char *tmp = getenv("TMPDIR");
    snprintf(fz.dir, sizeof fz.dir, "%s/ap-fuzz-store.XXXXXX", tmp != NULL ? tmp : "/tmp");
    if (mkdtemp(fz.dir) == NULL) {
        die("mkdtemp");
    }
    snprintf(fz.path, sizeof fz.path, "%s/live.db", fz.dir);
    if (ap_store_open(fz.path, AP_STORE_SYNC_OFF, &fz.store, errmsg) != 0) {
        fprintf(stderr, "%s\n", errmsg);
        abort();
    }
    atexit(cleanup);
    static const struct ap_store_migration steps[] = {
        {1, "CREATE TABLE site (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)"},
        {2, "CREATE TABLE inst (id TEXT PRIMARY KEY, site INTEGER NOT NULL REFERENCES site(id),"
            " spec BLOB) WITHOUT ROWID; CREATE INDEX inst_site ON inst (site)"},
    };
    if (ap_store_migrate(fz.store, steps, AP_ARRAY_LEN(steps)) != 0 ||
        ap_store_exec(fz.store,
                      "INSERT INTO site (name) VALUES ('a'), ('b'), ('c');"
                      " INSERT INTO inst SELECT 'i' || id, id, zeroblob(300 * id) FROM site;"
                      " INSERT INTO inst SELECT 'j' || id, id, randomblob(900) FROM site") != 0 ||
        ap_store_serialize(fz.store, &fz.base, &fz.base_len) != 0 ||
        ap_store_content_hash(fz.store, tables, fz.base_hash) != 0) {
        die("build base image");
    }
    return 0;
}

/* Touch a store that accepted an image: it must answer and take (and undo) a write. */
static void exercise(void)
{
    sqlite3_stmt *st;
    if (ap_store_prepare(fz.store, "SELECT name FROM sqlite_master WHERE type = 'table'", &st) ==
        0) {
        for (int i = 0; i < 16 && ap_store_step(fz.store, st) == AP_STORE_ROW; i++) {
            const char *name = (const char *)sqlite3_column_text(st, 0);
            if (name != NULL && strncmp(name, "sqlite_", 7) != 0) {
                char *copy = ap_strdup(name);
                const char *one[] = {copy, NULL};
                unsigned char h[32];
                /* Corrupt index contents may still fail here; that is an error, not a crash. */
                if (copy != NULL) {
                    ap_store_content_hash(fz.store, one, h);
                }
                ap_free(copy);
            }
        }
        ap_store_reset(st);
    }
    if (ap_store_begin(fz.store) != 0) {
        die("begin after restore");
    }
    ap_store_exec(fz.store, "CREATE TABLE fuzz_probe (x); INSERT INTO fuzz_probe VALUES (1)");
    if (ap_store_rollback(fz.store) != 0) {
        die("rollback after restore");
    }
    /* Round trip: what was restored serializes into an image that restores. */
    uint8_t *img = NULL;
    size_t len = 0;
    if (ap_store_serialize(fz.store, &img, &len) != 0 ||
        ap_store_restore(fz.store, img, len) != 0) {
        die("round trip of a restored image");
    }
    ap_free(img);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *img = NULL;
    size_t len = 0;
    if (size > 65536 + 1) {
        return 0;
    }
    if (size > 0 && (data[0] & 1) != 0) {
        img = ap_malloc(fz.base_len);
        if (img == NULL) {
            return 0;
        }
        memcpy(img, fz.base, fz.base_len);
        len = fz.base_len;
        for (size_t i = 1; i + 2 < size; i += 3) {
            size_t off = (((size_t)data[i] << 8) | data[i + 1]) % len;
            img[off] = data[i + 2];
        }
    } else if (size > 1) {
        img = ap_malloc(size - 1);
        if (img == NULL) {
            return 0;
        }
        memcpy(img, data + 1, size - 1);
        len = size - 1;
    }

    int rc = ap_store_restore(fz.store, img, len);
    ap_free(img);
    if (rc == 0) {
        exercise();
        /* Back to the known content, so every input starts from the same store. */
        if (ap_store_restore(fz.store, fz.base, fz.base_len) != 0) {
            die("restore of the base image");
        }
        return 0;
    }
    if (rc != AP_ECORRUPT) {
        die("unexpected error from restore");
    }
    /* A refused image leaves the store exactly as it was. */
    unsigned char h[32];
    if (ap_store_content_hash(fz.store, tables, h) != 0 || memcmp(h, fz.base_hash, 32) != 0) {
        die("store changed by a refused image");
    }
    return 0;
}
