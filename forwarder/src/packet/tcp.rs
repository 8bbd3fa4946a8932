//! TCP headers (RFC 9293): the fields a rewrite touches.

use std::net::IpAddr;

use super::checksum;
use super::{be16, be32, ip_proto, set_be16, Error, Result};

/// Field offsets within the header (byte ranges for multi-byte fields), for the fast
/// paths that index a frame directly.
#[allow(missing_docs)]
pub mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const SEQ: usize = 4;
    pub const ACK: usize = 8;
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const CHECKSUM: usize = 16;
}

/// Length of a TCP header without options.
pub const HEADER_LEN: usize = 20;
/// Offset of the checksum field.
pub const CHECKSUM_OFFSET: usize = field::CHECKSUM;

/// A view over a TCP segment (header and payload).
#[derive(Debug, Clone)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Wraps `buffer` without checks.
    pub const fn new_unchecked(buffer: T) -> Self {
        TcpPacket { buffer }
    }

    /// Wraps `buffer`, checking the header and its data offset fit.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let len = buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let p = TcpPacket { buffer };
        let hl = p.header_len();
        if hl < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if hl > len {
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

    /// Sequence number.
    pub fn seq(&self) -> u32 {
        be32(self.buffer.as_ref(), field::SEQ)
    }

    /// Acknowledgement number.
    pub fn ack(&self) -> u32 {
        be32(self.buffer.as_ref(), field::ACK)
    }

    /// Header length in bytes, options included.
    pub fn header_len(&self) -> usize {
        ((self.buffer.as_ref()[field::DATA_OFF] >> 4) as usize) * 4
    }

    /// Flag bits (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10, ...).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// True if the checksum over the whole segment and pseudo-header is valid.
    pub fn verify_checksum(&self, src: IpAddr, dst: IpAddr) -> bool {
        let data = self.buffer.as_ref();
        let acc = checksum::pseudo_header_sum(src, dst, ip_proto::TCP, data.len() as u32);
        checksum::fold(checksum::sum(acc, data)) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    /// Sets the checksum field.
    pub fn set_checksum(&mut self, c: u16) {
        set_be16(self.buffer.as_mut(), field::CHECKSUM, c);
    }

    /// Computes and writes the checksum over the whole buffer (the segment).
    pub fn fill_checksum(&mut self, src: IpAddr, dst: IpAddr) {
        self.set_checksum(0);
        let data = self.buffer.as_ref();
        let acc = checksum::pseudo_header_sum(src, dst, ip_proto::TCP, data.len() as u32);
        let c = !checksum::fold(checksum::sum(acc, data));
        self.set_checksum(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syn_fields_and_checksum() {
        let mut v = [0u8; 20];
        v[0..2].copy_from_slice(&40000u16.to_be_bytes());
        v[2..4].copy_from_slice(&80u16.to_be_bytes());
        v[4..8].copy_from_slice(&1u32.to_be_bytes());
        v[12] = 0x50;
        v[13] = 0x02;
        let src: IpAddr = "198.51.100.10".parse().unwrap();
        let dst: IpAddr = "203.0.113.2".parse().unwrap();
        let mut p = TcpPacket::new_checked(&mut v[..]).unwrap();
        p.fill_checksum(src, dst);
        assert_eq!(
            (p.src_port(), p.dst_port(), p.seq(), p.flags()),
            (40000, 80, 1, 2)
        );
        assert!(p.verify_checksum(src, dst));
        assert!(!p.verify_checksum(dst, dst));
    }

    #[test]
    fn data_offset_checked() {
        let mut v = [0u8; 20];
        v[12] = 0x40;
        assert_eq!(TcpPacket::new_checked(&v[..]).err(), Some(Error::Malformed));
        v[12] = 0x60;
        assert_eq!(TcpPacket::new_checked(&v[..]).err(), Some(Error::Truncated));
    }
}
