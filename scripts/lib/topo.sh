# shellcheck shell=bash
# The tarp test topology in network namespaces (sourced by tests/e2e.sh and scripts/demo.sh).
#
#   dev1, dev2 ──br-dev── inet ──line0── [agg]                      ("the Internet": a Linux router)
#   dev3 ──(1500)── mid ──(1400)── inet                              (a narrow link on the way)
#                         inet ──br-core── [agg uplink] [dmx tun] [rmx out] kvx
#   [dmx dc] [rmx dc] ──br-dc── app1, app2                           (the data center)
#
# [..] are DPDK ports (net_af_packet on veth ends) of three tarp-forwarder processes, each
# in a namespace of its own (${P}agg, ${P}dmx, ${P}rmx) with no addresses and no routes:
# the forwarders' veth ends carry only what DPDK sends and receives. (One namespace per
# forwarder also keeps the af_packet PMDs' PACKET_FANOUT group ids, which are per
# namespace, from colliding.) Every address is from the test
# ranges of ARCHITECTURE.md. Everything is removed by topo_down, by namespace name.
#
# Inputs: P (namespace prefix, short), TOPO_DIR (configs, logs, pids), TARP_BIN (dir with
# tarp-forwarder). WG=1 (tests/wg.sh): the aggregator-demux tunnel is WireGuard, and a
# namespace kwg (192.0.2.10 on br-core) runs Debian's wireguard-go, a peer of both; the
# keys are made by wg_keys.

: "${P:=tt}"
: "${TOPO_DIR:=/tmp/tarp-topo}"

NS_ALL=(dev1 dev2 dev3 mid inet app1 app2 dc kvx agg dmx rmx)
[ "${WG:-0}" = 1 ] && NS_ALL+=(kwg)

ns() { echo "${P}$1"; }
nsx() { local n=$1; shift; ip netns exec "$(ns "$n")" "$@"; }

# veth_pair NS_A IF_A NS_B IF_B: a veth pair with its ends in two namespaces.
veth_pair() {
  local a="${P}v$RANDOM" b="${P}w$RANDOM"
  ip link add "$a" type veth peer name "$b"
  ip link set "$a" netns "$(ns "$1")" name "$2"
  ip link set "$b" netns "$(ns "$3")" name "$4"
  nsx "$1" ip link set "$2" up
  nsx "$3" ip link set "$4" up
  # Checksums must be complete on the wire (DPDK reads frames as they are), and every
  # receiver must verify them (a veth otherwise marks frames as already checked).
  nsx "$1" ethtool -K "$2" tx off rx off >/dev/null 2>&1 || true
  nsx "$3" ethtool -K "$4" tx off rx off >/dev/null 2>&1 || true
}

# dpdk_end NS IF: a DPDK end: no addresses, no IPv6, no forwarding, no ARP answers from
# the kernel.
dpdk_end() {
  nsx "$1" sysctl -qw "net.ipv6.conf.$2.disable_ipv6=1"
  nsx "$1" sysctl -qw "net.ipv4.conf.$2.forwarding=0"
  nsx "$1" sysctl -qw "net.ipv4.conf.$2.arp_ignore=8"
}

# fw_ns NS: a namespace for a forwarder (or the keeper): it routes nothing.
fw_ns() {
  nsx "$1" sysctl -qw net.ipv4.ip_forward=0
  nsx "$1" sysctl -qw net.ipv6.conf.all.forwarding=0
}

bridge() { # bridge NS NAME
  nsx "$1" ip link add "$2" type bridge
  nsx "$1" ip link set "$2" up
  # A switch, not a firewall: where br_netfilter is loaded, bridged frames would go
  # through the host's netfilter rules.
  local k
  for k in iptables ip6tables arptables; do
    nsx "$1" sysctl -qw "net.bridge.bridge-nf-call-$k=0" 2>/dev/null || true
  done
}

enslave() { nsx "$1" ip link set "$2" master "$3"; }

