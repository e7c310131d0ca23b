"""Prometheus multiprocess mode under ``uvicorn --workers 2``: /metrics, from whichever worker answers,
adds up both workers' calls."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.observability.support import poll, samples, value
from tests.upstreams import unused_port

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


async def test_two_uvicorn_workers_are_counted_together(tmp_path: Path) -> None:
    """Calls spread over two worker processes: the counters, the duration histogram and the inbound
    counter on /metrics are the sum over both, whichever worker answers the scrape; gauges are combined
    (in flight summed, the rest as their highest); process metrics, which would describe one worker only,
    are left out. A clean stop removes the workers' gauge files and keeps their counters."""
    shared = tmp_path / "metrics"
    shared.mkdir()
    port = unused_port()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(shared), "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "tests.observability.workers_app:create_app",
         "--workers", "2", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:

            async def live() -> bool:
                try:
                    return (await http.get("/health/live")).status_code == 200
                except httpx.TransportError:
                    return False

            await poll(live, timeout=20, interval=0.05)
            pids: set[int] = set()
            calls = 0
            async with asyncio.timeout(20):
                while len(pids) < 2:  # fresh connections, 20 at a time, until both workers have served some
                    async with httpx.AsyncClient(
                        base_url=base, timeout=5, limits=httpx.Limits(max_keepalive_connections=0)
                    ) as fresh:
                        answers = await asyncio.gather(*(fresh.get("/call") for _ in range(20)))
                    pids |= {a.json()["pid"] for a in answers}
                    calls += len(answers)

            async def scrape() -> dict:  # type: ignore[type-arg]
                return samples((await http.get("/metrics")).text)

            async def all_counted() -> bool:
                found = await scrape()
                return value(found, "mesh_upstream_requests_total", service="users", outcome="success") == calls

            await poll(all_counted, timeout=10, interval=0.1)
            found = await scrape()
            text = (await http.get("/metrics")).text
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            _, stderr = server.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            _, stderr = server.communicate()
    labels = {"service": "users", "method": "GET", "code_class": "2xx"}
    assert value(found, "mesh_upstream_request_duration_seconds_count", **labels) == calls
    assert value(found, "mesh_upstream_request_duration_seconds_bucket", le="+Inf", **labels) == calls
    assert value(found, "mesh_inbound_requests_total", method="GET", route="/call", status="200") == calls
    assert value(found, "mesh_info", service="workers", environment="development") == 1
    assert value(found, "mesh_upstream_endpoints", service="users", state="healthy") == 1  # livemax, not 2
    assert value(found, "mesh_bulkhead_in_flight", name="users") == 0
    assert not any(name.startswith(("process_", "python_gc_")) for name, _ in found)
    if shutil.which("promtool"):
        result = subprocess.run(
            ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, result.stdout + result.stderr
    assert server.returncode == 0, stderr.decode()[-2000:]
    left = sorted(p.name.split("_")[0] for p in shared.glob("*-mesh.db"))
    assert left == ["counter", "counter", "histogram", "histogram"]
