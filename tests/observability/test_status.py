"""GET /mesh/status: complete per service; /mesh/status and /mesh/dashboard can be switched off; the page is
self-contained."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from fastapi_mesh import Mesh, MeshMiddleware, MeshSettings
from tests.apps import serve
from tests.discovery.scripted import ScriptedDiscovery
from tests.observability.support import poll
from tests.upstreams import Fleet, settings_for

pytestmark = pytest.mark.anyio


def app_for(mesh: Mesh) -> FastAPI:
    app = FastAPI(lifespan=mesh.lifespan)
    app.include_router(mesh.router)
    app.add_middleware(MeshMiddleware, mesh=mesh)

    @app.get("/orders/{order_id}")
    @mesh.policy(bulkhead=5)
    async def order(order_id: int) -> int:
        return order_id

    return app


async def test_status_shows_each_service_whole(fleet: Fleet) -> None:
    """Per service: breaker state and window, request counts, in flight, a duration histogram, endpoints
    with state, weight, zone, in flight, EWMA and ejection, the retry budget, the bulkhead and discovery;
    route bulkheads by template. The sections of get_metrics() stay as they were."""
    bad, good = await fleet.start(2)
    bad.mode = "status"
    settings = settings_for(
        [bad.url, good.url],
        retry={"max_retries": 1},
        bulkhead={"max_concurrent": 8},
        outlier_detection={"consecutive_failures": 1, "max_ejection_percent": 50},
        load_balancer={"strategy": "round-robin"},
    )
    mesh = Mesh(settings)
    async with serve(app_for(mesh)) as http:
        for _ in range(4):
            assert (await mesh.client.get("svc", "/")).status_code == 200
        await http.get("/orders/1")
        status = (await http.get("/mesh/status")).json()
    assert {"load_balancer", "circuit_breakers", "bulkheads", "retry", "requests", "discovery"} <= set(status)
    svc = status["services"]["svc"]
    assert svc["breaker"] == "closed" and svc["failure_rate"] == 0.0
    assert svc["requests"] == {"total": 4, "successes": 4, "failures": 0}
    assert svc["in_flight"] == 0 and svc["retries"] == 1
    durations = svc["durations"]
    assert durations["bounds"][0] == 0.001 and durations["bounds"][-1] == 30.0
    assert len(durations["counts"]) == len(durations["bounds"]) + 1 and sum(durations["counts"]) == 4
    endpoints = {e["url"]: e for e in svc["endpoints"]}
    assert endpoints[bad.url]["state"] == "ejected" and endpoints[bad.url]["ejections"] == 1
    assert endpoints[bad.url]["ejected_for_s"] > 0
    assert endpoints[good.url]["state"] == "healthy" and endpoints[good.url]["requests"] == 4
    assert set(endpoints[good.url]) == {
        "url",
        "state",
        "weight",
        "zone",
        "in_flight",
        "requests",
        "failures",
        "ewma_ms",
        "ejections",
        "ejected_for_s",
    }
    assert endpoints[good.url]["ewma_ms"] > 0
    assert svc["retry_budget"]["available"] >= 0 and svc["retry_budget"]["exhausted"] == 0
    assert svc["bulkhead"] == {"limit": 8, "active": 0, "queued": 0, "queue": 0, "rejected": 0}
    assert svc["discovery"] == {"synced": True, "endpoints": 2}
    assert status["routes"] == {
        "/orders/{order_id}": {"bulkhead": {"limit": 5, "active": 0, "queued": 0, "queue": 0, "rejected": 0}}
    }
    assert status["inbound"] == {"in_progress": 0}
    assert status["metrics"] is True and status["generated_at"] > 1.7e9
    assert status["circuit_breakers"]["svc"]["state"] == "closed"  # the detailed sections are still there


async def test_status_shows_discovery_sync_and_staleness() -> None:
    """A background backend's sync per service: last sync time, errors, stale."""
    backend = ScriptedDiscovery()
    backend.queue("users", ["http://10.0.0.1:8080"])
    mesh = Mesh(MeshSettings(), discovery=backend, transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    async with serve(app_for(mesh)) as http:
        mesh.client._rt.services.get("users")
        await poll(lambda: mesh.client._rt.services.get("users").synced)
        status = (await http.get("/mesh/status")).json()
    sync = status["services"]["users"]["discovery"]
    assert sync["synced"] is True and sync["stale"] is False and sync["last_sync"] > 1.7e9
    assert status["discovery"]["backend"] == "scripted"


async def test_durations_are_null_with_metrics_off() -> None:
    mesh = Mesh(
        MeshSettings(discovery={"endpoints": {"users": ["http://10.0.0.1:8080"]}}, observability={"metrics": False}),
        transport=httpx.MockTransport(lambda r: httpx.Response(200)),
    )
    async with serve(app_for(mesh)) as http:
        await mesh.client.get("users", "/")
        status = (await http.get("/mesh/status")).json()
    assert status["metrics"] is False and status["services"]["users"]["durations"] is None


@pytest.mark.parametrize(
    ("switches", "status_code", "dashboard_code"),
    [({}, 200, 200), ({"status": False}, 404, 200), ({"dashboard": False}, 200, 404)],
)
async def test_status_and_dashboard_can_be_switched_off(
    switches: dict[str, Any], status_code: int, dashboard_code: int
) -> None:
    mesh = Mesh(MeshSettings(observability=switches))
    async with serve(app_for(mesh)) as http:
        assert (await http.get("/mesh/status")).status_code == status_code
        assert (await http.get("/mesh/dashboard")).status_code == dashboard_code
        assert (await http.get("/metrics")).status_code == 200


async def test_dashboard_is_one_self_contained_page() -> None:
    """The page is HTML with its script and styles inline: no external script, style, image or font, and it
    polls the status route next to it; the service name is escaped into its title."""
    mesh = Mesh(MeshSettings(service_name="gw<1>"))
    async with serve(app_for(mesh)) as http:
        page = await http.get("/mesh/dashboard")
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "<title>gw&lt;1&gt; · fastapi-mesh dashboard</title>" in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "@import" not in html and "url(" not in html
    assert 'fetch("status"' in html
