//! Bursts of mbufs in fixed arrays, and the per-(worker, port) TX buffer.

use std::mem::MaybeUninit;
use std::ops::{Deref, DerefMut};
use std::{ptr, slice};

use super::{Mbuf, Mempool, TxQueue};

/// Packets per burst: what one `rte_eth_rx_burst`/`rte_eth_tx_burst` call moves.
pub const BURST: usize = 32;

/// Up to [`BURST`] mbufs in a fixed array: a worker's burst lives on its stack, with
/// no allocation per burst. Dereferences to `[Mbuf]`; dropping it frees what it holds.
pub struct MbufBurst {
    /// `mbufs[..len]` are initialised and owned.
    len: usize,
    mbufs: [MaybeUninit<Mbuf>; BURST],
}

impl MbufBurst {
    /// An empty burst.
    pub const fn new() -> MbufBurst {
        MbufBurst {
            len: 0,
            mbufs: [const { MaybeUninit::uninit() }; BURST],
        }
    }

    /// Mbufs held.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the burst holds nothing.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when the burst holds [`BURST`] mbufs.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.len == BURST
    }

    /// Adds `mbuf` at the end, or gives it back if the burst is full.
    #[inline]
    pub fn push(&mut self, mbuf: Mbuf) -> Result<(), Mbuf> {
        if self.is_full() {
            return Err(mbuf);
        }
        self.mbufs[self.len].write(mbuf);
        self.len += 1;
        Ok(())
    }

    /// Takes the last mbuf out.
    #[inline]
    pub fn pop(&mut self) -> Option<Mbuf> {
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        // SAFETY: slot len was initialised and, with len lowered, is no longer owned
        // by the burst, so it is read out exactly once.
        Some(unsafe { self.mbufs[self.len].assume_init_read() })
    }

    /// Takes every mbuf out, in order; those the iterator does not yield are freed
    /// when it is dropped.
    #[inline]
    pub fn drain(&mut self) -> Drain<'_> {
        let len = std::mem::replace(&mut self.len, 0);
        Drain {
            slots: self.mbufs[..len].iter_mut(),
        }
    }

    /// Frees every mbuf held.
    #[inline]
    pub fn clear(&mut self) {
        let len = std::mem::replace(&mut self.len, 0);
        if len > 0 {
            // SAFETY: the first len slots held owned mbufs, which the burst no longer
            // owns (len is 0), so each is freed exactly once.
            unsafe { dpdk_sys::rte_pktmbuf_free_bulk(self.raw_slots(0), len as u32) };
        }
    }

    /// Fills `n` more slots with fresh mbufs from `pool`, all or none; false if the
    /// pool has fewer than `n` or the burst has no room for them.
    pub fn alloc_bulk(&mut self, pool: &Mempool, n: usize) -> bool {
        if n > BURST - self.len {
            return false;
        }
        // SAFETY: the n slots from len on are free; rte_pktmbuf_alloc_bulk fills all
        // of them with owned mbufs (returning 0) or none (non-zero).
        let ret = unsafe {
            dpdk_sys::rte_pktmbuf_alloc_bulk(pool.as_ptr(), self.raw_slots(self.len), n as u32)
        };
        if ret != 0 {
            return false;
        }
        self.len += n;
        true
    }

    /// The slots from `from` on as the `struct rte_mbuf **` DPDK's burst calls take
    /// (`Mbuf` is a transparent non-null pointer).
    #[inline]
    pub(crate) fn raw_slots(&mut self, from: usize) -> *mut *mut dpdk_sys::rte_mbuf {
        self.mbufs[from..].as_mut_ptr().cast()
    }

    /// Records that DPDK wrote `n` owned mbufs into the slots from `len` on.
    ///
    /// # Safety
    ///
    /// Those `n` slots (within the array) must now hold valid mbufs owned by nobody else.
    #[inline]
    pub(crate) unsafe fn grow(&mut self, n: usize) {
        debug_assert!(self.len + n <= BURST);
        self.len += n;
    }

    /// Forgets the first `n` mbufs, which DPDK took, and moves the rest to the front.
    ///
    /// # Safety
    ///
    /// DPDK must have taken ownership of the first `n` (`n <= len`).
    #[inline]
    pub(crate) unsafe fn forget_front(&mut self, n: usize) {
        debug_assert!(n <= self.len);
        let rest = self.len - n;
        // SAFETY: slots n..len are initialised; copying them (overlapping) to 0..rest
        // moves their ownership, and lowering len leaves every mbuf owned once.
        unsafe { ptr::copy(self.mbufs.as_ptr().add(n), self.mbufs.as_mut_ptr(), rest) };
        self.len = rest;
    }
}

/// The bytes of a burst's frames.
#[inline]
pub fn bytes_of(burst: &[Mbuf]) -> u64 {
    burst.iter().map(|m| m.len() as u64).sum()
}

impl Default for MbufBurst {
    fn default() -> MbufBurst {
        MbufBurst::new()
    }
}

impl Deref for MbufBurst {
    type Target = [Mbuf];

    #[inline]
    fn deref(&self) -> &[Mbuf] {
        // SAFETY: the first len slots are initialised Mbufs.
        unsafe { slice::from_raw_parts(self.mbufs.as_ptr().cast::<Mbuf>(), self.len) }
    }
}

