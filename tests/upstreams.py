"""Real upstream replicas for tests: uvicorn servers on 127.0.0.1 ephemeral ports with a fault switch.

Fault modes: ``ok``, ``status`` (answer ``status_code``), ``hang`` (never answer), ``drop`` (send the head
and half the body, then close the connection), ``slow`` (answer after ``delay`` seconds), ``flap``
(alternate: the 1st, 3rd, 5th ... request gets ``status_code``, the others 200). A stopped replica refuses
connections.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections import Counter
from typing import Any

import uvicorn

from fastapi_mesh import MeshSettings

START_TIMEOUT = 5.0


class Replica:
    """One upstream server. Counts the requests it received per (method, path)."""

    def __init__(self, name: str, **server_options: Any) -> None:
        self.name = name
        self.server_options = server_options
        self.mode = "ok"
        self.status_code = 503
        self.delay = 0.0
        self.flaps = 0
        self.received: Counter[tuple[str, str]] = Counter()
        self.headers: list[dict[str, str]] = []
        self.bodies: list[bytes] = []
        self.server: uvicorn.Server | None = None
        self.task: asyncio.Task[None] | None = None
        self.port = 0
        self.release = asyncio.Event()

    @property
    def url(self) -> str:
        scheme = "https" if "ssl_certfile" in self.server_options else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def total(self) -> int:
        return sum(self.received.values())

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.received[(scope["method"], scope["path"])] += 1
        self.headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
        self.bodies.append(body)
        mode = self.mode
        if mode == "hang":
            await self.release.wait()
        if mode == "slow":
            await asyncio.sleep(self.delay)
        payload = json.dumps({"replica": self.name, "path": scope["path"], "query": scope["query_string"].decode()})
        data = payload.encode()
        status = self.status_code if mode == "status" else 200
        if mode == "flap":
            self.flaps += 1
            status = self.status_code if self.flaps % 2 else 200
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if mode == "drop":
            await send({"type": "http.response.body", "body": data[: len(data) // 2], "more_body": True})
            raise ConnectionAbortedError("fault switch: dropping the connection mid-body")
        await send({"type": "http.response.body", "body": data})

    async def start(self) -> None:
        config = uvicorn.Config(
            self, host="127.0.0.1", port=0, log_level="critical", lifespan="off", **self.server_options
        )
        self.server = server = uvicorn.Server(config)
        self.task = asyncio.create_task(server.serve())
        async with asyncio.timeout(START_TIMEOUT):
            while not server.started:
                if self.task.done():
                    self.task.result()
                await asyncio.sleep(0.005)
        self.port = server.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is None or self.task is None:
            return
        self.release.set()
        self.server.should_exit = True
        await self.task
        self.server = None


def unused_port() -> int:
    """A loopback port nobody listens on (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Fleet:
    """A set of replicas for one test."""

    def __init__(self) -> None:
        self.replicas: list[Replica] = []

    async def start(self, count: int, prefix: str = "r", **server_options: Any) -> list[Replica]:
        started = [Replica(f"{prefix}{len(self.replicas) + i + 1}", **server_options) for i in range(count)]
        await asyncio.gather(*(r.start() for r in started))
        self.replicas.extend(started)
        return started

    async def stop(self) -> None:
        await asyncio.gather(*(r.stop() for r in self.replicas))


def settings_for(urls: list[str], service: str = "svc", **sections: Any) -> MeshSettings:
    """Settings for a test: ``service`` at ``urls``, retries without backoff pauses (``retry`` given merges
    over that)."""
    sections["retry"] = {"initial_delay": 0, "jitter": "none", **sections.get("retry", {})}
    return MeshSettings(service_name="test", discovery={"endpoints": {service: urls}}, **sections)
