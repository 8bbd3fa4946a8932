//! TCP MSS clamping: a SYN's MSS option is lowered to what fits the tunnel, so that the
//! other end never sends a segment the tunnel cannot carry (Linux: `TCPMSS
//! --clamp-mss-to-pmtu`). The checksum is updated incrementally.

use crate::packet::checksum::{self, Delta};
use crate::packet::{be16, ip_proto, ipv4, ipv6, set_be16, tcp};

use super::parse::{ip_end, Ip};

/// TCP's SYN flag.
const SYN: u8 = 0x02;
/// The MSS option's kind and length.
const MSS_KIND: u8 = 2;
const MSS_LEN: u8 = 4;

/// The MSS that fills an IP packet of `mtu` bytes (no IP or TCP options).
#[inline]
pub(crate) const fn mss_for(mtu: u16, v6: bool) -> u16 {
    let hdr = if v6 {
        ipv6::HEADER_LEN + tcp::HEADER_LEN
    } else {
        ipv4::HEADER_LEN + tcp::HEADER_LEN
    } as u16;
    mtu.saturating_sub(hdr)
}

/// Lowers the MSS option of a TCP SYN (or SYN-ACK) to at most `max`. True if changed.
/// The test for a SYN is inline; the option walk is not (one packet of a connection).
#[inline(always)]
pub(crate) fn clamp(b: &mut [u8], ip: &Ip, max: u16) -> bool {
    if ip.proto() != ip_proto::TCP || ip.frag() || b[ip.l4() + tcp::field::FLAGS] & SYN == 0 {
        return false;
    }
    clamp_syn(b, ip, max)
}

#[inline(never)]
fn clamp_syn(b: &mut [u8], ip: &Ip, max: u16) -> bool {
    let end = ip_end(b, ip);
    let hl = (b[ip.l4() + tcp::field::DATA_OFF] >> 4) as usize * 4;
    let opts_end = (ip.l4() + hl).min(end);
    let mut at = ip.l4() + tcp::HEADER_LEN;
    while at < opts_end {
        match b[at] {
            0 => break,
            1 => at += 1,
            kind => {
                if at + 1 >= opts_end {
                    break;
                }
                let len = b[at + 1] as usize;
                if len < 2 || at + len > opts_end {
                    break;
                }
                if kind == MSS_KIND && len == MSS_LEN as usize {
                    let old = be16(b, at + 2);
                    if old <= max {
                        return false;
                    }
                    set_be16(b, at + 2, max);
                    let c = ip.l4() + tcp::CHECKSUM_OFFSET;
                    set_be16(b, c, checksum::update(be16(b, c), Delta::of_word(old, max)));
                    return true;
                }
                at += len;
            }
        }
    }
    false
}
