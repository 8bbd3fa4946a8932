//! What a scrape reads, and the families it makes of it.
//!
//! The workers' counters are summed here, at scrape time ([`MetricsSource::families`]
//! is the body of the custom collector); the control thread writes device counters,
//! table timings and worker liveness ([`MetricsSource::sample`]) and nothing else writes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::proto::MetricFamily;

use super::expo::Family;
use super::latency::{buckets, Merger, Timing, BURST_BUCKETS, CONTROL_BUCKETS};
use super::{DeviceCounters, PortTotals, WorkerStats};
use crate::metrics::{CircuitCounters, TO_APP, TO_DEVICE};
use crate::pipeline::DropReason;
use crate::tables::counted::{circuits_of, label as counted_label};
use crate::tables::{CircuitSlots, Snapshot, SnapshotHandle};

/// A worker as the metrics see it.
pub struct WorkerView {
    /// The lcore it runs on (its `worker` label).
    pub lcore: u32,
    /// Its counters.
    pub stats: Arc<WorkerStats>,
    /// What it hands over of its burst times.
    pub latency: Merger,
    /// Its counters of the counted circuits (`circuit_metrics`; empty when off).
    pub circuits: CircuitCounters,
}

/// The tables' history: swaps, refusals and how long each step took.
#[derive(Default)]
pub struct TableStats {
    /// Snapshots swapped in since the start.
    pub swaps: AtomicU64,
    /// Table sets refused (the old snapshot kept forwarding).
    pub refused: AtomicU64,
    /// When the last swap happened.
    pub last_swap: Mutex<Option<Instant>>,
    /// Building a snapshot from rules.
    pub build: Timing,
    /// From the pointer swap until every worker's burst in flight has ended (the old
    /// snapshot is no longer forwarding anything).
    pub swap: Timing,
    /// From the keeper's table set arriving at the keeper link to the new snapshot
    /// forwarding on every worker.
    pub push_to_forwarding: Timing,
}

/// A worker's liveness and load, as the control thread last sampled them.
#[derive(Debug, Clone, Copy)]
struct Liveness {
    polls: u64,
    /// When `polls` last moved.
    moved: Instant,
    window_start: Instant,
    busy_at_start: u64,
    busy_ratio: f64,
}

/// A worker that has not polled for this long is stalled (not ready).
pub const STALLED_AFTER: Duration = Duration::from_secs(1);
/// The busy ratio is measured over windows this long.
const BUSY_WINDOW: Duration = Duration::from_secs(1);

