//! Tenants can't hurt each other, input is refused before it travels, records are honest,
//! and operator mistakes surface at `check`: each case as a user or an attacker sees it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::origin::{echo_server, http_origin, scripted_origin, Answer};
use common::*;
use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

/// A scripted HTTP upstream proxy: answers every CONNECT with 200 and records the lines.
fn http_upstream() -> common::origin::Scripted {
    scripted_origin(|_, _| Answer::Send(b"HTTP/1.1 200 Connection established\r\n\r\n".to_vec()))
}

fn via_upstream(up: std::net::SocketAddr, allow_private: bool) -> String {
    let exit = format!(
        "[[exit]]\nnetwork = \"residential\"\nkind = \"http\"\nurl = \"http://u:p@{up}\"\n"
    );
    let text = config("", &exit);
    if allow_private {
        text
    } else {
        text.replace(
            "allow_private_targets = true",
            "allow_private_targets = false",
        )
    }
}

#[test]
fn socks5_domain_names_with_non_host_characters_are_refused_before_they_travel() {
    let up = http_upstream();
    let gw = Gateway::start(&via_upstream(up.addr, true));
    for (class, name) in [
        ("CR LF", "a.example\r\nX-Evil: 1"),
        ("LF", "a.example\nforged access line"),
        ("NUL", "a\0b.example"),
        ("space", "a b.example"),
        ("slash", "a/b.example"),
        ("at", "user@a.example"),
        ("colon", "a.example:80"),
    ] {
        let (_, out) = socks5(gw.addr(), "alice", "secret", 1, &Target::Domain(name, 80));
        assert!(matches!(out, SocksOutcome::Reply(1, _)), "{class}: {out:?}");
    }
    assert_eq!(up.connections(), 0, "a bad name reached the upstream");
    assert!(!gw.stderr().contains("\nforged access line"));
    // A good name still travels.
    let (_, out) = socks5(
        gw.addr(),
        "alice",
        "secret",
        1,
        &Target::Domain("ok.example", 80),
    );
    assert!(matches!(out, SocksOutcome::Reply(0, _)), "{out:?}");
    assert!(up
        .received_text(0)
        .starts_with("CONNECT ok.example:80 HTTP/1.1\r\n"));
}

#[test]
fn numeric_host_forms_are_private_targets_on_upstream_exits_too() {
    let up = http_upstream();
    let gw = Gateway::start(&via_upstream(up.addr, false));
    for host in [
        "127.1",
        "2130706433",
        "0x7f000001",
        "0177.0.0.1",
        "0",
        "0xa9.0xfe.0xa9.0xfe",
    ] {
        let (_, r) = http_connect_to(gw.addr(), &format!("{host}:80"));
        assert_eq!(
            (r.code, r.text().as_str()),
            (403, "forbidden target"),
            "CONNECT {host}"
        );
        let (_, out) = socks5(gw.addr(), "alice", "secret", 1, &Target::Domain(host, 80));
        assert!(
            matches!(out, SocksOutcome::Reply(2, _)),
            "SOCKS5 {host}: {out:?}"
        );
        let r = http_get(gw.addr(), &format!("http://{host}:80/"));
        assert_eq!(r.code, 403, "GET {host}");
    }
    assert_eq!(up.connections(), 0, "a loopback form reached the upstream");
}

fn http_connect_to(gw: std::net::SocketAddr, authority: &str) -> (std::net::TcpStream, Resp) {
    http_connect_as(gw, "alice", "secret", authority)
}

fn check(text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn operator_mistakes_are_found_at_check() {
    let base = config("", DIRECT_EXIT);
    let (code, err) = check(&base.replace("level = \"info\"", "level = \"warning\""));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("[log] level = \"warning\": not a level; use one of off, error, warn, info, debug, trace"), "{err}");
    assert_eq!(
        check(&base.replace("level = \"info\"", "level = \"info,tollgate=debug\"")).0,
        Some(0)
    );

    let salt_only = base.replace(
        "password = \"secret\"",
        "password_hash = \"$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ\"",
    );
    let (code, err) = check(&salt_only);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("password_hash: incomplete"), "{err}");

    let mapped = base.replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"[::ffff:127.0.0.1]:0\"",
    );
    let (code, err) = check(&mapped);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("IPv4-mapped IPv6 address") && err.contains("write 127.0.0.1:0 instead"),
        "{err}"
    );
}

