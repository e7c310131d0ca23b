"""One trace across gateway -> upstream -> upstream, each a real uvicorn server on loopback."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind, StatusCode

from fastapi_mesh import Mesh, MeshClient, MeshMiddleware, MeshSettings, get_mesh
from tests.observability.support import serve_on_port as serve
from tests.tracing.support import of_kind, recording_provider, wait_for_spans
from tests.upstreams import Fleet, Replica

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CALLER_SPAN_ID = 0x00F067AA0BA902B7
CALLER = {"traceparent": f"00-{TRACE_ID:032x}-{CALLER_SPAN_ID:016x}-01", "tracestate": "vendor=abc"}


def tier(
    name: str,
    upstream: str,
    url: str,
    provider: TracerProvider | None,
    *,
    tracing: bool = True,
    middleware: bool = True,
    instrument: bool = False,
) -> FastAPI:
    """A meshed service ``name`` whose ``/api/users`` calls ``upstream`` at ``url``."""
    settings = MeshSettings(
        service_name=name,
        discovery={"endpoints": {upstream: [url]}},
        retry={"initial_delay": 0, "jitter": "none"},
        observability={"tracing": tracing},
    )
    mesh = Mesh(settings, tracer_provider=provider)
    app = FastAPI(lifespan=mesh.lifespan)
    app.include_router(mesh.router)

    @app.get("/api/users")
    async def users(client: MeshClient = Depends(get_mesh)) -> Any:
        response = await client.get(upstream, "/api/users", params={"token": "s3cret"})
        return {"tier": name, "next": response.json()}

    @app.get("/api/broken")
    async def broken(client: MeshClient = Depends(get_mesh)) -> Any:
        return (await client.get("nobody-knows", "/")).json()  # NoHealthyEndpoints: MeshMiddleware answers 503

    if middleware:
        app.add_middleware(MeshMiddleware, mesh=mesh)
    if instrument:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(app, tracer_provider=provider, exclude_spans=["receive", "send"])
    return app


@dataclass
class Chain:
    gateway: str
    gateway_spans: InMemorySpanExporter
    mid_spans: InMemorySpanExporter
    leaf: Replica


@contextlib.asynccontextmanager
async def chain(fleet: Fleet, **options: Any) -> AsyncIterator[Chain]:
    """gateway -> user-service -> profile-service (a plain replica that records the headers it got)."""
    (leaf,) = await fleet.start(1)
    mid_provider, mid_spans = recording_provider()
    gateway_provider, gateway_spans = recording_provider()
    async with (
        serve(tier("user-service", "profile-service", leaf.url, mid_provider, **options)) as mid,
        serve(tier("api-gateway", "user-service", mid, gateway_provider, **options)) as gateway,
    ):
        yield Chain(gateway, gateway_spans, mid_spans, leaf)


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def traceparent_parts(value: str) -> tuple[int, int, int]:
    version, trace_id, span_id, flags = value.split("-")
    assert version == "00"
    return int(trace_id, 16), int(span_id, 16), int(flags, 16)


async def test_one_trace_id_from_the_caller_through_both_upstreams(fleet: Fleet) -> None:
    """The caller's traceparent starts one trace: gateway server span -> its client span -> the upstream's
    server span -> its client span -> what the last upstream receives, each the parent of the next."""
    async with chain(fleet) as c, httpx.AsyncClient() as caller:
        body = (await caller.get(f"{c.gateway}/api/users", headers=CALLER)).json()
        assert (body["tier"], body["next"]["tier"], body["next"]["next"]["replica"]) == (
            "api-gateway", "user-service", c.leaf.name
        )
        gateway = await wait_for_spans(c.gateway_spans, 2)
        mid = await wait_for_spans(c.mid_spans, 2)
    [gateway_server], [gateway_client] = of_kind(gateway, SpanKind.SERVER), of_kind(gateway, SpanKind.CLIENT)
    [mid_server], [mid_client] = of_kind(mid, SpanKind.SERVER), of_kind(mid, SpanKind.CLIENT)
    assert len(gateway) == len(mid) == 2
    for span in (gateway_server, gateway_client, mid_server, mid_client):
        assert span.context.trace_id == TRACE_ID
    assert parent_id(gateway_server) == CALLER_SPAN_ID and gateway_server.parent.is_remote
    assert parent_id(gateway_client) == gateway_server.context.span_id
    assert parent_id(mid_server) == gateway_client.context.span_id and mid_server.parent.is_remote
    assert parent_id(mid_client) == mid_server.context.span_id
    received = traceparent_parts(c.leaf.headers[-1]["traceparent"])
    assert received[:2] == (TRACE_ID, mid_client.context.span_id) and received[2] & 1  # sampled
    assert c.leaf.headers[-1]["tracestate"] == "vendor=abc"  # the caller's tracestate travels with the trace
    assert gateway_server.name == "GET /api/users"
    assert gateway_server.attributes["http.route"] == "/api/users"
    assert gateway_server.attributes["http.response.status_code"] == 200
    assert gateway_client.attributes["mesh.service"] == "user-service"
    assert gateway_client.attributes["url.full"] == "http://user-service/api/users?token=REDACTED"
    assert mid_client.attributes["mesh.endpoint"] == c.leaf.url


async def test_a_request_without_trace_context_starts_a_trace_at_the_gateway(fleet: Fleet) -> None:
    """No traceparent from the caller: the gateway's server span is a root, and the whole chain shares its id."""
    async with chain(fleet) as c, httpx.AsyncClient() as caller:
        assert (await caller.get(f"{c.gateway}/api/users")).status_code == 200
        gateway = await wait_for_spans(c.gateway_spans, 2)
        mid = await wait_for_spans(c.mid_spans, 2)
    [root] = of_kind(gateway, SpanKind.SERVER)
    assert root.parent is None
    assert {span.context.trace_id for span in gateway + mid} == {root.context.trace_id}
    assert traceparent_parts(c.leaf.headers[-1]["traceparent"])[0] == root.context.trace_id


