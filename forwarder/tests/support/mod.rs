//! Shared test fixtures: the patent's topology with test-range addresses, packets built
//! and checked by `etherparse` (an implementation nobody here wrote).
#![allow(dead_code)]

use std::net::IpAddr;

use etherparse::{NetHeaders, PacketBuilder, PacketHeaders, TcpOptionElement, TransportHeader};
use forwarder::packet::MacAddr;
use forwarder::pipeline::{process, Context, PacketBuf, VecBuf, Verdict};
use forwarder::tables::{NeighbourCache, PortInfo, Role, Rules, Snapshot};

pub fn mac(s: &str) -> MacAddr {
    s.parse().unwrap()
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

// MACs of the topology.
pub const ROUTER: &str = "02:00:00:00:01:fe"; // the "Internet" router next to every box
pub const AGG_LINE: &str = "02:00:00:00:0a:01";
pub const AGG_UPLINK: &str = "02:00:00:00:0a:02";
pub const DMX_TUN: &str = "02:00:00:00:0d:01";
pub const DMX_DC: &str = "02:00:00:00:0d:02";
pub const APP2: &str = "02:00:00:00:a0:02";
pub const APP3: &str = "02:00:00:00:a0:03";
pub const RMX_DC: &str = "02:00:00:00:0e:01";
pub const RMX_OUT: &str = "02:00:00:00:0e:02";
pub const INNER: &str = "02:00:00:00:0f:0f";

pub fn port(name: &str, role: Role, m: &str, addrs: &[&str]) -> PortInfo {
    PortInfo::new(name, role, mac(m), addrs.iter().map(|a| ip(a)).collect())
}

/// A forwarder's ports and rules, built into a snapshot with static neighbours.
pub struct Box_ {
    pub ports: Vec<PortInfo>,
    pub snap: Snapshot,
    /// The worker state the box's packets share (fragment table, rate limits, clock).
    pub ctx: std::cell::RefCell<Context>,
}

impl Box_ {
    pub fn new(ports: Vec<PortInfo>, rules_toml: &str, neighbours: &[(u16, &str, &str)]) -> Box_ {
        let rules: Rules = toml::from_str(rules_toml).unwrap();
        let mut n = NeighbourCache::new();
        for &(p, a, m) in neighbours {
            n.insert((p, ip(a)), mac(m));
        }
        let snap = Snapshot::build(&rules, &ports, 1, &n).unwrap();
        let ctx = std::cell::RefCell::new(Context::new(ports.len()));
        Box_ { ports, snap, ctx }
    }

    /// Runs one frame received on `in_port` through the pipeline.
    pub fn run(&self, in_port: u16, frame: &[u8]) -> (Verdict, Vec<u8>) {
        let mut pkts = [VecBuf::new(frame)];
        let mut v = [Verdict::SlowPath];
        process(
            &self.snap,
            &mut self.ctx.borrow_mut(),
            in_port,
            &mut pkts,
            &mut v,
        );
        (v[0], pkts[0].data().to_vec())
    }
}

/// The POP's aggregator: port 0 is the line, port 1 the uplink to the data center.
pub fn aggregator() -> Box_ {
    Box_::new(
        vec![
            port(
                "line0",
                Role::Aggregator,
                AGG_LINE,
                &["203.0.113.1", "2001:db8:113::1"],
            ),
            port(
                "uplink",
                Role::Aggregator,
                AGG_UPLINK,
                &["192.0.2.1", "2001:db8:ffff::1"],
            ),
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
        &[(1, "192.0.2.2", DMX_TUN), (1, "2001:db8:ffff::2", DMX_TUN)],
    )
}

/// The data center's demux: port 0 receives the tunnel, port 1 faces the app hosts.
pub fn demux() -> Box_ {
    Box_::new(
        vec![
            port(
                "tun",
                Role::Demux,
                DMX_TUN,
                &["192.0.2.2", "2001:db8:ffff::2"],
            ),
            port("dc", Role::Demux, DMX_DC, &["198.19.0.1", "2001:db8:19::1"]),
        ],
        r#"
        tunnel_peers = ["192.0.2.1", "2001:db8:ffff::1"]
        demux = [
          { mode = "address", alias = "198.18.0.3", capture = "203.0.113.2", app_host = "198.19.0.2" },
          { mode = "address", alias = "198.18.0.9", capture = "203.0.113.9", app_host = "198.19.0.2" },
          { mode = "port", alias = "198.18.0.4", protocol = "udp", port = 4000, app_host = "198.19.0.2" },
          { mode = "port", alias = "198.18.0.4", protocol = "udp", port = 5000, app_host = "198.19.0.3" },
          { mode = "port", alias = "198.18.0.4", protocol = "tcp", port = 4000, app_host = "198.19.0.2" },
          { mode = "port", alias = "198.18.0.4", protocol = "tcp", port = 5000, app_host = "198.19.0.3" },
          { mode = "address", alias = "2001:db8:18::3", capture = "2001:db8:113::2", app_host = "2001:db8:19::2" },
          { mode = "port", alias = "2001:db8:18::4", protocol = "udp", port = 4000, app_host = "2001:db8:19::2" },
          { mode = "port", alias = "2001:db8:18::4", protocol = "udp", port = 5000, app_host = "2001:db8:19::3" },
          { mode = "port", alias = "2001:db8:18::4", protocol = "tcp", port = 4000, app_host = "2001:db8:19::2" },
          { mode = "port", alias = "2001:db8:18::4", protocol = "tcp", port = 5000, app_host = "2001:db8:19::3" },
        ]
        routes = [
          { prefix = "198.19.0.0/24", port = "dc" },
          { prefix = "2001:db8:19::/64", port = "dc" },
        ]
        "#,
        &[
            (1, "198.19.0.2", APP2),
            (1, "198.19.0.3", APP3),
            (1, "2001:db8:19::2", APP2),
            (1, "2001:db8:19::3", APP3),
        ],
    )
}

/// The data center's remux: port 0 is the app hosts' gateway, port 1 the way out.
pub fn remux() -> Box_ {
    Box_::new(
        vec![
            port(
                "dc",
                Role::Remux,
                RMX_DC,
                &["198.19.0.254", "2001:db8:19::fe"],
            ),
            port(
                "out",
                Role::Remux,
                RMX_OUT,
                &["192.0.2.3", "2001:db8:ffff::3"],
            ),
        ],
        r#"
        remux = [
          { mode = "address", capture = "203.0.113.2" },
          { mode = "address", capture = "2001:db8:113::2" },
          { mode = "port", app_host = "198.19.0.2", protocol = "udp", port = 4000, capture = "203.0.113.4" },
          { mode = "port", app_host = "198.19.0.3", protocol = "udp", port = 5000, capture = "203.0.113.4" },
          { mode = "port", app_host = "198.19.0.2", protocol = "tcp", port = 4000, capture = "203.0.113.4" },
          { mode = "port", app_host = "198.19.0.3", protocol = "tcp", port = 5000, capture = "203.0.113.4" },
          { mode = "port", app_host = "2001:db8:19::2", protocol = "udp", port = 4000, capture = "2001:db8:113::4" },
          { mode = "port", app_host = "2001:db8:19::3", protocol = "udp", port = 5000, capture = "2001:db8:113::4" },
          { mode = "port", app_host = "2001:db8:19::2", protocol = "tcp", port = 4000, capture = "2001:db8:113::4" },
          { mode = "port", app_host = "2001:db8:19::3", protocol = "tcp", port = 5000, capture = "2001:db8:113::4" },
        ]
        routes = [
          { prefix = "0.0.0.0/0", port = "out", via = "192.0.2.254" },
          { prefix = "::/0", port = "out", via = "2001:db8:ffff::fe" },
        ]
        "#,
        &[(1, "192.0.2.254", ROUTER), (1, "2001:db8:ffff::fe", ROUTER)],
    )
}

/// The POP's aggregator with a WireGuard tunnel (id 3) to the demux, whose public key
/// is `peer` (base64): port 0 is the line, port 1 the uplink.
pub fn wg_aggregator(peer: &str) -> Box_ {
    Box_::new(
        vec![
            port("line0", Role::Aggregator, AGG_LINE, &["203.0.113.1"]),
            port("uplink", Role::Aggregator, AGG_UPLINK, &["192.0.2.1"]),
        ],
        &format!(
            r#"
            tunnels = [{{ id = 3, local = "192.0.2.1", remote = "192.0.2.2", wireguard = {{ public_key = "{}", keepalive = 25 }} }}]
            aggregator = [
              {{ capture = "203.0.113.4", alias = "198.18.0.4", tunnel = 3, line = "line0" }},
              {{ capture = "2001:db8:113::4", alias = "2001:db8:18::4", tunnel = 3, line = "line0" }},
            ]
            routes = [{{ prefix = "192.0.2.0/24", port = "uplink" }}]
            "#,
            peer
        ),
        &[(1, "192.0.2.2", DMX_TUN)],
    )
}

/// The data center's demux with a WireGuard tunnel to the aggregator (public key `peer`):
/// port 0 receives the tunnel, port 1 faces the app hosts.
pub fn wg_demux(peer: &str) -> Box_ {
    Box_::new(
        vec![
            port("tun", Role::Demux, DMX_TUN, &["192.0.2.2"]),
            port("dc", Role::Demux, DMX_DC, &["198.19.0.1", "2001:db8:19::1"]),
        ],
        &format!(
            r#"
            tunnels = [{{ id = 2000, local = "192.0.2.2", remote = "192.0.2.1", wireguard = {{ public_key = "{}" }} }}]
            demux = [
              {{ mode = "port", alias = "198.18.0.4", protocol = "udp", port = 4000, app_host = "198.19.0.2" }},
              {{ mode = "port", alias = "2001:db8:18::4", protocol = "udp", port = 4000, app_host = "2001:db8:19::2" }},
            ]
            routes = [
              {{ prefix = "192.0.2.0/24", port = "tun" }},
              {{ prefix = "198.19.0.0/24", port = "dc" }},
              {{ prefix = "2001:db8:19::/64", port = "dc" }},
            ]
            "#,
            peer
        ),
        &[
            (0, "192.0.2.1", AGG_UPLINK),
            (1, "198.19.0.2", APP2),
            (1, "2001:db8:19::2", APP2),
        ],
    )
}

/// Transport of a test packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Udp,
    Tcp,
    /// ICMP(v6) echo request: identifier `sport`, sequence `dport`.
    Echo,
}

/// Builds an Ethernet frame with etherparse: `src:sport -> dst:dport`, TTL/hop limit `ttl`.
#[allow(clippy::too_many_arguments)]
pub fn frame(
    eth_src: &str,
    eth_dst: &str,
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
    l4: L4,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(mac(eth_src).0, mac(eth_dst).0);
    let b = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => b.ipv4(s.octets(), d.octets(), ttl),
        (IpAddr::V6(s), IpAddr::V6(d)) => b.ipv6(s.octets(), d.octets(), ttl),
        _ => panic!("mixed families"),
    };
    let mut out = Vec::new();
    match l4 {
        L4::Udp => b.udp(sport, dport).write(&mut out, payload).unwrap(),
        L4::Tcp => b
            .tcp(sport, dport, 0x0102_0304, 64240)
            .ack(0x0a0b_0c0d)
            .psh()
            .write(&mut out, payload)
            .unwrap(),
        L4::Echo if src.is_ipv4() => b
            .icmpv4_echo_request(sport, dport)
            .write(&mut out, payload)
            .unwrap(),
        L4::Echo => b
            .icmpv6_echo_request(sport, dport)
            .write(&mut out, payload)
            .unwrap(),
    }
    out
}

