#!/usr/bin/env bash
# WireGuard end to end: the aggregator-demux tunnel is WireGuard (tarp to tarp), and
# Debian's wireguard-go, on a TUN device in namespace kwg, is a peer of both forwarders:
#   A. tarp starts the handshake: a device's datagrams to capture 203.0.113.10 are sealed
#      by the aggregator, opened by wireguard-go (which holds that address), and the
#      replies come back through wireguard-go -> the aggregator -> the POP line;
#   B. wireguard-go starts the handshake: kwg's datagrams to alias 198.18.0.4 are opened
#      by the demux and delivered to app1, whose replies leave through the remux.
# Then a captured transport message is replayed, forged and misaddressed on the wire,
# and plaintext VXLAN is sent from the aggregator's address: the demux drops each one and
# counts it under its reason, and nothing reaches the app hosts.
# Usage (root): tests/wg.sh [path/to/bin/dir]   (default: target/release)
set -euo pipefail
cd "$(dirname "$0")/.."
TARP_BIN=$(realpath "${1:-target/release}")
P=${P:-tw$$}
P=${P:0:5}
TOPO_DIR=$(mktemp -d /tmp/tarp-wg.XXXXXX)
WG=1
export TARP_BIN P TOPO_DIR WG
source scripts/lib/topo.sh
APPS=$(realpath tests/apps)
source scripts/lib/checks.sh
command -v wireguard-go >/dev/null || { echo "wg: SKIPPED, wireguard-go is not installed (scripts/setup.sh installs it)"; exit 1; }

WGIF=${P}wg
UAPI=/var/run/wireguard/$WGIF.sock
# uapi REQUEST: one request to wireguard-go's UAPI socket; prints the answer.
uapi() { printf '%s\n\n' "$1" | timeout 5 socat -t2 - "UNIX-CONNECT:$UAPI"; }

