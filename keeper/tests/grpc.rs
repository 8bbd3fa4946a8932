//! The keeper over real gRPC: a keeper server, fake forwarders built on
//! `ForwarderSession`, and an application on `AppClient`. Each scenario runs twice:
//! over TCP on loopback (`NAME::tcp`) and over a Unix socket in its temp dir
//! (`NAME::unix`), the way forwarders in other network namespaces reach the keeper.

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keeper::client::{
    ActivateRequest, AppClient, Circuit, CircuitState, EventKind, ForwarderSession, ListFilter,
    Mode, PortRange, PortState, Protocol, Role, SessionOptions,
};
use keeper::inventory::Config;
use keeper::server::Server;
use keeper::transport::{ListenAddr, Listener};
use tarp_api::rules::{AggregatorRule, DemuxRule, RemuxRule, Rules};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::Code;

const EXAMPLE: &str = include_str!("../examples/keeper.toml");

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn config(db: &Path, ack_timeout_ms: u64, heartbeat_timeout_ms: u64) -> Config {
    let mut c = Config::parse("keeper.toml", EXAMPLE).unwrap();
    c.settings.db = db.to_path_buf();
    c.settings.ack_timeout_ms = ack_timeout_ms;
    c.settings.heartbeat_interval_ms = 100;
    c.settings.heartbeat_timeout_ms = heartbeat_timeout_ms;
    c
}

/// How the test's clients reach the keeper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// TCP on 127.0.0.1, any free port.
    Tcp,
    /// A Unix socket next to the database, in the test's temp dir.
    Unix,
}

/// Starts a keeper on a fresh address of the given transport.
async fn start(config: Config, transport: Transport) -> Server {
    let addr = match transport {
        Transport::Tcp => ListenAddr::Tcp("127.0.0.1:0".parse().unwrap()),
        Transport::Unix => ListenAddr::Unix(config.settings.db.with_file_name("keeper.sock")),
    };
    start_at(config, &addr).await
}

async fn start_at(config: Config, addr: &ListenAddr) -> Server {
    let listener = Listener::bind(addr).await.unwrap();
    Server::start(config, listener).await.unwrap()
}

