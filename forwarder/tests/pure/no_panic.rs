//! Arbitrary bytes through every pipeline and every packet view: nothing panics, and
//! every verdict is consistent with the packet it was given.
//!
//! A bounded, seeded run that CI executes (about 200 000 packets); `forwarder/fuzz` holds
//! the open-ended cargo-fuzz targets. `TARP_NO_PANIC_PACKETS=n` changes the count for a
//! longer local run. Inputs are random byte strings, random bytes behind a plausible
//! Ethernet header, and valid frames (the fixtures' traffic, VXLAN for the demux) with
//! bytes changed, inserted, removed, cut off or appended.

use std::net::IpAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::support::*;
use etherparse::{
    EtherType, Ethernet2Header, Ipv4Header, Ipv6Header, PacketBuilder, SingleVlanHeader,
};
use forwarder::packet::arp::{self, ArpPacket};
use forwarder::packet::icmp::IcmpPacket;
use forwarder::packet::{
    vxlan, EthernetFrame, Ipv4Packet, Ipv6Packet, MacAddr, TcpPacket, UdpPacket, VxlanPacket,
};
use forwarder::pipeline::{process, split, Context, DropReason, PacketBuf, VecBuf, Verdict};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Packets through the pipelines, all roles together; views get a fifth as many inputs.
fn packets() -> usize {
    std::env::var("TARP_NO_PANIC_PACKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000)
}

// ---------------------------------------------------------------------------------------
// Valid frames to start from.

/// One frame of every kind a box of `role` sees: traffic for each circuit (UDP, TCP,
/// ICMP; IPv4 with and without options, IPv6; tagged and untagged), traffic for nobody,
/// pings to the port, ARP, neighbour solicitations, fragments.
fn seeds(role: &str) -> Vec<Vec<u8>> {
    let (own_mac, peer_mac, dsts, srcs): (&str, &str, Vec<&str>, Vec<&str>) = match role {
        "aggregator" => (
            AGG_LINE,
            ROUTER,
            vec![
                "203.0.113.2",
                "203.0.113.4",
                "203.0.113.9",
                "203.0.113.77",
                "203.0.113.1",
            ],
            vec!["198.51.100.10"],
        ),
        "remux" => (
            RMX_DC,
            APP2,
            vec!["198.51.100.10", "198.19.0.254"],
            vec!["203.0.113.2", "198.19.0.2", "198.19.0.3"],
        ),
        _ => unreachable!("demux seeds are the aggregator's output"),
    };
    let v6 = |a: &str| -> String {
        match a {
            "203.0.113.1" => "2001:db8:113::1".into(),
            "198.19.0.254" => "2001:db8:19::fe".into(),
            "198.51.100.10" => "2001:db8:51::10".into(),
            a if a.starts_with("203.0.113.") => format!("2001:db8:113::{}", &a[10..]),
            a if a.starts_with("198.19.0.") => format!("2001:db8:19::{}", &a[9..]),
            a => panic!("no IPv6 twin for {a}"),
        }
    };
    let mut out = Vec::new();
    for &d in &dsts {
        for &s in &srcs {
            for (s, d) in [(ip(s), ip(d)), (ip(&v6(s)), ip(&v6(d)))] {
                for (l4, sp, dp) in [
                    (L4::Udp, 40000, 4000),
                    (L4::Tcp, 40000, 5000),
                    (L4::Udp, 4000, 40000),
                    (L4::Tcp, 5000, 40000),
                ] {
                    out.push(frame(
                        peer_mac,
                        own_mac,
                        s,
                        d,
                        64,
                        l4,
                        sp,
                        dp,
                        b"no panic seed",
                    ));
                }
                out.push(icmp_echo(peer_mac, own_mac, s, d, true));
                out.push(icmp_echo(peer_mac, own_mac, s, d, false));
            }
        }
    }
    let (s, d) = (ip(srcs[0]), ip(dsts[0]));
    let mut udp = frame(peer_mac, own_mac, s, d, 64, L4::Udp, 1, 4000, &[0x5a; 300]);
    out.push(udp.clone());
    // Later fragment, first fragment, IPv4 options.
    udp[14 + 6] = 0x00;
    udp[14 + 7] = 0x20;
    out.push(udp.clone());
    udp[14 + 6] = 0x20;
    udp[14 + 7] = 0x00;
    out.push(udp);
    out.push(with_ipv4_options(&frame(
        peer_mac,
        own_mac,
        s,
        d,
        64,
        L4::Tcp,
        1,
        4000,
        b"options",
    )));
    out.push(vlan_tagged(&frame(
        peer_mac,
        own_mac,
        s,
        d,
        64,
        L4::Udp,
        1,
        4000,
        b"tagged",
    )));
    // IPv6 with a hop-by-hop header and a fragment header.
    out.push(ipv6_with_extensions(
        peer_mac,
        own_mac,
        ip(&v6(srcs[0])),
        ip(&v6(dsts[0])),
    ));
    out.push(neighbour_solicitation(
        peer_mac,
        ip(&v6(srcs[0])),
        ip(&v6(dsts[0])),
    ));
    out.push(arp_request(peer_mac, srcs[0], dsts[0]));
    out
}

/// What the demux sees: the aggregator's tunnel packets (IPv4 and IPv6 outers), VXLAN
/// carrying other inner frames, and the tunnel port's own slow-path traffic.
fn demux_seeds() -> Vec<Vec<u8>> {
    let agg = aggregator();
    let mut out: Vec<Vec<u8>> = seeds("aggregator")
        .iter()
        .map(|f| agg.run(0, f))
        .filter(|(v, _)| matches!(v, Verdict::Forward(_)))
        .map(|(_, f)| f)
        .collect();
    assert!(out.len() > 20, "the aggregator forwards most of its seeds");
    let inner = frame(
        AGG_UPLINK,
        INNER,
        ip("198.51.100.10"),
        ip("198.18.0.4"),
        64,
        L4::Udp,
        1,
        5000,
        b"inner",
    );
    out.push(vxlan(ip("192.0.2.1"), ip("192.0.2.2"), 100, &inner));
    out.push(vxlan(
        ip("2001:db8:ffff::1"),
        ip("2001:db8:ffff::2"),
        100,
        &vlan_tagged(&inner),
    ));
    out.push(vxlan(
        ip("192.0.2.1"),
        ip("192.0.2.2"),
        100,
        &arp_request(AGG_UPLINK, "198.51.100.10", "198.18.0.4"),
    ));
    out.push(arp_request(ROUTER, "192.0.2.1", "192.0.2.2"));
    out.push(neighbour_solicitation(
        ROUTER,
        ip("2001:db8:ffff::1"),
        ip("2001:db8:ffff::2"),
    ));
    out.push(icmp_echo(
        ROUTER,
        DMX_TUN,
        ip("192.0.2.1"),
        ip("192.0.2.2"),
        true,
    ));
    out
}

fn icmp_echo(src_mac: &str, dst_mac: &str, src: IpAddr, dst: IpAddr, request: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(mac(src_mac).0, mac(dst_mac).0);
    let mut out = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let b = b.ipv4(s.octets(), d.octets(), 64);
            let b = if request {
                b.icmpv4_echo_request(7, 1)
            } else {
                b.icmpv4_echo_reply(7, 1)
            };
            b.write(&mut out, b"ping").unwrap();
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let b = b.ipv6(s.octets(), d.octets(), 64);
            let b = if request {
                b.icmpv6_echo_request(7, 1)
            } else {
                b.icmpv6_echo_reply(7, 1)
            };
            b.write(&mut out, b"ping").unwrap();
        }
        _ => unreachable!(),
    }
    out
}

