//! The forwarder's keeper link against a real keeper over gRPC: while the control thread
//! takes its time to build a snapshot, the link keeps heartbeating, so the keeper never
//! takes the aggregator for dead and bounces its lines.
#![cfg(feature = "dpdk")]

use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use forwarder::control::keeper_link::KeeperLink;
use forwarder::control::{LinkReport, TableUpdate};
use forwarder::tables::Role as PortRole;
use tarp_api::client::{AppClient, CircuitState, Role};

#[macro_use]
#[path = "../../keeper/tests/support/mod.rs"]
mod support;
use support::*;

/// How long the test's control thread takes over each snapshot after the first: longer
/// than the keeper's heartbeat timeout.
const BUILD: Duration = Duration::from_millis(3000);
const HEARTBEAT_TIMEOUT_MS: u64 = 1500;

over_both_transports!(heartbeats_go_on_while_a_snapshot_builds);

/// A real keeper link, and the ends the test's control thread plays.
struct Link {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
    updates: mpsc::Receiver<TableUpdate>,
    links: mpsc::Sender<LinkReport>,
}

/// pop-ams-1 as a real keeper link to `keeper`.
fn ams_link(keeper: &str) -> Link {
    let stop = Arc::new(AtomicBool::new(false));
    let (updates_tx, updates) = mpsc::channel::<TableUpdate>();
    let (links, links_rx) = mpsc::channel::<LinkReport>();
    let link = KeeperLink {
        endpoint: keeper.into(),
        node_id: "pop-ams-1".into(),
        roles: vec![PortRole::Aggregator; 3],
        ports: ["line0", "line1", "uplink"].map(String::from).into(),
        updates: updates_tx,
        links: links_rx,
        stop: stop.clone(),
        wireguard_public_key: None,
        worker_lcores: vec![1],
    };
    Link {
        stop,
        thread: link.spawn().unwrap(),
        updates,
        links,
    }
}

async fn heartbeats_go_on_while_a_snapshot_builds(t: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        config(&dir.path().join("k.redb"), 10_000, HEARTBEAT_TIMEOUT_MS),
        t,
    )
    .await;
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
    let _fra = Fake::connect(
        &keeper,
        "pop-fra-1",
        &[Role::Aggregator],
        &["line0"],
        0,
        Behaviour::Ack,
    )
    .await;

    // pop-ams-1 is a real keeper link; this test plays its control thread.
    let Link {
        stop,
        thread: link_thread,
        updates: updates_rx,
        links: links_tx,
    } = ams_link(&keeper);
    let control = std::thread::spawn(move || {
        let mut builds = 0;
        while let Ok(u) = updates_rx.recv_timeout(Duration::from_secs(20)) {
            if builds > 0 {
                std::thread::sleep(BUILD);
            }
            builds += 1;
            let _ = u.done.send(Ok(u.generation));
        }
        builds
    });

    let mut app = AppClient::connect(&keeper).await.unwrap();
    until("pop-ams-1 acknowledging its first table set", || {
        let s = server.keeper().ack_state("pop-ams-1")?;
        (s.connected && s.acked > 0).then_some(())
    })
    .await;
    // The activation's table set for pop-ams-1 takes BUILD to swap in.
    let c = app.activate(&address_req("198.19.0.2")).await.unwrap();
    assert_eq!(
        (c.aggregator.as_str(), c.state),
        ("pop-ams-1", CircuitState::Active)
    );
    // Past the heartbeat timeout once more: still active, never bounced.
    tokio::time::sleep(Duration::from_millis(HEARTBEAT_TIMEOUT_MS + 500)).await;
    let now = app.get(c.id).await.unwrap();
    assert_eq!(now.state, CircuitState::Active, "{now:?}");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    link_thread.join().unwrap();
    drop(links_tx);
    assert!(control.join().unwrap() >= 2);
    server.shutdown().await;
}

over_both_transports!(deltas_are_coalesced_and_a_reconnect_resumes);

