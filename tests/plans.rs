//! Plans through the real gateway: thread limits (453), bandwidth (452), usage metered to
//! the byte and durable across restarts, operators' top-ups and resets, hot reload.
//!
//! What counts: every byte the client sends to or receives from the gateway's socket —
//! protocol handshakes, request and response heads, and payload.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::origin::{echo_server, holding_origin, http_origin};
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

fn plan_config(bandwidth: &str, threads: u32, server: &str) -> String {
    config(&format!("usage_flush = \"100ms\"\n{server}"), DIRECT_EXIT).replace(
        "bandwidth = \"10GiB\"\nthreads = 1000",
        &format!("bandwidth = \"{bandwidth}\"\nthreads = {threads}"),
    )
}

/// A SOCKS5 tunnel as alice, or the refusal.
fn try_socks(gw: SocketAddr, target: SocketAddr) -> Result<TcpStream, SocksOutcome> {
    match socks5(gw, "alice", "secret", 1, &Target::Addr(target)) {
        (s, SocksOutcome::Reply(0, _)) => Ok(s),
        (_, other) => Err(other),
    }
}

/// `msg` comes back through a tunnel to an echo server.
fn echoes(t: &mut TcpStream, msg: &[u8]) {
    t.write_all(msg).unwrap();
    let mut b = vec![0u8; msg.len()];
    t.read_exact(&mut b).unwrap();
    assert_eq!(b, msg);
}

#[test]
fn thread_limit_is_exact_across_protocols() {
    let gw = Gateway::start(&plan_config("10GiB", 6, ""));
    let echo = echo_server("127.0.0.1:0");
    let o = http_origin();
    let mut held = Vec::new();
    for i in 0..6 {
        if i % 2 == 0 {
            held.push(try_socks(gw.addr(), echo).unwrap());
        } else {
            let (s, r) = http_connect(gw.addr(), echo);
            assert_eq!(r.code, 200);
            held.push(s);
        }
    }
    // threads + 1, over each protocol and path.
    let (_, r) = http_connect(gw.addr(), echo);
    assert_eq!(
        (r.code, r.reason.as_str(), r.text().as_str()),
        (453, "Thread Limit Exceeded", "exceeded threads limit")
    );
    let r = http_get(gw.addr(), &o.url("/"));
    assert_eq!((r.code, r.text().as_str()), (453, "exceeded threads limit"));
    assert!(matches!(
        try_socks(gw.addr(), echo),
        Err(SocksOutcome::Reply(2, _))
    ));
    // One closes: exactly one slot comes back.
    drop(held.pop());
    let s = eventually("a slot to return", || try_socks(gw.addr(), echo).ok());
    assert!(try_socks(gw.addr(), echo).is_err());
    // Every tunnel still works.
    for mut t in held.into_iter().chain([s]) {
        echoes(&mut t, b"ok?");
    }
}

#[test]
fn slot_returns_after_close_reset_failure_and_timeout() {
    let gw = Gateway::start(&plan_config("10GiB", 1, "idle_timeout = \"300ms\""));
    let echo = echo_server("127.0.0.1:0");
    let o = http_origin();
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let take = || eventually("the slot", || try_socks(gw.addr(), echo).ok());

    // Normal close.
    let t = take();
    assert!(try_socks(gw.addr(), echo).is_err(), "limit not enforced");
    t.shutdown(std::net::Shutdown::Both).unwrap();
    drop(t);

    // Client reset in the middle of a transfer.
    let mut t = take();
    t.write_all(&pattern(256 * 1024)).unwrap();
    socket2::SockRef::from(&t)
        .set_linger(Some(std::time::Duration::ZERO))
        .unwrap();
    drop(t);

    // Upstream failure: the connect is refused, the slot is not kept.
    eventually("slot after reset", || {
        match socks5(gw.addr(), "alice", "secret", 1, &Target::Addr(refused)).1 {
            SocksOutcome::Reply(5, _) => Some(()),
            _ => None,
        }
    });

    // Idle timeout.
    let mut t = take();
    assert!(closed_by_peer(&mut t));

    // A forwarded request holds the slot only while it is in flight.
    eventually("slot after idle timeout", || {
        (http_get(gw.addr(), &o.url("/")).code == 200).then_some(())
    });
    let r = http_get(gw.addr(), &o.url("/"));
    assert_eq!(r.code, 200);
    let _t = take();
    assert_eq!(http_get(gw.addr(), &o.url("/")).code, 453);
}

