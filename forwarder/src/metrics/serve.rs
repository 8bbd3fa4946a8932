//! The metrics endpoint: Prometheus text at `/metrics`, read from the workers' counters,
//! the device counters the control thread last read, and the current snapshot.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{render, totals, DeviceCounters, Scrape, WorkerStats};
use crate::tables::SnapshotHandle;

/// What a scrape reads; shared between the control thread and the endpoint.
pub struct MetricsSource {
    /// The forwarder's node id.
    pub node: String,
    /// Port names and roles.
    pub ports: Vec<(String, &'static str)>,
    /// Every worker's counters.
    pub workers: Vec<Arc<WorkerStats>>,
    /// Device counters per port, as the control thread last read them.
    pub devices: Mutex<Vec<DeviceCounters>>,
    /// The published snapshot.
    pub snapshots: Arc<SnapshotHandle>,
}

impl MetricsSource {
    /// One scrape's worth of numbers.
    pub fn scrape(&self) -> Scrape {
        let workers: Vec<&WorkerStats> = self.workers.iter().map(|w| &**w).collect();
        let snap = self.snapshots.load();
        let resolved = snap.next_hops.iter().filter(|n| n.mac().is_some()).count();
        let polls = workers.iter().fold((0, 0), |(e, b), w| {
            (
                e + w.empty_polls.load(Ordering::Relaxed),
                b + w.busy_polls.load(Ordering::Relaxed),
            )
        });
        let wg = workers.iter().fold((0, 0, 0), |(p, e, h), w| {
            (
                p + w.wg_peers.load(Ordering::Relaxed),
                e + w.wg_established.load(Ordering::Relaxed),
                h + w.wg_handshakes.load(Ordering::Relaxed),
            )
        });
        Scrape {
            wg,
            node: self.node.clone(),
            ports: self.ports.clone(),
            totals: totals(&workers, self.ports.len()),
            devices: self.devices.lock().map(|d| d.clone()).unwrap_or_default(),
            generation: snap.generation(),
            entries: snap.entries(),
            polls,
            neighbours: (resolved, snap.next_hops.len()),
        }
    }
}

/// Serves `GET /metrics` (any path, in fact) in Prometheus text format until `stop`.
pub fn serve(listener: TcpListener, source: Arc<MetricsSource>, stop: Arc<AtomicBool>) {
    listener.set_nonblocking(true).ok();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut conn, _)) => {
                conn.set_nonblocking(false).ok();
                conn.set_read_timeout(Some(Duration::from_secs(2))).ok();
                let mut req = [0u8; 1024];
                let _ = conn.read(&mut req);
                let body = render(&source.scrape());
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn
                    .write_all(head.as_bytes())
                    .and_then(|_| conn.write_all(body.as_bytes()));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}
