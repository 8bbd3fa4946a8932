//! Snapshot publication: each table set from the keeper link is validated and built
//! here, swapped in with one pointer swap, and acknowledged (or refused with the reason,
//! the old snapshot still forwarding).
//!
//! The snapshot swapped out is kept in a retired list until nobody else holds it, and
//! only then dropped, here: a worker that loaded it for its last burst never holds the
//! last reference, so a large table is never freed on a packet core.

use std::sync::Arc;

use super::{Control, State};
use crate::tables::Snapshot;

impl Control<'_> {
    /// Applies every pending table update; true if there was one.
    pub(super) fn apply_updates(&mut self, st: &mut State) -> bool {
        let Some(hooks) = &self.hooks else {
            return false;
        };
        let mut any = false;
        while let Ok(u) = hooks.updates.try_recv() {
            any = true;
            let built = Snapshot::build(&u.rules, self.infos, u.generation, &self.neighbours);
            // Let go of the rules before saying so: the session then applies the next
            // delta in place instead of copying the whole set.
            drop(u.rules);
            match built {
                Ok(s) => {
                    let entries = s.entries();
                    st.retired.push(self.snapshots.publish(s));
                    tracing::info!(generation = u.generation, entries, "tables swapped");
                    let _ = u.done.send(Ok(u.generation));
                }
                Err(e) => {
                    tracing::warn!(generation = u.generation, error = %e, "tables refused");
                    let _ = u.done.send(Err(e.to_string()));
                }
            }
        }
        any
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
