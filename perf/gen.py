#!/usr/bin/env python3
"""Traffic and configs for tarp's perf runs (no scapy: pcap bytes written by hand).

For one role (aggregator, demux, remux) writes:
  <out>/<role>.pcap   frames that the role's pipeline FORWARDS (port 0 -> port 1)
  <out>/<role>.toml   a tarp-forwarder config: port 0 = net_pcap replaying that file,
                      port 1 = net_null, static neighbours, N circuits of rules

Circuit i (0 <= i < N <= 1,048,576), the same on every box, from ARCHITECTURE.md's ranges:
  capture   198.18.0.1 .. 198.19.239.255   the POP's capture address (skipping the DC
            (i + 1, skipping 198.19.0.0/24) link); above 126,000 circuits IPv4's test
            2001:db8:c::/48 (i + 1)        ranges run out: IPv6 captures
  alias     198.19.240.0/20 (i % A + 1)    the demux alias it is rewritten to, A = 4,032
            2001:db8:a::/48 (i % A + 1)    (IPv6 captures get IPv6 aliases)
  app host  198.19.0.(2 + i % H)           H = min(N, 64) app hosts on the DC link
  port      10000 + i // H                 UDP port (port mode: (alias, port) and
                                           (app host, port) are unique per circuit)
Devices are 198.51.100.10..209 with source ports from 20000 on; the tunnel runs from
192.0.2.1 (aggregator uplink) to 192.0.2.2 (demux tunnel end), VNI 100.

Frames: aggregator and remux input are 60-byte Ethernet/IPv4/UDP frames (64 on the wire
with the FCS); demux input is such a frame inside VXLAN, exactly what the aggregator sends
for it (110 bytes, 114 with the FCS): 64-byte frames cannot carry VXLAN plus an inner
frame.
"""

import argparse
import bisect
import json
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
MAX_CIRCUITS = 1 << 20
V4_CIRCUITS = 126000  # capture addresses below 198.19.240.0 (198.19.0.0/24 is the DC link)
ALIASES = 4032  # 63 x 64: (alias, port) stays unique with port = 10000 + i // 64
MAX_FLOWS = 1 << 18  # net_pcap's infinite_rx keeps every frame in an mbuf of the port's pool
IMIX = ((60, 7), (572, 4), (1496, 1))  # 64/576/1500 bytes on the wire with the FCS, 7:4:1


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


def ipv6_udp(src, dst, sport, dport, payload, hlim=64):
    """IPv6 + UDP with the UDP checksum (mandatory in IPv6)."""
    ulen = 8 + len(payload)
    pseudo = src + dst + struct.pack("!IxxxB", ulen, 17)
    c = csum(pseudo + struct.pack("!HHHH", sport, dport, ulen, 0) + payload) or 0xFFFF
    udp = struct.pack("!HHHH", sport, dport, ulen, c) + payload
    return struct.pack("!IHBB", 6 << 28, ulen, 17, hlim) + src + dst + udp


def udp_frame(eth_dst, eth_src, src, dst, sport, dport, ident, size=60):
    """An Ethernet frame of `size` bytes (64 with the FCS by default: 14 + 20 + 8 + 18
    bytes of payload), IPv4 or IPv6 by the addresses (IPv6: at least 62 bytes)."""
    if ":" in dst:
        pl = b"tarp-perf"[: max(0, size - 62)].ljust(max(0, size - 62), b"\0")
        ip = ipv6_udp(ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed, sport, dport, pl)
        f = ether(eth_dst, eth_src, ip, 0x86DD)
    else:
        pl = b"tarp-perf".ljust(size - 42, b"\0")
        f = ether(eth_dst, eth_src, ipv4_udp(ip4(src), ip4(dst), sport, dport, pl, ident=ident))
    assert len(f) == max(size, 62 if ":" in dst else size), (len(f), size)
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
    """N circuits as `role` sees them: the aggregator's key is the capture address, so
    above V4_CIRCUITS its captures are IPv6; the demux and remux key port-mode circuits
    by (alias or app host, port), and share capture addresses round robin (port-mode
    circuits on one capture address differ by port)."""

    def __init__(self, n, role="aggregator"):
        self.n = n
        self.hosts = min(n, 64)
        self.v6 = role == "aggregator" and n > V4_CIRCUITS

    def capture(self, i):
        if self.v6:
            return str(ipaddress.IPv6Address("2001:db8:c::") + i + 1)
        i %= V4_CIRCUITS
        return str(ipaddress.IPv4Address("198.18.0.0") + (i + 1 if i < 65535 else i + 257))

    def alias(self, i):
        k = i % ALIASES + 1
        if self.v6:
            return str(ipaddress.IPv6Address("2001:db8:a::") + k)
        return str(ipaddress.IPv4Address("198.19.240.0") + k)

    def host(self, i):
        return i % self.hosts

    def app_host(self, i):
        return "198.19.0.%d" % (2 + self.host(i))

    def port(self, i):
        return 10000 + i // self.hosts


