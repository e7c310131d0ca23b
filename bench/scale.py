"""What a call costs, and what the mesh holds, as a gateway grows: 1, 10 and 200 upstream services, and 1, 100
and 1,000 distinct request paths.

Every upstream service has 3 endpoints (``discovery.endpoints``), and every call goes through
``MeshClient(settings, transport=mock).get(service, path)`` on one ``httpx.MockTransport`` (the development
preset; as in ``bench.overhead``). With N services and P paths, a gateway's traffic is max(N, P) distinct
(service, path) pairs, the k-th being service k mod N with path k mod P: every service and every path is called,
and with P >= N each path belongs to one service (200 services and 1,000 paths: 5 paths per service). Calls
pick a pair at random.

- **Per call**: CPU time of the process (``time.process_time``) per call over ``CALLS_PER_ROUND`` calls, for
  every (N, P) in interleaved rounds, each on a client of its own that has made every call of its round
  once before (so what a gateway keeps between calls, it already has); the figure is the median over
  ``ROUNDS`` rounds, with its ratio to 1 service and 1 path. The Python function calls one call makes are
  counted with ``sys.setprofile`` (machine-independent: a flat count means the same code runs at every
  size).
- **Memory per service**: ``tracemalloc`` around building a client of N services, starting it (discovery
  publishes the endpoints) and calling every service once: what it holds then, per service, and what each
  service beyond the first adds. Only the mesh's state is counted: on a mock transport there are no sockets
  or connection pools (a real connection layer adds a pool per endpoint, with its connections).
- **Distinct paths**: a client of one service called on 1, 100, 1,000 and 10,000 distinct paths, each once;
  the most ``tracemalloc`` saw it hold at any point past what it held after the first call. A client keeps
  parsed URLs per service and path: this shows whether that keeping is bounded.
- **Gateway**: a FastAPI app with the ``Mesh`` extension and ``MeshMiddleware``, one route
  ``/api/{service}/{rest:path}`` under ``@mesh.policy(timeout=5)`` forwarding each request to the named
  service with ``Depends(get_mesh)``, called in-process through ``httpx.ASGITransport`` on the same pairs
  (``/api/<service>/<path>``): CPU per request, and the series of ``mesh_inbound_requests_total`` and
  ``mesh_upstream_requests_total`` that ``/metrics`` then shows (inbound series are per route template,
  never per raw path).

Targets: per call, and per gateway request, <= 1.2x the cost at 1 service and 1 path at every size, up to 200
services and 1,000 paths (flat); memory kept for distinct paths bounded (10,000 distinct paths hold <= 1.25x
what 1,000 hold); inbound metric series independent of the distinct paths.
"""

from __future__ import annotations

import asyncio
import gc
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from fastapi import Depends, FastAPI
from fastapi.responses import Response

from bench.overhead import handler
from bench.profiled import python_calls_per_call
from bench.rounds import in_turn
from fastapi_mesh import Mesh, MeshClient, MeshMiddleware, MeshSettings, get_mesh

SERVICES = (1, 10, 200)
PATHS = (1, 100, 1_000)
ENDPOINTS_PER_SERVICE = 3
ROUNDS = 15
CALLS_PER_ROUND = 3_000
QUICK_ROUNDS = 3
QUICK_CALLS_PER_ROUND = 1_000
#: Distinct paths one service is called on, for the memory they leave behind.
PATH_COUNTS = (1, 100, 1_000, 10_000)
QUICK_PATH_COUNTS = (1, 100, 1_000, 3_000)
#: The (services, paths) of the gateway rows.
GATEWAY_SIZES = ((1, 1), (1, 1_000), (200, 1_000))
GATEWAY_ROUNDS = 15
GATEWAY_REQUESTS_PER_ROUND = 1_000
QUICK_GATEWAY_ROUNDS = 3
QUICK_GATEWAY_REQUESTS_PER_ROUND = 200
#: Calls whose Python function calls are counted, per size.
PROFILED_CALLS = 200
#: Most a size may cost per call (and a gateway request), against the smallest size.
FLAT = 1.2
#: Most the largest count of distinct paths may hold, against the next largest (10,000 against 1,000).
BOUNDED = 1.25

