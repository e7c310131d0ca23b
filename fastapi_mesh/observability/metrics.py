"""Prometheus metrics from a registry owned by one Mesh (never the global one).

Mesh state is read at scrape time by a collector, so the request path only bumps plain integers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ..client import MeshClient

__all__ = ["InboundMetrics", "MeshCollector", "build_registry"]

BREAKER_STATES = ("closed", "open", "half-open", "forced-open", "disabled")


class MeshCollector(Collector):
    """Reads the client's per-service and per-endpoint state when Prometheus scrapes."""

    def __init__(self, client: MeshClient) -> None:
        self._client = client

    def collect(self) -> Iterator[Metric]:
        settings = self._client.settings
        info = InfoMetricFamily("mesh", "This service's mesh identity")
        info.add_metric([], {"service": settings.service_name, "environment": settings.environment})
        yield info
        services = self._client._rt.registry.known()
        requests = CounterMetricFamily(
            "mesh_upstream_requests",
            "Finished calls to upstream services, by final outcome (streams: when the response head arrives)",
            labels=["service", "outcome"],
        )
        retries = CounterMetricFamily("mesh_upstream_retries", "Retries made", labels=["service"])
        exhausted = CounterMetricFamily(
            "mesh_upstream_retries_exhausted", "Calls that ran out of retries", labels=["service"]
        )
        endpoints = GaugeMetricFamily(
            "mesh_upstream_endpoints", "Endpoints known per service", labels=["service", "state"]
        )
        in_flight = GaugeMetricFamily(
            "mesh_upstream_in_flight", "Calls in flight per endpoint", labels=["service", "endpoint"]
        )
        ewma = GaugeMetricFamily(
            "mesh_upstream_latency_ewma_seconds",
            "Moving average of attempt latency per endpoint",
            labels=["service", "endpoint"],
        )
        breaker_state = GaugeMetricFamily(
            "mesh_circuit_breaker_state",
            "1 for the state each service's circuit breaker is in, 0 for the others",
            labels=["service", "state"],
        )
        breaker_trips = CounterMetricFamily(
            "mesh_circuit_breaker_trips", "Times each service's breaker opened", labels=["service"]
        )
        ejected = GaugeMetricFamily(
            "mesh_outlier_ejected_endpoints", "Endpoints ejected as outliers now", labels=["service"]
        )
        budget_refused = CounterMetricFamily(
            "mesh_retry_budget_exhausted", "Retries refused because the retry budget was spent", labels=["service"]
        )
        hedges = CounterMetricFamily("mesh_upstream_hedges", "Hedged attempts sent", labels=["service"])
        bulkhead_rejected = CounterMetricFamily(
            "mesh_bulkhead_rejected", "Calls refused by the service bulkhead", labels=["service"]
        )
        check_failures = CounterMetricFamily(
            "mesh_active_health_check_failures",
            "Failed active health checks of the service's endpoints",
            labels=["service"],
        )
        for name, state in services.items():
            current = state.breaker.state
            for breaker_state_name in BREAKER_STATES:
                breaker_state.add_metric([name, breaker_state_name], 1.0 if current == breaker_state_name else 0.0)
            breaker_trips.add_metric([name], state.breaker.as_dict()["trips"])
            ejected.add_metric([name], state.balancer.outlier.ejected_count())
            budget_refused.add_metric([name], state.budget.exhausted_count)
            hedges.add_metric([name], state.hedges)
            if state.bulkhead is not None:
                bulkhead_rejected.add_metric([name], state.bulkhead.rejected)
            checker = state.active_check
            check_failures.add_metric([name], checker.failed_checks if checker is not None else 0)
            requests.add_metric([name, "success"], state.successes)
            requests.add_metric([name, "failure"], state.failures)
            retries.add_metric([name], state.retries)
            exhausted.add_metric([name], state.retries_exhausted)
            healthy = sum(1 for e in state.balancer.endpoints if e.healthy)
            endpoints.add_metric([name, "healthy"], healthy)
            endpoints.add_metric([name, "unhealthy"], len(state.balancer.endpoints) - healthy)
            for endpoint in state.balancer.endpoints:
                in_flight.add_metric([name, endpoint.url], endpoint.in_flight)
                ewma.add_metric([name, endpoint.url], endpoint.ewma)
        yield from (requests, retries, exhausted, endpoints, in_flight, ewma)
        yield from (breaker_state, breaker_trips, ejected, budget_refused, hedges, bulkhead_rejected, check_failures)
        yield from self._discovery()

    def _discovery(self) -> Iterator[Metric]:
        """Sync state per watched service (backends that sync in the background report it)."""
        status = self._client._rt.discovery_status()
        backend = str(status["backend"])
        errors = CounterMetricFamily(
            "mesh_discovery_errors", "Failed or malformed discovery answers", labels=["service", "backend"]
        )
        last_sync = GaugeMetricFamily(
            "mesh_discovery_last_sync_timestamp_seconds",
            "Unix time of the last good discovery answer per service",
            labels=["service"],
        )
        stale = GaugeMetricFamily(
            "mesh_discovery_stale",
            "1 while the service's endpoint set is the last good one because discovery is failing",
            labels=["service"],
        )
        for name, entry in status["services"].items():
            if "errors" in entry:
                errors.add_metric([name, backend], entry["errors"])
                stale.add_metric([name], 1.0 if entry["stale"] else 0.0)
            if entry.get("last_sync") is not None:
                last_sync.add_metric([name], entry["last_sync"])
        yield from (errors, last_sync, stale)


def build_registry(client: MeshClient) -> CollectorRegistry:
    """A fresh registry with the process, platform and GC collectors and the mesh's own."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(MeshCollector(client))
    return registry


#: Seconds; from a fast in-process answer to the slowest a route should take.
INBOUND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Methods kept as label values; any other is counted as ``OTHER`` (the label set stays bounded).
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: The ``route`` label of a request that matched no route (a 404): never the raw path, which is unbounded.
UNMATCHED = "<unmatched>"


class InboundMetrics:
    """Requests this service answered, by method, route template and status, and their durations.

    Labels are bounded by the application: the route is the matched route's template
    (``/api/users/{user_id}``), never the raw path.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "mesh_inbound_requests",
            "Requests this service answered, by method, route template and status",
            ["method", "route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "mesh_inbound_request_duration_seconds",
            "Time from a request's arrival to the end of its answer, by method and route template",
            ["method", "route"],
            buckets=INBOUND_BUCKETS,
            registry=registry,
        )

    def observe(self, method: str, route: str | None, status: int, seconds: float) -> None:
        method = method if method in KNOWN_METHODS else "OTHER"
        route = route if route is not None else UNMATCHED
        self.requests.labels(method, route, str(status)).inc()
        self.duration.labels(method, route).observe(seconds)
