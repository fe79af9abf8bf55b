//! Sans-IO HTTP/1.x head parsing (httparse) and the proxy's rules on top of it: target
//! forms, hop-by-hop headers, message framing and request-smuggling defences.

use crate::auth::parse_basic;
use crate::error::ProxyError;

/// Most headers accepted in one head.
pub const MAX_HEADERS: usize = 128;

/// "Done (value, consumed)" or "need more bytes".
#[derive(Debug)]
pub enum Parsed<T> {
    Done(T, usize),
    Incomplete,
}

/// How a message body is delimited (RFC 9112 section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Response only: the body runs until the origin closes.
    UntilClose,
}

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

/// Whether the last transfer coding is `chunked` (`None` when no Transfer-Encoding).
fn chunked_last(values: &[&[u8]]) -> Option<bool> {
    let all: Vec<String> = values.iter().flat_map(|v| tokens(v)).collect();
    if values.is_empty() {
        None
    } else {
        Some(all.last().is_some_and(|t| t == "chunked"))
    }
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
    let keep_alive = if minor == 0 {
        conn_tokens.iter().any(|t| t == "keep-alive")
    } else {
        !conn_tokens.iter().any(|t| t == "close")
    };
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
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        if self.expect_continue && self.body != Framing::None {
            out.extend_from_slice(b"Expect: 100-continue\r\n");
        }
        if let Some(proto) = &self.upgrade {
            out.extend_from_slice(b"Connection: upgrade\r\nUpgrade: ");
            out.extend_from_slice(proto);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Headers that frame or route a message: a `Connection` header may not name them.
const FRAMING: [&str; 3] = ["content-length", "transfer-encoding", "host"];

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
    let keep = if minor == 0 {
        conn_tokens.iter().any(|t| t == "keep-alive")
    } else {
        !conn_tokens.iter().any(|t| t == "close")
    };
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
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        match (self.body, relay) {
            (Framing::Length(n), _) => {
                out.extend_from_slice(b"Content-Length: ");
                out.extend_from_slice(n.to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            (Framing::Chunked, Relay::Framed) | (Framing::UntilClose, _) => {
                if let Some(te) = &self.te {
                    out.extend_from_slice(b"Transfer-Encoding: ");
                    out.extend_from_slice(te);
                    out.extend_from_slice(b"\r\n");
                }
            }
            (Framing::Chunked, Relay::Dechunked) => {}
            (Framing::None, _) => {
                if let Some(n) = self.described_length {
                    out.extend_from_slice(b"Content-Length: ");
                    out.extend_from_slice(n.to_string().as_bytes());
                    out.extend_from_slice(b"\r\n");
                } else if let Some(te) = &self.te {
                    out.extend_from_slice(b"Transfer-Encoding: ");
                    out.extend_from_slice(te);
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
        if let Some(proto) = &self.upgrade {
            out.extend_from_slice(b"Connection: upgrade\r\nUpgrade: ");
            out.extend_from_slice(proto);
            out.extend_from_slice(b"\r\n");
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

/// Streaming chunked-body decoder (RFC 9112 section 7.1). Feed it bytes; it says which of
/// them are payload and where the message ends, so a body can be passed through verbatim
/// or de-chunked.
#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    state: ChunkState,
    /// Payload bytes left in the current chunk.
    remaining: u64,
    /// Bytes of the current size or trailer line (bounded).
    line_len: usize,
    size_digits: usize,
    in_ext: bool,
    /// The current trailer line, then every trailer field line, re-terminated with CRLF.
    trailers: Vec<u8>,
    /// Where the current trailer line starts in `trailers`.
    line_start: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    Trailer,
    TrailerLf,
    Done,
}

/// What one [`ChunkedDecoder::feed`] call found.
#[derive(Debug, PartialEq, Eq)]
pub struct Fed {
    /// Bytes of the input that belong to this message.
    pub consumed: usize,
    /// Payload ranges within the consumed bytes.
    pub data: Vec<std::ops::Range<usize>>,
    pub done: bool,
}

const MAX_CHUNK_LINE: usize = 4096;
/// Most bytes of trailer fields in one body.
pub const MAX_TRAILERS: usize = 8 * 1024;

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// A trailer line ended: an empty one ends the body, any other must be a field line.
    fn end_trailer_line(&mut self) -> Result<(), &'static str> {
        let line = &self.trailers[self.line_start..];
        if line.is_empty() {
            self.state = ChunkState::Done;
            return Ok(());
        }
        let name_end = line.iter().position(|&c| c == b':');
        let valid = name_end.is_some_and(|n| {
            n > 0
                && line[..n].iter().all(|&c| is_tchar(c))
                && line[n + 1..]
                    .iter()
                    .all(|&c| c == b'\t' || (b' '..0x7f).contains(&c) || c >= 0x80)
        });
        if !valid {
            return Err("malformed trailer field");
        }
        self.trailers.extend_from_slice(b"\r\n");
        self.line_start = self.trailers.len();
        self.state = ChunkState::Trailer;
        Ok(())
    }

    /// The trailer field lines, each ending in CRLF (complete once the body is done).
    pub fn trailers(&self) -> &[u8] {
        &self.trailers[..self.line_start]
    }

    /// Append what `fed` (from `input`) becomes on the way out: re-chunked with clean
    /// framing (extensions dropped, trailers re-terminated with CRLF), or only the
    /// payload when `dechunk`.
    pub fn reencode(&self, input: &[u8], fed: &Fed, dechunk: bool, out: &mut Vec<u8>) {
        for r in &fed.data {
            if r.is_empty() {
                continue;
            }
            if dechunk {
                out.extend_from_slice(&input[r.clone()]);
            } else {
                out.extend_from_slice(format!("{:x}\r\n", r.len()).as_bytes());
                out.extend_from_slice(&input[r.clone()]);
                out.extend_from_slice(b"\r\n");
            }
        }
        if fed.done && !dechunk {
            out.extend_from_slice(b"0\r\n");
            out.extend_from_slice(self.trailers());
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Consume as much of `input` as belongs to the body.
    pub fn feed(&mut self, input: &[u8]) -> Result<Fed, &'static str> {
        use ChunkState::*;
        let mut data = Vec::new();
        let mut i = 0;
        while i < input.len() && self.state != Done {
            let c = input[i];
            match self.state {
                Size => {
                    self.line_len += 1;
                    if self.line_len > MAX_CHUNK_LINE {
                        return Err("chunk size line too long");
                    }
                    if c == b'\r' {
                        self.state = SizeLf;
                    } else if c == b'\n' {
                        return Err("bare LF in chunk size line");
                    } else if self.in_ext {
                        // chunk-ext: skipped.
                    } else if let Some(d) = (c as char).to_digit(16) {
                        self.size_digits += 1;
                        if self.size_digits > 15 {
                            return Err("chunk size too large");
                        }
                        self.remaining = self.remaining * 16 + d as u64;
                    } else if c == b';' || c == b' ' || c == b'\t' {
                        if self.size_digits == 0 {
                            return Err("missing chunk size");
                        }
                        self.in_ext = true;
                    } else {
                        return Err("invalid chunk size");
                    }
                    i += 1;
                }
                SizeLf => {
                    if c != b'\n' || self.size_digits == 0 {
                        return Err("malformed chunk size line");
                    }
                    self.line_len = 0;
                    self.size_digits = 0;
                    self.in_ext = false;
                    if self.remaining == 0 {
                        self.state = Trailer;
                        self.line_start = self.trailers.len();
                    } else {
                        self.state = Data;
                    }
                    i += 1;
                }
                Data => {
                    let n = (input.len() - i).min(self.remaining as usize);
                    data.push(i..i + n);
                    self.remaining -= n as u64;
                    i += n;
                    if self.remaining == 0 {
                        self.state = DataCr;
                    }
                }
                DataCr => {
                    if c != b'\r' {
                        return Err("chunk data not followed by CRLF");
                    }
                    self.state = DataLf;
                    i += 1;
                }
                DataLf => {
                    if c != b'\n' {
                        return Err("chunk data not followed by CRLF");
                    }
                    self.state = Size;
                    i += 1;
                }
                Trailer => {
                    // RFC 9112 2.2: a recipient may take a bare LF as a line end. Trailer
                    // lines are kept and re-sent with CRLF, so no lenient reading of ours
                    // reaches the next hop.
                    match c {
                        b'\r' => self.state = TrailerLf,
                        b'\n' => self.end_trailer_line()?,
                        _ => {
                            if self.trailers.len() >= MAX_TRAILERS {
                                return Err("trailer section too large");
                            }
                            self.trailers.push(c);
                        }
                    }
                    i += 1;
                }
                TrailerLf => {
                    if c != b'\n' {
                        return Err("malformed trailer line");
                    }
                    self.end_trailer_line()?;
                    i += 1;
                }
                Done => break,
            }
        }
        Ok(Fed {
            consumed: i,
            data,
            done: self.state == Done,
        })
    }
}

#[cfg(test)]
mod tests;
