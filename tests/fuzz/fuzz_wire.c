/* Fuzz target for wire: input through ap_wire_reader in input-chosen chunks, and ap_wire_decode. */
#include "ap/base.h"
#include "ap/err.h"
#include "ap/mp.h"
#include "ap/wire.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A decoded message must encode again and decode to the same thing. */
static void check_round_trip(const struct ap_wire_msg *m)
{
    uint8_t *frame = NULL;
    size_t len = 0;
    if (ap_wire_encode(m, &frame, &len) != 0) {
        /* Only a frame at the size limit can fail to re-encode (a shorter integer
         * encoding in the input); nothing else may. */
        if (m->body_len < AP_WIRE_MAX_FRAME - 128) {
            abort();
        }
        return;
    }
    struct ap_wire_msg d;
    if (ap_wire_decode(frame + AP_WIRE_PREFIX, len - AP_WIRE_PREFIX, &d, NULL) != 0 ||
        d.version != m->version || d.type != m->type || strcmp(d.sender, m->sender) != 0 ||
        d.hlc != m->hlc || d.hlc_node != m->hlc_node || d.body_len != m->body_len ||
        (d.body_len > 0 && memcmp(d.body, m->body, d.body_len) != 0)) {
        abort();
    }
    ap_free(frame);
}

/* Decode a payload; when it is a message, also walk its body as a decoder would. */
static void decode_payload(const uint8_t *p, size_t n)
{
    struct ap_wire_msg m;
    char errmsg[AP_ERRMSG_SIZE];
    if (ap_wire_decode(p, n, &m, errmsg) != 0) {
        if (errmsg[0] == '\0') {
            abort(); /* every refusal says why */
        }
        return;
    }
    check_round_trip(&m);
    msgpack_unpacked u;
    if (ap_mp_unpack(m.body, m.body_len, AP_WIRE_MAX_FRAME, &u, errmsg) == 0) {
        char s[32];
        uint64_t v = 0;
        const msgpack_object *a = NULL;
        ap_mp_get_str(&u.data, "id", s, sizeof s, false, errmsg);
        ap_mp_get_u64(&u.data, "n", &v, 1000, false, errmsg);
        if (ap_mp_get_array(&u.data, "items", &a, 64, false, errmsg) == 0 && a != NULL) {
            for (uint32_t i = 0; i < a->via.array.size; i++) {
                ap_mp_as_str(&a->via.array.ptr[i], "items[]", s, sizeof s, errmsg);
            }
        }
        msgpack_unpacked_destroy(&u);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* The whole input as one frame payload. */
    decode_payload(data, size);

    /* The whole input as a byte stream, split into chunks whose sizes come from the
     * input itself, with a small or the default frame limit. */
    if (size == 0) {
        return 0;
    }
    struct ap_wire_reader *r = NULL;
    if (ap_wire_reader_new((data[0] & 1) != 0 ? 512 : 0, &r) != 0) {
        return 0;
    }
    size_t off = 0;
    size_t step_seed = data[0];
    while (off < size) {
        size_t step = 1 + (step_seed % 61);
        step_seed = step_seed * 31 + data[off];
        if (step > size - off) {
            step = size - off;
        }
        int rc = ap_wire_reader_feed(r, data + off, step);
        off += step;
        const uint8_t *p;
        size_t n;
        while (rc == 0 && (rc = ap_wire_reader_next(r, &p, &n)) == 1) {
            decode_payload(p, n);
            rc = 0;
        }
        if (rc < 0) {
            /* A broken stream stays broken. */
            if (ap_wire_reader_feed(r, data, 1) != rc) {
                abort();
            }
            break;
        }
    }
    ap_wire_reader_free(r);
    return 0;
}
