"""Traffic split and canary routing between endpoint subsets."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest

from fastapi_mesh.balancing import Balancer
from fastapi_mesh.clock import ManualClock
from fastapi_mesh.context import EXTENSION, CallContext
from fastapi_mesh.layers.balancer import BalancerTransport
from fastapi_mesh.resilience.outcome import Outcomes
from fastapi_mesh.services import ServiceState
from fastapi_mesh.settings import CircuitBreakerConfig
from tests.balancing.support import balancer, call, endpoints, pick

CANARY: dict[str, Any] = {
    "subset_key": "version",
    "split": {"v1": 90, "v2": 10},
    "rules": [{"match": {"headers": {"x-canary": "true"}}, "subset": "v2"}],
}
VERSIONS = [{"version": "v1"}] * 4 + [{"version": "v2"}] * 2


def version(b: Balancer, headers: dict[str, str] | None = None, **kw: Any) -> str:
    return pick(b, call(**kw), httpx.Headers(headers or {})).endpoint.metadata["version"]


def test_canary_split_is_within_two_percent_over_10000_picks() -> None:
    """A 90/10 split sends 10% (+/-2%) of 10,000 calls to v2, whatever the subsets' sizes."""
    b = balancer(endpoints(6, metadata=VERSIONS), routing=CANARY)
    counts = Counter(version(b) for _ in range(10_000))
    assert counts["v2"] / 10_000 == pytest.approx(0.10, abs=0.02)


def test_strategy_balances_inside_the_chosen_subset() -> None:
    """Round robin inside v1 reaches its four endpoints evenly, and v2's endpoints only via the split."""
    b = balancer(endpoints(6, metadata=VERSIONS), routing={"split": {"v1": 1}})
    counts = Counter(pick(b, call()).endpoint.host for _ in range(400))
    assert counts == {f"10.0.0.{i}": 100 for i in range(1, 5)}


def test_header_rule_routes_to_its_subset() -> None:
    """Outbound x-canary: true always goes to v2, across both v2 endpoints; other values follow the split."""
    b = balancer(endpoints(6, metadata=VERSIONS), routing=CANARY)
    canary = [pick(b, call(), httpx.Headers({"X-Canary": "true"})) for _ in range(20)]
    assert {s.endpoint.metadata["version"] for s in canary} == {"v2"}
    assert len(set(canary)) == 2
    assert Counter(version(b, {"x-canary": "false"}) for _ in range(1_000))["v1"] > 800


def test_first_matching_rule_wins() -> None:
    """Rules are checked in order; a rule needs every one of its headers to match."""
    routing = {
        "rules": [
            {"match": {"headers": {"x-tier": "beta", "x-region": "eu"}}, "subset": "v3"},
            {"match": {"headers": {"x-tier": "beta"}}, "subset": "v2"},
        ]
    }
    meta = [{"version": "v1"}, {"version": "v2"}, {"version": "v3"}]
    b = balancer(endpoints(3, metadata=meta), routing=routing)
    assert version(b, {"x-tier": "beta", "x-region": "eu"}) == "v3"
    assert version(b, {"x-tier": "beta", "x-region": "us"}) == "v2"
    assert {version(b, {"x-tier": "ga"}) for _ in range(6)} == {"v1", "v2", "v3"}  # no split: all endpoints


def test_empty_subset_falls_back_to_all_endpoints() -> None:
    """A subset with no endpoints (v2 not deployed yet) means all endpoints take its share."""
    b = balancer(endpoints(3, metadata=[{"version": "v1"}] * 3), routing=CANARY)
    assert {pick(b, call(), httpx.Headers({"x-canary": "true"})).endpoint.host for _ in range(6)} == {
        "10.0.0.1",
        "10.0.0.2",
        "10.0.0.3",
    }


