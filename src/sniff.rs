//! First bytes → protocol. Decides from the bytes already read, never consuming them: the
//! chosen handler parses the same buffer.

/// What the first bytes of a connection look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `0x05`: a SOCKS5 greeting.
    Socks5,
    /// `0x04`: a SOCKS4 or SOCKS4a request, answered "rejected" (`0x5B`), never served.
    Socks4,
    /// An HTTP method token followed by a space (or a line end: a malformed request line,
    /// which the HTTP handler answers with 400).
    Http,
    /// `0x16`: a TLS handshake record (a ClientHello): an HTTPS proxy client, served on a
    /// listener with a certificate, answered with an alert on one without.
    Tls,
    /// None of these (garbage): closed without a reply.
    Unknown,
}

/// Longest method token we consider plausible ("PROPPATCH", "MKCALENDAR", ... fit).
const MAX_METHOD: usize = 16;

/// Decide the protocol, or `None` when more bytes are needed to tell.
pub fn sniff(buf: &[u8]) -> Option<Protocol> {
    match buf.first()? {
        0x05 => Some(Protocol::Socks5),
        0x04 => Some(Protocol::Socks4),
        0x16 => Some(Protocol::Tls),
        b'A'..=b'Z' => {
            for (i, &c) in buf.iter().enumerate().take(MAX_METHOD + 1) {
                match c {
                    b'A'..=b'Z' | b'-' | b'_' if i < MAX_METHOD => continue,
                    b' ' | b'\r' | b'\n' => return Some(Protocol::Http),
                    _ => return Some(Protocol::Unknown),
                }
            }
            if buf.len() > MAX_METHOD {
                Some(Protocol::Unknown)
            } else {
                None
            }
        }
        _ => Some(Protocol::Unknown),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Protocol::*;

    #[test]
    fn table() {
        let rows: &[(&[u8], Option<Protocol>)] = &[
            (b"", None),
            (b"\x05\x01\x02", Some(Socks5)),
            (b"\x05", Some(Socks5)),
            (b"\x04\x01\x00\x50", Some(Socks4)),
            (b"GET\r\n", Some(Http)),
            (b"GET\n", Some(Http)),
            (b"\x16\x03\x01", Some(Tls)),
            (b"\x16", Some(Tls)),
            (b"\x15\x03\x01", Some(Unknown)),
            (b"GET / HTTP/1.1\r\n", Some(Http)),
            (b"CONNECT a:443 HTTP/1.1", Some(Http)),
            (b"GE", None),
            (b"CONNECT", None),
            (b"get / HTTP/1.1", Some(Unknown)),
            (b"GET\t/", Some(Unknown)),
            (b"AAAAAAAAAAAAAAAAAAAA", Some(Unknown)),
            (b"AAAAAAAAAAAAAAAAA ", Some(Unknown)),
            (b"AAAAAAAAAAAAAAAA ", Some(Http)),
            (b" GET", Some(Unknown)),
            (b"\r\nGET", Some(Unknown)),
        ];
        for (input, want) in rows {
            assert_eq!(sniff(input), *want, "{input:?}");
        }
    }
}
