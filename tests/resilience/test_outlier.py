"""Outlier detection: Envoy-style consecutive-failure ejection, exact with a manual clock."""

from __future__ import annotations

from typing import Any

import pytest

from fastapi_mesh.clock import ManualClock
from fastapi_mesh.events import EventBus
from fastapi_mesh.resilience.outlier import OUTLIER_EJECTED, OUTLIER_RETURNED, EndpointEjection, OutlierDetector
from fastapi_mesh.settings import OutlierDetectionConfig

A, B, C = "http://10.0.0.1:8080", "http://10.0.0.2:8080", "http://10.0.0.3:8080"


def make(
    clock: ManualClock | None = None, events: EventBus | None = None, **config: Any
) -> tuple[OutlierDetector, ManualClock]:
    options: dict[str, Any] = {"consecutive_failures": 3, "base_ejection_time": 10.0, "max_ejection_time": 100.0}
    options.update(config)
    clock = clock or ManualClock()
    return OutlierDetector("users", OutlierDetectionConfig(**options), clock, events), clock


def fail(detector: OutlierDetector, url: str, times: int, total: int = 3) -> None:
    for _ in range(times):
        detector.record(url, False, total)


def eject(detector: OutlierDetector, url: str, total: int = 3) -> None:
    fail(detector, url, detector.config.consecutive_failures, total)
    assert detector.is_ejected(url)


def ejection_time(detector: OutlierDetector, clock: ManualClock, url: str) -> float:
    """Seconds until ``url`` comes back, found by stepping the clock (leaves it just returned)."""
    start = clock.now()
    while detector.is_ejected(url):
        clock.advance(1.0)
    return clock.now() - start


def test_ejects_after_exactly_n_consecutive_failures() -> None:
    """N-1 failures in a row leave the endpoint in; the N-th ejects it."""
    detector, _ = make()
    fail(detector, A, 2)
    assert not detector.is_ejected(A)
    assert detector.ejected_count() == 0
    fail(detector, A, 1)
    assert detector.is_ejected(A)
    assert detector.ejected_count() == 1
    assert not detector.is_ejected(B)


def test_success_in_between_resets_the_run() -> None:
    """A success resets the consecutive count, so N failures with a success among them do not eject."""
    detector, _ = make()
    fail(detector, A, 2)
    detector.record(A, True, 3)
    fail(detector, A, 2)
    assert not detector.is_ejected(A)
    fail(detector, A, 1)
    assert detector.is_ejected(A)


def test_success_on_an_unknown_endpoint_keeps_no_record() -> None:
    """Successes alone create no per-endpoint record."""
    detector, _ = make()
    for _ in range(10):
        detector.record(A, True, 3)
    assert detector.as_dict() == {}


def test_returns_exactly_when_the_ejection_time_is_up() -> None:
    """An ejection of base_ejection_time ends at that instant, not before."""
    detector, clock = make()
    eject(detector, A)
    clock.advance(9.999)
    assert detector.is_ejected(A)
    clock.advance(0.001)
    assert not detector.is_ejected(A)
    assert detector.ejected_count() == 0


def test_ejection_time_grows_with_each_ejection_and_is_capped() -> None:
    """The n-th ejection lasts n x base_ejection_time, up to max_ejection_time."""
    detector, clock = make(base_ejection_time=10.0, max_ejection_time=35.0)
    durations = []
    for _ in range(5):
        eject(detector, A)
        durations.append(ejection_time(detector, clock, A))
    assert durations == [10.0, 20.0, 30.0, 35.0, 35.0]
    assert detector.as_dict()[A]["ejections"] == 5


def test_failures_while_ejected_are_ignored() -> None:
    """Results of calls that were in flight when the endpoint was ejected do not count."""
    detector, clock = make()
    eject(detector, A)
    fail(detector, A, 10)
    clock.advance(10.0)
    assert not detector.is_ejected(A)
    fail(detector, A, 2)
    assert not detector.is_ejected(A)
    assert detector.as_dict()[A]["ejections"] == 1