Size = tuple[int, int]
Pairs = list[tuple[str, str]]


def service_name(i: int) -> str:
    return f"svc-{i:03d}"


def settings(services: int) -> MeshSettings:
    """The development preset with ``services`` upstream services of ``ENDPOINTS_PER_SERVICE`` endpoints each."""
    endpoints = {
        service_name(i): [f"http://10.{i >> 8 & 255}.{i & 255}.{k + 1}:8080" for k in range(ENDPOINTS_PER_SERVICE)]
        for i in range(services)
    }
    return MeshSettings(service_name="bench", discovery={"endpoints": endpoints})


def pairs(services: int, paths: int) -> Pairs:
    """The gateway's distinct (service, path) pairs: the k-th is service k mod N with path k mod P."""
    return [(service_name(k % services), f"/api/items/{k % paths}") for k in range(max(services, paths))]


def sequence(services: int, paths: int, calls: int, seed: int = 0) -> Pairs:
    """``calls`` pairs drawn at random (the same for every run with ``seed``)."""
    rng = random.Random(seed)
    return rng.choices(pairs(services, paths), k=calls)


# ----------------------------------------------------------------------------------------------- results


@dataclass
class CallCost:
    """One size: median seconds per call and Python function calls per call."""

    call_s: float
    python_calls: float


@dataclass
class ServiceMemory:
    """A client of ``services`` services, started, every service called once: bytes it holds."""

    services: int
    endpoints: int
    traced_bytes: int

    @property
    def per_service(self) -> float:
        return self.traced_bytes / self.services


@dataclass
class PathMemory:
    """A client of one service called on ``paths`` distinct paths: the most it held past its first call."""

    paths: int
    retained_bytes: int


@dataclass
class GatewayCost:
    """One gateway size: median seconds per request and the metric series ``/metrics`` shows after."""

    request_s: float
    inbound_series: int
    upstream_series: int
    metrics_bytes: int


@dataclass
class ScaleResults:
    #: (services, paths) -> per-call cost.
    calls: dict[Size, CallCost] = field(default_factory=dict)
    #: services -> what a client of that many holds.
    memory: dict[int, ServiceMemory] = field(default_factory=dict)
    #: distinct paths -> what one service's client holds for them.
    paths: dict[int, PathMemory] = field(default_factory=dict)
    #: (services, paths) -> per-request cost through the gateway app; empty when not run.
    gateway: dict[Size, GatewayCost] = field(default_factory=dict)
    rounds: int = 0
    calls_per_round: int = 0
    gateway_rounds: int = 0
    gateway_requests_per_round: int = 0


# ------------------------------------------------------------------------------------------------ timing


async def _client(services: int) -> MeshClient:
    client = MeshClient(settings(services), transport=httpx.MockTransport(handler))
    await client.initialize()
    return client


async def _calls(client: MeshClient, calls: Pairs) -> float:
    """CPU seconds per call over ``calls``."""
    get = client.get
    gc.collect()
    start = time.process_time()
    for service, path in calls:
        response = await get(service, path)
        if response.status_code != 200:
            raise AssertionError(f"{service}{path}: {response.status_code}")
    return (time.process_time() - start) / len(calls)


async def _python_calls(call: Callable[[str, str], Awaitable[Any]], calls: Pairs) -> float:
    """Python function calls per call over ``calls``."""
    return await python_calls_per_call(lambda i: call(*calls[i]), len(calls))


