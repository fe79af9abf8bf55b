//! The gateway as a process: sniffing garbage, timeouts, drain, reload, `check`, workers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::origin::{echo_server, http_origin};
use common::*;
use std::io::{Read, Write};
use std::process::Command;

#[test]
fn garbage_first_bytes_are_closed_and_serving_continues() {
    let gw = Gateway::start(&config("", DIRECT_EXIT));
    let o = http_origin();
    for garbage in [&b"hello\r\n"[..], b"\xff\xfe", b"\x15\x03\x01\x00\x02"] {
        let mut s = connect(gw.addr());
        s.write_all(garbage).unwrap();
        let mut got = Vec::new();
        // Closed without a single reply byte that could be mistaken for success.
        let _ = s.read_to_end(&mut got);
        assert!(got.is_empty(), "{garbage:?} got {got:?}");
    }
    // A TLS ClientHello on this listener without a certificate: a TLS alert, not silence
    // (tests/https_proxy.rs has the listener that serves it).
    let mut s = connect(gw.addr());
    s.write_all(b"\x16\x03\x01\x02\x00").unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert_eq!(got, [0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x28]);
    assert_eq!(http_get(gw.addr(), &o.url("/")).code, 200);
}

#[test]
fn handshake_timeout_closes_silent_clients() {
    let gw = Gateway::start(&config("handshake_timeout = \"300ms\"", DIRECT_EXIT));
    // Silent from the start, stalled mid-greeting, stalled after auth, half an HTTP head.
    let partials: [&[u8]; 4] = [
        b"",
        b"\x05\x01",
        b"\x05\x01\x02\x01\x05alice\x06secret",
        b"GET http://127.0.0.1/ HTTP/1.1\r\nHost:",
    ];
    for p in partials {
        let mut s = connect(gw.addr());
        s.write_all(p).unwrap();
        assert!(closed_by_peer(&mut s), "{p:?}");
    }
}

#[test]
fn idle_tunnels_are_closed() {
    let gw = Gateway::start(&config("idle_timeout = \"300ms\"", DIRECT_EXIT));
    let echo = echo_server("127.0.0.1:0");
    let mut s = socks5_tunnel(gw.addr(), &Target::Addr(echo));
    s.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");
    assert!(closed_by_peer(&mut s));
}

#[test]
fn sigterm_drains_live_tunnels_then_exits_zero() {
    let mut gw = Gateway::start(&config("drain_timeout = \"20s\"", DIRECT_EXIT));
    let echo = echo_server("127.0.0.1:0");
    let mut live = socks5_tunnel(gw.addr(), &Target::Addr(echo));
    gw.signal(libc::SIGTERM);
    // New connections are refused once every core stopped accepting.
    let deadline = std::time::Instant::now() + WAIT;
    while std::net::TcpStream::connect(gw.addr()).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "still accepting after SIGTERM"
        );
        std::thread::yield_now();
    }
    // The live tunnel keeps working during the drain.
    live.write_all(b"still here").unwrap();
    let mut b = [0u8; 10];
    live.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"still here");
    assert!(
        gw.child.try_wait().unwrap().is_none(),
        "exited before the tunnel closed"
    );
    drop(live);
    assert_eq!(gw.wait_exit(), Some(0));
}

#[test]
fn drain_timeout_bounds_the_wait() {
    let mut gw = Gateway::start(&config("drain_timeout = \"200ms\"", DIRECT_EXIT));
    let echo = echo_server("127.0.0.1:0");
    let mut live = socks5_tunnel(gw.addr(), &Target::Addr(echo));
    gw.signal(libc::SIGINT);
    assert_eq!(gw.wait_exit(), Some(0));
    assert!(closed_by_peer(&mut live));
}

#[test]
fn more_workers_than_cores() {
    let cfg = config("", DIRECT_EXIT).replace("workers = 2", "workers = 5");
    let gw = Gateway::start(&cfg);
    let o = http_origin();
    for _ in 0..20 {
        assert_eq!(http_get(gw.addr(), &o.url("/")).code, 200);
    }
    assert!(gw.stderr().contains("workers=5"));
}

