#!/usr/bin/env python3
"""The crate's layering, checked: every `crate::` / `super::` path in src/ (tests excluded)
must point to a lower floor than the module it is written in, or stay inside one module
and its own children. The floors are the map in src/lib.rs.

usage: scripts/layers.py [PROJECT_ROOT] [--graph]
  --graph  also print each unit's imports (the edges checked)
Exit status 1 on any upward or sideways import (each is printed with its file and line).
"""
import collections
import os
import re
import sys

# Bottom to top. A unit may import units on lower floors only (and its own descendants).
FLOORS = [
    # 0: leaves: primitives, the error table, per-core counters, ISO codes
    ["error", "util", "geo", "metrics", "stream", "tls"],
    # sans-IO codecs (fuzzed): they parse bytes and know nothing of state
    ["sniff", "auth::username", "http::codec", "socks5::codec", "proxy_header"],
    # 1: validated configuration, pure data
    ["config"],
    # accounts and plans of the API: the directory and its store
    ["accounts"],
    # 2: domain state: who (auth), what they may spend (plan)
    ["auth", "plan", "support"],
    # 3: where it may go (targeting, exit choice, health, sessions)
    ["route"],
    # 4: byte movement and metering, and one end of a connection
    ["relay"],
    ["side"],
    # 5: leaving: DNS, policy, direct connects, upstream proxies
    ["exit"],
    # 6: shared backends implementing plan's and route's seams
    ["cluster"],
    # 7: the published world, one core's context
    ["world"],
    ["worker"],
    # 8: one connection, and the pipeline both protocols share
    ["conn"],
    ["proxy"],
    # 9: protocol handlers (never each other, never their caller)
    ["socks5", "http"],
    # 10: dispatch
    ["session"],
    ["listener"],
    # 11: process
    ["admin"],
    ["runtime"],
    # harnesses for fuzzing: may use anything
    ["fuzzing"],
]
FLOOR = {u: i for i, units in enumerate(FLOORS) for u in units}


def modules(src):
    """file path -> module path (tuple)"""
    out = {}
    for dp, _, fns in os.walk(src):
        for f in fns:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(dp, f), src)[:-3].split(os.sep)
            if rel[-1] == "mod":
                rel = rel[:-1]
            if rel in (["lib"], ["main"]):
                rel = []
            out[os.path.join(dp, f)] = tuple(rel)
    return out


def unit(mod):
    """The declared unit a module belongs to (longest declared prefix)."""
    for i in range(len(mod), 0, -1):
        name = "::".join(mod[:i])
        if name in FLOOR:
            return name
    return None


def code_of(text):
    """The file without its test module and comments, with line numbers kept."""
    cut = text.find("#[cfg(test)]")
    if cut >= 0:
        text = text[:cut]
    return re.sub(r"//[^\n]*", "", text)


PATH = re.compile(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)+)(::\{([^;]*?)\})?")


def imports(path, mod, text, known):
    """(target module, line) for every crate path in the file."""
    is_mod_rs = path.endswith("mod.rs") or path.endswith("lib.rs")
    for m in PATH.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        tail = m.group(2).split("::")[1:]
        if m.group(1) == "crate":
            parts = tail
        else:
            parent = list(mod) if is_mod_rs else list(mod[:-1])
            parts = parent[:-1] + tail if is_mod_rs else parent + tail
        heads = [parts]
        if m.group(4):
            for item in re.split(r",(?![^{]*\})", m.group(4)):
                it = item.strip().split(" as ")[0].split("::{")[0].strip()
                if it and it != "self":
                    heads.append(parts + it.split("::"))
        for p in heads:
            for i in range(len(p), 0, -1):
                if tuple(p[:i]) in known:
                    yield tuple(p[:i]), line
                    break
    # Child modules used by path (`codec::parse`, `forward::exchange`).
    for k in re.findall(r"^\s*(?:pub(?:\([a-z]+\))?\s+)?mod\s+([a-z_0-9]+)\s*;", text, re.M):
        child = tuple(mod) + (k,)
        if child in known:
            yield child, 0


def related(a, b):
    return a[: len(b)] == b or b[: len(a)] == a


def main():
    root = next((a for a in sys.argv[1:] if not a.startswith("-")), ".")
    src = os.path.join(root, "src")
    mods = modules(src)
    known = set(mods.values())
    bad = []
    edges = collections.defaultdict(set)
    for path, mod in sorted(mods.items()):
        if not mod:
            continue
        me = unit(mod)
        if me is None:
            bad.append(f"{path}: module {'::'.join(mod)} has no floor in scripts/layers.py")
            continue
        text = code_of(open(path).read())
        for target, line in imports(path, mod, text, known):
            if related(mod, target):
                continue
            them = unit(target)
            if them is None or them == me:
                continue
            edges[me].add(them)
            if me != "fuzzing" and FLOOR[them] >= FLOOR[me]:
                how = "sideways" if FLOOR[them] == FLOOR[me] else "upwards"
                bad.append(f"{path}:{line}: {me} imports {'::'.join(target)} ({them}, {how})")
    if "--graph" in sys.argv:
        for i, units in enumerate(FLOORS):
            for u in units:
                print(f"floor {i:2} {u:15} -> {', '.join(sorted(edges.get(u, ())))}")
    for b in bad:
        print(b)
    n = sum(len(v) for v in edges.values())
    print(f"layers: {len(FLOOR)} units on {len(FLOORS)} floors, {n} imports between units, "
          f"{len(bad)} against the layering")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
