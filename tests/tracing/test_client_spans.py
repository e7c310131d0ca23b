"""Client spans of MeshClient calls to real replicas: attributes, retries, hedges and rejections as events."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.trace import SpanKind, StatusCode

from fastapi_mesh import BulkheadFull, CircuitOpen, MeshClient, MeshSettings, UpstreamUnavailable
from fastapi_mesh.observability.tracing import (
    BREAKER_REJECTED_EVENT,
    BULKHEAD_REJECTED_EVENT,
    HEDGE_EVENT,
    RETRY_EVENT,
    RETRY_EXHAUSTED_EVENT,
    MeshTracing,
)
from tests.observability.support import poll
from tests.tracing.support import recording_provider
from tests.upstreams import Fleet, settings_for, unused_port

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


def traced(urls: list[str], **sections: Any) -> MeshSettings:
    return settings_for(urls, "user-service", observability={"tracing": True}, **sections)


def client(settings: MeshSettings, provider: TracerProvider) -> MeshClient:
    return MeshClient(settings, tracer_provider=provider)


def events(span: ReadableSpan) -> list[tuple[str, dict[str, Any]]]:
    return [(event.name, dict(event.attributes or {})) for event in span.events]


async def test_a_call_is_one_client_span_with_the_http_and_mesh_attributes(fleet: Fleet) -> None:
    """Method, logical address, URL with query values redacted, status, service, the endpoint that answered
    and the attempts; the request carries the span's context."""
    (replica,) = await fleet.start(1)
    provider, exporter = recording_provider()
    async with client(traced([replica.url]), provider) as c:
        response = await c.get("user-service", "/api/users", params={"api_key": "s3cret", "page": 2})
    assert response.status_code == 200
    [span] = exporter.get_finished_spans()
    assert (span.name, span.kind, span.status.status_code) == ("GET", SpanKind.CLIENT, StatusCode.UNSET)
    assert dict(span.attributes or {}) == {
        "http.request.method": "GET",
        "server.address": "user-service",
        "url.full": "http://user-service/api/users?api_key=REDACTED&page=REDACTED",
        "http.response.status_code": 200,
        "mesh.service": "user-service",
        "mesh.endpoint": replica.url,
        "mesh.attempts": 1,
    }
    assert "s3cret" not in str(span.to_json())
    sent = replica.headers[-1]["traceparent"]
    assert sent == f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-{span.context.trace_flags:02x}"


async def test_a_retry_is_an_event_and_the_attempts_are_counted(fleet: Fleet) -> None:
    """A 503 then a 200: one span, status 200, two attempts, one retry event naming the reason."""
    (replica,) = await fleet.start(1)
    replica.mode = "flap"  # the 1st request gets 503, the 2nd 200
    provider, exporter = recording_provider()
    async with client(traced([replica.url]), provider) as c:
        assert (await c.get("user-service", "/api/users")).status_code == 200
    [span] = exporter.get_finished_spans()
    assert span.attributes is not None and span.attributes["mesh.attempts"] == 2
    assert events(span) == [
        (RETRY_EVENT, {"mesh.attempt": 2, "mesh.retry.delay_s": 0.0, "mesh.retry.reason": "status 503"})
    ]
    assert span.status.status_code is StatusCode.UNSET
    assert [r["traceparent"] for r in replica.headers] == [replica.headers[0]["traceparent"]] * 2  # one parent


async def test_running_out_of_retries_ends_the_span_in_error(fleet: Fleet) -> None:
    """Every attempt 503: the last answer is returned, its span failed with ``error.type`` 503, each retry
    an event and the refusal of another one too."""
    (replica,) = await fleet.start(1)
    replica.mode = "status"
    provider, exporter = recording_provider()
    async with client(traced([replica.url], retry={"max_retries": 2}), provider) as c:
        assert (await c.get("user-service", "/api/users")).status_code == 503
    [span] = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert (span.attributes["error.type"], span.attributes["mesh.attempts"]) == ("503", 3)
    assert [name for name, _ in events(span)] == [RETRY_EVENT, RETRY_EVENT, RETRY_EXHAUSTED_EVENT]
    assert events(span)[-1][1] == {"mesh.attempts": 3, "mesh.retry.reason": "status 503; max_retries (2) reached"}


async def test_a_hedge_is_an_event(fleet: Fleet) -> None:
    """Both replicas slow, a 20 ms hedge delay: a second attempt is sent while the first runs."""
    replicas = await fleet.start(2)
    for replica in replicas:
        replica.mode, replica.delay = "slow", 0.2
    provider, exporter = recording_provider()
    settings = traced([r.url for r in replicas], retry={"hedge_delay": 0.02, "max_retries": 1})
    async with client(settings, provider) as c:
        assert (await c.get("user-service", "/api/users")).status_code == 200
    [span] = exporter.get_finished_spans()
    assert events(span) == [(HEDGE_EVENT, {"mesh.attempt": 2})]
    assert span.attributes is not None and span.attributes["mesh.attempts"] == 2
    assert sum(r.total for r in replicas) == 2


