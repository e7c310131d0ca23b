"""The circuit breaker's state machine and its transport layer, driven by a ManualClock."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from fastapi_mesh.clock import ManualClock
from fastapi_mesh.context import EXTENSION, CallContext
from fastapi_mesh.errors import (
    AuthorizationDenied,
    BulkheadFull,
    CircuitOpen,
    DeadlineExceeded,
    MeshError,
    NoHealthyEndpoints,
    UpstreamUnavailable,
)
from fastapi_mesh.events import CIRCUIT_STATE_CHANGE, EventBus
from fastapi_mesh.layers.breaker import CircuitBreakerTransport
from fastapi_mesh.resilience.breaker import BreakerStateChange, CircuitBreaker
from fastapi_mesh.resilience.outcome import Outcomes
from fastapi_mesh.settings import CircuitBreakerConfig


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make(clock: ManualClock, events: EventBus | None = None, **config: Any) -> CircuitBreaker:
    return CircuitBreaker("user-service", CircuitBreakerConfig(**config), clock, events)


def outcomes(config: CircuitBreakerConfig) -> Outcomes:
    """The failure rule ``config`` gives a service (no balancer behind it: attempts are not recorded)."""
    return Outcomes(config.failure_on_status, record=lambda endpoint, ok, latency: None)


def succeed(breaker: CircuitBreaker, times: int = 1, duration: float = 0.01) -> None:
    for _ in range(times):
        assert breaker.try_acquire() is True
        breaker.record_success(duration)


def fail(breaker: CircuitBreaker, times: int = 1, duration: float = 0.01) -> None:
    for _ in range(times):
        assert breaker.try_acquire() is True
        breaker.record_failure(duration)


def tripped(clock: ManualClock, events: EventBus | None = None, **config: Any) -> CircuitBreaker:
    """A breaker opened at the clock's current time by ``failure_threshold`` failures in a row."""
    breaker = make(clock, events, **config)
    fail(breaker, breaker.config.failure_threshold)
    assert breaker.state == "open"
    return breaker


class SpyBus(EventBus):
    """An EventBus that also remembers every emit() call, subscribed or not."""

    __slots__ = ("emitted",)

    def __init__(self) -> None:
        super().__init__()
        self.emitted: list[tuple[str, Any]] = []

    def emit(self, name: str, event: Any) -> None:
        self.emitted.append((name, event))
        super().emit(name, event)


# ------------------------------------------------------------------------------------------- opening


def test_volume_without_rate_does_not_open() -> None:
    """Enough failures at a failure rate below the percentage leave the breaker closed."""
    breaker = make(ManualClock(), failure_threshold=5, failure_threshold_percentage=50)
    succeed(breaker, 10)
    fail(breaker, 5)
    assert (breaker.state, breaker.window(), round(breaker.failure_rate, 4)) == ("closed", (15, 5, 0), 33.3333)


def test_rate_without_volume_does_not_open() -> None:
    """A 100% failure rate below the failure count leaves the breaker closed."""
    breaker = make(ManualClock(), failure_threshold=5, failure_threshold_percentage=50)
    fail(breaker, 4)
    assert (breaker.state, breaker.window(), breaker.failure_rate) == ("closed", (4, 4, 0), 100.0)


def test_volume_and_rate_open() -> None:
    """The failure that reaches both the count and the rate opens the breaker."""
    breaker = make(ManualClock(), failure_threshold=5, failure_threshold_percentage=50)
    succeed(breaker, 5)
    fail(breaker, 4)
    assert breaker.state == "closed"
    fail(breaker)
    assert (breaker.state, breaker.window(), breaker.failure_rate) == ("open", (10, 5, 0), 50.0)


