//! Circuits and their life: activate (the patent's FIG 3), release (FIG 4), bounce and
//! replace. Pure state, no I/O: the server drives it, commits what it changed to the
//! store, compiles the forwarders' tables from it and waits for their acknowledgements.
//!
//! A circuit moves `Activating -> Active -> Releasing -> Released`, or `Active -> Bounced`
//! when its line goes down (then `Bounced -> Released` when its application lets go).
//! `Activating` and `Releasing` circuits are in the demux's and remux's tables but not in
//! the aggregator's: that is make-before-break on the way in and on the way out.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use tarp_api::rules::Protocol;

use crate::inventory::{Aggregator, Inventory, Line, NodeId};

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
    /// The keeper generation that carried the circuit to every forwarder on its path
    /// (0 until it is active).
    pub generation: u64,
    /// The application's idempotency key.
    pub idempotency_key: Option<String>,
    /// The bounced circuit this one replaced.
    pub replaces: Option<CircuitId>,
    /// The circuit that replaced this one after a bounce.
    pub replaced_by: Option<CircuitId>,
    /// Why it bounced.
    pub reason: Option<String>,
}

impl Circuit {
    /// The address the application binds on its host.
    pub fn bind_address(&self) -> IpAddr {
        match self.mode {
            Mode::Address => self.capture,
            Mode::Port => self.app_host,
        }
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
}

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

/// The outcome of [`Circuits::activate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Activation {
    /// A retry: the circuit this idempotency key already has.
    Existing(Box<Circuit>),
    /// A new circuit, now `Activating`.
    Started(CircuitId),
}

/// The outcome of [`Circuits::begin_release`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// The circuit was active and is now `Releasing`: its aggregator entry goes first.
    Started,
    /// The circuit was bounced (in no table) and is now released.
    Released(Circuit),
    /// The circuit was released before; a retried release answers with it.
    AlreadyReleased(Circuit),
}

/// A circuit that bounced, and its replacement (now `Activating`) if one was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bounce {
    /// The bounced circuit.
    pub old: CircuitId,
    /// Its replacement, or why there is none.
    pub replacement: Result<CircuitId, CircuitError>,
}

/// All circuits and the state of every line.
#[derive(Debug, Clone, Default)]
pub struct Circuits {
    circuits: BTreeMap<CircuitId, Circuit>,
    down: BTreeMap<LineId, String>,
    next_id: CircuitId,
    dirty_circuits: BTreeSet<CircuitId>,
    dirty_lines: BTreeSet<LineId>,
}

/// Where a new circuit goes.
struct Placement<'a> {
    aggregator: &'a Aggregator,
    line: &'a Line,
    capture: IpAddr,
    alias: IpAddr,
}

impl Circuits {
    /// No circuits, every line up.
    pub fn new() -> Circuits {
        Circuits {
            next_id: 1,
            ..Default::default()
        }
    }

    /// State as loaded from the store.
    pub fn restore(
        circuits: impl IntoIterator<Item = Circuit>,
        down: impl IntoIterator<Item = (LineId, String)>,
        next_id: CircuitId,
    ) -> Circuits {
        let circuits: BTreeMap<_, _> = circuits.into_iter().map(|c| (c.id, c)).collect();
        let next_id = next_id.max(circuits.keys().next_back().map_or(1, |id| id + 1));
        Circuits {
            circuits,
            down: down.into_iter().collect(),
            next_id,
            ..Default::default()
        }
    }

    /// The id the next circuit will get.
    pub fn next_id(&self) -> CircuitId {
        self.next_id
    }

    /// One circuit.
    pub fn get(&self, id: CircuitId) -> Option<&Circuit> {
        self.circuits.get(&id)
    }

