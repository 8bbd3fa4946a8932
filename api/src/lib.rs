//! tarp's shared contract, and the clients of the keeper.
//!
//! * [`rules`]: the plain-data description of a forwarder's tables. The forwarder's
//!   static TOML config holds one; the keeper compiles one per forwarder.
//! * [`circuit`]: circuits as applications see them (requests, states, events).
//! * [`endpoint`]: the keeper's endpoint syntax (`http://HOST:PORT`, `unix:/PATH`), and
//!   (feature `client`) dialling it.
//! * [`grpc`] (feature `grpc`): the gRPC contract generated from `proto/tarp.proto`, and
//!   the conversions between [`Rules`] and its wire form; [`convert`] does the same for
//!   circuits.
//! * [`client`] (feature `client`): [`client::AppClient`] for applications and
//!   `tarpctl`, [`client::ForwarderSession`] for forwarders.
//!
//! The forwarder's pure-Rust build uses only [`rules`]; the keeper, the forwarder's
//! keeper link and `tarpctl` share the rest, and none of them needs the keeper's server.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod circuit;
#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "grpc")]
pub mod convert;
pub mod endpoint;
#[cfg(feature = "grpc")]
pub mod grpc;
mod mac;
pub mod rules;

pub use mac::{MacAddr, ParseMacError};
pub use rules::Rules;
