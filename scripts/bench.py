#!/usr/bin/env python3
"""Side-by-side proxy benchmark on loopback: tollgate and its peers in one run.

Rows: tollgate as shipped, with spin_before_park, from a fixed source_ip and from a
source_cidr prefix (tunnel rows only), the baseline binary when given, and the peers.

usage: bench.py TOLLGATE_BIN LOADGEN_BIN   (env: BENCH_SECS=5 BENCH_REPS=3 BENCH_PEERS=all
       BENCH_FLOOR=the tunnel-floor server (floor-epoll) to measure new tunnels against,
       BENCH_NODE_MODULES=dir holding proxy-chain, BENCH_BASELINE=older tollgate binary to
       measure beside this one, BENCH_MODES=comma-separated rows to run, default all,
       BENCH_LOADGEN_SCHED=batch|normal, default batch, BENCH_KEEP=1 to keep the scratch
       directory of configs and state, removed at exit by default)

The load generator and its targets run under SCHED_BATCH (chrt -b 0) by default: on this
one machine they share the CPUs with the proxy under test, and a normal-policy thread woken
by the proxy's own send preempts it at once, which a proxy whose clients are other machines
never pays (and which costs a proxy with pinned executors more than one whose threads the
scheduler can move away). Every proxy runs under the same harness; the scaling rows also
measure new tunnels with the load generator at the normal policy, side by side, and put
each tollgate row beside the floor server with 1 thread and with as many threads as it has
executors.

Every figure is also divided by the proxy's own CPU time (utime+stime of its whole process
group, from /proc/PID/stat), because load generator, proxy and targets share the machine.
Repetitions are interleaved across proxies; min and median are reported.
"""
import atexit
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

TOLLGATE, LOADGEN = sys.argv[1], sys.argv[2]
SCHED = os.environ.get("BENCH_LOADGEN_SCHED", "batch")


def lg_argv(*args, sched=None):
    """The load generator's command line, under SCHED_BATCH unless `sched` is "normal"."""
    if (sched or SCHED) == "batch" and shutil.which("chrt"):
        return ["chrt", "-b", "0", LOADGEN, *args]
    return [LOADGEN, *args]
SECS = float(os.environ.get("BENCH_SECS", "5"))
REPS = int(os.environ.get("BENCH_REPS", "3"))
IDLE = int(os.environ.get("BENCH_IDLE", "1000"))
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
USER, PASS = "bench", "benchpw"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, proc, what):
    deadline = time.time() + 20
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port}")


def group_stats(pgid):
    """(cpu seconds, rss bytes) summed over every process in the group."""
    cpu, rss = 0, 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        f = stat[stat.rindex(")") + 2:].split()
        if int(f[2]) == pgid:
            cpu += int(f[11]) + int(f[12])
            rss += int(f[21]) * PAGE
    return cpu / TICK, rss


class Proxy:
    def __init__(self, name, argv, port, modes, cwd, auth=True, creds=(USER, PASS)):
        self.name, self.port, self.modes, self.auth, self.creds = name, port, modes, auth, creds
        self.proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        wait_port(port, self.proc, name)

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


TUNNELS = ["tunnels-socks5", "tunnels-connect"]
THROUGHPUT = ["down-socks5", "up-socks5", "down-connect", "up-connect"]
SOCKS_MODES = ["tunnels-socks5", "down-socks5", "up-socks5"]
HTTP_MODES = ["tunnels-connect", "down-connect", "up-connect", "forward"]


def start_tollgate(work, workers=2, name="tollgate", extra="", server="", binary=None, exit="", modes=None):
    port = free_port()
    cfg = f"""
[server]
workers = {workers}
allow_private_targets = true
{server}
state_dir = "{work}/state-{name}"
[log]
level = "error"
[[listener]]
listen = "127.0.0.1:{port}"
network = "n"
[[network]]
name = "n"
[[exit]]
network = "n"
kind = "direct"
{exit}
[[plan]]
name = "p"
bandwidth = "1000TiB"
threads = 100000
[[user]]
name = "{USER}"
password = "{PASS}"
plan = "p"
networks = ["n"]
{extra}
"""
    path = os.path.join(work, f"{name}.toml")
    open(path, "w").write(cfg)
    return Proxy(name, [binary or TOLLGATE, "--config", path], port, modes or SOCKS_MODES + HTTP_MODES, work)


