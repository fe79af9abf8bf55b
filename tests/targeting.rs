//! Targeting, exit pools, sticky sessions and chaining. Exits bind to 127.0.0.11-14 with
//! distinct tags and the origin answers with the caller's address, so every assertion sees
//! which exit carried the request.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::origin::{echo_server, http_origin, Origin};
use common::*;
use std::collections::BTreeSet;
use std::io::Write;

const GEO_EXITS: &str = r#"
[[exit]]
name = "la"
network = "residential"
kind = "direct"
source_ip = "127.0.0.11"
country = "us"
state = "ca"
city = "losangeles"

[[exit]]
name = "sf"
network = "residential"
kind = "direct"
source_ip = "127.0.0.12"
country = "us"
state = "ca"
city = "sanfrancisco"

[[exit]]
name = "nyc"
network = "residential"
kind = "direct"
source_ip = "127.0.0.13"
country = "us"
state = "ny"
city = "newyork"

[[exit]]
name = "munich"
network = "residential"
kind = "direct"
source_ip = "127.0.0.14"
country = "de"
state = "by"
city = "munich"
"#;

fn geo_gateway() -> Gateway {
    Gateway::start(&config("", GEO_EXITS))
}

/// GET /ip through the HTTP proxy as `user`: (status, body).
fn http_as(gw: SocketAddrLike, user: &str, o: &Origin) -> (u16, String) {
    let raw = format!(
        "GET {} HTTP/1.1\r\nProxy-Authorization: {}\r\n\r\n",
        o.url("/ip"),
        basic(user, "secret")
    );
    let (_, r) = http_raw(gw, raw.as_bytes());
    (r.code, r.text())
}

type SocketAddrLike = std::net::SocketAddr;

