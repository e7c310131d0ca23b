"""Per-service state owned by the mesh: policy, balancer, counters. Created lazily, on first use."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import httpx

from .balancing.balancer import Balancer
from .discovery.base import Endpoint
from .resilience.bulkhead import Bulkhead
from .settings import MeshSettings, ServicePolicy

__all__ = ["ServiceRegistry", "ServiceState"]


class ServiceState:
    """Everything the mesh keeps about one upstream service between calls."""

    __slots__ = (
        "attempt_timeout",
        "balancer",
        "base_url",
        "bulkhead",
        "failures",
        "fallback_enabled",
        "name",
        "policy",
        "requests",
        "retries",
        "retries_exhausted",
        "retry_statuses",
    )

    def __init__(self, name: str, policy: ServicePolicy, rng: random.Random) -> None:
        self.name = name
        self.policy = policy
        self.balancer = Balancer(name, policy.load_balancer, rng)
        limits = policy.bulkhead
        self.bulkhead = (
            Bulkhead(name, limits.max_concurrent, limits.max_queue, limits.queue_timeout)
            if limits.max_concurrent is not None
            else None
        )
        # The logical URL a call starts with; the balancer swaps in an endpoint's origin per attempt.
        self.base_url = f"http://{name}"
        self.attempt_timeout = httpx.Timeout(policy.circuit_breaker.timeout)
        self.fallback_enabled = policy.circuit_breaker.fallback_enabled
        self.retry_statuses = frozenset(policy.retry.retry_on_status)
        self.requests = 0
        self.failures = 0
        self.retries = 0
        self.retries_exhausted = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "failures": self.failures,
            "retries": self.retries,
            "retries_exhausted": self.retries_exhausted,
        }


class ServiceRegistry:
    """Maps service names to their ``ServiceState``; discovery publishes into it."""

    __slots__ = ("_on_new", "_rng", "_settings", "services")

    def __init__(
        self, settings: MeshSettings, rng: random.Random, on_new: Callable[[str], None] | None = None
    ) -> None:
        self._settings = settings
        self._rng = rng
        self._on_new = on_new
        self.services: dict[str, ServiceState] = {}

    def get(self, name: str) -> ServiceState:
        state = self.services.get(name)
        if state is None:
            state = self.services[name] = ServiceState(name, self._settings.for_service(name), self._rng)
            if self._on_new is not None:
                self._on_new(name)
        return state

    def publish(self, name: str, endpoints: Sequence[Endpoint]) -> None:
        """Discovery's callback: ``name`` now has exactly ``endpoints``."""
        self.get(name).balancer.update(endpoints)