fn endpoint(s: &Server) -> String {
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

over_both_transports!(
    activate_watch_bounce_release,
    nack_fails_the_activation_and_rolls_back,
    silent_forwarder_times_out_and_rolls_back,
    lost_heartbeats_bounce_and_reconnect_recovers,
    forwarder_hello_is_checked,
    restart_keeps_circuits_and_resyncs_by_generation,
    tarpctl_runs_a_command_with_its_circuit,
    app_client_redials_a_restarted_keeper,
    shutdown_lets_an_activation_under_way_finish,
);

/// Polls `f` until it yields, failing after 10 s.
async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..1000 {
        if let Some(v) = f() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// Acknowledge everything.
    Ack,
    /// Acknowledge the first table set, reject the rest.
    NackAfterFirst,
    /// Acknowledge the first table set, ignore the rest.
    SilentAfterFirst,
    /// Acknowledge the first table set at once, the rest after a while.
    SlowAfterFirst(Duration),
}

/// A forwarder that records every table set it receives.
struct Fake {
    updates: Arc<Mutex<Vec<(u64, Rules)>>>,
    links: mpsc::Sender<(String, bool)>,
    task: JoinHandle<()>,
}

impl Fake {
    async fn connect(
        keeper: &str,
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
                        let first = seen.lock().unwrap().is_empty();
                        seen.lock().unwrap().push((generation, rules));
                        match behaviour {
                            Behaviour::Ack => session.ack(generation).await.unwrap(),
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

    fn last(&self) -> Option<(u64, Rules)> {
        self.updates.lock().unwrap().last().cloned()
    }

    fn all(&self) -> Vec<(u64, Rules)> {
        self.updates.lock().unwrap().clone()
    }

    /// Waits for a table set satisfying `f`.
    async fn wait(&self, what: &str, f: impl Fn(&Rules) -> bool) -> (u64, Rules) {
        until(what, || self.last().filter(|(_, r)| f(r))).await
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// dc-1 (demux + remux), and the aggregators of ams and fra, all acknowledging.
async fn network(keeper: &str) -> (Fake, Fake, Fake) {
    let dc = Fake::connect(
        keeper,
        "dc-1",
        &[Role::Demux, Role::Remux],
        &["apps", "internet"],
        0,
        Behaviour::Ack,
    )
    .await;
    let ams = Fake::connect(
        keeper,
        "pop-ams-1",
        &[Role::Aggregator],
        &["line0", "line1", "uplink"],
        0,
        Behaviour::Ack,
    )
    .await;
    let fra = Fake::connect(
        keeper,
        "pop-fra-1",
        &[Role::Aggregator],
        &["line0", "uplink"],
        0,
        Behaviour::Ack,
    )
    .await;
    for f in [&dc, &ams, &fra] {
        f.wait("the initial table set", |_| true).await;
    }
    (dc, ams, fra)
}

fn address_req(app: &str) -> ActivateRequest {
    ActivateRequest {
        region: Some("eu".into()),
        pop: None,
        protocol: Protocol::Tcp,
        ports: PortRange::single(4000),
        mode: Mode::Address,
        app_host: ip(app),
        idempotency_key: None,
        capture: None,
    }
}

fn captures(r: &Rules) -> Vec<IpAddr> {
    r.aggregator.iter().map(|a| a.capture).collect()
}

async fn activate_watch_bounce_release(t: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let server = start(config(&dir.path().join("k.redb"), 5_000, 60_000), t).await;
    let keeper = endpoint(&server);
    let (dc, ams, _fra) = network(&keeper).await;
    // The static part arrives first: tunnel, routes, tunnel peers.
    let (_, initial) = ams.last().unwrap();
    assert_eq!(initial.tunnels[0].remote, ip("192.0.2.100"));
    assert!(initial.aggregator.is_empty());
    assert_eq!(
        dc.last().unwrap().1.tunnel_peers,
        [ip("192.0.2.1"), ip("192.0.2.2"), ip("192.0.2.3")]
    );

    let mut app = AppClient::connect(&keeper).await.unwrap();
    let c = app.activate(&address_req("198.19.0.2")).await.unwrap();
    assert_eq!(c.state, CircuitState::Active);
    assert_eq!(
        (c.capture, c.alias, c.bind_address()),
        (ip("203.0.113.1"), ip("198.18.0.1"), ip("203.0.113.1"))
    );
    assert_eq!(
        (c.aggregator.as_str(), c.line.as_str()),
        ("pop-ams-1", "line0")
    );

    // Answered only after every forwarder on the path acknowledged: the tables are
    // already there, and the aggregator's came after the demux's (make before break).
    let (agg_gen, agg_rules) = ams.last().unwrap();
    assert_eq!(
        agg_rules.aggregator,
        [AggregatorRule {
            capture: c.capture,
            alias: c.alias,
            tunnel: 1,
            line: Some("line0".into())
        }]
    );
    assert_eq!(c.generation, agg_gen);
    let dc_all = dc.all();
    let demux_first = dc_all.iter().find(|(_, r)| !r.demux.is_empty()).unwrap();
    assert!(
        demux_first.0 < agg_gen,
        "demux at {} must precede aggregator at {agg_gen}",
        demux_first.0
    );
    let dc_rules = &dc_all.last().unwrap().1;
    assert_eq!(
        dc_rules.demux,
        [DemuxRule::Address {
            alias: c.alias,
            capture: c.capture,
            app_host: ip("198.19.0.2")
        }]
    );
    assert_eq!(dc_rules.remux, [RemuxRule::Address { capture: c.capture }]);

    // A retried activation with the same key returns the same circuit.
    let keyed = ActivateRequest {
        idempotency_key: Some("job-1".into()),
        mode: Mode::Port,
        ..address_req("198.19.0.3")
    };
    let k1 = app.activate(&keyed).await.unwrap();
    let k2 = app.activate(&keyed).await.unwrap();
    assert_eq!(k1.id, k2.id);
    assert_eq!(k1.bind_address(), ip("198.19.0.3"));
    let listed = app.list(&ListFilter::default()).await.unwrap();
    assert_eq!(
        listed.iter().map(|c| c.id).collect::<Vec<_>>(),
        [c.id, k1.id]
    );

    // Refusals carry a status code and a reason.
    let e = app
        .activate(&ActivateRequest {
            region: Some("mars".into()),
            ..address_req("198.19.0.2")
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound), "{e}");
    let e = app
        .activate(&ActivateRequest {
            capture: Some(c.capture),
            ..address_req("198.19.0.3")
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::FailedPrecondition), "{e}");
    assert!(e.to_string().contains("already held by circuit 1"), "{e}");
    let e = app.activate(&address_req("198.19.9.9")).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::InvalidArgument), "{e}");
    let e = app.get(999).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound));

    // The line goes down: the circuit bounces, a replacement is activated in the same
    // region, and the watcher is told the new capture address.
    let mut events = app.watch(Some(c.id), None).await.unwrap();
    ams.links.send(("line0".into(), false)).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.kind, EventKind::Bounced);
    assert_eq!(event.circuit.id, c.id);
    assert_eq!(event.reason.as_deref(), Some("link down"));
    let r: Circuit = event.replacement.expect("a replacement");
    assert_eq!(
        (r.state, r.capture, r.line.as_str(), r.replaces),
        (
            CircuitState::Active,
            ip("203.0.113.17"),
            "line1",
            Some(c.id)
        )
    );
    let (_, agg_rules) = ams.last().unwrap();
    assert!(captures(&agg_rules).contains(&r.capture), "{agg_rules:?}");
    assert!(!captures(&agg_rules).contains(&c.capture), "{agg_rules:?}");
    let old = app.get(c.id).await.unwrap();
    assert_eq!(
        (old.state, old.replaced_by),
        (CircuitState::Bounced, Some(r.id))
    );

    // The line comes back: its addresses return to the pool.
    ams.links.send(("line0".into(), true)).await.unwrap();
    let mut again = None;
    for _ in 0..100 {
        let n = app
            .activate(&ActivateRequest {
                pop: Some("ams".into()),
                ..address_req("198.19.0.2")
            })
            .await
            .unwrap();
        if n.capture == ip("203.0.113.1") {
            again = Some(n);
            break;
        }
        app.release(n.id).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let again = again.expect("203.0.113.1 back in the pool");

    // Release: gone from the aggregator, the watcher is told.
    let released = app.release(r.id).await.unwrap();
    assert_eq!(released.state, CircuitState::Released);
    let event = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((event.kind, event.circuit.id), (EventKind::Released, r.id));
    let (_, agg_rules) = ams.last().unwrap();
    assert!(!captures(&agg_rules).contains(&r.capture), "{agg_rules:?}");
    assert!(
        captures(&agg_rules).contains(&again.capture),
        "{agg_rules:?}"
    );
    // A second release answers with the released circuit.
    assert_eq!(
        app.release(r.id).await.unwrap().state,
        CircuitState::Released
    );
    // The bounced circuit is released without a push.
    assert_eq!(
        app.release(c.id).await.unwrap().state,
        CircuitState::Released
    );
    server.shutdown().await;
}

async fn nack_fails_the_activation_and_rolls_back(t: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let server = start(config(&dir.path().join("k.redb"), 5_000, 60_000), t).await;
    let keeper = endpoint(&server);
    let dc = Fake::connect(
        &keeper,
        "dc-1",
        &[Role::Demux, Role::Remux],
        &[],
        0,
        Behaviour::NackAfterFirst,
    )
    .await;
    let _ams = Fake::connect(
        &keeper,
        "pop-ams-1",
        &[Role::Aggregator],
        &[],
        0,
        Behaviour::Ack,
    )
    .await;
    dc.wait("initial table set", |_| true).await;

    let mut app = AppClient::connect(&keeper).await.unwrap();
    let e = app.activate(&address_req("198.19.0.2")).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::Aborted), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("forwarder dc-1 rejected generation"), "{msg}");
    assert!(msg.contains("demux[0]: test says no"), "{msg}");
    assert!(msg.contains("rolled back"), "{msg}");
    assert!(app
        .list(&ListFilter {
            include_released: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .is_empty());
    // The keeper's desired tables for dc-1 no longer hold the circuit.
    dc.wait("the rolled-back table set", |r| {
        r.demux.is_empty() && r.remux.is_empty()
    })
    .await;
    assert!(server
        .keeper()
        .table("dc-1")
        .unwrap()
        .rules
        .demux
        .is_empty());
    server.shutdown().await;
}

async fn silent_forwarder_times_out_and_rolls_back(t: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let server = start(config(&dir.path().join("k.redb"), 300, 60_000), t).await;
    let keeper = endpoint(&server);
    let dc = Fake::connect(
        &keeper,
        "dc-1",
        &[Role::Demux, Role::Remux],
        &[],
        0,
        Behaviour::Ack,
    )
    .await;
    let ams = Fake::connect(
        &keeper,
        "pop-ams-1",
        &[Role::Aggregator],
        &[],
        0,
        Behaviour::SilentAfterFirst,
    )
    .await;
    ams.wait("initial table set", |_| true).await;

    let mut app = AppClient::connect(&keeper).await.unwrap();
    let e = app.activate(&address_req("198.19.0.2")).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::DeadlineExceeded), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("forwarder pop-ams-1 did not acknowledge generation"),
        "{msg}"
    );
    assert!(
        msg.contains("(connected)") && msg.contains("rolled back"),
        "{msg}"
    );
    assert!(app.list(&ListFilter::default()).await.unwrap().is_empty());
    // Rolled back everywhere: demux and remux entries were removed again.
    dc.wait("the rolled-back table set", |r| r.demux.is_empty())
        .await;
    assert!(dc.all().iter().any(|(_, r)| !r.demux.is_empty()));
    assert!(server
        .keeper()
        .table("pop-ams-1")
        .unwrap()
        .rules
        .aggregator
        .is_empty());
    server.shutdown().await;
}

