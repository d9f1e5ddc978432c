#!/usr/bin/env python3
"""Self-tests of tests/chaos/checkers.py: crafted good histories must pass,
crafted bad ones must be flagged with the right message, so that a checker
that cannot fail is caught.  Python 3 standard library only.

Prints one line per case; exits 0 when every case passes, 1 otherwise.
"""

import os
import random
import sys
import time
import traceback

sys.dont_write_bytecode = True  # keep the source tree clean under ctest
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import checkers as C  # noqa: E402

CASES = []


def case(fn):
    CASES.append(fn)
    return fn


class Failure(Exception):
    pass


def expect_pass(violations, label=""):
    if violations:
        raise Failure("%sexpected no violation, got: %s"
                      % (label, "; ".join(v["what"] for v in violations)))


def expect_fail(violations, kind=None, contains=(), checker=None, count=None,
                label=""):
    if not violations:
        raise Failure("%sexpected a violation, got none" % label)
    for v in violations:
        for k in ("checker", "what"):
            if k not in v:
                raise Failure("%sviolation lacks %r: %r" % (label, k, v))
    if checker is not None and any(v["checker"] != checker for v in violations):
        raise Failure("%swrong checker name: %r" % (label, violations))
    if kind is not None and not any(v.get("kind") == kind for v in violations):
        raise Failure("%sno violation of kind %r in: %s"
                      % (label, kind, [v["what"] for v in violations]))
    if isinstance(contains, str):
        contains = (contains,)
    for s in contains:
        if not any(s in v["what"] for v in violations):
            raise Failure("%sno violation message contains %r: %s"
                          % (label, s, [v["what"] for v in violations]))
    if count is not None and len(violations) != count:
        raise Failure("%sexpected %d violations, got %d: %s"
                      % (label, count, len(violations),
                         [v["what"] for v in violations]))


def op(p, f, value, t0, t1, typ="ok", key="k", result=None):
    """invoke + completion events of one op.  For a read, value is the
    result; otherwise the invoke value (result echoed on completion)."""
    if f == "read":
        inv, res = None, value
    else:
        inv, res = value, value if result is None else result
    evs = [{"process": p, "type": "invoke", "f": f, "key": key,
            "value": inv, "time": t0}]
    if typ is not None:
        evs.append({"process": p, "type": typ, "f": f, "key": key,
                    "value": res if typ == "ok" else None, "time": t1})
    return evs


def hist(*ops):
    out = []
    for o in ops:
        out.extend(o)
    return out


LIN = C.check_linearizable

# ---------------------------------------------------------------------------
# checker 1: linearizability


@case
def lin_empty_and_sequential_ok():
    expect_pass(LIN([]))
    expect_pass(LIN(hist(op(1, "read", None, 0, 1),
                         op(1, "write", 1, 2, 3),
                         op(2, "read", 1, 4, 5),
                         op(1, "write", 2, 6, 7),
                         op(2, "read", 2, 8, 9))))


@case
def lin_stale_read_after_write_completed():
    h = hist(op(1, "write", 1, 0, 1),
             op(1, "write", 2, 2, 3),
             op(2, "read", 1, 4, 5))
    expect_fail(LIN(h), kind="nonlinearizable", checker="linearizable",
                contains=("key 'k': not linearizable", "read -> 1"), count=1)


@case
def lin_lost_acknowledged_write():
    h = hist(op(1, "write", 7, 0, 1), op(2, "read", None, 2, 3))
    expect_fail(LIN(h), kind="nonlinearizable",
                contains="cannot place process 2 read -> None")


@case
def lin_read_concurrent_with_write_may_see_either():
    for seen in (None, 1):
        expect_pass(LIN(hist(op(1, "write", 1, 0, 10),
                             op(2, "read", seen, 1, 2))), "saw %r: " % seen)
    # but never new then old
    expect_fail(LIN(hist(op(1, "write", 1, 0, 10),
                         op(2, "read", 1, 1, 2),
                         op(2, "read", None, 3, 4))), kind="nonlinearizable")
    expect_pass(LIN(hist(op(1, "write", 1, 0, 10),
                         op(2, "read", None, 1, 2),
                         op(2, "read", 1, 3, 4))))