def test_retry_stays_in_the_subset_of_the_first_attempt() -> None:
    """A retry of a call whose first attempt went to v2 (by a rule) is picked inside v2 again, even though
    the retry's headers no longer match and the split would mostly say v1."""
    b = balancer(endpoints(6, metadata=VERSIONS), routing=CANARY)
    for _ in range(20):
        ctx = call()
        first = pick(b, ctx, httpx.Headers({"x-canary": "true"}))
        ctx.tried.append(first)
        retry = pick(b, ctx, httpx.Headers())
        assert retry.endpoint.metadata["version"] == "v2" and retry is not first


def test_retry_of_a_call_sent_to_all_endpoints_may_leave_the_tried_subset() -> None:
    """Rules only: a call no rule matched goes to all endpoints, and so do its retries -- a first attempt
    that happened to land on the one v2 endpoint is retried on a v1 one, not trapped in v2."""
    meta = [{"version": "v1"}, {"version": "v1"}, {"version": "v2"}]
    b = balancer(endpoints(3, metadata=meta), routing={"rules": CANARY["rules"]})
    for _ in range(9):
        ctx = call()
        first = pick(b, ctx, httpx.Headers())
        ctx.tried.append(first)
        assert pick(b, ctx, httpx.Headers()) is not first


def test_retry_after_an_endpoint_change_stays_in_the_subset_as_it_is_now() -> None:
    """Discovery replaces v2's endpoints between two attempts: the retry goes to the new v2 endpoint."""
    b = balancer(endpoints(6, metadata=VERSIONS), routing=CANARY)
    ctx = call()
    first = pick(b, ctx, httpx.Headers({"x-canary": "true"}))
    ctx.tried.append(first)
    moved = endpoints(6, metadata=[*VERSIONS[:4], {"version": "v1"}, {"version": "v2"}])
    moved.append(endpoints(1, metadata=[{"version": "v2"}], start=7)[0])
    assert b.update(moved)
    retry = pick(b, ctx, httpx.Headers())
    assert retry.endpoint.metadata["version"] == "v2" and retry is not first


def test_rules_match_plain_dict_headers_in_any_case() -> None:
    """Rules given "x-canary" match a plain dict carrying "X-Canary" (httpx.Headers ignore case anyway)."""
    b = balancer(endpoints(6, metadata=VERSIONS), routing=CANARY)
    assert {pick(b, call(), {"X-Canary": "true"}).endpoint.metadata["version"] for _ in range(10)} == {"v2"}


def test_affinity_key_keeps_a_user_on_one_subset() -> None:
    """With session affinity the split is decided by the key's hash: one user always sees one version,
    and about 10% of users see v2."""
    b = balancer(endpoints(6, metadata=VERSIONS), routing=CANARY, session_affinity=True)
    for i in range(50):
        assert len({version(b, key=f"user-{i}") for _ in range(5)}) == 1
    users = Counter(version(b, key=f"user-{i}") for i in range(5_000))
    assert users["v2"] / 5_000 == pytest.approx(0.10, abs=0.02)


def test_subset_sizes_show_in_status() -> None:
    """as_dict lists the subsets the routing can choose, with their endpoint counts."""
    b = balancer(endpoints(6, metadata=VERSIONS), routing=CANARY)
    assert b.as_dict()["subsets"] == {"v1": 4, "v2": 2}


@pytest.mark.anyio
async def test_transport_routes_on_the_outbound_request_headers() -> None:
    """Through the balancer layer, a request carrying x-canary: true reaches a v2 endpoint."""
    b = balancer(endpoints(6, metadata=VERSIONS), routing=CANARY)
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        return httpx.Response(200)

    outcomes = Outcomes(CircuitBreakerConfig().failure_on_status, b.record)
    service = cast(ServiceState, SimpleNamespace(balancer=b, outcomes=outcomes))
    transport = BalancerTransport(httpx.MockTransport(handler), clock=ManualClock())
    for _ in range(10):
        request = httpx.Request("GET", "http://svc/x", headers={"x-canary": "true"})
        request.extensions[EXTENSION] = CallContext(service, None)
        await transport.handle_async_request(request)
    assert set(seen) == {"10.0.0.5", "10.0.0.6"}
    assert all(s.in_flight == 0 for s in b.endpoints)
