/* raft_transport: a canonical/raft TCP transport that binds outgoing connections to the node's own
 * IP. */
#ifndef AP_RAFT_TRANSPORT_H
#define AP_RAFT_TRANSPORT_H

#include <raft.h>
#include <raft/uv.h>

/**
 * raft's stock TCP transport binds only its listening socket
 * (RAFT-NOTES pitfall 10); its outgoing connections take the kernel's source
 * address, so an iptables rule between two loopback addresses would not cut
 * the link it names. This transport listens through the stock one and makes
 * its own outgoing connections, bound to the IP of the node's raft address,
 * speaking the same handshake.
 */
struct ap_raft_dial;
struct ap_raft_watch;

struct ap_raft_transport {
    struct raft_uv_transport iface; /* What raft_uv_init() takes; first member. */
    struct raft_uv_transport inner; /* Stock TCP transport, for listening. */
    uv_loop_t *loop;
    raft_id id;
    char address[64];             /* This node's raft address "ip:port". */
    char local_ip[48];            /* IP outgoing connections bind to. */
    struct ap_raft_dial *pending; /* Connect requests in flight. */
    struct ap_raft_watch *watches; /* One per peer: its latest outgoing connection. */
    raft_uv_transport_close_cb close_cb;
    int closing;
    /* Called when the peer of an outgoing connection closed it (see ap_raft_transport_init). */
    void (*peer_lost)(void *data, raft_id id, const char *address);
    void *peer_lost_data;
};

/**
 * Initialise t on loop. After raft_uv_init(io, loop, dir, &t->iface) and
 * raft_init(), raft drives it. Returns 0 or an AP_E* code.
 *
 * raft_uv never reads its outgoing connections, so it learns that a peer
 * went away (killed, restarted) only when a write fails: the first message
 * after a peer restarted is written into the dead connection and lost (a vote
 * request, costing a whole election timeout). This transport polls a
 * duplicate of each outgoing connection's descriptor (reading on raft's own
 * stream would make libuv refuse raft's next write outright, which raft
 * treats as fatal); at the peer's FIN, a reset or any poll error it shuts the connection for
 * writing (raft's next write fails, and raft_uv reconnects) and calls
 * t->peer_lost(t->peer_lost_data, id, address) if set, so that its owner can
 * make raft_uv reconnect before a message that matters. The process must
 * ignore SIGPIPE.
 */
int ap_raft_transport_init(struct ap_raft_transport *t, uv_loop_t *loop);

/** Release what init allocated; call after raft_close()'s callback fired. */
void ap_raft_transport_close(struct ap_raft_transport *t);

#endif
