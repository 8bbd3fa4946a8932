//! An immutable-after-build open-addressing hash map with batch-friendly lookups.
//!
//! Why not `hashbrown`: a worker looks up a whole burst at once, and at a million
//! circuits every lookup is a cache miss. Splitting a lookup into "hash and prefetch the
//! slot" for all 32 packets, then "probe" for each, lets those misses overlap — the
//! pattern of DPDK's `rte_hash_lookup_bulk`. hashbrown does not expose its slot
//! addresses, so this small table does. Linear probing over `2 x entries` slots
//! (reached by a multiply-shift, not a power of two), no tag byte, never resized after
//! build.
//!
//! A lookup compares the first [`WINDOW`] slots from home (2 when slots are bigger than
//! 16 bytes) all at once and picks the hit
//! from a bit mask, rather than stopping at the first match: how far a key sits from its
//! home varies from packet to packet, and a probe loop that exits after one slot here
//! and three there mispredicts its branch (15-20 cycles) on a good share of lookups. At
//! load 0.5, about 97 % of keys sit within the window; the rest go on slot by slot.

/// A key the table can hash.
pub trait Key: Copy + Eq {
    /// The key marking an empty slot; it can never be stored (the unspecified address:
    /// never a capture address, alias, app host or peer).
    const EMPTY: Self;
    /// A well-mixed 64-bit hash.
    fn hash64(&self) -> u64;
}

#[inline(always)]
const fn mix(x: u64) -> u64 {
    // Two rounds of a folded multiply (as wyhash and ahash): the 128-bit product by an
    // odd constant, its halves xored. One round is linear enough in the key that
    // lattice-shaped key sets collide: port-mode keys of a few app hosts with
    // consecutive ports (address in the top bits, port in the low ones) left 24 % of
    // keys beyond the lookup window at 10k. Two rounds spread every key family tried
    // (those, the benches' keys, consecutive and strided addresses, random keys) as
    // random keys spread: 0.5 extra probes per key, 3 % beyond the window.
    let p = x as u128 * 0x9e37_79b9_7f4a_7c15;
    let y = (p as u64) ^ ((p >> 64) as u64) ^ 0x2545_f491_4f6c_dd1d;
    let q = y as u128 * 0xd6e8_feb8_6659_fd93;
    (q as u64) ^ ((q >> 64) as u64)
}

impl Key for u32 {
    const EMPTY: u32 = 0;
    #[inline(always)]
    fn hash64(&self) -> u64 {
        mix(*self as u64)
    }
}

impl Key for u64 {
    const EMPTY: u64 = 0;
    #[inline(always)]
    fn hash64(&self) -> u64 {
        mix(*self)
    }
}

impl Key for u128 {
    const EMPTY: u128 = 0;
    #[inline(always)]
    fn hash64(&self) -> u64 {
        mix((*self as u64) ^ (*self >> 64) as u64 ^ ((*self >> 64) as u64).rotate_left(31))
    }
}

impl Key for [u8; 16] {
    const EMPTY: [u8; 16] = [0; 16];
    #[inline(always)]
    fn hash64(&self) -> u64 {
        u128::from_ne_bytes(*self).hash64()
    }
}

impl Key for ([u8; 16], u32) {
    const EMPTY: ([u8; 16], u32) = ([0; 16], 0);
    #[inline(always)]
    fn hash64(&self) -> u64 {
        let a = u128::from_ne_bytes(self.0);
        mix((a as u64) ^ ((a >> 64) as u64).rotate_left(31) ^ ((self.1 as u64) << 13))
    }
}

/// Why a map cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildError<K> {
    /// The same key twice.
    Duplicate(K),
    /// The reserved [`Key::EMPTY`] key.
    Reserved,
}

/// Load factor bound, as a fraction: at most one entry per two slots.
const LOAD_NUM: usize = 1;
const LOAD_DEN: usize = 2;

