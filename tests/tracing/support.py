"""Tracing tests: providers recording into memory; apps are served on loopback with ``serve_on_port``."""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Sampler
from opentelemetry.trace import SpanKind

from tests.observability.support import poll

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
    await poll(lambda: len(exporter.get_finished_spans()) >= count, timeout=SPAN_TIMEOUT, interval=0.005)
    return list(exporter.get_finished_spans())