async def test_a_breaker_rejection_is_an_event_on_a_failed_span(fleet: Fleet) -> None:
    """An open breaker refuses the call: the span records the rejection, the error and its type."""
    (replica,) = await fleet.start(1)
    provider, exporter = recording_provider()
    async with client(traced([replica.url]), provider) as c:
        c.circuit_breaker("user-service").force_open()
        with pytest.raises(CircuitOpen):
            await c.get("user-service", "/api/users")
    [span] = exporter.get_finished_spans()
    assert replica.total == 0
    assert [name for name, _ in events(span)] == [BREAKER_REJECTED_EVENT, "exception"]
    assert events(span)[0][1] == {"mesh.circuit_breaker.state": "forced-open"}
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None and span.attributes["error.type"] == "CircuitOpen"


async def test_no_answer_at_all_fails_the_span_with_the_mesh_error(fleet: Fleet) -> None:
    """Connections refused on every attempt: UpstreamUnavailable, a retry event per retry, attempts counted."""
    provider, exporter = recording_provider()
    async with client(traced([f"http://127.0.0.1:{unused_port()}"], retry={"max_retries": 1}), provider) as c:
        with pytest.raises(UpstreamUnavailable):
            await c.get("user-service", "/api/users")
    [span] = exporter.get_finished_spans()
    assert span.attributes is not None
    assert (span.attributes["error.type"], span.attributes["mesh.attempts"]) == ("UpstreamUnavailable", 2)
    assert [name for name, _ in events(span)] == [RETRY_EVENT, RETRY_EXHAUSTED_EVENT, "exception"]
    assert "http.response.status_code" not in span.attributes


async def test_a_streamed_call_ends_its_span_when_the_body_is_closed(fleet: Fleet) -> None:
    (replica,) = await fleet.start(1)
    provider, exporter = recording_provider()
    async with client(traced([replica.url]), provider) as c:
        async with c.stream("GET", "user-service", "/api/users") as response:
            assert response.status_code == 200
            assert exporter.get_finished_spans() == ()
            await response.aread()
        [span] = exporter.get_finished_spans()
    assert span.attributes is not None and span.attributes["http.response.status_code"] == 200


async def test_each_followed_redirect_is_a_span_of_its_own(fleet: Fleet) -> None:
    """A redirect within the service, followed: two requests, two spans, both children of the current span."""
    (replica,) = await fleet.start(1)
    provider, exporter = recording_provider()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/old":
            return httpx.Response(302, headers={"location": "/new"})
        return httpx.Response(200, json={"path": request.url.path})

    settings = traced([replica.url])
    async with MeshClient(settings, transport=httpx.MockTransport(handler), tracer_provider=provider) as c:
        with provider.get_tracer("test").start_as_current_span("handler") as outer:
            response = await c.get("user-service", "/old", follow_redirects=True)
    assert response.json() == {"path": "/new"}
    first, second, _ = exporter.get_finished_spans()
    assert [s.attributes["http.response.status_code"] for s in (first, second) if s.attributes] == [302, 200]
    assert [s.parent.span_id for s in (first, second) if s.parent] == [outer.get_span_context().span_id] * 2
    assert first.context.span_id != second.context.span_id


async def test_a_full_bulkhead_is_an_event_on_a_failed_span(fleet: Fleet) -> None:
    """One call in flight fills a bulkhead of one: the second call's span records the rejection."""
    (replica,) = await fleet.start(1)
    replica.mode = "hang"
    provider, exporter = recording_provider()
    async with client(traced([replica.url], bulkhead={"max_concurrent": 1}), provider) as c:
        first = asyncio.ensure_future(c.get("user-service", "/api/users"))
        await poll(lambda: replica.total == 1, interval=0.005)
        with pytest.raises(BulkheadFull):
            await c.get("user-service", "/api/users")
        replica.release.set()
        assert (await first).status_code == 200
    rejected, answered = exporter.get_finished_spans()
    assert [name for name, _ in events(rejected)] == [BULKHEAD_REJECTED_EVENT, "exception"]
    assert rejected.attributes is not None and rejected.attributes["error.type"] == "BulkheadFull"
    assert answered.attributes is not None and answered.attributes["http.response.status_code"] == 200


def test_a_method_the_conventions_do_not_know_is_other() -> None:
    provider, _ = recording_provider()
    name, attributes = MeshTracing(provider).client_start("PURGE", "cache", httpx.URL("http://cache:8080/x"))
    assert name == "HTTP"
    assert dict(attributes) == {
        "http.request.method": "_OTHER",
        "http.request.method_original": "PURGE",
        "server.address": "cache",
        "server.port": 8080,
        "url.full": "http://cache:8080/x",
        "mesh.service": "cache",
    }
