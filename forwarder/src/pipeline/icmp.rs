//! ICMP in the pipelines: "too big" and echo replies made in place from the packet that
//! caused them, and errors steered by the packet they quote.
//!
//! An error is made from the offending packet's own buffer: the headers of the error go
//! in front of it (headroom), the packet becomes the quote, and the buffer is cut to
//! 576 bytes (IPv4, RFC 1812 4.3.2.3) or 1280 (IPv6, RFC 4443 2.4). Nothing is allocated.

use crate::packet::checksum::{self, Delta};
use crate::packet::icmp::{v4_type, v6_type};
use crate::packet::{be16, ethernet, ip_proto, ipv4, ipv6, set_be16, tcp, udp, MacAddr};

use super::parse::{ip_end, Ip};
use super::PacketBuf;

/// ICMPv4 "destination unreachable".
const V4_UNREACHABLE: u8 = 3;
/// Its code "fragmentation needed and DF set".
const V4_FRAG_NEEDED: u8 = 4;
/// ICMPv6 "packet too big".
const V6_TOO_BIG: u8 = 2;
/// The TTL of what the pipelines originate.
const TTL: u8 = 64;
/// The largest IPv4 ICMP error.
const V4_MAX: usize = 576;
/// The largest IPv6 ICMP error.
const V6_MAX: usize = 1280;
/// ICMP header bytes before the quote.
const ICMP_HDR: usize = 8;

/// True for ICMP error messages (which quote the packet they are about).
#[inline]
pub(crate) fn is_error(v6: bool, t: u8) -> bool {
    if v6 {
        (1..=4).contains(&t)
    } else {
        matches!(t, 3 | 4 | 5 | 11 | 12)
    }
}

/// Turns the packet (received from MAC `peer` on a port with MAC `own`) into an ICMP
/// "fragmentation needed" / "packet too big" about itself, from its destination to its
/// source, announcing `mtu`. False (packet unusable) if the buffer has no headroom.
pub(crate) fn too_big_in_place<B: PacketBuf>(pkt: &mut B, ip: &Ip, mtu: u16) -> bool {
    let b = pkt.data();
    let end = ip_end(b, ip);
    let l3 = ip.l3();
    let peer = mac_at(b, ethernet::field::SRC.start);
    let own = mac_at(b, ethernet::field::DST.start);
    let (hdr, max) = if ip.v6() {
        (ipv6::HEADER_LEN + ICMP_HDR, V6_MAX)
    } else {
        (ipv4::HEADER_LEN + ICMP_HDR, V4_MAX)
    };
    let quote = (end - l3).min(max - hdr);
    if !pkt.prepend(hdr) {
        return false;
    }
    let b = pkt.data_mut();
    // The link header moves to the new front; the old IP packet is now at l3 + hdr.
    b.copy_within(hdr..hdr + l3, 0);
    set_macs(b, peer, own);
    let q = l3 + hdr;
    let icmp_len = ICMP_HDR + quote;
    if ip.v6() {
        let (src, dst) = (q + ipv6::SRC_OFFSET, q + ipv6::DST_OFFSET);
        let mut from = [0u8; 16];
        let mut to = [0u8; 16];
        from.copy_from_slice(&b[dst..dst + 16]);
        to.copy_from_slice(&b[src..src + 16]);
        write_v6(&mut b[l3..], from, to, icmp_len);
        let m = l3 + ipv6::HEADER_LEN;
        b[m] = V6_TOO_BIG;
        b[m + 1] = 0;
        b[m + 4..m + 8].copy_from_slice(&(mtu as u32).to_be_bytes());
    } else {
        let mut from = [0u8; 4];
        let mut to = [0u8; 4];
        from.copy_from_slice(&b[q + ipv4::DST_OFFSET..q + ipv4::DST_OFFSET + 4]);
        to.copy_from_slice(&b[q + ipv4::SRC_OFFSET..q + ipv4::SRC_OFFSET + 4]);
        write_v4(&mut b[l3..], from, to, icmp_len);
        let m = l3 + ipv4::HEADER_LEN;
        b[m] = V4_UNREACHABLE;
        b[m + 1] = V4_FRAG_NEEDED;
        set_be16(b, m + 4, 0);
        set_be16(b, m + 6, mtu);
    }
    pkt.truncate(q + quote);
    let b = pkt.data_mut();
    let m = l3
        + if ip.v6() {
            ipv6::HEADER_LEN
        } else {
            ipv4::HEADER_LEN
        };
    fill_icmp_checksum(b, l3, m, q + quote, ip.v6());
    true
}

