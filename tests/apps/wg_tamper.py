#!/usr/bin/env python3
"""Tampering with a WireGuard tunnel from the wire, one packet at a time.

  wg_tamper.py capture IFACE SRC PORT FILE [--timeout S]
      waits (bounded) for one WireGuard transport message with a payload (not a
      keepalive) from SRC to UDP PORT seen on IFACE, and saves the frame to FILE;
  wg_tamper.py inject IFACE FILE
      sends on IFACE, once each: the frame as it was (a replay); the frame with its
      counter moved 2^20 ahead and its tag's last byte flipped (a forgery that passes the
      replay window's quick check); the frame with an unknown receiver index; and a
      plaintext VXLAN frame from the same outer source (the tunnel peer's address).

Frames are Ethernet + IPv4 + UDP with a zero UDP checksum (as the sender wrote them);
every change keeps the headers valid, so only WireGuard's checks can refuse them."""
import argparse, socket, struct, sys, time

ETH_P_ALL = 0x0003


def ip_checksum(h):
    s = sum(struct.unpack("!%dH" % (len(h) // 2), h))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def ipv4_udp(src, dst, sport, dport, payload, ttl=64):
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, ttl, 17, 0,
                    socket.inet_aton(src), socket.inet_aton(dst))
    h = h[:10] + struct.pack("!H", ip_checksum(h)) + h[12:]
    return h + udp


def capture(a):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((a.iface, 0))
    s.settimeout(0.5)
    want_src = socket.inet_aton(a.src)
    deadline = time.time() + a.timeout
    while time.time() < deadline:
        try:
            f = s.recv(65535)
        except socket.timeout:
            continue
        if len(f) < 42 + 32 + 20 or f[12:14] != b"\x08\x00" or f[14] != 0x45 or f[23] != 17:
            continue
        if f[26:30] != want_src or struct.unpack("!H", f[36:38])[0] != a.port:
            continue
        if f[42:46] != b"\x04\x00\x00\x00":
            continue
        open(a.file, "wb").write(f)
        print("captured %d bytes, receiver %#x, counter %d" % (
            len(f), struct.unpack("<I", f[46:50])[0], struct.unpack("<Q", f[50:58])[0]))
        return 0
    print("no WireGuard transport message from %s to port %d" % (a.src, a.port), file=sys.stderr)
    return 1


def inject(a):
    f = open(a.file, "rb").read()
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((a.iface, 0))
    replay = f
    forged = bytearray(f)
    counter = struct.unpack("<Q", f[50:58])[0] + (1 << 20)
    forged[50:58] = struct.pack("<Q", counter)
    forged[-1] ^= 0x01
    unknown = bytearray(f)
    unknown[46:50] = struct.pack("<I", 0xFFFFFF00)
    # Plaintext VXLAN from the peer's address: inner Ethernet + a UDP datagram to an
    # alias, as a spoofer on the path would send it.
    src, dst = socket.inet_ntoa(f[26:30]), socket.inet_ntoa(f[30:34])
    inner = (b"\x02\x74\x61\x72\x70\x00" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"
             + ipv4_udp("198.51.100.10", "198.18.0.4", 5555, 4000, b"spoofed"))
    vx = struct.pack("!II", 0x08000000, 100 << 8) + inner
    plain = f[0:14] + ipv4_udp(src, dst, 49152, 4789, vx)
    for name, frame in (("replay", replay), ("forged", bytes(forged)),
                        ("unknown receiver", bytes(unknown)), ("plaintext VXLAN", plain)):
        s.send(frame)
        print("sent %s (%d bytes)" % (name, len(frame)))
        time.sleep(0.05)
    return 0


p = argparse.ArgumentParser()
sub = p.add_subparsers(dest="cmd", required=True)
c = sub.add_parser("capture")
c.add_argument("iface")
c.add_argument("src")
c.add_argument("port", type=int)
c.add_argument("file")
c.add_argument("--timeout", type=float, default=10)
i = sub.add_parser("inject")
i.add_argument("iface")
i.add_argument("file")
a = p.parse_args()
sys.exit(capture(a) if a.cmd == "capture" else inject(a))
