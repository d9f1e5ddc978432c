"""The archipel CLI end to end against `archipel dev`: it works right after start-up (dev wrote
its config), an operator creates a tenant and a user with a grant on one site, the user logs in
and manages instances through the controller, a regional node and a site; 401 for a missing,
forged or expired token, 403 outside the grant and for quota; a fan-out with the region's nodes
stopped answers partial, naming the region."""

import json
import os
import subprocess

import harness


class Cli:
    def __init__(self, topo, config_home):
        self.bin = os.path.join(topo.bin_dir, "archipel")
        self.env = dict(os.environ, XDG_CONFIG_HOME=config_home)
        for k in ("ARCHIPEL_ENDPOINT", "ARCHIPEL_TOKEN"):
            self.env.pop(k, None)

    def run(self, *args, stdin=None, ok=True, timeout=60):
        p = subprocess.run([self.bin] + list(args), input=stdin, capture_output=True, text=True,
                           env=self.env, timeout=timeout)
        if ok and p.returncode != 0:
            raise AssertionError("archipel %s: exit %d: %s" % (" ".join(args), p.returncode,
                                                               p.stderr.strip()))
        return p

    def fails(self, code, mention, *args, **kw):
        p = self.run(*args, ok=False, **kw)
        if p.returncode != code or mention.lower() not in p.stderr.lower():
            raise AssertionError("archipel %s: want exit %d mentioning %r, got %d: %r" % (
                " ".join(args), code, mention, p.returncode, p.stderr.strip()))
        if len(p.stderr.strip().splitlines()) != 1:
            raise AssertionError("want one line on stderr, got %r" % p.stderr)
        return p

    def json(self, *args):
        """Run with -o json (first: whatever follows "--" is the workload's command)."""
        return json.loads(self.run("-o", "json", *args).stdout)


