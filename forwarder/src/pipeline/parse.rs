//! The one parse every pipeline starts with: where the IP and L4 headers are.

use crate::packet::ethernet::{EtherType, EthernetFrame};
use crate::packet::icmp::v6_type;
use crate::packet::{
    be16, checksum, ethernet, icmp, ip_proto, ipv4, ipv6, tcp, udp, Ipv4Packet, Ipv6Packet, MacAddr,
};

use super::DropReason;

/// Offsets of an IP packet inside a frame, checked so that the rewrites that follow can
/// index without failing.
///
/// One `u64` (offsets of 16 bits: a frame is at most 64 KiB), built in a register and
/// stored with one write. A struct of small fields is written field by field and then
/// copied as a whole into the burst's pending state, and on x86 a load that spans several
/// smaller stores cannot be forwarded from them: that stall, once per packet, cost the
/// pipelines more than everything issue 9 added to them.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Ip(u64);

const V6: u64 = 1 << 40;
const LATER_FRAG: u64 = 1 << 41;
const FRAG: u64 = 1 << 42;

impl std::fmt::Debug for Ip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ip")
            .field("v6", &self.v6())
            .field("l3", &self.l3())
            .field("l4", &self.l4())
            .field("proto", &self.proto())
            .field("later_frag", &self.later_frag())
            .field("frag", &self.frag())
            .finish()
    }
}

impl Ip {
    /// An IP header at `l3` (IPv6 if `v6`), its upper-layer header `proto` at `l4`;
    /// `later_frag`: a non-first fragment; `frag`: any fragment.
    #[inline(always)]
    pub fn new(v6: bool, l3: u16, l4: u16, proto: u8, later_frag: bool, frag: bool) -> Ip {
        Ip(l3 as u64
            | (l4 as u64) << 16
            | (proto as u64) << 32
            | if v6 { V6 } else { 0 }
            | if later_frag { LATER_FRAG } else { 0 }
            | if frag { FRAG } else { 0 })
    }

    /// An IP header of the given version at `l3`, nothing else known (for the address
    /// fields only).
    #[inline]
    pub fn header_at(v6: bool, l3: usize) -> Ip {
        Ip::new(v6, l3 as u16, 0, 0, false, false)
    }

    /// Offset of the IP header.
    #[inline(always)]
    pub fn l3(&self) -> usize {
        (self.0 & 0xffff) as usize
    }

    /// Offset of the upper-layer header.
    #[inline(always)]
    pub fn l4(&self) -> usize {
        (self.0 >> 16 & 0xffff) as usize
    }

    /// Upper-layer protocol.
    #[inline(always)]
    pub fn proto(&self) -> u8 {
        (self.0 >> 32) as u8
    }

    /// IPv6 (else IPv4).
    #[inline(always)]
    pub fn v6(&self) -> bool {
        self.0 & V6 != 0
    }

    /// A non-first fragment: no upper-layer header in this packet.
    #[inline(always)]
    pub fn later_frag(&self) -> bool {
        self.0 & LATER_FRAG != 0
    }

    /// Any fragment (first or later): its ports, if any, are not every fragment's.
    #[inline(always)]
    pub fn frag(&self) -> bool {
        self.0 & FRAG != 0
    }

    /// The fragment identification of a fragment (IPv4's 16 bits, or the IPv6 fragment
    /// header's 32), read from the packet: a rare path's, so not kept in `Ip`.
    pub fn frag_id(&self, b: &[u8]) -> u32 {
        if !self.v6() {
            return be16(b, self.l3() + ipv4::field::IDENT) as u32;
        }
        Ipv6Packet::new_checked(&b[self.l3()..])
            .and_then(|p| p.upper_layer())
            .map_or(0, |ul| ul.fragment_id)
    }

    /// True if the packet carries TCP or UDP ports.
    #[inline]
    pub fn has_ports(&self) -> bool {
        !self.later_frag() && (self.proto() == ip_proto::TCP || self.proto() == ip_proto::UDP)
    }

