#!/usr/bin/env bash
# Faults with traffic flowing: the demo's fleet (scripts/lib/fleet.sh: a keeper, two POPs,
# a demux, a remux, four DPDK forwarders in network namespaces) carries steady UDP
# streams through circuits while
#   1. an aggregator is cut off from the keeper and a circuit on it is released: its
#      stale tables keep forwarding, and its traffic never reaches another circuit's
#      app host, because the freed alias is held until the aggregator drops it;
#   2. the keeper is killed (-9) in the middle of a burst of 40 activations;
#   3. an aggregator is killed (-9) and restarted;
#   4. a POP line flaps 10 times a second for 10 seconds.
# Each fault prints the traffic held and what was lost (udp_stream.py: numbered
# datagrams echoed by the app host, counted at the device) and checks the circuits the
# keeper reports afterwards.
# Usage (root): tests/faults.sh [path/to/bin/dir]   (default: target/release)
set -euo pipefail
cd "$(dirname "$0")/.."
TARP_BIN=$(realpath "${1:-target/release}")
P=${P:-tf$$}
P=${P:0:5}
TOPO_DIR=$(mktemp -d /tmp/tarp-faults.XXXXXX)
export TARP_BIN P TOPO_DIR
source scripts/lib/fleet.sh
APPS=$(realpath tests/apps)

# pass/fail bookkeeping and the cleanup trap.
source scripts/lib/checks.sh

# json_get FIELD: FIELD of the JSON object on stdin ("" if absent).
json_get() { python3 -c 'import json,sys; print(json.load(sys.stdin).get(sys.argv[1], ""))' "$1"; }
# wait_pid NAME SECONDS: until the background job NAME has exited (bounded).
wait_pid() {
  local pid
  pid=$(cat "$TOPO_DIR/$1.pid")
  for _ in $(seq $(($2 * 10))); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  return 1
}
# stream NAME DEVICE ADDR PORT SECONDS: a 200/s numbered UDP stream in the background.
stream() {
  bg "$1" "$2" timeout $(($5 + 20)) python3 "$APPS/udp_stream.py" "$3" "$4" --rate 200 --seconds "$5"
}
# stream_result NAME: waits for stream NAME and prints its JSON line.
stream_result() {
  wait_pid "$1" 60 || true
  tail -n 1 "$TOPO_DIR/$1.log"
}
# circuits: the active circuits, one "id capture alias ports app_host key" per line, sorted.
circuits() {
  tarpctl ctl --json list --state active 2>/dev/null | python3 -c '
import json, sys
for l in sys.stdin:
    if l.strip():
        c = json.loads(l)
        print(c["id"], c["capture"], c["alias"], "%d-%d" % (c["ports"]["first"], c["ports"]["last"]),
              c["app_host"], c.get("idempotency_key") or "-")' | sort -n
}

echo "== the fleet ($P*): keeper, pop-eu, pop-us, dc-dmx, dc-rmx"
fleet_up
# pop-eu reaches the keeper through a relay the test can cut (its own session, so that
# it and the connection it carries stop together).
FW_KEEPER[pop-eu]="unix:$TOPO_DIR/pop-eu-link.sock"
relay_up() {
  rm -f "$TOPO_DIR/pop-eu-link.sock"
  bg relay ctl setsid socat "UNIX-LISTEN:$TOPO_DIR/pop-eu-link.sock,fork" "UNIX-CONNECT:$TOPO_DIR/keeper.sock"
  for _ in $(seq 50); do [ -S "$TOPO_DIR/pop-eu-link.sock" ] && return 0; sleep 0.1; done
}
relay_cut() {
  local pid
  pid=$(cat "$TOPO_DIR/relay.pid")
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
  wait_pid relay 5 || kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$TOPO_DIR/relay.pid" "$TOPO_DIR/pop-eu-link.sock"
}
# A heartbeat timeout longer than the cut: fault 1 is about releases, not bounces.
FLEET_HEARTBEAT_TIMEOUT_MS=60000 fleet_keeper_conf ''
keeper_start || { fail "keeper"; exit 1; }
relay_up
fleet_forwarders_conf
for f in "${FORWARDERS[@]}"; do fw_up "$f"; done
for f in "${FORWARDERS[@]}"; do
  fw_wait "$f" || { fail "$f did not connect: $(tail -n 2 "$TOPO_DIR/$f.log")"; exit 1; }