/// An IPv4 frame with 8 bytes of options inserted (lengths and checksum fixed).
fn with_ipv4_options(f: &[u8]) -> Vec<u8> {
    let mut out = f[..34].to_vec();
    out.extend_from_slice(&[0x94, 0x04, 0, 0, 0x01, 0x01, 0x01, 0x00]); // router alert, NOPs, EOL
    out.extend_from_slice(&f[34..]);
    out[14] = 0x47;
    let total = u16::from_be_bytes([out[16], out[17]]) + 8;
    out[16..18].copy_from_slice(&total.to_be_bytes());
    let mut ip = Ipv4Packet::new_unchecked(&mut out[14..]);
    ip.fill_checksum();
    out
}

/// The frame with an 802.1Q tag (VLAN 100) after the MACs.
fn vlan_tagged(f: &[u8]) -> Vec<u8> {
    let mut out = f[..12].to_vec();
    out.extend_from_slice(&[0x81, 0x00, 0x00, 0x64]);
    out.extend_from_slice(&f[12..]);
    out
}

fn ipv6_with_extensions(src_mac: &str, dst_mac: &str, src: IpAddr, dst: IpAddr) -> Vec<u8> {
    let udp = frame(
        src_mac,
        dst_mac,
        src,
        dst,
        64,
        L4::Udp,
        1,
        4000,
        b"extensions",
    );
    let mut out = udp[..54].to_vec();
    out[14 + 6] = 0; // hop-by-hop
    out.extend_from_slice(&[44, 0, 1, 4, 0, 0, 0, 0]); // -> fragment, PadN
    out.extend_from_slice(&[17, 0, 0, 0, 0, 0, 0, 1]); // -> UDP, offset 0
    out.extend_from_slice(&udp[54..]);
    let len = u16::from_be_bytes([out[18], out[19]]) + 16;
    out[18..20].copy_from_slice(&len.to_be_bytes());
    out
}

