"""Prometheus metrics from a registry owned by one Mesh (never the global one).

Mesh state is read at scrape time by a collector, so the request path only bumps plain integers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ..client import MeshClient

__all__ = ["MeshCollector", "build_registry"]


class MeshCollector(Collector):
    """Reads the client's per-service and per-endpoint state when Prometheus scrapes."""

    def __init__(self, client: MeshClient) -> None:
        self._client = client

    def collect(self) -> Iterator[Metric]:
        settings = self._client.settings
        info = InfoMetricFamily("mesh", "This service's mesh identity")
        info.add_metric([], {"service": settings.service_name, "environment": settings.environment})
        yield info
        services = self._client._rt.registry.services
        requests = CounterMetricFamily(
            "mesh_upstream_requests", "Calls to upstream services, by final outcome", labels=["service", "outcome"]
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
        for name, state in services.items():
            requests.add_metric([name, "success"], state.requests - state.failures)
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


def build_registry(client: MeshClient) -> CollectorRegistry:
    """A fresh registry with the process, platform and GC collectors and the mesh's own."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(MeshCollector(client))
    return registry
