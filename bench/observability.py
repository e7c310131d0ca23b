"""What metrics and tracing add to a call: per-call CPU on ``httpx.MockTransport``, as in ``bench.overhead``.

Every variant is ``MeshClient(settings, transport=mock).get("user-service", "/api/users")`` with the
development preset, measured in interleaved rounds in one process, their order rotated each round (CPU
time of the process, so a busy neighbour does not count, and the batch exporter's thread does: a recording
provider is flushed inside its variant's window, so its export is not counted to the variant measured
next):

- ``metrics on, tracing off``: the default, the baseline of the tracing rows;
- ``metrics off``: ``observability.metrics: false``, the baseline of the metrics row;
- ``tracing on, unsampled``: ``observability.tracing: true`` with a ``TracerProvider`` whose sampler is
  ``ALWAYS_OFF``: a non-recording span per call, and its context injected into the request;
- ``tracing on, recording``: ``ALWAYS_ON``, a ``BatchSpanProcessor`` and an exporter that drops what it is
  given: a span per call with its attributes, ended and queued for export.

For the tracing rows, the same rounds also time the OpenTelemetry calls a traced request makes, alone, on
providers set up alike: ``start_span`` with the request's attributes, ``set_span_in_context`` and the
global propagator's ``inject``, and for a recording span ``set_attributes`` and ``end``. That is the part
of the row no code of the mesh can take away (a lower bound of it: in a tight loop of its own the SDK's
code and data stay in the CPU's caches, which inside a whole call they do not).

Targets: metrics add <= 5% per call; tracing on but unsampled <= 5%; recording <= 25%.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence

import httpx
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON
from opentelemetry.trace import SpanKind, Tracer
from opentelemetry.util.types import AttributeValue

from bench.overhead import _time, handler
from bench.rounds import in_turn
from fastapi_mesh import MeshClient, MeshSettings

CALLS_PER_ROUND = 3_000
ROUNDS = 15

BASELINE = "metrics on, tracing off (default)"
METRICS_OFF = "metrics off (observability.metrics: false)"
UNSAMPLED = "tracing on, unsampled (ALWAYS_OFF sampler)"
RECORDING = "tracing on, recording (ALWAYS_ON, batch processor, no-op exporter)"
VARIANTS = (BASELINE, METRICS_OFF, UNSAMPLED, RECORDING)
#: Per variant: the row it is compared with, and the most it may add per call.
TARGETS = {METRICS_OFF: (BASELINE, 0.05), UNSAMPLED: (BASELINE, 0.05), RECORDING: (BASELINE, 0.25)}


class CountingExporter(SpanExporter):
    """Drops the spans it is given, counting them (so the recording row provably recorded)."""

    def __init__(self) -> None:
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exported += len(spans)
        return SpanExportResult.SUCCESS


class Results(dict[str, float]):
    """Median seconds per call per variant, the spans each tracing variant exported, and per tracing variant
    the median seconds of its OpenTelemetry calls alone."""

    exported: dict[str, int]
    sdk: dict[str, float]


#: What a traced request gives ``start_span`` (the first call's, as the mesh keeps them) and ``set_attributes``.
START_ATTRIBUTES: dict[str, AttributeValue] = {
    "http.request.method": "GET",
    "server.address": "user-service",
    "url.full": "http://user-service/api/users",
    "mesh.service": "user-service",
}
END_ATTRIBUTES: dict[str, AttributeValue] = {"http.response.status_code": 200, "mesh.attempts": 1, "mesh.endpoint": "http://10.0.0.1:8080"}


def sdk_calls(tracer: Tracer, calls: int) -> None:
    """The OpenTelemetry calls ``calls`` traced requests make, alone."""
    for _ in range(calls):
        span = tracer.start_span("GET", None, SpanKind.CLIENT, START_ATTRIBUTES)
        propagate.inject({}, trace.set_span_in_context(span))
        if span.is_recording():
            span.set_attributes(END_ATTRIBUTES)
            span.end()


def _time_sdk(tracer: Tracer, calls: int, settle: Callable[[], object]) -> float:
    """Seconds per request of the OpenTelemetry calls a traced request makes, over ``calls`` requests, the
    export they leave to the batch processor's thread (``settle`` flushes it) included."""
    gc.collect()
    start = time.process_time()
    sdk_calls(tracer, calls)
    settle()
    return (time.process_time() - start) / calls


