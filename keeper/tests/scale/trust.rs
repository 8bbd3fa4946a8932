//! Trust, over real gRPC with TLS (tonic + rustls) on TCP and on a Unix socket, with
//! certificates made at run time by `keeper::certs`: a caller without a certificate is
//! refused with UNAUTHENTICATED, one from another CA cannot connect, a forwarder's
//! certificate for one node cannot subscribe as another, an application cannot
//! release, get, renew or watch another's circuit (and sees only its own in lists and
//! events), an operator can do all of it; plaintext configs are checked.

use std::path::{Path, PathBuf};

use keeper::auth::Identity;
use keeper::certs::{init_ca, issue_into, Subject};
use keeper::inventory::{Config, TlsSettings};
use keeper::transport::ListenAddr;
use tarp_api::client::{
    ActivateRequest, AppClient, ForwarderSession, ListFilter, PortState, Role, SessionOptions,
};
use tarp_api::endpoint::{ClientTls, Dial};
use tonic::Code;

use crate::support::*;

/// The example inventory's forwarders.
const NODES: &[&str] = &["node/dc-1", "node/pop-ams-1", "node/pop-fra-1"];

/// A CA in `dir` with the keeper's certificate and one for each identity given.
fn pki(dir: &Path, identities: &[&str]) {
    init_ca(dir, "test CA").unwrap();
    issue_into(
        dir,
        &Subject::Keeper {
            dns: vec!["tarp-keeper".into(), "localhost".into()],
            ips: vec!["127.0.0.1".parse().unwrap()],
        },
    )
    .unwrap();
    for id in identities {
        issue_into(dir, &Subject::Client(Identity::parse(id).unwrap())).unwrap();
    }
}

fn tls_config(dir: &Path, db: PathBuf) -> Config {
    let mut c = config(&db, 5_000, 60_000);
    c.settings.plaintext_identity = None;
    c.settings.tls = Some(TlsSettings {
        cert: dir.join("keeper.pem"),
        key: dir.join("keeper.key"),
        client_ca: dir.join("ca.pem"),
    });
    c
}

/// A client of `endpoint` as `identity` (`None`: TLS without a client certificate).
fn dial(endpoint: &str, certs: &Path, identity: Option<&str>) -> Dial {
    let stem = identity.map(|i| i.replace('/', "-"));
    let cert = stem.as_ref().map(|s| certs.join(format!("{s}.pem")));
    let key = stem.as_ref().map(|s| certs.join(format!("{s}.key")));
    let tls = ClientTls::from_files(&certs.join("ca.pem"), cert.as_deref(), key.as_deref(), None)
        .unwrap();
    Dial::tls(endpoint, tls)
}

