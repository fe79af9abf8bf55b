//! Goal: Every SOCKS5 message parser (server and client side) never panics and never claims more bytes than it was given.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate::fuzzing::socks5(data));