    /// Every circuit, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Circuit> {
        self.circuits.values()
    }

    /// Down lines and why.
    pub fn down_lines(&self) -> &BTreeMap<LineId, String> {
        &self.down
    }

    /// True unless the line was reported down.
    pub fn is_up(&self, line: &LineId) -> bool {
        !self.down.contains_key(line)
    }

    /// Circuits and lines changed since the last call, for the store.
    pub fn take_dirty(&mut self) -> (Vec<CircuitId>, Vec<LineId>) {
        (
            std::mem::take(&mut self.dirty_circuits)
                .into_iter()
                .collect(),
            std::mem::take(&mut self.dirty_lines).into_iter().collect(),
        )
    }

    fn touch(&mut self, id: CircuitId) -> Option<&mut Circuit> {
        self.dirty_circuits.insert(id);
        self.circuits.get_mut(&id)
    }

    /// Starts an activation: checks the request, allocates a capture address and an
    /// alias, and records the circuit as `Activating`. A request carrying the
    /// idempotency key of a live or bounced circuit returns that circuit instead.
    pub fn activate(
        &mut self,
        inv: &Inventory,
        max_port_range: u16,
        req: &ActivateRequest,
    ) -> Result<Activation, CircuitError> {
        check_request(req, max_port_range)?;
        if let Some(key) = &req.idempotency_key {
            if let Some(c) = self.by_key(key) {
                if !same_request(c, req) {
                    return Err(CircuitError::KeyMismatch {
                        key: key.clone(),
                        id: c.id,
                    });
                }
                if c.state == CircuitState::Activating {
                    return Err(CircuitError::InProgress(c.id));
                }
                return Ok(Activation::Existing(Box::new(c.clone())));
            }
        }
        let id = self.start(inv, req, None)?;
        Ok(Activation::Started(id))
    }

    /// The newest unreleased circuit holding an idempotency key.
    fn by_key(&self, key: &str) -> Option<&Circuit> {
        self.circuits.values().rev().find(|c| {
            c.state != CircuitState::Released && c.idempotency_key.as_deref() == Some(key)
        })
    }

    fn start(
        &mut self,
        inv: &Inventory,
        req: &ActivateRequest,
        replaces: Option<CircuitId>,
    ) -> Result<CircuitId, CircuitError> {
        let app_host = inv
            .app_host(req.app_host)
            .ok_or(CircuitError::UnknownAppHost(req.app_host))?;
        let place = self.place(inv, req)?;
        let id = self.next_id;
        self.next_id += 1;
        let circuit = Circuit {
            id,
            state: CircuitState::Activating,
            mode: req.mode,
            protocol: req.protocol,
            ports: req.ports,
            capture: place.capture,
            alias: place.alias,
            app_host: req.app_host,
            region: place.aggregator.region.clone(),
            pop: place.aggregator.pop.clone(),
            aggregator: place.aggregator.node.clone(),
            line: place.line.name.clone(),
            demux: place.aggregator.demux.clone(),
            remux: app_host.remux.clone(),
            generation: 0,
            idempotency_key: req.idempotency_key.clone(),
            replaces,
            replaced_by: None,
            reason: None,
        };
        self.circuits.insert(id, circuit);
        self.dirty_circuits.insert(id);
        Ok(id)
    }

    /// Chooses a capture address and alias for a request.
    fn place<'a>(
        &self,
        inv: &'a Inventory,
        req: &ActivateRequest,
    ) -> Result<Placement<'a>, CircuitError> {
        let live: Vec<&Circuit> = self
            .circuits
            .values()
            .filter(|c| c.state.is_live())
            .collect();
        if req.mode == Mode::Port {
            if let Some(c) = live.iter().find(|c| {
                c.mode == Mode::Port
                    && c.app_host == req.app_host
                    && c.protocol == req.protocol
                    && c.ports.overlaps(&req.ports)
            }) {
                return Err(CircuitError::AppHostPortTaken {
                    app_host: req.app_host,
                    protocol: protocol_name(req.protocol).into(),
                    ports: req.ports,
                    by: c.id,
                });
            }
        }
        let mut on_capture: HashMap<IpAddr, Vec<&Circuit>> = HashMap::new();
        let mut aliases_used: HashSet<(&str, IpAddr)> = HashSet::new();
        for c in &live {
            on_capture.entry(c.capture).or_default().push(c);
            aliases_used.insert((c.demux.as_str(), c.alias));
        }
        // The alias for a capture address: the one its live circuits share, or the
        // demux pool's first free one of the same address family.
        let alias_for = |agg: &Aggregator, capture: IpAddr| -> Option<IpAddr> {
            if let Some(c) = on_capture.get(&capture).and_then(|cs| cs.first()) {
                return Some(c.alias);
            }
            inv.demux(&agg.demux)?.aliases.iter().copied().find(|a| {
                a.is_ipv4() == capture.is_ipv4()
                    && !aliases_used.contains(&(agg.demux.as_str(), *a))
            })
        };
        // None when the capture address can take the request, else the holder.
        let conflict = |capture: IpAddr| -> Option<&Circuit> {
            on_capture.get(&capture)?.iter().copied().find(|c| {
                req.mode == Mode::Address
                    || c.mode == Mode::Address
                    || (c.protocol == req.protocol && c.ports.overlaps(&req.ports))
            })
        };

        if let Some(capture) = req.capture {
            let (agg, line) = inv
                .capture(capture)
                .ok_or(CircuitError::UnknownCapture(capture))?;
            let outside = req.region.as_ref().is_some_and(|r| *r != agg.region)
                || req.pop.as_ref().is_some_and(|p| *p != agg.pop);
            if outside {
                return Err(CircuitError::CaptureElsewhere {
                    capture,
                    pop: agg.pop.clone(),
                    region: agg.region.clone(),
                });
            }
            let line_id = LineId {
                node: agg.node.clone(),
                line: line.name.clone(),
            };
            if !self.is_up(&line_id) {
                return Err(CircuitError::LineDown {
                    capture,
                    line: line_id,
                });
            }
            if let Some(holder) = conflict(capture) {
                let what = match req.mode {
                    Mode::Address => "in address mode".to_string(),
                    Mode::Port => format!("{} port(s) {}", protocol_name(req.protocol), req.ports),
                };
                return Err(CircuitError::CaptureTaken {
                    capture,
                    what,
                    by: holder.id,
                });
            }
            let alias = alias_for(agg, capture)
                .ok_or_else(|| CircuitError::AliasesExhausted(agg.demux.clone()))?;
            return Ok(Placement {
                aggregator: agg,
                line,
                capture,
                alias,
            });
        }

        let pops = self.pops_for(inv, req)?;
        // Port mode packs circuits onto capture addresses already in port mode first,
        // which keeps whole addresses (and aliases) free for address mode.
        let passes: &[bool] = match req.mode {
            Mode::Port => &[true, false],
            Mode::Address => &[false],
        };
        let mut alias_short: Option<NodeId> = None;
        for &shared in passes {
            for pop in &pops {
                for agg in inv.aggregators.iter().filter(|a| a.pop == *pop) {
                    for line in &agg.lines {
                        if !self.is_up(&LineId {
                            node: agg.node.clone(),
                            line: line.name.clone(),
                        }) {
                            continue;
                        }
                        for &capture in &line.captures {
                            if on_capture.contains_key(&capture) != shared
                                || conflict(capture).is_some()
                            {
                                continue;
                            }
                            match alias_for(agg, capture) {
                                Some(alias) => {
                                    return Ok(Placement {
                                        aggregator: agg,
                                        line,
                                        capture,
                                        alias,
                                    })
                                }
                                None => alias_short = Some(agg.demux.clone()),
                            }
                        }
                    }
                }
            }
        }
        if let Some(demux) = alias_short {
            return Err(CircuitError::AliasesExhausted(demux));
        }
        let scope = match (&req.pop, &req.region) {
            (Some(p), _) => format!("POP {p:?} or its region"),
            (None, Some(r)) => format!("region {r:?}"),
            (None, None) => "any region".to_string(),
        };
        let what = match req.mode {
            Mode::Address => "an address-mode circuit".to_string(),
            Mode::Port => format!(
                "{} port(s) {} in port mode",
                protocol_name(req.protocol),
                req.ports
            ),
        };
        Err(CircuitError::Exhausted { scope, what })
    }

    /// POPs to search, preferred first.
    fn pops_for(
        &self,
        inv: &Inventory,
        req: &ActivateRequest,
    ) -> Result<Vec<String>, CircuitError> {
        if let Some(region) = &req.region {
            if !inv.regions.contains(region) {
                return Err(CircuitError::UnknownRegion(region.clone()));
            }
        }
        let region = match &req.pop {
            Some(p) => {
                let pop = inv
                    .pop(p)
                    .ok_or_else(|| CircuitError::UnknownPop(p.clone()))?;
                if let Some(r) = &req.region {
                    if *r != pop.region {
                        return Err(CircuitError::PopNotInRegion {
                            pop: p.clone(),
                            region: r.clone(),
                            actual: pop.region.clone(),
                        });
                    }
                }
                Some(pop.region.clone())
            }
            None => req.region.clone(),
        };
        let mut pops: Vec<String> = req.pop.iter().cloned().collect();
        for p in &inv.pops {
            if region.as_ref().is_none_or(|r| *r == p.region) && !pops.contains(&p.name) {
                pops.push(p.name.clone());
            }
        }
        Ok(pops)
    }

    /// Completes an activation: `Activating -> Active`. Refused if the circuit's line
    /// went down meanwhile (the caller then aborts it).
    pub fn confirm(&mut self, id: CircuitId) -> Result<(), CircuitError> {
        let c = self.circuits.get(&id).ok_or(CircuitError::NotFound(id))?;
        if c.state != CircuitState::Activating {
            return Err(CircuitError::WrongState {
                id,
                state: c.state,
                why: "only an activating circuit can be confirmed",
            });
        }
        let line = c.line_id();
        if !self.is_up(&line) {
            return Err(CircuitError::LineDown {
                capture: c.capture,
                line,
            });
        }
        if let Some(c) = self.touch(id) {
            c.state = CircuitState::Active;
        }
        Ok(())
    }

    /// Records the generation that carried an active circuit everywhere.
    pub fn set_generation(&mut self, id: CircuitId, generation: u64) {
        if let Some(c) = self.touch(id) {
            c.generation = generation;
        }
    }

    /// Rolls back an activation that failed (an `Activating` circuit, or an `Active` one
    /// whose aggregator never acknowledged it): the circuit is forgotten (its id is not
    /// reused), and a bounced circuit it was replacing is left without a replacement.
    pub fn abort(&mut self, id: CircuitId) -> Option<Circuit> {
        if !matches!(
            self.circuits.get(&id)?.state,
            CircuitState::Activating | CircuitState::Active
        ) {
            return None;
        }
        self.dirty_circuits.insert(id);
        let c = self.circuits.remove(&id)?;
        if let Some(old) = c.replaces {
            let key = c.idempotency_key.clone();
            if let Some(o) = self.touch(old) {
                o.replaced_by = None;
                o.idempotency_key = key;
            }
        }
        Some(c)
    }

    /// Starts a release. An active circuit becomes `Releasing` (its aggregator entry
    /// goes first); a bounced one is released at once; a released one is returned as it
    /// is, so a retried release succeeds.
    pub fn begin_release(&mut self, id: CircuitId) -> Result<Release, CircuitError> {
        let c = self.circuits.get(&id).ok_or(CircuitError::NotFound(id))?;
        match c.state {
            CircuitState::Active => {
                if let Some(c) = self.touch(id) {
                    c.state = CircuitState::Releasing;
                }
                Ok(Release::Started)
            }
            CircuitState::Bounced => {
                let c = self.touch(id).ok_or(CircuitError::NotFound(id))?;
                c.state = CircuitState::Released;
                Ok(Release::Released(c.clone()))
            }
            CircuitState::Released => Ok(Release::AlreadyReleased(c.clone())),
            CircuitState::Activating | CircuitState::Releasing => Err(CircuitError::WrongState {
                id,
                state: c.state,
                why: "wait for the step in progress to finish",
            }),
        }
    }

    /// Completes a release: `Releasing -> Released`.
    pub fn finish_release(&mut self, id: CircuitId) -> Option<&Circuit> {
        let c = self.touch(id)?;
        if c.state == CircuitState::Releasing {
            c.state = CircuitState::Released;
        }
        Some(c)
    }

    /// A line went down: its active circuits bounce, and each gets a replacement from
    /// the available capture addresses of its region (now `Activating`) if there is one.
    pub fn line_down(&mut self, inv: &Inventory, line: &LineId, reason: &str) -> Vec<Bounce> {
        self.mark_down(line, reason);
        let bounced: Vec<CircuitId> = self
            .circuits
            .values()
            .filter(|c| {
                c.state == CircuitState::Active && c.aggregator == line.node && c.line == line.line
            })
            .map(|c| c.id)
            .collect();
        for &id in &bounced {
            if let Some(c) = self.touch(id) {
                c.state = CircuitState::Bounced;
                c.reason = Some(reason.to_string());
            }
        }
        // Every bounced circuit first, so that replacements see their ports free.
        bounced
            .into_iter()
            .map(|old| Bounce {
                old,
                replacement: self.replace(inv, old),
            })
            .collect()
    }

    fn replace(&mut self, inv: &Inventory, old: CircuitId) -> Result<CircuitId, CircuitError> {
        let c = self.circuits.get(&old).ok_or(CircuitError::NotFound(old))?;
        let req = ActivateRequest {
            region: Some(c.region.clone()),
            pop: Some(c.pop.clone()),
            protocol: c.protocol,
            ports: c.ports,
            mode: c.mode,
            app_host: c.app_host,
            idempotency_key: c.idempotency_key.clone(),
            capture: None,
        };
        let new = self.start(inv, &req, Some(old))?;
        if let Some(o) = self.touch(old) {
            o.replaced_by = Some(new);
            // The key follows the circuit the application now holds.
            o.idempotency_key = None;
        }
        Ok(new)
    }

    /// Marks a line down without bouncing anything yet: when several lines go down at
    /// once, mark them all first so that no replacement lands on one of them.
    pub fn mark_down(&mut self, line: &LineId, reason: &str) {
        if !self.down.contains_key(line) {
            self.down.insert(line.clone(), reason.to_string());
            self.dirty_lines.insert(line.clone());
        }
    }

    /// A line came back: its capture addresses return to the pool. Returns false if it
    /// was not down.
    pub fn line_up(&mut self, line: &LineId) -> bool {
        let was_down = self.down.remove(line).is_some();
        if was_down {
            self.dirty_lines.insert(line.clone());
        }
        was_down
    }

    /// After a restart: activations that were in flight are rolled back (their callers
    /// never got an answer), releases in flight are completed, and circuits whose
    /// aggregator, line, demux or remux left the inventory bounce. Returns what changed.
    pub fn recover(&mut self, inv: &Inventory) -> Vec<String> {
        let mut notes = Vec::new();
        let ids: Vec<CircuitId> = self.circuits.keys().copied().collect();
        for id in ids {
            let Some(c) = self.circuits.get(&id) else {
                continue;
            };
            match c.state {
                CircuitState::Activating => {
                    self.abort(id);
                    notes.push(format!(
                        "circuit {id}: activation was in flight, rolled back"
                    ));
                    continue;
                }
                CircuitState::Releasing => {
                    self.finish_release(id);
                    notes.push(format!("circuit {id}: release was in flight, completed"));
                    continue;
                }
                _ => {}
            }
            if c.state != CircuitState::Active {
                continue;
            }
            let placed = inv.capture(c.capture).is_some_and(|(a, l)| {
                a.node == c.aggregator && l.name == c.line && a.demux == c.demux
            }) && inv.app_host(c.app_host).is_some_and(|h| h.remux == c.remux)
                && inv
                    .demux(&c.demux)
                    .is_some_and(|d| d.aliases.contains(&c.alias));
            if !placed {
                if let Some(c) = self.touch(id) {
                    c.state = CircuitState::Bounced;
                    c.reason = Some("its place left the inventory".into());
                }
                notes.push(format!(
                    "circuit {id}: its place left the inventory, bounced"
                ));
            }
        }
        let gone: Vec<LineId> = self
            .down
            .keys()
            .filter(|l| {
                !inv.aggregator(&l.node)
                    .is_some_and(|a| a.lines.iter().any(|x| x.name == l.line))
            })
            .cloned()
            .collect();
        for l in gone {
            self.line_up(&l);
        }
        notes
    }
}

