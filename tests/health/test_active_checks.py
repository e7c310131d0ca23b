"""Active health checks of upstream endpoints: thresholds, schedule and jitter, endpoint churn, and real
replicas taken out of rotation and brought back."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest
from pydantic import ValidationError

from fastapi_mesh import ManualClock, Mesh, MeshClient, MeshSettings
from fastapi_mesh.balancing import Balancer
from fastapi_mesh.discovery.base import Endpoint
from fastapi_mesh.health.active import USER_AGENT, ActiveHealthChecker
from fastapi_mesh.settings import ActiveHealthCheckConfig
from tests.balancing.support import balancer, endpoints
from tests.upstreams import Fleet, Replica, settings_for

pytestmark = pytest.mark.anyio

HEALTH_PATH = "/healthz"
WAIT = 5.0


async def eventually(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    """Wait until ``predicate()`` holds, polling, at most ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


class Probed:
    """A stand-in upstream for unit tests: answers probes per host as told, and notes when each came."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        #: Per host: a status to answer, or an exception to raise. Default 200.
        self.answers: dict[str, int | Exception] = {}
        self.times: dict[str, list[float]] = {}
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.requests.append(request)
        self.times.setdefault(host, []).append(self.clock.now())
        answer = self.answers.get(host, 200)
        if isinstance(answer, Exception):
            raise answer
        return httpx.Response(answer, json={"host": host})


def checker_over(
    b: Balancer, clock: ManualClock, upstream: Probed, seed: int = 7, **config: Any
) -> ActiveHealthChecker:
    settings = {"enabled": True, "path": HEALTH_PATH, "interval": 10, "jitter": 0, **config}
    return ActiveHealthChecker(
        "svc",
        ActiveHealthCheckConfig(**settings),
        b,
        clock=clock,
        rng=random.Random(seed),
        transport=httpx.MockTransport(upstream),
    )


async def rounds(checker: ActiveHealthChecker, clock: ManualClock, until: float) -> None:
    """Drive ``checker`` round by round, moving the clock to each next due time, up to ``until``."""
    while clock.now() <= until:
        delay = await checker.run_once()
        assert delay > 0
        clock.advance(delay)


def entry(checker: ActiveHealthChecker, url: str) -> dict[str, Any]:
    (found,) = [e for e in checker.as_dict()["endpoints"] if e["url"] == url]
    return found


# ------------------------------------------------------------------------------------------ settings


def test_settings_apply_globally_and_per_service_with_status_ranges() -> None:
    """A service's override merges over the global section; status ranges expand; a bad path is refused."""
    settings = MeshSettings(
        active_health_check={"interval": "2s", "path": "/ready"},
        services={"pay": {"active_health_check": {"enabled": True, "expected_statuses": ["200-204", 418]}}},
    )
    pay = settings.for_service("pay").active_health_check
    assert (pay.enabled, pay.interval, pay.path) == (True, 2.0, "/ready")
    assert pay.expected_statuses == [200, 201, 202, 203, 204, 418]
    other = settings.for_service("users").active_health_check
    assert other.enabled is False and other.expected_statuses == list(range(200, 400))
    with pytest.raises(ValidationError, match="must start with '/'"):
        MeshSettings(active_health_check={"path": "health"})
    with pytest.raises(ValidationError, match="not a status or a range"):
        MeshSettings(active_health_check={"expected_statuses": ["299-200"]})
    with pytest.raises(ValidationError, match=r"services\.pay\.active_health_check\.jitter"):
        MeshSettings(services={"pay": {"active_health_check": {"jitter": 1.5}}})


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """MESH_ACTIVE_HEALTH_CHECK__* and per-service variables set the section (lists as JSON)."""
    monkeypatch.setenv("MESH_ACTIVE_HEALTH_CHECK__ENABLED", "true")
    monkeypatch.setenv("MESH_ACTIVE_HEALTH_CHECK__EXPECTED_STATUSES", '["200-299", 404]')
    monkeypatch.setenv("MESH_SERVICES__PAY__ACTIVE_HEALTH_CHECK__UNHEALTHY_THRESHOLD", "5")
    settings = MeshSettings()
    pay = settings.for_service("pay").active_health_check
    assert pay.enabled and pay.unhealthy_threshold == 5
    assert pay.expected_statuses == [*range(200, 300), 404]


