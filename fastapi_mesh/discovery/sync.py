"""What every background backend shares: one sync task per watched service, stale marking, jittered
backoff, the empty-answer grace, one log line per change of state, and per-service sync status.

A backend subclasses ``BackgroundDiscovery`` and either implements ``fetch`` (one query, for polling and
blocking-query backends) or overrides ``run`` (a watch stream) and reports with ``succeeded``/``failed``.

>>> from fastapi_mesh.settings import DiscoveryConfig
>>> class Fixed(BackgroundDiscovery):
...     backend = "fixed"
...     async def fetch(self, service, cursor):
...         return Answer([Endpoint("http://10.0.0.1:8080")], delay=60.0)
>>> Fixed(DiscoveryConfig()).sync_status()
{}
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NamedTuple

from ..clock import Clock, MonotonicClock
from ..settings import DiscoveryConfig
from .base import Endpoint, Publish

__all__ = ["Answer", "BackgroundDiscovery", "MalformedAnswer", "SyncStatus", "clip", "short_error"]

logger = logging.getLogger("fastapi_mesh.discovery")

#: Services one backend tracks at once: a gateway that takes service names from its URL must not start an
#: unbounded number of background queries. Names beyond this are not watched (and logged once).
MAX_WATCHED_SERVICES = 1024
#: Error text kept in a status: enough to recognise the failure, short enough for a probe body.
_ERROR_CHARS = 200


class MalformedAnswer(ValueError):
    """The backend answered, but not with something that can be read as an endpoint set."""


class Answer(NamedTuple):
    """One query's outcome. ``endpoints`` None: nothing new (a blocking query that timed out unchanged)."""

    endpoints: Sequence[Endpoint] | None
    #: Handed to the next ``fetch`` of the same service (Consul's index); reset to None after an error.
    cursor: Any = None
    #: Seconds to wait before the next ``fetch`` (a DNS TTL); 0 for blocking queries.
    delay: float = 0.0


class SyncStatus:
    """How one service's sync stands; shown under ``discovery`` in ``/mesh/status`` and in metrics."""

    __slots__ = ("empty_since", "endpoints", "errors", "last_error", "last_sync", "service", "stale", "synced")

    def __init__(self, service: str) -> None:
        self.service = service
        #: A good answer has come at least once.
        self.synced = False
        #: The last query failed: the endpoint set shown is the last good one.
        self.stale = False
        self.errors = 0
        self.last_error: str | None = None
        #: Wall-clock time (Unix seconds) of the last good answer.
        self.last_sync: float | None = None
        #: Endpoints in the set the mesh routes on.
        self.endpoints = 0
        #: Clock time an empty answer was first held back (``empty_grace``), or None.
        self.empty_since: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "synced": self.synced,
            "stale": self.stale,
            "errors": self.errors,
            "last_error": self.last_error,
            "last_sync": self.last_sync,
            "endpoints": self.endpoints,
            "empty_held": self.empty_since is not None,
        }


