"""The breaker layer: a call goes through only while the service's breaker admits it, and its outcome
(what the caller sees, after retries) is recorded there."""

from __future__ import annotations

import httpx

from ..context import EXTENSION, CallContext
from ..errors import CircuitOpen
from ..resilience.breaker import HALF_OPEN, OPEN, CircuitBreaker
from ..resilience.outcome import CANCELLED, FAILURE, call_verdict
from .base import Layer

__all__ = ["CircuitBreakerTransport"]


class CircuitBreakerTransport(Layer):
    """Layer: reject at once with ``CircuitOpen`` while the service's breaker is open; otherwise pass the
    call on and record its outcome.

    What counts as a failure is the service's ``Outcomes`` rule (``resilience.outcome``): a status in
    ``failure_on_status`` (5xx by default), or no response at all (``UpstreamUnavailable``,
    ``DeadlineExceeded`` ...); the mesh's own refusals, and cancellation before the deadline, record nothing
    and give back a half-open slot.
    """

    reads = ("service", "deadline")

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        ctx: CallContext = request.extensions[EXTENSION]
        service = ctx.service
        breaker = service.breaker
        clock = self._clock
        ticket = breaker.acquire()
        if ticket < 0:
            retry_after = breaker.retry_after()
            detail = _rejection_detail(breaker, retry_after)
            raise CircuitOpen(service.name, detail, retry_after=retry_after, request=request)
        timed = breaker.times_calls
        start = clock.now() if timed else 0.0
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException as exc:
            verdict = call_verdict(exc)
            if verdict == FAILURE:
                breaker.record_failure(clock.now() - start if timed else 0.0, ticket)
            elif verdict == CANCELLED and ctx.deadline_passed(now := clock.now()):
                # Cancelled by the call's own deadline timer: a timeout, so a failure.
                breaker.record_failure(now - start if timed else 0.0, ticket)
            else:  # the mesh's own refusal, the caller gone away, a programming error: no verdict
                breaker.record_ignored(ticket)
            raise
        if service.outcomes.failed(response.status_code):
            breaker.record_failure(clock.now() - start if timed else 0.0, ticket)
        else:
            breaker.record_success(clock.now() - start if timed else 0.0, ticket)
        return response


def _rejection_detail(breaker: CircuitBreaker, retry_after: float) -> str:
    state = breaker.state
    if state == OPEN:
        return f"breaker open, half-open in {retry_after:.1f}s"
    if state == HALF_OPEN:
        return f"breaker half-open, {breaker.config.half_open_max_calls} probe call(s) already in flight"
    return "breaker forced open by an operator"
