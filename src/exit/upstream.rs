//! Chaining: the client side of SOCKS5 (RFC 1928/1929) and HTTP CONNECT towards an
//! upstream proxy. An upstream's own refusal (bad credentials, unsupported) is the exit's
//! failure; its report about the target (refused, unreachable) is the target's.

use super::{Fail, TargetAddr};
use crate::config::Upstream;
use crate::error::ProxyError;
use crate::side::{Bounds, ReadStop, Side};
use crate::socks5::codec::{self, Parsed};
use socks5_proto::{handshake::Method, Address, Command};
use std::cell::Cell;
use std::time::{Duration, Instant};

/// Largest upstream handshake reply we buffer.
const MAX_REPLY: usize = 16 * 1024;
/// A bound of its own for each read; the dial's `connect_timeout` is the one that acts.
const MAX_WAIT: Duration = Duration::from_secs(3600);

fn exit_err(msg: String) -> Fail {
    Fail::Exit(ProxyError::Upstream(msg))
}

async fn write(s: &mut Side, bytes: &[u8]) -> Result<(), Fail> {
    s.send(bytes)
        .await
        .map_err(|e| exit_err(format!("upstream write failed: {e}")))
}

/// Read until `parse` completes the upstream's next message (the dial's deadline bounds
/// the wait); what follows it stays in `s.buf`.
async fn read_msg<T>(
    s: &mut Side,
    parse: impl Fn(&[u8]) -> Result<Parsed<T>, ProxyError>,
) -> Result<T, Fail> {
    let bounds = Bounds::new(MAX_REPLY, Instant::now() + MAX_WAIT);
    match s.read_until(&bounds, parse).await {
        Ok((v, n)) => {
            s.consume(n);
            Ok(v)
        }
        Err(ReadStop::Bad(ProxyError::HeadTooLarge)) => {
            Err(exit_err("upstream reply too long".into()))
        }
        Err(ReadStop::Bad(e)) => Err(Fail::Exit(e)),
        Err(ReadStop::Gone | ReadStop::Quota) => {
            Err(exit_err("upstream closed during handshake".into()))
        }
    }
}

/// SOCKS5 CONNECT through `up`. Bytes the upstream sent after its reply stay in `s.buf`:
/// they belong to the client.
pub async fn socks5(
    s: &mut Side,
    up: &Upstream,
    target: &TargetAddr,
    asked: &Cell<bool>,
) -> Result<(), Fail> {
    let address = match target {
        TargetAddr::Ip(a) => Address::SocketAddress(*a),
        TargetAddr::Name(h, p) => Address::DomainAddress(h.as_bytes().to_vec(), *p),
    };
    socks5_request(s, up, Command::Connect, address, asked)
        .await
        .map(|_| ())
}

/// SOCKS5 UDP ASSOCIATE through `up`: the upstream's relay address (its own address where
/// the reply names none). An upstream that does not serve UDP answers `0x07`:
/// [`ProxyError::CommandNotSupported`].
pub async fn socks5_udp(
    s: &mut Side,
    up: &Upstream,
    upstream: std::net::IpAddr,
) -> Result<std::net::SocketAddr, Fail> {
    let any = Address::SocketAddress(std::net::SocketAddr::new(
        std::net::Ipv4Addr::UNSPECIFIED.into(),
        0,
    ));
    match socks5_request(s, up, Command::Associate, any, &Cell::new(false)).await? {
        Address::SocketAddress(a) if a.ip().is_unspecified() => {
            Ok(std::net::SocketAddr::new(upstream, a.port()))
        }
        Address::SocketAddress(a) => Ok(a),
        Address::DomainAddress(..) => Err(exit_err(
            "upstream socks5 named its UDP relay by a host name".into(),
        )),
    }
}

