"""The kubernetes-dns backend against a real dnsmasq, with real uvicorn replicas behind the records."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Sequence
from typing import Any

import dns.asyncresolver
import dns.nameserver
import dns.rdatatype
import dns.resolver
import pytest
import uvicorn

from fastapi_mesh import MeshClient, MeshSettings, NoHealthyEndpoints
from fastapi_mesh.clock import MonotonicClock
from fastapi_mesh.discovery import Answer, Endpoint, MalformedAnswer
from fastapi_mesh.discovery.base import url_host
from fastapi_mesh.discovery.kubernetes_dns import MAX_TTL_WAIT, KubernetesDNSDiscovery
from fastapi_mesh.settings import DiscoveryConfig
from tests.discovery.dnsmasq import Dnsmasq, Host, Record, Srv
from tests.discovery.scripted import eventually
from tests.upstreams import START_TIMEOUT, Fleet, Replica

pytestmark = pytest.mark.anyio

DOMAIN = "users.default.svc.cluster.local"
SRV_NAME = f"_http._tcp.{DOMAIN}"
REFRESH = 0.2
DISCOVERY: dict[str, Any] = {
    "backend": "kubernetes-dns",
    "refresh_interval": REFRESH,
    "backoff": 0.05,
    "max_backoff": 0.2,
    "dns_timeout": 0.5,  # dnsmasq stopped: no answer at all, so lookups give up fast
}
WAIT = 5.0


# ------------------------------------------------------------------------------------------------ helpers


def pod(replica: Replica) -> str:
    return f"{replica.name}.{DOMAIN}"


def srv_records(replicas: Sequence[Replica], weights: Sequence[int] | None = None) -> list[Record]:
    """An SRV record per replica (its port), its target resolving to 127.0.0.1."""
    records: list[Record] = []
    for i, replica in enumerate(replicas):
        weight = weights[i] if weights is not None else 0
        records += [Srv(SRV_NAME, pod(replica), replica.port, 0, weight), Host(pod(replica), "127.0.0.1")]
    return records


def config_for(server: Dnsmasq, **discovery: Any) -> DiscoveryConfig:
    return DiscoveryConfig(**{**DISCOVERY, "nameservers": [server.nameserver], **discovery})


def settings_for(server: Dnsmasq, **discovery: Any) -> MeshSettings:
    return MeshSettings(
        service_name="test",
        discovery={**DISCOVERY, "nameservers": [server.nameserver], **discovery},
        retry={"initial_delay": 0, "jitter": "none"},
    )


def quick(backend: Any) -> KubernetesDNSDiscovery:
    """The backend, checked to give up a lookup within half a second (dnsmasq stopped: no answer at all)."""
    assert isinstance(backend, KubernetesDNSDiscovery)
    assert (backend.lookup_lifetime, backend.query_timeout) == (0.5, 0.5)
    return backend


def client_for(server: Dnsmasq, **discovery: Any) -> MeshClient:
    client = MeshClient(settings_for(server, **discovery))
    quick(client.discovery)
    return client


def status(client: MeshClient, service: str = "users") -> dict[str, Any]:
    services: dict[str, Any] = client.get_metrics()["discovery"]["services"]
    return services.get(service, {})


def urls(client: MeshClient, service: str = "users") -> list[str]:
    return sorted(e.url for e in client._rt.services.get(service).balancer.endpoints)


async def names(client: MeshClient, calls: int, service: str = "users") -> list[str]:
    replies = []
    for _ in range(calls):
        response = await client.get(service, "/api/users")
        assert response.status_code == 200
        replies.append(response.json()["replica"])
    return replies


async def open_backend(config: DiscoveryConfig, **options: Any) -> KubernetesDNSDiscovery:
    backend = quick(KubernetesDNSDiscovery(config, **options))
    await backend.open()
    return backend


class BoundReplica(Replica):
    """A replica on a loopback address of its own (127.0.0.2, ::1, ...), listening on a socket given to it."""

    def __init__(self, name: str, sock: socket.socket) -> None:
        super().__init__(name)
        self.sock = sock
        self.host, self.port = sock.getsockname()[:2]

    @property
    def url(self) -> str:
        return f"http://{url_host(self.host)}:{self.port}"

    async def start(self) -> None:
        config = uvicorn.Config(self, log_level="critical", lifespan="off")
        self.server = server = uvicorn.Server(config)
        self.task = asyncio.create_task(server.serve(sockets=[self.sock]))
        async with asyncio.timeout(START_TIMEOUT):
            while not server.started:
                if self.task.done():
                    self.task.result()
                await asyncio.sleep(0.005)


def listening(host: str, port: int = 0) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(64)
    return sock


async def replicas_at(fleet: Fleet, hosts: Sequence[str]) -> list[BoundReplica]:
    """One replica per loopback address in ``hosts``, all on one port (as the pods of a headless service)."""
    for _ in range(20):
        first = listening(hosts[0])
        sockets = [first]
        try:
            sockets += [listening(host, first.getsockname()[1]) for host in hosts[1:]]
        except OSError:  # the port is taken on another address: pick another
            for sock in sockets:
                sock.close()
            continue
        replicas = [BoundReplica(f"pod{i + 1}", sock) for i, sock in enumerate(sockets)]
        fleet.replicas.extend(replicas)  # the fleet fixture stops them
        await asyncio.gather(*(r.start() for r in replicas))
        return replicas
    raise RuntimeError(f"no port free on all of {hosts}")


class DelayedResolver(dns.asyncresolver.Resolver):
    """dnspython's resolver, whose first lookup takes ``delay`` seconds longer."""

    def __init__(self, server: Dnsmasq, delay: float) -> None:
        super().__init__(configure=False)
        self.nameservers = [dns.nameserver.Do53Nameserver("127.0.0.1", server.port)]
        self.delay = delay
        self.calls = 0

    async def resolve(self, *args: Any, **kwargs: Any) -> dns.resolver.Answer:
        self.calls += 1
        if self.calls == 1:
            await asyncio.sleep(self.delay)
        return await super().resolve(*args, **kwargs)


