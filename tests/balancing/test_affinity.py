"""Session affinity: key sources, stickiness, re-pinning when the pinned endpoint is out, bounded load."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from fastapi_mesh.clock import ManualClock
from tests.balancing.support import balancer, call, endpoints, host, pick

AFFINITY = {"strategy": "least-response-time", "session_affinity": True}


def test_same_client_always_lands_on_one_endpoint() -> None:
    """With session affinity each caller address sticks to one endpoint over 30 calls."""
    b = balancer(endpoints(5), **AFFINITY)
    for i in range(20):
        assert len({pick(b, call(client=f"198.51.100.{i}")) for _ in range(30)}) == 1


def test_different_clients_spread_over_endpoints() -> None:
    """200 callers with session affinity reach every one of five endpoints."""
    b = balancer(endpoints(5), **AFFINITY)
    assert len(Counter(host(pick(b, call(client=f"198.51.100.{i}"))) for i in range(200))) == 5


def test_calls_without_a_key_use_the_strategy() -> None:
    """Without an inbound caller or affinity_key, session affinity leaves the pick to the strategy."""
    b = balancer(endpoints(3), strategy="round-robin", session_affinity=True)
    assert [host(pick(b, call())) for _ in range(3)] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


def test_call_level_affinity_key_overrides_the_client_address() -> None:
    """affinity_key= decides the endpoint, whatever the caller's address."""
    b = balancer(endpoints(5), **AFFINITY)
    pinned = pick(b, call(key="cart-42"))
    assert {pick(b, call(client=f"198.51.100.{i}", key="cart-42")) for i in range(20)} == {pinned}


def test_header_key_comes_from_the_inbound_request() -> None:
    """affinity_key header:x-user hashes the inbound x-user header (any case), not the caller address."""
    b = balancer(endpoints(5), affinity_key="header:X-User", **AFFINITY)
    pinned = pick(b, call(key="alice"))
    got = {pick(b, call(client=f"198.51.100.{i}", headers=[("X-User", "alice")])) for i in range(20)}
    assert got == {pinned}


def test_missing_header_falls_back_to_the_strategy() -> None:
    """A request without the affinity header is balanced by the strategy (round robin here)."""
    b = balancer(endpoints(3), strategy="round-robin", session_affinity=True, affinity_key="header:x-user")
    assert len({pick(b, call(client="198.51.100.1", headers=[("x-other", "1")])) for _ in range(3)}) == 3


def test_cookie_key_comes_from_the_inbound_cookie() -> None:
    """affinity_key cookie:sid hashes the sid cookie of the inbound request."""
    b = balancer(endpoints(5), affinity_key="cookie:sid", **AFFINITY)
    pinned = pick(b, call(key="s3cr3t"))
    cookies = [("cookie", "theme=dark; sid=s3cr3t")]
    assert {pick(b, call(client=f"198.51.100.{i}", headers=cookies)) for i in range(20)} == {pinned}


def test_x_forwarded_for_is_believed_from_trusted_proxies_only() -> None:
    """Behind a trusted proxy the X-Forwarded-For client is the key; from anyone else the peer address is."""
    b = balancer(endpoints(5), trusted_proxies=["10.0.0.0/8"], **AFFINITY)
    real = pick(b, call(key="203.0.113.9"))
    xff = [("x-forwarded-for", "203.0.113.9, 10.1.1.1")]
    assert {pick(b, call(client=f"10.2.0.{i}", headers=xff)) for i in range(20)} == {real}
    spoofed = [pick(b, call(client=f"198.51.100.{i}", headers=xff)) for i in range(20)]
    assert [s.url for s in spoofed] == [pick(b, call(key=f"198.51.100.{i}")).url for i in range(20)]


def test_x_forwarded_for_is_ignored_without_trusted_proxies() -> None:
    """With no trusted_proxies (the default) X-Forwarded-For never changes the key."""
    b = balancer(endpoints(5), **AFFINITY)
    xff = [("x-forwarded-for", "203.0.113.9")]
    assert [pick(b, call(client=f"10.2.0.{i}", headers=xff)).url for i in range(20)] == [
        pick(b, call(key=f"10.2.0.{i}")).url for i in range(20)
    ]


