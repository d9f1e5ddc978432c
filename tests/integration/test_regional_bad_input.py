"""Bad requests to a 3-node region: every one gets the right 4xx with the JSON error shape and a
message naming the problem, writes nothing, and leaves the cluster working."""

import concurrent.futures
import json

import harness
from harness import expect_error, expect_status, raw_http, wait_until

MAX_BODY = 1 << 20

# (what, method, path, request kwargs, status, error code, words the message must contain)
# Every name a bad request would create starts with "bad-" or is otherwise never valid, so
# the catalog check afterwards can tell.
SITE_CASES = [
    ("malformed JSON", "POST", "/v1/sites", {"data": b'{"name":'}, 400, "invalid_json",
     ["invalid JSON"]),
    ("JSON with trailing garbage", "POST", "/v1/sites", {"data": b'{"name":"bad-t"} extra'}, 400,
     "invalid_json", ["invalid JSON"]),
    ("empty body", "POST", "/v1/sites", {"data": b""}, 400, "invalid_argument", ["body"]),
    ("JSON array", "POST", "/v1/sites", {"data": b'[{"name":"bad-a"}]'}, 400, "invalid_json",
     ["object", "array"]),
    ("JSON string", "POST", "/v1/sites", {"data": b'"bad-s"'}, 400, "invalid_json",
     ["object", "string"]),
    ("JSON number", "POST", "/v1/sites", {"data": b"42"}, 400, "invalid_json", ["object"]),
    ("JSON null", "POST", "/v1/sites", {"data": b"null"}, 400, "invalid_json", ["object"]),
    ("invalid UTF-8 in a string", "POST", "/v1/sites", {"data": b'{"name":"bad-\xff\xfe"}'},
     400, "invalid_json", ["0xff"]),
    ("overlong UTF-8 encoding", "POST", "/v1/sites", {"data": b'{"name":"bad-\xc0\xaf"}'}, 400,
     "invalid_json", ["0xc0"]),
    ("invalid UTF-8 in a label", "POST", "/v1/sites",
     {"data": b'{"name":"bad-u","labels":{"k":"\xc3\x28"}}'}, 400, "invalid_json", ["0xc3"]),
    ("NUL escape in a string", "POST", "/v1/sites", {"data": b'{"name":"bad-\\u0000"}'}, 400,
     "invalid_json", ["\\u0000"]),
    ("duplicate key", "POST", "/v1/sites", {"data": b'{"name":"bad-d1","name":"bad-d2"}'}, 400,
     "invalid_json", ["duplicate"]),
    ("nesting 5000 deep", "POST", "/v1/sites",
     {"data": b'{"name":"bad-n","labels":' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}"},
     400, "invalid_json", ["depth"]),
    ("unknown field", "POST", "/v1/sites", {"body": {"name": "bad-f", "color": "red"}}, 400,
     "invalid_argument", ["color"]),
    ("unknown capacity field", "POST", "/v1/sites",
     {"body": {"name": "bad-g", "capacity": {"gpus": 2}}}, 400, "invalid_argument", ["gpus"]),
    ("missing name", "POST", "/v1/sites", {"body": {"labels": {"a": "b"}}}, 400,
     "invalid_argument", ["name"]),
    ("name as number", "POST", "/v1/sites", {"body": {"name": 12}}, 400, "invalid_argument",
     ["name"]),
    ("name null", "POST", "/v1/sites", {"body": {"name": None}}, 400, "invalid_argument",
     ["name"]),
    ("capacity.cpu_millis as string", "POST", "/v1/sites",
     {"body": {"name": "bad-c1", "capacity": {"cpu_millis": "4000"}}}, 400, "invalid_argument",
     ["cpu_millis"]),
    ("capacity.cpu_millis negative", "POST", "/v1/sites",
     {"body": {"name": "bad-c2", "capacity": {"cpu_millis": -1}}}, 400, "invalid_argument",
     ["cpu_millis"]),
    ("capacity.cpu_millis fractional", "POST", "/v1/sites",
     {"body": {"name": "bad-c3", "capacity": {"cpu_millis": 1.5}}}, 400, "invalid_argument",
     ["cpu_millis"]),
    ("capacity.memory_mb boolean", "POST", "/v1/sites",
     {"body": {"name": "bad-c4", "capacity": {"memory_mb": True}}}, 400, "invalid_argument",
     ["memory_mb"]),
    ("capacity.instances too large", "POST", "/v1/sites",
     {"body": {"name": "bad-c5", "capacity": {"instances": 1000001}}}, 400, "invalid_argument",
     ["instances"]),
    ("capacity.cpu_millis beyond 64 bits", "POST", "/v1/sites",
     {"data": b'{"name":"bad-c6","capacity":{"cpu_millis":99999999999999999999999}}'}, 400,
     "invalid_json", ["integer"]),
    ("capacity as array", "POST", "/v1/sites", {"body": {"name": "bad-c7", "capacity": [1]}},
     400, "invalid_argument", ["capacity"]),
    ("labels as array", "POST", "/v1/sites", {"body": {"name": "bad-l1", "labels": ["a"]}}, 400,
     "invalid_argument", ["labels"]),
    ("label value as number", "POST", "/v1/sites",
     {"body": {"name": "bad-l2", "labels": {"k": 5}}}, 400, "invalid_argument", ["labels"]),
    ("label key with a space", "POST", "/v1/sites",
     {"body": {"name": "bad-l3", "labels": {"bad key": "v"}}}, 400, "invalid_argument",
     ["labels", "bad key"]),
    ("label key of 64 characters", "POST", "/v1/sites",
     {"body": {"name": "bad-l4", "labels": {"k" * 64: "v"}}}, 400, "invalid_argument",
     ["labels"]),
    ("label value of 64 characters", "POST", "/v1/sites",
     {"body": {"name": "bad-l5", "labels": {"k": "v" * 64}}}, 400, "invalid_argument",
     ["labels"]),
    ("33 labels", "POST", "/v1/sites",
     {"body": {"name": "bad-l6", "labels": {"k%d" % i: "v" for i in range(33)}}}, 400,
     "invalid_argument", ["labels"]),
    ("uppercase name", "POST", "/v1/sites", {"body": {"name": "Bad-Upper"}}, 400,
     "invalid_argument", ["name"]),
    ("name with leading '-'", "POST", "/v1/sites", {"body": {"name": "-bad-lead"}}, 400,
     "invalid_argument", ["name"]),
    ("name with trailing '-'", "POST", "/v1/sites", {"body": {"name": "bad-trail-"}}, 400,
     "invalid_argument", ["name"]),
    ("name of 64 characters", "POST", "/v1/sites", {"body": {"name": "b" * 64}}, 400,
     "invalid_argument", ["name"]),
    ("empty name", "POST", "/v1/sites", {"body": {"name": ""}}, 400, "invalid_argument",
     ["name"]),
    ("name with a dot", "POST", "/v1/sites", {"body": {"name": "bad.dot"}}, 400,
     "invalid_argument", ["name"]),
    ("name with non-ASCII letters", "POST", "/v1/sites", {"body": {"name": "bad-\u00fcn\u00ef"}},
     400, "invalid_argument", ["name"]),
    ("Content-Type text/plain", "POST", "/v1/sites",
     {"data": b'{"name":"bad-ct1"}', "content_type": "text/plain"}, 415,
     "unsupported_media_type", ["application/json"]),
    ("no Content-Type (form encoded)", "POST", "/v1/sites",
     {"data": b'{"name":"bad-ct2"}', "content_type": None}, 415, "unsupported_media_type",
     ["application/json"]),
    ("Content-Type application/jsonx", "POST", "/v1/sites",
     {"data": b'{"name":"bad-ct3"}', "content_type": "application/jsonx"}, 415,
     "unsupported_media_type", ["application/json"]),
    ("unknown route", "GET", "/v1/nope", {}, 404, "not_found", []),
    ("unknown API version", "GET", "/v2/sites", {}, 404, "not_found", []),
    ("POST to an unknown route", "POST", "/v1/sitez", {"body": {"name": "bad-r"}}, 404,
     "not_found", []),
    ("PUT /v1/sites", "PUT", "/v1/sites", {"body": {"name": "bad-m1"}}, 405,
     "method_not_allowed", ["method"]),
    ("DELETE /v1/sites", "DELETE", "/v1/sites", {}, 405, "method_not_allowed", ["method"]),
    ("PATCH /v1/sites/x", "PATCH", "/v1/sites/x", {"body": {"name": "bad-m2"}}, 405,
     "method_not_allowed", ["method"]),
    ("POST /v1/health", "POST", "/v1/health", {"body": {}}, 405, "method_not_allowed",
     ["method"]),
    ("PUT /v1/cluster/members", "PUT", "/v1/cluster/members", {"body": {}}, 405,
     "method_not_allowed", ["method"]),
]

