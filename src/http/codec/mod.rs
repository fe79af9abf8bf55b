//! Sans-IO HTTP/1.x head parsing (httparse) and the proxy's rules on top of it: target
//! forms, hop-by-hop headers, message framing and request-smuggling defences.

use crate::error::ProxyError;

/// Most headers accepted in one head.
pub const MAX_HEADERS: usize = 128;

pub use crate::util::Parsed;

/// How a message body is delimited (RFC 9112 section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Response only: the body runs until the origin closes.
    UntilClose,
}

fn eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Connection-level headers never forwarded (RFC 9110 section 7.6.1), plus the proxy's own.
fn is_hop_by_hop(name: &str) -> bool {
    const HOP: [&str; 7] = [
        "connection",
        "proxy-connection",
        "keep-alive",
        "proxy-authorization",
        "te",
        "upgrade",
        "proxy-authenticate",
    ];
    HOP.iter().any(|h| eq(h, name))
}

/// RFC 9110 5.6.2 token characters.
fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// Tokens of a comma-separated header value, lowercased and trimmed.
fn tokens(v: &[u8]) -> impl Iterator<Item = String> + '_ {
    v.split(|&c| c == b',')
        .map(|t| String::from_utf8_lossy(t).trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
}

/// Content-Length as digits only; several equal values are one value (RFC 9110 8.6).
fn content_length(values: &[&[u8]]) -> Result<Option<u64>, ProxyError> {
    let mut found: Option<u64> = None;
    for v in values {
        for t in v.split(|&c| c == b',') {
            let t = t.trim_ascii();
            if t.is_empty() || t.len() > 19 || !t.iter().all(u8::is_ascii_digit) {
                return Err(ProxyError::BadRequest("invalid Content-Length"));
            }
            let n: u64 = std::str::from_utf8(t)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(ProxyError::BadRequest("invalid Content-Length"))?;
            if found.is_some_and(|f| f != n) {
                return Err(ProxyError::BadRequest("conflicting Content-Length"));
            }
            found = Some(n);
        }
    }
    Ok(found)
}

/// Append one `name: value` header line.
fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Whether a message of HTTP/1.`minor` with these `Connection` tokens keeps its connection
/// open (RFC 9112 9.3: 1.1 unless `close`, 1.0 only with `keep-alive`).
fn persistent(minor: u8, conn_tokens: &[String]) -> bool {
    if minor == 0 {
        conn_tokens.iter().any(|t| t == "keep-alive")
    } else {
        !conn_tokens.iter().any(|t| t == "close")
    }
}

/// Whether every transfer coding is well formed: a token, perhaps with parameters
/// (RFC 9112 7). A list like `?chunked` would be read as chunked by a lenient peer and as an
/// unknown coding by a strict one.
fn codings_valid(values: &[&[u8]]) -> bool {
    values.iter().all(|v| {
        v.split(|&c| c == b',').all(|el| {
            let el = el.trim_ascii();
            let name_end = el.iter().position(|&c| c == b';').unwrap_or(el.len());
            let name = el[..name_end].trim_ascii();
            el.is_empty()
                || (!name.is_empty()
                    && name.iter().all(|&c| is_tchar(c))
                    && el[name_end..]
                        .iter()
                        .all(|&c| is_tchar(c) || b";= \t\"".contains(&c)))
        })
    })
}

/// Whether the last transfer coding is `chunked` (`None` when no Transfer-Encoding).
fn chunked_last(values: &[&[u8]]) -> Option<bool> {
    let all: Vec<String> = values.iter().flat_map(|v| tokens(v)).collect();
    if values.is_empty() {
        None
    } else {
        Some(all.last().is_some_and(|t| t == "chunked"))
    }
}

mod chunked;
mod request;
mod response;

pub use chunked::{ChunkedDecoder, Fed, MAX_TRAILERS};
pub use request::{parse_request, split_authority, Request, Target};
pub use response::{parse_response, Relay, Response};

#[cfg(test)]
mod tests;
