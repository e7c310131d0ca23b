"""Every benchmark scenario's plot writes a PNG from results shaped as its ``run`` returns them; without
matplotlib, ``plot_all`` says so and writes nothing."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench import e2e, mtls, observability, plots, scale

pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's header; fails unless the file is a PNG."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _row(i: int) -> e2e.Row:
    return e2e.Row(
        throughput=1_000.0 + i, p50_s=0.001, p99_s=0.002 + i / 1e4, cpu_per_call=300e-6, proxy_cpu_per_call=0.0
    )


@dataclass
class Figures:
    success_rate: float
    p99_s: float
    upstream_per_request: float


@dataclass
class FailoverRun:
    rows: dict[str, dict[str, Figures]]


def fake_results() -> dict[str, Any]:
    """Small results of every scenario, in the shapes their ``run`` functions return."""
    measured = observability.Results({name: 40e-6 + i * 5e-6 for i, name in enumerate(observability.VARIANTS)})
    measured.sdk = {observability.UNSAMPLED: 5e-6, observability.RECORDING: 20e-6}
    measured.exported = {}
    variants = mtls.variants(loops=("asyncio",), backends=("aiohttp",))
    return {
        "overhead": {"raw httpx": 80e-6, "mesh + deadline": 45e-6},
        "balancer": {
            "round-robin": {"pick_s": {10: 0.7e-6, 1_000: 0.8e-6}, "bytes_per_endpoint": {10: 950.0, 1_000: 214.0}},
            "ip-hash": {"pick_s": {10: 1.6e-6, 1_000: 1.9e-6}, "bytes_per_endpoint": {10: 1_781.0, 1_000: 323.0}},
        },
        "e2e": e2e.Results(rows={1: {e2e.RAW: _row(0), "mesh, aiohttp": _row(1)}, 16: {e2e.RAW: _row(2)}}),
        "mtls": mtls.Results(
            rows={(level, v.label): _row(i) for level in (1, 16) for i, v in enumerate(variants)},
            variants=variants,
            concurrency=(1, 16),
        ),
        "observability": measured,
        "discovery": {
            "updates": {
                "unchanged": {"update_s": 0.6e-3, "kept": 1_000},
                "all replaced": {"update_s": 1.7e-3, "kept": 0},
            },
            "calls": {"stable": {"call_s": 53e-6, "python_calls": 181}},
            "size": 1_000,
        },
        "probes": {"no checks": {"/health/ready": 234e-6, "/health/live": 254e-6}},
        "scale": scale.ScaleResults(
            calls={
                (1, 1): scale.CallCost(40e-6, 179),
                (1, 100): scale.CallCost(41e-6, 179),
                (200, 1): scale.CallCost(45e-6, 181),
            },
            memory={1: scale.ServiceMemory(1, 3, 36_000), 200: scale.ServiceMemory(200, 600, 3_300_000)},
            paths={1: scale.PathMemory(1, 0), 1_000: scale.PathMemory(1_000, 150_000)},
            gateway={(1, 1): scale.GatewayCost(400e-6, 1, 2, 11_000)},
        ),
        "failover": FailoverRun(
            {
                "one replica down": {"raw httpx": Figures(0.66, 0.004, 1.0), "mesh": Figures(1.0, 0.005, 1.05)},
                "one replica slow": {"raw httpx": Figures(1.0, 0.5, 1.0), "mesh": Figures(1.0, 0.02, 1.1)},
            }
        ),
    }


@pytest.mark.parametrize("scenario", list(plots.PLOTS))
def test_each_scenario_plot_writes_a_png_named_after_it(scenario: str, tmp_path: Path) -> None:
    path = plots.PLOTS[scenario](fake_results()[scenario], tmp_path)
    assert path == tmp_path / f"bench-{scenario}.png"
    assert path.stat().st_size > 5_000  # a drawn figure, not an empty canvas
    width, height = _png_size(path)
    assert 400 <= width <= 2_000 and 250 <= height <= 1_200  # small figures, as the page shows them


def test_failover_plot_takes_the_scenario_mapping_itself(tmp_path: Path) -> None:
    rows = fake_results()["failover"].rows
    path = plots.plot_failover(rows, tmp_path)
    _png_size(path)


def test_plot_all_draws_every_scenario_given_and_skips_none(tmp_path: Path) -> None:
    given = fake_results()
    written = plots.plot_all(tmp_path, **{**given, "probes": None})
    assert sorted(p.name for p in written) == sorted(f"bench-{name}.png" for name in given if name != "probes")
    assert not (tmp_path / "bench-probes.png").exists()


def test_plot_all_without_matplotlib_prints_a_note_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(plots, "available", lambda: False)
    assert plots.plot_all(tmp_path, **fake_results()) == []
    assert "matplotlib is not installed" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_plot_all_refuses_a_scenario_it_has_no_plot_for(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="no plot for latency"):
        plots.plot_all(tmp_path, latency={})


def test_redraw_writes_one_scenario_and_says_where(tmp_path: Path) -> None:
    assert plots.redraw("scale", fake_results()["scale"], tmp_path) == str(tmp_path / "bench-scale.png")
    assert [p.name for p in tmp_path.iterdir()] == ["bench-scale.png"]


def test_redraw_without_matplotlib_says_so_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plots, "available", lambda: False)
    assert plots.redraw("scale", fake_results()["scale"], tmp_path) == "matplotlib is not installed"
    assert list(tmp_path.iterdir()) == []