/// A client on one thread that sends each request the moment it has the last answer, on
/// a new connection (to either core) or the same one, is never refused: the slot goes
/// back before the answer's last byte leaves, whatever its framing.
#[test]
fn a_client_on_one_thread_is_never_refused_between_requests() {
    let gw = Gateway::start(&plan_config("10GiB", 1, ""));
    let o = http_origin();
    let auth = basic("alice", "secret");
    // Length in the head's write or after it, chunked, no body (204, HEAD), many reads.
    let asks: [(&str, &str, u16, &[u8]); 5] = [
        ("GET", "/", 200, b"ok"),
        ("GET", "/chunked", 200, b"hello chunked"),
        ("GET", "/nocontent", 204, b""),
        ("HEAD", "/head", 200, b""),
        ("GET", "/big?n=300000", 200, &[]),
    ];
    let mut kept = connect(gw.addr());
    for i in 0..300 {
        let (method, path, code, body) = asks[i % asks.len()];
        let raw = format!(
            "{method} {} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {auth}\r\n\r\n",
            o.url(path)
        );
        // Alternately a fresh connection and the kept one.
        let mut fresh;
        let s = if i % 2 == 0 {
            fresh = connect(gw.addr());
            &mut fresh
        } else {
            &mut kept
        };
        s.write_all(raw.as_bytes()).unwrap();
        let r = read_response(s, method == "HEAD");
        assert_eq!((i, r.code), (i, code), "{method} {path}: {}", r.text());
        if path.starts_with("/big") {
            assert_eq!(r.body, pattern(300_000), "{path}");
        } else {
            assert_eq!(r.body, body, "{path}");
        }
    }
    // A client that stops reading its answer keeps the slot until it leaves.
    let mut stalled = connect(gw.addr());
    let raw = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {auth}\r\n\r\n",
        o.url("/big?n=16000000")
    );
    stalled.write_all(raw.as_bytes()).unwrap();
    let mut status = [0u8; 12];
    stalled.read_exact(&mut status).unwrap();
    assert_eq!(&status, b"HTTP/1.1 200");
    assert_eq!(http_get(gw.addr(), &o.url("/")).code, 453);
    drop(stalled);
    // The slot is still counted: a tunnel holds it, and a request is refused meanwhile.
    let echo = echo_server("127.0.0.1:0");
    let _t = eventually("the slot", || try_socks(gw.addr(), echo).ok());
    assert_eq!(http_get(gw.addr(), &o.url("/")).code, 453);
}

/// A client on one thread that closes a tunnel and opens the next at once is admitted:
/// the closing tunnel ends within the origin's answer to the close, and admission waits
/// for it rather than refusing.
#[test]
fn a_client_that_closes_a_tunnel_can_open_the_next_at_once() {
    let gw = Gateway::start(&plan_config("10GiB", 1, ""));
    let echo = echo_server("127.0.0.1:0");
    for i in 0..200 {
        let mut t = if i % 2 == 0 {
            match try_socks(gw.addr(), echo) {
                Ok(t) => t,
                Err(e) => panic!("tunnel {i} refused: {e:?}"),
            }
        } else {
            let (t, r) = http_connect(gw.addr(), echo);
            assert_eq!((i, r.code), (i, 200), "{}", r.text());
            t
        };
        echoes(&mut t, b"ping");
        // Closed by the client first, as an HTTP client ends a connection it is done with.
    }
}

