//! The `Forwarders` gRPC service: one `Subscribe` stream per forwarder, in the manner
//! of Envoy's xDS. The keeper sends the forwarder's full table set whenever it changes
//! (and at connect when the forwarder runs another generation) plus heartbeats; the
//! forwarder sends ACKs, NACKs, link state and heartbeats.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use tarp_api::grpc::v1;
use tarp_api::grpc::v1::forwarder_message::Msg;
use tarp_api::grpc::ProtoError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::debug;

use super::{Hello, Keeper, KeeperError};
use tarp_api::convert::role_from_wire;

/// How long a new stream may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves forwarders.
#[derive(Debug, Clone)]
pub struct ForwarderService {
    keeper: Arc<Keeper>,
}

impl ForwarderService {
    /// The service over a keeper.
    pub fn new(keeper: Arc<Keeper>) -> ForwarderService {
        ForwarderService { keeper }
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
    Ok(Hello {
        node: h.node_id.clone(),
        roles,
        ports: h.ports.iter().map(|p| (p.name.clone(), p.up)).collect(),
        last_generation: h.last_generation,
    })
}

fn update(p: &super::Published) -> v1::KeeperMessage {
    v1::KeeperMessage {
        msg: Some(v1::keeper_message::Msg::Update(v1::RulesUpdate {
            generation: p.generation,
            rules: Some(v1::Rules::from(p.rules.as_ref())),
        })),
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
        let (session, mut tables) = self.keeper.hello(&hello)?;
        let node = hello.node.clone();
        let (tx, rx) = mpsc::channel::<Result<v1::KeeperMessage, Status>>(16);

        // Outbound: table sets as they are published, heartbeats in between.
        {
            let keeper = self.keeper.clone();
            let node = node.clone();
            let mut sent = hello.last_generation;
            let closing = keeper.closing();
            let mut tick = tokio::time::interval(keeper.settings().heartbeat_interval());
            tokio::spawn(async move {
                tokio::pin!(closing);
                loop {
                    let current = tables.borrow_and_update().clone();
                    if current.generation != sent {
                        debug!(node, generation = current.generation, "sending table set");
                        if tx.send(Ok(update(&current))).await.is_err() {
                            break;
                        }
                        sent = current.generation;
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

        // Inbound: acknowledgements, link state, heartbeats.
        {
            let keeper = self.keeper.clone();
            tokio::spawn(async move {
                while let Ok(Some(message)) = inbound.message().await {
                    if !keeper.is_current(&node, session) {
                        break;
                    }
                    match message.msg {
                        Some(Msg::Ack(a)) => keeper.ack(&node, a.generation),
                        Some(Msg::Nack(n)) => keeper.nack(&node, n.generation, &n.detail),
                        Some(Msg::Link(l)) => keeper.link(&node, &l.port, l.up),
                        Some(Msg::Heartbeat(_)) => keeper.heartbeat(&node),
                        Some(Msg::Hello(_)) | None => {
                            debug!(node, "ignoring a second hello or an empty message")
                        }
                    }
                }
                keeper.disconnected(&node, session);
            });
        }
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
