"""Identity across the three tiers: tokens from the controller, verified offline by regions and
sites; grants scoped to sites; 401 and 403 with clear messages; quota through the controller's
allotment; revocation reaching a site; a fan-out that names the region it could not reach."""

import base64
import json
import time

import harness

TENANT = "acme"


def login(ctl, user, password, ttl=None):
    body = {"user": user, "password": password}
    if ttl is not None:
        body["ttl_seconds"] = ttl
    r = ctl.request_full("POST", "/v1/tokens", body, token=None)
    return harness.expect_status(r, 201, "log in as %s" % user)["token"]


def instance(name, site=None):
    body = {"name": name, "tenant": TENANT, "command": ["sleep", "600"],
            "resources": {"cpu_millis": 10, "memory_mb": 8}}
    if site is not None:
        body["site"] = site
    return body


def forged(token):
    """The same claims with a different signature (last byte of the signature changed)."""
    head, payload, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[-1] ^= 1
    return "%s.%s.%s" % (head, payload, base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("="))


def escalated(token):
    """The claims rewritten to an operator grant, signature kept: must not verify."""
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["grants"] = [{"role": "operator", "scope": {}}]
    text = base64.urlsafe_b64encode(json.dumps(claims, separators=(",", ":")).encode())
    return "%s.%s.%s" % (head, text.decode().rstrip("="), sig)


