//! Every packet view's checked constructor, getters and setters on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tarp_fuzz::views(data));
