//! Property tests: tarp's rewrites leave checksums that etherparse (an implementation
//! nobody here wrote) recomputes to the very same values, and leave payload bytes alone.
//!
//! Random packets — UDP (with and without a checksum over IPv4), TCP, ICMPv4 and ICMPv6,
//! over IPv4 (with options) and IPv6, with or without an 802.1Q tag, random test-range
//! addresses, ports, TTLs and payloads of 0..1340 bytes (all of it fits the smallest
//! inner budget, 1430 bytes over an IPv6 tunnel, headers and IPv4 options included) — go
//!
//! - through a topology whose one circuit has random addresses (`support::boxes`):
//!   aggregator -> demux, and the reply through the remux, checked at every hop against
//!   the frame etherparse builds with the rewritten fields; also with the first payload
//!   word chosen so that the rewritten checksum computes to zero (0xffff for UDP);
//! - through the fixtures' aggregator, demux and remux, where a model of their tables
//!   says which packets are forwarded: nothing else ever is;
//! - through `forwarder::packet::checksum` directly: `Delta::of`, `update`, `update_udp`
//!   against a full recompute.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::support::*;
use etherparse::{
    IpHeaders, IpNumber, Ipv4Header, Ipv4Options, Ipv6Header, NetHeaders, PacketBuilder,
    PacketHeaders, TransportHeader, VlanId,
};
use forwarder::packet::checksum::{self, Delta};
use forwarder::pipeline::{DropReason, Verdict};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};

// ---------------------------------------------------------------------------------------
// Random packets.

/// The upper layer of a test packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    /// UDP with a zero ("none") checksum over IPv4; a checksummed UDP over IPv6, where
    /// zero is not allowed.
    UdpNoChecksum,
    Tcp,
    /// ICMPv4 over IPv4, ICMPv6 over IPv6.
    Icmp,
}

/// Everything about a test packet but its MACs, addresses and TTL.
#[derive(Debug, Clone)]
struct Pkt {
    transport: Transport,
    vlan: Option<u16>,
    /// IPv4 options: a multiple of 4 bytes, at most 40 (unused over IPv6).
    options: Vec<u8>,
    sport: u16,
    dport: u16,
    /// ICMP: index into the family's types, code, the 4 bytes after the checksum.
    icmp: (usize, u8, [u8; 4]),
    /// TCP: sequence number, acknowledgement number, window.
    tcp: (u32, u32, u16),
    payload: Vec<u8>,
}

/// ICMP types that go through the fast path: echo request / reply and the types RFC 4727
/// (v4) and RFC 4443 (v6) set aside for experiments. Neighbour discovery is the slow
/// path's and not here.
const ICMPV4_TYPES: [u8; 4] = [8, 0, 253, 254];
const ICMPV6_TYPES: [u8; 4] = [128, 129, 100, 200];

/// Echo requests (the slow path answers them at a port's own address).
const ICMP_ECHO: [u8; 2] = [8, 128];

impl Pkt {
    /// The ICMP type of the packet in the family given.
    fn icmp_type(&self, v6: bool) -> u8 {
        if v6 {
            ICMPV6_TYPES[self.icmp.0]
        } else {
            ICMPV4_TYPES[self.icmp.0]
        }
    }

    /// The protocol a port-mode rule can name for this packet.
    fn l4(&self) -> Option<L4> {
        match self.transport {
            Transport::Udp | Transport::UdpNoChecksum => Some(L4::Udp),
            Transport::Tcp => Some(L4::Tcp),
            Transport::Icmp => None,
        }
    }

    /// The answer to this packet: same shape, ports swapped, another payload.
    fn reply(&self, payload: Vec<u8>) -> Pkt {
        Pkt {
            sport: self.dport,
            dport: self.sport,
            payload,
            ..self.clone()
        }
    }
}