def main(t):
    topo = t.topology()
    topo.start_dev(nodes=3, sites=2)
    ctl = topo.controller
    region = topo.leader("r1")
    s1, s2 = topo.site("r1-s1"), topo.site("r1-s2")

    def setup():
        harness.expect_status(ctl.request_full("POST", "/v1/tenants", {
            "name": TENANT, "quota": {"instances": 3, "cpu_millis": 1000, "memory_mb": 1000}}),
            201, "create tenant")
        harness.expect_status(ctl.request_full("POST", "/v1/users", {
            "name": "alice", "tenant": TENANT, "password": "alice-password"}), 201, "alice")
        harness.expect_status(ctl.request_full("POST", "/v1/users/alice/grants", {
            "role": "member", "tenant": TENANT, "scope": {"sites": ["r1-s1"]}}), 201,
            "grant alice member on r1-s1")
        harness.expect_status(ctl.request_full("POST", "/v1/users", {
            "name": "bob", "tenant": TENANT, "password": "bob-password",
            "grant": {"role": "reader", "tenant": TENANT}}), 201, "bob, reader")
        return True

    t.check("an operator creates a tenant, users and grants at the controller", setup)
    alice = login(ctl, "alice", "alice-password")
    bob = login(ctl, "bob", "bob-password")
    t.check("a wrong password is 401 with the same message as an unknown user", lambda: (
        harness.expect_error(ctl.request_full("POST", "/v1/tokens", {
            "user": "alice", "password": "wrong-password"}, token=None), 401, "unauthenticated",
            "invalid user or password"),
        harness.expect_error(ctl.request_full("POST", "/v1/tokens", {
            "user": "nobody", "password": "wrong-password"}, token=None), 401,
            "unauthenticated", "invalid user or password")))

    # The tenant's allotment reaches the region (a raft entry) and alice's gen the site.
    t.check("the region holds the tenant's allotment", lambda: harness.wait_until(
        lambda: (region.request_full("GET", "/v1/quotas/%s" % TENANT).json or {})
        .get("limit", {}).get("instances") == 3, 15, "regional limit 3"))

    created = []

    def create_where_granted():
        for name, where in (("web-c", ctl), ("web-r", region), ("web-s", s1)):
            body = instance(name, "r1-s1" if where is not s1 else None)
            r = where.request_full("POST", "/v1/instances", body, token=alice)
            created.append(harness.expect_status(r, 201, "alice creates %s via %s" %
                                                 (name, where.http))["id"])
        return True

    t.check("a member granted r1-s1 creates there through the controller, the region and the "
            "site", create_where_granted)
    t.check("outside the grant: 403 naming the site, at every tier", lambda: [
        harness.expect_error(w.request_full("POST", "/v1/instances", instance("x", "r1-s2"),
                                            token=alice), 403, "forbidden",
                             ("alice", "r1-s2"), what="via %s" % w.http)
        for w in (ctl, region)] + [harness.expect_error(
            s2.request_full("POST", "/v1/instances", instance("x"), token=alice), 403,
            "forbidden", ("alice", "r1-s2"), what="on the site")])
    t.check("a reader cannot write anywhere", lambda: [
        harness.expect_error(w.request_full("POST", "/v1/instances", instance("y", "r1-s1"),
                                            token=bob), 403, "forbidden", "bob")
        for w in (ctl, region)])
    t.check("the fourth instance is 403 quota_exceeded (limit 3)", lambda: harness.expect_error(
        region.request_full("POST", "/v1/instances", instance("web-4", "r1-s1"), token=alice),
        403, "quota_exceeded"))

    def lists():
        r = ctl.request_full("GET", "/v1/instances?tenant=%s" % TENANT, token=bob)
        body = harness.expect_status(r, 200, "bob lists through the controller")
        if body["partial"] or sorted(i["id"] for i in body["instances"]) != sorted(created):
            raise AssertionError("bob sees %s (partial %s), want %s" % (
                [i["id"] for i in body["instances"]], body["partial"], created))
        r = s2.request_full("GET", "/v1/instances", token=alice)
        if harness.expect_status(r, 200, "alice lists r1-s2")["instances"]:
            raise AssertionError("alice sees instances of a site she has no grant on")
        return True

    t.check("reads see what the grant covers, merged across tiers", lambda: harness.wait_until(
        lists, 15, "instance lists"))

    def unauthenticated():
        for w in (ctl, region, s1):
            harness.expect_error(w.request_full("GET", "/v1/instances", token=None), 401,
                                 "unauthenticated", "Authorization", what="no token %s" % w.http)
            harness.expect_error(w.request_full("GET", "/v1/instances", token=forged(alice)),
                                 401, "unauthenticated", "signature", what="forged %s" % w.http)
            harness.expect_error(w.request_full("POST", "/v1/instances", instance("z", "r1-s1"),
                                                token=escalated(bob)), 401, "unauthenticated",
                                 what="escalated %s" % w.http)
        return True

    t.check("missing, forged or altered tokens: 401 at the controller, the region and the site",
            unauthenticated)

    short = login(ctl, "alice", "alice-password", ttl=1)
    time.sleep(2.5)
    t.check("an expired token: 401 saying so, at every tier", lambda: [
        harness.expect_error(w.request_full("GET", "/v1/instances", token=short), 401,
                             "unauthenticated", "expired", what=w.http) for w in (ctl, region, s1)])

    # Revocation: removing alice's grant bumps her generation; the site learns it over its link.
    grants = harness.expect_status(ctl.request_full("GET", "/v1/users/alice"), 200)["grants"]
    harness.expect_status(ctl.request_full("DELETE", "/v1/users/alice/grants/%d" %
                                           grants[0]["id"]), 200, "revoke alice's grant")
    t.check("a revoked token is refused by the region and the site within seconds",
            lambda: harness.wait_until(lambda: all(
                w.request_full("GET", "/v1/instances", token=alice).status == 401
                for w in (ctl, region, s1)), 15, "alice's old token refused everywhere"))

    # Fan-out with the whole region down: partial, naming r1.
    for n in topo.region_nodes("r1"):
        n.kill9()

    def partial():
        r = ctl.request_full("GET", "/v1/instances", timeout=15)
        body = harness.expect_status(r, 200, "fan-out with r1 down")
        if body.get("partial") is not True or body.get("unreachable") != ["r1"]:
            raise AssertionError("want partial with unreachable [r1], got %s" % body)
        return True

    t.check("a fan-out with a region's nodes stopped answers partial, naming the region",
            partial)
    t.check("the site keeps serving its instances to a valid token while its region is down",
            lambda: harness.expect_status(s1.request_full("GET", "/v1/instances"), 200))


if __name__ == "__main__":
    harness.run(main)