def _settings(**observability: bool) -> MeshSettings:
    return MeshSettings(
        service_name="bench",
        discovery={"endpoints": {"user-service": ["http://10.0.0.1:8080"]}},
        observability=observability,
    )


def provider(variant: str, exporter: SpanExporter | None = None) -> TracerProvider:
    """The tracer provider of a tracing variant: its sampler, and a batch processor over ``exporter``."""
    made = TracerProvider(sampler=ALWAYS_ON if variant == RECORDING else ALWAYS_OFF)
    made.add_span_processor(BatchSpanProcessor(exporter if exporter is not None else CountingExporter()))
    return made


def client(variant: str, transport: httpx.AsyncBaseTransport, tracer_provider: TracerProvider | None) -> MeshClient:
    """The ``MeshClient`` of ``variant`` (``tracer_provider`` for the tracing variants)."""
    if variant == METRICS_OFF:
        return MeshClient(_settings(metrics=False), transport=transport)
    if variant in (UNSAMPLED, RECORDING):
        return MeshClient(_settings(tracing=True), transport=transport, tracer_provider=tracer_provider)
    return MeshClient(_settings(), transport=transport)


async def run(calls_per_round: int = CALLS_PER_ROUND, rounds: int = ROUNDS) -> Results:
    """Median seconds per call for each variant, measured in interleaved rounds."""
    mock = httpx.MockTransport(handler)
    unsampled_exporter, recording_exporter = CountingExporter(), CountingExporter()
    unsampled, recording = provider(UNSAMPLED, unsampled_exporter), provider(RECORDING, recording_exporter)
    providers = {UNSAMPLED: unsampled, RECORDING: recording}
    clients = {name: client(name, mock, providers.get(name)) for name in VARIANTS}
    variants: dict[str, Callable[[], Awaitable[httpx.Response]]] = {}
    sdk_providers = {UNSAMPLED: provider(UNSAMPLED), RECORDING: provider(RECORDING)}
    tracers = {name: made.get_tracer("bench") for name, made in sdk_providers.items()}
    for name, mesh in clients.items():
        await mesh.initialize()
        variants[name] = _caller(mesh)
    try:
        # A recording provider's batch processor exports on a thread of its own: flushing it inside the
        # variant's timed window counts that work to the variant, not to the one measured after it.
        settle = {name: made.force_flush for name, made in providers.items()}
        for name, call in variants.items():  # warm up caches, pools, lazy imports
            await _time(call, min(500, calls_per_round), settle.get(name))
        samples: dict[str, list[float]] = {name: [] for name in variants}
        sdk_samples: dict[str, list[float]] = {name: [] for name in tracers}
        for round_ in range(rounds):
            for name, call in in_turn(variants.items(), round_):
                samples[name].append(await _time(call, calls_per_round, settle.get(name)))
                if name in tracers:
                    sdk_samples[name].append(_time_sdk(tracers[name], calls_per_round, sdk_providers[name].force_flush))
    finally:
        for mesh in clients.values():
            await mesh.aclose()
    for made in (unsampled, recording, *sdk_providers.values()):
        made.shutdown()  # flushes what the batch processors hold
    results = Results({name: statistics.median(values) for name, values in samples.items()})
    results.exported = {UNSAMPLED: unsampled_exporter.exported, RECORDING: recording_exporter.exported}
    results.sdk = {name: statistics.median(values) for name, values in sdk_samples.items()}
    return results


def _caller(client: MeshClient) -> Callable[[], Awaitable[httpx.Response]]:
    async def call() -> httpx.Response:
        return await client.get("user-service", "/api/users")

    return call


