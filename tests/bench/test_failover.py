"""The failover benchmark runs at a tiny size and reports every scenario for every client (a smoke test:
speed is judged in docs/benchmarks.md, not here); its kill really kills, its faults really apply, and the
retry budget bounds what the mesh sends in a total outage."""

from __future__ import annotations

import json
import shutil
import signal

from bench import failover

RATE = 400.0
SECONDS = 0.4


def test_failover_bench_reports_every_scenario_and_kills_for_real() -> None:
    """One short round at 400 calls a second against three uvicorn processes: every scenario has figures
    for each of its clients, the open loop offered every call due, the killed replica's process died of
    SIGKILL and stopped answering while the others took its share, every call failed in the outage, and
    there the mesh sent no more than its retries and its budget allow; the report has its tables and the
    target verdicts."""
    results = failover.run(rounds=1, seconds=SECONDS, rate=RATE)
    clients = failover.clients()
    assert (failover.HAPROXY in {c.label for c in clients}) == (shutil.which("haproxy") is not None)
    assert list(results.rows) == list(failover.SCENARIOS)
    for scenario, rows in results.rows.items():
        assert list(rows) == [c.label for c in clients if scenario in c.scenarios]
        for figures in rows.values():
            assert figures.offered == round(RATE * SECONDS)
            assert 0.0 <= figures.success_rate <= 1.0
            assert 0 < figures.p50_s <= figures.p99_s <= figures.max_s
            assert figures.upstream_per_request >= 0 and figures.steady_p99_s > 0
            if scenario in failover.FAULTY:
                assert figures.faulty_share is not None and 0.0 <= figures.faulty_share <= 1.0
            else:
                assert figures.faulty_share is None
    for label, figures in results.rows[failover.STEADY].items():
        assert figures.success_rate == 1.0, label
        assert figures.upstream_per_request >= 1.0, label

    for label, samples in results.samples[failover.KILL].items():
        for sample in samples:
            kill = sample.kill
            assert kill is not None and kill.replica == failover.FAULTY[failover.KILL], label
            assert kill.returncode == -signal.SIGKILL and not kill.answered_after, label
            assert 0 < kill.at_s < SECONDS
            others = [count for name, count in sample.served.items() if name != kill.replica]
            assert len(others) == failover.REPLICAS - 1
            assert sample.served[kill.replica] < 0.6 * min(others), (label, sample.served)
    assert all(
        s.kill is None
        for scenario in failover.SCENARIOS
        if scenario != failover.KILL
        for taken in results.samples[scenario].values()
        for s in taken
    )

    outage = results.rows[failover.OUTAGE]
    assert all(figures.success_rate == 0.0 for figures in outage.values())
    max_retries = failover.mesh_settings(["http://127.0.0.1:1"]).retry.max_retries
    for label in (failover.MESH, failover.MESH_NO_BREAKER):
        assert outage[label].upstream_per_request <= 1 + max_retries, label
    alone = outage[failover.MESH_NO_BREAKER]  # no breaker: every call reaches a replica; the budget caps retries
    assert 1.0 <= alone.upstream_per_request <= failover.budget_bound(alone.offered, SECONDS)

    json.dumps(results.as_dict())  # plain data for plots
    text = failover.report(results)
    assert text.count("| client | calls offered |") == len(failover.SCENARIOS)
    for rows in results.rows.values():
        assert all(f"| {label} |" in text for label in rows)
    assert "| client | killed |" in text
    verdicts = failover.targets(results).splitlines()
    assert len(verdicts) == 2 + 4
    for line in verdicts[2:]:  # the mesh's column gives one verdict on each target
        words = line.split(" | ")[1].split()
        assert ("met" in words) != ("**missed**" in words), line
