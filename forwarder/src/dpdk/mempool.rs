//! Pools of packet buffers, one per NUMA socket.

use std::ffi::{CStr, CString};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use super::eal::ensure_ready;
use super::DpdkError;

/// Numbers the pools [`Mempool::for_socket`] names, as DPDK wants unique names.
static NEXT_POOL: AtomicU32 = AtomicU32::new(0);

/// A DPDK mbuf pool (`rte_pktmbuf_pool_create`) with the default data room:
/// [`dpdk_sys::RTE_PKTMBUF_HEADROOM`] bytes of headroom plus 2048 bytes of packet.
///
/// A pool lives until the process exits, as in DPDK's own examples: mbufs and RX
/// queues hold no borrow of it, so freeing it could leave them dangling. That is why
/// `Mempool` is a `Copy` handle with no `Drop`.
#[derive(Debug, Clone, Copy)]
pub struct Mempool {
    raw: NonNull<dpdk_sys::rte_mempool>,
}

// SAFETY: a mempool is built for concurrent use: gets and puts are multi-producer
// multi-consumer, and every other method here only reads.
unsafe impl Send for Mempool {}
// SAFETY: as for Send; &Mempool allows nothing that is not thread-safe in DPDK.
unsafe impl Sync for Mempool {}

impl Mempool {
    /// Creates a pool named `name` (unique in the process, at most
    /// [`dpdk_sys::RTE_MEMPOOL_NAMESIZE`]` - 1` bytes) of `n_mbufs` mbufs, with a
    /// per-lcore cache of `cache` mbufs, in the memory of NUMA `socket`
    /// (`dpdk_sys::SOCKET_ID_ANY` for any).
    ///
    /// `n_mbufs` is best a power of two minus one; `cache` at most 512 and at most
    /// `n_mbufs / 1.5`.
    pub fn new(name: &str, n_mbufs: u32, cache: u32, socket: i32) -> Result<Mempool, DpdkError> {
        Self::with_data_room(name, n_mbufs, cache, socket, Self::DEFAULT_DATA_ROOM)
    }

    /// The packet bytes of an mbuf of a default pool (DPDK's 2048).
    pub const DEFAULT_DATA_ROOM: u16 =
        (dpdk_sys::RTE_MBUF_DEFAULT_BUF_SIZE - dpdk_sys::RTE_PKTMBUF_HEADROOM) as u16;

    /// As [`Mempool::new`], with `data_room` bytes of packet per mbuf (after the
    /// headroom): a frame must fit one mbuf, so jumbo ports need a larger room.
    pub fn with_data_room(
        name: &str,
        n_mbufs: u32,
        cache: u32,
        socket: i32,
        data_room: u16,
    ) -> Result<Mempool, DpdkError> {
        ensure_ready()?;
        if name.len() >= dpdk_sys::RTE_MEMPOOL_NAMESIZE as usize {
            return Err(DpdkError::InvalidArgument(format!(
                "mempool name {name:?} is longer than {} bytes",
                dpdk_sys::RTE_MEMPOOL_NAMESIZE - 1
            )));
        }
        let c_name = CString::new(name).map_err(|_| {
            DpdkError::InvalidArgument(format!("mempool name {name:?} contains a NUL byte"))
        })?;
        // SAFETY: c_name is NUL-terminated and outlives the call (DPDK copies it); the
        // EAL is up. Sizes are checked by DPDK, which fails with rte_errno.
        let raw = unsafe {
            dpdk_sys::rte_pktmbuf_pool_create(
                c_name.as_ptr(),
                n_mbufs,
                cache,
                0,
                data_room.saturating_add(dpdk_sys::RTE_PKTMBUF_HEADROOM as u16),
                socket,
            )
        };
        NonNull::new(raw)
            .map(|raw| Mempool { raw })
            .ok_or_else(|| DpdkError::from_rte_errno("rte_pktmbuf_pool_create"))
    }

    /// Creates a pool on NUMA `socket` with a name of its own (`tarp_s<socket>_<n>`).
    pub fn for_socket(
        n_mbufs: u32,
        cache: u32,
        socket: u32,
        data_room: u16,
    ) -> Result<Mempool, DpdkError> {
        let n = NEXT_POOL.fetch_add(1, Ordering::Relaxed);
        let socket_id = i32::try_from(socket)
            .map_err(|_| DpdkError::InvalidArgument(format!("socket {socket} out of range")))?;
        Mempool::with_data_room(
            &format!("tarp_s{socket}_{n}"),
            n_mbufs,
            cache,
            socket_id,
            data_room,
        )
    }

    /// The pool's name.
    pub fn name(&self) -> String {
        // SAFETY: raw points to a live mempool (pools are never freed); its name is a
        // NUL-terminated array inside it.
        unsafe { CStr::from_ptr(self.raw.as_ref().name.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    }

    /// The NUMA socket the pool's memory is on (-1: any).
    pub fn socket(&self) -> i32 {
        // SAFETY: raw points to a live mempool; plain field read.
        unsafe { self.raw.as_ref().socket_id }
    }

    /// Mbufs free in the pool, including those in per-lcore caches.
    pub fn avail_count(&self) -> u32 {
        // SAFETY: raw points to a live mempool; the count only reads it.
        unsafe { dpdk_sys::rte_mempool_avail_count(self.raw.as_ptr()) }
    }

    /// Mbufs taken from the pool and not yet returned.
    pub fn in_use_count(&self) -> u32 {
        // SAFETY: raw points to a live mempool; the count only reads it.
        unsafe { dpdk_sys::rte_mempool_in_use_count(self.raw.as_ptr()) }
    }

    /// The raw pool, for the other types of this module.
    pub(crate) fn as_ptr(&self) -> *mut dpdk_sys::rte_mempool {
        self.raw.as_ptr()
    }
}
