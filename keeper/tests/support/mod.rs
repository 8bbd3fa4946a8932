//! What the keeper's gRPC tests (and tarpctl's, which include this file) share: a keeper
//! on a fresh address of either transport, and fake forwarders on `ForwarderSession`.
#![allow(dead_code)]

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keeper::inventory::Config;
use keeper::server::Server;
use keeper::transport::{ListenAddr, Listener};
use tarp_api::circuit::ReturnPath;
use tarp_api::client::{
    ActivateRequest, ForwarderSession, Mode, PortRange, PortState, Protocol, Role, SessionOptions,
};
use tarp_api::rules::Rules;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub const EXAMPLE: &str = include_str!("../../examples/keeper.toml");

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn config(db: &Path, ack_timeout_ms: u64, heartbeat_timeout_ms: u64) -> Config {
    let mut c = Config::parse("keeper.toml", EXAMPLE).unwrap();
    c.settings.db = db.to_path_buf();
    c.settings.ack_timeout_ms = ack_timeout_ms;
    c.settings.heartbeat_interval_ms = 100;
    c.settings.heartbeat_timeout_ms = heartbeat_timeout_ms;
    c
}

/// How the test's clients reach the keeper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TCP on 127.0.0.1, any free port.
    Tcp,
    /// A Unix socket next to the database, in the test's temp dir.
    Unix,
}

/// Starts a keeper on a fresh address of the given transport.
pub async fn start(config: Config, transport: Transport) -> Server {
    let addr = match transport {
        Transport::Tcp => ListenAddr::Tcp("127.0.0.1:0".parse().unwrap()),
        Transport::Unix => ListenAddr::Unix(config.settings.db.with_file_name("keeper.sock")),
    };
    start_at(config, &addr).await
}

pub async fn start_at(config: Config, addr: &ListenAddr) -> Server {
    let listener = Listener::bind(addr).await.unwrap();
    Server::start(config, listener).await.unwrap()
}

pub fn endpoint(s: &Server) -> String {
    let e = s.endpoint();
    assert!(
        e.starts_with("http://127.0.0.1:") || e.starts_with("unix:/"),
        "{e}"
    );
    e
}

/// Runs each scenario once per transport, as the tests `NAME::tcp` and `NAME::unix`.
macro_rules! over_both_transports {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tcp() {
                super::$name(super::Transport::Tcp).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn unix() {
                super::$name(super::Transport::Unix).await
            }
        }
    )*};
}

/// Polls `f` until it yields, failing after 10 s.
pub async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..1000 {
        if let Some(v) = f() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Acknowledge everything.
    Ack,
    /// Acknowledge the first table set, reject the rest.
    NackAfterFirst,
    /// Acknowledge the first table set, ignore the rest.
    SilentAfterFirst,
    /// Acknowledge the first table set at once, the rest after a while.
    SlowAfterFirst(Duration),
    /// Acknowledge everything, recording only the newest generation, with empty rules
    /// (for long runs: no copy of a large set per update).
    AckKeepLast,
}

/// A forwarder that records every table set it receives.
pub struct Fake {
    pub updates: Arc<Mutex<Vec<(u64, Rules)>>>,
    pub links: mpsc::Sender<(String, bool)>,
    task: JoinHandle<()>,
}