/// The link applies deltas to the set it holds and hands the control thread one build
/// for every update already received (so a burst of activations costs fewer builds than
/// generations); after its stream is cut it resumes with that set, and the keeper sends
/// only what changed.
async fn deltas_are_coalesced_and_a_reconnect_resumes(t: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let server = start(config(&dir.path().join("k.redb"), 20_000, 60_000), t).await;
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
    let _fra = Fake::connect(
        &keeper,
        "pop-fra-1",
        &[Role::Aggregator],
        &["line0"],
        0,
        Behaviour::Ack,
    )
    .await;
    let Link {
        stop,
        thread: link_thread,
        updates: updates_rx,
        links: links_tx,
    } = ams_link(&keeper);
    // The control thread: each build takes 300 ms; it records what it built.
    let built = Arc::new(std::sync::Mutex::new(Vec::<(u64, tarp_api::Rules)>::new()));
    let seen = built.clone();
    let control = std::thread::spawn(move || {
        while let Ok(u) = updates_rx.recv_timeout(Duration::from_secs(30)) {
            std::thread::sleep(Duration::from_millis(300));
            seen.lock()
                .unwrap()
                .push((u.generation, tarp_api::Rules::clone(&u.rules)));
            drop(u.rules);
            let _ = u.done.send(Ok(u.generation));
        }
    });
    until("pop-ams-1 acknowledging its first table set", || {
        let s = server.keeper().ack_state("pop-ams-1")?;
        (s.connected && s.acked > 0).then_some(())
    })
    .await;
    let sent_before = server.keeper().sent("pop-ams-1").unwrap();
    let builds_before = built.lock().unwrap().len();

    // Five address-mode activations at once: every address ams has.
    let mut tasks = Vec::new();
    for k in 0..5 {
        let keeper = keeper.clone();
        tasks.push(tokio::spawn(async move {
            let mut app = AppClient::connect(&keeper).await.unwrap();
            let req = tarp_api::client::ActivateRequest {
                pop: Some("ams".into()),
                app_host: ip(if k % 2 == 0 {
                    "198.19.0.2"
                } else {
                    "198.19.0.3"
                }),
                ..address_req("198.19.0.2")
            };
            app.activate(&req).await.unwrap()
        }));
    }
    for task in tasks {
        let c = task.await.unwrap();
        assert_eq!(
            (c.aggregator.as_str(), c.state),
            ("pop-ams-1", CircuitState::Active)
        );
    }
    let sent = server.keeper().sent("pop-ams-1").unwrap();
    let deltas = sent.deltas - sent_before.deltas;
    let builds = built.lock().unwrap().len() - builds_before;
    println!("{deltas} deltas, {builds} builds");
    assert_eq!(sent.full_sets, sent_before.full_sets, "{sent:?}");
    assert!(deltas >= 5, "one delta per activation at least: {sent:?}");
    assert!(
        builds < deltas as usize,
        "{builds} builds for {deltas} deltas"
    );
    let table = server.keeper().table("pop-ams-1").unwrap();
    let (last_generation, last) = built.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last_generation, table.generation);
    let mut got = last.aggregator.clone();
    got.sort();
    assert_eq!(got, table.rules.aggregator);
    assert_eq!(got.len(), 5);

    // Cut the link's stream: a session of the same node supersedes it, and goes away.
    let intruder = tarp_api::client::ForwarderSession::connect(
        &keeper,
        "pop-ams-1",
        &[Role::Aggregator],
        &[],
        table.generation,
    )
    .await
    .unwrap();
    drop(intruder);
    until("the link back, resumed", || {
        let s = server.keeper().ack_state("pop-ams-1")?;
        let now = server.keeper().sent("pop-ams-1")?;
        (s.connected && now.full_sets == sent.full_sets && s.acked == table.generation)
            .then_some(())
    })
    .await;
    // A release while it is back: one delta (entry removed), no full set.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut app = AppClient::connect(&keeper).await.unwrap();
    let listed = app
        .list(&tarp_api::client::ListFilter::default())
        .await
        .unwrap();
    app.release(listed[0].id).await.unwrap();
    let after = server.keeper().sent("pop-ams-1").unwrap();
    assert_eq!(after.full_sets, sent.full_sets, "{after:?}");
    let (_, last) = built.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.aggregator.len(), 4);

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    link_thread.join().unwrap();
    drop(links_tx);
    control.join().unwrap();
    server.shutdown().await;
}
