//! SOCKS5 UDP ASSOCIATE (RFC 1928 section 7): PySocks' `socksocket(SOCK_DGRAM)` to a local
//! UDP echo and a DNS query to a local DNS server through the gateway; and, driven byte by
//! byte, what an attacker or a greedy tenant tries: datagrams from another address, answers
//! from a host the client never sent to, fragments, private targets, the plan's bytes and
//! threads, the control connection's close and the idle timeout.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A UDP echo on loopback; remembers who sent to it (the gateway's exit socket).
fn udp_echo() -> (SocketAddr, Arc<Mutex<Vec<SocketAddr>>>) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = s.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            log.lock().unwrap().push(from);
            let _ = s.send_to(&buf[..n], from);
        }
    });
    (addr, seen)
}

/// A DNS server on loopback answering every A question with 192.0.2.53 (TTL 60).
fn dns_server() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = s.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            if n < 12 {
                continue;
            }
            // The question ends at its name's zero label, then QTYPE and QCLASS.
            let mut i = 12;
            while i < n && buf[i] != 0 {
                i += 1 + buf[i] as usize;
            }
            let qend = i + 5;
            let mut r = buf[..qend].to_vec();
            r[2] = 0x81; // QR, RD
            r[3] = 0x80; // RA
            r[6..8].copy_from_slice(&1u16.to_be_bytes()); // ANCOUNT
            r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 53]);
            let _ = s.send_to(&r, from);
        }
    });
    addr
}

/// The first access line of a UDP association that also holds `needle`.
fn udp_access_line(gw: &Gateway, needle: &str) -> String {
    eventually("the association's access line", || {
        gw.stderr()
            .lines()
            .find(|l| {
                l.contains("access") && l.contains("proto=\"socks5-udp\"") && l.contains(needle)
            })
            .map(str::to_owned)
    })
}

fn gateway(extra_server: &str, users: &str) -> Gateway {
    let cfg = config(extra_server, DIRECT_EXIT)
        .replace("[log]", "[admin]\nlisten = \"127.0.0.1:0\"\n\n[log]")
        + users;
    Gateway::start(&cfg)
}

/// PySocks sends UDP through the gateway: datagrams to an echo (1 byte, 1400 bytes, 30,000
/// bytes come back whole), and a DNS query for a name, answered by the local DNS server.
#[test]
fn pysocks_udp_to_an_echo_and_a_dns_server() {
    let gw = gateway("", "");
    let (echo, _) = udp_echo();
    let dns = dns_server();
    let script = r#"
import socket, struct, sys, socks
gw_port, echo_port, dns_port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
s = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
s.set_proxy(socks.SOCKS5, "127.0.0.1", gw_port, username="alice", password="secret")
s.settimeout(10)
for size in (1, 1400, 30000):
    data = bytes(i % 251 for i in range(size))
    s.sendto(data, ("127.0.0.1", echo_port))
    back, frm = s.recvfrom(65535)
    assert back == data, (size, len(back))
    assert frm == ("127.0.0.1", echo_port), frm
    print("echo", size)
q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(l)]) + l for l in b"shop.example.com".split(b".")) + b"\0"
q += struct.pack(">HH", 1, 1)
s.sendto(q, ("127.0.0.1", dns_port))
r, _ = s.recvfrom(512)
txid, flags, qd, an = struct.unpack(">HHHH", r[:8])
assert txid == 0x1234 and flags & 0x8000 and an == 1, r
print("dns", ".".join(str(b) for b in r[-4:]))
s.close()
"#;
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            &gw.addr().port().to_string(),
            &echo.port().to_string(),
            &dns.port().to_string(),
        ])
        .output()
        .expect("python3 (scripts/test.sh installs PySocks)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.stderr()
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["echo 1", "echo 1400", "echo 30000", "dns 192.0.2.53"]
    );
    // The access line: the association, its account and exit, ended by the client.
    let line = udp_access_line(&gw, "");
    assert!(line.contains("account=\"alice\""), "{line}");
    assert!(line.contains("end=\"closed\""), "{line}");
}

/// A raw client: the control connection as `user`, and the relay's address.
fn associate(gw: SocketAddr, user: &str, from: SocketAddr) -> (TcpStream, SocketAddr) {
    let (s, out) = socks5(gw, user, "secret", 3, &Target::Addr(from));
    match out {
        SocksOutcome::Reply(0, Some(relay)) => (s, relay),
        other => panic!("udp associate: {other:?}"),
    }
}