async def run_calls(
    services: tuple[int, ...] = SERVICES,
    paths: tuple[int, ...] = PATHS,
    rounds: int = ROUNDS,
    calls: int = CALLS_PER_ROUND,
) -> dict[Size, CallCost]:
    """Median seconds per call, and Python calls per call, at every (services, paths)."""
    sizes = [(n, p) for n in services for p in paths]
    clients = {size: await _client(size[0]) for size in sizes}
    sequences = {size: sequence(*size, calls, seed=i) for i, size in enumerate(sizes)}
    try:
        for size in sizes:  # warm up: every pair once, then the round's calls once
            await _calls(clients[size], pairs(*size))
            await _calls(clients[size], sequences[size])
        gc.collect()
        gc.freeze()  # what exists now is never collected: the collection before each round stays short
        counts = {size: await _python_calls(clients[size].get, sequences[size][:PROFILED_CALLS]) for size in sizes}
        samples: dict[Size, list[float]] = {size: [] for size in sizes}
        for round_ in range(rounds):
            for size in in_turn(sizes, round_):
                samples[size].append(await _calls(clients[size], sequences[size]))
    finally:
        gc.unfreeze()
        for client in clients.values():
            await client.aclose()
    return {size: CallCost(statistics.median(samples[size]), counts[size]) for size in sizes}


# ------------------------------------------------------------------------------------------------ memory


async def _traced_client(services: int) -> int:
    """Bytes a client of ``services`` services holds once started and every service has been called once."""
    config = settings(services)  # the settings exist before the client; what the client builds is counted
    names = [service_name(i) for i in range(services)]
    gc.collect()
    tracemalloc.start()
    try:
        client = MeshClient(config, transport=httpx.MockTransport(handler))
        await client.initialize()
        for name in names:
            response = await client.get(name, "/api/items/0")
            assert response.status_code == 200
        del response
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    await client.aclose()
    return held


async def run_memory(services: tuple[int, ...] = SERVICES) -> dict[int, ServiceMemory]:
    await _traced_client(2)  # lazy imports and first-use caches are not the clients' own
    return {n: ServiceMemory(n, n * ENDPOINTS_PER_SERVICE, await _traced_client(n)) for n in services}


async def _path_memory(count: int) -> int:
    """The most a one-service client held while called on ``count`` distinct paths, past its first call."""
    paths = [f"/api/items/{i}" for i in range(count)]
    name = service_name(0)
    client = MeshClient(settings(1), transport=httpx.MockTransport(handler))
    await client.initialize()
    await client.get(name, paths[0])
    rest = paths[1:]  # sliced before tracing: a list of 10,000 is 80 KiB of the bench's own
    gc.collect()
    gc.freeze()  # what exists now stays out of the collections the calls trigger
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        most = base
        for path in rest:
            await client.get(name, path)
            held, _ = tracemalloc.get_traced_memory()
            most = max(most, held)
    finally:
        tracemalloc.stop()
        gc.unfreeze()
    await client.aclose()
    return most - base


async def run_paths(counts: tuple[int, ...] = PATH_COUNTS) -> dict[int, PathMemory]:
    await _path_memory(2)
    return {count: PathMemory(count, await _path_memory(count)) for count in counts}


# ----------------------------------------------------------------------------------------------- gateway


def gateway_app(services: int) -> tuple[FastAPI, Mesh]:
    """The gateway: one forwarding route under a policy, the middleware for inbound metrics, the probes and
    ``/metrics``; its upstreams on a mock transport."""
    mesh = Mesh(settings(services), transport=httpx.MockTransport(handler))
    app = FastAPI(lifespan=mesh.lifespan)
    app.include_router(mesh.router)
    app.add_middleware(MeshMiddleware, mesh=mesh)

    @app.get("/api/{service}/{rest:path}")
    @mesh.policy(timeout=5.0)
    async def forward(service: str, rest: str, client: MeshClient = Depends(get_mesh)) -> Response:
        upstream = await client.get(service, "/" + rest)
        return Response(upstream.content, status_code=upstream.status_code, media_type="application/json")

    return app, mesh


async def _requests(http: httpx.AsyncClient, urls: list[str]) -> float:
    """CPU seconds per request over ``urls``."""
    gc.collect()
    start = time.process_time()
    for url in urls:
        response = await http.get(url)
        if response.status_code != 200:
            raise AssertionError(f"{url}: {response.status_code} {response.text[:200]}")
    return (time.process_time() - start) / len(urls)


def _series(exposition: str, metric: str) -> int:
    return sum(1 for line in exposition.splitlines() if line.startswith(metric + "{"))


