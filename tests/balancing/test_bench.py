"""The balancer benchmark runs and reports every variant (a smoke test: speed is judged in docs, not here)."""

from __future__ import annotations

from bench import balancer as bench


def test_bench_runs_and_reports_every_variant() -> None:
    """A one-round run at 10 and 20 endpoints gives a pick cost and a memory figure per variant and size,
    and a markdown table with a row per variant."""
    results = bench.run(sizes=(10, 20), rounds=1)
    assert set(results) == set(bench.VARIANTS)
    for row in results.values():
        assert set(row["pick_s"]) == set(row["bytes_per_endpoint"]) == {10, 20}
        assert all(value > 0 for value in [*row["pick_s"].values(), *row["bytes_per_endpoint"].values()])
    lines = bench.report(results).splitlines()
    assert lines[0].startswith("| strategy | pick, 10 endpoints | pick, 20 endpoints | growth 10 -> 20 |")
    assert [line.split(" | ")[0] for line in lines[2:]] == [f"| {label}" for label in bench.VARIANTS]