def device(f, v6=False):
    if v6:
        return "2001:db8:d::%x" % (10 + f % 200), 20000 + f % 40000
    return "198.51.100.%d" % (10 + f % 200), 20000 + f % 40000


def circuit_of_flow(c, flows, dist, rng):
    """The circuit of each flow. uniform: flow f -> circuit f*N//flows (every circuit
    when flows >= N, evenly spread over the table when flows < N). zipf: circuits drawn
    with probability ~ 1/rank (s = 1), ranks shuffled over the table."""
    if dist == "uniform":
        return [(f * c.n) // flows for f in range(flows)]
    cum, t = [], 0.0
    for k in range(1, c.n + 1):
        t += 1.0 / k
        cum.append(t)
    rank_to_circuit = list(range(c.n))
    rng.shuffle(rank_to_circuit)
    return [rank_to_circuit[min(bisect.bisect_left(cum, rng.random() * t), c.n - 1)] for _ in range(flows)]


def sizes_for(flows, mix, rng):
    """Frame size (bytes, without the FCS) of each flow: 64 B, or the IMIX 7:4:1."""
    if mix == "64":
        return [60] * flows
    pool = [size for size, weight in IMIX for _ in range(weight)]
    return [pool[rng.randrange(len(pool))] for _ in range(flows)]


def frames_for(role, c, flows, seed, dist="uniform", mix="64"):
    """One frame per flow, shuffled."""
    rng = random.Random(seed)
    circuits = circuit_of_flow(c, flows, dist, rng)
    sizes = sizes_for(flows, mix, rng)
    out = []
    for f in range(flows):
        i, size = circuits[f], sizes[f]
        if role == "aggregator":
            dev, dport = device(f, c.v6)
            out.append(udp_frame(AGG_LINE, DEVICE_GW, dev, c.capture(i), dport, c.port(i), f & 0xFFFF, size))
        elif role == "demux":
            # What the aggregator sends for that device packet: inner dst = alias,
            # TTL already decremented, inner MACs as the aggregator writes them; the
            # whole frame is `size` bytes (the inner one 50 fewer, at least 60).
            dev, dport = device(f)
            inner = udp_frame(INNER, AGG_UPLINK, dev, c.alias(i), dport, c.port(i), f & 0xFFFF, max(60, size - 50))
            inner = inner[:14] + _dec_ttl(inner[14:34]) + inner[34:]
            out.append(vxlan(DMX_TUN, ROUTER, TUN_LOCAL, TUN_REMOTE, 0xC000 | (f & 0x3FFF), VNI, inner, f & 0xFFFF))
        else:  # remux: the app host's reply, port mode
            dev, dport = device(f)
            out.append(udp_frame(RMX_DC, app_mac(c.host(i)), c.app_host(i), dev, c.port(i), dport, f & 0xFFFF, size))
    rng.shuffle(out)
    return out


def _dec_ttl(ip):
    ip = bytearray(ip)
    ip[8] -= 1
    ip[10:12] = b"\0\0"
    ip[10:12] = struct.pack("!H", csum(bytes(ip)))
    return bytes(ip)


def rules_for(role, c):
    """The role's rules for N circuits (the `[rules]` fields, for a JSON rules_file)."""
    n = c.n
    if role == "aggregator":
        return {
            "tunnels": [{"id": 1, "local": TUN_LOCAL, "remote": TUN_REMOTE, "vni": VNI, "inner_dst_mac": INNER}],
            "aggregator": [{"capture": c.capture(i), "alias": c.alias(i), "tunnel": 1, "line": "line0"} for i in range(n)],
            "routes": [{"prefix": "192.0.2.0/24", "port": "uplink"}],
        }
    if role == "demux":
        return {
            "tunnel_peers": [TUN_LOCAL],
            "demux": [
                {"mode": "port", "alias": c.alias(i), "protocol": "udp", "port": c.port(i), "app_host": c.app_host(i)}
                for i in range(n)
            ],
            "routes": [{"prefix": "198.19.0.0/24", "port": "dc"}],
        }
    return {
        "remux": [
            {"mode": "port", "app_host": c.app_host(i), "protocol": "udp", "port": c.port(i), "capture": c.capture(i)}
            for i in range(n)
        ],
        "routes": [{"prefix": "0.0.0.0/0", "port": "out", "via": "192.0.2.254"}],
    }


def config(role, c, pcaps, metrics, eal_args, idle, out_dev, rules_file, lcores=(1,), infinite=True,
           buffers=None, swaps=None, mtu=None):
    """A forwarder config: port 0 replays `pcaps` (one RX queue each), port 1 is `out_dev`."""
    eal = ", ".join('"%s"' % a for a in eal_args)
    head = f'''# Generated by perf/gen.py: {role}, {c.n} circuits, {len(pcaps)} RX queue(s).
node_id = "perf-{role}"
metrics = "{metrics}"
rules_file = "{rules_file}"
[eal]
args = [{eal}]
main_lcore = 0
[workers]
lcores = [{", ".join(str(l) for l in lcores)}]
idle = "{idle}"
'''
    if buffers:
        head += f"[mempool]\nbuffers = {buffers}\n"
    if swaps:
        head += f"[bench]\nswaps_per_second = {swaps}\n"
    in_dev = "net_pcap0," + ",".join(f"rx_pcap={p}" for p in pcaps) + (",infinite_rx=1" if infinite else "")
    mtu_line = f"mtu = {mtu}\n" if mtu else ""
    if role == "aggregator":
        return head + f'''[[ports]]
name = "line0"
device = "{in_dev}"
role = "aggregator"
mac = "{AGG_LINE}"
addresses = ["203.0.113.1", "2001:db8:1::1"]
[[ports]]
name = "uplink"
device = "{out_dev}"
role = "aggregator"
mac = "{AGG_UPLINK}"
addresses = ["{TUN_LOCAL}"]
neighbours = [{{ address = "{TUN_REMOTE}", mac = "{DMX_TUN}" }}]
{mtu_line}'''
    if role == "demux":
        nbs = ", ".join(f'{{ address = "198.19.0.{2 + h}", mac = "{app_mac(h)}" }}' for h in range(c.hosts))
        return head + f'''[[ports]]
name = "tun"
device = "{in_dev}"
role = "demux"
mac = "{DMX_TUN}"
addresses = ["{TUN_REMOTE}"]
{mtu_line}[[ports]]
name = "dc"
device = "{out_dev}"
role = "demux"
mac = "{DMX_DC}"
addresses = ["198.19.0.1"]
neighbours = [{nbs}]
'''
    return head + f'''[[ports]]
name = "dc"
device = "{in_dev}"
role = "remux"
mac = "{RMX_DC}"
addresses = ["198.19.0.254"]
[[ports]]
name = "out"
device = "{out_dev}"
role = "remux"
mac = "{RMX_OUT}"
addresses = ["192.0.2.3"]
neighbours = [{{ address = "192.0.2.254", mac = "{ROUTER}" }}]
'''


def write_rules(path, role, c):
    with open(path, "w") as f:
        json.dump(rules_for(role, c), f, separators=(",", ":"))


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


def check_ipv6_udp(ip, what):
    """Checks an IPv6+UDP packet's UDP checksum; returns (src, dst, hlim, sport, dport, payload)."""
    if ip[0] >> 4 != 6 or ip[6] != 17:
        raise ValueError(f"{what}: not IPv6/UDP")
    plen = struct.unpack("!H", ip[4:6])[0]
    udp = ip[40 : 40 + plen]
    pseudo = ip[8:40] + struct.pack("!IxxxB", len(udp), 17)
    if csum(pseudo + udp) != 0:
        raise ValueError(f"{what}: bad UDP checksum")
    sport, dport = struct.unpack("!HH", udp[:4])
    return (str(ipaddress.IPv6Address(ip[8:24])), str(ipaddress.IPv6Address(ip[24:40])), ip[7], sport, dport,
            udp[8:])


def check_ip_udp(ip, what):
    return check_ipv6_udp(ip, what) if ip[0] >> 4 == 6 else check_ipv4_udp(ip, what)


def verify(role, c, inp, outp):
    """Checks frame by frame that what tarp forwarded is the right rewrite of the input
    (one RX queue's file against the file of the TX queue the same worker sends on)."""
    fin, fout = read_pcap(inp), read_pcap(outp)
    if len(fin) != len(fout):
        raise ValueError(f"{len(fin)} frames in, {len(fout)} out")
    by_capture = {c.capture(i): i for i in range(c.n)}
    by_alias_port = {(c.alias(i), c.port(i)): i for i in range(c.n)}
    by_host_port = {(c.app_host(i), c.port(i)): i for i in range(c.n)}
    for k, (a, b) in enumerate(zip(fin, fout)):
        w = f"frame {k}"
        if role == "aggregator":
            s, d, ttl, sp, dp, pl = check_ip_udp(a[14:], w + " in")
            i = by_capture[d]
            if b[:12] != mac(DMX_TUN) + mac(AGG_UPLINK) or len(b) != len(a) + 50:
                raise ValueError(f"{w}: outer Ethernet or length")
            os_, od, _, _, odp, vx = check_ipv4_udp(b[14:], w + " outer")
            if (os_, od, odp) != (TUN_LOCAL, TUN_REMOTE, 4789) or vx[:8] != struct.pack("!BBHI", 8, 0, 0, VNI << 8):
                raise ValueError(f"{w}: outer headers")
            inner = vx[8:]
            if inner[:12] != mac(INNER) + mac(AGG_UPLINK):
                raise ValueError(f"{w}: inner Ethernet")
            got = check_ip_udp(inner[14:], w + " inner")
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
    ap.add_argument("--dist", choices=("uniform", "zipf"), default="uniform")
    ap.add_argument("--mix", choices=("64", "imix"), default="64")
    ap.add_argument("--out", required=True, help="directory for <role>.pcap, <role>.toml, <role>.rules.json")
    ap.add_argument("--metrics", default="127.0.0.1:19471")
    ap.add_argument("--eal-arg", action="append", default=[], help="one EAL argument (repeat)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--verify", action="store_true", help="check <out>/<role>.out.pcap against <role>.pcap")
    a = ap.parse_args()
    if not 1 <= a.circuits <= MAX_CIRCUITS:
        sys.exit(f"gen.py: --circuits must be 1..{MAX_CIRCUITS}")
    if not 1 <= a.flows <= MAX_FLOWS:
        sys.exit(f"gen.py: --flows must be 1..{MAX_FLOWS}")
    c = Circuits(a.circuits, a.role)
    pcap = f"{a.out}/{a.role}.pcap"
    if a.verify:
        try:
            n = verify(a.role, c, pcap, f"{a.out}/{a.role}.out.pcap")
        except (ValueError, KeyError, OSError, struct.error, IndexError) as e:
            sys.exit(f"{a.role}: verify FAILED: {e!r}")
        print(f"{a.role}: verified {n} forwarded frames (addresses, TTL, MACs, tunnel, checksums)")
        return
    frames = frames_for(a.role, c, a.flows, a.seed, a.dist, a.mix)
    write_pcap(pcap, frames)
    rules = f"{a.out}/{a.role}.rules.json"
    write_rules(rules, a.role, c)
    with open(f"{a.out}/{a.role}.toml", "w") as f:
        f.write(config(a.role, c, [pcap], a.metrics, a.eal_arg, "busy", "net_null0,no-rx=1", rules,
                       buffers=a.flows + 8192))
    print(f"{a.role}: {len(frames)} frames, {a.circuits} circuits -> {pcap}")


if __name__ == "__main__":
    main()