async def test_with_the_fastapi_instrumentation_its_server_span_is_the_only_one(fleet: Fleet) -> None:
    """opentelemetry-instrumentation-fastapi on both services: one server span per service per request (the
    instrumentation's), the mesh's client spans its children, one trace end to end."""
    with _restoring_background_tasks():
        async with chain(fleet, instrument=True) as c, httpx.AsyncClient() as caller:
            assert (await caller.get(f"{c.gateway}/api/users", headers=CALLER)).status_code == 200
            gateway = await wait_for_spans(c.gateway_spans, 2)
            mid = await wait_for_spans(c.mid_spans, 2)
    for spans in (gateway, mid):
        [server] = of_kind(spans, SpanKind.SERVER)
        [client] = of_kind(spans, SpanKind.CLIENT)
        assert len(spans) == 2
        assert server.instrumentation_scope is not None and client.instrumentation_scope is not None
        assert server.instrumentation_scope.name == "opentelemetry.instrumentation.fastapi"
        assert client.instrumentation_scope.name == "fastapi_mesh"
        assert parent_id(client) == server.context.span_id
    assert parent_id(of_kind(gateway, SpanKind.SERVER)[0]) == CALLER_SPAN_ID
    assert parent_id(of_kind(mid, SpanKind.SERVER)[0]) == of_kind(gateway, SpanKind.CLIENT)[0].context.span_id
    assert {span.context.trace_id for span in gateway + mid} == {TRACE_ID}


async def test_without_the_middleware_calls_continue_the_inbound_trace(fleet: Fleet) -> None:
    """A route with ``Depends(get_mesh)`` and no MeshMiddleware: no server span, and the client span's
    parent is the caller's span from the inbound headers."""
    (leaf,) = await fleet.start(1)
    provider, exporter = recording_provider()
    async with serve(tier("api-gateway", "user-service", leaf.url, provider, middleware=False)) as gateway:
        async with httpx.AsyncClient() as caller:
            assert (await caller.get(f"{gateway}/api/users", headers=CALLER)).status_code == 200
        [client] = await wait_for_spans(exporter, 1)
    assert client.kind is SpanKind.CLIENT
    assert (client.context.trace_id, parent_id(client)) == (TRACE_ID, CALLER_SPAN_ID)
    assert traceparent_parts(leaf.headers[-1]["traceparent"])[:2] == (TRACE_ID, client.context.span_id)


