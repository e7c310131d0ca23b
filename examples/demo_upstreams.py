"""Local upstream replicas for the examples: one small ASGI app per replica, served by uvicorn on 127.0.0.1.

Every answer is JSON naming the service, the replica and its version, so balancing and canary splits are
visible. A replica can be switched to fail (``replica.status = 503``), to answer slowly
(``replica.delay = 1.5``) or be stopped (``await replica.stop()``: connections are then refused)::

    async with DemoFleet({"user-service": 3, "order-service": 2}) as fleet:
        settings = MeshSettings(discovery={"endpoints": fleet.endpoints()})
        fleet.replicas["user-service"][0].status = 503

``async with serve(app) as url:`` runs an example's own app (its lifespan included) the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Iterator, Mapping
from types import TracebackType
from typing import Any

import uvicorn

__all__ = ["DemoFleet", "DemoReplica", "serve", "unused_url"]

HOST = "127.0.0.1"
START_TIMEOUT = 5.0


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the example that started it decides when it stops."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class DemoReplica:
    """One replica of ``service``: ``/health/*`` answers 200, every other path the replica's JSON.

    >>> replica = DemoReplica("user-service", "user-service-1", version="v2")
    >>> replica.body("/api/users")["version"]
    'v2'
    """

    def __init__(self, service: str, name: str, *, version: str = "v1") -> None:
        self.service = service
        self.name = name
        self.version = version
        #: Answer this status to everything but ``/health/*`` (``None``: 200).
        self.status: int | None = None
        #: Seconds to wait before answering.
        self.delay = 0.0
        #: Requests received, probes included.
        self.requests = 0
        self.port = 0
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def body(self, path: str) -> dict[str, Any]:
        return {"service": self.service, "replica": self.name, "version": self.version, "path": path}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.requests += 1
        path = scope["path"]
        status = 200
        if not path.startswith("/health/"):
            if self.delay:
                await asyncio.sleep(self.delay)
            status = self.status or 200
        data = json.dumps(self.body(path)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    async def start(self) -> None:
        self._server, self._task, self.port = await _start(self, lifespan="off")

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        await asyncio.wait_for(self._task, timeout=START_TIMEOUT)
        self._server = None


class DemoFleet:
    """Replicas per service, started on entry and stopped on exit. ``counts`` maps a service to a number of
    replicas, or to a list of versions (one replica per entry).

    >>> fleet = DemoFleet({"user-service": ["v1", "v1", "v2"], "order-service": 1})
    >>> [r.version for r in fleet.replicas["user-service"]], fleet.replicas["order-service"][0].name
    (['v1', 'v1', 'v2'], 'order-service-1')
    """

    def __init__(self, counts: Mapping[str, int | list[str]]) -> None:
        self.replicas: dict[str, list[DemoReplica]] = {}
        for service, spec in counts.items():
            versions = ["v1"] * spec if isinstance(spec, int) else list(spec)
            self.replicas[service] = [
                DemoReplica(service, f"{service}-{i + 1}", version=version) for i, version in enumerate(versions)
            ]

    def endpoints(self, *, with_versions: bool = False) -> dict[str, list[Any]]:
        """``discovery.endpoints`` for these replicas; ``with_versions`` adds ``metadata.version``."""
        return {
            service: [
                {"url": r.url, "metadata": {"version": r.version}} if with_versions else r.url for r in replicas
            ]
            for service, replicas in self.replicas.items()
        }

    async def __aenter__(self) -> DemoFleet:
        await asyncio.gather(*(r.start() for rs in self.replicas.values() for r in rs))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.gather(*(r.stop() for rs in self.replicas.values() for r in rs))


async def _start(app: Any, *, lifespan: str = "auto") -> tuple[_Server, asyncio.Task[None], int]:
    """Serve ``app`` with uvicorn on a free loopback port; returns the server, its task and the port."""
    server = _Server(uvicorn.Config(app, host=HOST, port=0, lifespan=lifespan, log_config=None, log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(START_TIMEOUT):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("uvicorn stopped before it started")
                await asyncio.sleep(0.01)
    except BaseException:
        server.should_exit = True
        raise
    return server, task, server.servers[0].sockets[0].getsockname()[1]


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` (its lifespan included) on a free loopback port while the block runs; yields its base URL."""
    server, task, port = await _start(app)
    try:
        yield f"http://{HOST}:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=START_TIMEOUT)


def unused_url() -> str:
    """The URL of a loopback port nobody listens on: a service that is down."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return f"http://{HOST}:{sock.getsockname()[1]}"
