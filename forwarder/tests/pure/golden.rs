//! The patent's two walkthroughs (FIG 6: address mode, FIG 8: port mode) as golden tests,
//! with test-range addresses: every header field and checksum checked at every hop, for
//! UDP and TCP over IPv4 and IPv6. Expected frames are built by etherparse.

use std::net::IpAddr;

use crate::support::*;
use etherparse::{NetHeaders, PacketHeaders, TransportHeader};
use forwarder::pipeline::{DropReason, Verdict};

const PAYLOAD: &[u8] = b"tarp golden payload";

/// Checks the VXLAN outer headers of a frame leaving the aggregator's uplink and returns
/// the inner frame.
fn check_outer(frame: &[u8], outer_src: &str, outer_dst: &str, vni: u32) -> Vec<u8> {
    let h = PacketHeaders::from_ethernet_slice(frame).expect("outer parses");
    let eth = h.link.clone().unwrap().ethernet2().unwrap();
    assert_eq!(
        eth.destination,
        mac(DMX_TUN).0,
        "outer dst MAC is the demux's"
    );
    assert_eq!(
        eth.source,
        mac(AGG_UPLINK).0,
        "outer src MAC is the uplink's"
    );
    let udp_len = match (&h.net, &h.transport) {
        (Some(NetHeaders::Ipv4(ip4, _)), Some(TransportHeader::Udp(u))) => {
            assert_eq!(IpAddr::V4(ip4.source.into()), ip(outer_src));
            assert_eq!(IpAddr::V4(ip4.destination.into()), ip(outer_dst));
            assert_eq!(ip4.time_to_live, 64);
            assert!(ip4.dont_fragment);
            assert_eq!(
                ip4.header_checksum,
                ip4.calc_header_checksum(),
                "outer IPv4 checksum"
            );
            assert_eq!(ip4.total_len as usize, frame.len() - 14);
            assert_eq!(u.checksum, 0, "IPv4 outer UDP checksum is zero (RFC 7348)");
            u
        }
        (Some(NetHeaders::Ipv6(ip6, _)), Some(TransportHeader::Udp(u))) => {
            assert_eq!(IpAddr::V6(ip6.source.into()), ip(outer_src));
            assert_eq!(IpAddr::V6(ip6.destination.into()), ip(outer_dst));
            assert_eq!(ip6.hop_limit, 64);
            assert_eq!(ip6.payload_length as usize, frame.len() - 14 - 40);
            assert_eq!(
                u.checksum,
                u.calc_checksum_ipv6(ip6, h.payload.slice()).unwrap(),
                "outer UDP/IPv6 checksum"
            );
            u
        }
        other => panic!("outer is not UDP over IP: {other:?}"),
    }
    .clone();
    assert_eq!(udp_len.destination_port, 4789);
    assert!(
        udp_len.source_port >= 49152,
        "source port {} in the dynamic range",
        udp_len.source_port
    );
    let vx = h.payload.slice();
    assert_eq!(udp_len.length as usize, vx.len() + 8);
    assert_eq!(vx[0], 0x08, "VXLAN I flag");
    assert_eq!(&vx[1..4], &[0, 0, 0]);
    assert_eq!(u32::from_be_bytes([0, vx[4], vx[5], vx[6]]), vni);
    assert_eq!(vx[7], 0);
    vx[8..].to_vec()
}

/// FIG 6: device -> capture address; aggregator -> alias + tunnel; demux restores the
/// capture address for the app host that carries it; the reply leaves with the capture
/// address as source and passes the remux unchanged.
fn fig6(l4: L4, device: &str, capture: &str, alias: &str, app: &str) {
    let (agg, dmx, rmx) = (aggregator(), demux(), remux());
    let (dev, cap, alias, _app) = (ip(device), ip(capture), ip(alias), ip(app));

    let sent = frame(ROUTER, AGG_LINE, dev, cap, 64, l4, 40000, 4000, PAYLOAD);
    check_checksums(&sent).unwrap();
    let (v, tunnelled) = agg.run(0, &sent);
    assert_eq!(v, Verdict::Forward(1), "aggregator sends on the uplink");
    let inner = check_outer(&tunnelled, "192.0.2.1", "192.0.2.2", 100);
    assert_eq!(
        inner,
        frame(AGG_UPLINK, INNER, dev, alias, 63, l4, 40000, 4000, PAYLOAD)
    );
    check_checksums(&inner).unwrap();

    let (v, delivered) = dmx.run(0, &tunnelled);
    assert_eq!(v, Verdict::Forward(1), "demux sends towards the app hosts");
    assert_eq!(
        delivered,
        frame(DMX_DC, APP2, dev, cap, 62, l4, 40000, 4000, PAYLOAD)
    );
    assert_eq!(check_checksums(&delivered).unwrap(), (dev, cap, 62));

    // The app host answers from the capture address, which it carries itself.
    let reply = frame(APP2, RMX_DC, cap, dev, 64, l4, 4000, 40000, b"reply");
    let (v, out) = rmx.run(0, &reply);
    assert_eq!(v, Verdict::Forward(1));
    assert_eq!(
        out,
        frame(RMX_OUT, ROUTER, cap, dev, 63, l4, 4000, 40000, b"reply")
    );

    // The reply is not aggregator traffic: offered to it, it matches no circuit.
    let (v, _) = agg.run(
        0,
        &frame(ROUTER, AGG_LINE, cap, dev, 64, l4, 4000, 40000, b"reply"),
    );
    assert_eq!(v, Verdict::Drop(DropReason::NoCircuit));
}

