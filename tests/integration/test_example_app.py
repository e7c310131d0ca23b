"""The demo gateway in front of real upstream replicas served by uvicorn on loopback."""

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import uvicorn
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from example_app.gateway import create_gateway
from example_app.upstream import create_upstream_app

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

HOST = "127.0.0.1"
START_TIMEOUT = 5.0
FAST_RETRY = {"max_retries": 2, "initial_delay": 0.01, "max_delay": 0.05}


class _Server(uvicorn.Server):
    """A uvicorn server that leaves the test process's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def _serve(*apps: FastAPI) -> AsyncIterator[list[str]]:
    """Serve each app on its own free loopback port for the duration of the block; yield their base URLs."""
    servers = [
        _Server(
            uvicorn.Config(
                app,
                host=HOST,
                port=0,
                lifespan="off",
                ws="none",
                http="h11",
                log_config=None,
                log_level="warning",
            )
        )
        for app in apps
    ]
    tasks = [asyncio.create_task(server.serve()) for server in servers]
    try:
        async with asyncio.timeout(START_TIMEOUT):
            while not all(server.started for server in servers):
                if any(task.done() for task in tasks):
                    raise RuntimeError("uvicorn stopped before it started")
                await asyncio.sleep(0.01)
        yield [f"http://{HOST}:{server.servers[0].sockets[0].getsockname()[1]}" for server in servers]
    finally:
        for server in servers:
            server.should_exit = True
        await asyncio.gather(*tasks)


@contextlib.asynccontextmanager
async def _gateway(endpoints: dict[str, list[str]]) -> AsyncIterator[httpx.AsyncClient]:
    """The demo gateway, started with its lifespan, behind an in-process ASGI client."""
    app = create_gateway(endpoints, retry=FAST_RETRY)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://gateway"
        ) as client,
    ):
        yield client


def _closed_port_url() -> str:
    """A loopback URL nothing listens on (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return f"http://{HOST}:{sock.getsockname()[1]}"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """uvicorn runs on asyncio only; module scope lets the upstreams outlive one test."""
    return "asyncio"


@pytest.fixture(scope="module")
async def upstreams() -> AsyncIterator[dict[str, list[str]]]:
    """Two user-service replicas and one order-service replica on loopback, shared by the module."""
    apps = [
        create_upstream_app("user-service", "user-service-1"),
        create_upstream_app("user-service", "user-service-2"),
        create_upstream_app("order-service", "order-service-1"),
    ]
    async with _serve(*apps) as (user_1, user_2, order_1):
        yield {"user-service": [user_1, user_2], "order-service": [order_1]}


@pytest.fixture
async def gateway(upstreams: dict[str, list[str]]) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the gateway wired to the running upstreams."""
    async with _gateway(upstreams) as client:
        yield client


async def test_users_are_balanced_over_both_replicas(gateway: httpx.AsyncClient) -> None:
    """/api/users answers 200 with the user list, served by both replicas over a few calls."""
    replicas = set()
    for _ in range(6):
        response = await gateway.get("/api/users")
        assert response.status_code == 200
        body = response.json()
        assert [user["id"] for user in body["users"]] == [1, 2, 3]
        replicas.add(body["replica"])
    assert replicas == {"user-service-1", "user-service-2"}


async def test_readiness_probe_is_ok(gateway: httpx.AsyncClient) -> None:
    """/health/ready answers 200 once the gateway has started."""
    response = await gateway.get("/health/ready")
    assert response.status_code == 200


async def test_unknown_user_is_relayed_as_404(gateway: httpx.AsyncClient) -> None:
    """An upstream 404 reaches the caller unchanged."""
    response = await gateway.get("/api/users/42")
    assert response.status_code == 404
    assert response.json() == {"detail": "user 42 not found"}


async def test_order_is_created_with_201(gateway: httpx.AsyncClient) -> None:
    """POST /api/orders answers 201 with the stored order."""
    response = await gateway.post("/api/orders", json={"user_id": 1, "item": "book"})
    assert response.status_code == 201
    assert response.json()["item"] == "book"
    assert response.json()["replica"] == "order-service-1"


async def test_dashboard_combines_both_services(gateway: httpx.AsyncClient) -> None:
    """/api/dashboard returns users and orders and reports no degraded section."""
    response = await gateway.get("/api/dashboard")
    assert response.status_code == 200
    body = response.json()
    assert [user["id"] for user in body["users"]] == [1, 2, 3]
    assert {1, 2} <= {order["id"] for order in body["orders"]}
    assert body["degraded"] == []


async def test_users_fall_back_when_no_replica_answers() -> None:
    """With every user-service replica unreachable, /api/users answers the route fallback."""
    down = _closed_port_url()
    async with _gateway({"user-service": [down], "order-service": [down]}) as gateway:
        users = await gateway.get("/api/users")
        dashboard = await gateway.get("/api/dashboard")
    assert users.status_code == 200
    assert users.json() == {"users": []}
    assert dashboard.status_code == 200
    assert dashboard.json()["degraded"] == ["user-service", "order-service"]


async def test_route_without_fallback_answers_503_when_no_replica_answers() -> None:
    """With every replica unreachable, a route without fallback answers 503 with Retry-After."""
    down = _closed_port_url()
    async with _gateway({"user-service": [down], "order-service": [down]}) as gateway:
        response = await gateway.get("/api/users/1")
    assert response.status_code == 503
    assert "retry-after" in response.headers


async def test_the_demo_finds_its_upstreams_through_kubernetes_dns(upstreams: dict[str, list[str]]) -> None:
    """`make demo ARGS=--dns`: a real dnsmasq serves the replicas' SRV records, the gateway routes on them."""
    from example_app.__main__ import dns_discovery
    from example_app.dnsmasq import Dnsmasq

    records = [
        (service, f"{service}-{n}", int(url.rsplit(":", 1)[1]))
        for service, urls in upstreams.items()
        for n, url in enumerate(urls, start=1)
    ]
    dnsmasq = Dnsmasq()
    dnsmasq.start(records)  # fails, naming the package, when dnsmasq is not installed (make test installs it)
    try:
        app = create_gateway({}, retry=FAST_RETRY, discovery=dns_discovery(dnsmasq))
        async with (
            LifespanManager(app) as manager,
            httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://gateway") as client,
        ):
            replicas = set()
            for _ in range(6):
                response = await client.get("/api/users")
                assert response.status_code == 200
                replicas.add(response.json()["replica"])
            assert replicas == {"user-service-1", "user-service-2"}
            status = (await client.get("/mesh/status")).json()["discovery"]
            assert status["backend"] == "kubernetes-dns"
            assert status["services"]["user-service"]["endpoints"] == 2
    finally:
        dnsmasq.stop()