GOOD_MEMBER = {"id": 9, "raft": "127.0.11.9:7101", "http": "127.0.11.9:7100"}

MEMBER_CASES = [
    ("malformed JSON", "POST", {"data": b'{"id":'}, 400, "invalid_json", ["invalid JSON"]),
    ("JSON array", "POST", {"data": b"[]"}, 400, "invalid_json", ["object"]),
    ("empty body", "POST", {"data": b""}, 400, "invalid_argument", ["body"]),
    ("id as string", "POST", {"body": dict(GOOD_MEMBER, id="9")}, 400, "invalid_argument",
     ["id"]),
    ("id 0", "POST", {"body": dict(GOOD_MEMBER, id=0)}, 400, "invalid_argument", ["id"]),
    ("negative id", "POST", {"body": dict(GOOD_MEMBER, id=-3)}, 400, "invalid_argument", ["id"]),
    ("missing id", "POST", {"body": {"raft": GOOD_MEMBER["raft"], "http": GOOD_MEMBER["http"]}},
     400, "invalid_argument", ["id"]),
    ("missing http", "POST", {"body": {"id": 9, "raft": GOOD_MEMBER["raft"]}}, 400,
     "invalid_argument", ["http"]),
    ("raft without a port", "POST", {"body": dict(GOOD_MEMBER, raft="127.0.11.9")}, 400,
     "invalid_argument", ["raft"]),
    ("raft port 99999", "POST", {"body": dict(GOOD_MEMBER, raft="127.0.11.9:99999")}, 400,
     "invalid_argument", ["raft"]),
    ("http as number", "POST", {"body": dict(GOOD_MEMBER, http=7100)}, 400, "invalid_argument",
     ["http"]),
    ("unknown field", "POST", {"body": dict(GOOD_MEMBER, voter=True)}, 400, "invalid_argument",
     ["voter"]),
    ("wrong Content-Type", "POST",
     {"data": json.dumps(GOOD_MEMBER).encode(), "content_type": "text/plain"}, 415,
     "unsupported_media_type", ["application/json"]),
]

