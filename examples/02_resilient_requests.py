"""2. Resilient requests: retries around a failing replica, a deadline, a fallback, an open circuit.

    python examples/02_resilient_requests.py

- ``user-service`` has one replica answering 503: idempotent calls are retried on another replica, so
  every call succeeds (``retry.max_retries``, ``retry.retry_on_status``).
- ``report-service`` is slow: ``deadline=`` bounds the whole call, retries included (``DeadlineExceeded``).
- ``payment-service`` is down: ``fallback=`` answers instead, and after ``circuit_breaker.failure_threshold``
  failures its breaker opens, so later calls fail at once (``CircuitOpen``) without touching the network.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from demo_upstreams import DemoFleet, unused_url

from fastapi_mesh import CircuitOpen, DeadlineExceeded, MeshClient, MeshError, MeshSettings

SETTINGS: dict[str, Any] = {
    "retry": {"max_retries": 2, "initial_delay": "10ms", "max_delay": "50ms"},
    "circuit_breaker": {"failure_threshold": 3, "sliding_window_size": 10, "reset_timeout": "30s"},
    "outlier_detection": {"enabled": False},  # keep the failing replica in: the retries are what shows here
}


async def run(endpoints: Mapping[str, list[str]]) -> dict[str, Any]:
    settings = MeshSettings(service_name="resilient-demo", discovery={"endpoints": dict(endpoints)}, **SETTINGS)
    async with MeshClient(settings) as client:
        statuses = [(await client.get("user-service", "/api/users")).status_code for _ in range(9)]
        retries = client.get_metrics()["retry"]["user-service"]["retries"]

        try:
            await client.get("report-service", "/api/report", deadline=0.3)
            deadline = "answered"
        except DeadlineExceeded as exc:
            deadline = type(exc).__name__

        fallbacks = []
        for _ in range(3):
            response = await client.get("payment-service", "/api/balance", fallback={"balance": None, "cached": True})
            fallbacks.append(response.json())
        try:
            await client.get("payment-service", "/api/balance")
            breaker = "closed"
        except CircuitOpen as exc:
            breaker = f"{type(exc).__name__}: {client.circuit_breaker('payment-service').state}"
        except MeshError as exc:
            breaker = type(exc).__name__
    return {"statuses": statuses, "retries": retries, "deadline": deadline, "fallbacks": fallbacks, "breaker": breaker}


async def main() -> None:
    async with DemoFleet({"user-service": 3, "report-service": 1}) as fleet:
        fleet.replicas["user-service"][0].status = 503
        fleet.replicas["report-service"][0].delay = 1.0
        endpoints = {**fleet.endpoints(), "payment-service": [unused_url()]}
        result = await run(endpoints)
    print("user-service statuses:", result["statuses"], f"({result['retries']} retries)")
    print("slow report-service with deadline=0.3:", result["deadline"])
    print("payment-service fallbacks:", result["fallbacks"])
    print("payment-service after 3 failures:", result["breaker"])


if __name__ == "__main__":
    asyncio.run(main())
