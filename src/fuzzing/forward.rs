//! The forward path's invariant checker: the real connection handler ([`crate::session::serve`],
//! sniffer, HTTP handler, forwarder, plan) runs in this process on a glommio executor, with
//! a scripted client and a scripted origin on loopback sockets. The input picks the plan,
//! the client's requests and the origin's raw answers; the checker asserts, on any input:
//!
//! 1. every request the client sends gets exactly one well-framed final response, or the
//!    connection closes (no hang: the origin's stalls end at `idle_timeout`);
//! 2. no byte of one answer reaches another request: the origin marks every answer with
//!    its request's number, and a response may carry only its own mark;
//! 3. bytes relayed to the client never exceed the plan, and the account's billed usage
//!    never exceeds it either.
//!
//! Input layout: byte 0 picks the plan, byte 1 the number of requests and the client's
//! HTTP version, then one byte per request (method and body), then the origin's answers
//! separated by `0xff 0xfe`. In an answer, `$` becomes the request's mark `Z<n>Y` (any other
//! `Z` or `Y` is dropped, so marks cannot be forged).

// An invariant checker reports a broken invariant by panicking, as fuzzers expect; it never
// runs in the gateway.
#![allow(clippy::panic)]

use super::reader::{read_answer, Answer};
use crate::worker::Worker;
use crate::world::World;
use arc_swap::ArcSwap;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

const PLANS: [u64; 5] = [300, 2_000, 10_000, 100_000, 1 << 40];

/// One scripted exchange.
struct Script {
    plan: u64,
    http10: bool,
    requests: Vec<u8>,
    answers: Vec<Vec<u8>>,
}

fn script(data: &[u8]) -> Option<Script> {
    let (&p, rest) = data.split_first()?;
    let (&shape, rest) = rest.split_first()?;
    let count = usize::from(shape & 3) + 1;
    if rest.len() < count {
        return None;
    }
    let (requests, rest) = rest.split_at(count);
    let answers = rest
        .split(|&b| b == 0xff)
        .map(|part| part.strip_prefix(&[0xfe][..]).unwrap_or(part))
        .map(|a| {
            a.iter()
                .copied()
                .filter(|&b| b != b'Z' && b != b'Y')
                .collect()
        })
        .collect();
    Some(Script {
        plan: PLANS[usize::from(p) % PLANS.len()],
        http10: shape & 4 != 0,
        requests: requests.to_vec(),
        answers,
    })
}

fn config(plan: u64) -> String {
    format!(
        r#"
[server]
workers = 1
allow_private_targets = true
idle_timeout = "20ms"
handshake_timeout = "2s"
connect_timeout = "1s"
[[listener]]
listen = "127.0.0.1:0"
network = "n"
[[network]]
name = "n"
[[exit]]
network = "n"
kind = "direct"
[[plan]]
name = "p"
bandwidth = {plan}
threads = 100
[[user]]
name = "u"
password = "p"
plan = "p"
networks = ["n"]
"#
    )
}

struct Harness {
    ex: glommio::LocalExecutor,
    worker: RefCell<Option<Rc<Worker>>>,
}

thread_local! {
    static HARNESS: Harness = Harness {
        ex: match glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make() {
            Ok(ex) => ex,
            Err(e) => panic!("cannot start a glommio executor: {e}"),
        },
        worker: RefCell::new(None),
    };
}

/// Run one scripted exchange through the real forward path and check its invariants.
pub fn run(data: &[u8]) {
    let Some(s) = script(data) else { return };
    let Ok(snap) = crate::config::parse(&config(s.plan)) else {
        panic!("harness config invalid")
    };
    // A fresh ledger for every run: the plan starts unused.
    let world = Arc::new(World::standalone(snap));
    HARNESS.with(|h| {
        h.ex.run(async {
            let w = h
                .worker
                .borrow_mut()
                .get_or_insert_with(|| worker(world.clone()))
                .clone();
            w.services.world.store(world.clone());
            // The core's views of accounts belong to the last run's ledger.
            w.core.quota.release_all();
            Box::pin(exchange(w, world, &s)).await;
        })
    });
}

fn worker(world: Arc<World>) -> Rc<Worker> {
    let services = crate::worker::Services {
        world: Arc::new(ArcSwap::from(world)),
        sessions: crate::route::Sessions {
            table: Arc::new(crate::route::sessions::SessionTable::new(1000, 1000)),
            shared: None,
        },
        guard: Arc::new(crate::auth::guard::AuthGuard::default()),
        trail: crate::support::Trail::discard(),
    };
    Worker::new(0, 1, services, Default::default())
}

