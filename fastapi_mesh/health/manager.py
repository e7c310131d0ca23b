"""Kubernetes-style liveness, readiness and startup, from checks that run in the background.

Probes never run checks themselves: they answer from the last results, so a slow dependency cannot make
a probe time out. A check fails a probe after ``health_check.failure_threshold`` failures in a row (at
once if it has never passed), and only when it is ``critical``; a failing non-critical check makes the
status ``degraded`` (still 200).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Literal

from ..clock import Clock
from ..settings import HealthCheckConfig

__all__ = ["CheckKind", "HealthCheckFn", "HealthManager"]

logger = logging.getLogger("fastapi_mesh.health")

CheckKind = Literal["liveness", "readiness", "startup"]
#: A check returns True/None when healthy, False when not; raising counts as failing.
HealthCheckFn = Callable[[], Awaitable[bool | None] | bool | None]

HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"


class _Check:
    __slots__ = (
        "consecutive_failures",
        "critical",
        "ever_passed",
        "failure_threshold",
        "fn",
        "kind",
        "last_error",
        "last_run",
        "name",
        "passed",
    )

    def __init__(
        self, name: str, fn: HealthCheckFn, kind: CheckKind, critical: bool, failure_threshold: int | None = None
    ) -> None:
        self.name = name
        #: Failures in a row that fail the probe; None: ``health_check.failure_threshold``.
        self.failure_threshold = failure_threshold
        self.fn = fn
        self.kind = kind
        self.critical = critical
        self.consecutive_failures = 0
        self.passed: bool | None = None
        self.ever_passed = False
        self.last_error: str | None = None
        self.last_run: float | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "status": "unknown" if self.passed is None else ("pass" if self.passed else "fail"),
            "critical": self.critical,
            "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error,
        }


class HealthManager:
    """Holds the checks and the lifecycle (starting, started, draining) behind the three probes.

    >>> health = HealthManager(HealthCheckConfig(), "api")
    >>> health.readiness()["status"], health.liveness()["status"]
    ('unhealthy', 'healthy')
    """

    def __init__(self, config: HealthCheckConfig, service_name: str, clock: Clock | None = None) -> None:
        from ..clock import MonotonicClock

        self.config = config
        self.service_name = service_name
        self._clock: Clock = clock or MonotonicClock()
        self._checks: dict[str, _Check] = {}
        self._phase: Literal["starting", "started", "draining", "stopped"] = "starting"
        self._startup_done = False
        self._started_at: float | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------------------------------ checks

    def add_check(
        self,
        name: str,
        check: HealthCheckFn,
        *,
        kind: CheckKind = "readiness",
        critical: bool = True,
        failure_threshold: int | None = None,
    ) -> None:
        """Register ``check`` (sync or async) under ``name`` for one probe ``kind``. ``failure_threshold``:
        failures in a row that fail the probe (None: ``health_check.failure_threshold``)."""
        if kind not in ("liveness", "readiness", "startup"):
            raise ValueError(f"health check kind must be liveness, readiness or startup, not {kind!r}")
        if failure_threshold is not None and failure_threshold < 1:
            raise ValueError(f"failure_threshold must be at least 1, not {failure_threshold!r}")
        self._checks[name] = _Check(name, check, kind, critical, failure_threshold)

    async def run(self, kind: CheckKind) -> None:
        """Run every check of ``kind`` once, each bounded by ``health_check.check_timeout``."""
        checks = [c for c in self._checks.values() if c.kind == kind]
        await asyncio.gather(*(self._run_one(c) for c in checks))
        if kind == "startup" and self._phase == "started" and self._startup_passed():
            self._startup_done = True

    async def _run_one(self, check: _Check) -> None:
        error: str | None = None
        try:
            async with asyncio.timeout(self.config.check_timeout):
                result = check.fn()
                if inspect.isawaitable(result):
                    result = await result
            ok = result is None or bool(result)
            if not ok:
                error = "check returned False"
        except TimeoutError:
            ok, error = False, f"timed out after {self.config.check_timeout}s"
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # we are being stopped
            ok, error = False, "CancelledError: the check's own work was cancelled"
        except Exception as exc:
            ok, error = False, f"{type(exc).__name__}: {exc}"
        check.last_run = self._clock.now()
        check.passed = ok
        check.ever_passed = check.ever_passed or ok
        check.last_error = error
        check.consecutive_failures = 0 if ok else check.consecutive_failures + 1

    def _startup_passed(self) -> bool:
        """Every startup check has passed at least once (not necessarily in the same round)."""
        return all(c.ever_passed for c in self._checks.values() if c.kind == "startup")

    # --------------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Run every check once, mark the app started, then keep checking in the background."""
        self._phase = "starting"
        self._startup_done = False  # a restart proves start-up again: every startup check must pass anew
        for check in self._checks.values():
            if check.kind == "startup":
                check.ever_passed = False
        await asyncio.gather(self.run("startup"), self.run("liveness"), self.run("readiness"))
        self._phase = "started"
        self._started_at = self._clock.now()
        if self._startup_passed():
            self._startup_done = True
        self._tasks = [
            asyncio.create_task(self._loop(("liveness",), self.config.liveness_interval)),
            asyncio.create_task(self._loop(("readiness", "startup"), self.config.readiness_interval)),
        ]

    async def _loop(self, kinds: tuple[CheckKind, ...], interval: float) -> None:
        # Real waits, whatever the clock: a test clock that jumps ahead on sleep would spin this loop.
        # Tests drive checks with ``run(kind)`` instead.
        while True:
            await asyncio.sleep(interval)
            for kind in kinds:
                if kind == "startup" and self._startup_done:
                    continue
                try:
                    await self.run(kind)
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise
                    logger.warning("health checks (%s): a round was cancelled; the loop goes on", kind)
                except Exception:  # pragma: no cover - _run_one already catches check failures
                    logger.exception("health checks (%s) failed to run", kind)

    def drain(self) -> None:
        """Readiness answers 503 from now on (shutdown has begun); liveness is unaffected."""
        if self._phase != "stopped":
            self._phase = "draining"

    async def stop(self) -> None:
        self.drain()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._phase = "stopped"

    # ----------------------------------------------------------------------------------------- probes

    def _summary(self, kind: CheckKind, reason: str | None = None) -> dict[str, object]:
        checks = {c.name: c.as_dict() for c in self._checks.values() if c.kind == kind}
        threshold = self.config.failure_threshold
        failing = [c for c in self._checks.values() if c.kind == kind and c.consecutive_failures > 0]
        status = HEALTHY
        # failure_threshold guards against flapping; a critical check that has never passed fails at once.
        if reason is not None or any(
            c.critical and (c.consecutive_failures >= (c.failure_threshold or threshold) or not c.ever_passed)
            for c in failing
        ):
            status = UNHEALTHY
        elif failing:
            status = DEGRADED
        body: dict[str, object] = {"status": status, "service": self.service_name, "checks": checks}
        if reason is not None:
            body["reason"] = reason
        if self._started_at is not None:
            body["uptime_s"] = round(self._clock.now() - self._started_at, 3)
        return body

    def liveness(self) -> dict[str, object]:
        """Is the process alive? Fails only on critical liveness checks; never while starting up."""
        return self._summary("liveness")

    def readiness(self) -> dict[str, object]:
        """May traffic come in? Not before start-up ends (every startup check passed once), not while
        draining, not on failing checks."""
        if self._phase in ("starting", "draining", "stopped"):
            return self._summary("readiness", self._phase)
        if not self._startup_done:
            return self._summary("readiness", "startup checks have not all passed yet")
        return self._summary("readiness")

    def startup(self) -> dict[str, object]:
        """Has start-up finished? Once it has (all startup checks passed once), it stays finished."""
        if self._phase == "starting":
            return self._summary("startup", "starting")
        if self._startup_done:
            body = self._summary("startup")
            body["status"] = HEALTHY
            return body
        return self._summary("startup", "startup checks have not all passed yet")

    @staticmethod
    def status_code(body: dict[str, object]) -> int:
        return 503 if body["status"] == UNHEALTHY else 200
