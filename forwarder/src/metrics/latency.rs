//! Latency histograms: recorded with `hdrhistogram`, exported as Prometheus histograms.
//!
//! A worker records into a histogram it owns ([`Recorder`]): one array increment per
//! burst, no lock, no allocation. Every [`Recorder::hand_over`] (the worker's timer
//! tick) it swaps that histogram for an empty one over two bounded channels, and the
//! [`Merger`] adds what it got into the running total off the packet path (at a scrape
//! or the control thread's tick), resets it and sends it back. Two histograms circulate
//! per worker; if the merger is late the worker keeps recording into the one it has, so
//! nothing is lost and nothing waits.
//!
//! Control-thread timings (snapshot build, swap, keeper push to forwarding) go straight
//! into a [`Timing`], a histogram behind a mutex that only the control thread and a
//! scrape take.

use std::sync::Mutex;

use crossbeam_channel::{bounded, Receiver, Sender};
use hdrhistogram::Histogram;

/// The largest value recorded, in nanoseconds (larger ones are clamped to it): 60 s.
pub const MAX_NS: u64 = 60_000_000_000;

/// An empty histogram of nanoseconds, 1 ns to [`MAX_NS`], 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    // The bounds are constants within hdrhistogram's limits: this cannot fail.
    Histogram::new_with_bounds(1, MAX_NS, 3).expect("constant histogram bounds are valid")
}

/// A worker's end: records into its own histogram.
pub struct Recorder {
    current: Histogram<u64>,
    full: Sender<Histogram<u64>>,
    empty: Receiver<Histogram<u64>>,
}

/// The scrape's end: merges what the worker handed over into a running total.
pub struct Merger {
    total: Mutex<Histogram<u64>>,
    /// What was recorded since the last [`Merger::restart_window`] (perf runs read
    /// quantiles over their measuring window from it: `/latency`).
    window: Mutex<Histogram<u64>>,
    full: Receiver<Histogram<u64>>,
    empty: Sender<Histogram<u64>>,
}

/// A recorder and the merger of what it records.
pub fn pair() -> (Recorder, Merger) {
    let (full_tx, full_rx) = bounded(2);
    let (empty_tx, empty_rx) = bounded(2);
    // The spare the worker swaps in at its first hand-over.
    let _ = empty_tx.send(histogram());
    (
        Recorder {
            current: histogram(),
            full: full_tx,
            empty: empty_rx,
        },
        Merger {
            total: Mutex::new(histogram()),
            window: Mutex::new(histogram()),
            full: full_rx,
            empty: empty_tx,
        },
    )
}

impl Recorder {
    /// Records one value in nanoseconds (clamped to 1..=[`MAX_NS`]).
    #[inline]
    pub fn record(&mut self, ns: u64) {
        self.current.saturating_record(ns.clamp(1, MAX_NS));
    }

    /// Hands what was recorded to the merger if it has an empty histogram to give back;
    /// else keeps recording into this one. Never blocks, never allocates.
    pub fn hand_over(&mut self) {
        if self.current.is_empty() {
            return;
        }
        if let Ok(empty) = self.empty.try_recv() {
            let full = std::mem::replace(&mut self.current, empty);
            // Two histograms circulate and the worker holds one: the channel has room.
            let _ = self.full.try_send(full);
        }
    }
}

impl Merger {
    /// Adds what the worker handed over to the total and gives the histograms back.
    pub fn merge(&self) {
        let Ok(mut total) = self.total.lock() else {
            return;
        };
        let mut window = self.window.lock().ok();
        while let Ok(mut h) = self.full.try_recv() {
            // Same bounds on both sides: adding cannot fail.
            let _ = total.add(&h);
            if let Some(w) = window.as_mut() {
                let _ = w.add(&h);
            }
            h.reset();
            let _ = self.empty.try_send(h);
        }
    }

    /// The total so far, merged first.
    pub fn total(&self) -> Histogram<u64> {
        self.merge();
        self.total
            .lock()
            .map(|t| t.clone())
            .unwrap_or_else(|_| histogram())
    }
}

