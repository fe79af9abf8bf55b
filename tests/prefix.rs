//! Prefix exits (`source_cidr`): rotating connections spread over the prefix, a session
//! keeps one address on every core and in every gateway process with the same file,
//! `rotate = "request"` moves each forwarded request of one keep-alive connection, and a
//! prefix that is not local is the exit's fault. IPv4 prefixes live inside 127.0.0.0/8
//! here (local on lo); the IPv6 path (TCP and SOCKS5 UDP) runs in a network namespace
//! (tests/clients/netns_v6.py).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::origin::{http_origin, Origin};
use common::*;
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::IpAddr;

fn prefix_exit(cidr: &str) -> String {
    format!("[[exit]]\nname = \"block\"\nnetwork = \"residential\"\nkind = \"direct\"\nsource_cidr = \"{cidr}\"\n")
}

/// The address the origin saw for one SOCKS5 tunnel as `user`.
fn via_socks(gw: &Gateway, user: &str, o: &Origin) -> IpAddr {
    let (mut s, out) = socks5(gw.addr(), user, "secret", 1, &Target::Addr(o.addr));
    assert!(matches!(out, SocksOutcome::Reply(0, _)), "{out:?}");
    s.write_all(b"GET /ip HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    read_response(&mut s, false).text().parse().unwrap()
}

/// The address the origin saw for one forwarded request (a fresh client connection).
fn via_http(gw: &Gateway, user: &str, o: &Origin) -> IpAddr {
    let raw = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {}\r\nConnection: close\r\n\r\n",
        o.url("/ip"),
        basic(user, "secret")
    );
    let (_, r) = http_raw(gw.addr(), raw.as_bytes());
    assert_eq!(r.code, 200, "{}", r.text());
    r.text().parse().unwrap()
}

fn inside(ip: IpAddr, cidr: &str) -> bool {
    cidr.parse::<ipnet::IpNet>().unwrap().contains(&ip)
}

#[test]
fn rotating_connections_leave_from_addresses_all_over_the_prefix() {
    let gw = Gateway::start(&config("", &prefix_exit("127.1.0.0/16")));
    let o = http_origin();
    let mut seen = HashSet::new();
    for i in 0..50 {
        let ip = if i % 2 == 0 {
            via_socks(&gw, "alice", &o)
        } else {
            via_http(&gw, "alice", &o)
        };
        assert!(inside(ip, "127.1.0.0/16"), "{ip} is outside the prefix");
        seen.insert(ip);
    }
    assert!(
        seen.len() >= 45,
        "only {} distinct addresses of 50",
        seen.len()
    );
    // The access line names the exit and the address.
    let line = eventually("an access line with the source", || {
        gw.stderr()
            .lines()
            .find(|l| l.contains(" access: ") && l.contains("exit=\"block\""))
            .map(str::to_owned)
    });
    assert!(line.contains("source=127.1."), "{line}");
}

/// Connections of one session until both executors have served some (bounded), then: one
/// address for all of them.
#[test]
fn a_session_keeps_one_address_over_both_protocols_and_both_cores() {
    let gw = Gateway::start(&config("", &prefix_exit("127.16.0.0/12")));
    let o = http_origin();
    let user = "alice-session-abc123";
    let mut seen = HashSet::new();
    let mut n = 0;
    let workers = |gw: &Gateway| {
        let log = gw.stderr();
        ["worker=0", "worker=1"]
            .iter()
            .filter(|w| log.lines().any(|l| l.contains("access") && l.contains(*w)))
            .count()
    };
    while n < 12 || (workers(&gw) < 2 && n < 64) {
        let ip = if n % 2 == 0 {
            via_socks(&gw, user, &o)
        } else {
            via_http(&gw, user, &o)
        };
        seen.insert(ip);
        n += 1;
    }
    assert_eq!(workers(&gw), 2, "{n} connections all landed on one core");
    assert_eq!(seen.len(), 1, "one session, addresses {seen:?}");
    let ip = *seen.iter().next().unwrap();
    assert!(inside(ip, "127.16.0.0/12"));
    // Another session id: another address.
    assert_ne!(via_socks(&gw, "alice-session-other", &o), ip);
}

