"""What a probe costs, with and without slow checks registered.

``GET /health/ready`` and ``GET /health/live`` through ``httpx.ASGITransport`` on a FastAPI app with the
Mesh's router, for three apps: no custom checks; one async readiness check that takes 1 s; one sync
readiness check that takes 1 s (in its worker thread). The checks run in the background on their own
interval; a probe reads their last results. Each figure is the median of ``ROUNDS`` interleaved rounds of
``PROBES`` sequential probes, per probe.

Target: a probe with a 1 s check registered answers as fast as one without (ratio <= 1.10).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from bench.rounds import in_turn
from fastapi_mesh import Mesh, MeshSettings

ROUNDS = 15
PROBES = 300
VARIANTS = ("no checks", "a 1 s async check", "a 1 s sync check")


def _app(variant: str) -> FastAPI:
    mesh = Mesh(MeshSettings(service_name="bench"))
    if variant == "a 1 s async check":

        @mesh.health_check("slow", interval=0.5, timeout=5)
        async def slow() -> bool:
            await asyncio.sleep(1.0)
            return True

    elif variant == "a 1 s sync check":

        @mesh.health_check("slow", interval=0.5, timeout=5)
        def slow_sync() -> bool:
            time.sleep(1.0)
            return True

    app = FastAPI(lifespan=mesh.lifespan)
    app.include_router(mesh.router)
    return app


async def _round(http: httpx.AsyncClient, path: str, probes: int) -> float:
    start = time.perf_counter()
    for _ in range(probes):
        response = await http.get(path)
        assert response.status_code == 200, response.text
    return (time.perf_counter() - start) / probes


async def run(rounds: int = ROUNDS, probes: int = PROBES) -> dict[str, dict[str, float]]:
    """``{variant: {"/health/ready": seconds per probe, "/health/live": seconds per probe}}``."""
    times: dict[tuple[str, str], list[float]] = {}
    async with _started(VARIANTS) as clients:
        for round_ in range(rounds):
            for variant in in_turn(VARIANTS, round_):
                for path in ("/health/ready", "/health/live"):
                    cost = await _round(clients[variant], path, probes)
                    times.setdefault((variant, path), []).append(cost)
    return {
        variant: {path: statistics.median(times[variant, path]) for path in ("/health/ready", "/health/live")}
        for variant in VARIANTS
    }


class _started:
    """Every variant's app started (its lifespan run), each behind its own ASGI client."""

    def __init__(self, variants: tuple[str, ...], make: Callable[[str], FastAPI] = _app) -> None:
        self._apps = {variant: make(variant) for variant in variants}
        self._managers: list[LifespanManager] = []
        self._clients: list[httpx.AsyncClient] = []

    async def __aenter__(self) -> dict[str, httpx.AsyncClient]:
        clients = {}
        for variant, app in self._apps.items():
            manager = LifespanManager(app, startup_timeout=30)
            await manager.__aenter__()
            self._managers.append(manager)
            client = httpx.AsyncClient(transport=httpx.ASGITransport(manager.app), base_url="http://bench")
            self._clients.append(client)
            clients[variant] = client
        return clients

    async def __aexit__(self, *exc: Any) -> None:
        for client in self._clients:
            await client.aclose()
        for manager in reversed(self._managers):
            await manager.__aexit__(None, None, None)


def report(results: dict[str, dict[str, float]]) -> str:
    base = results["no checks"]
    lines = [
        "| app | `/health/ready` per probe | ratio | `/health/live` per probe | ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for variant, row in results.items():
        ready, live = row["/health/ready"], row["/health/live"]
        lines.append(
            f"| {variant} | {ready * 1e6:.0f} µs | {ready / base['/health/ready']:.2f}x "
            f"| {live * 1e6:.0f} µs | {live / base['/health/live']:.2f}x |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(asyncio.run(run())))
