//! What can go wrong talking to DPDK, with DPDK's own words for it.

use std::ffi::CStr;

/// An error from the DPDK layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DpdkError {
    /// A DPDK call failed; `text` is `rte_strerror(errno)`.
    #[error("{call} failed: {text} (errno {errno})")]
    Call {
        /// The DPDK function that failed.
        call: &'static str,
        /// The (positive) errno or rte_errno value it reported.
        errno: i32,
        /// DPDK's description of `errno`.
        text: String,
    },
    /// The EAL was not initialised before this call (see [`crate::dpdk::Eal`]).
    #[error("the DPDK EAL is not initialised")]
    NotInitialised,
    /// `Eal::init` was called a second time; DPDK allows one initialisation per process.
    #[error("the DPDK EAL was already initialised in this process")]
    AlreadyInitialised,
    /// An argument DPDK would reject, or could not even be handed to it.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No Ethernet port has this name, and probing it as devargs failed.
    #[error("no DPDK port named {name:?}: {reason}")]
    NoSuchPort {
        /// The name or devargs asked for.
        name: String,
        /// Why it was not found or could not be probed.
        reason: String,
    },
    /// The port or queue is already in use (configured by another `Port`, a queue
    /// handed out twice, or queue handles still alive when stopping or closing).
    #[error("port {port}: {what}")]
    Busy {
        /// The port.
        port: u16,
        /// What is in use.
        what: &'static str,
    },
    /// A function launched on an lcore panicked.
    #[error("the function launched on lcore {lcore} panicked")]
    LcorePanicked {
        /// The lcore it ran on.
        lcore: u32,
    },
}

impl DpdkError {
    /// The error for a DPDK call that returned `ret`, a negative errno.
    pub(crate) fn from_ret(call: &'static str, ret: i32) -> DpdkError {
        Self::from_errno(call, ret.saturating_abs())
    }

    /// The error for a DPDK call that failed and set `rte_errno`.
    pub(crate) fn from_rte_errno(call: &'static str) -> DpdkError {
        // SAFETY: reads the calling thread's rte_errno; no pointers involved.
        let errno = unsafe { dpdk_sys::dpdk_sys_errno() };
        Self::from_errno(call, errno)
    }

    fn from_errno(call: &'static str, errno: i32) -> DpdkError {
        DpdkError::Call {
            call,
            errno,
            text: strerror(errno),
        }
    }

    /// The errno of a failed DPDK call, if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            DpdkError::Call { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// `rte_strerror(errno)` as an owned string.
fn strerror(errno: i32) -> String {
    // SAFETY: rte_strerror returns a NUL-terminated string, either static or in a
    // thread-local buffer that stays valid until this thread's next call; it is
    // copied out at once.
    unsafe {
        let text = dpdk_sys::rte_strerror(errno);
        if text.is_null() {
            return format!("errno {errno}");
        }
        CStr::from_ptr(text).to_string_lossy().into_owned()
    }
}

/// The Linux errno values DPDK calls are checked against.
pub(crate) mod errno {
    /// Device or resource busy.
    pub const EBUSY: i32 = 16;
    /// Operation not supported.
    pub const ENOTSUP: i32 = 95;
}
