"""Service discovery: backends push endpoint sets to the mesh; requests never wait for them."""

from __future__ import annotations

from ..settings import MeshSettings
from .base import Discovery, Endpoint, Publish
from .static import StaticDiscovery

__all__ = ["Discovery", "Endpoint", "Publish", "StaticDiscovery", "build_discovery"]


def build_discovery(settings: MeshSettings) -> Discovery:
    """The backend ``settings.discovery.backend`` names."""
    backend = settings.discovery.backend
    if backend == "static":
        return StaticDiscovery(settings.discovery.endpoints)
    if backend == "custom":
        raise ValueError(
            "discovery.backend is 'custom': pass your Discovery object, e.g. Mesh(settings, discovery=...)"
        )
    raise NotImplementedError(
        f"discovery.backend {backend!r} is not available in this version; use 'static' or pass a "
        "custom Discovery"
    )
