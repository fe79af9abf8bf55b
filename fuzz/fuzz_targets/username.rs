//! Goal: The username grammar never panics; an accepted username's account is a prefix of it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate::fuzzing::username(data));
