//! The one error type of the proxy and its reply table (DESIGN.md, "Status codes").
//!
//! Every stage returns `Result<_, ProxyError>`; the HTTP and SOCKS5 handlers turn an error
//! into bytes only through [`ProxyError::http_response`] and [`ProxyError::socks_reply`].
//! Nothing else in the code base invents a status code.

use std::fmt::Write as _;

/// Why a client's request could not be proxied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// Malformed request, request line or header section.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// SOCKS5 command other than CONNECT (BIND, UDP ASSOCIATE, unknown).
    #[error("command not supported")]
    CommandNotSupported,
    /// SOCKS5 address type other than IPv4, IPv6 or domain name.
    #[error("address type not supported")]
    AddressTypeNotSupported,
    /// The request head is larger than the configured bound.
    #[error("request head too large")]
    HeadTooLarge,
    /// Wrong user or password, unknown or malformed modifier, network not allowed.
    #[error("authentication failed: {0}")]
    AuthFailed(&'static str),
    /// The account's `expires` has passed (its credentials were right).
    #[error("account expired")]
    AccountExpired,
    /// The account is disabled (`enabled = false` through the API; its credentials were right).
    #[error("account disabled")]
    AccountDisabled,
    /// SOCKS5 client offered no username/password method.
    #[error("no acceptable authentication method")]
    NoAcceptableMethod,
    /// An `Expect:` other than `100-continue`.
    #[error("expectation failed")]
    ExpectationFailed,
    /// Plan bandwidth used up.
    #[error("bandwidth exceeded")]
    BandwidthExceeded,
    /// Plan concurrency exceeded.
    #[error("threads exceeded")]
    ThreadsExceeded,
    /// Unknown country code.
    #[error("invalid country")]
    InvalidCountry,
    /// Unknown state for the targeted country, or no country.
    #[error("invalid state")]
    InvalidState,
    /// Unknown city, or no exit there.
    #[error("invalid city")]
    InvalidCity,
    /// ttl outside the network's range or not a number.
    #[error("invalid ttl")]
    InvalidTtl,
    /// Target refused by policy (private ranges and the like).
    #[error("forbidden target {0}")]
    ForbiddenTarget(String),
    /// A fault of ours.
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// The target's name did not resolve.
    #[error("dns failure for {0}")]
    DnsFailed(String),
    /// No route to the target host.
    #[error("host unreachable")]
    HostUnreachable,
    /// The target refused the connection.
    #[error("connection refused")]
    ConnectionRefused,
    /// No route to the target network.
    #[error("network unreachable")]
    NetworkUnreachable,
    /// The target has no address in the family of any exit that may carry it (an IPv6-only
    /// network and a target with only A records, or the reverse).
    #[error("no usable address: {0}")]
    NoAddressInFamily(String),
    /// Outbound connect did not finish within `connect_timeout`.
    #[error("connect timed out")]
    ConnectTimeout,
    /// The upstream (origin or chained proxy) broke the exchange.
    #[error("upstream error: {0}")]
    Upstream(String),
    /// No exit can serve the request now, or the gateway is draining.
    #[error("service unavailable: {0}")]
    Unavailable(&'static str),
}

/// The HTTP side of one row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpStatus {
    pub code: u16,
    pub reason: &'static str,
    pub body: &'static str,
    /// RFC 9209 error type for the `Proxy-Status` header.
    pub proxy_status: &'static str,
}

/// What a SOCKS5 client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocksReply {
    /// Close without a reply (malformed greeting).
    Close,
    /// Method selection `0xFF` ("no acceptable methods").
    NoAcceptableMethod,
    /// RFC 1929 sub-negotiation failure status, then close.
    AuthFailure(u8),
    /// RFC 1928 reply code on the request.
    Reply(u8),
}

const fn status(
    code: u16,
    reason: &'static str,
    body: &'static str,
    proxy_status: &'static str,
) -> HttpStatus {
    HttpStatus {
        code,
        reason,
        body,
        proxy_status,
    }
}

/// Name of the gateway in `Proxy-Status` (RFC 9209) and the `Basic` realm.
pub const PROXY_NAME: &str = "tollgate";

