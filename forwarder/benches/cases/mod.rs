//! The benches' traffic and tables: for each role, N circuits and a pool of 64-byte
//! frames that spread over them (uniform or Zipf), every one of which the role forwards.
//!
//! Addresses: IPv4 circuits live in 198.18.0.0/15 (the RFC 2544 benchmark range); a
//! million aggregator circuits need more addresses than IPv4's test ranges hold, so that
//! case uses IPv6 capture addresses in 2001:db8::/32. Demux and remux use port mode
//! (alias or app host x port), which reaches 1M circuits in IPv4.

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use forwarder::metrics::CircuitCounters;
use forwarder::packet::vxlan::{self, Outer};
use forwarder::pipeline::{process, Context, VecBuf, Verdict, MAX_BURST};
use forwarder::tables::{
    AggregatorRule, DemuxRule, NeighbourCache, PortInfo, Protocol, RemuxRule, Role, Route, Rules,
    Snapshot, Tunnel, TunnelPeer,
};
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

use super::support::{self, frame, ip, mac, L4};

pub const SIZES: [usize; 3] = [1, 10_000, 1_000_000];
pub const POOL: usize = 1 << 16;
pub const PAYLOAD: [u8; 18] = [0x5a; 18]; // 14 + 20 + 8 + 18 = 60 bytes + FCS = 64 on the wire

pub fn ports(role: Role) -> Vec<PortInfo> {
    vec![
        PortInfo::new("in", role, mac(support::AGG_LINE), vec![ip("192.0.2.2")]),
        PortInfo::new("out", role, mac(support::AGG_UPLINK), vec![ip("192.0.2.1")]),
    ]
}

pub fn neighbours() -> NeighbourCache {
    let mut n = NeighbourCache::new();
    for a in ["192.0.2.2", "192.0.2.254", "198.19.0.2"] {
        n.insert((1, ip(a)), mac(support::ROUTER));
    }
    n
}

pub fn route(prefix: &str, via: Option<&str>) -> Route {
    Route {
        prefix: prefix.parse().unwrap(),
        port: "out".into(),
        via: via.map(ip),
    }
}

/// Circuit i's key address: IPv4 in 198.18.0.0/15 while it fits, else IPv6.
pub fn capture(i: usize, n: usize) -> IpAddr {
    if n <= 1 << 17 {
        IpAddr::V4(Ipv4Addr::from(
            u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i as u32,
        ))
    } else {
        IpAddr::V6(Ipv6Addr::from(
            u128::from("2001:db8:113::".parse::<Ipv6Addr>().unwrap()) + i as u128,
        ))
    }
}

pub fn alias_of(c: IpAddr) -> IpAddr {
    match c {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) ^ 0x0001_0000)),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) ^ (1 << 80))),
    }
}

/// (address, port) of port-mode circuit i: 16 ports per address in 198.18.0.0/16.
pub fn port_circuit(i: usize) -> (IpAddr, u16) {
    let a = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + (i / 16) as u32);
    (
        IpAddr::V4(a),
        1024 + (i % 16) as u16 * 1000 + (i / (1 << 20)) as u16,
    )
}

pub struct Case {
    pub snap: Snapshot,
    pub pool: Vec<Vec<u8>>,
    /// Per-circuit counters (`circuit_metrics`), when the case counts circuits.
    pub counters: Option<CircuitCounters>,
}

pub fn pick(n: usize, zipf: bool, rng: &mut StdRng) -> Vec<usize> {
    let z = Zipf::new(n as u64, 1.0).unwrap();
    (0..POOL)
        .map(|_| {
            if zipf {
                z.sample(rng) as usize - 1
            } else {
                rng.gen_range(0..n)
            }
        })
        .collect()
}

pub fn aggregator_case(n: usize, zipf: bool) -> Case {
    let mut rules = Rules {
        tunnels: vec![Tunnel {
            id: 1,
            local: ip("192.0.2.1"),
            remote: ip("192.0.2.2"),
            vni: 7,
            inner_dst_mac: None,
            mtu: None,
            wireguard: None,
        }],
        routes: vec![route("192.0.2.0/24", None)],
        ..Rules::default()
    };
    rules.aggregator = (0..n)
        .map(|i| AggregatorRule {
            capture: capture(i, n),
            alias: alias_of(capture(i, n)),
            tunnel: 1,
            line: None,
            answer_ping: false,
            return_via: None,
        })
        .collect();
    let snap = Snapshot::build(&rules, &ports(Role::Aggregator), 1, &neighbours()).unwrap();
    let mut rng = StdRng::seed_from_u64(1);
    let dev = |c: IpAddr| {
        if c.is_ipv4() {
            ip("198.51.100.10")
        } else {
            ip("2001:db8:51::10")
        }
    };
    let pool = pick(n, zipf, &mut rng)
        .into_iter()
        .map(|i| {
            let c = capture(i, n);
            frame(
                support::ROUTER,
                support::AGG_LINE,
                dev(c),
                c,
                64,
                L4::Udp,
                40000,
                4000,
                &PAYLOAD,
            )
        })
        .collect();
    Case {
        snap,
        pool,
        counters: None,
    }
}

