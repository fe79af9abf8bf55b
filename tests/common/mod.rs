//! Test harness: the real `tollgate` binary on ephemeral loopback ports, real origins
//! (HTTP and echo) on threads, and small raw SOCKS5/HTTP clients for exact assertions.
#![allow(dead_code)]

pub mod origin;
pub mod redis;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_tollgate");
/// Upper bound for any single wait in tests; never a synchronisation sleep.
pub const WAIT: Duration = Duration::from_secs(20);

/// Config text for a test gateway: two workers, one listener on an ephemeral port,
/// private targets allowed (origins live on loopback), user alice/secret.
pub fn config(extra_server: &str, rest: &str) -> String {
    format!(
        r#"
[server]
workers = 2
allow_private_targets = true
{extra_server}

[log]
level = "info"

[[listener]]
listen = "127.0.0.1:0"
network = "residential"

[[network]]
name = "residential"
targeting = true

[[network]]
name = "datacenter"
targeting = false

[[plan]]
name = "basic"
bandwidth = "10GiB"
threads = 1000

[[user]]
name = "alice"
password = "secret"
plan = "basic"
networks = ["residential"]

{rest}
"#
    )
}

pub const DIRECT_EXIT: &str = "[[exit]]\nnetwork = \"residential\"\nkind = \"direct\"\n";