async def test_tracing_off_makes_no_spans_and_passes_the_callers_context_on(fleet: Fleet) -> None:
    """The default (``observability.tracing: false``): nothing recorded, even with a provider passed; the
    caller's trace headers reach the last upstream unchanged, as before tracing existed."""
    async with chain(fleet, tracing=False) as c, httpx.AsyncClient() as caller:
        assert (await caller.get(f"{c.gateway}/api/users", headers=CALLER)).status_code == 200
    assert c.gateway_spans.get_finished_spans() == () and c.mid_spans.get_finished_spans() == ()
    assert c.leaf.headers[-1]["traceparent"] == CALLER["traceparent"]


async def test_tracing_on_with_no_provider_configured_still_carries_the_trace(fleet: Fleet) -> None:
    """Tracing on, no provider passed (and, unless a test elsewhere set one, none global: the API's no-op
    one): the caller's trace still reaches the upstream."""
    (leaf,) = await fleet.start(1)
    async with serve(tier("api-gateway", "user-service", leaf.url, None)) as gateway, httpx.AsyncClient() as c:
        assert (await c.get(f"{gateway}/api/users", headers=CALLER)).status_code == 200
    trace_id, _, flags = traceparent_parts(leaf.headers[-1]["traceparent"])
    assert (trace_id, flags & 1) == (TRACE_ID, 1)


async def test_an_unsampled_trace_records_nothing_but_still_propagates(fleet: Fleet) -> None:
    """A provider that samples nothing: no spans, and the upstream gets a new trace context marked not
    sampled (so its own parent-based sampler drops it too)."""
    (leaf,) = await fleet.start(1)
    provider, exporter = recording_provider(ALWAYS_OFF)
    async with serve(tier("api-gateway", "user-service", leaf.url, provider)) as gateway, httpx.AsyncClient() as c:
        assert (await c.get(f"{gateway}/api/users")).status_code == 200
    assert exporter.get_finished_spans() == ()
    trace_id, span_id, flags = traceparent_parts(leaf.headers[-1]["traceparent"])
    assert trace_id and span_id and not flags & 1


async def test_a_mesh_error_answered_503_marks_the_server_span_failed(fleet: Fleet) -> None:
    """MeshMiddleware turns a MeshError into 503; the server span says so: status, error and the exception."""
    (leaf,) = await fleet.start(1)
    provider, exporter = recording_provider()
    async with serve(tier("api-gateway", "user-service", leaf.url, provider)) as gateway, httpx.AsyncClient() as c:
        assert (await c.get(f"{gateway}/api/broken")).status_code == 503
        spans = await wait_for_spans(exporter, 2)
    [server] = of_kind(spans, SpanKind.SERVER)
    [client] = of_kind(spans, SpanKind.CLIENT)
    assert server.status.status_code is StatusCode.ERROR
    assert server.attributes["http.response.status_code"] == 503
    assert server.attributes["error.type"] == "503"
    assert [e.attributes["exception.type"] for e in server.events if e.name == "exception"] == [
        "fastapi_mesh.errors.NoHealthyEndpoints"
    ]
    assert client.attributes["error.type"] == "NoHealthyEndpoints"
    assert parent_id(client) == server.context.span_id


async def test_the_mesh_routes_are_not_traced(fleet: Fleet) -> None:
    """Probes, /metrics and /mesh/status make no spans; the service's own routes do."""
    (leaf,) = await fleet.start(1)
    provider, exporter = recording_provider()
    async with serve(tier("api-gateway", "user-service", leaf.url, provider)) as gateway, httpx.AsyncClient() as c:
        for path in ("/health/live", "/health/ready", "/metrics", "/mesh/status"):
            assert (await c.get(f"{gateway}{path}")).status_code != 404
        assert (await c.get(f"{gateway}/api/users")).status_code == 200
        spans = await wait_for_spans(exporter, 2)
    assert sorted(span.name for span in spans) == ["GET", "GET /api/users"]


@contextlib.contextmanager
def _restoring_background_tasks() -> Iterator[None]:
    """The FastAPI instrumentation wraps ``BackgroundTask.__call__`` for the whole process: undo that."""
    from starlette.background import BackgroundTask

    original = BackgroundTask.__call__
    try:
        yield
    finally:
        BackgroundTask.__call__ = original  # type: ignore[method-assign]
        if hasattr(BackgroundTask, "_otel_original_call"):
            del BackgroundTask._otel_original_call
