"""The circuit breaker: a per-service state machine over the outcomes the caller sees (its layer is
``layers.breaker``).

::

    closed ──(failures >= failure_threshold and rate >= failure_threshold_percentage)──▶ open
    open ──(open period elapsed; seen lazily by the next try_acquire)──▶ half-open
    half-open ──(half_open_max_calls probes succeeded)──▶ closed      (window cleared, trips reset)
    half-open ──(any probe failed)──▶ open      (open period = reset_timeout * multiplier ** (trips - 1))

Operators may also ``force_open()`` (reject everything), ``disable()`` (admit everything, record nothing)
and ``reset()`` (back to closed). Time is read from the injected clock only when needed: the open ->
half-open transition happens on the next ``try_acquire()``, with no timer or task behind it.

>>> from fastapi_mesh.clock import ManualClock
>>> from fastapi_mesh.settings import CircuitBreakerConfig
>>> breaker = CircuitBreaker("users", CircuitBreakerConfig(failure_threshold=2, reset_timeout=5), ManualClock())
>>> for _ in range(2):
...     breaker.try_acquire()
...     breaker.record_failure(0.01)
True
True
>>> breaker.state, breaker.try_acquire(), breaker.retry_after()
('open', False, 5.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from ..clock import Clock
from ..events import CIRCUIT_CLOSED, CIRCUIT_HALF_OPEN, CIRCUIT_OPEN, CIRCUIT_STATE_CHANGE, EventBus
from ..settings import CircuitBreakerConfig

__all__ = [
    "BreakerState",
    "BreakerStateChange",
    "CircuitBreaker",
]

BreakerState = Literal["closed", "open", "half-open", "forced-open", "disabled"]

CLOSED: BreakerState = "closed"
OPEN: BreakerState = "open"
HALF_OPEN: BreakerState = "half-open"
FORCED_OPEN: BreakerState = "forced-open"
DISABLED: BreakerState = "disabled"

#: The event each state's arrival emits besides ``circuit-breaker:state-change`` (forced open is open too).
_STATE_EVENTS: dict[str, str] = {
    OPEN: CIRCUIT_OPEN,
    FORCED_OPEN: CIRCUIT_OPEN,
    HALF_OPEN: CIRCUIT_HALF_OPEN,
    CLOSED: CIRCUIT_CLOSED,
}

# Outcome codes stored in the count window: bit 0 = failure, bit 1 = slow.
_SUCCESS = 0
_FAILURE = 1
_SLOW = 2


@dataclass(frozen=True, slots=True)
class BreakerStateChange:
    """A breaker moved from one state to another. ``failure_rate`` is the window's, in percent."""

    service: str
    from_state: BreakerState
    to_state: BreakerState
    failure_rate: float
    reason: str