MEMBER_DELETE_CASES = [
    ("non-numeric id", "abc", 400, "invalid_argument", ["id"]),
    ("id 0", "0", 400, "invalid_argument", ["id"]),
    ("id with trailing text", "2x", 400, "invalid_argument", ["id"]),
    ("negative id", "-1", 400, "invalid_argument", ["id"]),
    ("unknown id", "99", 404, "not_found", ["99"]),
]


class Failures:
    """Collects the failing cases of one check so that one failure does not hide the others."""

    def __init__(self):
        self.errors = []

    def run(self, fn, *args, **kw):
        try:
            fn(*args, **kw)
        except AssertionError as e:
            self.errors.append(str(e))

    def raise_any(self):
        if self.errors:
            raise AssertionError("%d failing cases:\n       %s" %
                                 (len(self.errors), "\n       ".join(self.errors)))


def check_cases(topo, cases):
    """Each case to every node (leader and followers validate alike)."""
    f = Failures()
    for what, method, path, kw, status, code, words in cases:
        for n in topo.region_nodes("r1"):
            f.run(expect_error, n.request(method, path, **kw), status, code, words,
                  "%s (%s %s on node %d)" % (what, method, path, n.id))
    f.raise_any()


def check_member_cases(topo):
    f = Failures()
    for what, method, kw, status, code, words in MEMBER_CASES:
        for n in topo.region_nodes("r1"):
            f.run(expect_error, n.request(method, "/v1/cluster/members", **kw), status, code,
                  words, "members: %s (node %d)" % (what, n.id))
    for what, ident, status, code, words in MEMBER_DELETE_CASES:
        for n in topo.region_nodes("r1"):
            f.run(expect_error, n.request("DELETE", "/v1/cluster/members/" + ident), status,
                  code, words, "DELETE members/%s: %s (node %d)" % (ident, what, n.id))
    for n in topo.region_nodes("r1"):
        f.run(expect_error,
              n.request("POST", "/v1/cluster/members",
                        {"id": 2, "raft": "127.0.11.2:7101", "http": "127.0.11.2:7100"}),
              409, "already_exists", what="adding existing member 2 via node %d" % n.id)
    f.raise_any()


