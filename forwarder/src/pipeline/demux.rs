//! Demux (data center): decapsulate, then alias -> app host (port mode) or alias ->
//! capture address delivered to the app host (address mode).
//!
//! Port mode also needs what has no ports of its own: a non-first fragment follows its
//! first fragment's decision (the worker's fragment table), and an ICMP error about a
//! reply (port unreachable from a device, "too big" from a router) is steered by the
//! reply it quotes, whose source port names the circuit; its outer destination and the
//! quoted source both become the app host, so the app host's kernel matches it to the
//! socket that sent the reply.

use crate::metrics::TO_APP;
use crate::packet::{be32, ethernet, vxlan, wireguard, Error};
use crate::tables::counted::{key_v4, key_v6, proto_port};
use crate::tables::{port_key_v4, port_key_v6, Key, PortEntry, PortId, Rewrite, Snapshot, ANY_VNI};

use super::frag::{FragHit, FragKey};
use super::icmp::{quote, rewrite_quote, Field, Quote};
use super::parse::{addr6, classify, classify_inner, fast_inner, ip_end, Ip, L3};
use super::rewrite::{
    decrement_ttl, miss, rewrite_v4, rewrite_v6, to_next_hop, to_slow_path, ttl_and_rewrite_v4,
};
use super::{stage, stopped, Context, DropReason, PacketBuf, Verdict, MAX_BURST};

#[derive(Clone, Copy, Default)]
struct Pending {
    ip: Ip,
    dst4: u32,
    dst6: [u8; 16],
    /// The port-mode key's port: the packet's destination port, or the source port of
    /// the reply an ICMP error quotes.
    port: u16,
    proto: u8,
    keyed: bool,
    quote: Option<Quote>,
    port_key_hash: u64,
    addr_hash: u64,
}

/// Runs the demux over at most [`MAX_BURST`] packets received on `port`: tunnel packets,
/// or (`INNER`) inner frames the worker opened from a WireGuard tunnel.
pub(super) fn run<B: PacketBuf, const INNER: bool, const UNTIL: u8>(
    snap: &Snapshot,
    ctx: &mut Context,
    in_port: PortId,
    port: &PortEntry,
    pkts: &mut [B],
    out: &mut [Verdict],
) {
    let mut pending = [Pending::default(); MAX_BURST];
    let mut todo = [false; MAX_BURST];
    // Pass 1: check and strip the tunnel, parse the inner packet, prefetch its slots.
    for (i, pkt) in pkts.iter_mut().enumerate() {
        // Filled in place: a struct built on the stack and copied in costs a
        // store-forwarding stall per packet.
        let p = &mut pending[i];
        if INNER {
            if let Decap::Drop(r) = inner(pkt.data(), &mut p.ip) {
                out[i] = Verdict::Drop(r);
                continue;
            }
        } else if let Some(v) = decapsulate(snap, ctx, in_port, port, pkt, &mut p.ip) {
            out[i] = v;
            continue;
        }
        let b = pkt.data();
        let ip = p.ip;
        let off = ip.dst_off();
        if ip.has_ports() {
            (p.keyed, p.port, p.proto) = (true, ip.dst_port(b), ip.proto());
        } else if let Some(q) = quote(b, &ip) {
            (p.keyed, p.port, p.proto, p.quote) = (true, q.src_port(b), q.proto, Some(q));
        }
        if ip.v6() {
            p.dst6 = addr6(b, off);
            if p.keyed && !snap.v6.demux_port.is_empty() {
                p.port_key_hash = port_key_v6(p.dst6, p.proto, p.port).hash64();
                snap.v6.demux_port.prefetch(p.port_key_hash);
            }
            if !snap.v6.demux_addr.is_empty() {
                p.addr_hash = p.dst6.hash64();
                snap.v6.demux_addr.prefetch(p.addr_hash);
            }
        } else {
            p.dst4 = be32(b, off);
            if p.keyed && !snap.v4.demux_port.is_empty() {
                p.port_key_hash = port_key_v4(p.dst4, p.proto, p.port).hash64();
                snap.v4.demux_port.prefetch(p.port_key_hash);
            }
            if !snap.v4.demux_addr.is_empty() {
                p.addr_hash = p.dst4.hash64();
                snap.v4.demux_addr.prefetch(p.addr_hash);
            }
        }
        todo[i] = true;
    }
    if UNTIL == stage::PARSE {
        return;
    }
    // Pass 2: look up and rewrite.
    for (i, pkt) in pkts.iter_mut().enumerate() {
        if todo[i] {
            out[i] = one::<B, UNTIL>(snap, ctx, pkt, &pending[i]);
        }
    }
}

