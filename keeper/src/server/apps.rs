//! The `Circuits` gRPC service: what applications call.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tarp_api::grpc::v1;
use tarp_api::grpc::{parse_ip, ProtoError};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{Keeper, KeeperError, ListFilter};
use crate::auth::{Auth, Identity};
use crate::circuits::{Circuit, CircuitEvent, CircuitId, EventKind};
use tarp_api::convert::{activate_from_wire, circuit_to_wire, event_to_wire, state_from_wire};

/// Serves applications. Every call is made by an [`Identity`]: an application sees and
/// touches only the circuits it activated, an operator every circuit, a forwarder none.
#[derive(Debug, Clone)]
pub struct AppService {
    keeper: Arc<Keeper>,
    auth: Arc<Auth>,
}

impl AppService {
    /// The service over a keeper, its callers named by `auth`.
    pub fn new(keeper: Arc<Keeper>, auth: Arc<Auth>) -> AppService {
        AppService { keeper, auth }
    }

    /// The caller, if it may use the application API at all.
    fn caller<T>(&self, request: &Request<T>) -> Result<Identity, Status> {
        let who = self.auth.caller(request)?;
        who.owner()?;
        Ok(who)
    }

    /// Circuit `id`, if `who` may `what` it.
    fn owned(&self, who: &Identity, what: &str, id: CircuitId) -> Result<Circuit, Status> {
        let c = self.keeper.get(id)?;
        if !who.may_touch(&c.owner) {
            return Err(who.denied(what, id, &c.owner));
        }
        Ok(c)
    }
}

/// Circuits one `Renew` may name.
const MAX_RENEW: usize = 10_000;

fn invalid(e: ProtoError) -> Status {
    KeeperError::from(e).into()
}

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// Which events a `Watch` stream passes on; a watched circuit's replacements are
/// watched too.
struct WatchFilter {
    circuits: Vec<CircuitId>,
    app_host: Option<std::net::IpAddr>,
    /// Only this owner's circuits (for a caller who is not an operator).
    owner: Option<String>,
}

impl WatchFilter {
    fn pass(&mut self, e: &CircuitEvent) -> bool {
        if self.app_host.is_some_and(|a| a != e.circuit.app_host) {
            return false;
        }
        if self.owner.as_ref().is_some_and(|o| *o != e.circuit.owner) {
            return false;
        }
        if self.circuits.is_empty() {
            return true;
        }
        if !self.circuits.contains(&e.circuit.id) {
            return false;
        }
        if let (EventKind::Bounced, Some(r)) = (e.kind, &e.replacement) {
            self.circuits.push(r.id);
        }
        true
    }
}

#[tonic::async_trait]
impl v1::circuits_server::Circuits for AppService {
    async fn activate(
        &self,
        request: Request<v1::ActivateRequest>,
    ) -> Result<Response<v1::Circuit>, Status> {
        let who = self.caller(&request)?;
        let mut req = activate_from_wire(request.get_ref()).map_err(invalid)?;
        req.owner = who.owner()?;
        let circuit = self.keeper.activate(&req).await?;
        Ok(Response::new(circuit_to_wire(&circuit)))
    }

    async fn release(
        &self,
        request: Request<v1::ReleaseRequest>,
    ) -> Result<Response<v1::Circuit>, Status> {
        let who = self.caller(&request)?;
        let id = request.get_ref().id;
        if id == 0 {
            return Err(invalid(ProtoError::new("id", "required")));
        }
        self.owned(&who, "release", id)?;
        let circuit = self.keeper.release(id).await?;
        Ok(Response::new(circuit_to_wire(&circuit)))
    }

