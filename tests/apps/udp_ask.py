#!/usr/bin/env python3
"""Sends one UDP datagram and prints the reply and the address it came from as
"<src_addr> <src_port> <reply>"; exits 1 if nothing answers. Bounded retries."""
import argparse, socket, sys

p = argparse.ArgumentParser()
p.add_argument("addr")
p.add_argument("port", type=int)
p.add_argument("message")
p.add_argument("--tries", type=int, default=5)
p.add_argument("--timeout", type=float, default=1.0)
p.add_argument("--sport", type=int, default=0)
a = p.parse_args()
fam = socket.AF_INET6 if ":" in a.addr else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", a.sport))
s.settimeout(a.timeout)
for _ in range(a.tries):
    s.sendto(a.message.encode(), (a.addr, a.port))
    try:
        data, peer = s.recvfrom(65535)
    except socket.timeout:
        continue
    print(peer[0], peer[1], data.decode(errors="replace"))
    sys.exit(0)
print("no reply", file=sys.stderr)
sys.exit(1)
