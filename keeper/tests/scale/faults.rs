//! The keeper under load and faults, over real gRPC: ten thousand activations at once
//! from a hundred clients, a POP line flapping ten times a second for ten seconds, and
//! the keeper killed with SIGKILL in the middle of a burst of activations. Each prints
//! what it measured; each checks what applications were told against the keeper's
//! state and its invariants.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use tarp_api::client::{
    ActivateRequest, AppClient, Circuit, CircuitState, ListFilter, Mode, PortRange, Protocol, Role,
};

use crate::support::*;

fn port_req(app: &str, port: u16, key: String) -> ActivateRequest {
    ActivateRequest {
        mode: Mode::Port,
        protocol: Protocol::Udp,
        ports: PortRange::single(port),
        idempotency_key: Some(key),
        ..address_req(app)
    }
}

async fn lean_network(keeper: &str) -> Vec<Fake> {
    let mut fakes = Vec::new();
    for (node, roles, ports) in [
        (
            "dc-1",
            &[Role::Demux, Role::Remux][..],
            &["apps", "internet"][..],
        ),
        (
            "pop-ams-1",
            &[Role::Aggregator],
            &["line0", "line1", "uplink"],
        ),
        ("pop-fra-1", &[Role::Aggregator], &["line0", "uplink"]),
    ] {
        let f = Fake::connect(keeper, node, roles, ports, 0, Behaviour::AckKeepLast).await;
        f.wait("the initial table set", |_| true).await;
        fakes.push(f);
    }
    fakes
}

/// 10,000 activations from 100 concurrent clients: every one answered once, with its
/// own circuit, none lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_activations_from_a_hundred_clients() {
    const CLIENTS: u16 = 100;
    const EACH: u16 = 100;
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        config(&dir.path().join("k.redb"), 30_000, 120_000),
        Transport::Unix,
    )
    .await;
    let keeper = endpoint(&server);
    let _fakes = lean_network(&keeper).await;

    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let keeper = keeper.clone();
        tasks.push(tokio::spawn(async move {
            let mut app = AppClient::connect(&keeper).await.unwrap();
            let mut got = Vec::new();
            for k in 0..EACH {
                let port = 1 + client * EACH + k;
                let req = port_req("198.19.0.2", port, format!("c{client}-{k}"));
                let c = app.activate(&req).await.unwrap();
                got.push((port, c));
            }
            got
        }));
    }
    let mut answers: Vec<(u16, Circuit)> = Vec::new();
    for t in tasks {
        answers.extend(t.await.unwrap());
    }
    let took = started.elapsed();
    let n = answers.len();
    println!(
        "{n} activations from {CLIENTS} clients in {:.1} s: {:.0} per second",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
    assert_eq!(n, usize::from(CLIENTS * EACH));
    let ids: BTreeSet<u64> = answers.iter().map(|(_, c)| c.id).collect();
    assert_eq!(ids.len(), n, "every answer a circuit of its own");
    for (port, c) in &answers {
        assert_eq!((c.state, c.ports.first), (CircuitState::Active, *port));
    }
    let mut app = AppClient::connect(&keeper).await.unwrap();
    let listed = app.list(&ListFilter::default()).await.unwrap();
    let listed_ids: BTreeSet<u64> = listed.iter().map(|c| c.id).collect();
    assert_eq!(
        listed_ids, ids,
        "the keeper holds exactly the circuits it answered"
    );
    let dc = server.keeper().table("dc-1").unwrap().rules;
    assert_eq!((dc.demux.len(), dc.remux.len()), (n, n));
    assert!(server.keeper().audit().unwrap().is_empty());
    server.shutdown().await;
}

