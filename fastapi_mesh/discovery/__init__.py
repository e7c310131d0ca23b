"""Service discovery: backends push endpoint sets to the mesh; requests never wait for them.

``discovery.backend`` picks one: ``static`` (the settings), ``consul``, ``kubernetes-dns``, ``kubernetes``
(EndpointSlices; needs ``pip install 'fastapi-mesh[kubernetes]'``) or ``custom`` (your class).
"""

from __future__ import annotations

import importlib
import inspect
import random
from typing import Any

from ..clock import Clock
from ..settings import MeshSettings
from .base import Discovery, DiscoveryConfigError, Endpoint, Publish
from .static import StaticDiscovery
from .sync import Answer, BackgroundDiscovery, MalformedAnswer, SyncStatus

__all__ = [
    "Answer",
    "BackgroundDiscovery",
    "Discovery",
    "DiscoveryConfigError",
    "Endpoint",
    "MalformedAnswer",
    "Publish",
    "StaticDiscovery",
    "SyncStatus",
    "build_discovery",
]

KUBERNETES_EXTRA_HINT = "pip install 'fastapi-mesh[kubernetes]'"


def build_discovery(
    settings: MeshSettings, *, clock: Clock | None = None, rng: random.Random | None = None
) -> Discovery:
    """The backend ``settings.discovery.backend`` names, built from the settings.

    >>> build_discovery(MeshSettings()).__class__.__name__
    'StaticDiscovery'
    """
    config = settings.discovery
    backend = config.backend
    if backend == "static":
        return StaticDiscovery(config.endpoints)
    if backend == "consul":
        from .consul import ConsulDiscovery

        return ConsulDiscovery(
            config, service_name=settings.service_name, mtls=settings.mtls, clock=clock, rng=rng
        )
    if backend == "kubernetes-dns":
        from .kubernetes_dns import KubernetesDNSDiscovery

        return KubernetesDNSDiscovery(config, clock=clock, rng=rng)
    if backend == "kubernetes":
        try:
            importlib.import_module("kubernetes_asyncio")
        except ImportError:
            raise DiscoveryConfigError(
                "discovery.backend is 'kubernetes' (MESH_DISCOVERY__BACKEND), which needs kubernetes-asyncio: "
                f"{KUBERNETES_EXTRA_HINT}"
            ) from None
        from .kubernetes import KubernetesDiscovery

        return KubernetesDiscovery(config, clock=clock, rng=rng)
    if config.custom_class is None:
        raise DiscoveryConfigError(
            "discovery.backend is 'custom': pass your Discovery object (Mesh(settings, discovery=...)) or name "
            "its class in discovery.custom_class (MESH_DISCOVERY__CUSTOM_CLASS), e.g. 'myapp.discovery:MyDiscovery'"
        )
    return _build_custom(config.custom_class, settings)


def _build_custom(path: str, settings: MeshSettings) -> Discovery:
    if ":" in path:
        module_name, _, attr = path.partition(":")
    else:
        module_name, _, attr = path.rpartition(".")
    where = f"discovery.custom_class (MESH_DISCOVERY__CUSTOM_CLASS) {path!r}"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DiscoveryConfigError(f"{where}: cannot import {module_name!r}: {exc}") from None
    cls: Any = getattr(module, attr, None)
    if cls is None:
        raise DiscoveryConfigError(f"{where}: module {module_name!r} has no {attr!r}")
    if not callable(cls):
        raise DiscoveryConfigError(f"{where}: {attr!r} is not a class")
    try:
        takes_config = bool(inspect.signature(cls).parameters)
    except (TypeError, ValueError):
        takes_config = False
    instance = cls(settings.discovery) if takes_config else cls()
    if not isinstance(instance, Discovery):
        raise DiscoveryConfigError(f"{where}: {attr} does not implement start(publish), watch(service) and stop()")
    return instance
