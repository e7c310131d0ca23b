"""6. Multi-service orchestration: call several services at once and degrade per section.

    python examples/06_multi_service_orchestration.py

One page needs ``user-service``, ``order-service`` and ``recommendation-service``. The three calls run
concurrently (``asyncio.gather``), so the page costs the slowest call, not the sum. Each has its own
``fallback=``: a service that fails (here recommendations, which is down) fills its section with a
default instead of failing the page, and the answer says which sections are degraded. A deadline bounds
the whole page.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from demo_upstreams import DemoFleet, unused_url

from fastapi_mesh import MeshClient, MeshSettings

#: Per service: the path of its section, and what the section shows when the service cannot answer.
SECTIONS: dict[str, tuple[str, Any]] = {
    "user-service": ("/api/users/1", None),
    "order-service": ("/api/orders?user=1", []),
    "recommendation-service": ("/api/recommendations?user=1", []),
}


async def dashboard(client: MeshClient, *, deadline: float = 2.0) -> dict[str, Any]:
    """The page: every section fetched concurrently within ``deadline``; failures replaced by defaults."""

    async def section(service: str) -> tuple[str, Any, bool]:
        path, default = SECTIONS[service]
        response = await client.get(service, path, deadline=deadline, fallback={"fallback": default})
        body = response.json()
        if response.extensions.get("mesh_fallback"):
            return service, body["fallback"], True
        response.raise_for_status()
        return service, body, False

    results = await asyncio.gather(*(section(service) for service in SECTIONS))
    return {
        "sections": {service: value for service, value, _ in results},
        "degraded": sorted(service for service, _, degraded in results if degraded),
    }


async def run(endpoints: Mapping[str, list[str]]) -> dict[str, Any]:
    settings = MeshSettings(
        service_name="web-bff",
        discovery={"endpoints": dict(endpoints)},
        retry={"max_retries": 1, "initial_delay": "10ms", "max_delay": "20ms"},
    )
    async with MeshClient(settings) as client:
        start = time.perf_counter()
        page = await dashboard(client)
        page["elapsed_s"] = round(time.perf_counter() - start, 3)
    return page


async def main() -> None:
    async with DemoFleet({"user-service": 2, "order-service": 2}) as fleet:
        for replica in fleet.replicas["user-service"] + fleet.replicas["order-service"]:
            replica.delay = 0.3  # each takes 0.3 s: together still about 0.3 s
        endpoints = {**fleet.endpoints(), "recommendation-service": [unused_url()]}
        page = await run(endpoints)
    for service, value in page["sections"].items():
        print(f"{service}: {value}")
    print("degraded:", page["degraded"], "| elapsed:", page["elapsed_s"], "s")


if __name__ == "__main__":
    asyncio.run(main())
