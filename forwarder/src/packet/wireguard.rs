//! WireGuard's framing on the wire: outer Ethernet, IPv4 or IPv6, UDP, then one of four
//! messages (initiation, response, cookie reply, transport data). The cryptography is
//! boringtun's ([`crate::wg`]); this module only finds the datagram and writes the
//! outer headers in front of what boringtun produced.

use std::net::IpAddr;

use super::ethernet::{self, EtherType, EthernetFrame};
use super::{
    be16, ip_proto, ipv4, ipv6, set_be16, udp, Error, Ipv4Packet, Ipv6Packet, MacAddr, Result,
};

/// Message types (the first byte; the next three are zero).
pub mod msg {
    /// Handshake initiation (148 bytes).
    pub const INITIATION: u8 = 1;
    /// Handshake response (92 bytes).
    pub const RESPONSE: u8 = 2;
    /// Cookie reply (64 bytes).
    pub const COOKIE: u8 = 3;
    /// Transport data (16-byte header, ciphertext, 16-byte tag).
    pub const DATA: u8 = 4;
}

/// Bytes of a transport message that are not the inner packet: type, receiver index and
/// counter (16), and the Poly1305 tag (16).
pub const DATA_OVERHEAD: usize = 32;
/// Outer headers over IPv4: Ethernet, IPv4, UDP.
pub const OUTER_LEN_V4: usize = ethernet::HEADER_LEN + ipv4::HEADER_LEN + udp::HEADER_LEN;
/// Outer headers over IPv6.
pub const OUTER_LEN_V6: usize = ethernet::HEADER_LEN + ipv6::HEADER_LEN + udp::HEADER_LEN;

/// A UDP datagram's place in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram {
    /// Outer source.
    pub src: IpAddr,
    /// Outer destination.
    pub dst: IpAddr,
    /// UDP source port.
    pub src_port: u16,
    /// UDP destination port.
    pub dst_port: u16,
    /// Offset of the UDP payload in the frame.
    pub offset: usize,
    /// Length of the UDP payload (from the UDP length field).
    pub len: usize,
}

impl Datagram {
    /// The payload's bytes in `frame`.
    pub fn payload<'a>(&self, frame: &'a [u8]) -> &'a [u8] {
        &frame[self.offset..self.offset + self.len]
    }
}

/// Finds the UDP datagram of an Ethernet frame (one VLAN tag, IPv4 with options, IPv6
/// with extension headers). `Err(Unsupported)` means "not UDP" (or a fragment); a bad
/// IPv4 header checksum is `Err(Checksum)`.
pub fn parse_udp(b: &[u8]) -> Result<Datagram> {
    let l2 = EthernetFrame::new_checked(b)?.payload_info()?;
    let l3 = &b[l2.l3_offset..];
    let (src, dst, l4_off, l4_end) = match l2.ethertype {
        EtherType::IPV4 => {
            let ip = Ipv4Packet::new_checked(l3)?;
            if ip.protocol() != ip_proto::UDP || ip.is_fragment() {
                return Err(Error::Unsupported);
            }
            if !ip.verify_checksum() {
                return Err(Error::Checksum);
            }
            (
                IpAddr::V4(ip.src()),
                IpAddr::V4(ip.dst()),
                ip.header_len(),
                ip.total_len() as usize,
            )
        }
        EtherType::IPV6 => {
            let ip = Ipv6Packet::new_checked(l3)?;
            let ul = ip.upper_layer()?;
            if ul.protocol != ip_proto::UDP || ul.fragment.is_some() {
                return Err(Error::Unsupported);
            }
            (
                IpAddr::V6(ip.src()),
                IpAddr::V6(ip.dst()),
                ul.offset,
                ipv6::HEADER_LEN + ip.payload_len() as usize,
            )
        }
        _ => return Err(Error::Unsupported),
    };
    let u = udp::UdpPacket::new_checked(&l3[l4_off..l4_end])?;
    Ok(Datagram {
        src,
        dst,
        src_port: u.src_port(),
        dst_port: u.dst_port(),
        offset: l2.l3_offset + l4_off + udp::HEADER_LEN,
        len: u.payload().len(),
    })
}

