"""Workloads survive kill -9 of archipel-edge; the restarted daemon re-adopts them, once each."""

import os
import time

import harness


def ppid(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def shims_for(instance_dir):
    """Pids of the archipel-shim supervisors of instance_dir (a shim's namespace init, a fork
    of the shim with the same command line, is not counted)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if args and os.path.basename(args[0]) == b"archipel-shim" and \
                instance_dir.encode() in args:
            pids.append(int(entry))
    return [p for p in pids if ppid(p) not in pids]


def main(t):
    topo = t.topology()
    topo.start_dev(nodes=3, sites=1)
    site = topo.site("r1-s1")
    ids = []
    for name in ("alpha", "beta"):
        r = site.request_full("POST", "/v1/instances", {
            "name": name, "tenant": "acme", "command": ["sleep", "1000"],
            "resources": {"cpu_millis": 10, "memory_mb": 10}})
        harness.expect_status(r, 201, "create %s on the site" % name)
        ids.append(r.json["id"])

    def states():
        return {i: site.request_full("GET", "/v1/instances/%s" % i).json for i in ids}

    t.check("both workloads run", lambda: harness.wait_until(
        lambda: all(s.get("actual") == "running" and s.get("pid") for s in states().values()),
        20, "alpha and beta running"))
    before = {i: s["pid"] for i, s in states().items()}

    # A workload that ends while its daemon is dead: the restarted daemon records its end while
    # re-adopting, before its link to the region exists (this crashed it, found by the chaos
    # suite's site-kill scenario).
    r = site.request_full("POST", "/v1/instances", {
        "name": "gamma", "tenant": "acme", "command": ["sleep", "2"], "restart": "never",
        "resources": {"cpu_millis": 10, "memory_mb": 10}})
    harness.expect_status(r, 201, "create gamma on the site")
    gamma = r.json["id"]
    t.check("gamma runs", lambda: harness.wait_until(
        lambda: site.request_full("GET", "/v1/instances/%s" % gamma).json.get("actual") ==
        "running", 10, "gamma running"))

    site.kill9()
    harness.wait_until(lambda: site.request_full("GET", "/v1/health").status == 0, 5,
                       "site daemon gone")
    time.sleep(2.5)  # gamma's sleep 2 ends meanwhile
    t.check("workloads keep running while the daemon is dead",
            lambda: all(harness._pid_alive(p) for p in before.values()) or
            (_ for _ in ()).throw(AssertionError("a workload died with its daemon: %s" % before)))

    site.start()
    t.check("the restarted daemon answers", lambda: harness.wait_until(
        lambda: site.request_full("GET", "/v1/health").status == 200, 20, "site health"))
    t.check("the workload that ended meanwhile is recorded as exited", lambda: harness.wait_until(
        lambda: site.request_full("GET", "/v1/instances/%s" % gamma).json.get("actual") in
        ("exited", "stopped"), 10, "gamma exited"))
    t.check("the same workloads are adopted, not restarted", lambda: harness.wait_until(
        lambda: {i: s.get("pid") for i, s in states().items()} == before and
        all(s["actual"] == "running" for s in states().values()), 15,
        "same pids running after the restart"))
    data_dir = site.cmd[site.cmd.index("--dir") + 1]

    def once_each():
        for i in ids:
            n = len(shims_for(os.path.join(data_dir, "instances", i)))
            if n != 1:
                raise AssertionError("instance %s has %d shims" % (i, n))
        return True

    t.check("exactly one supervisor per instance (no duplicate, no orphan)", once_each)
    t.check("the link comes back", lambda: harness.wait_until(
        lambda: site.request_full("GET", "/v1/health").json.get("link") == "connected", 20,
        "site linked again"))


if __name__ == "__main__":
    harness.run(main)
