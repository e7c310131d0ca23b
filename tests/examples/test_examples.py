"""The seed's seven examples (examples/), each run as a script and each driven against real uvicorn replicas
(the ``fleet`` fixture) with faults switched on, asserting what the example claims to show."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from tests.examples.conftest import EXAMPLES, load_example
from tests.upstreams import Fleet, Replica, unused_port

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

SCRIPT_TIMEOUT = 60.0
#: Per example: a line its output must contain.
SCRIPTS = {
    "01_basic_setup": "answered by (round-robin): user-service-1, user-service-2, user-service-3",
    "02_resilient_requests": "payment-service after 3 failures: CircuitOpen: open",
    "03_fastapi_integration": "with user-service down: {'users': [], 'degraded': True}",
    "04_event_monitoring": "'request-failure': 2",
    "05_custom_health_checks": "database down too: {'http': 503, 'status': 'unhealthy'",
    "06_multi_service_orchestration": "degraded: ['recommendation-service']",
    "07_canary_deployment": "split {'v1': 0, 'v2': 100}: 100% of calls on v2",
}


def _urls(replicas: list[Replica]) -> list[str]:
    return [replica.url for replica in replicas]


def _down() -> str:
    return f"http://127.0.0.1:{unused_port()}"


def test_every_example_runs_as_a_script() -> None:
    """`python examples/NN_name.py` exits 0 and prints what it demonstrates (all seven run at once)."""
    assert sorted(p.stem for p in EXAMPLES.glob("0*.py")) == sorted(SCRIPTS)
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MESH_")}
    processes = {
        name: subprocess.Popen(
            [sys.executable, str(EXAMPLES / f"{name}.py")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for name in SCRIPTS
    }
    failures = []
    for name, process in processes.items():
        try:
            out, err = process.communicate(timeout=SCRIPT_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        if process.returncode != 0 or SCRIPTS[name] not in out:
            failures.append(f"{name}: exit {process.returncode}\n{out}\n{err[-2000:]}")
    assert not failures, "\n\n".join(failures)


async def test_basic_setup_balances_over_every_replica(fleet: Fleet) -> None:
    replicas = await fleet.start(3)
    result = await load_example("01_basic_setup").run({"user-service": _urls(replicas)})
    assert result["replicas"] == ["r1", "r2", "r3", "r1", "r2", "r3"]
    assert result["requests"] == {"total": 6, "successes": 6, "failures": 0}


async def test_resilient_requests_retry_time_out_fall_back_and_open_the_breaker(fleet: Fleet) -> None:
    users = await fleet.start(3)
    users[0].mode = "status"
    (report,) = await fleet.start(1, prefix="report")
    report.mode = "hang"
    endpoints = {"user-service": _urls(users), "report-service": [report.url], "payment-service": [_down()]}
    result = await load_example("02_resilient_requests").run(endpoints)
    assert result["statuses"] == [200] * 9
    assert result["retries"] == users[0].received[("GET", "/api/users")] == 3
    assert result["deadline"] == "DeadlineExceeded"
    assert result["fallbacks"] == [{"balance": None, "cached": True}] * 3
    assert result["breaker"] == "CircuitOpen: open"


async def test_fastapi_integration_serves_probes_and_falls_back(fleet: Fleet) -> None:
    replicas = await fleet.start(2)

    async def stop_all() -> None:
        await asyncio.gather(*(replica.stop() for replica in replicas))

    example = load_example("03_fastapi_integration")
    result = await example.run({"user-service": _urls(replicas)}, break_upstream=stop_all)
    assert result["probes"] == {"/health/live": 200, "/health/ready": 200}
    assert result["before"]["degraded"] is False and result["before"]["users"]["replica"] in {"r1", "r2"}
    assert result["after"] == {"users": [], "degraded": True}
    assert 'mesh_upstream_requests_total{outcome="success",service="user-service"} 1.0' in result["metrics"]


async def test_event_monitoring_sees_successes_failures_and_exhausted_retries(fleet: Fleet) -> None:
    users = await fleet.start(2)
    users[0].mode = "status"
    orders = await fleet.start(2, prefix="order")
    for replica in orders:
        replica.mode = "status"
    endpoints = {"user-service": _urls(users), "order-service": _urls(orders)}
    result = await load_example("04_event_monitoring").run(endpoints)
    assert result["events"] == {"request-success": 6, "request-failure": 2, "retry": 3 + 4}
    assert len(result["max_reached"]) == 2 and all(m.startswith("order-service: ") for m in result["max_reached"])
    assert result["requests"]["order-service"] == {"total": 2, "successes": 0, "failures": 2}
    assert result["retries"] == {"user-service": 3, "order-service": 4}


async def test_custom_health_checks_degrade_then_fail_readiness(fleet: Fleet) -> None:
    (replica,) = await fleet.start(1)
    example = load_example("05_custom_health_checks")
    answers = await example.run({"user-service": [replica.url]}, break_upstream=replica.stop)
    healthy, degraded, unhealthy, liveness = answers
    assert healthy == {"http": 200, "status": "healthy", "checks": {"database": "pass", "user-service": "pass"}}
    assert degraded == {"http": 200, "status": "degraded", "checks": {"database": "pass", "user-service": "fail"}}
    assert unhealthy == {"http": 503, "status": "unhealthy", "checks": {"database": "fail", "user-service": "fail"}}
    assert liveness == {"liveness": 200}


async def test_orchestration_calls_services_concurrently_and_degrades_per_section(fleet: Fleet) -> None:
    """Both upstreams hold their answers until each has received its request: only concurrent calls finish."""
    (users,) = await fleet.start(1, prefix="user")
    (orders,) = await fleet.start(1, prefix="order")
    for replica in (users, orders):
        replica.mode = "hang"
    endpoints = {"user-service": [users.url], "order-service": [orders.url], "recommendation-service": [_down()]}
    page = asyncio.create_task(load_example("06_multi_service_orchestration").run(endpoints))
    async with asyncio.timeout(5):
        while not (users.total and orders.total):
            await asyncio.sleep(0.005)
    users.release.set()
    orders.release.set()
    result = await asyncio.wait_for(page, timeout=5)
    assert result["sections"]["user-service"]["replica"] == "user1"
    assert result["sections"]["order-service"]["query"] == "user=1"
    assert result["sections"]["recommendation-service"] == []
    assert result["degraded"] == ["recommendation-service"]


async def test_canary_splits_by_weight_and_routes_testers_to_v2(fleet: Fleet) -> None:
    replicas = await fleet.start(4)
    versions = ["v1", "v1", "v1", "v2"]
    endpoints = {
        "user-service": [
            {"url": r.url, "metadata": {"version": v}} for r, v in zip(replicas, versions, strict=True)
        ]
    }
    stages = await load_example("07_canary_deployment").run(endpoints, seed=11)
    shares = [stage["v2_share"] for stage in stages]
    assert 0.04 <= shares[0] <= 0.18
    assert 0.38 <= shares[1] <= 0.62
    assert shares[2] == 1.0
    assert all(stage["tester"] == ["v2"] for stage in stages)
    assert replicas[3].total >= 200  # the v2 replica took the whole last stage


def test_the_upstreams_module_examples_hold() -> None:
    import doctest

    import demo_upstreams

    result = doctest.testmod(demo_upstreams)
    assert result.attempted > 0 and result.failed == 0
