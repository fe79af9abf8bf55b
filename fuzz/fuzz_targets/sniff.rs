//! Goal: The sniffer never panics, and a decision never changes when more bytes arrive.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate::fuzzing::sniff(data));
