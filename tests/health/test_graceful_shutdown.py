"""Graceful shutdown under a real uvicorn process: SIGTERM turns readiness 503 while the server still
serves, requests in flight complete, and the process exits within the drain and the grace."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from tests.upstreams import unused_port

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 15.0


@asynccontextmanager
async def _uvicorn(drain_delay: float, shutdown_grace: float) -> AsyncIterator[tuple[subprocess.Popen[bytes], str]]:
    port = unused_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    env.update(
        PYTHONPATH=str(ROOT),
        MESH_SERVICE_NAME="drain-test",
        MESH_HEALTH_CHECK__DRAIN_DELAY=str(drain_delay),
        MESH_HEALTH_CHECK__SHUTDOWN_GRACE=str(shutdown_grace),
    )
    command = [sys.executable, "-m", "uvicorn", "tests.health.drain_app:app", "--host", "127.0.0.1"]
    process = subprocess.Popen(
        [*command, "--port", str(port), "--log-level", "warning"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, trust_env=False, timeout=2.0) as http:
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                assert process.poll() is None, "uvicorn exited before it was ready"
                try:
                    if (await http.get("/health/ready")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "uvicorn did not become ready"
                await asyncio.sleep(0.05)
        yield process, base
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


async def _wait_exit(process: subprocess.Popen[bytes], timeout: float) -> float:
    start = time.monotonic()
    while process.poll() is None:
        assert time.monotonic() - start < timeout, f"the process did not exit within {timeout}s"
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def test_sigterm_drains_readiness_first_and_lets_requests_in_flight_finish() -> None:
    drain, grace = 1.5, 10.0
    async with _uvicorn(drain, grace) as (process, base):
        http = httpx.AsyncClient(base_url=base, trust_env=False, timeout=10.0)
        probes = httpx.AsyncClient(base_url=base, trust_env=False, timeout=2.0)
        try:
            in_flight = [asyncio.create_task(http.get("/slow", params={"seconds": 2.5})) for _ in range(5)]
            await asyncio.sleep(0.3)  # the requests have arrived
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            ready_codes = []
            while time.monotonic() - signalled < drain * 0.6:
                ready_codes.append((await probes.get("/health/ready")).status_code)
                await asyncio.sleep(0.05)
            live = await probes.get("/health/live")
            responses = await asyncio.gather(*in_flight)
            exited_after = await _wait_exit(process, drain + grace)
        finally:
            await http.aclose()
            await probes.aclose()
    assert ready_codes and set(ready_codes) == {503}  # the server still answers, and says: not ready
    assert live.status_code == 200  # draining is not dying
    assert [r.status_code for r in responses] == [200] * 5
    assert exited_after < drain + grace


async def test_requests_still_running_after_the_grace_are_cancelled_and_the_process_exits() -> None:
    drain, grace = 0.2, 1.0
    async with _uvicorn(drain, grace) as (process, base):
        http = httpx.AsyncClient(base_url=base, trust_env=False, timeout=30.0)
        try:
            stuck = asyncio.create_task(http.get("/slow", params={"seconds": 60}))
            await asyncio.sleep(0.3)
            process.send_signal(signal.SIGTERM)
            exited_after = await _wait_exit(process, drain + grace + 5.0)
            with pytest.raises(httpx.HTTPError):
                response = await stuck
                response.raise_for_status()
        finally:
            await http.aclose()
    assert exited_after < drain + grace + 5.0
