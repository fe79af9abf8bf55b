//! PROXY protocol in (v1 and v2 headers written by the test, as a load balancer writes
//! them): the address a trusted balancer declares is the client's, for `allow_ips`, the
//! access line and the auth guard; an untrusted sender, a missing header or a malformed one
//! is closed and counted; the header's bytes are not the client's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::origin::echo_server;
use common::*;
use std::io::{Read, Write};

/// A listener behind a "balancer" on 127.0.0.1 that declares 203.0.113.7 (a documentation
/// address) for its clients; 203.0.113.7 is allow-listed for account `shop`.
fn gateway(versions: &str) -> Gateway {
    let cfg = config("", DIRECT_EXIT)
        .replace(
            "network = \"residential\"\n\n[[network]]",
            &format!(
                "network = \"residential\"\nproxy_protocol = \"{versions}\"\nproxy_protocol_from = [\"127.0.0.1/32\"]\n\n[[network]]"
            ),
        )
        .replace("[log]", "[admin]\nlisten = \"127.0.0.1:0\"\n\n[log]")
        + "\n[[user]]\nname = \"shop\"\npassword = \"unused\"\nplan = \"basic\"\nnetworks = [\"residential\"]\nallow_ips = [\"203.0.113.7\"]\n";
    assert!(cfg.contains("proxy_protocol = "), "{cfg}");
    Gateway::start(&cfg)
}

fn v1(src: &str, gw: std::net::SocketAddr) -> Vec<u8> {
    format!("PROXY TCP4 {src} 127.0.0.1 51234 {}\r\n", gw.port()).into_bytes()
}

fn v2(src: [u8; 4], gw: std::net::SocketAddr) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&51234u16.to_be_bytes());
    h.extend_from_slice(&gw.port().to_be_bytes());
    h
}

fn access_line_with(gw: &Gateway, needle: &str) -> String {
    eventually("the access line", || {
        gw.stderr()
            .lines()
            .find(|l| l.contains("access") && l.contains(needle))
            .map(str::to_owned)
    })
}

/// v1 before an HTTP CONNECT without credentials: the declared, allow-listed address is
/// the client's; the access line shows it, and counts the request but not the header.
#[test]
fn a_v1_header_declares_the_client_for_allow_ips() {
    let gw = gateway("v1");
    let echo = echo_server("127.0.0.1:0");
    let mut s = connect(gw.addr());
    let req = format!("CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\n\r\n");
    // Header and request in one write, as a balancer forwarding a fast client does.
    s.write_all(&[v1("203.0.113.7", gw.addr()), req.clone().into_bytes()].concat())
        .unwrap();
    let r = read_response(&mut s, true);
    assert_eq!(r.code, 200);
    assert_eq!(
        echo_through(&mut s, b"through the balancer"),
        b"through the balancer"
    );
    let line = access_line_with(&gw, "account=\"shop\"");
    assert!(line.contains("peer=Some(203.0.113.7:51234)"), "{line}");
    let up = req.len() + b"through the balancer".len();
    assert!(
        line.contains(&format!(" up={up} ")),
        "the header is not the client's: {line}"
    );
    // Without the header's address, the same request from the balancer needs credentials.
    let mut s = connect(gw.addr());
    s.write_all(&[v1("198.51.100.9", gw.addr()), req.into_bytes()].concat())
        .unwrap();
    assert_eq!(read_response(&mut s, true).code, 407);
}

/// v2 (binary) before a SOCKS5 greeting offering "no authentication": allow-listed by the
/// declared address; a v1 header on a v2 listener is malformed.
#[test]
fn a_v2_header_before_socks5() {
    let gw = gateway("v2");
    let echo = echo_server("127.0.0.1:0");
    let mut s = connect(gw.addr());
    s.write_all(&v2([203, 0, 113, 7], gw.addr())).unwrap();
    s.write_all(&[5, 1, 0]).unwrap();
    let mut m = [0u8; 2];
    s.read_exact(&mut m).unwrap();
    assert_eq!(m, [5, 0], "no authentication for the allow-listed address");
    s.write_all(&socks_request(1, &Target::Addr(echo))).unwrap();
    let mut r = [0u8; 10];
    s.read_exact(&mut r).unwrap();
    assert_eq!(r[1], 0);
    assert_eq!(echo_through(&mut s, b"v2"), b"v2");
    assert!(access_line_with(&gw, "account=\"shop\"").contains("peer=Some(203.0.113.7:51234)"));
    let mut s = connect(gw.addr());
    // One write, as below: the close may come before a second write could land.
    let mut hello = v1("203.0.113.7", gw.addr());
    hello.extend_from_slice(b"CONNECT x:1 HTTP/1.1\r\n\r\n");
    s.write_all(&hello).unwrap();
    assert!(closed_by_peer(&mut s));
    eventually("the malformed header counted", || {
        gw.metric(&format!(
            "tollgate_proxy_header_refused_total{{listener=\"{}\",reason=\"malformed\"}}",
            gw.addr()
        ))
        .filter(|v| *v >= 1.0)
    });
}

