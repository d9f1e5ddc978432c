/* wire: the versioned envelope of every message between tiers, and its length-prefixed framing. */
#include "ap/wire.h"

#include "ap/base.h"
#include "ap/err.h"
#include "ap/mp.h"

#include <string.h>

/* Room a reader keeps for socket reads; it shrinks back to this after a big frame. */
#define READER_CHUNK (16u * 1024u)

static const char *const type_names[] = {
    [AP_WIRE_HELLO] = "hello",
    [AP_WIRE_DELTA] = "delta",
    [AP_WIRE_ACK] = "ack",
    [AP_WIRE_HEARTBEAT] = "heartbeat",
    [AP_WIRE_RIGHTS_REQUEST] = "rights_request",
    [AP_WIRE_RIGHTS_GRANT] = "rights_grant",
    [AP_WIRE_REDIRECT] = "redirect",
    [AP_WIRE_ERROR] = "error",
    [AP_WIRE_STATE] = "state",
};

const char *ap_wire_type_name(unsigned type)
{
    if (type < AP_ARRAY_LEN(type_names) && type_names[type] != NULL) {
        return type_names[type];
    }
    return "unknown";
}

int ap_wire_encode(const struct ap_wire_msg *m, uint8_t **out, size_t *len)
{
    if (m->version == 0 || memchr(m->sender, '\0', sizeof m->sender) == NULL) {
        return AP_EINVAL;
    }
    if (m->body_len > AP_WIRE_MAX_FRAME) {
        return AP_ETOOBIG;
    }
    static const uint8_t no_prefix[AP_WIRE_PREFIX] = {0};
    struct ap_mp_writer w;
    ap_mp_writer_init(&w);
    ap_mp_write_raw(&w, no_prefix, sizeof no_prefix);
    ap_mp_write_map(&w, 6);
    ap_mp_write_str(&w, "v");
    ap_mp_write_uint(&w, m->version);
    ap_mp_write_str(&w, "t");
    ap_mp_write_uint(&w, m->type);
    ap_mp_write_str(&w, "s");
    ap_mp_write_str(&w, m->sender);
    ap_mp_write_str(&w, "h");
    ap_mp_write_uint(&w, m->hlc);
    ap_mp_write_str(&w, "n");
    ap_mp_write_uint(&w, m->hlc_node);
    ap_mp_write_str(&w, "b");
    ap_mp_write_bin(&w, m->body, m->body_len);

    uint8_t *frame = NULL;
    size_t n = 0;
    int rc = ap_mp_writer_finish(&w, &frame, &n);
    if (rc != 0) {
        return rc;
    }
    size_t body = n - AP_WIRE_PREFIX;
    if (body > AP_WIRE_MAX_FRAME) {
        ap_free(frame);
        return AP_ETOOBIG;
    }
    frame[0] = (uint8_t)(body >> 24);
    frame[1] = (uint8_t)(body >> 16);
    frame[2] = (uint8_t)(body >> 8);
    frame[3] = (uint8_t)body;
    *out = frame;
    *len = n;
    return 0;
}

int ap_wire_decode(const uint8_t *payload, size_t len, struct ap_wire_msg *m, char *errmsg)
{
    msgpack_unpacked u;
    int rc = ap_mp_unpack(payload, len, AP_WIRE_MAX_FRAME, &u, errmsg);
    if (rc != 0) {
        return rc;
    }
    const msgpack_object *root = &u.data;
    uint64_t version = 0;
    uint64_t type = 0;
    uint64_t node = 0;
    struct ap_wire_msg d;
    memset(&d, 0, sizeof d);

    if (root->type != MSGPACK_OBJECT_MAP) {
        if (errmsg != NULL) {
            ap_errmsg_set(errmsg, "frame is not a map");
        }
        rc = AP_EPROTO;
        goto out;
    }
    if ((rc = ap_mp_get_u64(root, "v", &version, UINT16_MAX, true, errmsg)) != 0 ||
        (rc = ap_mp_get_u64(root, "t", &type, UINT16_MAX, true, errmsg)) != 0 ||
        (rc = ap_mp_get_str(root, "s", d.sender, sizeof d.sender, true, errmsg)) != 0 ||
        (rc = ap_mp_get_u64(root, "h", &d.hlc, UINT64_MAX, true, errmsg)) != 0 ||
        (rc = ap_mp_get_u64(root, "n", &node, UINT32_MAX, true, errmsg)) != 0 ||
        (rc = ap_mp_get_bin(root, "b", &d.body, &d.body_len, AP_WIRE_MAX_FRAME, true, errmsg)) !=
            0) {
        goto out;
    }
    if (version == 0) {
        if (errmsg != NULL) {
            ap_errmsg_set(errmsg, "field 'v': version 0 is invalid");
        }
        rc = AP_EPROTO;
        goto out;
    }
    d.version = (uint16_t)version;
    d.type = (uint16_t)type;
    d.hlc_node = (uint32_t)node;
    /* The bin points into payload (msgpack-c references its input), so it outlives u. */
    *m = d;
out:
    msgpack_unpacked_destroy(&u);
    return rc;
}