impl ProxyError {
    /// The HTTP row of DESIGN.md's table for this error.
    #[rustfmt::skip]
    pub fn http_status(&self) -> HttpStatus {
        use ProxyError::*;
        const BAD_GATEWAY: (u16, &str, &str) = (502, "Bad Gateway", "bad gateway");
        let ((code, reason, body), proxy_status) = match self {
            BadRequest(_) | CommandNotSupported | AddressTypeNotSupported
                                   => ((400, "Bad Request", "bad request"), "http_request_error"),
            HeadTooLarge           => ((431, "Request Header Fields Too Large", "request header fields too large"), "http_request_error"),
            AuthFailed(_) | NoAcceptableMethod | AccountExpired | AccountDisabled
                                   => ((407, "Proxy Authentication Required", "Incorrect username or password"), "http_request_denied"),
            ExpectationFailed      => ((417, "Expectation Failed", "expectation failed"), "http_request_error"),
            BandwidthExceeded      => ((452, "Bandwidth Exceeded", "exceeded bandwidth limit"), "http_request_denied"),
            ThreadsExceeded        => ((453, "Thread Limit Exceeded", "exceeded threads limit"), "connection_limit_reached"),
            InvalidCountry         => ((454, "Invalid Country Code", "invalid country code"), "http_request_denied"),
            InvalidState           => ((454, "Invalid State Code", "invalid state code"), "http_request_denied"),
            InvalidCity            => ((454, "Invalid City Code", "invalid city code"), "http_request_denied"),
            InvalidTtl             => ((455, "Invalid TTL", "invalid ttl"), "http_request_denied"),
            ForbiddenTarget(_)     => ((403, "Forbidden", "forbidden target"), "destination_ip_prohibited"),
            Internal(_)            => ((500, "Internal Server Error", "internal error"), "proxy_internal_error"),
            DnsFailed(_)           => (BAD_GATEWAY, "dns_error"),
            HostUnreachable        => (BAD_GATEWAY, "destination_unavailable"),
            ConnectionRefused      => (BAD_GATEWAY, "connection_refused"),
            NetworkUnreachable | NoAddressInFamily(_)
                                   => (BAD_GATEWAY, "destination_ip_unroutable"),
            ConnectTimeout         => (BAD_GATEWAY, "connection_timeout"),
            Upstream(_)            => (BAD_GATEWAY, "http_protocol_error"),
            Unavailable(_)         => ((503, "Service Unavailable", "service unavailable"), "proxy_internal_response"),
        };
        status(code, reason, body, proxy_status)
    }

    /// The SOCKS5 column of DESIGN.md's table for this error.
    pub fn socks_reply(&self) -> SocksReply {
        use ProxyError::*;
        match self {
            BadRequest(_) | HeadTooLarge | ExpectationFailed => SocksReply::Reply(0x01),
            CommandNotSupported => SocksReply::Reply(0x07),
            AddressTypeNotSupported => SocksReply::Reply(0x08),
            AuthFailed(_) | AccountExpired | AccountDisabled => SocksReply::AuthFailure(0x01),
            NoAcceptableMethod => SocksReply::NoAcceptableMethod,
            BandwidthExceeded | ThreadsExceeded | InvalidCountry | InvalidState | InvalidCity
            | InvalidTtl | ForbiddenTarget(_) => SocksReply::Reply(0x02),
            Internal(_) | Unavailable(_) => SocksReply::Reply(0x01),
            DnsFailed(_) | HostUnreachable => SocksReply::Reply(0x04),
            ConnectionRefused => SocksReply::Reply(0x05),
            NetworkUnreachable | NoAddressInFamily(_) => SocksReply::Reply(0x03),
            ConnectTimeout => SocksReply::Reply(0x06),
            Upstream(_) => SocksReply::Reply(0x01),
        }
    }

    /// The inverse of [`ProxyError::socks_reply`] for what an upstream SOCKS5 proxy reports
    /// about the target (RFC 1928 replies 0x03–0x06); `None` for the other codes, which say
    /// nothing about the target.
    pub fn from_socks_target_reply(code: u8) -> Option<ProxyError> {
        Some(match code {
            0x03 => ProxyError::NetworkUnreachable,
            0x04 => ProxyError::HostUnreachable,
            0x05 => ProxyError::ConnectionRefused,
            0x06 => ProxyError::ConnectTimeout,
            _ => return None,
        })
    }

    /// The inverse of the `Proxy-Status` `error=` column (RFC 9209) for what an upstream
    /// HTTP proxy reports about the target; `None` for other errors.
    pub fn from_proxy_status_error(error: &str, target: &str) -> Option<ProxyError> {
        Some(match error {
            "dns_error" | "dns_timeout" | "destination_not_found" => {
                ProxyError::DnsFailed(target.to_owned())
            }
            "connection_refused" => ProxyError::ConnectionRefused,
            "connection_timeout" => ProxyError::ConnectTimeout,
            "destination_ip_unroutable" => ProxyError::NetworkUnreachable,
            "destination_unavailable" => ProxyError::HostUnreachable,
            _ => return None,
        })
    }

