//! Fragments: the table that steers non-first fragments after their first, and the
//! aggregator's split of a DF-clear IPv4 packet that does not fit its tunnel.
//!
//! A non-first fragment carries no ports, so a port-mode circuit cannot be found from it.
//! The first fragment (which has the ports) records its decision under (source,
//! destination, protocol, identification); later fragments of the same datagram look it
//! up. The table is a fixed array of 4-way sets: it never grows, an entry lives
//! [`FragTable::TIMEOUT_MS`], and a new datagram takes the oldest slot of its set. A
//! fragment that arrives before its first is dropped and counted (`fragment`): holding
//! it would cost buffers for a case that Linux and most stacks never produce (they send
//! the first fragment first), and the sender's retransmission recovers.
//!
//! Splitting happens on the inner packet before encapsulation (RFC 4459's first option):
//! the DC's demux then sees ordinary inner fragments, never outer ones (RFC 7348 lets a
//! VTEP drop those), and needs no reassembly memory.

use crate::packet::checksum::{self, Delta};
use crate::packet::{be16, ipv4, set_be16};
use crate::tables::{Key, NextHopId, PortId, Snapshot};

use super::{DropReason, PacketBuf, Split};

/// A datagram's identity: what every one of its fragments carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct FragKey {
    /// Source address (IPv4 in the first 4 bytes).
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// Identification (IPv4: 16 bits; IPv6: the fragment header's 32).
    pub id: u32,
    /// Upper-layer protocol.
    pub proto: u8,
    /// IPv6.
    pub v6: bool,
}

impl FragKey {
    fn hash(&self) -> u64 {
        let x = u128::from_ne_bytes(self.src) ^ u128::from_ne_bytes(self.dst).rotate_left(17);
        let h = (x as u64) ^ ((x >> 64) as u64).rotate_left(29);
        (h ^ ((self.id as u64) << 8 | self.proto as u64) ^ self.v6 as u64).hash64()
    }
}

/// What the first fragment decided: the address its later fragments get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct FragHit {
    /// The rewritten address (IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
    /// Checksum difference of the rewrite.
    pub delta: Delta,
    /// Where the first fragment went.
    pub next_hop: NextHopId,
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    key: FragKey,
    hit: FragHit,
    /// The snapshot the decision was made in: a later one may have other next hops.
    generation: u64,
    /// 0: empty.
    expires_ms: u64,
}

const WAYS: usize = 4;

/// A bounded table of first-fragment decisions.
pub struct FragTable {
    slots: Box<[Slot]>,
    set_mask: usize,
}

impl FragTable {
    /// Slots per worker by default (about 300 KiB).
    pub const DEFAULT_SLOTS: usize = 4096;
    /// How long a first fragment's decision is kept.
    pub const TIMEOUT_MS: u64 = 2000;

    /// A table of at least `slots` entries (a power of two, at least one set).
    pub fn new(slots: usize) -> FragTable {
        let slots = slots.max(WAYS).next_power_of_two();
        FragTable {
            slots: vec![Slot::default(); slots].into_boxed_slice(),
            set_mask: slots / WAYS - 1,
        }
    }

    /// Bytes of the table.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.slots)
    }

    fn set(&self, key: &FragKey) -> std::ops::Range<usize> {
        let s = (key.hash() as usize & self.set_mask) * WAYS;
        s..s + WAYS
    }

    /// Records the decision for a datagram (its first fragment).
    pub(crate) fn insert(&mut self, key: FragKey, hit: FragHit, generation: u64, now_ms: u64) {
        let set = self.set(&key);
        let slots = &mut self.slots[set];
        let victim = slots
            .iter()
            .position(|s| s.expires_ms != 0 && s.key == key)
            .or_else(|| slots.iter().position(|s| s.expires_ms <= now_ms))
            .unwrap_or_else(|| {
                (0..WAYS)
                    .min_by_key(|&i| slots[i].expires_ms)
                    .unwrap_or_default()
            });
        slots[victim] = Slot {
            key,
            hit,
            generation,
            expires_ms: now_ms + Self::TIMEOUT_MS,
        };
    }

    /// The decision for a later fragment, if its first was seen in this snapshot.
    pub(crate) fn get(&self, key: &FragKey, generation: u64, now_ms: u64) -> Option<FragHit> {
        self.slots[self.set(key)]
            .iter()
            .find(|s| s.expires_ms > now_ms && s.generation == generation && s.key == *key)
            .map(|s| s.hit)
    }
}

/// The most header bytes a fragment starts with: Ethernet, one VLAN tag, IPv4 with options.
const MAX_HEAD: usize = 18 + 60;

