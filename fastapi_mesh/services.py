"""Per-service state owned by the mesh (policy, balancer, breaker, counters), created lazily on first use,
and the table of it that discovery publishes into."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import httpx

from ._httpx_compat import with_target
from .balancing.balancer import Balancer
from .clock import Clock
from .discovery.base import Endpoint
from .errors import NoHealthyEndpoints
from .events import DISCOVERY_CHANGED, EndpointsChanged, EventBus
from .observability.durations import CallDurations
from .resilience.breaker import CircuitBreaker
from .resilience.budget import RetryBudget
from .resilience.bulkhead import Bulkhead
from .resilience.hedge import LatencyWindow
from .resilience.outcome import Outcomes
from .resilience.outlier import OutlierDetector
from .settings import MeshSettings, ServicePolicy

if TYPE_CHECKING:
    from .health.active import ActiveHealthChecker

__all__ = ["Feed", "ServiceState", "Services"]

logger = logging.getLogger("fastapi_mesh.discovery")

#: Parsed request URLs kept per service, by path; the cache starts over when it holds this many.
URL_CACHE_SIZE = 256
#: Services called by a name that discovery never gave an endpoint, and that no setting names, kept at once:
#: a gateway taking the name from its URL must not grow state (or metric series) without bound.
MAX_UNKNOWN_SERVICES = 1024


class ServiceState:
    """Everything the mesh keeps about one upstream service between calls."""

    __slots__ = (
        "_origin",
        "_urls",
        "active_check",
        "attempt_timeout",
        "balancer",
        "base_url",
        "breaker",
        "budget",
        "bulkhead",
        "durations",
        "failures",
        "fallback_enabled",
        "hedges",
        "known",
        "latency",
        "name",
        "outcomes",
        "policy",
        "requests",
        "retries",
        "retries_exhausted",
        "retry_statuses",
        "successes",
        "sync_pending",
        "sync_waiter",
        "synced",
    )

    def __init__(
        self,
        name: str,
        policy: ServicePolicy,
        rng: random.Random,
        clock: Clock,
        events: EventBus,
        default_timeout: float | None = None,
        zone: str | None = None,
        sync_pending: bool = False,
    ) -> None:
        self.name = name
        self.policy = policy
        outlier = OutlierDetector(name, policy.outlier_detection, clock, events)
        self.balancer = Balancer(
            name, policy.load_balancer, rng, outlier, clock=clock, zone=zone, routing=policy.routing
        )
        retry = policy.retry
        self.budget = RetryBudget(retry.budget_percent, retry.budget_ttl, retry.min_retries_per_second, clock)
        self.breaker = CircuitBreaker(name, policy.circuit_breaker, clock, events)
        limits = policy.bulkhead
        self.bulkhead = (
            Bulkhead(name, limits.max_concurrent, limits.max_queue, limits.queue_timeout, events=events, clock=clock)
            if limits.max_concurrent is not None
            else None
        )
        # The logical URL a call starts with; the balancer swaps in an endpoint's origin per attempt.
        self.base_url = f"http://{name}"
        self._origin: httpx.URL | None = None  # parsed on the first call
        self._urls: dict[str, httpx.URL] = {}
        # None: the client's default (the global circuit_breaker.timeout) applies without a per-call argument.
        timeout = policy.circuit_breaker.timeout
        self.attempt_timeout = None if timeout == default_timeout else httpx.Timeout(timeout)
        self.fallback_enabled = policy.circuit_breaker.fallback_enabled
        self.retry_statuses = frozenset(policy.retry.retry_on_status)
        self.latency = LatencyWindow() if retry.hedge_delay == "p95" else None
        #: What counts as a failure, for the breaker and the balancer; where attempt outcomes go.
        self.outcomes = Outcomes(policy.circuit_breaker.failure_on_status, self.balancer.record, self.latency)
        self.hedges = 0
        #: Named by the settings, or given endpoints by discovery at some point: shown in status and metrics.
        self.known = False
        self.requests = 0
        self.successes = 0
        self.failures = 0
        self.retries = 0
        self.retries_exhausted = 0
        #: Call durations by method and status class (``mesh_upstream_request_duration_seconds``).
        self.durations = CallDurations()
        #: Discovery has published a set for this service at least once.
        self.synced = False
        #: Its first sync is still to come: a call finding no endpoints waits for it (boundedly).
        self.sync_pending = sync_pending
        #: Set when the first sync (or news that it failed) comes; made by the first call that waits.
        self.sync_waiter: asyncio.Event | None = None
        #: The active health checker of its endpoints, when its policy enables one (the mesh starts it).
        self.active_check: ActiveHealthChecker | None = None

    def sync_settled(self) -> None:
        """The first sync came, or the backend said it cannot come now: waiting calls go on."""
        self.sync_pending = False
        waiter, self.sync_waiter = self.sync_waiter, None
        if waiter is not None:
            waiter.set()

    def url(self, path: str) -> httpx.URL:
        """The call's logical URL for ``path`` (query string included), kept per path: parsing and
        validating a whole URL costs more than all of the mesh's layers on a call's hot path. A path not
        kept yet (paths with ids in them rarely repeat) is joined to the service's parsed origin, and only
        parsed whole when it holds something httpx encodes or refuses (``with_target``)."""
        url = self._urls.get(path)
        if url is None:
            target = path if path.startswith("/") else "/" + path
            origin = self._origin
            if origin is None:
                origin = self._origin = httpx.URL(self.base_url)
            url = with_target(origin, self.base_url, target) or httpx.URL(self.base_url + target)
            urls = self._urls
            if len(urls) >= URL_CACHE_SIZE:  # paths with ids in them: bounded, never a leak
                urls.clear()
            urls[path] = url
        return url


class Feed:
    """What a backend's ``start(publish)`` receives from the mesh: call it as ``publish(service, endpoints)``;
    ``publish.unavailable(service, reason)`` says a service's first sync failed (see ``BackgroundDiscovery``)."""

    __slots__ = ("_services",)

    def __init__(self, services: Services) -> None:
        self._services = services

    def __call__(self, service: str, endpoints: Sequence[Endpoint]) -> None:
        self._services.publish(service, endpoints)

    def unavailable(self, service: str, reason: str | None = None) -> None:
        self._services.unavailable(service, reason)


