//! Longest-prefix match over a handful of prefix lengths.
//!
//! A forwarder's route table is small (a default route, a few on-link prefixes), so one
//! exact-match [`FlatMap`] per distinct prefix length, searched from the longest, costs a
//! few probes and no allocation. Lookups of addresses known at build time (app hosts,
//! tunnel peers) are resolved once when the snapshot is built, not per packet.

use super::flatmap::{FlatMap, Key};

/// An address type the LPM can mask: `u32` (IPv4) or `u128` (IPv6).
pub trait Prefixable: Key + Ord {
    /// Address width in bits.
    const BITS: u8;
    /// The address with all but the first `len` bits cleared.
    fn mask(self, len: u8) -> Self;
}

impl Prefixable for u32 {
    const BITS: u8 = 32;
    #[inline]
    fn mask(self, len: u8) -> u32 {
        if len == 0 {
            0
        } else {
            self & (u32::MAX << (32 - len as u32))
        }
    }
}

impl Prefixable for u128 {
    const BITS: u8 = 128;
    #[inline]
    fn mask(self, len: u8) -> u128 {
        if len == 0 {
            0
        } else {
            self & (u128::MAX << (128 - len as u32))
        }
    }
}

/// A longest-prefix-match table from prefixes of `A` to values `V`.
#[derive(Clone)]
pub struct Lpm<A, V> {
    /// (prefix length, exact-match table of masked prefixes), longest first, length > 0.
    levels: Vec<(u8, FlatMap<A, V>)>,
    /// The default route (length 0).
    default: Option<V>,
}

impl<A: Prefixable, V: Copy + Default> Lpm<A, V> {
    /// Builds from (address, length, value). A prefix given twice, or a prefix of the
    /// unspecified address other than the default route, is returned as an error.
    pub fn build(routes: impl IntoIterator<Item = (A, u8, V)>) -> Result<Self, (A, u8)> {
        let mut by_len: Vec<(u8, Vec<(A, V)>)> = Vec::new();
        let mut default = None;
        for (a, len, v) in routes {
            let len = len.min(A::BITS);
            if len == 0 {
                if default.replace(v).is_some() {
                    return Err((a.mask(0), 0));
                }
                continue;
            }
            match by_len.iter_mut().find(|(l, _)| *l == len) {
                Some((_, e)) => e.push((a.mask(len), v)),
                None => by_len.push((len, vec![(a.mask(len), v)])),
            }
        }
        by_len.sort_by_key(|l| std::cmp::Reverse(l.0));
        let mut levels = Vec::with_capacity(by_len.len());
        for (len, entries) in by_len {
            let first = entries[0].0;
            let map = FlatMap::build(entries).map_err(|e| match e {
                super::flatmap::BuildError::Duplicate(a) => (a, len),
                super::flatmap::BuildError::Reserved => (first.mask(0), len),
            })?;
            levels.push((len, map));
        }
        Ok(Lpm { levels, default })
    }

    /// The value of the longest prefix covering `addr` (inlined: the remux routes every
    /// packet, and a call per packet cost it 2-3 cycles).
    #[inline(always)]
    pub fn lookup(&self, addr: A) -> Option<&V> {
        for (len, map) in &self.levels {
            if let Some(v) = map.get(&addr.mask(*len)) {
                return Some(v);
            }
        }
        self.default.as_ref()
    }

    /// Number of prefixes.
    pub fn len(&self) -> usize {
        self.levels.iter().map(|(_, m)| m.len()).sum::<usize>() + self.default.is_some() as usize
    }

    /// True without prefixes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn a(s: &str) -> u32 {
        u32::from(s.parse::<Ipv4Addr>().unwrap())
    }

    #[test]
    fn longest_wins() {
        let lpm = Lpm::build([
            (0, 0, 'd'),
            (a("198.51.100.0"), 24, 'n'),
            (a("198.51.100.128"), 25, 'h'),
        ])
        .unwrap();
        assert_eq!(lpm.lookup(a("198.51.100.10")), Some(&'n'));
        assert_eq!(lpm.lookup(a("198.51.100.200")), Some(&'h'));
        assert_eq!(lpm.lookup(a("203.0.113.1")), Some(&'d'));
        let no_default = Lpm::build([(a("198.51.100.0"), 24, 1u8)]).unwrap();
        assert_eq!(no_default.lookup(a("203.0.113.1")), None);
    }

    #[test]
    fn host_bits_are_ignored_and_duplicates_refused() {
        let e = Lpm::build([(a("198.51.100.7"), 24, 1u8), (a("198.51.100.0"), 24, 2)]).err();
        assert_eq!(e, Some((a("198.51.100.0"), 24)));
    }

    #[test]
    fn ipv6() {
        let p: u128 = "2001:db8:1::".parse::<std::net::Ipv6Addr>().unwrap().into();
        let lpm = Lpm::build([(p, 48, 7u8)]).unwrap();
        let h: u128 = "2001:db8:1::10"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .into();
        assert_eq!(lpm.lookup(h), Some(&7));
        assert_eq!(lpm.lookup(h ^ (1 << 100)), None);
    }
}