@case
def lin_concurrent_writes_either_order():
    base = (op(1, "write", 1, 0, 5), op(2, "write", 2, 1, 6))
    for final in (1, 2):
        expect_pass(LIN(hist(*(base + (op(3, "read", final, 7, 8),
                                       op(3, "read", final, 9, 10))))),
                    "final %r: " % final)
    # both orders are possible, but not both observed afterwards
    expect_fail(LIN(hist(*(base + (op(3, "read", 1, 7, 8),
                                   op(3, "read", 2, 9, 10))))),
                kind="nonlinearizable")
    # and a read concurrent with both may see 2 then 1 (w2 < r < w1 < r)
    expect_pass(LIN(hist(*(base + (op(3, "read", 2, 1.5, 2),
                                   op(4, "read", 1, 7, 8))))))


@case
def lin_info_write_may_or_may_not_apply():
    w = op(1, "write", 1, 0, 1, typ="info")
    expect_pass(LIN(hist(w, op(2, "read", None, 2, 3))), "not applied: ")
    expect_pass(LIN(hist(w, op(2, "read", 1, 2, 3))), "applied: ")
    # it may apply long after the client gave up
    expect_pass(LIN(hist(w, op(2, "read", None, 2, 3), op(2, "read", 1, 50, 51))))
    # never completed at all counts as info
    expect_pass(LIN(hist(op(1, "write", 1, 0, None, typ=None),
                         op(2, "read", 1, 2, 3))))
    # once seen, it cannot be unseen
    expect_fail(LIN(hist(w, op(2, "read", 1, 2, 3), op(2, "read", None, 4, 5))),
                kind="nonlinearizable")
    # and it cannot take effect before its invoke
    expect_fail(LIN(hist(op(2, "read", 1, 0, 1),
                         op(1, "write", 1, 2, 3, typ="info"))),
                kind="nonlinearizable")


@case
def lin_failed_write_did_not_happen():
    expect_fail(LIN(hist(op(1, "write", 1, 0, 1, typ="fail"),
                         op(2, "read", 1, 2, 3))), kind="nonlinearizable")
    expect_pass(LIN(hist(op(1, "write", 1, 0, 1, typ="fail"),
                         op(2, "read", None, 2, 3))))


@case
def lin_cas_semantics():
    expect_pass(LIN(hist(op(1, "cas", [None, 1], 0, 1),
                         op(2, "read", 1, 2, 3),
                         op(1, "cas", [1, 2], 4, 5),
                         op(2, "read", 2, 6, 7))))
    # cas that succeeded although the register did not hold `expected`
    expect_fail(LIN(hist(op(1, "write", 5, 0, 1),
                         op(1, "cas", [4, 6], 2, 3))),
                kind="nonlinearizable", contains="cas")
    # two concurrent cas from the same expected value cannot both succeed
    expect_fail(LIN(hist(op(1, "cas", [None, 1], 0, 5),
                         op(2, "cas", [None, 2], 0, 5))),
                kind="nonlinearizable")
    # ... but one of them may, with the other failing
    expect_pass(LIN(hist(op(1, "cas", [None, 1], 0, 5),
                         op(2, "cas", [None, 2], 0, 5, typ="fail"),
                         op(3, "read", 1, 6, 7))))
    # cas chains only in the one order the values allow
    expect_pass(LIN(hist(op(1, "cas", [1, 2], 0, 5),
                         op(2, "cas", [None, 1], 0, 5),
                         op(3, "read", 2, 6, 7))))
    # an info cas may apply
    expect_pass(LIN(hist(op(1, "cas", [None, 3], 0, 1, typ="info"),
                         op(2, "read", 3, 2, 3))))
    # malformed cas value
    expect_fail(LIN(hist(op(1, "cas", 3, 0, 1))), kind="malformed",
                contains="[expected, new]")