async fn lost_heartbeats_bounce_and_reconnect_recovers(t: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let server = start(config(&dir.path().join("k.redb"), 5_000, 500), t).await;
    let keeper = endpoint(&server);
    let (_dc, ams, fra) = network(&keeper).await;
    let mut app = AppClient::connect(&keeper).await.unwrap();
    let req = ActivateRequest {
        mode: Mode::Port,
        pop: Some("ams".into()),
        ..address_req("198.19.0.2")
    };
    let c = app.activate(&req).await.unwrap();
    assert_eq!(c.pop, "ams");
    let mut events = app.watch(None, Some(ip("198.19.0.2"))).await.unwrap();

    // The aggregator goes away: after the heartbeat timeout its lines bounce and the
    // circuit moves to the other POP of the region.
    drop(ams);
    let event = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((event.kind, event.circuit.id), (EventKind::Bounced, c.id));
    assert!(
        event
            .reason
            .as_deref()
            .unwrap()
            .contains("aggregator pop-ams-1 silent"),
        "{:?}",
        event.reason
    );
    let r = event
        .replacement
        .unwrap_or_else(|| panic!("no replacement: {:?}", event.reason));
    assert_eq!((r.pop.as_str(), r.capture), ("fra", ip("203.0.113.33")));
    let (_, fra_rules) = fra.last().unwrap();
    assert_eq!(captures(&fra_rules), [r.capture]);

    // It comes back: its lines return to the pool.
    let _ams = Fake::connect(
        &keeper,
        "pop-ams-1",
        &[Role::Aggregator],
        &["line0", "line1"],
        0,
        Behaviour::Ack,
    )
    .await;
    let n = app
        .activate(&ActivateRequest {
            app_host: ip("198.19.0.3"),
            ..req
        })
        .await
        .unwrap();
    assert_eq!((n.pop.as_str(), n.capture), ("ams", ip("203.0.113.1")));
    server.shutdown().await;
}

