//! The slow path: what the control thread does with packets the pipelines hand it.
//!
//! ARP and IPv6 neighbour discovery are answered for each port's own addresses and, on
//! aggregator lines, for the capture addresses on that line; neighbours' MACs are learned
//! from what they send; ICMP echo to a port's own address is answered. Pure functions
//! over bytes: the DPDK side only moves the frames.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::packet::ethernet::{self, EtherType, EthernetFrame};
use crate::packet::icmp::{self, v4_type, v6_type, IcmpPacket};
use crate::packet::{arp, ip_proto, ipv4, ipv6, Ipv4Packet, Ipv6Packet, MacAddr};
use crate::tables::{PortId, Snapshot};

/// What handling one frame produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// A frame to send back out of the same port.
    pub reply: Option<Vec<u8>>,
    /// A neighbour learned (address and MAC on the receiving port).
    pub learned: Option<(IpAddr, MacAddr)>,
}

/// Handles one frame received on `port`.
pub fn handle(snap: &Snapshot, port: PortId, frame: &[u8]) -> Outcome {
    let Some(p) = snap.ports.get(port as usize) else {
        return Outcome::default();
    };
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return Outcome::default();
    };
    let Ok(l2) = eth.payload_info() else {
        return Outcome::default();
    };
    if l2.vlan.is_some() {
        return Outcome::default();
    }
    let body = &frame[l2.l3_offset..];
    match l2.ethertype {
        EtherType::ARP => handle_arp(snap, port, p.mac, body),
        EtherType::IPV4 => handle_ipv4(snap, port, p.mac, eth.src(), body),
        EtherType::IPV6 => handle_ipv6(snap, port, p.mac, eth.src(), body),
        _ => Outcome::default(),
    }
}

fn handle_arp(snap: &Snapshot, port: PortId, own: MacAddr, body: &[u8]) -> Outcome {
    let Ok(a) = arp::ArpPacket::new_checked(body) else {
        return Outcome::default();
    };
    let sender = a.sender_ip();
    let mut out = Outcome::default();
    if !sender.is_unspecified() && !a.sender_mac().is_multicast() {
        out.learned = Some((IpAddr::V4(sender), a.sender_mac()));
    }
    if a.operation() == arp::OP_REQUEST && snap.answers_for(port, IpAddr::V4(a.target_ip())) {
        let mut f = vec![0u8; ethernet::HEADER_LEN + arp::PACKET_LEN];
        ethernet::write_header(&mut f, a.sender_mac(), own, EtherType::ARP);
        arp::write(
            &mut f[ethernet::HEADER_LEN..],
            arp::OP_REPLY,
            own,
            a.target_ip(),
            a.sender_mac(),
            sender,
        );
        out.reply = Some(f);
    }
    out
}

fn handle_ipv4(snap: &Snapshot, port: PortId, own: MacAddr, peer: MacAddr, body: &[u8]) -> Outcome {
    let Ok(ip) = Ipv4Packet::new_checked(body) else {
        return Outcome::default();
    };
    let p = &snap.ports[port as usize];
    if ip.protocol() != ip_proto::ICMP || ip.is_fragment() || !p.is_local_v4(ip.dst().into()) {
        return Outcome::default();
    }
    let Ok(req) = IcmpPacket::new_checked(ip.payload()) else {
        return Outcome::default();
    };
    if req.msg_type() != v4_type::ECHO_REQUEST || !req.verify_checksum_v4() {
        return Outcome::default();
    }
    let icmp_len = ip.payload().len();
    let mut f = vec![0u8; ethernet::HEADER_LEN + ipv4::HEADER_LEN + icmp_len];
    ethernet::write_header(&mut f, peer, own, EtherType::IPV4);
    let l3 = ethernet::HEADER_LEN;
    ipv4::write_header(
        &mut f[l3..],
        ip.dst(),
        ip.src(),
        ip_proto::ICMP,
        icmp_len as u16,
        64,
    );
    let l4 = l3 + ipv4::HEADER_LEN;
    f[l4..].copy_from_slice(ip.payload());
    let mut reply = IcmpPacket::new_checked(&mut f[l4..]).expect("length checked");
    reply.set_msg_type(v4_type::ECHO_REPLY);
    reply.fill_checksum_v4();
    Outcome {
        reply: Some(f),
        learned: None,
    }
}

