"""Edge benchmarks (figures, not a test): daemon and shim footprint, instance start latency beside
a raw spawn, and convergence of changes made on a cut-off site: time and bytes on the wire.

usage: python3 tests/bench/edge_bench.py --bin-dir build/bin --work-dir /tmp/edge-bench
       [--bench-dir build/bench] [--instances 100] [--changes 10000] [--start-count 100]

It starts its own daemons on 127.0.98.x: a region of 3 archipel-regional nodes (127.0.98.1-3,
HTTP 7100, raft 7101, site link 7102) and one archipel-edge site "b1-s1" (127.0.98.21, HTTP
7200), so it never touches the addresses of `archipel dev` and the integration tests. It needs
root (namespaces, iptables). Prints key=value lines and a markdown table; every wait is bounded,
and everything it started (processes, iptables rules) is removed at the end.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
import harness  # noqa: E402

NET = "127.0.98"
NODES = [("%s.%d" % (NET, i)) for i in (1, 2, 3)]
SITE_IP = "%s.21" % NET
SITE = "b1-s1"
REGION = "r1"
HTTP_PORT, RAFT_PORT, LINK_PORT, SITE_PORT = 7100, 7101, 7102, 7200
IPT_TAG = "archipel-edge-bench"  # iptables comment on every rule this script adds


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def top_shims(data_dir):
    """Pids of the shims of data_dir (idle ones included), not their namespace inits."""
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


# --- iptables: the cut, and byte counters. Every rule carries IPT_TAG.

def ipt(*args, check=True):
    return subprocess.run(["iptables"] + list(args), check=check, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def ipt_pairs():
    for node in NODES:
        yield SITE_IP, node
        yield node, SITE_IP


def ipt_rule(src, dst, target):
    return ["INPUT", "-s", src, "-d", dst, "-m", "comment", "--comment", IPT_TAG, "-j", target]


def ipt_cut():
    for src, dst in ipt_pairs():
        ipt("-I", *ipt_rule(src, dst, "DROP"))


def ipt_heal_counted():
    """Heal the cut by inserting counting ACCEPT rules above the DROP rules, then delete those.

    On loopback every packet is delivered through INPUT once, so the ACCEPT rules count each
    packet between the site and the region exactly once from this moment on."""
    for src, dst in ipt_pairs():
        rule = ipt_rule(src, dst, "ACCEPT")
        ipt("-I", rule[0], "1", *rule[1:])
    for src, dst in ipt_pairs():
        ipt("-D", *ipt_rule(src, dst, "DROP"))


def ipt_counters():
    """(bytes, packets) site->region and region->site from the ACCEPT rules' counters."""
    out = ipt("-L", "INPUT", "-v", "-x", "-n").stdout
    up = [0, 0]
    down = [0, 0]
    for line in out.splitlines():
        if IPT_TAG not in line or "ACCEPT" not in line:
            continue
        # pkts bytes target prot opt in out source destination /* comment */
        f = line.split()
        pkts, nbytes = int(f[0]), int(f[1])
        m = re.search(r"(\d+\.\d+\.\d+\.\d+)\s+(\d+\.\d+\.\d+\.\d+)", line)
        side = up if m and m.group(1) == SITE_IP else down
        side[0] += nbytes
        side[1] += pkts
    return tuple(up), tuple(down)


def ipt_cleanup():
    """Delete every rule this script added (also after a crash of an earlier run)."""
    for _ in range(64):
        out = ipt("-S", "INPUT", check=False).stdout
        rules = [r for r in out.splitlines() if IPT_TAG in r and r.startswith("-A INPUT")]
        if not rules:
            return
        for r in rules:
            args = r.split()[1:]
            args = [a.strip('"') for a in args]
            ipt("-D", *args, check=False)


def stop_shims(data_dir, timeout=15.0):
    """SIGTERM every shim of data_dir (they stop their workloads) and wait for them, bounded."""
    pids = top_shims(data_dir)
    for p in pids:
        try:
            os.kill(p, 15)
        except OSError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(harness._pid_alive(p) for p in pids):
        time.sleep(0.05)


# --- msgpack sizes, to know how large the changes are in the site link's own encoding.

def mp_str(s):
    n = len(s.encode("utf-8"))
    return n + (1 if n < 32 else 2 if n < 256 else 3 if n < 65536 else 5)


def mp_int(v):
    if 0 <= v < 128 or -32 <= v < 0:
        return 1
    if -128 <= v < 256:
        return 2
    if -32768 <= v < 65536:
        return 3
    if -2 ** 31 <= v < 2 ** 32:
        return 5
    return 9


