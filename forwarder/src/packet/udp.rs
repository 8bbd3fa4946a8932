//! UDP headers (RFC 768).

use std::net::IpAddr;

use super::checksum;
use super::{be16, ip_proto, set_be16, Error, Result};

/// Field offsets within the header (byte ranges for multi-byte fields), for the fast
/// paths that index a frame directly.
#[allow(missing_docs)]
pub mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const LENGTH: usize = 4;
    pub const CHECKSUM: usize = 6;
}

/// Length of a UDP header.
pub const HEADER_LEN: usize = 8;
/// Offset of the checksum field.
pub const CHECKSUM_OFFSET: usize = field::CHECKSUM;

/// A view over a UDP datagram.
#[derive(Debug, Clone)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// Wraps `buffer` without checks.
    pub const fn new_unchecked(buffer: T) -> Self {
        UdpPacket { buffer }
    }

    /// Wraps `buffer`, checking the header and the length field against it.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let len = buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let p = UdpPacket { buffer };
        let l = p.len() as usize;
        if l < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if l > len {
            return Err(Error::Truncated);
        }
        Ok(p)
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::SRC_PORT)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// Length field (header and payload).
    pub fn len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::LENGTH)
    }

    /// True if the length field says there is no payload.
    pub fn is_empty(&self) -> bool {
        self.len() as usize == HEADER_LEN
    }

    /// Checksum field (0: none, IPv4 only).
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.len() as usize]
    }

    /// True if the checksum is valid for these addresses (a zero checksum over IPv4 is).
    pub fn verify_checksum(&self, src: IpAddr, dst: IpAddr) -> bool {
        if src.is_ipv4() && self.checksum() == 0 {
            return true;
        }
        let data = &self.buffer.as_ref()[..self.len() as usize];
        let acc = checksum::pseudo_header_sum(src, dst, ip_proto::UDP, data.len() as u32);
        checksum::fold(checksum::sum(acc, data)) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    /// Sets the source port.
    pub fn set_src_port(&mut self, p: u16) {
        set_be16(self.buffer.as_mut(), field::SRC_PORT, p);
    }

    /// Sets the destination port.
    pub fn set_dst_port(&mut self, p: u16) {
        set_be16(self.buffer.as_mut(), field::DST_PORT, p);
    }

    /// Sets the length field.
    pub fn set_len(&mut self, l: u16) {
        set_be16(self.buffer.as_mut(), field::LENGTH, l);
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, c: u16) {
        set_be16(self.buffer.as_mut(), field::CHECKSUM, c);
    }

    /// Computes and writes the checksum over the datagram and the pseudo-header.
    pub fn fill_checksum(&mut self, src: IpAddr, dst: IpAddr) {
        self.set_checksum(0);
        let len = self.len() as usize;
        let data = &self.buffer.as_ref()[..len];
        let acc = checksum::pseudo_header_sum(src, dst, ip_proto::UDP, len as u32);
        let c = match !checksum::fold(checksum::sum(acc, data)) {
            0 => 0xffff,
            c => c,
        };
        self.set_checksum(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_then_verify() {
        let mut v = vec![
            0x0f, 0xa0, 0x13, 0x88, 0, 13, 0, 0, b'h', b'e', b'l', b'l', b'o',
        ];
        let src: IpAddr = "198.51.100.10".parse().unwrap();
        let dst: IpAddr = "203.0.113.2".parse().unwrap();
        let mut p = UdpPacket::new_checked(&mut v[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port(), p.len()), (4000, 5000, 13));
        p.fill_checksum(src, dst);
        assert_ne!(p.checksum(), 0);
        assert!(p.verify_checksum(src, dst));
        assert!(!p.verify_checksum(src, "203.0.113.3".parse().unwrap()));
        assert_eq!(p.payload(), b"hello");
    }

    #[test]
    fn bad_lengths() {
        assert_eq!(
            UdpPacket::new_checked(&[0u8; 7][..]).err(),
            Some(Error::Truncated)
        );
        assert_eq!(
            UdpPacket::new_checked(&[0, 1, 0, 2, 0, 4, 0, 0][..]).err(),
            Some(Error::Malformed)
        );
        assert_eq!(
            UdpPacket::new_checked(&[0, 1, 0, 2, 0, 9, 0, 0][..]).err(),
            Some(Error::Truncated)
        );
    }
}