topo_up() {
  mkdir -p "$TOPO_DIR"
  for n in "${NS_ALL[@]}"; do
    ip netns add "$(ns "$n")"
    nsx "$n" ip link set lo up
  done
  for n in agg dmx rmx; do fw_ns "$n"; done

  # The Internet router.
  nsx inet sysctl -qw net.ipv4.ip_forward=1
  nsx inet sysctl -qw net.ipv6.conf.all.forwarding=1
  # Replies come back from the data center, not from the line the request left on:
  # the asymmetric return path is the point, so no reverse-path filter.
  nsx inet sysctl -qw net.ipv4.conf.all.rp_filter=0
  nsx inet sysctl -qw net.ipv4.conf.default.rp_filter=0
  bridge inet br-dev
  bridge inet br-core
  nsx inet ip addr add 198.51.100.1/24 dev br-dev
  nsx inet ip addr add 2001:db8:51::1/64 dev br-dev nodad
  nsx inet ip addr add 192.0.2.254/24 dev br-core
  nsx inet ip addr add 2001:db8:ffff::fe/64 dev br-core nodad

  # Devices.
  local d i=10
  for d in dev1 dev2; do
    veth_pair "$d" eth0 inet "$d"
    enslave inet "$d" br-dev
    nsx "$d" ip addr add "198.51.100.$i/24" dev eth0
    nsx "$d" ip addr add "2001:db8:51::$i/64" dev eth0 nodad
    nsx "$d" ip route add default via 198.51.100.1
    nsx "$d" ip -6 route add default via 2001:db8:51::1
    i=$((i + 10))
  done

  # A device behind a 1400-byte link in the middle of "the Internet": path MTU
  # discovery has to work both ways (towards the POP, and from the DC to the device).
  veth_pair dev3 eth0 mid d3
  veth_pair mid wan inet mid
  nsx mid ip link set wan mtu 1400
  nsx inet ip link set mid mtu 1400
  nsx mid sysctl -qw net.ipv4.ip_forward=1
  nsx mid sysctl -qw net.ipv4.conf.all.rp_filter=0
  nsx dev3 ip addr add 198.51.100.130/26 dev eth0
  nsx dev3 ip route add default via 198.51.100.129
  nsx mid ip addr add 198.51.100.129/26 dev d3
  nsx mid ip addr add 198.51.100.202/30 dev wan
  nsx mid ip route add default via 198.51.100.201
  nsx inet ip addr add 198.51.100.201/30 dev mid
  nsx inet ip route add 198.51.100.128/26 via 198.51.100.202
  nsx inet sysctl -qw net.ipv4.conf.mid.rp_filter=0

  # The POP line: the aggregator's line0.
  veth_pair inet line0 agg agg-line0
  nsx inet ip addr add 203.0.113.254/24 dev line0
  nsx inet ip addr add 2001:db8:113::fe/64 dev line0 nodad
  nsx inet sysctl -qw net.ipv4.conf.line0.rp_filter=0

  # The core: aggregator uplink, demux tunnel end, remux egress, a kernel VXLAN peer.
  veth_pair inet c-agg agg agg-uplink
  veth_pair inet c-dmx dmx dmx-tun
  veth_pair inet c-rmx rmx rmx-out
  veth_pair inet c-kvx kvx eth0
  for i in c-agg c-dmx c-rmx c-kvx; do enslave inet "$i" br-core; done
  nsx inet sysctl -qw net.ipv4.conf.br-core.rp_filter=0
  nsx kvx ip addr add 192.0.2.9/24 dev eth0
  # The kernel's own VXLAN: receives what the aggregator tunnels to 192.0.2.9.
  nsx kvx ip link add vxlan0 type vxlan id 100 local 192.0.2.9 remote 192.0.2.1 dstport 4789 dev eth0
  nsx kvx ip link set vxlan0 address 02:00:00:00:09:09
  nsx kvx ip addr add 198.18.0.9/24 dev vxlan0
  nsx kvx ip link set vxlan0 up
  nsx kvx ethtool -K vxlan0 tx off >/dev/null 2>&1 || true

  if [ "${WG:-0}" = 1 ]; then
    # wireguard-go's host: a peer of the aggregator (it holds capture 203.0.113.10) and
    # of the demux (it reaches the aliases 198.18.0.0/24 from 198.18.100.10).
    veth_pair inet c-kwg kwg eth0
    enslave inet c-kwg br-core
    nsx kwg ip addr add 192.0.2.10/24 dev eth0
    nsx kwg ip route add default via 192.0.2.254
    nsx kwg sysctl -qw net.ipv4.conf.all.rp_filter=0
    nsx inet ip route add 198.18.100.0/24 via 192.0.2.10
  fi

  # The data center.
  bridge dc br-dc
  veth_pair dc d-dmx dmx dmx-dc
  veth_pair dc d-rmx rmx rmx-dc
  i=2
  for d in app1 app2; do
    veth_pair "$d" eth0 dc "d-$d"
    nsx "$d" ip addr add "198.19.0.$i/24" dev eth0
    nsx "$d" ip addr add "2001:db8:19::$i/64" dev eth0 nodad
    nsx "$d" ip route add default via 198.19.0.254
    nsx "$d" ip -6 route add default via 2001:db8:19::fe
    i=$((i + 1))
  done
  for i in d-dmx d-rmx d-app1 d-app2; do enslave dc "$i" br-dc; done

  for i in agg-line0 agg-uplink; do dpdk_end agg "$i"; done
  for i in dmx-tun dmx-dc; do dpdk_end dmx "$i"; done
  for i in rmx-out rmx-dc; do dpdk_end rmx "$i"; done
}

