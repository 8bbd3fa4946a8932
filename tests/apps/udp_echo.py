#!/usr/bin/env python3
"""UDP echo server for tarp's tests and demo: answers every datagram with
"<tag> <payload>" from the address it is bound to. Stops after --lifetime seconds."""
import argparse, socket, sys, time

p = argparse.ArgumentParser()
p.add_argument("addr")
p.add_argument("port", type=int)
p.add_argument("--tag", default="echo")
p.add_argument("--lifetime", type=float, default=600)
a = p.parse_args()
fam = socket.AF_INET6 if ":" in a.addr else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((a.addr, a.port))
s.settimeout(0.5)
end = time.time() + a.lifetime
while time.time() < end:
    try:
        data, peer = s.recvfrom(65535)
    except socket.timeout:
        continue
    print(f"{a.tag}: {len(data)} bytes from {peer[0]}:{peer[1]}", flush=True)
    try:
        s.sendto(a.tag.encode() + b" " + data, peer)
    except OSError as e:  # no route back (the kernel VXLAN peer in the tests)
        print(f"{a.tag}: cannot answer {peer[0]}: {e}", flush=True)
