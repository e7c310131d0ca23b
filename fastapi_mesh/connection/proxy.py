"""Which egress proxy a connection to an origin goes through (``connection.proxy``, or the environment)."""

from __future__ import annotations

import ipaddress
import urllib.request

__all__ = ["ProxyChooser"]


class ProxyChooser:
    """The egress proxy for an origin: ``connection.proxy`` for every origin when set; else, with
    ``trust_env``, ``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``ALL_PROXY`` unless ``NO_PROXY`` excludes the host;
    else none.

    >>> ProxyChooser("http://proxy.internal:3128", trust_env=False).for_origin("http", "10.0.0.1", 8080)
    'http://proxy.internal:3128'
    >>> ProxyChooser(None, trust_env=False).for_origin("http", "10.0.0.1", 8080) is None
    True
    """

    def __init__(self, proxy: str | None, *, trust_env: bool) -> None:
        self._proxy = proxy
        self._environment = urllib.request.getproxies_environment() if trust_env and proxy is None else {}

    def for_origin(self, scheme: str, host: str, port: int | None) -> str | None:
        if self._proxy is not None or not self._environment:
            return self._proxy
        found = self._environment.get(scheme) or self._environment.get("all")
        if not found:
            return None
        if _bypassed(host, self._environment.get("no", "")):
            return None
        return found if "://" in found else f"http://{found}"


def _bypassed(host: str, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` excludes ``host``: ``*``; the host itself or a parent domain (``example.com``
    and ``.example.com`` both cover ``api.example.com``); an IP address or network (``10.0.0.0/8``)."""
    host = host.strip("[]").lower()
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in no_proxy.lower().split(","):
        entry = entry.strip()
        if not entry:
            continue
        if entry == "*":
            return True
        if address is not None:
            try:
                if address in ipaddress.ip_network(entry.strip("[]"), strict=False):
                    return True
            except ValueError:
                pass
            continue
        name = entry.lstrip(".").rsplit(":", 1)[0] if entry.count(":") == 1 else entry.lstrip(".")
        if host == name or host.endswith("." + name):
            return True
    return False
