//! The commit path: compile every node's tables from the circuits, give the nodes whose
//! tables changed the next generation, write it all to the store, publish it to the
//! forwarder streams; then wait for their acknowledgements and tell applications.

use std::sync::Arc;

use tracing::{debug, error};

use super::{Core, Keeper, KeeperError, Published};
use crate::circuits::{Circuit, CircuitEvent, CircuitId, EventKind};
use crate::compiler::compile;
use crate::inventory::NodeId;
use crate::store::{Batch, Table};

impl Keeper {
    /// Compiles, stamps changed table sets with the next generation, commits everything
    /// the step changed, then publishes. `confirmed` circuits get the generation that
    /// carries them to every node of their path.
    pub(super) fn commit(
        &self,
        core: &mut Core,
        confirmed: &[CircuitId],
    ) -> Result<(), KeeperError> {
        let compiled = compile(&self.inv, core.circuits.iter());
        let changed: Vec<NodeId> = compiled
            .iter()
            .filter(|(node, rules)| core.tables.get(*node).map(|t| &t.rules) != Some(*rules))
            .map(|(node, _)| node.clone())
            .collect();
        let mut compiled = compiled;
        if !changed.is_empty() {
            core.generation += 1;
            for node in &changed {
                let rules = compiled.remove(node).unwrap_or_default();
                core.tables.insert(
                    node.clone(),
                    Table {
                        generation: core.generation,
                        rules,
                    },
                );
            }
        }
        for &id in confirmed {
            let generation = core.circuits.get(id).map_or(0, |c| {
                c.path()
                    .iter()
                    .filter_map(|n| core.tables.get(n))
                    .map(|t| t.generation)
                    .max()
                    .unwrap_or(0)
            });
            core.circuits.set_generation(id, generation);
        }
        let (dirty_circuits, dirty_lines) = core.circuits.take_dirty();
        let mut batch = Batch {
            next_circuit: core.circuits.next_id(),
            generation: core.generation,
            ..Default::default()
        };
        for id in &dirty_circuits {
            match core.circuits.get(*id) {
                Some(c) => batch.put_circuits.push(c),
                None => batch.delete_circuits.push(*id),
            }
        }
        let down = core.circuits.down_lines();
        for line in &dirty_lines {
            match down.get_key_value(line) {
                Some((l, why)) => batch.put_down_lines.push((l, why.as_str())),
                None => batch.delete_down_lines.push(line),
            }
        }
        for node in &changed {
            if let Some(t) = core.tables.get_key_value(node) {
                batch.put_tables.push(t);
            }
        }
        let store = core
            .store
            .as_ref()
            .ok_or_else(|| KeeperError::Unavailable("keeper is shut down".into()))?;
        if let Err(e) = store.commit(&batch) {
            // Memory is now ahead of the database: refuse everything until a restart
            // reloads the last committed state.
            error!("{e}; refusing further changes until restarted");
            core.failed = Some(format!("{e}; restart the keeper"));
            return Err(e.into());
        }
        for node in &changed {
            if let (Some(handle), Some(t)) = (self.nodes.get(node), core.tables.get(node)) {
                debug!(node, generation = t.generation, "publishing table set");
                handle.published.send_replace(Published {
                    generation: t.generation,
                    rules: Arc::new(t.rules.clone()),
                });
            }
        }
        Ok(())
    }

    /// (node, generation) pairs to wait for: the current table generation of each node.
    pub(super) fn targets(
        core: &Core,
        nodes: impl IntoIterator<Item = NodeId>,
    ) -> Vec<(NodeId, u64)> {
        let mut out: Vec<(NodeId, u64)> = Vec::new();
        for node in nodes {
            if out.iter().any(|(n, _)| *n == node) {
                continue;
            }
            let generation = core.tables.get(&node).map_or(0, |t| t.generation);
            out.push((node, generation));
        }
        out
    }

    /// Waits until every node runs at least its target generation. A NACK of a
    /// generation at or past the target fails at once; so does the ack timeout.
    pub(super) async fn wait_acks(&self, targets: &[(NodeId, u64)]) -> Result<(), KeeperError> {
        let waits = targets
            .iter()
            .map(|(node, generation)| self.wait_ack(node, *generation));
        let all = futures_util::future::try_join_all(waits);
        match tokio::time::timeout(self.settings.ack_timeout(), all).await {
            Ok(result) => result.map(|_| ()),
            Err(_) => {
                let (node, generation) = targets
                    .iter()
                    .find(|(n, g)| {
                        self.nodes
                            .get(n)
                            .is_some_and(|h| h.acks.borrow().acked < *g)
                    })
                    .cloned()
                    .unwrap_or_else(|| targets[0].clone());
                let connected = self
                    .nodes
                    .get(&node)
                    .is_some_and(|h| h.acks.borrow().connected);
                Err(KeeperError::AckTimeout {
                    node,
                    generation,
                    waited_ms: self.settings.ack_timeout_ms,
                    connected,
                })
            }
        }
    }

    pub(super) async fn wait_ack(&self, node: &str, generation: u64) -> Result<(), KeeperError> {
        let Some(handle) = self.nodes.get(node) else {
            return Err(KeeperError::UnknownNode(node.to_string()));
        };
        let mut rx = handle.acks.subscribe();
        loop {
            {
                let state = rx.borrow_and_update();
                if state.acked >= generation {
                    return Ok(());
                }
                if let Some((rejected, detail)) = &state.nack {
                    if *rejected >= generation {
                        return Err(KeeperError::Nack {
                            node: node.to_string(),
                            generation: *rejected,
                            detail: detail.clone(),
                        });
                    }
                }
            }
            if rx.changed().await.is_err() {
                return Err(KeeperError::Unavailable("keeper is shut down".into()));
            }
        }
    }

    pub(super) fn emit(
        &self,
        kind: EventKind,
        circuit: Circuit,
        replacement: Option<Circuit>,
        reason: Option<String>,
    ) {
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(CircuitEvent {
            kind,
            circuit,
            replacement,
            reason,
        });
    }
}