def auth_header(node):
    """The admin token as a raw header line (the topology's, empty without a controller)."""
    token = node.topo.token
    return b"Authorization: Bearer %s\r\n" % token.encode() if token else b""


def raw_post(node, body, extra_headers=b""):
    head = (b"POST /v1/sites HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n" % (node.http.encode(), len(body)))
    head += auth_header(node)
    return raw_http(node.http, head + extra_headers + b"\r\n" + body, timeout=10)


def big_site_body(size):
    """A site body of exactly size bytes (one huge label value)."""
    head, tail = b'{"name":"bad-big","labels":{"a":"', b'"}}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def check_oversized(topo):
    for n in topo.region_nodes("r1"):
        err = expect_error(raw_post(n, big_site_body(MAX_BODY + 1)), 413, "too_large",
                           ["too large"], "body of 1 MiB + 1 byte to node %d" % n.id)
        if err["details"].get("max_body") != MAX_BODY:
            raise AssertionError("413 details %r do not give max_body %d" %
                                 (err["details"], MAX_BODY))
        expect_error(raw_post(n, big_site_body(8 * MAX_BODY)), 413, "too_large",
                     what="body of 8 MiB to node %d" % n.id)
        # Exactly 1 MiB is within the limit: rejected by validation (label too long), not 413.
        expect_error(raw_post(n, big_site_body(MAX_BODY)), 400, "invalid_argument", ["labels"],
                     "body of exactly 1 MiB to node %d" % n.id)


def check_oversized_chunked(topo):
    """A chunked body past 1 MiB never succeeds (413, or the connection is dropped)."""
    body = big_site_body(MAX_BODY + 4096)
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 65536]), body[i:i + 65536])
                      for i in range(0, len(body), 65536)) + b"0\r\n\r\n"
    for n in topo.region_nodes("r1"):
        head = (b"POST /v1/sites HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\nConnection: close\r\n" + auth_header(n) +
                b"\r\n")
        r = raw_http(n.http, head + chunks, timeout=10)
        if r.status != 0:
            expect_error(r, 413, "too_large", what="chunked 1 MiB body to node %d" % n.id)