/// Builds `p` as an Ethernet frame with etherparse, every checksum computed (but a
/// [`Transport::UdpNoChecksum`] over IPv4, whose checksum is zero).
fn build(p: &Pkt, eth_src: &str, eth_dst: &str, src: IpAddr, dst: IpAddr, ttl: u8) -> Vec<u8> {
    let ip = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut h = Ipv4Header::new(0, ttl, IpNumber::UDP, s.octets(), d.octets()).unwrap();
            h.options = Ipv4Options::try_from(&p.options[..]).unwrap();
            IpHeaders::Ipv4(h, Default::default())
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => IpHeaders::Ipv6(
            Ipv6Header {
                hop_limit: ttl,
                source: s.octets(),
                destination: d.octets(),
                ..Default::default()
            },
            Default::default(),
        ),
        _ => panic!("mixed families"),
    };
    let eth = PacketBuilder::ethernet2(mac(eth_src).0, mac(eth_dst).0);
    let b = match p.vlan {
        Some(id) => eth.single_vlan(VlanId::try_new(id).unwrap()).ip(ip),
        None => eth.ip(ip),
    };
    let mut out = Vec::new();
    let (ty, code, rest) = p.icmp;
    match p.transport {
        Transport::Udp | Transport::UdpNoChecksum => {
            b.udp(p.sport, p.dport).write(&mut out, &p.payload)
        }
        Transport::Tcp => {
            let (seq, ack, window) = p.tcp;
            b.tcp(p.sport, p.dport, seq, window)
                .ack(ack)
                .psh()
                .write(&mut out, &p.payload)
        }
        Transport::Icmp if src.is_ipv4() => b
            .icmpv4_raw(ICMPV4_TYPES[ty], code, rest)
            .write(&mut out, &p.payload),
        Transport::Icmp => b
            .icmpv6_raw(ICMPV6_TYPES[ty], code, rest)
            .write(&mut out, &p.payload),
    }
    .unwrap();
    if p.transport == Transport::UdpNoChecksum && src.is_ipv4() {
        let at = 14 + if p.vlan.is_some() { 4 } else { 0 } + 20 + p.options.len() + 6;
        out[at..at + 2].copy_from_slice(&[0, 0]);
    }
    out
}

fn pkt() -> impl Strategy<Value = Pkt> {
    (
        prop_oneof![
            Just(Transport::Udp),
            Just(Transport::UdpNoChecksum),
            Just(Transport::Tcp),
            Just(Transport::Icmp)
        ],
        proptest::option::of(0u16..=4095),
        (0usize..=10).prop_flat_map(|words| vec(any::<u8>(), words * 4)),
        any::<u16>(),
        any::<u16>(),
        (0..ICMPV4_TYPES.len(), any::<u8>(), any::<[u8; 4]>()),
        any::<(u32, u32, u16)>(),
        vec(any::<u8>(), 0..1340),
    )
        .prop_map(
            |(transport, vlan, options, sport, dport, icmp, tcp, payload)| Pkt {
                transport,
                vlan,
                options,
                sport,
                dport,
                icmp,
                tcp,
                payload,
            },
        )
}

/// TTLs, with the ones that expire on the way (0..=2) well represented.
fn ttl() -> impl Strategy<Value = u8> {
    prop_oneof![1 => 0u8..=3, 7 => 3u8..=255]
}

fn v4(a: [u8; 4]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(a))
}

/// An IPv6 address: `prefix` (the top 64 bits) and `low`.
fn v6(prefix: u64, low: u64) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(((prefix as u128) << 64) | low as u128))
}

/// A device on the Internet: 198.51.100.0/24 or 2001:db8:51::/48.
fn device(is_v6: bool) -> BoxedStrategy<IpAddr> {
    if is_v6 {
        (any::<u16>(), any::<u64>())
            .prop_map(|(net, low)| v6(0x2001_0db8_0051_0000 | net as u64, low))
            .boxed()
    } else {
        any::<u8>().prop_map(|h| v4([198, 51, 100, h])).boxed()
    }
}

/// Any test-range address of a family, biased towards the nets the fixtures use so that
/// near misses (a neighbour of a capture address, an alias' neighbour) are common.
fn test_range_addr(is_v6: bool) -> BoxedStrategy<IpAddr> {
    if is_v6 {
        let net = prop_oneof![
            select(vec![0x113u64, 0x18, 0x19, 0xffff, 0x51])
                .prop_map(|n| 0x2001_0db8_0000_0000 | n << 16),
            any::<u32>().prop_map(|n| 0x2001_0db8_0000_0000 | n as u64),
        ];
        let low = prop_oneof![0u64..16, any::<u64>()];
        (net, low).prop_map(|(n, l)| v6(n, l)).boxed()
    } else {
        prop_oneof![
            any::<u8>().prop_map(|h| v4([203, 0, 113, h])),
            any::<u8>().prop_map(|h| v4([198, 51, 100, h])),
            any::<u8>().prop_map(|h| v4([192, 0, 2, h])),
            (18u8..=19, any::<u8>(), any::<u8>()).prop_map(|(b, c, d)| v4([198, b, c, d])),
        ]
        .boxed()
    }
}

