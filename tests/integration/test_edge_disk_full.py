"""A site whose data directory fills up: writes answer 507 no_space, reads and workloads go on,
nothing acknowledged is lost, and the site recovers (and converges with its region) once space is
freed, without a restart.

The site's data directory (WORK/sites/r1-s1) is a small tmpfs mounted before `archipel dev`
starts (unmounted in a finally block); a filler file written until ENOSPC fills it.
"""

import errno
import os
import subprocess
import time

import harness

TENANT = "acme"
SITE = "r1-s1"
TMPFS_SIZE = "20m"
PROBE_PORT = 18083
FULL_FOR_S = 6.0
RES = {"cpu_millis": 10, "memory_mb": 10}
# Prints a numbered line of ~200 bytes every 10 ms on stdout, flushed: ~20 KB/s of log.
CHATTY = ("import sys, time\n"
          "i = 0\n"
          "while True:\n"
          "    i += 1\n"
          "    sys.stdout.write('line %d ' % i + 'x' * 190 + '\\n')\n"
          "    sys.stdout.flush()\n"
          "    time.sleep(0.01)\n")


def mounted(path):
    with open("/proc/mounts") as f:
        return any(line.split()[1] == path for line in f)


def umount(path, lazy=False):
    for _ in range(50):
        if not mounted(path):
            return
        subprocess.run(["umount"] + (["-l"] if lazy else []) + [path], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        if mounted(path):
            time.sleep(0.2)
    if mounted(path):
        raise AssertionError("could not unmount %s" % path)


def fill(path):
    """Write path until the file system is full (ENOSPC); returns the bytes written."""
    written = 0
    with open(path, "ab", buffering=0) as f:
        for chunk in (1 << 20, 1 << 12):
            block = b"\0" * chunk
            for _ in range(100000):
                try:
                    n = f.write(block)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
                written += n or 0
                if not n:
                    break
    return written


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)
    return True


def main(t):
    topo = t.topology()
    site_dir = os.path.join(topo.work_dir, "sites", SITE)
    prepare = topo.prepare

    def prepare_with_tmpfs(addresses):
        # A crashed earlier run may have left the tmpfs mounted: detach it before the wipe.
        umount(site_dir, lazy=True)
        prepare(addresses)
        os.makedirs(site_dir)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=" + TMPFS_SIZE, "tmpfs", site_dir],
                       check=True)

    topo.prepare = prepare_with_tmpfs
    try:
        run_checks(t, topo, site_dir)
    finally:
        topo.stop()
        umount(site_dir, lazy=True)


