//! Fuzz entry points, shared by the cargo-fuzz targets in `fuzz/` and by the test that runs
//! the committed corpus through them (`tests/fuzz_corpus.rs`). Each checks the invariants a
//! parser must keep on any input: never panic, never claim more bytes than it was given,
//! never loop.

pub mod forward;
mod reader;

use crate::http::codec::{self, ChunkedDecoder, Parsed};
use crate::socks5::codec as socks;

/// The sniffer decides or asks for more; a decision never changes with more bytes.
pub fn sniff(data: &[u8]) {
    if let Some(p) = crate::sniff::sniff(data) {
        let mut more = data.to_vec();
        more.extend_from_slice(b" trailing");
        assert_eq!(crate::sniff::sniff(&more), Some(p));
    }
}

/// PROXY protocol headers, for every accepted version: what is consumed lies within the
/// input, and a decision never changes with more bytes after it.
pub fn proxy_header(data: &[u8]) {
    use crate::proxy_header::{parse, Versions};
    for v in [Versions::V1, Versions::V2, Versions::Any] {
        if let Ok(Parsed::Done(h, n)) = parse(data, v) {
            assert!(n <= data.len());
            let mut more = data.to_vec();
            more.extend_from_slice(b"\r\nPROXY trailing");
            let again = match parse(&more, v) {
                Ok(Parsed::Done(h2, n2)) => Some((h2, n2)),
                _ => None,
            };
            assert_eq!(again, Some((h, n)), "more bytes changed a decision");
        }
    }
}

/// Request heads: consumed is within the input, and re-encoding never panics.
pub fn http_request_head(data: &[u8]) {
    if let Ok(Parsed::Done(req, n)) = codec::parse_request(data) {
        assert!(n <= data.len());
        let mut out = Vec::new();
        req.encode_upstream(&mut out);
    }
}

/// Response heads then body framing: the first byte picks HEAD-or-not and the split size.
pub fn http_response(data: &[u8]) {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    if let Ok(Parsed::Done(resp, n)) = codec::parse_response(rest, ctl & 1 == 1) {
        assert!(n <= rest.len());
        let mut out = Vec::new();
        let relay = if ctl & 2 == 2 {
            codec::Relay::Dechunked
        } else {
            codec::Relay::Framed
        };
        resp.encode_downstream(relay, ctl & 4 == 4, &mut out);
        if resp.body == codec::Framing::Chunked {
            chunked_split(&rest[n..], usize::from(ctl >> 3) + 1);
        }
    }
}

/// Chunked decoding on arbitrary splits: the first byte is the split size.
pub fn chunked(data: &[u8]) {
    if let Some((&split, rest)) = data.split_first() {
        chunked_split(rest, usize::from(split) + 1);
    }
}

fn chunked_split(data: &[u8], step: usize) {
    let mut d = ChunkedDecoder::default();
    let mut pos = 0;
    while pos < data.len() && !d.is_done() {
        let end = (pos + step).min(data.len());
        let Ok(fed) = d.feed(&data[pos..end]) else {
            return;
        };
        assert!(fed.consumed <= end - pos);
        for r in &fed.data {
            assert!(r.start <= r.end && r.end <= fed.consumed);
        }
        // No progress on non-empty input only once done.
        assert!(fed.consumed > 0 || d.is_done());
        pos += fed.consumed;
    }
}

/// Every SOCKS5 message parser, server and client side.
pub fn socks5(data: &[u8]) {
    fn within<T>(r: Result<socks::Parsed<T>, crate::error::ProxyError>, len: usize) {
        if let Ok(socks::Parsed::Done(_, n)) = r {
            assert!(n <= len);
        }
    }
    within(socks::parse_greeting(data), data.len());
    within(socks::parse_password(data), data.len());
    within(socks::parse_request(data), data.len());
    within(socks::parse_method_reply(data), data.len());
    within(socks::parse_auth_reply(data), data.len());
    within(socks::parse_reply(data), data.len());
}

/// The username grammar: an accepted username's account is a prefix of it.
pub fn username(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = crate::auth::username::parse(s) {
        assert!(s.starts_with(p.account));
    }
}

/// The config loader: any text gives a snapshot or an error message, never a panic.
pub fn config(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = crate::config::parse(s);
    }
}
