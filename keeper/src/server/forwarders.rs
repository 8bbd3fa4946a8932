//! The `Forwarders` gRPC service: one `Subscribe` stream per forwarder, in the manner
//! of Envoy's delta xDS. The keeper sends the forwarder its table set in full when it
//! connects with another generation (unless the node's log still reaches back to the
//! one it runs), then, as the set changes, only the deltas, plus heartbeats. Full sets
//! and large deltas go in chunks of at most [`CHUNK_ENTRIES`] entries, so no message
//! grows with the number of circuits. The forwarder sends ACKs, NACKs, link state and
//! heartbeats.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use prost::Message;
use tarp_api::grpc::v1;
use tarp_api::grpc::v1::forwarder_message::Msg;
use tarp_api::grpc::ProtoError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};

use super::{Hello, Keeper, KeeperError};
use crate::auth::Auth;
use crate::tables::Plan;
use tarp_api::convert::role_from_wire;
use tarp_api::rules::{Rules, RulesDelta};

/// How long a new stream may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves forwarders. A stream speaks for the node its hello names, which the caller's
/// identity must be (or an operator).
#[derive(Debug, Clone)]
pub struct ForwarderService {
    keeper: Arc<Keeper>,
    auth: Arc<Auth>,
}

impl ForwarderService {
    /// The service over a keeper, its callers named by `auth`.
    pub fn new(keeper: Arc<Keeper>, auth: Arc<Auth>) -> ForwarderService {
        ForwarderService { keeper, auth }
    }
}

fn hello_from_wire(h: &v1::Hello) -> Result<Hello, ProtoError> {
    if h.node_id.is_empty() {
        return Err(ProtoError::new("hello.node_id", "required"));
    }
    let roles = h
        .roles
        .iter()
        .enumerate()
        .map(|(i, r)| role_from_wire(&format!("hello.roles[{i}]"), *r))
        .collect::<Result<_, _>>()?;
    let wireguard_key = match h.wireguard_public_key.len() {
        0 => None,
        _ => Some(tarp_api::rules::WgKey(
            h.wireguard_public_key.as_slice().try_into().map_err(|_| {
                ProtoError::new(
                    "hello.wireguard_public_key",
                    format!(
                        "a key is 32 bytes, this is {}",
                        h.wireguard_public_key.len()
                    ),
                )
            })?,
        )),
    };
    Ok(Hello {
        wireguard_key,
        node: h.node_id.clone(),
        roles,
        ports: h.ports.iter().map(|p| (p.name.clone(), p.up)).collect(),
        last_generation: h.last_generation,
    })
}

/// Entries in one message at most. An entry encodes in well under 200 bytes (an IPv6
/// demux entry with its addresses as text is about 110), so a chunk stays below 2 MiB,
/// half of tonic's default 4 MiB limit on a received message.
pub const CHUNK_ENTRIES: usize = 8192;

/// The messages of one generation: a full set (`base` 0) or a delta, in chunks.
pub fn update_messages(generation: u64, base: u64, delta: &RulesDelta) -> Vec<v1::KeeperMessage> {
    let added = delta.added.chunks(CHUNK_ENTRIES);
    let removed = if delta.removed.is_empty() {
        Vec::new()
    } else {
        delta.removed.chunks(CHUNK_ENTRIES)
    };
    let n = added.len().max(removed.len());
    let blank = Rules {
        inner_mtu: delta.added.inner_mtu,
        ..Rules::default()
    };
    (0..n)
        .map(|i| v1::KeeperMessage {
            msg: Some(v1::keeper_message::Msg::Update(v1::RulesUpdate {
                generation,
                base,
                rules: Some(v1::Rules::from(added.get(i).unwrap_or(&blank))),
                removed: removed.get(i).map(v1::Rules::from),
                more: i + 1 < n,
            })),
        })
        .collect()
}

/// What following a plan sends.
struct Planned {
    /// The generation the forwarder ends at.
    generation: u64,
    messages: Vec<v1::KeeperMessage>,
    /// A full set, or this many deltas.
    full: bool,
    deltas: u64,
}

/// The messages that take a forwarder along `plan`.
fn plan_messages(plan: Plan) -> Option<Planned> {
    match plan {
        Plan::Nothing => None,
        Plan::Full { generation, rules } => {
            let full = RulesDelta {
                added: rules,
                removed: Rules::default(),
            };
            Some(Planned {
                generation,
                messages: update_messages(generation, 0, &full),
                full: true,
                deltas: 0,
            })
        }
        Plan::Deltas(deltas) => Some(Planned {
            generation: deltas.last()?.generation,
            messages: deltas
                .iter()
                .flat_map(|d| update_messages(d.generation, d.base, &d.delta))
                .collect(),
            full: false,
            deltas: deltas.len() as u64,
        }),
    }
}