    /// Whether an HTTP client may send another request on the same connection after this
    /// error (given that the failed request carried no body).
    pub fn http_keeps_connection(&self) -> bool {
        !matches!(
            self,
            ProxyError::BadRequest(_)
                | ProxyError::HeadTooLarge
                | ProxyError::CommandNotSupported
                | ProxyError::AddressTypeNotSupported
                | ProxyError::NoAcceptableMethod
                | ProxyError::Internal(_)
        )
    }

    /// The `Proxy-Status` details: for humans and tools, never the body.
    fn details(&self) -> String {
        let mut s = self.to_string();
        // A quoted-string cannot carry '"' or '\' unescaped (RFC 9110 5.6.4).
        s.retain(|c| c != '"' && c != '\\' && !c.is_control());
        s
    }

    /// Encode the full HTTP/1.1 response for this error.
    pub fn http_response(&self, keep_alive: bool) -> Vec<u8> {
        self.http_response_to(keep_alive, false)
    }

    /// [`ProxyError::http_response`] for a request of method HEAD when `head`: the same
    /// head, and no body (RFC 9110 9.3.2), or a HEAD client would read the body as the next
    /// response.
    pub fn http_response_to(&self, keep_alive: bool, head: bool) -> Vec<u8> {
        self.http_response_with_id(keep_alive, head, None)
    }