/// Checks every checksum of an Ethernet frame with etherparse; returns the parsed
/// headers' addresses and TTL for further checks.
pub fn check_checksums(frame: &[u8]) -> Result<(IpAddr, IpAddr, u8), String> {
    let h = PacketHeaders::from_ethernet_slice(frame).map_err(|e| format!("etherparse: {e}"))?;
    let payload = h.payload.slice();
    let (src, dst, ttl) = match &h.net {
        Some(NetHeaders::Ipv4(ip, _)) => {
            if ip.header_checksum != ip.calc_header_checksum() {
                return Err(format!(
                    "bad IPv4 header checksum {:#06x}",
                    ip.header_checksum
                ));
            }
            match &h.transport {
                Some(TransportHeader::Udp(u)) if u.checksum != 0 => {
                    let c = u.calc_checksum_ipv4(ip, payload).unwrap();
                    if c != u.checksum {
                        return Err(format!(
                            "bad UDP checksum {:#06x}, want {c:#06x}",
                            u.checksum
                        ));
                    }
                }
                Some(TransportHeader::Tcp(t)) => {
                    let c = t.calc_checksum_ipv4(ip, payload).unwrap();
                    if c != t.checksum {
                        return Err(format!(
                            "bad TCP checksum {:#06x}, want {c:#06x}",
                            t.checksum
                        ));
                    }
                }
                Some(TransportHeader::Icmpv4(i))
                    if i.checksum != i.icmp_type.calc_checksum(payload) =>
                {
                    return Err("bad ICMPv4 checksum".into());
                }
                _ => {}
            }
            (
                IpAddr::V4(ip.source.into()),
                IpAddr::V4(ip.destination.into()),
                ip.time_to_live,
            )
        }
        Some(NetHeaders::Ipv6(ip, _)) => {
            match &h.transport {
                Some(TransportHeader::Udp(u)) => {
                    let c = u.calc_checksum_ipv6(ip, payload).unwrap();
                    if c != u.checksum {
                        return Err(format!(
                            "bad UDP/IPv6 checksum {:#06x}, want {c:#06x}",
                            u.checksum
                        ));
                    }
                }
                Some(TransportHeader::Tcp(t)) => {
                    let c = t.calc_checksum_ipv6(ip, payload).unwrap();
                    if c != t.checksum {
                        return Err(format!(
                            "bad TCP/IPv6 checksum {:#06x}, want {c:#06x}",
                            t.checksum
                        ));
                    }
                }
                Some(TransportHeader::Icmpv6(i)) => {
                    let c = i
                        .icmp_type
                        .calc_checksum(ip.source, ip.destination, payload)
                        .unwrap();
                    if c != i.checksum {
                        return Err("bad ICMPv6 checksum".into());
                    }
                }
                _ => {}
            }
            (
                IpAddr::V6(ip.source.into()),
                IpAddr::V6(ip.destination.into()),
                ip.hop_limit,
            )
        }
        _ => return Err("no IP header".into()),
    };
    Ok((src, dst, ttl))
}

