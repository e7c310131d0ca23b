"""The FastAPI extension: lifespan, probes, /metrics, get_mesh, policies, middleware."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import Depends, FastAPI, Request
from prometheus_client.parser import text_string_to_metric_families

from fastapi_mesh import (
    CircuitOpen,
    DeadlineExceeded,
    Mesh,
    MeshClient,
    MeshMiddleware,
    MeshSettings,
    UpstreamUnavailable,
    get_mesh,
)
from tests.apps import serve

pytestmark = pytest.mark.anyio

SEEN: list[httpx.Request] = []


def upstream(request: httpx.Request) -> httpx.Response:
    SEEN.append(request)
    if request.url.path == "/down":
        return httpx.Response(503)
    return httpx.Response(200, json={"users": ["ada"], "host": request.url.host})


def make_mesh(**settings: Any) -> Mesh:
    SEEN.clear()
    settings.setdefault("discovery", {"endpoints": {"user-service": ["http://10.0.0.1:8080"]}})
    settings.setdefault("retry", {"max_retries": 0})
    return Mesh(MeshSettings(service_name="api-gateway", **settings), transport=httpx.MockTransport(upstream))




def gateway(mesh: Mesh) -> FastAPI:
    app = FastAPI(lifespan=mesh.lifespan)
    app.include_router(mesh.router)
    return app


async def test_design_example_runs_as_written() -> None:
    """The DESIGN.md usage example, verbatim, answers with the upstream's users."""
    mesh = make_mesh()
    app = FastAPI(lifespan=mesh.lifespan)
    app.include_router(mesh.router)

    @app.get("/api/users")
    @mesh.policy(timeout=2.0, bulkhead=50, fallback=lambda: {"users": []})
    async def users(client: MeshClient = Depends(get_mesh)):  # type: ignore[no-untyped-def]
        response = await client.get("user-service", "/api/users")
        response.raise_for_status()
        return response.json()

    async with serve(app) as http:
        response = await http.get("/api/users")
    assert response.status_code == 200
    assert response.json() == {"users": ["ada"], "host": "10.0.0.1"}


async def test_probes_answer_with_kubernetes_semantics() -> None:
    """live/ready/startup answer 200 with JSON bodies once started; readiness is 503 while draining."""
    mesh = make_mesh()
    assert mesh.health.readiness()["status"] == "unhealthy"  # not started yet
    async with serve(gateway(mesh)) as http:
        bodies = {p: await http.get(f"/health/{p}") for p in ("live", "ready", "startup")}
        assert {p: r.status_code for p, r in bodies.items()} == {"live": 200, "ready": 200, "startup": 200}
        assert bodies["ready"].json()["service"] == "api-gateway"
        assert bodies["live"].json()["status"] == "healthy"
        mesh.health.drain()
        draining = await http.get("/health/ready")
        live = await http.get("/health/live")
    assert (draining.status_code, draining.json()["reason"]) == (503, "draining")
    assert live.status_code == 200


async def test_critical_check_fails_readiness_after_threshold_and_noncritical_degrades() -> None:
    """A critical check fails readiness only after failure_threshold failures; a non-critical one degrades."""
    mesh = make_mesh(health_check={"failure_threshold": 2})
    state = {"db": True, "cache": True}
    mesh.add_health_check("db", lambda: state["db"])
    mesh.add_health_check("cache", lambda: state["cache"], critical=False)
    async with serve(gateway(mesh)) as http:
        state["db"] = state["cache"] = False
        await mesh.health.run("readiness")
        first = await http.get("/health/ready")
        await mesh.health.run("readiness")
        second = await http.get("/health/ready")
        state["db"] = True
        await mesh.health.run("readiness")
        third = await http.get("/health/ready")
    assert (first.status_code, first.json()["status"]) == (200, "degraded")
    assert (second.status_code, second.json()["status"]) == (503, "unhealthy")
    assert second.json()["checks"]["db"]["consecutive_failures"] == 2
    assert (third.status_code, third.json()["status"]) == (200, "degraded")


