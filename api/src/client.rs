//! The client side of the keeper's gRPC API.
//!
//! * [`AppClient`] is what applications (and `tarpctl`) use: activate, release, get,
//!   list and watch circuits.
//! * [`ForwarderSession`] is what a forwarder's control thread uses: one `Subscribe`
//!   stream that delivers its table sets by generation, carries its ACKs and NACKs,
//!   link-state reports and heartbeats.
//!
//! Both are async (tokio). A forwarder's control thread that is otherwise blocking can
//! drive a session from a current-thread runtime of its own:
//!
//! ```no_run
//! use std::time::Duration;
//! use tarp_api::client::{ForwarderSession, PortState, Role};
//!
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
//! let ports = [PortState { name: "line0".into(), up: true }];
//! let mut session = rt
//!     .block_on(ForwarderSession::connect("http://127.0.0.1:50551", "pop-ams-1", &[Role::Aggregator], &ports, 0))
//!     .unwrap();
//! loop {
//!     // Wake up now and then to report link changes; `next_update` is cancel-safe.
//!     match rt.block_on(tokio::time::timeout(Duration::from_millis(100), session.next_update())) {
//!         Ok(Ok((generation, rules))) => {
//!             // Validate and build the snapshot; swap it in; then:
//!             rt.block_on(session.ack(generation)).unwrap();
//!             # let _ = rules;
//!         }
//!         Ok(Err(e)) => { eprintln!("keeper stream ended: {e}; reconnect with backoff"); break; }
//!         Err(_) => { /* poll link state; rt.block_on(session.report_link("line0", false)) */ }
//!     }
//! }
//! ```
//!
//! Endpoints are `http://HOST:PORT` or `unix:/PATH` (see [`crate::endpoint`]); the
//! latter reaches a keeper in another network namespace of the same machine.
//!
//! The session's automatic heartbeats and the HTTP/2 connection make progress only
//! while the runtime runs, that is inside `block_on`: keep the thread inside
//! `block_on` most of the time (as above), or run the runtime on its own thread.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::grpc::v1;
use crate::grpc::v1::circuits_client::CircuitsClient;
use crate::grpc::v1::forwarders_client::ForwardersClient;
use crate::grpc::ProtoError;
use crate::rules::RulesDelta;
use crate::Rules;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

pub use crate::circuit::{
    ActivateRequest, Circuit, CircuitEvent, CircuitId, CircuitState, EventKind, ListFilter, Mode,
    PortRange, ReturnPath, Role,
};
pub use crate::rules::Protocol;

use crate::convert::{
    activate_to_wire, circuit_from_wire, event_from_wire, role_to_wire, state_to_wire,
};
use crate::endpoint::{Dial, EndpointError};

/// A keeper call that failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint is neither `http://HOST:PORT` nor `unix:/PATH`.
    #[error("invalid keeper endpoint {endpoint:?}: {problem}")]
    Endpoint {
        /// What was given.
        endpoint: String,
        /// Why it is not usable.
        problem: String,
    },
    /// No connection to the keeper.
    #[error("cannot reach the keeper at {endpoint}: {source}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// Why.
        source: tonic::transport::Error,
    },
    /// The keeper refused the call; [`ClientError::code`] says how.
    #[error("keeper: {:?}: {}", .0.code(), .0.message())]
    Status(tonic::Status),
    /// The keeper sent something that does not parse.
    #[error("keeper sent an invalid message: {0}")]
    Proto(#[from] ProtoError),
    /// A table set that does not convert to [`Rules`]; NACK its generation.
    #[error("table set of generation {generation} is invalid: {source}")]
    InvalidUpdate {
        /// Its generation.
        generation: u64,
        /// What is wrong.
        source: ProtoError,
    },
    /// A delta that does not apply to the session's table set (another base, or
    /// removals of entries it does not hold). Reconnect without a table set (a full one
    /// follows).
    #[error("delta to generation {generation} does not apply: {problem}")]
    OutOfSequence {
        /// The delta's generation.
        generation: u64,
        /// Why.
        problem: String,
    },
    /// The keeper ended the stream, or the session's sender is gone.
    #[error("the keeper closed the stream")]
    Closed,
    /// Nothing, not even a heartbeat, came from the keeper for too long.
    #[error("no message from the keeper for {0} ms")]
    KeeperSilent(u128),
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        ClientError::Status(s)
    }
}

