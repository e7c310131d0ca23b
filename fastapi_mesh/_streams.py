"""A streamed response body that runs a callback once, when it is closed (slots held by ``stream()``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx

__all__ = ["ReleasingStream"]


class ReleasingStream(httpx.AsyncByteStream):
    """Wraps ``inner``; ``on_close`` runs once, after ``inner`` is closed (even if closing fails)."""

    def __init__(self, inner: httpx.AsyncByteStream, on_close: Callable[[], None]) -> None:
        self._inner = inner
        self._on_close: Callable[[], None] | None = on_close

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            on_close, self._on_close = self._on_close, None
            if on_close is not None:
                on_close()
