//! Every byte of plain forwarding under the plan: Content-Length, chunked and
//! close-delimited downloads, 100-continue uploads, keep-alive clients with many requests,
//! and parallel clients on both cores. Relayed bytes never pass the plan, and the stored
//! usage equals what the clients sent and received of admitted exchanges, to the byte.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::origin::{http_origin, scripted_origin, Answer};
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

const PLAN: u64 = 1 << 20;

fn gateway() -> Gateway {
    let text = config("usage_flush = \"100ms\"", DIRECT_EXIT).replace(
        "bandwidth = \"10GiB\"\nthreads = 1000",
        "bandwidth = \"1MiB\"\nthreads = 1000",
    );
    Gateway::start(&text)
}

/// A client that counts what it sends and what it receives of admitted exchanges.
struct Client {
    s: TcpStream,
    /// Bytes of exchanges the gateway admitted (relayed or billed).
    billed: u64,
    /// Bytes received as the gateway's own refusal (never relayed).
    refusals: u64,
    /// Requests cut before any byte came back: billed only if they reached the origin
    /// (the request line and its size).
    unsure: Vec<(String, u64)>,
}

/// What one request got.
#[derive(Debug, PartialEq)]
enum Got {
    /// A complete response with this many body bytes.
    Whole(usize),
    /// The gateway cut the response (the plan ran out).
    Cut,
    /// The connection ended inside a response head: never a valid way to cut.
    TornHead,
    /// The gateway's own refusal (a `Proxy-Status: tollgate` response) with this code.
    Refused(u16),
}

impl Client {
    fn new(gw: SocketAddr) -> Client {
        Client {
            s: connect(gw),
            billed: 0,
            refusals: 0,
            unsure: Vec::new(),
        }
    }

    /// Send one request (head and body) and read its answer, interim heads included.
    fn exchange(&mut self, head: &str, body: &[u8]) -> Got {
        let mut sent = head.len() as u64;
        if self.s.write_all(head.as_bytes()).is_err() {
            return Got::Cut;
        }
        if !body.is_empty() && self.s.write_all(body).is_ok() {
            sent += body.len() as u64;
        }
        let mut got = 0u64;
        loop {
            let before = got;
            let Some(resp) = read_head(&mut self.s, &mut got) else {
                if got == 0 {
                    let line = head.lines().next().unwrap_or("").to_string();
                    self.unsure.push((line, sent));
                } else {
                    self.billed += sent + got;
                }
                return if got > before {
                    Got::TornHead
                } else {
                    Got::Cut
                };
            };
            let head = resp;
            let code: u16 = head[9..12].parse().unwrap();
            if (100..200).contains(&code) {
                continue;
            }
            let lower = head.to_ascii_lowercase();
            let cl = lower
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse::<usize>().unwrap());
            let body = match cl {
                Some(n) => read_n(&mut self.s, n, &mut got),
                None => read_all(&mut self.s, &mut got),
            };
            if lower.contains("proxy-status: tollgate") {
                self.refusals += got;
                return Got::Refused(code);
            }
            self.billed += sent + got;
            return match body {
                Some(n) => Got::Whole(n),
                None => Got::Cut,
            };
        }
    }
}

impl Client {
    /// What this client was billed for: its admitted exchanges, and the cut ones whose
    /// request `origin_saw` (by request line: path and query).
    fn billed(&self, origin_saw: &[String]) -> u64 {
        let reached = |line: &str| {
            let path = line.split_whitespace().nth(1).unwrap_or("");
            let path = path
                .split_once("://")
                .map_or(path, |(_, r)| &r[r.find('/').unwrap_or(0)..]);
            origin_saw.iter().any(|h| {
                h.lines()
                    .next()
                    .is_some_and(|l| l.split_whitespace().nth(1) == Some(path))
            })
        };
        self.billed
            + self
                .unsure
                .iter()
                .filter(|(line, _)| reached(line))
                .map(|(_, n)| n)
                .sum::<u64>()
    }
}

fn read_head(s: &mut TcpStream, got: &mut u64) -> Option<String> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => {
                *got += head.len() as u64;
                return None;
            }
        }
    }
    *got += head.len() as u64;
    Some(String::from_utf8(head).unwrap())
}

