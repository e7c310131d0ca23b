"""fastapi-mesh: a client-side service mesh for FastAPI and httpx, in-process.

    from fastapi import Depends, FastAPI
    from fastapi_mesh import Mesh, MeshClient, MeshSettings, get_mesh

    mesh = Mesh(MeshSettings(service_name="api-gateway"))
    app = FastAPI(lifespan=mesh.lifespan)
    app.include_router(mesh.router)

    @app.get("/api/users")
    @mesh.policy(timeout=2.0, bulkhead=50, fallback=lambda: {"users": []})
    async def users(client: MeshClient = Depends(get_mesh)):
        response = await client.get("user-service", "/api/users")
        response.raise_for_status()
        return response.json()
"""

from ._version import __version__
from .client import MeshClient, create_service_mesh_client
from .clock import Clock, ManualClock, MonotonicClock
from .connection.tls import ServerIdentityMismatch
from .discovery import Discovery, Endpoint, StaticDiscovery
from .errors import (
    AuthorizationDenied,
    BulkheadFull,
    CircuitOpen,
    DeadlineExceeded,
    MeshError,
    NoHealthyEndpoints,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from .events import BulkheadRejected, EndpointsChanged, EventBus, FallbackUsed, RequestEvent, RetryEvent
from .extension import Mesh, get_mesh
from .health import HealthManager
from .middleware import MeshMiddleware
from .security.identity import peer_identity, require_identity
from .settings import MeshSettings, ServicePolicy, get_service_config

__all__ = [
    "AuthorizationDenied",
    "BulkheadFull",
    "BulkheadRejected",
    "CircuitOpen",
    "Clock",
    "DeadlineExceeded",
    "Discovery",
    "Endpoint",
    "EndpointsChanged",
    "EventBus",
    "FallbackUsed",
    "HealthManager",
    "ManualClock",
    "Mesh",
    "MeshClient",
    "MeshError",
    "MeshMiddleware",
    "MeshSettings",
    "MonotonicClock",
    "NoHealthyEndpoints",
    "RequestEvent",
    "RetryEvent",
    "ServerIdentityMismatch",
    "ServicePolicy",
    "StaticDiscovery",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "__version__",
    "create_service_mesh_client",
    "get_mesh",
    "get_service_config",
    "peer_identity",
    "require_identity",
]
