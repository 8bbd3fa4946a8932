#!/usr/bin/env bash
# What an operator sees, from tarp itself, on the demo's fleet (scripts/lib/fleet.sh: a
# keeper, two POPs, a demux, a remux, four DPDK forwarders in network namespaces, each
# serving its metrics on the management network 198.18.200.0/24 to ctl):
#   1. /healthz and /readyz answer on every forwarder and the keeper, other paths 404;
#   2. a real Prometheus (started here in ctl, on loopback) scrapes the four forwarders
#      and the keeper every second: after a UDP stream through a circuit, PromQL gives
#      forwarded-packet counts at the aggregator, the demux and the remux equal to what
#      the device sent and the app host echoed; malformed frames injected on the POP line
#      raise the aggregator's drop counters by exactly the number injected, under their
#      reasons (bad_checksum, malformed);
#   3. promtool check metrics passes on what every forwarder and the keeper serve;
#   4. the Grafana dashboard (deploy/grafana) is well formed and every PromQL expression
#      in it runs on that Prometheus, every panel with data;
#   5. `tarpctl top` under tmux shows the four forwarders and a non-zero packet rate while
#      a stream flows, and quits on q;
#   6. `tarpctl capture --circuit` on the aggregator and the demux, read back with tshark,
#      holds exactly the datagrams the test sent, before and after the rewrite; an
#      application may not capture; a bad parameter is refused naming it.
# Usage (root): tests/observe.sh [path/to/bin/dir]   (default: target/release)
set -euo pipefail
cd "$(dirname "$0")/.."
TARP_BIN=$(realpath "${1:-target/release}")
P=${P:-to$$}
P=${P:0:5}
TOPO_DIR=$(mktemp -d /tmp/tarp-observe.XXXXXX)
export TARP_BIN P TOPO_DIR
source scripts/lib/fleet.sh
APPS=$(realpath tests/apps)
PROM=127.0.0.1:9090

# pass/fail bookkeeping and the cleanup trap.
source scripts/lib/checks.sh

for t in prometheus promtool tmux tshark; do
  command -v "$t" >/dev/null || { echo "observe: $t not installed (scripts/setup.sh installs it)" >&2; exit 1; }
done

# http ADDR PATH: "STATUS BODY-FIRST-LINE" of a GET from ctl.
http() {
  local out
  out=$(nsx ctl curl -s --max-time 3 -w '\n%{http_code}' "http://$1$2" || true)
  printf '%s %s\n' "$(tail -n 1 <<<"$out")" "$(head -n 1 <<<"$out")"
}
# promq QUERY: the value of an instant PromQL query's first sample ("" if none).
promq() {
  { nsx ctl curl -s --max-time 3 --data-urlencode "query=$1" "http://$PROM/api/v1/query" || true; } |
    python3 -c '
import json, sys
try:
    r = json.load(sys.stdin)["data"]["result"]
    print(r[0]["value"][1] if r else "")
except Exception:
    print("")'
}
# promq_until QUERY WANT: polls QUERY (at most 15 s) until it equals WANT; prints the last value.
promq_until() {
  local v=""
  for _ in $(seq 75); do
    v=$(promq "$1")
    [ "$v" = "$2" ] && break
    sleep 0.2
  done
  echo "$v"
}

echo "== fleet: keeper, four forwarders, a circuit for app1 (UDP echo, address mode)"
fleet_up
fleet_keeper_conf ""
keeper_start
fleet_forwarders_conf
for f in "${FORWARDERS[@]}"; do fw_up "$f"; done
for f in "${FORWARDERS[@]}"; do fw_wait "$f" || { fail "$f did not connect"; exit 1; }; done
ctl_as app-app1
bg app1 app1 timeout 300 "${CTL[@]}" activate --mode address --protocol udp --port 7000 \
  --app-host 198.19.0.2 --region eu --idempotency-key observe -- python3 "$APPS/udp_echo.py" 0.0.0.0 7000 --tag app1
