//! A one-hash bit filter over a map's keys: "certainly not a key" in one cache line,
//! without touching the map.
//!
//! The aggregator asks of every packet whether its *source* is one of its capture
//! addresses (a martian: nobody on the Internet sends from them). Nearly every source is
//! not; probing the aggregator map for each would cost a second table miss per packet at
//! a million circuits. A filter of 16 bits per key answers "no" for all but about 6 % of
//! sources from a table a sixteenth the size of the map's slots (a few KiB at 10,000
//! circuits, 2 MiB at a million), and only a "maybe" goes on to the map.

/// Bits per key (a power of two): the false-positive rate is about 1 - e^(-1/16).
const BITS_PER_KEY: usize = 16;
/// The largest filter, in bits (2 MiB): past a million keys it fills up and says
/// "maybe" more often, which is only slower, never wrong.
const MAX_BITS: usize = 1 << 24;

/// The filter.
#[derive(Clone)]
pub struct KeyFilter {
    words: Box<[u64]>,
    /// A hash's top `64 - shift` bits pick its bit.
    shift: u32,
}

impl KeyFilter {
    /// A filter holding the `len` keys with these hashes (from `Key::hash64`).
    pub fn build(len: usize, hashes: impl Iterator<Item = u64>) -> KeyFilter {
        let bits = (len * BITS_PER_KEY).next_power_of_two().clamp(64, MAX_BITS);
        let mut f = KeyFilter {
            words: vec![0u64; bits / 64].into_boxed_slice(),
            shift: 64 - bits.trailing_zeros(),
        };
        for h in hashes {
            let b = f.bit(h);
            f.words[b / 64] |= 1 << (b % 64);
        }
        f
    }

    #[inline(always)]
    fn bit(&self, hash: u64) -> usize {
        (hash >> self.shift) as usize
    }

    /// False if no key has this hash; true if one may.
    #[inline(always)]
    pub fn maybe(&self, hash: u64) -> bool {
        let b = self.bit(hash);
        // `bit` is below `words.len() * 64` by construction (the shift keeps exactly
        // log2(bits) bits); `get` keeps it safe and costs one compare.
        self.words
            .get(b / 64)
            .is_some_and(|w| w & (1 << (b % 64)) != 0)
    }

    /// Starts loading the word for `hash` into the cache.
    #[inline(always)]
    pub fn prefetch(&self, hash: u64) {
        let b = self.bit(hash);
        if let Some(w) = self.words.get(b / 64) {
            crate::prefetch::prefetch0(w);
        }
    }

    /// Size in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.words.len() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::Key;

    #[test]
    fn no_false_negatives_and_few_false_positives() {
        let keys: Vec<u32> = (0..10_000u32).map(|i| 0xcb00_7100 + i * 7).collect();
        let f = KeyFilter::build(keys.len(), keys.iter().map(|k| k.hash64()));
        assert!(keys.iter().all(|k| f.maybe(k.hash64())));
        let others = (0..100_000u32).map(|i| 0xc633_6400 ^ (i * 13 + 1));
        let maybes = others
            .filter(|k| !keys.contains(k))
            .filter(|k| f.maybe(k.hash64()))
            .count();
        // About 6 % expected; allow for an unlucky hash.
        assert!(maybes < 10_000, "{maybes} of 100,000");
        assert_eq!(f.memory_bytes(), (10_000 * 16usize).next_power_of_two() / 8);
        let empty = KeyFilter::build(0, std::iter::empty());
        assert!(!empty.maybe(7u32.hash64()));
    }
}