def test_count_window_slides() -> None:
    """The count window holds the last N calls: an old failure falls out and no longer counts."""
    breaker = make(ManualClock(), failure_threshold=2, failure_threshold_percentage=25, sliding_window_size=4)
    fail(breaker)
    succeed(breaker, 3)
    assert breaker.window() == (4, 1, 0)
    succeed(breaker)
    assert breaker.window() == (4, 0, 0)
    fail(breaker)
    assert (breaker.state, breaker.window()) == ("closed", (4, 1, 0))
    fail(breaker)
    assert (breaker.state, breaker.window()) == ("open", (4, 2, 0))


def test_time_window_slides() -> None:
    """The time window holds the last N seconds: failures older than that no longer count."""
    clock = ManualClock()
    breaker = make(
        clock, failure_threshold=3, failure_threshold_percentage=50, sliding_window_type="time", sliding_window_size=10
    )
    fail(breaker, 2)
    clock.advance(9.5)
    assert breaker.window() == (2, 2, 0)
    clock.advance(0.5)
    assert breaker.window() == (0, 0, 0)
    fail(breaker)
    assert (breaker.state, breaker.window()) == ("closed", (1, 1, 0))
    clock.advance(3.0)
    succeed(breaker)
    fail(breaker)
    assert (breaker.state, breaker.window()) == ("closed", (3, 2, 0))
    fail(breaker)
    assert (breaker.state, breaker.window()) == ("open", (4, 3, 0))


def test_time_window_long_idle_empties_it() -> None:
    """A gap longer than the whole time window leaves it empty."""
    clock = ManualClock(100.0)
    breaker = make(clock, failure_threshold=3, sliding_window_type="time", sliding_window_size=5)
    succeed(breaker, 2)
    fail(breaker, 2)
    clock.advance(2.0)
    succeed(breaker)
    clock.advance(1000.0)
    assert (breaker.window(), breaker.failure_rate) == ((0, 0, 0), 0.0)


def test_slow_call_rate_opens() -> None:
    """Slow calls at or above the slow-call rate open the breaker even when they all succeed."""
    breaker = make(
        ManualClock(),
        failure_threshold=3,
        slow_call_duration=1.0,
        slow_call_rate_threshold=50,
    )
    succeed(breaker, 3, duration=0.5)
    succeed(breaker, 2, duration=1.0)
    assert (breaker.state, breaker.window()) == ("closed", (5, 0, 2))
    succeed(breaker, 1, duration=2.0)
    assert (breaker.state, breaker.window(), breaker.slow_call_rate) == ("open", (6, 0, 3), 50.0)


def test_slow_failures_count_as_failures_and_slow() -> None:
    """A slow failure counts once as a failure and once as a slow call."""
    breaker = make(ManualClock(), failure_threshold=3, failure_threshold_percentage=90, slow_call_duration=1.0)
    succeed(breaker, 2)
    fail(breaker, 2, duration=5.0)
    assert (breaker.state, breaker.window()) == ("closed", (4, 2, 2))


def test_slow_calls_not_measured_without_slow_call_duration() -> None:
    """Without ``slow_call_duration`` no call is slow, however long it takes."""
    breaker = make(ManualClock(), failure_threshold=1)
    succeed(breaker, 3, duration=3600.0)
    assert (breaker.state, breaker.window(), breaker.slow_call_rate) == ("closed", (3, 0, 0), 0.0)


def test_failure_statuses_are_precomputed_from_config() -> None:
    """``Outcomes.failed`` follows ``failure_on_status``: 5xx by default, or the configured list."""
    default = outcomes(CircuitBreakerConfig())
    custom = outcomes(CircuitBreakerConfig(failure_on_status=[429, 503]))
    assert [default.failed(s) for s in (200, 404, 429, 500, 503, 599)] == [
        False,
        False,
        False,
        True,
        True,
        True,
    ]
    assert [custom.failed(s) for s in (200, 429, 500, 503)] == [False, True, False, True]


def test_services_with_the_same_failure_statuses_share_one_set() -> None:
    """The default rule (every 5xx) is one set for every service, not a copy each (8 KiB per service)."""
    first, second = outcomes(CircuitBreakerConfig()), outcomes(CircuitBreakerConfig())
    assert first.statuses is second.statuses
    assert outcomes(CircuitBreakerConfig(failure_on_status=[503])).statuses is not first.statuses


