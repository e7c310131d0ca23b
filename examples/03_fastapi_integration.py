"""3. FastAPI integration: probes, metrics and a route that calls upstreams through the mesh.

    python examples/03_fastapi_integration.py

The seed's Express integration, in FastAPI. ``mesh.router`` adds ``/health/live``, ``/health/ready``,
``/health/startup``, ``/metrics`` and ``/mesh/status``; ``@mesh.policy`` gives ``/api/users`` a deadline, a
concurrency limit and a fallback; ``MeshMiddleware`` carries inbound deadlines and trace headers to
outbound calls and answers 503/504 for a mesh failure. The gateway runs under a real uvicorn here; in
production it is ``uvicorn app:app`` (deploy/docker/app.py is the same shape).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import httpx
from demo_upstreams import DemoFleet, serve
from fastapi import Depends, FastAPI

from fastapi_mesh import Mesh, MeshClient, MeshMiddleware, MeshSettings, get_mesh


def create_app(endpoints: Mapping[str, list[str]]) -> FastAPI:
    mesh = Mesh(MeshSettings(service_name="api-gateway", discovery={"endpoints": dict(endpoints)}))
    app = FastAPI(lifespan=mesh.lifespan)
    app.include_router(mesh.router)
    app.add_middleware(MeshMiddleware, mesh=mesh)

    @app.get("/api/users")
    @mesh.policy(timeout=2.0, bulkhead=50, fallback=lambda: {"users": [], "degraded": True})
    async def users(client: MeshClient = Depends(get_mesh)) -> Any:
        response = await client.get("user-service", "/api/users")
        response.raise_for_status()  # a 5xx after retries: the route's fallback answers
        return {"users": response.json(), "degraded": False}

    return app


async def run(endpoints: Mapping[str, list[str]], *, break_upstream: Any = None) -> dict[str, Any]:
    """Probe the gateway and call ``/api/users``; then, after ``break_upstream()``, call it again."""
    async with serve(create_app(endpoints)) as base, httpx.AsyncClient(base_url=base, timeout=10) as http:
        probes = {path: (await http.get(path)).status_code for path in ("/health/live", "/health/ready")}
        before = (await http.get("/api/users")).json()
        metrics = (await http.get("/metrics")).text
        after = None
        if break_upstream is not None:
            await break_upstream()
            after = (await http.get("/api/users")).json()
    requests = [line for line in metrics.splitlines() if line.startswith("mesh_upstream_requests_total")]
    return {"probes": probes, "before": before, "after": after, "metrics": requests}


async def main() -> None:
    async with DemoFleet({"user-service": 2}) as fleet:

        async def stop_all() -> None:
            for replica in fleet.replicas["user-service"]:
                await replica.stop()

        result = await run(fleet.endpoints(), break_upstream=stop_all)
    print("probes:", result["probes"])
    print("GET /api/users:", result["before"])
    print("  with user-service down:", result["after"])
    print("\n".join(result["metrics"]))


if __name__ == "__main__":
    asyncio.run(main())
