"""The end-to-end benchmark runs at a tiny size and reports every variant (a smoke test: speed is judged in
docs/benchmarks.md, not here), and its leak check finds no descriptor left behind."""

from __future__ import annotations

import shutil

from bench import e2e


def test_e2e_bench_runs_every_variant_and_leaves_no_descriptor_behind() -> None:
    """One short round at concurrency 1 and 4 against three uvicorn processes gives figures for every
    variant; a few hundred calls per backend with a replica restart end with no more descriptors open than
    before; the report has a table per concurrency, the leak rows and the target verdicts."""
    results = e2e.run(rounds=1, seconds=0.05, concurrency=(1, 4), leak_calls=300, leak_restarts=1)
    assert set(results.rows) == {1, 4}
    labels = set(results.rows[1])
    assert {e2e.RAW, e2e.BEFORE, *e2e.BACKEND_ROWS.values()} <= labels
    assert (e2e.HAPROXY in labels) == (shutil.which("haproxy") is not None)
    for rows in results.rows.values():
        assert set(rows) == labels
        for row in rows.values():
            assert row.throughput > 0 and row.cpu_per_call > 0 and 0 < row.p50_s <= row.p99_s
        if e2e.HAPROXY in rows:  # read in clock ticks: a round this short may not see one
            assert rows[e2e.HAPROXY].proxy_cpu_per_call >= 0
        assert all(row.proxy_cpu_per_call == 0 for label, row in rows.items() if label != e2e.HAPROXY)
    assert set(results.leaks) == set(e2e.BACKEND_ROWS)
    for leak in results.leaks.values():
        assert leak.restarts == 1 and leak.failed == 0
        assert leak.fds_closed <= leak.fds_before
    text = e2e.report(results)
    assert text.count("| variant | calls/s |") == 2
    assert all(f"| {label} |" in text for label in labels)
    if e2e.HAPROXY not in labels:
        assert "haproxy not installed" in text
    verdicts = e2e.targets(results, "aiohttp").splitlines()
    assert [line.split(" | ")[0] for line in verdicts[2:]] == ["| 1", "| 4"]