@case
def lin_split_per_key_and_structured_values():
    h = hist(op(1, "write", {"a": [1, 2]}, 0, 1, key="x"),
             op(2, "write", 9, 0, 1, key="y"),
             op(3, "read", {"a": [1, 2]}, 2, 3, key="x"),
             op(3, "read", 9, 4, 5, key="y"))
    expect_pass(LIN(h))
    # a value written to another key is not visible here
    bad = hist(op(1, "write", 9, 0, 1, key="y"),
               op(3, "read", 9, 2, 3, key="x"))
    expect_fail(LIN(bad), kind="nonlinearizable", contains="key 'x'", count=1)


@case
def lin_initial_value():
    h = hist(op(1, "read", 0, 0, 1))
    expect_fail(LIN(h), kind="nonlinearizable")
    expect_pass(LIN(h, init=0))


@case
def lin_malformed_history():
    ev = [{"process": 1, "type": "ok", "f": "read", "key": "k", "value": None,
           "time": 1.0}]
    expect_fail(LIN(ev), kind="malformed", contains="without an invoke")
    ev = hist(op(1, "write", 1, 0, None, typ=None), op(1, "write", 2, 1, 2))
    expect_fail(LIN(ev), kind="malformed", contains="pending")
    expect_fail(LIN([{"process": 1, "type": "invoke", "f": "read"}]),
                kind="malformed", contains="lacks")
    expect_fail(LIN(hist(op(1, "incr", 1, 0, 1))), kind="malformed",
                contains="unknown operation")


@case
def lin_budget_exceeded_reports_unknown():
    # 14 fully concurrent writes then an impossible read: the search must
    # visit many subsets; with a small budget it gives up, and says so.
    h = []
    for i in range(14):
        h += op(i, "write", i, 0, 10)
    h += op(99, "read", "never", 11, 12)
    t0 = time.time()
    v = LIN(h, budget=2000)
    expect_fail(v, kind="unknown", contains="unknown: budget exceeded")
    if time.time() - t0 > 5:
        raise Failure("budgeted search took %.1f s" % (time.time() - t0))


@case
def lin_many_concurrent_ops_within_budget():
    # memoization keeps a wide, valid history cheap
    h = []
    for i in range(12):
        h += op(i, "write", i % 3, 0, 10)
    h += op(99, "read", 2, 11, 12)
    expect_pass(LIN(h))


def random_shape(rng):
    """Varied sizes: 2-6 processes, 5-20 ops each, 1-3 keys, 2-5 values."""
    return {"n_proc": rng.randint(2, 6), "per_proc": rng.randint(5, 20),
            "keys": ("a", "b", "c")[:rng.randint(1, 3)],
            "domain": rng.randint(2, 5)}


def gen_register_history(rng, n_proc=4, per_proc=10, keys=("a", "b"),
                         domain=4):
    """A history produced by a real sequential register: every op gets a
    linearization point inside its interval (info ops: maybe none, or a
    point up to 5 s after the invoke); results are computed by applying
    the ops in point order."""
    ops = []
    for p in range(n_proc):
        t = rng.uniform(0, 1)
        for _ in range(per_proc):
            f = rng.choice(("read", "read", "write", "cas"))
            key = rng.choice(keys)
            start = t
            end = t + rng.uniform(0.01, 2.0)
            if f == "write":
                val = rng.randrange(domain)
            elif f == "cas":
                val = [rng.choice([None] + list(range(domain))),
                       rng.randrange(domain)]
            else:
                val = None
            r = rng.random()
            info = r < 0.1
            point = rng.uniform(start, end)
            if info and rng.random() < 0.5:
                point = rng.uniform(start, start + 5.0)
            elif info:
                point = None
            ops.append({"p": p, "f": f, "key": key, "val": val,
                        "start": start, "end": end, "info": info,
                        "point": point})
            t = end + rng.uniform(0.0, 0.5)
    reg = {}
    for o in sorted((o for o in ops if o["point"] is not None),
                    key=lambda o: o["point"]):
        cur = reg.get(o["key"])
        if o["f"] == "read":
            o["res"], o["ok"] = cur, True
        elif o["f"] == "write":
            reg[o["key"]] = o["val"]
            o["ok"] = True
        else:
            o["ok"] = cur == o["val"][0]
            if o["ok"]:
                reg[o["key"]] = o["val"][1]
    h = []
    for o in ops:
        h.append({"process": o["p"], "type": "invoke", "f": o["f"],
                  "key": o["key"], "value": o["val"], "time": o["start"]})
        if o["info"]:
            typ, val = "info", None
        elif o["ok"]:
            typ = "ok"
            val = o["res"] if o["f"] == "read" else o["val"]
        else:
            typ, val = "fail", None
        h.append({"process": o["p"], "type": typ, "f": o["f"],
                  "key": o["key"], "value": val, "time": o["end"]})
    rng.shuffle(h)  # the checker must not rely on file order
    return h