# ------------------------------------------------------------------------------------ thresholds


async def test_an_endpoint_is_marked_down_after_unhealthy_threshold_failures_in_a_row() -> None:
    """Two failures, a pass (the run starts over), then three failures: down exactly at the third."""
    clock = ManualClock()
    b = balancer(endpoints(2), clock=clock)
    upstream = Probed(clock)
    checker = checker_over(b, clock, upstream, unhealthy_threshold=3)
    bad = b.endpoints[0]
    outcomes: list[bool] = []
    for answer in (503, 503, 200, 503, 503, 503):
        upstream.answers[bad.endpoint.host] = answer
        await checker.run_once()
        outcomes.append(bad.healthy)
        clock.advance(10)
    assert outcomes == [True, True, True, True, True, False]
    assert b.endpoints[1].healthy
    status = entry(checker, bad.url)
    assert status["consecutive_failures"] == 3 and status["consecutive_passes"] == 0
    assert (status["last_result"], status["last_status"]) == ("fail", 503)
    assert status["last_error"] == "unexpected status 503"
    assert checker.failed_checks == 5


async def test_a_marked_down_endpoint_returns_after_healthy_threshold_passes_in_a_row() -> None:
    """Marked down, it needs ``healthy_threshold`` passes in a row: a failure in between starts over."""
    clock = ManualClock()
    b = balancer(endpoints(2), clock=clock)
    upstream = Probed(clock)
    checker = checker_over(b, clock, upstream, unhealthy_threshold=1, healthy_threshold=2)
    state = b.endpoints[0]
    outcomes: list[bool] = []
    for answer in (500, 200, 500, 200, 200):
        upstream.answers[state.endpoint.host] = answer
        await checker.run_once()
        outcomes.append(state.healthy)
        clock.advance(10)
    assert outcomes == [False, False, False, False, True]
    assert entry(checker, state.url)["consecutive_passes"] == 2


async def test_connect_errors_timeouts_and_unexpected_statuses_are_failures() -> None:
    """Every kind of failure counts, each with its own short error; an expected 3xx passes."""
    clock = ManualClock()
    b = balancer(endpoints(5), clock=clock)
    upstream = Probed(clock)
    hosts = [s.endpoint.host for s in b.endpoints]
    upstream.answers.update(
        {
            hosts[0]: httpx.ConnectError("connection refused"),
            hosts[1]: httpx.ReadTimeout("read timed out"),
            hosts[2]: 404,
            hosts[3]: 302,
            hosts[4]: 204,
        }
    )
    checker = checker_over(b, clock, upstream, unhealthy_threshold=1)
    await checker.run_once()
    assert [s.healthy for s in b.endpoints] == [False, False, False, True, True]
    errors = [entry(checker, s.url)["last_error"] for s in b.endpoints]
    assert errors[0] == "ConnectError: connection refused"
    assert errors[1] == "timeout: no answer within 1s"
    assert errors[2] == "unexpected status 404"
    assert errors[3:] == [None, None]


