//! A panic anywhere in the forwarder is fatal, and never silent.
//!
//! A worker that dies leaves its RX queues unpolled: the node would look alive to the
//! keeper while it drops every packet of those queues. So [`install_panic_hook`] makes
//! every panic print one line naming the thread (a worker by its lcore) and where it
//! happened, and records it; the control thread sees [`cause`], stops the other workers,
//! releases the ports, and the process exits with [`EXIT_CODE`], so that a supervisor
//! restarts it and the keeper sees the node go and come back.

use std::sync::OnceLock;

/// The exit status of a forwarder that stopped because a thread panicked
/// (`EX_SOFTWARE`).
pub const EXIT_CODE: u8 = 70;

static CAUSE: OnceLock<String> = OnceLock::new();

/// Replaces the default panic hook (which prints several lines and lets the process
/// go on) with one that prints one line and records the panic.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let who = match (crate::dpdk::current_lcore(), std::thread::current().name()) {
            (_, Some(name)) => format!("thread {name:?}"),
            (Some(lcore), None) => format!("the worker on lcore {lcore}"),
            (None, None) => "an unnamed thread".to_string(),
        };
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".to_string());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let line = format!("{who} panicked{at}: {what}; the forwarder stops");
        eprintln!("tarp-forwarder: fatal: {line}");
        let _ = CAUSE.set(line);
    }));
}

/// The first panic, once one happened.
pub fn cause() -> Option<&'static str> {
    CAUSE.get().map(String::as_str)
}