fn neighbour_solicitation(src_mac: &str, src: IpAddr, target: IpAddr) -> Vec<u8> {
    let (IpAddr::V6(s), IpAddr::V6(t)) = (src, target) else {
        unreachable!()
    };
    let mut body = t.octets().to_vec();
    body.extend_from_slice(&[1, 1]);
    body.extend_from_slice(&mac(src_mac).0);
    let mut out = Vec::new();
    PacketBuilder::ethernet2(mac(src_mac).0, [0x33, 0x33, 0xff, 0, 0, 1])
        .ipv6(s.octets(), t.octets(), 255)
        .icmpv6_raw(135, 0, [0; 4])
        .write(&mut out, &body)
        .unwrap();
    out
}

fn arp_request(src_mac: &str, sender: &str, target: &str) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(t)) = (ip(sender), ip(target)) else {
        unreachable!()
    };
    let mut out = vec![0xff; 6];
    out.extend_from_slice(&mac(src_mac).0);
    out.extend_from_slice(&[0x08, 0x06]);
    out.resize(14 + arp::PACKET_LEN, 0);
    arp::write(
        &mut out[14..],
        arp::OP_REQUEST,
        mac(src_mac),
        s,
        MacAddr::ZERO,
        t,
    );
    out
}

// ---------------------------------------------------------------------------------------
// Inputs.

/// 16-bit values that length, offset and checksum fields trip over.
const EDGES: [u16; 12] = [0, 1, 2, 7, 8, 19, 20, 40, 0x00ff, 0x7fff, 0x8000, 0xffff];

/// A random input: random bytes (sometimes behind an Ethernet header for `own_mac`), or
/// a mutated seed.
fn input(rng: &mut StdRng, seeds: &[Vec<u8>], own_mac: &str) -> Vec<u8> {
    match rng.gen_range(0..10) {
        0 => random_bytes(rng, 0..64),
        1 => random_bytes(rng, 0..1600),
        2 => {
            let mut f = mac(own_mac).0.to_vec();
            f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
            let et: &[u8] = [
                &[0x08, 0x00][..],
                &[0x86, 0xdd],
                &[0x81, 0x00],
                &[0x88, 0xa8],
                &[0x08, 0x06],
            ]
            .choose(rng)
            .unwrap();
            f.extend_from_slice(et);
            // A plausible first byte for the IP version, then noise.
            f.push(*[0x45u8, 0x46, 0x4f, 0x60, 0x00].choose(rng).unwrap());
            f.extend(random_bytes(rng, 0..200));
            f
        }
        _ => {
            let mut f = seeds.choose(rng).unwrap().clone();
            for _ in 0..rng.gen_range(1..=3) {
                mutate(rng, &mut f, seeds);
            }
            f
        }
    }
}

fn random_bytes(rng: &mut StdRng, len: std::ops::Range<usize>) -> Vec<u8> {
    let mut v = vec![0u8; rng.gen_range(len)];
    rng.fill(&mut v[..]);
    v
}

