#!/usr/bin/env python3
"""Soak tollgate: mixed load for a set time, then check it leaked nothing and lost no metering.

usage: soak.py BINARY DURATION_SECONDS   (SOAK_CLUSTER=1: the gateway is a cluster node on a
                                          local redis-server it starts; SOAK_KEEP=1: keep
                                          its scratch directory, removed at exit by default)

Starts local origins (echo, HTTP, a resetting one) and tollgate on 127.0.0.1 ephemeral ports,
then drives both protocols with good traffic, auth failures, targeting errors, quota
exhaustion and upstream faults from a few threads. Every loop is bounded by the duration
and an operation cap. Checks at the end:
  - no panics (tollgate_panics_total == 0) and the process is alive;
  - RSS after warm-up stays within 10% (sampled every 5 s);
  - fds back to the post-warm-up baseline once the load stops;
  - stored usage of the metered account equals the bytes its clients sent plus received;
  - with SOAK_CLUSTER=1 also: no Redis errors, no thread slot left held in Redis, and every
    unspent bandwidth grant handed back.
"""
import atexit
import base64
import http.server
import os
import re
import shutil
import socket
import socketserver
import struct
import subprocess
import sys
import tempfile
import threading
import time

BIN, DURATION = sys.argv[1], float(sys.argv[2])
MAX_OPS_PER_THREAD = 2_000_000
stop = threading.Event()


def serve_forever(srv):
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv.server_address[1]


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        try:
            while True:
                b = self.request.recv(65536)
                if not b:
                    break
                self.request.sendall(b)
        except OSError:
            pass  # the gateway cut the tunnel (quota) or the client reset it


