"""Events: the full set emitted by real calls, the decorator form, aliases, and handlers that fail, lag or
pile up never touching the request."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from fastapi_mesh import ManualClock, Mesh, MeshClient, MeshSettings
from fastapi_mesh.events import (
    ALIASES,
    EVENTS,
    BulkheadRejected,
    EndpointsChanged,
    EventBus,
    FallbackUsed,
    RequestEvent,
)
from fastapi_mesh.resilience.breaker import BreakerStateChange
from fastapi_mesh.resilience.outlier import EndpointEjection
from tests.apps import serve
from tests.observability.support import poll
from tests.upstreams import Fleet, settings_for

pytestmark = pytest.mark.anyio


class Recorder:
    """Subscribes to every event of ``client`` and keeps ``(name, event)`` in order."""

    def __init__(self, client: MeshClient) -> None:
        self.seen: list[tuple[str, Any]] = []
        for name in sorted(EVENTS):
            client.on(name, lambda event, name=name: self.seen.append((name, event)))

    def named(self, name: str) -> list[Any]:
        name = ALIASES.get(name, name)  # an older name is the same event
        return [event for seen, event in self.seen if seen == name]


async def test_a_failing_upstream_emits_the_whole_event_set(fleet: Fleet) -> None:
    """Two replicas answering 503: retries, a request failure, an ejection, the breaker opening, a fallback
    answering; then a new endpoint set from discovery, and after the open period the breaker half-opening
    and closing on a good call, the ejected endpoint restored; then a full bulkhead rejecting a call."""
    first, second, third = await fleet.start(3)
    first.mode = second.mode = "status"
    clock = ManualClock()
    settings = settings_for(
        [first.url, second.url],
        retry={"max_retries": 1},
        circuit_breaker={"failure_threshold": 2, "reset_timeout": 5, "half_open_max_calls": 1},
        outlier_detection={"consecutive_failures": 1, "max_ejection_percent": 50, "base_ejection_time": 5},
        bulkhead={"max_concurrent": 1},
    )
    client = MeshClient(settings, clock=clock)
    events = Recorder(client)
    async with client:
        assert (await client.get("svc", "/")).status_code == 503  # two attempts: retried, then max-reached
        assert (await client.get("svc", "/", fallback={"cached": True})).json() == {"cached": True}
        assert client.circuit_breaker("svc").state == "open"
        client.discovery.set_endpoints("svc", [first.url, second.url, third.url])  # type: ignore[attr-defined]
        first.mode = second.mode = "ok"
        clock.advance(5.0)
        for _ in range(3):
            assert (await client.get("svc", "/")).status_code == 200  # a probe, then the breaker is closed
        for replica in (first, second, third):
            replica.mode = "hang"
        held = asyncio.create_task(client.get("svc", "/"))
        await poll(lambda: client.get_metrics()["bulkheads"]["svc"]["active"] == 1)
        with pytest.raises(Exception, match="limit 1"):
            await client.get("svc", "/")
        for replica in (first, second, third):
            replica.release.set()
        await held
    assert {name for name, _ in events.seen} == EVENTS
    retry = events.named("service-mesh:retry:attempt")[0]
    assert (retry.attempt, retry.reason) == (2, "status 503")
    assert events.named("service-mesh:retry:max-reached")[0].attempt == 2
    failure = events.named("request-failure")[0]
    assert isinstance(failure, RequestEvent) and (failure.status_code, failure.attempts) == (503, 2)
    ejected = events.named("endpoint:ejected")[0]
    assert isinstance(ejected, EndpointEjection) and ejected.endpoint == first.url
    assert [e.endpoint for e in events.named("endpoint:restored")] == [first.url]
    opened = events.named("circuit-breaker:open")
    assert isinstance(opened[0], BreakerStateChange)
    assert [(e.from_state, e.to_state) for e in opened] == [("closed", "open")]
    assert [e.from_state for e in events.named("circuit-breaker:half-open")] == ["open"]
    assert [e.from_state for e in events.named("circuit-breaker:closed")] == ["half-open"]
    assert len(events.named("circuit-breaker:state-change")) == 3
    fallback = events.named("fallback:used")[0]
    assert isinstance(fallback, FallbackUsed) and (fallback.service, fallback.route, fallback.status_code) == (
        "svc",
        None,
        503,
    )
    changed = events.named("discovery:changed")[-1]
    assert isinstance(changed, EndpointsChanged) and changed.endpoints == (first.url, second.url, third.url)
    rejected = events.named("bulkhead:rejected")[0]
    assert isinstance(rejected, BulkheadRejected)
    assert (rejected.service, rejected.route, rejected.limit, rejected.active) == ("svc", None, 1, 1)


async def test_endpoint_restored_when_the_ejection_ends() -> None:
    """An ejected endpoint's return emits endpoint:restored (the seed-era outlier:returned alias too)."""
    clock = ManualClock()
    answers = {"http://10.0.0.1:8080": 500, "http://10.0.0.2:8080": 200}
    settings = MeshSettings(
        discovery={"endpoints": {"svc": list(answers)}},
        retry={"max_retries": 0},
        circuit_breaker={"enabled": False},
        outlier_detection={"consecutive_failures": 1, "base_ejection_time": 5},
        load_balancer={"strategy": "round-robin"},
    )
    transport = httpx.MockTransport(lambda r: httpx.Response(answers[f"http://{r.url.host}:{r.url.port}"]))
    client = MeshClient(settings, transport=transport, clock=clock)
    restored: list[EndpointEjection] = []
    old_name: list[EndpointEjection] = []
    client.on("endpoint:restored", restored.append)
    client.on("outlier:returned", old_name.append)
    async with client:
        for _ in range(2):
            await client.get("svc", "/")
        clock.advance(6.0)
        for _ in range(2):
            await client.get("svc", "/")
    assert [e.endpoint for e in restored] == ["http://10.0.0.1:8080"] and restored == old_name


