"""The balancer layer: picks an endpoint per attempt, points the request at it, counts it in flight."""

from __future__ import annotations

import functools

import httpx

from .._httpx_compat import set_header, with_origin
from .._streams import ReleasingStream
from ..context import EXTENSION, CallContext
from ..resilience.outcome import CANCELLED, FAILURE, attempt_verdict
from .base import Layer

__all__ = ["BalancerTransport"]


class BalancerTransport(Layer):
    """Layer: one attempt goes to the endpoint the service's balancer picks, and its outcome goes to the
    service's ``Outcomes`` (the endpoint's record, the hedge's latencies).

    The balancer is asked with plain inputs, taken from the call's context here: the affinity key (the
    call's ``affinity_key=``, else the one the inbound request carries, read only when the balancer uses
    one), the endpoints tried so far, and the routing group of the first attempt (routing rules see the
    outbound request's headers). The endpoint picked becomes the context's ``endpoint`` and joins ``tried``."""

    reads = ("service", "affinity_key", "inbound", "tried", "group", "deadline", "stream")
    writes = ("endpoint", "tried", "group")

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        ctx: CallContext = request.extensions[EXTENSION]
        service = ctx.service
        balancer = service.balancer
        key = None
        if balancer.keyed:
            key = ctx.affinity_key
            if key is None and ctx.inbound is not None:
                # Before the pick, which may fail: reading a cookie key is what has MeshMiddleware set it.
                key = ctx.inbound.affinity_key(balancer.affinity)
        group = ctx.group
        if balancer.routed:
            group = ctx.group = balancer.route(group, key, request.headers)
        state = balancer.pick(key, ctx.tried, group)
        ctx.endpoint = state
        ctx.tried.append(state)
        endpoint = state.endpoint
        request.url = with_origin(request.url, endpoint.scheme, endpoint.host, endpoint.port)
        set_header(request.headers, b"host", endpoint.host_header_bytes)
        balancer.acquire(state)
        clock = self._clock
        start = clock.now()
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException as exc:
            balancer.release(state)
            verdict = attempt_verdict(exc)
            if verdict == FAILURE:
                service.outcomes.failed_attempt(state, clock.now() - start)
            elif verdict == CANCELLED and ctx.deadline_passed(now := clock.now()):
                # Cancelled by the call's own deadline timer: a timeout, so a failure of this endpoint.
                # Cancelled before it (the caller went away, a hedge lost), a bug, or a MeshError raised
                # before anything was sent: not the endpoint's doing, no verdict.
                service.outcomes.failed_attempt(state, now - start)
            raise
        service.outcomes.answered(state, response.status_code, clock.now() - start)
        if ctx.stream and not response.is_closed:
            response.stream = ReleasingStream(
                response.stream,  # type: ignore[arg-type]
                functools.partial(balancer.release, state),
            )
        else:  # read already (or a response built from content, as httpx.MockTransport's are): done
            balancer.release(state)
        return response
