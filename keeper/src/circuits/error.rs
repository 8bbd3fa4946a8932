//! Why a request about circuits was refused.

use std::net::IpAddr;

use super::{CircuitId, CircuitState, LineId, NodeId, PortRange};

/// Why a request about circuits was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CircuitError {
    /// A malformed request.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The region is not in the inventory.
    #[error("unknown region {0:?}")]
    UnknownRegion(String),
    /// The POP is not in the inventory.
    #[error("unknown POP {0:?}")]
    UnknownPop(String),
    /// The POP is in another region than the one asked for.
    #[error("POP {pop:?} is in region {actual:?}, not {region:?}")]
    PopNotInRegion {
        /// The POP asked for.
        pop: String,
        /// The region asked for.
        region: String,
        /// The POP's region.
        actual: String,
    },
    /// The application host is not in the inventory.
    #[error("app host {0} is not in the inventory")]
    UnknownAppHost(IpAddr),
    /// The capture address asked for is on no line.
    #[error("capture address {0} is on no line in the inventory")]
    UnknownCapture(IpAddr),
    /// The capture address asked for is outside the region or POP asked for.
    #[error("capture address {capture} is at POP {pop:?} (region {region:?}), outside the region or POP asked for")]
    CaptureElsewhere {
        /// The capture address.
        capture: IpAddr,
        /// Its POP.
        pop: String,
        /// Its region.
        region: String,
    },
    /// The line of the capture address asked for is down.
    #[error("capture address {capture} is on line {line}, which is down")]
    LineDown {
        /// The capture address.
        capture: IpAddr,
        /// Its line.
        line: LineId,
    },
    /// The line of the capture address asked for bounced too often lately.
    #[error("capture address {capture} is on line {line}, which is held down after flapping (flap damping); it is offered again once it has been stable")]
    LineDamped {
        /// The capture address.
        capture: IpAddr,
        /// Its line.
        line: LineId,
    },
    /// The capture address was freed moments ago and waits until every forwarder
    /// dropped it.
    #[error("capture address {0} was freed moments ago and is held back until every forwarder has dropped it; retry shortly or ask for another")]
    CaptureHeld(IpAddr),
    /// The capture address (and port) is held by another circuit.
    #[error("capture address {capture} {what} is already held by circuit {by}")]
    CaptureTaken {
        /// The capture address.
        capture: IpAddr,
        /// The protocol and ports, or "in address mode".
        what: String,
        /// The holder.
        by: CircuitId,
    },
    /// In port mode the remux maps (app host, protocol, port) to one capture address.
    #[error("app host {app_host} already serves {protocol} port(s) {ports} for circuit {by}")]
    AppHostPortTaken {
        /// The application host.
        app_host: IpAddr,
        /// Protocol.
        protocol: String,
        /// Ports asked for.
        ports: PortRange,
        /// The holder.
        by: CircuitId,
    },
    /// Nothing left to allocate.
    #[error("no capture address available in {scope} for {what}")]
    Exhausted {
        /// Region or POP searched.
        scope: String,
        /// What was asked for.
        what: String,
    },
    /// The demux behind every free capture address has no alias left.
    #[error("demux {0:?} has no alias left in its pool")]
    AliasesExhausted(NodeId),
    /// The idempotency key belongs to a circuit asked for differently.
    #[error("idempotency key {key:?} was used for circuit {id} with different parameters")]
    KeyMismatch {
        /// The key.
        key: String,
        /// Its circuit.
        id: CircuitId,
    },
    /// The idempotency key's circuit is still being activated.
    #[error("circuit {0} with this idempotency key is still activating; retry")]
    InProgress(CircuitId),
    /// No such circuit.
    #[error("no circuit {0}")]
    NotFound(CircuitId),
    /// Symmetric return asked for where the inventory cannot provide it.
    #[error("symmetric return needs {0}")]
    NoSymmetricReturn(String),
    /// The circuit cannot take this step now.
    #[error("circuit {id} is {state}: {why}")]
    WrongState {
        /// The circuit.
        id: CircuitId,
        /// Its state.
        state: CircuitState,
        /// What was refused.
        why: &'static str,
    },
}