@case
def lin_random_register_histories_pass():
    checked = 0
    for seed in range(300):
        rng = random.Random(seed)
        h = gen_register_history(rng, **random_shape(rng))
        v = LIN(h)
        if v:
            raise Failure("seed %d: valid history flagged: %s"
                          % (seed, v[0]["what"]))
        checked += 1
    assert checked == 300


@case
def lin_random_mutated_histories_fail():
    mutated = 0
    for seed in range(300):
        rng = random.Random(1000 + seed)
        h = gen_register_history(rng, **random_shape(rng))
        reads = [e for e in h if e["type"] == "ok" and e["f"] == "read"]
        if not reads:
            continue
        victim = rng.choice(reads)
        victim["value"] = "never-written-%d" % seed
        v = LIN(h)
        if not any(x.get("kind") == "nonlinearizable" for x in v):
            raise Failure("seed %d: mutated history passed" % seed)
        if not any(victim["key"] == x.get("key") for x in v):
            raise Failure("seed %d: wrong key flagged: %s" % (seed, v))
        mutated += 1
    if mutated < 250:
        raise Failure("only %d mutated histories were checked" % mutated)


@case
def lin_random_stale_read_mutation_fails():
    # a subtler mutation: after a read, append a read that returns the value
    # the register held before the last completed write that was followed by
    # quiescence.  Construct explicitly: sequential suffix after the history.
    flagged = 0
    for seed in range(100):
        rng = random.Random(5000 + seed)
        h = gen_register_history(rng, keys=("a",))
        end = max(e["time"] for e in h) + 100.0  # info ops settle before
        h += op(50, "write", "w1", end, end + 1, key="a")
        h += op(50, "write", "w2", end + 2, end + 3, key="a")
        good = h + op(51, "read", "w2", end + 4, end + 5, key="a")
        expect_pass(LIN(good), "seed %d: " % seed)
        bad = h + op(51, "read", "w1", end + 4, end + 5, key="a")
        expect_fail(LIN(bad), kind="nonlinearizable", label="seed %d: " % seed)
        flagged += 1
    assert flagged == 100


# ---------------------------------------------------------------------------
# checker 2: no lost create or delete

LOST = C.check_no_lost_ops


def cr(p, iid, t0, t1, typ="ok"):
    return [{"process": p, "type": "invoke", "f": "create", "key": "t1",
             "value": None, "time": t0},
            {"process": p, "type": typ, "f": "create", "key": "t1",
             "value": iid if typ == "ok" else None, "time": t1}]


def de(p, iid, t0, t1, typ="ok"):
    return [{"process": p, "type": "invoke", "f": "delete", "key": "t1",
             "value": iid, "time": t0},
            {"process": p, "type": typ, "f": "delete", "key": "t1",
             "value": iid if typ == "ok" else None, "time": t1}]


@case
def lost_ops_good():
    h = hist(cr(1, "i1", 0, 1), cr(2, "i2", 0, 1), de(1, "i2", 2, 3),
             cr(3, None, 4, 5, typ="fail"))
    final = {"r1n1": {"i1"}, "r1n2": {"i1"}, "site1": ["i1"],
             "running": {"i1": ["site1"]}}
    expect_pass(LOST(h, final))
    expect_pass(LOST(h, final, must_hold=["r1n1", "r1n2", "site1"]))
    expect_pass(LOST(h, final, must_hold=lambda iid: ["site1"]))


