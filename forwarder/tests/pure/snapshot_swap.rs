//! Snapshot swaps under load: readers looking up through a `SnapshotHandle` while a
//! writer publishes thousands of generations see whole snapshots only, old or new, never
//! a mix, and never a generation older than one they saw before.
//!
//! Every table entry of generation `g` encodes `g`: the tunnels' VNI is `g`, each alias is
//! 198.18.(g % 512 << 8 | x) / 2001:db8:18:g::x, and the number of circuits is
//! `circuits(g)`. A reader checks one loaded snapshot's lookups and forwarded packets
//! against `snap.generation()`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::support::*;
use forwarder::pipeline::{process, Context, DropReason, PacketBuf, VecBuf, Verdict};
use forwarder::tables::{
    AggregatorRule, NeighbourCache, PortInfo, Role, Route, Rules, Snapshot, SnapshotHandle, Tunnel,
};

/// Generations the writer publishes after the first.
const SWAPS: u64 = 5000;
/// Reader threads (the machine has two cores; the writer is the third thread).
const READERS: usize = 2;
/// Circuits of the largest generation, per address family.
const MAX_CIRCUITS: u32 = 16;

/// How many circuits generation `g` has: a reader that mixed two generations' tables would
/// find an entry one of them does not have.
fn circuits(g: u64) -> u32 {
    4 + (g % 13) as u32
}

fn capture_v4(x: u32) -> Ipv4Addr {
    Ipv4Addr::new(203, 0, 113, 10 + x as u8)
}

fn capture_v6(x: u32) -> Ipv6Addr {
    Ipv6Addr::from(0x2001_0db8_0113_0000_0000_0000_0000_0010u128 + x as u128)
}

/// 198.18.0.0/15 holds 17 bits: 9 of the generation, 8 of the circuit.
fn alias_v4(g: u64, x: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) | ((g % 512) as u32) << 8 | x)
}

/// 2001:db8:18:g::x — the whole generation.
fn alias_v6(g: u64, x: u32) -> Ipv6Addr {
    Ipv6Addr::from(0x2001_0db8_0018u128 << 80 | ((g & 0xffff_ffff_ffff) as u128) << 64 | x as u128)
}

fn vni(g: u64) -> u32 {
    (g & 0xff_ffff) as u32
}

fn ports() -> Vec<PortInfo> {
    vec![
        PortInfo::new(
            "line0",
            Role::Aggregator,
            mac(AGG_LINE),
            vec![ip("203.0.113.1"), ip("2001:db8:113::1")],
        ),
        PortInfo::new(
            "uplink",
            Role::Aggregator,
            mac(AGG_UPLINK),
            vec![ip("192.0.2.1"), ip("2001:db8:ffff::1")],
        ),
    ]
}

/// Generation `g`'s snapshot: circuits on both tunnels (IPv4 and IPv6 outer), all of it
/// encoding `g`.
fn build(g: u64, ports: &[PortInfo], neighbours: &NeighbourCache) -> Snapshot {
    let tunnel = |id, local: &str, remote: &str| Tunnel {
        id,
        local: ip(local),
        remote: ip(remote),
        vni: vni(g),
        inner_dst_mac: Some(mac(INNER)),
        mtu: None,
        wireguard: None,
    };
    let mut rules = Rules {
        tunnels: vec![
            tunnel(1, "192.0.2.1", "192.0.2.2"),
            tunnel(2, "2001:db8:ffff::1", "2001:db8:ffff::2"),
        ],
        routes: vec![
            Route {
                prefix: "192.0.2.0/24".parse().unwrap(),
                port: "uplink".into(),
                via: None,
            },
            Route {
                prefix: "2001:db8:ffff::/64".parse().unwrap(),
                port: "uplink".into(),
                via: None,
            },
        ],
        ..Rules::default()
    };
    for x in 0..circuits(g) {
        let t = 1 + x % 2;
        rules.aggregator.push(AggregatorRule {
            capture: capture_v4(x).into(),
            alias: alias_v4(g, x).into(),
            tunnel: t,
            line: None,
            answer_ping: false,
            return_via: None,
        });
        rules.aggregator.push(AggregatorRule {
            capture: capture_v6(x).into(),
            alias: alias_v6(g, x).into(),
            tunnel: t,
            line: None,
            answer_ping: false,
            return_via: None,
        });
    }
    Snapshot::build(&rules, ports, g, neighbours).unwrap()
}

/// One packet per possible circuit, both families.
fn traffic() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for x in 0..MAX_CIRCUITS {
        for (src, dst) in [
            (ip("198.51.100.10"), IpAddr::from(capture_v4(x))),
            (ip("2001:db8:51::10"), IpAddr::from(capture_v6(x))),
        ] {
            out.push(frame(
                ROUTER,
                AGG_LINE,
                src,
                dst,
                64,
                L4::Udp,
                40000 + x as u16,
                4000,
                b"swap",
            ));
        }
    }
    out
}