/// Everything a scrape reads; shared by the control thread and the endpoint.
pub struct MetricsSource {
    /// The forwarder's node id.
    pub node: String,
    /// Port names and roles.
    pub ports: Vec<(String, &'static str)>,
    /// The workers.
    pub workers: Vec<WorkerView>,
    /// Device counters per port, as the control thread last read them.
    pub devices: Mutex<Vec<DeviceCounters>>,
    /// The published snapshot.
    pub snapshots: Arc<SnapshotHandle>,
    /// Swaps and timings.
    pub tables: TableStats,
    /// Whether tables come from a keeper (then ready needs one of its snapshots).
    pub keeper: bool,
    /// The control thread is running (cleared when it stops).
    pub alive: AtomicBool,
    liveness: Mutex<Vec<Liveness>>,
    /// The counted circuits' slots, and what each slot's counters held when its circuit
    /// took it (packets and bytes per direction: subtracted when exported).
    circuits: Mutex<(CircuitSlots, Vec<[u64; 4]>)>,
}

fn polls(w: &WorkerStats) -> u64 {
    w.busy_polls.load(Ordering::Relaxed) + w.empty_polls.load(Ordering::Relaxed)
}

impl MetricsSource {
    /// A source over these workers and ports.
    pub fn new(
        node: String,
        ports: Vec<(String, &'static str)>,
        workers: Vec<WorkerView>,
        snapshots: Arc<SnapshotHandle>,
        keeper: bool,
    ) -> MetricsSource {
        let now = Instant::now();
        let liveness = workers
            .iter()
            .map(|w| Liveness {
                polls: polls(&w.stats),
                moved: now,
                window_start: now,
                busy_at_start: w.stats.busy_ns.load(Ordering::Relaxed),
                busy_ratio: 0.0,
            })
            .collect();
        MetricsSource {
            devices: Mutex::new(vec![DeviceCounters::default(); ports.len()]),
            node,
            ports,
            workers,
            snapshots,
            tables: TableStats::default(),
            keeper,
            alive: AtomicBool::new(true),
            liveness: Mutex::new(liveness),
            circuits: Mutex::new((CircuitSlots::new(0), Vec::new())),
        }
    }

    /// Counts circuits one by one in `slots` (`circuit_metrics`; already assigned to the
    /// first snapshot, while every counter is 0); the workers' counter arrays have as many
    /// slots.
    pub fn count_circuits(&self, slots: CircuitSlots) {
        if let Ok(mut c) = self.circuits.lock() {
            let n = slots.len();
            *c = (slots, vec![[0; 4]; n]);
        }
    }

    /// What every worker's counters hold for `slot`: packets and bytes per direction.
    fn circuit_sums(&self, slot: usize) -> [u64; 4] {
        let mut t = [0u64; 4];
        for w in &self.workers {
            if let Some(c) = w.circuits.get(slot) {
                for d in [TO_APP, TO_DEVICE] {
                    t[d] += c.packets[d].load(Ordering::Relaxed);
                    t[2 + d] += c.bytes[d].load(Ordering::Relaxed);
                }
            }
        }
        t
    }

    /// Gives `snap` the slots of the circuits it counts (off: nothing). The control
    /// thread calls it on every snapshot before publishing it.
    pub fn assign_circuits(&self, snap: &mut Snapshot) {
        let Ok(mut guard) = self.circuits.lock() else {
            return;
        };
        let (slots, bases) = &mut *guard;
        if slots.is_empty() {
            return;
        }
        let (counted, fresh) = slots.assign(&circuits_of(snap));
        for s in fresh {
            // Its counters may hold a previous circuit's counts: start from them.
            bases[s as usize] = self.circuit_sums(s as usize);
        }
        snap.counted = counted;
    }

    /// The control thread's tick: worker liveness and busy ratios, and the workers'
    /// burst times merged.
    pub fn sample(&self, now: Instant) {
        let Ok(mut live) = self.liveness.lock() else {
            return;
        };
        for (w, l) in self.workers.iter().zip(live.iter_mut()) {
            let p = polls(&w.stats);
            if p != l.polls {
                l.polls = p;
                l.moved = now;
            }
            let span = now.saturating_duration_since(l.window_start);
            if span >= BUSY_WINDOW {
                let busy = w.stats.busy_ns.load(Ordering::Relaxed);
                l.busy_ratio = ((busy - l.busy_at_start) as f64 / span.as_nanos() as f64).min(1.0);
                l.busy_at_start = busy;
                l.window_start = now;
            }
            w.latency.merge();
        }
    }

    /// Records a swap now.
    pub fn swapped(&self, now: Instant) {
        self.tables.swaps.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut t) = self.tables.last_swap.lock() {
            *t = Some(now);
        }
    }

    /// The workers' poll counts, to tell when a swap has reached all of them.
    pub fn poll_counts(&self) -> Vec<u64> {
        self.workers.iter().map(|w| polls(&w.stats)).collect()
    }

    /// Why the forwarder is not ready (empty: ready): a port down, no snapshot from the
    /// keeper yet, a worker that stopped polling, the control thread gone.
    pub fn not_ready(&self, now: Instant) -> Vec<String> {
        let mut why = Vec::new();
        if !self.alive.load(Ordering::Relaxed) {
            why.push("the control thread has stopped".to_string());
        }
        if let Ok(d) = self.devices.lock() {
            for ((name, _), d) in self.ports.iter().zip(d.iter()) {
                if !d.link_up {
                    why.push(format!("port {name}: link down"));
                }
            }
        }
        if self.keeper && self.tables.swaps.load(Ordering::Relaxed) == 0 {
            why.push("no tables from the keeper yet".to_string());
        }
        if let Ok(live) = self.liveness.lock() {
            for (w, l) in self.workers.iter().zip(live.iter()) {
                // Read the count now too: the control thread samples every 100 ms.
                let stalled = polls(&w.stats) == l.polls
                    && now.saturating_duration_since(l.moved) > STALLED_AFTER;
                if stalled {
                    why.push(format!(
                        "worker {}: no poll for {:.1} s",
                        w.lcore,
                        now.saturating_duration_since(l.moved).as_secs_f64()
                    ));
                }
            }
        }
        why
    }

