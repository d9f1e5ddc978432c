"""Membership changes on a region whose nodes snapshot every 64 entries: a 4th node joins with
--join and POST /v1/cluster/members and catches up; a node is removed, wiped, and re-added, and
catches up from a snapshot; errors for unknown and existing ids."""

import shutil

import harness
from harness import expect_error, expect_status, wait_until

SNAP = ["--snapshot-threshold", "64"]
# Raft keeps this many entries behind a snapshot (AP_RSM_SNAPSHOT_TRAILING in ap/rsm.h). A
# wiped node can only be sent a snapshot once the leader's log no longer starts at 1, i.e.
# once a snapshot was taken past this many entries plus one threshold.
TRAILING = 2048
FIRST_SITES = 300
# A user expects a node to hold a few thousand small sites within seconds of being added.
CATCH_UP_S = 20


class State:
    victim = None
    leader = None


def cluster_members(node):
    body = expect_status(node.request("GET", "/v1/cluster"), 200, "GET /v1/cluster on %r" % node)
    return {m["id"]: m for m in body["members"]}, body


def check_members_everywhere(topo, want_ids):
    """Every running node lists exactly want_ids as voters, each with its own addresses."""
    def ok():
        for n in topo.region_nodes("r1", alive_only=True):
            members, _ = cluster_members(n)
            if sorted(members) != sorted(want_ids):
                return None
            for i in want_ids:
                m, node = members[i], topo.node(i)
                if (m["http"], m["raft"], m["role"]) != (node.http, node.raft, "voter"):
                    raise AssertionError("%r lists member %d as %r" % (n, i, m))
        return True

    wait_until(ok, 20, "every node lists members %s as voters" % sorted(want_ids))


def check_start(topo, st):
    topo.start_raw(region_index=1, nodes=3, extra_args=SNAP)
    st.leader = topo.leader()
    check_members_everywhere(topo, [1, 2, 3])


def check_first_writes(topo, st):
    harness.write_sites(st.leader, ["site-%03d" % i for i in range(FIRST_SITES)])
    snaps = wait_until(lambda: st.leader.metric("archipel_raft_snapshots_total", 0) >= 1, 10,
                       "leader took a snapshot (archipel_raft_snapshots_total)")
    if len(st.leader.sites()) != FIRST_SITES:
        raise AssertionError("leader holds %d sites, wrote %d" % (len(st.leader.sites()),
                                                                 FIRST_SITES))
    return snaps


def check_join_fourth(topo, st):
    n4 = topo.new_node(1, 4, topo.node_cmd(1, 4, join=True, extra_args=SNAP))
    n4.start()
    topo.write_topology()
    h = n4.wait_http()
    if h["applied_index"] != 0 or n4.sites():
        raise AssertionError("a fresh --join node already holds data: %r" % h)
    follower = [n for n in topo.region_nodes("r1") if n.id != st.leader.id and n.id != 4][0]
    body = expect_status(follower.request("POST", "/v1/cluster/members",
                                          {"id": 4, "raft": n4.raft, "http": n4.http}),
                         201, "POST /v1/cluster/members through follower %r" % follower)
    if (body.get("id"), body.get("raft"), body.get("http")) != (4, n4.raft, n4.http):
        raise AssertionError("POST members answered %r" % body)
    check_members_everywhere(topo, [1, 2, 3, 4])


def check_caught_up(topo, st, nodes_ids):
    """All nodes at the same applied index and holding the leader's sites exactly."""
    nodes = [topo.node(i) for i in nodes_ids]
    index = topo.wait_converged("r1", timeout=CATCH_UP_S, nodes=nodes)
    leader = topo.leader()
    want = leader.sites()
    for n in nodes:
        have = n.sites()
        if have != want:
            raise AssertionError("%r holds %d sites, leader %d; differing e.g. %s" %
                                 (n, len(have), len(want), sorted(set(have) ^ set(want))[:5]))
    print("  nodes %s at applied_index %d with %d sites" % (nodes_ids, index, len(want)))


def check_member_errors(topo, st):
    for n in topo.region_nodes("r1", alive_only=True):
        expect_error(n.request("DELETE", "/v1/cluster/members/77"), 404, "not_found", ["77"],
                     "removing unknown id 77 via %r" % n)
        expect_error(n.request("POST", "/v1/cluster/members",
                               {"id": 2, "raft": "127.0.11.9:7101", "http": "127.0.11.9:7100"}),
                     409, "already_exists", what="adding existing id 2 via %r" % n)
    check_members_everywhere(topo, [1, 2, 3, 4])


