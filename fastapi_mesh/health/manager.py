"""Kubernetes-style liveness, readiness and startup, from checks that run in the background.

Probes never run checks themselves: they answer from the last results, so a slow dependency cannot make
a probe time out. Each check runs on its own interval (sync checks in a worker thread, so they never block
the event loop) with Kubernetes threshold semantics: ``failure_threshold`` failures in a row fail it,
``success_threshold`` passes in a row bring it back, and a check that has never passed is failing. A
failing ``critical`` check makes its probe ``unhealthy`` (503); a failing non-critical one makes it
``degraded`` (still 200).

Liveness has two built-in checks, about the process itself and nothing else: ``event-loop`` (the loop
keeps up within ``health_check.event_loop_lag_threshold``) and ``background-tasks`` (no check stuck and no
health loop dead for ``health_check.stuck_task_threshold``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from ..clock import Clock, MonotonicClock
from ..discovery.sync import short_error
from ..settings import HealthCheckConfig

__all__ = ["CheckKind", "HealthCheckFn", "HealthManager"]

logger = logging.getLogger("fastapi_mesh.health")

CheckKind = Literal["liveness", "readiness", "startup"]
#: A check returns True/None when healthy, False when not; raising counts as failing.
HealthCheckFn = Callable[[], Awaitable[bool | None] | bool | None]

HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"
KINDS: tuple[CheckKind, ...] = ("liveness", "readiness", "startup")
EVENT_LOOP_CHECK = "event-loop"
BACKGROUND_TASKS_CHECK = "background-tasks"


class _Check:
    __slots__ = (
        "consecutive_failures",
        "consecutive_successes",
        "critical",
        "ever_passed",
        "failure_threshold",
        "fn",
        "healthy",
        "interval",
        "is_async",
        "kind",
        "last_duration",
        "last_error",
        "last_failure",
        "last_success",
        "name",
        "passed",
        "running_since",
        "success_threshold",
        "thread",
        "timeout",
    )

    def __init__(
        self,
        name: str,
        fn: HealthCheckFn,
        kind: CheckKind,
        critical: bool,
        config: HealthCheckConfig,
        *,
        interval: float | None = None,
        timeout: float | None = None,
        failure_threshold: int | None = None,
        success_threshold: int | None = None,
    ) -> None:
        self.name = name
        self.fn = fn
        self.kind = kind
        self.critical = critical
        # The check's own values, else the ``health_check`` settings (the interval of its kind).
        self.interval = interval or (config.liveness_interval if kind == "liveness" else config.readiness_interval)
        self.timeout = timeout or config.check_timeout
        self.failure_threshold = failure_threshold or config.failure_threshold
        self.success_threshold = success_threshold or config.success_threshold
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004 - an instance with an async __call__
        )
        #: Outcome of the last run (None: never ran).
        self.passed: bool | None = None
        #: The thresholded verdict the probe uses.
        self.healthy = False
        self.ever_passed = False
        self.consecutive_failures = 0
        self.consecutive_successes = 0
        self.last_error: str | None = None
        self.last_success: float | None = None  # wall time
        self.last_failure: float | None = None  # wall time
        self.last_duration: float | None = None
        #: Clock time the current run began (None: not running).
        self.running_since: float | None = None
        #: The worker thread of a sync check is still busy (a timed-out run cannot be stopped).
        self.thread: asyncio.Future[Any] | None = None

    def record(self, ok: bool, error: str | None) -> None:
        self.passed = ok
        self.last_error = error
        if ok:
            self.consecutive_successes += 1
            self.consecutive_failures = 0
            self.ever_passed = True
            if not self.healthy and self.consecutive_successes >= self.success_threshold:
                self.healthy = True
        else:
            self.consecutive_failures += 1
            self.consecutive_successes = 0
            if self.healthy and self.consecutive_failures >= self.failure_threshold:
                self.healthy = False

    def as_dict(self, verbose: bool) -> dict[str, object]:
        body: dict[str, object] = {
            "status": "unknown" if self.passed is None else ("pass" if self.healthy else "fail"),
            "critical": self.critical,
            "consecutive_failures": self.consecutive_failures,
            "last_success": _iso(self.last_success),
            "last_failure": _iso(self.last_failure),
            "duration_ms": None if self.last_duration is None else round(self.last_duration * 1000, 3),
            "last_error": self.last_error,
        }
        if verbose:
            body.update(
                kind=self.kind,
                last_result=None if self.passed is None else ("pass" if self.passed else "fail"),
                consecutive_successes=self.consecutive_successes,
                interval_s=self.interval,
                timeout_s=self.timeout,
                failure_threshold=self.failure_threshold,
                success_threshold=self.success_threshold,
                running=self.running_since is not None,
            )
        return body


def _iso(wall: float | None) -> str | None:
    if wall is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall)) + f".{int(wall % 1 * 1000):03d}Z"


def _consume(future: asyncio.Future[Any]) -> None:
    """Retrieve a finished worker thread's outcome, so a late failure is not reported as never retrieved."""
    if not future.cancelled():
        future.exception()


