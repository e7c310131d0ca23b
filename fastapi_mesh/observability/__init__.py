"""Observability: Prometheus metrics (and, later, traces) fed by the mesh's events and state."""

from .metrics import MeshCollector, build_registry

__all__ = ["MeshCollector", "build_registry"]