done
pass "keeper and four forwarders up"

# Two circuits held by running applications (tarpctl renews their leases): one per POP.
ctl_as app-app2
bg held-us app2 timeout 600 "${CTL[@]}" activate --mode port --protocol udp --port 6000 \
  --app-host 198.19.0.3 --region us --idempotency-key held-us -- python3 "$APPS/udp_echo.py" 198.19.0.3 6000 --tag app2
ctl_as app-app1
bg held-eu app1 timeout 600 "${CTL[@]}" activate --mode port --protocol udp --port 6001 \
  --app-host 198.19.0.2 --capture 203.0.113.34 --idempotency-key held-eu -- python3 "$APPS/udp_echo.py" 198.19.0.2 6001 --tag app1
US='' EU=''
for _ in $(seq 100); do
  US=$(circuits | awk '$6 == "held-us" { print $2 }')
  EU=$(circuits | awk '$6 == "held-eu" { print $2 }')
  [ -n "$US" ] && [ -n "$EU" ] && nsx app2 ss -lnu | grep -q 198.19.0.3:6000 && nsx app1 ss -lnu | grep -q 198.19.0.2:6001 && break
  sleep 0.2
done
if [ -n "$US" ] && [ -n "$EU" ]; then
  pass "held circuits: $US:6000 (pop-us) -> app2, $EU:6001 (pop-eu line1) -> app1"
else
  fail "held circuits not active: us='$US' eu='$EU'"
  exit 1
fi

echo "== 1. an aggregator cut off from the keeper keeps forwarding on its old tables"
bg victim-echo app1 timeout 300 python3 "$APPS/udp_echo.py" 0.0.0.0 7300 --tag victim
bg other-echo app2 timeout 300 python3 "$APPS/udp_echo.py" 0.0.0.0 7300 --tag other
V=$(tarpctl app1 --json activate --mode address --protocol udp --app-host 198.19.0.2 --capture 203.0.113.35 --idempotency-key victim | json_get id)
A=$(tarpctl ctl --json get "$V" | json_get alias)
for _ in $(seq 50); do nsx app1 ss -lnu | grep -q 0.0.0.0:7300 && nsx app2 ss -lnu | grep -q 0.0.0.0:7300 && break; sleep 0.1; done
if out=$(nsx deu timeout 20 python3 "$APPS/udp_ask.py" 203.0.113.35 7300 before-cut --tries 10); then
  pass "circuit $V (address mode, 203.0.113.35 on pop-eu, alias $A, app1) answers: $out"
else
  fail "circuit $V does not answer before the cut"
fi
relay_cut
for _ in $(seq 50); do grep -q "pop-eu.*disconnected\|disconnected.*pop-eu" "$TOPO_DIR/keeper.log" && break; sleep 0.1; done
tarpctl app1 release "$V" >/dev/null
W=$(tarpctl app2 --json activate --mode address --protocol udp --app-host 198.19.0.3 --region us --idempotency-key other)
W_ID=$(echo "$W" | json_get id)
W_ALIAS=$(echo "$W" | json_get alias)
W_CAP=$(echo "$W" | json_get capture)
if [ -n "$W_ALIAS" ] && [ "$W_ALIAS" != "$A" ]; then
  pass "released $V while pop-eu is cut off; the next circuit $W_ID ($W_CAP -> app2) got alias $W_ALIAS, not the held $A (the first free alias in the pool)"
else
  fail "the next circuit got alias '$W_ALIAS' (held: $A): $W"
