//! What the keeper's metrics and health endpoints read: counts over its state, taken
//! under the core lock at scrape time (a scrape every few seconds costs one short walk
//! over the circuits), and the counters and histograms its steps record.

use std::collections::BTreeMap;
use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts};

use super::{Keeper, KeeperError};
use crate::circuits::CircuitState;

/// Buckets for control-plane timings: 100 µs to 30 s.
pub const BUCKETS: &[f64] = &[
    100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0,
    2.5, 5.0, 10.0, 30.0,
];

/// The keeper's own counters and histograms (the prometheus crate's; lock-free to
/// record). Registered with the endpoint's registry by [`crate::metrics`].
#[derive(Clone)]
pub struct KeeperMetrics {
    /// Activations by result: `ok`, or the gRPC code of the failure.
    pub activations: IntCounterVec,
    /// Time of each successful activation (request to answer).
    pub activation_seconds: Histogram,
    /// Releases by who asked: `app`, `lease_expired`, `keeper`.
    pub releases: IntCounterVec,
    /// Bounced circuits, by whether a replacement became active.
    pub bounces: IntCounterVec,
    /// Leases that ran out.
    pub lease_expiries: IntCounter,
    /// Store commits (one write transaction, fsync'd).
    pub store_commit_seconds: Histogram,
    /// From publishing a generation to a forwarder's acknowledgement of it.
    pub ack_wait_seconds: Histogram,
    /// Forwarder hellos by result: `ok`, or the gRPC code they were refused with.
    pub hellos: IntCounterVec,
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    // Constant names and labels, checked by the tests: cannot fail.
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn histogram(name: &str, help: &str) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()))
        .expect("valid metric")
}

impl Default for KeeperMetrics {
    fn default() -> KeeperMetrics {
        KeeperMetrics {
            activations: counter_vec(
                "tarp_keeper_activations_total",
                "Activation requests answered, by result (ok, or the gRPC code of the failure).",
                &["result"],
            ),
            activation_seconds: histogram(
                "tarp_keeper_activation_duration_seconds",
                "Time from an activation request to its answer, for successful activations.",
            ),
            releases: counter_vec(
                "tarp_keeper_releases_total",
                "Circuits released, by who released them (app, lease_expired, keeper).",
                &["by"],
            ),
            bounces: counter_vec(
                "tarp_keeper_bounces_total",
                "Circuits bounced because their line went down, by whether a replacement became active.",
                &["replaced"],
            ),
            lease_expiries: IntCounter::new(
                "tarp_keeper_lease_expiries_total",
                "Circuit leases that ran out without a renewal.",
            )
            .expect("valid metric"),
            store_commit_seconds: histogram(
                "tarp_keeper_store_commit_duration_seconds",
                "Time of one store commit (a write transaction, fsync'd).",
            ),
            ack_wait_seconds: histogram(
                "tarp_keeper_ack_wait_seconds",
                "Time from publishing a generation to a forwarder's acknowledgement of it.",
            ),
            hellos: counter_vec(
                "tarp_keeper_forwarder_hellos_total",
                "Forwarder hellos, by result (ok, or the gRPC code of the refusal).",
                &["result"],
            ),
        }
    }
}

/// The gRPC code name of an error, as a label value.
pub fn code_label(e: &KeeperError) -> String {
    format!("{:?}", e.code()).to_lowercase()
}

/// A forwarder as the metrics see it.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwarderView {
    /// Node id.
    pub node: String,
    /// Its roles, joined with `+`.
    pub roles: String,
    /// It has a stream open.
    pub connected: bool,
    /// The generation published for it.
    pub published: u64,
    /// The generation it acknowledged.
    pub acked: u64,
    /// Seconds since it was last heard from.
    pub silent_s: f64,
    /// Its metrics endpoint, from the inventory.
    pub metrics: Option<String>,
}

/// Counts over the keeper's state at one moment.
#[derive(Debug, Clone, Default)]
pub struct StateCounts {
    /// Circuits by (region, state).
    pub circuits: BTreeMap<(String, &'static str), u64>,
    /// Capture addresses by (region, `free` | `held` | `line_down`).
    pub captures: BTreeMap<(String, &'static str), u64>,
    /// The keeper's generation counter.
    pub generation: u64,
    /// Every forwarder of the inventory.
    pub forwarders: Vec<ForwarderView>,
}

/// A circuit state's label value.
pub fn state_label(s: CircuitState) -> &'static str {
    match s {
        CircuitState::Activating => "activating",
        CircuitState::Active => "active",
        CircuitState::Bounced => "bounced",
        CircuitState::Releasing => "releasing",
        CircuitState::Released => "released",
    }
}

impl Keeper {
    /// The keeper's own counters and histograms.
    pub fn metrics(&self) -> &KeeperMetrics {
        &self.metrics
    }

    /// Counts over its state now.
    pub fn state_counts(&self) -> Result<StateCounts, KeeperError> {
        let mut out = StateCounts::default();
        {
            let core = self.lock()?;
            for c in core.circuits.iter() {
                *out.circuits
                    .entry((c.region.clone(), state_label(c.state)))
                    .or_default() += 1;
            }
            for a in &self.inv.aggregators {
                for line in &a.lines {
                    let id = crate::circuits::LineId {
                        node: a.node.clone(),
                        line: line.name.clone(),
                    };
                    let up = core.circuits.is_up(&id);
                    for cap in &line.captures {
                        let state = match (up, core.circuits.is_held(*cap)) {
                            (false, _) => "line_down",
                            (true, true) => "held",
                            (true, false) => "free",
                        };
                        *out.captures.entry((a.region.clone(), state)).or_default() += 1;
                    }
                }
            }
            out.generation = core.generation;
        }
        for (id, h) in &self.nodes {
            let acks = h.acks.borrow().clone();
            let silent = h
                .liveness
                .lock()
                .map(|l| l.last_seen.elapsed())
                .unwrap_or(Duration::ZERO);
            out.forwarders.push(ForwarderView {
                node: id.clone(),
                roles: h
                    .roles
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join("+"),
                connected: acks.connected,
                published: *h.published.borrow(),
                acked: acks.acked,
                silent_s: silent.as_secs_f64(),
                metrics: self.inv.nodes.get(id).and_then(|n| n.metrics.clone()),
            });
        }
        Ok(out)
    }

    /// Why the keeper is not ready (empty: ready): its store is closed or failed, or it
    /// is shutting down.
    pub fn not_ready(&self) -> Vec<String> {
        let mut why = Vec::new();
        if *self.closing.borrow() {
            why.push("shutting down".to_string());
        }
        match self.store.lock() {
            Ok(s) if s.is_none() => why.push("store closed".to_string()),
            Ok(_) => {}
            Err(_) => why.push("store lock poisoned".to_string()),
        }
        match self.core.lock() {
            Ok(c) => {
                if let Some(f) = &c.failed {
                    why.push(format!("failed: {f}"));
                }
            }
            Err(_) => why.push("state lock poisoned".to_string()),
        }
        why
    }
}