async def test_an_answer_slower_than_the_timeout_fails_the_probe() -> None:
    """A probe gets ``timeout`` for the whole answer (the clock is real here: the upstream sleeps)."""
    release = asyncio.Event()

    async def hanging(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return httpx.Response(200)

    b = balancer(endpoints(1))
    checker = ActiveHealthChecker(
        "svc",
        ActiveHealthCheckConfig(enabled=True, timeout=0.05, unhealthy_threshold=1),
        b,
        transport=httpx.MockTransport(hanging),
    )
    async with asyncio.timeout(WAIT):
        ok, status, error = await checker.probe(b.endpoints[0])
    release.set()
    assert (ok, status, error) == (False, None, "timeout: no answer within 0.05s")


async def test_probes_get_the_path_with_the_endpoints_host_and_the_mesh_user_agent() -> None:
    """Each probe is ``GET <endpoint><path>`` with ``Host`` the endpoint's and the health-check user agent."""
    clock = ManualClock()
    b = balancer([Endpoint("http://10.0.0.1:8080"), Endpoint("https://api.internal")], clock=clock)
    upstream = Probed(clock)
    checker = checker_over(b, clock, upstream, path="/health/ready?full=1")
    await checker.run_once()
    seen = {(r.method, str(r.url), r.headers["host"], r.headers["user-agent"]) for r in upstream.requests}
    assert seen == {
        ("GET", "http://10.0.0.1:8080/health/ready?full=1", "10.0.0.1:8080", USER_AGENT),
        ("GET", "https://api.internal/health/ready?full=1", "api.internal", USER_AGENT),
    }


async def test_a_passing_probe_ends_an_outlier_ejection() -> None:
    """An endpoint ejected by outlier detection is back in once an active check passes (Envoy's default)."""
    clock = ManualClock()
    b = balancer(endpoints(3), clock=clock, outlier={"consecutive_failures": 2})
    state = b.endpoints[0]
    for _ in range(2):
        b.record(state, False, 0.01)
    assert b.outlier.is_ejected(state.url)
    checker = checker_over(b, clock, Probed(clock))
    await checker.run_once()
    assert not b.outlier.is_ejected(state.url)


# -------------------------------------------------------------------------------------- schedule


async def test_without_jitter_every_endpoint_is_probed_exactly_every_interval() -> None:
    """jitter 0: first probes at once, then every ``interval`` on the dot, all endpoints together."""
    clock = ManualClock()
    b = balancer(endpoints(3), clock=clock)
    upstream = Probed(clock)
    checker = checker_over(b, clock, upstream, interval=10, jitter=0)
    await rounds(checker, clock, until=30)
    assert list(upstream.times.values()) == [[0.0, 10.0, 20.0, 30.0]] * 3


async def test_jitter_spreads_probes_as_the_seeded_rng_says() -> None:
    """Each endpoint's first probe is at ``jitter * interval * u`` (u drawn per endpoint, in order); every
    later wait is ``interval`` plus up to ``jitter`` of it: no two endpoints in lock step."""
    clock = ManualClock()
    b = balancer(endpoints(4), clock=clock)
    upstream = Probed(clock)
    checker = checker_over(b, clock, upstream, seed=42, interval=10, jitter=0.5)
    await rounds(checker, clock, until=60)
    draws = random.Random(42)
    expected_first = [5.0 * draws.random() for _ in range(4)]
    times = [upstream.times[s.endpoint.host] for s in b.endpoints]
    assert [t[0] for t in times] == pytest.approx(expected_first)
    assert len({round(t[0], 9) for t in times}) == 4
    gaps = [later - earlier for t in times for earlier, later in itertools.pairwise(t)]
    assert len(gaps) >= 12
    assert all(10.0 <= gap < 15.0 for gap in gaps)
    assert len({round(gap, 9) for gap in gaps}) == len(gaps)  # each wait drawn anew
    # The same seed gives the same schedule, to the last probe.
    clock2 = ManualClock()
    b2 = balancer(endpoints(4), clock=clock2)
    upstream2 = Probed(clock2)
    await rounds(checker_over(b2, clock2, upstream2, seed=42, interval=10, jitter=0.5), clock2, until=60)
    assert upstream2.times == upstream.times


async def test_the_background_loop_keeps_the_schedule_through_the_clock() -> None:
    """``start()`` runs the rounds on the loop, sleeping on the injected clock; ``stop()`` ends them."""
    clock = ManualClock()
    b = balancer(endpoints(2), clock=clock)
    upstream = Probed(clock)
    checker = checker_over(b, clock, upstream, interval=2, jitter=0)
    checker.start()
    try:
        await eventually(lambda: all(len(upstream.times.get(s.endpoint.host, [])) >= 4 for s in b.endpoints))
    finally:
        await checker.stop()
    assert not checker.running
    for state in b.endpoints:
        assert upstream.times[state.endpoint.host][:4] == [0.0, 2.0, 4.0, 6.0]
    count = len(upstream.requests)
    await asyncio.sleep(0.02)
    assert len(upstream.requests) == count


# ------------------------------------------------------------------------------------------ churn


async def test_endpoints_that_join_are_probed_and_those_that_leave_are_forgotten() -> None:
    """A discovery update is followed at the next round: the newcomer is probed (healthy until it fails),
    the departed endpoint's results are dropped, and if it comes back it starts afresh."""
    clock = ManualClock()
    a, gone, new = endpoints(3)
    b = balancer([a, gone], clock=clock)
    upstream = Probed(clock)
    upstream.answers[gone.host] = 503
    checker = checker_over(b, clock, upstream, unhealthy_threshold=2)
    await rounds(checker, clock, until=10)
    assert not b.endpoints[1].healthy and entry(checker, gone.url)["failed_checks"] == 2
    b.update([a, new])
    probes_of_gone = len(upstream.times[gone.host])
    await rounds(checker, clock, until=30)
    assert [e["url"] for e in checker.as_dict()["endpoints"]] == [a.url, new.url]
    assert len(upstream.times[gone.host]) == probes_of_gone
    assert upstream.times[new.host][0] == 20.0  # noticed at the next round, probed at once (jitter 0)
    assert entry(checker, new.url)["checks"] == 2
    b.update([a, new, gone])  # back, as a fresh endpoint: healthy, no old results
    upstream.answers[gone.host] = 200
    await checker.run_once()
    back = entry(checker, gone.url)
    assert back["healthy"] is True
    assert (back["checks"], back["failed_checks"], back["consecutive_failures"]) == (1, 0, 0)
    assert checker.failed_checks == 2  # the service's total keeps what happened


# ----------------------------------------------------------------------------------- in the mesh


async def test_the_mesh_starts_checkers_per_policy_and_shows_them_in_status_and_metrics() -> None:
    """Only services whose policy enables checks get a checker; a service first seen while running gets one
    at once; failures show in get_metrics() (/mesh/status) and mesh_active_health_check_failures_total."""
    failing = {"10.0.0.2"}

    def upstream(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503 if request.url.host in failing else 200)

    settings = MeshSettings(
        discovery={
            "endpoints": {"svc": ["http://10.0.0.1:8080", "http://10.0.0.2:8080"], "plain": ["http://10.0.0.3"]}
        },
        services={
            "svc": {"active_health_check": {"enabled": True, "interval": 0.01, "unhealthy_threshold": 2}},
            "late": {"active_health_check": {"enabled": True, "interval": 0.01}},
        },
    )
    mesh = Mesh(settings, transport=httpx.MockTransport(upstream))
    client = mesh.client
    services = client._rt.services
    async with client:
        svc = services.get("svc")
        await eventually(lambda: not svc.balancer.endpoints[1].healthy)
        assert svc.balancer.endpoints[0].healthy
        assert services.get("plain").active_check is None
        services.publish("late", [Endpoint("http://10.0.0.4:8080")])
        late = services.get("late").active_check
        assert late is not None and late.running
        status = json.loads(json.dumps(client.get_metrics()))  # JSON, as /mesh/status sends it
        checks = status["active_health_checks"]
        assert set(checks) == {"svc", "late"}
        down = next(e for e in checks["svc"]["endpoints"] if e["url"] == "http://10.0.0.2:8080")
        assert down["healthy"] is False and down["last_error"] == "unexpected status 503"
        assert down["consecutive_failures"] >= 2
        failures = checks["svc"]["failed_checks"]
        assert failures >= 2
        balancer_view = status["load_balancer"]["svc"]["endpoints"]
        assert [e["healthy"] for e in balancer_view] == [True, False]
        checker = svc.active_check
        assert checker is not None
    assert not checker.running and not late.running
    text = generate_latest(mesh.registry).decode()
    assert f'mesh_active_health_check_failures_total{{service="svc"}} {float(checker.failed_checks)}' in text
    assert 'mesh_active_health_check_failures_total{service="plain"} 0.0' in text


async def test_marking_down_and_back_up_is_logged_once_each(caplog: pytest.LogCaptureFixture) -> None:
    """One warning when an endpoint is marked down, one info line when it is back: not one per probe."""
    clock = ManualClock()
    b = balancer(endpoints(2), clock=clock)
    upstream = Probed(clock)
    checker = checker_over(b, clock, upstream, unhealthy_threshold=2, healthy_threshold=1)
    host = b.endpoints[0].endpoint.host
    with caplog.at_level(logging.DEBUG, logger="fastapi_mesh.health"):
        upstream.answers[host] = 500
        await rounds(checker, clock, until=50)
        upstream.answers[host] = 200
        await rounds(checker, clock, until=100)
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "fastapi_mesh.health"]
    assert lines == [
        (
            "WARNING",
            f"endpoint {b.endpoints[0].url} of 'svc' marked down: 2 active health checks failed in a row "
            "(unexpected status 500)",
        ),
        ("INFO", f"endpoint {b.endpoints[0].url} of 'svc' is back: 1 active health checks passed in a row"),
    ]