def start_peers(work, wanted):
    peers = []
    if "microsocks" in wanted and shutil.which("microsocks"):
        port = free_port()
        peers.append(Proxy("microsocks", ["microsocks", "-i", "127.0.0.1", "-p", str(port), "-u", USER, "-P", PASS],
                           port, SOCKS_MODES, work))
    if "merino" in wanted and shutil.which("merino"):
        # A Rust (tokio) SOCKS5 server from crates.io.
        port = free_port()
        users = os.path.join(work, "merino-users.csv")
        open(users, "w").write(f"username,password\n{USER},{PASS}\n")
        peers.append(Proxy("merino", ["merino", "-i", "127.0.0.1", "-p", str(port), "-u", users],
                           port, SOCKS_MODES, work))
    if "dante" in wanted and shutil.which("danted"):
        port = free_port()
        conf = os.path.join(work, "danted.conf")
        open(conf, "w").write(f"""logoutput: /dev/null
internal: 127.0.0.1 port = {port}
external: lo
clientmethod: none
socksmethod: none
user.privileged: root
user.unprivileged: nobody
client pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 }}
socks pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 }}
""")
        peers.append(Proxy("dante", ["danted", "-f", conf, "-p", os.path.join(work, "danted.pid")], port,
                           SOCKS_MODES, work, auth=False))
    if "squid" in wanted and shutil.which("squid"):
        port = free_port()
        conf = os.path.join(work, "squid.conf")
        open(conf, "w").write(f"""http_port 127.0.0.1:{port}
http_access allow all
cache deny all
cache_mem 8 MB
access_log none
cache_log /dev/null
pid_filename {work}/squid.pid
coredump_dir {work}
shutdown_lifetime 0 seconds
workers 1
""")
        peers.append(Proxy("squid", ["squid", "-N", "-f", conf], port, HTTP_MODES, work, auth=False))
    if "tinyproxy" in wanted and shutil.which("tinyproxy"):
        port = free_port()
        conf = os.path.join(work, "tinyproxy.conf")
        open(conf, "w").write(f"""Port {port}
Listen 127.0.0.1
Timeout 60
MaxClients 1000
Allow 127.0.0.1
BasicAuth {USER} {PASS}
LogLevel Critical
""")
        peers.append(Proxy("tinyproxy", ["tinyproxy", "-d", "-c", conf], port, HTTP_MODES, work))
    if "vproxy" in wanted and shutil.which("vproxy"):
        # A Rust (tokio) proxy from crates.io that relays with splice(2): SOCKS5 and HTTP on
        # one port ("auto"), two workers like tollgate, warnings only.
        port = free_port()
        peers.append(Proxy("vproxy", ["vproxy", "run", "-L", "warn", "-b", f"127.0.0.1:{port}", "-w", "2",
                                      "-c", "100000", "auto", "-u", USER, "-p", PASS],
                           port, SOCKS_MODES + HTTP_MODES, work))
    # BENCH_FLOOR=path/to/floor-epoll (../shared/reviews/tunnel-floor, `make`): the least CPU
    # a SOCKS5 tunnel can cost here, new tunnels only (its credentials are fixed).
    floor = os.environ.get("BENCH_FLOOR")
    if floor and "floor" in wanted:
        port = free_port()
        peers.append(Proxy("floor-epoll", [floor, "-p", str(port), "-t", "1"], port, ["tunnels-socks5"], work,
                           creds=("benchuser", "benchpass")))
    modules = os.environ.get("BENCH_NODE_MODULES", "")
    if "proxy-chain" in wanted and shutil.which("node") and os.path.isdir(os.path.join(modules, "proxy-chain")):
        # The Node.js peer (npm), HTTP only.
        port = free_port()
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench-proxy-chain.js")
        os.environ["NODE_PATH"] = modules
        peers.append(Proxy("proxy-chain", ["node", script, str(port), USER, PASS], port, HTTP_MODES, work))
    return peers


def quiesce(proxies, limit=10.0):
    """Wait (at most `limit` s) until no proxy is still busy with the previous run: a proxy
    draining buffered data would otherwise steal CPU from the next one measured."""
    deadline = time.time() + limit
    last = sum(group_stats(p.proc.pid)[0] for p in proxies)
    while time.time() < deadline:
        time.sleep(0.2)
        now = sum(group_stats(p.proc.pid)[0] for p in proxies)
        if now - last < 0.02:
            return
        last = now


def loadgen(mode, p, conc, sched=None):
    argv = lg_argv(mode, f"127.0.0.1:{p.port}", "--conc", str(conc), "--secs", str(SECS), sched=sched)
    if p.auth:
        argv += ["--user", p.creds[0], "--pass", p.creds[1]]
    cpu0, _ = group_stats(p.proc.pid)
    run = subprocess.run(argv, capture_output=True, text=True, timeout=SECS + 60)
    cpu1, _ = group_stats(p.proc.pid)
    lines = run.stdout.strip().splitlines()
    if run.returncode != 0 or not lines:
        # A failed run counts as nothing done; the others go on.
        print(f"warning: {mode} against {p.name} failed: {run.stderr.strip()[-300:]}", file=sys.stderr)
        return {"mode": mode, "ops": 0, "bytes": 0, "secs": SECS, "cpu": cpu1 - cpu0, "failed": True}
    res = json.loads(lines[-1])
    res["cpu"] = cpu1 - cpu0
    return res


