//! tarp's data plane.
//!
//! - [`packet`]: zero-copy views over packet bytes and incremental checksums;
//! - [`tables`]: the immutable snapshot a worker looks everything up in;
//! - [`pipeline`]: aggregator, demux and remux as plain functions over a burst;
//! - [`slowpath`]: ARP, ND and ICMP echo answers, as pure functions over a frame;
//! - [`wg`]: WireGuard tunnels (boringtun), driven by the worker;
//! - [`config`]: the forwarder's TOML; [`metrics`]: counters and their exposition.
//!
//! With feature `dpdk`: `dpdk` (the safe layer over `dpdk-sys`, the only `unsafe`),
//! `worker` (the per-core loop), `control` (the control thread and the keeper link),
//! `app` (the process set-up), `fatal` (a panic stops the process, never silently).
#![deny(unsafe_code)]
#![forbid(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod capture;
pub mod config;
pub mod metrics;
pub mod packet;
pub mod pipeline;
pub mod slowpath;
pub mod tables;
pub mod wg;

#[cfg(feature = "dpdk")]
pub mod app;
#[cfg(feature = "dpdk")]
pub mod control;
#[cfg(feature = "dpdk")]
#[allow(unsafe_code)]
pub mod dpdk;
#[cfg(feature = "dpdk")]
pub mod fatal;
#[cfg(feature = "dpdk")]
pub mod worker;

/// Cache prefetch hints: part of the DPDK layer, compiled without DPDK as well.
#[path = "dpdk/prefetch.rs"]
#[allow(unsafe_code)]
pub mod prefetch;
#[path = "dpdk/tsc.rs"]
#[allow(unsafe_code)]
pub mod tsc;
