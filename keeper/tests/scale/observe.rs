//! The keeper's metrics endpoint over real HTTP: counters and state counts that follow
//! what the test did, health and readiness, 404 for other paths.

use std::time::Duration;

use tarp_api::client::AppClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// `GET path` on `addr`: (status, body).
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of the sample `line` (a metric name with its labels, as exposed).
fn value(text: &str, line: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_activations_releases_and_forwarders() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir.path().join("k.redb"), 5_000, 60_000);
    cfg.settings.metrics = Some("127.0.0.1:0".parse().unwrap());
    let eu_captures: usize = cfg
        .inventory
        .aggregators
        .iter()
        .filter(|a| a.region == "eu")
        .flat_map(|a| a.lines.iter())
        .map(|l| l.captures.len())
        .sum();
    let server = start(cfg, Transport::Tcp).await;
    let m = server.metrics_addr().expect("a metrics endpoint");
    assert_eq!(get(m, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(get(m, "/readyz").await, (200, "ready\n".into()));
    let (status, body) = get(m, "/nope").await;
    assert_eq!(status, 404, "{body}");

    let keeper = endpoint(&server);
    let (_dc, _ams, _fra) = network(&keeper).await;
    let mut app = AppClient::connect(&keeper).await.unwrap();
    let a = app.activate(&address_req("198.19.0.2")).await.unwrap();
    let _b = app.activate(&address_req("198.19.0.3")).await.unwrap();
    app.release(a.id).await.unwrap();
    // A refused activation: an app host the inventory does not have.
    let e = app.activate(&address_req("198.19.9.9")).await.unwrap_err();

    let (status, text) = get(m, "/metrics").await;
    assert_eq!(status, 200);
    let code = format!("{:?}", e.code().unwrap()).to_lowercase();
    for (line, want) in [
        ("tarp_keeper_activations_total{result=\"ok\"}", 2.0),
        (
            format!("tarp_keeper_activations_total{{result=\"{code}\"}}").as_str(),
            1.0,
        ),
        ("tarp_keeper_activation_duration_seconds_count", 2.0),
        ("tarp_keeper_releases_total{by=\"app\"}", 1.0),
        ("tarp_keeper_circuits{region=\"eu\",state=\"active\"}", 1.0),
        (
            "tarp_keeper_circuits{region=\"eu\",state=\"released\"}",
            1.0,
        ),
        (
            "tarp_keeper_capture_addresses{region=\"eu\",state=\"held\"}",
            1.0,
        ),
        (
            "tarp_keeper_capture_addresses{region=\"eu\",state=\"free\"}",
            (eu_captures - 1) as f64,
        ),
        (
            "tarp_keeper_forwarder_connected{node=\"dc-1\",roles=\"demux+remux\"}",
            1.0,
        ),
        (
            "tarp_keeper_forwarder_connected{node=\"pop-ams-1\",roles=\"aggregator\"}",
            1.0,
        ),
        (
            "tarp_keeper_forwarder_generations_behind{node=\"dc-1\"}",
            0.0,
        ),
        ("tarp_keeper_forwarder_hellos_total{result=\"ok\"}", 3.0),
    ] {
        assert_eq!(value(&text, line), Some(want), "{line} in\n{text}");
    }
    assert!(value(&text, "tarp_keeper_store_commit_duration_seconds_count").unwrap() >= 3.0);
    assert!(value(&text, "tarp_keeper_ack_wait_seconds_count").unwrap() >= 3.0);
    assert!(text.contains("# TYPE tarp_keeper_activation_duration_seconds histogram\n"));
    assert!(text.contains("# TYPE process_resident_memory_bytes gauge\n"));
    let generation = value(&text, "tarp_keeper_generation").unwrap();
    assert_eq!(
        value(
            &text,
            "tarp_keeper_forwarder_acked_generation{node=\"dc-1\"}"
        ),
        value(
            &text,
            "tarp_keeper_forwarder_published_generation{node=\"dc-1\"}"
        ),
    );
    assert!(generation >= 1.0);

    server.shutdown().await;
}
