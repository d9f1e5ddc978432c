"""The archipel CLI against a real region node and site on 127.0.99.x, and a stand-in controller.

Starts one archipel-regional (region r9, 127.0.99.1) and one archipel-edge (site r9-s1,
127.0.99.2), then drives the built `archipel` with a private XDG_CONFIG_HOME: sites and
instances through the region and through the site, -o json against the tables, config file and
environment precedence, usage errors (exit 2, one line, no request sent), unreachable endpoints
and server errors (exit 1). Routes only the controller serves (tokens, tenants, users, regions,
placement, fan-out answers with "partial") are answered by a small HTTP stand-in on 127.0.99.3
that records every request, so the test checks what the CLI sends as well as what it prints.

Run by ctest with --bin-dir and --work-dir; by hand, `python3 tests/integration/test_cli.py`
uses $AP_BIN_DIR (default build/bin) and a work dir under /tmp.
"""

import http.server
import json
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time

import harness
from harness import wait_until

REGION_IP = "127.0.99.1"
SITE_IP = "127.0.99.2"
FAKE_IP = "127.0.99.3"
REGION = "%s:%d" % (REGION_IP, harness.HTTP_PORT)
SITE_HTTP = "%s:%d" % (SITE_IP, harness.SITE_PORT)
FAKE = "%s:7000" % FAKE_IP
NOWHERE = "127.0.99.9:7100"  # nothing listens there
CLI_TIMEOUT = 60.0

TOKEN = "ap1.cli-test-token"
UUID1 = "019abf3e-5f0c-7d2a-9b1e-0c4f6a7e8d21"
UUID2 = "019abf3e-5f0c-7d2a-9b1e-0c4f6a7e8d22"
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

NOUNS = {
    "login": [None],
    "region": ["list"],
    "site": ["list", "show", "create", "delete", "cordon", "uncordon"],
    "instance": ["create", "list", "show", "logs", "stop", "start", "delete"],
    "tenant": ["create", "list"],
    "user": ["create", "grant", "revoke", "list"],
    "quota": ["show", "set", "reserve"],
    "placement": ["explain"],
}


# ---------------------------------------------------------------------------------------------
# running the CLI


class Result:
    def __init__(self, args, code, out, err):
        self.args, self.code, self.out, self.err = args, code, out, err

    def __repr__(self):
        return "archipel %s -> exit %s\n  stdout: %r\n  stderr: %r" % (
            " ".join(self.args), self.code, self.out[:600], self.err[:600])


class Cli:
    """The built archipel, run with a private config dir and no ARCHIPEL_* or proxy variables."""

    def __init__(self, bin_dir, home):
        self.path = os.path.join(bin_dir, "archipel")
        self.home = home
        self.config = os.path.join(home, "xdg", "archipel", "config.json")
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("ARCHIPEL_") and not k.lower().endswith("_proxy")}
        self.env.update({"HOME": home, "XDG_CONFIG_HOME": os.path.join(home, "xdg"),
                         "AP_LOG_LEVEL": "error"})

    def run(self, *args, stdin="", env=None):
        e = dict(self.env)
        e.update(env or {})
        e = {k: v for k, v in e.items() if v is not None}
        p = subprocess.run([self.path] + list(args), input=stdin, capture_output=True,
                           text=True, env=e, timeout=CLI_TIMEOUT)
        return Result(list(args), p.returncode, p.stdout, p.stderr)

    def ok(self, *args, **kw):
        r = self.run(*args, **kw)
        if r.code != 0:
            raise AssertionError("want exit 0: %r" % r)
        return r

    def fails(self, code, *args, mentions=(), **kw):
        """Run and expect exit code with one line on stderr that mentions every string."""
        r = self.run(*args, **kw)
        if r.code != code:
            raise AssertionError("want exit %d: %r" % (code, r))
        lines = r.err.strip().splitlines()
        if len(lines) != 1 or not lines[0].startswith("archipel: "):
            raise AssertionError("want one 'archipel: ...' line on stderr: %r" % r)
        for m in ((mentions,) if isinstance(mentions, str) else mentions):
            if m not in lines[0]:
                raise AssertionError("stderr does not mention %r: %r" % (m, r))
        return r

    def json(self, *args, **kw):
        r = self.ok("-o", "json", *args, **kw)
        try:
            return json.loads(r.out)
        except ValueError as e:
            raise AssertionError("-o json printed no JSON (%s): %r" % (e, r))


