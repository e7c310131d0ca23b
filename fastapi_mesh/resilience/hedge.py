"""Hedging: when an idempotent attempt is slow, send a second one to another endpoint; the first good
answer wins and the other is cancelled. Hedges count against the retry budget.

The hedge delay is fixed (``retry.hedge_delay: 0.05``) or the service's observed p95 latency
(``retry.hedge_delay: "p95"``, from the last ``LATENCY_SAMPLES`` successful attempts; no hedging until
``MIN_SAMPLES`` have been seen).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import httpx

__all__ = ["LatencyWindow", "hedged"]

LATENCY_SAMPLES = 128
MIN_SAMPLES = 20
#: The p95 is recomputed every this many samples, not on every call.
RECOMPUTE_EVERY = 16

Attempt = Callable[[httpx.Request], Coroutine[Any, Any, httpx.Response]]


class LatencyWindow:
    """The last ``LATENCY_SAMPLES`` attempt latencies of a service, and their 95th percentile.

    >>> window = LatencyWindow()
    >>> for ms in range(1, 113):  # the p95 is recomputed every 16 samples: here, at the 112th
    ...     window.add(ms / 1000)
    >>> round(window.p95 or 0, 3)
    0.106
    """

    __slots__ = ("_count", "_next", "_p95", "_samples")

    def __init__(self) -> None:
        self._samples: list[float] = []
        self._next = 0
        self._count = 0
        self._p95: float | None = None

    def add(self, seconds: float) -> None:
        if len(self._samples) < LATENCY_SAMPLES:
            self._samples.append(seconds)
        else:
            self._samples[self._next] = seconds
            self._next = (self._next + 1) % LATENCY_SAMPLES
        self._count += 1
        if self._count >= MIN_SAMPLES and (self._p95 is None or self._count % RECOMPUTE_EVERY == 0):
            ordered = sorted(self._samples)
            self._p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95) - 1)]

    @property
    def p95(self) -> float | None:
        return self._p95


def _clone(request: httpx.Request) -> httpx.Request:
    """A second request for the hedge: same method, URL, headers and (buffered) body."""
    return httpx.Request(
        request.method,
        request.url,
        headers=request.headers.copy(),
        stream=request.stream,
        extensions=dict(request.extensions),
    )


async def hedged(
    attempt: Attempt,
    request: httpx.Request,
    delay: float,
    allow_hedge: Callable[[], bool],
    is_good: Callable[[httpx.Response], bool],
) -> httpx.Response:
    """Run ``attempt(request)``; if it has not finished after ``delay`` and ``allow_hedge()`` agrees, run a
    copy alongside it. Return the first good response (``is_good``), else the last answer, else re-raise
    the last error. Whatever is still running at the end is cancelled."""
    first = asyncio.ensure_future(attempt(request))
    tasks = [first]
    winner: httpx.Response | None = None
    try:
        done, _ = await asyncio.wait(tasks, timeout=delay)
        if done or not allow_hedge():
            winner = await first
            return winner
        tasks.append(asyncio.ensure_future(attempt(_clone(request))))
        pending = set(tasks)
        error: BaseException | None = None
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                if exc is not None:
                    error = exc
                    continue
                response = task.result()
                if winner is None or is_good(response):
                    winner = response  # an answer beats an error; a good answer beats a bad one
                if is_good(response):
                    return response
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
