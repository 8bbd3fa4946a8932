//! The one parse every pipeline starts with: where the IP and L4 headers are.

use crate::packet::ethernet::{EtherType, EthernetFrame};
use crate::packet::icmp::v6_type;
use crate::packet::{
    be16, checksum, ethernet, icmp, ip_proto, ipv4, ipv6, tcp, udp, Ipv4Packet, Ipv6Packet, MacAddr,
};

use super::DropReason;

/// Offsets of an IP packet inside a frame, checked so that the rewrites that follow can
/// index without failing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Ip {
    /// IPv6 (else IPv4).
    pub v6: bool,
    /// Offset of the IP header.
    pub l3: usize,
    /// Offset of the upper-layer header.
    pub l4: usize,
    /// Upper-layer protocol.
    pub proto: u8,
    /// A non-first fragment: no upper-layer header in this packet.
    pub later_frag: bool,
    /// Any fragment (first or later): its ports, if any, are not every fragment's.
    pub frag: bool,
    /// The fragment identification (fragments only).
    pub frag_id: u32,
}

impl Ip {
    /// True if the packet carries TCP or UDP ports.
    #[inline]
    pub fn has_ports(&self) -> bool {
        !self.later_frag && (self.proto == ip_proto::TCP || self.proto == ip_proto::UDP)
    }

    /// Source port (call only when [`Ip::has_ports`]).
    #[inline]
    pub fn src_port(&self, b: &[u8]) -> u16 {
        be16(b, self.l4 + udp::field::SRC_PORT)
    }

    /// Destination port (call only when [`Ip::has_ports`]).
    #[inline]
    pub fn dst_port(&self, b: &[u8]) -> u16 {
        be16(b, self.l4 + udp::field::DST_PORT)
    }

    /// Source address bytes offset.
    #[inline]
    pub fn src_off(&self) -> usize {
        self.l3
            + if self.v6 {
                ipv6::SRC_OFFSET
            } else {
                ipv4::SRC_OFFSET
            }
    }

    /// Destination address bytes offset.
    #[inline]
    pub fn dst_off(&self) -> usize {
        self.l3
            + if self.v6 {
                ipv6::DST_OFFSET
            } else {
                ipv4::DST_OFFSET
            }
    }

    /// True for ICMPv6 neighbour discovery (slow path).
    #[inline]
    pub fn is_nd(&self, b: &[u8]) -> bool {
        self.v6 && self.proto == ip_proto::ICMPV6 && !self.later_frag && v6_type::is_nd(b[self.l4])
    }
}

/// What a frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum L3 {
    /// An IPv4 or IPv6 packet.
    Ip(Ip),
    /// ARP (slow path).
    Arp,
}

/// Parses a frame received on a port with MAC `own_mac` (`None`: skip the destination
/// MAC check, as for a tunnel's inner frame). A frame to a group address (broadcast or
/// multicast) is only accepted for ARP and neighbour discovery; an IPv4 header must
/// carry a correct checksum.
#[inline(always)]
pub(crate) fn classify(b: &[u8], own_mac: Option<MacAddr>) -> Result<L3, DropReason> {
    let eth = EthernetFrame::new_checked(b).map_err(|_| DropReason::Malformed)?;
    let mut group = false;
    if let Some(own) = own_mac {
        let dst = eth.dst();
        if dst != own {
            if !dst.is_multicast() {
                return Err(DropReason::OtherHost);
            }
            group = true;
        }
    }
    if !group {
        if let Some(ip) = fast_ipv4(b) {
            return Ok(L3::Ip(ip));
        }
    }
    let l3 = general(b, &eth)?;
    if group && !matches!(l3, L3::Arp) && !matches!(l3, L3::Ip(ip) if ip.is_nd(b)) {
        return Err(DropReason::GroupAddress);
    }
    Ok(l3)
}