/// The receiver index of a response, cookie reply or transport message (the peer's
/// slot is its top 24 bits); `None` for an initiation or anything too short.
#[inline]
pub fn receiver_index(msg: &[u8]) -> Option<u32> {
    let min = match *msg.first()? {
        msg::DATA => DATA_OVERHEAD,
        msg::RESPONSE => 92,
        msg::COOKIE => 64,
        _ => return None,
    };
    if msg.len() < min || msg[1..4] != [0, 0, 0] {
        return None;
    }
    // A response has its sender first; cookie replies and data start with the receiver.
    let at = if msg[0] == msg::RESPONSE { 8 } else { 4 };
    Some(u32::from_le_bytes([
        msg[at],
        msg[at + 1],
        msg[at + 2],
        msg[at + 3],
    ]))
}

/// A WireGuard tunnel's outer headers, built with the snapshot; per packet only the next
/// hop's MAC, the lengths and the checksums change. The IPv4 UDP checksum is zero (as
/// Linux WireGuard sends it); over IPv6 it is computed.
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
    /// Headers from `src:src_port` (on a port with MAC `src_mac`) to `dst:dst_port`;
    /// `None` if the families differ.
    pub fn new(
        src_mac: MacAddr,
        src: IpAddr,
        dst: IpAddr,
        src_port: u16,
        dst_port: u16,
    ) -> Option<OuterTemplate> {
        let mut bytes = [0u8; OUTER_LEN_V6];
        let l3 = ethernet::HEADER_LEN;
        let (len, ip_sum) = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                ethernet::write_header(&mut bytes, MacAddr::ZERO, src_mac, EtherType::IPV4);
                ipv4::write_header(&mut bytes[l3..], s, d, ip_proto::UDP, 0, OUTER_TTL);
                bytes[l3 + 2..l3 + 4].fill(0);
                bytes[l3 + 10..l3 + 12].fill(0);
                let sum = super::checksum::sum(0, &bytes[l3..l3 + ipv4::HEADER_LEN]);
                (OUTER_LEN_V4, sum)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                ethernet::write_header(&mut bytes, MacAddr::ZERO, src_mac, EtherType::IPV6);
                ipv6::write_header(&mut bytes[l3..], s, d, ip_proto::UDP, 0, OUTER_TTL);
                (OUTER_LEN_V6, 0)
            }
            _ => return None,
        };
        let u = len - udp::HEADER_LEN;
        set_be16(&mut bytes, u + udp::field::SRC_PORT, src_port);
        set_be16(&mut bytes, u + udp::field::DST_PORT, dst_port);
        Some(OuterTemplate {
            bytes,
            len: len as u8,
            ip_sum,
            src,
            dst,
        })
    }

    /// Bytes the outer headers take (42 over IPv4, 62 over IPv6).
    #[inline(always)]
    pub const fn len(&self) -> usize {
        self.len as usize
    }

    /// Always false (clippy's `len` convention).
    pub const fn is_empty(&self) -> bool {
        false
    }

    /// The outer destination (the peer's endpoint).
    pub const fn dst(&self) -> IpAddr {
        self.dst
    }

    /// Writes the outer headers into the first [`OuterTemplate::len`] bytes of `b`, the
    /// WireGuard message following them. False if `b` is too short or too long.
    #[inline(always)]
    pub fn write(&self, b: &mut [u8], dst_mac: MacAddr) -> bool {
        let hl = self.len();
        if b.len() < hl || b.len() > u16::MAX as usize {
            return false;
        }
        b[..hl].copy_from_slice(&self.bytes[..hl]);
        b[ethernet::field::DST].copy_from_slice(&dst_mac.0);
        let l3 = ethernet::HEADER_LEN;
        let u = hl - udp::HEADER_LEN;
        if hl == OUTER_LEN_V4 {
            let total = (b.len() - l3) as u16;
            set_be16(b, l3 + ipv4::field::LENGTH, total);
            set_be16(
                b,
                l3 + ipv4::field::CHECKSUM,
                !super::checksum::fold(self.ip_sum + total as u32),
            );
            set_be16(b, u + udp::field::LENGTH, total - ipv4::HEADER_LEN as u16);
        } else {
            let payload = (b.len() - l3 - ipv6::HEADER_LEN) as u16;
            set_be16(b, l3 + ipv6::field::LENGTH, payload);
            set_be16(b, u + udp::field::LENGTH, payload);
            udp::UdpPacket::new_unchecked(&mut b[u..]).fill_checksum(self.src, self.dst);
        }
        true
    }
}

