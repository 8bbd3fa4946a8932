//! Demux (data center): decapsulate, then alias -> app host (port mode) or alias ->
//! capture address delivered to the app host (address mode).

use crate::packet::{be32, ethernet, vxlan, Error};
use crate::tables::{port_key_v4, port_key_v6, Key, PortEntry, Rewrite, Snapshot};

use super::parse::{addr6, classify, Ip, L3};
use super::rewrite::{decrement_ttl, miss, rewrite_v4, rewrite_v6, to_next_hop};
use super::{DropReason, PacketBuf, Verdict, MAX_BURST};

#[derive(Clone, Copy, Default)]
struct Pending {
    ip: Ip,
    dst4: u32,
    dst6: [u8; 16],
    port_key_hash: u64,
    addr_hash: u64,
}

/// Runs the demux over at most [`MAX_BURST`] packets received on `port`.
pub(super) fn run<B: PacketBuf>(
    snap: &Snapshot,
    port: &PortEntry,
    pkts: &mut [B],
    out: &mut [Verdict],
) {
    let mut pending = [Pending::default(); MAX_BURST];
    let mut todo = [false; MAX_BURST];
    // Pass 1: check and strip the tunnel, parse the inner packet, prefetch its slots.
    for (i, pkt) in pkts.iter_mut().enumerate() {
        match decapsulate(snap, port, pkt) {
            Err(v) => out[i] = v,
            Ok(ip) => {
                let b = pkt.data();
                let off = ip.dst_off();
                let mut p = Pending {
                    ip,
                    ..Pending::default()
                };
                if ip.v6 {
                    p.dst6 = addr6(b, off);
                    if ip.has_ports() && !snap.v6.demux_port.is_empty() {
                        p.port_key_hash = port_key_v6(p.dst6, ip.proto, ip.dst_port(b)).hash64();
                        snap.v6.demux_port.prefetch(p.port_key_hash);
                    }
                    if !snap.v6.demux_addr.is_empty() {
                        p.addr_hash = p.dst6.hash64();
                        snap.v6.demux_addr.prefetch(p.addr_hash);
                    }
                } else {
                    p.dst4 = be32(b, off);
                    if ip.has_ports() && !snap.v4.demux_port.is_empty() {
                        p.port_key_hash = port_key_v4(p.dst4, ip.proto, ip.dst_port(b)).hash64();
                        snap.v4.demux_port.prefetch(p.port_key_hash);
                    }
                    if !snap.v4.demux_addr.is_empty() {
                        p.addr_hash = p.dst4.hash64();
                        snap.v4.demux_addr.prefetch(p.addr_hash);
                    }
                }
                pending[i] = p;
                todo[i] = true;
            }
        }
    }
    // Pass 2: look up and rewrite.
    for (i, pkt) in pkts.iter_mut().enumerate() {
        if todo[i] {
            out[i] = one(snap, pkt, &pending[i]);
        }
    }
}