# -------------------------------------------------------------------------------- real replicas


class HealthReplica(Replica):
    """A replica whose health path can fail on its own, while every other path answers as its mode says."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.health_status = 200

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == HEALTH_PATH:
            self.received[(scope["method"], scope["path"])] += 1
            self.headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
            await send({"type": "http.response.start", "status": self.health_status, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await super().__call__(scope, receive, send)

    @property
    def probes(self) -> int:
        return self.received[("GET", HEALTH_PATH)]

    @property
    def calls(self) -> int:
        return self.received[("GET", "/api/users")]


async def health_replicas(fleet: Fleet, count: int) -> list[HealthReplica]:
    replicas = [HealthReplica(f"h{i + 1}") for i in range(count)]
    fleet.replicas.extend(replicas)  # the fixture stops them
    await asyncio.gather(*(r.start() for r in replicas))
    return replicas


def checked_settings(urls: list[str], **check: Any) -> MeshSettings:
    """No retries and no outlier detection: only the active checks can keep calls off a bad replica."""
    return settings_for(
        urls,
        retry={"max_retries": 0},
        outlier_detection={"enabled": False},
        active_health_check={
            "enabled": True,
            "path": HEALTH_PATH,
            "interval": 0.02,
            "timeout": 0.5,
            "unhealthy_threshold": 2,
            "healthy_threshold": 2,
            "jitter": 0.2,
            **check,
        },
    )


async def test_a_replica_failing_its_health_path_is_taken_out_before_user_calls_fail(fleet: Fleet) -> None:
    """The health path fails first: the replica is marked down while it still serves. When it then fails
    user calls too, none reaches it (no retries, no outlier detection): 60 calls, 0 failures. Its checks
    pass again: it is back, and takes its share of calls."""
    bad, *good = await health_replicas(fleet, 3)
    async with MeshClient(checked_settings([r.url for r in (bad, *good)])) as client:
        state = client._rt.services.get("svc").balancer.endpoints[0]
        assert state.url == bad.url
        await eventually(lambda: bad.probes >= 2)
        assert bad.headers[-1]["user-agent"] == USER_AGENT
        bad.health_status = 503
        await eventually(lambda: not state.healthy)
        bad.mode, bad.status_code = "status", 500
        calls_before = bad.calls
        responses = [await client.get("svc", "/api/users") for _ in range(60)]
        assert [r.status_code for r in responses] == [200] * 60
        assert bad.calls == calls_before
        assert {r.json()["replica"] for r in responses} == {"h2", "h3"}
        bad.mode, bad.health_status = "ok", 200
        await eventually(lambda: state.healthy)
        names = [(await client.get("svc", "/api/users")).json()["replica"] for _ in range(30)]
    assert sorted(names.count(n) for n in ("h1", "h2", "h3")) == [10, 10, 10]


async def test_user_calls_stop_going_to_a_replica_whose_health_path_fails(fleet: Fleet) -> None:
    """While calls run, a replica's health path starts failing (its user path still answers): after it is
    marked down it gets no more calls; once its checks pass it gets calls again."""
    replicas = await health_replicas(fleet, 3)
    bad = replicas[0]
    async with MeshClient(checked_settings([r.url for r in replicas])) as client:
        state = client._rt.services.get("svc").balancer.endpoints[0]
        stop = asyncio.Event()
        failures: list[int] = []

        async def traffic() -> None:
            while not stop.is_set():
                response = await client.get("svc", "/api/users")
                if response.status_code != 200:
                    failures.append(response.status_code)
                await asyncio.sleep(0.001)

        task = asyncio.create_task(traffic())
        try:
            await eventually(lambda: bad.calls >= 5)
            bad.health_status = 503
            await eventually(lambda: not state.healthy)
            marked_at = bad.calls
            before_others = sum(r.calls for r in replicas[1:])
            await eventually(lambda: sum(r.calls for r in replicas[1:]) >= before_others + 60)
            assert bad.calls <= marked_at + 1  # at most one call already on its way when it was marked
            bad.health_status = 200
            await eventually(lambda: state.healthy)
            back_at = bad.calls
            await eventually(lambda: bad.calls >= back_at + 5)
        finally:
            stop.set()
            await asyncio.wait_for(task, WAIT)
    assert failures == []


async def test_discovery_updates_change_what_real_replicas_get_probed(fleet: Fleet) -> None:
    """A replica that leaves the set stops getting probes; one that joins starts getting them."""
    first, leaving, joining = await health_replicas(fleet, 3)
    async with MeshClient(checked_settings([first.url, leaving.url])) as client:
        await eventually(lambda: leaving.probes >= 2 and first.probes >= 2)
        assert joining.probes == 0
        client._rt.services.publish("svc", [Endpoint(first.url), Endpoint(joining.url)])
        left_at = leaving.probes
        await eventually(lambda: joining.probes >= 5)
        assert leaving.probes <= left_at + 1  # one probe may have been under way
        checks = client.get_metrics()["active_health_checks"]["svc"]
        assert [e["url"] for e in checks["endpoints"]] == [first.url, joining.url]
    await asyncio.sleep(0.05)  # a probe cancelled at close may still be arriving
    stopped_at = (first.probes, joining.probes)
    await asyncio.sleep(0.1)
    assert (first.probes, joining.probes) == stopped_at  # closing the client stops the checks


async def test_the_checker_of_a_forgotten_unknown_service_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    """With checks on globally, names nobody configured get checkers too; when the service table forgets such a
    name (it keeps a bounded number), its checker stops with it."""
    monkeypatch.setattr("fastapi_mesh.services.MAX_UNKNOWN_SERVICES", 2)
    settings = MeshSettings(active_health_check={"enabled": True})
    async with MeshClient(settings, transport=httpx.MockTransport(lambda request: httpx.Response(200))) as client:
        services = client._rt.services
        checkers = [services.get(name).active_check for name in ("typo-1", "typo-2", "typo-3")]
        assert all(c is not None for c in checkers)
        first = checkers[0]
        assert first is not None
        await eventually(lambda: not first.running)
        assert "typo-1" not in services.states
        assert all(c is not None and c.running for c in checkers[1:])
