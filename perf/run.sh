#!/usr/bin/env bash
# tarp perf run, testpmd-style: for each role, tarp-forwarder on one worker core between
# net_pcap (replaying generated traffic forever) and net_null, then dpdk-testpmd in io and
# 5tswap modes on the same vdevs and the same pcap. Prints a table and writes
# perf/results/latest.json. See perf/README.md.
#
#   sudo perf/run.sh [--duration S] [--warmup S] [--circuits N] [--flows F]
#                    [--roles "aggregator demux remux"] [--memory auto|huge|nohuge]
#                    [--hugepages] [--no-testpmd] [--profile] [--build]
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")

DURATION=10
WARMUP=2
CIRCUITS=1024
FLOWS=4096
ROLES="aggregator demux remux"
MEMORY=auto
SETUP_HUGE=0
TESTPMD=1
PROFILE=0
BUILD=0
METRICS_PORT=${TARP_PERF_METRICS_PORT:-19471}
BIN=${TARP_BIN:-$ROOT/target/release/tarp-forwarder}
TESTPMD_BIN=${TESTPMD_BIN:-/usr/bin/dpdk-testpmd}
RESULTS=$HERE/results
WORK=$RESULTS/work

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
  case $1 in
  --duration) DURATION=$2; shift 2 ;;
  --warmup) WARMUP=$2; shift 2 ;;
  --circuits) CIRCUITS=$2; shift 2 ;;
  --flows) FLOWS=$2; shift 2 ;;
  --roles) ROLES=$2; shift 2 ;;
  --memory) MEMORY=$2; shift 2 ;;
  --hugepages) SETUP_HUGE=1; shift ;;
  --no-testpmd) TESTPMD=0; shift ;;
  --profile) PROFILE=1; shift ;;
  --build) BUILD=1; shift ;;
  -h | --help) usage 0 ;;
  *) echo "run.sh: unknown argument $1" >&2; usage 2 ;;
  esac
done

die() { echo "run.sh: $*" >&2; exit 1; }
log() { echo "[perf +$((SECONDS))s] $*" >&2; }

[ "$(id -u)" = 0 ] || die "needs root (DPDK): sudo $0 $*"
for v in DURATION WARMUP CIRCUITS FLOWS; do
  if ! { [[ ${!v} =~ ^[0-9]+$ ]] && [ "${!v}" -ge 1 ]; }; then
    die "--${v,,} must be a positive integer"
  fi
done
for r in $ROLES; do
  case $r in aggregator | demux | remux) ;; *) die "unknown role $r" ;; esac
done
[ -x "$TESTPMD_BIN" ] || [ "$TESTPMD" = 0 ] || die "$TESTPMD_BIN not found (apt-get install dpdk-dev), or pass --no-testpmd"

# One perf run at a time on this machine (benchmarks must not overlap).
mkdir -p "$RESULTS"
exec 9>/tmp/tarp-perf.lock
flock -n 9 || die "another perf run holds /tmp/tarp-perf.lock"

if [ "$BUILD" = 1 ] || [ ! -x "$BIN" ]; then
  log "building tarp-forwarder (release)"
  (cd "$ROOT" && cargo build --release -p tarp-forwarder)
fi
[ -x "$BIN" ] || die "$BIN not found"

if curl -s --max-time 1 "http://127.0.0.1:$METRICS_PORT/metrics" >/dev/null 2>&1; then
  die "127.0.0.1:$METRICS_PORT is already serving; set TARP_PERF_METRICS_PORT"
fi

# ---- memory: hugepages (with --in-memory) or --no-huge --------------------------------
huge_free_mb() {
  local free size
  free=$(awk '/^HugePages_Free:/ {print $2}' /proc/meminfo)
  size=$(awk '/^Hugepagesize:/ {print $2}' /proc/meminfo)
  echo $(( free * size / 1024 ))
}
huge_mounted() { grep -q ' hugetlbfs ' /proc/mounts; }

if [ "$SETUP_HUGE" = 1 ]; then
  huge_mounted || { mkdir -p /dev/hugepages && mount -t hugetlbfs nodev /dev/hugepages; }
  if [ "$(awk '/^HugePages_Total:/ {print $2}' /proc/meminfo)" -lt 512 ]; then
    echo 512 >/proc/sys/vm/nr_hugepages
  fi
  log "hugepages: $(awk '/^HugePages_Total:/ {print $2}' /proc/meminfo) total, $(huge_free_mb) MB free"