    /// Every family a scrape shows.
    pub fn families(&self) -> Vec<MetricFamily> {
        let now = Instant::now();
        let node = self.node.as_str();
        let mut out = Vec::new();

        // Ports: every worker's counters summed.
        let mut per_port = vec![PortTotals::default(); self.ports.len()];
        for w in &self.workers {
            for (t, c) in per_port.iter_mut().zip(w.stats.ports.iter()) {
                t.add(c);
            }
        }
        type PortField = (&'static str, &'static str, fn(&PortTotals) -> u64);
        let port_fields: [PortField; 9] = [
            ("tarp_port_rx_packets_total", "Packets received on a port and run through its role's pipeline.", |t| t.rx),
            ("tarp_port_rx_bytes_total", "Bytes of the packets received on a port.", |t| t.rx_bytes),
            ("tarp_port_tx_packets_total", "Packets a port's device accepted for sending (not those dropped as tx_full).", |t| t.tx),
            ("tarp_port_tx_bytes_total", "Bytes of the packets a port's device accepted.", |t| t.tx_bytes),
            ("tarp_port_forwarded_packets_total", "Packets received on a port that a pipeline forwarded.", |t| t.forwarded),
            ("tarp_port_slow_path_packets_total", "Packets received on a port and handed to the slow path (ARP, ND, ICMP to the port).", |t| t.slow_path),
            ("tarp_port_icmp_sent_total", "ICMP messages made from packets received on a port (too big, echo replies from capture addresses).", |t| t.icmp_sent),
            ("tarp_port_fragmented_packets_total", "Packets received on a port and split into fragments to fit their tunnel.", |t| t.fragmented),
            ("tarp_port_control_tx_packets_total", "Frames the forwarder itself sent on a port (ARP and ND, echo replies from the port's addresses, WireGuard handshakes and keepalives); part of tx.", |t| t.control_tx),
        ];
        for (name, help, get) in port_fields {
            let mut f = Family::counter(name, help);
            for ((port, role), t) in self.ports.iter().zip(&per_port) {
                f.add(
                    &[("node", node), ("port", port), ("role", role)],
                    get(t) as f64,
                );
            }
            out.push(f.done());
        }
        let mut f = Family::counter(
            "tarp_port_drops_total",
            "Packets received on a port and dropped, by reason.",
        );
        for ((port, role), t) in self.ports.iter().zip(&per_port) {
            for r in DropReason::ALL {
                f.add(
                    &[
                        ("node", node),
                        ("port", port),
                        ("role", role),
                        ("reason", r.name()),
                    ],
                    t.drops[r as usize] as f64,
                );
            }
        }
        out.push(f.done());

        // Devices: what DPDK's port statistics say.
        let devices = self.devices.lock().map(|d| d.clone()).unwrap_or_default();
        type DevField = (&'static str, &'static str, fn(&DeviceCounters) -> u64);
        let dev_fields: [DevField; 8] = [
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
                "Packets the device dropped for lack of RX descriptors (imissed).",
                |d| d.imissed,
            ),
            (
                "tarp_device_rx_errors_total",
                "Receive errors (ierrors).",
                |d| d.ierrors,
            ),
            (
                "tarp_device_tx_errors_total",
                "Transmit errors (oerrors).",
                |d| d.oerrors,
            ),
            (
                "tarp_device_rx_nombuf_total",
                "RX mbuf allocation failures (rx_nombuf).",
                |d| d.rx_nombuf,
            ),
        ];
        for (name, help, get) in dev_fields {
            let mut f = Family::counter(name, help);
            for ((port, _), d) in self.ports.iter().zip(&devices) {
                f.add(&[("node", node), ("port", port)], get(d) as f64);
            }
            out.push(f.done());
        }
        let mut f = Family::gauge("tarp_port_link_up", "1 if the port's link is up.");
        for ((port, _), d) in self.ports.iter().zip(&devices) {
            f.add(&[("node", node), ("port", port)], d.link_up as u8 as f64);
        }
        out.push(f.done());