/// Slots a lookup compares at once, from the key's home slot on: 4 of 16 bytes (one
/// cache line's worth), 2 of anything bigger (IPv6 keys), so that a bulk lookup's
/// prefetches stay at two per key (the line-fill buffers are few, and at a million
/// circuits every prefetch is a DRAM miss).
pub const WINDOW: usize = 4;

#[derive(Clone, Copy)]
struct Slot<K, V> {
    key: K,
    val: V,
}

/// A fixed open-addressing map from `K` to `V`.
///
/// Slots hold key and value side by side (one cache line per probe), with no tag byte:
/// an empty slot holds [`Key::EMPTY`]. The slot count is not a power of two but
/// `entries / 0.7`, reached from the hash by a multiply-shift, so a million entries do
/// not round up to two million slots.
#[derive(Clone)]
pub struct FlatMap<K, V> {
    slots: Box<[Slot<K, V>]>,
    len: usize,
}

impl<K: Key, V: Copy + Default> FlatMap<K, V> {
    /// Builds a map from `entries`.
    pub fn build(entries: impl IntoIterator<Item = (K, V)>) -> Result<Self, BuildError<K>> {
        let entries: Vec<(K, V)> = entries.into_iter().collect();
        let cap = (entries.len() * LOAD_DEN / LOAD_NUM + 1).max(8);
        let mut map = FlatMap {
            slots: vec![
                Slot {
                    key: K::EMPTY,
                    val: V::default()
                };
                cap
            ]
            .into_boxed_slice(),
            len: 0,
        };
        for (k, v) in entries {
            if k == K::EMPTY {
                return Err(BuildError::Reserved);
            }
            let mut i = map.index(k.hash64());
            loop {
                let s = &mut map.slots[i];
                if s.key == K::EMPTY {
                    *s = Slot { key: k, val: v };
                    map.len += 1;
                    break;
                }
                if s.key == k {
                    return Err(BuildError::Duplicate(k));
                }
                i = map.next(i);
            }
        }
        Ok(map)
    }

    /// An empty map.
    pub fn empty() -> Self {
        match Self::build(std::iter::empty()) {
            Ok(m) => m,
            Err(_) => unreachable!("an empty map has no duplicates"),
        }
    }

    #[inline(always)]
    fn index(&self, hash: u64) -> usize {
        ((hash as u128 * self.slots.len() as u128) >> 64) as usize
    }

    #[inline(always)]
    fn next(&self, i: usize) -> usize {
        if i + 1 == self.slots.len() {
            0
        } else {
            i + 1
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of slot memory (for sizing reports).
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.slots)
    }

    /// This table's window ([`WINDOW`] or 2).
    const WINDOW: usize = if std::mem::size_of::<Slot<K, V>>() <= 16 {
        WINDOW
    } else {
        2
    };

    /// Prefetches the window of slots `hash`'s lookup compares (first half of a bulk
    /// lookup): the cache lines of its first and last slot.
    #[inline(always)]
    pub fn prefetch(&self, hash: u64) {
        if self.len != 0 {
            let i = self.index(hash);
            crate::prefetch::prefetch0(&self.slots[i]);
            if let Some(last) = self.slots.get(i + Self::WINDOW - 1) {
                crate::prefetch::prefetch0(last);
            }
        }
    }

    /// Looks up `key` whose [`Key::hash64`] is `hash` (second half of a bulk lookup).
    #[inline(always)]
    pub fn get_hashed(&self, key: &K, hash: u64) -> Option<&V> {
        if self.len == 0 {
            return None;
        }
        let i = self.index(hash);
        // EMPTY is never stored, so a hit on an empty slot is a miss.
        if *key == K::EMPTY {
            return None;
        }
        let Some(w) = self.slots.get(i..i + Self::WINDOW) else {
            // The window would wrap around the end of the table.
            return self.probe(key, i);
        };
        let mut hit = 0u32;
        for (k, s) in w.iter().enumerate() {
            hit |= u32::from(s.key == *key) << k;
        }
        if hit != 0 {
            // Keys are stored once: a slot holding the key is its entry, wherever it is.
            return Some(&w[hit.trailing_zeros() as usize].val);
        }
        if w.iter().any(|s| s.key == K::EMPTY) {
            // A probe from home would have stopped at that empty slot.
            return None;
        }
        self.probe(key, i + Self::WINDOW)
    }

