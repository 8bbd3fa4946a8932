#!/usr/bin/env python3
"""Traffic and configs for tarp's perf runs (no scapy: pcap bytes written by hand).

For one role (aggregator, demux, remux) writes:
  <out>/<role>.pcap   frames that the role's pipeline FORWARDS (port 0 -> port 1)
  <out>/<role>.toml   a tarp-forwarder config: port 0 = net_pcap replaying that file,
                      port 1 = net_null, static neighbours, N circuits of rules

Circuit i (0 <= i < N), the same on every box, addresses from ARCHITECTURE.md's ranges:
  capture   198.18.0.0/16 (i + 1)          the POP's capture address
  alias     198.19.128.0/17 (i + 1)        the demux alias it is rewritten to
  app host  198.19.0.(2 + i % H)           H = min(N, 64) app hosts on the DC link
  port      10000 + i // H                 UDP port (port mode: unique per app host)
Devices are 198.51.100.10..209 with source ports from 20000 on; the tunnel runs from
192.0.2.1 (aggregator uplink) to 192.0.2.2 (demux tunnel end), VNI 100.

Frames: aggregator and remux input are 60-byte Ethernet/IPv4/UDP frames (64 on the wire
with the FCS); demux input is such a frame inside VXLAN, exactly what the aggregator sends
for it (110 bytes, 114 with the FCS): 64-byte frames cannot carry VXLAN plus an inner
frame.
"""

import argparse
import ipaddress
import random
import struct
import sys

ROLES = ("aggregator", "demux", "remux")

# MACs (locally administered), those of forwarder/tests/support.
AGG_LINE = "02:00:00:00:0a:01"
AGG_UPLINK = "02:00:00:00:0a:02"
DMX_TUN = "02:00:00:00:0d:01"
DMX_DC = "02:00:00:00:0d:02"
RMX_DC = "02:00:00:00:0e:01"
RMX_OUT = "02:00:00:00:0e:02"
ROUTER = "02:00:00:00:01:fe"
DEVICE_GW = "02:00:00:00:01:fd"  # the line's router, source of device traffic
INNER = "02:00:00:00:0f:0f"

TUN_LOCAL = "192.0.2.1"
TUN_REMOTE = "192.0.2.2"
VNI = 100
MAX_CIRCUITS = 32766  # aliases fill 198.19.128.0/17
MAX_FLOWS = 8192  # net_pcap's infinite_rx keeps every frame in an mbuf of the port's pool


def mac(s):
    return bytes(int(x, 16) for x in s.split(":"))


def ip4(s):
    return ipaddress.IPv4Address(s).packed


def app_mac(h):
    return "02:00:00:00:a0:%02x" % (2 + h)


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def ipv4_udp(src, dst, sport, dport, payload, ttl=64, ident=0, udp_csum=True):
    """IPv4 + UDP with correct checksums (UDP checksum 0 if udp_csum is false)."""
    ulen = 8 + len(payload)
    if udp_csum:
        pseudo = src + dst + struct.pack("!BBH", 0, 17, ulen)
        c = csum(pseudo + struct.pack("!HHHH", sport, dport, ulen, 0) + payload)
        c = c or 0xFFFF
    else:
        c = 0
    udp = struct.pack("!HHHH", sport, dport, ulen, c) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + ulen, ident, 0, ttl, 17, 0, src, dst)
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return hdr + udp


def ether(dst, src, payload, ethertype=0x0800):
    return mac(dst) + mac(src) + struct.pack("!H", ethertype) + payload


def udp_frame(eth_dst, eth_src, src, dst, sport, dport, ident):
    """A 60-byte frame (64 with FCS): 14 + 20 + 8 + 18 bytes of payload."""
    payload = b"tarp-perf" + bytes(9)
    f = ether(eth_dst, eth_src, ipv4_udp(ip4(src), ip4(dst), sport, dport, payload, ident=ident))
    assert len(f) == 60, len(f)
    return f


def vxlan(eth_dst, eth_src, outer_src, outer_dst, sport, vni, inner, ident):
    vx = struct.pack("!BBHI", 0x08, 0, 0, vni << 8)
    ip = ipv4_udp(ip4(outer_src), ip4(outer_dst), sport, 4789, vx + inner, ident=ident, udp_csum=False)
    return ether(eth_dst, eth_src, ip)


