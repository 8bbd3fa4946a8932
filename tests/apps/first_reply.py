#!/usr/bin/env python3
"""Sends a UDP datagram every --interval seconds to every address given (same port) and
prints the milliseconds until the first reply from an address not in --exclude, and
that address. Exits 1 after --timeout seconds without one."""
import argparse, select, socket, sys, time

p = argparse.ArgumentParser()
p.add_argument("port", type=int)
p.add_argument("addrs", nargs="+")
p.add_argument("--exclude", default="")
p.add_argument("--interval", type=float, default=0.005)
p.add_argument("--timeout", type=float, default=20)
p.add_argument("--sport", type=int, default=0, help="source port (a fresh one per run keeps late replies out)")
a = p.parse_args()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", a.sport))
s.setblocking(False)
start = time.monotonic()
next_send = start
while time.monotonic() - start < a.timeout:
    now = time.monotonic()
    if now >= next_send:
        for addr in a.addrs:
            if addr != a.exclude:
                try:
                    s.sendto(b"probe", (addr, a.port))
                except OSError:
                    pass
        next_send = now + a.interval
    r, _, _ = select.select([s], [], [], max(0.0, next_send - time.monotonic()))
    if r:
        try:
            data, peer = s.recvfrom(2048)
        except OSError:
            continue
        if peer[0] != a.exclude:
            print(f"{(time.monotonic() - start) * 1000:.1f} {peer[0]}")
            sys.exit(0)
sys.exit(1)
