"""Prometheus metrics from a registry owned by one Mesh (never the global one).

Mesh state is read at scrape time by collectors, so the request path only bumps plain numbers: a call's
duration goes into the ``CallDurations`` of its service (a bisection and two additions), an inbound
request into ``InboundMetrics``. Labels stay bounded: services the mesh knows, methods from
``METHOD_LABELS``, status classes, route templates; endpoint URLs only on per-endpoint gauges.

The histograms themselves (``Durations``, ``CallDurations``) are in ``durations``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from .durations import INBOUND_BUCKETS, METHOD_LABELS, Durations

if TYPE_CHECKING:
    from ..client import MeshClient
    from ..resilience.bulkhead import Bulkhead

__all__ = [
    "AuthorizationMetrics",
    "InboundMetrics",
    "MeshCollector",
    "build_registry",
]

BREAKER_STATES = ("closed", "open", "half-open", "forced-open", "disabled")
#: The ``route`` label of a request that matched no route (a 404): never the raw path, which is unbounded.
UNMATCHED = "<unmatched>"


class MeshCollector(Collector):
    """Reads the client's per-service and per-endpoint state when Prometheus scrapes, and the route
    bulkheads the Mesh found on its app (``route_bulkheads``: route template -> bulkhead)."""

    def __init__(self, client: MeshClient) -> None:
        self._client = client
        self.route_bulkheads: dict[str, Bulkhead] = {}

    def collect(self) -> Iterator[Metric]:
        settings = self._client.settings
        info = InfoMetricFamily("mesh", "This service's mesh identity")
        info.add_metric([], {"service": settings.service_name, "environment": settings.environment})
        yield info
        services = self._client._rt.services.known()
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
        durations = HistogramMetricFamily(
            "mesh_upstream_request_duration_seconds",
            "Calls to upstream services from start to final answer (after retries), by method and status class",
            labels=["service", "method", "code_class"],
        )
        transitions = CounterMetricFamily(
            "mesh_circuit_breaker_transitions",
            "Circuit breaker state changes, by the state left and the state entered",
            labels=["service", "from_state", "to_state"],
        )
        ejections = CounterMetricFamily(
            "mesh_outlier_ejections", "Endpoints ejected as outliers (each ejection counted)", labels=["service"]
        )
        bulkhead_in_flight = GaugeMetricFamily(
            "mesh_bulkhead_in_flight",
            "Calls holding a bulkhead slot now: a service's bulkhead (name: the service) or a route's (its template)",
            labels=["name"],
        )
        for name, state in services.items():
            current = state.breaker.state
            for breaker_state_name in BREAKER_STATES:
                breaker_state.add_metric([name, breaker_state_name], 1.0 if current == breaker_state_name else 0.0)
            breaker_trips.add_metric([name], state.breaker.as_dict()["trips"])
            for (left, entered), count in state.breaker.transitions.items():
                transitions.add_metric([name, left, entered], count)
            state.durations.add_to(durations, (name,))
            ejections.add_metric([name], state.balancer.outlier.ejections_total)
            ejected.add_metric([name], state.balancer.outlier.ejected_count())
            budget_refused.add_metric([name], state.budget.exhausted_count)
            hedges.add_metric([name], state.hedges)
            if state.bulkhead is not None:
                bulkhead_rejected.add_metric([name], state.bulkhead.rejected)
                bulkhead_in_flight.add_metric([name], state.bulkhead.active)
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
        route_rejected = CounterMetricFamily(
            "mesh_route_bulkhead_rejected",
            "Requests refused by a route's bulkhead (@mesh.policy(bulkhead=...)), by route template",
            labels=["route"],
        )
        for route, bulkhead in list(self.route_bulkheads.items()):
            route_rejected.add_metric([route], bulkhead.rejected)
            bulkhead_in_flight.add_metric([route], bulkhead.active)
        yield from (durations, transitions, ejections, bulkhead_in_flight, route_rejected)
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


def build_registry(
    client: MeshClient, *, collector: MeshCollector | None = None, process: bool = True
) -> CollectorRegistry:
    """A fresh registry with the process, platform and GC collectors (unless ``process`` is False: with
    several worker processes they would describe only the one that answers) and the mesh's own."""
    registry = CollectorRegistry(auto_describe=True)
    if process:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    registry.register(collector if collector is not None else MeshCollector(client))
    return registry


