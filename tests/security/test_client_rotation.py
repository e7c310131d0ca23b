"""Client-side rotation: the certificate, key and CA files are re-read when they change, new connections use
them while open ones finish, and a set that does not load keeps the last good one with one error logged.

Against real servers (``fastapi-mesh serve`` for ``orders``, which names the caller it sees; plain uvicorn
for ``other``, whose certificate another CA signed), and, for the file handling alone, ``ClientTLS`` with a
clock of the test's.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fastapi_mesh import MeshClient, UpstreamUnavailable
from fastapi_mesh.connection import ClientTLS
from fastapi_mesh.settings import MtlsConfig
from tests.security.tls_support import (
    ClientPki,
    ConnectionCounter,
    Files,
    TlsServer,
    eventually,
    mesh_settings,
    start_all,
)

pytestmark = pytest.mark.anyio

BACKENDS = ["aiohttp", "httpcore"]
GATEWAY = "spiffe://cluster.local/ns/default/sa/api-gateway"
USERS = "spiffe://cluster.local/ns/default/sa/user-service"
#: Seconds between two looks at the files in these tests.
INTERVAL = 0.05


@dataclass
class World:
    pki: ClientPki
    root: Path
    orders: TlsServer
    other: TlsServer


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("rotation-pki")
    pki = ClientPki(root)
    caller = pki.issue("probe", "api-gateway")
    orders = TlsServer("orders", pki.issue("orders", "orders"), ca_path=pki.ca_path, caller=caller, log_dir=root)
    other = TlsServer(
        "other", pki.issue("other", "orders", ca=pki.other_ca), serve=False, ca_path=pki.ca_path, caller=caller
    )
    with start_all([orders, other]):
        yield World(pki, root, orders, other)


def _replace(path: Path, data: bytes) -> None:
    """Write ``path`` whole, as cert-manager and the kubelet do (a reader never sees half of it)."""
    temporary = path.with_name(f".{path.name}.new")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _whoami(client: MeshClient, **options: object) -> str | None:
    identity: str | None = (await client.get("orders", "/whoami", **options)).json()["identity"]  # type: ignore[arg-type]
    return identity


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_rotated_client_certificate_is_used_by_new_connections_while_open_ones_finish(
    world: World, backend: str
) -> None:
    """The server sees the new identity on new connections without a restart; a call in flight on the old
    connection completes; nothing stays open once the client is closed."""
    files = world.pki.issue(f"rotating-{backend}", "api-gateway")
    descriptors = _open_descriptors()
    endpoints = {"orders": [world.orders.url]}
    settings = mesh_settings(world.pki, files, endpoints, backend=backend, reload_interval=INTERVAL)
    async with MeshClient(settings) as client:
        assert await _whoami(client) == GATEWAY
        before = await asyncio.to_thread(world.orders.received)
        slow = asyncio.create_task(client.get("orders", "/slow", params={"seconds": "1.0"}))

        async def slow_arrived() -> bool:
            return await asyncio.to_thread(world.orders.received) > before

        await eventually(slow_arrived)
        world.pki.write(f"rotating-{backend}", world.pki.ca.issue("user-service"))

        async def rotated() -> bool:
            return await _whoami(client) == USERS

        await eventually(rotated)
        assert not slow.done()  # still running on the connection made with the old certificate
        answer = (await slow).json()
    assert (answer["path"], answer["identity"]) == ("/slow", GATEWAY)

    async def all_closed() -> bool:
        return _open_descriptors() <= descriptors

    await eventually(all_closed)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_rotated_ca_bundle_is_trusted_for_new_connections_and_a_removed_ca_no_longer(
    world: World, backend: str, tmp_path: Path
) -> None:
    """Adding the other CA to the bundle lets ``other`` in; taking the mesh CA out refuses ``orders`` on the
    next connection, though a connection to it was open and idle."""
    bundle = tmp_path / "ca.crt"
    bundle.write_bytes(world.pki.ca.cert_pem)
    caller = world.pki.issue(f"ca-rotation-{backend}", "api-gateway")
    settings = mesh_settings(
        world.pki,
        caller,
        {"orders": [world.orders.url], "other": [world.other.url]},
        backend=backend,
        ca_path=bundle,
        retries=0,
        reload_interval=INTERVAL,
    )
    async with MeshClient(settings) as client:
        assert (await client.get("orders", "/whoami")).status_code == 200
        with pytest.raises(UpstreamUnavailable, match=r"(?i)certificate verify failed"):
            await client.get("other", "/whoami")
        _replace(bundle, world.pki.ca.cert_pem + world.pki.other_ca.cert_pem)

        async def other_trusted() -> bool:
            try:
                return (await client.get("other", "/whoami")).status_code == 200
            except UpstreamUnavailable:
                return False

        await eventually(other_trusted)
        _replace(bundle, world.pki.other_ca.cert_pem)

        async def orders_refused() -> bool:
            try:
                await client.get("orders", "/whoami")
            except UpstreamUnavailable as exc:
                return "certificate verify failed" in str(exc).lower()
            return False

        await eventually(orders_refused)
        assert (await client.get("other", "/whoami")).status_code == 200


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_half_written_certificate_keeps_the_previous_one_and_logs_one_error(
    world: World, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """While the certificate file holds half a certificate, every new connection presents the previous one
    and one error is logged; once the writer has finished, new connections present the new one."""
    name = f"half-{backend}"
    files = world.pki.issue(name, "api-gateway")
    new = world.pki.ca.issue("user-service")
    caplog.set_level(logging.INFO, logger="fastapi_mesh.security")
    async with ConnectionCounter(world.orders.port).running() as counter:
        settings = mesh_settings(world.pki, files, {"orders": [counter.url]}, backend=backend, reload_interval=INTERVAL)
        async with MeshClient(settings) as client:
            assert await _whoami(client) == GATEWAY
            files.cert.write_bytes(new.cert_pem[: len(new.cert_pem) // 2])  # a writer caught half way
            connections = counter.connections
            for _ in range(8):  # several looks at the files, each call after the first on a new connection
                assert await _whoami(client, headers={"connection": "close"}) == GATEWAY
                await asyncio.sleep(INTERVAL / 2)
            assert counter.connections >= connections + 7
            errors = [r for r in caplog.records if r.name == "fastapi_mesh.security" and r.levelno == logging.ERROR]
            assert len(errors) == 1, [r.getMessage() for r in errors]
            assert str(files.cert) in errors[0].getMessage()
            world.pki.write(name, new)  # the writer finishes: certificate and key

            async def rotated() -> bool:
                return await _whoami(client, headers={"connection": "close"}) == USERS

            await eventually(rotated)
    loaded = [r for r in caplog.records if r.levelno == logging.INFO and "loaded" in r.getMessage()]
    assert len(loaded) == 1 and USERS in loaded[0].getMessage()
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1


@pytest.mark.parametrize("backend", BACKENDS)
async def test_active_health_checks_present_the_rotated_client_certificate(world: World, backend: str) -> None:
    """Probes go over the mesh's pool: while the client certificate is one the server refuses (another CA
    signed it), every probe fails and the endpoint is marked down; once the files hold a certificate the
    mesh CA signed, new probe connections present it and the endpoint comes back, without a restart."""
    name = f"probing-{backend}"
    files = world.pki.issue(name, "api-gateway", ca=world.pki.other_ca)
    checks = {"enabled": True, "path": "/whoami", "interval": 0.05, "jitter": 0, "timeout": 2.0}
    checks |= {"unhealthy_threshold": 1, "healthy_threshold": 1}
    endpoints = {"orders": [world.orders.url]}
    settings = mesh_settings(
        world.pki, files, endpoints, backend=backend, reload_interval=INTERVAL, active_health_check=checks
    )

    def probed() -> dict[str, Any]:
        (endpoint,) = client.status()["active_health_checks"]["orders"]["endpoints"]
        result: dict[str, Any] = endpoint
        return result

    async with MeshClient(settings) as client:
        with pytest.raises(UpstreamUnavailable):
            await client.get("orders", "/whoami")  # the service is known from here on: its checks run

        async def refused() -> bool:
            return probed()["last_result"] == "fail" and not probed()["healthy"]

        await eventually(refused)
        assert probed()["last_status"] is None  # refused in the handshake, no answer
        world.pki.write(name, world.pki.ca.issue("api-gateway"))

        async def accepted() -> bool:
            return probed()["last_result"] == "pass" and probed()["healthy"]

        await eventually(accepted)
        assert probed()["last_status"] == 200
        assert await _whoami(client) == GATEWAY


# ---------------------------------------------------------------------------------------- the files alone


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _tls(files: Files, ca_path: Path, clock: _Clock) -> ClientTLS:
    config = MtlsConfig(
        enabled=True, cert_path=str(files.cert), key_path=str(files.key), ca_path=str(ca_path), reload_interval=1.0
    )
    return ClientTLS(config, clock=clock)


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "fastapi_mesh.security" and r.levelno >= logging.ERROR]


def test_files_are_loaded_once_they_have_settled_and_only_when_due(tmp_path: Path) -> None:
    """A change is loaded at the second look after it (a writer may be half way at the first), and the files
    are looked at no more often than ``reload_interval``."""
    pki = ClientPki(tmp_path)
    files = pki.issue("me", "api-gateway")
    clock = _Clock()
    tls = _tls(files, pki.ca_path, clock)
    first = tls.current()
    pki.write("me", pki.ca.issue("user-service"))
    clock.now = 0.5
    assert tls.current() is first  # not due yet
    clock.now = 1.0
    assert tls.current() is first  # changed: looked at again next time
    clock.now = 1.5
    assert tls.current() is first
    clock.now = 2.0
    second = tls.current()
    assert second is not first and tls.reloads == 1
    clock.now = 10.0
    assert tls.current() is second  # nothing changed since


@pytest.mark.parametrize("broken", ["mismatched-key", "half-written", "missing-key", "empty-ca"])
def test_a_set_of_files_that_does_not_load_keeps_the_last_good_context_and_logs_once(
    tmp_path: Path, broken: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A key that does not match the new certificate, half a certificate, a missing key or an emptied CA
    bundle: the last good context stays, one error names the problem, and a good set is loaded later."""
    pki = ClientPki(tmp_path)
    files = pki.issue("me", "api-gateway")
    ca_path = tmp_path / "bundle.crt"
    ca_path.write_bytes(pki.ca.cert_pem)
    clock = _Clock()
    tls = _tls(files, ca_path, clock)
    first = tls.context
    new = pki.ca.issue("user-service")
    if broken == "mismatched-key":
        files.cert.write_bytes(new.cert_pem)
    elif broken == "half-written":
        files.cert.write_bytes(new.cert_pem[:200])
    elif broken == "missing-key":
        files.key.unlink()
    else:
        ca_path.write_bytes(b"")
    caplog.set_level(logging.INFO, logger="fastapi_mesh.security")
    for step in range(1, 6):
        clock.now = float(step)
        assert tls.current() is first
    assert len(_errors(caplog)) == 1
    assert "keep the certificate and CA loaded before" in _errors(caplog)[0]
    ca_path.write_bytes(pki.ca.cert_pem)
    pki.write("me", new)
    clock.now = 10.0
    tls.current()
    clock.now = 11.0
    assert tls.current() is not first
    assert len(_errors(caplog)) == 1 and tls.reloads == 1


def test_a_certificate_and_key_that_do_not_match_fail_at_start_naming_the_settings(tmp_path: Path) -> None:
    pki = ClientPki(tmp_path)
    files = pki.issue("me", "api-gateway")
    files.key.write_bytes(pki.ca.issue("user-service").key_pem)
    with pytest.raises(ValueError, match=r"mtls\.cert_path/key_path: cannot load .*tls\.crt"):
        _tls(files, pki.ca_path, _Clock())
