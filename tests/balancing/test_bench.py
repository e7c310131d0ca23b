"""The balancer benchmark runs and reports every strategy (a smoke test; speed is judged in docs, not here)."""

from __future__ import annotations

from bench import balancer as bench


def test_bench_runs_and_reports_every_variant() -> None:
    """A one-round run at 10 endpoints gives a pick cost and memory figure per variant, as a markdown table."""
    results = bench.run(sizes=(10,), rounds=1)
    assert set(results) == set(bench.VARIANTS)
    for row in results.values():
        assert 0 < row["pick_s"][10] < 1e-3
        assert 0 < row["bytes_per_endpoint"][10] < 1 << 20
    table = bench.report(results)
    assert table.splitlines()[0].startswith("| strategy |")
    assert len(table.splitlines()) == 2 + len(bench.VARIANTS)
