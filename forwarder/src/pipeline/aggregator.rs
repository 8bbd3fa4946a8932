//! Aggregator (POP): capture address -> demux alias, then into the VXLAN tunnel.

use crate::packet::vxlan;
use crate::packet::{be32, ipv4};
use crate::tables::{Key, PortEntry, Snapshot};

use super::parse::{addr6, classify, Ip, L3};
use super::rewrite::{decrement_ttl, rewrite_v4, rewrite_v6, set_macs};
use super::{DropReason, PacketBuf, Verdict, MAX_BURST};

#[derive(Clone, Copy, Default)]
struct Pending {
    ip: Ip,
    key4: u32,
    key6: [u8; 16],
    hash: u64,
}

/// Runs the aggregator over at most [`MAX_BURST`] packets received on `port`.
pub(super) fn run<B: PacketBuf>(
    snap: &Snapshot,
    port: &PortEntry,
    pkts: &mut [B],
    out: &mut [Verdict],
) {
    let mut pending = [Pending::default(); MAX_BURST];
    let mut todo = [false; MAX_BURST];
    // Pass 1: parse, hash the destination, prefetch its slot.
    for (i, pkt) in pkts.iter().enumerate() {
        let b = pkt.data();
        out[i] = match classify(b, Some(port.mac)) {
            Err(reason) => Verdict::Drop(reason),
            Ok(L3::Arp) => Verdict::SlowPath,
            Ok(L3::Ip(ip)) if ip.is_nd(b) => Verdict::SlowPath,
            Ok(L3::Ip(ip)) => {
                let off = ip.dst_off();
                let mut p = Pending {
                    ip,
                    ..Pending::default()
                };
                if ip.v6 {
                    p.key6 = addr6(b, off);
                    p.hash = p.key6.hash64();
                    snap.v6.aggregator.prefetch(p.hash);
                } else {
                    p.key4 = be32(b, off);
                    p.hash = p.key4.hash64();
                    snap.v4.aggregator.prefetch(p.hash);
                }
                pending[i] = p;
                todo[i] = true;
                continue;
            }
        };
    }
    // Pass 2: look up, rewrite, encapsulate.
    for (i, pkt) in pkts.iter_mut().enumerate() {
        if todo[i] {
            out[i] = one(snap, port, pkt, &pending[i]);
        }
    }
}

#[inline]
fn one<B: PacketBuf>(snap: &Snapshot, port: &PortEntry, pkt: &mut B, p: &Pending) -> Verdict {
    let ip = &p.ip;
    let b = pkt.data_mut();
    let tunnel = if ip.v6 {
        let Some(e) = snap.v6.aggregator.get_hashed(&p.key6, p.hash) else {
            return miss(port.is_local_v6(p.key6));
        };
        if !decrement_ttl(b, ip) {
            return Verdict::Drop(DropReason::TtlExpired);
        }
        rewrite_v6(b, ip, ip.dst_off(), e.alias, e.delta);
        e.tunnel
    } else {
        let Some(e) = snap.v4.aggregator.get_hashed(&p.key4, p.hash) else {
            return miss(port.is_local_v4(p.key4));
        };
        if !decrement_ttl(b, ip) {
            return Verdict::Drop(DropReason::TtlExpired);
        }
        rewrite_v4(b, ip, ip.l3 + ipv4::DST_OFFSET, e.alias, e.delta);
        e.tunnel
    };
    let t = &snap.tunnels[tunnel as usize];
    let nh = &snap.next_hops[t.next_hop as usize];
    let Some(nh_mac) = nh.mac() else {
        return Verdict::Drop(DropReason::NoNeighbour);
    };
    set_macs(b, t.inner_dst_mac, snap.ports[nh.port as usize].mac);
    let src_port = vxlan::flow_port(flow_hash(b, ip));
    if !pkt.prepend(t.outer.len()) {
        return Verdict::Drop(DropReason::NoHeadroom);
    }
    if !t.outer.write(pkt.data_mut(), nh_mac, src_port) {
        return Verdict::Drop(DropReason::Malformed);
    }
    Verdict::Forward(nh.port)
}

/// No circuit: traffic to the port's own address is the slow path's, the rest is dropped.
#[inline]
fn miss(local: bool) -> Verdict {
    if local {
        Verdict::SlowPath
    } else {
        Verdict::Drop(DropReason::NoCircuit)
    }
}

/// A hash of the inner flow (addresses, protocol, ports) for the outer source port:
/// the same flow always takes the same port, so the receiver's RSS keeps it on one core.
#[inline(always)]
fn flow_hash(b: &[u8], ip: &Ip) -> u32 {
    let (s, d) = (ip.src_off(), ip.dst_off());
    let mut x = if ip.v6 {
        let a = u128::from_ne_bytes(addr6(b, s)) ^ u128::from_ne_bytes(addr6(b, d)).rotate_left(17);
        (a as u64) ^ (a >> 64) as u64
    } else {
        ((be32(b, s) as u64) << 32) | be32(b, d) as u64
    };
    if ip.has_ports() {
        x ^= (be32(b, ip.l4) as u64).rotate_left(7) ^ ip.proto as u64;
    }
    (x.hash64() >> 32) as u32
}