/// FIG 8: two devices to two ports of one capture address reach two app hosts; the
/// remux rewrites each reply's source back to the capture address, ports unchanged.
fn fig8(l4: L4, devices: [&str; 2], capture: &str, alias: &str, apps: [&str; 2]) {
    let (agg, dmx, rmx) = (aggregator(), demux(), remux());
    let (cap, alias) = (ip(capture), ip(alias));
    for ((device, app), (port, app_mac)) in devices
        .iter()
        .zip(apps)
        .zip([(4000u16, APP2), (5000, APP3)])
    {
        let (dev, app) = (ip(device), ip(app));
        let sport = 41000 + port / 1000;
        let sent = frame(ROUTER, AGG_LINE, dev, cap, 64, l4, sport, port, PAYLOAD);
        let (v, tunnelled) = agg.run(0, &sent);
        assert_eq!(v, Verdict::Forward(1));
        let inner = check_outer(&tunnelled, "192.0.2.1", "192.0.2.2", 100);
        assert_eq!(
            inner,
            frame(AGG_UPLINK, INNER, dev, alias, 63, l4, sport, port, PAYLOAD)
        );

        let (v, delivered) = dmx.run(0, &tunnelled);
        assert_eq!(v, Verdict::Forward(1));
        assert_eq!(
            delivered,
            frame(DMX_DC, app_mac, dev, app, 62, l4, sport, port, PAYLOAD)
        );
        assert_eq!(check_checksums(&delivered).unwrap(), (dev, app, 62));

        let reply = frame(app_mac, RMX_DC, app, dev, 64, l4, port, sport, b"reply");
        let (v, out) = rmx.run(0, &reply);
        assert_eq!(v, Verdict::Forward(1));
        assert_eq!(
            out,
            frame(RMX_OUT, ROUTER, cap, dev, 63, l4, port, sport, b"reply")
        );
        assert_eq!(check_checksums(&out).unwrap(), (cap, dev, 63));
    }
    // A port with no circuit behind the alias is dropped at the demux.
    let sent = frame(
        ROUTER,
        AGG_LINE,
        ip(devices[0]),
        cap,
        64,
        l4,
        40000,
        6000,
        PAYLOAD,
    );
    let (v, tunnelled) = agg.run(0, &sent);
    assert_eq!(v, Verdict::Forward(1));
    assert_eq!(
        dmx.run(0, &tunnelled).0,
        Verdict::Drop(DropReason::NoCircuit)
    );
    // A reply from an app port with no circuit is not let out by the remux.
    let stray = frame(
        APP2,
        RMX_DC,
        ip(apps[0]),
        ip(devices[0]),
        64,
        l4,
        4444,
        40000,
        b"x",
    );
    assert_eq!(rmx.run(0, &stray).0, Verdict::Drop(DropReason::NoCircuit));
}

#[test]
fn fig6_address_mode_udp_ipv4() {
    fig6(
        L4::Udp,
        "198.51.100.10",
        "203.0.113.2",
        "198.18.0.3",
        "198.19.0.2",
    );
}

#[test]
fn fig6_address_mode_tcp_ipv4() {
    fig6(
        L4::Tcp,
        "198.51.100.10",
        "203.0.113.2",
        "198.18.0.3",
        "198.19.0.2",
    );
}

#[test]
fn fig6_address_mode_udp_ipv6() {
    fig6(
        L4::Udp,
        "2001:db8:51::10",
        "2001:db8:113::2",
        "2001:db8:18::3",
        "2001:db8:19::2",
    );
}

#[test]
fn fig6_address_mode_tcp_ipv6() {
    fig6(
        L4::Tcp,
        "2001:db8:51::10",
        "2001:db8:113::2",
        "2001:db8:18::3",
        "2001:db8:19::2",
    );
}

#[test]
fn fig8_port_mode_udp_ipv4() {
    fig8(
        L4::Udp,
        ["198.51.100.10", "198.51.100.20"],
        "203.0.113.4",
        "198.18.0.4",
        ["198.19.0.2", "198.19.0.3"],
    );
}

#[test]
fn fig8_port_mode_tcp_ipv4() {
    fig8(
        L4::Tcp,
        ["198.51.100.10", "198.51.100.20"],
        "203.0.113.4",
        "198.18.0.4",
        ["198.19.0.2", "198.19.0.3"],
    );
}

#[test]
fn fig8_port_mode_udp_ipv6() {
    fig8(
        L4::Udp,
        ["2001:db8:51::10", "2001:db8:51::20"],
        "2001:db8:113::4",
        "2001:db8:18::4",
        ["2001:db8:19::2", "2001:db8:19::3"],
    );
}

