"""Integration test harness: run archipel topologies as real processes and drive them.

Standard library only; every address is on 127.0.0.0/8 and every wait has a deadline.

A test file looks like this::

    import harness

    def main(t):
        topo = t.topology()                    # cleaned up by harness.run, whatever happens
        topo.start_dev(nodes=3)                # `archipel dev` in the work dir
        leader = topo.leader()
        t.check("leader answers", lambda: harness.expect_status(
            leader.request("GET", "/v1/health"), 200))

    if __name__ == "__main__":
        harness.run(main)

ctest runs it as ``python3 FILE --bin-dir BUILD/bin --work-dir BUILD/integration-work/NAME``.
``run`` prints one line per check and a final ``N passed, M failed`` line, exits non-zero when
anything failed, prints the tail of every node log on failure, and always stops every process it
started (also on SIGTERM or Ctrl-C). Before starting, a topology kills what a previous crashed run
of the *same* work dir left behind (and only that), wipes the work dir, and waits until nobody else
listens on its addresses.

Main pieces:

- ``request`` / ``request_full`` / ``raw_http``: HTTP with urllib (no proxy) or a raw socket.
- ``wait_until``: poll a predicate until it holds or a deadline passes (``Fatal`` ends it).
- ``Node``: one archipel-regional process: its addresses, command line, log; health, sites,
  metrics; ``kill9``, ``start`` (from its recorded command, log appended), ``stop``.
- ``Topology``: ``start_dev`` (``archipel dev``) or ``start_raw`` (nodes started directly, e.g.
  with extra flags); ``leader``, ``wait_converged``, ``stop``, ``dump_logs``.
- ``SiteWriter``: client threads writing distinct sites and recording what was acknowledged,
  for durability checks under faults (``assert_sites_durable``); ``write_sites`` for bulk
  writes that must all succeed.
- ``expect_status``, ``expect_error``, ``parse_metrics``: assertions a user would make.
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request

HTTP_PORT = 7100
RAFT_PORT = 7101
SITE_PORT = 7200
# Other ports a node may bind by default (the site link port of builds with an edge tier);
# checked free before a topology starts.
OTHER_PORTS = (7102,)
DEFAULT_HTTP_TIMEOUT = 5.0
LOG_TAIL_LINES = 40

# urllib honours *_proxy environment variables by default; tests only talk to loopback.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# The controller of `archipel dev` (docs/controller.md).
CONTROLLER_IP = "127.0.10.1"
CONTROLLER_PORTS = (7000, 7001, 7002)

# The bearer token requests carry unless told otherwise (token=None sends none): the admin
# token of the running `archipel dev`, set by Topology.start_dev.
_DEFAULT_TOKEN = {"token": None}


def set_default_token(token):
    """Make every request carry this bearer token (None: no token) unless it says otherwise."""
    _DEFAULT_TOKEN["token"] = token


class WaitTimeout(AssertionError):
    """A wait_until deadline passed; the message says what was awaited and the last value."""


class Fatal(AssertionError):
    """Raised inside a wait_until predicate: stop waiting, the condition can never hold."""


class Abort(Exception):
    """Raised by TestRun.check(required=True) to skip the remaining checks of a file."""


# ---------------------------------------------------------------------------------------------
# HTTP


def _loopback(base):
    """base ("ip:port") split into (host, port); refuses anything outside 127.0.0.0/8."""
    host, _, port = base.rpartition(":")
    if not host.startswith("127."):
        raise ValueError("tests only talk to 127.0.0.0/8, not %r" % base)
    return host, int(port)


class Response:
    """One HTTP answer. status is 0 when no answer came (refused, reset, timeout)."""

    def __init__(self, status, headers=None, body=b"", error=None):
        self.status = status
        self.headers = headers or {}
        self.body = body
        self.error = error  # str: why there was no answer (status 0)

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    @property
    def json(self):
        """The body parsed as JSON, or None when it is not JSON."""
        try:
            return json.loads(self.body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return None

    def header(self, name):
        for k, v in self.headers.items():
            if k.lower() == name.lower():
                return v
        return None

    def __repr__(self):
        if self.status == 0:
            return "<no answer: %s>" % self.error
        return "<HTTP %d %s>" % (self.status, self.text[:300])


def request_full(method, base, path, body=None, *, data=None, content_type="application/json",
                 headers=None, timeout=DEFAULT_HTTP_TIMEOUT, token="default"):
    """Send one request to http://BASE/PATH (base is "ip:port") and return a Response.

    body is sent as JSON; data (bytes) is sent as is instead. content_type=None sends no
    Content-Type header (urllib then says application/x-www-form-urlencoded for a body).
    Never raises for HTTP errors or connection failures: those give status 4xx/5xx or 0.
    token: the bearer token to send; "default" sends the harness default (set_default_token),
    None sends none.
    """
    _loopback(base)
    url = "http://%s%s" % (base, path)
    if body is not None:
        data = json.dumps(body).encode("utf-8")
    hdrs = dict(headers or {})
    if token == "default":
        token = _DEFAULT_TOKEN["token"]
    if token is not None and "Authorization" not in hdrs:
        hdrs["Authorization"] = "Bearer " + token
    if data is not None and content_type is not None:
        hdrs["Content-Type"] = content_type
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return Response(resp.status, dict(resp.headers.items()), resp.read())
    except urllib.error.HTTPError as e:
        try:
            payload = e.read()
        except OSError:
            payload = b""
        return Response(e.code, dict(e.headers.items()) if e.headers else {}, payload)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return Response(0, error="%s %s: %s" % (method, url, reason))


def request(method, base, path, body=None, **kw):
    """Like request_full but returns (status, parsed JSON body or None).

    When no answer came, returns (0, {"no_answer": "why"})."""
    r = request_full(method, base, path, body, **kw)
    if r.status == 0:
        return 0, {"no_answer": r.error}
    return r.status, r.json


def raw_http(base, data, timeout=DEFAULT_HTTP_TIMEOUT, half_close=False):
    """Send raw bytes to base ("ip:port") over one socket and parse the first answer.

    For requests urllib cannot make (huge bodies without Expect, broken framing). Send errors
    are ignored (the server may answer and close before reading everything). half_close=True
    shuts down the sending side after data, so the server sees the end of the stream.
    Returns a Response (status 0 when the server closed without answering).
    """
    host, port = _loopback(base)
    buf = b""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            try:
                s.sendall(data)
                if half_close:
                    s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    chunk = s.recv(65536)
                except OSError:
                    break
                if not chunk:
                    break
                buf += chunk
                resp = _parse_http(buf)
                if resp is not None:
                    return resp
    except OSError as e:
        return Response(0, error="raw %s: %s" % (base, e))
    resp = _parse_http(buf, eof=True)
    return resp if resp is not None else Response(0, error="raw %s: no answer (%r)" % (base,
                                                                                      buf[:200]))


def _parse_http(buf, eof=False):
    head, sep, rest = buf.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        return Response(0, error="bad status line %r" % lines[0])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip()] = v.strip()
    length = None
    for k, v in headers.items():
        if k.lower() == "content-length":
            length = int(v)
    if length is not None and len(rest) >= length:
        return Response(int(parts[1]), headers, rest[:length])
    if length is None and eof:
        return Response(int(parts[1]), headers, rest)
    return None


def expect_status(resp, status, what=""):
    """Assert resp ((status, json) or Response) has this status; returns the JSON body."""
    got, body = (resp.status, resp.json) if isinstance(resp, Response) else resp
    statuses = status if isinstance(status, (tuple, list, set)) else (status,)
    if got not in statuses:
        raise AssertionError("%sexpected HTTP %s, got %s: %s" % (what + ": " if what else "",
                                                                "/".join(map(str, statuses)),
                                                                got, _short(body)))
    return body


def expect_error(resp, status, code=None, mentions=(), what=""):
    """Assert resp is an error answer with the documented shape.

    Shape: {"error": {"code": str, "message": str, "details": object}}. code, when given, must
    match; every string of mentions must appear in the message (case-insensitive).
    Returns the "error" object.
    """
    body = expect_status(resp, status, what)
    prefix = what + ": " if what else ""
    if not isinstance(body, dict) or set(body) != {"error"} or not isinstance(body["error"], dict):
        raise AssertionError("%sbody is not {\"error\": {...}}: %s" % (prefix, _short(body)))
    err = body["error"]
    if set(err) != {"code", "message", "details"}:
        raise AssertionError("%serror keys are %s, want code, message, details" %
                             (prefix, sorted(err)))
    if not isinstance(err["code"], str) or not err["code"]:
        raise AssertionError("%serror.code is not a non-empty string: %r" % (prefix, err["code"]))
    if not isinstance(err["message"], str) or not err["message"]:
        raise AssertionError("%serror.message is not a non-empty string: %r" %
                             (prefix, err["message"]))
    if not isinstance(err["details"], dict):
        raise AssertionError("%serror.details is not an object: %r" % (prefix, err["details"]))
    if code is not None and err["code"] != code:
        raise AssertionError("%serror.code is %r, want %r (message %r)" %
                             (prefix, err["code"], code, err["message"]))
    if isinstance(mentions, str):
        mentions = (mentions,)
    for m in mentions:
        if m.lower() not in err["message"].lower():
            raise AssertionError("%serror.message %r does not mention %r" %
                                 (prefix, err["message"], m))
    return err


def _short(v, n=300):
    s = v if isinstance(v, str) else json.dumps(v)
    return s if len(s) <= n else s[:n] + "..."


_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


def parse_metrics(text):
    """Parse Prometheus text exposition. Returns {name: [(labels dict, float value)]}.

    Raises AssertionError on a line that is neither a comment nor `name{labels} value`.
    """
    out = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line or line.startswith("#"):
            continue
        labels = {}
        if "{" in line:
            name, _, rest = line.partition("{")
            inner, sep, value = rest.rpartition("}")
            if not sep:
                raise AssertionError("metrics line %d: unclosed labels: %r" % (lineno, line))
            for pair in _split_labels(inner):
                k, eq, v = pair.partition("=")
                if not eq or len(v) < 2 or v[0] != '"' or v[-1] != '"':
                    raise AssertionError("metrics line %d: bad label %r" % (lineno, pair))
                labels[k.strip()] = v[1:-1]
        else:
            name, _, value = line.partition(" ")
        parts = value.split()
        if not _METRIC_NAME.match(name) or not parts:
            raise AssertionError("metrics line %d: not `name{labels} value`: %r" % (lineno, line))
        try:
            v = float(parts[0])
        except ValueError:
            raise AssertionError("metrics line %d: value is not a number: %r" % (lineno, line))
        out.setdefault(name, []).append((labels, v))
    return out


def _split_labels(inner):
    pairs, cur, quoted, esc = [], "", False, False
    for ch in inner:
        if esc:
            cur, esc = cur + ch, False
        elif ch == "\\":
            cur, esc = cur + ch, True
        elif ch == '"':
            cur, quoted = cur + ch, not quoted
        elif ch == "," and not quoted:
            pairs.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        pairs.append(cur)
    return pairs


# ---------------------------------------------------------------------------------------------
# waiting


def wait_until(pred, timeout, what, interval=0.1):
    """Call pred() until it returns a truthy value, and return that value.

    Exceptions raised by pred count as "not yet", except Fatal, which ends the wait. Raises
    WaitTimeout after timeout seconds with what, the last value and the last exception.
    """
    deadline = time.monotonic() + timeout
    last, last_exc = None, None
    while True:
        try:
            last = pred()
            if last:
                return last
        except Fatal:
            raise
        except Exception as e:  # noqa: BLE001 - any failure means "not yet"
            last_exc = e
        if time.monotonic() >= deadline:
            msg = "%s: still not true after %.1f s; last value %s" % (what, timeout,
                                                                     _short(repr(last)))
            if last_exc is not None:
                msg += "; last error %r" % last_exc
            raise WaitTimeout(msg)
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------
# processes


def _cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return None


def _pid_alive(pid):
    """True when pid runs (a zombie, killed but not reaped, counts as dead)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _uses_dir(args, work_dir):
    return any(a == work_dir or a.startswith(work_dir + "/") or ("=" + work_dir) in a
               for a in args)