fn datagram(frag: u8, to: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut d = vec![0, 0, frag];
    d.extend_from_slice(&socks_request(0, &Target::Addr(to))[3..]);
    d.extend_from_slice(data);
    d
}

fn client_socket(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind(format!("{ip}:0")).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    s
}

/// A datagram round trip: what came back (header stripped), or `None` within 300 ms.
fn round_trip(c: &UdpSocket, relay: SocketAddr, d: &[u8]) -> Option<Vec<u8>> {
    c.send_to(d, relay).unwrap();
    let mut buf = [0u8; 65536];
    let (n, _) = c.recv_from(&mut buf).ok()?;
    Some(buf[10..n].to_vec())
}

/// Only the client's address may use the relay; answers come only from targets the client
/// sent to; FRAG ≠ 0 is dropped; each is counted. The client keeps being served.
#[test]
fn strangers_fragments_and_unsolicited_answers_are_dropped() {
    let gw = gateway("", "");
    let (echo, seen) = udp_echo();
    let c = client_socket("127.0.0.1");
    let (_ctl, relay) = associate(gw.addr(), "alice", c.local_addr().unwrap());
    assert_eq!(
        round_trip(&c, relay, &datagram(0, echo, b"mine")).as_deref(),
        Some(&b"mine"[..])
    );
    // Another address (another host, or another local process on another port).
    let n_seen = seen.lock().unwrap().len();
    for stranger in [client_socket("127.0.0.2"), client_socket("127.0.0.1")] {
        assert_eq!(
            round_trip(&stranger, relay, &datagram(0, echo, b"not yours")),
            None
        );
    }
    // Fragments are not reassembled.
    assert_eq!(round_trip(&c, relay, &datagram(1, echo, b"frag")), None);
    assert_eq!(
        seen.lock().unwrap().len(),
        n_seen,
        "nothing reached the target"
    );
    // Someone who learns the exit socket's address cannot send the client anything.
    let exit = seen.lock().unwrap()[0];
    let spoof = UdpSocket::bind("127.0.0.1:0").unwrap();
    spoof.send_to(b"\0\0\0unsolicited", exit).unwrap();
    let mut buf = [0u8; 100];
    assert!(
        c.recv_from(&mut buf).is_err(),
        "an unsolicited answer arrived"
    );
    assert_eq!(
        round_trip(&c, relay, &datagram(0, echo, b"still mine")).as_deref(),
        Some(&b"still mine"[..])
    );
    eventually("the drops counted", || {
        let stranger = gw.metric("tollgate_udp_dropped_total{reason=\"stranger\"}")?;
        let frag = gw.metric("tollgate_udp_dropped_total{reason=\"fragmented\"}")?;
        (stranger >= 3.0 && frag >= 1.0).then_some(())
    });
}

/// Every datagram's target passes the private-target policy (loopback is refused when
/// private targets are not allowed): dropped, counted, never sent.
#[test]
fn private_targets_are_refused_per_datagram() {
    let cfg = config("", DIRECT_EXIT)
        .replace(
            "allow_private_targets = true",
            "allow_private_targets = false",
        )
        .replace("[log]", "[admin]\nlisten = \"127.0.0.1:0\"\n\n[log]");
    let gw = Gateway::start(&cfg);
    let (echo, seen) = udp_echo();
    let c = client_socket("127.0.0.1");
    let (_ctl, relay) = associate(gw.addr(), "alice", c.local_addr().unwrap());
    assert_eq!(round_trip(&c, relay, &datagram(0, echo, b"x")), None);
    let to_name = {
        let mut d = vec![0, 0, 0];
        d.extend_from_slice(&socks_request(0, &Target::Domain("localhost", echo.port()))[3..]);
        d.extend_from_slice(b"y");
        d
    };
    assert_eq!(round_trip(&c, relay, &to_name), None);
    assert!(seen.lock().unwrap().is_empty());
    eventually("counted", || {
        gw.metric("tollgate_udp_dropped_total{reason=\"forbidden_target\"}")
            .filter(|v| *v >= 2.0)
    });
}