@case
def lost_ops_lost_create():
    h = hist(cr(1, "i1", 0, 1), cr(2, "i2", 0, 1))
    final = {"r1n1": {"i1"}, "running": {}}
    expect_fail(LOST(h, final), kind="lost-create", checker="lost-ops",
                contains="acknowledged create of 'i2' is lost", count=1)
    final = {"r1n1": {"i1", "i2"}, "site1": {"i1"}, "running": {}}
    expect_fail(LOST(h, final, must_hold=["r1n1", "site1"]),
                kind="lost-create", contains="lost on site1", count=1)


@case
def lost_ops_lost_delete_and_deleted_running():
    h = hist(cr(1, "i1", 0, 1), de(1, "i1", 2, 3))
    expect_fail(LOST(h, {"r1n1": set(), "site1": {"i1"}, "running": {}}),
                kind="lost-delete", contains="still present on site1", count=1)
    expect_fail(LOST(h, {"r1n1": set(), "running": {"i1": ["site1"]}}),
                kind="deleted-running",
                contains="deleted instance 'i1' is still running on site1",
                count=1)


@case
def lost_ops_unknown_outcomes():
    # info delete: the instance may or may not be there
    h = hist(cr(1, "i1", 0, 1), de(1, "i1", 2, 3, typ="info"))
    expect_pass(LOST(h, {"n": {"i1"}, "running": {}}))
    expect_pass(LOST(h, {"n": set(), "running": {}}))
    # failed delete did not happen: the instance must still be there
    h = hist(cr(1, "i1", 0, 1), de(1, "i1", 2, 3, typ="fail"))
    expect_fail(LOST(h, {"n": set(), "running": {}}), kind="lost-create")
    # info create: one unexplained instance allowed, two are not
    h = hist(cr(1, None, 0, 1, typ="info"))
    expect_pass(LOST(h, {"n": {"x"}, "running": {}}))
    expect_pass(LOST(h, {"n": set(), "running": {}}))
    expect_fail(LOST(h, {"n": {"x", "y"}, "running": {}}), kind="phantom",
                contains="no create explains")
    # preexisting instances are not phantoms
    expect_pass(LOST([], {"n": {"old"}, "running": {"old": ["n"]}},
                     preexisting=["old"]))
    expect_fail(LOST([], {"n": set(), "running": {"ghost": ["n"]}}),
                kind="phantom")


# ---------------------------------------------------------------------------
# checker 3: convergence

CONV = C.check_convergence


@case
def convergence_good():
    s = [(9.0, "a", "h0"), (9.0, "b", "h1"),          # diverged before heal
         (11.0, "a", "h2"), (12.0, "b", "h1"), (13.0, "c", "h2"),
         (20.0, "b", "h2")]
    expect_pass(CONV([10.0], s))
    expect_pass(CONV([10.0], s, nodes=["a", "b", "c"]))
    # two heals, each converging
    s2 = s + [(50.0, "a", "h3"), (51.0, "b", "h3"), (52.0, "c", "h3")]
    expect_pass(CONV([10.0, 45.0], s2))


@case
def convergence_diverged():
    s = [(11.0, "a", "h2"), (12.0, "b", "h1"), (13.0, "c", "h2"),
         (39.0, "b", "h1"), (45.0, "b", "h2")]          # too late
    expect_fail(CONV([10.0], s), kind="diverged", checker="convergence",
                contains=("after heal at t=10.000", "did not converge within "
                          "30.0 s", "last hashes differ"), count=1)


@case
def convergence_samples_before_heal_do_not_count():
    s = [(5.0, "a", "h"), (5.0, "b", "h"), (12.0, "a", "h")]
    expect_fail(CONV([10.0], s), kind="diverged", contains="never sampled: b")


@case
def convergence_missing_node():
    s = [(11.0, "a", "h"), (12.0, "b", "h")]
    expect_fail(CONV([10.0], s, nodes=["a", "b", "site1"]),
                contains="never sampled: site1")
    expect_fail(CONV([10.0], []), kind="no-samples")


