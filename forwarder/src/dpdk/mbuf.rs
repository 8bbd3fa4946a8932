//! One packet in a DPDK buffer, owned.

use std::fmt;
use std::ptr::NonNull;
use std::slice;

use super::Mempool;
use crate::pipeline::PacketBuf;

/// A packet buffer (`rte_mbuf`), owned: dropping it returns it to its pool.
///
/// `#[repr(transparent)]` over the pointer, so that a slice of `Mbuf`s is the
/// `struct rte_mbuf **` array `rte_eth_rx_burst`/`rte_eth_tx_burst` take. Never null.
///
/// The forwarder does not enable scattered RX, so a packet is one segment and
/// [`Mbuf::data`] is the whole packet.
#[repr(transparent)]
pub struct Mbuf(NonNull<dpdk_sys::rte_mbuf>);

// SAFETY: an Mbuf is the only handle to its buffer (refcount 1, never shared), so it
// may move between threads; mempool puts from any thread are safe.
unsafe impl Send for Mbuf {}

/// The L4 checksum the NIC computes on transmit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4Cksum {
    /// None; only the IPv4 header checksum (if IPv4).
    None,
    /// The UDP checksum.
    Udp,
    /// The TCP checksum.
    Tcp,
}

/// Where the headers are, for TX checksum offload ([`Mbuf::set_tx_cksum`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxCksum {
    /// Ethernet header length, VLAN tags included (at most 127).
    pub l2_len: u8,
    /// IP header length, options or extension headers included (at most 511).
    pub l3_len: u16,
    /// IPv6 (no header checksum) rather than IPv4 (header checksum offloaded too).
    pub ipv6: bool,
    /// The L4 checksum to offload.
    pub l4: L4Cksum,
}

/// Every TX flag [`Mbuf::set_tx_cksum`] may set, cleared before it sets its own.
const TX_CKSUM_FLAGS: u64 = dpdk_sys::RTE_MBUF_F_TX_IPV4
    | dpdk_sys::RTE_MBUF_F_TX_IPV6
    | dpdk_sys::RTE_MBUF_F_TX_IP_CKSUM
    | dpdk_sys::RTE_MBUF_F_TX_L4_MASK;

impl Mbuf {
    /// Takes an empty mbuf from `pool`; `None` if the pool is exhausted.
    #[inline]
    pub fn alloc(pool: &Mempool) -> Option<Mbuf> {
        // SAFETY: pool points to a live mbuf pool; the result is null or an mbuf
        // now owned by nobody else.
        NonNull::new(unsafe { dpdk_sys::rte_pktmbuf_alloc(pool.as_ptr()) }).map(Mbuf)
    }

    /// An mbuf from `pool` holding a copy of `bytes`; `None` if the pool is exhausted
    /// or `bytes` does not fit in one buffer.
    pub fn from_bytes(pool: &Mempool, bytes: &[u8]) -> Option<Mbuf> {
        let mut mbuf = Mbuf::alloc(pool)?;
        mbuf.append(bytes.len())?.copy_from_slice(bytes);
        Some(mbuf)
    }

    /// The raw mbuf; ownership passes to the caller, who must free it or turn it back
    /// with [`Mbuf::from_raw`].
    #[inline]
    pub fn into_raw(self) -> *mut dpdk_sys::rte_mbuf {
        let raw = self.0.as_ptr();
        std::mem::forget(self);
        raw
    }

    /// Takes ownership of a raw mbuf.
    ///
    /// # Safety
    ///
    /// `raw` must be a valid, non-null, single-segment mbuf that nothing else owns or
    /// will free.
    #[inline]
    pub unsafe fn from_raw(raw: *mut dpdk_sys::rte_mbuf) -> Mbuf {
        debug_assert!(!raw.is_null());
        // SAFETY: the caller guarantees raw is non-null.
        Mbuf(unsafe { NonNull::new_unchecked(raw) })
    }

    /// The mbuf header, for reading fields.
    #[inline]
    fn raw(&self) -> &dpdk_sys::rte_mbuf {
        // SAFETY: self owns a valid mbuf for as long as the borrow lasts.
        unsafe { self.0.as_ref() }
    }