/// The plan bills each datagram's bytes (SOCKS5 UDP header and data) in both directions,
/// whole datagrams only: the one that would pass the plan is dropped, the control
/// connection closed, and the account's usage is exactly what was relayed.
#[test]
fn the_plan_bills_datagrams_whole() {
    let small = "\n[[plan]]\nname = \"small\"\nbandwidth = \"4000B\"\nthreads = 1\n\n[[user]]\nname = \"udp\"\npassword = \"secret\"\nplan = \"small\"\nnetworks = [\"residential\"]\n";
    let gw = gateway("", small);
    let (echo, seen) = udp_echo();
    let c = client_socket("127.0.0.1");
    let (mut ctl, relay) = associate(gw.addr(), "udp", c.local_addr().unwrap());
    let payload = vec![7u8; 490];
    let d = datagram(0, echo, &payload);
    assert_eq!(d.len(), 500);
    // Handshake: greeting 3 + method 2 + auth 2+3+1+6 + status 2 + request 10 + reply 10.
    let handshake = 3 + 2 + (2 + 3 + 1 + 6) + 2 + 10 + 10;
    let mut used = handshake;
    let mut echoed = 0;
    while round_trip(&c, relay, &d).is_some() {
        used += 1000;
        echoed += 1;
        assert!(echoed < 10, "the plan did not stop the datagrams");
    }
    // 41 + 3 × 1000 fit; the fourth goes up (500 more), its answer would pass 4000.
    assert_eq!(echoed, 3);
    used += 500;
    assert!(
        closed_by_peer(&mut ctl),
        "the control connection stays open"
    );
    assert_eq!(seen.lock().unwrap().len(), 4);
    eventually("usage stored", || {
        (gw.stored_usage("udp").0 == used as u64).then_some(())
    });
    let line = udp_access_line(&gw, "account=\"udp\"");
    assert!(line.contains("end=\"quota\""), "{line}");
}

/// The association holds a thread slot; closing the control connection ends it (its relay
/// stops answering, its slot is free again); an idle association is closed after
/// `idle_timeout`.
#[test]
fn the_association_lives_as_long_as_its_control_connection() {
    let one = "\n[[plan]]\nname = \"one\"\nbandwidth = \"1GiB\"\nthreads = 1\n\n[[user]]\nname = \"solo\"\npassword = \"secret\"\nplan = \"one\"\nnetworks = [\"residential\"]\n";
    let gw = gateway("idle_timeout = \"1s\"", one);
    let (echo, _) = udp_echo();
    let c = client_socket("127.0.0.1");
    let (ctl, relay) = associate(gw.addr(), "solo", c.local_addr().unwrap());
    assert!(round_trip(&c, relay, &datagram(0, echo, b"a")).is_some());
    // The association holds the plan's one thread.
    let (refused, out) = socks5(gw.addr(), "solo", "secret", 1, &Target::Addr(echo));
    assert!(
        matches!(out, SocksOutcome::Reply(0x02, _)),
        "453 as 0x02: {out:?}"
    );
    drop(refused);
    eventually("the 453 on the access line", || {
        gw.stderr().contains("code=453").then_some(())
    });
    drop(ctl);
    let _second = eventually("the slot free again", || {
        let (s, out) = socks5(
            gw.addr(),
            "solo",
            "secret",
            3,
            &Target::Addr(c.local_addr().unwrap()),
        );
        matches!(out, SocksOutcome::Reply(0, _)).then_some(s)
    });
    assert_eq!(round_trip(&c, relay, &datagram(0, echo, b"b")), None);
    // The second association (just opened above, never used) idles out.
    let line = udp_access_line(&gw, "end=\"idle\"");
    assert!(line.contains("account=\"solo\""), "{line}");
}

/// Through an upstream SOCKS5 exit that serves UDP (here another tollgate): the gateway
/// opens its own association with the upstream and relays the datagrams with their header;
/// the answers come back through both. Closing the client's control connection ends both.
#[test]
fn datagrams_through_an_upstream_socks5_exit() {
    let upstream = gateway("", "");
    let exit = format!(
        "[[exit]]\nname = \"chained\"\nnetwork = \"residential\"\nkind = \"socks5\"\nurl = \"socks5://alice:secret@{}\"\n",
        upstream.addr()
    );
    let gw = Gateway::start(&config("", &exit));
    let (echo, seen) = udp_echo();
    let c = client_socket("127.0.0.1");
    let (ctl, relay) = associate(gw.addr(), "alice", c.local_addr().unwrap());
    for data in [&b"through two gateways"[..], &[9u8; 1200][..]] {
        assert_eq!(
            round_trip(&c, relay, &datagram(0, echo, data)).as_deref(),
            Some(data)
        );
    }
    assert_eq!(seen.lock().unwrap().len(), 2);
    drop(ctl);
    for g in [&gw, &upstream] {
        let line = udp_access_line(g, "end=");
        assert!(line.contains("account=\"alice\""), "{line}");
    }
    assert!(gw.stderr().contains("exit=\"chained\""));
}