# fw_config ROLE: writes $TOPO_DIR/ROLE.toml (static rules; KEEPER=url adds the keeper).
fw_config() {
  local role=$1 f="$TOPO_DIR/$1.toml" keeper=""
  [ -n "${KEEPER:-}" ] && keeper="keeper = \"$KEEPER\""
  local eal='args = ["--no-huge", "--no-shconf", "-m", "256"]'
  # net_af_packet joins its sockets with PACKET_FANOUT_FLAG_DEFRAG: the kernel hands it
  # IPv4 datagrams reassembled from their fragments, larger than the link MTU (a real
  # NIC never does). Ports that receive fragments (the POP line from devices, the
  # remux from app hosts) get rings and buffers that hold such datagrams, which tarp
  # then splits again to fit the tunnel or the egress link.
  local defrag_room=$'[mempool]\ndata_room = 12288'
  local defrag_ring='framesz=12288,blocksz=12288'
  case $role in
  agg) cat >"$f" <<EOF
node_id = "pop1-agg"
metrics = "127.0.0.1:9301"
$keeper
[eal]
$eal
[workers]
lcores = [1]
idle = "backoff"
$defrag_room
[[ports]]
name = "line0"
device = "net_af_packet0,iface=agg-line0,$defrag_ring"
role = "aggregator"
addresses = ["203.0.113.1", "2001:db8:113::1"]
[[ports]]
name = "uplink"
device = "net_af_packet1,iface=agg-uplink"
role = "aggregator"
addresses = ["192.0.2.1"]
EOF
    local t1='{ id = 1, local = "192.0.2.1", remote = "192.0.2.2", vni = 100 },' t3='' c3=''
    if [ "${WG:-0}" = 1 ]; then
      printf '[wireguard]\nprivate_key_file = "agg.key"\n' >>"$f"
      t1="{ id = 1, local = \"192.0.2.1\", remote = \"192.0.2.2\", wireguard = { public_key = \"$(cat "$TOPO_DIR/dmx.pub")\", keepalive = 25 } },"
      t3="{ id = 3, local = \"192.0.2.1\", remote = \"192.0.2.10\", wireguard = { public_key = \"$(cat "$TOPO_DIR/kwg.pub")\", keepalive = 25 } },"
      c3='{ capture = "203.0.113.10", alias = "203.0.113.10", tunnel = 3, line = "line0", return_via = "203.0.113.254" },'
    fi
    [ -z "${KEEPER:-}" ] && cat >>"$f" <<EOF
[rules]
tunnels = [
  $t1
  { id = 2, local = "192.0.2.1", remote = "192.0.2.9", vni = 100, inner_dst_mac = "02:00:00:00:09:09" },
  $t3
]
aggregator = [
  { capture = "203.0.113.2", alias = "198.18.0.2", tunnel = 1, line = "line0" },
  { capture = "2001:db8:113::2", alias = "2001:db8:18::2", tunnel = 1, line = "line0" },
  { capture = "203.0.113.4", alias = "198.18.0.4", tunnel = 1, line = "line0", answer_ping = true },
  { capture = "2001:db8:113::4", alias = "2001:db8:18::4", tunnel = 1, line = "line0", answer_ping = true },
  { capture = "203.0.113.9", alias = "198.18.0.9", tunnel = 2, line = "line0" },
  { capture = "203.0.113.6", alias = "198.18.0.6", tunnel = 1, line = "line0", return_via = "203.0.113.254" },
  $c3
]
# Symmetric return: replies of 203.0.113.6 come back from the remux through a tunnel.
tunnel_peers = [{ address = "192.0.2.3", vni = 100 }]
routes = [{ prefix = "192.0.2.0/24", port = "uplink" }]
EOF
    ;;
  dmx) cat >"$f" <<EOF
