//! Aggregator (POP): capture address -> demux alias, then into the VXLAN tunnel.
//!
//! Besides the rewrite: martian sources are dropped; a SYN's MSS is clamped to the
//! tunnel's inner budget; a packet that does not fit the tunnel gets ICMP "too big" from
//! the capture address (DF set, or IPv6) or is split (IPv4 without DF); an echo request
//! to a port-mode capture address is answered here, as the host the device talks to.

use crate::packet::icmp::{v4_type, v6_type};
use crate::packet::{be32, ip_proto, ipv4};
use crate::tables::{Key, PortEntry, PortId, Snapshot};

use super::demux::Decap;
use super::icmp::{echo_reply_in_place, too_big_in_place};
use super::mss;
use super::parse::{addr6, classify_into, ip_end, Frame, Ip, L3};
use super::rewrite::{
    decrement_ttl, into_tunnel, martian_v4, martian_v6, rewrite_v6, to_next_hop, to_slow_path,
    ttl_and_rewrite_v4,
};
use super::{stage, stopped, Context, DropReason, PacketBuf, Verdict, MAX_BURST};

#[derive(Clone, Copy, Default)]
struct Pending {
    ip: Ip,
    key4: u32,
    key6: [u8; 16],
    hash: u64,
    src_hash: u64,
}

/// Runs the aggregator over at most [`MAX_BURST`] packets received on `port`.
pub(super) fn run<B: PacketBuf, const UNTIL: u8>(
    snap: &Snapshot,
    ctx: &mut Context,
    in_port: PortId,
    port: &PortEntry,
    pkts: &mut [B],
    out: &mut [Verdict],
) {
    let mut pending = [Pending::default(); MAX_BURST];
    let mut todo = [false; MAX_BURST];
    // Pass 1: parse, hash the destination (and the source, for the martian check),
    // prefetch the destination's slot and the source's word of the capture filter.
    for (i, pkt) in pkts.iter().enumerate() {
        let b = pkt.data();
        // Filled in place: a struct built on the stack and copied in costs a
        // store-forwarding stall per packet.
        let p = &mut pending[i];
        out[i] = match classify_into(b, port.mac, &mut p.ip) {
            Frame::Drop(reason) => Verdict::Drop(reason),
            Frame::Arp => to_slow_path(ctx, in_port, b, &L3::Arp),
            Frame::Ip if p.ip.is_nd(b) => to_slow_path(ctx, in_port, b, &L3::Ip(p.ip)),
            Frame::Ip => {
                let ip = p.ip;
                let off = ip.dst_off();
                if ip.v6() {
                    p.key6 = addr6(b, off);
                    p.hash = p.key6.hash64();
                    snap.v6.aggregator.prefetch(p.hash);
                    p.src_hash = addr6(b, ip.src_off()).hash64();
                    snap.v6.captures.prefetch(p.src_hash);
                } else {
                    p.key4 = be32(b, off);
                    p.hash = p.key4.hash64();
                    snap.v4.aggregator.prefetch(p.hash);
                    p.src_hash = be32(b, ip.src_off()).hash64();
                    snap.v4.captures.prefetch(p.src_hash);
                }
                todo[i] = true;
                continue;
            }
        };
    }
    if UNTIL == stage::PARSE {
        return;
    }
    // Pass 2: look up, rewrite, encapsulate.
    for (i, pkt) in pkts.iter_mut().enumerate() {
        if todo[i] {
            out[i] = one::<B, UNTIL>(snap, ctx, in_port, port, pkt, &pending[i]);
        }
    }
}