fi
drops0=$(m dc-dmx tarp_port_drops_total 'port="tun",role="demux",reason="no_circuit"')
fwd0=$(m pop-eu tarp_port_forwarded_packets_total 'port="line1"')
stream stale deu 203.0.113.35 7300 3
r=$(stream_result stale)
drops1=$(m dc-dmx tarp_port_drops_total 'port="tun",role="demux",reason="no_circuit"')
fwd1=$(m pop-eu tarp_port_forwarded_packets_total 'port="line1"')
sent=$(echo "$r" | json_get sent)
reached_other=$(grep -c "from 198.51.100.10" "$TOPO_DIR/other-echo.log" || true)
reached_victim=$(grep -c "from 198.51.100.10" "$TOPO_DIR/victim-echo.log" || true)
if [ "$(echo "$r" | json_get echoed)" = 0 ] && [ "$reached_other" = 0 ] && [ "$reached_victim" = 1 ] &&
  [ $((fwd1 - fwd0)) -ge $((sent * 9 / 10)) ] && [ $((drops1 - drops0)) -ge $((sent * 9 / 10)) ]; then
  pass "the cut-off aggregator still tunnelled $((fwd1 - fwd0)) of $sent datagrams to 203.0.113.35 (to alias $A); the demux dropped $((drops1 - drops0)) (no circuit); none reached app2 or app1"
else
  fail "stale traffic: $r; pop-eu forwarded $((fwd1 - fwd0)), demux dropped $((drops1 - drops0)), app2 got $reached_other, app1 got $reached_victim (1 before the cut)"
fi
if r=$(nsx dus timeout 20 python3 "$APPS/udp_ask.py" "$W_CAP" 7300 new-circuit --tries 10) && [[ $r == *"other new-circuit"* ]]; then
  pass "the new circuit works meanwhile: $r"
else
  fail "new circuit $W_ID ($W_CAP): ${r:-no reply}"
fi
relay_up
ok=0
for _ in $(seq 100); do
  # The hold ends once pop-eu has acknowledged the tables without the released circuit.
  X=$(tarpctl app2 --json activate --mode address --protocol udp --app-host 198.19.0.3 --region us --no-loopback 2>/dev/null || true)
  X_ID=$(echo "$X" | json_get id 2>/dev/null || true)
  X_ALIAS=$(echo "$X" | json_get alias 2>/dev/null || true)
  [ -n "$X_ID" ] && tarpctl app2 release --no-loopback "$X_ID" >/dev/null
  [ "$X_ALIAS" = "$A" ] && { ok=1; break; }
  sleep 0.2
done
if [ $ok = 1 ]; then
  pass "pop-eu reconnected and dropped the circuit; alias $A was handed out again (circuit $X_ID)"
else
  fail "alias $A never came free after pop-eu reconnected (last: $X)"
fi
tarpctl app2 release "$W_ID" >/dev/null

echo "== 2. the keeper killed (-9) in the middle of 40 activations"
before=$(circuits)
stream s2 dus "$US" 6000 8
sleep 1
ctl_as operator-ops
for i in $(seq 0 39); do
  bg "burst$i" ctl timeout 60 "${CTL[@]}" --json activate --mode port --protocol udp \
    --port $((7100 + i)) --app-host 198.19.0.2 --region eu --idempotency-key "burst-$i"
done
# The kill comes as soon as the first activation is answered.
for _ in $(seq 500); do
  grep -qs '^{' "$TOPO_DIR"/burst*.log && break
  sleep 0.01
done
kill -KILL "$(cat "$TOPO_DIR/keeper.pid")"
rm -f "$TOPO_DIR/keeper.pid"
for i in $(seq 0 39); do wait_pid "burst$i" 60 || true; done
first_ok=0
declare -A FIRST=()
for i in $(seq 0 39); do
  id=$(grep -h '^{' "$TOPO_DIR/burst$i.log" | json_get id 2>/dev/null || true)
  [ -n "$id" ] && FIRST[$i]=$id && first_ok=$((first_ok + 1))
