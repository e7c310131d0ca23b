"""7. Canary deployment: send 10% of calls to v2, testers always to v2, then promote step by step.

    python examples/07_canary_deployment.py

Endpoints carry ``metadata.version`` (from Consul's service meta ``version``, or given with static
endpoints as here; ``response.url`` tells which endpoint answered). ``services.<name>.routing`` splits
calls between the subsets by weight, and a rule sends calls with ``x-canary: always`` to v2 whatever the
split. A stage is a settings change: 90/10, then 50/50, then 0/100. In Istio mode the same ``routing``
settings become the VirtualService's weights (``fastapi-mesh render istio``).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Mapping
from typing import Any

import httpx
from demo_upstreams import DemoFleet

from fastapi_mesh import MeshClient, MeshSettings

STAGES = ({"v1": 90, "v2": 10}, {"v1": 50, "v2": 50}, {"v1": 0, "v2": 100})
CALLS = 200
CANARY_RULE = {"match": {"headers": {"x-canary": "always"}}, "subset": "v2"}


async def stage(endpoints: Mapping[str, list[Any]], split: dict[str, int], *, seed: int) -> dict[str, Any]:
    """``CALLS`` calls under one split; the share of each version, and where a tester's calls went."""
    settings = MeshSettings(
        service_name="web",
        discovery={"endpoints": dict(endpoints)},
        services={"user-service": {"routing": {"split": split, "rules": [CANARY_RULE]}}},
    )
    version_of: dict[str, str] = {e["url"]: e["metadata"]["version"] for e in endpoints["user-service"]}

    def version(response: httpx.Response) -> str:  # response.url is the endpoint that answered
        return version_of[f"{response.url.scheme}://{response.url.netloc.decode()}"]

    async with MeshClient(settings, rng=random.Random(seed)) as client:
        versions: Counter[str] = Counter()
        for _ in range(CALLS):
            versions[version(await client.get("user-service", "/api/users"))] += 1
        tester = {version(await client.get("user-service", "/api/users", headers={"x-canary": "always"}))}
    return {"split": split, "v2_share": versions["v2"] / CALLS, "tester": sorted(tester)}


async def run(endpoints: Mapping[str, list[Any]], *, seed: int = 7) -> list[dict[str, Any]]:
    return [await stage(endpoints, split, seed=seed) for split in STAGES]


async def main() -> None:
    async with DemoFleet({"user-service": ["v1", "v1", "v1", "v2"]}) as fleet:
        stages = await run(fleet.endpoints(with_versions=True))
    for result in stages:
        share, tester = result["v2_share"], result["tester"]
        print(f"split {result['split']}: {share:.0%} of calls on v2; x-canary callers on {tester}")


if __name__ == "__main__":
    asyncio.run(main())
