//! Durable state in an embedded redb database: circuits (one record each), down lines,
//! the generation and digest last published to each forwarder, and the counters.
//!
//! Each keeper step is one write transaction, committed (fsync'd) before anything is
//! pushed to a forwarder or answered to an application; it writes the records the step
//! changed and nothing else. The table sets themselves are not stored: they follow
//! from the circuits and the inventory, and a restarted keeper compiles them again (the
//! digest tells it whether a node's set is still what that generation carried). Records
//! are JSON, so a database can be read with any redb tool.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::circuits::{Circuit, CircuitId, LineId};
use crate::inventory::NodeId;

const CIRCUITS: TableDefinition<u64, &[u8]> = TableDefinition::new("circuits");
const DOWN_LINES: TableDefinition<&str, &str> = TableDefinition::new("down_lines");
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
/// Whole table sets per node, as the first keepers stored them: dropped on open.
const OLD_TABLES: TableDefinition<&str, &[u8]> = TableDefinition::new("tables");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const NEXT_CIRCUIT: &str = "next_circuit";
const GENERATION: &str = "generation";

/// The store could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("keeper database {path}: {problem}")]
pub struct StoreError {
    path: PathBuf,
    problem: String,
}

/// What was last published to a forwarder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The generation of its table set.
    pub generation: u64,
    /// The set's digest ([`crate::tables::Tables::digest`]).
    pub digest: u64,
}

/// Everything the keeper needs to start where it stopped.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// Every circuit.
    pub circuits: Vec<Circuit>,
    /// Down lines and why.
    pub down_lines: Vec<(LineId, String)>,
    /// What was last published to each forwarder.
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    /// The next circuit id.
    pub next_circuit: CircuitId,
    /// The last generation handed out.
    pub generation: u64,
}

/// One keeper step's changes, written in one transaction.
#[derive(Debug, Default)]
pub struct Batch<'a> {
    /// Circuits to write.
    pub put_circuits: Vec<&'a Circuit>,
    /// Circuits to delete (rolled-back activations).
    pub delete_circuits: Vec<CircuitId>,
    /// Lines now down, and why.
    pub put_down_lines: Vec<(&'a LineId, &'a str)>,
    /// Lines no longer down.
    pub delete_down_lines: Vec<&'a LineId>,
    /// Nodes published in this step.
    pub put_nodes: Vec<(&'a NodeId, NodeRecord)>,
    /// The next circuit id.
    pub next_circuit: CircuitId,
    /// The last generation handed out.
    pub generation: u64,
}