        // Workers, by role: their ports' counters summed per role.
        let mut roles: Vec<&'static str> = self.ports.iter().map(|p| p.1).collect();
        roles.sort_unstable();
        roles.dedup();
        let mut fwd = Family::counter(
            "tarp_worker_forwarded_packets_total",
            "Packets a worker forwarded, by the role of the port they came in on.",
        );
        let mut slow = Family::counter(
            "tarp_worker_slow_path_packets_total",
            "Packets a worker handed to the slow path, by role.",
        );
        let mut drops = Family::counter(
            "tarp_worker_drops_total",
            "Packets a worker dropped, by role and reason.",
        );
        let mut polls_f = Family::counter("tarp_worker_polls_total", "Worker polls, by outcome.");
        let mut busy_s = Family::counter(
            "tarp_worker_busy_seconds_total",
            "Time a worker spent on bursts (from the RX call to the last packet handed on).",
        );
        let mut ratio = Family::gauge(
            "tarp_worker_busy_ratio",
            "Share of the last second a worker spent on bursts (0 to 1).",
        );
        let mut hist = Family::histogram(
            "tarp_worker_burst_duration_seconds",
            "Time a worker spent on one burst (RX, pipeline, hand to TX), recorded per burst.",
        );
        let live = self.liveness.lock().map(|l| l.clone()).unwrap_or_default();
        for (i, w) in self.workers.iter().enumerate() {
            let lcore = w.lcore.to_string();
            let wl = lcore.as_str();
            for role in &roles {
                let mut t = PortTotals::default();
                for ((_, r), c) in self.ports.iter().zip(w.stats.ports.iter()) {
                    if r == role {
                        t.add(c);
                    }
                }
                let labels = [("node", node), ("worker", wl), ("role", *role)];
                fwd.add(&labels, t.forwarded as f64);
                slow.add(&labels, t.slow_path as f64);
                for r in DropReason::ALL {
                    drops.add(
                        &[
                            ("node", node),
                            ("worker", wl),
                            ("role", role),
                            ("reason", r.name()),
                        ],
                        t.drops[r as usize] as f64,
                    );
                }
            }
            let s = &w.stats;
            polls_f.add(
                &[("node", node), ("worker", wl), ("outcome", "empty")],
                s.empty_polls.load(Ordering::Relaxed) as f64,
            );
            polls_f.add(
                &[("node", node), ("worker", wl), ("outcome", "busy")],
                s.busy_polls.load(Ordering::Relaxed) as f64,
            );
            busy_s.add(
                &[("node", node), ("worker", wl)],
                s.busy_ns.load(Ordering::Relaxed) as f64 / 1e9,
            );
            ratio.add(
                &[("node", node), ("worker", wl)],
                live.get(i).map(|l| l.busy_ratio).unwrap_or(0.0),
            );
            let (b, count, sum) = buckets(&w.latency.total(), BURST_BUCKETS);
            hist.add_histogram(&[("node", node), ("worker", wl)], &b, count, sum);
        }
        out.extend([
            fwd.done(),
            slow.done(),
            drops.done(),
            polls_f.done(),
            busy_s.done(),
            ratio.done(),
            hist.done(),
        ]);

