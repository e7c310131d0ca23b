"""1. Basic setup: a mesh client for one service, a first call, and what the mesh saw.

    python examples/01_basic_setup.py

The seed's ``createServiceMeshClient("my-service")`` + ``initialize()``, in Python. Three local
``user-service`` replicas stand in for the real ones; in a cluster the endpoints come from discovery
(``MESH_DISCOVERY__BACKEND=kubernetes``, see docs/deployment.md) instead of ``discovery.endpoints``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from demo_upstreams import DemoFleet

from fastapi_mesh import MeshSettings, create_service_mesh_client


async def run(endpoints: Mapping[str, list[str]]) -> dict[str, Any]:
    """Six calls to ``user-service``; returns the first answer, the replicas that answered, the counters."""
    settings = MeshSettings(service_name="my-service", discovery={"endpoints": dict(endpoints)})
    client = create_service_mesh_client("my-service", settings)
    await client.initialize()
    try:
        answers = []
        for _ in range(6):
            response = await client.get("user-service", "/api/users")
            response.raise_for_status()  # an httpx.Response, as httpx gives it
            answers.append(response.json())
        metrics = client.get_metrics()
    finally:
        await client.aclose()
    return {
        "first": answers[0],
        "replicas": [answer["replica"] for answer in answers],
        "requests": metrics["requests"]["user-service"],
        "strategy": metrics["load_balancer"]["user-service"]["strategy"],
    }


async def main() -> None:
    async with DemoFleet({"user-service": 3}) as fleet:
        result = await run(fleet.endpoints())
    print("first answer:", result["first"])
    print(f"answered by ({result['strategy']}):", ", ".join(result["replicas"]))
    print("requests:", result["requests"])


if __name__ == "__main__":
    asyncio.run(main())