/// Everything but the fast case.
#[inline]
fn general(b: &[u8], eth: &EthernetFrame<&[u8]>) -> Result<L3, DropReason> {
    let l2 = eth.payload_info().map_err(|_| DropReason::Malformed)?;
    let l3 = l2.l3_offset;
    let ip = match l2.ethertype {
        EtherType::IPV4 => {
            let p = Ipv4Packet::new_checked(&b[l3..]).map_err(|_| DropReason::Malformed)?;
            if !p.verify_checksum() {
                return Err(DropReason::BadChecksum);
            }
            let frag = p.is_fragment();
            Ip {
                v6: false,
                l3,
                l4: l3 + p.header_len(),
                proto: p.protocol(),
                later_frag: p.frag_offset() != 0,
                frag,
                frag_id: if frag { p.ident() as u32 } else { 0 },
            }
        }
        EtherType::IPV6 => {
            let p = Ipv6Packet::new_checked(&b[l3..]).map_err(|_| DropReason::Malformed)?;
            let ul = p.upper_layer().map_err(|_| DropReason::Malformed)?;
            Ip {
                v6: true,
                l3,
                l4: l3 + ul.offset,
                proto: ul.protocol,
                later_frag: ul.is_later_fragment(),
                frag: ul.fragment.is_some(),
                frag_id: ul.fragment_id,
            }
        }
        EtherType::ARP => return Ok(L3::Arp),
        _ => return Err(DropReason::Unsupported),
    };
    // The upper-layer header must be whole for the fields a rewrite touches.
    let end = ip_end(b, &ip);
    if !ip.later_frag {
        let need = match ip.proto {
            ip_proto::TCP => tcp::HEADER_LEN,
            ip_proto::UDP => udp::HEADER_LEN,
            ip_proto::ICMP | ip_proto::ICMPV6 => icmp::CHECKSUMMED_LEN,
            _ => 0,
        };
        if ip.l4 + need > end {
            return Err(DropReason::Malformed);
        }
    }
    Ok(L3::Ip(ip))
}

/// The common case first: untagged IPv4 without options, its whole upper-layer header
/// present. Anything else (or anything odd) is left to the general parse.
#[inline(always)]
fn fast_ipv4(b: &[u8]) -> Option<Ip> {
    const L3: usize = ethernet::HEADER_LEN;
    const L4: usize = L3 + ipv4::HEADER_LEN;
    if b.len() < L4
        || be16(b, ethernet::field::ETHERTYPE) != EtherType::IPV4
        || b[L3 + ipv4::field::VER_IHL] != ipv4::VER_IHL_NO_OPTIONS
    {
        return None;
    }
    let total = be16(b, L3 + ipv4::field::LENGTH) as usize;
    if total < ipv4::HEADER_LEN || L3 + total > b.len() {
        return None;
    }
    // A bad header checksum is the general parse's to report.
    if checksum::fold(checksum::sum(0, &b[L3..L4])) != 0xffff {
        return None;
    }
    let proto = b[L3 + ipv4::field::PROTOCOL];
    let flags = be16(b, L3 + ipv4::field::FLG_OFF);
    let later_frag = flags & ipv4::OFFSET_MASK != 0;
    let frag = flags & ipv4::MF_AND_OFFSET != 0;
    let need = match proto {
        ip_proto::TCP => tcp::HEADER_LEN,
        ip_proto::UDP => udp::HEADER_LEN,
        ip_proto::ICMP => icmp::CHECKSUMMED_LEN,
        _ => 0,
    };
    if !later_frag && L4 + need > L3 + total {
        return None;
    }
    Some(Ip {
        v6: false,
        l3: L3,
        l4: L4,
        proto,
        later_frag,
        frag,
        frag_id: if frag {
            be16(b, L3 + ipv4::field::IDENT) as u32
        } else {
            0
        },
    })
}

/// End of the IP packet (its stated length), which the checked views bounded by `b`.
#[inline]
pub(crate) fn ip_end(b: &[u8], ip: &Ip) -> usize {
    if ip.v6 {
        ip.l3 + ipv6::HEADER_LEN + be16(b, ip.l3 + ipv6::field::LENGTH) as usize
    } else {
        ip.l3 + be16(b, ip.l3 + ipv4::field::LENGTH) as usize
    }
}

/// The 16 bytes of an IPv6 address at `off` (the caller's parse checked they exist).
#[inline(always)]
pub(crate) fn addr6(b: &[u8], off: usize) -> [u8; 16] {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[off..off + 16]);
    a
}