fi
case $MEMORY in
auto) if huge_mounted && [ "$(huge_free_mb)" -ge 512 ]; then MEMORY=huge; else MEMORY=nohuge; fi ;;
huge) if ! { huge_mounted && [ "$(huge_free_mb)" -ge 256 ]; }; then die "--memory huge: no free hugepages (try --hugepages)"; fi ;;
nohuge) ;;
*) die "--memory must be auto, huge or nohuge" ;;
esac
if [ "$MEMORY" = huge ]; then
  EAL=(--in-memory)
  TP_EAL=(--in-memory)
else
  EAL=(--no-huge --no-shconf -m 512)
  TP_EAL=(--no-huge --no-shconf -m 512 --file-prefix=tarp-perf-testpmd)
fi
log "memory: $MEMORY (EAL ${EAL[*]})"

# ---- processes: every one we start is recorded, stopped by pid on exit -----------------
PIDS=()
stop_pid() { # stop_pid PID: SIGINT, wait up to 10 s, then SIGKILL
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -INT "$pid" 2>/dev/null || true
  for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  wait "$pid" 2>/dev/null || true
}
forget_pid() { # forget_pid PID: stopped already, not for cleanup
  local p keep=()
  for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}
cleanup() {
  local p
  for p in "${PIDS[@]}"; do stop_pid "$p"; done
  PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

child_of() { # the (timeout-wrapped) command's own pid
  local i c
  for i in $(seq 50); do
    c=$(pgrep -P "$1" | head -1 || true)
    [ -n "$c" ] && { echo "$c"; return 0; }
    sleep 0.1
  done
  return 1
}

worker_tid() { # worker_tid PID: the EAL worker thread on lcore 1
  local pid=$1 t i
  # i only counts the retries.
  # shellcheck disable=SC2034
  for i in $(seq 100); do
    for t in /proc/"$pid"/task/*; do
      case $(cat "$t/comm" 2>/dev/null) in
      rte-worker-1 | lcore-worker-1) basename "$t"; return 0 ;;
      esac
    done
    sleep 0.1
  done
  return 1
}

stamp() { # stamp PID TID: "epoch run_ns wait_ns" of that thread
  local ss
  ss=$(cat /proc/"$1"/task/"$2"/schedstat 2>/dev/null || echo "0 0 0")
  echo "$(date +%s.%N) ${ss% *}"
}

rm -rf "$WORK"
mkdir -p "$WORK"
START_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
T_START=$(date +%s)
ps -eo pid,pcpu,comm --sort=-pcpu | head -6 >"$WORK/top-start.txt"

# ---- tarp -----------------------------------------------------------------------------
run_tarp() {
  local role=$1
  local dir="$WORK/$role.tarp" tpid pid tid k url
  url="http://127.0.0.1:$METRICS_PORT/metrics"
  mkdir -p "$dir"
  log "$role: tarp-forwarder, 1 worker, ${WARMUP}s warm-up + ${DURATION}s"
  timeout -s INT -k 5 $((WARMUP + DURATION + 60)) \
    "$BIN" --config "$WORK/$role.toml" >"$WORK/$role.tarp.log" 2>&1 &
  tpid=$!
  PIDS+=("$tpid")
  pid=$(child_of "$tpid") || die "$role: tarp-forwarder did not start (see $WORK/$role.tarp.log)"
  for k in $(seq 300); do
    curl -s --max-time 1 "$url" >/dev/null 2>&1 && break
    kill -0 "$tpid" 2>/dev/null || die "$role: tarp-forwarder exited (see $WORK/$role.tarp.log)"
    sleep 0.1
  done
  curl -s --max-time 1 "$url" >/dev/null || die "$role: no metrics endpoint"
  tid=$(worker_tid "$pid") || die "$role: no worker thread found"
  sleep "$WARMUP"
  for k in $(seq 0 "$DURATION"); do
    stamp "$pid" "$tid" >"$dir/$k.meta"
    curl -s --max-time 2 "$url" >"$dir/$k.prom"
    [ "$k" = "$DURATION" ] || sleep 1
  done
  if [ "$PROFILE" = 1 ]; then
    log "$role: perf record -e cpu-clock on the worker thread, 5 s"
    timeout -s INT 20 perf record -q -e cpu-clock -F 1999 -t "$tid" -o "$WORK/$role.perf.data" -- sleep 5 \
      >/dev/null 2>&1 || true
    # Top symbols, then the share of each DSO (PMD libraries carry no symbols).
    { perf report -i "$WORK/$role.perf.data" --stdio --no-children --sort dso,symbol -g none --percent-limit 0.7 \
        2>/dev/null | awk '/^ *[0-9.]+%/ { p = $1; d = $2; $1 = $2 = $3 = ""; sub(/^ +/, ""); sub(/( +-)+ *$/, "")
          printf "%8s  %-24s %s\n", p, d, $0 }' | head -25
      perf report -i "$WORK/$role.perf.data" --stdio --no-children --sort dso -g none \
        2>/dev/null | awk '/^ *[0-9.]+%/ { printf "%8s  %s (whole DSO)\n", $1, $2 }' | head -6
    } >"$WORK/$role.profile.txt" || true
  fi
  stop_pid "$tpid"
  forget_pid "$tpid"
}

# ---- correctness first: replay the pcap once, capture what tarp forwards, check it -----
verify_tarp() {
  local role=$1
  local tpid k url="http://127.0.0.1:$METRICS_PORT/metrics" sent=0
  rm -f "$WORK/$role.out.pcap"
  timeout -s INT -k 5 30 "$BIN" --config "$WORK/$role.verify.toml" >"$WORK/$role.verify.log" 2>&1 &
  tpid=$!
  PIDS+=("$tpid")
  for k in $(seq 100); do # until every frame went out (or 10 s)
    sent=$(curl -s --max-time 1 "$url" 2>/dev/null |
      awk '/^tarp_port_tx_packets_total\{/ { s += $NF } END { print s + 0 }' || true)
    [ "$sent" -ge "$FLOWS" ] && break
    kill -0 "$tpid" 2>/dev/null || break
    sleep 0.1
  done
  sleep 0.3 # let the TX buffer flush to the file
  stop_pid "$tpid"
  forget_pid "$tpid"
  python3 "$HERE/gen.py" --role "$role" --circuits "$CIRCUITS" --flows "$FLOWS" --out "$WORK" --verify >&2 ||
    die "$role: tarp's output is not what the rules say (see $WORK/$role.verify.log); not measuring it"
}

# ---- testpmd --------------------------------------------------------------------------
run_testpmd() {
  local role=$1 mode=$2
  log "$role: dpdk-testpmd --forward-mode=$mode, ${WARMUP}s warm-up + ${DURATION}s"
  # testpmd.py starts testpmd, timestamps its statistics, stops it by PID; bounded here too.
  timeout -s INT -k 5 $((WARMUP + DURATION + 90)) python3 "$HERE/testpmd.py" --bin "$TESTPMD_BIN" \
    --mode "$mode" --pcap "$WORK/$role.pcap" --warmup "$WARMUP" --duration "$DURATION" \
    --out "$WORK/$role.testpmd-$mode" --eal="${TP_EAL[*]}" || log "$role: testpmd $mode failed"
}

# ---- the run --------------------------------------------------------------------------
GEN_EAL=()
for a in "${EAL[@]}"; do GEN_EAL+=("--eal-arg=$a"); done
for role in $ROLES; do
  python3 "$HERE/gen.py" --role "$role" --circuits "$CIRCUITS" --flows "$FLOWS" --out "$WORK" \
    --metrics "127.0.0.1:$METRICS_PORT" "${GEN_EAL[@]}" >&2
  "$BIN" --config "$WORK/$role.toml" --check >/dev/null
done
for role in $ROLES; do
  verify_tarp "$role"
done
for role in $ROLES; do
  run_tarp "$role"
  if [ "$TESTPMD" = 1 ]; then
    run_testpmd "$role" io
    run_testpmd "$role" 5tswap
  fi
done
ps -eo pid,pcpu,comm --sort=-pcpu | head -6 >"$WORK/top-end.txt"

python3 "$HERE/report.py" --work "$WORK" --roles "$ROLES" --duration "$DURATION" --warmup "$WARMUP" \
  --circuits "$CIRCUITS" --flows "$FLOWS" --memory "$MEMORY" --eal="${EAL[*]}" \
  --load-start "$START_LOAD" --load-end "$(cut -d' ' -f1-3 /proc/loadavg)" \
  --elapsed $(($(date +%s) - T_START)) --bin "$BIN" --repo "$ROOT" \
  --json "$RESULTS/latest.json"
