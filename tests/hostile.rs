//! Hostile clients and faults: each gets its error and costs nothing else — the process's
//! fds, held slots and outstanding leases return to their baseline, and well-behaved
//! clients keep being served.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::origin::{echo_server, http_origin};
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

fn hardened(server: &str, rest: &str) -> String {
    config(server, rest).replace("[log]", "[admin]\nlisten = \"127.0.0.1:0\"\n\n[log]")
}

/// Open fds other than the pipes each core keeps pooled for spliced tunnels (those are
/// bounded by [`pooled_pipes_bounded`]).
fn fds(gw: &Gateway) -> usize {
    let (pipes, all) = gw.fd_counts();
    pooled_pipes_bounded(pipes);
    all - pipes
}

/// Each core pools at most 64 empty pipes (two fds each) for spliced tunnels; glommio holds
/// a few of its own. More would be a leak.
fn pooled_pipes_bounded(pipe_fds: usize) {
    assert!(pipe_fds <= 2 * 64 * 2 + 8, "{pipe_fds} pipe fds: a leak");
}

/// Wait until fds, held slots and outstanding leases are back to `baseline` fds and zero.
fn settled(gw: &Gateway, baseline: usize) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let slots = gw
            .metric("tollgate_account_threads_active{account=\"alice\"}")
            .unwrap_or(0.0);
        let lease = gw
            .metric("tollgate_account_lease_outstanding_bytes{account=\"alice\"}")
            .unwrap_or(0.0);
        let active = gw.metric("tollgate_connections_active").unwrap_or(0.0);
        let fds = fds(gw);
        if fds <= baseline && slots == 0.0 && lease == 0.0 && active == 0.0 {
            return;
        }
        let links: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", gw.child.id()))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .map(|p| p.display().to_string())
            .collect();
        assert!(
            std::time::Instant::now() < deadline,
            "not back to baseline: fds {fds} (baseline {baseline}), slots {slots}, \
             lease {lease}, active {active}: {links:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
}

/// The steady-state fd count: after the lazily started parts (resolver threads, first
/// connections) have started.
fn warm_baseline(gw: &Gateway, o: &common::origin::Origin) -> usize {
    let local = format!("http://localhost:{}/", o.addr.port());
    assert_eq!(http_get(gw.addr(), &local).code, 200);
    assert_eq!(http_get(gw.addr(), &o.url("/")).code, 200);
    steady_fds(gw)
}

/// The fd count once every executor is up (healthy) and the count stopped moving.
fn steady_fds(gw: &Gateway) -> usize {
    eventually("healthy", || {
        (gw.admin_get("/healthz").0 == 200).then_some(())
    });
    let mut last = 0;
    eventually("a steady fd count", || {
        let now = fds(gw);
        let steady = now == last;
        last = now;
        steady.then_some(now)
    })
}

#[test]
fn slowloris_crowd_does_not_stop_a_good_client() {
    let gw = Gateway::start(&hardened("handshake_timeout = \"2s\"", DIRECT_EXIT));
    let o = http_origin();
    let baseline = warm_baseline(&gw, &o);
    // 1,500 connections, each trickling the start of a head and then stalling.
    let crowd: Vec<TcpStream> = (0..1500)
        .map(|i| {
            let mut s = TcpStream::connect(gw.addr()).unwrap();
            let partial: &[u8] = if i % 2 == 0 {
                b"GET http://x/ HT"
            } else {
                b"\x05\x01"
            };
            s.write_all(partial).unwrap();
            s
        })
        .collect();
    // A well-behaved client on both protocols is served while they stall.
    for _ in 0..10 {
        assert_eq!(http_get(gw.addr(), &o.url("/")).code, 200);
    }
    let echo = echo_server("127.0.0.1:0");
    let mut t = socks5_tunnel(gw.addr(), &Target::Addr(echo));
    assert_eq!(echo_through(&mut t, b"ping"), b"ping");
    // The handshake timeout closes every stalled connection.
    for mut s in crowd {
        s.set_read_timeout(Some(WAIT)).unwrap();
        assert!(closed_by_peer(&mut s));
    }
    drop(t);
    settled(&gw, baseline);
}

#[test]
fn per_core_connection_cap_closes_the_overflow_cleanly() {
    let gw = Gateway::start(&hardened("max_connections_per_worker = 3", DIRECT_EXIT));
    let o = http_origin();
    let baseline = warm_baseline(&gw, &o);
    // 2 cores x 3 = at most 6 held; the rest are closed at once without a reply byte.
    let held: Vec<TcpStream> = (0..20).map(|_| connect(gw.addr())).collect();
    let mut closed = 0;
    for mut s in held.iter() {
        s.set_read_timeout(Some(std::time::Duration::from_millis(300)))
            .unwrap();
        let mut b = [0u8; 1];
        if matches!(s.read(&mut b), Ok(0)) {
            closed += 1;
        }
    }
    assert!(closed >= 14, "only {closed} of 20 closed");
    drop(held);
    eventually("served again", || {
        let mut s = TcpStream::connect(gw.addr()).ok()?;
        s.set_read_timeout(Some(WAIT)).ok()?;
        let raw = format!(
            "GET {} HTTP/1.1\r\nProxy-Authorization: {}\r\n\r\n",
            o.url("/"),
            basic("alice", "secret")
        );
        s.write_all(raw.as_bytes()).ok()?;
        let mut b = [0u8; 12];
        s.read_exact(&mut b).ok()?;
        (&b == b"HTTP/1.1 200").then_some(())
    });
    settled(&gw, baseline);
}

