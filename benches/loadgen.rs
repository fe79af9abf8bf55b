//! tollgate's load generator for `scripts/bench.sh`: drives any SOCKS5 or HTTP proxy with
//! bounded loops and prints one JSON line of results. It hosts its own targets (echo, source,
//! sink, keep-alive HTTP origin) on 127.0.0.1 ephemeral ports, so every proxy is measured
//! against the same ones.
//!
//! ```text
//! cargo bench --bench loadgen -- MODE PROXY [options]
//!   MODE: tunnels-socks5 | tunnels-connect | tunnels-direct | up-socks5 | down-socks5 |
//!         up-connect | down-connect | forward | idle-socks5
//!   (tunnels-direct: the same open/echo/close straight to the echo target, the latency
//!   baseline the tunnel modes' p50/p99 are compared with)
//!   PROXY: host:port     --user U --pass P   --conc N   --secs S   --idle N   --hold N
//! ```
//! `--hold N` (tunnel modes): open N more tunnels (direct ones for tunnels-direct) before
//! the load starts and keep them open, idle, until it ends: the load then runs beside N
//! open tunnels without N more threads competing for the CPU. Once they are open it prints
//! `{"held":N}` and waits for a line on stdin before the load starts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Each tunnel's open-echo-close time (µs), gathered from every thread at its end.
static LATENCIES: Mutex<Vec<u32>> = Mutex::new(Vec::new());
/// How many of `--hold` tunnels were open during the load.
static HELD: AtomicU64 = AtomicU64::new(0);

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Opts {
    mode: String,
    proxy: SocketAddr,
    user: Option<String>,
    pass: Option<String>,
    conc: usize,
    secs: f64,
    idle: usize,
    hold: usize,
}

fn opts() -> Opts {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let get = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1).cloned())
    };
    Opts {
        mode: args.first().cloned().expect("mode"),
        proxy: args
            .get(1)
            .expect("proxy")
            .parse()
            .expect("proxy host:port"),
        user: get("--user"),
        pass: get("--pass"),
        conc: get("--conc").map_or(32, |v| v.parse().unwrap()),
        secs: get("--secs").map_or(10.0, |v| v.parse().unwrap()),
        idle: get("--idle").map_or(1000, |v| v.parse().unwrap()),
        hold: get("--hold").map_or(0, |v| v.parse().unwrap()),
    }
}

fn spawn_server(handler: fn(TcpStream)) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            // Small stacks: the growth benchmark runs 10,000 of these.
            let _ = std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || handler(s));
        }
    });
    addr
}

fn echo(mut s: TcpStream) {
    let mut b = [0u8; 65536];
    while let Ok(n) = s.read(&mut b) {
        if n == 0 || s.write_all(&b[..n]).is_err() {
            break;
        }
    }
}

fn source(mut s: TcpStream) {
    let b = vec![0u8; 256 * 1024];
    while s.write_all(&b).is_ok() {}
}

fn sink(mut s: TcpStream) {
    let mut b = vec![0u8; 256 * 1024];
    while let Ok(n) = s.read(&mut b) {
        if n == 0 {
            break;
        }
    }
}

fn origin(s: TcpStream) {
    // One write per response and no Nagle: otherwise delayed ACKs, not the proxy, set the pace.
    s.set_nodelay(true).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut resp =
        b"HTTP/1.1 200 OK\r\nContent-Length: 64\r\nContent-Type: text/plain\r\n\r\n".to_vec();
    resp.extend_from_slice(&[b'x'; 64]);
    let mut r = BufReader::new(s);
    let mut line = String::new();
    loop {
        line.clear();
        let mut blank = false;
        while !blank {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            blank = line == "\r\n";
        }
        if w.write_all(&resp).is_err() {
            return;
        }
    }
}

fn basic(o: &Opts) -> String {
    use base64::Engine;
    match (&o.user, &o.pass) {
        (Some(u), Some(p)) => format!(
            "Proxy-Authorization: Basic {}\r\n",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        ),
        _ => String::new(),
    }
}