    /// [`ProxyError::http_response_to`] with the refusal's request id (`X-Request-Id`) and
    /// its `Date` (an HTTP-date), what a customer quotes to support.
    pub fn http_response_with_id(
        &self,
        keep_alive: bool,
        head: bool,
        support: Option<(&str, &str)>,
    ) -> Vec<u8> {
        let st = self.http_status();
        let mut out = String::with_capacity(256);
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Proxy-Status: {}; error={}; details=\"{}\"\r\n",
            st.code,
            st.reason,
            st.body.len(),
            PROXY_NAME,
            st.proxy_status,
            self.details(),
        );
        if st.code == 407 {
            let _ = write!(out, "Proxy-Authenticate: Basic realm=\"{PROXY_NAME}\"\r\n");
        }
        if let Some((request_id, date)) = support {
            let _ = write!(out, "X-Request-Id: {request_id}\r\nDate: {date}\r\n");
        }
        out.push_str(if keep_alive {
            "Connection: keep-alive\r\n\r\n"
        } else {
            "Connection: close\r\n\r\n"
        });
        if !head {
            out.push_str(st.body);
        }
        out.into_bytes()
    }

    /// Short label for logs and metrics: the HTTP code, which both protocols share.
    pub fn code(&self) -> u16 {
        self.http_status().code
    }

    /// Classify an outbound connect error onto the table.
    pub fn from_connect_io(err: &std::io::Error) -> ProxyError {
        use std::io::ErrorKind as K;
        match err.raw_os_error() {
            // A reset while connecting is a refusal (the target's stack said no).
            Some(libc::ECONNREFUSED) | Some(libc::ECONNRESET) => {
                return ProxyError::ConnectionRefused
            }
            Some(libc::EHOSTUNREACH) | Some(libc::EHOSTDOWN) => return ProxyError::HostUnreachable,
            Some(libc::ENETUNREACH) | Some(libc::ENETDOWN) => {
                return ProxyError::NetworkUnreachable
            }
            Some(libc::ETIMEDOUT) => return ProxyError::ConnectTimeout,
            Some(libc::EADDRNOTAVAIL) | Some(libc::EADDRINUSE) => {
                return ProxyError::Unavailable("no local address for the exit")
            }
            _ => {}
        }
        match err.kind() {
            K::ConnectionRefused => ProxyError::ConnectionRefused,
            K::TimedOut => ProxyError::ConnectTimeout,
            _ => ProxyError::HostUnreachable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<ProxyError> {
        use ProxyError::*;
        vec![
            BadRequest("x"),
            CommandNotSupported,
            AddressTypeNotSupported,
            HeadTooLarge,
            AuthFailed("x"),
            AccountExpired,
            AccountDisabled,
            NoAcceptableMethod,
            ExpectationFailed,
            BandwidthExceeded,
            ThreadsExceeded,
            InvalidCountry,
            InvalidState,
            InvalidCity,
            InvalidTtl,
            ForbiddenTarget("10.0.0.1:80".into()),
            Internal("x"),
            DnsFailed("nx.invalid".into()),
            HostUnreachable,
            ConnectionRefused,
            NetworkUnreachable,
            NoAddressInFamily("x has no IPv6 address".into()),
            ConnectTimeout,
            Upstream("x".into()),
            Unavailable("x"),
        ]
    }

    /// What an upstream reports maps back onto the same row of the table.
    #[test]
    fn upstream_reports_round_trip_through_the_table() {
        for code in 0u8..=0xff {
            if let Some(e) = ProxyError::from_socks_target_reply(code) {
                assert_eq!(e.socks_reply(), SocksReply::Reply(code), "{code:#04x}");
            }
        }
        for ps in [
            "dns_error",
            "connection_refused",
            "connection_timeout",
            "destination_ip_unroutable",
            "destination_unavailable",
        ] {
            let e = ProxyError::from_proxy_status_error(ps, "example.com:80").unwrap();
            assert_eq!(e.http_status().proxy_status, ps);
        }
        assert!(ProxyError::from_proxy_status_error("http_protocol_error", "x").is_none());
    }

    /// Every variant through both encoders: the two protocols cannot drift apart.
    #[test]
    fn every_variant_has_both_encodings() {
        let expected: &[(u16, &str, SocksReply)] = &[
            (400, "bad request", SocksReply::Reply(1)),
            (400, "bad request", SocksReply::Reply(7)),
            (400, "bad request", SocksReply::Reply(8)),
            (431, "request header fields too large", SocksReply::Reply(1)),
            (
                407,
                "Incorrect username or password",
                SocksReply::AuthFailure(1),
            ),
            (
                407,
                "Incorrect username or password",
                SocksReply::AuthFailure(1),
            ),
            (
                407,
                "Incorrect username or password",
                SocksReply::AuthFailure(1),
            ),
            (
                407,
                "Incorrect username or password",
                SocksReply::NoAcceptableMethod,
            ),
            (417, "expectation failed", SocksReply::Reply(1)),
            (452, "exceeded bandwidth limit", SocksReply::Reply(2)),
            (453, "exceeded threads limit", SocksReply::Reply(2)),
            (454, "invalid country code", SocksReply::Reply(2)),
            (454, "invalid state code", SocksReply::Reply(2)),
            (454, "invalid city code", SocksReply::Reply(2)),
            (455, "invalid ttl", SocksReply::Reply(2)),
            (403, "forbidden target", SocksReply::Reply(2)),
            (500, "internal error", SocksReply::Reply(1)),
            (502, "bad gateway", SocksReply::Reply(4)),
            (502, "bad gateway", SocksReply::Reply(4)),
            (502, "bad gateway", SocksReply::Reply(5)),
            (502, "bad gateway", SocksReply::Reply(3)),
            (502, "bad gateway", SocksReply::Reply(3)),
            (502, "bad gateway", SocksReply::Reply(6)),
            (502, "bad gateway", SocksReply::Reply(1)),
            (503, "service unavailable", SocksReply::Reply(1)),
        ];
        let errors = all();
        assert_eq!(errors.len(), expected.len());
        for (err, (code, body, socks)) in errors.iter().zip(expected) {
            let st = err.http_status();
            assert_eq!((st.code, st.body), (*code, *body), "{err:?}");
            assert_eq!(err.socks_reply(), *socks, "{err:?}");
            let resp = String::from_utf8(err.http_response(false)).unwrap();
            let (head, got_body) = resp.split_once("\r\n\r\n").unwrap();
            assert_eq!(got_body, *body);
            assert!(head.starts_with(&format!("HTTP/1.1 {code} {}\r\n", st.reason)));
            assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())));
            assert!(head.contains("Content-Type: text/plain\r\n"));
            assert!(head.contains(&format!(
                "Proxy-Status: tollgate; error={};",
                st.proxy_status
            )));
            assert!(head.contains("Connection: close"));
            assert_eq!(
                head.contains("Proxy-Authenticate: Basic realm=\"tollgate\""),
                *code == 407
            );
        }
    }

    #[test]
    fn reason_phrases_match_the_provider_page() {
        assert_eq!(
            ProxyError::InvalidCountry.http_status().reason,
            "Invalid Country Code"
        );
        assert_eq!(ProxyError::InvalidTtl.http_status().reason, "Invalid TTL");
        assert_eq!(
            ProxyError::ThreadsExceeded.http_status().reason,
            "Thread Limit Exceeded"
        );
        assert_eq!(
            ProxyError::BandwidthExceeded.http_status().reason,
            "Bandwidth Exceeded"
        );
    }

    #[test]
    fn details_cannot_break_the_quoted_string() {
        let e = ProxyError::DnsFailed("a\"b\\c\r\n".into());
        let resp = String::from_utf8(e.http_response(true)).unwrap();
        assert!(resp.contains("details=\"dns failure for abc\""));
    }
}
