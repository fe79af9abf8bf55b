//! Response heads from origins, and how the gateway re-frames them for the client.

use super::{
    chunked_last, codings_valid, content_length, eq, is_hop_by_hop, persistent, put_header, tokens,
    Framing, Parsed, MAX_HEADERS,
};
use crate::error::ProxyError;

/// A response head from an origin, analysed for forwarding.
#[derive(Debug)]
pub struct Response {
    pub code: u16,
    pub reason: String,
    /// Headers to forward: hop-by-hop ones removed, and for a response with a body its
    /// framing headers too (the gateway writes the framing it actually sends).
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Framing,
    /// The `Transfer-Encoding` codings of a response with a body, as received.
    pub te: Option<Vec<u8>>,
    /// The `Upgrade` value of a `101 Switching Protocols`.
    pub upgrade: Option<Vec<u8>>,
    /// For a HEAD or 304 answer: the resource's length, when the origin gave a valid one
    /// (and no `Transfer-Encoding`); re-sent as `Content-Length`.
    pub described_length: Option<u64>,
    /// Whether the origin lets us reuse the connection after this response (its framing
    /// is sound and it did not ask to close).
    pub reusable: bool,
}

/// How the gateway sends a response body on to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relay {
    /// As framed by the origin (a chunked body re-chunked with clean framing).
    Framed,
    /// A chunked body without its chunk framing, delimited by closing the connection (an
    /// HTTP/1.0 client cannot read chunked).
    Dechunked,
}

/// Parse a response head; `head_request` says whether it answers a HEAD.
pub fn parse_response(buf: &[u8], head_request: bool) -> Result<Parsed<Response>, ProxyError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let consumed = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Incomplete),
        Err(_) => return Err(ProxyError::Upstream("malformed response head".into())),
    };
    let code = resp.code.unwrap_or(0);
    // Three digits, 1xx to 5xx (RFC 9110 15): `020` would go out as an invalid `20`.
    if !(100..=599).contains(&code) {
        return Err(ProxyError::Upstream("invalid response status code".into()));
    }
    let minor = resp.version.unwrap_or(1);
    let mut cl: Vec<&[u8]> = Vec::new();
    let mut te: Vec<&[u8]> = Vec::new();
    let mut conn_tokens: Vec<String> = Vec::new();
    let mut upgrade = None;
    for h in resp.headers.iter() {
        if eq(h.name, "upgrade") {
            upgrade = Some(h.value.to_vec());
        }
        if eq(h.name, "content-length") {
            cl.push(h.value);
        } else if eq(h.name, "transfer-encoding") {
            te.push(h.value);
        } else if eq(h.name, "connection") {
            conn_tokens.extend(tokens(h.value));
        }
    }
    let no_body = head_request || (100..200).contains(&code) || code == 204 || code == 304;
    // RFC 9112 6.3: Transfer-Encoding overrides Content-Length (which is then dropped, and
    // the connection not reused: such a message may be an attempt at response splitting);
    // a coding list not ending in chunked runs until close; otherwise Content-Length, else
    // until close.
    let mut sound = true;
    let body = if no_body {
        Framing::None
    } else {
        if !codings_valid(&te) {
            return Err(ProxyError::Upstream("malformed Transfer-Encoding".into()));
        }
        match chunked_last(&te) {
            Some(chunked) => {
                sound = cl.is_empty() && minor >= 1;
                if chunked {
                    Framing::Chunked
                } else {
                    Framing::UntilClose
                }
            }
            None => match content_length(&cl)
                .map_err(|_| ProxyError::Upstream("invalid Content-Length in response".into()))?
            {
                Some(n) => Framing::Length(n),
                None => Framing::UntilClose,
            },
        }
    };
    let keep = persistent(minor, &conn_tokens);
    let headers = resp
        .headers
        .iter()
        .filter(|h| {
            let framing = eq(h.name, "content-length") || eq(h.name, "transfer-encoding");
            if framing {
                // The gateway writes every framing header itself (a `Connection` token
                // cannot strip one, and an invalid one never reaches the client).
                return false;
            }
            !is_hop_by_hop(h.name) && !conn_tokens.iter().any(|t| eq(t, h.name))
        })
        .map(|h| (h.name.to_owned(), h.value.to_vec()))
        .collect();
    // HEAD and 304 answers may describe the resource: its length (valid, and without
    // Transfer-Encoding) or its codings. 1xx and 204 carry neither (RFC 9110 8.6).
    let describes = no_body && (head_request || code == 304);
    let described_length = if describes && te.is_empty() {
        content_length(&cl).ok().flatten()
    } else {
        None
    };
    // The codings as a clean list (empty elements dropped), so no client reads them otherwise.
    let te = (!te.is_empty() && (!no_body || describes))
        .then(|| {
            te.iter()
                .flat_map(|v| tokens(v))
                .collect::<Vec<_>>()
                .join(", ")
                .into_bytes()
        })
        .filter(|v| !v.is_empty());
    Ok(Parsed::Done(
        Response {
            code,
            reason: resp.reason.unwrap_or("").to_owned(),
            headers,
            body,
            te,
            upgrade: upgrade.filter(|_| code == 101),
            described_length,
            reusable: keep && sound && body != Framing::UntilClose,
        },
        consumed,
    ))
}

impl Response {
    /// Encode for the client, with the framing of the body as the gateway sends it
    /// (`relay`); `keep_alive` sets `Connection`.
    pub fn encode_downstream(&self, relay: Relay, keep_alive: bool, out: &mut Vec<u8>) {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(self.code.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.reason.as_bytes());
        out.extend_from_slice(b"\r\n");
        for (name, value) in &self.headers {
            put_header(out, name.as_bytes(), value);
        }
        match (self.body, relay) {
            (Framing::Length(n), _) => {
                put_header(out, b"Content-Length", n.to_string().as_bytes());
            }
            (Framing::Chunked, Relay::Framed) | (Framing::UntilClose, _) => {
                if let Some(te) = &self.te {
                    put_header(out, b"Transfer-Encoding", te);
                }
            }
            (Framing::Chunked, Relay::Dechunked) => {}
            (Framing::None, _) => {
                if let Some(n) = self.described_length {
                    put_header(out, b"Content-Length", n.to_string().as_bytes());
                } else if let Some(te) = &self.te {
                    put_header(out, b"Transfer-Encoding", te);
                }
            }
        }
        if let Some(proto) = &self.upgrade {
            put_header(out, b"Connection", b"upgrade");
            put_header(out, b"Upgrade", proto);
        }
        if (100..200).contains(&self.code) {
            out.extend_from_slice(b"\r\n");
            return;
        }
        out.extend_from_slice(if keep_alive {
            b"Connection: keep-alive\r\n\r\n".as_slice()
        } else {
            b"Connection: close\r\n\r\n".as_slice()
        });
    }
}
