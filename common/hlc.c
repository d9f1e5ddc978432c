/* hlc: hybrid logical clock (48-bit physical ms + 16-bit logical, node id as tie-break). */
#include "ap/hlc.h"

#include "ap/base.h"
#include "ap/err.h"

#include <inttypes.h>
#include <stdio.h>
#include <time.h>

struct ap_hlc {
    struct ap_hlc_ts last; /* highest stamp issued or observed; node is ours */
    uint64_t max_offset_ms;
    ap_hlc_wall_cb wall;
    void *wall_data;
    char errmsg[AP_ERRMSG_SIZE];
};

int ap_hlc_new(struct ap_hlc **out, uint32_t node, uint64_t max_offset_ms, ap_hlc_wall_cb wall,
               void *data)
{
    if (out == NULL || wall == NULL) {
        return AP_EINVAL;
    }
    struct ap_hlc *c = ap_calloc(1, sizeof *c);
    if (c == NULL) {
        return AP_ENOMEM;
    }
    c->last.node = node;
    c->max_offset_ms = max_offset_ms;
    c->wall = wall;
    c->wall_data = data;
    *out = c;
    return 0;
}

void ap_hlc_free(struct ap_hlc *c)
{
    ap_free(c);
}

uint64_t ap_hlc_wall_realtime(void *data)
{
    AP_UNUSED(data);
    struct timespec now;
    if (clock_gettime(CLOCK_REALTIME, &now) != 0 || now.tv_sec < 0) {
        /* Cannot happen for CLOCK_REALTIME on Linux; 0 keeps the HLC monotonic anyway. */
        return 0;
    }
    return (uint64_t)now.tv_sec * 1000u + (uint64_t)now.tv_nsec / 1000000u;
}

/* The wall clock, cut to what a stamp can hold. */
static uint64_t read_wall(const struct ap_hlc *c)
{
    uint64_t w = c->wall(c->wall_data);
    return w > AP_HLC_PHYSICAL_MAX ? AP_HLC_PHYSICAL_MAX : w;
}

/*
 * Set the clock to (physical, logical + 1): the smallest stamp above
 * (physical, logical). A full logical counter spills into the physical
 * part, which keeps the stamp strictly greater; it saturates at the top.
 */
static void set_after(struct ap_hlc *c, uint64_t physical, uint16_t logical)
{
    if (logical < AP_HLC_LOGICAL_MAX) {
        c->last.physical_ms = physical;
        c->last.logical = (uint16_t)(logical + 1);
    } else if (physical < AP_HLC_PHYSICAL_MAX) {
        c->last.physical_ms = physical + 1;
        c->last.logical = 0;
    } else {
        c->last.physical_ms = AP_HLC_PHYSICAL_MAX;
        c->last.logical = AP_HLC_LOGICAL_MAX;
    }
}

struct ap_hlc_ts ap_hlc_now(struct ap_hlc *c)
{
    uint64_t wall = read_wall(c);
    if (wall > c->last.physical_ms) {
        c->last.physical_ms = wall;
        c->last.logical = 0;
    } else {
        /* The wall clock stalled or went back: count on from the last stamp. */
        set_after(c, c->last.physical_ms, c->last.logical);
    }
    return c->last;
}

int ap_hlc_update(struct ap_hlc *c, struct ap_hlc_ts remote, struct ap_hlc_ts *out)
{
    uint64_t wall = read_wall(c);
    if (remote.physical_ms > AP_HLC_PHYSICAL_MAX) {
        ap_errmsg_set(c->errmsg,
                      "hlc: remote stamp of node %" PRIu32 " has physical %" PRIu64
                      " ms, beyond the 48-bit range",
                      remote.node, remote.physical_ms);
        return AP_EINVAL;
    }
    if (remote.physical_ms > wall && remote.physical_ms - wall > c->max_offset_ms) {
        ap_errmsg_set(c->errmsg,
                      "hlc: remote clock of node %" PRIu32 " is %" PRIu64
                      " ms ahead of ours (max offset %" PRIu64 " ms)",
                      remote.node, remote.physical_ms - wall, c->max_offset_ms);
        return AP_EINVAL;
    }
    /*
     * Kulkarni et al., "Logical Physical Clocks": the new physical part is the
     * max of ours, the remote's and the wall; the logical part counts on from
     * whichever of ours and the remote's carried that max (the larger if both).
     */
    uint64_t local_p = c->last.physical_ms;
    if (wall > local_p && wall > remote.physical_ms) {
        c->last.physical_ms = wall;
        c->last.logical = 0;
    } else if (local_p == remote.physical_ms) {
        uint16_t l = c->last.logical > remote.logical ? c->last.logical : remote.logical;
        set_after(c, local_p, l);
    } else if (local_p > remote.physical_ms) {
        set_after(c, local_p, c->last.logical);
    } else {
        set_after(c, remote.physical_ms, remote.logical);
    }
    if (out != NULL) {
        *out = c->last;
    }
    return 0;
}

