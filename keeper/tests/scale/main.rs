//! The keeper at scale and under faults, over real gRPC, in one test binary (one link
//! instead of three): delta updates (`deltas`), how circuits are held and freed
//! (`holding`), load and faults (`faults`), trust (`trust`: TLS, identities, ownership),
//! and the metrics endpoint (`observe`).

#[allow(unused_macros)]
#[path = "../support/mod.rs"]
mod support;

mod deltas;
mod faults;
mod holding;
mod observe;
mod trust;
