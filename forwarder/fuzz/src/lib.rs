//! What tarp's fuzz targets share: the golden tests' topology (a copy of the fixtures in
//! `forwarder/tests/support/mod.rs`, built once per process), the input format, and the
//! checks every verdict and every packet view must pass. `forwarder/tests/no_panic.rs`
//! runs the same checks over a bounded, seeded set of inputs in CI.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::OnceLock;

use etherparse::{
    EtherType, Ethernet2Header, Ipv4Header, Ipv6Header, NetHeaders, PacketHeaders, SingleVlanHeader, TransportHeader,
};
use forwarder::packet::arp::ArpPacket;
use forwarder::packet::icmp::IcmpPacket;
use forwarder::packet::{vxlan, EthernetFrame, Ipv4Packet, Ipv6Packet, MacAddr, TcpPacket, UdpPacket, VxlanPacket};
use forwarder::pipeline::{process, Context, DropReason, PacketBuf, VecBuf, Verdict};
use forwarder::tables::{NeighbourCache, PortInfo, Role, Rules, Snapshot};

fn mac(s: &str) -> MacAddr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn port(name: &str, role: Role, m: &str, addrs: &[&str]) -> PortInfo {
    PortInfo::new(name, role, mac(m), addrs.iter().map(|a| ip(a)).collect())
}

fn snapshot(ports: Vec<PortInfo>, rules_toml: &str, neighbours: &[(u16, &str, &str)]) -> Snapshot {
    let rules: Rules = toml::from_str(rules_toml).unwrap();
    let mut n = NeighbourCache::new();
    for &(p, a, m) in neighbours {
        n.insert((p, ip(a)), mac(m));
    }
    Snapshot::build(&rules, &ports, 1, &n).unwrap()
}

/// The POP's aggregator: port 0 the line, port 1 the uplink.
pub fn aggregator() -> &'static Snapshot {
    static S: OnceLock<Snapshot> = OnceLock::new();
    S.get_or_init(|| {
        snapshot(
            vec![
                port("line0", Role::Aggregator, "02:00:00:00:0a:01", &["203.0.113.1", "2001:db8:113::1"]),
                port("uplink", Role::Aggregator, "02:00:00:00:0a:02", &["192.0.2.1", "2001:db8:ffff::1"]),
            ],
            r#"
            tunnels = [
              { id = 1, local = "192.0.2.1", remote = "192.0.2.2", vni = 100, inner_dst_mac = "02:00:00:00:0f:0f" },
              { id = 2, local = "2001:db8:ffff::1", remote = "2001:db8:ffff::2", vni = 200, inner_dst_mac = "02:00:00:00:0f:0f" },
            ]
            aggregator = [
              { capture = "203.0.113.2", alias = "198.18.0.3", tunnel = 1, line = "line0" },
              { capture = "2001:db8:113::2", alias = "2001:db8:18::3", tunnel = 1, line = "line0" },
              { capture = "203.0.113.4", alias = "198.18.0.4", tunnel = 1, line = "line0" },
              { capture = "2001:db8:113::4", alias = "2001:db8:18::4", tunnel = 1, line = "line0" },
              { capture = "203.0.113.9", alias = "198.18.0.9", tunnel = 2 },
            ]
            routes = [
              { prefix = "192.0.2.0/24", port = "uplink" },
              { prefix = "2001:db8:ffff::/64", port = "uplink" },
            ]
            "#,
            &[(1, "192.0.2.2", "02:00:00:00:0d:01"), (1, "2001:db8:ffff::2", "02:00:00:00:0d:01")],
        )
    })
}

