//! HTTP proxy through the real gateway: CONNECT, forwarding, framing, errors.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::origin::{echo_server, http_origin};
use common::*;
use std::io::Write;

fn gateway() -> Gateway {
    Gateway::start(&config("", DIRECT_EXIT))
}

fn auth() -> String {
    basic("alice", "secret")
}

#[test]
fn connect_tunnel_forwards_leftover_bytes() {
    let gw = gateway();
    let echo = echo_server("127.0.0.1:0");
    let mut s = connect(gw.addr());
    let req = format!(
        "CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\nProxy-Authorization: {}\r\n\r\nearly",
        auth()
    );
    s.write_all(req.as_bytes()).unwrap();
    let r = read_response(&mut s, true);
    assert_eq!((r.code, r.reason.as_str()), (200, "Connection established"));
    let got = echo_through(&mut s, &pattern(3 << 20));
    let mut want = b"early".to_vec();
    want.extend(pattern(3 << 20));
    assert!(got == want);
}

#[test]
fn forward_get_strips_hop_by_hop_and_uses_origin_form() {
    let gw = gateway();
    let o = http_origin();
    let raw = format!(
        "GET {} HTTP/1.1\r\nHost: wrong.example\r\nProxy-Authorization: {}\r\nProxy-Connection: keep-alive\r\n\
         Connection: keep-alive, X-Drop\r\nX-Drop: 1\r\nKeep-Alive: 30\r\nTE: trailers\r\nUpgrade: h2c\r\nX-Keep: 2\r\n\r\n",
        o.url("/ip?q=1"),
        auth()
    );
    let (_, r) = http_raw(gw.addr(), raw.as_bytes());
    assert_eq!((r.code, r.text().as_str()), (200, "127.0.0.1"));
    assert_eq!(r.header("x-origin"), Some("yes"));
    let head = o.last_head();
    assert!(head.starts_with("GET /ip?q=1 HTTP/1.1\r\n"), "{head}");
    assert!(head.contains(&format!("Host: {}\r\n", o.addr)), "{head}");
    assert!(head.contains("X-Keep: 2\r\n"), "{head}");
    for gone in [
        "Proxy-Authorization",
        "Proxy-Connection",
        "X-Drop",
        "Keep-Alive",
        "TE:",
        "Upgrade",
        "wrong.example",
    ] {
        assert!(!head.contains(gone), "{gone} leaked: {head}");
    }
}

#[test]
fn post_bodies_content_length_and_chunked() {
    let gw = gateway();
    let o = http_origin();
    let body = pattern(300_000);
    let mut s = connect(gw.addr());
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {}\r\nContent-Length: {}\r\n\r\n",
        o.url("/echo"),
        auth(),
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body).unwrap();
    let r = read_response(&mut s, false);
    assert_eq!(r.code, 200);
    assert!(r.body == body);
    // Chunked request on the same connection.
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        o.url("/echo"),
        auth()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n")
        .unwrap();
    let r = read_response(&mut s, false);
    assert_eq!(r.text(), "hello world");
}

#[test]
fn keep_alive_reuses_client_and_origin_connections() {
    let gw = gateway();
    let o = http_origin();
    let mut s = connect(gw.addr());
    for _ in 0..5 {
        let raw = format!(
            "GET {} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {}\r\n\r\n",
            o.url("/"),
            auth()
        );
        s.write_all(raw.as_bytes()).unwrap();
        let r = read_response(&mut s, false);
        assert_eq!((r.code, r.text().as_str()), (200, "ok"));
        assert_eq!(r.header("connection"), Some("keep-alive"));
    }
    assert_eq!(o.connections(), 1);
}

#[test]
fn response_framing_chunked_close_head_204() {
    let gw = gateway();
    let o = http_origin();
    let mut s = connect(gw.addr());
    let get = |path: &str, method: &str| {
        format!(
            "{method} {} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {}\r\n\r\n",
            o.url(path),
            auth()
        )
    };
    s.write_all(get("/chunked", "GET").as_bytes()).unwrap();
    let r = read_response(&mut s, false);
    assert_eq!(r.text(), "hello chunked");
    s.write_all(get("/head", "HEAD").as_bytes()).unwrap();
    let r = read_response(&mut s, true);
    assert_eq!((r.code, r.header("content-length")), (200, Some("5")));
    s.write_all(get("/nocontent", "GET").as_bytes()).unwrap();
    let r = read_response(&mut s, false);
    assert_eq!(r.code, 204);
    s.write_all(get("/close", "GET").as_bytes()).unwrap();
    let r = read_response(&mut s, false);
    assert_eq!(
        (r.text().as_str(), r.header("connection")),
        ("until close", Some("close"))
    );
    // HTTP/1.0 client gets a chunked response de-chunked and delimited by close.
    let raw = format!(
        "GET {} HTTP/1.0\r\nProxy-Authorization: {}\r\n\r\n",
        o.url("/chunked"),
        auth()
    );
    let (_, r) = http_raw(gw.addr(), raw.as_bytes());
    assert_eq!(
        (r.text().as_str(), r.header("transfer-encoding")),
        ("hello chunked", None)
    );
}

