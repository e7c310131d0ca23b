"""The observability benchmark's instruction-count rows: each variant can be driven on its own (as callgrind
runs it), and the report splits a tracing row into the OpenTelemetry calls alone and the mesh's own part."""

from __future__ import annotations

import asyncio

import pytest

from bench import observability
from bench.observability import BASELINE, METRICS_OFF, RECORDING, SDK_ALONE, UNSAMPLED


@pytest.mark.parametrize("variant", observability.INSTRUCTION_VARIANTS)
def test_every_variant_runs_alone(variant: str) -> None:
    asyncio.run(observability.drive(variant, 5))


def test_the_report_shows_what_each_row_adds_and_the_mesh_s_own_part() -> None:
    counts = {
        BASELINE: 100_000.0,
        METRICS_OFF: 97_000.0,
        UNSAMPLED: 120_000.0,
        RECORDING: 160_000.0,
        SDK_ALONE[UNSAMPLED]: 18_000.0,
        SDK_ALONE[RECORDING]: 55_000.0,
    }
    rows = {line.split(" | ")[0].lstrip("| "): line for line in observability.instruction_report(counts).splitlines()}
    assert "| +3,000 (+3.1%) | <= 5% | yes |" in rows[METRICS_OFF]  # 100,000 against 97,000
    assert "| +20,000 (+20.0%) | <= 5% | no | 18,000 | +2,000 (+2.0%) |" in rows[UNSAMPLED]
    assert "| +60,000 (+60.0%) | <= 25% | no | 55,000 | +5,000 (+5.0%) |" in rows[RECORDING]
    assert observability.instruction_report(None).startswith("(valgrind is not installed")