impl DerefMut for MbufBurst {
    #[inline]
    fn deref_mut(&mut self) -> &mut [Mbuf] {
        // SAFETY: the first len slots are initialised Mbufs, borrowed mutably through self.
        unsafe { slice::from_raw_parts_mut(self.mbufs.as_mut_ptr().cast::<Mbuf>(), self.len) }
    }
}

impl Drop for MbufBurst {
    fn drop(&mut self) {
        self.clear();
    }
}

impl std::fmt::Debug for MbufBurst {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// The mbufs of a burst, taken out in order by [`MbufBurst::drain`].
pub struct Drain<'a> {
    /// Initialised slots the burst no longer owns; each is read once.
    slots: slice::IterMut<'a, MaybeUninit<Mbuf>>,
}

impl Iterator for Drain<'_> {
    type Item = Mbuf;

    #[inline]
    fn next(&mut self) -> Option<Mbuf> {
        // SAFETY: each slot was initialised and is yielded (moved out) only once.
        self.slots
            .next()
            .map(|slot| unsafe { slot.assume_init_read() })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.slots.size_hint()
    }
}

impl ExactSizeIterator for Drain<'_> {}

impl Drop for Drain<'_> {
    fn drop(&mut self) {
        // Frees the mbufs not taken.
        self.by_ref().for_each(drop);
    }
}

/// A TX queue with a burst in front of it, one per (worker, port): packets are sent
/// [`BURST`] at a time, and what the device will not take is dropped and counted. What
/// the device accepted is counted too ([`TxBuffer::sent`]): the port's TX counters.
#[derive(Debug)]
pub struct TxBuffer {
    queue: TxQueue,
    burst: MbufBurst,
    counts: TxCounts,
}

/// What a [`TxBuffer`] sent and dropped.
#[derive(Debug, Default)]
struct TxCounts {
    dropped: u64,
    sent: u64,
    sent_bytes: u64,
}

impl TxCounts {
    /// Offers `burst` to `queue` twice at most, frees what it did not take, counts;
    /// returns how many packets were freed unsent.
    #[inline(always)]
    fn send(&mut self, queue: &mut TxQueue, burst: &mut MbufBurst) -> usize {
        if burst.is_empty() {
            return 0;
        }
        let (offered, bytes) = (burst.len(), bytes_of(burst));
        queue.tx_burst(burst);
        if !burst.is_empty() {
            queue.tx_burst(burst);
        }
        let dropped = burst.len();
        let mut sent_bytes = bytes;
        if dropped > 0 {
            sent_bytes -= bytes_of(burst);
            burst.clear();
        }
        self.sent += (offered - dropped) as u64;
        self.sent_bytes += sent_bytes;
        self.dropped += dropped as u64;
        dropped
    }
}

impl TxBuffer {
    /// An empty buffer in front of `queue`.
    pub fn new(queue: TxQueue) -> TxBuffer {
        TxBuffer {
            queue,
            burst: MbufBurst::new(),
            counts: TxCounts::default(),
        }
    }

    /// Queues `mbuf`, sending the burst when it becomes full; returns how many
    /// packets that send dropped (0 if it did not send).
    #[inline]
    pub fn push(&mut self, mbuf: Mbuf) -> usize {
        // Never full here: a full burst is flushed before push returns.
        if let Err(mbuf) = self.burst.push(mbuf) {
            drop(mbuf);
            self.counts.dropped += 1;
            return 1;
        }
        if self.burst.is_full() {
            self.flush()
        } else {
            0
        }
    }

    /// Sends what is queued. The device may take only part: the rest is offered once
    /// more, then freed. Returns how many packets were freed unsent.
    #[inline]
    pub fn flush(&mut self) -> usize {
        let TxBuffer {
            queue,
            burst,
            counts,
        } = self;
        counts.send(queue, burst)
    }

    /// Sends a whole burst, every packet of which goes to this queue, without copying
    /// it into the buffer (what is already queued goes first, to keep the order).
    /// Returns how many packets were freed unsent; `burst` is left empty.
    #[inline]
    pub fn send_burst(&mut self, burst: &mut MbufBurst) -> usize {
        self.flush() + self.counts.send(&mut self.queue, burst)
    }

    /// Packets the device accepted since the buffer was made.
    #[inline]
    pub fn sent(&self) -> u64 {
        self.counts.sent
    }

    /// Their bytes (frames as handed to the device, without FCS).
    #[inline]
    pub fn sent_bytes(&self) -> u64 {
        self.counts.sent_bytes
    }

    /// Packets queued and not yet sent.
    #[inline]
    pub fn len(&self) -> usize {
        self.burst.len()
    }

    /// True when nothing is queued.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.burst.is_empty()
    }

    /// Packets dropped unsent since the buffer was made.
    pub fn dropped(&self) -> u64 {
        self.counts.dropped
    }

    /// The queue the buffer sends on.
    pub fn queue(&self) -> &TxQueue {
        &self.queue
    }

    /// Sends what is queued and gives the queue back.
    pub fn into_queue(mut self) -> TxQueue {
        self.flush();
        let TxBuffer { queue, burst, .. } = self;
        drop(burst);
        queue
    }
}
