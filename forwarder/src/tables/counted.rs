//! Per-circuit counters (opt-in: `circuit_metrics = N` in the forwarder's config): which
//! circuits a snapshot counts, and in which slot of the workers' counter arrays.
//!
//! A circuit is known to the DC's forwarders by its application side: the app host's
//! address, protocol and port in port mode, the capture address in address mode. The
//! demux sees that as the destination after its rewrite, the remux as the source before
//! its own, so both count the same circuit under the same label (`to_app` at the demux,
//! `to_device` at the remux).
//!
//! Slots outlive snapshots ([`CircuitSlots`], kept by the control thread): a circuit
//! keeps its slot while it is in the tables, so its counters only grow. At most N
//! circuits are counted; the rest are not (and say how many in a gauge), which bounds
//! the metrics' cardinality.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};

use super::flatmap::FlatMap;
use super::Snapshot;

/// A circuit as the DC's forwarders see it: its application-side address (IPv4 as
/// IPv4-mapped IPv6) and, in port mode, `protocol << 16 | port` (0 in address mode).
pub type CircuitKey = ([u8; 16], u32);

/// The most circuits one forwarder counts.
pub const MAX_COUNTED: usize = 65_536;

/// The key of an IPv4 circuit.
#[inline]
pub fn key_v4(addr: u32, proto_port: u32) -> CircuitKey {
    (
        std::net::Ipv4Addr::from(addr).to_ipv6_mapped().octets(),
        proto_port,
    )
}

/// The key of an IPv6 circuit.
#[inline]
pub const fn key_v6(addr: [u8; 16], proto_port: u32) -> CircuitKey {
    (addr, proto_port)
}

/// `protocol << 16 | port`, as a key's second half.
#[inline]
pub const fn proto_port(protocol: u8, port: u16) -> u32 {
    ((protocol as u32) << 16) | port as u32
}

/// The `circuit` label of a key: `203.0.113.2` (address mode), `udp/198.19.0.2:4000`
/// or `tcp/[2001:db8::2]:4000` (port mode).
pub fn label(k: &CircuitKey) -> String {
    let v6 = Ipv6Addr::from(k.0);
    let addr = match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    };
    if k.1 == 0 {
        return addr.to_string();
    }
    let proto = match k.1 >> 16 {
        6 => "tcp".to_string(),
        17 => "udp".to_string(),
        n => n.to_string(),
    };
    let port = k.1 & 0xffff;
    match addr {
        IpAddr::V4(a) => format!("{proto}/{a}:{port}"),
        IpAddr::V6(a) => format!("{proto}/[{a}]:{port}"),
    }
}

/// Which circuits a snapshot counts: key -> slot.
pub type Counted = FlatMap<CircuitKey, u32>;