#[test]
fn password_guessing_is_slowed_and_a_natd_farm_keeps_working() {
    let cfg = hardened("", DIRECT_EXIT).replace(
        "[log]",
        "[security]\nauth_failures = 5\nauth_block = \"1m\"\nauth_delay = \"200ms\"\n\n[log]",
    );
    let gw = Gateway::start(&cfg);
    let o = http_origin();
    let get_from = |src: &str, user: &str, pass: &str| {
        let mut s = connect_from(src, gw.addr());
        let raw = format!(
            "GET {} HTTP/1.1\r\nProxy-Authorization: {}\r\n\r\n",
            o.url("/"),
            basic(user, pass)
        );
        s.write_all(raw.as_bytes()).unwrap();
        read_response(&mut s, false).code
    };
    // A farm behind one address: one worker with a stale password retries 60 times...
    for _ in 0..60 {
        assert_eq!(get_from("127.0.0.1", "alice", "stale"), 407);
    }
    // ...and the correctly configured workers of that address are served, both protocols.
    assert_eq!(get_from("127.0.0.1", "alice", "secret"), 200);
    let mut s = connect_from("127.0.0.1", gw.addr());
    s.write_all(b"\x05\x01\x02\x01\x05alice\x06secret").unwrap();
    let mut r = [0u8; 4];
    s.read_exact(&mut r).unwrap();
    assert_eq!(r, [5, 2, 1, 0]);

    // A guesser with different passwords: after 5 failures each check waits for a slot,
    // one per auth_delay (the bound: 60 s / 200 ms = 300 checks a minute here)...
    for i in 0..5 {
        assert_eq!(get_from("127.0.0.7", "alice", &format!("guess{i}")), 407);
    }
    let slowed = std::time::Instant::now();
    for i in 5..15 {
        assert_eq!(get_from("127.0.0.7", "alice", &format!("guess{i}")), 407);
    }
    assert!(
        slowed.elapsed() >= std::time::Duration::from_millis(9 * 200),
        "guessing was not slowed: 10 checks in {:?}",
        slowed.elapsed()
    );
    // ...yet the right password from that address is still checked and served...
    assert_eq!(get_from("127.0.0.7", "alice", "secret"), 200);
    // ...and everyone else is served at once.
    assert_eq!(get_from("127.0.0.8", "alice", "secret"), 200);
    assert!(gw.stderr().contains("address slowed"));
    assert!(!gw.stderr().contains("guess"), "a password reached the log");
    assert!(!gw.stderr().contains("stale"), "a password reached the log");
}

#[test]
fn absurd_inputs_get_their_error_and_nothing_else() {
    let gw = Gateway::start(&hardened("", DIRECT_EXIT));
    let o = http_origin();
    let baseline = warm_baseline(&gw, &o);
    // A megabyte request line: 431, connection closed.
    let mut s = connect(gw.addr());
    let line = format!(
        "GET http://127.0.0.1/{} HTTP/1.1\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let _ = s.write_all(line.as_bytes());
    assert_eq!(read_response(&mut s, false).code, 431);
    drop(s);
    // Oversized header section.
    let raw = format!(
        "GET {} HTTP/1.1\r\nX: {}\r\n\r\n",
        o.url("/"),
        "b".repeat(64 * 1024)
    );
    let mut s = connect(gw.addr());
    let _ = s.write_all(raw.as_bytes());
    assert_eq!(read_response(&mut s, false).code, 431);
    drop(s);
    // SOCKS5: 255 methods, none acceptable.
    let mut s = connect(gw.addr());
    let mut greet = vec![5, 255];
    greet.extend(std::iter::repeat_n(0x80, 255));
    s.write_all(&greet).unwrap();
    let mut m = [0u8; 2];
    s.read_exact(&mut m).unwrap();
    assert_eq!(m, [5, 0xff]);
    // SOCKS5: a 255-byte non-UTF-8 username and password.
    let mut s = connect(gw.addr());
    let mut msg = vec![5, 1, 2, 1, 255];
    msg.extend(std::iter::repeat_n(0xff, 255));
    msg.push(255);
    msg.extend(std::iter::repeat_n(0xfe, 255));
    s.write_all(&msg).unwrap();
    let mut r = [0u8; 4];
    s.read_exact(&mut r).unwrap();
    assert_eq!(r, [5, 2, 1, 1]);
    assert!(closed_by_peer(&mut s));
    // SOCKS5: a 255-byte domain of garbage.
    let garbage = vec![0xffu8; 255];
    let mut req = vec![3, 255];
    req.extend(&garbage);
    req.extend([0, 80]);
    let (_, out) = socks5(gw.addr(), "alice", "secret", 1, &Target::Raw(3, &req[1..]));
    assert!(
        matches!(out, SocksOutcome::Reply(c, _) if c != 0),
        "{out:?}"
    );
    // Non-UTF-8 Basic credentials over HTTP.
    let raw = format!(
        "GET {} HTTP/1.1\r\nProxy-Authorization: Basic {}\r\n\r\n",
        o.url("/"),
        "//79/Pv6Ojo6"
    );
    assert_eq!(http_raw(gw.addr(), raw.as_bytes()).1.code, 407);
    // Still serving, nothing held.
    assert_eq!(http_get(gw.addr(), &o.url("/")).code, 200);
    settled(&gw, baseline);
}

/// An origin that sends some bytes and then resets the connection.
fn resetting_origin() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            // Wait for the client's first bytes, answer a little, then reset.
            let mut b = [0u8; 1024];
            let _ = s.read(&mut b);
            let _ = s.write_all(&pattern(100_000));
            socket2::SockRef::from(&s)
                .set_linger(Some(std::time::Duration::ZERO))
                .unwrap();
            drop(s);
        }
    });
    addr
}