#[test]
fn expect_100_continue_end_to_end() {
    let gw = gateway();
    let o = http_origin();
    let mut s = connect(gw.addr());
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {}\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
        o.url("/expect"),
        auth()
    );
    s.write_all(head.as_bytes()).unwrap();
    // The client waits for the origin's 100 before sending the body.
    let r = read_response(&mut s, false);
    assert_eq!((r.code, r.reason.as_str()), (100, "Continue"));
    s.write_all(b"data").unwrap();
    let r = read_response(&mut s, false);
    assert_eq!((r.code, r.text().as_str()), (200, "got 4 bytes"));
    assert!(o.last_head().contains("Expect: 100-continue"));
    // An origin that refuses without reading the body: its answer reaches the client.
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {}\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
        o.url("/reject"),
        auth()
    );
    let mut s = connect(gw.addr());
    s.write_all(head.as_bytes()).unwrap();
    let r = read_response(&mut s, false);
    assert_eq!((r.code, r.text().as_str()), (413, "too big!"));
}

/// A client that sends its body without waiting for the 100 (curl does after a second), to
/// an origin that answers only once it has the body: the gateway stops waiting for the
/// origin's 100 when the body comes, and must not lose its place in the origin's bytes
/// (a read abandoned mid-wait once left its empty buffer behind, and the origin's answer
/// then parsed as a malformed head: 502).
#[test]
fn a_body_sent_before_the_100_gets_the_origins_answer() {
    use std::io::Read;
    let gw = gateway();
    let origin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/upload", origin.local_addr().unwrap());
    let (head_seen, got_head) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut c, _) = origin.accept().unwrap();
        for _ in 0..3 {
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && c.read(&mut b).unwrap_or(0) == 1 {
                head.push(b[0]);
            }
            // The gateway has sent the head and waits for this origin's 100.
            head_seen.send(()).unwrap();
            let mut body = [0u8; 4];
            if c.read_exact(&mut body).is_err() {
                return;
            }
            let answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 7\r\n\r\nstored!";
            if c.write_all(answer).is_err() {
                return;
            }
        }
    });
    let mut s = connect(gw.addr());
    for round in 0..3 {
        let head = format!(
            "POST {url} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {}\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
            auth()
        );
        s.write_all(head.as_bytes()).unwrap();
        got_head.recv().unwrap();
        // The body, before any 100: the gateway stops waiting and sends it.
        s.write_all(b"data").unwrap();
        let mut r = read_response(&mut s, false);
        if r.code == 100 {
            r = read_response(&mut s, false);
        }
        assert_eq!(
            (r.code, r.text().as_str()),
            (201, "stored!"),
            "request {round}"
        );
    }
}

#[test]
fn other_expectations_get_417() {
    let gw = gateway();
    let o = http_origin();
    let raw = format!(
        "GET {} HTTP/1.1\r\nProxy-Authorization: {}\r\nExpect: teapot\r\n\r\n",
        o.url("/"),
        auth()
    );
    let (_, r) = http_raw(gw.addr(), raw.as_bytes());
    assert_eq!(
        (r.code, r.reason.as_str(), r.text().as_str()),
        (417, "Expectation Failed", "expectation failed")
    );
    assert_eq!(o.connections(), 0);
}

