//! The keeper itself: circuit state, the forwarders' published table sets and their
//! acknowledgements, and the two gRPC services over them ([`apps`] for applications,
//! [`forwarders`] for forwarders).
//!
//! Every step follows one pattern, under one short lock and without awaiting inside it:
//! change [`Circuits`], compile every node's tables, give the nodes whose tables changed
//! the next generation, commit all of it to the [`Store`], then publish the new table
//! sets to the forwarder streams. Waiting for acknowledgements happens outside the lock,
//! so a slow forwarder delays only the activations that go through it.

pub mod apps;
pub mod forwarders;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tarp_api::grpc::v1::circuits_server::CircuitsServer;
use tarp_api::grpc::v1::forwarders_server::ForwardersServer;
use tarp_api::grpc::ProtoError;
use tarp_api::Rules;
use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::JoinHandle;
use tonic::{Code, Status};
use tracing::{debug, error, info, warn};

pub use tarp_api::circuit::ListFilter;

use crate::circuits::{
    ActivateRequest, Activation, Circuit, CircuitError, CircuitEvent, CircuitId, CircuitState,
    Circuits, EventKind, LineId, Release,
};
use crate::compiler::compile;
use crate::inventory::{Config, Inventory, NodeId, Role, Settings};
use crate::store::{Batch, Store, StoreError, Table};
use crate::transport::{ListenAddr, Listener, Socket, SocketFileGuard};

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
    /// The database failed; the keeper stops taking changes.
    #[error(transparent)]
    Store(#[from] StoreError),
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
                | CircuitError::WrongState { .. } => Code::FailedPrecondition,
                CircuitError::Exhausted { .. } | CircuitError::AliasesExhausted(_) => {
                    Code::ResourceExhausted
                }
                CircuitError::InProgress(_) => Code::Unavailable,
            },
            KeeperError::Proto(_) => Code::InvalidArgument,
            KeeperError::Nack { .. } => Code::Aborted,
            KeeperError::AckTimeout { .. } => Code::DeadlineExceeded,
            KeeperError::RolledBack(inner) => inner.code(),
            KeeperError::UnknownNode(_) => Code::NotFound,
            KeeperError::WrongRole { .. } => Code::FailedPrecondition,
            KeeperError::Store(_) => Code::Internal,
            KeeperError::Unavailable(_) => Code::Unavailable,
        }
    }
}

impl From<KeeperError> for Status {
    fn from(e: KeeperError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

/// A table set as published to a forwarder's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Its generation.
    pub generation: u64,
    /// The tables.
    pub rules: Arc<Rules>,
}

/// What a forwarder last said about the table sets it was sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckState {
    /// The generation it runs.
    pub acked: u64,
    /// The last generation it rejected, and why.
    pub nack: Option<(u64, String)>,
    /// Whether it has a stream open.
    pub connected: bool,
}

#[derive(Debug)]
struct Liveness {
    last_seen: Instant,
    /// The aggregator's lines were bounced for silence.
    lost: bool,
    /// Link state of its ports as last reported.
    ports: BTreeMap<String, bool>,
    /// Bumped by every hello; an older stream of the node is superseded.
    session: u64,
}

struct NodeHandle {
    roles: BTreeSet<Role>,
    published: watch::Sender<Published>,
    acks: watch::Sender<AckState>,
    liveness: Mutex<Liveness>,
}

struct Core {
    circuits: Circuits,
    store: Option<Store>,
    generation: u64,
    tables: BTreeMap<NodeId, Table>,
    failed: Option<String>,
}

/// What a forwarder says when it opens its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Its node id.
    pub node: NodeId,
    /// The roles it plays (each must be one the inventory gives it).
    pub roles: Vec<Role>,
    /// Its ports and their link state.
    pub ports: Vec<(String, bool)>,
    /// The generation it runs (0: none).
    pub last_generation: u64,
}

/// The circuit keeper.
pub struct Keeper {
    settings: Settings,
    inv: Arc<Inventory>,
    core: Mutex<Core>,
    nodes: BTreeMap<NodeId, NodeHandle>,
    events: broadcast::Sender<CircuitEvent>,
    closing: watch::Sender<bool>,
    /// Activations and releases under way (shutdown lets them finish).
    busy: watch::Sender<usize>,
}

