"""The ``observability`` section: what the mesh measures and shows."""

from __future__ import annotations

from .types import Section

__all__ = ["ObservabilityConfig"]


class ObservabilityConfig(Section):
    """What the mesh measures and shows: Prometheus metrics, OpenTelemetry traces, status and dashboard."""

    #: Record per-call metrics: each call's duration (``mesh_upstream_request_duration_seconds``) and, with
    #: ``MeshMiddleware``, each inbound request (``mesh_inbound_*``). ``false``: calls skip every observation;
    #: ``/metrics`` keeps the counters and gauges of the state the mesh keeps anyway (requests, breakers, ...).
    metrics: bool = True
    #: Emit OpenTelemetry spans (a client span per outbound call, a server span per inbound request with
    #: ``MeshMiddleware``) and propagate W3C ``traceparent``/``tracestate``. Off by default.
    tracing: bool = False
    #: Serve ``GET /mesh/status`` (JSON state of every upstream service).
    status: bool = True
    #: Serve ``GET /mesh/dashboard`` (a self-contained HTML page refreshing from ``/mesh/status``).
    dashboard: bool = True
