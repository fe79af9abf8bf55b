//! The accounts API, driven with curl against the running binary: accounts and plans
//! created, changed and deleted while clients connect over both protocols; the errors a
//! billing system can branch on; what survives a restart; the CLI on the same store.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::origin::echo_server;
use common::*;
use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Stdio};

const TOKEN: &str = "tok-0123456789abcdef-test";

fn api_config(rest: &str) -> String {
    config("", &format!("{DIRECT_EXIT}{rest}")).replace(
        "[log]",
        "[admin]\nlisten = \"127.0.0.1:0\"\napi_token_file = \"token\"\n\n[log]",
    )
}

/// A gateway whose API takes [`TOKEN`], started in `dir`.
fn start_in(dir: tempfile::TempDir, rest: &str) -> Gateway {
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    Gateway::start_in(dir, &api_config(rest))
}

fn start(rest: &str) -> Gateway {
    start_in(tempfile::tempdir().unwrap(), rest)
}

/// curl against the admin listener: (status, JSON body or Null). `token` None: no header.
fn curl(
    gw: &Gateway,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> (u16, Value) {
    let url = format!("http://{}{path}", gw.admin.unwrap());
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
        "-H",
        "X-Actor: billing-test",
    ]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    if body.is_some() {
        cmd.args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            "@-",
        ]);
    }
    cmd.arg(&url).stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = cmd.spawn().expect("curl");
    if let Some(b) = body {
        child.stdin.take().unwrap().write_all(b.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (
        code.trim().parse().unwrap(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

fn api(gw: &Gateway, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let body = body.map(|b| b.to_string());
    curl(gw, method, path, body.as_deref(), Some(TOKEN))
}

fn socks_ok(
    gw: &Gateway,
    user: &str,
    pass: &str,
    target: std::net::SocketAddr,
) -> Result<std::net::TcpStream, SocksOutcome> {
    match socks5(gw.addr(), user, pass, 1, &Target::Addr(target)) {
        (s, SocksOutcome::Reply(0, _)) => Ok(s),
        (_, other) => Err(other),
    }
}

/// One round trip through an echo tunnel that stays open.
fn ping(s: &mut std::net::TcpStream, data: &[u8]) -> Vec<u8> {
    use std::io::Read;
    s.write_all(data).unwrap();
    let mut got = vec![0u8; data.len()];
    s.read_exact(&mut got).unwrap();
    got
}

fn create_pro(gw: &Gateway) {
    let (code, plan) = api(
        gw,
        "PUT",
        "/v1/plans/pro",
        Some(json!({"bandwidth": "1GiB", "threads": 10, "period": "month", "speed": "10MiB/s"})),
    );
    assert_eq!(code, 201, "{plan}");
    assert_eq!(plan["bandwidth"], 1u64 << 30);
    assert_eq!(plan["speed"], 10u64 << 20);
}

/// An account created through the API is served at once over SOCKS5 and HTTP CONNECT;
/// reading it back never shows a password or a hash; a second PUT replaces it (200).
#[test]
fn an_api_account_is_served_over_both_protocols_at_once() {
    let gw = start("");
    let echo = echo_server("127.0.0.1:0");
    create_pro(&gw);
    let body = json!({"password": "pw-one", "plan": "pro", "networks": ["residential"]});
    let (code, acc) = api(&gw, "PUT", "/v1/accounts/bob", Some(body.clone()));
    assert_eq!(code, 201, "{acc}");
    // The first connection after the 201: nothing to wait for.
    let mut s = socks_ok(&gw, "bob", "pw-one", echo).expect("SOCKS5 as bob");
    assert_eq!(echo_through(&mut s, b"hello"), b"hello");
    let (mut t, r) = http_connect_as(gw.addr(), "bob", "pw-one", &echo.to_string());
    assert_eq!(r.code, 200);
    assert_eq!(echo_through(&mut t, b"again"), b"again");
    // Targeting modifiers work on API accounts like on the file's.
    assert!(socks_ok(&gw, "bob-session-abc1-ttl-5", "pw-one", echo).is_ok());

    let (code, got) = api(&gw, "GET", "/v1/accounts/bob", None);
    assert_eq!(code, 200);
    assert_eq!(got["plan"], "pro");
    assert_eq!(got["networks"], json!(["residential"]));
    assert_eq!(got["source"], "api");
    let text = got.to_string();
    assert!(
        !text.contains("pw-one") && !text.contains("argon2"),
        "{text}"
    );

    let (code, _) = api(&gw, "PUT", "/v1/accounts/bob", Some(body));
    assert_eq!(code, 200, "a second PUT replaces");
    // The file's account is listed, read-only, beside the API's.
    let (code, page) = api(&gw, "GET", "/v1/accounts?limit=10", None);
    assert_eq!(code, 200);
    let names: Vec<&str> = page["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice", "bob"]);
    assert_eq!(page["accounts"][0]["read_only"], true);
    assert_eq!(page["next"], Value::Null);
    // The audit trail: who and what, never the password.
    let log = gw.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("account.create"))
        .expect("audit line");
    assert!(
        line.contains("billing-test@127.0.0.1") && line.contains("bob"),
        "{line}"
    );
    assert!(line.contains("password,plan,networks"), "{line}");
    assert!(!log.contains("pw-one"), "a password reached the log");
}

/// A billing system that hashes passwords itself sends `password_hash` (an argon2 PHC
/// string): stored as given, the password it hashes logs in.
#[test]
fn an_account_with_a_password_hash_made_elsewhere() {
    let gw = start("");
    let echo = echo_server("127.0.0.1:0");
    // argon2id of "hash-pw-1".
    let phc = "$argon2id$v=19$m=19456,t=2,p=1$7Hmh+VFRjwTJ4aoUI0B0uA$yHHBXLC2IQuYEoZ1wi8PxBwiz4mzyuBqMaIMRJSWmVI";
    let body = json!({"password_hash": phc, "plan": "basic", "networks": ["residential"]});
    assert_eq!(api(&gw, "PUT", "/v1/accounts/lena", Some(body)).0, 201);
    assert!(socks_ok(&gw, "lena", "hash-pw-1", echo).is_ok());
    assert!(matches!(
        socks_ok(&gw, "lena", "other", echo),
        Err(SocksOutcome::Auth(1))
    ));
    let (_, got) = api(&gw, "GET", "/v1/accounts/lena", None);
    assert!(!got.to_string().contains("argon2"), "{got}");
    for bad in [
        json!({"password_hash": "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA", "plan": "basic", "networks": ["residential"]}),
        json!({"password_hash": phc, "password": "x", "plan": "basic", "networks": ["residential"]}),
    ] {
        let (code, e) = api(&gw, "PUT", "/v1/accounts/lena", Some(bad));
        assert_eq!(
            (code, e["field"].as_str()),
            (400, Some("password_hash")),
            "{e}"
        );
    }
}

/// A new password works at once and the old one stops (each core's cache of checked
/// argon2 hashes follows the hash); disabled and deleted accounts get 407 on their next
/// connection, and their live tunnels are cut when asked.
#[test]
fn password_change_disable_and_delete_take_effect_at_once() {
    let gw = start("");
    let echo = echo_server("127.0.0.1:0");
    create_pro(&gw);
    let body = json!({"password": "old-pass", "plan": "pro", "networks": ["residential"]});
    assert_eq!(api(&gw, "PUT", "/v1/accounts/carol", Some(body)).0, 201);
    // Verified (and cached) on both cores.
    for _ in 0..4 {
        assert!(socks_ok(&gw, "carol", "old-pass", echo).is_ok());
    }
    let (code, _) = api(
        &gw,
        "PATCH",
        "/v1/accounts/carol",
        Some(json!({"password": "new-pass"})),
    );
    assert_eq!(code, 200);
    for _ in 0..4 {
        assert!(matches!(
            socks_ok(&gw, "carol", "old-pass", echo),
            Err(SocksOutcome::Auth(1))
        ));
        assert!(socks_ok(&gw, "carol", "new-pass", echo).is_ok());
    }
    let (_, r) = http_connect_as(gw.addr(), "carol", "old-pass", &echo.to_string());
    assert_eq!(r.code, 407);

    // Disabled: 407 with a detail saying so, live tunnels cut on request.
    let mut live = socks_ok(&gw, "carol", "new-pass", echo).unwrap();
    assert_eq!(ping(&mut live, b"x"), b"x");
    let (code, _) = api(
        &gw,
        "PATCH",
        "/v1/accounts/carol",
        Some(json!({"enabled": false})),
    );
    assert_eq!(code, 200);
    let (_, r) = http_connect_as(gw.addr(), "carol", "new-pass", &echo.to_string());
    assert_eq!(r.code, 407);
    assert!(
        r.header("proxy-status")
            .unwrap()
            .contains("account disabled"),
        "{r:?}"
    );
    let (code, d) = api(&gw, "POST", "/v1/accounts/carol/disconnect", None);
    assert_eq!(code, 202, "{d}");
    assert_eq!(d["threads_active"], 1);
    assert!(closed_by_peer(&mut live), "the live tunnel was cut");
    eventually("the cut tunnel's access line", || {
        gw.stderr()
            .lines()
            .any(|l| l.contains("account=\"carol\"") && l.contains("end=\"disconnect\""))
            .then_some(())
    });

    // Enabled again, then deleted with a tunnel open: 407 next, the tunnel cut on request.
    assert_eq!(
        api(
            &gw,
            "PATCH",
            "/v1/accounts/carol",
            Some(json!({"enabled": true}))
        )
        .0,
        200
    );
    let mut live = socks_ok(&gw, "carol", "new-pass", echo).unwrap();
    assert_eq!(ping(&mut live, b"y"), b"y");
    assert_eq!(api(&gw, "DELETE", "/v1/accounts/carol", None).0, 204);
    assert!(matches!(
        socks_ok(&gw, "carol", "new-pass", echo),
        Err(SocksOutcome::Auth(1))
    ));
    assert_eq!(
        echo_through(&mut live, b"still"),
        b"still",
        "not cut until asked"
    );
    assert_eq!(
        api(&gw, "POST", "/v1/accounts/carol/disconnect", None).0,
        202
    );
    assert!(closed_by_peer(&mut live));
    assert_eq!(api(&gw, "GET", "/v1/accounts/carol", None).0, 404);
    assert_eq!(api(&gw, "DELETE", "/v1/accounts/carol", None).0, 404);
}

/// What a billing system can branch on: 401 without the token (or with another), 400
/// naming the field, 404 for unknown names, 409 for the file's accounts and plans and for
/// a plan in use, 413 for a body over the limit.
#[test]
fn api_errors_name_what_is_wrong() {
    let gw = start("");
    let (code, e) = curl(&gw, "GET", "/v1/accounts", None, None);
    assert_eq!(code, 401, "{e}");
    assert_eq!(
        curl(
            &gw,
            "GET",
            "/v1/accounts",
            None,
            Some("tok-0123456789abcdef-tesT")
        )
        .0,
        401
    );
    assert_eq!(curl(&gw, "PUT", "/v1/plans/x", Some("{}"), None).0, 401);
    // /metrics and /healthz stay open.
    assert_eq!(gw.admin_get("/healthz").0, 200);

    let cases: &[(&str, &str, &str)] = &[
        (
            "/v1/plans/p",
            r#"{"bandwidth":"1GiB","threads":"x"}"#,
            "threads",
        ),
        (
            "/v1/plans/p",
            r#"{"bandwidth":"1Gx","threads":1}"#,
            "bandwidth",
        ),
        (
            "/v1/plans/p",
            r#"{"bandwith":"1GiB","threads":1}"#,
            "bandwith",
        ),
        (
            "/v1/plans/p",
            r#"{"bandwidth":"1GiB","threads":0}"#,
            "threads",
        ),
        (
            "/v1/plans/p",
            r#"{"bandwidth":"1GiB","threads":1,"period":"year"}"#,
            "period",
        ),
        (
            "/v1/plans/p",
            r#"{"bandwidth":"1GiB","threads":1,"speed":"fast"}"#,
            "speed",
        ),
        ("/v1/plans/p", r#"{"threads":1}"#, "bandwidth"),
        ("/v1/plans/p", "not json", "body"),
        (
            "/v1/accounts/dave",
            r#"{"plan":"basic","networks":["residential"]}"#,
            "password",
        ),
        (
            "/v1/accounts/dave",
            r#"{"password":"p","plan":"nope","networks":["residential"]}"#,
            "plan",
        ),
        (
            "/v1/accounts/dave",
            r#"{"password":"p","plan":"basic","networks":["mars"]}"#,
            "networks",
        ),
        (
            "/v1/accounts/dave",
            r#"{"password":"p","plan":"basic","networks":[]}"#,
            "networks",
        ),
        (
            "/v1/accounts/dave",
            r#"{"password":"p","plan":"basic","networks":["residential"],"expires":"soon"}"#,
            "expires",
        ),
        (
            "/v1/accounts/dave",
            r#"{"password":"p","plan":"basic","networks":["residential"],"allow_ips":["300.1.1.1"]}"#,
            "allow_ips",
        ),
        (
            "/v1/accounts/dave-country-us",
            r#"{"password":"p","plan":"basic","networks":["residential"]}"#,
            "name",
        ),
    ];
    for (path, body, field) in cases {
        let (code, e) = curl(&gw, "PUT", path, Some(body), Some(TOKEN));
        assert_eq!(code, 400, "{path} {body}: {e}");
        assert_eq!(e["field"], *field, "{path} {body}: {e}");
        assert!(e["error"].as_str().unwrap().starts_with(field), "{e}");
    }
    assert_eq!(api(&gw, "GET", "/v1/accounts/nobody", None).0, 404);
    assert_eq!(api(&gw, "GET", "/v1/accounts/nobody/usage", None).0, 404);
    assert_eq!(
        api(
            &gw,
            "PATCH",
            "/v1/accounts/nobody",
            Some(json!({"enabled": false}))
        )
        .0,
        404
    );
    assert_eq!(
        api(
            &gw,
            "POST",
            "/v1/accounts/nobody/top-up",
            Some(json!({"bytes": "1GiB"}))
        )
        .0,
        404
    );
    assert_eq!(api(&gw, "GET", "/v1/plans/nope", None).0, 404);
    let (code, e) = api(
        &gw,
        "PATCH",
        "/v1/accounts/alice",
        Some(json!({"enabled": false})),
    );
    assert_eq!(code, 409, "{e}");
    assert_eq!(api(&gw, "DELETE", "/v1/accounts/alice", None).0, 409);
    assert_eq!(
        api(
            &gw,
            "PUT",
            "/v1/plans/basic",
            Some(json!({"bandwidth": 1, "threads": 1}))
        )
        .0,
        409
    );
    create_pro(&gw);
    let body = json!({"password": "p", "plan": "pro", "networks": ["residential"]});
    assert_eq!(api(&gw, "PUT", "/v1/accounts/erin", Some(body)).0, 201);
    let (code, e) = api(&gw, "DELETE", "/v1/plans/pro", None);
    assert_eq!(code, 409, "{e}");
    let big = format!(
        r#"{{"bandwidth":"1GiB","threads":1,"period":"{}"}}"#,
        "x".repeat(100_000)
    );
    let (code, e) = curl(&gw, "PUT", "/v1/plans/big", Some(&big), Some(TOKEN));
    assert_eq!(code, 413, "{e}");
    // Nothing of the refused writes was stored.
    let (_, plans) = api(&gw, "GET", "/v1/plans", None);
    let names: Vec<&str> = plans["plans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["basic", "pro"]);
}

/// Without `api_token_file` the API is off (404 saying how to turn it on), and with
/// `protect_metrics` the token is asked for on /metrics too.
#[test]
fn the_api_is_off_without_a_token_and_metrics_can_be_protected() {
    let gw = Gateway::start(
        &config("", DIRECT_EXIT).replace("[log]", "[admin]\nlisten = \"127.0.0.1:0\"\n\n[log]"),
    );
    let (code, e) = curl(&gw, "GET", "/v1/accounts", None, Some(TOKEN));
    assert_eq!(code, 404);
    assert!(
        e["error"].as_str().unwrap().contains("api_token_file"),
        "{e}"
    );
    drop(gw);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    let cfg = api_config("").replace("api_token_file", "protect_metrics = true\napi_token_file");
    let gw = Gateway::start_in(dir, &cfg);
    assert_eq!(gw.admin_get("/metrics").0, 401);
    assert_eq!(curl(&gw, "GET", "/metrics", None, Some(TOKEN)).0, 200);
}

/// API accounts, plans, usage and credit survive a restart.
#[test]
fn api_accounts_survive_a_restart() {
    let gw = start("");
    let echo = echo_server("127.0.0.1:0");
    create_pro(&gw);
    let body = json!({"password": "pw", "plan": "pro", "networks": ["residential"]});
    assert_eq!(api(&gw, "PUT", "/v1/accounts/frank", Some(body)).0, 201);
    let mut s = socks_ok(&gw, "frank", "pw", echo).unwrap();
    assert_eq!(echo_through(&mut s, &[7u8; 10_000]).len(), 10_000);
    drop(s);
    let (code, u) = api(
        &gw,
        "POST",
        "/v1/accounts/frank/top-up",
        Some(json!({"bytes": "5GiB"})),
    );
    assert_eq!(code, 200, "{u}");
    assert_eq!(u["credit"], 5u64 << 30);
    let used = eventually("frank's bytes counted", || {
        let (_, u) = api(&gw, "GET", "/v1/accounts/frank/usage", None);
        let used = u["used"].as_u64().unwrap();
        (used >= 20_000).then_some(used)
    });
    let dir = gw.into_dir();
    let gw = start_in(dir, "");
    let (code, u) = api(&gw, "GET", "/v1/accounts/frank/usage", None);
    assert_eq!(code, 200);
    assert!(u["used"].as_u64().unwrap() >= used, "{u}");
    assert_eq!(u["credit"], 5u64 << 30);
    assert_eq!(u["limit"], (1u64 << 30) + (5u64 << 30));
    assert_eq!(u["threads_limit"], 10);
    assert_eq!(u["period"]["kind"], "month");
    assert!(socks_ok(&gw, "frank", "pw", echo).is_ok());
    // Reset: usage and credit back to 0.
    let (code, u) = api(&gw, "POST", "/v1/accounts/frank/reset", None);
    assert_eq!(code, 200);
    assert_eq!(
        (u["used"].as_u64(), u["credit"].as_u64()),
        (Some(0), Some(0))
    );
}

/// A plan change applies from the next admission: threads lowered to 1 refuse the
/// second connection with 453.
#[test]
fn a_plan_change_applies_from_the_next_admission() {
    let gw = start("");
    let echo = echo_server("127.0.0.1:0");
    create_pro(&gw);
    let body = json!({"password": "pw", "plan": "pro", "networks": ["residential"]});
    assert_eq!(api(&gw, "PUT", "/v1/accounts/gina", Some(body)).0, 201);
    let _a = socks_ok(&gw, "gina", "pw", echo).unwrap();
    let _b = socks_ok(&gw, "gina", "pw", echo).unwrap();
    assert_eq!(
        api(&gw, "PATCH", "/v1/plans/pro", Some(json!({"threads": 2}))).0,
        200
    );
    let (_, r) = http_connect_as(gw.addr(), "gina", "pw", &echo.to_string());
    assert_eq!(r.code, 453);
    let (code, u) = api(&gw, "GET", "/v1/accounts/gina/usage", None);
    assert_eq!(code, 200);
    assert_eq!(
        (u["threads_active"].as_u64(), u["threads_limit"].as_u64()),
        (Some(2), Some(2))
    );
    // Moved to the file's plan (1000 threads): served again.
    assert_eq!(
        api(
            &gw,
            "PATCH",
            "/v1/accounts/gina",
            Some(json!({"plan": "basic"}))
        )
        .0,
        200
    );
    assert!(socks_ok(&gw, "gina", "pw", echo).is_ok());
}

/// An account past its `expires` gets 407 saying the account expired; an allow-listed
/// address set through the API connects without credentials.
#[test]
fn expiry_and_allow_ips_through_the_api() {
    let gw = start("");
    let echo = echo_server("127.0.0.1:0");
    let body = json!({"password": "pw", "plan": "basic", "networks": ["residential"], "expires": "2020-01-01T00:00:00Z"});
    assert_eq!(api(&gw, "PUT", "/v1/accounts/hank", Some(body)).0, 201);
    let (_, r) = http_connect_as(gw.addr(), "hank", "pw", &echo.to_string());
    assert_eq!(r.code, 407);
    assert!(
        r.header("proxy-status")
            .unwrap()
            .contains("account expired"),
        "{r:?}"
    );
    assert_eq!(
        api(
            &gw,
            "PATCH",
            "/v1/accounts/hank",
            Some(json!({"expires": null, "allow_ips": ["127.0.0.77"]}))
        )
        .0,
        200
    );
    let (_, r) = http_connect_as(gw.addr(), "hank", "pw", &echo.to_string());
    assert_eq!(r.code, 200);
    let mut s = connect_from("127.0.0.77", gw.addr());
    write!(s, "CONNECT {echo} HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut s, true).code, 200);
    // Another account may not take that address.
    let body = json!({"password": "pw", "plan": "basic", "networks": ["residential"], "allow_ips": ["127.0.0.77/32"]});
    let (code, e) = api(&gw, "PUT", "/v1/accounts/ivan", Some(body));
    assert_eq!((code, e["field"].as_str()), (400, Some("allow_ips")), "{e}");
}

/// `DELETE /v1/accounts/{name}/sessions/{id}` forgets a sticky session (404 once gone).
#[test]
fn a_sticky_session_is_released() {
    let gw = start("");
    let echo = echo_server("127.0.0.1:0");
    assert!(socks_ok(&gw, "alice-session-s1-ttl-10", "secret", echo).is_ok());
    assert_eq!(
        api(&gw, "DELETE", "/v1/accounts/alice/sessions/s1", None).0,
        204
    );
    assert_eq!(
        api(&gw, "DELETE", "/v1/accounts/alice/sessions/s1", None).0,
        404
    );
    assert_eq!(
        api(&gw, "DELETE", "/v1/accounts/nobody/sessions/s1", None).0,
        404
    );
}

/// `tollgate account …` and `tollgate plan …` write the same store: a running gateway
/// serves what they create and refuses what they delete, within its change-log poll.
#[test]
fn the_cli_manages_the_same_store_as_the_api() {
    let gw = start("");
    let echo = echo_server("127.0.0.1:0");
    let cli = |args: &[&str], stdin: &str| {
        let mut child = Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(gw.config_path())
            .current_dir(gw.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = cli(
        &[
            "plan",
            "put",
            "small",
            "--bandwidth",
            "1MiB",
            "--threads",
            "2",
        ],
        "",
    );
    assert!(ok, "{out}");
    let (ok, out) = cli(
        &[
            "account",
            "put",
            "jill",
            "--plan",
            "small",
            "--network",
            "residential",
        ],
        "cli-pass\n",
    );
    assert!(ok, "{out}");
    eventually("jill served", || {
        socks_ok(&gw, "jill", "cli-pass", echo).ok()
    });
    let (_, got) = api(&gw, "GET", "/v1/accounts/jill", None);
    assert_eq!(got["plan"], "small");
    let (ok, out) = cli(&["account", "list"], "");
    assert!(ok && out.contains("jill") && out.contains("alice"), "{out}");
    let (ok, out) = cli(
        &[
            "account",
            "put",
            "alice",
            "--plan",
            "small",
            "--network",
            "residential",
        ],
        "x\n",
    );
    assert!(!ok && out.contains("read-only"), "{out}");
    let (ok, out) = cli(&["plan", "delete", "small"], "");
    assert!(!ok && out.contains("used by 1"), "{out}");
    let (ok, out) = cli(&["account", "delete", "jill"], "");
    assert!(ok, "{out}");
    eventually("jill refused", || {
        matches!(
            socks_ok(&gw, "jill", "cli-pass", echo),
            Err(SocksOutcome::Auth(1))
        )
        .then_some(())
    });
}

/// A node of a two-node cluster on `redis`, its API on.
fn cluster_node(redis: &common::redis::Redis, node: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    let cfg = format!(
        "{}\n[cluster]\nredis = \"{}\"\nnode = \"{node}\"\nnode_ttl = \"2s\"\nredis_timeout = \"500ms\"\n",
        api_config(""),
        redis.url()
    );
    Gateway::start_in(dir, &cfg)
}

/// On a cluster the API's accounts live in Redis: created through node a, served by node b
/// within a second; a password change, a disconnect and a delete through one node apply on
/// the other; a node started later finds them all.
#[test]
fn two_nodes_share_the_api_accounts_through_redis() {
    let redis = common::redis::Redis::start();
    let echo = echo_server("127.0.0.1:0");
    let a = cluster_node(&redis, "a");
    let b = cluster_node(&redis, "b");
    let plan = json!({"bandwidth": "1GiB", "threads": 10, "speed": "10MiB/s"});
    assert_eq!(api(&a, "PUT", "/v1/plans/pro", Some(plan)).0, 201);
    let body = json!({"password": "pw-1", "plan": "pro", "networks": ["residential"]});
    let (code, e) = api(&a, "PUT", "/v1/accounts/kate", Some(body));
    assert_eq!(code, 201, "{e}");
    let t0 = std::time::Instant::now();
    eventually("kate known to node b", || {
        (api(&b, "GET", "/v1/accounts/kate", None).0 == 200).then_some(())
    });
    let took = t0.elapsed();
    println!("created on node a, known to node b after {took:?}");
    assert!(took < std::time::Duration::from_secs(1), "{took:?}");
    assert!(socks_ok(&b, "kate", "pw-1", echo).is_ok());
    let (code, got) = api(&b, "GET", "/v1/accounts/kate", None);
    assert_eq!((code, got["plan"].as_str()), (200, Some("pro")));

    // A new password through b: a stops taking the old one.
    assert_eq!(
        api(
            &b,
            "PATCH",
            "/v1/accounts/kate",
            Some(json!({"password": "pw-2"}))
        )
        .0,
        200
    );
    eventually("the old password refused on node a", || {
        matches!(
            socks_ok(&a, "kate", "pw-1", echo),
            Err(SocksOutcome::Auth(1))
        )
        .then_some(())
    });
    assert!(socks_ok(&a, "kate", "pw-2", echo).is_ok());

    // A tunnel on node b, cut through node a's API.
    let mut live = socks_ok(&b, "kate", "pw-2", echo).unwrap();
    assert_eq!(ping(&mut live, b"p"), b"p");
    assert_eq!(api(&a, "POST", "/v1/accounts/kate/disconnect", None).0, 202);
    assert!(closed_by_peer(&mut live), "node b cut kate's tunnel");

    // A node that starts now reads them from Redis.
    let c = cluster_node(&redis, "c");
    assert!(socks_ok(&c, "kate", "pw-2", echo).is_ok());
    let (_, plans) = api(&c, "GET", "/v1/plans/pro", None);
    assert_eq!(plans["threads"], 10);

    // Deleted through c: refused on a and b.
    assert_eq!(api(&c, "DELETE", "/v1/accounts/kate", None).0, 204);
    for gw in [&a, &b] {
        eventually("kate refused", || {
            matches!(
                socks_ok(gw, "kate", "pw-2", echo),
                Err(SocksOutcome::Auth(1))
            )
            .then_some(())
        });
    }
    assert_eq!(api(&b, "GET", "/v1/accounts/kate", None).0, 404);
}

/// On a cluster, as on one node, a deleted account's usage goes with it: an account made
/// again under the same name starts from nothing, with no credit and no history.
#[test]
fn an_account_deleted_on_a_cluster_takes_its_usage_with_it() {
    let redis = common::redis::Redis::start();
    let echo = echo_server("127.0.0.1:0");
    let a = cluster_node(&redis, "a");
    let b = cluster_node(&redis, "b");
    let plan = json!({"bandwidth": "1GiB", "threads": 10});
    assert_eq!(api(&a, "PUT", "/v1/plans/pro", Some(plan)).0, 201);
    let body = json!({"password": "pw", "plan": "pro", "networks": ["residential"]});
    assert_eq!(
        api(&a, "PUT", "/v1/accounts/lena", Some(body.clone())).0,
        201
    );
    eventually("lena known to node b", || {
        (api(&b, "GET", "/v1/accounts/lena", None).0 == 200).then_some(())
    });
    let mut t = socks_ok(&b, "lena", "pw", echo).unwrap();
    assert_eq!(ping(&mut t, &[7u8; 10_000]), vec![7u8; 10_000]);
    drop(t);
    let top = json!({"bytes": "1MiB"});
    assert_eq!(
        api(&a, "POST", "/v1/accounts/lena/top-up", Some(top)).0,
        200
    );
    eventually("lena's bytes in redis", || {
        let (_, u) = api(&a, "GET", "/v1/accounts/lena/usage", None);
        (u["used"].as_u64()? >= 20_000).then_some(())
    });
    assert_eq!(api(&a, "DELETE", "/v1/accounts/lena", None).0, 204);
    eventually("lena gone on node b", || {
        (api(&b, "GET", "/v1/accounts/lena", None).0 == 404).then_some(())
    });
    assert_eq!(api(&b, "PUT", "/v1/accounts/lena", Some(body)).0, 201);
    let fresh = |gw: &Gateway| {
        let u = eventually("the new lena known", || {
            let (code, u) = api(gw, "GET", "/v1/accounts/lena/usage", None);
            (code == 200).then_some(u)
        });
        assert_eq!(
            (u["used"].as_u64(), u["credit"].as_u64()),
            (Some(0), Some(0)),
            "{u}"
        );
    };
    fresh(&a);
    fresh(&b);

    // The same through `tollgate account delete`.
    let mut t = socks_ok(&a, "lena", "pw", echo).unwrap();
    assert_eq!(ping(&mut t, &[7u8; 10_000]), vec![7u8; 10_000]);
    drop(t);
    eventually("lena's new bytes in redis", || {
        let (_, u) = api(&b, "GET", "/v1/accounts/lena/usage", None);
        (u["used"].as_u64()? >= 20_000).then_some(())
    });
    a.cli(&["account", "delete", "lena"]);
    eventually("lena gone on node b", || {
        (api(&b, "GET", "/v1/accounts/lena", None).0 == 404).then_some(())
    });
    let body = json!({"password": "pw", "plan": "pro", "networks": ["residential"]});
    assert_eq!(api(&a, "PUT", "/v1/accounts/lena", Some(body)).0, 201);
    fresh(&b);
}

/// An API account on a `period = "day"` plan, idle when the UTC boundary passes (its live
/// state dropped meanwhile): its stored row rolls at the boundary, so `tollgate usage show`
/// reads 0 at once, and the API shows the ended day in `history`. The clock is the test
/// hook's, just before midnight.
#[cfg(feature = "fault-injection")]
#[test]
fn an_idle_api_account_rolls_over_at_the_utc_boundary() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    let (clock, day_start) = TestClock::before_midnight(3600);
    let cfg = api_config("").replace(
        "allow_private_targets = true",
        "allow_private_targets = true\nusage_flush = \"100ms\"",
    );
    let gw = Gateway::start_env(dir, &cfg, &clock.env());
    let echo = echo_server("127.0.0.1:0");
    let plan = json!({"bandwidth": "1GiB", "threads": 10, "period": "day"});
    assert_eq!(api(&gw, "PUT", "/v1/plans/daily", Some(plan)).0, 201);
    let body = json!({"password": "pw", "plan": "daily", "networks": ["residential"]});
    assert_eq!(api(&gw, "PUT", "/v1/accounts/mona", Some(body)).0, 201);
    let mut s = socks_ok(&gw, "mona", "pw", echo).unwrap();
    assert_eq!(echo_through(&mut s, &[1u8; 30_000]).len(), 30_000);
    drop(s);
    let stored = |gw: &Gateway| -> Option<u64> {
        let show = gw.usage_cmd(&["show"]);
        let line = show.lines().find(|l| l.starts_with("mona "))?;
        line.split_whitespace().nth(2)?.parse().ok()
    };
    let used = eventually("mona's day in the store", || {
        stored(&gw).filter(|u| *u >= 60_000)
    });
    let day = jiff::Timestamp::from_second(day_start).unwrap().to_string();
    // Idle past two sweeps (its live state dropped), then midnight passes.
    eventually("mona's live state dropped", || {
        gw.metric("tollgate_account_threads_active{account=\"mona\"}")
            .is_none()
            .then_some(())
    });
    clock.past_midnight(2);
    eventually("the new day's usage at 0 in the store", || {
        (stored(&gw) == Some(0)).then_some(())
    });
    // Rolled in the store: its live state had been dropped (unused) before midnight.
    assert!(
        gw.stderr()
            .contains("plan period ended for stored accounts not in use"),
        "{}",
        gw.stderr()
    );
    let (_, u) = api(&gw, "GET", "/v1/accounts/mona/usage", None);
    assert_eq!(u["used"], 0, "{u}");
    assert_eq!(u["history"][0]["start"], day.as_str(), "{u}");
    assert_eq!(u["history"][0]["used"], used, "{u}");
    assert_eq!(u["period"]["start"], u["history"][0]["end"], "{u}");
}
