//! Remux (data-center egress): an app host's reply leaves with the capture address as
//! its source (port mode); address-mode replies already carry it and pass unchanged.
//!
//! SYNs leaving here get their MSS clamped to the tunnels' inner budget: the device
//! sizes its segments by it, and they cross the tunnel. Non-first fragments of a
//! port-mode reply follow their first fragment; an app host's ICMP error about a
//! device's packet is steered by the quoted packet's destination port, and the quoted
//! destination becomes the capture address the device sent to.

use crate::metrics::TO_DEVICE;
use crate::packet::be32;
use crate::tables::counted::{key_v4, key_v6, proto_port};
use crate::tables::{port_key_v4, port_key_v6, Key, PortEntry, PortId, Snapshot};

use super::demux::frag_key;
use super::frag::FragHit;
use super::icmp::{quote, rewrite_quote, Field, Quote};
use super::mss;
use super::parse::{addr6, classify_into, ip_end, Frame, Ip, L3};
use super::rewrite::{
    decrement_ttl, into_tunnel, miss, rewrite_v4, rewrite_v6, to_next_hop, to_slow_path,
    ttl_and_rewrite_v4,
};
use super::{stage, stopped, Context, DropReason, PacketBuf, Verdict, MAX_BURST};

#[derive(Clone, Copy, Default)]
struct Pending {
    ip: Ip,
    src4: u32,
    dst4: u32,
    src6: [u8; 16],
    dst6: [u8; 16],
    /// The port-mode key's port: the reply's source port, or the destination port of
    /// the device's packet an ICMP error quotes.
    port: u16,
    proto: u8,
    keyed: bool,
    quote: Option<Quote>,
    port_key_hash: u64,
}

/// Runs the remux over at most [`MAX_BURST`] packets received on `port`.
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
                let (s, d) = (ip.src_off(), ip.dst_off());
                if ip.has_ports() {
                    (p.keyed, p.port, p.proto) = (true, ip.src_port(b), ip.proto());
                } else if let Some(q) = quote(b, &ip) {
                    (p.keyed, p.port, p.proto, p.quote) = (true, q.dst_port(b), q.proto, Some(q));
                }
                let local = if ip.v6() {
                    p.src6 = addr6(b, s);
                    p.dst6 = addr6(b, d);
                    if p.keyed {
                        p.port_key_hash = port_key_v6(p.src6, p.proto, p.port).hash64();
                        snap.v6.remux_port.prefetch(p.port_key_hash);
                    }
                    port.is_local_v6(p.dst6)
                } else {
                    p.src4 = be32(b, s);
                    p.dst4 = be32(b, d);
                    if p.keyed {
                        p.port_key_hash = port_key_v4(p.src4, p.proto, p.port).hash64();
                        snap.v4.remux_port.prefetch(p.port_key_hash);
                    }
                    port.is_local_v4(p.dst4)
                };
                if local {
                    to_slow_path(ctx, in_port, b, &L3::Ip(ip))
                } else {
                    todo[i] = true;
                    continue;
                }
            }
        };
    }
    if UNTIL == stage::PARSE {
        return;
    }
    for (i, pkt) in pkts.iter_mut().enumerate() {
        if todo[i] {
            out[i] = one::<B, UNTIL>(snap, ctx, port, pkt, &pending[i]);
        }
    }
}

/// The common case (no fragment, no quote) straight through; the rest beside it.
#[inline(always)]
fn one<B: PacketBuf, const UNTIL: u8>(
    snap: &Snapshot,
    ctx: &mut Context,
    port: &PortEntry,
    pkt: &mut B,
    p: &Pending,
) -> Verdict {
    let ip = &p.ip;
    if ip.frag() || p.quote.is_some() {
        return rare(snap, ctx, port, pkt, p);
    }
    let b = pkt.data_mut();
    let max_mss = mss::mss_for(snap.inner_mtu, ip.v6());
    if ip.v6() {
        let hit = if p.keyed {
            let k = port_key_v6(p.src6, p.proto, p.port);
            snap.v6.remux_port.get_hashed(&k, p.port_key_hash).copied()
        } else {
            None
        };
        if hit.is_none() && snap.v6.remux_addr.get(&p.src6).is_none() {
            return miss(ip);
        }
        if UNTIL == stage::LOOKUP {
            return stopped(hit);
        }
        if !decrement_ttl(b, ip) {
            return Verdict::Drop(DropReason::TtlExpired);
        }
        if port.clamp_mss {
            mss::clamp(b, ip, max_mss);
        }
        if let Some(r) = hit {
            rewrite_v6(b, ip, ip.src_off(), r.addr, r.delta);
        }
        let pp = if hit.is_some() {
            proto_port(p.proto, p.port)
        } else {
            0
        };
        ctx.count_circuit(snap, TO_DEVICE, || {
            (key_v6(p.src6, pp), ip_end(b, ip) - ip.l3())
        });
    } else {
        let hit = if p.keyed {
            let k = port_key_v4(p.src4, p.proto, p.port);
            snap.v4.remux_port.get_hashed(&k, p.port_key_hash).copied()
        } else {
            None
        };
        if hit.is_none() && snap.v4.remux_addr.get(&p.src4).is_none() {
            return miss(ip);
        }
        if UNTIL == stage::LOOKUP {
            return stopped(hit);
        }
        let forwarded = match hit {
            Some(r) => ttl_and_rewrite_v4(b, ip, ip.src_off(), r.addr, r.delta),
            None => decrement_ttl(b, ip),
        };
        if !forwarded {
            return Verdict::Drop(DropReason::TtlExpired);
        }
        if port.clamp_mss {
            mss::clamp(b, ip, max_mss);
        }
        let pp = if hit.is_some() {
            proto_port(p.proto, p.port)
        } else {
            0
        };
        ctx.count_circuit(snap, TO_DEVICE, || {
            (key_v4(p.src4, pp), ip_end(b, ip) - ip.l3())
        });
    }
    if UNTIL == stage::REWRITE {
        return stopped(());
    }
    leave(snap, pkt, ip, p)
}

