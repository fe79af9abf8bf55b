//! Heap allocations the gateway makes per connection (and per forwarded request), counted
//! by a global counting allocator. The gateway runs in this process (`runtime::run`, one
//! executor, loopback port); the client and the targets allocate nothing per connection
//! (fixed buffers, one thread each, sequential), so the counter's growth over N tunnels is
//! the gateway's. Logging is off (no subscriber): an access line's formatting is not counted.
//!
//! `cargo bench --bench allocs [-- N]`; `ALLOCS_TRACE=1` also prints where each allocation of
//! one more connection comes from.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
/// Heap bytes live now (allocated minus freed).
static LIVE: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// `ALLOCS_TRACE=1`: print where each allocation of one connection comes from.
static TRACE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `ALLOCS_TRACE=1`: allocations made while one idle tunnel opens, by address, until freed:
/// what is left once it idles is what an idle tunnel keeps.
static TRACK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static TRACKED: std::sync::Mutex<Vec<(usize, usize, String)>> = std::sync::Mutex::new(Vec::new());

fn track(p: *mut u8, size: usize) {
    if !TRACK.load(Ordering::Relaxed) || IN_TRACE.with(|t| t.replace(true)) {
        return;
    }
    let bt = std::backtrace::Backtrace::force_capture().to_string();
    let frames: Vec<&str> = bt
        .lines()
        .map(str::trim)
        .filter(|l| (l.contains("tollgate::") || l.contains("glommio::")) && !l.starts_with("at "))
        .take(3)
        .collect();
    TRACKED
        .lock()
        .unwrap()
        .push((p as usize, size, frames.join(" <- ")));
    IN_TRACE.with(|t| t.set(false));
}

fn untrack(p: *mut u8) {
    if !TRACK.load(Ordering::Relaxed) || IN_TRACE.with(|t| t.replace(true)) {
        return;
    }
    TRACKED.lock().unwrap().retain(|e| e.0 != p as usize);
    IN_TRACE.with(|t| t.set(false));
}

thread_local! {
    static IN_TRACE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn trace(size: usize) {
    if !TRACE.load(Ordering::Relaxed) || IN_TRACE.with(|t| t.replace(true)) {
        return;
    }
    let bt = std::backtrace::Backtrace::force_capture().to_string();
    let frames: Vec<&str> = bt
        .lines()
        .map(str::trim)
        .filter(|l| l.contains("tollgate::") || l.contains("glommio::"))
        .take(4)
        .collect();
    eprintln!("alloc {size:>6} B: {}", frames.join(" <- "));
    IN_TRACE.with(|t| t.set(false));
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        trace(l.size());
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(l.size() as u64, Ordering::Relaxed);
        LIVE.fetch_add(l.size() as i64, Ordering::Relaxed);
        let p = System.alloc(l);
        track(p, l.size());
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as i64, Ordering::Relaxed);
        untrack(p);
        System.dealloc(p, l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        trace(l.size());
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(l.size() as u64, Ordering::Relaxed);
        LIVE.fetch_add(l.size() as i64, Ordering::Relaxed);
        let p = System.alloc_zeroed(l);
        track(p, l.size());
        p
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        trace(new);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new as u64, Ordering::Relaxed);
        LIVE.fetch_add(new as i64 - l.size() as i64, Ordering::Relaxed);
        untrack(p);
        let q = System.realloc(p, l, new);
        track(q, new);
        q
    }
}

#[global_allocator]
static A: Counting = Counting;

fn counters() -> (u64, u64) {
    (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    )
}

/// Echo target: one connection at a time, 64 bytes back, then wait for the close.
fn echo_target() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            if s.read_exact(&mut buf).is_ok() && s.write_all(&buf).is_ok() {
                let _ = s.read(&mut buf);
            }
        }
    });
    addr
}