fn outcome(gw: &Gateway, code: &str, end: &str) -> f64 {
    gw.metric(&format!(
        "tollgate_outcomes_total{{code=\"{code}\",end=\"{end}\"}}"
    ))
    .unwrap_or(0.0)
}

fn with_admin(server: &str, rest: &str) -> String {
    config(server, rest).replace("[log]", "[admin]\nlisten = \"127.0.0.1:0\"\n\n[log]")
}

#[test]
fn the_record_says_how_each_tunnel_ended() {
    let text = with_admin("idle_timeout = \"1s\"\ndrain_timeout = \"1s\"", DIRECT_EXIT);
    let mut gw = Gateway::start(&text);
    let echo = echo_server("127.0.0.1:0");
    // closed: both sides finish.
    let mut t = socks5_tunnel(gw.addr(), &Target::Addr(echo));
    t.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(closed_by_peer(&mut t));
    eventually("closed", || {
        (outcome(&gw, "200", "closed") == 1.0).then_some(())
    });
    // idle: nothing either way for idle_timeout.
    let mut t = socks5_tunnel(gw.addr(), &Target::Addr(echo));
    assert!(closed_by_peer(&mut t));
    eventually("idle", || {
        (outcome(&gw, "200", "idle") == 1.0).then_some(())
    });
    // client_reset: the client resets the tunnel.
    let t = socks5_tunnel(gw.addr(), &Target::Addr(echo));
    socket2::SockRef::from(&t)
        .set_linger(Some(std::time::Duration::ZERO))
        .unwrap();
    drop(t);
    eventually("client_reset", || {
        (outcome(&gw, "200", "client_reset") == 1.0).then_some(())
    });
    // upstream_reset: the target resets.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let resetting = l.local_addr().unwrap();
    let mut t = socks5_tunnel(gw.addr(), &Target::Addr(resetting));
    let (s, _) = l.accept().unwrap();
    socket2::SockRef::from(&s)
        .set_linger(Some(std::time::Duration::ZERO))
        .unwrap();
    drop(s);
    assert!(closed_by_peer(&mut t));
    eventually("upstream_reset", || {
        (outcome(&gw, "200", "upstream_reset") == 1.0).then_some(())
    });
    // A forwarded request whose client leaves mid-request: 499, not a 400.
    let o = scripted_origin(|_, _| Answer::Hold(Vec::new()));
    let mut c = connect(gw.addr());
    let raw = format!(
        "GET {} HTTP/1.1\r\nProxy-Authorization: {}\r\n\r\n",
        o.url("/"),
        basic("alice", "secret")
    );
    c.write_all(raw.as_bytes()).unwrap();
    eventually("the origin holds it", || {
        (o.requests.load(std::sync::atomic::Ordering::SeqCst) == 1).then_some(())
    });
    drop(c);
    eventually("499", || {
        (outcome(&gw, "499", "client_reset") == 1.0).then_some(())
    });
    assert_eq!(outcome(&gw, "400", "refused"), 0.0);
    // drain: a tunnel kept busy past the drain timeout is cut and logged.
    let mut t = socks5_tunnel(gw.addr(), &Target::Addr(echo));
    gw.signal(libc::SIGTERM);
    let mut b = [0u8; 1];
    // Keep it busy so idle_timeout never fires first, until the gateway cuts it (bounded:
    // the read timeout is WAIT, and the loop count too).
    let mut cut = false;
    for _ in 0..1_000_000 {
        if t.write_all(b"x").is_err() {
            cut = true;
            break;
        }
        match t.read(&mut b) {
            Ok(1) => continue,
            Ok(_) => cut = true,
            Err(e) => cut = e.kind() != std::io::ErrorKind::WouldBlock,
        }
        break;
    }
    assert!(cut, "the tunnel was not cut at the drain timeout");
    gw.wait_exit();
    assert!(gw.stderr().contains("end=\"drain\""), "{}", gw.stderr());
}

