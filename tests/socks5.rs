//! SOCKS5 through the real gateway: every reply a client can see.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::origin::{echo_server, http_origin};
use common::*;
use std::io::{Read, Write};

fn gateway() -> Gateway {
    Gateway::start(&config("", DIRECT_EXIT))
}

#[test]
fn connect_ipv4_ipv6_and_domain_echo_10mb_both_ways() {
    let gw = gateway();
    let v4 = echo_server("127.0.0.1:0");
    let v6 = echo_server("[::1]:0");
    let data = pattern(10 * 1024 * 1024 + 7);
    for target in [
        Target::Addr(v4),
        Target::Addr(v6),
        Target::Domain("localhost", v4.port()),
    ] {
        let (mut s, out) = socks5(gw.addr(), "alice", "secret", 1, &target);
        let SocksOutcome::Reply(0, Some(bound)) = out else {
            panic!("connect failed: {out:?}")
        };
        // The reply carries the real bound address of the outbound socket.
        assert!(bound.ip().is_loopback() && bound.port() != 0, "{bound}");
        let got = echo_through(&mut s, &data);
        assert!(
            got == data,
            "echoed bytes differ ({} vs {})",
            got.len(),
            data.len()
        );
    }
}

#[test]
fn bytes_pipelined_after_the_request_are_forwarded() {
    let gw = gateway();
    let echo = echo_server("127.0.0.1:0");
    let mut s = connect(gw.addr());
    let mut all = vec![5, 1, 2, 1, 5];
    all.extend_from_slice(b"alice");
    all.push(6);
    all.extend_from_slice(b"secret");
    all.extend(socks_request(1, &Target::Addr(echo)));
    all.extend_from_slice(b"early bytes");
    s.write_all(&all).unwrap();
    let mut hdr = [0u8; 2 + 2 + 10];
    s.read_exact(&mut hdr).unwrap();
    assert_eq!(&hdr[..5], &[5, 2, 1, 0, 5]);
    assert_eq!(hdr[5], 0, "reply code");
    let mut got = [0u8; 11];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"early bytes");
}

#[test]
fn no_password_method_offered_gets_0xff() {
    let gw = gateway();
    let mut s = connect(gw.addr());
    s.write_all(&[5, 1, 0]).unwrap();
    let mut m = [0u8; 2];
    s.read_exact(&mut m).unwrap();
    assert_eq!(m, [5, 0xff]);
    assert!(closed_by_peer(&mut s));
}

#[test]
fn wrong_password_and_unknown_modifier_fail_rfc1929() {
    let gw = gateway();
    let echo = echo_server("127.0.0.1:0");
    for (user, pass) in [
        ("alice", "hunter2-guess"),
        ("bob", "secret"),
        ("alice-colour-red", "secret"),
        ("alice-session-a-session-b", "secret"),
    ] {
        let (mut s, out) = socks5(gw.addr(), user, pass, 1, &Target::Addr(echo));
        assert_eq!(out, SocksOutcome::Auth(1), "{user}");
        assert!(closed_by_peer(&mut s));
    }
    // The password never reaches the log.
    assert!(!gw.stderr().contains("hunter2-guess"));
}

#[test]
fn failures_map_onto_reply_codes() {
    let gw = gateway();
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }; // listener dropped: the port now refuses
    let rows: Vec<(u8, Target, u8)> = vec![
        (1, Target::Addr(refused), 0x05),
        (1, Target::Domain("no-such-host.invalid", 80), 0x04),
        (2, Target::Addr(refused), 0x07), // BIND (UDP ASSOCIATE: tests/socks5_udp.rs)
    ];
    for (cmd, target, want) in rows {
        let (mut s, out) = socks5(gw.addr(), "alice", "secret", cmd, &target);
        assert_eq!(
            out,
            SocksOutcome::Reply(want, Some("0.0.0.0:0".parse().unwrap()))
        );
        assert!(closed_by_peer(&mut s));
    }
    // Unknown address type → 0x08.
    let (_, out) = socks5(gw.addr(), "alice", "secret", 1, &Target::Raw(9, &[0; 6]));
    assert!(matches!(out, SocksOutcome::Reply(8, _)), "{out:?}");
    // 455 rows go out as "not allowed by ruleset" after a successful auth step.
    let (_, out) = socks5(
        gw.addr(),
        "alice-ttl-0",
        "secret",
        1,
        &Target::Addr(refused),
    );
    assert!(matches!(out, SocksOutcome::Reply(2, _)), "{out:?}");
}

