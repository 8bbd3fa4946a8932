//! Writes a seed corpus for the fuzz targets into `corpus/<target>/`: valid frames of
//! each box's traffic (the fuzzer's mutations start from packets that reach the rewrite,
//! rather than having to guess a port's MAC first).
//!
//! `cargo run --example seeds` from `forwarder/fuzz`.

use std::net::IpAddr;
use std::path::Path;

use etherparse::PacketBuilder;
use forwarder::pipeline::{process, Context, PacketBuf, VecBuf, Verdict};

/// Control byte of one packet on port 0 with a DPDK mbuf's headroom (`tarp_fuzz::run`).
const CTL: u8 = 6 << 2;

fn mac(s: &str) -> [u8; 6] {
    s.parse::<forwarder::packet::MacAddr>().unwrap().0
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// UDP, TCP and ICMP echo from `src` to `dst` (ports `sport` -> `dport`).
fn frames(eth_src: &str, eth_dst: &str, src: &str, dst: &str, sport: u16, dport: u16) -> Vec<Vec<u8>> {
    let (src, dst) = (ip(src), ip(dst));
    let mut out = Vec::new();
    for kind in 0..3 {
        let b = PacketBuilder::ethernet2(mac(eth_src), mac(eth_dst));
        let mut f = Vec::new();
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let b = b.ipv4(s.octets(), d.octets(), 64);
                match kind {
                    0 => b.udp(sport, dport).write(&mut f, b"seed"),
                    1 => b.tcp(sport, dport, 1, 64240).ack(2).write(&mut f, b"seed"),
                    _ => b.icmpv4_echo_request(1, 1).write(&mut f, b"seed"),
                }
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let b = b.ipv6(s.octets(), d.octets(), 64);
                match kind {
                    0 => b.udp(sport, dport).write(&mut f, b"seed"),
                    1 => b.tcp(sport, dport, 1, 64240).ack(2).write(&mut f, b"seed"),
                    _ => b.icmpv6_echo_request(1, 1).write(&mut f, b"seed"),
                }
            }
            _ => unreachable!("one family"),
        }
        .unwrap();
        out.push(f);
    }
    out
}

fn write(target: &str, frames: &[Vec<u8>], ctl: bool) {
    let dir = Path::new("corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    for (i, f) in frames.iter().enumerate() {
        let mut data = if ctl { vec![CTL] } else { Vec::new() };
        data.extend_from_slice(f);
        std::fs::write(dir.join(format!("seed-{i:03}")), data).unwrap();
    }
}

fn main() {
    let (router, line, rmx_dc, app2) =
        ("02:00:00:00:01:fe", "02:00:00:00:0a:01", "02:00:00:00:0e:01", "02:00:00:00:a0:02");
    let mut agg = Vec::new();
    for (dev, cap) in [
        ("198.51.100.10", "203.0.113.2"),
        ("198.51.100.10", "203.0.113.4"),
        ("198.51.100.10", "203.0.113.9"),
        ("198.51.100.10", "203.0.113.1"),
        ("2001:db8:51::10", "2001:db8:113::2"),
        ("2001:db8:51::10", "2001:db8:113::4"),
    ] {
        agg.extend(frames(router, line, dev, cap, 40000, 4000));
        agg.extend(frames(router, line, dev, cap, 40000, 5000));
    }

    // The demux's traffic is what the aggregator sends it.
    let dmx: Vec<Vec<u8>> = agg
        .iter()
        .filter_map(|f| {
            let mut pkt = [VecBuf::new(f)];
            let mut v = [Verdict::SlowPath];
            process(tarp_fuzz::aggregator(), &mut Context::new(2), 0, &mut pkt, &mut v);
            matches!(v[0], Verdict::Forward(_)).then(|| pkt[0].data().to_vec())
        })
        .collect();

    let mut rmx = Vec::new();
    for (src, dev) in [
        ("203.0.113.2", "198.51.100.10"),
        ("198.19.0.2", "198.51.100.10"),
        ("198.19.0.3", "198.51.100.10"),
        ("2001:db8:113::2", "2001:db8:51::10"),
        ("2001:db8:19::2", "2001:db8:51::10"),
        ("2001:db8:19::3", "2001:db8:51::10"),
    ] {
        rmx.extend(frames(app2, rmx_dc, src, dev, 4000, 40000));
        rmx.extend(frames(app2, rmx_dc, src, dev, 5000, 40000));
    }

    write("aggregator", &agg, true);
    write("demux", &dmx, true);
    write("remux", &rmx, true);
    let all: Vec<Vec<u8>> = agg.iter().chain(&dmx).chain(&rmx).cloned().collect();
    write("packet_views", &all, false);
    println!("seeds: {} aggregator, {} demux, {} remux", agg.len(), dmx.len(), rmx.len());
}
