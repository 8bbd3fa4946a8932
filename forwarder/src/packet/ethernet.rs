//! Ethernet II frames and 802.1Q tags.

use super::{be16, set_be16, Error, MacAddr, Result};

/// Field offsets within the header (byte ranges for multi-byte fields), for the fast
/// paths that index a frame directly.
#[allow(missing_docs)]
pub mod field {
    use core::ops::Range;
    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: usize = 12;
    pub const PAYLOAD: usize = 14;
    /// An 802.1Q tag: TCI then the inner EtherType.
    pub const VLAN_LEN: usize = 4;
}

/// Length of an untagged Ethernet header.
pub const HEADER_LEN: usize = field::PAYLOAD;

/// EtherType values tarp looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EtherType;

impl EtherType {
    /// IPv4.
    pub const IPV4: u16 = 0x0800;
    /// ARP.
    pub const ARP: u16 = 0x0806;
    /// 802.1Q VLAN tag.
    pub const VLAN: u16 = 0x8100;
    /// 802.1ad service tag (QinQ).
    pub const QINQ: u16 = 0x88a8;
    /// IPv6.
    pub const IPV6: u16 = 0x86dd;
}

/// A view over an Ethernet II frame.
#[derive(Debug, Clone)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps `buffer` without checking its length.
    pub const fn new_unchecked(buffer: T) -> Self {
        EthernetFrame { buffer }
    }

    /// Wraps `buffer`, checking it holds a whole Ethernet header.
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(EthernetFrame { buffer })
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Destination MAC.
    pub fn dst(&self) -> MacAddr {
        let mut m = [0; 6];
        m.copy_from_slice(&self.buffer.as_ref()[field::DST]);
        MacAddr(m)
    }

    /// Source MAC.
    pub fn src(&self) -> MacAddr {
        let mut m = [0; 6];
        m.copy_from_slice(&self.buffer.as_ref()[field::SRC]);
        MacAddr(m)
    }

    /// The outer EtherType (0x8100 when tagged).
    pub fn ethertype(&self) -> u16 {
        be16(self.buffer.as_ref(), field::ETHERTYPE)
    }

    /// Walks 802.1Q / 802.1ad tags: (EtherType of the payload, offset of the payload,
    /// outermost VLAN id if tagged).
    pub fn payload_info(&self) -> Result<L2Info> {
        let b = self.buffer.as_ref();
        let mut ethertype = be16(b, field::ETHERTYPE);
        let mut off = field::PAYLOAD;
        let mut vlan = None;
        // At most two tags (QinQ); more is not something a line or a DC port carries.
        for _ in 0..2 {
            if ethertype != EtherType::VLAN && ethertype != EtherType::QINQ {
                break;
            }
            if b.len() < off + field::VLAN_LEN {
                return Err(Error::Truncated);
            }
            if vlan.is_none() {
                vlan = Some(be16(b, off) & 0x0fff);
            }
            ethertype = be16(b, off + 2);
            off += field::VLAN_LEN;
        }
        if ethertype == EtherType::VLAN || ethertype == EtherType::QINQ {
            return Err(Error::Unsupported);
        }
        Ok(L2Info {
            ethertype,
            l3_offset: off,
            vlan,
        })
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    /// Sets the destination MAC.
    pub fn set_dst(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&mac.0);
    }

    /// Sets the source MAC.
    pub fn set_src(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&mac.0);
    }

    /// Sets the outer EtherType.
    pub fn set_ethertype(&mut self, t: u16) {
        set_be16(self.buffer.as_mut(), field::ETHERTYPE, t);
    }
}

/// Where the layer-3 payload of a frame starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L2Info {
    /// EtherType of the payload (after any VLAN tags).
    pub ethertype: u16,
    /// Byte offset of the payload.
    pub l3_offset: usize,
    /// Outermost VLAN id, if the frame is tagged.
    pub vlan: Option<u16>,
}

/// Writes an untagged Ethernet header into the first 14 bytes of `b` (at least 14 long).
#[inline]
pub fn write_header(b: &mut [u8], dst: MacAddr, src: MacAddr, ethertype: u16) {
    b[field::DST].copy_from_slice(&dst.0);
    b[field::SRC].copy_from_slice(&src.0);
    set_be16(b, field::ETHERTYPE, ethertype);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untagged_and_tagged() {
        let mut f = [0u8; 22];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let info = EthernetFrame::new_checked(&f[..])
            .unwrap()
            .payload_info()
            .unwrap();
        assert_eq!(
            info,
            L2Info {
                ethertype: 0x0800,
                l3_offset: 14,
                vlan: None
            }
        );

        f[12..14].copy_from_slice(&[0x81, 0x00]);
        f[14..16].copy_from_slice(&[0x20, 0x64]); // PCP 1, VLAN 100
        f[16..18].copy_from_slice(&[0x86, 0xdd]);
        let info = EthernetFrame::new_checked(&f[..])
            .unwrap()
            .payload_info()
            .unwrap();
        assert_eq!(
            info,
            L2Info {
                ethertype: 0x86dd,
                l3_offset: 18,
                vlan: Some(100)
            }
        );
    }

    #[test]
    fn short_inputs_are_errors() {
        assert_eq!(
            EthernetFrame::new_checked(&[0u8; 13][..]).err(),
            Some(Error::Truncated)
        );
        let mut f = [0u8; 16];
        f[12..14].copy_from_slice(&[0x81, 0x00]);
        let e = EthernetFrame::new_checked(&f[..]).unwrap();
        assert_eq!(e.payload_info(), Err(Error::Truncated));
    }
}