fn handle_ipv6(snap: &Snapshot, port: PortId, own: MacAddr, peer: MacAddr, body: &[u8]) -> Outcome {
    let Ok(ip) = Ipv6Packet::new_checked(body) else {
        return Outcome::default();
    };
    let Ok(ul) = ip.upper_layer() else {
        return Outcome::default();
    };
    if ul.protocol != ip_proto::ICMPV6 || ul.fragment.is_some() {
        return Outcome::default();
    }
    let end = ipv6::HEADER_LEN + ip.payload_len() as usize;
    let msg = &body[ul.offset..end];
    let Ok(m) = IcmpPacket::new_checked(msg) else {
        return Outcome::default();
    };
    if !m.verify_checksum_v6(ip.src(), ip.dst()) {
        return Outcome::default();
    }
    let p = &snap.ports[port as usize];
    match m.msg_type() {
        v6_type::NEIGHBOR_SOLICIT => {
            // RFC 4861 7.1.1: hop limit 255, code 0.
            let Ok(target) = m.nd_target() else {
                return Outcome::default();
            };
            if ip.hop_limit() != 255 || m.code() != 0 {
                return Outcome::default();
            }
            let mut out = Outcome::default();
            let src = ip.src();
            if let Some(mac) = m.nd_lladdr(1).filter(|_| !src.is_unspecified()) {
                out.learned = Some((IpAddr::V6(src), mac));
            }
            if snap.answers_for(port, IpAddr::V6(target)) {
                let (dst, dst_mac, solicited) = if src.is_unspecified() {
                    (
                        Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
                        MacAddr([0x33, 0x33, 0, 0, 0, 1]),
                        false,
                    )
                } else {
                    (src, peer, true)
                };
                out.reply = Some(nd_frame(own, dst_mac, target, dst, |b| {
                    icmp::write_neighbor_advert(b, target, own, solicited)
                }));
            }
            out
        }
        v6_type::NEIGHBOR_ADVERT => {
            let (Ok(target), Some(mac)) = (m.nd_target(), m.nd_lladdr(2)) else {
                return Outcome::default();
            };
            // RFC 4861 7.1.2: hop limit 255 (it was not routed here), code 0, a unicast
            // target; a solicited advertisement goes to a unicast address. And only a
            // target this port resolves (a next hop): one packet must not be able to
            // plant any address it likes.
            let solicited = msg.get(4).is_some_and(|f| f & 0x40 != 0);
            if ip.hop_limit() != 255
                || m.code() != 0
                || target.is_multicast()
                || mac.is_multicast()
                || (solicited && ip.dst().is_multicast())
                || !snap.resolves(port, IpAddr::V6(target))
            {
                return Outcome::default();
            }
            Outcome {
                reply: None,
                learned: Some((IpAddr::V6(target), mac)),
            }
        }
        v6_type::ECHO_REQUEST if p.is_local_v6(ip.dst().octets()) => {
            let mut f = vec![0u8; ethernet::HEADER_LEN + ipv6::HEADER_LEN + msg.len()];
            ethernet::write_header(&mut f, peer, own, EtherType::IPV6);
            let l3 = ethernet::HEADER_LEN;
            ipv6::write_header(
                &mut f[l3..],
                ip.dst(),
                ip.src(),
                ip_proto::ICMPV6,
                msg.len() as u16,
                64,
            );
            let l4 = l3 + ipv6::HEADER_LEN;
            f[l4..].copy_from_slice(msg);
            let mut reply = IcmpPacket::new_checked(&mut f[l4..]).expect("length checked");
            reply.set_msg_type(v6_type::ECHO_REPLY);
            reply.fill_checksum_v6(ip.dst(), ip.src());
            Outcome {
                reply: Some(f),
                learned: None,
            }
        }
        _ => Outcome::default(),
    }
}

/// An ND message (32 bytes written by `write`) from `src` to `dst`, hop limit 255.
fn nd_frame(
    own: MacAddr,
    dst_mac: MacAddr,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    write: impl FnOnce(&mut [u8]),
) -> Vec<u8> {
    let mut f = vec![0u8; ethernet::HEADER_LEN + ipv6::HEADER_LEN + 32];
    ethernet::write_header(&mut f, dst_mac, own, EtherType::IPV6);
    let l3 = ethernet::HEADER_LEN;
    ipv6::write_header(&mut f[l3..], src, dst, ip_proto::ICMPV6, 32, 255);
    let l4 = l3 + ipv6::HEADER_LEN;
    write(&mut f[l4..]);
    IcmpPacket::new_checked(&mut f[l4..])
        .expect("32 bytes")
        .fill_checksum_v6(src, dst);
    f
}

