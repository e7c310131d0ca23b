"""The ``kubernetes`` backend (EndpointSlices, list + watch) against kmock's in-memory Kubernetes API.

The API server is kmock's emulator with resourceVersions, 410 Gone, bookmarks and faults added (see
``kmock_support``); the upstreams are real uvicorn replicas on 127.0.0.1, one slice per replica (a slice's
port is shared by all its endpoints, and every replica has a port of its own).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from fastapi_mesh import MeshClient, MeshSettings
from fastapi_mesh.discovery import DiscoveryConfigError, Endpoint, build_discovery
from fastapi_mesh.discovery.kubernetes import KubernetesDiscovery
from fastapi_mesh.settings import DiscoveryConfig
from tests.discovery.kmock_support import Cluster, endpoint, endpoint_slice, running_cluster
from tests.discovery.scripted import eventually
from tests.upstreams import Fleet, Replica

pytestmark = pytest.mark.anyio

SERVICE = "svc"
WAIT = 3.0


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with running_cluster(tmp_path) as running:
        yield running


def settings(cluster: Cluster, **discovery: Any) -> MeshSettings:
    return MeshSettings(
        service_name="test",
        discovery={
            "backend": "kubernetes",
            "kubeconfig": str(cluster.kubeconfig),
            "backoff": 0.05,
            "max_backoff": 0.2,
            **discovery,
        },
        retry={"initial_delay": 0, "jitter": "none"},
    )


def replica_slice(replica: Replica, service: str = SERVICE, **conditions: Any) -> dict[str, Any]:
    return endpoint_slice(f"{service}-{replica.name}", service, replica.port, [endpoint(**conditions)])


def routed(client: MeshClient, service: str = SERVICE) -> set[str]:
    """The endpoint URLs the balancer routes ``service`` on now."""
    balancer = client.get_metrics()["load_balancer"].get(service)
    return {e["url"] for e in balancer["endpoints"]} if balancer else set()


def status(client: MeshClient, service: str = SERVICE) -> dict[str, Any]:
    services: dict[str, dict[str, Any]] = client.get_metrics()["discovery"]["services"]
    return services.get(service, {})


async def spread(client: MeshClient, calls: int) -> dict[str, int]:
    """Make ``calls`` GETs (each must answer 200) and count them per replica."""
    counts: dict[str, int] = {}
    for _ in range(calls):
        response = await client.get(SERVICE, "/work")
        assert response.status_code == 200
        name = response.json()["replica"]
        counts[name] = counts.get(name, 0) + 1
    return counts


def discovery_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "fastapi_mesh.discovery" and r.levelno >= logging.WARNING
    ]


# --------------------------------------------------------------------------------------------- routing


async def test_initial_sync_merges_every_slice_of_the_service_and_routes_to_all(cluster: Cluster, fleet: Fleet) -> None:
    """Two slices of the service are merged (zone from each); a slice of another service in the namespace is not."""
    r1, r2, other = await fleet.start(3)
    await cluster.create(replica_slice(r1, zone="zone-a"))
    await cluster.create(replica_slice(r2, zone="zone-b"))
    await cluster.create(replica_slice(other, service="billing"))
    listed_at = cluster.api.revision
    async with MeshClient(settings(cluster)) as client:
        assert await spread(client, 20) == {r1.name: 10, r2.name: 10}
        zones = {e["url"]: e["zone"] for e in client.get_metrics()["load_balancer"][SERVICE]["endpoints"]}
        assert zones == {r1.url: "zone-a", r2.url: "zone-b"}
        assert status(client) | {"last_sync": None} == {
            "synced": True,
            "stale": False,
            "errors": 0,
            "last_error": None,
            "last_sync": None,
            "endpoints": 2,
            "empty_held": False,
        }
        assert client.get_metrics()["discovery"]["backend"] == "kubernetes"
        await eventually(lambda: cluster.api.open_watches == 1, "the watch")
    assert other.total == 0
    [listed] = cluster.api.requests_of("list")
    assert listed["labelSelector"] == "kubernetes.io/service-name=svc"
    watch = cluster.api.requests_of("watch")[0]
    assert watch["labelSelector"] == "kubernetes.io/service-name=svc"
    assert watch["resourceVersion"] == str(listed_at)  # the watch starts where the list left off
    assert watch["allowWatchBookmarks"] == "True"
    assert 300 <= int(watch["timeoutSeconds"]) <= 600


async def test_slices_created_patched_and_deleted_during_the_watch_reach_routing_at_once(
    cluster: Cluster, fleet: Fleet
) -> None:
    r1, r2, r3 = await fleet.start(3)
    await cluster.create(replica_slice(r1))
    async with MeshClient(settings(cluster)) as client:
        assert await spread(client, 2) == {r1.name: 2}
        await eventually(lambda: cluster.api.open_watches == 1, "the watch")

        await cluster.create(replica_slice(r2))
        await eventually(lambda: routed(client) == {r1.url, r2.url}, "the new slice")
        assert await spread(client, 4) == {r1.name: 2, r2.name: 2}

        await cluster.patch(f"svc-{r2.name}", {"ports": [{"name": "http", "port": r3.port, "protocol": "TCP"}]})
        await eventually(lambda: routed(client) == {r1.url, r3.url}, "the patched port")

        await cluster.delete(f"svc-{r1.name}")
        await eventually(lambda: routed(client) == {r3.url}, "the deleted slice gone")
        assert await spread(client, 4) == {r3.name: 4}
    assert len(cluster.api.requests_of("list")) == 1  # every change came through the one watch
    assert r2.total == 2  # none after its slice moved to r3


async def test_terminating_and_not_ready_endpoints_take_no_new_calls(cluster: Cluster, fleet: Fleet) -> None:
    """Unset conditions count as ready; ready=false, serving=false or terminating=true keep an endpoint out."""
    ready, unset, terminating, not_ready, not_serving = await fleet.start(5)
    await cluster.create(replica_slice(ready, ready=True, serving=True, terminating=False))
    await cluster.create(replica_slice(unset, ready=None))
    await cluster.create(replica_slice(terminating, ready=False, serving=True, terminating=True))
    await cluster.create(replica_slice(not_ready, ready=False, serving=False, terminating=False))
    await cluster.create(replica_slice(not_serving, ready=None, serving=False))
    async with MeshClient(settings(cluster)) as client:
        assert await spread(client, 10) == {ready.name: 5, unset.name: 5}
    assert terminating.total == not_ready.total == not_serving.total == 0


async def test_a_call_in_flight_to_an_endpoint_that_starts_terminating_finishes(cluster: Cluster, fleet: Fleet) -> None:
    a, b = await fleet.start(2)
    await cluster.create(replica_slice(a))
    await cluster.create(replica_slice(b))
    async with MeshClient(settings(cluster)) as client:
        assert await spread(client, 2) == {a.name: 1, b.name: 1}  # the first call has the service watched
        await eventually(lambda: cluster.api.open_watches == 1, "the watch")
        a.mode = b.mode = "hang"
        call = asyncio.create_task(client.get(SERVICE, "/slow"))
        await eventually(lambda: a.total + b.total == 3, "the call to arrive")
        busy, idle = (a, b) if a.total == 2 else (b, a)
        await cluster.patch(f"svc-{busy.name}", {"endpoints": [endpoint(ready=False, serving=True, terminating=True)]})
        await eventually(lambda: routed(client) == {idle.url}, "the terminating endpoint to leave")
        busy.release.set()
        response = await asyncio.wait_for(call, WAIT)
        assert (response.status_code, response.json()["replica"]) == (200, busy.name)
        idle.mode = "ok"
        assert await spread(client, 4) == {idle.name: 4}
    assert busy.total == 2


# ------------------------------------------------------------------------------------ resuming the watch


async def test_a_410_gone_on_resume_relists_and_picks_up_what_the_watch_missed(cluster: Cluster, fleet: Fleet) -> None:
    r1, r2 = await fleet.start(2)
    await cluster.create(replica_slice(r1))
    async with MeshClient(settings(cluster)) as client:
        assert await spread(client, 2) == {r1.name: 2}
        await eventually(lambda: cluster.api.open_watches == 1, "the watch")
        # The slice moves to r2's port, and that event is compacted away before the watch resumes.
        cluster.change_quietly(f"svc-{r1.name}", {"ports": [{"name": "http", "port": r2.port, "protocol": "TCP"}]})
        cluster.api.expire()
        await cluster.api.end_watches()
        await eventually(lambda: routed(client) == {r2.url}, "the relisted set")
        assert await spread(client, 4) == {r2.name: 4}
        await eventually(lambda: cluster.api.open_watches == 1, "the new watch")
        assert status(client)["stale"] is False
        assert status(client)["errors"] == 0  # an expired resourceVersion is routine, not a failure
    watches = cluster.api.requests_of("watch")
    assert len(cluster.api.requests_of("list")) == 2
    assert int(watches[1]["resourceVersion"]) < cluster.api.expired_before  # answered 410
    assert int(watches[2]["resourceVersion"]) >= cluster.api.expired_before  # from the fresh list


async def test_a_watch_that_ends_resumes_from_the_last_bookmark_without_relisting(
    cluster: Cluster, fleet: Fleet
) -> None:
    r1, r2 = await fleet.start(2)
    await cluster.create(replica_slice(r1))
    async with MeshClient(settings(cluster)) as client:
        await spread(client, 1)
        await eventually(lambda: cluster.api.open_watches == 1, "the watch")
        bookmark = await cluster.api.bookmark()
        await cluster.api.end_watches()
        await eventually(lambda: len(cluster.api.requests_of("watch")) == 2, "the watch to resume")
        assert cluster.api.requests_of("watch")[1]["resourceVersion"] == bookmark
        assert routed(client) == {r1.url}  # a bookmark changes no endpoints
        await eventually(lambda: cluster.api.open_watches == 1, "the resumed watch")
        await cluster.create(replica_slice(r2))
        await eventually(lambda: routed(client) == {r1.url, r2.url}, "a change on the resumed watch")
    assert len(cluster.api.requests_of("list")) == 1


# --------------------------------------------------------------------------------------------- failures


async def test_an_erroring_api_keeps_the_last_good_set_and_loses_no_call(
    cluster: Cluster, fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    r1, r2, r3 = await fleet.start(3)
    await cluster.create(replica_slice(r1))
    await cluster.create(replica_slice(r2))
    async with MeshClient(settings(cluster)) as client:
        await spread(client, 2)
        await eventually(lambda: cluster.api.open_watches == 1, "the watch")
        caplog.set_level(logging.INFO, logger="fastapi_mesh.discovery")
        cluster.api.failing = 500
        await cluster.api.end_watches()
        await eventually(lambda: status(client).get("errors", 0) >= 3, "three failed attempts")
        assert status(client)["stale"] is True
        assert "500" in status(client)["last_error"]
        assert await spread(client, 20) == {r1.name: 10, r2.name: 10}
        assert len(discovery_warnings(caplog)) == 1  # one line for the change of state, none per retry

        await cluster.create(replica_slice(r3))  # made while the API fails its reads
        cluster.api.failing = None
        await eventually(lambda: routed(client) == {r1.url, r2.url, r3.url}, "the set after recovery")
        assert status(client)["stale"] is False
    assert any("answers again" in r.getMessage() for r in caplog.records)


async def test_an_unreachable_api_keeps_the_last_good_set_until_it_is_back(cluster: Cluster, fleet: Fleet) -> None:
    r1, r2 = await fleet.start(2)
    await cluster.create(replica_slice(r1))
    async with MeshClient(settings(cluster)) as client:
        await spread(client, 1)
        await eventually(lambda: cluster.api.open_watches == 1, "the watch")
        await cluster.stop()
        await eventually(lambda: status(client).get("stale", False), "the set to turn stale")
        assert await spread(client, 5) == {r1.name: 5}
        cluster.change_quietly(f"svc-{r1.name}", {"ports": [{"name": "http", "port": r2.port, "protocol": "TCP"}]})
        await cluster.start()
        await eventually(lambda: routed(client) == {r2.url}, "the set after the API is back")
        assert status(client)["stale"] is False
        assert await spread(client, 3) == {r2.name: 3}


async def test_a_malformed_slice_is_logged_once_and_its_last_good_endpoints_are_kept(
    cluster: Cluster, fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    r1, r2 = await fleet.start(2)
    await cluster.create(replica_slice(r1))
    await cluster.create(replica_slice(r2))
    async with MeshClient(settings(cluster)) as client:
        await spread(client, 2)
        await eventually(lambda: cluster.api.open_watches == 1, "the watch")
        caplog.set_level(logging.INFO, logger="fastapi_mesh.discovery")
        await cluster.patch(f"svc-{r2.name}", {"endpoints": [{"addresses": "10.0.0.9"}]})
        await eventually(lambda: status(client).get("errors") == 1, "the malformed slice")
        await cluster.patch(f"svc-{r2.name}", {"endpoints": [{"addresses": ["not an address"]}]})
        await eventually(lambda: status(client).get("errors") == 2, "the second malformed version")
        assert status(client)["stale"] is True
        assert await spread(client, 10) == {r1.name: 5, r2.name: 5}
        [line] = discovery_warnings(caplog)
        assert "MalformedAnswer" in line and f"svc-{r2.name}" in line

        await cluster.patch(f"svc-{r2.name}", {"endpoints": [endpoint(ready=False)]})
        await eventually(lambda: routed(client) == {r1.url}, "the repaired slice")
        assert status(client)["stale"] is False
    assert len(cluster.api.requests_of("list")) == 1  # a bad slice does not cost a relist


# ----------------------------------------------------------------------------------- what a slice says


class Recorder:
    """A ``publish`` that keeps each service's latest set."""

    def __init__(self) -> None:
        self.sets: dict[str, list[dict[str, Any]]] = {}

    def __call__(self, service: str, endpoints: Sequence[Endpoint]) -> None:
        self.sets[service] = [e.as_dict() for e in endpoints]