    /// The probe on from slot `i`, one slot at a time (past the window, or around the
    /// end of the table).
    #[cold]
    #[inline(never)]
    fn probe(&self, key: &K, mut i: usize) -> Option<&V> {
        if i >= self.slots.len() {
            i -= self.slots.len();
        }
        loop {
            let s = &self.slots[i];
            if s.key == *key {
                return Some(&s.val);
            }
            if s.key == K::EMPTY {
                return None;
            }
            i = self.next(i);
        }
    }

    /// Looks up `key`.
    #[inline]
    pub fn get(&self, key: &K) -> Option<&V> {
        self.get_hashed(key, key.hash64())
    }

    /// Every entry, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.slots
            .iter()
            .filter(|s| s.key != K::EMPTY)
            .map(|s| (&s.key, &s.val))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_and_get() {
        let m = FlatMap::build((1u32..=1000).map(|k| (k * 7, k))).unwrap();
        assert_eq!(m.len(), 1000);
        for k in 1u32..=1000 {
            assert_eq!(m.get(&(k * 7)), Some(&k));
            assert_eq!(m.get(&(k * 7 + 1)), None);
        }
        assert_eq!(m.iter().count(), 1000);
    }

    #[test]
    fn duplicate_is_reported() {
        assert_eq!(
            FlatMap::build([(1u64, 'a'), (2, 'b'), (1, 'c')]).err(),
            Some(BuildError::Duplicate(1))
        );
        assert_eq!(
            FlatMap::build([(0u32, 'a')]).err(),
            Some(BuildError::Reserved)
        );
    }

    /// Keys whose hash is chosen: clusters longer than the window, homes whose window
    /// wraps around the end of the table.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    struct Chosen(u64, u64);

    impl Key for Chosen {
        const EMPTY: Chosen = Chosen(0, 0);
        fn hash64(&self) -> u64 {
            self.1
        }
    }

    #[test]
    fn clusters_past_the_window_and_around_the_end() {
        // 8 keys on one home near the end (the window wraps; the probe goes past it),
        // 8 on one home in the middle, and 4 spread out.
        let near_end = u64::MAX - 1;
        let mid = u64::MAX / 2;
        let mut keys: Vec<Chosen> = (1..=8).map(|k| Chosen(k, near_end)).collect();
        keys.extend((11..=18).map(|k| Chosen(k, mid)));
        keys.extend((21..=24).map(|k| Chosen(k, k << 58)));
        let m = FlatMap::build(keys.iter().map(|&k| (k, k.0))).unwrap();
        for k in &keys {
            assert_eq!(m.get(k), Some(&k.0), "{k:?}");
            m.prefetch(k.1);
        }
        // Misses on the same homes: past the clusters, they end at an empty slot.
        for home in [near_end, mid, 21 << 58, 0] {
            assert_eq!(m.get(&Chosen(99, home)), None);
        }
        assert_eq!(m.get(&Chosen::EMPTY), None);
    }

    #[test]
    fn random_keys_hit_and_miss() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let keys: Vec<u64> = (0..50_000).map(|_| next() | 1).collect();
        let m = FlatMap::build(keys.iter().map(|&k| (k, k ^ 5))).unwrap();
        for k in &keys {
            assert_eq!(m.get(k), Some(&(k ^ 5)));
        }
        // Even keys were never stored.
        for _ in 0..50_000 {
            assert_eq!(m.get(&(next() & !1)), None);
        }
    }

    #[test]
    fn empty_finds_nothing() {
        let m: FlatMap<u128, u8> = FlatMap::empty();
        assert!(m.get(&5).is_none());
        assert!(m.get(&0).is_none());
        m.prefetch(5);
    }
}