async def run_gateway(
    sizes: tuple[Size, ...] = GATEWAY_SIZES,
    rounds: int = GATEWAY_ROUNDS,
    requests: int = GATEWAY_REQUESTS_PER_ROUND,
) -> dict[Size, GatewayCost]:
    """Median seconds per request through the gateway at every (services, paths), and its series after."""
    managers: dict[Size, LifespanManager] = {}
    clients: dict[Size, httpx.AsyncClient] = {}
    urls: dict[Size, list[str]] = {}
    samples: dict[Size, list[float]] = {size: [] for size in sizes}
    found: dict[Size, GatewayCost] = {}
    try:
        for i, size in enumerate(sizes):
            app, _ = gateway_app(size[0])
            manager = managers[size] = LifespanManager(app, startup_timeout=30)
            await manager.__aenter__()
            transport = httpx.ASGITransport(manager.app)
            clients[size] = httpx.AsyncClient(transport=transport, base_url="http://gateway")
            urls[size] = [f"/api/{service}{path}" for service, path in sequence(*size, requests, seed=i)]
            await _requests(clients[size], [f"/api/{s}{p}" for s, p in pairs(*size)])
            await _requests(clients[size], urls[size])
        for round_ in range(rounds):
            for size in in_turn(sizes, round_):
                samples[size].append(await _requests(clients[size], urls[size]))
        for size in sizes:
            exposition = (await clients[size].get("/metrics")).text
            found[size] = GatewayCost(
                statistics.median(samples[size]),
                _series(exposition, "mesh_inbound_requests_total"),
                _series(exposition, "mesh_upstream_requests_total"),
                len(exposition.encode()),
            )
    finally:
        for client in clients.values():
            await client.aclose()
        for manager in reversed(managers.values()):
            await manager.__aexit__(None, None, None)
    return found


# --------------------------------------------------------------------------------------------------- run


def run(
    quick: bool = False,
    *,
    services: tuple[int, ...] = SERVICES,
    paths: tuple[int, ...] = PATHS,
    path_counts: tuple[int, ...] | None = None,
    gateway_sizes: tuple[Size, ...] = GATEWAY_SIZES,
    rounds: int | None = None,
    calls: int | None = None,
    gateway_rounds: int | None = None,
    gateway_requests: int | None = None,
) -> ScaleResults:
    """Every part at every size (``quick``: fewer, shorter rounds and fewer distinct paths; the keyword
    arguments override either); ``gateway_sizes=()`` leaves the gateway out."""

    def pick(given: int | None, short: int, full: int) -> int:
        return given if given is not None else short if quick else full

    results = ScaleResults(
        rounds=pick(rounds, QUICK_ROUNDS, ROUNDS),
        calls_per_round=pick(calls, QUICK_CALLS_PER_ROUND, CALLS_PER_ROUND),
        gateway_rounds=pick(gateway_rounds, QUICK_GATEWAY_ROUNDS, GATEWAY_ROUNDS),
        gateway_requests_per_round=pick(gateway_requests, QUICK_GATEWAY_REQUESTS_PER_ROUND, GATEWAY_REQUESTS_PER_ROUND),
    )
    if path_counts is None:
        path_counts = QUICK_PATH_COUNTS if quick else PATH_COUNTS

    async def measure() -> None:
        results.memory = await run_memory(services)
        results.paths = await run_paths(path_counts)
        results.calls = await run_calls(services, paths, results.rounds, results.calls_per_round)
        if gateway_sizes:
            results.gateway = await run_gateway(
                gateway_sizes, results.gateway_rounds, results.gateway_requests_per_round
            )

    asyncio.run(measure())
    return results


# ------------------------------------------------------------------------------------------------ report


def _smallest(sizes: Iterable[Size]) -> Size:
    return min(sizes, key=lambda size: (size[0] * size[1], size))


def _bytes(n: float) -> str:
    return f"{n / 1024:,.1f} KiB" if abs(n) >= 1024 else f"{n:,.0f} B"