async def test_startup_probe_waits_for_startup_checks_then_stays_up() -> None:
    """The startup probe is 503 until every startup check has passed once, then 200 for good."""
    mesh = make_mesh()
    warm = {"done": False}
    mesh.add_health_check("warm-cache", lambda: warm["done"], kind="startup")
    async with serve(gateway(mesh)) as http:
        before = await http.get("/health/startup")
        warm["done"] = True
        await mesh.health.run("startup")
        after = await http.get("/health/startup")
        warm["done"] = False
        await mesh.health.run("startup")
        later = await http.get("/health/startup")
    assert [before.status_code, after.status_code, later.status_code] == [503, 200, 200]


async def test_metrics_parse_and_hold_process_gc_and_mesh_families() -> None:
    """/metrics is Prometheus text with process, GC and mesh families from this Mesh's own registry."""
    mesh = make_mesh()
    app = gateway(mesh)

    @app.get("/call")
    async def call(client: MeshClient = Depends(get_mesh)) -> int:
        return (await client.get("user-service", "/x")).status_code

    async with serve(app) as http:
        await http.get("/call")
        text = (await http.get("/metrics")).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    expected = {"process_cpu_seconds", "python_gc_objects_collected", "mesh_info", "mesh_upstream_requests"}
    assert expected <= set(families)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in families["mesh_upstream_requests"].samples}
    assert samples[("mesh_upstream_requests_total", (("outcome", "success"), ("service", "user-service")))] == 1
    states = {s.labels["state"]: s.value for s in families["mesh_circuit_breaker_state"].samples}
    assert states == {"closed": 1, "open": 0, "half-open": 0, "forced-open": 0, "disabled": 0}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is installed by `make test`")
async def test_metrics_pass_promtool_check() -> None:
    """Prometheus's own linter accepts the /metrics output."""
    mesh = make_mesh()
    async with serve(gateway(mesh)) as http:
        await mesh.client.get("user-service", "/x")
        text = (await http.get("/metrics")).text
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


async def test_two_meshes_in_one_process_do_not_collide() -> None:
    """Two Mesh objects each own a registry: both serve /metrics and neither sees the other's upstreams."""
    one, two = make_mesh(), make_mesh()
    async with serve(gateway(one)) as a, serve(gateway(two)) as b:
        await one.client.get("user-service", "/x")
        text_a = (await a.get("/metrics")).text
        text_b = (await b.get("/metrics")).text
    assert 'mesh_upstream_requests_total{outcome="success",service="user-service"} 1.0' in text_a
    assert 'mesh_upstream_requests_total{outcome="success",service="user-service"} 0.0' in text_b
    assert one.registry is not two.registry


async def test_get_mesh_view_carries_caller_deadline_and_trace_headers() -> None:
    """get_mesh hands a view that forwards trace headers and the remaining inbound deadline downstream."""
    mesh = make_mesh()
    app = gateway(mesh)

    @app.get("/hop")
    async def hop(client: MeshClient = Depends(get_mesh)) -> dict[str, Any]:
        assert client._inbound is not None
        await client.get("user-service", "/x")
        return {"caller": client._inbound.client_host}

    async with serve(app) as http:
        response = await http.get("/hop", headers={"x-mesh-timeout-ms": "800", "traceparent": "00-abc-def-01"})
    outbound = SEEN[-1]
    assert response.json() == {"caller": "127.0.0.1"}
    assert 0 < int(outbound.headers["x-mesh-timeout-ms"]) <= 800
    assert outbound.headers["traceparent"] == "00-abc-def-01"


