//! Operating tollgate: `/metrics` after known traffic, `/healthz` during drain, the access
//! line in JSON, IP allow-listing, and headless Chromium through SOCKS5 without credentials.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::origin::{echo_server, http_origin};
use common::*;
use std::io::{Read, Write};

fn with_admin(server: &str, rest: &str) -> String {
    config(server, rest).replace("[log]", "[admin]\nlisten = \"127.0.0.1:0\"\n\n[log]")
}

fn series(name: &str, labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return name.to_string();
    }
    let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", l.join(","))
}

#[test]
fn metrics_count_known_traffic() {
    let gw = Gateway::start(&with_admin("", DIRECT_EXIT));
    let echo = echo_server("127.0.0.1:0");
    let o = http_origin();
    let listener = gw.addr().to_string();
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    // One SOCKS5 tunnel with a known payload: 27 handshake bytes up, 14 down (IPv4 reply).
    let n = 100_000usize;
    let mut t = socks5_tunnel(gw.addr(), &Target::Addr(echo));
    // While it is open, alice holds one thread.
    let active = series("tollgate_account_threads_active", &[("account", "alice")]);
    assert_eq!(gw.metric(&active), Some(1.0));
    assert_eq!(echo_through(&mut t, &pattern(n)).len(), n);
    drop(t);
    let ok = series(
        "tollgate_outcomes_total",
        &[("code", "200"), ("end", "closed")],
    );
    eventually("the tunnel's outcome", || {
        (gw.metric(&ok) == Some(1.0)).then_some(())
    });
    let net = |dir| {
        series(
            "tollgate_network_bytes_total",
            &[("network", "residential"), ("direction", dir)],
        )
    };
    assert_eq!(gw.metric(&net("up")), Some((27 + n) as f64));
    assert_eq!(gw.metric(&net("down")), Some((14 + n) as f64));
    let acc = |dir| {
        series(
            "tollgate_account_bytes_total",
            &[("account", "alice"), ("direction", dir)],
        )
    };
    assert_eq!(gw.metric(&acc("up")), Some((27 + n) as f64));

    // Three forwarded GETs, one 407, one refused target (502), one domain target twice.
    for _ in 0..3 {
        assert_eq!(http_get(gw.addr(), &o.url("/")).code, 200);
    }
    let raw = format!("GET {} HTTP/1.1\r\n\r\n", o.url("/"));
    assert_eq!(http_raw(gw.addr(), raw.as_bytes()).1.code, 407);
    assert_eq!(http_get(gw.addr(), &format!("http://{refused}/")).code, 502);
    let local = format!("http://localhost:{}/", o.addr.port());
    assert_eq!(http_get(gw.addr(), &local).code, 200);
    assert_eq!(http_get(gw.addr(), &local).code, 200);

    let count =
        |name: &str, labels: &[(&str, &str)]| gw.metric(&series(name, labels)).unwrap_or(0.0);
    eventually("all outcomes", || {
        (count(
            "tollgate_outcomes_total",
            &[("code", "200"), ("end", "closed")],
        ) == 6.0)
            .then_some(())
    });
    let refused = |code| {
        count(
            "tollgate_outcomes_total",
            &[("code", code), ("end", "refused")],
        )
    };
    assert_eq!(refused("407"), 1.0);
    assert_eq!(refused("502"), 1.0);
    assert_eq!(
        count(
            "tollgate_connections_accepted_total",
            &[("listener", &listener), ("protocol", "socks5")]
        ),
        1.0
    );
    assert_eq!(
        count(
            "tollgate_connections_accepted_total",
            &[("listener", &listener), ("protocol", "http")]
        ),
        7.0
    );
    assert_eq!(
        count(
            "tollgate_exit_connect_attempts_total",
            &[("exit", "exit-1")]
        ),
        7.0
    );
    assert_eq!(
        count(
            "tollgate_exit_connect_failures_total",
            &[("exit", "exit-1")]
        ),
        1.0
    );
    assert_eq!(count("tollgate_exit_connect_seconds_count", &[]), 6.0);
    assert!(count("tollgate_dns_cache_misses_total", &[]) >= 1.0);
    assert!(
        count("tollgate_dns_cache_hits_total", &[]) + count("tollgate_dns_cache_misses_total", &[])
            >= 2.0
    );
    assert!(count("tollgate_quota_lease_refills_total", &[]) >= 1.0);
    assert_eq!(count("tollgate_panics_total", &[]), 0.0);
    eventually("no live connections", || {
        (count("tollgate_connections_active", &[]) == 0.0).then_some(())
    });
    let (code, body) = gw.admin_get("/metrics");
    assert_eq!(code, 200);
    assert!(body.ends_with("# EOF\n"));
    assert_eq!(gw.admin_get("/nope").0, 404);
}

#[test]
fn per_account_metrics_can_be_switched_off() {
    let cfg = with_admin("", DIRECT_EXIT).replace(
        "listen = \"127.0.0.1:0\"\n\n[log]",
        "listen = \"127.0.0.1:0\"\nper_account_metrics = false\n\n[log]",
    );
    let gw = Gateway::start(&cfg);
    let o = http_origin();
    assert_eq!(http_get(gw.addr(), &o.url("/")).code, 200);
    eventually("outcome", || {
        gw.metric("tollgate_outcomes_total{code=\"200\",end=\"closed\"}")
            .map(|_| ())
    });
    assert!(!gw.admin_get("/metrics").1.contains("account="));
}

