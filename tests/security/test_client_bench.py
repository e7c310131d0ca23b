"""The mTLS benchmark runs at a tiny size and reports every variant (a smoke test: speed is judged in
docs/benchmarks.md, not here)."""

from __future__ import annotations

from bench import mtls


def test_the_mtls_benchmark_measures_each_backend_plain_and_over_mtls() -> None:
    """One short round at concurrency 1 against a plain and a TLS uvicorn process gives figures for every
    variant (both backends and the bare aiohttp client, each plain and over mTLS), one table row per pair and
    a verdict for the default backend."""
    results = mtls.run(rounds=1, seconds=0.05, concurrency=(1,), loops=("asyncio",))
    labels = {variant.label for variant in results.variants}
    assert labels == {
        f"{backend}, {kind}" for backend in ("aiohttp", "httpcore", mtls.RAW) for kind in (mtls.PLAIN, mtls.MTLS)
    }
    assert set(results.rows) == {(1, label) for label in labels}
    for row in results.rows.values():
        assert row.throughput > 0 and row.cpu_per_call > 0 and row.p50_s > 0
    table = mtls.report(results).splitlines()
    assert [line.split(" | ")[0] for line in table[2:]] == ["| aiohttp", "| httpcore", f"| {mtls.RAW}"]
    verdicts = mtls.targets(results).splitlines()
    assert len(verdicts) == 3 and verdicts[2].startswith("| aiohttp | 1 | ")
    assert "target <= 1.10x" in verdicts[2]