def record_size(inst):
    """Bytes of one instance record as common/instrec.c encodes it (a map of 18 entries).

    The spec text is rebuilt the way common/instjson.c stores it (compact, sorted keys); stamps
    are packed HLCs (physical ms << 16: 9 bytes when set, 1 when not); the node of every stamp
    the site made is its HLC node id (>= 2^31: 5 bytes)."""
    import json as _json
    spec = {k: inst.get(k) for k in ("command", "env", "cwd", "resources", "restart", "labels")}
    text = _json.dumps(spec, sort_keys=True, separators=(",", ":"))
    size = 3  # map16 header: 18 entries
    for key, val in (("id", inst["id"]), ("tenant", inst["tenant"]), ("name", inst["name"]),
                     ("site", inst["site"]), ("spec", text), ("d", inst["desired"]),
                     ("a", inst["actual"])):
        size += mp_str(key) + mp_str(val)
    res = inst.get("resources") or {}
    size += mp_str("cpu") + mp_int(res.get("cpu_millis", 0))
    size += mp_str("mem") + mp_int(res.get("memory_mb", 0))
    for ts_key, node_key, at in (("ct", "cn", "created_at"), ("dt", "dn", "desired_at"),
                                 ("at", "an", "actual_at")):
        set_ = inst.get(at) is not None
        size += mp_str(ts_key) + (9 if set_ else 1) + mp_str(node_key) + (5 if set_ else 1)
    size += mp_str("pid") + mp_int(inst.get("pid") or 0)
    size += mp_str("exit") + mp_int(inst.get("exit_code") or 0)
    size += mp_str("rs") + mp_int(inst.get("restarts") or 0)
    return size


# --- the topology


def start_topology(topo, bin_dir, work):
    addrs = ["%s:%d" % (ip, p) for ip in NODES for p in (HTTP_PORT, RAFT_PORT, LINK_PORT)]
    addrs.append("%s:%d" % (SITE_IP, SITE_PORT))
    topo.prepare(addrs)
    peers = []
    for i, ip in enumerate(NODES, 1):
        peers += ["--peer", "%d,%s:%d,%s:%d" % (i, ip, RAFT_PORT, ip, HTTP_PORT)]
    for i, ip in enumerate(NODES, 1):
        cmd = [os.path.join(bin_dir, "archipel-regional"), "--region", REGION, "--id", str(i),
               "--ip", ip, "--http-port", str(HTTP_PORT), "--raft-port", str(RAFT_PORT),
               "--link-port", str(LINK_PORT), "--dir", os.path.join(work, "node%d" % i)] + peers
        node = harness.Node(topo, REGION, i, ip, cmd, os.path.join(work, "logs", "node%d.log" % i))
        topo.nodes.append(node)
        node.start()
    leader = topo.leader(REGION, timeout=60)
    body = {"name": SITE, "labels": {"region": REGION},
            "capacity": {"cpu_millis": 4000, "memory_mb": 8192, "instances": 1000}}
    harness.wait_until(lambda: leader.request("POST", "/v1/sites", body)[0] in (201, 409), 30,
                       "site registered")
    cmd = [os.path.join(bin_dir, "archipel-edge"), "--site", SITE, "--region", REGION,
           "--ip", SITE_IP, "--http-port", str(SITE_PORT), "--dir", os.path.join(work, SITE),
           "--max-instances", "1000", "--shim", os.path.join(bin_dir, "archipel-shim")]
    for ip in NODES:
        cmd += ["--region-node", "%s:%d" % (ip, LINK_PORT)]
    site = harness.Node(topo, REGION, SITE, SITE_IP, cmd, os.path.join(work, "logs", "site.log"),
                        http_port=SITE_PORT)
    topo.nodes.append(site)
    site.start()
    harness.wait_until(lambda: (site.health() or {}).get("link") == "connected", 60,
                       "site linked to its region")
    return leader, site


