"""Inbound metrics recorded by MeshMiddleware: by route template, bounded labels, mesh routes left out."""

from __future__ import annotations

import shutil
import subprocess

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from fastapi_mesh import Mesh, MeshClient, MeshMiddleware, MeshSettings

pytestmark = pytest.mark.anyio


async def scrape_after(paths: list[tuple[str, str]]) -> str:
    mesh = Mesh(MeshSettings(service_name="gw"), transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    app = FastAPI(lifespan=mesh.lifespan)
    app.include_router(mesh.router)
    app.add_middleware(MeshMiddleware, mesh=mesh)

    @app.get("/api/users/{user_id}")
    async def user(user_id: int) -> dict[str, int]:
        return {"id": user_id}

    @app.get("/api/orders")
    async def orders() -> None:
        client: MeshClient = mesh.client
        await client.get("nowhere", "/orders")  # NoHealthyEndpoints: the middleware answers 503

    @app.get("/boom")
    async def boom() -> None:
        raise ValueError("a bug")

    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(manager.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            for method, path in paths:
                await http.request(method, path)
            return (await http.get("/metrics")).text


def counts(text: str) -> dict[tuple[str, str, str], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "mesh_inbound_requests_total":
                found[(sample.labels["method"], sample.labels["route"], sample.labels["status"])] = sample.value
    return found


async def test_requests_are_counted_by_route_template_and_status() -> None:
    """Two users by id are one route; a 404 is ``<unmatched>``; a MeshError answered 503 and a bug's 500
    are counted; odd methods become OTHER; probes and /metrics are not counted."""
    text = await scrape_after(
        [
            ("GET", "/api/users/1"),
            ("GET", "/api/users/2"),
            ("GET", "/no/such/path/123"),
            ("GET", "/api/orders"),
            ("GET", "/boom"),
            ("PROPFIND", "/api/users/1"),
            ("GET", "/health/live"),
            ("GET", "/health/ready"),
            ("GET", "/mesh/status"),
            ("GET", "/metrics"),
        ]
    )
    assert counts(text) == {
        ("GET", "/api/users/{user_id}", "200"): 2,
        ("GET", "<unmatched>", "404"): 1,
        ("GET", "/api/orders", "503"): 1,
        ("GET", "/boom", "500"): 1,
        ("OTHER", "/api/users/{user_id}", "405"): 1,
    }
    assert 'mesh_inbound_request_duration_seconds_count{method="GET",route="/api/users/{user_id}"} 2.0' in text


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is installed by `make test`")
async def test_inbound_metrics_pass_promtool_check() -> None:
    """Prometheus's own linter accepts /metrics with the inbound families in it."""
    text = await scrape_after([("GET", "/api/users/1"), ("GET", "/nope")])
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
