//! The pure-Rust forwarder's integration tests, in one test binary (one release link
//! instead of five): checksum properties against etherparse, the patent's FIG 6 / FIG 8
//! golden walkthroughs, arbitrary bytes through every pipeline, snapshot swaps under
//! load, and the Internet's packets (fragments, ICMP errors, MSS, hostile input).

#[path = "../support/mod.rs"]
mod support;

mod checksum_props;
mod golden;
mod no_panic;
mod snapshot_swap;
mod traffic;
mod wireguard;
