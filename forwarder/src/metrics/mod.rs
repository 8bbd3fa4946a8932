//! What the forwarder tells Prometheus.
//!
//! * `counters.rs`: per-worker counters, bumped without shared writes, summed at scrape
//!   time;
//! * `text.rs`: the text exposition of a [`Scrape`];
//! * `serve.rs` (feature `dpdk`): the HTTP endpoint, and what one scrape reads.

mod counters;
#[cfg(feature = "dpdk")]
mod serve;
mod text;

pub use counters::{bump, totals, PortCounters, PortTotals, WorkerStats};
#[cfg(feature = "dpdk")]
pub use serve::{serve, MetricsSource};
pub use text::{render, DeviceCounters, Scrape};
