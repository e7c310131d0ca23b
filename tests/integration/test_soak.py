"""The soak (``bench/soak.py``) at a short size, with the bounds of ``make soak``; and its bounds, which must fail
when they are broken."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from bench import soak
from bench.e2e import ROOT

pytestmark = pytest.mark.integration

#: A fault every 6 s instead of 30 s: in 60 s of load, every kind comes once in the warm-up round and all but
#: ``reset`` once more after it.
FAULT_EVERY = 6.0


@pytest.mark.timeout(150)
def test_a_minute_of_load_with_every_kind_of_fault_keeps_every_soak_bound() -> None:
    """60 s at 100 calls/s against three replicas while they are killed, answer 503, slow down, hang and cut
    bodies: memory and descriptors stay flat, every call ends, the counters return to zero, no POST arrives
    twice, no answer goes to the wrong call and no exception outside ``MeshError`` escapes; exit code 0."""
    command = [sys.executable, "-m", "bench.soak", "--minutes", "1", "--fault-every", str(FAULT_EVERY), "--quiet"]
    process = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=130, check=False)
    summary = json.loads(process.stdout)
    broken = [name for name, kept in summary["bounds"].items() if not kept]
    assert broken == [], json.dumps(summary, indent=2)
    assert process.returncode == 0 and summary["passed"]
    assert [fault["kind"] for fault in summary["faults"]] == [*soak.KINDS, *soak.KINDS[:4]]
    assert all(fault["cleared_s"] is not None for fault in summary["faults"])
    assert summary["rss"]["growth"] is not None and summary["other_fds"]["growth"] is not None
    assert summary["calls"]["offered"] == 6000 == summary["calls"]["completed"] + summary["calls"]["dropped"]
    posts = summary["posts"]
    assert 0 < posts["acknowledged"] <= posts["delivered"] <= posts["sent"]
    exercised = summary["exercised"]  # the faults reached the mesh and the calls
    assert exercised["breaker_trips"] >= 1 and exercised["ejections"] >= 1 and exercised["retries"] > 0
    assert summary["outcomes"]["GET CircuitOpen"] > 0 and summary["outcomes"]["POST UpstreamTimeout"] > 0


def _kept() -> dict[str, Any]:
    """A summary that keeps every bound."""
    return {
        "rss": {"growth": 0.01},
        "other_fds": {"growth": 0.0},
        "fds_before_client": 9,
        "fds_after_close": 9,
        "counters": {
            "bulkhead_active": 0,
            "bulkhead_queued": 0,
            "in_flight": 0,
            "endpoint_in_flight": [0, 0, 0],
            "half_open_in_flight": 0,
        },
        "stuck": 0,
        "posts": {"delivered_twice": 0, "redelivered_answers": 0},
        "mismatched_answers": 0,
        "unexpected": {"count": 0},
        "harness_errors": [],
    }


BREAKS = {
    "rss_flat": lambda s: s["rss"].update(growth=0.05),
    "fds_flat": lambda s: s["other_fds"].update(growth=0.1),
    "fds_released": lambda s: s.update(fds_after_close=10),
    "counters_zero": lambda s: s["counters"].update(endpoint_in_flight=[0, 1, 0]),
    "calls_ended": lambda s: s.update(stuck=1),
    "no_double_post": lambda s: s["posts"].update(delivered_twice=1),
    "answers_match": lambda s: s.update(mismatched_answers=1),
    "no_unexpected_exception": lambda s: s["unexpected"].update(count=1),
    "faults_applied": lambda s: s.update(harness_errors=["replica r2: r2 exited with 1"]),
}


def test_each_broken_bound_fails_the_soak() -> None:
    """A summary within every bound passes; breaking any one bound fails that bound alone."""
    assert all(soak.judge(_kept()).values())
    assert set(BREAKS) == set(soak.judge(_kept()))
    for name, breaking in BREAKS.items():
        summary = _kept()
        breaking(summary)
        assert [bound for bound, kept in soak.judge(summary).items() if not kept] == [name]


def test_growth_is_measured_between_calm_windows_after_the_warm_up_round() -> None:
    """Warm-up is the first round of the five faults: memory that grows during it does not count, memory that
    grows by 6% after it does; a run with no two calm windows after warm-up measures nothing."""
    faults = [soak.Fault(kind, "r1", 6.0 * k, 6.0 * k + 3) for k, kind in enumerate(soak.KINDS * 2, start=1)]
    rising = [soak.Sample(t / 2, 100 if t < 80 else 106, 12, 3) for t in range(130)]  # +6% at 40 s
    flat = [soak.Sample(t / 2, 100 if t < 40 else 106, 12, 3) for t in range(130)]  # +6% at 20 s, in warm-up
    assert soak.growth(rising, faults, 65.0, "rss")["growth"] == 0.06
    assert soak.growth(rising, faults, 65.0, "rss")["windows_s"] == [[33.0, 36.0], [63.0, 65.0]]
    assert soak.growth(flat, faults, 65.0, "rss")["growth"] == 0.0
    assert soak.growth(flat, faults, 65.0, "other_fds")["base"] == 9
    assert soak.growth(flat, faults[:1], 10.0, "rss")["growth"] is None
