//! The per-core loop: read a burst, prefetch, run the port's pipeline, send — the shape
//! of DPDK's `examples/l3fwd` main loop. Everything it touches is set up before it
//! starts; inside, nothing allocates, locks, logs or makes a system call (the idle
//! back-off's sleep happens only when there is nothing to do).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::capture::{Capture, Tap};
use crate::config::IdlePolicy;
use crate::dpdk::{Clock, Mbuf, MbufBurst, MbufQueue, Mempool, RxQueue, TxBuffer, BURST};
use crate::metrics::{bump, CircuitCounters, Recorder, WorkerStats};
use crate::pipeline::{process, process_inner, split, Context, DropReason, Split, Verdict, WgJob};
use crate::prefetch::prefetch0;
use crate::tables::{PortId, Snapshot, SnapshotHandle};
use crate::wg::{Opened, WgEngine};

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
    /// WireGuard tunnels' state (`[wireguard]`; the only worker then).
    pub wg: Option<WgEngine>,
    /// Where this worker records each burst's time.
    pub latency: Recorder,
    /// The packet recorder, when an operator runs one.
    pub capture: Arc<Capture>,
    /// This worker's side of it.
    pub tap: Tap,
    /// Its counters of the circuits counted one by one (`circuit_metrics`).
    pub circuits: CircuitCounters,
}

/// Empty polls before the back-off starts sleeping.
const IDLE_POLLS: u32 = 256;
/// The longest back-off sleep.
const MAX_SLEEP: Duration = Duration::from_micros(500);
/// How often a worker hands its burst-time histogram over to be merged.
const HAND_OVER_MS: u64 = 100;