#[inline]
fn one<B: PacketBuf, const UNTIL: u8>(
    snap: &Snapshot,
    ctx: &mut Context,
    in_port: PortId,
    port: &PortEntry,
    pkt: &mut B,
    p: &Pending,
) -> Verdict {
    let ip = &p.ip;
    let b = pkt.data();
    let mut alias4 = 0;
    let mut alias6 = [0u8; 16];
    let (entry_tunnel, answer_ping, delta) = if ip.v6() {
        let Some(e) = snap.v6.aggregator.get_hashed(&p.key6, p.hash) else {
            return miss(snap, ctx, in_port, port, pkt, ip, port.is_local_v6(p.key6));
        };
        let src = addr6(b, ip.src_off());
        if martian_v6(snap, &src)
            || (snap.v6.captures.maybe(p.src_hash)
                && snap.v6.aggregator.get_hashed(&src, p.src_hash).is_some())
        {
            return Verdict::Drop(DropReason::Martian);
        }
        alias6 = e.alias;
        (e.tunnel, e.answer_ping, e.delta)
    } else {
        let Some(e) = snap.v4.aggregator.get_hashed(&p.key4, p.hash) else {
            return miss(snap, ctx, in_port, port, pkt, ip, port.is_local_v4(p.key4));
        };
        let src = be32(b, ip.src_off());
        if martian_v4(snap, src)
            || (snap.v4.captures.maybe(p.src_hash)
                && snap.v4.aggregator.get_hashed(&src, p.src_hash).is_some())
        {
            return Verdict::Drop(DropReason::Martian);
        }
        alias4 = e.alias;
        (e.tunnel, e.answer_ping, e.delta)
    };
    if UNTIL == stage::LOOKUP {
        return stopped((entry_tunnel, alias4, alias6));
    }
    if answer_ping && is_echo_request(b, ip) {
        return answer_echo(ctx, in_port, pkt, ip);
    }
    let t = &snap.tunnels[entry_tunnel as usize];
    // Does it fit? The ICMP error quotes the packet as it arrived, so decide first.
    let len = ip_end(b, ip) - ip.l3();
    if len > t.inner_mtu as usize && (ip.v6() || dont_fragment(b, ip)) {
        return too_big(ctx, in_port, pkt, ip, t.inner_mtu);
    }
    let b = pkt.data_mut();
    if ip.v6() {
        if !decrement_ttl(b, ip) {
            return Verdict::Drop(DropReason::TtlExpired);
        }
        rewrite_v6(b, ip, ip.dst_off(), alias6, delta);
    } else if !ttl_and_rewrite_v4(b, ip, ip.l3() + ipv4::DST_OFFSET, alias4, delta) {
        return Verdict::Drop(DropReason::TtlExpired);
    }
    if port.clamp_mss {
        mss::clamp(b, ip, mss::mss_for(t.inner_mtu, ip.v6()));
    }
    if UNTIL == stage::REWRITE {
        return stopped(());
    }
    into_tunnel(snap, pkt, ip, entry_tunnel)
}

/// An echo request to a port-mode capture address, answered as its host would.
#[cold]
#[inline(never)]
fn answer_echo<B: PacketBuf>(ctx: &mut Context, in_port: PortId, pkt: &mut B, ip: &Ip) -> Verdict {
    if !ctx.icmp_token(in_port as usize) {
        return Verdict::Drop(DropReason::SlowPathLimit);
    }
    echo_reply_in_place(pkt.data_mut(), ip);
    Verdict::Icmp(in_port)
}

/// Too big for the tunnel and not to be split: ICMP "too big" from the capture address.
#[cold]
#[inline(never)]
fn too_big<B: PacketBuf>(
    ctx: &mut Context,
    in_port: PortId,
    pkt: &mut B,
    ip: &Ip,
    inner_mtu: u16,
) -> Verdict {
    let ttl = if ip.v6() {
        crate::packet::ipv6::field::HOP_LIMIT
    } else {
        ipv4::field::TTL
    };
    if pkt.data()[ip.l3() + ttl] <= 1 {
        return Verdict::Drop(DropReason::TtlExpired);
    }
    if !ctx.icmp_token(in_port as usize) || !too_big_in_place(pkt, ip, inner_mtu) {
        return Verdict::Drop(DropReason::TooBig);
    }
    Verdict::Icmp(in_port)
}

#[inline]
fn dont_fragment(b: &[u8], ip: &Ip) -> bool {
    crate::packet::be16(b, ip.l3() + ipv4::field::FLG_OFF) & ipv4::FLAG_DF != 0
}

#[inline]
fn is_echo_request(b: &[u8], ip: &Ip) -> bool {
    !ip.frag()
        && if ip.v6() {
            ip.proto() == ip_proto::ICMPV6 && b[ip.l4()] == v6_type::ECHO_REQUEST
        } else {
            ip.proto() == ip_proto::ICMP && b[ip.l4()] == v4_type::ECHO_REQUEST
        }
}

