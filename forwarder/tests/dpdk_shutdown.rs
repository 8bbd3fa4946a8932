//! `Eal::shutdown` releases DPDK and exits the process with the given code, even with
//! a started port and mbufs still held. The test runs itself again as a child
//! process (the EAL initialises once per process and shutdown exits it).
#![cfg(feature = "dpdk")]

use std::process::Command;

use forwarder::dpdk::{Eal, Mbuf, Mempool, Port, PortConf};

const CHILD: &str = "TARP_DPDK_SHUTDOWN_CHILD";

#[test]
#[cfg_attr(not(tarp_root), ignore = "needs root (DPDK); build and run as root")]
fn shutdown_releases_the_eal_and_exits_with_the_code() {
    if std::env::var_os(CHILD).is_some() {
        child();
    }
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "shutdown_releases_the_eal_and_exits_with_the_code",
            "--nocapture",
            "--include-ignored",
        ])
        .env(CHILD, "1")
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(3));
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
        "tarp-dpdk-shutdown",
        "--log-level",
        "lib.eal:warning",
        "--vdev",
        "net_null0",
    ]
    .map(String::from)
    .into();
    let eal = Eal::init(&args).unwrap();
    let pool = Mempool::new("t_shutdown", 255, 0, -1).unwrap();
    let port = Port::configure(
        Port::find("net_null0").unwrap(),
        &PortConf::default(),
        &pool,
    )
    .unwrap();
    let _rx = port.rx_queue(0).unwrap();
    let _held = Mbuf::alloc(&pool).unwrap();
    eal.launch_on_lcore(1, || ()).unwrap();
    eal.shutdown(3)
}
