"""Route policies and fallbacks at their edges: odd inbound headers, thread handlers, fan-out, odd values."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from starlette.responses import JSONResponse

from fastapi_mesh import Mesh, MeshClient, MeshMiddleware, MeshSettings, NoHealthyEndpoints, get_mesh
from fastapi_mesh.context import parse_inbound_deadline
from tests import apps

pytestmark = pytest.mark.anyio

WAIT = 5.0  # bound on every wait for a thread


def upstream(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/down":
        return httpx.Response(503)
    return httpx.Response(200, json={"ok": True})


def make_mesh(**settings: Any) -> Mesh:
    settings.setdefault("discovery", {"endpoints": {"user-service": ["http://10.0.0.1:8080"]}})
    settings.setdefault("retry", {"max_retries": 0})
    return Mesh(MeshSettings(service_name="api-gateway", **settings), transport=httpx.MockTransport(upstream))


def serve(app: FastAPI) -> AbstractAsyncContextManager[httpx.AsyncClient]:
    return apps.serve(app, raise_app_exceptions=False)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("x-mesh-timeout-ms", "\u00b2"),  # a digit to str.isdigit, not to int()
        ("x-mesh-timeout-ms", "9" * 400),  # would overflow a float
        ("x-mesh-timeout-ms", "9" * 5000),  # past int()'s digit limit
        ("x-envoy-expected-rq-timeout-ms", "\u0663"),  # an Arabic-Indic 3
        ("grpc-timeout", "\u0663S"),
        ("x-mesh-timeout-ms", "-5"),
        ("grpc-timeout", "123456789S"),
    ],
)
def test_malformed_inbound_deadlines_are_ignored(name: str, value: str) -> None:
    """A deadline header that is not plain ASCII digits of sane length is ignored, never an error."""
    assert parse_inbound_deadline(name, value) is None


async def test_a_malformed_deadline_header_does_not_break_requests() -> None:
    """With MeshMiddleware, a probe and a policy route both answer normally despite a garbage header."""
    mesh = make_mesh()
    app = FastAPI(lifespan=mesh.lifespan)
    app.include_router(mesh.router)
    app.add_middleware(MeshMiddleware, mesh=mesh)

    @app.get("/users")
    @mesh.policy(timeout=2)
    async def users(client: MeshClient = Depends(get_mesh)) -> Any:
        return (await client.get("user-service", "/users")).json()

    headers = {"x-mesh-timeout-ms": b"\xb2"}
    async with serve(app) as http:
        live = await http.get("/health/live", headers=headers)
        routed = await http.get("/users", headers=headers)
    assert (live.status_code, routed.status_code, routed.json()) == (200, 200, {"ok": True})


async def test_fallback_disabled_service_gets_no_route_fallback_for_its_5xx() -> None:
    """``fallback_enabled: false`` also stops a route fallback from answering ``raise_for_status()`` on that
    service's 5xx; another service's 5xx still gets it."""
    mesh = make_mesh(
        discovery={"endpoints": {"strict": ["http://10.0.0.1:1"], "lenient": ["http://10.0.0.2:1"]}},
        services={"strict": {"circuit_breaker": {"fallback_enabled": False}}},
    )
    app = FastAPI(lifespan=mesh.lifespan)

    @app.get("/{service}")
    @mesh.policy(fallback={"cached": True})
    async def call(service: str, client: MeshClient = Depends(get_mesh)) -> Any:
        response = await client.get(service, "/down")
        response.raise_for_status()
        return response.json()

    async with serve(app) as http:
        strict = await http.get("/strict")
        lenient = await http.get("/lenient")
    assert strict.status_code == 500
    assert (lenient.status_code, lenient.json()) == (200, {"cached": True})


async def test_a_thread_handler_keeps_its_bulkhead_slot_until_it_really_ends() -> None:
    """A sync handler past its deadline answers 504 but runs on in its thread: its route bulkhead slot stays
    taken until the thread ends, so ``bulkhead=1`` never has two running."""
    mesh = make_mesh()
    app = FastAPI(lifespan=mesh.lifespan)
    running = 0
    most = 0
    release = threading.Event()
    lock = threading.Lock()

    @app.get("/sync")
    @mesh.policy(timeout=0.05, bulkhead=1)
    def slow() -> dict[str, bool]:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        release.wait(WAIT)
        with lock:
            running -= 1
        return {"done": True}

    async with serve(app) as http:
        first = await http.get("/sync")  # deadline passes; the thread still waits
        second = await http.get("/sync")  # the slot is still the first thread's
        release.set()
        give_up = time.monotonic() + WAIT
        while running and time.monotonic() < give_up:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.01)  # the slot is given back on the loop once the thread's result lands
        third = await http.get("/sync")
    assert (first.status_code, second.status_code, third.status_code) == (504, 503, 200)
    assert most == 1


async def test_a_starlette_response_is_a_route_fallback_value() -> None:
    """A Starlette ``Response`` (callable, as every ASGI app) is taken as the value to answer with."""
    mesh = make_mesh()
    app = FastAPI(lifespan=mesh.lifespan)

    @app.get("/users")
    @mesh.policy(fallback=JSONResponse({"users": []}, headers={"x-degraded": "1"}))
    async def users(client: MeshClient = Depends(get_mesh)) -> Any:
        return (await client.get("nowhere", "/users")).json()

    async with serve(app) as http:
        response = await http.get("/users")
    assert (response.status_code, response.json(), response.headers["x-degraded"]) == (200, {"users": []}, "1")


async def test_a_fan_out_failing_with_mesh_errors_gets_the_route_fallback() -> None:
    """A TaskGroup whose calls all fail with mesh errors is answered by the route's fallback (or 503
    without one); a group holding a programming error still gives 500."""
    mesh = make_mesh()
    app = FastAPI(lifespan=mesh.lifespan)

    async def fan_out(client: MeshClient, bug: bool) -> Any:
        async with asyncio.TaskGroup() as group:
            group.create_task(client.get("nowhere", "/a"))
            group.create_task(client.get("nowhere", "/b"))
            if bug:
                raise ValueError("a bug")
        return None

    @app.get("/fan")
    @mesh.policy(fallback={"partial": True})
    async def fan(client: MeshClient = Depends(get_mesh)) -> Any:
        return await fan_out(client, bug=False)

    @app.get("/fan-503")
    @mesh.policy()
    async def fan_503(client: MeshClient = Depends(get_mesh)) -> Any:
        return await fan_out(client, bug=False)

    @app.get("/fan-bug")
    @mesh.policy(fallback={"partial": True})
    async def fan_bug(client: MeshClient = Depends(get_mesh)) -> Any:
        return await fan_out(client, bug=True)

    async with serve(app) as http:
        answered = await http.get("/fan")
        unavailable = await http.get("/fan-503")
        bug = await http.get("/fan-bug")
    assert (answered.status_code, answered.json()) == (200, {"partial": True})
    assert (unavailable.status_code, unavailable.json()["error"]) == (503, "no_healthy_endpoints")
    assert bug.status_code == 500


async def test_an_object_with_async_call_is_an_async_handler() -> None:
    """A handler object with ``async def __call__`` is awaited, as FastAPI itself does."""
    mesh = make_mesh()
    app = FastAPI(lifespan=mesh.lifespan)

    class Handler:
        async def __call__(self) -> dict[str, str]:
            await asyncio.sleep(0)
            return {"from": "object"}

    app.get("/obj")(mesh.policy(timeout=1)(Handler()))
    async with serve(app) as http:
        response = await http.get("/obj")
    assert (response.status_code, response.json()) == (200, {"from": "object"})


async def test_a_per_call_fallback_response_is_bound_to_each_call() -> None:
    """A Response given as a per-call fallback answers ``raise_for_status()`` and is a fresh copy per call
    (each bound to its own request); a callable's Response is bound too."""
    mesh = make_mesh()
    async with mesh.client as client:
        given = httpx.Response(200, json=[])
        first = await client.get("nowhere", "/one", fallback=given)
        second = await client.get("nowhere", "/two", fallback=given)
        made = await client.get("nowhere", "/three", fallback=lambda exc: httpx.Response(200, json=[]))
    for response, path in ((first, "/one"), (second, "/two"), (made, "/three")):
        assert response.raise_for_status() is response
        assert response.request.url.path == path
        assert response.json() == []
    assert first is not given and second is not given


