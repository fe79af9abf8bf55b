//! The HTTPS proxy on the same port: a listener with `tls_cert` / `tls_key` serves the HTTP
//! proxy (and SOCKS5) inside TLS, told apart from them by the first byte. Real clients —
//! curl `-x https://`, Python requests through urllib3 2, headless Chromium with
//! `--proxy-server=https://` — and a rustls client the test drives byte by byte for the
//! metering rule: the plan bills the decrypted bytes, exactly what the same exchange costs
//! in the clear.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::origin::{echo_server, http_origin, scripted_origin, Answer};
use common::*;
use futures_rustls::rustls;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

/// A self-signed certificate for `localhost` and 127.0.0.1, written as `cert.pem` and
/// `key.pem` into `dir`; the certificate's PEM is the client's trust anchor.
fn write_cert(dir: &Path) -> String {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let pem = ck.cert.pem();
    std::fs::write(dir.join("cert.pem"), &pem).unwrap();
    std::fs::write(dir.join("key.pem"), ck.key_pair.serialize_pem()).unwrap();
    pem
}

struct Tls {
    gw: Gateway,
    /// The certificate the gateway serves now (PEM), and where it lives.
    ca: String,
    certs: tempfile::TempDir,
}

impl Tls {
    fn ca_file(&self) -> PathBuf {
        let p = self.certs.path().join("ca.pem");
        std::fs::write(&p, &self.ca).unwrap();
        p
    }
}

/// A gateway whose one listener has a certificate; `extra` goes into `[server]`, `users`
/// after the config.
fn gateway(extra: &str, users: &str) -> Tls {
    let certs = tempfile::tempdir().unwrap();
    let ca = write_cert(certs.path());
    let d = certs.path().display();
    let cfg = config(extra, DIRECT_EXIT).replace(
        "network = \"residential\"\n\n[[network]]",
        &format!(
            "network = \"residential\"\ntls_cert = \"{d}/cert.pem\"\ntls_key = \"{d}/key.pem\"\n\n[[network]]"
        ),
    ) + users;
    assert!(cfg.contains("tls_cert = "), "{cfg}");
    let cfg = cfg.replace("[log]", "[admin]\nlisten = \"127.0.0.1:0\"\n\n[log]");
    Tls {
        gw: Gateway::start(&cfg),
        ca,
        certs,
    }
}

type Client = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS session with the gateway, trusting `ca` only.
fn tls_connect(gw: SocketAddr, ca: &str) -> Result<Client, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = connect(gw);
    let mut s = rustls::StreamOwned::new(conn, tcp);
    // Complete the handshake now, so that a refused certificate is this call's error.
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).map_err(|e| e.to_string())?;
    }
    Ok(s)
}

/// Read one response head (through the blank line) from a TLS session.
fn read_head(s: &mut Client) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1, "closed inside a head: {head:?}");
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap()
}

/// curl `-x https://` with `--proxy-cacert`: a forwarded GET, a CONNECT tunnel (`-p`),
/// and the refusals with their status codes and bodies (407 wrong password, 454 bad
/// targeting), as over plain HTTP; the access lines say `proto="https"`.
#[test]
fn curl_through_the_https_proxy() {
    let t = gateway("", "");
    let o = http_origin();
    let ca = t.ca_file();
    let ca = ca.to_str().unwrap();
    let proxy = format!("https://alice:secret@localhost:{}", t.gw.addr().port());
    let url = o.url("/ip");

    let out = curl(&["-x", &proxy, "--proxy-cacert", ca, &url]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out), "127.0.0.1");

    let out = curl(&["-p", "-x", &proxy, "--proxy-cacert", ca, &url]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out), "127.0.0.1");

    let wrong = format!("https://alice:nope@localhost:{}", t.gw.addr().port());
    let out = curl(&[
        "-x",
        &wrong,
        "--proxy-cacert",
        ca,
        "-w",
        "\n%{http_code}",
        &url,
    ]);
    let body = text(&out);
    assert!(body.ends_with("\n407"), "{body}");

    let bad = format!(
        "https://alice-country-zz:secret@localhost:{}",
        t.gw.addr().port()
    );
    let out = curl(&[
        "-p",
        "-x",
        &bad,
        "--proxy-cacert",
        ca,
        "-w",
        "%{http_connect}",
        &url,
    ]);
    assert_eq!(text(&out), "454", "{out:?}");

    // Without the certificate trusted, curl refuses the proxy: the session is really TLS.
    let out = curl(&["-x", &proxy, &url]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("certificate"),
        "{out:?}"
    );
    let log = t.gw.stderr();
    assert!(
        log.lines().any(|l| l.contains("access")
            && l.contains("proto=\"https\"")
            && l.contains("code=200")),
        "{log}"
    );
}

