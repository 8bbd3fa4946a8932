//! VXLAN (RFC 7348): the tunnel between aggregators and the demux.
//!
//! Outer Ethernet, outer IPv4 or IPv6, outer UDP to port 4789, an 8-byte VXLAN header,
//! then the inner Ethernet frame unchanged.

use std::net::IpAddr;

use super::ethernet::{self, EtherType};
use super::{be16, be32, ip_proto, ipv4, ipv6, set_be16, udp, Error, MacAddr, Result};

/// Field offsets within the header (byte ranges for multi-byte fields), for the fast
/// paths that index a frame directly.
#[allow(missing_docs)]
pub mod field {
    pub const FLAGS: usize = 0;
    pub const VNI: usize = 4;
}

/// IANA port for VXLAN.
pub const PORT: u16 = 4789;
/// Length of the VXLAN header.
pub const HEADER_LEN: usize = 8;
/// Bytes an IPv4 outer adds: Ethernet, IPv4, UDP, VXLAN.
pub const OUTER_LEN_V4: usize =
    ethernet::HEADER_LEN + ipv4::HEADER_LEN + udp::HEADER_LEN + HEADER_LEN;
/// Bytes an IPv6 outer adds.
pub const OUTER_LEN_V6: usize =
    ethernet::HEADER_LEN + ipv6::HEADER_LEN + udp::HEADER_LEN + HEADER_LEN;
/// TTL / hop limit of the outer header.
pub const OUTER_TTL: u8 = 64;
/// The "valid VNI" flag.
const FLAG_I: u8 = 0x08;

/// A view over a VXLAN header and the inner frame behind it.
#[derive(Debug, Clone)]
pub struct VxlanPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanPacket<T> {
    /// Wraps `buffer`, checking the header fits and the I flag is set.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let b = buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if b[field::FLAGS] & FLAG_I == 0 {
            return Err(Error::Malformed);
        }
        Ok(VxlanPacket { buffer })
    }

    /// The 24-bit VXLAN network identifier.
    pub fn vni(&self) -> u32 {
        be32(self.buffer.as_ref(), field::VNI) >> 8
    }

    /// The inner Ethernet frame.
    pub fn inner(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

/// Writes a VXLAN header with the I flag and `vni` into the first 8 bytes of `b`.
pub fn write_header(b: &mut [u8], vni: u32) {
    b[..HEADER_LEN].fill(0);
    b[field::FLAGS] = FLAG_I;
    b[field::VNI..field::VNI + 4].copy_from_slice(&(vni << 8).to_be_bytes());
}

/// The outer headers of one tunnel packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outer {
    /// Next hop towards the tunnel peer.
    pub dst_mac: MacAddr,
    /// Our port's MAC.
    pub src_mac: MacAddr,
    /// Our tunnel endpoint.
    pub src: IpAddr,
    /// The peer's tunnel endpoint.
    pub dst: IpAddr,
    /// VXLAN network identifier.
    pub vni: u32,
    /// Outer UDP source port (from [`flow_port`], so the receiver's RSS spreads flows).
    pub src_port: u16,
}

impl Outer {
    /// Bytes this outer adds in front of the inner frame.
    pub const fn len(&self) -> usize {
        match self.src {
            IpAddr::V4(_) => OUTER_LEN_V4,
            IpAddr::V6(_) => OUTER_LEN_V6,
        }
    }

    /// Always false: an outer is never empty (here for clippy's `len` convention).
    pub const fn is_empty(&self) -> bool {
        false
    }
}

/// The outer UDP source port for an inner flow hash: in 49152..=65535 as RFC 7348
/// recommends.
#[inline]
pub const fn flow_port(hash: u32) -> u16 {
    0xc000 | ((hash ^ (hash >> 16)) as u16 & 0x3fff)
}