/// Read `n` body bytes: `None` when the connection ended first.
fn read_n(s: &mut TcpStream, n: usize, got: &mut u64) -> Option<usize> {
    let mut buf = vec![0u8; 65536];
    let mut left = n;
    while left > 0 {
        match s.read(&mut buf[..left.min(65536)]) {
            Ok(0) | Err(_) => return None,
            Ok(k) => {
                left -= k;
                *got += k as u64;
            }
        }
    }
    Some(n)
}

fn read_all(s: &mut TcpStream, got: &mut u64) -> Option<usize> {
    let mut buf = vec![0u8; 65536];
    let mut total = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(total),
            Err(_) => return None,
            Ok(k) => {
                total += k;
                *got += k as u64;
            }
        }
    }
}

fn get(url: &str) -> String {
    format!(
        "GET {url} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {}\r\n\r\n",
        basic("alice", "secret")
    )
}

/// Stored usage once every connection has closed and the store caught up with `billed`.
fn stored_equals(gw: &Gateway, billed: u64) {
    let used = eventually(&format!("stored usage {billed}"), || {
        let (used, _, active) = gw.stored_usage("alice");
        (active == 0 && used == billed).then_some(used)
    });
    assert!(used <= PLAN, "stored {used} is over the plan {PLAN}");
}

#[test]
fn a_download_stops_at_the_plan_for_every_framing() {
    let big = pattern(3_000_000);
    let chunked = {
        let mut b = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for part in big.chunks(100_000) {
            b.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            b.extend_from_slice(part);
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(b"0\r\n\r\n");
        b
    };
    let close = [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec(),
        big.clone(),
    ]
    .concat();
    let length = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 3000000\r\n\r\n".to_vec(),
        big.clone(),
    ]
    .concat();
    for (name, answer) in [("length", length), ("chunked", chunked), ("close", close)] {
        let o = scripted_origin(move |_, _| Answer::Close(answer.clone()));
        let gw = gateway();
        let mut c = Client::new(gw.addr());
        let got = c.exchange(&get(&o.url("/")), b"");
        assert!(matches!(got, Got::Cut | Got::Whole(_)), "{name}: {got:?}");
        assert!(
            c.billed <= PLAN,
            "{name}: {} bytes through a {PLAN}-byte plan",
            c.billed
        );
        assert!(c.billed > PLAN / 2, "{name}: only {}", c.billed);
        drop(c.s);
        stored_equals(&gw, c.billed);
    }
}

#[test]
fn uploads_with_100_continue_and_keep_alive_clients_stay_under_the_plan() {
    let o = http_origin();
    let gw = gateway();
    // Uploads: each 200 KB body is echoed back (400 KB and the heads per request).
    let body = pattern(200_000);
    let mut billed = 0;
    for _ in 0..2 {
        let mut c = Client::new(gw.addr());
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {}\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            o.url("/expect"),
            basic("alice", "secret"),
            body.len()
        );
        assert_eq!(
            c.exchange(&head, &body),
            Got::Whole("got 200000 bytes".len())
        );
        billed += c.billed;
    }
    // Then one keep-alive client downloads 20 KB at a time until the plan runs out.
    let mut c = Client::new(gw.addr());
    let mut whole = 0;
    let last = loop {
        let url = o.url(&format!("/big?i={whole}&n=20000"));
        match c.exchange(&get(&url), b"") {
            Got::Whole(_) => whole += 1,
            other => break other,
        }
        assert!(
            whole < 100,
            "the plan never ran out: {:?} {}",
            gw.stored_usage("alice"),
            c.billed
        );
    };
    assert!(matches!(last, Got::Cut | Got::Refused(452)), "{last:?}");
    billed += c.billed(&o.seen.heads.lock().unwrap());
    assert!(billed <= PLAN, "{billed} bytes through a {PLAN}-byte plan");
    drop(c.s);
    stored_equals(&gw, billed);
}