#[test]
fn malformed_and_smuggling_requests_get_400() {
    let gw = gateway();
    let o = http_origin();
    let a = auth();
    let u = o.url("/");
    let rows = [
        format!("GET / HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {a}\r\n\r\n"),
        format!("POST {u} HTTP/1.1\r\nProxy-Authorization: {a}\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
        format!("POST {u} HTTP/1.1\r\nProxy-Authorization: {a}\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"),
        format!("POST {u} HTTP/1.1\r\nProxy-Authorization: {a}\r\nTransfer-Encoding: chunked, identity\r\n\r\n"),
        format!("GET {u} HTTP/1.1\r\nProxy-Authorization: {a}\r\nBad Header\r\n\r\n"),
        "GET http://h/ HTTP/7.0\r\n\r\n".to_string(),
    ];
    for raw in rows {
        let (mut s, r) = http_raw(gw.addr(), raw.as_bytes());
        assert_eq!((r.code, r.text().as_str()), (400, "bad request"), "{raw:?}");
        assert_eq!(r.header("connection"), Some("close"));
        assert!(r
            .header("proxy-status")
            .unwrap()
            .starts_with("tollgate; error=http_request_error"));
        assert!(closed_by_peer(&mut s));
    }
    assert_eq!(o.connections(), 0);
}

#[test]
fn oversized_head_gets_431() {
    let gw = gateway();
    let raw = format!(
        "GET http://127.0.0.1/ HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let mut s = connect(gw.addr());
    let _ = s.write_all(raw.as_bytes());
    let r = read_response(&mut s, false);
    assert_eq!(r.code, 431);
}

#[test]
fn missing_or_wrong_credentials_get_407_with_challenge() {
    let gw = gateway();
    let o = http_origin();
    for header in [
        String::new(),
        format!("Proxy-Authorization: {}\r\n", basic("alice", "nope")),
        format!(
            "Proxy-Authorization: {}\r\n",
            basic("alice-planet-mars", "secret")
        ),
        "Proxy-Authorization: Bearer xyz\r\n".to_string(),
    ] {
        let raw = format!("GET {} HTTP/1.1\r\n{header}\r\n", o.url("/"));
        let (_, r) = http_raw(gw.addr(), raw.as_bytes());
        assert_eq!(r.code, 407, "{header}");
        assert_eq!(r.reason, "Proxy Authentication Required");
        assert_eq!(r.text(), "Incorrect username or password");
        assert_eq!(
            r.header("proxy-authenticate"),
            Some("Basic realm=\"tollgate\"")
        );
        assert_eq!(r.header("content-type"), Some("text/plain"));
    }
    assert_eq!(o.connections(), 0);
    assert!(!gw.stderr().contains("nope"));
}

#[test]
fn account_limited_to_its_networks() {
    let cfg = config("", DIRECT_EXIT).replace(
        "network = \"residential\"\n\n[[network]]",
        "network = \"residential\"\n\n[[listener]]\nlisten = \"127.0.0.1:0\"\nnetwork = \"datacenter\"\n\n[[network]]",
    );
    let gw = Gateway::start(&cfg);
    let o = http_origin();
    // alice may only use residential: the datacenter listener says 407.
    let r = http_get(gw.addrs[1], &o.url("/"));
    assert_eq!(r.code, 407);
    assert_eq!(http_get(gw.addrs[0], &o.url("/")).code, 200);
}

#[test]
fn upstream_failures_map_to_502() {
    let gw = gateway();
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let r = http_get(gw.addr(), &format!("http://{refused}/"));
    assert_eq!(
        (r.code, r.reason.as_str(), r.text().as_str()),
        (502, "Bad Gateway", "bad gateway")
    );
    assert!(r
        .header("proxy-status")
        .unwrap()
        .contains("error=connection_refused"));
    let r = http_get(gw.addr(), "http://no-such-host.invalid/");
    assert_eq!(r.code, 502);
    assert!(r
        .header("proxy-status")
        .unwrap()
        .contains("error=dns_error"));
    let raw = format!(
        "CONNECT {refused} HTTP/1.1\r\nProxy-Authorization: {}\r\n\r\n",
        auth()
    );
    let (_, r) = http_raw(gw.addr(), raw.as_bytes());
    assert_eq!(r.code, 502);
}

#[test]
fn ttl_out_of_range_gets_455() {
    let gw = gateway();
    let o = http_origin();
    for user in ["alice-ttl-0", "alice-ttl-1441", "alice-session-s1-ttl-abc"] {
        let raw = format!(
            "GET {} HTTP/1.1\r\nProxy-Authorization: {}\r\n\r\n",
            o.url("/"),
            basic(user, "secret")
        );
        let (_, r) = http_raw(gw.addr(), raw.as_bytes());
        assert_eq!(
            (r.code, r.reason.as_str(), r.text().as_str()),
            (455, "Invalid TTL", "invalid ttl"),
            "{user}"
        );
    }
    let ok = format!(
        "GET {} HTTP/1.1\r\nProxy-Authorization: {}\r\n\r\n",
        o.url("/"),
        basic("alice-session-s1-ttl-30", "secret")
    );
    assert_eq!(http_raw(gw.addr(), ok.as_bytes()).1.code, 200);
}