#[test]
fn sighup_reloads_users_without_dropping_tunnels() {
    let gw = Gateway::start(&config("", DIRECT_EXIT));
    let echo = echo_server("127.0.0.1:0");
    let o = http_origin();
    let mut live = socks5_tunnel(gw.addr(), &Target::Addr(echo));
    let get_as = |user: &str| {
        let raw = format!(
            "GET {} HTTP/1.1\r\nProxy-Authorization: {}\r\n\r\n",
            o.url("/"),
            basic(user, "pw2")
        );
        http_raw(gw.addr(), raw.as_bytes()).1.code
    };
    assert_eq!(get_as("bob"), 407);
    let mut cfg = std::fs::read_to_string(gw.config_path()).unwrap();
    cfg.push_str("\n[[user]]\nname = \"bob\"\npassword = \"pw2\"\nplan = \"basic\"\nnetworks = [\"residential\"]\n");
    std::fs::write(gw.config_path(), &cfg).unwrap();
    gw.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + WAIT;
    while get_as("bob") != 200 {
        assert!(std::time::Instant::now() < deadline, "reload not applied");
        std::thread::yield_now();
    }
    // An invalid file is refused and the running config stays.
    std::fs::write(gw.config_path(), "[server]\nworkers = \"many\"\n").unwrap();
    gw.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + WAIT;
    while !gw.stderr().contains("reload rejected") {
        assert!(
            std::time::Instant::now() < deadline,
            "bad reload not reported"
        );
        std::thread::yield_now();
    }
    assert_eq!(get_as("bob"), 200);
    live.write_all(b"alive").unwrap();
    let mut b = [0u8; 5];
    live.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"alive");
}

/// `tollgate check --config PATH`: (exit code, stdout, stderr).
fn check(path: &std::path::Path) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_command_on_good_and_bad_configs() {
    let dir = tempfile::tempdir().unwrap();
    let example = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml"));
    let (code, out, err) = check(example);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(": ok ("), "{out}");

    let bad = dir.path().join("bad.toml");
    let cfg =
        config("", DIRECT_EXIT).replace("plan = \"basic\"\nnetworks", "plan = \"gold\"\nnetworks");
    std::fs::write(&bad, cfg).unwrap();
    let (code, _, err) = check(&bad);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("[[user]] #1 (name = \"alice\"): plan = \"gold\" is not defined; defined plans: \"basic\""),
        "{err}"
    );

    std::fs::write(&bad, "[server]\nidle_timeout = \"5 minutes\"\n").unwrap();
    let (code, _, err) = check(&bad);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("idle_timeout") && err.contains("unknown unit"),
        "{err}"
    );

    let (code, _, err) = check(std::path::Path::new("/nonexistent.toml"));
    assert_eq!(code, Some(2));
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn example_config_starts_and_serves() {
    // The example config as shipped (fixed ports swapped for ephemeral ones).
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml"))
            .unwrap()
            .replace("127.0.0.1:13337", "127.0.0.1:0")
            .replace("127.0.0.1:13338", "127.0.0.1:0")
            .replace("127.0.0.1:9090", "127.0.0.1:0");
    let gw = Gateway::start(&example);
    // Private targets are refused by default, so a local origin answers 403 — proof that
    // the request was authenticated and routed.
    let raw = format!(
        "GET http://127.0.0.1:9/ HTTP/1.1\r\nProxy-Authorization: {}\r\n\r\n",
        basic("alice", "change-me")
    );
    let (_, r) = http_raw(gw.addr(), raw.as_bytes());
    assert_eq!((r.code, r.text().as_str()), (403, "forbidden target"));
}

#[test]
fn a_second_gateway_on_the_same_port_refuses_to_start() {
    let first = Gateway::start(&config("", DIRECT_EXIT));
    let port = first.addr().port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("second.toml");
    std::fs::write(
        &path,
        config("", DIRECT_EXIT).replace("127.0.0.1:0", &format!("127.0.0.1:{port}")),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["--config"])
        .arg(&path)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already listening there"), "{err}");
    // The first one still serves every connection.
    let o = http_origin();
    for _ in 0..10 {
        assert_eq!(http_get(first.addr(), &o.url("/")).code, 200);
    }
}