/// Two gateway processes with the same file and no shared store put a session on the same
/// address; a secret (the same in both) moves it, and still both agree.
#[test]
fn two_gateways_with_the_same_file_agree_on_a_session_address() {
    let o = http_origin();
    let user = "alice-session-s1";
    let run = |routing: &str| {
        let cfg = config("", &format!("{routing}\n{}", prefix_exit("127.16.0.0/12")));
        let (a, b) = (Gateway::start(&cfg), Gateway::start(&cfg));
        let (x, y) = (via_socks(&a, user, &o), via_http(&b, user, &o));
        assert_eq!(x, y, "two processes disagree ({routing:?})");
        x
    };
    let plain = run("");
    let keyed = run("[routing]\nsession_secret = \"an operator's secret value\"\n");
    assert_ne!(plain, keyed, "the secret did not move the session");
}

/// 10 requests on one keep-alive client connection, as `user`: the addresses the origin
/// saw, and how many connections it got.
fn keep_alive_requests(rotate: &str, user: &str) -> (HashMap<IpAddr, usize>, usize) {
    let net = format!(
        "[[network]]\nname = \"rot\"\nrotate = \"{rotate}\"\n\
         [[listener]]\nlisten = \"127.0.0.1:0\"\nnetwork = \"rot\"\n\
         [[exit]]\nnetwork = \"rot\"\nkind = \"direct\"\nsource_cidr = \"127.32.0.0/16\"\n\
         [[user]]\nname = \"bob\"\npassword = \"secret\"\nplan = \"basic\"\nnetworks = [\"rot\"]\n"
    );
    let gw = Gateway::start(&config("", &format!("{DIRECT_EXIT}{net}")));
    let o = http_origin();
    let mut s = connect(gw.addrs[1]);
    let mut seen = HashMap::new();
    for _ in 0..10 {
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {}\r\n\r\n",
            o.url("/ip"),
            basic(user, "secret")
        );
        s.write_all(req.as_bytes()).unwrap();
        let r = read_response(&mut s, false);
        assert_eq!(r.code, 200, "{}", r.text());
        *seen.entry(r.text().parse().unwrap()).or_default() += 1;
    }
    (seen, o.connections())
}

#[test]
fn rotate_request_moves_every_request_of_one_keep_alive_connection() {
    let (seen, _) = keep_alive_requests("request", "bob");
    assert!(seen.len() >= 8, "rotate = \"request\": {seen:?}");
    let (seen, origin_conns) = keep_alive_requests("connection", "bob");
    assert_eq!(seen.len(), 1, "rotate = \"connection\": {seen:?}");
    assert_eq!(
        origin_conns, 1,
        "the connection's origin connection was not reused"
    );
    // A session stays on its address whatever the mode, on one origin connection.
    let (seen, origin_conns) = keep_alive_requests("request", "bob-session-k1");
    assert_eq!(seen.len(), 1, "a session moved: {seen:?}");
    assert_eq!(origin_conns, 1);
}

/// A prefix no interface or local route carries is the exit's fault: the gateway says what
/// to run, leaves the exit out and serves through the others; `tollgate check` warns.
#[test]
fn a_prefix_that_is_not_local_is_left_out_with_what_to_run() {
    let exits = format!(
        "{}{DIRECT_EXIT}",
        prefix_exit("198.51.100.0/24").replace("\"block\"", "\"remote\"")
    );
    let gw = Gateway::start(&config("", &exits));
    let o = http_origin();
    for _ in 0..4 {
        assert_eq!(via_socks(&gw, "alice", &o).to_string(), "127.0.0.1");
    }
    let log = gw.stderr();
    assert!(
        log.contains("ip route add local 198.51.100.0/24 dev lo"),
        "no hint in the log:\n{log}"
    );
    let out = std::process::Command::new(BIN)
        .args(["--config"])
        .arg(gw.config_path())
        .arg("check")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout
            .contains("exit remote: source_cidr 198.51.100.0/24 (IPv4, 2^8 addresses), NOT LOCAL"),
        "{stdout}"
    );
    assert!(
        stderr.contains("ip route add local 198.51.100.0/24 dev lo"),
        "{stderr}"
    );
    // The only exit of a network being unusable: 503, not a hang.
    let only = Gateway::start(&config("", &prefix_exit("198.51.100.0/24")));
    let r = http_get(only.addr(), &o.url("/ip"));
    assert_eq!(r.code, 503, "{}", r.text());
}

