//! Goal: PROXY protocol headers (v1, v2, either) never panic the parser, never claim more
//! bytes than given, and a decision never changes when more bytes arrive.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate::fuzzing::proxy_header(data));