def report(results: ScaleResults) -> str:
    """The figures as markdown: per-call cost by size, memory per service, memory for distinct paths, and the
    gateway rows."""
    out: list[str] = []
    if results.calls:
        base = results.calls[_smallest(results.calls)]
        out += [
            "| services | distinct paths | per call | ratio | Python calls per call |",
            "| ---: | ---: | ---: | ---: | ---: |",
        ]
        for (n, p), cost in results.calls.items():
            out.append(
                f"| {n:,} | {p:,} | {cost.call_s * 1e6:.1f} µs | {cost.call_s / base.call_s:.2f}x "
                f"| {cost.python_calls:,.0f} |"
            )
        out.append("")
    if results.memory:
        first = min(results.memory.values(), key=lambda m: m.services)
        out += [
            "| services | endpoints | held by the client | per service | each service beyond the first |",
            "| ---: | ---: | ---: | ---: | ---: |",
        ]
        for held in results.memory.values():
            extra = (
                _bytes((held.traced_bytes - first.traced_bytes) / (held.services - first.services))
                if held.services > first.services
                else ""
            )
            out.append(
                f"| {held.services:,} | {held.endpoints:,} | {_bytes(held.traced_bytes)} "
                f"| {_bytes(held.per_service)} | {extra} |"
            )
        out.append("")
    if results.paths:
        out += ["| distinct paths called, one service | most held for them |", "| ---: | ---: |"]
        for kept in results.paths.values():
            out.append(f"| {kept.paths:,} | {_bytes(kept.retained_bytes)} |")
        out.append("")
    if results.gateway:
        base_request = results.gateway[_smallest(results.gateway)].request_s
        out += [
            "| gateway: services | distinct paths | per request | ratio | inbound series | upstream series "
            "| /metrics size |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for (n, p), request in results.gateway.items():
            out.append(
                f"| {n:,} | {p:,} | {request.request_s * 1e6:.0f} µs | {request.request_s / base_request:.2f}x "
                f"| {request.inbound_series} | {request.upstream_series} | {_bytes(request.metrics_bytes)} |"
            )
    return "\n".join(out).rstrip()


def _size(services: int, paths: int) -> str:
    return f"{services:,} service{'s' if services != 1 else ''}, {paths:,} path{'s' if paths != 1 else ''}"


def _verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def targets(results: ScaleResults) -> str:
    """Whether each target is met, as markdown."""
    out = ["| target | measured | verdict |", "| --- | --- | --- |"]
    if results.calls:
        smallest = _smallest(results.calls)
        base = results.calls[smallest].call_s
        for (n, p), cost in results.calls.items():
            if (n, p) == smallest:
                continue
            ratio = cost.call_s / base
            out.append(
                f"| per call, {_size(n, p)} <= {FLAT}x {_size(*smallest)} | {ratio:.2f}x | {_verdict(ratio <= FLAT)} |"
            )
    if len(results.paths) >= 2:
        counts = sorted(results.paths)
        most, fewer = results.paths[counts[-1]], results.paths[counts[-2]]
        ratio = most.retained_bytes / max(fewer.retained_bytes, 1)
        out.append(
            f"| memory for {most.paths:,} distinct paths <= {BOUNDED}x that for {fewer.paths:,} "
            f"| {ratio:.2f}x ({_bytes(most.retained_bytes)} / {_bytes(fewer.retained_bytes)}) "
            f"| {_verdict(ratio <= BOUNDED)} |"
        )
    if results.gateway:
        smallest = _smallest(results.gateway)
        base_cost = results.gateway[smallest]
        for (n, p), request in results.gateway.items():
            if (n, p) == smallest:
                continue
            ratio = request.request_s / base_cost.request_s
            out.append(
                f"| gateway request, {_size(n, p)} <= {FLAT}x {_size(*smallest)} | {ratio:.2f}x "
                f"| {_verdict(ratio <= FLAT)} |"
            )
        series = {request.inbound_series for request in results.gateway.values()}
        out.append(
            f"| inbound series the same at every count of distinct paths | {', '.join(map(str, sorted(series)))} "
            f"| {_verdict(len(series) == 1)} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    results = run(quick="--quick" in args)
    print(report(results))
    print()
    print(targets(results))
    if "--plot" in args:
        from bench import plots

        print(f"plot: {plots.redraw('scale', results)}")


if __name__ == "__main__":
    main()