impl Fake {
    pub async fn connect(
        keeper: impl Into<tarp_api::endpoint::Dial>,
        node: &str,
        roles: &[Role],
        ports: &[&str],
        last: u64,
        behaviour: Behaviour,
    ) -> Fake {
        let ports: Vec<PortState> = ports
            .iter()
            .map(|p| PortState {
                name: p.to_string(),
                up: true,
            })
            .collect();
        let options = SessionOptions {
            heartbeat_interval: Some(Duration::from_millis(100)),
            ..Default::default()
        };
        let mut session =
            ForwarderSession::connect_with(keeper, node, roles, &ports, last, options)
                .await
                .unwrap();
        let updates = Arc::new(Mutex::new(Vec::new()));
        let (links, mut link_rx) = mpsc::channel::<(String, bool)>(8);
        let seen = updates.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    update = session.next_update() => {
                        let Ok((generation, rules)) = update else { return };
                        let rules = if behaviour == Behaviour::AckKeepLast {
                            Rules::default()
                        } else {
                            Rules::clone(&rules)
                        };
                        let first = seen.lock().unwrap().is_empty();
                        if behaviour == Behaviour::AckKeepLast {
                            seen.lock().unwrap().clear();
                        }
                        seen.lock().unwrap().push((generation, rules));
                        match behaviour {
                            Behaviour::Ack | Behaviour::AckKeepLast => session.ack(generation).await.unwrap(),
                            _ if first => session.ack(generation).await.unwrap(),
                            Behaviour::NackAfterFirst => session.nack(generation, "demux[0]: test says no").await.unwrap(),
                            Behaviour::SilentAfterFirst => {}
                            Behaviour::SlowAfterFirst(delay) => {
                                tokio::time::sleep(delay).await;
                                session.ack(generation).await.unwrap();
                            }
                        }
                    }
                    Some((port, up)) = link_rx.recv() => session.report_link(&port, up).await.unwrap(),
                }
            }
        });
        Fake {
            updates,
            links,
            task,
        }
    }

    pub fn last(&self) -> Option<(u64, Rules)> {
        self.updates.lock().unwrap().last().cloned()
    }

    pub fn all(&self) -> Vec<(u64, Rules)> {
        self.updates.lock().unwrap().clone()
    }

    /// Waits for a table set satisfying `f`.
    pub async fn wait(&self, what: &str, f: impl Fn(&Rules) -> bool) -> (u64, Rules) {
        until(what, || self.last().filter(|(_, r)| f(r))).await
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The example inventory's node `node` (dc-1, pop-ams-1 or pop-fra-1) with its roles
/// and ports, acknowledging everything.
pub async fn fake_node(keeper: impl Into<tarp_api::endpoint::Dial>, node: &str) -> Fake {
    let (roles, ports): (&[Role], &[&str]) = match node {
        "dc-1" => (&[Role::Demux, Role::Remux], &["apps", "internet"]),
        "pop-ams-1" => (&[Role::Aggregator], &["line0", "line1", "uplink"]),
        "pop-fra-1" => (&[Role::Aggregator], &["line0", "uplink"]),
        _ => panic!("no node {node} in the example inventory"),
    };
    Fake::connect(keeper, node, roles, ports, 0, Behaviour::Ack).await
}

/// dc-1 (demux + remux), and the aggregators of ams and fra, all acknowledging.
pub async fn network(keeper: &str) -> (Fake, Fake, Fake) {
    network_with(|_| keeper.into()).await
}

/// [`network`], each node dialling the keeper as `dial(node)` says.
pub async fn network_with(dial: impl Fn(&str) -> tarp_api::endpoint::Dial) -> (Fake, Fake, Fake) {
    let dc = fake_node(dial("dc-1"), "dc-1").await;
    let ams = fake_node(dial("pop-ams-1"), "pop-ams-1").await;
    let fra = fake_node(dial("pop-fra-1"), "pop-fra-1").await;
    for f in [&dc, &ams, &fra] {
        f.wait("the initial table set", |_| true).await;
    }
    (dc, ams, fra)
}

pub fn address_req(app: &str) -> ActivateRequest {
    ActivateRequest {
        region: Some("eu".into()),
        pop: None,
        protocol: Protocol::Tcp,
        ports: PortRange::single(4000),
        mode: Mode::Address,
        app_host: ip(app),
        idempotency_key: None,
        capture: None,
        return_path: ReturnPath::Asymmetric,
        lease_ms: 0,
        owner: String::new(),
    }
}

pub fn captures(r: &Rules) -> Vec<IpAddr> {
    r.aggregator.iter().map(|a| a.capture).collect()
}
