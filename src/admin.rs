//! The admin listener: `/metrics` (OpenMetrics text) and `/healthz`. A small blocking
//! server on its own thread, so a scrape never competes with an executor.

use crate::metrics::{render, Metrics};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// What `/healthz` consults.
pub trait Health: Send + Sync {
    /// `Ok` while every executor serves; `Err(reason)` while draining or when one stalls.
    fn check(&self) -> Result<(), String>;
}

/// Bind the admin address and serve it on a thread. Returns the bound address.
pub fn start(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<dyn Health>,
) -> Result<SocketAddr, String> {
    let listener =
        TcpListener::bind(addr).map_err(|e| format!("[admin] listen = \"{addr}\": {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    std::thread::Builder::new()
        .name("tollgate-admin".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                serve(conn, &metrics, health.as_ref());
            }
        })
        .map_err(|e| format!("cannot start admin thread: {e}"))?;
    Ok(bound)
}

fn serve(mut conn: TcpStream, metrics: &Arc<Metrics>, health: &dyn Health) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; 2048];
    let mut len = 0;
    let path = loop {
        match conn.read(&mut buf[len..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => len += n,
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => break req.path.unwrap_or("/").to_owned(),
            Ok(httparse::Status::Partial) if len < buf.len() => continue,
            _ => {
                respond(&mut conn, "400 Bad Request", "text/plain", "bad request\n");
                return;
            }
        }
    };
    match path.split('?').next().unwrap_or("") {
        "/metrics" => respond(
            &mut conn,
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            &render(metrics.clone()),
        ),
        "/healthz" => match health.check() {
            Ok(()) => respond(&mut conn, "200 OK", "text/plain", "ok\n"),
            Err(why) => respond(
                &mut conn,
                "503 Service Unavailable",
                "text/plain",
                &format!("{why}\n"),
            ),
        },
        _ => respond(&mut conn, "404 Not Found", "text/plain", "not found\n"),
    }
}

fn respond(conn: &mut TcpStream, status: &str, ctype: &str, body: &str) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(body.as_bytes());
}