class NoAdditionalResolver(dns.asyncresolver.Resolver):
    """dnspython's resolver, dropping the additional section of SRV answers (as servers that send no glue
    do) and noting every lookup."""

    def __init__(self, server: Dnsmasq) -> None:
        super().__init__(configure=False)
        self.nameservers = [dns.nameserver.Do53Nameserver("127.0.0.1", server.port)]
        self.lookups: list[tuple[str, str]] = []

    async def resolve(self, qname: Any, rdtype: Any = "A", *args: Any, **kwargs: Any) -> dns.resolver.Answer:
        self.lookups.append((str(qname), dns.rdatatype.to_text(dns.rdatatype.RdataType.make(rdtype))))
        answer = await super().resolve(qname, rdtype, *args, **kwargs)
        if dns.rdatatype.RdataType.make(rdtype) == dns.rdatatype.SRV:
            answer.response.additional = []
        return answer


class ParkingClock(MonotonicClock):
    """Notes each sleep and then waits until cancelled, so a sync loop stops after one lookup."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.Event().wait()


# ------------------------------------------------------------------------------------------- SRV records


async def test_initial_sync_routes_calls_to_every_srv_target(fleet: Fleet, dnsmasq: Dnsmasq) -> None:
    """Three replicas on three ports of 127.0.0.1, published as SRV records, get 10 of 30 calls each."""
    replicas = await fleet.start(3)
    await dnsmasq.start(srv_records(replicas))
    async with client_for(dnsmasq) as client:
        replies = await names(client, 30)
        assert sorted(replies.count(r.name) for r in replicas) == [10, 10, 10]
        assert urls(client) == sorted(r.url for r in replicas)
        assert status(client)["synced"] is True
        assert status(client)["stale"] is False
        assert status(client)["endpoints"] == 3
        assert client.get_metrics()["discovery"]["backend"] == "kubernetes-dns"
        endpoints = client._rt.services.get("users").balancer.endpoints
        targets = {s.url: s.endpoint.metadata["target"] for s in endpoints}
        assert targets == {r.url: pod(r) for r in replicas}
        assert {s.endpoint.weight for s in endpoints} == {1}  # SRV weights all 0: equal shares


async def test_a_call_before_the_first_sync_waits_for_it(fleet: Fleet, dnsmasq: Dnsmasq) -> None:
    """The first lookup takes 0.3 s: a call made at once waits for it, then reaches the replica."""
    (replica,) = await fleet.start(1)
    await dnsmasq.start(srv_records([replica]))
    resolver = DelayedResolver(dnsmasq, 0.3)
    settings = settings_for(dnsmasq)
    backend = KubernetesDNSDiscovery(settings.discovery, resolver=resolver)
    async with MeshClient(settings, discovery=backend) as client:
        started = time.monotonic()
        response = await client.get("users", "/api/users")
        waited = time.monotonic() - started
    assert response.status_code == 200
    assert response.json()["replica"] == replica.name
    assert waited >= 0.3
    assert resolver.calls >= 1


async def test_a_replica_added_then_removed_in_the_records_is_followed(fleet: Fleet, dnsmasq: Dnsmasq) -> None:
    """dnsmasq restarted with a second SRV record: calls reach the new replica; restarted without the first
    one: calls stop reaching it."""
    first, second = await fleet.start(2)
    await dnsmasq.start(srv_records([first]))
    async with client_for(dnsmasq) as client:
        assert set(await names(client, 4)) == {first.name}

        await dnsmasq.restart(srv_records([first, second]))
        await eventually(lambda: len(urls(client)) == 2)
        assert sorted(await names(client, 10)) == sorted([first.name] * 5 + [second.name] * 5)

        await dnsmasq.restart(srv_records([second]))
        await eventually(lambda: urls(client) == [second.url])
        before = first.total
        assert set(await names(client, 10)) == {second.name}
        assert first.total == before


async def test_changed_records_are_seen_within_a_refresh_or_two(fleet: Fleet, dnsmasq: Dnsmasq) -> None:
    """With TTL 0, a changed record set is routed on a couple of refresh intervals after dnsmasq answers it."""
    first, second = await fleet.start(2)
    await dnsmasq.start(srv_records([first]))
    async with client_for(dnsmasq) as client:
        await names(client, 1)
        await dnsmasq.restart(srv_records([second]))
        answered = time.monotonic()
        await eventually(lambda: urls(client) == [second.url])
        # One refresh (0.2 s), plus a lookup that was timing out while dnsmasq restarted, plus a backoff.
        assert time.monotonic() - answered < 2.0
        assert set(await names(client, 5)) == {second.name}


async def test_dnsmasq_down_keeps_the_last_set_and_every_call_succeeds(
    fleet: Fleet, dnsmasq: Dnsmasq, caplog: pytest.LogCaptureFixture
) -> None:
    """With dnsmasq stopped, lookups time out: the last good set stays, marked stale, and not one of many calls
    fails; after dnsmasq is back the stale mark clears. One log line for each change of state."""
    replicas = await fleet.start(2)
    await dnsmasq.start(srv_records(replicas))
    caplog.set_level(logging.INFO, logger="fastapi_mesh.discovery")
    async with client_for(dnsmasq) as client:
        await names(client, 2)
        await dnsmasq.stop()
        calls = 0
        deadline = time.monotonic() + WAIT
        while status(client).get("errors", 0) < 3 or calls < 50:
            assert time.monotonic() < deadline, status(client)
            response = await client.get("users", "/api/users")
            assert response.status_code == 200
            calls += 1
            await asyncio.sleep(0.005)
        assert urls(client) == sorted(r.url for r in replicas)
        down = status(client)
        assert down["stale"] is True
        assert down["synced"] is True
        assert down["endpoints"] == 2
        assert down["last_error"]
        failures = [r for r in caplog.records if "failed" in r.getMessage()]
        assert len(failures) == 1, [r.getMessage() for r in failures]
        assert "keeping the last 2 endpoints" in failures[0].getMessage()

        await dnsmasq.start(srv_records(replicas))
        await eventually(lambda: status(client)["stale"] is False)
        assert any("answers again after" in r.getMessage() for r in caplog.records)
        assert sorted(await names(client, 4)) == sorted([r.name for r in replicas] * 2)


async def test_srv_weights_become_endpoint_weights(fleet: Fleet, dnsmasq: Dnsmasq) -> None:
    """SRV weights 30 and 10 are the endpoints' weights: the weighted strategy sends 30 of 40 calls to the
    first replica."""
    heavy, light = await fleet.start(2)
    await dnsmasq.start(srv_records([heavy, light], weights=[30, 10]))
    settings = settings_for(dnsmasq).model_copy(update={"load_balancer": {"strategy": "weighted"}})
    async with MeshClient(settings) as client:
        quick(client.discovery)
        replies = await names(client, 40)
        weights = {e["url"]: e["weight"] for e in client.get_metrics()["load_balancer"]["users"]["endpoints"]}
    assert weights == {heavy.url: 30, light.url: 10}
    assert replies.count(heavy.name) == 30
    assert replies.count(light.name) == 10


async def test_only_the_lowest_srv_priority_is_used(fleet: Fleet, dnsmasq: Dnsmasq) -> None:
    """RFC 2782: records of priority 10 are left out while records of priority 0 exist."""
    primary, backup = await fleet.start(2)
    await dnsmasq.start(
        [
            Srv(SRV_NAME, pod(primary), primary.port, 0, 5),
            Srv(SRV_NAME, pod(backup), backup.port, 10, 5),
            Host(pod(primary), "127.0.0.1"),
            Host(pod(backup), "127.0.0.1"),
        ]
    )
    backend = await open_backend(config_for(dnsmasq))
    answer = await backend.fetch("users", None)
    assert [e.url for e in answer.endpoints or ()] == [primary.url]


async def test_weights_are_clamped_and_merged_per_address(dnsmasq: Dnsmasq) -> None:
    """An SRV weight above 10000 becomes 10000; two records for one address and port add up; weight 0 stays 0
    (the balancer gives it turns only when no endpoint has a weight)."""
    await dnsmasq.start(
        [
            Srv(SRV_NAME, f"a.{DOMAIN}", 8001, 0, 65535),
            Srv(SRV_NAME, f"b.{DOMAIN}", 8002, 0, 20),
            Srv(SRV_NAME, f"c.{DOMAIN}", 8002, 0, 30),
            Srv(SRV_NAME, f"d.{DOMAIN}", 8003, 0, 0),
            Host(f"a.{DOMAIN}", "10.0.0.1"),
            Host(f"b.{DOMAIN}", "10.0.0.2"),
            Host(f"c.{DOMAIN}", "10.0.0.2"),
            Host(f"d.{DOMAIN}", "10.0.0.3"),
        ]
    )
    backend = await open_backend(config_for(dnsmasq))
    answer = await backend.fetch("users", None)
    assert {e.url: e.weight for e in answer.endpoints or ()} == {
        "http://10.0.0.1:8001": 10_000,
        "http://10.0.0.2:8002": 50,
        "http://10.0.0.3:8003": 0,
    }


async def test_targets_without_addresses_in_the_answer_are_looked_up(dnsmasq: Dnsmasq) -> None:
    """No additional section: each target's A record is looked up, AAAA when it has no A record (URL in
    brackets); a target that does not exist (a pod gone) is left out."""
    await dnsmasq.start(
        [
            Srv(SRV_NAME, f"v4.{DOMAIN}", 8001),
            Srv(SRV_NAME, f"v6.{DOMAIN}", 8002),
            Srv(SRV_NAME, f"gone.{DOMAIN}", 8003),
            Host(f"v4.{DOMAIN}", "10.0.0.1"),
            Host(f"v6.{DOMAIN}", "fd00::1"),
        ]
    )
    resolver = NoAdditionalResolver(dnsmasq)
    backend = await open_backend(config_for(dnsmasq), resolver=resolver)
    answer = await backend.fetch("users", None)
    assert [(e.url, e.metadata["target"]) for e in answer.endpoints or ()] == [
        ("http://10.0.0.1:8001", f"v4.{DOMAIN}"),
        ("http://[fd00::1]:8002", f"v6.{DOMAIN}"),
    ]
    assert (f"v4.{DOMAIN}.", "A") in resolver.lookups
    assert (f"v4.{DOMAIN}.", "AAAA") not in resolver.lookups
    assert (f"v6.{DOMAIN}.", "AAAA") in resolver.lookups
    assert (f"gone.{DOMAIN}.", "A") in resolver.lookups


async def test_addresses_in_the_additional_section_save_lookups(dnsmasq: Dnsmasq) -> None:
    """dnsmasq sends the targets' addresses along with the SRV answer: one lookup in all; IPv4 is preferred
    for a target with both."""
    await dnsmasq.start(
        [Srv(SRV_NAME, f"dual.{DOMAIN}", 8001), Host(f"dual.{DOMAIN}", "10.0.0.1"), Host(f"dual.{DOMAIN}", "fd00::1")]
    )
    backend = await open_backend(config_for(dnsmasq))
    counting = Counting(backend)
    answer = await backend.fetch("users", None)
    assert [e.url for e in answer.endpoints or ()] == ["http://10.0.0.1:8001"]
    assert counting.lookups == [(f"{SRV_NAME}.", dns.rdatatype.SRV)]


class Counting:
    """Notes the lookups a backend makes (wrapping its ``_lookup``)."""

    def __init__(self, backend: KubernetesDNSDiscovery) -> None:
        self.lookups: list[tuple[str, dns.rdatatype.RdataType]] = []
        real = backend._lookup

        async def lookup(name: str, rdtype: dns.rdatatype.RdataType) -> dns.resolver.Answer | None:
            self.lookups.append((name, rdtype))
            return await real(name, rdtype)

        backend._lookup = lookup  # type: ignore[method-assign]


async def test_https_port_name_gives_https_endpoints(dnsmasq: Dnsmasq) -> None:
    """Port name ``https`` looks up ``_https._tcp...`` and gives https:// endpoints."""
    await dnsmasq.start([Srv(f"_https._tcp.{DOMAIN}", f"a.{DOMAIN}", 8443), Host(f"a.{DOMAIN}", "10.0.0.1")])
    backend = await open_backend(config_for(dnsmasq, port_name="https"))
    answer = await backend.fetch("users", None)
    assert [e.url for e in answer.endpoints or ()] == ["https://10.0.0.1:8443"]


