"""Outlier detection: eject an endpoint of one service after N failures in a row, as Envoy does.

>>> from fastapi_mesh.clock import ManualClock
>>> from fastapi_mesh.settings import OutlierDetectionConfig
>>> clock = ManualClock()
>>> detector = OutlierDetector("users", OutlierDetectionConfig(consecutive_failures=2), clock)
>>> for _ in range(2):
...     detector.record("http://a", False, total_endpoints=3)
>>> detector.is_ejected("http://a"), detector.ejected_count()
(True, 1)
>>> clock.advance(30.0)
>>> detector.is_ejected("http://a")
False

Rules (what the caller calls a failure -- a 5xx, a connect failure, a timeout -- is its decision):

- ``consecutive_failures`` failures in a row eject an endpoint; a success resets the run. Results that
  arrive while the endpoint is ejected (calls that were already in flight) are ignored.
- The n-th ejection lasts ``base_ejection_time * n``, capped at ``max_ejection_time``.
- An ejection is refused when it would put more than ``max_ejection_percent`` of ``total_endpoints`` out,
  or the last endpoint that is still in. A refused endpoint keeps its run of failures, so its next failure
  tries again (and succeeds once room has come back).
- An ejection ends by itself when its time is up; that is noticed lazily (``is_ejected``,
  ``ejected_count``, the next ``record``), but the return is dated at the exact end of the ejection.
  ``uneject`` (an active health check passed) ends it at once.
- Decay: the ejection count (the multiplier) is kept across returns. Once an endpoint has been back for as
  long as its last ejection lasted without a single failure, the count drops by one, and by one more for
  every further such quiet period. Any failure starts the quiet period again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..clock import Clock
from ..events import EventBus
from ..settings import OutlierDetectionConfig

__all__ = ["OUTLIER_EJECTED", "OUTLIER_RETURNED", "EndpointEjection", "OutlierDetector"]

#: Also known as ``endpoint:ejected`` and ``endpoint:restored`` (``fastapi_mesh.events.ALIASES``).
OUTLIER_EJECTED = "outlier:ejected"
OUTLIER_RETURNED = "outlier:returned"

_NEVER = math.inf


@dataclass(frozen=True, slots=True)
class EndpointEjection:
    """An endpoint ejected (``outlier:ejected``: ``duration_s`` is the ejection time) or back in
    (``outlier:returned``: ``duration_s`` is the time it actually spent out). ``ejections`` is its count."""

    service: str
    endpoint: str
    ejections: int
    duration_s: float


class _Record:
    """What the detector knows of one endpoint."""

    __slots__ = (
        "consecutive",
        "decay_at",
        "ejected",
        "ejected_at",
        "ejected_until",
        "ejections",
        "last_duration",
    )

    def __init__(self) -> None:
        self.consecutive = 0
        self.ejections = 0
        self.ejected = False
        self.ejected_at = 0.0
        self.ejected_until = 0.0
        self.last_duration = 0.0
        #: When the ejection count next drops by one (infinity: not decaying).
        self.decay_at = _NEVER


def _decay_steps(ejections: int, decay_at: float, period: float, now: float) -> int:
    """How many quiet periods (each takes one off the ejection count) have passed by ``now``."""
    if not ejections or now < decay_at:
        return 0
    return 1 + int((now - decay_at) // period)


class OutlierDetector:
    """Per-endpoint ejection for one service, keyed by endpoint URL.

    The balancer calls ``record`` after each attempt and skips endpoints for which ``is_ejected`` is true.
    ``record(url, True, n)`` and ``is_ejected`` on an endpoint that is not ejected are O(1) and allocate
    nothing; with ``config.enabled`` false nothing is ever ejected.
    """

    __slots__ = (
        "_base",
        "_ejected",
        "_enabled",
        "_events",
        "_max",
        "_records",
        "_threshold",
        "clock",
        "config",
        "ejections_total",
        "service",
    )

    def __init__(
        self, service: str, config: OutlierDetectionConfig, clock: Clock, events: EventBus | None = None
    ) -> None:
        self.service = service
        self.config = config
        self.clock = clock
        self._events = events
        self._enabled = config.enabled
        self._threshold = config.consecutive_failures
        self._base = config.base_ejection_time
        self._max = config.max_ejection_time
        self._records: dict[str, _Record] = {}
        self._ejected: set[str] = set()
        #: Ejections made since the start (``mesh_outlier_ejections_total``).
        self.ejections_total = 0

    # ------------------------------------------------------------------------------------------ hot path

    def record(self, url: str, ok: bool, total_endpoints: int) -> None:
        """Note one attempt's outcome on ``url``; ``total_endpoints`` is the size of the service's set."""
        if not self._enabled:
            return
        record = self._records.get(url)
        if ok:
            if record is not None:
                record.consecutive = 0
            return
        now = self.clock.now()
        if record is None:
            record = self._records[url] = _Record()
        elif record.ejected:
            if now < record.ejected_until:
                return  # a call that was in flight when the endpoint was ejected
            self._return(url, record, record.ejected_until)
        steps = _decay_steps(record.ejections, record.decay_at, record.last_duration, now)
        if steps:
            record.ejections = max(record.ejections - steps, 0)
        record.decay_at = now + record.last_duration if record.ejections else _NEVER
        record.consecutive += 1
        if record.consecutive >= self._threshold and self._has_room(total_endpoints):
            self._eject(url, record, now)

    @property
    def any_ejected(self) -> bool:
        """Whether any endpoint may be ejected (cheap: lets a pick skip the per-endpoint checks)."""
        return bool(self._ejected)

    def is_ejected(self, url: str) -> bool:
        """True while ``url`` is ejected; an ejection whose time is up ends here."""
        if url not in self._ejected:
            return False
        record = self._records[url]
        if self.clock.now() < record.ejected_until:
            return True
        self._return(url, record, record.ejected_until)
        return False

    @property
    def ejected_now(self) -> int:
        """How many endpoints are marked ejected (without ending those whose time is up: cheap)."""
        return len(self._ejected)

    def ejected_until(self, url: str) -> float:
        """When ``url``'s current ejection ends (``-inf`` when it is not ejected)."""
        record = self._records.get(url)
        return record.ejected_until if record is not None and record.ejected else float("-inf")

    # --------------------------------------------------------------------------------------- management

    def ejected_count(self) -> int:
        """How many endpoints are ejected now (ends the ejections whose time is up)."""
        self._sweep()
        return len(self._ejected)

    def uneject(self, url: str) -> None:
        """End ``url``'s ejection now (an active health check passed); its ejection count stays."""
        if url in self._ejected:
            record = self._records[url]
            self._return(url, record, min(self.clock.now(), record.ejected_until))

    def forget(self, url: str) -> None:
        """Drop everything known of ``url`` (it left discovery)."""
        self._records.pop(url, None)
        self._ejected.discard(url)

    def as_dict(self) -> dict[str, dict[str, object]]:
        """The endpoints with a record, as of now (read-only: no ejection ends here)."""
        now = self.clock.now()
        view: dict[str, dict[str, object]] = {}
        for url, record in self._records.items():
            ejected = record.ejected and now < record.ejected_until
            ejections = record.ejections
            if not ejected:
                # an ejection that is over but not yet noticed decays from its end, as ``_return`` will
                decay_at = record.ejected_until + record.last_duration if record.ejected else record.decay_at
                ejections -= _decay_steps(ejections, decay_at, record.last_duration, now)
            view[url] = {
                "ejected": ejected,
                "ejections": max(ejections, 0),
                "consecutive_failures": record.consecutive,
                "ejected_for_s": round(record.ejected_until - now, 6) if ejected else 0.0,
            }
        return view

    # ---------------------------------------------------------------------------------------- internals

    def _has_room(self, total_endpoints: int) -> bool:
        """Whether one more ejection keeps within ``max_ejection_percent`` and leaves an endpoint in."""
        self._sweep()
        after = len(self._ejected) + 1
        return after < total_endpoints and after * 100.0 <= self.config.max_ejection_percent * total_endpoints

    def _sweep(self) -> None:
        if not self._ejected:
            return
        now = self.clock.now()
        records = self._records
        for url in [u for u in self._ejected if now >= records[u].ejected_until]:
            self._return(url, records[url], records[url].ejected_until)

    def _eject(self, url: str, record: _Record, now: float) -> None:
        record.ejections += 1
        duration = min(self._base * record.ejections, self._max)
        record.ejected = True
        record.ejected_at = now
        record.ejected_until = now + duration
        record.last_duration = duration
        record.consecutive = 0
        record.decay_at = _NEVER
        self._ejected.add(url)
        self.ejections_total += 1
        events = self._events
        if events is not None and events.wants(OUTLIER_EJECTED):
            events.emit(OUTLIER_EJECTED, EndpointEjection(self.service, url, record.ejections, duration))

    def _return(self, url: str, record: _Record, at: float) -> None:
        """End ``url``'s ejection as of ``at`` (its natural end, or now for ``uneject``)."""
        record.ejected = False
        record.consecutive = 0
        record.decay_at = at + record.last_duration
        self._ejected.discard(url)
        events = self._events
        if events is not None and events.wants(OUTLIER_RETURNED):
            events.emit(OUTLIER_RETURNED, EndpointEjection(self.service, url, record.ejections, at - record.ejected_at))
