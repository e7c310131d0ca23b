"""Events: small frozen objects the layers emit, built only when someone subscribes.

>>> bus = EventBus()
>>> seen = []
>>> off = bus.on("request:success", seen.append)
>>> @bus.on("circuit-breaker:open")
... def paged(event): ...
>>> bus.wants("request:success"), bus.wants("request:failure"), bus.wants("circuit-breaker:open")
(True, False, True)

Handlers may be sync or async. A handler that raises is logged (once per handler; later failures at debug
level) and ignored. An async handler runs as its own task, and at most ``max_pending`` such tasks wait at
once: past that, events for async handlers are dropped (logged once per handler), so a slow handler never
holds up a request nor piles up memory. A sync handler runs inline: one slower than ``SLOW_HANDLER`` seconds
is logged once, as it holds up the call that emitted the event.

Every name is ``area:event``. Older names stay as aliases of the current ones (``ALIASES``), the seed's
``request-success`` and ``service-mesh:retry:max-reached`` among them: a handler subscribed to either gets
the event.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar, overload

__all__ = [
    "ALIASES",
    "BULKHEAD_REJECTED",
    "CIRCUIT_CLOSED",
    "CIRCUIT_HALF_OPEN",
    "CIRCUIT_OPEN",
    "CIRCUIT_STATE_CHANGE",
    "DISCOVERY_CHANGED",
    "ENDPOINT_EJECTED",
    "ENDPOINT_RESTORED",
    "EVENTS",
    "FALLBACK_USED",
    "MAX_PENDING_TASKS",
    "REQUEST_FAILURE",
    "REQUEST_SUCCESS",
    "RETRY_ATTEMPT",
    "RETRY_MAX_REACHED",
    "SLOW_HANDLER",
    "BulkheadRejected",
    "EndpointsChanged",
    "EventBus",
    "EventHandler",
    "FallbackUsed",
    "RequestEvent",
    "RetryEvent",
]

logger = logging.getLogger("fastapi_mesh.events")

REQUEST_SUCCESS = "request:success"
REQUEST_FAILURE = "request:failure"
RETRY_ATTEMPT = "retry:attempt"
RETRY_MAX_REACHED = "retry:max-reached"
#: Every breaker transition; the three below are its most watched ones (``forced-open`` counts as open).
CIRCUIT_STATE_CHANGE = "circuit-breaker:state-change"
CIRCUIT_OPEN = "circuit-breaker:open"
CIRCUIT_HALF_OPEN = "circuit-breaker:half-open"
CIRCUIT_CLOSED = "circuit-breaker:closed"
BULKHEAD_REJECTED = "bulkhead:rejected"
ENDPOINT_EJECTED = "endpoint:ejected"
ENDPOINT_RESTORED = "endpoint:restored"
DISCOVERY_CHANGED = "discovery:changed"
FALLBACK_USED = "fallback:used"

#: Earlier names, each the same event as the name it maps to: the seed's, and the first names of others.
ALIASES: dict[str, str] = {
    "request-success": REQUEST_SUCCESS,
    "request-failure": REQUEST_FAILURE,
    "service-mesh:retry:attempt": RETRY_ATTEMPT,
    "service-mesh:retry:max-reached": RETRY_MAX_REACHED,
    "endpoints-changed": DISCOVERY_CHANGED,
    "outlier:ejected": ENDPOINT_EJECTED,
    "outlier:returned": ENDPOINT_RESTORED,
}
#: Every event the mesh emits, by its current name.
EVENTS = frozenset(
    {
        REQUEST_SUCCESS,
        REQUEST_FAILURE,
        RETRY_ATTEMPT,
        RETRY_MAX_REACHED,
        CIRCUIT_STATE_CHANGE,
        CIRCUIT_OPEN,
        CIRCUIT_HALF_OPEN,
        CIRCUIT_CLOSED,
        BULKHEAD_REJECTED,
        ENDPOINT_EJECTED,
        ENDPOINT_RESTORED,
        DISCOVERY_CHANGED,
        FALLBACK_USED,
    }
)
#: Async handler tasks allowed to wait at once (per bus); events past that are dropped for async handlers.
MAX_PENDING_TASKS = 1000
#: Seconds; a sync handler slower than this (or an async one whose task takes longer) is logged, once.
SLOW_HANDLER = 0.1

EventHandler = Callable[[Any], Awaitable[None] | None]
H = TypeVar("H", bound=EventHandler)

# Each name, with the names that are the same event (a name's handlers are one list under all of them).
_SAME: dict[str, tuple[str, ...]] = {}
for _old, _new in ALIASES.items():
    _SAME[_new] = (*_SAME.get(_new, (_new,)), _old)
for _group in list(_SAME.values()):
    for _member in _group:
        _SAME[_member] = _group


@dataclass(frozen=True, slots=True)
class RequestEvent:
    """One finished call. ``status_code`` is None when no response came; ``error`` names what failed."""

    service: str
    endpoint: str | None
    method: str
    status_code: int | None
    duration_s: float
    attempts: int
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class RetryEvent:
    """A retry about to be made (``service-mesh:retry:attempt``) or refused (``...:max-reached``)."""

    service: str
    method: str
    attempt: int
    delay_s: float
    reason: str
    context: str


@dataclass(frozen=True, slots=True)
class EndpointsChanged:
    """Discovery published a new endpoint set for a service (``discovery:changed``)."""

    service: str
    endpoints: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class BulkheadRejected:
    """A bulkhead refused a call (``bulkhead:rejected``): a service's (``route`` None: ``service`` is the
    upstream) or a route's (``route`` is its template, ``service`` this service's own name)."""

    service: str
    route: str | None
    limit: int
    active: int
    queued: int
    reason: str


@dataclass(frozen=True, slots=True)
class FallbackUsed:
    """A fallback answered instead of ``service`` (``fallback:used``): a call's (``route`` None) or a route's
    (``route`` is its template). ``status_code`` is the 5xx it replaced, or None when ``error`` is the cause."""

    service: str
    route: str | None
    status_code: int | None
    error: BaseException | None


class EventBus:
    """Named events to handlers. ``wants(name)`` is the cheap check layers make before building an event.

    >>> bus = EventBus(max_pending=10)
    >>> off = bus.on("endpoints-changed", print)        # an alias of "discovery:changed"
    >>> bus.emit("discovery:changed", EndpointsChanged("users", ("http://10.0.0.1:80",)))
    EndpointsChanged(service='users', endpoints=('http://10.0.0.1:80',))
    >>> off(); bus.wants("discovery:changed")
    False
    """

    __slots__ = ("_handlers", "_tasks", "_warned", "dropped", "max_pending", "timer")

    def __init__(self, max_pending: int = MAX_PENDING_TASKS, timer: Callable[[], float] = time.perf_counter) -> None:
        self._handlers: dict[str, list[EventHandler]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: (handler id, what) pairs already logged: each handler's failure, slowness or drops are logged once.
        self._warned: set[tuple[int, str]] = set()
        #: Async handler tasks allowed to wait at once.
        self.max_pending = max_pending
        #: Events not handed to an async handler because ``max_pending`` tasks were waiting.
        self.dropped = 0
        #: Seconds, for timing handlers against ``SLOW_HANDLER``.
        self.timer = timer

    @overload
    def on(self, name: str, handler: H) -> Callable[[], None]: ...

    @overload
    def on(self, name: str, handler: None = None) -> Callable[[H], H]: ...

    def on(self, name: str, handler: H | None = None) -> Callable[[], None] | Callable[[H], H]:
        """Subscribe ``handler`` to ``name``; returns a function that unsubscribes it. Without ``handler``, a
        decorator that subscribes the function it decorates and returns it unchanged (``off`` removes it)."""
        if handler is None:

            def subscribe(function: H) -> H:
                self.on(name, function)
                return function

            return subscribe
        names = _SAME.get(name, (name,))
        handlers = self._handlers.get(name)
        if handlers is None:
            handlers = []
            for same in names:
                self._handlers[same] = handlers
        handlers.append(handler)
        subscribed = handler

        def off() -> None:
            self.off(name, subscribed)

        return off

    def off(self, name: str, handler: EventHandler) -> None:
        """Unsubscribe ``handler`` from ``name`` (or an alias of it); nothing happens when it is not subscribed."""
        handlers = self._handlers.get(name)
        if handlers is None:
            return
        if handler in handlers:
            handlers.remove(handler)
        if not handlers:
            for same in _SAME.get(name, (name,)):
                if self._handlers.get(same) is handlers:
                    del self._handlers[same]

    def wants(self, name: str) -> bool:
        return name in self._handlers

    @property
    def pending(self) -> int:
        """Async handler tasks running now."""
        return len(self._tasks)

    def emit(self, name: str, event: Any) -> None:
        timer = self.timer
        for handler in self._handlers.get(name, ()):
            began = timer()
            try:
                result = handler(event)
            except Exception:
                self._failed(name, handler)
                continue
            if inspect.isawaitable(result):
                self._schedule(name, handler, result)
            else:
                took = timer() - began
                if took > SLOW_HANDLER:
                    self._slow(name, handler, took)

    # ---------------------------------------------------------------------------------------- internals

    def _schedule(self, name: str, handler: EventHandler, awaitable: Awaitable[None]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or len(self._tasks) >= self.max_pending:
            if isinstance(awaitable, Coroutine):
                awaitable.close()  # never started: no "never awaited" warning
            self.dropped += 1
            if (id(handler), "dropped") not in self._warned:
                self._warned.add((id(handler), "dropped"))
                why = "no event loop runs" if loop is None else f"{self.max_pending} handler tasks are pending"
                logger.warning("event %r not handed to async handler %s: %s (logged once)", name, _name(handler), why)
            return
        task = loop.create_task(self._guard(name, handler, awaitable))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guard(self, name: str, handler: EventHandler, awaitable: Awaitable[None]) -> None:
        began = self.timer()
        try:
            await awaitable
        except Exception:
            self._failed(name, handler)
            return
        took = self.timer() - began
        if took > SLOW_HANDLER:
            self._slow(name, handler, took)

    def _failed(self, name: str, handler: EventHandler) -> None:
        if (id(handler), "failed") in self._warned:
            logger.debug("event handler %s for %r failed again", _name(handler), name, exc_info=True)
            return
        self._warned.add((id(handler), "failed"))
        logger.exception("event handler %s for %r failed (logged once; the event is ignored)", _name(handler), name)

    def _slow(self, name: str, handler: EventHandler, seconds: float) -> None:
        if (id(handler), "slow") not in self._warned:
            self._warned.add((id(handler), "slow"))
            logger.warning(
                "event handler %s for %r took %.3fs (logged once); a sync handler holds up the call "
                "that emitted the event: keep it quick or make it async",
                _name(handler),
                name,
                seconds,
            )


def _name(handler: EventHandler) -> str:
    return getattr(handler, "__qualname__", None) or repr(handler)