/// The data center's demux: port 0 receives the tunnel, port 1 faces the app hosts.
pub fn demux() -> &'static Snapshot {
    static S: OnceLock<Snapshot> = OnceLock::new();
    S.get_or_init(|| {
        snapshot(
            vec![
                port("tun", Role::Demux, "02:00:00:00:0d:01", &["192.0.2.2", "2001:db8:ffff::2"]),
                port("dc", Role::Demux, "02:00:00:00:0d:02", &["198.19.0.1", "2001:db8:19::1"]),
            ],
            r#"
            tunnel_peers = ["192.0.2.1", "2001:db8:ffff::1"]
            demux = [
              { mode = "address", alias = "198.18.0.3", capture = "203.0.113.2", app_host = "198.19.0.2" },
              { mode = "address", alias = "198.18.0.9", capture = "203.0.113.9", app_host = "198.19.0.2" },
              { mode = "port", alias = "198.18.0.4", protocol = "udp", port = 4000, app_host = "198.19.0.2" },
              { mode = "port", alias = "198.18.0.4", protocol = "tcp", port = 5000, app_host = "198.19.0.3" },
              { mode = "address", alias = "2001:db8:18::3", capture = "2001:db8:113::2", app_host = "2001:db8:19::2" },
              { mode = "port", alias = "2001:db8:18::4", protocol = "udp", port = 4000, app_host = "2001:db8:19::2" },
              { mode = "port", alias = "2001:db8:18::4", protocol = "tcp", port = 5000, app_host = "2001:db8:19::3" },
            ]
            routes = [
              { prefix = "198.19.0.0/24", port = "dc" },
              { prefix = "2001:db8:19::/64", port = "dc" },
            ]
            "#,
            &[
                (1, "198.19.0.2", "02:00:00:00:a0:02"),
                (1, "198.19.0.3", "02:00:00:00:a0:03"),
                (1, "2001:db8:19::2", "02:00:00:00:a0:02"),
                (1, "2001:db8:19::3", "02:00:00:00:a0:03"),
            ],
        )
    })
}

/// The data center's remux: port 0 the app hosts' gateway, port 1 the way out.
pub fn remux() -> &'static Snapshot {
    static S: OnceLock<Snapshot> = OnceLock::new();
    S.get_or_init(|| {
        snapshot(
            vec![
                port("dc", Role::Remux, "02:00:00:00:0e:01", &["198.19.0.254", "2001:db8:19::fe"]),
                port("out", Role::Remux, "02:00:00:00:0e:02", &["192.0.2.3", "2001:db8:ffff::3"]),
            ],
            r#"
            remux = [
              { mode = "address", capture = "203.0.113.2" },
              { mode = "address", capture = "2001:db8:113::2" },
              { mode = "port", app_host = "198.19.0.2", protocol = "udp", port = 4000, capture = "203.0.113.4" },
              { mode = "port", app_host = "198.19.0.3", protocol = "tcp", port = 5000, capture = "203.0.113.4" },
              { mode = "port", app_host = "2001:db8:19::2", protocol = "udp", port = 4000, capture = "2001:db8:113::4" },
              { mode = "port", app_host = "2001:db8:19::3", protocol = "tcp", port = 5000, capture = "2001:db8:113::4" },
            ]
            routes = [
              { prefix = "0.0.0.0/0", port = "out", via = "192.0.2.254" },
              { prefix = "::/0", port = "out", via = "2001:db8:ffff::fe" },
            ]
            "#,
            &[(1, "192.0.2.254", "02:00:00:00:01:fe"), (1, "2001:db8:ffff::fe", "02:00:00:00:01:fe")],
        )
    })
}

/// Headroom choices: none, too little for either outer, enough for IPv4 only, a DPDK mbuf's.
const HEADROOMS: [usize; 8] = [0, 1, 49, 50, 69, 70, 128, 128];

/// Runs one fuzz input through `snap`'s pipeline and checks every verdict.
///
/// Byte 0 picks the receiving port (bits 0-1; port 2 and 3 do not exist), the headroom
/// (bits 2-4) and the burst size (bits 5-7: 1..=8 packets); the rest is cut into that
/// many packets of equal length, the last one taking the remainder.
pub fn run(snap: &Snapshot, data: &[u8]) {
    let Some((&ctl, rest)) = data.split_first() else { return };
    let in_port = (ctl & 3) as u16;
    let headroom = HEADROOMS[(ctl >> 2 & 7) as usize];
    let n = (ctl >> 5) as usize + 1;
    let each = rest.len() / n;
    let inputs: Vec<&[u8]> =
        (0..n).map(|i| if i + 1 == n { &rest[i * each..] } else { &rest[i * each..(i + 1) * each] }).collect();
    let mut pkts: Vec<VecBuf> = inputs.iter().map(|b| VecBuf::with_headroom(b, headroom)).collect();
    let mut verdicts = vec![Verdict::SlowPath; n];
    let mut ctx = Context::with_frag_slots(snap.ports.len(), 64);
    process(snap, &mut ctx, in_port, &mut pkts, &mut verdicts);
    for ((before, pkt), &v) in inputs.iter().zip(&pkts).zip(&verdicts) {
        if let Err(e) = check(snap, in_port, before, v, pkt.data()) {
            panic!("{e}: verdict {v:?} on port {in_port}");
        }
    }
}

