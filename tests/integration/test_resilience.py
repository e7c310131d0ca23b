"""Resilience against real uvicorn replicas with fault switches: the numbers the product promises."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import Depends, FastAPI

from fastapi_mesh import (
    CircuitOpen,
    DeadlineExceeded,
    ManualClock,
    Mesh,
    MeshClient,
    MeshError,
    MeshSettings,
    UpstreamUnavailable,
    get_mesh,
)
from fastapi_mesh.resilience.hedge import MIN_SAMPLES
from tests.upstreams import Fleet, settings_for, unused_port

pytestmark = pytest.mark.anyio


async def test_one_healthy_replica_of_three_serves_every_call(fleet: Fleet) -> None:
    """With one replica refusing and one answering 503, all 1,000 GETs succeed and the breaker stays closed."""
    failing, healthy = await fleet.start(2)
    failing.mode = "status"
    refused = f"http://127.0.0.1:{unused_port()}"
    settings = settings_for(
        [refused, failing.url, healthy.url],
        retry={"max_retries": 2},
        circuit_breaker={"timeout": 0.5, "failure_threshold": 5},
    )
    slowest = 0.0
    async with MeshClient(settings) as client:
        for _ in range(1000):
            start = time.perf_counter()
            response = await client.get("svc", "/api/users")
            slowest = max(slowest, time.perf_counter() - start)
            assert response.status_code == 200
        status = client.get_metrics()
        state = client.circuit_breaker("svc").state
    assert state == "closed"
    assert slowest <= 0.5 * 3  # per-attempt timeout x attempts
    ejected = {e["url"] for e in status["load_balancer"]["svc"]["endpoints"] if (e["outlier"] or {}).get("ejected")}
    assert ejected == {refused, failing.url}
    assert failing.total <= 10  # ejected after 5 failures in a row, back once (30 s later) at most


@pytest.mark.parametrize("mode", ["status", "hang", "drop", "slow", "flap"])
async def test_post_without_idempotency_key_is_delivered_at_most_once(fleet: Fleet, mode: str) -> None:
    """In every fault mode a plain POST reaches the upstreams at most once."""
    replicas = await fleet.start(3)
    for r in replicas:
        r.mode = mode
        r.delay = 1.0
    settings = settings_for([r.url for r in replicas], retry={"max_retries": 5}, circuit_breaker={"timeout": 0.2})
    async with MeshClient(settings) as client:
        for i in range(5):
            with contextlib.suppress(MeshError):
                await client.post("svc", "/api/orders", json={"order": i})
    delivered = [body for r in replicas for body in r.bodies]
    assert len(delivered) == 5
    assert sorted(delivered) == sorted({b'{"order":%d}' % i for i in range(5)})


async def test_flapping_replicas_cost_retries_not_calls(fleet: Fleet) -> None:
    """Every replica failing every other request: all GETs succeed on a retry, no endpoint is ejected (the
    failures are never consecutive) and the breaker, which sees only final outcomes, stays closed.

    Four attempts always suffice: should three fail on three replicas, the fourth goes back to one of them,
    whose next answer is good. The retry budget is raised to match the fault (about one retry per call):
    at its default 20% it would rightly refuse most of these retries."""
    replicas = await fleet.start(3)
    for r in replicas:
        r.mode = "flap"
    settings = settings_for([r.url for r in replicas], retry={"max_retries": 3, "budget_percent": 100})
    async with MeshClient(settings) as client:
        statuses = [(await client.get("svc", "/x")).status_code for _ in range(200)]
        metrics = client.get_metrics()
        state = client.circuit_breaker("svc").state
    assert statuses == [200] * 200
    assert state == "closed"
    endpoints = metrics["load_balancer"]["svc"]["endpoints"]
    assert not any((e["outlier"] or {}).get("ejected") for e in endpoints)
    received = sum(r.total for r in replicas)
    assert metrics["retry"]["svc"]["retries"] == received - 200 > 0
    assert sum(e["failures"] for e in endpoints) == received - 200


async def test_total_outage_traffic_is_bounded_by_the_retry_budget(fleet: Fleet) -> None:
    """With every replica failing and 10 retries allowed, upstreams see at most offered x 1.2 + floor."""
    replicas = await fleet.start(3)
    for r in replicas:
        r.mode = "status"
    clock = ManualClock()
    settings = settings_for(
        [r.url for r in replicas],
        retry={"max_retries": 10, "budget_percent": 20, "budget_ttl": 10, "min_retries_per_second": 1},
        circuit_breaker={"enabled": False},
        outlier_detection={"enabled": False},
    )
    offered = 300
    async with MeshClient(settings, clock=clock) as client:
        for _ in range(offered):
            assert (await client.get("svc", "/x")).status_code == 503
        refused = client.get_metrics()["retry"]["svc"]
    received = sum(r.total for r in replicas)
    floor = 1 * 10
    assert offered < received <= offered * 1.2 + floor
    assert refused["retries_exhausted"] >= offered - floor


async def test_breaker_opens_sends_nothing_half_opens_and_closes(fleet: Fleet) -> None:
    """The breaker opens within its window, sends nothing while open, half-opens after reset_timeout, closes."""
    replicas = await fleet.start(2)
    for r in replicas:
        r.mode = "status"
    clock = ManualClock()
    settings = settings_for(
        [r.url for r in replicas],
        retry={"max_retries": 0},
        circuit_breaker={
            "failure_threshold": 5,
            "failure_threshold_percentage": 50,
            "sliding_window_size": 10,
            "reset_timeout": 30,
        },
    )
    async with MeshClient(settings, clock=clock) as client:
        breaker = client.circuit_breaker("svc")
        for _ in range(5):
            assert (await client.get("svc", "/x")).status_code == 503
        assert breaker.state == "open"
        sent = sum(r.total for r in replicas)
        for _ in range(20):
            with pytest.raises(CircuitOpen, match="'svc'"):
                await client.get("svc", "/x")
        assert sum(r.total for r in replicas) == sent
        fallback = await client.get("svc", "/x", fallback={"cached": True})
        assert fallback.json() == {"cached": True}
        clock.advance(30)
        for r in replicas:
            r.mode = "ok"
        assert (await client.get("svc", "/x")).status_code == 200
        assert breaker.state == "closed"
    assert sum(r.total for r in replicas) == sent + 1


async def test_calls_to_a_hanging_upstream_end_at_their_deadline_and_count_as_failures(fleet: Fleet) -> None:
    """Against a hanging upstream, each call ends with DeadlineExceeded and counts as a failure. (That the
    timer fires at the deadline, not before, is shown on a ManualClock in tests/resilience/test_clock_timers.)"""
    (hanging,) = await fleet.start(1)
    hanging.mode = "hang"
    async with MeshClient(settings_for([hanging.url], retry={"max_retries": 3})) as client:
        for deadline in (0.05, 0.1, 0.15, 0.2):
            with pytest.raises(DeadlineExceeded):
                await client.get("svc", "/hang", deadline=deadline)
        calls, failures, _ = client.circuit_breaker("svc").window()
        endpoint = client.get_metrics()["load_balancer"]["svc"]["endpoints"][0]
    assert (calls, failures) == (4, 4)
    assert endpoint["failures"] == 4


async def test_service_bulkhead_rejects_beyond_its_limit(fleet: Fleet) -> None:
    """bulkhead.max_concurrent=2: a third concurrent call to the service is refused at once."""
    (slow,) = await fleet.start(1)
    slow.mode = "hang"
    settings = settings_for([slow.url], bulkhead={"max_concurrent": 2}, retry={"max_retries": 0})
    async with MeshClient(settings) as client:
        held = [asyncio.create_task(client.get("svc", "/hold")) for _ in range(2)]
        while slow.total < 2:
            await asyncio.sleep(0.005)
        with pytest.raises(MeshError, match="bulkhead full for service 'svc'"):
            await client.get("svc", "/x")
        assert all(not task.done() for task in held)
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        assert client.get_metrics()["bulkheads"]["svc"]["active"] == 0


async def test_route_bulkhead_saturated_by_slow_calls_leaves_other_routes_alone(fleet: Fleet) -> None:
    """While slow calls fill a route's bulkhead, more calls to it get 503 at once and other routes still answer."""
    slow, fast = await fleet.start(2)
    slow.mode = "hang"
    mesh = Mesh(
        MeshSettings(
            service_name="gw",
            discovery={"endpoints": {"slow": [slow.url], "fast": [fast.url]}},
            retry={"max_retries": 0},
        )
    )
    app = FastAPI(lifespan=mesh.lifespan)

    @app.get("/slow")
    @mesh.policy(bulkhead=2)
    async def slow_route(client: MeshClient = Depends(get_mesh)) -> Any:
        return (await client.get("slow", "/")).json()

    @app.get("/fast")
    async def fast_route(client: MeshClient = Depends(get_mesh)) -> Any:
        return (await client.get("fast", "/")).json()

    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=10) as http:
            held = [asyncio.create_task(http.get("/slow")) for _ in range(2)]
            while slow.total < 2:
                await asyncio.sleep(0.005)
            rejected = [await http.get("/slow") for _ in range(10)]
            others = [await http.get("/fast") for _ in range(10)]
            assert all(not task.done() for task in held)
            slow.release.set()
            finished = await asyncio.gather(*held)
    assert {r.status_code for r in rejected} == {503}
    assert all("retry-after" in r.headers for r in rejected)
    assert {r.status_code for r in others} == {200}
    assert {r.status_code for r in finished} == {200}
    assert slow.total == 2