def _is_archipel(args):
    return bool(args) and os.path.basename(args[0]).startswith("archipel")


def processes_using(work_dir):
    """Pids of archipel processes (archipel, archipel-regional, ...) whose command line names
    work_dir or a path below it. Other processes (shells, the test itself) never match."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        args = _cmdline(int(entry))
        if _is_archipel(args) and _uses_dir(args, work_dir) and _pid_alive(int(entry)):
            pids.append(int(entry))
    return pids


def kill_leftovers(work_dir, timeout=10.0):
    """SIGKILL every archipel process left by an earlier run of this same work dir.

    Candidates are the pids recorded in work_dir/topology.json and work_dir/harness-pids.json
    and any archipel process whose command line names work_dir; each is killed only if it is
    an archipel binary whose command line really names work_dir (a recycled pid is left
    alone). Returns the pids killed.
    """
    recorded = set()
    for name in ("topology.json", "harness-pids.json"):
        try:
            with open(os.path.join(work_dir, name)) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            continue
        if name == "topology.json":
            for region in doc.get("regions", []):
                recorded.update(n.get("pid", 0) for n in region.get("nodes", []))
            for n in (doc.get("controller") or {}).get("nodes", []):
                recorded.add(n.get("pid", 0))
            recorded.update(s.get("pid", 0) for s in doc.get("sites", []))
        else:
            recorded.update(doc.get("pids", []))
    victims = set(processes_using(work_dir))
    for pid in recorded:
        args = _cmdline(pid) if isinstance(pid, int) and pid > 0 else None
        if _is_archipel(args) and _uses_dir(args, work_dir):
            victims.add(pid)
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    wait_until(lambda: not any(_pid_alive(p) for p in victims), timeout,
               "leftover processes of %s gone" % work_dir)
    return sorted(victims)


def listening(base, timeout=0.5):
    """True when something accepts TCP connections at base ("ip:port")."""
    host, port = _loopback(base)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def who_listens(base):
    """["pid args..."] of the processes listening on base ("ip:port"), from /proc (best effort:
    other users' processes cannot be inspected)."""
    host, port = base.rsplit(":", 1)
    want = "%08X:%04X" % (int.from_bytes(socket.inet_aton(host), "little"), int(port))
    inodes = set()
    try:
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and cols[1] in (want, "00000000:%04X" % int(port)):
                    inodes.add("socket:[%s]" % cols[9])
    except OSError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir("/proc/%s/fd" % entry)
            if any(os.readlink("/proc/%s/fd/%s" % (entry, fd)) in inodes for fd in fds):
                found.append("%s %s" % (entry, " ".join(_cmdline(int(entry)) or [])))
        except OSError:
            continue
    return found


def wait_addresses_free(addresses, timeout=60.0):
    """Wait until nothing listens on any of addresses (another test may be finishing).

    On timeout the error names the processes holding them."""
    try:
        wait_until(lambda: not [a for a in addresses if listening(a)], timeout,
                   "nothing else listening on %s" % ", ".join(addresses), interval=0.5)
    except WaitTimeout as e:
        busy = [a for a in addresses if listening(a)]
        holders = sorted({p for a in busy for p in who_listens(a)})
        raise WaitTimeout("%s; busy: %s; held by: %s" % (e, busy, holders or "unknown"))


# ---------------------------------------------------------------------------------------------
# nodes and topologies


class Prober(threading.Thread):
    """GET url every 100 ms in a thread; counts answers (ok) and failures (failed, errors).
    Bounded: at most 10,000 probes, stopped by stop()."""

    def __init__(self, url, timeout=1.0):
        super().__init__(daemon=True)
        self.url = url
        self.timeout = timeout
        self.ok = 0
        self.failed = 0
        self.errors = []
        self._halt = threading.Event()

    def run(self):
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        for _ in range(10000):
            if self._halt.is_set():
                return
            try:
                with opener.open(self.url, timeout=self.timeout) as r:
                    r.read()
                self.ok += 1
            except Exception as e:  # any failure counts
                self.failed += 1
                self.errors.append(repr(e))
            self._halt.wait(0.1)

    def stop(self):
        self._halt.set()
        self.join(5)


class Node:
    """One archipel-regional process of a topology.

    Attributes: region ("r1"), id (raft id), ip, http ("ip:port"), raft ("ip:port"),
    cmd (argv that (re)starts it with its data), log (path), data_dir, pid (None when never
    started by us and unknown), popen (set when this harness started the process).
    """

    def __init__(self, topo, region, node_id, ip, cmd, log, pid=None,
                 http_port=HTTP_PORT, raft_port=RAFT_PORT):
        self.topo = topo
        self.region = region
        self.id = node_id
        self.ip = ip
        self.http = "%s:%d" % (ip, http_port)
        self.raft = "%s:%d" % (ip, raft_port)
        self.cmd = list(cmd)
        self.log = log
        self.pid = pid
        self.popen = None
        self.data_dir = cmd[cmd.index("--dir") + 1] if "--dir" in cmd else None
        self.stopping = False  # set when the harness kills or stops it on purpose
        self.deaths = []  # "how it ended" for each run that ended without being asked to

    def __repr__(self):
        return "<node %s/%s %s pid %s>" % (self.region, self.id, self.http, self.pid)

    # --- HTTP

    def request(self, method, path, body=None, **kw):
        """(status, json) of one request to this node; status 0 when it did not answer."""
        return request(method, self.http, path, body, **kw)

    def request_full(self, method, path, body=None, **kw):
        return request_full(method, self.http, path, body, **kw)

    def health(self, timeout=2.0):
        """GET /v1/health as a dict, or None when the node does not answer 200."""
        status, body = self.request("GET", "/v1/health", timeout=timeout)
        return body if status == 200 and isinstance(body, dict) else None

    def sites(self, stale=True, timeout=DEFAULT_HTTP_TIMEOUT):
        """{name: site} from GET /v1/sites (?stale=1 by default: this node's own copy)."""
        status, body = self.request("GET", "/v1/sites" + ("?stale=1" if stale else ""),
                                    timeout=timeout)
        body = expect_status((status, body), 200, "GET /v1/sites on %s" % self.http)
        return {s["name"]: s for s in body["sites"]}

    def metrics(self):
        """parse_metrics of GET /metrics."""
        r = self.request_full("GET", "/metrics")
        expect_status(r, 200, "GET /metrics on %s" % self.http)
        return parse_metrics(r.text)

    def metric(self, name, default=None):
        """Value of the first sample of metric name on this node (default when absent)."""
        samples = self.metrics().get(name)
        return samples[0][1] if samples else default

    # --- process

    def alive(self):
        if self.popen is not None:
            return self.popen.poll() is None
        return self.pid is not None and _pid_alive(self.pid)

    def start(self, extra_args=(), cmd=None):
        """Start the process from cmd (default self.cmd) plus extra_args, log appended.

        The command becomes the node's recorded cmd. Does not wait for it to answer
        (see wait_http).
        """
        if self.alive():
            raise AssertionError("%r: start while still running" % self)
        self.check_death()
        self.cmd = list(cmd if cmd is not None else self.cmd) + list(extra_args)
        if "--dir" in self.cmd:
            self.data_dir = self.cmd[self.cmd.index("--dir") + 1]
        os.makedirs(os.path.dirname(self.log), exist_ok=True)
        with open(self.log, "ab") as logf:
            logf.write(("--- harness: starting %s\n" % " ".join(self.cmd)).encode())
            logf.flush()
            self.popen = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=logf,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.popen.pid
        self.stopping = False
        self.topo._record_pid(self.pid)
        return self

    def check_death(self):
        """Record (in .deaths) that the current process ended without the harness asking.

        Returns the description, or None when it runs or was stopped on purpose. The exit
        status is known for processes this harness started (e.g. "killed by SIGPIPE")."""
        if self.pid is None or self.stopping or self.alive():
            return None
        how = "ended"
        if self.popen is not None:
            rc = self.popen.poll()
            if rc is not None and rc < 0:
                try:
                    how = "killed by %s" % signal.Signals(-rc).name
                except ValueError:
                    how = "killed by signal %d" % -rc
            elif rc is not None:
                how = "exited with status %d" % rc
        else:
            how = self.topo._dev_report(self) or how
        desc = "%r ended without the harness asking: %s" % (self, how)
        self.deaths.append(desc)
        self.stopping = True  # report each death once
        return desc

    def wait_http(self, timeout=20.0):
        """Wait until GET /v1/health answers 200; returns the health document."""
        return wait_until(lambda: self.alive() and self.health(), timeout,
                          "%r answers /v1/health" % self, interval=0.2)

    def kill9(self, timeout=10.0):
        """SIGKILL the process and wait until it is dead (no clean shutdown)."""
        if self.pid is None:
            return
        self.check_death()
        self.stopping = True
        try:
            os.kill(self.pid, signal.SIGKILL)
        except OSError:
            pass
        if self.popen is not None:
            self.popen.wait(timeout)
        wait_until(lambda: not self.alive(), timeout, "%r dead after SIGKILL" % self)

    def terminate(self):
        """Send SIGTERM once (a second one may force a node out mid-shutdown); see wait_exit."""
        self.check_death()
        if self.pid is None or not self.alive() or self.stopping:
            return
        self.stopping = True
        try:
            os.kill(self.pid, signal.SIGTERM)
        except OSError:
            pass

    def wait_exit(self, timeout=15.0):
        """Wait up to timeout for the process to end, then SIGKILL it. Returns the exit status
        when known (processes this harness started)."""
        try:
            wait_until(lambda: not self.alive(), timeout, "%r stops" % self)
        except WaitTimeout:
            print("harness: %r did not stop in %.0f s; killing it" % (self, timeout),
                  file=sys.stderr)
            self.kill9()
        return self.popen.wait(5) if self.popen is not None else None

    def stop(self, timeout=15.0):
        """SIGTERM, wait up to timeout, then SIGKILL. Returns the exit status when known."""
        self.terminate()
        return self.wait_exit(timeout)

    def log_text(self):
        try:
            with open(self.log, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


class Topology:
    """Processes of one test in one work dir. Use start_dev or start_raw, then stop().

    Also a context manager: on an exception the logs are dumped, and it always stops.
    """

    def __init__(self, bin_dir, work_dir):
        self.bin_dir = os.path.abspath(bin_dir)
        self.work_dir = os.path.abspath(work_dir)
        self.nodes = []
        self.sites = []
        self.dev = None  # Popen of `archipel dev`
        self.controller = None  # the controller Node (start_dev)
        self.token = None  # the admin token (start_dev)
        self._pids = []
        self._stopped = False
        self._problems = []  # tear-down failures not tied to one node

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.dump_logs()
        self.stop()
        return False

    # --- set-up

    def prepare(self, addresses):
        """Kill leftovers of this work dir, wipe it, wait until addresses are free."""
        killed = kill_leftovers(self.work_dir)
        if killed:
            print("harness: killed leftovers of an earlier run in %s: %s" %
                  (self.work_dir, killed))
        shutil.rmtree(self.work_dir, ignore_errors=True)
        os.makedirs(os.path.join(self.work_dir, "logs"))
        wait_addresses_free(addresses)

    def _record_pid(self, pid):
        self._pids.append(pid)
        tmp = os.path.join(self.work_dir, "harness-pids.json.tmp")
        with open(tmp, "w") as f:
            json.dump({"pids": self._pids}, f)
        os.replace(tmp, os.path.join(self.work_dir, "harness-pids.json"))

    @staticmethod
    def node_ip(region_index, node_id):
        """Loopback address of region rK node I, as archipel dev assigns it."""
        return "127.0.%d.%d" % (10 + region_index, node_id)

    def node_cmd(self, region_index, node_id, peers=(), join=False, extra_args=()):
        """The archipel-regional argv archipel dev would use (peers: ids in the region).

        join=True replaces the peers by --join (start empty, wait to be added).
        """
        ip = self.node_ip(region_index, node_id)
        cmd = [os.path.join(self.bin_dir, "archipel-regional"), "--region", "r%d" % region_index,
               "--id", str(node_id), "--ip", ip, "--http-port", str(HTTP_PORT),
               "--raft-port", str(RAFT_PORT), "--dir",
               os.path.join(self.work_dir, "r%d" % region_index, "node%d" % node_id)]
        if join:
            cmd.append("--join")
        else:
            for j in peers:
                pip = self.node_ip(region_index, j)
                cmd += ["--peer", "%d,%s:%d,%s:%d" % (j, pip, RAFT_PORT, pip, HTTP_PORT)]
        return cmd + list(extra_args)

    def new_node(self, region_index, node_id, cmd):
        """Register (without starting) a node with this command line; returns the Node."""
        ip = self.node_ip(region_index, node_id)
        log = os.path.join(self.work_dir, "logs", "r%d-%d.log" % (region_index, node_id))
        node = Node(self, "r%d" % region_index, node_id, ip, cmd, log)
        self.nodes = [n for n in self.nodes if not (n.region == node.region and n.id == node_id)]
        self.nodes.append(node)
        return node

    def start_dev(self, regions=1, nodes=3, timeout=90.0, attempts=3, sites=0):
        """Run `archipel dev --dir WORK` and wait for its topology.json and a leader per region.

        sites: edge sites per region (rK-sS on 127.0.(20+K).S:7200), listed in self.sites as
        Nodes whose id is the site name (see site()).

        When another process grabbed one of the addresses between the check and the bind
        (another test on a shared machine), starts again, up to attempts times.
        """
        addrs = ["%s:%d" % (self.node_ip(r, i), p) for r in range(1, regions + 1)
                 for i in range(1, nodes + 1) for p in (HTTP_PORT, RAFT_PORT) + OTHER_PORTS]
        addrs += ["127.0.%d.%d:%d" % (20 + r, i, SITE_PORT) for r in range(1, regions + 1)
                  for i in range(1, sites + 1)]
        addrs += ["%s:%d" % (CONTROLLER_IP, p) for p in CONTROLLER_PORTS]
        return self._start(addrs, lambda: self._start_dev_once(regions, nodes, timeout, sites),
                           attempts)

    def start_raw(self, region_index=1, nodes=3, extra_args=(), timeout=60.0, attempts=3):
        """Start a region's nodes directly (archipel dev's flags plus extra_args).

        Writes work_dir/topology.json in archipel dev's shape and waits for a leader. Retries
        like start_dev when an address was taken meanwhile.
        """
        addrs = ["%s:%d" % (self.node_ip(region_index, i), p) for i in range(1, nodes + 1)
                 for p in (HTTP_PORT, RAFT_PORT) + OTHER_PORTS]

        def once():
            ids = list(range(1, nodes + 1))
            for i in ids:
                self.new_node(region_index, i, self.node_cmd(region_index, i, ids, False,
                                                             extra_args)).start()
            self.write_topology()
            self.leader("r%d" % region_index, timeout)

        return self._start(addrs, once, attempts)

    def _start(self, addrs, once, attempts):
        for attempt in range(1, attempts + 1):
            self.prepare(addrs)
            try:
                once()
                dead = [n for n in self.nodes if not n.alive()]
                if dead:
                    raise AssertionError("nodes exited during start-up: %s" % dead)
                return self
            except AssertionError as e:
                if attempt == attempts or not self._lost_bind_race():
                    raise
                print("harness: start-up lost its addresses to another process (%s); "
                      "starting again (%d/%d)" % (e, attempt + 1, attempts), flush=True)
                self._reset()
        return self

    def _lost_bind_race(self):
        """True when a node log says it could not bind (address already in use)."""
        for _, path in self.logs():
            try:
                with open(path, "rb") as f:
                    if b"Address already in use" in f.read():
                        return True
            except OSError:
                pass
        return False

    def _reset(self):
        """Stop what a failed start-up left running and forget it (before a new attempt)."""
        for n in self.nodes:
            if n.popen is not None and n.alive():
                n.stop(timeout=10)
        if self.dev is not None and self.dev.poll() is None:
            self.dev.send_signal(signal.SIGTERM)
            try:
                self.dev.wait(25)
            except subprocess.TimeoutExpired:
                self.dev.kill()
                self.dev.wait(5)
        self.dev = None
        self.nodes = []
        kill_leftovers(self.work_dir)

    def _start_dev_once(self, regions, nodes, timeout, sites=0):
        out = open(os.path.join(self.work_dir, "dev.out"), "ab")
        cmd = [os.path.join(self.bin_dir, "archipel"), "dev", "--dir", self.work_dir,
               "--regions", str(regions), "--nodes-per-region", str(nodes),
               "--sites", str(sites)]
        # dev writes the CLI's config: keep it in the work dir, not the user's home.
        env = dict(os.environ, XDG_CONFIG_HOME=os.path.join(self.work_dir, "xdg"))
        self.dev = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True, env=env)
        out.close()
        self._record_pid(self.dev.pid)
        path = os.path.join(self.work_dir, "topology.json")

        def ready():
            if self.dev.poll() is not None:
                raise AssertionError("archipel dev exited with status %d during start-up" %
                                     self.dev.returncode)
            return os.path.exists(path)

        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise WaitTimeout("archipel dev wrote no topology.json in %.0f s" % timeout)
            time.sleep(0.2)
        with open(path) as f:
            doc = json.load(f)
        for region in doc["regions"]:
            for n in region["nodes"]:
                node = Node(self, region["name"], n["id"], n["ip"], n["cmd"], n["log"], n["pid"])
                self.nodes.append(node)
        for site in doc.get("sites", []):
            self.sites.append(Node(self, site["region"], site["name"], site["ip"], site["cmd"],
                                   site["log"], site["pid"], http_port=SITE_PORT))
        for c in (doc.get("controller") or {}).get("nodes", []):
            self.controller = Node(self, "controller", c["id"], c["ip"], c["cmd"], c["log"],
                                   c["pid"], http_port=int(c["http"].rsplit(":", 1)[1]))
        if doc.get("admin_token_file"):
            with open(doc["admin_token_file"]) as f:
                self.token = f.read().strip()
            set_default_token(self.token)
        for region in doc["regions"]:
            self.leader(region["name"])

    def site(self, name):
        """The site Node called name (from start_dev(sites=...))."""
        for s in self.sites:
            if s.id == name:
                return s
        raise AssertionError("no site %s in this topology" % name)

    def write_topology(self):
        """Write work_dir/topology.json (archipel dev's shape) for the nodes now known."""
        regions = {}
        for n in self.nodes:
            regions.setdefault(n.region, []).append({
                "id": n.id, "ip": n.ip, "http": n.http, "raft": n.raft, "pid": n.pid or 0,
                "cmd": n.cmd, "log": n.log})
        doc = {"regions": [{"name": k, "nodes": v} for k, v in sorted(regions.items())],
               "sites": [], "controller": None, "dir": self.work_dir}
        tmp = os.path.join(self.work_dir, "topology.json.tmp")
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=2)
        os.replace(tmp, os.path.join(self.work_dir, "topology.json"))

    # --- queries

    def node(self, node_id, region="r1"):
        for n in self.nodes:
            if n.region == region and n.id == node_id:
                return n
        raise KeyError("no node %s/%s" % (region, node_id))

    def region_nodes(self, region="r1", alive_only=False):
        return [n for n in self.nodes if n.region == region and (not alive_only or n.alive())]

    def leader(self, region="r1", timeout=30.0, among=None):
        """Wait until the region has one leader that every node naming a leader agrees on;
        return that Node.

        among: the nodes to ask (default: every running node of the region). Nodes that do
        not answer or know no leader (e.g. a --join node not added yet) are ignored; at least
        one must name the leader, and the leader itself must say role "leader".
        """
        def find():
            nodes = among if among is not None else self.region_nodes(region, alive_only=True)
            if not any(n.alive() for n in nodes):
                raise Fatal("no node of region %s is running: %s" %
                            (region, "; ".join(d for n in self.nodes for d in
                                               [n.check_death()] if d) or nodes))
            healths = {n.id: n.health() for n in nodes}
            named = {h["leader"]["id"] for h in healths.values()
                     if h and isinstance(h.get("leader"), dict)}
            if len(named) != 1:
                return None
            lid = named.pop()
            if (healths.get(lid) or {}).get("role") != "leader":
                return None
            return self.node(lid, region)

        return wait_until(find, timeout, "region %s has one agreed leader" % region,
                          interval=0.2)

    def wait_converged(self, region="r1", timeout=30.0, nodes=None):
        """Wait until every given node (default: running nodes of region) reports the same
        applied_index and the same commit_index in two polls in a row; returns the applied
        index.

        applied_index counts catalog commands only: after a membership change (a raft
        configuration entry) it stays below commit_index until the next write, on every node.
        """
        prev = [None]

        def same():
            ns = nodes if nodes is not None else self.region_nodes(region, alive_only=True)
            hs = [n.health() for n in ns]
            if any(h is None for h in hs):
                prev[0] = None
                return None
            state = ({h["applied_index"] for h in hs}, {h["commit_index"] for h in hs})
            if len(state[0]) != 1 or len(state[1]) != 1:
                prev[0] = None
                return None
            ok = prev[0] == state
            prev[0] = state
            return next(iter(state[0])) if ok else None

        return wait_until(same, timeout, "nodes of %s at the same applied and commit index" %
                          region, interval=0.3)

    # --- tear-down and diagnostics

    def stop(self):
        """Stop every process this topology started; idempotent, never raises."""
        if self._stopped:
            return
        self._stopped = True
        everyone = self.nodes + self.sites + ([self.controller] if self.controller else [])
        for n in self.nodes:
            n.check_death()
        try:
            # Processes this harness (re)started itself; archipel dev stops only its own children.
            mine = [n for n in everyone if n.popen is not None and n.alive()]
            for n in mine:
                n.terminate()
            for n in self.nodes:
                n.stopping = True  # archipel dev stops its own children
            if self.dev is not None and self.dev.poll() is None:
                self.dev.send_signal(signal.SIGTERM)
                try:
                    self.dev.wait(25)
                except subprocess.TimeoutExpired:
                    print("harness: archipel dev did not stop in 25 s; killing it",
                          file=sys.stderr)
                    self.dev.kill()
                    self.dev.wait(5)
            if self.dev is not None and self.dev.returncode != 0:
                self._problems.append("archipel dev exited with status %s" %
                                      self.dev.returncode)
            for n in mine:
                rc = n.wait_exit(timeout=15.0)
                if rc:
                    how = ("killed by %s" % signal.Signals(-rc).name if rc < 0 and
                           -rc in signal.valid_signals() else "exit status %d" % rc)
                    n.deaths.append("%r did not exit cleanly when stopped: %s" % (n, how))
        except Exception:  # noqa: BLE001 - the sweep below must still run
            traceback.print_exc()
        finally:
            try:
                rest = kill_leftovers(self.work_dir)
                if rest:
                    print("harness: had to SIGKILL %s at stop" % rest, file=sys.stderr)
            except Exception:  # noqa: BLE001
                traceback.print_exc()

    def _dev_report(self, node):
        """What archipel dev printed about node's process ending ("killed by signal 13; ...")."""
        try:
            with open(os.path.join(self.work_dir, "dev.out")) as f:
                text = f.read()
        except OSError:
            return None
        key = "%s-%s (pid %s) " % (node.region, node.id, node.pid)
        for line in text.splitlines():
            if key in line:
                return line.split(key, 1)[1]
        return None

    def deaths(self):
        """Every node death the harness did not cause and every unclean stop, as text
        (see Node.check_death)."""
        for n in self.nodes:
            n.check_death()
        problems = list(self._problems)
        dev_out = os.path.join(self.work_dir, "dev.out")
        if self.dev is not None and os.path.exists(dev_out):
            with open(dev_out) as f:
                problems += ["archipel dev: " + line.strip() for line in f
                             if "did not stop" in line]
        return [d for n in self.nodes for d in n.deaths] + problems

    def logs(self):
        """[(label, path)] of the node logs (known nodes and any other WORK/logs/*.log) and
        archipel dev's output."""
        out = [("%s-%s" % (n.region, n.id), n.log) for n in self.nodes + self.sites]
        # Logs of nodes not known (yet), e.g. when archipel dev failed before topology.json.
        logs_dir = os.path.join(self.work_dir, "logs")
        known = {path for _, path in out}
        if os.path.isdir(logs_dir):
            for name in sorted(os.listdir(logs_dir)):
                path = os.path.join(logs_dir, name)
                if name.endswith(".log") and path not in known:
                    out.append((name[:-4], path))
        dev_out = os.path.join(self.work_dir, "dev.out")
        if os.path.exists(dev_out):
            out.append(("archipel dev", dev_out))
        return out

    def dump_logs(self, lines=LOG_TAIL_LINES, out=None):
        """Print the last lines of every log (to stderr by default)."""
        out = out or sys.stderr
        for label, path in self.logs():
            try:
                with open(path, "rb") as f:
                    tail = f.read().decode("utf-8", "replace").splitlines()[-lines:]
            except OSError as e:
                tail = ["(cannot read: %s)" % e]
            print("----- %s: last %d lines of %s" % (label, len(tail), path), file=out)
            for line in tail:
                print("  " + line, file=out)
        out.flush()

    def sanitizer_reports(self):
        """[(label, first line)] for logs holding an ASan/UBSan/LSan report."""
        found = []
        for label, path in self.logs():
            try:
                with open(path, "rb") as f:
                    text = f.read().decode("utf-8", "replace")
            except OSError:
                continue
            for line in text.splitlines():
                if ("ERROR: AddressSanitizer" in line or "ERROR: LeakSanitizer" in line
                        or "runtime error:" in line):
                    found.append((label, line.strip()))
                    break
        return found


