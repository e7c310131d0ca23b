"""MeshClient against real uvicorn replicas on loopback."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from fastapi_mesh import (
    BulkheadFull,
    DeadlineExceeded,
    MeshClient,
    MeshError,
    MeshSettings,
    NoHealthyEndpoints,
    RequestEvent,
    UpstreamUnavailable,
)
from tests.upstreams import Fleet, unused_port
from tests.upstreams import settings_for as shared_settings_for

pytestmark = pytest.mark.anyio


def settings_for(urls: list[str], **sections: Any) -> MeshSettings:
    sections["retry"] = {"max_retries": 2, **sections.get("retry", {})}
    return shared_settings_for(urls, "user-service", **sections)


async def test_round_robin_reaches_each_replica_evenly(fleet: Fleet) -> None:
    """30 GETs over three replicas land 10 on each."""
    replicas = await fleet.start(3)
    async with MeshClient(settings_for([r.url for r in replicas])) as client:
        names = [(await client.get("user-service", "/api/users")).json()["replica"] for _ in range(30)]
    assert sorted(names.count(r.name) for r in replicas) == [10, 10, 10]
    assert [r.received[("GET", "/api/users")] for r in replicas] == [10, 10, 10]


async def test_all_replicas_down_raises_upstream_unavailable(fleet: Fleet) -> None:
    """With every endpoint refusing connections the call raises UpstreamUnavailable naming the service."""
    urls = [f"http://127.0.0.1:{unused_port()}" for _ in range(3)]
    async with MeshClient(settings_for(urls)) as client:
        with pytest.raises(UpstreamUnavailable, match="'user-service'") as info:
            await client.get("user-service", "/api/users")
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert isinstance(info.value, httpx.TransportError)


async def test_unknown_service_raises_no_healthy_endpoints() -> None:
    """A service nobody knows raises NoHealthyEndpoints naming it, without touching the network."""
    async with MeshClient(settings_for([])) as client:
        for _ in range(30):  # never turns into CircuitOpen: nothing to send to is not a failing service
            with pytest.raises(NoHealthyEndpoints, match="'billing'"):
                await client.get("billing", "/x")


async def test_a_503_answer_comes_back_as_the_response(fleet: Fleet) -> None:
    """When every replica answers 503 and retries run out, the last 503 is returned, not raised."""
    replicas = await fleet.start(2)
    for r in replicas:
        r.mode = "status"
    async with MeshClient(settings_for([r.url for r in replicas])) as client:
        response = await client.get("user-service", "/api/users")
    assert response.status_code == 503
    assert sum(r.total for r in replicas) == 3  # one attempt and two retries
    with pytest.raises(httpx.HTTPStatusError):
        response.raise_for_status()


async def test_retry_skips_the_replica_that_answered_503(fleet: Fleet) -> None:
    """A 503 from one replica is retried on another, which answers."""
    bad, good = await fleet.start(2)
    bad.mode = "status"
    async with MeshClient(settings_for([bad.url, good.url])) as client:
        responses = [await client.get("user-service", "/api/users") for _ in range(4)]
    assert [r.status_code for r in responses] == [200] * 4
    assert {r.json()["replica"] for r in responses} == {good.name}


async def test_connection_dropped_mid_body_is_a_failed_attempt_inside_the_stack(fleet: Fleet) -> None:
    """A body cut short fails the attempt inside the stack: a GET is retried elsewhere and succeeds."""
    dropper, good = await fleet.start(2)
    dropper.mode = "drop"
    async with MeshClient(settings_for([dropper.url, good.url])) as client:
        response = await client.get("user-service", "/api/users")
        assert response.json()["replica"] == good.name
        stats = {e["url"]: e for e in client.get_metrics()["load_balancer"]["user-service"]["endpoints"]}
    assert dropper.total == 1
    assert stats[dropper.url]["failures"] == 1


async def test_dropped_body_without_retries_raises_mesh_error_not_raw_httpx(fleet: Fleet) -> None:
    """With no retries left a dropped body raises UpstreamUnavailable whose cause is the httpx error."""
    (dropper,) = await fleet.start(1)
    dropper.mode = "drop"
    async with MeshClient(settings_for([dropper.url], retry={"max_retries": 0})) as client:
        with pytest.raises(UpstreamUnavailable) as info:
            await client.get("user-service", "/api/users")
        endpoint = client.get_metrics()["load_balancer"]["user-service"]["endpoints"][0]
    assert isinstance(info.value.__cause__, httpx.RemoteProtocolError)
    assert endpoint["in_flight"] == 0


async def test_post_is_never_sent_twice_when_the_body_drops(fleet: Fleet) -> None:
    """A POST whose response is cut short is not retried: the upstream sees it exactly once."""
    first, second = await fleet.start(2)
    first.mode = second.mode = "drop"
    async with MeshClient(settings_for([first.url, second.url])) as client:
        with pytest.raises(UpstreamUnavailable):
            await client.post("user-service", "/api/orders", json={"item": 1})
    assert first.total + second.total == 1


async def test_post_with_idempotency_key_is_retried(fleet: Fleet) -> None:
    """A POST carrying an Idempotency-Key may be retried like a GET."""
    first, second = await fleet.start(2)
    first.mode = "drop"
    async with MeshClient(settings_for([first.url, second.url])) as client:
        response = await client.post(
            "user-service", "/api/orders", json={"item": 1}, headers={"Idempotency-Key": "k1"}
        )
    assert response.status_code == 200
    assert second.bodies == [b'{"item":1}']


async def test_post_to_a_refused_endpoint_fails_over(fleet: Fleet) -> None:
    """A POST that could not connect never reached anyone, so it goes to the next endpoint."""
    (good,) = await fleet.start(1)
    refused = f"http://127.0.0.1:{unused_port()}"
    async with MeshClient(settings_for([refused, good.url])) as client:
        responses = [await client.post("user-service", "/api/orders", json={"n": i}) for i in range(2)]
    assert [r.status_code for r in responses] == [200, 200]
    assert good.received[("POST", "/api/orders")] == 2


async def test_deadline_bounds_a_hanging_call_and_travels_downstream(fleet: Fleet) -> None:
    """deadline= ends a call to a hanging replica with DeadlineExceeded; the budget goes in x-mesh-timeout-ms."""
    (hanging,) = await fleet.start(1)
    hanging.mode = "hang"
    async with MeshClient(settings_for([hanging.url])) as client:
        with pytest.raises(DeadlineExceeded, match="'user-service'"):
            await client.get("user-service", "/slow", deadline=0.3)
    sent = int(hanging.headers[0]["x-mesh-timeout-ms"])
    assert 0 < sent <= 300


async def test_per_attempt_timeout_moves_on_to_a_healthy_replica(fleet: Fleet) -> None:
    """circuit_breaker.timeout ends an attempt on a hanging replica; the retry reaches a healthy one."""
    hanging, good = await fleet.start(2)
    hanging.mode = "hang"
    settings = settings_for([hanging.url, good.url], circuit_breaker={"timeout": 0.2})
    async with MeshClient(settings) as client:
        response = await client.get("user-service", "/api/users")
    assert response.json()["replica"] == good.name
    assert hanging.total == 1


async def test_max_connections_per_instance_is_enforced_per_endpoint(fleet: Fleet) -> None:
    """An endpoint at its connection limit is skipped; with all at the limit the call is refused at once."""
    (replica,) = await fleet.start(1)
    settings = settings_for([replica.url], load_balancer={"max_connections_per_instance": 1})
    async with MeshClient(settings) as client:
        async with client.stream("GET", "user-service", "/stream") as held:
            assert held.status_code == 200
            with pytest.raises(BulkheadFull, match="'user-service'"):
                await client.get("user-service", "/api/users")
            await held.aread()
        after = await client.get("user-service", "/api/users")
    assert after.status_code == 200
    assert replica.total == 2


async def test_request_events_carry_service_endpoint_status_and_attempts(fleet: Fleet) -> None:
    """request-success and request-failure events describe the finished call."""
    good, bad = await fleet.start(2)
    bad.mode = "status"
    seen: list[tuple[str, RequestEvent]] = []
    async with MeshClient(settings_for([good.url], retry={"max_retries": 0})) as client:
        client.on("request-success", lambda e: seen.append(("ok", e)))
        client.on("request-failure", lambda e: seen.append(("fail", e)))
        await client.get("user-service", "/a")
        client.discovery.set_endpoints("user-service", [bad.url])  # type: ignore[attr-defined]
        await client.get("user-service", "/b")
    (kind1, ok), (kind2, fail) = seen
    assert (kind1, ok.service, ok.endpoint, ok.method, ok.status_code, ok.attempts) == (
        "ok", "user-service", good.url, "GET", 200, 1
    )
    assert (kind2, fail.endpoint, fail.status_code) == ("fail", bad.url, 503)
    assert ok.duration_s > 0


async def test_paths_queries_and_bodies_reach_the_upstream_intact(fleet: Fleet) -> None:
    """Path, query parameters, JSON body and Host header are what an httpx user would send."""
    (replica,) = await fleet.start(1)
    async with MeshClient(settings_for([replica.url])) as client:
        response = await client.put("user-service", "api/users/7", params={"q": "a b"}, json={"name": "x"})
    body = response.json()
    assert (body["path"], body["query"]) == ("/api/users/7", "q=a+b")
    assert json.loads(replica.bodies[0]) == {"name": "x"}
    assert replica.headers[0]["host"] == f"127.0.0.1:{replica.port}"


async def test_mesh_errors_are_httpx_transport_errors() -> None:
    """Code written for httpx keeps working: every MeshError is an httpx.TransportError."""
    assert issubclass(MeshError, httpx.TransportError)
    assert issubclass(DeadlineExceeded, httpx.TimeoutException)


async def _chunks(parts: list[bytes]) -> Any:
    for part in parts:
        yield part


async def test_small_streamed_body_is_buffered_and_retried(fleet: Fleet) -> None:
    """A streamed PUT body under retry.max_body_bytes is buffered, so a dropped attempt can be retried."""
    dropper, good = await fleet.start(2)
    dropper.mode = "drop"
    settings = settings_for([dropper.url, good.url], retry={"max_retries": 1, "initial_delay": 0, "max_body_bytes": 64})
    async with MeshClient(settings) as client:
        response = await client.put("user-service", "/doc", content=_chunks([b"abc", b"def"]))
    assert response.json()["replica"] == good.name
    assert (dropper.bodies, good.bodies) == ([b"abcdef"], [b"abcdef"])


async def test_large_streamed_body_is_sent_once_and_not_retried(fleet: Fleet) -> None:
    """A streamed body over retry.max_body_bytes goes out whole, once; its failure is not retried."""
    dropper, good = await fleet.start(2)
    dropper.mode = "drop"
    settings = settings_for([dropper.url, good.url], retry={"max_retries": 1, "initial_delay": 0, "max_body_bytes": 4})
    async with MeshClient(settings) as client:
        with pytest.raises(UpstreamUnavailable):
            await client.put("user-service", "/doc", content=_chunks([b"abc", b"def", b"ghi"]))
    assert (dropper.bodies, good.bodies) == ([b"abcdefghi"], [])