/// No circuit: to the port's own address, a symmetric circuit's reply from the DC (in
/// a tunnel) or what the slow path answers; the rest is dropped.
#[cold]
#[inline(never)]
fn miss<B: PacketBuf>(
    snap: &Snapshot,
    ctx: &mut Context,
    in_port: PortId,
    port: &PortEntry,
    pkt: &mut B,
    ip: &Ip,
    local: bool,
) -> Verdict {
    if !local {
        return Verdict::Drop(DropReason::NoCircuit);
    }
    let symmetric = !snap.v4.returns.is_empty() || !snap.v6.returns.is_empty();
    if (symmetric || snap.wg.listen_port != 0) && ip.proto() == ip_proto::UDP {
        let mut inner = Ip::default();
        match super::demux::decap(snap, port, pkt, &mut inner) {
            Decap::Inner => return return_to_line(snap, pkt, &inner),
            Decap::Drop(r) => return Verdict::Drop(r),
            // Handshakes, keepalives and symmetric replies from a WireGuard peer.
            Decap::Wg => return Verdict::Wg(super::WgJob::Open),
            Decap::NotTunnel => {}
        }
    }
    to_slow_path(ctx, in_port, pkt.data(), &L3::Ip(*ip))
}

/// Inner frames the worker opened from a WireGuard tunnel: replies of symmetric
/// circuits, back to their lines.
pub(super) fn run_inner<B: PacketBuf>(snap: &Snapshot, pkts: &mut [B], out: &mut [Verdict]) {
    for (pkt, v) in pkts.iter_mut().zip(out.iter_mut()) {
        let mut ip = Ip::default();
        *v = match super::demux::inner(pkt.data(), &mut ip) {
            Decap::Inner => return_to_line(snap, pkt, &ip),
            Decap::Drop(r) => Verdict::Drop(r),
            Decap::NotTunnel | Decap::Wg => Verdict::Drop(DropReason::Unsupported),
        };
    }
}

/// Symmetric return: a reply from a capture address leaves the line that holds it, to
/// the line's gateway, as if the POP had sent it.
#[inline]
pub(super) fn return_to_line<B: PacketBuf>(snap: &Snapshot, pkt: &mut B, ip: &Ip) -> Verdict {
    let b = pkt.data_mut();
    let nh = if ip.v6() {
        snap.v6.returns.get(&addr6(b, ip.src_off())).copied()
    } else {
        snap.v4.returns.get(&be32(b, ip.src_off())).copied()
    };
    let Some(nh) = nh else {
        return Verdict::Drop(DropReason::NoCircuit);
    };
    if !decrement_ttl(b, ip) {
        return Verdict::Drop(DropReason::TtlExpired);
    }
    to_next_hop(snap, b, ip, nh)
}

/// A hash of the inner flow (addresses, protocol, ports) for the outer source port:
/// the same flow always takes the same port, so the receiver's RSS keeps it on one core.
#[inline(always)]
pub(super) fn flow_hash(b: &[u8], ip: &Ip) -> u32 {
    let mut x = addr_hash(b, ip);
    if ip.has_ports() {
        x ^= (be32(b, ip.l4()) as u64).rotate_left(7) ^ ip.proto() as u64;
    }
    (x.hash64() >> 32) as u32
}

#[inline(always)]
fn addr_hash(b: &[u8], ip: &Ip) -> u64 {
    let (s, d) = (ip.src_off(), ip.dst_off());
    if ip.v6() {
        let a = u128::from_ne_bytes(addr6(b, s)) ^ u128::from_ne_bytes(addr6(b, d)).rotate_left(17);
        (a as u64) ^ (a >> 64) as u64
    } else {
        ((be32(b, s) as u64) << 32) | be32(b, d) as u64
    }
}

/// The flow hash of a fragment: addresses and protocol only, so that every fragment of a
/// datagram (only the first has ports) takes the same outer port, hence the same DC core.
#[inline]
pub(super) fn frag_flow_hash(b: &[u8], l3: usize) -> u32 {
    let v6 = b[l3] >> 4 == 6;
    let ip = Ip::header_at(v6, l3);
    let proto = if v6 { 0 } else { b[l3 + ipv4::field::PROTOCOL] };
    ((addr_hash(b, &ip) ^ proto as u64).hash64() >> 32) as u32
}
