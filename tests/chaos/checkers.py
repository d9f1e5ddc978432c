"""History checkers of the archipel chaos suite (issue 6).

Python 3 standard library only.  Every checker returns a list of violation
dicts {"checker": name, "what": human-readable message, ...context}; an empty
list means the history passed.  See README.md in this directory for the
history format and the rule of each checker.

Checkers:
  check_linearizable(history, init=None, budget=DEFAULT_BUDGET)
  check_no_lost_ops(history, final, must_hold=None, preexisting=())
  check_convergence(heals, samples, window=30.0, nodes=None, faults=())
  check_same_index(samples)
  check_quota(samples, rights=None)
  check_availability(probes, cuts, interval=0.1, max_gap=None, max_latency=None)
  check_single_copy(running)
  check_final_desired(history, final)
Helpers:
  pair_ops(history) -> (ops, malformed)
  read_jsonl(path) -> history
"""

import json
import math
import sys

DEFAULT_BUDGET = 500000  # search steps per key for check_linearizable
EPS = 1e-9               # tolerance for fractional quantities (cores, GiB)

INVOKE, OK, FAIL, INFO = "invoke", "ok", "fail", "info"
COMPLETIONS = (OK, FAIL, INFO)


# ---------------------------------------------------------------------------
# history helpers

class Op(object):
    """One operation: an invoke paired with its completion.

    type is "ok", "fail" or "info" (an invoke never completed counts as
    "info").  end is math.inf for "info".  value is the invoke's value,
    result the completion's value.
    """
    __slots__ = ("index", "process", "f", "key", "value", "result", "type",
                 "start", "end")

    def __init__(self, index, process, f, key, value, start):
        self.index = index
        self.process = process
        self.f = f
        self.key = key
        self.value = value
        self.result = None
        self.type = INFO
        self.start = start
        self.end = math.inf

    def describe(self):
        if self.f == "read":
            v = "-> %r" % (self.result,) if self.type == OK else "(%s)" % self.type
        else:
            v = "%r" % (self.value,)
            if self.type != OK:
                v += " (%s)" % self.type
        end = "inf" if self.end == math.inf else "%.3f" % self.end
        return "process %r %s %s [%.3f, %s]" % (self.process, self.f, v,
                                                self.start, end)

    def as_dict(self):
        return {"process": self.process, "f": self.f, "key": self.key,
                "value": self.value, "result": self.result, "type": self.type,
                "start": self.start,
                "end": None if self.end == math.inf else self.end}


def read_jsonl(path):
    """Read a JSON-lines history file (blank lines skipped)."""
    out = []
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out


def _malformed(checker, what, **ctx):
    d = {"checker": checker, "kind": "malformed", "what": what}
    d.update(ctx)
    return d


def pair_ops(history, checker="history"):
    """Pair each invoke with the next completion of the same process.

    Events are ordered by time (stable, so equal times keep file order).
    Returns (ops, malformed) where malformed is a list of violations.
    """
    malformed = []
    events = []
    for i, ev in enumerate(history):
        if not isinstance(ev, dict):
            malformed.append(_malformed(checker, "event %d is not a dict" % i))
            continue
        missing = [k for k in ("process", "type", "f", "time") if k not in ev]
        if missing:
            malformed.append(_malformed(
                checker, "event %d lacks %s" % (i, ", ".join(missing)),
                event=ev))
            continue
        try:
            t = float(ev["time"])
        except (TypeError, ValueError):
            malformed.append(_malformed(checker, "event %d has a bad time" % i,
                                        event=ev))
            continue
        if ev["type"] not in (INVOKE,) + COMPLETIONS:
            malformed.append(_malformed(
                checker, "event %d has unknown type %r" % (i, ev["type"]),
                event=ev))
            continue
        events.append((t, i, ev))
    events.sort(key=lambda e: (e[0], e[1]))

    ops = []
    pending = {}
    for t, i, ev in events:
        p = ev["process"]
        if ev["type"] == INVOKE:
            if p in pending:
                malformed.append(_malformed(
                    checker, "process %r invoked %s while its %s was pending"
                    % (p, ev["f"], pending[p].f), event=ev))
                del pending[p]  # the earlier one stays "info"
            op = Op(i, p, ev["f"], ev.get("key"), ev.get("value"), t)
            pending[p] = op
            ops.append(op)
        else:
            op = pending.pop(p, None)
            if op is None:
                malformed.append(_malformed(
                    checker, "process %r completed %s without an invoke"
                    % (p, ev["f"]), event=ev))
                continue
            if ev["f"] != op.f or ev.get("key", op.key) != op.key:
                malformed.append(_malformed(
                    checker, "process %r: completion %s/%r does not match "
                    "invoke %s/%r" % (p, ev["f"], ev.get("key"), op.f, op.key),
                    event=ev))
            op.type = ev["type"]
            op.result = ev.get("value")
            if op.type != INFO:
                op.end = t
    return ops, malformed


