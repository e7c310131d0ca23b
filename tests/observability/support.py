"""Helpers for the observability tests: reading /metrics, serving a gateway on a real port."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import uvicorn
from prometheus_client.parser import text_string_to_metric_families

START_TIMEOUT = 5.0

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of a Prometheus text document, by name and label set."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: Samples, name: str, /, **labels: str) -> float | None:
    """The sample ``name`` with exactly ``labels``, or None."""
    return found.get((name, frozenset(labels.items())))


def matching(found: Samples, name: str, /, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
    """The samples named ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return {key: v for (sample, key), v in found.items() if sample == name and wanted <= key}


class QuietServer(uvicorn.Server):
    """A uvicorn server that leaves the test process's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serve_on_port(app: Any, *, lifespan: str = "on") -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port while the block runs; yields its base URL."""
    server = QuietServer(
        uvicorn.Config(app, host="127.0.0.1", port=0, lifespan=lifespan, log_config=None, log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(START_TIMEOUT):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("uvicorn stopped before it started")
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)


async def poll(predicate: Any, timeout: float = 5.0, interval: float = 0.01) -> None:
    """Wait until ``predicate()`` (sync or async) is true, at most ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while True:
            result = predicate()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            await asyncio.sleep(interval)
