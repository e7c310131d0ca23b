"""The demo service of deploy/: one FastAPI app with fastapi-mesh, deployed as user-service and as api-gateway.

Settings come from ``MESH_*`` variables (the manifests set them). ``GET /api/users`` answers from this pod;
with ``DEMO_UPSTREAM`` set (the gateway), it asks that service instead, through the mesh, and says which
pods took part. ``uvicorn app:app --host 0.0.0.0 --port 8080`` serves it; the image's command does that.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from fastapi import Depends, FastAPI

from fastapi_mesh import Mesh, MeshClient, MeshMiddleware, get_mesh

#: The service this one calls for ``/api/users`` (``None``: it answers them itself).
UPSTREAM = os.environ.get("DEMO_UPSTREAM") or None
#: This pod's name (Kubernetes sets the host name to it).
POD = socket.gethostname()
USERS = [{"id": 1, "name": "Ada"}, {"id": 2, "name": "Grace"}, {"id": 3, "name": "Linus"}]

mesh = Mesh()
app = FastAPI(title=mesh.settings.service_name, lifespan=mesh.lifespan)
app.include_router(mesh.router)  # /health/live, /health/ready, /health/startup, /metrics, /mesh/status
app.add_middleware(MeshMiddleware, mesh=mesh)


@app.get("/api/users")
@mesh.policy(timeout=2.0, bulkhead=100, fallback=lambda: {"users": [], "degraded": True})
async def users(client: MeshClient = Depends(get_mesh)) -> dict[str, Any]:
    """The users: this pod's list, or, on the gateway, the upstream's (an empty list if it cannot answer)."""
    if UPSTREAM is None:
        return {"users": USERS, "served_by": POD, "service": mesh.settings.service_name}
    response = await client.get(UPSTREAM, "/api/users")
    response.raise_for_status()
    return {**response.json(), "via": POD}
