//! The dashboard in headless Chromium (Debian's), driven over the DevTools protocol
//! (tests/clients/dashboard.js): the operator logs in with the token through the form,
//! reads an account's page (its used bytes equal the API's figure, its recent error's
//! request id is listed), tops it up through the form (the API sees the credit); the
//! customer logs in with proxy credentials, builds a username, and the gateway accepts it.
//! Screenshots of both pages go to target/dashboard-shots/.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::origin::echo_server;
use common::*;
use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Stdio};

const TOKEN: &str = "dashboard-token-0123456789";

fn chromium() -> &'static str {
    ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok())
        .expect("chromium not installed (scripts/test.sh installs Debian's chromium)")
}

/// Run the browser through `steps`; what each step read.
fn browse(steps: Value) -> Vec<Value> {
    let profile = tempfile::tempdir().unwrap();
    let modules = concat!(env!("CARGO_MANIFEST_DIR"), "/target/test-node/node_modules");
    let out = Command::new("node")
        .env("NODE_PATH", modules)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clients/dashboard.js"
        ))
        .arg(chromium())
        .arg(profile.path())
        .arg(steps.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}\n(scripts/deps.sh test installs node, ws and chromium)",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The `name=value` of the session cookie a login's response head sets.
fn session_cookie(head: &str) -> String {
    head.lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("{head}"))
        .to_owned()
}

fn api(gw: &Gateway, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-X", method, "-w", "\n%{http_code}", "-H"])
        .arg(format!("Authorization: Bearer {TOKEN}"));
    if body.is_some() {
        cmd.args(["--data-binary", "@-"]);
    }
    cmd.arg(format!("http://{}{path}", gw.admin.unwrap()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(b) = body {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b.to_string().as_bytes())
            .unwrap();
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

#[test]
fn operator_and_customer_pages_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    let exits = "[[exit]]\nname = \"us-ca-1\"\nnetwork = \"residential\"\nkind = \"direct\"\ncountry = \"us\"\nstate = \"ca\"\ncity = \"losangeles\"\n";
    let cfg = config("usage_flush = \"100ms\"", exits).replace(
        "[log]",
        "[admin]\nlisten = \"127.0.0.1:0\"\napi_token_file = \"token\"\n\n[log]",
    );
    let gw = Gateway::start_in(dir, &cfg);
    let echo = echo_server("127.0.0.1:0");
    let plan = json!({"bandwidth": "1GiB", "threads": 10, "period": "month"});
    assert_eq!(api(&gw, "PUT", "/v1/plans/pro", Some(plan)).0, 201);
    let body = json!({"password": "nina-pw", "plan": "pro", "networks": ["residential"]});
    assert_eq!(api(&gw, "PUT", "/v1/accounts/nina", Some(body)).0, 201);
    // Some traffic, and one refusal with its request id.
    let (mut t, r) = http_connect_as(gw.addr(), "nina", "nina-pw", &echo.to_string());
    assert_eq!(r.code, 200);
    assert_eq!(echo_through(&mut t, &[9u8; 50_000]).len(), 50_000);
    let (_, r) = http_connect_as(gw.addr(), "nina-country-zz", "nina-pw", &echo.to_string());
    assert_eq!(r.code, 454);
    let request_id = r.header("x-request-id").unwrap().to_owned();
    let used = eventually("nina's usage settled", || {
        let (_, u) = api(&gw, "GET", "/v1/accounts/nina/usage", None);
        let used = u["used"].as_u64()?;
        let (code, _) = api(&gw, "GET", &format!("/v1/requests/{request_id}"), None);
        (used > 100_000 && code == 200).then_some(used)
    });
    let base = format!("http://{}", gw.admin.unwrap());
    let shots = concat!(env!("CARGO_MANIFEST_DIR"), "/target/dashboard-shots");
    std::fs::create_dir_all(shots).unwrap();
    let got = browse(json!([
        {"goto": format!("{base}/")},
        {"text": "h1"},
        {"fill": ["#token", "wrong-token-but-long-enough"]},
        {"click": "#login"},
        {"text": "#error"},
        {"fill": ["#token", TOKEN]},
        {"click": "#login"},
        {"text": "#accounts"},
        {"goto": format!("{base}/accounts/nina")},
        {"attr": ["#used", "data-bytes"]},
        {"text": "#errors"},
        {"text": "#threads"},
        {"screenshot": format!("{shots}/operator-account.png")},
        {"fill": ["#topup-bytes", "1GiB"]},
        {"click": "#topup"},
        {"text": "#flash"},
        {"goto": format!("{base}/exits")},
        {"text": "#exits"},
        {"goto": format!("{base}/me")},
        {"fill": ["#username", "nina"]},
        {"fill": ["#password", "nina-pw"]},
        {"click": "#login"},
        {"attr": ["#used", "data-bytes"]},
        {"goto": format!("{base}/me?country=us&state=ca&city=losangeles&session=abc123&ttl=30")},
        {"text": "#username"},
        {"text": "#socks"},
        {"text": "#errors"},
        {"screenshot": format!("{shots}/customer.png")},
    ]));
    let s = |i: usize| got[i].as_str().unwrap_or("").to_owned();
    assert_eq!(s(1), "Operator login");
    assert_eq!(s(4), "wrong token");
    assert!(s(7).contains("nina") && s(7).contains("alice"), "{}", s(7));
    assert_eq!(
        s(9),
        used.to_string(),
        "the page's used bytes are the API's"
    );
    assert!(s(10).contains(&request_id), "{}", s(10));
    assert_eq!(s(11), "0 of 10");
    assert!(s(15).contains("topped up by 1073741824 bytes"), "{}", s(15));
    assert!(
        s(17).contains("us-ca-1") && s(17).contains("usable"),
        "{}",
        s(17)
    );
    assert_eq!(s(22), used.to_string(), "the customer sees the same figure");
    let username = s(24);
    assert_eq!(
        username,
        "nina-country-us-state-ca-city-losangeles-session-abc123-ttl-30"
    );
    assert!(
        s(25).contains(&format!("socks5h://{username}:PASSWORD@")),
        "{}",
        s(25)
    );
    assert!(s(26).contains(&request_id));
    // The form's top-up is in the API; the built username is accepted by the gateway.
    let (_, u) = api(&gw, "GET", "/v1/accounts/nina/usage", None);
    assert_eq!(u["credit"], 1u64 << 30, "{u}");
    let (_, out) = socks5(gw.addr(), &username, "nina-pw", 1, &Target::Addr(echo));
    assert!(matches!(out, SocksOutcome::Reply(0, _)), "{out:?}");
    assert!(
        gw.stderr().contains("action=\"usage.top-up\""),
        "the form's action is audited"
    );
}

/// An account name may hold what a cookie value cannot carry as it is (';', ',', '.',
/// non-ASCII): its customer still logs in, stays logged in, and sees their own account.
#[test]
fn a_customer_whose_name_a_cookie_cannot_carry_still_logs_in() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    let name = "bob;dev,caf\u{e9}.x";
    let user = format!(
        "[[user]]\nname = \"{name}\"\npassword = \"pw\"\nplan = \"basic\"\nnetworks = [\"residential\"]\n"
    );
    let cfg = config("", &format!("{DIRECT_EXIT}\n{user}")).replace(
        "[log]",
        "[admin]\nlisten = \"127.0.0.1:0\"\napi_token_file = \"token\"\n\n[log]",
    );
    let gw = Gateway::start_in(dir, &cfg);
    let base = format!("http://{}", gw.admin.unwrap());
    let out = Command::new("curl")
        .args([
            "-sS",
            "-i",
            "-d",
            "username=bob%3Bdev%2Ccaf%C3%A9.x&password=pw",
            &format!("{base}/me/login"),
        ])
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(head.starts_with("HTTP/1.1 303"), "{head}");
    let cookie = session_cookie(&head);
    let out = Command::new("curl")
        .args([
            "-sS",
            "-w",
            "\n%{http_code}",
            "-b",
            &cookie,
            &format!("{base}/me"),
        ])
        .output()
        .unwrap();
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.ends_with("\n200"), "{page}");
    assert!(page.contains("bob;dev,caf\u{e9}.x"), "{page}");
    // The same cookie with another account's name in it is no session: the login form.
    let hex: String = b"alice".iter().map(|b| format!("{b:02x}")).collect();
    let (key, value) = cookie.split_once('=').unwrap();
    let (_, rest) = value.split_once('.').unwrap();
    let forged = format!("{key}={hex}.{rest}");
    let out = Command::new("curl")
        .args(["-sS", "-b", &forged, &format!("{base}/me")])
        .output()
        .unwrap();
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.contains("Customer login"), "{page}");
    assert!(!page.contains("bob;dev"), "{page}");
}

