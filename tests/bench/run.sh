#!/usr/bin/env bash
# Every benchmark of issues 3-5, one after the other, and one table of where archipel stands
# (figure, target, anchor, measured, ratio) written between the "bench summary" markers of
# docs/benchmarks.md (and printed). About 8 minutes on the 2-core machine; needs root, etcd,
# curl and jq, and the loopback addresses of `archipel dev` and 127.0.98.x free.
#
# usage: tests/bench/run.sh [--build DIR] [--summary-only]
#   --summary-only: rebuild the table from the outputs of the last run (BUILD/bench/run-last)
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
build=build
summary_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --summary-only) summary_only=1; shift ;;
    *) echo "bench: unknown argument $1" >&2; exit 2 ;;
  esac
done
out=$build/bench/run-last
log() { echo "bench: $*" >&2; }
if [ "$summary_only" = 0 ]; then
rm -rf "$out"
mkdir -p "$out"

log "catalog against etcd (tests/bench/catalog_vs_etcd.sh)"
tests/bench/catalog_vs_etcd.sh --build "$build" >"$out/catalog.txt" 2>&1 || log "catalog_vs_etcd failed (see $out/catalog.txt)"
log "regional placement (tests/bench/placement.sh)"
tests/bench/placement.sh --build "$build" >"$out/placement.txt" 2>&1 || log "placement failed (see $out/placement.txt)"
log "edge (tests/bench/edge_bench.py)"
python3 tests/bench/edge_bench.py --bin-dir "$build/bin" --bench-dir "$build/bench" \
  --work-dir "$out/edge-work" >"$out/edge.txt" 2>&1 || log "edge_bench failed (see $out/edge.txt)"
fi

python3 - "$out" "$build" <<'PY'
import os, re, sys, time
out, build = sys.argv[1], sys.argv[2]
rows = []
def read(name):
    try:
        return open(os.path.join(out, name)).read()
    except OSError:
        return ""
# catalog: the targets table the script prints (figure | target | archipel | etcd | ratio | verdict)
for line in read("catalog.txt").splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) == 6 and cells[0] and not cells[0].startswith(("figure", "---")) and \
            cells[1].startswith("archipel"):
        fig = cells[0].split(" (")[0]
        rows.append(("regional: " + fig, cells[1], "etcd 3.4: " + cells[3], cells[2], cells[4]))
kv = dict(re.findall(r"^(\w+)=(\S+)$", read("placement.txt"), re.M))
if "placements_per_s" in kv:
    r = float(kv["placements_per_s"])
    rows.append(("regional placements/s (1,000 sites, 10,000 creates)", ">= 5000",
                 "Nomad 1,500; Kubernetes 270", "%d" % r,
                 "%.2fx target, %.1fx Nomad" % (r / 5000, r / 1500)))
for line in read("edge.txt").splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) == 3 and cells[0] and not cells[0].startswith(("figure", "---")):
        rows.append(("edge: " + cells[0], cells[1], "-", cells[2], "-"))
load = open("/proc/loadavg").read().split()[:3]
table = ["Run: %s UTC, load average after %s. Command: `tests/bench/run.sh`." % (
             time.strftime("%Y-%m-%d %H:%M", time.gmtime()), " ".join(load)), "",
         "| figure | target | anchor | measured | ratio |", "|---|---|---|---|---|"]
table += ["| %s | %s | %s | %s | %s |" % r for r in rows]
text = "\n".join(table) + "\n"
print(text)
p = "docs/benchmarks.md"
doc = open(p).read()
b, e = "<!-- BEGIN bench summary (written by tests/bench/run.sh) -->", "<!-- END bench summary -->"
block = b + "\n" + text + e
if b in doc and e in doc:
    doc = doc[:doc.index(b)] + block + doc[doc.index(e) + len(e):]
else:
    i = doc.index("\n## ")
    doc = doc[:i] + "\n\n## Summary of every benchmark (`tests/bench/run.sh`)\n\n" + block + "\n" + doc[i:]
open(p, "w").write(doc)
PY