def test_ejected_pinned_endpoint_re_pins_and_returns() -> None:
    """When the pinned endpoint is ejected the key moves to one other endpoint, and back when it returns."""
    clock = ManualClock()
    b = balancer(endpoints(5), clock=clock, outlier={"consecutive_failures": 1, "base_ejection_time": 30}, **AFFINITY)
    pinned = pick(b, call(key="user-7"))
    b.record(pinned, False, 0.01)
    assert b.outlier.is_ejected(pinned.url)
    moved = {pick(b, call(key="user-7")) for _ in range(20)}
    assert len(moved) == 1 and pinned not in moved
    clock.advance(30)
    assert pick(b, call(key="user-7")) is pinned


def test_unhealthy_or_full_pinned_endpoint_is_passed_over() -> None:
    """A pinned endpoint failing its health checks, or at its connection limit, hands the key on."""
    b = balancer(endpoints(5), max_connections_per_instance=1, **AFFINITY)
    pinned = pick(b, call(key="user-7"))
    pinned.healthy = False
    other = pick(b, call(key="user-7"))
    assert other is not pinned
    pinned.healthy = True
    b.acquire(pinned)
    assert pick(b, call(key="user-7")) is other
    b.release(pinned)
    assert pick(b, call(key="user-7")) is pinned


def test_retry_of_a_pinned_call_goes_elsewhere() -> None:
    """A retry skips the pinned endpoint it already tried."""
    b = balancer(endpoints(5), **AFFINITY)
    pinned = pick(b, call(key="user-7"))
    assert pick(b, call(key="user-7", tried=[pinned])) is not pinned


def test_bounded_load_caps_a_hot_key() -> None:
    """40 concurrent calls of one key over four endpoints: none carries more than ceil(1.25 x 40 / 4)."""
    b = balancer(endpoints(4), **AFFINITY)
    for _ in range(40):
        b.acquire(pick(b, call(key="hot")))
    loads = sorted(s.in_flight for s in b.endpoints)
    assert max(loads) <= math.ceil(1.25 * 40 / 4)
    assert sum(loads) == 40


def test_bounded_load_factor_is_configurable() -> None:
    """A factor of 2 lets the pinned endpoint take up to twice the average before passing the key on."""
    b = balancer(endpoints(4), hash_balance_factor=2.0, **AFFINITY)
    pinned = pick(b, call(key="hot"))
    for _ in range(40):
        b.acquire(pick(b, call(key="hot")))
    assert pinned.in_flight == math.ceil(2.0 * 40 / 4)


def test_without_a_bound_every_call_stays_pinned() -> None:
    """hash_balance_factor null: pure consistent hashing, all 40 calls on the pinned endpoint."""
    b = balancer(endpoints(4), hash_balance_factor=None, **AFFINITY)
    for _ in range(40):
        b.acquire(pick(b, call(key="hot")))
    assert sorted(s.in_flight for s in b.endpoints) == [0, 0, 0, 40]


def test_sequential_calls_are_not_moved_by_the_bound() -> None:
    """Calls that finish before the next starts never exceed the bound, so they stay on one endpoint."""
    b = balancer(endpoints(4), **AFFINITY)
    seen = set()
    for _ in range(50):
        state = pick(b, call(key="user-1"))
        b.acquire(state)
        b.release(state)
        seen.add(state)
    assert len(seen) == 1


@pytest.mark.parametrize("strategy", ["ip-hash", "round-robin"])
def test_ip_hash_uses_the_configured_key_source(strategy: str) -> None:
    """ip-hash, and session affinity with any strategy, both hash the configured key source."""
    b = balancer(endpoints(5), strategy=strategy, session_affinity=strategy != "ip-hash", affinity_key="header:x-user")
    pinned = pick(b, call(key="bob"))
    assert {pick(b, call(client=f"198.51.100.{i}", headers=[("x-user", "bob")])) for i in range(10)} == {pinned}