async def test_a_service_named_with_its_namespace_is_looked_up_there(dnsmasq: Dnsmasq) -> None:
    """``users.payments`` is service ``users`` of namespace ``payments``, whatever ``discovery.namespace`` says."""
    name = "_http._tcp.users.payments.svc.cluster.local"
    target = "p.users.payments.svc.cluster.local"
    await dnsmasq.start([Srv(name, target, 9000), Host(target, "10.1.0.1")])
    backend = await open_backend(config_for(dnsmasq, namespace="default"))
    answer = await backend.fetch("users.payments", None)
    assert [e.url for e in answer.endpoints or ()] == ["http://10.1.0.1:9000"]
    assert backend.query_name("users.payments") == name + "."


def test_query_names_follow_kubernetes_dns() -> None:
    """Service names become the names Kubernetes DNS publishes; a name that is no DNS name is refused."""
    srv = KubernetesDNSDiscovery(
        DiscoveryConfig(backend="kubernetes-dns", namespace="shop", cluster_domain="corp.internal.", protocol="udp")
    )
    assert srv.query_name("Users") == "_http._udp.users.shop.svc.corp.internal."
    assert srv.query_name("users.billing") == "_http._udp.users.billing.svc.corp.internal."
    assert srv.query_name("users.billing.svc.other.local") == "_http._udp.users.billing.svc.other.local."
    assert srv.query_name("users.billing.svc.other.local.") == "_http._udp.users.billing.svc.other.local."
    headless = KubernetesDNSDiscovery(DiscoveryConfig(backend="kubernetes-dns", port_name=None, port=80))
    assert headless.query_name("users") == "users.default.svc.cluster.local."
    for bad in ("user_service", "a..b", "-users", "x" * 64):
        with pytest.raises(ValueError, match="DNS name"):
            srv.query_name(bad)


