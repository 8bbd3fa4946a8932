//! ns/packet and Mpps per core for each role: 64-byte UDP, bursts of 32, 1 / 10k / 1M
//! circuits, uniform and Zipf-skewed destinations (the traffic and tables: `cases`).

mod cases;
#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::time::Instant;

use cases::{
    aggregator_case, assert_all_forwarded, capture, demux_case, demux_inner, in_vxlan, pick,
    remux_case, Case, POOL, SIZES,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use forwarder::metrics::circuit_counters;
use forwarder::pipeline::{process, Context, VecBuf, Verdict, MAX_BURST};
use forwarder::tables::counted::circuits_of;
use forwarder::tables::CircuitSlots;
use rand::{rngs::StdRng, SeedableRng};

fn bench_role(c: &mut Criterion, name: &str, make: fn(usize, bool) -> Case) {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(MAX_BURST as u64));
    for n in SIZES {
        for zipf in [false, true] {
            let case = make(n, zipf);
            if n == SIZES[2] && !zipf {
                eprintln!(
                    "{name}: {} entries, {} bytes of tables, {:.1} bytes per entry",
                    case.snap.entries(),
                    case.snap.memory_bytes(),
                    case.snap.memory_bytes() as f64 / case.snap.entries() as f64
                );
            }
            let id = format!("{n}/{}", if zipf { "zipf" } else { "uniform" });
            bench_case(&mut g, name, &id, &case, n == SIZES[0] && !zipf);
        }
    }
    g.finish();
}

/// Measures `process` over bursts of `case`'s pool, after checking that every packet of
/// the pool is forwarded.
fn bench_case(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    id: &str,
    case: &Case,
    copy_only: bool,
) {
    // Each burst is refilled from the pool before it is processed (a pipeline
    // rewrites in place); `copy-only` below measures that refill alone.
    let mut bufs: Vec<VecBuf> = (0..MAX_BURST).map(|k| VecBuf::new(&case.pool[k])).collect();
    let mut verdicts = [Verdict::SlowPath; MAX_BURST];
    let mut ctx = Context::new(2);
    if let Some(c) = &case.counters {
        ctx.set_circuit_counters(c.clone());
    }
    // Every packet the measurement will use must be forwarded, in bench builds too.
    assert_all_forwarded(case, &format!("{name} {id}"));
    let mut pos = 0usize;
    g.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                for (k, buf) in bufs.iter_mut().enumerate() {
                    buf.reset(&case.pool[(pos + k) & (POOL - 1)]);
                }
                pos = pos.wrapping_add(MAX_BURST);
                process(&case.snap, &mut ctx, 0, &mut bufs, &mut verdicts);
                black_box(&mut verdicts);
            }
            start.elapsed()
        })
    });
    if copy_only {
        g.bench_function("copy-only", |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    for (k, buf) in bufs.iter_mut().enumerate() {
                        buf.reset(&case.pool[(pos + k) & (POOL - 1)]);
                    }
                    pos = pos.wrapping_add(MAX_BURST);
                    black_box(&mut bufs);
                }
                start.elapsed()
            })
        });
    }
}

fn aggregator(c: &mut Criterion) {
    bench_role(c, "aggregator", aggregator_case);
}

fn demux(c: &mut Criterion) {
    bench_role(c, "demux", demux_case);
}

fn remux(c: &mut Criterion) {
    bench_role(c, "remux", remux_case);
}

/// The rarer paths at 10k circuits, each costed on its own: SYNs whose MSS the
/// aggregator clamps (every packet a SYN), and port-mode fragments at the demux (every
/// packet a fragment: a first that fills the fragment table, then the later one that
/// follows it).
fn rare(c: &mut Criterion) {
    const N: usize = 10_000;
    let mut g = c.benchmark_group("rare");
    g.throughput(Throughput::Elements(MAX_BURST as u64));

    let mut syns = aggregator_case(N, false);
    let mut rng = StdRng::seed_from_u64(4);
    syns.pool = pick(N, false, &mut rng)
        .into_iter()
        .map(|i| {
            support::syn(
                "198.51.100.10",
                40000,
                &capture(i, N).to_string(),
                80,
                (support::ROUTER, support::AGG_LINE),
                false,
                1460,
            )
        })
        .collect();
    bench_case(&mut g, "rare", "aggregator-syn-mss/10000", &syns, false);

    let mut frags = demux_case(N, false);
    let mut rng = StdRng::seed_from_u64(5);
    frags.pool = pick(N, false, &mut rng)[..POOL / 2]
        .iter()
        .enumerate()
        .flat_map(|(k, &i)| {
            let mut inner = demux_inner(i, &[0x5a; 1400]);
            inner[18..20].copy_from_slice(&(k as u16).to_be_bytes()); // IPv4 identification
            support::fix_ipv4_header_checksum(&mut inner, 14);
            support::fragment_v4(&inner, 800)
                .into_iter()
                .map(|f| in_vxlan(&f, i))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(frags.pool.len(), POOL, "two fragments per datagram");
    bench_case(&mut g, "rare", "demux-fragments/10000", &frags, true);
    g.finish();
}

/// Per-circuit counters (`circuit_metrics`) on, every circuit counted, at the demux and
/// the remux with 10k table entries: against `demux/10000/uniform` and
/// `remux/10000/uniform` (off).
fn counted(c: &mut Criterion) {
    const N: usize = 10_000;
    let mut g = c.benchmark_group("counted");
    g.throughput(Throughput::Elements(MAX_BURST as u64));
    for (name, make) in [
        ("demux", demux_case as fn(usize, bool) -> Case),
        ("remux", remux_case),
    ] {
        let mut case = make(N, false);
        let mut slots = CircuitSlots::new(N);
        case.snap.counted = slots.assign(&circuits_of(&case.snap)).0;
        // The remux's 10k circuits are 10k keys; the demux case sends every circuit to
        // one app host on 16 ports, so its circuits are 16 keys (a small map).
        assert!(!case.snap.counted.is_empty());
        let counters = circuit_counters(N);
        case.counters = Some(counters.clone());
        bench_case(
            &mut g,
            "counted",
            &format!("{name}/{N}/uniform"),
            &case,
            false,
        );
        let packets: u64 = counters
            .iter()
            .map(|k| {
                k.packets
                    .iter()
                    .map(|p| p.load(std::sync::atomic::Ordering::Relaxed))
                    .sum::<u64>()
            })
            .sum();
        assert!(packets > 0, "{name}: nothing counted");
    }
    g.finish();
}

criterion_group!(benches, aggregator, demux, remux, rare, counted);
criterion_main!(benches);
