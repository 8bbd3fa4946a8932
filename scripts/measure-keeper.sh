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
C="$DEMO_DIR/certs"
ctl() { ip netns exec "${P}ctl" target/release/tarpctl --keeper "$KEEPER" --ca "$C/ca.pem" --cert "$C/operator-ops.pem" --key "$C/operator-ops.key" "$@"; }
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

echo "== bounce recovery: $BOUNCES x (line down -> replacement active -> first device reply from its capture address)"
: >/tmp/tarp-bounce.txt
: >/tmp/tarp-replaced.txt
# The demo left pop-eu's line0 down: bring it back so both lines can take the circuit.
ip netns exec "${P}inet" ip link set eu-l0 up
sleep 3
active() { # active FIELD: of app1's active circuit
  ctl --json list --app-host 198.19.0.2 | python3 -c '
import json, sys
c = [json.loads(l) for l in sys.stdin if l.strip()]
a = [x for x in c if x["state"] == "active"]
print(a[-1][sys.argv[1]] if a else "")' "$1"
}
for i in $(seq "$BOUNCES"); do
  cur=$(active capture)
  line=$(active line)
  iface=eu-l${line##*line}
  t0=$(date +%s%N)
  ip netns exec "${P}inet" ip link set "$iface" down
  new=
  for _ in $(seq 500); do
    new=$(active capture)
    [ -n "$new" ] && [ "$new" != "$cur" ] && break
    sleep 0.01
  done
  t1=$(date +%s%N)
  # The device is told the new address (here: by us) and talks to it.
  if ip netns exec "${P}deu" python3 tests/apps/first_reply.py 7000 "$new" --sport $((30000 + i)) --timeout 20 >/dev/null; then
    t2=$(date +%s%N)
    echo "scale=1; ($t1 - $t0) / 1000000" | bc >>/tmp/tarp-replaced.txt
    echo "scale=1; ($t2 - $t0) / 1000000" | bc >>/tmp/tarp-bounce.txt
    printf '  %2d: %s (%s) down -> %s active after %s ms, answering the device after %s ms\n' "$i" "$cur" "$iface" "$new" \
      "$(((t1 - t0) / 1000000))" "$(((t2 - t0) / 1000000))"
  else
    echo "  $i: $new did not answer within 20 s" >&2
  fi
  ip netns exec "${P}inet" ip link set "$iface" up
  sleep 2.5 # the line comes back and its addresses return to the pool
done
echo "replacement active (as seen by tarpctl list):"
stats </tmp/tarp-replaced.txt
echo "first device reply from the replacement capture address:"
stats </tmp/tarp-bounce.txt
