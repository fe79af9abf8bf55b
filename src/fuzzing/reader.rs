//! The forward checker's client side: a strict reference reader of what the gateway sends
//! (one framing per message, marks checked), independent of the gateway's own codec except
//! for the chunked decoder, itself fuzzed on its own.

// A failed check is a panic: that is how a fuzz target reports it.
#![allow(clippy::panic)]

use futures_lite::AsyncReadExt;
use glommio::net::TcpStream;

pub(super) enum Answer {
    /// The connection closed before a final response began.
    Closed,
    /// A final response of `bytes` (interim heads included); `own` when the gateway made
    /// it; `last` when nothing may follow it (close-delimited, upgrade, `Connection: close`).
    Final { bytes: u64, own: bool, last: bool },
}

async fn fill(c: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut tmp = [0u8; 8192];
    match c.read(&mut tmp).await {
        Ok(n) if n > 0 => {
            buf.extend_from_slice(&tmp[..n]);
            true
        }
        _ => false,
    }
}

/// A mark in `bytes` other than request `i`'s (`Z<digits>Y`).
fn foreign_mark(bytes: &[u8], i: usize) -> Option<String> {
    let own = format!("Z{i}Y");
    let mut at = 0;
    while let Some(p) = bytes[at..].iter().position(|&b| b == b'Z') {
        let start = at + p;
        let digits = bytes[start + 1..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let end = start + 1 + digits;
        if digits > 0 && bytes.get(end) == Some(&b'Y') {
            let mark = String::from_utf8_lossy(&bytes[start..=end]).into_owned();
            if mark != own {
                return Some(mark);
            }
        }
        at = start + 1;
    }
    None
}

/// One response head as the client saw it.
struct Head {
    code: u16,
    len: usize,
    framing: Body,
    /// Made by the gateway (its `Proxy-Status`).
    own: bool,
    /// `Connection: close`.
    close: bool,
}

/// Read one head off `buf` (filling it from `c`); `None` when the connection closed before
/// (or inside) a head.
async fn read_head(c: &mut TcpStream, buf: &mut Vec<u8>, is_head: bool) -> Option<Head> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 160];
        let mut r = httparse::Response::new(&mut headers);
        match r.parse(buf) {
            Ok(httparse::Status::Complete(n)) => return Some(check_head(&r, n, buf, is_head)),
            Ok(httparse::Status::Partial) => {
                if !fill(c, buf).await {
                    return None;
                }
            }
            Err(e) => panic!("the gateway sent a malformed head ({e}): {:?}", show(buf)),
        }
    }
}

/// A parsed head's framing, checked strictly: one Content-Length, never with
/// Transfer-Encoding.
fn check_head(r: &httparse::Response<'_, '_>, len: usize, buf: &[u8], is_head: bool) -> Head {
    let code = r.code.unwrap_or(0);
    let (mut cl, mut chunked, mut te, mut own, mut close) = (None, false, false, false, false);
    for h in r.headers.iter() {
        let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
        if h.name.eq_ignore_ascii_case("content-length") {
            assert!(cl.is_none(), "two Content-Length headers: {:?}", show(buf));
            cl = Some(
                v.trim()
                    .parse::<u64>()
                    .unwrap_or_else(|_| panic!("bad Content-Length: {:?}", show(buf))),
            );
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // RFC 9112 6.3: chunked only when it is the last coding.
            te = true;
            chunked = v
                .split(',')
                .map(str::trim)
                .rfind(|t| !t.is_empty())
                .is_some_and(|t| t == "chunked");
        } else if h.name.eq_ignore_ascii_case("proxy-status") {
            own = v.starts_with("tollgate");
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = v.contains("close");
        }
    }
    assert!(
        !(te && cl.is_some()),
        "both CL and TE sent: {:?}",
        show(buf)
    );
    let framing = if is_head || (100..200).contains(&code) || code == 204 || code == 304 {
        Body::None
    } else if chunked {
        Body::Chunked
    } else if let Some(n) = cl {
        Body::Length(n)
    } else {
        Body::Close
    };
    Head {
        code,
        len,
        framing,
        own,
        close,
    }
}

/// The answer to request `i`: interim heads, then the final head and its body; any byte
/// marked for another request fails the check.
pub(super) async fn read_answer(
    c: &mut TcpStream,
    buf: &mut Vec<u8>,
    i: usize,
    is_head: bool,
    upgrade: bool,
) -> Answer {
    let mut total = 0u64;
    let h = loop {
        let Some(h) = read_head(c, buf, is_head).await else {
            return Answer::Closed;
        };
        let head: Vec<u8> = buf.drain(..h.len).collect();
        if let Some(m) = foreign_mark(&head, i) {
            panic!("request {i} got {m} in its head: {:?}", show(&head));
        }
        total += h.len as u64;
        if !(100..200).contains(&h.code) || h.code == 101 {
            break h;
        }
    };
    let own = h.own;
    if h.code == 101 {
        assert!(upgrade, "a 101 reached a client that did not ask");
        total += buf.len() as u64;
        return Answer::Final {
            bytes: total,
            own,
            last: true,
        };
    }
    // Cut mid-body (the plan ran out, or the origin broke off): a close.
    let Some(body) = read_body(c, buf, h.framing).await else {
        return Answer::Final {
            bytes: total,
            own,
            last: true,
        };
    };
    if let Some(m) = foreign_mark(&body, i) {
        panic!("request {i} got {m} in its body: {:?}", show(&body));
    }
    Answer::Final {
        bytes: total + body.len() as u64,
        own,
        last: h.close || matches!(h.framing, Body::Close),
    }
}

#[derive(Clone, Copy)]
enum Body {
    None,
    Length(u64),
    Chunked,
    Close,
}

/// The body's bytes as sent (framing included); `None` when the connection ended first.
async fn read_body(c: &mut TcpStream, buf: &mut Vec<u8>, framing: Body) -> Option<Vec<u8>> {
    match framing {
        Body::None => Some(Vec::new()),
        Body::Length(n) => {
            while (buf.len() as u64) < n {
                if !fill(c, buf).await {
                    return None;
                }
            }
            Some(buf.drain(..n as usize).collect())
        }
        Body::Close => {
            while fill(c, buf).await {}
            Some(std::mem::take(buf))
        }
        Body::Chunked => {
            let mut dec = crate::http::codec::ChunkedDecoder::default();
            let mut out = Vec::new();
            loop {
                if buf.is_empty() && !fill(c, buf).await {
                    return None;
                }
                let fed = match dec.feed(buf) {
                    Ok(f) => f,
                    Err(e) => panic!(
                        "the gateway sent malformed chunked framing ({e}): {:?}",
                        show(buf)
                    ),
                };
                out.extend(buf.drain(..fed.consumed));
                if fed.done {
                    assert!(
                        !out.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'),
                        "bare LF in the chunked framing sent: {:?}",
                        show(&out)
                    );
                    return Some(out);
                }
            }
        }
    }
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(600)]).into_owned()
}
