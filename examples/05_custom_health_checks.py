"""5. Custom health checks: critical and non-critical checks behind the probes.

    python examples/05_custom_health_checks.py

``/health/ready`` reads the last result of every readiness check (no check runs on the probe path):

- every check passes: ``healthy``, 200;
- a non-critical check fails (here ``user-service``, an upstream this service can do without): ``degraded``,
  still 200, so one upstream outage does not take every caller out of rotation;
- a critical check fails (``database``): ``unhealthy``, 503, and Kubernetes stops sending traffic.

Liveness never looks at dependencies: only at the process (the built-in event-loop check).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from demo_upstreams import DemoFleet
from fastapi import FastAPI

from fastapi_mesh import Mesh, MeshSettings


class Database:
    """A stand-in for a connection pool: ``up`` says whether ``SELECT 1`` would work."""

    up = True

    async def ping(self) -> bool:
        return self.up


async def run(endpoints: Mapping[str, list[str]], *, break_upstream: Callable[[], Awaitable[None]]) -> list[Any]:
    """The readiness answer while healthy, with the upstream down, then with the database down too."""
    database = Database()
    settings = MeshSettings(
        service_name="orders",
        discovery={"endpoints": dict(endpoints)},
        retry={"max_retries": 0},
        outlier_detection={"enabled": False},
    )
    mesh = Mesh(settings)
    app = FastAPI(lifespan=mesh.lifespan)
    app.include_router(mesh.router)

    @mesh.health_check("database", kind="readiness", critical=True, interval=1, timeout=1, failure_threshold=1)
    async def database_check() -> bool:
        return await database.ping()

    @mesh.health_check("user-service", critical=False, interval=1, timeout=1, failure_threshold=1)
    async def user_service_check() -> None:
        response = await mesh.client.get("user-service", "/health/ready", deadline=1.0)
        response.raise_for_status()  # raising fails the check, with its message as last_error

    @mesh.health_check("migrations", kind="startup")
    def migrations() -> bool:  # a sync check runs in a worker thread
        return True

    answers = []
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://orders") as http:

            async def ready() -> dict[str, Any]:
                await mesh.health.run("readiness")  # run the checks now, rather than wait for their interval
                response = await http.get("/health/ready")
                body = response.json()
                checks = {name: check["status"] for name, check in body["checks"].items()}
                return {"http": response.status_code, "status": body["status"], "checks": checks}

            answers.append(await ready())
            await break_upstream()
            answers.append(await ready())
            database.up = False
            answers.append(await ready())
            answers.append({"liveness": (await http.get("/health/live")).status_code})
    return answers


async def main() -> None:
    async with DemoFleet({"user-service": 1}) as fleet:
        answers = await run(fleet.endpoints(), break_upstream=fleet.replicas["user-service"][0].stop)
    for title, answer in zip(["all well", "user-service down", "database down too", "meanwhile"], answers, strict=True):
        print(f"{title:>18}: {answer}")


if __name__ == "__main__":
    asyncio.run(main())