/// A random circuit of `p`'s family; port mode (on `p`'s protocol and destination port)
/// when `p` has ports and the coin says so.
fn circuit(is_v6: bool, p: &Pkt) -> impl Strategy<Value = Circuit> {
    let port = p.l4().map(|l4| (l4, p.dport));
    let addrs = if is_v6 {
        (
            (2u64..).prop_map(|l| v6(0x2001_0db8_0113_0000, l)).boxed(),
            (any::<u16>(), any::<u64>())
                .prop_map(|(n, l)| v6(0x2001_0db8_0018_0000 | n as u64, l))
                .boxed(),
            (0x100u64..)
                .prop_map(|l| v6(0x2001_0db8_0019_0000, l))
                .boxed(),
        )
    } else {
        (
            (2u8..=254).prop_map(|h| v4([203, 0, 113, h])).boxed(),
            any::<[u8; 2]>()
                .prop_map(|[c, d]| v4([198, 18, c, d]))
                .boxed(),
            (2u8..=253).prop_map(|h| v4([198, 19, 0, h])).boxed(),
        )
    };
    (addrs, any::<bool>(), any::<bool>()).prop_map(
        move |((capture, alias, app_host), port_mode, outer_v6)| Circuit {
            capture,
            alias,
            app_host,
            port: port.filter(|_| port_mode),
            outer_v6,
        },
    )
}

// ---------------------------------------------------------------------------------------
// Checks.

/// Fails with the first differing byte instead of two 1400-byte dumps.
fn same_frame(what: &str, got: &[u8], want: &[u8]) -> Result<(), TestCaseError> {
    if got != want {
        let at = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        return Err(TestCaseError::fail(format!(
            "{what}: frames differ at byte {at} (got {} bytes, want {}): got {:02x?}, want {:02x?}",
            got.len(),
            want.len(),
            &got[at..(at + 8).min(got.len())],
            &want[at..(at + 8).min(want.len())],
        )));
    }
    Ok(())
}

/// The transport header and payload of a frame, as etherparse reads them.
fn transport_of(frame: &[u8]) -> (Option<TransportHeader>, Vec<u8>) {
    let h = PacketHeaders::from_ethernet_slice(frame).expect("etherparse parses the frame");
    (h.transport, h.payload.slice().to_vec())
}

/// A frame that went through a rewrite: every checksum valid, the payload unchanged, an
/// ICMPv4 checksum unchanged (it covers no address), and byte for byte the frame
/// etherparse builds with the rewritten fields.
fn check_hop(what: &str, before: &[u8], after: &[u8], want: &[u8]) -> Result<(), TestCaseError> {
    if let Err(e) = check_checksums(after) {
        return Err(TestCaseError::fail(format!("{what}: {e}")));
    }
    let (t0, p0) = transport_of(before);
    let (t1, p1) = transport_of(after);
    prop_assert!(p0 == p1, "{}: payload changed", what);
    if let (Some(TransportHeader::Icmpv4(a)), Some(TransportHeader::Icmpv4(b))) = (&t0, &t1) {
        prop_assert_eq!(a.checksum, b.checksum, "{}: ICMPv4 checksum changed", what);
    }
    same_frame(what, after, want)
}

/// The inner frame of a tunnel packet, after checking the outer's checksums and family.
fn inner_of(tunnelled: &[u8], outer_v6: bool) -> Result<&[u8], TestCaseError> {
    if let Err(e) = check_checksums(tunnelled) {
        return Err(TestCaseError::fail(format!("outer: {e}")));
    }
    let h = PacketHeaders::from_ethernet_slice(tunnelled).unwrap();
    prop_assert_eq!(
        matches!(h.net, Some(NetHeaders::Ipv6(..))),
        outer_v6,
        "outer family"
    );
    let n = if outer_v6 {
        14 + 40 + 8 + 8
    } else {
        14 + 20 + 8 + 8
    };
    prop_assert!(tunnelled.len() > n);
    Ok(&tunnelled[n..])
}