done
keeper_start || { fail "keeper did not restart"; exit 1; }
same=0 differ=0 missing=0 again=0
declare -A AGAIN=()
for i in $(seq 0 39); do
  # An application retries a call that failed (the keeper may still be taking its
  # forwarders back); the idempotency key makes every try the same request.
  id=''
  for _ in 1 2 3; do
    id=$(tarpctl ctl --json activate --mode port --protocol udp --port $((7100 + i)) --app-host 198.19.0.2 \
      --region eu --idempotency-key "burst-$i" 2>>"$TOPO_DIR/retry$i.err" | grep '^{' | json_get id 2>/dev/null || true)
    [ -n "$id" ] && break
    again=$((again + 1))
    sleep 1
  done
  [ -z "$id" ] && missing=$((missing + 1)) && continue
  AGAIN[$i]=$id
  if [ -n "${FIRST[$i]:-}" ]; then
    if [ "${FIRST[$i]}" = "$id" ]; then same=$((same + 1)); else differ=$((differ + 1)); fi
  fi
done
distinct=$(printf '%s\n' "${AGAIN[@]}" | sort -u | wc -l)
per_port=$(circuits | awk '$6 ~ /^burst-/ { print $4 }' | sort -u | wc -l)
if [ "$missing" = 0 ] && [ "$differ" = 0 ] && [ "$same" = "$first_ok" ] && [ "$distinct" = 40 ] && [ "$per_port" = 40 ]; then
  pass "$first_ok of 40 answered before the kill; after the restart every key's retry returned its circuit ($same the same as first answered; $again tries failed and were repeated: $(cat "$TOPO_DIR"/retry*.err 2>/dev/null | sort | uniq -c | tr -s ' ' | tr '\n' ';')), 40 distinct circuits, one per port"
else
  fail "burst: $first_ok answered first; retries: $same same, $differ different, $missing failed ($again tries repeated: $(cat "$TOPO_DIR"/retry*.err 2>/dev/null | sort | uniq -c | tr -s ' ' | tr '\n' ';')); $distinct distinct; $per_port active burst circuits"
fi
after=$(circuits | grep -v ' burst-' || true)
if [ "$(echo "$before" | grep -v ' victim' || true)" = "$after" ]; then
  pass "the circuits active before the kill are unchanged"
else
  fail "circuits before: $before; after: $after"
fi
r=$(stream_result s2)
if [ "$(echo "$r" | json_get lost)" = 0 ] || [ "$(echo "$r" | json_get outage_ms)" -lt 500 ]; then
  pass "traffic held on $US:6000 through the kill and restart: $(echo "$r" | json_get echoed) of $(echo "$r" | json_get sent) echoed, $(echo "$r" | json_get lost) lost, longest gap $(echo "$r" | json_get outage_ms) ms"
else
  fail "traffic on $US:6000 during the keeper's restart: $r"
fi

echo "== 3. an aggregator killed (-9) and restarted"
before=$(circuits)
stream s3 dus "$US" 6000 10
sleep 2
kill -KILL "$(cat "$TOPO_DIR/pop-us.pid")"
rm -f "$TOPO_DIR/pop-us.pid"
sleep 0.5
: >"$TOPO_DIR/pop-us.log"
fw_up pop-us
fw_wait pop-us "tables swapped" || fail "pop-us did not resynchronise: $(tail -n 2 "$TOPO_DIR/pop-us.log")"
r=$(stream_result s3)
tail3=$(echo "$r" | python3 -c 'import json,sys; print(min(json.load(sys.stdin)["per_second"][-3:]))')
if [ "$tail3" -gt 150 ]; then
  pass "pop-us back with the keeper's tables: $(echo "$r" | json_get echoed) of $(echo "$r" | json_get sent) echoed, $(echo "$r" | json_get lost) lost while it was down (outage $(echo "$r" | json_get outage_ms) ms), the last 3 s in full"
else
  fail "traffic after pop-us restarted: $r"
fi
if [ "$before" = "$(circuits)" ]; then
  pass "no circuit state lost: the same $(echo "$before" | wc -l) active circuits, same captures and aliases"
else
  fail "circuits before: $before; after: $(circuits)"
fi

echo "== 4. pop-eu line0 flapping 10 times a second for 10 seconds"
# Circuits on line0: ten in port mode on 203.0.113.2, one in address mode on .3.
for i in $(seq 0 9); do
  tarpctl ctl activate --mode port --protocol udp --port $((7200 + i)) --app-host 198.19.0.2 \
    --capture 203.0.113.2 --idempotency-key "line0-$i" >/dev/null