/// An HTTP upstream exit cannot carry the datagrams: `0x07` (command not supported).
#[test]
fn an_upstream_exit_answers_command_not_supported() {
    let upstream =
        "[[exit]]\nnetwork = \"residential\"\nkind = \"http\"\nurl = \"http://127.0.0.1:9\"\n";
    let gw = Gateway::start(&config("", upstream));
    let (_s, out) = socks5(
        gw.addr(),
        "alice",
        "secret",
        3,
        &Target::Addr("0.0.0.0:0".parse().unwrap()),
    );
    assert!(matches!(out, SocksOutcome::Reply(0x07, _)), "{out:?}");
    // BIND is not served either.
    let (_s, out) = socks5(
        gw.addr(),
        "alice",
        "secret",
        2,
        &Target::Addr("0.0.0.0:0".parse().unwrap()),
    );
    assert!(matches!(out, SocksOutcome::Reply(0x07, _)), "{out:?}");
}

/// A prefix exit gives each association one address of the prefix (free-bound), the same
/// one for every association of a sticky session; rotating associations spread.
#[test]
fn a_prefix_exit_gives_an_association_a_sticky_address() {
    let exit =
        "[[exit]]\nnetwork = \"residential\"\nkind = \"direct\"\nsource_cidr = \"127.1.0.0/16\"\n";
    let gw = Gateway::start(&config("", exit));
    let (echo, seen) = udp_echo();
    let source_of = |user: &str| {
        let c = client_socket("127.0.0.1");
        let (s, out) = socks5(
            gw.addr(),
            user,
            "secret",
            3,
            &Target::Addr(c.local_addr().unwrap()),
        );
        let SocksOutcome::Reply(0, Some(relay)) = out else {
            panic!("{out:?}")
        };
        let before = seen.lock().unwrap().len();
        for _ in 0..2 {
            assert!(round_trip(&c, relay, &datagram(0, echo, b"which")).is_some());
        }
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen[before].ip(),
            seen[before + 1].ip(),
            "one address per association"
        );
        drop(s);
        seen[before].ip()
    };
    let sticky: Vec<_> = (0..3).map(|_| source_of("alice-session-udp1")).collect();
    assert!(sticky.iter().all(|ip| *ip == sticky[0]), "{sticky:?}");
    assert!(
        "127.1.0.0/16"
            .parse::<ipnet::IpNet>()
            .unwrap()
            .contains(&sticky[0]),
        "{sticky:?}"
    );
    let rotating: std::collections::HashSet<_> = (0..6).map(|_| source_of("alice")).collect();
    assert!(rotating.len() >= 3, "{rotating:?}");
}

/// Bytes a client pushes down the control connection are billed within the plan like any
/// read: past it, the association ends, and usage stops at the plan to the byte.
#[test]
fn stray_control_bytes_cannot_pass_the_plan() {
    let small = "\n[[plan]]\nname = \"small\"\nbandwidth = \"1000B\"\nthreads = 1\n\n[[user]]\nname = \"udp\"\npassword = \"secret\"\nplan = \"small\"\nnetworks = [\"residential\"]\n";
    let gw = gateway("", small);
    let c = client_socket("127.0.0.1");
    let (mut ctl, _relay) = associate(gw.addr(), "udp", c.local_addr().unwrap());
    // Written before the close is seen; a reset afterwards is fine.
    let _ = ctl.write_all(&[0u8; 5000]);
    assert!(
        closed_by_peer(&mut ctl),
        "the control connection stays open"
    );
    eventually("usage stored", || {
        (gw.stored_usage("udp").0 == 1000).then_some(())
    });
    assert!(udp_access_line(&gw, "account=\"udp\"").contains("end=\"quota\""));
}
