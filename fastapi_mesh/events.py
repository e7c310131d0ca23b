"""Events: small frozen objects the layers emit, built only when someone subscribes.

>>> bus = EventBus()
>>> seen = []
>>> off = bus.on("request-success", seen.append)
>>> bus.wants("request-success"), bus.wants("request-failure")
(True, False)

Handlers may be sync or async. A handler that raises is logged and ignored, and an async handler runs as
its own task, so a slow or failing handler never breaks a request.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ENDPOINTS_CHANGED",
    "REQUEST_FAILURE",
    "REQUEST_SUCCESS",
    "RETRY_ATTEMPT",
    "RETRY_MAX_REACHED",
    "EndpointsChanged",
    "EventBus",
    "EventHandler",
    "RequestEvent",
    "RetryEvent",
]

logger = logging.getLogger("fastapi_mesh.events")

REQUEST_SUCCESS = "request-success"
REQUEST_FAILURE = "request-failure"
RETRY_ATTEMPT = "service-mesh:retry:attempt"
RETRY_MAX_REACHED = "service-mesh:retry:max-reached"
ENDPOINTS_CHANGED = "endpoints-changed"

EventHandler = Callable[[Any], Awaitable[None] | None]


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
    """Discovery published a new endpoint set for a service."""

    service: str
    endpoints: tuple[str, ...]


class EventBus:
    """Named events to handlers. ``wants(name)`` is the cheap check layers make before building an event."""

    __slots__ = ("_handlers", "_tasks")

    def __init__(self) -> None:
        self._handlers: dict[str, list[EventHandler]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def on(self, name: str, handler: EventHandler) -> Callable[[], None]:
        """Subscribe ``handler`` to ``name``; returns a function that unsubscribes it."""
        self._handlers.setdefault(name, []).append(handler)

        def off() -> None:
            handlers = self._handlers.get(name, [])
            if handler in handlers:
                handlers.remove(handler)
            if not handlers:
                self._handlers.pop(name, None)

        return off

    def wants(self, name: str) -> bool:
        return name in self._handlers

    def emit(self, name: str, event: Any) -> None:
        for handler in self._handlers.get(name, ()):
            try:
                result = handler(event)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(_guard(name, result))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            except Exception:
                logger.exception("event handler for %r failed", name)


async def _guard(name: str, awaitable: Awaitable[None]) -> None:
    try:
        await awaitable
    except Exception:
        logger.exception("event handler for %r failed", name)
