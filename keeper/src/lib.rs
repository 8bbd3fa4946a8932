//! The tarp circuit keeper: the control plane that gives applications circuits and
//! keeps every forwarder's tables in step with them.
//!
//! * [`inventory`]: the TOML configuration (regions, POPs, aggregators and their lines,
//!   demux alias pools, remux nodes, application hosts, tunnels, routes).
//! * [`circuits`]: the circuit state machine (activate, release, bounce, replace); pure.
//! * [`compiler`]: circuits -> each forwarder's [`Rules`](tarp_api::Rules).
//! * [`store`]: durable state in an embedded redb database.
//! * [`server`]: the keeper and its gRPC services for applications and forwarders.
//! * [`client`]: [`client::AppClient`] for applications, [`client::ForwarderSession`]
//!   for forwarders.
//! * [`transport`]: TCP or Unix-domain socket, for the server and every client.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod circuits;
pub mod client;
pub mod compiler;
pub mod convert;
pub mod inventory;
pub mod server;
pub mod store;
pub mod transport;