/// Accepts a tunnel packet from a peer to one of this port's addresses and strips the
/// outer headers. Anything else ends here with its verdict.
#[inline]
fn decapsulate<B: PacketBuf>(
    snap: &Snapshot,
    port: &PortEntry,
    pkt: &mut B,
) -> Result<Ip, Verdict> {
    let b = pkt.data();
    if !for_us(b, port) {
        return Err(Verdict::Drop(if b.len() < ethernet::HEADER_LEN {
            DropReason::Malformed
        } else {
            DropReason::OtherHost
        }));
    }
    if let Some((src, dst, inner_len)) = vxlan::parse_outer_v4_fast(b) {
        if !port.is_local_v4(dst) {
            return Err(Verdict::Drop(DropReason::OtherHost));
        }
        if snap.v4.peers.get(&src).is_none() {
            return Err(Verdict::Drop(DropReason::NotTunnelPeer));
        }
        if !pkt.adj(vxlan::OUTER_LEN_V4) || !pkt.truncate(inner_len) {
            return Err(Verdict::Drop(DropReason::Malformed));
        }
        return match classify(pkt.data(), None) {
            Ok(L3::Ip(ip)) => Ok(ip),
            Ok(L3::Arp) => Err(Verdict::Drop(DropReason::Unsupported)),
            Err(r) => Err(Verdict::Drop(r)),
        };
    }
    match vxlan::parse_outer(b) {
        Ok(outer) => {
            let ours = port.is_local(outer.dst);
            if !ours {
                return Err(Verdict::Drop(DropReason::OtherHost));
            }
            let peer = match outer.src {
                std::net::IpAddr::V4(a) => snap.v4.peers.get(&u32::from(a)).is_some(),
                std::net::IpAddr::V6(a) => snap.v6.peers.get(&a.octets()).is_some(),
            };
            if !peer {
                return Err(Verdict::Drop(DropReason::NotTunnelPeer));
            }
            if !pkt.adj(outer.inner_offset) || !pkt.truncate(outer.inner_len) {
                return Err(Verdict::Drop(DropReason::Malformed));
            }
            match classify(pkt.data(), None) {
                Ok(L3::Ip(ip)) => Ok(ip),
                Ok(L3::Arp) => Err(Verdict::Drop(DropReason::Unsupported)),
                Err(r) => Err(Verdict::Drop(r)),
            }
        }
        // Not a tunnel packet: ARP, neighbour discovery and pings to the port itself.
        Err(Error::Unsupported) => Err(match classify(b, Some(port.mac)) {
            Err(r) => Verdict::Drop(r),
            Ok(L3::Arp) => Verdict::SlowPath,
            Ok(L3::Ip(ip)) if ip.is_nd(b) => Verdict::SlowPath,
            Ok(L3::Ip(ip)) => {
                let off = ip.dst_off();
                let local = if ip.v6 {
                    port.is_local_v6(addr6(b, off))
                } else {
                    port.is_local_v4(be32(b, off))
                };
                if local {
                    Verdict::SlowPath
                } else {
                    Verdict::Drop(DropReason::Unsupported)
                }
            }
        }),
        Err(_) => Err(Verdict::Drop(DropReason::Malformed)),
    }
}

#[inline]
fn one<B: PacketBuf>(snap: &Snapshot, pkt: &mut B, p: &Pending) -> Verdict {
    let ip = &p.ip;
    let b = pkt.data_mut();
    let nh = if ip.v6 {
        let hit: Option<&Rewrite<[u8; 16]>> = if ip.has_ports() {
            let k = port_key_v6(p.dst6, ip.proto, ip.dst_port(b));
            snap.v6.demux_port.get_hashed(&k, p.port_key_hash)
        } else {
            None
        };
        let Some(r) = hit
            .or_else(|| snap.v6.demux_addr.get_hashed(&p.dst6, p.addr_hash))
            .copied()
        else {
            return miss(ip);
        };
        if !decrement_ttl(b, ip) {
            return Verdict::Drop(DropReason::TtlExpired);
        }
        rewrite_v6(b, ip, ip.dst_off(), r.addr, r.delta);
        r.next_hop
    } else {
        let dst = p.dst4;
        let hit = if ip.has_ports() {
            let k = port_key_v4(dst, ip.proto, ip.dst_port(b));
            snap.v4.demux_port.get_hashed(&k, p.port_key_hash)
        } else {
            None
        };
        let Some(r) = hit
            .or_else(|| snap.v4.demux_addr.get_hashed(&dst, p.addr_hash))
            .copied()
        else {
            return miss(ip);
        };
        if !decrement_ttl(b, ip) {
            return Verdict::Drop(DropReason::TtlExpired);
        }
        rewrite_v4(b, ip, ip.dst_off(), r.addr, r.delta);
        r.next_hop
    };
    to_next_hop(snap, b, nh)
}

/// True if the frame's destination MAC is the port's or a group address.
#[inline]
fn for_us(b: &[u8], port: &PortEntry) -> bool {
    let dst = ethernet::field::DST;
    b.len() >= dst.end && (b[dst.clone()] == port.mac.0 || b[dst.start] & 1 == 1)
}
