//! The plain-HTTP forward path against hostile origins and clients, byte for byte: response
//! framing (RFC 9112 section 6), origin reuse, request smuggling, upgrades, the plan on
//! every byte, and time limits. Origins are scripted raw bytes on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::origin::{scripted_origin, Answer};
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;

fn gateway() -> Gateway {
    Gateway::start(&config("", DIRECT_EXIT))
}

fn get(url: &str, extra: &str) -> String {
    format!(
        "GET {url} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {}\r\n{extra}\r\n",
        basic("alice", "secret")
    )
}

/// Everything the gateway sends until it closes the connection.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut b = [0u8; 65536];
    loop {
        match s.read(&mut b) {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return all,
            Err(e) => panic!("read: {e} after {:?}", String::from_utf8_lossy(&all)),
        }
    }
}

fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn transfer_encoding_wins_over_content_length_and_is_never_sent_with_it() {
    let o = scripted_origin(|_, _| {
        Answer::Send(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
        )
    });
    let gw = gateway();
    let (_, r) = http_raw(gw.addr(), get(&o.url("/"), "").as_bytes());
    assert_eq!(r.code, 200);
    assert_eq!(r.header("content-length"), None, "{:?}", r.headers);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.body, b"hello");

    // An HTTP/1.0 client gets the de-chunked body, close-delimited, without either header.
    let mut s = connect(gw.addr());
    let raw = get(&o.url("/"), "").replace("HTTP/1.1", "HTTP/1.0");
    s.write_all(raw.as_bytes()).unwrap();
    let all = String::from_utf8(read_to_close(&mut s)).unwrap();
    let (head, body) = all.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(
        !head.contains("content-length") && !head.contains("transfer-encoding"),
        "{head}"
    );
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(body, "hello");
}

/// Each answer carries more bytes than its framing; the next request must get its own.
#[test]
fn an_origin_connection_with_leftover_bytes_is_never_reused() {
    let smuggled = "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED";
    let cases: [(&str, &str, String); 4] = [
        (
            "GET",
            "/long",
            format!("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok{smuggled}"),
        ),
        (
            "HEAD",
            "/head",
            format!("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello{smuggled}"),
        ),
        (
            "GET",
            "/204",
            format!("HTTP/1.1 204 No Content\r\n\r\n{smuggled}"),
        ),
        (
            "GET",
            "/304",
            format!("HTTP/1.1 304 Not Modified\r\n\r\n{smuggled}"),
        ),
    ];
    for (method, path, first) in cases {
        let o = scripted_origin(move |n, _| {
            if n == 0 {
                Answer::Send(first.clone().into_bytes())
            } else {
                Answer::Send(ok("second"))
            }
        });
        let gw = gateway();
        let mut s = connect(gw.addr());
        let req1 = get(&o.url(path), "").replacen("GET", method, 1);
        s.write_all(req1.as_bytes()).unwrap();
        let r1 = read_response(&mut s, method == "HEAD");
        assert!(!r1.text().contains("SMUGGLED"), "{path}: {r1:?}");
        s.write_all(get(&o.url("/next"), "").as_bytes()).unwrap();
        let r2 = read_response(&mut s, false);
        assert_eq!(
            r2.text(),
            "second",
            "{path}: the second request got another's answer"
        );
        assert_eq!(
            o.connections(),
            2,
            "{path}: the dirty origin connection was reused"
        );
    }
}

#[test]
fn connection_tokens_cannot_strip_a_responses_framing() {
    let o = scripted_origin(|n, _| {
        Answer::Send(
            format!(
                "HTTP/1.1 200 OK\r\nConnection: content-length, transfer-encoding\r\nContent-Length: 5\r\n\r\nhell{n}"
            )
            .into_bytes(),
        )
    });
    let gw = gateway();
    let mut s = connect(gw.addr());
    for n in 0..2 {
        s.write_all(get(&o.url("/"), "").as_bytes()).unwrap();
        let r = read_response(&mut s, false);
        assert_eq!(r.header("content-length"), Some("5"), "{:?}", r.headers);
        assert_eq!(r.text(), format!("hell{n}"));
    }
}

#[test]
fn bare_lf_trailers_are_re_encoded_with_crlf() {
    let o = scripted_origin(|_, _| {
        Answer::Close(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\nX-Evil: 2\n\n"
                .to_vec(),
        )
    });
    let gw = gateway();
    let mut s = connect(gw.addr());
    s.write_all(get(&o.url("/"), "Connection: close\r\n").as_bytes())
        .unwrap();
    let all = String::from_utf8(read_to_close(&mut s)).unwrap();
    let body = all.split_once("\r\n\r\n").unwrap().1;
    assert_eq!(body, "5\r\nhello\r\n0\r\nX-T: 1\r\nX-Evil: 2\r\n\r\n");
}