#[test]
fn private_targets_are_refused_by_default() {
    let cfg = config("", DIRECT_EXIT).replace("allow_private_targets = true", "");
    let gw = Gateway::start(&cfg);
    let echo = echo_server("127.0.0.1:0");
    for target in [Target::Addr(echo), Target::Domain("localhost", echo.port())] {
        let (_, out) = socks5(gw.addr(), "alice", "secret", 1, &target);
        assert!(matches!(out, SocksOutcome::Reply(2, _)), "{out:?}");
    }
    let o = http_origin();
    let r = http_get(gw.addr(), &o.url("/ip"));
    assert_eq!((r.code, r.text().as_str()), (403, "forbidden target"));
    assert_eq!(o.connections(), 0);
}

#[test]
fn half_close_is_forwarded() {
    // Spliced and copied: each pump forwards the FIN both ways.
    for server in ["splice = true", "splice = false"] {
        let gw = Gateway::start(&config(server, DIRECT_EXIT));
        let echo = echo_server("127.0.0.1:0");
        let mut s = socks5_tunnel(gw.addr(), &Target::Addr(echo));
        s.write_all(b"last words").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        // The echo server only sees EOF if our FIN was forwarded; it then replies and
        // closes, and the client sees that end as a clean EOF.
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"last words", "{server}");
    }
}

/// TCP urgent data stops a read at its mark with the bytes after it already queued, and no
/// new readiness edge comes for them: the relay must read on instead of waiting. (A
/// telnet or FTP client's interrupt sends urgent data.) The urgent byte itself is out of
/// band: a receiver without `SO_OOBINLINE`, the relay included, does not see it in the
/// stream, so the origin gets the bytes around it.
#[test]
fn bytes_queued_behind_urgent_data_are_relayed_without_waiting() {
    use std::os::fd::AsRawFd;
    for server in ["splice = true", "splice = false"] {
        let gw = Gateway::start(&config(server, DIRECT_EXIT));
        let echo = echo_server("127.0.0.1:0");
        let mut s = socks5_tunnel(gw.addr(), &Target::Addr(echo));
        let fd = s.as_raw_fd();
        let cork = |on: libc::c_int| {
            // SAFETY: a valid socket and an int option.
            let rc = unsafe {
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_CORK,
                    (&on as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0, "TCP_CORK");
        };
        // Corked, the three sends leave as one segment: the gateway's first read stops at
        // the urgent mark with "world" already behind it.
        cork(1);
        s.write_all(b"hello").unwrap();
        // SAFETY: a valid socket and a one-byte buffer.
        let sent = unsafe { libc::send(fd, b"!".as_ptr().cast(), 1, libc::MSG_OOB) };
        assert_eq!(sent, 1, "MSG_OOB");
        s.write_all(b"world").unwrap();
        cork(0);
        let mut got = [0u8; 10];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"helloworld", "{server}");
    }
}

