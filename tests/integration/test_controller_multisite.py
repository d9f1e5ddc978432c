"""Operations that span sites, through the controller: explicit scope (L2.1: one instance per
named site with per-site results; bulk stop/delete by site list or site labels) and implicit
placement (L2.2: the region's scheduler picks a site; a dry run explains every candidate;
cordoned sites and anti-affinity are honoured)."""

import harness

TENANT = "acme"


def body(name, **kw):
    b = {"name": name, "tenant": TENANT, "command": ["sleep", "600"],
         "resources": {"cpu_millis": 10, "memory_mb": 8}}
    b.update(kw)
    return b


def main(t):
    topo = t.topology()
    topo.start_dev(nodes=3, sites=3)
    ctl = topo.controller
    harness.expect_status(ctl.request_full("POST", "/v1/tenants", {"name": TENANT, "quota": {}}),
                          201, "create tenant")

    def multi():
        r = ctl.request_full("POST", "/v1/instances",
                             body("web", sites=["r1-s1", "r1-s2", "nowhere"]))
        res = harness.expect_status(r, 207, "create on two sites and a missing one")
        by_site = {x["site"]: x for x in res["results"]}
        if set(by_site) != {"r1-s1", "r1-s2", "nowhere"} or res["created"] != 2 or \
                res["failed"] != 1:
            raise AssertionError("results %s" % res)
        for s in ("r1-s1", "r1-s2"):
            if by_site[s]["status"] != 201 or by_site[s]["instance"]["site"] != s:
                raise AssertionError("site %s: %s" % (s, by_site[s]))
        if by_site["nowhere"]["status"] != 404 or by_site["nowhere"]["error"]["code"] != \
                "not_found":
            raise AssertionError("missing site: %s" % by_site["nowhere"])
        return True

    t.check("one instance per named site, with a result per site (207 when one fails)", multi)
    t.check("all good: 201", lambda: harness.expect_status(ctl.request_full(
        "POST", "/v1/instances", body("db", sites=["r1-s3"], labels={"app": "db"})), 201))

    def running(site, name):
        r = topo.site(site).request_full("GET", "/v1/instances")
        return any(i["name"] == name and i["actual"] == "running"
                   for i in harness.expect_status(r, 200)["instances"])

    t.check("the workloads run on their sites", lambda: harness.wait_until(
        lambda: running("r1-s1", "web") and running("r1-s2", "web"), 20, "web on s1 and s2"))

    def bulk_stop():
        r = ctl.request_full("POST", "/v1/instances:stop",
                             {"tenant": TENANT, "name": "web", "sites": ["r1-s2"]})
        res = harness.expect_status(r, 200, "bulk stop on r1-s2")
        if res["matched"] != 1 or res["results"][0]["site"] != "r1-s2" or \
                res["results"][0]["status"] != 200:
            raise AssertionError("bulk stop: %s" % res)
        return True

    t.check("bulk stop by site list acts on exactly that site", bulk_stop)
    t.check("the stopped workload stops; the other keeps running", lambda: harness.wait_until(
        lambda: not running("r1-s2", "web") and running("r1-s1", "web"), 20,
        "web stopped on s2 only"))
    t.check("bulk delete by site labels (every dev site has region=r1)", lambda: (
        harness.expect_status(ctl.request_full("POST", "/v1/instances:delete", {
            "tenant": TENANT, "name": "web", "selector": {"region": "r1"}}), 200)["matched"] == 2
        or (_ for _ in ()).throw(AssertionError("want 2 matched"))))

    def placed():
        r = ctl.request_full("POST", "/v1/instances", body("auto", placement={
            "strategy": "spread", "anti_affinity": {"app": "db"}}))
        inst = harness.expect_status(r, 201, "placement without a site")
        if inst["site"] not in ("r1-s1", "r1-s2"):
            raise AssertionError("anti-affinity to app=db (on r1-s3) ignored: %s" % inst["site"])
        return True

    t.check("with no site named, the scheduler places it, honouring anti-affinity", placed)
    harness.expect_status(ctl.request_full("POST", "/v1/sites/r1-s1/cordon"), 200, "cordon s1")

    def explain():
        r = ctl.request_full("POST", "/v1/placements:explain", {
            "tenant": TENANT, "resources": {"cpu_millis": 10, "memory_mb": 8},
            "placement": {"anti_affinity": {"app": "db"}}})
        res = harness.expect_status(r, 200, "explain")
        cands = {c["site"]: c for c in res["regions"][0]["candidates"]}
        if set(cands) != {"r1-s1", "r1-s2", "r1-s3"}:
            raise AssertionError("candidates %s" % sorted(cands))
        if cands["r1-s1"]["kept"] or "cordoned" not in cands["r1-s1"]["why"]:
            raise AssertionError("cordoned s1: %s" % cands["r1-s1"])
        if cands["r1-s3"]["kept"] or "anti-affinity" not in cands["r1-s3"]["why"]:
            raise AssertionError("s3 runs app=db: %s" % cands["r1-s3"])
        if not cands["r1-s2"]["kept"] or res["chosen"] != {"region": "r1", "site": "r1-s2"}:
            raise AssertionError("s2 should be chosen: %s" % res)
        return True

    t.check("a dry run lists every candidate and why it was kept or rejected", explain)

    def logs():
        r = ctl.request_full("POST", "/v1/instances", body(
            "talker", site="r1-s2", command=["sh", "-c", "echo hello-from-the-site; sleep 600"]))
        iid = harness.expect_status(r, 201, "create talker")["id"]
        return harness.wait_until(lambda: "hello-from-the-site" in ctl.request_full(
            "GET", "/v1/instances/%s/logs?stream=stdout" % iid).text, 20,
            "the workload's stdout read through the controller")

    t.check("logs read through the controller (relayed by the region from the site)", logs)

    def no_fit():
        r = ctl.request_full("POST", "/v1/instances", body("huge", resources={
            "cpu_millis": 1000000, "memory_mb": 8}))
        harness.expect_error(r, 409, "no_capacity", what="nothing fits")
        return True

    t.check("nothing fits: 409 no_capacity saying why", no_fit)


if __name__ == "__main__":
    harness.run(main)