def _freeze(v):
    """A hashable, comparable image of a JSON value."""
    if isinstance(v, dict):
        return ("__dict__",) + tuple(sorted((str(k), _freeze(x))
                                            for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, set):
        return ("__set__",) + tuple(sorted(_freeze(x) for x in v))
    return v


# ---------------------------------------------------------------------------
# 1. linearizability of a key-value register, per key (Wing-Gong / Lowe)

def _register_step(state, op):
    """Apply op to a frozen register state.  Returns (legal, new_state)."""
    if op.f == "read":
        return (_freeze(op.result) == state), state
    if op.f == "write":
        return True, _freeze(op.value)
    if op.f == "cas":
        expected, new = op.value
        if _freeze(expected) == state:
            return True, _freeze(new)
        return False, state
    return False, state


class _Entry(object):
    __slots__ = ("op", "bit", "is_call", "match", "prev", "next")

    def __init__(self, op, bit, is_call):
        self.op = op
        self.bit = bit
        self.is_call = is_call
        self.match = None
        self.prev = None
        self.next = None


def _wgl(ops, init, budget):
    """Search for a linearization of ops (one key).

    ops: Op list; ok ops must be linearized inside [start, end], info ops
    may be linearized at any point after start, or never.
    Returns ("ok"|"fail"|"unknown", info dict).
    """
    must = sum(1 for o in ops if o.type == OK)
    if must == 0:
        return "ok", {}
    raw = []
    for n, op in enumerate(ops):
        call = _Entry(op, 1 << n, True)
        raw.append((op.start, 0, n, call))
        if op.type == OK:
            ret = _Entry(op, 1 << n, False)
            call.match = ret
            ret.match = call
            raw.append((op.end, 1, n, ret))
    # calls sort before returns at equal times: equal-time ops are concurrent
    raw.sort(key=lambda r: (r[0], r[1], r[2]))
    head = _Entry(None, 0, False)
    prev = head
    for r in raw:
        e = r[3]
        prev.next = e
        e.prev = prev
        prev = e

    def lift(e):
        e.prev.next = e.next
        if e.next is not None:
            e.next.prev = e.prev
        m = e.match
        if m is not None:
            m.prev.next = m.next
            if m.next is not None:
                m.next.prev = m.prev

    def unlift(e):
        m = e.match
        if m is not None:
            m.prev.next = m
            if m.next is not None:
                m.next.prev = m
        e.prev.next = e
        if e.next is not None:
            e.next.prev = e

    state = _freeze(init)
    linearized = 0
    remaining = must
    cache = set()
    stack = []  # (entry, state before it)
    entry = head.next
    steps = 0
    deepest = (-1, None, [])
    while True:
        steps += 1
        if steps > budget:
            return "unknown", {"steps": steps - 1,
                               "depth": deepest[0],
                               "linearized": deepest[2]}
        if remaining == 0:
            return "ok", {"steps": steps,
                          "order": [s[0].op for s in stack]}
        if entry is not None and entry.is_call:
            legal, new_state = _register_step(state, entry.op)
            if legal:
                key = (linearized | entry.bit, new_state)
                if key not in cache:
                    cache.add(key)
                    stack.append((entry, state))
                    state = new_state
                    linearized |= entry.bit
                    if entry.op.type == OK:
                        remaining -= 1
                    lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
            continue
        # a return entry (or the end): the op it closes could not be placed
        if len(stack) > deepest[0]:
            blocked = entry.op if entry is not None else None
            deepest = (len(stack), blocked, [s[0].op for s in stack])
        if not stack:
            return "fail", {"steps": steps, "depth": deepest[0],
                            "blocked": deepest[1], "linearized": deepest[2]}
        e, state = stack.pop()
        linearized &= ~e.bit
        if e.op.type == OK:
            remaining += 1
        unlift(e)
        entry = e.next


def check_linearizable(history, init=None, budget=DEFAULT_BUDGET):
    """Checker 1: the register history of every key is linearizable.

    f in {"read", "write", "cas"}; a write's value and a cas's [expected, new]
    come from the invoke, a read's result from its ok completion.  "fail"
    ops did not happen; "info" (or never completed) writes and cas may take
    effect at any time after their invoke, or never; "info" reads are
    ignored.  init is every key's initial value.  budget bounds the search
    steps per key; an exhausted budget gives a violation of kind "unknown".
    """
    name = "linearizable"
    ops, violations = pair_ops(history, name)
    by_key = {}
    for op in ops:
        if op.f not in ("read", "write", "cas"):
            violations.append(_malformed(
                name, "unknown operation %r on key %r" % (op.f, op.key),
                op=op.as_dict()))
            continue
        if op.f == "cas" and not (isinstance(op.value, (list, tuple))
                                  and len(op.value) == 2):
            violations.append(_malformed(
                name, "cas on key %r needs value [expected, new], got %r"
                % (op.key, op.value), op=op.as_dict()))
            continue
        if op.type == FAIL:
            continue
        if op.type == INFO and op.f == "read":
            continue
        by_key.setdefault(_freeze(op.key), []).append(op)

    for key in sorted(by_key, key=repr):
        kops = by_key[key]
        verdict, info = _wgl(kops, init, budget)
        if verdict == "ok":
            continue
        if verdict == "unknown":
            violations.append({
                "checker": name, "kind": "unknown", "key": key,
                "what": "key %r: unknown: budget exceeded (%d steps, %d ops)"
                        % (key, budget, len(kops)),
                "ops": len(kops)})
            continue
        blocked = info.get("blocked")
        lin = info.get("linearized") or []
        what = ("key %r: not linearizable: %d of %d ops placed at best; "
                "cannot place %s" % (key, len(lin), len(kops),
                                     blocked.describe() if blocked else "?"))
        if lin:
            what += " after [%s]" % "; ".join(o.describe() for o in lin[-5:])
        violations.append({
            "checker": name, "kind": "nonlinearizable", "key": key,
            "what": what,
            "blocked": blocked.as_dict() if blocked else None,
            "prefix": [o.as_dict() for o in lin[:50]]})
    return violations


# ---------------------------------------------------------------------------
# 2. no acknowledged create or delete is lost

def _instance_id(op, prefer_result):
    first, second = (op.result, op.value) if prefer_result else (op.value, op.result)
    for v in (first, second, op.key):
        if isinstance(v, dict):
            v = v.get("id")
        if v is not None:
            return v
    return None


def check_no_lost_ops(history, final, must_hold=None, preexisting=()):
    """Checker 2: no acknowledged create or delete is lost.

    history: "create"/"delete" ops; a create's instance id is its ok value,
    a delete's is its invoke value.  final: {node: ids present, ...,
    "running": {id: [nodes]}} observed after the heal.  must_hold: None (an
    acknowledged, undeleted instance must be present on at least one node),
    a list of nodes that must each hold it, or a callable id -> nodes.
    preexisting: ids present before the history began.
    """
    name = "lost-ops"
    ops, violations = pair_ops(history, name)
    created_ok = {}
    deleted_ok = {}
    delete_maybe = set()
    create_unknown = 0
    for op in ops:
        if op.f == "create":
            if op.type == OK:
                iid = _instance_id(op, True)
                if iid is None:
                    violations.append(_malformed(
                        name, "acknowledged create without an instance id",
                        op=op.as_dict()))
                else:
                    created_ok[iid] = op
            elif op.type == INFO:
                create_unknown += 1
        elif op.f == "delete":
            iid = _instance_id(op, False)
            if iid is None:
                violations.append(_malformed(
                    name, "delete without an instance id", op=op.as_dict()))
                continue
            if op.type == OK:
                deleted_ok[iid] = op
            elif op.type == INFO:
                delete_maybe.add(iid)
        else:
            violations.append(_malformed(
                name, "unknown operation %r" % (op.f,), op=op.as_dict()))

    running = final.get("running", {}) or {}
    present = {}
    for node, ids in final.items():
        if node == "running":
            continue
        for iid in ids:
            present.setdefault(iid, set()).add(node)
    nodes = sorted((n for n in final if n != "running"), key=str)

    for iid in sorted(created_ok, key=repr):
        if iid in deleted_ok or iid in delete_maybe:
            continue
        if must_hold is None:
            if iid not in present:
                violations.append({
                    "checker": name, "kind": "lost-create", "id": iid,
                    "what": "acknowledged create of %r is lost: present on "
                            "no node" % (iid,),
                    "op": created_ok[iid].as_dict()})
            continue
        required = must_hold(iid) if callable(must_hold) else must_hold
        missing = [n for n in required if n not in present.get(iid, ())]
        if missing:
            violations.append({
                "checker": name, "kind": "lost-create", "id": iid,
                "what": "acknowledged create of %r is lost on %s"
                        % (iid, ", ".join(map(str, missing))),
                "missing": missing, "op": created_ok[iid].as_dict()})

    for iid in sorted(deleted_ok, key=repr):
        where = sorted(present.get(iid, ()), key=str)
        if where:
            violations.append({
                "checker": name, "kind": "lost-delete", "id": iid,
                "what": "acknowledged delete of %r is lost: still present on %s"
                        % (iid, ", ".join(map(str, where))),
                "nodes": where, "op": deleted_ok[iid].as_dict()})
        run = running.get(iid) or []
        if run:
            violations.append({
                "checker": name, "kind": "deleted-running", "id": iid,
                "what": "deleted instance %r is still running on %s"
                        % (iid, ", ".join(map(str, run))),
                "nodes": list(run), "op": deleted_ok[iid].as_dict()})

    known = set(created_ok) | set(deleted_ok) | delete_maybe | set(preexisting)
    phantoms = sorted((set(present) | {i for i, n in running.items() if n})
                      - known, key=repr)
    if len(phantoms) > create_unknown:
        violations.append({
            "checker": name, "kind": "phantom",
            "what": "%d instance(s) present that no create explains "
                    "(%d create(s) had an unknown outcome): %s"
                    % (len(phantoms), create_unknown,
                       ", ".join(map(repr, phantoms[:10]))),
            "ids": phantoms, "nodes": nodes})
    return violations


# ---------------------------------------------------------------------------
# 3. convergence after every heal

def check_convergence(heals, samples, window=30.0, nodes=None, faults=()):
    """Checker 3: after every heal, all replicas reach one content hash.

    heals: heal times.  samples: [(time, node, hash)].  Converged at t when
    every node of nodes (default: every node that appears in samples) has a
    sample in [heal, t] and the latest ones all carry the same hash; t must
    be at most heal + window.  If a fault (from faults) starts before the
    deadline, the window ends there and a miss is not reported.
    """
    name = "convergence"
    violations = []
    samples = sorted(((float(s[0]), s[1], s[2]) for s in samples),
                     key=lambda s: s[0])
    expected = set(nodes) if nodes is not None else {s[1] for s in samples}
    if not expected:
        if heals:
            violations.append({"checker": name, "kind": "no-samples",
                               "what": "no replica samples to check"})
        return violations
    fault_times = sorted(float(f) for f in faults)
    for h in sorted(float(x) for x in heals):
        deadline = h + window
        truncated = False
        for f in fault_times:
            if f > h:
                if f < deadline:
                    deadline, truncated = f, True
                break
        latest = {}
        converged_at = None
        for t, node, digest in samples:
            if t < h:
                continue
            if t > deadline:
                break
            if node not in expected:
                continue
            latest[node] = digest
            if len(latest) == len(expected) and len(set(latest.values())) == 1:
                converged_at = t
                break
        if converged_at is not None or truncated:
            continue
        unsampled = sorted(expected - set(latest), key=str)
        what = ("after heal at t=%.3f: replicas did not converge within "
                "%.1f s" % (h, window))
        if unsampled:
            what += "; never sampled: %s" % ", ".join(map(str, unsampled))
        groups = {}
        for n, d in latest.items():
            groups.setdefault(d, []).append(n)
        if len(groups) > 1:
            what += "; last hashes differ: %s" % "; ".join(
                "%s=%s" % (",".join(sorted(map(str, ns))), d)
                for d, ns in sorted(groups.items(), key=lambda g: str(g[0])))
        violations.append({"checker": name, "kind": "diverged", "heal": h,
                           "what": what, "latest": dict(latest),
                           "unsampled": unsampled})
    return violations


def check_same_index(samples):
    """Checker 3b: replicas that applied the same log index hold the same state.

    samples: [(time, node, applied_index, hash)] taken at any moment, faults
    or not (a raft replica's state is a function of its applied index).  Two
    samples with equal index and different hashes are a divergence, whoever
    took them and whenever.
    """
    name = "same-index"
    seen = {}
    violations = []
    reported = set()
    for t, node, index, digest in sorted(samples, key=lambda s: float(s[0])):
        first = seen.setdefault(index, (t, node, digest))
        if first[2] != digest and index not in reported:
            reported.add(index)
            violations.append({
                "checker": name, "kind": "diverged", "index": index,
                "what": "index %s: %s had %s at t=%.3f, %s has %s at t=%.3f"
                        % (index, first[1], first[2], float(first[0]), node,
                           digest, float(t))})
    return violations


# ---------------------------------------------------------------------------
# 4. quota

def _num(x):
    return x if isinstance(x, (int, float)) else None


def check_quota(samples, rights=None):
    """Checker 4: usage within limits; escrow rights conserved.

    samples: [(time, tenant, usage_dict, limit_dict)]; a resource whose
    limit is absent or None is unlimited.  rights: one snapshot
    {(tenant, resource): {"granted": n, "held": {holder: n}, "consumed": n,
    optional "limit": n}}, or a list of (time, snapshot).
    """
    name = "quota"
    violations = []
    for s in samples:
        t, tenant, usage, limit = s[0], s[1], s[2] or {}, s[3] or {}
        for res in sorted(usage, key=str):
            u = _num(usage[res])
            if u is None:
                violations.append(_malformed(
                    name, "tenant %r resource %r: usage %r is not a number"
                    % (tenant, res, usage[res]), time=t))
                continue
            if u < -EPS:
                violations.append({
                    "checker": name, "kind": "negative-usage", "time": t,
                    "tenant": tenant, "resource": res,
                    "what": "t=%.3f tenant %r: %s usage %r is negative"
                            % (t, tenant, res, u)})
            lim = limit.get(res)
            if lim is not None and u > lim + EPS:
                violations.append({
                    "checker": name, "kind": "over-limit", "time": t,
                    "tenant": tenant, "resource": res, "usage": u,
                    "limit": lim,
                    "what": "t=%.3f tenant %r: %s usage %r exceeds limit %r"
                            % (t, tenant, res, u, lim)})

    if rights is None:
        snaps = []
    elif isinstance(rights, dict):
        snaps = [(None, rights)]
    else:
        snaps = list(rights)
    for t, snap in snaps:
        at = "" if t is None else "t=%.3f " % t
        for key in sorted(snap, key=repr):
            r = snap[key]
            held = r.get("held") or {}
            g, c = _num(r.get("granted")), _num(r.get("consumed", 0))
            hv = [_num(v) for v in held.values()]
            if g is None or c is None or None in hv:
                violations.append(_malformed(
                    name, "%srights %r: non-numeric entry %r" % (at, key, r),
                    time=t))
                continue
            total = sum(hv) + c
            if abs(g - total) > EPS:
                violations.append({
                    "checker": name, "kind": "not-conserved", "time": t,
                    "rights": key, "granted": g, "held": sum(hv),
                    "consumed": c,
                    "what": "%srights %r not conserved: granted %r != held "
                            "%r + consumed %r" % (at, key, g, sum(hv), c)})
            neg = sorted((str(h) for h, v in held.items() if v < -EPS))
            if c < -EPS:
                neg.append("consumed")
            if neg:
                violations.append({
                    "checker": name, "kind": "negative-rights", "time": t,
                    "rights": key,
                    "what": "%srights %r: negative amount for %s"
                            % (at, key, ", ".join(neg))})
            lim = _num(r.get("limit"))
            if lim is not None and g > lim + EPS:
                violations.append({
                    "checker": name, "kind": "over-granted", "time": t,
                    "rights": key,
                    "what": "%srights %r: granted %r exceeds limit %r"
                            % (at, key, g, lim)})
    return violations


# ---------------------------------------------------------------------------
# 5. L3.1 availability during a cut

def check_availability(probes, cuts, interval=0.1, max_gap=None,
                       max_latency=None):
    """Checker 5: a workload on a cut-off site keeps answering.

    probes: [(time, ok_bool)] or [(time, ok_bool, latency_s)].
    cuts: [(start, end)].  Within every cut: no failed probe, at least one
    probe, no stretch longer than max_gap (default 2.5 * interval) without a
    probe (counting from the cut's start and to its end), and, if
    max_latency is given, no probe slower than that.
    """
    name = "availability"
    if max_gap is None:
        max_gap = 2.5 * interval
    violations = []
    probes = sorted(probes, key=lambda p: float(p[0]))
    for start, end in cuts:
        start, end = float(start), float(end)
        inside = [p for p in probes if start <= float(p[0]) <= end]
        if not inside:
            violations.append({
                "checker": name, "kind": "no-probes", "cut": (start, end),
                "what": "cut [%.3f, %.3f]: no probes recorded" % (start, end)})
            continue
        fails = [p for p in inside if not p[1]]
        if fails:
            violations.append({
                "checker": name, "kind": "probe-failed", "cut": (start, end),
                "failures": len(fails),
                "times": [float(p[0]) for p in fails[:20]],
                "what": "cut [%.3f, %.3f]: %d probe(s) failed, first at "
                        "t=%.3f" % (start, end, len(fails), float(fails[0][0]))})
        if max_latency is not None:
            slow = [p for p in inside
                    if len(p) > 2 and p[2] is not None and p[2] > max_latency]
            if slow:
                violations.append({
                    "checker": name, "kind": "probe-slow", "cut": (start, end),
                    "what": "cut [%.3f, %.3f]: %d probe(s) slower than "
                            "%.3f s, first at t=%.3f" % (
                                start, end, len(slow), max_latency,
                                float(slow[0][0]))})
        times = [start] + [float(p[0]) for p in inside] + [end]
        worst, at = 0.0, start
        for a, b in zip(times, times[1:]):
            if b - a > worst:
                worst, at = b - a, a
        if worst > max_gap + EPS:
            violations.append({
                "checker": name, "kind": "probe-gap", "cut": (start, end),
                "gap": worst,
                "what": "cut [%.3f, %.3f]: no probe for %.3f s from t=%.3f "
                        "(max %.3f s)" % (start, end, worst, at, max_gap)})
    return violations


# ---------------------------------------------------------------------------
# 6. at most one running copy

def check_single_copy(running):
    """Checker 6: {instance_id: count_running (or list of nodes)} <= 1."""
    name = "single-copy"
    violations = []
    for iid in sorted(running, key=repr):
        v = running[iid]
        n = v if isinstance(v, int) else len(v)
        if n > 1:
            d = {"checker": name, "kind": "duplicate", "id": iid, "count": n,
                 "what": "instance %r has %d running copies" % (iid, n)}
            if not isinstance(v, int):
                d["nodes"] = sorted(map(str, v))
                d["what"] += " (%s)" % ", ".join(d["nodes"])
            violations.append(d)
    return violations


# ---------------------------------------------------------------------------

# ---------------------------------------------------------------------------
# 7. the last acknowledged command on an instance wins

EFFECT = {"create": "running", "start": "running", "stop": "stopped",
          "delete": "deleted"}


def check_final_desired(history, final):
    """Checker 7: once converged, an instance's desired state is what the last
    acknowledged command on it asked for.

    history: "create" (ok value: the id), "start", "stop", "delete" (invoke
    value: the id) ops.  final: {id: desired state} observed after the heal.
    Only instances whose commands all came from one process (one after the
    other) and all completed (no unknown outcome) are judged; a failed
    command changed nothing.  A later command stamped below an earlier one
    (clock skew between the places that took them) loses under
    last-writer-wins: this is what catches it.
    """
    name = "final-desired"
    ops, violations = pair_ops(history, name)
    per = {}
    for op in ops:
        if op.f not in EFFECT:
            continue
        iid = _instance_id(op, op.f == "create")
        if iid is None:
            continue
        per.setdefault(iid, []).append(op)
    for iid in sorted(per, key=repr):
        seq = sorted(per[iid], key=lambda o: o.start)
        if len({o.process for o in seq}) != 1 or any(o.type == INFO for o in seq):
            continue
        done = [o for o in seq if o.type == OK]
        if not done or iid not in final:
            continue
        want = EFFECT[done[-1].f]
        got = final[iid]
        if got != want:
            violations.append({
                "checker": name, "kind": "overridden", "id": iid,
                "what": "instance %r: last acknowledged command was %s (at "
                        "t=%.3f), yet its desired state is %r, not %r"
                        % (iid, done[-1].f, done[-1].end, got, want),
                "commands": [o.as_dict() for o in seq]})
    return violations


def main(argv):
    """python3 checkers.py HISTORY.jsonl  -- run checker 1 on a file."""
    if len(argv) != 2:
        sys.stderr.write("usage: checkers.py HISTORY.jsonl\n")
        return 2
    v = check_linearizable(read_jsonl(argv[1]))
    for x in v:
        print(x["what"])
    print("linearizable: %s" % ("FAIL" if v else "ok"))
    return 1 if v else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