def run_checks(t, topo, site_dir):
    topo.start_dev(nodes=3, sites=1)
    region = topo.leader()
    site = topo.site(SITE)
    t.check("the site's data directory is the tmpfs",
            lambda: check(mounted(site_dir) and site.data_dir == site_dir and
                          os.path.exists(os.path.join(site_dir, "shard.db")),
                          "%s: mounted %s, site dir %s" % (site_dir, mounted(site_dir),
                                                          site.data_dir)), required=True)
    edge_pid = site.pid

    harness.expect_status(region.request_full("PUT", "/v1/quotas/%s" % TENANT, {
        "instances": 20, "cpu_millis": 1000, "memory_mb": 1000}), 200, "regional quota")
    harness.expect_status(region.request_full("PUT", "/v1/quotas/%s/reserves/%s" % (TENANT, SITE), {
        "instances": 10, "cpu_millis": 500, "memory_mb": 500}), 200, "the site's reserve")
    t.check("the site holds rights for local creates", lambda: harness.wait_until(
        lambda: site.request_full("GET", "/v1/quotas/%s" % TENANT).json["available"]["instances"]
        >= 8, 20, "site rights"), required=True)

    def create_on_site(name, command, restart="always"):
        return site.request_full("POST", "/v1/instances", {
            "name": name, "tenant": TENANT, "command": command, "resources": RES,
            "restart": restart})

    acked = {}  # id -> desired state the user was told

    def created(r, what):
        harness.expect_status(r, 201, what)
        acked[r.json["id"]] = "running"
        return r.json["id"]

    web = created(region.request_full("POST", "/v1/instances", {
        "name": "web", "tenant": TENANT, "site": SITE, "resources": RES,
        "command": ["python3", "-m", "http.server", str(PROBE_PORT), "--bind", site.ip]}),
        "create web through the region")
    chatty = created(create_on_site("chatty", ["python3", "-u", "-c", CHATTY]),
                     "create chatty on the site")
    keeper = created(create_on_site("keeper", ["sleep", "1000"]), "create keeper on the site")
    doomed = created(create_on_site("doomed", ["sleep", "1000"]), "create doomed on the site")

    def inst(iid):
        return site.request_full("GET", "/v1/instances/%s" % iid).json

    t.check("the four workloads run", lambda: harness.wait_until(
        lambda: all(inst(i)["actual"] == "running" and inst(i)["pid"] for i in acked), 30,
        "web, chatty, keeper, doomed running"), required=True)
    t.check("web answers", lambda: harness.wait_until(
        lambda: harness.request_full("GET", "%s:%d" % (site.ip, PROBE_PORT), "/").status == 200,
        20, "http.server answers"), required=True)
    pids = {i: inst(i)["pid"] for i in acked}
    # A run-once workload that ends while the disk is full; it counts its runs outside the tmpfs.
    runs_file = os.path.join(topo.work_dir, "brief-runs")
    brief = created(create_on_site("brief", ["sh", "-c", "echo run >> %s; sleep 3" % runs_file],
                                   restart="never"), "create brief (restart never) on the site")
    t.check("brief runs", lambda: harness.wait_until(
        lambda: inst(brief)["actual"] == "running", 20, "brief running"), required=True)

    def chatty_last_line():
        r = site.request_full("GET", "/v1/instances/%s/logs?tail_bytes=4096" % chatty)
        harness.expect_status(r, 200, "chatty's log")
        lines = [ln for ln in r.text.splitlines() if ln.startswith("line ") and ln.endswith("x")]
        return int(lines[-1].split()[1]) if lines else 0

    # ---- fill the disk
    filler = os.path.join(site_dir, "filler")
    prober = harness.Prober("http://%s:%d/" % (site.ip, PROBE_PORT), timeout=2.0)
    prober.start()
    written = fill(filler)
    print("filler: %d bytes; %d bytes left" % (written, free_bytes(site_dir)))
    full_at = time.monotonic()
    line_at_fill = chatty_last_line()

    r = create_on_site("during", ["sleep", "1000"])
    if r.status == 201:  # it made it to disk: it must survive like any other
        acked[r.json["id"]] = "running"
    t.check("a create on the full site answers 507 no_space naming the problem",
            lambda: check(harness.expect_error(r, 507, "no_space", mentions=(
                "space", "data directory"))["details"] == {"site": SITE, "write": "create"},
                "details of %r" % r))
    fill(filler)
    r = site.request_full("POST", "/v1/instances", {
        "name": "big", "tenant": TENANT, "command": ["sleep", "1000"],
        "resources": {"cpu_millis": 600, "memory_mb": 10}})
    if r.status == 201:
        acked[r.json["id"]] = "running"
    t.check("a create that needs rights from the region answers 507 too, not quota_exceeded",
            lambda: harness.expect_error(r, 507, "no_space"))
    r = site.request_full("POST", "/v1/instances/%s/stop" % keeper)
    if r.status == 200:
        acked[keeper] = "stopped"
    t.check("a stop on the full site answers 507 no_space",
            lambda: harness.expect_error(r, 507, "no_space", mentions=("space",)))
    r = site.request_full("DELETE", "/v1/instances/%s" % doomed)
    if r.status == 200:
        acked[doomed] = "deleted"
    t.check("a delete on the full site answers 507 no_space",
            lambda: harness.expect_error(r, 507, "no_space", mentions=("space",)))

    r = region.request_full("POST", "/v1/instances", {
        "name": "remote", "tenant": TENANT, "site": SITE, "command": ["sleep", "1000"],
        "resources": RES})
    t.check("the region accepts a create for the full site",
            lambda: harness.expect_status(r, 201))
    remote = created(r, "create remote through the region") if r.status == 201 else None

    reads = [("GET", "/v1/health"), ("GET", "/v1/instances"), ("GET", "/v1/instances?deleted=1"),
             ("GET", "/v1/instances/%s" % keeper), ("GET", "/v1/quotas/%s" % TENANT),
             ("GET", "/v1/instances/%s/logs" % chatty), ("GET", "/v1/state/hash"),
             ("GET", "/metrics")]
    deadline = time.monotonic() + FULL_FOR_S
    rounds = 0
    bad = []
    links = set()
    while time.monotonic() < deadline:
        for method, path in reads:
            got = site.request_full(method, path)
            if got.status != 200:
                bad.append("%s %s: %r" % (method, path, got))
            elif path == "/v1/health":
                links.add(got.json["link"])
        rounds += 1
        time.sleep(0.3)
    t.check("reads keep answering 200 while the disk is full (%d rounds)" % rounds,
            lambda: check(not bad, "; ".join(bad[:5])))
    t.check("the site stays linked to its region while the disk is full",
            lambda: check(links == {"connected"}, "link states seen: %s" % sorted(links)))
    listed = {i["id"] for i in site.request_full("GET", "/v1/instances").json["instances"]}
    t.check("the list still holds every acknowledged instance",
            lambda: check({web, chatty, keeper, doomed} <= listed, "listed %s" % listed))
    t.check("the site reports its full disk in /v1/health",
            lambda: check(site.request_full("GET", "/v1/health").json.get("storage") == "full",
                          site.request_full("GET", "/v1/health").text))
    t.check("/metrics says the disk is full",
            lambda: check(site.metric("archipel_site_disk_full") == 1.0,
                          "archipel_site_disk_full = %s" % site.metric("archipel_site_disk_full")))
    t.check("archipel-edge is still the same process",
            lambda: check(harness._pid_alive(edge_pid) and site.alive(),
                          "pid %s is gone" % edge_pid))
    t.check("every workload still runs (same pids)",
            lambda: check(all(harness._pid_alive(p) for p in pids.values()) and
                          {i: inst(i)["pid"] for i in pids} == pids,
                          "pids before %s, now %s" % (pids, {i: inst(i)["pid"] for i in pids})))
    t.check("the disk is still full", lambda: check(free_bytes(site_dir) < (64 << 10),
                                                    "%d bytes free" % free_bytes(site_dir)))

    # ---- free the space
    os.unlink(filler)
    print("the disk was full for %.1f s" % (time.monotonic() - full_at))
    freed = time.monotonic()

    def create_after():
        r = create_on_site("after", ["sleep", "1000"])
        if r.status == 201:
            acked[r.json["id"]] = "running"
            return r.json["id"]
        if r.status == 409:  # an earlier try made it
            return next(i["id"] for i in site.request_full("GET", "/v1/instances").json[
                "instances"] if i["name"] == "after")
        return None

    after = t.check("the site accepts a create again without a restart", lambda: harness.wait_until(
        create_after, 10, "create accepted after the space was freed"))
    print("writes accepted %.1f s after the space was freed" % (time.monotonic() - freed))
    if keeper in acked and acked[keeper] != "stopped":
        r = site.request_full("POST", "/v1/instances/%s/stop" % keeper)
        t.check("a stop is accepted again", lambda: harness.expect_status(r, 200))
        acked[keeper] = "stopped"
    if acked.get(doomed) != "deleted":
        r = site.request_full("DELETE", "/v1/instances/%s" % doomed)
        t.check("a delete is accepted again", lambda: harness.expect_status(r, 200))
        acked[doomed] = "deleted"
    t.check("the stopped and deleted workloads end", lambda: harness.wait_until(
        lambda: not harness._pid_alive(pids[keeper]) and not harness._pid_alive(pids[doomed]) and
        inst(keeper)["actual"] == "stopped" and inst(doomed)["actual"] == "stopped", 20,
        "keeper and doomed stopped"))
    if remote is not None:
        t.check("the region's create made while the disk was full runs on the site",
                lambda: harness.wait_until(
                    lambda: site.request_full("GET", "/v1/instances/%s" % remote).status == 200 and
                    inst(remote)["actual"] == "running", 20, "remote running on the site"))
    if after:
        t.check("the new instance runs", lambda: harness.wait_until(
            lambda: inst(after)["actual"] == "running", 20, "after running"))
    t.check("chatty's log grows again", lambda: harness.wait_until(
        lambda: chatty_last_line() > line_at_fill + 100, 10, "new log lines"))
    t.check("the bytes chatty could not log were counted", lambda: harness.wait_until(
        lambda: (site.metric("archipel_site_log_dropped_bytes_total") or 0) > 0, 10,
        "archipel_site_log_dropped_bytes_total > 0"))
    t.check("the site no longer reports a full disk", lambda: harness.wait_until(
        lambda: site.request_full("GET", "/v1/health").json.get("storage") == "ok" and
        site.metric("archipel_site_disk_full") == 0.0, 10, "storage ok"))
    prober.stop()
    t.check("web answered every probe while the disk was full",
            lambda: check(prober.failed == 0 and prober.ok > 20,
                          "probes ok=%d failed=%d %s" % (prober.ok, prober.failed,
                                                         prober.errors[:3])))
    t.check("brief (restart never) reads exited", lambda: harness.wait_until(
        lambda: inst(brief)["actual"] == "exited", 10, "brief exited"))

    def brief_runs():
        with open(runs_file) as f:
            return f.read().count("run")

    t.check("brief ran once: its end during the full disk did not make it restart",
            lambda: check(brief_runs() == 1, "brief ran %d times" % brief_runs()))
    t.check("web and chatty are the same processes as before",
            lambda: check(all(inst(i)["pid"] == pids[i] and harness._pid_alive(pids[i])
                              for i in (web, chatty)), "pids %s" % pids))

    def every_ack_kept(where, node):
        got = {i["id"]: i["desired"] for i in node.request_full(
            "GET", "/v1/instances?deleted=1" + ("&site=%s" % SITE if where == "region" else "")
        ).json["instances"]}
        missing = {i: d for i, d in acked.items() if got.get(i) != d}
        return check(not missing, "%s: acknowledged %s, holds %s" % (
            where, missing, {i: got.get(i) for i in missing}))

    t.check("the site holds every acknowledged instance in its acknowledged state",
            lambda: harness.wait_until(lambda: every_ack_kept("site", site), 10, "site acks"))
    t.check("the region holds them too", lambda: harness.wait_until(
        lambda: every_ack_kept("region", region), 10, "region acks"))

    def same_content():
        mine = site.request_full("GET", "/v1/state/hash").json
        for n in topo.region_nodes("r1"):
            theirs = n.request_full("GET", "/v1/state/hash").json["sites"][SITE]
            if (theirs["instances"], theirs["rights"]) != (mine["instances"], mine["rights"]):
                return False
        return True

    t.check("every regional replica's content hash of the site equals the site's",
            lambda: harness.wait_until(same_content, 15, "equal content hashes"))
    t.check("archipel-edge never restarted",
            lambda: check(harness._pid_alive(edge_pid) and site.pid == edge_pid,
                          "pid %s" % edge_pid))
    log = site.log_text()
    t.check("the site logged the full disk and its end",
            lambda: check("disk_full" in log and "disk_space_recovered" in log,
                          "no disk_full / disk_space_recovered line in %s" % site.log))

    # ---- the daemon stopped cleanly (an upgrade), the disk fills meanwhile, it starts again
    site.stop()
    fill(filler)
    site.start()
    t.check("archipel-edge starts again on the full disk", lambda: site.wait_http(20),
            required=True)
    listed = {i["id"]: i["desired"] for i in site.request_full(
        "GET", "/v1/instances?deleted=1").json["instances"]}
    t.check("after the restart it still lists every acknowledged instance",
            lambda: check(all(listed.get(i) == d for i, d in acked.items()),
                          "acknowledged %s, listed %s" % (acked, listed)))
    r = create_on_site("again", ["sleep", "1000"])
    if r.status == 201:
        acked[r.json["id"]] = "running"
    t.check("after the restart a create answers 507 no_space",
            lambda: harness.expect_error(r, 507, "no_space"))
    t.check("web still runs under its shim", lambda: check(
        harness._pid_alive(pids[web]) and inst(web)["pid"] == pids[web], "web %s" % inst(web)))
    os.unlink(filler)
    t.check("and takes writes once space is freed", lambda: harness.wait_until(
        lambda: create_on_site("again", ["sleep", "1000"]).status in (201, 409), 10,
        "create accepted"))
    t.check("the site and the region converge again",
            lambda: harness.wait_until(same_content, 15, "equal content hashes"))


if __name__ == "__main__":
    harness.run(main)
