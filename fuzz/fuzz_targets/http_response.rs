//! Goal: Response head parsing and body framing never panic; the chunked decoder never claims more bytes than it was given, whatever the split.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate::fuzzing::http_response(data));
