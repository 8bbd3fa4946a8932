//! Golden tests for the Internet's packets: fragments, ICMP errors, packets too big for
//! the tunnel, MSS clamping, pings to port-mode capture addresses and hostile input,
//! through the fixtures' pipelines. Packets are built, and every output decoded and its
//! checksums recomputed, by `etherparse` (an implementation nobody here wrote).

use crate::support::*;
use etherparse::{
    icmpv4, Icmpv4Type, Icmpv6Type, Ipv4Header, NetHeaders, PacketBuilder, PacketHeaders,
    TcpOptionElement, TransportHeader,
};
use forwarder::metrics::{circuit_counters, CircuitCounters, TO_APP, TO_DEVICE};
use forwarder::pipeline::{split, Context, DropReason, Split, VecBuf, Verdict};
use forwarder::tables::counted::{circuits_of, label as counted_label};
use forwarder::tables::{CircuitSlots, Role};

const DEV: &str = "198.51.100.10";
const DEV6: &str = "2001:db8:51::10";
/// The tunnel's inner budget: a 1500-byte path minus VXLAN over IPv4.
const INNER_MTU: usize = 1450;

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + len) as u8).collect()
}

fn headers(f: &[u8]) -> PacketHeaders<'_> {
    PacketHeaders::from_ethernet_slice(f).unwrap()
}

fn ipv4(f: &[u8]) -> Ipv4Header {
    match headers(f).net {
        Some(NetHeaders::Ipv4(h, _)) => h,
        other => panic!("not IPv4: {other:?}"),
    }
}

/// Sets the IPv4 identification and DF flag of a frame built by etherparse.
fn set_id_df(mut f: Vec<u8>, id: u16, df: bool) -> Vec<u8> {
    f[18..20].copy_from_slice(&id.to_be_bytes());
    f[20] = if df { 0x40 } else { 0 };
    fix_ipv4_header_checksum(&mut f, 14);
    f
}

/// The inner frame of a tunnel packet (IPv4 outer).
fn inner(tunnelled: &[u8]) -> Vec<u8> {
    tunnelled[50..].to_vec()
}

fn split_all(bx: &Box_, how: Split, f: &[u8]) -> Vec<Vec<u8>> {
    let mut pieces = Vec::new();
    let (_, n) = split(
        &bx.snap,
        how,
        f,
        14,
        |len| Some(VecBuf::new(&vec![0u8; len])),
        |_, b| pieces.push(forwarder::pipeline::PacketBuf::data(&b).to_vec()),
    )
    .unwrap();
    assert_eq!(n, pieces.len());
    pieces
}

/// The aggregator of the fixtures with pings answered at the port-mode capture addresses.
fn aggregator_answering_pings() -> Box_ {
    Box_::new(
        vec![
            port(
                "line0",
                Role::Aggregator,
                AGG_LINE,
                &["203.0.113.1", "2001:db8:113::1"],
            ),
            port("uplink", Role::Aggregator, AGG_UPLINK, &["192.0.2.1"]),
        ],
        r#"
        tunnels = [{ id = 1, local = "192.0.2.1", remote = "192.0.2.2", vni = 100, inner_dst_mac = "02:00:00:00:0f:0f" }]
        aggregator = [
          { capture = "203.0.113.2", alias = "198.18.0.3", tunnel = 1, line = "line0" },
          { capture = "203.0.113.4", alias = "198.18.0.4", tunnel = 1, line = "line0", answer_ping = true },
          { capture = "2001:db8:113::4", alias = "2001:db8:18::4", tunnel = 1, line = "line0", answer_ping = true },
        ]
        routes = [{ prefix = "192.0.2.0/24", port = "uplink" }]
        "#,
        &[(1, "192.0.2.2", DMX_TUN)],
    )
}

// ---------------------------------------------------------------------------------------
// Too big for the tunnel.