async def test_route_events_name_the_route_template() -> None:
    """A route's bulkhead rejection and a route's fallback say which route (its template) and service."""
    mesh = Mesh(
        MeshSettings(service_name="gw", discovery={"endpoints": {"users": ["http://10.0.0.1:80"]}}),
        transport=httpx.MockTransport(lambda r: httpx.Response(503)),
    )
    app = FastAPI(lifespan=mesh.lifespan)
    gate = asyncio.Event()
    rejected: list[BulkheadRejected] = []
    fallbacks: list[FallbackUsed] = []

    @mesh.on("bulkhead:rejected")
    def on_rejected(event: BulkheadRejected) -> None:
        rejected.append(event)

    mesh.on("fallback:used", fallbacks.append)

    @app.get("/held/{n}")
    @mesh.policy(bulkhead=1)
    async def held(n: int) -> int:
        await gate.wait()
        return n

    @app.get("/users/{user_id}")
    @mesh.policy(fallback=lambda: {"users": []})
    async def users(user_id: int) -> Any:
        response = await mesh.client.get("users", "/")
        response.raise_for_status()
        return response.json()

    async with serve(app) as http:
        first = asyncio.create_task(http.get("/held/1"))
        await poll(lambda: mesh.status()["routes"]["/held/{n}"]["bulkhead"]["active"] == 1)
        assert (await http.get("/held/2")).status_code == 503
        gate.set()
        await first
        assert (await http.get("/users/7")).json() == {"users": []}
    assert [(e.service, e.route, e.limit) for e in rejected] == [("gw", "/held/{n}", 1)]
    assert [(e.service, e.route, e.status_code) for e in fallbacks] == [("users", "/users/{user_id}", 503)]
    assert on_rejected.__name__ == "on_rejected"  # the decorator hands the function back


async def test_decorator_form_and_unsubscribing_on_mesh_and_client() -> None:
    """``@mesh.on(name)`` and ``@client.on(name)`` subscribe and return the function; ``off`` (or the
    function ``on(name, handler)`` returns) unsubscribes; an unknown name is refused with the list."""
    mesh = Mesh(
        MeshSettings(discovery={"endpoints": {"users": ["http://10.0.0.1:80"]}}),
        transport=httpx.MockTransport(lambda r: httpx.Response(200)),
    )
    seen: list[str] = []

    @mesh.on("request-success")
    async def by_mesh(event: RequestEvent) -> None:
        seen.append("mesh")

    @mesh.client.on("request-success")
    def by_client(event: RequestEvent) -> None:
        seen.append("client")

    off = mesh.on("request-success", lambda event: seen.append("lambda"))
    async with mesh.client:
        await mesh.client.get("users", "/")
        await poll(lambda: "mesh" in seen)
        mesh.off("request-success", by_mesh)
        mesh.client.off("request-success", by_client)
        off()
        await mesh.client.get("users", "/")
    assert sorted(seen) == ["client", "lambda", "mesh"]
    assert not mesh.client._rt.events.wants("request-success")
    with pytest.raises(ValueError, match="circuit-breaker:open"):
        mesh.on("request-sucess", print)


