//! CPU cache hints, as DPDK's `rte_prefetch0`.
//!
//! Part of the DPDK layer (the only place with `unsafe` in this crate), but compiled
//! without the `dpdk` feature too, because the pure-Rust pipelines use it in tests,
//! benches and fuzzing.

/// Asks the CPU to start loading the cache line holding `r` (like `rte_prefetch0`).
#[inline(always)]
pub fn prefetch0<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is part of SSE, which every x86_64 CPU has; a prefetch never
    // faults and does not change memory, and `r` is a valid reference anyway.
    unsafe {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((r as *const T).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}
