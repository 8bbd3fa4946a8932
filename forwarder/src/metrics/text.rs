//! The Prometheus text exposition of one scrape.

use std::fmt::Write as _;

use super::PortTotals;
use crate::pipeline::DropReason;

/// What a device itself counts (from DPDK's port statistics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceCounters {
    /// Packets the device received.
    pub ipackets: u64,
    /// Packets the device sent.
    pub opackets: u64,
    /// Bytes received.
    pub ibytes: u64,
    /// Bytes sent.
    pub obytes: u64,
    /// Packets the device dropped because RX queues were full.
    pub imissed: u64,
    /// Receive errors.
    pub ierrors: u64,
    /// Transmit errors.
    pub oerrors: u64,
    /// Allocation failures of RX mbufs.
    pub rx_nombuf: u64,
    /// Link up.
    pub link_up: bool,
}

/// Everything one scrape shows.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// The forwarder's node id.
    pub node: String,
    /// Port names and roles.
    pub ports: Vec<(String, &'static str)>,
    /// Pipeline counters per port.
    pub totals: Vec<PortTotals>,
    /// Device counters per port.
    pub devices: Vec<DeviceCounters>,
    /// Generation of the snapshot in use.
    pub generation: u64,
    /// Circuit-table entries in the snapshot.
    pub entries: usize,
    /// Empty and busy polls over all workers.
    pub polls: (u64, u64),
    /// Neighbours resolved / next hops in the snapshot.
    pub neighbours: (usize, usize),
    /// WireGuard peers, those with a session, and handshake messages accepted.
    pub wg: (u64, u64, u64),
}