#[test]
fn df_packet_too_big_for_the_tunnel_gets_fragmentation_needed_from_the_capture_address() {
    let agg = aggregator();
    let sent = set_id_df(
        frame(
            ROUTER,
            AGG_LINE,
            ip(DEV),
            ip("203.0.113.2"),
            64,
            L4::Udp,
            5555,
            7000,
            &payload(1472),
        ),
        0x1234,
        true,
    );
    let (v, out) = agg.run(0, &sent);
    assert_eq!(v, Verdict::Icmp(0));
    // Back to the router that brought it, from the line's MAC.
    assert_eq!(&out[..6], &mac(ROUTER).0);
    assert_eq!(&out[6..12], &mac(AGG_LINE).0);
    let (src, dst, _) = check_checksums(&out).unwrap();
    assert_eq!((src, dst), (ip("203.0.113.2"), ip(DEV)));
    let h = headers(&out);
    let Some(TransportHeader::Icmpv4(icmp)) = h.transport else {
        panic!("not ICMP: {:?}", h.transport)
    };
    assert_eq!(
        icmp.icmp_type,
        Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::FragmentationNeeded {
            next_hop_mtu: INNER_MTU as u16
        })
    );
    // The quote is the packet as it arrived, cut so that the error is 576 bytes.
    assert_eq!(ipv4(&out).total_len as usize, 576);
    assert_eq!(h.payload.slice(), &sent[14..14 + 548]);
    // One byte less fits and crosses the tunnel.
    let fits = frame(
        ROUTER,
        AGG_LINE,
        ip(DEV),
        ip("203.0.113.2"),
        64,
        L4::Udp,
        5555,
        7000,
        &payload(1422),
    );
    assert_eq!(agg.run(0, &fits).0, Verdict::Forward(1));
}

#[test]
fn ipv6_packet_too_big_for_the_tunnel_gets_packet_too_big() {
    let agg = aggregator();
    let sent = frame(
        ROUTER,
        AGG_LINE,
        ip(DEV6),
        ip("2001:db8:113::2"),
        64,
        L4::Udp,
        5555,
        7000,
        &payload(1452),
    );
    let (v, out) = agg.run(0, &sent);
    assert_eq!(v, Verdict::Icmp(0));
    let (src, dst, hops) = check_checksums(&out).unwrap();
    assert_eq!((src, dst, hops), (ip("2001:db8:113::2"), ip(DEV6), 64));
    let h = headers(&out);
    let Some(TransportHeader::Icmpv6(icmp)) = h.transport else {
        panic!("not ICMPv6: {:?}", h.transport)
    };
    assert_eq!(
        icmp.icmp_type,
        Icmpv6Type::PacketTooBig {
            mtu: INNER_MTU as u32
        }
    );
    // As much of the packet as fits in 1280 bytes.
    assert_eq!(out.len() - 14, 1280);
    assert_eq!(h.payload.slice(), &sent[14..14 + 1280 - 48]);
}

#[test]
fn df_clear_packet_too_big_is_split_before_the_tunnel() {
    let agg = aggregator();
    let body = payload(2972); // a 3000-byte IPv4 packet
    let sent = set_id_df(
        frame(
            ROUTER,
            AGG_LINE,
            ip(DEV),
            ip("203.0.113.2"),
            64,
            L4::Udp,
            5555,
            7000,
            &body,
        ),
        0x4242,
        false,
    );
    let (v, out) = agg.run(0, &sent);
    assert_eq!(v, Verdict::Fragment(Split::Tunnel(0)));
    let pieces = split_all(&agg, Split::Tunnel(0), &out);
    assert_eq!(pieces.len(), 3);
    let mut inners = Vec::new();
    for p in &pieces {
        assert!(
            p.len() - 14 <= 1500,
            "outer packet of {} bytes",
            p.len() - 14
        );
        check_checksums(p).unwrap();
        let i = inner(p);
        assert!(i.len() - 14 <= INNER_MTU);
        assert_eq!(ipv4(&i).identification, 0x4242);
        inners.push(i);
    }
    // Reassembled, it is the packet the tunnel would have carried whole.
    let want = set_id_df(
        frame(
            AGG_UPLINK,
            INNER,
            ip(DEV),
            ip("198.18.0.3"),
            63,
            L4::Udp,
            5555,
            7000,
            &body,
        ),
        0x4242,
        false,
    );
    assert_eq!(reassemble_v4(&inners), want);
    // Every piece of a datagram takes the same outer source port (the DC's RSS hash).
    let ports: Vec<_> = pieces.iter().map(|p| &p[34..36]).collect();
    assert!(ports.windows(2).all(|w| w[0] == w[1]));
}

// ---------------------------------------------------------------------------------------
// Fragments through the demux and remux in port mode.

