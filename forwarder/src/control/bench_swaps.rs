//! `[bench] swaps_per_second`: a table source for perf runs. It hands the static rules
//! to the control thread as new table sets at a steady rate, through the same hooks as
//! the keeper link, so that each one is built, swapped in with one pointer swap and
//! released on the control thread exactly as a keeper's would be: what a perf run
//! measures (throughput and loss during swaps) is what a keeper's pushes cost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::{ControlHooks, TableUpdate};
use crate::config::Config;

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
    let period = Duration::from_secs_f64(1.0 / rate);
    let t = std::thread::Builder::new()
        .name("bench-swaps".into())
        .spawn(move || {
            super::keeper_link::off_worker_cores(&workers);
            let (mut done, mut refused) = (0u64, 0u64);
            let mut next = Instant::now() + period;
            let mut generation = 1;
            while !stop.load(Ordering::Relaxed) {
                while links_rx.try_recv().is_ok() {}
                let now = Instant::now();
                if now < next {
                    std::thread::sleep((next - now).min(Duration::from_millis(50)));
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