# ---------------------------------------------------------------------------------------------
# load and durability


class SiteWriter:
    """Client threads that each POST distinct sites to random nodes, recording the outcome.

    targets() returns the nodes to pick from (called before every write). Every name sent
    is in .sent; every 2xx in .acked {name: monotonic time of the answer}; every other
    outcome in .failures [(time, name, status, error code or reason)]. A name is never sent
    twice, so an ambiguous failure (timeout, 503 after forwarding) may or may not have
    written it, but a site outside .sent can only be a bug.
    """

    def __init__(self, targets, threads=4, prefix="w", timeout=3.0, pause=0.0):
        self.targets = targets
        self.threads = threads
        self.prefix = prefix
        self.timeout = timeout
        self.pause = pause
        self.sent = set()
        self.acked = {}
        self.failures = []
        self.started_at = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers = []

    def start(self):
        self.started_at = time.monotonic()
        for t in range(self.threads):
            th = threading.Thread(target=self._run, args=(t,), daemon=True)
            th.start()
            self._workers.append(th)
        return self

    def _run(self, t):
        rng = random.Random(t)
        seq = 0
        while not self._stop.is_set():
            seq += 1
            name = "%s%d-%d" % (self.prefix, t, seq)
            nodes = self.targets()
            node = rng.choice(nodes)
            with self._lock:
                self.sent.add(name)
            status, body = node.request("POST", "/v1/sites",
                                        {"name": name, "labels": {"writer": str(t)}},
                                        timeout=self.timeout)
            now = time.monotonic()
            with self._lock:
                if 200 <= status < 300:
                    self.acked[name] = now
                else:
                    why = ((body or {}).get("error") or {}).get("code") if isinstance(
                        body, dict) else None
                    self.failures.append((now, name, status, why or "no answer"))
            if status == 0 or status >= 500:
                time.sleep(0.05)  # do not spin on a dead node
            elif self.pause:
                time.sleep(self.pause)

    def stop(self, timeout=None):
        """Stop the threads and wait for their last request to end."""
        self._stop.set()
        for th in self._workers:
            th.join(timeout if timeout is not None else self.timeout + 5)
        alive = [th for th in self._workers if th.is_alive()]
        if alive:
            raise AssertionError("%d writer threads did not stop" % len(alive))

    def longest_gap(self, since=None, until=None):
        """Longest time (s) without any acknowledged write in [since, until] (monotonic times)
        and the time it started. since defaults to the start, until to the last ack."""
        with self._lock:
            times = sorted(self.acked.values())
        since = self.started_at if since is None else since
        until = (times[-1] if times else since) if until is None else until
        points = [since] + [x for x in times if since < x < until] + [until]
        best, at = 0.0, since
        for a, b in zip(points, points[1:]):
            if b - a > best:
                best, at = b - a, a
        return best, at