impl ClientError {
    /// The gRPC status code when the keeper refused the call.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Status(s) => Some(s.code()),
            _ => None,
        }
    }
}

async fn channel(dial: &Dial, connect_timeout: Duration) -> Result<Channel, ClientError> {
    crate::endpoint::connect(dial, connect_timeout)
        .await
        .map_err(|e| match e {
            EndpointError::Invalid(problem) => ClientError::Endpoint {
                endpoint: dial.to_string(),
                problem,
            },
            EndpointError::Connect(source) => ClientError::Connect {
                endpoint: dial.to_string(),
                source,
            },
        })
}

/// An application's handle on the keeper.
#[derive(Debug, Clone)]
pub struct AppClient {
    inner: CircuitsClient<Channel>,
}

impl AppClient {
    /// Connects to a keeper: `http://127.0.0.1:50551`, or a Unix socket such as
    /// `unix:/run/tarp/keeper.sock`. The connection is re-dialled (same transport) when
    /// it drops; the call that noticed the drop fails.
    pub async fn connect(endpoint: impl Into<Dial>) -> Result<AppClient, ClientError> {
        Ok(AppClient {
            inner: CircuitsClient::new(channel(&endpoint.into(), Duration::from_secs(5)).await?),
        })
    }

    /// Activates a circuit; returns once every forwarder on its path runs it.
    pub async fn activate(&mut self, req: &ActivateRequest) -> Result<Circuit, ClientError> {
        let c = self
            .inner
            .activate(activate_to_wire(req))
            .await?
            .into_inner();
        Ok(circuit_from_wire(&c)?)
    }

    /// Releases a circuit (a released circuit is returned as it is).
    pub async fn release(&mut self, id: CircuitId) -> Result<Circuit, ClientError> {
        let c = self
            .inner
            .release(v1::ReleaseRequest { id })
            .await?
            .into_inner();
        Ok(circuit_from_wire(&c)?)
    }

    /// Renews the leases of `ids`; a bounced circuit's replacement is renewed in its
    /// place. Returns the circuits renewed. Fails if one has no lease or was released
    /// (its lease ran out: `FAILED_PRECONDITION`), or is unknown (`NOT_FOUND`).
    pub async fn renew(&mut self, ids: &[CircuitId]) -> Result<Vec<Circuit>, ClientError> {
        let r = self
            .inner
            .renew(v1::RenewRequest { ids: ids.to_vec() })
            .await?
            .into_inner();
        Ok(r.circuits
            .iter()
            .map(circuit_from_wire)
            .collect::<Result<_, _>>()?)
    }