#[test]
fn port_mode_fragments_all_reach_the_app_host() {
    let (agg, dmx) = (aggregator(), demux());
    let body = payload(2972);
    let datagram = set_id_df(
        frame(
            ROUTER,
            AGG_LINE,
            ip(DEV),
            ip("203.0.113.4"),
            64,
            L4::Udp,
            5555,
            4000,
            &body,
        ),
        0x0777,
        false,
    );
    let frags = fragment_v4(&datagram, 1400);
    assert_eq!(frags.len(), 3);
    let mut delivered = Vec::new();
    let mut outer_ports = Vec::new();
    for f in &frags {
        let (v, t) = agg.run(0, f);
        assert_eq!(v, Verdict::Forward(1));
        outer_ports.push(t[34..36].to_vec());
        let (v, d) = dmx.run(0, &t);
        assert_eq!(
            v,
            Verdict::Forward(1),
            "fragment {:?}",
            ipv4(f).fragment_offset
        );
        assert_eq!(&d[..6], &mac(APP2).0);
        delivered.push(d);
    }
    assert!(
        outer_ports.windows(2).all(|w| w[0] == w[1]),
        "{outer_ports:?}"
    );
    let whole = reassemble_v4(&delivered);
    check_checksums(&whole).unwrap();
    let want = set_id_df(
        frame(
            DMX_DC,
            APP2,
            ip(DEV),
            ip("198.19.0.2"),
            62,
            L4::Udp,
            5555,
            4000,
            &body,
        ),
        0x0777,
        false,
    );
    assert_eq!(whole, want);
    // A later fragment of a datagram whose first was never seen is dropped, counted.
    let other = fragment_v4(&set_id_df(datagram.clone(), 0x0778, false), 1400);
    let (_, t) = agg.run(0, &other[2]);
    assert_eq!(dmx.run(0, &t).0, Verdict::Drop(DropReason::Fragment));
}

#[test]
fn remux_port_mode_reply_fragments_all_get_the_capture_address() {
    let rmx = remux();
    let reply = set_id_df(
        frame(
            ROUTER,
            RMX_DC,
            ip("198.19.0.2"),
            ip(DEV),
            64,
            L4::Udp,
            4000,
            5555,
            &[0x42; 3000],
        ),
        0x0100,
        false,
    );
    let frags = fragment_v4(&reply, 1500);
    assert_eq!(frags.len(), 3);
    let mut out = Vec::new();
    for f in &frags {
        let (v, o) = rmx.run(0, f);
        assert_eq!(v, Verdict::Forward(1), "{:?}", ipv4(f));
        let h = ipv4(&o);
        assert_eq!(h.source, [203, 0, 113, 4]);
        assert_eq!(h.header_checksum, h.calc_header_checksum());
        out.push(o);
    }
    // The device reassembles a datagram whose UDP checksum is right for its new source.
    let whole = reassemble_v4(&out);
    check_checksums(&whole).unwrap();
    assert_eq!(headers(&whole).payload.slice(), &[0x42; 3000][..]);
    let orphan = fragment_v4(&set_id_df(reply, 0x0101, false), 1500);
    assert_eq!(
        rmx.run(0, &orphan[1]).0,
        Verdict::Drop(DropReason::Fragment)
    );
}

#[test]
fn remux_splits_df_clear_replies_larger_than_the_way_out_and_drops_df_ones() {
    let rmx = remux();
    let body = payload(2972);
    let reply = set_id_df(
        frame(
            ROUTER,
            RMX_DC,
            ip("198.19.0.2"),
            ip(DEV),
            64,
            L4::Udp,
            4000,
            5555,
            &body,
        ),
        0x0200,
        false,
    );
    let (v, out) = rmx.run(0, &reply);
    assert_eq!(v, Verdict::Fragment(Split::Port(1)));
    let pieces = split_all(&rmx, Split::Port(1), &out);
    assert!(pieces.iter().all(|p| p.len() - 14 <= 1500));
    let want = set_id_df(
        frame(
            RMX_OUT,
            ROUTER,
            ip("203.0.113.4"),
            ip(DEV),
            63,
            L4::Udp,
            4000,
            5555,
            &body,
        ),
        0x0200,
        false,
    );
    assert_eq!(reassemble_v4(&pieces), want);
    let df = set_id_df(reply, 0x0201, true);
    assert_eq!(rmx.run(0, &df).0, Verdict::Drop(DropReason::TooBig));
}

// ---------------------------------------------------------------------------------------
// ICMP errors steered by the packet they quote.

/// An ICMPv4 error from `src` to `dst` quoting `quoted` (an Ethernet frame).
fn icmp4_error(
    eth_src: &str,
    eth_dst: &str,
    src: &str,
    dst: &str,
    t: Icmpv4Type,
    quoted: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(mac(eth_src).0, mac(eth_dst).0)
        .ipv4(ip4(src), ip4(dst), 64)
        .icmpv4(t)
        .write(&mut out, &quoted[14..])
        .unwrap();
    out
}

fn ip4(s: &str) -> [u8; 4] {
    s.parse::<std::net::Ipv4Addr>().unwrap().octets()
}