# ------------------------------------------------------------------------------------- open, half-open


def test_open_rejects_and_retry_after_counts_down() -> None:
    """While open every call is rejected and ``retry_after`` counts down to the half-open moment."""
    clock = ManualClock()
    breaker = tripped(clock, failure_threshold=2, reset_timeout=30)
    assert (breaker.try_acquire(), breaker.retry_after()) == (False, 30.0)
    clock.advance(10.0)
    assert (breaker.try_acquire(), breaker.retry_after()) == (False, 20.0)
    clock.advance(19.5)
    assert (breaker.try_acquire(), breaker.retry_after(), breaker.state) == (False, 0.5, "open")


def test_half_open_after_reset_timeout() -> None:
    """At the end of the open period the breaker reads half-open; ``try_acquire`` then takes a probe slot."""
    clock = ManualClock()
    breaker = tripped(clock, failure_threshold=2, reset_timeout=30, timeout=4)
    clock.advance(29.9)
    assert breaker.state == "open"
    clock.advance(0.1)
    assert breaker.state == "half-open"
    assert (breaker.try_acquire(), breaker.state, breaker.retry_after()) == (True, "half-open", 4.0)
    assert breaker.as_dict()["half_open_in_flight"] == 1


def test_a_call_from_before_half_open_is_not_taken_for_a_probe() -> None:
    """A call admitted while closed that ends during half-open neither closes the breaker nor frees a slot."""
    clock = ManualClock()
    breaker = make(clock, failure_threshold=2, failure_threshold_percentage=50, reset_timeout=5, half_open_max_calls=1)
    old = breaker.acquire()
    breaker.record_failure(0.01, breaker.acquire())
    breaker.record_failure(0.01, breaker.acquire())
    assert breaker.state == "open"
    clock.advance(5)
    probe = breaker.acquire()
    assert (old, probe > 0, breaker.acquire()) == (0, True, -1)
    breaker.record_success(0.01, old)
    assert (breaker.state, breaker.as_dict()["half_open_in_flight"]) == ("half-open", 1)
    breaker.record_success(0.01, probe)
    assert breaker.state == "closed"


def test_half_open_max_calls_limits_probes() -> None:
    """Half-open admits at most ``half_open_max_calls`` probes at once; a finished probe frees its slot."""
    clock = ManualClock()
    breaker = tripped(clock, failure_threshold=2, reset_timeout=5, half_open_max_calls=2)
    clock.advance(5.0)
    assert [breaker.try_acquire() for _ in range(3)] == [True, True, False]
    breaker.record_success(0.01)
    assert (breaker.state, breaker.try_acquire(), breaker.try_acquire()) == ("half-open", True, False)


def test_probe_successes_close() -> None:
    """``half_open_max_calls`` probe successes close the breaker with an empty window and no trips."""
    clock = ManualClock()
    breaker = tripped(clock, failure_threshold=2, reset_timeout=5, half_open_max_calls=2)
    clock.advance(5.0)
    succeed(breaker)
    assert breaker.state == "half-open"
    succeed(breaker)
    snapshot = breaker.as_dict()
    assert (breaker.state, breaker.window(), snapshot["opened_at"], snapshot["consecutive_trips"]) == (
        "closed",
        (0, 0, 0),
        None,
        0,
    )
    assert snapshot["trips"] == 1


def test_probe_failure_reopens_with_grown_and_capped_period() -> None:
    """Each failed probe re-opens for reset_timeout * multiplier ** (trips - 1), capped at max_reset_timeout."""
    clock = ManualClock()
    breaker = tripped(clock, failure_threshold=2, reset_timeout=10, reset_timeout_multiplier=2, max_reset_timeout=35)
    periods = [breaker.retry_after()]
    for _ in range(3):
        clock.advance(periods[-1])
        fail(breaker)
        assert breaker.state == "open"
        periods.append(breaker.retry_after())
    assert periods == [10.0, 20.0, 35.0, 35.0]
    assert (breaker.as_dict()["consecutive_trips"], breaker.as_dict()["trips"]) == (4, 4)


