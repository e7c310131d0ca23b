"""What every background backend gets from ``BackgroundDiscovery`` and the service table: last good set kept on
errors, stale status, one log line per change of state, backoff, the empty grace, and the first-sync wait."""

from __future__ import annotations

import asyncio
import logging
import random

import httpx
import pytest
from fastapi import FastAPI

from fastapi_mesh import Mesh, MeshClient, MeshSettings, NoHealthyEndpoints
from fastapi_mesh.discovery import MalformedAnswer
from fastapi_mesh.settings import DiscoveryConfig
from tests.apps import serve
from tests.discovery.scripted import ScriptedDiscovery, SteppedClock, eventually

pytestmark = pytest.mark.anyio

A, B = "http://10.0.0.1:8080", "http://10.0.0.2:8080"


def _answering() -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: httpx.Response(200, text=request.url.host))


def _urls(client: MeshClient, service: str) -> list[str]:
    return sorted(e.url for e in client._rt.services.get(service).balancer.endpoints)


async def test_an_error_keeps_the_last_good_set_marks_it_stale_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = SteppedClock()
    backend = ScriptedDiscovery(clock=clock)
    backend.queue("users", [A, B])
    async with MeshClient(MeshSettings(), transport=_answering(), discovery=backend) as client:
        assert (await client.get("users", "/")).status_code == 200
        caplog.set_level(logging.INFO, logger="fastapi_mesh.discovery")
        backend.queue("users", ConnectionError("refused"), MalformedAnswer("no index"), OSError("reset"))
        await eventually(lambda: clock.sleeping == 1)  # backing off after the first error
        for _ in range(3):
            await clock.advance(60)
        await eventually(lambda: backend.fetches["users"] == 5)
        status = client.get_metrics()["discovery"]["services"]["users"]
        assert status["stale"] is True
        assert status["errors"] == 3
        assert status["last_error"] == "OSError: reset"
        assert _urls(client, "users") == [A, B]
        for _ in range(20):  # routing goes on on the last good set
            assert (await client.get("users", "/")).status_code == 200
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert "keeping the last 2 endpoints" in warnings[0].getMessage()

        backend.queue("users", [A])
        await eventually(lambda: not client.get_metrics()["discovery"]["services"]["users"]["stale"])
        assert _urls(client, "users") == [A]
        assert any("answers again after 3 errors" in r.getMessage() for r in caplog.records)


async def test_retries_back_off_with_jitter_up_to_the_ceiling() -> None:
    backend = ScriptedDiscovery(DiscoveryConfig(backoff=1.0, max_backoff=8.0), rng=random.Random(5))
    delays = [backend.backoff(n) for n in range(8)]
    ceilings = [1, 2, 4, 8, 8, 8, 8, 8]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling
    assert len(set(delays)) == len(delays)  # jittered: replicas do not retry in step


async def test_an_empty_answer_is_held_for_the_grace_then_believed(caplog: pytest.LogCaptureFixture) -> None:
    clock = SteppedClock()
    backend = ScriptedDiscovery(DiscoveryConfig(empty_grace=30.0), clock=clock)
    backend.queue("users", [A])
    async with MeshClient(MeshSettings(), transport=_answering(), discovery=backend) as client:
        await eventually(lambda: _urls(client, "users") == [A])
        caplog.set_level(logging.WARNING, logger="fastapi_mesh.discovery")
        backend.queue("users", [])
        await eventually(lambda: client.get_metrics()["discovery"]["services"]["users"]["empty_held"])
        await clock.advance(29)
        assert _urls(client, "users") == [A]
        assert (await client.get("users", "/")).status_code == 200
        await clock.advance(1)
        await eventually(lambda: _urls(client, "users") == [])
        with pytest.raises(NoHealthyEndpoints):
            await client.get("users", "/")
        messages = [r.getMessage() for r in caplog.records]
        assert any("keeping its last 1 for 30s" in m for m in messages)
        assert any("has had no endpoints for 30s" in m for m in messages)


async def test_endpoints_coming_back_within_the_grace_cancel_it() -> None:
    clock = SteppedClock()
    backend = ScriptedDiscovery(DiscoveryConfig(empty_grace=30.0), clock=clock)
    backend.queue("users", [A], [])
    async with MeshClient(MeshSettings(), transport=_answering(), discovery=backend) as client:
        client._rt.services.get("users")
        await eventually(lambda: client.get_metrics()["discovery"]["services"]["users"]["empty_held"])
        backend.queue("users", [B])
        await eventually(lambda: _urls(client, "users") == [B])
        await clock.advance(60)
        assert _urls(client, "users") == [B]


async def test_a_service_that_never_had_endpoints_takes_an_empty_answer_at_once() -> None:
    backend = ScriptedDiscovery()
    backend.queue("users", [])
    async with MeshClient(MeshSettings(), transport=_answering(), discovery=backend) as client:
        with pytest.raises(NoHealthyEndpoints):
            await client.get("users", "/", deadline=2.0)
        assert client.get_metrics()["discovery"]["services"]["users"]["synced"] is True


async def test_a_call_before_the_first_sync_waits_for_it() -> None:
    backend = ScriptedDiscovery()
    gate = asyncio.Event()
    backend.queue("users", gate, [A])
    async with MeshClient(MeshSettings(), transport=_answering(), discovery=backend) as client:
        call = asyncio.create_task(client.get("users", "/"))
        await eventually(lambda: backend.fetches.get("users") == 1)
        await asyncio.sleep(0.01)
        assert not call.done()  # waiting for the first answer, not failing
        gate.set()
        response = await asyncio.wait_for(call, 5)
        assert response.text == "10.0.0.1"


