//! Scale-out: two real gateway processes share one real `redis-server` (ephemeral loopback
//! port). One plan holds across both nodes: threads, bandwidth, sticky sessions; a killed
//! node's slots come back; a Redis outage follows `on_redis_down` and heals by itself.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::origin::{echo_server, holding_origin, http_origin};
use common::redis::Redis;
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

/// A node's config: the common test config, alice's plan, and a `[cluster]` section.
fn node_config(redis: &Redis, node: &str, plan: (&str, u32), cluster: &str, exits: &str) -> String {
    let base = config("usage_flush = \"100ms\"", exits).replace(
        "bandwidth = \"10GiB\"\nthreads = 1000",
        &format!("bandwidth = \"{}\"\nthreads = {}", plan.0, plan.1),
    );
    format!(
        "{base}\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[cluster]\nredis = \"{}\"\nnode = \"{node}\"\nnode_ttl = \"2s\"\nredis_timeout = \"500ms\"\n{cluster}\n",
        redis.url()
    )
}

/// Two nodes, "a" and "b", on the same plan and Redis.
fn two_nodes(redis: &Redis, plan: (&str, u32), cluster: &str, exits: &str) -> (Gateway, Gateway) {
    (
        Gateway::start(&node_config(redis, "a", plan, cluster, exits)),
        Gateway::start(&node_config(redis, "b", plan, cluster, exits)),
    )
}

/// An HTTP CONNECT tunnel as alice, or the refusal's (status, body).
fn tunnel(gw: SocketAddr, target: SocketAddr) -> Result<TcpStream, (u16, String)> {
    match http_connect(gw, target) {
        (s, r) if r.code == 200 => Ok(s),
        (_, r) => Err((r.code, r.text())),
    }
}

/// A round trip through an echo tunnel.
fn ping(s: &mut TcpStream) {
    s.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");
}

fn refused_453(gw: &Gateway, echo: SocketAddr) {
    let (code, body) = tunnel(gw.addr(), echo).map(|_| ()).unwrap_err();
    assert_eq!((code, body.as_str()), (453, "exceeded threads limit"));
}

#[test]
fn thread_limit_holds_across_two_nodes() {
    let redis = Redis::start();
    let echo = echo_server("127.0.0.1:0");
    let (a, b) = two_nodes(&redis, ("10GiB", 2), "", DIRECT_EXIT);
    let mut t1 = tunnel(a.addr(), echo).unwrap();
    let mut t2 = tunnel(b.addr(), echo).unwrap();
    // Each node holds one slot: a third is refused on both, over HTTP and SOCKS5.
    refused_453(&a, echo);
    refused_453(&b, echo);
    let (_, out) = socks5(b.addr(), "alice", "secret", 1, &Target::Addr(echo));
    assert!(matches!(out, SocksOutcome::Reply(2, _)), "{out:?}");
    ping(&mut t1);
    ping(&mut t2);
    assert_eq!(a.stored_usage("alice").2, 2);
    // A slot given back on node a is taken on node b.
    drop(t1);
    let mut t3 = eventually("the slot closed on a to be free on b", || {
        tunnel(b.addr(), echo).ok()
    });
    ping(&mut t3);
    refused_453(&a, echo);
    drop((t2, t3));
    eventually("every slot back", || {
        (b.stored_usage("alice").2 == 0).then_some(())
    });
}

/// A client that closes a tunnel on one node and at once opens the next on the other is
/// admitted: the other node's admission waits for the slot's release to reach Redis.
#[test]
fn a_client_that_closes_on_one_node_can_open_the_next_on_the_other_at_once() {
    let redis = Redis::start();
    let echo = echo_server("127.0.0.1:0");
    let (a, b) = two_nodes(&redis, ("10GiB", 1), "", DIRECT_EXIT);
    for i in 0..100 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let mut t = match tunnel(gw.addr(), echo) {
            Ok(t) => t,
            Err(e) => panic!("tunnel {i} refused: {e:?}"),
        };
        ping(&mut t);
        // Closed by the client first.
    }
}

