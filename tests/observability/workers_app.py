"""The app the multiprocess test runs under ``uvicorn --workers 2 --factory``: each request makes one
upstream call (to an in-process stand-in) and says which worker served it."""

from __future__ import annotations

import os

import httpx
from fastapi import FastAPI

from fastapi_mesh import Mesh, MeshMiddleware, MeshSettings


def create_app() -> FastAPI:
    mesh = Mesh(
        MeshSettings(
            service_name="workers",
            discovery={"endpoints": {"users": ["http://10.0.0.1:8080"]}},
            bulkhead={"max_concurrent": 50},
            health_check={"drain_delay": 0, "shutdown_grace": 2},
        ),
        transport=httpx.MockTransport(lambda request: httpx.Response(200)),
    )
    app = FastAPI(lifespan=mesh.lifespan)
    app.include_router(mesh.router)
    app.add_middleware(MeshMiddleware, mesh=mesh)

    @app.get("/call")
    async def call() -> dict[str, int]:
        await mesh.client.get("users", "/")
        return {"pid": os.getpid()}

    return app
