"""Retries, hedges, breaker and bulkhead at their edges: limits that hold, and outcomes that are not hidden."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from fastapi_mesh import DeadlineExceeded, ManualClock, MeshClient, MeshSettings, UpstreamUnavailable
from fastapi_mesh.resilience.breaker import CircuitBreaker
from fastapi_mesh.settings import CircuitBreakerConfig

pytestmark = pytest.mark.anyio

WAIT = 5.0  # bound on every wait

THREE = ["http://10.0.0.1:1", "http://10.0.0.2:1", "http://10.0.0.3:1"]


def settings(endpoints: list[str] = THREE, **sections: Any) -> MeshSettings:
    retry = {"initial_delay": 0, "jitter": "none", **sections.pop("retry", {})}
    return MeshSettings(discovery={"endpoints": {"svc": endpoints}}, retry=retry, **sections)


@pytest.mark.parametrize("max_retries", [0, 1])
async def test_hedges_never_exceed_max_retries(max_retries: int) -> None:
    """A call sends at most ``1 + max_retries`` requests, hedges included: with 0 nothing is hedged; with 1,
    a first attempt answered 503 at once leaves no room to hedge the slow retry."""
    sent: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.host)
        if len(sent) == 1 and max_retries:
            return httpx.Response(503)
        await asyncio.sleep(0.05)
        return httpx.Response(200)

    config = settings(retry={"max_retries": max_retries, "hedge_delay": 0.01})
    async with MeshClient(config, transport=httpx.MockTransport(handler)) as client:
        response = await client.get("svc", "/x")
        hedges = client.get_metrics()["retry"]["svc"]["hedges"]
    assert response.status_code == 200
    assert (len(sent), hedges) == (1 + max_retries, 0)


async def test_the_endpoint_that_answered_a_hedged_call_is_the_one_reported() -> None:
    """The first attempt answers after its hedge went out: request-success names the first attempt's
    endpoint, which answered, not the hedge's, which was picked last."""

    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.05 if request.url.host == "10.0.0.1" else WAIT)
        return httpx.Response(200, json={"host": request.url.host})

    events: list[str | None] = []
    config = settings(THREE[:2], retry={"max_retries": 1, "hedge_delay": 0.01})
    async with MeshClient(config, transport=httpx.MockTransport(handler)) as client:
        client.on("request-success", lambda e: events.append(e.endpoint))
        response = await client.get("svc", "/x")  # round robin: 10.0.0.1 first, then the hedge to .2
        hedges = client.get_metrics()["retry"]["svc"]["hedges"]
    assert (response.json(), hedges) == ({"host": "10.0.0.1"}, 1)
    assert events == ["http://10.0.0.1:1"]


async def test_a_retry_that_cannot_be_sent_leaves_the_earlier_answer_standing() -> None:
    """Attempt 1 gets a 503, then discovery empties the service: the retry finds no endpoint, and the
    call returns the 503 (an attempt got an answer) rather than NoHealthyEndpoints."""
    holder: list[MeshClient] = []

    def handler(request: httpx.Request) -> httpx.Response:
        holder[0]._rt.services.publish("svc", [])
        return httpx.Response(503, text="busy")

    async with MeshClient(settings(retry={"max_retries": 2}), transport=httpx.MockTransport(handler)) as client:
        holder.append(client)
        response = await client.get("svc", "/x")
    assert (response.status_code, response.text) == (503, "busy")


async def test_a_retry_that_cannot_be_sent_leaves_the_earlier_failure_standing() -> None:
    """Attempt 1 is refused, then discovery empties the service: UpstreamUnavailable, chained to the
    refusal, rises (what really went wrong), and the breaker counts it."""
    holder: list[MeshClient] = []

    def handler(request: httpx.Request) -> httpx.Response:
        holder[0]._rt.services.publish("svc", [])
        raise httpx.ConnectError("refused")

    async with MeshClient(settings(retry={"max_retries": 2}), transport=httpx.MockTransport(handler)) as client:
        holder.append(client)
        with pytest.raises(UpstreamUnavailable, match="ConnectError after 1 attempt") as caught:
            await client.get("svc", "/x")
        window = client.circuit_breaker("svc").window()
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert window == (1, 1, 0)


async def test_an_earlier_answer_stands_when_a_later_attempt_gets_none() -> None:
    """503, then a refused retry with no retries left: the 503 is returned, as httpx would return it."""
    answers = iter([httpx.Response(503, text="first")])

    def handler(request: httpx.Request) -> httpx.Response:
        answer = next(answers, None)
        if answer is None:
            raise httpx.ConnectError("refused")
        return answer

    async with MeshClient(settings(retry={"max_retries": 1}), transport=httpx.MockTransport(handler)) as client:
        response = await client.get("svc", "/x")
    assert (response.status_code, response.text) == (503, "first")