pub fn demux_case(n: usize, zipf: bool) -> Case {
    let rules = Rules {
        demux: (0..n)
            .map(|i| {
                let (alias, port) = port_circuit(i);
                DemuxRule::Port {
                    alias,
                    protocol: Protocol::Udp,
                    port,
                    app_host: ip("198.19.0.2"),
                }
            })
            .collect(),
        tunnel_peers: vec![TunnelPeer::any_vni(ip("192.0.2.1"))],
        routes: vec![route("198.19.0.0/24", None)],
        ..Rules::default()
    };
    let snap = Snapshot::build(&rules, &ports(Role::Demux), 1, &neighbours()).unwrap();
    let mut rng = StdRng::seed_from_u64(2);
    let pool = pick(n, zipf, &mut rng)
        .into_iter()
        .map(|i| in_vxlan(&demux_inner(i, &PAYLOAD), i))
        .collect();
    Case {
        snap,
        pool,
        counters: None,
    }
}

pub fn remux_case(n: usize, zipf: bool) -> Case {
    let rules = Rules {
        remux: (0..n)
            .map(|i| {
                let (app_host, port) = port_circuit(i);
                RemuxRule::Port {
                    app_host,
                    protocol: Protocol::Udp,
                    port,
                    capture: ip("203.0.113.4"),
                }
            })
            .collect(),
        routes: vec![route("0.0.0.0/0", Some("192.0.2.254"))],
        ..Rules::default()
    };
    let snap = Snapshot::build(&rules, &ports(Role::Remux), 1, &neighbours()).unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    let pool = pick(n, zipf, &mut rng)
        .into_iter()
        .map(|i| {
            let (app, port) = port_circuit(i);
            frame(
                support::ROUTER,
                support::AGG_LINE,
                app,
                ip("198.51.100.10"),
                64,
                L4::Udp,
                port,
                40000,
                &PAYLOAD,
            )
        })
        .collect();
    Case {
        snap,
        pool,
        counters: None,
    }
}

/// The inner frame the demux receives for port-mode circuit `i` (its alias and port,
/// TTL already decremented by the aggregator), carrying `payload`.
pub fn demux_inner(i: usize, payload: &[u8]) -> Vec<u8> {
    let (alias, port) = port_circuit(i);
    frame(
        support::AGG_UPLINK,
        support::INNER,
        ip("198.51.100.10"),
        alias,
        63,
        L4::Udp,
        40000,
        port,
        payload,
    )
}

/// `inner` in the VXLAN tunnel from the aggregator (192.0.2.1) to the demux, its UDP
/// source port from flow `i`.
pub fn in_vxlan(inner: &[u8], i: usize) -> Vec<u8> {
    let mut f = vec![0u8; vxlan::OUTER_LEN_V4];
    f.extend_from_slice(inner);
    let outer = Outer {
        dst_mac: mac(support::AGG_LINE),
        src_mac: mac(support::ROUTER),
        src: ip("192.0.2.1"),
        dst: ip("192.0.2.2"),
        vni: 7,
        src_port: vxlan::flow_port(i as u32),
    };
    assert!(vxlan::write_outer(&mut f, &outer));
    f
}

/// Asserts that the role forwards every packet of `case`'s pool to port 1 (a fast wrong
/// answer must not count), once, outside any measurement, in order (a fragment table
/// fills as the measurement's will).
pub fn assert_all_forwarded(case: &Case, what: &str) {
    let mut bufs: Vec<VecBuf> = (0..MAX_BURST).map(|k| VecBuf::new(&case.pool[k])).collect();
    let mut verdicts = [Verdict::SlowPath; MAX_BURST];
    let mut ctx = Context::new(2);
    if let Some(c) = &case.counters {
        ctx.set_circuit_counters(c.clone());
    }
    for chunk in case.pool.chunks(MAX_BURST) {
        let n = chunk.len();
        for (buf, frame) in bufs.iter_mut().zip(chunk) {
            buf.reset(frame);
        }
        process(&case.snap, &mut ctx, 0, &mut bufs[..n], &mut verdicts[..n]);
        assert!(
            verdicts[..n]
                .iter()
                .all(|v| matches!(v, Verdict::Forward(1))),
            "{what}: not every packet forwarded: {:?}",
            &verdicts[..n]
        );
    }
}
