//! ARP for IPv4 over Ethernet (RFC 826).

use std::net::Ipv4Addr;

use super::{be16, set_be16, Error, MacAddr, Result};

mod field {
    use core::ops::Range;
    pub const HTYPE: usize = 0;
    pub const PTYPE: usize = 2;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: usize = 6;
    pub const SHA: Range<usize> = 8..14;
    pub const SPA: Range<usize> = 14..18;
    pub const THA: Range<usize> = 18..24;
    pub const TPA: Range<usize> = 24..28;
}

/// Length of an Ethernet/IPv4 ARP packet.
pub const PACKET_LEN: usize = 28;
/// ARP request.
pub const OP_REQUEST: u16 = 1;
/// ARP reply.
pub const OP_REPLY: u16 = 2;

/// A view over an Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// Wraps `buffer`, checking it is an Ethernet/IPv4 ARP packet.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let b = buffer.as_ref();
        if b.len() < PACKET_LEN {
            return Err(Error::Truncated);
        }
        if be16(b, field::HTYPE) != 1
            || be16(b, field::PTYPE) != 0x0800
            || b[field::HLEN] != 6
            || b[field::PLEN] != 4
        {
            return Err(Error::Unsupported);
        }
        Ok(ArpPacket { buffer })
    }

    /// Operation (request or reply).
    pub fn operation(&self) -> u16 {
        be16(self.buffer.as_ref(), field::OPER)
    }

    /// Sender hardware address.
    pub fn sender_mac(&self) -> MacAddr {
        let mut m = [0; 6];
        m.copy_from_slice(&self.buffer.as_ref()[field::SHA]);
        MacAddr(m)
    }

    /// Sender protocol address.
    pub fn sender_ip(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::SPA];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// Target hardware address.
    pub fn target_mac(&self) -> MacAddr {
        let mut m = [0; 6];
        m.copy_from_slice(&self.buffer.as_ref()[field::THA]);
        MacAddr(m)
    }

    /// Target protocol address.
    pub fn target_ip(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::TPA];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }
}

/// Writes an Ethernet/IPv4 ARP packet (28 bytes) into `b`.
pub fn write(b: &mut [u8], op: u16, sha: MacAddr, spa: Ipv4Addr, tha: MacAddr, tpa: Ipv4Addr) {
    set_be16(b, field::HTYPE, 1);
    set_be16(b, field::PTYPE, 0x0800);
    b[field::HLEN] = 6;
    b[field::PLEN] = 4;
    set_be16(b, field::OPER, op);
    b[field::SHA].copy_from_slice(&sha.0);
    b[field::SPA].copy_from_slice(&spa.octets());
    b[field::THA].copy_from_slice(&tha.0);
    b[field::TPA].copy_from_slice(&tpa.octets());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut b = [0u8; 28];
        let mac: MacAddr = "02:00:00:00:00:01".parse().unwrap();
        write(
            &mut b,
            OP_REQUEST,
            mac,
            Ipv4Addr::new(192, 0, 2, 1),
            MacAddr::ZERO,
            Ipv4Addr::new(192, 0, 2, 2),
        );
        let p = ArpPacket::new_checked(&b[..]).unwrap();
        assert_eq!(p.operation(), OP_REQUEST);
        assert_eq!(p.sender_mac(), mac);
        assert_eq!(p.sender_ip(), Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(p.target_ip(), Ipv4Addr::new(192, 0, 2, 2));
        assert_eq!(
            ArpPacket::new_checked(&b[..27]).err(),
            Some(Error::Truncated)
        );
        b[1] = 6;
        assert_eq!(
            ArpPacket::new_checked(&b[..]).err(),
            Some(Error::Unsupported)
        );
    }
}
