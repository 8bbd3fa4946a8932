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
    let stop = Arc::new(AtomicBool::new(false));
    let (updates_tx, updates_rx) = mpsc::channel::<TableUpdate>();
    let (links_tx, links_rx) = mpsc::channel::<LinkReport>();
    let link = KeeperLink {
        endpoint: keeper.clone(),
        node_id: "pop-ams-1".into(),
        roles: vec![PortRole::Aggregator; 3],
        ports: ["line0", "line1", "uplink"].map(String::from).into(),
        updates: updates_tx,
        links: links_rx,
        stop: stop.clone(),
    };
    let link_thread = link.spawn().unwrap();
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