    /// Keeps renewing the leases of `ids` (and of their replacements) every `every`,
    /// on a task of its own, until the returned handle is dropped or aborted. A failed
    /// renewal is retried at the next tick; what failed is sent on the returned
    /// channel (which may be ignored).
    pub fn keep_renewing(
        &self,
        ids: Vec<CircuitId>,
        every: Duration,
    ) -> (Renewer, mpsc::Receiver<ClientError>) {
        let mut client = self.clone();
        let (errors, rx) = mpsc::channel(4);
        let task = tokio::spawn(async move {
            let mut ids = ids;
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                match client.renew(&ids).await {
                    // Follow replacements: renew what the keeper renewed.
                    Ok(renewed) => ids = renewed.iter().map(|c| c.id).collect(),
                    Err(e) => {
                        let _ = errors.try_send(e);
                    }
                }
            }
        });
        (Renewer(task), rx)
    }

    /// One circuit.
    pub async fn get(&mut self, id: CircuitId) -> Result<Circuit, ClientError> {
        let c = self.inner.get(v1::GetRequest { id }).await?.into_inner();
        Ok(circuit_from_wire(&c)?)
    }

    /// Circuits matching a filter, in id order (fetched page by page: the keeper
    /// answers at most 4096 per call).
    pub async fn list(&mut self, f: &ListFilter) -> Result<Vec<Circuit>, ClientError> {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let (page, next) = self.list_page(f, after, 0).await?;
            all.extend(page);
            match next {
                Some(n) => after = n,
                None => return Ok(all),
            }
        }
    }

    /// One page of [`AppClient::list`]: circuits with ids above `after`, at most
    /// `limit` (0: the keeper's page size); the second value is the `after` of the
    /// next page, if there may be one.
    pub async fn list_page(
        &mut self,
        f: &ListFilter,
        after: CircuitId,
        limit: u32,
    ) -> Result<(Vec<Circuit>, Option<CircuitId>), ClientError> {
        let req = v1::ListRequest {
            region: f.region.clone().unwrap_or_default(),
            pop: f.pop.clone().unwrap_or_default(),
            app_host: f.app_host.map(|a| a.to_string()).unwrap_or_default(),
            state: f.state.map_or(0, |s| state_to_wire(s) as i32),
            include_released: f.include_released,
            after,
            limit,
        };
        let list = self.inner.list(req).await?.into_inner();
        let page = list
            .circuits
            .iter()
            .map(circuit_from_wire)
            .collect::<Result<_, _>>()?;
        Ok((page, (list.next_after != 0).then_some(list.next_after)))
    }

    /// Circuit events from now on: of one circuit and its replacements, of one
    /// application host, or (both `None`) all.
    pub async fn watch(
        &mut self,
        circuit: Option<CircuitId>,
        app_host: Option<IpAddr>,
    ) -> Result<EventStream, ClientError> {
        let req = v1::WatchRequest {
            circuit_id: circuit.unwrap_or(0),
            app_host: app_host.map(|a| a.to_string()).unwrap_or_default(),
        };
        Ok(EventStream {
            inner: self.inner.watch(req).await?.into_inner(),
        })
    }

    /// The fleet's forwarders as the keeper sees them, with their metrics endpoints
    /// (operators only: others get `PERMISSION_DENIED`).
    pub async fn nodes(&mut self) -> Result<Vec<NodeInfo>, ClientError> {
        let r = self.inner.nodes(v1::NodesRequest {}).await?.into_inner();
        Ok(r.nodes
            .into_iter()
            .map(|n| NodeInfo {
                id: n.id,
                roles: n.roles,
                connected: n.connected,
                published_generation: n.published_generation,
                acked_generation: n.acked_generation,
                silence: Duration::from_millis(n.silence_ms),
                metrics: (!n.metrics.is_empty()).then_some(n.metrics),
            })
            .collect())
    }
}

/// A forwarder of the keeper's inventory ([`AppClient::nodes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node id.
    pub id: String,
    /// Its roles (`aggregator`, `demux`, `remux`).
    pub roles: Vec<String>,
    /// It has a stream open to the keeper.
    pub connected: bool,
    /// The generation published for it.
    pub published_generation: u64,
    /// The generation it acknowledged.
    pub acked_generation: u64,
    /// Since it was last heard from.
    pub silence: Duration,
    /// Its metrics endpoint (`host:port` or `http://host:port`), if the inventory names one.
    pub metrics: Option<String>,
}

/// Circuit events from [`AppClient::watch`].
#[derive(Debug)]
pub struct EventStream {
    inner: Streaming<v1::CircuitEvent>,
}

impl EventStream {
    /// The next event; `None` when the keeper ended the stream. Cancel-safe.
    pub async fn next(&mut self) -> Result<Option<CircuitEvent>, ClientError> {
        match self.inner.message().await? {
            Some(e) => Ok(Some(event_from_wire(&e)?)),
            None => Ok(None),
        }
    }
}

