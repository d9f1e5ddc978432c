"""archipel chaos runner (issue 6): a real topology (`archipel dev`: controller, 1 region of 3
nodes, 3 sites), a seeded schedule of faults, concurrent clients that record a history, and the
checkers of checkers.py over it.

  python3 tests/chaos/chaos.py --bin-dir build/bin --work-dir /tmp/chaos --seed 1 \
      --duration 20 --scenario all [--runs 1]

Faults (each seeded and logged with its time): site-cut (iptables between a site's address and
its region's), one-way-cut (region to site only), node-cut (one regional node from the other
two), controller-cut (the controller from the region), kill (kill -9 of a regional node, restarted
from its `cmd`), pause (SIGSTOP/SIGCONT of a regional node for 2-4 s), clock-skew (a site
restarted under faketime, its clock 1-10 minutes ahead or behind), disk-full (the site whose
data directory is a small tmpfs gets it filled), site-kill (kill -9 of a site, restarted from its
`cmd`; its workloads live on), controller-kill (the same for the controller). The same seed
gives the same schedule.

Clients: registers at the region (PUT/GET /v1/quotas/chaos-kN) and at the controller (PUT
/v1/quotas/chaos-cN, GET /v1/tenants/chaos-cN); instance creates and deletes through regional
nodes and sites; quota-consuming creates of a tenant with a small limit from the controller
(placement), the regional nodes and every site at once. Prints one summary line per run:
  seed=1 scenario=site-cut faults=3 ops=812 violations=0
and keeps the history (history.jsonl), the fault log (faults.jsonl) and every log under the work
dir of a failing run. Exit status: 0 when no run had a violation.
"""

import argparse
import glob
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

SCENARIOS = ("site-cut", "one-way-cut", "node-cut", "controller-cut", "kill", "pause",
             "clock-skew", "disk-full", "site-kill", "controller-kill")
REGION_NET = "127.0.11.0/24"
CONTROLLER_IP = "127.0.10.1"
TENANT = "chaos"
QTENANT = "chaos-q"  # the tenant whose small quota every place competes for
QLIMIT = 6
KEYS = 8  # registers for the linearizability checker (more keys: shorter per-key searches)
CKEYS = 3  # registers at the controller
SKEW_SITE = "r1-s2"  # restarted under faketime by clock-skew
DISK_SITE = "r1-s3"  # its data directory is a small tmpfs (disk-full)
DISK_MB = 48
FAKETIME_LIB = (glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1") or
                ["/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"])[0]  # Debian's libfaketime
PROBE_PORT = 18099
CONVERGE_S = 30.0


def outcome(st, body):
    """History type of a completed write: ok, fail (certainly not done: a 4xx, or a connection
    refused, which no server saw) or info (unknown: timeouts, 5xx)."""
    if st in (200, 201):
        return "ok"
    if 400 <= st < 500:
        return "fail"
    if st == 0 and "refused" in str((body or {}).get("no_answer", "")).lower():
        return "fail"
    return "info"


class History:
    """Thread-safe recorder of invoke/completion events (checkers.py's format)."""

    def __init__(self, t0):
        self.t0 = t0
        self.events = []
        self.homes = {}  # instance id -> the site it was created on
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