/* ---- reader ---------------------------------------------------------------------------- */

struct ap_wire_reader {
    uint8_t *buf;
    size_t cap;
    size_t start; /* first byte not yet returned as a frame */
    size_t end;   /* one past the last byte received */
    size_t max_frame;
    int err; /* sticky: once the stream is broken it stays broken */
    char errmsg[AP_ERRMSG_SIZE];
};

int ap_wire_reader_new(size_t max_frame, struct ap_wire_reader **out)
{
    struct ap_wire_reader *r = ap_calloc(1, sizeof *r);
    if (r == NULL) {
        return AP_ENOMEM;
    }
    r->max_frame = max_frame == 0 || max_frame > AP_WIRE_MAX_FRAME ? AP_WIRE_MAX_FRAME : max_frame;
    *out = r;
    return 0;
}

void ap_wire_reader_free(struct ap_wire_reader *r)
{
    if (r == NULL) {
        return;
    }
    ap_free(r->buf);
    ap_free(r);
}

static uint32_t prefix_at(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* Check the length prefix of the next frame as soon as its 4 bytes are in. */
static int reader_check(struct ap_wire_reader *r)
{
    if (r->err != 0 || r->end - r->start < AP_WIRE_PREFIX) {
        return r->err;
    }
    uint32_t n = prefix_at(r->buf + r->start);
    if (n == 0) {
        r->err = AP_EPROTO;
        ap_errmsg_set(r->errmsg, "frame length 0");
    } else if (n > r->max_frame) {
        r->err = AP_ETOOBIG;
        ap_errmsg_set(r->errmsg, "frame length %u above the limit of %zu", n, r->max_frame);
    }
    return r->err;
}

int ap_wire_reader_prepare(struct ap_wire_reader *r, size_t want, uint8_t **buf, size_t *len)
{
    int rc = reader_check(r);
    if (rc != 0) {
        return rc;
    }
    size_t pending = r->end - r->start;
    if (pending == 0 && r->cap > READER_CHUNK) {
        /* A big frame is done: give its memory back. */
        ap_free(r->buf);
        r->buf = NULL;
        r->cap = 0;
    }
    if (r->start > 0) {
        if (pending > 0) {
            memmove(r->buf, r->buf + r->start, pending);
        }
        r->start = 0;
        r->end = pending;
    }
    /* Room for what the caller wants, at least a read chunk, and at most the rest of the
     * current frame when its length is known, so a hostile prefix cannot grow us past
     * max_frame. */
    size_t need = want < READER_CHUNK ? READER_CHUNK : want;
    if (pending >= AP_WIRE_PREFIX) {
        size_t frame = AP_WIRE_PREFIX + prefix_at(r->buf);
        if (frame > pending && frame - pending > need) {
            need = frame - pending;
        }
    }
    if (need > AP_WIRE_PREFIX + r->max_frame) {
        need = AP_WIRE_PREFIX + r->max_frame;
    }
    if (r->cap - r->end < need) {
        size_t cap = r->end + need;
        uint8_t *nb = ap_realloc(r->buf, cap);
        if (nb == NULL) {
            return AP_ENOMEM;
        }
        r->buf = nb;
        r->cap = cap;
    }
    *buf = r->buf + r->end;
    *len = r->cap - r->end;
    return 0;
}

int ap_wire_reader_commit(struct ap_wire_reader *r, size_t n)
{
    if (r->err != 0) {
        return r->err;
    }
    AP_ASSERT(n <= r->cap - r->end);
    r->end += n;
    return reader_check(r);
}

int ap_wire_reader_feed(struct ap_wire_reader *r, const uint8_t *data, size_t len)
{
    while (len > 0) {
        uint8_t *room;
        size_t avail;
        int rc = ap_wire_reader_prepare(r, len, &room, &avail);
        if (rc != 0) {
            return rc;
        }
        size_t n = len < avail ? len : avail;
        memcpy(room, data, n);
        rc = ap_wire_reader_commit(r, n);
        if (rc != 0) {
            return rc;
        }
        data += n;
        len -= n;
    }
    return r->err;
}

int ap_wire_reader_next(struct ap_wire_reader *r, const uint8_t **payload, size_t *len)
{
    int rc = reader_check(r);
    if (rc != 0) {
        return rc;
    }
    size_t pending = r->end - r->start;
    if (pending < AP_WIRE_PREFIX) {
        return 0;
    }
    uint32_t n = prefix_at(r->buf + r->start);
    if (pending - AP_WIRE_PREFIX < n) {
        return 0;
    }
    *payload = r->buf + r->start + AP_WIRE_PREFIX;
    *len = n;
    r->start += AP_WIRE_PREFIX + n;
    return 1;
}

size_t ap_wire_reader_pending(const struct ap_wire_reader *r)
{
    return r->end - r->start;
}

const char *ap_wire_reader_errmsg(const struct ap_wire_reader *r)
{
    return r->errmsg;
}
