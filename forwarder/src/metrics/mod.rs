//! What the forwarder tells Prometheus.
//!
//! * `counters.rs`: per-worker counters, bumped without shared writes, summed at scrape
//!   time;
//! * `latency.rs`: hdrhistogram recorders (per burst on the workers, merged off the
//!   packet path) and their Prometheus buckets;
//! * `source.rs`: what a scrape reads and the metric families it makes, readiness;
//! * `expo.rs`: building the prometheus crate's metric families;
//! * `serve.rs` (feature `dpdk`): the HTTP endpoint (`/metrics`, `/healthz`, `/readyz`).

mod counters;
mod expo;
mod latency;
#[cfg(feature = "dpdk")]
mod serve;
mod source;

pub use counters::{
    bump, circuit_counters, totals, CircuitCounter, CircuitCounters, DeviceCounters, PortCounters,
    PortTotals, WorkerStats, TO_APP, TO_DEVICE,
};
pub use expo::{registry, render, Family};
pub use latency::{
    buckets, histogram, pair, Merger, Recorder, Timing, BURST_BUCKETS, CONTROL_BUCKETS,
};
#[cfg(feature = "dpdk")]
pub use serve::serve;
pub use source::{MetricsSource, TableStats, WorkerView, STALLED_AFTER};
