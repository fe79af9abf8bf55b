#!/usr/bin/env python3
"""Accounts at scale: memory per idle account, start-up time, and the accounts API's write
latency while the gateway serves load.

usage: bench_accounts.py TOLLGATE_BIN   (env: BENCH_ACCOUNTS=1000000, BENCH_WRITES=300,
       BENCH_PASSWORD_WRITES=30, BENCH_LOAD_SECS=15)

For N store accounts (and for 10, the baseline) it fills a fresh state directory (one plan
through `tollgate plan put`, one argon2id hash through `tollgate account put`, then N rows
copied with that hash), starts the gateway and reports:
  - start_s: from exec to the "ready" line (the whole store loaded);
  - RSS at start, after a SIGHUP reload, and after every account logged in once is
    not measured (state is created on first use and dropped when idle);
  - bytes per idle account: (RSS(N) - RSS(10)) / (N - 10), at start and after the reload;
  - a login of the last account (served: the lookup is one hash probe whatever N);
  - API writes while SOCKS5 tunnels are opened and closed in a loop: PATCH (no password),
    PUT of a new account with a `password_hash` made by the caller, and PUT with a password
    (argon2id hashing included), p50 / p99 / max in ms;
  - dashboard pages under the same load: the account list searched by a name prefix, and
    an account's page.
Every loop is bounded in count and time; only 127.0.0.1 is used.
"""
import http.client
import shutil
import json
import os
import signal
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

BIN = os.path.abspath(sys.argv[1])
N = int(os.environ.get("BENCH_ACCOUNTS", "1000000"))
WRITES = int(os.environ.get("BENCH_WRITES", "300"))
PW_WRITES = int(os.environ.get("BENCH_PASSWORD_WRITES", "30"))
LOAD_SECS = float(os.environ.get("BENCH_LOAD_SECS", "15"))
TOKEN = "bench-token-0123456789abcdef"
PASSWORD = "bench-pw"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def config(admin_port):
    return f"""
[server]
workers = 2
allow_private_targets = true
[admin]
listen = "127.0.0.1:{admin_port}"
per_account_metrics = false
api_token_file = "token"
[log]
level = "warn,tollgate::runtime=info,tollgate::audit=warn"
[[listener]]
listen = "127.0.0.1:0"
network = "n"
[[network]]
name = "n"
[[exit]]
network = "n"
kind = "direct"
[[plan]]
name = "file-plan"
bandwidth = "1GiB"
threads = 10
"""


def run(args, cwd, stdin=""):
    out = subprocess.run([BIN, *args], cwd=cwd, input=stdin, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(args)}: {out.stderr}")
    return out.stdout


def fill(d, n):
    """A state directory with n store accounts acct0..acct{n-1} on plan 'p'."""
    run(["plan", "put", "p", "--bandwidth", "10GiB", "--threads", "50", "--config", "cfg.toml"], d)
    run(["account", "put", "seed", "--plan", "p", "--network", "n", "--config", "cfg.toml"], d, PASSWORD + "\n")
    db = sqlite3.connect(os.path.join(d, "state", "usage.sqlite3"))
    (phc,) = db.execute("SELECT password_hash FROM accounts WHERE name = 'seed'").fetchone()
    db.execute("DELETE FROM accounts")
    now = int(time.time())
    batch = 50_000
    for start in range(0, n, batch):
        rows = [
            (f"acct{i}", phc, "p", '["n"]', "[]", 1, None, now, now)
            for i in range(start, min(n, start + batch))
        ]
        db.executemany("INSERT INTO accounts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    db.commit()
    db.close()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Gateway:
    def __init__(self, d):
        self.d = d
        self.err = open(os.path.join(d, "stderr.log"), "w")
        t0 = time.monotonic()
        self.p = subprocess.Popen([BIN, "--config", "cfg.toml"], cwd=d, stdout=subprocess.PIPE,
                                  stderr=self.err, text=True)
        self.addr = None
        for line in self.p.stdout:
            if line.startswith("listening "):
                h, port = line.split()[1].rsplit(":", 1)
                self.addr = (h, int(port))
            if line.startswith("ready"):
                break
        self.start_s = time.monotonic() - t0

    def log(self):
        with open(os.path.join(self.d, "stderr.log")) as f:
            return f.read()

    def reload(self):
        before = self.log().count("configuration reloaded")
        self.p.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while self.log().count("configuration reloaded") == before:
            if time.monotonic() > deadline:
                sys.exit("reload not seen")
            time.sleep(0.05)

    def stop(self):
        self.p.kill()
        self.p.wait()


def echo_server():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(512)

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=lambda c=c: (c.sendall(c.recv(64)), c.close()), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return srv.getsockname()


def socks_once(gw, user, target):
    s = socket.create_connection(gw, timeout=10)
    try:
        s.sendall(b"\x05\x01\x02")
        assert s.recv(2) == b"\x05\x02"
        u, p = user.encode(), PASSWORD.encode()
        s.sendall(bytes([1, len(u)]) + u + bytes([len(p)]) + p)
        if s.recv(2) != b"\x01\x00":
            return False
        s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(target[0]) + struct.pack(">H", target[1]))
        r = s.recv(10)
        if len(r) < 2 or r[1] != 0:
            return False
        s.sendall(b"ping")
        return s.recv(4) == b"ping"
    finally:
        s.close()