/// Echo target that keeps every connection open after its 64 bytes (idle tunnels), on one
/// thread, into storage allocated up front.
fn holding_target(max: usize) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::with_capacity(max);
        let mut buf = [0u8; 64];
        for s in l.incoming().take(max) {
            let Ok(mut s) = s else { continue };
            if s.read_exact(&mut buf).is_ok() && s.write_all(&buf).is_ok() {
                held.push(s);
            }
        }
        std::thread::park();
    });
    addr
}

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// HTTP origin: one keep-alive connection at a time, a fixed response per request head.
fn http_target() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut have = 0;
            loop {
                match s.read(&mut buf[have..]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => have += n,
                }
                while let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                    if s.write_all(RESPONSE).is_err() {
                        have = 0;
                        break;
                    }
                    buf.copy_within(end + 4..have, 0);
                    have -= end + 4;
                }
            }
        }
    });
    addr
}

fn socks5_tunnel(gw: SocketAddr, target: SocketAddr) {
    let mut s = TcpStream::connect(gw).unwrap();
    s.set_nodelay(true).unwrap();
    let SocketAddr::V4(t) = target else {
        panic!("v4")
    };
    let mut req = [0u8; 3 + 1 + 1 + 5 + 1 + 7 + 10];
    req[..3].copy_from_slice(&[5, 1, 2]);
    req[3..6].copy_from_slice(&[1, 5, b'b']);
    req[6..10].copy_from_slice(b"ench");
    req[10] = 7;
    req[11..18].copy_from_slice(b"benchpw");
    req[18..22].copy_from_slice(&[5, 1, 0, 1]);
    req[22..26].copy_from_slice(&t.ip().octets());
    req[26..28].copy_from_slice(&t.port().to_be_bytes());
    s.write_all(&req[..28]).unwrap();
    let mut back = [0u8; 2 + 2 + 10];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back[3], 0, "socks5 reply {}", back[3]);
    echo64(&mut s);
}

fn connect_tunnel(gw: SocketAddr, target: SocketAddr, head: &[u8]) {
    let mut s = TcpStream::connect(gw).unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(head).unwrap();
    let mut got = [0u8; 256];
    let mut n = 0;
    while !got[..n].ends_with(b"\r\n\r\n") {
        n += s.read(&mut got[n..]).unwrap();
    }
    assert!(got.starts_with(b"HTTP/1.1 200"), "{target}");
    echo64(&mut s);
}

fn echo64(s: &mut TcpStream) {
    let msg = [7u8; 64];
    let mut back = [0u8; 64];
    s.write_all(&msg).unwrap();
    s.read_exact(&mut back).unwrap();
}

