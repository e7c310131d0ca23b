"""The bulkhead layer: the per-service concurrency limit (``bulkhead.max_concurrent``) and its queue."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

import httpx

from .._streams import ReleasingStream
from ..context import EXTENSION, CallContext
from ..errors import DeadlineExceeded
from ..resilience.bulkhead import Bulkhead
from .base import Layer

__all__ = ["BulkheadTransport"]


class BulkheadTransport(Layer):
    """Layer: the per-service bulkhead. Services without ``bulkhead.max_concurrent`` pass straight through."""

    reads = ("service", "deadline", "stream")

    def handle_async_request(self, request: httpx.Request) -> Coroutine[Any, Any, httpx.Response]:
        # A plain function returning the next coroutine: an unlimited service costs no extra frame.
        ctx: CallContext = request.extensions[EXTENSION]
        bulkhead = ctx.service.bulkhead
        if bulkhead is None:
            return self._inner.handle_async_request(request)
        return self._limited(request, ctx, bulkhead)

    async def _limited(self, request: httpx.Request, ctx: CallContext, bulkhead: Bulkhead) -> httpx.Response:
        # A queued call waits no longer than its deadline (``retry.max_elapsed`` arms no timer of its own):
        # a timer on the clock, armed only when the call has to queue; the queue's own timeout still applies.
        deadline = ctx.deadline
        if deadline is None or (bulkhead.active < bulkhead.limit and not bulkhead.waiters):
            await bulkhead.acquire()
        else:
            try:
                async with self._clock.timeout_at(deadline) as scope:
                    await bulkhead.acquire()
            except TimeoutError:
                if scope.expired():
                    raise DeadlineExceeded(
                        ctx.service.name, "the deadline passed in the bulkhead queue", request=request
                    ) from None
                raise
        if deadline is not None and self._clock.now() >= deadline:
            # Spent waiting here, before the service was reached: not the service's failure (the breaker,
            # below, never sees this call).
            bulkhead.release()
            raise DeadlineExceeded(ctx.service.name, "the deadline passed before the call was sent", request=request)
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException:
            bulkhead.release()
            raise
        if ctx.stream and not response.is_closed:
            response.stream = ReleasingStream(response.stream, bulkhead.release)  # type: ignore[arg-type]
        else:  # read already (a body built from content, as httpx.MockTransport's are): done
            bulkhead.release()
        return response
