"""Edge benchmarks (figures, not a test): daemon and shim footprint, instance start latency
beside a raw fork+exec, and convergence time after a heal of changes made on a cut-off site.

usage: python3 tests/bench/edge_bench.py --bin-dir build/bin --work-dir /tmp/edge-bench
       [--instances 100] [--changes 10000]
Prints key=value lines and a markdown table; everything runs on loopback, bounded.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
import harness  # noqa: E402


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def top_shims(data_dir):
    pids = []
    for e in os.listdir("/proc"):
        if not e.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % e, "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if args and os.path.basename(args[0]) == b"archipel-shim" and \
                any(data_dir.encode() in a for a in args):
            pids.append(int(e))

    def ppid(p):
        try:
            with open("/proc/%d/stat" % p) as f:
                return int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            return 0
    return [p for p in pids if ppid(p) not in pids]


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def iptables(action, src, net):
    for a, b in ((src, net), (net, src)):
        subprocess.run(["iptables", action, "INPUT", "-s", a, "-d", b, "-j", "DROP"],
                       check=action != "-D", stderr=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--work-dir", required=True)
    ap.add_argument("--instances", type=int, default=100)
    ap.add_argument("--changes", type=int, default=10000)
    a = ap.parse_args()
    topo = harness.Topology(a.bin_dir, a.work_dir)
    rows = []
    try:
        topo.start_dev(nodes=3, sites=1)
        site = topo.site("r1-s1")
        region = topo.leader()
        data_dir = site.cmd[site.cmd.index("--dir") + 1]
        time.sleep(1)
        idle = rss_kib(site.pid)
        size = os.path.getsize(os.path.join(a.bin_dir, "archipel-edge"))
        shim_size = os.path.getsize(os.path.join(a.bin_dir, "archipel-shim"))

        # Start latency: the site's own stamps (created -> running), beside posix_spawn.
        ids, lat = [], []
        for i in range(a.instances):
            r = site.request_full("POST", "/v1/instances", {
                "name": "b%d" % i, "tenant": "bench", "command": ["sleep", "100000"],
                "resources": {"cpu_millis": 1, "memory_mb": 1}})
            harness.expect_status(r, 201, "create b%d" % i)
            ids.append(r.json["id"])
        harness.wait_until(lambda: all(
            i["actual"] == "running" for i in site.request_full(
                "GET", "/v1/instances?tenant=bench").json["instances"]), 120, "all running")
        for inst in site.request_full("GET", "/v1/instances?tenant=bench").json["instances"]:
            c = time.strptime(inst["created_at"][:19], "%Y-%m-%dT%H:%M:%S")
            ra = time.strptime(inst["actual_at"][:19], "%Y-%m-%dT%H:%M:%S")
            ms = (time.mktime(ra) - time.mktime(c)) * 1000 + \
                int(inst["actual_at"][20:23]) - int(inst["created_at"][20:23])
            lat.append(ms)
        raw = []
        for _ in range(a.instances):
            t0 = time.perf_counter()
            pid = os.posix_spawn("/bin/sleep", ["sleep", "0"], os.environ)
            raw.append((time.perf_counter() - t0) * 1000)
            os.waitpid(pid, 0)
        busy = rss_kib(site.pid)
        shims = [rss_kib(p) for p in top_shims(data_dir)]

        # Convergence after a heal: changes made while cut off.
        iptables("-I", site.ip, "127.0.11.0/24")
        harness.wait_until(lambda: site.request_full("GET", "/v1/health").json["link"] ==
                           "disconnected", 20, "site cut off")
        t0 = time.monotonic()
        for k in range(a.changes):
            iid = ids[k % len(ids)]
            site.request_full("POST", "/v1/instances/%s/%s" % (iid, "stop" if k % 2 == 0
                                                               else "start"))
        made = time.monotonic() - t0
        want = {i["id"]: i["desired_at"] for i in site.request_full(
            "GET", "/v1/instances?tenant=bench").json["instances"]}
        iptables("-D", site.ip, "127.0.11.0/24")
        healed = time.monotonic()

        def same():
            got = {i["id"]: i["desired_at"] for i in region.request_full(
                "GET", "/v1/instances?site=r1-s1&tenant=bench").json["instances"]}
            return all(got.get(k) == v for k, v in want.items())
        harness.wait_until(same, 60, "region converged", interval=0.05)
        conv = time.monotonic() - healed

        rows = [
            ("edge daemon RSS idle, 0 instances", "<= 8 MiB", "%.1f MiB" % (idle / 1024)),
            ("edge daemon RSS with %d instances" % a.instances, "", "%.1f MiB" % (busy / 1024)),
            ("shim RSS (median of %d)" % len(shims), "<= 1 MiB",
             "%.2f MiB" % (statistics.median(shims) / 1024 if shims else 0)),
            ("archipel-edge binary", "", "%.1f MiB" % (size / 1048576)),
            ("archipel-shim binary", "", "%.2f MiB" % (shim_size / 1048576)),
            ("instance start p50 / p99 (ms)", "<= 1.5x raw",
             "%.0f / %.0f" % (pct(lat, .5), pct(lat, .99))),
            ("raw posix_spawn p50 / p99 (ms)", "", "%.2f / %.2f" % (pct(raw, .5), pct(raw, .99))),
            ("%d changes on a cut-off site converge after heal" % a.changes, "<= 2 s",
             "%.2f s (made in %.1f s)" % (conv, made)),
        ]
    finally:
        subprocess.run(["iptables", "-D", "INPUT", "-s", "127.0.21.1", "-d", "127.0.11.0/24",
                        "-j", "DROP"], stderr=subprocess.DEVNULL)
        subprocess.run(["iptables", "-D", "INPUT", "-s", "127.0.11.0/24", "-d", "127.0.21.1",
                        "-j", "DROP"], stderr=subprocess.DEVNULL)
        topo.stop()
    print("| figure | target | measured |")
    print("|---|---|---|")
    for r in rows:
        print("| %s | %s | %s |" % r)


if __name__ == "__main__":
    main()
