"""The ``httpcore`` backend: one httpx/httpcore pool per origin instead of one pool for the whole fleet."""

from __future__ import annotations

import ssl
import time
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from . import ProxyChooser

__all__ = ["PerOriginTransport"]

#: Requests between two looks at the clock for the sweep of unused pools.
_SWEEP_EVERY = 512


class _Origin:
    __slots__ = ("seen", "transport", "uses")

    def __init__(self, transport: httpx.AsyncHTTPTransport) -> None:
        self.transport = transport
        self.uses = 0  #: requests so far
        self.seen = 0  #: ``uses`` at the last sweep


class PerOriginTransport(httpx.AsyncBaseTransport):
    """Connection layer: an ``httpx.AsyncHTTPTransport`` per origin (scheme, host, port), made on first use.

    httpcore's pool scans every connection it holds for each request; one pool per endpoint keeps that
    scan as short as one endpoint's connections instead of the whole fleet's. Every pool shares one
    ``ssl_context``. A pool that saw no request for ``keepalive_expiry`` seconds and has nothing in flight
    is closed and forgotten, so endpoints that discovery dropped leave no connections behind.

    >>> import ssl
    >>> transport = PerOriginTransport(ssl_context=ssl.create_default_context())
    >>> transport.origins()
    []
    """

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext,
        limits: httpx.Limits | None = None,
        http2: bool = False,
        proxies: ProxyChooser | None = None,
    ) -> None:
        self._ssl_context = ssl_context
        self._limits = limits or httpx.Limits(max_connections=None, max_keepalive_connections=100)
        self._http2 = http2
        self._proxies = proxies
        self._origins: dict[tuple[bytes, bytes, int | None], _Origin] = {}
        self._countdown = _SWEEP_EVERY
        expiry = self._limits.keepalive_expiry
        self._sweep_interval = expiry if expiry is not None and expiry > 0 else 30.0
        self._next_sweep = time.monotonic() + self._sweep_interval
        self._closed = False

    def origins(self) -> list[str]:
        """The origins that have a pool now, as ``scheme://host:port``."""
        return [
            f"{scheme.decode()}://{host.decode()}" + (f":{port}" if port is not None else "")
            for scheme, host, port in self._origins
        ]

    def _open(self, url: httpx.URL) -> _Origin:
        if self._closed:
            raise RuntimeError("the connection pool is closed")
        proxy = self._proxies.for_origin(url.scheme, url.host, url.port) if self._proxies is not None else None
        transport = httpx.AsyncHTTPTransport(
            verify=self._ssl_context,
            http2=self._http2,
            limits=self._limits,
            proxy=proxy,
            trust_env=False,
        )
        return _Origin(transport)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        key = (url.raw_scheme, url.raw_host, url.port)
        origin = self._origins.get(key)
        if origin is None:
            await self._maybe_sweep()
            origin = self._origins[key] = self._open(url)
        else:
            self._countdown -= 1
            if self._countdown <= 0:
                await self._maybe_sweep()
        origin.uses += 1
        return await origin.transport.handle_async_request(request)

    async def _maybe_sweep(self) -> None:
        """At most once per interval (looked at every ``_SWEEP_EVERY`` requests and for each new origin):
        close the pools nobody used since the last sweep."""
        self._countdown = _SWEEP_EVERY
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self._sweep_interval
        for key, origin in list(self._origins.items()):
            if origin.uses == origin.seen and _all_idle(origin.transport):
                del self._origins[key]
                await origin.transport.aclose()
            else:
                origin.seen = origin.uses

    async def aclose(self) -> None:
        self._closed = True
        origins, self._origins = self._origins, {}
        for origin in origins.values():
            await origin.transport.aclose()


def _all_idle(transport: httpx.AsyncHTTPTransport) -> bool:
    """Whether no connection of ``transport`` carries a request (none at all counts as idle)."""
    pool: Any = getattr(transport, "_pool", None)
    connections = getattr(pool, "connections", None)
    if connections is None:  # pragma: no cover - a future httpx without the pool attribute: keep it
        return False
    return all(connection.is_idle() for connection in connections)
