#!/usr/bin/env bash
# tarp perf tool: Mpps per core per role against table size (1 .. 1M circuits, uniform
# and Zipf), IMIX, live table swaps, latency, memory and 1 or 2 workers, side by side
# with dpdk-testpmd on the same vdevs and traffic. See perf/README.md.
#
#   sudo perf/run.sh [--suite all|sizes|imix|swaps|cores|smoke] [--sizes 1,1000,...]
#                    [--roles aggregator,demux,remux] [--duration S] [--warmup S]
#                    [--out DIR] [--memory auto|huge|nohuge] [--no-testpmd] [--profile]
#                    [--build]
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")

SUITE=all
OUT=
MEMORY=auto
BUILD=0
PASS=()
BIN=${TARP_BIN:-$ROOT/target/release/tarp-forwarder}
PLOT=${TARP_PLOT_BIN:-$ROOT/target/release/tarp-perf-plot}
TESTPMD_BIN=${TESTPMD_BIN:-/usr/bin/dpdk-testpmd}
L3FWD_DIR=$ROOT/target/l3fwd
L3FWD_BIN=${L3FWD_BIN:-$L3FWD_DIR/l3fwd/build/l3fwd}
METRICS_PORT=${TARP_PERF_METRICS_PORT:-19471}
COMMAND="perf/run.sh $*"

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "run.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case $1 in
  --suite) SUITE=$2; shift 2 ;;
  --out) OUT=$2; shift 2 ;;
  --memory) MEMORY=$2; shift 2 ;;
  --build) BUILD=1; shift ;;
  --sizes | --roles | --duration | --warmup) PASS+=("$1" "$2"); shift 2 ;;
  --no-testpmd | --profile) PASS+=("$1"); shift ;;
  -h | --help) usage 0 ;;
  *) echo "run.sh: unknown argument $1" >&2; usage 2 ;;
  esac
done
case $SUITE in all | sizes | imix | swaps | cores | smoke) ;; *) die "unknown suite $SUITE" ;; esac
OUT=$(realpath -m "${OUT:-$HERE/results/$SUITE}")

[ "$(id -u)" = 0 ] || die "needs root (DPDK): sudo $0"
[ -x "$TESTPMD_BIN" ] || printf '%s\n' "${PASS[@]}" | grep -qx -- --no-testpmd ||
  die "$TESTPMD_BIN not found (apt-get install dpdk-dev), or pass --no-testpmd"

# One perf run at a time on this machine (benchmarks must not overlap).
exec 9>/tmp/tarp-perf.lock
flock -n 9 || die "another perf run holds /tmp/tarp-perf.lock"

# Built every run unless TARP_BIN names a binary (a no-op when it is up to date): a run
# must measure the tree it reports.
if [ "$BUILD" = 1 ] || [ -z "${TARP_BIN:-}" ] || [ ! -x "$BIN" ] || [ ! -x "$PLOT" ]; then
  echo "[perf] building tarp-forwarder and tarp-perf-plot (release)" >&2
  (cd "$ROOT" && cargo build --release -p tarp-forwarder -p tarp-perf-plot)
fi
[ -x "$BIN" ] || die "$BIN not found"
# DPDK's l3fwd, the reference beside testpmd (built from Debian's dpdk-doc sources).
if [ ! -x "$L3FWD_BIN" ] && ! printf '%s\n' "${PASS[@]}" | grep -qx -- --no-testpmd; then
  echo "[perf] building DPDK's l3fwd (perf/l3fwd/build.sh)" >&2
  "$HERE/l3fwd/build.sh" "$L3FWD_DIR" >/dev/null ||
    echo "[perf] no l3fwd reference: its build failed" >&2
fi
if curl -s --max-time 1 "http://127.0.0.1:$METRICS_PORT/metrics" >/dev/null 2>&1; then
  die "127.0.0.1:$METRICS_PORT is already serving; set TARP_PERF_METRICS_PORT"
fi

# Memory: hugepages with --in-memory when 1.5 GB of them can be had (the 1M-circuit runs
# keep 131,072 frames in the pool), else --no-huge (slower, and not comparable).
huge_free_mb() {
  echo $(($(awk '/^HugePages_Free:/ {print $2}' /proc/meminfo) * $(awk '/^Hugepagesize:/ {print $2}' /proc/meminfo) / 1024))
}
WANT_MB=1536
[ "$SUITE" = smoke ] && WANT_MB=256
if [ "$MEMORY" != nohuge ]; then
  grep -q ' hugetlbfs ' /proc/mounts || { mkdir -p /dev/hugepages && mount -t hugetlbfs nodev /dev/hugepages; }
  if [ "$(huge_free_mb)" -lt "$WANT_MB" ]; then
    total=$(awk '/^HugePages_Total:/ {print $2}' /proc/meminfo)
    echo $((total + (WANT_MB - $(huge_free_mb)) / 2 + 1)) >/proc/sys/vm/nr_hugepages || true
  fi
fi
case $MEMORY in
auto) if [ "$(huge_free_mb)" -ge "$WANT_MB" ]; then MEMORY=huge; else MEMORY=nohuge; fi ;;
huge) [ "$(huge_free_mb)" -ge "$WANT_MB" ] || die "--memory huge: fewer than $WANT_MB MB of free hugepages" ;;
nohuge) ;;
*) die "--memory must be auto, huge or nohuge" ;;
esac
if [ "$MEMORY" = huge ]; then EAL="--in-memory"; else EAL="--no-huge --no-shconf -m 2048"; fi
echo "[perf] memory: $MEMORY ($EAL), $(huge_free_mb) MB of hugepages free" >&2

mkdir -p "$OUT"
rc=0
python3 "$HERE/bench.py" --suite "$SUITE" --out "$OUT" --bin "$BIN" --testpmd "$TESTPMD_BIN" --l3fwd "$L3FWD_BIN" \
  --eal="$EAL" --memory "$MEMORY" --metrics-port "$METRICS_PORT" --command="$COMMAND" "${PASS[@]}" || rc=$?
if [ -x "$PLOT" ] && [ -s "$OUT/results.json" ]; then
  "$PLOT" "$OUT/results.json" "$OUT/mpps.png" || echo "[perf] no plot" >&2
fi
exit "$rc"
