"""The demo (``python -m example_app``) in-process: three user-service and two order-service replicas and
the api-gateway in front of them, each on its own loopback port, plus a traffic generator."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
from fastapi import FastAPI

from example_app.gateway import create_gateway
from example_app.upstream import create_upstream_app
from fastapi_mesh import Mesh
from tests.observability.support import serve_on_port

FAST_RETRY = {"max_retries": 2, "initial_delay": 0.01, "max_delay": 0.05}


@dataclass
class Demo:
    gateway: str
    app: FastAPI

    @property
    def mesh(self) -> Mesh:
        mesh: Mesh = self.app.state.mesh
        return mesh


@contextlib.asynccontextmanager
async def running_demo(flaky: float = 0.0) -> AsyncIterator[Demo]:
    """The demo topology; ``flaky``: the share of 503s user-service-3 answers."""
    replicas = [("user-service", f"user-service-{i}") for i in (1, 2, 3)]
    replicas += [("order-service", f"order-service-{i}") for i in (1, 2)]
    async with contextlib.AsyncExitStack() as stack:
        endpoints: dict[str, list[str]] = {}
        for service, name in replicas:
            app = create_upstream_app(service, name, flaky=flaky if name == "user-service-3" else 0.0, seed=7)
            url = await stack.enter_async_context(serve_on_port(app, lifespan="off"))
            endpoints.setdefault(service, []).append(url)
        gateway = create_gateway(endpoints, retry=FAST_RETRY)
        yield Demo(await stack.enter_async_context(serve_on_port(gateway)), gateway)


async def traffic(base: str, requests: int, concurrency: int = 8) -> None:
    """``requests`` requests over the gateway's routes, ``concurrency`` at a time."""
    routes = ["/api/users", "/api/users/1", "/api/orders", "/api/dashboard"]
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        pending = iter(range(requests))

        async def worker() -> None:
            for i in pending:
                await http.get(routes[i % len(routes)])

        await asyncio.gather(*(worker() for _ in range(concurrency)))