#[test]
fn interim_responses_are_bounded_and_an_unasked_101_is_refused() {
    let flood = "HTTP/1.1 102 Processing\r\n\r\n".repeat(17)
        + "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let fat = format!(
        "HTTP/1.1 103 Early Hints\r\nLink: {}\r\n\r\n",
        "x".repeat(9000)
    )
    .repeat(2)
        + "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let fine = "HTTP/1.1 102 Processing\r\n\r\n".repeat(3)
        + "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let switch = "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\nRAW"
        .to_string();
    let answers = [flood, fat, switch, fine];
    let o = scripted_origin(move |n, _| Answer::Close(answers[n % 4].clone().into_bytes()));
    let gw = gateway();
    for i in 0..3 {
        let mut s = connect(gw.addr());
        s.write_all(get(&o.url("/"), "").as_bytes()).unwrap();
        // Interim heads may come first; the final answer is the gateway's 502.
        let r = loop {
            let r = read_response(&mut s, false);
            if !(100..200).contains(&r.code) {
                break r;
            }
        };
        assert_eq!(
            (r.code, r.text().as_str()),
            (502, "bad gateway"),
            "answer {i}"
        );
    }
    // Three interim heads are relayed, then the answer.
    let mut s = connect(gw.addr());
    s.write_all(get(&o.url("/"), "").as_bytes()).unwrap();
    for _ in 0..3 {
        assert_eq!(read_response(&mut s, true).code, 102);
    }
    let r = read_response(&mut s, false);
    assert_eq!((r.code, r.text().as_str()), (200, "ok"));
}

#[test]
fn connection_naming_a_framing_header_is_a_400_and_nothing_reaches_the_origin() {
    let o = scripted_origin(|_, _| Answer::Send(ok("ok")));
    let gw = gateway();
    let hidden = "GET /admin HTTP/1.1\r\nHost: victim\r\n\r\n";
    for token in ["content-length", "Transfer-Encoding", "host"] {
        let raw = format!(
            "POST {} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {}\r\nConnection: {token}\r\nContent-Length: {}\r\n\r\n{hidden}",
            o.url("/"),
            basic("alice", "secret"),
            hidden.len()
        );
        let (_, r) = http_raw(gw.addr(), raw.as_bytes());
        assert_eq!((r.code, r.text().as_str()), (400, "bad request"), "{token}");
    }
    assert_eq!(o.connections(), 0);
}

#[test]
fn a_requests_bare_lf_trailers_reach_the_origin_re_encoded() {
    let o = scripted_origin(|_, _| Answer::Send(ok("ok")));
    let gw = gateway();
    let raw = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {}\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-A: 1\nX-B: 2\n\n",
        o.url("/"),
        basic("alice", "secret")
    );
    let (_, r) = http_raw(gw.addr(), raw.as_bytes());
    assert_eq!(r.code, 200);
    let seen = o.received_text(0);
    assert!(
        seen.ends_with("3\r\nabc\r\n0\r\nX-A: 1\r\nX-B: 2\r\n\r\n"),
        "{seen:?}"
    );
}

#[test]
fn an_upgrade_through_forwarding_becomes_a_metered_tunnel_holding_its_slot() {
    let o = scripted_origin(|_, head| {
        assert!(
            head.to_ascii_lowercase().contains("upgrade: websocket"),
            "{head}"
        );
        Answer::Send(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\nhi"
                .to_vec(),
        )
    });
    let gw = Gateway::start(&config("", DIRECT_EXIT).replace("threads = 1000", "threads = 1"));
    let mut s = connect(gw.addr());
    let raw = get(
        &o.url("/ws"),
        "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\nSec-WebSocket-Version: 13\r\n",
    );
    s.write_all(raw.as_bytes()).unwrap();
    let r = read_response(&mut s, true);
    assert_eq!(r.code, 101);
    assert_eq!(r.header("upgrade"), Some("websocket"));
    assert!(r
        .header("connection")
        .unwrap()
        .eq_ignore_ascii_case("upgrade"));
    let mut hi = [0u8; 2];
    s.read_exact(&mut hi).unwrap();
    assert_eq!(&hi, b"hi");
    let head = o.received_text(0);
    assert!(
        head.to_ascii_lowercase().contains("connection: upgrade"),
        "{head}"
    );
    // The tunnel holds the account's only thread.
    let (_, busy) = http_raw(gw.addr(), get(&o.url("/"), "").as_bytes());
    assert_eq!(busy.code, 453);
    // Bytes after the 101 flow to the origin (which records them).
    s.write_all(b"frame\n").unwrap();
    eventually("the frame at the origin", || {
        o.received_text(0).ends_with("frame\n").then_some(())
    });
    drop(s);
    eventually("the slot back", || {
        let (_, r) = http_raw(
            gw.addr(),
            get(&o.url("/"), "Connection: close\r\n").as_bytes(),
        );
        (r.code != 453).then_some(())
    });
}

