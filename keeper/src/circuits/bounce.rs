//! Lines that go down bounce their circuits, which are replaced from the same region;
//! lines that come back are offered again.

use super::{ActivateRequest, Bounce, CircuitError, CircuitId, CircuitState, Circuits, LineId};
use crate::inventory::Inventory;

impl Circuits {
    /// A line went down: its active circuits bounce, and each gets a replacement from
    /// the available capture addresses of its region (now `Activating`) if there is one.
    pub fn line_down(&mut self, inv: &Inventory, line: &LineId, reason: &str) -> Vec<Bounce> {
        self.mark_down(line, reason);
        let bounced: Vec<CircuitId> = self
            .circuits
            .values()
            .filter(|c| {
                c.state == CircuitState::Active && c.aggregator == line.node && c.line == line.line
            })
            .map(|c| c.id)
            .collect();
        for &id in &bounced {
            self.update(id, |c| {
                c.state = CircuitState::Bounced;
                c.reason = Some(reason.to_string());
            });
        }
        // Freed before any replacement is placed, so none lands on them.
        for &id in &bounced {
            if let Some(c) = self.circuits.get(&id).cloned() {
                self.free(&c);
            }
        }
        // Every bounced circuit first, so that replacements see their ports free.
        bounced
            .into_iter()
            .map(|old| Bounce {
                old,
                replacement: self.replace(inv, old),
            })
            .collect()
    }

    fn replace(&mut self, inv: &Inventory, old: CircuitId) -> Result<CircuitId, CircuitError> {
        let c = self.circuits.get(&old).ok_or(CircuitError::NotFound(old))?;
        let req = ActivateRequest {
            region: Some(c.region.clone()),
            pop: Some(c.pop.clone()),
            protocol: c.protocol,
            ports: c.ports,
            mode: c.mode,
            app_host: c.app_host,
            idempotency_key: c.idempotency_key.clone(),
            capture: None,
            return_path: c.return_path,
            lease_ms: c.lease_ms,
            owner: c.owner.clone(),
        };
        let new = self.start(inv, &req, Some(old))?;
        self.update(old, |o| {
            o.replaced_by = Some(new);
            // The key follows the circuit the application now holds.
            o.idempotency_key = None;
        });
        Ok(new)
    }

    /// Marks a line down without bouncing anything yet: when several lines go down at
    /// once, mark them all first so that no replacement lands on one of them.
    pub fn mark_down(&mut self, line: &LineId, reason: &str) {
        if !self.down.contains_key(line) {
            self.down.insert(line.clone(), reason.to_string());
            self.dirty_lines.insert(line.clone());
        }
    }

    /// A line came back: its capture addresses return to the pool. Returns false if it
    /// was not down.
    pub fn line_up(&mut self, line: &LineId) -> bool {
        let was_down = self.down.remove(line).is_some();
        if was_down {
            self.dirty_lines.insert(line.clone());
        }
        was_down
    }
}
