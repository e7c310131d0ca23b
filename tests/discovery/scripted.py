"""A discovery backend that answers from a script, a clock whose sleeps end only when a test moves it, and
the bounded wait every discovery test polls with."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

from fastapi_mesh.discovery import Answer, BackgroundDiscovery, Endpoint
from fastapi_mesh.settings import DiscoveryConfig


class SteppedClock:
    """Time moves only on ``advance``; a sleep ends once the time it waits for has come (never by itself)."""

    def __init__(self) -> None:
        self._now = 0.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self._now + max(seconds, 0.0), future))
        await future

    @property
    def sleeping(self) -> int:
        return sum(1 for _, f in self._sleepers if not f.done())

    async def advance(self, seconds: float) -> None:
        self._now += seconds
        for when, future in self._sleepers:
            if when <= self._now and not future.done():
                future.set_result(None)
        self._sleepers = [(w, f) for w, f in self._sleepers if not f.done()]
        for _ in range(5):  # let the woken tasks run up to their next wait
            await asyncio.sleep(0)


class ScriptedDiscovery(BackgroundDiscovery):
    """``fetch`` answers with what the test queued per service: endpoint URLs, an exception, or an
    ``asyncio.Event`` to wait on first. An empty queue blocks (like a blocking query with no change)."""

    backend = "scripted"

    def __init__(self, config: DiscoveryConfig | None = None, **kwargs: Any) -> None:
        super().__init__(config or DiscoveryConfig(backoff=1.0, max_backoff=8.0, empty_grace=30.0), **kwargs)
        self.script: dict[str, deque[Any]] = {}
        self.fetches: dict[str, int] = {}
        self._more: dict[str, asyncio.Event] = {}

    def queue(self, service: str, *answers: Any) -> None:
        self.script.setdefault(service, deque()).extend(answers)
        self._more.setdefault(service, asyncio.Event()).set()

    async def fetch(self, service: str, cursor: Any) -> Answer:
        self.fetches[service] = self.fetches.get(service, 0) + 1
        queue = self.script.setdefault(service, deque())
        more = self._more.setdefault(service, asyncio.Event())
        while not queue:
            more.clear()
            await more.wait()
        item = queue.popleft()
        if isinstance(item, asyncio.Event):
            await item.wait()
            item = queue.popleft()
        if isinstance(item, BaseException):
            raise item
        return Answer([Endpoint(url) for url in item])


async def eventually(condition: Callable[[], object], what: str = "the condition", timeout: float = 5.0) -> float:
    """Seconds until ``condition()`` holds, polling; fails the test when it does not within ``timeout``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not condition():
        if loop.time() - start > timeout:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        await asyncio.sleep(0.005)
    return loop.time() - start
