#!/usr/bin/env python3
"""Sends UDP datagrams of the given payload sizes to an echo server (udp_echo.py) and
checks that each reply is "<tag> <the same payload>", byte for byte. A datagram that is
lost is sent again (at most --tries times): the first one of a size may only teach the
kernel the path MTU ("fragmentation needed" / "packet too big"). Prints one line per
size; exits 1 if any size never came back intact. Bounded in tries and time."""
import argparse, socket, sys

p = argparse.ArgumentParser()
p.add_argument("addr")
p.add_argument("port", type=int)
p.add_argument("sizes", type=int, nargs="+")
p.add_argument("--tag", required=True)
p.add_argument("--tries", type=int, default=6)
p.add_argument("--timeout", type=float, default=1.0)
a = p.parse_args()
fam = socket.AF_INET6 if ":" in a.addr else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.connect((a.addr, a.port))
s.settimeout(a.timeout)
bad = 0
for size in a.sizes:
    payload = bytes((i * 7 + size) & 0xFF for i in range(size))
    want = a.tag.encode() + b" " + payload
    result = "lost"
    for t in range(1, a.tries + 1):
        try:
            s.send(payload)
        except OSError as e:  # EMSGSIZE once the kernel learned a smaller path MTU
            result = f"send: {e.strerror}"
            continue
        try:
            while True:
                got = s.recv(65535)
                if got == want:
                    result = f"ok ({t} tries)"
                    break
                if len(got) != len(want):
                    continue  # a late reply to an earlier size
                result = "corrupted"
                break
        except socket.timeout:
            continue
        except OSError as e:  # an ICMP error for the socket: try again
            result = f"recv: {e.strerror}"
            continue
        if result.startswith("ok") or result == "corrupted":
            break
    print(f"{size} {result}", flush=True)
    bad += not result.startswith("ok")
sys.exit(1 if bad else 0)
