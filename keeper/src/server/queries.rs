//! Read-only views: circuits, a node's tables, a node's acknowledgements.

use super::Table;
use super::{AckState, Keeper, KeeperError, ListFilter, Sent};
use crate::circuits::{Circuit, CircuitError, CircuitId, CircuitState};
use crate::tables::Plan;

/// The most circuits one `List` answer carries (about 1 MB on the wire, far below
/// gRPC's 4 MiB default limit).
pub const LIST_PAGE: usize = 4096;
/// The most circuits one `List` call looks at under the core lock.
pub const LIST_SCAN: usize = 65_536;

impl Keeper {
    /// One circuit.
    pub fn get(&self, id: CircuitId) -> Result<Circuit, KeeperError> {
        let core = self.lock()?;
        core.circuits
            .get(id)
            .cloned()
            .ok_or_else(|| CircuitError::NotFound(id).into())
    }

    /// Circuits matching a filter, by id.
    pub fn list(&self, f: &ListFilter) -> Result<Vec<Circuit>, KeeperError> {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let (page, next) = self.list_page(f, after, LIST_PAGE)?;
            all.extend(page);
            match next {
                Some(n) => after = n,
                None => return Ok(all),
            }
        }
    }

    /// One page of [`Keeper::list`]: circuits with ids above `after`, at most `limit`
    /// (capped at [`LIST_PAGE`]) of them, looking at no more than [`LIST_SCAN`]
    /// circuits, so that the core lock is held briefly however many there are. The
    /// second value is where the next page starts, if there may be one.
    pub fn list_page(
        &self,
        f: &ListFilter,
        after: CircuitId,
        limit: usize,
    ) -> Result<(Vec<Circuit>, Option<CircuitId>), KeeperError> {
        let limit = if limit == 0 {
            LIST_PAGE
        } else {
            limit.min(LIST_PAGE)
        };
        let core = self.lock()?;
        let matches = |c: &Circuit| {
            f.region.as_ref().is_none_or(|r| *r == c.region)
                && f.pop.as_ref().is_none_or(|p| *p == c.pop)
                && f.app_host.is_none_or(|a| a == c.app_host)
                && f.owner.as_ref().is_none_or(|o| *o == c.owner)
                && match f.state {
                    Some(s) => c.state == s,
                    None => f.include_released || c.state != CircuitState::Released,
                }
        };
        let mut page = Vec::new();
        let mut last = after;
        for (looked, c) in core.circuits.after(after).enumerate() {
            if looked == LIST_SCAN || page.len() == limit {
                return Ok((page, Some(last)));
            }
            last = c.id;
            if matches(c) {
                page.push(c.clone());
            }
        }
        Ok((page, None))
    }

    /// The table set last published to a node.
    pub fn table(&self, node: &str) -> Option<Table> {
        let core = self.core.lock().ok()?;
        Some(Table {
            generation: core.tables.generation(node),
            rules: core.tables.rules(node)?,
        })
    }

    /// What a node's stream must send to a forwarder that has generation `sent`, and
    /// the step that must be durable before it is sent.
    pub fn plan(&self, node: &str, sent: u64) -> Result<(Plan, u64), KeeperError> {
        let core = self.lock()?;
        Ok((core.tables.plan(node, sent), core.ticket))
    }

    /// What the node's streams have sent it.
    pub fn sent(&self, node: &str) -> Option<Sent> {
        self.nodes.get(node)?.sent.lock().ok().map(|s| *s)
    }

    /// Counts what a node's stream sent.
    pub(super) fn count_sent(&self, node: &str, full: bool, deltas: u64, sizes: &[usize]) {
        let Some(mut s) = self.nodes.get(node).and_then(|h| h.sent.lock().ok()) else {
            return;
        };
        if full {
            s.full_sets += 1;
        } else {
            s.deltas += deltas;
        }
        s.messages += sizes.len() as u64;
        for &n in sizes {
            s.bytes += n as u64;
            s.largest = s.largest.max(n as u64);
        }
    }

    /// What is wrong with the circuits' invariants ([`crate::circuits::Circuits::audit`]):
    /// nothing, normally.
    pub fn audit(&self) -> Result<Vec<String>, KeeperError> {
        Ok(self.lock()?.circuits.audit(&self.inv))
    }

    /// True while a line is held down by flap damping.
    pub fn is_damped(&self, line: &crate::circuits::LineId) -> bool {
        self.lock()
            .map(|c| c.circuits.is_suppressed(line))
            .unwrap_or(false)
    }

    /// What a node last acknowledged or rejected.
    pub fn ack_state(&self, node: &str) -> Option<AckState> {
        self.nodes.get(node).map(|h| h.acks.borrow().clone())
    }
}