/// The request for step `i`: its method, head and body.
fn request(i: usize, kind: u8, origin: std::net::SocketAddr, http10: bool) -> (bool, Vec<u8>) {
    let auth = "Proxy-Authorization: Basic dTpw\r\n";
    let v = if http10 { "1.0" } else { "1.1" };
    let keep = if http10 {
        "Connection: keep-alive\r\n"
    } else {
        ""
    };
    let url = format!("http://{origin}/r{i}");
    let (head, req) = match kind % 6 {
        0 => (false, format!("GET {url} HTTP/{v}\r\n{auth}{keep}\r\n")),
        1 => (true, format!("HEAD {url} HTTP/{v}\r\n{auth}{keep}\r\n")),
        2 => (
            false,
            format!("POST {url} HTTP/{v}\r\n{auth}{keep}Content-Length: 5\r\n\r\nhello"),
        ),
        3 => (
            false,
            format!(
                "POST {url} HTTP/{v}\r\n{auth}{keep}Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nT: 1\n\n"
            ),
        ),
        4 => (
            false,
            format!("POST {url} HTTP/{v}\r\n{auth}{keep}Expect: 100-continue\r\nContent-Length: 2\r\n\r\nhi"),
        ),
        _ => (
            false,
            format!("GET {url} HTTP/{v}\r\n{auth}{keep}Connection: upgrade\r\nUpgrade: x\r\n\r\n"),
        ),
    };
    (head, req.into_bytes())
}

async fn exchange(w: Rc<Worker>, world: Arc<World>, s: &Script) {
    let (Ok(gw), Ok(origin)) = (
        TcpListener::bind("127.0.0.1:0"),
        TcpListener::bind("127.0.0.1:0"),
    ) else {
        return;
    };
    let (Ok(gw_addr), Ok(origin_addr)) = (gw.local_addr(), origin.local_addr()) else {
        return;
    };
    let answers = Rc::new(s.answers.clone());
    let done = Rc::new(crate::util::Latch::default());
    let origin_task = glommio::spawn_local(serve_origin(origin, answers, done.clone()));
    let gateway = glommio::spawn_local(async move {
        if let Ok((stream, peer)) = gw.accept_with_peer().await {
            if let Some(conn) = crate::session::serve(w, stream, peer, 0) {
                conn.await;
            }
        }
    });
    let relayed = Box::pin(run_client(gw_addr, origin_addr, s)).await;
    // The handler returns once the client is gone: then every charge is settled.
    gateway.await;
    done.fire();
    origin_task.await;
    let used = world.ledger.get("u").map_or(0, |a| a.used());
    assert!(
        relayed <= s.plan,
        "{relayed} bytes relayed to the client under a {}-byte plan",
        s.plan
    );
    assert!(used <= s.plan, "billed {used} under a {}-byte plan", s.plan);
}

/// The client's side: one request at a time, each answer read with a strict reference
/// parser. Returns the bytes of relayed (not gateway-generated) answers it received.
async fn run_client(gw: std::net::SocketAddr, origin: std::net::SocketAddr, s: &Script) -> u64 {
    let Ok(mut c) = TcpStream::connect(gw).await else {
        return 0;
    };
    let mut relayed = 0u64;
    let mut buf: Vec<u8> = Vec::new();
    for (i, &kind) in s.requests.iter().enumerate() {
        let (is_head, req) = request(i, kind, origin, s.http10);
        if c.write_all(&req).await.is_err() {
            return relayed;
        }
        let upgrade = kind % 6 == 5;
        let within = crate::util::within(
            Duration::from_secs(5),
            Box::pin(read_answer(&mut c, &mut buf, i, is_head, upgrade)),
        )
        .await;
        let Some(answer) = within else {
            panic!("request {i} got neither an answer nor a close within 5 s");
        };
        match answer {
            Answer::Closed => return relayed,
            Answer::Final { bytes, own, last } => {
                if !own {
                    relayed += bytes;
                }
                if last {
                    return relayed;
                }
            }
        }
    }
    relayed
}

/// The scripted origin: answers request `/r<n>` with answer `n` (marks filled in), on
/// every connection it accepts, until the gateway closes.
async fn serve_origin(l: TcpListener, answers: Rc<Vec<Vec<u8>>>, done: Rc<crate::util::Latch>) {
    loop {
        let accepted = futures_lite::future::or(async { Some(l.accept().await) }, async {
            done.wait().await;
            None
        })
        .await;
        let Some(Ok(mut s)) = accepted else { return };
        let answers = answers.clone();
        glommio::spawn_local(async move {
            let mut buf = Vec::new();
            loop {
                // A head: enough to learn the request's number (its body is not needed).
                let n = loop {
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let line = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        let n = line
                            .split_whitespace()
                            .nth(1)
                            .and_then(|p| p.strip_prefix("/r"))
                            .and_then(|n| n.parse::<usize>().ok());
                        break n;
                    }
                    let mut tmp = [0u8; 4096];
                    match s.read(&mut tmp).await {
                        Ok(k) if k > 0 => buf.extend_from_slice(&tmp[..k]),
                        _ => return,
                    }
                };
                let Some(n) = n else { continue };
                let Some(a) = answers.get(n) else { return };
                let mark = format!("Z{n}Y");
                let mut out = Vec::with_capacity(a.len() + 16);
                for &b in a.iter() {
                    if b == b'$' {
                        out.extend_from_slice(mark.as_bytes());
                    } else {
                        out.push(b);
                    }
                }
                if s.write_all(&out).await.is_err() {
                    return;
                }
            }
        })
        .detach();
    }
}
