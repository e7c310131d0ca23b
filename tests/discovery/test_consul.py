"""The consul backend against a stateful Consul stand-in and real uvicorn replicas on loopback."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from fastapi_mesh import Mesh, MeshClient, MeshSettings, NoHealthyEndpoints
from fastapi_mesh.discovery import MalformedAnswer, build_discovery
from fastapi_mesh.discovery.consul import ConsulDiscovery, consul_ssl_context
from fastapi_mesh.security.certs import CertificateAuthority
from fastapi_mesh.settings import DiscoveryConfig, MtlsConfig
from tests.discovery.consul_standin import ConsulStandIn
from tests.discovery.scripted import eventually
from tests.upstreams import Fleet, Replica, unused_port

pytestmark = pytest.mark.anyio

#: Blocking queries wait this long: every "at once" below is asserted well under it.
WAIT = 5.0
#: A change must reach routing within this (a poll at WAIT would take up to 5 s).
AT_ONCE = 1.0
LOGGER = "fastapi_mesh.discovery"


@pytest.fixture
async def consul() -> AsyncIterator[ConsulStandIn]:
    async with ConsulStandIn() as standin:
        yield standin


def consul_settings(url: str, service_name: str = "gateway", **discovery: Any) -> MeshSettings:
    config = {"backend": "consul", "consul_url": url, "consul_wait": WAIT, "backoff": 0.05, "max_backoff": 0.2}
    return MeshSettings(
        service_name=service_name,
        discovery={**config, **discovery},
        retry={"initial_delay": 0, "jitter": "none"},
    )


def status(client: MeshClient, service: str = "svc") -> dict[str, Any]:
    services: dict[str, Any] = client.get_metrics()["discovery"]["services"]
    return services.get(service, {})


def failure_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == LOGGER and r.levelno == logging.WARNING and "failed" in r.getMessage()
    ]


async def replicas_hit(client: MeshClient, calls: int, service: str = "svc") -> set[str]:
    """Make ``calls`` calls (each must succeed); the replicas that answered."""
    names = set()
    for _ in range(calls):
        response = await client.get(service, "/work")
        assert response.status_code == 200
        names.add(response.json()["replica"])
    return names


async def fails_at_once(client: MeshClient, service: str = "svc") -> None:
    """A call fails with ``NoHealthyEndpoints`` within ``AT_ONCE``: it did not wait out ``initial_sync_timeout``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(NoHealthyEndpoints, match=f"'{service}'"):
        await client.get(service, "/work")
    assert loop.time() - start < AT_ONCE


def register(consul: ConsulStandIn, replica: Replica, service: str = "svc", **options: Any) -> str:
    return consul.add_service(service, port=replica.port, service_id=replica.name, **options)


# ------------------------------------------------------------------------------------------ routing


async def test_initial_sync_routes_calls_to_every_passing_replica(consul: ConsulStandIn, fleet: Fleet) -> None:
    """The first sync brings the passing replicas; one whose check is critical gets no call."""
    a, b, c, sick = await fleet.start(4)
    for replica in (a, b, c):
        register(consul, replica)
    register(consul, sick, status="critical")
    consul.add_service("other", port=a.port)
    async with MeshClient(consul_settings(consul.url)) as client:
        await replicas_hit(client, 30)
    assert [r.received[("GET", "/work")] for r in (a, b, c, sick)] == [10, 10, 10, 0]
    first = consul.queries[0]
    assert (first.service, first.index, first.passing, first.wait) == ("svc", 0, True, "5s")