def test_return_is_noticed_lazily_by_the_next_failure() -> None:
    """A failure after the ejection expired (unasked) starts a new run instead of being ignored."""
    detector, clock = make()
    eject(detector, A)
    clock.advance(15.0)
    fail(detector, A, 3)
    assert detector.is_ejected(A)
    assert ejection_time(detector, clock, A) == 20.0


def test_max_ejection_percent_is_respected() -> None:
    """With 3 endpoints and 34%, at most one is ejected at a time."""
    detector, clock = make(max_ejection_percent=34.0)
    eject(detector, A)
    fail(detector, B, 5)
    assert not detector.is_ejected(B)
    assert detector.ejected_count() == 1
    clock.advance(10.0)
    fail(detector, B, 1)  # A is back: B's run still stands, so its next failure ejects it
    assert detector.is_ejected(B)
    assert not detector.is_ejected(A)
    assert detector.ejected_count() == 1


def test_max_ejection_percent_allows_the_exact_share() -> None:
    """Ejecting exactly max_ejection_percent of the endpoints is allowed (10 endpoints, 20%: two)."""
    detector, _ = make(max_ejection_percent=20.0)
    for url in (A, B, C):
        fail(detector, url, 3, total=10)
    assert [detector.is_ejected(url) for url in (A, B, C)] == [True, True, False]


def test_zero_percent_never_ejects() -> None:
    """max_ejection_percent=0 turns ejection off."""
    detector, _ = make(max_ejection_percent=0.0)
    fail(detector, A, 10)
    assert not detector.is_ejected(A)


def test_never_ejects_the_last_endpoint_even_at_100_percent() -> None:
    """At 100% two of three endpoints may be ejected, never the third; a lone endpoint never."""
    detector, _ = make(max_ejection_percent=100.0)
    eject(detector, A)
    eject(detector, B)
    fail(detector, C, 10)
    assert not detector.is_ejected(C)
    assert detector.ejected_count() == 2
    lone, _ = make(max_ejection_percent=100.0)
    fail(lone, A, 10, total=1)
    assert not lone.is_ejected(A)


@pytest.mark.parametrize("percent", [50.0, 100.0])
def test_two_endpoints_keep_one_in(percent: float) -> None:
    """Of two failing endpoints one is ejected and one always stays."""
    detector, _ = make(max_ejection_percent=percent)
    fail(detector, A, 3, total=2)
    fail(detector, B, 3, total=2)
    assert detector.is_ejected(A)
    assert not detector.is_ejected(B)


def test_uneject_returns_at_once_and_keeps_the_count() -> None:
    """uneject (a health check passed) ends the ejection now; the next ejection still grows."""
    detector, clock = make()
    eject(detector, A)
    clock.advance(4.0)
    detector.uneject(A)
    assert not detector.is_ejected(A)
    assert detector.ejected_count() == 0
    detector.uneject(B)  # not ejected, unknown: nothing happens
    eject(detector, A)
    assert ejection_time(detector, clock, A) == 20.0


def test_forget_drops_the_endpoint() -> None:
    """forget (the endpoint left discovery) clears its ejection and its history."""
    detector, _ = make()
    eject(detector, A)
    fail(detector, B, 2)
    detector.forget(A)
    detector.forget(B)
    detector.forget(C)
    assert not detector.is_ejected(A)
    assert detector.ejected_count() == 0
    assert detector.as_dict() == {}
    fail(detector, B, 2)
    assert not detector.is_ejected(B)


def test_ejection_count_decays_after_a_quiet_period() -> None:
    """Back for as long as its last ejection lasted with no failure, an endpoint's count drops by one."""
    detector, clock = make()
    eject(detector, A)
    assert ejection_time(detector, clock, A) == 10.0
    eject(detector, A)
    assert ejection_time(detector, clock, A) == 20.0  # count 2, back at t=30
    clock.advance(19.0)
    assert detector.as_dict()[A]["ejections"] == 2
    clock.advance(1.0)  # 20 s back without a failure
    assert detector.as_dict()[A]["ejections"] == 1
    eject(detector, A)  # count 1 -> 2: 20 s, not 30 s
    assert ejection_time(detector, clock, A) == 20.0


