"""archipel chaos runner (issue 6): a real topology (`archipel dev`: controller, 1 region of 3
nodes, 3 sites), a seeded schedule of faults, concurrent clients that record a history, and the
checkers of checkers.py over it.

  python3 tests/chaos/chaos.py --bin-dir build/bin --work-dir /tmp/chaos --seed 1 \
      --duration 20 --scenario all [--runs 1]

Faults (each seeded and logged with its time): site-cut (iptables between a site's address and
its region's), one-way-cut (region to site only), node-cut (one regional node from the other
two), controller-cut (the controller from the region), kill (kill -9 of a regional node, restarted
from its `cmd`), pause (SIGSTOP/SIGCONT of a regional node for 2-4 s). The same seed gives the
same schedule. Prints one summary line per run:
  seed=1 scenario=site-cut faults=3 ops=812 violations=0
and keeps the history (history.jsonl), the fault log (faults.jsonl) and every log under the work
dir of a failing run. Exit status: 0 when no run had a violation.

Not yet (see docs/testing.md): clock offsets (faketime) and a full disk.
"""

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
sys.path.insert(0, HERE)

import checkers  # noqa: E402
import harness  # noqa: E402

SCENARIOS = ("site-cut", "one-way-cut", "node-cut", "controller-cut", "kill", "pause")
REGION_NET = "127.0.11.0/24"
CONTROLLER_IP = "127.0.10.1"
TENANT = "chaos"
KEYS = 8  # registers for the linearizability checker (more keys: shorter per-key searches)
PROBE_PORT = 18099
CONVERGE_S = 30.0


class History:
    """Thread-safe recorder of invoke/completion events (checkers.py's format)."""

    def __init__(self, t0):
        self.t0 = t0
        self.events = []
        self.lock = threading.Lock()

    def now(self):
        return time.monotonic() - self.t0

    def add(self, process, typ, f, key, value):
        with self.lock:
            self.events.append({"process": process, "type": typ, "f": f, "key": key,
                                "value": value, "time": self.now()})