/// Checks that everything `snap` answers belongs to one generation, `snap.generation()`:
/// table lookups, and packets run through the aggregator. Returns the generation.
fn check_whole(
    snap: &Snapshot,
    traffic: &[Vec<u8>],
    bufs: &mut [VecBuf],
    verdicts: &mut [Verdict],
) -> u64 {
    let g = snap.generation();
    for x in 0..MAX_CIRCUITS {
        let present = x < circuits(g);
        let e4 = snap.v4.aggregator.get(&u32::from(capture_v4(x)));
        let e6 = snap.v6.aggregator.get(&capture_v6(x).octets());
        assert_eq!(
            e4.is_some(),
            present,
            "generation {g}: circuit {x} (IPv4) present"
        );
        assert_eq!(
            e6.is_some(),
            present,
            "generation {g}: circuit {x} (IPv6) present"
        );
        if let (Some(e4), Some(e6)) = (e4, e6) {
            assert_eq!(
                Ipv4Addr::from(e4.alias),
                alias_v4(g, x),
                "generation {g}: IPv4 alias of circuit {x}"
            );
            assert_eq!(
                Ipv6Addr::from(e6.alias),
                alias_v6(g, x),
                "generation {g}: IPv6 alias of circuit {x}"
            );
            assert_eq!(
                snap.tunnels[e4.tunnel as usize].vni,
                vni(g),
                "generation {g}: VNI"
            );
            assert_eq!(
                snap.tunnels[e6.tunnel as usize].vni,
                vni(g),
                "generation {g}: VNI"
            );
        }
    }

    bufs.iter_mut().zip(traffic).for_each(|(b, f)| b.reset(f));
    process(
        snap,
        &mut Context::with_frag_slots(2, 64),
        0,
        bufs,
        verdicts,
    );
    for (i, (b, &v)) in bufs.iter().zip(verdicts.iter()).enumerate() {
        let (x, is_v6) = (i as u32 / 2, i % 2 == 1);
        if x >= circuits(g) {
            assert_eq!(
                v,
                Verdict::Drop(DropReason::NoCircuit),
                "generation {g}: circuit {x} is not in it"
            );
            continue;
        }
        assert_eq!(v, Verdict::Forward(1), "generation {g}: circuit {x}");
        let out = b.data();
        // Tunnel 1 has an IPv4 outer, tunnel 2 an IPv6 one.
        let outer = if x % 2 == 0 { 14 + 20 + 8 } else { 14 + 40 + 8 };
        let got_vni = u32::from_be_bytes([0, out[outer + 4], out[outer + 5], out[outer + 6]]);
        assert_eq!(got_vni, vni(g), "generation {g}: VNI on the wire");
        let inner = &out[outer + 8..];
        let (_, dst, _) = check_checksums(inner).unwrap();
        let want = if is_v6 {
            IpAddr::from(alias_v6(g, x))
        } else {
            IpAddr::from(alias_v4(g, x))
        };
        assert_eq!(
            dst, want,
            "generation {g}: rewritten destination of circuit {x}"
        );
    }
    g
}

#[test]
fn readers_see_whole_snapshots_in_order() {
    let ports = ports();
    let mut neighbours = NeighbourCache::new();
    neighbours.insert((1, ip("192.0.2.2")), mac(DMX_TUN));
    neighbours.insert((1, ip("2001:db8:ffff::2")), mac(DMX_TUN));
    let handle = SnapshotHandle::new(build(1, &ports, &neighbours));
    let done = AtomicBool::new(false);
    let last = 1 + SWAPS;

    std::thread::scope(|s| {
        let readers: Vec<_> = (0..READERS)
            .map(|_| {
                s.spawn(|| {
                    let traffic = traffic();
                    let mut bufs: Vec<VecBuf> = traffic.iter().map(|f| VecBuf::new(f)).collect();
                    let mut verdicts = vec![Verdict::SlowPath; bufs.len()];
                    let (mut seen, mut distinct, mut loads) = (0u64, 0u64, 0u64);
                    // A snapshot held across many swaps stays whole too.
                    let mut held = handle.load_full();
                    loop {
                        // Read the flag first: a load after it is set sees the last generation.
                        let finished = done.load(Ordering::Acquire);
                        let snap = handle.load();
                        let g = check_whole(&snap, &traffic, &mut bufs, &mut verdicts);
                        assert!(g >= seen, "generation went backwards: {seen} then {g}");
                        distinct += (g != seen) as u64;
                        seen = g;
                        loads += 1;
                        if loads % 64 == 0 {
                            check_whole(&held, &traffic, &mut bufs, &mut verdicts);
                            held = handle.load_full();
                        }
                        if finished {
                            assert_eq!(g, last, "after the last publish, readers see it");
                            break;
                        }
                    }
                    (loads, distinct)
                })
            })
            .collect();

        for g in 2..=last {
            let old = handle.publish(build(g, &ports, &neighbours));
            assert_eq!(
                old.generation(),
                g - 1,
                "publish returns the snapshot it replaces"
            );
        }
        done.store(true, Ordering::Release);

        for r in readers {
            let (loads, distinct) = r.join().unwrap();
            eprintln!("reader: {loads} loads, {distinct} distinct generations of {last}");
        }
    });
    assert_eq!(handle.load().generation(), last);
}
