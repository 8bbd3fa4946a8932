//! tarp's data plane.
//!
//! - [`packet`]: zero-copy views over packet bytes and incremental checksums;
//! - [`tables`]: the immutable snapshot a worker looks everything up in;
//! - [`pipeline`]: aggregator, demux and remux as plain functions over a burst;
//! - `dpdk` (feature `dpdk`): the safe layer over `dpdk-sys`, workers and the binary's parts.
#![deny(unsafe_code)]
#![forbid(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod config;
pub mod packet;
pub mod pipeline;
pub mod slowpath;
pub mod stats;
pub mod tables;

#[cfg(feature = "dpdk")]
pub mod app;
#[cfg(feature = "dpdk")]
pub mod control;
#[cfg(feature = "dpdk")]
#[allow(unsafe_code)]
pub mod dpdk;
#[cfg(feature = "dpdk")]
pub mod worker;

/// Cache prefetch hints: part of the DPDK layer, compiled without DPDK as well.
#[path = "dpdk/prefetch.rs"]
#[allow(unsafe_code)]
pub mod prefetch;
