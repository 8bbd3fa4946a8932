#!/usr/bin/env python3
"""A steady UDP stream through a circuit, for the fault tests: sends numbered datagrams
at --rate per second for --seconds (bounded), takes the echoes of udp_echo.py, and
prints one JSON object: how many were sent, echoed, lost, the longest time without an
echo ("outage_ms", from the last echo before a gap to the first after it), the sources
the echoes came from, and the echoes per second. A SIGINT ends the stream early (and
still prints). Sequence numbers make a duplicate or a stray reply visible."""
import argparse, json, signal, socket, sys, time

p = argparse.ArgumentParser()
p.add_argument("addr")
p.add_argument("port", type=int)
p.add_argument("--rate", type=float, default=200)
p.add_argument("--seconds", type=float, default=10)
p.add_argument("--tag", default="stream")
p.add_argument("--count", type=int, default=0, help="stop after this many datagrams (0: no limit)")
a = p.parse_args()
if not (0 < a.rate <= 5000 and 0 < a.seconds <= 120):
    sys.exit("udp_stream: --rate in (0, 5000], --seconds in (0, 120]")

fam = socket.AF_INET6 if ":" in a.addr else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.setblocking(False)
stop = False


def on_int(_sig, _frame):
    global stop
    stop = True


signal.signal(signal.SIGINT, on_int)
signal.signal(signal.SIGTERM, on_int)

start = time.monotonic()
end = start + a.seconds
sent = 0
echoed = {}  # seq -> monotonic time of its echo
dups = 0
stray = 0
sources = set()
interval = 1.0 / a.rate
next_send = start


def drain():
    global dups, stray
    while True:
        try:
            data, peer = s.recvfrom(2048)
        except BlockingIOError:
            return
        sources.add(f"{peer[0]}:{peer[1]}")
        words = data.decode(errors="replace").split()
        # "<echo tag> <our tag> <seq>"
        try:
            seq = int(words[-1])
        except (ValueError, IndexError):
            stray += 1
            continue
        if len(words) < 2 or words[-2] != a.tag or seq >= sent:
            stray += 1
        elif seq in echoed:
            dups += 1
        else:
            echoed[seq] = time.monotonic()


while not stop and time.monotonic() < end and not (a.count and sent >= a.count):
    now = time.monotonic()
    while next_send <= now and not stop and not (a.count and sent >= a.count):
        try:
            s.sendto(f"{a.tag} {sent}".encode(), (a.addr, a.port))
        except OSError:
            pass  # no route for a moment: counted as lost
        sent += 1
        next_send += interval
    drain()
    time.sleep(min(0.002, max(0.0, next_send - time.monotonic())))
# Echoes still on their way.
grace = time.monotonic() + 1.0
while time.monotonic() < grace:
    drain()
    time.sleep(0.01)

times = sorted(echoed.values())
edges = [start] + times + [max(time.monotonic() - 1.0, times[-1] if times else start)]
outage = max((b - a_ for a_, b in zip(edges, edges[1:])), default=0.0)
per_second = [0] * max(1, int(a.seconds + 0.999))
for t in times:
    i = int(t - start)
    if 0 <= i < len(per_second):
        per_second[i] += 1
print(json.dumps({
    "sent": sent,
    "echoed": len(echoed),
    "lost": sent - len(echoed),
    "duplicates": dups,
    "stray": stray,
    "outage_ms": round(outage * 1000),
    "sources": sorted(sources),
    "per_second": per_second,
}), flush=True)