#[test]
fn sessions_survive_a_reload_that_reorders_networks() {
    let exits: String = (2..=6)
        .map(|i| format!("[[exit]]\nnetwork = \"residential\"\nkind = \"direct\"\nsource_ip = \"127.0.0.{i}\"\n"))
        .collect();
    let gw = Gateway::start(&config("", &exits));
    let o = http_origin();
    let ip_of = |session: usize| {
        let raw = format!(
            "GET {} HTTP/1.1\r\nProxy-Authorization: {}\r\nConnection: close\r\n\r\n",
            o.url("/ip"),
            basic(&format!("alice-session-s{session}"), "secret")
        );
        http_raw(gw.addr(), raw.as_bytes()).1.text()
    };
    let before: Vec<String> = (0..8).map(ip_of).collect();
    let swapped = config("", &exits)
        .replace(
            "[[network]]\nname = \"residential\"\ntargeting = true\n\n[[network]]\nname = \"datacenter\"\ntargeting = false\n",
            "[[network]]\nname = \"datacenter\"\ntargeting = false\n\n[[network]]\nname = \"residential\"\ntargeting = true\n",
        )
        .replace("name = \"alice\"", "name = \"carol\"\npassword = \"pw\"\nplan = \"basic\"\nnetworks = [\"residential\"]\n\n[[user]]\nname = \"alice\"");
    assert_ne!(swapped, config("", &exits));
    std::fs::write(gw.config_path(), swapped).unwrap();
    gw.signal(libc::SIGHUP);
    eventually("the reload", || {
        let raw = format!(
            "GET {} HTTP/1.1\r\nProxy-Authorization: {}\r\nConnection: close\r\n\r\n",
            o.url("/"),
            basic("carol", "pw")
        );
        (http_raw(gw.addr(), raw.as_bytes()).1.code == 200).then_some(())
    });
    let after: Vec<String> = (0..8).map(ip_of).collect();
    assert_eq!(before, after, "sessions moved exit after the reload");
}

#[test]
fn what_is_not_served_is_answered() {
    let gw = Gateway::start(&config("", DIRECT_EXIT));
    // A method token, then CRLF: a malformed request line.
    let (_, r) = http_raw(gw.addr(), b"GET\r\n\r\n");
    assert_eq!((r.code, r.text().as_str()), (400, "bad request"));
    // SOCKS4 and SOCKS4a: "request rejected or failed".
    for req in [
        &b"\x04\x01\x00\x50\x7f\x00\x00\x01user\x00"[..],
        b"\x04\x01\x00\x50\x00\x00\x00\x01\x00example.com\x00",
    ] {
        let mut s = connect(gw.addr());
        s.write_all(req).unwrap();
        let mut reply = [0u8; 8];
        s.read_exact(&mut reply).unwrap();
        assert_eq!(reply[..2], [0x00, 0x5B], "{req:?}");
        assert!(closed_by_peer(&mut s));
    }
}