def main(t):
    topo = t.topology()
    topo.start_dev(nodes=3, sites=2)
    admin = Cli(topo, os.path.join(topo.work_dir, "xdg"))  # the config archipel dev wrote
    alice = Cli(topo, os.path.join(topo.work_dir, "xdg-alice"))
    ctl = "http://%s" % topo.controller.http
    region = topo.leader("r1").http
    s1, s2 = topo.site("r1-s1").http, topo.site("r1-s2").http

    t.check("the CLI works right after archipel dev, with no extra step", lambda: harness.wait_until(
        lambda: {s["name"] for s in admin.json("site", "list")["sites"]} == {"r1-s1", "r1-s2"},
        10, "site list shows both sites"))
    t.check("an operator creates a tenant, a user and a grant on one site", lambda: (
        admin.run("tenant", "create", "acme", "--instances", "3", "--cpu-millis", "1000",
                  "--memory-mb", "1000"),
        admin.run("user", "create", "alice", "--tenant", "acme", "--password-stdin",
                  stdin="alice-password\n"),
        admin.run("user", "grant", "alice", "--role", "member", "--tenant", "acme", "--sites",
                  "r1-s1")))
    t.check("the user logs in with the password", lambda: alice.run(
        "--endpoint", ctl, "login", "--user", "alice", "--password-stdin",
        stdin="alice-password\n"))
    t.check("the tenant's quota reached the region", lambda: harness.wait_until(
        lambda: admin.json("--endpoint", region, "quota", "show", "acme")
        .get("limit", {}).get("instances") == 3, 15, "regional limit 3"))

    ids = {}

    def create_everywhere():
        for name, endpoint, site_args in (("via-ctl", ctl, ["--site", "r1-s1"]),
                                          ("via-region", region, ["--site", "r1-s1"]),
                                          ("via-site", s1, [])):
            inst = alice.json("--endpoint", endpoint, "instance", "create", name, "--tenant",
                              "acme", *site_args, "--cpu-millis", "10", "--memory-mb", "8",
                              "--", "sleep", "600")
            ids[name] = inst["id"]
        return True

    t.check("instances created through the controller, a regional node and the site",
            create_everywhere)
    t.check("listed through all three tiers", lambda: harness.wait_until(lambda: all(
        set(ids.values()) <= {i["id"] for i in alice.json("--endpoint", e, "instance", "list")
                              ["instances"]} for e in (ctl, region, s1)), 15,
        "every instance listed at the controller, the region and the site"))
    t.check("the workload runs on the site", lambda: harness.wait_until(
        lambda: alice.json("--endpoint", s1, "instance", "show", ids["via-ctl"])
        .get("actual") == "running", 20, "via-ctl running"))
    t.check("outside the grant: exit 1, forbidden, naming the site", lambda: [
        alice.fails(1, "r1-s2", "--endpoint", e, "instance", "create", "x", "--tenant", "acme",
                    *args, "--", "sleep", "1")
        for e, args in ((ctl, ["--site", "r1-s2"]), (region, ["--site", "r1-s2"]), (s2, []))])
    t.check("over quota: exit 1, quota_exceeded", lambda: alice.fails(
        1, "quota_exceeded", "instance", "create", "fourth", "--tenant", "acme", "--site",
        "r1-s1", "--", "sleep", "1"))
    t.check("stop through the controller, start through the region, delete through the site",
            lambda: (alice.run("instance", "stop", ids["via-ctl"]),
                     alice.run("--endpoint", region, "instance", "start", ids["via-ctl"]),
                     alice.run("--endpoint", s1, "instance", "delete", ids["via-site"])))
    t.check("the delete made on the site reaches the region", lambda: harness.wait_until(
        lambda: ids["via-site"] not in {i["id"] for i in alice.json(
            "--endpoint", region, "instance", "list")["instances"]}, 15, "deleted in region"))

    def tables():
        rows = admin.run("region", "list").stdout.splitlines()
        if not rows[0].startswith("NAME") or not any(r.startswith("r1 ") for r in rows[1:]):
            raise AssertionError("region list: %r" % rows)
        if "acme" not in admin.run("tenant", "list").stdout:
            raise AssertionError("tenant list lacks acme")
        users = {u["name"]: u for u in admin.json("user", "list")["users"]}
        if "alice" not in users or users["alice"]["tenant"] != "acme":
            raise AssertionError("user list: %s" % users)
        q = admin.json("quota", "show", "acme")
        if q["quota"]["instances"] != 3 or "r1" not in q["regions"]:
            raise AssertionError("quota show at the controller: %s" % q)
        ex = admin.json("placement", "explain", "--tenant", "acme", "--cpu-millis", "10")
        if ex["chosen"] is None or len(ex["regions"][0]["candidates"]) != 2:
            raise AssertionError("placement explain: %s" % ex)
        return True

    t.check("region, tenant, user, quota and placement commands against the controller", tables)

    def multi_site():
        # Alice may write r1-s1 only: 207, one row per site, exit 1.
        p = alice.run("instance", "create", "multi", "--tenant", "acme", "--sites",
                      "r1-s1,r1-s2", "--cpu-millis", "10", "--memory-mb", "8", "--", "sleep",
                      "60", ok=False)
        if p.returncode != 1 or "r1-s2" not in p.stdout or "403" not in p.stdout:
            raise AssertionError("multi-site create: exit %d\n%s%s" % (p.returncode, p.stdout,
                                                                       p.stderr))
        return True

    t.check("a multi-site create reports each site (207: exit 1, the refused site named)",
            multi_site)
    t.check("a bulk stop by site list through the controller", lambda: alice.run(
        "instance", "stop", "--tenant", "acme", "--name", "multi", "--sites", "r1-s1"))

    nobody = Cli(topo, os.path.join(topo.work_dir, "xdg-nobody"))
    t.check("no token: exit 1, unauthenticated, at every tier", lambda: [
        nobody.fails(1, "unauthenticated", "--endpoint", e, "instance", "list")
        for e in (ctl, region, s1)])
    t.check("a forged token: exit 1, unauthenticated", lambda: nobody.fails(
        1, "unauthenticated", "--endpoint", s1, "--token", "ap1.eyJ2IjoxfQ.AAAA", "instance",
        "list"))
    short = harness.expect_status(topo.controller.request_full("POST", "/v1/tokens", {
        "user": "alice", "password": "alice-password", "ttl_seconds": 1}, token=None), 201)
    t.check("an expired token: exit 1, saying it expired", lambda: harness.wait_until(
        lambda: nobody.fails(1, "expired", "--endpoint", region, "--token", short["token"],
                             "instance", "list"), 10, "the short token expired"))

    for n in topo.region_nodes("r1"):
        n.kill9()

    def partial():
        p = admin.run("instance", "list", timeout=30)
        if "partial" not in p.stderr or "r1" not in p.stderr:
            raise AssertionError("want a partial warning naming r1, got %r" % p.stderr)
        return True

    t.check("a fan-out with the region's nodes stopped says partial, naming the region", partial)


if __name__ == "__main__":
    harness.run(main)