def table(text):
    """Parse an aligned table: [{HEADER: cell}], cutting each line at the header's columns."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise AssertionError("no table in %r" % text)
    head = lines[0]
    starts = [m.start() for m in re.finditer(r"\S+", head)]
    names = head.split()
    if head != head.upper() or len(starts) != len(names):
        raise AssertionError("bad header row %r" % head)
    rows = []
    for line in lines[1:]:
        row = {}
        for i, name in enumerate(names):
            end = starts[i + 1] if i + 1 < len(starts) else None
            if i > 0 and line[starts[i] - 1:starts[i]] not in (" ", ""):
                raise AssertionError("column %s is not aligned in %r" % (name, line))
            row[name] = line[starts[i]:end].strip()
        rows.append(row)
    return rows


def kv(text):
    """Parse "key: value" lines into a dict."""
    out = {}
    for line in text.splitlines():
        k, sep, v = line.partition(":")
        if sep:
            out[k.strip()] = v.strip()
    return out


def expect(cond, what, *show):
    if not cond:
        raise AssertionError(what + "".join("\n  %r" % s for s in show))


# ---------------------------------------------------------------------------------------------
# a stand-in for the controller's routes


def err(status, code, message):
    return status, {"error": {"code": code, "message": message, "details": {}}}


class FakeController:
    """HTTP server on FAKE answering the controller routes with fixed documents; it records
    (method, path with query, headers, parsed body) of every request in .requests."""

    def __init__(self):
        self.requests = []
        self.lock = threading.Lock()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def answer(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = "not json: %r" % raw[:100]
                with fake.lock:
                    fake.requests.append((self.command, self.path, dict(self.headers), body))
                status, doc = fake.route(self.command, self.path, self.headers, body)
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = answer

        host, port = FAKE.split(":")
        self.server = http.server.ThreadingHTTPServer((host, int(port)), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def count(self):
        with self.lock:
            return len(self.requests)

    def last(self):
        with self.lock:
            return self.requests[-1]

    def route(self, method, path, headers, body):
        if (method, path) == ("POST", "/v1/tokens"):
            if body == {"user": "alice", "password": "s3cret"}:
                return 201, {"token": TOKEN, "expires_at": "2030-01-01T00:00:00Z",
                             "user": "alice"}
            return err(401, "unauthenticated", "wrong user or password")
        if headers.get("Authorization") != "Bearer " + TOKEN:
            return err(401, "unauthenticated", "a valid token is required")
        inst1 = {"id": UUID1, "name": "web", "tenant": "acme", "site": "a1",
                 "desired": "running", "actual": "pending", "pid": None, "restarts": 0}
        fixed = {
            ("GET", "/v1/sites"): (200, {
                "sites": [
                    {"name": "a1", "region": "r1", "state": "connected",
                     "capacity": {"cpu_millis": 4000, "memory_mb": 8192, "instances": 10},
                     "usage": {"cpu_millis": 500, "memory_mb": 256, "instances": 2},
                     "labels": {"zone": "north", "tier": "gold"}},
                    {"name": "a2", "region": "r1", "state": "cordoned",
                     "capacity": {"cpu_millis": 2000}, "labels": {}}],
                "partial": True, "unreachable": ["r2", "r3"]}),
            ("POST", "/v1/instances:stop"): (200, {"results": [
                {"id": UUID1, "site": "a1", "status": "stopped"},
                {"id": UUID2, "site": "a2", "status": "failed",
                 "error": {"code": "unavailable", "message": "site a2 is unreachable"}}]}),
            ("GET", "/v1/regions"): (200, {"regions": [
                {"name": "r1", "nodes": [{"id": 1, "http": "127.0.11.1:7100"},
                                         {"id": 2, "http": "127.0.11.2:7100"}],
                 "link": "connected", "sites": ["a1", "a2"]}]}),
            ("GET", "/v1/tenants"): (200, {"tenants": [
                {"name": "acme", "quota": {"instances": 10, "cpu_millis": 4000,
                                           "memory_mb": None},
                 "usage": {"instances": 2, "cpu_millis": 200, "memory_mb": 128}}]}),
            ("GET", "/v1/users?tenant=acme"): (200, {"users": [
                {"name": "alice", "tenant": "acme", "grants": [
                    {"id": 1, "role": "admin", "tenant": "acme", "scope": {}},
                    {"id": 2, "role": "reader", "tenant": "beta",
                     "scope": {"sites": ["a1", "a2"]}}]},
                {"name": "bob", "tenant": "acme", "grants": []}]}),
            ("DELETE", "/v1/users/bob/grants/3"): (200, {"id": 3, "status": "revoked"}),
            ("GET", "/v1/quotas/acme"): (200, {
                "tenant": "acme",
                "limit": {"instances": 10, "cpu_millis": 4000, "memory_mb": 4096},
                "usage": {"instances": 2, "cpu_millis": 200, "memory_mb": 128},
                "allotments": [{"region": "r1",
                                "allotment": {"instances": 6, "cpu_millis": 3000,
                                              "memory_mb": 3000}}]}),
            ("POST", "/v1/placements:explain"): (200, {
                "region": "r1", "chosen": "a1",
                "candidates": [{"site": "a1", "kept": True, "why": "fits", "score": 0.75},
                               {"site": "a2", "kept": False, "why": "cordoned", "score": None}],
                "unreachable": ["r2"]}),
        }
        if (method, path.split("?")[0]) == ("GET", "/v1/sites"):
            return fixed[("GET", "/v1/sites")]
        if (method, path) in fixed:
            return fixed[(method, path)]
        if (method, path) == ("POST", "/v1/instances"):
            if "sites" in body:
                return 207, {"results": [
                    {"site": "a1", "status": 201, "instance": inst1},
                    {"site": "a2", "status": 403,
                     "error": {"code": "quota_exceeded", "message": "no quota left on a2"}}]}
            return 201, inst1
        if (method, path) == ("POST", "/v1/tenants"):
            return 201, {"name": body["name"], "quota": body.get("quota", {}), "usage": {}}
        if (method, path) == ("POST", "/v1/users"):
            return 201, {"name": body["name"], "tenant": body["tenant"], "grants": []}
        if (method, path) == ("POST", "/v1/users/bob/grants"):
            return 201, dict(body, id=3)
        if method == "GET" and path.startswith("/v1/instances"):
            return 200, {"instances": [inst1], "partial": False}
        return err(404, "not_found", "no route %s %s" % (method, path))


# ---------------------------------------------------------------------------------------------
# daemons


def start_daemons(t, topo, work):
    """The region node, the site registered through the CLI, and the site daemon."""
    bin_dir = t.args.bin_dir
    addrs = [REGION, "%s:%d" % (REGION_IP, harness.RAFT_PORT), "%s:7102" % REGION_IP, SITE_HTTP,
             FAKE]
    topo.prepare(addrs)
    region = harness.Node(
        topo, "r9", 1, REGION_IP,
        [os.path.join(bin_dir, "archipel-regional"), "--region", "r9", "--id", "1", "--ip",
         REGION_IP, "--dir", os.path.join(work, "r9-1"), "--peer",
         "1,%s:%d,%s:%d" % (REGION_IP, harness.RAFT_PORT, REGION_IP, harness.HTTP_PORT)],
        os.path.join(work, "logs", "r9-1.log"))
    topo.nodes.append(region)
    region.start()
    wait_until(lambda: (region.health() or {}).get("role") == "leader", 30,
               "r9 node 1 is leader")
    site = harness.Node(
        topo, "r9", "r9-s1", SITE_IP,
        [os.path.join(bin_dir, "archipel-edge"), "--site", "r9-s1", "--region", "r9", "--ip",
         SITE_IP, "--dir", os.path.join(work, "r9-s1"), "--region-node", "%s:7102" % REGION_IP],
        os.path.join(work, "logs", "r9-s1.log"), http_port=harness.SITE_PORT)
    topo.nodes.append(site)
    return region, site


def stop_workloads(work, timeout=15.0):
    """SIGTERM the archipel-shim supervisors of this work dir (workloads outlive their site
    daemon by design) and wait for them to stop their workloads."""
    shims = [p for p in harness.processes_using(work)
             if os.path.basename((harness._cmdline(p) or [""])[0]) == "archipel-shim"]
    for p in shims:
        try:
            os.kill(p, signal.SIGTERM)
        except OSError:
            pass
    try:
        wait_until(lambda: not any(harness._pid_alive(p) for p in shims), timeout,
                   "workload supervisors stopped")
    except harness.WaitTimeout:
        pass  # topology.stop() SIGKILLs what is left


# ---------------------------------------------------------------------------------------------
# checks against the real region and site


def check_site_create_and_list(cli, site_node):
    r = cli.ok("--endpoint", REGION, "site", "create", "r9-s1", "--label", "zone=south",
               "--label", "tier=gold", "--cpu-millis", "4000", "--memory-mb", "8192",
               "--instances", "10")
    rows = table(r.out)
    expect(len(rows) == 1 and rows[0]["NAME"] == "r9-s1" and rows[0]["CPU"] == "4000",
           "site create prints the site as one row", r)
    expect(sorted(rows[0]["LABELS"].split(",")) == ["tier=gold", "zone=south"],
           "labels as k=v,k=v", r)
    site_node.start()
    # Global flags may also follow the command.
    wait_until(lambda: table(cli.ok("site", "list", "--endpoint", REGION).out)[0]["STATE"] ==
               "connected", 30, "site r9-s1 connected, as `site list` shows")


def check_site_json_matches_table(cli):
    rows = table(cli.ok("site", "list", "--endpoint", REGION).out)
    doc = cli.json("site", "list", "--endpoint", REGION)
    expect(isinstance(doc, dict) and list(doc)[:1] == ["sites"] and doc.get("region") == "r9",
           "-o json is the region's answer, keys in the order sent", doc)
    expect([s["name"] for s in doc["sites"]] == [row["NAME"] for row in rows],
           "same sites in the table and the JSON", rows, doc)
    for s, row in zip(doc["sites"], rows):
        want = {"REGION": "r9", "STATE": s["state"], "CPU": str(s["capacity"]["cpu_millis"]),
                "MEM": str(s["capacity"]["memory_mb"]),
                "INSTANCES": str(s["capacity"]["instances"])}
        got = {k: row[k] for k in want}
        expect(got == want, "table row matches the JSON", got, want)


def check_site_show_delete(cli):
    shown = kv(cli.ok("--endpoint", REGION, "site", "show", "r9-s1").out)
    expect(shown.get("name") == "r9-s1" and
           sorted(shown.get("labels", "").split()) == ["tier=gold", "zone=south"] and
           shown.get("state") == "connected", "site show prints key: value lines", shown)
    cli.ok("--endpoint", REGION, "site", "create", "r9-tmp")
    rows = table(cli.ok("--endpoint", REGION, "site", "delete", "r9-tmp").out)
    expect(rows[0]["NAME"] == "r9-tmp", "site delete prints the deleted site", rows)
    cli.fails(1, "--endpoint", REGION, "site", "show", "r9-tmp",
              mentions=("(not_found, HTTP 404)",))
    names = [row["NAME"] for row in table(cli.ok("--endpoint", REGION, "site", "list").out)]
    expect(names == ["r9-s1"], "the deleted site is gone from the list", names)


def check_config_precedence(cli):
    os.makedirs(os.path.dirname(cli.config), exist_ok=True)
    with open(cli.config, "w") as f:
        json.dump({"endpoint": "http://%s" % REGION}, f)
    rows = table(cli.ok("site", "list").out)
    expect(rows[0]["NAME"] == "r9-s1", "the config file's endpoint is used", rows)
    cli.fails(1, "site", "list", env={"ARCHIPEL_ENDPOINT": NOWHERE},
              mentions=("cannot reach http://%s" % NOWHERE,))
    cli.ok("site", "list", "--endpoint", REGION, env={"ARCHIPEL_ENDPOINT": NOWHERE})
    os.unlink(cli.config)
    cli.fails(2, "site", "list", mentions=("no endpoint",))


def instance_ids(cli, endpoint, *flags):
    return [row["ID"] for row in table(cli.ok("--endpoint", endpoint, "instance", "list",
                                              *flags).out)]


def check_instances_via_region(cli):
    r = cli.ok("--endpoint", REGION, "instance", "create", "web", "--tenant", "acme", "--site",
               "r9-s1", "--cpu-millis", "10", "--memory-mb", "16", "--env", "GREETING=hello",
               "--restart", "always", "--wait", "--",
               "sh", "-c", 'echo "$GREETING from web"; echo oops >&2; exec sleep 120')
    rows = table(r.out)
    expect(len(rows) == 1 and rows[0]["ACTUAL"] == "running" and rows[0]["PID"].isdigit(),
           "--wait returns once the instance runs, and prints it", r)
    expect(r.err == "", "no progress on a non-terminal stderr without --progress", r)
    iid = rows[0]["ID"]
    expect(UUID_RE.match(iid), "the ID column holds the instance id", rows)

    r = cli.ok("--endpoint", REGION, "instance", "create", "web2", "--tenant", "acme", "--site",
               "r9-s1", "--cpu-millis", "10", "--memory-mb", "16", "--wait", "--progress",
               "--", "sleep", "120")
    expect(re.search(r"instance [0-9a-f-]{36}: running", r.err),
           "--progress prints progress lines on stderr", r)
    iid2 = table(r.out)[0]["ID"]

    rows = table(cli.ok("--endpoint", REGION, "instance", "list").out)
    doc = cli.json("--endpoint", REGION, "instance", "list")
    expect([i["id"] for i in doc["instances"]] == [row["ID"] for row in rows] and
           {iid, iid2} <= {row["ID"] for row in rows},
           "instance list: the table and -o json list the same instances", rows, doc)
    for inst, row in zip(doc["instances"], rows):
        want = [inst["name"], inst["tenant"], inst["site"], inst["desired"],
                str(inst["pid"]) if inst["pid"] is not None else "-", str(inst["restarts"])]
        got = [row[k] for k in ("NAME", "TENANT", "SITE", "DESIRED", "PID", "RESTARTS")]
        expect(got == want, "table row matches the JSON", got, want)
    expect(instance_ids(cli, REGION, "--tenant", "other") == [],
           "--tenant filters the list (header only)")

    shown = kv(cli.ok("--endpoint", REGION, "instance", "show", iid).out)
    expect(shown.get("id") == iid and shown.get("env") == "GREETING=hello" and
           shown.get("resources") == "cpu_millis=10 memory_mb=16",
           "instance show prints every field", shown)
    return iid, iid2


def actual(cli, endpoint, iid):
    return cli.json("--endpoint", endpoint, "instance", "show", iid)["actual"]


def check_logs(cli, iid):
    wait_until(lambda: cli.ok("--endpoint", SITE_HTTP, "instance", "logs", iid).out ==
               "hello from web\n", 15, "stdout log holds the greeting")
    r = cli.ok("--endpoint", SITE_HTTP, "instance", "logs", iid, "--stream", "stderr",
               "--tail", "1")
    expect(r.out == "oops\n", "--stream stderr --tail 1 prints the last stderr line", r)
    cli.fails(2, "--endpoint", SITE_HTTP, "instance", "logs", iid, "--stream", "both",
              mentions=("--stream",))


def check_stop_start_delete(cli, iid):
    rows = table(cli.ok("--endpoint", REGION, "instance", "stop", iid).out)
    expect(rows[0]["DESIRED"] == "stopped", "stop answers desired stopped", rows)
    wait_until(lambda: actual(cli, REGION, iid) == "stopped", 20, "instance stopped")
    rows = table(cli.ok("--endpoint", REGION, "instance", "start", iid).out)
    expect(rows[0]["DESIRED"] == "running", "start answers desired running", rows)
    wait_until(lambda: actual(cli, REGION, iid) == "running", 20, "instance running again")


def check_instances_via_site(cli, iid):
    r = cli.ok("--endpoint", SITE_HTTP, "instance", "create", "local", "--tenant", "acme",
               "--cpu-millis", "10", "--memory-mb", "16", "--wait", "--", "sleep", "120")
    local = table(r.out)[0]
    expect(local["SITE"] == "r9-s1" and local["ACTUAL"] == "running",
           "a create on the site runs there", r)
    on_site = instance_ids(cli, SITE_HTTP)
    expect(local["ID"] in on_site and iid in on_site,
           "the site lists its own and the region's instances", on_site)
    wait_until(lambda: local["ID"] in instance_ids(cli, REGION), 20,
               "the site's instance reaches the region")
    rows = table(cli.ok("--endpoint", SITE_HTTP, "instance", "stop", local["ID"]).out)
    expect(rows[0]["DESIRED"] == "stopped", "stop on the site", rows)
    wait_until(lambda: actual(cli, SITE_HTTP, local["ID"]) == "stopped", 20,
               "local instance stopped")
    cli.ok("--endpoint", SITE_HTTP, "instance", "start", local["ID"])
    wait_until(lambda: actual(cli, SITE_HTTP, local["ID"]) == "running", 20,
               "local instance running again")
    rows = table(cli.ok("--endpoint", SITE_HTTP, "instance", "delete", local["ID"]).out)
    expect(rows[0]["DESIRED"] == "deleted", "delete on the site", rows)
    return local["ID"]


def check_delete_all(cli, ids):
    for iid in ids:
        rows = table(cli.ok("--endpoint", REGION, "instance", "delete", iid).out)
        expect(rows[0]["DESIRED"] == "deleted", "delete answers desired deleted", rows)
    wait_until(lambda: not set(ids) & set(instance_ids(cli, REGION)), 20,
               "deleted instances leave the default list")
    deleted = {row["ID"]: row for row in table(cli.ok("--endpoint", REGION, "instance", "list",
                                                      "--deleted").out)}
    expect(set(ids) <= set(deleted) and all(deleted[i]["DESIRED"] == "deleted" for i in ids),
           "--deleted lists them as deleted", deleted)
    cli.fails(1, "--endpoint", REGION, "instance", "start", ids[0],
              mentions=("(conflict, HTTP 409)",))


def explain(cli):
    r = cli.ok("--endpoint", REGION, "placement", "explain", "--tenant", "acme",
               "--cpu-millis", "10", "--memory-mb", "16", "--require-label", "zone=south")
    head, _, rest = r.out.partition("\n\n")
    return kv(head), {row["SITE"]: row for row in table(rest)}


def check_cordon_and_placement(cli):
    rows = table(cli.ok("--endpoint", REGION, "site", "cordon", "r9-s1").out)
    expect(rows[0]["STATE"].endswith(",cordoned"), "site cordon shows the site cordoned", rows)
    head, cands = wait_until(lambda: (lambda e: e if e[1]["r9-s1"]["WHY"] == "cordoned" else
                                      None)(explain(cli)), 10, "explain sees the cordon")
    expect(head.get("chosen") == "-" and cands["r9-s1"]["KEPT"] == "false",
           "a cordoned site is not chosen", head, cands)
    cli.fails(1, "--endpoint", REGION, "instance", "create", "auto", "--tenant", "acme",
              "--cpu-millis", "10", "--memory-mb", "16", "--", "sleep", "60",
              mentions=("HTTP 409",))
    rows = table(cli.ok("--endpoint", REGION, "site", "uncordon", "r9-s1").out)
    expect(rows[0]["STATE"] == "connected", "site uncordon", rows)
    head, cands = wait_until(lambda: (lambda e: e if e[0].get("chosen") == "r9-s1" else
                                      None)(explain(cli)), 10, "explain chooses r9-s1 again")
    expect(cands["r9-s1"]["KEPT"] == "true", "the uncordoned site is kept", cands)
    r = cli.ok("--endpoint", REGION, "instance", "create", "auto", "--tenant", "acme",
               "--cpu-millis", "10", "--memory-mb", "16", "--require-label", "zone=south",
               "--wait", "--", "sleep", "60")
    row = table(r.out)[0]
    expect(row["SITE"] == "r9-s1" and row["ACTUAL"] == "running",
           "placement puts an instance without --site on the one fitting site", r)
    cli.ok("--endpoint", REGION, "instance", "delete", row["ID"])


def check_wait_timeout(cli):
    cli.ok("--endpoint", REGION, "site", "create", "r9-off")  # registered, never started
    t0 = time.monotonic()
    r = cli.run("--endpoint", REGION, "--timeout", "2", "instance", "create", "idle", "--tenant",
                "acme", "--site", "r9-off", "--wait", "--", "true")
    took = time.monotonic() - t0
    rows = table(r.out) if r.out else [{}]
    expect(r.code == 1 and "is still pending after 2 s" in r.err and
           rows[0].get("ACTUAL") == "pending", "--wait gives up after --timeout", r)
    expect(1.5 < took < 10, "--wait waited about --timeout (%.1f s)" % took)
    cli.ok("--endpoint", REGION, "instance", "delete", rows[0]["ID"])


def check_errors(cli):
    cli.fails(1, "--endpoint", REGION, "instance", "create", "web", "--tenant", "acme",
              "--site", "no-such-site", "--", "true", mentions=("HTTP 404",))
    r = cli.fails(1, "--endpoint", NOWHERE, "site", "list",
                  mentions=("cannot reach http://%s: " % NOWHERE,))
    expect(r.out == "", "nothing on stdout when unreachable", r)
    cli.fails(1, "--endpoint", "http://%s/" % NOWHERE, "--timeout", "2", "instance", "list",
              mentions=("cannot reach http://%s" % NOWHERE,))


# ---------------------------------------------------------------------------------------------
# usage errors and help (no daemon needed; the stand-in proves nothing was sent)


BAD_USAGE = [
    (["site", "list", "--bogus"], ("unknown flag '--bogus'", "run 'archipel site list --help'")),
    (["site", "frob"], ("unknown command 'site frob'", "run 'archipel site --help'")),
    (["frobnicate"], ("unknown command 'frobnicate'", "run 'archipel --help'")),
    (["--bogus", "site", "list"], ("unknown flag '--bogus'",)),
    (["site"], ("run 'archipel site --help'",)),
    (["site", "show"], ("needs NAME",)),
    (["site", "show", "a", "b"], ("unexpected argument 'b'",)),
    (["site", "create", "Bad_Name"], ("'Bad_Name' is not a valid name",)),
    (["site", "create", "-lead"], ("unknown flag '-lead'",)),
    (["site", "create", "s1", "--cpu-millis", "12x"], ("--cpu-millis", "'12x'")),
    (["site", "create", "s1", "--cpu-millis", "-1"], ("--cpu-millis",)),
    (["site", "create", "s1", "--label", "novalue"], ("--label", "key=value")),
    (["site", "create", "s1", "--label", "a=b c"], ("--label",)),
    (["site", "create", "s1", "--label", "a=1", "--label", "a=2"], ("'a' given twice",)),
    (["site", "create", "s1", "--region"], ("'--region' needs a value",)),
    (["site", "create", "s1", "--region", "r1", "--region", "r2"], ("given twice",)),
    (["instance", "create", "web", "--tenant", "acme"], ("after '--'",)),
    (["instance", "create", "web", "--", "true"], ("needs --tenant",)),
    (["instance", "create", "web", "--tenant", "acme", "--site", "a", "--sites", "b", "--",
      "true"], ("--site or --sites",)),
    (["instance", "create", "web", "--tenant", "acme", "--sites", "a,,b", "--", "true"],
     ("--sites",)),
    (["instance", "create", "web", "--tenant", "acme", "--restart", "sometimes", "--", "true"],
     ("--restart",)),
    (["instance", "create", "web", "--tenant", "acme", "--env", "1X=2", "--", "true"],
     ("--env",)),
    (["instance", "create", "web", "--tenant", "acme", "--strategy", "random", "--", "true"],
     ("--strategy",)),
    (["instance", "create", "web", "--tenant", "acme", "--wait=yes", "--", "true"],
     ("takes no value",)),
    (["instance", "show", "not-a-uuid"], ("not an instance id",)),
    (["instance", "stop"], ("needs an instance ID, or --tenant",)),
    (["instance", "stop", UUID1, "--tenant", "acme"], ("not both",)),
    (["instance", "logs", UUID1, "--tail", "many"], ("--tail",)),
    (["user", "grant", "bob", "--role", "king"], ("--role",)),
    (["user", "revoke", "bob", "x1"], ("GRANT_ID",)),
    (["quota", "set", "acme", "--instances", "1.5"], ("--instances",)),
    (["placement", "explain"], ("needs --tenant",)),
    (["-o", "yaml", "site", "list"], ("'table' or 'json'",)),
    (["--timeout", "0", "site", "list"], ("--timeout",)),
    (["--endpoint", "ftp://x", "site", "list"], ("http:// or https://",)),
]


def check_bad_usage(cli, fake):
    before = fake.count()
    for args in BAD_USAGE:
        r = cli.fails(2, "--endpoint", FAKE, "--token", TOKEN, *args[0], mentions=args[1])
        expect(r.out == "", "nothing on stdout for bad usage", r)
    expect(fake.count() == before, "no request was sent for any bad usage",
           fake.requests[before:])


def check_help(cli):
    for noun, verbs in NOUNS.items():
        for verb in verbs:
            args = [noun] + ([verb] if verb else []) + ["--help"]
            r = cli.ok(*args)
            want = "usage: archipel %s" % " ".join(a for a in args[:-1])
            expect(r.out.startswith(want) and "--endpoint" in r.out and r.err == "",
                   "help of %s" % " ".join(args[:-1]), r)
        if verbs != [None]:
            r = cli.ok(noun, "--help")
            expect(r.out.startswith("usage: archipel %s <command>" % noun) and
                   all("  %s " % v in r.out for v in verbs), "help of %s lists its commands"
                   % noun, r)
    r = cli.ok("--help")
    expect(all("  %s " % n in r.out for n in list(NOUNS) + ["dev"]), "top help lists nouns", r)
    # --help wins over other mistakes on the same command line.
    cli.ok("instance", "create", "--bogus", "--help")


# ---------------------------------------------------------------------------------------------
# controller routes, against the stand-in


def check_login(cli, fake):
    cli.fails(1, "--endpoint", FAKE, "login", "--user", "alice", "--password-stdin",
              stdin="wrong\n", mentions=("wrong user or password (unauthenticated, HTTP 401)",))
    expect(not os.path.exists(cli.config), "a failed login writes no config")
    r = cli.ok("--endpoint", FAKE, "login", "--user", "alice", "--password-stdin",
               stdin="s3cret\n", env={"ARCHIPEL_TOKEN": "ap1.stale"})
    expect(r.out == "logged in as alice until 2030-01-01T00:00:00Z\n", "login says who and until",
           r)
    mode = stat.S_IMODE(os.stat(cli.config).st_mode)
    expect(mode == 0o600, "the config file is private (mode %o)" % mode)
    with open(cli.config) as f:
        doc = json.load(f)
    expect(doc == {"endpoint": "http://" + FAKE, "token": TOKEN},
           "the config holds the endpoint and token", doc)
    leftovers = [n for n in os.listdir(os.path.dirname(cli.config)) if n != "config.json"]
    expect(not leftovers, "no temporary file left next to the config", leftovers)
    method, path, headers, body = fake.last()
    expect("Authorization" not in headers, "login sends no old token", headers)
    # Later commands use the stored endpoint and token.
    cli.ok("region", "list")
    expect(fake.last()[2].get("Authorization") == "Bearer " + TOKEN,
           "requests carry the stored token", fake.last())
    cli.fails(1, "region", "list", env={"ARCHIPEL_TOKEN": "ap1.other"},
              mentions=("(unauthenticated, HTTP 401)",))
    cli.ok("region", "list", "--token", TOKEN, env={"ARCHIPEL_TOKEN": "ap1.other"})


def check_partial_sites(cli, fake):
    r = cli.ok("site", "list", "--region", "r1")
    expect(fake.last()[1] == "/v1/sites?region=r1", "--region becomes ?region=", fake.last())
    rows = table(r.out)
    expect(rows[0] == {"NAME": "a1", "REGION": "r1", "STATE": "connected", "CPU": "500/4000",
                       "MEM": "256/8192", "INSTANCES": "2/10", "LABELS": "zone=north,tier=gold"},
           "capacity as used/cap", rows)
    expect(rows[1]["MEM"] == "-" and rows[1]["LABELS"] == "-" and rows[1]["CPU"] == "2000",
           "missing values print as -", rows)
    expect(r.err == "warning: partial answer; unreachable: r2, r3\n",
           "a partial answer warns on stderr", r)
    r = cli.ok("-o", "json", "site", "list")
    expect(json.loads(r.out)["unreachable"] == ["r2", "r3"] and "warning: partial" in r.err,
           "-o json keeps the warning on stderr", r)


def check_instance_bodies(cli, fake):
    r = cli.run("instance", "create", "web", "--tenant", "acme", "--sites", "a1,a2", "--label",
                "app=web", "--cpu-millis", "100", "--memory-mb", "64", "--env", "A=1",
                "--cwd", "/tmp", "--restart", "on-failure", "--", "sleep", "60")
    expect(r.code == 1, "207 with a failed site exits 1", r)
    rows = table(r.out)
    expect([(x["SITE"], x["STATUS"]) for x in rows] == [("a1", "201"), ("a2", "403")] and
           rows[0]["ID/ERROR"] == UUID1 and "no quota left on a2" in rows[1]["ID/ERROR"],
           "multi-site create prints SITE STATUS ID/ERROR", r)
    want = {"name": "web", "tenant": "acme", "sites": ["a1", "a2"], "labels": {"app": "web"},
            "command": ["sleep", "60"], "env": {"A": "1"}, "cwd": "/tmp",
            "resources": {"cpu_millis": 100, "memory_mb": 64}, "restart": "on-failure"}
    expect(fake.last()[3] == want, "instance create body", fake.last()[3], want)

    cli.ok("instance", "create", "web", "--tenant", "acme", "--require-label", "zone=north",
           "--require-capability", "driver:process", "--strategy", "pack", "--affinity",
           "app=db", "--anti-affinity", "app=web", "--", "true")
    want = {"name": "web", "tenant": "acme", "command": ["true"],
            "placement": {"labels": {"zone": "north"}, "capabilities": ["driver:process"],
                          "strategy": "pack", "affinity": {"app": "db"},
                          "anti_affinity": {"app": "web"}}}
    expect(fake.last()[3] == want, "placement body, nothing else sent", fake.last()[3], want)

    cli.ok("instance", "list", "--tenant", "acme", "--region", "r1", "--deleted")
    expect(fake.last()[1] == "/v1/instances?tenant=acme&region=r1&deleted=1",
           "instance list query", fake.last())

    r = cli.run("instance", "stop", "--tenant", "acme", "--name", "web", "--selector", "zone=north")
    expect(r.code == 1 and "1 of 2 instances failed to stop" in r.err, "bulk failure exits 1", r)
    expect(fake.last()[1:4:2] == ("/v1/instances:stop",
                                  {"tenant": "acme", "name": "web",
                                   "selector": {"zone": "north"}}), "bulk body", fake.last())
    rows = table(r.out)
    expect([(x["ID"], x["SITE"], x["STATUS"]) for x in rows] ==
           [(UUID1, "a1", "stopped"), (UUID2, "a2", "failed")] and rows[0]["ERROR"] == "-" and
           rows[1]["ERROR"] == "site a2 is unreachable (unavailable)", "bulk table", r)


def check_controller_tables(cli, fake):
    rows = table(cli.ok("region", "list").out)
    expect(rows == [{"NAME": "r1", "NODES": "127.0.11.1:7100,127.0.11.2:7100",
                     "LINK": "connected", "SITES": "2"}], "region list", rows)
    rows = table(cli.ok("tenant", "list").out)
    expect(rows == [{"NAME": "acme", "INSTANCES": "2/10", "CPU": "200/4000", "MEM": "128/-"}],
           "tenant list as usage/limit", rows)
    cli.ok("tenant", "create", "beta", "--instances", "5")
    expect(fake.last()[3] == {"name": "beta", "quota": {"instances": 5}}, "tenant create body",
           fake.last())
    rows = table(cli.ok("user", "list", "--tenant", "acme").out)
    expect([(x["NAME"], x["GRANT"], x["ROLE"], x["SCOPE"]) for x in rows] ==
           [("alice", "1", "admin", "all"), ("alice", "2", "reader", "tenant=beta sites=a1,a2"),
            ("bob", "-", "-", "-")], "user list, one row per grant", rows)
    cli.ok("user", "create", "bob", "--tenant", "acme", "--password-stdin", stdin="pw1\n")
    expect(fake.last()[3] == {"name": "bob", "tenant": "acme", "password": "pw1"},
           "user create body", fake.last())
    r = cli.ok("user", "grant", "bob", "--role", "reader", "--tenant", "acme", "--regions",
               "r1,r2")
    expect(fake.last()[3] == {"role": "reader", "tenant": "acme",
                              "scope": {"regions": ["r1", "r2"]}}, "grant body", fake.last())
    expect(kv(r.out).get("id") == "3", "grant prints the grant id", r)
    cli.ok("user", "grant", "bob", "--role", "admin")
    expect(fake.last()[3] == {"role": "admin", "scope": {}}, "grant everywhere", fake.last())
    cli.ok("user", "revoke", "bob", "3")
    expect(fake.last()[:2] == ("DELETE", "/v1/users/bob/grants/3"), "revoke", fake.last())
    r = cli.ok("quota", "show", "acme")
    expect(kv(r.out).get("tenant") == "acme", "quota show header", r)
    rows = table(r.out.split("\n\n", 1)[1])
    expect([(x["QUOTA"], x["INSTANCES"], x["CPU"], x["MEM"]) for x in rows] ==
           [("limit", "10", "4000", "4096"), ("usage", "2", "200", "128"),
            ("allotments r1 allotment", "6", "3000", "3000")], "quota rows", rows)
    r = cli.ok("placement", "explain", "--tenant", "acme", "--cpu-millis", "100",
               "--strategy", "spread")
    expect(fake.last()[3] == {"tenant": "acme", "resources": {"cpu_millis": 100},
                              "placement": {"strategy": "spread"}}, "explain body", fake.last())
    rows = table(r.out.split("\n\n", 1)[1])
    expect([(x["SITE"], x["KEPT"], x["SCORE"], x["WHY"]) for x in rows] ==
           [("a1", "true", "0.75", "fits"), ("a2", "false", "-", "cordoned")], "explain table",
           r)
    expect(kv(r.out.split("\n\n", 1)[0]).get("chosen") == "a1" and
           "unreachable: r2" in r.err, "explain names the choice and warns of r2", r)


# ---------------------------------------------------------------------------------------------


def main(t):
    work = t.args.work_dir
    topo = t.topology()
    cli = Cli(t.args.bin_dir, os.path.join(work, "home"))
    t.check("archipel is built", lambda: expect(os.access(cli.path, os.X_OK), cli.path),
            required=True)
    region, site = t.check("region node and site start", start_daemons, t, topo, work,
                           required=True)
    os.makedirs(cli.home, exist_ok=True)
    fake = FakeController().start()
    try:
        t.check("site create, then list until connected", check_site_create_and_list, cli, site,
                required=True)
        t.check("site list: table matches -o json", check_site_json_matches_table, cli)
        t.check("site show and delete", check_site_show_delete, cli)
        t.check("config file, env and flag precedence", check_config_precedence, cli)
        ids = t.check("instances through the region: create --wait, list, show",
                      check_instances_via_region, cli) or ()
        if ids:
            t.check("instance logs from the site", check_logs, cli, ids[0])
            t.check("instance stop and start", check_stop_start_delete, cli, ids[0])
            local = t.check("instances through the site", check_instances_via_site, cli, ids[0])
            t.check("instance delete and list --deleted", check_delete_all, cli,
                    list(ids) + ([local] if local else []))
        t.check("cordon, placement explain and a placed instance", check_cordon_and_placement,
                cli)
        t.check("create --wait gives up after --timeout", check_wait_timeout, cli)
        t.check("server errors and unreachable endpoints exit 1", check_errors, cli)
        t.check("bad usage exits 2 with one line, before any request", check_bad_usage, cli,
                fake)
        t.check("--help on every noun and command", check_help, cli)
        t.check("login stores endpoint and token (mode 0600)", check_login, cli, fake,
                required=True)
        t.check("partial answers: table, then a warning", check_partial_sites, cli, fake)
        t.check("instance bodies, multi-site and bulk results", check_instance_bodies, cli, fake)
        t.check("region, tenant, user, quota and placement tables", check_controller_tables,
                cli, fake)
    finally:
        fake.stop()
        stop_workloads(work)


def _default_args():
    """Let `python3 test_cli.py` run without ctest's arguments."""
    here = os.path.dirname(os.path.abspath(__file__))
    if "--bin-dir" not in sys.argv:
        bin_dir = os.environ.get("AP_BIN_DIR") or os.path.join(here, "..", "..", "build", "bin")
        sys.argv += ["--bin-dir", bin_dir]
    if "--work-dir" not in sys.argv:
        sys.argv += ["--work-dir", os.path.join(tempfile.gettempdir(),
                                                "archipel-test_cli-%d" % os.getuid())]


if __name__ == "__main__":
    _default_args()
    harness.run(main)