async def test_a_target_of_dot_means_no_service(dnsmasq: Dnsmasq) -> None:
    """An SRV record whose target is ``.`` (RFC 2782: not available here) gives an empty set."""
    await dnsmasq.start([Srv(SRV_NAME, ".", 8001)])
    backend = await open_backend(config_for(dnsmasq))
    answer = await backend.fetch("users", None)
    assert answer.endpoints == []


# ---------------------------------------------------------------------------------- headless (A/AAAA)


async def test_headless_service_a_records_on_the_configured_port(fleet: Fleet, dnsmasq: Dnsmasq) -> None:
    """Without a port name, each A record of the service is an endpoint on ``discovery.port``; its AAAA record
    (the same pods, dual-stack) does not add endpoints."""
    pods = await replicas_at(fleet, ["127.0.0.2", "127.0.0.3"])
    port = pods[0].port
    await dnsmasq.start([Host(DOMAIN, "127.0.0.2"), Host(DOMAIN, "127.0.0.3"), Host(DOMAIN, "::1")])
    async with client_for(dnsmasq, port_name=None, port=port) as client:
        replies = await names(client, 10)
        assert urls(client) == [f"http://127.0.0.2:{port}", f"http://127.0.0.3:{port}"]
    assert sorted(replies) == ["pod1"] * 5 + ["pod2"] * 5


