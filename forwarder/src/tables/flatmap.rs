//! An immutable-after-build open-addressing hash map with batch-friendly lookups.
//!
//! Why not `hashbrown`: a worker looks up a whole burst at once, and at a million
//! circuits every lookup is a cache miss. Splitting a lookup into "hash and prefetch the
//! slot" for all 32 packets, then "probe" for each, lets those misses overlap — the
//! pattern of DPDK's `rte_hash_lookup_bulk`. hashbrown does not expose its slot
//! addresses, so this small table does. Linear probing, power-of-two size, at most half
//! full, never resized after build.

/// A key the table can hash.
pub trait Key: Copy + Eq {
    /// A well-mixed 64-bit hash.
    fn hash64(&self) -> u64;
}

#[inline]
const fn mix(mut x: u64) -> u64 {
    // The finaliser of splitmix64: cheap and good enough for addresses and ports.
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Key for u32 {
    #[inline]
    fn hash64(&self) -> u64 {
        mix(*self as u64)
    }
}

impl Key for u64 {
    #[inline]
    fn hash64(&self) -> u64 {
        mix(*self)
    }
}

impl Key for u128 {
    #[inline]
    fn hash64(&self) -> u64 {
        mix((*self as u64) ^ mix((*self >> 64) as u64))
    }
}

impl Key for (u128, u32) {
    #[inline]
    fn hash64(&self) -> u64 {
        mix(self.0.hash64() ^ self.1 as u64)
    }
}

#[derive(Clone, Copy)]
struct Slot<K, V> {
    key: K,
    val: V,
}

/// A fixed open-addressing map from `K` to `V`.
#[derive(Clone)]
pub struct FlatMap<K, V> {
    slots: Box<[Option<Slot<K, V>>]>,
    mask: usize,
    len: usize,
}

impl<K: Key, V: Copy> FlatMap<K, V> {
    /// Builds a map from `entries`. On a duplicate key, returns it.
    pub fn build(entries: impl IntoIterator<Item = (K, V)>) -> Result<Self, K> {
        let entries: Vec<(K, V)> = entries.into_iter().collect();
        let cap = (entries.len() * 2).next_power_of_two().max(8);
        let mut map = FlatMap { slots: vec![None; cap].into_boxed_slice(), mask: cap - 1, len: 0 };
        for (k, v) in entries {
            let mut i = k.hash64() as usize & map.mask;
            loop {
                match &map.slots[i] {
                    None => {
                        map.slots[i] = Some(Slot { key: k, val: v });
                        map.len += 1;
                        break;
                    }
                    Some(s) if s.key == k => return Err(k),
                    Some(_) => i = (i + 1) & map.mask,
                }
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
        if self.len == 0 {
            return;
        }
        let slot = &self.slots[hash as usize & self.mask];
        crate::prefetch::prefetch0(slot);
    }

    /// Looks up `key` whose [`Key::hash64`] is `hash` (second half of a bulk lookup).
    #[inline(always)]
    pub fn get_hashed(&self, key: &K, hash: u64) -> Option<&V> {
        if self.len == 0 {
            return None;
        }
        let mut i = hash as usize & self.mask;
        loop {
            match &self.slots[i] {
                Some(s) if s.key == *key => return Some(&s.val),
                Some(_) => i = (i + 1) & self.mask,
                None => return None,
            }
        }
    }

    /// Looks up `key`.
    #[inline]
    pub fn get(&self, key: &K) -> Option<&V> {
        self.get_hashed(key, key.hash64())
    }

    /// Every entry, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.slots.iter().flatten().map(|s| (&s.key, &s.val))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_and_get() {
        let m = FlatMap::build((0u32..1000).map(|k| (k * 7, k))).unwrap();
        assert_eq!(m.len(), 1000);
        for k in 0u32..1000 {
            assert_eq!(m.get(&(k * 7)), Some(&k));
            assert_eq!(m.get(&(k * 7 + 1)), None);
        }
        assert_eq!(m.iter().count(), 1000);
    }

    #[test]
    fn duplicate_is_reported() {
        assert_eq!(FlatMap::build([(1u64, 'a'), (2, 'b'), (1, 'c')]).err(), Some(1));
    }

    #[test]
    fn empty_finds_nothing() {
        let m: FlatMap<u128, u8> = FlatMap::empty();
        assert!(m.get(&5).is_none());
        m.prefetch(5);
    }
}
