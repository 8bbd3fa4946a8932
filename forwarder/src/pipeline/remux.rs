//! Remux (data-center egress): an app host's reply leaves with the capture address as
//! its source (port mode); address-mode replies already carry it and pass unchanged.

use crate::packet::be32;
use crate::tables::{port_key_v4, port_key_v6, Key, PortEntry, Snapshot, ON_LINK};

use super::parse::{classify, Ip, L3};
use super::rewrite::{decrement_ttl, rewrite_v4, rewrite_v6, set_macs};
use super::{DropReason, PacketBuf, Verdict, MAX_BURST};

#[derive(Clone, Copy, Default)]
struct Pending {
    ip: Ip,
    src: u128,
    dst: u128,
    port_key_hash: u64,
}

/// Runs the remux over at most [`MAX_BURST`] packets received on `port`.
pub(super) fn run<B: PacketBuf>(snap: &Snapshot, port: &PortEntry, pkts: &mut [B], out: &mut [Verdict]) {
    let mut pending = [Pending::default(); MAX_BURST];
    let mut todo = [false; MAX_BURST];
    for (i, pkt) in pkts.iter().enumerate() {
        let b = pkt.data();
        out[i] = match classify(b, Some(port.mac)) {
            Err(reason) => Verdict::Drop(reason),
            Ok(L3::Arp) => Verdict::SlowPath,
            Ok(L3::Ip(ip)) if ip.is_nd(b) => Verdict::SlowPath,
            Ok(L3::Ip(ip)) => {
                let (s, d) = (ip.src_off(), ip.dst_off());
                let mut p = Pending { ip, ..Pending::default() };
                let local = if ip.v6 {
                    p.src = u128::from_be_bytes(b[s..s + 16].try_into().unwrap_or([0; 16]));
                    p.dst = u128::from_be_bytes(b[d..d + 16].try_into().unwrap_or([0; 16]));
                    if ip.has_ports() {
                        p.port_key_hash = port_key_v6(p.src, ip.proto, ip.src_port(b)).hash64();
                        snap.v6.remux_port.prefetch(p.port_key_hash);
                    }
                    port.is_local_v6(p.dst)
                } else {
                    p.src = be32(b, s) as u128;
                    p.dst = be32(b, d) as u128;
                    if ip.has_ports() {
                        p.port_key_hash = port_key_v4(p.src as u32, ip.proto, ip.src_port(b)).hash64();
                        snap.v4.remux_port.prefetch(p.port_key_hash);
                    }
                    port.is_local_v4(p.dst as u32)
                };
                if local {
                    Verdict::SlowPath
                } else {
                    pending[i] = p;
                    todo[i] = true;
                    continue;
                }
            }
        };
    }
    for (i, pkt) in pkts.iter_mut().enumerate() {
        if todo[i] {
            out[i] = one(snap, pkt, &pending[i]);
        }
    }
}

#[inline]
fn one<B: PacketBuf>(snap: &Snapshot, pkt: &mut B, p: &Pending) -> Verdict {
    let ip = &p.ip;
    let b = pkt.data_mut();
    let nh = if ip.v6 {
        let hit = if ip.has_ports() {
            let k = port_key_v6(p.src, ip.proto, ip.src_port(b));
            snap.v6.remux_port.get_hashed(&k, p.port_key_hash).copied()
        } else {
            None
        };
        if hit.is_none() && snap.v6.remux_addr.get(&p.src).is_none() {
            return miss(ip);
        }
        if !decrement_ttl(b, ip) {
            return Verdict::Drop(DropReason::TtlExpired);
        }
        if let Some(r) = hit {
            rewrite_v6(b, ip, ip.src_off(), r.addr, r.delta);
        }
        snap.v6.routes.lookup(p.dst).copied()
    } else {
        let src = p.src as u32;
        let hit = if ip.has_ports() {
            let k = port_key_v4(src, ip.proto, ip.src_port(b));
            snap.v4.remux_port.get_hashed(&k, p.port_key_hash).copied()
        } else {
            None
        };
        if hit.is_none() && snap.v4.remux_addr.get(&src).is_none() {
            return miss(ip);
        }
        if !decrement_ttl(b, ip) {
            return Verdict::Drop(DropReason::TtlExpired);
        }
        if let Some(r) = hit {
            rewrite_v4(b, ip, ip.src_off(), r.addr, r.delta);
        }
        snap.v4.routes.lookup(p.dst as u32).copied()
    };
    let Some(nh) = nh else {
        return Verdict::Drop(DropReason::NoRoute);
    };
    // A per-packet destination needs a gateway: on-link devices are not resolved here.
    if nh == ON_LINK {
        return Verdict::Drop(DropReason::NoNeighbour);
    }
    let nh = &snap.next_hops[nh as usize];
    let Some(mac) = nh.mac() else {
        return Verdict::Drop(DropReason::NoNeighbour);
    };
    set_macs(b, mac, snap.ports[nh.port as usize].mac);
    Verdict::Forward(nh.port)
}

#[inline]
fn miss(ip: &Ip) -> Verdict {
    Verdict::Drop(if ip.later_frag { DropReason::Fragment } else { DropReason::NoCircuit })
}
