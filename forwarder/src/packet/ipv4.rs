//! IPv4 headers (RFC 791), options honoured through IHL, fragments recognised.

use std::net::Ipv4Addr;

use super::checksum::{self, Delta};
use super::{be16, set_be16, Error, Result};

/// Field offsets within the header (byte ranges for multi-byte fields), for the fast
/// paths that index a frame directly.
#[allow(missing_docs)]
pub mod field {
    use core::ops::Range;
    pub const VER_IHL: usize = 0;
    pub const LENGTH: usize = 2;
    pub const IDENT: usize = 4;
    pub const FLG_OFF: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: Range<usize> = 12..16;
    pub const DST: Range<usize> = 16..20;
}

/// Length of an IPv4 header without options.
pub const HEADER_LEN: usize = 20;
/// Version 4, header length 5 words: a header without options.
pub const VER_IHL_NO_OPTIONS: u8 = 0x45;
/// Don't-fragment flag in the flags/offset word.
pub const FLAG_DF: u16 = 0x4000;
/// More-fragments flag in the flags/offset word.
pub const FLAG_MF: u16 = 0x2000;
/// Fragment offset (in 8-byte units) in the flags/offset word.
pub const OFFSET_MASK: u16 = 0x1fff;
/// More-fragments flag and offset: non-zero for any fragment.
pub const MF_AND_OFFSET: u16 = FLAG_MF | OFFSET_MASK;

/// Byte offsets of the source and destination addresses (for rewrites by offset).
pub const SRC_OFFSET: usize = field::SRC.start;
/// See [`SRC_OFFSET`].
pub const DST_OFFSET: usize = field::DST.start;

/// A view over an IPv4 packet.
#[derive(Debug, Clone)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps `buffer` without checks.
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    /// Wraps `buffer`, checking version, header length and total length against it.
    /// Trailing bytes past the total length (Ethernet padding) are allowed.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let b = buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let p = Ipv4Packet { buffer };
        if p.version() != 4 {
            return Err(Error::Malformed);
        }
        let hl = p.header_len();
        if hl < HEADER_LEN {
            return Err(Error::Malformed);
        }
        let total = p.total_len() as usize;
        if total < hl {
            return Err(Error::Malformed);
        }
        if p.buffer.as_ref().len() < total {
            return Err(Error::Truncated);
        }
        Ok(p)
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// IP version (4).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes, options included.
    pub fn header_len(&self) -> usize {
        ((self.buffer.as_ref()[field::VER_IHL] & 0x0f) as usize) * 4
    }

    /// Total length (header and payload).
    pub fn total_len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::LENGTH)
    }

    /// Identification.
    pub fn ident(&self) -> u16 {
        be16(self.buffer.as_ref(), field::IDENT)
    }

    /// More-fragments flag.
    pub fn more_frags(&self) -> bool {
        be16(self.buffer.as_ref(), field::FLG_OFF) & FLAG_MF != 0
    }

    /// Don't-fragment flag.
    pub fn dont_frag(&self) -> bool {
        be16(self.buffer.as_ref(), field::FLG_OFF) & FLAG_DF != 0
    }

    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> u16 {
        (be16(self.buffer.as_ref(), field::FLG_OFF) & OFFSET_MASK) << 3
    }

    /// True for any fragment (first or not).
    pub fn is_fragment(&self) -> bool {
        be16(self.buffer.as_ref(), field::FLG_OFF) & MF_AND_OFFSET != 0
    }

    /// Time to live.
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// Protocol of the payload.
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    /// Header checksum field.
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Source address.
    pub fn src(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::SRC];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// Destination address.
    pub fn dst(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::DST];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// True if the header checksum is correct.
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(0, &self.buffer.as_ref()[..self.header_len()])) == 0xffff
    }

    /// The payload (from the end of the options to the total length).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..self.total_len() as usize]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// Sets the source address, leaving checksums alone.
    pub fn set_src(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&a.octets());
    }

    /// Sets the destination address, leaving checksums alone.
    pub fn set_dst(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&a.octets());
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, c: u16) {
        set_be16(self.buffer.as_mut(), field::CHECKSUM, c);
    }

    /// Decrements the TTL, updating the checksum incrementally. The caller checks the
    /// TTL is above one first.
    #[inline]
    pub fn decrement_ttl(&mut self) {
        let b = self.buffer.as_mut();
        // TTL is the high byte of the word it shares with the protocol.
        let old = be16(b, field::TTL);
        b[field::TTL] -= 1;
        let new = be16(b, field::TTL);
        let c = checksum::update(be16(b, field::CHECKSUM), Delta::of_word(old, new));
        set_be16(b, field::CHECKSUM, c);
    }

    /// Recomputes the header checksum from scratch.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let hl = self.header_len();
        let c = checksum::checksum(&self.buffer.as_ref()[..hl]);
        self.set_checksum(c);
    }
}

