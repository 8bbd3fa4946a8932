//! Delta updates over real gRPC: after a full set, a forwarder receives only what
//! changed, so what an activation sends does not grow with the number of circuits; a
//! full set larger than tonic's 4 MiB message limit arrives in chunks; a forwarder
//! that resumes with the set it holds gets only the changes it missed.

use std::time::Duration;

use keeper::circuits::{Activation, Circuits};
use keeper::inventory::Config;
use keeper::server::{Sent, CHUNK_ENTRIES};
use keeper::store::{Batch, Store};
use tarp_api::client::{
    ActivateRequest, AppClient, ForwarderSession, Mode, PortRange, Protocol, Role, SessionOptions,
};
use tarp_api::rules::Rules;

use crate::support::*;

/// tonic's default limit on a decoded message.
const TONIC_LIMIT: u64 = 4 << 20;

fn sent(server: &keeper::server::Server, node: &str) -> Sent {
    server.keeper().sent(node).unwrap()
}

/// Waits until what the keeper counts as sent to `node` stops moving.
async fn settled(server: &keeper::server::Server, node: &str) -> Sent {
    let mut last = sent(server, node);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = sent(server, node);
        if now == last {
            return now;
        }
        last = now;
    }
}

fn range_req(app: &str, protocol: Protocol, first: u16) -> ActivateRequest {
    ActivateRequest {
        mode: Mode::Port,
        protocol,
        ports: PortRange {
            first,
            last: first + 255,
        },
        ..address_req(app)
    }
}

/// Lists sorted, so that a set put together from deltas compares with a compiled one.
fn sorted(mut r: Rules) -> Rules {
    r.tunnels.sort();
    r.aggregator.sort();
    r.demux.sort();
    r.remux.sort();
    r.routes.sort();
    r.tunnel_peers.sort();
    r.return_tunnels.sort();
    r
}

/// One address-mode activation sends the same bytes to its aggregator and its DC node
/// whether the DC holds a handful of entries or twenty thousand more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activation_sends_the_same_bytes_at_any_table_size() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        config(&dir.path().join("k.redb"), 10_000, 60_000),
        Transport::Tcp,
    )
    .await;
    let keeper = endpoint(&server);
    let (_dc, _ams, _fra) = network(&keeper).await;
    let mut app = AppClient::connect(&keeper).await.unwrap();

    let probe = |app: &str| ActivateRequest {
        pop: Some("ams".into()),
        ..address_req(app)
    };
    let mut per_activation = Vec::new();
    for round in 0..2 {
        let before = (
            settled(&server, "pop-ams-1").await,
            settled(&server, "dc-1").await,
        );
        app.activate(&probe("198.19.0.2")).await.unwrap();
        let after = (
            settled(&server, "pop-ams-1").await,
            settled(&server, "dc-1").await,
        );
        assert_eq!(
            (after.0.full_sets, after.1.full_sets),
            (before.0.full_sets, before.1.full_sets),
            "round {round}: no full set after the first"
        );
        per_activation.push((
            after.0.bytes - before.0.bytes,
            after.1.bytes - before.1.bytes,
        ));
        if round == 0 {
            // 40 circuits of 256 ports each: 20,480 more entries at dc-1.
            let entries = server.keeper().table("dc-1").unwrap().rules.len();
            for k in 0..40u16 {
                app.activate(&range_req("198.19.0.3", Protocol::Udp, 1024 + 256 * k))
                    .await
                    .unwrap();
            }
            let grown = server.keeper().table("dc-1").unwrap().rules.len();
            assert_eq!(grown - entries, 40 * 512);
        }
    }
    let [(agg_small, dc_small), (agg_large, dc_large)] = per_activation[..] else {
        panic!()
    };
    println!(
        "bytes per activation: aggregator {agg_small} -> {agg_large}, dc-1 {dc_small} -> {dc_large}"
    );
    assert!(agg_small > 0 && dc_small > 0);
    // The same changes, give or take a longer address or generation number.
    assert!(agg_large <= agg_small + 16, "{agg_small} -> {agg_large}");
    assert!(dc_large <= dc_small + 16, "{dc_small} -> {dc_large}");
    let full_dc = server.keeper().table("dc-1").unwrap().rules;
    assert!(
        dc_large * 100 < Rules::len(&full_dc) as u64,
        "a delta is far smaller than the set"
    );
    server.shutdown().await;
}