@case
def convergence_window_cut_by_next_fault():
    s = [(11.0, "a", "h1"), (12.0, "b", "h2"), (60.0, "b", "h1")]
    expect_fail(CONV([10.0], s), kind="diverged")
    expect_pass(CONV([10.0], s, faults=[15.0]))       # truncated: not judged
    expect_fail(CONV([10.0], s, faults=[5.0, 70.0]), kind="diverged")


# ---------------------------------------------------------------------------
# checker 4: quota

QUOTA = C.check_quota


@case
def quota_good():
    samples = [(1.0, "t1", {"cpu": 2, "mem": 1.5}, {"cpu": 4, "mem": 1.5}),
               (2.0, "t1", {"cpu": 4, "disk": 100}, {"cpu": 4, "disk": None}),
               (2.0, "t2", {"cpu": 0.1 + 0.2}, {"cpu": 0.3})]
    rights = {("t1", "cpu"): {"granted": 10, "held": {"r1": 3, "r2": 2},
                              "consumed": 5, "limit": 10},
              "t2/mem": {"granted": 0.3, "held": {"r1": 0.1, "r2": 0.2},
                         "consumed": 0}}
    expect_pass(QUOTA(samples, rights))
    expect_pass(QUOTA(samples, [(1.0, rights), (2.0, rights)]))


@case
def quota_over_limit():
    samples = [(1.0, "t1", {"cpu": 2}, {"cpu": 4}),
               (2.0, "t1", {"cpu": 5}, {"cpu": 4})]
    expect_fail(QUOTA(samples), kind="over-limit", checker="quota",
                contains="t=2.000 tenant 't1': cpu usage 5 exceeds limit 4",
                count=1)
    expect_fail(QUOTA([(1.0, "t1", {"cpu": -1}, {})]), kind="negative-usage")


@case
def quota_rights_not_conserved():
    rights = {("t1", "cpu"): {"granted": 10, "held": {"r1": 3, "r2": 2},
                              "consumed": 4}}
    expect_fail(QUOTA([], rights), kind="not-conserved",
                contains="granted 10 != held 5 + consumed 4", count=1)
    rights = {("t1", "cpu"): {"granted": 10, "held": {"r1": 12, "r2": -2},
                              "consumed": 0}}
    expect_fail(QUOTA([], rights), kind="negative-rights", contains="r2",
                count=1)
    rights = {("t1", "cpu"): {"granted": 12, "held": {"r1": 12},
                              "consumed": 0, "limit": 10}}
    expect_fail(QUOTA([], [(3.0, rights)]), kind="over-granted",
                contains="t=3.000")


# ---------------------------------------------------------------------------
# checker 5: availability during a cut

AVAIL = C.check_availability


def probes(t0, t1, step=0.1, fail_at=(), skip=()):
    out, t, i = [], t0, 0
    while t <= t1 + 1e-9:
        if i not in skip:
            out.append((round(t, 6), i not in fail_at, 0.003))
        t += step
        i += 1
    return out


@case
def availability_good():
    p = probes(0.0, 20.0)
    expect_pass(AVAIL(p, [(5.0, 10.0), (12.0, 15.0)]))
    # failures outside any cut are not this checker's business
    p = probes(0.0, 20.0, fail_at=(10,))
    expect_pass(AVAIL(p, [(5.0, 10.0)]))
    expect_pass(AVAIL([(t, ok) for t, ok, _ in probes(5.0, 10.0)], [(5.0, 10.0)]),
                "two-field probes: ")


@case
def availability_probe_failed():
    p = probes(0.0, 20.0, fail_at=(70,))
    expect_fail(AVAIL(p, [(5.0, 10.0)]), kind="probe-failed",
                checker="availability",
                contains="1 probe(s) failed, first at t=7.000", count=1)