async fn forwarder_hello_is_checked(t: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let server = start(config(&dir.path().join("k.redb"), 5_000, 60_000), t).await;
    let keeper = endpoint(&server);
    let e = ForwarderSession::connect(&keeper, "pop-xyz", &[Role::Aggregator], &[], 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound), "{e}");
    let e = ForwarderSession::connect(&keeper, "pop-ams-1", &[Role::Demux], &[], 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::FailedPrecondition), "{e}");
    assert!(e.to_string().contains("not a demux"), "{e}");
    server.shutdown().await;
}

async fn restart_keeps_circuits_and_resyncs_by_generation(t: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("k.redb");
    let (ids, ams_generation, dc_rules) = {
        let server = start(config(&db, 5_000, 60_000), t).await;
        let keeper = endpoint(&server);
        let (dc, ams, _fra) = network(&keeper).await;
        let mut app = AppClient::connect(&keeper).await.unwrap();
        let a = app.activate(&address_req("198.19.0.2")).await.unwrap();
        let b = app
            .activate(&ActivateRequest {
                mode: Mode::Port,
                ..address_req("198.19.0.3")
            })
            .await
            .unwrap();
        let (ams_generation, _) = ams.last().unwrap();
        let (_, dc_rules) = dc.last().unwrap();
        server.shutdown().await;
        // A clean stop removes the socket file (the restart binds the same path).
        assert!(!dir.path().join("keeper.sock").exists());
        (vec![a.id, b.id], ams_generation, dc_rules)
    };

    let server = start(config(&db, 5_000, 60_000), t).await;
    let keeper = endpoint(&server);
    let mut app = AppClient::connect(&keeper).await.unwrap();
    let listed = app.list(&ListFilter::default()).await.unwrap();
    assert_eq!(listed.iter().map(|c| c.id).collect::<Vec<_>>(), ids);
    assert!(listed.iter().all(|c| c.state == CircuitState::Active));

    // A forwarder that runs the current generation gets nothing new...
    let current = server.keeper().table("pop-ams-1").unwrap().generation;
    assert_eq!(current, ams_generation);
    let mut ams =
        ForwarderSession::connect(&keeper, "pop-ams-1", &[Role::Aggregator], &[], current)
            .await
            .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), ams.next_update())
            .await
            .is_err()
    );
    // ...one that restarted (generation 0) gets the full set...
    let mut dc = ForwarderSession::connect(&keeper, "dc-1", &[Role::Demux, Role::Remux], &[], 0)
        .await
        .unwrap();
    let (generation, rules) = dc.next_update().await.unwrap();
    assert_eq!(rules, dc_rules);
    assert_eq!(
        generation,
        server.keeper().table("dc-1").unwrap().generation
    );
    // ...and so does one that runs an older generation.
    drop(ams);
    let mut ams = ForwarderSession::connect(&keeper, "pop-ams-1", &[Role::Aggregator], &[], 1)
        .await
        .unwrap();
    let (generation, rules) = tokio::time::timeout(Duration::from_secs(10), ams.next_update())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(generation, current);
    assert_eq!(captures(&rules), [ip("203.0.113.1"), ip("203.0.113.2")]);
    // Circuit ids are not reused after a restart.
    let _fra = Fake::connect(
        &keeper,
        "pop-fra-1",
        &[Role::Aggregator],
        &[],
        0,
        Behaviour::Ack,
    )
    .await;
    let _dc = Fake::connect(
        &keeper,
        "dc-1",
        &[Role::Demux, Role::Remux],
        &[],
        0,
        Behaviour::Ack,
    )
    .await;
    let _ams = Fake::connect(
        &keeper,
        "pop-ams-1",
        &[Role::Aggregator],
        &[],
        0,
        Behaviour::Ack,
    )
    .await;
    let c = app.activate(&address_req("198.19.0.3")).await.unwrap();
    assert_eq!(c.id, ids[1] + 1);
    server.shutdown().await;
}

