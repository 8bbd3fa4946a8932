//! The circuits an application asks for and gets, as both sides of the keeper's API see
//! them: a [`Circuit`] and its [`CircuitState`], [`Mode`] and [`PortRange`], the
//! [`ActivateRequest`] that makes one, the [`CircuitEvent`]s told over `Watch`, and the
//! [`ListFilter`] of a listing. Plain data (serde), no I/O: the keeper's state machine
//! works on them, and the clients return them.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::rules::Protocol;

/// A forwarder's identity in the keeper's inventory (its `node` / `node_id`).
pub type NodeId = String;

/// What a forwarder does with its ports; one node may play several roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// POP side: capture address -> demux alias, into the tunnel.
    Aggregator,
    /// DC side: out of the tunnel, alias -> application host.
    Demux,
    /// DC egress: application host's reply -> capture address as source.
    Remux,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Aggregator => "aggregator",
            Role::Demux => "demux",
            Role::Remux => "remux",
        })
    }
}

/// A circuit's number; never reused.
pub type CircuitId = u64;

/// How the application host receives a circuit's packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The application host carries the capture address (FIG 5); the whole address is
    /// the circuit's.
    Address,
    /// The application host binds its own address (FIG 7); only the circuit's ports are
    /// delivered, so port-mode circuits may share a capture address.
    Port,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Address => "address",
            Mode::Port => "port",
        })
    }
}

/// Which way a circuit's replies take back to the devices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReturnPath {
    /// Straight out of the data center through the remux (the patent's point).
    #[default]
    Asymmetric,
    /// Back through a tunnel to the circuit's aggregator and out of the line that holds
    /// the capture address: for providers that drop packets whose source is not theirs
    /// (BCP 38, uRPF).
    Symmetric,
}

impl fmt::Display for ReturnPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReturnPath::Asymmetric => "asymmetric",
            ReturnPath::Symmetric => "symmetric",
        })
    }
}

impl std::str::FromStr for ReturnPath {
    type Err = String;

    fn from_str(s: &str) -> Result<ReturnPath, String> {
        match s {
            "asymmetric" => Ok(ReturnPath::Asymmetric),
            "symmetric" => Ok(ReturnPath::Symmetric),
            _ => Err(format!("{s:?} is neither asymmetric nor symmetric")),
        }
    }
}

/// Where a circuit is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CircuitState {
    /// Demux and remux entries pushed; waiting for acknowledgements.
    Activating,
    /// In every forwarder's tables on its path.
    Active,
    /// Its line went down; it is in no table.
    Bounced,
    /// The aggregator's entry is gone; demux and remux entries are going.
    Releasing,
    /// Gone; kept for the record.
    Released,
}

impl CircuitState {
    /// True while the circuit holds its capture address, ports and alias.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            CircuitState::Activating | CircuitState::Active | CircuitState::Releasing
        )
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CircuitState::Activating => "activating",
            CircuitState::Active => "active",
            CircuitState::Bounced => "bounced",
            CircuitState::Releasing => "releasing",
            CircuitState::Released => "released",
        })
    }
}

/// An inclusive port range; `0..=0` in address mode means every port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortRange {
    /// First port.
    pub first: u16,
    /// Last port (equal to `first` for one port).
    pub last: u16,
}

impl PortRange {
    /// One port.
    pub const fn single(port: u16) -> PortRange {
        PortRange {
            first: port,
            last: port,
        }
    }

    /// True when the ranges share a port.
    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }

    /// The ports, in order.
    pub fn iter(&self) -> impl Iterator<Item = u16> {
        self.first..=self.last
    }

    /// How many ports.
    pub fn count(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    /// True for the address-mode "every port" range `0..=0`.
    pub fn is_any(&self) -> bool {
        self.first == 0 && self.last == 0
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_any() {
            f.write_str("*")
        } else if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// A line of an aggregator, by node id and port name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LineId {
    /// Aggregator node id.
    pub node: NodeId,
    /// Line (port) name.
    pub line: String,
}

impl fmt::Display for LineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.node, self.line)
    }
}

