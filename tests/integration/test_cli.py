"""The archipel CLI against a real region node and site on 127.0.99.x.

Starts one archipel-regional (region r9, 127.0.99.1) and one archipel-edge (site r9-s1,
127.0.99.2), then drives the built `archipel` with a private XDG_CONFIG_HOME: sites and
instances through the region and through the site, -o json against the tables, config file and
environment precedence, usage errors (exit 2, one line, no request sent), unreachable endpoints
and server errors (exit 1). Routes only the controller serves (tokens, tenants, users, regions,
fan-out answers with "partial") are driven against the real controller in test_cli_e2e.py.

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
# a listener that only counts connections: proves a bad command line sent nothing


class ConnCounter:
    """Accepts and closes TCP connections on FAKE, counting them. Not a stand-in for any
    daemon: it answers nothing (controller routes are tested against the real controller in
    test_cli_e2e.py)."""

    def __init__(self):
        import socket
        host, port = FAKE.split(":")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, int(port)))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.n = 0
        self.running = True
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while self.running:
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            self.n += 1
            c.close()

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.running = False
        self.thread.join(5)
        self.sock.close()

    def count(self):
        return self.n


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
    expect(fake.count() == before, "no connection was made for any bad usage",
           fake.count() - before)


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


def main(t):
    work = t.args.work_dir
    topo = t.topology()
    cli = Cli(t.args.bin_dir, os.path.join(work, "home"))
    t.check("archipel is built", lambda: expect(os.access(cli.path, os.X_OK), cli.path),
            required=True)
    region, site = t.check("region node and site start", start_daemons, t, topo, work,
                           required=True)
    os.makedirs(cli.home, exist_ok=True)
    fake = ConnCounter().start()
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
