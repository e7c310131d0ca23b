"""Edges of the direct send path: streams and redirects giving their slots back, fallbacks, the service table
keeping a service in use, restarts, and no-op auth/redirect arguments staying on the fast path."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from fastapi_mesh import MeshClient, MeshSettings
from fastapi_mesh import client as client_module
from fastapi_mesh import services as services_module
from fastapi_mesh.health.manager import HealthManager
from fastapi_mesh.settings import HealthCheckConfig

pytestmark = pytest.mark.anyio


def settings(**sections: Any) -> MeshSettings:
    retry = {"initial_delay": 0, "jitter": "none", **sections.pop("retry", {})}
    return MeshSettings(discovery={"endpoints": {"svc": ["http://10.0.0.1:1"]}}, retry=retry, **sections)


class Chunks(httpx.AsyncByteStream):
    """A body that arrives in chunks, as from a real connection; ``fail`` drops it half-way."""

    def __init__(self, *chunks: bytes, fail: bool = False) -> None:
        self.chunks = chunks
        self.fail = fail

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if self.fail:
            raise httpx.ReadError("connection dropped mid-body")


def slots(client: MeshClient) -> tuple[int, int]:
    metrics = client.get_metrics()
    return metrics["load_balancer"]["svc"]["endpoints"][0]["in_flight"], metrics["bulkheads"]["svc"]["active"]


async def test_an_earlier_streamed_answer_that_stands_can_be_read() -> None:
    """A 503 whose body streamed in, then a refused retry: the 503 returned has its body readable."""
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return httpx.Response(503, stream=Chunks(b"try ", b"later"))
        raise httpx.ConnectError("refused")

    async with MeshClient(settings(retry={"max_retries": 1}), transport=httpx.MockTransport(handler)) as client:
        response = await client.get("svc", "/x")
    assert (response.status_code, response.text) == (503, "try later")


async def test_a_stream_with_an_unusable_location_gives_its_slots_back() -> None:
    """A redirect whose Location httpx cannot parse raises, as httpx does, and frees the endpoint and
    bulkhead slots the unread stream held."""
    transport = httpx.MockTransport(
        lambda request: httpx.Response(302, headers={"location": "http://[::1"}, stream=Chunks(b"x"))
    )
    async with MeshClient(settings(bulkhead={"max_concurrent": 1}), transport=transport) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            async with client.stream("GET", "svc", "/x"):
                pass
        held = slots(client)
    assert held == (0, 0)


async def test_a_redirect_hop_whose_body_drops_gives_its_slots_back() -> None:
    """Following redirects on a stream, a hop's body failing mid-read still frees its slots."""
    transport = httpx.MockTransport(
        lambda request: httpx.Response(307, headers={"location": "/next"}, stream=Chunks(b"x", fail=True))
    )
    async with MeshClient(settings(bulkhead={"max_concurrent": 1}), transport=transport) as client:
        with pytest.raises(httpx.ReadError):
            async with client.stream("GET", "svc", "/x", follow_redirects=True):
                pass
        held = slots(client)
    assert held == (0, 0)


async def test_a_compressed_fallback_response_answers_every_time() -> None:
    """A cached gzip answer given as ``fallback=`` is copied decoded, without its content-encoding."""
    cached = httpx.Response(200, headers={"content-encoding": "gzip"}, content=gzip.compress(b'{"users":[]}'))
    async with MeshClient(settings(), transport=httpx.MockTransport(lambda r: httpx.Response(200))) as client:
        answers = [await client.get("nowhere", "/x", fallback=cached) for _ in range(2)]
    assert [a.json() for a in answers] == [{"users": []}, {"users": []}]
    assert all("content-encoding" not in a.headers for a in answers)


async def test_an_unknown_service_in_use_is_not_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unknown names are forgotten least recently called first: one called all along keeps its state."""
    monkeypatch.setattr(services_module, "MAX_UNKNOWN_SERVICES", 4)
    async with MeshClient(settings(), transport=httpx.MockTransport(lambda r: httpx.Response(200))) as client:
        client.circuit_breaker("pending").force_open()
        for i in range(10):
            client.circuit_breaker("pending")  # in use
            client.circuit_breaker(f"typo-{i}")
        state = client.circuit_breaker("pending").state
        kept = set(client._rt.services.states)
    assert state == "forced-open"
    assert "typo-0" not in kept and len(kept) <= 1 + 4


async def test_a_restart_proves_start_up_again() -> None:
    """A startup check that passed before a stop must pass again after the next start."""
    answers = iter([True, False, False])
    health = HealthManager(HealthCheckConfig(), "gw")
    health.add_check("schema", lambda: next(answers, False), kind="startup")
    await health.start()
    first = health.startup()["status"]
    await health.stop()
    await health.start()
    second, ready = health.startup()["status"], health.readiness()["status"]
    await health.stop()
    assert (first, second, ready) == ("healthy", "unhealthy", "unhealthy")


@pytest.mark.parametrize(
    "kwargs", [{"follow_redirects": False}, {"auth": None}, {"auth": None, "follow_redirects": False}]
)
async def test_no_op_auth_and_redirect_arguments_stay_on_the_fast_path(
    monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, Any]
) -> None:
    """``auth=None`` and ``follow_redirects=False`` ask for nothing: no per-call httpx client is built."""

    def refuse(*args: Any, **kw: Any) -> Any:
        raise AssertionError("took the slow path")

    monkeypatch.setattr(client_module, "send_with_client", refuse)
    async with MeshClient(settings(), transport=httpx.MockTransport(lambda r: httpx.Response(204))) as client:
        assert (await client.get("svc", "/x", **kwargs)).status_code == 204
