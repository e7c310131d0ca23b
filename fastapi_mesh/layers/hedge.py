"""Hedging: when an idempotent attempt is slow, send a second one to another endpoint; the first good
answer wins and the other is cancelled. Hedges count against the retry budget (the retry layer decides).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

import httpx

from ..clock import Clock, MonotonicClock
from ..context import EXTENSION, CallContext

__all__ = ["hedged"]

Attempt = Callable[[httpx.Request], Coroutine[Any, Any, httpx.Response]]

_MONOTONIC = MonotonicClock()


def _hedge_request(request: httpx.Request) -> httpx.Request:
    """A second request for the hedge: same method, URL, headers and (buffered) body; when a call's context
    travels with it, the hedge gets one of its own (``CallContext.hedge``)."""
    extensions = dict(request.extensions)
    ctx: CallContext | None = extensions.get(EXTENSION)
    if ctx is not None:
        extensions[EXTENSION] = ctx.hedge()
    return httpx.Request(
        request.method, request.url, headers=request.headers.copy(), stream=request.stream, extensions=extensions
    )


def _answered_by(request: httpx.Request, hedge: httpx.Request) -> None:
    """The hedge's answer (or error) is the call's: the call's context takes the hedge's endpoint."""
    ctx: CallContext | None = request.extensions.get(EXTENSION)
    twin: CallContext | None = hedge.extensions.get(EXTENSION)
    if ctx is not None and twin is not None:
        ctx.endpoint = twin.endpoint


async def hedged(
    attempt: Attempt,
    request: httpx.Request,
    delay: float,
    allow_hedge: Callable[[], bool],
    is_good: Callable[[httpx.Response], bool],
    *,
    clock: Clock = _MONOTONIC,
) -> httpx.Response:
    """Run ``attempt(request)``; if it has not finished after ``delay`` (a timer on ``clock``) and
    ``allow_hedge()`` agrees, run a copy alongside it. Return the first good response (``is_good``), else the
    last answer, else re-raise the last error; the call's context names the endpoint of the attempt that gave
    it. Whatever is still running at the end is cancelled."""
    first = asyncio.ensure_future(attempt(request))
    tasks = [first]
    winner: httpx.Response | None = None
    try:
        with contextlib.suppress(TimeoutError):
            async with clock.timeout_at(clock.now() + delay):
                await asyncio.wait(tasks)  # a cancelled wait leaves the attempt running
        if first.done() or not allow_hedge():
            winner = await first
            return winner
        hedge = _hedge_request(request)
        second = asyncio.ensure_future(attempt(hedge))
        tasks.append(second)
        pending = set(tasks)
        error: BaseException | None = None
        by: asyncio.Future[httpx.Response] = first  # the attempt whose answer (or error) stands
        good = False
        while pending and not good:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                if exc is not None:
                    if winner is None:
                        by = task
                    error = exc
                    continue
                response = task.result()
                good = is_good(response)
                if winner is None or good:
                    winner = response  # an answer beats an error; a good answer beats a bad one
                    by = task
                if good:
                    break
        if by is second:
            _answered_by(request, hedge)
        if winner is not None:
            return winner
        assert error is not None
        raise error
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        for task in tasks:
            try:
                response = await task
            except BaseException:  # the loser's error or cancellation: nobody waits for it
                continue
            if response is not winner:
                await response.aclose()