async def test_headless_service_with_only_aaaa_records_uses_ipv6(fleet: Fleet, dnsmasq: Dnsmasq) -> None:
    """Only AAAA records: the endpoint is ``http://[::1]:<port>`` and calls reach the replica there."""
    (replica,) = await replicas_at(fleet, ["::1"])
    await dnsmasq.start([Host(DOMAIN, "::1")])
    async with client_for(dnsmasq, port_name=None, port=replica.port) as client:
        assert await names(client, 3) == [replica.name] * 3
        assert urls(client) == [f"http://[::1]:{replica.port}"]


# -------------------------------------------------------------------------------------------------- TTLs


@pytest.mark.parametrize(
    ("ttl", "delay"),
    [(7, 7.0), (0, REFRESH), (86_400, MAX_TTL_WAIT)],
    ids=["ttl-7s", "ttl-0-refresh-interval", "ttl-1d-capped"],
)
@pytest.mark.parametrize("headless", [False, True], ids=["srv", "a"])
async def test_next_lookup_waits_for_the_ttl_but_at_least_refresh_interval(
    dnsmasq: Dnsmasq, ttl: int, delay: float, headless: bool
) -> None:
    """The delay before the next lookup is the answer's TTL, never below refresh_interval, capped at
    MAX_TTL_WAIT."""
    await dnsmasq.start(
        [Srv(SRV_NAME, f"a.{DOMAIN}", 8001), Host(f"a.{DOMAIN}", "10.0.0.1"), Host(DOMAIN, "10.0.0.2")], ttl=ttl
    )
    options = {"port_name": None, "port": 8080} if headless else {}
    backend = await open_backend(config_for(dnsmasq, **options))
    answer = await backend.fetch("users", None)
    assert [e.url for e in answer.endpoints or ()] == ["http://10.0.0.2:8080" if headless else "http://10.0.0.1:8001"]
    assert answer.delay == delay