/// The plan bills what the client sent and read inside the session — the CONNECT request,
/// the reply and the tunnel's bytes — to the byte, as in the clear; the handshake and the
/// records' framing are billed to no one. The same exchange over plain HTTP on a second
/// account costs the same.
#[test]
fn tls_bills_the_decrypted_bytes_to_the_byte() {
    let bob = "\n[[user]]\nname = \"bob\"\npassword = \"secret\"\nplan = \"basic\"\nnetworks = [\"residential\"]\n";
    let t = gateway("", bob);
    let echo = echo_server("127.0.0.1:0");
    let data = pattern(300_000);
    let exchange = |s: &mut dyn ReadWrite, user: &str| -> (usize, usize) {
        let req = format!(
            "CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\nProxy-Authorization: {}\r\n\r\n",
            basic(user, "secret")
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut b).unwrap(), 1);
            head.push(b[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
        s.write_all(&data).unwrap();
        let mut back = vec![0u8; data.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, data);
        (req.len(), head.len())
    };
    let mut s = tls_connect(t.gw.addr(), &t.ca).unwrap();
    let (req, reply) = exchange(&mut s, "alice");
    s.conn.send_close_notify();
    let _ = s.flush();
    drop(s);
    let mut plain = connect(t.gw.addr());
    let (plain_req, plain_reply) = exchange(&mut plain, "bob");
    drop(plain);
    assert_eq!((req, reply), (plain_req, plain_reply));
    let want = (req + reply + 2 * data.len()) as u64;
    for user in ["alice", "bob"] {
        eventually(&format!("{user}'s usage stored"), || {
            (t.gw.stored_usage(user).0 == want).then_some(())
        });
    }
    let log = t.gw.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("access") && l.contains("account=\"alice\""))
        .unwrap();
    assert!(line.contains("proto=\"https\""), "{line}");
    assert!(
        line.contains(&format!(
            " up={} down={} ",
            req + data.len(),
            reply + data.len()
        )),
        "{line}"
    );
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Python requests with an `https://` proxy URL (urllib3 2 speaks TLS to the proxy): a GET
/// forwarded inside the session, and a 407; urllib3 itself verifying the proxy's
/// certificate (and refusing the proxy without it).
#[test]
fn python_requests_through_the_https_proxy() {
    let t = gateway("", "");
    let o = http_origin();
    let ca = t.ca_file();
    let script = r#"
import sys, warnings, requests, urllib3
gw, ca, url = sys.argv[1], sys.argv[2], sys.argv[3]
# requests: verifies the proxy's certificate for https:// URLs only (for an http:// URL it
# turns verification off, and warns).
warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
p = {"http": f"https://alice:secret@{gw}", "https": f"https://alice:secret@{gw}"}
r = requests.get(url, proxies=p, verify=ca, timeout=20)
print(r.status_code, r.text)
p = {"http": f"https://alice:nope@{gw}"}
r = requests.get(url, proxies=p, verify=ca, timeout=20)
print(r.status_code, r.text.strip())
# urllib3 2 itself, verifying the proxy against its certificate; without it, refused.
auth = urllib3.make_headers(proxy_basic_auth="alice:secret")
pm = urllib3.ProxyManager(f"https://{gw}", ca_certs=ca, proxy_headers=auth)
r = pm.request("GET", url)
print(r.status, r.data.decode())
try:
    urllib3.ProxyManager(f"https://{gw}", proxy_headers=auth, retries=False).request("GET", url)
    print("unverified proxy accepted")
except urllib3.exceptions.ProxyError as e:
    print("refused", "CERTIFICATE_VERIFY_FAILED" in str(e))
"#;
    let out = run(Command::new("python3").args([
        "-c",
        script,
        &format!("localhost:{}", t.gw.addr().port()),
        ca.to_str().unwrap(),
        &o.url("/ip"),
    ]));
    let stdout = text(&out);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "200 127.0.0.1");
    assert!(lines[1].starts_with("407 "), "{stdout}");
    assert_eq!(lines[2], "200 127.0.0.1");
    assert_eq!(lines[3], "refused True", "{stdout}");
    assert!(t.gw.stderr().contains("proto=\"https\""));
}