/// Accepts a tunnel packet from a peer to one of this port's addresses, strips the
/// outer headers and parses the inner packet into `ip`. Anything else ends here with its
/// verdict. (Out parameters rather than nested `Result`s: the hot path then keeps `Ip`
/// out of enum shuffles through the stack.)
#[inline(always)]
fn decapsulate<B: PacketBuf>(
    snap: &Snapshot,
    ctx: &mut Context,
    in_port: PortId,
    port: &PortEntry,
    pkt: &mut B,
    ip: &mut Ip,
) -> Option<Verdict> {
    let b = pkt.data();
    if !for_us(b, port) {
        return Some(Verdict::Drop(if b.len() < ethernet::HEADER_LEN {
            DropReason::Malformed
        } else {
            DropReason::OtherHost
        }));
    }
    match decap(snap, port, pkt, ip) {
        Decap::Inner => None,
        Decap::Drop(r) => Some(Verdict::Drop(r)),
        Decap::Wg => Some(Verdict::Wg(super::WgJob::Open)),
        Decap::NotTunnel => Some(not_tunnel(ctx, in_port, port, pkt.data())),
    }
}

/// Not a tunnel packet: ARP, neighbour discovery and pings to the port itself.
#[cold]
#[inline(never)]
fn not_tunnel(ctx: &mut Context, in_port: PortId, port: &PortEntry, b: &[u8]) -> Verdict {
    match classify(b, port.mac) {
        Err(r) => Verdict::Drop(r),
        Ok(l3 @ L3::Arp) => to_slow_path(ctx, in_port, b, &l3),
        Ok(l3 @ L3::Ip(ip)) if ip.is_nd(b) => to_slow_path(ctx, in_port, b, &l3),
        Ok(l3 @ L3::Ip(ip)) => {
            let off = ip.dst_off();
            let local = if ip.v6() {
                port.is_local_v6(addr6(b, off))
            } else {
                port.is_local_v4(be32(b, off))
            };
            if local {
                to_slow_path(ctx, in_port, b, &l3)
            } else {
                Verdict::Drop(DropReason::Unsupported)
            }
        }
    }
}

/// What [`decap`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decap {
    /// A tunnel packet from a peer, stripped; its inner packet is parsed.
    Inner,
    /// Not VXLAN: the caller's to handle.
    NotTunnel,
    /// A tunnel packet that ends here.
    Drop(DropReason),
    /// A WireGuard datagram to one of the port's addresses: for the worker to open.
    Wg,
}

/// Strips the tunnel of a VXLAN packet from a peer (with its VNI) to one of `port`'s
/// addresses and parses the inner packet into `ip`. The common case (IPv4 outer, no
/// options, no VLAN) inline; the rest in [`decap_general`].
#[inline(always)]
pub(super) fn decap<B: PacketBuf>(
    snap: &Snapshot,
    port: &PortEntry,
    pkt: &mut B,
    ip: &mut Ip,
) -> Decap {
    let b = pkt.data();
    let Some((src, dst, vni, inner_len)) = vxlan::parse_outer_v4_fast(b) else {
        return decap_general(snap, port, pkt, ip);
    };
    if b[ethernet::field::DST.start] & 1 == 1 {
        return Decap::Drop(DropReason::GroupAddress);
    }
    if !port.is_local_v4(dst) {
        return Decap::Drop(DropReason::OtherHost);
    }
    match snap.v4.peers.get(&src) {
        None => return Decap::Drop(DropReason::NotTunnelPeer),
        Some(&want) if want != ANY_VNI && want != vni => return Decap::Drop(DropReason::BadVni),
        Some(_) => {}
    }
    if !pkt.adj(vxlan::OUTER_LEN_V4) || !pkt.truncate(inner_len) {
        return Decap::Drop(DropReason::Malformed);
    }
    inner(pkt.data(), ip)
}

