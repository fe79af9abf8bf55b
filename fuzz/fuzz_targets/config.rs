//! Goal: The config loader never panics on any text: it returns a snapshot or an error message.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate::fuzzing::config(data));
