//! Request heads: target forms, hop-by-hop headers, framing and smuggling defences.

use super::{
    chunked_last, codings_valid, content_length, eq, is_hop_by_hop, persistent, put_header, tokens,
    Framing, Parsed, MAX_HEADERS,
};
use crate::error::ProxyError;

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `CONNECT host:port`.
    Tunnel { host: String, port: u16 },
    /// Absolute-form `http://host[:port]/path`: forwarded in origin-form.
    Forward {
        host: String,
        port: u16,
        /// `host[:port]` as written, for the `Host` header.
        authority: String,
        path: String,
    },
}

impl Target {
    pub fn host_port(&self) -> (&str, u16) {
        match self {
            Target::Tunnel { host, port } | Target::Forward { host, port, .. } => (host, *port),
        }
    }
}

/// A request head, analysed.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    pub target: Target,
    /// HTTP/1.`minor`.
    pub minor: u8,
    /// Headers to forward (hop-by-hop ones removed), in order.
    pub headers: Vec<(String, Vec<u8>)>,
    pub credentials: Option<(Vec<u8>, Vec<u8>)>,
    pub body: Framing,
    pub expect_continue: bool,
    /// Whether the client wants the connection kept open after this exchange.
    pub keep_alive: bool,
    /// The `Upgrade` value of a request that asks for one (`Connection: upgrade`): sent on
    /// to the origin, and a `101` answer turns the connection into a tunnel.
    pub upgrade: Option<Vec<u8>>,
}

/// Split `host:port` (or `[v6]:port`); `default_port` when the port is absent.
pub fn split_authority(auth: &str, default_port: Option<u16>) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = auth.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        match after.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if after.is_empty() => (h, None),
            None => return None,
        }
    } else {
        match auth.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            Some(_) => return None,
            None => (auth, None),
        }
    };
    let port = match port {
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0)?,
        None => default_port?,
    };
    let valid = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_' | b':'));
    valid.then(|| (host.to_ascii_lowercase(), port))
}

fn parse_target(method: &str, uri: &str) -> Result<Target, ProxyError> {
    if eq(method, "CONNECT") {
        let (host, port) =
            split_authority(uri, None).ok_or(ProxyError::BadRequest("bad CONNECT authority"))?;
        return Ok(Target::Tunnel { host, port });
    }
    let rest = uri
        .get(..7)
        .filter(|s| eq(s, "http://"))
        .map(|_| &uri[7..])
        .ok_or(ProxyError::BadRequest(
            "proxy requests need an absolute http:// URI",
        ))?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.contains('@') {
        return Err(ProxyError::BadRequest("userinfo in request URI"));
    }
    let (host, port) =
        split_authority(authority, Some(80)).ok_or(ProxyError::BadRequest("bad URI authority"))?;
    let mut path = rest[end..].split('#').next().unwrap_or("").to_owned();
    if path.is_empty() {
        path.push('/');
    } else if path.starts_with('?') {
        path.insert(0, '/');
    }
    Ok(Target::Forward {
        host,
        port,
        authority: authority.to_owned(),
        path,
    })
}

