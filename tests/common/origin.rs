//! Real local origins on threads: a TCP echo server and a small HTTP/1.1 server with
//! keep-alive whose routes show what reached the origin.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Read until the client's close, answer `got N` (the bytes read), then hold the
/// connection open and never close it: an origin that ignores a half-close.
pub fn holding_origin() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got);
            let _ = s.write_all(format!("got {}", got.len()).as_bytes());
            held.push(s);
        }
    });
    addr
}

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

/// What a scripted origin does with one request.
pub enum Answer {
    /// Write these bytes, then read the next request on the connection.
    Send(Vec<u8>),
    /// Write these bytes, then close the connection.
    Close(Vec<u8>),
    /// Write these bytes, then neither read nor close until the test ends.
    Hold(Vec<u8>),
}

/// An origin whose answers the test writes byte for byte, with what it received recorded.
pub struct Scripted {
    pub addr: SocketAddr,
    /// Every byte each connection received, in accept order.
    pub received: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Requests read so far (over all connections).
    pub requests: Arc<AtomicUsize>,
}

impl Scripted {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
    pub fn connections(&self) -> usize {
        self.received.lock().unwrap().len()
    }
    /// Everything connection `i` received, as text.
    pub fn received_text(&self, i: usize) -> String {
        String::from_utf8_lossy(&self.received.lock().unwrap()[i]).into_owned()
    }
}

/// Start an origin that answers the n-th request it reads (counted over all its
/// connections, from 0) with `answer(n, head)`. Request bodies are read by Content-Length
/// or chunked framing (CRLF or bare-LF lines) before answering.
pub fn scripted_origin(answer: impl Fn(usize, &str) -> Answer + Send + Sync + 'static) -> Scripted {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    let requests = Arc::new(AtomicUsize::new(0));
    let answer = Arc::new(answer);
    let (rec, reqs) = (received.clone(), requests.clone());
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let conn = {
                let mut r = rec.lock().unwrap();
                r.push(Vec::new());
                r.len() - 1
            };
            let (rec, reqs, answer) = (rec.clone(), reqs.clone(), answer.clone());
            std::thread::spawn(move || scripted_conn(s, conn, rec, reqs, answer));
        }
    });
    Scripted {
        addr,
        received,
        requests,
    }
}

type AnswerFn = dyn Fn(usize, &str) -> Answer + Send + Sync;

fn scripted_conn(
    s: TcpStream,
    conn: usize,
    rec: Arc<Mutex<Vec<Vec<u8>>>>,
    reqs: Arc<AtomicUsize>,
    answer: Arc<AnswerFn>,
) {
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let line = |r: &mut BufReader<TcpStream>| -> Option<String> {
        let mut l = Vec::new();
        match r.read_until(b'\n', &mut l) {
            Ok(0) | Err(_) => None,
            Ok(_) => {
                rec.lock().unwrap()[conn].extend_from_slice(&l);
                Some(String::from_utf8_lossy(&l).into_owned())
            }
        }
    };
    loop {
        let mut head = String::new();
        loop {
            let Some(l) = line(&mut r) else { return };
            head.push_str(&l);
            if l == "\r\n" || l == "\n" {
                break;
            }
        }
        let lower = head.to_ascii_lowercase();
        if lower.contains("transfer-encoding: chunked") {
            loop {
                let Some(size) = line(&mut r) else { return };
                let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                    .unwrap_or(0);
                if n == 0 {
                    while let Some(t) = line(&mut r) {
                        if t == "\r\n" || t == "\n" {
                            break;
                        }
                    }
                    break;
                }
                let mut data = vec![0u8; n + 2];
                if r.read_exact(&mut data).is_err() {
                    return;
                }
                rec.lock().unwrap()[conn].extend_from_slice(&data);
            }
        } else if let Some(cl) = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            let mut data = vec![0u8; cl];
            if r.read_exact(&mut data).is_err() {
                return;
            }
            rec.lock().unwrap()[conn].extend_from_slice(&data);
        }
        let n = reqs.fetch_add(1, Ordering::SeqCst);
        match answer(n, &head) {
            Answer::Send(b) => {
                if w.write_all(&b).is_err() {
                    return;
                }
            }
            Answer::Close(b) => {
                let _ = w.write_all(&b);
                return;
            }
            Answer::Hold(b) => {
                let _ = w.write_all(&b);
                // Keep the socket open (and unread) until the process ends.
                std::mem::forget(w);
                std::mem::forget(r);
                return;
            }
        }
    }
}
