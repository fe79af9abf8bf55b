"""Drive tollgate with Python requests (+ PySocks) the way users' scraping code does.

usage: requests_check.py GATEWAY_HOST:PORT ORIGIN_URL
Exits non-zero with a message on the first mismatch; prints one line per check.
"""
import sys

import requests

gw, origin = sys.argv[1], sys.argv[2]


def proxies(scheme, user, password="secret"):
    url = f"{scheme}://{user}:{password}@{gw}"
    return {"http": url, "https": url}


def check(name, cond, detail=""):
    if not cond:
        sys.exit(f"FAIL {name}: {detail}")
    print(f"ok {name}")


r = requests.get(origin + "/ip", proxies=proxies("http", "alice"), timeout=20)
check("http proxy GET", r.status_code == 200 and r.text == "127.0.0.1", (r.status_code, r.text))

r = requests.get(origin + "/ip", proxies=proxies("socks5h", "alice"), timeout=20)
check("socks5h GET", r.status_code == 200 and r.text == "127.0.0.1", (r.status_code, r.text))

r = requests.get(origin + "/ip", proxies=proxies("socks5", "alice"), timeout=20)
check("socks5 (local DNS) GET", r.status_code == 200, r.status_code)

body = bytes(range(256)) * 4000
r = requests.post(origin + "/echo", data=body, proxies=proxies("http", "alice"), timeout=20)
check("http proxy POST echo", r.status_code == 200 and r.content == body, r.status_code)

with requests.Session() as s:
    s.proxies = proxies("http", "alice")
    codes = [s.get(origin + "/", timeout=20).status_code for _ in range(5)]
    check("keep-alive session", codes == [200] * 5, codes)

r = requests.get(origin + "/", proxies=proxies("http", "alice-ttl-0"), timeout=20)
check("455 over http", r.status_code == 455 and r.text.strip() == "invalid ttl", (r.status_code, r.text))

r = requests.get(origin + "/", proxies=proxies("http", "alice", "wrong"), timeout=20)
check(
    "407 over http",
    r.status_code == 407 and r.text.strip() == "Incorrect username or password",
    (r.status_code, r.text),
)

try:
    requests.get(origin + "/", proxies=proxies("socks5h", "alice-ttl-0"), timeout=20)
    check("ruleset over socks5", False, "request succeeded")
except requests.exceptions.ConnectionError as e:
    check("ruleset over socks5", "not allowed by ruleset" in str(e), str(e))

try:
    requests.get(origin + "/", proxies=proxies("socks5h", "alice", "wrong"), timeout=20)
    check("auth failure over socks5", False, "request succeeded")
except requests.exceptions.ConnectionError as e:
    check("auth failure over socks5", "authentication failed" in str(e).lower(), str(e))

print("all python checks passed")
