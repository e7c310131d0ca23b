"""The balancer layer's in-flight accounting, seen through MeshClient on a mock transport."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from fastapi_mesh import BulkheadFull, MeshClient, MeshSettings

pytestmark = pytest.mark.anyio


class Body(httpx.AsyncByteStream):
    """A body that is still unread when the response comes back, like a real connection's."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data


def upstream(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, stream=Body(json.dumps({"host": request.url.host}).encode()))


def client(**load_balancer: object) -> MeshClient:
    settings = MeshSettings(
        service_name="test",
        discovery={"endpoints": {"svc": ["http://10.0.0.1:8080", "http://10.0.0.2:8080"]}},
        load_balancer=load_balancer,
    )
    return MeshClient(settings, transport=httpx.MockTransport(upstream))


async def test_open_stream_holds_its_slot_for_least_connections() -> None:
    """While a stream is open its endpoint counts one call in flight, so least-connections picks the other."""
    async with client(strategy="least-connections") as mesh:
        async with mesh.stream("GET", "svc", "/"):  # open, its body not read yet
            endpoints = mesh.get_metrics()["load_balancer"]["svc"]["endpoints"]
            busy = {e["url"] for e in endpoints if e["in_flight"] == 1}
            assert len(busy) == 1
            hosts = {(await mesh.get("svc", "/")).json()["host"] for _ in range(5)}
            assert {f"http://{h}:8080" for h in hosts} == {e["url"] for e in endpoints} - busy
        endpoints = mesh.get_metrics()["load_balancer"]["svc"]["endpoints"]
        assert [e["in_flight"] for e in endpoints] == [0, 0]
        hosts = {(await mesh.get("svc", "/")).json()["host"] for _ in range(20)}
        assert hosts == {"10.0.0.1", "10.0.0.2"}


async def test_full_endpoints_raise_bulkhead_full_at_once() -> None:
    """With every endpoint at max_connections_per_instance a call fails with BulkheadFull, sending nothing."""
    async with client(max_connections_per_instance=1) as mesh:
        async with mesh.stream("GET", "svc", "/"), mesh.stream("GET", "svc", "/"):
            with pytest.raises(BulkheadFull, match="'svc'"):
                await mesh.get("svc", "/")
        assert (await mesh.get("svc", "/")).status_code == 200


async def test_prebuilt_response_stream_releases_at_once() -> None:
    """A stream whose response was built from content (already read) frees its slot immediately."""
    settings = MeshSettings(
        service_name="test",
        discovery={"endpoints": {"svc": ["http://10.0.0.1:8080"]}},
        load_balancer={"max_connections_per_instance": 1},
    )
    mock = httpx.MockTransport(lambda request: httpx.Response(200, json={}))
    async with MeshClient(settings, transport=mock) as mesh, mesh.stream("GET", "svc", "/"):
        assert (await mesh.get("svc", "/")).status_code == 200