/// The protocol's lowercase name.
pub fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Udp => "udp",
        Protocol::Tcp => "tcp",
    }
}

fn check_request(req: &ActivateRequest, max_port_range: u16) -> Result<(), CircuitError> {
    let r = req.ports;
    if r.first > r.last {
        return Err(CircuitError::Invalid(format!(
            "port range {}-{} ends before it starts",
            r.first, r.last
        )));
    }
    if r.first == 0 && !(req.mode == Mode::Address && r.is_any()) {
        return Err(CircuitError::Invalid(
            "port 0: a port is required (address mode may leave it out)".into(),
        ));
    }
    if req.mode == Mode::Port && r.count() > u32::from(max_port_range) {
        return Err(CircuitError::Invalid(format!(
            "{} ports asked for; at most {max_port_range} per circuit",
            r.count()
        )));
    }
    if let Some(k) = &req.idempotency_key {
        if k.is_empty() || k.len() > 256 {
            return Err(CircuitError::Invalid(
                "idempotency key must be 1 to 256 bytes".into(),
            ));
        }
    }
    Ok(())
}

fn same_request(c: &Circuit, req: &ActivateRequest) -> bool {
    c.mode == req.mode
        && c.protocol == req.protocol
        && c.ports == req.ports
        && c.app_host == req.app_host
        && req.region.as_ref().is_none_or(|r| *r == c.region)
        && req
            .capture
            .is_none_or(|a| a == c.capture || c.replaces.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::Config;

    fn inv() -> Inventory {
        Config::parse("keeper.toml", include_str!("../examples/keeper.toml"))
            .unwrap()
            .inventory
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn port_req(port: u16) -> ActivateRequest {
        ActivateRequest {
            region: Some("eu".into()),
            pop: None,
            protocol: Protocol::Tcp,
            ports: PortRange::single(port),
            mode: Mode::Port,
            app_host: ip("198.19.0.2"),
            idempotency_key: None,
            capture: None,
        }
    }

    fn addr_req() -> ActivateRequest {
        ActivateRequest {
            mode: Mode::Address,
            ..port_req(4000)
        }
    }

    fn started(a: Activation) -> CircuitId {
        match a {
            Activation::Started(id) => id,
            other => panic!("expected a new circuit, got {other:?}"),
        }
    }

    /// Activates and confirms.
    fn up(s: &mut Circuits, inv: &Inventory, req: &ActivateRequest) -> Circuit {
        let id = started(s.activate(inv, 256, req).unwrap());
        s.confirm(id).unwrap();
        s.get(id).unwrap().clone()
    }

    fn line(node: &str, line: &str) -> LineId {
        LineId {
            node: node.into(),
            line: line.into(),
        }
    }

    #[test]
    fn activate_allocates_in_inventory_order() {
        let inv = inv();
        let mut s = Circuits::new();
        let id = started(s.activate(&inv, 256, &addr_req()).unwrap());
        let c = s.get(id).unwrap();
        assert_eq!(c.state, CircuitState::Activating);
        assert_eq!((c.capture, c.alias), (ip("203.0.113.1"), ip("198.18.0.1")));
        assert_eq!(
            (c.pop.as_str(), c.aggregator.as_str(), c.line.as_str()),
            ("ams", "pop-ams-1", "line0")
        );
        assert_eq!((c.demux.as_str(), c.remux.as_str()), ("dc-1", "dc-1"));
        assert_eq!(c.bind_address(), ip("203.0.113.1"));
        s.confirm(id).unwrap();
        assert_eq!(s.get(id).unwrap().state, CircuitState::Active);

        // An address-mode circuit holds the whole address: the next one gets the next.
        let c2 = up(
            &mut s,
            &inv,
            &ActivateRequest {
                app_host: ip("198.19.0.3"),
                ..addr_req()
            },
        );
        assert_eq!(
            (c2.capture, c2.alias),
            (ip("203.0.113.2"), ip("198.18.0.2"))
        );
        let (dirty, _) = s.take_dirty();
        assert_eq!(dirty, vec![1, 2]);
    }

    #[test]
    fn port_mode_shares_a_capture_address() {
        let inv = inv();
        let mut s = Circuits::new();
        let a = up(&mut s, &inv, &port_req(4000));
        let b = up(
            &mut s,
            &inv,
            &ActivateRequest {
                app_host: ip("198.19.0.3"),
                ..port_req(4000)
            },
        );
        let c = up(
            &mut s,
            &inv,
            &ActivateRequest {
                protocol: Protocol::Udp,
                ..port_req(4000)
            },
        );
        // Same port on another app host cannot share (the capture address+port is
        // taken), a different protocol can.
        assert_eq!(a.capture, ip("203.0.113.1"));
        assert_eq!(b.capture, ip("203.0.113.2"));
        assert_eq!(c.capture, a.capture);
        assert_eq!(c.alias, a.alias);
        assert_eq!(a.bind_address(), ip("198.19.0.2"));
    }

    #[test]
    fn conflicting_activations_are_refused() {
        let inv = inv();
        let mut s = Circuits::new();
        let a = up(
            &mut s,
            &inv,
            &ActivateRequest {
                ports: PortRange {
                    first: 4000,
                    last: 4010,
                },
                ..port_req(0)
            },
        );
        // Same app host, protocol and an overlapping port: the remux could not tell.
        let e = s.activate(&inv, 256, &port_req(4005)).unwrap_err();
        assert_eq!(
            e,
            CircuitError::AppHostPortTaken {
                app_host: ip("198.19.0.2"),
                protocol: "tcp".into(),
                ports: PortRange::single(4005),
                by: a.id
            }
        );
        // The same capture address and port twice.
        let req = ActivateRequest {
            app_host: ip("198.19.0.3"),
            capture: Some(a.capture),
            ..port_req(4010)
        };
        assert_eq!(
            s.activate(&inv, 256, &req).unwrap_err().to_string(),
            "capture address 203.0.113.1 tcp port(s) 4010 is already held by circuit 1"
        );
        // Address mode wants the whole address.
        let req = ActivateRequest {
            capture: Some(a.capture),
            ..addr_req()
        };
        assert!(matches!(
            s.activate(&inv, 256, &req),
            Err(CircuitError::CaptureTaken { by: 1, .. })
        ));
        // Unknowns.
        let req = ActivateRequest {
            region: Some("mars".into()),
            ..addr_req()
        };
        assert_eq!(
            s.activate(&inv, 256, &req).unwrap_err(),
            CircuitError::UnknownRegion("mars".into())
        );
        let req = ActivateRequest {
            app_host: ip("198.19.9.9"),
            ..addr_req()
        };
        assert_eq!(
            s.activate(&inv, 256, &req).unwrap_err(),
            CircuitError::UnknownAppHost(ip("198.19.9.9"))
        );
        let req = ActivateRequest {
            pop: Some("nyc".into()),
            ..addr_req()
        };
        assert!(matches!(
            s.activate(&inv, 256, &req),
            Err(CircuitError::PopNotInRegion { .. })
        ));
        let req = ActivateRequest {
            ports: PortRange {
                first: 1,
                last: 300,
            },
            ..port_req(0)
        };
        assert!(matches!(
            s.activate(&inv, 256, &req),
            Err(CircuitError::Invalid(_))
        ));
        // Nothing was allocated by the refusals.
        assert_eq!(s.iter().count(), 1);
    }

    #[test]
    fn exhausted_pool() {
        let inv = inv();
        let mut s = Circuits::new();
        // nyc has 203.0.113.64/30: two usable addresses.
        let req = ActivateRequest {
            region: Some("us".into()),
            ..addr_req()
        };
        let a = up(&mut s, &inv, &req);
        let b = up(
            &mut s,
            &inv,
            &ActivateRequest {
                app_host: ip("198.19.0.3"),
                ..req.clone()
            },
        );
        assert_eq!(
            (a.capture, b.capture),
            (ip("203.0.113.65"), ip("203.0.113.66"))
        );
        let e = s.activate(&inv, 256, &req).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no capture address available in region \"us\" for an address-mode circuit"
        );
        // Releasing one returns it to the pool.
        assert_eq!(s.begin_release(a.id).unwrap(), Release::Started);
        s.finish_release(a.id);
        let c = up(&mut s, &inv, &req);
        assert_eq!(c.capture, a.capture);
    }

    #[test]
    fn release_and_double_release() {
        let inv = inv();
        let mut s = Circuits::new();
        let a = up(&mut s, &inv, &addr_req());
        assert_eq!(s.begin_release(a.id).unwrap(), Release::Started);
        assert_eq!(s.get(a.id).unwrap().state, CircuitState::Releasing);
        // A release in progress cannot be started again.
        assert!(matches!(
            s.begin_release(a.id),
            Err(CircuitError::WrongState { .. })
        ));
        assert_eq!(
            s.finish_release(a.id).unwrap().state,
            CircuitState::Released
        );
        // A retried release answers with the released circuit.
        match s.begin_release(a.id).unwrap() {
            Release::AlreadyReleased(c) => assert_eq!(c.state, CircuitState::Released),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.begin_release(99).unwrap_err(), CircuitError::NotFound(99));
    }

    #[test]
    fn idempotent_retries() {
        let inv = inv();
        let mut s = Circuits::new();
        let req = ActivateRequest {
            idempotency_key: Some("job-7".into()),
            ..port_req(5000)
        };
        let id = started(s.activate(&inv, 256, &req).unwrap());
        // While it is activating a retry is told to come back.
        assert_eq!(
            s.activate(&inv, 256, &req).unwrap_err(),
            CircuitError::InProgress(id)
        );
        s.confirm(id).unwrap();
        match s.activate(&inv, 256, &req).unwrap() {
            Activation::Existing(c) => assert_eq!(c.id, id),
            other => panic!("{other:?}"),
        }
        // The same key for something else is a mistake.
        let other = ActivateRequest {
            ports: PortRange::single(5001),
            ..req.clone()
        };
        assert_eq!(
            s.activate(&inv, 256, &other).unwrap_err(),
            CircuitError::KeyMismatch {
                key: "job-7".into(),
                id
            }
        );
        assert_eq!(s.iter().count(), 1);
        // After a release the key is free again.
        s.begin_release(id).unwrap();
        s.finish_release(id);
        assert!(matches!(
            s.activate(&inv, 256, &req).unwrap(),
            Activation::Started(2)
        ));
    }

    #[test]
    fn bounce_with_replacement_and_line_recovery() {
        let inv = inv();
        let mut s = Circuits::new();
        let a = up(
            &mut s,
            &inv,
            &ActivateRequest {
                idempotency_key: Some("k".into()),
                ..port_req(4000)
            },
        );
        let b = up(
            &mut s,
            &inv,
            &ActivateRequest {
                protocol: Protocol::Udp,
                ..port_req(53)
            },
        );
        assert_eq!(a.capture, b.capture);
        s.take_dirty();

        let bounces = s.line_down(&inv, &line("pop-ams-1", "line0"), "link down");
        assert_eq!(bounces.len(), 2);
        let ra = *bounces[0].replacement.as_ref().unwrap();
        let rb = *bounces[1].replacement.as_ref().unwrap();
        let (old, new) = (s.get(a.id).unwrap(), s.get(ra).unwrap());
        assert_eq!(old.state, CircuitState::Bounced);
        assert_eq!(old.reason.as_deref(), Some("link down"));
        assert_eq!(old.replaced_by, Some(ra));
        assert_eq!(new.state, CircuitState::Activating);
        assert_eq!(new.replaces, Some(a.id));
        // Same POP, next line; both replacements share the new address again.
        assert_eq!(
            (new.line.as_str(), new.capture),
            ("line1", ip("203.0.113.17"))
        );
        assert_eq!(s.get(rb).unwrap().capture, new.capture);
        // The idempotency key followed the replacement.
        assert_eq!(new.idempotency_key.as_deref(), Some("k"));
        assert_eq!(old.idempotency_key, None);
        let (_, lines) = s.take_dirty();
        assert_eq!(lines, vec![line("pop-ams-1", "line0")]);

        // While the line is down its addresses are not handed out.
        let c = up(
            &mut s,
            &inv,
            &ActivateRequest {
                pop: Some("ams".into()),
                ..addr_req()
            },
        );
        assert_eq!(c.line, "line1");
        assert!(s.line_up(&line("pop-ams-1", "line0")));
        assert!(!s.line_up(&line("pop-ams-1", "line0")));
        let d = up(
            &mut s,
            &inv,
            &ActivateRequest {
                pop: Some("ams".into()),
                app_host: ip("198.19.0.3"),
                ..addr_req()
            },
        );
        assert_eq!(d.capture, ip("203.0.113.1"));
        // Bounced circuits stay bounced and are released without a push.
        assert!(matches!(
            s.begin_release(a.id).unwrap(),
            Release::Released(Circuit {
                state: CircuitState::Released,
                ..
            })
        ));
    }

    #[test]
    fn bounce_without_replacement() {
        let inv = inv();
        let mut s = Circuits::new();
        let req = ActivateRequest {
            region: Some("us".into()),
            ..addr_req()
        };
        let a = up(&mut s, &inv, &req);
        let bounces = s.line_down(&inv, &line("pop-nyc-1", "line0"), "heartbeats lost");
        assert_eq!(bounces.len(), 1);
        assert_eq!(bounces[0].old, a.id);
        assert!(matches!(
            bounces[0].replacement,
            Err(CircuitError::Exhausted { .. })
        ));
        assert_eq!(s.get(a.id).unwrap().replaced_by, None);
        // A circuit activating on a line that went down is not confirmed.
        s.line_up(&line("pop-nyc-1", "line0"));
        let id = started(
            s.activate(
                &inv,
                256,
                &ActivateRequest {
                    app_host: ip("198.19.0.3"),
                    ..req
                },
            )
            .unwrap(),
        );
        s.line_down(&inv, &line("pop-nyc-1", "line0"), "link down");
        assert!(matches!(s.confirm(id), Err(CircuitError::LineDown { .. })));
        assert_eq!(s.abort(id).unwrap().id, id);
        assert!(s.get(id).is_none());
    }

    #[test]
    fn aborting_a_replacement_leaves_the_bounced_circuit_unreplaced() {
        let inv = inv();
        let mut s = Circuits::new();
        let a = up(
            &mut s,
            &inv,
            &ActivateRequest {
                idempotency_key: Some("k".into()),
                ..addr_req()
            },
        );
        let bounces = s.line_down(&inv, &line("pop-ams-1", "line0"), "link down");
        let r = *bounces[0].replacement.as_ref().unwrap();
        s.abort(r);
        let old = s.get(a.id).unwrap();
        assert_eq!(
            (old.replaced_by, old.idempotency_key.as_deref()),
            (None, Some("k"))
        );
    }

    #[test]
    fn recover_after_restart() {
        let inv = inv();
        let mut s = Circuits::new();
        let a = up(&mut s, &inv, &addr_req());
        let b = up(
            &mut s,
            &inv,
            &ActivateRequest {
                app_host: ip("198.19.0.3"),
                ..addr_req()
            },
        );
        let c = started(s.activate(&inv, 256, &port_req(80)).unwrap());
        s.begin_release(b.id).unwrap();
        s.line_down(&inv, &line("pop-fra-1", "line0"), "link down");

        // What the store would hand back.
        let mut restored =
            Circuits::restore(s.iter().cloned(), s.down_lines().clone(), s.next_id());
        let notes = restored.recover(&inv);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert_eq!(restored.get(a.id).unwrap().state, CircuitState::Active);
        assert_eq!(restored.get(b.id).unwrap().state, CircuitState::Released);
        assert!(restored.get(c).is_none());
        assert!(!restored.is_up(&line("pop-fra-1", "line0")));
        // Ids are never reused.
        assert_eq!(restored.next_id(), c + 1);
    }
}