    /// Source port (call only when [`Ip::has_ports`]).
    #[inline]
    pub fn src_port(&self, b: &[u8]) -> u16 {
        be16(b, self.l4() + udp::field::SRC_PORT)
    }

    /// Destination port (call only when [`Ip::has_ports`]).
    #[inline]
    pub fn dst_port(&self, b: &[u8]) -> u16 {
        be16(b, self.l4() + udp::field::DST_PORT)
    }

    /// Source address bytes offset.
    #[inline]
    pub fn src_off(&self) -> usize {
        self.l3()
            + if self.v6() {
                ipv6::SRC_OFFSET
            } else {
                ipv4::SRC_OFFSET
            }
    }

    /// Destination address bytes offset.
    #[inline]
    pub fn dst_off(&self) -> usize {
        self.l3()
            + if self.v6() {
                ipv6::DST_OFFSET
            } else {
                ipv4::DST_OFFSET
            }
    }

    /// True for ICMPv6 neighbour discovery (slow path).
    #[inline]
    pub fn is_nd(&self, b: &[u8]) -> bool {
        self.v6()
            && self.proto() == ip_proto::ICMPV6
            && !self.later_frag()
            && v6_type::is_nd(b[self.l4()])
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

/// Parses a frame received on a port with MAC `own_mac`. A frame to a group address
/// (broadcast or multicast) is only accepted for ARP and neighbour discovery; an IPv4
/// header must carry a correct checksum (RFC 1812 5.2.2).
#[inline(always)]
pub(crate) fn classify(b: &[u8], own_mac: MacAddr) -> Result<L3, DropReason> {
    let eth = EthernetFrame::new_checked(b).map_err(|_| DropReason::Malformed)?;
    let dst = eth.dst();
    let group = dst != own_mac;
    if group && !dst.is_multicast() {
        return Err(DropReason::OtherHost);
    }
    if !group {
        if let Some(ip) = fast_ipv4::<true>(b) {
            return Ok(L3::Ip(ip));
        }
    }
    let l3 = general::<true>(b, &eth)?;
    if group && !matches!(l3, L3::Arp) && !matches!(l3, L3::Ip(ip) if ip.is_nd(b)) {
        return Err(DropReason::GroupAddress);
    }
    Ok(l3)
}

/// What [`classify_into`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Frame {
    /// An IP packet, parsed into the caller's [`Ip`].
    Ip,
    /// ARP (slow path).
    Arp,
    /// Nothing to forward.
    Drop(DropReason),
}

/// [`classify`] into the caller's `ip`: the common case (unicast to `own_mac`,
/// untagged IPv4 without options) inline, the rest out of line. (An out parameter rather
/// than a `Result<L3, _>`: the hot path then keeps `Ip` out of enum shuffles through
/// the stack.)
#[inline(always)]
pub(crate) fn classify_into(b: &[u8], own_mac: MacAddr, ip: &mut Ip) -> Frame {
    if b.len() >= ethernet::HEADER_LEN && b[ethernet::field::DST] == own_mac.0 {
        if let Some(i) = fast_ip::<true>(b) {
            *ip = i;
            return Frame::Ip;
        }
    }
    classify_general(b, own_mac, ip)
}

#[inline(never)]
fn classify_general(b: &[u8], own_mac: MacAddr, ip: &mut Ip) -> Frame {
    match classify(b, own_mac) {
        Ok(L3::Ip(i)) => {
            *ip = i;
            Frame::Ip
        }
        Ok(L3::Arp) => Frame::Arp,
        Err(r) => Frame::Drop(r),
    }
}

/// Parses the inner frame of a tunnel packet from a checked peer: no MAC to match, and
/// an IPv4 header checksum is not verified again (the encapsulating end did, and kept
/// it right through its rewrites).
#[inline]
pub(crate) fn classify_inner(b: &[u8]) -> Result<L3, DropReason> {
    let eth = EthernetFrame::new_checked(b).map_err(|_| DropReason::Malformed)?;
    if let Some(ip) = fast_inner(b) {
        return Ok(L3::Ip(ip));
    }
    general::<false>(b, &eth)
}

/// [`classify_inner`]'s common case alone: untagged IPv4 without options, or IPv6
/// without extension headers (`None`: ask [`classify_inner`]).
#[inline(always)]
pub(crate) fn fast_inner(b: &[u8]) -> Option<Ip> {
    fast_ip::<false>(b)
}

/// The common cases by EtherType: [`fast_ipv4`] or [`fast_ipv6`].
#[inline(always)]
fn fast_ip<const VERIFY: bool>(b: &[u8]) -> Option<Ip> {
    const AT: usize = ethernet::field::ETHERTYPE;
    match b.get(AT..AT + 2) {
        Some(&[0x08, 0x00]) => fast_ipv4::<VERIFY>(b),
        Some(&[0x86, 0xdd]) => fast_ipv6(b),
        _ => None,
    }
}

/// The common IPv6 case: untagged, no extension header (the next header is TCP, UDP or
/// ICMPv6), its upper-layer header whole. Anything else is left to the general parse,
/// which walks extension headers (a walk, out of line, cost the IPv6 aggregator a good
/// part of its parse).
#[inline(always)]
fn fast_ipv6(b: &[u8]) -> Option<Ip> {
    const L3: usize = ethernet::HEADER_LEN;
    const L4: usize = L3 + ipv6::HEADER_LEN;
    if b.len() < L4 || b[L3 + ipv6::field::VER_TC_FLOW] >> 4 != 6 {
        return None;
    }
    let payload = be16(b, L3 + ipv6::field::LENGTH) as usize;
    if L4 + payload > b.len() {
        return None;
    }
    let proto = b[L3 + ipv6::field::NXT_HDR];
    let need = match proto {
        ip_proto::TCP => tcp::HEADER_LEN,
        ip_proto::UDP => udp::HEADER_LEN,
        ip_proto::ICMPV6 => icmp::CHECKSUMMED_LEN,
        _ => return None,
    };
    if need > payload {
        return None;
    }
    Some(Ip::new(true, L3 as u16, L4 as u16, proto, false, false))
}

/// Everything but the fast case.
#[inline]
fn general<const VERIFY: bool>(b: &[u8], eth: &EthernetFrame<&[u8]>) -> Result<L3, DropReason> {
    let l2 = eth.payload_info().map_err(|_| DropReason::Malformed)?;
    let l3 = l2.l3_offset;
    let ip = match l2.ethertype {
        EtherType::IPV4 => {
            let p = Ipv4Packet::new_checked(&b[l3..]).map_err(|_| DropReason::Malformed)?;
            if VERIFY && !p.verify_checksum() {
                return Err(DropReason::BadChecksum);
            }
            Ip::new(
                false,
                off16(l3)?,
                off16(l3 + p.header_len())?,
                p.protocol(),
                p.frag_offset() != 0,
                p.is_fragment(),
            )
        }
        EtherType::IPV6 => {
            let p = Ipv6Packet::new_checked(&b[l3..]).map_err(|_| DropReason::Malformed)?;
            let ul = p.upper_layer().map_err(|_| DropReason::Malformed)?;
            Ip::new(
                true,
                off16(l3)?,
                off16(l3 + ul.offset)?,
                ul.protocol,
                ul.is_later_fragment(),
                ul.fragment.is_some(),
            )
        }
        EtherType::ARP => return Ok(L3::Arp),
        _ => return Err(DropReason::Unsupported),
    };
    // The upper-layer header must be whole for the fields a rewrite touches.
    let end = ip_end(b, &ip);
    if !ip.later_frag() {
        let need = match ip.proto() {
            ip_proto::TCP => tcp::HEADER_LEN,
            ip_proto::UDP => udp::HEADER_LEN,
            ip_proto::ICMP | ip_proto::ICMPV6 => icmp::CHECKSUMMED_LEN,
            _ => 0,
        };
        if ip.l4() + need > end {
            return Err(DropReason::Malformed);
        }
    }
    Ok(L3::Ip(ip))
}

/// An offset as stored in [`Ip`]; a header beyond 64 KiB is no frame's.
#[inline]
fn off16(off: usize) -> Result<u16, DropReason> {
    u16::try_from(off).map_err(|_| DropReason::Malformed)
}

/// The common case first: untagged IPv4 without options, its whole upper-layer header
/// present. Anything else (or anything odd) is left to the general parse.
#[inline(always)]
fn fast_ipv4<const VERIFY: bool>(b: &[u8]) -> Option<Ip> {
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
    if VERIFY && checksum::fold(checksum::sum(0, &b[L3..L4])) != 0xffff {
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
    Some(Ip::new(
        false, L3 as u16, L4 as u16, proto, later_frag, frag,
    ))
}

/// End of the IP packet (its stated length), which the checked views bounded by `b`.
#[inline]
pub(crate) fn ip_end(b: &[u8], ip: &Ip) -> usize {
    if ip.v6() {
        ip.l3() + ipv6::HEADER_LEN + be16(b, ip.l3() + ipv6::field::LENGTH) as usize
    } else {
        ip.l3() + be16(b, ip.l3() + ipv4::field::LENGTH) as usize
    }
}

/// The 16 bytes of an IPv6 address at `off` (the caller's parse checked they exist).
#[inline(always)]
pub(crate) fn addr6(b: &[u8], off: usize) -> [u8; 16] {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[off..off + 16]);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv6 frame: `next` header, `payload` bytes after the fixed header (stated as
    /// `stated` in the payload length field).
    fn v6(next: u8, payload: usize, stated: u16) -> Vec<u8> {
        let mut b = vec![0u8; ethernet::HEADER_LEN + ipv6::HEADER_LEN + payload];
        b[12..14].copy_from_slice(&[0x86, 0xdd]);
        b[14] = 0x60;
        b[14 + ipv6::field::LENGTH..][..2].copy_from_slice(&stated.to_be_bytes());
        b[14 + ipv6::field::NXT_HDR] = next;
        b[14 + ipv6::field::HOP_LIMIT] = 64;
        b[14 + 8] = 0x20;
        b[14 + 24] = 0x20;
        b
    }

    /// Where the fast IPv6 parse answers, it answers as the general parse does; where it
    /// does not (extension headers, short or odd headers), the general parse decides.
    #[test]
    fn fast_ipv6_agrees_with_the_general_parse() {
        let mut frames = Vec::new();
        for next in [
            ip_proto::TCP,
            ip_proto::UDP,
            ip_proto::ICMPV6,
            0,
            44,
            43,
            60,
            59,
            4,
        ] {
            for payload in [0usize, 4, 7, 8, 19, 20, 24, 40] {
                for stated in [
                    payload as u16,
                    payload as u16 + 1,
                    payload.saturating_sub(1) as u16,
                ] {
                    let mut b = v6(next, payload, stated);
                    if next == 44 && payload >= 8 {
                        b[54] = ip_proto::UDP; // a fragment header, then UDP
                    }
                    frames.push(b.clone());
                    b[14] = 0x40; // not version 6
                    frames.push(b);
                }
            }
        }
        let mut fast = 0;
        for b in &frames {
            let eth = EthernetFrame::new_checked(&b[..]).unwrap();
            let general = general::<true>(b, &eth);
            if let Some(ip) = fast_ipv6(b) {
                fast += 1;
                assert_eq!(general, Ok(L3::Ip(ip)), "{b:02x?}");
                assert_eq!(fast_ip::<true>(b), Some(ip));
            }
        }
        // TCP, UDP and ICMPv6 with whole headers: 3 protocols, several lengths each.
        assert!(fast >= 12, "the fast path took only {fast} frames");
    }
}
