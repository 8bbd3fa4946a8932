//! Zero-copy views over packet bytes, in the style of smoltcp's `wire` module.
//!
//! Each header is a `Packet<T: AsRef<[u8]>>` over someone else's bytes; `new_checked`
//! rejects a buffer too short for the fields the getters read, so that no getter can
//! panic afterwards. Field offsets live in a `mod field` per header.

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod icmp;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod udp;
pub mod vxlan;
pub mod wireguard;

pub use ethernet::{EtherType, EthernetFrame};
pub use ipv4::Ipv4Packet;
pub use ipv6::Ipv6Packet;
pub use tarp_api::MacAddr;
pub use tcp::TcpPacket;
pub use udp::UdpPacket;
pub use vxlan::VxlanPacket;

/// Why bytes are not a valid header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Fewer bytes than the header (or its stated length) needs.
    #[error("truncated: header needs more bytes than the packet has")]
    Truncated,
    /// A field holds a value the header cannot have (version, header length, ...).
    #[error("malformed header field")]
    Malformed,
    /// A protocol or option tarp does not handle.
    #[error("unsupported protocol")]
    Unsupported,
    /// A header checksum that does not verify.
    #[error("bad header checksum")]
    Checksum,
}

/// Result of a checked constructor or parse.
pub type Result<T> = core::result::Result<T, Error>;

/// IP protocol numbers tarp looks at.
pub mod ip_proto {
    /// ICMP for IPv4.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMP for IPv6.
    pub const ICMPV6: u8 = 58;
    /// IPv6 hop-by-hop options.
    pub const HOPOPTS: u8 = 0;
    /// IPv6 routing header.
    pub const ROUTING: u8 = 43;
    /// IPv6 fragment header.
    pub const FRAGMENT: u8 = 44;
    /// IPv6 authentication header.
    pub const AH: u8 = 51;
    /// IPv6 no next header.
    pub const NONE: u8 = 59;
    /// IPv6 destination options.
    pub const DSTOPTS: u8 = 60;
}

#[inline(always)]
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    let mut w = [0u8; 2];
    w.copy_from_slice(&b[at..at + 2]);
    u16::from_be_bytes(w)
}

#[inline(always)]
pub(crate) fn set_be16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[inline(always)]
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(w)
}