@case
def availability_gap_and_no_probes():
    p = probes(0.0, 20.0, skip=range(60, 64))
    expect_fail(AVAIL(p, [(5.0, 10.0)]), kind="probe-gap",
                contains="no probe for 0.500 s")
    expect_fail(AVAIL(probes(0.0, 4.0), [(5.0, 10.0)]), kind="no-probes")
    # prober stopped half way through the cut
    expect_fail(AVAIL(probes(0.0, 7.0), [(5.0, 10.0)]), kind="probe-gap")


@case
def availability_slow_probe():
    p = probes(0.0, 20.0)
    p[60] = (p[60][0], True, 1.5)
    expect_pass(AVAIL(p, [(5.0, 10.0)]))
    expect_fail(AVAIL(p, [(5.0, 10.0)], max_latency=0.5), kind="probe-slow")


# ---------------------------------------------------------------------------
# checker 3b: equal applied index, equal state

SAME = C.check_same_index


@case
def same_index():
    good = [(1.0, "n1", 10, "a"), (1.1, "n2", 10, "a"), (1.2, "n3", 11, "b"),
            (2.0, "n1", 11, "b")]
    expect_pass(SAME(good))
    expect_pass(SAME([]))
    bad = good + [(2.5, "n2", 11, "c"), (2.6, "n3", 11, "d")]
    expect_fail(SAME(bad), kind="diverged", checker="same-index", count=1,
                contains="index 11: n3 had b")


# ---------------------------------------------------------------------------
# checker 6: single running copy

SINGLE = C.check_single_copy


@case
def single_copy():
    expect_pass(SINGLE({"i1": 1, "i2": 0, "i3": ["site1"]}))
    expect_fail(SINGLE({"i1": 1, "i2": 2}), kind="duplicate",
                checker="single-copy",
                contains="instance 'i2' has 2 running copies", count=1)
    expect_fail(SINGLE({"i3": ["s1", "s2"]}), contains="(s1, s2)")


# ---------------------------------------------------------------------------
# checker 7: the last acknowledged command wins

FINAL = C.check_final_desired


def cmd(p, f, iid, t0, t1, typ="ok"):
    evs = [{"process": p, "type": "invoke", "f": f, "key": None,
            "value": None if f == "create" else iid, "time": t0}]
    if typ is not None:
        evs.append({"process": p, "type": typ, "f": f, "key": None,
                    "value": iid if typ == "ok" else None, "time": t1})
    return evs


@case
def final_desired():
    h = cmd(1, "create", "a", 0, 1) + cmd(1, "stop", "a", 2, 3) + \
        cmd(1, "start", "a", 4, 5) + cmd(1, "create", "b", 6, 7) + \
        cmd(1, "stop", "b", 8, 9) + cmd(1, "start", "b", 10, 11, typ="fail")
    expect_pass(FINAL(h, {"a": "running", "b": "stopped"}))
    expect_fail(FINAL(h, {"a": "stopped", "b": "stopped"}), kind="overridden",
                checker="final-desired", count=1,
                contains="last acknowledged command was start")
    # an unknown outcome, or commands from two processes: not judged
    h2 = cmd(1, "create", "c", 0, 1) + cmd(1, "stop", "c", 2, None, typ=None)
    expect_pass(FINAL(h2, {"c": "running"}))
    h3 = cmd(1, "create", "d", 0, 1) + cmd(2, "stop", "d", 2, 3)
    expect_pass(FINAL(h3, {"d": "running"}))
    h4 = cmd(1, "create", "e", 0, 1) + cmd(1, "delete", "e", 2, 3)
    expect_fail(FINAL(h4, {"e": "running"}), contains="'deleted'")


# ---------------------------------------------------------------------------

def main():
    failed = 0
    t_all = time.time()
    for fn in CASES:
        t0 = time.time()
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            failed += 1
            detail = str(e) if isinstance(e, Failure) else \
                traceback.format_exc().strip().replace("\n", " | ")
            print("FAIL  %-50s %s" % (fn.__name__, detail))
        else:
            print("ok    %-50s %.2fs" % (fn.__name__, time.time() - t0))
    print("%d cases, %d failed, %.1fs" % (len(CASES), failed,
                                          time.time() - t_all))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
