//! Per-worker counters, written without shared writes and summed when scraped.
//!
//! Each worker owns its [`WorkerStats`] (cache-line aligned) and bumps its counters with
//! a plain load and store — no locked instruction, no line shared with another writer.
//! A scrape reads every worker's counters and adds them up.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::pipeline::DropReason;

/// Adds `n` to a counter only this thread writes.
#[inline(always)]
pub fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// One worker's counters for one port.
#[derive(Debug, Default)]
pub struct PortCounters {
    /// Packets received on the port.
    pub rx: AtomicU64,
    /// Their bytes.
    pub rx_bytes: AtomicU64,
    /// Packets the port's TX queue accepted (stored from the worker's TX buffer once a
    /// poll round: what the device took, not what was offered).
    pub tx: AtomicU64,
    /// Their bytes.
    pub tx_bytes: AtomicU64,
    /// Packets received on the port and forwarded (out of any port).
    pub forwarded: AtomicU64,
    /// Packets received on the port and handed to the slow path.
    pub slow_path: AtomicU64,
    /// ICMP messages the pipelines made from packets received on the port (too big,
    /// echo replies from capture addresses).
    pub icmp_sent: AtomicU64,
    /// Packets received on the port that were split into fragments to fit a tunnel.
    pub fragmented: AtomicU64,
    /// Frames the forwarder itself sent on the port: the control thread's (ARP and ND,
    /// echo replies from the port's addresses) and WireGuard's handshakes and keepalives.
    /// Part of `tx`.
    pub control_tx: AtomicU64,
    /// Packets received on the port and dropped, by reason.
    pub drops: [AtomicU64; DropReason::COUNT],
}

/// One worker's counters.
#[derive(Debug)]
#[repr(align(64))]
pub struct WorkerStats {
    /// Per port, indexed by [`crate::tables::PortId`].
    pub ports: Box<[PortCounters]>,
    /// Polls that returned packets.
    pub busy_polls: AtomicU64,
    /// Polls that returned nothing.
    pub empty_polls: AtomicU64,
    /// Nanoseconds spent on bursts (from the RX call to the last packet handed on).
    pub busy_ns: AtomicU64,
    /// WireGuard peers this worker holds (a gauge, set at each tick).
    pub wg_peers: AtomicU64,
    /// Of them, with a session (a gauge).
    pub wg_established: AtomicU64,
    /// WireGuard handshake messages accepted (a counter).
    pub wg_handshakes: AtomicU64,
}

impl WorkerStats {
    /// Counters for `ports` ports.
    pub fn new(ports: usize) -> WorkerStats {
        WorkerStats {
            ports: (0..ports).map(|_| PortCounters::default()).collect(),
            busy_polls: AtomicU64::new(0),
            empty_polls: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            wg_peers: AtomicU64::new(0),
            wg_established: AtomicU64::new(0),
            wg_handshakes: AtomicU64::new(0),
        }
    }
}

/// One worker's counters of one counted circuit (`circuit_metrics`): packets and IP
/// bytes, per direction ([`TO_APP`] at a demux, [`TO_DEVICE`] at a remux).
#[derive(Debug, Default)]
#[repr(align(32))]
pub struct CircuitCounter {
    /// Packets, by direction.
    pub packets: [AtomicU64; 2],
    /// Their IP bytes (header and payload), by direction.
    pub bytes: [AtomicU64; 2],
}

/// Towards the application (what a demux counts).
pub const TO_APP: usize = 0;
/// Towards the device (what a remux counts).
pub const TO_DEVICE: usize = 1;

/// A worker's counters of the counted circuits, indexed by slot.
pub type CircuitCounters = std::sync::Arc<[CircuitCounter]>;

/// Counters for `slots` circuits.
pub fn circuit_counters(slots: usize) -> CircuitCounters {
    (0..slots).map(|_| CircuitCounter::default()).collect()
}

/// Sums of every worker's counters for one port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortTotals {
    /// Received.
    pub rx: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Sent (accepted by the device).
    pub tx: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Received here and forwarded.
    pub forwarded: u64,
    /// To the slow path.
    pub slow_path: u64,
    /// ICMP made from what was received here.
    pub icmp_sent: u64,
    /// Split into fragments.
    pub fragmented: u64,
    /// The forwarder's own frames sent.
    pub control_tx: u64,
    /// Dropped, by reason.
    pub drops: [u64; DropReason::COUNT],
}

impl PortTotals {
    /// Adds one worker's counters for the port.
    pub fn add(&mut self, c: &PortCounters) {
        self.rx += c.rx.load(Ordering::Relaxed);
        self.rx_bytes += c.rx_bytes.load(Ordering::Relaxed);
        self.tx += c.tx.load(Ordering::Relaxed);
        self.tx_bytes += c.tx_bytes.load(Ordering::Relaxed);
        self.forwarded += c.forwarded.load(Ordering::Relaxed);
        self.slow_path += c.slow_path.load(Ordering::Relaxed);
        self.icmp_sent += c.icmp_sent.load(Ordering::Relaxed);
        self.fragmented += c.fragmented.load(Ordering::Relaxed);
        self.control_tx += c.control_tx.load(Ordering::Relaxed);
        for (d, s) in self.drops.iter_mut().zip(c.drops.iter()) {
            *d += s.load(Ordering::Relaxed);
        }
    }
}

/// Adds up the workers' counters per port.
pub fn totals(workers: &[&WorkerStats], ports: usize) -> Vec<PortTotals> {
    let mut out = vec![PortTotals::default(); ports];
    for w in workers {
        for (t, c) in out.iter_mut().zip(w.ports.iter()) {
            t.add(c);
        }
    }
    out
}

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