node_id = "dc-dmx"
metrics = "127.0.0.1:9302"
$keeper
[eal]
$eal
[workers]
lcores = [1]
idle = "backoff"
[[ports]]
name = "tun"
device = "net_af_packet0,iface=dmx-tun"
role = "demux"
addresses = ["192.0.2.2"]
[[ports]]
name = "dc"
device = "net_af_packet1,iface=dmx-dc"
role = "demux"
addresses = ["198.19.0.1", "2001:db8:19::1"]
EOF
    local peers='"192.0.2.1", "192.0.2.9"' tunnels='' route=''
    if [ "${WG:-0}" = 1 ]; then
      # The aggregator is a WireGuard peer, not a VXLAN one: plaintext from it is refused.
      printf '[wireguard]\nprivate_key_file = "dmx.key"\n' >>"$f"
      peers='"192.0.2.9"'
      tunnels="tunnels = [
  { id = 2000, local = \"192.0.2.2\", remote = \"192.0.2.1\", wireguard = { public_key = \"$(cat "$TOPO_DIR/agg.pub")\" } },
  { id = 2001, local = \"192.0.2.2\", remote = \"192.0.2.10\", wireguard = { public_key = \"$(cat "$TOPO_DIR/kwg.pub")\" } },
]"
      route='{ prefix = "192.0.2.0/24", port = "tun" },'
    fi
    [ -z "${KEEPER:-}" ] && cat >>"$f" <<EOF
[rules]
$tunnels
tunnel_peers = [$peers]
demux = [
  { mode = "address", alias = "198.18.0.2", capture = "203.0.113.2", app_host = "198.19.0.2" },
  { mode = "address", alias = "2001:db8:18::2", capture = "2001:db8:113::2", app_host = "2001:db8:19::2" },
  { mode = "port", alias = "198.18.0.4", protocol = "udp", port = 4000, app_host = "198.19.0.2" },
  { mode = "port", alias = "198.18.0.4", protocol = "udp", port = 4001, app_host = "198.19.0.2" },
  { mode = "port", alias = "198.18.0.4", protocol = "tcp", port = 9000, app_host = "198.19.0.2" },
  { mode = "port", alias = "198.18.0.4", protocol = "tcp", port = 5201, app_host = "198.19.0.3" },
  { mode = "port", alias = "198.18.0.6", protocol = "udp", port = 4100, app_host = "198.19.0.2" },
  { mode = "port", alias = "198.18.0.6", protocol = "tcp", port = 9100, app_host = "198.19.0.2" },
  { mode = "port", alias = "198.18.0.4", protocol = "udp", port = 5000, app_host = "198.19.0.3" },
  { mode = "port", alias = "198.18.0.4", protocol = "tcp", port = 8080, app_host = "198.19.0.2" },
  { mode = "port", alias = "198.18.0.4", protocol = "tcp", port = 5000, app_host = "198.19.0.3" },
  { mode = "port", alias = "2001:db8:18::4", protocol = "udp", port = 4000, app_host = "2001:db8:19::2" },
]
routes = [
  { prefix = "198.19.0.0/24", port = "dc" },
  { prefix = "2001:db8:19::/64", port = "dc" },
  $route
]
EOF
    ;;
  rmx) cat >"$f" <<EOF
node_id = "dc-rmx"
metrics = "127.0.0.1:9303"
$keeper
[eal]
$eal
[workers]
lcores = [1]
idle = "backoff"
$defrag_room
[[ports]]
name = "dc"
device = "net_af_packet0,iface=rmx-dc,$defrag_ring"
role = "remux"
addresses = ["198.19.0.254", "2001:db8:19::fe"]
[[ports]]
name = "out"
device = "net_af_packet1,iface=rmx-out"
role = "remux"
addresses = ["192.0.2.3", "2001:db8:ffff::3"]
EOF
    [ -z "${KEEPER:-}" ] && cat >>"$f" <<'EOF'
