"""Each strategy's spread, weights and load signals, with a seeded rng and a manual clock."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from fastapi_mesh.balancing import Balancer, EndpointState, build_strategy
from fastapi_mesh.balancing.endpoint import DEFAULT_RTT, FAILURE_PENALTY
from fastapi_mesh.balancing.hashing import Ring, key_hash, points_per_endpoint
from fastapi_mesh.balancing.strategies import MAX_TRIES, LeastConnections
from fastapi_mesh.clock import ManualClock
from fastapi_mesh.errors import BulkheadFull, NoHealthyEndpoints
from tests.balancing.support import CHI2_999, balancer, call, chi_square, count_checks, endpoints, host, pick

STRATEGIES = ["round-robin", "random", "weighted", "least-connections", "least-response-time", "ip-hash", "p2c-ewma"]


def picks(b: Balancer, count: int, **kw: str) -> Counter[str]:
    return Counter(host(pick(b, call(**kw))) for _ in range(count))


def test_round_robin_is_an_exact_rotation() -> None:
    """Round robin over three endpoints gives each one every third pick, in order."""
    b = balancer(endpoints(3))
    order = [host(pick(b, call())) for _ in range(9)]
    assert order == ["10.0.0.1", "10.0.0.2", "10.0.0.3"] * 3


@pytest.mark.parametrize("strategy", ["round-robin", "weighted"])
def test_deterministic_weights_are_exact(strategy: str) -> None:
    """Round robin and weighted give weights 1:2:3 exactly 100:200:300 of 600 picks."""
    b = balancer(endpoints(3, weights=[1, 2, 3]), strategy=strategy)
    assert picks(b, 600) == {"10.0.0.1": 100, "10.0.0.2": 200, "10.0.0.3": 300}


def test_weighted_interleaves_rather_than_bursts() -> None:
    """EDF spreads a 1:3 weighting: the light endpoint appears once in every window of four picks."""
    b = balancer(endpoints(2, weights=[1, 3]), strategy="weighted")
    order = [host(pick(b, call())) for _ in range(400)]
    assert all(order[i : i + 4].count("10.0.0.1") == 1 for i in range(0, 400, 4))


def test_weighted_zero_weight_gets_nothing_while_others_can_take_it() -> None:
    """An endpoint of weight 0 is never picked while a weighted one is eligible."""
    b = balancer(endpoints(3, weights=[0, 1, 1]), strategy="weighted")
    assert "10.0.0.1" not in picks(b, 100)


def test_random_spread_is_uniform() -> None:
    """Random over five equal endpoints passes a chi-square test over 20,000 picks."""
    b = balancer(endpoints(5), strategy="random")
    counts = picks(b, 20_000)
    assert chi_square(list(counts.values()), [4000] * 5) < CHI2_999[4]


def test_random_follows_weights() -> None:
    """Random with weights 1:2:3:4 matches those proportions (chi-square over 20,000 picks)."""
    b = balancer(endpoints(4, weights=[1, 2, 3, 4]), strategy="random")
    counts = picks(b, 20_000)
    observed = [counts[f"10.0.0.{i}"] for i in range(1, 5)]
    assert chi_square(observed, [2000, 4000, 6000, 8000]) < CHI2_999[3]


def test_least_connections_picks_the_fewest_in_flight() -> None:
    """With calls in flight on two endpoints the third is picked, and stays picked until it catches up."""
    b = balancer(endpoints(3), strategy="least-connections")
    first, second, third = b.endpoints
    for state, count in ((first, 2), (second, 1)):
        for _ in range(count):
            b.acquire(state)
    assert pick(b, call()) is third
    b.acquire(third)
    assert pick(b, call()) in (second, third)
    b.release(first)
    b.release(first)
    assert pick(b, call()) is first


def test_least_connections_breaks_ties_at_random() -> None:
    """With nothing in flight every endpoint is equally likely (chi-square over 9,000 picks)."""
    b = balancer(endpoints(3), strategy="least-connections")
    counts = picks(b, 9_000)
    assert chi_square(list(counts.values()), [3000] * 3) < CHI2_999[2]


def test_least_connections_stays_exact_under_churn() -> None:
    """After thousands of random acquires and releases every pick is an endpoint with the fewest in flight."""
    rng = random.Random(3)
    b = balancer(endpoints(20), strategy="least-connections")
    held: list[EndpointState] = []
    for _ in range(5_000):
        if held and rng.random() < 0.5:
            b.release(held.pop(rng.randrange(len(held))))
        else:
            state = pick(b, call())
            assert state.in_flight == min(s.in_flight for s in b.endpoints)
            b.acquire(state)
            held.append(state)
    strategy = b._root.all.strategy
    assert isinstance(strategy, LeastConnections)
    assert strategy._occupied == sorted({s.in_flight for s in b.endpoints})


def test_least_connections_skips_empty_counts_and_slow_starts() -> None:
    """A warming endpoint idle next to endpoints carrying 500 calls each: a pick that passes it over goes
    straight to the 500 bucket (no walk through 499 empty ones), and it gets about its warmth's share."""
    clock = ManualClock()
    b = balancer(
        endpoints(3), strategy="least-connections", slow_start_window=10, clock=clock, max_connections_per_instance=1000
    )
    for state in b.endpoints:
        for _ in range(500):
            b.acquire(state)
    b.update(endpoints(4))
    new = b.endpoints[3]
    clock.advance(5.0)  # warmth 0.5
    strategy = b._root.all.strategy
    assert isinstance(strategy, LeastConnections)
    assert strategy._occupied == [0, 500]
    checked = count_checks(b)
    share = sum(pick(b, call()) is new for _ in range(2_000)) / 2_000
    assert share == pytest.approx(0.5, abs=0.05)
    assert checked[0] <= 2_000 * 2