async def test_outlier_is_ejected_after_consecutive_failures(fleet: Fleet) -> None:
    """A replica failing 5 times in a row is ejected and receives nothing more until its time is up."""
    bad, good = await fleet.start(2)
    bad.mode = "status"
    clock = ManualClock()
    settings = settings_for(
        [bad.url, good.url],
        retry={"max_retries": 1},
        outlier_detection={"consecutive_failures": 5, "base_ejection_time": 30},
    )
    async with MeshClient(settings, clock=clock) as client:
        for _ in range(20):
            assert (await client.get("svc", "/x")).status_code == 200
        assert bad.total == 5
        clock.advance(31)
        for _ in range(4):
            await client.get("svc", "/x")
    assert bad.total == 7  # back after 30 s: round robin gives it 2 of the next 4 calls


async def test_refused_connections_are_retried_for_posts_but_not_counted_twice(fleet: Fleet) -> None:
    """A POST fails over from a refused endpoint and is delivered exactly once."""
    (good,) = await fleet.start(1)
    settings = settings_for([f"http://127.0.0.1:{unused_port()}", good.url], retry={"max_retries": 1})
    async with MeshClient(settings) as client:
        response = await client.post("svc", "/orders", json={"n": 1})
    assert response.status_code == 200
    assert good.bodies == [b'{"n":1}']