def report(results: dict[str, float]) -> str:
    """A markdown table: per variant its cost per call and, for the compared rows, what is added per call
    (metrics: the default row against the metrics-off row; tracing: the row against the default), the target,
    whether this run met it, and for the tracing rows what their OpenTelemetry calls cost alone."""
    sdk: dict[str, float] = getattr(results, "sdk", {})
    lines = [
        "| variant | µs per call | what is compared | added per call | target | met | OpenTelemetry calls alone |",
        "| --- | ---: | --- | ---: | ---: | :---: | ---: |",
    ]
    for name, seconds in results.items():
        target = TARGETS.get(name)
        alone = f"{sdk[name] * 1e6:.1f} µs" if name in sdk else ""
        if target is None:
            lines.append(f"| {name} | {seconds * 1e6:.1f} | | | | | |")
            continue
        base_name, limit = target
        if name == METRICS_OFF:  # metrics are what the default row has and this one lacks
            with_it, without = results[base_name], seconds
            compared = "metrics: the default row against this one"
        else:
            with_it, without = seconds, results[base_name]
            compared = "tracing: this row against the default"
        added = with_it / without - 1
        lines.append(
            f"| {name} | {seconds * 1e6:.1f} | {compared} | {(with_it - without) * 1e6:+.1f} µs ({added:+.1%}) "
            f"| <= {limit:.0%} | {'yes' if added <= limit else 'no'} | {alone} |"
        )
    return "\n".join(lines)


#: The instruction-count variant of each tracing row's OpenTelemetry calls alone (``bench.instructions``).
SDK_ALONE = {UNSAMPLED: "OpenTelemetry calls alone, unsampled", RECORDING: "OpenTelemetry calls alone, recording"}


def instruction_report(counts: dict[str, float] | None) -> str:
    """The rows of ``report`` in instructions per call (``bench.instructions.run(INSTRUCTION_VARIANTS)``),
    where what the machine's other load does cannot move them; the mesh's own part of a tracing row is what it
    adds beyond its OpenTelemetry calls alone."""
    if counts is None:
        return "(valgrind is not installed: no instruction counts)"
    lines = [
        "| variant | instructions per call | added per call | target | met | OpenTelemetry calls alone "
        "| the mesh's own part |",
        "| --- | ---: | ---: | ---: | :---: | ---: | ---: |",
    ]
    for name in VARIANTS:
        count = counts[name]
        target = TARGETS.get(name)
        if target is None:
            lines.append(f"| {name} | {count:,.0f} | | | | | |")
            continue
        base_name, limit = target
        with_it, without = (counts[base_name], count) if name == METRICS_OFF else (count, counts[base_name])
        added = with_it / without - 1
        alone, own = "", ""
        if name in SDK_ALONE:
            sdk = counts[SDK_ALONE[name]]
            alone, own = f"{sdk:,.0f}", f"{with_it - without - sdk:+,.0f} ({(with_it - without - sdk) / without:+.1%})"
        lines.append(
            f"| {name} | {count:,.0f} | {with_it - without:+,.0f} ({added:+.1%}) | <= {limit:.0%} "
            f"| {'yes' if added <= limit else 'no'} | {alone} | {own} |"
        )
    return "\n".join(lines)


#: What ``bench.instructions`` counts for ``instruction_report``.
INSTRUCTION_VARIANTS = (*VARIANTS, *SDK_ALONE.values())


async def drive(variant: str, calls: int) -> None:
    """Make ``calls`` calls of ``variant`` (one of ``INSTRUCTION_VARIANTS``), for ``bench.instructions``."""
    tracing = next((name for name, alone in SDK_ALONE.items() if alone == variant), None)
    if tracing is not None:
        made = provider(tracing)
        sdk_calls(made.get_tracer("bench"), calls)
        made.shutdown()
        return
    made = provider(variant) if variant in (UNSAMPLED, RECORDING) else None
    mesh = client(variant, httpx.MockTransport(handler), made)
    await mesh.initialize()
    for _ in range(calls):
        await mesh.get("user-service", "/api/users")
    await mesh.aclose()
    if made is not None:
        made.shutdown()


def main(argv: list[str] | None = None) -> None:
    """``python -m bench.observability [--plot]``: the CPU-time table (``--plot``: its plot redrawn too)."""
    args = sys.argv[1:] if argv is None else argv
    measured = asyncio.run(run())
    print(report(measured))
    print(f"spans exported: {measured.exported}")
    if "--plot" in args:
        from bench import plots

        print(f"plot: {plots.redraw('observability', measured)}")


if __name__ == "__main__":
    main()