/// Writes a 20-byte IPv4 header (no options, DF set, checksum filled) into `b`.
pub fn write_header(
    b: &mut [u8],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    payload_len: u16,
    ttl: u8,
) {
    b[field::VER_IHL] = VER_IHL_NO_OPTIONS;
    b[1] = 0;
    set_be16(b, field::LENGTH, payload_len + HEADER_LEN as u16);
    set_be16(b, field::IDENT, 0);
    set_be16(b, field::FLG_OFF, FLAG_DF);
    b[field::TTL] = ttl;
    b[field::PROTOCOL] = protocol;
    set_be16(b, field::CHECKSUM, 0);
    b[field::SRC].copy_from_slice(&src.octets());
    b[field::DST].copy_from_slice(&dst.octets());
    let c = checksum::checksum(&b[..HEADER_LEN]);
    set_be16(b, field::CHECKSUM, c);
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real UDP/IPv4 header: 198.51.100.10 -> 203.0.113.2, TTL 64, length 33.
    const HDR: [u8; 20] = [
        0x45, 0x00, 0x00, 0x21, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 198, 51, 100, 10,
        203, 0, 113, 2,
    ];

    fn packet() -> Vec<u8> {
        let mut v = HDR.to_vec();
        v.extend_from_slice(&[0u8; 13]);
        let mut p = Ipv4Packet::new_unchecked(&mut v[..]);
        p.fill_checksum();
        v
    }

    #[test]
    fn fields() {
        let v = packet();
        let p = Ipv4Packet::new_checked(&v[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.total_len(), 33);
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), 17);
        assert!(p.dont_frag());
        assert!(!p.is_fragment());
        assert_eq!(p.src(), Ipv4Addr::new(198, 51, 100, 10));
        assert_eq!(p.dst(), Ipv4Addr::new(203, 0, 113, 2));
        assert!(p.verify_checksum());
        assert_eq!(p.payload().len(), 13);
    }

    #[test]
    fn ttl_decrement_keeps_checksum_valid() {
        let mut v = packet();
        let mut p = Ipv4Packet::new_checked(&mut v[..]).unwrap();
        p.decrement_ttl();
        assert_eq!(p.ttl(), 63);
        assert!(p.verify_checksum());
    }

    #[test]
    fn rejects_bad_headers() {
        let v = packet();
        assert_eq!(
            Ipv4Packet::new_checked(&v[..19]).err(),
            Some(Error::Truncated)
        );
        assert_eq!(
            Ipv4Packet::new_checked(&v[..30]).err(),
            Some(Error::Truncated)
        );
        let mut bad = v.clone();
        bad[0] = 0x65;
        assert_eq!(
            Ipv4Packet::new_checked(&bad[..]).err(),
            Some(Error::Malformed)
        );
        let mut bad = v.clone();
        bad[0] = 0x44;
        assert_eq!(
            Ipv4Packet::new_checked(&bad[..]).err(),
            Some(Error::Malformed)
        );
        let mut bad = v.clone();
        bad[0] = 0x4f; // 60-byte header in a 33-byte packet
        assert!(Ipv4Packet::new_checked(&bad[..]).is_err());
    }

    #[test]
    fn fragments() {
        let mut v = packet();
        v[6] = 0x20; // MF, offset 0: first fragment
        let p = Ipv4Packet::new_checked(&v[..]).unwrap();
        assert!(p.is_fragment() && p.more_frags() && p.frag_offset() == 0);
        v[6] = 0x00;
        v[7] = 0x02; // offset 16 bytes
        let p = Ipv4Packet::new_checked(&v[..]).unwrap();
        assert!(p.is_fragment() && p.frag_offset() == 16);
    }
}