#[test]
fn one_tenants_failing_targets_never_bench_a_shared_exit() {
    // Two upstream proxies that answer like squid: 503 for a target they cannot reach, no
    // answer at all for a target that hangs, 200 otherwise.
    let upstream = || {
        scripted_origin(|_, head| {
            if head.starts_with("CONNECT unreachable.example") {
                Answer::Close(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".to_vec(),
                )
            } else if head.starts_with("CONNECT hangs.example") {
                Answer::Hold(Vec::new())
            } else {
                Answer::Send(b"HTTP/1.1 200 Connection established\r\n\r\n".to_vec())
            }
        })
    };
    let (a, b) = (upstream(), upstream());
    let exits = format!(
        "[[exit]]\nnetwork = \"residential\"\nkind = \"http\"\nurl = \"http://u:p@{}\"\n\n[[exit]]\nnetwork = \"residential\"\nkind = \"http\"\nurl = \"http://u:p@{}\"\n\n[[user]]\nname = \"bob\"\npassword = \"pw\"\nplan = \"basic\"\nnetworks = [\"residential\"]\n",
        a.addr, b.addr
    );
    let gw = Gateway::start(&config("connect_timeout = \"500ms\"", &exits));
    let conn =
        |user: &str, pass: &str, target: &str| http_connect_as(gw.addr(), user, pass, target).1;
    for target in ["unreachable.example:443", "hangs.example:443"] {
        for _ in 0..4 {
            let r = conn("alice", "secret", target);
            assert_eq!(
                (r.code, r.text().as_str()),
                (502, "bad gateway"),
                "{target}"
            );
        }
        // The other tenant is served through the same exits.
        for _ in 0..2 {
            let r = conn("bob", "pw", "fine.example:443");
            assert_eq!(r.code, 200, "{target}: bob got {r:?}");
        }
    }
    // Several targets failing for several accounts do bench an exit that answers unclearly.
    let broken = scripted_origin(|_, _| {
        Answer::Close(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".to_vec())
    });
    let exits = format!(
        "[[exit]]\nnetwork = \"residential\"\nkind = \"http\"\nurl = \"http://u:p@{}\"\n\n[[user]]\nname = \"bob\"\npassword = \"pw\"\nplan = \"basic\"\nnetworks = [\"residential\"]\n",
        broken.addr
    );
    let gw2 = Gateway::start(&config("", &exits));
    let connect2 = |user: &str, pass: &str, target: &str| {
        http_connect_as(gw2.addr(), user, pass, target).1.code
    };
    assert_eq!(connect2("alice", "secret", "a.example:443"), 502);
    assert_eq!(connect2("bob", "pw", "b.example:443"), 502);
    assert_eq!(connect2("alice", "secret", "c.example:443"), 502);
    assert_eq!(
        connect2("bob", "pw", "d.example:443"),
        503,
        "benched after 3 targets of 2 accounts"
    );
}

/// A SOCKS5 CONNECT sent in one write: the tunnel, the reply code of a refusal (a close
/// before any reply counts as 0xff), or `None` when nothing came back within `wait`.
fn socks_attempt(
    gw: std::net::SocketAddr,
    user: &str,
    target: std::net::SocketAddr,
    wait: Duration,
) -> Option<Result<std::net::TcpStream, u8>> {
    let mut s = connect(gw);
    let mut hello = vec![5, 1, 2, 1, user.len() as u8];
    hello.extend_from_slice(user.as_bytes());
    hello.extend_from_slice(&[2, b'p', b'w']);
    hello.extend_from_slice(&socks_request(1, &Target::Addr(target)));
    s.write_all(&hello).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    Some(read_socks_answer(&mut s)?.map(|()| s))
}

/// The method choice, the auth answer and the CONNECT reply of [`socks_attempt`].
fn read_socks_answer(s: &mut std::net::TcpStream) -> Option<Result<(), u8>> {
    let mut head = [0u8; 4];
    match s.read_exact(&mut head) {
        Ok(()) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            return None
        }
        Err(_) => return Some(Err(0xff)),
    }
    assert_eq!(head, [5, 2, 1, 0], "greeting and auth answered");
    let mut r = [0u8; 3];
    if s.read_exact(&mut r).is_err() {
        return Some(Err(0xff));
    }
    if r[1] != 0 {
        return Some(Err(r[1]));
    }
    read_reply_addr(s);
    Some(Ok(()))
}

#[test]
fn a_tenant_exhausting_the_gateways_sockets_never_benches_the_exit() {
    // A gateway allowed 256 descriptors and one direct exit; alice opens tunnels until the
    // gateway has none left for the next one's outbound socket.
    let echo = echo_server("127.0.0.1:0");
    let rest = "[[exit]]\nnetwork = \"residential\"\nkind = \"direct\"\n\n[[user]]\nname = \"bob\"\npassword = \"pw\"\nplan = \"basic\"\nnetworks = [\"residential\"]\n\n[[user]]\nname = \"greedy\"\npassword = \"pw\"\nplan = \"basic\"\nnetworks = [\"residential\"]\n";
    let cfg = config("handshake_timeout = \"60s\"", rest)
        .replace("[log]", "[admin]\nlisten = \"127.0.0.1:0\"\n\n[log]");
    let gw = Gateway::start_with_nofile(&cfg, 256);
    // One accepted connection waiting in its handshake: one descriptor in the gateway.
    let mut spare = connect(gw.addr());
    spare.write_all(&[5, 1, 2]).unwrap();
    let mut m = [0u8; 2];
    spare.read_exact(&mut m).unwrap();
    let mut held = Vec::new();
    let mut refused = None;
    for _ in 0..256 {
        match socks_attempt(gw.addr(), "greedy", echo, Duration::from_secs(2)) {
            Some(Ok(s)) => held.push(s),
            Some(Err(code)) => {
                refused = Some(code);
                break;
            }
            None => {
                // Every descriptor is in use, so this connection waits in the accept queue.
                // Giving one back lets it in, with none left for its outbound socket.
                drop(spare);
                break;
            }
        }
    }
    assert!(held.len() > 50, "{} tunnels before the limit", held.len());
    // Now each new tunnel is refused: SOCKS5 general failure (503 "out of sockets").
    let mut codes = Vec::new();
    codes.extend(refused);
    while codes.len() < 6 {
        let r = socks_attempt(gw.addr(), "greedy", echo, Duration::from_secs(10));
        match r {
            Some(Err(code)) => codes.push(code),
            other => panic!(
                "expected a refusal at the descriptor limit, got {:?}",
                other.map(|r| r.map(|_| ()))
            ),
        }
    }
    assert_eq!(codes, vec![1; 6], "general failure for each");
    assert!(gw.stderr().contains("out of sockets"), "the log says why");
    // The greedy tenant lets go: the next tenant is served through the same exit at once,
    // not answered "every matching exit is benched" for bench_for.
    drop(held);
    let mut s = eventually("a tunnel once the descriptors are back", || {
        socks_attempt(gw.addr(), "bob", echo, Duration::from_secs(2))?.ok()
    });
    assert_eq!(echo_through(&mut s, b"still served"), b"still served");
    assert!(!gw.stderr().contains("benched"), "{}", gw.stderr());
    // The operator's exit failure counter says the exit never failed: the refusals were
    // this gateway's own shortage, not connects that the exit lost.
    let (status, metrics) = gw.admin_get("/metrics");
    assert_eq!(status, 200);
    let failures: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("tollgate_exit_connect_failures"))
        .collect();
    assert!(!failures.is_empty(), "{metrics}");
    assert!(failures.iter().all(|l| l.ends_with(" 0")), "{failures:?}");
}

