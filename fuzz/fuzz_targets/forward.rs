//! Goal: the real forward path (sniffer, HTTP handler, forwarder, plan) run in-process with
//! a scripted client and a scripted origin never hangs, never hands one request another's
//! answer, always frames what it sends, and never relays or bills past the plan
//! (`tollgate::fuzzing::forward` lists the invariants and the input layout).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate::fuzzing::forward::run(data));