/// GET /ip through a SOCKS5 tunnel as `user`: Ok(ip) or Err(reply code / auth status).
fn socks_as(gw: SocketAddrLike, user: &str, o: &Origin) -> Result<String, SocksOutcome> {
    let (mut s, out) = socks5(gw, user, "secret", 1, &Target::Addr(o.addr));
    if out != SocksOutcome::Reply(0, out_bound(&out)) {
        return Err(out);
    }
    s.write_all(b"GET /ip HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    Ok(read_response(&mut s, false).text())
}

fn out_bound(o: &SocksOutcome) -> Option<std::net::SocketAddr> {
    match o {
        SocksOutcome::Reply(_, b) => *b,
        _ => None,
    }
}

fn ips(gw: SocketAddrLike, user: &str, o: &Origin, n: usize) -> BTreeSet<String> {
    (0..n)
        .map(|_| {
            let (code, body) = http_as(gw, user, o);
            assert_eq!(code, 200, "{user}: {body}");
            body
        })
        .collect()
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn rotation_covers_every_matching_exit() {
    let gw = geo_gateway();
    let o = http_origin();
    assert_eq!(
        ips(gw.addr(), "alice", &o, 24),
        set(&["127.0.0.11", "127.0.0.12", "127.0.0.13", "127.0.0.14"])
    );
    assert_eq!(
        ips(gw.addr(), "alice-country-us", &o, 18),
        set(&["127.0.0.11", "127.0.0.12", "127.0.0.13"])
    );
}

#[test]
fn country_state_city_and_city_ran() {
    let gw = geo_gateway();
    let o = http_origin();
    let rows: &[(&str, &[&str])] = &[
        ("alice-country-us-state-ca", &["127.0.0.11", "127.0.0.12"]),
        ("alice-country-US-state-NY", &["127.0.0.13"]),
        ("alice-country-us-state-ca-city-losangeles", &["127.0.0.11"]),
        ("alice-country-us-city-sanfrancisco", &["127.0.0.12"]),
        ("alice-country-de", &["127.0.0.14"]),
        ("alice-country-de-state-by-city-munich", &["127.0.0.14"]),
        (
            "alice-country-us-state-ca-city-ran",
            &["127.0.0.11", "127.0.0.12"],
        ),
        ("alice-country-us-state-ny-city-ran", &["127.0.0.13"]),
    ];
    for (user, want) in rows {
        assert_eq!(ips(gw.addr(), user, &o, 24), set(want), "{user}");
        // Same answer over SOCKS5.
        let ip = socks_as(gw.addr(), user, &o).unwrap();
        assert!(want.contains(&ip.as_str()), "{user} over socks5: {ip}");
    }
}

#[test]
fn targeting_errors_over_http_and_socks5() {
    let gw = geo_gateway();
    let o = http_origin();
    let rows: &[(&str, u16, &str, &str, u8)] = &[
        (
            "alice-country-zz",
            454,
            "Invalid Country Code",
            "invalid country code",
            2,
        ),
        (
            "alice-country-usa",
            454,
            "Invalid Country Code",
            "invalid country code",
            2,
        ),
        (
            "alice-country-us-state-zz",
            454,
            "Invalid State Code",
            "invalid state code",
            2,
        ),
        (
            "alice-state-ca",
            454,
            "Invalid State Code",
            "invalid state code",
            2,
        ),
        (
            "alice-country-de-state-ca",
            454,
            "Invalid State Code",
            "invalid state code",
            2,
        ),
        (
            "alice-country-us-city-paris",
            454,
            "Invalid City Code",
            "invalid city code",
            2,
        ),
        (
            "alice-country-us-city-ran",
            454,
            "Invalid City Code",
            "invalid city code",
            2,
        ),
        (
            "alice-country-us-state-tx-city-ran",
            454,
            "Invalid City Code",
            "invalid city code",
            2,
        ),
        (
            "alice-country-us-state-ca-city-newyork",
            454,
            "Invalid City Code",
            "invalid city code",
            2,
        ),
        (
            "alice-session-x-ttl-0",
            455,
            "Invalid TTL",
            "invalid ttl",
            2,
        ),
        ("alice-ttl-1441", 455, "Invalid TTL", "invalid ttl", 2),
        ("alice-ttl-ten", 455, "Invalid TTL", "invalid ttl", 2),
        // Valid targeting that no exit serves right now.
        (
            "alice-country-fr",
            503,
            "Service Unavailable",
            "service unavailable",
            1,
        ),
        (
            "alice-country-de-state-be",
            503,
            "Service Unavailable",
            "service unavailable",
            1,
        ),
    ];
    for (user, code, reason, body, socks) in rows {
        let raw = format!(
            "GET {} HTTP/1.1\r\nProxy-Authorization: {}\r\n\r\n",
            o.url("/ip"),
            basic(user, "secret")
        );
        let (_, r) = http_raw(gw.addr(), raw.as_bytes());
        assert_eq!(
            (r.code, r.reason.as_str(), r.text().as_str()),
            (*code, *reason, *body),
            "{user}"
        );
        let got = socks_as(gw.addr(), user, &o).unwrap_err();
        assert!(
            matches!(got, SocksOutcome::Reply(c, _) if c == *socks),
            "{user}: {got:?}"
        );
    }
    // Unknown key: 407 / RFC 1929 failure.
    assert_eq!(http_as(gw.addr(), "alice-country-us-region-x", &o).0, 407);
    assert_eq!(
        socks_as(gw.addr(), "alice-country-us-region-x", &o).unwrap_err(),
        SocksOutcome::Auth(1)
    );
    assert_eq!(o.connections(), 0);
}

#[test]
fn targeting_on_a_network_without_it_is_407_but_sessions_work() {
    let cfg = config(
        "",
        "[[exit]]\nnetwork = \"datacenter\"\nkind = \"direct\"\nsource_ip = \"127.0.0.12\"\n",
    )
    .replace(
        "network = \"residential\"\n\n[[network]]",
        "network = \"datacenter\"\n\n[[network]]",
    )
    .replace(
        "networks = [\"residential\"]",
        "networks = [\"datacenter\"]",
    );
    let gw = Gateway::start(&cfg);
    let o = http_origin();
    for user in ["alice-country-us", "alice-state-ca", "alice-city-x"] {
        assert_eq!(http_as(gw.addr(), user, &o).0, 407, "{user}");
        assert_eq!(
            socks_as(gw.addr(), user, &o).unwrap_err(),
            SocksOutcome::Auth(1),
            "{user}"
        );
    }
    assert_eq!(
        http_as(gw.addr(), "alice-session-a1-ttl-5", &o),
        (200, "127.0.0.12".into())
    );
    assert_eq!(
        socks_as(gw.addr(), "alice-session-a1", &o).unwrap(),
        "127.0.0.12"
    );
}

#[test]
fn sessions_stick_across_executors_and_protocols() {
    let gw = geo_gateway();
    let o = http_origin();
    for user in [
        "alice-session-s1",
        "alice-country-us-session-s2-ttl-30",
        "alice-ttl-5",
    ] {
        let mut seen = BTreeSet::new();
        for i in 0..24 {
            let ip = if i % 2 == 0 {
                let (code, ip) = http_as(gw.addr(), user, &o);
                assert_eq!(code, 200);
                ip
            } else {
                socks_as(gw.addr(), user, &o).unwrap()
            };
            seen.insert(ip);
        }
        assert_eq!(seen.len(), 1, "{user}: {seen:?}");
    }
    // Both executors served connections of the session (24 connections, 2 cores).
    let log = gw.stderr();
    for w in ["worker=0", "worker=1"] {
        assert!(
            log.lines()
                .any(|l| l.contains(w) && l.contains("account=\"alice\"")),
            "no access line from {w}"
        );
    }
    // Different sessions spread over the pool.
    let distinct: BTreeSet<String> = (0..16)
        .map(|i| http_as(gw.addr(), &format!("alice-session-x{i}"), &o).1)
        .collect();
    assert!(distinct.len() >= 2, "{distinct:?}");
}

/// A second tollgate used as an upstream proxy: account up/pw, one direct exit from `src`.
fn upstream_gateway(src: &str) -> Gateway {
    let cfg = config(
        "",
        &format!("[[exit]]\nnetwork = \"residential\"\nkind = \"direct\"\nsource_ip = \"{src}\"\n"),
    )
    .replace(
        "name = \"alice\"\npassword = \"secret\"",
        "name = \"up\"\npassword = \"pw\"",
    );
    Gateway::start(&cfg)
}

fn chained(kind: &str, up: &Gateway, creds: &str) -> String {
    format!(
        "[[exit]]\nnetwork = \"residential\"\nkind = \"{kind}\"\nurl = \"{kind}://{creds}@{}\"\n",
        up.addr()
    )
}

#[test]
fn chaining_through_socks5_and_http_upstreams() {
    let up = upstream_gateway("127.0.0.12");
    let o = http_origin();
    let echo = echo_server("127.0.0.1:0");
    for kind in ["socks5", "http"] {
        let gw = Gateway::start(&config("", &chained(kind, &up, "up:pw")));
        // Plain HTTP forwarding.
        assert_eq!(
            http_as(gw.addr(), "alice", &o),
            (200, "127.0.0.12".into()),
            "{kind}"
        );
        // SOCKS5 client.
        assert_eq!(
            socks_as(gw.addr(), "alice", &o).unwrap(),
            "127.0.0.12",
            "{kind}"
        );
        // CONNECT tunnel with a large echo.
        let mut s = connect(gw.addr());
        let req = format!(
            "CONNECT {echo} HTTP/1.1\r\nProxy-Authorization: {}\r\n\r\n",
            basic("alice", "secret")
        );
        s.write_all(req.as_bytes()).unwrap();
        assert_eq!(read_response(&mut s, true).code, 200);
        let data = pattern(2 << 20);
        assert!(echo_through(&mut s, &data) == data, "{kind}");
        assert!(
            gw.stderr().contains("exit=\"exit-1\""),
            "{kind}: exit not in the access log"
        );
    }
}

#[test]
fn upstream_failures_map_onto_our_table() {
    let up = upstream_gateway("127.0.0.12");
    let o = http_origin();
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    for kind in ["socks5", "http"] {
        // Wrong upstream credentials: the upstream's refusal is our 502, never our 407.
        let gw = Gateway::start(&config("", &chained(kind, &up, "up:wrong")));
        let raw = format!(
            "GET {} HTTP/1.1\r\nProxy-Authorization: {}\r\n\r\n",
            o.url("/ip"),
            basic("alice", "secret")
        );
        let (_, r) = http_raw(gw.addr(), raw.as_bytes());
        assert_eq!((r.code, r.text().as_str()), (502, "bad gateway"), "{kind}");
        let ps = r.header("proxy-status").unwrap();
        assert!(ps.contains("rejected our credentials"), "{kind}: {ps}");
        assert!(r.header("proxy-authenticate").is_none());
        assert_eq!(
            socks_as(gw.addr(), "alice", &o).unwrap_err(),
            SocksOutcome::Reply(1, Some("0.0.0.0:0".parse().unwrap()))
        );

        // The upstream reports the target refused: 502 connection_refused / SOCKS 0x05.
        let gw = Gateway::start(&config("", &chained(kind, &up, "up:pw")));
        let raw = format!(
            "GET http://{refused}/ HTTP/1.1\r\nProxy-Authorization: {}\r\n\r\n",
            basic("alice", "secret")
        );
        let (_, r) = http_raw(gw.addr(), raw.as_bytes());
        assert_eq!(r.code, 502, "{kind}");
        assert!(
            r.header("proxy-status")
                .unwrap()
                .contains("error=connection_refused"),
            "{kind}"
        );
        let (_, out) = socks5(gw.addr(), "alice", "secret", 1, &Target::Addr(refused));
        assert!(matches!(out, SocksOutcome::Reply(5, _)), "{kind}: {out:?}");
    }
}

#[test]
fn dead_exit_is_retried_around_and_benched() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let exits = format!(
        "[[exit]]\nname = \"dead\"\nnetwork = \"residential\"\nkind = \"socks5\"\nurl = \"socks5://{dead}\"\n\
         [[exit]]\nname = \"good\"\nnetwork = \"residential\"\nkind = \"direct\"\nsource_ip = \"127.0.0.11\"\n"
    );
    let gw = Gateway::start(&config("", &exits));
    let o = http_origin();
    for _ in 0..12 {
        assert_eq!(http_as(gw.addr(), "alice", &o), (200, "127.0.0.11".into()));
    }
    let log = gw.stderr();
    assert!(
        log.contains("exit benched after repeated failures"),
        "{log}"
    );
    assert!(log.contains("exit=\"dead\""));
}

#[test]
fn failed_sticky_exit_is_replaced_and_the_session_sticks_to_the_new_one() {
    let up_a = upstream_gateway("127.0.0.13");
    let up_b = upstream_gateway("127.0.0.14");
    let exits = format!(
        "{}{}",
        chained("socks5", &up_a, "up:pw"),
        chained("socks5", &up_b, "up:pw")
    );
    let gw = Gateway::start(&config("", &exits));
    let o = http_origin();
    let user = "alice-session-keep-ttl-60";
    let (code, first) = http_as(gw.addr(), user, &o);
    assert_eq!(code, 200);
    assert_eq!(http_as(gw.addr(), user, &o).1, first);
    // Stop the upstream the session is on.
    let (mut dead, other) = if first == "127.0.0.13" {
        (up_a, "127.0.0.14")
    } else {
        (up_b, "127.0.0.13")
    };
    dead.child.kill().unwrap();
    dead.child.wait().unwrap();
    for _ in 0..6 {
        assert_eq!(http_as(gw.addr(), user, &o), (200, other.to_string()));
        assert_eq!(socks_as(gw.addr(), user, &o).unwrap(), other);
    }
    assert!(gw.stderr().contains("sticky session moved"));
}
