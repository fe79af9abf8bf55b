import re

import requests

# requests answers an http:// URL through the proxy with a normal response, so the gateway's
# code is r.status_code. For an https:// URL it first opens a CONNECT tunnel, and when the
# gateway refuses that (407, 452-455, 502, ...) it raises ProxyError with the code only in
# its message. This returns (code, text) in both cases.
TUNNEL_REFUSED = re.compile(r"Tunnel connection failed: (\d{3}) ([^'\")]+)")


def proxied_get(url, proxy, **kwargs):
    try:
        r = requests.get(url, proxies={"http": proxy, "https": proxy}, timeout=30, **kwargs)
        return r.status_code, r.text.strip()
    except requests.exceptions.ProxyError as e:
        m = TUNNEL_REFUSED.search(str(e))
        if not m:
            raise  # the proxy itself could not be reached
        return int(m.group(1)), m.group(2)


def describe(code, text):
    if code == 407:
        return "Auth failed: check username, password and modifiers"
    if code == 452:
        return "Out of bandwidth: top up your plan"
    if code == 453:
        return "Too many concurrent connections"
    if code == 454:
        return f"Targeting error: {text}"
    if code == 455:
        return "Invalid ttl"
    if code >= 500:
        return f"Upstream issue ({code}): retry with backoff"
    return text
