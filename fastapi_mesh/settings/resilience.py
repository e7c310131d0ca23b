"""The resilience sections: ``circuit_breaker``, ``outlier_detection``, ``bulkhead`` and ``retry``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .types import NonNegativeDuration, PositiveDuration, Section, StatusCode

__all__ = [
    "DEFAULT_ATTEMPT_TIMEOUT",
    "DEFAULT_BASE_EJECTION_TIME",
    "DEFAULT_BUDGET_PERCENT",
    "DEFAULT_BUDGET_TTL",
    "DEFAULT_CONSECUTIVE_FAILURES",
    "DEFAULT_FAILURE_THRESHOLD",
    "DEFAULT_FAILURE_THRESHOLD_PERCENTAGE",
    "DEFAULT_HALF_OPEN_MAX_CALLS",
    "DEFAULT_INITIAL_DELAY",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_DELAY",
    "DEFAULT_MAX_EJECTION_TIME",
    "DEFAULT_MAX_RESET_TIMEOUT",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_MIN_RETRIES_PER_SECOND",
    "DEFAULT_QUEUE_TIMEOUT",
    "DEFAULT_RESET_TIMEOUT",
    "DEFAULT_RETRY_ON_STATUS",
    "DEFAULT_SLIDING_WINDOW_SIZE",
    "BackoffStrategy",
    "BulkheadConfig",
    "CircuitBreakerConfig",
    "Jitter",
    "OutlierDetectionConfig",
    "RetryConfig",
]

BackoffStrategy = Literal["exponential", "fibonacci", "linear", "fixed", "decorrelated-jitter"]
Jitter = Literal["none", "full", "equal"]


# ---------------------------------------------------------------------------------------------- breaker

DEFAULT_FAILURE_THRESHOLD = 5
DEFAULT_FAILURE_THRESHOLD_PERCENTAGE = 50.0
DEFAULT_ATTEMPT_TIMEOUT = 10.0
DEFAULT_RESET_TIMEOUT = 30.0
DEFAULT_SLIDING_WINDOW_SIZE = 100
DEFAULT_HALF_OPEN_MAX_CALLS = 1
DEFAULT_MAX_RESET_TIMEOUT = 300.0


class CircuitBreakerConfig(Section):
    """Per-service breaker. ``timeout`` is the per-attempt timeout (connect, read, write and pool)."""

    #: Failures inside the window needed to open the breaker (together with ``failure_threshold_percentage``).
    failure_threshold: int = Field(default=DEFAULT_FAILURE_THRESHOLD, ge=1)
    #: Failure rate, in percent of the calls inside the window, needed to open the breaker (together with
    #: ``failure_threshold``).
    failure_threshold_percentage: float = Field(default=DEFAULT_FAILURE_THRESHOLD_PERCENTAGE, gt=0, le=100)
    #: The per-attempt timeout (connect, read, write and pool), applied under retry: a timed-out attempt is an attempt
    #: failure. A call's own httpx ``timeout=`` replaces it.
    timeout: PositiveDuration = DEFAULT_ATTEMPT_TIMEOUT
    #: How long the breaker stays open before it lets probe calls through (half-open).
    reset_timeout: PositiveDuration = DEFAULT_RESET_TIMEOUT
    #: Whether a per-call ``fallback=`` may answer for this service.
    fallback_enabled: bool = True
    #: ``false``: the breaker starts ``disabled`` (admits every call, records nothing).
    enabled: bool = True
    #: ``count``: the window is the last ``sliding_window_size`` calls; ``time``: the last ``sliding_window_size``
    #: seconds.
    sliding_window_type: Literal["count", "time"] = "count"
    #: The last N calls (``count``) or the last N seconds (``time``).
    sliding_window_size: int = Field(default=DEFAULT_SLIDING_WINDOW_SIZE, ge=1, le=100_000)
    #: Calls that take at least this long count as slow; ``null``: no call is slow.
    slow_call_duration: PositiveDuration | None = None
    #: Slow calls, in percent of the calls inside the window, that open the breaker (at least ``failure_threshold`` of
    #: them; only with ``slow_call_duration``).
    slow_call_rate_threshold: float = Field(default=100.0, gt=0, le=100)
    #: Probe calls let through while half-open. That many successes close the breaker; one failure opens it again.
    half_open_max_calls: int = Field(default=DEFAULT_HALF_OPEN_MAX_CALLS, ge=1, le=1000)
    #: Each consecutive trip multiplies the open period by this, up to ``max_reset_timeout``.
    reset_timeout_multiplier: float = Field(default=1.0, ge=1.0, le=100.0)
    #: Upper bound of the open period as ``reset_timeout_multiplier`` grows it.
    max_reset_timeout: PositiveDuration = DEFAULT_MAX_RESET_TIMEOUT
    #: Response statuses the breaker counts as failures. Any other response, 4xx included, is a success; no response at
    #: all is a failure.
    failure_on_status: list[StatusCode] = Field(default_factory=lambda: list(range(500, 600)))

    @model_validator(mode="after")
    def _reset_ordered(self) -> CircuitBreakerConfig:
        if self.sliding_window_type == "count" and self.failure_threshold > self.sliding_window_size:
            raise ValueError(
                f"failure_threshold ({self.failure_threshold}) is larger than the count window "
                f"sliding_window_size ({self.sliding_window_size}): the breaker could never open"
            )
        if self.max_reset_timeout < self.reset_timeout:
            raise ValueError(
                f"max_reset_timeout ({self.max_reset_timeout}s) is smaller than reset_timeout ({self.reset_timeout}s)"
            )
        return self


# ------------------------------------------------------------------------------------ outlier detection

DEFAULT_CONSECUTIVE_FAILURES = 5
DEFAULT_BASE_EJECTION_TIME = 30.0
DEFAULT_MAX_EJECTION_TIME = 300.0


class OutlierDetectionConfig(Section):
    """Per-endpoint ejection, as Envoy: N failures in a row eject an endpoint for a growing time."""

    #: ``false``: no endpoint is ever ejected.
    enabled: bool = True
    #: Failures in a row (on one endpoint) that eject it.
    consecutive_failures: int = Field(default=DEFAULT_CONSECUTIVE_FAILURES, ge=1)
    #: The n-th ejection of an endpoint lasts n times this, up to ``max_ejection_time``.
    base_ejection_time: PositiveDuration = DEFAULT_BASE_EJECTION_TIME
    #: Upper bound of one ejection.
    max_ejection_time: PositiveDuration = DEFAULT_MAX_EJECTION_TIME
    #: At most this share of a service's endpoints is ejected at once; the last endpoint still in is never ejected.
    max_ejection_percent: float = Field(default=100.0, ge=0, le=100)

    @model_validator(mode="after")
    def _ejection_ordered(self) -> OutlierDetectionConfig:
        if self.max_ejection_time < self.base_ejection_time:
            raise ValueError(
                f"max_ejection_time ({self.max_ejection_time}s) is smaller than base_ejection_time "
                f"({self.base_ejection_time}s)"
            )
        return self


# --------------------------------------------------------------------------------------------- bulkhead

DEFAULT_QUEUE_TIMEOUT = 1.0


class BulkheadConfig(Section):
    """Per upstream service: at most ``max_concurrent`` calls at once (None: no limit), ``max_queue`` waiting."""

    #: Calls to the service in flight at once; ``null``: no limit (the layer passes calls straight through).
    max_concurrent: int | None = Field(default=None, ge=1)
    #: Calls that may wait for a free slot; any more are refused at once with ``BulkheadFull``.
    max_queue: int = Field(default=0, ge=0)
    #: How long a queued call waits for a slot before it fails with ``BulkheadFull``.
    queue_timeout: PositiveDuration = DEFAULT_QUEUE_TIMEOUT


# ------------------------------------------------------------------------------------------------ retry

DEFAULT_MAX_RETRIES = 2
DEFAULT_INITIAL_DELAY = 0.1
DEFAULT_MAX_DELAY = 2.0
DEFAULT_RETRY_ON_STATUS = (502, 503, 504)
DEFAULT_BUDGET_PERCENT = 20.0
DEFAULT_BUDGET_TTL = 10.0
DEFAULT_MIN_RETRIES_PER_SECOND = 10.0
DEFAULT_MAX_BODY_BYTES = 1 << 20


class RetryConfig(Section):
    """Retries of one call: how many, how far apart; ``max_elapsed`` is the default overall deadline."""

    #: Retries after the first attempt: a call makes at most ``1 + max_retries`` attempts.
    max_retries: int = Field(default=DEFAULT_MAX_RETRIES, ge=0, le=100)
    #: The base delay before the first retry.
    initial_delay: NonNegativeDuration = DEFAULT_INITIAL_DELAY
    #: Upper bound of any one delay between attempts, a ``Retry-After`` hint included.
    max_delay: PositiveDuration = DEFAULT_MAX_DELAY
    #: How the delay grows from ``initial_delay``: ``exponential`` (doubling), ``fibonacci``, ``linear``, ``fixed``, or
    #: ``decorrelated-jitter`` (random between ``initial_delay`` and three times the previous delay).
    backoff_strategy: BackoffStrategy = "exponential"
    #: How the delay is spread: ``full`` (random between 0 and the delay), ``equal`` (half the delay plus a random half)
    #: or ``none``. ``decorrelated-jitter`` brings its own randomness.
    jitter: Jitter = "full"
    #: The default overall deadline of a call, across every attempt and backoff; ``null``: none.
    max_elapsed: PositiveDuration | None = None
    #: Response statuses that are retried (idempotent requests only); when retries run out the last response is
    #: returned.
    retry_on_status: list[StatusCode] = Field(default_factory=lambda: list(DEFAULT_RETRY_ON_STATUS))
    #: Retry budget: retries may add at most this share of the requests of the last ``budget_ttl`` ...
    budget_percent: float = Field(default=DEFAULT_BUDGET_PERCENT, ge=0, le=1000)
    #: The window the retry budget counts requests and retries over.
    budget_ttl: PositiveDuration = DEFAULT_BUDGET_TTL
    #: ... plus this many retries per second, so a quiet service can still retry.
    min_retries_per_second: float = Field(default=DEFAULT_MIN_RETRIES_PER_SECOND, ge=0)
    #: Request bodies up to this size are kept so they can be sent again; larger ones are not retried.
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=0)
    #: Hedging for idempotent calls: a second attempt after this delay (seconds, or "p95"); None: off.
    hedge_delay: PositiveDuration | Literal["p95"] | None = None

    @model_validator(mode="after")
    def _delays_ordered(self) -> RetryConfig:
        if self.initial_delay > self.max_delay:
            raise ValueError(f"initial_delay ({self.initial_delay}s) is larger than max_delay ({self.max_delay}s)")
        return self
