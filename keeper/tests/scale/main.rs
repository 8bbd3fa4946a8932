//! The keeper at scale and under faults, over real gRPC, in one test binary (one link
//! instead of three): delta updates (`deltas`), how circuits are held and freed
//! (`holding`), load and faults (`faults`), and trust (`trust`: TLS, identities, ownership).

#[allow(unused_macros)]
#[path = "../support/mod.rs"]
mod support;

mod deltas;
mod faults;
mod holding;
mod trust;
