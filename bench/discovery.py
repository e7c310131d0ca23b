"""What an endpoint-set update costs, and what a call right after one costs.

- **Applying an update**: ``Services.publish`` (what every backend calls) with a set of 1,000
  endpoints, for four kinds of answer: the same set again (a DNS or Consul answer that changed nothing),
  the same set in another order, one endpoint replaced, and every endpoint replaced. Each update is timed
  alone; the figure is the median over ``ROUNDS`` interleaved rounds. "Kept" counts the endpoint states that
  survived the update as the same objects (in-flight counts and latency windows intact): only what changed is
  rebuilt.
- **A call right after an update**: ``MeshClient.get`` on ``httpx.MockTransport`` to a service of 10
  endpoints, timed call by call: with a stable set, with the same set published again before every call, and
  with one endpoint replaced before every call (the publish itself is not timed). Interleaved, median of
  per-round means; the Python function calls one call makes are counted with ``sys.setprofile``.

Targets: an update of 1,000 endpoints < 5 ms and touching only what changed; a call after an update costs no
more than a call to a stable service (ratio <= 1.10).
"""

from __future__ import annotations

import asyncio
import gc
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from bench.profiled import python_calls_per_call
from bench.rounds import in_turn
from fastapi_mesh import MeshClient, MeshSettings
from fastapi_mesh.clock import MonotonicClock
from fastapi_mesh.discovery import Endpoint, StaticDiscovery
from fastapi_mesh.events import EventBus
from fastapi_mesh.services import Services

SIZE = 1_000
ROUNDS = 30
CALL_ROUNDS = 15
CALLS_PER_ROUND = 400
KINDS = ("unchanged", "reordered", "one replaced", "all replaced")


def _endpoints(n: int, base: int = 0) -> list[Endpoint]:
    return [Endpoint(f"http://10.{(i + base) >> 8 & 255}.{(i + base) & 255}.1:8080") for i in range(n)]


def _update_once(kind: str, size: int, rng: random.Random) -> tuple[float, int]:
    """Seconds for one publish of ``kind`` onto a registry holding ``size`` endpoints; states kept."""
    registry = Services(MeshSettings(), random.Random(1), MonotonicClock(), EventBus())
    first = _endpoints(size)
    registry.publish("svc", first)
    before = {state.url: state for state in registry.get("svc").balancer.endpoints}
    if kind == "unchanged":
        new = list(_endpoints(size))
    elif kind == "reordered":
        new = list(first)
        rng.shuffle(new)
    elif kind == "one replaced":
        new = [*first[1:], _endpoints(1, base=size + 7)[0]]
    else:
        new = _endpoints(size, base=size)
    start = time.perf_counter()
    registry.publish("svc", new)
    elapsed = time.perf_counter() - start
    after = registry.get("svc").balancer.endpoints
    kept = sum(1 for state in after if before.get(state.url) is state)
    return elapsed, kept


def run_updates(size: int = SIZE, rounds: int = ROUNDS) -> dict[str, dict[str, float]]:
    """``{kind: {"update_s": median seconds, "kept": endpoint states kept}}``."""
    rng = random.Random(0)
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    kept: dict[str, int] = {}
    order = list(KINDS)
    for _ in range(rounds):
        rng.shuffle(order)
        for kind in order:
            gc.collect()
            elapsed, kept[kind] = _update_once(kind, size, rng)
            times[kind].append(elapsed)
    return {kind: {"update_s": statistics.median(times[kind]), "kept": kept[kind]} for kind in KINDS}


#: Row label -> what happens before each call: nothing, the same set published again, or a changed set.
CALL_VARIANTS = ("stable", "same set republished", "one endpoint replaced")


def _before_each_call(discovery: StaticDiscovery, variant: str) -> Callable[[int], None]:
    """What ``variant`` does before call ``i``: nothing, the same set published again, or a set with one
    endpoint replaced. The sets are built once (two, used in turn): what is timed is the call, not building
    answers."""
    base = _endpoints(10)
    if variant == "one endpoint replaced":
        sets = [[*base[1:], replacement] for replacement in _endpoints(2, base=100)]
    elif variant == "same set republished":
        sets = [base, list(base)]
    else:
        return lambda i: None
    return lambda i: discovery.set_endpoints("svc", sets[i % 2])


async def _call_round(client: MeshClient, discovery: StaticDiscovery, variant: str, calls: int) -> float:
    """Mean seconds per call over one round of ``variant`` (the publish before each call is not timed)."""
    before = _before_each_call(discovery, variant)
    total = 0.0
    for i in range(calls):
        before(i)
        start = time.perf_counter()
        response = await client.get("svc", "/")
        total += time.perf_counter() - start
        assert response.status_code == 200
    return total / calls


async def _python_calls_per_call(client: MeshClient, discovery: StaticDiscovery, variant: str) -> float:
    """Python function calls one ``client.get`` makes: machine-independent evidence of whether a call after
    an update does any extra work (the publish before each call is not counted)."""
    before = _before_each_call(discovery, variant)

    def call(i: int) -> Awaitable[httpx.Response]:
        before(i)
        return client.get("svc", "/")

    return await python_calls_per_call(call, 50)


async def run_calls(rounds: int = CALL_ROUNDS, calls: int = CALLS_PER_ROUND) -> dict[str, dict[str, float]]:
    """``{variant: {"call_s": seconds per call (median of round means), "python_calls": per call}}``."""
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"ok": True}))
    discovery = StaticDiscovery({"svc": _endpoints(10)})
    settings = MeshSettings(retry={"max_elapsed": None})
    times: dict[str, list[float]] = {variant: [] for variant in CALL_VARIANTS}
    counts: dict[str, float] = {}
    async with MeshClient(settings, transport=transport, discovery=discovery) as client:
        await _call_round(client, discovery, "stable", calls // 4)  # warm up
        for variant in CALL_VARIANTS:
            discovery.set_endpoints("svc", _endpoints(10))
            counts[variant] = await _python_calls_per_call(client, discovery, variant)
        for round_ in range(rounds):
            for variant in in_turn(CALL_VARIANTS, round_):
                discovery.set_endpoints("svc", _endpoints(10))
                times[variant].append(await _call_round(client, discovery, variant, calls))
    return {
        variant: {"call_s": statistics.median(times[variant]), "python_calls": counts[variant]}
        for variant in CALL_VARIANTS
    }


def run(quick: bool = False) -> dict[str, Any]:
    if quick:
        return {"updates": run_updates(rounds=3), "calls": asyncio.run(run_calls(rounds=3, calls=100)), "size": SIZE}
    return {"updates": run_updates(), "calls": asyncio.run(run_calls()), "size": SIZE}


def report(results: dict[str, Any]) -> str:
    size = results["size"]
    lines = [
        f"| update of {size:,} endpoints | time to apply | endpoint states kept |",
        "|---|---:|---:|",
    ]
    for kind, row in results["updates"].items():
        lines.append(f"| {kind} | {row['update_s'] * 1e3:.2f} ms | {row['kept']:,} of {size:,} |")
    calls = results["calls"]
    stable = calls["stable"]["call_s"]
    lines += [
        "",
        "| call to a 10-endpoint service, before each call | per call | ratio | Python calls per call |",
        "|---|---:|---:|---:|",
    ]
    for variant, row in calls.items():
        lines.append(
            f"| {variant} | {row['call_s'] * 1e6:.1f} µs | {row['call_s'] / stable:.2f}x | {row['python_calls']:.0f} |"
        )
    return "\n".join(lines)
