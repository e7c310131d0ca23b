"""/metrics: the outbound latency histogram, the breaker, bulkhead, outlier and inbound series, bounded labels,
``observability.metrics: false``, OpenMetrics negotiation, and Prometheus's own tools reading the output."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families

from fastapi_mesh import ManualClock, Mesh, MeshClient, MeshMiddleware, MeshSettings, UpstreamUnavailable
from tests.apps import serve
from tests.observability.support import matching, poll, samples, serve_on_port, value
from tests.upstreams import Fleet, settings_for, unused_port

pytestmark = pytest.mark.anyio

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is installed by `make test`")
needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="prometheus is installed by `make test`"
)
DURATION = "mesh_upstream_request_duration_seconds"


def scrape(mesh: Mesh) -> dict[Any, float]:
    return samples(generate_latest(mesh.registry).decode())


def counts(found: dict[Any, float], service: str) -> dict[tuple[str, str], float]:
    """``(method, code_class) -> observations`` of the duration histogram for ``service``."""
    return {
        (dict(key)["method"], dict(key)["code_class"]): v
        for key, v in matching(found, DURATION + "_count", service=service).items()
    }


async def test_call_durations_are_observed_once_per_call_by_method_and_status_class(fleet: Fleet) -> None:
    """A call answered after a retry is one 2xx observation; retries run out on 503s: one 5xx; a refused
    endpoint: one ``error``; odd methods count as OTHER. Each duration is the whole call's."""
    flapping, failing = await fleet.start(2)
    flapping.mode, failing.mode, flapping.status_code = "flap", "status", 503
    settings = MeshSettings(
        service_name="gw",
        discovery={
            "endpoints": {
                "flappy": [flapping.url],
                "failing": [failing.url],
                "gone": [f"http://127.0.0.1:{unused_port()}"],
            }
        },
        retry={"max_retries": 1, "initial_delay": 0.05, "jitter": "none"},
    )
    mesh = Mesh(settings)
    async with mesh.client as client:
        assert (await client.get("flappy", "/a")).status_code == 200  # 503, then 200 on the retry
        assert (await client.get("failing", "/a")).status_code == 503
        with pytest.raises(UpstreamUnavailable):
            await client.get("gone", "/a")
        await client.request("PROPFIND", "flappy", "/a")
        found = scrape(mesh)
    assert flapping.total == 3 and failing.total == 2  # the retries happened
    assert counts(found, "flappy") == {("GET", "2xx"): 1, ("OTHER", "5xx"): 1}
    assert counts(found, "failing") == {("GET", "5xx"): 1}
    assert counts(found, "gone") == {("GET", "error"): 1}
    labels = {"service": "flappy", "method": "GET", "code_class": "2xx"}
    # the retry waited 50 ms: the observation covers both attempts and the pause between them
    assert value(found, DURATION + "_sum", **labels) >= 0.05  # type: ignore[operator]
    assert value(found, DURATION + "_bucket", le="0.025", **labels) == 0
    assert value(found, DURATION + "_bucket", le="30.0", **labels) == 1
    assert value(found, DURATION + "_bucket", le="+Inf", **labels) == 1


async def test_durations_come_from_the_mesh_clock_and_fall_into_the_right_bucket() -> None:
    """With a ManualClock a call that takes 0.3 s of clock time lands in the (0.25, 0.5] bucket."""
    clock = ManualClock()

    async def slow(request: httpx.Request) -> httpx.Response:
        clock.advance(0.3)
        return httpx.Response(200)

    settings = MeshSettings(discovery={"endpoints": {"users": ["http://10.0.0.1:80"]}})
    mesh = Mesh(settings, transport=httpx.MockTransport(slow), clock=clock)
    async with mesh.client:
        await mesh.client.get("users", "/")
    found = scrape(mesh)
    labels = {"service": "users", "method": "GET", "code_class": "2xx"}
    assert value(found, DURATION + "_bucket", le="0.25", **labels) == 0
    assert value(found, DURATION + "_bucket", le="0.5", **labels) == 1
    assert value(found, DURATION + "_sum", **labels) == pytest.approx(0.3)