/// Small responses come with their head in one read and go out in one write (head whole,
/// body as far as the plan covers). A lone client's reads are already capped at what its
/// plan has left; clients sharing the plan drain it between one client's read and its
/// write, so there the plan ends inside such writes. No client gets a torn head, and what
/// they got is what is billed, to the byte.
#[test]
fn a_plan_ending_inside_small_responses_is_billed_to_the_byte() {
    // Head and body in one write, so that they arrive together; the head is most of it, so
    // a write the plan cuts is nearly always cut inside the head.
    let answer = [
        format!(
            "HTTP/1.1 200 OK\r\nX-Pad: {}\r\nContent-Length: 100\r\n\r\n",
            "p".repeat(2900)
        )
        .into_bytes(),
        pattern(100),
    ]
    .concat();
    let o = std::sync::Arc::new(scripted_origin(move |_, _| Answer::Send(answer.clone())));
    let gw = gateway();
    let addr = gw.addr();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let o = o.clone();
            std::thread::spawn(move || {
                let mut c = Client::new(addr);
                for i in 0..1000 {
                    match c.exchange(&get(&o.url(&format!("/small?t={t}&i={i}"))), b"") {
                        Got::Whole(n) => assert_eq!(n, 100),
                        other => return (c, other),
                    }
                }
                panic!("the plan never ran out");
            })
        })
        .collect();
    let ends: Vec<(Client, Got)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for (_, last) in &ends {
        assert!(matches!(last, Got::Cut | Got::Refused(452)), "{last:?}");
    }
    let seen: Vec<String> = (0..o.connections())
        .flat_map(|i| {
            let text = o.received_text(i);
            text.split_inclusive("\r\n\r\n")
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    let billed: u64 = ends.iter().map(|(c, _)| c.billed(&seen)).sum();
    assert!(billed <= PLAN, "{billed} bytes through a {PLAN}-byte plan");
    assert!(
        billed > PLAN / 2,
        "only {billed} of a {PLAN}-byte plan relayed"
    );
    drop(ends);
    stored_equals(&gw, billed);
}

#[test]
fn parallel_clients_on_both_cores_end_within_the_plan() {
    let o = http_origin();
    let gw = gateway();
    let addr = gw.addr();
    let threads: Vec<_> = (0..20)
        .map(|t| {
            let url = o.url(&format!("/big?t={t}"));
            std::thread::spawn(move || {
                let mut c = Client::new(addr);
                for i in 0..100 {
                    if !matches!(
                        c.exchange(&get(&format!("{url}&i={i}&n=30000")), b""),
                        Got::Whole(_)
                    ) {
                        break;
                    }
                }
                c
            })
        })
        .collect();
    let clients: Vec<Client> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let heads = o.seen.heads.lock().unwrap().clone();
    let billed: u64 = clients.iter().map(|c| c.billed(&heads)).sum();
    assert!(billed <= PLAN, "{billed} bytes through a {PLAN}-byte plan");
    assert!(billed > PLAN / 2);
    stored_equals(&gw, billed);
}

#[test]
fn tunnels_stop_at_the_plan_with_early_bytes_counted() {
    // A target that talks first and never stops: 3 MB at once.
    let big = pattern(3_000_000);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let big = big.clone();
            std::thread::spawn(move || {
                let _ = s.write_all(&big);
            });
        }
    });
    let gw = gateway();
    let mut billed = 0;
    // CONNECT
    let mut c = Counted::new(connect(gw.addr()));
    c.write(
        format!(
            "CONNECT {target} HTTP/1.1\r\nProxy-Authorization: {}\r\n\r\n",
            basic("alice", "secret")
        )
        .as_bytes(),
    );
    let mut got = c.bytes;
    let _ = read_all(&mut c.s, &mut got);
    assert!(got <= PLAN, "CONNECT: {got}");
    billed += got;
    // SOCKS5, once the first tunnel's leases are back: what is left of the plan.
    stored_equals(&gw, billed);
    let (mut s, out) = socks5(gw.addr(), "alice", "secret", 1, &Target::Addr(target));
    // greeting 3, method 2, RFC 1929 "alice"/"secret" 14, status 2, request 10, reply 10
    let handshake = 3 + 2 + 14 + 2 + 10 + 10;
    let mut got = 0;
    if matches!(out, SocksOutcome::Reply(0, _)) {
        let _ = read_all(&mut s, &mut got);
        billed += handshake + got;
    }
    assert!(billed <= PLAN, "{billed}");
    drop(s);
    stored_equals(&gw, billed);
}
