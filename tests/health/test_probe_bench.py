"""The probe benchmark runs and reports every variant (speed is judged in docs, not here)."""

from __future__ import annotations

import asyncio

from bench import probes as bench


def test_probe_bench_reports_every_variant() -> None:
    results = asyncio.run(bench.run(rounds=1, probes=5))
    assert set(results) == set(bench.VARIANTS)
    assert all(cost > 0 for row in results.values() for cost in row.values())
    lines = bench.report(results).splitlines()
    assert [line.split(" | ")[0] for line in lines[2:]] == [f"| {variant}" for variant in bench.VARIANTS]