/// Parse and analyse a request head from the start of `buf`.
pub fn parse_request(buf: &[u8]) -> Result<Parsed<Request>, ProxyError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let consumed = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Incomplete),
        Err(httparse::Error::TooManyHeaders) => return Err(ProxyError::HeadTooLarge),
        Err(_) => return Err(ProxyError::BadRequest("malformed request head")),
    };
    let method = req.method.unwrap_or_default().to_owned();
    let minor = req.version.unwrap_or(1);
    let target = parse_target(&method, req.path.unwrap_or_default())?;

    let mut cl: Vec<&[u8]> = Vec::new();
    let mut te: Vec<&[u8]> = Vec::new();
    let mut conn_tokens: Vec<String> = Vec::new();
    let mut credentials = None;
    let mut expect_continue = false;
    let mut upgrade: Option<Vec<u8>> = None;
    for h in req.headers.iter() {
        let n = h.name;
        if eq(n, "content-length") {
            cl.push(h.value);
        } else if eq(n, "transfer-encoding") {
            te.push(h.value);
        } else if eq(n, "connection") || eq(n, "proxy-connection") {
            conn_tokens.extend(tokens(h.value));
        } else if eq(n, "proxy-authorization") {
            credentials = parse_basic(h.value);
        } else if eq(n, "upgrade") {
            if upgrade.is_some() {
                return Err(ProxyError::BadRequest("repeated Upgrade"));
            }
            upgrade = Some(h.value.to_vec());
        } else if eq(n, "expect") {
            if h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                expect_continue = true;
            } else {
                return Err(ProxyError::ExpectationFailed);
            }
        }
    }
    // A header named in `Connection` is removed before forwarding (RFC 9110 7.6.1). For the
    // headers that frame or route the message that would make the origin read the body
    // differently from us (request smuggling): refuse instead.
    if conn_tokens.iter().any(|t| FRAMING.iter().any(|f| eq(f, t))) {
        return Err(ProxyError::BadRequest(
            "Connection names a framing or routing header",
        ));
    }
    let upgrade = upgrade.filter(|_| conn_tokens.iter().any(|t| t == "upgrade"));
    if !codings_valid(&te) {
        return Err(ProxyError::BadRequest("malformed Transfer-Encoding"));
    }
    let body = match (chunked_last(&te), content_length(&cl)?) {
        (Some(_), Some(_)) => {
            return Err(ProxyError::BadRequest(
                "both Transfer-Encoding and Content-Length",
            ))
        }
        (Some(true), None) => Framing::Chunked,
        (Some(false), None) => {
            return Err(ProxyError::BadRequest(
                "request Transfer-Encoding must end in chunked",
            ))
        }
        (None, Some(0)) | (None, None) => Framing::None,
        (None, Some(n)) => Framing::Length(n),
    };
    let keep_alive = persistent(minor, &conn_tokens);
    let forwarded = req
        .headers
        .iter()
        .filter(|h| {
            !is_hop_by_hop(h.name)
                && !eq(h.name, "host")
                && !eq(h.name, "expect")
                && !conn_tokens.iter().any(|t| eq(t, h.name))
        })
        .map(|h| (h.name.to_owned(), h.value.to_vec()))
        .collect();
    Ok(Parsed::Done(
        Request {
            method,
            target,
            minor,
            headers: forwarded,
            credentials,
            body,
            expect_continue,
            keep_alive,
            upgrade,
        },
        consumed,
    ))
}

impl Request {
    /// The request as sent to the origin: origin-form, `Host` from the URI, HTTP/1.1.
    pub fn encode_upstream(&self, out: &mut Vec<u8>) {
        let Target::Forward {
            authority, path, ..
        } = &self.target
        else {
            return;
        };
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        out.extend_from_slice(authority.as_bytes());
        out.extend_from_slice(b"\r\n");
        for (name, value) in &self.headers {
            put_header(out, name.as_bytes(), value);
        }
        if self.expect_continue && self.body != Framing::None {
            out.extend_from_slice(b"Expect: 100-continue\r\n");
        }
        if let Some(proto) = &self.upgrade {
            put_header(out, b"Connection", b"upgrade");
            put_header(out, b"Upgrade", proto);
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Headers that frame or route a message: a `Connection` header may not name them.
const FRAMING: [&str; 3] = ["content-length", "transfer-encoding", "host"];

/// Decode an HTTP `Proxy-Authorization: Basic <b64>` value into (user, password).
pub fn parse_basic(value: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    use base64::Engine;
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, b64) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let colon = raw.iter().position(|&c| c == b':')?;
    Some((raw[..colon].to_vec(), raw[colon + 1..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_header() {
        // "alice:pa:ss" — the password may contain ':'.
        let (u, p) = parse_basic(b"Basic YWxpY2U6cGE6c3M=").unwrap();
        assert_eq!((u.as_slice(), p.as_slice()), (&b"alice"[..], &b"pa:ss"[..]));
        assert_eq!(
            parse_basic(b"basic  YWxpY2U6cGE6c3M= ").unwrap().0,
            b"alice"
        );
        assert!(parse_basic(b"Bearer abc").is_none());
        assert!(parse_basic(b"Basic !!!").is_none());
        assert!(parse_basic(b"Basic YWxpY2U=").is_none()); // no colon
    }
}
