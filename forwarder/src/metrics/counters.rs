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
    /// Packets handed to the port's TX queue.
    pub tx: AtomicU64,
    /// Packets received on the port and forwarded (out of any port).
    pub forwarded: AtomicU64,
    /// Packets received on the port and handed to the slow path.
    pub slow_path: AtomicU64,
    /// ICMP messages the pipelines made from packets received on the port (too big,
    /// echo replies from capture addresses).
    pub icmp_sent: AtomicU64,
    /// Packets received on the port that were split into fragments to fit a tunnel.
    pub fragmented: AtomicU64,
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
            wg_peers: AtomicU64::new(0),
            wg_established: AtomicU64::new(0),
            wg_handshakes: AtomicU64::new(0),
        }
    }
}

/// Sums of every worker's counters for one port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortTotals {
    /// Received.
    pub rx: u64,
    /// Sent.
    pub tx: u64,
    /// Received here and forwarded.
    pub forwarded: u64,
    /// To the slow path.
    pub slow_path: u64,
    /// ICMP made from what was received here.
    pub icmp_sent: u64,
    /// Split into fragments.
    pub fragmented: u64,
    /// Dropped, by reason.
    pub drops: [u64; DropReason::COUNT],
}

/// Adds up the workers' counters per port.
pub fn totals(workers: &[&WorkerStats], ports: usize) -> Vec<PortTotals> {
    let mut out = vec![PortTotals::default(); ports];
    for w in workers {
        for (t, c) in out.iter_mut().zip(w.ports.iter()) {
            t.rx += c.rx.load(Ordering::Relaxed);
            t.tx += c.tx.load(Ordering::Relaxed);
            t.forwarded += c.forwarded.load(Ordering::Relaxed);
            t.slow_path += c.slow_path.load(Ordering::Relaxed);
            t.icmp_sent += c.icmp_sent.load(Ordering::Relaxed);
            t.fragmented += c.fragmented.load(Ordering::Relaxed);
            for (d, s) in t.drops.iter_mut().zip(c.drops.iter()) {
                *d += s.load(Ordering::Relaxed);
            }
        }
    }
    out
}