/// Greeting, credentials and one request; the reply's bound address.
async fn socks5_request(
    s: &mut Side,
    up: &Upstream,
    command: Command,
    address: Address,
    asked: &Cell<bool>,
) -> Result<Address, Fail> {
    let mut out = Vec::with_capacity(64);
    let offered = if up.username.is_some() {
        Method::PASSWORD
    } else {
        Method::NONE
    };
    codec::encode_greeting(offered, &mut out);
    write(s, &out).await?;
    let method = read_msg(s, codec::parse_method_reply).await?;
    if method != offered {
        return Err(exit_err(format!(
            "upstream socks5 refused our method (answered {:#04x})",
            method.0
        )));
    }
    if offered == Method::PASSWORD {
        out.clear();
        let user = up.username.as_deref().unwrap_or_default();
        let pass = up.password.as_deref().unwrap_or_default();
        codec::encode_password(user.as_bytes(), pass.as_bytes(), &mut out);
        write(s, &out).await?;
        if !read_msg(s, codec::parse_auth_reply).await? {
            return Err(exit_err("upstream socks5 rejected our credentials".into()));
        }
    }
    out.clear();
    codec::encode_request(command, address, &mut out);
    write(s, &out).await?;
    asked.set(true);
    let (code, bound) = read_msg(s, codec::parse_reply_bound).await?;
    let upstream = |m: &str| Fail::Target(ProxyError::Upstream(format!("upstream socks5: {m}")));
    match code {
        0x00 => Ok(bound),
        0x07 if command == Command::Associate => Err(Fail::Exit(ProxyError::CommandNotSupported)),
        0x01 => Err(upstream("general failure")),
        0x02 => Err(upstream("not allowed by its ruleset")),
        c => Err(match ProxyError::from_socks_target_reply(c) {
            Some(e) => Fail::Target(e),
            None => exit_err(format!("upstream socks5 cannot CONNECT (reply {c:#04x})")),
        }),
    }
}

/// The RFC 9209 `error=` of an upstream's `Proxy-Status`, mapped onto our table.
fn from_proxy_status(value: &[u8], target: &TargetAddr) -> Option<ProxyError> {
    let v = std::str::from_utf8(value).ok()?;
    let err = v
        .split(';')
        .find_map(|p| p.trim().strip_prefix("error="))?
        .trim();
    ProxyError::from_proxy_status_error(err, &target.to_string())
}

/// HTTP CONNECT through `up` (Basic credentials from its URL). Bytes the upstream sent
/// after its 2xx head stay in `s.buf`.
pub async fn http_connect(
    s: &mut Side,
    up: &Upstream,
    target: &TargetAddr,
    asked: &Cell<bool>,
) -> Result<(), Fail> {
    let authority = target.to_string();
    let mut req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(user) = &up.username {
        use base64::Engine;
        let raw = format!("{user}:{}", up.password.as_deref().unwrap_or(""));
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        req.push_str(&format!("Proxy-Authorization: Basic {b64}\r\n"));
    }
    req.push_str("\r\n");
    write(s, req.as_bytes()).await?;
    asked.set(true);
    let (code, mapped) = read_msg(s, |b| {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(b) {
            Ok(httparse::Status::Complete(n)) => {
                let mapped = resp
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("proxy-status"))
                    .and_then(|h| from_proxy_status(h.value, target));
                Ok(Parsed::Done((resp.code.unwrap_or(0), mapped), n))
            }
            Ok(httparse::Status::Partial) => Ok(Parsed::Incomplete),
            Err(_) => Err(ProxyError::Upstream("malformed upstream http reply".into())),
        }
    })
    .await?;
    match code {
        200..=299 => Ok(()),
        407 => Err(exit_err(
            "upstream http proxy answered 407: it rejected our credentials".into(),
        )),
        502 | 504 => Err(Fail::Target(mapped.unwrap_or_else(|| {
            ProxyError::Upstream(format!("upstream http proxy answered {code}"))
        }))),
        400..=499 => Err(Fail::Target(ProxyError::Upstream(format!(
            "upstream http proxy answered {code}"
        )))),
        // squid answers 503 for a target it cannot reach, and an overloaded proxy does too.
        500..=599 => Err(Fail::Unclear(mapped.unwrap_or_else(|| {
            ProxyError::Upstream(format!("upstream http proxy answered {code}"))
        }))),
        _ => Err(exit_err(format!("upstream http proxy answered {code}"))),
    }
}