class Chunks(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"live"


async def test_stream_takes_a_fallback() -> None:
    """``stream(..., fallback=)`` yields the fallback when no head came, or instead of a 5xx head."""
    transport = httpx.MockTransport(
        lambda request: httpx.Response(503 if request.url.path == "/down" else 200, stream=Chunks())
    )
    settings = MeshSettings(discovery={"endpoints": {"svc": ["http://10.0.0.1:1"]}}, retry={"max_retries": 0})
    async with MeshClient(settings, transport=transport) as client:
        async with client.stream("GET", "nowhere", "/x", fallback={"cached": 1}) as response:
            missing = (response.status_code, await response.aread())
        status_of = lambda exc: {"status": exc.response.status_code}  # noqa: E731
        async with client.stream("GET", "svc", "/down", fallback=status_of) as response:
            failed = (response.status_code, await response.aread())
        async with client.stream("GET", "svc", "/up", fallback={"cached": 1}) as response:
            live = (response.status_code, await response.aread())
        with pytest.raises(NoHealthyEndpoints):
            async with client.stream("GET", "nowhere", "/x"):
                pass
        in_flight = client.get_metrics()["load_balancer"]["svc"]["endpoints"][0]["in_flight"]
    assert missing == (200, b'{"cached":1}')
    assert failed == (200, b'{"status":503}')
    assert live == (200, b"live")
    assert in_flight == 0  # the 5xx stream that the fallback replaced was closed