def test_least_response_time_avoids_the_slow_endpoint() -> None:
    """Power of two choices over latency EWMA: the one slow endpoint of four loses every pairing."""
    b = balancer(endpoints(4), strategy="least-response-time")
    for state in b.endpoints:
        b.record(state, True, 0.5 if host(state) == "10.0.0.4" else 0.01)
    counts = picks(b, 1_000)
    assert counts["10.0.0.4"] == 0
    assert all(counts[f"10.0.0.{i}"] > 250 for i in range(1, 4))


def test_least_response_time_does_not_herd_onto_an_unanswered_endpoint() -> None:
    """An endpoint with no answer yet is tried while idle, then passed over until its first call returns."""
    b = balancer(endpoints(2), strategy="least-response-time")
    known, new = b.endpoints
    b.record(known, True, 0.01)
    assert pick(b, call()) is new
    b.acquire(new)
    assert {pick(b, call()) for _ in range(20)} == {known}
    b.release(new)
    b.record(new, True, 0.02)
    assert {pick(b, call()) for _ in range(20)} == {known}


def test_p2c_ewma_weighs_latency_by_load() -> None:
    """p2c-ewma avoids a slow endpoint, until the fast ones carry enough calls to cost more."""
    clock = ManualClock()
    b = balancer(endpoints(2), strategy="p2c-ewma", clock=clock)
    fast, slow = b.endpoints
    b.record(fast, True, 0.010)
    b.record(slow, True, 0.100)
    assert {pick(b, call()) for _ in range(50)} == {fast}
    for _ in range(10):  # 0.010 x (10 + 1) > 0.100 x (0 + 1)
        b.acquire(fast)
    assert {pick(b, call()) for _ in range(50)} == {slow}


def test_p2c_ewma_peak_jumps_up_and_decays_back() -> None:
    """A slow sample sets the estimate at once; fast samples bring it down with the decay time constant."""
    clock = ManualClock()
    b = balancer(endpoints(1), strategy="p2c-ewma", clock=clock, peak_ewma_decay=10)
    state = b.endpoints[0]
    assert state.peak == 0.030  # the placeholder until the first answer
    b.record(state, True, 0.002)
    assert state.peak == 0.002
    clock.advance(0.5)
    b.record(state, True, 1.0)
    assert state.peak == 1.0
    clock.advance(10.0)  # one time constant: 1/e of the old estimate remains
    b.record(state, True, 0.0)
    assert state.peak == pytest.approx(0.36788, rel=1e-4)
    clock.advance(0.001)
    b.record(state, False, 0.0)  # a fast failure makes it look slower, at once
    assert state.peak > 0.5