async def test_upstream_unavailable_carries_the_last_transport_error() -> None:
    """When nothing answers, UpstreamUnavailable names the service and chains the last httpx error."""
    settings = settings_for([f"http://127.0.0.1:{unused_port()}"], retry={"max_retries": 1})
    async with MeshClient(settings) as client:
        with pytest.raises(UpstreamUnavailable, match="after 2 attempt") as info:
            await client.get("svc", "/x")
    assert isinstance(info.value.__cause__, httpx.ConnectError)


async def test_hedge_goes_to_another_endpoint_and_the_first_good_answer_wins(fleet: Fleet) -> None:
    """With hedge_delay=50ms a GET stuck on a slow replica is answered by a hedge to a fast one."""
    slow, fast = await fleet.start(2)
    slow.mode = "hang"
    seen: list[str] = []
    settings = settings_for([slow.url, fast.url], retry={"max_retries": 1, "hedge_delay": "50ms"})
    async with MeshClient(settings) as client:
        client.on("service-mesh:retry:attempt", lambda e: seen.append(e.reason))
        response = await client.get("svc", "/x")
        metrics = client.get_metrics()
        in_flight = [e["in_flight"] for e in metrics["load_balancer"]["svc"]["endpoints"]]
    assert response.json()["replica"] == fast.name
    assert (slow.total, fast.total) == (1, 1)
    assert seen == ["hedge"]
    assert metrics["retry"]["svc"]["hedges"] == 1
    assert in_flight == [0, 0]  # the losing attempt was cancelled and gave its slot back


