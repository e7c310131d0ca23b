"""Per-call cost of the mesh's full stack against raw httpx, on the same ``httpx.MockTransport``.

Each figure is CPU time of the benchmark process (``time.process_time``) per call: all variants run in one
event loop in one thread, so what a busy neighbour takes from the machine does not count against any.

Variants, measured in interleaved rounds in one process so machine noise hits them alike:

- ``raw httpx``: ``httpx.AsyncClient(transport=mock).get(url)``;
- ``httpx floor``: what the mesh itself sends through, without its layers: ``build_request`` with an
  already parsed URL, straight to the transport, body read (no ``AsyncClient.send``: no auth flow,
  redirect loop or cookie jar). The mesh's own layers cost the difference between a mesh row and this one;
- ``mesh, no deadline``: ``MeshClient(settings, transport=mock).get("user-service", path)`` with
  ``retry.max_elapsed: null``: bulkhead, breaker, retry, balancer, attempt layers and the counters behind
  /metrics (tracing off);
- ``mesh (preset)``: the same with the development preset's ``retry.max_elapsed`` (15 s): every call
  then has a deadline that caps its attempt timeouts and travels downstream as ``x-mesh-timeout-ms``
  (no timer);
- ``mesh + deadline``: the same with ``deadline=5`` (one ``asyncio.timeout_at`` per call, the header);
- ``tenacity + purgatory + asyncio.timeout``: the hand-composed equivalent around raw httpx.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections.abc import Awaitable, Callable

import httpx

from bench.rounds import in_turn
from fastapi_mesh import MeshClient, MeshSettings

CALLS_PER_ROUND = 3_000
FLOOR = "httpx floor: build_request + transport, no AsyncClient.send"
ROUNDS = 15
BODY = b'{"users": ["ada", "grace"]}'


def handler(request: httpx.Request) -> httpx.Response:
    """The upstream every variant calls: 200 with a small JSON body."""
    return httpx.Response(200, content=BODY, headers={"content-type": "application/json"})


async def _time(
    call: Callable[[], Awaitable[httpx.Response]], calls: int, settle: Callable[[], object] | None = None
) -> float:
    """Seconds per call over ``calls`` sequential calls; ``settle``, when given, runs inside the timed window
    after them: work the calls left to a background thread (a span exporter's) is counted to them, not to
    whatever is measured next."""
    gc.collect()
    start = time.process_time()  # CPU time of this process: a busy neighbour does not count
    for _ in range(calls):
        response = await call()
        if response.status_code != 200:
            raise AssertionError(response.status_code)
    if settle is not None:
        settle()
    return (time.process_time() - start) / calls


async def run(calls_per_round: int = CALLS_PER_ROUND, rounds: int = ROUNDS) -> dict[str, float]:
    """Median seconds per call for each variant."""
    from purgatory import AsyncCircuitBreakerFactory
    from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

    mock = httpx.MockTransport(handler)
    raw = httpx.AsyncClient(transport=mock)
    settings = MeshSettings(
        service_name="bench", discovery={"endpoints": {"user-service": ["http://10.0.0.1:8080"]}}
    )
    mesh = MeshClient(settings, transport=mock)
    await mesh.initialize()
    no_deadline = settings.model_copy(update={"retry": settings.retry.model_copy(update={"max_elapsed": None})})
    bare = MeshClient(no_deadline, transport=mock)
    await bare.initialize()
    breakers = AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=30)

    async def raw_call() -> httpx.Response:
        return await raw.get("http://10.0.0.1:8080/api/users")

    parsed = httpx.URL("http://10.0.0.1:8080/api/users")

    async def floor_call() -> httpx.Response:
        request = raw.build_request("GET", parsed)
        response = await mock.handle_async_request(request)
        response.request = request
        await response.aread()
        return response

    async def mesh_call() -> httpx.Response:
        return await mesh.get("user-service", "/api/users")

    async def bare_call() -> httpx.Response:
        return await bare.get("user-service", "/api/users")

    async def mesh_deadline_call() -> httpx.Response:
        return await mesh.get("user-service", "/api/users", deadline=5.0)

    async def composed_call() -> httpx.Response:
        async with asyncio.timeout(5.0):
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(3),
                wait=wait_exponential_jitter(multiplier=0.1, max=1.0),
                retry=retry_if_exception_type(httpx.TransportError),
                reraise=True,
            ):
                with attempt:
                    async with await breakers.get_breaker("user-service"):
                        return await raw.get("http://10.0.0.1:8080/api/users", timeout=10.0)
        raise AssertionError("unreachable")

    variants: dict[str, Callable[[], Awaitable[httpx.Response]]] = {
        "raw httpx": raw_call,
        FLOOR: floor_call,
        "mesh, no deadline (retry.max_elapsed: null)": bare_call,
        "mesh (preset: retry.max_elapsed bounds every call)": mesh_call,
        "mesh + deadline": mesh_deadline_call,
        "tenacity + purgatory + asyncio.timeout": composed_call,
    }
    for call in variants.values():  # warm up caches, pools, lazy imports
        await _time(call, 500)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(rounds):
        for name, call in in_turn(variants.items(), round_):
            samples[name].append(await _time(call, calls_per_round))
    await raw.aclose()
    await mesh.aclose()
    await bare.aclose()
    return {name: statistics.median(values) for name, values in samples.items()}


def ratio_table(results: dict[str, float], unit: str, fmt: str) -> str:
    """A markdown table of ``results`` (per-call costs) and their ratio to the ``raw httpx`` row."""
    base = results["raw httpx"]
    floor = results.get(FLOOR)
    extra = f" {unit} above the httpx floor |" if floor is not None else ""
    rule = "| --- | ---: | ---: |" + (" ---: |" if extra else "")
    lines = [f"| variant | {unit} | ratio to raw httpx |{extra}", rule]
    for name, value in results.items():
        row = f"| {name} | {value:{fmt}} | {value / base:.3f}x |"
        if floor is not None:
            row += f" {value - floor:+{fmt}} |"
        lines.append(row)
    return "\n".join(lines)


def report(results: dict[str, float]) -> str:
    return ratio_table({name: seconds * 1e6 for name, seconds in results.items()}, "µs per call", ".1f")


if __name__ == "__main__":
    print(report(asyncio.run(run())))
