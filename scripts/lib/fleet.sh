# shellcheck shell=bash
# The demo's fleet in network namespaces (sourced by scripts/demo.sh and tests/faults.sh):
# a miniature of the patent's FIG 1/2 steered by the circuit keeper.
#
#   deu (198.51.100.10), dus (198.51.100.20) ──br-dev── inet         devices, "the Internet"
#   inet ──eu-l0, eu-l1── [pop-eu]    inet ──us-l0, us-l1── [pop-us]  two POPs, two lines each
#   inet ──br-core── [pop-* uplink] [dc-dmx tun] [dc-rmx out]         tunnels and egress
#   [dc-dmx dc] [dc-rmx dc] ──br-dc── app1 (198.19.0.2), app2 (198.19.0.3)
#   pop-eu's tunnel to dc-dmx is WireGuard (keys made at run time, the public keys in the
#   keeper's inventory), pop-us's is VXLAN.
#   ctl: the keeper (Unix socket $TOPO_DIR/keeper.sock, reachable from every namespace;
#        TLS with client certificates made at run time in $TOPO_DIR/certs: each forwarder
#        is node/NAME, app1 and app2 are app/app1 and app/app2, ctl is operator/ops;
#        metrics on 127.0.0.1:9400)
#   ctl ──br-mgmt── [every forwarder's mgmt] 198.18.200.0/24: the operators' network, where
#        each forwarder serves its metrics (198.18.200.11-14:9100) to ctl (198.18.200.1)
#
# POP lines hold one /27 of 203.0.113.0/24 each (the router the top address):
#   eu line0 .0/27 (captures .2 .3)   eu line1 .32/27 (.34 .35)
#   us line0 .64/27 (.66 .67)         us line1 .96/27 (.98 .99)
#
# Inputs: P (namespace prefix), TOPO_DIR, TARP_BIN. Sources topo.sh for its helpers
# (ns, nsx, veth_pair, dpdk_end, fw_ns, bridge, enslave, bg, topo_down).

# shellcheck source=topo.sh
source "$(dirname "${BASH_SOURCE[0]}")/topo.sh"

NS_ALL=(deu dus inet app1 app2 dc ctl pop-eu pop-us dc-dmx dc-rmx)
FORWARDERS=(pop-eu pop-us dc-dmx dc-rmx)
KEEPER="unix:$TOPO_DIR/keeper.sock"
CERTS="$TOPO_DIR/certs"
# Each forwarder's metrics endpoint, on the management network (reached from ctl).
declare -A MADDR=([pop-eu]=198.18.200.11:9100 [pop-us]=198.18.200.12:9100 [dc-dmx]=198.18.200.13:9100 [dc-rmx]=198.18.200.14:9100)
KEEPER_METRICS=127.0.0.1:9400
# The keeper endpoint each forwarder is configured with (default: $KEEPER).
declare -A FW_KEEPER=()

