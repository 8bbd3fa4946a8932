#!/usr/bin/env bash
# Measures, on the demo topology, the keeper's activation latency (tarpctl activate ->
# every forwarder on the path acknowledged -> answer) and bounce recovery (a POP line's
# link goes down -> a device gets its first answer from the replacement capture address).
# Usage (root): scripts/measure-keeper.sh [RUNS]   (default 100 activations, 20 bounces)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-100}
BOUNCES=${BOUNCES:-20}
DEMO_DIR=${DEMO_DIR:-/tmp/tarp-demo}
P=${DEMO_PREFIX:-td}
bash scripts/demo.sh --keep --no-build >/tmp/tarp-measure-demo.log 2>&1 || { tail -n 20 /tmp/tarp-measure-demo.log; exit 1; }
trap 'bash scripts/demo-down.sh >/dev/null' EXIT
KEEPER="unix:$DEMO_DIR/keeper.sock"
ctl() { ip netns exec "${P}ctl" target/release/tarpctl --keeper "$KEEPER" "$@"; }
stats() { python3 -c '
import sys, statistics
v = sorted(float(x) for x in sys.stdin.read().split())
print(f"n={len(v)} median={statistics.median(v):.1f} ms p90={v[int(len(v)*0.9)-1]:.1f} ms worst={v[-1]:.1f} ms")'; }

echo "== baseline: tarpctl list (process start, connect, one call), 20 runs"
: >/tmp/tarp-list.txt
for i in $(seq 20); do
  t0=$(date +%s%N); ctl list >/dev/null; t1=$(date +%s%N)
  echo "scale=3; ($t1 - $t0) / 1000000" | bc >>/tmp/tarp-list.txt
done
stats </tmp/tarp-list.txt

echo "== activation latency: $RUNS x (activate port-mode UDP circuit, all ACKs, answer; release)"
: >/tmp/tarp-activate.txt
for i in $(seq "$RUNS"); do
  t0=$(date +%s%N)
  id=$(ctl --json activate --mode port --protocol udp --port $((20000 + i)) --app-host 198.19.0.3 --region us --no-loopback |
    python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["id"])')
  t1=$(date +%s%N)
  echo "scale=3; ($t1 - $t0) / 1000000" | bc >>/tmp/tarp-activate.txt
  ctl release "$id" >/dev/null
done
stats </tmp/tarp-activate.txt

echo "== bounce recovery: $BOUNCES x (line down -> first reply from the replacement capture address)"
: >/tmp/tarp-bounce.txt
caps="203.0.113.2 203.0.113.3 203.0.113.34 203.0.113.35"
# The demo left pop-eu's line0 down: bring it back so both lines can take the circuit.
ip netns exec "${P}inet" ip link set eu-l0 up
sleep 3
for i in $(seq "$BOUNCES"); do
  cur=$(ctl --json list --app-host 198.19.0.2 | python3 -c '
import json, sys
c = [json.loads(l) for l in sys.stdin if l.strip()]
print([x for x in c if x["state"] == "active"][-1]["capture"])')
  line=$(ctl --json list --app-host 198.19.0.2 | python3 -c '
import json, sys
c = [json.loads(l) for l in sys.stdin if l.strip()]
print([x for x in c if x["state"] == "active"][-1]["line"])')
  iface=eu-l${line#line}
  ip netns exec "${P}deu" python3 tests/apps/first_reply.py 7000 $caps --exclude "$cur" --timeout 20 >/tmp/tarp-first.txt &
  probe=$!
  sleep 0.05
  ip netns exec "${P}inet" ip link set "$iface" down
  if wait $probe; then
    read -r ms new </tmp/tarp-first.txt
    echo "$ms" >>/tmp/tarp-bounce.txt
    printf '  %2d: %s on %s down -> %s answers after %s ms\n' "$i" "$cur" "$iface" "$new" "$ms"
  else
    echo "  $i: no replacement answered within 20 s" >&2
  fi
  ip netns exec "${P}inet" ip link set "$iface" up
  sleep 2.5 # the line comes back and its addresses return to the pool
done
stats </tmp/tarp-bounce.txt