/// A verdict consistent with the packet: forwarded only to a port that exists, as an IP
/// packet whose stated lengths fit, and with valid checksums if they were valid before.
fn check(snap: &Snapshot, in_port: u16, before: &[u8], v: Verdict, after: &[u8]) -> Result<(), String> {
    if in_port as usize >= snap.ports.len() {
        return (v == Verdict::Drop(DropReason::Unsupported)).then_some(()).ok_or("unknown port".into());
    }
    let Verdict::Forward(out) = v else { return Ok(()) };
    if out as usize >= snap.ports.len() {
        return Err(format!("forwarded to port {out}, which does not exist"));
    }
    let (old, new) = match snap.ports[in_port as usize].role {
        Role::Aggregator => (before, vxlan_inner(after)?),
        // The demux takes the inner frame to the end of the buffer (not to the end of the
        // UDP datagram); check it as the demux read it.
        Role::Demux => {
            let o = vxlan::parse_outer(before).map_err(|e| format!("forwarded, but the outer does not parse: {e}"))?;
            (&before[o.inner_offset..], after)
        }
        Role::Remux => (before, after),
    };
    ip_of(new)?;
    if checksums_ok(old).is_ok() {
        checksums_ok(new).map_err(|e| format!("valid checksums broken: {e}"))?;
    }
    Ok(())
}

/// The inner frame of a VXLAN packet as etherparse reads the outer.
fn vxlan_inner(frame: &[u8]) -> Result<&[u8], String> {
    ip_of(frame)?;
    let h = PacketHeaders::from_ethernet_slice(frame).map_err(|e| e.to_string())?;
    let Some(TransportHeader::Udp(u)) = h.transport else { return Err("outer is not UDP".into()) };
    let vx = h.payload.slice();
    if u.destination_port != 4789 || vx.len() < 8 + 14 || vx[0] & 0x08 == 0 {
        return Err("outer is not VXLAN".into());
    }
    Ok(&vx[8..])
}

/// The IP header of a frame, by etherparse; errors unless IPv4 / IPv6 with lengths that fit.
fn ip_of(frame: &[u8]) -> Result<(), String> {
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
            (h.total_len as usize <= rest.len()).then_some(()).ok_or("IPv4 total length overruns the frame".into())
        }
        EtherType::IPV6 => {
            let (h, _) = Ipv6Header::from_slice(rest).map_err(|e| e.to_string())?;
            (40 + h.payload_length as usize <= rest.len())
                .then_some(())
                .ok_or("IPv6 payload length overruns the frame".into())
        }
        other => Err(format!("not IP: ethertype {other:?}")),
    }
}

/// Every checksum of a frame, recomputed by etherparse.
fn checksums_ok(frame: &[u8]) -> Result<(), String> {
    let h = PacketHeaders::from_ethernet_slice(frame).map_err(|e| e.to_string())?;
    let payload = h.payload.slice();
    let ok = match (&h.net, &h.transport) {
        (Some(NetHeaders::Ipv4(ip, _)), t) => {
            ip.header_checksum == ip.calc_header_checksum()
                && match t {
                    Some(TransportHeader::Udp(u)) => {
                        u.checksum == 0 || u.calc_checksum_ipv4(ip, payload) == Ok(u.checksum)
                    }
                    Some(TransportHeader::Tcp(t)) => t.calc_checksum_ipv4(ip, payload) == Ok(t.checksum),
                    Some(TransportHeader::Icmpv4(i)) => i.icmp_type.calc_checksum(payload) == i.checksum,
                    _ => true,
                }
        }
        (Some(NetHeaders::Ipv6(ip, _)), t) => match t {
            Some(TransportHeader::Udp(u)) => u.calc_checksum_ipv6(ip, payload) == Ok(u.checksum),
            Some(TransportHeader::Tcp(t)) => t.calc_checksum_ipv6(ip, payload) == Ok(t.checksum),
            Some(TransportHeader::Icmpv6(i)) => {
                i.icmp_type.calc_checksum(ip.source, ip.destination, payload) == Ok(i.checksum)
            }
            _ => true,
        },
        _ => return Err("no IP header".into()),
    };
    ok.then_some(()).ok_or("a checksum is wrong".into())
}

