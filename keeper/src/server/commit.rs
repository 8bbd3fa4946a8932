//! The commit path: recompile what the step's changed circuits contribute, give the
//! nodes whose tables changed the next generation, stage the changed records for the
//! committer (which writes them, then wakes those nodes' streams); then wait for the
//! forwarders' acknowledgements and tell applications.

use std::collections::BTreeSet;

use tracing::debug;

use super::{Core, Keeper, KeeperError};
use crate::circuits::{Circuit, CircuitEvent, CircuitId, EventKind};
use crate::inventory::NodeId;
use crate::store::NodeRecord;

impl Keeper {
    /// Applies the step's circuit changes to the tables, stamps changed table sets
    /// with the next generation, and stages everything the step changed for the
    /// committer, which writes it and then publishes it (see `durable.rs`). Returns the
    /// step's ticket, for [`Keeper::durable`]. `confirmed` circuits get the generation
    /// that carries them to every node of their path.
    pub(super) fn commit(
        &self,
        core: &mut Core,
        confirmed: &[CircuitId],
    ) -> Result<u64, KeeperError> {
        let (changes, mut dirty_lines) = core.circuits.take_dirty();
        let now = std::time::Instant::now();
        for (id, before) in &changes {
            if let Some(b) = before {
                core.tables.remove(&self.inv, b);
            }
            if let Some(c) = core.circuits.get(*id) {
                core.tables.add(&self.inv, c);
                if c.has_ended() {
                    core.ended.entry(*id).or_insert(now);
                }
            }
        }
        let generation = &mut core.generation;
        let changed: Vec<NodeId> = core.tables.finish_step(|| {
            *generation += 1;
            *generation
        });
        for &id in confirmed {
            let generation = core.circuits.get(id).map_or(0, |c| {
                c.path()
                    .iter()
                    .map(|n| core.tables.generation(n))
                    .max()
                    .unwrap_or(0)
            });
            core.circuits.set_generation(id, generation);
        }
        // Setting generations changed records but no contribution.
        let (stamped, more_lines) = core.circuits.take_dirty();
        dirty_lines.extend(more_lines);
        let dirty_circuits: BTreeSet<CircuitId> =
            changes.iter().chain(&stamped).map(|(id, _)| *id).collect();
        for id in &dirty_circuits {
            let c = core.circuits.get(*id).cloned();
            core.staged.circuit(*id, c);
        }
        for line in dirty_lines {
            let down = core.circuits.down_lines().get(&line).cloned();
            core.staged.line(line, down);
        }
        for node in changed {
            let record = NodeRecord {
                generation: core.tables.generation(&node),
                digest: core.tables.digest(&node),
            };
            debug!(node, generation = record.generation, "table set staged");
            core.staged.node(node, record);
        }
        core.ticket += 1;
        let (next, generation, ticket) = (core.circuits.next_id(), core.generation, core.ticket);
        core.staged.close(next, generation, ticket);
        Self::hold_freed(core);
        self.wake.notify_one();
        Ok(ticket)
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
            let generation = core.tables.generation(&node);
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
        let started = std::time::Instant::now();
        loop {
            {
                let state = rx.borrow_and_update();
                if state.acked >= generation {
                    self.metrics
                        .ack_wait_seconds
                        .observe(started.elapsed().as_secs_f64());
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
        match kind {
            EventKind::Activated => {}
            EventKind::Bounced => {
                let replaced = if replacement.is_some() { "yes" } else { "no" };
                self.metrics.bounces.with_label_values(&[replaced]).inc();
            }
            EventKind::Released => {
                let by = match reason.as_deref() {
                    None => "app",
                    Some(super::leases::LEASE_EXPIRED) => "lease_expired",
                    Some(_) => "keeper",
                };
                self.metrics.releases.with_label_values(&[by]).inc();
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(CircuitEvent {
            kind,
            circuit,
            replacement,
            reason,
        });
    }
}