class InboundMetrics(Collector):
    """Requests this service answered, by method, route template and status, their durations, and the
    requests being served now; recorded by ``MeshMiddleware``, collected when Prometheus scrapes.

    Labels are bounded by the application: the route is the matched route's template
    (``/api/users/{user_id}``), never the raw path. ``enabled=False`` (``observability.metrics: false``)
    records nothing. ``own_paths`` (the mesh's probe, status and metrics routes) are not counted in progress.

    >>> inbound = InboundMetrics()
    >>> inbound.enter("/api/users/7"), inbound.in_progress
    (True, 1)
    >>> inbound.exit(); inbound.observe("GET", "/api/users/{user_id}", 200, 0.003)
    >>> inbound.requests, inbound.in_progress
    ({('GET', '/api/users/{user_id}', '200'): 1}, 0)
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        enabled: bool = True,
        own_paths: frozenset[str] = frozenset(),
    ) -> None:
        self.enabled = enabled
        #: Paths whose requests are not counted in progress (the mesh's own routes, which ``MeshMiddleware``
        #: does not trace either).
        self.own_paths = own_paths
        #: ``(method, route, status) -> count``.
        self.requests: dict[tuple[str, str, str], int] = {}
        self.durations = Durations(INBOUND_BUCKETS)
        self.in_progress = 0
        if registry is not None:
            registry.register(self)

    def enter(self, path: str) -> bool:
        """A request arrived; True when it is counted in progress (then call ``exit`` when it ends)."""
        if not self.enabled or path in self.own_paths:
            return False
        self.in_progress += 1
        return True

    def exit(self) -> None:
        self.in_progress -= 1

    def observe(self, method: str, route: str | None, status: int, seconds: float) -> None:
        if not self.enabled:
            return
        method = method if method in METHOD_LABELS else "OTHER"
        route = route if route is not None else UNMATCHED
        key = (method, route, str(status))
        self.requests[key] = self.requests.get(key, 0) + 1
        self.durations.observe((method, route), seconds)

    def collect(self) -> Iterator[Metric]:
        if not self.enabled:
            return
        requests = CounterMetricFamily(
            "mesh_inbound_requests",
            "Requests this service answered, by method, route template and status",
            labels=["method", "route", "status"],
        )
        for labels, count in list(self.requests.items()):
            requests.add_metric(list(labels), count)
        duration = HistogramMetricFamily(
            "mesh_inbound_request_duration_seconds",
            "Time from a request's arrival to the end of its answer, by method and route template",
            labels=["method", "route"],
        )
        self.durations.add_to(duration)
        in_progress = GaugeMetricFamily(
            "mesh_inbound_requests_in_progress", "Requests being served now (the mesh's own routes left out)"
        )
        in_progress.add_metric([], self.in_progress)
        yield from (requests, duration, in_progress)


class AuthorizationMetrics:
    """Requests refused because of the caller's identity (``mtls.allow``, a route's ``allow``,
    ``require_identity``, a non-probe path on the plain port), by route template.

    The ``<unmatched>`` series (requests matching no route) exists from the start at 0, so an alert on
    ``increase(mesh_authorization_denied_total[5m]) > 0`` has a series before the first denial.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.counter = Counter(
            "mesh_authorization_denied",
            "Requests refused because of the caller's identity, by route template",
            ["route"],
            registry=registry,
        )
        self.counter.labels(UNMATCHED)

    def denied(self, route: str | None) -> None:
        self.counter.labels(route if route is not None else UNMATCHED).inc()
