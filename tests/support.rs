//! The support trail: a refusal's request id is in the client's answer (`X-Request-Id`,
//! with a `Date`), on its access line, and found again through the API, by id and by
//! account and time; the records kept are bounded by count and by age.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::origin::echo_server;
use common::*;
use serde_json::Value;
use std::process::Command;

const TOKEN: &str = "support-token-0123456789";

fn start(support: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    let cfg = config("", &format!("{DIRECT_EXIT}\n[support]\n{support}\n")).replace(
        "[log]",
        "[admin]\nlisten = \"127.0.0.1:0\"\napi_token_file = \"token\"\n\n[log]",
    );
    Gateway::start_in(dir, &cfg)
}

/// GET on the API with curl: (status, JSON).
fn get(gw: &Gateway, path: &str) -> (u16, Value) {
    let out = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}", "-H"])
        .arg(format!("Authorization: Bearer {TOKEN}"))
        .arg(format!("http://{}{path}", gw.admin.unwrap()))
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (
        code.trim().parse().unwrap(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

/// The access line carrying `request_id="<id>"`.
fn access_line(gw: &Gateway, id: &str) -> String {
    eventually("the refusal's access line", || {
        gw.stderr()
            .lines()
            .find(|l| l.contains("access") && l.contains(&format!("request_id=\"{id}\"")))
            .map(str::to_owned)
    })
}

/// The record of `id`, once the writer has stored it.
fn record(gw: &Gateway, id: &str) -> Value {
    eventually("the error record", || {
        let (code, r) = get(gw, &format!("/v1/requests/{id}"));
        (code == 200).then_some(r)
    })
}

/// A 454 and a 502, as a customer reports them: the id and date in the answer, the same
/// id on the access line and in the record support finds.
#[test]
fn a_454_and_a_502_are_found_by_their_request_id() {
    let gw = start("");
    let echo = echo_server("127.0.0.1:0");
    let (_, r) = http_connect_as(gw.addr(), "alice-country-zz", "secret", &echo.to_string());
    assert_eq!(r.code, 454);
    let id = r.header("x-request-id").expect("X-Request-Id").to_owned();
    assert_eq!(id.len(), 16, "{id}");
    let date = r.header("date").expect("Date");
    assert!(date.ends_with(" GMT"), "{date}");
    let line = access_line(&gw, &id);
    assert!(
        line.contains("code=454") && line.contains("account=\"alice\""),
        "{line}"
    );
    let rec = record(&gw, &id);
    assert_eq!(rec["code"], 454, "{rec}");
    assert_eq!(rec["account"], "alice");
    assert_eq!(rec["error"], "invalid country");
    assert_eq!(rec["body"], "invalid country code", "what the client read");
    assert_eq!(rec["proto"], "http");

    // Nothing listens on this port: 502.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (_, r) = http_connect_as(gw.addr(), "alice", "secret", &closed.to_string());
    assert_eq!(r.code, 502);
    let id502 = r.header("x-request-id").unwrap().to_owned();
    assert_ne!(id502, id);
    assert!(access_line(&gw, &id502).contains("code=502"));
    let rec = record(&gw, &id502);
    assert_eq!(rec["code"], 502);
    assert_eq!(rec["target"], closed.to_string());

    // A SOCKS5 refusal has an id on its access line, and is listed under the account.
    let (_, out) = socks5(
        gw.addr(),
        "alice-country-zz",
        "secret",
        1,
        &Target::Addr(echo),
    );
    assert!(matches!(out, SocksOutcome::Reply(2, _)), "{out:?}");
    let socks_line = eventually("the SOCKS5 refusal's access line", || {
        gw.stderr()
            .lines()
            .find(|l| l.contains("proto=\"socks5\"") && l.contains("code=454"))
            .map(str::to_owned)
    });
    let socks_id = socks_line
        .split("request_id=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_owned();
    assert_eq!(record(&gw, &socks_id)["proto"], "socks5");
    let (code, list) = get(&gw, "/v1/accounts/alice/errors?since=2020-01-01T00:00:00Z");
    assert_eq!(code, 200);
    let ids: Vec<&str> = list["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [socks_id.as_str(), id502.as_str(), id.as_str()],
        "newest first"
    );
    // A range that ends before them finds none.
    let (_, none) = get(
        &gw,
        "/v1/accounts/alice/errors?since=2020-01-01T00:00:00Z&until=2020-01-02T00:00:00Z",
    );
    assert_eq!(none["errors"].as_array().unwrap().len(), 0);
    assert_eq!(get(&gw, "/v1/requests/0000000000000000").0, 404);
    assert_eq!(get(&gw, "/v1/accounts/alice/errors?since=yesterday").0, 400);
}

/// At most `errors_kept` records, none older than `errors_for`.
#[test]
fn the_records_kept_are_bounded_by_count_and_age() {
    let gw = start("errors_kept = 3\nerrors_for = \"4s\"");
    let echo = echo_server("127.0.0.1:0");
    let mut ids = Vec::new();
    for _ in 0..6 {
        let (_, r) = http_connect_as(gw.addr(), "alice-country-zz", "secret", &echo.to_string());
        let id = r.header("x-request-id").unwrap().to_owned();
        // Kept in the order they reach the writer: each is stored before the next is made
        // (two requests answered on two cores could otherwise reach it the other way round).
        record(&gw, &id);
        ids.push(id);
    }
    eventually("only the last 3 kept", || {
        let found: Vec<bool> = ids
            .iter()
            .map(|id| get(&gw, &format!("/v1/requests/{id}")).0 == 200)
            .collect();
        (found == [false, false, false, true, true, true]).then_some(())
    });
    eventually("none older than 4 s", || {
        (get(&gw, &format!("/v1/requests/{}", ids[5])).0 == 404).then_some(())
    });
}

/// On a cluster the records are in Redis: a refusal answered by node b is found through
/// node a's API.
#[test]
fn a_refusal_on_one_node_is_found_through_another() {
    let redis = common::redis::Redis::start();
    let echo = echo_server("127.0.0.1:0");
    let node = |name: &str| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), TOKEN).unwrap();
        let cfg = config("", DIRECT_EXIT).replace(
            "[log]",
            "[admin]\nlisten = \"127.0.0.1:0\"\napi_token_file = \"token\"\n\n[log]",
        ) + &format!(
            "\n[cluster]\nredis = \"{}\"\nnode = \"{name}\"\nnode_ttl = \"2s\"\nredis_timeout = \"500ms\"\n",
            redis.url()
        );
        Gateway::start_in(dir, &cfg)
    };
    let (a, b) = (node("a"), node("b"));
    let (_, r) = http_connect_as(b.addr(), "alice-country-zz", "secret", &echo.to_string());
    assert_eq!(r.code, 454);
    let id = r.header("x-request-id").unwrap().to_owned();
    let rec = record(&a, &id);
    assert_eq!(
        (rec["code"].as_u64(), rec["account"].as_str()),
        (Some(454), Some("alice"))
    );
    let (_, list) = get(&a, "/v1/accounts/alice/errors");
    assert_eq!(list["errors"][0]["request_id"], id.as_str());
    // The dashboard's exits page lists both nodes with their heartbeats.
    let out = Command::new("curl")
        .args(["-sS", "-H"])
        .arg(format!("Authorization: Bearer {TOKEN}"))
        .arg(format!("http://{}/exits", a.admin.unwrap()))
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&out.stdout).to_string();
    let nodes = page
        .split("id=\"nodes\"")
        .nth(1)
        .unwrap_or_else(|| panic!("{page}"));
    assert!(
        nodes.contains("<td>a.") && nodes.contains("<td>b."),
        "{nodes}"
    );
    // Bytes relayed by node b are in the hourly chart node a draws (buckets in Redis).
    let (mut t, r) = http_connect_as(b.addr(), "alice", "secret", &echo.to_string());
    assert_eq!(r.code, 200);
    assert_eq!(echo_through(&mut t, &[3u8; 20_000]).len(), 20_000);
    eventually("node b's bytes in node a's chart", || {
        let out = Command::new("curl")
            .args(["-sS", "-H"])
            .arg(format!("Authorization: Bearer {TOKEN}"))
            .arg(format!("http://{}/accounts/alice", a.admin.unwrap()))
            .output()
            .ok()?;
        let page = String::from_utf8_lossy(&out.stdout).to_string();
        page.split("class=\"bar\"")
            .skip(1)
            .filter_map(|bar| {
                bar.split("data-bytes=\"")
                    .nth(1)?
                    .split('"')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .any(|b| b >= 40_000)
            .then_some(())
    });
}