async def test_posts_are_never_hedged(fleet: Fleet) -> None:
    """A POST without Idempotency-Key waits for its one attempt: no hedge is sent."""
    slow, fast = await fleet.start(2)
    slow.mode = "slow"
    slow.delay = 0.2
    settings = settings_for([slow.url, fast.url], retry={"max_retries": 1, "hedge_delay": "20ms"})
    async with MeshClient(settings) as client:
        response = await client.post("svc", "/orders", json={})
    assert response.json()["replica"] == slow.name
    assert fast.total == 0


async def test_p95_hedging_waits_for_enough_samples(fleet: Fleet) -> None:
    """hedge_delay="p95" hedges only once the service's latency has been observed."""
    first, second = await fleet.start(2)
    settings = settings_for([first.url, second.url], retry={"max_retries": 1, "hedge_delay": "p95"})
    async with MeshClient(settings) as client:
        first.mode = "slow"
        first.delay = 0.05
        for _ in range(MIN_SAMPLES - 1):  # p95 unknown: even the slow replica's calls are not hedged
            await client.get("svc", "/x")
        assert client.get_metrics()["retry"]["svc"]["hedges"] == 0
        assert first.total == (MIN_SAMPLES - 1 + 1) // 2
        first.mode = "ok"
        for _ in range(3):
            await client.get("svc", "/x")
        before = client.get_metrics()["retry"]["svc"]["hedges"]
        first.mode = "hang"
        responses = [await client.get("svc", "/x") for _ in range(2)]  # one of them is the hanging replica's turn
        hedges = client.get_metrics()["retry"]["svc"]["hedges"] - before
    assert {r.json()["replica"] for r in responses} == {second.name}
    assert hedges >= 1


async def test_hedges_count_as_attempts(fleet: Fleet) -> None:
    """With max_retries=1 and hedging, a call never sends more than 2 requests in all."""
    replicas = await fleet.start(3)
    for r in replicas:
        r.mode = "slow"
        r.delay = 0.2
    settings = settings_for([r.url for r in replicas], retry={"max_retries": 1, "hedge_delay": "20ms"})
    async with MeshClient(settings) as client:
        response = await client.get("svc", "/x")
    assert response.status_code == 200
    assert sum(r.total for r in replicas) == 2


async def test_max_elapsed_bounds_calls_without_arming_a_timer(fleet: Fleet) -> None:
    """retry.max_elapsed alone caps attempt timeouts and sends its budget downstream."""
    (hanging,) = await fleet.start(1)
    hanging.mode = "hang"
    settings = settings_for([hanging.url], retry={"max_retries": 5, "max_elapsed": 0.3})
    async with MeshClient(settings) as client:
        start = time.perf_counter()
        with pytest.raises(DeadlineExceeded, match="deadline passed"):
            await client.get("svc", "/x")
        elapsed = time.perf_counter() - start
        failures = client.circuit_breaker("svc").window()[1]
    assert elapsed < 0.3 + 0.05
    assert 0 < int(hanging.headers[0]["x-mesh-timeout-ms"]) <= 300
    assert failures == 1
