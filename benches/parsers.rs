//! Parser costs on the handshake path: sniffing, HTTP request heads, SOCKS5 requests and
//! the username grammar. `cargo bench --bench parsers`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use tollgate::{auth::username, http::codec, sniff, socks5::codec as socks};

fn parsers(c: &mut Criterion) {
    let head = b"GET http://example.com/some/path?x=1 HTTP/1.1\r\nHost: example.com\r\n\
        User-Agent: curl/8.0\r\nAccept: */*\r\nProxy-Authorization: Basic YWxpY2U6c2VjcmV0\r\n\r\n";
    let connect = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\
        Proxy-Authorization: Basic YWxpY2U6c2VjcmV0\r\n\r\n";
    let socks_req = b"\x05\x01\x00\x03\x0bexample.com\x01\xbb";
    let user = "alice-country-us-state-ca-city-losangeles-session-abc123-ttl-30";

    c.bench_function("sniff", |b| b.iter(|| sniff::sniff(black_box(head))));
    c.bench_function("http_forward_head", |b| {
        b.iter(|| codec::parse_request(black_box(head)))
    });
    c.bench_function("http_connect_head", |b| {
        b.iter(|| codec::parse_request(black_box(connect)))
    });
    c.bench_function("socks5_request", |b| {
        b.iter(|| socks::parse_request(black_box(socks_req)))
    });
    c.bench_function("username_grammar", |b| {
        b.iter(|| username::parse(black_box(user)))
    });
}

criterion_group!(benches, parsers);
criterion_main!(benches);