/// Fragments and ICMP errors: the fragment table and the quote.
#[cold]
#[inline(never)]
fn rare<B: PacketBuf>(
    snap: &Snapshot,
    ctx: &mut Context,
    port: &PortEntry,
    pkt: &mut B,
    p: &Pending,
) -> Verdict {
    let ip = &p.ip;
    let b = pkt.data_mut();
    let generation = snap.generation();
    // (new source if rewritten, its checksum delta)
    let mut rewrite = None;
    if ip.later_frag() {
        rewrite = ctx
            .frags
            .get(&frag_key(b, ip), generation, ctx.now_ms())
            .map(|h| (h.addr, h.delta));
    }
    let port_hit = if rewrite.is_some() {
        false
    } else if p.keyed {
        let r = if ip.v6() {
            let k = port_key_v6(p.src6, p.proto, p.port);
            snap.v6
                .remux_port
                .get_hashed(&k, p.port_key_hash)
                .map(|r| (r.addr, r.delta))
        } else {
            let k = port_key_v4(p.src4, p.proto, p.port);
            snap.v4.remux_port.get_hashed(&k, p.port_key_hash).map(|r| {
                let mut a = [0u8; 16];
                a[..4].copy_from_slice(&r.addr.to_be_bytes());
                (a, r.delta)
            })
        };
        rewrite = r;
        r.is_some()
    } else {
        false
    };
    if rewrite.is_none() {
        let pass = if ip.v6() {
            snap.v6.remux_addr.get(&p.src6).is_some()
        } else {
            snap.v4.remux_addr.get(&p.src4).is_some()
        };
        if !pass {
            return miss(ip);
        }
    }
    // Counted by its source before the rewrite (a later fragment the fragment table
    // rewrites is not counted).
    if port_hit || rewrite.is_none() {
        let pp = if port_hit {
            proto_port(p.proto, p.port)
        } else {
            0
        };
        let key = || match ip.v6() {
            true => key_v6(p.src6, pp),
            false => key_v4(p.src4, pp),
        };
        ctx.count_circuit(snap, TO_DEVICE, || (key(), ip_end(b, ip) - ip.l3()));
    }
    if let (true, true, Some((addr, delta))) = (port_hit, ip.frag(), rewrite) {
        let hit = FragHit {
            addr,
            delta,
            next_hop: 0,
        };
        ctx.frags
            .insert(frag_key(b, ip), hit, generation, ctx.now_ms());
    }
    if !decrement_ttl(b, ip) {
        return Verdict::Drop(DropReason::TtlExpired);
    }
    if port.clamp_mss {
        mss::clamp(b, ip, mss::mss_for(snap.inner_mtu, ip.v6()));
    }
    let n = if ip.v6() { 16 } else { 4 };
    if let Some((addr, delta)) = rewrite {
        if ip.v6() {
            rewrite_v6(b, ip, ip.src_off(), addr, delta);
        } else {
            let mut a = [0u8; 4];
            a.copy_from_slice(&addr[..4]);
            rewrite_v4(b, ip, ip.src_off(), u32::from_be_bytes(a), delta);
        }
        if let (true, Some(q)) = (port_hit, &p.quote) {
            rewrite_quote(b, ip, q, Field::Dst, &addr[..n]);
        }
    }
    leave(snap, pkt, ip, p)
}

/// Out of the remux: into a symmetric circuit's return tunnel, or routed to the device.
#[inline(always)]
fn leave<B: PacketBuf>(snap: &Snapshot, pkt: &mut B, ip: &Ip, p: &Pending) -> Verdict {
    // Symmetric return: back through a tunnel to the circuit's aggregator.
    let b = pkt.data_mut();
    let src = ip.src_off();
    let tunnel = if ip.v6() {
        let t = &snap.v6.return_tunnels;
        (!t.is_empty())
            .then(|| t.get(&addr6(b, src)).copied())
            .flatten()
    } else {
        let t = &snap.v4.return_tunnels;
        (!t.is_empty())
            .then(|| t.get(&be32(b, src)).copied())
            .flatten()
    };
    if let Some(t) = tunnel {
        return return_tunnel(snap, pkt, ip, t);
    }
    let nh = if ip.v6() {
        snap.routes_v6.lookup(u128::from_be_bytes(p.dst6)).copied()
    } else {
        snap.routes_v4.lookup(p.dst4).copied()
    };
    let Some(nh) = nh else {
        return Verdict::Drop(DropReason::NoRoute);
    };
    // A per-packet destination needs a gateway route: on-link devices are not resolved.
    to_next_hop(snap, b, ip, nh)
}

#[cold]
#[inline(never)]
fn return_tunnel<B: PacketBuf>(snap: &Snapshot, pkt: &mut B, ip: &Ip, tunnel: u16) -> Verdict {
    into_tunnel(snap, pkt, ip, tunnel)
}
