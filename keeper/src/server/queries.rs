//! Read-only views: circuits, a node's tables, a node's acknowledgements.

use super::Table;
use super::{AckState, Keeper, KeeperError, ListFilter, Sent};
use crate::circuits::{Circuit, CircuitError, CircuitId, CircuitState};
use crate::tables::Plan;

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
        let core = self.lock()?;
        Ok(core
            .circuits
            .iter()
            .filter(|c| f.region.as_ref().is_none_or(|r| *r == c.region))
            .filter(|c| f.pop.as_ref().is_none_or(|p| *p == c.pop))
            .filter(|c| f.app_host.is_none_or(|a| a == c.app_host))
            .filter(|c| match f.state {
                Some(s) => c.state == s,
                None => f.include_released || c.state != CircuitState::Released,
            })
            .cloned()
            .collect())
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