async def _discover(cluster: Cluster, recorder: Recorder, service: str = SERVICE, **config: Any) -> KubernetesDiscovery:
    discovery = KubernetesDiscovery(
        DiscoveryConfig(
            backend="kubernetes", kubeconfig=str(cluster.kubeconfig), backoff=0.05, max_backoff=0.2, **config
        )
    )
    await discovery.start(recorder)
    discovery.watch(service)
    await eventually(lambda: service in recorder.sets, "the first sync")
    return discovery


async def test_endpoints_take_address_port_scheme_zone_and_pod_from_the_slice(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fastapi_mesh.discovery")
    https = endpoint_slice(
        "svc-a", SERVICE, 8443, [endpoint(zone="eu-1a", pod="svc-0", node="node-1")], app_protocol="https"
    )
    https["ports"].insert(0, {"name": "metrics", "port": 9090, "protocol": "TCP"})  # picked by name, not position
    https["endpoints"].append({"addresses": ["10.0.0.2", "10.0.0.3"], "conditions": {"ready": True}})
    https["endpoints"][0]["addresses"] = ["10.0.0.1"]
    await cluster.create(https)
    await cluster.create(
        endpoint_slice("svc-b", SERVICE, 8080, [endpoint("fd00::1", zone="eu-1b")], address_type="IPv6")
    )
    await cluster.create(
        endpoint_slice("svc-c", SERVICE, 8080, [endpoint("web-0.web.default.svc.cluster.local")], address_type="FQDN")
    )
    await cluster.create(endpoint_slice("svc-d", SERVICE, 8443, [endpoint("10.0.0.1")], app_protocol="https"))
    await cluster.create(endpoint_slice("svc-e", SERVICE, 9000, [endpoint("10.0.0.7")], port_name="grpc"))
    recorder = Recorder()
    discovery = await _discover(cluster, recorder)
    try:
        assert recorder.sets[SERVICE] == [
            {
                "url": "https://10.0.0.1:8443",
                "weight": 1,
                "zone": "eu-1a",
                "metadata": {"pod": "svc-0", "node": "node-1"},
            },
            {"url": "https://10.0.0.2:8443", "weight": 1, "zone": None, "metadata": {}},  # the first address only
            {"url": "http://[fd00::1]:8080", "weight": 1, "zone": "eu-1b", "metadata": {}},
            {"url": "http://web-0.web.default.svc.cluster.local:8080", "weight": 1, "zone": None, "metadata": {}},
        ]  # svc-d repeats 10.0.0.1:8443 (counted once); svc-e has no port named http
        await eventually(lambda: cluster.api.open_watches == 1, "the watch")
        await cluster.patch("svc-e", {"endpoints": [endpoint("10.0.0.8")]})  # still no http port
        await cluster.patch("svc-a", {"endpoints": [endpoint("10.0.0.1")]})
        await eventually(lambda: len(recorder.sets[SERVICE]) == 3, "the patch")
        await cluster.patch("svc-b", {"metadata": {"labels": {"kubernetes.io/service-name": "billing"}}})
        await eventually(lambda: len(recorder.sets[SERVICE]) == 2, "the relabelled slice to leave")
        assert "http://[fd00::1]:8080" not in {e["url"] for e in recorder.sets[SERVICE]}
    finally:
        await discovery.stop()
    assert discovery_warnings(caplog) == [
        "discovery (kubernetes): EndpointSlice 'svc-e' of 'svc' gives no endpoints: no port named 'http' "
        "(its ports: 'grpc')"
    ]  # once, though the slice changed again


@pytest.mark.parametrize("port_name", [None, ""])
async def test_without_a_port_name_the_slices_only_or_unnamed_port_is_used(
    cluster: Cluster, port_name: str | None
) -> None:
    """``null``: a slice's only port; ``""``: the unnamed port (how a Service's single port is often left)."""
    await cluster.create(endpoint_slice("svc-a", SERVICE, 8080, [endpoint("10.0.0.1")], port_name=""))
    two_ports = endpoint_slice("svc-b", SERVICE, 8080, [endpoint("10.0.0.2")], port_name="a")
    two_ports["ports"].append({"name": "b", "port": 8081})
    await cluster.create(two_ports)
    recorder = Recorder()
    discovery = await _discover(cluster, recorder, port_name=port_name)
    try:
        assert [e["url"] for e in recorder.sets[SERVICE]] == ["http://10.0.0.1:8080"]
    finally:
        await discovery.stop()


async def test_a_malformed_slice_in_the_list_marks_the_set_stale_and_the_good_slices_still_route(
    cluster: Cluster,
) -> None:
    await cluster.create(endpoint_slice("svc-a", SERVICE, 8080, [endpoint("10.0.0.1")]))
    await cluster.create(endpoint_slice("svc-b", SERVICE, 8080, [endpoint("10.0.0.2")], address_type=None))
    recorder = Recorder()
    discovery = await _discover(cluster, recorder)
    try:
        assert [e["url"] for e in recorder.sets[SERVICE]] == ["http://10.0.0.1:8080"]
        state = discovery.sync_status()[SERVICE]
        assert state["stale"] is True and "svc-b" in state["last_error"]
    finally:
        await discovery.stop()


async def test_a_name_that_is_no_kubernetes_service_name_is_not_asked_for(cluster: Cluster) -> None:
    recorder = Recorder()
    discovery = KubernetesDiscovery(DiscoveryConfig(backend="kubernetes", kubeconfig=str(cluster.kubeconfig)))
    await discovery.start(recorder)
    try:
        discovery.watch("a,b=c")
        await eventually(lambda: discovery.sync_status()["a,b=c"]["errors"] == 1, "the refusal")
        assert "not a Kubernetes service name" in discovery.sync_status()["a,b=c"]["last_error"]
    finally:
        await discovery.stop()
    assert cluster.api.requests_of("list") == []


# ------------------------------------------------------------------------------------------ configuration


async def test_build_discovery_builds_the_backend_from_the_settings(cluster: Cluster) -> None:
    discovery = build_discovery(settings(cluster, namespace="shop", port_name="web"))
    assert isinstance(discovery, KubernetesDiscovery)
    assert (discovery.config.namespace, discovery.config.port_name) == ("shop", "web")


async def test_an_unreadable_kubeconfig_fails_at_start_naming_the_setting(tmp_path: Path) -> None:
    discovery = KubernetesDiscovery(DiscoveryConfig(backend="kubernetes", kubeconfig=str(tmp_path / "missing")))
    with pytest.raises(DiscoveryConfigError, match=r"discovery\.kubeconfig \(MESH_DISCOVERY__KUBECONFIG\)"):
        await discovery.start(Recorder())
    await discovery.stop()


async def test_in_a_pod_the_service_account_is_used_unless_a_kubeconfig_is_given(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setattr("kubernetes_asyncio.config.incluster_config.SERVICE_TOKEN_FILENAME", str(tmp_path / "token"))
    in_cluster = KubernetesDiscovery(DiscoveryConfig(backend="kubernetes"))
    with pytest.raises(DiscoveryConfigError, match="in-cluster service account: Service token file does not exist"):
        await in_cluster.start(Recorder())
    await in_cluster.stop()

    await cluster.create(endpoint_slice("svc-a", SERVICE, 8080, [endpoint("10.0.0.1")]))
    recorder = Recorder()
    discovery = await _discover(cluster, recorder)  # kubeconfig given: the service account is not looked at
    await discovery.stop()
    assert [e["url"] for e in recorder.sets[SERVICE]] == ["http://10.0.0.1:8080"]


async def test_a_given_api_client_is_used_and_left_open(cluster: Cluster) -> None:
    from kubernetes_asyncio import client as k8s_client

    configuration = k8s_client.Configuration(host=cluster.url)
    await cluster.create(endpoint_slice("svc-a", SERVICE, 8080, [endpoint("10.0.0.1")]))
    async with k8s_client.ApiClient(configuration) as api_client:
        recorder = Recorder()
        discovery = KubernetesDiscovery(DiscoveryConfig(backend="kubernetes"), api_client=api_client)
        await discovery.start(recorder)
        discovery.watch(SERVICE)
        await eventually(lambda: SERVICE in recorder.sets, "the first sync")
        await discovery.stop()
        assert not api_client.rest_client.pool_manager.closed
    assert [e["url"] for e in recorder.sets[SERVICE]] == ["http://10.0.0.1:8080"]