async def test_the_wait_for_a_first_sync_ends_at_the_call_deadline() -> None:
    backend = ScriptedDiscovery()
    backend.queue("users", asyncio.Event())  # never answers
    async with MeshClient(MeshSettings(), transport=_answering(), discovery=backend) as client:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(NoHealthyEndpoints):
            await client.get("users", "/", deadline=0.05)
        assert loop.time() - started < 2.0  # the deadline, not initial_sync_timeout (5 s)


async def test_a_failed_first_sync_releases_waiting_calls_at_once() -> None:
    clock = SteppedClock()
    backend = ScriptedDiscovery(clock=clock)
    gate = asyncio.Event()
    backend.queue("users", gate, ConnectionError("consul down"))
    async with MeshClient(MeshSettings(), transport=_answering(), discovery=backend) as client:
        call = asyncio.create_task(client.get("users", "/", deadline=30.0))
        await eventually(lambda: backend.fetches.get("users") == 1)
        gate.set()
        with pytest.raises(NoHealthyEndpoints):
            await asyncio.wait_for(call, 2)  # well before the 30 s deadline or the 5 s initial_sync_timeout


async def test_static_discovery_never_makes_a_call_wait() -> None:
    settings = MeshSettings(discovery={"endpoints": {"users": [A]}})
    async with MeshClient(settings, transport=_answering()) as client:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(NoHealthyEndpoints):
            await client.get("orders", "/")
        assert loop.time() - started < 1.0
        assert client._rt.services.get("orders").sync_pending is False


async def test_a_backend_bug_restarts_the_sync_task(caplog: pytest.LogCaptureFixture) -> None:
    clock = SteppedClock()

    class Buggy(ScriptedDiscovery):
        runs = 0

        async def run(self, service: str) -> None:
            self.runs += 1
            if self.runs == 1:
                raise KeyError("bug")
            await super().run(service)

    backend = Buggy(clock=clock)
    backend.queue("users", [A])
    async with MeshClient(MeshSettings(), transport=_answering(), discovery=backend) as client:
        client._rt.services.get("users")
        await eventually(lambda: clock.sleeping == 1)
        await clock.advance(60)
        await eventually(lambda: _urls(client, "users") == [A])
        assert any("sync task for 'users' failed" in r.getMessage() for r in caplog.records)


async def test_discovery_status_reaches_mesh_status_and_metrics() -> None:
    clock = SteppedClock()
    backend = ScriptedDiscovery(clock=clock)
    backend.queue("users", [A], ConnectionError("down"))
    mesh = Mesh(MeshSettings(), transport=_answering(), discovery=backend)
    app = FastAPI(lifespan=mesh.lifespan)
    app.include_router(mesh.router)
    async with serve(app) as http:
        mesh.client._rt.services.get("users")
        await eventually(lambda: backend.sync_status().get("users", {}).get("errors") == 1)
        status = (await http.get("/mesh/status")).json()["discovery"]
        assert status["backend"] == "scripted"
        assert status["services"]["users"]["stale"] is True
        assert status["services"]["users"]["endpoints"] == 1
        text = (await http.get("/metrics")).text
        assert 'mesh_discovery_errors_total{backend="scripted",service="users"} 1.0' in text
        assert 'mesh_discovery_stale{service="users"} 1.0' in text
        assert 'mesh_discovery_last_sync_timestamp_seconds{service="users"}' in text


async def test_critical_services_hold_startup_until_synced_and_readiness_while_empty() -> None:
    backend = ScriptedDiscovery(DiscoveryConfig(empty_grace=0))
    gate = asyncio.Event()
    backend.queue("users", gate, [A])
    settings = MeshSettings(discovery={"critical_services": ["users"]})
    mesh = Mesh(settings, transport=_answering(), discovery=backend)
    app = FastAPI(lifespan=mesh.lifespan)
    app.include_router(mesh.router)
    async with serve(app) as http:
        await mesh.health.run("startup")
        startup = await http.get("/health/startup")
        assert startup.status_code == 503
        assert "no answer from discovery for 'users'" in str(startup.json()["checks"]["discovery-sync:users"])
        gate.set()
        await eventually(lambda: mesh.client._rt.services.get("users").synced)
        await mesh.health.run("startup")
        await mesh.health.run("readiness")
        assert (await http.get("/health/startup")).status_code == 200
        assert (await http.get("/health/ready")).status_code == 200

        backend.queue("users", [])  # empty_grace 0: believed at once
        await eventually(lambda: not mesh.client._rt.services.get("users").balancer.endpoints)
        await mesh.health.run("readiness")
        ready = await http.get("/health/ready")
        assert ready.status_code == 503
        assert "knows no endpoints of 'users'" in str(ready.json()["checks"]["discovery:users"])
        assert (await http.get("/health/live")).status_code == 200  # never liveness


async def test_a_non_critical_service_never_affects_the_probes() -> None:
    backend = ScriptedDiscovery()
    backend.queue("orders", ConnectionError("down"))
    mesh = Mesh(MeshSettings(), transport=_answering(), discovery=backend)
    app = FastAPI(lifespan=mesh.lifespan)
    app.include_router(mesh.router)
    async with serve(app) as http:
        mesh.client._rt.services.get("orders")
        await eventually(lambda: backend.sync_status()["orders"]["errors"] == 1)
        await mesh.health.run("readiness")
        assert (await http.get("/health/ready")).status_code == 200
        assert (await http.get("/health/startup")).status_code == 200