# fleet_up: the namespaces, links and bridges (no processes).
fleet_up() {
  local n d i
  mkdir -p "$TOPO_DIR"
  for n in "${NS_ALL[@]}"; do
    ip netns add "$(ns "$n")"
    nsx "$n" ip link set lo up
  done
  for n in ctl "${FORWARDERS[@]}"; do fw_ns "$n"; done
  bridge ctl br-mgmt
  nsx ctl ip addr add 198.18.200.1/24 dev br-mgmt
  for n in "${FORWARDERS[@]}"; do
    veth_pair ctl "m-$n" "$n" mgmt
    enslave ctl "m-$n" br-mgmt
    nsx "$n" ip addr add "${MADDR[$n]%:*}/24" dev mgmt
  done
  nsx inet sysctl -qw net.ipv4.ip_forward=1
  nsx inet sysctl -qw net.ipv4.conf.all.rp_filter=0
  nsx inet sysctl -qw net.ipv4.conf.default.rp_filter=0
  bridge inet br-dev
  bridge inet br-core
  nsx inet ip addr add 198.51.100.1/24 dev br-dev
  nsx inet ip addr add 192.0.2.254/24 dev br-core
  i=10
  for d in deu dus; do
    veth_pair "$d" eth0 inet "$d"
    enslave inet "$d" br-dev
    nsx "$d" ip addr add "198.51.100.$i/24" dev eth0
    nsx "$d" ip route add default via 198.51.100.1
    i=$((i + 10))
  done
  fleet_line eu 0 0
  fleet_line eu 1 32
  fleet_line us 0 64
  fleet_line us 1 96
  for n in eu us; do
    veth_pair inet "c-$n" "pop-$n" "$n-uplink"
    enslave inet "c-$n" br-core
    dpdk_end "pop-$n" "$n-uplink"
  done
  veth_pair inet c-dmx dc-dmx dmx-tun
  veth_pair inet c-rmx dc-rmx rmx-out
  enslave inet c-dmx br-core
  enslave inet c-rmx br-core
  nsx inet sysctl -qw net.ipv4.conf.br-core.rp_filter=0
  bridge dc br-dc
  veth_pair dc d-dmx dc-dmx dmx-dc
  veth_pair dc d-rmx dc-rmx rmx-dc
  i=2
  for d in app1 app2; do
    veth_pair "$d" eth0 dc "d-$d"
    nsx "$d" ip addr add "198.19.0.$i/24" dev eth0
    nsx "$d" ip route add default via 198.19.0.254
    i=$((i + 1))
  done
  for d in d-dmx d-rmx d-app1 d-app2; do enslave dc "$d" br-dc; done
  dpdk_end dc-dmx dmx-tun
  dpdk_end dc-dmx dmx-dc
  dpdk_end dc-rmx rmx-out
  dpdk_end dc-rmx rmx-dc
}

# fleet_line REGION N BASE: POP line N of REGION, the /27 at 203.0.113.BASE.
fleet_line() {
  local r=$1 n=$2 base=$3
  veth_pair inet "$r-l$n" "pop-$r" "$r-line$n"
  nsx inet ip addr add "203.0.113.$((base + 30))/27" dev "$r-l$n"
  nsx inet sysctl -qw "net.ipv4.conf.$r-l$n.rp_filter=0"
  dpdk_end "pop-$r" "$r-line$n"
}

# fleet_certs: the deployment's CA and every certificate (once; tarp-keeper certs).
fleet_certs() {
  local n
  [ -f "$CERTS/ca.pem" ] && return 0
  {
    "$TARP_BIN/tarp-keeper" certs --dir "$CERTS" ca --name "tarp demo CA"
    "$TARP_BIN/tarp-keeper" certs --dir "$CERTS" keeper
    for n in "${FORWARDERS[@]}"; do "$TARP_BIN/tarp-keeper" certs --dir "$CERTS" node "$n"; done
    "$TARP_BIN/tarp-keeper" certs --dir "$CERTS" app app1
    "$TARP_BIN/tarp-keeper" certs --dir "$CERTS" app app2
    "$TARP_BIN/tarp-keeper" certs --dir "$CERTS" operator ops
  } >/dev/null
}

# ctl_as STEM: sets the array CTL to tarpctl talking to the keeper over TLS as the
# identity whose certificate is $CERTS/STEM.pem (app-app1, app-app2, operator-ops).
ctl_as() {
  CTL=("$TARP_BIN/tarpctl" --keeper "$KEEPER" --ca "$CERTS/ca.pem" --cert "$CERTS/$1.pem" --key "$CERTS/$1.key")
}