class BackgroundDiscovery:
    """Base of the backends that query something: keeps each watched service current from a task of its
    own, so no request ever waits on the backend.

    ``clock`` times backoff and the empty grace; ``rng`` jitters backoff; ``wall`` stamps ``last_sync``.
    """

    #: The ``discovery.backend`` name (labels metrics and logs).
    backend: ClassVar[str] = "background"
    #: Calls to a service wait (boundedly) for its first sync: see ``Services``.
    syncs_in_background: ClassVar[bool] = True

    def __init__(
        self,
        config: DiscoveryConfig,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.clock: Clock = clock or MonotonicClock()
        self.rng = rng or random.Random()
        self._wall = wall
        self._publish: Publish | None = None
        self._watched: dict[str, None] = {}  # insertion-ordered set
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._grace_tasks: dict[str, asyncio.Task[None]] = {}
        self._status: dict[str, SyncStatus] = {}
        self._published: dict[str, tuple[Endpoint, ...]] = {}
        self._over_limit_logged = False

    # ---------------------------------------------------------------------------------- the protocol

    async def start(self, publish: Publish) -> None:
        """Open the backend (``open``), then start a sync task for every service watched so far."""
        self._publish = publish
        await self.open()
        for service in self._watched:
            self._spawn(service)

    def watch(self, service: str) -> None:
        if service in self._watched:
            return
        if len(self._watched) >= MAX_WATCHED_SERVICES:
            if not self._over_limit_logged:
                self._over_limit_logged = True
                logger.warning(
                    "discovery (%s): already tracking %d services; %r and any further names are not watched",
                    self.backend,
                    MAX_WATCHED_SERVICES,
                    service,
                )
            self._unavailable(service, "too many services watched")
            return
        self._watched[service] = None
        self._status[service] = SyncStatus(service)
        if self._publish is not None:
            self._spawn(service)

    async def stop(self) -> None:
        """Cancel every sync task, then close the backend (``close``)."""
        tasks = [*self._tasks.values(), *self._grace_tasks.values()]
        self._tasks.clear()
        self._grace_tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            await self.close()
        finally:
            self._publish = None

    # ------------------------------------------------------------------------------- for subclasses

    async def open(self) -> None:
        """Acquire what the backend needs (an HTTP client, say). Runs in ``start``."""

    async def close(self) -> None:
        """Release what ``open`` acquired. Runs in ``stop``."""

    async def fetch(self, service: str, cursor: Any) -> Answer:
        """One query for ``service``'s endpoints. Raise on failure (``MalformedAnswer`` for bad payloads)."""
        raise NotImplementedError

    async def run(self, service: str) -> None:
        """Keep ``service`` in sync until cancelled: ``fetch`` in a loop, backing off after failures."""
        cursor: Any = None
        attempt = 0
        while True:
            try:
                answer = await self.fetch(service, cursor)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failed(service, exc)
                cursor = None  # the next query answers at once, so the stale mark clears as soon as it can
                await self.clock.sleep(self.backoff(attempt))
                attempt += 1
                continue
            attempt = 0
            cursor = answer.cursor
            if answer.endpoints is not None:
                self.succeeded(service, answer.endpoints)
            else:
                self.unchanged(service)
            if answer.delay > 0:
                await self.clock.sleep(answer.delay)

    def backoff(self, attempt: int) -> float:
        """Delay before retry ``attempt`` (0-based): doubling from ``discovery.backoff`` up to
        ``discovery.max_backoff``, with equal jitter (half fixed, half random) so replicas spread out."""
        ceiling = min(self.config.max_backoff, self.config.backoff * (2.0 ** min(attempt, 30)))
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)

    def succeeded(self, service: str, endpoints: Sequence[Endpoint]) -> None:
        """A good answer: ``endpoints`` is the service's whole current set."""
        status = self._status_of(service)
        new = tuple(endpoints)
        if status.stale:
            logger.info(
                "discovery (%s) for %r answers again after %d errors; routing on %d endpoints",
                self.backend,
                service,
                status.errors,
                len(new),
            )
        status.synced = True
        status.stale = False
        status.last_error = None
        status.last_sync = self._wall()
        if not new and self._published.get(service) and self.config.empty_grace > 0:
            if status.empty_since is None:
                status.empty_since = self.clock.now()
                logger.warning(
                    "discovery (%s) answered no endpoints for %r; keeping its last %d for %gs before believing it",
                    self.backend,
                    service,
                    len(self._published[service]),
                    self.config.empty_grace,
                )
                self._grace_tasks[service] = asyncio.create_task(self._believe_empty_after_grace(service))
            return
        self._end_grace(service)
        self._deliver(service, new)

    def unchanged(self, service: str) -> None:
        """A good answer that brought nothing new (a blocking query that waited out unchanged)."""
        status = self._status_of(service)
        if status.stale:
            self.succeeded(service, self._published.get(service, ()))
            return
        status.last_sync = self._wall()

    def failed(self, service: str, error: BaseException) -> None:
        """The query failed or its answer was malformed: keep the last good set, mark it stale."""
        status = self._status_of(service)
        status.errors += 1
        status.last_error = short_error(error)
        if not status.stale:
            status.stale = True
            kept = len(self._published.get(service, ()))
            logger.warning(
                "discovery (%s) for %r failed: %s; keeping the last %d endpoints, retrying with backoff",
                self.backend,
                service,
                status.last_error,
                kept,
            )
        if not status.synced:
            self._unavailable(service, status.last_error)

    def sync_status(self) -> dict[str, dict[str, Any]]:
        """Per watched service: synced, stale, errors, last_error, last_sync, endpoints, empty_held."""
        return {name: status.as_dict() for name, status in self._status.items()}

    # -------------------------------------------------------------------------------------- inside

    def _status_of(self, service: str) -> SyncStatus:
        status = self._status.get(service)
        if status is None:
            status = self._status[service] = SyncStatus(service)
        return status

    def _spawn(self, service: str) -> None:
        task = self._tasks.get(service)
        if task is not None and not task.done():
            return
        self._tasks[service] = asyncio.create_task(self._run_guarded(service), name=f"mesh-discovery:{service}")

    async def _run_guarded(self, service: str) -> None:
        attempt = 0
        while True:
            try:
                await self.run(service)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug in a backend must not end the service's sync for good
                logger.exception("discovery (%s): the sync task for %r failed; restarting it", self.backend, service)
                self.failed(service, exc)
                await self.clock.sleep(self.backoff(attempt))
                attempt += 1

    async def _believe_empty_after_grace(self, service: str) -> None:
        await self.clock.sleep(self.config.empty_grace)
        status = self._status_of(service)
        if status.empty_since is None:
            return
        status.empty_since = None
        self._grace_tasks.pop(service, None)
        logger.warning("discovery (%s): %r has had no endpoints for %gs; removing them", self.backend, service,
                       self.config.empty_grace)
        self._deliver(service, ())

    def _end_grace(self, service: str) -> None:
        status = self._status_of(service)
        status.empty_since = None
        task = self._grace_tasks.pop(service, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def _deliver(self, service: str, endpoints: tuple[Endpoint, ...]) -> None:
        self._status_of(service).endpoints = len(endpoints)
        if self._published.get(service) == endpoints:  # None (never published) equals no tuple
            return
        self._published[service] = endpoints
        if self._publish is not None:
            self._publish(service, endpoints)

    def _unavailable(self, service: str, reason: str | None) -> None:
        """Tell the mesh that ``service`` cannot be synced now, so calls waiting for its first sync stop."""
        hook = getattr(self._publish, "unavailable", None)
        if hook is not None:
            hook(service, reason)


def short_error(error: BaseException) -> str:
    """``"ConnectError: ..."``: an error's type and message, cut to a length fit for a status body or a log line.

    >>> short_error(ConnectionError("refused")), short_error(TimeoutError())
    ('ConnectionError: refused', 'TimeoutError')
    """
    return clip(f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)


def clip(text: str, limit: int = _ERROR_CHARS) -> str:
    """``text`` cut to ``limit`` characters, the last of them an ellipsis when it was cut.

    >>> clip("abcdef", 4)
    'abc…'
    """
    return text if len(text) <= limit else text[: limit - 1] + "…"