/// Renews leases while it lives ([`AppClient::keep_renewing`]); dropping it stops.
#[derive(Debug)]
pub struct Renewer(JoinHandle<()>);

impl Drop for Renewer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A port of the forwarder and its link state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortState {
    /// The port's configured name (for an aggregator's line: the line name).
    pub name: String,
    /// Link up.
    pub up: bool,
}

/// Tuning of a [`ForwarderSession`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOptions {
    /// Send heartbeats this often from a background task; `None`: call
    /// [`ForwarderSession::heartbeat`] yourself.
    pub heartbeat_interval: Option<Duration>,
    /// [`ForwarderSession::next_update`] fails with [`ClientError::KeeperSilent`] when
    /// nothing came from the keeper for this long; `None`: wait forever.
    pub keeper_timeout: Option<Duration>,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// This forwarder's WireGuard public key, announced in its hello.
    pub wireguard_public_key: Option<[u8; 32]>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            heartbeat_interval: Some(Duration::from_secs(1)),
            keeper_timeout: Some(Duration::from_secs(10)),
            connect_timeout: Duration::from_secs(5),
            wireguard_public_key: None,
        }
    }
}

/// A table set the session holds: what the keeper sent up to `generation`, with every
/// delta applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tables {
    /// Its generation.
    pub generation: u64,
    /// The table set. Shared: drop your clone before the next
    /// [`ForwarderSession::next_update`], or applying a delta copies the whole set.
    pub rules: Arc<Rules>,
}

/// Chunks of one generation received so far.
#[derive(Debug)]
struct Partial {
    generation: u64,
    /// 0: a full set.
    base: u64,
    delta: RulesDelta,
}

/// A forwarder's stream to the keeper.
///
/// The keeper sends the forwarder's table set in full first (unless the forwarder
/// already runs the current generation, or the keeper still has every change since the
/// one it runs), then only what changed, generation by generation; either may come in
/// chunks. The session puts them together and applies the deltas to the table set it
/// holds, so [`next_update`](Self::next_update) always yields a whole set. For each
/// one the forwarder calls [`ack`](Self::ack) once it is swapped in (an ACK covers
/// every earlier generation, so a forwarder that fell behind may build only the newest
/// set), or [`nack`](Self::nack) with the reason if it cannot be applied (and keeps
/// forwarding on what it has). When the stream ends, reconnect with backoff, passing
/// what you run ([`resume_with`](Self::resume_with)), or 0 ([`connect`](Self::connect)).
#[derive(Debug)]
pub struct ForwarderSession {
    node: String,
    tx: mpsc::Sender<v1::ForwarderMessage>,
    inbound: Streaming<v1::KeeperMessage>,
    heartbeats: Option<JoinHandle<()>>,
    keeper_timeout: Option<Duration>,
    last_heard: Instant,
    tables: Option<Tables>,
    partial: Option<Partial>,
}

impl ForwarderSession {
    /// Dials the keeper and says hello with default [`SessionOptions`].
    ///
    /// `endpoint` is `http://HOST:PORT` or `unix:/PATH` (a Unix socket reaches a keeper
    /// in another network namespace of the same machine).
    ///
    /// `last_generation` is the generation of the table set the forwarder runs (0 after
    /// a restart, or when it runs its static tables). Fails with NOT_FOUND when the
    /// keeper's inventory has no such node, FAILED_PRECONDITION when it does not give
    /// it one of `roles`.
    pub async fn connect(
        endpoint: impl Into<Dial>,
        node_id: &str,
        roles: &[Role],
        ports: &[PortState],
        last_generation: u64,
    ) -> Result<ForwarderSession, ClientError> {
        Self::connect_with(
            endpoint,
            node_id,
            roles,
            ports,
            last_generation,
            SessionOptions::default(),
        )
        .await
    }

