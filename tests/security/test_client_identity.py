"""Outbound mTLS against real servers: the client presents its certificate, verifies the server's chain and
identity in the handshake, and refuses the wrong server before any byte of the request leaves.

Servers: ``fastapi-mesh serve`` processes (client certificates required) for the service ``orders`` and an
intruder of the same CA; plain uvicorn processes for a certificate without a SPIFFE ID, one from another
CA, an expired one, and servers speaking only TLS 1.0, 1.1 or 1.2.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from fastapi_mesh import MeshClient, ServerIdentityMismatch, UpstreamUnavailable
from fastapi_mesh.stack import build_ssl_context
from tests.security.tls_support import (
    ClientPki,
    ConnectionCounter,
    Files,
    TlsServer,
    handshake,
    mesh_settings,
    permissive_context,
    start_all,
)

pytestmark = pytest.mark.anyio

BACKENDS = ["aiohttp", "httpcore"]
ORDERS = "spiffe://cluster.local/ns/default/sa/orders"
INTRUDER = "spiffe://cluster.local/ns/default/sa/intruder"
GATEWAY = "spiffe://cluster.local/ns/default/sa/api-gateway"


@dataclass
class World:
    pki: ClientPki
    gateway: Files
    orders: TlsServer
    intruder: TlsServer
    dns_only: TlsServer
    other_ca: TlsServer
    expired: TlsServer
    tls10: TlsServer
    tls11: TlsServer
    tls12: TlsServer


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("client-pki")
    pki = ClientPki(root)
    gateway = pki.issue("gateway", "api-gateway")
    old_tls = ["--ssl-ciphers", "DEFAULT:@SECLEVEL=0"]
    servers = dict(
        orders=TlsServer("orders", pki.issue("orders", "orders"), ca_path=pki.ca_path, caller=gateway, log_dir=root),
        intruder=TlsServer(
            "intruder", pki.issue("intruder", "intruder"), ca_path=pki.ca_path, caller=gateway, log_dir=root
        ),
        dns_only=TlsServer(
            "dns-only",
            pki.issue("dns-only", "payments", identity=None, dns_names=["payments.example.com", "127.0.0.1"]),
            serve=False,
            log_dir=root,
        ),
        other_ca=TlsServer("other-ca", pki.issue("other-ca", "orders", ca=pki.other_ca), serve=False, log_dir=root),
        expired=TlsServer("expired", pki.issue_expired("expired", "orders"), serve=False, log_dir=root),
        tls10=TlsServer(
            "tls10", pki.issue("tls10", "orders"), serve=False, uvicorn_options=["--ssl-version", "3", *old_tls]
        ),
        tls11=TlsServer(
            "tls11", pki.issue("tls11", "orders"), serve=False, uvicorn_options=["--ssl-version", "4", *old_tls]
        ),
        tls12=TlsServer("tls12", pki.issue("tls12", "orders"), serve=False, uvicorn_options=["--ssl-version", "5"]),
    )
    with start_all(servers.values()):
        yield World(pki, gateway, **servers)


def _client(world: World, urls: list[str], backend: str, **options: object) -> MeshClient:
    return MeshClient(mesh_settings(world.pki, world.gateway, {"orders": urls}, backend=backend, **options))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ accepted


@pytest.mark.parametrize("backend", BACKENDS)
async def test_the_caller_presents_its_certificate_and_reaches_a_server_of_the_trust_domain(
    world: World, backend: str
) -> None:
    """By default any identity the CA signed in the trust domain is accepted; the server, which requires a
    client certificate, sees the caller's SPIFFE ID."""
    async with _client(world, [world.orders.url], backend) as client:
        answers = [(await client.get("orders", "/whoami")).json() for _ in range(3)]
    assert [a["identity"] for a in answers] == [GATEWAY] * 3


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "expected", [[ORDERS], ["spiffe://cluster.local/ns/default/*"], ["*/sa/orders"], ["*"]], ids=str
)
async def test_a_server_presenting_an_expected_identity_answers(
    world: World, backend: str, expected: list[str]
) -> None:
    """``services.<name>.mtls.expected_identities``: an exact SPIFFE ID, a prefix, a suffix, or any."""
    async with _client(world, [world.orders.url], backend, expected={"orders": expected}) as client:
        response = await client.get("orders", "/whoami")
    assert response.status_code == 200


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("options", "accepted"),
    [
        ({}, False),  # no SPIFFE ID, and its DNS name is outside the trust domain cluster.local
        ({"expected": {"orders": ["payments.example.com"]}}, True),
        ({"expected": {"orders": ["*.example.com"]}}, True),
        ({"expected": {"orders": ["*.example.org"]}}, False),
        ({"trust_domain": "example.com"}, True),  # a DNS name under the trust domain
        ({"expected_identities": ["payments.example.com"]}, True),  # the global list, for every service
    ],
    ids=["default", "exact-dns", "dns-suffix", "other-dns", "trust-domain", "global-list"],
)
async def test_a_dns_san_is_an_identity(world: World, backend: str, options: dict[str, object], accepted: bool) -> None:
    """A server whose certificate has only DNS SANs is accepted where a DNS name is expected."""
    async with _client(world, [world.dns_only.url], backend, retries=0, **options) as client:
        if accepted:
            assert (await client.get("orders", "/whoami")).status_code == 200
            return
        with pytest.raises(UpstreamUnavailable) as info:
            await client.get("orders", "/whoami")
    assert isinstance(info.value.__cause__, ServerIdentityMismatch)
    assert info.value.__cause__.presented == ("payments.example.com",)