/// A frame asking who has `target`, sent from `src` on a port with MAC `own`:
/// an ARP request (IPv4) or a neighbour solicitation to the solicited-node group (IPv6).
pub fn solicit(own: MacAddr, src: IpAddr, target: IpAddr) -> Option<Vec<u8>> {
    match (src, target) {
        (IpAddr::V4(s), IpAddr::V4(t)) => Some(arp_request(own, s, t)),
        (IpAddr::V6(s), IpAddr::V6(t)) => {
            let o = t.octets();
            let group = Ipv6Addr::new(
                0xff02,
                0,
                0,
                0,
                0,
                1,
                0xff00 | o[13] as u16,
                u16::from_be_bytes([o[14], o[15]]),
            );
            let mac = MacAddr([0x33, 0x33, 0xff, o[13], o[14], o[15]]);
            Some(nd_frame(own, mac, s, group, |b| {
                icmp::write_neighbor_solicit(b, t, own)
            }))
        }
        _ => None,
    }
}

fn arp_request(own: MacAddr, src: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0u8; ethernet::HEADER_LEN + arp::PACKET_LEN];
    ethernet::write_header(&mut f, MacAddr::BROADCAST, own, EtherType::ARP);
    arp::write(
        &mut f[ethernet::HEADER_LEN..],
        arp::OP_REQUEST,
        own,
        src,
        MacAddr::ZERO,
        target,
    );
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::{NeighbourCache, PortInfo, Role, Rules};

    const OWN: MacAddr = MacAddr([2, 0, 0, 0, 0x0a, 1]);
    const PEER: MacAddr = MacAddr([2, 0, 0, 0, 1, 0xfe]);

    fn snap() -> Snapshot {
        let ports = vec![
            PortInfo::new(
                "line0",
                Role::Aggregator,
                OWN,
                vec![
                    "203.0.113.1".parse().unwrap(),
                    "2001:db8:113::1".parse().unwrap(),
                ],
            ),
            PortInfo::new("line1", Role::Aggregator, OWN, vec![]),
        ];
        let rules: Rules = toml::from_str(
            r#"
            tunnels = [{ id = 1, local = "203.0.113.1", remote = "203.0.113.200" }]
            aggregator = [{ capture = "203.0.113.2", alias = "198.18.0.3", tunnel = 1, line = "line0" },
                          { capture = "2001:db8:113::2", alias = "2001:db8:18::3", tunnel = 1, line = "line0" }]
            routes = [{ prefix = "203.0.113.0/24", port = "line0" },
                      { prefix = "2001:db8:ff::/48", port = "line0", via = "2001:db8:113::fe" }]
            "#,
        )
        .unwrap();
        Snapshot::build(&rules, &ports, 1, &NeighbourCache::new()).unwrap()
    }

    #[test]
    fn arp_for_capture_address_on_its_line_only() {
        let s = snap();
        let req = arp_request(
            PEER,
            "203.0.113.254".parse().unwrap(),
            "203.0.113.2".parse().unwrap(),
        );
        let out = handle(&s, 0, &req);
        assert_eq!(out.learned, Some(("203.0.113.254".parse().unwrap(), PEER)));
        let reply = out.reply.expect("answered on the capture address's line");
        let a = arp::ArpPacket::new_checked(&reply[14..]).unwrap();
        assert_eq!(a.operation(), arp::OP_REPLY);
        assert_eq!(a.sender_mac(), OWN);
        assert_eq!(a.sender_ip(), "203.0.113.2".parse::<Ipv4Addr>().unwrap());
        assert_eq!(a.target_mac(), PEER);
        assert_eq!(&reply[0..6], &PEER.0);
        // Not on another line, not for an address nobody holds.
        assert!(handle(&s, 1, &req).reply.is_none());
        let other = arp_request(
            PEER,
            "203.0.113.254".parse().unwrap(),
            "203.0.113.99".parse().unwrap(),
        );
        assert!(handle(&s, 0, &other).reply.is_none());
    }

    #[test]
    fn neighbour_solicitation_answered_and_learned() {
        let s = snap();
        let src: IpAddr = "2001:db8:113::fe".parse().unwrap();
        let ns = solicit(PEER, src, "2001:db8:113::2".parse().unwrap()).unwrap();
        let out = handle(&s, 0, &ns);
        assert_eq!(out.learned, Some((src, PEER)));
        let na = out.reply.expect("NA");
        let ip = Ipv6Packet::new_checked(&na[14..]).unwrap();
        assert_eq!(ip.hop_limit(), 255);
        assert_eq!(IpAddr::V6(ip.dst()), src);
        let m = IcmpPacket::new_checked(&na[54..]).unwrap();
        assert_eq!(m.msg_type(), v6_type::NEIGHBOR_ADVERT);
        assert!(m.verify_checksum_v6(ip.src(), ip.dst()));
        assert_eq!(
            m.nd_target().unwrap(),
            "2001:db8:113::2".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(m.nd_lladdr(2), Some(OWN));
        // Fed back, that NA teaches nothing: its target is no neighbour we resolve.
        assert_eq!(handle(&s, 0, &na).learned, None);
    }

    /// RFC 4861 7.1.2, and only for a neighbour this port resolves.
    #[test]
    fn neighbour_advertisements_accepted_only_as_rfc_4861_says() {
        let s = snap();
        let gw: Ipv6Addr = "2001:db8:113::fe".parse().unwrap();
        let own: Ipv6Addr = "2001:db8:113::1".parse().unwrap();
        let na = |target: Ipv6Addr, hop_limit: u8, code: u8| {
            let mut f = nd_frame(PEER, OWN, target, own, |b| {
                icmp::write_neighbor_advert(b, target, PEER, true)
            });
            f[14 + 7] = hop_limit;
            f[54 + 1] = code;
            let l4 = 14 + 40;
            IcmpPacket::new_checked(&mut f[l4..])
                .unwrap()
                .fill_checksum_v6(target, own);
            f
        };
        assert_eq!(
            handle(&s, 0, &na(gw, 255, 0)).learned,
            Some((IpAddr::V6(gw), PEER))
        );
        assert_eq!(handle(&s, 0, &na(gw, 64, 0)).learned, None, "routed here");
        assert_eq!(handle(&s, 0, &na(gw, 255, 1)).learned, None, "code 1");
        let other: Ipv6Addr = "2001:db8:113::77".parse().unwrap();
        assert_eq!(
            handle(&s, 0, &na(other, 255, 0)).learned,
            None,
            "never asked"
        );
        assert_eq!(handle(&s, 1, &na(gw, 255, 0)).learned, None, "other port");
    }

    #[test]
    fn ping_to_own_address() {
        let s = snap();
        let mut f = vec![0u8; 14 + 20 + 12];
        ethernet::write_header(&mut f, OWN, PEER, EtherType::IPV4);
        ipv4::write_header(
            &mut f[14..],
            "198.51.100.10".parse().unwrap(),
            "203.0.113.1".parse().unwrap(),
            1,
            12,
            64,
        );
        f[34..46].copy_from_slice(&[8, 0, 0, 0, 0, 7, 0, 1, b'a', b'b', b'c', b'd']);
        IcmpPacket::new_checked(&mut f[34..])
            .unwrap()
            .fill_checksum_v4();
        let reply = handle(&s, 0, &f).reply.expect("echo reply");
        let ip = Ipv4Packet::new_checked(&reply[14..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.src(), "203.0.113.1".parse::<Ipv4Addr>().unwrap());
        assert_eq!(ip.dst(), "198.51.100.10".parse::<Ipv4Addr>().unwrap());
        let m = IcmpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!((m.msg_type(), m.echo_ident(), m.echo_seq()), (0, 7, 1));
        assert!(m.verify_checksum_v4());
        // Not to a capture address (that is circuit traffic, never the slow path's).
        ipv4::write_header(
            &mut f[14..],
            "198.51.100.10".parse().unwrap(),
            "203.0.113.2".parse().unwrap(),
            1,
            12,
            64,
        );
        assert!(handle(&s, 0, &f).reply.is_none());
    }
}
