//! The keeper itself: circuit state, the forwarders' published table sets and their
//! acknowledgements, and the two gRPC services over them ([`apps`] for applications,
//! [`forwarders`] for forwarders).
//!
//! Every step follows one pattern, under one short lock and without awaiting inside it:
//! change [`Circuits`], recompile what the changed circuits contribute ([`Tables`]),
//! give the nodes whose tables changed the next generation, commit the changed records
//! to the [`Store`], then wake the streams of those nodes, which send each forwarder
//! the deltas since what it has (or the full set, in chunks). Waiting for acknowledgements happens outside the lock,
//! so a slow forwarder delays only the activations that go through it.
//!
//! * this file: the [`Keeper`] and its shared state; opening it from the store;
//! * `error.rs`: [`KeeperError`] and the gRPC status each kind becomes;
//! * `commit.rs`: the commit path (compile, number, store, publish) and waiting for ACKs;
//! * `lifecycle.rs`: activation and release;
//! * `leases.rs`: renewing leases, releasing circuits whose lease ran out;
//! * `reuse.rs`: freed addresses held until every forwarder dropped them, flap damping;
//! * `liveness.rs`: forwarder hellos, ACK/NACK, link reports, heartbeats, bounces;
//! * `queries.rs`: get, list, a node's tables and acknowledgements;
//! * `run.rs`: the [`Server`] (gRPC over TCP or a Unix socket) and its shutdown;
//! * [`apps`], [`forwarders`]: the two gRPC services.

pub mod apps;
pub mod forwarders;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tarp_api::Rules;
use tokio::sync::{broadcast, watch};
use tracing::info;

pub use tarp_api::circuit::ListFilter;

use crate::circuits::{CircuitEvent, CircuitState, Circuits};
use crate::inventory::{Inventory, NodeId, Role, Settings};
use crate::store::Store;
use crate::tables::Tables;

mod commit;
mod durable;
mod error;
mod leases;
mod lifecycle;
mod liveness;
mod observe;
mod queries;
mod reuse;
mod run;

pub use error::KeeperError;
pub use forwarders::CHUNK_ENTRIES;
pub use observe::{ForwarderView, KeeperMetrics, StateCounts, BUCKETS};
pub use run::Server;

/// A node's table set as the keeper publishes it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Its generation.
    pub generation: u64,
    /// The tables.
    pub rules: Rules,
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

/// What a node's streams have sent it, since the keeper started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    /// Full table sets.
    pub full_sets: u64,
    /// Deltas (one per generation).
    pub deltas: u64,
    /// Update messages (chunks).
    pub messages: u64,
    /// Encoded bytes of those messages.
    pub bytes: u64,
    /// The largest one, in bytes.
    pub largest: u64,
}

struct NodeHandle {
    roles: BTreeSet<Role>,
    sent: Mutex<Sent>,
    /// The node's current generation: its stream wakes when it moves.
    published: watch::Sender<u64>,
    acks: watch::Sender<AckState>,
    liveness: Mutex<Liveness>,
}

struct Core {
    circuits: Circuits,
    generation: u64,
    /// Records staged for the committer, and the number of the last step staged.
    staged: durable::Staged,
    ticket: u64,
    tables: Tables,
    failed: Option<String>,
    /// When each leased circuit's lease runs out (active and bounced ones; an
    /// activating circuit's lease starts when it becomes active). Not stored, by
    /// design: a restarted keeper gives every lease a full term (as etcd does for its
    /// leases on a new leader), because no application could renew while it was away;
    /// counting the outage against them would release every circuit of a keeper that
    /// was down longer than a lease.
    leases: BTreeMap<crate::circuits::CircuitId, Instant>,
    reuse: reuse::Reuse,
    /// When each ended circuit (released, or bounced and replaced) ended, for pruning
    /// after the retention. From each circuit's `ended_at_ms` after a restart.
    ended: BTreeMap<crate::circuits::CircuitId, Instant>,
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
    /// Its WireGuard public key.
    pub wireguard_key: Option<tarp_api::rules::WgKey>,
}

