#!/usr/bin/env bash
# End to end: real Linux hosts in network namespaces talk through three tarp-forwarder
# processes (aggregator, demux, remux) on DPDK net_af_packet ports, with static rules.
# Usage (root): tests/e2e.sh [path/to/bin/dir]   (default: target/release)
set -euo pipefail
cd "$(dirname "$0")/.."
TARP_BIN=$(realpath "${1:-target/release}")
P=${P:-te$$}
P=${P:0:5}
TOPO_DIR=$(mktemp -d /tmp/tarp-e2e.XXXXXX)
export TARP_BIN P TOPO_DIR
source scripts/lib/topo.sh
APPS=$(realpath tests/apps)
source scripts/lib/checks.sh

echo "== topology ($P*)"
topo_up
echo "== forwarders"
for r in agg dmx rmx; do fw_start "$r"; done
# App servers, each bounded in time.
bg echo1 app1 timeout 300 python3 "$APPS/udp_echo.py" 198.19.0.2 4000 --tag app1
bg echo2 app2 timeout 300 python3 "$APPS/udp_echo.py" 198.19.0.3 5000 --tag app2
bg echo6 app1 timeout 300 python3 "$APPS/udp_echo.py" 2001:db8:19::2 4000 --tag app1v6
bg tcp2 app2 timeout 300 socat -T 5 TCP-LISTEN:5000,bind=198.19.0.3,reuseaddr,fork SYSTEM:'echo app2-tcp; cat'
mkdir -p "$TOPO_DIR/www" && echo "hello from app1 over tarp" >"$TOPO_DIR/www/index.html"
bg http1 app1 timeout 300 python3 -m http.server --bind 198.19.0.2 --directory "$TOPO_DIR/www" 8080
# Address mode: app1 carries the capture address itself.
nsx app1 ip addr add 203.0.113.2/32 dev lo
bg echoA app1 timeout 300 python3 "$APPS/udp_echo.py" 203.0.113.2 7000 --tag app1-addr
bg httpA app1 timeout 300 python3 -m http.server --bind 203.0.113.2 --directory "$TOPO_DIR/www" 8081
nsx app1 ip addr add 2001:db8:113::2/128 dev lo
bg echoA6 app1 timeout 300 python3 "$APPS/udp_echo.py" 2001:db8:113::2 7000 --tag app1-addr6
# Real traffic: iperf3 and 20 MB HTTP transfers in both modes.
head -c 20000000 /dev/urandom >"$TOPO_DIR/blob"
BLOB_SHA=$(sha256sum "$TOPO_DIR/blob" | cut -d' ' -f1)
bg blobP app1 timeout 300 python3 "$APPS/http_blob.py" 198.19.0.2 9000 "$TOPO_DIR/blob"
bg blobA app1 timeout 300 python3 "$APPS/http_blob.py" 203.0.113.2 9001 "$TOPO_DIR/blob"
bg iperfP app2 timeout 300 iperf3 -s -B 198.19.0.3 -p 5201
# A symmetric circuit (203.0.113.6): its replies return through the POP's line.
bg echoS app1 timeout 300 python3 "$APPS/udp_echo.py" 198.19.0.2 4100 --tag app1-sym
bg blobS app1 timeout 300 python3 "$APPS/http_blob.py" 198.19.0.2 9100 "$TOPO_DIR/blob"
bg iperfA app1 timeout 300 iperf3 -s -B 203.0.113.2 -p 5202
# The kernel VXLAN peer listens behind its tunnel.
bg kvx kvx timeout 300 python3 "$APPS/udp_echo.py" 198.18.0.9 7000 --tag kvx

wait_listen app1 udp 198.19.0.2:4000
wait_listen app2 udp 198.19.0.3:5000
wait_listen app1 udp '[2001:db8:19::2]:4000'
wait_listen app2 tcp 198.19.0.3:5000
wait_listen app1 tcp 198.19.0.2:8080
wait_listen app1 udp 203.0.113.2:7000
wait_listen app1 tcp 203.0.113.2:8081
wait_listen kvx udp 198.18.0.9:7000
wait_listen app1 udp '[2001:db8:113::2]:7000'
wait_listen app1 tcp 198.19.0.2:9000
wait_listen app1 tcp 203.0.113.2:9001
wait_listen app2 tcp 198.19.0.3:5201
wait_listen app1 tcp 203.0.113.2:5202
wait_listen app1 udp 198.19.0.2:4100
wait_listen app1 tcp 198.19.0.2:9100