def write_sites(nodes, names, threads=4, timeout=DEFAULT_HTTP_TIMEOUT, deadline_s=120.0):
    """POST {"name": name} for every name, spread over threads and nodes (a node or a list),
    and assert each answer is 201. Returns the number written."""
    nodes = nodes if isinstance(nodes, (list, tuple)) else [nodes]
    names = list(names)
    errors = []
    lock = threading.Lock()
    stop_at = time.monotonic() + deadline_s

    def worker(k):
        for i in range(k, len(names), threads):
            if errors or time.monotonic() > stop_at:
                return
            node = nodes[i % len(nodes)]
            status, body = node.request("POST", "/v1/sites", {"name": names[i]}, timeout=timeout)
            if status != 201:
                with lock:
                    errors.append("POST %s to %r: %s %s" % (names[i], node, status,
                                                            _short(body, 200)))

    ths = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(threads)]
    for th in ths:
        th.start()
    for th in ths:
        th.join(max(0.0, stop_at - time.monotonic()) + timeout + 1)
    if errors:
        raise AssertionError("%d writes failed, first: %s" % (len(errors), errors[0]))
    if any(th.is_alive() for th in ths) or time.monotonic() > stop_at:
        raise AssertionError("writing %d sites took more than %.0f s" % (len(names), deadline_s))
    return len(names)


