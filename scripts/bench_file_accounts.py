#!/usr/bin/env python3
"""Accounts of the config file at scale: RSS with N `[[user]]` entries (and with 10), at
start and after a SIGHUP reload, for one or more tollgate binaries in one run.

usage: bench_file_accounts.py TOLLGATE_BIN [MORE_BINS...]   (env: BENCH_ACCOUNTS=100000)
Loopback only; every wait is bounded.
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

N = int(os.environ.get("BENCH_ACCOUNTS", "100000"))


def config(n):
    head = """[server]
workers = 2
[admin]
listen = "127.0.0.1:0"
per_account_metrics = false
[log]
level = "warn,tollgate::runtime=info"
[[listener]]
listen = "127.0.0.1:0"
network = "n"
[[network]]
name = "n"
[[exit]]
network = "n"
kind = "direct"
[[plan]]
name = "p"
bandwidth = "10GiB"
threads = 10
"""
    users = "".join(
        f'[[user]]\nname = "user{i}"\npassword = "pw{i}"\nplan = "p"\nnetworks = ["n"]\n'
        for i in range(n))
    return head + users


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def measure(binary, n):
    d = tempfile.mkdtemp(prefix=f"tg-file-{n}-")
    with open(os.path.join(d, "cfg.toml"), "w") as f:
        f.write(config(n))
    err = open(os.path.join(d, "stderr.log"), "w")
    t0 = time.monotonic()
    p = subprocess.Popen([os.path.abspath(binary), "--config", "cfg.toml"], cwd=d,
                         stdout=subprocess.PIPE, stderr=err, text=True)
    for line in p.stdout:
        if line.startswith("ready"):
            break
    start_s = time.monotonic() - t0
    time.sleep(1)
    at_start = rss_kib(p.pid)
    log = lambda: open(os.path.join(d, "stderr.log")).read()
    p.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 120
    while "configuration reloaded" not in log() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1)
    after = rss_kib(p.pid)
    p.kill()
    p.wait()
    shutil.rmtree(d, ignore_errors=True)
    return start_s, at_start, after


for binary in sys.argv[1:]:
    _, base_start, base_reload = measure(binary, 10)
    start_s, rss_start, rss_reload = measure(binary, N)
    per = lambda a, b: (a - b) * 1024 / (N - 10)
    print(f"{binary}: {N:,} file accounts: start {start_s:.2f} s, RSS {rss_start / 1024:.1f} MiB at start "
          f"({per(rss_start, base_start):.0f} B/account), {rss_reload / 1024:.1f} MiB after a reload "
          f"({per(rss_reload, base_reload):.0f} B/account)")