for r in agg dmx rmx; do
  for _ in $(seq 100); do [ -n "$(metric "$r" tarp_snapshot_generation 'node=')" ] && break; sleep 0.2; done
  [ -n "$(metric "$r" tarp_snapshot_generation 'node=')" ] || { fail "$r did not start"; exit 1; }
done
pass "three forwarders up"

echo "== port mode (FIG 8)"
expect_reply "udp dev1->203.0.113.4:4000" dev1 203.0.113.4 4000 203.0.113.4 "app1 hello"
expect_reply "udp dev2->203.0.113.4:5000" dev2 203.0.113.4 5000 203.0.113.4 "app2 hello"
if body=$(nsx dev1 timeout 20 curl -s --retry 3 --retry-connrefused --max-time 5 http://203.0.113.4:8080/); then
  if [ "$body" = "hello from app1 over tarp" ]; then
    pass "tcp: curl http://203.0.113.4:8080/ -> \"$body\""
  else
    fail "curl body \"$body\""
  fi
else
  fail "tcp: curl http://203.0.113.4:8080/ failed"
fi
if out=$(printf 'ping\n' | nsx dev2 timeout 10 socat -T 3 - TCP:203.0.113.4:5000); then
  if [ "$(echo "$out" | head -1)" = "app2-tcp" ] && [ "$(echo "$out" | tail -1)" = "ping" ]; then
    pass "tcp: dev2 -> 203.0.113.4:5000 reached app2 and came back"
  else
    fail "tcp 5000 got \"$out\""
  fi
else
  fail "tcp: dev2 -> 203.0.113.4:5000 failed"
fi
# What the device saw on the wire: every reply's source is the capture address.
nsx dev1 timeout 15 tcpdump -l -n -i eth0 -c 4 'tcp and src port 8080' >"$TOPO_DIR/cap.txt" 2>/dev/null &
cap=$!
sleep 1
nsx dev1 timeout 10 curl -s --max-time 5 -o /dev/null http://203.0.113.4:8080/ || true
wait $cap || true
if [ -s "$TOPO_DIR/cap.txt" ] && ! grep -v '203.0.113.4.8080 >' "$TOPO_DIR/cap.txt" | grep -q .; then
  pass "dev1's capture: $(wc -l <"$TOPO_DIR/cap.txt") TCP segments, all from 203.0.113.4.8080"
else
  fail "dev1's capture: $(cat "$TOPO_DIR/cap.txt")"
fi

echo "== address mode (FIG 6)"
expect_reply "udp dev1->203.0.113.2:7000" dev1 203.0.113.2 7000 203.0.113.2 "app1-addr hello"
if body=$(nsx dev2 timeout 20 curl -s --retry 3 --retry-connrefused --max-time 5 http://203.0.113.2:8081/); then
  if [ "$body" = "hello from app1 over tarp" ]; then
    pass "tcp: curl http://203.0.113.2:8081/ -> \"$body\""
  else
    fail "curl body \"$body\""
  fi
else
  fail "tcp: curl http://203.0.113.2:8081/ failed"
fi

echo "== IPv6"
expect_reply "udp dev1->[2001:db8:113::4]:4000" dev1 2001:db8:113::4 4000 2001:db8:113::4 "app1v6 hello"

echo "== tunnel interop: Linux kernel VXLAN receives the aggregator's tunnel"
# The kernel peer has no way back to the device; what counts is that it got the datagram.
nsx dev2 timeout 10 python3 "$APPS/udp_ask.py" 203.0.113.9 7000 via-kernel-vxlan --tries 3 >/dev/null 2>&1 || true
if grep -q "kvx: 16 bytes from 198.51.100.20" "$TOPO_DIR/kvx.log"; then
  pass "kernel VXLAN delivered the inner datagram from 198.51.100.20 to 198.18.0.9:7000"
else
  fail "kernel VXLAN log: $(cat "$TOPO_DIR/kvx.log")"
fi

echo "== full-size packets, fragments and ICMP (every link 1500 unless said)"
# ping answers from a port-mode capture address (the aggregator, as the host the
# device talks to); full-size DF packets that must cross the tunnel (address mode: the
# app host answers pings) get "too big" with the tunnel's budget.
for dst in 203.0.113.4 2001:db8:113::4; do
  if out=$(nsx dev1 timeout 10 ping -c 2 -W 2 "$dst" 2>&1) && echo "$out" | grep -q "bytes from $dst"; then
    pass "ping $dst (port mode): answered by the POP"
  else
    fail "ping $dst: $out"
  fi
done
out=$(nsx dev2 timeout 10 ping -c 1 -W 2 -M "do" -s 1472 203.0.113.2 2>&1 || true)
if echo "$out" | grep -q "Frag needed and DF set (mtu = 1450)"; then
  pass "ping -M do -s 1472 203.0.113.2: \"$(echo "$out" | grep -o 'Frag needed.*')\""
else
  fail "ping -M do -s 1472: $out"
fi
if out=$(nsx dev2 timeout 10 ping -c 2 -W 2 -M "do" -s 1422 203.0.113.2 2>&1) && echo "$out" | grep -q "1430 bytes from"; then
  pass "ping -M do -s 1422 203.0.113.2 (1450 bytes, the inner budget): the app host answered"
else
  fail "ping -M do -s 1422: $out"
fi
out=$(nsx dev2 timeout 10 ping -6 -c 1 -W 2 -M "do" -s 1452 2001:db8:113::2 2>&1 || true)
if echo "$out" | grep -q "Packet too big: mtu=1450"; then
  pass "ping -6 -M do -s 1452 2001:db8:113::2: \"$(echo "$out" | grep -o 'Packet too big.*')\""
else
  fail "ping -6 -M do -s 1452: $out"
fi
if out=$(nsx dev1 timeout 10 ping -c 2 -W 2 -s 3000 203.0.113.2 2>&1) && echo "$out" | grep -q "3008 bytes from"; then
  pass "ping -s 3000 203.0.113.2 (address mode, fragmented both ways): answered"
else
  fail "ping -s 3000 203.0.113.2: $out"
fi
# UDP datagrams of every size, echoed intact, both modes and families.
for t in "203.0.113.4 4000 app1 port" "2001:db8:113::4 4000 app1v6 port" \
  "203.0.113.2 7000 app1-addr address" "2001:db8:113::2 7000 app1-addr6 address"; do
  # shellcheck disable=SC2086 # four words on purpose
  set -- $t
  if out=$(nsx dev1 timeout 60 python3 "$APPS/udp_sizes.py" "$1" "$2" 1472 3000 8000 --tag "$3" 2>&1); then
    pass "udp $4 mode [$1]:$2 echoed 1472/3000/8000 bytes intact: $(echo "$out" | tr '\n' ' ')"
  else
    fail "udp $4 mode [$1]:$2: $(echo "$out" | tr '\n' ' ')"
  fi
done
# A device's ICMP port unreachable about a reply reaches the app host's socket.
if out=$(nsx app1 timeout 20 python3 "$APPS/udp_refused.py" 198.19.0.2 4001 198.51.100.10 9 2>&1) && [ "$out" = refused ]; then
  pass "port mode: dev1's port unreachable came back to app1's connected socket as ECONNREFUSED"
else
  fail "ICMP port unreachable to app1: $out"
fi

echo "== TCP at full size: iperf3 and 20 MB HTTP transfers"
iperf_run "upload, port mode (203.0.113.4:5201)" dev1 203.0.113.4 5201
iperf_run "download, port mode (203.0.113.4:5201)" dev1 203.0.113.4 5201 -R
iperf_run "upload, address mode (203.0.113.2:5202)" dev2 203.0.113.2 5202
iperf_run "download, address mode (203.0.113.2:5202)" dev2 203.0.113.2 5202 -R
blob "port mode (203.0.113.4:9000)" dev1 http://203.0.113.4:9000/
blob "address mode (203.0.113.2:9001)" dev2 http://203.0.113.2:9001/
# Behind the 1400-byte link: the router's "fragmentation needed" reaches the device
# (uploads) and, through the POP and the tunnel, the app host (downloads).
blob "dev3 behind a 1400-byte link, port mode" dev3 http://203.0.113.4:9000/
blob "dev3 behind a 1400-byte link, address mode" dev3 http://203.0.113.2:9001/
echo "  (aggregator: $(metric agg tarp_port_icmp_sent_total 'port="line0"') ICMP made on line0, $(metric agg tarp_port_fragmented_packets_total 'port="line0"') packets split; demux fragment drops: $(metric dmx tarp_port_drops_total 'port="tun",role="demux",reason="fragment"'))"

echo "== symmetric return through a strict provider (BCP 38 on the POP line's network)"
# What the device side sees: which replies come in from the POP line, and which from
# the DC, counted by tcpdump on the Internet router's two ports.
cap() { # cap NAME IFACE FILTER: a bounded capture of what comes in on inet's IFACE
  bg "cap-$1" inet timeout 120 tcpdump -l -n -Q in -i "$2" "$3"
}
cap_count() { # cap_count NAME: stops the capture, prints how many packets it saw
  kill -INT "$(cat "$TOPO_DIR/cap-$1.pid")" 2>/dev/null || true
  sleep 0.5
  grep -c ' IP ' "$TOPO_DIR/cap-$1.log" || true
}
sym_replies='src host 203.0.113.6 and (udp src port 4100 or tcp src port 9100)'
asym_replies='src host 203.0.113.4 and (udp src port 4000 or tcp src port 9000)'
cap sym-line line0 "$sym_replies"
cap sym-core br-core "$sym_replies"
cap asym-line line0 "$asym_replies"
sleep 1
# The provider now drops packets from the DC whose source is one of its line's
# addresses (strict reverse-path filtering on the router's port towards the DC).
nsx inet sysctl -qw net.ipv4.conf.br-core.rp_filter=1
if nsx dev1 timeout 10 python3 "$APPS/udp_ask.py" 203.0.113.4 4000 strict --tries 3 >/dev/null 2>&1; then
  fail "asymmetric circuit through the strict provider: a reply got through"
else
  pass "asymmetric circuit (203.0.113.4) through the strict provider: UDP replies dropped, as BCP 38 wants"
fi
if nsx dev1 timeout 10 curl -s --max-time 4 -o /dev/null http://203.0.113.4:9000/; then
  fail "asymmetric TCP through the strict provider got an answer"
else
  pass "asymmetric circuit through the strict provider: TCP gets nowhere"
fi
if out=$(nsx dev1 timeout 30 python3 "$APPS/udp_sizes.py" 203.0.113.6 4100 100 1472 3000 --tag app1-sym 2>&1); then
  pass "symmetric circuit (203.0.113.6) through the strict provider: UDP echoed: $(echo "$out" | tr '\n' ' ')"
else
  fail "symmetric UDP: $(echo "$out" | tr '\n' ' ')"
fi
blob "symmetric circuit (203.0.113.6:9100) through the strict provider" dev1 http://203.0.113.6:9100/
nsx inet sysctl -qw net.ipv4.conf.br-core.rp_filter=0
n_sym_line=$(cap_count sym-line)
n_sym_core=$(cap_count sym-core)
n_asym_line=$(cap_count asym-line)
if [ "${n_sym_line:-0}" -gt 100 ] && [ "$n_sym_core" = 0 ] && [ "$n_asym_line" = 0 ]; then
  pass "at the router: $n_sym_line symmetric replies came in from the POP line, 0 from the DC; 0 asymmetric replies from the POP line"
else
  fail "at the router: symmetric replies from the line $n_sym_line, from the DC $n_sym_core; asymmetric replies from the line $n_asym_line"
fi

echo "== nothing flows back through the aggregator"
line_tx=$(metric agg tarp_port_tx_packets_total 'port="line0"')
line_icmp=$(metric agg tarp_port_icmp_sent_total 'port="line0"')
line_rx=$(metric agg tarp_port_rx_packets_total 'port="line0"')
up_fwd=$(metric agg tarp_port_tx_packets_total 'port="uplink"')
rmx_out=$(metric rmx tarp_port_tx_packets_total 'port="out"')
nocirc=$(metric rmx tarp_port_drops_total 'port="dc",role="remux",reason="no_circuit"')
line_fwd=$(metric agg tarp_port_forwarded_packets_total 'port="uplink"')
line_ctl=$(metric agg tarp_port_control_tx_packets_total 'port="line0"')
# What the line sends is the ICMP the aggregator itself made (too big, echo replies),
# the symmetric circuit's replies that came back through the tunnel, and its own ARP and
# ND (tx counts every frame the device took).
if [ "$line_tx" = $((line_icmp + line_fwd + line_ctl)) ] && [ "${up_fwd:-0}" -gt 0 ] && [ "${rmx_out:-0}" -gt 0 ]; then
  pass "aggregator forwarded $up_fwd packets into the tunnel; out of its line only its own $line_icmp ICMP, $line_ctl ARP/ND and $line_fwd symmetric replies ($line_rx received there); the remux sent $rmx_out replies out"
else
  fail "counters: line0 tx=$line_tx (icmp $line_icmp + symmetric $line_fwd + arp/nd $line_ctl) rx=$line_rx uplink tx=$up_fwd remux out=$rmx_out"
fi
# The app hosts' own chatter (MLD, router solicitations) has no circuit; our traffic did.
echo "  (remux drops for lack of a circuit, app hosts' multicast chatter: ${nocirc:-?})"

if [ $fails -ne 0 ]; then
  echo "e2e: $fails check(s) failed"
  exit 1
fi
echo "e2e: all checks passed"