class CircuitBreaker:
    """One upstream service's breaker. Not thread-safe: it lives on one event loop, like the mesh.

    The hot path is ``try_acquire()`` then one of ``record_success(duration)``, ``record_failure(duration)``
    or ``record_ignored()`` (a cancelled call: neither success nor failure). In the closed state these only
    touch a few integers.
    """

    __slots__ = (
        "_buckets",
        "_calls",
        "_clock",
        "_config",
        "_epoch",
        "_events",
        "_failures",
        "_head",
        "_open_until",
        "_opened_at",
        "_pos",
        "_probe_successes",
        "_probes",
        "_ring",
        "_size",
        "_slow",
        "_slow_at",
        "_state",
        "_time_window",
        "_total_trips",
        "_transitions",
        "_trips",
        "service",
        "times_calls",
    )

    def __init__(
        self, service: str, config: CircuitBreakerConfig, clock: Clock, events: EventBus | None = None
    ) -> None:
        self.service = service
        self._config = config
        self._clock = clock
        self._events = events
        self._slow_at = math.inf if config.slow_call_duration is None else config.slow_call_duration
        #: Whether call durations matter (slow-call rule): when not, the layer does not time calls.
        self.times_calls = config.slow_call_duration is not None
        self._size = config.sliding_window_size
        self._time_window = config.sliding_window_type == "time"
        # Count window: a ring of outcome codes. Time window: per-second [calls, failures, slow] buckets.
        self._ring: list[int] = [] if self._time_window else [_SUCCESS] * self._size
        self._buckets: list[list[int]] = [[0, 0, 0] for _ in range(self._size)] if self._time_window else []
        self._pos = 0
        self._head = 0  # the newest second the time window has seen
        self._calls = 0
        self._failures = 0
        self._slow = 0
        self._state: BreakerState = CLOSED if config.enabled else DISABLED
        self._opened_at: float | None = None
        self._open_until = 0.0
        self._trips = 0  # consecutive trips since the breaker last closed
        self._total_trips = 0
        self._probes = 0  # half-open probe calls in flight
        self._probe_successes = 0
        self._epoch = 0  # which half-open period a probe ticket belongs to
        self._transitions: dict[tuple[BreakerState, BreakerState], int] = {}
        self._clear_window()

    # ---------------------------------------------------------------------------------------- hot path

    @property
    def state(self) -> BreakerState:
        """The state now (an open breaker whose open period has passed reads, and becomes, half-open)."""
        if self._state == OPEN and self._clock.now() >= self._open_until:
            self._half_open()
        return self._state

    def _half_open(self) -> None:
        self._probes = 0
        self._probe_successes = 0
        self._epoch += 1
        self._transition(HALF_OPEN, "open period elapsed")

    @property
    def config(self) -> CircuitBreakerConfig:
        return self._config

    def try_acquire(self) -> bool:
        """Whether a call may go now. In half-open, a True takes one of the probe slots."""
        return self.acquire() >= 0

    def acquire(self) -> int:
        """Admit a call: -1 rejected, 0 an ordinary call, a positive ticket for a half-open probe.

        Pass the ticket back to ``record_*``: a call admitted before the breaker went half-open that ends
        during the half-open period is then not taken for a probe.
        """
        state = self._state
        if state in (CLOSED, DISABLED):
            return 0
        if state == OPEN:
            if self._clock.now() < self._open_until:
                return -1
            self._half_open()
        elif state == FORCED_OPEN:
            return -1
        if self._probes < self._config.half_open_max_calls:
            self._probes += 1
            return self._epoch
        return -1

    def record_success(self, duration: float, ticket: int | None = None) -> None:
        """An admitted call ended with an answer the caller counts as good; ``duration`` in seconds."""
        if self._state == CLOSED:
            if duration >= self._slow_at:
                self._record(_SLOW)
                self._check_slow()
            elif self._time_window:
                self._record_time(_SUCCESS)
                # Old successes leaving the window raise the failure and slow-call rates: check them.
                if not (self._failures and self._check_failures()) and self._slow:
                    self._check_slow()
            else:  # the count window's success, inlined: the hottest line of the mesh
                pos = self._pos
                if self._calls == self._size:
                    old = self._ring[pos]
                    if old:
                        self._failures -= old & _FAILURE
                        self._slow -= old >> 1
                else:
                    self._calls += 1
                self._ring[pos] = _SUCCESS
                pos += 1
                self._pos = 0 if pos == self._size else pos
        elif self._state == HALF_OPEN and (ticket is None or ticket == self._epoch):
            self._release_probe()
            self._probe_successes += 1
            if self._probe_successes >= self._config.half_open_max_calls:
                self._close(f"{self._probe_successes} probe call(s) succeeded")

    def record_failure(self, duration: float, ticket: int | None = None) -> None:
        """An admitted call failed (a failure status, or no answer); ``duration`` in seconds."""
        if self._state == CLOSED:
            slow = duration >= self._slow_at
            self._record((_FAILURE | _SLOW) if slow else _FAILURE)
            if not self._check_failures() and slow:
                self._check_slow()
        elif self._state == HALF_OPEN and (ticket is None or ticket == self._epoch):
            self._release_probe()
            self._trip("a probe call failed")

    def record_ignored(self, ticket: int | None = None) -> None:
        """An admitted call ended without an outcome (cancelled): record nothing, give back a probe slot."""
        if self._state == HALF_OPEN and (ticket is None or ticket == self._epoch):
            self._release_probe()

    release = record_ignored

    def retry_after(self) -> float:
        """Seconds a rejected caller should wait: until half-open when open, else a hint (see below).

        Half-open: one attempt timeout (``config.timeout``), by when the probes in flight should have
        decided. Forced open: ``reset_timeout``, as nothing but an operator will close it. Otherwise 0.
        """
        state = self._state
        if state == OPEN:
            return max(0.0, self._open_until - self._clock.now())
        if state == HALF_OPEN:
            return self._config.timeout
        if state == FORCED_OPEN:
            return self._config.reset_timeout
        return 0.0

    # --------------------------------------------------------------------------------------- operators

    def force_open(self) -> None:
        """Reject every call until ``reset()`` (or ``disable()``)."""
        self._probes = 0
        self._transition(FORCED_OPEN, "forced open")

    def disable(self) -> None:
        """Admit every call and record nothing, until ``reset()`` (or ``force_open()``)."""
        self._probes = 0
        self._transition(DISABLED, "disabled")

    def reset(self) -> None:
        """Back to closed with an empty window and no trips behind it."""
        self._close("reset")

    # ------------------------------------------------------------------------------------- inspection

    @property
    def failure_rate(self) -> float:
        """Failed calls as a percentage of the calls in the window (0.0 when the window is empty)."""
        self._expire()
        return 100.0 * self._failures / self._calls if self._calls else 0.0

    @property
    def slow_call_rate(self) -> float:
        """Slow calls as a percentage of the calls in the window (0.0 when the window is empty)."""
        self._expire()
        return 100.0 * self._slow / self._calls if self._calls else 0.0

    @property
    def transitions(self) -> dict[tuple[BreakerState, BreakerState], int]:
        """How many times the breaker went from one state to another, by ``(from_state, to_state)``."""
        return dict(self._transitions)

    def window(self) -> tuple[int, int, int]:
        """``(calls, failures, slow_calls)`` in the window now."""
        self._expire()
        return self._calls, self._failures, self._slow

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready snapshot for ``/mesh/status`` and metrics."""
        config = self._config
        calls, failures, slow = self.window()
        return {
            "state": self.state,
            "calls": calls,
            "failures": failures,
            "slow_calls": slow,
            "failure_rate": round(100.0 * failures / calls, 2) if calls else 0.0,
            "slow_call_rate": round(100.0 * slow / calls, 2) if calls else 0.0,
            "opened_at": self._opened_at,
            "retry_after": round(self.retry_after(), 3),
            "trips": self._total_trips,
            "consecutive_trips": self._trips,
            "half_open_in_flight": self._probes,
            "config": {
                "failure_threshold": config.failure_threshold,
                "failure_threshold_percentage": config.failure_threshold_percentage,
                "sliding_window_type": config.sliding_window_type,
                "sliding_window_size": config.sliding_window_size,
                "slow_call_duration": config.slow_call_duration,
                "slow_call_rate_threshold": config.slow_call_rate_threshold,
                "reset_timeout": config.reset_timeout,
                "reset_timeout_multiplier": config.reset_timeout_multiplier,
                "max_reset_timeout": config.max_reset_timeout,
                "half_open_max_calls": config.half_open_max_calls,
            },
        }

    def open_period(self, trips: int | None = None) -> float:
        """How long the breaker stays open after its ``trips``-th consecutive trip (default: the last)."""
        config = self._config
        n = self._trips if trips is None else trips
        period = config.reset_timeout * config.reset_timeout_multiplier ** max(n - 1, 0)
        return min(period, config.max_reset_timeout)

    # ---------------------------------------------------------------------------------------- internals

    def _record(self, code: int) -> None:
        if self._time_window:
            self._record_time(code)
            return
        ring = self._ring
        pos = self._pos
        if self._calls == self._size:
            old = ring[pos]
            self._failures -= old & _FAILURE
            self._slow -= old >> 1
        else:
            self._calls += 1
        ring[pos] = code
        self._failures += code & _FAILURE
        self._slow += code >> 1
        pos += 1
        self._pos = 0 if pos == self._size else pos

    def _record_time(self, code: int) -> None:
        second = math.floor(self._clock.now())
        if second > self._head:
            self._expire_to(second)
        bucket = self._buckets[self._head % self._size]
        failure = code & _FAILURE
        slow = code >> 1
        bucket[0] += 1
        bucket[1] += failure
        bucket[2] += slow
        self._calls += 1
        self._failures += failure
        self._slow += slow

    def _expire(self) -> None:
        """Time window: drop the buckets of seconds that have left the window (amortised O(1))."""
        if self._time_window:
            second = math.floor(self._clock.now())
            # The same second, or a clock that stepped back: nothing leaves; the newest bucket stays in use.
            if second > self._head:
                self._expire_to(second)

    def _expire_to(self, second: int) -> None:
        head = self._head
        size = self._size
        if self._calls == 0:  # every bucket is already empty
            self._head = second
            return
        buckets = self._buckets
        if second - head >= size:
            for bucket in buckets:
                bucket[0] = bucket[1] = bucket[2] = 0
            self._calls = self._failures = self._slow = 0
        else:
            for s in range(head + 1, second + 1):
                bucket = buckets[s % size]
                self._calls -= bucket[0]
                self._failures -= bucket[1]
                self._slow -= bucket[2]
                bucket[0] = bucket[1] = bucket[2] = 0
        self._head = second

    def _clear_window(self) -> None:
        self._calls = self._failures = self._slow = 0
        self._pos = 0
        if self._time_window:
            for bucket in self._buckets:
                bucket[0] = bucket[1] = bucket[2] = 0
            self._head = math.floor(self._clock.now())

    def _check_failures(self) -> bool:
        """Trip if the window holds enough failures at a high enough rate; True when it tripped."""
        failures = self._failures
        config = self._config
        if failures < config.failure_threshold:
            return False
        rate = 100.0 * failures / self._calls
        if rate < config.failure_threshold_percentage:
            return False
        self._trip(
            f"{failures} of {self._calls} calls failed ({rate:.1f}% >= {config.failure_threshold_percentage:g}%)"
        )
        return True

    def _check_slow(self) -> None:
        slow = self._slow
        config = self._config
        if slow < config.failure_threshold:
            return
        rate = 100.0 * slow / self._calls
        if rate < config.slow_call_rate_threshold:
            return
        self._trip(
            f"{slow} of {self._calls} calls were slow (>= {config.slow_call_duration:g}s; "
            f"{rate:.1f}% >= {config.slow_call_rate_threshold:g}%)"
        )

    def _trip(self, reason: str) -> None:
        now = self._clock.now()
        self._trips += 1
        self._total_trips += 1
        self._opened_at = now
        self._open_until = now + self.open_period()
        self._probes = 0
        self._probe_successes = 0
        self._transition(OPEN, reason)

    def _close(self, reason: str) -> None:
        rate = self.failure_rate
        self._clear_window()
        self._trips = 0
        self._probes = 0
        self._probe_successes = 0
        self._opened_at = None
        self._open_until = 0.0
        self._transition(CLOSED, reason, rate)

    def _release_probe(self) -> None:
        if self._probes > 0:
            self._probes -= 1

    def _transition(self, to_state: BreakerState, reason: str, rate: float | None = None) -> None:
        from_state = self._state
        if from_state == to_state:
            return
        self._state = to_state
        key = (from_state, to_state)
        self._transitions[key] = self._transitions.get(key, 0) + 1
        events = self._events
        if events is None:
            return
        wanted = [n for n in (CIRCUIT_STATE_CHANGE, _STATE_EVENTS.get(to_state)) if n and events.wants(n)]
        if wanted:
            change = BreakerStateChange(
                self.service, from_state, to_state, self.failure_rate if rate is None else rate, reason
            )
            for name in wanted:
                events.emit(name, change)

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.service!r} {self._state}>"