/// Headless Chromium with `--proxy-server=https://…`, from an allow-listed address (no
/// credentials: Chromium cannot send them unprompted). The self-signed certificate is
/// accepted for the test with `--ignore-certificate-errors`.
#[test]
fn chromium_through_the_https_proxy() {
    let chromium = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok())
        .expect("chromium not installed (scripts/test.sh installs Debian's chromium)");
    let browser = "\n[[user]]\nname = \"browser\"\npassword = \"unused\"\nplan = \"basic\"\nnetworks = [\"residential\"]\nallow_ips = [\"127.0.0.1/32\"]\n";
    let t = gateway("", browser);
    let o = http_origin();
    let profile = tempfile::tempdir().unwrap();
    let out = run(Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--ignore-certificate-errors",
            "--timeout=15000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!(
            "--proxy-server=https://localhost:{}",
            t.gw.addr().port()
        ))
        .arg("--proxy-bypass-list=<-loopback>")
        .arg("--dump-dom")
        .arg(o.url("/ip")));
    let dom = text(&out);
    // The page's body is the address the origin saw (an error page would show the URL, which
    // also holds 127.0.0.1: the access line below is what proves the page came through).
    assert!(
        dom.contains("<pre") && dom.contains(">127.0.0.1</pre>"),
        "dom: {dom}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = t.gw.stderr();
    let target = format!("target={}", o.addr);
    assert!(
        log.lines().any(|l| l.contains("access")
            && l.contains("proto=\"https\"")
            && l.contains("account=\"browser\"")
            && l.contains(&target)
            && l.contains("code=200")),
        "{log}"
    );
}

/// SOCKS5 inside the TLS session works too (clients such as gost speak it).
#[test]
fn socks5_inside_tls() {
    let t = gateway("", "");
    let echo = echo_server("127.0.0.1:0");
    let mut s = tls_connect(t.gw.addr(), &t.ca).unwrap();
    s.write_all(&[5, 1, 2]).unwrap();
    let mut m = [0u8; 2];
    s.read_exact(&mut m).unwrap();
    assert_eq!(m, [5, 2]);
    s.write_all(&[&[1u8, 5][..], b"alice", &[6], b"secret"].concat())
        .unwrap();
    s.read_exact(&mut m).unwrap();
    assert_eq!(m, [1, 0]);
    s.write_all(&socks_request(1, &Target::Addr(echo))).unwrap();
    let mut r = [0u8; 10];
    s.read_exact(&mut r).unwrap();
    assert_eq!(r[1], 0);
    s.write_all(b"over tls").unwrap();
    let mut back = [0u8; 8];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"over tls");
    drop(s);
    eventually("the access line", || {
        t.gw.stderr().contains("proto=\"socks5+tls\"").then_some(())
    });
}