/// A tunnel that one side has closed holds its thread until it ends; a tunnel asked for on
/// the other node meanwhile waits for it (as on one node) instead of a 453, and nothing of
/// the closing count stays in Redis after.
#[test]
fn a_tunnel_on_another_node_waits_for_a_closing_one() {
    let redis = Redis::start();
    let cfg = |node| {
        node_config(&redis, node, ("10GiB", 1), "", DIRECT_EXIT).replace(
            "usage_flush = \"100ms\"",
            "usage_flush = \"100ms\"\nhalf_close_timeout = \"300ms\"",
        )
    };
    let (a, b) = (Gateway::start(&cfg("a")), Gateway::start(&cfg("b")));
    let origin = holding_origin();
    let mut t = tunnel(a.addr(), origin).unwrap();
    t.write_all(b"hello").unwrap();
    t.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = [0u8; 5];
    t.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"got 5");
    // Node a now holds a closing slot, which it has told Redis.
    eventually("the closing slot in redis", || {
        let r = redis.command(&["HLEN", "tollgate:closing:alice"])?;
        r.starts_with(":1").then_some(())
    });
    // The tunnel on node b waits until a's ends (300 ms without a byte), then gets the slot.
    let mut next = tunnel(b.addr(), origin).expect("the closing tunnel's slot, on the other node");
    assert!(closed_by_peer(&mut t));
    next.write_all(b"hi").unwrap();
    next.shutdown(std::net::Shutdown::Write).unwrap();
    next.read_exact(&mut answer[..4]).unwrap();
    assert_eq!(&answer[..4], b"got ");
    // b's tunnel is closing now; once it ends, no closing count is left behind.
    admitted_once_the_last_ends(&a, origin);
    eventually("no closing slot left in redis", || {
        let r = redis.command(&["EXISTS", "tollgate:closing:alice"])?;
        r.starts_with(":0").then_some(())
    });
}

/// A tunnel on `gw` once the account's last one has ended.
fn admitted_once_the_last_ends(gw: &Gateway, origin: SocketAddr) {
    let mut t = tunnel(gw.addr(), origin).expect("the slot of the tunnel that ended");
    t.shutdown(std::net::Shutdown::Write).unwrap();
    let mut b = Vec::new();
    t.read_to_end(&mut b).ok();
}

#[test]
fn bandwidth_limit_holds_across_two_nodes_and_is_billed_to_the_byte() {
    let redis = Redis::start();
    let echo = echo_server("127.0.0.1:0");
    let plan: u64 = 8 << 20;
    let (a, b) = two_nodes(&redis, ("8MiB", 50), "", DIRECT_EXIT);
    // 1.5 MiB each way through each node, counted on the client's sockets.
    let mut billed = 0;
    for gw in [&a, &b] {
        let mut c = Counted::connect_tunnel(gw.addr(), echo);
        c.echo(&pattern(3 << 19));
        drop(c.s.shutdown(std::net::Shutdown::Both));
        billed += c.bytes;
    }
    let used = eventually("both nodes' usage in redis", || {
        let (used, _, _) = a.stored_usage("alice");
        (used == billed).then_some(used)
    });
    assert!(used > 6 << 20);
    // The rest of the plan, raced for by both nodes at once: together they never pass it.
    let racers: Vec<_> = [a.addr(), b.addr()]
        .into_iter()
        .map(|gw| {
            std::thread::spawn(move || match tunnel(gw, echo) {
                Ok(mut s) => echo_until_cut(&mut s, &pattern(4 << 20)),
                Err(_) => 0,
            })
        })
        .collect();
    let got: usize = racers.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(got < (2 << 20), "{got} bytes echoed past the plan");
    // Both nodes now refuse with 452 (each learns it at its next grant).
    for gw in [&a, &b] {
        let (code, body) = eventually("452", || match tunnel(gw.addr(), echo) {
            Ok(mut s) => {
                echo_until_cut(&mut s, &pattern(1 << 20));
                None
            }
            Err(e) => Some(e),
        });
        assert_eq!((code, body.as_str()), (452, "exceeded bandwidth limit"));
    }
    let (used, _, _) = eventually("usage settled", || {
        let u = a.stored_usage("alice");
        (u.2 == 0).then_some(u)
    });
    // Idle nodes hand their unspent grants back: no `out:<node>` entry is left.
    eventually("grants handed back", || {
        let fields = redis.command(&["HKEYS", "tollgate:bw:alice"])?;
        (!fields.contains("out:")).then_some(())
    });
    // Relayed bytes never pass the plan; only the gateway's own short replies may.
    assert!(used <= plan + 4096, "used {used} of a {plan}-byte plan");
    // An operator's top-up on the shared store lets both nodes through again.
    a.usage_cmd(&["top-up", "alice", "1MiB"]);
    for gw in [&a, &b] {
        let mut s = eventually("admission after the top-up", || {
            tunnel(gw.addr(), echo).ok()
        });
        ping(&mut s);
    }
}