/// TTL / hop limit of the outer header.
pub const OUTER_TTL: u8 = 64;

/// The ethertype of a bare IP packet, from its version nibble.
#[inline]
pub fn ethertype_of(ip: &[u8]) -> Option<u16> {
    match ip.first()? >> 4 {
        4 => Some(EtherType::IPV4),
        6 => Some(EtherType::IPV6),
        _ => None,
    }
}

/// The length of the IP packet at `b[l3..]` by its own header; `None` if it does not
/// parse or is longer than `b`.
#[inline]
pub fn ip_len(b: &[u8], l3: usize) -> Option<usize> {
    let v = *b.get(l3)? >> 4;
    let len = match v {
        4 if b.len() >= l3 + ipv4::HEADER_LEN => be16(b, l3 + ipv4::field::LENGTH) as usize,
        6 if b.len() >= l3 + ipv6::HEADER_LEN => {
            ipv6::HEADER_LEN + be16(b, l3 + ipv6::field::LENGTH) as usize
        }
        _ => return None,
    };
    (len >= ipv4::HEADER_LEN && l3 + len <= b.len()).then_some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_writes_what_parse_reads() {
        for (s, d) in [("192.0.2.1", "192.0.2.10"), ("2001:db8::1", "2001:db8::10")] {
            let (s, d): (IpAddr, IpAddr) = (s.parse().unwrap(), d.parse().unwrap());
            let t = OuterTemplate::new(MacAddr([2, 0, 0, 0, 0, 1]), s, d, 51820, 51821).unwrap();
            let mut b = vec![0u8; t.len() + 40];
            b[t.len()..].fill(0xab);
            assert!(t.write(&mut b, MacAddr([2, 0, 0, 0, 0, 2])));
            let dg = parse_udp(&b).unwrap();
            assert_eq!(
                (dg.src, dg.dst, dg.src_port, dg.dst_port),
                (s, d, 51820, 51821)
            );
            assert_eq!(dg.offset, t.len());
            assert_eq!(dg.payload(&b), &[0xab; 40][..]);
            let e = etherparse::SlicedPacket::from_ethernet(&b).unwrap();
            if let Some(etherparse::NetSlice::Ipv6(ip)) = e.net {
                let udp = etherparse::UdpHeaderSlice::from_slice(ip.payload().payload).unwrap();
                let want = udp
                    .to_header()
                    .calc_checksum_ipv6(&ip.header().to_header(), &b[t.len()..])
                    .unwrap();
                assert_eq!(udp.checksum(), want, "IPv6 UDP checksum");
            }
        }
        assert!(OuterTemplate::new(
            MacAddr::ZERO,
            "192.0.2.1".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
            1,
            2
        )
        .is_none());
    }

    #[test]
    fn receiver_index_by_type() {
        let mut data = [0u8; 32];
        data[0] = msg::DATA;
        data[4..8].copy_from_slice(&0x0001_2300u32.to_le_bytes());
        assert_eq!(receiver_index(&data), Some(0x0001_2300));
        assert_eq!(receiver_index(&data[..31]), None, "short");
        let mut resp = [0u8; 92];
        resp[0] = msg::RESPONSE;
        resp[8..12].copy_from_slice(&0x0000_0700u32.to_le_bytes());
        assert_eq!(receiver_index(&resp), Some(0x700));
        let mut init = [0u8; 148];
        init[0] = msg::INITIATION;
        assert_eq!(receiver_index(&init), None);
        data[1] = 1;
        assert_eq!(receiver_index(&data), None, "reserved bytes must be zero");
    }
}