def check_broken_http(topo):
    """Broken HTTP framing gets a 4xx or a closed connection, and the node keeps serving."""
    junk = [
        b"GARBAGE\r\n\r\n",
        b"GET /v1/health HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"POST /v1/sites HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 99999999999999999999999\r\n\r\n{}",
        b"POST /v1/sites HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 5\r\n\r\n{",  # body shorter than announced, then EOF
        b"\x00\x01\x02\xff\r\n\r\n",
    ]
    jobs = [(n, data) for n in topo.region_nodes("r1") for data in junk]
    # All at once: a server may keep a half-sent request open until its idle timeout, so
    # the answers are awaited for 2 s in parallel rather than one after the other.
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(lambda j: raw_http(j[0].http, j[1], 2, half_close=True), jobs))
    for (n, data), r in zip(jobs, answers):
        if r.status != 0 and not 400 <= r.status < 500:
            raise AssertionError("node %d answered %r to %r" % (n.id, r, data[:40]))
    for n in topo.region_nodes("r1"):
        expect_status(n.request("GET", "/v1/health"), 200, "health of node %d after junk" % n.id)


def check_nothing_written(topo, expected):
    """Every node (linearizable and own copy) holds exactly the valid sites written."""
    for n in topo.region_nodes("r1"):
        for stale in (False, True):
            have = set(n.sites(stale=stale))
            if have != expected:
                raise AssertionError("node %d (%s) holds %s, want %s" %
                                     (n.id, "stale" if stale else "linearizable",
                                      sorted(have - expected)[:10] or "less",
                                      sorted(expected)))


def check_members_unchanged(topo):
    for n in topo.region_nodes("r1"):
        c = expect_status(n.request("GET", "/v1/cluster"), 200)
        ids = sorted(m["id"] for m in c["members"])
        if ids != [1, 2, 3]:
            raise AssertionError("node %d lists members %s after bad requests" % (n.id, ids))


def check_boundary_names(topo, written):
    """The limits the errors name are the real ones: 63 characters and digits are fine."""
    leader = topo.leader()
    follower = [n for n in topo.region_nodes("r1") if n is not leader][0]
    for name in ("a" * 63, "0-9", "x"):
        expect_status(follower.request("POST", "/v1/sites", {"name": name}), 201,
                      "valid name %r" % name)
        written.add(name)


def check_still_works(topo, written):
    for n in topo.region_nodes("r1"):
        name = "after-bad-%d" % n.id
        site = {"name": name, "labels": {"k": "v"}, "capacity": {"cpu_millis": 1}}
        body = expect_status(n.request("POST", "/v1/sites", site), 201,
                             "valid write through node %d" % n.id)
        if body["labels"] != site["labels"] or body["capacity"]["cpu_millis"] != 1:
            raise AssertionError("stored %r" % body)
        written.add(name)
    for n in topo.region_nodes("r1"):
        if not n.alive():
            raise AssertionError("node %d died" % n.id)
    wait_until(lambda: all(set(n.sites()) == written for n in topo.region_nodes("r1")), 10,
               "every node holds exactly the valid sites")


def main(t):
    topo = t.topology()
    t.check("archipel dev starts a 3-node region", topo.start_dev, regions=1, nodes=3,
            required=True)
    written = set()
    t.check("bad site requests: right 4xx, error shape, message names the problem (%d cases x 3 "
            "nodes)" % len(SITE_CASES), check_cases, topo, SITE_CASES)
    t.check("body over 1 MiB: 413 too_large; exactly 1 MiB is not", check_oversized, topo)
    t.check("chunked body over 1 MiB is refused", check_oversized_chunked, topo)
    t.check("broken HTTP framing: 4xx or closed, node keeps serving", check_broken_http, topo)
    t.check("bad membership requests: right 4xx and error shape", check_member_cases, topo)
    t.check("no bad request wrote anything (every node, linearizable and stale)",
            check_nothing_written, topo, set())
    t.check("membership unchanged by bad requests", check_members_unchanged, topo)
    t.check("names at the limits are accepted", check_boundary_names, topo, written)
    t.check("the cluster still works: valid writes through every node", check_still_works, topo,
            written)


if __name__ == "__main__":
    harness.run(main)
