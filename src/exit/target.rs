//! What the client asked to reach, normalised so that every policy sees what it means.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// What the client asked to reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetAddr {
    Ip(SocketAddr),
    Name(String, u16),
}

impl TargetAddr {
    /// A host string (name or IP literal) and port, as HTTP and SOCKS domain targets carry.
    /// Every numeric form `inet_aton` accepts (`127.1`, `2130706433`, `0x7f000001`,
    /// `0177.0.0.1`, `0`) becomes the IPv4 address it means, so that the private-target
    /// policy sees it on every exit kind, not only where this host resolves it.
    pub fn from_host(host: &str, port: u16) -> TargetAddr {
        let host = host
            .strip_suffix('.')
            .filter(|h| !h.is_empty())
            .unwrap_or(host);
        if let Ok(ip) = host.parse::<IpAddr>() {
            return TargetAddr::Ip(SocketAddr::new(ip, port));
        }
        match inet_aton(host) {
            Some(v4) => TargetAddr::Ip(SocketAddr::new(IpAddr::V4(v4), port)),
            None => TargetAddr::Name(host.to_ascii_lowercase(), port),
        }
    }

    /// A SOCKS5 domain name: hostname characters only (letters, digits, `-`, `_`, `.`; at
    /// most 253 bytes, labels of 1–63), or an IP literal. Anything else (CR, LF, NUL,
    /// space, `/`, `@`, `:`, …) would travel into an upstream's CONNECT line or a log line.
    pub fn from_socks_name(name: &[u8], port: u16) -> Option<TargetAddr> {
        let host = std::str::from_utf8(name).ok()?;
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Some(TargetAddr::Ip(SocketAddr::new(ip, port)));
        }
        let bare = host.strip_suffix('.').unwrap_or(host);
        let valid = !bare.is_empty()
            && bare.len() <= 253
            && bare.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
            });
        valid.then(|| TargetAddr::from_host(host, port))
    }

    pub fn port(&self) -> u16 {
        match self {
            TargetAddr::Ip(a) => a.port(),
            TargetAddr::Name(_, p) => *p,
        }
    }
}

/// The IPv4 address `inet_aton(3)` would make of `s`: one to four parts, each decimal,
/// octal (leading `0`) or hex (`0x`); the last part fills the remaining bytes.
pub fn inet_aton(s: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut vals = Vec::with_capacity(4);
    for p in &parts {
        let (digits, radix) = if let Some(h) = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X"))
        {
            (h, 16)
        } else if p.len() > 1 && p.starts_with('0') {
            (&p[1..], 8)
        } else {
            (*p, 10)
        };
        if p.is_empty()
            || (digits.is_empty() && radix != 16)
            || !digits.bytes().all(|c| c.is_ascii_hexdigit())
        {
            return None;
        }
        let v = if digits.is_empty() {
            0
        } else {
            u64::from_str_radix(digits, radix).ok()?
        };
        vals.push(v);
    }
    let (last, head) = vals.split_last()?;
    if head.iter().any(|&v| v > 255) {
        return None;
    }
    let rest_bits = 8 * (4 - head.len() as u32);
    if *last >= 1u64 << rest_bits {
        return None;
    }
    let mut n: u64 = 0;
    for (i, &v) in head.iter().enumerate() {
        n |= v << (24 - 8 * i as u32);
    }
    n |= last;
    Some(Ipv4Addr::from(n as u32))
}

impl fmt::Display for TargetAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetAddr::Ip(a) => write!(f, "{a}"),
            TargetAddr::Name(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

/// A target's identity for health bookkeeping.
pub(super) fn target_key(target: &TargetAddr) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = ahash::AHasher::default();
    match target {
        TargetAddr::Ip(a) => a.hash(&mut h),
        TargetAddr::Name(n, p) => (n, p).hash(&mut h),
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::{inet_aton, TargetAddr};

    #[test]
    fn every_inet_aton_form_is_an_ip_literal() {
        for (s, want) in [
            ("127.1", Some([127, 0, 0, 1])),
            ("2130706433", Some([127, 0, 0, 1])),
            ("0x7f000001", Some([127, 0, 0, 1])),
            ("0177.0.0.1", Some([127, 0, 0, 1])),
            ("0", Some([0, 0, 0, 0])),
            ("127.0.1", Some([127, 0, 0, 1])),
            ("0xa9.0xfe.0xa9.0xfe", Some([169, 254, 169, 254])),
            ("256.0.0.1", None),
            ("1.2.3.4.5", None),
            ("example.com", None),
            ("+1", None),
            ("08", None),
            ("1.", None),
        ] {
            assert_eq!(inet_aton(s), want.map(std::net::Ipv4Addr::from), "{s}");
        }
        assert!(matches!(
            TargetAddr::from_host("127.1", 80),
            TargetAddr::Ip(_)
        ));
        assert!(matches!(
            TargetAddr::from_host("127.0.0.1.", 80),
            TargetAddr::Ip(_)
        ));
    }

    #[test]
    fn socks_names_are_host_names() {
        for bad in [
            &b"a\r\nb"[..],
            b"a\nb",
            b"a b",
            b"a/b",
            b"a@b",
            b"a\0b",
            b"",
            b"a..b",
            b"h:1",
        ] {
            assert!(TargetAddr::from_socks_name(bad, 80).is_none(), "{bad:?}");
        }
        assert!(TargetAddr::from_socks_name(b"ex-am_ple.com.", 80).is_some());
        assert!(matches!(
            TargetAddr::from_socks_name(b"0x7f.1", 80),
            Some(TargetAddr::Ip(_))
        ));
    }
}
