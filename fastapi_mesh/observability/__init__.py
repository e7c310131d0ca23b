"""Observability: Prometheus metrics fed by the mesh's events and state, and OpenTelemetry traces (``.tracing``)."""

from .durations import CallDurations
from .metrics import InboundMetrics, MeshCollector, build_registry
from .multiprocess import MultiprocessWriter, mark_process_dead, multiprocess_dir

__all__ = [
    "CallDurations",
    "InboundMetrics",
    "MeshCollector",
    "MultiprocessWriter",
    "build_registry",
    "mark_process_dead",
    "multiprocess_dir",
]
