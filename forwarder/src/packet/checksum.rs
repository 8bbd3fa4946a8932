//! Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! A rewrite of an address or port changes a few 16-bit words that both the IPv4 header
//! checksum and the TCP/UDP checksum (through the pseudo-header) cover. Instead of summing
//! the packet again, the forwarder folds the difference into the old checksum:
//! `HC' = ~(~HC + ~m + m')` (RFC 1624, eqn. 3). The difference for a circuit is fixed —
//! old address to new address — so the tables store it precomputed as a [`Delta`].

use std::net::IpAddr;

/// Adds `data` as big-endian 16-bit words to a running one's-complement sum (unfolded,
/// at most 17 bits wide on return, so that a caller may add a few more words).
///
/// Sums 32-bit words into a 64-bit accumulator (no carry to track for 16 GiB of input)
/// and folds at the end: since 2^16 = 1 modulo 0xffff, the folded sum of 32-bit words is
/// the sum of their 16-bit halves (RFC 1071, section 2(C)). No branch per word, so a
/// 20-byte IPv4 header is five adds.
#[inline]
pub fn sum(acc: u32, data: &[u8]) -> u32 {
    let mut wide = acc as u64;
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        wide += u32::from_be_bytes([w[0], w[1], w[2], w[3]]) as u64;
    }
    match *words.remainder() {
        [a, b, c] => wide += ((a as u64) << 8 | b as u64) + ((c as u64) << 8),
        [a, b] => wide += (a as u64) << 8 | b as u64,
        [a] => wide += (a as u64) << 8,
        _ => {}
    }
    wide = (wide & 0xffff_ffff) + (wide >> 32);
    wide = (wide & 0xffff_ffff) + (wide >> 32);
    let narrow = wide as u32;
    (narrow & 0xffff) + (narrow >> 16)
}

/// Folds a running sum to 16 bits (one's-complement addition of the carries).
#[inline]
pub const fn fold(mut acc: u32) -> u16 {
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc as u16
}

/// The checksum of `data` (complement of the folded sum).
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(0, data))
}

/// Sum of the TCP/UDP pseudo-header for IPv4 or IPv6 (addresses, protocol, length).
#[inline]
pub fn pseudo_header_sum(src: IpAddr, dst: IpAddr, protocol: u8, l4_len: u32) -> u32 {
    let mut acc = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => sum(sum(0, &s.octets()), &d.octets()),
        (IpAddr::V6(s), IpAddr::V6(d)) => sum(sum(0, &s.octets()), &d.octets()),
        _ => 0,
    };
    acc += protocol as u32;
    acc += l4_len >> 16;
    acc += l4_len & 0xffff;
    acc
}

/// A one's-complement difference to fold into checksums covering some rewritten words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Delta(pub u16);

impl Delta {
    /// The difference of replacing the bytes `old` by `new` (equal, even lengths).
    pub fn of(old: &[u8], new: &[u8]) -> Delta {
        debug_assert_eq!(old.len(), new.len());
        let mut acc = 0u32;
        for (o, n) in old.chunks_exact(2).zip(new.chunks_exact(2)) {
            acc += !u16::from_be_bytes([o[0], o[1]]) as u32;
            acc += u16::from_be_bytes([n[0], n[1]]) as u32;
        }
        Delta(fold(acc))
    }

    /// The difference of replacing address `old` by `new` (same family).
    pub fn of_addr(old: IpAddr, new: IpAddr) -> Delta {
        match (old, new) {
            (IpAddr::V4(o), IpAddr::V4(n)) => Delta::of(&o.octets(), &n.octets()),
            (IpAddr::V6(o), IpAddr::V6(n)) => Delta::of(&o.octets(), &n.octets()),
            _ => Delta(0),
        }
    }

    /// The difference of replacing one 16-bit word.
    #[inline]
    pub const fn of_word(old: u16, new: u16) -> Delta {
        Delta(fold((!old) as u32 + new as u32))
    }

    /// Both differences applied one after the other.
    #[inline]
    pub const fn then(self, other: Delta) -> Delta {
        Delta(fold(self.0 as u32 + other.0 as u32))
    }
}

/// Folds `delta` into the checksum `csum` (RFC 1624, eqn. 3).
#[inline]
pub const fn update(csum: u16, delta: Delta) -> u16 {
    !fold((!csum) as u32 + delta.0 as u32)
}

/// Like [`update`] for a UDP checksum: zero means "no checksum" and is kept (IPv4 only),
/// and a computed zero is sent as 0xffff (RFC 768).
#[inline]
pub const fn update_udp(csum: u16, delta: Delta) -> u16 {
    if csum == 0 {
        return 0;
    }
    match update(csum, delta) {
        0 => 0xffff,
        c => c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3 example: words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(0, &data)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn incremental_matches_full_recompute() {
        let mut data: Vec<u8> = (0..40u8).map(|b| b.wrapping_mul(37)).collect();
        let before = checksum(&data);
        let old = [data[12], data[13], data[14], data[15]];
        let new = [198, 18, 0, 3];
        data[12..16].copy_from_slice(&new);
        assert_eq!(update(before, Delta::of(&old, &new)), checksum(&data));
    }

    /// The word-at-a-time sum against the plain definition, every length and
    /// alignment up to 80 bytes, with sums that carry.
    #[test]
    fn sum_matches_definition() {
        fn slow(mut acc: u64, data: &[u8]) -> u16 {
            for c in data.chunks(2) {
                acc += (c[0] as u64) << 8 | *c.get(1).unwrap_or(&0) as u64;
            }
            while acc > 0xffff {
                acc = (acc & 0xffff) + (acc >> 16);
            }
            acc as u16
        }
        let data: Vec<u8> = (0..96u32).map(|i| (i * 193 + 0xf0) as u8 | 0x80).collect();
        for start in 0..4 {
            for len in 0..80 {
                let d = &data[start..start + len];
                for acc in [0, 1, 0xffff, 0x1_fffe] {
                    assert_eq!(
                        fold(sum(acc, d)),
                        slow(acc as u64, d),
                        "{start} {len} {acc}"
                    );
                }
            }
        }
        assert_eq!(fold(sum(0, &[0xff; 65536])), 0xffff);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(fold(sum(0, &[0xab])), 0xab00);
    }

    #[test]
    fn udp_zero_stays_zero() {
        assert_eq!(update_udp(0, Delta(0x1234)), 0);
    }
}
