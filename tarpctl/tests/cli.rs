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