/// Splits the IPv4 packet of `frame` (its IP header at `l3`, already rewritten and
/// addressed) into fragments that fit where `how` sends them — the tunnel's inner budget,
/// each piece then encapsulated (a WireGuard tunnel's pieces are inner frames, for the
/// caller to seal), or the port's MTU — each in a buffer from `alloc(len)`
/// handed to `out` with its output port. Later fragments carry a 20-byte header (options are not copied).
/// Returns the output port and the number of pieces.
pub fn split<B: PacketBuf>(
    snap: &Snapshot,
    how: Split,
    frame: &[u8],
    l3: usize,
    mut alloc: impl FnMut(usize) -> Option<B>,
    mut out: impl FnMut(PortId, B),
) -> Result<(PortId, usize), DropReason> {
    let (mtu, port, tunnel) = match how {
        Split::Tunnel(t) => {
            let t = snap.tunnels.get(t as usize).ok_or(DropReason::Malformed)?;
            let nh = &snap.next_hops[t.next_hop as usize];
            let mac = nh.mac().ok_or(DropReason::NoNeighbour)?;
            (t.inner_mtu, nh.port, Some((t, mac)))
        }
        Split::Port(p) => {
            let port = snap.ports.get(p as usize).ok_or(DropReason::Malformed)?;
            (port.mtu, p, None)
        }
    };
    if frame.len() < l3 + ipv4::HEADER_LEN || l3 > 18 {
        return Err(DropReason::Malformed);
    }
    let ihl = ((frame[l3] & 0x0f) as usize) * 4;
    let total = be16(frame, l3 + ipv4::field::LENGTH) as usize;
    if ihl < ipv4::HEADER_LEN || total < ihl || l3 + total > frame.len() {
        return Err(DropReason::Malformed);
    }
    let mtu = mtu as usize;
    let flags = be16(frame, l3 + ipv4::field::FLG_OFF);
    let base = (flags & ipv4::OFFSET_MASK) as usize * 8;
    let last_mf = flags & ipv4::FLAG_MF != 0;
    let payload = &frame[l3 + ihl..l3 + total];
    // The same outer source port for every fragment: addresses and protocol only.
    let src_port = crate::packet::vxlan::flow_port(super::aggregator::frag_flow_hash(frame, l3));
    let mut at = 0;
    let mut n = 0;
    while at < payload.len() {
        let hl = if at == 0 { ihl } else { ipv4::HEADER_LEN };
        let room = mtu.saturating_sub(hl) & !7;
        if room == 0 {
            return Err(DropReason::TooBig);
        }
        let len = room.min(payload.len() - at);
        let more = at + len < payload.len() || last_mf;
        let mut head = [0u8; MAX_HEAD];
        let h = &mut head[..l3 + hl];
        h[..l3 + ipv4::HEADER_LEN].copy_from_slice(&frame[..l3 + ipv4::HEADER_LEN]);
        if at == 0 {
            h[l3..l3 + ihl].copy_from_slice(&frame[l3..l3 + ihl]);
        } else {
            h[l3] = ipv4::VER_IHL_NO_OPTIONS;
        }
        set_be16(h, l3 + ipv4::field::LENGTH, (hl + len) as u16);
        let off = ((base + at) / 8) as u16 & ipv4::OFFSET_MASK;
        set_be16(
            h,
            l3 + ipv4::field::FLG_OFF,
            off | if more { ipv4::FLAG_MF } else { 0 },
        );
        set_be16(h, l3 + ipv4::field::CHECKSUM, 0);
        let c = checksum::checksum(&h[l3..l3 + hl]);
        set_be16(h, l3 + ipv4::field::CHECKSUM, c);
        // A WireGuard tunnel's pieces leave as inner frames, for the caller to seal.
        let outer = tunnel.map_or(0, |(t, _)| if t.wg.is_some() { 0 } else { t.outer.len() });
        let size = outer + h.len() + len;
        let mut buf = alloc(size).ok_or(DropReason::NoBuffer)?;
        let b = buf.data_mut();
        if b.len() != size {
            return Err(DropReason::NoBuffer);
        }
        b[outer..outer + h.len()].copy_from_slice(h);
        b[outer + h.len()..].copy_from_slice(&payload[at..at + len]);
        if let Some((t, nh_mac)) = tunnel.filter(|(t, _)| t.wg.is_none()) {
            if !t.outer.write(b, nh_mac, src_port) {
                return Err(DropReason::Malformed);
            }
        }
        out(port, buf);
        n += 1;
        at += len;
    }
    Ok((port, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: u32) -> FragKey {
        FragKey {
            src: [198, 51, 100, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst: [198, 18, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            id,
            proto: 17,
            v6: false,
        }
    }

    fn hit(n: u16) -> FragHit {
        FragHit {
            addr: [198, 19, 0, n as u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            delta: Delta(n),
            next_hop: n,
        }
    }

    #[test]
    fn found_until_it_expires_or_the_snapshot_changes() {
        let mut t = FragTable::new(16);
        t.insert(key(1), hit(2), 7, 1000);
        assert_eq!(t.get(&key(1), 7, 1000), Some(hit(2)));
        assert_eq!(t.get(&key(2), 7, 1000), None);
        assert_eq!(t.get(&key(1), 8, 1000), None, "another snapshot");
        assert_eq!(t.get(&key(1), 7, 1000 + FragTable::TIMEOUT_MS), None);
    }

    #[test]
    fn bounded_the_oldest_goes() {
        let mut t = FragTable::new(4); // one set of four
        for id in 0..4 {
            t.insert(key(id), hit(id as u16), 1, 100 + id as u64);
        }
        t.insert(key(9), hit(9), 1, 200);
        assert_eq!(t.get(&key(0), 1, 200), None, "the oldest was replaced");
        for id in [1, 2, 3, 9] {
            assert!(t.get(&key(id), 1, 200).is_some(), "{id}");
        }
        assert_eq!(t.memory_bytes(), 4 * std::mem::size_of::<Slot>());
    }
}