# ------------------------------------------------------------------------------------------------- refused


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_server_with_an_unexpected_identity_is_refused_before_the_request_is_sent(
    world: World, backend: str
) -> None:
    """The intruder's certificate is valid (same CA) but names another service account: the call fails with
    an error naming the service and both identities, and the intruder's app never saw a request."""
    before = world.intruder.received()
    async with _client(world, [world.intruder.url], backend, expected={"orders": [ORDERS]}, retries=0) as client:
        with pytest.raises(UpstreamUnavailable) as info:
            await client.post("orders", "/orders", json={"item": 1})
    mismatch = info.value.__cause__
    assert isinstance(mismatch, ServerIdentityMismatch) and isinstance(mismatch, httpx.ConnectError)
    assert (mismatch.service, mismatch.spiffe_ids, mismatch.expected) == ("orders", (INTRUDER,), ORDERS)
    assert "intruder.default.svc.cluster.local" in mismatch.dns_names
    message = str(info.value)
    assert "'orders'" in message and INTRUDER in message and ORDERS in message
    assert world.intruder.received() == before


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_post_refused_by_the_identity_check_goes_to_another_endpoint_once(world: World, backend: str) -> None:
    """An identity mismatch is "not sent": a POST moves on to the next endpoint, which gets it exactly once
    per call; the intruder gets nothing."""
    intruder_before, orders_before = world.intruder.received(), world.orders.received()
    urls = [world.intruder.url, world.orders.url]
    async with _client(world, urls, backend, expected={"orders": [ORDERS]}, retries=1) as client:
        answers = [await client.post("orders", "/orders", json={"n": i}) for i in range(4)]
        retries = client.get_metrics()["retry"]["orders"]["retries"]
    assert [a.status_code for a in answers] == [200] * 4
    assert retries >= 1  # some calls did go to the intruder first
    assert world.orders.received() - orders_before == 4
    assert world.intruder.received() == intruder_before