/// Every checked constructor and getter on `b`, the setters on a copy: no panic, and
/// what a view computes agrees with itself (fill, then verify).
pub fn views(b: &[u8]) {
    let v4 = (IpAddr::from([198, 51, 100, 1]), IpAddr::from([203, 0, 113, 2]));
    let v6 = (ip("2001:db8:51::1"), ip("2001:db8:113::2"));
    if let Ok(f) = EthernetFrame::new_checked(b) {
        let _ = (f.dst(), f.src(), f.ethertype());
        if let Ok(info) = f.payload_info() {
            assert!(info.l3_offset <= b.len());
            views_l3(&b[info.l3_offset..]);
        }
    }
    views_l3(b);
    if let Ok(p) = UdpPacket::new_checked(b) {
        let _ = (p.src_port(), p.dst_port(), p.len(), p.is_empty(), p.checksum(), p.payload().len());
        for (s, d) in [v4, v6] {
            let _ = p.verify_checksum(s, d);
            let mut c = b.to_vec();
            let mut p = UdpPacket::new_checked(&mut c[..]).unwrap();
            p.fill_checksum(s, d);
            assert!(p.verify_checksum(s, d), "UDP fill then verify");
        }
    }
    if let Ok(p) = TcpPacket::new_checked(b) {
        let _ = (p.src_port(), p.dst_port(), p.seq(), p.ack(), p.header_len(), p.flags(), p.checksum());
        for (s, d) in [v4, v6] {
            let mut c = b.to_vec();
            let mut p = TcpPacket::new_checked(&mut c[..]).unwrap();
            p.fill_checksum(s, d);
            assert!(p.verify_checksum(s, d), "TCP fill then verify");
        }
    }
    if let Ok(p) = IcmpPacket::new_checked(b) {
        let (s, d): (Ipv6Addr, Ipv6Addr) = ("2001:db8:51::1".parse().unwrap(), "2001:db8:113::2".parse().unwrap());
        let _ = (p.msg_type(), p.code(), p.checksum(), p.echo_ident(), p.echo_seq(), p.verify_checksum_v4());
        let _ = (p.verify_checksum_v6(s, d), p.nd_target(), p.nd_lladdr(1), p.nd_lladdr(2));
        let mut c = b.to_vec();
        let mut p = IcmpPacket::new_checked(&mut c[..]).unwrap();
        p.fill_checksum_v4();
        assert!(p.verify_checksum_v4(), "ICMPv4 fill then verify");
        p.fill_checksum_v6(s, d);
        assert!(p.verify_checksum_v6(s, d), "ICMPv6 fill then verify");
    }
    if let Ok(p) = ArpPacket::new_checked(b) {
        let _ = (p.operation(), p.sender_mac(), p.sender_ip(), p.target_mac(), p.target_ip());
    }
    if let Ok(p) = VxlanPacket::new_checked(b) {
        assert_eq!(p.inner().len(), b.len() - vxlan::HEADER_LEN);
        assert!(p.vni() < 1 << 24);
    }
    if let Ok(o) = vxlan::parse_outer(b) {
        assert!(o.inner_offset + 14 <= b.len(), "the inner frame holds an Ethernet header");
    }
}

fn views_l3(b: &[u8]) {
    if let Ok(p) = Ipv4Packet::new_checked(b) {
        let _ = (p.version(), p.ident(), p.more_frags(), p.dont_frag(), p.frag_offset(), p.is_fragment());
        let _ = (p.ttl(), p.protocol(), p.checksum(), p.src(), p.dst(), p.verify_checksum());
        assert_eq!(p.payload().len(), p.total_len() as usize - p.header_len());
        let mut c = b.to_vec();
        let mut p = Ipv4Packet::new_checked(&mut c[..]).unwrap();
        p.fill_checksum();
        assert!(p.verify_checksum(), "IPv4 fill then verify");
        if p.ttl() > 1 {
            p.decrement_ttl();
            assert!(p.verify_checksum(), "IPv4 TTL decrement keeps the checksum");
        }
        views(p.payload());
    }
    if let Ok(p) = Ipv6Packet::new_checked(b) {
        let _ = (p.version(), p.payload_len(), p.next_header(), p.hop_limit(), p.src(), p.dst());
        if let Ok(ul) = p.upper_layer() {
            let end = 40 + p.payload_len() as usize;
            assert!(ul.offset <= end, "upper layer past the payload");
            let _ = ul.is_later_fragment();
            let l4 = &b[ul.offset..end];
            let _ = UdpPacket::new_checked(l4).map(|p| p.payload().len());
            let _ = TcpPacket::new_checked(l4).map(|p| p.header_len());
            let _ = IcmpPacket::new_checked(l4).map(|p| (p.nd_target(), p.nd_lladdr(1), p.nd_lladdr(2)));
        }
    }
}
