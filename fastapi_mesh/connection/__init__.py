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
import ssl
from typing import TYPE_CHECKING

import httpx

from .per_origin import PerOriginTransport
from .proxy import ProxyChooser
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