    /// The packet's length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        usize::from(self.raw().data_len)
    }

    /// True for a packet of no bytes (a freshly allocated mbuf).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The packet's bytes.
    #[inline]
    pub fn data(&self) -> &[u8] {
        let m = self.raw();
        // SAFETY: an mbuf's data_len bytes at buf_addr + data_off lie inside its
        // buffer; the slice borrows self, which owns the buffer.
        unsafe {
            let start = m.buf_addr.cast::<u8>().add(usize::from(m.data_off));
            slice::from_raw_parts(start, usize::from(m.data_len))
        }
    }

    /// The packet's bytes, mutable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        let m = self.raw();
        let (start, len) = (usize::from(m.data_off), usize::from(m.data_len));
        // SAFETY: as in data(); &mut self makes this the only reference to the bytes.
        unsafe { slice::from_raw_parts_mut(m.buf_addr.cast::<u8>().add(start), len) }
    }

    /// Grows the packet by `len` bytes at the end and returns them (zeroed content is
    /// not promised); `None`, leaving the packet unchanged, if the tailroom is too small.
    pub fn append(&mut self, len: usize) -> Option<&mut [u8]> {
        let len16 = u16::try_from(len).ok()?;
        // SAFETY: self owns a valid mbuf; rte_pktmbuf_append returns null (changing
        // nothing) or a pointer to len new bytes inside the buffer, which the returned
        // slice borrows through &mut self.
        unsafe {
            let tail = dpdk_sys::rte_pktmbuf_append(self.0.as_ptr(), len16);
            (!tail.is_null()).then(|| slice::from_raw_parts_mut(tail.cast::<u8>(), len))
        }
    }

    /// Free bytes in front of the packet.
    #[inline]
    pub fn headroom(&self) -> usize {
        // SAFETY: self owns a valid mbuf; the call only reads it.
        usize::from(unsafe { dpdk_sys::rte_pktmbuf_headroom(self.0.as_ptr()) })
    }

    /// Free bytes after the packet.
    #[inline]
    pub fn tailroom(&self) -> usize {
        // SAFETY: self owns a valid mbuf; the call only reads it.
        usize::from(unsafe { dpdk_sys::rte_pktmbuf_tailroom(self.0.as_ptr()) })
    }

    /// The port the packet was received on.
    #[inline]
    pub fn port(&self) -> u16 {
        self.raw().port
    }

    /// The RSS hash the NIC computed on receive, if it did.
    #[inline]
    pub fn rss_hash(&self) -> Option<u32> {
        let m = self.raw();
        if m.ol_flags & u64::from(dpdk_sys::RTE_MBUF_F_RX_RSS_HASH) == 0 {
            return None;
        }
        // SAFETY: every bit pattern is a valid u32, whichever member of the union the
        // driver wrote; the flag says it wrote the RSS hash.
        Some(unsafe { m.__bindgen_anon_2.hash.rss })
    }

    /// Asks the NIC to compute the IPv4 header checksum and the `ck.l4` checksum on
    /// transmit, and prepares the headers as DPDK requires (IPv4 checksum zeroed, L4
    /// checksum set to the pseudo-header sum). Returns false, leaving the packet
    /// unchanged, if the lengths do not fit the packet or DPDK's fields.
    ///
    /// Only for ports whose [`Port::tx_csum_offload`](super::Port::tx_csum_offload)
    /// is true; call it after the last rewrite of the headers.
    pub fn set_tx_cksum(&mut self, ck: TxCksum) -> bool {
        let l4_header = match ck.l4 {
            L4Cksum::None => 0,
            L4Cksum::Udp => 8,
            L4Cksum::Tcp => 20,
        };
        let min_l3 = if ck.ipv6 { 40 } else { 20 };
        if ck.l2_len > 127
            || ck.l3_len > 511
            || ck.l3_len < min_l3
            || usize::from(ck.l2_len) + usize::from(ck.l3_len) + l4_header > self.len()
        {
            return false;
        }
        let mut flags = if ck.ipv6 {
            dpdk_sys::RTE_MBUF_F_TX_IPV6
        } else {
            dpdk_sys::RTE_MBUF_F_TX_IPV4 | dpdk_sys::RTE_MBUF_F_TX_IP_CKSUM
        };
        flags |= match ck.l4 {
            L4Cksum::None => 0,
            L4Cksum::Udp => dpdk_sys::RTE_MBUF_F_TX_UDP_CKSUM,
            L4Cksum::Tcp => dpdk_sys::RTE_MBUF_F_TX_TCP_CKSUM,
        };
        let m = self.0.as_ptr();
        // SAFETY: self owns the mbuf (&mut: no other reference). The checks above keep
        // the lengths within their bitfields and the L2, L3 and L4 headers within the
        // first segment, which is all rte_net_intel_cksum_prepare reads and writes.
        unsafe {
            (*m).ol_flags = ((*m).ol_flags & !TX_CKSUM_FLAGS) | flags;
            let offload = dpdk_sys::rte_mbuf_tx_offload(
                u64::from(ck.l2_len),
                u64::from(ck.l3_len),
                0,
                0,
                0,
                0,
                0,
            );
            dpdk_sys::dpdk_sys_mbuf_set_tx_offload(m, offload);
            if dpdk_sys::rte_net_intel_cksum_prepare(m) != 0 {
                // It fails before writing any header; undo the flags too.
                self.clear_tx_cksum();
                return false;
            }
        }
        true
    }

    /// Removes any TX checksum offload request.
    pub fn clear_tx_cksum(&mut self) {
        let m = self.0.as_ptr();
        // SAFETY: self owns the mbuf (&mut: no other reference); plain field writes.
        unsafe {
            (*m).ol_flags &= !TX_CKSUM_FLAGS;
            dpdk_sys::dpdk_sys_mbuf_set_tx_offload(m, 0);
        }
    }

    /// Starts loading the packet's first cache line, ahead of reading its headers.
    #[inline]
    pub fn prefetch(&self) {
        if let Some(first) = self.data().first() {
            crate::prefetch::prefetch0(first);
        }
    }
}