    /// [`connect`](Self::connect) with explicit options.
    ///
    /// A session opened with a `last_generation` but no table set cannot apply deltas:
    /// if the keeper sends one, [`next_update`](Self::next_update) fails with
    /// [`ClientError::OutOfSequence`]. A forwarder that holds its tables resumes with
    /// [`resume_with`](Self::resume_with).
    pub async fn connect_with(
        endpoint: impl Into<Dial>,
        node_id: &str,
        roles: &[Role],
        ports: &[PortState],
        last_generation: u64,
        options: SessionOptions,
    ) -> Result<ForwarderSession, ClientError> {
        Self::open(
            endpoint,
            node_id,
            roles,
            ports,
            last_generation,
            None,
            options,
        )
        .await
    }

    /// Dials the keeper holding `tables` (what the forwarder runs): the keeper sends
    /// only what changed since, when it still can.
    pub async fn resume_with(
        endpoint: impl Into<Dial>,
        node_id: &str,
        roles: &[Role],
        ports: &[PortState],
        tables: Tables,
        options: SessionOptions,
    ) -> Result<ForwarderSession, ClientError> {
        let generation = tables.generation;
        Self::open(
            endpoint,
            node_id,
            roles,
            ports,
            generation,
            Some(tables),
            options,
        )
        .await
    }