# fleet_keeper_conf [LINES]: writes $TOPO_DIR/keeper.toml (and the certificates); LINES
# are extra [keeper] settings (one per line); FLEET_HEARTBEAT_TIMEOUT_MS overrides the 3 s
# heartbeat timeout.
fleet_keeper_conf() {
  fleet_certs
  [ -s "$TOPO_DIR/pop-eu.key" ] || wg_keys pop-eu dc-dmx
  cat >"$TOPO_DIR/keeper.toml" <<EOF
[keeper]
listen = "$KEEPER"
db = "keeper.redb"
ack_timeout_ms = 5000
heartbeat_interval_ms = 500
heartbeat_timeout_ms = ${FLEET_HEARTBEAT_TIMEOUT_MS:-3000}
metrics = "$KEEPER_METRICS"
${1:-}
[keeper.tls]
cert = "certs/keeper.pem"
key = "certs/keeper.key"
client_ca = "certs/ca.pem"

[[regions]]
name = "eu"
[[regions]]
name = "us"
[[pops]]
name = "pop-eu"
region = "eu"
[[pops]]
name = "pop-us"
region = "us"

[[aggregators]]
node = "pop-eu"
pop = "pop-eu"
tunnel = { local = "192.0.2.1", remote = "192.0.2.2", demux = "dc-dmx", wireguard = true }
lines = [
  { name = "line0", captures = ["203.0.113.2", "203.0.113.3"] },
  { name = "line1", captures = ["203.0.113.34", "203.0.113.35"] },
]
[[aggregators]]
node = "pop-us"
pop = "pop-us"
tunnel = { local = "192.0.2.11", remote = "192.0.2.2", vni = 101, demux = "dc-dmx" }
lines = [
  { name = "line0", captures = ["203.0.113.66", "203.0.113.67"] },
  { name = "line1", captures = ["203.0.113.98", "203.0.113.99"] },
]

[[demuxes]]
node = "dc-dmx"
aliases = ["198.18.0.0/28"]
[[remuxes]]
node = "dc-rmx"
[[app_hosts]]
name = "app1"
address = "198.19.0.2"
remux = "dc-rmx"
[[app_hosts]]
name = "app2"
address = "198.19.0.3"
remux = "dc-rmx"

[[nodes]]
id = "pop-eu"
metrics = "${MADDR[pop-eu]}"
wireguard_key = "$(cat "$TOPO_DIR/pop-eu.pub")"
routes = [{ prefix = "192.0.2.0/24", port = "uplink" }]
[[nodes]]
id = "pop-us"
metrics = "${MADDR[pop-us]}"
routes = [{ prefix = "192.0.2.0/24", port = "uplink" }]
[[nodes]]
id = "dc-dmx"
metrics = "${MADDR[dc-dmx]}"
wireguard_key = "$(cat "$TOPO_DIR/dc-dmx.pub")"
routes = [{ prefix = "198.19.0.0/24", port = "dc" }, { prefix = "192.0.2.0/24", port = "tun" }]
[[nodes]]
id = "dc-rmx"
metrics = "${MADDR[dc-rmx]}"
routes = [{ prefix = "0.0.0.0/0", port = "out", via = "192.0.2.254" }]
EOF
}

# keeper_start: starts tarp-keeper in ctl; 1 (and a line on stderr) if it does not listen.
keeper_start() {
  bg keeper ctl "$TARP_BIN/tarp-keeper" --config "$TOPO_DIR/keeper.toml"
  for _ in $(seq 100); do [ -S "$TOPO_DIR/keeper.sock" ] && return 0; sleep 0.1; done
  echo "keeper did not start: $(tail -n 3 "$TOPO_DIR/keeper.log")" >&2
  return 1
}