fn ip6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

/// Checks an ICMP error's own checksums and its quote's: the quoted IPv4 header and,
/// the datagram being quoted whole, its UDP checksum.
fn check_quote(f: &[u8], quote_src: &str, quote_dst: &str) {
    check_checksums(f).unwrap();
    let quoted = &headers(f).payload.slice().to_vec();
    let mut q = vec![0u8; 14];
    q[12] = if quoted[0] >> 4 == 6 { 0x86 } else { 0x08 };
    q[13] = if quoted[0] >> 4 == 6 { 0xdd } else { 0x00 };
    q.extend_from_slice(quoted);
    let (s, d, _) = check_checksums(&q).unwrap_or_else(|e| panic!("quote: {e}"));
    assert_eq!((s, d), (ip(quote_src), ip(quote_dst)));
}

#[test]
fn device_port_unreachable_about_a_reply_reaches_the_app_host_that_sent_it() {
    let (agg, dmx) = (aggregator(), demux());
    // The reply as the device saw it: from the capture address.
    let reply = frame(
        RMX_OUT,
        ROUTER,
        ip("203.0.113.4"),
        ip(DEV),
        60,
        L4::Udp,
        4000,
        5555,
        b"hello",
    );
    let err = icmp4_error(
        ROUTER,
        AGG_LINE,
        DEV,
        "203.0.113.4",
        Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::Port),
        &reply,
    );
    let (v, t) = agg.run(0, &err);
    assert_eq!(v, Verdict::Forward(1));
    let (v, d) = dmx.run(0, &t);
    assert_eq!(v, Verdict::Forward(1));
    assert_eq!(&d[..6], &mac(APP2).0);
    let (src, dst, _) = check_checksums(&d).unwrap();
    assert_eq!((src, dst), (ip(DEV), ip("198.19.0.2")));
    // The quoted reply now names the app host as its source: the kernel finds the socket.
    check_quote(&d, "198.19.0.2", DEV);
}

#[test]
fn router_packet_too_big_about_a_reply_reaches_the_app_host_ipv6() {
    let (agg, dmx) = (aggregator(), demux());
    let reply = frame(
        RMX_OUT,
        ROUTER,
        ip("2001:db8:113::4"),
        ip(DEV6),
        60,
        L4::Udp,
        4000,
        5555,
        &payload(100),
    );
    let mut err = Vec::new();
    PacketBuilder::ethernet2(mac(ROUTER).0, mac(AGG_LINE).0)
        .ipv6(ip6("2001:db8:ffff::fe"), ip6("2001:db8:113::4"), 64)
        .icmpv6(Icmpv6Type::PacketTooBig { mtu: 1280 })
        .write(&mut err, &reply[14..])
        .unwrap();
    let (v, t) = agg.run(0, &err);
    assert_eq!(v, Verdict::Forward(1));
    let (v, d) = dmx.run(0, &t);
    assert_eq!(v, Verdict::Forward(1));
    let (src, dst, _) = check_checksums(&d).unwrap();
    assert_eq!((src, dst), (ip("2001:db8:ffff::fe"), ip("2001:db8:19::2")));
    check_quote(&d, "2001:db8:19::2", DEV6);
    let h = headers(&d);
    assert!(
        matches!(h.transport, Some(TransportHeader::Icmpv6(ref i)) if i.icmp_type == Icmpv6Type::PacketTooBig { mtu: 1280 })
    );
}

#[test]
fn app_host_port_unreachable_leaves_from_the_capture_address() {
    let rmx = remux();
    // A device's datagram as the app host got it (port mode: to the app host itself).
    let got = frame(
        DMX_DC,
        APP2,
        ip(DEV),
        ip("198.19.0.2"),
        62,
        L4::Udp,
        5555,
        4000,
        b"hi",
    );
    let err = icmp4_error(
        APP2,
        RMX_DC,
        "198.19.0.2",
        DEV,
        Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::Port),
        &got,
    );
    let (v, o) = rmx.run(0, &err);
    assert_eq!(v, Verdict::Forward(1));
    let (src, dst, _) = check_checksums(&o).unwrap();
    assert_eq!((src, dst), (ip("203.0.113.4"), ip(DEV)));
    check_quote(&o, DEV, "203.0.113.4");
}

// ---------------------------------------------------------------------------------------
// MSS clamping.

fn mss_of(f: &[u8]) -> u16 {
    let h = headers(f);
    let Some(TransportHeader::Tcp(t)) = h.transport else {
        panic!("not TCP")
    };
    t.options_iterator()
        .find_map(|o| match o {
            Ok(TcpOptionElement::MaximumSegmentSize(m)) => Some(m),
            _ => None,
        })
        .expect("an MSS option")
}

