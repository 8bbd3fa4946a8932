//! The demux pipeline on arbitrary bursts: no panic, every verdict consistent
//! (`tarp_fuzz::run` describes the input format and the checks).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tarp_fuzz::run(tarp_fuzz::demux(), data));
