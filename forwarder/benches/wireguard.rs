//! WireGuard beside VXLAN, in the same run: Mpps per core of the aggregator (pipeline,
//! then seal: ChaCha20-Poly1305 over a copy into a fresh buffer) and of the demux (open,
//! then the demux pipeline over the opened frame), against the same roles over plaintext
//! VXLAN. One circuit, bursts of 32, frames of 64 bytes (60 + FCS) and 1400 bytes.
//!
//! Why not `perf/run.sh`: it replays a pcap into one forwarder, and a WireGuard session
//! needs a live peer to handshake with (its keys are ephemeral), so no pcap can carry
//! transport messages a forwarder would accept. The same pipeline and engine code runs
//! here over `VecBuf`s; the DPDK I/O (RX, TX, mbufs) is not in these figures.
//!
//! Only the forwarding work is timed: refilling a burst from its pool (what RX would
//! have done) and sealing fresh ciphertexts for the demux happen outside the clock. The
//! output buffers of seal and open come from a pool and are zero-filled to their length
//! (`VecBuf::reset`), which an mbuf's `append` does not do: WireGuard pays that fill
//! here, VXLAN does not.

#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use forwarder::pipeline::{
    process, process_inner, Context, PacketBuf, VecBuf, Verdict, WgJob, MAX_BURST,
};
use forwarder::wg::{Opened, WgEngine};
use support::*;
use tarp_api::rules::WgKey;

const AGG_KEY: [u8; 32] = [0x11; 32];
const DMX_KEY: [u8; 32] = [0x22; 32];
/// Frame sizes without FCS: 64 and 1400 bytes on the wire... 60 and 1396 here.
const SIZES: [(usize, &str); 2] = [(60, "64B"), (1396, "1400B")];
const ZEROS: [u8; 2048] = [0; 2048];

fn public(k: [u8; 32]) -> String {
    WgKey(WgEngine::new(k).public_key()).to_string()
}

fn device_frame(len: usize) -> Vec<u8> {
    let payload = vec![0x5a; len - 42];
    frame(
        ROUTER,
        AGG_LINE,
        ip("198.51.100.10"),
        ip("203.0.113.4"),
        64,
        L4::Udp,
        5555,
        4000,
        &payload,
    )
}

/// A pool of output buffers: `take(len)` hands one out at that length.
struct Pool(Vec<VecBuf>);

impl Pool {
    fn new() -> Pool {
        Pool((0..MAX_BURST * 2).map(|_| VecBuf::new(&ZEROS)).collect())
    }
    fn take(&mut self, len: usize) -> Option<VecBuf> {
        let mut b = self.0.pop()?;
        b.reset(&ZEROS[..len]);
        Some(b)
    }
    fn give(&mut self, b: VecBuf) {
        self.0.push(b);
    }
}

/// Times `$run` over `$iters` bursts, `$prepare` (untimed) before each.
macro_rules! timed {
    ($iters:expr, $prepare:block, $run:block $(,)?) => {{
        let mut total = Duration::ZERO;
        for _ in 0..$iters {
            $prepare
            let t = Instant::now();
            $run
            total += t.elapsed();
        }
        total
    }};
}

fn handshake(a: &Box_, ae: &mut WgEngine, d: &Box_, de: &mut WgEngine) {
    let alloc = |len| Some(VecBuf::new(&ZEROS[..len]));
    let mut init = Vec::new();
    ae.sync(&a.snap);
    de.sync(&d.snap);
    ae.tick(&a.snap, alloc, |_, f| init.push(f));
    let Opened::Reply(_, resp) = de.open(&d.snap, 0, init[0].data(), alloc) else {
        panic!("no response")
    };
    let Opened::Reply(_, ka) = ae.open(&a.snap, 1, resp.data(), alloc) else {
        panic!("no keepalive")
    };
    assert!(matches!(
        de.open(&d.snap, 0, ka.data(), alloc),
        Opened::Nothing
    ));
}