async def test_get_mesh_without_lifespan_explains_what_is_missing() -> None:
    """Using get_mesh in an app whose lifespan is not the mesh's fails with a message saying what to do."""
    app = FastAPI()

    @app.get("/x")
    async def x(client: MeshClient = Depends(get_mesh)) -> None:
        return None

    transport = httpx.ASGITransport(app, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        with pytest.raises(RuntimeError, match=r"lifespan=mesh\.lifespan"):
            await http.get("/x")


async def test_lifespan_composes_with_the_apps_own() -> None:
    """combine_lifespan runs the app's lifespan inside the mesh's and keeps the state it yields."""
    mesh = make_mesh()
    order: list[str] = []

    @asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        order.append(f"own-start ready={mesh.health.readiness()['status']}")
        yield {"db": "connected"}
        order.append("own-stop")

    app = FastAPI(lifespan=mesh.combine_lifespan(own))
    app.include_router(mesh.router)

    @app.get("/state")
    async def state(request: Request) -> str:
        return str(request.state.db)

    async with serve(app) as http:
        assert (await http.get("/state")).json() == "connected"
        assert (await http.get("/health/ready")).status_code == 200
    assert order == ["own-start ready=healthy", "own-stop"]


async def test_mesh_lifespan_nests_inside_a_hand_written_lifespan() -> None:
    """``async with mesh.lifespan(app)`` inside the app's own lifespan works too."""
    mesh = make_mesh()

    @asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[None]:
        async with mesh.lifespan(app):
            yield

    app = FastAPI(lifespan=own)
    app.include_router(mesh.router)
    async with serve(app) as http:
        assert (await http.get("/health/ready")).status_code == 200


async def test_mesh_restarts_on_a_new_event_loop() -> None:
    """A Mesh started, stopped and started again (tests do this) serves calls both times."""
    mesh = make_mesh()
    for _ in range(2):
        async with serve(gateway(mesh)):
            assert (await mesh.client.get("user-service", "/x")).status_code == 200


def test_mesh_restarts_across_separate_event_loops() -> None:
    """Loop-bound state is made at start, so a Mesh works again under a second asyncio.run."""
    mesh = make_mesh()

    async def once() -> int:
        async with serve(gateway(mesh)):
            return (await mesh.client.get("user-service", "/x")).status_code

    assert [asyncio.run(once()), asyncio.run(once())] == [200, 200]


# ---------------------------------------------------------------------------------------------- policies


def policy_app(mesh: Mesh) -> FastAPI:
    app = gateway(mesh)
    gate = asyncio.Event()

    @app.get("/slow")
    @mesh.policy(timeout=0.05)
    async def slow() -> str:
        await asyncio.sleep(5)
        return "late"

    @app.get("/slow-fallback")
    @mesh.policy(timeout=0.05, fallback={"cached": True})
    async def slow_fallback() -> Any:
        await asyncio.sleep(5)
        return "late"

    @app.get("/down")
    @mesh.policy(fallback=lambda exc: {"error": type(exc).__name__})
    async def down(client: MeshClient = Depends(get_mesh)) -> Any:
        response = await client.get("user-service", "/down")
        response.raise_for_status()
        return response.json()

    @app.get("/unavailable")
    @mesh.policy()
    async def unavailable() -> None:
        raise CircuitOpen("user-service", retry_after=7.2)

    @app.get("/request-fallback")
    @mesh.policy(fallback=lambda request, exc: {"path": request.url.path})
    async def request_fallback() -> None:
        raise UpstreamUnavailable("user-service")

    async def async_fallback() -> dict[str, str]:
        return {"from": "async"}

    @app.get("/async-fallback")
    @mesh.policy(fallback=async_fallback)
    async def with_async_fallback() -> None:
        raise UpstreamUnavailable("user-service")

    @app.get("/bug")
    @mesh.policy(fallback={"never": "used"})
    async def bug() -> None:
        raise KeyError("a programming error")

    @app.get("/held")
    @mesh.policy(bulkhead=1)
    async def held() -> str:
        await gate.wait()
        return "done"

    @app.get("/release")
    async def release() -> str:
        gate.set()
        return "ok"

    @app.get("/sync/{item}")
    @mesh.policy(timeout=1)
    def sync_handler(item: int, q: str = "none") -> dict[str, Any]:
        return {"item": item, "q": q}

    @app.get("/deadline-inherited")
    @mesh.policy(timeout=0.5)
    async def inherited(client: MeshClient = Depends(get_mesh)) -> int:
        await client.get("user-service", "/x")
        return int(SEEN[-1].headers["x-mesh-timeout-ms"])

    return app


async def test_route_timeout_answers_504_or_its_fallback() -> None:
    """A handler past its policy timeout answers 504; with a fallback, the fallback."""
    async with serve(policy_app(make_mesh())) as http:
        slow = await http.get("/slow")
        fallback = await http.get("/slow-fallback")
    assert slow.status_code == 504
    assert (fallback.status_code, fallback.json()) == (200, {"cached": True})


async def test_route_fallback_forms() -> None:
    """Fallbacks may take (), (exc) or (request, exc), sync or async; 5xx HTTPStatusError triggers them."""
    async with serve(policy_app(make_mesh())) as http:
        down = (await http.get("/down")).json()
        request = (await http.get("/request-fallback")).json()
        from_async = (await http.get("/async-fallback")).json()
    assert down == {"error": "HTTPStatusError"}
    assert request == {"path": "/request-fallback"}
    assert from_async == {"from": "async"}


async def test_mesh_error_without_fallback_is_503_with_retry_after() -> None:
    """A MeshError reaching a policy route becomes 503 with a rounded-up Retry-After."""
    async with serve(policy_app(make_mesh())) as http:
        response = await http.get("/unavailable")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "8"
    assert response.json()["error"] == "circuit_open"


async def test_programming_error_is_still_500_with_a_fallback() -> None:
    """A fallback never hides a bug: a KeyError in the handler stays a 500."""
    app = policy_app(make_mesh())
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(manager.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            response = await http.get("/bug")
    assert response.status_code == 500


async def test_full_route_bulkhead_rejects_at_once() -> None:
    """With bulkhead=1 taken, the next call gets 503 with Retry-After immediately, not after waiting."""
    async with serve(policy_app(make_mesh())) as http:
        first = asyncio.create_task(http.get("/held"))
        for _ in range(200):
            await asyncio.sleep(0.005)
            rejected = await http.get("/held")
            if rejected.status_code == 503:
                break
        await http.get("/release")
        done = await first
    assert rejected.status_code == 503
    assert "retry-after" in rejected.headers
    assert rejected.json()["error"] == "bulkhead_full"
    assert done.json() == "done"


async def test_sync_handler_keeps_its_signature_and_runs() -> None:
    """A sync handler under a policy still gets its path and query parameters."""
    async with serve(policy_app(make_mesh())) as http:
        response = await http.get("/sync/3", params={"q": "x"})
        invalid = await http.get("/sync/notanint")
    assert response.json() == {"item": 3, "q": "x"}
    assert invalid.status_code == 422


async def test_outbound_calls_inherit_the_route_deadline() -> None:
    """An outbound call inside a timeout=0.5 route sends at most 500 ms downstream."""
    async with serve(policy_app(make_mesh())) as http:
        sent = (await http.get("/deadline-inherited")).json()
    assert 0 < sent <= 500


async def test_inbound_deadline_caps_the_route_timeout() -> None:
    """An inbound x-mesh-timeout-ms shorter than the route's timeout wins."""
    async with serve(policy_app(make_mesh())) as http:
        sent = (await http.get("/deadline-inherited", headers={"x-mesh-timeout-ms": "120"})).json()
    assert 0 < sent <= 120


async def test_policy_rejects_bad_arguments() -> None:
    """Bad policy arguments fail at decoration, naming the problem."""
    mesh = make_mesh()
    with pytest.raises(ValueError, match="timeout"):
        mesh.policy(timeout=0)
    with pytest.raises(ValueError, match="bulkhead"):
        mesh.policy(bulkhead=0)
    with pytest.raises(TypeError, match=r"\(request, exc\)"):
        mesh.policy(fallback=lambda a, b, c: None)


# -------------------------------------------------------------------------------------------- middleware


async def test_middleware_maps_escaping_mesh_errors_to_503_and_504() -> None:
    """Without a policy, the middleware turns a MeshError into 503 and a deadline into 504."""
    mesh = make_mesh()
    app = gateway(mesh)
    app.add_middleware(MeshMiddleware, mesh=mesh)

    @app.get("/down")
    async def down(client: MeshClient = Depends(get_mesh)) -> Any:
        return (await client.get("nowhere", "/x")).json()

    @app.get("/late")
    async def late() -> None:
        raise DeadlineExceeded("user-service")

    @app.get("/fine")
    async def fine() -> str:
        return "fine"

    async with serve(app) as http:
        down_response = await http.get("/down")
        late_response = await http.get("/late")
        fine_response = await http.get("/fine")
    assert (down_response.status_code, down_response.json()["error"]) == (503, "no_healthy_endpoints")
    assert "'nowhere'" in down_response.json()["detail"]
    assert late_response.status_code == 504
    assert fine_response.json() == "fine"


async def test_middleware_records_the_caller_for_direct_client_use() -> None:
    """With the middleware, even mesh.client used directly in a route inherits the inbound deadline."""
    mesh = make_mesh()
    app = gateway(mesh)
    app.add_middleware(MeshMiddleware, mesh=mesh)

    @app.get("/direct")
    async def direct() -> int:
        await mesh.client.get("user-service", "/x")
        return int(SEEN[-1].headers["x-mesh-timeout-ms"])

    async with serve(app) as http:
        sent = (await http.get("/direct", headers={"grpc-timeout": "250m"})).json()
    assert 0 < sent <= 250


async def test_critical_check_failing_from_the_start_fails_readiness_at_once() -> None:
    """A critical check that has never passed fails readiness without waiting for failure_threshold."""
    mesh = make_mesh(health_check={"failure_threshold": 3})
    mesh.add_health_check("db", lambda: False)
    async with serve(gateway(mesh)) as http:
        ready = await http.get("/health/ready")
    assert (ready.status_code, ready.json()["checks"]["db"]["consecutive_failures"]) == (503, 1)


async def test_a_closed_client_refuses_calls_until_started_again() -> None:
    """After its lifespan ends the client does not restart by itself; initialize() brings it back."""
    mesh = make_mesh()
    async with serve(gateway(mesh)):
        await mesh.client.get("user-service", "/x")
    with pytest.raises(RuntimeError, match="closed"):
        await mesh.client.get("user-service", "/x")
    assert mesh.health.readiness()["status"] == "unhealthy"
    await mesh.client.initialize()
    try:
        assert (await mesh.client.get("user-service", "/x")).status_code == 200
    finally:
        await mesh.client.aclose()


async def test_endpoint_changes_are_announced() -> None:
    """Discovery publishing a new set emits endpoints-changed with the service and the URLs."""
    mesh = make_mesh()
    seen: list[Any] = []
    mesh.on("endpoints-changed", seen.append)
    async with serve(gateway(mesh)):
        mesh.client.discovery.set_endpoints("user-service", ["http://10.0.0.9:80"])  # type: ignore[attr-defined]
    assert [(e.service, e.endpoints) for e in seen] == [
        ("user-service", ("http://10.0.0.1:8080",)),
        ("user-service", ("http://10.0.0.9:80",)),
    ]


async def test_route_queue_wait_counts_against_the_route_deadline() -> None:
    """A call queued behind a full route bulkhead gets 504 when the route's timeout passes in the queue."""
    mesh = make_mesh()
    app = gateway(mesh)
    gate = asyncio.Event()

    @app.get("/queued")
    @mesh.policy(timeout=0.1, bulkhead=1, queue=1)
    async def queued() -> str:
        await gate.wait()
        return "done"

    async with serve(app) as http:
        first = asyncio.create_task(http.get("/queued"))
        await asyncio.sleep(0.02)
        second = await http.get("/queued")  # waits in the queue, then its deadline passes
        gate.set()
        first_response = await first
    assert second.status_code == 504
    assert first_response.status_code == 504  # the holder itself also ran past 0.1 s


async def test_route_fallback_is_off_for_a_service_with_fallbacks_disabled() -> None:
    """circuit_breaker.fallback_enabled=false on the failing service turns the route's fallback off too."""
    mesh = make_mesh(services={"user-service": {"circuit_breaker": {"fallback_enabled": False}}})
    app = gateway(mesh)

    @app.get("/strict")
    @mesh.policy(fallback={"cached": True})
    async def strict() -> None:
        raise UpstreamUnavailable("user-service")

    @app.get("/lenient")
    @mesh.policy(fallback={"cached": True})
    async def lenient() -> None:
        raise UpstreamUnavailable("order-service")

    async with serve(app) as http:
        strict_response = await http.get("/strict")
        lenient_response = await http.get("/lenient")
    assert strict_response.status_code == 503
    assert lenient_response.json() == {"cached": True}


async def test_call_fallback_of_none_is_json_null() -> None:
    """A per-call fallback of None answers 200 with the JSON body null."""
    mesh = make_mesh()
    async with serve(gateway(mesh)):
        response = await mesh.client.get("nowhere", "/x", fallback=None)
    assert (response.status_code, response.content, response.json()) == (200, b"null", None)
