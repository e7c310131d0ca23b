"""The scale benchmark runs at a tiny size and reports every part (a smoke test: speed is judged in
docs/benchmarks.md, not here); its target verdicts follow the figures."""

from __future__ import annotations

from bench import scale


def test_scale_bench_measures_every_size_and_reports_each_part() -> None:
    """Two service counts and two path counts give a per-call figure for each of the four sizes, memory that
    grows with the services, memory for distinct paths that is zero for one path, and gateway rows with one
    inbound series (one route template) however many distinct paths were requested."""
    results = scale.run(
        services=(1, 3),
        paths=(1, 4),
        path_counts=(1, 20),
        gateway_sizes=((1, 1), (3, 4)),
        rounds=1,
        calls=20,
        gateway_rounds=1,
        gateway_requests=10,
    )
    assert set(results.calls) == {(1, 1), (1, 4), (3, 1), (3, 4)}
    for cost in results.calls.values():
        assert cost.call_s > 0 and cost.python_calls > 50  # a call through the stack runs many functions
    assert set(results.memory) == {1, 3}
    assert [m.endpoints for m in results.memory.values()] == [
        scale.ENDPOINTS_PER_SERVICE,
        3 * scale.ENDPOINTS_PER_SERVICE,
    ]
    assert results.memory[3].traced_bytes > results.memory[1].traced_bytes > 0
    assert results.paths[1].retained_bytes == 0  # one path: no call after the first
    assert results.paths[20].retained_bytes > 0  # 19 more parsed URLs kept
    assert set(results.gateway) == {(1, 1), (3, 4)}
    for (services, _), request in results.gateway.items():
        assert request.request_s > 0
        assert request.inbound_series == 1
        assert request.upstream_series >= services
        assert request.metrics_bytes > 0
    assert results.gateway[3, 4].upstream_series > results.gateway[1, 1].upstream_series

    text = scale.report(results)
    assert text.count("| services | distinct paths | per call |") == 1
    assert "| 3 | 4 |" in text and "| 20 |" in text and "| gateway: services |" in text
    verdicts = scale.targets(results).splitlines()[2:]
    # 3 sizes beyond the smallest, one memory row, 1 gateway size beyond the smallest, the series row
    assert len(verdicts) == 3 + 1 + 1 + 1
    assert all(line.endswith(("| met |", "| **missed** |")) for line in verdicts)
    assert verdicts[-1].endswith("| met |")  # one inbound series at both gateway sizes


def test_scale_targets_miss_a_size_that_costs_more_than_the_flat_limit() -> None:
    """A size 1.3x the smallest misses the 1.2x target and one 1.1x meets it; memory that keeps growing with
    the distinct paths misses the bound; inbound series that differ between sizes miss theirs."""
    results = scale.ScaleResults(
        calls={
            (1, 1): scale.CallCost(10e-6, 180),
            (10, 100): scale.CallCost(11e-6, 180),
            (200, 1_000): scale.CallCost(13e-6, 180),
        },
        paths={1_000: scale.PathMemory(1_000, 100_000), 10_000: scale.PathMemory(10_000, 1_000_000)},
        gateway={(1, 1): scale.GatewayCost(400e-6, 1, 2, 10_000), (200, 1_000): scale.GatewayCost(420e-6, 5, 400, 1)},
    )
    rows = scale.targets(results).splitlines()[2:]
    assert rows[0].startswith("| per call, 10 services, 100 paths") and rows[0].endswith("| 1.10x | met |")
    assert rows[1].startswith("| per call, 200 services, 1,000 paths") and rows[1].endswith("| 1.30x | **missed** |")
    assert rows[2].startswith("| memory for 10,000 distinct paths") and rows[2].endswith("| **missed** |")
    assert rows[3].endswith("| 1.05x | met |")
    assert rows[4].endswith("| 1, 5 | **missed** |")
