//! A running keeper: the gRPC server over a listener, its heartbeat monitor, shutdown.

use std::sync::Arc;
use std::time::Duration;

use tarp_api::grpc::v1::circuits_server::CircuitsServer;
use tarp_api::grpc::v1::forwarders_server::ForwardersServer;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::{apps, forwarders, Keeper, KeeperError};
use crate::auth::Auth;
use crate::inventory::{Config, TlsSettings};
use crate::store::Store;
use crate::transport::{ListenAddr, Listener, Socket, SocketFileGuard};

/// A running keeper: the gRPC server, its heartbeat monitor, and the keeper state.
pub struct Server {
    keeper: Arc<Keeper>,
    local_addr: ListenAddr,
    stop: oneshot::Sender<()>,
    serve: JoinHandle<Result<(), tonic::transport::Error>>,
    monitor: JoinHandle<()>,
    socket_file: SocketFileGuard,
    /// The metrics endpoint, if `[keeper] metrics` names one: its address and task.
    metrics: Option<(std::net::SocketAddr, JoinHandle<()>)>,
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
    /// [`Settings::listen`](crate::inventory::Settings::listen)), or a tokio `TcpListener`.
    pub async fn start(
        config: Config,
        listener: impl Into<Listener>,
    ) -> Result<Server, KeeperError> {
        let listener = listener.into();
        let local_addr = listener
            .local_addr()
            .map_err(|e| KeeperError::Unavailable(format!("listener has no address: {e}")))?;
        let mut builder = tonic::transport::Server::builder();
        let auth = match &config.settings.tls {
            Some(tls) => {
                builder = builder
                    .tls_config(server_tls(tls)?)
                    .map_err(|e| setup("keeper.tls", e))?;
                info!(listen = %local_addr, client_ca = %tls.client_ca.display(), "TLS: callers named by their client certificates");
                Arc::new(Auth::tls())
            }
            None => {
                match &config.settings.plaintext_identity {
                    Some(id) => {
                        warn!(listen = %local_addr, "plaintext gRPC (no [keeper.tls]): every caller is {id}")
                    }
                    None => {
                        warn!(listen = %local_addr, "plaintext gRPC (no [keeper.tls]) and no keeper.plaintext_identity: every call is refused")
                    }
                }
                Arc::new(Auth::plaintext(config.settings.plaintext_identity.clone()))
            }
        };
        if let ListenAddr::Unix(path) = &local_addr {
            crate::transport::restrict_socket(
                path,
                config.settings.socket_mode,
                config.settings.socket_group.as_deref(),
            )
            .map_err(|e| setup("keeper.socket_group", e))?;
        }
        let store = Store::open(&config.settings.db)?;
        let keeper = Arc::new(Keeper::open(config.settings, config.inventory, store)?);
        keeper.start_committer();
        let (stop, stopped) = oneshot::channel::<()>();
        let router = builder
            .add_service(CircuitsServer::new(apps::AppService::new(
                keeper.clone(),
                auth.clone(),
            )))
            .add_service(ForwardersServer::new(forwarders::ForwarderService::new(
                keeper.clone(),
                auth,
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
                    keeper.check_leases();
                    keeper.check_reuse();
                    keeper.check_retention();
                }
            })
        };
        let metrics = match keeper.settings.metrics {
            Some(addr) => {
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| setup("keeper.metrics", format!("bind {addr}: {e}")))?;
                let bound = l.local_addr().map_err(|e| setup("keeper.metrics", e))?;
                let router = crate::metrics::router(keeper.clone())
                    .map_err(|e| setup("keeper.metrics", e))?;
                info!(metrics = %bound, "metrics endpoint");
                let task = tokio::spawn(async move {
                    if let Err(e) = axum::serve(l, router).await {
                        warn!("metrics endpoint stopped: {e}");
                    }
                });
                Some((bound, task))
            }
            None => None,
        };
        info!(listen = %local_addr, "keeper serving");
        Ok(Server {
            metrics,
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

    /// Where the metrics endpoint listens (for port 0: the port chosen).
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().map(|(a, _)| *a)
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
            metrics,
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
        if let Some((_, task)) = metrics {
            task.abort();
        }
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

fn setup(key: &'static str, problem: impl std::fmt::Display) -> KeeperError {
    KeeperError::Setup {
        key,
        problem: problem.to_string(),
    }
}

/// The server's TLS: its certificate, and client certificates from the CA, asked for
/// but not required by the handshake, so that a caller without one gets a gRPC status
/// saying so (UNAUTHENTICATED) rather than a broken connection.
fn server_tls(tls: &TlsSettings) -> Result<tonic::transport::ServerTlsConfig, KeeperError> {
    let read = |key: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| setup(key, format!("{}: {e}", path.display())))
    };
    let cert = read("keeper.tls.cert", &tls.cert)?;
    let key = read("keeper.tls.key", &tls.key)?;
    let ca = read("keeper.tls.client_ca", &tls.client_ca)?;
    Ok(tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(cert, key))
        .client_ca_root(tonic::transport::Certificate::from_pem(ca))
        .client_auth_optional(true))
}