impl Worker {
    /// Runs until `stop` is set, then flushes and returns.
    pub fn run(mut self) {
        let mut burst = MbufBurst::new();
        let mut opened = MbufBurst::new();
        let mut unexpected = MbufBurst::new();
        // Dropped packets, freed together at the end of their burst.
        let mut dead = MbufBurst::new();
        let mut verdicts = [Verdict::SlowPath; BURST];
        let mut inner_verdicts = [Verdict::SlowPath; BURST];
        let mut empty_run = 0u32;
        let mut sleep = Duration::from_micros(1);
        let stats = self.stats.clone();
        let mut ctx = Context::new(self.tx.len());
        ctx.set_circuit_counters(self.circuits.clone());
        let mut wg = self.wg.take();
        let mut next_tick_ms = 0;
        let mut next_hand_over_ms = 0;
        let handle = self.snapshots.clone();
        let mut snapshots = handle.cache();
        let clock = Clock::new();
        let start = clock.start();
        let now_ns = || clock.now_ns();
        while !self.stop.load(Ordering::Relaxed) {
            let mut got = 0;
            // One clock read per poll round and one per burst (the TSC: one instruction).
            let mut t = now_ns();
            ctx.set_now_ms(t / 1_000_000);
            if let Some(e) = wg.as_mut() {
                e.new_round();
            }
            // The round's snapshot: one pointer compared, a new one taken up after a swap.
            let snap: &Arc<Snapshot> = snapshots.load();
            for (port, rxq) in self.rx.iter_mut() {
                let n = rxq.rx_burst(&mut burst);
                if n == 0 {
                    continue;
                }
                got += n;
                let mut bytes = 0;
                for m in burst.iter() {
                    bytes += m.len() as u64;
                    if let Some(first) = m.data().first() {
                        prefetch0(first);
                    }
                }
                let counters = &stats.ports[*port as usize];
                bump(&counters.rx, n as u64);
                bump(&counters.rx_bytes, bytes);
                // A capture copies what it asked for before the rewrite (one relaxed
                // load when none runs).
                self.tap.before(
                    &self.capture,
                    *port,
                    start + Duration::from_nanos(t),
                    burst.iter().map(|m| m.data()),
                );
                if let Some(e) = wg.as_mut() {
                    e.sync(snap);
                }
                process(snap, &mut ctx, *port, &mut burst, &mut verdicts[..n]);
                // The common case, a whole burst forwarded to one port with no capture
                // running, goes to that port's TX queue as it is, without a verdict
                // dispatched packet by packet.
                let whole = one_port(&verdicts[..n], self.tx.len()).filter(|_| !self.tap.on());
                let forwarded = if let Some(out) = whole {
                    let dropped = self.tx[out as usize].send_burst(&mut burst);
                    if dropped > 0 {
                        let c = &stats.ports[out as usize];
                        bump(&c.drops[DropReason::TxFull as usize], dropped as u64);
                    }
                    n as u64
                } else {
                    let mut out = Sink {
                        tx: &mut self.tx,
                        pool: self.pool,
                        slow_path: &self.slow_path,
                        stats: &stats,
                        dead: &mut dead,
                    };
                    let mut forwarded = 0;
                    for (i, (m, v)) in burst.drain().zip(verdicts.iter()).enumerate() {
                        if self.tap.on() {
                            self.tap.verdict(i, *v, m.data());
                        }
                        forwarded += out.dispatch(snap, &mut wg, &mut opened, *port, m, *v);
                    }
                    self.tap.end();
                    // What WireGuard opened: through the port's pipeline as inner frames.
                    if !opened.is_empty() {
                        let k = opened.len();
                        // A capture sees the opened frame as its before copy.
                        self.tap.before(
                            &self.capture,
                            *port,
                            start + Duration::from_nanos(t),
                            opened.iter().map(|m| m.data()),
                        );
                        let inner = &mut inner_verdicts[..k];
                        process_inner(snap, &mut ctx, *port, &mut opened, inner);
                        for (i, (m, v)) in opened.drain().zip(inner.iter()).enumerate() {
                            if self.tap.on() {
                                self.tap.verdict(i, *v, m.data());
                            }
                            let un = &mut unexpected;
                            forwarded += out.dispatch(snap, &mut wg, un, *port, m, *v);
                        }
                        self.tap.end();
                        // An inner frame is never opened again.
                        unexpected.clear();
                    }
                    // One bulk free for the burst's drops (rte_pktmbuf_free_bulk).
                    dead.clear();
                    forwarded
                };
                bump(&counters.forwarded, forwarded);
                let t1 = now_ns();
                self.latency.record(t1 - t);
                bump(&stats.busy_ns, t1 - t);
                t = t1;
            }
            for (port, q) in self.control_tx.iter().enumerate() {
                while let Some(m) = q.pop() {
                    bump(&stats.ports[port].control_tx, 1);
                    let dropped = self.tx[port].push(m);
                    if dropped > 0 {
                        bump(
                            &stats.ports[port].drops[DropReason::TxFull as usize],
                            dropped as u64,
                        );
                    }
                }
            }
            // WireGuard's timers, outside the burst loop.
            if let Some(e) = wg.as_mut() {
                if ctx.now_ms() >= next_tick_ms {
                    next_tick_ms = ctx.now_ms() + WgEngine::TICK_MS;
                    let (pool, tx) = (self.pool, &mut self.tx);
                    e.tick(
                        snap,
                        |len| alloc_len(&pool, len),
                        |p, f| {
                            bump(&stats.ports[p as usize].control_tx, 1);
                            let dropped = tx[p as usize].push(f);
                            if dropped > 0 {
                                let c = &stats.ports[p as usize];
                                bump(&c.drops[DropReason::TxFull as usize], dropped as u64);
                            }
                        },
                    );
                    let (peers, up) = e
                        .peers()
                        .fold((0, 0), |(n, u), p| (n + 1, u + p.established as u64));
                    stats.wg_peers.store(peers, Ordering::Relaxed);
                    stats.wg_established.store(up, Ordering::Relaxed);
                    stats.wg_handshakes.store(e.handshakes(), Ordering::Relaxed);
                }
            }
            for (port, tx) in self.tx.iter_mut().enumerate() {
                let dropped = tx.flush();
                let c = &stats.ports[port];
                if dropped > 0 {
                    bump(&c.drops[DropReason::TxFull as usize], dropped as u64);
                }
                // What the device took, as the TX buffer counted it: plain stores.
                c.tx.store(tx.sent(), Ordering::Relaxed);
                c.tx_bytes.store(tx.sent_bytes(), Ordering::Relaxed);
            }
            if ctx.now_ms() >= next_hand_over_ms {
                next_hand_over_ms = ctx.now_ms() + HAND_OVER_MS;
                self.latency.hand_over();
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

/// The port every packet of a burst is forwarded to, if they all go to the same one
/// (and it is one of the worker's `ports`).
#[inline(always)]
fn one_port(verdicts: &[Verdict], ports: usize) -> Option<PortId> {
    let Some(&Verdict::Forward(out)) = verdicts.first() else {
        return None;
    };
    let all = verdicts
        .iter()
        .fold(true, |all, v| all & (*v == Verdict::Forward(out)));
    (all && (out as usize) < ports).then_some(out)
}

/// Where a worker's verdicts send packets: its TX buffers, the slow path, its counters.
struct Sink<'a> {
    tx: &'a mut [TxBuffer],
    pool: Mempool,
    slow_path: &'a MbufQueue,
    stats: &'a WorkerStats,
    /// Where dropped packets wait to be freed in bulk.
    dead: &'a mut MbufBurst,
}

/// A buffer of exactly `len` bytes.
#[inline]
fn alloc_len(pool: &Mempool, len: usize) -> Option<Mbuf> {
    let mut f = Mbuf::alloc(pool)?;
    f.append(len)?;
    Some(f)
}

/// Where the IP header of a frame starts (after one VLAN tag, if any).
#[inline]
fn l3_of(b: &[u8]) -> usize {
    crate::packet::ethernet::HEADER_LEN
        + if b.get(12..14) == Some(&[0x81, 0x00]) {
            4
        } else {
            0
        }
}

impl Sink<'_> {
    /// Sends `m` on port `out`, counting a full TX queue's losses there.
    #[inline(always)]
    fn send(&mut self, out: PortId, m: Mbuf) {
        let c = &self.stats.ports[out as usize];
        let dropped = self.tx[out as usize].push(m);
        if dropped > 0 {
            bump(&c.drops[DropReason::TxFull as usize], dropped as u64);
        }
    }

    /// Carries out verdict `v` for packet `m` received on `in_port`; returns 1 if it
    /// counts as forwarded. Frames WireGuard opened go to `opened`.
    #[inline(always)]
    fn dispatch(
        &mut self,
        snap: &Snapshot,
        wg: &mut Option<WgEngine>,
        opened: &mut MbufBurst,
        in_port: PortId,
        m: Mbuf,
        v: Verdict,
    ) -> u64 {
        let counters = &self.stats.ports[in_port as usize];
        match v {
            Verdict::Forward(out) => {
                self.send(out, m);
                return 1;
            }
            Verdict::Icmp(out) => {
                bump(&counters.icmp_sent, 1);
                self.send(out, m);
            }
            Verdict::Fragment(how) => {
                let pool = self.pool;
                let tx = &mut *self.tx;
                let mut lost = 0;
                let mut unsealed = None;
                let l3 = l3_of(m.data());
                let sealer = match how {
                    Split::Tunnel(t) if snap.tunnels[t as usize].wg.is_some() => {
                        wg.as_mut().map(|e| (t, e))
                    }
                    _ => None,
                };
                let mut sealer = sealer;
                let made = split(
                    snap,
                    how,
                    m.data(),
                    l3,
                    |len| alloc_len(&pool, len),
                    |p, f| match sealer.as_mut() {
                        None => lost += tx[p as usize].push(f),
                        Some((t, e)) => {
                            match e.seal(snap, *t, f.data(), l3, |len| alloc_len(&pool, len)) {
                                Ok((p, sealed)) => lost += tx[p as usize].push(sealed),
                                Err(r) => unsealed = Some(r),
                            }
                        }
                    },
                );
                drop(m);
                match (made, unsealed) {
                    (Ok((out, _pieces)), None) => {
                        bump(&counters.fragmented, 1);
                        let c = &self.stats.ports[out as usize];
                        if lost > 0 {
                            bump(&c.drops[DropReason::TxFull as usize], lost as u64);
                        }
                        return 1;
                    }
                    (Err(reason), _) | (_, Some(reason)) => {
                        bump(&counters.drops[reason as usize], 1)
                    }
                }
            }
            Verdict::Wg(job) => {
                let Some(e) = wg.as_mut() else {
                    // Rules with a WireGuard tunnel reached a forwarder without [wireguard].
                    bump(&counters.drops[DropReason::WgNoSession as usize], 1);
                    return 0;
                };
                let pool = self.pool;
                match job {
                    WgJob::Seal(t) => {
                        match e.seal(snap, t, m.data(), l3_of(m.data()), |len| {
                            alloc_len(&pool, len)
                        }) {
                            Ok((out, sealed)) => {
                                drop(m);
                                self.send(out, sealed);
                                return 1;
                            }
                            Err(r) => bump(&counters.drops[r as usize], 1),
                        }
                    }
                    WgJob::Open => {
                        match e.open(snap, in_port, m.data(), |len| alloc_len(&pool, len)) {
                            Opened::Inner(f) => {
                                if opened.push(f).is_err() {
                                    bump(&counters.drops[DropReason::NoBuffer as usize], 1);
                                }
                            }
                            Opened::Reply(out, f) => self.send(out, f),
                            Opened::Nothing => {}
                            Opened::Drop(r) => bump(&counters.drops[r as usize], 1),
                        }
                    }
                }
            }
            Verdict::Drop(reason) => {
                bump(&counters.drops[reason as usize], 1);
                if self.dead.is_full() {
                    self.dead.clear();
                }
                // Never fails: there is room now.
                let _ = self.dead.push(m);
            }
            Verdict::SlowPath => {
                if self.slow_path.push(m) {
                    bump(&counters.slow_path, 1);
                } else {
                    bump(&counters.drops[DropReason::SlowPathFull as usize], 1);
                }
            }
        }
        0
    }
}