#[test]
fn syns_are_clamped_to_the_tunnel_both_ways() {
    let (agg, rmx) = (aggregator(), remux());
    // A device's SYN into the tunnel (IPv4 and IPv6 inner).
    for (dev, cap, want) in [(DEV, "203.0.113.2", 1410), (DEV6, "2001:db8:113::2", 1390)] {
        let (v, t) = agg.run(0, &syn(dev, 5555, cap, 80, (ROUTER, AGG_LINE), false, 1460));
        assert_eq!(v, Verdict::Forward(1));
        let i = inner(&t);
        check_checksums(&i).unwrap();
        assert_eq!(mss_of(&i), want, "{dev}");
    }
    // An app host's SYN-ACK leaving the remux: the device will size its segments by it.
    let (v, o) = rmx.run(
        0,
        &syn("198.19.0.2", 4000, DEV, 5555, (APP2, RMX_DC), true, 1460),
    );
    assert_eq!(v, Verdict::Forward(1));
    check_checksums(&o).unwrap();
    assert_eq!(mss_of(&o), 1410);
    // A smaller MSS is left alone.
    let (_, o) = rmx.run(
        0,
        &syn("198.19.0.2", 4000, DEV, 5555, (APP2, RMX_DC), true, 1200),
    );
    assert_eq!(mss_of(&o), 1200);
    check_checksums(&o).unwrap();
}

// ---------------------------------------------------------------------------------------
// Pings to capture addresses.

#[test]
fn port_mode_capture_address_answers_ping_itself() {
    let agg = aggregator_answering_pings();
    for (dev, cap) in [(DEV, "203.0.113.4"), (DEV6, "2001:db8:113::4")] {
        let req = frame(
            ROUTER,
            AGG_LINE,
            ip(dev),
            ip(cap),
            61,
            L4::Echo,
            0x77,
            3,
            b"are you there",
        );
        let (v, out) = agg.run(0, &req);
        assert_eq!(v, Verdict::Icmp(0));
        assert_eq!(
            (&out[..6], &out[6..12]),
            (&mac(ROUTER).0[..], &mac(AGG_LINE).0[..])
        );
        let (src, dst, ttl) = check_checksums(&out).unwrap();
        assert_eq!((src, dst, ttl), (ip(cap), ip(dev), 64));
        let h = headers(&out);
        let echo = match h.transport {
            Some(TransportHeader::Icmpv4(i)) => match i.icmp_type {
                Icmpv4Type::EchoReply(e) => e,
                t => panic!("{t:?}"),
            },
            Some(TransportHeader::Icmpv6(i)) => match i.icmp_type {
                Icmpv6Type::EchoReply(e) => e,
                t => panic!("{t:?}"),
            },
            t => panic!("{t:?}"),
        };
        assert_eq!((echo.id, echo.seq), (0x77, 3));
        assert_eq!(h.payload.slice(), b"are you there");
    }
    // An address-mode capture address is the app host's to answer: through the tunnel.
    let req = frame(
        ROUTER,
        AGG_LINE,
        ip(DEV),
        ip("203.0.113.2"),
        61,
        L4::Echo,
        1,
        1,
        b"x",
    );
    assert_eq!(agg.run(0, &req).0, Verdict::Forward(1));
}

// ---------------------------------------------------------------------------------------
// Hostile and odd input.

#[test]
fn martian_sources_are_dropped_at_the_aggregator() {
    let agg = aggregator();
    for src in [
        "203.0.113.4",
        "192.0.2.1",
        "127.0.0.1",
        "0.0.0.0",
        "224.0.0.5",
        "255.255.255.255",
    ] {
        let f = frame(
            ROUTER,
            AGG_LINE,
            ip(src),
            ip("203.0.113.2"),
            64,
            L4::Udp,
            1,
            2,
            b"",
        );
        assert_eq!(
            agg.run(0, &f).0,
            Verdict::Drop(DropReason::Martian),
            "{src}"
        );
    }
    for src in [
        "::1",
        "::",
        "ff02::1",
        "2001:db8:113::2",
        "::ffff:198.51.100.10",
    ] {
        let f = frame(
            ROUTER,
            AGG_LINE,
            ip(src),
            ip("2001:db8:113::4"),
            64,
            L4::Udp,
            1,
            2,
            b"",
        );
        assert_eq!(
            agg.run(0, &f).0,
            Verdict::Drop(DropReason::Martian),
            "{src}"
        );
    }
}