        // Tables.
        let snap = self.snapshots.load();
        let mut f = Family::gauge(
            "tarp_snapshot_generation",
            "Generation of the tables in use.",
        );
        f.add(&[("node", node)], snap.generation() as f64);
        out.push(f.done());
        let mut f = Family::gauge(
            "tarp_snapshot_entries",
            "Circuit-table entries in the snapshot in use (all tables).",
        );
        f.add(&[("node", node)], snap.entries() as f64);
        out.push(f.done());
        let mut f = Family::gauge(
            "tarp_table_entries",
            "Entries in each table of the snapshot in use.",
        );
        for (table, n) in snap.table_entries() {
            f.add(&[("node", node), ("table", table.as_str())], n as f64);
        }
        out.push(f.done());
        let mut f = Family::gauge(
            "tarp_table_memory_bytes",
            "Bytes of lookup-table memory in the snapshot in use.",
        );
        f.add(&[("node", node)], snap.memory_bytes() as f64);
        out.push(f.done());
        let resolved = snap.next_hops.iter().filter(|n| n.mac().is_some()).count();
        let mut f = Family::gauge(
            "tarp_next_hops",
            "Next hops in the snapshot, by resolution state.",
        );
        f.add(&[("node", node), ("state", "resolved")], resolved as f64);
        f.add(
            &[("node", node), ("state", "unresolved")],
            (snap.next_hops.len() - resolved) as f64,
        );
        out.push(f.done());
        drop(snap);
        let t = &self.tables;
        let mut f = Family::counter("tarp_snapshot_swaps_total", "Snapshots swapped in.");
        f.add(&[("node", node)], t.swaps.load(Ordering::Relaxed) as f64);
        out.push(f.done());
        let mut f = Family::counter(
            "tarp_snapshot_refused_total",
            "Table sets refused (the previous snapshot kept forwarding).",
        );
        f.add(&[("node", node)], t.refused.load(Ordering::Relaxed) as f64);
        out.push(f.done());
        if let Some(at) = t.last_swap.lock().ok().and_then(|t| *t) {
            let mut f = Family::gauge(
                "tarp_snapshot_last_swap_age_seconds",
                "Seconds since the last snapshot swap.",
            );
            f.add(
                &[("node", node)],
                now.saturating_duration_since(at).as_secs_f64(),
            );
            out.push(f.done());
        }
        let timings: [(&str, &str, &Timing); 3] = [
            (
                "tarp_snapshot_build_duration_seconds",
                "Time to build a snapshot from a table set.",
                &t.build,
            ),
            (
                "tarp_snapshot_swap_duration_seconds",
                "From the pointer swap until every worker's burst in flight ended.",
                &t.swap,
            ),
            (
                "tarp_keeper_push_to_forwarding_seconds",
                "From a keeper table set arriving to the new snapshot forwarding on every worker.",
                &t.push_to_forwarding,
            ),
        ];
        for (name, help, timing) in timings {
            let mut f = Family::histogram(name, help);
            let (b, count, sum) = buckets(&timing.total(), CONTROL_BUCKETS);
            f.add_histogram(&[("node", node)], &b, count, sum);
            out.push(f.done());
        }

        // WireGuard.
        let wg = self.workers.iter().fold((0, 0, 0), |(p, e, h), w| {
            (
                p + w.stats.wg_peers.load(Ordering::Relaxed),
                e + w.stats.wg_established.load(Ordering::Relaxed),
                h + w.stats.wg_handshakes.load(Ordering::Relaxed),
            )
        });
        let mut f = Family::gauge("tarp_wg_peers", "WireGuard peers, by session state.");
        f.add(&[("node", node), ("state", "established")], wg.1 as f64);
        f.add(
            &[("node", node), ("state", "no_session")],
            wg.0.saturating_sub(wg.1) as f64,
        );
        out.push(f.done());
        let mut f = Family::counter(
            "tarp_wg_handshake_messages_total",
            "WireGuard handshake messages (initiations, responses) accepted.",
        );
        f.add(&[("node", node)], wg.2 as f64);
        out.push(f.done());

        // Circuits counted one by one (`circuit_metrics`).
        if let Ok(guard) = self.circuits.lock() {
            let (slots, bases) = &*guard;
            if !slots.is_empty() {
                out.extend(self.circuit_families(slots, bases));
            }
        }

        // Readiness, for dashboards (the same answer as /readyz).
        let mut f = Family::gauge("tarp_ready", "1 if the forwarder is ready (see /readyz).");
        f.add(
            &[("node", node)],
            self.not_ready(now).is_empty() as u8 as f64,
        );
        out.push(f.done());
        out
    }
}