/// A DC node with 261,120 circuit entries (510 circuits of 256 ports, about 9 MiB on
/// the wire) receives its full set in chunks, each within tonic's default limit, puts
/// it together, and after resuming with it receives only the next delta.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_full_set_arrives_in_chunks_and_resumes_with_deltas() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("k.redb");
    let cfg = config(&db, 10_000, 60_000);
    // The circuits go straight into the store; the keeper compiles them at start.
    {
        let inv = Config::parse("keeper.toml", EXAMPLE).unwrap().inventory;
        let mut circuits = Circuits::new();
        for protocol in [Protocol::Udp, Protocol::Tcp] {
            for k in 0..255u16 {
                let req = range_req("198.19.0.2", protocol, 1 + 256 * k);
                let Activation::Started(id) = circuits.activate(&inv, 256, &req).unwrap() else {
                    panic!()
                };
                circuits.confirm(id).unwrap();
            }
        }
        let all: Vec<_> = circuits.iter().collect();
        assert_eq!(all.len(), 510);
        let store = Store::open(&db).unwrap();
        store
            .commit(&Batch {
                put_circuits: all,
                next_circuit: circuits.next_id(),
                ..Default::default()
            })
            .unwrap();
    }
    let server = start(cfg, Transport::Unix).await;
    let keeper = endpoint(&server);
    let expected = server.keeper().table("dc-1").unwrap();
    assert!(
        expected.rules.len() > 2 * 255 * 512,
        "{}",
        expected.rules.len()
    );

    let options = || SessionOptions {
        heartbeat_interval: Some(Duration::from_millis(100)),
        ..Default::default()
    };
    let roles = [Role::Demux, Role::Remux];
    let mut dc = ForwarderSession::connect_with(&keeper, "dc-1", &roles, &[], 0, options())
        .await
        .unwrap();
    let (generation, rules) = dc.next_update().await.unwrap();
    assert_eq!(generation, expected.generation);
    assert_eq!(sorted(Rules::clone(&rules)), expected.rules);
    drop(rules);
    dc.ack(generation).await.unwrap();
    let s = settled(&server, "dc-1").await;
    println!("full set: {s:?}");
    assert_eq!(s.full_sets, 1);
    assert!(
        s.bytes > TONIC_LIMIT,
        "the set is larger than one message may be"
    );
    assert!(s.largest < TONIC_LIMIT / 2, "{s:?}");
    assert_eq!(
        s.messages,
        expected.rules.len().div_ceil(CHUNK_ENTRIES) as u64
    );

    // Reconnect with the set: nothing is sent while nothing changed...
    let tables = dc.into_tables().unwrap();
    let mut dc = ForwarderSession::resume_with(&keeper, "dc-1", &roles, &[], tables, options())
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), dc.next_update())
            .await
            .is_err()
    );
    let acks = tokio::spawn(async move {
        let mut last = None;
        while let Ok(Ok((g, rules))) =
            tokio::time::timeout(Duration::from_secs(5), dc.next_update()).await
        {
            last = Some(Rules::clone(&rules));
            drop(rules);
            dc.ack(g).await.unwrap();
        }
        last
    });
    // ...then one activation: one delta for dc-1 (its entries go in while activating),
    // no full set.
    let _ams = Fake::connect(
        &keeper,
        "pop-ams-1",
        &[Role::Aggregator],
        &[],
        0,
        Behaviour::Ack,
    )
    .await;
    let _fra = Fake::connect(
        &keeper,
        "pop-fra-1",
        &[Role::Aggregator],
        &[],
        0,
        Behaviour::Ack,
    )
    .await;
    let mut app = AppClient::connect(&keeper).await.unwrap();
    let c = app.activate(&address_req("198.19.0.3")).await.unwrap();
    let after = settled(&server, "dc-1").await;
    assert_eq!(after.full_sets, 1, "{after:?}");
    assert_eq!(after.deltas, 1, "{after:?}");
    assert!(after.bytes - s.bytes < 1024, "{after:?}");
    let last = acks.await.unwrap().expect("the delta arrived");
    assert_eq!(sorted(last), server.keeper().table("dc-1").unwrap().rules);
    assert_eq!(c.demux, "dc-1");
    server.shutdown().await;
}