impl Merger {
    /// What was recorded since the window last restarted, merged first.
    pub fn window(&self) -> Histogram<u64> {
        self.merge();
        self.window
            .lock()
            .map(|t| t.clone())
            .unwrap_or_else(|_| histogram())
    }

    /// Starts a new window: what was handed over so far no longer counts in it.
    pub fn restart_window(&self) {
        self.merge();
        if let Ok(mut w) = self.window.lock() {
            w.reset();
        }
    }
}

/// A histogram's summary for `/latency`: count, mean and quantiles in nanoseconds.
#[cfg(feature = "dpdk")]
pub fn summary_json(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "{\"count\":0}".to_string();
    }
    format!(
        "{{\"count\":{},\"mean_ns\":{:.1},\"p50_ns\":{},\"p90_ns\":{},\"p99_ns\":{},\"p999_ns\":{},\"max_ns\":{}}}",
        h.len(),
        h.mean(),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.9),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max()
    )
}

/// A control-thread timing.
pub struct Timing(Mutex<Histogram<u64>>);

impl Default for Timing {
    fn default() -> Timing {
        Timing(Mutex::new(histogram()))
    }
}

impl Timing {
    /// Records one duration.
    pub fn record(&self, d: std::time::Duration) {
        if let Ok(mut h) = self.0.lock() {
            h.saturating_record((d.as_nanos() as u64).clamp(1, MAX_NS));
        }
    }

    /// What was recorded so far.
    pub fn total(&self) -> Histogram<u64> {
        self.0
            .lock()
            .map(|t| t.clone())
            .unwrap_or_else(|_| histogram())
    }
}

/// A histogram of nanoseconds as Prometheus buckets in seconds: for each upper bound
/// (seconds, ascending) the count of values at or below it, then the count and the sum
/// of all values in seconds.
pub fn buckets(h: &Histogram<u64>, bounds_s: &[f64]) -> (Vec<(f64, u64)>, u64, f64) {
    let mut out = Vec::with_capacity(bounds_s.len());
    for &b in bounds_s {
        let ns = (b * 1e9) as u64;
        // Values hdrhistogram keeps as equivalent to `ns` count as at most `ns`.
        let c = if ns >= h.max() {
            h.len()
        } else {
            h.count_between(0, ns)
        };
        out.push((b, c));
    }
    let sum = h.mean() * h.len() as f64 / 1e9;
    (out, h.len(), sum)
}

/// Buckets for a worker's per-burst time: 1 µs to 10 ms.
pub const BURST_BUCKETS: &[f64] = &[
    1e-6, 2e-6, 5e-6, 10e-6, 20e-6, 50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3,
];

/// Buckets for control-plane timings (a snapshot's build and swap, a push to
/// forwarding, an activation, a store commit): 100 µs to 30 s.
pub const CONTROL_BUCKETS: &[f64] = &[
    100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0,
    2.5, 5.0, 10.0, 30.0,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_over_and_merge_lose_nothing() {
        let (mut r, m) = pair();
        for v in [500, 1_500, 3_000] {
            r.record(v);
        }
        // Nothing handed over yet: the total is empty.
        assert_eq!(m.total().len(), 0);
        r.hand_over();
        r.record(40_000);
        // The merger has not given the spare back: the worker keeps recording.
        r.hand_over();
        r.record(7);
        assert_eq!(m.total().len(), 3);
        r.hand_over();
        let t = m.total();
        assert_eq!(t.len(), 5);
        let (b, count, sum) = buckets(&t, &[1e-6, 2e-6, 10e-6, 1e-3]);
        assert_eq!(count, 5);
        assert_eq!(b, vec![(1e-6, 2), (2e-6, 3), (10e-6, 4), (1e-3, 5)]);
        assert!((sum - 45_007e-9).abs() < 45_007e-9 * 0.01, "{sum}");
    }

    #[test]
    fn values_are_clamped() {
        let (mut r, m) = pair();
        r.record(0);
        r.record(u64::MAX);
        r.hand_over();
        let t = m.total();
        assert_eq!(t.len(), 2);
        assert_eq!(t.min(), 1);
        assert!(t.max() >= MAX_NS);
    }
}
