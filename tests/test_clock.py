"""Clocks: ``ManualClock`` timers fire when the clock reaches their deadline and not before, as
``asyncio.timeout_at`` does on the loop; ``MonotonicClock`` timers are asyncio's own, on the loop's clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

import pytest

from fastapi_mesh import ManualClock, MonotonicClock
from fastapi_mesh.clock import Clock, Timer

WAIT = 5.0  # bound on every real wait


async def turns(n: int = 5) -> None:
    """Let the loop run ``n`` times round: long enough for a due timer to cancel its task."""
    for _ in range(n):
        await asyncio.sleep(0)


async def guarded(clock: Clock, when: float, event: asyncio.Event) -> Timer:
    """Wait for ``event`` under ``clock.timeout_at(when)``; return the timer. Only the clock's timer raises
    ``TimeoutError``: the bound on the real wait raises ``AssertionError``."""
    async with clock.timeout_at(when) as timer:
        await bounded(event.wait())
    return timer


async def bounded(waiting: Coroutine[Any, Any, Any]) -> None:
    try:
        await asyncio.wait_for(waiting, WAIT)
    except TimeoutError:
        raise AssertionError(f"nothing ended the wait within {WAIT}s") from None


def test_both_clocks_are_clocks() -> None:
    """Both clocks satisfy the ``Clock`` protocol, timers included."""
    assert isinstance(ManualClock(), Clock)
    assert isinstance(MonotonicClock(), Clock)


@pytest.mark.anyio
async def test_manual_timer_fires_at_its_deadline_and_not_before() -> None:
    """A timer at 15 s leaves its task alone at 14.75 s and cancels it with TimeoutError at 15 s."""
    clock = ManualClock(start=10.0)
    task = asyncio.create_task(guarded(clock, 15.0, asyncio.Event()))
    await turns()
    assert clock.timers == [15.0]
    clock.advance(4.75)
    await turns()
    assert not task.done()
    clock.advance(0.25)
    await turns()
    with pytest.raises(TimeoutError):
        await task
    assert clock.timers == []


@pytest.mark.anyio
async def test_manual_timer_that_fires_reports_expired() -> None:
    """A timer that fired says so (``expired()``), as asyncio's does."""
    clock = ManualClock()
    expired = []

    async def run() -> None:
        timer = clock.timeout_at(1.0)
        try:
            async with timer:
                await bounded(asyncio.Event().wait())
        except TimeoutError:
            expired.append(timer.expired())

    task = asyncio.create_task(run())
    await turns()
    clock.advance(1.0)
    await asyncio.wait_for(task, WAIT)
    assert expired == [True]


@pytest.mark.anyio
async def test_manual_timer_disarms_when_its_block_ends_first() -> None:
    """A block that ends before its deadline disarms its timer: a later advance cancels nothing."""
    clock = ManualClock()
    event = asyncio.Event()
    task = asyncio.create_task(guarded(clock, 1.0, event))
    await turns()
    event.set()
    timer = await asyncio.wait_for(task, WAIT)
    clock.advance(5.0)
    await turns()
    assert not timer.expired()
    assert clock.timers == []


@pytest.mark.anyio
async def test_manual_deadline_already_passed_fires_on_the_next_turn() -> None:
    """A deadline already behind the clock fires on the loop's next turn."""
    clock = ManualClock(start=3.0)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(guarded(clock, 2.0, asyncio.Event()), WAIT)


@pytest.mark.anyio
async def test_manual_sleep_past_a_deadline_fires_the_timer() -> None:
    """``sleep`` moves the clock too: sleeping past a deadline fires its timer."""
    clock = ManualClock()
    with pytest.raises(TimeoutError):
        async with clock.timeout_at(1.0):
            await clock.sleep(2.0)
            await turns()
    assert clock.now() == 2.0


@pytest.mark.anyio
async def test_manual_sleep_short_of_a_deadline_leaves_it_armed() -> None:
    """A sleep that stops short of the deadline does not fire the timer."""
    clock = ManualClock()
    async with clock.timeout_at(1.0) as timer:
        await clock.sleep(0.5)
        await turns()
    assert not timer.expired()


@pytest.mark.anyio
async def test_manual_inner_timer_fires_alone() -> None:
    """Of two nested timers, only the one reached fires; the outer one is not expired."""
    clock = ManualClock()
    outer = clock.timeout_at(10.0)
    inner = clock.timeout_at(1.0)
    async with outer:
        with pytest.raises(TimeoutError):
            async with inner:
                clock.advance(1.0)
                await turns()
        await turns()
    assert (inner.expired(), outer.expired()) == (True, False)


@pytest.mark.anyio
async def test_manual_cancel_from_outside_stays_a_cancel() -> None:
    """A cancel from outside stays CancelledError and disarms the timer."""
    clock = ManualClock()
    task = asyncio.create_task(guarded(clock, 1.0, asyncio.Event()))
    await turns()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock.timers == []


@pytest.mark.anyio
async def test_manual_timer_can_be_rescheduled() -> None:
    """A rescheduled timer fires at its new deadline, not its first."""
    clock = ManualClock()
    timer = clock.timeout_at(1.0)
    with pytest.raises(TimeoutError):
        async with timer:
            timer.reschedule(2.0)
            clock.advance(1.5)
            await turns()
            assert clock.timers == [2.0]
            clock.advance(0.5)
            await turns()
    assert timer.when() == 2.0


@pytest.mark.anyio
async def test_monotonic_timer_fires() -> None:
    """A ``MonotonicClock`` timer fires in real time, with TimeoutError."""
    clock = MonotonicClock()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(guarded(clock, clock.now() + 0.01, asyncio.Event()), WAIT)


class _OffsetLoop(asyncio.SelectorEventLoop):
    """A loop whose clock counts from elsewhere than ``time.monotonic``, as uvloop's does."""

    def time(self) -> float:
        return time.monotonic() + 1000.0


def test_monotonic_deadline_is_moved_onto_the_loops_clock() -> None:
    """On a loop whose clock is not ``time.monotonic``, the deadline lands as far ahead on the loop's clock."""
    clock = MonotonicClock()

    async def main() -> float | None:
        loop = asyncio.get_running_loop()
        timer = clock.timeout_at(clock.now() + 5.0)
        assert timer.when() is not None
        return (timer.when() or 0.0) - loop.time()

    with asyncio.Runner(loop_factory=_OffsetLoop) as runner:
        ahead = runner.run(main())
    assert ahead is not None and 4.9 < ahead <= 5.0