def test_closing_resets_the_open_period() -> None:
    """After the breaker closes, its next trip waits the base ``reset_timeout`` again."""
    clock = ManualClock()
    breaker = tripped(clock, failure_threshold=2, reset_timeout=10, reset_timeout_multiplier=3, max_reset_timeout=100)
    clock.advance(10.0)
    fail(breaker)
    assert breaker.retry_after() == 30.0
    clock.advance(30.0)
    succeed(breaker)
    assert breaker.state == "closed"
    fail(breaker, 2)
    assert (breaker.state, breaker.retry_after(), breaker.as_dict()["consecutive_trips"]) == ("open", 10.0, 1)


def test_open_period_helper() -> None:
    """``open_period(n)`` is the open time after the n-th consecutive trip."""
    breaker = make(ManualClock(), reset_timeout=2, reset_timeout_multiplier=1.5, max_reset_timeout=5)
    assert [breaker.open_period(n) for n in (1, 2, 3, 4)] == [2.0, 3.0, 4.5, 5.0]


# ------------------------------------------------------------------------------------------ operators


def test_force_open_rejects_until_reset() -> None:
    """A forced-open breaker rejects every call, never half-opens by itself, and records nothing."""
    clock = ManualClock()
    breaker = make(clock, reset_timeout=7)
    succeed(breaker, 3)
    breaker.force_open()
    clock.advance(1000.0)
    assert (breaker.state, breaker.try_acquire(), breaker.retry_after()) == ("forced-open", False, 7.0)
    breaker.record_failure(0.01)
    assert breaker.window() == (3, 0, 0)
    breaker.reset()
    assert (breaker.state, breaker.try_acquire(), breaker.window()) == ("closed", True, (0, 0, 0))


def test_disable_allows_everything_and_records_nothing() -> None:
    """A disabled breaker admits every call and its window stays empty."""
    breaker = make(ManualClock(), failure_threshold=1)
    breaker.disable()
    fail(breaker, 50)
    assert (breaker.state, breaker.window(), breaker.retry_after()) == ("disabled", (0, 0, 0), 0.0)


def test_config_disabled_starts_disabled() -> None:
    """``enabled=False`` starts the breaker in the disabled state; ``reset()`` turns it on."""
    breaker = make(ManualClock(), enabled=False, failure_threshold=1)
    fail(breaker, 3)
    assert (breaker.state, breaker.window()) == ("disabled", (0, 0, 0))
    breaker.reset()
    fail(breaker)
    assert breaker.state == "open"


def test_reset_from_open_clears_everything() -> None:
    """``reset()`` on an open breaker closes it with an empty window and zero consecutive trips."""
    clock = ManualClock()
    breaker = tripped(clock, failure_threshold=2)
    breaker.reset()
    snapshot = breaker.as_dict()
    assert (snapshot["state"], snapshot["calls"], snapshot["failures"], snapshot["consecutive_trips"]) == (
        "closed",
        0,
        0,
        0,
    )


# ------------------------------------------------------------------------------------------ cancelled


def test_ignored_call_counts_as_neither_when_closed() -> None:
    """A cancelled call in the closed state leaves the window untouched."""
    breaker = make(ManualClock())
    fail(breaker)
    assert breaker.try_acquire() is True
    breaker.record_ignored()
    assert breaker.window() == (1, 1, 0)


def test_ignored_probe_gives_its_slot_back() -> None:
    """A cancelled probe frees its half-open slot without closing or re-opening the breaker."""
    clock = ManualClock()
    breaker = tripped(clock, failure_threshold=2, reset_timeout=5)
    clock.advance(5.0)
    assert (breaker.try_acquire(), breaker.try_acquire()) == (True, False)
    breaker.release()
    assert (breaker.state, breaker.as_dict()["half_open_in_flight"], breaker.try_acquire()) == ("half-open", 0, True)


