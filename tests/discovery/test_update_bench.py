"""The discovery-update benchmark runs and reports every variant (speed is judged in docs, not here)."""

from __future__ import annotations

import asyncio

from bench import discovery as bench


def test_updates_touch_only_what_changed_and_are_reported() -> None:
    results = bench.run_updates(size=50, rounds=1)
    assert {kind: row["kept"] for kind, row in results.items()} == {
        "unchanged": 50,
        "reordered": 50,
        "one replaced": 49,
        "all replaced": 0,
    }
    calls = asyncio.run(bench.run_calls(rounds=1, calls=20))
    assert set(calls) == set(bench.CALL_VARIANTS)
    # A call after an update runs the same code as a call to a stable set: nothing is rebuilt lazily.
    # (Within half a call per call: a call that crosses a retry-budget time slot rolls the budget's window,
    # 3 more calls (clock.now, _advance, _slot_of), in one call of 50 now and then.)
    counts = [row["python_calls"] for row in calls.values()]
    assert max(counts) - min(counts) < 0.5, counts
    table = bench.report({"updates": results, "calls": calls, "size": 50})
    assert "| one replaced |" in table and "| one endpoint replaced |" in table