/// Without the token or its cookie, only the login form; a form POST without the CSRF
/// token of the session is refused; a customer cannot reach the operator's pages.
#[test]
fn pages_need_their_session_and_forms_their_csrf_token() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    let cfg = config("", DIRECT_EXIT).replace(
        "[log]",
        "[admin]\nlisten = \"127.0.0.1:0\"\napi_token_file = \"token\"\n\n[log]",
    );
    let gw = Gateway::start_in(dir, &cfg);
    let base = format!("http://{}", gw.admin.unwrap());
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(curl(&[&format!("{base}/accounts/alice")]), "401");
    assert_eq!(curl(&[&format!("{base}/exits")]), "401");
    let auth = format!("Authorization: Bearer {TOKEN}");
    assert_eq!(
        curl(&["-H", &auth, &format!("{base}/accounts/alice")]),
        "200"
    );
    assert_eq!(
        curl(&[
            "-H",
            &auth,
            "-d",
            "csrf=forged&bytes=1GiB",
            &format!("{base}/accounts/alice/top-up")
        ]),
        "403"
    );
    // A customer's cookie is not an operator's.
    let out = Command::new("curl")
        .args([
            "-sS",
            "-i",
            "-d",
            "username=alice&password=secret",
            &format!("{base}/me/login"),
        ])
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).to_string();
    let cookie = session_cookie(&head);
    assert_eq!(curl(&["-b", &cookie, &format!("{base}/me")]), "200");
    assert_eq!(
        curl(&["-b", &cookie, &format!("{base}/accounts/alice")]),
        "401"
    );
    assert_eq!(
        curl(&[
            "-d",
            "username=alice&password=wrong",
            &format!("{base}/me/login")
        ]),
        "401"
    );
}
