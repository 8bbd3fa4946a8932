#!/usr/bin/env bash
# tarp in one command: a miniature of the patent's FIG 1/2 in network namespaces.
#
#   two regions (eu, us), one POP each: an aggregator with two lines (capture addresses)
#   a data center: demux, remux, two application hosts; an "Internet" router between
#   a device per region; the circuit keeper; every forwarder on DPDK virtual devices
#
# The applications get their circuits from the keeper with tarpctl (one in address mode,
# one in port mode); each device talks to its region's capture address; then a POP line
# goes down, its circuit is replaced and the application moves to the new capture
# address; the keeper is killed (-9) and restarted while traffic keeps flowing; the
# demux forwarder is killed (-9) and restarted, and resynchronises from the keeper.
#
# Usage (root):  scripts/demo.sh [--keep] [--check] [--no-build]
#   --keep      leave everything running; prints how to look around and how to stop,
#               and writes the topology as JSON ($DEMO_DIR/topology.json)
#   --check     non-interactive and bounded: exit non-zero if any step misbehaves
#   --no-build  use the binaries in target/release as they are
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

KEEP=0 CHECK=0 BUILD=1
for a in "$@"; do
  case $a in
  --keep) KEEP=1 ;;
  --check) CHECK=1 ;;
  --no-build) BUILD=0 ;;
  -h | --help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "demo: unknown option $a" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "demo: run as root (DPDK and network namespaces need it)" >&2; exit 1; }

# Output helpers.
if [ -t 1 ]; then B=$'\e[1m' G=$'\e[32m' R=$'\e[31m' D=$'\e[2m' N=$'\e[0m'; else B='' G='' R='' D='' N=''; fi
step() { printf '\n%s==> %s%s\n' "$B" "$*" "$N"; }
info() { printf '    %s\n' "$*"; }
okay() { printf '    %s✓%s %s\n' "$G" "$N" "$*"; }
bad() { printf '    %s✗ %s%s\n' "$R" "$*" "$N"; FAILS=$((FAILS + 1)); SUMMARY+=("FAIL|$*"); }
FAILS=0
SUMMARY=()
row() { SUMMARY+=("$1|$2|$3|$4"); }

step "Setting up (packages, build)"
bash scripts/setup.sh
if [ $BUILD = 1 ]; then
  cargo build --release --workspace --bins 2>&1 | tail -n 1
fi
TARP_BIN=$ROOT/target/release
APPS=$ROOT/tests/apps
P=${DEMO_PREFIX:-td}
DEMO_DIR=${DEMO_DIR:-/tmp/tarp-demo}
TOPO_DIR=$DEMO_DIR
export P TOPO_DIR TARP_BIN
# shellcheck source=lib/fleet.sh
source scripts/lib/fleet.sh

