//! `tarpctl` against a real keeper over gRPC (TCP and a Unix socket), with fake
//! forwarders acknowledging its circuits.

#[macro_use]
#[path = "../../keeper/tests/support/mod.rs"]
mod support;
use support::*;

over_both_transports!(tarpctl_runs_a_command_with_its_circuit);

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
    // A symmetric circuit: asked for on the command line, shown by `list`.
    let out = tokio::process::Command::new(tarpctl)
        .args([
            "--keeper",
            &keeper,
            "activate",
            "--mode",
            "port",
            "--protocol",
            "udp",
        ])
        .args([
            "--port",
            "4001",
            "--app-host",
            "198.19.0.2",
            "--return",
            "symmetric",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tokio::process::Command::new(tarpctl)
        .args(["--keeper", &keeper, "list"])
        .output()
        .await
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    let row = table
        .lines()
        .find(|l| l.contains("4001"))
        .unwrap_or_else(|| panic!("no circuit on 4001 in\n{table}"));
    assert!(row.contains("symmetric"), "{table}");
    assert!(table.lines().next().unwrap().contains("RETURN"), "{table}");
    assert!(table.lines().next().unwrap().contains("OWNER"), "{table}");
    assert!(
        row.contains("operator/local"),
        "the plaintext identity owns it: {table}"
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

/// `tarpctl activate -- CMD` holds its circuit by a lease: killed with SIGKILL, its
/// circuit is released by the keeper once the lease runs out ("lease expired");
/// stopped with SIGTERM, it passes the signal to CMD and releases the circuit itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tarpctl_killed_or_terminated_frees_its_circuit() {
    use tarp_api::client::{AppClient, CircuitState, EventKind};
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir.path().join("k.redb"), 5_000, 60_000);
    cfg.settings.min_lease_ms = 300;
    let server = start(cfg, Transport::Unix).await;
    let keeper = endpoint(&server);
    let (_dc, _ams, _fra) = network(&keeper).await;
    let mut app = AppClient::connect(&keeper).await.unwrap();
    let tarpctl = env!("CARGO_BIN_EXE_tarpctl");
    let run = |port: &str| {
        tokio::process::Command::new(tarpctl)
            .args([
                "--keeper", &keeper, "activate", "--mode", "port", "--port", port,
            ])
            .args([
                "--app-host",
                "198.19.0.2",
                "--lease-ms",
                "900",
                "--",
                "sleep",
                "30",
            ])
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let signal = |child: &tokio::process::Child, sig: &str| {
        let pid = child.id().unwrap().to_string();
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    };
    let held = |port: u16| {
        let server = &server;
        move || {
            let listed = server.keeper().list(&Default::default()).ok()?;
            listed
                .into_iter()
                .find(|c| c.ports.first == port && c.state == CircuitState::Active)
        }
    };

    let mut killed = run("4100");
    let c = until("tarpctl's circuit", held(4100)).await;
    assert_eq!(c.lease_ms, 900);
    let mut events = app.watch(Some(c.id), None).await.unwrap();
    // Renewed while it runs: still active after twice its lease.
    tokio::time::sleep(std::time::Duration::from_millis(1800)).await;
    assert_eq!(app.get(c.id).await.unwrap().state, CircuitState::Active);
    signal(&killed, "-KILL");
    let _ = killed.wait().await;
    // (The watch may first tell of the activation, which completed as it subscribed.)
    let e = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            let e = events.next().await.unwrap().unwrap();
            if e.kind != EventKind::Activated {
                return e;
            }
        }
    })
    .await
    .expect("released within 5 s");
    assert_eq!(
        (e.kind, e.reason.as_deref()),
        (EventKind::Released, Some("lease expired"))
    );

    let mut terminated = run("4101");
    let c = until("tarpctl's second circuit", held(4101)).await;
    signal(&terminated, "-TERM");
    let status = terminated.wait().await.unwrap();
    // sleep died of SIGTERM: tarpctl exits 128 + 15.
    assert_eq!(status.code(), Some(143));
    let now = app.get(c.id).await.unwrap();
    assert_eq!(now.state, CircuitState::Released);
    assert_eq!(now.reason, None, "released by tarpctl, not by the lease");
    server.shutdown().await;
}
