//! IPv6 headers (RFC 8200), extension headers walked to reach the upper layer.

use std::net::Ipv6Addr;

use super::{be16, be32, ip_proto, set_be16, Error, Result};

/// Field offsets within the header (byte ranges for multi-byte fields), for the fast
/// paths that index a frame directly.
#[allow(missing_docs)]
pub mod field {
    use core::ops::Range;
    pub const VER_TC_FLOW: usize = 0;
    pub const LENGTH: usize = 4;
    pub const NXT_HDR: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: Range<usize> = 8..24;
    pub const DST: Range<usize> = 24..40;
}

/// Length of the fixed IPv6 header.
pub const HEADER_LEN: usize = 40;
/// Byte offset of the source address.
pub const SRC_OFFSET: usize = field::SRC.start;
/// Byte offset of the destination address.
pub const DST_OFFSET: usize = field::DST.start;

/// Extension headers walked before giving up (a packet with more is dropped as malformed).
const MAX_EXT_HEADERS: usize = 8;

/// A view over an IPv6 packet.
#[derive(Debug, Clone)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

/// Where the upper-layer header of an IPv6 packet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpperLayer {
    /// Upper-layer protocol (TCP, UDP, ICMPv6, ...).
    pub protocol: u8,
    /// Offset of its header from the start of the IPv6 header.
    pub offset: usize,
    /// Fragment offset in bytes and more-fragments flag, if a fragment header was seen.
    pub fragment: Option<(u16, bool)>,
    /// The fragment header's identification (0 without one).
    pub fragment_id: u32,
}

impl UpperLayer {
    /// True when the upper-layer header is not in this packet (a non-first fragment).
    pub fn is_later_fragment(&self) -> bool {
        matches!(self.fragment, Some((off, _)) if off != 0)
    }
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Wraps `buffer` without checks.
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv6Packet { buffer }
    }

    /// Wraps `buffer`, checking the version and that the payload length fits.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let b = buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let p = Ipv6Packet { buffer };
        if p.version() != 6 {
            return Err(Error::Malformed);
        }
        if p.buffer.as_ref().len() < HEADER_LEN + p.payload_len() as usize {
            return Err(Error::Truncated);
        }
        Ok(p)
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// IP version (6).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_TC_FLOW] >> 4
    }

    /// Payload length (extension headers included).
    pub fn payload_len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::LENGTH)
    }

    /// Next header of the fixed header.
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NXT_HDR]
    }

    /// Hop limit.
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    /// Source address.
    pub fn src(&self) -> Ipv6Addr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.buffer.as_ref()[field::SRC]);
        Ipv6Addr::from(a)
    }

    /// Destination address.
    pub fn dst(&self) -> Ipv6Addr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.buffer.as_ref()[field::DST]);
        Ipv6Addr::from(a)
    }

    /// Walks extension headers to the upper layer. Errors when a header runs past the
    /// payload or there are too many of them.
    pub fn upper_layer(&self) -> Result<UpperLayer> {
        let b = self.buffer.as_ref();
        let end = HEADER_LEN + self.payload_len() as usize;
        let mut next = self.next_header();
        let mut off = HEADER_LEN;
        let mut fragment = None;
        let mut fragment_id = 0;
        for _ in 0..MAX_EXT_HEADERS {
            let len = match next {
                ip_proto::HOPOPTS | ip_proto::ROUTING | ip_proto::DSTOPTS => {
                    if off + 2 > end {
                        return Err(Error::Truncated);
                    }
                    (b[off + 1] as usize + 1) * 8
                }
                ip_proto::FRAGMENT => {
                    if off + 8 > end {
                        return Err(Error::Truncated);
                    }
                    let w = be16(b, off + 2);
                    fragment = Some((w & 0xfff8, w & 1 == 1));
                    fragment_id = be32(b, off + 4);
                    8
                }
                ip_proto::AH => {
                    if off + 2 > end {
                        return Err(Error::Truncated);
                    }
                    (b[off + 1] as usize + 2) * 4
                }
                protocol => {
                    return Ok(UpperLayer {
                        protocol,
                        offset: off,
                        fragment,
                        fragment_id,
                    })
                }
            };
            if off + len > end {
                return Err(Error::Truncated);
            }
            next = b[off];
            off += len;
            // Behind a non-first fragment the next header is data, not a header.
            if matches!(fragment, Some((o, _)) if o != 0) {
                return Ok(UpperLayer {
                    protocol: next,
                    offset: off,
                    fragment,
                    fragment_id,
                });
            }
        }
        Err(Error::Malformed)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    /// Sets the source address (no checksum to update in IPv6's own header).
    pub fn set_src(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&a.octets());
    }

    /// Sets the destination address.
    pub fn set_dst(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&a.octets());
    }

    /// Sets the hop limit.
    pub fn set_hop_limit(&mut self, h: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = h;
    }
}

/// Writes a 40-byte IPv6 header into `b`.
pub fn write_header(
    b: &mut [u8],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next: u8,
    payload_len: u16,
    hop_limit: u8,
) {
    b[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
    set_be16(b, field::LENGTH, payload_len);
    b[field::NXT_HDR] = next;
    b[field::HOP_LIMIT] = hop_limit;
    b[field::SRC].copy_from_slice(&src.octets());
    b[field::DST].copy_from_slice(&dst.octets());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(next: u8, ext: &[u8], l4: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; HEADER_LEN];
        let src: Ipv6Addr = "2001:db8:1::10".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8:2::2".parse().unwrap();
        write_header(&mut v, src, dst, next, (ext.len() + l4.len()) as u16, 64);
        v.extend_from_slice(ext);
        v.extend_from_slice(l4);
        v
    }

    #[test]
    fn plain_udp() {
        let v = packet(17, &[], &[0u8; 8]);
        let p = Ipv6Packet::new_checked(&v[..]).unwrap();
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(p.dst(), "2001:db8:2::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            p.upper_layer().unwrap(),
            UpperLayer {
                protocol: 17,
                offset: 40,
                fragment: None,
                fragment_id: 0
            }
        );
    }

    #[test]
    fn walks_hop_by_hop_and_fragment() {
        // Hop-by-hop (8 bytes, next = fragment), fragment (next = TCP, offset 0, M=1).
        let ext = [44, 0, 1, 4, 0, 0, 0, 0, 6, 0, 0x00, 0x01, 0, 0, 0, 1];
        let v = packet(0, &ext, &[0u8; 20]);
        let ul = Ipv6Packet::new_checked(&v[..])
            .unwrap()
            .upper_layer()
            .unwrap();
        assert_eq!(
            ul,
            UpperLayer {
                protocol: 6,
                offset: 56,
                fragment: Some((0, true)),
                fragment_id: 1
            }
        );
        assert!(!ul.is_later_fragment());
    }

    #[test]
    fn later_fragment_is_recognised() {
        let ext = [17, 0, 0x00, 0xb8, 0, 0, 0, 1]; // offset 184 bytes
        let v = packet(44, &ext, &[0u8; 8]);
        let ul = Ipv6Packet::new_checked(&v[..])
            .unwrap()
            .upper_layer()
            .unwrap();
        assert!(ul.is_later_fragment());
    }

    #[test]
    fn truncated_extension_header() {
        let ext = [17, 5]; // claims 48 bytes
        let v = packet(60, &ext, &[]);
        let p = Ipv6Packet::new_checked(&v[..]).unwrap();
        assert_eq!(p.upper_layer(), Err(Error::Truncated));
        assert_eq!(
            Ipv6Packet::new_checked(&v[..41]).err(),
            Some(Error::Truncated)
        );
    }
}