# cleanup runs from the EXIT trap below.
# shellcheck disable=SC2317
cleanup() {
  local rc=$?
  if [ "$KEEP" = 1 ] && [ "$rc" = 0 ]; then return; fi
  step "Tearing down"
  topo_down
  info "namespaces removed, processes stopped"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A previous demo left running with --keep is replaced.
topo_down
rm -rf "$DEMO_DIR"
mkdir -p "$DEMO_DIR/www"

step "Building the topology in network namespaces (prefix ${P})"
fleet_up
okay "11 namespaces: devices deu (198.51.100.10) and dus (198.51.100.20), router inet, app hosts app1 (198.19.0.2) and app2 (198.19.0.3), dc (switch), ctl (keeper), one per forwarder"

step "Starting the circuit keeper ($KEEPER)"
fleet_keeper_conf ""
start_keeper() {
  keeper_start 2>"$DEMO_DIR/keeper-start.err" && return 0
  bad "$(cat "$DEMO_DIR/keeper-start.err")"
  return 1
}
start_keeper && okay "keeper up (inventory: 2 regions, 2 POPs, 4 lines, 8 capture addresses)"

step "Starting four forwarders on DPDK net_af_packet ports"
fleet_forwarders_conf
for f in "${FORWARDERS[@]}"; do fw_up "$f"; done
for f in "${FORWARDERS[@]}"; do
  if fw_wait "$f"; then
    okay "$f: DPDK ports up, connected to the keeper, tables generation $(m "$f" tarp_snapshot_generation node=)"
  else
    bad "$f did not connect: $(tail -n 2 "$DEMO_DIR/$f.log")"
  fi
done
# pop-eu's tunnel is WireGuard (the keeper pushed it with both public keys), pop-us's VXLAN.
for _ in $(seq 50); do [ "$(m pop-eu tarp_wg_peers 'state="established"')" = 1 ] && break; sleep 0.1; done
if [ "$(m pop-eu tarp_wg_peers 'state="established"')" = 1 ]; then
  okay "pop-eu -> dc-dmx is a WireGuard tunnel with a session ($(m pop-eu tarp_wg_handshake_messages_total node=) handshake message(s) accepted at pop-eu); pop-us -> dc-dmx is VXLAN"
else
  bad "pop-eu has no WireGuard session with dc-dmx: $(m pop-eu tarp_wg_peers 'state=')"
fi

step "Applications ask the keeper for circuits (tarpctl)"
echo "hello from app2 in the data center" >"$DEMO_DIR/www/index.html"
t0=$(date +%s%N)
ctl_as app-app1
bg app1 app1 timeout 900 "${CTL[@]}" activate --mode address --protocol udp --port 7000 \
  --app-host 198.19.0.2 --region eu --idempotency-key demo-eu -- python3 "$APPS/udp_echo.py" 0.0.0.0 7000 --tag app1
ctl_as app-app2
bg app2 app2 timeout 900 "${CTL[@]}" activate --mode port --protocol tcp --port 8080 \
  --app-host 198.19.0.3 --region us --idempotency-key demo-us -- python3 -m http.server --bind 198.19.0.3 --directory "$DEMO_DIR/www" 8080
CAP_EU='' CAP_US=''
for _ in $(seq 100); do
  CAP_EU=$(circuit_field 198.19.0.2 capture)
  CAP_US=$(circuit_field 198.19.0.3 capture)
  [ -n "$CAP_EU" ] && [ -n "$CAP_US" ] && break
  sleep 0.2
done
t1=$(date +%s%N)
ctl_as operator-ops
bg watch ctl timeout 900 "${CTL[@]}" watch
if [ -n "$CAP_EU" ] && [ -n "$CAP_US" ]; then
  okay "app1 (UDP echo, address mode, region eu): capture address $CAP_EU:7000 — tarpctl put it on app1's loopback"
  okay "app2 (HTTP, port mode, region us): capture address $CAP_US:8080 -> 198.19.0.3:8080"
  info "both circuits active after $(((t1 - t0) / 1000000)) ms (every forwarder on their paths acknowledged)"
else
  bad "circuits not active: eu=$CAP_EU us=$CAP_US ($(tail -n 2 "$DEMO_DIR/app1.log"))"
fi
# Trust: every caller is named by its certificate, and a circuit belongs to its application.
EU_ID=$(circuit_field 198.19.0.2 id)
if out=$(tarpctl app2 release --no-loopback "$EU_ID" 2>&1); then
  bad "app2 released app1's circuit $EU_ID"
elif grep -q "PermissionDenied.*app/app2 may not release circuit $EU_ID: it belongs to app/app1" <<<"$out"; then
  okay "app2 may not release app1's circuit $EU_ID: $(grep -o 'PermissionDenied.*' <<<"$out" | head -n 1)"
else
  bad "app2 releasing app1's circuit: unexpected answer: $out"
fi
if out=$(nsx deu "$TARP_BIN/tarpctl" --keeper "$KEEPER" --ca "$CERTS/ca.pem" list 2>&1); then
  bad "a caller without a certificate listed the circuits"
elif grep -q Unauthenticated <<<"$out"; then
  okay "a caller without a client certificate: $(grep -o 'Unauthenticated.*' <<<"$out" | head -n 1)"
else
  bad "a caller without a certificate: unexpected answer: $out"
fi
for _ in $(seq 100); do nsx app2 ss -lnt | grep -q 198.19.0.3:8080 && break; sleep 0.1; done
for _ in $(seq 100); do nsx app1 ss -lnu | grep -q 0.0.0.0:7000 && break; sleep 0.1; done

# path NODES...: rx/tx counters that show where packets went.
snap_counters() {
  local f=tarp_port_forwarded_packets_total
  echo "$(m pop-eu $f 'port="line0"') $(m pop-eu $f 'port="line1"') $(m pop-us $f 'port="line0"') $(m pop-us $f 'port="line1"') \
$(m dc-dmx $f 'port="tun"') $(m dc-rmx $f 'port="dc"') \
$(m pop-eu tarp_port_tx_packets_total 'port="line0"') $(m pop-us tarp_port_tx_packets_total 'port="line0"')"
}
path_of() { # path_of BEFORE AFTER
  local -a b a
  read -r -a b <<<"$1"
  read -r -a a <<<"$2"
  local names=("pop-eu/line0" "pop-eu/line1" "pop-us/line0" "pop-us/line1") hops=() k
  for k in 0 1 2 3; do [ "${a[$k]:-0}" -gt "${b[$k]:-0}" ] && hops+=("${names[$k]}"); done
  [ "${a[4]:-0}" -gt "${b[4]:-0}" ] && hops+=("tunnel -> dc-dmx")
  [ "${a[5]:-0}" -gt "${b[5]:-0}" ] && hops+=("app host -> dc-rmx -> Internet")
  local IFS='|'
  local joined="${hops[*]}"
  printf '%s\n' "${joined//|/ -> }"
}

ask_udp() { # ask_udp DEVICE CAPTURE LABEL
  local before after out
  before=$(snap_counters)
  if out=$(nsx "$1" timeout 20 python3 "$APPS/udp_ask.py" "$2" 7000 "hello-from-$1" --tries 10 2>&1); then
    after=$(snap_counters)
    # $out is split into words on purpose: addr port tag message.
    # shellcheck disable=SC2086
    set -- "$1" "$2" "$3" $out
    if [ "$4" = "$2" ] && [ "$5" = 7000 ]; then
      okay "$1 -> $2:7000 UDP: reply \"$6 $7\" from $4:$5 (the capture address)"
      info "${D}path: $1 -> $(path_of "$before" "$after")$N"
      row "$3" "$1 -> $2:7000/udp" "reply from $4:$5" ok
    else
      bad "$1 -> $2:7000 UDP: reply came from $4:$5, not the capture address"
      row "$3" "$1 -> $2:7000/udp" "reply from $4:$5" FAIL
    fi
  else
    bad "$1 -> $2:7000 UDP: no reply ($out)"
    row "$3" "$1 -> $2:7000/udp" "no reply" FAIL
  fi
}
ask_http() { # ask_http DEVICE CAPTURE LABEL
  local before after body
  before=$(snap_counters)
  if body=$(nsx "$1" timeout 20 curl -s --retry 3 --retry-connrefused --max-time 5 "http://$2:8080/"); then
    after=$(snap_counters)
    okay "$1 -> http://$2:8080/: \"$body\""
    info "${D}path: $1 -> $(path_of "$before" "$after")$N"
    row "$3" "$1 -> $2:8080/tcp" "HTTP 200, ${#body} bytes" ok
  else
    bad "$1 -> http://$2:8080/ failed"
    row "$3" "$1 -> $2:8080/tcp" "failed" FAIL
  fi
}

step "Each device talks to its region's capture address"
ask_udp deu "$CAP_EU" "eu, address mode"
ask_http dus "$CAP_US" "us, port mode"
# What left the line besides the forwarder's own ARP and ND.
lt=$(($(m pop-eu tarp_port_tx_packets_total 'port="line0"') - $(m pop-eu tarp_port_control_tx_packets_total 'port="line0"')))
if [ "$lt" = 0 ]; then
  okay "no packet left a POP line: every reply came straight from the data center (pop-eu line0 tx = its own ARP only)"
else
  bad "pop-eu line0 forwarded $lt packets"
fi

step "A POP line goes down: pop-eu line0 (carrying $CAP_EU)"
OLD_EU=$CAP_EU
t0=$(date +%s%N)
nsx inet ip link set eu-l0 down
NEW_EU=
for _ in $(seq 150); do
  NEW_EU=$(circuit_field 198.19.0.2 capture)
  [ -n "$NEW_EU" ] && [ "$NEW_EU" != "$OLD_EU" ] && break
  sleep 0.1
done
t1=$(date +%s%N)
if [ -n "$NEW_EU" ] && [ "$NEW_EU" != "$OLD_EU" ]; then
  okay "the keeper replaced the circuit: $OLD_EU -> $NEW_EU in $(((t1 - t0) / 1000000)) ms (same region, line1)"
  for _ in $(seq 50); do grep -q "$NEW_EU" "$DEMO_DIR/watch.log" && break; sleep 0.1; done
  if grep -q "$NEW_EU" "$DEMO_DIR/watch.log"; then
    okay "the application was told over Watch: $(grep "$NEW_EU" "$DEMO_DIR/watch.log" | head -n 1 | cut -c1-110)"
  else
    bad "no Watch event names $NEW_EU"
  fi
  for _ in $(seq 50); do nsx app1 ip -br addr show lo | grep -q "$NEW_EU" && break; sleep 0.1; done
  if nsx app1 ip -br addr show lo | grep -q "$NEW_EU"; then
    okay "tarpctl moved the loopback address on app1 to $NEW_EU"
  else
    bad "app1's loopback does not carry $NEW_EU"
  fi
  ask_udp deu "$NEW_EU" "eu after the bounce"
  t2=$(date +%s%N)
  info "line down -> replacement answering the device: $(((t2 - t0) / 1000000)) ms"
else
  bad "no replacement for $OLD_EU (got '$NEW_EU')"
  row "eu after the bounce" "-" "no replacement" FAIL
fi

step "The keeper is killed (-9) and restarted; the data plane does not notice"
kill -KILL "$(cat "$DEMO_DIR/keeper.pid")"
rm -f "$DEMO_DIR/keeper.pid"
info "keeper killed"
ask_http dus "$CAP_US" "us, keeper down"
start_keeper && okay "keeper restarted from its database"
sleep 1
AFTER_US=$(circuit_field 198.19.0.3 capture)
if [ "$AFTER_US" = "$CAP_US" ]; then
  okay "state survived: app2's circuit still holds $CAP_US"
else
  bad "after restart app2's circuit is '$AFTER_US', was $CAP_US"
fi
ask_udp deu "$NEW_EU" "eu, keeper restarted"

step "A forwarder is killed (-9) and restarted; it resynchronises from the keeper"
kill -KILL "$(cat "$DEMO_DIR/dc-dmx.pid")"
rm -f "$DEMO_DIR/dc-dmx.pid"
info "dc-dmx (the demux, circuits from the keeper only) killed"
sleep 0.5
fw_up dc-dmx
if fw_wait dc-dmx "tables swapped"; then
  okay "dc-dmx back: full table set from the keeper, generation $(m dc-dmx tarp_snapshot_generation node=)"
else
  bad "dc-dmx did not resynchronise: $(tail -n 2 "$DEMO_DIR/dc-dmx.log")"
fi
ask_udp deu "$NEW_EU" "eu, demux restarted"
ask_http dus "$CAP_US" "us, demux restarted"

step "Summary"
printf '    %-22s %-32s %-24s %s\n' "circuit" "exchange" "device saw" "result"
for r in "${SUMMARY[@]}"; do
  IFS='|' read -r a b c d <<<"$r"
  [ "$a" = FAIL ] && continue
  printf '    %-22s %-32s %-24s %s\n' "$a" "$b" "$c" "$d"
done

if [ $KEEP = 1 ]; then
  python3 - "$DEMO_DIR" "$P" "$KEEPER" "$(tarpctl ctl --json list 2>/dev/null | python3 -c 'import json,sys; print(json.dumps([json.loads(l) for l in sys.stdin if l.strip()]))')" <<'EOF' >"$DEMO_DIR/topology.json"
import json, sys
d, p, keeper, circuits = sys.argv[1:5]
ns = lambda n: p + n
print(json.dumps({
  "namespaces": {
    ns("deu"): {"role": "device", "region": "eu", "addresses": ["198.51.100.10/24"]},
    ns("dus"): {"role": "device", "region": "us", "addresses": ["198.51.100.20/24"]},
    ns("inet"): {"role": "internet router", "addresses": ["198.51.100.1/24", "192.0.2.254/24", "203.0.113.30/27", "203.0.113.62/27", "203.0.113.94/27", "203.0.113.126/27"]},
    ns("app1"): {"role": "app host", "addresses": ["198.19.0.2/24"]},
    ns("app2"): {"role": "app host", "addresses": ["198.19.0.3/24"]},
    ns("dc"): {"role": "data-center switch (bridge)"},
    ns("ctl"): {"role": "circuit keeper, operators' network (198.18.200.1/24)", "keeper": keeper, "metrics": "127.0.0.1:9400"},
    ns("pop-eu"): {"role": "forwarder: aggregator, region eu", "metrics": "198.18.200.11:9100", "ports": ["line0", "line1", "uplink"]},
    ns("pop-us"): {"role": "forwarder: aggregator, region us", "metrics": "198.18.200.12:9100", "ports": ["line0", "line1", "uplink"]},
    ns("dc-dmx"): {"role": "forwarder: demux", "metrics": "198.18.200.13:9100", "ports": ["tun", "dc"]},
    ns("dc-rmx"): {"role": "forwarder: remux", "metrics": "198.18.200.14:9100", "ports": ["dc", "out"]},
  },
  "keeper": keeper,
  "circuits": json.loads(circuits),
  "logs": d,
}, indent=2))
EOF
  step "Left running (--keep)"
  info "topology: $DEMO_DIR/topology.json; logs: $DEMO_DIR/*.log"
  info "look around:   ip netns exec ${P}deu python3 tests/apps/udp_ask.py $NEW_EU 7000 hi"
  info "               ip netns exec ${P}app1 target/release/tarpctl --keeper $KEEPER --ca $CERTS/ca.pem --cert $CERTS/app-app1.pem --key $CERTS/app-app1.key list"
  info "               ip netns exec ${P}ctl curl -s 198.18.200.13:9100/metrics | grep tarp_port   (dc-dmx; the keeper: 127.0.0.1:9400)"
  OPS="target/release/tarpctl --keeper $KEEPER --ca $CERTS/ca.pem --cert $CERTS/operator-ops.pem --key $CERTS/operator-ops.key"
  info "the fleet:     ip netns exec ${P}ctl $OPS top        (q quits)"
  info "packets:       ip netns exec ${P}ctl $OPS capture --node pop-eu --host $NEW_EU --count 10 -w /tmp/eu.pcapng   (then send; tshark -r /tmp/eu.pcapng)"
  info "tear down:     scripts/demo-down.sh"
fi

if [ $FAILS -ne 0 ]; then
  echo "demo: $FAILS step(s) did not behave as printed" >&2
  exit 1
fi
[ $CHECK = 1 ] && echo "demo: every exchange and the bounce behaved as printed"
exit 0