/// Writes `outer` into the first `outer.len()` bytes of `b`; the rest of `b` is the inner
/// frame. Lengths come from `b`'s length. An IPv4 outer UDP checksum is zero (allowed by
/// RFC 7348); an IPv6 one is computed over the whole datagram (RFC 8200 requires it).
/// Returns false if `b` is too short or too long for the length fields, or the address
/// families differ.
pub fn write_outer(b: &mut [u8], outer: &Outer) -> bool {
    let hl = outer.len();
    if b.len() < hl || b.len() > u16::MAX as usize {
        return false;
    }
    let l3 = ethernet::HEADER_LEN;
    match (outer.src, outer.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let ethertype = EtherType::IPV4;
            ethernet::write_header(b, outer.dst_mac, outer.src_mac, ethertype);
            let udp_len = (b.len() - l3 - ipv4::HEADER_LEN) as u16;
            ipv4::write_header(&mut b[l3..], s, d, ip_proto::UDP, udp_len, OUTER_TTL);
            let u = l3 + ipv4::HEADER_LEN;
            write_udp(&mut b[u..], outer.src_port, udp_len);
            write_header(&mut b[u + udp::HEADER_LEN..], outer.vni);
            true
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            ethernet::write_header(b, outer.dst_mac, outer.src_mac, EtherType::IPV6);
            let udp_len = (b.len() - l3 - ipv6::HEADER_LEN) as u16;
            ipv6::write_header(&mut b[l3..], s, d, ip_proto::UDP, udp_len, OUTER_TTL);
            let u = l3 + ipv6::HEADER_LEN;
            write_udp(&mut b[u..], outer.src_port, udp_len);
            write_header(&mut b[u + udp::HEADER_LEN..], outer.vni);
            udp::UdpPacket::new_unchecked(&mut b[u..]).fill_checksum(outer.src, outer.dst);
            true
        }
        _ => false,
    }
}

/// A tunnel's outer headers, built once when the snapshot is: per packet only the
/// next hop's MAC, the lengths, the UDP source port and the checksums change, and the
/// IPv4 header checksum is finished from a precomputed partial sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OuterTemplate {
    bytes: [u8; OUTER_LEN_V6],
    len: u8,
    /// One's-complement sum of the IPv4 header with zero length and checksum fields.
    ip_sum: u32,
    src: IpAddr,
    dst: IpAddr,
}

impl OuterTemplate {
    /// The outer headers from `src` (on a port with MAC `src_mac`) to `dst` with `vni`;
    /// `None` if the families differ.
    pub fn new(src_mac: MacAddr, src: IpAddr, dst: IpAddr, vni: u32) -> Option<OuterTemplate> {
        let outer = Outer {
            dst_mac: MacAddr::ZERO,
            src_mac,
            src,
            dst,
            vni,
            src_port: 0,
        };
        let len = outer.len();
        let mut bytes = [0u8; OUTER_LEN_V6];
        // Lay the headers out for an empty inner frame; lengths are fixed per packet.
        if !write_outer(&mut bytes[..len], &outer) {
            return None;
        }
        let ip_sum = if src.is_ipv4() {
            let l3 = ethernet::HEADER_LEN;
            bytes[l3 + 2..l3 + 4].fill(0);
            bytes[l3 + 10..l3 + 12].fill(0);
            super::checksum::sum(0, &bytes[l3..l3 + ipv4::HEADER_LEN])
        } else {
            0
        };
        Some(OuterTemplate {
            bytes,
            len: len as u8,
            ip_sum,
            src,
            dst,
        })
    }

    /// Bytes the outer headers take.
    #[inline(always)]
    pub const fn len(&self) -> usize {
        self.len as usize
    }

    /// Always false (clippy's `len` convention).
    pub const fn is_empty(&self) -> bool {
        false
    }