// ---------------------------------------------------------------------------------------
// A random circuit, end to end.

/// A packet, a random circuit it belongs to, a device, a TTL and a reply payload.
fn circuit_case() -> impl Strategy<Value = (Pkt, Circuit, IpAddr, u8, Vec<u8>)> {
    (any::<bool>(), pkt()).prop_flat_map(|(is_v6, p)| {
        let c = circuit(is_v6, &p);
        (Just(p), c, device(is_v6), ttl(), vec(any::<u8>(), 0..200))
    })
}

/// Device -> aggregator -> demux -> app host, and the app host's reply through the remux.
fn end_to_end(
    p: &Pkt,
    c: &Circuit,
    device: IpAddr,
    ttl: u8,
    reply_payload: Vec<u8>,
) -> Result<(), TestCaseError> {
    let (agg, dmx, rmx) = boxes(c);

    let sent = build(p, ROUTER, AGG_LINE, device, c.capture, ttl);
    prop_assert_eq!(
        check_checksums(&sent).err(),
        None,
        "the generator builds valid packets"
    );
    let (v, tunnelled) = agg.run(0, &sent);
    if ttl <= 1 {
        prop_assert_eq!(v, Verdict::Drop(DropReason::TtlExpired));
        return Ok(());
    }
    prop_assert_eq!(v, Verdict::Forward(1), "aggregator");
    let inner = inner_of(&tunnelled, c.outer_v6)?;
    check_hop(
        "aggregator",
        &sent,
        inner,
        &build(p, AGG_UPLINK, INNER, device, c.alias, ttl - 1),
    )?;

    let (v, delivered) = dmx.run(0, &tunnelled);
    if ttl - 1 <= 1 {
        prop_assert_eq!(v, Verdict::Drop(DropReason::TtlExpired));
        return Ok(());
    }
    prop_assert_eq!(v, Verdict::Forward(1), "demux");
    let dst = if c.port.is_some() {
        c.app_host
    } else {
        c.capture
    };
    check_hop(
        "demux",
        &sent,
        &delivered,
        &build(p, DMX_DC, APP2, device, dst, ttl - 2),
    )?;

    // Address mode: the app host answers from the capture address it carries; port mode:
    // from its own, which the remux turns back into the capture address.
    let r = p.reply(reply_payload);
    let reply = build(&r, APP2, RMX_DC, dst, device, ttl);
    let (v, out) = rmx.run(0, &reply);
    prop_assert_eq!(v, Verdict::Forward(1), "remux");
    check_hop(
        "remux",
        &reply,
        &out,
        &build(&r, RMX_OUT, ROUTER, c.capture, device, ttl - 1),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every hop of a random circuit keeps every checksum valid and every payload byte.
    #[test]
    fn random_circuit_end_to_end((p, c, device, ttl, reply) in circuit_case()) {
        end_to_end(&p, &c, device, ttl, reply)?;
    }

    /// The one-in-65536 case random payloads never reach: a rewrite after which the
    /// checksum computes to zero. The first payload word is chosen to make it so; UDP
    /// must then send 0xffff (RFC 768), TCP and ICMPv6 0x0000, as etherparse does.
    #[test]
    fn checksum_that_updates_to_zero((mut p, c, device, ttl, _) in circuit_case()) {
        let ttl = ttl.max(2);
        p.payload.splice(..0, [0, 0]);
        let (_, zeroing) = checksums_of(&build(&p, AGG_UPLINK, INNER, device, c.alias, ttl - 1));
        p.payload[..2].copy_from_slice(&zeroing.to_be_bytes());
        let want = build(&p, AGG_UPLINK, INNER, device, c.alias, ttl - 1);
        let (_, l4) = checksums_of(&want);
        match p.transport {
            Transport::Udp => prop_assert_eq!(l4, 0xffff),
            Transport::UdpNoChecksum if c.capture.is_ipv6() => prop_assert_eq!(l4, 0xffff),
            Transport::Tcp => prop_assert_eq!(l4, 0),
            Transport::Icmp if c.capture.is_ipv6() => prop_assert_eq!(l4, 0),
            _ => {}
        }
        let sent = build(&p, ROUTER, AGG_LINE, device, c.capture, ttl);
        let (v, tunnelled) = boxes(&c).0.run(0, &sent);
        prop_assert_eq!(v, Verdict::Forward(1));
        check_hop("aggregator", &sent, inner_of(&tunnelled, c.outer_v6)?, &want)?;
    }
}

// ---------------------------------------------------------------------------------------
// The fixtures' tables, as a model: forwarded exactly when a circuit matches.

/// Aggregator: capture -> (alias, IPv6 tunnel).
const AGG_MAP: &[(&str, &str, bool)] = &[
    ("203.0.113.2", "198.18.0.3", false),
    ("2001:db8:113::2", "2001:db8:18::3", false),
    ("203.0.113.4", "198.18.0.4", false),
    ("2001:db8:113::4", "2001:db8:18::4", false),
    ("203.0.113.9", "198.18.0.9", true),
];
/// Aggregator ports' own addresses (slow path), by port.
const AGG_OWN: [&[&str]; 2] = [
    &["203.0.113.1", "2001:db8:113::1"],
    &["192.0.2.1", "2001:db8:ffff::1"],
];
/// Demux address mode: alias -> capture (delivered to APP2).
const DMX_ADDR: &[(&str, &str)] = &[
    ("198.18.0.3", "203.0.113.2"),
    ("198.18.0.9", "203.0.113.9"),
    ("2001:db8:18::3", "2001:db8:113::2"),
];
/// Demux port mode: (alias, protocol, port) -> app host.
const DMX_PORT: &[(&str, L4, u16, &str)] = &[
    ("198.18.0.4", L4::Udp, 4000, "198.19.0.2"),
    ("198.18.0.4", L4::Udp, 5000, "198.19.0.3"),
    ("198.18.0.4", L4::Tcp, 4000, "198.19.0.2"),
    ("198.18.0.4", L4::Tcp, 5000, "198.19.0.3"),
    ("2001:db8:18::4", L4::Udp, 4000, "2001:db8:19::2"),
    ("2001:db8:18::4", L4::Udp, 5000, "2001:db8:19::3"),
    ("2001:db8:18::4", L4::Tcp, 4000, "2001:db8:19::2"),
    ("2001:db8:18::4", L4::Tcp, 5000, "2001:db8:19::3"),
];
/// Remux address mode: capture addresses that pass unchanged.
const RMX_ADDR: &[&str] = &["203.0.113.2", "2001:db8:113::2"];
/// Remux port mode: (app host, protocol, source port) -> capture.
const RMX_PORT: &[(&str, L4, u16, &str)] = &[
    ("198.19.0.2", L4::Udp, 4000, "203.0.113.4"),
    ("198.19.0.3", L4::Udp, 5000, "203.0.113.4"),
    ("198.19.0.2", L4::Tcp, 4000, "203.0.113.4"),
    ("198.19.0.3", L4::Tcp, 5000, "203.0.113.4"),
    ("2001:db8:19::2", L4::Udp, 4000, "2001:db8:113::4"),
    ("2001:db8:19::3", L4::Udp, 5000, "2001:db8:113::4"),
    ("2001:db8:19::2", L4::Tcp, 4000, "2001:db8:113::4"),
    ("2001:db8:19::3", L4::Tcp, 5000, "2001:db8:113::4"),
];

fn app_mac(app: IpAddr) -> &'static str {
    if [ip("198.19.0.3"), ip("2001:db8:19::3")].contains(&app) {
        APP3
    } else {
        APP2
    }
}