class LoopLagMonitor:
    """Measures how late the event loop wakes a sleeper: the lag a blocking call in async code causes."""

    def __init__(self, every: float) -> None:
        self.every = every
        #: The largest lag seen since the last ``take()``, in seconds.
        self.worst = 0.0
        self.last = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(self.every)
            self.last = max(0.0, loop.time() - start - self.every)
            self.worst = max(self.worst, self.last)

    def take(self) -> float:
        worst, self.worst = max(self.worst, self.last), 0.0
        return worst


class HealthManager:
    """Holds the checks and the lifecycle (starting, started, draining) behind the three probes.

    >>> health = HealthManager(HealthCheckConfig(), "api")
    >>> health.readiness()["status"], health.liveness()["status"]
    ('unhealthy', 'healthy')
    """

    def __init__(
        self,
        config: HealthCheckConfig,
        service_name: str,
        clock: Clock | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.service_name = service_name
        self._clock: Clock = clock or MonotonicClock()
        self._wall = wall
        self._checks: dict[str, _Check] = {}
        self._phase: Literal["starting", "started", "draining", "stopped"] = "starting"
        self._startup_done = False
        self._started_at: float | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._lag: LoopLagMonitor | None = None
        self._add_builtin_checks()

    # ------------------------------------------------------------------------------------------ checks

    def add_check(
        self,
        name: str,
        check: HealthCheckFn,
        *,
        kind: CheckKind = "readiness",
        critical: bool = True,
        interval: float | None = None,
        timeout: float | None = None,
        failure_threshold: int | None = None,
        success_threshold: int | None = None,
    ) -> None:
        """Register ``check`` (sync or async) under ``name`` for one probe ``kind``. ``None`` values take the
        ``health_check`` settings: ``interval`` (``liveness_interval`` or ``readiness_interval``), ``timeout``
        (``check_timeout``), ``failure_threshold`` and ``success_threshold``."""
        if kind not in KINDS:
            raise ValueError(f"health check kind must be liveness, readiness or startup, not {kind!r}")
        for label, value in (("failure_threshold", failure_threshold), ("success_threshold", success_threshold)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"health check {name!r}: {label} must be a whole number of at least 1, not {value!r}")
        for label, seconds in (("interval", interval), ("timeout", timeout)):
            if seconds is not None and not seconds > 0:
                raise ValueError(f"health check {name!r}: {label} must be a positive number of seconds, not {seconds}")
        if not callable(check):
            raise TypeError(f"health check {name!r} must be callable, not {type(check).__name__}")
        self._checks[name] = _Check(
            name,
            check,
            kind,
            critical,
            self.config,
            interval=interval,
            timeout=timeout,
            failure_threshold=failure_threshold,
            success_threshold=success_threshold,
        )
        if self._phase == "started":
            replaced = self._tasks.pop(name, None)
            if replaced is not None:
                replaced.cancel()  # the loop of the check this one replaces
            self._tasks[name] = asyncio.get_running_loop().create_task(self._loop(self._checks[name]))

    def _add_builtin_checks(self) -> None:
        configured = self.config.event_loop_lag_threshold
        if configured is not None:
            threshold: float = configured
            monitor = self._lag = LoopLagMonitor(min(0.5, threshold / 2))

            async def event_loop() -> bool:  # on the loop: a pool busy with stuck sync checks cannot delay it
                lag = monitor.take()
                if lag > threshold:
                    raise RuntimeError(f"the event loop fell {lag:.2f}s behind (threshold {threshold:g}s)")
                return True

            self._checks[EVENT_LOOP_CHECK] = _Check(EVENT_LOOP_CHECK, event_loop, "liveness", True, self.config)
        self._checks[BACKGROUND_TASKS_CHECK] = _Check(
            BACKGROUND_TASKS_CHECK, self._background_tasks, "liveness", True, self.config
        )

    async def _background_tasks(self) -> bool:
        """No health loop has died; no check is stuck in a run."""
        if self._phase != "started":
            return True
        now = self._clock.now()
        limit = self.config.stuck_task_threshold
        for check in self._checks.values():
            if check.running_since is not None and now - check.running_since > limit:
                raise RuntimeError(f"check {check.name!r} has been running for {now - check.running_since:.0f}s")
            task = self._tasks.get(check.name)
            if task is not None and task.done():
                raise RuntimeError(f"the loop of check {check.name!r} has stopped")
        return True

    async def run(self, kind: CheckKind) -> None:
        """Run every check of ``kind`` once (each bounded by its timeout)."""
        checks = [c for c in self._checks.values() if c.kind == kind]
        await asyncio.gather(*(self._run_one(c) for c in checks))
        self._note_startup()

    async def run_check(self, name: str) -> None:
        """Run the check ``name`` once, now (tests and operators; the probes never do this)."""
        await self._run_one(self._checks[name])
        self._note_startup()

    def _note_startup(self) -> None:
        if self._phase == "started" and not self._startup_done and self._startup_passed():
            self._startup_done = True

    async def _run_one(self, check: _Check) -> None:
        if check.thread is not None and not check.thread.done():
            # A sync check's earlier run is still busy in its thread: never start a second one beside it.
            since = check.running_since if check.running_since is not None else self._clock.now()
            check.record(False, f"still running after {self._clock.now() - since:.1f}s")
            check.last_failure = self._wall()
            return
        timeout = check.timeout
        error: str | None = None
        start = self._clock.now()
        check.running_since = start
        try:
            async with asyncio.timeout(timeout):
                if check.is_async:
                    result = await check.fn()  # type: ignore[misc]
                else:
                    check.thread = asyncio.ensure_future(asyncio.to_thread(check.fn))
                    check.thread.add_done_callback(_consume)
                    result = await asyncio.shield(check.thread)
                    if inspect.isawaitable(result):  # a sync callable that returned an awaitable
                        result = await result
            ok = result is None or bool(result)
            if not ok:
                error = "check returned False"
        except TimeoutError:
            ok, error = False, f"timed out after {timeout:g}s"
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # we are being stopped
            ok, error = False, "CancelledError: the check's own work was cancelled"
        except Exception as exc:
            ok, error = False, short_error(exc)
        finally:
            if check.thread is None or check.thread.done():
                check.running_since = None
                check.thread = None
        now = self._clock.now()
        check.last_duration = now - start
        if ok:
            check.last_success = self._wall()
        else:
            check.last_failure = self._wall()
        was = check.healthy
        had_failed = check.consecutive_failures > 0
        check.record(ok, error)
        if was and not check.healthy:
            logger.warning("health check %r (%s) is failing: %s", check.name, check.kind, error)
        elif check.healthy and not was and had_failed:
            logger.info("health check %r (%s) passes again", check.name, check.kind)

    def _startup_passed(self) -> bool:
        """Every startup check has passed at least once (not necessarily in the same round)."""
        return all(c.ever_passed for c in self._checks.values() if c.kind == "startup")

    # --------------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Run every check once, mark the app started, then keep each check running on its interval."""
        self._phase = "starting"
        self._startup_done = False  # a restart proves start-up again: every startup check must pass anew
        for check in self._checks.values():
            if check.kind == "startup":
                check.ever_passed = False
        loop = asyncio.get_running_loop()
        if self._lag is not None:
            self._tasks["__event_loop_monitor__"] = loop.create_task(self._lag.run())
        await asyncio.gather(self.run("startup"), self.run("liveness"), self.run("readiness"))
        self._phase = "started"
        self._started_at = self._clock.now()
        self._note_startup()
        for check in self._checks.values():
            self._tasks[check.name] = loop.create_task(self._loop(check))

    async def _loop(self, check: _Check) -> None:
        # Real waits, whatever the clock: a test clock that jumps ahead on sleep would spin this loop.
        # Tests drive checks with ``run(kind)`` or ``run_check(name)`` instead.
        while True:
            await asyncio.sleep(check.interval)
            if check.kind == "startup" and self._startup_done:
                continue
            try:
                await self._run_one(check)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                logger.warning("health check %r: a run was cancelled; the loop goes on", check.name)
            self._note_startup()

    def drain(self) -> None:
        """Readiness answers 503 from now on (shutdown has begun); liveness is unaffected."""
        if self._phase != "stopped":
            self._phase = "draining"

    async def stop(self) -> None:
        self.drain()
        tasks = list(self._tasks.values())
        self._tasks = {}
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._phase = "stopped"

    # ----------------------------------------------------------------------------------------- probes

    def _summary(self, kind: CheckKind, reason: str | None = None, verbose: bool = False) -> dict[str, object]:
        mine = [c for c in self._checks.values() if c.kind == kind]
        checks = {c.name: c.as_dict(verbose) for c in mine}
        status = HEALTHY
        if reason is not None or any(c.critical and not c.healthy and c.passed is not None for c in mine):
            status = UNHEALTHY
        elif any(c.passed is False or (not c.healthy and c.passed is not None) for c in mine):
            status = DEGRADED  # a non-critical check failing, or a critical one failing below its threshold
        body: dict[str, object] = {"status": status, "service": self.service_name, "checks": checks}
        if reason is not None:
            body["reason"] = reason
        if self._started_at is not None:
            body["uptime_s"] = round(self._clock.now() - self._started_at, 3)
        return body

    def liveness(self, *, verbose: bool = False) -> dict[str, object]:
        """Is the process alive? Only the process's own checks; never upstream state."""
        return self._summary("liveness", verbose=verbose)

    def readiness(self, *, verbose: bool = False) -> dict[str, object]:
        """May traffic come in? Not before start-up ends (every startup check passed once), not while
        draining, not on failing critical checks."""
        if self._phase in ("starting", "draining", "stopped"):
            return self._summary("readiness", self._phase, verbose)
        if not self._startup_done:
            return self._summary("readiness", "startup checks have not all passed yet", verbose)
        return self._summary("readiness", verbose=verbose)

    def startup(self, *, verbose: bool = False) -> dict[str, object]:
        """Has start-up finished? Once it has (all startup checks passed once), it stays finished."""
        if self._phase == "starting":
            return self._summary("startup", "starting", verbose)
        if self._startup_done:
            body = self._summary("startup", verbose=verbose)
            body["status"] = HEALTHY
            return body
        return self._summary("startup", "startup checks have not all passed yet", verbose)

    @staticmethod
    def status_code(body: dict[str, object]) -> int:
        return 503 if body["status"] == UNHEALTHY else 200
