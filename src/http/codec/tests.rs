use super::*;

fn req(raw: &str) -> Result<Request, ProxyError> {
    match parse_request(raw.as_bytes())? {
        Parsed::Done(r, n) => {
            assert_eq!(n, raw.find("\r\n\r\n").unwrap() + 4);
            Ok(r)
        }
        Parsed::Incomplete => panic!("incomplete: {raw}"),
    }
}

#[test]
fn connect_and_absolute_form() {
    let r = req("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n").unwrap();
    assert_eq!(
        r.target,
        Target::Tunnel {
            host: "example.com".into(),
            port: 443
        }
    );
    let r = req("CONNECT [::1]:8443 HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(r.target.host_port(), ("::1", 8443));
    let r = req("GET http://Example.com:8080/a?b=c#frag HTTP/1.1\r\nHost: other\r\n\r\n").unwrap();
    assert_eq!(
        r.target,
        Target::Forward {
            host: "example.com".into(),
            port: 8080,
            authority: "Example.com:8080".into(),
            path: "/a?b=c".into()
        }
    );
    let r = req("GET http://h?q HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(r.target.host_port(), ("h", 80));
    let Target::Forward { path, .. } = &r.target else {
        panic!()
    };
    assert_eq!(path, "/?q");
}

#[test]
fn bad_requests() {
    let rows = [
        "GET /relative HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET https://h/ HTTP/1.1\r\n\r\n",
        "CONNECT h HTTP/1.1\r\n\r\n",
        "CONNECT h:0 HTTP/1.1\r\n\r\n",
        "CONNECT h:99999 HTTP/1.1\r\n\r\n",
        "GET http://u:p@h/ HTTP/1.1\r\n\r\n",
        "GET http://h/ HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET http://h/ HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        "GET http://h/ HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n",
        "GET http://h/ HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
        "POST http://h/ HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        "POST http://h/ HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        "GET http://h/ HTTP/1.1\r\nBad Header: x\r\n\r\n",
        "GET http://h\x01/ HTTP/1.1\r\n\r\n",
    ];
    for raw in rows {
        assert!(
            matches!(req(raw), Err(ProxyError::BadRequest(_))),
            "{raw:?} -> {:?}",
            req(raw)
        );
    }
}

#[test]
fn framing_and_expect() {
    let r =
        req("POST http://h/ HTTP/1.1\r\nContent-Length: 10\r\nContent-Length: 10\r\n\r\n").unwrap();
    assert_eq!(r.body, Framing::Length(10));
    let r = req("POST http://h/ HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").unwrap();
    assert_eq!(r.body, Framing::Chunked);
    let r = req("POST http://h/ HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-Continue\r\n\r\n")
        .unwrap();
    assert!(r.expect_continue);
    assert_eq!(
        req("GET http://h/ HTTP/1.1\r\nExpect: something-else\r\n\r\n").unwrap_err(),
        ProxyError::ExpectationFailed
    );
}

#[test]
fn hop_by_hop_headers_are_stripped() {
    let r = req("GET http://h:81/x HTTP/1.1\r\nHost: wrong\r\nProxy-Authorization: Basic YTpi\r\n\
                 Proxy-Connection: keep-alive\r\nConnection: X-Secret, keep-alive\r\nX-Secret: 1\r\n\
                 Keep-Alive: 300\r\nTE: trailers\r\nUpgrade: websocket\r\nAccept: */*\r\n\r\n")
    .unwrap();
    assert_eq!(r.credentials, Some((b"a".to_vec(), b"b".to_vec())));
    let mut out = Vec::new();
    r.encode_upstream(&mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "GET /x HTTP/1.1\r\nHost: h:81\r\nAccept: */*\r\n\r\n"
    );
}

#[test]
fn keep_alive_rules() {
    assert!(req("GET http://h/ HTTP/1.1\r\n\r\n").unwrap().keep_alive);
    assert!(
        !req("GET http://h/ HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap()
            .keep_alive
    );
    assert!(!req("GET http://h/ HTTP/1.0\r\n\r\n").unwrap().keep_alive);
    assert!(
        req("GET http://h/ HTTP/1.0\r\nProxy-Connection: Keep-Alive\r\n\r\n")
            .unwrap()
            .keep_alive
    );
}

#[test]
fn incomplete_and_too_many_headers() {
    assert!(matches!(
        parse_request(b"GET http://h/ HTTP/1.1\r\nA: b\r\n"),
        Ok(Parsed::Incomplete)
    ));
    let mut many = String::from("GET http://h/ HTTP/1.1\r\n");
    for i in 0..200 {
        many.push_str(&format!("X-{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert!(matches!(
        parse_request(many.as_bytes()),
        Err(ProxyError::HeadTooLarge)
    ));
}

fn resp(raw: &str, head: bool) -> Response {
    match parse_response(raw.as_bytes(), head).unwrap() {
        Parsed::Done(r, _) => r,
        Parsed::Incomplete => panic!(),
    }
}

#[test]
fn response_framing() {
    assert_eq!(
        resp("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false).body,
        Framing::Length(5)
    );
    assert_eq!(
        resp("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true).body,
        Framing::None
    );
    assert_eq!(
        resp("HTTP/1.1 204 No Content\r\n\r\n", false).body,
        Framing::None
    );
    assert_eq!(
        resp(
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            false
        )
        .body,
        Framing::None
    );
    assert_eq!(
        resp("HTTP/1.1 100 Continue\r\n\r\n", false).body,
        Framing::None
    );
    let r = resp(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        false,
    );
    assert_eq!(r.body, Framing::Chunked);
    assert!(r.reusable);
    let r = resp("HTTP/1.1 200 OK\r\n\r\n", false);
    assert_eq!(r.body, Framing::UntilClose);
    assert!(!r.reusable);
    assert!(
        !resp(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
            false
        )
        .reusable
    );
    assert!(!resp("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false).reusable);
    assert!(parse_response(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        false
    )
    .is_err());
    let r = resp("HTTP/1.1 200 OK\r\nConnection: x-hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nServer: s\r\nContent-Length: 0\r\n\r\n", false);
    let mut out = Vec::new();
    r.encode_downstream(Relay::Framed, true, &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"
    );
}

fn decode_all(input: &[u8], step: usize) -> Result<(Vec<u8>, usize), &'static str> {
    let mut d = ChunkedDecoder::default();
    let mut payload = Vec::new();
    let mut pos = 0;
    while pos < input.len() && !d.is_done() {
        let end = (pos + step).min(input.len());
        let fed = d.feed(&input[pos..end])?;
        for r in fed.data {
            payload.extend_from_slice(&input[pos + r.start..pos + r.end]);
        }
        pos += fed.consumed;
        if fed.consumed == 0 {
            break;
        }
    }
    if !d.is_done() {
        return Err("incomplete");
    }
    Ok((payload, pos))
}

#[test]
fn chunked_decoding_in_any_split() {
    let body = b"5\r\nhello\r\nA;ext=1\r\n0123456789\r\n0\r\nX-Trailer: v\r\n\r\nNEXT";
    for step in 1..body.len() {
        let (payload, used) = decode_all(body, step).unwrap();
        assert_eq!(payload, b"hello0123456789", "step {step}");
        assert_eq!(&body[used..], b"NEXT", "step {step}");
    }
    assert_eq!(decode_all(b"0\r\n\r\n", 1).unwrap().0, b"");
}

#[test]
fn chunked_errors() {
    for bad in [
        &b"x\r\n"[..],
        b"5\nhello",
        b"5\r\nhelloXX",
        b"fffffffffffffffff\r\n",
        b";\r\n",
        b"\r\n",
    ] {
        assert!(decode_all(bad, 3).is_err(), "{bad:?}");
    }
    let long = vec![b'1'; 5000];
    assert!(decode_all(&long, 100).is_err());
}

#[test]
fn authority_forms() {
    assert_eq!(split_authority("h:1", None), Some(("h".into(), 1)));
    assert_eq!(split_authority("h", Some(80)), Some(("h".into(), 80)));
    assert_eq!(split_authority("[::1]", Some(80)), Some(("::1".into(), 80)));
    assert_eq!(split_authority("::1:80", None), None);
    assert_eq!(split_authority("h", None), None);
    assert_eq!(split_authority(":80", None), None);
    assert_eq!(split_authority("a b:80", None), None);
}

#[test]
fn transfer_encoding_overrides_content_length_and_framing_is_ours() {
    let r = resp(
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\nX: y\r\n\r\n",
        false,
    );
    assert_eq!(r.body, Framing::Chunked);
    assert!(!r.reusable, "a CL+TE response may be a split attempt");
    let mut out = Vec::new();
    r.encode_downstream(Relay::Framed, true, &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "HTTP/1.1 200 OK\r\nX: y\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
    );
    let mut out = Vec::new();
    r.encode_downstream(Relay::Dechunked, false, &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "HTTP/1.1 200 OK\r\nX: y\r\nConnection: close\r\n\r\n"
    );
    // A Connection token cannot strip the framing.
    let r = resp(
        "HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\n",
        false,
    );
    let mut out = Vec::new();
    r.encode_downstream(Relay::Framed, true, &mut out);
    assert!(String::from_utf8(out)
        .unwrap()
        .contains("Content-Length: 5\r\n"));
    // HEAD and 304 keep the resource's Content-Length, when it is valid; 204 has none.
    let encoded = |raw: &str, head: bool| {
        let mut out = Vec::new();
        resp(raw, head).encode_downstream(Relay::Framed, true, &mut out);
        String::from_utf8(out).unwrap()
    };
    let r = resp("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true);
    assert_eq!(r.body, Framing::None);
    assert!(
        encoded("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true)
            .contains("\r\nContent-Length: 5\r\n")
    );
    assert!(
        !encoded("HTTP/1.1 200 OK\r\nContent-Length: )\r\n\r\n", true).contains("Content-Length")
    );
    assert!(!encoded(
        "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
        false
    )
    .contains("Content-Length"));
    assert!(encoded(
        "HTTP/1.1 304 Not Modified\r\nContent-Length: 7, 7\r\n\r\n",
        false
    )
    .contains("\r\nContent-Length: 7\r\n"));
    // Content-Length: 0 is a framed empty body, not "no framing".
    let r = resp("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false);
    assert_eq!(r.body, Framing::Length(0));
}

#[test]
fn connection_may_not_name_framing_headers_and_upgrade_is_kept() {
    for h in ["content-length", "Transfer-Encoding", "host", "close, Host"] {
        let raw =
            format!("POST http://h/ HTTP/1.1\r\nConnection: {h}\r\nContent-Length: 1\r\n\r\n");
        assert!(matches!(req(&raw), Err(ProxyError::BadRequest(_))), "{h}");
    }
    let r =
        req("GET http://h/ HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n").unwrap();
    assert_eq!(r.upgrade.as_deref(), Some(&b"websocket"[..]));
    let mut out = Vec::new();
    r.encode_upstream(&mut out);
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.ends_with("Connection: upgrade\r\nUpgrade: websocket\r\n\r\n"),
        "{out}"
    );
    // Upgrade without Connection: upgrade is not a request to upgrade.
    let r = req("GET http://h/ HTTP/1.1\r\nUpgrade: websocket\r\n\r\n").unwrap();
    assert_eq!(r.upgrade, None);
}

#[test]
fn chunked_bodies_are_re_encoded_with_clean_framing() {
    let input = b"5;ext=\"x\"\r\nhello\r\n0\r\nA: 1\nB: 2\r\n\n";
    for step in 1..input.len() {
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        let mut pos = 0;
        while !d.is_done() {
            let end = (pos + step).min(input.len());
            let fed = d.feed(&input[pos..end]).unwrap();
            d.reencode(&input[pos..end], &fed, false, &mut out);
            pos += fed.consumed;
        }
        let out = String::from_utf8(out).unwrap();
        // Split chunks may come out as several; the payload and trailers are exact.
        let mut check = ChunkedDecoder::default();
        let fed = check.feed(out.as_bytes()).unwrap();
        assert!(fed.done && fed.consumed == out.len(), "{step}: {out:?}");
        assert!(!out.contains("ext"), "{out:?}");
        assert!(
            out.ends_with("0\r\nA: 1\r\nB: 2\r\n\r\n"),
            "{step}: {out:?}"
        );
    }
    for bad in [
        &b"0\r\n: no name\r\n\r\n"[..],
        b"0\r\n folded\r\n\r\n",
        b"0\r\nA: 1\rX\r\n\r\n",
    ] {
        assert!(decode_all(bad, 4).is_err(), "{bad:?}");
    }
}

#[test]
fn response_status_codes_are_three_digits() {
    for bad in [
        "HTTP/1.1 020 OK\r\n\r\n",
        "HTTP/1.1 099 X\r\n\r\n",
        "HTTP/1.1 600 X\r\n\r\n",
    ] {
        assert!(parse_response(bad.as_bytes(), false).is_err(), "{bad:?}");
    }
    assert!(parse_response(b"HTTP/1.1 599 X\r\n\r\n", false).is_ok());
}

#[test]
fn transfer_codings_must_be_tokens() {
    assert!(parse_response(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: ?chunked\r\n\r\n",
        false
    )
    .is_err());
    assert!(parse_response(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip;q=1, chunked\r\n\r\n",
        false
    )
    .is_ok());
    assert!(matches!(
        parse_request(b"POST http://h/ HTTP/1.1\r\nTransfer-Encoding: chunked\x0b\r\n\r\n"),
        Err(ProxyError::BadRequest(_))
    ));
}
