"""The health sections: ``active_health_check`` (probing upstream endpoints) and ``health_check`` (this
service's own probes and shutdown)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field, field_validator

from .types import NonNegativeDuration, PositiveDuration, Section, StatusCode, expand_statuses

__all__ = [
    "DEFAULT_ACTIVE_CHECK_INTERVAL",
    "DEFAULT_ACTIVE_CHECK_JITTER",
    "DEFAULT_ACTIVE_CHECK_PATH",
    "DEFAULT_ACTIVE_CHECK_TIMEOUT",
    "DEFAULT_CHECK_TIMEOUT",
    "DEFAULT_DRAIN_DELAY",
    "DEFAULT_EXPECTED_STATUSES",
    "DEFAULT_HEALTHY_THRESHOLD",
    "DEFAULT_HEALTH_FAILURE_THRESHOLD",
    "DEFAULT_LIVENESS_INTERVAL",
    "DEFAULT_LOOP_LAG_THRESHOLD",
    "DEFAULT_READINESS_INTERVAL",
    "DEFAULT_SHUTDOWN_GRACE",
    "DEFAULT_STUCK_TASK_THRESHOLD",
    "DEFAULT_UNHEALTHY_THRESHOLD",
    "ActiveHealthCheckConfig",
    "HealthCheckConfig",
]


# ---------------------------------------------------------------------------------- active health checks

DEFAULT_ACTIVE_CHECK_PATH = "/health/ready"
DEFAULT_ACTIVE_CHECK_INTERVAL = 10.0
DEFAULT_ACTIVE_CHECK_TIMEOUT = 1.0
DEFAULT_HEALTHY_THRESHOLD = 2
DEFAULT_UNHEALTHY_THRESHOLD = 3
DEFAULT_ACTIVE_CHECK_JITTER = 0.1
DEFAULT_EXPECTED_STATUSES = (200, 400)  # 200-399


class ActiveHealthCheckConfig(Section):
    """Envoy-style active health checks: a periodic ``GET path`` on every endpoint of a service.

    An endpoint is marked down after ``unhealthy_threshold`` failed checks in a row and back up after
    ``healthy_threshold`` passes in a row; the balancer skips endpoints marked down (see ``panic_threshold``).
    """

    #: Probe this service's endpoints (off by default; turn it on globally or per service).
    enabled: bool = False
    #: The path (and query) each probe GETs, sent with the endpoint's ``Host``.
    path: str = DEFAULT_ACTIVE_CHECK_PATH
    #: Time between two probes of one endpoint, from the start of one to the start of the next (plus jitter).
    interval: PositiveDuration = DEFAULT_ACTIVE_CHECK_INTERVAL
    #: A probe with no complete answer within this time has failed.
    timeout: PositiveDuration = DEFAULT_ACTIVE_CHECK_TIMEOUT
    #: Passed probes in a row that bring an endpoint marked down back.
    healthy_threshold: int = Field(default=DEFAULT_HEALTHY_THRESHOLD, ge=1, le=1000)
    #: Failed probes in a row (connect error, timeout, unexpected status) that mark an endpoint down.
    unhealthy_threshold: int = Field(default=DEFAULT_UNHEALTHY_THRESHOLD, ge=1, le=1000)
    #: Each wait between probes is ``interval`` plus a random share of it up to this fraction, and an
    #: endpoint's first probe comes at a random point within that share, so replicas are not probed in
    #: lock step. 0: exactly every ``interval``.
    jitter: float = Field(default=DEFAULT_ACTIVE_CHECK_JITTER, ge=0, le=1)
    #: Response statuses that pass; anything else fails. Ranges may be written as strings: ``["200-399"]``.
    expected_statuses: Annotated[list[StatusCode], BeforeValidator(expand_statuses), Field(min_length=1)] = Field(
        default_factory=lambda: list(range(*DEFAULT_EXPECTED_STATUSES))
    )

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"path {value!r} must start with '/' (e.g. {DEFAULT_ACTIVE_CHECK_PATH!r})")
        if any(ch.isspace() or not ch.isprintable() for ch in value) or "#" in value:
            raise ValueError(f"path {value!r}: no whitespace, control characters or fragment")
        return value


# ----------------------------------------------------------------------------------------------- health

DEFAULT_LIVENESS_INTERVAL = 10.0
DEFAULT_READINESS_INTERVAL = 5.0
DEFAULT_HEALTH_FAILURE_THRESHOLD = 3
DEFAULT_CHECK_TIMEOUT = 2.0
DEFAULT_LOOP_LAG_THRESHOLD = 1.0
DEFAULT_STUCK_TASK_THRESHOLD = 60.0
DEFAULT_DRAIN_DELAY = 5.0
DEFAULT_SHUTDOWN_GRACE = 20.0


class HealthCheckConfig(Section):
    """How often registered checks run, how many results in a row change a probe, and how shutdown drains."""

    #: How often liveness checks run.
    liveness_interval: PositiveDuration = DEFAULT_LIVENESS_INTERVAL
    #: How often readiness checks run, and startup checks until they have all passed once.
    readiness_interval: PositiveDuration = DEFAULT_READINESS_INTERVAL
    #: Failures in a row after which a critical check fails its probe (503).
    failure_threshold: int = Field(default=DEFAULT_HEALTH_FAILURE_THRESHOLD, ge=1)
    #: Passes in a row that bring a failed check back (a check's own ``success_threshold`` wins).
    success_threshold: int = Field(default=1, ge=1)
    #: Time limit of one check run; a check that takes longer has failed.
    check_timeout: PositiveDuration = DEFAULT_CHECK_TIMEOUT
    #: Liveness fails when the event loop falls this far behind (a blocking call in async code); ``null``:
    #: no event-loop check.
    event_loop_lag_threshold: PositiveDuration | None = DEFAULT_LOOP_LAG_THRESHOLD
    #: Liveness fails when a check has been running this long (a sync check stuck in its thread); a health
    #: loop that has stopped fails it at once.
    stuck_task_threshold: PositiveDuration = DEFAULT_STUCK_TASK_THRESHOLD
    #: On SIGTERM, readiness answers 503 this long before the server stops taking connections, so that
    #: Kubernetes endpoints and load balancers stop sending new requests first.
    drain_delay: NonNegativeDuration = DEFAULT_DRAIN_DELAY
    #: After the drain, requests in flight get this long to complete before they are cancelled.
    shutdown_grace: NonNegativeDuration = DEFAULT_SHUTDOWN_GRACE
