"""4. Event monitoring: subscribe to the mesh's events and read its metrics.

    python examples/04_event_monitoring.py

``client.on(name, handler)`` takes sync or async handlers; a handler that raises is logged, never breaks
a call. The events: ``request-success`` and ``request-failure`` (a ``RequestEvent``: service, endpoint,
status, duration, attempts), ``service-mesh:retry:attempt`` and ``service-mesh:retry:max-reached`` (a
``RetryEvent``). ``get_metrics()`` is what ``/mesh/status`` shows; ``/metrics`` has the Prometheus series.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping
from typing import Any

from demo_upstreams import DemoFleet

from fastapi_mesh import MeshClient, MeshSettings, RequestEvent, RetryEvent


async def run(endpoints: Mapping[str, list[str]]) -> dict[str, Any]:
    settings = MeshSettings(
        service_name="monitoring-demo",
        discovery={"endpoints": dict(endpoints)},
        retry={"max_retries": 2, "initial_delay": "10ms", "max_delay": "20ms"},
        outlier_detection={"enabled": False},
    )
    seen: Counter[str] = Counter()
    slowest: list[float] = []
    exhausted: list[str] = []

    async with MeshClient(settings) as client:

        def on_success(event: RequestEvent) -> None:
            seen["request-success"] += 1
            slowest.append(event.duration_s)

        def on_failure(event: RequestEvent) -> None:
            seen["request-failure"] += 1

        async def on_retry(event: RetryEvent) -> None:  # async handlers run as tasks of their own
            seen["retry"] += 1

        def on_max_reached(event: RetryEvent) -> None:
            exhausted.append(f"{event.service}: {event.reason}")

        client.on("request-success", on_success)
        client.on("request-failure", on_failure)
        client.on("service-mesh:retry:attempt", on_retry)
        client.on("service-mesh:retry:max-reached", on_max_reached)

        for _ in range(6):
            await client.get("user-service", "/api/users")
        for _ in range(2):
            await client.get("order-service", "/api/orders")  # every replica answers 503
        await asyncio.sleep(0)  # let the async handlers run
        metrics = client.get_metrics()
    return {
        "events": dict(seen),
        "max_reached": exhausted,
        "slowest_ms": round(max(slowest) * 1000, 1),
        "requests": metrics["requests"],
        "retries": {name: m["retries"] for name, m in metrics["retry"].items()},
    }


async def main() -> None:
    async with DemoFleet({"user-service": 2, "order-service": 2}) as fleet:
        fleet.replicas["user-service"][0].status = 503
        for replica in fleet.replicas["order-service"]:
            replica.status = 503
        result = await run(fleet.endpoints())
    for key, value in result.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    asyncio.run(main())
