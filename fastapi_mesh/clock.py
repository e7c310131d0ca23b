"""Clocks: everything in the mesh that reads time or waits takes one, so tests can be exact.

>>> clock = ManualClock()
>>> clock.advance(2.5)
>>> clock.now()
2.5
"""

from __future__ import annotations

import asyncio
import math
import time
from types import TracebackType
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "ManualClock", "MonotonicClock", "Timer"]


@runtime_checkable
class Timer(Protocol):
    """What ``Clock.timeout_at`` returns: an async context manager that cancels the block it guards when the
    clock reaches the deadline and then raises ``TimeoutError``, as ``asyncio.timeout_at`` does."""

    def expired(self) -> bool: ...

    async def __aenter__(self) -> Timer: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None: ...


@runtime_checkable
class Clock(Protocol):
    """Monotonic seconds, a way to wait, and a way to bound a block by a deadline in the clock's time. The
    default is ``MonotonicClock``."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...

    def timeout_at(self, when: float | None) -> Timer: ...


class MonotonicClock:
    """``time.monotonic``, ``asyncio.sleep`` and ``asyncio.Timeout`` on the running loop."""

    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def timeout_at(self, when: float | None) -> asyncio.Timeout:
        """``asyncio.timeout_at`` for a deadline in ``time.monotonic`` seconds. The loop's own clock is the
        same on asyncio's loops but not on every loop (uvloop's counts from elsewhere): the deadline is moved
        onto it by the difference between the two readings."""
        if when is None:
            return asyncio.Timeout(None)
        loop = asyncio.get_running_loop()
        return asyncio.Timeout(loop.time() + (when - time.monotonic()))


class ManualClock:
    """A clock that moves only when told to: ``sleep`` advances it at once (and yields to the loop). A timer
    (``timeout_at``) fires when ``advance`` or ``sleep`` brings the clock to its deadline, and not before: the
    guarded task is cancelled on the loop's next turn and the block raises ``TimeoutError``."""

    __slots__ = ("_now", "_timers", "sleeps")

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._timers: list[_ManualTimer] = []
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock on; with timers armed, call it from the loop they run on."""
        self._now += seconds
        self._fire()

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self._now += max(seconds, 0.0)
        self._fire()
        await asyncio.sleep(0)

    def timeout_at(self, when: float | None) -> _ManualTimer:
        return _ManualTimer(self, when)

    @property
    def timers(self) -> list[float]:
        """The deadlines of the timers armed now, earliest first."""
        return sorted(t.deadline for t in self._timers if t.deadline is not None)

    def _fire(self) -> None:
        for timer in list(self._timers):
            timer._check()


class _ManualTimer:
    """A ``ManualClock`` timer: an ``asyncio.Timeout`` that never fires by itself, made to fire (on the loop's
    next turn, as asyncio's does) once the clock reaches ``deadline``."""

    __slots__ = ("_clock", "_scope", "deadline")

    def __init__(self, clock: ManualClock, when: float | None) -> None:
        self._clock = clock
        self._scope = asyncio.Timeout(None)
        #: The deadline in the clock's time (None: never).
        self.deadline = when

    def expired(self) -> bool:
        return self._scope.expired()

    def when(self) -> float | None:
        return self.deadline

    def reschedule(self, when: float | None) -> None:
        """Move the deadline (clock time); one already reached fires on the loop's next turn."""
        self.deadline = when
        self._scope.reschedule(None)
        self._check()

    async def __aenter__(self) -> _ManualTimer:
        await self._scope.__aenter__()
        self._clock._timers.append(self)
        self._check()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        if self in self._clock._timers:
            self._clock._timers.remove(self)
        await self._scope.__aexit__(exc_type, exc, tb)
        return None

    def _check(self) -> None:
        if self.deadline is not None and self.deadline <= self._clock._now and self in self._clock._timers:
            self._clock._timers.remove(self)
            self._scope.reschedule(-math.inf)  # due: asyncio cancels the task on its next turn