#[test]
fn an_origin_that_finishes_first_still_hears_the_clients_last_words_and_its_end() {
    for server in ["splice = true", "splice = false"] {
        let gw = Gateway::start(&config(server, DIRECT_EXIT));
        // The origin speaks first, half-closes, then reads the client to its end.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let origin = l.local_addr().unwrap();
        let heard = std::thread::spawn(move || {
            let (mut o, _) = l.accept().unwrap();
            // A FIN that never comes fails as a timeout instead of hanging the test.
            o.set_read_timeout(Some(WAIT)).unwrap();
            o.write_all(b"banner").unwrap();
            o.shutdown(std::net::Shutdown::Write).unwrap();
            let mut got = Vec::new();
            // A reset instead of the client's FIN fails here.
            o.read_to_end(&mut got).map(|_| got)
        });
        let mut s = socks5_tunnel(gw.addr(), &Target::Addr(origin));
        let mut banner = Vec::new();
        s.read_to_end(&mut banner).unwrap();
        assert_eq!(banner, b"banner", "{server}");
        s.write_all(b"goodbye").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(heard.join().unwrap().unwrap(), b"goodbye", "{server}");
    }
}

#[test]
fn a_tunnel_that_turns_bulk_midway_keeps_every_byte_in_order() {
    // The spliced pump copies a direction's first reads and splices once one fills a whole
    // buffer: small exchanges, then bulk, then small again must all arrive intact.
    for server in ["splice = true", "splice = false"] {
        let gw = Gateway::start(&config(server, DIRECT_EXIT));
        let echo = echo_server("127.0.0.1:0");
        let spliced = server == "splice = true";
        let pipes = || gw.fd_counts().0;
        let before = pipes();
        let mut s = socks5_tunnel(gw.addr(), &Target::Addr(echo));
        s.set_read_timeout(Some(WAIT)).unwrap();
        let round_trips = |s: &mut std::net::TcpStream, seed: usize| {
            for i in 0..20 {
                let msg = pattern(1 + (i * 397 + seed) % 3000);
                s.write_all(&msg).unwrap();
                let mut back = vec![0u8; msg.len()];
                s.read_exact(&mut back).unwrap();
                assert!(back == msg, "{server}: round trip {i} came back changed");
            }
        };
        round_trips(&mut s, 0);
        // Small reads are copied: no relay pipe yet, on either pump.
        assert_eq!(pipes(), before, "{server}: small reads took a pipe");
        // Bulk both ways, without a FIN: the tunnel stays open for what follows.
        let bulk = pattern(5 * 1024 * 1024 + 11);
        let mut w = s.try_clone().unwrap();
        let sent = bulk.clone();
        let writer = std::thread::spawn(move || w.write_all(&sent));
        let mut back = vec![0u8; bulk.len()];
        s.read_exact(&mut back).unwrap();
        writer.join().unwrap().unwrap();
        assert!(back == bulk, "{server}: the bulk part came back changed");
        // Bulk is spliced: the core made pipes for it (kept in its pool or in flight).
        assert_eq!(pipes() > before, spliced, "{server}: pipes after bulk");
        round_trips(&mut s, 7);
        let tail = pattern(100_003);
        assert!(
            echo_through(&mut s, &tail) == tail,
            "{server}: the last part came back changed"
        );
    }
}

/// The gateway's descriptor limit: set to `new` (if given); the one before is returned.
fn nofile_limit(pid: u32, new: Option<&libc::rlimit>) -> libc::rlimit {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let new = new.map_or(std::ptr::null(), |l| l as *const libc::rlimit);
    // SAFETY: valid pointers (or null: no change).
    let rc = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, new, &mut old) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    old
}

/// Lower the gateway's soft descriptor limit so that exactly `room` more descriptors can
/// be opened (new ones take the lowest free numbers); the limit before is returned.
fn leave_room_for(pid: u32, room: usize) -> libc::rlimit {
    let open: std::collections::HashSet<usize> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let mut limit = 0;
    let mut free = 0;
    while free < room || open.contains(&limit) {
        if !open.contains(&limit) {
            free += 1;
        }
        limit += 1;
    }
    let old = nofile_limit(pid, None);
    let lowered = libc::rlimit {
        rlim_cur: limit as libc::rlim_t,
        rlim_max: old.rlim_max,
    };
    nofile_limit(pid, Some(&lowered));
    old
}