/// A plain direct exit reaches `localhost` whatever families it resolves to here (where it
/// has `::1` too, that attempt is refused and the race moves on to IPv4). The tarpit
/// IPv6 race is in the network-namespace test below.
#[test]
fn a_name_with_both_families_falls_back_to_the_one_that_answers() {
    let gw = Gateway::start(&config("", DIRECT_EXIT));
    let o = http_origin();
    let url = format!("http://localhost:{}/ip", o.addr.port());
    let r = http_get(gw.addr(), &url);
    assert_eq!((r.code, r.text()), (200, "127.0.0.1".to_string()));
}

/// The IPv6 path for real: a /64 routed to lo (`ip -6 route add local`) inside a network
/// namespace the test creates (and a mount namespace for its own /etc/hosts), gateway,
/// origins and client all in it (root, as in CI).
#[test]
fn an_ipv6_prefix_exit_in_a_network_namespace() {
    // A machine that cannot create namespaces at all (not root, or a sandbox that forbids
    // them) skips, loudly; wherever they can be created, the script's failure is the test's.
    let probe = std::process::Command::new("unshare")
        .args(["-n", "-m", "true"])
        .output()
        .expect("unshare (util-linux) runs");
    if !probe.status.success() {
        let why = String::from_utf8_lossy(&probe.stderr);
        let who = if is_not_root() { "not root" } else { "root" };
        eprintln!("SKIPPED an_ipv6_prefix_exit_in_a_network_namespace: cannot create namespaces here ({who}: {why})");
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/netns_v6.py");
    let out = std::process::Command::new("unshare")
        .args(["-n", "-m", "python3", script, BIN])
        .output()
        .expect("unshare (util-linux) runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let values = |key: &str| -> Vec<String> {
        stdout
            .lines()
            .filter_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        values("check"),
        ["exit v6block: source_cidr fd00:77::/64 (IPv6, 2^64 addresses), local"]
    );
    let rotating: HashSet<IpAddr> = values("rotating")
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert!(rotating.len() >= 18, "{stdout}");
    assert!(
        rotating.iter().all(|ip| inside(*ip, "fd00:77::/64")),
        "{stdout}"
    );
    // A UDP association leaves from the prefix too, one address each, and the answers
    // come back through it.
    let udp = values("udp");
    assert_eq!(udp.len(), 6, "{stdout}");
    let mut udp_sources = HashSet::new();
    for (i, line) in udp.iter().enumerate() {
        let (ip, payload) = line.split_once(' ').unwrap();
        let ip: IpAddr = ip.parse().unwrap();
        assert!(inside(ip, "fd00:77::/64"), "{stdout}");
        assert_eq!(payload, format!("dgram{i}"));
        udp_sources.insert(ip);
    }
    assert!(udp_sources.len() >= 5, "{stdout}");
    let session: HashSet<String> = values("session").into_iter().collect();
    assert_eq!(session.len(), 1, "{stdout}");
    // Both families, the IPv6 address a tarpit: the IPv4 attempt (250 ms later) wins.
    let race = values("race").concat();
    assert!(race.starts_with("200 127.0.0.1 "), "{race}");
    // Every address failing, one of them at once when its turn came: the 502, not a
    // dropped connection.
    assert_eq!(values("none_code"), ["502"], "{stdout}");
    // A name with an AAAA record is dialled over the prefix.
    let aaaa = values("aaaa_name").concat();
    assert!(aaaa.starts_with("200 fd00:77:"), "{aaaa}");
    // A name with only an A record, and an IPv4 literal: 502 with the detail.
    assert_eq!(values("a_only_code"), ["502", "502"]);
    for status in values("a_only_status") {
        assert!(
            status.contains("error=destination_ip_unroutable")
                && status.contains("has no IPv6 address"),
            "{status}"
        );
    }
    println!("{stdout}");
}

/// Whether this process is not root (then namespaces may be refused).
fn is_not_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) != Some("0"))
        })
        .unwrap_or(true)
}