/// ams's line0 goes down and up every 100 ms for 10 s while its circuits bounce and are
/// replaced: afterwards each application holds exactly one live circuit, no capture
/// address is on two, every freed address is handed out again once the forwarders
/// dropped it, and the invariants hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_flapping_ten_times_a_second_leaks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        config(&dir.path().join("k.redb"), 5_000, 120_000),
        Transport::Tcp,
    )
    .await;
    let keeper = endpoint(&server);
    let fakes = lean_network(&keeper).await;
    let ams = &fakes[1];
    let mut app = AppClient::connect(&keeper).await.unwrap();
    // Four applications, their circuits on line0 (two address mode, two port mode).
    let mut first = Vec::new();
    for (i, capture) in ["203.0.113.1", "203.0.113.2", "203.0.113.3", "203.0.113.3"]
        .iter()
        .enumerate()
    {
        let req = ActivateRequest {
            capture: Some(ip(capture)),
            mode: if i < 2 { Mode::Address } else { Mode::Port },
            ports: PortRange::single(4000 + i as u16),
            ..address_req(if i % 2 == 0 {
                "198.19.0.2"
            } else {
                "198.19.0.3"
            })
        };
        first.push(app.activate(&req).await.unwrap());
    }
    // Meanwhile another application activates and releases circuits at ams, racing the
    // bounces (an activation whose line goes down before it completes rolls back).
    let churn = {
        let keeper = keeper.clone();
        tokio::spawn(async move {
            let mut app = AppClient::connect(&keeper).await.unwrap();
            let (mut made, mut refused) = (0, 0);
            let until = Instant::now() + Duration::from_secs(10);
            while Instant::now() < until {
                let req = ActivateRequest {
                    pop: Some("ams".into()),
                    mode: Mode::Port,
                    ports: PortRange::single(5000),
                    ..address_req("198.19.0.3")
                };
                match app.activate(&req).await {
                    Ok(c) => {
                        made += 1;
                        app.release(c.id).await.unwrap();
                    }
                    Err(_) => refused += 1,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (made, refused)
        })
    };
    let started = Instant::now();
    let mut flaps = 0;
    while started.elapsed() < Duration::from_secs(10) {
        ams.links.send(("line0".into(), false)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        ams.links.send(("line0".into(), true)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        flaps += 1;
    }
    let (made, refused) = churn.await.unwrap();
    // Let replacements finish and holds lift.
    until("every hold lifted", || {
        server.keeper().held_captures().is_empty().then_some(())
    })
    .await;
    let all = app
        .list(&ListFilter {
            include_released: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let by_id: BTreeMap<u64, &Circuit> = all.iter().map(|c| (c.id, c)).collect();
    let live: Vec<&Circuit> = all.iter().filter(|c| c.state.is_live()).collect();
    println!(
        "{flaps} flaps; churn: {made} activated and released, {refused} refused; {} circuits in all, {} live",
        all.len(),
        live.len()
    );
    assert!(flaps >= 90, "{flaps}");
    // Each application's chain (a circuit and its replacements) ends in one live circuit.
    for c in &first {
        let mut at = by_id[&c.id];
        while let Some(next) = at.replaced_by {
            at = by_id[&next];
        }
        assert_eq!(at.state, CircuitState::Active, "chain of {}: {at:?}", c.id);
    }
    assert_eq!(live.len(), first.len(), "{live:?}");
    let captures: BTreeSet<_> = live.iter().map(|c| (c.capture, c.ports.first)).collect();
    assert_eq!(captures.len(), live.len());
    assert!(server.keeper().audit().unwrap().is_empty());
    // Every circuit of line0 was replaced elsewhere, and the damped line took no new one.
    assert!(live
        .iter()
        .all(|c| c.line != "line0" || c.aggregator != "pop-ams-1"));
    assert!(made > 0, "the churn got circuits between the flaps");
    server.shutdown().await;
}

/// Starts `tarp-keeper` on a Unix socket in `dir`; returns the child and its endpoint.
async fn keeper_process(dir: &std::path::Path) -> (tokio::process::Child, String) {
    let file = dir.join("keeper.toml");
    let text = EXAMPLE.replacen(
        "listen = \"127.0.0.1:50551\"",
        "listen = \"unix:run/keeper.sock\"\nheartbeat_timeout_ms = 120000",
        1,
    );
    let text = text.replacen("heartbeat_timeout_ms = 5000", "", 1);
    std::fs::write(&file, text).unwrap();
    let socket = dir.join("run/keeper.sock");
    let _ = std::fs::remove_file(&socket);
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tarp-keeper"))
        .arg("--config")
        .arg(&file)
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    until("the keeper's socket", || socket.exists().then_some(())).await;
    (child, format!("unix:{}", socket.display()))
}

/// SIGKILL in the middle of a burst of keyed activations: after the restart every
/// activation either completed (and a retry with its key returns the same circuit) or
/// was rolled back (and a retry makes it once); no key holds two circuits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeper_killed_mid_burst_loses_and_doubles_nothing() {
    const KEYS: u16 = 200;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, keeper) = keeper_process(dir.path()).await;
    let fakes = lean_network(&keeper).await;
    let answered_so_far = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for client in 0..20u16 {
        let keeper = keeper.clone();
        let count = answered_so_far.clone();
        tasks.push(tokio::spawn(async move {
            let mut app = AppClient::connect(&keeper).await.unwrap();
            let mut answered = Vec::new();
            for k in 0..KEYS / 20 {
                let n = client * (KEYS / 20) + k;
                let req = port_req("198.19.0.2", 1000 + n, format!("burst-{n}"));
                match app.activate(&req).await {
                    Ok(c) => {
                        answered.push((n, c.id));
                        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(_) => break, // the keeper is gone
                }
            }
            answered
        }));
    }
    // Kill it once some have completed, while the rest are in flight.
    until("a quarter answered", || {
        let done = answered_so_far.load(std::sync::atomic::Ordering::Relaxed);
        (done >= usize::from(KEYS / 4)).then_some(())
    })
    .await;
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap()
        .success());
    let _ = child.wait().await;
    let mut before: BTreeMap<u16, u64> = BTreeMap::new();
    for t in tasks {
        before.extend(t.await.unwrap());
    }
    drop(fakes);
    assert!(
        !before.is_empty() && before.len() < usize::from(KEYS),
        "{}",
        before.len()
    );

    let (_child, keeper) = keeper_process(dir.path()).await;
    let _fakes = lean_network(&keeper).await;
    let mut app = AppClient::connect(&keeper).await.unwrap();
    let mut after: BTreeMap<u16, u64> = BTreeMap::new();
    for n in 0..KEYS {
        let req = port_req("198.19.0.2", 1000 + n, format!("burst-{n}"));
        let c = app.activate(&req).await.unwrap();
        if let Some(&id) = before.get(&n) {
            assert_eq!(
                c.id, id,
                "key burst-{n}: a retry returns the circuit it made"
            );
        }
        after.insert(n, c.id);
    }
    let live = app.list(&ListFilter::default()).await.unwrap();
    let mut per_key: BTreeMap<String, usize> = BTreeMap::new();
    for c in &live {
        *per_key
            .entry(c.idempotency_key.clone().unwrap_or_default())
            .or_default() += 1;
    }
    println!(
        "{} answered before SIGKILL, {} after the restart; {} live circuits",
        before.len(),
        usize::from(KEYS) - before.len(),
        live.len()
    );
    assert_eq!(live.len(), usize::from(KEYS));
    assert!(per_key.values().all(|&n| n == 1), "{per_key:?}");
    let ids: BTreeSet<u64> = after.values().copied().collect();
    assert_eq!(ids.len(), usize::from(KEYS));
}