def start_bench(bench_dir, bin_dir, work, count):
    """Run edge-start-bench; returns its key=value output as a dict."""
    exe = os.path.join(bench_dir, "edge-start-bench")
    out = subprocess.run([exe, "--shim", os.path.join(bin_dir, "archipel-shim"), "--work",
                          os.path.join(work, "start-bench"), "--count", str(count)],
                         check=True, stdout=subprocess.PIPE, text=True, timeout=600).stdout
    print(out, end="")
    kv = {}
    for line in out.splitlines():
        for part in line.split(" ") if line.startswith("mode=") else [line]:
            if "=" in part:
                k, v = part.split("=", 1)
                kv.setdefault(k, v)
    return kv


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--bench-dir", help="where edge-start-bench is (default: BIN/../bench)")
    ap.add_argument("--work-dir", required=True)
    ap.add_argument("--instances", type=int, default=100)
    ap.add_argument("--changes", type=int, default=10000)
    ap.add_argument("--start-count", type=int, default=100)
    a = ap.parse_args()
    bin_dir = os.path.abspath(a.bin_dir)
    bench_dir = os.path.abspath(a.bench_dir or os.path.join(bin_dir, "..", "bench"))
    work = os.path.abspath(a.work_dir)
    topo = harness.Topology(bin_dir, work)
    rows = []
    ipt_cleanup()
    try:
        print("run_loadavg_before=%s" % " ".join(open("/proc/loadavg").read().split()[:3]))
        # Start latency in one process, beside raw spawns (edge/drivers/start_bench.c); done
        # first, before the daemons load the machine.
        os.makedirs(work, exist_ok=True)
        sb = start_bench(bench_dir, bin_dir, work, a.start_count)

        leader, site = start_topology(topo, bin_dir, work)
        data_dir = os.path.join(work, SITE)
        time.sleep(1)
        idle = rss_kib(site.pid)
        size = os.path.getsize(os.path.join(bin_dir, "archipel-edge"))
        shim_size = os.path.getsize(os.path.join(bin_dir, "archipel-shim"))

        # API create -> running, as the site stamps them (created_at -> actual_at, ms).
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
        busy = rss_kib(site.pid)
        shims = [rss_kib(p) for p in top_shims(data_dir)]

        # Convergence after a heal: changes made while cut off; time and bytes on the wire.
        ipt_cut()
        harness.wait_until(lambda: site.request_full("GET", "/v1/health").json["link"] ==
                           "disconnected", 20, "site cut off")
        t0 = time.monotonic()
        for k in range(a.changes):
            iid = ids[k % len(ids)]
            site.request_full("POST", "/v1/instances/%s/%s" % (iid, "stop" if k % 2 == 0
                                                               else "start"))
        made = time.monotonic() - t0
        # The net change the region must learn: every instance's latest record.
        final = site.request_full("GET", "/v1/instances?tenant=bench").json["instances"]
        want = {i["id"]: i["desired_at"] for i in final}
        ipt_heal_counted()
        healed = time.monotonic()

        def same():
            got = {i["id"]: i["desired_at"] for i in leader.request_full(
                "GET", "/v1/instances?site=%s&tenant=bench" % SITE).json["instances"]}
            return all(got.get(k) == v for k, v in want.items())
        harness.wait_until(same, 60, "region converged", interval=0.02)
        conv = time.monotonic() - healed
        (up_b, up_p), (down_b, down_p) = ipt_counters()
        changed = sum(record_size(i) for i in final)
        wire = up_b + down_b
        print("changes=%d records_changed=%d changes_bytes=%d" % (a.changes, len(final), changed))
        print("wire_bytes=%d wire_packets=%d site_to_region_bytes=%d region_to_site_bytes=%d "
              "tcp_payload_bytes=%d converge_s=%.3f made_s=%.1f" %
              (wire, up_p + down_p, up_b, down_b, wire - 52 * (up_p + down_p), conv, made))

        def fig(mode, what):
            return "%s / %s" % (sb.get("%s.%s_p50_ms" % (mode, what)),
                                sb.get("%s.%s_p99_ms" % (mode, what)))

        rows = [
            ("edge daemon RSS idle, 0 instances", "<= 8 MiB", "%.1f MiB" % (idle / 1024)),
            ("edge daemon RSS with %d instances" % a.instances, "", "%.1f MiB" % (busy / 1024)),
            ("shim RSS (median of %d, idle shim included)" % len(shims), "<= 1 MiB",
             "%.2f MiB" % (statistics.median(shims) / 1024 if shims else 0)),
            ("archipel-edge binary", "", "%.1f MiB" % (size / 1048576)),
            ("archipel-shim binary", "", "%.2f MiB" % (shim_size / 1048576)),
            ("start call -> workload exec'd, p50 / p99 (ms; namespaces, idle shim)",
             "<= 1.5x raw", "%s (%sx raw)" % (fig("ns", "exec"), sb.get("ns.exec_ratio_p50"))),
            ("raw posix_spawnp of the same command, same process, alternated, p50 / p99 (ms)",
             "", fig("ns", "spawn")),
            ("raw fork + exec, p50 / p99 (ms)", "", fig("ns", "fork")),
            ("start call -> its callback (the daemon knows), p50 / p99 (ms)", "",
             "%s (%sx raw)" % (fig("ns", "answer"), sb.get("ns.answer_ratio_p50"))),
            ("start call -> exec'd without namespaces, p50 / p99 (ms) / raw p50", "",
             "%s (%sx raw %s)" % (fig("plain", "exec"), sb.get("plain.exec_ratio_p50"),
                                  sb.get("plain.spawn_p50_ms"))),
            ("start call -> exec'd with a shim spawned per start (no idle shim)", "",
             "%s (%sx raw %s)" % (fig("spawn", "exec"), sb.get("spawn.exec_ratio_p50"),
                                  sb.get("spawn.spawn_p50_ms"))),
            ("API create -> running as the site stamps it, p50 / p99 (ms, durable create "
             "included)", "", "%.0f / %.0f" % (pct(lat, .5), pct(lat, .99))),
            ("%d changes on a cut-off site converge after heal" % a.changes, "<= 2 s",
             "%.2f s (made in %.1f s)" % (conv, made)),
            ("bytes site <-> region until converged (IP packets) / size of the changed records",
             "<= 2x", "%d / %d = %.2fx (%d records, %d packets)" % (
                 wire, changed, wire / changed if changed else 0, len(final), up_p + down_p)),
        ]
    finally:
        ipt_cleanup()
        stop_shims(os.path.join(work, SITE))
        topo.stop()
        print("run_loadavg_after=%s" % " ".join(open("/proc/loadavg").read().split()[:3]))
    print("| figure | target | measured |")
    print("|---|---|---|")
    for r in rows:
        print("| %s | %s | %s |" % r)


if __name__ == "__main__":
    main()