async def test_changes_reach_routing_at_once_through_the_blocking_query(
    consul: ConsulStandIn, fleet: Fleet
) -> None:
    """Registration, a check turning critical and back, and deregistration each reach the balancer well
    within the blocking query's wait, with no new non-blocking query in between."""
    a, b = await fleet.start(2)
    register(consul, a)
    async with MeshClient(consul_settings(consul.url)) as client:
        assert await replicas_hit(client, 4) == {a.name}
        timings = []

        register(consul, b)
        timings.append(await eventually(lambda: status(client)["endpoints"] == 2, "b registered"))
        assert await replicas_hit(client, 10) == {a.name, b.name}

        async with httpx.AsyncClient(base_url=consul.url, trust_env=False) as agent:
            assert (await agent.put(f"/v1/agent/check/fail/service:{a.name}")).status_code == 200
        timings.append(await eventually(lambda: status(client)["endpoints"] == 1, "a critical"))
        assert await replicas_hit(client, 10) == {b.name}

        consul.set_service_status(a.name, "passing")
        timings.append(await eventually(lambda: status(client)["endpoints"] == 2, "a passing again"))

        consul.remove_service(b.name)
        timings.append(await eventually(lambda: status(client)["endpoints"] == 1, "b deregistered"))
        assert await replicas_hit(client, 10) == {a.name}
    assert max(timings) < AT_ONCE
    assert [q.index for q in consul.queries].count(0) == 1  # only the very first query did not block
    assert all(q.wait == "5s" for q in consul.queries)