/// Prometheus text exposition of a scrape.
pub fn render(s: &Scrape) -> String {
    let mut o = String::with_capacity(4096);
    let node = &s.node;
    let family = |o: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family(
        &mut o,
        "tarp_port_rx_packets_total",
        "counter",
        "Packets received on a port and run through its role's pipeline.",
    );
    for ((name, role), t) in s.ports.iter().zip(&s.totals) {
        let _ = writeln!(
            o,
            "tarp_port_rx_packets_total{{node=\"{node}\",port=\"{name}\",role=\"{role}\"}} {}",
            t.rx
        );
    }
    family(
        &mut o,
        "tarp_port_tx_packets_total",
        "counter",
        "Packets a pipeline forwarded out of a port.",
    );
    for ((name, role), t) in s.ports.iter().zip(&s.totals) {
        let _ = writeln!(
            o,
            "tarp_port_tx_packets_total{{node=\"{node}\",port=\"{name}\",role=\"{role}\"}} {}",
            t.tx
        );
    }
    family(
        &mut o,
        "tarp_port_forwarded_packets_total",
        "counter",
        "Packets received on a port that a pipeline forwarded.",
    );
    for ((name, role), t) in s.ports.iter().zip(&s.totals) {
        let _ = writeln!(o, "tarp_port_forwarded_packets_total{{node=\"{node}\",port=\"{name}\",role=\"{role}\"}} {}", t.forwarded);
    }
    family(
        &mut o,
        "tarp_port_slow_path_packets_total",
        "counter",
        "Packets handed to the slow path (ARP, ND, ICMP to the port).",
    );
    for ((name, role), t) in s.ports.iter().zip(&s.totals) {
        let _ = writeln!(o, "tarp_port_slow_path_packets_total{{node=\"{node}\",port=\"{name}\",role=\"{role}\"}} {}", t.slow_path);
    }
    family(
        &mut o,
        "tarp_port_icmp_sent_total",
        "counter",
        "ICMP messages made from packets received on a port (too big, echo replies from capture addresses).",
    );
    for ((name, role), t) in s.ports.iter().zip(&s.totals) {
        let _ = writeln!(
            o,
            "tarp_port_icmp_sent_total{{node=\"{node}\",port=\"{name}\",role=\"{role}\"}} {}",
            t.icmp_sent
        );
    }
    family(
        &mut o,
        "tarp_port_fragmented_packets_total",
        "counter",
        "Packets received on a port and split into fragments to fit their tunnel.",
    );
    for ((name, role), t) in s.ports.iter().zip(&s.totals) {
        let _ = writeln!(o, "tarp_port_fragmented_packets_total{{node=\"{node}\",port=\"{name}\",role=\"{role}\"}} {}", t.fragmented);
    }
    family(
        &mut o,
        "tarp_port_drops_total",
        "counter",
        "Packets received on a port and dropped, by reason.",
    );
    for ((name, role), t) in s.ports.iter().zip(&s.totals) {
        for r in DropReason::ALL {
            let _ = writeln!(
                o,
                "tarp_port_drops_total{{node=\"{node}\",port=\"{name}\",role=\"{role}\",reason=\"{}\"}} {}",
                r.name(),
                t.drops[r as usize]
            );
        }
    }
    type Field = (&'static str, &'static str, fn(&DeviceCounters) -> u64);
    let dev: [Field; 8] = [
        (
            "tarp_device_rx_packets_total",
            "Packets the device received.",
            |d| d.ipackets,
        ),
        (
            "tarp_device_tx_packets_total",
            "Packets the device sent.",
            |d| d.opackets,
        ),
        (
            "tarp_device_rx_bytes_total",
            "Bytes the device received.",
            |d| d.ibytes,
        ),
        (
            "tarp_device_tx_bytes_total",
            "Bytes the device sent.",
            |d| d.obytes,
        ),
        (
            "tarp_device_rx_missed_total",
            "Packets the device dropped for lack of RX descriptors.",
            |d| d.imissed,
        ),
        ("tarp_device_rx_errors_total", "Receive errors.", |d| {
            d.ierrors
        }),
        ("tarp_device_tx_errors_total", "Transmit errors.", |d| {
            d.oerrors
        }),
        (
            "tarp_device_rx_nombuf_total",
            "RX mbuf allocation failures.",
            |d| d.rx_nombuf,
        ),
    ];
    for (metric, help, get) in dev {
        family(&mut o, metric, "counter", help);
        for ((name, _), d) in s.ports.iter().zip(&s.devices) {
            let _ = writeln!(o, "{metric}{{node=\"{node}\",port=\"{name}\"}} {}", get(d));
        }
    }
    family(
        &mut o,
        "tarp_port_link_up",
        "gauge",
        "1 if the port's link is up.",
    );
    for ((name, _), d) in s.ports.iter().zip(&s.devices) {
        let _ = writeln!(
            o,
            "tarp_port_link_up{{node=\"{node}\",port=\"{name}\"}} {}",
            d.link_up as u8
        );
    }
    family(
        &mut o,
        "tarp_snapshot_generation",
        "gauge",
        "Generation of the tables in use.",
    );
    let _ = writeln!(
        o,
        "tarp_snapshot_generation{{node=\"{node}\"}} {}",
        s.generation
    );
    family(
        &mut o,
        "tarp_snapshot_entries",
        "gauge",
        "Circuit-table entries in the snapshot in use.",
    );
    let _ = writeln!(o, "tarp_snapshot_entries{{node=\"{node}\"}} {}", s.entries);
    family(
        &mut o,
        "tarp_worker_polls_total",
        "counter",
        "Worker polls, by outcome.",
    );
    let _ = writeln!(
        o,
        "tarp_worker_polls_total{{node=\"{node}\",outcome=\"empty\"}} {}",
        s.polls.0
    );
    let _ = writeln!(
        o,
        "tarp_worker_polls_total{{node=\"{node}\",outcome=\"busy\"}} {}",
        s.polls.1
    );
    family(
        &mut o,
        "tarp_wg_peers",
        "gauge",
        "WireGuard peers, by session state.",
    );
    let _ = writeln!(
        o,
        "tarp_wg_peers{{node=\"{node}\",state=\"established\"}} {}\ntarp_wg_peers{{node=\"{node}\",state=\"no_session\"}} {}",
        s.wg.1,
        s.wg.0.saturating_sub(s.wg.1)
    );
    family(
        &mut o,
        "tarp_wg_handshake_messages_total",
        "counter",
        "WireGuard handshake messages (initiations, responses) accepted.",
    );
    let _ = writeln!(
        o,
        "tarp_wg_handshake_messages_total{{node=\"{node}\"}} {}",
        s.wg.2
    );
    family(
        &mut o,
        "tarp_next_hops",
        "gauge",
        "Next hops in the snapshot, by resolution state.",
    );
    let _ = writeln!(
        o,
        "tarp_next_hops{{node=\"{node}\",state=\"resolved\"}} {}",
        s.neighbours.0
    );
    let _ = writeln!(
        o,
        "tarp_next_hops{{node=\"{node}\",state=\"unresolved\"}} {}",
        s.neighbours.1 - s.neighbours.0
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{bump, totals, WorkerStats};

    #[test]
    fn sums_workers_and_renders() {
        let a = WorkerStats::new(2);
        let b = WorkerStats::new(2);
        bump(&a.ports[0].rx, 3);
        bump(&b.ports[0].rx, 4);
        bump(&b.ports[1].tx, 5);
        bump(&a.ports[0].drops[DropReason::NoCircuit as usize], 2);
        let t = totals(&[&a, &b], 2);
        assert_eq!(t[0].rx, 7);
        assert_eq!(t[1].tx, 5);
        assert_eq!(t[0].drops[DropReason::NoCircuit as usize], 2);
        let s = Scrape {
            node: "pop1".into(),
            ports: vec![
                ("line0".into(), "aggregator"),
                ("uplink".into(), "aggregator"),
            ],
            totals: t,
            devices: vec![DeviceCounters::default(); 2],
            generation: 9,
            entries: 1,
            polls: (1, 2),
            wg: (2, 1, 5),
            neighbours: (1, 2),
        };
        let text = render(&s);
        assert!(text.contains(
            "tarp_port_rx_packets_total{node=\"pop1\",port=\"line0\",role=\"aggregator\"} 7\n"
        ));
        assert!(text.contains("tarp_port_drops_total{node=\"pop1\",port=\"line0\",role=\"aggregator\",reason=\"no_circuit\"} 2\n"));
        assert!(text.contains("tarp_snapshot_generation{node=\"pop1\"} 9\n"));
        assert!(text.contains("tarp_next_hops{node=\"pop1\",state=\"unresolved\"} 1\n"));
        assert!(text.contains("tarp_wg_peers{node=\"pop1\",state=\"no_session\"} 1\n"));
        assert!(text.contains("tarp_wg_handshake_messages_total{node=\"pop1\"} 5\n"));
    }
}
