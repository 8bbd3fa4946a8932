//! ICMPv4 (RFC 792) and ICMPv6 (RFC 4443, neighbour discovery RFC 4861): the messages
//! the slow path answers.

use std::net::{IpAddr, Ipv6Addr};

use super::checksum;
use super::{be16, ip_proto, set_be16, Error, MacAddr, Result};

/// Field offsets within the header (byte ranges for multi-byte fields), for the fast
/// paths that index a frame directly.
#[allow(missing_docs)]
pub mod field {
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: usize = 2;
    pub const ECHO_IDENT: usize = 4;
    pub const ECHO_SEQ: usize = 6;
    pub const ND_TARGET: core::ops::Range<usize> = 8..24;
    pub const ND_OPTIONS: usize = 24;
}

/// Length of the fixed ICMP header (type, code, checksum, 4 bytes of rest).
pub const HEADER_LEN: usize = 8;
/// Type, code and checksum: what a rewrite of an ICMP packet touches.
pub const CHECKSUMMED_LEN: usize = 4;

/// ICMPv4 message types.
pub mod v4_type {
    /// Echo reply.
    pub const ECHO_REPLY: u8 = 0;
    /// Echo request.
    pub const ECHO_REQUEST: u8 = 8;
}

/// ICMPv6 message types.
pub mod v6_type {
    /// Echo request.
    pub const ECHO_REQUEST: u8 = 128;
    /// Echo reply.
    pub const ECHO_REPLY: u8 = 129;
    /// Router solicitation.
    pub const ROUTER_SOLICIT: u8 = 133;
    /// Router advertisement.
    pub const ROUTER_ADVERT: u8 = 134;
    /// Neighbour solicitation.
    pub const NEIGHBOR_SOLICIT: u8 = 135;
    /// Neighbour advertisement.
    pub const NEIGHBOR_ADVERT: u8 = 136;
    /// Redirect.
    pub const REDIRECT: u8 = 137;

    /// True for the neighbour discovery messages (RFC 4861), which go to the slow path.
    pub const fn is_nd(t: u8) -> bool {
        t >= ROUTER_SOLICIT && t <= REDIRECT
    }
}

