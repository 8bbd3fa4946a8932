//! The keeper over real gRPC: a keeper server, fake forwarders built on
//! `ForwarderSession`, and an application on `AppClient`. Each scenario runs twice:
//! over TCP on loopback (`NAME::tcp`) and over a Unix socket in its temp dir
//! (`NAME::unix`), the way forwarders in other network namespaces reach the keeper.

use std::time::Duration;

use keeper::transport::Listener;
use tarp_api::client::{
    ActivateRequest, AppClient, Circuit, CircuitState, EventKind, ForwarderSession, ListFilter,
    Mode, Role,
};
use tarp_api::rules::{AggregatorRule, DemuxRule, RemuxRule};
use tonic::Code;

#[macro_use]
mod support;
use support::*;

over_both_transports!(
    activate_watch_bounce_release,
    nack_fails_the_activation_and_rolls_back,
    silent_forwarder_times_out_and_rolls_back,
    lost_heartbeats_bounce_and_reconnect_recovers,
    forwarder_hello_is_checked,
    restart_keeps_circuits_and_resyncs_by_generation,
    app_client_redials_a_restarted_keeper,
    shutdown_lets_an_activation_under_way_finish,
);
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
        dc.last()
            .unwrap()
            .1
            .tunnel_peers
            .iter()
            .map(|p| (p.address, p.vni))
            .collect::<Vec<_>>(),
        [("192.0.2.1", 100), ("192.0.2.2", 101), ("192.0.2.3", 102)].map(|(a, v)| (ip(a), Some(v)))
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
            line: Some("line0".into()),
            answer_ping: false,
            return_via: None
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
    // The same, a page at a time.
    let (page, next) = app.list_page(&ListFilter::default(), 0, 1).await.unwrap();
    assert_eq!(
        (page.iter().map(|c| c.id).collect::<Vec<_>>(), next),
        (vec![c.id], Some(c.id))
    );
    let (page, next) = app
        .list_page(&ListFilter::default(), c.id, 1)
        .await
        .unwrap();
    assert_eq!(
        (page.iter().map(|c| c.id).collect::<Vec<_>>(), next),
        (vec![k1.id], None)
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
        // Addresses released here are held back until every forwarder dropped them:
        // the region may run out for a moment.
        let n = match app
            .activate(&ActivateRequest {
                pop: Some("ams".into()),
                ..address_req("198.19.0.2")
            })
            .await
        {
            Ok(n) => n,
            Err(e) if e.code() == Some(Code::ResourceExhausted) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => panic!("{e}"),
        };
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

    // It comes back: its lines return to the pool. Its old address was held back while
    // it could still be forwarding on its old table; it is handed out again once the
    // aggregator has acknowledged a set without it.
    assert_eq!(server.keeper().held_captures(), [c.capture]);
    let _ams = Fake::connect(
        &keeper,
        "pop-ams-1",
        &[Role::Aggregator],
        &["line0", "line1"],
        0,
        Behaviour::Ack,
    )
    .await;
    until("the hold on ams's address lifted", || {
        server.keeper().held_captures().is_empty().then_some(())
    })
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
    assert_eq!(*rules, dc_rules);
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
        EXAMPLE.replacen("vni = 100", "vni = 100, colour = 1", 1),
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
    assert!(err.contains("unknown field `colour`"), "{err}");

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
