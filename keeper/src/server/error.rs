//! Why a keeper operation failed, and the gRPC status that says so.

use tarp_api::grpc::ProtoError;
use tonic::{Code, Status};

use crate::circuits::CircuitError;
use crate::inventory::{NodeId, Role};
use crate::store::StoreError;

/// Why a keeper operation failed. Converts into a gRPC [`Status`] whose code says what
/// kind of failure it is and whose message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    /// Refused by the circuit state machine.
    #[error(transparent)]
    Circuit(#[from] CircuitError),
    /// A malformed message.
    #[error("invalid request: {0}")]
    Proto(#[from] ProtoError),
    /// A forwarder rejected a table set.
    #[error("forwarder {node} rejected generation {generation}: {detail}")]
    Nack {
        /// The forwarder.
        node: NodeId,
        /// The generation it rejected.
        generation: u64,
        /// Its reason.
        detail: String,
    },
    /// A forwarder did not acknowledge in time.
    #[error("forwarder {node} did not acknowledge generation {generation} within {waited_ms} ms ({})", if *.connected { "connected" } else { "not connected" })]
    AckTimeout {
        /// The forwarder.
        node: NodeId,
        /// The generation waited for.
        generation: u64,
        /// How long.
        waited_ms: u64,
        /// Whether it had a stream open.
        connected: bool,
    },
    /// An activation failed and was rolled back.
    #[error("{0}; the activation was rolled back")]
    RolledBack(Box<KeeperError>),
    /// A forwarder's hello announced another WireGuard key than the inventory's.
    #[error("node {node:?} has WireGuard key {want} in the keeper's inventory, and its hello announced {got} (its [wireguard] private_key_file)")]
    WrongWgKey {
        /// The node.
        node: NodeId,
        /// The inventory's key.
        want: String,
        /// What the hello said ("none" when it had none).
        got: String,
    },
    /// A forwarder's hello named a node the inventory does not have.
    #[error("node {0:?} is not in the keeper's inventory")]
    UnknownNode(String),
    /// A forwarder claimed a role the inventory does not give it.
    #[error("node {node:?} is not a {role} in the keeper's inventory (it is: {actual})")]
    WrongRole {
        /// The node.
        node: NodeId,
        /// The role claimed.
        role: Role,
        /// The roles it has.
        actual: String,
    },
    /// A forwarder sent something that cannot be true (an ACK of a generation it was
    /// never sent, a report about a port it does not have, ...).
    #[error("forwarder {node}: {problem}")]
    BadReport {
        /// The forwarder.
        node: NodeId,
        /// What was wrong.
        problem: String,
    },
    /// The database failed; the keeper stops taking changes.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The server could not be set up as configured (TLS files, the socket file).
    #[error("{key}: {problem}")]
    Setup {
        /// The setting at fault.
        key: &'static str,
        /// What was wrong.
        problem: String,
    },
    /// The keeper stopped taking changes after an earlier failure, or is shutting down.
    #[error("keeper unavailable: {0}")]
    Unavailable(String),
}

impl KeeperError {
    /// The gRPC status code for this error.
    pub fn code(&self) -> Code {
        match self {
            KeeperError::Circuit(e) => match e {
                CircuitError::Invalid(_)
                | CircuitError::PopNotInRegion { .. }
                | CircuitError::UnknownAppHost(_)
                | CircuitError::CaptureElsewhere { .. } => Code::InvalidArgument,
                CircuitError::UnknownRegion(_)
                | CircuitError::UnknownPop(_)
                | CircuitError::UnknownCapture(_)
                | CircuitError::NotFound(_) => Code::NotFound,
                CircuitError::LineDown { .. }
                | CircuitError::CaptureTaken { .. }
                | CircuitError::AppHostPortTaken { .. }
                | CircuitError::KeyMismatch { .. }
                | CircuitError::WrongState { .. }
                | CircuitError::NoSymmetricReturn(_) => Code::FailedPrecondition,
                CircuitError::Exhausted { .. } | CircuitError::AliasesExhausted(_) => {
                    Code::ResourceExhausted
                }
                CircuitError::InProgress(_) | CircuitError::CaptureHeld(_) => Code::Unavailable,
                CircuitError::LineDamped { .. } => Code::FailedPrecondition,
            },
            KeeperError::Proto(_) => Code::InvalidArgument,
            KeeperError::Nack { .. } => Code::Aborted,
            KeeperError::AckTimeout { .. } => Code::DeadlineExceeded,
            KeeperError::RolledBack(inner) => inner.code(),
            KeeperError::UnknownNode(_) => Code::NotFound,
            KeeperError::WrongRole { .. } | KeeperError::WrongWgKey { .. } => {
                Code::FailedPrecondition
            }
            KeeperError::BadReport { .. } => Code::InvalidArgument,
            KeeperError::Store(_) | KeeperError::Setup { .. } => Code::Internal,
            KeeperError::Unavailable(_) => Code::Unavailable,
        }
    }
}

impl From<KeeperError> for Status {
    fn from(e: KeeperError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}
