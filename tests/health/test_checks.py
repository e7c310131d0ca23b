"""Custom checks: thresholds, hierarchy, what the probe bodies say, sync checks off the loop, the built-in
liveness checks, and probes that answer from cached results."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
from fastapi import FastAPI

from fastapi_mesh import Mesh, MeshSettings
from fastapi_mesh.clock import ManualClock
from fastapi_mesh.health.manager import HealthManager
from fastapi_mesh.settings import HealthCheckConfig
from tests.apps import serve

pytestmark = pytest.mark.anyio

QUIET = {"event_loop_lag_threshold": None}  # the built-in loop check has its own tests below


class Switch:
    """A check whose outcome a test sets; counts its runs."""

    def __init__(self) -> None:
        self.ok = True
        self.runs = 0

    async def __call__(self) -> bool:
        self.runs += 1
        if not self.ok:
            raise RuntimeError("cache down")
        return True


async def _started(config: HealthCheckConfig, **checks: tuple[Switch, dict[str, object]]) -> HealthManager:
    health = HealthManager(config, "api", ManualClock())
    for name, (check, options) in checks.items():
        health.add_check(name, check, **options)  # type: ignore[arg-type]
    await health.start()
    return health


async def test_failure_threshold_failures_in_a_row_fail_a_check_that_had_passed() -> None:
    cache = Switch()
    health = await _started(HealthCheckConfig(**QUIET), cache=(cache, {"failure_threshold": 3}))
    try:
        assert health.readiness()["status"] == "healthy"
        cache.ok = False
        for expected in ("degraded", "degraded", "unhealthy"):
            await health.run_check("cache")
            assert health.readiness()["status"] == expected
        cache.ok = True
        await health.run_check("cache")
        assert health.readiness()["status"] == "healthy"
    finally:
        await health.stop()


async def test_success_threshold_passes_in_a_row_bring_a_failed_check_back() -> None:
    cache = Switch()
    cache.ok = False
    health = await _started(HealthCheckConfig(**QUIET), cache=(cache, {"success_threshold": 2}))
    try:
        assert health.readiness()["status"] == "unhealthy"  # never passed: failing at once
        cache.ok = True
        await health.run_check("cache")
        assert health.readiness()["status"] == "unhealthy"
        await health.run_check("cache")
        assert health.readiness()["status"] == "healthy"
    finally:
        await health.stop()


async def test_a_failing_non_critical_check_degrades_and_a_critical_one_fails() -> None:
    soft, hard = Switch(), Switch()
    health = await _started(
        HealthCheckConfig(failure_threshold=1, **QUIET),
        soft=(soft, {"critical": False}),
        hard=(hard, {"critical": True}),
    )
    try:
        soft.ok = False
        await health.run("readiness")
        body = health.readiness()
        assert (body["status"], HealthManager.status_code(body)) == ("degraded", 200)
        hard.ok = False
        await health.run("readiness")
        body = health.readiness()
        assert (body["status"], HealthManager.status_code(body)) == ("unhealthy", 503)
        assert health.liveness()["status"] == "healthy"  # a dependency never fails liveness
    finally:
        await health.stop()


async def test_the_body_lists_each_check_with_times_duration_and_a_short_error() -> None:
    cache = Switch()
    health = await _started(HealthCheckConfig(failure_threshold=1, **QUIET), cache=(cache, {}))
    try:
        cache.ok = False
        await health.run_check("cache")
        entry = health.readiness()["checks"]["cache"]  # type: ignore[index]
        assert entry["status"] == "fail"
        assert entry["last_error"] == "RuntimeError: cache down"
        assert entry["consecutive_failures"] == 1
        assert entry["last_success"] is not None and entry["last_failure"] is not None
        assert entry["last_success"].endswith("Z")
        assert isinstance(entry["duration_ms"], float)
        assert "interval_s" not in entry and "Traceback" not in str(entry)
        verbose = health.readiness(verbose=True)["checks"]["cache"]  # type: ignore[index]
        assert verbose["kind"] == "readiness"
        assert verbose["failure_threshold"] == 1
        assert verbose["interval_s"] == HealthCheckConfig().readiness_interval
    finally:
        await health.stop()


async def test_a_sync_check_runs_in_a_thread_and_never_blocks_the_loop() -> None:
    started, release = threading.Event(), threading.Event()
    seen: list[str] = []

    def slow() -> bool:
        seen.append(threading.current_thread().name)
        started.set()
        release.wait(5)
        return True

    health = HealthManager(HealthCheckConfig(**QUIET), "api", ManualClock())
    health.add_check("slow", slow)
    run = asyncio.create_task(health.run_check("slow"))
    await asyncio.to_thread(started.wait, 5)
    for _ in range(10):  # the loop keeps running while the check blocks its thread
        await asyncio.sleep(0)
    assert not run.done()
    release.set()
    await asyncio.wait_for(run, 5)
    assert seen and seen[0] != threading.main_thread().name
    assert health._checks["slow"].passed is True


async def test_a_stuck_sync_check_times_out_is_not_run_twice_and_fails_liveness() -> None:
    release = threading.Event()
    runs = 0

    def stuck() -> bool:
        nonlocal runs
        runs += 1
        release.wait(10)
        return True

    clock = ManualClock()
    config = HealthCheckConfig(check_timeout=0.05, stuck_task_threshold=60, failure_threshold=1, **QUIET)
    health = HealthManager(config, "api", clock)
    health.add_check("stuck", stuck)
    await health.start()
    try:
        assert health._checks["stuck"].last_error == "timed out after 0.05s"
        await health.run_check("stuck")  # the thread is still busy: not started again
        assert runs == 1
        assert "still running" in str(health._checks["stuck"].last_error)
        await health.run_check("background-tasks")
        assert health.liveness()["status"] == "healthy"
        clock.advance(61)
        await health.run_check("background-tasks")
        body = health.liveness()
        assert body["status"] == "unhealthy"
        assert "check 'stuck' has been running for 61s" in str(body["checks"]["background-tasks"])  # type: ignore[index]
    finally:
        release.set()
        await health.stop()


async def test_a_blocked_event_loop_fails_liveness() -> None:
    config = HealthCheckConfig(event_loop_lag_threshold=0.05, failure_threshold=1)
    health = HealthManager(config, "api", ManualClock())
    await health.start()
    try:
        await asyncio.sleep(0.06)  # let the monitor take a measurement
        await health.run_check("event-loop")
        assert health.liveness()["status"] == "healthy"
        time.sleep(0.3)  # a blocking call in async code
        await asyncio.sleep(0.06)
        await health.run_check("event-loop")
        body = health.liveness()
        assert body["status"] == "unhealthy"
        assert "the event loop fell" in str(body["checks"]["event-loop"])  # type: ignore[index]
    finally:
        await health.stop()


async def test_each_check_runs_on_its_own_interval_in_the_background() -> None:
    fast, slow = Switch(), Switch()
    health = HealthManager(HealthCheckConfig(**QUIET), "api")
    health.add_check("fast", fast, interval=0.01)
    health.add_check("slow", slow, interval=60)
    await health.start()
    try:
        async with asyncio.timeout(5):
            while fast.runs < 5:
                await asyncio.sleep(0.01)
        assert slow.runs == 1  # the run at start only
    finally:
        await health.stop()


def _app(mesh: Mesh) -> FastAPI:
    app = FastAPI(lifespan=mesh.lifespan)
    app.include_router(mesh.router)
    return app


async def test_the_decorator_registers_with_its_keywords_and_probes_never_run_checks() -> None:
    mesh = Mesh(MeshSettings(health_check=QUIET), transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    runs = 0

    @mesh.health_check("warehouse", kind="readiness", critical=False, interval=60, timeout=10.0)
    async def warehouse() -> bool:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.2)  # a slow dependency
        raise RuntimeError("warehouse unreachable")

    async with serve(_app(mesh)) as http:
        assert runs == 1
        for _ in range(5):
            response = await http.get("/health/ready")
            assert response.status_code == 200
            assert response.json()["status"] == "degraded"
        assert runs == 1  # answered from the cached result every time
        assert response.json()["checks"]["warehouse"]["last_error"] == "RuntimeError: warehouse unreachable"
        readiness = mesh.get_readiness()  # one read: its uptime moves on between reads
        assert readiness == response.json() | {"uptime_s": readiness["uptime_s"]}
        verbose = (await http.get("/health/ready", params={"verbose": "1"})).json()
        assert verbose["checks"]["warehouse"]["timeout_s"] == 10.0
        live = await http.get("/health/live")
        assert live.status_code == 200 and set(live.json()["checks"]) == {"background-tasks"}


async def test_add_health_check_takes_the_same_keywords() -> None:
    mesh = Mesh(MeshSettings(health_check=QUIET))
    mesh.add_health_check("db", lambda: True, kind="startup", interval=1, timeout=1, failure_threshold=2)
    check = mesh.health._checks["db"]
    assert (check.kind, check.interval, check.timeout, check.failure_threshold) == ("startup", 1, 1, 2)
    with pytest.raises(ValueError, match="failure_threshold must be a whole number of at least 1"):
        mesh.add_health_check("bad", lambda: True, failure_threshold=0)
    with pytest.raises(ValueError, match="kind must be liveness, readiness or startup"):
        mesh.add_health_check("bad", lambda: True, kind="ready")  # type: ignore[arg-type]


async def test_a_check_added_again_under_its_name_replaces_the_running_one() -> None:
    old, new = Switch(), Switch()
    health = HealthManager(HealthCheckConfig(**QUIET), "api")
    health.add_check("cache", old, interval=0.01)
    await health.start()
    try:
        health.add_check("cache", new, interval=0.01)
        runs_of_old = old.runs
        async with asyncio.timeout(5):
            while new.runs < 3:
                await asyncio.sleep(0.01)
        assert old.runs == runs_of_old  # the replaced check's loop has stopped
    finally:
        await health.stop()


async def test_the_success_threshold_setting_applies_when_a_check_passes_none() -> None:
    mesh = Mesh(MeshSettings(health_check={"success_threshold": 3, **QUIET}))
    mesh.add_health_check("db", lambda: True, success_threshold=None)
    mesh.add_health_check("cache", lambda: True)
    checks = mesh.health._checks
    assert (checks["db"].success_threshold, checks["cache"].success_threshold) == (3, 1)
