"""Cookie affinity in MeshMiddleware when the call fails: the cookie is still set on a mesh error response."""

from __future__ import annotations

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import Depends, FastAPI

from fastapi_mesh import Mesh, MeshClient, MeshMiddleware, MeshSettings, get_mesh

pytestmark = pytest.mark.anyio


async def test_affinity_cookie_is_set_on_a_mesh_error_response() -> None:
    """A 503 from a MeshError still sets the cookie whose fresh value the request's calls were hashed on."""
    settings = MeshSettings(
        service_name="gateway",
        discovery={"endpoints": {"svc": ["http://10.0.0.1:8080"]}},
        load_balancer={"session_affinity": True, "affinity_key": "cookie:sid"},
    )
    mesh = Mesh(settings, transport=httpx.MockTransport(lambda request: httpx.Response(200)))
    app = FastAPI(lifespan=mesh.lifespan)
    app.add_middleware(MeshMiddleware, mesh=mesh)

    @app.get("/down")
    async def down(client: MeshClient = Depends(get_mesh)) -> None:
        await client.get("unknown-service", "/")

    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(manager.app), base_url="http://gw") as http,
    ):
        response = await http.get("/down")
    assert response.status_code == 503
    assert response.headers.get("set-cookie", "").startswith("sid=")