/// [`decap`] for everything but the common outer header: VLAN tags, IPv6, IPv4 options.
#[inline(never)]
fn decap_general<B: PacketBuf>(
    snap: &Snapshot,
    port: &PortEntry,
    pkt: &mut B,
    ip: &mut Ip,
) -> Decap {
    let b = pkt.data();
    let bad = |e| match e {
        Error::Unsupported => Decap::NotTunnel,
        Error::Checksum => Decap::Drop(DropReason::BadChecksum),
        _ => Decap::Drop(DropReason::Malformed),
    };
    let dg = match wireguard::parse_udp(b) {
        Ok(dg) => dg,
        Err(e) => return bad(e),
    };
    let wg = snap.wg.listen_port != 0 && dg.dst_port == snap.wg.listen_port;
    if dg.dst_port != vxlan::PORT && !wg {
        return Decap::NotTunnel;
    }
    if b[ethernet::field::DST.start] & 1 == 1 {
        return Decap::Drop(DropReason::GroupAddress);
    }
    if !port.is_local(dg.dst) {
        return Decap::Drop(DropReason::OtherHost);
    }
    if wg {
        // Opened (and authenticated) by the worker, then fed to `process_inner`.
        return Decap::Wg;
    }
    let outer = match vxlan::outer_info(b, &dg) {
        Ok(outer) => outer,
        Err(e) => return bad(e),
    };
    let want = match outer.src {
        std::net::IpAddr::V4(a) => snap.v4.peers.get(&u32::from(a)),
        std::net::IpAddr::V6(a) => snap.v6.peers.get(&a.octets()),
    };
    match want {
        None => return Decap::Drop(DropReason::NotTunnelPeer),
        Some(&want) if want != ANY_VNI && want != outer.vni => {
            return Decap::Drop(DropReason::BadVni)
        }
        Some(_) => {}
    }
    if !pkt.adj(outer.inner_offset) || !pkt.truncate(outer.inner_len) {
        return Decap::Drop(DropReason::Malformed);
    }
    inner(pkt.data(), ip)
}

/// The inner frame of a tunnel packet: an IP packet (ARP does not cross tunnels). Its
/// IPv4 header checksum is not verified again: the aggregator that encapsulated it
/// verified it (and updated it incrementally since), and the outer header's was checked.
#[inline(always)]
pub(super) fn inner(b: &[u8], ip: &mut Ip) -> Decap {
    if let Some(i) = fast_inner(b) {
        *ip = i;
        return Decap::Inner;
    }
    inner_general(b, ip)
}

#[inline(never)]
fn inner_general(b: &[u8], ip: &mut Ip) -> Decap {
    match classify_inner(b) {
        Ok(L3::Ip(i)) => {
            *ip = i;
            Decap::Inner
        }
        Ok(L3::Arp) => Decap::Drop(DropReason::Unsupported),
        Err(r) => Decap::Drop(r),
    }
}

/// The fragment-table key of a fragment whose destination is `dst` (before rewrite).
#[inline]
pub(super) fn frag_key(b: &[u8], ip: &Ip) -> FragKey {
    let mut k = FragKey {
        id: ip.frag_id(b),
        proto: ip.proto(),
        v6: ip.v6(),
        ..FragKey::default()
    };
    let n = if ip.v6() { 16 } else { 4 };
    k.src[..n].copy_from_slice(&b[ip.src_off()..ip.src_off() + n]);
    k.dst[..n].copy_from_slice(&b[ip.dst_off()..ip.dst_off() + n]);
    k
}

/// The common case (no fragment, no quote) straight through; the rest beside it.
#[inline(always)]
fn one<B: PacketBuf, const UNTIL: u8>(
    snap: &Snapshot,
    ctx: &mut Context,
    pkt: &mut B,
    p: &Pending,
) -> Verdict {
    let ip = &p.ip;
    if ip.frag() || p.quote.is_some() {
        return rare(snap, ctx, pkt, p);
    }
    let b = pkt.data_mut();
    let nh = if ip.v6() {
        let hit = if p.keyed {
            let k = port_key_v6(p.dst6, p.proto, p.port);
            snap.v6.demux_port.get_hashed(&k, p.port_key_hash)
        } else {
            None
        };
        let port_hit = hit.is_some();
        let Some(r) = hit
            .or_else(|| snap.v6.demux_addr.get_hashed(&p.dst6, p.addr_hash))
            .copied()
        else {
            return miss(ip);
        };
        if UNTIL == stage::LOOKUP {
            return stopped(r);
        }
        if !decrement_ttl(b, ip) {
            return Verdict::Drop(DropReason::TtlExpired);
        }
        rewrite_v6(b, ip, ip.dst_off(), r.addr, r.delta);
        let pp = if port_hit {
            proto_port(p.proto, p.port)
        } else {
            0
        };
        ctx.count_circuit(snap, TO_APP, || {
            (key_v6(r.addr, pp), ip_end(b, ip) - ip.l3())
        });
        r.next_hop
    } else {
        let hit = if p.keyed {
            let k = port_key_v4(p.dst4, p.proto, p.port);
            snap.v4.demux_port.get_hashed(&k, p.port_key_hash)
        } else {
            None
        };
        let port_hit = hit.is_some();
        let Some(r) = hit
            .or_else(|| snap.v4.demux_addr.get_hashed(&p.dst4, p.addr_hash))
            .copied()
        else {
            return miss(ip);
        };
        if UNTIL == stage::LOOKUP {
            return stopped(r);
        }
        if !ttl_and_rewrite_v4(b, ip, ip.dst_off(), r.addr, r.delta) {
            return Verdict::Drop(DropReason::TtlExpired);
        }
        let pp = if port_hit {
            proto_port(p.proto, p.port)
        } else {
            0
        };
        ctx.count_circuit(snap, TO_APP, || {
            (key_v4(r.addr, pp), ip_end(b, ip) - ip.l3())
        });
        r.next_hop
    };
    if UNTIL == stage::REWRITE {
        return stopped(nh);
    }
    to_next_hop(snap, b, ip, nh)
}