#[test]
fn group_destination_macs_carry_only_arp_and_nd() {
    let agg = aggregator();
    for dst_mac in [
        "ff:ff:ff:ff:ff:ff",
        "01:00:5e:00:00:05",
        "33:33:00:00:00:01",
    ] {
        let f = frame(
            ROUTER,
            dst_mac,
            ip(DEV),
            ip("203.0.113.2"),
            64,
            L4::Udp,
            1,
            2,
            b"",
        );
        assert_eq!(
            agg.run(0, &f).0,
            Verdict::Drop(DropReason::GroupAddress),
            "{dst_mac}"
        );
    }
}

#[test]
fn ipv4_header_checksums_are_verified() {
    let agg = aggregator();
    let mut f = frame(
        ROUTER,
        AGG_LINE,
        ip(DEV),
        ip("203.0.113.2"),
        64,
        L4::Udp,
        1,
        2,
        b"x",
    );
    f[14 + 10] ^= 0x01;
    assert_eq!(agg.run(0, &f).0, Verdict::Drop(DropReason::BadChecksum));
}

#[test]
fn tunnel_traffic_with_a_vni_the_peer_does_not_use_is_dropped() {
    let dmx = Box_::new(
        vec![
            port("tun", Role::Demux, DMX_TUN, &["192.0.2.2"]),
            port("dc", Role::Demux, DMX_DC, &["198.19.0.1"]),
        ],
        r#"
        tunnel_peers = [{ address = "192.0.2.1", vni = 100 }]
        demux = [{ mode = "address", alias = "198.18.0.3", capture = "203.0.113.2", app_host = "198.19.0.2" }]
        routes = [{ prefix = "198.19.0.0/24", port = "dc" }]
        "#,
        &[(1, "198.19.0.2", APP2)],
    );
    let agg = aggregator(); // tunnel 1 uses VNI 100
    let (_, t) = agg.run(
        0,
        &frame(
            ROUTER,
            AGG_LINE,
            ip(DEV),
            ip("203.0.113.2"),
            64,
            L4::Udp,
            1,
            7000,
            b"x",
        ),
    );
    assert_eq!(dmx.run(0, &t).0, Verdict::Forward(1));
    let mut wrong = t.clone();
    wrong[14 + 20 + 8 + 4..14 + 20 + 8 + 7].copy_from_slice(&[0, 0, 200]);
    assert_eq!(dmx.run(0, &wrong).0, Verdict::Drop(DropReason::BadVni));
}

#[test]
fn the_slow_path_is_rate_limited_per_port_and_arp_keeps_its_own_budget() {
    let agg = aggregator();
    let ping = frame(
        ROUTER,
        AGG_LINE,
        ip(DEV),
        ip("203.0.113.1"),
        64,
        L4::Echo,
        1,
        1,
        b"flood",
    );
    let mut arp = vec![0xffu8; 6];
    arp.extend_from_slice(&mac(ROUTER).0);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    let mut ctx = Context::new(2);
    let run = |f: &[u8], ctx: &mut Context| {
        let mut p = [VecBuf::new(f)];
        let mut v = [Verdict::SlowPath];
        forwarder::pipeline::process(&agg.snap, ctx, 0, &mut p, &mut v);
        v[0]
    };
    let verdicts: Vec<_> = (0..300).map(|_| run(&ping, &mut ctx)).collect();
    let passed = verdicts.iter().filter(|v| **v == Verdict::SlowPath).count();
    assert_eq!(passed, forwarder::pipeline::SLOW_BURST as usize);
    assert!(verdicts[passed..]
        .iter()
        .all(|v| *v == Verdict::Drop(DropReason::SlowPathLimit)));
    // The flood at the port's own address does not starve ARP.
    assert_eq!(run(&arp, &mut ctx), Verdict::SlowPath);
    // A second later the bucket has refilled.
    ctx.set_now_ms(1000);
    assert_eq!(run(&ping, &mut ctx), Verdict::SlowPath);
    // What the slow path never answers does not reach it at all.
    let udp = frame(
        ROUTER,
        AGG_LINE,
        ip(DEV),
        ip("203.0.113.1"),
        64,
        L4::Udp,
        1,
        53,
        b"",
    );
    assert_eq!(run(&udp, &mut ctx), Verdict::Drop(DropReason::NotAnswered));
}

// ---------------------------------------------------------------------------------------
// Symmetric return.

