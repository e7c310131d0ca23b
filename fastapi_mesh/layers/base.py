"""What every outbound layer shares: an inner transport, the clock, and the contract with the call's context.

The client puts one ``CallContext`` in ``request.extensions["mesh"]`` (``EXTENSION``) before a request enters
the stack; it is the only way a layer learns about the call (no contextvars, no globals). A layer reads it
there and states in ``reads`` and ``writes`` which of its fields it relies on and which it sets, so the
contract between the layers is written down next to each of them (a test holds each layer to it). A
hedge gets a context of its own (``CallContext.hedge``): below the retry layer, ``endpoint``, ``group`` and
the other per-attempt fields are the attempt's.
"""

from __future__ import annotations

from typing import ClassVar

import httpx

from ..clock import Clock

__all__ = ["Layer"]


class Layer(httpx.AsyncBaseTransport):
    """One layer of the stack: ``Layer(inner, *, clock)`` wraps ``inner``; closing it closes ``inner``."""

    #: The ``CallContext`` fields the layer reads (``request.extensions["mesh"]``).
    reads: ClassVar[tuple[str, ...]] = ()
    #: The ``CallContext`` fields the layer sets.
    writes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, inner: httpx.AsyncBaseTransport, *, clock: Clock) -> None:
        self._inner = inner
        self._clock = clock

    async def aclose(self) -> None:
        await self._inner.aclose()