def open_idle(p, n):
    argv = lg_argv("idle-socks5", f"127.0.0.1:{p.port}", "--idle", str(n))
    if p.auth:
        argv += ["--user", p.creds[0], "--pass", p.creds[1]]
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def idle_rss(p):
    # A first small round pays the one-time costs (code paged in, the allocator's and the
    # executors' first pools), which vary from run to run and are no tunnel's. The measured
    # round may reuse what these 20 freed: at most their share, ~0.04 KiB per tunnel.
    warm = open_idle(p, 20)
    warm.stdout.readline()
    warm.stdin.close()
    warm.wait(timeout=60)
    time.sleep(0.5)
    _, before = group_stats(p.proc.pid)
    lg = open_idle(p, IDLE)
    opened = json.loads(lg.stdout.readline())["idle_open"]
    time.sleep(1.0)
    _, after = group_stats(p.proc.pid)
    lg.stdin.close()
    lg.wait(timeout=60)
    return opened, (after - before) / max(opened, 1)


def scratch(prefix):
    """A scratch directory for configs and state, removed when the script exits (also on
    an exception; not on SIGKILL) unless BENCH_KEEP=1."""
    d = tempfile.mkdtemp(prefix=prefix)
    if os.environ.get("BENCH_KEEP") != "1":
        atexit.register(shutil.rmtree, d, ignore_errors=True)
    return d


