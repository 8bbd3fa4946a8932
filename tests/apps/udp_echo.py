#!/usr/bin/env python3
"""UDP echo server for tarp's tests and demo: answers every datagram with
"<tag> <payload>". Bound to a wildcard address it answers from the address each
datagram was sent to (IP_PKTINFO), so an address-mode application keeps answering from
its capture address when the keeper moves it to another one. Stops after --lifetime s."""
import argparse, socket, struct, time

IP_PKTINFO = 8  # Linux

p = argparse.ArgumentParser()
p.add_argument("addr")
p.add_argument("port", type=int)
p.add_argument("--tag", default="echo")
p.add_argument("--lifetime", type=float, default=600)
a = p.parse_args()
fam = socket.AF_INET6 if ":" in a.addr else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
wildcard = a.addr in ("0.0.0.0", "")
if wildcard:
    s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
s.bind((a.addr, a.port))
s.settimeout(0.5)
end = time.time() + a.lifetime
while time.time() < end:
    try:
        data, anc, _flags, peer = s.recvmsg(65535, socket.CMSG_SPACE(12))
    except socket.timeout:
        continue
    local = a.addr
    cmsg = []
    for level, kind, value in anc:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(value) >= 12:
            local = socket.inet_ntoa(value[8:12])
            cmsg = [(socket.IPPROTO_IP, IP_PKTINFO, struct.pack("=I4s4s", 0, value[8:12], b"\0" * 4))]
    print(f"{a.tag}: {len(data)} bytes from {peer[0]}:{peer[1]} to {local}", flush=True)
    try:
        s.sendmsg([a.tag.encode() + b" " + data], cmsg, 0, peer)
    except OSError as e:  # no route back (the kernel VXLAN peer in the tests)
        print(f"{a.tag}: cannot answer {peer[0]}: {e}", flush=True)