def measure(n):
    d = tempfile.mkdtemp(prefix=f"tg-accounts-{n}-")
    admin = free_port()
    with open(os.path.join(d, "cfg.toml"), "w") as f:
        f.write(config(admin))
    with open(os.path.join(d, "token"), "w") as f:
        f.write(TOKEN)
    t0 = time.monotonic()
    fill(d, n)
    fill_s = time.monotonic() - t0
    gw = Gateway(d)
    time.sleep(1)
    out = {"accounts": n, "fill_s": round(fill_s, 1), "start_s": round(gw.start_s, 2),
           "rss_start_kib": rss_kib(gw.p.pid)}
    gw.reload()
    time.sleep(1)
    out["rss_reload_kib"] = rss_kib(gw.p.pid)
    echo = echo_server()
    out["last_account_served"] = socks_once(gw.addr, f"acct{n - 1}", echo)
    return gw, admin, echo, out


def api_latency(gw, admin, echo, n):
    stop = time.monotonic() + LOAD_SECS
    served = [0]

    def load():
        i = 0
        while time.monotonic() < stop and i < 1_000_000:
            if socks_once(gw.addr, f"acct{i % 50}", echo):
                served[0] += 1
            i += 1

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=30)
    hdr = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

    def call(method, path, body):
        t = time.monotonic()
        conn.request(method, path, body=json.dumps(body), headers=hdr)
        r = conn.getresponse()
        r.read()
        assert r.status in (200, 201), (method, path, r.status)
        return (time.monotonic() - t) * 1000

    patch = [call("PATCH", f"/v1/accounts/acct{(i * 7919) % n}", {"enabled": True}) for i in range(WRITES)]
    put = [call("PUT", f"/v1/accounts/new{i}", {"password": "pw-" + str(i), "plan": "p", "networks": ["n"]})
           for i in range(PW_WRITES)]
    db = sqlite3.connect(os.path.join(gw.d, "state", "usage.sqlite3"))
    (phc,) = db.execute("SELECT password_hash FROM accounts WHERE name = 'acct0'").fetchone()
    db.close()
    put_hash = [call("PUT", f"/v1/accounts/hashed{i}", {"password_hash": phc, "plan": "p", "networks": ["n"]})
                for i in range(WRITES)]

    def page(path):
        t = time.monotonic()
        conn.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
        r = conn.getresponse()
        r.read()
        assert r.status == 200, (path, r.status)
        return (time.monotonic() - t) * 1000

    list_pages = [page(f"/?q=acct{(i * 7) % 1000}") for i in range(100)]
    account_pages = [page(f"/accounts/acct{(i * 7919) % n}") for i in range(100)]
    for t in threads:
        t.join()

    def stats(v):
        v = sorted(v)
        return {"p50_ms": round(statistics.median(v), 2), "p99_ms": round(v[min(len(v) - 1, int(len(v) * 0.99))], 2),
                "max_ms": round(v[-1], 2), "n": len(v)}

    return {"patch": stats(patch), "put_with_password_hash": stats(put_hash),
            "put_with_password": stats(put), "dashboard_list": stats(list_pages),
            "dashboard_account": stats(account_pages), "tunnels_during": served[0]}


def main():
    base_gw, _, _, base = measure(10)
    base_gw.stop()
    shutil.rmtree(base_gw.d, ignore_errors=True)
    gw, admin, echo, big = measure(N)
    lat = api_latency(gw, admin, echo, N)
    gw.stop()
    shutil.rmtree(gw.d, ignore_errors=True)
    per = lambda k: round((big[k] - base[k]) * 1024 / (N - 10), 1)
    report = {"baseline_10": base, "big": big, "bytes_per_idle_account_start": per("rss_start_kib"),
              "bytes_per_idle_account_after_reload": per("rss_reload_kib"), "api_under_load": lat}
    print(json.dumps(report, indent=2))
    print()
    print(f"{'':32} {'10 accounts':>14} {f'{N:,} accounts':>18}")
    print(f"{'start-up, s':32} {base['start_s']:>14} {big['start_s']:>18}")
    print(f"{'RSS at start, MiB':32} {base['rss_start_kib'] / 1024:>14.1f} {big['rss_start_kib'] / 1024:>18.1f}")
    print(f"{'RSS after SIGHUP reload, MiB':32} {base['rss_reload_kib'] / 1024:>14.1f} {big['rss_reload_kib'] / 1024:>18.1f}")
    print(f"bytes per idle account: {report['bytes_per_idle_account_start']} at start, "
          f"{report['bytes_per_idle_account_after_reload']} after a reload")
    print(f"last account served: {big['last_account_served']}")
    for k in ("patch", "put_with_password_hash", "put_with_password", "dashboard_list",
              "dashboard_account"):
        s = lat[k]
        print(f"API {k:<23} p50 {s['p50_ms']} ms  p99 {s['p99_ms']} ms  max {s['max_ms']} ms  (n={s['n']}, "
              f"{lat['tunnels_during']} tunnels served meanwhile)")


if __name__ == "__main__":
    main()