async fn fleet(endpoint: &str, certs: &Path) -> (Fake, Fake, Fake) {
    network_with(|node| dial(endpoint, certs, Some(&format!("node/{node}")))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_identities_and_ownership_over_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    pki(
        &certs,
        &[NODES, &["app/billing", "app/video", "operator/alice"]].concat(),
    );
    let server = start(
        tls_config(&certs, dir.path().join("k.redb")),
        Transport::Tcp,
    )
    .await;
    let ListenAddr::Tcp(addr) = server.local_addr().clone() else {
        unreachable!()
    };
    let https = format!("https://127.0.0.1:{}", addr.port());
    let _fleet = fleet(&https, &certs).await;

    // No client certificate: a clear UNAUTHENTICATED on every endpoint.
    let mut anon = AppClient::connect(dial(&https, &certs, None))
        .await
        .unwrap();
    let e = anon.activate(&address_req("198.19.0.2")).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::Unauthenticated), "{e}");
    assert!(e.to_string().contains("no client certificate"), "{e}");
    let e = anon.list(&ListFilter::default()).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::Unauthenticated), "{e}");
    let e = ForwarderSession::connect(dial(&https, &certs, None), "dc-1", &[Role::Demux], &[], 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::Unauthenticated), "{e}");
    // Plaintext to a TLS keeper gets no answer at all.
    let plain = format!("http://127.0.0.1:{}", addr.port());
    let mut p = AppClient::connect(plain.as_str()).await.unwrap();
    assert!(p.list(&ListFilter::default()).await.is_err());

    // A certificate from another CA does not get through the handshake.
    let other = dir.path().join("other");
    pki(&other, &["app/billing"]);
    let mut forged = dial(&https, &other, Some("app/billing"));
    forged.tls.as_mut().unwrap().ca_pem = std::fs::read(certs.join("ca.pem")).unwrap();
    match AppClient::connect(forged).await {
        Err(_) => {}
        Ok(mut c) => assert!(c.list(&ListFilter::default()).await.is_err()),
    }

    // A node's certificate speaks for that node only, and not to the application API.
    let e = ForwarderSession::connect(
        dial(&https, &certs, Some("node/pop-fra-1")),
        "pop-ams-1",
        &[Role::Aggregator],
        &[],
        0,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Some(Code::PermissionDenied), "{e}");
    assert!(
        e.to_string()
            .contains("node/pop-fra-1 may not subscribe as node pop-ams-1"),
        "{e}"
    );
    let mut as_node = AppClient::connect(dial(&https, &certs, Some("node/dc-1")))
        .await
        .unwrap();
    let e = as_node.list(&ListFilter::default()).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::PermissionDenied), "{e}");

    // Applications own what they activate.
    let mut billing = AppClient::connect(dial(&https, &certs, Some("app/billing")))
        .await
        .unwrap();
    let mut video = AppClient::connect(dial(&https, &certs, Some("app/video")))
        .await
        .unwrap();
    let leased = ActivateRequest {
        lease_ms: 60_000,
        idempotency_key: Some("same-key".into()),
        ..address_req("198.19.0.2")
    };
    let b = billing.activate(&leased).await.unwrap();
    assert_eq!(b.owner, "app/billing");
    // The same idempotency key is another application's own key, not billing's circuit.
    let v = video
        .activate(&ActivateRequest {
            app_host: ip("198.19.0.3"),
            ..leased.clone()
        })
        .await
        .unwrap();
    assert_ne!(v.id, b.id);
    assert_eq!(v.owner, "app/video");
    for (what, e) in [
        ("release", video.release(b.id).await.unwrap_err()),
        ("get", video.get(b.id).await.unwrap_err()),
        ("renew", video.renew(&[b.id]).await.unwrap_err()),
        ("watch", video.watch(Some(b.id), None).await.err().unwrap()),
    ] {
        assert_eq!(e.code(), Some(Code::PermissionDenied), "{what}: {e}");
        assert!(
            e.to_string().contains(&format!(
                "app/video may not {what} circuit {}: it belongs to app/billing",
                b.id
            )),
            "{what}: {e}"
        );
    }
    let listed: Vec<u64> = video
        .list(&ListFilter::default())
        .await
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(listed, [v.id], "video lists only its own");
    // Its own: fine.
    assert_eq!(billing.get(b.id).await.unwrap().id, b.id);
    billing.renew(&[b.id]).await.unwrap();

    // An operator does everything.
    let mut alice = AppClient::connect(dial(&https, &certs, Some("operator/alice")))
        .await
        .unwrap();
    let mut all: Vec<u64> = alice
        .list(&ListFilter::default())
        .await
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    all.sort();
    assert_eq!(all, [b.id, v.id]);
    assert_eq!(alice.get(v.id).await.unwrap().owner, "app/video");
    let released = alice.release(b.id).await.unwrap();
    assert_eq!(released.id, b.id);
    // The fleet's nodes: an operator's view only. Every node of the inventory is listed;
    // the three of the fake fleet are connected (pop-nyc-1 has no forwarder here).
    let nodes = alice.nodes().await.unwrap();
    let mut connected: Vec<&str> = nodes
        .iter()
        .filter(|n| n.connected)
        .map(|n| n.id.as_str())
        .collect();
    connected.sort();
    let want: Vec<&str> = NODES
        .iter()
        .map(|n| n.trim_start_matches("node/"))
        .collect();
    assert_eq!(connected, want, "{nodes:?}");
    assert!(
        nodes.iter().any(|n| n.id == "pop-nyc-1" && !n.connected),
        "{nodes:?}"
    );
    assert!(nodes.iter().all(|n| !n.roles.is_empty()), "{nodes:?}");
    for (who, client) in [("app/video", &mut video), ("node/dc-1", &mut as_node)] {
        let e = client.nodes().await.unwrap_err();
        assert_eq!(e.code(), Some(Code::PermissionDenied), "{who}: {e}");
        assert!(e.to_string().contains("operators only"), "{who}: {e}");
    }
    // An operator may subscribe as any node (to debug one).
    ForwarderSession::connect(
        dial(&https, &certs, Some("operator/alice")),
        "pop-fra-1",
        &[Role::Aggregator],
        &[],
        0,
    )
    .await
    .unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    pki(&certs, &[NODES, &["app/billing"]].concat());
    let cfg = tls_config(&certs, dir.path().join("k.redb"));
    let server = start(cfg, Transport::Unix).await;
    let unix = server.endpoint();
    let _fleet = fleet(&unix, &certs).await;
    let mut billing = AppClient::connect(dial(&unix, &certs, Some("app/billing")))
        .await
        .unwrap();
    let c = billing.activate(&address_req("198.19.0.2")).await.unwrap();
    assert_eq!(c.owner, "app/billing");
    let mut anon = AppClient::connect(dial(&unix, &certs, None)).await.unwrap();
    let e = anon.get(c.id).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::Unauthenticated), "{e}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_callers_are_who_the_config_names() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir.path().join("k.redb"), 5_000, 60_000);
    cfg.settings.plaintext_identity = None;
    let server = start(cfg, Transport::Unix).await;
    let mut app = AppClient::connect(&server.endpoint()).await.unwrap();
    let e = app.list(&ListFilter::default()).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::Unauthenticated), "{e}");
    assert!(e.to_string().contains("keeper.plaintext_identity"), "{e}");
    server.shutdown().await;

    // A plaintext keeper on a non-loopback address, or a node as the plaintext
    // identity, is refused with the key at fault.
    for (line, text, key) in [
        (
            "listen = \"127.0.0.1:50551\"",
            "listen = \"192.0.2.1:50551\"",
            "keeper.listen",
        ),
        (
            "plaintext_identity = \"operator/local\"",
            "plaintext_identity = \"node/dc-1\"",
            "keeper.plaintext_identity",
        ),
        (
            "socket_mode = 0o660",
            "socket_mode = 0o7777",
            "keeper.socket_mode",
        ),
    ] {
        assert!(EXAMPLE.contains(line), "{line}");
        let toml = EXAMPLE.replacen(line, text, 1);
        let e = Config::parse("k.toml", &toml).unwrap_err().to_string();
        assert!(e.contains(key), "{text}: {e}");
    }
}