def write_pcap(path, frames):
    with open(path, "wb") as f:
        # Classic pcap, microsecond timestamps, LINKTYPE_ETHERNET.
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i, fr in enumerate(frames):
            f.write(struct.pack("<IIII", i // 1000000, i % 1000000, len(fr), len(fr)))
            f.write(fr)


class Circuits:
    def __init__(self, n):
        self.n = n
        self.hosts = min(n, 64)

    @staticmethod
    def _in(net, k):
        return str(ipaddress.IPv4Network(net)[k])

    def capture(self, i):
        return self._in("198.18.0.0/16", i + 1)

    def alias(self, i):
        return self._in("198.19.128.0/17", i + 1)

    def host(self, i):
        return i % self.hosts

    def app_host(self, i):
        return "198.19.0.%d" % (2 + self.host(i))

    def port(self, i):
        return 10000 + i // self.hosts


def device(f):
    return "198.51.100.%d" % (10 + f % 200), 20000 + f % 40000


def frames_for(role, c, flows, seed):
    """One frame per flow; flow f belongs to circuit f*N//flows, so that the flows cover
    every circuit when flows >= N and spread evenly over the table when flows < N."""
    out = []
    for f in range(flows):
        i = (f * c.n) // flows
        dev, dport = device(f)
        if role == "aggregator":
            out.append(udp_frame(AGG_LINE, DEVICE_GW, dev, c.capture(i), dport, c.port(i), f & 0xFFFF))
        elif role == "demux":
            # What the aggregator sends for that device packet: inner dst = alias,
            # TTL already decremented, inner MACs as the aggregator writes them.
            inner = udp_frame(INNER, AGG_UPLINK, dev, c.alias(i), dport, c.port(i), f & 0xFFFF)
            inner = inner[:14] + _dec_ttl(inner[14:34]) + inner[34:]
            out.append(vxlan(DMX_TUN, ROUTER, TUN_LOCAL, TUN_REMOTE, 0xC000 | (f & 0x3FFF), VNI, inner, f & 0xFFFF))
        else:  # remux: the app host's reply, port mode
            out.append(udp_frame(RMX_DC, app_mac(c.host(i)), c.app_host(i), dev, c.port(i), dport, f & 0xFFFF))
    random.Random(seed).shuffle(out)
    return out


def _dec_ttl(ip):
    ip = bytearray(ip)
    ip[8] -= 1
    ip[10:12] = b"\0\0"
    ip[10:12] = struct.pack("!H", csum(bytes(ip)))
    return bytes(ip)


def toml_list(items):
    return "[\n" + "".join("  %s,\n" % s for s in items) + "]"


def config(role, c, pcap, metrics, eal_args, idle, null_dev, infinite=True):
    eal = ", ".join('"%s"' % a for a in eal_args)
    head = f'''# Generated by perf/gen.py: {role}, {c.n} circuits. Port 0 replays {pcap}.
node_id = "perf-{role}"
metrics = "{metrics}"
[eal]
args = [{eal}]
main_lcore = 0
[workers]
lcores = [1]
idle = "{idle}"
'''
    pcap_dev = f"net_pcap0,rx_pcap={pcap}" + (",infinite_rx=1" if infinite else "")
    n = c.n
    if role == "aggregator":
        ports = f'''[[ports]]
name = "line0"
device = "{pcap_dev}"
role = "aggregator"
mac = "{AGG_LINE}"
addresses = ["203.0.113.1"]
[[ports]]
name = "uplink"
device = "{null_dev}"
role = "aggregator"
mac = "{AGG_UPLINK}"
addresses = ["{TUN_LOCAL}"]
neighbours = [{{ address = "{TUN_REMOTE}", mac = "{DMX_TUN}" }}]
'''
        rules = [
            f'tunnels = [{{ id = 1, local = "{TUN_LOCAL}", remote = "{TUN_REMOTE}", vni = {VNI}, inner_dst_mac = "{INNER}" }}]',
            "aggregator = " + toml_list(
                f'{{ capture = "{c.capture(i)}", alias = "{c.alias(i)}", tunnel = 1, line = "line0" }}' for i in range(n)
            ),
            'routes = [{ prefix = "192.0.2.0/24", port = "uplink" }]',
        ]
    elif role == "demux":
        nbs = ", ".join(f'{{ address = "198.19.0.{2 + h}", mac = "{app_mac(h)}" }}' for h in range(c.hosts))
        ports = f'''[[ports]]
name = "tun"
device = "{pcap_dev}"
role = "demux"
mac = "{DMX_TUN}"
addresses = ["{TUN_REMOTE}"]
[[ports]]
name = "dc"
device = "{null_dev}"
role = "demux"
mac = "{DMX_DC}"
addresses = ["198.19.0.1"]
neighbours = [{nbs}]
'''
        rules = [
            f'tunnel_peers = ["{TUN_LOCAL}"]',
            "demux = " + toml_list(
                f'{{ mode = "port", alias = "{c.alias(i)}", protocol = "udp", port = {c.port(i)}, app_host = "{c.app_host(i)}" }}'
                for i in range(n)
            ),
            'routes = [{ prefix = "198.19.0.0/24", port = "dc" }]',
        ]
    else:
        ports = f'''[[ports]]
name = "dc"
device = "{pcap_dev}"
role = "remux"
mac = "{RMX_DC}"
addresses = ["198.19.0.254"]
[[ports]]
name = "out"
device = "{null_dev}"
role = "remux"
mac = "{RMX_OUT}"
addresses = ["192.0.2.3"]
neighbours = [{{ address = "192.0.2.254", mac = "{ROUTER}" }}]
'''
        rules = [
            "remux = " + toml_list(
                f'{{ mode = "port", app_host = "{c.app_host(i)}", protocol = "udp", port = {c.port(i)}, capture = "{c.capture(i)}" }}'
                for i in range(n)
            ),
            'routes = [{ prefix = "0.0.0.0/0", port = "out", via = "192.0.2.254" }]',
        ]
    return head + ports + "[rules]\n" + "\n".join(rules) + "\n"


def read_pcap(path):
    with open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack("<I", data[:4])[0]
    e = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    off, out = 24, []
    while off + 16 <= len(data):
        incl = struct.unpack(e + "I", data[off + 8 : off + 12])[0]
        out.append(data[off + 16 : off + 16 + incl])
        off += 16 + incl
    return out


def check_ipv4_udp(ip, what):
    """Checks an IPv4+UDP packet's checksums; returns (src, dst, ttl, sport, dport)."""
    hl = (ip[0] & 15) * 4
    if csum(ip[:hl]) != 0:
        raise ValueError(f"{what}: bad IPv4 header checksum")
    total = struct.unpack("!H", ip[2:4])[0]
    udp = ip[hl:total]
    if udp[6:8] != b"\0\0":
        pseudo = ip[12:20] + struct.pack("!BBH", 0, 17, len(udp))
        if csum(pseudo + udp) != 0:
            raise ValueError(f"{what}: bad UDP checksum")
    sport, dport = struct.unpack("!HH", udp[:4])
    return str(ipaddress.IPv4Address(ip[12:16])), str(ipaddress.IPv4Address(ip[16:20])), ip[8], sport, dport, udp[8:]


def verify(role, c, inp, outp):
    """Checks frame by frame that what tarp forwarded is the right rewrite of the input."""
    fin, fout = read_pcap(inp), read_pcap(outp)
    if len(fin) != len(fout):
        raise ValueError(f"{len(fin)} frames in, {len(fout)} out")
    by_capture = {c.capture(i): i for i in range(c.n)}
    by_alias_port = {(c.alias(i), c.port(i)): i for i in range(c.n)}
    by_host_port = {(c.app_host(i), c.port(i)): i for i in range(c.n)}
    for k, (a, b) in enumerate(zip(fin, fout)):
        w = f"frame {k}"
        if role == "aggregator":
            s, d, ttl, sp, dp, pl = check_ipv4_udp(a[14:], w + " in")
            i = by_capture[d]
            if b[:12] != mac(DMX_TUN) + mac(AGG_UPLINK) or len(b) != len(a) + 50:
                raise ValueError(f"{w}: outer Ethernet or length")
            os_, od, _, _, odp, vx = check_ipv4_udp(b[14:], w + " outer")
            if (os_, od, odp) != (TUN_LOCAL, TUN_REMOTE, 4789) or vx[:8] != struct.pack("!BBHI", 8, 0, 0, VNI << 8):
                raise ValueError(f"{w}: outer headers")
            inner = vx[8:]
            if inner[:12] != mac(INNER) + mac(AGG_UPLINK):
                raise ValueError(f"{w}: inner Ethernet")
            got = check_ipv4_udp(inner[14:], w + " inner")
            want = (s, c.alias(i), ttl - 1, sp, dp, pl)
        elif role == "demux":
            inner = a[50:]
            s, d, ttl, sp, dp, pl = check_ipv4_udp(inner[14:], w + " in")
            i = by_alias_port[(d, dp)]
            if b[:12] != mac(app_mac(c.host(i))) + mac(DMX_DC):
                raise ValueError(f"{w}: Ethernet")
            got = check_ipv4_udp(b[14:], w + " out")
            want = (s, c.app_host(i), ttl - 1, sp, dp, pl)
        else:
            s, d, ttl, sp, dp, pl = check_ipv4_udp(a[14:], w + " in")
            i = by_host_port[(s, sp)]
            if b[:12] != mac(ROUTER) + mac(RMX_OUT):
                raise ValueError(f"{w}: Ethernet")
            got = check_ipv4_udp(b[14:], w + " out")
            want = (c.capture(i), d, ttl - 1, sp, dp, pl)
        if got != want:
            raise ValueError(f"{w}: got {got[:5]}, want {want[:5]}")
    return len(fout)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--role", choices=ROLES, required=True)
    ap.add_argument("--circuits", type=int, default=1024)
    ap.add_argument("--flows", type=int, default=4096, help="frames in the pcap, one flow each")
    ap.add_argument("--out", required=True, help="directory for <role>.pcap and <role>.toml")
    ap.add_argument("--metrics", default="127.0.0.1:19471")
    ap.add_argument("--eal-arg", action="append", default=[], help="one EAL argument (repeat)")
    ap.add_argument("--idle", default="busy", choices=("busy", "backoff"))
    ap.add_argument("--null-dev", default="net_null0,no-rx=1")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--verify", action="store_true", help="check <out>/<role>.out.pcap against <role>.pcap")
    a = ap.parse_args()
    if not 1 <= a.circuits <= MAX_CIRCUITS:
        sys.exit(f"gen.py: --circuits must be 1..{MAX_CIRCUITS}")
    if not 1 <= a.flows <= MAX_FLOWS:
        sys.exit(f"gen.py: --flows must be 1..{MAX_FLOWS}")
    c = Circuits(a.circuits)
    pcap = f"{a.out}/{a.role}.pcap"
    if a.verify:
        try:
            n = verify(a.role, c, pcap, f"{a.out}/{a.role}.out.pcap")
        except (ValueError, KeyError, OSError, struct.error, IndexError) as e:
            sys.exit(f"{a.role}: verify FAILED: {e!r}")
        print(f"{a.role}: verified {n} forwarded frames (addresses, TTL, MACs, tunnel, checksums)")
        return
    frames = frames_for(a.role, c, a.flows, a.seed)
    write_pcap(pcap, frames)
    with open(f"{a.out}/{a.role}.toml", "w") as f:
        f.write(config(a.role, c, pcap, a.metrics, a.eal_arg, a.idle, a.null_dev))
    # The same box, replaying the pcap once and writing what it forwards to a pcap.
    with open(f"{a.out}/{a.role}.verify.toml", "w") as f:
        out = f"net_pcap1,tx_pcap={a.out}/{a.role}.out.pcap"
        f.write(config(a.role, c, pcap, a.metrics, a.eal_arg, a.idle, out, infinite=False))
    print(f"{a.role}: {len(frames)} frames of {len(frames[0])} bytes, {a.circuits} circuits -> {pcap}")


if __name__ == "__main__":
    main()