# --------------------------------------------------------------------------------------------- events


def test_no_event_built_without_a_subscriber() -> None:
    """With nobody subscribed to state changes, nothing is emitted."""
    bus = SpyBus()
    bus.on("request-success", lambda event: None)
    clock = ManualClock()
    breaker = tripped(clock, bus, failure_threshold=2, reset_timeout=5)
    clock.advance(5.0)
    succeed(breaker)
    assert (breaker.state, bus.emitted) == ("closed", [])


def test_events_carry_from_and_to_states() -> None:
    """Each transition emits one BreakerStateChange with the right states, rate and reason."""
    bus = EventBus()
    seen: list[BreakerStateChange] = []
    bus.on(CIRCUIT_STATE_CHANGE, seen.append)
    clock = ManualClock()
    breaker = make(clock, bus, failure_threshold=2, failure_threshold_percentage=50, reset_timeout=5)
    succeed(breaker, 2)
    fail(breaker, 2)
    clock.advance(5.0)
    fail(breaker)
    clock.advance(5.0)
    succeed(breaker)
    breaker.force_open()
    breaker.disable()
    breaker.reset()
    assert [(e.from_state, e.to_state) for e in seen] == [
        ("closed", "open"),
        ("open", "half-open"),
        ("half-open", "open"),
        ("open", "half-open"),
        ("half-open", "closed"),
        ("closed", "forced-open"),
        ("forced-open", "disabled"),
        ("disabled", "closed"),
    ]
    assert seen[0] == BreakerStateChange("user-service", "closed", "open", 50.0, "2 of 4 calls failed (50.0% >= 50%)")
    assert (seen[2].reason, seen[4].reason, seen[4].failure_rate, seen[5].failure_rate) == (
        "a probe call failed",
        "1 probe call(s) succeeded",
        50.0,
        0.0,
    )
    assert {e.service for e in seen} == {"user-service"}


def test_as_dict_snapshot() -> None:
    """``as_dict`` reports state, window counts, rates, open time, trips and the config summary."""
    clock = ManualClock(50.0)
    breaker = make(clock, failure_threshold=3, failure_threshold_percentage=60, reset_timeout=20)
    succeed(breaker, 2)
    fail(breaker, 3)
    clock.advance(5.0)
    assert breaker.as_dict() == {
        "state": "open",
        "calls": 5,
        "failures": 3,
        "slow_calls": 0,
        "failure_rate": 60.0,
        "slow_call_rate": 0.0,
        "opened_at": 50.0,
        "retry_after": 15.0,
        "trips": 1,
        "consecutive_trips": 1,
        "half_open_in_flight": 0,
        "config": {
            "failure_threshold": 3,
            "failure_threshold_percentage": 60.0,
            "sliding_window_type": "count",
            "sliding_window_size": 100,
            "slow_call_duration": None,
            "slow_call_rate_threshold": 100.0,
            "reset_timeout": 20.0,
            "reset_timeout_multiplier": 1.0,
            "max_reset_timeout": 300.0,
            "half_open_max_calls": 1,
        },
    }


# ------------------------------------------------------------------------------------------ transport


@dataclass
class StandInService:
    """The part of ``ServiceState`` the breaker layer reads."""

    name: str
    breaker: CircuitBreaker
    outcomes: Outcomes = field(init=False)

    def __post_init__(self) -> None:
        self.outcomes = outcomes(self.breaker.config)


class Upstream:
    """A MockTransport handler that answers with the queued statuses (or raises queued exceptions)."""

    def __init__(self, clock: ManualClock, latency: float = 0.0) -> None:
        self.clock = clock
        self.latency = latency
        self.requests = 0
        self.script: list[int | BaseException] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        self.clock.advance(self.latency)
        outcome = self.script.pop(0) if self.script else 200
        if isinstance(outcome, BaseException):
            raise outcome
        return httpx.Response(outcome, text="ok")


