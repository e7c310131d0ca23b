"""Backoff sequences and the hedging helper, exact with a seeded rng."""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest

from fastapi_mesh.layers.hedge import hedged
from fastapi_mesh.resilience.backoff import backoff_delay, parse_retry_after
from fastapi_mesh.resilience.hedge import MIN_SAMPLES, LatencyWindow
from fastapi_mesh.settings import RetryConfig


def cfg(**kw: object) -> RetryConfig:
    base: dict[str, object] = {"initial_delay": 0.5, "max_delay": 30, "jitter": "none"}
    return RetryConfig.model_validate(base | kw)


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("exponential", [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]),
        ("fibonacci", [0.5, 0.5, 1.0, 1.5, 2.5, 4.0, 6.5]),
        ("linear", [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]),
        ("fixed", [0.5] * 7),
    ],
)
def test_backoff_sequences_without_jitter(strategy: str, expected: list[float]) -> None:
    """Each strategy gives its sequence, capped at max_delay."""
    config = cfg(backoff_strategy=strategy)
    assert [backoff_delay(config, n, random.Random(1)) for n in range(1, 8)] == expected


def test_full_jitter_stays_between_zero_and_the_base() -> None:
    """Full jitter draws from [0, base]; equal jitter from [base/2, base]."""
    rng = random.Random(7)
    full = [backoff_delay(cfg(jitter="full"), 3, rng) for _ in range(500)]
    equal = [backoff_delay(cfg(jitter="equal"), 3, rng) for _ in range(500)]
    assert 0 <= min(full) < 0.2 and 1.8 < max(full) <= 2.0
    assert 1.0 <= min(equal) < 1.1 and 1.9 < max(equal) <= 2.0


def test_decorrelated_jitter_grows_from_the_previous_delay_and_is_capped() -> None:
    """Decorrelated jitter draws between the initial delay and 3x the previous, never above max_delay."""
    config = cfg(backoff_strategy="decorrelated-jitter", max_delay=5)
    rng = random.Random(3)
    previous = 0.0
    for n in range(1, 50):
        delay = backoff_delay(config, n, rng, previous)
        assert 0.5 <= delay <= min(5.0, max(0.5, (previous or 0.5) * 3))
        previous = delay
    assert previous == pytest.approx(5.0, abs=3.0)


def test_retry_after_parses_seconds_and_http_dates() -> None:
    """Retry-After as delta-seconds or as an HTTP date; garbage gives None."""
    assert parse_retry_after("7", 0) == 7.0
    assert parse_retry_after("Thu, 01 Jan 1970 00:00:10 GMT", 4.0) == 6.0
    assert parse_retry_after("soon", 0) is None
    assert parse_retry_after(None, 0) is None


def test_latency_window_p95_needs_min_samples_and_slides() -> None:
    """No p95 before MIN_SAMPLES; then the 95th percentile (not the median) of the last 128 samples:
    older ones slide out."""
    window = LatencyWindow()
    for ms in range(1, MIN_SAMPLES):
        window.add(ms / 1000)
    assert window.p95 is None
    for ms in range(MIN_SAMPLES, 113):  # 1..112 ms (p95 is recomputed every 16 samples): p95 106 ms
        window.add(ms / 1000)
    assert window.p95 == pytest.approx(0.106)  # the median would be 56 ms
    for seconds in range(1, 145):  # 1..144 s: the window keeps the last 128, 17..144 s
        window.add(float(seconds))
    assert window.p95 == pytest.approx(137.0)  # with the milliseconds still in, it would be lower


@pytest.mark.anyio
async def test_hedged_returns_the_first_good_answer_and_closes_the_other() -> None:
    """The hedge's good answer wins over a slow first attempt, which is cancelled."""
    cancelled: list[str] = []

    async def attempt(request: httpx.Request) -> httpx.Response:
        name = "hedge" if "hedge" in request.extensions else "first"
        request.extensions["hedge"] = True
        try:
            await asyncio.sleep(10 if name == "first" else 0)
        except asyncio.CancelledError:
            cancelled.append(name)
            raise
        return httpx.Response(200, text=name)

    request = httpx.Request("GET", "http://svc/")
    response = await hedged(attempt, request, 0.01, lambda: True, lambda r: r.status_code == 200)
    assert response.text == "hedge"
    assert cancelled == ["first"]


@pytest.mark.anyio
async def test_hedged_refused_by_budget_waits_for_the_first() -> None:
    """When the budget refuses the hedge, the first attempt's answer is awaited."""
    calls = 0

    async def attempt(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.03)
        return httpx.Response(200)

    response = await hedged(attempt, httpx.Request("GET", "http://svc/"), 0.005, lambda: False, lambda r: True)
    assert (response.status_code, calls) == (200, 1)


@pytest.mark.anyio
async def test_hedged_prefers_an_answer_to_an_error_and_a_good_answer_to_a_bad_one() -> None:
    """A 503 beats a transport error; when both fail, the last error is raised."""
    outcomes = iter([httpx.Response(503), httpx.ConnectError("refused")])

    async def attempt(request: httpx.Request) -> httpx.Response:
        outcome = next(outcomes)
        await asyncio.sleep(0.02 if isinstance(outcome, httpx.Response) else 0.0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    response = await hedged(attempt, httpx.Request("GET", "http://svc/"), 0.001, lambda: True, lambda r: False)
    assert response.status_code == 503

    async def failing(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.005)
        raise httpx.ReadError("gone")

    with pytest.raises(httpx.ReadError):
        await hedged(failing, httpx.Request("GET", "http://svc/"), 0.001, lambda: True, lambda r: True)


@pytest.mark.anyio
@pytest.mark.parametrize("hung", ["10.0.0.1", "10.0.0.2"])
async def test_the_call_reports_the_endpoint_of_the_attempt_that_answered(hung: str) -> None:
    """A hedge has its own context: whether the first attempt or its hedge answers, the call's event names
    the endpoint that answered, and every endpoint gives its in-flight slot back."""
    from fastapi_mesh import MeshClient, MeshSettings, RequestEvent

    async def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.host == hung:
            await asyncio.Event().wait()  # never answers: the hedge wins, and this attempt is cancelled
        return httpx.Response(200, json={"host": request.url.host})

    settings = MeshSettings(
        discovery={"endpoints": {"svc": ["http://10.0.0.1:8080", "http://10.0.0.2:8080"]}},
        retry={"max_retries": 1, "hedge_delay": "10ms", "max_elapsed": "5s"},
    )
    events: list[RequestEvent] = []
    async with MeshClient(settings, transport=httpx.MockTransport(upstream)) as client:
        client.on("request-success", events.append)
        for _ in range(2):  # round robin: the first call starts on 10.0.0.1, the second on 10.0.0.2
            response = await client.get("svc", "/x")
            assert events[-1].endpoint == f"http://{response.json()['host']}:8080"
            assert response.json()["host"] != hung
        in_flight = [e["in_flight"] for e in client.get_metrics()["load_balancer"]["svc"]["endpoints"]]
    assert [e.attempts for e in events] == ([1, 2] if hung == "10.0.0.2" else [2, 1])
    assert in_flight == [0, 0]