async def test_a_deadline_spent_in_the_bulkhead_queue_is_not_the_services_failure() -> None:
    """A call whose deadline passes while it waits for a bulkhead slot never reaches the service: it gets
    DeadlineExceeded, and the breaker records nothing for it."""
    clock = ManualClock()
    release = asyncio.Event()
    sent: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        await asyncio.wait_for(release.wait(), WAIT)
        return httpx.Response(200)

    config = settings(retry={"max_elapsed": 1.0}, bulkhead={"max_concurrent": 1, "max_queue": 1})
    async with MeshClient(config, transport=httpx.MockTransport(handler), clock=clock) as client:
        first = asyncio.create_task(client.get("svc", "/first"))
        queued = asyncio.create_task(client.get("svc", "/queued"))
        await asyncio.sleep(0.01)
        clock.advance(2.0)  # the queued call's deadline passes while it waits: its timer fires
        release.set()
        assert (await first).status_code == 200
        with pytest.raises(DeadlineExceeded, match="in the bulkhead queue"):
            await queued
        window = client.circuit_breaker("svc").window()
    assert sent == ["/first"]
    assert window == (1, 0, 0)


async def test_a_queued_call_waits_no_longer_than_its_deadline() -> None:
    """``retry.max_elapsed`` arms no timer, yet a call queued behind a full bulkhead gives up at its
    deadline (with DeadlineExceeded), not at the much longer ``queue_timeout``."""
    release = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.wait_for(release.wait(), WAIT)
        return httpx.Response(200)

    config = settings(
        retry={"max_elapsed": 0.1}, bulkhead={"max_concurrent": 1, "max_queue": 1, "queue_timeout": 30}
    )
    async with MeshClient(config, transport=httpx.MockTransport(handler)) as client:
        first = asyncio.create_task(client.get("svc", "/first"))
        await asyncio.sleep(0.01)
        start = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="bulkhead queue"):
            await client.get("svc", "/queued")
        waited = time.monotonic() - start
        release.set()
        await first
        counts = client.get_metrics()["bulkheads"]["svc"]
    assert waited < WAIT  # well before the 30 s queue timeout
    assert (counts["active"], counts["queued"]) == (0, 0)


def test_a_time_window_breaker_opens_when_old_successes_leave_the_window() -> None:
    """Time window: 10 successes, then 3 failures (23%); once the successes age out, the next call,
    a success, leaves 3 of 4 failed (75%) and the breaker opens."""
    clock = ManualClock()
    config = CircuitBreakerConfig(
        sliding_window_type="time", sliding_window_size=10, failure_threshold=3, failure_threshold_percentage=50
    )
    breaker = CircuitBreaker("svc", config, clock)
    for _ in range(10):
        breaker.acquire()
        breaker.record_success(0.01)
    clock.advance(5)
    for _ in range(3):
        breaker.acquire()
        breaker.record_failure(0.01)
    assert breaker.state == "closed"
    clock.advance(5.5)
    breaker.acquire()
    breaker.record_success(0.01)
    assert breaker.state == "open"


def test_status_reads_the_breaker_state_as_it_is_now() -> None:
    """After the open period, the status snapshot says half-open, as the state and the gauge do."""
    clock = ManualClock()
    breaker = CircuitBreaker("svc", CircuitBreakerConfig(failure_threshold=1, reset_timeout=5), clock)
    breaker.acquire()
    breaker.record_failure(0.01)
    assert breaker.as_dict()["state"] == "open"
    clock.advance(6)
    assert breaker.as_dict()["state"] == "half-open"


async def test_followed_redirects_start_over_within_the_service_and_stop_at_its_edge() -> None:
    """Each followed hop gets the full retries; a redirect to another host is returned unfollowed (the
    mesh can only send to the service's endpoints), with its next_request."""
    sent: list[tuple[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append((request.url.host, request.url.path))
        path = request.url.path
        if path == "/a":
            return httpx.Response(307, headers={"location": "/b"})
        if path == "/b":
            raise httpx.ConnectError("refused")
        if path == "/away":
            return httpx.Response(302, headers={"location": "https://login.example/start"})
        return httpx.Response(200)

    async with MeshClient(settings(retry={"max_retries": 2}), transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(UpstreamUnavailable, match="after 3 attempt"):
            await client.get("svc", "/a", follow_redirects=True)
        away = await client.get("svc", "/away", follow_redirects=True)
    assert [path for _, path in sent[:4]] == ["/a", "/b", "/b", "/b"]
    assert away.status_code == 302
    assert away.next_request is not None and away.next_request.url.host == "login.example"
    assert all(host != "login.example" for host, _ in sent)
