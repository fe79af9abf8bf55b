#!/usr/bin/env python3
"""How new-tunnel figures move with concurrency, and what a SIGHUP reload of a large account
file does to tunnel latency while it happens.

usage: bench_growth.py TOLLGATE_BIN LOADGEN_BIN
       (env: BENCH_SECS=3, BENCH_CONC=1,32,1000, BENCH_HOLD=10000, BENCH_ACCOUNTS=100000,
       BENCH_LOADGEN_SCHED=normal|batch, default normal: see bench.py)

1. For each concurrency: SOCKS5 tunnels (auth, 64-byte echo, close) through tollgate with 2
   executors — tunnels/s, per proxy CPU-second, p50/p99 of one tunnel's open-echo-close — and
   the same open-echo-close straight to the echo target (tunnels-direct): the added latency
   is the difference.
2. A gateway with BENCH_ACCOUNTS [[user]] entries: the same load at concurrency 32, once
   undisturbed and once while it is sent SIGHUP every second (each reload re-reads and
   re-validates every account); the p99 of each.
The load generator runs a thread per connection, and so do its targets: at 10,000 on a
2-vCPU machine they, not the gateway, saturate (BENCH_CONC=10000 to try it anyway). So the
10,000 row (BENCH_HOLD) is 32 threads opening and closing tunnels beside BENCH_HOLD - 32
tunnels held open and idle for the whole run (the direct baseline beside as many direct
connections); the proxy's CPU is counted from when the held ones are open.
Loopback only; every loop is bounded in count and time.
"""
import atexit
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

TOLLGATE, LOADGEN = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
SECS = float(os.environ.get("BENCH_SECS", "3"))
CONCS = [int(c) for c in os.environ.get("BENCH_CONC", "1,32,1000").split(",")]
HOLD = int(os.environ.get("BENCH_HOLD", "10000"))
# Normal policy by default here: these rows are about latency, which a batch-policy load
# generator (woken only at the next tick when the CPU is busy) would inflate.
SCHED = os.environ.get("BENCH_LOADGEN_SCHED", "normal")
ACCOUNTS = int(os.environ.get("BENCH_ACCOUNTS", "100000"))
TICK = os.sysconf("SC_CLK_TCK")


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 200_000) if hard != resource.RLIM_INFINITY else 200_000
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def config(port, users):
    head = f"""[server]
workers = 2
allow_private_targets = true
max_connections_per_worker = 65536
[log]
level = "warn"
[[listener]]
listen = "127.0.0.1:{port}"
network = "n"
[[network]]
name = "n"
[[exit]]
network = "n"
kind = "direct"
[[plan]]
name = "p"
bandwidth = "1000GiB"
threads = 100000
[[user]]
name = "bench"
password = "benchpw"
plan = "p"
networks = ["n"]
"""
    return head + "".join(
        f'[[user]]\nname = "user{i}"\npassword = "pw{i}"\nplan = "p"\nnetworks = ["n"]\n'
        for i in range(users))


def start(users=0):
    d = tempfile.mkdtemp(prefix="tg-growth-")
    if os.environ.get("BENCH_KEEP") != "1":
        atexit.register(shutil.rmtree, d, ignore_errors=True)
    port = free_port()
    with open(os.path.join(d, "cfg.toml"), "w") as f:
        f.write(config(port, users))
    p = subprocess.Popen([TOLLGATE, "--config", "cfg.toml"], cwd=d, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True, preexec_fn=raise_nofile)
    deadline = time.time() + 60
    while time.time() < deadline:
        line = p.stdout.readline()
        if not line:
            raise RuntimeError("tollgate exited before ready")
        if line.startswith("ready"):
            return p, port
    raise RuntimeError("tollgate not ready within 60 s")


def cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def load(mode, port, conc, pid=None, hold=0):
    argv = [LOADGEN, mode, f"127.0.0.1:{port}", "--conc", str(conc), "--secs", str(SECS),
            "--user", "bench", "--pass", "benchpw", "--hold", str(hold)]
    if SCHED == "batch" and shutil.which("chrt"):
        # As bench.py's default: the load generator's wake-ups do not preempt the gateway.
        argv = ["chrt", "-b", "0", *argv]
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         preexec_fn=raise_nofile)
    try:
        if hold:
            # The held tunnels are open: count the proxy's CPU from here, then start.
            json.loads(p.stdout.readline())
        c0 = cpu(pid) if pid else 0
        if hold:
            p.stdin.write("\n")
            p.stdin.flush()
        out, _ = p.communicate(timeout=SECS + 120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    c1 = cpu(pid) if pid else 0
    res = json.loads(out.strip().splitlines()[-1])
    res["cpu"] = c1 - c0
    return res


def main():
    raise_nofile()
    p, port = start()
    rows = []
    try:
        for conc in CONCS:
            t = load("tunnels-socks5", port, conc, p.pid)
            d = load("tunnels-direct", port, conc)
            rows.append((f"{conc:,}", t, d))
            print(f"conc {conc}: {t} direct {d}", file=sys.stderr)
        # Each open tunnel is two descriptors in the gateway (and two in the load generator):
        # where the hard limit cannot be raised to fit, as many as it allows.
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        hold = HOLD if hard == resource.RLIM_INFINITY else min(HOLD, (hard - 1024) // 2)
        if hold < HOLD:
            print(f"RLIMIT_NOFILE hard limit {hard}: {hold:,} tunnels open, not {HOLD:,}", file=sys.stderr)
        if hold > 32:
            t = load("tunnels-socks5", port, 32, p.pid, hold=hold - 32)
            d = load("tunnels-direct", port, 32, hold=hold - 32)
            rows.append((f"{32 + t['held']:,} open (32 busy)", t, d))
            print(f"hold {hold}: {t} direct {d}", file=sys.stderr)
    finally:
        p.terminate()
        p.wait(timeout=30)
    print("| concurrency | tunnels/s | per proxy CPU-second | p50 / p99 through tollgate | p50 / p99 direct | p99 added |")
    print("|---|---|---|---|---|---|")
    for conc, t, d in rows:
        rate = t["ops"] / t["secs"]
        per = t["ops"] / max(t["cpu"], 0.05)
        print(f"| {conc} | {rate:,.0f} | {per:,.0f} | {t['p50_us'] / 1000:.2f} / {t['p99_us'] / 1000:.2f} ms | "
              f"{d['p50_us'] / 1000:.2f} / {d['p99_us'] / 1000:.2f} ms | {(t['p99_us'] - d['p99_us']) / 1000:.2f} ms |")

    p, port = start(ACCOUNTS)
    try:
        quiet = load("tunnels-socks5", port, 32, p.pid)
        stop = threading.Event()
        reloads = [0]

        def hup():
            # Bounded: at most one SIGHUP a second for the load's duration.
            for _ in range(int(SECS) + 2):
                if stop.wait(1.0):
                    return
                p.send_signal(signal.SIGHUP)
                reloads[0] += 1

        th = threading.Thread(target=hup)
        th.start()
        busy = load("tunnels-socks5", port, 32, p.pid)
        stop.set()
        th.join()
    finally:
        p.terminate()
        p.wait(timeout=30)
    print(f"\n{ACCOUNTS:,} file accounts, concurrency 32: p99 {quiet['p99_us'] / 1000:.2f} ms undisturbed, "
          f"{busy['p99_us'] / 1000:.2f} ms with {reloads[0]} SIGHUP reloads during the run "
          f"({busy['p99_us'] / max(quiet['p99_us'], 1):.2f}×); tunnels/s {quiet['ops'] / quiet['secs']:,.0f} vs "
          f"{busy['ops'] / busy['secs']:,.0f}")


if __name__ == "__main__":
    main()