def assert_sites_durable(nodes, acked, sent, prefix=None):
    """Assert each node's own copy (?stale=1) holds every acknowledged site and nothing unsent.

    acked, sent: collections of names. prefix: only sites whose name starts with it are
    checked against sent (others belong to other parts of the test). Returns {node id: set}.
    """
    copies = {}
    for n in nodes:
        have = set(n.sites(stale=True))
        if prefix is not None:
            have = {s for s in have if s.startswith(prefix)}
        lost = set(acked) - have
        if lost:
            raise AssertionError("%r lost %d acknowledged sites, e.g. %s" %
                                 (n, len(lost), sorted(lost)[:5]))
        extra = have - set(sent)
        if extra:
            raise AssertionError("%r holds %d sites never sent, e.g. %s" %
                                 (n, len(extra), sorted(extra)[:5]))
        copies[n.id] = have
    return copies


# ---------------------------------------------------------------------------------------------
# running a test file


class TestRun:
    """The checks of one test file: counts, prints, owns the topologies to clean up."""

    def __init__(self, args):
        self.args = args
        self.passed = 0
        self.failed = []
        self.topologies = []

    def topology(self, work_subdir=None):
        """A new Topology in the work dir (or a subdir of it), stopped by run() at the end."""
        wd = self.args.work_dir if work_subdir is None else os.path.join(self.args.work_dir,
                                                                         work_subdir)
        topo = Topology(self.args.bin_dir, wd)
        self.topologies.append(topo)
        return topo

    def check(self, name, fn, *args, required=False, **kw):
        """Run fn(*args, **kw) as one named check; returns its result (None if it failed).

        An AssertionError or any other exception fails the check and is printed; with
        required=True the remaining checks are skipped (raises Abort).
        """
        t0 = time.monotonic()
        try:
            result = fn(*args, **kw)
        except Abort:
            raise
        except Exception as e:  # noqa: BLE001 - any exception fails the check
            dt = time.monotonic() - t0
            self.failed.append(name)
            print("FAIL %s (%.1f s): %s" % (name, dt, e), flush=True)
            for topo in self.topologies:
                for n in topo.nodes:
                    death = n.check_death()
                    if death:
                        print("     meanwhile %s" % death, flush=True)
            if not isinstance(e, AssertionError):
                traceback.print_exc(file=sys.stdout)
            if required:
                raise Abort(name)
            return None
        self.passed += 1
        print("ok   %s (%.1f s)" % (name, time.monotonic() - t0), flush=True)
        return result


