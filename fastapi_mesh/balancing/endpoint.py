"""One endpoint's balancing state: what the mesh has seen of it (calls in flight, latency, failures, health).

The balancer holds one ``EndpointState`` per endpoint discovery gave it, and keeps it while the endpoint stays;
the strategies, the hash rings and the active health checks work on these objects. This module sits below
all of them and imports none.

>>> from fastapi_mesh.discovery.base import Endpoint
>>> state = EndpointState(Endpoint("http://10.0.0.1:8080"))
>>> state.record(False, 0.002)  # a failure counts as slow: FAILURE_PENALTY times at least DEFAULT_RTT
0.12
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

from ..discovery.base import Endpoint

__all__ = [
    "DEFAULT_RTT",
    "EWMA_ALPHA",
    "FAILURE_PENALTY",
    "SLOW_START_MIN_WEIGHT",
    "EndpointState",
    "Moved",
    "PoolCounts",
]

#: Weight of the newest latency sample in an endpoint's moving average (``least-response-time``).
EWMA_ALPHA = 0.3
#: ``p2c-ewma``: the latency estimate of an endpoint that has not answered yet (Linkerd's default).
DEFAULT_RTT = 0.030
#: A failed attempt counts as this many times the endpoint's latency average (at least ``DEFAULT_RTT``):
#: an endpoint that refuses connections or answers 503 at once must look slow, never fast.
FAILURE_PENALTY = 4.0
#: Slow start: the share of its weight a new endpoint gets at first (Envoy's ``min_weight_percent``).
SLOW_START_MIN_WEIGHT = 0.1

#: Called as ``moved(state, old, new)`` after ``state.in_flight`` went from ``old`` to ``new``.
Moved = Callable[["EndpointState", int, int], None]


class PoolCounts(Protocol):
    """What each of the balancer's pools counts of its members: ``healthy`` (passing health checks),
    ``in_flight`` (when tracked) and ``full`` (at the connection limit); ``moved`` follows in-flight counts
    for the strategies that need it (None: nobody does)."""

    healthy: int
    in_flight: int
    full: int

    @property
    def moved(self) -> Moved | None: ...


class EndpointState:
    """One endpoint with what the mesh has seen of it: calls in flight, latency, failures, health."""

    __slots__ = (
        "_healthy",
        "consecutive_failures",
        "endpoint",
        "ewma",
        "failures",
        "in_flight",
        "peak",
        "peak_at",
        "pools",
        "requests",
        "warm_start",
        "warm_until",
        "weight",
    )

    def __init__(self, endpoint: Endpoint, now: float = 0.0) -> None:
        self.endpoint = endpoint
        self.weight = endpoint.weight
        self.in_flight = 0
        self.requests = 0
        self.failures = 0
        self.consecutive_failures = 0
        self.ewma = 0.0
        self.peak = DEFAULT_RTT
        self.peak_at = now
        self._healthy = True
        self.warm_start = 0.0
        self.warm_until = 0.0  # > now while in slow start
        #: The balancer's pools this endpoint is in (they count its health and calls in flight).
        self.pools: tuple[PoolCounts, ...] = ()

    @property
    def url(self) -> str:
        return self.endpoint.url

    @property
    def healthy(self) -> bool:
        """Whether the endpoint passes its active health checks (set by whoever runs them)."""
        return self._healthy

    @healthy.setter
    def healthy(self, value: bool) -> None:
        value = bool(value)
        if value != self._healthy:
            self._healthy = value
            delta = 1 if value else -1
            for pool in self.pools:
                pool.healthy += delta

    def warmth(self, now: float) -> float:
        """The share of its weight the endpoint gets at ``now``: during slow start it grows linearly from
        ``SLOW_START_MIN_WEIGHT`` to 1 over the window; 1 otherwise."""
        until = self.warm_until
        if until <= now:
            return 1.0
        start = self.warm_start
        return max(SLOW_START_MIN_WEIGHT, (now - start) / (until - start))

    def record(self, ok: bool, latency: float) -> float:
        """Note one finished attempt (``ok`` is False for a 5xx or a transport failure); returns the
        latency it counted.

        A failure makes the endpoint look slower: it counts as ``FAILURE_PENALTY`` times the larger of its
        own latency and the current average (``DEFAULT_RTT`` for a first sample), so an endpoint that
        refuses connections or answers 503 at once soon looks slower than its healthy peers and the
        latency-aware strategies send it little traffic."""
        self.requests += 1
        if ok:
            self.consecutive_failures = 0
        else:
            self.failures += 1
            self.consecutive_failures += 1
            floor = self.ewma if self.requests > 1 else DEFAULT_RTT
            latency = FAILURE_PENALTY * max(latency, floor, DEFAULT_RTT)
        self.ewma = latency if self.requests == 1 else self.ewma + EWMA_ALPHA * (latency - self.ewma)
        return latency

    def observe_peak(self, ok: bool, latency: float, now: float, decay: float) -> None:
        """Peak-EWMA: a slower sample replaces the estimate; a faster one pulls it down with time constant
        ``decay`` (the estimate as read has decayed towards zero since the last sample at the same pace).
        A failure never lowers it: a fast error must not make an endpoint look good. The first successful
        sample replaces the ``DEFAULT_RTT`` placeholder."""
        if ok and self.requests == 1:
            self.peak = latency
            self.peak_at = now
            return
        age = now - self.peak_at
        keep = math.exp(-age / decay) if age > 0 else 1.0
        estimate = self.peak * keep + latency * (1.0 - keep)
        if latency > estimate:
            estimate = latency
        if not ok and estimate < self.peak:
            estimate = self.peak
        self.peak = estimate
        self.peak_at = now

    def as_dict(self) -> dict[str, object]:
        return {
            "url": self.endpoint.url,
            "weight": self.endpoint.weight,
            "zone": self.endpoint.zone,
            "healthy": self._healthy,
            "in_flight": self.in_flight,
            "requests": self.requests,
            "failures": self.failures,
            "consecutive_failures": self.consecutive_failures,
            "ewma_ms": round(self.ewma * 1000, 3),
        }
