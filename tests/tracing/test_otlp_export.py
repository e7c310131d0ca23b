"""Spans exported over OTLP/HTTP as the standard OTEL_* variables say, to a real receiver on loopback.

The global TracerProvider can be set once per process, so each export runs in a fresh interpreter.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from fastapi_mesh.observability.tracing import configure_from_environment
from tests.upstreams import Fleet, Replica

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

EXPORT_TIMEOUT = 30.0

#: A service with tracing on and no provider passed, making one call; the SDK flushes its spans at exit.
SCRIPT = """
import asyncio, httpx
from opentelemetry import trace
from fastapi_mesh import MeshClient, MeshSettings

async def main():
    settings = MeshSettings(
        service_name="orders",
        discovery={"endpoints": {"users": ["http://10.0.0.1:8080"]}},
        observability={"tracing": True},
    )
    async with MeshClient(settings, transport=httpx.MockTransport(lambda r: httpx.Response(200))) as client:
        await client.get("users", "/api/users")
    print(type(trace.get_tracer_provider()).__name__)

asyncio.run(main())
"""

#: The application sets the global provider itself: the mesh records into it and sets nothing up.
APP_PROVIDER_SCRIPT = """
import asyncio, httpx
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from fastapi_mesh import MeshClient, MeshSettings

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
settings = MeshSettings(discovery={"endpoints": {"users": ["http://10.0.0.1:8080"]}}, observability={"tracing": True})
client = MeshClient(settings, transport=httpx.MockTransport(lambda r: httpx.Response(200)))
trace.set_tracer_provider(provider)  # after the client was built: its spans still go there

async def main():
    async with client:
        await client.get("users", "/api/users")

asyncio.run(main())
print(trace.get_tracer_provider() is provider, [span.name for span in exporter.get_finished_spans()])
"""


def exports(receiver: Replica) -> list[ExportTraceServiceRequest]:
    """What the exporter posted to ``receiver`` (a plain replica: its 200 is all the exporter checks)."""
    assert set(receiver.received) <= {("POST", "/v1/traces")}
    return [ExportTraceServiceRequest.FromString(body) for body in receiver.bodies]


async def run_service(env: dict[str, str], script: str = SCRIPT) -> str:
    """Run ``script`` with only ``env``'s OTEL_* variables; returns what it printed."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MESH_"))}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, env={**clean, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(EXPORT_TIMEOUT):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return out.decode().strip()


def attributes(values: list[KeyValue]) -> dict[str, Any]:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in values}


async def test_otlp_endpoint_variable_exports_the_client_spans(fleet: Fleet) -> None:
    """``OTEL_EXPORTER_OTLP_ENDPOINT`` set, the HTTP exporter installed, nothing else configured: the mesh
    sets up the SDK and the call's span reaches the receiver, under the mesh's service name."""
    (receiver,) = await fleet.start(1)
    printed = await run_service({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "50"})
    assert printed == "TracerProvider"
    [request] = exports(receiver)
    [resource_spans] = request.resource_spans
    assert attributes(list(resource_spans.resource.attributes))["service.name"] == "orders"
    [scope_spans] = resource_spans.scope_spans
    assert scope_spans.scope.name == "fastapi_mesh"
    [span] = scope_spans.spans
    assert span.name == "GET"
    assert attributes(list(span.attributes))["mesh.service"] == "users"


async def test_otel_service_name_wins_over_the_mesh_service_name(fleet: Fleet) -> None:
    (receiver,) = await fleet.start(1)
    await run_service(
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{receiver.url}/v1/traces", "OTEL_SERVICE_NAME": "billing"}
    )
    [request] = exports(receiver)
    assert attributes(list(request.resource_spans[0].resource.attributes))["service.name"] == "billing"


async def test_nothing_is_set_up_without_an_export_variable() -> None:
    """No OTEL_* variable asks for export: the global provider stays the API's default (no traffic)."""
    assert await run_service({}) == "ProxyTracerProvider"


async def test_a_provider_the_application_set_globally_gets_the_spans() -> None:
    """No ``tracer_provider`` passed: the global one is used, even when set after the client was built, and
    the export variables do not make the mesh replace it."""
    printed = await run_service({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}, APP_PROVIDER_SCRIPT)
    assert printed == "True ['GET']"


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"},
        {"OTEL_TRACES_EXPORTER": "none"},
    ],
    ids=["no-variables", "sdk-disabled", "exporter-none"],
)
def test_configure_from_environment_declines(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("OTEL_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert configure_from_environment("orders") is None
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
