"""Timers run on the mesh's clock: with a ``ManualClock``, the deadline layer, a call queued in the bulkhead
for its deadline, ``hedged``'s delay, a route's timeout and the wait for discovery's first sync fire exactly
when the clock reaches them, not before."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI

from fastapi_mesh import (
    BulkheadFull,
    DeadlineExceeded,
    Endpoint,
    ManualClock,
    Mesh,
    MeshClient,
    MeshSettings,
    NoHealthyEndpoints,
    get_mesh,
)
from fastapi_mesh.events import EventBus
from fastapi_mesh.layers.deadline import DEADLINE_GRACE
from fastapi_mesh.layers.hedge import hedged
from fastapi_mesh.services import Services
from tests import apps

pytestmark = pytest.mark.anyio

WAIT = 5.0  # bound on every real wait


async def turns(n: int = 10) -> None:
    """Let the loop run ``n`` times round: long enough for a due timer to cancel what it guards."""
    for _ in range(n):
        await asyncio.sleep(0)


def settings(**sections: Any) -> MeshSettings:
    sections.setdefault("retry", {"max_retries": 0})
    return MeshSettings(discovery={"endpoints": {"svc": ["http://10.0.0.1:1"]}}, **sections)


def holding(release: asyncio.Event, sent: list[str]) -> httpx.MockTransport:
    """An upstream that answers 200 once ``release`` is set (within ``WAIT`` real seconds)."""

    async def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        await asyncio.wait_for(release.wait(), WAIT)
        return httpx.Response(200)

    return httpx.MockTransport(handler)


async def test_call_deadline_fires_on_the_clock_at_deadline_plus_grace() -> None:
    """A call's deadline timer fires at deadline + DEADLINE_GRACE on the clock, not before, as a failure."""
    clock = ManualClock()
    sent: list[str] = []
    async with MeshClient(settings(), transport=holding(asyncio.Event(), sent), clock=clock) as client:
        call = asyncio.create_task(client.get("svc", "/x", deadline=1.0))
        await turns()
        assert clock.timers[0] == pytest.approx(1.0 + DEADLINE_GRACE)
        clock.advance(1.0)
        await turns()
        assert not call.done()
        clock.advance(DEADLINE_GRACE)
        await turns()
        assert call.done()
        with pytest.raises(DeadlineExceeded, match="budget spent after 1 attempt"):
            await call
        window = client.circuit_breaker("svc").window()
    assert sent == ["/x"]
    assert window[:2] == (1, 1)  # the attempt it cut short counts as the service's failure


async def test_call_that_ends_before_its_deadline_leaves_no_timer() -> None:
    """A call answered in time leaves no timer armed."""
    clock = ManualClock()
    release = asyncio.Event()
    release.set()
    async with MeshClient(settings(), transport=holding(release, []), clock=clock) as client:
        response = await client.get("svc", "/x", deadline=1.0)
    assert response.status_code == 200
    assert clock.timers == []


async def test_queued_call_gives_up_when_the_clock_reaches_its_deadline() -> None:
    """A call queued in the bulkhead gives up exactly at its deadline, never reaching the service."""
    clock = ManualClock()
    release = asyncio.Event()
    sent: list[str] = []
    config = settings(bulkhead={"max_concurrent": 1, "max_queue": 1, "queue_timeout": 60})
    async with MeshClient(config, transport=holding(release, sent), clock=clock) as client:
        first = asyncio.create_task(client.get("svc", "/first"))
        await turns()
        queued = asyncio.create_task(client.get("svc", "/queued", deadline=1.0))
        await turns()
        clock.advance(0.75)
        await turns()
        assert not queued.done()
        clock.advance(0.25)
        await turns()
        assert queued.done()
        with pytest.raises(DeadlineExceeded, match="in the bulkhead queue"):
            await queued
        assert client.get_metrics()["bulkheads"]["svc"]["queued"] == 0
        release.set()
        assert (await asyncio.wait_for(first, WAIT)).status_code == 200
        window = client.circuit_breaker("svc").window()
    assert sent == ["/first"]
    assert window[:2] == (1, 0)


async def test_queued_call_is_refused_when_the_clock_reaches_the_queue_timeout() -> None:
    """Without a deadline, a queued call waits ``queue_timeout`` on the client's clock, then BulkheadFull."""
    clock = ManualClock()
    release = asyncio.Event()
    sent: list[str] = []
    config = settings(retry={"max_retries": 0, "max_elapsed": None})
    config = config.model_copy(
        update={
            "bulkhead": config.bulkhead.model_copy(update={"max_concurrent": 1, "max_queue": 1, "queue_timeout": 2.0})
        }
    )
    async with MeshClient(config, transport=holding(release, sent), clock=clock) as client:
        first = asyncio.create_task(client.get("svc", "/first"))
        await turns()
        queued = asyncio.create_task(client.get("svc", "/queued"))
        await turns()
        clock.advance(1.5)
        await turns()
        assert not queued.done()
        clock.advance(0.5)
        await turns()
        assert queued.done()  # at once: no real time has to pass
        with pytest.raises(BulkheadFull, match=r"queue timeout of 2\.0s"):
            await asyncio.wait_for(queued, WAIT)
        release.set()
        assert (await asyncio.wait_for(first, WAIT)).status_code == 200
    assert sent == ["/first"]


