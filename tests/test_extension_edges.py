"""The extension at its edges: start-up gating readiness, checks that misbehave, restarts, websockets,
mounted apps, callers naming unknown services."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import Depends, FastAPI, WebSocket

from fastapi_mesh import Mesh, MeshClient, MeshSettings, get_mesh
from fastapi_mesh.discovery import Endpoint, StaticDiscovery
from fastapi_mesh.health.manager import HealthManager
from fastapi_mesh.services import MAX_UNKNOWN_SERVICES
from fastapi_mesh.settings import HealthCheckConfig
from tests import apps

pytestmark = pytest.mark.anyio

WAIT = 5.0


def make_mesh(**kwargs: Any) -> Mesh:
    settings = MeshSettings(
        service_name="gw", discovery={"endpoints": {"users": ["http://10.0.0.1:8080"]}}, retry={"max_retries": 0}
    )
    return Mesh(settings, transport=httpx.MockTransport(lambda r: httpx.Response(200, json={"ok": 1})), **kwargs)


def serve(app: FastAPI) -> AbstractAsyncContextManager[httpx.AsyncClient]:
    return apps.serve(app, raise_app_exceptions=False)


async def test_readiness_waits_for_every_startup_check_to_pass_once() -> None:
    """Readiness is 503 until each startup check has passed once, in whatever round; then 200."""
    health = HealthManager(HealthCheckConfig(), "gw")
    results = {"cache": iter([True]), "schema": iter([False, True])}
    health.add_check("cache", lambda: next(results["cache"], False), kind="startup")
    health.add_check("schema", lambda: next(results["schema"], False), kind="startup")
    await health.start()
    try:
        assert health.readiness()["status"] == "unhealthy"
        assert health.readiness()["reason"] == "startup checks have not all passed yet"
        await health.run("startup")  # cache now fails, schema passes: both have passed once
        assert health.startup()["status"] == "healthy"
        assert health.readiness()["status"] == "healthy"
    finally:
        await health.stop()


async def test_a_check_cancelled_from_inside_fails_without_stopping_the_loop() -> None:
    """A check whose own work was cancelled fails that round; the background loop keeps running it."""
    runs = 0

    async def flaky() -> bool:
        nonlocal runs
        runs += 1
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.cancel()
        await future  # raises CancelledError, not because the loop is stopping
        return True

    health = HealthManager(HealthCheckConfig(readiness_interval=0.01), "gw")
    health.add_check("db", flaky)
    await health.start()
    try:
        async with asyncio.timeout(WAIT):
            while runs < 4:
                await asyncio.sleep(0.01)
        body = health.readiness()
    finally:
        await health.stop()
    assert body["status"] == "unhealthy"
    assert "CancelledError" in str(body["checks"]["db"]["last_error"])  # type: ignore[index]


class FailsOnce(StaticDiscovery):
    def __init__(self, settings: MeshSettings) -> None:
        super().__init__(settings.discovery.endpoints)
        self.starts = 0

    async def start(self, publish: Callable[[str, list[Endpoint]], None]) -> None:  # type: ignore[override]
        self.starts += 1
        if self.starts == 1:
            raise ConnectionError("discovery backend down")
        await super().start(publish)


async def test_a_mesh_whose_start_failed_starts_cleanly_next_time() -> None:
    """A start-up that fails half-way leaves nothing half-started: the next lifespan starts everything."""
    settings = MeshSettings(discovery={"endpoints": {"users": ["http://10.0.0.1:8080"]}})
    discovery = FailsOnce(settings)
    mesh = Mesh(settings, discovery=discovery, transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    app = FastAPI(lifespan=mesh.lifespan)
    app.include_router(mesh.router)
    with pytest.raises(ConnectionError):
        async with LifespanManager(app):
            pass
    async with serve(app) as http:
        ready = await http.get("/health/ready")
        called = await mesh.client.get("users", "/x")
    assert (ready.status_code, called.status_code, discovery.starts) == (200, 200, 2)


async def websocket_call(app: Any, path: str) -> list[dict[str, Any]]:
    """Connect to ``path`` as an ASGI websocket client; everything the app sends, until it closes."""
    incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    incoming.put_nowait({"type": "websocket.connect"})
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "websocket.close":
            incoming.put_nowait({"type": "websocket.disconnect", "code": 1000})

    scope = {
        "type": "websocket", "asgi": {"version": "3.0"}, "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "headers": [], "scheme": "ws", "server": ("gateway", 80),
        "client": ("127.0.0.1", 5000), "subprotocols": [],
    }
    async with asyncio.timeout(WAIT):
        await app(scope, incoming.get, send)
    return sent


async def test_get_mesh_works_in_a_websocket_route() -> None:
    """A websocket handler takes the client with Depends(get_mesh) too."""
    mesh = make_mesh()
    app = FastAPI(lifespan=mesh.lifespan)

    @app.websocket("/ws")
    async def ws(websocket: WebSocket, client: MeshClient = Depends(get_mesh)) -> None:
        await websocket.accept()
        await websocket.send_json((await client.get("users", "/x")).json())
        await websocket.close()

    async with LifespanManager(app) as manager:
        sent = await websocket_call(manager.app, "/ws")
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert sent[1]["text"] == '{"ok":1}'


async def test_get_mesh_works_in_a_mounted_app() -> None:
    """An app mounted under the one whose lifespan runs the Mesh gets that Mesh."""
    mesh = make_mesh()
    app = FastAPI(lifespan=mesh.lifespan)
    sub = FastAPI()

    @sub.get("/users")
    async def users(client: MeshClient = Depends(get_mesh)) -> Any:
        return (await client.get("users", "/x")).json()

    app.mount("/v1", sub)
    async with serve(app) as http:
        response = await http.get("/v1/users")
    assert (response.status_code, response.json()) == (200, {"ok": 1})


async def test_unknown_service_names_stay_out_of_metrics_and_are_bounded() -> None:
    """Calls to names nobody configured or discovered leave no metric series or status entry, and the
    mesh keeps at most MAX_UNKNOWN_SERVICES of them."""
    mesh = make_mesh()
    app = FastAPI(lifespan=mesh.lifespan)
    app.include_router(mesh.router)
    async with serve(app) as http:
        await mesh.client.get("users", "/x")
        for i in range(MAX_UNKNOWN_SERVICES * 2):
            with pytest.raises(httpx.TransportError):
                await mesh.client.get(f"made-up-{i}", "/x")
        metrics = (await http.get("/metrics")).text
        status = mesh.client.get_metrics()
    assert "made-up-" not in metrics
    assert 'service="users"' in metrics
    assert set(status["requests"]) == {"users"}
    assert len(mesh.client._rt.services.states) <= 1 + MAX_UNKNOWN_SERVICES


async def test_combined_lifespan_drains_before_the_apps_own_shutdown() -> None:
    """With combine_lifespan, readiness is already 503 while the app's own shutdown runs."""
    mesh = make_mesh()
    seen: list[object] = []

    @asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[None]:
        yield
        seen.append(mesh.health.readiness()["status"])

    app = FastAPI(lifespan=mesh.combine_lifespan(own))
    async with LifespanManager(app):
        assert mesh.health.readiness()["status"] == "healthy"
    assert seen == ["unhealthy"]