def test_aliases_are_the_same_event() -> None:
    """A handler on an older name gets events emitted under the current one, and the other way round."""
    bus = EventBus()
    seen: list[tuple[str, str]] = []
    for old, new in ALIASES.items():
        bus.on(old, lambda e, old=old: seen.append(("old", old)))
        bus.on(new, lambda e, new=new: seen.append(("new", new)))
    for old, new in ALIASES.items():
        bus.emit(new, None)
        bus.emit(old, None)
    assert len(seen) == 4 * len(ALIASES)
    assert set(ALIASES.values()) <= EVENTS and not set(ALIASES) & EVENTS


async def test_a_raising_handler_is_logged_once_and_never_fails_the_call(caplog: pytest.LogCaptureFixture) -> None:
    """A sync and an async handler that raise on every call: all 5 calls succeed, each handler's failure is
    logged once at ERROR (later ones only at DEBUG)."""
    client = MeshClient(
        MeshSettings(discovery={"endpoints": {"users": ["http://10.0.0.1:80"]}}),
        transport=httpx.MockTransport(lambda r: httpx.Response(200)),
    )
    calls: list[str] = []

    def broken(event: Any) -> None:
        calls.append("sync")
        raise RuntimeError("sync handler bug")

    async def broken_async(event: Any) -> None:
        calls.append("async")
        raise RuntimeError("async handler bug")

    client.on("request-success", broken)
    client.on("request-success", broken_async)
    caplog.set_level(logging.DEBUG, logger="fastapi_mesh.events")
    async with client:
        for _ in range(5):
            assert (await client.get("users", "/")).status_code == 200
        await poll(lambda: calls.count("async") == 5)
        await poll(lambda: client._rt.events.pending == 0)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert sorted(r.getMessage().split(" for ")[0] for r in errors) == [
        "event handler test_a_raising_handler_is_logged_once_and_never_fails_the_call.<locals>.broken",
        "event handler test_a_raising_handler_is_logged_once_and_never_fails_the_call.<locals>.broken_async",
    ]
    assert len([r for r in caplog.records if r.levelno == logging.DEBUG and "failed again" in r.getMessage()]) == 8


async def test_slow_handlers_are_bounded_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """An async handler that never finishes: at most ``max_pending`` of its tasks wait, the rest of the
    events are dropped (counted, logged once), and the calls are not held up. A slow sync handler (slow by
    the bus's timer) is logged once."""
    client = MeshClient(
        MeshSettings(discovery={"endpoints": {"users": ["http://10.0.0.1:80"]}}),
        transport=httpx.MockTransport(lambda r: httpx.Response(200)),
    )
    bus = client._rt.events
    bus.max_pending = 10
    now = 0.0
    bus.timer = lambda: now
    never = asyncio.Event()
    slow_sync_calls = 0

    async def stuck(event: Any) -> None:
        await never.wait()

    def sluggish(event: Any) -> None:
        nonlocal slow_sync_calls, now
        slow_sync_calls += 1
        if slow_sync_calls <= 2:
            now += 0.11  # past SLOW_HANDLER

    client.on("request-success", stuck)
    client.on("request-failure", sluggish)
    caplog.set_level(logging.WARNING, logger="fastapi_mesh.events")
    async with client:
        async with asyncio.timeout(5):  # a call waiting for its handlers would wait forever
            for _ in range(50):
                await client.get("users", "/")
        assert (bus.pending, bus.dropped) == (10, 40)
        for _ in range(3):
            bus.emit("request-failure", None)
        never.set()
        await poll(lambda: bus.pending == 0)
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "not handed to async handler" in m and "10 handler tasks" in m]) == 1
    assert len([m for m in messages if "sluggish" in m and "took" in m]) == 1


def test_nothing_is_built_when_nobody_listens() -> None:
    """With no subscriber, layers check ``wants`` and emit nothing (no event object is made)."""

    class Counting(EventBus):
        __slots__ = ()
        emitted = 0

        def emit(self, name: str, event: Any) -> None:
            Counting.emitted += 1
            super().emit(name, event)

    async def run() -> None:
        clock = ManualClock()
        settings = MeshSettings(
            discovery={"endpoints": {"svc": ["http://10.0.0.1:80", "http://10.0.0.2:80"]}},
            retry={"max_retries": 1},
            circuit_breaker={"failure_threshold": 2},
            outlier_detection={"consecutive_failures": 1},
        )
        client = MeshClient(settings, transport=httpx.MockTransport(lambda r: httpx.Response(503)), clock=clock)
        client._rt.events.__class__ = Counting
        async with client:
            for _ in range(4):
                await client.get("svc", "/", fallback=None)
        assert client.circuit_breaker("svc").state == "open"

    asyncio.run(run())
    assert Counting.emitted == 0