class Reset(socketserver.BaseRequestHandler):
    def handle(self):
        try:
            self.request.recv(1024)
            self.request.sendall(b"x" * 50_000)
        except OSError:
            return
        self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class Origin(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_GET(self):
        body = b"ok" * 500
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class TS(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


echo_port = serve_forever(TS(("127.0.0.1", 0), Echo))
reset_port = serve_forever(TS(("127.0.0.1", 0), Reset))
http_port = serve_forever(TS(("127.0.0.1", 0), Origin))
dead = socket.socket()
dead.bind(("127.0.0.1", 0))
dead_port = dead.getsockname()[1]
dead.close()

work = tempfile.mkdtemp(prefix="tollgate-soak-")
if os.environ.get("SOAK_KEEP") != "1":
    atexit.register(shutil.rmtree, work, ignore_errors=True)
CLUSTER = os.environ.get("SOAK_CLUSTER") == "1"
redis = None
cluster_section = ""
if CLUSTER:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    redis_port = s.getsockname()[1]
    s.close()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", work],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", redis_port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.05)
    cluster_section = f'[cluster]\nredis = "redis://127.0.0.1:{redis_port}/0"\nnode = "soak"\n'


def redis_cmd(*args):
    """One Redis command over RESP; the raw reply."""
    with socket.create_connection(("127.0.0.1", redis_port), timeout=5) as c:
        c.sendall(f"*{len(args)}\r\n".encode() + b"".join(f"${len(a)}\r\n{a}\r\n".encode() for a in args))
        return c.recv(65536).decode(errors="replace")


config = f"""
[server]
workers = 2
allow_private_targets = true
idle_timeout = "5s"
handshake_timeout = "3s"
usage_flush = "1s"
[admin]
listen = "127.0.0.1:0"
[log]
level = "warn"
[security]
auth_failures = 1000000
[[listener]]
listen = "127.0.0.1:0"
network = "res"
[[network]]
name = "res"
targeting = true
[[exit]]
network = "res"
kind = "direct"
country = "us"
state = "ca"
city = "losangeles"
[[exit]]
network = "res"
kind = "direct"
country = "de"
[[plan]]
name = "big"
bandwidth = "1TiB"
threads = 10000
[[plan]]
name = "tiny"
bandwidth = "256KiB"
threads = 10000
[[user]]
name = "meter"
password = "pw"
plan = "big"
networks = ["res"]
[[user]]
name = "load"
password = "pw"
plan = "big"
networks = ["res"]
[[user]]
name = "tiny"
password = "pw"
plan = "tiny"
networks = ["res"]
{cluster_section}"""
open(os.path.join(work, "tollgate.toml"), "w").write(config)
proc = subprocess.Popen([BIN, "--config", "tollgate.toml"], cwd=work,
                        stdout=subprocess.PIPE, stderr=open(os.path.join(work, "stderr.log"), "w"), text=True)
gw = admin = None
for line in proc.stdout:
    if line.startswith("listening "):
        h, p = line.split()[1].rsplit(":", 1)
        gw = (h, int(p))
    if line.startswith("admin "):
        h, p = line.split()[1].rsplit(":", 1)
        admin = (h, int(p))
    if line.startswith("ready"):
        break
assert gw and admin, "gateway did not start"


def admin_get(path):
    s = socket.create_connection(admin, timeout=10)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    data = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        data += b
    s.close()
    return data.decode(errors="replace").split("\r\n\r\n", 1)[1]


def metric(series):
    for line in admin_get("/metrics").splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def rss_kb():
    for line in open(f"/proc/{proc.pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fds():
    return len(os.listdir(f"/proc/{proc.pid}/fd"))


class Counted:
    """A socket that counts every byte sent and received."""

    def __init__(self):
        self.s = socket.create_connection(gw, timeout=10)
        self.n = 0

    def send(self, b):
        self.s.sendall(b)
        self.n += len(b)

    def recv_exact(self, n):
        out = b""
        while len(out) < n:
            b = self.s.recv(n - len(out))
            if not b:
                raise ConnectionError("closed")
            out += b
        self.n += n
        return out

    def close(self):
        self.s.close()


metered = [0]
metered_lock = threading.Lock()
ops = {}


def count(kind):
    ops[kind] = ops.get(kind, 0) + 1


def socks(user, pw, port, payload, counted=None):
    c = counted or Counted()
    try:
        c.send(b"\x05\x01\x02")
        if c.recv_exact(2) != b"\x05\x02":
            return "method"
        c.send(bytes([1, len(user)]) + user.encode() + bytes([len(pw)]) + pw.encode())
        if c.recv_exact(2)[1] != 0:
            return "auth"
        c.send(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack(">H", port))
        rep = c.recv_exact(10)
        if rep[1] != 0:
            return f"reply{rep[1]}"
        c.send(payload)
        c.recv_exact(len(payload))
        return "ok"
    except (OSError, ConnectionError):
        return "io"
    finally:
        c.close()


def metered_loop():
    for _ in range(MAX_OPS_PER_THREAD):
        if stop.is_set():
            return
        c = Counted()
        r = socks("meter", "pw", echo_port, os.urandom(1) * 20_000, c)
        assert r == "ok", f"metered tunnel failed: {r}"
        with metered_lock:
            metered[0] += c.n
        count("metered")


def auth(user, pw):
    return "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()


def http(user, pw, method="GET", path="/", body=b""):
    try:
        s = socket.create_connection(gw, timeout=10)
        req = (f"{method} http://127.0.0.1:{http_port}{path} HTTP/1.1\r\nProxy-Authorization: {auth(user, pw)}\r\n"
               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
        s.sendall(req)
        data = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
        s.close()
        m = re.match(rb"HTTP/1.1 (\d+)", data)
        return int(m.group(1)) if m else 0
    except OSError:
        return -1


def mixed_loop(seed):
    i = seed
    for _ in range(MAX_OPS_PER_THREAD):
        if stop.is_set():
            return
        i += 1
        k = i % 10
        if k == 0:
            count(f"http-get:{http('load', 'pw')}")
        elif k == 1:
            count(f"http-post:{http('load', 'pw', 'POST', '/', os.urandom(8) * 4000)}")
        elif k == 2:
            count(f"socks:{socks('load-country-us-state-ca', 'pw', echo_port, b'z' * 5000)}")
        elif k == 3:
            count(f"wrong-password:{http('load', 'nope')}")
        elif k == 4:
            count(f"targeting:{http('load-country-zz', 'pw')}")
        elif k == 5:
            count(f"quota:{socks('tiny', 'pw', echo_port, b'q' * 100_000)}")
        elif k == 6:
            count(f"refused:{socks('load', 'pw', dead_port, b'r')}")
        elif k == 7:
            count(f"reset:{socks('load', 'pw', reset_port, b'go')}")
        elif k == 8:
            count(f"session:{http('load-session-s' + str(i % 50) + '-ttl-5', 'pw')}")
        else:
            count(f"ttl:{http('load-ttl-0', 'pw')}")


threads = [threading.Thread(target=metered_loop, daemon=True)]
threads += [threading.Thread(target=mixed_loop, args=(n * 3,), daemon=True) for n in range(5)]
start = time.time()
for t in threads:
    t.start()
warm = max(20.0, DURATION * 0.2)
samples = []
while time.time() - start < DURATION:
    time.sleep(5)
    if proc.poll() is not None:
        sys.exit("FAIL: tollgate exited during the soak")
    samples.append((time.time() - start, rss_kb()))
stop.set()
for t in threads:
    t.join(timeout=60)
elapsed = time.time() - start

# Load stopped: let connections close (idle timeout 5 s) and usage flush.
deadline = time.time() + 60
while time.time() < deadline and metric("tollgate_connections_active") > 0:
    time.sleep(0.5)
time.sleep(2.5)  # one usage_flush + the 1 s settle tick
stored = None
out = subprocess.run([BIN, "usage", "show", "--config", "tollgate.toml"], cwd=work, capture_output=True, text=True).stdout
for line in out.splitlines():
    f = line.split()
    if f and f[0] == "meter":
        stored = int(f[2])

after = [r for t, r in samples if t >= warm]
base_rss = after[0] if after else 0
peak_rss = max(after) if after else 0
end_rss = after[-1] if after else 0
panics = metric("tollgate_panics_total")
fd_end = fds()
print(f"soak: {elapsed:.0f}s, operations: {sum(ops.values())}")
for k in sorted(ops):
    print(f"  {k:>28}: {ops[k]}")
print(f"RSS after warm-up: first {base_rss} KiB, peak {peak_rss} KiB, last {end_rss} KiB "
      f"({(end_rss - base_rss) * 100.0 / max(base_rss, 1):+.1f}%)")
print(f"fds at the end: {fd_end}")
print(f"panics: {panics:.0f}")
print(f"metered account: client counted {metered[0]} bytes, store says {stored}")
failures = []
if panics != 0:
    failures.append("panics")
if base_rss and end_rss > base_rss * 1.10:
    failures.append("RSS grew more than 10% after warm-up")
if stored != metered[0]:
    failures.append("stored usage differs from the client's count")
if fd_end > 40:
    failures.append(f"fds not back to baseline ({fd_end})")
if CLUSTER:
    errors = metric("tollgate_cluster_redis_errors_total")
    slots = {a: redis_cmd("HGETALL", f"tollgate:threads:{a}") for a in ("meter", "load", "tiny")}
    grants = {a: redis_cmd("HKEYS", f"tollgate:bw:{a}") for a in ("meter", "load", "tiny")}
    print(f"cluster: redis errors {errors:.0f}; slots held in redis: "
          f"{ {a: r.split()[0] for a, r in slots.items()} }; grants out: "
          f"{ {a: 'out:' in r for a, r in grants.items()} }")
    if errors != 0:
        failures.append("redis errors")
    if any(r.split()[0] != "*0" for r in slots.values()):
        failures.append("thread slots left held in redis")
    if any("out:" in r for r in grants.values()):
        failures.append("bandwidth grants not handed back")
proc.terminate()
proc.wait(timeout=60)
if redis:
    redis.kill()
    redis.wait()
print("soak:", "FAIL: " + "; ".join(failures) if failures else "all checks passed")
sys.exit(1 if failures else 0)
