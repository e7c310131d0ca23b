"""The endpoint set of one service and the per-endpoint state that outlives discovery refreshes."""

from __future__ import annotations

import random
from collections.abc import Sequence

from ..context import CallContext
from ..discovery.base import Endpoint
from ..errors import BulkheadFull, NoHealthyEndpoints
from ..resilience.outlier import OutlierDetector
from ..settings import LoadBalancerConfig
from .strategies import Strategy, build_strategy, rendezvous

__all__ = ["Balancer", "EndpointState"]

#: Weight of the newest latency sample in an endpoint's moving average.
EWMA_ALPHA = 0.3


class EndpointState:
    """One endpoint with what the mesh has seen of it: calls in flight, latency, failures."""

    __slots__ = (
        "consecutive_failures",
        "endpoint",
        "ewma",
        "failures",
        "healthy",
        "in_flight",
        "requests",
    )

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.in_flight = 0
        self.requests = 0
        self.failures = 0
        self.consecutive_failures = 0
        self.ewma = 0.0
        self.healthy = True

    @property
    def url(self) -> str:
        return self.endpoint.url

    def record(self, ok: bool, latency: float) -> None:
        """Note one finished attempt (``ok`` is False for a 5xx or a transport failure)."""
        self.requests += 1
        if ok:
            self.consecutive_failures = 0
        else:
            self.failures += 1
            self.consecutive_failures += 1
        self.ewma = latency if self.requests == 1 else self.ewma + EWMA_ALPHA * (latency - self.ewma)

    def as_dict(self) -> dict[str, object]:
        return {
            "url": self.endpoint.url,
            "weight": self.endpoint.weight,
            "zone": self.endpoint.zone,
            "healthy": self.healthy,
            "in_flight": self.in_flight,
            "requests": self.requests,
            "failures": self.failures,
            "consecutive_failures": self.consecutive_failures,
            "ewma_ms": round(self.ewma * 1000, 3),
        }


class Balancer:
    """Holds a service's current endpoints (pushed by discovery) and picks one per attempt.

    A pick skips endpoints that are ejected as outliers, unhealthy, at ``max_connections_per_instance``, or
    already tried in this call while another is available. The outlier detector never ejects the last one.
    """

    __slots__ = ("_by_url", "config", "endpoints", "outlier", "service", "strategy")

    def __init__(
        self, service: str, config: LoadBalancerConfig, rng: random.Random, outlier: OutlierDetector
    ) -> None:
        self.service = service
        self.config = config
        self.outlier = outlier
        self.strategy: Strategy = build_strategy(config.strategy, rng)
        self.endpoints: list[EndpointState] = []
        self._by_url: dict[str, EndpointState] = {}

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        """Replace the endpoint set; state of endpoints that stay (in flight, latency) is kept."""
        fresh: dict[str, EndpointState] = {}
        for endpoint in endpoints:
            state = self._by_url.get(endpoint.url)
            if state is None:
                state = EndpointState(endpoint)
            else:
                state.endpoint = endpoint
            fresh[endpoint.url] = state
        for url in self._by_url.keys() - fresh.keys():
            self.outlier.forget(url)
        self._by_url = fresh
        self.endpoints = list(fresh.values())

    def pick(self, ctx: CallContext) -> EndpointState:
        endpoints = self.endpoints
        if not endpoints:
            raise NoHealthyEndpoints(self.service, "no endpoints discovered (is the service name right?)")
        limit = self.config.max_connections_per_instance
        tried = ctx.tried
        outlier = self.outlier
        if outlier.any_ejected:
            ejected = outlier.is_ejected
            endpoints = [s for s in endpoints if not ejected(s.url)] or endpoints
        candidates = [
            s for s in endpoints if s.healthy and s.in_flight < limit and (not tried or s not in tried)
        ]
        if not candidates and tried:
            candidates = [s for s in endpoints if s.healthy and s.in_flight < limit]
        if not candidates:
            if any(s.healthy for s in endpoints):
                raise BulkheadFull(
                    self.service, f"every endpoint is at max_connections_per_instance ({limit})"
                )
            raise NoHealthyEndpoints(self.service, f"all {len(endpoints)} endpoints are unhealthy")
        if len(candidates) == 1:
            return candidates[0]
        key = self._affinity_key(ctx)
        if key is not None and self.config.session_affinity:
            return rendezvous(candidates, key)
        return self.strategy.choose(candidates, key)

    @staticmethod
    def _affinity_key(ctx: CallContext) -> str | None:
        if ctx.affinity_key is not None:
            return ctx.affinity_key
        inbound = ctx.inbound
        return inbound.client_host if inbound is not None else None

    def record(self, state: EndpointState, ok: bool, latency: float) -> None:
        """One attempt's outcome on ``state``: its own counters, and the outlier detector."""
        state.record(ok, latency)
        self.outlier.record(state.endpoint.url, ok, len(self.endpoints))

    def as_dict(self) -> dict[str, object]:
        ejections = self.outlier.as_dict()
        return {
            "strategy": self.config.strategy,
            "session_affinity": self.config.session_affinity,
            "max_connections_per_instance": self.config.max_connections_per_instance,
            "endpoints": [s.as_dict() | {"outlier": ejections.get(s.url)} for s in self.endpoints],
        }