[rules]
remux = [
  { mode = "address", capture = "203.0.113.2" },
  { mode = "address", capture = "2001:db8:113::2" },
  { mode = "port", app_host = "198.19.0.2", protocol = "udp", port = 4000, capture = "203.0.113.4" },
  { mode = "port", app_host = "198.19.0.2", protocol = "udp", port = 4001, capture = "203.0.113.4" },
  { mode = "port", app_host = "198.19.0.2", protocol = "tcp", port = 9000, capture = "203.0.113.4" },
  { mode = "port", app_host = "198.19.0.3", protocol = "tcp", port = 5201, capture = "203.0.113.4" },
  { mode = "port", app_host = "198.19.0.2", protocol = "udp", port = 4100, capture = "203.0.113.6" },
  { mode = "port", app_host = "198.19.0.2", protocol = "tcp", port = 9100, capture = "203.0.113.6" },
  { mode = "port", app_host = "198.19.0.3", protocol = "udp", port = 5000, capture = "203.0.113.4" },
  { mode = "port", app_host = "198.19.0.2", protocol = "tcp", port = 8080, capture = "203.0.113.4" },
  { mode = "port", app_host = "198.19.0.3", protocol = "tcp", port = 5000, capture = "203.0.113.4" },
  { mode = "port", app_host = "2001:db8:19::2", protocol = "udp", port = 4000, capture = "2001:db8:113::4" },
]
routes = [
  { prefix = "0.0.0.0/0", port = "out", via = "192.0.2.254" },
  { prefix = "::/0", port = "out", via = "2001:db8:ffff::fe" },
  { prefix = "192.0.2.0/24", port = "out" },
]
# Symmetric return for 203.0.113.6: back to the POP's aggregator, out of its line.
tunnels = [{ id = 1, local = "192.0.2.3", remote = "192.0.2.1", vni = 100 }]
return_tunnels = [{ capture = "203.0.113.6", tunnel = 1 }]
EOF
    ;;
  esac
}

# wg_keys NAME...: a WireGuard key pair per name, made with openssl (X25519):
# $TOPO_DIR/NAME.key (private, base64, mode 0600), NAME.pub (base64), NAME.hex (the
# private key in hex) and NAME.pubhex (hex, as wireguard-go's UAPI takes keys).
wg_keys() {
  local n pem
  for n in "$@"; do
    pem="$TOPO_DIR/$n.pem"
    (umask 077 && openssl genpkey -algorithm X25519 -out "$pem")
    (umask 077 && openssl pkey -in "$pem" -outform DER | tail -c 32 | base64 >"$TOPO_DIR/$n.key")
    openssl pkey -in "$pem" -pubout -outform DER | tail -c 32 | base64 >"$TOPO_DIR/$n.pub"
    base64 -d <"$TOPO_DIR/$n.key" | od -An -tx1 | tr -d ' \n' >"$TOPO_DIR/$n.hex"
    base64 -d <"$TOPO_DIR/$n.pub" | od -An -tx1 | tr -d ' \n' >"$TOPO_DIR/$n.pubhex"
    rm -f "$pem"
  done
}

# fw_start ROLE: starts tarp-forwarder in ${P}ROLE, pid in $TOPO_DIR/ROLE.pid.
fw_start() {
  local role=$1
  fw_config "$role"
  ip netns exec "$(ns "$role")" "$TARP_BIN/tarp-forwarder" --config "$TOPO_DIR/$role.toml" \
    >"$TOPO_DIR/$role.log" 2>&1 &
  echo $! >"$TOPO_DIR/$role.pid"
  disown $!
}

# bg NAME NS CMD...: a background process in a namespace, pid in $TOPO_DIR/NAME.pid.
# (`ip netns exec` execs the command, so the recorded pid is the command's own.)
bg() {
  local name=$1 n=$2
  shift 2
  ip netns exec "$(ns "$n")" "$@" >"$TOPO_DIR/$name.log" 2>&1 &
  echo $! >"$TOPO_DIR/$name.pid"
  disown $! # stopped by pid from topo_down; no job-control chatter when it is
}

# metric ROLE NAME LABELS: one value from a forwarder's metrics endpoint.
metric() {
  local port
  case $1 in agg) port=9301 ;; dmx) port=9302 ;; rmx) port=9303 ;; esac
  { nsx "$1" curl -s --max-time 2 "http://127.0.0.1:$port/metrics" || true; } |
    awk -v m="$2" -v l="$3" 'index($0, m "{") == 1 && index($0, l) { v = $NF } END { print v }'
}

# Stops every process we started (by pid), then removes every namespace we made.
topo_down() {
  local f pid
  for f in "$TOPO_DIR"/*.pid; do
    [ -e "$f" ] || continue
    pid=$(cat "$f")
    kill -TERM "$pid" 2>/dev/null || true
  done
  for f in "$TOPO_DIR"/*.pid; do
    [ -e "$f" ] || continue
    pid=$(cat "$f")
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$f"
  done
  for n in "${NS_ALL[@]}"; do
    ip netns del "$(ns "$n")" 2>/dev/null || true
  done
}