    /// Writes the outer headers into the first [`OuterTemplate::len`] bytes of `b`, the
    /// inner frame following them. Returns false if `b` is too short or too long.
    #[inline(always)]
    pub fn write(&self, b: &mut [u8], dst_mac: MacAddr, src_port: u16) -> bool {
        let hl = self.len();
        if b.len() < hl || b.len() > u16::MAX as usize {
            return false;
        }
        // Copies of a constant length (inlined moves, where `..hl` calls memcpy).
        if hl == OUTER_LEN_V4 {
            b[..OUTER_LEN_V4].copy_from_slice(&self.bytes[..OUTER_LEN_V4]);
        } else {
            b[..OUTER_LEN_V6].copy_from_slice(&self.bytes[..OUTER_LEN_V6]);
        }
        b[ethernet::field::DST].copy_from_slice(&dst_mac.0);
        let l3 = ethernet::HEADER_LEN;
        if hl == OUTER_LEN_V4 {
            let total = (b.len() - l3) as u16;
            set_be16(b, l3 + ipv4::field::LENGTH, total);
            set_be16(
                b,
                l3 + ipv4::field::CHECKSUM,
                !super::checksum::fold(self.ip_sum + total as u32),
            );
            let u = l3 + ipv4::HEADER_LEN;
            set_be16(b, u + udp::field::SRC_PORT, src_port);
            set_be16(b, u + udp::field::LENGTH, total - ipv4::HEADER_LEN as u16);
        } else {
            let payload = (b.len() - l3 - ipv6::HEADER_LEN) as u16;
            set_be16(b, l3 + ipv6::field::LENGTH, payload);
            let u = l3 + ipv6::HEADER_LEN;
            set_be16(b, u + udp::field::SRC_PORT, src_port);
            set_be16(b, u + udp::field::LENGTH, payload);
            set_be16(b, u + udp::field::CHECKSUM, 0);
            udp::UdpPacket::new_unchecked(&mut b[u..]).fill_checksum(self.src, self.dst);
        }
        true
    }
}

fn write_udp(b: &mut [u8], src_port: u16, len: u16) {
    set_be16(b, udp::field::SRC_PORT, src_port);
    set_be16(b, udp::field::DST_PORT, PORT);
    set_be16(b, udp::field::LENGTH, len);
    set_be16(b, 6, 0);
}

/// What a received tunnel packet's outer headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OuterInfo {
    /// Outer source (the peer).
    pub src: IpAddr,
    /// Outer destination (should be ours).
    pub dst: IpAddr,
    /// VXLAN network identifier.
    pub vni: u32,
    /// Offset of the inner Ethernet frame.
    pub inner_offset: usize,
    /// Length of the inner frame (where the tunnel's UDP datagram ends).
    pub inner_len: usize,
}

/// The common case of [`parse_outer`]: untagged, IPv4 without options, not a fragment,
/// a correct header checksum, UDP to 4789 with consistent lengths and the I flag.
/// Returns (outer source, outer destination, VNI, inner frame length); the inner frame
/// starts at [`OUTER_LEN_V4`]. `None` means "ask [`parse_outer`]".
#[inline(always)]
pub fn parse_outer_v4_fast(b: &[u8]) -> Option<(u32, u32, u32, usize)> {
    const L3: usize = ethernet::HEADER_LEN;
    const L4: usize = L3 + ipv4::HEADER_LEN;
    const VX: usize = L4 + udp::HEADER_LEN;
    if b.len() < OUTER_LEN_V4 + ethernet::HEADER_LEN
        || be16(b, ethernet::field::ETHERTYPE) != EtherType::IPV4
        || b[L3 + ipv4::field::VER_IHL] != ipv4::VER_IHL_NO_OPTIONS
        || b[L3 + ipv4::field::PROTOCOL] != ip_proto::UDP
        || be16(b, L3 + ipv4::field::FLG_OFF) & ipv4::MF_AND_OFFSET != 0
        || be16(b, L4 + udp::field::DST_PORT) != PORT
        || b[VX + field::FLAGS] & FLAG_I == 0
    {
        return None;
    }
    let total = be16(b, L3 + ipv4::field::LENGTH) as usize;
    let udp_len = be16(b, L4 + udp::field::LENGTH) as usize;
    if L3 + total > b.len()
        || udp_len + ipv4::HEADER_LEN != total
        || udp_len < udp::HEADER_LEN + HEADER_LEN + ethernet::HEADER_LEN
    {
        return None;
    }
    if super::checksum::fold(super::checksum::sum(0, &b[L3..L4])) != 0xffff {
        return None;
    }
    Some((
        be32(b, L3 + ipv4::SRC_OFFSET),
        be32(b, L3 + ipv4::DST_OFFSET),
        be32(b, VX + field::VNI) >> 8,
        udp_len - udp::HEADER_LEN - HEADER_LEN,
    ))
}