/// Every circuit the snapshot's demux and remux maps hold, as keys, sorted (a port range
/// is one key per port).
pub fn circuits_of(snap: &Snapshot) -> Vec<CircuitKey> {
    let mut keys = Vec::new();
    for (k, r) in snap.v4.demux_port.iter() {
        keys.push(key_v4(r.addr, (*k & 0xff_ffff) as u32));
    }
    for (_, r) in snap.v4.demux_addr.iter() {
        keys.push(key_v4(r.addr, 0));
    }
    for (k, _) in snap.v4.remux_port.iter() {
        keys.push(key_v4((*k >> 24) as u32, (*k & 0xff_ffff) as u32));
    }
    for (k, _) in snap.v4.remux_addr.iter() {
        keys.push(key_v4(*k, 0));
    }
    for (k, r) in snap.v6.demux_port.iter() {
        keys.push(key_v6(r.addr, k.1));
    }
    for (_, r) in snap.v6.demux_addr.iter() {
        keys.push(key_v6(r.addr, 0));
    }
    for (k, _) in snap.v6.remux_port.iter() {
        keys.push(*k);
    }
    for (k, _) in snap.v6.remux_addr.iter() {
        keys.push(key_v6(*k, 0));
    }
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// The slots of the counted circuits, across snapshots.
#[derive(Debug, Default)]
pub struct CircuitSlots {
    max: usize,
    by_key: HashMap<CircuitKey, u32>,
    /// Each slot's circuit (`None`: free).
    keys: Vec<Option<CircuitKey>>,
    free: Vec<u32>,
    /// Circuits of the last snapshot that got no slot.
    pub uncounted: usize,
}

impl CircuitSlots {
    /// Slots for at most `max` circuits (clamped to [`MAX_COUNTED`]).
    pub fn new(max: usize) -> CircuitSlots {
        let max = max.min(MAX_COUNTED);
        CircuitSlots {
            max,
            keys: vec![None; max],
            free: (0..max as u32).rev().collect(),
            ..CircuitSlots::default()
        }
    }

    /// How many slots there are (the workers' counter arrays' length).
    pub fn len(&self) -> usize {
        self.max
    }

    /// True when nothing is counted (`circuit_metrics = 0`).
    pub fn is_empty(&self) -> bool {
        self.max == 0
    }

    /// The circuit in `slot`, if any.
    pub fn key(&self, slot: usize) -> Option<&CircuitKey> {
        self.keys.get(slot).and_then(Option::as_ref)
    }

    /// Gives the circuits of `keys` slots: those that had one keep it, those gone free
    /// theirs, new ones take free slots while there are any. Returns the map for the
    /// snapshot and the slots that changed hands (their counters start again: the caller
    /// takes what they hold now as their base).
    pub fn assign(&mut self, keys: &[CircuitKey]) -> (Counted, Vec<u32>) {
        if self.max == 0 {
            return (FlatMap::empty(), Vec::new());
        }
        let wanted: std::collections::HashSet<&CircuitKey> = keys.iter().collect();
        let gone: Vec<CircuitKey> = self
            .by_key
            .keys()
            .filter(|k| !wanted.contains(k))
            .copied()
            .collect();
        for k in gone {
            if let Some(s) = self.by_key.remove(&k) {
                self.keys[s as usize] = None;
                self.free.push(s);
            }
        }
        let mut fresh = Vec::new();
        self.uncounted = 0;
        for k in keys {
            if self.by_key.contains_key(k) {
                continue;
            }
            match self.free.pop() {
                Some(s) => {
                    self.by_key.insert(*k, s);
                    self.keys[s as usize] = Some(*k);
                    fresh.push(s);
                }
                None => self.uncounted += 1,
            }
        }
        // Keys are distinct and at most `max`: the map builds.
        let map = FlatMap::build(self.by_key.iter().map(|(k, s)| (*k, *s)))
            .unwrap_or_else(|_| FlatMap::empty());
        (map, fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(last: u8, pp: u32) -> CircuitKey {
        key_v4(u32::from_be_bytes([198, 19, 0, last]), pp)
    }

    #[test]
    fn labels_name_the_application_side() {
        assert_eq!(label(&k(2, 0)), "198.19.0.2");
        assert_eq!(label(&k(2, proto_port(17, 4000))), "udp/198.19.0.2:4000");
        let v6: [u8; 16] = "2001:db8::2".parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(
            label(&key_v6(v6, proto_port(6, 80))),
            "tcp/[2001:db8::2]:80"
        );
    }

    #[test]
    fn slots_stay_with_their_circuit_and_are_bounded() {
        let mut s = CircuitSlots::new(2);
        let (m, fresh) = s.assign(&[k(2, 0), k(3, 0)]);
        assert_eq!((m.len(), fresh.len(), s.uncounted), (2, 2, 0));
        let slot2 = *m.get(&k(2, 0)).unwrap();
        // A third circuit finds no slot; the first two keep theirs.
        let (m, fresh) = s.assign(&[k(2, 0), k(3, 0), k(4, 0)]);
        assert_eq!((m.len(), fresh.len(), s.uncounted), (2, 0, 1));
        assert_eq!(*m.get(&k(2, 0)).unwrap(), slot2);
        assert!(m.get(&k(4, 0)).is_none());
        // k(3) goes: k(4) takes its slot, which changed hands.
        let (m, fresh) = s.assign(&[k(2, 0), k(4, 0)]);
        assert_eq!(fresh, vec![*m.get(&k(4, 0)).unwrap()]);
        assert_eq!(*m.get(&k(2, 0)).unwrap(), slot2);
        assert_eq!(s.key(fresh[0] as usize), Some(&k(4, 0)));
        // Off: nothing counted.
        let mut off = CircuitSlots::new(0);
        assert!(off.assign(&[k(2, 0)]).0.is_empty());
    }
}