impl Drop for Mbuf {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: self owns the mbuf and is never used again.
        unsafe { dpdk_sys::rte_pktmbuf_free(self.0.as_ptr()) }
    }
}

impl fmt::Debug for Mbuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mbuf")
            .field("len", &self.len())
            .field("headroom", &self.headroom())
            .field("port", &self.port())
            .finish()
    }
}

impl PacketBuf for Mbuf {
    #[inline]
    fn data(&self) -> &[u8] {
        Mbuf::data(self)
    }

    #[inline]
    fn data_mut(&mut self) -> &mut [u8] {
        Mbuf::data_mut(self)
    }

    #[inline]
    fn prepend(&mut self, len: usize) -> bool {
        let m = self.0.as_ptr();
        // SAFETY: self owns a valid mbuf (&mut: no other reference). The same field
        // updates as rte_pktmbuf_prepend, done here instead of through its out-of-line
        // wrapper (a call per packet): data_off, data_len and pkt_len of the first
        // segment, and nothing when the headroom is too small.
        unsafe {
            let Ok(len16) = u16::try_from(len) else {
                return false;
            };
            if len16 > (*m).data_off {
                return false;
            }
            (*m).data_off -= len16;
            (*m).data_len += len16;
            (*m).pkt_len += u32::from(len16);
        }
        true
    }

    #[inline]
    fn adj(&mut self, len: usize) -> bool {
        let m = self.0.as_ptr();
        // SAFETY: self owns a valid mbuf (&mut). As rte_pktmbuf_adj: the bytes leave
        // the first segment's front, nothing changes when that segment is shorter.
        unsafe {
            let Ok(len16) = u16::try_from(len) else {
                return false;
            };
            if len16 > (*m).data_len {
                return false;
            }
            (*m).data_off += len16;
            (*m).data_len -= len16;
            (*m).pkt_len -= u32::from(len16);
        }
        true
    }

    #[inline]
    fn truncate(&mut self, len: usize) -> bool {
        let cur = self.len();
        if len > cur {
            return false;
        }
        let Ok(cut) = u16::try_from(cur - len) else {
            return false;
        };
        if cut == 0 {
            return true;
        }
        let m = self.0.as_ptr();
        // SAFETY: self owns a valid mbuf (&mut). A single-segment mbuf (the forwarder
        // receives into one segment) loses `cut` bytes at its end, as rte_pktmbuf_trim
        // does; a chained one goes through DPDK, which finds the last segment.
        unsafe {
            if (*m).nb_segs != 1 {
                return dpdk_sys::rte_pktmbuf_trim(m, cut) == 0;
            }
            (*m).data_len -= cut;
            (*m).pkt_len -= u32::from(cut);
        }
        true
    }
}