def test_p2c_ewma_rested_slow_endpoint_is_tried_again() -> None:
    """Without new samples a slow endpoint's estimate decays towards zero, so it gets traffic again."""
    clock = ManualClock()
    b = balancer(endpoints(2), strategy="p2c-ewma", clock=clock, peak_ewma_decay=10)
    fast, slow = b.endpoints
    b.record(fast, True, 0.010)
    b.record(slow, True, 1.0)
    assert pick(b, call()) is fast
    clock.advance(30.0)
    b.record(fast, True, 0.010)  # fast, sampled now: 0.010; slow, rested 30 s: 1.0 x e^-3 = 0.050
    assert pick(b, call()) is fast
    clock.advance(40.0)
    b.record(fast, True, 0.010)  # slow, rested 70 s: e^-7 = 0.0009
    assert pick(b, call()) is slow


def test_ip_hash_pins_each_caller() -> None:
    """ip-hash sends each caller address to one endpoint, every time."""
    b = balancer(endpoints(5), strategy="ip-hash")
    for i in range(50):
        client = f"192.0.2.{i}"
        assert len({pick(b, call(client=client)) for _ in range(10)}) == 1


def test_ip_hash_spreads_callers() -> None:
    """3,000 caller addresses land on five endpoints in about equal numbers (each within 25% of 600)."""
    b = balancer(endpoints(5), strategy="ip-hash")
    counts = Counter(host(pick(b, call(client=f"10.{i // 250}.{i % 250}.7"))) for i in range(3_000))
    assert len(counts) == 5
    assert all(450 <= c <= 750 for c in counts.values())


def test_ip_hash_without_a_key_is_round_robin() -> None:
    """A call with no inbound caller and no affinity key goes round robin."""
    b = balancer(endpoints(3), strategy="ip-hash")
    assert [host(pick(b, call())) for _ in range(6)] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"] * 2