async def test_the_stacks_hedge_goes_out_when_the_clients_clock_reaches_the_hedge_delay() -> None:
    """Through the whole stack, a hedge is sent when the client's clock reaches ``retry.hedge_delay``."""
    clock = ManualClock()
    release = asyncio.Event()
    sent: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.host)
        if len(sent) == 1:
            await asyncio.wait_for(release.wait(), WAIT)
        return httpx.Response(200, text=request.url.host)

    config = MeshSettings(
        discovery={"endpoints": {"svc": ["http://10.0.0.1:1", "http://10.0.0.2:1"]}},
        retry={"max_retries": 1, "hedge_delay": 0.5, "max_elapsed": None},
        load_balancer={"strategy": "round-robin"},
    )
    async with MeshClient(config, transport=httpx.MockTransport(handler), clock=clock) as client:
        call = asyncio.create_task(client.get("svc", "/"))
        await turns()
        clock.advance(0.4)
        await turns()
        assert len(sent) == 1
        clock.advance(0.1)
        await turns()
        assert len(sent) == 2  # at once: no real time has to pass
        response = await asyncio.wait_for(call, WAIT)
        release.set()
    assert len(sent) == 2 and response.text == sent[1] != sent[0]


async def test_hedge_is_sent_when_the_clock_reaches_the_hedge_delay() -> None:
    """``hedged`` sends the hedge when the clock reaches the delay, not before."""
    clock = ManualClock()
    release = asyncio.Event()
    started: list[str] = []

    async def attempt(request: httpx.Request) -> httpx.Response:
        name = "hedge" if started else "first"
        started.append(name)
        if name == "first":
            await asyncio.wait_for(release.wait(), WAIT)
        return httpx.Response(200, text=name)

    call = asyncio.create_task(
        hedged(attempt, httpx.Request("GET", "http://svc/"), 0.5, lambda: True, lambda r: True, clock=clock)
    )
    await turns()
    clock.advance(0.25)
    await turns()
    assert started == ["first"]
    clock.advance(0.25)
    await turns()
    response = await asyncio.wait_for(call, WAIT)
    assert (started, response.text) == (["first", "hedge"], "hedge")


async def test_attempt_that_answers_before_the_hedge_delay_is_not_hedged() -> None:
    """An attempt answered before the delay is not hedged, and its timer is disarmed."""
    clock = ManualClock()
    release = asyncio.Event()
    started: list[str] = []

    async def attempt(request: httpx.Request) -> httpx.Response:
        started.append(request.url.path)
        await asyncio.wait_for(release.wait(), WAIT)
        return httpx.Response(200)

    call = asyncio.create_task(
        hedged(attempt, httpx.Request("GET", "http://svc/"), 0.5, lambda: True, lambda r: True, clock=clock)
    )
    await turns()
    clock.advance(0.25)
    release.set()
    assert (await asyncio.wait_for(call, WAIT)).status_code == 200
    clock.advance(1.0)
    await turns()
    assert started == ["/"]
    assert clock.timers == []


async def test_route_timeout_fires_on_the_clock() -> None:
    """A route's ``timeout`` fires when the clock reaches it, not before: 504."""
    clock = ManualClock()
    release = asyncio.Event()
    mesh = Mesh(MeshSettings(service_name="gw"), clock=clock)
    app = FastAPI(lifespan=mesh.lifespan)

    @app.get("/slow")
    @mesh.policy(timeout=2)
    async def slow(client: MeshClient = Depends(get_mesh)) -> Any:
        await asyncio.wait_for(release.wait(), WAIT)
        return {"late": True}

    async with apps.serve(app, raise_app_exceptions=False) as http:
        call = asyncio.create_task(http.get("/slow"))
        await turns(50)
        assert clock.timers == [2.0]
        clock.advance(1.75)
        await turns()
        assert not call.done()
        clock.advance(0.25)
        response = await asyncio.wait_for(call, WAIT)
    assert response.status_code == 504
    assert "deadline" in response.text


async def test_wait_for_first_sync_gives_up_when_the_clock_reaches_initial_sync_timeout() -> None:
    """The wait for a first sync gives up at ``initial_sync_timeout`` on the clock."""
    clock = ManualClock()
    config = MeshSettings(discovery={"initial_sync_timeout": 2.0})
    services = Services(config, random.Random(0), clock, EventBus(), wait_for_sync=True)
    state = services.get("svc")
    waiting = asyncio.create_task(services.wait_for_first_sync(state, None))
    await turns()
    assert clock.timers == [2.0]
    clock.advance(1.75)
    await turns()
    assert not waiting.done()
    clock.advance(0.25)
    await turns()
    with pytest.raises(NoHealthyEndpoints, match="waited 2s"):
        await asyncio.wait_for(waiting, WAIT)


async def test_wait_for_first_sync_never_outlasts_the_calls_deadline() -> None:
    """The wait for a first sync is bounded by the call's deadline and ends when the sync comes."""
    clock = ManualClock()
    config = MeshSettings(discovery={"initial_sync_timeout": 2.0})
    services = Services(config, random.Random(0), clock, EventBus(), wait_for_sync=True)
    state = services.get("svc")
    waiting = asyncio.create_task(services.wait_for_first_sync(state, 0.5))
    await turns()
    assert clock.timers == [0.5]
    services.publish("svc", [Endpoint("http://10.0.0.1:1")])
    await asyncio.wait_for(waiting, WAIT)
    assert clock.timers == []