/// Counts one activation or release under way while it lives.
struct Busy<'a>(&'a watch::Sender<usize>);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

impl std::fmt::Debug for Keeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keeper")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Keeper {
    /// Opens the keeper on its database: loads the circuits, finishes or rolls back
    /// what a crash interrupted, and recompiles every table set (a node whose tables
    /// differ from the stored ones gets a new generation).
    pub fn open(settings: Settings, inv: Inventory, store: Store) -> Result<Keeper, KeeperError> {
        let loaded = store.load()?;
        let mut circuits =
            Circuits::restore(loaded.circuits, loaded.down_lines, loaded.next_circuit);
        for note in circuits.recover(&inv) {
            info!("{note}");
        }
        let started = Instant::now();
        let nodes = inv
            .nodes
            .iter()
            .map(|(id, node)| {
                let table = loaded.tables.get(id);
                let published = Published {
                    generation: table.map_or(0, |t| t.generation),
                    rules: Arc::new(table.map(|t| t.rules.clone()).unwrap_or_default()),
                };
                let handle = NodeHandle {
                    roles: node.roles.clone(),
                    published: watch::Sender::new(published),
                    acks: watch::Sender::new(AckState::default()),
                    liveness: Mutex::new(Liveness {
                        last_seen: started,
                        lost: false,
                        ports: BTreeMap::new(),
                        session: 0,
                    }),
                };
                (id.clone(), handle)
            })
            .collect();
        let core = Core {
            circuits,
            store: Some(store),
            generation: loaded.generation,
            tables: loaded.tables,
            failed: None,
        };
        let keeper = Keeper {
            settings,
            inv: Arc::new(inv),
            core: Mutex::new(core),
            nodes,
            events: broadcast::channel(1024).0,
            closing: watch::Sender::new(false),
            busy: watch::Sender::new(0),
        };
        {
            let mut core = keeper.lock()?;
            keeper.commit(&mut core, &[])?;
            info!(
                generation = core.generation,
                circuits = core.circuits.iter().count(),
                "keeper state loaded"
            );
        }
        Ok(keeper)
    }

    /// The keeper's settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The inventory.
    pub fn inventory(&self) -> &Inventory {
        &self.inv
    }

    fn lock(&self) -> Result<MutexGuard<'_, Core>, KeeperError> {
        let core = self
            .core
            .lock()
            .map_err(|_| KeeperError::Unavailable("internal state lock poisoned".into()))?;
        if let Some(why) = &core.failed {
            return Err(KeeperError::Unavailable(why.clone()));
        }
        Ok(core)
    }

    /// Compiles, stamps changed table sets with the next generation, commits everything
    /// the step changed, then publishes. `confirmed` circuits get the generation that
    /// carries them to every node of their path.
    fn commit(&self, core: &mut Core, confirmed: &[CircuitId]) -> Result<(), KeeperError> {
        let compiled = compile(&self.inv, core.circuits.iter());
        let changed: Vec<NodeId> = compiled
            .iter()
            .filter(|(node, rules)| core.tables.get(*node).map(|t| &t.rules) != Some(*rules))
            .map(|(node, _)| node.clone())
            .collect();
        let mut compiled = compiled;
        if !changed.is_empty() {
            core.generation += 1;
            for node in &changed {
                let rules = compiled.remove(node).unwrap_or_default();
                core.tables.insert(
                    node.clone(),
                    Table {
                        generation: core.generation,
                        rules,
                    },
                );
            }
        }
        for &id in confirmed {
            let generation = core.circuits.get(id).map_or(0, |c| {
                c.path()
                    .iter()
                    .filter_map(|n| core.tables.get(n))
                    .map(|t| t.generation)
                    .max()
                    .unwrap_or(0)
            });
            core.circuits.set_generation(id, generation);
        }
        let (dirty_circuits, dirty_lines) = core.circuits.take_dirty();
        let mut batch = Batch {
            next_circuit: core.circuits.next_id(),
            generation: core.generation,
            ..Default::default()
        };
        for id in &dirty_circuits {
            match core.circuits.get(*id) {
                Some(c) => batch.put_circuits.push(c),
                None => batch.delete_circuits.push(*id),
            }
        }
        let down = core.circuits.down_lines();
        for line in &dirty_lines {
            match down.get_key_value(line) {
                Some((l, why)) => batch.put_down_lines.push((l, why.as_str())),
                None => batch.delete_down_lines.push(line),
            }
        }
        for node in &changed {
            if let Some(t) = core.tables.get_key_value(node) {
                batch.put_tables.push(t);
            }
        }
        let store = core
            .store
            .as_ref()
            .ok_or_else(|| KeeperError::Unavailable("keeper is shut down".into()))?;
        if let Err(e) = store.commit(&batch) {
            // Memory is now ahead of the database: refuse everything until a restart
            // reloads the last committed state.
            error!("{e}; refusing further changes until restarted");
            core.failed = Some(format!("{e}; restart the keeper"));
            return Err(e.into());
        }
        for node in &changed {
            if let (Some(handle), Some(t)) = (self.nodes.get(node), core.tables.get(node)) {
                debug!(node, generation = t.generation, "publishing table set");
                handle.published.send_replace(Published {
                    generation: t.generation,
                    rules: Arc::new(t.rules.clone()),
                });
            }
        }
        Ok(())
    }

    /// (node, generation) pairs to wait for: the current table generation of each node.
    fn targets(core: &Core, nodes: impl IntoIterator<Item = NodeId>) -> Vec<(NodeId, u64)> {
        let mut out: Vec<(NodeId, u64)> = Vec::new();
        for node in nodes {
            if out.iter().any(|(n, _)| *n == node) {
                continue;
            }
            let generation = core.tables.get(&node).map_or(0, |t| t.generation);
            out.push((node, generation));
        }
        out
    }

    /// Waits until every node runs at least its target generation. A NACK of a
    /// generation at or past the target fails at once; so does the ack timeout.
    async fn wait_acks(&self, targets: &[(NodeId, u64)]) -> Result<(), KeeperError> {
        let waits = targets
            .iter()
            .map(|(node, generation)| self.wait_ack(node, *generation));
        let all = futures_util::future::try_join_all(waits);
        match tokio::time::timeout(self.settings.ack_timeout(), all).await {
            Ok(result) => result.map(|_| ()),
            Err(_) => {
                let (node, generation) = targets
                    .iter()
                    .find(|(n, g)| {
                        self.nodes
                            .get(n)
                            .is_some_and(|h| h.acks.borrow().acked < *g)
                    })
                    .cloned()
                    .unwrap_or_else(|| targets[0].clone());
                let connected = self
                    .nodes
                    .get(&node)
                    .is_some_and(|h| h.acks.borrow().connected);
                Err(KeeperError::AckTimeout {
                    node,
                    generation,
                    waited_ms: self.settings.ack_timeout_ms,
                    connected,
                })
            }
        }
    }

    async fn wait_ack(&self, node: &str, generation: u64) -> Result<(), KeeperError> {
        let Some(handle) = self.nodes.get(node) else {
            return Err(KeeperError::UnknownNode(node.to_string()));
        };
        let mut rx = handle.acks.subscribe();
        loop {
            {
                let state = rx.borrow_and_update();
                if state.acked >= generation {
                    return Ok(());
                }
                if let Some((rejected, detail)) = &state.nack {
                    if *rejected >= generation {
                        return Err(KeeperError::Nack {
                            node: node.to_string(),
                            generation: *rejected,
                            detail: detail.clone(),
                        });
                    }
                }
            }
            if rx.changed().await.is_err() {
                return Err(KeeperError::Unavailable("keeper is shut down".into()));
            }
        }
    }

    fn emit(
        &self,
        kind: EventKind,
        circuit: Circuit,
        replacement: Option<Circuit>,
        reason: Option<String>,
    ) {
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(CircuitEvent {
            kind,
            circuit,
            replacement,
            reason,
        });
    }

    /// Subscribes to circuit events.
    pub fn events(&self) -> broadcast::Receiver<CircuitEvent> {
        self.events.subscribe()
    }

    fn busy(&self) -> Busy<'_> {
        self.busy.send_modify(|n| *n += 1);
        Busy(&self.busy)
    }

    /// Waits, at most `within`, until no activation or release is under way. False
    /// when some still are.
    pub async fn drain(&self, within: Duration) -> bool {
        let mut rx = self.busy.subscribe();
        tokio::time::timeout(within, rx.wait_for(|n| *n == 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Resolves when the keeper starts shutting down.
    pub fn closing(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.closing.subscribe();
        async move {
            loop {
                if *rx.borrow_and_update() {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        }
    }

    /// Activates a circuit: demux and remux first, then the aggregator, each step
    /// answered only once the forwarders acknowledged it. A failure rolls it back.
    pub async fn activate(&self, req: &ActivateRequest) -> Result<Circuit, KeeperError> {
        let _busy = self.busy();
        let (id, targets) = {
            let mut core = self.lock()?;
            let inv = self.inv.clone();
            match core
                .circuits
                .activate(&inv, self.settings.max_port_range, req)?
            {
                Activation::Existing(c) => return Ok(*c),
                Activation::Started(id) => {
                    self.commit(&mut core, &[])?;
                    let c = core.circuits.get(id).ok_or(CircuitError::NotFound(id))?;
                    info!(circuit = id, capture = %c.capture, mode = %c.mode, app_host = %c.app_host, "activating");
                    let dc = vec![c.demux.clone(), c.remux.clone()];
                    (id, Self::targets(&core, dc))
                }
            }
        };
        let circuit = self.complete_activation(id, targets).await?;
        info!(circuit = id, generation = circuit.generation, "active");
        self.emit(EventKind::Activated, circuit.clone(), None, None);
        Ok(circuit)
    }

    /// The rest of an activation once demux and remux have been published.
    async fn complete_activation(
        &self,
        id: CircuitId,
        dc: Vec<(NodeId, u64)>,
    ) -> Result<Circuit, KeeperError> {
        if let Err(e) = self.wait_acks(&dc).await {
            return Err(self.roll_back(id, e));
        }
        let targets = {
            let mut core = self.lock()?;
            if let Err(e) = core.circuits.confirm(id) {
                drop(core);
                return Err(self.roll_back(id, e.into()));
            }
            self.commit(&mut core, &[id])?;
            let agg = core
                .circuits
                .get(id)
                .map(|c| c.aggregator.clone())
                .into_iter();
            Self::targets(&core, agg)
        };
        if let Err(e) = self.wait_acks(&targets).await {
            return Err(self.roll_back(id, e));
        }
        let core = self.lock()?;
        core.circuits
            .get(id)
            .cloned()
            .ok_or_else(|| CircuitError::NotFound(id).into())
    }

    fn roll_back(&self, id: CircuitId, why: KeeperError) -> KeeperError {
        warn!(circuit = id, "activation failed: {why}; rolling back");
        match self.lock() {
            Ok(mut core) => {
                if core.circuits.abort(id).is_some() {
                    if let Err(e) = self.commit(&mut core, &[]) {
                        return e;
                    }
                }
            }
            Err(e) => return e,
        }
        KeeperError::RolledBack(Box::new(why))
    }

    /// Releases a circuit: the aggregator's entry goes first, then demux and remux.
    /// Forwarders that do not answer in time are not waited for (they get the current
    /// tables when they come back). Releasing a released circuit returns it.
    pub async fn release(&self, id: CircuitId) -> Result<Circuit, KeeperError> {
        let _busy = self.busy();
        let targets = {
            let mut core = self.lock()?;
            match core.circuits.begin_release(id)? {
                Release::AlreadyReleased(c) => return Ok(c),
                Release::Released(c) => {
                    self.commit(&mut core, &[])?;
                    drop(core);
                    info!(circuit = id, "released (it had bounced)");
                    self.emit(EventKind::Released, c.clone(), None, None);
                    return Ok(c);
                }
                Release::Started => {
                    self.commit(&mut core, &[])?;
                    let agg = core
                        .circuits
                        .get(id)
                        .map(|c| c.aggregator.clone())
                        .into_iter();
                    Self::targets(&core, agg)
                }
            }
        };
        if let Err(e) = self.wait_acks(&targets).await {
            warn!(circuit = id, "release goes on without the aggregator: {e}");
        }
        let targets = {
            let mut core = self.lock()?;
            core.circuits.finish_release(id);
            self.commit(&mut core, &[])?;
            let c = core.circuits.get(id).ok_or(CircuitError::NotFound(id))?;
            Self::targets(&core, [c.demux.clone(), c.remux.clone()])
        };
        if let Err(e) = self.wait_acks(&targets).await {
            warn!(
                circuit = id,
                "release completed without every DC forwarder's acknowledgement: {e}"
            );
        }
        let circuit = self.get(id)?;
        info!(circuit = id, "released");
        self.emit(EventKind::Released, circuit.clone(), None, None);
        Ok(circuit)
    }

    /// One circuit.
    pub fn get(&self, id: CircuitId) -> Result<Circuit, KeeperError> {
        let core = self.lock()?;
        core.circuits
            .get(id)
            .cloned()
            .ok_or_else(|| CircuitError::NotFound(id).into())
    }

    /// Circuits matching a filter, by id.
    pub fn list(&self, f: &ListFilter) -> Result<Vec<Circuit>, KeeperError> {
        let core = self.lock()?;
        Ok(core
            .circuits
            .iter()
            .filter(|c| f.region.as_ref().is_none_or(|r| *r == c.region))
            .filter(|c| f.pop.as_ref().is_none_or(|p| *p == c.pop))
            .filter(|c| f.app_host.is_none_or(|a| a == c.app_host))
            .filter(|c| match f.state {
                Some(s) => c.state == s,
                None => f.include_released || c.state != CircuitState::Released,
            })
            .cloned()
            .collect())
    }

    /// The table set last published to a node.
    pub fn table(&self, node: &str) -> Option<Table> {
        self.core.lock().ok()?.tables.get(node).cloned()
    }

    /// What a node last acknowledged or rejected.
    pub fn ack_state(&self, node: &str) -> Option<AckState> {
        self.nodes.get(node).map(|h| h.acks.borrow().clone())
    }

    /// Lines changed state: down lines bounce their circuits (replacements are
    /// activated in the background and announced over `Watch`), up lines return to
    /// the pool.
    fn lines_changed(self: &Arc<Self>, changes: Vec<(LineId, bool, String)>) {
        if changes.is_empty() {
            return;
        }
        let mut bounced = Vec::new();
        {
            let Ok(mut core) = self.lock() else { return };
            let was_up: Vec<bool> = changes
                .iter()
                .map(|(line, _, _)| core.circuits.is_up(line))
                .collect();
            for (line, up, reason) in &changes {
                if !*up {
                    core.circuits.mark_down(line, reason);
                }
            }
            for ((line, up, reason), was_up) in changes.iter().zip(was_up) {
                if *up {
                    if core.circuits.line_up(line) {
                        info!(%line, "line up: its capture addresses are back in the pool");
                    }
                } else {
                    let bounces = core.circuits.line_down(&self.inv, line, reason);
                    if was_up {
                        warn!(%line, circuits = bounces.len(), "line down: {reason}");
                    }
                    bounced.extend(bounces.into_iter().map(|b| (b, reason.clone())));
                }
            }
            if let Err(e) = self.commit(&mut core, &[]) {
                error!("recording line changes failed: {e}");
                return;
            }
            for (b, _) in &bounced {
                if let Ok(r) = &b.replacement {
                    if let Some(c) = core.circuits.get(*r) {
                        info!(old = b.old, new = *r, capture = %c.capture, "replacing bounced circuit");
                    }
                }
            }
            bounced = bounced
                .into_iter()
                .map(|(b, reason)| {
                    let reason = match &b.replacement {
                        Ok(_) => reason,
                        Err(e) => format!("{reason}; no replacement: {e}"),
                    };
                    (b, reason)
                })
                .collect();
            // Targets are taken under the same lock as the publication.
            let mut with_targets = Vec::new();
            for (b, reason) in bounced {
                let targets = match &b.replacement {
                    Ok(r) => core
                        .circuits
                        .get(*r)
                        .map(|c| Self::targets(&core, [c.demux.clone(), c.remux.clone()]))
                        .unwrap_or_default(),
                    Err(_) => Vec::new(),
                };
                with_targets.push((b, reason, targets));
            }
            drop(core);
            for (b, reason, targets) in with_targets {
                let keeper = self.clone();
                match b.replacement {
                    Err(_) => {
                        if let Ok(old) = self.get(b.old) {
                            self.emit(EventKind::Bounced, old, None, Some(reason));
                        }
                    }
                    Ok(new) => {
                        tokio::spawn(async move {
                            let _busy = keeper.busy();
                            let result = keeper.complete_activation(new, targets).await;
                            let Ok(old) = keeper.get(b.old) else { return };
                            match result {
                                Ok(c) => {
                                    info!(
                                        old = b.old,
                                        new,
                                        generation = c.generation,
                                        "replacement active"
                                    );
                                    keeper.emit(EventKind::Bounced, old, Some(c), Some(reason));
                                }
                                Err(e) => {
                                    let reason = format!("{reason}; replacement failed: {e}");
                                    keeper.emit(EventKind::Bounced, old, None, Some(reason));
                                }
                            }
                        });
                    }
                }
            }
        }
    }

    /// A forwarder opened its stream. Checks who it is, records what it runs and its
    /// ports' link state, and returns its session number and its table-set channel.
    pub fn hello(
        self: &Arc<Self>,
        hello: &Hello,
    ) -> Result<(u64, watch::Receiver<Published>), KeeperError> {
        let handle = self
            .nodes
            .get(&hello.node)
            .ok_or_else(|| KeeperError::UnknownNode(hello.node.clone()))?;
        for role in &hello.roles {
            if !handle.roles.contains(role) {
                let actual = handle
                    .roles
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(KeeperError::WrongRole {
                    node: hello.node.clone(),
                    role: *role,
                    actual,
                });
            }
        }
        {
            let mut core = self.lock()?;
            let current = core.tables.get(&hello.node).map_or(0, |t| t.generation);
            if hello.last_generation > core.generation {
                // The forwarder runs a generation this keeper never handed out (its
                // database was replaced): move past it so numbers stay unambiguous.
                warn!(
                    node = hello.node,
                    reported = hello.last_generation,
                    "forwarder reports an unknown generation"
                );
                core.generation = hello.last_generation;
                // Forget the node's table so the commit republishes it at the next
                // generation.
                core.tables.remove(&hello.node);
                self.commit(&mut core, &[])?;
            }
            let runs = if hello.last_generation <= current {
                hello.last_generation
            } else {
                0
            };
            handle.acks.send_modify(|s| {
                s.acked = runs;
                s.nack = None;
                s.connected = true;
            });
        }
        let (session, changes) = {
            let mut live = handle
                .liveness
                .lock()
                .map_err(|_| KeeperError::Unavailable("liveness lock poisoned".into()))?;
            live.session += 1;
            live.last_seen = Instant::now();
            live.lost = false;
            live.ports = hello.ports.iter().cloned().collect();
            (
                live.session,
                self.line_states(&hello.node, &live.ports, "reported down at connect"),
            )
        };
        info!(
            node = hello.node,
            session,
            last_generation = hello.last_generation,
            "forwarder connected"
        );
        self.lines_changed(changes);
        Ok((session, handle.published.subscribe()))
    }

    /// The state every line of an aggregator should have given its ports' link state
    /// (a port not reported counts as up).
    fn line_states(
        &self,
        node: &str,
        ports: &BTreeMap<String, bool>,
        reason: &str,
    ) -> Vec<(LineId, bool, String)> {
        let Some(agg) = self.inv.aggregator(node) else {
            return Vec::new();
        };
        agg.lines
            .iter()
            .map(|l| {
                let up = ports.get(&l.name).copied().unwrap_or(true);
                (
                    LineId {
                        node: node.to_string(),
                        line: l.name.clone(),
                    },
                    up,
                    reason.to_string(),
                )
            })
            .collect()
    }

    /// Anything heard from a forwarder: it is alive. An aggregator whose lines were
    /// bounced for silence gets them back.
    fn seen(self: &Arc<Self>, node: &str) {
        let Some(handle) = self.nodes.get(node) else {
            return;
        };
        let changes = {
            let Ok(mut live) = handle.liveness.lock() else {
                return;
            };
            live.last_seen = Instant::now();
            if !live.lost {
                return;
            }
            live.lost = false;
            info!(node, "forwarder heard from again");
            self.line_states(node, &live.ports, "reported down")
        };
        self.lines_changed(changes);
    }

    /// True while `session` is the node's newest stream.
    pub fn is_current(&self, node: &str, session: u64) -> bool {
        self.nodes
            .get(node)
            .and_then(|h| h.liveness.lock().ok().map(|l| l.session == session))
            .unwrap_or(false)
    }

    /// A forwarder acknowledged a generation.
    pub fn ack(self: &Arc<Self>, node: &str, generation: u64) {
        self.seen(node);
        if let Some(h) = self.nodes.get(node) {
            debug!(node, generation, "ack");
            h.acks.send_modify(|s| s.acked = generation);
        }
    }

    /// A forwarder rejected a generation (it keeps running the previous one).
    pub fn nack(self: &Arc<Self>, node: &str, generation: u64, detail: &str) {
        self.seen(node);
        if let Some(h) = self.nodes.get(node) {
            warn!(node, generation, "forwarder rejected table set: {detail}");
            h.acks
                .send_modify(|s| s.nack = Some((generation, detail.to_string())));
        }
    }

    /// A forwarder reported a port's link state.
    pub fn link(self: &Arc<Self>, node: &str, port: &str, up: bool) {
        self.seen(node);
        let Some(h) = self.nodes.get(node) else {
            return;
        };
        if let Ok(mut live) = h.liveness.lock() {
            live.ports.insert(port.to_string(), up);
        }
        let is_line = self
            .inv
            .aggregator(node)
            .is_some_and(|a| a.lines.iter().any(|l| l.name == port));
        if !is_line {
            debug!(node, port, up, "link state of a port that is not a line");
            return;
        }
        let line = LineId {
            node: node.to_string(),
            line: port.to_string(),
        };
        let reason = if up { "link up" } else { "link down" };
        self.lines_changed(vec![(line, up, reason.to_string())]);
    }

    /// A forwarder sent a heartbeat.
    pub fn heartbeat(self: &Arc<Self>, node: &str) {
        self.seen(node);
    }

    /// A forwarder's stream ended. Its lines stay up until its heartbeats have been
    /// missing for the configured time.
    pub fn disconnected(&self, node: &str, session: u64) {
        if self.is_current(node, session) {
            if let Some(h) = self.nodes.get(node) {
                h.acks.send_modify(|s| s.connected = false);
            }
            info!(node, session, "forwarder disconnected");
        }
    }

    /// Bounces the lines of aggregators silent for longer than the heartbeat timeout.
    pub fn check_heartbeats(self: &Arc<Self>) {
        let timeout = self.settings.heartbeat_timeout();
        for agg in &self.inv.aggregators {
            let Some(h) = self.nodes.get(&agg.node) else {
                continue;
            };
            let silent = {
                let Ok(mut live) = h.liveness.lock() else {
                    continue;
                };
                if live.lost || live.last_seen.elapsed() <= timeout {
                    continue;
                }
                live.lost = true;
                live.last_seen.elapsed()
            };
            let reason = format!(
                "aggregator {} silent for {} ms",
                agg.node,
                silent.as_millis()
            );
            let changes = agg
                .lines
                .iter()
                .map(|l| {
                    (
                        LineId {
                            node: agg.node.clone(),
                            line: l.name.clone(),
                        },
                        false,
                        reason.clone(),
                    )
                })
                .collect();
            self.lines_changed(changes);
        }
    }

    /// Stops the keeper: ends every stream and closes the database (a new keeper may
    /// then open it).
    pub fn close(&self) {
        self.closing.send_replace(true);
        if let Ok(mut core) = self.core.lock() {
            core.store = None;
            core.failed = Some("keeper is shut down".into());
        }
    }
}

/// A running keeper: the gRPC server, its heartbeat monitor, and the keeper state.
pub struct Server {
    keeper: Arc<Keeper>,
    local_addr: ListenAddr,
    stop: oneshot::Sender<()>,
    serve: JoinHandle<Result<(), tonic::transport::Error>>,
    monitor: JoinHandle<()>,
    socket_file: SocketFileGuard,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Opens the database named in the settings and serves on `listener`: a
    /// [`Listener`] bound with [`Listener::bind`] (e.g. to the configured
    /// [`Settings::listen`]), or a tokio `TcpListener`.
    pub async fn start(
        config: Config,
        listener: impl Into<Listener>,
    ) -> Result<Server, KeeperError> {
        let listener = listener.into();
        let local_addr = listener
            .local_addr()
            .map_err(|e| KeeperError::Unavailable(format!("listener has no address: {e}")))?;
        let store = Store::open(&config.settings.db)?;
        let keeper = Arc::new(Keeper::open(config.settings, config.inventory, store)?);
        let (stop, stopped) = oneshot::channel::<()>();
        let router = tonic::transport::Server::builder()
            .add_service(CircuitsServer::new(apps::AppService::new(keeper.clone())))
            .add_service(ForwardersServer::new(forwarders::ForwarderService::new(
                keeper.clone(),
            )));
        let stopped = async {
            let _ = stopped.await;
        };
        let (socket, socket_file) = listener.into_parts();
        let serve = match socket {
            Socket::Tcp(l) => {
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(l);
                tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped))
            }
            Socket::Unix(l, _) => {
                let incoming = tokio_stream::wrappers::UnixListenerStream::new(l);
                tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped))
            }
        };
        let monitor = {
            let keeper = keeper.clone();
            let period = keeper
                .settings
                .heartbeat_interval()
                .min(Duration::from_secs(1));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    keeper.check_heartbeats();
                }
            })
        };
        info!(listen = %local_addr, "keeper serving");
        Ok(Server {
            keeper,
            local_addr,
            stop,
            serve,
            monitor,
            socket_file,
        })
    }

    /// The address the server listens on (for TCP port 0: the port chosen).
    pub fn local_addr(&self) -> &ListenAddr {
        &self.local_addr
    }

    /// The endpoint clients on this machine dial: `http://ADDR:PORT` or `unix:/PATH`.
    pub fn endpoint(&self) -> String {
        self.local_addr.endpoint()
    }

    /// The keeper behind the server.
    pub fn keeper(&self) -> &Arc<Keeper> {
        &self.keeper
    }

    /// Stops gracefully: takes no new connections or calls (a Unix socket file is
    /// removed at once), lets activations and releases under way finish (each waits at
    /// most twice the ack timeout for forwarders, whose streams stay open meanwhile),
    /// then ends every stream and closes the database.
    pub async fn shutdown(self) {
        let Server {
            keeper,
            local_addr,
            stop,
            mut serve,
            monitor,
            socket_file,
        } = self;
        drop(socket_file);
        // HTTP/2 GOAWAY: calls already under way (and the forwarder streams their
        // acknowledgements come on) carry on; new ones go elsewhere or fail.
        let _ = stop.send(());
        let grace = keeper.settings().ack_timeout() * 2 + Duration::from_secs(1);
        if !keeper.drain(grace).await {
            warn!(
                "activations or releases still under way after {} ms; stopping anyway",
                grace.as_millis()
            );
        }
        keeper.close();
        monitor.abort();
        if tokio::time::timeout(Duration::from_secs(5), &mut serve)
            .await
            .is_err()
        {
            warn!("gRPC server did not stop within 5 s; aborting it");
            serve.abort();
        }
        info!(listen = %local_addr, "keeper stopped");
    }
}