/// A response head, read the way a client with a buffer reads it (not a byte per `recv`):
/// the head, and the bytes that came after it in the same reads (a forwarded response's
/// body).
fn read_head(s: &mut TcpStream) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 || buf.len() + n > 16 * 1024 {
            return None;
        }
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(from + i + 4);
            return Some((buf, rest));
        }
    }
}

/// A tunnel to `target` through the proxy, by SOCKS5 (with RFC 1929 when a user is given)
/// or HTTP CONNECT.
fn tunnel(o: &Opts, socks: bool, target: SocketAddr) -> Option<TcpStream> {
    let mut s = TcpStream::connect(o.proxy).ok()?;
    s.set_nodelay(true).ok()?;
    if socks {
        let auth = o.user.is_some();
        s.write_all(if auth { &[5, 1, 2] } else { &[5, 1, 0] })
            .ok()?;
        let mut m = [0u8; 2];
        s.read_exact(&mut m).ok()?;
        if auth {
            let (u, p) = (o.user.as_deref()?, o.pass.as_deref()?);
            let mut a = vec![1, u.len() as u8];
            a.extend_from_slice(u.as_bytes());
            a.push(p.len() as u8);
            a.extend_from_slice(p.as_bytes());
            s.write_all(&a).ok()?;
            s.read_exact(&mut m).ok()?;
            if m[1] != 0 {
                return None;
            }
        }
        let SocketAddr::V4(t) = target else {
            return None;
        };
        let mut req = vec![5, 1, 0, 1];
        req.extend_from_slice(&t.ip().octets());
        req.extend_from_slice(&t.port().to_be_bytes());
        s.write_all(&req).ok()?;
        let mut rep = [0u8; 10];
        s.read_exact(&mut rep).ok()?;
        (rep[1] == 0).then_some(s)
    } else {
        // One write, as a client sends its request (`write!` on the stream would send each
        // formatted piece as its own segment, and cost every proxy a wake per piece).
        let req = format!(
            "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{}\r\n",
            basic(o)
        );
        s.write_all(req.as_bytes()).ok()?;
        let (head, rest) = read_head(&mut s)?;
        // Some proxies (tinyproxy) answer CONNECT as HTTP/1.0. The origin speaks only
        // after the client, so nothing may follow the head yet.
        ((head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200"))
            && rest.is_empty())
        .then_some(s)
    }
}

fn run_threads(
    o: &Opts,
    work: impl Fn(&AtomicBool, &AtomicU64, &AtomicU64) + Send + Sync + 'static,
) -> (u64, u64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let work = Arc::new(work);
    let t0 = Instant::now();
    let threads: Vec<_> = (0..o.conc)
        .map(|_| {
            let (stop, ops, bytes, work) = (stop.clone(), ops.clone(), bytes.clone(), work.clone());
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || work(&stop, &ops, &bytes))
                .expect("spawn a load thread")
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(o.secs));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    (
        ops.load(Ordering::Relaxed),
        bytes.load(Ordering::Relaxed),
        t0.elapsed().as_secs_f64(),
    )
}

fn main() {
    let o = Arc::new(opts());
    let (ops, bytes, secs) = match o.mode.as_str() {
        m @ ("tunnels-socks5" | "tunnels-connect" | "tunnels-direct") => {
            let echo = spawn_server(echo);
            let socks = m == "tunnels-socks5";
            let direct = m == "tunnels-direct";
            // One open connection of this mode: straight to the echo target, or a tunnel.
            let open = move |o: &Opts| {
                if direct {
                    TcpStream::connect(echo).ok()
                } else {
                    tunnel(o, socks, echo)
                }
            };
            let held: Vec<TcpStream> = (0..o.hold).filter_map(|_| open(&o)).collect();
            HELD.store(held.len() as u64, Ordering::Relaxed);
            if o.hold > 0 {
                // Tell the driver they are open (so it can start counting the proxy's CPU
                // from here), and start the load once it answers.
                println!("{{\"held\":{}}}", held.len());
                let _ = std::io::stdout().flush();
                let _ = std::io::stdin().read_line(&mut String::new());
            }
            let oo = o.clone();
            let r = run_threads(&o, move |stop, ops, _| {
                let msg = [7u8; 64];
                let mut back = [0u8; 64];
                let mut lat = Vec::new();
                // Bounded: stops at the deadline, at most 10 M tunnels per thread.
                for _ in 0..10_000_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let t = Instant::now();
                    if let Some(mut s) = open(&oo) {
                        if s.write_all(&msg).is_ok() && s.read_exact(&mut back).is_ok() {
                            drop(s);
                            lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                            ops.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                LATENCIES.lock().unwrap().extend(lat);
            });
            drop(held);
            r
        }
        m @ ("up-socks5" | "down-socks5" | "up-connect" | "down-connect") => {
            let up = m.starts_with("up");
            let target = if up {
                spawn_server(sink)
            } else {
                spawn_server(source)
            };
            let socks = m.ends_with("socks5");
            let oo = o.clone();
            run_threads(&o, move |stop, ops, bytes| {
                let Some(mut s) = tunnel(&oo, socks, target) else {
                    return;
                };
                ops.fetch_add(1, Ordering::Relaxed);
                let mut buf = vec![0u8; 256 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    let n = if up {
                        s.write(&buf).unwrap_or(0)
                    } else {
                        s.read(&mut buf).unwrap_or(0)
                    };
                    if n == 0 {
                        return;
                    }
                    bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
            })
        }
        "forward" => {
            let origin = spawn_server(origin);
            let oo = o.clone();
            run_threads(&o, move |stop, ops, _| {
                let req = format!(
                    "GET http://{origin}/bench HTTP/1.1\r\nHost: {origin}\r\n{}\r\n",
                    basic(&oo)
                );
                let mut s: Option<TcpStream> = None;
                let mut body = [0u8; 64];
                for _ in 0..100_000_000 {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let conn = match s.as_mut() {
                        Some(c) => c,
                        None => match TcpStream::connect(oo.proxy) {
                            Ok(c) => {
                                let _ = c.set_nodelay(true);
                                s.insert(c)
                            }
                            Err(_) => continue,
                        },
                    };
                    let ok = conn.write_all(req.as_bytes()).is_ok()
                        && read_head(conn).is_some_and(|(h, rest)| {
                            (h.starts_with(b"HTTP/1.1 200") || h.starts_with(b"HTTP/1.0 200"))
                                && rest.len() <= body.len()
                                && conn.read_exact(&mut body[rest.len()..]).is_ok()
                        });
                    if ok {
                        ops.fetch_add(1, Ordering::Relaxed);
                    } else {
                        s = None;
                    }
                }
            })
        }
        "idle-socks5" => {
            let echo = spawn_server(echo);
            let mut held = Vec::with_capacity(o.idle);
            for _ in 0..o.idle {
                if let Some(s) = tunnel(&o, true, echo) {
                    held.push(s);
                }
            }
            // Tell the driver the tunnels are up, then hold them until it closes stdin.
            println!("{{\"idle_open\":{}}}", held.len());
            let _ = std::io::stdout().flush();
            let mut sink = String::new();
            let _ = std::io::stdin().read_line(&mut sink);
            (held.len() as u64, 0, 0.0)
        }
        other => panic!("unknown mode {other}"),
    };
    let mut lat = std::mem::take(&mut *LATENCIES.lock().unwrap());
    lat.sort_unstable();
    println!(
        "{{\"mode\":\"{}\",\"ops\":{ops},\"bytes\":{bytes},\"secs\":{secs:.3},\"held\":{},\"p50_us\":{},\"p99_us\":{}}}",
        o.mode,
        HELD.load(Ordering::Relaxed),
        percentile(&lat, 0.50),
        percentile(&lat, 0.99)
    );
}