def _on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def parse_args(description=None):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--bin-dir", required=True, help="directory of archipel binaries")
    p.add_argument("--work-dir", required=True, help="scratch directory, wiped at start")
    args = p.parse_args()
    args.bin_dir = os.path.abspath(args.bin_dir)
    args.work_dir = os.path.abspath(args.work_dir)
    return args


def run(main, description=None):
    """Entry point of a test file: parse arguments, run main(TestRun), clean up, exit.

    Prints "N passed, M failed" last and exits 1 when a check failed, main raised, no check
    ran, or a node log holds a sanitizer report.
    """
    args = parse_args(description)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, _on_signal)
    t = TestRun(args)
    t0 = time.monotonic()
    try:
        main(t)
    except Abort as e:
        print("skipping the remaining checks after '%s' failed" % e, flush=True)
    except BaseException as e:  # noqa: BLE001 - report and clean up on anything
        t.failed.append("test body")
        print("FAIL test body: %r" % e, flush=True)
        traceback.print_exc(file=sys.stdout)
    finally:
        for topo in t.topologies:
            topo.stop()
    for topo in t.topologies:
        for death in topo.deaths():
            t.failed.append("node death")
            print("FAIL %s" % death, flush=True)
        reports = topo.sanitizer_reports()
        if reports:
            t.failed.append("sanitizer reports")
            for label, line in reports:
                print("FAIL sanitizer report in %s: %s" % (label, line), flush=True)
    if t.passed == 0 and not t.failed:
        t.failed.append("no check ran")
    if t.failed:
        for topo in t.topologies:
            topo.dump_logs(out=sys.stdout)
    print("%s: %.1f s" % (os.path.basename(sys.argv[0]), time.monotonic() - t0))
    print("%d passed, %d failed" % (t.passed, len(t.failed)), flush=True)
    sys.exit(1 if t.failed else 0)
