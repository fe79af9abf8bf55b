"""Run the README's corrected snippet (proxy_code.py) against a gateway: every code comes
back over forwarding (http:// URLs) and over CONNECT (https:// URLs), and over SOCKS5 the
reply code is in PySocks' message.

usage: proxy_code_check.py GATEWAY_HOST:PORT REFUSED_PORT
"""
import sys

import requests

from proxy_code import describe, proxied_get

gw, refused = sys.argv[1], sys.argv[2]
cases = [
    (407, "alice", "wrong", "example.invalid"),
    (452, "broke", "secret", "example.invalid"),
    (453, "busy", "secret", "example.invalid"),
    (454, "alice-country-zz", "secret", "example.invalid"),
    (455, "alice-session-a-ttl-99999", "secret", "example.invalid"),
    (502, "alice", "secret", f"127.0.0.1:{refused}"),
]
for want, user, password, host in cases:
    proxy = f"http://{user}:{password}@{gw}"
    for scheme in ("http", "https"):
        code, text = proxied_get(f"{scheme}://{host}/", proxy)
        if code != want:
            sys.exit(f"FAIL {scheme} as {user}: got {code} {text!r}, want {want}")
        print(f"ok {scheme} {want}: {describe(code, text)}")
    # SOCKS5: the reply code (0x02 for plan and targeting) is in the exception's message.
    try:
        requests.get(f"http://{host}/", proxies={"http": f"socks5h://{user}:{password}@{gw}"}, timeout=30)
        sys.exit(f"FAIL socks5 as {user}: served")
    except requests.exceptions.ConnectionError as e:
        msg = str(e)
        expect = {407: "SOCKS5 authentication failed", 502: "0x05: Connection refused"}.get(
            want, "0x02: Connection not allowed by ruleset"
        )
        if expect not in msg:
            sys.exit(f"FAIL socks5 as {user}: {msg}")
        print(f"ok socks5 {want}: {expect}")
