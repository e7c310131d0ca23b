"""What counts as a failure, decided here once for the breaker (a call's outcome) and the balancer (an
attempt's), and where an attempt's outcome goes from there.

- An answer fails when its status is in ``circuit_breaker.failure_on_status`` (5xx by default); any other
  answer, 4xx included, succeeds.
- No answer (an ``httpx.TransportError``) fails, with two exceptions. For a call, the mesh's own refusals
  record nothing: ``NoHealthyEndpoints`` (nothing to send to: the balancer's concern, and the error an
  unknown service must keep giving), ``BulkheadFull`` and ``AuthorizationDenied``; the mesh's verdicts on
  the attempts (``UpstreamUnavailable``, ``DeadlineExceeded``) are failures. For an attempt, every
  ``MeshError`` records nothing: the mesh raised it before anything reached the endpoint.
- Anything else (cancellation, a programming error) is ``CANCELLED``: a failure when the call's deadline has
  passed, as its timer then did the cancelling (a timeout); otherwise nothing is recorded.

>>> from fastapi_mesh.errors import BulkheadFull, UpstreamUnavailable
>>> outcomes = Outcomes([500, 503], record=lambda state, ok, latency: None)
>>> outcomes.failed(503), outcomes.failed(404)
(True, False)
>>> call_verdict(UpstreamUnavailable("users")), call_verdict(BulkheadFull("users"))
(1, 2)
>>> attempt_verdict(UpstreamUnavailable("users")), attempt_verdict(httpx.ReadError("reset"))
(2, 1)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import httpx

from ..errors import AuthorizationDenied, BulkheadFull, MeshError, NoHealthyEndpoints

if TYPE_CHECKING:
    from ..balancing.endpoint import EndpointState
    from .hedge import LatencyWindow

__all__ = ["CANCELLED", "FAILURE", "IGNORED", "Outcomes", "attempt_verdict", "call_verdict"]

#: Verdicts on an error: a failure; nothing to record; cancelled (a failure only past the call's deadline).
FAILURE = 1
IGNORED = 2
CANCELLED = 3

#: The mesh's own refusals: not the service failing.
_REFUSALS = (NoHealthyEndpoints, BulkheadFull, AuthorizationDenied)

#: One set per distinct ``failure_on_status`` (the default, every 5xx, is 8 KiB): services share it.
_STATUS_SETS: dict[frozenset[int], frozenset[int]] = {}
_MAX_STATUS_SETS = 64

#: ``record(endpoint, ok, latency)``: the balancer's record of one attempt.
Record = Callable[["EndpointState", bool, float], None]


class Outcomes:
    """One service's failure rule, and the hand-off of each attempt's outcome: to the balancer (``record``:
    the endpoint's counters and latency, outlier detection) and, when successful, to the hedge's latency
    window (``latency``, with ``retry.hedge_delay: "p95"``)."""

    __slots__ = ("_latency", "_record", "statuses")

    def __init__(self, failure_on_status: Iterable[int], record: Record, latency: LatencyWindow | None = None) -> None:
        #: The answers that count as failures (``circuit_breaker.failure_on_status``).
        self.statuses = _shared(frozenset(failure_on_status))
        self._record = record
        self._latency = latency

    def failed(self, status: int) -> bool:
        """Whether an answer with ``status`` is a failure."""
        return status in self.statuses

    def answered(self, endpoint: EndpointState, status: int, elapsed: float) -> None:
        """An attempt on ``endpoint`` got an answer with ``status`` after ``elapsed`` seconds."""
        ok = status not in self.statuses
        self._record(endpoint, ok, elapsed)
        if ok and self._latency is not None:
            self._latency.add(elapsed)

    def failed_attempt(self, endpoint: EndpointState, elapsed: float) -> None:
        """An attempt on ``endpoint`` got no answer (a transport failure, or the deadline's timer)."""
        self._record(endpoint, False, elapsed)


def _shared(statuses: frozenset[int]) -> frozenset[int]:
    """``statuses``, or the equal set another service already holds."""
    found = _STATUS_SETS.get(statuses)
    if found is not None:
        return found
    if len(_STATUS_SETS) < _MAX_STATUS_SETS:
        _STATUS_SETS[statuses] = statuses
    return statuses


def call_verdict(exc: BaseException) -> int:
    """The breaker's verdict on a call that raised ``exc``: ``FAILURE``, ``IGNORED`` or ``CANCELLED``."""
    if isinstance(exc, _REFUSALS):
        return IGNORED
    if isinstance(exc, httpx.TransportError):
        return FAILURE
    return CANCELLED


def attempt_verdict(exc: BaseException) -> int:
    """The balancer's verdict on an attempt that raised ``exc``: ``FAILURE``, ``IGNORED`` or ``CANCELLED``."""
    if isinstance(exc, MeshError):
        return IGNORED
    if isinstance(exc, httpx.TransportError):
        return FAILURE
    return CANCELLED