def iptables(action, src, dst, both=True):
    pairs = ((src, dst), (dst, src)) if both else ((src, dst),)
    for a, b in pairs:
        subprocess.run(["iptables", action, "INPUT", "-s", a, "-d", b, "-j", "DROP"],
                       check=action != "-D", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Faults:
    """Applies a seeded schedule; every fault is undone by heal() (also on errors)."""

    def __init__(self, topo, rng, hist, log_path):
        self.topo = topo
        self.rng = rng
        self.hist = hist
        self.log = open(log_path, "w")
        self.active = []  # (kind, undo)
        self.cuts = []  # (start, end) of cuts of the probed site
        self.count = 0

    def note(self, kind, **kw):
        rec = dict(time=self.hist.now(), fault=kind, **kw)
        self.log.write(json.dumps(rec) + "\n")
        self.log.flush()
        print("  fault %-14s %s" % (kind, json.dumps(kw)), flush=True)

    def inject(self, kind):
        nodes = self.topo.region_nodes("r1")
        self.count += 1
        if kind in ("site-cut", "one-way-cut"):
            site = self.topo.site("r1-s1")
            both = kind == "site-cut"
            iptables("-I", site.ip, REGION_NET, both=both)
            self.note(kind, site=site.id)
            start = self.hist.now()
            self.active.append((kind, lambda: (iptables("-D", site.ip, REGION_NET, both=both),
                                               self.cuts.append((start, self.hist.now())))))
        elif kind == "node-cut":
            n = self.rng.choice(nodes)
            others = [o.ip for o in nodes if o is not n]
            for o in others:
                iptables("-I", n.ip, o)
            self.note(kind, node=n.id)
            self.active.append((kind, lambda: [iptables("-D", n.ip, o) for o in others]))
        elif kind == "controller-cut":
            iptables("-I", CONTROLLER_IP, REGION_NET)
            self.note(kind)
            self.active.append((kind, lambda: iptables("-D", CONTROLLER_IP, REGION_NET)))
        elif kind == "kill":
            n = self.rng.choice(nodes)
            n.kill9()
            self.note(kind, node=n.id)
            self.active.append((kind, lambda: n.start()))
        elif kind == "pause":
            n = self.rng.choice(nodes)
            os.kill(n.pid, signal.SIGSTOP)
            self.note(kind, node=n.id)
            self.active.append((kind, lambda: os.kill(n.pid, signal.SIGCONT)))

    def heal(self):
        healed = False
        while self.active:
            kind, undo = self.active.pop()
            try:
                undo()
            except Exception as e:  # keep healing the rest
                print("  heal %s failed: %r" % (kind, e), flush=True)
            healed = True
        if healed:
            self.note("heal")
        return healed


def register_client(stop, hist, topo, pid, rng):
    """Writes and reads per-key registers: a tenant's regional instance limit (PUT/GET
    /v1/quotas/{key} on any regional node; reads are linearizable by default)."""
    seq = 0
    for _ in range(100000):
        if stop.is_set():
            return
        key = "chaos-k%d" % rng.randrange(KEYS)
        node = rng.choice(topo.region_nodes("r1"))
        if rng.random() < 0.5:
            seq += 1
            v = pid * 100000 + seq
            hist.add(pid, "invoke", "write", key, v)
            st, _ = node.request("PUT", "/v1/quotas/%s" % key, {"instances": v}, timeout=2.0)
            hist.add(pid, "ok" if st == 200 else ("fail" if 400 <= st < 500 else "info"),
                     "write", key, v)
        else:
            hist.add(pid, "invoke", "read", key, None)
            st, body = node.request("GET", "/v1/quotas/%s" % key, timeout=2.0)
            if st == 200:
                hist.add(pid, "ok", "read", key, (body.get("limit") or {}).get("instances"))
            else:
                hist.add(pid, "fail", "read", key, None)
        stop.wait(0.05 if st == 0 or st >= 500 else 0.02)


def instance_client(stop, hist, topo, pid, rng, created):
    """Creates (through the region or a site) and deletes instances of TENANT."""
    n = 0
    for _ in range(100000):
        if stop.is_set():
            return
        if created and rng.random() < 0.3:
            iid, site = rng.choice(created)
            via = rng.choice(topo.region_nodes("r1") + [topo.site(site)])
            hist.add(pid, "invoke", "delete", None, iid)
            st, _ = via.request("DELETE", "/v1/instances/%s" % iid, timeout=3.0)
            hist.add(pid, "ok" if st == 200 else ("fail" if 400 <= st < 500 else "info"),
                     "delete", None, iid)
        else:
            n += 1
            site = rng.choice(["r1-s1", "r1-s2", "r1-s3"])
            via_site = rng.random() < 0.5
            via = topo.site(site) if via_site else rng.choice(topo.region_nodes("r1"))
            body = {"name": "c%d-%d" % (pid, n), "tenant": TENANT, "command": ["sleep", "3600"],
                    "resources": {"cpu_millis": 10, "memory_mb": 8}, "restart": "never"}
            if not via_site:
                body["site"] = site
            hist.add(pid, "invoke", "create", None, body["name"])
            st, resp = via.request("POST", "/v1/instances", body, timeout=3.0)
            if st == 201:
                hist.add(pid, "ok", "create", None, resp["id"])
                created.append((resp["id"], site))
            else:
                hist.add(pid, "fail" if 400 <= st < 500 else "info", "create", None, None)
        stop.wait(0.05)


def prober(stop, probes, url):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for _ in range(100000):
        if stop.is_set():
            return
        t = time.monotonic()
        try:
            with opener.open(url, timeout=1.0) as r:
                r.read()
            ok = True
        except Exception:  # any failure counts
            ok = False
        probes.append((t, ok))
        stop.wait(0.1)


def quota_sampler(stop, hist, topo, samples):
    for _ in range(100000):
        if stop.is_set():
            return
        node = topo.region_nodes("r1")[0]
        st, body = node.request("GET", "/v1/quotas/%s?stale=1" % TENANT, timeout=2.0)
        if st == 200:
            samples.append((hist.now(), TENANT, body.get("usage") or {}, body.get("limit") or {}))
        for s in topo.sites:
            st, body = s.request("GET", "/v1/quotas/%s" % TENANT, timeout=2.0)
        stop.wait(0.5)


def state_hashes(topo):
    """(node label, hash) of what each replica holds: regional nodes their whole instance set,
    each site and the region's view of that site the site's instances."""
    out = []

    def digest(items):
        return hashlib.sha256(json.dumps(sorted(items)).encode()).hexdigest()[:16]

    for n in topo.region_nodes("r1"):
        st, body = n.request("GET", "/v1/instances?stale=1&deleted=1", timeout=2.0)
        if st == 200:
            items = [(i["id"], i["site"], i["desired"]) for i in body["instances"]]
            out.append(("region", n.id, digest(items)))
            for s in topo.sites:
                out.append((s.id, "r1-%s" % n.id,
                            digest([(a, c) for a, b, c in items if b == s.id])))
    for s in topo.sites:
        st, body = s.request("GET", "/v1/instances?deleted=1", timeout=2.0)
        if st == 200:
            out.append((s.id, s.id, digest([(i["id"], i["desired"]) for i in body["instances"]])))
    return out


def run_once(args, scenario, seed, work):
    rng = random.Random("%s/%s" % (seed, scenario))
    topo = harness.Topology(args.bin_dir, work)
    violations = []
    try:
        topo.start_dev(nodes=3, sites=3)
        ctl = topo.controller
        harness.expect_status(ctl.request_full("POST", "/v1/tenants", {
            "name": TENANT, "quota": {"instances": 40, "cpu_millis": 100000,
                                      "memory_mb": 100000}}), 201, "tenant")
        harness.wait_until(lambda: (topo.leader("r1").request_full(
            "GET", "/v1/quotas/%s" % TENANT).json or {}).get("limit", {}).get("instances") == 40,
            15, "allotment in the region")
        site1 = topo.site("r1-s1")
        st, web = topo.leader("r1").request("POST", "/v1/instances", {
            "name": "probe", "tenant": TENANT, "site": "r1-s1",
            "command": ["python3", "-m", "http.server", str(PROBE_PORT), "--bind", site1.ip],
            "resources": {"cpu_millis": 10, "memory_mb": 8}, "restart": "always"})
        harness.expect_status((st, web), 201, "probe workload")
        url = "http://%s:%d/" % (site1.ip, PROBE_PORT)
        harness.wait_until(lambda: harness.listening("%s:%d" % (site1.ip, PROBE_PORT)), 20,
                           "probe workload answering")

        hist = History(time.monotonic())
        faults = Faults(topo, rng, hist, os.path.join(work, "faults.jsonl"))
        stop = threading.Event()
        probes, quota_samples, created = [], [], []
        threads = [threading.Thread(target=register_client,
                                    args=(stop, hist, topo, p, random.Random(rng.random())))
                   for p in range(3)]
        threads += [threading.Thread(target=instance_client,
                                     args=(stop, hist, topo, 10 + p, random.Random(rng.random()),
                                           created)) for p in range(2)]
        t_probe = threading.Thread(target=prober, args=(stop, probes, url))
        t_quota = threading.Thread(target=quota_sampler, args=(stop, hist, topo, quota_samples))
        for th in threads + [t_probe, t_quota]:
            th.daemon = True
            th.start()
        kinds = SCENARIOS if scenario == "all" else (scenario,)
        heals = []
        end = time.monotonic() + args.duration
        try:
            for _ in range(1000):
                if time.monotonic() >= end:
                    break
                time.sleep(rng.uniform(1.0, 2.0))
                faults.inject(rng.choice(kinds))
                time.sleep(rng.uniform(2.0, 4.0))
                faults.heal()
                heals.append(hist.now())
        finally:
            if faults.heal():
                heals.append(hist.now())
        time.sleep(1.0)
        stop.set()
        for th in threads + [t_probe, t_quota]:
            th.join(10)

        # Convergence after the last heal, sampled until every group agrees (30 s at most).
        samples = []
        deadline = time.monotonic() + CONVERGE_S + 2
        groups = {}
        for _ in range(200):
            now = hist.now()
            for group, node, h in state_hashes(topo):
                samples.append((now, (group, node), h))
            groups = {}
            for _t, (g, n), h in samples:
                groups.setdefault(g, {})[n] = h
            if all(len(set(v.values())) == 1 for v in groups.values()) and groups:
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        for g in groups:
            violations += checkers.check_convergence(
                heals[-1:] or [0.0], [(t, n, h) for t, (gg, n), h in samples if gg == g],
                window=CONVERGE_S)

        violations += checkers.check_linearizable(
            [e for e in hist.events if e["f"] in ("read", "write")])
        # Workloads of deleted instances get their stop grace period: wait (bounded) until no
        # site still reports one running, then take the final observation.
        def settled():
            for s in topo.sites:
                st, body = s.request("GET", "/v1/instances?deleted=1", timeout=5.0)
                if st != 200 or any(i["desired"] != "running" and i["actual"] == "running"
                                    for i in body["instances"]):
                    return False
            return True

        for _ in range(40):
            if settled():
                break
            time.sleep(0.5)
        final = {}
        running = {}
        for s in topo.sites:
            st, body = s.request("GET", "/v1/instances?deleted=1", timeout=5.0)
            if st == 200:
                final[s.id] = {i["id"] for i in body["instances"] if i["desired"] != "deleted"}
                for i in body["instances"]:
                    if i["actual"] == "running":
                        running.setdefault(i["id"], []).append(s.id)
        final["running"] = running
        violations += checkers.check_no_lost_ops(
            [e for e in hist.events if e["f"] in ("create", "delete")], final,
            preexisting=(web["id"],))
        violations += checkers.check_quota(quota_samples)
        violations += checkers.check_availability(
            [(t - hist.t0, ok) for t, ok in probes], faults.cuts, max_gap=1.5)
        violations += checkers.check_single_copy(running)
        with open(os.path.join(work, "history.jsonl"), "w") as f:
            for e in hist.events:
                f.write(json.dumps(e) + "\n")
        with open(os.path.join(work, "violations.json"), "w") as f:
            json.dump(violations, f, indent=2, default=str)
        ops = sum(1 for e in hist.events if e["type"] == "invoke")
        print("seed=%s scenario=%s faults=%d ops=%d violations=%d" % (
            seed, scenario, faults.count, ops, len(violations)), flush=True)
        for v in violations[:10]:
            print("  violation: %s" % v.get("what"), flush=True)
        return violations
    finally:
        topo.stop()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bin-dir", default=os.path.join(HERE, "..", "..", "build", "bin"))
    p.add_argument("--work-dir", default="/tmp/archipel-chaos")
    p.add_argument("--seed", default="1")
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--scenario", default="all", choices=SCENARIOS + ("all",))
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--smoke", action="store_true",
                   help="every scenario once, briefly (the test suite's smoke run)")
    args = p.parse_args()
    args.bin_dir = os.path.abspath(args.bin_dir)
    plan = []
    if args.smoke:
        args.duration = min(args.duration, 4.0)
        plan = [(sc, args.seed) for sc in SCENARIOS]
    else:
        plan = [(args.scenario, args.seed if args.runs == 1 else "%s.%d" % (args.seed, r))
                for r in range(args.runs)]
    bad = 0
    for scenario, seed in plan:
        work = os.path.abspath(os.path.join(args.work_dir, "%s-%s" % (scenario, seed)))
        try:
            failed = bool(run_once(args, scenario, seed, work))
        except Exception as e:  # a run that could not even start counts as failed
            print("seed=%s scenario=%s error=%r" % (seed, scenario, e), flush=True)
            failed = True
        if failed:
            bad += 1
            print("  kept the history and logs of the failing run in %s" % work, flush=True)
        else:
            subprocess.run(["rm", "-rf", work])
    print("chaos: %d run(s), %d with violations" % (len(plan), bad), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
