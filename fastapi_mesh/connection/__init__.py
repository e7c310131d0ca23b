"""The connection layer: the innermost transport of the stack, which owns sockets, keep-alive pools and TLS.

Two backends, chosen by ``connection.backend``; each is an ``httpx.AsyncBaseTransport`` that takes the
``httpx.Request`` the attempt layer hands down and gives back an ``httpx.Response`` whose body the attempt
layer reads:

- ``httpcore``: one ``httpx.AsyncHTTPTransport`` (an httpcore pool) per origin, created on first use
  (:class:`PerOriginTransport`). Supports ``connection.http2``.
- ``aiohttp``: one ``aiohttp.ClientSession`` whose connector keeps a pool per origin, with aiohttp's C
  response parser (:class:`AiohttpTransport`). HTTP/1.1 only.

Both raise httpx's own exceptions in the same situations (``ConnectError`` and ``ConnectTimeout`` only
while no byte of the request can have left, ``ReadTimeout``, ``RemoteProtocolError`` ...), so the retry
layer's at-most-once rule and the breaker see the same failures whichever backend runs. Neither has a
pool-wide connection cap: the balancer enforces ``load_balancer.max_connections_per_instance``.

With mTLS both take a :class:`~fastapi_mesh.connection.tls.ClientTLS`: one shared context, the server's
identity checked in every handshake (``ServerIdentityMismatch``, "not sent"), files re-read on rotation.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import ssl
import urllib.request
from typing import TYPE_CHECKING

import httpx

from .per_origin import PerOriginTransport
from .tls import ClientTLS, ExpectedIdentities, ServerIdentityMismatch

if TYPE_CHECKING:
    from ..settings import ConnectionConfig

__all__ = [
    "KEEPALIVE_CONNECTIONS",
    "KEEPALIVE_EXPIRY",
    "ClientTLS",
    "ExpectedIdentities",
    "PerOriginTransport",
    "ProxyChooser",
    "ServerIdentityMismatch",
    "build_transport",
]

#: Idle connections kept per origin; the per-endpoint limit is enforced by the balancer, not here.
KEEPALIVE_CONNECTIONS = 100
#: An idle connection is closed after this many seconds.
KEEPALIVE_EXPIRY = 30.0


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


def build_transport(
    config: ConnectionConfig, ssl_context: ssl.SSLContext, *, tls: ClientTLS | None = None
) -> httpx.AsyncBaseTransport:
    """The innermost layer ``config.backend`` names, verifying ``https`` endpoints with ``ssl_context``, or
    with ``tls`` (mTLS: its rotating context and the servers' identities) when given."""
    proxy = config.proxy.get_secret_value() if config.proxy is not None else None
    proxies = ProxyChooser(proxy, trust_env=config.trust_env)
    limits = httpx.Limits(
        max_connections=None, max_keepalive_connections=KEEPALIVE_CONNECTIONS, keepalive_expiry=KEEPALIVE_EXPIRY
    )
    if config.backend == "aiohttp":
        if config.http2:  # the settings refuse this already; a model built without validation must not slip by
            raise ValueError("connection.http2: the aiohttp backend speaks HTTP/1.1 only; use backend 'httpcore'")
        try:
            from .aiohttp_transport import AiohttpTransport
        except ImportError as exc:  # pragma: no cover - aiohttp is a dependency
            raise ValueError(f"connection.backend 'aiohttp' needs the aiohttp package: {exc}") from exc
        return AiohttpTransport(ssl_context=ssl_context, limits=limits, proxies=proxies, tls=tls)
    if config.http2 and importlib.util.find_spec("h2") is None:
        raise ValueError("connection.http2 needs the 'h2' package: pip install 'fastapi-mesh[http2]'")
    return PerOriginTransport(ssl_context=ssl_context, limits=limits, http2=config.http2, proxies=proxies, tls=tls)
