//! The per-core loop: read a burst, prefetch, run the port's pipeline, send — the shape
//! of DPDK's `examples/l3fwd` main loop. Everything it touches is set up before it
//! starts; inside, nothing allocates, locks, logs or makes a system call (the idle
//! back-off's sleep happens only when there is nothing to do).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::IdlePolicy;
use crate::dpdk::{Mbuf, MbufBurst, MbufQueue, Mempool, RxQueue, TxBuffer, BURST};
use crate::metrics::{bump, WorkerStats};
use crate::pipeline::{process, split, Context, DropReason, Verdict};
use crate::prefetch::prefetch0;
use crate::tables::{PortId, SnapshotHandle};

/// One worker: the RX queues it polls and one TX buffer per port.
pub struct Worker {
    /// (port, its RX queue) pairs this worker polls, in turn.
    pub rx: Vec<(PortId, RxQueue)>,
    /// One TX buffer per port, indexed by [`PortId`].
    pub tx: Vec<TxBuffer>,
    /// Where the fragments of a packet too big for its tunnel come from.
    pub pool: Mempool,
    /// Where the current snapshot is published.
    pub snapshots: Arc<SnapshotHandle>,
    /// Packets for the control thread.
    pub slow_path: Arc<MbufQueue>,
    /// Frames the control thread wants sent (ARP and ND replies and requests, pings),
    /// one queue per port: the worker sends them on its own TX queue, so that a device
    /// needs no extra queue for the control thread.
    pub control_tx: Vec<Arc<MbufQueue>>,
    /// This worker's counters.
    pub stats: Arc<WorkerStats>,
    /// Set to stop the loop.
    pub stop: Arc<AtomicBool>,
    /// What to do when polls come back empty.
    pub idle: IdlePolicy,
}

/// Empty polls before the back-off starts sleeping.
const IDLE_POLLS: u32 = 256;
/// The longest back-off sleep.
const MAX_SLEEP: Duration = Duration::from_micros(500);

impl Worker {
    /// Runs until `stop` is set, then flushes and returns.
    pub fn run(mut self) {
        let mut burst = MbufBurst::new();
        let mut verdicts = [Verdict::SlowPath; BURST];
        let mut empty_run = 0u32;
        let mut sleep = Duration::from_micros(1);
        let stats = self.stats.clone();
        let mut ctx = Context::new(self.tx.len());
        let start = std::time::Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            let mut got = 0;
            // One clock read per poll round (vDSO, no system call).
            ctx.set_now_ms(start.elapsed().as_millis() as u64);
            for (port, rxq) in self.rx.iter_mut() {
                let n = rxq.rx_burst(&mut burst);
                if n == 0 {
                    continue;
                }
                got += n;
                for m in burst.iter() {
                    if let Some(first) = m.data().first() {
                        prefetch0(first);
                    }
                }
                let counters = &stats.ports[*port as usize];
                bump(&counters.rx, n as u64);
                let mut forwarded = 0;
                let snap = self.snapshots.load();
                process(&snap, &mut ctx, *port, &mut burst, &mut verdicts[..n]);
                for (m, v) in burst.drain().zip(verdicts.iter()) {
                    match *v {
                        Verdict::Forward(out) | Verdict::Icmp(out) => {
                            if matches!(v, Verdict::Icmp(_)) {
                                bump(&counters.icmp_sent, 1);
                            } else {
                                forwarded += 1;
                            }
                            let c = &stats.ports[out as usize];
                            bump(&c.tx, 1);
                            let dropped = self.tx[out as usize].push(m);
                            if dropped > 0 {
                                bump(&c.drops[DropReason::TxFull as usize], dropped as u64);
                            }
                        }
                        Verdict::Fragment(how) => {
                            let pool = self.pool;
                            let tx = &mut self.tx;
                            let mut lost = 0;
                            let l3 = crate::packet::ethernet::HEADER_LEN
                                + if m.data().get(12..14) == Some(&[0x81, 0x00]) {
                                    4
                                } else {
                                    0
                                };
                            let made = split(
                                &snap,
                                how,
                                m.data(),
                                l3,
                                |len| {
                                    let mut f = Mbuf::alloc(&pool)?;
                                    f.append(len)?;
                                    Some(f)
                                },
                                |p, f| lost += tx[p as usize].push(f),
                            );
                            drop(m);
                            match made {
                                Ok((out, pieces)) => {
                                    forwarded += 1;
                                    bump(&counters.fragmented, 1);
                                    let c = &stats.ports[out as usize];
                                    bump(&c.tx, pieces as u64);
                                    if lost > 0 {
                                        bump(&c.drops[DropReason::TxFull as usize], lost as u64);
                                    }
                                }
                                Err(reason) => bump(&counters.drops[reason as usize], 1),
                            }
                        }
                        Verdict::Drop(reason) => {
                            bump(&counters.drops[reason as usize], 1);
                            drop(m);
                        }
                        Verdict::SlowPath => {
                            if self.slow_path.push(m) {
                                bump(&counters.slow_path, 1);
                            } else {
                                bump(&counters.drops[DropReason::SlowPathFull as usize], 1);
                            }
                        }
                    }
                }
                drop(snap);
                bump(&counters.forwarded, forwarded);
            }
            for (port, q) in self.control_tx.iter().enumerate() {
                while let Some(m) = q.pop() {
                    let dropped = self.tx[port].push(m);
                    if dropped > 0 {
                        bump(
                            &stats.ports[port].drops[DropReason::TxFull as usize],
                            dropped as u64,
                        );
                    }
                }
            }
            for (port, tx) in self.tx.iter_mut().enumerate() {
                let dropped = tx.flush();
                if dropped > 0 {
                    bump(
                        &stats.ports[port].drops[DropReason::TxFull as usize],
                        dropped as u64,
                    );
                }
            }
            if got > 0 {
                bump(&stats.busy_polls, 1);
                empty_run = 0;
                sleep = Duration::from_micros(1);
            } else {
                bump(&stats.empty_polls, 1);
                empty_run = empty_run.saturating_add(1);
                if self.idle == IdlePolicy::Backoff && empty_run > IDLE_POLLS {
                    std::thread::sleep(sleep);
                    sleep = (sleep * 2).min(MAX_SLEEP);
                }
            }
        }
        for tx in self.tx {
            drop(tx.into_queue());
        }
    }
}
