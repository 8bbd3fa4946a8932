//! An immutable-after-build open-addressing hash map with batch-friendly lookups.
//!
//! Why not `hashbrown`: a worker looks up a whole burst at once, and at a million
//! circuits every lookup is a cache miss. Splitting a lookup into "hash and prefetch the
//! slot" for all 32 packets, then "probe" for each, lets those misses overlap — the
//! pattern of DPDK's `rte_hash_lookup_bulk`. hashbrown does not expose its slot
//! addresses, so this small table does. Linear probing over `entries / 0.7` slots
//! (reached by a multiply-shift, not a power of two), no tag byte, never resized after
//! build.

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
    // Fibonacci hashing: one multiply by 2^64/phi. The table takes its slot from the
    // product's high bits (a multiply-shift), which every key bit reaches.
    (x ^ (x >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15)
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

/// Load factor bound, as a fraction: at most 7 entries per 10 slots.
const LOAD_NUM: usize = 1;
const LOAD_DEN: usize = 2;

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

    /// Prefetches the first slot `hash` probes (first half of a bulk lookup).
    #[inline(always)]
    pub fn prefetch(&self, hash: u64) {
        if self.len != 0 {
            let i = self.index(hash);
            crate::prefetch::prefetch0(&self.slots[i]);
            // A probe goes on to the next slots: when the home slot ends in the next
            // cache line (or the slots are small enough that a probe of two crosses
            // one), that line is loaded too.
            if let Some(next) = self.slots.get(i + 1) {
                crate::prefetch::prefetch0(next);
            }
        }
    }

    /// Looks up `key` whose [`Key::hash64`] is `hash` (second half of a bulk lookup).
    #[inline(always)]
    pub fn get_hashed(&self, key: &K, hash: u64) -> Option<&V> {
        if self.len == 0 {
            return None;
        }
        let mut i = self.index(hash);
        loop {
            let s = &self.slots[i];
            if s.key == *key {
                // EMPTY is never stored, so a hit on an empty slot is a miss.
                return if *key == K::EMPTY { None } else { Some(&s.val) };
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

    #[test]
    fn empty_finds_nothing() {
        let m: FlatMap<u128, u8> = FlatMap::empty();
        assert!(m.get(&5).is_none());
        assert!(m.get(&0).is_none());
        m.prefetch(5);
    }
}
