//! How circuits are held and freed, over real gRPC: leases that run out release their
//! circuit and say so over `Watch`; an address freed while an aggregator is cut off is
//! not handed to another circuit until that aggregator dropped it; a line that keeps
//! bouncing is held down; a forwarder that reports nonsense gets an error, not a
//! corrupted state.

use std::time::Duration;

use keeper::circuits::LineId;
use keeper::transport::ListenAddr;
use tarp_api::client::{
    ActivateRequest, AppClient, CircuitState, EventKind, ForwarderSession, PortState, Role,
};
use tonic::Code;

use crate::support::*;

/// A lease renewed keeps its circuit; one that runs out releases it, with the reason,
/// over `Watch`. Renewing then fails; leases outside the keeper's bounds are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_runs_out_releases_its_circuit() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir.path().join("k.redb"), 5_000, 60_000);
    cfg.settings.min_lease_ms = 200;
    cfg.settings.max_lease_ms = 10_000;
    let server = start(cfg, Transport::Tcp).await;
    let keeper = endpoint(&server);
    let (_dc, _ams, _fra) = network(&keeper).await;
    let mut app = AppClient::connect(&keeper).await.unwrap();

    let leased = ActivateRequest {
        lease_ms: 600,
        ..address_req("198.19.0.2")
    };
    let c = app.activate(&leased).await.unwrap();
    assert_eq!((c.state, c.lease_ms), (CircuitState::Active, 600));
    let plain = app.activate(&address_req("198.19.0.3")).await.unwrap();
    let mut events = app.watch(Some(c.id), None).await.unwrap();

    // Renewed every 200 ms for twice its lease: still active.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let renewed = app.renew(&[c.id]).await.unwrap();
        assert_eq!(renewed[0].id, c.id);
    }
    assert_eq!(app.get(c.id).await.unwrap().state, CircuitState::Active);

    // Left alone, it is released, and the watcher is told why.
    let event = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("released within 5 s")
        .unwrap()
        .unwrap();
    assert_eq!((event.kind, event.circuit.id), (EventKind::Released, c.id));
    assert_eq!(event.reason.as_deref(), Some("lease expired"));
    let now = app.get(c.id).await.unwrap();
    assert_eq!(now.state, CircuitState::Released);
    assert_eq!(now.reason.as_deref(), Some("lease expired"));
    // The circuit without a lease is untouched.
    assert_eq!(app.get(plain.id).await.unwrap().state, CircuitState::Active);

    let e = app.renew(&[c.id]).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::FailedPrecondition), "{e}");
    let e = app.renew(&[plain.id]).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::FailedPrecondition), "{e}");
    assert!(e.to_string().contains("no lease"), "{e}");
    let e = app.renew(&[4242]).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound), "{e}");
    for lease_ms in [100, 20_000] {
        let e = app
            .activate(&ActivateRequest {
                lease_ms,
                ..address_req("198.19.0.2")
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(Code::InvalidArgument), "{e}");
        assert!(e.to_string().contains("lease of"), "{e}");
    }
    assert!(server.keeper().audit().unwrap().is_empty());
    server.shutdown().await;
}

/// The danger: an aggregator cut off from the keeper still forwards on its old table,
/// capture address X to alias Y. If Y went to a new circuit (at another POP, to
/// another app host), X's traffic would reach that app host. So after the release Y
/// and X are held back until the aggregator has dropped them, and only then reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freed_alias_waits_for_the_aggregator_that_held_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        config(&dir.path().join("k.redb"), 1_000, 60_000),
        Transport::Tcp,
    )
    .await;
    let keeper = endpoint(&server);
    let (_dc, ams, _fra) = network(&keeper).await;
    let mut app = AppClient::connect(&keeper).await.unwrap();
    let at = |pop: &str, app: &str| ActivateRequest {
        pop: Some(pop.into()),
        ..address_req(app)
    };

    let a = app.activate(&at("ams", "198.19.0.2")).await.unwrap();
    assert_eq!(a.aggregator, "pop-ams-1");
    // The aggregator is cut off (it keeps its tables); the release goes on without it.
    drop(ams);
    let released = app.release(a.id).await.unwrap();
    assert_eq!(released.state, CircuitState::Released);
    assert_eq!(server.keeper().held_captures(), [a.capture]);

    // A circuit at another POP on the same demux: any alias but a's.
    let b = app.activate(&at("fra", "198.19.0.3")).await.unwrap();
    assert_eq!(b.demux, a.demux);
    assert_ne!(
        b.alias, a.alias,
        "the cut-off aggregator still maps {} to it",
        a.capture
    );
    let e = app
        .activate(&ActivateRequest {
            capture: Some(a.capture),
            ..address_req("198.19.0.3")
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::Unavailable), "{e}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.keeper().held_captures(), [a.capture]);

    // The aggregator comes back, receives its current set and acknowledges it: the
    // alias and the address are free again, and the next circuit gets a's alias.
    let _ams = fake_node(&keeper, "pop-ams-1").await;
    until("the hold lifted", || {
        server.keeper().held_captures().is_empty().then_some(())
    })
    .await;
    app.release(b.id).await.unwrap();
    until("b's hold lifted", || {
        server.keeper().held_captures().is_empty().then_some(())
    })
    .await;
    let c = app.activate(&at("fra", "198.19.0.3")).await.unwrap();
    assert_eq!(c.alias, a.alias);
    assert!(server.keeper().audit().unwrap().is_empty());
    server.shutdown().await;
}

