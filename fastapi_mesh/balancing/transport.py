"""The balancer layer: picks an endpoint per attempt, points the request at it, counts it in flight."""

from __future__ import annotations

import functools

import httpx

from .._headers import set_header
from .._streams import ReleasingStream
from ..clock import Clock
from ..context import EXTENSION, CallContext
from ..errors import MeshError
from .balancer import EndpointState

__all__ = ["BalancerTransport"]


def _point_at(url: httpx.URL, state: EndpointState) -> httpx.URL:
    """``url`` with the endpoint's scheme, host and port, without re-parsing or re-validating anything."""
    endpoint = state.endpoint
    try:
        ref = url._uri_reference
        # The parsed reference is a NamedTuple; building one directly is far cheaper than ``_replace``.
        reference = _NEW_TUPLE(
            type(ref), (endpoint.scheme, "", endpoint.host, endpoint.port, ref.path, ref.query, ref.fragment)
        )
    except AttributeError:  # pragma: no cover - a future httpx without the parsed reference
        return url.copy_with(scheme=endpoint.scheme, host=endpoint.host, port=endpoint.port)
    new = _NEW_URL(httpx.URL)
    new._uri_reference = reference
    return new


_NEW_TUPLE = tuple.__new__
_NEW_URL = httpx.URL.__new__


class BalancerTransport(httpx.AsyncBaseTransport):
    """Layer: one attempt goes to the endpoint the service's balancer picks (routing rules see the
    outbound request's headers)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, *, clock: Clock) -> None:
        self._inner = inner
        self._clock = clock

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        ctx: CallContext = request.extensions[EXTENSION]
        balancer = ctx.service.balancer
        state = balancer.pick(ctx, request.headers)
        ctx.endpoint = state
        ctx.tried.append(state)
        request.url = _point_at(request.url, state)
        set_header(request.headers, b"host", state.endpoint.host_header_bytes)
        balancer.acquire(state)
        clock = self._clock
        start = clock.now()
        try:
            response = await self._inner.handle_async_request(request)
        except MeshError:  # raised by the mesh before anything was sent: not the endpoint's doing
            balancer.release(state)
            raise
        except httpx.TransportError:
            balancer.release(state)
            balancer.record(state, False, clock.now() - start)
            raise
        except BaseException:
            # Cancelled by the call's own deadline timer: a timeout, so a failure of this endpoint.
            # Cancelled before the deadline (the caller went away, a hedge lost) or a bug: no verdict.
            balancer.release(state)
            now = clock.now()
            if ctx.deadline_passed(now):
                balancer.record(state, False, now - start)
            raise
        elapsed = clock.now() - start
        ctx.endpoint = state  # a hedge may have picked another endpoint since: this one answered
        ok = not ctx.service.breaker.is_failure_status(response.status_code)
        balancer.record(state, ok, elapsed)
        if ok and ctx.service.latency is not None:
            ctx.service.latency.add(elapsed)
        if ctx.stream and not response.is_closed:
            response.stream = ReleasingStream(
                response.stream,  # type: ignore[arg-type]
                functools.partial(balancer.release, state),
            )
        else:  # read already (or a response built from content, as httpx.MockTransport's are): done
            balancer.release(state)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()