/// An origin that never answers the client's close does not keep the client's thread
/// past `half_close_timeout`; a client that half-closes still gets what the origin sends
/// after its close.
#[test]
fn a_closed_client_gets_its_thread_back_though_the_origin_never_closes() {
    let gw = Gateway::start(&plan_config("10GiB", 1, "half_close_timeout = \"300ms\""));
    let origin = holding_origin();
    let mut t = try_socks(gw.addr(), origin).unwrap();
    t.write_all(b"hello").unwrap();
    t.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = [0u8; 5];
    t.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"got 5");
    // The origin holds its side open: the tunnel ends after 300 ms without a byte,
    // and the next tunnel (which waits for it, as the slot is closing) is admitted.
    let mut next = try_socks(gw.addr(), origin).expect("the closing tunnel's slot");
    assert!(closed_by_peer(&mut t));
    next.write_all(b"hi").unwrap();
    next.shutdown(std::net::Shutdown::Write).unwrap();
    next.read_exact(&mut answer[..4]).unwrap();
    assert_eq!(&answer[..4], b"got ");
}

#[test]
fn bandwidth_runs_out_452_and_live_tunnels_are_cut() {
    let limit: u64 = 256 * 1024;
    let gw = Gateway::start(&plan_config("256KiB", 10, ""));
    let echo = echo_server("127.0.0.1:0");
    let o = http_origin();
    // An idle tunnel of the same account...
    let mut idle = try_socks(gw.addr(), echo).unwrap();
    // ...and a busy one that uses the quota up.
    let mut busy = try_socks(gw.addr(), echo).unwrap();
    let got = echo_until_cut(&mut busy, &pattern(1 << 20));
    assert!(got < (1 << 20), "quota did not stop the transfer");
    assert!(closed_by_peer(&mut idle), "idle tunnel not cut");
    // Up to one lease per core may still be unspent (handed back when the account ran
    // out): use it, then every new request is refused.
    let r = eventually("the quota to be used up", || {
        match try_socks(gw.addr(), echo) {
            Ok(mut s) => {
                echo_until_cut(&mut s, &pattern(256 * 1024));
                None
            }
            // Refused over SOCKS5 with "not allowed by ruleset"...
            Err(SocksOutcome::Reply(2, _)) => {
                let r = http_get(gw.addr(), &o.url("/"));
                (r.code == 452).then_some(r)
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    });
    // ...and over HTTP with 452 and the exact body.
    assert_eq!(
        (r.code, r.reason.as_str(), r.text().as_str()),
        (452, "Bandwidth Exceeded", "exceeded bandwidth limit")
    );
    // Relayed bytes never exceed the plan; only the gateway's own short replies may.
    let used = eventually("usage written", || {
        let (used, _, active) = gw.stored_usage("alice");
        (active == 0 && used > limit / 2).then_some(used)
    });
    assert!(used <= limit + 1024, "used {used} of {limit}");
}

#[test]
fn stored_usage_is_exact_to_the_byte_for_each_protocol() {
    let gw = Gateway::start(&plan_config("10GiB", 100, ""));
    let echo = echo_server("127.0.0.1:0");
    let o = http_origin();
    let mut expected = 0u64;
    let wait_for = |want: u64| {
        eventually(&format!("stored usage {want}"), || {
            let (used, _, _) = gw.stored_usage("alice");
            (used == want).then_some(())
        })
    };

    // SOCKS5: greeting, RFC 1929, request, reply, then 3 MiB each way.
    let mut c = Counted::new(connect(gw.addr()));
    c.write(&[5, 1, 2]);
    assert_eq!(c.read_exact(2), [5, 2]);
    c.write(b"\x01\x05alice\x06secret");
    assert_eq!(c.read_exact(2), [1, 0]);
    c.write(&socks_request(1, &Target::Addr(echo)));
    assert_eq!(c.read_exact(10)[1], 0);
    c.echo(&pattern(3 << 20));
    drop(c.s.shutdown(std::net::Shutdown::Both));
    expected += c.bytes;
    wait_for(expected);

    // HTTP CONNECT: request head, 200 head, 2 MiB each way.
    let mut c = Counted::connect_tunnel(gw.addr(), echo);
    c.echo(&pattern(2 << 20));
    drop(c.s.shutdown(std::net::Shutdown::Both));
    expected += c.bytes;
    wait_for(expected);

    // HTTP forwarding: a 1.5 MB POST echoed back, heads included, keep-alive twice.
    let mut c = Counted::new(connect(gw.addr()));
    let body = pattern(1_500_000);
    for _ in 0..2 {
        c.write(
            format!(
                "POST {} HTTP/1.1\r\nProxy-Authorization: {}\r\nContent-Length: {}\r\n\r\n",
                o.url("/echo"),
                basic("alice", "secret"),
                body.len()
            )
            .as_bytes(),
        );
        c.write(&body);
        let head = c.read_head();
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{head}"
        );
        assert!(c.read_exact(body.len()) == body);
    }
    drop(c.s.shutdown(std::net::Shutdown::Both));
    expected += c.bytes;
    wait_for(expected);
    assert!(expected > 2 * (3 << 20) + 2 * (2 << 20) + 6_000_000);
}

#[test]
fn usage_survives_sigterm_and_kill_9() {
    let cfg = plan_config("10GiB", 100, "");
    let echo = echo_server("127.0.0.1:0");
    let transfer = |gw: &Gateway, n: usize| {
        let mut s = try_socks(gw.addr(), echo).unwrap();
        assert_eq!(echo_through(&mut s, &pattern(n)).len(), n);
    };
    let gw = Gateway::start(&cfg);
    transfer(&gw, 1 << 20);
    let before = eventually("first write", || {
        let (used, _, active) = gw.stored_usage("alice");
        (used > 2 << 20 && active == 0).then_some(used)
    });
    // SIGTERM: drained, final write, exit 0; the restart resumes from the store.
    let mut gw = gw;
    gw.signal(libc::SIGTERM);
    assert_eq!(gw.wait_exit(), Some(0));
    let gw = Gateway::start_in(gw.into_dir(), &cfg);
    assert_eq!(gw.stored_usage("alice").0, before);
    transfer(&gw, 1 << 20);
    let after = eventually("usage to grow", || {
        let (used, _, active) = gw.stored_usage("alice");
        (used > before && active == 0).then_some(used)
    });
    // kill -9 right after more traffic: at most the last usage_flush (+1 s of settling)
    // is lost, never more, and nothing is double counted.
    transfer(&gw, 1 << 20);
    let gw = Gateway::start_in(gw.into_dir(), &cfg);
    let resumed = gw.stored_usage("alice").0;
    assert!(
        resumed >= after && resumed <= after + (2 << 20) + 100,
        "{resumed} vs {after}"
    );
    // And it keeps counting from there.
    transfer(&gw, 1 << 20);
    eventually("usage to grow after kill -9", || {
        (gw.stored_usage("alice").0 > resumed).then_some(())
    });
}

#[test]
fn quota_state_resumes_after_restart_and_operators_top_up_and_reset() {
    let cfg = plan_config("128KiB", 10, "");
    let echo = echo_server("127.0.0.1:0");
    let o = http_origin();
    let gw = Gateway::start(&cfg);
    let mut s = try_socks(gw.addr(), echo).unwrap();
    assert!(echo_until_cut(&mut s, &pattern(1 << 20)) < 1 << 20);
    assert_eq!(http_get(gw.addr(), &o.url("/")).code, 452);
    eventually("usage written", || {
        (gw.stored_usage("alice").2 == 0).then_some(())
    });
    // Restart: still used up.
    let mut gw = gw;
    gw.signal(libc::SIGTERM);
    assert_eq!(gw.wait_exit(), Some(0));
    let gw = Gateway::start_in(gw.into_dir(), &cfg);
    assert_eq!(http_get(gw.addr(), &o.url("/")).code, 452);
    // Top up while running: served again within one flush.
    let out = gw.usage_cmd(&["top-up", "alice", "1MiB"]);
    assert!(out.contains("queued"), "{out}");
    eventually("top-up applied", || {
        (http_get(gw.addr(), &o.url("/")).code == 200).then_some(())
    });
    assert_eq!(gw.stored_usage("alice").1, 1 << 20);
    // Reset: usage and credit back to zero.
    gw.usage_cmd(&["reset", "alice"]);
    eventually("reset applied", || {
        let (used, credit, _) = gw.stored_usage("alice");
        (used < 1024 && credit == 0).then_some(())
    });
    assert_eq!(http_get(gw.addr(), &o.url("/")).code, 200);
}

#[test]
fn sighup_adds_and_removes_users_and_changes_plans_while_a_tunnel_stays_open() {
    let extra_user = "\n[[user]]\nname = \"bob\"\npassword = \"pw\"\nplan = \"basic\"\nnetworks = [\"residential\"]\n";
    let cfg = format!("{}{extra_user}", plan_config("10GiB", 1, ""));
    let gw = Gateway::start(&cfg);
    let echo = echo_server("127.0.0.1:0");
    let o = http_origin();
    let get_as = |user: &str, pass: &str| {
        let raw = format!(
            "GET {} HTTP/1.1\r\nProxy-Authorization: {}\r\n\r\n",
            o.url("/"),
            basic(user, pass)
        );
        http_raw(gw.addr(), raw.as_bytes()).1.code
    };
    let mut live = try_socks(gw.addr(), echo).unwrap();
    assert_eq!(get_as("alice", "secret"), 453);
    assert_eq!(get_as("bob", "pw"), 200);
    assert_eq!(get_as("carol", "pw3"), 407);
    // Threads 1 → 2, bob removed, carol added.
    let new = plan_config("10GiB", 2, "").replace("name = \"alice\"", "name = \"carol\"\npassword = \"pw3\"\nplan = \"basic\"\nnetworks = [\"residential\"]\n\n[[user]]\nname = \"alice\"");
    std::fs::write(gw.config_path(), new).unwrap();
    gw.signal(libc::SIGHUP);
    eventually("reload", || (get_as("carol", "pw3") == 200).then_some(()));
    assert_eq!(get_as("bob", "pw"), 407);
    // alice kept her slot count (the live tunnel holds one of the two now allowed).
    let second = try_socks(gw.addr(), echo).unwrap();
    assert!(matches!(
        try_socks(gw.addr(), echo),
        Err(SocksOutcome::Reply(2, _))
    ));
    drop(second);
    live.write_all(b"still").unwrap();
    let mut b = [0u8; 5];
    live.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"still");
}