done
tarpctl ctl activate --mode address --protocol udp --app-host 198.19.0.3 --capture 203.0.113.3 \
  --idempotency-key line0-addr --no-loopback >/dev/null
line0=$(circuits | awk '$2 == "203.0.113.2" || $2 == "203.0.113.3"' | wc -l)
stream s4 deu "$EU" 6001 13
sleep 1
for _ in $(seq 100); do
  nsx inet ip link set eu-l0 down
  sleep 0.05
  nsx inet ip link set eu-l0 up
  sleep 0.05
done
sleep 3
r=$(stream_result s4)
if [ "$(echo "$r" | json_get lost)" = 0 ] || [ "$(echo "$r" | json_get outage_ms)" -lt 500 ]; then
  pass "traffic held on $EU:6001 (line1, same aggregator): $(echo "$r" | json_get echoed) of $(echo "$r" | json_get sent) echoed, $(echo "$r" | json_get lost) lost, longest gap $(echo "$r" | json_get outage_ms) ms"
else
  fail "traffic on $EU:6001 while line0 flapped: $r"
fi
bounces=$(grep -c "line down" "$TOPO_DIR/keeper.log" || true)
if out=$(tarpctl ctl --json list --all | python3 -c '
import collections, json, sys
cs = [json.loads(l) for l in sys.stdin if l.strip()]
active = [c for c in cs if c["state"] == "active"]
byid = {c["id"]: c for c in cs}
bad = []
# One active circuit per idempotency key (a replacement takes its key over), none
# doubled, none lost: the 40 of the burst, the 11 that were on line0, the two held.
keys = collections.Counter(c.get("idempotency_key") for c in active)
want = ["burst-%d" % i for i in range(40)] + ["line0-%d" % i for i in range(10)] + ["line0-addr", "held-us", "held-eu"]
for k in want:
    if keys[k] != 1:
        bad.append("key %s on %d active circuits" % (k, keys[k]))
# Every capture address: on address-mode circuits alone, or shared by port-mode ones
# with distinct ports.
use = collections.defaultdict(list)
for c in active:
    use[c["capture"]].append(c)
for cap, on in use.items():
    modes = {c["mode"] for c in on}
    if "address" in modes and len(on) > 1:
        bad.append("%s: address mode shared by %d circuits" % (cap, len(on)))
    keys = collections.Counter((c["protocol"], c["ports"]["first"]) for c in on)
    if keys and max(keys.values()) > 1:
        bad.append("%s: a port on two circuits" % cap)
# Every bounced circuit was replaced by one that exists.
replaced = [c for c in cs if c["state"] == "bounced"]
for c in replaced:
    r = c.get("replaced_by")
    if r is not None and r not in byid:
        bad.append("circuit %s replaced by unknown %s" % (c["id"], r))
if bad:
    sys.exit("; ".join(bad))
print("%d active, %d bounced and replaced, %d released" % (len(active), len(replaced), sum(c["state"] == "released" for c in cs)))
' 2>&1); then
  pass "$line0 circuits on line0, $bounces line-down reports: $out; every key on one active circuit, no capture address or port on two"
else
  fail "inventory after the flapping: $out"
fi
on_line0=$(circuits | awk '$2 == "203.0.113.2" || $2 == "203.0.113.3"' | wc -l)
if grep -q "line flapping: held down" "$TOPO_DIR/keeper.log" &&
  out=$(tarpctl ctl activate --mode address --protocol udp --app-host 198.19.0.3 --capture 203.0.113.3 --no-loopback 2>&1); then
  fail "line0 damped, yet a circuit was placed on it: $out"
elif echo "$out" | grep -qi "damp\|flap"; then
  pass "line0 held down after the flapping (damping): $(echo "$out" | tail -n 1); $on_line0 circuits left on it"
else
  fail "line0 not held down: keeper log $(grep -c 'line flapping' "$TOPO_DIR/keeper.log" || true) damping lines; $out"
fi

if [ $fails -ne 0 ]; then
  echo "faults: $fails check(s) failed"
  exit 1
fi
echo "faults: all checks passed"
