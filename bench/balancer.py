"""Pick cost per strategy at 10, 1,000 and 10,000 endpoints, and balancer memory per endpoint.

- **Pick cost**: ``balancer.pick(key)`` in a tight loop, timeit-style: every balancer is built first,
  then ``ROUNDS`` rounds each time a short loop of every (strategy, size) in a shuffled order, and the
  best loop counts (the machine is shared: the minimum is the figure least disturbed by others). A loop
  cycles through 256 realistic calls: each a first attempt made while serving an inbound request from its
  own client address, with no affinity key of its own; where the balancer uses a key, it is read from the
  inbound request as the balancer layer reads it. The ``session affinity`` row is
  ``least-response-time`` with ``session_affinity: true`` (consistent hashing of the client address with
  bounded load).
- **Memory**: ``tracemalloc`` around creating a ``Balancer`` and giving it N endpoints (the ``Endpoint``
  objects themselves belong to discovery and are built before), divided by N.

Targets: <= 5 us per pick, <= 2x growth from 10 to 10,000 endpoints, <= 2 KiB per endpoint.
"""

from __future__ import annotations

import gc
import random
import time
import tracemalloc
from typing import Any

from fastapi_mesh.balancing import Balancer
from fastapi_mesh.clock import MonotonicClock
from fastapi_mesh.context import InboundContext
from fastapi_mesh.discovery.base import Endpoint
from fastapi_mesh.resilience.outlier import OutlierDetector
from fastapi_mesh.settings import LoadBalancerConfig, OutlierDetectionConfig

SIZES = (10, 1_000, 10_000)
ROUNDS = 30
LOOPS_PER_ROUND = 8  # each loop is CONTEXTS picks
CONTEXTS = 256

#: Row label -> load_balancer settings.
VARIANTS: dict[str, dict[str, Any]] = {
    "round-robin": {"strategy": "round-robin"},
    "random": {"strategy": "random"},
    "weighted": {"strategy": "weighted"},
    "least-connections": {"strategy": "least-connections"},
    "least-response-time": {"strategy": "least-response-time"},
    "ip-hash": {"strategy": "ip-hash"},
    "p2c-ewma": {"strategy": "p2c-ewma"},
    "session affinity": {"strategy": "least-response-time", "session_affinity": True},
}


def _endpoints(n: int, weighted: bool) -> list[Endpoint]:
    rng = random.Random(n)
    return [
        Endpoint(
            f"http://10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}:8080",
            weight=rng.randint(1, 5) if weighted else 1,
        )
        for i in range(n)
    ]


def _balancer(settings: dict[str, Any], endpoints: list[Endpoint]) -> Balancer:
    clock = MonotonicClock()
    config = LoadBalancerConfig(**settings)
    outlier = OutlierDetector("bench", OutlierDetectionConfig(), clock)
    balancer = Balancer("bench", config, random.Random(7), outlier, clock=clock)
    balancer.update(endpoints)
    return balancer


def _contexts() -> list[InboundContext]:
    traceparent = b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01"
    headers = [(b"host", b"api.example.com"), (b"user-agent", b"bench"), (b"traceparent", traceparent)]
    return [InboundContext.from_headers(f"192.0.2.{i}", headers, 0.0) for i in range(CONTEXTS)]


def _loop_cost(balancer: Balancer, contexts: list[InboundContext]) -> float:
    """Seconds per pick over one short loop."""
    pick = balancer.pick
    source = balancer.affinity if balancer.keyed else None
    start = time.perf_counter()
    for _ in range(LOOPS_PER_ROUND):
        for inbound in contexts:
            pick(None if source is None else inbound.affinity_key(source))
    return (time.perf_counter() - start) / (LOOPS_PER_ROUND * len(contexts))


def _memory_per_endpoint(settings: dict[str, Any], endpoints: list[Endpoint]) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        balancer = _balancer(settings, endpoints)
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del balancer
    return used / len(endpoints)


def run(sizes: tuple[int, ...] = SIZES, rounds: int = ROUNDS) -> dict[str, dict[str, Any]]:
    """``{variant: {"pick_s": {n: seconds}, "bytes_per_endpoint": {n: bytes}}}``."""
    contexts = _contexts()
    endpoints = {(n, w): _endpoints(n, w) for n in sizes for w in (False, True)}
    cells = [(label, n) for label in VARIANTS for n in sizes]
    weighted = {label: VARIANTS[label]["strategy"] in ("weighted", "random") for label in VARIANTS}
    memory = {(label, n): _memory_per_endpoint(VARIANTS[label], endpoints[n, weighted[label]]) for label, n in cells}
    balancers = {(label, n): _balancer(VARIANTS[label], endpoints[n, weighted[label]]) for label, n in cells}
    best = dict.fromkeys(cells, float("inf"))
    order = random.Random(0)
    gc.collect()
    gc.disable()
    try:
        for _ in range(rounds):
            order.shuffle(cells)
            for cell in cells:
                best[cell] = min(best[cell], _loop_cost(balancers[cell], contexts))
    finally:
        gc.enable()
    return {
        label: {
            "pick_s": {n: best[label, n] for n in sizes},
            "bytes_per_endpoint": {n: memory[label, n] for n in sizes},
        }
        for label in VARIANTS
    }


def report(results: dict[str, dict[str, Any]]) -> str:
    """A markdown table: pick cost per size, growth from the smallest to the largest, memory per endpoint."""
    sizes = sorted(next(iter(results.values()))["pick_s"])
    head = (
        "| strategy | "
        + " | ".join(f"pick, {n:,} endpoints" for n in sizes)
        + f" | growth {sizes[0]:,} -> {sizes[-1]:,} | memory per endpoint ({sizes[0]:,} / {sizes[-1]:,}) |"
    )
    lines = [head, "| --- " * (len(sizes) + 3) + "|"]
    for label, row in results.items():
        picks = row["pick_s"]
        memory = row["bytes_per_endpoint"]
        growth = picks[sizes[-1]] / picks[sizes[0]]
        cells = " | ".join(f"{picks[n] * 1e6:.2f} us" for n in sizes)
        lines.append(f"| {label} | {cells} | {growth:.2f}x | {memory[sizes[0]]:,.0f} B / {memory[sizes[-1]]:,.0f} B |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(run()))