def main():
    work = scratch("tollgate-bench-")
    wanted = os.environ.get("BENCH_PEERS", "vproxy,floor,microsocks,merino,dante,squid,tinyproxy,proxy-chain").split(",")
    # tollgate as shipped, and with executors busy-polling 200 us before they sleep
    # ([server] spin_before_park, for cores dedicated to it).
    proxies = [start_tollgate(work), start_tollgate(work, 2, "tollgate-spin200", server='spin_before_park = "200us"')]
    # BENCH_BASELINE=path/to/an/older/tollgate: measured beside this build, interleaved.
    baseline = os.environ.get("BENCH_BASELINE")
    if baseline:
        proxies.insert(1, start_tollgate(work, 2, "tollgate-baseline", binary=baseline))
    # New tunnels from a fixed source address vs from a random address of a prefix exit
    # (source_cidr): the per-connection cost of drawing and binding the address.
    proxies += [start_tollgate(work, 2, "tollgate-source-ip", exit='source_ip = "127.0.0.1"', modes=TUNNELS),
                start_tollgate(work, 2, "tollgate-prefix", exit='source_cidr = "127.1.0.0/16"', modes=TUNNELS)]
    proxies += start_peers(work, wanted)
    modes = [("tunnels-socks5", 32), ("tunnels-connect", 32), ("down-socks5", 4), ("up-socks5", 4),
             ("down-connect", 4), ("up-connect", 4), ("forward", 32)]
    # BENCH_MODES=forward,tunnels-socks5: only these rows.
    only = [m for m in os.environ.get("BENCH_MODES", "").split(",") if m]
    if only:
        modes = [(m, c) for m, c in modes if m in only]
    results = {}
    try:
        for rep in range(REPS):
            for mode, conc in modes:
                for p in proxies:
                    if mode not in p.modes:
                        continue
                    quiesce(proxies)
                    r = loadgen(mode, p, conc)
                    results.setdefault((p.name, mode), []).append(r)
                    print(f"rep {rep + 1} {mode:16} {p.name:12} ops {r['ops']:>9} bytes {r['bytes']:>13} "
                          f"cpu {r['cpu']:.2f}s", file=sys.stderr)
    finally:
        for p in proxies:
            p.stop()
    # Idle memory on fresh processes: earlier runs leave freed memory in allocators' pools.
    idle = {}
    fresh = [start_tollgate(work, 2, "tollgate-idle")]
    if baseline:
        fresh.append(start_tollgate(work, 2, "tollgate-baseline-idle", binary=baseline))
    fresh += start_peers(work, wanted)
    try:
        for p in fresh:
            if "tunnels-socks5" in p.modes:
                idle[p.name.replace("-idle", "")] = idle_rss(p)
    finally:
        for p in fresh:
            p.stop()

    # Scaling: tollgate with 1 executor vs 2 on the same loads, rate and per proxy CPU-second,
    # beside the floor server; new SOCKS5 tunnels also with the load generator at the
    # normal scheduling policy. Reps interleaved across all of them.
    scaling = {}
    runs = []
    for workers in (1, 2):
        p = start_tollgate(work, workers, f"tollgate-w{workers}")
        runs += [(p, f"{m}/w{workers}", m, None) for m in ("tunnels-socks5", "tunnels-connect")]
        if SCHED == "batch":
            runs.append((p, f"tunnels-socks5/w{workers}/normal", "tunnels-socks5", "normal"))
    if any(p.name == "floor-epoll" for p in proxies):
        # The floor with 1 thread, and with 2 beside 2 executors: two threads on this
        # machine's cores share them with the load generator, for the floor as for tollgate.
        fl = start_peers(work, ["floor"])[0]
        port = free_port()
        fl2 = Proxy("floor-epoll-2", [os.environ["BENCH_FLOOR"], "-p", str(port), "-t", "2"], port,
                    ["tunnels-socks5"], work, creds=("benchuser", "benchpass"))
        for f, key in ((fl, "floor"), (fl2, "floor2")):
            runs.append((f, f"tunnels-socks5/{key}", "tunnels-socks5", None))
            if SCHED == "batch":
                runs.append((f, f"tunnels-socks5/{key}/normal", "tunnels-socks5", "normal"))
    live = list({id(r[0]): r[0] for r in runs}.values())
    rs = {}
    try:
        for _ in range(REPS):
            for p, key, mode, sched in runs:
                quiesce(live)
                rs.setdefault(key, []).append(loadgen(mode, p, 32, sched))
    finally:
        for p in live:
            p.stop()
    for key, v in rs.items():
        scaling[key] = {
            "rate": statistics.median(r["ops"] / r["secs"] for r in v),
            "per_cpu_median": statistics.median(r["ops"] / max(r["cpu"], 0.05) for r in v),
            "per_cpu_min": min(r["ops"] / max(r["cpu"], 0.05) for r in v),
        }

    def per(mode, r):
        # Under one clock tick of CPU the division means nothing: report 0 (n/a).
        cpu = r["cpu"] if r["cpu"] >= 0.05 else float("inf")
        if mode.startswith(("up", "down")):
            return r["bytes"] * 8 / 1e9 / r["secs"], r["bytes"] * 8 / 1e9 / cpu
        return r["ops"] / r["secs"], r["ops"] / cpu

    print("\n| mode | proxy | rate (median) | per proxy CPU-second (min / median) |")
    print("|---|---|---|---|")
    summary = {}
    for mode, _ in modes:
        unit = "Gbit/s" if mode.startswith(("up", "down")) else "/s"
        for p in proxies:
            rs = results.get((p.name, mode))
            if not rs:
                continue
            rates = [per(mode, r)[0] for r in rs]
            cpus = [per(mode, r)[1] for r in rs]
            summary[f"{mode}/{p.name}"] = {"rate": statistics.median(rates), "per_cpu_min": min(cpus),
                                          "per_cpu_median": statistics.median(cpus)}
            cu = "Gbit" if unit == "Gbit/s" else ""
            print(f"| {mode} | {p.name}{'' if p.auth else ' (no auth)'} | {statistics.median(rates):,.2f} {unit} | "
                  f"{min(cpus):,.1f} / {statistics.median(cpus):,.1f} {cu} |")
    print("\n| idle tunnels | proxy | RSS per idle tunnel |")
    print("|---|---|---|")
    for name, (n, per_tunnel) in idle.items():
        print(f"| {n} | {name} | {per_tunnel / 1024:,.2f} KiB |")
        summary[f"idle/{name}"] = per_tunnel
    print(f"\n(load generator: {SCHED} scheduling policy unless the row says otherwise)")
    print("\n| scaling (concurrency 32) | executors | load generator | rate (median) | per proxy CPU-second (min / median) | µs CPU per tunnel | vs floor (1 thread / same threads), same policy |")
    print("|---|---|---|---|---|---|---|")
    for key, v in scaling.items():
        parts = key.split("/")
        mode, who, sched = parts[0], parts[1], parts[2] if len(parts) > 2 else SCHED
        normal = "/normal" if len(parts) > 2 else ""
        fl = scaling.get(f"tunnels-socks5/floor{normal}")
        same = scaling.get(f"tunnels-socks5/floor2{normal}") if who in ("w2", "floor2") else fl
        ratio = ""
        if fl and same and mode == "tunnels-socks5":
            ratio = f"{v['per_cpu_median'] / fl['per_cpu_median']:.2f}× / {v['per_cpu_median'] / same['per_cpu_median']:.2f}×"
        execs = {"floor": "floor-epoll, 1 thread", "floor2": "floor-epoll, 2 threads"}.get(who, who[1:])
        print(f"| {mode} | {execs} | {sched} | {v['rate']:,.0f} /s | {v['per_cpu_min']:,.0f} / {v['per_cpu_median']:,.0f} | "
              f"{1e6 / v['per_cpu_median']:,.0f} | {ratio} |")
    summary["scaling"] = scaling
    os.makedirs("target/bench", exist_ok=True)
    json.dump(summary, open("target/bench/results.json", "w"), indent=2)


if __name__ == "__main__":
    main()