/// An origin that accepts and never says a word.
fn silent_origin() -> (SocketAddr, std::sync::mpsc::Sender<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        l.set_nonblocking(true).unwrap();
        loop {
            if let Ok((s, _)) = l.accept() {
                held.push(s);
            }
            if rx
                .recv_timeout(std::time::Duration::from_millis(10))
                .is_ok()
            {
                return;
            }
        }
    });
    (addr, tx)
}

#[test]
fn upstream_faults_leave_nothing_behind() {
    let gw = Gateway::start(&hardened("idle_timeout = \"500ms\"", DIRECT_EXIT));
    let o = http_origin();
    let baseline = warm_baseline(&gw, &o);

    // Upstream resets mid-stream: the client sees the bytes that made it, then the close.
    let rst = resetting_origin();
    let mut t = socks5_tunnel(gw.addr(), &Target::Addr(rst));
    t.write_all(b"go").unwrap();
    let mut got = Vec::new();
    let _ = t.read_to_end(&mut got);
    assert!(got.len() <= 100_000);
    drop(t);
    let r = http_get(gw.addr(), &format!("http://{rst}/"));
    assert_eq!(r.code, 502);

    // Upstream accepts and never answers: a forwarded request ends at the idle timeout with
    // 502, a tunnel is closed as idle.
    let (silent, stop) = silent_origin();
    let r = http_get(gw.addr(), &format!("http://{silent}/"));
    assert_eq!(r.code, 502);
    let mut t = socks5_tunnel(gw.addr(), &Target::Addr(silent));
    assert!(closed_by_peer(&mut t));
    drop(t);

    // Half-closed peers: the client's FIN reaches the echo server, its reply comes back.
    let echo = echo_server("127.0.0.1:0");
    let mut t = socks5_tunnel(gw.addr(), &Target::Addr(echo));
    t.write_all(b"bye").unwrap();
    t.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = Vec::new();
    t.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"bye");
    drop(t);

    settled(&gw, baseline);
    stop.send(()).unwrap();
}

#[test]
fn every_exit_benched_is_503_and_recovers() {
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let exits = format!(
        "[[exit]]\nnetwork = \"residential\"\nkind = \"http\"\nurl = \"http://{dead}\"\n\
         [[exit]]\nnetwork = \"residential\"\nkind = \"socks5\"\nurl = \"socks5://{dead}\"\n"
    );
    let cfg = hardened("", &exits).replace(
        "[log]",
        "[routing]\nbench_after = 1\nbench_for = \"1h\"\n\n[log]",
    );
    let gw = Gateway::start(&cfg);
    let o = http_origin();
    let baseline = steady_fds(&gw);
    // The first request fails on both exits (502 with the detail) and benches them...
    let r = http_get(gw.addr(), &o.url("/"));
    assert_eq!(r.code, 502);
    assert!(r.header("proxy-status").unwrap().contains("unreachable"));
    // ...after which there is no exit to use: 503 / SOCKS 0x01.
    let r = http_get(gw.addr(), &o.url("/"));
    assert_eq!((r.code, r.text().as_str()), (503, "service unavailable"));
    let (_, out) = socks5(gw.addr(), "alice", "secret", 1, &Target::Addr(o.addr));
    assert!(matches!(out, SocksOutcome::Reply(1, _)), "{out:?}");
    settled(&gw, baseline);
}
