//! Read-only views: circuits, a node's tables, a node's acknowledgements.

use super::{AckState, Keeper, KeeperError, ListFilter};
use crate::circuits::{Circuit, CircuitError, CircuitId, CircuitState};
use crate::store::Table;

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
        self.core.lock().ok()?.tables.get(node).cloned()
    }

    /// What a node last acknowledged or rejected.
    pub fn ack_state(&self, node: &str) -> Option<AckState> {
        self.nodes.get(node).map(|h| h.acks.borrow().clone())
    }
}