#[test]
fn healthz_flips_to_503_while_draining() {
    let mut gw = Gateway::start(&with_admin("drain_timeout = \"20s\"", DIRECT_EXIT));
    let echo = echo_server("127.0.0.1:0");
    eventually("healthy", || {
        (gw.admin_get("/healthz") == (200, "ok\n".into())).then_some(())
    });
    let mut live = socks5_tunnel(gw.addr(), &Target::Addr(echo));
    gw.signal(libc::SIGTERM);
    eventually("draining", || {
        (gw.admin_get("/healthz") == (503, "draining\n".into())).then_some(())
    });
    live.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    live.read_exact(&mut b).unwrap();
    drop(live);
    assert_eq!(gw.wait_exit(), Some(0));
}

#[test]
fn access_line_in_json_has_every_field() {
    let cfg =
        config("", DIRECT_EXIT).replace("level = \"info\"", "level = \"info\"\nformat = \"json\"");
    let gw = Gateway::start(&cfg);
    let echo = echo_server("127.0.0.1:0");
    let mut t = socks5_tunnel(gw.addr(), &Target::Addr(echo));
    assert_eq!(echo_through(&mut t, &pattern(5000)).len(), 5000);
    drop(t);
    let line = eventually("the access line", || {
        gw.stderr()
            .lines()
            .find(|l| l.contains("\"target\":\"access\""))
            .map(str::to_owned)
    });
    let want = [
        "\"proto\":\"socks5\"".to_string(),
        "\"network\":\"residential\"".into(),
        "\"account\":\"alice\"".into(),
        format!("\"target\":\"{echo}\""),
        "\"exit\":\"exit-1\"".into(),
        "\"up\":5027".into(),
        "\"down\":5014".into(),
        "\"code\":200".into(),
        "\"ms\":".into(),
        "\"timestamp\":".into(),
    ];
    for w in want {
        assert!(line.contains(&w), "{w} missing in {line}");
    }
    assert!(
        !gw.stderr().contains("secret"),
        "password leaked into the log"
    );
}

const BROWSER_USER: &str = "\n[[user]]\nname = \"browser\"\npassword = \"unused\"\nplan = \"basic\"\nnetworks = [\"residential\"]\nallow_ips = [\"127.0.0.1/32\"]\n";

#[test]
fn allow_listed_addresses_connect_without_credentials() {
    let exit =
        "[[exit]]\nnetwork = \"residential\"\nkind = \"direct\"\nsource_ip = \"127.0.0.12\"\n";
    let gw = Gateway::start(&format!("{}{BROWSER_USER}", config("", exit)));
    let o = http_origin();
    // HTTP without Proxy-Authorization from 127.0.0.1.
    let raw = format!("GET {} HTTP/1.1\r\n\r\n", o.url("/ip"));
    let (_, r) = http_raw(gw.addr(), raw.as_bytes());
    assert_eq!((r.code, r.text().as_str()), (200, "127.0.0.12"));
    // SOCKS5 offering only "no authentication".
    let mut s = connect(gw.addr());
    s.write_all(&[5, 1, 0]).unwrap();
    let mut m = [0u8; 2];
    s.read_exact(&mut m).unwrap();
    assert_eq!(m, [5, 0]);
    s.write_all(&socks_request(1, &Target::Addr(o.addr)))
        .unwrap();
    let mut rep = [0u8; 10];
    s.read_exact(&mut rep).unwrap();
    assert_eq!(rep[1], 0);
    s.write_all(b"GET /ip HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut s, false).text(), "127.0.0.12");
    eventually("access line", || {
        gw.stderr().contains("account=\"browser\"").then_some(())
    });
    // Credentials still win when given.
    assert_eq!(http_get(gw.addr(), &o.url("/ip")).code, 200);

    // From a non-listed address (127.0.0.5) credentials are still required.
    let mut s = connect_from("127.0.0.5", gw.addr());
    s.write_all(raw.as_bytes()).unwrap();
    assert_eq!(read_response(&mut s, false).code, 407);
    let mut s = connect_from("127.0.0.5", gw.addr());
    s.write_all(&[5, 1, 0]).unwrap();
    s.read_exact(&mut m).unwrap();
    assert_eq!(m, [5, 0xff]);
    let mut s = connect_from("127.0.0.5", gw.addr());
    let req = format!(
        "GET {} HTTP/1.1\r\nProxy-Authorization: {}\r\n\r\n",
        o.url("/ip"),
        basic("alice", "secret")
    );
    s.write_all(req.as_bytes()).unwrap();
    assert_eq!(read_response(&mut s, false).code, 200);
}

#[test]
fn headless_chromium_through_socks5_without_credentials() {
    let chromium = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| {
            std::process::Command::new(c)
                .arg("--version")
                .output()
                .is_ok()
        })
        .expect("chromium not installed (scripts/test.sh installs Debian's chromium)");
    let exit =
        "[[exit]]\nnetwork = \"residential\"\nkind = \"direct\"\nsource_ip = \"127.0.0.13\"\n";
    let gw = Gateway::start(&format!("{}{BROWSER_USER}", config("", exit)));
    let o = http_origin();
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--timeout=15000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--proxy-server=socks5://{}", gw.addr()))
        // Chromium bypasses proxies for loopback unless told not to.
        .arg("--proxy-bypass-list=<-loopback>")
        .arg("--dump-dom")
        .arg(o.url("/ip"))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    // The origin saw the exit's source address: the page came through tollgate.
    assert!(
        dom.contains("127.0.0.13"),
        "dom: {dom}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(gw.stderr().contains("account=\"browser\""));
}