async def test_breaker_transitions_are_counted_by_from_and_to_state() -> None:
    """Two failures open the breaker; after the open period a probe succeeds: closed->open, open->half-open,
    half-open->closed, once each."""
    clock = ManualClock()
    answers = iter([500, 500, 200])
    settings = MeshSettings(
        discovery={"endpoints": {"users": ["http://10.0.0.1:80"]}},
        retry={"max_retries": 0},
        circuit_breaker={"failure_threshold": 2, "reset_timeout": 5, "half_open_max_calls": 1},
    )
    mesh = Mesh(settings, transport=httpx.MockTransport(lambda r: httpx.Response(next(answers))), clock=clock)
    async with mesh.client as client:
        await client.get("users", "/")
        await client.get("users", "/")
        clock.advance(5.0)
        await client.get("users", "/")
    transitions = {
        (dict(k)["from_state"], dict(k)["to_state"]): v
        for k, v in matching(scrape(mesh), "mesh_circuit_breaker_transitions_total", service="users").items()
    }
    assert transitions == {("closed", "open"): 1, ("open", "half-open"): 1, ("half-open", "closed"): 1}


async def test_outlier_ejections_are_counted(fleet: Fleet) -> None:
    """An endpoint that fails twice in a row (consecutive_failures=2) is ejected: the counter shows 1 while
    the gauge of ejected endpoints shows it is out now."""
    bad, good = await fleet.start(2)
    bad.mode = "status"
    settings = settings_for(
        [bad.url, good.url],
        retry={"max_retries": 1},
        outlier_detection={"consecutive_failures": 2, "max_ejection_percent": 50},
        load_balancer={"strategy": "round-robin"},
    )
    mesh = Mesh(settings)
    async with mesh.client as client:
        for _ in range(6):
            assert (await client.get("svc", "/")).status_code == 200
        found = scrape(mesh)
    assert value(found, "mesh_outlier_ejections_total", service="svc") == 1
    assert value(found, "mesh_outlier_ejected_endpoints", service="svc") == 1


async def test_bulkhead_in_flight_counts_the_calls_holding_a_slot(fleet: Fleet) -> None:
    """Two calls held by a hanging replica show as 2 in flight on a 3-slot service bulkhead, 0 after."""
    (replica,) = await fleet.start(1)
    replica.mode = "hang"
    mesh = Mesh(settings_for([replica.url], bulkhead={"max_concurrent": 3}))
    async with mesh.client as client:
        calls = [asyncio.create_task(client.get("svc", "/")) for _ in range(2)]
        await poll(lambda: value(scrape(mesh), "mesh_bulkhead_in_flight", name="svc") == 2)
        replica.release.set()
        await asyncio.gather(*calls)
        assert value(scrape(mesh), "mesh_bulkhead_in_flight", name="svc") == 0


def gateway_app(mesh: Mesh, gate: asyncio.Event) -> FastAPI:
    app = FastAPI(lifespan=mesh.lifespan)
    app.include_router(mesh.router)
    app.add_middleware(MeshMiddleware, mesh=mesh)

    @app.get("/api/items/{item_id}")
    @mesh.policy(bulkhead=1)
    async def item(item_id: int) -> dict[str, int]:
        await gate.wait()
        return {"id": item_id}

    return app