/// A hold outlives the keeper: released while its aggregator is cut off, then the
/// keeper restarts (the acknowledgements it waited for are gone with the process); the
/// address stays held until that aggregator is back and has confirmed the current set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_survives_a_keeper_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || config(&dir.path().join("k.redb"), 1_000, 60_000);
    let server = start(cfg(), Transport::Unix).await;
    let keeper = endpoint(&server);
    let (dc, ams, fra) = network(&keeper).await;
    let mut app = AppClient::connect(&keeper).await.unwrap();
    let a = app
        .activate(&ActivateRequest {
            pop: Some("ams".into()),
            ..address_req("198.19.0.2")
        })
        .await
        .unwrap();
    drop(ams);
    app.release(a.id).await.unwrap();
    assert_eq!(server.keeper().held_captures(), [a.capture]);
    server.shutdown().await;
    drop((dc, fra, app));

    let addr = ListenAddr::Unix(dir.path().join("keeper.sock"));
    let server = start_at(cfg(), &addr).await;
    assert_eq!(
        server.keeper().held_captures(),
        [a.capture],
        "held after the restart"
    );
    let keeper = endpoint(&server);
    let _dc = fake_node(&keeper, "dc-1").await;
    let _fra = fake_node(&keeper, "pop-fra-1").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        server.keeper().held_captures(),
        [a.capture],
        "the demux and remux confirmed, the aggregator did not"
    );
    let mut app = AppClient::connect(&keeper).await.unwrap();
    let again = ActivateRequest {
        capture: Some(a.capture),
        ..address_req("198.19.0.3")
    };
    let e = app.activate(&again).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::Unavailable), "{e}");

    let _ams = fake_node(&keeper, "pop-ams-1").await;
    until("the hold lifted", || {
        server.keeper().held_captures().is_empty().then_some(())
    })
    .await;
    let b = app.activate(&again).await.unwrap();
    assert_eq!((b.capture, b.alias), (a.capture, a.alias));
    assert!(server.keeper().audit().unwrap().is_empty());
    server.shutdown().await;
}

/// Retention counts from when a circuit ended, across restarts: a circuit that ended
/// two hours before the restart is pruned by a keeper that keeps them one hour; one
/// that ended just now is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_counts_from_the_end_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("k.redb");
    let cfg = || {
        let mut c = config(&db, 5_000, 60_000);
        c.settings.retention_ms = 3_600_000;
        c
    };
    let server = start(cfg(), Transport::Unix).await;
    let keeper = endpoint(&server);
    let (_dc, _ams, _fra) = network(&keeper).await;
    let mut app = AppClient::connect(&keeper).await.unwrap();
    let old = app.activate(&address_req("198.19.0.2")).await.unwrap();
    let recent = app.activate(&address_req("198.19.0.3")).await.unwrap();
    app.release(old.id).await.unwrap();
    app.release(recent.id).await.unwrap();
    server.shutdown().await;
    drop(app);

    // Two hours pass for the first one while the keeper is down.
    {
        let store = keeper::store::Store::open(&db).unwrap();
        let loaded = store.load().unwrap();
        let mut c = loaded
            .circuits
            .iter()
            .find(|c| c.id == old.id)
            .unwrap()
            .clone();
        let r = loaded.circuits.iter().find(|c| c.id == recent.id).unwrap();
        assert!(
            c.ended_at_ms > 0 && r.ended_at_ms > 0,
            "stored when they ended"
        );
        c.ended_at_ms -= 2 * 3_600_000;
        store
            .commit(&keeper::store::Batch {
                put_circuits: vec![&c],
                next_circuit: loaded.next_circuit,
                generation: loaded.generation,
                ..Default::default()
            })
            .unwrap();
    }
    let server = start(cfg(), Transport::Unix).await;
    until("the old circuit pruned", || {
        server.keeper().get(old.id).is_err().then_some(())
    })
    .await;
    let kept = server.keeper().get(recent.id).unwrap();
    assert_eq!(kept.state, CircuitState::Released);
    server.shutdown().await;
}