async def test_consul_down_keeps_the_last_set_and_every_call_succeeds(
    consul: ConsulStandIn, fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    """Consul stopped: calls go on over the last good set, the status says stale with an error count, one
    warning is logged; Consul back on the same port: stale clears and changes flow again."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    a, b, c = await fleet.start(3)
    register(consul, a)
    register(consul, b)
    async with MeshClient(consul_settings(consul.url)) as client:
        await replicas_hit(client, 2)
        await consul.stop()
        await eventually(lambda: status(client)["errors"] >= 3, "several failed queries")
        assert await replicas_hit(client, 60) == {a.name, b.name}
        down = status(client)
        assert down["stale"] is True and down["synced"] is True and down["endpoints"] == 2
        assert down["last_error"]
        assert len(failure_warnings(caplog)) == 1

        await consul.start()
        await eventually(lambda: status(client)["stale"] is False, "stale cleared after restart")
        register(consul, c)
        await eventually(lambda: status(client)["endpoints"] == 3, "a change after the restart", AT_ONCE)
        assert status(client)["last_error"] is None
    assert any("answers again" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("fault", "words"),
    [
        ("malformed-json", "not JSON"),
        ("bad-shape", "lacks its Node or Service object"),
        ("no-index", "no X-Consul-Index"),
        ("bogus-index", "is not a number"),
        ("error", "Consul answered 500"),
    ],
)
async def test_a_bad_answer_is_logged_once_and_the_last_set_is_kept(
    consul: ConsulStandIn, fleet: Fleet, caplog: pytest.LogCaptureFixture, fault: str, words: str
) -> None:
    """Repeated malformed (or failed) answers: exactly one warning naming the problem, calls keep going to
    the last good set; once Consul answers well again the change it carries is applied."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    a, b = await fleet.start(2)
    register(consul, a)
    async with MeshClient(consul_settings(consul.url)) as client:
        await replicas_hit(client, 2)
        consul.fault = fault
        register(consul, b)  # the blocked query returns with the change, faulted
        await eventually(lambda: status(client)["errors"] >= 4, "repeated bad answers")
        assert await replicas_hit(client, 20) == {a.name}
        warnings = failure_warnings(caplog)
        assert len(warnings) == 1
        assert words in warnings[0]
        assert words in status(client)["last_error"]

        consul.fault = None
        await eventually(lambda: status(client)["endpoints"] == 2, "the good answer applied")
        assert status(client)["stale"] is False
    assert len(failure_warnings(caplog)) == 1


async def test_an_index_going_backwards_restarts_the_blocking_loop_from_zero(
    consul: ConsulStandIn, fleet: Fleet
) -> None:
    """After a snapshot restore the index goes back: the next query asks with index=0, the one after
    blocks on the new (lower) index, and changes keep reaching routing."""
    a, b = await fleet.start(2)
    register(consul, a)
    async with MeshClient(consul_settings(consul.url)) as client:
        await replicas_hit(client, 1)
        await eventually(lambda: (consul.queries[-1].index or 0) > 0, "a blocking query in flight")
        blocked_on = consul.queries[-1].index
        seen = len(consul.queries)
        consul.restore(2)
        await eventually(lambda: len(consul.queries) >= seen + 2, "two queries after the restore")
        assert [q.index for q in consul.queries[seen : seen + 2]] == [0, 2]
        assert blocked_on is not None and blocked_on > 2
        register(consul, b)
        await eventually(lambda: status(client)["endpoints"] == 2, "a change after the restore", AT_ONCE)
        assert status(client)["errors"] == 0


async def test_an_index_below_one_is_replaced_by_one(consul: ConsulStandIn, fleet: Fleet) -> None:
    """An answer with X-Consul-Index 0 (a known Consul bug) is used, and the next query blocks on 1, as
    Consul's docs require, never on 0 (which would not block)."""
    (a,) = await fleet.start(1)
    register(consul, a)
    consul.fault, consul.fault_times = "zero-index", 1
    async with MeshClient(consul_settings(consul.url)) as client:
        assert await replicas_hit(client, 2) == {a.name}
        await eventually(lambda: len(consul.queries) >= 3, "three queries")
    assert [q.index for q in consul.queries[:3]] == [0, 1, consul.service_index["svc"]]


async def test_a_server_that_does_not_block_is_queried_with_backoff(consul: ConsulStandIn, fleet: Fleet) -> None:
    """A server answering at once with an unchanged index cannot make the loop spin: queries back off
    (without counting as errors); once it blocks again, one query waits at a time."""
    (a,) = await fleet.start(1)
    register(consul, a)
    async with MeshClient(consul_settings(consul.url)) as client:
        await replicas_hit(client, 1)
        consul.fault = "ignore-index"
        start = len(consul.queries)
        await asyncio.sleep(1.0)
        spun = len(consul.queries) - start
        assert 2 <= spun <= 12  # backing off from 0.05 s to 0.2 s: about 8; a 50 ms floor alone: about 20
        assert status(client)["errors"] == 0 and status(client)["stale"] is False
        consul.fault = None
        await asyncio.sleep(0.3)  # the backoff in progress ends (max_backoff 0.2); then one blocking query
        settled = len(consul.queries)
        await asyncio.sleep(0.5)
        assert len(consul.queries) - settled <= 1
        assert await replicas_hit(client, 2) == {a.name}


async def test_a_query_that_waits_out_its_time_is_no_change_and_no_error(fleet: Fleet) -> None:
    """With Consul's full jitter (wait/16) a query that waits out returns unchanged: no error, same set,
    and the next query blocks on the same index (the read timeout allows the jitter)."""
    (a,) = await fleet.start(1)
    async with ConsulStandIn(jitter="max") as consul:
        register(consul, a)
        async with MeshClient(consul_settings(consul.url, consul_wait=0.5)) as client:
            await replicas_hit(client, 1)
            await eventually(lambda: len(consul.queries) >= 4, "two queries waited out", timeout=3.0)
            assert status(client)["errors"] == 0 and status(client)["endpoints"] == 1
        indexes = [q.index for q in consul.queries[1:4]]
    assert indexes[0] == indexes[1] == indexes[2] == consul.service_index["svc"]
    assert consul.queries[1].wait == "500ms"


# ------------------------------------------------------------------------------------------- ACLs


async def test_the_token_is_sent_and_a_revoked_token_keeps_the_last_set(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    """X-Consul-Token goes with every query; a token Consul no longer knows (403 ACL not found) marks the
    set stale, logged once, calls still succeed; the token shows in no log line and no status."""
    caplog.set_level(logging.DEBUG)
    token = "b3cf1e2a-secret-token"
    a, b = await fleet.start(2)
    async with ConsulStandIn(tokens={token}) as consul:
        register(consul, a)
        async with MeshClient(consul_settings(consul.url, consul_token=token)) as client:
            await replicas_hit(client, 2)
            assert {q.token for q in consul.queries} == {token}
            assert consul.tokens is not None
            consul.tokens.clear()
            register(consul, b)
            await eventually(lambda: status(client)["errors"] >= 3, "refused queries")
            assert await replicas_hit(client, 20) == {a.name}
            assert "403" in status(client)["last_error"] and "ACL not found" in status(client)["last_error"]
            assert len(failure_warnings(caplog)) == 1
            shown = json.dumps(client.get_metrics())
    assert token not in caplog.text
    assert token not in shown


async def test_an_unknown_token_from_the_start_fails_the_first_sync_fast(fleet: Fleet) -> None:
    """403 on the first query: a call does not wait for a sync that cannot come."""
    (a,) = await fleet.start(1)
    async with ConsulStandIn(tokens={"right"}) as consul:
        register(consul, a)
        settings = consul_settings(consul.url, consul_token="wrong", initial_sync_timeout=5)
        async with MeshClient(settings) as client:
            await fails_at_once(client)
            assert "ACL not found" in status(client)["last_error"]


async def test_answers_emptied_by_acl_filtering_are_an_error_not_an_empty_set(fleet: Fleet) -> None:
    """Without a token Consul filters the answer to nothing (X-Consul-Results-Filtered-By-ACLs): that is
    reported as a failure naming the token setting, not believed as "no endpoints"."""
    (a,) = await fleet.start(1)
    async with ConsulStandIn(tokens={"right"}) as consul:
        register(consul, a)
        async with MeshClient(consul_settings(consul.url)) as client:
            with pytest.raises(NoHealthyEndpoints):
                await client.get("svc", "/work")
            assert "consul_token" in status(client)["last_error"]
            assert status(client)["synced"] is False


# ---------------------------------------------------------------------------------- empty, first sync


async def test_an_empty_answer_is_held_for_the_grace_then_believed(consul: ConsulStandIn, fleet: Fleet) -> None:
    """Every instance gone: the last set keeps serving for ``empty_grace``, then calls fail."""
    (a,) = await fleet.start(1)
    register(consul, a)
    async with MeshClient(consul_settings(consul.url, empty_grace=0.3)) as client:
        await replicas_hit(client, 1)
        consul.remove_service(a.name)
        await eventually(lambda: status(client)["empty_held"] is True, "the empty answer held", AT_ONCE)
        assert await replicas_hit(client, 5) == {a.name}
        held = await eventually(lambda: status(client)["endpoints"] == 0, "the empty answer believed")
        assert 0.15 < held < 1.0
        with pytest.raises(NoHealthyEndpoints, match="'svc'"):
            await client.get("svc", "/work")


async def test_a_call_waits_for_the_first_sync(consul: ConsulStandIn, fleet: Fleet) -> None:
    """Consul answers the first query late: the call waits for it, then succeeds."""
    (a,) = await fleet.start(1)
    register(consul, a)
    consul.answer_delay = 0.3
    async with MeshClient(consul_settings(consul.url)) as client:
        loop = asyncio.get_running_loop()
        start = loop.time()
        response = await client.get("svc", "/work")
        waited = loop.time() - start
    assert response.json()["replica"] == a.name
    assert 0.25 <= waited < 2.0


async def test_a_call_fails_fast_when_consul_is_down_from_the_start() -> None:
    """No Consul at all: NoHealthyEndpoints at once, not after ``initial_sync_timeout``."""
    settings = consul_settings(f"http://127.0.0.1:{unused_port()}", initial_sync_timeout=5)
    async with MeshClient(settings) as client:
        await fails_at_once(client)
        assert status(client)["synced"] is False and status(client)["stale"] is True


# ------------------------------------------------------------------------------- filters and entries


async def test_datacenter_and_every_tag_must_match(fleet: Fleet) -> None:
    """``dc`` and each tag are sent; an entry lacking one of the tags is dropped even by a server that
    honours only the first ``tag`` parameter (Consul before multi-tag filtering)."""
    a, b, c = await fleet.start(3)
    async with ConsulStandIn(datacenter="eu-west") as consul:
        register(consul, a, tags=["blue", "v2"])
        register(consul, b, tags=["blue"])
        register(consul, c, tags=["v2", "blue", "canary"])
        consul.first_tag_only = True
        settings = consul_settings(consul.url, datacenter="eu-west", tags=["blue", "v2"])
        async with MeshClient(settings) as client:
            assert await replicas_hit(client, 10) == {a.name, c.name}
        query = consul.queries[0]
        assert (query.dc, query.tags) == ("eu-west", ["blue", "v2"])

        async with MeshClient(consul_settings(consul.url, datacenter="us-east")) as client:
            with pytest.raises(NoHealthyEndpoints):
                await client.get("svc", "/work")
            assert "No path to datacenter" in status(client)["last_error"]


async def test_entries_become_endpoints_from_service_and_node_fields(caplog: pytest.LogCaptureFixture) -> None:
    """Address falls back to the node's; IPv6 is bracketed; meta scheme/weight/version/zone are read (node
    zone as fallback, Weights.Passing as the default weight); an unusable entry is skipped with one warning."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    async with ConsulStandIn() as consul:
        consul.add_node("n2", "10.0.0.2", meta={"zone": "eu-1"})
        consul.add_service("svc", port=9000, address="", node="n2", weights={"Passing": 3, "Warning": 1})
        consul.add_service(
            "svc",
            port=9001,
            address="::1",
            meta={"scheme": "https", "weight": "7", "version": "2.0", "zone": "eu-2", "team": "pay"},
        )
        consul.add_service("svc", port=9002, address="not a host!", service_id="broken")
        consul.add_service("svc", port=9003, address="10.0.0.3", status="warning")
        config = DiscoveryConfig(backend="consul", consul_url=consul.url, consul_wait=1)
        discovery = ConsulDiscovery(config, service_name="t", mtls=MtlsConfig())
        await discovery.open()
        try:
            answer = await discovery.fetch("svc", None)
            again = await discovery.fetch("svc", None)
            consul.remove_service("svc-9000")
            consul.remove_service("svc-9001")
            with pytest.raises(MalformedAnswer, match="no entry of 'svc' is usable"):
                await discovery.fetch("svc", None)
        finally:
            await discovery.close()
    assert answer.endpoints is not None and again.endpoints == answer.endpoints
    by_url = {e.url: e for e in answer.endpoints}
    assert set(by_url) == {"http://10.0.0.2:9000", "https://[::1]:9001"}
    node_fallback, ipv6 = by_url["http://10.0.0.2:9000"], by_url["https://[::1]:9001"]
    assert (node_fallback.weight, node_fallback.zone, dict(node_fallback.metadata)) == (3, "eu-1", {})
    assert (ipv6.weight, ipv6.zone, ipv6.metadata["version"], ipv6.metadata["team"]) == (7, "eu-2", "2.0", "pay")
    skipped = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(skipped) == 1 and "broken" in skipped[0]


# -------------------------------------------------------------------------------- self-registration


async def test_self_registration_is_sent_at_start_and_withdrawn_at_stop(consul: ConsulStandIn) -> None:
    """The agent gets the ID, name, address, port, tags, meta and an HTTP check on /health/ready at
    start-up, and the deregistration of that ID at shutdown."""
    settings = consul_settings(
        consul.url,
        register=True,
        service_address="127.0.0.1",
        service_port=8123,
        tags=["v2"],
        service_meta={"version": "2.1"},
        check_interval="5s",
        deregister_critical_after="1m",
    )
    service_id = f"gateway-{socket.gethostname()}-8123"
    async with MeshClient(settings):
        assert consul.registrations == [
            {
                "ID": service_id,
                "Name": "gateway",
                "Address": "127.0.0.1",
                "Port": 8123,
                "Tags": ["v2"],
                "Meta": {"version": "2.1"},
                "Check": {
                    "HTTP": "http://127.0.0.1:8123/health/ready",
                    "Interval": "5s",
                    "DeregisterCriticalServiceAfter": "60s",
                },
            }
        ]
        assert consul.services[service_id].name == "gateway"
        assert consul.checks[f"service:{service_id}"].status == "critical"  # until Consul's check passes
        assert consul.deregistrations == []
    assert consul.deregistrations == [service_id]
    assert service_id not in consul.services


async def test_a_failed_registration_is_retried_in_the_background(
    consul: ConsulStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    """The agent refuses the first registrations: start-up goes on (one error logged) and the
    registration is retried with backoff until it succeeds."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    consul.register_failures = 3
    settings = consul_settings(consul.url, register=True, service_port=8123, service_id="gw-1")
    async with MeshClient(settings):
        errors = [r for r in caplog.records if r.levelno == logging.ERROR and "registering" in r.getMessage()]
        assert len(errors) == 1 and "500" in errors[0].getMessage()
        await eventually(
            lambda: any("after 3 retries" in r.getMessage() for r in caplog.records), "registered after retries"
        )
        assert "gw-1" in consul.services
    assert len(consul.registrations) == 4
    assert consul.deregistrations == ["gw-1"]


async def test_start_and_stop_go_on_when_the_agent_is_unreachable(caplog: pytest.LogCaptureFixture) -> None:
    """No agent at all: start-up succeeds, shutdown cancels the retries and logs the failed deregistration."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    settings = consul_settings(f"http://127.0.0.1:{unused_port()}", register=True, service_port=8123)
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with MeshClient(settings):
        await asyncio.sleep(0.1)
    assert loop.time() - start < 2.0
    assert any("deregistering" in r.getMessage() for r in caplog.records)


async def test_the_mesh_lifespan_deregisters_after_readiness_turned_503(consul: ConsulStandIn) -> None:
    """A FastAPI app with ``Mesh(settings)``: ready answers 200 while running; when the agent receives the
    deregistration, ready already answers 503."""
    settings = consul_settings(consul.url, register=True, service_address="127.0.0.1", service_port=8123)
    mesh = Mesh(settings)
    app = FastAPI(lifespan=mesh.lifespan)
    app.include_router(mesh.router)
    ready_at_deregistration: list[int] = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gateway") as http:

        async def record_readiness(service_id: str) -> None:
            ready_at_deregistration.append((await http.get("/health/ready")).status_code)

        consul.on_deregister = record_readiness
        async with LifespanManager(app):
            assert (await http.get("/health/ready")).status_code == 200
            assert len(consul.registrations) == 1
            status_page = (await http.get("/mesh/status")).json()
            assert status_page["discovery"]["backend"] == "consul"
            assert consul.deregistrations == []
    assert consul.deregistrations == [f"gateway-{socket.gethostname()}-8123"]
    assert ready_at_deregistration == [503]


async def test_the_registered_check_reaches_the_served_apps_readiness(consul: ConsulStandIn) -> None:
    """The app served by uvicorn: the check Consul runs on the registered URL passes, and the service then
    shows in Consul's passing answers; stopping the server deregisters it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        settings = consul_settings(consul.url, register=True, service_address="127.0.0.1", service_port=port)
        mesh = Mesh(settings)
        app = FastAPI(lifespan=mesh.lifespan)
        app.include_router(mesh.router)
        server = uvicorn.Server(uvicorn.Config(app, log_level="critical", lifespan="on"))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            await eventually(lambda: server.started, "the app serving", timeout=5.0)
            service_id = consul.registrations[0]["ID"]
            await consul.run_checks()
            assert consul.checks[f"service:{service_id}"].status == "passing"
            async with httpx.AsyncClient(trust_env=False) as http:
                answer = (await http.get(f"{consul.url}/v1/health/service/gateway", params={"passing": "1"})).json()
            assert [(e["Service"]["ID"], e["Service"]["Port"]) for e in answer] == [(service_id, port)]
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, timeout=10)
    assert consul.deregistrations == [service_id]


# ------------------------------------------------------------------------------------------------ TLS


def make_pki(directory: Path) -> None:
    """``consul-ca`` signs Consul's server certificate (127.0.0.1); ``mesh-ca`` signs the mesh's client one."""
    consul_ca = CertificateAuthority.create(common_name="consul-ca")
    mesh_ca = CertificateAuthority.create(common_name="mesh-ca")
    issued = {
        "consul": consul_ca.issue("consul", identity=None, dns_names=["127.0.0.1"]),
        "client": mesh_ca.issue("gw"),  # spiffe://cluster.local/ns/default/sa/gw
    }
    for name, ca in (("consul-ca", consul_ca), ("mesh-ca", mesh_ca)):
        (directory / f"{name}.crt").write_bytes(ca.cert_pem)
    for name, cert in issued.items():
        (directory / f"{name}.crt").write_bytes(cert.cert_pem)
        (directory / f"{name}.key").write_bytes(cert.key_pem)


async def test_https_consul_is_verified_against_consul_ca_path_with_the_mesh_client_certificate(
    fleet: Fleet, tmp_path: Path
) -> None:
    """Consul over TLS requiring a client certificate: ``consul_ca_path`` verifies Consul, the mTLS
    certificate is presented. Without ``consul_ca_path`` the mesh CA is used, which did not sign Consul's
    certificate: the handshake fails and the service cannot sync."""
    make_pki(tmp_path)
    (a,) = await fleet.start(1)
    mtls = {
        "enabled": True,
        "cert_path": str(tmp_path / "client.crt"),
        "key_path": str(tmp_path / "client.key"),
        "ca_path": str(tmp_path / "mesh-ca.crt"),
    }
    tls = {
        "ssl_certfile": str(tmp_path / "consul.crt"),
        "ssl_keyfile": str(tmp_path / "consul.key"),
        "ssl_ca_certs": str(tmp_path / "mesh-ca.crt"),
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
    }
    async with ConsulStandIn(**tls) as consul:
        register(consul, a)
        assert consul.url.startswith("https://")
        settings = consul_settings(consul.url, consul_ca_path=str(tmp_path / "consul-ca.crt"))
        settings = settings.model_copy(update={"mtls": MtlsConfig(**mtls)})
        async with MeshClient(settings) as client:
            assert await replicas_hit(client, 2) == {a.name}
        discovery = settings.discovery.model_copy(update={"consul_ca_path": None})
        wrong_ca = settings.model_copy(update={"discovery": discovery})
        async with MeshClient(wrong_ca) as client:
            with pytest.raises(NoHealthyEndpoints):
                await client.get("svc", "/work")
            assert "CERTIFICATE_VERIFY_FAILED" in status(client)["last_error"]


async def test_a_rotated_client_certificate_reaches_consul_without_a_restart(fleet: Fleet, tmp_path: Path) -> None:
    """Consul requires a client certificate the mesh CA signed. While the mTLS files hold one another CA
    signed, Consul refuses every connection and the service cannot sync; once the files hold a good pair,
    the next connection to Consul presents it (``mtls.reload_interval``) and the sync recovers, no restart."""
    make_pki(tmp_path)
    stranger = CertificateAuthority.create(common_name="stranger-ca").issue("gw")
    cert, key = tmp_path / "rotating.crt", tmp_path / "rotating.key"
    cert.write_bytes(stranger.cert_pem)
    key.write_bytes(stranger.key_pem)
    (a,) = await fleet.start(1)
    mtls = MtlsConfig(
        enabled=True,
        cert_path=str(cert),
        key_path=str(key),
        ca_path=str(tmp_path / "mesh-ca.crt"),
        reload_interval=0.05,
    )
    tls = {
        "ssl_certfile": str(tmp_path / "consul.crt"),
        "ssl_keyfile": str(tmp_path / "consul.key"),
        "ssl_ca_certs": str(tmp_path / "mesh-ca.crt"),
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
    }
    async with ConsulStandIn(**tls) as consul:
        register(consul, a)
        settings = consul_settings(consul.url, consul_ca_path=str(tmp_path / "consul-ca.crt"))
        settings = settings.model_copy(update={"mtls": mtls})
        async with MeshClient(settings) as client:
            with pytest.raises(NoHealthyEndpoints):
                await client.get("svc", "/work")
            refused = status(client)
            assert refused["errors"] >= 1 and not refused["endpoints"]
            key.write_bytes((tmp_path / "client.key").read_bytes())  # the key first, as a writer might
            cert.write_bytes((tmp_path / "client.crt").read_bytes())

            def synced() -> bool:
                return bool(status(client).get("endpoints"))

            await eventually(synced)
            assert await replicas_hit(client, 2) == {a.name}


def test_the_consul_tls_context_prefers_consul_ca_path_and_names_a_bad_file(tmp_path: Path) -> None:
    """A CA bundle that cannot be read fails naming the setting; mTLS adds the client certificate."""
    make_pki(tmp_path)
    mtls = MtlsConfig(
        enabled=True,
        cert_path=str(tmp_path / "client.crt"),
        key_path=str(tmp_path / "client.key"),
        ca_path=str(tmp_path / "missing-mesh-ca.crt"),
    )
    with pytest.raises(ValueError, match=r"mtls\.ca_path: cannot load .*missing-mesh-ca"):
        consul_ssl_context(DiscoveryConfig(), mtls)
    config = DiscoveryConfig(consul_ca_path=str(tmp_path / "consul-ca.crt"))
    context = consul_ssl_context(config, mtls)  # the unreadable mesh CA is not used
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert [dict(rdn[0] for rdn in c["subject"])["commonName"] for c in context.get_ca_certs()] == ["consul-ca"]
    with pytest.raises(ValueError, match=r"discovery\.consul_ca_path: cannot load"):
        consul_ssl_context(DiscoveryConfig(consul_ca_path=str(tmp_path / "nope.crt")), MtlsConfig())


def test_the_registration_checks_over_https_with_mtls_and_brackets_ipv6() -> None:
    """With mTLS the check URL is https (verified); an IPv6 address is bracketed in it; without an address
    the host name is registered."""
    config = DiscoveryConfig(
        backend="consul", register=True, service_address="fd00::7", service_port=8443, service_id="gw-a"
    )
    mtls = MtlsConfig(enabled=True, cert_path="client.crt", key_path="client.key", ca_path="ca.crt")
    body = ConsulDiscovery(config, service_name="gw", mtls=mtls).registration()
    assert (body["ID"], body["Address"], body["Port"]) == ("gw-a", "fd00::7", 8443)
    assert body["Check"] == {
        "HTTP": "https://[fd00::7]:8443/health/ready",
        "Interval": "10s",
        "DeregisterCriticalServiceAfter": "60s",
        "TLSSkipVerify": False,
    }
    plain = DiscoveryConfig(backend="consul", register=True, service_port=8080)
    body = ConsulDiscovery(plain, service_name="gw", mtls=MtlsConfig()).registration()
    assert body["Address"] == socket.gethostname()
    assert body["ID"] == f"gw-{socket.gethostname()}-8080"


def test_build_discovery_builds_the_consul_backend() -> None:
    """``backend: consul`` in the settings gives a ConsulDiscovery with the service's name."""
    discovery = build_discovery(consul_settings("http://127.0.0.1:8500", service_name="orders"))
    assert isinstance(discovery, ConsulDiscovery)
    assert discovery.service_name == "orders" and discovery.backend == "consul"