def mesh_request(service: StandInService) -> httpx.Request:
    ctx = CallContext(service, None)  # type: ignore[arg-type]
    return httpx.Request("GET", "http://user-service/api/users", extensions={EXTENSION: ctx})


def layer(clock: ManualClock, upstream: Upstream) -> CircuitBreakerTransport:
    return CircuitBreakerTransport(httpx.MockTransport(upstream), clock=clock)


@pytest.mark.anyio
async def test_transport_open_sends_nothing_and_raises_circuit_open() -> None:
    """While open the upstream sees no request and CircuitOpen names the service and the wait."""
    clock = ManualClock()
    service = StandInService("user-service", make(clock, failure_threshold=2, reset_timeout=30))
    upstream = Upstream(clock)
    upstream.script = [503, 500]
    transport = layer(clock, upstream)
    for status in (503, 500):
        response = await transport.handle_async_request(mesh_request(service))
        assert response.status_code == status
    assert service.breaker.state == "open"
    clock.advance(12.0)
    for _ in range(3):
        with pytest.raises(CircuitOpen) as caught:
            await transport.handle_async_request(mesh_request(service))
    await transport.aclose()
    assert upstream.requests == 2
    assert str(caught.value) == "circuit open for service 'user-service': breaker open, half-open in 18.0s"
    assert (caught.value.service, caught.value.retry_after) == ("user-service", 18.0)
    assert caught.value.request.url == "http://user-service/api/users"


@pytest.mark.anyio
async def test_transport_4xx_is_not_a_failure() -> None:
    """Client-error responses count as successes: the upstream answered."""
    clock = ManualClock()
    service = StandInService("user-service", make(clock, failure_threshold=1))
    upstream = Upstream(clock)
    upstream.script = [400, 404, 409, 429]
    transport = layer(clock, upstream)
    statuses = [(await transport.handle_async_request(mesh_request(service))).status_code for _ in range(4)]
    await transport.aclose()
    assert (statuses, service.breaker.state, service.breaker.window()) == ([400, 404, 409, 429], "closed", (4, 0, 0))


@pytest.mark.anyio
async def test_transport_mesh_errors_are_failures() -> None:
    """UpstreamUnavailable and DeadlineExceeded count as failures."""
    clock = ManualClock()
    service = StandInService("user-service", make(clock, failure_threshold=2, failure_threshold_percentage=100))
    upstream = Upstream(clock)
    errors: list[MeshError] = [UpstreamUnavailable("user-service"), DeadlineExceeded("user-service")]
    upstream.script = list(errors)
    transport = layer(clock, upstream)
    for error in errors:
        with pytest.raises(type(error)):
            await transport.handle_async_request(mesh_request(service))
    await transport.aclose()
    assert (service.breaker.state, service.breaker.window()) == ("open", (2, 2, 0))


@pytest.mark.anyio
async def test_transport_own_limits_are_not_service_failures() -> None:
    """NoHealthyEndpoints, BulkheadFull and AuthorizationDenied are not the service failing: nothing recorded."""
    clock = ManualClock()
    service = StandInService("user-service", make(clock, failure_threshold=1, failure_threshold_percentage=100))
    upstream = Upstream(clock)
    upstream.script = [
        NoHealthyEndpoints("user-service"),
        BulkheadFull("user-service"),
        AuthorizationDenied("user-service"),
    ]
    transport = layer(clock, upstream)
    with pytest.raises(NoHealthyEndpoints):
        await transport.handle_async_request(mesh_request(service))
    with pytest.raises(BulkheadFull):
        await transport.handle_async_request(mesh_request(service))
    with pytest.raises(AuthorizationDenied):
        await transport.handle_async_request(mesh_request(service))
    await transport.aclose()
    assert (service.breaker.state, service.breaker.window()) == ("closed", (0, 0, 0))


