//! The control thread: everything the forwarder does besides forwarding, on the main
//! lcore, off the packet cores.
//!
//! * `slow_path.rs`: answers what workers hand over (ARP, ND, pings to the ports' own
//!   addresses) and learns neighbours from it;
//! * `neighbours.rs`: solicits next hops the snapshot cannot reach yet;
//! * `publish.rs`: builds each new snapshot, swaps it in, and releases the previous ones
//!   here (never on a worker, which would free a large table on a packet core);
//! * `links.rs`: link state (reported to the keeper) and device counters (for metrics);
//! * [`keeper_link`]: the keeper thread, which feeds table sets in and takes link reports
//!   out.
//!
//! The loop never blocks for long: every piece does a bounded amount of work per turn,
//! and the thread sleeps a millisecond when a turn found nothing to do.

pub mod bench_swaps;
pub mod keeper_link;
mod links;
mod neighbours;
mod publish;
mod slow_path;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

use crate::config::Config;
use crate::dpdk::{Mbuf, MbufQueue, Mempool, Port};
use crate::fatal;
use crate::metrics::MetricsSource;
use crate::tables::{NeighbourCache, PortId, PortInfo, Rules, Snapshot, SnapshotHandle};

/// A new table set for the control thread to validate, build and publish.
pub struct TableUpdate {
    /// Generation the rules belong to.
    pub generation: u64,
    /// The rules. Shared with the keeper session, which applies the next delta in
    /// place only if nobody else holds them: drop them before reporting `done`.
    pub rules: std::sync::Arc<Rules>,
    /// Told the outcome: `Ok(generation)` once published, `Err(reason)` if refused (the
    /// old snapshot keeps forwarding). A tokio one-shot, so that the keeper link can
    /// await it while its runtime keeps the session (and its heartbeats) going.
    pub done: tokio::sync::oneshot::Sender<std::result::Result<u64, String>>,
    /// When the table set reached the keeper link (for keeper push to forwarding).
    pub received: Instant,
}

/// What the control thread reports to whoever drives table updates (the keeper link).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkReport {
    /// Port name.
    pub port: String,
    /// Link up.
    pub up: bool,
}

/// Hooks for a table source such as the keeper: updates in, link reports out.
pub struct ControlHooks {
    /// Table updates to apply.
    pub updates: mpsc::Receiver<TableUpdate>,
    /// Link state changes (sent once at start for every port, then on each change).
    pub links: mpsc::Sender<LinkReport>,
}

/// The control thread's view of the forwarder, built by the process set-up.
pub struct Control<'a> {
    /// The configuration.
    pub cfg: &'a Config,
    /// The ports, in config order.
    pub ports: &'a [Port],
    /// What the snapshot builder knows of each port.
    pub infos: &'a [PortInfo],
    /// Where frames the control thread sends come from.
    pub pool: &'a Mempool,
    /// Where snapshots are published.
    pub snapshots: Arc<SnapshotHandle>,
    /// What the workers hand to the slow path.
    pub slow: Arc<MbufQueue>,
    /// Frames to send, one queue per port (the first worker sends them).
    pub control_tx: Vec<Arc<MbufQueue>>,
    /// The metrics endpoint's source (device counters are written here).
    pub metrics: Arc<MetricsSource>,
    /// The keeper link, if there is a keeper.
    pub hooks: Option<ControlHooks>,
    /// Neighbours known so far (static ones first); every snapshot is built with them.
    pub neighbours: NeighbourCache,
}

/// How often unresolved next hops are solicited.
const SOLICIT_EVERY: Duration = Duration::from_millis(500);
/// How often the control thread reads link state and device counters: a line that goes
/// down is reported to the keeper within ~100 ms.
const LINK_POLL: Duration = Duration::from_millis(100);

/// The control thread's running state.
struct State {
    dpdk_to_port: HashMap<u16, PortId>,
    links: Vec<Option<bool>>,
    /// Snapshots swapped out and not yet released (a worker or a scrape may still
    /// read them).
    retired: Vec<Arc<Snapshot>>,
    /// Swaps not yet seen by every worker.
    swaps: Vec<publish::PendingSwap>,
    last_solicit: Instant,
    last_links: Instant,
}

impl Control<'_> {
    /// Runs until `stop` is set. Fails, after stopping nothing itself, if a thread of the
    /// forwarder panicked (see [`fatal`]).
    pub fn run(mut self, stop: &AtomicBool) -> Result<()> {
        let long_ago = Instant::now() - Duration::from_secs(10);
        let mut st = State {
            dpdk_to_port: self
                .ports
                .iter()
                .enumerate()
                .map(|(i, p)| (p.id(), i as PortId))
                .collect(),
            links: vec![None; self.ports.len()],
            retired: Vec::new(),
            swaps: Vec::new(),
            last_solicit: long_ago,
            last_links: long_ago,
        };
        while !stop.load(Ordering::Relaxed) {
            if let Some(why) = fatal::cause() {
                return Err(anyhow!("{why}"));
            }
            let mut busy = self.serve_slow_path(&st);
            if self.apply_updates(&mut st) {
                busy = true;
                st.last_solicit = long_ago; // new next hops: ask for them now
            }
            self.finish_swaps(&mut st);
            publish::release_retired(&mut st.retired);
            if st.last_solicit.elapsed() >= SOLICIT_EVERY {
                st.last_solicit = Instant::now();
                self.resolve_next_hops();
            }
            if st.last_links.elapsed() >= LINK_POLL {
                st.last_links = Instant::now();
                self.poll_links(&mut st);
                self.metrics.sample(st.last_links);
            }
            if !busy {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        self.metrics.alive.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Queues one frame for the first worker to send out of `port`.
    fn send(&self, port: PortId, frame: &[u8]) {
        if let Some(m) = Mbuf::from_bytes(self.pool, frame) {
            // A full queue frees the frame: ARP and ND are retried anyway.
            let _ = self.control_tx[port as usize].push(m);
        }
    }
}
