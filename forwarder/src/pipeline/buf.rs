//! The packet buffer a pipeline works on: bytes plus room to grow or shrink at the front.

/// A packet in a buffer with headroom, such as a DPDK mbuf or a test's `Vec`.
///
/// The pipelines rewrite in place; encapsulation grows the packet at the front and
/// decapsulation shrinks it, so no byte of the payload is ever copied.
pub trait PacketBuf {
    /// The packet's bytes, from the first byte of its Ethernet header.
    fn data(&self) -> &[u8];
    /// The packet's bytes, mutable.
    fn data_mut(&mut self) -> &mut [u8];
    /// Grows the packet by `len` bytes at the front (the new bytes are unspecified).
    /// Returns false, leaving the packet unchanged, if the headroom is too small.
    fn prepend(&mut self, len: usize) -> bool;
    /// Removes `len` bytes from the front. Returns false, leaving the packet unchanged,
    /// if the packet is shorter than `len`.
    fn adj(&mut self, len: usize) -> bool;
    /// Keeps the first `len` bytes, dropping the tail (a decapsulated frame ends where
    /// its tunnel said). Returns false, leaving the packet unchanged, if it is shorter.
    fn truncate(&mut self, len: usize) -> bool;
}

/// A heap buffer with headroom: the pipeline's buffer in tests, benches and fuzzing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VecBuf {
    buf: Vec<u8>,
    start: usize,
}

impl VecBuf {
    /// Headroom of a DPDK mbuf (`RTE_PKTMBUF_HEADROOM`).
    pub const HEADROOM: usize = 128;

    /// A buffer holding `bytes` with [`VecBuf::HEADROOM`] bytes free in front.
    pub fn new(bytes: &[u8]) -> VecBuf {
        Self::with_headroom(bytes, Self::HEADROOM)
    }

    /// A buffer holding `bytes` with `headroom` bytes free in front.
    pub fn with_headroom(bytes: &[u8], headroom: usize) -> VecBuf {
        let mut buf = vec![0u8; headroom + bytes.len()];
        buf[headroom..].copy_from_slice(bytes);
        VecBuf {
            buf,
            start: headroom,
        }
    }

    /// Refills the buffer with `bytes`, keeping the allocation (bench loops).
    pub fn reset(&mut self, bytes: &[u8]) {
        self.buf.clear();
        self.buf.resize(Self::HEADROOM, 0);
        self.buf.extend_from_slice(bytes);
        self.start = Self::HEADROOM;
    }
}

impl PacketBuf for VecBuf {
    #[inline]
    fn data(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    #[inline]
    fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..]
    }

    #[inline]
    fn prepend(&mut self, len: usize) -> bool {
        if len > self.start {
            return false;
        }
        self.start -= len;
        true
    }

    #[inline]
    fn adj(&mut self, len: usize) -> bool {
        if len > self.buf.len() - self.start {
            return false;
        }
        self.start += len;
        true
    }

    #[inline]
    fn truncate(&mut self, len: usize) -> bool {
        if len > self.buf.len() - self.start {
            return false;
        }
        self.buf.truncate(self.start + len);
        true
    }
}
