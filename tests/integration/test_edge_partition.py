"""A site cut off from its region keeps serving and accepting management; both converge after the heal.

Real processes on loopback; the partition is made with iptables between the site's address and
the region's addresses (and removed in a finally block).
"""

import json
import subprocess
import time

import harness

TENANT = "acme"
PROBE_PORT = 18081


def iptables(action, src, dst_net):
    for a, b in ((src, dst_net), (dst_net, src)):
        subprocess.run(["iptables", action, "INPUT", "-s", a, "-d", b, "-j", "DROP"],
                       check=action != "-D", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def instance_set(resp):
    return {i["id"]: i["desired"] for i in resp.json["instances"]}


def main(t):
    topo = t.topology()
    topo.start_dev(nodes=3, sites=1)
    region = topo.leader()
    site = topo.site("r1-s1")

    harness.expect_status(region.request_full("PUT", "/v1/quotas/%s" % TENANT,
                                         {"instances": 4, "cpu_millis": 1000, "memory_mb": 1000}),
                          200, "set the tenant's regional quota")
    harness.expect_status(region.request_full("PUT", "/v1/quotas/%s/reserves/r1-s1" % TENANT,
                                         {"instances": 2, "cpu_millis": 300, "memory_mb": 300}),
                          200, "set the site's autonomy reserve")

    def create_via_region(name, command):
        r = region.request_full("POST", "/v1/instances", {
            "name": name, "tenant": TENANT, "site": "r1-s1", "command": command,
            "resources": {"cpu_millis": 100, "memory_mb": 100}, "restart": "always"})
        harness.expect_status(r, 201, "create %s through the region" % name)
        return r.json["id"]

    web = create_via_region("web", ["python3", "-m", "http.server", str(PROBE_PORT), "--bind",
                                    site.ip])
    victim = create_via_region("victim", ["sleep", "1000"])

    def running_on_site(iid):
        r = site.request_full("GET", "/v1/instances/%s" % iid)
        return r.status == 200 and r.json["actual"] == "running"

    t.check("the region's create runs on the site",
            lambda: harness.wait_until(lambda: running_on_site(web) and running_on_site(victim),
                                       20, "web and victim running on r1-s1"))
    url = "http://%s:%d/" % (site.ip, PROBE_PORT)
    t.check("the workload answers", lambda: harness.wait_until(
        lambda: harness.request_full("GET", "%s:%d" % (site.ip, PROBE_PORT), "/").status == 200,
        20, "http.server answers"))
    victim_pid = site.request_full("GET", "/v1/instances/%s" % victim).json["pid"]

    prober = harness.Prober(url)
    samples = []
    prober.start()
    cut = False
    try:
        iptables("-I", site.ip, "127.0.11.0/24")
        cut = True
        t.check("the site sees the cut", lambda: harness.wait_until(
            lambda: site.request_full("GET", "/v1/health").json["link"] == "disconnected", 15,
            "site link disconnected"))
        t.check("the region marks the site unreachable", lambda: harness.wait_until(
            lambda: region.request_full("GET", "/v1/sites/r1-s1").json["state"] == "unreachable",
            15, "site unreachable in the catalog"))

        local = site.request_full("POST", "/v1/instances", {
            "name": "local", "tenant": TENANT, "command": ["sleep", "1000"],
            "resources": {"cpu_millis": 50, "memory_mb": 50}})
        t.check("an isolated site accepts a create within the rights it holds",
                lambda: harness.expect_status(local, 201))
        local_id = local.json["id"]
        over = site.request_full("POST", "/v1/instances", {
            "name": "toomany", "tenant": TENANT, "command": ["sleep", "1000"],
            "resources": {"cpu_millis": 500, "memory_mb": 500}})
        t.check("an isolated site refuses a create beyond its rights",
                lambda: harness.expect_error(over, 403, "quota_exceeded"))
        t.check("the region accepts a delete for an unreachable site", lambda: harness.expect_status(
            region.request_full("DELETE", "/v1/instances/%s" % victim), 200))
        tmp = site.request_full("POST", "/v1/instances", {
            "name": "tmp", "tenant": TENANT, "command": ["sleep", "1000"],
            "resources": {"cpu_millis": 10, "memory_mb": 10}})
        harness.expect_status(tmp, 201, "a second local create")
        t.check("an isolated site deletes locally", lambda: harness.expect_status(
            site.request_full("DELETE", "/v1/instances/%s" % tmp.json["id"]), 200))
        for _ in range(20):
            samples.append(region.request_full("GET", "/v1/quotas/%s" % TENANT).json)
            time.sleep(0.1)
    finally:
        if cut:
            iptables("-D", site.ip, "127.0.11.0/24")
    healed = time.monotonic()

    def converged():
        a = instance_set(region.request_full("GET", "/v1/instances?site=r1-s1&deleted=1"))
        b = instance_set(site.request_full("GET", "/v1/instances?deleted=1"))
        return a == b and local_id in a and a.get(victim) == "deleted"

    t.check("both sides hold the same instances within 10 s of the heal",
            lambda: harness.wait_until(converged, 10, "region and site converge"))
    print("converged %.1f s after the heal" % (time.monotonic() - healed))
    t.check("the instance deleted through the region is stopped on the site",
            lambda: harness.wait_until(lambda: site.request_full(
                "GET", "/v1/instances/%s" % victim).json["actual"] in ("stopped", "exited"),
                10, "victim stopped"))
    t.check("the victim's process is gone",
            lambda: harness.wait_until(lambda: not harness._pid_alive(victim_pid), 10,
                                       "victim pid %s gone" % victim_pid))
    t.check("the instance created on the site is listed by the region",
            lambda: harness.expect_status(region.request_full("GET", "/v1/instances/%s" % local_id),
                                          200))
    prober.stop()
    t.check("the workload answered every probe during the cut (L3.1)",
            lambda: (prober.failed == 0 and prober.ok > 20) or (_ for _ in ()).throw(
                AssertionError("probes ok=%d failed=%d %s" % (prober.ok, prober.failed,
                                                              prober.errors[:3]))))

    def usage_within_limit():
        for q in samples + [region.request_full("GET", "/v1/quotas/%s" % TENANT).json]:
            for res, lim in q["limit"].items():
                if q["usage"][res] > lim:
                    raise AssertionError("usage %s=%d over limit %d" % (res, q["usage"][res], lim))
        return True

    t.check("usage never exceeded the limit at any sample", usage_within_limit)

    def same_content():
        mine = site.request_full("GET", "/v1/state/hash").json
        for n in topo.region_nodes("r1"):
            theirs = n.request_full("GET", "/v1/state/hash").json["sites"]["r1-s1"]
            if (theirs["instances"], theirs["rights"]) != (mine["instances"], mine["rights"]):
                return False
        return True

    t.check("every regional replica's content hash of the site equals the site's (records and"
            " rights)", lambda: harness.wait_until(same_content, 10, "equal content hashes"))


if __name__ == "__main__":
    harness.run(main)