    async fn open(
        endpoint: impl Into<Dial>,
        node_id: &str,
        roles: &[Role],
        ports: &[PortState],
        last_generation: u64,
        tables: Option<Tables>,
        options: SessionOptions,
    ) -> Result<ForwarderSession, ClientError> {
        let mut client =
            ForwardersClient::new(channel(&endpoint.into(), options.connect_timeout).await?);
        let (tx, rx) = mpsc::channel(64);
        let hello = v1::Hello {
            node_id: node_id.to_string(),
            roles: roles.iter().map(|r| role_to_wire(*r) as i32).collect(),
            ports: ports
                .iter()
                .map(|p| v1::PortState {
                    name: p.name.clone(),
                    up: p.up,
                })
                .collect(),
            last_generation,
            wireguard_public_key: options
                .wireguard_public_key
                .map(|k| k.to_vec())
                .unwrap_or_default(),
        };
        tx.send(v1::ForwarderMessage {
            msg: Some(v1::forwarder_message::Msg::Hello(hello)),
        })
        .await
        .map_err(|_| ClientError::Closed)?;
        // The keeper answers the call only after it has accepted the hello.
        let inbound = client
            .subscribe(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let heartbeats = options.heartbeat_interval.map(|every| {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval_at(Instant::now() + every, every);
                loop {
                    tick.tick().await;
                    let beat = v1::ForwarderMessage {
                        msg: Some(v1::forwarder_message::Msg::Heartbeat(v1::Heartbeat {})),
                    };
                    if tx.send(beat).await.is_err() {
                        break;
                    }
                }
            })
        });
        Ok(ForwarderSession {
            node: node_id.to_string(),
            tx,
            inbound,
            heartbeats,
            keeper_timeout: options.keeper_timeout,
            last_heard: Instant::now(),
            tables,
            partial: None,
        })
    }

    /// The table set the session holds (the last one [`next_update`](Self::next_update)
    /// yielded, or the one it resumed with).
    pub fn tables(&self) -> Option<Tables> {
        self.tables.clone()
    }

    /// Ends the session, keeping its table set for [`resume_with`](Self::resume_with).
    pub fn into_tables(self) -> Option<Tables> {
        self.tables.clone()
    }

    /// The node id this session speaks for.
    pub fn node_id(&self) -> &str {
        &self.node
    }

    /// The next table set: its generation and the whole [`Rules`] (deltas applied to
    /// what the session holds, chunks put together). Keeper heartbeats are consumed
    /// here. Cancel-safe: nothing is lost if the future is dropped.
    pub async fn next_update(&mut self) -> Result<(u64, Arc<Rules>), ClientError> {
        loop {
            let message = match self.keeper_timeout {
                Some(t) => {
                    match tokio::time::timeout_at(self.last_heard + t, self.inbound.message()).await
                    {
                        Ok(m) => m?,
                        Err(_) => return Err(ClientError::KeeperSilent(t.as_millis())),
                    }
                }
                None => self.inbound.message().await?,
            };
            let Some(message) = message else {
                return Err(ClientError::Closed);
            };
            self.last_heard = Instant::now();
            match message.msg {
                Some(v1::keeper_message::Msg::Update(u)) => {
                    if let Some(done) = self.chunk(u)? {
                        return Ok(done);
                    }
                }
                Some(v1::keeper_message::Msg::Heartbeat(_)) | None => continue,
            }
        }
    }

    /// Takes one chunk; the whole set once the last chunk of a generation is in.
    fn chunk(&mut self, u: v1::RulesUpdate) -> Result<Option<(u64, Arc<Rules>)>, ClientError> {
        let generation = u.generation;
        let invalid = |source| ClientError::InvalidUpdate { generation, source };
        let added = Rules::try_from(&u.rules.unwrap_or_default()).map_err(invalid)?;
        let removed = match &u.removed {
            Some(r) => Rules::try_from(r).map_err(invalid)?,
            None => Rules::default(),
        };
        let partial = match self.partial.take() {
            Some(p) if p.generation == generation && p.base == u.base => {
                let mut p = p;
                p.delta.added.extend(added);
                p.delta.removed.extend(removed);
                p
            }
            Some(p) => {
                return Err(ClientError::OutOfSequence {
                    generation,
                    problem: format!("generation {} ended without its last chunk", p.generation),
                })
            }
            None => Partial {
                generation,
                base: u.base,
                delta: RulesDelta { added, removed },
            },
        };
        if u.more {
            self.partial = Some(partial);
            return Ok(None);
        }
        let rules = if partial.base == 0 {
            Arc::new(partial.delta.added)
        } else {
            let mut tables = match self.tables.take() {
                Some(t) if t.generation == partial.base => t,
                held => {
                    let problem = match held {
                        Some(t) => format!(
                            "it applies to generation {}, the session holds {}",
                            partial.base, t.generation
                        ),
                        None => format!(
                            "it applies to generation {}, the session holds no table set",
                            partial.base
                        ),
                    };
                    return Err(ClientError::OutOfSequence {
                        generation,
                        problem,
                    });
                }
            };
            Arc::make_mut(&mut tables.rules)
                .apply(&partial.delta)
                .map_err(|e| ClientError::OutOfSequence {
                    generation,
                    problem: e.to_string(),
                })?;
            tables.rules
        };
        self.tables = Some(Tables {
            generation,
            rules: rules.clone(),
        });
        Ok(Some((generation, rules)))
    }

    async fn send(&self, msg: v1::forwarder_message::Msg) -> Result<(), ClientError> {
        self.tx
            .send(v1::ForwarderMessage { msg: Some(msg) })
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// The table set of `generation` is swapped in.
    pub async fn ack(&self, generation: u64) -> Result<(), ClientError> {
        self.send(v1::forwarder_message::Msg::Ack(v1::Ack { generation }))
            .await
    }

    /// The table set of `generation` cannot be applied; the forwarder keeps the one it
    /// runs.
    pub async fn nack(&self, generation: u64, detail: &str) -> Result<(), ClientError> {
        self.send(v1::forwarder_message::Msg::Nack(v1::Nack {
            generation,
            detail: detail.to_string(),
        }))
        .await
    }

    /// A port's link went up or down.
    pub async fn report_link(&self, port: &str, up: bool) -> Result<(), ClientError> {
        self.send(v1::forwarder_message::Msg::Link(v1::LinkState {
            port: port.to_string(),
            up,
        }))
        .await
    }

    /// Sends one heartbeat (needed only without automatic heartbeats).
    pub async fn heartbeat(&self) -> Result<(), ClientError> {
        self.send(v1::forwarder_message::Msg::Heartbeat(v1::Heartbeat {}))
            .await
    }
}

impl Drop for ForwarderSession {
    fn drop(&mut self) {
        if let Some(h) = self.heartbeats.take() {
            h.abort();
        }
    }
}
