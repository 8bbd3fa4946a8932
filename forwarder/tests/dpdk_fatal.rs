//! A panic on a worker core is fatal and never silent: the panic hook prints one line
//! naming the worker's lcore, the control thread's loop ends with that cause, and the
//! process exits with `fatal::EXIT_CODE`. The test runs itself again as a child
//! process (the EAL initialises once per process).
#![cfg(feature = "dpdk")]

use std::process::Command;
use std::time::{Duration, Instant};

use forwarder::dpdk::Eal;
use forwarder::fatal;

const CHILD: &str = "TARP_DPDK_FATAL_CHILD";

#[test]
#[cfg_attr(not(tarp_root), ignore = "needs root (DPDK); build and run as root")]
fn a_worker_panic_ends_the_process_with_one_line() {
    if std::env::var_os(CHILD).is_some() {
        child();
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_worker_panic_ends_the_process_with_one_line",
            "--nocapture",
            "--include-ignored",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(i32::from(fatal::EXIT_CODE)),
        "{stderr}"
    );
    let fatal_lines: Vec<&str> = stderr.lines().filter(|l| l.contains("panicked")).collect();
    assert_eq!(fatal_lines.len(), 1, "{stderr}");
    let line = fatal_lines[0];
    assert!(
        line.starts_with("tarp-forwarder: fatal: the worker on lcore 1 panicked at "),
        "{line}"
    );
    assert!(line.contains("dpdk_fatal.rs"), "{line}");
    assert!(
        line.ends_with(": worker test panic; the forwarder stops"),
        "{line}"
    );
}

fn child() -> ! {
    let args: Vec<String> = [
        "--no-huge",
        "--no-shconf",
        "-m",
        "128",
        "--no-pci",
        "--no-telemetry",
        "-l",
        "0-1",
        "--file-prefix",
        "tarp-dpdk-fatal",
        "--log-level",
        "lib.eal:warning",
    ]
    .map(String::from)
    .into();
    let eal = Eal::init(&args).unwrap();
    fatal::install_panic_hook();
    eal.launch_on_lcore(1, || panic!("worker test panic"))
        .unwrap();
    // What the control thread's loop does each turn.
    let deadline = Instant::now() + Duration::from_secs(10);
    while fatal::cause().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let code = if fatal::cause().is_some() {
        fatal::EXIT_CODE
    } else {
        1
    };
    let _ = eal.wait_all();
    eal.shutdown(i32::from(code))
}