def disk_unmount(path):
    subprocess.run(["umount", "-l", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class ChaosTopology(harness.Topology):
    """archipel dev whose DISK_SITE keeps its data on a DISK_MB tmpfs (for disk-full)."""

    def __init__(self, bin_dir, work_dir):
        super().__init__(bin_dir, work_dir)
        self.disk_dir = os.path.join(self.work_dir, "sites", DISK_SITE)

    def prepare(self, addresses):
        disk_unmount(self.disk_dir)
        super().prepare(addresses)
        os.makedirs(self.disk_dir, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%dm" % DISK_MB, "tmpfs",
                        self.disk_dir], check=True)

    def stop(self):
        try:
            super().stop()
        finally:
            disk_unmount(self.disk_dir)


def fill_disk(path):
    """Write a filler file until the file system is full (bounded); returns bytes written."""
    chunk = b"\0" * (1 << 20)
    written = 0
    with open(os.path.join(path, "chaos-filler"), "wb", buffering=0) as f:
        for _ in range(4 * DISK_MB):
            try:
                written += f.write(chunk)
            except OSError:
                break
        for _ in range(64):  # the last, partial blocks
            try:
                written += f.write(chunk[:4096])
            except OSError:
                break
    return written


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
        elif kind == "site-kill":
            site = self.rng.choice(self.topo.sites)
            site.kill9()
            self.note(kind, site=site.id)
            self.active.append((kind, lambda: site.start()))
        elif kind == "controller-kill":
            ctl = self.topo.controller
            ctl.kill9()
            self.note(kind)
            self.active.append((kind, lambda: ctl.start()))
        elif kind == "clock-skew":
            site = self.topo.site(SKEW_SITE)
            offset = self.rng.choice((-1, 1)) * self.rng.randint(60, 600)
            normal = list(site.cmd)
            site.kill9()
            # Through env, which execs: the faketime wrapper forks, and kill -9 of the wrapper
            # would leave the site running.
            site.start(cmd=["env", "LD_PRELOAD=" + FAKETIME_LIB, "FAKETIME=%+d" % offset]
                       + normal)
            self.note(kind, site=site.id, offset_s=offset)

            def undo():
                site.kill9()
                site.start(cmd=normal)
            self.active.append((kind, undo))
        elif kind == "disk-full":
            path = self.topo.disk_dir
            n = fill_disk(path)
            self.note(kind, site=DISK_SITE, filler_bytes=n)
            self.active.append((kind, lambda: os.unlink(os.path.join(path, "chaos-filler"))))

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


def register_client(stop, hist, topo, pid, rng, at_controller=False):
    """Writes and reads per-key registers for the linearizability checker. In the region: a
    tenant's regional instance limit (PUT/GET /v1/quotas/chaos-kN on any regional node; reads
    are linearizable by default). At the controller: a tenant's global quota (PUT
    /v1/quotas/chaos-cN, read back with GET /v1/tenants/chaos-cN, both through its raft
    group); those keys are named "ctl:chaos-cN" in the history."""
    seq = 0
    for _ in range(100000):
        if stop.is_set():
            return
        if at_controller:
            tenant = "chaos-c%d" % rng.randrange(CKEYS)
            key, node, read_path = "ctl:" + tenant, topo.controller, "/v1/tenants/%s" % tenant
        else:
            tenant = key = "chaos-k%d" % rng.randrange(KEYS)
            node, read_path = rng.choice(topo.region_nodes("r1")), "/v1/quotas/%s" % tenant
        if rng.random() < 0.5:
            seq += 1
            v = pid * 100000 + seq
            hist.add(pid, "invoke", "write", key, v)
            st, body = node.request("PUT", "/v1/quotas/%s" % tenant, {"instances": v},
                                    timeout=2.0)
            hist.add(pid, outcome(st, body), "write", key, v)
        else:
            hist.add(pid, "invoke", "read", key, None)
            st, body = node.request("GET", read_path, timeout=2.0)
            if st == 200:
                quota = body.get("quota" if at_controller else "limit") or {}
                hist.add(pid, "ok", "read", key, quota.get("instances"))
            else:
                hist.add(pid, "fail", "read", key, None)
        stop.wait(0.05 if st == 0 or st >= 500 else 0.02)


def instance_body(tenant, name, site=None):
    body = {"name": name, "tenant": tenant, "command": ["sleep", "3600"],
            "resources": {"cpu_millis": 10, "memory_mb": 8}, "restart": "never"}
    if site is not None:
        body["site"] = site
    return body


def record_create(hist, pid, st, resp, created, site):
    """Complete a create in the history; remember (id, site) of an acknowledged one (in
    created, and for good in hist.homes)."""
    if st == 201 and isinstance(resp, dict):
        inst = resp.get("instance") if "instance" in resp else resp
        hist.add(pid, "ok", "create", None, inst["id"])
        created.append((inst["id"], inst.get("site") or site))
        hist.homes[inst["id"]] = inst.get("site") or site
    else:
        hist.add(pid, outcome(st, resp), "create", None, None)


def instance_client(stop, hist, topo, pid, rng, created):
    """Manages its own instances of TENANT: creates (through the region or a site), stops,
    starts and deletes them through a regional node or their site. One client per instance,
    one command at a time: checker 7 expects the last acknowledged command to win."""
    n = 0
    live = []
    for _ in range(100000):
        if stop.is_set():
            return
        r = rng.random()
        if live and r < 0.45:
            iid, site = rng.choice(live)
            f = "delete" if r < 0.12 else rng.choice(("stop", "start"))
            via = rng.choice(topo.region_nodes("r1") + [topo.site(site)])
            hist.add(pid, "invoke", f, None, iid)
            if f == "delete":
                st, body = via.request("DELETE", "/v1/instances/%s" % iid, timeout=3.0)
            else:
                st, body = via.request("POST", "/v1/instances/%s/%s" % (iid, f), timeout=3.0)
            hist.add(pid, outcome(st, body), f, None, iid)
            if f == "delete" and st == 200:
                live.remove((iid, site))
        else:
            n += 1
            site = rng.choice(["r1-s1", "r1-s2", "r1-s3"])
            via_site = rng.random() < 0.5
            via = topo.site(site) if via_site else rng.choice(topo.region_nodes("r1"))
            body = instance_body(TENANT, "c%d-%d" % (pid, n), None if via_site else site)
            hist.add(pid, "invoke", "create", None, body["name"])
            st, resp = via.request("POST", "/v1/instances", body, timeout=3.0)
            record_create(hist, pid, st, resp, live, site)
        stop.wait(0.05)
    created.extend(live)


def quota_client(stop, hist, topo, pid, rng, created):
    """Competes for QTENANT's small quota from every place at once: the controller (placement),
    a regional node (site named) and each site itself; deletes some to make room again."""
    n = 0
    for _ in range(100000):
        if stop.is_set():
            return
        if created and rng.random() < 0.35:
            iid, site = created.pop(rng.randrange(len(created)))
            via = rng.choice(topo.region_nodes("r1") + [topo.site(site), topo.controller])
            hist.add(pid, "invoke", "delete", None, iid)
            st, body = via.request("DELETE", "/v1/instances/%s" % iid, timeout=3.0)
            hist.add(pid, outcome(st, body), "delete", None, iid)
            if st != 200 and st not in (404, 409):
                created.append((iid, site))  # try again later
        else:
            n += 1
            site = rng.choice(["r1-s1", "r1-s2", "r1-s3"])
            place = rng.choice(("controller", "region", "site"))
            name = "q%d-%d" % (pid, n)
            if place == "controller":
                via, body, site = topo.controller, instance_body(QTENANT, name), None
            elif place == "region":
                via, body = rng.choice(topo.region_nodes("r1")), instance_body(QTENANT, name, site)
            else:
                via, body = topo.site(site), instance_body(QTENANT, name)
            hist.add(pid, "invoke", "create", None, name)
            st, resp = via.request("POST", "/v1/instances", body, timeout=3.0)
            record_create(hist, pid, st, resp, created, site)
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


def quota_sampler(stop, hist, topo, samples, index_samples):
    """Every 0.5 s: both tenants' usage against the region's limits; on every site, QTENANT's
    usage against the rights it holds; every regional replica's applied index and catalog
    hash."""
    for _ in range(100000):
        if stop.is_set():
            return
        node = topo.region_nodes("r1")[0]
        for tenant in (TENANT, QTENANT):
            st, body = node.request("GET", "/v1/quotas/%s?stale=1" % tenant, timeout=2.0)
            if st == 200:
                samples.append((hist.now(), tenant, body.get("usage") or {},
                                body.get("limit") or {}))
        for s in topo.sites:
            st, body = s.request("GET", "/v1/quotas/%s" % QTENANT, timeout=2.0)
            if st == 200:
                samples.append((hist.now(), "%s@%s" % (QTENANT, s.id), body.get("usage") or {},
                                body.get("held") or {}))
        for n in topo.region_nodes("r1"):
            st, body = n.request("GET", "/v1/state/hash", timeout=2.0)
            if st == 200:
                index_samples.append((hist.now(), "r1-%s" % n.id, body["applied_index"],
                                      body["catalog"]))
        stop.wait(0.5)


def state_hashes(topo):
    """(group, node label, hash) of what each replica holds (GET /v1/state/hash): the regional
    replicas' whole catalogs; per site, the site's shard and each replica's view of that site
    (instance records and quota rights)."""
    out = []
    for n in topo.region_nodes("r1"):
        st, body = n.request("GET", "/v1/state/hash", timeout=2.0)
        if st == 200:
            out.append(("catalog", "r1-%s" % n.id, body["catalog"]))
            for s in topo.sites:
                h = body["sites"].get(s.id) or {}
                out.append((s.id, "r1-%s" % n.id, "%s/%s" % (h.get("instances"),
                                                            h.get("rights"))))
    for s in topo.sites:
        st, body = s.request("GET", "/v1/state/hash", timeout=2.0)
        if st == 200:
            out.append((s.id, s.id, "%s/%s" % (body["instances"], body["rights"])))
    return out


def rights_snapshot(topo):
    """QTENANT's rights after the heal: the region's unassigned part plus what each site holds
    unused (its own view) plus what is consumed must equal the region's limit."""
    st, region = topo.leader("r1").request("GET", "/v1/quotas/%s" % QTENANT, timeout=5.0)
    if st != 200:
        return {}
    snap = {}
    for res in ("instances", "cpu_millis", "memory_mb"):
        limit = (region.get("limit") or {}).get(res)
        if limit is None:
            continue
        held = {"unassigned": (region.get("unassigned") or {}).get(res, 0)}
        consumed = 0
        for s in topo.sites:
            st, body = s.request("GET", "/v1/quotas/%s" % QTENANT, timeout=5.0)
            if st != 200:
                return {}
            used = (body.get("usage") or {}).get(res, 0)
            held[s.id] = (body.get("held") or {}).get(res, 0) - used
            consumed += used
        snap[(QTENANT, res)] = {"granted": limit, "held": held, "consumed": consumed,
                                "limit": limit}
    return snap


def run_once(args, scenario, seed, work):
    rng = random.Random("%s/%s" % (seed, scenario))
    topo = ChaosTopology(args.bin_dir, work)
    violations = []
    try:
        topo.start_dev(nodes=3, sites=3)
        ctl = topo.controller
        harness.expect_status(ctl.request_full("POST", "/v1/tenants", {
            "name": TENANT, "quota": {"instances": 40, "cpu_millis": 100000,
                                      "memory_mb": 100000}}), 201, "tenant")
        harness.expect_status(ctl.request_full("POST", "/v1/tenants", {
            "name": QTENANT, "quota": {"instances": QLIMIT}}), 201, "quota tenant")
        for k in range(CKEYS):
            harness.expect_status(ctl.request_full("POST", "/v1/tenants", {
                "name": "chaos-c%d" % k}), 201, "register tenant")
        harness.wait_until(lambda: (topo.leader("r1").request_full(
            "GET", "/v1/quotas/%s" % QTENANT).json or {}).get("limit", {}).get("instances")
            == QLIMIT, 15, "allotment in the region")
        for s in topo.sites:  # what each site may spend while cut off
            harness.expect_status(topo.leader("r1").request_full(
                "PUT", "/v1/quotas/%s/reserves/%s" % (QTENANT, s.id), {"instances": 1}), 200,
                "reserve")
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
        probes, quota_samples, index_samples, created, qcreated = [], [], [], [], []
        threads = [threading.Thread(target=register_client,
                                    args=(stop, hist, topo, p, random.Random(rng.random())))
                   for p in range(3)]
        threads += [threading.Thread(target=register_client,
                                     args=(stop, hist, topo, 5, random.Random(rng.random()),
                                           True))]
        threads += [threading.Thread(target=instance_client,
                                     args=(stop, hist, topo, 10 + p, random.Random(rng.random()),
                                           created)) for p in range(3)]
        threads += [threading.Thread(target=quota_client,
                                     args=(stop, hist, topo, 20 + p, random.Random(rng.random()),
                                           qcreated)) for p in range(3)]
        t_probe = threading.Thread(target=prober, args=(stop, probes, url))
        t_quota = threading.Thread(target=quota_sampler,
                                   args=(stop, hist, topo, quota_samples, index_samples))
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
        violations += checkers.check_same_index(index_samples)

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
        desired = {}
        for s in topo.sites:
            st, body = s.request("GET", "/v1/instances?deleted=1", timeout=5.0)
            if st == 200:
                final[s.id] = {i["id"] for i in body["instances"] if i["desired"] != "deleted"}
                desired.update((i["id"], i["desired"]) for i in body["instances"])
                for i in body["instances"]:
                    if i["actual"] == "running":
                        running.setdefault(i["id"], []).append(s.id)
        final["running"] = running
        # An acknowledged instance must be on the site it was created for.
        violations += checkers.check_no_lost_ops(
            [e for e in hist.events if e["f"] in ("create", "delete")], final,
            must_hold=lambda iid: [hist.homes.get(iid) or "(site unknown)"],
            preexisting=(web["id"],))
        rights = rights_snapshot(topo)
        if not rights:
            violations.append({"checker": "quota", "kind": "no-rights",
                               "what": "could not read %s's rights after the heal" % QTENANT})
        violations += checkers.check_quota(quota_samples, rights)
        violations += checkers.check_availability(
            [(t - hist.t0, ok) for t, ok in probes], faults.cuts, max_gap=1.5)
        violations += checkers.check_single_copy(running)
        violations += checkers.check_final_desired(
            [e for e in hist.events if e["f"] in ("create", "stop", "start", "delete")], desired)
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
    p.add_argument("--regressions", metavar="FILE",
                   help="run every 'seed scenario duration' line of FILE (regressions.txt)")
    p.add_argument("--keep", action="store_true",
                   help="keep the work dir of passing runs too")
    p.add_argument("--smoke", action="store_true",
                   help="every scenario once, briefly (the test suite's smoke run)")
    args = p.parse_args()
    args.bin_dir = os.path.abspath(args.bin_dir)
    plan = []
    durations = {}
    if args.regressions:
        with open(args.regressions) as f:
            for line in f:
                if line.strip() and not line.startswith("#"):
                    seed, scenario, duration = line.split()[:3]
                    if scenario not in SCENARIOS + ("all",):
                        p.error("%s: unknown scenario %r" % (args.regressions, scenario))
                    plan.append((scenario, seed))
                    durations[(scenario, seed)] = float(duration)
    elif args.smoke:
        args.duration = min(args.duration, 4.0)
        plan = [(sc, args.seed) for sc in SCENARIOS]
    else:
        plan = [(args.scenario, args.seed if args.runs == 1 else "%s.%d" % (args.seed, r))
                for r in range(args.runs)]
    bad = 0
    for scenario, seed in plan:
        work = os.path.abspath(os.path.join(args.work_dir, "%s-%s" % (scenario, seed)))
        args.duration = durations.get((scenario, seed), args.duration)
        try:
            failed = bool(run_once(args, scenario, seed, work))
        except Exception as e:  # a run that could not even start counts as failed
            print("seed=%s scenario=%s error=%r" % (seed, scenario, e), flush=True)
            failed = True
        if failed:
            bad += 1
            print("  kept the history and logs of the failing run in %s" % work, flush=True)
        elif not args.keep:
            subprocess.run(["rm", "-rf", work])
    print("chaos: %d run(s), %d with violations" % (len(plan), bad), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
