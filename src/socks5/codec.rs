//! Sans-IO SOCKS5 codec (RFC 1928, RFC 1929) on socks5-proto's types.
//!
//! socks5-proto parses from a tokio `AsyncRead`; a `&[u8]` is one that never returns
//! `Pending`, so each parser polls the crate's future once over the bytes buffered so far:
//! `UnexpectedEof` means "need more", otherwise the slice's advance is what was consumed.

use crate::error::ProxyError;
use socks5_proto::{
    handshake::{self, Method},
    Address, Command, Error as SocksError, ProtocolError, Reply, Request, Response,
};
use std::future::Future;
use std::io::ErrorKind;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

pub use crate::util::Parsed;

fn poll_once<F: Future>(f: F) -> Option<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(f).poll(&mut cx) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

fn is_eof(e: &std::io::Error) -> bool {
    e.kind() == ErrorKind::UnexpectedEof
}

/// The method-selection greeting: `VER NMETHODS METHODS...`. Returns the offered methods.
pub fn parse_greeting(buf: &[u8]) -> Result<Parsed<Vec<Method>>, ProxyError> {
    let mut rd = buf;
    match poll_once(handshake::Request::read_from(&mut rd)) {
        None => Err(ProxyError::Internal("socks5 parser pending on a slice")),
        Some(Ok(req)) => Ok(Parsed::Done(req.methods, buf.len() - rd.len())),
        Some(Err(SocksError::Io(e))) if is_eof(&e) => Ok(Parsed::Incomplete),
        Some(Err(_)) => Err(ProxyError::BadRequest("malformed socks5 greeting")),
    }
}

/// RFC 1929 credentials: (username, password).
pub type Credentials = (Vec<u8>, Vec<u8>);

/// The RFC 1929 sub-negotiation: `VER ULEN UNAME PLEN PASSWD`.
pub fn parse_password(buf: &[u8]) -> Result<Parsed<Credentials>, ProxyError> {
    use handshake::password::{Error as PwError, Request as PwRequest};
    let mut rd = buf;
    match poll_once(PwRequest::read_from(&mut rd)) {
        None => Err(ProxyError::Internal("socks5 parser pending on a slice")),
        Some(Ok(req)) => Ok(Parsed::Done(
            (req.username, req.password),
            buf.len() - rd.len(),
        )),
        Some(Err(PwError::Io(e))) if is_eof(&e) => Ok(Parsed::Incomplete),
        Some(Err(_)) => Err(ProxyError::AuthFailed("malformed RFC 1929 sub-negotiation")),
    }
}

/// The request: `VER CMD RSV ATYP DST.ADDR DST.PORT`.
pub fn parse_request(buf: &[u8]) -> Result<Parsed<(Command, Address)>, ProxyError> {
    let mut rd = buf;
    match poll_once(Request::read_from(&mut rd)) {
        None => Err(ProxyError::Internal("socks5 parser pending on a slice")),
        Some(Ok(req)) => Ok(Parsed::Done(
            (req.command, req.address),
            buf.len() - rd.len(),
        )),
        Some(Err(SocksError::Io(e))) if is_eof(&e) => Ok(Parsed::Incomplete),
        Some(Err(SocksError::Protocol(ProtocolError::InvalidCommand { .. }))) => {
            Err(ProxyError::CommandNotSupported)
        }
        Some(Err(SocksError::Protocol(ProtocolError::InvalidAddressTypeInRequest { .. }))) => {
            Err(ProxyError::AddressTypeNotSupported)
        }
        Some(Err(_)) => Err(ProxyError::BadRequest("malformed socks5 request")),
    }
}

/// Client side: the server's method selection.
pub fn parse_method_reply(buf: &[u8]) -> Result<Parsed<Method>, ProxyError> {
    let mut rd = buf;
    match poll_once(handshake::Response::read_from(&mut rd)) {
        None => Err(ProxyError::Internal("socks5 parser pending on a slice")),
        Some(Ok(r)) => Ok(Parsed::Done(r.method, buf.len() - rd.len())),
        Some(Err(SocksError::Io(e))) if is_eof(&e) => Ok(Parsed::Incomplete),
        Some(Err(_)) => Err(ProxyError::Upstream("malformed socks5 method reply".into())),
    }
}

/// Client side: the RFC 1929 status (true = accepted).
pub fn parse_auth_reply(buf: &[u8]) -> Result<Parsed<bool>, ProxyError> {
    use handshake::password::{Error as PwError, Response as PwResponse};
    let mut rd = buf;
    match poll_once(PwResponse::read_from(&mut rd)) {
        None => Err(ProxyError::Internal("socks5 parser pending on a slice")),
        Some(Ok(r)) => Ok(Parsed::Done(r.status, buf.len() - rd.len())),
        Some(Err(PwError::Io(e))) if is_eof(&e) => Ok(Parsed::Incomplete),
        // Any non-zero status is a failure (RFC 1929 section 2).
        Some(Err(PwError::SubNegotiationStatus { .. })) => Ok(Parsed::Done(false, 2)),
        Some(Err(_)) => Err(ProxyError::Upstream("malformed RFC 1929 reply".into())),
    }
}