/// `speed = "1MiB/s"`: a client measures the account's relayed bytes over 5 s, one download
/// and then two at once (they share the limit), within ±10% of the rate; the bytes are
/// throttled, never refused.
#[test]
fn speed_limit_throttles_an_account_across_its_connections() {
    let cfg =
        plan_config("10GiB", 10, "").replace("threads = 10", "threads = 10\nspeed = \"1MiB/s\"");
    let gw = Gateway::start(&cfg);
    let o = http_origin();
    let download = || {
        let mut s = try_socks(gw.addr(), o.addr).unwrap();
        s.write_all(b"GET /big?n=50000000 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        s
    };
    let rate = 1024.0 * 1024.0;
    for n in [1, 2] {
        let got = bytes_read_within((0..n).map(|_| download()).collect(), 5.0) as f64;
        let per_second = got / 5.0;
        println!("{n} connection(s): {per_second:.0} B/s (limit {rate} B/s)");
        assert!(
            (per_second - rate).abs() <= rate * 0.10,
            "{n} connection(s): {per_second:.0} B/s against a limit of {rate} B/s"
        );
    }
}

/// `expires`: after it the right password gets 407 with `details="account expired"` (SOCKS5:
/// auth failure) every time, without slowing the address; before it the account is served.
#[test]
fn an_expired_account_is_refused_saying_so() {
    let users = "[[user]]\nname = \"old\"\npassword = \"secret\"\nplan = \"basic\"\nnetworks = [\"residential\"]\nexpires = \"2020-01-31T23:59:59+01:00\"\n\
                 [[user]]\nname = \"new\"\npassword = \"secret\"\nplan = \"basic\"\nnetworks = [\"residential\"]\nexpires = \"2999-01-01T00:00:00Z\"\n";
    let gw = Gateway::start(&config("", &format!("{DIRECT_EXIT}{users}")));
    let o = http_origin();
    let get = |user: &str| {
        let raw = format!(
            "GET {} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {}\r\n\r\n",
            o.url("/"),
            basic(user, "secret")
        );
        http_raw(gw.addr(), raw.as_bytes()).1
    };
    for _ in 0..20 {
        let r = get("old");
        assert_eq!(r.code, 407);
        let status = r.header("proxy-status").unwrap_or_default().to_owned();
        assert!(status.contains("details=\"account expired\""), "{status}");
    }
    let (_, out) = socks5(gw.addr(), "old", "secret", 1, &Target::Addr(o.addr));
    assert_eq!(out, SocksOutcome::Auth(1));
    assert_eq!(get("new").code, 200);
    // A time that is not RFC 3339 is a config error naming the key.
    let bad = config(
        "",
        &format!(
            "{DIRECT_EXIT}{}",
            users.replace("2999-01-01T00:00:00Z", "tomorrow")
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(&path, bad).unwrap();
    let out = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .arg("check")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("[[user]] #3 (name = \"new\"): expires = \"tomorrow\""),
        "{err}"
    );
}

/// `period = "day"`: at the UTC day boundary usage starts again from 0 and the ended day is
/// kept with its bytes (`tollgate usage history`); a gateway restarted after the boundary
/// finds it too, however long it was down. The clock is the test hook's, moved to just
/// before midnight.
#[cfg(feature = "fault-injection")]
#[test]
fn a_plan_period_rolls_over_at_the_utc_boundary() {
    let cfg =
        plan_config("10GiB", 10, "").replace("threads = 10", "threads = 10\nperiod = \"day\"");
    let o = http_origin();
    let (offset, day_start) = clock_before_midnight(4);
    let hook = [("TOLLGATE_TEST_CLOCK_OFFSET_S", offset)];
    let gw = Gateway::start_env(tempfile::tempdir().unwrap(), &cfg, &hook);
    assert_eq!(http_get(gw.addr(), &o.url("/big?n=5000")).code, 200);
    let used = eventually("the day's usage stored", || {
        let (used, _, _) = gw.stored_usage("alice");
        (used > 5000).then_some(used)
    });
    eventually("the new day's usage back at 0", || {
        (gw.stored_usage("alice").0 == 0).then_some(())
    });
    let history = gw.usage_cmd(&["history", "alice"]);
    let day = jiff::Timestamp::from_second(day_start).unwrap().to_string();
    assert!(
        history.contains(&format!("{day:<22} {used:>16}")),
        "{day} {used} not in:\n{history}"
    );
    // Used again today, then down across the next boundary: the restart rolls it over.
    assert_eq!(http_get(gw.addr(), &o.url("/big?n=7000")).code, 200);
    let today = eventually("today's usage stored", || {
        let (used, _, _) = gw.stored_usage("alice");
        (used > 7000).then_some(used)
    });
    let dir = gw.into_dir();
    let tomorrow = [(
        "TOLLGATE_TEST_CLOCK_OFFSET_S",
        (clock_before_midnight(4).0.parse::<i64>().unwrap() + 86_400).to_string(),
    )];
    let gw = Gateway::start_env(dir, &cfg, &tomorrow);
    eventually("tomorrow's usage at 0", || {
        (gw.stored_usage("alice").0 == 0).then_some(())
    });
    let history = gw.usage_cmd(&["history", "alice"]);
    let next = jiff::Timestamp::from_second(day_start + 86_400)
        .unwrap()
        .to_string();
    assert!(
        history.contains(&format!("{next:<22} {today:>16}")),
        "{next} {today} not in:\n{history}"
    );
}