class Services:
    """Maps service names to their ``ServiceState`` (``states``); discovery publishes into it."""

    __slots__ = (
        "_clock",
        "_configured",
        "_events",
        "_on_new",
        "_rng",
        "_settings",
        "_unknown",
        "_wait_for_sync",
        "feed",
        "states",
    )

    def __init__(
        self,
        settings: MeshSettings,
        rng: random.Random,
        clock: Clock,
        events: EventBus,
        on_new: Callable[[str], None] | None = None,
        wait_for_sync: bool = False,
    ) -> None:
        self._settings = settings
        self._rng = rng
        self._clock = clock
        self._events = events
        self._on_new = on_new
        self.states: dict[str, ServiceState] = {}
        self._configured = frozenset(settings.discovery.endpoints) | frozenset(settings.services)
        self._unknown: OrderedDict[str, None] = OrderedDict()
        #: The backend syncs in the background: a new service's calls wait for its first sync.
        self._wait_for_sync = wait_for_sync
        #: The callback discovery backends are started with.
        self.feed = Feed(self)

    def known(self) -> dict[str, ServiceState]:
        """The services worth showing: named by the settings or given endpoints by discovery."""
        return {name: state for name, state in self.states.items() if state.known}

    def get(self, name: str) -> ServiceState:
        state = self.states.get(name)
        if state is not None and not state.known:
            self._unknown.move_to_end(name)  # in use: the last to be forgotten
        if state is None:
            policy = self._settings.for_service(name)
            state = self.states[name] = ServiceState(
                name,
                policy,
                self._rng,
                self._clock,
                self._events,
                self._settings.circuit_breaker.timeout,
                self._settings.zone,
                self._wait_for_sync,
            )
            if name in self._configured:
                state.known = True
            else:
                self._forget_unknown_beyond_limit(name)
            if self._on_new is not None:
                self._on_new(name)
        return state

    def _forget_unknown_beyond_limit(self, name: str) -> None:
        unknown = self._unknown
        unknown[name] = None
        while len(unknown) > MAX_UNKNOWN_SERVICES:
            oldest, _ = unknown.popitem(last=False)
            state = self.states.get(oldest)
            if state is not None and not state.known:
                del self.states[oldest]  # a call still holding it finishes normally
                if state.active_check is not None:
                    state.active_check.cancel()

    def publish(self, name: str, endpoints: Sequence[Endpoint]) -> None:
        """Discovery's callback: ``name`` now has exactly ``endpoints`` (announced only when that changed)."""
        state = self.get(name)
        try:
            changed = state.balancer.update(endpoints)
        except Exception:  # a malformed answer must not cost the last good set, nor the backend its loop
            logger.exception("discovery answer for service %r not applied; its last endpoint set stays", name)
            return
        state.synced = True
        if state.sync_pending:
            state.sync_settled()
        if endpoints and not state.known:
            state.known = True
            self._unknown.pop(name, None)
        if changed and self._events.wants(DISCOVERY_CHANGED):
            self._events.emit(DISCOVERY_CHANGED, EndpointsChanged(name, tuple(e.url for e in endpoints)))

    def unavailable(self, name: str, reason: str | None = None) -> None:
        """Discovery's other callback: ``name``'s first sync failed. Its set (empty) stays; calls waiting for
        the sync go on now and fail with ``NoHealthyEndpoints`` rather than wait for a backend that is down."""
        state = self.states.get(name)
        if state is not None and state.sync_pending:
            logger.debug("first sync of %r failed (%s): waiting calls go on", name, reason)
            state.sync_settled()

    async def wait_for_first_sync(self, state: ServiceState, deadline: float | None) -> None:
        """Wait until ``state``'s first sync, at most ``discovery.initial_sync_timeout`` and never past
        ``deadline`` (clock time); then the call picks as usual. Raises ``NoHealthyEndpoints`` when the wait
        ran out with no sync."""
        timeout = self._settings.discovery.initial_sync_timeout
        if deadline is not None:
            timeout = min(timeout, deadline - self._clock.now())
        if state.sync_pending and timeout > 0:
            waiter = state.sync_waiter
            if waiter is None:
                waiter = state.sync_waiter = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with self._clock.timeout_at(self._clock.now() + timeout):
                    await waiter.wait()
        if state.sync_pending and not state.balancer.endpoints:
            raise NoHealthyEndpoints(
                state.name, f"discovery has not answered for this service yet (waited {max(timeout, 0):g}s)"
            )
