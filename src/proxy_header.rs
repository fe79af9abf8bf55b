//! The PROXY protocol header a load balancer puts before a client's bytes (HAProxy's
//! specification, versions 1 and 2), parsed sans-IO: the client's address as the balancer
//! saw it. Fuzzed with the other codecs.

use crate::error::ProxyError;
use crate::util::Parsed;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Which versions a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versions {
    V1,
    V2,
    Any,
}

/// What the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The client's address; `None` for a header that carries none (v1 `UNKNOWN`, v2
    /// `LOCAL`: the balancer's own health check).
    pub source: Option<SocketAddr>,
}

const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line, CRLF included (the specification's bound).
const V1_MAX: usize = 107;
/// The most v2 address and TLV bytes accepted.
const V2_MAX_LEN: usize = 512;

fn bad(why: &'static str) -> ProxyError {
    ProxyError::BadRequest(why)
}

/// Parse a header at the start of `b`: `Done(header, its length)`, `Incomplete`, or an
/// error when `b` does not start with a header of an accepted version.
pub fn parse(b: &[u8], accept: Versions) -> Result<Parsed<Header>, ProxyError> {
    let v1 = b"PROXY ";
    let is_prefix = |sig: &[u8]| b.len() < sig.len() && sig.starts_with(b);
    if accept != Versions::V2 && (b.starts_with(v1) || is_prefix(v1)) {
        return if b.len() < v1.len() {
            Ok(Parsed::Incomplete)
        } else {
            parse_v1(b)
        };
    }
    if accept != Versions::V1 && (b.starts_with(V2_SIG) || is_prefix(V2_SIG)) {
        return if b.len() < V2_SIG.len() {
            Ok(Parsed::Incomplete)
        } else {
            parse_v2(b)
        };
    }
    Err(bad("no PROXY protocol header"))
}

fn parse_v1(b: &[u8]) -> Result<Parsed<Header>, ProxyError> {
    let Some(end) = b.windows(2).take(V1_MAX - 1).position(|w| w == b"\r\n") else {
        return if b.len() >= V1_MAX {
            Err(bad("PROXY v1 line too long"))
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let line = std::str::from_utf8(&b[..end]).map_err(|_| bad("PROXY v1 line not ASCII"))?;
    let mut f = line.split(' ');
    let (_, proto) = (f.next(), f.next());
    let source = match proto {
        Some("UNKNOWN") => None,
        Some(p @ ("TCP4" | "TCP6")) => {
            let (src, _dst, sport, _dport) = (f.next(), f.next(), f.next(), f.next());
            if f.next().is_some() {
                return Err(bad("PROXY v1 line has extra fields"));
            }
            let ip: IpAddr = src
                .and_then(|s| s.parse().ok())
                .ok_or(bad("PROXY v1 source address"))?;
            if ip.is_ipv4() != (p == "TCP4") {
                return Err(bad("PROXY v1 address family mismatch"));
            }
            // Digits only, no leading zeros beyond "0" (the specification's form).
            let port = sport
                .filter(|s| !s.is_empty() && s.len() <= 5 && s.bytes().all(|c| c.is_ascii_digit()))
                .and_then(|s| s.parse::<u16>().ok())
                .ok_or(bad("PROXY v1 source port"))?;
            Some(SocketAddr::new(ip, port))
        }
        _ => return Err(bad("PROXY v1 protocol")),
    };
    Ok(Parsed::Done(Header { source }, end + 2))
}

fn parse_v2(b: &[u8]) -> Result<Parsed<Header>, ProxyError> {
    if b.len() < 16 {
        return Ok(Parsed::Incomplete);
    }
    let (ver_cmd, fam) = (b[12], b[13]);
    let len = usize::from(u16::from_be_bytes([b[14], b[15]]));
    if ver_cmd >> 4 != 2 {
        return Err(bad("PROXY v2 version"));
    }
    if len > V2_MAX_LEN {
        return Err(bad("PROXY v2 header too long"));
    }
    if b.len() < 16 + len {
        return Ok(Parsed::Incomplete);
    }
    let body = &b[16..16 + len];
    let source = match ver_cmd & 0x0F {
        // LOCAL: the balancer's own connection; the addresses are to be ignored.
        0 => None,
        1 => match fam {
            0x11 if body.len() >= 12 => {
                let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
                Some(SocketAddr::new(
                    ip.into(),
                    u16::from_be_bytes([body[8], body[9]]),
                ))
            }
            0x21 if body.len() >= 36 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(&body[..16]);
                let port = u16::from_be_bytes([body[32], body[33]]);
                Some(SocketAddr::new(Ipv6Addr::from(a).into(), port))
            }
            0x11 | 0x21 => return Err(bad("PROXY v2 addresses truncated")),
            // UNSPEC or a family that is not TCP over IP: no usable client address.
            _ => return Err(bad("PROXY v2 family")),
        },
        _ => return Err(bad("PROXY v2 command")),
    };
    Ok(Parsed::Done(Header { source }, 16 + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(b: &[u8], v: Versions) -> (Option<SocketAddr>, usize) {
        match parse(b, v) {
            Ok(Parsed::Done(h, n)) => (h.source, n),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn v1_lines() {
        let l = b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 13337\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            done(l, Versions::V1),
            (Some("203.0.113.7:51234".parse().unwrap()), 46)
        );
        assert_eq!(done(l, Versions::Any).1, 46);
        let six = b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 443\r\n";
        assert_eq!(
            done(six, Versions::Any).0,
            Some("[2001:db8::7]:4000".parse().unwrap())
        );
        assert_eq!(done(b"PROXY UNKNOWN\r\n", Versions::V1), (None, 15));
        assert!(matches!(
            parse(b"PROX", Versions::V1),
            Ok(Parsed::Incomplete)
        ));
        assert!(matches!(
            parse(b"PROXY TCP4 1.2.3.4", Versions::V1),
            Ok(Parsed::Incomplete)
        ));
        for bad in [
            &b"PROXY TCP4 2001:db8::1 1.2.3.4 1 2\r\n"[..],
            b"PROXY TCP4 1.2.3.4 1.2.3.4 99999 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 +1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3\r\n",
            b"PROXY UDP4 1.2.3.4 1.2.3.4 1 2\r\n",
            b"GET / HTTP/1.1\r\n",
            &[b'P'; 200][..],
        ] {
            assert!(
                parse(bad, Versions::Any).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(parse(l, Versions::V2).is_err(), "v1 on a v2 listener");
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert!(parse(&long, Versions::V1).is_err());
    }

    fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIG.to_vec();
        h.push(0x20 | cmd);
        h.push(fam);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    #[test]
    fn v2_headers() {
        let body = [
            203, 0, 113, 7, 192, 0, 2, 1, 0xC8, 0x22, 0x34, 0x19, 0xAA, 0xBB,
        ];
        let h = v2(1, 0x11, &body);
        assert_eq!(
            done(&h, Versions::V2),
            (Some("203.0.113.7:51234".parse().unwrap()), 30)
        );
        assert_eq!(done(&h, Versions::Any).1, 30, "TLV bytes skipped");
        let mut b6 = vec![0u8; 36];
        b6[..16].copy_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        b6[32..34].copy_from_slice(&4000u16.to_be_bytes());
        assert_eq!(
            done(&v2(1, 0x21, &b6), Versions::V2).0,
            Some("[2001:db8::7]:4000".parse().unwrap())
        );
        assert_eq!(done(&v2(0, 0x00, &[]), Versions::V2).0, None, "LOCAL");
        assert!(matches!(
            parse(&h[..20], Versions::V2),
            Ok(Parsed::Incomplete)
        ));
        assert!(matches!(
            parse(&h[..5], Versions::V2),
            Ok(Parsed::Incomplete)
        ));
        assert!(parse(&v2(1, 0x11, &body[..6]), Versions::V2).is_err());
        assert!(
            parse(&v2(1, 0x31, &[0; 216]), Versions::V2).is_err(),
            "unix sockets"
        );
        assert!(parse(&v2(2, 0x11, &body), Versions::V2).is_err());
        let mut wrong_version = v2(1, 0x11, &body);
        wrong_version[12] = 0x11;
        assert!(parse(&wrong_version, Versions::V2).is_err());
        assert!(
            parse(&v2(1, 0x11, &[0; 600]), Versions::V2).is_err(),
            "too long"
        );
        assert!(parse(&h, Versions::V1).is_err(), "v2 on a v1 listener");
    }
}
