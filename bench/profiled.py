"""Python function calls per call, counted with ``sys.setprofile``: a machine-independent figure (the
same count means the same code ran), where CPU time moves with the machine's load."""

from __future__ import annotations

import gc
import sys
from collections.abc import Awaitable, Callable
from typing import Any


async def python_calls_per_call(call: Callable[[int], Awaitable[object]], calls: int) -> float:
    """The Python function calls ``await call(i)`` makes, on average over ``i`` in ``range(calls)``.

    Only the awaited call is counted (``call`` may do untimed set-up before it returns its awaitable), and
    no collection runs meanwhile: one falling inside a call would run weakref callbacks and finalizers that
    belong to no call, so the count would not be the same for the same code.
    """
    counted = 0

    def count(frame: Any, event: str, arg: Any) -> None:
        nonlocal counted
        if event == "call":
            counted += 1

    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(calls):
            pending = call(i)
            sys.setprofile(count)
            try:
                await pending
            finally:
                sys.setprofile(None)
    finally:
        if enabled:
            gc.enable()
    return counted / calls