/// A running gateway process; killed on drop.
pub struct Gateway {
    pub child: Child,
    pub addrs: Vec<SocketAddr>,
    /// The admin listener, when the config has one.
    pub admin: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Gateway {
    pub fn start(config: &str) -> Gateway {
        Gateway::start_in(tempfile::tempdir().unwrap(), config)
    }

    /// Start in `dir` (the working directory, so `./state` lives there): a restart on the
    /// same directory finds the previous run's usage store.
    pub fn start_in(dir: tempfile::TempDir, config: &str) -> Gateway {
        Gateway::start_env(dir, config, &[])
    }

    /// [`Gateway::start_in`] with extra environment variables (test hooks).
    pub fn start_env(dir: tempfile::TempDir, config: &str, env: &[(&str, String)]) -> Gateway {
        Gateway::spawn(dir, config, env, Command::new(BIN))
    }

    /// A gateway that may hold at most `nofile` file descriptors (soft and hard limit).
    pub fn start_with_nofile(config: &str, nofile: u64) -> Gateway {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(BIN);
        // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: nofile,
                    rlim_max: nofile,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Gateway::spawn(tempfile::tempdir().unwrap(), config, &[], cmd)
    }

    fn spawn(
        dir: tempfile::TempDir,
        config: &str,
        env: &[(&str, String)],
        mut cmd: Command,
    ) -> Gateway {
        let path = dir.path().join("tollgate.toml");
        std::fs::write(&path, config).unwrap();
        let err = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let mut child = cmd
            .arg("--config")
            .arg(&path)
            .current_dir(dir.path())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut addrs = Vec::new();
        let mut admin = None;
        loop {
            let mut line = String::new();
            if stdout.read_line(&mut line).unwrap() == 0 {
                let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
                panic!("gateway exited before ready:\n{log}");
            }
            if let Some(rest) = line.strip_prefix("listening ") {
                addrs.push(rest.split_whitespace().next().unwrap().parse().unwrap());
            }
            if let Some(rest) = line.strip_prefix("admin ") {
                admin = Some(rest.trim().parse().unwrap());
            }
            if line.starts_with("ready") {
                break;
            }
        }
        Gateway {
            child,
            addrs,
            admin,
            dir,
            stdout,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// GET a path on the admin listener: (status, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        let mut s = connect(self.admin.expect("no admin listener"));
        write!(s, "GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").unwrap();
        let r = read_response(&mut s, false);
        (r.code, r.text())
    }

    /// One sample of the exposition: the value of the line starting with `series` (the
    /// metric name with its labels, exactly as exposed).
    /// The gateway's open descriptors: (pipes among them, all).
    pub fn fd_counts(&self) -> (usize, usize) {
        let links: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .map(|p| p.display().to_string())
            .collect();
        let pipes = links.iter().filter(|l| l.starts_with("pipe:")).count();
        (pipes, links.len())
    }

    pub fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = self.admin_get("/metrics");
        body.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("tollgate.toml")
    }

    /// Stop this process and hand over its directory (for a restart).
    pub fn into_dir(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    /// `tollgate usage ARGS…` on this gateway's config and store.
    pub fn usage_cmd(&self, args: &[&str]) -> String {
        self.cli(&[&["usage"], args].concat())
    }

    /// `tollgate ARGS --config <this gateway's config>`, which must succeed: its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(self.config_path())
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Stored (used, credit, active) of `account`, from `tollgate usage show`.
    pub fn stored_usage(&self, account: &str) -> (u64, u64, u32) {
        let out = self.usage_cmd(&["show"]);
        let row = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(account))
            .unwrap_or_else(|| panic!("{account} not in:\n{out}"));
        let f: Vec<&str> = row.split_whitespace().collect();
        (
            f[2].parse().unwrap(),
            f[3].parse().unwrap(),
            f[6].parse().unwrap(),
        )
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Wait for the process to exit (bounded) and return its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            assert!(std::time::Instant::now() < deadline, "gateway did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connect from a chosen loopback source address (to look like another client).
pub fn connect_from(src: &str, to: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&format!("{src}:0").parse::<SocketAddr>().unwrap().into())
        .unwrap();
    s.connect(&to.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// A SOCKS5 target.
pub enum Target<'a> {
    Addr(SocketAddr),
    Domain(&'a str, u16),
    /// Raw ATYP byte and address bytes, for malformed requests.
    Raw(u8, &'a [u8]),
}

pub fn socks_request(cmd: u8, target: &Target) -> Vec<u8> {
    let mut req = vec![5, cmd, 0];
    match target {
        Target::Addr(SocketAddr::V4(a)) => {
            req.push(1);
            req.extend_from_slice(&a.ip().octets());
            req.extend_from_slice(&a.port().to_be_bytes());
        }
        Target::Addr(SocketAddr::V6(a)) => {
            req.push(4);
            req.extend_from_slice(&a.ip().octets());
            req.extend_from_slice(&a.port().to_be_bytes());
        }
        Target::Domain(h, p) => {
            req.push(3);
            req.push(h.len() as u8);
            req.extend_from_slice(h.as_bytes());
            req.extend_from_slice(&p.to_be_bytes());
        }
        Target::Raw(atyp, bytes) => {
            req.push(*atyp);
            req.extend_from_slice(bytes);
        }
    }
    req
}

/// Outcome of a SOCKS5 handshake as the client sees it.
#[derive(Debug, PartialEq, Eq)]
pub enum SocksOutcome {
    /// Method selection answered with this method (0xFF = none acceptable).
    Method(u8),
    /// RFC 1929 status (non-zero = failure).
    Auth(u8),
    /// Reply code to the request and the bound address.
    Reply(u8, Option<SocketAddr>),
}

pub fn read_reply_addr(s: &mut TcpStream) -> Option<SocketAddr> {
    let mut atyp = [0u8; 1];
    s.read_exact(&mut atyp).ok()?;
    match atyp[0] {
        1 => {
            let mut b = [0u8; 6];
            s.read_exact(&mut b).ok()?;
            Some(SocketAddr::from((
                [b[0], b[1], b[2], b[3]],
                u16::from_be_bytes([b[4], b[5]]),
            )))
        }
        4 => {
            let mut b = [0u8; 18];
            s.read_exact(&mut b).ok()?;
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&b[..16]);
            Some(SocketAddr::from((ip, u16::from_be_bytes([b[16], b[17]]))))
        }
        _ => None,
    }
}

/// Full SOCKS5 handshake with username/password; returns the stream and outcome.
pub fn socks5(
    proxy: SocketAddr,
    user: &str,
    pass: &str,
    cmd: u8,
    target: &Target,
) -> (TcpStream, SocksOutcome) {
    let mut s = connect(proxy);
    s.write_all(&[5, 1, 2]).unwrap();
    let mut m = [0u8; 2];
    s.read_exact(&mut m).unwrap();
    assert_eq!(m[0], 5);
    if m[1] != 2 {
        return (s, SocksOutcome::Method(m[1]));
    }
    let mut auth = vec![1, user.len() as u8];
    auth.extend_from_slice(user.as_bytes());
    auth.push(pass.len() as u8);
    auth.extend_from_slice(pass.as_bytes());
    s.write_all(&auth).unwrap();
    let mut a = [0u8; 2];
    s.read_exact(&mut a).unwrap();
    assert_eq!(a[0], 1);
    if a[1] != 0 {
        return (s, SocksOutcome::Auth(a[1]));
    }
    s.write_all(&socks_request(cmd, target)).unwrap();
    let mut r = [0u8; 3];
    s.read_exact(&mut r).unwrap();
    assert_eq!((r[0], r[2]), (5, 0));
    let bound = read_reply_addr(&mut s);
    (s, SocksOutcome::Reply(r[1], bound))
}

/// SOCKS5 CONNECT as alice; panics unless it succeeds.
pub fn socks5_tunnel(proxy: SocketAddr, target: &Target) -> TcpStream {
    let (s, out) = socks5(proxy, "alice", "secret", 1, target);
    match out {
        SocksOutcome::Reply(0, _) => s,
        other => panic!("socks5 connect failed: {other:?}"),
    }
}

/// A parsed HTTP response as a client sees it.
#[derive(Debug)]
pub struct Resp {
    pub code: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Read one response (head + body by Content-Length, chunked, or to close) from `s`.
/// `head_only` for responses that have no body (HEAD, 1xx, CONNECT 200).
pub fn read_response(s: &mut TcpStream, head_only: bool) -> Resp {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).unwrap();
        assert!(
            n == 1,
            "connection closed inside a response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut headers);
    r.parse(&buf).unwrap();
    let code = r.code.unwrap();
    let reason = r.reason.unwrap().to_string();
    let headers: Vec<(String, String)> = r
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let mut resp = Resp {
        code,
        reason,
        headers,
        body: Vec::new(),
    };
    if head_only || (100..200).contains(&code) || code == 204 || code == 304 {
        return resp;
    }
    if let Some(cl) = resp.header("content-length") {
        let mut body = vec![0u8; cl.trim().parse().unwrap()];
        s.read_exact(&mut body).unwrap();
        resp.body = body;
    } else if resp
        .header("transfer-encoding")
        .is_some_and(|t| t.to_ascii_lowercase().contains("chunked"))
    {
        resp.body = read_chunked(s);
    } else {
        s.read_to_end(&mut resp.body).unwrap();
    }
    resp
}

fn read_line(s: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1, "eof in chunked body");
        line.push(b[0]);
    }
    String::from_utf8(line[..line.len() - 2].to_vec()).unwrap()
}

pub fn read_chunked(s: &mut TcpStream) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let size_line = read_line(s);
        let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            while !read_line(s).is_empty() {}
            return body;
        }
        let start = body.len();
        body.resize(start + size, 0);
        s.read_exact(&mut body[start..]).unwrap();
        assert_eq!(read_line(s), "");
    }
}

pub fn basic(user: &str, pass: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

/// Send raw bytes to the proxy and read one response.
pub fn http_raw(proxy: SocketAddr, raw: &[u8]) -> (TcpStream, Resp) {
    let mut s = connect(proxy);
    s.write_all(raw).unwrap();
    let r = read_response(&mut s, false);
    (s, r)
}

/// A forward-proxy GET as alice.
pub fn http_get(proxy: SocketAddr, url: &str) -> Resp {
    let raw = format!(
        "GET {url} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {}\r\n\r\n",
        basic("alice", "secret")
    );
    http_raw(proxy, raw.as_bytes()).1
}

/// Poll `f` until it returns `Some`, for at most `WAIT`: waits on an observable condition,
/// never a fixed sleep.
pub fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// True once the peer has closed the connection (EOF or reset) within `WAIT`.
pub fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Echo `data` through `s` (writer thread + reader here) and return what came back.
pub fn echo_through(s: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    let mut w = s.try_clone().unwrap();
    let payload = data.to_vec();
    let writer = std::thread::spawn(move || {
        for chunk in payload.chunks(64 * 1024) {
            w.write_all(chunk).unwrap();
        }
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut got = Vec::with_capacity(data.len());
    s.read_to_end(&mut got).unwrap();
    writer.join().unwrap();
    got
}

/// Deterministic pseudo-random bytes.
pub fn pattern(n: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Count everything the client writes and reads on its socket.
pub struct Counted {
    pub s: TcpStream,
    pub bytes: u64,
}

impl Counted {
    pub fn new(s: TcpStream) -> Counted {
        Counted { s, bytes: 0 }
    }

    /// An HTTP CONNECT tunnel to `target` as alice, its request and 200 head counted.
    pub fn connect_tunnel(gw: SocketAddr, target: SocketAddr) -> Counted {
        let mut c = Counted::new(connect(gw));
        c.write(
            format!(
                "CONNECT {target} HTTP/1.1\r\nProxy-Authorization: {}\r\n\r\n",
                basic("alice", "secret")
            )
            .as_bytes(),
        );
        let head = c.read_head();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        c
    }

    pub fn write(&mut self, b: &[u8]) {
        self.s.write_all(b).unwrap();
        self.bytes += b.len() as u64;
    }
    pub fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.s.read_exact(&mut v).unwrap();
        self.bytes += n as u64;
        v
    }
    /// Read a response head, returning it.
    pub fn read_head(&mut self) -> String {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.extend(self.read_exact(1));
        }
        String::from_utf8(head).unwrap()
    }
    pub fn echo(&mut self, data: &[u8]) {
        let mut w = self.s.try_clone().unwrap();
        let payload = data.to_vec();
        let writer = std::thread::spawn(move || w.write_all(&payload).unwrap());
        let got = self.read_exact(data.len());
        writer.join().unwrap();
        self.bytes += data.len() as u64;
        assert!(got == data);
    }
}

/// HTTP CONNECT as alice: the stream and the response (its body read when not 200).
pub fn http_connect(gw: SocketAddr, target: SocketAddr) -> (TcpStream, Resp) {
    http_connect_as(gw, "alice", "secret", &target.to_string())
}

/// HTTP CONNECT to `authority` as `user`: the stream and the response (its body read when
/// not 200).
pub fn http_connect_as(
    gw: SocketAddr,
    user: &str,
    pass: &str,
    authority: &str,
) -> (TcpStream, Resp) {
    let mut s = connect(gw);
    let req = format!(
        "CONNECT {authority} HTTP/1.1\r\nProxy-Authorization: {}\r\n\r\n",
        basic(user, pass)
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut r = read_response(&mut s, true);
    if r.code != 200 {
        let n: usize = r.header("content-length").unwrap().parse().unwrap();
        r.body = vec![0; n];
        s.read_exact(&mut r.body).unwrap();
    }
    (s, r)
}

/// Echo as much of `data` as the gateway lets through; returns the bytes that came back.
/// The gateway may cut the tunnel (reset) when the quota runs out.
pub fn echo_until_cut(s: &mut TcpStream, data: &[u8]) -> usize {
    let mut w = s.try_clone().unwrap();
    let payload = data.to_vec();
    let writer = std::thread::spawn(move || {
        for chunk in payload.chunks(16 * 1024) {
            if w.write_all(chunk).is_err() {
                return;
            }
        }
        let _ = w.shutdown(std::net::Shutdown::Write);
    });
    let mut got = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    writer.join().unwrap();
    got
}

/// Bytes a client reads from `streams` in `secs` seconds from its first byte (each stream
/// read on its own thread, all counted together).
pub fn bytes_read_within(streams: Vec<TcpStream>, secs: f64) -> u64 {
    let start = std::sync::Arc::new(std::sync::OnceLock::<std::time::Instant>::new());
    let threads: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            let start = start.clone();
            std::thread::spawn(move || {
                let mut total = 0u64;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = s.read(&mut buf).unwrap_or(0);
                    let t0 = *start.get_or_init(std::time::Instant::now);
                    if n == 0 || t0.elapsed().as_secs_f64() >= secs {
                        return total;
                    }
                    total += n as u64;
                }
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).sum()
}

/// Seconds to move the gateway's wall clock so that it stands `before` seconds ahead of the
/// next UTC midnight (the `fault-injection` clock hook).
pub fn clock_before_midnight(before: i64) -> (String, i64) {
    let now = jiff::Timestamp::now();
    let today = now.to_zoned(jiff::tz::TimeZone::UTC).date();
    let midnight = today
        .tomorrow()
        .unwrap()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .unwrap()
        .timestamp()
        .as_second();
    let offset = midnight - before - now.as_second();
    (offset.to_string(), midnight - 86_400)
}

/// A gateway clock the test moves (the `fault-injection` hook `TOLLGATE_TEST_CLOCK_FILE`):
/// its offset in seconds, read by the gateway at each look at the calendar.
pub struct TestClock {
    dir: tempfile::TempDir,
}

impl TestClock {
    /// A clock standing `before` seconds ahead of the next UTC midnight; also returns the
    /// start of the day it stands in.
    pub fn before_midnight(before: i64) -> (TestClock, i64) {
        let clock = TestClock {
            dir: tempfile::tempdir().unwrap(),
        };
        let (offset, day_start) = clock_before_midnight(before);
        std::fs::write(clock.path(), offset).unwrap();
        (clock, day_start)
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("offset")
    }

    /// The environment that hands this clock to a gateway.
    pub fn env(&self) -> [(&'static str, String); 1] {
        [(
            "TOLLGATE_TEST_CLOCK_FILE",
            self.path().display().to_string(),
        )]
    }

    /// Move the clock to `after` seconds past the next UTC midnight (of the real clock).
    pub fn past_midnight(&self, after: i64) {
        let (offset, _) = clock_before_midnight(-after);
        std::fs::write(self.path(), offset).unwrap();
    }
}

/// Run a real client program; a missing one fails with the hint that installs it.
pub fn run(cmd: &mut std::process::Command) -> std::process::Output {
    cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (scripts/test.sh installs test clients)")
    })
}

/// curl, silent but for errors, bounded to 20 s.
pub fn curl(args: &[&str]) -> std::process::Output {
    run(std::process::Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args))
}

/// A client's stdout as text.
pub fn text(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
