#!/usr/bin/env python3
"""Injects exactly --count malformed frames on a link (AF_PACKET, as a misbehaving
router or device would put them on the wire): IPv4 UDP datagrams to DST:PORT whose IPv4
header checksum is wrong (--kind bad_checksum) or whose IPv4 header is cut short
(--kind truncated). Bounded: at most 10000 frames, paced at --rate per second."""
import argparse, socket, struct, sys, time

p = argparse.ArgumentParser()
p.add_argument("iface")
p.add_argument("dst_mac")
p.add_argument("src")
p.add_argument("dst")
p.add_argument("port", type=int)
p.add_argument("--count", type=int, default=10)
p.add_argument("--rate", type=float, default=1000)
p.add_argument("--kind", choices=["bad_checksum", "truncated"], default="bad_checksum")
a = p.parse_args()
if not (0 < a.count <= 10000 and 0 < a.rate <= 100000):
    sys.exit("inject: --count in (0, 10000], --rate in (0, 100000]")


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((a.iface, 0))
src_mac = open(f"/sys/class/net/{a.iface}/address").read().strip()
eth = bytes.fromhex(a.dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", "")) + b"\x08\x00"
payload = b"malformed"
udp = struct.pack("!HHHH", 40000, a.port, 8 + len(payload), 0) + payload
for i in range(a.count):
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0,
                     socket.inet_aton(a.src), socket.inet_aton(a.dst))
    if a.kind == "bad_checksum":
        ip = ip[:10] + struct.pack("!H", csum(ip) ^ 0x5A5A) + ip[12:]
        frame = eth + ip + udp
    else:
        frame = eth + ip[:12]  # 12 bytes of a 20-byte header
    s.send(frame)
    time.sleep(1 / a.rate)
print(a.count)