/// Turns an echo request into its reply, in place, back to the MAC it came from.
pub(crate) fn echo_reply_in_place(b: &mut [u8], ip: &Ip) {
    let peer = mac_at(b, ethernet::field::SRC.start);
    let own = mac_at(b, ethernet::field::DST.start);
    set_macs(b, peer, own);
    let l3 = ip.l3();
    if ip.v6() {
        let (s, d) = (l3 + ipv6::SRC_OFFSET, l3 + ipv6::DST_OFFSET);
        for i in 0..16 {
            b.swap(s + i, d + i);
        }
        b[l3 + ipv6::field::HOP_LIMIT] = TTL;
        b[ip.l4()] = v6_type::ECHO_REPLY;
    } else {
        let (s, d) = (l3 + ipv4::SRC_OFFSET, l3 + ipv4::DST_OFFSET);
        for i in 0..4 {
            b.swap(s + i, d + i);
        }
        let old = be16(b, l3 + ipv4::field::TTL);
        b[l3 + ipv4::field::TTL] = TTL;
        let at = l3 + ipv4::field::CHECKSUM;
        let new = be16(b, l3 + ipv4::field::TTL);
        set_be16(
            b,
            at,
            checksum::update(be16(b, at), Delta::of_word(old, new)),
        );
        let old = be16(b, ip.l4());
        b[ip.l4()] = v4_type::ECHO_REPLY;
        let at = ip.l4() + 2;
        set_be16(
            b,
            at,
            checksum::update(be16(b, at), Delta::of_word(old, be16(b, ip.l4()))),
        );
    }
    if ip.v6() {
        // The pseudo-header's addresses only swapped; the type changed by one word.
        let at = ip.l4() + 2;
        let old = u16::from_be_bytes([v6_type::ECHO_REQUEST, b[ip.l4() + 1]]);
        let new = u16::from_be_bytes([v6_type::ECHO_REPLY, b[ip.l4() + 1]]);
        set_be16(
            b,
            at,
            checksum::update(be16(b, at), Delta::of_word(old, new)),
        );
    }
}

/// Where an ICMP error's quoted packet and its ports are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Quote {
    /// Offset of the quoted IP header.
    pub l3: usize,
    /// Offset of the quoted TCP/UDP header (its ports are inside the message).
    pub l4: usize,
    /// The quoted protocol (TCP or UDP).
    pub proto: u8,
}

impl Quote {
    /// The quoted packet's source port.
    #[inline]
    pub fn src_port(&self, b: &[u8]) -> u16 {
        be16(b, self.l4 + udp::field::SRC_PORT)
    }

    /// The quoted packet's destination port.
    #[inline]
    pub fn dst_port(&self, b: &[u8]) -> u16 {
        be16(b, self.l4 + udp::field::DST_PORT)
    }
}

/// The quote of an ICMP error about a TCP or UDP packet of the same family, if its
/// ports are in it. Anything else (echo, errors about fragments or other protocols,
/// IPv6 quotes with extension headers) is `None`.
#[inline]
pub(crate) fn quote(b: &[u8], ip: &Ip) -> Option<Quote> {
    let want = if ip.v6() {
        ip_proto::ICMPV6
    } else {
        ip_proto::ICMP
    };
    if ip.proto() != want || ip.frag() || !is_error(ip.v6(), b[ip.l4()]) {
        return None;
    }
    let end = ip_end(b, ip);
    let q = ip.l4() + ICMP_HDR;
    let (l4, proto) = if ip.v6() {
        if q + ipv6::HEADER_LEN > end || b[q] >> 4 != 6 {
            return None;
        }
        (q + ipv6::HEADER_LEN, b[q + ipv6::field::NXT_HDR])
    } else {
        if q + ipv4::HEADER_LEN > end || b[q] >> 4 != 4 {
            return None;
        }
        let ihl = (b[q] & 0x0f) as usize * 4;
        if ihl < ipv4::HEADER_LEN || be16(b, q + ipv4::field::FLG_OFF) & ipv4::OFFSET_MASK != 0 {
            return None;
        }
        (q + ihl, b[q + ipv4::field::PROTOCOL])
    };
    if (proto != ip_proto::TCP && proto != ip_proto::UDP) || l4 + 4 > end {
        return None;
    }
    Some(Quote { l3: q, l4, proto })
}

/// Which address of the quoted packet to rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    /// Its source (an error about a reply, steered to the app host that sent it).
    Src,
    /// Its destination (an app host's error about a device's packet).
    Dst,
}

