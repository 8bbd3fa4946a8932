//! Handing mbufs from the workers to the control thread.
//!
//! A lock-free bounded queue (`crossbeam_queue::ArrayQueue`) rather than an
//! `rte_ring`: `Mbuf` is `Send`, so Rust's ownership does the bookkeeping, nothing
//! needs naming in DPDK's memzones, and no `unsafe` is involved. A push is one
//! compare-and-swap, fit for the per-packet path; it never blocks.

use crossbeam_queue::ArrayQueue;

use super::Mbuf;

/// A bounded multi-producer multi-consumer queue of mbufs (workers push, the control
/// thread pops). Mbufs still queued are freed when it is dropped.
#[derive(Debug)]
pub struct MbufQueue {
    queue: ArrayQueue<Mbuf>,
}

impl MbufQueue {
    /// A queue holding at most `capacity` mbufs (at least 1).
    pub fn new(capacity: usize) -> MbufQueue {
        MbufQueue {
            queue: ArrayQueue::new(capacity.max(1)),
        }
    }

    /// Queues `mbuf`; if the queue is full the mbuf is freed and false returned,
    /// for the caller to count.
    #[inline]
    pub fn push(&self, mbuf: Mbuf) -> bool {
        self.queue.push(mbuf).is_ok()
    }

    /// Takes the oldest mbuf.
    #[inline]
    pub fn pop(&self) -> Option<Mbuf> {
        self.queue.pop()
    }

    /// Mbufs queued.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The most mbufs the queue holds.
    pub fn capacity(&self) -> usize {
        self.queue.capacity()
    }
}