void ap_hlc_observe(struct ap_hlc *c, struct ap_hlc_ts seen)
{
    if (seen.physical_ms > AP_HLC_PHYSICAL_MAX) {
        seen.physical_ms = AP_HLC_PHYSICAL_MAX;
    }
    if (seen.physical_ms > c->last.physical_ms ||
        (seen.physical_ms == c->last.physical_ms && seen.logical > c->last.logical)) {
        c->last.physical_ms = seen.physical_ms;
        c->last.logical = seen.logical;
    }
}

struct ap_hlc_ts ap_hlc_last(const struct ap_hlc *c)
{
    return c->last;
}

uint32_t ap_hlc_node(const struct ap_hlc *c)
{
    return c->last.node;
}

const char *ap_hlc_errmsg(const struct ap_hlc *c)
{
    return c->errmsg;
}

int ap_hlc_compare(struct ap_hlc_ts a, struct ap_hlc_ts b)
{
    if (a.physical_ms != b.physical_ms) {
        return a.physical_ms < b.physical_ms ? -1 : 1;
    }
    if (a.logical != b.logical) {
        return a.logical < b.logical ? -1 : 1;
    }
    if (a.node != b.node) {
        return a.node < b.node ? -1 : 1;
    }
    return 0;
}

uint64_t ap_hlc_pack(struct ap_hlc_ts ts)
{
    return (ts.physical_ms & AP_HLC_PHYSICAL_MAX) << 16 | ts.logical;
}

struct ap_hlc_ts ap_hlc_unpack(uint64_t packed, uint32_t node)
{
    struct ap_hlc_ts ts = {
        .physical_ms = packed >> 16,
        .logical = (uint16_t)(packed & 0xffffu),
        .node = node,
    };
    return ts;
}

int ap_hlc_format(struct ap_hlc_ts ts, char *buf, size_t n)
{
    if (buf == NULL) {
        return AP_EINVAL;
    }
    int len =
        snprintf(buf, n, "%" PRIu64 ".%u@%" PRIu32, ts.physical_ms, (unsigned)ts.logical, ts.node);
    if (len < 0 || (size_t)len >= n) {
        if (n > 0) {
            buf[0] = '\0';
        }
        return AP_ETOOBIG;
    }
    return len;
}

/*
 * Read one non-empty run of decimal digits at *s into *v, at most max,
 * and advance *s past it. Returns 0, or AP_EINVAL on no digit or overflow.
 */
static int parse_digits(const char **s, uint64_t max, uint64_t *v)
{
    const char *p = *s;
    uint64_t acc = 0;
    while (*p >= '0' && *p <= '9') {
        uint64_t d = (uint64_t)(*p - '0');
        if (acc > (max - d) / 10) {
            return AP_EINVAL;
        }
        acc = acc * 10 + d;
        p++;
    }
    if (p == *s) {
        return AP_EINVAL;
    }
    *s = p;
    *v = acc;
    return 0;
}

int ap_hlc_parse(const char *s, struct ap_hlc_ts *out)
{
    uint64_t physical, logical, node;
    if (s == NULL || out == NULL) {
        return AP_EINVAL;
    }
    if (parse_digits(&s, AP_HLC_PHYSICAL_MAX, &physical) != 0 || *s++ != '.' ||
        parse_digits(&s, AP_HLC_LOGICAL_MAX, &logical) != 0 || *s++ != '@' ||
        parse_digits(&s, UINT32_MAX, &node) != 0 || *s != '\0') {
        return AP_EINVAL;
    }
    out->physical_ms = physical;
    out->logical = (uint16_t)logical;
    out->node = (uint32_t)node;
    return 0;
}
