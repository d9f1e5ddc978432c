/* wire: the versioned envelope of every message between tiers, and its length-prefixed framing. */
#ifndef AP_WIRE_H
#define AP_WIRE_H

#include <stddef.h>
#include <stdint.h>

/** Protocol version this build speaks; decoders accept any version >= 1. */
#define AP_WIRE_VERSION 1

/** Hard maximum body of one frame (the bytes after the length prefix). */
#define AP_WIRE_MAX_FRAME (4u << 20)

/** Size of the big-endian length prefix of a frame. */
#define AP_WIRE_PREFIX 4

/** Size of ap_wire_msg.sender, terminator included. */
#define AP_WIRE_SENDER_SIZE 64

/** Message types. A newer peer may send others: they decode fine and callers skip them. */
enum ap_wire_type {
    AP_WIRE_HELLO = 1,
    AP_WIRE_DELTA,
    AP_WIRE_ACK,
    AP_WIRE_HEARTBEAT,
    AP_WIRE_RIGHTS_REQUEST,
    AP_WIRE_RIGHTS_GRANT,
    AP_WIRE_REDIRECT,
    AP_WIRE_ERROR,
    AP_WIRE_STATE, /* Identity state from the parent tier: signing key, users, allotments. */
};

/**
 * One message. Encoded as the msgpack map
 * {"v":u16,"t":u16,"s":str,"h":u64,"n":u32,"b":bin}; unknown keys are ignored
 * so newer peers can add fields.
 */
struct ap_wire_msg {
    uint16_t version;                 /* sender's protocol version */
    uint16_t type;                    /* enum ap_wire_type; unknown types decode fine */
    char sender[AP_WIRE_SENDER_SIZE]; /* e.g. "r1-s1" or "r1/2" */
    uint64_t hlc;                     /* packed HLC stamp: physical_ms<<16 | logical */
    uint32_t hlc_node;                /* node id of the stamp (tie-break) */
    const uint8_t *body;              /* msgpack bytes of the type's body; not owned */
    size_t body_len;
};

/**
 * Encode m as one whole frame, length prefix included, into *out (the caller
 * frees it with ap_free()) and its size into *len. Returns 0; AP_EINVAL when
 * m->version is 0 or m->sender is not terminated; AP_ETOOBIG when the frame
 * body would exceed AP_WIRE_MAX_FRAME; AP_ENOMEM.
 */
int ap_wire_encode(const struct ap_wire_msg *m, uint8_t **out, size_t *len);

/**
 * Decode one frame body (payload = the len bytes after the length prefix)
 * into *m. m->body points into payload, which must outlive its use. Returns 0;
 * AP_ETOOBIG when len > AP_WIRE_MAX_FRAME; AP_EPROTO for anything malformed
 * (not msgpack, not a map, trailing bytes, a field missing, of the wrong type
 * or out of range, version 0, sender of 64 bytes or more), with the reason in
 * errmsg (AP_ERRMSG_SIZE bytes, may be NULL); AP_ENOMEM. Never asserts on input.
 */
int ap_wire_decode(const uint8_t *payload, size_t len, struct ap_wire_msg *m, char *errmsg);

/** Lower-case name of a message type for logs ("hello", "rights_grant"), "unknown" otherwise. */
const char *ap_wire_type_name(unsigned type);

/**
 * Incremental frame splitter: bytes go in as they arrive from a socket, in
 * chunks of any size; whole frame payloads come out. Opaque; one per link.
 */
struct ap_wire_reader;

/**
 * Create a reader that accepts frames of at most max_frame bytes (0 or more
 * than AP_WIRE_MAX_FRAME means AP_WIRE_MAX_FRAME). The caller frees it with
 * ap_wire_reader_free(). Returns 0 or AP_ENOMEM.
 */
int ap_wire_reader_new(size_t max_frame, struct ap_wire_reader **out);

/** Free a reader and its buffer; NULL is fine. */
void ap_wire_reader_free(struct ap_wire_reader *r);

/**
 * Copy len bytes in. Returns 0; AP_ENOMEM; or, once a length prefix is seen
 * that is 0 (AP_EPROTO) or above the limit (AP_ETOOBIG), that error, and the
 * reader refuses all further input with it (see ap_wire_reader_errmsg()).
 */
int ap_wire_reader_feed(struct ap_wire_reader *r, const uint8_t *data, size_t len);

/**
 * Zero-copy alternative to feed for socket reads: get room for at least
 * min(want, some KiB) bytes at *buf (*len bytes available), read into it, then
 * ap_wire_reader_commit() the count actually read. Returns 0, AP_ENOMEM, or
 * the reader's sticky error.
 */
int ap_wire_reader_prepare(struct ap_wire_reader *r, size_t want, uint8_t **buf, size_t *len);

/**
 * Add n bytes written at the buffer of the last ap_wire_reader_prepare()
 * (n <= the length it gave). Returns as ap_wire_reader_feed().
 */
int ap_wire_reader_commit(struct ap_wire_reader *r, size_t n);

/**
 * Take the next whole frame: returns 1 and sets *payload and *len (the bytes after
 * the length prefix, valid until the next feed/prepare/free), 0 when more
 * bytes are needed, or the sticky error (AP_EPROTO, AP_ETOOBIG).
 */
int ap_wire_reader_next(struct ap_wire_reader *r, const uint8_t **payload, size_t *len);

/** Bytes buffered but not yet returned as frames. */
size_t ap_wire_reader_pending(const struct ap_wire_reader *r);

/** Why the reader failed ("frame length 5000000 above the limit of 4194304"), "" while healthy. */
const char *ap_wire_reader_errmsg(const struct ap_wire_reader *r);

#endif