/// A circuit: a capture address (and in port mode some of its ports) delivered to an
/// application host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Circuit {
    /// Its number.
    pub id: CircuitId,
    /// Where it is in its life.
    pub state: CircuitState,
    /// Address or port mode.
    pub mode: Mode,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Its ports.
    pub ports: PortRange,
    /// The address devices reach the application at.
    pub capture: IpAddr,
    /// The demux alias the aggregator rewrites `capture` to.
    pub alias: IpAddr,
    /// The application host.
    pub app_host: IpAddr,
    /// Region of the capture address.
    pub region: String,
    /// POP of the capture address.
    pub pop: String,
    /// Aggregator node the capture address is on.
    pub aggregator: NodeId,
    /// Line (aggregator port) the capture address is on.
    pub line: String,
    /// Demux node at the far end of the aggregator's tunnel.
    pub demux: NodeId,
    /// Remux node the application host's replies leave through.
    pub remux: NodeId,
    /// Which way replies take.
    #[serde(default)]
    pub return_path: ReturnPath,
    /// The keeper generation that carried the circuit to every forwarder on its path
    /// (0 until it is active).
    pub generation: u64,
    /// The application's idempotency key.
    pub idempotency_key: Option<String>,
    /// The bounced circuit this one replaced.
    pub replaces: Option<CircuitId>,
    /// The circuit that replaced this one after a bounce.
    pub replaced_by: Option<CircuitId>,
    /// Why it bounced, or why the keeper released it (its lease ran out).
    pub reason: Option<String>,
    /// Its lease in milliseconds: the keeper releases it when no renewal came for this
    /// long (0: no lease, held until released).
    #[serde(default)]
    pub lease_ms: u64,
    /// When it ended (released, or bounced and replaced), in milliseconds since the Unix
    /// epoch; 0 while it lives. Retention counts from here, across keeper restarts.
    #[serde(default)]
    pub ended_at_ms: u64,
    /// The identity that activated it (`app/NAME` or `operator/NAME`): only it, or an
    /// operator, may release, renew, get or watch it. Empty for circuits made before
    /// identities (an operator's alone).
    #[serde(default)]
    pub owner: String,
}

impl Circuit {
    /// The address the application binds on its host.
    pub fn bind_address(&self) -> IpAddr {
        match self.mode {
            Mode::Address => self.capture,
            Mode::Port => self.app_host,
        }
    }

    /// True once it is over for good: released, or bounced and replaced.
    pub fn has_ended(&self) -> bool {
        self.state == CircuitState::Released
            || (self.state == CircuitState::Bounced && self.replaced_by.is_some())
    }

    /// The line the circuit's capture address is on.
    pub fn line_id(&self) -> LineId {
        LineId {
            node: self.aggregator.clone(),
            line: self.line.clone(),
        }
    }

    /// The forwarders on the circuit's path, in make-before-break order: demux and
    /// remux first, then the aggregator. A node playing several roles appears once.
    pub fn path(&self) -> Vec<NodeId> {
        let mut path = vec![self.demux.clone()];
        if self.remux != self.demux {
            path.push(self.remux.clone());
        }
        if !path.contains(&self.aggregator) {
            path.push(self.aggregator.clone());
        }
        path
    }
}

/// What happened to a circuit, as told to applications over `Watch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// Every forwarder on its path runs it.
    Activated,
    /// Its line went down; see the event's replacement.
    Bounced,
    /// Gone from every forwarder.
    Released,
}

/// A circuit event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CircuitEvent {
    /// What happened.
    pub kind: EventKind,
    /// The circuit it happened to (for a bounce: the bounced one).
    pub circuit: Circuit,
    /// For a bounce: the active replacement, if one could be activated.
    pub replacement: Option<Circuit>,
    /// Why (bounces, and bounces without a replacement).
    pub reason: Option<String>,
}

/// What an application asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivateRequest {
    /// Region the capture address must be in.
    pub region: Option<String>,
    /// Preferred POP (other POPs of its region are used when it is full).
    pub pop: Option<String>,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Ports (`0..=0`: every port, address mode only).
    pub ports: PortRange,
    /// Address or port mode.
    pub mode: Mode,
    /// The application host.
    pub app_host: IpAddr,
    /// Makes a retried request return the same circuit.
    pub idempotency_key: Option<String>,
    /// A specific capture address instead of one from the pool.
    pub capture: Option<IpAddr>,
    /// Which way replies take.
    pub return_path: ReturnPath,
    /// Hold the circuit by a lease of this many milliseconds, renewed with
    /// `Renew` (0: no lease).
    pub lease_ms: u64,
    /// Who the circuit will belong to. The keeper sets it from the caller's identity;
    /// it is never taken from the wire.
    pub owner: String,
}

/// Which circuits a listing returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only this region.
    pub region: Option<String>,
    /// Only this POP.
    pub pop: Option<String>,
    /// Only this application host.
    pub app_host: Option<IpAddr>,
    /// Only this state.
    pub state: Option<CircuitState>,
    /// Include released circuits when no state is given.
    pub include_released: bool,
    /// Only circuits of this owner (the keeper sets it for a caller who is not an
    /// operator).
    pub owner: Option<String>,
}