#[test]
fn symmetric_reply_goes_back_through_the_aggregator_and_out_of_its_line() {
    let rmx = Box_::new(
        vec![
            port("dc", Role::Remux, RMX_DC, &["198.19.0.254"]),
            port("out", Role::Remux, RMX_OUT, &["192.0.2.3"]),
        ],
        r#"
        tunnels = [{ id = 7, local = "192.0.2.3", remote = "192.0.2.1", vni = 100 }]
        remux = [
          { mode = "port", app_host = "198.19.0.2", protocol = "udp", port = 4000, capture = "203.0.113.6" },
          { mode = "port", app_host = "198.19.0.2", protocol = "udp", port = 4001, capture = "203.0.113.4" },
        ]
        return_tunnels = [{ capture = "203.0.113.6", tunnel = 7 }]
        routes = [{ prefix = "0.0.0.0/0", port = "out", via = "192.0.2.254" }, { prefix = "192.0.2.0/24", port = "out" }]
        "#,
        &[(1, "192.0.2.254", ROUTER), (1, "192.0.2.1", AGG_UPLINK)],
    );
    let agg = Box_::new(
        vec![
            port("line0", Role::Aggregator, AGG_LINE, &["203.0.113.1"]),
            port("uplink", Role::Aggregator, AGG_UPLINK, &["192.0.2.1"]),
        ],
        r#"
        tunnels = [{ id = 1, local = "192.0.2.1", remote = "192.0.2.2", vni = 100 }]
        tunnel_peers = [{ address = "192.0.2.3", vni = 100 }]
        aggregator = [
          { capture = "203.0.113.6", alias = "198.18.0.6", tunnel = 1, line = "line0", return_via = "203.0.113.254" },
        ]
        routes = [{ prefix = "192.0.2.0/24", port = "uplink" }]
        "#,
        &[(1, "192.0.2.2", DMX_TUN), (0, "203.0.113.254", ROUTER)],
    );
    let body = payload(300);
    let reply = frame(
        APP2,
        RMX_DC,
        ip("198.19.0.2"),
        ip(DEV),
        64,
        L4::Udp,
        4000,
        5555,
        &body,
    );
    let (v, t) = rmx.run(0, &reply);
    assert_eq!(v, Verdict::Forward(1));
    // Into the tunnel to the aggregator, not to the Internet router.
    assert_eq!(&t[..6], &mac(AGG_UPLINK).0);
    let (s, d, _) = check_checksums(&t).unwrap();
    assert_eq!((s, d), (ip("192.0.2.3"), ip("192.0.2.1")));
    // The aggregator sends it out of line0 to the line's gateway, as the capture address.
    let (v, out) = agg.run(1, &t);
    assert_eq!(v, Verdict::Forward(0));
    let want = frame(
        AGG_LINE,
        ROUTER,
        ip("203.0.113.6"),
        ip(DEV),
        62,
        L4::Udp,
        4000,
        5555,
        &body,
    );
    assert_eq!(out, want);
    // An asymmetric circuit's reply still leaves the remux towards the Internet.
    let other = frame(
        APP2,
        RMX_DC,
        ip("198.19.0.2"),
        ip(DEV),
        64,
        L4::Udp,
        4001,
        5555,
        b"x",
    );
    let (v, o) = rmx.run(0, &other);
    assert_eq!((v, &o[..6]), (Verdict::Forward(1), &mac(ROUTER).0[..]));
    // A tunnel packet from the remux for a capture address without symmetric return is
    // not sent out of the line.
    let mut t2 = t.clone();
    let at = 50 + 14 + 12; // inner source address
    t2[at..at + 4].copy_from_slice(&[203, 0, 113, 4]);
    fix_ipv4_header_checksum(&mut t2, 50 + 14);
    assert_eq!(agg.run(1, &t2).0, Verdict::Drop(DropReason::NoCircuit));
}

/// Turns on per-circuit counting (`circuit_metrics`) for a box: slots for its circuits,
/// and counters its worker context writes.
fn counting(bx: &mut Box_) -> (CircuitSlots, CircuitCounters) {
    let mut slots = CircuitSlots::new(16);
    bx.snap.counted = slots.assign(&circuits_of(&bx.snap)).0;
    let counters = circuit_counters(slots.len());
    bx.ctx.borrow_mut().set_circuit_counters(counters.clone());
    (slots, counters)
}

/// Packets and IP bytes counted for the circuit labelled `label`, in direction `dir`.
fn counted(slots: &CircuitSlots, c: &CircuitCounters, label: &str, dir: usize) -> (u64, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    let slot = (0..slots.len())
        .find(|&s| slots.key(s).is_some_and(|k| counted_label(k) == label))
        .unwrap_or_else(|| panic!("no slot for {label}"));
    (
        c[slot].packets[dir].load(Relaxed),
        c[slot].bytes[dir].load(Relaxed),
    )
}