/// A stalled response body is cut after idle_timeout and its slot comes back.
#[test]
fn stalled_bodies_are_cut_after_idle_timeout_and_free_their_slot() {
    let o = scripted_origin(|n, _| {
        if n == 0 {
            Answer::Hold(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..".to_vec())
        } else {
            Answer::Send(ok("fine"))
        }
    });
    let text =
        config("idle_timeout = \"1s\"", DIRECT_EXIT).replace("threads = 1000", "threads = 1");
    let gw = Gateway::start(&text);
    let mut s = connect(gw.addr());
    s.write_all(get(&o.url("/"), "").as_bytes()).unwrap();
    assert!(
        closed_by_peer(&mut s),
        "a stalled response body held the connection"
    );
    let (_, r) = http_raw(gw.addr(), get(&o.url("/"), "").as_bytes());
    assert_eq!((r.code, r.text().as_str()), (200, "fine"));

    // A client that stalls inside its request body.
    let mut s = connect(gw.addr());
    let raw = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {}\r\nContent-Length: 100\r\n\r\nten bytes.",
        o.url("/"),
        basic("alice", "secret")
    );
    s.write_all(raw.as_bytes()).unwrap();
    assert!(
        closed_by_peer(&mut s),
        "a stalled request body held the connection"
    );
    let (_, r) = http_raw(gw.addr(), get(&o.url("/"), "").as_bytes());
    assert_eq!(r.code, 200);
}

#[test]
fn a_client_that_leaves_a_slow_origin_frees_its_slot_at_once() {
    // The first request is never answered; later ones are.
    let o = scripted_origin(|n, _| {
        if n == 0 {
            Answer::Hold(Vec::new())
        } else {
            Answer::Send(ok("fine"))
        }
    });
    let gw = Gateway::start(&config("", DIRECT_EXIT).replace("threads = 1000", "threads = 1"));
    let mut s = connect(gw.addr());
    s.write_all(get(&o.url("/slow"), "").as_bytes()).unwrap();
    eventually("the origin to hold the request", || {
        (o.requests.load(std::sync::atomic::Ordering::SeqCst) == 1).then_some(())
    });
    drop(s);
    // idle_timeout is 5 minutes: only noticing the close frees the slot in time.
    eventually("the slot back", || {
        let (_, r) = http_raw(gw.addr(), get(&o.url("/"), "").as_bytes());
        (r.code == 200).then_some(())
    });
}

/// While the origin thinks, the gateway watches the client for a close; a pipelined
/// request arriving meanwhile is not a close, and is answered after the first, in order.
#[test]
fn a_request_pipelined_while_the_origin_thinks_is_answered_after_it() {
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let wait = std::sync::Mutex::new(wait);
    let o = scripted_origin(move |n, head| {
        if n == 0 {
            let _ = wait.lock().unwrap().recv();
        }
        Answer::Send(ok(if head.contains("/first") {
            "first"
        } else {
            "second"
        }))
    });
    let gw = gateway();
    let mut s = connect(gw.addr());
    s.write_all(get(&o.url("/first"), "").as_bytes()).unwrap();
    eventually("the origin to hold the first request", || {
        (o.requests.load(std::sync::atomic::Ordering::SeqCst) == 1).then_some(())
    });
    s.write_all(get(&o.url("/second"), "").as_bytes()).unwrap();
    go.send(()).unwrap();
    let r = read_response(&mut s, false);
    assert_eq!((r.code, r.text().as_str()), (200, "first"));
    let r = read_response(&mut s, false);
    assert_eq!((r.code, r.text().as_str()), (200, "second"));
}

#[test]
fn an_unauthenticated_keep_alive_client_stays_under_handshake_timeout() {
    let gw = Gateway::start(&config("handshake_timeout = \"1s\"", DIRECT_EXIT));
    let mut s = connect(gw.addr());
    let started = std::time::Instant::now();
    for _ in 0..3 {
        s.write_all(b"GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut s, false).code, 407);
    }
    assert!(closed_by_peer(&mut s), "held open past handshake_timeout");
    // Closed by the handshake deadline, not by idle_timeout (5 minutes) or our read timeout.
    assert!(started.elapsed() < WAIT);
}

/// Found by the forward fuzz target: the gateway's own error answer to a HEAD carried a
/// body, which a keep-alive client then read as the next response.
#[test]
fn the_gateways_error_answer_to_head_has_no_body() {
    let o = scripted_origin(|_, _| Answer::Send(ok("fine")));
    let gw = gateway();
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut s = connect(gw.addr());
    let head = get(&format!("http://{refused}/"), "").replacen("GET", "HEAD", 1);
    s.write_all(head.as_bytes()).unwrap();
    let r = read_response(&mut s, true);
    assert_eq!(r.code, 502);
    assert_eq!(r.header("content-length"), Some("11"));
    s.write_all(get(&o.url("/"), "").as_bytes()).unwrap();
    let r = read_response(&mut s, false);
    assert_eq!((r.code, r.text().as_str()), (200, "fine"));
}
