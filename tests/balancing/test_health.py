"""Eligibility: health, panic mode, connection limits, retries, slow start, zone awareness, endpoint updates."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from fastapi_mesh.clock import ManualClock
from fastapi_mesh.errors import BulkheadFull, NoHealthyEndpoints
from tests.balancing.support import balancer, call, endpoints, host, pick


def test_no_endpoints_raises_no_healthy_endpoints_naming_the_service() -> None:
    """A service with nothing discovered raises NoHealthyEndpoints naming it."""
    with pytest.raises(NoHealthyEndpoints, match="'svc'"):
        pick(balancer(), call())


def test_unhealthy_endpoints_are_skipped() -> None:
    """An endpoint failing its active health checks gets nothing while enough others pass."""
    b = balancer(endpoints(3))
    b.endpoints[0].healthy = False
    assert "10.0.0.1" not in Counter(host(pick(b, call())) for _ in range(30))


def test_panic_mode_balances_across_all_endpoints() -> None:
    """With 1 of 4 healthy (25% < 50%) every endpoint is picked; with 2 of 4 (50%) only the healthy."""
    b = balancer(endpoints(4))
    for state in b.endpoints[1:]:
        state.healthy = False
    assert len({pick(b, call()) for _ in range(8)}) == 4
    assert b.as_dict()["panic"] is True
    b.endpoints[1].healthy = True
    assert {host(pick(b, call())) for _ in range(8)} == {"10.0.0.1", "10.0.0.2"}
    assert b.as_dict()["panic"] is False


def test_panic_threshold_is_configurable() -> None:
    """panic_threshold 0 never panics: all unhealthy raises NoHealthyEndpoints."""
    b = balancer(endpoints(2), panic_threshold=0)
    for state in b.endpoints:
        state.healthy = False
    with pytest.raises(NoHealthyEndpoints, match="all 2 endpoints are unhealthy"):
        pick(b, call())


def test_outlier_ejections_never_trigger_panic() -> None:
    """Three of four ejected as outliers: calls go to the one left, not back to the ejected ones."""
    b = balancer(endpoints(4), outlier={"consecutive_failures": 1})
    for state in b.endpoints[:3]:
        b.record(state, False, 0.01)
    assert {host(pick(b, call())) for _ in range(10)} == {"10.0.0.4"}


def test_full_endpoint_is_skipped_and_all_full_is_bulkhead_full() -> None:
    """An endpoint at max_connections_per_instance is skipped; every one full raises BulkheadFull at once."""
    b = balancer(endpoints(2), max_connections_per_instance=2)
    first, second = b.endpoints
    b.acquire(first)
    b.acquire(first)
    assert {pick(b, call()) for _ in range(4)} == {second}
    b.acquire(second)
    b.acquire(second)
    with pytest.raises(BulkheadFull, match=r"'svc'.*max_connections_per_instance \(2\)"):
        pick(b, call())
    b.release(first)
    assert pick(b, call()) is first


def test_retry_skips_tried_endpoints_while_another_is_left() -> None:
    """A retry goes to an endpoint not yet tried; when all were tried, a tried one is used again."""
    b = balancer(endpoints(3))
    first, second, third = b.endpoints
    assert pick(b, call(tried=[first, second])) is third
    assert pick(b, call(tried=[first, second, third])) in (first, second, third)


def test_retry_does_not_use_up_a_turn() -> None:
    """Round robin over two endpoints: a failing first endpoint gets every other call, not every call."""
    b = balancer(endpoints(2))
    first, second = b.endpoints
    firsts = []
    for _ in range(6):
        state = pick(b, call())
        firsts.append(state)
        if state is first:  # it fails: the retry goes to the other endpoint
            assert pick(b, call(tried=[first])) is second
    assert firsts == [first, second] * 3


def test_ejected_endpoint_is_used_when_it_is_the_only_one_left() -> None:
    """At least one endpoint always stays: with the other one full, the ejected endpoint takes the call;
    a retry prefers an endpoint it tried over an ejected one."""
    b = balancer(endpoints(2), outlier={"consecutive_failures": 1}, max_connections_per_instance=1)
    first, second = b.endpoints
    b.record(first, False, 0.01)
    assert b.outlier.is_ejected(first.url)
    assert pick(b, call(tried=[second])) is second
    b.acquire(second)
    assert pick(b, call()) is first


@pytest.mark.parametrize("strategy", ["round-robin", "weighted"])
def test_slow_start_ramps_a_new_endpoint_up_exactly(strategy: str) -> None:
    """A third endpoint added with a 10 s slow start has weight f = 10%, 50%, 100% at 0, 5 and 10 s; the
    deterministic strategies then give it exactly one pick in every (2 + f) / f: every 21st, 5th, 3rd."""
    clock = ManualClock()
    b = balancer(endpoints(2), clock=clock, strategy=strategy, slow_start_window=10)
    b.update(endpoints(3))
    new = b.endpoints[2]
    for elapsed, warmth, every in ((0.0, 0.1, 21), (5.0, 0.5, 5), (10.0, 1.0, 3)):
        clock.advance(elapsed - clock.now())
        assert new.warmth(clock.now()) == warmth
        hits = [i for i in range(300) if pick(b, call()) is new]
        assert {later - earlier for earlier, later in itertools.pairwise(hits)} == {every}


@pytest.mark.parametrize("strategy", ["random", "least-response-time", "p2c-ewma", "least-connections"])
def test_slow_start_ramps_a_new_endpoint_up(strategy: str) -> None:
    """The same ramp for the random strategies: ``random`` gives the new endpoint f / (2 + f) of the calls at
    warmth f; the power-of-two-choices ones and least-connections pass it over with probability 1 - f,
    which with equal latencies (and nothing in flight) gives it f / 3."""
    clock = ManualClock()
    b = balancer(endpoints(2), clock=clock, strategy=strategy, slow_start_window=10, seed=5)
    b.update(endpoints(3))
    new = b.endpoints[2]
    for state in b.endpoints:
        b.record(state, True, 0.01)
    for elapsed, warmth in ((0.0, 0.1), (5.0, 0.5), (10.0, 1.0)):
        clock.advance(elapsed - clock.now())
        assert new.warmth(clock.now()) == warmth
        share = sum(pick(b, call()) is new for _ in range(6_000)) / 6_000
        assert share == pytest.approx(warmth / (2 + warmth) if strategy == "random" else warmth / 3, abs=0.02)


def test_initial_endpoints_do_not_slow_start() -> None:
    """The first endpoint set a balancer receives is at full weight at once."""
    b = balancer(endpoints(3), slow_start_window=60)
    assert Counter(host(pick(b, call())) for _ in range(300)) == {f"10.0.0.{i}": 100 for i in range(1, 4)}


ZONES = ["a", "a", "a", "b", "b", "b"]


def test_local_zone_is_preferred() -> None:
    """With zone a, every call goes to one of the three zone-a endpoints."""
    b = balancer(endpoints(6, zones=ZONES), zone="a")
    assert {pick(b, call()).endpoint.zone for _ in range(30)} == {"a"}


def test_zone_awareness_can_be_turned_off() -> None:
    """zone_aware false: calls go to every zone."""
    b = balancer(endpoints(6, zones=ZONES), zone="a", zone_aware=False)
    assert {pick(b, call()).endpoint.zone for _ in range(30)} == {"a", "b"}


def test_too_few_healthy_local_endpoints_open_other_zones() -> None:
    """With 2 of 3 local endpoints healthy (67% < 70%) the healthy endpoints of every zone share calls."""
    b = balancer(endpoints(6, zones=ZONES), zone="a")
    b.endpoints[0].healthy = False
    picked = Counter(pick(b, call()).endpoint.zone for _ in range(50))
    assert set(picked) == {"a", "b"}
    b.endpoints[0].healthy = True
    assert {pick(b, call()).endpoint.zone for _ in range(30)} == {"a"}


def test_ejected_local_endpoints_count_as_unavailable() -> None:
    """An outlier ejection in the local zone (2 of 3 left) opens the other zone too; it closes on return."""
    clock = ManualClock()
    b = balancer(endpoints(6, zones=ZONES), zone="a", clock=clock, outlier={"consecutive_failures": 1})
    b.record(b.endpoints[0], False, 0.01)
    assert {pick(b, call()).endpoint.zone for _ in range(30)} == {"a", "b"}
    clock.advance(30)
    assert {pick(b, call()).endpoint.zone for _ in range(30)} == {"a"}


def test_full_local_zone_spills_over() -> None:
    """When every local endpoint is at its limit the call goes to another zone instead of failing."""
    b = balancer(endpoints(4, zones=["a", "a", "b", "b"]), zone="a", max_connections_per_instance=1)
    for state in b.endpoints[:2]:
        b.acquire(state)
    assert pick(b, call()).endpoint.zone == "b"


def test_retry_leaves_the_zone_before_reusing_a_tried_endpoint() -> None:
    """A retry whose only local endpoint was tried goes to the other zone."""
    b = balancer(endpoints(3, zones=["a", "b", "b"]), zone="a", zone_min_healthy_percent=0)
    local = b.endpoints[0]
    assert pick(b, call()) is local
    assert pick(b, call(tried=[local])).endpoint.zone == "b"


def test_update_keeps_the_state_of_endpoints_that_stay() -> None:
    """A refresh keeps in-flight counts and latency of endpoints that stay; leavers are forgotten."""
    b = balancer(endpoints(3), strategy="least-connections")
    kept = b.endpoints[1]
    b.acquire(kept)
    b.record(kept, True, 0.2)
    b.update(endpoints(3, start=2))
    assert b.endpoints[0] is kept
    assert kept.in_flight == 1 and kept.ewma == 0.2
    assert [host(s) for s in b.endpoints] == ["10.0.0.2", "10.0.0.3", "10.0.0.4"]
    assert pick(b, call()) is not kept  # least-connections still sees its call in flight
    b.release(kept)


def test_unchanged_refresh_rebuilds_nothing() -> None:
    """Publishing the same set again keeps the pools (and the rotation) as they are."""
    b = balancer(endpoints(3))
    pool = b._root.all
    pick(b, call())
    b.update(endpoints(3))
    assert b._root.all is pool
    assert host(pick(b, call())) == "10.0.0.2"


def test_weight_change_is_applied() -> None:
    """A refresh that changes a weight rebuilds the schedule with it."""
    b = balancer(endpoints(2), strategy="weighted")
    b.update(endpoints(2, weights=[1, 3]))
    assert Counter(host(pick(b, call())) for _ in range(400)) == {"10.0.0.1": 100, "10.0.0.2": 300}
