"""The balancer layer: picks an endpoint per attempt, points the request at it, counts it in flight."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from .._headers import set_header
from ..clock import Clock
from ..context import EXTENSION, CallContext
from ..errors import MeshError
from .balancer import EndpointState

__all__ = ["BalancerTransport"]


def _point_at(url: httpx.URL, state: EndpointState) -> httpx.URL:
    """``url`` with the endpoint's scheme, host and port, without re-parsing or re-validating anything."""
    endpoint = state.endpoint
    try:
        reference = url._uri_reference._replace(
            scheme=endpoint.scheme, userinfo="", host=endpoint.host, port=endpoint.port
        )
    except AttributeError:  # pragma: no cover - a future httpx without the parsed reference
        return url.copy_with(scheme=endpoint.scheme, host=endpoint.host, port=endpoint.port)
    new = httpx.URL.__new__(httpx.URL)
    new._uri_reference = reference
    return new


class _ReleasingStream(httpx.AsyncByteStream):
    """A streamed body that gives the endpoint's in-flight slot back when it is closed."""

    def __init__(self, inner: httpx.AsyncByteStream, state: EndpointState) -> None:
        self._inner = inner
        self._state: EndpointState | None = state

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            if self._state is not None:
                self._state.in_flight -= 1
                self._state = None


class BalancerTransport(httpx.AsyncBaseTransport):
    """Layer: one attempt goes to the endpoint the service's balancer picks."""

    def __init__(self, inner: httpx.AsyncBaseTransport, *, clock: Clock) -> None:
        self._inner = inner
        self._clock = clock

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        ctx: CallContext = request.extensions[EXTENSION]
        state = ctx.service.balancer.pick(ctx)
        ctx.endpoint = state
        ctx.tried.append(state)
        request.url = _point_at(request.url, state)
        set_header(request.headers, b"host", state.endpoint.host_header_bytes)
        state.in_flight += 1
        balancer = ctx.service.balancer
        clock = self._clock
        start = clock.now()
        try:
            response = await self._inner.handle_async_request(request)
        except MeshError:  # raised by the mesh before anything was sent: not the endpoint's doing
            state.in_flight -= 1
            raise
        except httpx.TransportError:
            state.in_flight -= 1
            balancer.record(state, False, clock.now() - start)
            raise
        except BaseException:  # cancelled (the caller or the deadline gave up), or a bug: no verdict
            state.in_flight -= 1
            raise
        elapsed = clock.now() - start
        ok = response.status_code < 500
        balancer.record(state, ok, elapsed)
        if ok and ctx.service.latency is not None:
            ctx.service.latency.add(elapsed)
        if ctx.stream:
            response.stream = _ReleasingStream(response.stream, state)  # type: ignore[arg-type]
        else:
            state.in_flight -= 1
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()
