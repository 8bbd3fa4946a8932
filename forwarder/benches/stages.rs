//! TSC cycles per packet of each stage of each role's pipeline, counted on the real
//! code: `process_until` stops the pipeline after parse, lookup and rewrite in turn, and
//! each stage's cost is the difference to the cut before it (the refill of the burst
//! from the traffic pool, measured alone, is the first cut). Same traffic and tables as
//! the pipeline bench (`cases`): 64-byte UDP, bursts of 32, uniform over N circuits.
//!
//!   cargo bench -p tarp-forwarder --no-default-features --bench stages [-- N ...]
//!
//! RX, TX and the worker loop are the DPDK side: `perf/run.sh --profile` splits those.
//! Out-of-order execution overlaps neighbouring stages, so a difference can come out a
//! little below a stage's cost when run alone (or, within noise, below zero).

mod cases;
#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use cases::{aggregator_case, assert_all_forwarded, demux_case, remux_case, Case, POOL, SIZES};
use forwarder::pipeline::{process_until, stage, Context, VecBuf, Verdict, MAX_BURST};
use forwarder::tables::{PortId, Snapshot};
use forwarder::tsc::rdtsc;

/// Bursts per measurement, and measurements per cut (the median is kept).
const BURSTS: usize = 20_000;
const REPS: usize = 9;

type Cut = fn(&Snapshot, &mut Context, PortId, &mut [VecBuf], &mut [Verdict]);

/// The refill alone: the first cut.
fn refill_only(_: &Snapshot, _: &mut Context, _: PortId, b: &mut [VecBuf], _: &mut [Verdict]) {
    black_box(b);
}

const CUTS: [Cut; 5] = [
    refill_only,
    process_until::<VecBuf, { stage::PARSE }>,
    process_until::<VecBuf, { stage::LOOKUP }>,
    process_until::<VecBuf, { stage::REWRITE }>,
    process_until::<VecBuf, { stage::ALL }>,
];

/// The TSC's ticks per second, against the monotonic clock.
fn tsc_hz() -> f64 {
    let (t0, c0) = (Instant::now(), rdtsc());
    std::thread::sleep(Duration::from_millis(200));
    let (c1, t1) = (rdtsc(), Instant::now());
    (c1 - c0) as f64 / (t1 - t0).as_secs_f64()
}

/// TSC ticks per packet of `cut` over `BURSTS` bursts refilled from the pool.
fn measure(case: &Case, cut: Cut, bufs: &mut [VecBuf], ctx: &mut Context, pos: &mut usize) -> f64 {
    let mut verdicts = [Verdict::SlowPath; MAX_BURST];
    let c0 = rdtsc();
    for _ in 0..BURSTS {
        for (k, buf) in bufs.iter_mut().enumerate() {
            buf.reset(&case.pool[(*pos + k) & (POOL - 1)]);
        }
        *pos = pos.wrapping_add(MAX_BURST);
        cut(&case.snap, ctx, 0, bufs, &mut verdicts);
        black_box(&mut verdicts);
    }
    (rdtsc() - c0) as f64 / (BURSTS * MAX_BURST) as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes --bench; numbers among the arguments pick the table sizes.
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.replace('_', "").parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        SIZES.to_vec()
    } else {
        sizes
    };
    let hz = tsc_hz();
    println!(
        "TSC cycles per packet by stage ({:.2} GHz TSC; 64-byte UDP, bursts of {MAX_BURST}, \
         uniform traffic; median of {REPS} x {BURSTS} bursts)\n",
        hz / 1e9
    );
    println!(
        "| role | circuits | refill (not tarp) | {} | pipeline | pipeline ns/pkt |",
        stage::NAMES.join(" | ")
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    type Make = fn(usize, bool) -> Case;
    let roles: [(&str, Make); 3] = [
        ("aggregator", aggregator_case),
        ("demux", demux_case),
        ("remux", remux_case),
    ];
    for (name, make) in roles {
        for &n in &sizes {
            let case = make(n, false);
            let mut bufs: Vec<VecBuf> =
                (0..MAX_BURST).map(|k| VecBuf::new(&case.pool[k])).collect();
            let mut ctx = Context::new(2);
            // Every packet of the pool is forwarded whole (a fast wrong answer must not
            // count).
            assert_all_forwarded(&case, &format!("{name} {n}"));
            let mut pos = 0;
            // Warm up, then the cuts in turn, REPS times (drift spreads over all).
            for cut in CUTS {
                measure(&case, cut, &mut bufs, &mut ctx, &mut pos);
            }
            let mut ticks = vec![Vec::new(); CUTS.len()];
            for _ in 0..REPS {
                for (k, cut) in CUTS.iter().enumerate() {
                    ticks[k].push(measure(&case, *cut, &mut bufs, &mut ctx, &mut pos));
                }
            }
            let t: Vec<f64> = ticks.into_iter().map(median).collect();
            let stages: Vec<String> = (1..CUTS.len())
                .map(|k| format!("{:.1}", t[k] - t[k - 1]))
                .collect();
            let pipeline = t[CUTS.len() - 1] - t[0];
            println!(
                "| {name} | {n} | {:.1} | {} | {:.1} | {:.1} |",
                t[0],
                stages.join(" | "),
                pipeline,
                pipeline / hz * 1e9
            );
        }
    }
}