/// Client side: the reply to a request (its code).
pub fn parse_reply(buf: &[u8]) -> Result<Parsed<u8>, ProxyError> {
    Ok(match parse_reply_bound(buf)? {
        Parsed::Done((code, _), n) => Parsed::Done(code, n),
        Parsed::Incomplete => Parsed::Incomplete,
    })
}

/// Client side: the reply to a request (code, bound address).
pub fn parse_reply_bound(buf: &[u8]) -> Result<Parsed<(u8, Address)>, ProxyError> {
    let mut rd = buf;
    match poll_once(Response::read_from(&mut rd)) {
        None => Err(ProxyError::Internal("socks5 parser pending on a slice")),
        Some(Ok(r)) => Ok(Parsed::Done(
            (u8::from(r.reply), r.address),
            buf.len() - rd.len(),
        )),
        Some(Err(SocksError::Io(e))) if is_eof(&e) => Ok(Parsed::Incomplete),
        Some(Err(_)) => Err(ProxyError::Upstream("malformed socks5 reply".into())),
    }
}

/// Client side: greeting offering `method`.
pub fn encode_greeting(method: Method, out: &mut Vec<u8>) {
    handshake::Request::new(vec![method]).write_to_buf(out);
}

/// Client side: RFC 1929 credentials.
pub fn encode_password(user: &[u8], pass: &[u8], out: &mut Vec<u8>) {
    handshake::password::Request::new(user.to_vec(), pass.to_vec()).write_to_buf(out);
}

/// Client side: a request (CONNECT, UDP ASSOCIATE).
pub fn encode_request(command: Command, address: Address, out: &mut Vec<u8>) {
    Request::new(command, address).write_to_buf(out);
}

/// Method selection reply.
pub fn encode_method(method: Method, out: &mut Vec<u8>) {
    handshake::Response::new(method).write_to_buf(out);
}

/// RFC 1929 status: `0x00` success; failures carry DESIGN's status byte.
pub fn encode_auth_status(status: u8, out: &mut Vec<u8>) {
    if status == 0 {
        handshake::password::Response::new(true).write_to_buf(out);
    } else {
        out.extend_from_slice(&[handshake::password::SUBNEGOTIATION_VERSION, status]);
    }
}

/// A reply to the request, with the bound address (`0.0.0.0:0` on failure).
pub fn encode_reply(code: u8, bound: Address, out: &mut Vec<u8>) {
    let reply = Reply::try_from(code).unwrap_or(Reply::GeneralFailure);
    Response::new(reply, bound).write_to_buf(out);
}

/// A client's UDP datagram (RFC 1928 section 7): `RSV(2) FRAG ATYP DST.ADDR DST.PORT
/// DATA`. Returns FRAG, the destination and where DATA starts. A datagram is whole: a
/// short one is malformed, not incomplete.
pub fn parse_udp(buf: &[u8]) -> Result<(u8, Address, usize), ProxyError> {
    let mut rd = buf;
    match poll_once(socks5_proto::UdpHeader::read_from(&mut rd)) {
        Some(Ok(h)) => Ok((h.frag, h.address, buf.len() - rd.len())),
        Some(Err(SocksError::Protocol(ProtocolError::InvalidAddressTypeInUdpHeader {
            ..
        }))) => Err(ProxyError::AddressTypeNotSupported),
        _ => Err(ProxyError::BadRequest("malformed socks5 udp datagram")),
    }
}