    async fn renew(
        &self,
        request: Request<v1::RenewRequest>,
    ) -> Result<Response<v1::RenewResponse>, Status> {
        let who = self.caller(&request)?;
        let ids = &request.get_ref().ids;
        if ids.is_empty() || ids.contains(&0) {
            return Err(invalid(ProtoError::new(
                "ids",
                "one or more circuit ids, none 0",
            )));
        }
        if ids.len() > MAX_RENEW {
            let problem = format!("{} ids; at most {MAX_RENEW} per call", ids.len());
            return Err(invalid(ProtoError::new("ids", problem)));
        }
        for &id in ids {
            self.owned(&who, "renew", id)?;
        }
        let circuits = self.keeper.renew(ids)?;
        Ok(Response::new(v1::RenewResponse {
            circuits: circuits.iter().map(circuit_to_wire).collect(),
        }))
    }

    async fn get(&self, request: Request<v1::GetRequest>) -> Result<Response<v1::Circuit>, Status> {
        let who = self.caller(&request)?;
        let circuit = self.owned(&who, "get", request.get_ref().id)?;
        Ok(Response::new(circuit_to_wire(&circuit)))
    }

    async fn list(
        &self,
        request: Request<v1::ListRequest>,
    ) -> Result<Response<v1::ListResponse>, Status> {
        let who = self.caller(&request)?;
        let r = request.get_ref();
        let filter = ListFilter {
            region: opt(&r.region),
            pop: opt(&r.pop),
            app_host: if r.app_host.is_empty() {
                None
            } else {
                Some(parse_ip("app_host", &r.app_host).map_err(invalid)?)
            },
            state: state_from_wire("state", r.state).map_err(invalid)?,
            include_released: r.include_released,
            owner: (!who.is_operator()).then(|| who.to_string()),
        };
        let (circuits, next) = self.keeper.list_page(&filter, r.after, r.limit as usize)?;
        Ok(Response::new(v1::ListResponse {
            circuits: circuits.iter().map(circuit_to_wire).collect(),
            next_after: next.unwrap_or(0),
        }))
    }

    async fn nodes(
        &self,
        request: Request<v1::NodesRequest>,
    ) -> Result<Response<v1::NodesResponse>, Status> {
        let who = self.auth.caller(&request)?;
        if !who.is_operator() {
            return Err(Status::permission_denied(format!(
                "{who} may not list the fleet's nodes: operators only"
            )));
        }
        let counts = self.keeper.state_counts()?;
        let nodes = counts
            .forwarders
            .into_iter()
            .map(|f| v1::Node {
                roles: f.roles.split('+').map(str::to_string).collect(),
                id: f.node,
                connected: f.connected,
                published_generation: f.published,
                acked_generation: f.acked,
                silence_ms: (f.silent_s * 1000.0) as u64,
                metrics: f.metrics.unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(v1::NodesResponse { nodes }))
    }

    type WatchStream =
        Pin<Box<dyn Stream<Item = Result<v1::CircuitEvent, Status>> + Send + 'static>>;

    async fn watch(
        &self,
        request: Request<v1::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let who = self.caller(&request)?;
        let r = request.get_ref();
        let mut filter = WatchFilter {
            owner: (!who.is_operator()).then(|| who.to_string()),
            circuits: if r.circuit_id == 0 {
                Vec::new()
            } else {
                vec![r.circuit_id]
            },
            app_host: if r.app_host.is_empty() {
                None
            } else {
                Some(parse_ip("app_host", &r.app_host).map_err(invalid)?)
            },
        };
        if r.circuit_id != 0 {
            // Fails with NOT_FOUND for a circuit that does not exist.
            self.owned(&who, "watch", r.circuit_id)?;
        }
        // Subscribed before answering: no event after this call returns is missed.
        let mut events = self.keeper.events();
        let closing = self.keeper.closing();

        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            tokio::pin!(closing);
            loop {
                tokio::select! {
                    event = events.recv() => match event {
                        Ok(e) => {
                            if filter.pass(&e) && tx.send(Ok(event_to_wire(&e))).await.is_err() {
                                break;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            let msg = format!("watch fell {n} events behind; list the circuits and watch again");
                            let _ = tx.send(Err(Status::data_loss(msg))).await;
                            break;
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                    _ = &mut closing => break,
                    _ = tx.closed() => break,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
