//! `[bench] swaps_per_second`: a table source for perf runs. It hands the static rules
//! to the control thread as new table sets at a steady rate, through the same hooks as
//! the keeper link, so that each one is built, swapped in with one pointer swap and
//! released on the control thread exactly as a keeper's would be: what a perf run
//! measures (throughput and loss during swaps) is what a keeper's pushes cost.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::{ControlHooks, TableUpdate};
use crate::config::Config;

/// The driver's rate in swaps per 1,000 s (0: paused). One driver per process, so a
/// static: `POST /bench/swaps?per_second=R` on the metrics endpoint changes it at run
/// time, which lets the perf tool alternate phases with and without swaps in one
/// process and compare them pairwise.
static RATE_MILLI: AtomicU64 = AtomicU64::new(0);
/// Whether this process runs the driver at all.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Why a new rate was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateError {
    /// The config has no `[bench] swaps_per_second`.
    NotRunning,
    /// Not in 0..=10,000.
    OutOfRange,
}

impl std::fmt::Display for RateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RateError::NotRunning => {
                "no bench swaps here: the config has no [bench] swaps_per_second"
            }
            RateError::OutOfRange => "per_second must be a number in 0..=10000 (0 pauses)",
        })
    }
}

/// Sets the driver's rate (0 pauses it).
pub fn set_rate(per_second: f64) -> Result<(), RateError> {
    if !ACTIVE.load(Ordering::Relaxed) {
        return Err(RateError::NotRunning);
    }
    if !(0.0..=10_000.0).contains(&per_second) {
        return Err(RateError::OutOfRange);
    }
    RATE_MILLI.store((per_second * 1000.0).round() as u64, Ordering::Relaxed);
    Ok(())
}

/// Starts the swap driver for `cfg` (which has `bench.swaps_per_second`); it stops
/// when `stop` is set.
pub fn spawn(
    cfg: &Config,
    rate: f64,
    stop: Arc<AtomicBool>,
) -> std::io::Result<(std::thread::JoinHandle<()>, ControlHooks)> {
    let (updates_tx, updates_rx) = mpsc::channel();
    let (links_tx, links_rx) = mpsc::channel();
    let rules = Arc::new(cfg.rules.clone());
    let workers = cfg.workers.lcores.clone();
    RATE_MILLI.store((rate * 1000.0).round() as u64, Ordering::Relaxed);
    ACTIVE.store(true, Ordering::Relaxed);
    let t = std::thread::Builder::new()
        .name("bench-swaps".into())
        .spawn(move || {
            super::keeper_link::off_worker_cores(&workers);
            let (mut done, mut refused) = (0u64, 0u64);
            let mut current = 0;
            let mut period = Duration::ZERO;
            let mut next = Instant::now();
            let mut generation = 1;
            while !stop.load(Ordering::Relaxed) {
                while links_rx.try_recv().is_ok() {}
                let milli = RATE_MILLI.load(Ordering::Relaxed);
                if milli == 0 {
                    current = 0;
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                let now = Instant::now();
                if milli != current {
                    // A new rate starts a period from now.
                    current = milli;
                    period = Duration::from_secs_f64(1000.0 / milli as f64);
                    next = now + period;
                }
                if now < next {
                    std::thread::sleep((next - now).min(Duration::from_millis(5)));
                    continue;
                }
                // A build slower than the period delays the next swap, never queues them.
                next = (next + period).max(now);
                let (tx, rx) = tokio::sync::oneshot::channel();
                let update = TableUpdate {
                    generation,
                    rules: rules.clone(),
                    done: tx,
                    received: now,
                };
                if updates_tx.send(update).is_err() {
                    break;
                }
                match rx.blocking_recv() {
                    Ok(Ok(_)) => done += 1,
                    Ok(Err(e)) => {
                        refused += 1;
                        tracing::warn!(error = %e, "bench swap refused");
                    }
                    Err(_) => break,
                }
                generation += 1;
            }
            tracing::info!(swaps = done, refused, "bench swaps stopped");
        })?;
    Ok((
        t,
        ControlHooks {
            updates: updates_rx,
            links: links_tx,
        },
    ))
}
