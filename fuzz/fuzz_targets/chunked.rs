//! Goal: The chunked decoder never panics, never loops without progress, and only reports payload inside the bytes it consumed, whatever the split.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate::fuzzing::chunked(data));
