"""Retry budget: a share of recent requests plus a floor, over a sliding window, exact with a manual clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastapi_mesh.clock import ManualClock
from fastapi_mesh.resilience.budget import RetryBudget

#: Float slack for comparing the test's arithmetic with the budget's (both see the same exact inputs).
EPSILON = 1e-6


def make(percent: float = 20.0, ttl: float = 10.0, min_per_second: float = 0.0) -> tuple[RetryBudget, ManualClock]:
    clock = ManualClock()
    return RetryBudget(percent, ttl, min_per_second, clock), clock


def deposit(budget: RetryBudget, requests: int) -> None:
    for _ in range(requests):
        budget.record_request()


def withdrawals(budget: RetryBudget, attempts: int) -> int:
    return sum(budget.try_withdraw() for _ in range(attempts))


def test_percent_of_the_requests_in_the_window() -> None:
    """100 requests at 20% and no floor allow exactly 20 retries."""
    budget, _ = make(percent=20.0)
    deposit(budget, 100)
    assert withdrawals(budget, 20) == 20
    assert not budget.try_withdraw()


def test_floor_adds_to_the_percent() -> None:
    """The floor of min_per_second x ttl comes on top of the percent."""
    budget, _ = make(percent=20.0, min_per_second=1.0)
    deposit(budget, 100)
    assert withdrawals(budget, 50) == 30


def test_floor_lets_a_quiet_service_retry() -> None:
    """With no requests at all, the floor alone allows min_per_second x ttl retries."""
    budget, _ = make(percent=20.0, ttl=10.0, min_per_second=0.5)
    assert withdrawals(budget, 10) == 5


def test_fractional_allowance_rounds_down() -> None:
    """A retry needs a whole token: 20% of 9 requests allows one retry, not two."""
    budget, _ = make(percent=20.0)
    deposit(budget, 9)
    assert budget.available() == 1
    assert withdrawals(budget, 3) == 1


def test_no_percent_and_no_floor_never_retries() -> None:
    """percent=0 and min_per_second=0 refuse every retry."""
    budget, _ = make(percent=0.0, min_per_second=0.0)
    deposit(budget, 1000)
    assert withdrawals(budget, 5) == 0


def test_deposits_expire_after_ttl() -> None:
    """Requests stop counting ttl seconds after the start of their one-second slot."""
    budget, clock = make(percent=20.0, ttl=10.0, min_per_second=0.2)
    deposit(budget, 100)
    clock.advance(0.5)
    deposit(budget, 50)
    clock.advance(9.499)
    assert budget.available() == 30 + 2
    clock.advance(0.001)  # t = 10: both slots are out of the window
    assert budget.available() == 2
    assert withdrawals(budget, 5) == 2


def test_retries_leave_the_window_one_slot_after_requests() -> None:
    """Retries are counted over one slot more than requests, so the window never undercounts them."""
    budget, clock = make(percent=20.0, ttl=10.0)
    deposit(budget, 100)
    assert withdrawals(budget, 20) == 20
    clock.advance(5.0)
    deposit(budget, 100)
    assert budget.available() == 20
    clock.advance(5.0)  # t = 10: the first requests are gone, the first retries still count
    assert budget.available() == 0
    clock.advance(1.0)  # t = 11: now the first retries are gone too
    assert budget.available() == 20


def test_a_long_pause_empties_the_window() -> None:
    """After more than a whole window of silence nothing old is counted."""
    budget, clock = make(percent=50.0)
    deposit(budget, 10)
    assert withdrawals(budget, 5) == 5
    clock.advance(1000.0)
    assert budget.as_dict()["requests"] == 0
    assert budget.as_dict()["retries"] == 0
    deposit(budget, 4)
    assert withdrawals(budget, 5) == 2


def test_refusals_are_counted() -> None:
    """Every refused retry adds one to exhausted_count."""
    budget, _ = make(percent=10.0)
    deposit(budget, 20)
    assert withdrawals(budget, 7) == 2
    assert budget.exhausted_count == 5


def test_as_dict() -> None:
    """as_dict shows the configuration, the window's counts, what is left and the refusals."""
    budget, _ = make(percent=20.0, ttl=10.0, min_per_second=0.1)
    deposit(budget, 10)
    withdrawals(budget, 5)
    assert budget.as_dict() == {
        "percent": 20.0,
        "ttl": 10.0,
        "min_per_second": 0.1,
        "requests": 10,
        "retries": 3,
        "available": 0,
        "exhausted": 2,
    }