async def test_route_bulkhead_series_are_labelled_by_route_template_and_requests_in_progress_counted() -> None:
    """A route with bulkhead=1 holding one request: the next gets 503 and counts as rejected under the
    route's template; while it is held, 1 request is in progress (the scrape itself is not counted)."""
    mesh = Mesh(MeshSettings())
    gate = asyncio.Event()
    async with serve(gateway_app(mesh, gate)) as http:
        held = asyncio.create_task(http.get("/api/items/1"))
        await poll(lambda: mesh.inbound.in_progress == 1)
        assert (await http.get("/api/items/2")).status_code == 503
        during = samples((await http.get("/metrics")).text)
        gate.set()
        assert (await held).status_code == 200
        after = samples((await http.get("/metrics")).text)
    assert value(during, "mesh_route_bulkhead_rejected_total", route="/api/items/{item_id}") == 1
    assert value(during, "mesh_bulkhead_in_flight", name="/api/items/{item_id}") == 1
    assert value(during, "mesh_inbound_requests_in_progress") == 1
    assert value(after, "mesh_inbound_requests_in_progress") == 0
    assert value(after, "mesh_bulkhead_in_flight", name="/api/items/{item_id}") == 0
    routes = {dict(k)["route"] for k in matching(after, "mesh_inbound_requests_total")}
    assert routes == {"/api/items/{item_id}"}  # templates only, never /api/items/1


async def test_labels_stay_bounded_whatever_callers_send() -> None:
    """200 calls to made-up services and 200 distinct paths add no series: unknown services are not
    shown, paths never become labels, and endpoint URLs appear only on the per-endpoint gauges."""
    mesh = Mesh(
        MeshSettings(discovery={"endpoints": {"users": ["http://10.0.0.1:80"]}}),
        transport=httpx.MockTransport(lambda r: httpx.Response(200)),
    )
    async with mesh.client as client:
        await client.get("users", "/warm")
        before = scrape(mesh)
        for i in range(200):
            await client.get("users", f"/api/users/{i}?token=secret{i}")
            with pytest.raises(Exception):  # noqa: B017 - NoHealthyEndpoints for a name nobody knows
                await client.get(f"made-up-{i}", "/")
        after = scrape(mesh)
    assert set(after) == set(before)  # values changed, the label sets did not
    texts = {v for key in after for _, v in key[1]}
    assert not any("/api/users" in v or "made-up" in v or "secret" in v for v in texts)
    with_urls = {name for name, key in after if any(v.startswith("http://") for _, v in key)}
    assert with_urls == {"mesh_upstream_in_flight", "mesh_upstream_latency_ewma_seconds"}


async def test_metrics_off_skips_every_per_call_observation() -> None:
    """``observability.metrics: false``: no duration or inbound series, while the state the mesh keeps for
    /mesh/status is still exported."""
    mesh = Mesh(
        MeshSettings(discovery={"endpoints": {"users": ["http://10.0.0.1:80"]}}, observability={"metrics": False}),
        transport=httpx.MockTransport(lambda r: httpx.Response(200)),
    )
    app = FastAPI(lifespan=mesh.lifespan)
    app.include_router(mesh.router)
    app.add_middleware(MeshMiddleware, mesh=mesh)

    @app.get("/call")
    async def call() -> int:
        return (await mesh.client.get("users", "/")).status_code

    async with serve(app) as http:
        assert (await http.get("/call")).json() == 200
        found = samples((await http.get("/metrics")).text)
    names = {name for name, _ in found}
    assert not any(n.startswith((DURATION, "mesh_inbound_")) for n in names)
    assert value(found, "mesh_upstream_requests_total", service="users", outcome="success") == 1
    assert mesh.client._rt.services.get("users").durations.series == {}


def demo_mesh() -> tuple[Mesh, FastAPI]:
    mesh = Mesh(
        MeshSettings(discovery={"endpoints": {"users": ["http://10.0.0.1:80"]}}, bulkhead={"max_concurrent": 4}),
        transport=httpx.MockTransport(lambda r: httpx.Response(200 if r.url.path != "/bad" else 503)),
    )
    app = gateway_app(mesh, asyncio.Event())

    @app.get("/call/{path}")
    async def call(path: str) -> int:
        return (await mesh.client.get("users", "/" + path)).status_code

    return mesh, app


async def exercised(http: httpx.AsyncClient, mesh: Mesh) -> None:
    """Calls that make every mesh family have samples (a breaker transition included)."""
    for path in ("ok", "bad"):
        await http.get(f"/call/{path}")
    mesh.client.circuit_breaker("users").force_open()
    mesh.client.circuit_breaker("users").reset()