fn mutate(rng: &mut StdRng, f: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    let n = f.len();
    match rng.gen_range(0..7) {
        // Change a few bytes, mostly in the headers.
        0 if n > 0 => {
            for _ in 0..rng.gen_range(1..=4) {
                let at = if rng.gen_bool(0.8) {
                    rng.gen_range(0..n.min(120))
                } else {
                    rng.gen_range(0..n)
                };
                f[at] = rng.gen();
            }
        }
        // Flip one bit.
        1 if n > 0 => {
            let at = rng.gen_range(0..n.min(120));
            f[at] ^= 1 << rng.gen_range(0..8);
        }
        // A 16-bit field (length, offset, checksum, port) set to an edge value.
        2 if n > 1 => {
            let at = rng.gen_range(0..n.min(120) - 1);
            let v = *EDGES.choose(rng).unwrap();
            let v = if rng.gen_bool(0.5) {
                v
            } else {
                v.wrapping_add(n as u16).wrapping_sub(rng.gen_range(0..64))
            };
            f[at..at + 2].copy_from_slice(&v.to_be_bytes());
        }
        3 => f.truncate(rng.gen_range(0..=n)),
        4 => f.extend(random_bytes(rng, 1..64)),
        // Bytes inserted into or removed from the headers: every offset after them moves.
        5 if n > 0 => {
            let at = rng.gen_range(0..n.min(100));
            if rng.gen_bool(0.5) {
                let k = rng.gen_range(1..=8).min(n - at);
                f.drain(at..at + k);
            } else {
                let b = random_bytes(rng, 1..9);
                f.splice(at..at, b);
            }
        }
        // The head of this frame, the tail of another.
        _ => {
            let other = seeds.choose(rng).unwrap();
            let cut = rng.gen_range(0..=n);
            let from = rng.gen_range(0..=other.len());
            f.truncate(cut);
            f.extend_from_slice(&other[from..]);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Verdict checks.

/// The IP header of a frame, as etherparse reads it: (source, destination). Errors
/// when the frame is not IPv4 / IPv6 or its stated lengths overrun it.
fn ip_of(frame: &[u8]) -> Result<(IpAddr, IpAddr), String> {
    let (eth, mut rest) = Ethernet2Header::from_slice(frame).map_err(|e| e.to_string())?;
    let mut et = eth.ether_type;
    while et == EtherType::VLAN_TAGGED_FRAME || et == EtherType::PROVIDER_BRIDGING {
        let (tag, r) = SingleVlanHeader::from_slice(rest).map_err(|e| e.to_string())?;
        (et, rest) = (tag.ether_type, r);
    }
    match et {
        EtherType::IPV4 => {
            let (h, _) = Ipv4Header::from_slice(rest).map_err(|e| e.to_string())?;
            h.payload_len().map_err(|e| e.to_string())?;
            if h.total_len as usize > rest.len() {
                return Err(format!(
                    "IPv4 total length {} > {} bytes",
                    h.total_len,
                    rest.len()
                ));
            }
            Ok((IpAddr::from(h.source), IpAddr::from(h.destination)))
        }
        EtherType::IPV6 => {
            let (h, _) = Ipv6Header::from_slice(rest).map_err(|e| e.to_string())?;
            if 40 + h.payload_length as usize > rest.len() {
                return Err(format!(
                    "IPv6 payload length {} > {} bytes",
                    h.payload_length,
                    rest.len() - 40
                ));
            }
            Ok((IpAddr::from(h.source), IpAddr::from(h.destination)))
        }
        other => Err(format!("not IP: ethertype {other:?}")),
    }
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|a| ip(a)).collect()
}

/// What may leave each box: addresses its tables can produce.
struct Expect {
    /// Aggregator: capture addresses (input destination) and aliases (inner destination).
    captures: Vec<IpAddr>,
    aliases: Vec<IpAddr>,
    tunnel_ends: Vec<IpAddr>,
    /// Demux: destinations it can deliver to.
    delivered: Vec<IpAddr>,
    /// Remux: sources it lets out.
    reply_sources: Vec<IpAddr>,
    /// Remux: (app host or capture) sources it accepts.
    remux_keys: Vec<IpAddr>,
}

impl Expect {
    fn new() -> Expect {
        Expect {
            captures: ips(&[
                "203.0.113.2",
                "2001:db8:113::2",
                "203.0.113.4",
                "2001:db8:113::4",
                "203.0.113.9",
            ]),
            aliases: ips(&[
                "198.18.0.3",
                "2001:db8:18::3",
                "198.18.0.4",
                "2001:db8:18::4",
                "198.18.0.9",
            ]),
            tunnel_ends: ips(&["192.0.2.2", "2001:db8:ffff::2"]),
            delivered: ips(&[
                "203.0.113.2",
                "203.0.113.9",
                "2001:db8:113::2",
                "198.19.0.2",
                "198.19.0.3",
                "2001:db8:19::2",
                "2001:db8:19::3",
            ]),
            reply_sources: ips(&[
                "203.0.113.2",
                "2001:db8:113::2",
                "203.0.113.4",
                "2001:db8:113::4",
            ]),
            remux_keys: ips(&[
                "203.0.113.2",
                "2001:db8:113::2",
                "198.19.0.2",
                "198.19.0.3",
                "2001:db8:19::2",
                "2001:db8:19::3",
            ]),
        }
    }
}

/// The inner frame of a VXLAN packet, by etherparse: outer IP, UDP to 4789, I flag. The
/// inner frame ends where the UDP length says, or with `to_end`, with the frame.
fn vxlan_inner(frame: &[u8], to_end: bool) -> Result<(IpAddr, &[u8]), String> {
    let (_, dst) = ip_of(frame)?;
    let h = etherparse::PacketHeaders::from_ethernet_slice(frame).map_err(|e| e.to_string())?;
    let Some(etherparse::TransportHeader::Udp(u)) = h.transport else {
        return Err("outer is not UDP".into());
    };
    let vx = h.payload.slice();
    if u.destination_port != 4789 || vx.len() < 8 + 14 || vx[0] & 0x08 == 0 {
        return Err("not VXLAN".into());
    }
    let at = vx.as_ptr() as usize - frame.as_ptr() as usize + 8;
    let end = if to_end {
        frame.len()
    } else {
        at + vx.len() - 8
    };
    Ok((dst, &frame[at..end]))
}

/// Checks one verdict of `role` for input `before` (output `after`) received on `in_port`.
fn check(
    role: &str,
    e: &Expect,
    in_port: u16,
    before: &[u8],
    v: Verdict,
    after: &[u8],
) -> Result<(), String> {
    if in_port > 1 {
        return (v == Verdict::Drop(DropReason::Unsupported))
            .then_some(())
            .ok_or(format!("unknown port: {v:?}"));
    }
    let Verdict::Forward(out_port) = v else {
        return Ok(());
    };
    if out_port != 1 {
        return Err(format!(
            "forwarded to port {out_port}, which sends no traffic of this role"
        ));
    }
    // The packet that was rewritten: before and after.
    let (old, new) = match role {
        "aggregator" => {
            let (outer_dst, inner) = vxlan_inner(after, false)?;
            if !e.tunnel_ends.contains(&outer_dst) {
                return Err(format!("tunnelled to {outer_dst}"));
            }
            if after[..6] != mac(DMX_TUN).0 || after[6..12] != mac(AGG_UPLINK).0 {
                return Err("outer MACs".into());
            }
            let (_, d0) = ip_of(before)?;
            let (_, d1) = ip_of(inner)?;
            if !e.captures.contains(&d0) || !e.aliases.contains(&d1) {
                return Err(format!("{d0} -> {d1} is no circuit"));
            }
            (before, inner)
        }
        "demux" => {
            let (_, inner) = vxlan_inner(before, false)?;
            let (_, d0) = ip_of(inner)?;
            let (_, d1) = ip_of(after)?;
            if !e.aliases.contains(&d0) || !e.delivered.contains(&d1) {
                return Err(format!("{d0} -> {d1} is no circuit"));
            }
            if ![mac(APP2).0, mac(APP3).0].contains(&after[..6].try_into().unwrap())
                || after[6..12] != mac(DMX_DC).0
            {
                return Err("delivered with wrong MACs".into());
            }
            (inner, after)
        }
        _ => {
            let (s0, _) = ip_of(before)?;
            let (s1, _) = ip_of(after)?;
            if !e.remux_keys.contains(&s0) || !e.reply_sources.contains(&s1) {
                return Err(format!("{s0} -> {s1} is no circuit"));
            }
            if after[..6] != mac(ROUTER).0 || after[6..12] != mac(RMX_OUT).0 {
                return Err("sent with wrong MACs".into());
            }
            (before, after)
        }
    };
    // A packet whose checksums were right still has right ones (etherparse's reading).
    if check_checksums(old).is_ok() {
        check_checksums(new).map_err(|err| format!("valid checksums broken: {err}"))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The runs.

/// Feeds `n` inputs in bursts of 1..=70 (more than one pipeline pass) with random
/// headroom, on random ports (port 2 does not exist).
fn run_role(
    role: &str,
    bx: &Box_,
    seeds: &[Vec<u8>],
    own_mac: &str,
    n: usize,
    seed: u64,
) -> [usize; 3] {
    let mut rng = StdRng::seed_from_u64(seed);
    let e = Expect::new();
    let mut tally = [0usize; 3]; // forwarded, dropped, slow path
    let mut done = 0;
    while done < n {
        let burst: Vec<Vec<u8>> = (0..rng.gen_range(1..=70).min(n - done))
            .map(|_| input(&mut rng, seeds, own_mac))
            .collect();
        let in_port = *[0u16, 0, 0, 1, 2].choose(&mut rng).unwrap();
        let headroom = *[0usize, 49, 50, 69, 70, 128].choose(&mut rng).unwrap();
        let mut pkts: Vec<VecBuf> = burst
            .iter()
            .map(|b| VecBuf::with_headroom(b, headroom))
            .collect();
        let mut verdicts = vec![Verdict::SlowPath; pkts.len()];
        let run = catch_unwind(AssertUnwindSafe(|| {
            process(
                &bx.snap,
                &mut Context::with_frag_slots(4, 64),
                in_port,
                &mut pkts,
                &mut verdicts,
            )
        }));
        if run.is_err() {
            culprit(role, bx, in_port, headroom, &burst);
        }
        for ((b, p), &v) in burst.iter().zip(&pkts).zip(&verdicts) {
            let res = match v {
                // ICMP made from the packet goes back where it came from, well formed.
                Verdict::Icmp(out) if out != in_port => Err(format!("ICMP out of port {out}")),
                Verdict::Icmp(_) => check_checksums(p.data())
                    .map(|_| ())
                    .map_err(|e| format!("generated ICMP: {e}")),
                // Every piece of a split packet is a forwarded packet of its own.
                Verdict::Fragment(how) => {
                    let mut pieces = Vec::new();
                    let l3 = if p.data()[12..14] == [0x81, 0x00] {
                        18
                    } else {
                        14
                    };
                    match split(
                        &bx.snap,
                        how,
                        p.data(),
                        l3,
                        |len| Some(VecBuf::new(&vec![0u8; len])),
                        |_, f| pieces.push(f),
                    ) {
                        Ok((port, n)) if n == pieces.len() && n > 1 => {
                            pieces.iter().try_for_each(|f| {
                                check(role, &e, in_port, b, Verdict::Forward(port), f.data())
                            })
                        }
                        Ok((_, n)) => Err(format!("split into {n} ({} made)", pieces.len())),
                        Err(r) => Err(format!("split failed: {r:?}")),
                    }
                }
                _ => check(role, &e, in_port, b, v, p.data()),
            };
            if let Err(err) = res {
                panic!(
                    "{role}: {err}\nverdict {v:?} on port {in_port}\ninput  {}\noutput {}",
                    hex(b),
                    hex(p.data())
                );
            }
            tally[match v {
                Verdict::Forward(_) | Verdict::Icmp(_) | Verdict::Fragment(_) | Verdict::Wg(_) => 0,
                Verdict::Drop(_) => 1,
                Verdict::SlowPath => 2,
            }] += 1;
        }
        done += burst.len();
    }
    tally
}

/// A burst panicked: finds the packet that does it alone and fails with its bytes.
fn culprit(role: &str, bx: &Box_, in_port: u16, headroom: usize, burst: &[Vec<u8>]) -> ! {
    for b in burst {
        let mut pkt = [VecBuf::with_headroom(b, headroom)];
        let mut v = [Verdict::SlowPath];
        if catch_unwind(AssertUnwindSafe(|| {
            process(
                &bx.snap,
                &mut Context::with_frag_slots(4, 64),
                in_port,
                &mut pkt,
                &mut v,
            )
        }))
        .is_err()
        {
            panic!(
                "{role} panics on port {in_port}, headroom {headroom}: {}",
                hex(b)
            );
        }
    }
    panic!(
        "{role} panics on a burst of {} on port {in_port}, on no packet alone",
        burst.len()
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn pipelines_survive_arbitrary_bytes() {
    let n = packets() / 3;
    let agg_seeds = seeds("aggregator");
    let dmx_seeds = demux_seeds();
    let rmx_seeds = seeds("remux");
    for (role, bx, seeds, own_mac, seed) in [
        (
            "aggregator",
            aggregator(),
            &agg_seeds,
            AGG_LINE,
            0x7a59_0001,
        ),
        ("demux", demux(), &dmx_seeds, DMX_TUN, 0x7a59_0002),
        ("remux", remux(), &rmx_seeds, RMX_DC, 0x7a59_0003),
    ] {
        let [fwd, drop, slow] = run_role(role, &bx, seeds, own_mac, n, seed);
        eprintln!("{role}: {fwd} forwarded, {drop} dropped, {slow} to the slow path");
        // The inputs reach the rewrite, not only the parser.
        assert!(fwd > n / 100, "{role}: only {fwd} of {n} inputs forwarded");
    }
}

// ---------------------------------------------------------------------------------------
// Packet views.

/// Every checked constructor and every getter on `b`, and the setters on a copy: no
/// panic, and what a view computes agrees with itself (fill then verify).
fn views(b: &[u8]) {
    let v4 = (
        IpAddr::from([198, 51, 100, 1]),
        IpAddr::from([203, 0, 113, 2]),
    );
    let v6 = (ip("2001:db8:51::1"), ip("2001:db8:113::2"));
    if let Ok(f) = EthernetFrame::new_checked(b) {
        let _ = (f.dst(), f.src(), f.ethertype(), f.dst().is_multicast());
        if let Ok(info) = f.payload_info() {
            assert!(
                info.l3_offset <= b.len(),
                "L3 offset {} past {} bytes",
                info.l3_offset,
                b.len()
            );
            views_l3(&b[info.l3_offset..]);
        }
    }
    views_l3(b);
    if let Ok(p) = UdpPacket::new_checked(b) {
        let _ = (
            p.src_port(),
            p.dst_port(),
            p.len(),
            p.is_empty(),
            p.checksum(),
            p.payload().len(),
        );
        let _ = (p.verify_checksum(v4.0, v4.1), p.verify_checksum(v6.0, v6.1));
        for (s, d) in [v4, v6] {
            let mut c = b.to_vec();
            let mut p = UdpPacket::new_checked(&mut c[..]).unwrap();
            p.set_src_port(1);
            p.set_dst_port(2);
            p.fill_checksum(s, d);
            assert!(p.verify_checksum(s, d), "UDP fill then verify");
            assert_ne!(p.checksum(), 0);
        }
    }
    if let Ok(p) = TcpPacket::new_checked(b) {
        let _ = (
            p.src_port(),
            p.dst_port(),
            p.seq(),
            p.ack(),
            p.header_len(),
            p.flags(),
            p.checksum(),
        );
        for (s, d) in [v4, v6] {
            let mut c = b.to_vec();
            let mut p = TcpPacket::new_checked(&mut c[..]).unwrap();
            p.fill_checksum(s, d);
            assert!(p.verify_checksum(s, d), "TCP fill then verify");
        }
    }
    if let Ok(p) = IcmpPacket::new_checked(b) {
        let (IpAddr::V6(s), IpAddr::V6(d)) = v6 else {
            unreachable!()
        };
        let _ = (
            p.msg_type(),
            p.code(),
            p.checksum(),
            p.echo_ident(),
            p.echo_seq(),
            p.verify_checksum_v4(),
        );
        let _ = (
            p.verify_checksum_v6(s, d),
            p.nd_target(),
            p.nd_lladdr(1),
            p.nd_lladdr(2),
        );
        let mut c = b.to_vec();
        let mut p = IcmpPacket::new_checked(&mut c[..]).unwrap();
        p.set_msg_type(8);
        p.set_code(0);
        p.fill_checksum_v4();
        assert!(p.verify_checksum_v4(), "ICMPv4 fill then verify");
        p.fill_checksum_v6(s, d);
        assert!(p.verify_checksum_v6(s, d), "ICMPv6 fill then verify");
    }
    if let Ok(p) = ArpPacket::new_checked(b) {
        let _ = (
            p.operation(),
            p.sender_mac(),
            p.sender_ip(),
            p.target_mac(),
            p.target_ip(),
        );
    }
    if let Ok(p) = VxlanPacket::new_checked(b) {
        assert_eq!(p.inner().len(), b.len() - vxlan::HEADER_LEN);
        assert!(p.vni() < 1 << 24);
    }
    if let Ok(o) = vxlan::parse_outer(b) {
        // The inner frame holds at least an Ethernet header.
        assert!(
            o.inner_offset + 14 <= b.len(),
            "inner offset {} of {} bytes",
            o.inner_offset,
            b.len()
        );
        let _ = (o.src, o.dst, o.vni);
    }
}

fn views_l3(b: &[u8]) {
    if let Ok(p) = Ipv4Packet::new_checked(b) {
        let _ = (
            p.version(),
            p.ident(),
            p.more_frags(),
            p.dont_frag(),
            p.frag_offset(),
            p.is_fragment(),
        );
        let _ = (
            p.ttl(),
            p.protocol(),
            p.checksum(),
            p.src(),
            p.dst(),
            p.verify_checksum(),
        );
        assert_eq!(p.payload().len(), p.total_len() as usize - p.header_len());
        let mut c = b.to_vec();
        let mut p = Ipv4Packet::new_checked(&mut c[..]).unwrap();
        p.set_src([192, 0, 2, 1].into());
        p.set_dst([192, 0, 2, 2].into());
        p.fill_checksum();
        assert!(p.verify_checksum(), "IPv4 fill then verify");
        if p.ttl() > 1 {
            p.decrement_ttl();
            assert!(p.verify_checksum(), "IPv4 TTL decrement keeps the checksum");
        }
        views(p.payload());
    }
    if let Ok(p) = Ipv6Packet::new_checked(b) {
        let _ = (
            p.version(),
            p.payload_len(),
            p.next_header(),
            p.hop_limit(),
            p.src(),
            p.dst(),
        );
        if let Ok(ul) = p.upper_layer() {
            let end = 40 + p.payload_len() as usize;
            assert!(
                ul.offset <= end,
                "upper layer at {} past the payload end {end}",
                ul.offset
            );
            let _ = ul.is_later_fragment();
            views_l4(&b[ul.offset..end]);
        }
        let mut c = b.to_vec();
        let mut p = Ipv6Packet::new_checked(&mut c[..]).unwrap();
        p.set_src(ip_v6("2001:db8::1"));
        p.set_dst(ip_v6("2001:db8::2"));
        p.set_hop_limit(1);
    }
}

/// Upper-layer views only (no recursion into `views`' IP cases).
fn views_l4(b: &[u8]) {
    let _ = UdpPacket::new_checked(b).map(|p| (p.len(), p.payload().len()));
    let _ = TcpPacket::new_checked(b).map(|p| p.header_len());
    let _ = IcmpPacket::new_checked(b).map(|p| (p.nd_target(), p.nd_lladdr(1), p.nd_lladdr(2)));
}

fn ip_v6(s: &str) -> std::net::Ipv6Addr {
    s.parse().unwrap()
}

#[test]
fn packet_views_survive_arbitrary_bytes() {
    let mut rng = StdRng::seed_from_u64(0x7a59_0004);
    let mut seeds = seeds("aggregator");
    seeds.extend(demux_seeds());
    // The seeds from every offset where a header could start.
    let starts = [0usize, 14, 18, 34, 42, 54, 62, 64, 70, 72, 78];
    for i in 0..packets() / 5 {
        let mut b = if i % 4 == 0 {
            random_bytes(&mut rng, 0..128)
        } else {
            input(&mut rng, &seeds, AGG_LINE)
        };
        let at = starts.choose(&mut rng).unwrap().min(&b.len()).to_owned();
        if i % 2 == 0 {
            b.drain(..at);
        }
        if catch_unwind(AssertUnwindSafe(|| views(&b))).is_err() {
            panic!("a packet view panics on {}", hex(&b));
        }
    }
}

/// Found by the run above. The demux takes the inner frame from the VXLAN header to the
/// end of the buffer, not to the end of the UDP datagram, so an inner packet longer than
/// the tunnel payload is completed with bytes from behind the outer packet (Ethernet
/// trailer, garbage) and forwarded. It should be dropped as malformed.
#[test]
fn demux_ends_the_inner_frame_at_the_udp_length() {
    let dmx = demux();
    let inner = frame(
        AGG_UPLINK,
        INNER,
        ip("198.51.100.10"),
        ip("198.18.0.3"),
        64,
        L4::Udp,
        1,
        4000,
        b"0123456789",
    );
    // The tunnel carries the inner frame without its last 10 bytes; they trail the outer
    // IP packet, outside every length field of the tunnel.
    let cut = inner.len() - 10;
    let mut tunnelled = vxlan(ip("192.0.2.1"), ip("192.0.2.2"), 100, &inner[..cut]);
    tunnelled.extend_from_slice(&inner[cut..]);
    assert_eq!(
        dmx.run(0, &tunnelled).0,
        Verdict::Drop(DropReason::Malformed)
    );
}