/// A listener without a certificate answers a ClientHello with a TLS alert (curl reports
/// "alert handshake failure"), never silence; the attempt is counted.
#[test]
fn a_listener_without_a_certificate_answers_with_an_alert() {
    let cfg =
        config("", DIRECT_EXIT).replace("[log]", "[admin]\nlisten = \"127.0.0.1:0\"\n\n[log]");
    let gw = Gateway::start(&cfg);
    let o = http_origin();
    let proxy = format!("https://alice:secret@127.0.0.1:{}", gw.addr().port());
    let out = curl(&["-x", &proxy, "--proxy-insecure", &o.url("/ip")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("alert handshake failure"), "{err}");
    eventually("the refusal counted", || {
        gw.metric(&format!(
            "tollgate_tls_handshakes_total{{listener=\"{}\",result=\"no_certificate\"}}",
            gw.addr()
        ))
        .filter(|v| *v >= 1.0)
    });
}

/// The handshake counts toward `handshake_timeout`: a client that starts a ClientHello
/// and stalls is closed, and counted as a timeout; a garbage ClientHello is closed too.
#[test]
fn a_stalled_handshake_is_closed_at_handshake_timeout() {
    let t = gateway("handshake_timeout = \"1s\"", "");
    let mut s = connect(t.gw.addr());
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
    assert!(closed_by_peer(&mut s), "held open past handshake_timeout");
    let mut s = connect(t.gw.addr());
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x04, 0xff, 0xff, 0xff, 0xff])
        .unwrap();
    assert!(closed_by_peer(&mut s));
    for result in ["timeout", "failed"] {
        eventually(result, || {
            t.gw.metric(&format!(
                "tollgate_tls_handshakes_total{{listener=\"{}\",result=\"{result}\"}}",
                t.gw.addr()
            ))
            .filter(|v| *v >= 1.0)
        });
    }
}

/// SIGHUP re-reads the certificate: new sessions get the new one. A bad file keeps the old
/// one, and the log says why.
#[test]
fn sighup_reloads_the_certificate_and_a_bad_one_is_refused() {
    let t = gateway("", "");
    let old = t.ca.clone();
    assert!(tls_connect(t.gw.addr(), &old).is_ok());
    let new = write_cert(t.certs.path());
    t.gw.signal(libc::SIGHUP);
    eventually("the new certificate served", || {
        tls_connect(t.gw.addr(), &new).ok().map(|_| ())
    });
    assert!(tls_connect(t.gw.addr(), &old).is_err());

    std::fs::write(t.certs.path().join("key.pem"), "not a key\n").unwrap();
    t.gw.signal(libc::SIGHUP);
    let why = eventually("the refusal logged", || {
        t.gw.stderr()
            .lines()
            .find(|l| l.contains("reload rejected") && l.contains("tls_key"))
            .map(str::to_owned)
    });
    assert!(why.contains("key.pem"), "{why}");
    let mut s = tls_connect(t.gw.addr(), &new).expect("the running certificate is kept");
    let o = http_origin();
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nProxy-Authorization: {}\r\nConnection: close\r\n\r\n",
        o.url("/ip"),
        o.addr,
        basic("alice", "secret")
    );
    s.write_all(req.as_bytes()).unwrap();
    assert!(read_head(&mut s).starts_with("HTTP/1.1 200"));
}

/// A client that ends its TLS session (close_notify, then its close) while the origin still
/// thinks is gone, as in the clear: its thread comes back at once, not when the origin
/// answers. (The close_notify record is bytes on the wire, not yet the close.)
#[test]
fn a_tls_client_that_leaves_a_slow_origin_frees_its_slot_at_once() {
    let solo = "\n[[plan]]\nname = \"one\"\nbandwidth = \"10GiB\"\nthreads = 1\n\n[[user]]\nname = \"solo\"\npassword = \"secret\"\nplan = \"one\"\nnetworks = [\"residential\"]\n";
    let t = gateway("", solo);
    // The first request is never answered; later ones are.
    let o = scripted_origin(|n, _| {
        if n == 0 {
            Answer::Hold(Vec::new())
        } else {
            Answer::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfine".to_vec())
        }
    });
    let get = |path: &str| {
        format!(
            "GET {} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {}\r\n\r\n",
            o.url(path),
            basic("solo", "secret")
        )
    };
    let mut s = tls_connect(t.gw.addr(), &t.ca).unwrap();
    s.write_all(get("/slow").as_bytes()).unwrap();
    s.flush().unwrap();
    eventually("the origin to hold the request", || {
        (o.requests.load(std::sync::atomic::Ordering::SeqCst) == 1).then_some(())
    });
    s.conn.send_close_notify();
    s.flush().unwrap();
    drop(s);
    // idle_timeout is 5 minutes: only noticing the close frees the thread in time.
    eventually("the thread back", || {
        let mut s = tls_connect(t.gw.addr(), &t.ca).ok()?;
        s.write_all(get("/").as_bytes()).ok()?;
        s.flush().ok()?;
        let head = read_head(&mut s);
        head.starts_with("HTTP/1.1 200").then_some(())
    });
}