@pytest.mark.parametrize(
    ("ttl", "buckets", "width"), [(1.0, 8, 0.125), (2.0, 8, 0.25), (10.0, 10, 1.0), (60.0, 60, 1.0)]
)
def test_slots_are_at_most_a_second(ttl: float, buckets: int, width: float) -> None:
    """The window is cut into at least 8 slots of at most one second each."""
    budget, _ = make(ttl=ttl)
    assert (budget.buckets, budget.width) == (buckets, width)


@pytest.mark.parametrize(("percent", "ttl", "min_per_second"), [(-1.0, 10.0, 0.0), (20.0, 0.0, 0.0), (20.0, 1, -1)])
def test_invalid_arguments_are_refused(percent: float, ttl: float, min_per_second: float) -> None:
    """A negative percent or floor, or a ttl that is not positive, is a ValueError."""
    with pytest.raises(ValueError, match="retry budget"):
        RetryBudget(percent, ttl, min_per_second, ManualClock())


#: One step: advance the clock by this many sixteenths of a second, then make requests, then ask for retries.
steps = st.lists(
    st.tuples(
        st.one_of(st.integers(0, 24), st.integers(0, 400)),
        st.integers(0, 30),
        st.integers(0, 30),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(
    ttl=st.sampled_from([1.0, 2.0, 2.5, 5.0, 10.0]),
    percent=st.sampled_from([0.0, 10.0, 20.0, 33.3, 50.0, 100.0, 250.0]),
    min_per_second=st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.5]),
    operations=steps,
)
def test_retries_never_exceed_the_budget_in_any_window(
    ttl: float, percent: float, min_per_second: float, operations: list[tuple[int, int, int]]
) -> None:
    """At every allowed retry, retries in the ttl before it stay within percent x requests + floor; and a
    refusal happens only when the window, one slot narrower for requests and wider for retries, is full."""
    budget, clock = make(percent, ttl, min_per_second)
    floor = min_per_second * ttl
    requests: list[float] = []
    retries: list[float] = []
    made_before: list[int] = []  # requests made before each allowed retry
    refused: list[tuple[float, int, int]] = []  # (time, retries allowed and requests made before it)
    for sixteenths, new_requests, attempts in operations:
        clock.advance(sixteenths / 16)
        now = clock.now()
        for _ in range(new_requests):
            budget.record_request()
            requests.append(now)
        for _ in range(attempts):
            if budget.try_withdraw():
                retries.append(now)
                made_before.append(len(requests))
            else:
                refused.append((now, len(retries), len(requests)))
    # Times are exact multiples of 1/16 and slot widths are exact binary fractions: no rounding in time.
    for i, t in enumerate(retries):
        in_window = sum(1 for r in retries[: i + 1] if t - ttl <= r <= t)
        deposits = sum(1 for q in requests[: made_before[i]] if t - ttl < q <= t)
        assert in_window <= percent / 100 * deposits + floor + EPSILON
    # No rounding slack is needed either: a retry needs a whole token (see the module docstring).
    width = budget.width
    for t, retries_before, requests_before in refused:
        in_wider_window = sum(1 for r in retries[:retries_before] if t - ttl - width < r <= t)
        recent = sum(1 for q in requests[:requests_before] if t - ttl + width <= q <= t)
        assert in_wider_window + 1 > percent / 100 * recent + floor - EPSILON
    assert budget.exhausted_count == len(refused)
