//! Snapshot publication: each table set from the keeper link is validated and built
//! here, swapped in with one pointer swap, and acknowledged (or refused with the reason,
//! the old snapshot still forwarding).
//!
//! The snapshot swapped out is kept in a retired list until nobody else holds it, and
//! only then dropped, here: a worker that loaded it for its last burst never holds the
//! last reference, so a large table is never freed on a packet core.

use std::sync::Arc;
use std::time::Instant;

use super::{Control, State};
use crate::tables::Snapshot;

/// A swap not yet seen by every worker.
pub(super) struct PendingSwap {
    /// When the pointer was swapped.
    at: Instant,
    /// When its table set reached the keeper link.
    received: Instant,
    /// The workers' poll counts at the swap: a worker whose count has moved past it has
    /// finished the burst it was in, and every burst after loads the new snapshot.
    polls: Vec<u64>,
}

impl Control<'_> {
    /// Applies every pending table update; true if there was one.
    pub(super) fn apply_updates(&mut self, st: &mut State) -> bool {
        let Some(hooks) = &self.hooks else {
            return false;
        };
        let mut any = false;
        while let Ok(u) = hooks.updates.try_recv() {
            any = true;
            let started = Instant::now();
            let built = Snapshot::build(&u.rules, self.infos, u.generation, &self.neighbours);
            self.metrics.tables.build.record(started.elapsed());
            // Let go of the rules before saying so: the session then applies the next
            // delta in place instead of copying the whole set.
            drop(u.rules);
            match built {
                Ok(mut s) => {
                    self.metrics.assign_circuits(&mut s);
                    let entries = s.entries();
                    let polls = self.metrics.poll_counts();
                    let at = Instant::now();
                    st.retired.push(self.snapshots.publish(s));
                    self.metrics.swapped(at);
                    st.swaps.push(PendingSwap {
                        at,
                        received: u.received,
                        polls,
                    });
                    tracing::info!(generation = u.generation, entries, "tables swapped");
                    let _ = u.done.send(Ok(u.generation));
                }
                Err(e) => {
                    self.metrics
                        .tables
                        .refused
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(generation = u.generation, error = %e, "tables refused");
                    let _ = u.done.send(Err(e.to_string()));
                }
            }
        }
        any
    }
}

impl Control<'_> {
    /// Records the swaps every worker has moved past: swap time, and keeper push to
    /// forwarding.
    pub(super) fn finish_swaps(&self, st: &mut State) {
        if st.swaps.is_empty() {
            return;
        }
        let now = Instant::now();
        let polls = self.metrics.poll_counts();
        let t = &self.metrics.tables;
        st.swaps.retain(|p| {
            let done = polls.iter().zip(&p.polls).all(|(now, then)| now > then);
            if done {
                t.swap.record(now - p.at);
                t.push_to_forwarding.record(now - p.received);
            }
            !done
        });
    }
}

/// Drops the retired snapshots that only the control thread still holds.
///
/// `ArcSwap::swap` has converted every reader's borrowed load into a counted reference
/// by the time it returns, so a count of one means no worker or scrape reads it any
/// more, and none can start to: it is no longer published.
pub(super) fn release_retired(retired: &mut Vec<Arc<Snapshot>>) {
    retired.retain(|s| Arc::strong_count(s) > 1);
}
