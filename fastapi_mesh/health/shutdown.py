"""Graceful shutdown: readiness turns 503 at SIGTERM, the server keeps serving for ``drain_delay`` (so that
Kubernetes endpoints and load balancers stop sending new requests), then stops taking connections and
gives the requests in flight ``shutdown_grace`` to complete.

Under uvicorn (``uvicorn app:app``, ``fastapi-mesh serve``), the Mesh's lifespan puts ``DrainOnSignal``
in front of uvicorn's own SIGTERM handler: uvicorn alone would stop listening at once, so a readiness
probe during the drain could not even connect. Under another server the drain begins at lifespan
shutdown instead.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from .manager import HealthManager

__all__ = ["DrainOnSignal"]

logger = logging.getLogger("fastapi_mesh.health")

SignalHandler = Callable[[int, FrameType | None], Any]


def _uvicorn_server(handler: object) -> Any | None:
    """The uvicorn ``Server`` whose ``handle_exit`` ``handler`` is, or None."""
    server = getattr(handler, "__self__", None)
    if server is None or getattr(handler, "__name__", "") != "handle_exit":
        return None
    if not hasattr(server, "should_exit") or not hasattr(server, "config"):
        return None
    return server


class DrainOnSignal:
    """Holds SIGTERM back from uvicorn for ``drain_delay`` while readiness answers 503.

    ``install()`` returns False (and changes nothing) when SIGTERM is not uvicorn's, or off the main thread.
    A second SIGTERM during the drain goes to uvicorn at once.
    """

    def __init__(self, health: HealthManager, drain_delay: float, shutdown_grace: float) -> None:
        self._health = health
        self._drain_delay = drain_delay
        self._shutdown_grace = shutdown_grace
        self._original: SignalHandler | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self.signalled = False

    def install(self) -> bool:
        if threading.current_thread() is not threading.main_thread():
            return False
        current = signal.getsignal(signal.SIGTERM)
        server = _uvicorn_server(current)
        if server is None or not callable(current):
            return False
        if server.config.timeout_graceful_shutdown is None:
            # What uvicorn does with requests still running after the grace: cancel them, then run the
            # lifespan shutdown (closing clients, deregistering), instead of waiting for ever.
            server.config.timeout_graceful_shutdown = self._shutdown_grace
        self._original = current
        self._loop = asyncio.get_running_loop()
        signal.signal(signal.SIGTERM, self._on_signal)
        return True

    def uninstall(self) -> None:
        if self._original is not None and signal.getsignal(signal.SIGTERM) == self._on_signal:
            signal.signal(signal.SIGTERM, self._original)
        self._original = None
        if self._task is not None:
            self._task.cancel()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        original, loop = self._original, self._loop
        if original is None or loop is None:
            return
        if self.signalled:  # asked twice: stop draining, shut down now
            original(signum, frame)
            return
        self.signalled = True
        self._health.drain()
        logger.info(
            "SIGTERM: readiness answers 503; draining for %gs before the server stops taking connections",
            self._drain_delay,
        )
        loop.call_soon_threadsafe(self._start_drain, signum, frame)

    def _start_drain(self, signum: int, frame: FrameType | None) -> None:
        self._task = asyncio.get_running_loop().create_task(self._drain(signum, frame))

    async def _drain(self, signum: int, frame: FrameType | None) -> None:
        await asyncio.sleep(self._drain_delay)
        original = self._original
        if original is not None:
            original(signum, frame)  # uvicorn: stop listening, finish in-flight requests, lifespan shutdown
