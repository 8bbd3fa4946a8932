//! In-place rewrites with incremental checksum updates.

use crate::packet::checksum::{self, Delta};
use crate::packet::icmp::{v4_type, v6_type};
use crate::packet::{be16, ethernet, icmp, ip_proto, ipv4, ipv6, set_be16, tcp, udp, MacAddr};

use super::parse::{Ip, L3};
use super::{Context, DropReason, PacketBuf, Split, Verdict};
use crate::tables::{NextHopId, PortId, Snapshot, ON_LINK};

/// Folds an address change into the upper-layer checksum (TCP, UDP, ICMPv6 all cover the
/// pseudo-header; ICMPv4 does not). A non-first fragment carries no upper-layer header.
#[inline(always)]
fn fix_l4(b: &mut [u8], ip: &Ip, delta: Delta) {
    if ip.later_frag() {
        return;
    }
    match ip.proto() {
        ip_proto::TCP => {
            let at = ip.l4() + tcp::CHECKSUM_OFFSET;
            set_be16(b, at, checksum::update(be16(b, at), delta));
        }
        ip_proto::UDP => {
            let at = ip.l4() + udp::CHECKSUM_OFFSET;
            set_be16(b, at, checksum::update_udp(be16(b, at), delta));
        }
        ip_proto::ICMPV6 => {
            let at = ip.l4() + icmp::field::CHECKSUM;
            set_be16(b, at, checksum::update(be16(b, at), delta));
        }
        _ => {}
    }
}

/// Writes IPv4 address `new` at `off` (source or destination) and fixes the checksums.
#[inline(always)]
pub(crate) fn rewrite_v4(b: &mut [u8], ip: &Ip, off: usize, new: u32, delta: Delta) {
    b[off..off + 4].copy_from_slice(&new.to_be_bytes());
    let at = ip.l3() + ipv4::field::CHECKSUM;
    set_be16(b, at, checksum::update(be16(b, at), delta));
    fix_l4(b, ip, delta);
}

/// The header checksum difference of a TTL decrement: the TTL is the high byte of the
/// word it shares with the protocol, and `~w + (w - 0x0100)` is `0xfeff` for every `w`.
const TTL_DELTA: Delta = Delta(0xfeff);

/// [`decrement_ttl`] and [`rewrite_v4`] in one, with one update of the header checksum;
/// false (packet untouched) if the TTL would reach zero.
#[inline(always)]
pub(crate) fn ttl_and_rewrite_v4(
    b: &mut [u8],
    ip: &Ip,
    off: usize,
    new: u32,
    delta: Delta,
) -> bool {
    let at = ip.l3() + ipv4::field::TTL;
    if b[at] <= 1 {
        return false;
    }
    b[at] -= 1;
    b[off..off + 4].copy_from_slice(&new.to_be_bytes());
    let c = ip.l3() + ipv4::field::CHECKSUM;
    set_be16(b, c, checksum::update(be16(b, c), delta.then(TTL_DELTA)));
    fix_l4(b, ip, delta);
    true
}

/// Writes IPv6 address `new` at `off` and fixes the upper-layer checksum.
#[inline(always)]
pub(crate) fn rewrite_v6(b: &mut [u8], ip: &Ip, off: usize, new: [u8; 16], delta: Delta) {
    b[off..off + 16].copy_from_slice(&new);
    fix_l4(b, ip, delta);
}

/// Decrements the TTL or hop limit; false (packet untouched) if it would reach zero.
#[inline(always)]
pub(crate) fn decrement_ttl(b: &mut [u8], ip: &Ip) -> bool {
    if ip.v6() {
        let at = ip.l3() + ipv6::field::HOP_LIMIT;
        if b[at] <= 1 {
            return false;
        }
        b[at] -= 1;
    } else {
        let at = ip.l3() + ipv4::field::TTL;
        if b[at] <= 1 {
            return false;
        }
        // TTL is the high byte of the word it shares with the protocol: the word drops
        // by 0x0100.
        let old = be16(b, at);
        b[at] -= 1;
        let c = ip.l3() + ipv4::field::CHECKSUM;
        set_be16(
            b,
            c,
            checksum::update(be16(b, c), Delta::of_word(old, old - 0x0100)),
        );
    }
    true
}

/// Rewrites the frame's MAC addresses for the next hop.
#[inline(always)]
pub(crate) fn set_macs(b: &mut [u8], dst: MacAddr, src: MacAddr) {
    b[ethernet::field::DST].copy_from_slice(&dst.0);
    b[ethernet::field::SRC].copy_from_slice(&src.0);
}

/// Addresses the frame to next hop `nh` (its MAC, the output port's MAC) and says where
/// it goes; an unresolved neighbour (or an on-link next hop, which a per-packet
/// destination cannot be resolved to here) drops it, and so does a packet larger than
/// the output port's MTU (never truncated) unless it is IPv4 without DF, which is split.
#[inline(always)]
pub(crate) fn to_next_hop(snap: &Snapshot, b: &mut [u8], ip: &Ip, nh: NextHopId) -> Verdict {
    if nh == ON_LINK {
        return Verdict::Drop(DropReason::NoNeighbour);
    }
    let nh = &snap.next_hops[nh as usize];
    let Some(mac) = nh.mac() else {
        return Verdict::Drop(DropReason::NoNeighbour);
    };
    let out = &snap.ports[nh.port as usize];
    set_macs(b, mac, out.mac);
    if super::parse::ip_end(b, ip) - ip.l3() > out.mtu as usize {
        return too_big_for_port(b, ip, nh.port);
    }
    Verdict::Forward(nh.port)
}

