//! Panic isolation, via the test-only `fault-injection` feature (scripts/test.sh enables it):
//! a panic inside one connection's task must not take its executor or other connections down.
#![cfg(feature = "fault-injection")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::origin::{echo_server, http_origin};
use common::*;
use std::io::{Read, Write};

#[test]
fn a_panicking_connection_takes_nothing_else_down() {
    let cfg = config("workers = 1", DIRECT_EXIT)
        .replace("workers = 2", "")
        .replace("[log]", "[admin]\nlisten = \"127.0.0.1:0\"\n\n[log]");
    let gw = Gateway::start(&cfg);
    let echo = echo_server("127.0.0.1:0");
    let o = http_origin();
    // A tunnel on the single executor, open across the panics.
    let mut live = socks5_tunnel(gw.addr(), &Target::Addr(echo));
    for _ in 0..3 {
        let mut s = connect(gw.addr());
        let mut hello = vec![5, 1, 2, 1, 5];
        hello.extend_from_slice(b"alice\x06secret");
        hello.extend(socks_request(
            1,
            &Target::Domain("panic.fault-injection.invalid", 80),
        ));
        s.write_all(&hello).unwrap();
        // Method and auth replies, then the connection is dropped: no success reply.
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        assert_eq!(got, [5, 2, 1, 0], "{got:?}");
    }
    live.write_all(b"alive").unwrap();
    let mut b = [0u8; 5];
    live.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"alive");
    assert_eq!(http_get(gw.addr(), &o.url("/")).code, 200);
    assert_eq!(gw.metric("tollgate_panics_total"), Some(3.0));
    assert!(gw.stderr().contains("connection task panicked"));
    // The panicking connections' thread slots came back.
    drop(live);
    eventually("slots released", || {
        (gw.metric("tollgate_account_threads_active{account=\"alice\"}") == Some(0.0)).then_some(())
    });
}
