//! The CPU's time-stamp counter, as DPDK's `rte_rdtsc`: what the workers' clock and the
//! stage bench count in.
//!
//! Part of the DPDK layer (the only place with `unsafe` in this crate), but compiled
//! without the `dpdk` feature too, for the pure-Rust benches.

/// The time-stamp counter (x86_64: one RDTSC), or 0 where there is none.
#[inline(always)]
pub fn rdtsc() -> u64 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: RDTSC exists on every x86_64 CPU, reads a counter and touches no memory.
    unsafe {
        core::arch::x86_64::_rdtsc()
    }
    #[cfg(not(target_arch = "x86_64"))]
    0
}
