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
mod index;
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
    /// Capture addresses freed by a release or a bounce, not handed out again until
    /// every forwarder that held them dropped them (the keeper lifts them).
    held_captures: BTreeSet<IpAddr>,
    /// The same for aliases, by demux.
    held_aliases: BTreeMap<NodeId, BTreeSet<IpAddr>>,
    /// Freed since the last [`Circuits::take_freed`].
    freed: Vec<Freed>,
    /// Lines that are up but offered to no new circuit (flap damping).
    suppressed: BTreeSet<LineId>,
    index: index::Index,
}

/// A capture address and its alias that left the last circuit holding them, and the
/// forwarders that had them in their tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Freed {
    /// The capture address.
    pub capture: IpAddr,
    /// The demux whose alias it was.
    pub demux: NodeId,
    /// The alias.
    pub alias: IpAddr,
    /// Aggregator, demux and remux of the last circuit that held them.
    pub nodes: Vec<NodeId>,
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
        let mut index = index::Index::default();
        for c in circuits.values() {
            index.add(c);
        }
        Circuits {
            circuits,
            down: down.into_iter().collect(),
            next_id,
            index,
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

    /// Every circuit with an id larger than `after`, in id order.
    pub fn after(&self, after: CircuitId) -> impl Iterator<Item = &Circuit> {
        self.circuits
            .range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
            .map(|(_, c)| c)
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

    /// Changes a circuit through `f`, recording what it was and keeping the indexes
    /// in step. `None` if there is no such circuit.
    fn update<R>(&mut self, id: CircuitId, f: impl FnOnce(&mut Circuit) -> R) -> Option<R> {
        self.mark(id);
        let c = self.circuits.get_mut(&id)?;
        self.index.remove(c);
        let r = f(c);
        if c.has_ended() && c.ended_at_ms == 0 {
            c.ended_at_ms = unix_ms();
        }
        self.index.add(c);
        Some(r)
    }

    /// `c` left the live circuits: if it was the last one on its capture address, the
    /// address and its alias are held back from new circuits until the keeper lifts
    /// them (a forwarder that still runs an older table could otherwise send the old
    /// circuit's traffic to the new one's app host).
    fn free(&mut self, c: &Circuit) {
        if self.index.captures.contains_key(&c.capture) {
            return; // another live circuit still holds it
        }
        self.held_captures.insert(c.capture);
        self.held_aliases
            .entry(c.demux.clone())
            .or_default()
            .insert(c.alias);
        self.freed.push(Freed {
            capture: c.capture,
            demux: c.demux.clone(),
            alias: c.alias,
            nodes: c.path(),
        });
    }

    /// What was freed since the last call.
    pub fn take_freed(&mut self) -> Vec<Freed> {
        std::mem::take(&mut self.freed)
    }

    /// Hands a freed capture address and alias out again.
    pub fn lift(&mut self, f: &Freed) {
        self.held_captures.remove(&f.capture);
        if let Some(held) = self.held_aliases.get_mut(&f.demux) {
            held.remove(&f.alias);
        }
    }

    /// True while a freed capture address waits to be handed out again.
    pub fn is_held(&self, capture: IpAddr) -> bool {
        self.held_captures.contains(&capture)
    }

    /// Offers a line to no new circuit (`true`), or again (`false`).
    pub fn suppress(&mut self, line: &LineId, suppressed: bool) {
        if suppressed {
            self.suppressed.insert(line.clone());
        } else {
            self.suppressed.remove(line);
        }
    }

    /// True while the line is held down by flap damping.
    pub fn is_suppressed(&self, line: &LineId) -> bool {
        self.suppressed.contains(line)
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
                self.update(id, |c| {
                    c.state = CircuitState::Bounced;
                    c.reason = Some("its place left the inventory".into());
                });
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
        // Addresses freed before a restart: the acknowledgements that would have lifted
        // their holds went with the old process, so every capture address and alias
        // an ended circuit held (and no live one holds now) is held again, until the
        // forwarders on its path confirm the current tables or the hold-down passes.
        let mut seen = BTreeSet::new();
        let ended: Vec<Circuit> = self
            .circuits
            .values()
            .filter(|c| !c.state.is_live())
            .filter(|c| seen.insert((c.capture, c.demux.clone(), c.alias)))
            .cloned()
            .collect();
        for c in &ended {
            self.free(c);
        }
        notes
    }
}

impl Circuits {
    /// Checks the invariants that hold between steps, whatever happened: every live
    /// circuit's capture address is in the inventory, on its aggregator and line, and
    /// not held back; an address-mode circuit has its capture address to itself;
    /// port-mode circuits on one address share its alias and no port; no alias serves
    /// two capture addresses. Returns what is wrong (nothing, normally).
    pub fn audit(&self, inv: &Inventory) -> Vec<String> {
        let mut problems = Vec::new();
        let mut on_capture: BTreeMap<IpAddr, Vec<&Circuit>> = BTreeMap::new();
        let mut alias_of: BTreeMap<(&str, IpAddr), IpAddr> = BTreeMap::new();
        for c in self.circuits.values().filter(|c| c.state.is_live()) {
            match inv.capture(c.capture) {
                Some((a, l)) if a.node == c.aggregator && l.name == c.line => {}
                _ => problems.push(format!(
                    "circuit {}: capture address {} is not on {}/{}",
                    c.id, c.capture, c.aggregator, c.line
                )),
            }
            if self.held_captures.contains(&c.capture) {
                problems.push(format!(
                    "circuit {}: capture address {} is live and held back",
                    c.id, c.capture
                ));
            }
            if let Some(other) = alias_of.insert((c.demux.as_str(), c.alias), c.capture) {
                if other != c.capture {
                    problems.push(format!(
                        "alias {} of {} serves {} and {}",
                        c.alias, c.demux, other, c.capture
                    ));
                }
            }
            on_capture.entry(c.capture).or_default().push(c);
        }
        for (capture, cs) in on_capture {
            for (i, a) in cs.iter().enumerate() {
                for b in &cs[i + 1..] {
                    let clash = a.mode == Mode::Address
                        || b.mode == Mode::Address
                        || (a.protocol == b.protocol && a.ports.overlaps(&b.ports));
                    if clash {
                        problems.push(format!(
                            "capture address {capture} held by circuits {} and {}",
                            a.id, b.id
                        ));
                    }
                    if a.alias != b.alias {
                        problems.push(format!(
                            "capture address {capture} has aliases {} and {}",
                            a.alias, b.alias
                        ));
                    }
                }
            }
        }
        problems
    }
}

/// The wall clock in milliseconds since the Unix epoch (when a circuit ended is kept
/// across restarts, so it cannot be an `Instant`).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