/// A router fragments IPv4 without DF (RFC 791); the rest cannot pass.
#[cold]
#[inline(never)]
fn too_big_for_port(b: &[u8], ip: &Ip, port: PortId) -> Verdict {
    let df = be16(b, ip.l3() + ipv4::field::FLG_OFF) & ipv4::FLAG_DF != 0;
    if ip.v6() || df {
        Verdict::Drop(DropReason::TooBig)
    } else {
        Verdict::Fragment(Split::Port(port))
    }
}

/// No circuit: a non-first fragment cannot be matched by port, anything else has none.
#[inline(always)]
pub(crate) fn miss(ip: &Ip) -> Verdict {
    Verdict::Drop(if ip.later_frag() {
        DropReason::Fragment
    } else {
        DropReason::NoCircuit
    })
}

/// What goes to the slow path, within the port's rate limits: ARP and neighbour
/// solicitations and advertisements (their own budget, so that a flood of anything else
/// cannot starve them) and echo requests to the port's own addresses. Everything else
/// the slow path would not answer ends here.
#[inline]
pub(crate) fn to_slow_path(ctx: &mut Context, port: PortId, b: &[u8], l3: &L3) -> Verdict {
    let nd = match l3 {
        L3::Arp => true,
        L3::Ip(ip) if ip.is_nd(b) => {
            let t = b[ip.l4()];
            if t != v6_type::NEIGHBOR_SOLICIT && t != v6_type::NEIGHBOR_ADVERT {
                return Verdict::Drop(DropReason::NotAnswered);
            }
            true
        }
        L3::Ip(ip) => {
            let echo = if ip.v6() {
                ip_proto::ICMPV6
            } else {
                ip_proto::ICMP
            };
            let want = if ip.v6() {
                v6_type::ECHO_REQUEST
            } else {
                v4_type::ECHO_REQUEST
            };
            if ip.proto() != echo || ip.frag() || b[ip.l4()] != want {
                return Verdict::Drop(DropReason::NotAnswered);
            }
            false
        }
    };
    if ctx.slow_token(port as usize, nd) {
        Verdict::SlowPath
    } else {
        Verdict::Drop(DropReason::SlowPathLimit)
    }
}

/// True if an IPv4 source can be no device's: loopback, multicast, broadcast,
/// unspecified, "this network" (RFC 1122 3.2.1.3) or one of the forwarder's own.
#[inline]
pub(crate) fn martian_v4(snap: &Snapshot, src: u32) -> bool {
    let first = (src >> 24) as u8;
    first == 0 || first == 127 || first >= 224 || snap.own_v4.contains(&src)
}

/// True if an IPv6 source can be no device's: unspecified, loopback, multicast, an
/// IPv4-mapped address or one of the forwarder's own.
#[inline]
pub(crate) fn martian_v6(snap: &Snapshot, src: &[u8; 16]) -> bool {
    let a = u128::from_be_bytes(*src);
    a <= 1 || src[0] == 0xff || (a >> 32) == 0xffff || snap.own_v6.contains(src)
}

/// Puts the packet (its IP header already rewritten) into tunnel `tunnel`: the inner
/// Ethernet header for the far end, the outer headers in the headroom. A WireGuard
/// tunnel's packet goes to the worker to be sealed. A packet larger
/// than the tunnel's inner budget is split if it is IPv4 without DF, dropped otherwise
/// (the aggregator answers those with ICMP before it gets here).
#[inline(always)]
pub(crate) fn into_tunnel<B: PacketBuf>(
    snap: &Snapshot,
    pkt: &mut B,
    ip: &Ip,
    tunnel: u16,
) -> Verdict {
    let t = &snap.tunnels[tunnel as usize];
    let nh = &snap.next_hops[t.next_hop as usize];
    let Some(nh_mac) = nh.mac() else {
        return Verdict::Drop(DropReason::NoNeighbour);
    };
    let b = pkt.data_mut();
    set_macs(b, t.inner_dst_mac, snap.ports[nh.port as usize].mac);
    if super::parse::ip_end(b, ip) - ip.l3() > t.inner_mtu as usize {
        let df = !ip.v6() && be16(b, ip.l3() + ipv4::field::FLG_OFF) & ipv4::FLAG_DF != 0;
        return if ip.v6() || df {
            Verdict::Drop(DropReason::TooBig)
        } else {
            Verdict::Fragment(Split::Tunnel(tunnel))
        };
    }
    if t.wg.is_some() {
        return Verdict::Wg(super::WgJob::Seal(tunnel));
    }
    let hash = if ip.frag() {
        super::aggregator::frag_flow_hash(b, ip.l3())
    } else {
        super::aggregator::flow_hash(b, ip)
    };
    if !pkt.prepend(t.outer.len()) {
        return Verdict::Drop(DropReason::NoHeadroom);
    }
    if !t.outer.write(
        pkt.data_mut(),
        nh_mac,
        crate::packet::vxlan::flow_port(hash),
    ) {
        return Verdict::Drop(DropReason::Malformed);
    }
    Verdict::Forward(nh.port)
}
