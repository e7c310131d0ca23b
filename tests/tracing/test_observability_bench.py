"""The observability overhead benchmark runs and reports every variant (speed is judged in docs, not here)."""

from __future__ import annotations

import asyncio

from bench import observability as bench


def test_observability_bench_reports_every_variant() -> None:
    """A one-round run: a cost per variant, spans exported only by the recording variant (one per call,
    warm-up included), and a table row per variant with its target."""
    results = asyncio.run(bench.run(calls_per_round=40, rounds=1))
    assert tuple(results) == bench.VARIANTS
    assert all(cost > 0 for cost in results.values())
    assert results.exported == {bench.UNSAMPLED: 0, bench.RECORDING: 80}
    lines = bench.report(results).splitlines()
    assert [line.split(" | ")[0] for line in lines[2:]] == [f"| {variant}" for variant in bench.VARIANTS]
    assert [line.split(" | ")[4] for line in lines[3:]] == ["<= 5%", "<= 5%", "<= 25%"]
    assert set(results.sdk) == {bench.UNSAMPLED, bench.RECORDING} and all(v > 0 for v in results.sdk.values())
    assert all(line.endswith(" µs |") for line in lines[4:])
