#!/usr/bin/env python3
"""An IPv6 prefix exit on the real AnyIP path, inside a network namespace of its own.

Run by tests/prefix.rs as `unshare -n -m python3 tests/clients/netns_v6.py TOLLGATE_BIN`
(root). In the fresh namespaces: lo up, `ip -6 route add local fd00:77::/64 dev lo` (the
prefix the exit draws from), an origin on another ULA address (fd00:78::1) that answers
with the caller's address (over TCP, and over UDP for SOCKS5 UDP associations), an IPv4 origin on 127.0.0.1, an /etc/hosts of its own (bind-
mounted in the private mount namespace) with a name of each family, and tollgate with an
IPv6-only network. Prints one `key value` line per observation; the Rust test asserts on
them.
"""
import base64
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

BIN = sys.argv[1]
AUTH = "Basic " + base64.b64encode(b"alice:secret").decode()


def sh(*args):
    subprocess.run(args, check=True)


def origin(family, addr):
    """An HTTP origin answering every request with the caller's address."""
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.bind((addr, 0))
    srv.listen(64)

    def serve(c):
        with c:
            peer = c.getpeername()[0]
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = c.recv(4096)
                if not chunk:
                    return
                buf += chunk
            body = peer.encode()
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))

    def loop():
        while True:
            c, _ = srv.accept()
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return srv.getsockname()[1]


def udp_origin(addr):
    """A UDP origin answering each datagram with the sender's address and the payload."""
    srv = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    srv.bind((addr, 0))

    def loop():
        while True:
            data, peer = srv.recvfrom(2048)
            srv.sendto(peer[0].encode() + b" " + data, peer)

    threading.Thread(target=loop, daemon=True).start()
    return srv.getsockname()[1]


def socks_login(gw, user):
    """A SOCKS5 connection past the greeting and the RFC 1929 login."""
    s = socket.create_connection(gw, timeout=10)
    s.sendall(b"\x05\x01\x02")
    assert s.recv(2) == b"\x05\x02"
    u = user.encode()
    s.sendall(b"\x01" + bytes([len(u)]) + u + b"\x06secret")
    assert s.recv(2) == b"\x01\x00"
    return s


def socks_udp(gw, host, port, payload, user="alice"):
    """One SOCKS5 UDP association: a datagram to [host]:port and the answer's payload."""
    c = socks_login(gw, user)
    c.sendall(b"\x05\x03\x00\x01" + b"\x00" * 6)
    reply = c.recv(4)
    assert reply[1] == 0, f"socks5 udp associate reply {reply[1]:#x}"
    if reply[3] == 4:
        raw = c.recv(18)
        relay = (socket.inet_ntop(socket.AF_INET6, raw[:16]), int.from_bytes(raw[16:], "big"))
        d = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    else:
        raw = c.recv(6)
        relay = (socket.inet_ntop(socket.AF_INET, raw[:4]), int.from_bytes(raw[4:], "big"))
        d = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    d.settimeout(5)
    d.sendto(b"\x00\x00\x00\x04" + socket.inet_pton(socket.AF_INET6, host) + port.to_bytes(2, "big") + payload, relay)
    data, _ = d.recvfrom(4096)
    head = 4 + (16 if data[3] == 4 else 4) + 2
    d.close()
    c.close()
    return data[head:].decode()


def response(s):
    buf = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    code = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    return code, headers, body.decode()


def forward(gw, url, user="alice"):
    s = socket.create_connection(gw, timeout=10)
    auth = "Basic " + base64.b64encode(f"{user}:secret".encode()).decode()
    s.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {auth}\r\nConnection: close\r\n\r\n".encode())
    return response(s)


def socks(gw, host, port, user="alice"):
    s = socks_login(gw, user)
    s.sendall(b"\x05\x01\x00\x04" + socket.inet_pton(socket.AF_INET6, host) + port.to_bytes(2, "big"))
    reply = s.recv(4)
    assert reply[1] == 0, f"socks5 reply {reply[1]:#x}"
    s.recv(18 if reply[3] == 4 else 6)
    s.sendall(b"GET /ip HTTP/1.1\r\nHost: x\r\n\r\n")
    return response(s)[2]