fn tunnels(c: &mut Criterion) {
    let (wa, wd) = (wg_aggregator(&public(DMX_KEY)), wg_demux(&public(AGG_KEY)));
    let (va, vd) = (aggregator(), demux());
    let (mut ae, mut de) = (WgEngine::new(AGG_KEY), WgEngine::new(DMX_KEY));
    handshake(&wa, &mut ae, &wd, &mut de);
    let mut ctx = Context::new(2);
    let mut verdicts = [Verdict::SlowPath; MAX_BURST];
    let mut inner_v = [Verdict::SlowPath; MAX_BURST];
    let mut pool = Pool::new();
    for (len, size) in SIZES {
        let dev = device_frame(len);
        let mut g = c.benchmark_group(format!("tunnel/{size}"));
        g.throughput(Throughput::Elements(MAX_BURST as u64));
        let mut burst: Vec<VecBuf> = (0..MAX_BURST).map(|_| VecBuf::new(&dev)).collect();

        // What each run forwards is checked once, outside the timing.
        let (v, vx) = va.run(0, &dev);
        assert_eq!(v, Verdict::Forward(1), "VXLAN aggregator");
        assert_eq!(vd.run(0, &vx).0, Verdict::Forward(1), "VXLAN demux");

        g.bench_function("aggregator/vxlan", |b| {
            b.iter_custom(|iters| {
                timed!(iters, { burst.iter_mut().for_each(|p| p.reset(&dev)) }, {
                    process(&va.snap, &mut ctx, 0, &mut burst, &mut verdicts);
                    black_box(&verdicts);
                },)
            })
        });
        let mut sealed = Vec::with_capacity(MAX_BURST);
        g.bench_function("aggregator/wireguard", |b| {
            b.iter_custom(|iters| {
                timed!(
                    iters,
                    {
                        burst.iter_mut().for_each(|p| p.reset(&dev));
                        sealed.drain(..).for_each(|s| pool.give(s));
                    },
                    {
                        process(&wa.snap, &mut ctx, 0, &mut burst, &mut verdicts);
                        for (p, v) in burst.iter().zip(&verdicts) {
                            let Verdict::Wg(WgJob::Seal(t)) = *v else {
                                panic!("{v:?}")
                            };
                            match ae.seal(&wa.snap, t, p.data(), 14, |l| pool.take(l)) {
                                Ok((_, s)) => sealed.push(s),
                                Err(r) => panic!("seal: {r:?}"),
                            }
                        }
                    },
                )
            })
        });

        let mut inner: Vec<VecBuf> = Vec::with_capacity(MAX_BURST);
        g.bench_function("demux/vxlan", |b| {
            b.iter_custom(|iters| {
                timed!(iters, { burst.iter_mut().for_each(|p| p.reset(&vx)) }, {
                    process(&vd.snap, &mut ctx, 0, &mut burst, &mut verdicts);
                    black_box(&verdicts);
                },)
            })
        });
        // Fresh transport messages for every burst (the replay window takes each once),
        // sealed outside the clock.
        let mut fresh: Vec<Vec<u8>> = Vec::with_capacity(MAX_BURST);
        let mut wa_ctx = Context::new(2);
        g.bench_function("demux/wireguard", |b| {
            b.iter_custom(|iters| {
                timed!(
                    iters,
                    {
                        inner.drain(..).for_each(|s| pool.give(s));
                        fresh.clear();
                        for p in burst.iter_mut() {
                            p.reset(&dev);
                        }
                        process(&wa.snap, &mut wa_ctx, 0, &mut burst, &mut verdicts);
                        for p in burst.iter() {
                            let (_, s) = ae
                                .seal(&wa.snap, 0, p.data(), 14, |l| {
                                    Some(VecBuf::new(&ZEROS[..l]))
                                })
                                .unwrap();
                            fresh.push(s.data().to_vec());
                        }
                        for (p, f) in burst.iter_mut().zip(&fresh) {
                            p.reset(f);
                        }
                    },
                    {
                        process(&wd.snap, &mut ctx, 0, &mut burst, &mut verdicts);
                        for (p, v) in burst.iter().zip(&verdicts) {
                            assert_eq!(*v, Verdict::Wg(WgJob::Open));
                            match de.open(&wd.snap, 0, p.data(), |l| pool.take(l)) {
                                Opened::Inner(f) => inner.push(f),
                                _ => panic!("not opened"),
                            }
                        }
                        let n = inner.len();
                        process_inner(&wd.snap, &mut ctx, 0, &mut inner, &mut inner_v[..n]);
                        assert!(inner_v[..n].iter().all(|v| *v == Verdict::Forward(1)));
                    },
                )
            })
        });
        g.finish();
        // Back to the pool for the next size.
        sealed
            .drain(..)
            .chain(inner.drain(..))
            .for_each(|b| pool.give(b));
    }
}

criterion_group!(benches, tunnels);
criterion_main!(benches);
