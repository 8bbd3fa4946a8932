#!/usr/bin/env python3
"""From a UDP socket bound to BIND:BPORT and connected to DST:DPORT (where nothing
listens), sends a datagram and waits for the kernel to report the ICMP port
unreachable that came back as ECONNREFUSED. Prints "refused" and exits 0, or exits 1
after --tries attempts."""
import argparse, socket, sys

p = argparse.ArgumentParser()
p.add_argument("bind")
p.add_argument("bport", type=int)
p.add_argument("dst")
p.add_argument("dport", type=int)
p.add_argument("--tries", type=int, default=5)
a = p.parse_args()
fam = socket.AF_INET6 if ":" in a.dst else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.bind((a.bind, a.bport))
s.connect((a.dst, a.dport))
s.settimeout(1.0)
for _ in range(a.tries):
    try:
        s.send(b"anyone there?")
        s.recv(100)
        print("answered", flush=True)
        sys.exit(1)
    except ConnectionRefusedError:
        print("refused", flush=True)
        sys.exit(0)
    except socket.timeout:
        continue
print("no error came back", flush=True)
sys.exit(1)