async def test_the_sync_loop_sleeps_for_the_ttl(dnsmasq: Dnsmasq) -> None:
    """Running in the background, the backend publishes the set and then waits the record's TTL (9 s here)."""
    await dnsmasq.start([Srv(SRV_NAME, f"a.{DOMAIN}", 8001), Host(f"a.{DOMAIN}", "10.0.0.1")], ttl=9)
    clock = ParkingClock()
    backend = quick(KubernetesDNSDiscovery(config_for(dnsmasq), clock=clock))
    published: list[tuple[str, list[Endpoint]]] = []
    await backend.start(lambda service, endpoints: published.append((service, list(endpoints))))
    try:
        backend.watch("users")
        await eventually(lambda: bool(clock.sleeps))
    finally:
        await backend.stop()
    assert published == [("users", [Endpoint("http://10.0.0.1:8001", metadata={"target": f"a.{DOMAIN}"})])]
    assert clock.sleeps == [9.0]


# ------------------------------------------------------------------------------------- empty and errors


async def test_a_name_that_does_not_exist_is_an_empty_set_not_an_error(dnsmasq: Dnsmasq) -> None:
    """NXDOMAIN (and a name with no records of the type asked) is a real answer: no endpoints, next lookup
    after refresh_interval."""
    await dnsmasq.start([Host(f"a.{DOMAIN}", "10.0.0.1")])
    backend = await open_backend(config_for(dnsmasq))
    assert await backend.fetch("ghost", None) == Answer([], None, REFRESH)
    headless = await open_backend(config_for(dnsmasq, port_name=None, port=80))
    assert (await headless.fetch("a.users.default.svc.cluster.local.", None)).endpoints == [
        Endpoint("http://10.0.0.1:80")
    ]
    assert (await headless.fetch("ghost", None)).endpoints == []


