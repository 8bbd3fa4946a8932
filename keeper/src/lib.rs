//! The tarp circuit keeper: the control plane that gives applications circuits and
//! keeps every forwarder's tables in step with them.
//!
//! * [`inventory`]: the TOML configuration (regions, POPs, aggregators and their lines,
//!   demux alias pools, remux nodes, application hosts, tunnels, routes).
//! * [`auth`]: who a caller is (client certificates, or the configured plaintext
//!   identity) and what they may do; [`certs`]: certificates for a deployment.
//! * [`circuits`]: the circuit state machine (activate, release, bounce, replace); pure.
//! * [`compiler`]: circuits -> each forwarder's [`Rules`](tarp_api::Rules).
//! * [`store`]: durable state in an embedded redb database.
//! * [`server`]: the keeper and its gRPC services for applications and forwarders.
//! * [`transport`]: where the server listens (TCP or a Unix-domain socket).
//! * [`metrics`]: the Prometheus endpoint, `/healthz` and `/readyz`.
//!
//! The circuit types, the gRPC contract and the clients ([`tarp_api::client`]) live in
//! `tarp-api`, which forwarders and `tarpctl` use without linking any of this.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod certs;
pub mod circuits;
pub mod compiler;
pub mod inventory;
pub mod metrics;
pub mod server;
pub mod store;
pub mod tables;
pub mod transport;