@pytest.mark.anyio
async def test_transport_cancelled_and_unexpected_errors_are_ignored() -> None:
    """A cancelled call or an unexpected exception records nothing and is re-raised unchanged."""
    clock = ManualClock()
    service = StandInService("user-service", make(clock, failure_threshold=1))
    upstream = Upstream(clock)
    upstream.script = [asyncio.CancelledError(), RuntimeError("bug")]
    transport = layer(clock, upstream)
    with pytest.raises(asyncio.CancelledError):
        await transport.handle_async_request(mesh_request(service))
    with pytest.raises(RuntimeError, match="bug"):
        await transport.handle_async_request(mesh_request(service))
    await transport.aclose()
    assert (upstream.requests, service.breaker.state, service.breaker.window()) == (2, "closed", (0, 0, 0))


@pytest.mark.anyio
async def test_transport_cancelled_probe_frees_the_slot() -> None:
    """A probe cancelled in half-open frees its slot, so the next call is admitted as a probe."""
    clock = ManualClock()
    service = StandInService("user-service", tripped(clock, failure_threshold=2, reset_timeout=5))
    upstream = Upstream(clock)
    upstream.script = [asyncio.CancelledError(), 200]
    transport = layer(clock, upstream)
    clock.advance(5.0)
    with pytest.raises(asyncio.CancelledError):
        await transport.handle_async_request(mesh_request(service))
    assert service.breaker.state == "half-open"
    response = await transport.handle_async_request(mesh_request(service))
    await transport.aclose()
    assert (response.status_code, upstream.requests, service.breaker.state) == (200, 2, "closed")


@pytest.mark.anyio
async def test_transport_half_open_probe_limit_rejects_with_circuit_open() -> None:
    """In half-open, a call beyond the probe limit is rejected without reaching the upstream."""
    clock = ManualClock()
    breaker = tripped(clock, failure_threshold=2, reset_timeout=5, timeout=3)
    service = StandInService("user-service", breaker)
    upstream = Upstream(clock)
    transport = layer(clock, upstream)
    clock.advance(5.0)
    assert breaker.try_acquire() is True  # a probe already in flight elsewhere
    with pytest.raises(CircuitOpen) as caught:
        await transport.handle_async_request(mesh_request(service))
    await transport.aclose()
    assert (upstream.requests, caught.value.retry_after) == (0, 3.0)
    assert str(caught.value) == (
        "circuit open for service 'user-service': breaker half-open, 1 probe call(s) already in flight"
    )


@pytest.mark.anyio
async def test_transport_measures_duration_with_the_clock() -> None:
    """The layer times each call with the injected clock, so slow answers count as slow calls."""
    clock = ManualClock()
    breaker = make(clock, failure_threshold=2, slow_call_duration=1.0, slow_call_rate_threshold=100)
    service = StandInService("user-service", breaker)
    upstream = Upstream(clock, latency=1.5)
    transport = layer(clock, upstream)
    await transport.handle_async_request(mesh_request(service))
    assert (breaker.state, breaker.window()) == ("closed", (1, 0, 1))
    await transport.handle_async_request(mesh_request(service))
    await transport.aclose()
    assert (breaker.state, breaker.window()) == ("open", (2, 0, 2))


@pytest.mark.anyio
async def test_transport_forced_open_message() -> None:
    """A forced-open breaker rejects with a message saying an operator opened it."""
    clock = ManualClock()
    breaker = make(clock, reset_timeout=9)
    breaker.force_open()
    upstream = Upstream(clock)
    transport = layer(clock, upstream)
    with pytest.raises(CircuitOpen) as caught:
        await transport.handle_async_request(mesh_request(StandInService("user-service", breaker)))
    await transport.aclose()
    assert (str(caught.value), caught.value.retry_after, upstream.requests) == (
        "circuit open for service 'user-service': breaker forced open by an operator",
        9.0,
        0,
    )
