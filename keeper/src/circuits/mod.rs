//! Circuits and their life: activate (the patent's FIG 3), release (FIG 4), bounce and
//! replace. Pure state, no I/O: the server drives it, commits what it changed to the
//! store, compiles the forwarders' tables from it and waits for their acknowledgements.
//!
//! A circuit moves `Activating -> Active -> Releasing -> Released`, or `Active -> Bounced`
//! when its line goes down (then `Bounced -> Released` when its application lets go).
//! `Activating` and `Releasing` circuits are in the demux's and remux's tables but not in
//! the aggregator's: that is make-before-break on the way in and on the way out.
//!
//! * this file: [`Circuits`], its accessors, restoring it after a restart;
//! * `error.rs`: [`CircuitError`];
//! * `activate.rs`: placing a request on a line and an alias, confirming or aborting it;
//! * `release.rs`: the release steps;
//! * `bounce.rs`: lines going down and up, replacing bounced circuits.
//!
//! The circuit types themselves ([`Circuit`], [`ActivateRequest`], ...) are
//! [`tarp_api::circuit`]'s: applications see the same ones.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::inventory::{Aggregator, Inventory, Line};

mod activate;
mod bounce;
mod error;
mod release;
#[cfg(test)]
mod tests;

pub use error::CircuitError;
pub use tarp_api::circuit::{
    ActivateRequest, Circuit, CircuitEvent, CircuitId, CircuitState, EventKind, LineId, Mode,
    NodeId, PortRange, ReturnPath,
};

/// The outcome of [`Circuits::activate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Activation {
    /// A retry: the circuit this idempotency key already has.
    Existing(Box<Circuit>),
    /// A new circuit, now `Activating`.
    Started(CircuitId),
}

/// The outcome of [`Circuits::begin_release`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// The circuit was active and is now `Releasing`: its aggregator entry goes first.
    Started,
    /// The circuit was bounced (in no table) and is now released.
    Released(Circuit),
    /// The circuit was released before; a retried release answers with it.
    AlreadyReleased(Circuit),
}

/// A circuit that bounced, and its replacement (now `Activating`) if one was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bounce {
    /// The bounced circuit.
    pub old: CircuitId,
    /// Its replacement, or why there is none.
    pub replacement: Result<CircuitId, CircuitError>,
}

/// All circuits and the state of every line.
#[derive(Debug, Clone, Default)]
pub struct Circuits {
    circuits: BTreeMap<CircuitId, Circuit>,
    down: BTreeMap<LineId, String>,
    next_id: CircuitId,
    /// Circuits changed since the last [`Circuits::take_dirty`], each with what it was
    /// before its first change (`None`: it is new).
    dirty_circuits: BTreeMap<CircuitId, Option<Circuit>>,
    dirty_lines: BTreeSet<LineId>,
}

/// Where a new circuit goes.
struct Placement<'a> {
    aggregator: &'a Aggregator,
    line: &'a Line,
    capture: IpAddr,
    alias: IpAddr,
}

impl Circuits {
    /// No circuits, every line up.
    pub fn new() -> Circuits {
        Circuits {
            next_id: 1,
            ..Default::default()
        }
    }

    /// State as loaded from the store.
    pub fn restore(
        circuits: impl IntoIterator<Item = Circuit>,
        down: impl IntoIterator<Item = (LineId, String)>,
        next_id: CircuitId,
    ) -> Circuits {
        let circuits: BTreeMap<_, _> = circuits.into_iter().map(|c| (c.id, c)).collect();
        let next_id = next_id.max(circuits.keys().next_back().map_or(1, |id| id + 1));
        Circuits {
            circuits,
            down: down.into_iter().collect(),
            next_id,
            ..Default::default()
        }
    }

    /// The id the next circuit will get.
    pub fn next_id(&self) -> CircuitId {
        self.next_id
    }

    /// One circuit.
    pub fn get(&self, id: CircuitId) -> Option<&Circuit> {
        self.circuits.get(&id)
    }

    /// Every circuit, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Circuit> {
        self.circuits.values()
    }

    /// Down lines and why.
    pub fn down_lines(&self) -> &BTreeMap<LineId, String> {
        &self.down
    }

    /// True unless the line was reported down.
    pub fn is_up(&self, line: &LineId) -> bool {
        !self.down.contains_key(line)
    }

    /// Circuits and lines changed since the last call, for the store and the rule
    /// compiler: each changed circuit with what it was before (`None`: it is new; a
    /// circuit no longer in [`Circuits::get`] was forgotten).
    pub fn take_dirty(&mut self) -> (Vec<(CircuitId, Option<Circuit>)>, Vec<LineId>) {
        (
            std::mem::take(&mut self.dirty_circuits)
                .into_iter()
                .collect(),
            std::mem::take(&mut self.dirty_lines).into_iter().collect(),
        )
    }

    /// Records what a circuit was before its first change since the last
    /// [`Circuits::take_dirty`].
    fn mark(&mut self, id: CircuitId) {
        if let std::collections::btree_map::Entry::Vacant(v) = self.dirty_circuits.entry(id) {
            v.insert(self.circuits.get(&id).cloned());
        }
    }

    fn touch(&mut self, id: CircuitId) -> Option<&mut Circuit> {
        self.mark(id);
        self.circuits.get_mut(&id)
    }

    /// After a restart: activations that were in flight are rolled back (their callers
    /// never got an answer), releases in flight are completed, and circuits whose
    /// aggregator, line, demux or remux left the inventory bounce. Returns what changed.
    pub fn recover(&mut self, inv: &Inventory) -> Vec<String> {
        let mut notes = Vec::new();
        let ids: Vec<CircuitId> = self.circuits.keys().copied().collect();
        for id in ids {
            let Some(c) = self.circuits.get(&id) else {
                continue;
            };
            match c.state {
                CircuitState::Activating => {
                    self.abort(id);
                    notes.push(format!(
                        "circuit {id}: activation was in flight, rolled back"
                    ));
                    continue;
                }
                CircuitState::Releasing => {
                    self.finish_release(id);
                    notes.push(format!("circuit {id}: release was in flight, completed"));
                    continue;
                }
                _ => {}
            }
            if c.state != CircuitState::Active {
                continue;
            }
            let placed = inv.capture(c.capture).is_some_and(|(a, l)| {
                a.node == c.aggregator && l.name == c.line && a.demux == c.demux
            }) && inv.app_host(c.app_host).is_some_and(|h| h.remux == c.remux)
                && inv
                    .demux(&c.demux)
                    .is_some_and(|d| d.aliases.contains(&c.alias));
            if !placed {
                if let Some(c) = self.touch(id) {
                    c.state = CircuitState::Bounced;
                    c.reason = Some("its place left the inventory".into());
                }
                notes.push(format!(
                    "circuit {id}: its place left the inventory, bounced"
                ));
            }
        }
        let gone: Vec<LineId> = self
            .down
            .keys()
            .filter(|l| {
                !inv.aggregator(&l.node)
                    .is_some_and(|a| a.lines.iter().any(|x| x.name == l.line))
            })
            .cloned()
            .collect();
        for l in gone {
            self.line_up(&l);
        }
        notes
    }
}