#[test]
fn fig8_port_mode_tcp_ipv6() {
    fig8(
        L4::Tcp,
        ["2001:db8:51::10", "2001:db8:51::20"],
        "2001:db8:113::4",
        "2001:db8:18::4",
        ["2001:db8:19::2", "2001:db8:19::3"],
    );
}

#[test]
fn ipv6_outer_tunnel() {
    let (agg, dmx) = (aggregator(), demux());
    let (dev, cap) = (ip("198.51.100.10"), ip("203.0.113.9"));
    let sent = frame(ROUTER, AGG_LINE, dev, cap, 64, L4::Udp, 40000, 53, PAYLOAD);
    let (v, tunnelled) = agg.run(0, &sent);
    assert_eq!(v, Verdict::Forward(1));
    let inner = check_outer(&tunnelled, "2001:db8:ffff::1", "2001:db8:ffff::2", 200);
    assert_eq!(
        inner,
        frame(
            AGG_UPLINK,
            INNER,
            dev,
            ip("198.18.0.9"),
            63,
            L4::Udp,
            40000,
            53,
            PAYLOAD
        )
    );
    let (v, delivered) = dmx.run(0, &tunnelled);
    assert_eq!(v, Verdict::Forward(1));
    assert_eq!(
        delivered,
        frame(DMX_DC, APP2, dev, cap, 62, L4::Udp, 40000, 53, PAYLOAD)
    );
}

#[test]
fn zero_udp_checksum_stays_zero() {
    let agg = aggregator();
    let mut sent = frame(
        ROUTER,
        AGG_LINE,
        ip("198.51.100.10"),
        ip("203.0.113.2"),
        64,
        L4::Udp,
        1,
        4000,
        PAYLOAD,
    );
    sent[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
    let (v, out) = agg.run(0, &sent);
    assert_eq!(v, Verdict::Forward(1));
    let inner = &out[50..];
    assert_eq!(&inner[14 + 20 + 6..14 + 20 + 8], &[0, 0]);
    check_checksums(inner).unwrap();
}

#[test]
fn drops_say_why() {
    let (agg, dmx) = (aggregator(), demux());
    let dev = ip("198.51.100.10");
    // No circuit for this capture address.
    let f = frame(
        ROUTER,
        AGG_LINE,
        dev,
        ip("203.0.113.77"),
        64,
        L4::Udp,
        1,
        2,
        b"",
    );
    assert_eq!(agg.run(0, &f).0, Verdict::Drop(DropReason::NoCircuit));
    // TTL 1 would expire.
    let f = frame(
        ROUTER,
        AGG_LINE,
        dev,
        ip("203.0.113.2"),
        1,
        L4::Udp,
        1,
        2,
        b"",
    );
    assert_eq!(agg.run(0, &f).0, Verdict::Drop(DropReason::TtlExpired));
    // A unicast frame for another host on the link.
    let f = frame(ROUTER, APP3, dev, ip("203.0.113.2"), 64, L4::Udp, 1, 2, b"");
    assert_eq!(agg.run(0, &f).0, Verdict::Drop(DropReason::OtherHost));
    // Truncated in the IP header.
    let f = frame(
        ROUTER,
        AGG_LINE,
        dev,
        ip("203.0.113.2"),
        64,
        L4::Udp,
        1,
        2,
        b"",
    );
    assert_eq!(agg.run(0, &f[..30]).0, Verdict::Drop(DropReason::Malformed));
    // Pings to the line's own address go to the slow path; so does ARP. What the slow
    // path would not answer ends in the worker.
    let f = frame(
        ROUTER,
        AGG_LINE,
        dev,
        ip("203.0.113.1"),
        64,
        L4::Echo,
        1,
        2,
        b"",
    );
    assert_eq!(agg.run(0, &f).0, Verdict::SlowPath);
    let f = frame(
        ROUTER,
        AGG_LINE,
        dev,
        ip("203.0.113.1"),
        64,
        L4::Udp,
        1,
        2,
        b"",
    );
    assert_eq!(agg.run(0, &f).0, Verdict::Drop(DropReason::NotAnswered));
    let mut arp = vec![0xffu8; 6];
    arp.extend_from_slice(&mac(ROUTER).0);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    assert_eq!(agg.run(0, &arp).0, Verdict::SlowPath);
    // Tunnel traffic from a source that is not a peer.
    let sent = frame(
        ROUTER,
        AGG_LINE,
        dev,
        ip("203.0.113.2"),
        64,
        L4::Udp,
        1,
        4000,
        b"",
    );
    let (_, mut tunnelled) = agg.run(0, &sent);
    tunnelled[14 + 15] = 99; // outer source 192.0.2.99
                             // ... first with the header checksum left stale: that alone ends it (RFC 1812).
    assert_eq!(
        dmx.run(0, &tunnelled).0,
        Verdict::Drop(DropReason::BadChecksum)
    );
    fix_ipv4_header_checksum(&mut tunnelled, 14);
    assert_eq!(
        dmx.run(0, &tunnelled).0,
        Verdict::Drop(DropReason::NotTunnelPeer)
    );
}