async fn tarpctl_runs_a_command_with_its_circuit(t: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let server = start(config(&dir.path().join("k.redb"), 5_000, 60_000), t).await;
    let keeper = endpoint(&server);
    let (_dc, _ams, _fra) = network(&keeper).await;
    let tarpctl = env!("CARGO_BIN_EXE_tarpctl");
    let script = r#"test "$TARP_MODE" = port && test "$TARP_BIND_ADDR" = 198.19.0.2 && test "$TARP_PORT" = 4000 && echo "$TARP_CIRCUIT_ID $TARP_CAPTURE_ADDR"; exit 3"#;
    let out = tokio::process::Command::new(tarpctl)
        .args([
            "--keeper",
            &keeper,
            "activate",
            "--mode",
            "port",
            "--port",
            "4000",
            "--app-host",
            "198.19.0.2",
        ])
        .args(["--region", "eu", "--", "sh", "-c", script])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "1 203.0.113.1");
    // Released when the command exited. (The endpoint from the environment.)
    let out = tokio::process::Command::new(tarpctl)
        .env("TARP_KEEPER", &keeper)
        .args(["--json", "list", "--all"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(
        (v["id"].as_u64(), v["state"].as_str()),
        (Some(1), Some("released"))
    );
    // Errors: one line, non-zero exit.
    let out = tokio::process::Command::new(tarpctl)
        .args(["--keeper", &keeper, "get", "7"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "tarpctl: keeper: NotFound: no circuit 7"
    );
    server.shutdown().await;
}

/// The application's channel dials the keeper again, over the same transport, when a
/// keeper comes back at the same address.
async fn app_client_redials_a_restarted_keeper(t: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("k.redb");
    let server = start(config(&db, 5_000, 60_000), t).await;
    let addr = server.local_addr().clone();
    let keeper = endpoint(&server);
    let (_dc, _ams, _fra) = network(&keeper).await;
    let mut app = AppClient::connect(&keeper).await.unwrap();
    let c = app.activate(&address_req("198.19.0.2")).await.unwrap();
    server.shutdown().await;
    assert!(app.list(&ListFilter::default()).await.is_err());

    let server = start_at(config(&db, 5_000, 60_000), &addr).await;
    let mut listed = None;
    for _ in 0..100 {
        if let Ok(l) = app.list(&ListFilter::default()).await {
            listed = Some(l);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listed = listed.expect("the client never reached the restarted keeper");
    assert_eq!(listed.iter().map(|c| c.id).collect::<Vec<_>>(), [c.id]);
    // A forwarder reconnecting with what it runs (0 after a restart) gets its tables.
    let mut dc = ForwarderSession::connect(&keeper, "dc-1", &[Role::Demux, Role::Remux], &[], 0)
        .await
        .unwrap();
    let (generation, rules) = dc.next_update().await.unwrap();
    assert_eq!(rules.demux.len(), 1);
    dc.ack(generation).await.unwrap();
    until("the ACK", || {
        let s = server.keeper().ack_state("dc-1")?;
        (s.acked == generation).then_some(())
    })
    .await;
    server.shutdown().await;
}

/// SIGTERM's path: a stop while an activation waits for a slow aggregator lets it
/// finish (its forwarder streams stay up), and what it wrote survives.
async fn shutdown_lets_an_activation_under_way_finish(t: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("k.redb");
    let server = start(config(&db, 5_000, 60_000), t).await;
    let keeper = endpoint(&server);
    let _dc = Fake::connect(
        &keeper,
        "dc-1",
        &[Role::Demux, Role::Remux],
        &[],
        0,
        Behaviour::Ack,
    )
    .await;
    let ams = Fake::connect(
        &keeper,
        "pop-ams-1",
        &[Role::Aggregator],
        &[],
        0,
        Behaviour::SlowAfterFirst(Duration::from_millis(800)),
    )
    .await;
    ams.wait("the initial table set", |_| true).await;
    let mut app = AppClient::connect(&keeper).await.unwrap();
    let activation = tokio::spawn(async move { app.activate(&address_req("198.19.0.2")).await });
    // The aggregator has its entry and takes its time to acknowledge it.
    ams.wait("the aggregator's entry", |r| !r.aggregator.is_empty())
        .await;
    server.shutdown().await;
    let c = activation
        .await
        .unwrap()
        .expect("the activation under way finishes");
    assert_eq!(c.state, CircuitState::Active);
    // The keeper is gone...
    assert!(AppClient::connect(&keeper).await.is_err());
    // ...and its database holds the active circuit.
    let store = keeper::store::Store::open(&db).unwrap();
    let loaded = store.load().unwrap();
    assert_eq!(
        loaded
            .circuits
            .iter()
            .map(|c| (c.id, c.state))
            .collect::<Vec<_>>(),
        [(c.id, CircuitState::Active)]
    );
}

/// Waits for a child to exit, at most 10 s.
async fn exit_status(child: &mut tokio::process::Child) -> std::process::ExitStatus {
    tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("tarp-keeper did not exit within 10 s")
        .unwrap()
}

/// `tarp-keeper` on a Unix socket (relative to its config file), stopped by SIGTERM
/// and then by SIGINT: it serves clients, stops cleanly, removes its socket file and
/// leaves a database the next run opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tarp_keeper_serves_a_unix_socket_and_stops_on_signals() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keeper.toml");
    let text = EXAMPLE.replacen(
        "listen = \"127.0.0.1:50551\"",
        "listen = \"unix:run/keeper.sock\"",
        1,
    );
    std::fs::write(&file, text).unwrap();
    let socket = dir.path().join("run/keeper.sock");
    let endpoint = format!("unix:{}", socket.display());
    let bin = env!("CARGO_BIN_EXE_tarp-keeper");
    let tarpctl = env!("CARGO_BIN_EXE_tarpctl");
    for signal in ["TERM", "INT"] {
        let mut child = tokio::process::Command::new(bin)
            .arg("--config")
            .arg(&file)
            .env("RUST_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        until("the keeper's socket", || socket.exists().then_some(())).await;
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&socket).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o660);
        let mut app = AppClient::connect(&endpoint).await.unwrap();
        assert!(app.list(&ListFilter::default()).await.unwrap().is_empty());
        let e = app.get(1).await.unwrap_err();
        assert_eq!(e.code(), Some(Code::NotFound));
        let out = tokio::process::Command::new(tarpctl)
            .env("TARP_KEEPER", &endpoint)
            .args(["get", "1"])
            .output()
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim(),
            "tarpctl: keeper: NotFound: no circuit 1"
        );

        let pid = child.id().unwrap().to_string();
        let kill = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(kill.success());
        let status = exit_status(&mut child).await;
        let mut stderr = String::new();
        tokio::io::AsyncReadExt::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr)
            .await
            .unwrap();
        assert!(status.success(), "SIG{signal}: {status}\n{stderr}");
        assert!(stderr.contains("shutting down"), "{stderr}");
        assert!(stderr.contains("keeper stopped"), "{stderr}");
        assert!(!socket.exists(), "SIG{signal}: socket file left behind");
    }
    // The database is closed and consistent.
    keeper::store::Store::open(&dir.path().join("keeper.redb"))
        .unwrap()
        .load()
        .unwrap();
}

