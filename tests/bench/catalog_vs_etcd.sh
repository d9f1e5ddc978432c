#!/usr/bin/env bash
# catalog_vs_etcd.sh: a 3-node archipel region against a 3-member etcd 3.4 cluster on the same
# machine, disk and loopback, driven by the same closed-loop client (tests/bench/httpload.c):
# writes/s and p50/p99 at several concurrencies, and the write gap when the leader is killed -9.
# Prints a table and rewrites the results section of docs/benchmarks.md. Bounded: about 4 min.
set -euo pipefail

usage() {
  cat <<EOF
usage: tests/bench/catalog_vs_etcd.sh [options]

  --build DIR          build directory with bin/archipel and bench/httpload (default: build)
  --work DIR           where to create the data directory of both clusters (default: \$TMPDIR
                       or /tmp; it must sit on the disk you want to measure)
  --clients "LIST"     concurrencies (default: "1 16 64 256")
  --duration S         measured seconds per point (default 4)
  --warmup S           unmeasured seconds before each point (default 1)
  --rounds N           rounds over all points; medians are reported (default 3)
  --gap-trials N       leader kills per system (default 3)
  --ignore-sigpipe     start the archipel nodes with SIGPIPE ignored (inherited through exec)
  --no-doc             do not rewrite docs/benchmarks.md
  --keep               keep the work directory (client reports and logs are always copied
                       to BUILD/bench/catalog_vs_etcd-last)
  -h, --help           this help

Needs: etcd 3.4 (Debian etcd-server), curl, jq, awk. The whole run stays under 5 minutes:
leader-kill trials that would start after 4.5 minutes are skipped (and say so).
Addresses: archipel 127.0.11.1-3 (HTTP 7100, raft 7101), etcd 127.0.30.1-3 (client 2379, peer
2380), the client binds 127.0.0.100. Same 1 s election timeout for both (etcd heartbeat 100 ms).
EOF
}

repo=$(cd "$(dirname "$0")/../.." && pwd)
build=build
work=""
clients="1 16 64 256"
duration=4
warmup=1
rounds=3
gap_trials=3
ignore_sigpipe=0
update_doc=1
keep=0
cmdline="tests/bench/catalog_vs_etcd.sh $*"

while [ $# -gt 0 ]; do
  case $1 in
  --build) build=$2; shift 2 ;;
  --work) work=$2; shift 2 ;;
  --clients) clients=$2; shift 2 ;;
  --duration) duration=$2; shift 2 ;;
  --warmup) warmup=$2; shift 2 ;;
  --rounds) rounds=$2; shift 2 ;;
  --gap-trials) gap_trials=$2; shift 2 ;;
  --ignore-sigpipe) ignore_sigpipe=1; shift ;;
  --no-doc) update_doc=0; shift ;;
  --keep) keep=1; shift ;;
  -h | --help) usage; exit 0 ;;
  *) echo "catalog_vs_etcd: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done

