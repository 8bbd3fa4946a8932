//! Group commit: steps are staged in memory under the core lock, and one committer
//! writes everything staged so far in one transaction (one fsync), then publishes the
//! new generations to the forwarder streams and tells the callers waiting for it.
//!
//! The order that matters is kept: nothing reaches a forwarder, and no application is
//! answered, before the step that made it is durable. What changes is that concurrent
//! steps share an fsync, and nobody holds the core lock while the disk writes.

use std::collections::BTreeMap;
use std::sync::Arc;

use tracing::{error, warn};

use super::{Keeper, KeeperError};
use crate::circuits::{Circuit, CircuitId, LineId};
use crate::inventory::NodeId;
use crate::store::{Batch, NodeRecord};

/// A commit that takes this long is logged: the steps waiting for it wait as long.
const SLOW_COMMIT: std::time::Duration = std::time::Duration::from_millis(40);

/// Records staged by steps not yet written, the last value of each winning.
#[derive(Debug, Default)]
pub(super) struct Staged {
    circuits: BTreeMap<CircuitId, Option<Circuit>>,
    lines: BTreeMap<LineId, Option<String>>,
    nodes: BTreeMap<NodeId, NodeRecord>,
    next_circuit: u64,
    generation: u64,
    /// The newest step staged.
    ticket: u64,
    /// Generations to publish once written.
    publish: BTreeMap<NodeId, u64>,
}

impl Staged {
    /// Nothing staged since the last write.
    pub(super) fn is_empty(&self) -> bool {
        self.ticket == 0
    }

    pub(super) fn circuit(&mut self, id: CircuitId, c: Option<Circuit>) {
        self.circuits.insert(id, c);
    }

    pub(super) fn line(&mut self, line: LineId, down: Option<String>) {
        self.lines.insert(line, down);
    }

    pub(super) fn node(&mut self, node: NodeId, record: NodeRecord) {
        self.publish.insert(node.clone(), record.generation);
        self.nodes.insert(node, record);
    }

    pub(super) fn close(&mut self, next_circuit: u64, generation: u64, ticket: u64) {
        self.next_circuit = next_circuit;
        self.generation = generation;
        self.ticket = ticket;
    }
}

/// How far the writes got.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Durable {
    /// Every step up to this ticket is written.
    pub upto: u64,
    /// The write that failed (the keeper then takes no more changes).
    pub failed: Option<String>,
}

impl Keeper {
    /// Writes everything staged (one transaction), then publishes its generations and
    /// marks its steps durable. False if nothing was staged. Blocking (fsync).
    pub(super) fn write_staged(&self) -> Result<bool, KeeperError> {
        let staged = {
            let mut core = self.lock()?;
            if core.staged.is_empty() {
                return Ok(false);
            }
            std::mem::take(&mut core.staged)
        };
        let mut batch = Batch {
            next_circuit: staged.next_circuit,
            generation: staged.generation,
            ..Default::default()
        };
        for (id, c) in &staged.circuits {
            match c {
                Some(c) => batch.put_circuits.push(c),
                None => batch.delete_circuits.push(*id),
            }
        }
        for (line, down) in &staged.lines {
            match down {
                Some(why) => batch.put_down_lines.push((line, why.as_str())),
                None => batch.delete_down_lines.push(line),
            }
        }
        for (node, record) in &staged.nodes {
            batch.put_nodes.push((node, *record));
        }
        let started = std::time::Instant::now();
        let written = {
            let store = self
                .store
                .lock()
                .map_err(|_| KeeperError::Unavailable("store lock poisoned".into()))?;
            match store.as_ref() {
                Some(s) => s.commit(&batch).map_err(KeeperError::from),
                None => Err(KeeperError::Unavailable("keeper is shut down".into())),
            }
        };
        let took = started.elapsed();
        self.metrics
            .store_commit_seconds
            .observe(took.as_secs_f64());
        tracing::debug!(
            us = took.as_micros() as u64,
            circuits = batch.put_circuits.len() + batch.delete_circuits.len(),
            "store commit"
        );
        if took >= SLOW_COMMIT {
            warn!(
                ms = took.as_millis() as u64,
                circuits = batch.put_circuits.len() + batch.delete_circuits.len(),
                "slow store commit"
            );
        }
        if let Err(e) = written {
            // Memory is now ahead of the database: refuse everything until a restart
            // reloads the last committed state.
            error!("{e}; refusing further changes until restarted");
            if let Ok(mut core) = self.core.lock() {
                core.failed = Some(format!("{e}; restart the keeper"));
            }
            self.durable.send_modify(|d| d.failed = Some(e.to_string()));
            return Err(e);
        }
        for (node, generation) in &staged.publish {
            if let Some(h) = self.nodes.get(node) {
                h.published.send_if_modified(|g| {
                    let newer = *generation > *g;
                    if newer {
                        *g = *generation;
                    }
                    newer
                });
            }
        }
        self.durable
            .send_modify(|d| d.upto = d.upto.max(staged.ticket));
        Ok(true)
    }

    /// Writes what steps stage, as they stage it, until the keeper closes.
    pub(super) async fn run_committer(self: Arc<Self>) {
        let closing = self.closing();
        tokio::pin!(closing);
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = &mut closing => return,
            }
            loop {
                let me = self.clone();
                match tokio::task::spawn_blocking(move || me.write_staged()).await {
                    Ok(Ok(true)) => continue,
                    Ok(Ok(false)) => break,
                    Ok(Err(_)) | Err(_) => return,
                }
            }
        }
    }

    /// Waits until the step with this ticket is written.
    pub(super) async fn durable(&self, ticket: u64) -> Result<(), KeeperError> {
        let mut rx = self.durable.subscribe();
        let d = rx
            .wait_for(|d| d.upto >= ticket || d.failed.is_some())
            .await
            .map_err(|_| KeeperError::Unavailable("keeper is shut down".into()))?;
        match &d.failed {
            Some(why) if d.upto < ticket => Err(KeeperError::Unavailable(format!(
                "{why}; restart the keeper"
            ))),
            _ => Ok(()),
        }
    }
}
