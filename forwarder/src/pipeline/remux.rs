//! Remux (data-center egress): an app host's reply leaves with the capture address as
//! its source (port mode); address-mode replies already carry it and pass unchanged.

use crate::packet::be32;
use crate::tables::{port_key_v4, port_key_v6, Key, PortEntry, Snapshot};

use super::parse::{addr6, classify, Ip, L3};
use super::rewrite::{decrement_ttl, miss, rewrite_v4, rewrite_v6, to_next_hop};
use super::{DropReason, PacketBuf, Verdict, MAX_BURST};

#[derive(Clone, Copy, Default)]
struct Pending {
    ip: Ip,
    src4: u32,
    dst4: u32,
    src6: [u8; 16],
    dst6: [u8; 16],
    port_key_hash: u64,
}

/// Runs the remux over at most [`MAX_BURST`] packets received on `port`.
pub(super) fn run<B: PacketBuf>(
    snap: &Snapshot,
    port: &PortEntry,
    pkts: &mut [B],
    out: &mut [Verdict],
) {
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
                let mut p = Pending {
                    ip,
                    ..Pending::default()
                };
                let local = if ip.v6 {
                    p.src6 = addr6(b, s);
                    p.dst6 = addr6(b, d);
                    if ip.has_ports() {
                        p.port_key_hash = port_key_v6(p.src6, ip.proto, ip.src_port(b)).hash64();
                        snap.v6.remux_port.prefetch(p.port_key_hash);
                    }
                    port.is_local_v6(p.dst6)
                } else {
                    p.src4 = be32(b, s);
                    p.dst4 = be32(b, d);
                    if ip.has_ports() {
                        p.port_key_hash = port_key_v4(p.src4, ip.proto, ip.src_port(b)).hash64();
                        snap.v4.remux_port.prefetch(p.port_key_hash);
                    }
                    port.is_local_v4(p.dst4)
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
            let k = port_key_v6(p.src6, ip.proto, ip.src_port(b));
            snap.v6.remux_port.get_hashed(&k, p.port_key_hash).copied()
        } else {
            None
        };
        if hit.is_none() && snap.v6.remux_addr.get(&p.src6).is_none() {
            return miss(ip);
        }
        if !decrement_ttl(b, ip) {
            return Verdict::Drop(DropReason::TtlExpired);
        }
        if let Some(r) = hit {
            rewrite_v6(b, ip, ip.src_off(), r.addr, r.delta);
        }
        snap.routes_v6.lookup(u128::from_be_bytes(p.dst6)).copied()
    } else {
        let src = p.src4;
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
        snap.routes_v4.lookup(p.dst4).copied()
    };
    let Some(nh) = nh else {
        return Verdict::Drop(DropReason::NoRoute);
    };
    // A per-packet destination needs a gateway route: on-link devices are not resolved.
    to_next_hop(snap, b, nh)
}