CAP=''
for _ in $(seq 100); do CAP=$(circuit_field 198.19.0.2 capture); [ -n "$CAP" ] && break; sleep 0.2; done
[ -n "$CAP" ] || { fail "no circuit for app1: $(tail -n 3 "$TOPO_DIR/app1.log")"; exit 1; }
for _ in $(seq 100); do nsx app1 ss -lnu | grep -q 0.0.0.0:7000 && break; sleep 0.1; done
# The WireGuard session (pop-eu's tunnel) is up before anything is counted.
for _ in $(seq 50); do [ "$(m pop-eu tarp_wg_peers 'state="established"')" = 1 ] && break; sleep 0.1; done
nsx deu timeout 20 python3 "$APPS/udp_ask.py" "$CAP" 7000 warm-up --tries 10 >/dev/null ||
  fail "the circuit ($CAP:7000) does not answer"
pass "circuit for app1 on capture address $CAP"

echo "== health and readiness"
for f in "${FORWARDERS[@]}"; do
  h=$(http "${MADDR[$f]}" /healthz) r=$(http "${MADDR[$f]}" /readyz) x=$(http "${MADDR[$f]}" /nope)
  if [ "$h" = "200 ok" ] && [ "$r" = "200 ready" ] && [ "${x%% *}" = 404 ]; then
    pass "$f: /healthz \"$h\", /readyz \"$r\", /nope ${x%% *}"
  else
    fail "$f: /healthz \"$h\", /readyz \"$r\", /nope \"$x\""
  fi
done
h=$(http "$KEEPER_METRICS" /healthz) r=$(http "$KEEPER_METRICS" /readyz)
if [ "$h" = "200 ok" ] && [ "$r" = "200 ready" ]; then pass "keeper: /healthz \"$h\", /readyz \"$r\""; else fail "keeper: /healthz \"$h\", /readyz \"$r\""; fi

