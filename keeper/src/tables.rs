//! Every node's table set as the keeper publishes it: counted entries, a generation,
//! and the deltas of its recent generations.
//!
//! An entry is in a node's set while at least one source holds it (the static part
//! counts as one; two port-mode circuits sharing a capture address share its aggregator
//! entry). A step adds and removes contributions ([`Tables::add`], [`Tables::remove`]);
//! only entries whose count crosses zero change the set, and [`Tables::finish_step`]
//! turns those into one delta per changed node, stamped with the step's generation and
//! kept in a bounded log. A forwarder stream that sent generation `g` gets the deltas
//! after `g` from the log when it still reaches back that far, else the full set
//! ([`Tables::plan`]): after a restart of either side, or when the forwarder fell too
//! far behind.

use std::collections::{BTreeMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use tarp_api::rules::{Entry, Rules, RulesDelta};

use crate::circuits::Circuit;
use crate::compiler::{contributions, remux_inner_mtu, static_part};
use crate::inventory::{Inventory, NodeId};

/// The log of a node keeps at most this many deltas...
const LOG_MAX_DELTAS: usize = 1024;
/// ...and at most this many entries in them (the newest delta is always kept).
const LOG_MAX_ENTRIES: usize = 1 << 16;

/// One generation's changes to a node's set, as logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// The generation it applies to.
    pub base: u64,
    /// The generation it makes.
    pub generation: u64,
    /// The changes.
    pub delta: RulesDelta,
}

/// What a forwarder stream must send to bring a forwarder from one generation to the
/// node's current one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// It has the current generation.
    Nothing,
    /// These deltas, in order.
    Deltas(Vec<Arc<Logged>>),
    /// The full set.
    Full {
        /// The current generation.
        generation: u64,
        /// The set.
        rules: Rules,
    },
}

#[derive(Debug, Default)]
struct NodeTable {
    generation: u64,
    entries: BTreeMap<Entry, u32>,
    remux_entries: usize,
    /// Order-independent digest of `entries`: the wrapping sum of their hashes.
    sum: u64,
    /// Net changes of the step under way: true added, false removed.
    step: BTreeMap<Entry, bool>,
    log: VecDeque<Arc<Logged>>,
    log_entries: usize,
    /// Republish at the next step with no delta (the forwarder runs something else).
    forced: bool,
}

/// The table sets of every node in the inventory.
#[derive(Debug)]
pub struct Tables {
    nodes: BTreeMap<NodeId, NodeTable>,
    remux_mtu: Option<u16>,
}

/// FNV-1a: stable across builds, so a digest stored by one keeper means the same to
/// the next.
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

fn entry_hash(e: &Entry) -> u64 {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    e.hash(&mut h);
    h.finish()
}

impl NodeTable {
    fn inner_mtu(&self, remux_mtu: Option<u16>) -> Option<u16> {
        if self.remux_entries > 0 {
            remux_mtu
        } else {
            None
        }
    }

    fn changed(&mut self, e: Entry, added: bool) {
        let h = entry_hash(&e);
        self.sum = if added {
            self.sum.wrapping_add(h)
        } else {
            self.sum.wrapping_sub(h)
        };
        if matches!(e, Entry::Remux(_)) {
            if added {
                self.remux_entries += 1;
            } else {
                self.remux_entries -= 1;
            }
        }
        // An entry removed and added back within one step is no change.
        match self.step.get(&e) {
            Some(&was) if was != added => {
                self.step.remove(&e);
            }
            _ => {
                self.step.insert(e, added);
            }
        }
    }

    fn add(&mut self, e: Entry) {
        let n = self.entries.entry(e.clone()).or_insert(0);
        *n += 1;
        if *n == 1 {
            self.changed(e, true);
        }
    }

    fn remove(&mut self, e: Entry) {
        let Some(n) = self.entries.get_mut(&e) else {
            debug_assert!(false, "removing an entry nobody added: {e:?}");
            return;
        };
        *n -= 1;
        if *n == 0 {
            self.entries.remove(&e);
            self.changed(e, false);
        }
    }

    fn log(&mut self, logged: Logged) {
        self.log_entries += logged.delta.len();
        self.log.push_back(Arc::new(logged));
        while self.log.len() > 1
            && (self.log.len() > LOG_MAX_DELTAS || self.log_entries > LOG_MAX_ENTRIES)
        {
            if let Some(old) = self.log.pop_front() {
                self.log_entries -= old.delta.len();
            }
        }
    }
}

impl Tables {
    /// Every node's static part, at generation 0.
    pub fn new(inv: &Inventory) -> Tables {
        let mut nodes = BTreeMap::new();
        for (node, rules) in static_part(inv) {
            let mut t = NodeTable::default();
            for e in rules.entries() {
                t.add(e);
            }
            nodes.insert(node, t);
        }
        Tables {
            nodes,
            remux_mtu: remux_inner_mtu(inv),
        }
    }

    /// Adds what `c` contributes in its state.
    pub fn add(&mut self, inv: &Inventory, c: &Circuit) {
        contributions(inv, c, |node, e| {
            if let Some(t) = self.nodes.get_mut(node) {
                t.add(e);
            }
        });
    }

