"""The order of variants within interleaved benchmark rounds: every variant takes every place in turn."""

from __future__ import annotations

import doctest

from hypothesis import given
from hypothesis import strategies as st

import bench.rounds
from bench.rounds import in_turn


@given(st.lists(st.integers(), min_size=1, max_size=12, unique=True), st.integers(min_value=1, max_value=4))
def test_over_a_multiple_of_the_variants_each_takes_each_place_equally_often(items: list[int], cycles: int) -> None:
    places: dict[tuple[int, int], int] = {}
    for round_ in range(cycles * len(items)):
        order = in_turn(items, round_)
        assert sorted(order) == sorted(items)  # every variant, once a round
        for place, item in enumerate(order):
            places[item, place] = places.get((item, place), 0) + 1
    assert places == {(item, place): cycles for item in items for place in range(len(items))}


def test_the_first_round_keeps_the_given_order_and_nothing_stays_nothing() -> None:
    assert in_turn(iter(["a", "b", "c"]), 0) == ["a", "b", "c"]
    assert in_turn(["a", "b", "c"], 1) == ["b", "c", "a"]
    assert in_turn([], 3) == []


def test_the_module_example_holds() -> None:
    found = doctest.testmod(bench.rounds)
    assert found.attempted > 0 and found.failed == 0
