//! Real local origins on threads: a TCP echo server and a small HTTP/1.1 server with
//! keep-alive whose routes show what reached the origin.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Echo every byte back; on EOF from the client, finish sending and close (half-close
/// aware: replies flow after the client's FIN).
pub fn echo_server(bind: &str) -> SocketAddr {
    let l = TcpListener::bind(bind).unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = s.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    addr
}

/// What the HTTP origin saw.
#[derive(Default)]
pub struct Seen {
    pub connections: AtomicUsize,
    pub heads: Mutex<Vec<String>>,
}

pub struct Origin {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
}

impl Origin {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
    pub fn last_head(&self) -> String {
        self.seen
            .heads
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }
    pub fn connections(&self) -> usize {
        self.seen.connections.load(Ordering::SeqCst)
    }
}

pub fn http_origin() -> Origin {
    http_origin_on("127.0.0.1:0")
}

pub fn http_origin_on(bind: &str) -> Origin {
    let l = TcpListener::bind(bind).unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            s2.connections.fetch_add(1, Ordering::SeqCst);
            let seen = s2.clone();
            std::thread::spawn(move || serve(s, seen));
        }
    });
    Origin { addr, seen }
}

fn read_body(r: &mut BufReader<TcpStream>, head: &str) -> Vec<u8> {
    let lower = head.to_ascii_lowercase();
    if lower.contains("transfer-encoding: chunked") {
        let mut body = Vec::new();
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap(), 16).unwrap();
            if size == 0 {
                loop {
                    let mut t = String::new();
                    r.read_line(&mut t).unwrap();
                    if t == "\r\n" {
                        return body;
                    }
                }
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..]).unwrap();
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf).unwrap();
        }
    }
    let cl = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse::<usize>().unwrap())
        .unwrap_or(0);
    let mut body = vec![0u8; cl];
    r.read_exact(&mut body).unwrap();
    body
}

fn respond(w: &mut TcpStream, code: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {code}\r\nContent-Length: {}\r\nConnection: keep-alive\r\nX-Origin: yes\r\n\r\n",
        body.len()
    );
    let _ = w.write_all(head.as_bytes());
    let _ = w.write_all(body);
}

fn serve(s: TcpStream, seen: Arc<Seen>) {
    let peer = s.peer_addr().unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        seen.heads.lock().unwrap().push(head.clone());
        let first = head.lines().next().unwrap_or("").to_string();
        let mut parts = first.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let expects = head.to_ascii_lowercase().contains("expect: 100-continue");
        match path.split('?').next().unwrap() {
            "/ip" => respond(&mut w, "200 OK", peer.ip().to_string().as_bytes()),
            "/echo" => {
                let body = read_body(&mut r, &head);
                respond(&mut w, "200 OK", &body);
            }
            "/expect" => {
                if expects {
                    let _ = w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
                let body = read_body(&mut r, &head);
                respond(
                    &mut w,
                    "200 OK",
                    format!("got {} bytes", body.len()).as_bytes(),
                );
            }
            "/reject" => {
                // Answers without reading the body, then closes.
                let _ = w.write_all(
                    b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big!",
                );
                return;
            }
            "/chunked" => {
                let _ = read_body(&mut r, &head);
                let _ = w.write_all(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello \r\n7;x=y\r\nchunked\r\n0\r\nX-T: 1\r\n\r\n",
                );
            }
            "/close" => {
                let _ = read_body(&mut r, &head);
                let _ = w.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close");
                return;
            }
            "/head" => {
                let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
                if method != "HEAD" {
                    let _ = w.write_all(b"hello");
                }
            }
            "/big" => {
                let n: usize = path
                    .split("n=")
                    .nth(1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1024);
                respond(&mut w, "200 OK", &super::pattern(n));
            }
            "/nocontent" => {
                let _ = w.write_all(b"HTTP/1.1 204 No Content\r\n\r\n");
            }
            _ => {
                let _ = read_body(&mut r, &head);
                respond(&mut w, "200 OK", b"ok");
            }
        }
    }
}
