"""Endpoint-set updates at the edges: departed endpoints count for nothing, bad answers keep the last good set,
repeated and reordered answers change nothing, zone counts follow."""

from __future__ import annotations

import logging

import httpx
import pytest

from fastapi_mesh import MeshClient, MeshSettings
from fastapi_mesh.discovery import Endpoint
from fastapi_mesh.resilience.outlier import OutlierDetector
from tests.balancing.support import balancer, call, endpoints, pick


def test_an_attempt_ending_after_its_endpoint_left_counts_for_nothing() -> None:
    """Failures recorded on an endpoint discovery removed meanwhile neither eject it nor use up the
    ejection room the endpoints still in the set may need."""
    b = balancer(endpoints(4), outlier={"consecutive_failures": 2, "max_ejection_percent": 40})
    gone = b.endpoints[3]
    b.update([s.endpoint for s in b.endpoints[:3]])
    for _ in range(3):
        b.record(gone, False, 0.01)
    assert not b.outlier.is_ejected(gone.url)
    stays = b.endpoints[1]
    for _ in range(2):
        b.record(stays, False, 0.01)
    assert b.outlier.is_ejected(stays.url)


@pytest.mark.parametrize("weight", [2.5, -3, True, 10_001, "3"])
def test_an_endpoint_with_an_impossible_weight_cannot_be_made(weight: object) -> None:
    """Weights are whole numbers from 0 to 10,000, as in the settings."""
    with pytest.raises(ValueError, match="weight must be a whole number"):
        Endpoint("http://10.0.0.1:80", weight=weight)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_a_discovery_answer_that_cannot_be_applied_keeps_the_last_good_set(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An answer the balancer cannot take is logged and dropped; calls keep going to the last good set."""

    class Broken(Endpoint):
        @property  # type: ignore[override]
        def weight(self) -> int:
            raise RuntimeError("a backend bug")

        @weight.setter
        def weight(self, value: int) -> None:
            pass

    settings = MeshSettings(discovery={"endpoints": {"svc": ["http://10.0.0.1:1"]}})
    transport = httpx.MockTransport(lambda r: httpx.Response(200, text=r.url.host))
    async with MeshClient(settings, transport=transport) as client:
        with caplog.at_level(logging.ERROR, logger="fastapi_mesh.discovery"):
            client._rt.services.publish("svc", [Broken("http://10.0.0.9:1")])
        answer = (await client.get("svc", "/x")).text
    assert answer == "10.0.0.1"
    assert "last endpoint set stays" in caplog.text


def test_pick_after_an_update_never_returns_a_departed_endpoint() -> None:
    """After an update, picks come from the new set only."""
    b = balancer(endpoints(3))
    b.update([s.endpoint for s in b.endpoints[:2]])
    assert {pick(b, call()).url for _ in range(20)} == {s.url for s in b.endpoints}


def test_zone_availability_does_not_walk_the_ejected_endpoints_on_every_pick(monkeypatch: pytest.MonkeyPatch) -> None:
    """With zone awareness and 200 of 1,000 endpoints ejected, picks reuse the zone's ejected count until
    something changes: far fewer ejection lookups than 200 per pick."""
    zones = ["a" if i % 2 else "b" for i in range(1000)]
    b = balancer(endpoints(1000, zones=zones), zone="a", outlier={"consecutive_failures": 1})
    for state in b.endpoints[:200]:
        b.record(state, False, 0.01)
    lookups = 0
    real = OutlierDetector.is_ejected

    def counting(self: OutlierDetector, url: str) -> bool:
        nonlocal lookups
        lookups += 1
        return real(self, url)

    monkeypatch.setattr(OutlierDetector, "is_ejected", counting)
    for _ in range(100):
        pick(b, call())
    assert lookups < 200 + 100 * 10  # one walk, then a bounded number of checks per pick


def test_the_zones_ejected_count_follows_returns_health_and_unejection() -> None:
    """The kept count is redone when an ejection ends early (an active check) or health changes."""
    zones = ["a", "a", "a", "b", "b", "b"]
    b = balancer(endpoints(6, zones=zones), zone="a", outlier={"consecutive_failures": 1})
    b.record(b.endpoints[0], False, 0.01)  # 2 of 3 local available: other zones open
    assert {pick(b, call()).endpoint.zone for _ in range(30)} == {"a", "b"}
    b.outlier.uneject(b.endpoints[0].url)
    assert {pick(b, call()).endpoint.zone for _ in range(30)} == {"a"}
    b.record(b.endpoints[1], False, 0.01)
    b.endpoints[1].healthy = False  # ejected and unhealthy: counted once, as unhealthy
    b.endpoints[2].healthy = False
    assert {pick(b, call()).endpoint.zone for _ in range(30)} == {"a", "b"}


def test_an_answer_listing_an_endpoint_twice_is_no_change_when_repeated() -> None:
    """A URL twice in one answer (with different weights): the last entry counts, and the same answer
    again is no change (no rebuild, no endpoints-changed event)."""
    answer = [Endpoint("http://10.0.0.1:80", weight=1), Endpoint("http://10.0.0.1:80", weight=5)]
    b = balancer([Endpoint("http://10.0.0.2:80")])
    assert b.update(answer) is True
    assert [s.endpoint.weight for s in b.endpoints] == [5]
    assert b.update(answer) is False


@pytest.mark.parametrize(
    ("weights", "change"),
    [([1, 1, 1, 5], "remove the heavy one"), ([1, 1, 1, 5], "add a light one"), ([1] * 9 + [2], "remove the 2")],
)
def test_unequal_weights_move_no_key_between_endpoints_that_stay(weights: list[int], change: str) -> None:
    """With unequal weights in a small pool, a join or a leave moves keys only to or from the endpoint
    that came or went; the ring keeps its scale rather than rescaling all endpoints' points."""
    keys = [f"user-{i}" for i in range(5_000)]
    before_set = endpoints(len(weights), weights=weights)
    b = balancer(before_set, strategy="ip-hash")
    before = {k: pick(b, call(key=k)).url for k in keys}
    if change.startswith("remove"):
        gone = before_set[-1].url
        b.update(before_set[:-1])
        changed = {gone}
    else:
        added = endpoints(1, start=len(weights) + 1)
        b.update([*before_set, *added])
        changed = {added[0].url}
    after = {k: pick(b, call(key=k)).url for k in keys}
    between_stayers = [k for k in keys if before[k] != after[k] and not {before[k], after[k]} & changed]
    assert between_stayers == []