async def test_openmetrics_is_served_when_asked_for() -> None:
    """``Accept: application/openmetrics-text`` gets OpenMetrics (a strict parser reads it; counters are
    declared without ``_total`` and sampled with it; ``# EOF`` ends it); no Accept gets the text format."""
    mesh, app = demo_mesh()
    async with serve(app) as http:
        await exercised(http, mesh)
        om = await http.get("/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"})
        plain = await http.get("/metrics")
    assert om.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert plain.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert om.text.endswith("# EOF\n") and "# EOF" not in plain.text
    families = {f.name: f for f in openmetrics_families(om.text)}
    assert families["mesh_upstream_requests"].type == "counter"
    assert {s.name for s in families["mesh_upstream_requests"].samples} == {"mesh_upstream_requests_total"}
    assert families[DURATION].type == "histogram"
    assert families["mesh"].type == "info"
    text_names = {n for n, _ in samples(plain.text) if n.startswith("mesh_")}
    om_names = {s.name for f in families.values() for s in f.samples if s.name.startswith("mesh_")}
    assert text_names - {n for n in text_names if n.endswith("_created")} <= om_names


@needs_promtool
async def test_promtool_accepts_the_text_format_with_every_family() -> None:
    """``promtool check metrics`` finds nothing to complain about in /metrics with every family present.
    (promtool 2.x reads only the text format; OpenMetrics is checked by Prometheus itself, below.)"""
    mesh, app = demo_mesh()
    async with serve(app) as http:
        await exercised(http, mesh)
        text = (await http.get("/metrics")).text
    assert DURATION + "_bucket" in text and "mesh_circuit_breaker_transitions_total" in text
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


PROMETHEUS_CONFIG = """
global:
  scrape_interval: 1s
  scrape_timeout: 900ms
scrape_configs:
  - job_name: mesh
    static_configs:
      - targets: ["{target}"]
"""


@needs_prometheus
async def test_prometheus_scrapes_openmetrics_without_errors(tmp_path: Path) -> None:
    """A real Prometheus server scrapes /metrics (it asks for OpenMetrics first) with no scrape error, and
    its queries see the mesh's histogram."""
    mesh, app = demo_mesh()
    accepted: list[str] = []

    async def recording(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/metrics":
            accepted.append(dict(scope["headers"]).get(b"accept", b"").decode())
        await app(scope, receive, send)

    async with serve_on_port(recording) as base, httpx.AsyncClient(base_url=base, timeout=5) as http:
        await exercised(http, mesh)
        api_port = unused_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(PROMETHEUS_CONFIG.replace("{target}", base.removeprefix("http://")))
        process = await asyncio.create_subprocess_exec(
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{api_port}",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            api = f"http://127.0.0.1:{api_port}/api/v1"

            async def query(expr: str) -> list[Any]:
                try:
                    answer = (await http.get(f"{api}/query", params={"query": expr})).json()
                except httpx.HTTPError:
                    return []
                result: list[Any] = answer.get("data", {}).get("result", [])
                return result

            async def scraped() -> bool:
                return bool(await query(f'{DURATION}_count{{service="users",code_class="5xx"}}'))

            await poll(scraped, timeout=20, interval=0.2)
            targets = (await http.get(f"{api}/targets")).json()["data"]["activeTargets"]
        finally:
            process.terminate()
            await asyncio.wait_for(process.wait(), timeout=10)
    assert [(t["health"], t["lastError"]) for t in targets] == [("up", "")]
    assert accepted and all(a.startswith("application/openmetrics-text") for a in accepted)


async def test_a_client_without_a_mesh_keeps_its_histogram_in_its_service_state() -> None:
    """MeshClient alone (no /metrics) still times calls: the durations are in its service state."""
    settings = MeshSettings(discovery={"endpoints": {"users": ["http://10.0.0.1:80"]}})
    async with MeshClient(settings, transport=httpx.MockTransport(lambda r: httpx.Response(201))) as client:
        await client.post("users", "/")
        series = client._rt.services.get("users").durations.series
    assert list(series) == [("POST", "2xx")]