#[test]
fn a_sticky_session_holds_across_nodes() {
    let redis = Redis::start();
    let o = http_origin();
    let exits: String = (11..=14)
        .map(|i| {
            format!(
                "[[exit]]\nname = \"e{i}\"\nnetwork = \"residential\"\nkind = \"direct\"\nsource_ip = \"127.0.0.{i}\"\n"
            )
        })
        .collect();
    let (a, b) = two_nodes(&redis, ("10GiB", 100), "", &exits);
    let get = |gw: &Gateway, user: &str| {
        let raw = format!(
            "GET {} HTTP/1.1\r\nProxy-Authorization: {}\r\n\r\n",
            o.url("/ip"),
            basic(user, "secret")
        );
        let (_, r) = http_raw(gw.addr(), raw.as_bytes());
        assert_eq!(r.code, 200);
        r.text()
    };
    let first = get(&a, "alice-session-farm7-ttl-5");
    for i in 0..12 {
        let gw = if i % 2 == 0 { &b } else { &a };
        assert_eq!(
            get(gw, "alice-session-farm7-ttl-5"),
            first,
            "connection {i}"
        );
    }
    // Without a session, the nodes rotate over the pool.
    let seen: std::collections::BTreeSet<String> = (0..8)
        .map(|i| get(if i % 2 == 0 { &a } else { &b }, "alice"))
        .collect();
    assert!(seen.len() > 1, "{seen:?}");
}

#[test]
fn a_killed_node_frees_its_slots_within_node_ttl() {
    let redis = Redis::start();
    let echo = echo_server("127.0.0.1:0");
    let (a, mut b) = two_nodes(&redis, ("10GiB", 2), "", DIRECT_EXIT);
    let _t1 = tunnel(b.addr(), echo).unwrap();
    let _t2 = tunnel(b.addr(), echo).unwrap();
    refused_453(&a, echo);
    b.signal(9);
    b.wait_exit();
    // node_ttl = 2s: node a admits once b's heartbeat has lapsed (eventually fails the
    // test if that takes longer than WAIT).
    let mut s = eventually("b's slots to lapse", || tunnel(a.addr(), echo).ok());
    ping(&mut s);
}

#[test]
fn redis_down_fail_closed_refuses_new_admissions_keeps_tunnels_and_recovers() {
    let mut redis = Redis::start();
    let echo = echo_server("127.0.0.1:0");
    let a = Gateway::start(&node_config(&redis, "a", ("10GiB", 10), "", DIRECT_EXIT));
    let mut live = tunnel(a.addr(), echo).unwrap();
    ping(&mut live);
    redis.stop();
    // The live tunnel goes on; new admissions get 503 (SOCKS5: 0x01).
    let mut bulk = Counted::new(live.try_clone().unwrap());
    bulk.echo(&pattern(2 << 20));
    let (code, body) = tunnel(a.addr(), echo).map(|_| ()).unwrap_err();
    assert_eq!((code, body.as_str()), (503, "service unavailable"));
    let (_, out) = socks5(a.addr(), "alice", "secret", 1, &Target::Addr(echo));
    assert!(matches!(out, SocksOutcome::Reply(1, _)), "{out:?}");
    // Redis comes back (empty): admissions resume by themselves, and the node writes its
    // live slot and usage again.
    redis.restart();
    let mut s = eventually("admission after redis returns", || {
        tunnel(a.addr(), echo).ok()
    });
    ping(&mut s);
    ping(&mut live);
    eventually("the live slots rewritten", || {
        (a.stored_usage("alice").2 == 2).then_some(())
    });
    let refused = a
        .metric("tollgate_cluster_refused_while_down_total")
        .unwrap();
    assert!(refused >= 2.0, "{refused}");
}