def main():
    sh("ip", "link", "set", "lo", "up")
    sh("ip", "-6", "route", "add", "local", "fd00:77::/64", "dev", "lo")
    sh("ip", "-6", "addr", "add", "fd00:78::1/128", "dev", "lo", "nodad")
    hosts = tempfile.NamedTemporaryFile("w", suffix=".hosts", delete=False)
    hosts.write("127.0.0.1 localhost\nfd00:78::1 v6only.test\n127.0.0.1 a4only.test\n"
                "fd00:78::3 slow6.test\n127.0.0.1 slow6.test\n"
                "fd00:78::3 none.test\n192.0.2.1 none.test\nfd00:78::1 none.test\n")
    hosts.close()
    sh("mount", "--bind", hosts.name, "/etc/hosts")
    sh("ip", "-6", "addr", "add", "fd00:78::3/128", "dev", "lo", "nodad")
    v6_port = origin(socket.AF_INET6, "fd00:78::1")
    v4_port = origin(socket.AF_INET, "127.0.0.1")
    udp_port = udp_origin("fd00:78::1")
    # On [fd00:78::3] the same port is a tarpit: a listener that never accepts, its queue
    # filled, so a connect there hangs (its SYNs are dropped).
    tarpit = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    tarpit.bind(("fd00:78::3", v4_port))
    tarpit.listen(0)
    fillers = []
    for _ in range(2):
        f = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        f.setblocking(False)
        f.connect_ex(("fd00:78::3", v4_port))
        fillers.append(f)
    work = tempfile.mkdtemp(prefix="tollgate-netns-")
    cfg = os.path.join(work, "tollgate.toml")
    with open(cfg, "w") as f:
        f.write(f"""
[server]
workers = 2
allow_private_targets = true
connect_timeout = "1s"
state_dir = "{work}/state"
[[listener]]
listen = "127.0.0.1:0"
network = "v6"
[[listener]]
listen = "127.0.0.1:0"
network = "both"
[[network]]
name = "v6"
[[network]]
name = "both"
[[exit]]
name = "host"
network = "both"
kind = "direct"
[[exit]]
name = "v6block"
network = "v6"
kind = "direct"
source_cidr = "fd00:77::/64"
[[plan]]
name = "p"
bandwidth = "1GiB"
threads = 100
[[user]]
name = "alice"
password = "secret"
plan = "p"
networks = ["v6", "both"]
""")
    check = subprocess.run([BIN, "--config", cfg, "check"], capture_output=True, text=True)
    for line in check.stdout.splitlines():
        if line.startswith("exit "):
            print("check", line)
    gw_proc = subprocess.Popen([BIN, "--config", cfg], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    listeners = []
    try:
        for line in gw_proc.stdout:
            if line.startswith("listening "):
                host, _, port = line.split()[1].rpartition(":")
                listeners.append((host, int(port)))
            if line.startswith("ready"):
                break
        gw, both = listeners
        origin6 = f"http://[fd00:78::1]:{v6_port}/ip"
        for i in range(20):
            ip = socks(gw, "fd00:78::1", v6_port) if i % 2 else forward(gw, origin6)[2]
            print("rotating", ip)
        for i in range(6):
            user = "alice-session-v6s"
            ip = socks(gw, "fd00:78::1", v6_port, user) if i % 2 else forward(gw, origin6, user)[2]
            print("session", ip)
        # UDP through the prefix: each association leaves from an address of its own.
        for i in range(6):
            print("udp", socks_udp(gw, "fd00:78::1", udp_port, b"dgram%d" % i))
        # Both families, the IPv6 address a tarpit: the IPv4 attempt starts 250 ms later and
        # wins, long before connect_timeout.
        t0 = time.monotonic()
        code, _, body = forward(both, f"http://slow6.test:{v4_port}/ip")
        print("race", code, body, f"{time.monotonic() - t0:.2f}s")
        # Three addresses, none of them answering: a tarpit, an IPv4 address without a
        # route (fails at once, when its turn comes after 250 ms) and a refused one; the
        # client gets the gateway's 502 when connect_timeout ends the race.
        code, _, _ = forward(both, f"http://none.test:{v4_port}/ip")
        print("none_code", code)
        code, _, body = forward(gw, f"http://v6only.test:{v6_port}/ip")
        print("aaaa_name", code, body)
        for target in (f"a4only.test:{v4_port}", f"127.0.0.1:{v4_port}"):
            code, headers, _ = forward(gw, f"http://{target}/ip")
            print("a_only_code", code)
            print("a_only_status", headers.get("proxy-status", ""))
    finally:
        gw_proc.terminate()
        gw_proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