@pytest.mark.parametrize("backend", BACKENDS)
async def test_an_identity_mismatch_is_never_retried_on_the_same_endpoint(world: World, backend: str) -> None:
    """With the intruder as the only endpoint and retries left, the call ends after one handshake: no second
    connection to the endpoint that was refused (the balancer would otherwise pick it again)."""
    async with ConnectionCounter(world.intruder.port).running() as counter:
        async with _client(world, [counter.url], backend, expected={"orders": [ORDERS]}, retries=3) as client:
            with pytest.raises(UpstreamUnavailable) as info:
                await client.get("orders", "/whoami")
            assert counter.connections == 1
            with pytest.raises(UpstreamUnavailable):  # a new call checks again: the server may have been fixed
                await client.get("orders", "/whoami")
        assert counter.connections == 2
    assert isinstance(info.value.__cause__, ServerIdentityMismatch)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_services_expecting_different_identities_never_share_a_connection(world: World, backend: str) -> None:
    """Service ``any`` accepts the intruder (trust domain); service ``orders``, at the same address, expects
    another identity: its call opens its own connection and is refused, instead of reusing the first one."""
    settings = mesh_settings(
        world.pki,
        world.gateway,
        {"any": [world.intruder.url], "orders": [world.intruder.url]},
        backend=backend,
        expected={"orders": [ORDERS]},
        retries=0,
    )
    async with MeshClient(settings) as client:
        assert (await client.get("any", "/whoami")).status_code == 200
        with pytest.raises(UpstreamUnavailable) as info:
            await client.get("orders", "/whoami")
        assert (await client.get("any", "/whoami")).status_code == 200
    assert isinstance(info.value.__cause__, ServerIdentityMismatch)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("server", "reason"),
    [("other_ca", r"(?i)certificate verify failed"), ("expired", r"(?i)expired")],
    ids=["another-ca", "expired"],
)
async def test_a_server_certificate_the_ca_does_not_vouch_for_is_refused(
    world: World, backend: str, server: str, reason: str
) -> None:
    """A server certificate from another CA, or an expired one, fails the handshake: ConnectError (not an
    identity mismatch: the chain is checked first), nothing sent."""
    target: TlsServer = getattr(world, server)
    before = target.received()
    async with _client(world, [target.url], backend, retries=0) as client:
        with pytest.raises(UpstreamUnavailable) as info:
            await client.post("orders", "/orders", json={})
    cause = info.value.__cause__
    assert isinstance(cause, httpx.ConnectError) and not isinstance(cause, ServerIdentityMismatch)
    assert re.search(reason, str(cause)), str(cause)
    assert target.received() == before


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("server", "version"), [("tls10", "TLSv1"), ("tls11", "TLSv1.1")])
async def test_servers_offering_only_tls_1_0_or_1_1_are_refused(
    world: World, backend: str, server: str, version: str
) -> None:
    """The server does speak the old version (a permissive client settles on it); the mesh refuses it."""
    target: TlsServer = getattr(world, server)
    assert await asyncio.to_thread(handshake, target.port, permissive_context()) == version
    before = target.received()
    async with _client(world, [target.url], backend, retries=0) as client:
        with pytest.raises(UpstreamUnavailable) as info:
            await client.get("orders", "/whoami")
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert target.received() == before


async def test_tls_1_3_is_chosen_when_offered_and_tls_1_2_is_still_accepted(world: World) -> None:
    """The mesh's context prefers TLS 1.3 and accepts a server that stops at TLS 1.2."""
    settings = mesh_settings(world.pki, world.gateway, {"orders": [world.tls12.url]})
    context = build_ssl_context(settings)
    assert isinstance(context, ssl.SSLContext)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert await asyncio.to_thread(handshake, world.orders.port, context) == "TLSv1.3"
    assert await asyncio.to_thread(handshake, world.tls12.port, context) == "TLSv1.2"
    async with MeshClient(settings) as client:
        assert (await client.get("orders", "/whoami")).status_code == 200


async def test_the_context_checks_identities_outside_the_connection_layer_too(world: World, tmp_path: Path) -> None:
    """``build_ssl_context`` (what active health checks get) refuses a server outside ``mtls.expected_identities``
    in any client's handshake, and accepts the expected one."""
    settings = mesh_settings(world.pki, world.gateway, {"orders": []}, expected_identities=[ORDERS])
    context = build_ssl_context(settings)
    assert isinstance(context, ssl.SSLContext)
    async with httpx.AsyncClient(verify=context, trust_env=False) as plain:
        assert (await plain.get(world.orders.url + "/whoami")).json()["identity"] == GATEWAY
        with pytest.raises(httpx.ConnectError, match=f"is not {re.escape(ORDERS)}"):
            await plain.get(world.intruder.url + "/whoami")