/// A keeper does not start over a socket another keeper listens on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_socket_is_not_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        config(&dir.path().join("k.redb"), 5_000, 60_000),
        Transport::Unix,
    )
    .await;
    let e = Listener::bind(server.local_addr()).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
    let mut app = AppClient::connect(&endpoint(&server)).await.unwrap();
    app.list(&ListFilter::default()).await.unwrap();
    server.shutdown().await;
}

#[test]
fn tarp_keeper_check() {
    let keeper = env!("CARGO_BIN_EXE_tarp-keeper");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/keeper.toml");
    let out = std::process::Command::new(keeper)
        .args(["--check", "--config", example])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        EXAMPLE.replacen("vni = 100", "vni = 100, mtu = 1500", 1),
    )
    .unwrap();
    let out = std::process::Command::new(keeper)
        .args(["--check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("unknown field `mtu`"), "{err}");

    // A Unix socket: checked, not created.
    let socket = dir.path().join("run/keeper.sock");
    let unix = dir.path().join("unix.toml");
    std::fs::write(
        &unix,
        EXAMPLE.replacen(
            "listen = \"127.0.0.1:50551\"",
            &format!("listen = \"unix:{}\"", socket.display()),
            1,
        ),
    )
    .unwrap();
    let out = std::process::Command::new(keeper)
        .args(["--check", "--config"])
        .arg(&unix)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(": ok: listen unix:{},", socket.display())),
        "{stdout}"
    );
    assert!(!socket.exists());

    // A bad listen value: one line naming the key.
    std::fs::write(
        &bad,
        EXAMPLE.replacen(
            "listen = \"127.0.0.1:50551\"",
            "listen = \"keeper.sock\"",
            1,
        ),
    )
    .unwrap();
    let out = std::process::Command::new(keeper)
        .args(["--check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("bad.toml: keeper.listen: \"keeper.sock\" is neither IP:PORT"),
        "{err}"
    );
}
