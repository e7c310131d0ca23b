"""Balancer bounds: bounded load at scale, subsets and retries, rehashing on updates, ring size, and pick
cost that stays bounded with ejected, full or warming endpoints."""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from types import SimpleNamespace

import httpx
import pytest

from fastapi_mesh.balancing import hashing
from fastapi_mesh.balancing.strategies import MAX_TRIES
from fastapi_mesh.clock import ManualClock
from fastapi_mesh.errors import BulkheadFull
from tests.balancing.support import balancer, call, endpoints, host, pick


def count_checks(b: object) -> list[int]:
    """Wrap the balancer's eligibility check; the returned list's one item counts the calls to it."""
    counter = [0]
    eligible = b._eligible  # type: ignore[attr-defined]

    def counting(state: object) -> bool:
        counter[0] += 1
        return eligible(state)  # type: ignore[no-any-return]

    b._ok = counting  # type: ignore[attr-defined]
    return counter


def test_bounded_load_holds_with_many_endpoints() -> None:
    """A hot key over 100 endpoints: no endpoint carries more than ceil(1.25 x 80 / 100) of 80 concurrent calls."""
    b = balancer(endpoints(100), strategy="least-response-time", session_affinity=True)
    for _ in range(80):
        b.acquire(pick(b, call(key="hot")))
    assert max(s.in_flight for s in b.endpoints) <= math.ceil(1.25 * 80 / 100)


def test_retry_outside_any_subset_skips_the_tried_endpoint() -> None:
    """Rules only, no rule matched: a retry of a call that failed on the one v2 endpoint goes to a v1 one."""
    meta = [{"version": "v1"}, {"version": "v1"}, {"version": "v2"}]
    rules = {"rules": [{"match": {"headers": {"x-canary": "true"}}, "subset": "v2"}]}
    b = balancer(endpoints(3, metadata=meta), routing=rules)
    v2 = b.endpoints[2]
    assert {pick(b, call(tried=[v2]), httpx.Headers()) for _ in range(10)}.isdisjoint({v2})


def test_split_by_affinity_key_spreads_keys_over_the_whole_subset() -> None:
    """A 1% canary with session affinity: each of the four v2 endpoints gets a fair share of the v2 keys."""
    meta = [{"version": "v1"}] * 8 + [{"version": "v2"}] * 4
    b = balancer(
        endpoints(12, metadata=meta),
        routing={"split": {"v1": 99, "v2": 1}},
        strategy="least-response-time",
        session_affinity=True,
    )
    v2 = Counter()
    for i in range(100_000):
        state = pick(b, call(key=f"user-{i}"))
        if state.endpoint.metadata["version"] == "v2":
            v2[host(state)] += 1
    total = sum(v2.values())
    assert len(v2) == 4
    assert all(count / total > 0.15 for count in v2.values())


@pytest.mark.parametrize("strategy", ["round-robin", "ip-hash"])
def test_reordered_republish_rebuilds_nothing(strategy: str) -> None:
    """The same endpoints in another order (DNS and Consul answers rotate) keep the pools as they are."""
    eps = endpoints(50)
    b = balancer(eps, strategy=strategy)
    pool = b._root.all
    b.update(list(reversed(eps)))
    assert b._root.all is pool


def test_one_endpoint_leaving_does_not_rehash_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 4: set changes apply incrementally. One of 1,000 leaving hashes no ring points of the 999 that stay."""
    b = balancer(endpoints(1000), strategy="ip-hash")
    digests = [0]

    def blake2b(*args: object, **kwargs: object) -> object:
        digests[0] += 1
        return hashlib.blake2b(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(hashing, "hashlib", SimpleNamespace(blake2b=blake2b))
    b.update([s.endpoint for s in b.endpoints[1:]])
    assert digests[0] <= 16


def test_ring_size_is_bounded_whatever_the_weights() -> None:
    """One weight-1 endpoint among 99 of weight 50 does not blow the ring past RING_MAX_POINTS."""
    b = balancer(endpoints(100, weights=[50] * 99 + [1]), strategy="ip-hash")
    assert len(b._root.all.ring.points) <= 2 * hashing.RING_MAX_POINTS


def test_least_connections_pick_stays_bounded_with_idle_ejected_endpoints() -> None:
    """20 ejected endpoints idle at 0 calls while the other 980 carry one each: a pick still looks at a few."""
    b = balancer(endpoints(1000), strategy="least-connections", outlier={"consecutive_failures": 1})
    for state in b.endpoints[:20]:
        b.record(state, False, 0.01)
    for state in b.endpoints[20:]:
        b.acquire(state)
    checked = count_checks(b)
    for _ in range(50):
        pick(b, call())
    assert checked[0] <= 50 * 4 * MAX_TRIES


def test_rejecting_a_call_on_a_full_hashed_pool_looks_at_each_endpoint_at_most_once_per_pass() -> None:
    """Every endpoint full with ip-hash: the BulkheadFull decision does not walk 128 ring points per endpoint."""
    b = balancer(endpoints(100), strategy="ip-hash", max_connections_per_instance=1)
    for state in b.endpoints:
        b.acquire(state)
    checked = count_checks(b)
    with pytest.raises(BulkheadFull):
        pick(b, call(client="192.0.2.1"))
    assert checked[0] <= 3 * len(b.endpoints)


def test_weight_zero_endpoint_takes_the_call_when_the_weighted_ones_are_full_with_affinity() -> None:
    """Weight 0 gets no turns only while a weighted endpoint is eligible (as without affinity): no BulkheadFull."""
    b = balancer(endpoints(2, weights=[1, 0]), session_affinity=True, max_connections_per_instance=1)
    weighted, drained = b.endpoints
    b.acquire(weighted)
    assert pick(b, call(key="user-1")) is drained


def test_least_connections_slow_start_does_not_flood_a_new_endpoint() -> None:
    """Issue 4: a new endpoint's weight ramps up over slow_start_window; at 10% it must not take the next 10 calls."""
    clock = ManualClock()
    b = balancer(endpoints(3), strategy="least-connections", slow_start_window=60, clock=clock)
    for state in b.endpoints:
        for _ in range(10):
            b.acquire(state)
    b.update(endpoints(4))
    new = b.endpoints[3]
    got = []
    for _ in range(10):
        state = pick(b, call())
        b.acquire(state)
        got.append(state is new)
    assert sum(got) < 10
