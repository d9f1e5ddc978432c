#!/usr/bin/env bash
# placement: committed placements per second of one region (3 nodes, archipel dev) with 1,000
# sites registered through the API and 10,000 instance requests that name no site, so the
# region's scheduler picks one for each (issue 5, L2.2). Prints key=value lines and compares with
# the published anchors (Nomad 1,500 placements/s, Kubernetes 270 placements/s).
#
# usage: tests/bench/placement.sh [--build DIR] [--sites N] [--instances N] [--clients N]
#
# A placement counts when its create is committed (the 201 comes after the raft entry applied);
# the figure is 201s divided by the wall time of the whole run of requests. Afterwards the
# script checks that the catalog holds exactly that many instances and how evenly they spread.
# Needs: curl, jq. Uses the loopback addresses of archipel dev (127.0.10.1, 127.0.11.1-3):
# nothing else may run a topology meanwhile.
set -euo pipefail

build=build
sites=1000
instances=10000
clients=128
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --sites) sites=$2; shift 2 ;;
    --instances) instances=$2; shift 2 ;;
    --clients) clients=$2; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "placement: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
archipel=$build/bin/archipel
httpload=$build/bench/httpload
for f in "$archipel" "$httpload"; do
  [ -x "$f" ] || { echo "placement: $f not found; build first" >&2; exit 1; }
done
for tool in curl jq; do
  command -v "$tool" >/dev/null || { echo "placement: needs $tool" >&2; exit 1; }
done
work=$build/bench/placement-last
rm -rf "$work"
mkdir -p "$work"
log() { echo "placement: $*" >&2; }

XDG_CONFIG_HOME="$work/xdg" "$archipel" dev --sites 0 --dir "$work/dev" >"$work/dev.out" 2>&1 &
dev_pid=$!
cleanup() { kill -TERM "$dev_pid" 2>/dev/null || true; wait "$dev_pid" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 1 300); do
  [ -f "$work/dev/topology.json" ] && break
  kill -0 "$dev_pid" 2>/dev/null || { cat "$work/dev.out" >&2; log "archipel dev exited"; exit 1; }
  sleep 0.2
done
[ -f "$work/dev/topology.json" ] || { log "no topology after 60 s"; exit 1; }
token=$(cat "$work/dev/admin.token")
auth="Authorization: Bearer $token"
leader=""
for _ in $(seq 1 100); do
  for ip in 127.0.11.1 127.0.11.2 127.0.11.3; do
    if curl -s -m 1 "http://$ip:7100/v1/health" | jq -e '.role == "leader"' >/dev/null 2>&1; then
      leader=$ip
    fi
  done
  [ -n "$leader" ] && break
  sleep 0.2
done
[ -n "$leader" ] || { log "no leader"; exit 1; }
log "leader $leader; registering $sites sites through POST /v1/sites"

"$httpload" -t "$leader:7100" -m POST -p /v1/sites -H 'Content-Type: application/json' -H "$auth" \
  -b '{"name":"p-{n}","labels":{"zone":"z{n}"},"capacity":{"cpu_millis":64000,"memory_mb":131072,"instances":1000}}' \
  -c 16 -n "$sites" -d 120 >"$work/sites.out"
got=$(curl -s -H "$auth" "http://$leader:7100/v1/sites?stale=1" | jq '.sites | length')
[ "$got" -ge "$sites" ] || { log "only $got sites registered"; exit 1; }

curl -s -o /dev/null -X POST -H 'Content-Type: application/json' -H "$auth" \
  http://127.0.10.1:7000/v1/tenants -d '{"name":"bench","quota":{}}'

log "placing $instances instances with $clients clients (no site named)"
start=$(date +%s.%N)
"$httpload" -t "$leader:7100" -m POST -p /v1/instances -H 'Content-Type: application/json' \
  -H "$auth" -c "$clients" -n "$instances" -d 300 --timeout-ms 10000 \
  -b '{"name":"i-{n}","tenant":"bench","command":["true"],"resources":{"cpu_millis":10,"memory_mb":16},"placement":{"strategy":"spread"}}' \
  >"$work/place.out"
end=$(date +%s.%N)
ok=$(sed -n 's/^ok=//p' "$work/place.out")
sent=$(sed -n 's/^requests=//p' "$work/place.out")
wall=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }')
window=$(sed -n 's/^window_s=//p' "$work/place.out")
rate=$(awk -v n="$ok" -v w="$window" 'BEGIN { printf "%.0f", n / w }')
p50=$(sed -n 's/^p50_ms=//p' "$work/place.out")
p99=$(sed -n 's/^p99_ms=//p' "$work/place.out")

curl -s -H "$auth" "http://$leader:7100/v1/instances?tenant=bench" >"$work/instances.json"
stored=$(jq '.instances | length' "$work/instances.json")
spread=$(jq -r '[.instances[].site] | group_by(.) | map(length) | "\(min) \(max) \(length)"' \
  "$work/instances.json")
read -r per_min per_max used_sites <<<"$spread"

echo "sites=$sites"
echo "instances_requested=$instances"
echo "placements_committed=$ok"
echo "requests_sent=$sent"
echo "instances_in_catalog=$stored"
echo "clients=$clients"
echo "window_s=$window"
echo "wall_s=$wall"
echo "placements_per_s=$rate"
echo "p50_ms=$p50"
echo "p99_ms=$p99"
echo "sites_used=$used_sites"
echo "per_site_min=$per_min"
echo "per_site_max=$per_max"
echo "target_per_s=5000"
echo "anchor_nomad_per_s=1500"
echo "anchor_kubernetes_per_s=270"
awk -v r="$rate" 'BEGIN { printf "ratio_to_target=%.2f\nratio_to_nomad=%.2f\nratio_to_kubernetes=%.2f\n", r / 5000, r / 1500, r / 270 }'
# httpload stops counting after N answers; requests already in flight then still land.
if [ "$stored" -lt "$ok" ] || [ "$stored" -gt "$sent" ]; then
  log "catalog holds $stored instances: $ok creates were acknowledged, $sent sent"; exit 1
fi