    /// Removes what `c` contributed (`c` as it was when it was added).
    pub fn remove(&mut self, inv: &Inventory, c: &Circuit) {
        contributions(inv, c, |node, e| {
            if let Some(t) = self.nodes.get_mut(node) {
                t.remove(e);
            }
        });
    }

    /// Ends a step: every node whose set changed (or that was forced) gets the
    /// generation `next()` returns (called once, and only if some node changed), and
    /// its delta goes into its log. Returns the nodes that changed.
    pub fn finish_step(&mut self, next: impl FnOnce() -> u64) -> Vec<NodeId> {
        let changed: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, t)| !t.step.is_empty() || t.forced)
            .map(|(n, _)| n.clone())
            .collect();
        if changed.is_empty() {
            return changed;
        }
        let generation = next();
        for node in &changed {
            let Some(t) = self.nodes.get_mut(node) else {
                continue;
            };
            let mut delta = RulesDelta::default();
            for (e, added) in std::mem::take(&mut t.step) {
                if added {
                    delta.added.push(e);
                } else {
                    delta.removed.push(e);
                }
            }
            delta.added.inner_mtu = t.inner_mtu(self.remux_mtu);
            let base = t.generation;
            t.generation = generation;
            if t.forced {
                // The forwarder runs something this keeper did not send: no delta
                // reaches it, only the full set.
                t.forced = false;
                t.log.clear();
                t.log_entries = 0;
            } else {
                t.log(Logged {
                    base,
                    generation,
                    delta,
                });
            }
        }
        changed
    }

    /// Forgets the step under way without publishing it (start-up: the sets built from
    /// the stored circuits are what the stored generations carry, or get forced).
    pub fn settle(&mut self) {
        for t in self.nodes.values_mut() {
            t.step.clear();
        }
    }

    /// A node's generation.
    pub fn generation(&self, node: &str) -> u64 {
        self.nodes.get(node).map_or(0, |t| t.generation)
    }

    /// Sets a node's generation (start-up, from the store).
    pub fn set_generation(&mut self, node: &str, generation: u64) {
        if let Some(t) = self.nodes.get_mut(node) {
            t.generation = generation;
        }
    }

    /// Makes the next step publish the node at a new generation, as a full set.
    pub fn force(&mut self, node: &str) {
        if let Some(t) = self.nodes.get_mut(node) {
            t.forced = true;
        }
    }

    /// A digest of the node's set: equal sets have equal digests, whatever order their
    /// entries came in.
    pub fn digest(&self, node: &str) -> u64 {
        self.nodes.get(node).map_or(0, |t| {
            let mtu = t.inner_mtu(self.remux_mtu).map_or(0, u64::from);
            t.sum ^ mtu.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        })
    }

    /// Number of entries in the node's set.
    pub fn len(&self, node: &str) -> usize {
        self.nodes.get(node).map_or(0, |t| t.entries.len())
    }

    /// The node's set, every list sorted.
    pub fn rules(&self, node: &str) -> Option<Rules> {
        let t = self.nodes.get(node)?;
        let mut rules = Rules {
            inner_mtu: t.inner_mtu(self.remux_mtu),
            ..Rules::default()
        };
        for e in t.entries.keys() {
            rules.push(e.clone());
        }
        Some(rules)
    }

    /// What brings a forwarder that has generation `sent` of the node's set to the
    /// current one.
    pub fn plan(&self, node: &str, sent: u64) -> Plan {
        let Some(t) = self.nodes.get(node) else {
            return Plan::Nothing;
        };
        if sent == t.generation {
            return Plan::Nothing;
        }
        if sent != 0 {
            if let Some(i) = t.log.iter().position(|l| l.base == sent) {
                return Plan::Deltas(t.log.range(i..).cloned().collect());
            }
        }
        Plan::Full {
            generation: t.generation,
            rules: self.rules(node).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circuits::{ActivateRequest, Activation, Circuits, Mode, PortRange, ReturnPath};
    use crate::compiler::compile;
    use crate::inventory::Config;
    use tarp_api::rules::Protocol;

    fn inv() -> Inventory {
        Config::parse("keeper.toml", include_str!("../examples/keeper.toml"))
            .unwrap()
            .inventory
    }

    fn port_req(port: u16) -> ActivateRequest {
        ActivateRequest {
            region: Some("eu".into()),
            pop: None,
            protocol: Protocol::Udp,
            ports: PortRange::single(port),
            mode: Mode::Port,
            app_host: "198.19.0.2".parse().unwrap(),
            idempotency_key: None,
            capture: None,
            return_path: ReturnPath::Asymmetric,
            lease_ms: 0,
            owner: String::new(),
        }
    }

    /// Applies the circuits' changes since the last call, as the keeper's commit does.
    fn step(inv: &Inventory, s: &mut Circuits, t: &mut Tables, g: &mut u64) -> Vec<NodeId> {
        let (changes, _) = s.take_dirty();
        for (id, before) in changes {
            if let Some(b) = before {
                t.remove(inv, &b);
            }
            if let Some(c) = s.get(id) {
                t.add(inv, c);
            }
        }
        t.finish_step(|| {
            *g += 1;
            *g
        })
    }

    /// Incremental steps end where a full compile of the same circuits does, and the
    /// logged deltas, applied in order, take each set from one generation to the next.
    #[test]
    fn steps_match_a_full_compile_and_deltas_replay() {
        let inv = inv();
        let mut s = Circuits::new();
        let mut t = Tables::new(&inv);
        t.settle();
        let mut g = 0;
        let start: BTreeMap<NodeId, Rules> = inv
            .nodes
            .keys()
            .map(|n| (n.clone(), t.rules(n).unwrap()))
            .collect();
        let mut ids = Vec::new();
        for port in 1000..1010 {
            let Activation::Started(id) = s.activate(&inv, 256, &port_req(port)).unwrap() else {
                panic!()
            };
            step(&inv, &mut s, &mut t, &mut g);
            s.confirm(id).unwrap();
            step(&inv, &mut s, &mut t, &mut g);
            ids.push(id);
        }
        for &id in &ids[..4] {
            s.begin_release(id).unwrap();
            step(&inv, &mut s, &mut t, &mut g);
            s.finish_release(id);
            step(&inv, &mut s, &mut t, &mut g);
        }
        let full = compile(&inv, s.iter());
        for (node, rules) in &full {
            assert_eq!(t.rules(node).as_ref(), Some(rules), "{node}");
            // Replaying the log (it holds every step here) from the static part gives
            // the same set, generation by generation.
            let mut replay = start[node].clone();
            let mut prev = 0;
            for d in &t.nodes[node].log {
                assert_eq!(d.base, prev, "{node}");
                replay.apply(&d.delta).unwrap();
                prev = d.generation;
            }
            assert_eq!(prev, t.generation(node), "{node}");
            replay.demux.sort();
            replay.remux.sort();
            replay.aggregator.sort();
            assert_eq!(&replay, rules, "{node}: replayed log");
            // A stream that sent the first generation gets the rest as deltas.
            if let Some(first) = t.nodes[node].log.front().map(|l| l.generation) {
                if first != prev {
                    let Plan::Deltas(ds) = t.plan(node, first) else {
                        panic!("{node}: no deltas from {first}")
                    };
                    assert_eq!(ds.len(), t.nodes[node].log.len() - 1);
                }
            }
        }
    }

    /// Two port-mode circuits on one capture address share its aggregator entry: the
    /// first release leaves it, the second removes it.
    #[test]
    fn shared_entries_are_counted() {
        let inv = inv();
        let mut s = Circuits::new();
        let mut t = Tables::new(&inv);
        t.settle();
        let mut g = 0;
        let mut ids = Vec::new();
        for port in [53, 54] {
            let Activation::Started(id) = s.activate(&inv, 256, &port_req(port)).unwrap() else {
                panic!()
            };
            s.confirm(id).unwrap();
            ids.push(id);
        }
        step(&inv, &mut s, &mut t, &mut g);
        let agg = s.get(ids[0]).unwrap().aggregator.clone();
        assert_eq!(
            s.get(ids[0]).unwrap().capture,
            s.get(ids[1]).unwrap().capture
        );
        assert_eq!(t.rules(&agg).unwrap().aggregator.len(), 1);
        s.begin_release(ids[0]).unwrap();
        let changed = step(&inv, &mut s, &mut t, &mut g);
        assert!(
            !changed.contains(&agg),
            "the entry is still held: {changed:?}"
        );
        s.begin_release(ids[1]).unwrap();
        let changed = step(&inv, &mut s, &mut t, &mut g);
        assert!(changed.contains(&agg));
        let last = t.nodes[&agg].log.back().unwrap();
        assert_eq!(last.delta.removed.aggregator.len(), 1);
        assert!(last.delta.added.is_empty());
    }

    /// The digest ignores the order entries came in, and a forced node is republished
    /// as a full set.
    #[test]
    fn digest_and_forced_full_set() {
        let inv = inv();
        let mut s = Circuits::new();
        for port in [7, 8, 9] {
            let Activation::Started(id) = s.activate(&inv, 256, &port_req(port)).unwrap() else {
                panic!()
            };
            s.confirm(id).unwrap();
        }
        let mut a = Tables::new(&inv);
        let mut b = Tables::new(&inv);
        let all: Vec<&Circuit> = s.iter().collect();
        for c in &all {
            a.add(&inv, c);
        }
        for c in all.iter().rev() {
            b.add(&inv, c);
        }
        for node in inv.nodes.keys() {
            assert_eq!(a.digest(node), b.digest(node), "{node}");
        }
        assert_ne!(a.digest("dc-1"), Tables::new(&inv).digest("dc-1"));
        a.settle();
        a.set_generation("dc-1", 5);
        a.force("dc-1");
        assert_eq!(a.finish_step(|| 6), vec!["dc-1".to_string()]);
        assert_eq!(
            a.plan("dc-1", 5),
            Plan::Full {
                generation: 6,
                rules: a.rules("dc-1").unwrap()
            }
        );
        assert_eq!(a.plan("dc-1", 6), Plan::Nothing);
    }
}
