//! The workers' clock: the CPU's time-stamp counter, as DPDK's `rte_rdtsc`, in
//! nanoseconds since the clock was made. Reading it is one instruction, where
//! `Instant::now` is a vDSO call (about 2 % of a worker's time at 20 Mpps).

use std::time::Instant;

#[cfg(target_arch = "x86_64")]
use crate::tsc::rdtsc;

/// Nanoseconds since creation, from the TSC (x86_64) or `Instant` elsewhere.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
    #[cfg(target_arch = "x86_64")]
    tsc0: u64,
    /// Nanoseconds per tick, times 2^32.
    #[cfg(target_arch = "x86_64")]
    ns_per_tick_q32: u64,
}

impl Clock {
    /// A clock starting now. Needs the EAL (which measured the TSC's rate).
    pub fn new() -> Clock {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: a plain getter of a value the EAL set at init; no arguments.
            let hz = unsafe { dpdk_sys::rte_get_tsc_hz() }.max(1);
            Clock {
                start: Instant::now(),
                tsc0: rdtsc(),
                ns_per_tick_q32: ((1_000_000_000u128 << 32) / u128::from(hz)) as u64,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Clock {
            start: Instant::now(),
        }
    }

    /// When the clock was made.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Nanoseconds since the clock was made.
    #[inline(always)]
    pub fn now_ns(&self) -> u64 {
        #[cfg(target_arch = "x86_64")]
        {
            let ticks = rdtsc().wrapping_sub(self.tsc0);
            ((u128::from(ticks) * u128::from(self.ns_per_tick_q32)) >> 32) as u64
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self.start.elapsed().as_nanos() as u64
        }
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::new()
    }
}