#[test]
fn one_account_creating_sessions_never_moves_anothers() {
    let exits: String = (2..=6)
        .map(|i| format!("[[exit]]\nnetwork = \"residential\"\nkind = \"direct\"\nsource_ip = \"127.0.0.{i}\"\n"))
        .collect();
    let users = "[[user]]\nname = \"greedy\"\npassword = \"pw\"\nplan = \"basic\"\nnetworks = [\"residential\"]\n\n[routing]\nmax_sessions = 640\n";
    let gw = Gateway::start(&config("", &format!("{exits}\n{users}")));
    let o = http_origin();
    // Keep-alive connections: one request per session.
    let ip_of = |s: &mut std::net::TcpStream, user: &str, pass: &str| {
        let raw = format!(
            "GET {} HTTP/1.1\r\nProxy-Authorization: {}\r\n\r\n",
            o.url("/ip"),
            basic(user, pass)
        );
        s.write_all(raw.as_bytes()).unwrap();
        read_response(s, false).text()
    };
    let mut v = connect(gw.addr());
    let before: Vec<String> = (0..16)
        .map(|i| ip_of(&mut v, &format!("alice-session-v{i}"), "secret"))
        .collect();
    let mut g = connect(gw.addr());
    for i in 0..1500 {
        ip_of(&mut g, &format!("greedy-session-g{i}"), "pw");
    }
    let after: Vec<String> = (0..16)
        .map(|i| ip_of(&mut v, &format!("alice-session-v{i}"), "secret"))
        .collect();
    assert_eq!(
        before, after,
        "another account's sessions moved the victim's"
    );
}

#[test]
fn the_admin_endpoint_serves_while_other_clients_trickle() {
    let gw = Gateway::start(&with_admin("", DIRECT_EXIT));
    let admin = gw.admin.unwrap();
    // Healthy once every executor has ticked.
    eventually("healthy", || {
        (gw.admin_get("/healthz").0 == 200).then_some(())
    });
    // Ten clients that send half a request line and stall.
    let mut tricklers: Vec<std::net::TcpStream> = (0..10)
        .map(|_| {
            let mut s = connect(admin);
            s.write_all(b"GET /metr").unwrap();
            s
        })
        .collect();
    for _ in 0..5 {
        assert_eq!(gw.admin_get("/healthz"), (200, "ok\n".to_string()));
    }
    // The health checks were answered while every trickler was still connected.
    for t in &mut tricklers {
        t.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        let still_open =
            matches!(t.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        assert!(
            still_open,
            "a trickling admin client was closed to serve /healthz"
        );
    }
    assert_eq!(gw.admin_get("/nope").0, 404);
    assert!(gw
        .admin_get("/metrics")
        .1
        .contains("tollgate_connections_active"));
}