#[test]
fn redis_down_fail_open_admits_within_the_local_allowance() {
    let mut redis = Redis::start();
    let echo = echo_server("127.0.0.1:0");
    let a = Gateway::start(&node_config(
        &redis,
        "a",
        ("10GiB", 2),
        "on_redis_down = \"fail-open\"\ndown_allowance = \"1MiB\"",
        DIRECT_EXIT,
    ));
    redis.stop();
    // Admitted on this node's own count: the plan's 2 threads, then 453.
    let mut t1 = eventually("fail-open admission", || tunnel(a.addr(), echo).ok());
    let _t2 = tunnel(a.addr(), echo).unwrap();
    refused_453(&a, echo);
    // Bytes within down_allowance (1 MiB) flow; past it the tunnel is cut.
    ping(&mut t1);
    let got = echo_until_cut(&mut t1, &pattern(4 << 20));
    assert!(got < (2 << 20), "{got} bytes with a 1 MiB allowance");
    redis.restart();
    eventually("redis up again", || {
        (a.metric("tollgate_cluster_redis_up") == Some(1.0)).then_some(())
    });
}

#[test]
fn no_lease_is_stranded_while_admissions_wait_for_redis() {
    // Admissions wait on Redis (made slow here with CLIENT PAUSE) while each core's quota
    // tick retires accounts idle on it; a connection admitted meanwhile must charge the
    // live view of its account, or the leases it takes are never handed back (a
    // regression found by the cluster soak).
    let redis = Redis::start();
    let echo = echo_server("127.0.0.1:0");
    let a = Gateway::start(&node_config(&redis, "a", ("10GiB", 1000), "", DIRECT_EXIT));
    let until = std::time::Instant::now() + std::time::Duration::from_millis(3500);
    let port = redis.port;
    let pauser = std::thread::spawn(move || {
        let r = Redis::attach(port);
        while std::time::Instant::now() < until {
            // 30 ms paused out of every 100: admissions wait, and paused clients get to
            // run in between (back-to-back pauses could starve them).
            r.command(&["CLIENT", "PAUSE", "30", "WRITE"]);
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    });
    let mut tunnels = 0;
    // Bounded in time and count: one client, short tunnels, so the account is often idle
    // on a core exactly when the next admission is waiting.
    while std::time::Instant::now() < until && tunnels < 10_000 {
        let mut c = Counted::connect_tunnel(a.addr(), echo);
        c.echo(&pattern(20_000));
        tunnels += 1;
    }
    pauser.join().unwrap();
    assert!(tunnels > 20, "{tunnels}");
    eventually("every lease and slot back in redis", || {
        let grants = redis.command(&["HKEYS", "tollgate:bw:alice"])?;
        let slots = redis.command(&["HGETALL", "tollgate:threads:alice"])?;
        (!grants.contains("out:") && slots.starts_with("*0")).then_some(())
    });
}

/// `speed` on a cluster: each node enforces its share (the plan's divided by the nodes
/// alive), so one download through each of two nodes together stay within ±10% of it.
#[test]
fn speed_limit_is_shared_by_the_nodes() {
    let redis = Redis::start();
    let o = http_origin();
    let node = |name: &str| {
        let cfg = node_config(&redis, name, ("10GiB", 10), "", DIRECT_EXIT);
        Gateway::start(&cfg.replace("threads = 10", "threads = 10\nspeed = \"1MiB/s\""))
    };
    let (a, b) = (node("a"), node("b"));
    for gw in [&a, &b] {
        eventually("both nodes alive in each node's view", || {
            (gw.metric("tollgate_cluster_nodes") == Some(2.0)).then_some(())
        });
    }
    let download = |gw: &Gateway| {
        let (mut s, out) = socks5(gw.addr(), "alice", "secret", 1, &Target::Addr(o.addr));
        assert!(matches!(out, SocksOutcome::Reply(0, _)), "{out:?}");
        s.write_all(b"GET /big?n=50000000 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        s
    };
    let got = bytes_read_within(vec![download(&a), download(&b)], 5.0) as f64 / 5.0;
    let rate = 1024.0 * 1024.0;
    println!("two nodes: {got:.0} B/s (limit {rate} B/s)");
    assert!(
        (got - rate).abs() <= rate * 0.10,
        "{got:.0} B/s against {rate} B/s"
    );
}

/// `period = "day"` on a cluster: the plan used up on both nodes before the UTC day
/// boundary is served again after it, on both, and the ended day's total is kept in
/// Redis (`tollgate usage history`). The nodes' clocks are the test hook's, just before
/// midnight; whichever node asks Redis first after the boundary rolls the totals, once.
/// The status of a forwarded GET as alice; the body is read as far as the gateway lets it
/// (a plan that runs out mid-answer cuts it).
#[cfg(feature = "fault-injection")]
fn status_of(gw: &Gateway, url: &str) -> u16 {
    let mut s = connect(gw.addr());
    let req = format!(
        "GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nProxy-Authorization: {}\r\n\r\n",
        basic("alice", "secret")
    );
    s.write_all(req.as_bytes()).unwrap();
    let r = read_response(&mut s, true);
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    r.code
}

#[cfg(feature = "fault-injection")]
#[test]
fn a_plan_period_rolls_over_on_every_node_at_the_utc_boundary() {
    let redis = Redis::start();
    let o = http_origin();
    // An hour before midnight until the plan is used up; then just past it.
    let (clock, day_start) = TestClock::before_midnight(3600);
    let hook = clock.env();
    let cfg = |node: &str| {
        node_config(&redis, node, ("64KiB", 10), "", DIRECT_EXIT)
            .replace("threads = 10", "threads = 10\nperiod = \"day\"")
    };
    let a = Gateway::start_env(tempfile::tempdir().unwrap(), &cfg("a"), &hook);
    let b = Gateway::start_env(tempfile::tempdir().unwrap(), &cfg("b"), &hook);
    let url = o.url("/big?n=20000");
    // Used up across both nodes before midnight.
    let mut served = 0;
    for gw in [&a, &b, &a, &b, &a, &b] {
        if status_of(gw, &url) == 200 {
            served += 1;
        }
    }
    assert!(
        (2..=3).contains(&served),
        "{served} requests of 20 kB under 64 KiB"
    );
    for gw in [&a, &b] {
        eventually("452 before midnight", || {
            (status_of(gw, &url) == 452).then_some(())
        });
    }
    // The day's usage as Redis ends up with it: the same on two reads a settle apart.
    let read_used = || -> Option<u64> {
        let show = a.usage_cmd(&["show"]);
        show.lines()
            .find(|l| l.starts_with("alice "))
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|v| v.parse().ok())
    };
    let used = eventually("the day's usage settled in redis", || {
        let first = read_used()?;
        std::thread::sleep(std::time::Duration::from_millis(600));
        (first > 40_000 && read_used() == Some(first)).then_some(first)
    });
    // After midnight (on the nodes' clocks): served again on both.
    clock.past_midnight(2);
    for gw in [&a, &b] {
        eventually("served again after the boundary", || {
            (status_of(gw, &url) == 200).then_some(())
        });
    }
    let history = a.usage_cmd(&["history", "alice"]);
    let day = jiff::Timestamp::from_second(day_start).unwrap().to_string();
    assert!(
        history.contains(&format!("{day:<22} {used:>16}")),
        "{day} {used} not in:\n{history}"
    );
}