#[test]
fn a_gateway_out_of_descriptors_for_pipes_relays_bulk_by_copying() {
    // A gateway at its descriptor limit can still accept and dial, but not make the pipes
    // a bulk direction splices through: the tunnel copies instead of ending mid-transfer.
    let cfg = config("splice = true", DIRECT_EXIT).replace("workers = 2", "workers = 1");
    let gw = Gateway::start(&cfg);
    let echo = echo_server("127.0.0.1:0");
    let pid = gw.child.id();
    // The core's first tunnel sets up what it keeps (its epoll instance among them).
    let warm = pattern(1000);
    let mut s = socks5_tunnel(gw.addr(), &Target::Addr(echo));
    s.set_read_timeout(Some(WAIT)).unwrap();
    assert!(echo_through(&mut s, &warm) == warm);
    drop(s);
    let pipes_before = gw.fd_counts().0;
    // Room for the client's socket and the upstream one, none for a pipe. A descriptor
    // something else in the gateway opens meanwhile can take that room: try again then.
    let mut s = None;
    let mut old = None;
    for _ in 0..5 {
        old = Some(leave_room_for(pid, 2));
        let (c, out) = socks5(gw.addr(), "alice", "secret", 1, &Target::Addr(echo));
        if matches!(out, SocksOutcome::Reply(0, _)) {
            s = Some(c);
            break;
        }
        nofile_limit(pid, old.as_ref());
    }
    let mut s = s.expect("no tunnel within the lowered descriptor limit");
    s.set_read_timeout(Some(WAIT)).unwrap();
    let bulk = pattern(4 * 1024 * 1024 + 5);
    let mut w = s.try_clone().unwrap();
    let sent = bulk.clone();
    let writer = std::thread::spawn(move || w.write_all(&sent));
    let mut back = vec![0u8; bulk.len()];
    s.read_exact(&mut back)
        .expect("the bulk transfer was cut off");
    writer.join().unwrap().unwrap();
    assert!(back == bulk, "the bulk came back changed");
    assert_eq!(
        gw.fd_counts().0,
        pipes_before,
        "a pipe was made past the limit"
    );
    nofile_limit(pid, old.as_ref());
    // With descriptors back, the same tunnel goes on and new ones splice again.
    let tail = pattern(100_003);
    assert!(echo_through(&mut s, &tail) == tail);
    let mut t = socks5_tunnel(gw.addr(), &Target::Addr(echo));
    t.set_read_timeout(Some(WAIT)).unwrap();
    let big = pattern(2 * 1024 * 1024);
    assert!(echo_through(&mut t, &big) == big);
    assert!(
        gw.fd_counts().0 > pipes_before,
        "no pipe once descriptors were back"
    );
}

#[test]
fn source_ip_is_what_the_origin_sees() {
    let exit =
        "[[exit]]\nnetwork = \"residential\"\nkind = \"direct\"\nsource_ip = \"127.0.0.2\"\n";
    let gw = Gateway::start(&config("", exit));
    let o = http_origin();
    let mut s = socks5_tunnel(gw.addr(), &Target::Addr(o.addr));
    s.write_all(b"GET /ip HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let r = read_response(&mut s, false);
    assert_eq!(r.text(), "127.0.0.2");
    // And over HTTP forwarding too.
    assert_eq!(http_get(gw.addr(), &o.url("/ip")).text(), "127.0.0.2");
}

#[test]
fn a_target_that_refuses_is_reply_5_and_the_next_dial_still_connects() {
    let gw = gateway();
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    // The connect's readiness poll reports the refusal (POLLERR): the client hears why.
    let (_, out) = socks5(gw.addr(), "alice", "secret", 1, &Target::Addr(refused));
    assert!(matches!(out, SocksOutcome::Reply(5, _)), "{out:?}");
    let echo = echo_server("127.0.0.1:0");
    let mut s = socks5_tunnel(gw.addr(), &Target::Addr(echo));
    s.write_all(b"after").unwrap();
    let mut back = [0u8; 5];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"after");
}
