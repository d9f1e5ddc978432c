"""Regional API on a 3-node region started by `archipel dev`: health, leader, site CRUD through
any node, replication to every node, linearizable reads on followers, errors, /metrics."""

import random

import harness
from harness import expect_error, expect_status, wait_until

SITE = {
    "name": "edge-paris-01",
    "labels": {"zone": "eu-west", "tier": "gold", "owner.team/ops": "core_net"},
    "capacity": {"cpu_millis": 64000, "memory_mb": 262144, "instances": 120},
}

REQUIRED_METRICS = (
    "archipel_raft_term",
    "archipel_raft_commit_index",
    "archipel_raft_apply_latency_seconds_bucket",
    "archipel_raft_proposals_total",
    "archipel_http_forwarded_total",
    "archipel_raft_snapshots_total",
)


def same_site(got, want, where):
    """The stored site holds exactly the name, labels and capacity that were sent."""
    for key in ("name", "labels", "capacity"):
        if got.get(key) != want[key]:
            raise AssertionError("%s: %s is %r, sent %r" % (where, key, got.get(key), want[key]))


def check_health(topo):
    leader_ids = set()
    for n in topo.region_nodes("r1"):
        h = expect_status(n.request("GET", "/v1/health"), 200, "health of %r" % n)
        want = {"tier": "regional", "region": "r1", "node": n.id}
        for k, v in want.items():
            if h.get(k) != v:
                raise AssertionError("%r: health %s is %r, want %r" % (n, k, h.get(k), v))
        if h.get("role") not in ("leader", "follower"):
            raise AssertionError("%r: role %r" % (n, h.get("role")))
        leader = h.get("leader")
        if not isinstance(leader, dict) or not isinstance(leader.get("id"), int):
            raise AssertionError("%r: leader is %r, want {id, http}" % (n, leader))
        if leader.get("http") != topo.node(leader["id"]).http:
            raise AssertionError("%r: leader http %r, node %d listens on %s" %
                                 (n, leader.get("http"), leader["id"],
                                  topo.node(leader["id"]).http))
        if not isinstance(h.get("applied_index"), int) or h["applied_index"] < 0:
            raise AssertionError("%r: applied_index %r" % (n, h.get("applied_index")))
        leader_ids.add(leader["id"])
    if len(leader_ids) != 1:
        raise AssertionError("nodes name different leaders: %s" % sorted(leader_ids))


def check_one_leader(topo):
    roles = {n.id: n.health()["role"] for n in topo.region_nodes("r1")}
    leaders = [i for i, r in roles.items() if r == "leader"]
    if len(leaders) != 1:
        raise AssertionError("want exactly one leader, roles are %s" % roles)
    return topo.node(leaders[0])


def check_cluster(topo, leader):
    for n in topo.region_nodes("r1"):
        c = expect_status(n.request("GET", "/v1/cluster"), 200, "cluster on %r" % n)
        members = {m["id"]: m for m in c["members"]}
        if sorted(members) != [1, 2, 3]:
            raise AssertionError("%r lists members %s" % (n, sorted(members)))
        for m in topo.region_nodes("r1"):
            got = members[m.id]
            if (got["http"], got["raft"], got["role"]) != (m.http, m.raft, "voter"):
                raise AssertionError("%r: member %d is %r" % (n, m.id, got))
            if got["leader"] != (m.id == leader.id):
                raise AssertionError("%r: member %d leader flag %r" % (n, m.id, got["leader"]))


def check_create_on_follower(topo, follower):
    body = expect_status(follower.request("POST", "/v1/sites", SITE), 201,
                         "POST /v1/sites to follower %r" % follower)
    same_site(body, SITE, "201 body")
    for k in ("state", "created_at", "updated_at"):
        if k not in body:
            raise AssertionError("201 body has no %r: %r" % (k, body))
    got = expect_status(follower.request("GET", "/v1/sites/" + SITE["name"]), 200)
    same_site(got, SITE, "GET on %r" % follower)


def check_visible_everywhere(topo):
    def everywhere():
        for n in topo.region_nodes("r1"):
            status, body = n.request("GET", "/v1/sites/%s?stale=1" % SITE["name"])
            if status != 200:
                return None
            same_site(body, SITE, "stale GET on %r" % n)
            if SITE["name"] not in n.sites(stale=True):
                return None
        return True

    wait_until(everywhere, 10, "site visible on every node with ?stale=1")


def check_duplicate(topo):
    for n in topo.region_nodes("r1"):
        other = dict(SITE, labels={"zone": "elsewhere"})
        expect_error(n.request("POST", "/v1/sites", other), 409, "already_exists",
                     SITE["name"], "duplicate POST to %r" % n)
    got = expect_status(topo.region_nodes("r1")[0].request("GET", "/v1/sites/" + SITE["name"]),
                        200)
    same_site(got, SITE, "site after rejected duplicates")


def check_unknown(topo):
    for n in topo.region_nodes("r1"):
        for q in ("", "?stale=1"):
            expect_error(n.request("GET", "/v1/sites/no-such-site" + q), 404, "not_found",
                         "no-such-site", "GET unknown site%s on %r" % (q, n))
        expect_error(n.request("DELETE", "/v1/sites/no-such-site"), 404, "not_found",
                     what="DELETE unknown site on %r" % n)


