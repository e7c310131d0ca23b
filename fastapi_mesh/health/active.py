"""Active health checks of upstream endpoints, as Envoy does them: a periodic ``GET`` on every endpoint.

One ``ActiveHealthChecker`` per service with ``active_health_check.enabled``. Each round it reads the
service's current endpoints from its balancer (endpoints that joined get a schedule, departed ones are
forgotten), probes those that are due, and sets ``EndpointState.healthy``:

- a probe passes when the endpoint answers ``GET <path>`` with one of ``expected_statuses`` within
  ``timeout``; a connect error, a timeout or any other status is a failure;
- ``unhealthy_threshold`` failures in a row mark an endpoint down (the balancer skips it, outside panic
  mode); ``healthy_threshold`` passes in a row bring it back;
- a new endpoint is healthy until its probes say otherwise, so a service takes traffic at once when it
  starts and a discovery update never empties it; its first probe comes within ``jitter * interval``;
- each endpoint's next probe comes ``interval`` plus a random share (up to ``jitter``) of it after the
  start of its last one, so replicas are not probed in lock step;
- a passing probe of an endpoint that outlier detection has ejected ends the ejection (Envoy's default).

Time goes through the ``Clock`` and the jitter through the ``random.Random`` given, so a test with a
``ManualClock`` and a seeded generator knows every probe time in advance.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from typing import Any

import httpx

from ..balancing.balancer import Balancer
from ..balancing.endpoint import EndpointState
from ..clock import Clock, MonotonicClock
from ..discovery.sync import short_error
from ..settings import ActiveHealthCheckConfig

__all__ = ["USER_AGENT", "ActiveHealthChecker"]

logger = logging.getLogger("fastapi_mesh.health")

#: The ``user-agent`` of every probe, so an upstream can tell probes from calls (and leave them out of logs).
USER_AGENT = "fastapi-mesh-health-check"


class _Target:
    """What the checker knows of one endpoint: its schedule and its recent results."""

    __slots__ = (
        "checks",
        "due",
        "failed_checks",
        "failures",
        "last_check",
        "last_error",
        "last_result",
        "last_status",
        "passes",
        "state",
    )

    def __init__(self, state: EndpointState, due: float) -> None:
        self.state = state
        self.due = due
        self.passes = 0
        self.failures = 0
        self.checks = 0
        self.failed_checks = 0
        self.last_result: str | None = None
        self.last_status: int | None = None
        self.last_error: str | None = None
        self.last_check: float | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "url": self.state.url,
            "healthy": self.state.healthy,
            "last_result": self.last_result,
            "last_status": self.last_status,
            "last_error": self.last_error,
            "last_check": self.last_check,
            "consecutive_passes": self.passes,
            "consecutive_failures": self.failures,
            "checks": self.checks,
            "failed_checks": self.failed_checks,
        }


class _Borrowed(httpx.AsyncBaseTransport):
    """A transport somebody else owns: closing the probe client leaves it open."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        return None