def check_remove(topo, st):
    st.leader = topo.leader()
    # Remove node 3 unless it leads (then another original follower).
    st.victim = next(topo.node(i) for i in (3, 2, 1) if i != st.leader.id)
    via = next(n for n in topo.region_nodes("r1") if n is not st.victim)
    body = expect_status(via.request("DELETE", "/v1/cluster/members/%d" % st.victim.id), 200,
                         "DELETE member %d via %r" % (st.victim.id, via))
    if body.get("id") != st.victim.id:
        raise AssertionError("DELETE member answered %r" % body)
    print("  removed node %d (leader is %d)" % (st.victim.id, st.leader.id))
    rc = st.victim.stop()
    if rc != 0:
        raise AssertionError("node %d exited with status %s on SIGTERM" % (st.victim.id, rc))
    expect_error(via.request("DELETE", "/v1/cluster/members/%d" % st.victim.id), 404,
                 "not_found", what="removing node %d twice" % st.victim.id)
    check_members_everywhere(topo, sorted({1, 2, 3, 4} - {st.victim.id}))


def check_write_past_trailing(topo, st):
    """Write on the 3 remaining voters until the leader's log was compacted past its start,
    so that a wiped node can only catch up from a snapshot."""
    leader = topo.leader()
    target = TRAILING + 3 * 64 + 50
    chunk = 0
    for chunk in range(12):
        _, c = cluster_members(leader)
        if c["last_index"] >= target:
            break
        harness.write_sites(leader, ["more-%d-%03d" % (chunk, i) for i in range(400)])
    _, c = cluster_members(leader)
    if c["last_index"] < target:
        raise AssertionError("leader last_index %d after 12 chunks, want >= %d" %
                             (c["last_index"], target))
    print("  leader last_index %d, %d snapshots" %
          (c["last_index"], leader.metric("archipel_raft_snapshots_total", 0)))


def check_rejoin_from_snapshot(topo, st):
    v = st.victim
    if v.data_dir is None:
        raise AssertionError("no data dir known for %r" % v)
    shutil.rmtree(v.data_dir)
    log_mark = len(v.log_text())
    v.start(cmd=topo.node_cmd(1, v.id, join=True, extra_args=SNAP))
    topo.write_topology()
    v.wait_http()
    via = topo.leader()
    expect_status(via.request("POST", "/v1/cluster/members",
                              {"id": v.id, "raft": v.raft, "http": v.http}),
                  201, "re-adding node %d" % v.id)
    check_members_everywhere(topo, [1, 2, 3, 4])
    wait_until(lambda: "rsm_snapshot_restored" in v.log_text()[log_mark:], CATCH_UP_S,
               "node %d restored a snapshot (rsm_snapshot_restored in its log)" % v.id)


def check_writes_after(topo):
    names = ["final-%d" % n.id for n in topo.region_nodes("r1")]
    for n, name in zip(topo.region_nodes("r1"), names):
        expect_status(n.request("POST", "/v1/sites", {"name": name}), 201,
                      "write through %r" % n)


def main(t):
    topo = t.topology()
    st = State()
    t.check("3 nodes with --snapshot-threshold 64 elect a leader; GET /v1/cluster lists them",
            check_start, topo, st, required=True)
    t.check("%d sites written; the leader takes snapshots" % FIRST_SITES, check_first_writes,
            topo, st, required=True)
    t.check("node 4 starts with --join and is added through a follower: a voter everywhere",
            check_join_fourth, topo, st, required=True)
    t.check("node 4 catches up: same applied index and sites as the leader", check_caught_up,
            topo, st, [1, 2, 3, 4])
    t.check("unknown id -> 404, existing id -> 409", check_member_errors, topo, st)
    t.check("a follower is removed (DELETE -> 200), stopped; removing it again -> 404",
            check_remove, topo, st, required=True)
    t.check("writes continue on the 3 remaining voters past the snapshot trailing",
            check_write_past_trailing, topo, st, required=True)
    t.check("the removed node, wiped, rejoins with --join and restores a snapshot",
            check_rejoin_from_snapshot, topo, st, required=True)
    t.check("it holds exactly the leader's sites at the same applied index", check_caught_up,
            topo, st, [1, 2, 3, 4])
    t.check("writes through every node still succeed", check_writes_after, topo)
    t.check("all 4 nodes converge again", check_caught_up, topo, st, [1, 2, 3, 4])


if __name__ == "__main__":
    harness.run(main)