/// From a sender not in `proxy_protocol_from`, and from a trusted one that sends no
/// header: closed without an answer, counted by reason.
#[test]
fn untrusted_senders_and_missing_headers_are_closed() {
    let gw = gateway("any");
    let mut s = connect_from("127.0.0.2", gw.addr());
    // One write: the gateway may close (and reset) an untrusted sender before a second
    // write could land, which would fail the write rather than show the close.
    let mut hello = v1("203.0.113.7", gw.addr());
    hello.extend_from_slice(b"CONNECT x:1 HTTP/1.1\r\n\r\n");
    s.write_all(&hello).unwrap();
    assert!(closed_by_peer(&mut s), "an untrusted sender is closed");
    let mut s = connect(gw.addr());
    s.write_all(b"CONNECT x:1 HTTP/1.1\r\n\r\n").unwrap();
    assert!(
        closed_by_peer(&mut s),
        "a trusted sender without a header is closed"
    );
    for reason in ["untrusted_sender", "malformed"] {
        eventually("the refusal counted", || {
            gw.metric(&format!(
                "tollgate_proxy_header_refused_total{{listener=\"{}\",reason=\"{reason}\"}}",
                gw.addr()
            ))
            .filter(|v| *v >= 1.0)
        });
    }
}

/// HAProxy (Debian's package) in TCP mode in front of the gateway, sending PROXY v2
/// (`send-proxy-v2`) and, on a second backend, v1 (`send-proxy`): a client that reaches
/// HAProxy from 127.0.0.9 is that address to the gateway — allow-listed without
/// credentials over SOCKS5 and HTTP, on the access line as the peer.
#[test]
fn haproxy_in_front_sends_the_clients_address() {
    let cfg = config("", DIRECT_EXIT)
        .replace(
            "network = \"residential\"\n\n[[network]]",
            "network = \"residential\"\nproxy_protocol = \"any\"\nproxy_protocol_from = [\"127.0.0.1/32\"]\n\n[[network]]",
        )
        + "\n[[user]]\nname = \"office\"\npassword = \"unused\"\nplan = \"basic\"\nnetworks = [\"residential\"]\nallow_ips = [\"127.0.0.9\"]\n";
    let gw = Gateway::start(&cfg);
    let echo = echo_server("127.0.0.1:0");
    let dir = tempfile::tempdir().unwrap();
    // HAProxy binds the ports it is given: take two ephemeral ones and hand them over.
    let ports: Vec<u16> = (0..2)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .collect();
    let conf = format!(
        "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
         frontend v2\n  bind 127.0.0.1:{p2}\n  default_backend gw2\n\
         frontend v1\n  bind 127.0.0.1:{p1}\n  default_backend gw1\n\
         backend gw2\n  server gw {gw} send-proxy-v2\n\
         backend gw1\n  server gw {gw} send-proxy\n",
        p2 = ports[0],
        p1 = ports[1],
        gw = gw.addr()
    );
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, conf).unwrap();
    let _haproxy = Killed(
        std::process::Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("haproxy (scripts/test.sh installs Debian's package)"),
    );
    for port in &ports {
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        eventually("haproxy listening", || {
            std::net::TcpStream::connect(addr).ok().map(|_| ())
        });
    }
    // SOCKS5 through the v2 frontend, "no authentication" offered only.
    let v2: std::net::SocketAddr = format!("127.0.0.1:{}", ports[0]).parse().unwrap();
    let mut s = connect_from("127.0.0.9", v2);
    s.write_all(&[5, 1, 0]).unwrap();
    let mut m = [0u8; 2];
    s.read_exact(&mut m).unwrap();
    assert_eq!(m, [5, 0], "allow-listed through HAProxy's v2 header");
    s.write_all(&socks_request(1, &Target::Addr(echo))).unwrap();
    let mut r = [0u8; 10];
    s.read_exact(&mut r).unwrap();
    assert_eq!(r[1], 0);
    assert_eq!(echo_through(&mut s, b"via haproxy"), b"via haproxy");
    drop(s);
    // HTTP CONNECT without credentials through the v1 frontend.
    let v1: std::net::SocketAddr = format!("127.0.0.1:{}", ports[1]).parse().unwrap();
    let mut s = connect_from("127.0.0.9", v1);
    s.write_all(format!("CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\n\r\n").as_bytes())
        .unwrap();
    assert_eq!(read_response(&mut s, true).code, 200);
    drop(s);
    // From 127.0.0.1 through HAProxy: not allow-listed, credentials needed.
    let mut s = connect(v1);
    s.write_all(format!("CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\n\r\n").as_bytes())
        .unwrap();
    assert_eq!(read_response(&mut s, true).code, 407);
    let lines = eventually("both access lines", || {
        let log = gw.stderr();
        let found: Vec<String> = log
            .lines()
            .filter(|l| l.contains("access") && l.contains("account=\"office\""))
            .map(str::to_owned)
            .collect();
        (found.len() >= 2).then_some(found)
    });
    for l in &lines {
        assert!(l.contains("peer=Some(127.0.0.9:"), "{l}");
    }
}

/// A child process killed when the test ends, however it ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
