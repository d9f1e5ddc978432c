"""Leader crash under write load: 4 clients write distinct sites to random nodes of a 3-node
region for ~8 s; the leader is killed with SIGKILL after ~2 s and restarted later. Every
acknowledged write must survive on every node, nothing unsent may appear, writes must resume,
and the restarted node must catch up. Prints how long writes failed around the kill."""

import collections
import time

import harness
from harness import SiteWriter, assert_sites_durable, expect_status

LOAD_S = 8.0
KILL_AFTER_S = 2.0
PREFIX = "k"


class Run:
    """What happened, filled in by the steps."""

    killed = None
    t_kill = None
    t_elected = None
    new_leader = None
    writer = None


def check_load_and_kill(topo, run):
    nodes = topo.region_nodes("r1")
    leader = topo.leader()
    run.writer = SiteWriter(lambda: nodes, threads=4, prefix=PREFIX, timeout=3.0).start()
    try:
        t0 = run.writer.started_at
        time.sleep(KILL_AFTER_S)
        run.killed = leader
        run.t_kill = time.monotonic()
        leader.kill9()
        print("  killed leader node %d (pid %d) at t=%.2f s" % (leader.id, leader.pid,
                                                                run.t_kill - t0))
        survivors = [n for n in nodes if n is not leader]
        run.new_leader = topo.leader(among=survivors, timeout=20)
        run.t_elected = time.monotonic()
        print("  node %d leads after %.2f s" % (run.new_leader.id, run.t_elected - run.t_kill))
        remaining = LOAD_S - (time.monotonic() - t0)
        if remaining > 0:
            time.sleep(remaining)
    finally:
        run.writer.stop()
    w = run.writer
    kinds = collections.Counter("%s %s" % (st, why) for _, _, st, why in w.failures)
    print("  sent %d, acknowledged %d, failed %d: %s" % (len(w.sent), len(w.acked),
                                                         len(w.failures), dict(kinds)))
    if run.new_leader.id == leader.id:
        raise AssertionError("the killed node %d is still named leader" % leader.id)


def check_writes_resumed(run):
    w = run.writer
    before = [t for t in w.acked.values() if t < run.t_kill]
    after = [t for t in w.acked.values() if t > run.t_elected]
    if len(before) < 10:
        raise AssertionError("only %d writes acknowledged before the kill" % len(before))
    if len(after) < 10:
        raise AssertionError("only %d writes acknowledged after a new leader was elected: "
                             "writes did not resume" % len(after))
    gap, at = w.longest_gap(since=run.t_kill - 1.0)
    print("  write gap: %.2f s without any acknowledged write, from %.2f s %s the kill" %
          (gap, abs(at - run.t_kill), "after" if at >= run.t_kill else "before"))
    if gap > 15:
        raise AssertionError("writes failed for %.1f s after the leader died" % gap)


def check_restart_catches_up(topo, run):
    node = run.killed
    node.start()
    h = node.wait_http(timeout=20)
    print("  node %d restarted, applied_index %d" % (node.id, h["applied_index"]))
    index = topo.wait_converged("r1", timeout=30)
    leader = topo.leader()
    lh = leader.health()
    if lh["applied_index"] != index or node.health()["applied_index"] != index:
        raise AssertionError("restarted node at %d, leader at %d" %
                             (node.health()["applied_index"], lh["applied_index"]))
    if node.health()["leader"]["id"] != leader.id:
        raise AssertionError("restarted node names leader %r, leader is %d" %
                             (node.health()["leader"], leader.id))
    print("  all 3 nodes at applied_index %d" % index)


def check_durable(topo, run):
    w = run.writer
    copies = assert_sites_durable(topo.region_nodes("r1"), w.acked, w.sent, prefix=PREFIX)
    if len({frozenset(c) for c in copies.values()}) != 1:
        sizes = {i: len(c) for i, c in copies.items()}
        raise AssertionError("the nodes hold different sites: %s" % sizes)
    held = next(iter(copies.values()))
    print("  every node holds %d sites: all %d acknowledged + %d of %d failed attempts" %
          (len(held), len(w.acked), len(held) - len(w.acked), len(w.sent) - len(w.acked)))


def check_still_writable(topo):
    for n in topo.region_nodes("r1"):
        expect_status(n.request("POST", "/v1/sites", {"name": "after-restart-%d" % n.id}), 201,
                      "write through node %d after the restart" % n.id)


def main(t):
    topo = t.topology()
    run = Run()
    t.check("archipel dev starts a 3-node region", topo.start_dev, regions=1, nodes=3,
            required=True)
    t.check("4 writers for %.0f s, leader killed (SIGKILL) after %.0f s, a new leader is "
            "elected" % (LOAD_S, KILL_AFTER_S), check_load_and_kill, topo, run, required=True)
    t.check("writes resume after the kill", check_writes_resumed, run)
    t.check("the killed node restarts from its cmd and catches up", check_restart_catches_up,
            topo, run, required=True)
    t.check("every acknowledged site on all 3 nodes, nothing unsent, same copies",
            check_durable, topo, run)
    t.check("the region takes writes through every node", check_still_writable, topo)


if __name__ == "__main__":
    harness.run(main)