/// A view over an ICMPv4 or ICMPv6 message.
#[derive(Debug, Clone)]
pub struct IcmpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> IcmpPacket<T> {
    /// Wraps `buffer`, checking the fixed header fits.
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(IcmpPacket { buffer })
    }

    /// Message type.
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    /// Message code.
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Echo identifier.
    pub fn echo_ident(&self) -> u16 {
        be16(self.buffer.as_ref(), field::ECHO_IDENT)
    }

    /// Echo sequence number.
    pub fn echo_seq(&self) -> u16 {
        be16(self.buffer.as_ref(), field::ECHO_SEQ)
    }

    /// ICMPv4 checksum check (no pseudo-header).
    pub fn verify_checksum_v4(&self) -> bool {
        checksum::fold(checksum::sum(0, self.buffer.as_ref())) == 0xffff
    }

    /// ICMPv6 checksum check (with pseudo-header).
    pub fn verify_checksum_v6(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        let data = self.buffer.as_ref();
        let acc = checksum::pseudo_header_sum(
            IpAddr::V6(src),
            IpAddr::V6(dst),
            ip_proto::ICMPV6,
            data.len() as u32,
        );
        checksum::fold(checksum::sum(acc, data)) == 0xffff
    }

    /// Target address of a neighbour solicitation or advertisement.
    pub fn nd_target(&self) -> Result<Ipv6Addr> {
        let b = self.buffer.as_ref();
        if b.len() < field::ND_TARGET.end {
            return Err(Error::Truncated);
        }
        let mut a = [0u8; 16];
        a.copy_from_slice(&b[field::ND_TARGET]);
        Ok(Ipv6Addr::from(a))
    }

    /// The link-layer address option of type `opt` (1: source, 2: target) of an NS/NA.
    pub fn nd_lladdr(&self, opt: u8) -> Option<MacAddr> {
        let b = self.buffer.as_ref();
        let mut off = field::ND_OPTIONS;
        while off + 2 <= b.len() {
            let len = b[off + 1] as usize * 8;
            if len == 0 || off + len > b.len() {
                return None;
            }
            if b[off] == opt && len >= 8 {
                let mut m = [0u8; 6];
                m.copy_from_slice(&b[off + 2..off + 8]);
                return Some(MacAddr(m));
            }
            off += len;
        }
        None
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> IcmpPacket<T> {
    /// Sets the message type.
    pub fn set_msg_type(&mut self, t: u8) {
        self.buffer.as_mut()[field::TYPE] = t;
    }

    /// Sets the code.
    pub fn set_code(&mut self, c: u8) {
        self.buffer.as_mut()[field::CODE] = c;
    }

    /// Computes the ICMPv4 checksum.
    pub fn fill_checksum_v4(&mut self) {
        set_be16(self.buffer.as_mut(), field::CHECKSUM, 0);
        let c = checksum::checksum(self.buffer.as_ref());
        set_be16(self.buffer.as_mut(), field::CHECKSUM, c);
    }

    /// Computes the ICMPv6 checksum.
    pub fn fill_checksum_v6(&mut self, src: Ipv6Addr, dst: Ipv6Addr) {
        set_be16(self.buffer.as_mut(), field::CHECKSUM, 0);
        let data = self.buffer.as_ref();
        let acc = checksum::pseudo_header_sum(
            IpAddr::V6(src),
            IpAddr::V6(dst),
            ip_proto::ICMPV6,
            data.len() as u32,
        );
        let c = !checksum::fold(checksum::sum(acc, data));
        set_be16(self.buffer.as_mut(), field::CHECKSUM, c);
    }
}

/// Writes a neighbour advertisement for `target` with a target link-layer address option
/// (32 bytes) into `b`; flags: router=false, solicited, override. Checksum left to fill.
pub fn write_neighbor_advert(b: &mut [u8], target: Ipv6Addr, mac: MacAddr, solicited: bool) {
    b[..32].fill(0);
    b[field::TYPE] = v6_type::NEIGHBOR_ADVERT;
    b[4] = if solicited { 0x60 } else { 0x20 };
    b[field::ND_TARGET].copy_from_slice(&target.octets());
    b[24] = 2;
    b[25] = 1;
    b[26..32].copy_from_slice(&mac.0);
}

/// Writes a neighbour solicitation for `target` with a source link-layer address option
/// (32 bytes) into `b`. Checksum left to fill.
pub fn write_neighbor_solicit(b: &mut [u8], target: Ipv6Addr, mac: MacAddr) {
    b[..32].fill(0);
    b[field::TYPE] = v6_type::NEIGHBOR_SOLICIT;
    b[field::ND_TARGET].copy_from_slice(&target.octets());
    b[24] = 1;
    b[25] = 1;
    b[26..32].copy_from_slice(&mac.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_request_fields() {
        let mut v = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1, b'p', b'i', b'n', b'g'];
        let mut p = IcmpPacket::new_checked(&mut v[..]).unwrap();
        p.fill_checksum_v4();
        assert!(p.verify_checksum_v4());
        assert_eq!((p.msg_type(), p.echo_ident(), p.echo_seq()), (8, 0x1234, 1));
    }

    #[test]
    fn neighbor_advert_round_trip() {
        let mut v = vec![0u8; 32];
        let target: Ipv6Addr = "2001:db8:2::2".parse().unwrap();
        let mac: MacAddr = "02:00:00:00:00:07".parse().unwrap();
        write_neighbor_advert(&mut v, target, mac, true);
        let src: Ipv6Addr = "2001:db8:2::1".parse().unwrap();
        let mut p = IcmpPacket::new_checked(&mut v[..]).unwrap();
        p.fill_checksum_v6(src, target);
        assert!(p.verify_checksum_v6(src, target));
        assert_eq!(p.nd_target().unwrap(), target);
        assert_eq!(p.nd_lladdr(2), Some(mac));
        assert_eq!(p.nd_lladdr(1), None);
    }
}
