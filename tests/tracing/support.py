"""Tracing tests: providers recording into memory, FastAPI apps served by uvicorn on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence

import uvicorn
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Sampler
from opentelemetry.trace import SpanKind
from starlette.types import ASGIApp

START_TIMEOUT = 5.0
SPAN_TIMEOUT = 5.0


def recording_provider(sampler: Sampler | None = None) -> tuple[TracerProvider, InMemorySpanExporter]:
    """A provider whose finished spans land in the returned exporter."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def of_kind(spans: Sequence[ReadableSpan], kind: SpanKind) -> list[ReadableSpan]:
    return [span for span in spans if span.kind is kind]


async def wait_for_spans(exporter: InMemorySpanExporter, count: int) -> list[ReadableSpan]:
    """The exporter's spans once it holds ``count`` (a server span ends just after its response is sent)."""
    async with asyncio.timeout(SPAN_TIMEOUT):
        while len(exporter.get_finished_spans()) < count:
            await asyncio.sleep(0.005)
    return list(exporter.get_finished_spans())


class _Server(uvicorn.Server):
    """A uvicorn server that leaves the test process's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serve(app: ASGIApp, lifespan: str = "on") -> AsyncIterator[str]:
    """Serve ``app`` (its lifespan run) on a free loopback port for the block; yield its base URL."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, lifespan=lifespan, ws="none", http="h11", log_config=None, log_level="warning"
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(START_TIMEOUT):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("uvicorn stopped before it started")
                await asyncio.sleep(0.005)
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)
