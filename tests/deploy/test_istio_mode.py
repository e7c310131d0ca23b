"""``mode: istio`` against a real upstream: the application makes one attempt per call, so a sidecar's
retries are the only ones; in library mode the same settings retry in the application."""

from __future__ import annotations

import asyncio

import pytest

from fastapi_mesh import BulkheadFull, DeadlineExceeded, MeshClient
from tests.upstreams import Fleet, settings_for

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


@pytest.mark.parametrize(("mode", "attempts"), [("library", 4), ("istio", 1)])
async def test_a_failing_upstream_gets_one_request_per_call_in_istio_mode(
    fleet: Fleet, mode: str, attempts: int
) -> None:
    """max_retries 3 against a replica answering 503: 4 requests in library mode, 1 in istio mode (where the
    sidecar's 3 retries would make it 4, not 4 x 4 = 16)."""
    (replica,) = await fleet.start(1)
    replica.mode = "status"
    settings = settings_for([replica.url], mode=mode, retry={"max_retries": 3}, outlier_detection={"enabled": False})
    async with MeshClient(settings) as client:
        response = await client.get("svc", "/api/users")
    assert response.status_code == 503
    assert replica.received[("GET", "/api/users")] == attempts


async def test_istio_mode_keeps_deadlines_and_bulkheads(fleet: Fleet) -> None:
    """What the application still does in istio mode: a call's deadline holds against a hanging upstream,
    and the bulkhead still refuses what is over its limit."""
    (replica,) = await fleet.start(1)
    replica.mode = "hang"
    settings = settings_for([replica.url], mode="istio", bulkhead={"max_concurrent": 1})
    async with MeshClient(settings) as client:
        with pytest.raises(DeadlineExceeded):
            await client.get("svc", "/slow", deadline=0.2)
        first = asyncio.create_task(client.get("svc", "/slow", deadline=2))
        async with asyncio.timeout(5):
            while not replica.received[("GET", "/slow")] >= 2:
                await asyncio.sleep(0.005)
        with pytest.raises(BulkheadFull):
            await client.get("svc", "/slow", deadline=2)
        replica.release.set()
        assert (await first).status_code == 200