/// A line that bounces three times in quick succession is held down: no new circuit
/// lands on it, even once it is up, until its penalty has decayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_line_is_held_down_until_stable() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir.path().join("k.redb"), 5_000, 60_000);
    cfg.settings.flap_half_life_ms = 1_000;
    cfg.settings.flap_suppress = 2_500;
    cfg.settings.flap_reuse = 750;
    let server = start(cfg, Transport::Tcp).await;
    let keeper = endpoint(&server);
    let (_dc, ams, _fra) = network(&keeper).await;
    let mut app = AppClient::connect(&keeper).await.unwrap();
    let line0 = LineId {
        node: "pop-ams-1".into(),
        line: "line0".into(),
    };
    for _ in 0..3 {
        ams.links.send(("line0".into(), false)).await.unwrap();
        ams.links.send(("line0".into(), true)).await.unwrap();
    }
    until("line0 damped", || {
        server.keeper().is_damped(&line0).then_some(())
    })
    .await;
    let on_line0 = ActivateRequest {
        capture: Some(ip("203.0.113.1")),
        ..address_req("198.19.0.2")
    };
    let e = app.activate(&on_line0).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::FailedPrecondition), "{e}");
    assert!(e.to_string().contains("flap"), "{e}");
    // Without a capture address asked for, ams's other line is used.
    let other = app
        .activate(&ActivateRequest {
            pop: Some("ams".into()),
            ..address_req("198.19.0.2")
        })
        .await
        .unwrap();
    assert_eq!(other.line, "line1");
    // Penalty about 2,700, reuse at 750, half-life 1 s: free again within 2 s or so.
    until("line0 offered again", || {
        (!server.keeper().is_damped(&line0)).then_some(())
    })
    .await;
    let c = app.activate(&on_line0).await.unwrap();
    assert_eq!(c.line, "line0");
    server.shutdown().await;
}

/// ACKs of generations never sent, link reports about ports the hello did not name,
/// and hellos with duplicate ports end the stream with INVALID_ARGUMENT; the node's
/// acknowledged generation is not moved by them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonsense_from_a_forwarder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        config(&dir.path().join("k.redb"), 5_000, 60_000),
        Transport::Unix,
    )
    .await;
    let keeper = endpoint(&server);
    let roles = [Role::Aggregator];
    let ports = |names: &[&str]| -> Vec<PortState> {
        names
            .iter()
            .map(|n| PortState {
                name: n.to_string(),
                up: true,
            })
            .collect()
    };

    let e = ForwarderSession::connect(&keeper, "pop-ams-1", &roles, &ports(&["line0", "line0"]), 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::InvalidArgument), "{e}");
    assert!(e.to_string().contains("named twice"), "{e}");
    let long = "x".repeat(100);
    let e = ForwarderSession::connect(&keeper, "pop-ams-1", &roles, &ports(&[&long]), 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::InvalidArgument), "{e}");

    let mut s = ForwarderSession::connect(&keeper, "pop-ams-1", &roles, &ports(&["line0"]), 0)
        .await
        .unwrap();
    let (generation, _) = s.next_update().await.unwrap();
    s.ack(generation).await.unwrap();
    until("the ACK", || {
        let a = server.keeper().ack_state("pop-ams-1")?;
        (a.acked == generation).then_some(())
    })
    .await;
    s.ack(generation + 1000).await.unwrap();
    let e = s.next_update().await.unwrap_err();
    assert_eq!(e.code(), Some(Code::InvalidArgument), "{e}");
    assert!(e.to_string().contains("ACK of generation"), "{e}");
    assert_eq!(
        server.keeper().ack_state("pop-ams-1").unwrap().acked,
        generation
    );

    let s = ForwarderSession::connect(&keeper, "pop-ams-1", &roles, &ports(&["line0"]), 0)
        .await
        .unwrap();
    let mut s = s;
    let (generation, _) = s.next_update().await.unwrap();
    s.report_link("line7", false).await.unwrap();
    let e = s.next_update().await.unwrap_err();
    assert_eq!(e.code(), Some(Code::InvalidArgument), "{e}");
    assert!(e.to_string().contains("line7"), "{e}");
    // The node's lines are as they were: nothing bounced.
    assert!(!server.keeper().is_damped(&LineId {
        node: "pop-ams-1".into(),
        line: "line7".into()
    }));
    assert!(generation > 0);
    assert!(server.keeper().audit().unwrap().is_empty());
    server.shutdown().await;
}