#[test]
fn circuits_are_counted_one_by_one_at_the_demux_and_the_remux() {
    let agg = aggregator();
    let (mut dmx, mut rmx) = (demux(), remux());
    let (dslots, dc) = counting(&mut dmx);
    let (rslots, rc) = counting(&mut rmx);
    // Both ends name the circuits the same way, by their application side.
    let labels = |s: &CircuitSlots| {
        let mut l: Vec<String> = (0..s.len())
            .filter_map(|i| s.key(i))
            .map(counted_label)
            .collect();
        l.sort();
        l
    };
    assert!(labels(&dslots).contains(&"udp/198.19.0.2:4000".to_string()));
    assert!(labels(&rslots).contains(&"udp/198.19.0.2:4000".to_string()));
    assert!(labels(&dslots).contains(&"203.0.113.2".to_string()));
    assert!(labels(&rslots).contains(&"tcp/[2001:db8:19::3]:5000".to_string()));

    // Devices to the apps: 3 datagrams on the port-mode circuit, 2 on the address-mode
    // one, 1 on another port-mode one, 1 over IPv6; every one through the aggregator
    // and the demux.
    let sends = [
        ("203.0.113.4", 4000, 100),
        ("203.0.113.4", 4000, 200),
        ("203.0.113.4", 4000, 300),
        ("203.0.113.2", 7000, 10),
        ("203.0.113.2", 7001, 20),
        ("203.0.113.4", 5000, 50),
        ("2001:db8:113::4", 4000, 60),
    ];
    for (dst, port, len) in sends {
        let src = if dst.contains(':') { DEV6 } else { DEV };
        let f = frame(
            ROUTER,
            AGG_LINE,
            ip(src),
            ip(dst),
            64,
            L4::Udp,
            5555,
            port,
            &payload(len),
        );
        let (v, t) = agg.run(0, &f);
        assert_eq!(v, Verdict::Forward(1));
        assert_eq!(dmx.run(0, &t).0, Verdict::Forward(1), "{dst}:{port}");
    }
    // IP bytes: 20 + 8 + payload (IPv6: 40 + 8 + payload).
    assert_eq!(
        counted(&dslots, &dc, "udp/198.19.0.2:4000", TO_APP),
        (3, 600 + 3 * 28)
    );
    assert_eq!(
        counted(&dslots, &dc, "203.0.113.2", TO_APP),
        (2, 30 + 2 * 28)
    );
    assert_eq!(
        counted(&dslots, &dc, "udp/198.19.0.3:5000", TO_APP),
        (1, 78)
    );
    assert_eq!(
        counted(&dslots, &dc, "udp/[2001:db8:19::2]:4000", TO_APP),
        (1, 108)
    );
    assert_eq!(
        counted(&dslots, &dc, "udp/198.19.0.2:4000", TO_DEVICE),
        (0, 0)
    );
    assert_eq!(counted(&dslots, &dc, "tcp/198.19.0.2:4000", TO_APP), (0, 0));

    // The apps' replies, through the remux: counted under the same circuits.
    for (src, sport, len) in [
        ("198.19.0.2", 4000, 40),
        ("198.19.0.2", 4000, 41),
        ("203.0.113.2", 7000, 5),
    ] {
        let f = frame(
            ROUTER,
            RMX_DC,
            ip(src),
            ip(DEV),
            64,
            L4::Udp,
            sport,
            5555,
            &payload(len),
        );
        assert_eq!(rmx.run(0, &f).0, Verdict::Forward(1), "{src}:{sport}");
    }
    assert_eq!(
        counted(&rslots, &rc, "udp/198.19.0.2:4000", TO_DEVICE),
        (2, 81 + 2 * 28)
    );
    assert_eq!(counted(&rslots, &rc, "203.0.113.2", TO_DEVICE), (1, 33));
    // Something no circuit holds is not counted anywhere.
    let stray = frame(
        ROUTER,
        RMX_DC,
        ip("198.19.0.7"),
        ip(DEV),
        64,
        L4::Udp,
        4000,
        5555,
        &payload(9),
    );
    assert_eq!(rmx.run(0, &stray).0, Verdict::Drop(DropReason::NoCircuit));
    let total: u64 = (0..rslots.len()).map(|s| counted_at(&rc, s)).sum();
    assert_eq!(total, 3);
}

fn counted_at(c: &CircuitCounters, slot: usize) -> u64 {
    c[slot].packets[TO_DEVICE].load(std::sync::atomic::Ordering::Relaxed)
}