/// Fragments and ICMP errors: the fragment table and the quote.
#[cold]
#[inline(never)]
fn rare<B: PacketBuf>(snap: &Snapshot, ctx: &mut Context, pkt: &mut B, p: &Pending) -> Verdict {
    let ip = &p.ip;
    let b = pkt.data_mut();
    let generation = snap.generation();
    // A later fragment follows its first (port mode) or its address (address mode).
    if ip.later_frag() {
        if let Some(h) = ctx.frags.get(&frag_key(b, ip), generation, ctx.now_ms()) {
            if !decrement_ttl(b, ip) {
                return Verdict::Drop(DropReason::TtlExpired);
            }
            if ip.v6() {
                rewrite_v6(b, ip, ip.dst_off(), h.addr, h.delta);
            } else {
                let mut a = [0u8; 4];
                a.copy_from_slice(&h.addr[..4]);
                rewrite_v4(b, ip, ip.dst_off(), u32::from_be_bytes(a), h.delta);
            }
            return to_next_hop(snap, b, ip, h.next_hop);
        }
    }
    let (nh, port_hit, hit) = if ip.v6() {
        let hit: Option<&Rewrite<[u8; 16]>> = if p.keyed {
            let k = port_key_v6(p.dst6, p.proto, p.port);
            snap.v6.demux_port.get_hashed(&k, p.port_key_hash)
        } else {
            None
        };
        let port_hit = hit.is_some();
        let Some(r) = hit
            .or_else(|| snap.v6.demux_addr.get_hashed(&p.dst6, p.addr_hash))
            .copied()
        else {
            return miss(ip);
        };
        if ip.frag() && port_hit {
            let key = frag_key(b, ip);
            let hit = FragHit {
                addr: r.addr,
                delta: r.delta,
                next_hop: r.next_hop,
            };
            ctx.frags.insert(key, hit, generation, ctx.now_ms());
        }
        if !decrement_ttl(b, ip) {
            return Verdict::Drop(DropReason::TtlExpired);
        }
        rewrite_v6(b, ip, ip.dst_off(), r.addr, r.delta);
        (r.next_hop, port_hit, r.addr)
    } else {
        let dst = p.dst4;
        let hit = if p.keyed {
            let k = port_key_v4(dst, p.proto, p.port);
            snap.v4.demux_port.get_hashed(&k, p.port_key_hash)
        } else {
            None
        };
        let port_hit = hit.is_some();
        let Some(r) = hit
            .or_else(|| snap.v4.demux_addr.get_hashed(&dst, p.addr_hash))
            .copied()
        else {
            return miss(ip);
        };
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&r.addr.to_be_bytes());
        if ip.frag() && port_hit {
            let key = frag_key(b, ip);
            let hit = FragHit {
                addr,
                delta: r.delta,
                next_hop: r.next_hop,
            };
            ctx.frags.insert(key, hit, generation, ctx.now_ms());
        }
        if !decrement_ttl(b, ip) {
            return Verdict::Drop(DropReason::TtlExpired);
        }
        rewrite_v4(b, ip, ip.dst_off(), r.addr, r.delta);
        (r.next_hop, port_hit, addr)
    };
    let pp = if port_hit {
        proto_port(p.proto, p.port)
    } else {
        0
    };
    let key = || match ip.v6() {
        true => key_v6(hit, pp),
        false => key_v4(u32::from_be_bytes([hit[0], hit[1], hit[2], hit[3]]), pp),
    };
    ctx.count_circuit(snap, TO_APP, || (key(), ip_end(b, ip) - ip.l3()));
    // An error about a reply: the quoted reply's source becomes the app host too.
    if let (true, Some(q)) = (port_hit, &p.quote) {
        let n = if ip.v6() { 16 } else { 4 };
        rewrite_quote(b, ip, q, Field::Src, &hit[..n]);
    }
    to_next_hop(snap, b, ip, nh)
}

/// True if the frame's destination MAC is the port's or a group address.
#[inline]
fn for_us(b: &[u8], port: &PortEntry) -> bool {
    let dst = ethernet::field::DST;
    b.len() >= dst.end && (b[dst.clone()] == port.mac.0 || b[dst.start] & 1 == 1)
}
