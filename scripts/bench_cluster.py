#!/usr/bin/env python3
"""What sharing a plan through Redis costs per connection: the same tollgate on the same
load, single node vs a one-node cluster on a local redis-server, repetitions interleaved.

usage: bench_cluster.py TOLLGATE_BIN LOADGEN_BIN   (env: BENCH_SECS=5 BENCH_REPS=3)

Per new tunnel it reports tollgate's CPU, Redis's CPU, the mean time a tunnel takes at
concurrency 32 (32 / rate), and the Redis round trips and commands it caused (from the
node's /metrics: requests from every core share round trips).
"""
import os
import statistics
import subprocess
import sys
import urllib.request

import bench  # same directory: start_tollgate, loadgen, group_stats, free_port, wait_port

MODES = [("tunnels-socks5", 32), ("tunnels-connect", 32)]


def metric(admin, name):
    body = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def main():
    work = bench.scratch("tollgate-bench-cluster-")
    rport = bench.free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", work],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    bench.wait_port(rport, redis, "redis-server")
    admin = bench.free_port()
    cluster = (f'[admin]\nlisten = "127.0.0.1:{admin}"\n'
               f'[cluster]\nredis = "redis://127.0.0.1:{rport}/0"\nnode = "bench"\n')
    nodes = {"single": bench.start_tollgate(work, 2, "single"),
             "cluster": bench.start_tollgate(work, 2, "cluster", cluster)}
    res = {}
    try:
        for rep in range(bench.REPS):
            for mode, conc in MODES:
                for name, p in nodes.items():
                    r0, _ = bench.group_stats(redis.pid)
                    trips0 = metric(admin, "tollgate_cluster_redis_round_trips_total")
                    cmds0 = metric(admin, "tollgate_cluster_redis_commands_total")
                    r = bench.loadgen(mode, p, conc)
                    r1, _ = bench.group_stats(redis.pid)
                    r["redis_cpu"] = r1 - r0 if name == "cluster" else 0.0
                    r["trips"] = metric(admin, "tollgate_cluster_redis_round_trips_total") - trips0
                    r["cmds"] = metric(admin, "tollgate_cluster_redis_commands_total") - cmds0
                    res.setdefault((mode, name), []).append(r)
                    print(f"rep {rep + 1} {mode:16} {name:8} ops {r['ops']:>8} cpu {r['cpu']:.2f}s "
                          f"redis {r['redis_cpu']:.2f}s", file=sys.stderr)
    finally:
        for p in nodes.values():
            p.stop()
        redis.kill()
        redis.wait()

    print("\n| mode | node | tunnels/s | tollgate CPU µs/tunnel | Redis CPU µs/tunnel | "
          "time per tunnel at c=32 | Redis round trips / commands per tunnel |")
    print("|---|---|---|---|---|---|---|")
    for mode, conc in MODES:
        for name in nodes:
            rs = res[(mode, name)]
            med = lambda f: statistics.median(f(r) for r in rs)
            rate = med(lambda r: r["ops"] / r["secs"])
            print(f"| {mode} | {name} | {rate:,.0f} | {med(lambda r: r['cpu'] / r['ops'] * 1e6):.1f} | "
                  f"{med(lambda r: r['redis_cpu'] / r['ops'] * 1e6):.1f} | {conc / rate * 1e6:,.0f} µs | "
                  f"{med(lambda r: r['trips'] / r['ops']):.2f} / {med(lambda r: r['cmds'] / r['ops']):.2f} |")


if __name__ == "__main__":
    main()