async def test_records_removed_are_held_for_the_empty_grace_then_believed(fleet: Fleet, dnsmasq: Dnsmasq) -> None:
    """The service's records vanish (NXDOMAIN): calls go on to the last set for empty_grace, then fail with
    NoHealthyEndpoints; the status is not stale (DNS answered)."""
    (replica,) = await fleet.start(1)
    await dnsmasq.start(srv_records([replica]))
    async with client_for(dnsmasq, empty_grace=0.6) as client:
        await names(client, 1)
        await dnsmasq.restart([])
        await eventually(lambda: status(client)["empty_held"] is True)
        assert await names(client, 3) == [replica.name] * 3
        assert status(client)["stale"] is False
        await eventually(lambda: urls(client) == [])
        with pytest.raises(NoHealthyEndpoints, match="'users'"):
            await client.get("users", "/api/users")


async def test_a_refused_query_is_an_error_not_an_empty_set(dnsmasq: Dnsmasq) -> None:
    """A domain dnsmasq does not serve is REFUSED: the lookup raises (the set would go stale), it is not read
    as 'no endpoints'."""
    await dnsmasq.start([])
    backend = await open_backend(config_for(dnsmasq, cluster_domain="elsewhere.test"))
    with pytest.raises(dns.resolver.NoNameservers, match="REFUSED"):
        await backend.fetch("users", None)


async def test_no_nameserver_answering_raises_a_timeout(dnsmasq: Dnsmasq) -> None:
    """Nothing listens at the nameserver's port: the lookup gives up after its lifetime and raises."""
    backend = await open_backend(config_for(dnsmasq))  # dnsmasq never started
    started = time.monotonic()
    with pytest.raises(dns.resolver.LifetimeTimeout):
        await backend.fetch("users", None)
    assert time.monotonic() - started < 2.0


async def test_first_sync_failing_lets_waiting_calls_fail_fast(dnsmasq: Dnsmasq) -> None:
    """dnsmasq is not running: the first call does not wait out initial_sync_timeout (5 s) but fails once
    the first lookup has failed."""
    async with client_for(dnsmasq) as client:
        started = time.monotonic()
        with pytest.raises(NoHealthyEndpoints, match="'users'"):
            await client.get("users", "/api/users")
        assert time.monotonic() - started < 2.0
        assert status(client)["synced"] is False
        assert status(client)["errors"] >= 1


async def test_a_malformed_record_keeps_the_last_set_and_logs_once(
    fleet: Fleet, dnsmasq: Dnsmasq, caplog: pytest.LogCaptureFixture
) -> None:
    """An SRV record with port 0 cannot be an endpoint: the whole answer is rejected as malformed, with one
    log line however many lookups see it; calls go on to the last good set."""
    (replica,) = await fleet.start(1)
    await dnsmasq.start(srv_records([replica]))
    caplog.set_level(logging.INFO, logger="fastapi_mesh.discovery")
    async with client_for(dnsmasq) as client:
        await names(client, 1)
        await dnsmasq.restart([*srv_records([replica]), Srv(SRV_NAME, f"bad.{DOMAIN}", 0)])
        await eventually(lambda: status(client).get("errors", 0) >= 3)
        assert await names(client, 5) == [replica.name] * 5
        assert urls(client) == [replica.url]
        assert status(client)["stale"] is True
        assert "MalformedAnswer" in status(client)["last_error"]
        assert "port 0" in status(client)["last_error"]
        lines = [r.getMessage() for r in caplog.records if r.name == "fastapi_mesh.discovery"]
        assert len([line for line in lines if "port 0" in line]) == 1, lines


async def test_malformed_answer_is_raised_by_fetch(dnsmasq: Dnsmasq) -> None:
    """fetch raises MalformedAnswer naming the record."""
    await dnsmasq.start([Srv(SRV_NAME, f"bad.{DOMAIN}", 0), Host(f"bad.{DOMAIN}", "10.0.0.1")])
    backend = await open_backend(config_for(dnsmasq))
    with pytest.raises(MalformedAnswer, match=rf"^SRV record {SRV_NAME} -> bad\.{DOMAIN}: port 0$"):
        await backend.fetch("users", None)