class ActiveHealthChecker:
    """Probes every endpoint of one service's balancer and marks them up or down.

    The mesh makes one for each service whose policy enables the checks; by hand::

        config = MeshSettings(active_health_check={"enabled": True, "path": "/healthz"}).active_health_check
        checker = ActiveHealthChecker("users", config, balancer, clock=clock, rng=random.Random(7))
        checker.start()                  # probes in the background until ``await checker.stop()``
        delay = await checker.run_once()  # or one round at a time: probe what is due, sleep ``delay``

    ``transport`` (not closed here) replaces the probes' own connection pool, which verifies ``https``
    endpoints with ``verify`` (the mesh's mTLS context when mTLS is on). ``failed_checks`` counts every
    failed probe since the checker was made; ``as_dict()`` is what ``/mesh/status`` shows.
    """

    __slots__ = (
        "_client",
        "_clock",
        "_expected",
        "_rng",
        "_targets",
        "_task",
        "_transport",
        "_verify",
        "balancer",
        "config",
        "failed_checks",
        "service",
    )

    def __init__(
        self,
        service: str,
        config: ActiveHealthCheckConfig,
        balancer: Balancer,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.service = service
        self.config = config
        self.balancer = balancer
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._rng = rng if rng is not None else random.Random()
        self._transport = transport
        self._verify = verify
        self._expected = frozenset(config.expected_statuses)
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._targets: dict[str, _Target] = {}
        #: Failed probes, all endpoints together, since the checker was made.
        self.failed_checks = 0

    # ------------------------------------------------------------------------------------- lifecycle

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        """Start probing in the background (on the running loop); again after ``stop``, with ``transport``
        replacing the one given before (the mesh's new pool after a restart). No-op if running."""
        if transport is not None:
            self._transport = transport
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"fastapi-mesh active health checks {self.service}"
            )

    def cancel(self) -> None:
        """Stop without waiting (the task closes the probe client as it ends)."""
        if self._task is not None:
            self._task.cancel()

    async def stop(self) -> None:
        """Stop probing and close the probe client. Endpoints keep the health they had."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._close_client()

    async def _run(self) -> None:
        try:
            while True:
                delay = await self.run_once()
                await self._clock.sleep(delay)
        finally:
            await self._close_client()

    async def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # ----------------------------------------------------------------------------------------- rounds

    async def run_once(self) -> float:
        """One round: take in the balancer's current endpoints, probe those due (together), and return the
        seconds until the next one is due (at most ``interval``, so new endpoints are noticed)."""
        now = self._clock.now()
        self._reconcile(now)
        due = [target for target in self._targets.values() if target.due <= now]
        if due:
            for target in due:
                target.due = now + self._period()
            await asyncio.gather(*(self._check(target) for target in due))
        now = self._clock.now()
        wake = now + self.config.interval
        for target in self._targets.values():
            if target.due < wake:
                wake = target.due
        return max(wake - now, 0.0)

    def _reconcile(self, now: float) -> None:
        """Follow the balancer: a schedule for each endpoint that joined, nothing kept of those that left."""
        targets: dict[str, _Target] = {}
        known = self._targets
        jitter = self.config.jitter * self.config.interval
        for state in self.balancer.endpoints:
            target = known.get(state.url)
            if target is None or target.state is not state:  # new, or gone and back (a fresh state)
                target = _Target(state, now + jitter * self._rng.random())
            targets[state.url] = target
        departed = known.keys() - targets.keys()
        if departed:
            logger.debug("active health checks of %r: forgetting %s", self.service, ", ".join(sorted(departed)))
        self._targets = targets

    def _period(self) -> float:
        config = self.config
        return config.interval * (1.0 + config.jitter * self._rng.random())

    async def _check(self, target: _Target) -> None:
        ok, status, error = await self.probe(target.state)
        self._record(target, ok, status, error)

    async def probe(self, state: EndpointState) -> tuple[bool, int | None, str | None]:
        """One probe of ``state``'s endpoint: (passed, status or None, error or None). Never raises."""
        config = self.config
        endpoint = state.endpoint
        headers = {"host": endpoint.host_header, "user-agent": USER_AGENT}
        try:
            async with asyncio.timeout(config.timeout):
                response = await self._http().get(endpoint.url + config.path, headers=headers)
        except (TimeoutError, httpx.TimeoutException):
            return False, None, f"timeout: no answer within {config.timeout:g}s"
        except Exception as exc:  # connect errors, TLS errors, a broken answer: all mean the probe failed
            return False, None, short_error(exc)
        status = response.status_code
        if status in self._expected:
            return True, status, None
        return False, status, f"unexpected status {status}"

    def _http(self) -> httpx.AsyncClient:
        client = self._client
        if client is None:
            transport: httpx.AsyncBaseTransport = (
                _Borrowed(self._transport)
                if self._transport is not None
                else httpx.AsyncHTTPTransport(verify=self._verify, trust_env=False)
            )
            client = self._client = httpx.AsyncClient(
                transport=transport, trust_env=False, follow_redirects=False, timeout=self.config.timeout
            )
        return client

    def _record(self, target: _Target, ok: bool, status: int | None, error: str | None) -> None:
        state = target.state
        target.checks += 1
        target.last_check = time.time()
        target.last_status = status
        target.last_error = error
        if ok:
            target.last_result = "pass"
            target.passes += 1
            target.failures = 0
            if not state.healthy and target.passes >= self.config.healthy_threshold:
                state.healthy = True
                logger.info(
                    "endpoint %s of %r is back: %d active health checks passed in a row",
                    state.url,
                    self.service,
                    target.passes,
                )
            outlier = self.balancer.outlier
            if state.healthy and outlier.is_ejected(state.url):
                outlier.uneject(state.url)
            return
        target.last_result = "fail"
        target.failures += 1
        target.passes = 0
        target.failed_checks += 1
        self.failed_checks += 1
        if state.healthy and target.failures >= self.config.unhealthy_threshold:
            state.healthy = False
            logger.warning(
                "endpoint %s of %r marked down: %d active health checks failed in a row (%s)",
                state.url,
                self.service,
                target.failures,
                error,
            )

    # ----------------------------------------------------------------------------------------- status

    def as_dict(self) -> dict[str, Any]:
        """The settings in force and, per endpoint, its last result and runs of passes and failures."""
        config = self.config
        return {
            "path": config.path,
            "interval": config.interval,
            "timeout": config.timeout,
            "healthy_threshold": config.healthy_threshold,
            "unhealthy_threshold": config.unhealthy_threshold,
            "running": self.running,
            "failed_checks": self.failed_checks,
            "endpoints": [target.as_dict() for target in self._targets.values()],
        }
