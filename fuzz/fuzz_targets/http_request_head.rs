//! Goal: The HTTP request head parser never panics, never reads out of bounds, never claims more bytes than it was given; re-encoding an accepted head never panics.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate::fuzzing::http_request_head(data));