echo "== the workers' core is theirs: no other thread of a forwarder may run on it"
for f in "${FORWARDERS[@]}"; do
  pid=$(cat "$TOPO_DIR/$f.pid")
  # Every thread's allowed CPUs; the worker (lcore 1) is the only one allowed on CPU 1.
  threads=$(for t in /proc/"$pid"/task/*; do printf '%s=%s ' "$(cat "$t/comm")" "$(awk '/Cpus_allowed_list/ { print $2 }' "$t/status")"; done)
  others=$(tr ' ' '\n' <<<"$threads" | grep -v '^rte-worker' | grep -v '^$' | grep -cv '=0$' || true)
  if [ "$others" = 0 ] && grep -q 'rte-worker-1=1' <<<"$threads"; then
    pass "$f: only its worker runs on CPU 1 ($threads)"
  else
    fail "$f: threads allowed on the worker's core: $threads"
  fi
done

echo "== Prometheus scrapes the fleet (every 1 s)"
targets=""
for f in "${FORWARDERS[@]}"; do targets+="\"${MADDR[$f]}\", "; done
cat >"$TOPO_DIR/prometheus.yml" <<EOF
global: { scrape_interval: 1s, scrape_timeout: 900ms, evaluation_interval: 1s }
scrape_configs:
  - job_name: tarp-forwarder
    static_configs: [{ targets: [${targets%, }] }]
  - job_name: tarp-keeper
    static_configs: [{ targets: ["$KEEPER_METRICS"] }]
EOF
promtool check config "$TOPO_DIR/prometheus.yml" >/dev/null || fail "promtool check config"
bg prometheus ctl prometheus --config.file="$TOPO_DIR/prometheus.yml" --storage.tsdb.path="$TOPO_DIR/prom" \
  --web.listen-address="$PROM" --log.level=warn
up=$(promq_until 'sum(up)' 5)
if [ "$up" = 5 ]; then pass "Prometheus: all 5 targets up (4 forwarders, the keeper)"; else fail "Prometheus: sum(up) = \"$up\", want 5: $(tail -n 3 "$TOPO_DIR/prometheus.log")"; fi

# A quiet baseline: what Prometheus holds equals what the forwarders say now.
fwd() { echo "sum(tarp_port_forwarded_packets_total{node=\"$1\"})"; }
drops() { echo "sum(tarp_port_drops_total{node=\"pop-eu\",reason=\"$1\"})"; }
direct_sum() { # direct_sum NODE METRIC LABELS: the sum over every matching sample, read directly
  { nsx ctl curl -s --max-time 2 "http://${MADDR[$1]}/metrics" || true; } |
    awk -v m="$2" -v l="$3" 'index($0, m "{") == 1 && index($0, l) { s += $NF } END { printf "%d\n", s }'
}
declare -A base
for n in pop-eu dc-dmx dc-rmx; do
  base[$n]=$(promq_until "$(fwd "$n")" "$(direct_sum "$n" tarp_port_forwarded_packets_total "node=\"$n\"")")
done
for r in bad_checksum malformed; do
  base[$r]=$(promq_until "$(drops "$r")" "$(direct_sum pop-eu tarp_port_drops_total "reason=\"$r\"")")
done
# The circuit, counted one by one (circuit_metrics): to the app at the demux, to the
# device at the remux, labelled by its application side (address mode: the capture).
circ() { echo "sum(tarp_circuit_packets_total{node=\"$1\",circuit=\"$CAP\",direction=\"$2\"})"; }
base[circ-dmx]=$(promq_until "$(circ dc-dmx to_app)" "$(direct_sum dc-dmx tarp_circuit_packets_total "circuit=\"$CAP\",direction=\"to_app\"")")
base[circ-rmx]=$(promq_until "$(circ dc-rmx to_device)" "$(direct_sum dc-rmx tarp_circuit_packets_total "circuit=\"$CAP\",direction=\"to_device\"")")

echo "== traffic: a 600-datagram UDP stream through the circuit, then malformed frames on the POP line"
out=$(nsx deu timeout 40 python3 "$APPS/udp_stream.py" "$CAP" 7000 --rate 200 --seconds 3 --tag observe)
sent=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["sent"])' "$out")
echoed=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["echoed"])' "$out")
[ "$echoed" = "$sent" ] || fail "the stream: $sent sent, $echoed echoed ($out)"
dev=$(nsx inet ip -o route get "$CAP" | sed -n 's/.* dev \([^ ]*\).*/\1/p')
mac=$(nsx inet ip neigh show "$CAP" dev "$dev" | awk '{ print $3 }')
bad=$(nsx inet python3 "$APPS/inject.py" "$dev" "$mac" 198.51.100.10 "$CAP" 7000 --count 37 --kind bad_checksum)
short=$(nsx inet python3 "$APPS/inject.py" "$dev" "$mac" 198.51.100.10 "$CAP" 7000 --count 11 --kind truncated)
# rises QUERY BASE BY WHAT: PromQL's QUERY reaches BASE + BY (what BY is: WHAT).
rises() {
  local want=$(($2 + $3)) got
  got=$(promq_until "$1" "$want")
  if [ "$got" = "$want" ]; then
    pass "PromQL $1: +$3, $4"
  else
    fail "PromQL $1 = \"$got\", want $want (baseline $2 + $3: $4)"
  fi
}
for n in pop-eu dc-dmx dc-rmx; do
  rises "$(fwd "$n")" "${base[$n]}" "$sent" "the datagrams the device sent (and $echoed echoed)"
done
rises "$(drops bad_checksum)" "${base[bad_checksum]}" "$bad" "exactly the frames injected"
rises "$(drops malformed)" "${base[malformed]}" "$short" "exactly the frames injected"
rises "$(circ dc-dmx to_app)" "${base[circ-dmx]}" "$sent" "the datagrams sent, on the circuit's own counter"
rises "$(circ dc-rmx to_device)" "${base[circ-rmx]}" "$echoed" "the datagrams echoed, on the circuit's own counter"
got=$(promq_until 'sum(tarp_keeper_circuits{state="active"})' 1)
if [ "$got" = 1 ]; then pass "PromQL sum(tarp_keeper_circuits{state=\"active\"}) = 1"; else fail "active circuits by the keeper's metrics: \"$got\""; fi
got=$(promq_until 'sum(tarp_keeper_forwarder_connected)' 4)
if [ "$got" = 4 ]; then pass "PromQL sum(tarp_keeper_forwarder_connected) = 4"; else fail "connected forwarders: \"$got\""; fi
got=$(promq 'sum(rate(tarp_worker_burst_duration_seconds_count{node="pop-eu"}[10s])) > 0')
if [ -n "$got" ]; then pass "pop-eu's burst-time histogram moves: $got bursts/s"; else fail "pop-eu's burst histogram shows no bursts"; fi

echo "== promtool check metrics"
for t in "${FORWARDERS[@]}" keeper; do
  addr=${MADDR[$t]:-$KEEPER_METRICS}
  nsx ctl curl -s --max-time 3 "http://$addr/metrics" >"$TOPO_DIR/$t.prom" || true
  if [ ! -s "$TOPO_DIR/$t.prom" ]; then
    fail "$t: nothing at http://$addr/metrics"
  elif lint=$(promtool check metrics <"$TOPO_DIR/$t.prom" 2>&1); then
    pass "$t: promtool check metrics: clean ($(grep -c '^# TYPE' "$TOPO_DIR/$t.prom") families)"
  else
    fail "$t: promtool check metrics: $lint"
  fi
done

echo "== the Grafana dashboard: structure, and every query on the live Prometheus"
if out=$(nsx ctl python3 scripts/check-dashboard.py deploy/grafana/tarp-dashboard.json --prometheus "http://$PROM" --require-data 2>&1); then
  pass "$out"
else
  fail "dashboard: $out"
fi

echo "== the example Prometheus config and alert rules (deploy/prometheus)"
if out=$(promtool check rules deploy/prometheus/tarp-alerts.yml 2>&1) && out2=$(promtool check config deploy/prometheus/prometheus.yml 2>&1); then
  pass "promtool check rules and config: $(grep -o 'SUCCESS: [0-9]* rules found' <<<"$out")"
else
  fail "promtool on deploy/prometheus: $out ${out2:-}"
fi

echo "== tarpctl top under tmux, while a stream flows"
ctl_as operator-ops
TOPSOCK="$TOPO_DIR/tmux.sock"
tmux -S "$TOPSOCK" new-session -d -x 120 -y 60 \
  "ip netns exec $(ns ctl) ${CTL[*]} top --every-ms 500; echo \"top exited \$?\" > $TOPO_DIR/top.exit; sleep 30"
bg stream deu timeout 40 python3 "$APPS/udp_stream.py" "$CAP" 7000 --rate 200 --seconds 6 --tag top
screen=""
for _ in $(seq 40); do
  sleep 0.25
  screen=$(tmux -S "$TOPSOCK" capture-pane -p 2>/dev/null || true)
  # pop-eu's line0 receives the stream: its RX pps column is not 0.
  if grep -q '^dc-rmx' <<<"$screen" && awk '$1 == "line0" && $3 + 0 > 0 { ok = 1 } END { exit !ok }' <<<"$screen"; then break; fi
done
nodes_shown=0
for f in "${FORWARDERS[@]}"; do grep -q "^$f " <<<"$screen" && nodes_shown=$((nodes_shown + 1)); done
rate=$(awk '$1 == "line0" && $3 + 0 > 0 { print $3; exit }' <<<"$screen")
if [ $nodes_shown = 4 ] && [ -n "$rate" ]; then
  pass "tarpctl top: the 4 forwarders on screen, a line receiving $rate pps"
else
  fail "tarpctl top: $nodes_shown of 4 forwarders, no line rate; screen:"; printf '%s\n' "$screen" | head -n 30
fi
tmux -S "$TOPSOCK" send-keys q
for _ in $(seq 20); do [ -s "$TOPO_DIR/top.exit" ] && break; sleep 0.1; done
if [ "$(cat "$TOPO_DIR/top.exit" 2>/dev/null)" = "top exited 0" ]; then pass "tarpctl top quits on q (exit 0)"; else fail "tarpctl top did not quit cleanly on q: $(cat "$TOPO_DIR/top.exit" 2>/dev/null)"; fi
tmux -S "$TOPSOCK" kill-server 2>/dev/null || true
# The stream ends before the recorder's checks (they count frames exactly).
for _ in $(seq 100); do kill -0 "$(cat "$TOPO_DIR/stream.pid")" 2>/dev/null || break; sleep 0.1; done

echo "== the packet recorder: a circuit's datagrams, before and after the rewrite, read back with tshark"
id=$(circuit_field 198.19.0.2 id)
N=20
# Captures of N packets of the circuit on the aggregator (in: the device's datagrams;
# out: rewritten to the alias, then sealed into WireGuard) and on the demux (in: opened
# from WireGuard; out: rewritten for app1), both running before the datagrams are sent.
for f in pop-eu dc-dmx; do
  bg "cap-$f" ctl "${CTL[@]}" capture --node "$f" --circuit "$id" --count $N --seconds 20 -w "$TOPO_DIR/$f.pcapng"
done
for _ in $(seq 50); do
  grep -q "capturing on" "$TOPO_DIR/cap-pop-eu.log" "$TOPO_DIR/cap-dc-dmx.log" 2>/dev/null && break
  sleep 0.1
done
sleep 0.5
out=$(nsx deu timeout 40 python3 "$APPS/udp_stream.py" "$CAP" 7000 --rate 100 --seconds 5 --count $N --tag capture)
sent=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["sent"])' "$out")
for _ in $(seq 100); do
  [ -s "$TOPO_DIR/pop-eu.pcapng" ] && [ -s "$TOPO_DIR/dc-dmx.pcapng" ] && break
  sleep 0.2
