"""Cookie affinity through MeshMiddleware: the cookie is set when absent, and pins the caller's calls."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import Depends, FastAPI

from fastapi_mesh import Mesh, MeshClient, MeshMiddleware, MeshSettings, get_mesh
from fastapi_mesh.balancing import affinity_cookie_names

pytestmark = pytest.mark.anyio

URLS = [f"http://10.0.0.{i}:8080" for i in range(1, 9)]


def upstream(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"host": request.url.host})


def settings(**load_balancer: object) -> MeshSettings:
    return MeshSettings(
        service_name="gateway",
        discovery={"endpoints": {"svc": URLS, "other": URLS}},
        load_balancer={"session_affinity": True, "affinity_key": "cookie:mesh-session", **load_balancer},
        services={"other": {"load_balancer": {"affinity_key": "client-ip"}}},
    )


@asynccontextmanager
async def gateway(
    mesh_settings: MeshSettings, middleware: bool = True, base_url: str = "http://gw"
) -> AsyncIterator[httpx.AsyncClient]:
    mesh = Mesh(mesh_settings, transport=httpx.MockTransport(upstream))
    app = FastAPI(lifespan=mesh.lifespan)
    app.include_router(mesh.router)
    if middleware:
        app.add_middleware(MeshMiddleware, mesh=mesh)

    @app.get("/where")
    async def where(client: MeshClient = Depends(get_mesh)) -> dict[str, str]:
        return {"host": (await client.get("svc", "/")).json()["host"]}

    @app.get("/twice")
    async def twice(client: MeshClient = Depends(get_mesh)) -> list[str]:
        return [(await client.get("svc", "/")).json()["host"] for _ in range(2)]

    @app.get("/other")
    async def other(client: MeshClient = Depends(get_mesh)) -> str:
        return str((await client.get("other", "/")).json()["host"])

    @app.get("/local")
    async def local() -> str:
        return "no upstream"

    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(manager.app), base_url=base_url) as http,
    ):
        yield http


async def test_cookie_is_set_when_absent_and_pins_the_caller() -> None:
    """The first response sets the affinity cookie; that call and every later one with it hit one endpoint."""
    async with gateway(settings()) as http:
        first = await http.get("/where")
        header = first.headers["set-cookie"]
        assert header.startswith("mesh-session=")
        assert "Path=/" in header and "HttpOnly" in header and "SameSite=Lax" in header
        later = [await http.get("/where") for _ in range(10)]  # the client sends the cookie back
    assert {r.json()["host"] for r in later} == {first.json()["host"]}
    assert all("set-cookie" not in r.headers for r in later)


async def test_different_sessions_spread() -> None:
    """Twenty callers without a cookie each get their own value and, between them, several endpoints."""
    hosts = set()
    values = set()
    async with gateway(settings()) as http:
        for _ in range(20):
            http.cookies.clear()
            response = await http.get("/where")
            values.add(response.cookies["mesh-session"])
            hosts.add(response.json()["host"])
    assert len(values) == 20
    assert len(hosts) > 3


async def test_existing_cookie_is_kept_and_used_without_the_middleware() -> None:
    """A request that brings the cookie keeps it (no Set-Cookie); get_mesh alone pins on it too."""
    cookie = {"cookie": "theme=dark; mesh-session=abc"}
    async with gateway(settings()) as http:
        pinned = {(await http.get("/where", headers=cookie)).json()["host"] for _ in range(5)}
        assert "set-cookie" not in (await http.get("/where", headers=cookie)).headers
    async with gateway(settings(), middleware=False) as http:
        bare = {(await http.get("/where", headers=cookie)).json()["host"] for _ in range(5)}
    assert len(pinned) == 1 and bare == pinned


async def test_no_cookie_without_cookie_affinity() -> None:
    """With the default client-ip key the middleware sets no cookie."""
    async with gateway(settings(affinity_key="client-ip")) as http:
        assert "set-cookie" not in (await http.get("/where")).headers


def test_cookie_names_come_from_global_and_per_service_settings() -> None:
    """Each cookie an upstream's affinity (or ip-hash) is keyed on is listed once."""
    s = MeshSettings(
        load_balancer={"session_affinity": True, "affinity_key": "cookie:a"},
        services={
            "x": {"load_balancer": {"affinity_key": "cookie:b"}},
            "y": {"load_balancer": {"session_affinity": False, "strategy": "ip-hash", "affinity_key": "cookie:c"}},
            "z": {"load_balancer": {"session_affinity": False, "affinity_key": "cookie:d"}},
        },
    )
    assert affinity_cookie_names(s) == ("a", "b", "c")


async def test_cookie_is_set_only_for_requests_whose_calls_are_keyed_on_it() -> None:
    """Probes, /metrics, a route without outbound calls and one calling an upstream keyed on something else
    get no cookie; a route calling twice hashes one value (one endpoint) and sets it once, Secure over https."""
    async with gateway(settings(), base_url="https://gw") as http:
        for path in ("/health/live", "/health/ready", "/metrics", "/local", "/other"):
            response = await http.get(path)
            assert response.status_code == 200, path
            assert "set-cookie" not in response.headers, path
        response = await http.get("/twice")
    assert len(set(response.json())) == 1
    assert len(response.headers.get_list("set-cookie")) == 1
    assert response.headers["set-cookie"].endswith("; Secure")