case $build in /*) ;; *) build=$repo/$build ;; esac
archipel=$build/bin/archipel
httpload=$build/bench/httpload
for f in "$archipel" "$build/bin/archipel-regional" "$httpload"; do
  [ -x "$f" ] || { echo "catalog_vs_etcd: $f is missing; build first" >&2; exit 1; }
done
for tool in etcd curl jq awk; do
  command -v $tool >/dev/null || { echo "catalog_vs_etcd: $tool is not installed" >&2; exit 1; }
done
if [ "$rounds" -lt 1 ] || [ "$rounds" -gt 9 ] || [ "$gap_trials" -lt 0 ] || [ "$gap_trials" -gt 9 ]; then
  echo "catalog_vs_etcd: --rounds must be 1-9 and --gap-trials 0-9" >&2
  exit 2
fi

busy=$(ss -Hltn 2>/dev/null | awk '{print $4}' |
  grep -E '^127\.0\.(11|30)\.[123]:(7100|7101|7102|2379|2380)$' | tr '\n' ' ' || true)
if [ -n "$busy" ]; then
  echo "catalog_vs_etcd: these addresses are in use (another archipel dev or etcd?): $busy" >&2
  exit 1
fi

# Always a new directory of our own: it is removed at exit.
parent=${work:-${TMPDIR:-/tmp}}
mkdir -p "$parent"
work=$(mktemp -d "$(cd "$parent" && pwd)/catalog_vs_etcd.XXXXXX")

ARCH_IPS=(127.0.11.1 127.0.11.2 127.0.11.3)
ETCD_IPS=(127.0.30.1 127.0.30.2 127.0.30.3)
CLIENT_IP=127.0.0.100
GAP_CLIENTS=16
GAP_KILL_AT=3     # seconds into the run
GAP_WINDOW=8      # seconds; leaves 5 s to recover
GAP_TIMEOUT_MS=250 # a request stuck on a follower is abandoned and retried after this
TIME_BUDGET_S=270  # no leader-kill trial (about 15 s each) starts after this
declare -A PID    # ip -> pid of the process serving it now
dev_pid=""
load_pid=""

log() { printf '%s\n' "$*" >&2; }

# A pid we recorded is still one of our processes: its command line names our work directory
# (guards against signalling a recycled pid).
ours() { # pid
  [ -n "$1" ] && [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline" | grep -qF -- "$work"
}

stop_pid() { # pid: SIGTERM, wait at most 12 s, then SIGKILL
  local p=$1 i
  ours "$p" || return 0
  kill -TERM "$p" 2>/dev/null || true
  for i in $(seq 1 120); do
    ours "$p" || return 0
    sleep 0.1
  done
  kill -KILL "$p" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$load_pid" ]; then kill -KILL "$load_pid" 2>/dev/null || true; fi
  for ip in "${ETCD_IPS[@]}"; do
    if ours "${PID[$ip]:-}"; then kill -TERM "${PID[$ip]}" 2>/dev/null || true; fi
  done
  # Nodes restarted by this script are not archipel dev's children: stop them ourselves.
  for ip in "${ARCH_IPS[@]}"; do
    if [ "${PID[$ip]:-}" != "${DEV_PID_OF[$ip]:-}" ] && ours "${PID[$ip]:-}"; then
      kill -TERM "${PID[$ip]}" 2>/dev/null || true
    fi
  done
  if [ -n "$dev_pid" ]; then stop_pid "$dev_pid"; fi
  for ip in "${ETCD_IPS[@]}" "${ARCH_IPS[@]}"; do
    if [ -n "${PID[$ip]:-}" ]; then stop_pid "${PID[$ip]}"; fi
  done
  wait 2>/dev/null || true
  # Keep what explains a run (client reports, node logs; a few MB) after the data is removed.
  if [ -d "$work/out" ]; then
    local last=$build/bench/catalog_vs_etcd-last
    rm -rf "$last" && mkdir -p "$last/archipel" "$last/etcd"
    cp -r "$work/out" "$last/" 2>/dev/null || true
    cp "$work"/*.md "$work/dev.out" "$last/" 2>/dev/null || true
    cp "$work"/archipel/logs/*.log "$last/archipel/" 2>/dev/null || true
    cp "$work"/etcd/*.log "$last/etcd/" 2>/dev/null || true
    log "client reports and node logs: $last"
  fi
  if [ "$keep" = 0 ]; then
    rm -rf "$work"
  else
    log "work directory kept: $work"
  fi
  exit $rc
}
declare -A DEV_PID_OF
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- archipel ----

start_archipel() {
  log "starting archipel: 3 nodes on ${ARCH_IPS[*]} (archipel dev, data in $work/archipel)"
  if [ "$ignore_sigpipe" = 1 ]; then
    (trap '' PIPE; export XDG_CONFIG_HOME="$work/xdg"
     exec "$archipel" dev --sites 0 --dir "$work/archipel" >"$work/dev.out" 2>&1) &
  else
    XDG_CONFIG_HOME="$work/xdg" "$archipel" dev --sites 0 --dir "$work/archipel" >"$work/dev.out" 2>&1 &
  fi
  dev_pid=$!
  local i
  for i in $(seq 1 300); do
    [ -f "$work/archipel/topology.json" ] && break
    kill -0 "$dev_pid" 2>/dev/null || { cat "$work/dev.out" >&2; log "archipel dev exited"; exit 1; }
    sleep 0.2
  done
  [ -f "$work/archipel/topology.json" ] || { log "archipel dev: no topology after 60 s"; exit 1; }
  # Every request carries the admin token, verified like any other (docs/security.md).
  ARCH_TOKEN=$(cat "$work/archipel/admin.token")
  local ip
  for ip in "${ARCH_IPS[@]}"; do
    PID[$ip]=$(jq -r --arg ip "$ip" '.regions[0].nodes[] | select(.ip == $ip) | .pid' \
      "$work/archipel/topology.json")
    DEV_PID_OF[$ip]=${PID[$ip]}
  done
  sleep 0.5
  check_alive archipel
}

# Abort when one of our processes is gone: another cluster on the same addresses (an integration
# test, another archipel dev) would otherwise receive the load.
check_alive() { # system
  local ip ips
  if [ "$1" = archipel ]; then ips=("${ARCH_IPS[@]}"); else ips=("${ETCD_IPS[@]}"); fi
  for ip in "${ips[@]}"; do
    if ! ours "${PID[$ip]:-}"; then
      log "$1: our process for $ip (pid ${PID[$ip]:-none}) is not running; is another cluster using the address? (logs: BUILD/bench/catalog_vs_etcd-last)"
      exit 1
    fi
  done
}

arch_leader() { # prints the IP of the node that says it is the leader, or nothing
  local ip
  for ip in "${ARCH_IPS[@]}"; do
    if curl -s -m 1 "http://$ip:7100/v1/health" 2>/dev/null | jq -e '.role == "leader"' >/dev/null 2>&1; then
      echo "$ip"
      return
    fi
  done
}

arch_node_ready() { # ip: answers health and knows a leader
  curl -s -m 1 "http://$1:7100/v1/health" 2>/dev/null | jq -e '.leader != null' >/dev/null 2>&1
}

restart_archipel_node() { # ip
  local ip=$1 cmd
  mapfile -t cmd < <(jq -r --arg ip "$ip" '.regions[0].nodes[] | select(.ip == $ip) | .cmd[]' \
    "$work/archipel/topology.json")
  local logf
  logf=$(jq -r --arg ip "$ip" '.regions[0].nodes[] | select(.ip == $ip) | .log' \
    "$work/archipel/topology.json")
  if [ "$ignore_sigpipe" = 1 ]; then
    (trap '' PIPE; exec "${cmd[@]}" >>"$logf" 2>&1 </dev/null) &
  else
    "${cmd[@]}" >>"$logf" 2>&1 </dev/null &
  fi
  PID[$ip]=$!
}

# ---- etcd ----

etcd_cmd_start() { # index 1-3
  local i=$1 ip=${ETCD_IPS[$(($1 - 1))]}
  local cluster="e1=http://${ETCD_IPS[0]}:2380,e2=http://${ETCD_IPS[1]}:2380,e3=http://${ETCD_IPS[2]}:2380"
  etcd --name "e$i" --data-dir "$work/etcd/e$i" \
    --listen-client-urls "http://$ip:2379" --advertise-client-urls "http://$ip:2379" \
    --listen-peer-urls "http://$ip:2380" --initial-advertise-peer-urls "http://$ip:2380" \
    --initial-cluster "$cluster" --initial-cluster-token catalog-vs-etcd \
    --initial-cluster-state new --heartbeat-interval 100 --election-timeout 1000 \
    --logger zap --log-level warn >>"$work/etcd/e$i.log" 2>&1 </dev/null &
  PID[$ip]=$!
}

start_etcd() {
  log "starting etcd $(etcd --version | awk '/etcd Version/ {print $3}'): 3 members on ${ETCD_IPS[*]} (data in $work/etcd)"
  mkdir -p "$work/etcd"
  local i
  for i in 1 2 3; do etcd_cmd_start $i; done
  for i in $(seq 1 150); do
    if [ -n "$(etcd_leader)" ]; then
      check_alive etcd
      return 0
    fi
    sleep 0.2
  done
  log "etcd: no leader after 30 s; see $work/etcd/e*.log"
  exit 1
}

etcd_status() { # ip
  curl -s -m 1 -X POST "http://$1:2379/v3/maintenance/status" -d '{}' 2>/dev/null || true
}

etcd_leader() {
  local ip
  for ip in "${ETCD_IPS[@]}"; do
    if etcd_status "$ip" | jq -e '.leader != null and .header.member_id == .leader' >/dev/null 2>&1; then
      echo "$ip"
      return
    fi
  done
}

etcd_node_ready() { # ip
  etcd_status "$1" | jq -e '.leader != null and .leader != "0"' >/dev/null 2>&1
}

restart_etcd_node() { # ip
  local i
  for i in 1 2 3; do
    if [ "${ETCD_IPS[$((i - 1))]}" = "$1" ]; then etcd_cmd_start $i; fi
  done
}

probe_n=0
probe_write() { # system: one write through the leader succeeds within 1 s
  local leader
  leader=$(leader_of "$1")
  [ -n "$leader" ] || return 1
  probe_n=$((probe_n + 1))
  if [ "$1" = archipel ]; then
    curl -sf -m 1 -o /dev/null -H 'Content-Type: application/json' \
      -H "Authorization: Bearer $ARCH_TOKEN" \
      -d "{\"name\":\"probe-$probe_n\"}" "http://$leader:7100/v1/sites"
  else
    curl -sf -m 1 -o /dev/null -d "{\"key\":\"$(printf 'probe/%s' "$probe_n" | base64 -w0)\",\"value\":\"eA==\"}" \
      "http://$leader:2379/v3/kv/put"
  fi
}

ips_of() { # system: its member addresses, one per line
  if [ "$1" = archipel ]; then printf '%s\n' "${ARCH_IPS[@]}"; else printf '%s\n' "${ETCD_IPS[@]}"; fi
}

death_reason() { # system ip: how our process for ip ended, e.g. "signal 13"
  local p=${PID[$2]} rc
  if [ "$1" = archipel ] && [ "$p" = "${DEV_PID_OF[$2]}" ]; then
    grep -o "(pid $p) killed by signal [0-9]*" "$work/dev.out" | awk '{print "signal " $NF}' || true
    grep -o "(pid $p) exited with status [0-9]*" "$work/dev.out" | awk '{print "exit " $NF}' || true
  else
    rc=0
    wait "$p" 2>/dev/null || rc=$?
    if [ "$rc" -gt 128 ] && [ "$rc" -ne 255 ]; then echo "signal $((rc - 128))"; elif [ "$rc" -ne 0 ]; then echo "exit $rc"; fi
  fi
}

# Restart every dead member of system and wait until each follows a leader and a write
# succeeds; at most 2 attempts of 20 s. Returns 1 when the cluster does not come back.
ensure_up() { # system
  local sys=$1 attempt ip i ready
  for attempt in 1 2; do
    while read -r ip; do
      if ! ours "${PID[$ip]:-}"; then
        if [ "$sys" = archipel ]; then restart_archipel_node "$ip"; else restart_etcd_node "$ip"; fi
      fi
    done < <(ips_of "$sys")
    for i in $(seq 1 100); do
      ready=1
      while read -r ip; do
        if [ "$sys" = archipel ]; then arch_node_ready "$ip" || ready=0; else etcd_node_ready "$ip" || ready=0; fi
      done < <(ips_of "$sys")
      [ "$ready" = 1 ] && probe_write "$sys" && return 0
      sleep 0.2
    done
    log "$sys: not every member is back and writable after 20 s (attempt $attempt)"
  done
  return 1
}

# ---- load ----

v52=$(printf '%052d' 0 | tr 0 a)
v48=$(printf '%048d' 0 | tr 0 b)
# 256 bytes of value in each system: 4x52 + 48 label bytes for a site, 256 bytes for etcd.
arch_body() { # name template
  printf '{"name":"%s","labels":{"v1":"%s","v2":"%s","v3":"%s","v4":"%s","v5":"%s"},"capacity":{"cpu_millis":1000}}' \
    "$1" "$v52" "$v52" "$v52" "$v52" "$v48"
}
etcd_value=$(printf '%0256d' 0 | tr 0 x | base64 -w0)
etcd_body() { # key template
  printf '{"key":"{b64:%s}","value":"%s"}' "$1" "$etcd_value"
}

targets() { # system leader-ip: one "-t" and one "ip:port" per line, the leader first
  local sys=$1 leader=$2 ip port ips
  if [ "$sys" = archipel ]; then ips=("${ARCH_IPS[@]}"); port=7100; else ips=("${ETCD_IPS[@]}"); port=2379; fi
  printf -- '-t\n%s:%s\n' "$leader" "$port"
  for ip in "${ips[@]}"; do
    if [ "$ip" != "$leader" ]; then printf -- '-t\n%s:%s\n' "$ip" "$port"; fi
  done
}

leader_of() { # system
  if [ "$1" = archipel ]; then arch_leader; else etcd_leader; fi
}

wait_leader() { # system: prints the leader's IP, waits at most 20 s
  local i l
  for i in $(seq 1 100); do
    l=$(leader_of "$1")
    [ -n "$l" ] && { echo "$l"; return 0; }
    sleep 0.2
  done
  log "$1: no leader after 20 s"
  exit 1
}

# Sets LOAD to the httpload command for system with c clients, all starting on the leader.
load_cmd() { # system clients name [extra httpload args...]
  local sys=$1 c=$2 name=$3 leader t
  shift 3
  check_alive "$sys"
  leader=$(wait_leader "$sys")
  mapfile -t t < <(targets "$sys" "$leader")
  if [ "$sys" = archipel ]; then
    LOAD=("$httpload" "${t[@]}" -p /v1/sites -b "$(arch_body "$name-{n}")"
          -H "Authorization: Bearer $ARCH_TOKEN")
  else
    LOAD=("$httpload" "${t[@]}" -p /v3/kv/put -b "$(etcd_body "bench/$name/{n}")")
  fi
  LOAD+=(-m POST -H 'Content-Type: application/json' -c "$c" --bind "$CLIENT_IP" -v "$@")
  LEADER=$leader
}

run_load() { # system clients name out [extra httpload args...]
  local out=$4
  load_cmd "$1" "$2" "$3" "${@:5}"
  "${LOAD[@]}" >"$out" 2>"$out.err" || { log "httpload failed: $(cat "$out.err")"; exit 1; }
}

kv() { # file key
  awk -F= -v k="$2" '$1 == k {print $2; exit}' "$1"
}

median() { # numbers, in one or several arguments separated by spaces
  echo "$*" | tr -s ' ' '\n' | awk NF | sort -g | awk '{v[NR] = $1} END {if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}

ratio() { # a b: a/b with 2 decimals, n/a when either is missing
  awk -v a="$1" -v b="$2" 'BEGIN {
    if (a !~ /^[0-9.]+$/ || b !~ /^[0-9.]+$/ || b + 0 == 0) print "n/a"; else printf "%.2f", a / b}'
}

# ---- the run ----

mkdir -p "$work/out"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
start_archipel
start_etcd
sleep 1

declare -A WPS P50 P99 ERR STALL
POINTNOTE=()
for r in $(seq 1 "$rounds"); do
  for c in $clients; do
    order="archipel etcd"
    [ $((r % 2)) = 0 ] && order="etcd archipel"
    for sys in $order; do
      out=$work/out/$sys-c$c-r$r
      while read -r ip; do
        if ! ours "${PID[$ip]}"; then
          POINTNOTE+=("$sys $ip died before the point $c clients round $r ($(death_reason "$sys" "$ip")); restarted")
        fi
      done < <(ips_of "$sys")
      ensure_up "$sys" || { log "$sys: the cluster does not come back"; exit 1; }
      run_load "$sys" "$c" "c$c-r$r" "$out" -d "$duration" -w "$warmup"
      WPS[$sys,$c]="${WPS[$sys,$c]:-} $(kv "$out" writes_per_s)"
      P50[$sys,$c]="${P50[$sys,$c]:-} $(kv "$out" p50_ms)"
      P99[$sys,$c]="${P99[$sys,$c]:-} $(kv "$out" p99_ms)"
      ERR[$sys,$c]=$((${ERR[$sys,$c]:-0} + $(kv "$out" errors)))
      STALL[$sys,$c]=$(awk -v a="${STALL[$sys,$c]:-0}" -v b="$(kv "$out" max_gap_ms)" 'BEGIN {print (b > a ? b : a)}')
      log "round $r  $(printf '%-8s' "$sys") clients $(printf '%3s' "$c"): $(kv "$out" writes_per_s) writes/s  p50 $(kv "$out" p50_ms) ms  p99 $(kv "$out" p99_ms) ms  errors $(kv "$out" errors)"
    done
  done
done

# Leader kill: 16 clients on the leader, kill -9 it at 3 s; the figure is the longest time without
# a successful write around the kill (httpload: mark_gap_ms, gaps overlapping [kill-50ms, kill+500ms]).
declare -A GAPS GAPNOTE
for sys in archipel etcd; do
  for t in $(seq 1 "$gap_trials"); do
    if [ "$SECONDS" -gt "$TIME_BUDGET_S" ]; then
      GAPNOTE[$sys,$t]="trial skipped: the run had used its time budget (${TIME_BUDGET_S} s)"
      log "leader kill $sys trial $t: ${GAPNOTE[$sys,$t]}"
      continue
    fi
    if ! ensure_up "$sys"; then
      GAPNOTE[$sys,$t]="trial skipped: the cluster did not come back after the previous kill"
      log "leader kill $sys trial $t: ${GAPNOTE[$sys,$t]}"
      continue
    fi
    sleep 1
    out=$work/out/$sys-gap-t$t
    load_cmd "$sys" "$GAP_CLIENTS" "g$t" -d "$GAP_WINDOW" --timeline-ms 50 --timeout-ms "$GAP_TIMEOUT_MS"
    leader=$LEADER
    "${LOAD[@]}" >"$out" 2>"$out.err" &
    load_pid=$!
    sleep "$GAP_KILL_AT"
    killed_pid=${PID[$leader]}
    ours "$killed_pid" || { log "$sys: the leader $leader (pid $killed_pid) is not ours any more"; exit 1; }
    kill -KILL "$killed_pid"
    # SIGUSR1 marks the kill in httpload's report: mark_gap_ms is the outage around it.
    kill -USR1 "$load_pid"
    wait "$killed_pid" 2>/dev/null || true # our own child (etcd, a restarted node): reap it quietly
    wait "$load_pid" || { log "httpload failed: $(cat "$out.err")"; exit 1; }
    load_pid=""
    gap=$(kv "$out" mark_gap_ms)
    note=""
    if awk -v m="$(kv "$out" max_gap_from_s)" -v t="$(kv "$out" max_gap_to_s)" -v k="$(kv "$out" mark_s)" \
      'BEGIN {exit !(m == 0 && t >= k)}'; then
      note="no write succeeded before the kill either (the cluster was stalled)"
    fi
    if [ "$(kv "$out" mark_recovered)" != 1 ]; then
      note="no write succeeded in the $((GAP_WINDOW - GAP_KILL_AT)) s after the kill"
      gap=">$gap"
    fi
    if awk -v m="$(kv "$out" max_gap_ms)" -v g="${gap#>}" 'BEGIN {exit !(m > g + 100)}'; then
      note="${note:+$note; }a longer stall later in the run: $(kv "$out" max_gap_ms) ms from $(kv "$out" max_gap_from_s) s"
    fi
    dead=""
    while read -r ip; do
      if [ "$ip" != "$leader" ] && ! ours "${PID[$ip]}"; then
        why=$(death_reason "$sys" "$ip")
        dead="$dead $ip${why:+ (${why//$'\n'/, })}"
      fi
    done < <(ips_of "$sys")
    [ -n "$dead" ] && note="${note:+$note; }the surviving members died too:$dead"
    GAPS[$sys]="${GAPS[$sys]:-} $gap"
    GAPNOTE[$sys,$t]=$note
    first="first write $(kv "$out" mark_to_first_ok_ms) ms after the kill"
    [ "$(kv "$out" mark_recovered)" = 1 ] || first="no write after the kill"
    log "leader kill $sys trial $t: killed $leader (pid $killed_pid) at $(kv "$out" mark_s) s, write gap $gap ms, $first${note:+ ($note)}"
  done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- report ----

fmt() { awk -v v="$1" -v d="$2" 'BEGIN {if (v == "nan" || v == "") print "n/a"; else printf "%.*f", d, v}'; }
table=$work/table.md
{
  echo "| clients | archipel writes/s | p50 ms | p99 ms | etcd writes/s | p50 ms | p99 ms | writes/s archipel/etcd | p50 archipel/etcd | longest stall ms (a/e) | errors (a/e) |"
  echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  for c in $clients; do
    aw=$(median "${WPS[archipel,$c]}"); ew=$(median "${WPS[etcd,$c]}")
    a50=$(median "${P50[archipel,$c]}"); e50=$(median "${P50[etcd,$c]}")
    a99=$(median "${P99[archipel,$c]}"); e99=$(median "${P99[etcd,$c]}")
    echo "| $c | $(fmt "$aw" 0) | $(fmt "$a50" 2) | $(fmt "$a99" 2) | $(fmt "$ew" 0) | $(fmt "$e50" 2) | $(fmt "$e99" 2) | $(ratio "$aw" "$ew")x | $(ratio "$a50" "$e50")x | $(fmt "${STALL[archipel,$c]}" 0)/$(fmt "${STALL[etcd,$c]}" 0) | ${ERR[archipel,$c]}/${ERR[etcd,$c]} |"
  done
} >"$table"

verdict() { # value op limit
  awk -v v="$1" -v op="$2" -v l="$3" 'BEGIN {if (v == "n/a") print "n/a"; else if ((op == ">=" && v >= l) || (op == "<=" && v <= l)) print "**met**"; else print "**missed**"}'
}
numeric_gap() { # a gap list entry: ">5000.0" counts as the window's rest
  printf '%s' "${1#>}"
}
targets_md=$work/targets.md
{
  echo "| figure | target | archipel | etcd | archipel/etcd | verdict |"
  echo "|---|---|---:|---:|---:|---|"
  last=${clients##* }
  first=${clients%% *}
  aw=$(median "${WPS[archipel,$last]}"); ew=$(median "${WPS[etcd,$last]}")
  r=$(ratio "$aw" "$ew")
  echo "| writes/s at $last clients | archipel >= 2x etcd | $(fmt "$aw" 0) | $(fmt "$ew" 0) | ${r}x | $(verdict "$r" ">=" 2) |"
  a50=$(median "${P50[archipel,$first]}"); e50=$(median "${P50[etcd,$first]}")
  r=$(ratio "$a50" "$e50")
  echo "| p50 at $first client(s) | archipel <= 0.6x etcd | $(fmt "$a50" 2) ms | $(fmt "$e50" 2) ms | ${r}x | $(verdict "$r" "<=" 0.6) |"
  if [ "$gap_trials" -gt 0 ]; then
    ag=(); eg=()
    for g in ${GAPS[archipel]:-}; do ag+=("$(numeric_gap "$g")"); done
    for g in ${GAPS[etcd]:-}; do eg+=("$(numeric_gap "$g")"); done
    am=$(median "${ag[@]}"); em=$(median "${eg[@]}")
    lost=""
    [[ "${GAPS[archipel]:-}" == *">"* ]] && lost=" (at least; see notes)"
    echo "| write gap around a kill -9 of the leader, $GAP_CLIENTS clients (median of $gap_trials; trials:${GAPS[archipel]:-} /${GAPS[etcd]:-} ms) | archipel <= 1.5 s | $(fmt "$am" 0) ms$lost | $(fmt "$em" 0) ms | $(ratio "$am" "$em")x | $(verdict "$(awk -v g="$am" 'BEGIN {if (g ~ /^[0-9.]+$/) print g / 1000; else print "n/a"}')" "<=" 1.5) |"
  fi
} >"$targets_md"

notes=$work/notes.md
: >"$notes"
for n in "${POINTNOTE[@]}"; do echo "- $n" >>"$notes"; done
for sys in archipel etcd; do
  for t in $(seq 1 "$gap_trials"); do
    [ -n "${GAPNOTE[$sys,$t]:-}" ] && echo "- leader kill, $sys trial $t: ${GAPNOTE[$sys,$t]}" >>"$notes"
  done
done

commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -n "$(git -C "$repo" status --porcelain -- common regional cli 2>/dev/null)" ] && commit="$commit + uncommitted changes"
section=$work/section.md
{
  echo "Last run: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit, $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(uname -r), $(etcd --version | awk '/etcd Version/ {print "etcd " $3}'), data on $(df -T "$work" | awk 'NR == 2 {print $2 " (" $1 ")"}')."
  echo "Load average before/after: $load_before / $load_after."
  echo "Command: \`$cmdline\`$([ "$ignore_sigpipe" = 1 ] && echo " (archipel nodes started with SIGPIPE ignored)")."
  echo "Each point: $duration s measured after $warmup s of warm-up, median of $rounds rounds (systems alternate); longest stall: the longest time without a successful write in any round."
  echo
  cat "$targets_md"
  echo
  cat "$table"
  if [ -s "$notes" ]; then
    echo
    cat "$notes"
  fi
} >"$section"

echo
cat "$section"

if [ "$update_doc" = 1 ]; then
  doc=$repo/docs/benchmarks.md
  begin='<!-- BEGIN catalog_vs_etcd results (written by tests/bench/catalog_vs_etcd.sh) -->'
  end='<!-- END catalog_vs_etcd results -->'
  if [ -f "$doc" ] && grep -qF "$begin" "$doc" && grep -qF "$end" "$doc"; then
    awk -v b="$begin" -v e="$end" -v f="$section" '
      $0 == b {print; while ((getline line < f) > 0) print line; skip = 1; next}
      $0 == e {skip = 0}
      !skip {print}' "$doc" >"$doc.tmp"
    mv "$doc.tmp" "$doc"
  else
    { echo; echo "## catalog_vs_etcd results"; echo; echo "$begin"; cat "$section"; echo "$end"; } >>"$doc"
  fi
  log "results written to docs/benchmarks.md"
fi