/// An address of a family: half the time one that `hits` (the table under test's keys),
/// else another of the fixtures' (captures, aliases, app hosts, own addresses) or any
/// test-range one.
fn addr_pool(is_v6: bool, hits: &[&str]) -> BoxedStrategy<IpAddr> {
    let family = |v: Vec<IpAddr>| -> Vec<IpAddr> {
        v.into_iter().filter(|a| a.is_ipv6() == is_v6).collect()
    };
    let hits = family(hits.iter().map(|&a| ip(a)).collect());
    let mut known: Vec<IpAddr> = AGG_MAP
        .iter()
        .flat_map(|&(c, a, _)| [ip(c), ip(a)])
        .collect();
    known.extend(AGG_OWN.iter().flat_map(|own| own.iter().map(|&a| ip(a))));
    known.extend(RMX_PORT.iter().map(|&(app, ..)| ip(app)));
    prop_oneof![2 => select(hits), 1 => select(family(known)), 1 => test_range_addr(is_v6)].boxed()
}

/// Ports of the fixtures' port-mode circuits, and any other.
fn fixture_or_random_port() -> impl Strategy<Value = u16> {
    prop_oneof![Just(4000u16), Just(5000), any::<u16>()]
}

/// A packet, an address from `addr_pool(hits)`, a device, a port, a TTL, an in-port.
fn fixture_case(
    hits: Vec<&'static str>,
) -> impl Strategy<Value = (Pkt, IpAddr, IpAddr, u16, u8, u16)> {
    (any::<bool>(), pkt()).prop_flat_map(move |(is_v6, p)| {
        (
            Just(p),
            addr_pool(is_v6, &hits),
            device(is_v6),
            fixture_or_random_port(),
            ttl(),
            0u16..2,
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The aggregator forwards a packet exactly when its destination is a capture
    /// address; the rest goes to the slow path (the port's own addresses) or is dropped.
    #[test]
    fn aggregator_forwards_only_capture_addresses((p, dst, device, _, ttl, in_port) in fixture_case(AGG_MAP.iter().map(|e| e.0).collect())) {
        let agg = aggregator();
        let own_mac = if in_port == 0 { AGG_LINE } else { AGG_UPLINK };
        let sent = build(&p, ROUTER, own_mac, device, dst, ttl);
        let (v, tunnelled) = agg.run(in_port, &sent);
        match AGG_MAP.iter().find(|&&(c, ..)| ip(c) == dst) {
            None => {
                prop_assert!(!matches!(v, Verdict::Forward(_)), "{} is no capture address, yet {:?}", dst, v);
                let own = AGG_OWN[in_port as usize].iter().any(|&a| ip(a) == dst);
                // The slow path gets what it answers: echo requests to the port itself.
                let echo = p.transport == Transport::Icmp && ICMP_ECHO.contains(&p.icmp_type(dst.is_ipv6()));
                let want = match (own, echo) {
                    (true, true) => Verdict::SlowPath,
                    (true, false) => Verdict::Drop(DropReason::NotAnswered),
                    (false, _) => Verdict::Drop(DropReason::NoCircuit),
                };
                prop_assert_eq!(v, want);
            }
            Some(_) if ttl <= 1 => prop_assert_eq!(v, Verdict::Drop(DropReason::TtlExpired)),
            Some(&(_, alias, outer_v6)) => {
                prop_assert_eq!(v, Verdict::Forward(1));
                let inner = inner_of(&tunnelled, outer_v6)?;
                check_hop("aggregator", &sent, inner, &build(&p, AGG_UPLINK, INNER, device, ip(alias), ttl - 1))?;
            }
        }
    }

    /// The demux forwards a tunnelled packet exactly when its (alias, protocol, port) or
    /// alias has a circuit, port mode first.
    #[test]
    fn demux_forwards_only_circuits((mut p, dst, device, dport, ttl, _) in fixture_case(DMX_ADDR.iter().map(|e| e.0).chain(DMX_PORT.iter().map(|e| e.0)).collect())) {
        p.dport = dport;
        let dmx = demux();
        let inner = build(&p, AGG_UPLINK, INNER, device, dst, ttl);
        let (peer, local) = if dst.is_ipv6() { ("2001:db8:ffff::1", "2001:db8:ffff::2") } else { ("192.0.2.1", "192.0.2.2") };
        let (v, delivered) = dmx.run(0, &vxlan(ip(peer), ip(local), 100, &inner));
        let by_port = p.l4().and_then(|l4| {
            DMX_PORT.iter().find(|&&(a, proto, port, _)| ip(a) == dst && proto == l4 && port == dport).map(|&(.., app)| (ip(app), ip(app)))
        });
        let by_addr = || DMX_ADDR.iter().find(|&&(a, _)| ip(a) == dst).map(|&(_, c)| (ip(c), ip("198.19.0.2")));
        match by_port.or_else(by_addr) {
            None => {
                prop_assert!(!matches!(v, Verdict::Forward(_)), "{} port {} has no circuit, yet {:?}", dst, dport, v);
                prop_assert_eq!(v, Verdict::Drop(DropReason::NoCircuit));
            }
            Some(_) if ttl <= 1 => prop_assert_eq!(v, Verdict::Drop(DropReason::TtlExpired)),
            Some((new_dst, app)) => {
                prop_assert_eq!(v, Verdict::Forward(1));
                check_hop("demux", &inner, &delivered, &build(&p, DMX_DC, app_mac(app), device, new_dst, ttl - 1))?;
            }
        }
    }

    /// The remux lets a reply out exactly when its source (address mode) or (source,
    /// protocol, source port) (port mode) has a circuit.
    #[test]
    fn remux_forwards_only_circuits((mut p, src, device, sport, ttl, _) in fixture_case(RMX_ADDR.iter().copied().chain(RMX_PORT.iter().map(|e| e.0)).collect())) {
        p.sport = sport;
        let rmx = remux();
        let reply = build(&p, app_mac(src), RMX_DC, src, device, ttl);
        let (v, out) = rmx.run(0, &reply);
        let by_port = p.l4().and_then(|l4| {
            RMX_PORT.iter().find(|&&(a, proto, port, _)| ip(a) == src && proto == l4 && port == sport).map(|&(.., c)| ip(c))
        });
        let by_addr = || RMX_ADDR.iter().any(|&c| ip(c) == src).then_some(src);
        match by_port.or_else(by_addr) {
            None => {
                prop_assert!(!matches!(v, Verdict::Forward(_)), "{} port {} has no circuit, yet {:?}", src, sport, v);
                prop_assert_eq!(v, Verdict::Drop(DropReason::NoCircuit));
            }
            Some(_) if ttl <= 1 => prop_assert_eq!(v, Verdict::Drop(DropReason::TtlExpired)),
            Some(new_src) => {
                prop_assert_eq!(v, Verdict::Forward(1));
                check_hop("remux", &reply, &out, &build(&p, RMX_OUT, ROUTER, new_src, device, ttl - 1))?;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The checksum functions on their own.

/// etherparse's Internet checksum of `data`, as the big-endian value on the wire.
fn etherparse_checksum(data: &[u8]) -> u16 {
    let c = etherparse::checksum::Sum16BitWords::new()
        .add_slice(data)
        .ones_complement();
    u16::from_be_bytes(c.to_ne_bytes())
}

/// A replacement of even length at an even offset: (offset, new bytes).
type Region = (usize, Vec<u8>);

/// A replacement inside `len` bytes.
fn region(len: usize) -> impl Strategy<Value = Region> {
    (1usize..=8, any::<Index>(), any::<[u8; 16]>()).prop_map(move |(words, at, new)| {
        (at.index(len / 2 - words + 1) * 2, new[..words * 2].to_vec())
    })
}

/// Data and two replacements in it.
fn data_and_regions() -> impl Strategy<Value = (Vec<u8>, Region, Region)> {
    vec(any::<u8>(), 16..1400).prop_flat_map(|d| {
        let n = d.len();
        (Just(d), region(n), region(n))
    })
}

/// Addresses for a direct rewrite: any test-range address, of one family.
fn rewrite_addrs() -> impl Strategy<Value = [IpAddr; 4]> {
    any::<bool>().prop_flat_map(|is_v6| {
        let a = || test_range_addr(is_v6);
        [a(), a(), a(), a()]
    })
}

/// The checksum fields of a frame: IPv4 header (0 for IPv6) and upper layer.
fn checksums_of(frame: &[u8]) -> (u16, u16) {
    let h = PacketHeaders::from_ethernet_slice(frame).unwrap();
    let ip = match &h.net {
        Some(NetHeaders::Ipv4(ip, _)) => ip.header_checksum,
        _ => 0,
    };
    let l4 = match &h.transport {
        Some(TransportHeader::Udp(u)) => u.checksum,
        Some(TransportHeader::Tcp(t)) => t.checksum,
        Some(TransportHeader::Icmpv4(i)) => i.checksum,
        Some(TransportHeader::Icmpv6(i)) => i.checksum,
        None => panic!("no transport"),
    };
    (ip, l4)
}

/// tarp's update of the upper-layer checksum `c` for an address change `d`.
fn update_l4(p: &Pkt, is_v6: bool, c: u16, d: Delta) -> u16 {
    match p.transport {
        Transport::Udp | Transport::UdpNoChecksum => checksum::update_udp(c, d),
        Transport::Icmp if !is_v6 => c, // ICMPv4 covers no pseudo-header
        Transport::Tcp | Transport::Icmp => checksum::update(c, d),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// tarp's full checksum agrees with etherparse's, odd lengths included.
    #[test]
    fn checksum_matches_etherparse(data in vec(any::<u8>(), 0..1400)) {
        prop_assert_eq!(checksum::checksum(&data), etherparse_checksum(&data));
    }

    /// RFC 1624: folding `Delta::of(old, new)` into the checksum equals recomputing it,
    /// for one replacement and, through `Delta::then`, for two.
    #[test]
    fn incremental_update_matches_full_recompute((data, (at1, new1), (at2, new2)) in data_and_regions()) {
        let before = checksum::checksum(&data);
        let mut once = data.clone();
        once[at1..at1 + new1.len()].copy_from_slice(&new1);
        let d1 = Delta::of(&data[at1..at1 + new1.len()], &new1);
        let mut twice = once.clone();
        twice[at2..at2 + new2.len()].copy_from_slice(&new2);
        let d2 = Delta::of(&once[at2..at2 + new2.len()], &new2);
        // The one case where eqn. 3 and a recompute differ: data summing to zero, whose
        // checksum is 0xffff by recompute and -0 = 0x0000 by update. Not a packet.
        prop_assume!(once.iter().any(|&b| b != 0) && twice.iter().any(|&b| b != 0));
        prop_assert_eq!(checksum::update(before, d1), checksum::checksum(&once));
        prop_assert_eq!(checksum::update(before, d1.then(d2)), checksum::checksum(&twice));
        prop_assert_eq!(checksum::update(checksum::update(before, d1), d2), etherparse_checksum(&twice));
    }

    /// Rewriting the source, the destination or both of a random packet and updating its
    /// checksums with `update` / `update_udp` gives what etherparse computes for the
    /// rewritten packet, TTL decrement (`Delta::of_word`) included; a zero UDP checksum
    /// stays zero, an ICMPv4 checksum does not move.
    #[test]
    fn address_rewrite_matches_etherparse(p in pkt(), [src, dst, new_src, new_dst] in rewrite_addrs(), ttl in 2u8..=255) {
        let is_v6 = src.is_ipv6();
        let (ip0, l40) = checksums_of(&build(&p, ROUTER, AGG_LINE, src, dst, ttl));
        let ds = Delta::of_addr(src, new_src);
        let dd = Delta::of_addr(dst, new_dst);

        let (ip1, l41) = checksums_of(&build(&p, ROUTER, AGG_LINE, src, new_dst, ttl));
        prop_assert_eq!(update_l4(&p, is_v6, l40, dd), l41, "destination rewrite, upper layer");
        let (ip2, l42) = checksums_of(&build(&p, ROUTER, AGG_LINE, new_src, new_dst, ttl));
        prop_assert_eq!(update_l4(&p, is_v6, l40, ds.then(dd)), l42, "both addresses, upper layer");
        if !is_v6 {
            prop_assert_eq!(checksum::update(ip0, dd), ip1, "destination rewrite, IPv4 header");
            prop_assert_eq!(checksum::update(ip0, ds.then(dd)), ip2, "both addresses, IPv4 header");
            let proto = match p.transport {
                Transport::Udp | Transport::UdpNoChecksum => 17u16,
                Transport::Tcp => 6,
                Transport::Icmp => 1,
            };
            let (ip3, _) = checksums_of(&build(&p, ROUTER, AGG_LINE, src, new_dst, ttl - 1));
            let word = (ttl as u16) << 8 | proto;
            let dt = Delta::of_word(word, word - 0x0100);
            prop_assert_eq!(checksum::update(checksum::update(ip0, dd), dt), ip3, "TTL decrement, IPv4 header");
        }
        if p.transport == Transport::UdpNoChecksum && !is_v6 {
            prop_assert_eq!((l40, l41, l42), (0, 0, 0));
        }
    }
}