def test_decay_takes_one_per_quiet_period_down_to_zero() -> None:
    """Each further quiet period takes one more off, and the count never goes below zero."""
    detector, clock = make(max_ejection_time=30.0)
    for expected in (10.0, 20.0, 30.0):
        eject(detector, A)
        assert ejection_time(detector, clock, A) == expected
    clock.advance(60.0)  # two periods of 30 s
    assert detector.as_dict()[A]["ejections"] == 1
    clock.advance(1000.0)
    assert detector.as_dict()[A]["ejections"] == 0
    eject(detector, A)
    assert ejection_time(detector, clock, A) == 10.0


def test_a_failure_restarts_the_quiet_period() -> None:
    """A failure short of ejection means the endpoint must stay quiet a full period again."""
    detector, clock = make()
    eject(detector, A)
    ejection_time(detector, clock, A)
    clock.advance(9.0)
    fail(detector, A, 1)
    detector.record(A, True, 3)
    clock.advance(9.0)
    assert detector.as_dict()[A]["ejections"] == 1
    clock.advance(1.0)
    assert detector.as_dict()[A]["ejections"] == 0


def test_as_dict_reports_ejection_state() -> None:
    """as_dict shows each known endpoint's run, count and remaining ejection, without side effects."""
    detector, clock = make()
    eject(detector, A)
    fail(detector, B, 2)
    clock.advance(4.0)
    assert detector.as_dict() == {
        A: {"ejected": True, "ejections": 1, "consecutive_failures": 0, "ejected_for_s": 6.0},
        B: {"ejected": False, "ejections": 0, "consecutive_failures": 2, "ejected_for_s": 0.0},
    }
    clock.advance(6.0)
    assert detector.as_dict()[A]["ejected"] is False


def test_events_for_ejection_and_return() -> None:
    """Ejection and return emit EndpointEjection events with the count and the time out."""
    bus = EventBus()
    ejected: list[EndpointEjection] = []
    returned: list[EndpointEjection] = []
    bus.on(OUTLIER_EJECTED, ejected.append)
    bus.on(OUTLIER_RETURNED, returned.append)
    detector, clock = make(events=bus)
    eject(detector, A)
    clock.advance(12.0)  # noticed late, dated at the true end (t=10)
    assert not detector.is_ejected(A)
    eject(detector, A)
    clock.advance(5.0)
    detector.uneject(A)
    assert ejected == [EndpointEjection("users", A, 1, 10.0), EndpointEjection("users", A, 2, 20.0)]
    assert returned == [EndpointEjection("users", A, 1, 10.0), EndpointEjection("users", A, 2, 5.0)]
    assert OUTLIER_EJECTED == "outlier:ejected"
    assert OUTLIER_RETURNED == "outlier:returned"


class SpyBus(EventBus):
    """An event bus that notes the name of everything emitted."""

    def __init__(self) -> None:
        super().__init__()
        self.emitted: list[str] = []

    def emit(self, name: str, event: Any) -> None:
        self.emitted.append(name)
        super().emit(name, event)


def test_events_are_only_built_for_subscribed_names() -> None:
    """With a subscriber for returns only, an ejection emits nothing and a return emits once."""
    bus = SpyBus()
    bus.on(OUTLIER_RETURNED, lambda event: None)
    detector, clock = make(events=bus)
    eject(detector, A)
    clock.advance(10.0)
    assert detector.ejected_count() == 0
    assert bus.emitted == [OUTLIER_RETURNED]


def test_disabled_never_ejects() -> None:
    """enabled=False turns the detector off entirely."""
    detector, _ = make(enabled=False)
    fail(detector, A, 100)
    assert not detector.is_ejected(A)
    assert detector.ejected_count() == 0
    assert detector.as_dict() == {}
