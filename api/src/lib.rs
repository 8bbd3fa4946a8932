//! tarp's shared contract.
//!
//! [`rules`] is the plain-data description of a forwarder's tables: the forwarder's static
//! TOML config holds one, and the keeper compiles one per forwarder and sends it over gRPC.
//! With the `grpc` feature, [`grpc`] holds the keeper's gRPC contract (generated from
//! `proto/tarp.proto`) and the conversions between [`Rules`] and its wire form.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "grpc")]
pub mod grpc;
mod mac;
pub mod rules;

pub use mac::{MacAddr, ParseMacError};
pub use rules::Rules;
