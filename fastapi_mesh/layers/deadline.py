"""The deadline layer: one timer on the clock (``Clock.timeout_at``) per call, and only when the call has a
deadline."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

import httpx

from ..context import EXTENSION, CallContext
from ..errors import DeadlineExceeded
from .base import Layer

__all__ = ["DEADLINE_GRACE", "DeadlineTransport"]

#: The call's timer fires this long after the deadline. Per-attempt timeouts are capped at the deadline, so
#: a slow attempt normally ends by its own httpx timeout first, as a failure the breaker and the outlier
#: detector count; the timer is the backstop (a body trickling in, a queue), cancelling whatever runs.
DEADLINE_GRACE = 0.02


class DeadlineTransport(Layer):
    """Layer: the whole call (every attempt and every backoff) ends by its deadline or raises
    ``DeadlineExceeded``. The deadline is the earliest of the route's timeout, the inbound deadline header,
    the call's ``deadline=`` and ``retry.max_elapsed``; the client works it out before the call starts.

    Only a route, inbound or ``deadline=`` deadline arms the timer here (``timed``). When ``retry.max_elapsed``
    alone sets it (every call, with the presets), the cheaper bounds below suffice: attempt timeouts capped at
    the remaining time, no retry or backoff past it."""

    reads = ("deadline", "timed", "service", "attempts", "endpoint")

    def handle_async_request(self, request: httpx.Request) -> Coroutine[Any, Any, httpx.Response]:
        # A plain function returning the next coroutine: a call without a deadline costs no extra frame.
        ctx: CallContext = request.extensions[EXTENSION]
        if ctx.deadline is None or not ctx.timed:
            return self._inner.handle_async_request(request)
        return self._bounded(request, ctx, ctx.deadline)

    async def _bounded(self, request: httpx.Request, ctx: CallContext, deadline: float) -> httpx.Response:
        remaining = deadline - self._clock.now()
        if remaining <= 0:
            raise DeadlineExceeded(ctx.service.name, "the deadline had passed before the call", request=request)
        try:
            async with self._clock.timeout_at(deadline + DEADLINE_GRACE) as scope:
                return await self._inner.handle_async_request(request)
        except TimeoutError as exc:
            if scope.expired():
                raise DeadlineExceeded(
                    ctx.service.name,
                    f"{remaining * 1000:.0f} ms budget spent after {ctx.attempts} attempt(s)",
                    endpoint=ctx.endpoint.url if ctx.endpoint is not None else None,
                    request=request,
                ) from exc
            raise