/// The keeper's database.
#[derive(Debug)]
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    /// Opens the database, creating it if needed.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let err = |e: &dyn std::fmt::Display| StoreError {
            path: path.to_path_buf(),
            problem: e.to_string(),
        };
        let db = Database::create(path).map_err(|e| err(&e))?;
        let store = Store {
            db,
            path: path.to_path_buf(),
        };
        // Create the tables so that a fresh database reads as empty.
        store.write(|txn| {
            txn.open_table(CIRCUITS)?;
            txn.open_table(DOWN_LINES)?;
            txn.open_table(NODES)?;
            txn.delete_table(OLD_TABLES)?;
            txn.open_table(META)?;
            Ok(())
        })?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, problem: impl std::fmt::Display) -> StoreError {
        StoreError {
            path: self.path.clone(),
            problem: problem.to_string(),
        }
    }

    fn write(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.error(e))?;
        f(&txn).map_err(|e| self.error(e))?;
        txn.commit().map_err(|e| self.error(e))
    }

    /// Reads everything.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let read = || -> Result<Loaded, Box<dyn std::error::Error>> {
            let txn = self.db.begin_read()?;
            let mut loaded = Loaded::default();
            for row in txn.open_table(CIRCUITS)?.iter()? {
                let (id, bytes) = row?;
                let c: Circuit = serde_json::from_slice(bytes.value())
                    .map_err(|e| format!("circuit {}: {e}", id.value()))?;
                loaded.circuits.push(c);
            }
            for row in txn.open_table(DOWN_LINES)?.iter()? {
                let (key, reason) = row?;
                let line: LineId = serde_json::from_str(key.value())
                    .map_err(|e| format!("down line {:?}: {e}", key.value()))?;
                loaded.down_lines.push((line, reason.value().to_string()));
            }
            for row in txn.open_table(NODES)?.iter()? {
                let (node, bytes) = row?;
                let t: NodeRecord = serde_json::from_slice(bytes.value())
                    .map_err(|e| format!("node {:?}: {e}", node.value()))?;
                loaded.nodes.insert(node.value().to_string(), t);
            }
            let meta = txn.open_table(META)?;
            loaded.next_circuit = meta.get(NEXT_CIRCUIT)?.map_or(1, |v| v.value());
            loaded.generation = meta.get(GENERATION)?.map_or(0, |v| v.value());
            Ok(loaded)
        };
        read().map_err(|e| self.error(e))
    }

    /// Writes one step's changes durably (the call returns after the commit).
    pub fn commit(&self, batch: &Batch<'_>) -> Result<(), StoreError> {
        let mut encoded_circuits = Vec::with_capacity(batch.put_circuits.len());
        for c in &batch.put_circuits {
            encoded_circuits.push((c.id, serde_json::to_vec(c).map_err(|e| self.error(e))?));
        }
        let mut encoded_nodes = Vec::with_capacity(batch.put_nodes.len());
        for (node, t) in &batch.put_nodes {
            encoded_nodes.push((
                node.as_str(),
                serde_json::to_vec(t).map_err(|e| self.error(e))?,
            ));
        }
        let line_key = |l: &LineId| serde_json::to_string(l).expect("a LineId always serialises");
        self.write(|txn| {
            let mut circuits = txn.open_table(CIRCUITS)?;
            for (id, bytes) in &encoded_circuits {
                circuits.insert(*id, bytes.as_slice())?;
            }
            for id in &batch.delete_circuits {
                circuits.remove(*id)?;
            }
            let mut lines = txn.open_table(DOWN_LINES)?;
            for (l, reason) in &batch.put_down_lines {
                lines.insert(line_key(l).as_str(), *reason)?;
            }
            for l in &batch.delete_down_lines {
                lines.remove(line_key(l).as_str())?;
            }
            let mut nodes = txn.open_table(NODES)?;
            for (node, bytes) in &encoded_nodes {
                nodes.insert(*node, bytes.as_slice())?;
            }
            let mut meta = txn.open_table(META)?;
            meta.insert(NEXT_CIRCUIT, batch.next_circuit)?;
            meta.insert(GENERATION, batch.generation)?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circuits::{CircuitState, Mode, PortRange};
    use tarp_api::rules::Protocol;

    fn circuit(id: u64) -> Circuit {
        Circuit {
            id,
            state: CircuitState::Active,
            mode: Mode::Port,
            protocol: Protocol::Udp,
            ports: PortRange::single(53),
            capture: "203.0.113.1".parse().unwrap(),
            alias: "198.18.0.1".parse().unwrap(),
            app_host: "198.19.0.2".parse().unwrap(),
            region: "eu".into(),
            pop: "ams".into(),
            aggregator: "pop-ams-1".into(),
            line: "line0".into(),
            demux: "dc-1".into(),
            remux: "dc-1".into(),
            return_path: crate::circuits::ReturnPath::Symmetric,
            generation: 4,
            idempotency_key: Some("k".into()),
            replaces: None,
            replaced_by: None,
            reason: None,
            lease_ms: 0,
            ended_at_ms: 0,
            owner: "app/test".into(),
        }
    }

    #[test]
    fn commit_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.redb");
        let line = LineId {
            node: "pop-ams-1".into(),
            line: "line1".into(),
        };
        let node: NodeId = "dc-1".into();
        let table = NodeRecord {
            generation: 4,
            digest: 0xfeed,
        };
        {
            let store = Store::open(&path).unwrap();
            assert_eq!(store.load().unwrap().generation, 0);
            let (a, b) = (circuit(1), circuit(2));
            store
                .commit(&Batch {
                    put_circuits: vec![&a, &b],
                    put_down_lines: vec![(&line, "link down")],
                    put_nodes: vec![(&node, table)],
                    next_circuit: 3,
                    generation: 4,
                    ..Default::default()
                })
                .unwrap();
            store
                .commit(&Batch {
                    delete_circuits: vec![2],
                    next_circuit: 3,
                    generation: 4,
                    ..Default::default()
                })
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.circuits, vec![circuit(1)]);
        assert_eq!(
            loaded.down_lines,
            vec![(line.clone(), "link down".to_string())]
        );
        assert_eq!(loaded.nodes[&node], table);
        assert_eq!((loaded.next_circuit, loaded.generation), (3, 4));
        store
            .commit(&Batch {
                delete_down_lines: vec![&line],
                next_circuit: 3,
                generation: 4,
                ..Default::default()
            })
            .unwrap();
        assert!(store.load().unwrap().down_lines.is_empty());
    }
}