/// Rewrites one address of the quoted packet to `new` (4 or 16 bytes), with the quoted
/// IPv4 header checksum and the quoted TCP/UDP checksum (where the quote holds it), then
/// recomputes the ICMP checksum over the whole message: the outer header must already
/// carry its final addresses.
pub(crate) fn rewrite_quote(b: &mut [u8], ip: &Ip, q: &Quote, field: Field, new: &[u8]) {
    let end = ip_end(b, ip);
    let off = q.l3
        + match (ip.v6(), field) {
            (true, Field::Src) => ipv6::SRC_OFFSET,
            (true, Field::Dst) => ipv6::DST_OFFSET,
            (false, Field::Src) => ipv4::SRC_OFFSET,
            (false, Field::Dst) => ipv4::DST_OFFSET,
        };
    let n = new.len();
    if off + n > end {
        return;
    }
    let delta = Delta::of(&b[off..off + n], new);
    b[off..off + n].copy_from_slice(new);
    if !ip.v6() {
        let at = q.l3 + ipv4::field::CHECKSUM;
        set_be16(b, at, checksum::update(be16(b, at), delta));
    }
    let l4_sum = match q.proto {
        ip_proto::TCP => q.l4 + tcp::CHECKSUM_OFFSET,
        _ => q.l4 + udp::CHECKSUM_OFFSET,
    };
    if l4_sum + 2 <= end {
        let old = be16(b, l4_sum);
        let new = if q.proto == ip_proto::UDP {
            checksum::update_udp(old, delta)
        } else {
            checksum::update(old, delta)
        };
        // A UDP checksum of zero means "none" (IPv4) and stays so.
        if !(q.proto == ip_proto::UDP && old == 0) {
            set_be16(b, l4_sum, new);
        }
    }
    fill_icmp_checksum(b, ip.l3(), ip.l4(), end, ip.v6());
}

/// Recomputes the checksum of the ICMP(v6) message at `m..end` of the packet whose IP
/// header is at `l3` (ICMPv6: over the pseudo-header too).
fn fill_icmp_checksum(b: &mut [u8], l3: usize, m: usize, end: usize, v6: bool) {
    set_be16(b, m + 2, 0);
    let mut acc = 0;
    if v6 {
        acc = checksum::sum(0, &b[l3 + ipv6::SRC_OFFSET..l3 + ipv6::DST_OFFSET + 16]);
        let len = (end - m) as u32;
        acc += ip_proto::ICMPV6 as u32 + (len >> 16) + (len & 0xffff);
    }
    let c = !checksum::fold(checksum::sum(acc, &b[m..end]));
    set_be16(b, m + 2, c);
}

fn write_v4(b: &mut [u8], src: [u8; 4], dst: [u8; 4], payload: usize) {
    b[ipv4::field::VER_IHL] = ipv4::VER_IHL_NO_OPTIONS;
    b[1] = 0;
    set_be16(b, ipv4::field::LENGTH, (ipv4::HEADER_LEN + payload) as u16);
    set_be16(b, ipv4::field::IDENT, 0);
    set_be16(b, ipv4::field::FLG_OFF, 0);
    b[ipv4::field::TTL] = TTL;
    b[ipv4::field::PROTOCOL] = ip_proto::ICMP;
    set_be16(b, ipv4::field::CHECKSUM, 0);
    b[ipv4::field::SRC].copy_from_slice(&src);
    b[ipv4::field::DST].copy_from_slice(&dst);
    let c = checksum::checksum(&b[..ipv4::HEADER_LEN]);
    set_be16(b, ipv4::field::CHECKSUM, c);
}

fn write_v6(b: &mut [u8], src: [u8; 16], dst: [u8; 16], payload: usize) {
    b[..4].copy_from_slice(&[0x60, 0, 0, 0]);
    set_be16(b, ipv6::field::LENGTH, payload as u16);
    b[ipv6::field::NXT_HDR] = ip_proto::ICMPV6;
    b[ipv6::field::HOP_LIMIT] = TTL;
    b[ipv6::field::SRC].copy_from_slice(&src);
    b[ipv6::field::DST].copy_from_slice(&dst);
}

#[inline]
fn mac_at(b: &[u8], at: usize) -> MacAddr {
    let mut m = [0u8; 6];
    m.copy_from_slice(&b[at..at + 6]);
    MacAddr(m)
}

#[inline]
fn set_macs(b: &mut [u8], dst: MacAddr, src: MacAddr) {
    b[ethernet::field::DST].copy_from_slice(&dst.0);
    b[ethernet::field::SRC].copy_from_slice(&src.0);
}
