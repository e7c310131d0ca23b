"""Discovery updates are applied incrementally: by URL and content, per pool, and per ring point."""

from __future__ import annotations

import hashlib
import random
from types import SimpleNamespace

import pytest

from fastapi_mesh.balancing import EndpointState, hashing
from fastapi_mesh.balancing.hashing import RING_MAX_POINTS, Ring
from fastapi_mesh.discovery.base import Endpoint
from tests.balancing.support import balancer, call, endpoints, pick

SUBSETS = [{"version": "v1"}] * 3 + [{"version": "v2"}] * 3


def count_digests(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the ring-point digests computed from now on."""
    digests = [0]

    def blake2b(*args: object, **kwargs: object) -> object:
        digests[0] += 1
        return hashlib.blake2b(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(hashing, "hashlib", SimpleNamespace(blake2b=blake2b))
    return digests


def ring_pairs(ring: Ring) -> list[tuple[int, str]]:
    """The ring as (point, owner URL) pairs, in ring order."""
    return [(p, ring.members[o].url) for p, o in zip(ring.points, ring.owners, strict=True)]


def test_update_says_whether_anything_changed() -> None:
    """update() is True for a first set, a join, a leave, a weight, zone or metadata change; False for the
    same set again, in any order, as new but equal Endpoint objects."""
    eps = endpoints(4)
    b = balancer()
    assert b.update(eps) is True
    assert b.update(list(reversed(endpoints(4)))) is False
    assert b.update(eps[:3]) is True
    assert b.update(eps) is True
    assert b.update(endpoints(4, weights=[1, 1, 1, 2])) is True
    assert b.update(endpoints(4, weights=[1, 1, 1, 2], zones=["a", None, None, None])) is True
    changed = endpoints(4, weights=[1, 1, 1, 2], zones=["a", None, None, None], metadata=[{"v": "1"}] * 4)
    assert b.update(changed) is True
    assert b.update(list(changed)) is False
    assert balancer().update([]) is False


def test_a_change_in_one_subset_leaves_the_other_subset_and_zone_pools_alone() -> None:
    """A v2 endpoint leaving rebuilds v2's pools and the whole set's, not v1's (nor its local-zone pool)."""
    zones = ["a", "b", "a", "b", "a", "b"]
    b = balancer(endpoints(6, metadata=SUBSETS, zones=zones), zone="a", routing={"split": {"v1": 9, "v2": 1}})
    v1, v2, root = b._groups["v1"], b._groups["v2"], b._root
    assert v1.local is not None
    assert b.update(endpoints(5, metadata=SUBSETS, zones=zones))
    assert b._groups["v1"] is v1 and not v1.stale
    assert b._groups["v2"] is not v2 and v2.stale
    assert b._root is not root and root.stale
    assert all(v1.all in s.pools for s in v1.all.members)


def test_round_robin_keeps_its_place_when_another_endpoint_leaves() -> None:
    """The rotation goes on where it was after the set changes (no restart at the first endpoint)."""
    b = balancer(endpoints(4))
    assert [pick(b, call()).endpoint.host for _ in range(2)] == ["10.0.0.1", "10.0.0.2"]
    b.update(endpoints(4)[:3])
    assert pick(b, call()).endpoint.host == "10.0.0.3"


def test_joining_endpoint_hashes_only_its_own_points(monkeypatch: pytest.MonkeyPatch) -> None:
    """One endpoint joining 500 computes its own 8 digests (128 points), none for the 500 that stay."""
    b = balancer(endpoints(500), strategy="ip-hash")
    digests = count_digests(monkeypatch)
    b.update(endpoints(501))
    assert digests[0] == 128 // 16


def test_weight_change_rehashes_only_that_endpoint_and_moves_only_its_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Doubling one endpoint's weight adds its next 128 points (8 digests); keys move only onto it."""
    keys = [f"user-{i}" for i in range(5_000)]
    b = balancer(endpoints(10), strategy="ip-hash")
    before = {k: pick(b, call(key=k)).url for k in keys}
    digests = count_digests(monkeypatch)
    b.update(endpoints(10, weights=[2] + [1] * 9))
    assert digests[0] <= 16
    after = {k: pick(b, call(key=k)).url for k in keys}
    assert {after[k] for k in keys if after[k] != before[k]} == {b.endpoints[0].url}


def test_rebuilt_ring_equals_a_ring_built_afresh() -> None:
    """Thirty random joins, leaves and weight changes (0 among them), applied incrementally, give exactly the
    ring a fresh build of the final set gives (same points, same owners), and reuse the slots of leavers."""
    rng = random.Random(3)
    pool = endpoints(40)
    current = pool[:20]
    states = {e.url: EndpointState(e) for e in pool}
    ring = Ring([states[e.url] for e in current], [1.0] * len(current))
    for _ in range(30):
        if rng.random() < 0.5 and len(current) > 5:
            current.remove(rng.choice(current))
        else:
            spare = [e for e in pool if e not in current]
            if spare:
                current.append(rng.choice(spare))
        weights = [float(rng.choice([0, 1, 1, 2])) for _ in current]
        members = [states[e.url] for e in current]
        ring = ring.rebuilt(members, weights)
        assert ring_pairs(ring) == ring_pairs(Ring(members, weights, scale=ring.scale))
    assert len(ring.members) <= 40


def test_equal_points_are_in_url_order_whatever_the_history(monkeypatch: pytest.MonkeyPatch) -> None:
    """32-bit point collisions are ordered by URL, so every process sends such a key to the same endpoint:
    every endpoint given the very same points, any member order and any history give one ring."""
    monkeypatch.setattr(hashing, "endpoint_points", lambda url, count: tuple(range(100, 100 + count)))
    states = [EndpointState(e) for e in endpoints(6)]
    weights = [1.0] * 5
    expected = ring_pairs(Ring(states[:5], weights))
    assert [url for _, url in expected[:5]] == sorted(s.url for s in states[:5])
    assert ring_pairs(Ring(list(reversed(states[:5])), weights)) == expected
    grown = Ring(states[3:5], [1.0, 1.0], scale=128.0).rebuilt(states[5:] + states[:3] + states[3:5], [1.0] * 6)
    assert ring_pairs(grown.rebuilt(states[:5], weights)) == expected


def test_ring_rescales_when_the_pool_outgrows_its_bound() -> None:
    """Growing from 2,000 to 4,500 endpoints halves the points per endpoint (the ring stays bounded)."""
    eps = endpoints(4_500)
    states = [EndpointState(e) for e in eps]
    ring = Ring(states[:2_000], [1.0] * 2_000)
    assert len(ring.points) == 2_000 * 128
    ring = ring.rebuilt(states, [1.0] * 4_500)
    assert len(ring.points) <= 2 * RING_MAX_POINTS
    assert all(count == ring.counts[0] for count in ring.counts)


def test_ring_shares_the_point_budget_by_weight() -> None:
    """Weights 50 x 99, 1 and 0: the budget of 101 x 128 points is shared by w / sum(w); the light endpoint
    keeps a point at least, and weight 0 gets none (it is left for the fall-back)."""
    states = [EndpointState(e) for e in endpoints(101)]
    ring = Ring(states, [50.0] * 99 + [1.0, 0.0])

    def count(state: EndpointState) -> int:
        return ring.counts[ring.members.index(state)]

    assert abs(len(ring.points) - 101 * 128) <= 101
    assert count(states[0]) == round(101 * 128 * 50 / 4951) and count(states[99]) == 3
    assert count(states[100]) == 0 and ring.unplaced == (states[100],)


def test_endpoint_changing_subset_moves_between_subset_pools() -> None:
    """A metadata change (v1 -> v2) is a change: the endpoint leaves v1's pool and joins v2's."""
    b = balancer(endpoints(6, metadata=SUBSETS), routing={"split": {"v1": 1, "v2": 1}})
    moved = endpoints(6, metadata=[{"version": "v2"}, *SUBSETS[1:]])
    assert b.update(moved)
    assert b.as_dict()["subsets"] == {"v1": 2, "v2": 4}
    first = b.endpoints[0]
    assert b._groups["v2"].all in first.pools and b._groups["v1"].all not in first.pools


def test_duplicate_urls_count_once_and_the_last_wins() -> None:
    """A backend listing one URL twice gives one endpoint, with the later entry's weight."""
    b = balancer([Endpoint("http://10.0.0.1:8080"), Endpoint("http://10.0.0.1:8080", weight=3)])
    assert [(s.url, s.weight) for s in b.endpoints] == [("http://10.0.0.1:8080", 3)]