def check_delete(topo, follower):
    name = "to-delete-1"
    expect_status(topo.node(1).request("POST", "/v1/sites", {"name": name}), 201)
    body = expect_status(follower.request("DELETE", "/v1/sites/" + name), 200,
                         "DELETE on follower %r" % follower)
    if not isinstance(body, dict) or body.get("name") != name:
        raise AssertionError("DELETE answered %r, want the deleted site" % body)
    for n in topo.region_nodes("r1"):
        expect_error(n.request("GET", "/v1/sites/" + name), 404, "not_found",
                     what="linearizable GET after DELETE on %r" % n)
    expect_error(follower.request("DELETE", "/v1/sites/" + name), 404, "not_found",
                 what="second DELETE")
    wait_until(lambda: all(n.request("GET", "/v1/sites/%s?stale=1" % name)[0] == 404
                           for n in topo.region_nodes("r1")),
               10, "deleted site gone from every node's own copy")


def check_linearizable_follower_reads(topo, rounds=15):
    rng = random.Random(7)
    nodes = topo.region_nodes("r1")
    leader = topo.leader()
    for i in range(rounds):
        writer = rng.choice(nodes)
        reader = rng.choice([n for n in nodes if n is not writer and n is not leader] or
                            [n for n in nodes if n is not writer])
        name = "lin-%d" % i
        expect_status(writer.request("POST", "/v1/sites", {"name": name}), 201,
                      "POST %s to %r" % (name, writer))
        listed = expect_status(reader.request("GET", "/v1/sites"), 200,
                               "GET /v1/sites on %r" % reader)
        if name not in {s["name"] for s in listed["sites"]}:
            raise AssertionError("%r: linearizable GET /v1/sites right after %r acknowledged "
                                 "%s does not show it" % (reader, writer, name))
        expect_status(reader.request("GET", "/v1/sites/" + name), 200,
                      "GET /v1/sites/%s on %r" % (name, reader))


def check_metrics(topo, leader):
    for n in topo.region_nodes("r1"):
        r = n.request_full("GET", "/metrics")
        expect_status(r, 200, "GET /metrics on %r" % n)
        ctype = r.header("Content-Type") or ""
        if not ctype.startswith("text/plain"):
            raise AssertionError("%r: /metrics Content-Type %r" % (n, ctype))
        m = harness.parse_metrics(r.text)
        missing = [k for k in REQUIRED_METRICS if k not in m]
        if missing:
            raise AssertionError("%r: /metrics lacks %s" % (n, missing))
        for name in REQUIRED_METRICS:
            for labels, _ in m[name]:
                if labels.get("region") != "r1":
                    raise AssertionError("%r: %s labels %r lack region=r1" % (n, name, labels))
        h = n.health()
        if m["archipel_raft_term"][0][1] != h["term"]:
            raise AssertionError("%r: archipel_raft_term %s, health term %s" %
                                 (n, m["archipel_raft_term"][0][1], h["term"]))
        if m["archipel_raft_commit_index"][0][1] < 5:
            raise AssertionError("%r: commit index %s after many writes" %
                                 (n, m["archipel_raft_commit_index"][0][1]))
        if n is not leader and m["archipel_http_forwarded_total"][0][1] < 1:
            raise AssertionError("follower %r forwarded requests but its counter is 0" % n)
    m = leader.metrics()
    if m["archipel_raft_proposals_total"][0][1] < 10:
        raise AssertionError("leader proposals_total %s after >10 writes" %
                             m["archipel_raft_proposals_total"][0][1])
    inf = [v for labels, v in m["archipel_raft_apply_latency_seconds_bucket"]
           if labels.get("le") == "+Inf"]
    if not inf or inf[0] < 10:
        raise AssertionError("leader apply latency +Inf bucket %s after >10 writes" % inf)


def main(t):
    topo = t.topology()
    t.check("archipel dev starts a 3-node region", topo.start_dev, regions=1, nodes=3,
            required=True)
    t.check("health on every node", check_health, topo)
    leader = t.check("exactly one leader", check_one_leader, topo, required=True)
    follower = [n for n in topo.region_nodes("r1") if n is not leader][0]
    t.check("GET /v1/cluster on every node lists the 3 voters", check_cluster, topo, leader)
    t.check("POST /v1/sites to a follower: 201 with the site as sent",
            check_create_on_follower, topo, follower)
    t.check("the site reaches every node (?stale=1)", check_visible_everywhere, topo)
    t.check("duplicate name: 409 already_exists on every node", check_duplicate, topo)
    t.check("unknown site: 404 not_found", check_unknown, topo)
    t.check("DELETE through a follower: 200, then 404 everywhere", check_delete, topo, follower)
    t.check("follower GET (linearizable) sees writes acknowledged by other nodes",
            check_linearizable_follower_reads, topo)
    t.check("/metrics is Prometheus text with the raft and http metrics", check_metrics, topo,
            leader)


if __name__ == "__main__":
    harness.run(main)
