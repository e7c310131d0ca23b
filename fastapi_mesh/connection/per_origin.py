"""The ``httpcore`` backend: one httpx/httpcore pool per origin instead of one pool for the whole fleet."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx

from .._httpx_compat import all_connections_idle

if TYPE_CHECKING:
    from .proxy import ProxyChooser
    from .tls import ClientTLS

__all__ = ["PerOriginTransport"]

#: Requests between two looks at the clock for the sweep of unused pools.
_SWEEP_EVERY = 512


class _Origin:
    __slots__ = ("context", "seen", "transport", "uses")

    def __init__(self, transport: httpx.AsyncHTTPTransport, context: ssl.SSLContext | None = None) -> None:
        self.transport = transport
        self.context = context  #: with mTLS: the context its connections were made with
        self.uses = 0  #: requests so far
        self.seen = 0  #: ``uses`` at the last sweep


class PerOriginTransport(httpx.AsyncBaseTransport):
    """Connection layer: an ``httpx.AsyncHTTPTransport`` per origin (scheme, host, port), made on first use.

    httpcore's pool scans every connection it holds for each request; one pool per endpoint keeps that
    scan as short as one endpoint's connections instead of the whole fleet's. Every pool shares one
    ``ssl_context``. A pool that saw no request for ``keepalive_expiry`` seconds and has nothing in flight
    is closed and forgotten, so endpoints that discovery dropped leave no connections behind.

    With ``tls`` (mTLS), ``https`` pools are kept per origin and expected server identities, made with its
    current context; when the files rotate, the next request gets a new pool and the old one is closed
    once its requests have finished. ``clock`` (seconds) times the sweeps.

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
        tls: ClientTLS | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ssl_context = ssl_context
        self._clock = clock
        self._tls = tls
        #: Pools replaced after a rotation, closed once nothing runs on them.
        self._retired: list[httpx.AsyncHTTPTransport] = []
        self._limits = limits or httpx.Limits(max_connections=None, max_keepalive_connections=100)
        self._http2 = http2
        self._proxies = proxies
        self._origins: dict[tuple[Any, ...], _Origin] = {}
        self._countdown = _SWEEP_EVERY
        expiry = self._limits.keepalive_expiry
        self._sweep_interval = expiry if expiry is not None and expiry > 0 else 30.0
        self._next_sweep = clock() + self._sweep_interval
        self._closed = False

    def origins(self) -> list[str]:
        """The origins that have a pool now, as ``scheme://host:port``."""
        return list(
            dict.fromkeys(
                f"{key[0].decode()}://{key[1].decode()}" + (f":{key[2]}" if key[2] is not None else "")
                for key in self._origins
            )
        )

    def _open(self, url: httpx.URL, context: ssl.SSLContext | None = None) -> _Origin:
        if self._closed:
            raise RuntimeError("the connection pool is closed")
        proxy = self._proxies.for_origin(url.scheme, url.host, url.port) if self._proxies is not None else None
        transport = httpx.AsyncHTTPTransport(
            verify=context or self._ssl_context,
            http2=self._http2,
            limits=self._limits,
            proxy=proxy,
            trust_env=False,
        )
        return _Origin(transport, context)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        tls = self._tls
        if tls is None or url.raw_scheme != b"https":
            return await self._send(request, (url.raw_scheme, url.raw_host, url.port), None)
        # mTLS: the origin's pool for the service's expected identities and the current context (a pool of
        # an older context is retired); an egress proxy's TLS is httpx's, not the mesh's
        context, expected, token = tls.enter(request)
        try:
            return await self._send(request, (url.raw_scheme, url.raw_host, url.port, expected), context)
        except httpx.ConnectError as exc:
            mismatch = tls.mismatch(exc, request)
            if mismatch is None:
                raise
            raise mismatch from exc
        finally:
            tls.leave(token)

    async def _send(
        self, request: httpx.Request, key: tuple[Any, ...], context: ssl.SSLContext | None
    ) -> httpx.Response:
        """Send on the pool of ``key``, made (with ``context``, when given) if there is none for it yet."""
        origin = self._origins.get(key)
        if origin is None or origin.context is not context:
            if origin is not None:
                del self._origins[key]
                self._retired.append(origin.transport)
            await self._maybe_sweep()
            origin = self._origins[key] = self._open(request.url, context)
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
        now = self._clock()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self._sweep_interval
        for retired in [t for t in self._retired if all_connections_idle(t)]:
            self._retired.remove(retired)
            await retired.aclose()
        for key, origin in list(self._origins.items()):
            if origin.uses == origin.seen and all_connections_idle(origin.transport):
                del self._origins[key]
                await origin.transport.aclose()
            else:
                origin.seen = origin.uses

    async def aclose(self) -> None:
        self._closed = True
        origins, self._origins = self._origins, {}
        retired, self._retired = self._retired, []
        for transport in [*(origin.transport for origin in origins.values()), *retired]:
            await transport.aclose()
