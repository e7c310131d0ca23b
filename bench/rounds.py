"""The order variants take within a round of interleaved measurements.

Measured in a fixed order, the variant measured first in every round was 2-5% slower than the same code
measured second (an A/B of two identical-cost variants on a mock transport, either created first): a
position effect, not a cost. Rotating the order by one place each round gives every variant each position
equally often over a multiple of ``len(items)`` rounds, so the medians compare the variants, not their
places.

>>> [in_turn("abc", round_) for round_ in range(4)]
[['a', 'b', 'c'], ['b', 'c', 'a'], ['c', 'a', 'b'], ['a', 'b', 'c']]
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")


def in_turn(items: Iterable[T], round_: int) -> list[T]:
    """``items`` rotated by ``round_`` places: round 0 in the given order, round 1 from the second, ..."""
    listed = list(items)
    if not listed:
        return listed
    shift = round_ % len(listed)
    return listed[shift:] + listed[:shift]
