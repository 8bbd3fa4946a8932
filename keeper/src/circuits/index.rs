//! Indexes over the circuits, kept in step with every change ([`Circuits::update`] and
//! the few places that add or remove a circuit), so that placing a request looks at
//! the handful of circuits that matter (those on one capture address, one app host's
//! ports, one idempotency key) instead of at every circuit.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use tarp_api::rules::Protocol;

use super::{Circuit, CircuitId, CircuitState, Mode, NodeId, PortRange};

/// Port ranges that do not overlap: first port -> (last port, circuit).
pub(super) type Ranges = BTreeMap<u16, (u16, CircuitId)>;

/// The circuit in `r` whose range overlaps `p`, if any.
///
/// The ranges do not overlap one another, so sorted by first port their last ports
/// rise too: only the range starting last at or before `p.last` can reach `p.first`.
pub(super) fn overlapping(r: &Ranges, p: PortRange) -> Option<CircuitId> {
    let (_, &(last, id)) = r.range(..=p.last).next_back()?;
    (last >= p.first).then_some(id)
}

/// The live circuits on one capture address.
#[derive(Debug, Clone, Default)]
pub(super) struct OnCapture {
    /// How many.
    pub count: u32,
    /// The alias they share.
    pub alias: Option<IpAddr>,
    /// One of them (the address-mode one, if any): for error messages.
    pub any: CircuitId,
    /// The address-mode circuit holding the whole address.
    pub address: Option<CircuitId>,
    /// Port-mode circuits' ports, by protocol.
    pub ports: HashMap<Protocol, Ranges>,
}

/// The indexes.
#[derive(Debug, Clone, Default)]
pub(super) struct Index {
    /// Live circuits by capture address.
    pub captures: HashMap<IpAddr, OnCapture>,
    /// Live circuits per alias, by demux.
    pub aliases: HashMap<NodeId, HashMap<IpAddr, u32>>,
    /// Live port-mode circuits' ports by (app host, protocol).
    pub app_ports: HashMap<(IpAddr, Protocol), Ranges>,
    /// The unreleased circuit holding each idempotency key, by owner.
    pub keys: HashMap<(String, String), CircuitId>,
}

impl Index {
    /// Counts `c` as it is now.
    pub fn add(&mut self, c: &Circuit) {
        if let (Some(k), false) = (&c.idempotency_key, c.state == CircuitState::Released) {
            self.keys.insert((c.owner.clone(), k.clone()), c.id);
        }
        if !c.state.is_live() {
            return;
        }
        let on = self.captures.entry(c.capture).or_default();
        on.count += 1;
        on.alias = Some(c.alias);
        match c.mode {
            Mode::Address => {
                on.address = Some(c.id);
                on.any = c.id;
            }
            Mode::Port => {
                if on.address.is_none() {
                    on.any = c.id;
                }
                on.ports
                    .entry(c.protocol)
                    .or_default()
                    .insert(c.ports.first, (c.ports.last, c.id));
                self.app_ports
                    .entry((c.app_host, c.protocol))
                    .or_default()
                    .insert(c.ports.first, (c.ports.last, c.id));
            }
        }
        *self
            .aliases
            .entry(c.demux.clone())
            .or_default()
            .entry(c.alias)
            .or_default() += 1;
    }

    /// Stops counting `c` (as it was when counted).
    pub fn remove(&mut self, c: &Circuit) {
        if let Some(k) = &c.idempotency_key {
            let k = (c.owner.clone(), k.clone());
            if self.keys.get(&k) == Some(&c.id) {
                self.keys.remove(&k);
            }
        }
        if !c.state.is_live() {
            return;
        }
        if let Some(on) = self.captures.get_mut(&c.capture) {
            on.count -= 1;
            match c.mode {
                Mode::Address => on.address = None,
                Mode::Port => {
                    if let Some(r) = on.ports.get_mut(&c.protocol) {
                        r.remove(&c.ports.first);
                    }
                }
            }
            if on.count == 0 {
                self.captures.remove(&c.capture);
            } else if on.any == c.id {
                on.any = on
                    .address
                    .or_else(|| {
                        on.ports
                            .values()
                            .find_map(|r| r.values().next().map(|v| v.1))
                    })
                    .unwrap_or(0);
            }
        }
        if c.mode == Mode::Port {
            if let Some(r) = self.app_ports.get_mut(&(c.app_host, c.protocol)) {
                r.remove(&c.ports.first);
                if r.is_empty() {
                    self.app_ports.remove(&(c.app_host, c.protocol));
                }
            }
        }
        if let Some(used) = self.aliases.get_mut(&c.demux) {
            if let Some(n) = used.get_mut(&c.alias) {
                *n -= 1;
                if *n == 0 {
                    used.remove(&c.alias);
                }
            }
        }
    }

    /// The live circuit on `capture` that a request for `mode` and `ports` would clash
    /// with, if any.
    pub fn conflict(
        &self,
        capture: IpAddr,
        mode: Mode,
        protocol: Protocol,
        ports: PortRange,
    ) -> Option<CircuitId> {
        let on = self.captures.get(&capture)?;
        if let Some(a) = on.address {
            return Some(a);
        }
        if mode == Mode::Address {
            return Some(on.any);
        }
        overlapping(on.ports.get(&protocol)?, ports)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_of_sorted_disjoint_ranges() {
        let mut r = Ranges::new();
        r.insert(1, (5, 10));
        r.insert(10, (20, 11));
        r.insert(30, (30, 12));
        let p = |a, b| PortRange { first: a, last: b };
        assert_eq!(overlapping(&r, p(3, 12)), Some(11));
        assert_eq!(overlapping(&r, p(6, 8)), None);
        assert_eq!(overlapping(&r, p(5, 5)), Some(10));
        assert_eq!(overlapping(&r, p(21, 29)), None);
        assert_eq!(overlapping(&r, p(21, 40)), Some(12));
        assert_eq!(overlapping(&r, p(0, 0)), None);
        assert_eq!(overlapping(&Ranges::new(), p(1, 65535)), None);
    }
}