fn measure(what: &str, n: u64, mut f: impl FnMut()) {
    for _ in 0..n / 10 {
        f(); // warm-up: pools, caches, lazily built state
    }
    let (a0, b0) = counters();
    for _ in 0..n {
        f();
    }
    let (a1, b1) = counters();
    if std::env::var_os("ALLOCS_TRACE").is_some() {
        eprintln!("== {what}: one more, traced");
        TRACE.store(true, Ordering::Relaxed);
        f();
        TRACE.store(false, Ordering::Relaxed);
    }
    println!(
        "{what:<40} {:>8.2} allocations {:>10.0} bytes",
        (a1 - a0) as f64 / n as f64,
        (b1 - b0) as f64 / n as f64
    );
}

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find(|a| a != "--bench")
        .map_or(5_000, |v| v.parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = format!(
        r#"
[server]
workers = 1
allow_private_targets = true
state_dir = "{}"
[[listener]]
listen = "127.0.0.1:{port}"
network = "n"
[[network]]
name = "n"
[[exit]]
network = "n"
kind = "direct"
[[plan]]
name = "p"
bandwidth = "1000TiB"
threads = 100000
[[user]]
name = "bench"
password = "benchpw"
plan = "p"
networks = ["n"]
"#,
        dir.path().display()
    );
    let path = dir.path().join("bench.toml");
    std::fs::write(&path, &text).unwrap();
    let snap = tollgate::config::parse(&text).unwrap();
    std::thread::spawn(move || {
        let opts = tollgate::runtime::Options { config_path: path };
        tollgate::runtime::run(opts, snap).unwrap();
    });
    let gw: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let t0 = std::time::Instant::now();
    while TcpStream::connect(gw).is_err() {
        assert!(t0.elapsed().as_secs() < 20, "gateway did not start");
        std::thread::yield_now();
    }
    let echo = echo_target();
    let origin = http_target();
    println!("per tunnel / request, {n} sequential, 1 executor:");
    measure("SOCKS5 tunnel (auth, 64 B echo, close)", n, || {
        socks5_tunnel(gw, echo)
    });
    let head = format!(
        "CONNECT {echo} HTTP/1.1\r\nProxy-Authorization: Basic YmVuY2g6YmVuY2hwdw==\r\n\r\n"
    );
    measure("HTTP CONNECT tunnel (same)", n, || {
        connect_tunnel(gw, echo, head.as_bytes())
    });
    let get = format!(
        "GET http://{origin}/x HTTP/1.1\r\nHost: {origin}\r\nProxy-Authorization: Basic YmVuY2g6YmVuY2hwdw==\r\n\r\n"
    );
    let mut client = TcpStream::connect(gw).unwrap();
    client.set_nodelay(true).unwrap();
    let mut buf = [0u8; 512];
    measure("forwarded GET (keep-alive, per request)", n, || {
        client.write_all(get.as_bytes()).unwrap();
        let mut have = 0;
        while !(have >= RESPONSE.len() && buf[..have].ends_with(b"ok")) {
            have += client.read(&mut buf[have..]).unwrap();
        }
    });
    // Idle tunnels: heap bytes the gateway keeps for each open, idle SOCKS5 tunnel (the
    // client side holds its streams in storage allocated up front).
    const IDLE: usize = 1000;
    let hold = holding_target(IDLE + 1);
    let mut open = Vec::with_capacity(IDLE);
    for _ in 0..IDLE / 10 {
        socks5_tunnel(gw, echo); // warm-up with closed tunnels
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let live0 = LIVE.load(Ordering::Relaxed);
    for _ in 0..IDLE {
        open.push(socks5_idle(gw, hold));
    }
    // Let the gateway finish with each tunnel's handshake state.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let live1 = LIVE.load(Ordering::Relaxed);
    println!(
        "{:<40} {:>10.0} heap bytes live per tunnel ({IDLE} open)",
        "idle SOCKS5 tunnel",
        (live1 - live0) as f64 / IDLE as f64
    );
    if std::env::var_os("ALLOCS_TRACE").is_some() {
        TRACK.store(true, Ordering::Relaxed);
        open.push(socks5_idle(gw, hold));
        std::thread::sleep(std::time::Duration::from_millis(300));
        TRACK.store(false, Ordering::Relaxed);
        let kept = std::mem::take(&mut *TRACKED.lock().unwrap());
        eprintln!(
            "== what one more idle tunnel keeps ({} allocations):",
            kept.len()
        );
        for (_, size, at) in &kept {
            eprintln!("kept {size:>6} B: {at}");
        }
    }
    drop(open);
    std::process::exit(0);
}

/// A SOCKS5 tunnel left open after its echo.
fn socks5_idle(gw: SocketAddr, target: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(gw).unwrap();
    s.set_nodelay(true).unwrap();
    let SocketAddr::V4(t) = target else {
        panic!("v4")
    };
    let mut req = Vec::with_capacity(28);
    req.extend_from_slice(&[5, 1, 2, 1, 5]);
    req.extend_from_slice(b"bench");
    req.push(7);
    req.extend_from_slice(b"benchpw");
    req.extend_from_slice(&[5, 1, 0, 1]);
    req.extend_from_slice(&t.ip().octets());
    req.extend_from_slice(&t.port().to_be_bytes());
    s.write_all(&req).unwrap();
    let mut back = [0u8; 2 + 2 + 10];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back[3], 0, "socks5 reply {}", back[3]);
    echo64(&mut s);
    s
}
