//! Handing out again safely: freed capture addresses and aliases wait until every
//! forwarder that held them acknowledged their removal (or, for one that does not, a
//! hold-down passed), and lines that keep bouncing are held down (flap damping, as BGP
//! damps flapping routes: a penalty per bounce that decays exponentially).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::{Core, Keeper};
use crate::circuits::{Freed, LineId};
use crate::inventory::NodeId;

/// A penalty point per bounce.
const PENALTY_PER_BOUNCE: f64 = 1000.0;

/// A freed capture address and alias, and what they wait for.
#[derive(Debug)]
pub(super) struct Hold {
    freed: Freed,
    /// Each node and the generation it must acknowledge.
    waits: Vec<(NodeId, u64)>,
    since: Instant,
}

/// A line's flap penalty as of `at`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Penalty {
    value: f64,
    at: Instant,
}

impl Penalty {
    fn now(&self, half_life: Duration, now: Instant) -> f64 {
        let halves = now.duration_since(self.at).as_secs_f64() / half_life.as_secs_f64();
        self.value * 0.5f64.powf(halves)
    }
}

/// The keeper's reuse state (inside the core lock).
#[derive(Debug, Default)]
pub(super) struct Reuse {
    holds: Vec<Hold>,
    penalties: BTreeMap<LineId, Penalty>,
}

impl Keeper {
    /// After a commit: holds for what the step freed, waiting for the generations it
    /// just published.
    pub(super) fn hold_freed(core: &mut Core) {
        let now = Instant::now();
        for freed in core.circuits.take_freed() {
            let waits = freed
                .nodes
                .iter()
                .map(|n| (n.clone(), core.tables.generation(n)))
                .collect();
            core.reuse.holds.push(Hold {
                freed,
                waits,
                since: now,
            });
        }
    }

    /// A line went down: its penalty grows, and past the threshold it is held down.
    pub(super) fn line_bounced(&self, core: &mut Core, line: &LineId) {
        let now = Instant::now();
        let half_life = Duration::from_millis(self.settings.flap_half_life_ms);
        let p = core.reuse.penalties.entry(line.clone()).or_insert(Penalty {
            value: 0.0,
            at: now,
        });
        *p = Penalty {
            value: p.now(half_life, now) + PENALTY_PER_BOUNCE,
            at: now,
        };
        let value = p.value;
        if value >= f64::from(self.settings.flap_suppress) && !core.circuits.is_suppressed(line) {
            warn!(%line, penalty = value as u64, "line flapping: held down for new circuits");
            core.circuits.suppress(line, true);
        }
    }

    /// Lifts holds whose forwarders all acknowledged (or whose hold-down passed), and
    /// offers damped lines again once their penalty decayed. Called periodically.
    pub fn check_reuse(self: &Arc<Self>) {
        let Ok(mut core) = self.lock() else { return };
        let now = Instant::now();
        let hold_down = self.settings.quarantine();
        let holds = std::mem::take(&mut core.reuse.holds);
        for h in holds {
            let acked = h.waits.iter().all(|(node, generation)| {
                self.nodes
                    .get(node)
                    .is_none_or(|n| n.acks.borrow().acked >= *generation)
            });
            let expired = now.duration_since(h.since) >= hold_down;
            if acked || expired {
                if expired && !acked {
                    warn!(capture = %h.freed.capture, alias = %h.freed.alias, "freed without every forwarder's acknowledgement: hold-down passed");
                }
                core.circuits.lift(&h.freed);
            } else {
                core.reuse.holds.push(h);
            }
        }
        let half_life = Duration::from_millis(self.settings.flap_half_life_ms);
        let reuse = f64::from(self.settings.flap_reuse);
        let mut calm = Vec::new();
        for (line, p) in &core.reuse.penalties {
            if p.now(half_life, now) < reuse {
                calm.push(line.clone());
            }
        }
        for line in calm {
            core.reuse.penalties.remove(&line);
            if core.circuits.is_suppressed(&line) {
                info!(%line, "line stable again: offered for new circuits");
                core.circuits.suppress(&line, false);
            }
        }
    }

    /// Capture addresses held back now, for tests and the inventory check.
    pub fn held_captures(&self) -> Vec<std::net::IpAddr> {
        self.lock()
            .map(|core| core.reuse.holds.iter().map(|h| h.freed.capture).collect())
            .unwrap_or_default()
    }
}

impl Keeper {
    /// Prunes circuits that ended longer than the retention ago. Called periodically.
    pub fn check_retention(self: &Arc<Self>) {
        let Ok(mut core) = self.lock() else { return };
        let now = Instant::now();
        let retention = self.settings.retention();
        let due: Vec<_> = core
            .ended
            .iter()
            .filter(|(_, &at)| now.duration_since(at) >= retention)
            .map(|(&id, _)| id)
            .collect();
        if due.is_empty() {
            return;
        }
        for id in &due {
            core.ended.remove(id);
            core.circuits.prune(*id);
        }
        match self.commit(&mut core, &[]) {
            Ok(_) => info!(circuits = due.len(), "pruned circuits past their retention"),
            Err(e) => warn!("pruning: {e}"),
        }
    }
}
