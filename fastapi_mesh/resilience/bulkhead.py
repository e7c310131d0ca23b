"""Bulkheads: at most N at once, M more waiting, the rest refused at once with ``BulkheadFull``.

One mechanism serves both the per-service layer (settings section ``bulkhead``; ``layers.bulkhead``) and the
per-route limit of ``@mesh.policy(bulkhead=N, queue=M)``. Acquiring a free slot costs two integer operations;
only a queued call allocates (one future).
"""

from __future__ import annotations

import asyncio
from collections import deque

from ..clock import Clock, MonotonicClock
from ..errors import BulkheadFull, DeadlineExceeded
from ..events import BULKHEAD_REJECTED, BulkheadRejected, EventBus

__all__ = ["Bulkhead"]


class Bulkhead:
    """``limit`` concurrent holders, ``queue`` waiters (each for at most ``queue_timeout`` seconds of ``clock``)."""

    __slots__ = (
        "active",
        "clock",
        "events",
        "limit",
        "name",
        "queue",
        "queue_timeout",
        "rejected",
        "route",
        "scope",
        "waiters",
    )

    def __init__(
        self,
        name: str,
        limit: int,
        queue: int = 0,
        queue_timeout: float | None = None,
        scope: str = "",
        events: EventBus | None = None,
        clock: Clock | None = None,
    ) -> None:
        if limit < 1:
            raise ValueError(f"bulkhead must be at least 1, not {limit}")
        if queue < 0:
            raise ValueError(f"queue must be 0 or more, not {queue}")
        self.name = name
        #: What the limit is on, for messages ("route /api/users"); empty for a whole service.
        self.scope = scope
        self.limit = limit
        self.queue = queue
        self.queue_timeout = queue_timeout
        self.active = 0
        self.rejected = 0
        self.waiters: deque[asyncio.Future[None]] = deque()
        #: Where ``bulkhead:rejected`` goes (None: nowhere).
        self.events = events
        #: What a queued call's wait is timed on.
        self.clock: Clock = clock if clock is not None else MonotonicClock()
        #: A route's bulkhead: the route's template (set when the Mesh's lifespan starts); None for a service's.
        self.route: str | None = None

    async def acquire(self, time_left: float | None = None) -> None:
        """Take a slot, wait in the queue for one, or raise ``BulkheadFull``. ``time_left``: seconds until the
        caller's deadline; a wait it cuts short raises ``DeadlineExceeded`` instead."""
        if self.active < self.limit and not self.waiters:
            self.active += 1
            return
        if len(self.waiters) >= self.queue:
            self._reject("full")
            raise BulkheadFull(
                self.name, f"{self._scope()}{self.active} running and {len(self.waiters)} queued (limit {self.limit})"
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        limit = self.queue_timeout
        by_deadline = time_left is not None and (limit is None or time_left < limit)
        if by_deadline:
            limit = max(time_left or 0.0, 0.0)
        try:
            if limit is None:
                await waiter
            else:
                clock = self.clock
                async with clock.timeout_at(clock.now() + limit):
                    await waiter
        except TimeoutError:
            self._abandon(waiter)
            if by_deadline:
                raise DeadlineExceeded(self.name, f"{self._scope()}the deadline passed in the bulkhead queue") from None
            self._reject("queue timeout")
            raise BulkheadFull(
                self.name, f"{self._scope()}no slot within the queue timeout of {self.queue_timeout}s"
            ) from None
        except BaseException:
            self._abandon(waiter)
            raise

    def _reject(self, reason: str) -> None:
        self.rejected += 1
        events = self.events
        if events is not None and events.wants(BULKHEAD_REJECTED):
            events.emit(
                BULKHEAD_REJECTED,
                BulkheadRejected(self.name, self.route, self.limit, self.active, len(self.waiters), reason),
            )

    def _scope(self) -> str:
        return f"{self.scope}: " if self.scope else ""

    def _abandon(self, waiter: asyncio.Future[None]) -> None:
        if waiter in self.waiters:
            self.waiters.remove(waiter)
        elif waiter.done() and not waiter.cancelled():
            self.release()  # the slot was handed over as we gave up: pass it on

    def release(self) -> None:
        """Give a slot back: to the longest waiter if there is one."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot moves to the waiter; ``active`` is unchanged
                return
        self.active -= 1

    def as_dict(self) -> dict[str, object]:
        return {
            "limit": self.limit,
            "active": self.active,
            "queued": len(self.waiters),
            "queue": self.queue,
            "rejected": self.rejected,
        }