/// Parses the outer headers of a frame. `Err(Unsupported)` means "not VXLAN" (another
/// protocol or port), any other error a broken VXLAN packet.
pub fn parse_outer(b: &[u8]) -> Result<OuterInfo> {
    outer_info(b, &super::wireguard::parse_udp(b)?)
}

/// [`parse_outer`] for a datagram already found in `b`.
pub fn outer_info(b: &[u8], dg: &super::wireguard::Datagram) -> Result<OuterInfo> {
    if dg.dst_port != PORT {
        return Err(Error::Unsupported);
    }
    let vx = VxlanPacket::new_checked(dg.payload(b))?;
    let inner_offset = dg.offset + HEADER_LEN;
    // The UDP length decides where the inner frame ends; it must hold an Ethernet header.
    if vx.inner().len() < ethernet::HEADER_LEN {
        return Err(Error::Truncated);
    }
    Ok(OuterInfo {
        src: dg.src,
        dst: dg.dst,
        vni: vx.vni(),
        inner_offset,
        inner_len: vx.inner().len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encapsulate_then_parse_v4_and_v6() {
        let inner = [0xaau8; 60];
        for (src, dst, hl) in [
            ("192.0.2.1", "192.0.2.2", OUTER_LEN_V4),
            ("2001:db8:ffff::1", "2001:db8:ffff::2", OUTER_LEN_V6),
        ] {
            let outer = Outer {
                dst_mac: "02:00:00:00:00:02".parse().unwrap(),
                src_mac: "02:00:00:00:00:01".parse().unwrap(),
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
                vni: 0x123456,
                src_port: flow_port(0xdead_beef),
            };
            let mut b = vec![0u8; hl];
            b.extend_from_slice(&inner);
            assert!(write_outer(&mut b, &outer));
            let info = parse_outer(&b).unwrap();
            assert_eq!(info.src, outer.src);
            assert_eq!(info.dst, outer.dst);
            assert_eq!(info.vni, 0x123456);
            assert_eq!(info.inner_offset, hl);
            assert_eq!(info.inner_len, inner.len());
            assert_eq!(&b[hl..], &inner[..]);
            let u = udp::UdpPacket::new_checked(&b[hl - 16..]).unwrap();
            assert!(u.src_port() >= 49152);
            assert!(u.verify_checksum(outer.src, outer.dst));
        }
    }

    #[test]
    fn template_writes_what_write_outer_writes() {
        for (src, dst) in [
            ("192.0.2.1", "192.0.2.2"),
            ("2001:db8:ffff::1", "2001:db8:ffff::2"),
        ] {
            let outer = Outer {
                dst_mac: "02:00:00:00:00:02".parse().unwrap(),
                src_mac: "02:00:00:00:00:01".parse().unwrap(),
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
                vni: 4242,
                src_port: 51234,
            };
            let t = OuterTemplate::new(outer.src_mac, outer.src, outer.dst, outer.vni).unwrap();
            for inner_len in [14usize, 60, 1400] {
                let inner: Vec<u8> = (0..inner_len).map(|i| i as u8).collect();
                let mut a = vec![0u8; outer.len()];
                a.extend_from_slice(&inner);
                let mut b = a.clone();
                assert!(write_outer(&mut a, &outer));
                assert!(t.write(&mut b, outer.dst_mac, outer.src_port));
                assert_eq!(a, b, "{src} inner {inner_len}");
            }
        }
    }

    #[test]
    fn not_vxlan_is_unsupported() {
        let mut b = vec![0u8; OUTER_LEN_V4 + 14];
        let outer = Outer {
            dst_mac: MacAddr::ZERO,
            src_mac: MacAddr::ZERO,
            src: "192.0.2.1".parse().unwrap(),
            dst: "192.0.2.2".parse().unwrap(),
            vni: 1,
            src_port: 50000,
        };
        assert!(write_outer(&mut b, &outer));
        b[14 + 20 + 2..14 + 20 + 4].copy_from_slice(&53u16.to_be_bytes());
        assert_eq!(parse_outer(&b), Err(Error::Unsupported));
    }
}