/// The circuit keeper.
pub struct Keeper {
    settings: Settings,
    inv: Arc<Inventory>,
    core: Mutex<Core>,
    /// The database (`None` once closed); written by the committer alone.
    store: Mutex<Option<Store>>,
    /// How far the committer's writes got.
    durable: watch::Sender<durable::Durable>,
    /// Wakes the committer.
    wake: tokio::sync::Notify,
    nodes: BTreeMap<NodeId, NodeHandle>,
    events: broadcast::Sender<CircuitEvent>,
    closing: watch::Sender<bool>,
    /// Activations and releases under way (shutdown lets them finish).
    busy: watch::Sender<usize>,
    /// Counters and histograms for the metrics endpoint.
    metrics: KeeperMetrics,
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
        // The sets the stored generations carried, compiled again from the circuits as
        // stored; a node whose set differs (the inventory changed) is published anew.
        let mut tables = Tables::new(&inv);
        for c in circuits.iter() {
            tables.add(&inv, c);
        }
        tables.settle();
        for node in inv.nodes.keys() {
            match loaded.nodes.get(node) {
                Some(r) => {
                    tables.set_generation(node, r.generation);
                    if r.digest != tables.digest(node) {
                        info!(
                            node,
                            generation = r.generation,
                            "tables differ from the stored ones: republishing"
                        );
                        tables.force(node);
                    }
                }
                None => tables.force(node),
            }
        }
        for note in circuits.recover(&inv) {
            info!("{note}");
        }
        let started = Instant::now();
        let nodes = inv
            .nodes
            .iter()
            .map(|(id, node)| {
                let handle = NodeHandle {
                    roles: node.roles.clone(),
                    sent: Mutex::new(Sent::default()),
                    published: watch::Sender::new(tables.generation(id)),
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
        let now = Instant::now();
        let leases = circuits
            .iter()
            .filter(|c| c.lease_ms > 0)
            .filter(|c| matches!(c.state, CircuitState::Active | CircuitState::Bounced))
            .map(|c| (c.id, now + Duration::from_millis(c.lease_ms)))
            .collect();
        // Retention counts from when a circuit ended, by the wall clock, so that a
        // restart neither restarts nor skips it (records from before `ended_at_ms` count
        // from now).
        let wall = crate::circuits::unix_ms();
        let ended = circuits
            .iter()
            .filter(|c| c.has_ended())
            .map(|c| {
                let ago = Duration::from_millis(wall.saturating_sub(c.ended_at_ms));
                let at = match c.ended_at_ms {
                    0 => now,
                    _ => now.checked_sub(ago).unwrap_or(now),
                };
                (c.id, at)
            })
            .collect();
        let core = Core {
            circuits,
            staged: durable::Staged::default(),
            ticket: 0,
            generation: loaded.generation,
            tables,
            failed: None,
            leases,
            reuse: reuse::Reuse::default(),
            ended,
        };
        let keeper = Keeper {
            settings,
            inv: Arc::new(inv),
            core: Mutex::new(core),
            store: Mutex::new(Some(store)),
            durable: watch::Sender::new(durable::Durable::default()),
            wake: tokio::sync::Notify::new(),
            nodes,
            events: broadcast::channel(1024).0,
            closing: watch::Sender::new(false),
            busy: watch::Sender::new(0),
            metrics: KeeperMetrics::default(),
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
        // What recovery changed is written before anything is served.
        keeper.write_staged()?;
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

    /// Stops the keeper: ends every stream and closes the database (a new keeper may
    /// then open it).
    pub fn close(&self) {
        self.closing.send_replace(true);
        // Whatever is staged is written first.
        if let Err(e) = self.write_staged() {
            tracing::warn!("closing: {e}");
        }
        if let Ok(mut core) = self.core.lock() {
            core.failed = Some("keeper is shut down".into());
        }
        if let Ok(mut store) = self.store.lock() {
            *store = None;
        }
        self.durable
            .send_modify(|d| d.failed = Some("keeper is shut down".into()));
    }

    /// Starts the committer (once, when serving starts).
    pub fn start_committer(self: &Arc<Self>) {
        tokio::spawn(self.clone().run_committer());
    }
}