impl MetricsSource {
    fn circuit_families(&self, slots: &CircuitSlots, bases: &[[u64; 4]]) -> Vec<MetricFamily> {
        let node = self.node.as_str();
        // A direction is shown where this node has the role that counts it.
        let dirs: Vec<(usize, &str)> = [
            (TO_APP, "demux", "to_app"),
            (TO_DEVICE, "remux", "to_device"),
        ]
        .into_iter()
        .filter(|(_, role, _)| self.ports.iter().any(|p| p.1 == *role))
        .map(|(d, _, name)| (d, name))
        .collect();
        let mut packets = Family::counter(
            "tarp_circuit_packets_total",
            "Packets of a counted circuit (circuit_metrics), by direction: to_app at a demux, to_device at a remux.",
        );
        let mut bytes = Family::counter(
            "tarp_circuit_bytes_total",
            "IP bytes of a counted circuit, by direction.",
        );
        let mut counted = 0;
        for slot in 0..slots.len() {
            let Some(key) = slots.key(slot) else {
                continue;
            };
            counted += 1;
            let label = counted_label(key);
            let now = self.circuit_sums(slot);
            let base = bases.get(slot).copied().unwrap_or_default();
            for (d, name) in &dirs {
                let labels = [
                    ("node", node),
                    ("circuit", label.as_str()),
                    ("direction", *name),
                ];
                packets.add(&labels, now[*d].saturating_sub(base[*d]) as f64);
                bytes.add(&labels, now[2 + d].saturating_sub(base[2 + d]) as f64);
            }
        }
        let mut n = Family::gauge(
            "tarp_circuits_counted",
            "Circuits counted one by one, by whether they have a slot (circuit_metrics bounds them).",
        );
        n.add(&[("node", node), ("state", "counted")], counted as f64);
        n.add(
            &[("node", node), ("state", "uncounted")],
            slots.uncounted as f64,
        );
        vec![packets.done(), bytes.done(), n.done()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{bump, pair, registry, render};
    use crate::tables::{PortInfo, Role, Snapshot};
    use tarp_api::MacAddr;

    fn source(workers: usize, keeper: bool) -> (MetricsSource, Vec<super::super::Recorder>) {
        let infos = [
            PortInfo::new(
                "line0",
                Role::Aggregator,
                MacAddr([2, 0, 0, 0, 0, 1]),
                vec![],
            ),
            PortInfo::new(
                "uplink",
                Role::Aggregator,
                MacAddr([2, 0, 0, 0, 0, 2]),
                vec![],
            ),
        ];
        let mut views = Vec::new();
        let mut recorders = Vec::new();
        for w in 0..workers {
            let (r, m) = pair();
            recorders.push(r);
            views.push(WorkerView {
                lcore: w as u32 + 1,
                stats: Arc::new(WorkerStats::new(2)),
                latency: m,
                circuits: crate::metrics::circuit_counters(0),
            });
        }
        let snaps = Arc::new(SnapshotHandle::new(Snapshot::empty(&infos)));
        let ports = vec![
            ("line0".into(), "aggregator"),
            ("uplink".into(), "aggregator"),
        ];
        (
            MetricsSource::new("pop1".into(), ports, views, snaps, keeper),
            recorders,
        )
    }

    #[test]
    fn sums_workers_at_scrape_time_and_renders_text() {
        let (s, mut rec) = source(2, false);
        let (a, b) = (&s.workers[0].stats, &s.workers[1].stats);
        bump(&a.ports[0].rx, 3);
        bump(&b.ports[0].rx, 4);
        bump(&b.ports[0].rx_bytes, 256);
        b.ports[1].tx.store(5, Ordering::Relaxed);
        bump(&a.ports[0].drops[DropReason::NoCircuit as usize], 2);
        bump(&b.ports[0].forwarded, 4);
        rec[0].record(1_500);
        rec[0].record(30_000);
        rec[0].hand_over();
        let text = render(&registry(Arc::new(s)).unwrap());
        for want in [
            "tarp_port_rx_packets_total{node=\"pop1\",port=\"line0\",role=\"aggregator\"} 7\n",
            "tarp_port_rx_bytes_total{node=\"pop1\",port=\"line0\",role=\"aggregator\"} 256\n",
            "tarp_port_tx_packets_total{node=\"pop1\",port=\"uplink\",role=\"aggregator\"} 5\n",
            "tarp_port_drops_total{node=\"pop1\",port=\"line0\",role=\"aggregator\",reason=\"no_circuit\"} 2\n",
            "tarp_worker_drops_total{node=\"pop1\",worker=\"1\",role=\"aggregator\",reason=\"no_circuit\"} 2\n",
            "tarp_worker_forwarded_packets_total{node=\"pop1\",worker=\"2\",role=\"aggregator\"} 4\n",
            "tarp_worker_burst_duration_seconds_bucket{node=\"pop1\",worker=\"1\",le=\"0.000002\"} 1\n",
            "tarp_worker_burst_duration_seconds_bucket{node=\"pop1\",worker=\"1\",le=\"0.00005\"} 2\n",
            "tarp_worker_burst_duration_seconds_count{node=\"pop1\",worker=\"1\"} 2\n",
            "tarp_worker_burst_duration_seconds_count{node=\"pop1\",worker=\"2\"} 0\n",
            "# TYPE tarp_worker_burst_duration_seconds histogram\n",
            "tarp_snapshot_generation{node=\"pop1\"} 0\n",
            "tarp_table_entries{node=\"pop1\",table=\"aggregator_v4\"} 0\n",
            "# TYPE process_resident_memory_bytes gauge\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        // Nothing swapped yet: no age.
        assert!(!text.contains("tarp_snapshot_last_swap_age_seconds"));
    }

    #[test]
    fn label_values_are_escaped() {
        let (mut s, _) = source(1, false);
        s.node = "a\"b\\c\nd".into();
        let text = render(&registry(Arc::new(s)).unwrap());
        assert!(
            text.contains("tarp_snapshot_generation{node=\"a\\\"b\\\\c\\nd\"} 0\n"),
            "{text}"
        );
    }

    #[test]
    fn ready_needs_links_tables_and_polling_workers() {
        let (s, _) = source(1, true);
        let t0 = Instant::now();
        let why = s.not_ready(t0);
        assert!(why.iter().any(|w| w == "port line0: link down"), "{why:?}");
        assert!(
            why.iter().any(|w| w == "no tables from the keeper yet"),
            "{why:?}"
        );
        if let Ok(mut d) = s.devices.lock() {
            d.iter_mut().for_each(|d| d.link_up = true);
        }
        s.swapped(t0);
        bump(&s.workers[0].stats.empty_polls, 1);
        s.sample(t0);
        assert_eq!(s.not_ready(t0), Vec::<String>::new());
        // The worker stops polling: not ready once STALLED_AFTER has passed.
        let later = t0 + STALLED_AFTER + Duration::from_millis(100);
        s.sample(later);
        let why = s.not_ready(later);
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(why[0].starts_with("worker 1: no poll for"), "{why:?}");
        // It polls again.
        bump(&s.workers[0].stats.busy_polls, 1);
        assert_eq!(s.not_ready(later), Vec::<String>::new());
    }

    #[test]
    fn busy_ratio_over_a_window() {
        let (s, _) = source(1, false);
        let t0 = Instant::now();
        s.sample(t0);
        bump(&s.workers[0].stats.busy_ns, 250_000_000);
        bump(&s.workers[0].stats.busy_polls, 1);
        s.sample(t0 + Duration::from_secs(2));
        let text = render(&registry(Arc::new(s)).unwrap());
        // The first window started at construction, before t0: a little under 0.125.
        let line = text
            .lines()
            .find(|l| l.starts_with("tarp_worker_busy_ratio{"))
            .unwrap();
        let v: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(v > 0.1 && v <= 0.125, "{line}");
        assert!(text.contains("tarp_worker_busy_seconds_total{node=\"pop1\",worker=\"1\"} 0.25\n"));
    }
}
