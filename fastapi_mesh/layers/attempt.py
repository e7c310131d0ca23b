"""The attempt layer: per-attempt timeout within the deadline, the deadline header, the body read here."""

from __future__ import annotations

import httpx

from .._httpx_compat import set_header
from ..context import DEADLINE_HEADER, EXTENSION, CallContext
from ..errors import DeadlineExceeded
from .base import Layer

__all__ = ["AttemptTransport"]

_DEADLINE_HEADER_BYTES = DEADLINE_HEADER.encode("ascii")


class AttemptTransport(Layer):
    """Layer: one attempt on one endpoint.

    - caps httpx's per-attempt timeouts (the ``timeout`` extension) by the call's remaining deadline, and
      sends that budget downstream as ``x-mesh-timeout-ms``;
    - reads a non-streamed body here, inside the stack, into an ``httpx.ByteStream``: a connection that
      drops mid-body is then this attempt's failure, which retry and the balancer see.
    """

    reads = ("deadline", "service", "stream")

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        ctx: CallContext = request.extensions[EXTENSION]
        deadline = ctx.deadline
        if deadline is not None:
            remaining = deadline - self._clock.now()
            if remaining <= 0:
                raise DeadlineExceeded(ctx.service.name, "no time left for another attempt", request=request)
            timeouts = request.extensions.get("timeout")
            if timeouts:
                values = timeouts.values()
                if None in values or max(values) > remaining:  # else every timeout fits: leave the dict as is
                    request.extensions["timeout"] = {
                        key: remaining if value is None or value > remaining else value
                        for key, value in timeouts.items()
                    }
            else:
                request.extensions["timeout"] = {
                    "connect": remaining,
                    "read": remaining,
                    "write": remaining,
                    "pool": remaining,
                }
            set_header(request.headers, _DEADLINE_HEADER_BYTES, b"%d" % max(1, int(remaining * 1000)))
        response = await self._inner.handle_async_request(request)
        if ctx.stream or isinstance(response.stream, httpx.ByteStream):
            return response
        stream = response.stream
        try:
            body = b"".join([chunk async for chunk in stream])  # type: ignore[union-attr]
        finally:
            await stream.aclose()  # type: ignore[union-attr]
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=httpx.ByteStream(body),
            extensions=response.extensions,
            request=request,
        )