/// The header of a datagram relayed back to the client: FRAG 0, from `source`.
pub fn encode_udp_header(source: std::net::SocketAddr, out: &mut Vec<u8>) {
    socks5_proto::UdpHeader::new(0, Address::SocketAddress(source)).write_to_buf(out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn udp_datagrams() {
        let addr: SocketAddr = "127.0.0.1:53".parse().unwrap();
        let mut d = Vec::new();
        encode_udp_header(addr, &mut d);
        assert_eq!(d, b"\0\0\0\x01\x7f\0\0\x01\0\x35");
        d.extend_from_slice(b"query");
        assert_eq!(
            parse_udp(&d).unwrap(),
            (0, Address::SocketAddress(addr), 10)
        );
        let dom = b"\0\0\x01\x03\x07example\0\x35data";
        assert_eq!(
            parse_udp(dom).unwrap(),
            (1, Address::DomainAddress(b"example".to_vec(), 53), 14)
        );
        assert!(parse_udp(b"\0\0\0\x01\x7f\0").is_err());
        assert!(parse_udp(b"").is_err());
        assert!(matches!(
            parse_udp(b"\0\0\0\x09\x7f\0\0\x01\0\x35"),
            Err(ProxyError::AddressTypeNotSupported)
        ));
    }

    #[test]
    fn greeting() {
        assert_eq!(parse_greeting(b"").unwrap(), Parsed::Incomplete);
        assert_eq!(parse_greeting(b"\x05\x02\x00").unwrap(), Parsed::Incomplete);
        assert_eq!(
            parse_greeting(b"\x05\x02\x00\x02rest").unwrap(),
            Parsed::Done(vec![Method::NONE, Method::PASSWORD], 4)
        );
        assert_eq!(
            parse_greeting(b"\x05\x00").unwrap(),
            Parsed::Done(vec![], 2)
        );
        assert!(parse_greeting(b"\x04\x01").is_err());
    }

    #[test]
    fn password() {
        assert_eq!(parse_password(b"\x01\x05ali").unwrap(), Parsed::Incomplete);
        assert_eq!(
            parse_password(b"\x01\x05alice\x02pw").unwrap(),
            Parsed::Done((b"alice".to_vec(), b"pw".to_vec()), 10)
        );
        assert_eq!(
            parse_password(b"\x01\x00\x00").unwrap(),
            Parsed::Done((vec![], vec![]), 3)
        );
        assert!(parse_password(b"\x02\x01a\x01b").is_err());
    }

    #[test]
    fn request() {
        let v4 = b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50extra";
        let addr: SocketAddr = "127.0.0.1:80".parse().unwrap();
        assert_eq!(
            parse_request(v4).unwrap(),
            Parsed::Done((Command::Connect, Address::SocketAddress(addr)), 10)
        );
        let dom = b"\x05\x01\x00\x03\x09localhost\x1f\x90";
        assert_eq!(
            parse_request(dom).unwrap(),
            Parsed::Done(
                (
                    Command::Connect,
                    Address::DomainAddress(b"localhost".to_vec(), 8080)
                ),
                dom.len()
            )
        );
        let mut v6 = b"\x05\x01\x00\x04".to_vec();
        v6.extend_from_slice(&[0; 15]);
        v6.push(1);
        v6.extend_from_slice(&[0x01, 0xbb]);
        let addr6: SocketAddr = "[::1]:443".parse().unwrap();
        assert_eq!(
            parse_request(&v6).unwrap(),
            Parsed::Done((Command::Connect, Address::SocketAddress(addr6)), 22)
        );
        for cut in 0..dom.len() {
            assert_eq!(
                parse_request(&dom[..cut]).unwrap(),
                Parsed::Incomplete,
                "{cut}"
            );
        }
        assert_eq!(
            parse_request(b"\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50").unwrap(),
            Parsed::Done((Command::Bind, Address::SocketAddress(addr)), 10)
        );
        assert_eq!(
            parse_request(b"\x05\x09\x00\x01"),
            Err(ProxyError::CommandNotSupported)
        );
        assert_eq!(
            parse_request(b"\x05\x01\x00\x07\x00"),
            Err(ProxyError::AddressTypeNotSupported)
        );
        assert!(matches!(
            parse_request(b"\x04\x01\x00\x01"),
            Err(ProxyError::BadRequest(_))
        ));
    }

    #[test]
    fn client_side() {
        assert_eq!(parse_method_reply(b"\x05").unwrap(), Parsed::Incomplete);
        assert_eq!(
            parse_method_reply(b"\x05\x02").unwrap(),
            Parsed::Done(Method::PASSWORD, 2)
        );
        assert_eq!(
            parse_auth_reply(b"\x01\x00").unwrap(),
            Parsed::Done(true, 2)
        );
        assert_eq!(
            parse_auth_reply(b"\x01\x01").unwrap(),
            Parsed::Done(false, 2)
        );
        assert_eq!(
            parse_auth_reply(b"\x01\xff").unwrap(),
            Parsed::Done(false, 2)
        );
        let ok = b"\x05\x00\x00\x01\x7f\x00\x00\x01\x1f\x90rest";
        assert_eq!(parse_reply(ok).unwrap(), Parsed::Done(0, 10));
        assert_eq!(parse_reply(&ok[..7]).unwrap(), Parsed::Incomplete);
        let mut out = Vec::new();
        encode_request(
            Command::Connect,
            Address::DomainAddress(b"h".to_vec(), 80),
            &mut out,
        );
        assert_eq!(out, b"\x05\x01\x00\x03\x01h\x00\x50");
    }

    #[test]
    fn replies() {
        let mut out = Vec::new();
        encode_reply(0x05, Address::unspecified(), &mut out);
        assert_eq!(out, b"\x05\x05\x00\x01\x00\x00\x00\x00\x00\x00");
        out.clear();
        encode_auth_status(0x01, &mut out);
        assert_eq!(out, b"\x01\x01");
        out.clear();
        encode_auth_status(0, &mut out);
        assert_eq!(out, b"\x01\x00");
        out.clear();
        encode_method(Method::UNACCEPTABLE, &mut out);
        assert_eq!(out, b"\x05\xff");
    }
}