/// One circuit through the whole topology, for property tests over random addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Circuit {
    /// The capture address devices send to.
    pub capture: IpAddr,
    /// The demux alias it is rewritten to on the way through the tunnel.
    pub alias: IpAddr,
    /// The app host the demux delivers to (neighbour MAC [`APP2`]).
    pub app_host: IpAddr,
    /// Port mode on (protocol, port); address mode when `None`.
    pub port: Option<(L4, u16)>,
    /// An IPv6 tunnel between aggregator and demux (else IPv4).
    pub outer_v6: bool,
}

fn protocol(l4: L4) -> &'static str {
    match l4 {
        L4::Udp => "udp",
        L4::Tcp => "tcp",
        L4::Echo => panic!("echo has no port-mode rule"),
    }
}

/// The aggregator, demux and remux of the fixtures' topology (same ports, MACs and
/// routes) with `c` as their only circuit: `(aggregator, demux, remux)`.
pub fn boxes(c: &Circuit) -> (Box_, Box_, Box_) {
    let (cap, alias, app) = (c.capture, c.alias, c.app_host);
    let (local, remote) = if c.outer_v6 {
        ("2001:db8:ffff::1", "2001:db8:ffff::2")
    } else {
        ("192.0.2.1", "192.0.2.2")
    };
    let agg = Box_::new(
        vec![
            port(
                "line0",
                Role::Aggregator,
                AGG_LINE,
                &["203.0.113.1", "2001:db8:113::1"],
            ),
            port(
                "uplink",
                Role::Aggregator,
                AGG_UPLINK,
                &["192.0.2.1", "2001:db8:ffff::1"],
            ),
        ],
        &format!(
            r#"
            tunnels = [ {{ id = 7, local = "{local}", remote = "{remote}", vni = 4242, inner_dst_mac = "{INNER}" }} ]
            aggregator = [ {{ capture = "{cap}", alias = "{alias}", tunnel = 7, line = "line0" }} ]
            routes = [
              {{ prefix = "192.0.2.0/24", port = "uplink" }},
              {{ prefix = "2001:db8:ffff::/64", port = "uplink" }},
            ]
            "#
        ),
        &[(1, "192.0.2.2", DMX_TUN), (1, "2001:db8:ffff::2", DMX_TUN)],
    );
    let (demux_rule, remux_rule) = match c.port {
        None => (
            format!(
                r#"{{ mode = "address", alias = "{alias}", capture = "{cap}", app_host = "{app}" }}"#
            ),
            format!(r#"{{ mode = "address", capture = "{cap}" }}"#),
        ),
        Some((l4, p)) => (
            format!(
                r#"{{ mode = "port", alias = "{alias}", protocol = "{}", port = {p}, app_host = "{app}" }}"#,
                protocol(l4)
            ),
            format!(
                r#"{{ mode = "port", app_host = "{app}", protocol = "{}", port = {p}, capture = "{cap}" }}"#,
                protocol(l4)
            ),
        ),
    };
    let app_s = app.to_string();
    let dmx = Box_::new(
        vec![
            port(
                "tun",
                Role::Demux,
                DMX_TUN,
                &["192.0.2.2", "2001:db8:ffff::2"],
            ),
            port("dc", Role::Demux, DMX_DC, &["198.19.0.1", "2001:db8:19::1"]),
        ],
        &format!(
            r#"
            tunnel_peers = ["192.0.2.1", "2001:db8:ffff::1"]
            demux = [ {demux_rule} ]
            routes = [
              {{ prefix = "198.19.0.0/24", port = "dc" }},
              {{ prefix = "2001:db8:19::/64", port = "dc" }},
            ]
            "#
        ),
        &[(1, &app_s, APP2)],
    );
    let rmx = Box_::new(
        vec![
            port(
                "dc",
                Role::Remux,
                RMX_DC,
                &["198.19.0.254", "2001:db8:19::fe"],
            ),
            port(
                "out",
                Role::Remux,
                RMX_OUT,
                &["192.0.2.3", "2001:db8:ffff::3"],
            ),
        ],
        &format!(
            r#"
            remux = [ {remux_rule} ]
            routes = [
              {{ prefix = "0.0.0.0/0", port = "out", via = "192.0.2.254" }},
              {{ prefix = "::/0", port = "out", via = "2001:db8:ffff::fe" }},
            ]
            "#
        ),
        &[(1, "192.0.2.254", ROUTER), (1, "2001:db8:ffff::fe", ROUTER)],
    );
    (agg, dmx, rmx)
}

/// Wraps `inner` in VXLAN (VNI `vni`) as the aggregator's uplink would send it to the
/// demux: built by etherparse, outer UDP checksum filled in.
pub fn vxlan(outer_src: IpAddr, outer_dst: IpAddr, vni: u32, inner: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(mac(AGG_UPLINK).0, mac(DMX_TUN).0);
    let b = match (outer_src, outer_dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => b.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => b.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed families"),
    };
    let mut payload = vec![0x08, 0, 0, 0];
    payload.extend_from_slice(&(vni << 8).to_be_bytes());
    payload.extend_from_slice(inner);
    let mut out = Vec::new();
    b.udp(50000, 4789).write(&mut out, &payload).unwrap();
    out
}

/// A TCP SYN (SYN-ACK if `ack`) from `src:sport` to `dst:dport` between the MACs
/// `eth`, with an MSS option of `mss` (and SACK-permitted, window scale).
#[allow(clippy::too_many_arguments)]
pub fn syn(
    src: &str,
    sport: u16,
    dst: &str,
    dport: u16,
    eth: (&str, &str),
    ack: bool,
    mss: u16,
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(mac(eth.0).0, mac(eth.1).0);
    let b = if src.contains(':') {
        b.ipv6(v6(src), v6(dst), 64)
    } else {
        b.ipv4(v4(src), v4(dst), 64)
    };
    let b = b.tcp(sport, dport, 1000, 64240).syn();
    let b = if ack { b.ack(77) } else { b };
    let b = b
        .options(&[
            TcpOptionElement::MaximumSegmentSize(mss),
            TcpOptionElement::SelectiveAcknowledgementPermitted,
            TcpOptionElement::WindowScale(7),
        ])
        .unwrap();
    let mut out = Vec::new();
    b.write(&mut out, &[]).unwrap();
    out
}

fn v4(s: &str) -> [u8; 4] {
    s.parse::<std::net::Ipv4Addr>().unwrap().octets()
}

fn v6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

/// Recomputes the IPv4 header checksum of the header at `l3` (after a test edited it).
pub fn fix_ipv4_header_checksum(frame: &mut [u8], l3: usize) {
    let ihl = (frame[l3] & 0x0f) as usize * 4;
    frame[l3 + 10..l3 + 12].fill(0);
    let c = forwarder::packet::checksum::checksum(&frame[l3..l3 + ihl]);
    frame[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
}

/// Splits the IPv4 packet of an untagged Ethernet frame into fragments of at most
/// `max_ip` bytes of IP (a test's own fragmenter: etherparse rebuilds every header).
pub fn fragment_v4(frame: &[u8], max_ip: usize) -> Vec<Vec<u8>> {
    let (ip, rest) = etherparse::Ipv4Header::from_slice(&frame[14..]).unwrap();
    let payload = &rest[..ip.payload_len().unwrap() as usize];
    let room = (max_ip - ip.header_len()) & !7;
    let mut out = Vec::new();
    let mut at = 0;
    while at < payload.len() {
        let len = room.min(payload.len() - at);
        let mut h = ip.clone();
        h.dont_fragment = false;
        h.more_fragments = at + len < payload.len();
        h.fragment_offset = etherparse::IpFragOffset::try_new((at / 8) as u16).unwrap();
        h.set_payload_len(len).unwrap();
        h.header_checksum = h.calc_header_checksum();
        let mut f = frame[..14].to_vec();
        h.write(&mut f).unwrap();
        f.extend_from_slice(&payload[at..at + len]);
        out.push(f);
        at += len;
    }
    out
}

/// Reassembles IPv4 fragments (untagged Ethernet frames, any order) into one frame.
pub fn reassemble_v4(frags: &[Vec<u8>]) -> Vec<u8> {
    let mut parts: Vec<(usize, bool, Vec<u8>, etherparse::Ipv4Header)> = frags
        .iter()
        .map(|f| {
            let (ip, rest) = etherparse::Ipv4Header::from_slice(&f[14..]).unwrap();
            let data = rest[..ip.payload_len().unwrap() as usize].to_vec();
            (
                ip.fragment_offset.byte_offset() as usize,
                ip.more_fragments,
                data,
                ip,
            )
        })
        .collect();
    parts.sort_by_key(|p| p.0);
    let mut payload = Vec::new();
    for (off, _, data, _) in &parts {
        assert_eq!(*off, payload.len(), "a hole or an overlap at {off}");
        payload.extend_from_slice(data);
    }
    assert!(!parts.last().unwrap().1, "the last fragment has MF set");
    let mut h = parts[0].3.clone();
    h.more_fragments = false;
    h.fragment_offset = etherparse::IpFragOffset::ZERO;
    h.set_payload_len(payload.len()).unwrap();
    h.header_checksum = h.calc_header_checksum();
    let mut f = frags[0][..14].to_vec();
    h.write(&mut f).unwrap();
    f.extend_from_slice(&payload);
    f
}