done
# frames FILE STAGE: "DST:PORT" of each frame of FILE whose comment says STAGE, and whose
# payload is this run's (tag "capture").
frames() {
  tshark -r "$1" -Y "frame.comment contains \"$2 rewrite\" && udp.payload contains \"capture \"" \
    -T fields -e ip.dst -e udp.dstport 2>/dev/null | tr '\t' ':'
}
alias=$(circuit_field 198.19.0.2 alias)
check_capture() { # NODE WANT-BEFORE-DST WANT-AFTER-DST
  local b a all
  all=$(tshark -r "$TOPO_DIR/$1.pcapng" 2>/dev/null | wc -l)
  b=$(frames "$TOPO_DIR/$1.pcapng" before | grep -c "^$2:7000$" || true)
  a=$(frames "$TOPO_DIR/$1.pcapng" after | grep -c "^$3:7000$" || true)
  if [ "$b" = "$sent" ] && [ "$a" = "$sent" ] && [ "$all" = $((2 * sent)) ]; then
    pass "$1 capture: $b datagrams to $2 before the rewrite, $a to $3 after, nothing else ($all frames; $sent sent)"
  else
    fail "$1 capture: $b before (to $2), $a after (to $3), $all frames in all; $sent sent: $(tail -n 2 "$TOPO_DIR/cap-$1.log")"
  fi
}
check_capture pop-eu "$CAP" "$alias"
check_capture dc-dmx "$alias" "$CAP"
# What tcpdump makes of the same file (it reads pcapng too).
n=$(tcpdump -nr "$TOPO_DIR/pop-eu.pcapng" 2>/dev/null | wc -l)
if [ "$n" = $((2 * sent)) ]; then pass "tcpdump reads the capture: $n frames"; else fail "tcpdump reads $n frames of pop-eu.pcapng"; fi
ctl_as app-app1
if err=$(nsx ctl "${CTL[@]}" capture --node pop-eu --count 1 --seconds 1 -w "$TOPO_DIR/no.pcapng" 2>&1); then
  fail "an application captured packets"
elif grep -q "PermissionDenied\|permission" <<<"$err"; then
  pass "an application may not capture: $err"
else
  fail "an application's capture failed otherwise: $err"
fi
r=$(http "${MADDR[pop-eu]}" "/capture?count=0")
if [ "$r" = "400 count: 0 is not within 1..=100000" ]; then pass "/capture?count=0: $r"; else fail "/capture?count=0: \"$r\""; fi

if [ $fails -ne 0 ]; then
  echo "observe: $fails check(s) failed"
  exit 1
fi
echo "observe: all checks passed"