@pytest.mark.parametrize("n", [5, 10, 50])
def test_consistent_hashing_moves_about_one_nth_when_one_leaves(n: int) -> None:
    """When one of n endpoints leaves, at most 1.5/n of 10,000 keys change endpoint: only those that were
    on the one that left."""
    keys = [f"user-{i}" for i in range(10_000)]
    b = balancer(endpoints(n), strategy="ip-hash")
    before = {k: pick(b, call(key=k)).url for k in keys}
    gone = b.endpoints[n // 2].url
    b.update([s.endpoint for s in b.endpoints if s.url != gone])
    after = {k: pick(b, call(key=k)).url for k in keys}
    moved = {k for k in keys if before[k] != after[k]}
    assert len(moved) <= 1.5 * len(keys) / n
    assert moved == {k for k in keys if before[k] == gone}


def test_consistent_hashing_moves_about_one_nth_when_one_joins() -> None:
    """When a tenth endpoint joins nine, at most 1.5/10 of keys move, all of them to the newcomer."""
    keys = [f"user-{i}" for i in range(10_000)]
    b = balancer(endpoints(9), strategy="ip-hash")
    before = {k: pick(b, call(key=k)).url for k in keys}
    b.update(endpoints(10))
    after = {k: pick(b, call(key=k)).url for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert len(moved) <= 1.5 * len(keys) / 10
    assert {after[k] for k in moved} == {b.endpoints[9].url}


def test_ring_shares_are_near_even_and_follow_weights() -> None:
    """With 128 points each, every endpoint's share of the ring is within 25% of 1/n; weight 3 gets ~3x."""
    states = [EndpointState(e) for e in endpoints(7)]
    ring = Ring(states, [1.0] * 7)
    assert len(ring.points) == 7 * 128
    shares = ring_shares(ring)
    assert all(abs(share * 7 - 1) < 0.25 for share in shares.values())
    weighted = ring_shares(Ring(states[:2], [1.0, 3.0]))
    assert weighted[states[1]] / weighted[states[0]] == pytest.approx(3.0, rel=0.25)


def ring_shares(ring: Ring) -> dict[EndpointState, float]:
    """The share of the 32-bit hash space each endpoint owns (the arc before each of its points)."""
    shares: dict[EndpointState, float] = {}
    points = ring.points
    for i, point in enumerate(points):
        arc = (point - points[i - 1]) % (1 << 32) if i else point + (1 << 32) - points[-1]
        owner = ring.members[ring.owners[i]]
        shares[owner] = shares.get(owner, 0.0) + arc / (1 << 32)
    return shares


def test_ring_points_shrink_only_for_large_pools() -> None:
    """128 points per endpoint up to 2,048 endpoints; a pool keeps its count through small changes."""
    assert points_per_endpoint(2_048) == 128
    assert points_per_endpoint(2_049) == 64
    assert points_per_endpoint(10_000) == 16
    assert points_per_endpoint(2_049, current=128) == 128
    assert points_per_endpoint(4_097, current=128) == 32
    assert points_per_endpoint(100, current=16) == 128


def test_key_hash_is_stable() -> None:
    """Key hashes do not depend on the process (no salted hash()): a fixed value for a fixed key."""
    assert key_hash("10.1.2.3") == 0x894D87F6DB3B6BB3
    assert key_hash("a") != key_hash("b")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_pick_looks_at_a_bounded_number_of_endpoints(strategy: str) -> None:
    """With 10,000 endpoints a pick checks at most a few of them, whatever the strategy (no O(n) filter)."""
    b = balancer(endpoints(10_000), strategy=strategy)
    checked = 0
    eligible = b._eligible

    def counting(state: EndpointState) -> bool:
        nonlocal checked
        checked += 1
        return eligible(state)

    b._ok = counting
    for i in range(100):
        b.acquire(pick(b, call(client=f"192.0.2.{i}")))
    assert checked <= 100 * 2


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_mostly_full_pool_still_finds_the_free_endpoints(strategy: str) -> None:
    """When 95 of 100 endpoints are at their limit, picks fall back to a scan and find the other five."""
    b = balancer(endpoints(100), strategy=strategy, max_connections_per_instance=1)
    free = set(b.endpoints[::20])
    for state in b.endpoints:
        if state not in free:
            b.acquire(state)
    assert {pick(b, call()) for _ in range(60)} == free
    assert pick(b, call(client="192.0.2.1")) in free


def test_unknown_strategy_is_refused() -> None:
    """build_strategy names the unknown strategy."""
    with pytest.raises(ValueError, match="'fastest'"):
        build_strategy("fastest", random.Random(0))


def test_random_fast_path_gives_way_to_the_scan_after_max_tries() -> None:
    """With one free endpoint among 1,000, random spends exactly MAX_TRIES checks on its fast path and one
    scan of the pool (1,000 checks), and finds it."""
    b = balancer(endpoints(1_000), strategy="random", max_connections_per_instance=1, seed=2)
    free = b.endpoints[500]
    for state in b.endpoints:
        if state is not free:
            b.acquire(state)
    checked = count_checks(b)
    assert pick(b, call()) is free
    assert checked[0] == MAX_TRIES + 1_000


@pytest.mark.parametrize("strategy", ["round-robin", "weighted", "ip-hash"])
def test_a_run_of_ineligible_endpoints_costs_once_per_rotation(strategy: str) -> None:
    """Twenty neighbours in the rotation ejected: over a full rotation of 980 picks each of them is checked
    once, not once per pick (no scan of the pool either)."""
    b = balancer(endpoints(1_000), strategy=strategy, outlier={"consecutive_failures": 1, "max_ejection_percent": 100})
    for state in b.endpoints[100:120]:
        b.record(state, False, 0.01)
    assert sum(b.outlier.is_ejected(s.url) for s in b.endpoints) == 20
    checked = count_checks(b)
    got = [pick(b, call()) for _ in range(980)]
    assert len(set(got)) == 980
    assert checked[0] == 1_000


@pytest.mark.parametrize("variant", [*STRATEGIES, "session affinity"])
def test_every_endpoint_full_is_rejected_without_looking_at_any(variant: str) -> None:
    """Each pool counts its full endpoints: with all 500 at their limit, BulkheadFull costs no check."""
    settings = {"strategy": "least-response-time", "session_affinity": True} if variant == "session affinity" else {}
    b = balancer(endpoints(500), max_connections_per_instance=2, **({"strategy": variant} | settings))
    for state in b.endpoints:
        b.acquire(state)
        b.acquire(state)
    checked = count_checks(b)
    with pytest.raises(BulkheadFull):
        pick(b, call(client="192.0.2.1"))
    assert checked[0] == 0
    b.release(b.endpoints[7])
    assert pick(b, call(client="192.0.2.1")) is b.endpoints[7]


def test_all_unhealthy_without_panic_is_rejected_without_looking_at_any() -> None:
    """panic_threshold 0 and no endpoint healthy: NoHealthyEndpoints at once."""
    b = balancer(endpoints(200), panic_threshold=0)
    for state in b.endpoints:
        state.healthy = False
    checked = count_checks(b)
    with pytest.raises(NoHealthyEndpoints):
        pick(b, call())
    assert checked[0] == 0


@pytest.mark.parametrize("settings", [{"strategy": "ip-hash"}, {"session_affinity": True}])
def test_weight_zero_endpoint_is_the_last_resort_with_hashing(settings: dict[str, object]) -> None:
    """Weight 0 is on no ring: keys never land on it while a weighted endpoint can take them, and it takes
    them when none can (full), rather than BulkheadFull."""
    b = balancer(endpoints(3, weights=[1, 1, 0]), max_connections_per_instance=1, **settings)
    drained = b.endpoints[2]
    assert drained not in {pick(b, call(key=f"user-{i}")) for i in range(200)}
    b.acquire(b.endpoints[0])
    b.acquire(b.endpoints[1])
    assert {pick(b, call(key=f"user-{i}")) for i in range(20)} == {drained}


def test_failures_make_an_endpoint_look_slower() -> None:
    """A failure counts as FAILURE_PENALTY times the larger of its latency and the average so far (and
    DEFAULT_RTT), so an endpoint answering 503 in 1 ms looks slower with each failure; a real answer
    counts as it is."""
    b = balancer(endpoints(2), strategy="least-response-time")
    healthy, failing = b.endpoints
    b.record(healthy, True, 0.020)
    b.record(failing, False, 0.001)
    assert failing.ewma == FAILURE_PENALTY * DEFAULT_RTT
    before = failing.ewma
    b.record(failing, False, 0.001)
    assert failing.ewma == pytest.approx(before + 0.3 * (FAILURE_PENALTY * before - before))
    before = failing.ewma
    b.record(failing, True, 0.001)
    assert failing.ewma < before  # a real fast answer does count
    b.record(healthy, False, 0.5)
    assert healthy.ewma == pytest.approx(0.020 + 0.3 * (FAILURE_PENALTY * 0.5 - 0.020))


@pytest.mark.parametrize("strategy", ["least-response-time", "p2c-ewma"])
def test_a_replica_failing_fast_gets_little_traffic(strategy: str) -> None:
    """Two replicas answer in 50 ms, one fails in 1 ms: the latency-aware strategies send the failing one
    far less than its third of the calls (outlier ejection aside)."""
    clock = ManualClock()
    b = balancer(endpoints(3), strategy=strategy, clock=clock)
    failing = b.endpoints[0]
    chosen: Counter[str] = Counter()
    for _ in range(600):
        state = pick(b, call())
        chosen[host(state)] += 1
        clock.advance(0.01)
        b.record(state, state is not failing, 0.001 if state is failing else 0.050)
    assert chosen[host(failing)] < 600 * 0.15
