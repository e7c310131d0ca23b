"""Python calls per call: the count is the code's, not the garbage collector's."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Awaitable

from bench.profiled import python_calls_per_call


class _Node:
    other: _Node


def _on_collected(ref: weakref.ref[_Node]) -> None:  # a Python call, when a collection reaches it
    pass


def test_a_collection_due_inside_a_call_adds_nothing_and_the_collector_is_left_as_it_was() -> None:
    refs: list[weakref.ref[_Node]] = []

    async def body() -> None:
        for _ in range(20):  # cyclic garbage whose collection runs a Python callback
            a, b = _Node(), _Node()
            a.other, b.other = b, a
            refs.append(weakref.ref(a, _on_collected))

    threshold = gc.get_threshold()
    gc.set_threshold(1)  # a collection would fall inside every call
    try:
        counted = asyncio.run(python_calls_per_call(lambda i: body(), 30))
    finally:
        gc.set_threshold(*threshold)
    assert counted == 1.0  # the coroutine's own frame, nothing else
    assert gc.isenabled()


def test_set_up_before_the_awaitable_is_not_counted() -> None:
    seen: list[int] = []

    async def nothing() -> None:
        return None

    def call(i: int) -> Awaitable[None]:
        seen.append(i)  # set-up: a list method, not counted either way
        [str(n) for n in range(3)]  # a comprehension is a Python call on 3.11, made before counting starts
        return nothing()

    assert asyncio.run(python_calls_per_call(call, 4)) == 1.0
    assert seen == [0, 1, 2, 3]
