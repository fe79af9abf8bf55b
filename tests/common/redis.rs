//! A real `redis-server` on an ephemeral loopback port, for the cluster tests (Debian's
//! package; `scripts/test.sh` installs it). Killed on drop.

use super::{eventually, WAIT};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl Redis {
    pub fn start() -> Redis {
        let mut r = Redis {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
        };
        r.restart();
        r
    }

    /// (Re)start on the same port, with empty data (no persistence): what a Redis that
    /// lost its memory looks like to the gateways.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}): install it (scripts/test.sh does: apt-get install redis-server)")
            });
        self.child = Some(child);
        eventually("redis-server to answer PING", || {
            self.command(&["PING"])
                .is_some_and(|r| r.starts_with("+PONG"))
                .then_some(())
        });
    }

    /// A handle on a server another `Redis` runs (for commands from another thread); it
    /// does not stop the server when dropped.
    pub fn attach(port: u16) -> Redis {
        Redis {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Kill it (as a crash or a network loss looks to the gateways).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// One command over RESP; the raw reply, as far as one read returns it (None when
    /// unreachable).
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(WAIT)).ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).ok()?;
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
