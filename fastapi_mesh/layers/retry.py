"""The retry layer: backoff, idempotency rules, Retry-After, a new endpoint each time.

This is also the one place where transport failures become ``MeshError``s: when no attempt got a response,
``UpstreamUnavailable`` rises with the last httpx error as its ``__cause__`` (``UpstreamTimeout``, also an
``httpx.TimeoutException``, when every attempt timed out); when an attempt got an answer (even a 503) and
retries run out, that answer is returned, as httpx would.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator

import httpx

from ..clock import Clock
from ..context import EXTENSION, CallContext
from ..errors import DeadlineExceeded, MeshError, UpstreamTimeout, UpstreamUnavailable
from ..events import RETRY_ATTEMPT, RETRY_MAX_REACHED, EventBus, RetryEvent
from ..observability.tracing import HEDGE_EVENT, RETRY_EVENT, RETRY_EXHAUSTED_EVENT
from ..resilience.backoff import backoff_delay, parse_retry_after
from ..resilience.retry import IDEMPOTENCY_HEADER, IDEMPOTENT_METHODS, NOT_SENT, RETRY_AFTER_STATUSES
from .base import Layer
from .hedge import hedged

__all__ = ["DEADLINE_SLACK", "RetryTransport"]

#: An attempt timeout this close to the deadline is taken as the deadline expiring (timers are not exact).
DEADLINE_SLACK = 0.005


class RetryTransport(Layer):
    """Layer: up to ``1 + retry.max_retries`` attempts, each re-picking an endpoint below.

    Idempotent methods (and requests with an ``Idempotency-Key``) are retried on transport failures and on
    ``retry.retry_on_status``; any other method only when the request never left (connect failures). A
    body that is not buffered (a streaming upload) is never retried. No retry starts past the deadline.
    """

    # A hedge's context is made from the call's (``CallContext.hedge``: ``inbound`` to ``group``); the call
    # takes the endpoint of the attempt whose answer it gets.
    reads = (
        *("service", "deadline", "stream", "span", "endpoint", "attempts"),
        *("inbound", "affinity_key", "timed", "tried", "group"),
    )
    writes = ("attempts", "endpoint")

    def __init__(self, inner: httpx.AsyncBaseTransport, *, clock: Clock, rng: random.Random, events: EventBus) -> None:
        super().__init__(inner, clock=clock)
        self._rng = rng
        self._events = events

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        ctx: CallContext = request.extensions[EXTENSION]
        service = ctx.service
        config = service.policy.retry
        max_attempts = 1 + config.max_retries
        idempotent = request.method in IDEMPOTENT_METHODS or IDEMPOTENCY_HEADER in request.headers
        replayable = isinstance(request.stream, httpx.ByteStream)
        if not replayable and max_attempts > 1 and config.max_body_bytes > 0:
            replayable = await _buffer_body(request, config.max_body_bytes)
        service.budget.record_request()
        hedge_delay = self._hedge_delay(ctx) if config.hedge_delay is not None and idempotent and replayable else None
        delay = 0.0
        last_response: httpx.Response | None = None  # what an earlier attempt got, when this one gets nothing
        last_error: httpx.TransportError | None = None
        timeouts_only = True  # every attempt that failed without a response timed out
        while True:
            ctx.attempts += 1
            attempt = ctx.attempts
            try:
                if hedge_delay is None:
                    response = await self._inner.handle_async_request(request)
                else:
                    response = await hedged(
                        self._inner.handle_async_request,
                        request,
                        hedge_delay,
                        lambda: self._allow_hedge(ctx, request.method, max_attempts),
                        lambda r: r.status_code not in service.retry_statuses,
                        clock=self._clock,
                    )
            except MeshError as exc:
                # A retry that could not even be sent (every endpoint full or gone, no time left) must not
                # hide what the earlier attempts got: their last answer stands, or their last failure.
                if last_response is not None:
                    return last_response
                if last_error is not None and not isinstance(exc, DeadlineExceeded):
                    raise (UpstreamTimeout if timeouts_only else UpstreamUnavailable)(
                        service.name,
                        f"{type(last_error).__name__} after {attempt - 1} attempt(s), then no endpoint "
                        f"for another: {exc}",
                        endpoint=ctx.endpoint.url if ctx.endpoint is not None else None,
                        request=request,
                    ) from last_error
                raise
            except httpx.TransportError as exc:
                attempt = ctx.attempts  # a hedge made during this round counts as an attempt too
                reason = type(exc).__name__
                timeouts_only = timeouts_only and isinstance(exc, httpx.TimeoutException)
                safe = replayable and (idempotent or isinstance(exc, NOT_SENT))
                if safe:
                    delay = backoff_delay(config, attempt, self._rng, delay)
                    refusal = self._refusal(ctx, attempt, max_attempts, delay)
                    if refusal is None:
                        last_error = exc
                        await self._pause(ctx, request.method, attempt, delay, reason)
                        continue
                    self._exhausted(ctx, request.method, attempt, f"{reason}; {refusal}")
                if last_response is not None:  # an earlier attempt got an answer: it stands
                    return last_response
                endpoint = ctx.endpoint.url if ctx.endpoint is not None else None
                if isinstance(exc, httpx.TimeoutException) and self._past_deadline(ctx):
                    raise DeadlineExceeded(
                        service.name,
                        f"{reason} after {attempt} attempt(s): the call's deadline passed",
                        endpoint=endpoint,
                        request=request,
                    ) from exc
                raise (UpstreamTimeout if timeouts_only else UpstreamUnavailable)(
                    service.name,
                    f"{reason} after {attempt} attempt(s): {exc}".rstrip(": "),
                    endpoint=endpoint,
                    request=request,
                ) from exc
            attempt = ctx.attempts
            status = response.status_code
            if status not in service.retry_statuses or not (replayable and idempotent):
                return response
            reason = f"status {status}"
            delay = backoff_delay(config, attempt, self._rng, delay)
            if status in RETRY_AFTER_STATUSES:
                hinted = parse_retry_after(response.headers.get("retry-after"), time.time())
                if hinted is not None:
                    delay = min(max(delay, hinted), config.max_delay)
            refusal = self._refusal(ctx, attempt, max_attempts, delay)
            if refusal is not None:
                self._exhausted(ctx, request.method, attempt, f"{reason}; {refusal}")
                return response
            if ctx.stream:
                await response.aclose()
            else:  # its body is in memory: mark it read (which closes it), so it can stand as the answer
                await response.aread()
                last_response = response
            last_error = None
            await self._pause(ctx, request.method, attempt, delay, reason)

    @staticmethod
    def _hedge_delay(ctx: CallContext) -> float | None:
        """Seconds before a hedge for this call, or None: no hedging (off, streamed, or p95 not known yet)."""
        setting = ctx.service.policy.retry.hedge_delay
        if setting is None or ctx.stream:
            return None
        if setting == "p95":
            latency = ctx.service.latency
            return latency.p95 if latency is not None else None
        return setting

    def _allow_hedge(self, ctx: CallContext, method: str, max_attempts: int) -> bool:
        """A hedge is an extra attempt: it needs room under ``max_retries`` and the retry budget's consent."""
        if ctx.attempts >= max_attempts or not ctx.service.budget.try_withdraw():
            return False
        ctx.attempts += 1
        ctx.service.hedges += 1
        if ctx.span is not None:
            ctx.span.add_event(HEDGE_EVENT, {"mesh.attempt": ctx.attempts})
        if self._events.wants(RETRY_ATTEMPT):
            self._events.emit(
                RETRY_ATTEMPT, RetryEvent(ctx.service.name, method, ctx.attempts, 0.0, "hedge", _context(ctx, method))
            )
        return True

    def _past_deadline(self, ctx: CallContext) -> bool:
        """Whether the call's deadline has (all but) passed: a timeout then is the deadline's doing."""
        return ctx.deadline_passed(self._clock.now() + DEADLINE_SLACK)

    def _refusal(self, ctx: CallContext, attempt: int, max_attempts: int, delay: float) -> str | None:
        """Why no retry may follow attempt number ``attempt``, or None (and one retry is withdrawn)."""
        if attempt >= max_attempts:
            return f"max_retries ({max_attempts - 1}) reached"
        if ctx.deadline is not None and self._clock.now() + delay >= ctx.deadline:
            return "the deadline leaves no time for another attempt"
        if not ctx.service.budget.try_withdraw():
            return "retry budget exhausted"
        return None

    async def _pause(self, ctx: CallContext, method: str, attempt: int, delay: float, reason: str) -> None:
        ctx.service.retries += 1
        if ctx.span is not None:
            ctx.span.add_event(
                RETRY_EVENT, {"mesh.attempt": attempt + 1, "mesh.retry.delay_s": delay, "mesh.retry.reason": reason}
            )
        if self._events.wants(RETRY_ATTEMPT):
            self._events.emit(
                RETRY_ATTEMPT,
                RetryEvent(ctx.service.name, method, attempt + 1, delay, reason, _context(ctx, method)),
            )
        if delay > 0:
            await self._clock.sleep(delay)
        else:
            await asyncio.sleep(0)

    def _exhausted(self, ctx: CallContext, method: str, attempt: int, reason: str) -> None:
        ctx.service.retries_exhausted += 1
        if ctx.span is not None:
            ctx.span.add_event(RETRY_EXHAUSTED_EVENT, {"mesh.attempts": attempt, "mesh.retry.reason": reason})
        if self._events.wants(RETRY_MAX_REACHED):
            self._events.emit(
                RETRY_MAX_REACHED,
                RetryEvent(ctx.service.name, method, attempt, 0.0, reason, _context(ctx, method)),
            )


class _PrefixedStream(httpx.AsyncByteStream):
    """A streamed body whose first chunks were already read while trying to buffer it."""

    def __init__(self, prefix: list[bytes], rest: AsyncIterator[bytes], inner: httpx.AsyncByteStream) -> None:
        self._prefix = prefix
        self._rest = rest
        self._inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._prefix:
            yield chunk
        async for chunk in self._rest:
            yield chunk


async def _buffer_body(request: httpx.Request, limit: int) -> bool:
    """Read a streamed request body into memory when it is at most ``limit`` bytes, so it can be sent again.

    Returns True when the body is now replayable; a larger body is sent as it streams, once, and not retried.
    """
    stream = request.stream
    if not isinstance(stream, httpx.AsyncByteStream):
        return False
    chunks: list[bytes] = []
    size = 0
    iterator = stream.__aiter__()
    async for chunk in iterator:
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            request.stream = _PrefixedStream(chunks, iterator, stream)
            return False
    request.stream = httpx.ByteStream(b"".join(chunks))
    return True


def _context(ctx: CallContext, method: str) -> str:
    return f"{method} {ctx.service.name}"
