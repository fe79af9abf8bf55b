//! Real clients: curl (HTTP proxy, CONNECT tunnel, SOCKS5) and Python requests + PySocks.
//! `scripts/test.sh` installs them; run alone, a missing client fails with that hint.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::origin::http_origin;
use common::*;
use std::process::Command;

#[test]
fn curl_through_http_proxy_connect_and_socks5() {
    let gw = Gateway::start(&config("", DIRECT_EXIT));
    let o = http_origin();
    let gwa = gw.addr().to_string();
    let http_proxy = format!("http://alice:secret@{gwa}");
    let socks = format!("alice:secret@{gwa}");
    let url = o.url("/ip");

    let out = curl(&["-x", &http_proxy, &url]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out), "127.0.0.1");

    let out = curl(&["-p", "-x", &http_proxy, &url]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out), "127.0.0.1");

    let local = format!("http://localhost:{}/ip", o.addr.port());
    let out = curl(&["--socks5-hostname", &socks, &local]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out), "127.0.0.1");

    let out = curl(&[
        "-x",
        &format!("http://alice:nope@{gwa}"),
        "-w",
        "%{http_code}",
        "-o",
        "/dev/null",
        &url,
    ]);
    assert_eq!(text(&out), "407");

    let out = curl(&[
        "-x",
        &format!("http://alice-ttl-99999:secret@{gwa}"),
        &url,
        "-w",
        " %{http_code}",
    ]);
    assert_eq!(text(&out), "invalid ttl 455");

    // SOCKS5 refusals: curl exits 97 (proxy handshake error) and names the reply code.
    let out = curl(&[
        "--socks5-hostname",
        &format!("alice-ttl-0:secret@{gwa}"),
        &local,
    ]);
    assert_eq!(out.status.code(), Some(97), "{out:?}");
    let out = curl(&["--socks5-hostname", &format!("alice:nope@{gwa}"), &local]);
    assert_eq!(out.status.code(), Some(97), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rejected"),
        "{out:?}"
    );

    let out = curl(&[
        "-x",
        &http_proxy,
        "--data-binary",
        "posted body",
        &o.url("/echo"),
    ]);
    assert_eq!(text(&out), "posted body");
}

#[test]
fn python_requests_and_pysocks() {
    let gw = Gateway::start(&config("", DIRECT_EXIT));
    let o = http_origin();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/requests_check.py"
    );
    let out = run(Command::new("python3")
        .arg(script)
        .arg(gw.addr().to_string())
        .arg(o.url("")));
    let stdout = text(&out);
    assert!(
        out.status.success(),
        "{stdout}\n{}\n(scripts/test.sh installs requests and PySocks)",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all python checks passed"), "{stdout}");
}

/// The README's corrected snippet (`tests/clients/proxy_code.py`, embedded verbatim in
/// README "How clients see each code") gets every code over forwarding and CONNECT.
#[test]
fn the_readmes_snippet_gets_every_code_over_forward_and_connect() {
    let snippet = include_str!("clients/proxy_code.py");
    let readme = include_str!("../README.md");
    assert!(
        readme.contains(snippet),
        "README's snippet differs from tests/clients/proxy_code.py"
    );
    let users = "[[plan]]\nname = \"empty\"\nbandwidth = 0\nthreads = 10\n\n[[plan]]\nname = \"one\"\nbandwidth = \"1GiB\"\nthreads = 1\n\n[[user]]\nname = \"broke\"\npassword = \"secret\"\nplan = \"empty\"\nnetworks = [\"residential\"]\n\n[[user]]\nname = \"busy\"\npassword = \"secret\"\nplan = \"one\"\nnetworks = [\"residential\"]\n";
    let gw = Gateway::start(&config("", &format!("{DIRECT_EXIT}\n{users}")));
    let echo = common::origin::echo_server("127.0.0.1:0");
    // busy's only thread is held by a tunnel.
    let (_held, out) = socks5(gw.addr(), "busy", "secret", 1, &Target::Addr(echo));
    assert!(matches!(out, SocksOutcome::Reply(0, _)));
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = run(Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clients/proxy_code_check.py"
        ))
        .arg(gw.addr().to_string())
        .arg(refused.port().to_string()));
    let stdout = text(&out);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok ")).count(),
        18,
        "{stdout}"
    );
}

/// node `ws` through `http-proxy-agent`: ws:// by plain forwarding, upgraded by the origin,
/// tunnelled by the gateway (scripts/deps.sh test installs them under target/test-node).
#[test]
fn websocket_clients_upgrade_through_plain_forwarding() {
    let gw = Gateway::start(&config("", DIRECT_EXIT));
    let modules = concat!(env!("CARGO_MANIFEST_DIR"), "/target/test-node/node_modules");
    let out = run(Command::new("node")
        .env("NODE_PATH", modules)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clients/ws_through_proxy.js"
        ))
        .arg(format!("http://alice:secret@{}", gw.addr())));
    let stdout = text(&out);
    assert!(
        out.status.success(),
        "{stdout}\n{}\n(scripts/deps.sh test installs node, ws and http-proxy-agent)",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "echo:hello through tollgate");
    // The access line records the upgrade (101) and how the tunnel ended.
    eventually("the access line", || {
        gw.stderr().contains("code=101").then_some(())
    });
}