# fleet_fwconf NAME PORTS...: writes $TOPO_DIR/NAME.toml; each port NAME:IFACE:ROLE:ADDRS.
fleet_fwconf() {
  local name=$1 k=0 p pname dev role addrs
  shift
  {
    # circuit_metrics: the demo's circuits are counted one by one (at the demux and remux).
    printf 'node_id = "%s"\nmetrics = "%s"\nkeeper = "%s"\ncircuit_metrics = 64\n' \
      "$name" "${MADDR[$name]}" "${FW_KEEPER[$name]:-$KEEPER}"
    printf '[keeper_tls]\nca = "certs/ca.pem"\ncert = "certs/node-%s.pem"\nkey = "certs/node-%s.key"\n' "$name" "$name"
    printf '[eal]\nargs = ["--no-huge", "-m", "256"]\n[workers]\nlcores = [1]\nidle = "backoff"\n'
    if [ -s "$TOPO_DIR/$name.key" ]; then printf '[wireguard]\nprivate_key_file = "%s.key"\n' "$name"; fi
    for p in "$@"; do
      IFS=: read -r pname dev role addrs <<<"$p"
      printf '[[ports]]\nname = "%s"\ndevice = "net_af_packet%s,iface=%s"\nrole = "%s"\naddresses = [%s]\n' \
        "$pname" "$k" "$dev" "$role" "$addrs"
      k=$((k + 1))
    done
  } >"$TOPO_DIR/$name.toml"
}

# fleet_forwarders_conf: the four forwarders' configs.
fleet_forwarders_conf() {
  fleet_fwconf pop-eu 'line0:eu-line0:aggregator:"203.0.113.1"' 'line1:eu-line1:aggregator:"203.0.113.33"' 'uplink:eu-uplink:aggregator:"192.0.2.1"'
  fleet_fwconf pop-us 'line0:us-line0:aggregator:"203.0.113.65"' 'line1:us-line1:aggregator:"203.0.113.97"' 'uplink:us-uplink:aggregator:"192.0.2.11"'
  fleet_fwconf dc-dmx 'tun:dmx-tun:demux:"192.0.2.2"' 'dc:dmx-dc:demux:"198.19.0.1"'
  fleet_fwconf dc-rmx 'dc:rmx-dc:remux:"198.19.0.254"' 'out:rmx-out:remux:"192.0.2.3"'
}

# fw_up NAME: starts forwarder NAME (in its namespace, log and pid in $TOPO_DIR).
fw_up() { bg "$1" "$1" "$TARP_BIN/tarp-forwarder" --config "$TOPO_DIR/$1.toml"; }

# fw_wait NAME [LOG-LINE]: until NAME's log has LOG-LINE (default: connected to the
# keeper) and its metrics show a table generation; 30 s at most.
fw_wait() {
  local want=${2:-connected to the keeper}
  for _ in $(seq 150); do
    if grep -q "$want" "$TOPO_DIR/$1.log" 2>/dev/null && [ -n "$(m "$1" tarp_snapshot_generation node=)" ]; then
      return 0
    fi
    sleep 0.2
  done
  return 1
}

# m NODE METRIC LABELS: one value from a forwarder's metrics endpoint (the last match),
# read from ctl over the management network as an operator would.
m() {
  { nsx ctl curl -s --max-time 2 "http://${MADDR[$1]}/metrics" || true; } |
    awk -v m="$2" -v l="$3" 'index($0, m "{") == 1 && index($0, l) { v = $NF } END { print v }'
}

# tarpctl NS ARGS...: tarpctl in namespace NS, talking to the keeper as that namespace's
# identity (app1, app2: their applications; anywhere else: the operator).
tarpctl() {
  local n=$1
  shift
  case $n in
    app1 | app2) ctl_as "app-$n" ;;
    *) ctl_as operator-ops ;;
  esac
  nsx "$n" "${CTL[@]}" "$@"
}

# circuit_field APPHOST FIELD: a field of the last active circuit of an app host (JSON).
circuit_field() {
  tarpctl ctl --json list --app-host "$1" 2>/dev/null | python3 -c '
import json, sys
items = [json.loads(l) for l in sys.stdin if l.strip()]
active = [c for c in items if c.get("state") == "active"]
print(active[-1].get(sys.argv[1], "") if active else "")' "$2"
}