#[tonic::async_trait]
impl v1::forwarders_server::Forwarders for ForwarderService {
    type SubscribeStream =
        Pin<Box<dyn Stream<Item = Result<v1::KeeperMessage, Status>> + Send + 'static>>;

    async fn subscribe(
        &self,
        request: Request<Streaming<v1::ForwarderMessage>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let who = self.auth.caller(&request)?;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded("no hello within 10 s of opening the stream")
            })??;
        let hello = match first.and_then(|m| m.msg) {
            Some(Msg::Hello(h)) => {
                hello_from_wire(&h).map_err(|e| Status::from(KeeperError::from(e)))?
            }
            _ => {
                return Err(Status::invalid_argument(
                    "the first message on a Subscribe stream must be a hello",
                ))
            }
        };
        who.may_be_node(&hello.node)?;
        let (session, mut tables) = match self.keeper.hello(&hello) {
            Ok(v) => {
                self.keeper
                    .metrics()
                    .hellos
                    .with_label_values(&["ok"])
                    .inc();
                v
            }
            Err(e) => {
                let code = super::observe::code_label(&e);
                self.keeper
                    .metrics()
                    .hellos
                    .with_label_values(&[code.as_str()])
                    .inc();
                return Err(e.into());
            }
        };
        let node = hello.node.clone();
        let (tx, rx) = mpsc::channel::<Result<v1::KeeperMessage, Status>>(16);
        let errors = tx.clone();

        // Outbound: table sets as they are published, heartbeats in between.
        {
            let keeper = self.keeper.clone();
            let node = node.clone();
            let mut sent = hello.last_generation;
            let closing = keeper.closing();
            let mut tick = tokio::time::interval(keeper.settings().heartbeat_interval());
            tokio::spawn(async move {
                tokio::pin!(closing);
                'stream: loop {
                    let current = *tables.borrow_and_update();
                    if current != sent {
                        // Nothing leaves before the step that made it is written.
                        let planned = match keeper.plan(&node, sent) {
                            Ok((p, ticket)) => keeper.durable(ticket).await.map(|()| p),
                            Err(e) => Err(e),
                        };
                        let plan = match planned {
                            Ok(p) => p,
                            Err(e) => {
                                let _ = tx.send(Err(Status::from(e))).await;
                                break;
                            }
                        };
                        if let Some(p) = plan_messages(plan) {
                            debug!(
                                node,
                                from = sent,
                                generation = p.generation,
                                full = p.full,
                                messages = p.messages.len(),
                                "sending tables"
                            );
                            let sizes: Vec<usize> =
                                p.messages.iter().map(Message::encoded_len).collect();
                            for m in p.messages {
                                if tx.send(Ok(m)).await.is_err() {
                                    break 'stream;
                                }
                            }
                            keeper.count_sent(&node, p.full, p.deltas, &sizes);
                            sent = p.generation;
                        }
                    }
                    tokio::select! {
                        changed = tables.changed() => if changed.is_err() { break },
                        _ = tick.tick() => {
                            if !keeper.is_current(&node, session) {
                                let msg = format!("superseded by a newer stream of node {node}");
                                let _ = tx.send(Err(Status::aborted(msg))).await;
                                break;
                            }
                            let beat = v1::KeeperMessage { msg: Some(v1::keeper_message::Msg::Heartbeat(v1::Heartbeat {})) };
                            if tx.send(Ok(beat)).await.is_err() {
                                break;
                            }
                        }
                        _ = &mut closing => break,
                        _ = tx.closed() => break,
                    }
                }
            });
        }

        // Inbound: acknowledgements, link state, heartbeats. Something that cannot be
        // true ends the stream with a status that says what.
        {
            let keeper = self.keeper.clone();
            tokio::spawn(async move {
                while let Ok(Some(message)) = inbound.message().await {
                    if !keeper.is_current(&node, session) {
                        break;
                    }
                    let result = match message.msg {
                        Some(Msg::Ack(a)) => keeper.ack(&node, a.generation),
                        Some(Msg::Nack(n)) => keeper.nack(&node, n.generation, &n.detail),
                        Some(Msg::Link(l)) => keeper.link(&node, &l.port, l.up),
                        Some(Msg::Heartbeat(_)) => {
                            keeper.heartbeat(&node);
                            Ok(())
                        }
                        Some(Msg::Hello(_)) => Err(KeeperError::BadReport {
                            node: node.clone(),
                            problem: "a second hello on one stream".into(),
                        }),
                        None => Err(KeeperError::BadReport {
                            node: node.clone(),
                            problem: "an empty message".into(),
                        }),
                    };
                    if let Err(e) = result {
                        warn!(node, "ending the stream: {e}");
                        let _ = errors.send(Err(Status::from(e))).await;
                        break;
                    }
                }
                keeper.disconnected(&node, session);
            });
        }
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
