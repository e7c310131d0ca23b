"""MeshClient behaviour that needs no real server: MockTransport as the innermost layer."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from fastapi_mesh import DeadlineExceeded, MeshClient, MeshSettings, create_service_mesh_client

pytestmark = pytest.mark.anyio


async def hanging(request: httpx.Request) -> httpx.Response:
    await asyncio.sleep(10)
    return httpx.Response(200)


async def test_attempt_cancelled_by_the_deadline_timer_is_a_failure_for_breaker_and_endpoint() -> None:
    """A transport that ignores httpx timeouts is stopped by the deadline timer; that counts as a failure."""
    settings = MeshSettings(discovery={"endpoints": {"svc": ["http://10.0.0.1:1"]}}, retry={"max_retries": 0})
    async with MeshClient(settings, transport=httpx.MockTransport(hanging)) as client:
        with pytest.raises(DeadlineExceeded, match="budget spent"):
            await client.get("svc", "/x", deadline=0.05)
        endpoint = client.get_metrics()["load_balancer"]["svc"]["endpoints"][0]
        window = client.circuit_breaker("svc").window()
    assert (endpoint["failures"], endpoint["in_flight"]) == (1, 0)
    assert window == (1, 1, 0)


async def test_a_caller_giving_up_before_the_deadline_is_no_verdict() -> None:
    """Cancelling a call (the caller went away) records nothing against the service or the endpoint."""
    settings = MeshSettings(discovery={"endpoints": {"svc": ["http://10.0.0.1:1"]}}, retry={"max_retries": 0})
    async with MeshClient(settings, transport=httpx.MockTransport(hanging)) as client:
        task = asyncio.create_task(client.get("svc", "/x", deadline=5))
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        endpoint = client.get_metrics()["load_balancer"]["svc"]["endpoints"][0]
        window = client.circuit_breaker("svc").window()
    assert (endpoint["failures"], endpoint["in_flight"]) == (0, 0)
    assert window == (0, 0, 0)


async def test_seed_style_helpers() -> None:
    """create_service_mesh_client, initialize, get_liveness/get_readiness and get_metrics work as the seed's."""
    client = create_service_mesh_client(
        "my-service",
        MeshSettings(discovery={"endpoints": {"users": ["http://10.0.0.1:80"]}}),
        transport=httpx.MockTransport(lambda r: httpx.Response(200, json=[1])),
    )
    assert client.settings.service_name == "my-service"
    seen: list[str] = []
    client.on("request-success", lambda e: seen.append(e.service))
    await client.initialize()
    try:
        assert (await client.get("users", "/api/users")).json() == [1]
        assert client.get_liveness()["status"] == "healthy"
        assert client.get_readiness()["status"] == "healthy"
        metrics = client.get_metrics()
    finally:
        await client.aclose()
    assert {"load_balancer", "circuit_breakers", "retry", "requests"} <= set(metrics)
    assert metrics["requests"]["users"] == {"total": 1, "successes": 1, "failures": 0}
    assert seen == ["users"]