/// A node the inventory gives a WireGuard key must announce that key in its hello, so
/// that WireGuard tunnels only go to a forwarder that speaks them, with the right key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wireguard_node_must_announce_its_key() {
    const FRA: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";
    const DC: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    let toml = EXAMPLE
        .replace(
            r#"vni = 101, demux = "dc-1" }"#,
            r#"demux = "dc-1", wireguard = true }"#,
        )
        .replace("id = \"pop-fra-1\"\n", &format!("id = \"pop-fra-1\"\nwireguard_key = \"{FRA}\"\n"))
        .replace("id = \"dc-1\"\n", &format!("id = \"dc-1\"\nwireguard_key = \"{DC}\"\n"))
        .replace(
            r#"    { prefix = "198.19.0.0/24", port = "apps" },"#,
            "    { prefix = \"198.19.0.0/24\", port = \"apps\" },\n    { prefix = \"192.0.2.0/24\", port = \"internet\" },",
        );
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::parse("k.toml", &toml).unwrap();
    cfg.settings.db = dir.path().join("k.redb");
    let server = start(cfg, Transport::Unix).await;
    let keeper = server.endpoint();
    let roles = [Role::Aggregator];
    let ports = ["line0", "uplink"].map(|p| PortState {
        name: p.into(),
        up: true,
    });
    let hello = |key: Option<[u8; 32]>| {
        let keeper = keeper.clone();
        let ports = ports.clone();
        async move {
            let options = SessionOptions {
                wireguard_public_key: key,
                ..Default::default()
            };
            ForwarderSession::connect_with(keeper.as_str(), "pop-fra-1", &roles, &ports, 0, options)
                .await
        }
    };
    for (key, got) in [(None, "none"), (Some([3; 32]), "AwMD")] {
        let Err(e) = hello(key).await else {
            panic!("a hello with key {got} was accepted");
        };
        assert_eq!(e.code(), Some(Code::FailedPrecondition), "{e}");
        let text = e.to_string();
        assert!(
            text.contains(&format!("has WireGuard key {FRA}")) && text.contains(got),
            "{text}"
        );
    }
    let mut s = hello(Some([2; 32])).await.unwrap();
    let (_, rules) = s.next_update().await.unwrap();
    let w = rules.tunnels[0].wireguard.expect("a WireGuard tunnel");
    assert_eq!(w.public_key.to_string(), DC, "the demux's key");
    server.shutdown().await;
}