echo "== topology ($P*), keys"
wg_keys agg dmx kwg
topo_up
echo "== wireguard-go in kwg"
bg wggo kwg env WG_PROCESS_FOREGROUND=1 timeout 300 wireguard-go -f "$WGIF"
for _ in $(seq 50); do [ -S "$UAPI" ] && break; sleep 0.1; done
out=$(uapi "set=1
private_key=$(cat "$TOPO_DIR/kwg.hex")
listen_port=51820
public_key=$(cat "$TOPO_DIR/agg.pubhex")
endpoint=192.0.2.1:51820
allowed_ip=198.51.100.0/24
public_key=$(cat "$TOPO_DIR/dmx.pubhex")
endpoint=192.0.2.2:51820
allowed_ip=198.18.0.0/24" || true)
if [ "$out" = "errno=0" ]; then pass "wireguard-go configured over its UAPI socket"; else fail "UAPI set: $out"; exit 1; fi
nsx kwg ip link set "$WGIF" mtu 1420 up
nsx kwg ip addr add 203.0.113.10/32 dev lo
nsx kwg ip addr add 198.18.100.10/32 dev lo
nsx kwg ip route add 198.51.100.0/24 dev "$WGIF"
nsx kwg ip route add 198.18.0.0/24 dev "$WGIF" src 198.18.100.10

echo "== forwarders (aggregator <-> demux over WireGuard)"
for r in agg dmx rmx; do fw_start "$r"; done
bg echo1 app1 timeout 300 python3 "$APPS/udp_echo.py" 198.19.0.2 4000 --tag app1
bg echo6 app1 timeout 300 python3 "$APPS/udp_echo.py" 2001:db8:19::2 4000 --tag app1v6
nsx app1 ip addr add 203.0.113.2/32 dev lo
bg echoK kwg timeout 300 python3 "$APPS/udp_echo.py" 203.0.113.10 7000 --tag kwg
head -c 20000000 /dev/urandom >"$TOPO_DIR/blob"
BLOB_SHA=$(sha256sum "$TOPO_DIR/blob" | cut -d' ' -f1)
bg blobP app1 timeout 300 python3 "$APPS/http_blob.py" 198.19.0.2 9000 "$TOPO_DIR/blob"
bg iperfP app2 timeout 300 iperf3 -s -B 198.19.0.3 -p 5201
wait_listen app1 udp 198.19.0.2:4000
wait_listen app1 udp '[2001:db8:19::2]:4000'
wait_listen kwg udp 203.0.113.10:7000
wait_listen app1 tcp 198.19.0.2:9000
wait_listen app2 tcp 198.19.0.3:5201
for r in agg dmx rmx; do
  for _ in $(seq 100); do [ -n "$(metric "$r" tarp_snapshot_generation 'node=')" ] && break; sleep 0.2; done
  [ -n "$(metric "$r" tarp_snapshot_generation 'node=')" ] || { fail "$r did not start"; exit 1; }
done
pass "three forwarders up"
# The aggregator starts its handshakes (persistent keepalive) as soon as it runs.
for _ in $(seq 100); do
  [ "$(metric agg tarp_wg_peers 'state="established"')" = 2 ] && break
  sleep 0.1
done
if [ "$(metric agg tarp_wg_peers 'state="established"')" = 2 ]; then
  pass "aggregator: sessions with both peers (the demux and wireguard-go)"
else
  fail "aggregator sessions: $(metric agg tarp_wg_peers 'state="established"') established of 2"
fi

echo "== tarp to tarp over WireGuard"
expect_reply "udp dev1->203.0.113.4:4000" dev1 203.0.113.4 4000 203.0.113.4 "app1 hello"
expect_reply "udp dev1->[2001:db8:113::4]:4000" dev1 2001:db8:113::4 4000 2001:db8:113::4 "app1v6 hello"
iperf_run "upload, port mode (203.0.113.4:5201)" dev1 203.0.113.4 5201
iperf_run "download, port mode (203.0.113.4:5201)" dev1 203.0.113.4 5201 -R
blob "port mode (203.0.113.4:9000)" dev1 http://203.0.113.4:9000/
# The inner budget is 1500 - 60: 1440 bytes pass with DF, 1441 get "too big" from the
# POP (address mode: app1 holds 203.0.113.2 and answers the pings itself).
out=$(nsx dev2 timeout 10 ping -c 1 -W 2 -M "do" -s 1413 203.0.113.2 2>&1 || true)
if echo "$out" | grep -q "mtu = 1440"; then
  pass "ping -M do -s 1413 203.0.113.2 (1441 bytes): \"$(echo "$out" | grep -o 'Frag needed.*')\""
else
  fail "ping -M do -s 1413: $out"
fi
if out=$(nsx dev2 timeout 10 ping -c 2 -W 2 -M "do" -s 1412 203.0.113.2 2>&1) && echo "$out" | grep -q "1420 bytes from"; then
  pass "ping -M do -s 1412 203.0.113.2 (1440 bytes, the inner budget): app1 answered"
else
  fail "ping -M do -s 1412: $out"
fi
sealed=$(metric agg tarp_port_forwarded_packets_total 'port="line0"')
opened=$(metric dmx tarp_port_forwarded_packets_total 'port="tun"')
echo "  (aggregator forwarded $sealed packets from line0 into WireGuard; the demux forwarded $opened it opened)"

echo "== interop A: tarp seals, wireguard-go opens, the replies come back through tarp"
expect_reply "udp dev2->203.0.113.10:7000 (wireguard-go holds it)" dev2 203.0.113.10 7000 203.0.113.10 "kwg hello"
echo "== interop B: wireguard-go seals (and starts the handshake), the tarp demux opens"
expect_reply "udp kwg->198.18.0.4:4000 through wireguard-go" kwg 198.18.0.4 4000 203.0.113.4 "app1 hello"
state=$(uapi "get=1" || true)
hs=$(echo "$state" | grep -c '^last_handshake_time_sec=[1-9]' || true)
if [ "$hs" = 2 ]; then
  pass "wireguard-go: a handshake with each tarp forwarder ($(echo "$state" | grep -E '^(rx|tx)_bytes=' | tr '\n' ' '))"
else
  fail "wireguard-go handshakes: $hs of 2; $(echo "$state" | grep -E 'handshake|bytes' | tr '\n' ' ')"
fi
# Peer states are published by the worker's WireGuard timer (every 100 ms): wait a tick.
for _ in $(seq 30); do
  [ "$(metric dmx tarp_wg_peers 'state="established"')" = 2 ] && break
  sleep 0.1
done
if [ "$(metric dmx tarp_wg_peers 'state="established"')" = 2 ]; then
  pass "demux: sessions with both peers"
else
  fail "demux sessions: $(metric dmx tarp_wg_peers 'state="established"') established of 2"
fi

echo "== tampering on the wire: only what authenticates passes"
reasons=(wg_replay wg_bad_mac wg_unknown_peer not_tunnel_peer)
drop() { metric dmx tarp_port_drops_total "port=\"tun\",role=\"demux\",reason=\"$1\""; }
bg cap inet timeout 20 python3 "$APPS/wg_tamper.py" capture c-dmx 192.0.2.1 51820 "$TOPO_DIR/msg.bin"
sleep 0.5
expect_reply "udp dev1->203.0.113.4:4000 (to capture)" dev1 203.0.113.4 4000 203.0.113.4 "app1 hello"
for _ in $(seq 100); do [ -s "$TOPO_DIR/msg.bin" ] && break; sleep 0.1; done
if [ -s "$TOPO_DIR/msg.bin" ]; then
  pass "captured a transport message on its way to the demux: $(cat "$TOPO_DIR/cap.log")"
  sleep 0.3
  declare -A before
  for r in "${reasons[@]}"; do before[$r]=$(drop "$r"); done
  fwd_before=$(metric dmx tarp_port_forwarded_packets_total 'port="tun"')
  echo1_before=$(wc -l <"$TOPO_DIR/echo1.log")
  nsx inet timeout 10 python3 "$APPS/wg_tamper.py" inject c-dmx "$TOPO_DIR/msg.bin" | sed 's/^/  /'
  sleep 0.5
  for r in "${reasons[@]}"; do
    now=$(drop "$r")
    if [ "$((now - ${before[$r]}))" = 1 ]; then
      pass "$r: ${before[$r]} -> $now"
    else
      fail "$r: ${before[$r]} -> $now, want one more"
    fi
  done
  fwd=$(metric dmx tarp_port_forwarded_packets_total 'port="tun"')
  echo1=$(wc -l <"$TOPO_DIR/echo1.log")
  if [ "$fwd" = "$fwd_before" ] && [ "$echo1" = "$echo1_before" ]; then
    pass "none of the four forwarded, app1 saw nothing new"
  else
    fail "forwarded $fwd_before -> $fwd, app1's log $echo1_before -> $echo1 lines"
  fi
  expect_reply "udp dev1->203.0.113.4:4000 (after the tampering)" dev1 203.0.113.4 4000 203.0.113.4 "app1 hello"
else
  fail "no transport message captured: $(cat "$TOPO_DIR/cap.log")"
fi

if [ $fails -eq 0 ]; then echo "wg: all passed"; else echo "wg: $fails failed"; exit 1; fi
