"""A PNG per benchmark scenario, for docs/benchmarks.md: ``docs/img/bench-<scenario>.png``.

Each ``plot_<scenario>(results, directory=IMG)`` takes what that scenario's ``run`` returns and writes one
small figure, returning its path; ``plot_all(overhead=..., e2e=..., ...)`` draws those it is given. They
need matplotlib (the ``bench`` extra: ``pip install 'fastapi-mesh[bench]'``), imported only when a figure
is drawn; without it, ``plot_all`` prints a note and draws nothing. Figures are drawn on matplotlib's Agg
canvas without pyplot, so nothing global is touched and no display is needed.
"""

from __future__ import annotations

import importlib.util
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from bench.e2e import Results as E2EResults
    from bench.mtls import Results as MTLSResults
    from bench.scale import ScaleResults

IMG = Path(__file__).resolve().parent.parent / "docs" / "img"
#: Figure width, inches, of a one-panel figure; dots per inch of every figure.
WIDTH = 7.0
DPI = 110
#: Colours for series, in order (matplotlib's tab10), and the one for rows that are not the mesh.
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")
OTHER = "#9a9a9a"
TARGET = "#d62728"


def available() -> bool:
    """Whether matplotlib is installed."""
    return importlib.util.find_spec("matplotlib") is not None


# ---------------------------------------------------------------------------------------------- drawing


def _figure(width: float, height: float, rows: int = 1, columns: int = 1) -> tuple[Figure, list[Axes]]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    found = [ax for row in axes for ax in row]
    for ax in found:
        ax.spines[["top", "right"]].set_visible(False)
        ax.tick_params(labelsize=8)
        ax.grid(axis="y", color="#e6e6e6", linewidth=0.8)
        ax.set_axisbelow(True)
    return figure, found


def _save(figure: Figure, directory: Path, scenario: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"bench-{scenario}.png"
    figure.savefig(path, format="png", metadata={"Software": None})  # no version stamp: reruns differ less
    return path


def _title(ax: Axes, text: str) -> None:
    ax.set_title(text, fontsize=10, loc="left")


def _wrap(label: str, width: int = 28) -> str:
    return "\n".join(textwrap.wrap(label, width)) or label


def _grouped_bars(ax: Axes, groups: Sequence[str], series: Mapping[str, Sequence[float]]) -> None:
    """One cluster of bars per group, one bar per series (colours in order)."""
    count = max(len(series), 1)
    width = 0.8 / count
    for i, (name, values) in enumerate(series.items()):
        offsets = [g - 0.4 + width * (i + 0.5) for g in range(len(groups))]
        ax.bar(offsets, values, width * 0.92, label=name, color=COLOURS[i % len(COLOURS)])
    ax.set_xticks(range(len(groups)), groups)


def _horizontal_bars(ax: Axes, labels: Sequence[str], values: Sequence[float], colours: Sequence[str]) -> None:
    positions = range(len(labels))
    ax.barh(list(positions), values, color=list(colours), height=0.65)
    ax.set_yticks(list(positions), [_wrap(label, 40) for label in labels], fontsize=8)
    ax.invert_yaxis()  # first row on top, as in the tables
    ax.grid(axis="y", visible=False)
    ax.grid(axis="x", color="#e6e6e6", linewidth=0.8)
    for position, value in zip(positions, values, strict=True):
        ax.annotate(
            f"{value:,.1f}", (value, position), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7
        )


def _plain_log_axis(ax: Axes, values: Sequence[int]) -> None:
    """A logarithmic x axis ticked at ``values``, written out (``1,000``, not ``10^3``)."""
    ax.set_xscale("log")
    ax.set_xticks(list(values), [f"{v:,}" for v in values])
    ax.minorticks_off()


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def _legend_below(figure: Figure, ax: Axes, columns: int = 3) -> None:
    handles, labels = ax.get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=columns, fontsize=8, frameon=False)


# -------------------------------------------------------------------------------------------- scenarios


def plot_overhead(results: Mapping[str, float], directory: Path = IMG) -> Path:
    """``bench.overhead.run``'s seconds per call per variant: CPU µs per call, mesh rows in colour."""
    labels = list(results)
    values = [results[label] * 1e6 for label in labels]
    colours = [COLOURS[0] if label.startswith("mesh") else OTHER for label in labels]
    figure, (ax,) = _figure(WIDTH, max(0.45 * len(labels) + 1.2, 2.6))
    _horizontal_bars(ax, labels, values, colours)
    ax.set_xlabel("CPU time per call (µs)", fontsize=9)
    _title(ax, "Per-call cost of the full stack, mock transport")
    return _save(figure, directory, "overhead")


def plot_balancer(results: Mapping[str, Mapping[str, Mapping[int, float]]], directory: Path = IMG) -> Path:
    """``bench.balancer.run``: pick cost and balancer memory per endpoint against the endpoint count."""
    figure, (picks, memory) = _figure(WIDTH * 1.4, 3.6, 1, 2)
    for i, (strategy, row) in enumerate(results.items()):
        sizes = sorted(row["pick_s"])
        colour = COLOURS[i % len(COLOURS)]
        picks.plot(sizes, [row["pick_s"][n] * 1e6 for n in sizes], marker="o", color=colour, label=strategy)
        memory.plot(sizes, [row["bytes_per_endpoint"][n] for n in sizes], marker="o", color=colour)
    sizes = sorted({n for row in results.values() for n in row["pick_s"]})
    for ax in (picks, memory):
        _plain_log_axis(ax, sizes)
        ax.set_xlabel("endpoints", fontsize=9)
        ax.set_ylim(bottom=0)
    picks.set_ylabel("pick (µs)", fontsize=9)
    memory.set_ylabel("balancer memory per endpoint (bytes)", fontsize=9)
    _title(picks, "Load balancer: cost of a pick")
    _title(memory, "Load balancer: memory per endpoint")
    _legend_below(figure, picks, columns=4)
    return _save(figure, directory, "balancer")


def plot_e2e(results: E2EResults, directory: Path = IMG) -> Path:
    """``bench.e2e.run``: throughput, p99 and client CPU per call for every variant at every concurrency."""
    levels = list(results.rows)
    labels = list(dict.fromkeys(label for rows in results.rows.values() for label in rows))
    groups = [f"concurrency {level}" for level in levels]

    def series(value: Callable[[Any], float]) -> dict[str, list[float]]:
        return {
            label: [value(results.rows[level][label]) if label in results.rows[level] else 0.0 for level in levels]
            for label in labels
        }

    figure, (speed, tail, cpu) = _figure(WIDTH * 1.7, 4.4, 1, 3)
    _grouped_bars(speed, groups, series(lambda row: row.throughput))
    _grouped_bars(tail, groups, series(lambda row: row.p99_s * 1e3))
    _grouped_bars(cpu, groups, series(lambda row: row.cpu_per_call * 1e6))
    speed.set_ylabel("calls per second", fontsize=9)
    tail.set_ylabel("p99 latency (ms)", fontsize=9)
    tail.set_yscale("log")
    cpu.set_ylabel("client CPU per call (µs)", fontsize=9)
    _title(speed, "Throughput")
    _title(tail, "p99 latency")
    _title(cpu, "Client CPU per call")
    _legend_below(figure, speed, columns=3)
    return _save(figure, directory, "e2e")


def plot_mtls(results: MTLSResults, directory: Path = IMG) -> Path:
    """``bench.mtls.run``: client CPU per call, plain HTTP against mTLS, per backend and event loop."""
    clients: dict[str, dict[bool, str]] = {}
    for variant in results.variants:
        name = variant.backend + (" + uvloop" if variant.loop == "uvloop" else "")
        clients.setdefault(name, {})[variant.mtls] = variant.label
    names = [name for name, labels in clients.items() if len(labels) == 2]
    figure, axes = _figure(WIDTH * 0.75 * max(len(results.concurrency), 1), 3.8, 1, max(len(results.concurrency), 1))
    for ax, level in zip(axes, results.concurrency, strict=True):
        _grouped_bars(
            ax,
            [_wrap(name, 14) for name in names],
            {
                kind: [results.rows[level, clients[name][secure]].cpu_per_call * 1e6 for name in names]
                for kind, secure in (("plain HTTP", False), ("mTLS", True))
            },
        )
        ax.set_ylabel("client CPU per call (µs)", fontsize=9)
        _title(ax, f"mTLS against plain HTTP, concurrency {level}")
    _legend_below(figure, axes[0], columns=2)
    return _save(figure, directory, "mtls")


def plot_observability(results: Mapping[str, float], directory: Path = IMG) -> Path:
    """``bench.observability.run``: µs per call per variant, and for the tracing rows what their OpenTelemetry
    calls cost alone."""
    sdk: Mapping[str, float] = getattr(results, "sdk", {})
    labels = list(results)
    figure, (ax,) = _figure(WIDTH, max(0.55 * len(labels) + 1.4, 2.6))
    _horizontal_bars(ax, labels, [results[label] * 1e6 for label in labels], [COLOURS[0]] * len(labels))
    alone = [(i, sdk[label] * 1e6) for i, label in enumerate(labels) if label in sdk]
    if alone:
        ax.barh(
            [i for i, _ in alone],
            [value for _, value in alone],
            height=0.25,
            color=COLOURS[1],
            label="its OpenTelemetry calls alone",
        )
        _legend_below(figure, ax, columns=1)
    ax.set_xlabel("CPU time per call (µs)", fontsize=9)
    _title(ax, "Metrics and tracing: cost per call, mock transport")
    return _save(figure, directory, "observability")


def plot_discovery(results: Mapping[str, Any], directory: Path = IMG) -> Path:
    """``bench.discovery.run``: time to apply each kind of update, and a call's cost right after one."""
    updates: Mapping[str, Mapping[str, float]] = results["updates"]
    calls: Mapping[str, Mapping[str, float]] = results["calls"]
    figure, (apply, call) = _figure(WIDTH * 1.3, 3.6, 1, 2)
    kinds = list(updates)
    apply.bar([_wrap(k, 10) for k in kinds], [updates[k]["update_s"] * 1e3 for k in kinds], color=COLOURS[0])
    apply.set_ylabel("time to apply (ms)", fontsize=9)
    _title(apply, f"An update of {results.get('size', 0):,} endpoints")
    variants = list(calls)
    call.bar([_wrap(v, 14) for v in variants], [calls[v]["call_s"] * 1e6 for v in variants], color=COLOURS[2])
    call.set_ylabel("time per call (µs)", fontsize=9)
    _title(call, "A call right after an update")
    return _save(figure, directory, "discovery")


def plot_probes(results: Mapping[str, Mapping[str, float]], directory: Path = IMG) -> Path:
    """``bench.probes.run``: µs per probe of each probe path, per app."""
    apps = list(results)
    paths = list(dict.fromkeys(path for row in results.values() for path in row))
    figure, (ax,) = _figure(WIDTH * 0.85, 3.4)
    _grouped_bars(
        ax,
        [_wrap(app, 16) for app in apps],
        {path: [results[app].get(path, 0.0) * 1e6 for app in apps] for path in paths},
    )
    ax.set_ylabel("time per probe (µs)", fontsize=9)
    _legend_below(figure, ax, columns=len(paths) or 1)
    _title(ax, "Probes with and without slow checks registered")
    return _save(figure, directory, "probes")


def plot_scale(results: ScaleResults, directory: Path = IMG) -> Path:
    """``bench.scale.run``: per-call cost by services and distinct paths, the gateway's per-request cost,
    memory per service, and memory kept for distinct paths."""
    figure, (calls, gateway, services, paths) = _figure(WIDTH * 1.4, 6.4, 2, 2)
    counts = sorted({n for n, _ in results.calls})
    for i, p in enumerate(sorted({p for _, p in results.calls})):
        shown = [n for n in counts if (n, p) in results.calls]
        calls.plot(
            [counts.index(n) for n in shown],
            [results.calls[n, p].call_s * 1e6 for n in shown],
            marker="o",
            color=COLOURS[i % len(COLOURS)],
            label=_plural(p, "distinct path"),
        )
    if results.calls:
        base = results.calls[min(results.calls, key=lambda size: (size[0] * size[1], size))].call_s * 1e6
        calls.axhline(base * 1.2, color=TARGET, linestyle="--", linewidth=1, label="target: 1.2x the smallest")
    calls.set_xticks(range(len(counts)), [f"{n:,}" for n in counts])
    calls.set_xlabel("upstream services", fontsize=9)
    calls.set_ylabel("CPU per call (µs)", fontsize=9)
    calls.set_ylim(bottom=0)
    calls.legend(fontsize=7, frameon=False, loc="lower right")
    _title(calls, "Per call, by services and paths")

    sizes = list(results.gateway)
    gateway.bar(
        [f"{_plural(n, 'service')}\n{_plural(p, 'path')}" for n, p in sizes],
        [results.gateway[size].request_s * 1e6 for size in sizes],
        color=COLOURS[2],
    )
    if sizes:
        smallest = results.gateway[min(sizes, key=lambda size: (size[0] * size[1], size))]
        gateway.axhline(smallest.request_s * 1.2e6, color=TARGET, linestyle="--", linewidth=1)
    gateway.set_ylabel("CPU per request (µs)", fontsize=9)
    _title(gateway, "Gateway request (FastAPI + Mesh, in-process)")

    memory = sorted(results.memory.values(), key=lambda m: m.services)
    per_service = [m.per_service / 1024 for m in memory]
    services.bar([f"{m.services:,}" for m in memory], per_service, color=COLOURS[0])
    for position, value in enumerate(per_service):
        services.annotate(
            f"{value:.1f}", (position, value), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=7
        )
    services.set_xlabel("upstream services (3 endpoints each)", fontsize=9)
    services.set_ylabel("client memory / services (KiB)", fontsize=9)
    _title(services, "Memory per service (the client's own included)")

    kept = sorted(results.paths.values(), key=lambda m: m.paths)
    paths.plot([m.paths for m in kept], [m.retained_bytes / 1024 for m in kept], marker="o", color=COLOURS[3])
    _plain_log_axis(paths, [m.paths for m in kept])
    paths.set_xlabel("distinct paths called on one service", fontsize=9)
    paths.set_ylabel("most held for them (KiB)", fontsize=9)
    paths.set_ylim(bottom=0)
    _title(paths, "Memory for distinct paths")
    return _save(figure, directory, "scale")


class FailoverFigures(Protocol):
    """What ``plot_failover`` reads for one client in one scenario."""

    @property
    def success_rate(self) -> float:
        """Calls that succeeded, as a fraction of the calls offered (0 to 1)."""

    @property
    def p99_s(self) -> float:
        """99th percentile latency of a call, seconds."""

    @property
    def upstream_per_request(self) -> float:
        """Requests the upstreams received per request offered (retries, hedges and probes included)."""


class FailoverResults(Protocol):
    """``rows``: scenario -> client -> its figures, in the order to show them."""

    @property
    def rows(self) -> Mapping[str, Mapping[str, FailoverFigures]]: ...


def plot_failover(
    results: FailoverResults | Mapping[str, Mapping[str, FailoverFigures]], directory: Path = IMG
) -> Path:
    """The failover scenarios: per scenario, each client's success rate, p99 and upstream requests per
    offered request. ``results`` has ``rows`` (scenario -> client -> figures) or is that mapping itself."""
    rows = results if isinstance(results, Mapping) else results.rows
    scenarios = list(rows)
    clients = list(dict.fromkeys(client for row in rows.values() for client in row))
    groups = [_wrap(scenario, 16) for scenario in scenarios]

    def series(value: Callable[[FailoverFigures], float]) -> dict[str, list[float]]:
        return {client: [value(rows[s][client]) if client in rows[s] else 0.0 for s in scenarios] for client in clients}

    figure, (success, tail, load) = _figure(WIDTH * 1.7, 4.2, 1, 3)
    _grouped_bars(success, groups, series(lambda f: f.success_rate * 100))
    _grouped_bars(tail, groups, series(lambda f: f.p99_s * 1e3))
    _grouped_bars(load, groups, series(lambda f: f.upstream_per_request))
    success.set_ylabel("calls that succeeded (%)", fontsize=9)
    success.set_ylim(0, 105)
    tail.set_ylabel("p99 latency (ms)", fontsize=9)
    tail.set_yscale("log")
    load.set_ylabel("upstream requests per offered request", fontsize=9)
    load.axhline(1.0, color=OTHER, linestyle="--", linewidth=1)
    _title(success, "Success rate")
    _title(tail, "p99 latency")
    _title(load, "Load on the upstreams")
    _legend_below(figure, success, columns=min(len(clients), 4) or 1)
    return _save(figure, directory, "failover")


# ------------------------------------------------------------------------------------------------- all


PLOTS: dict[str, Callable[[Any, Path], Path]] = {
    "overhead": plot_overhead,
    "balancer": plot_balancer,
    "e2e": plot_e2e,
    "mtls": plot_mtls,
    "observability": plot_observability,
    "discovery": plot_discovery,
    "probes": plot_probes,
    "scale": plot_scale,
    "failover": plot_failover,
}


def redraw(scenario: str, results: Any, directory: Path = IMG) -> str:
    """The ``--plot`` of a benchmark run alone: redraws ``scenario``'s PNG from ``results`` and says where,
    or that matplotlib is not installed."""
    return str(PLOTS[scenario](results, directory)) if available() else "matplotlib is not installed"


def plot_all(directory: Path = IMG, **results: Any) -> list[Path]:
    """A PNG for each scenario given by name (``overhead=``, ``balancer=``, ``e2e=``, ``mtls=``,
    ``observability=``, ``discovery=``, ``probes=``, ``scale=``, ``failover=``; None: skipped); the paths
    written. Without matplotlib: a printed note, and nothing written."""
    unknown = sorted(set(results) - set(PLOTS))
    if unknown:
        raise TypeError(f"no plot for {', '.join(unknown)}; the scenarios are {', '.join(PLOTS)}")
    if not available():
        print("plots skipped: matplotlib is not installed (pip install 'fastapi-mesh[bench]')")
        return []
    return [PLOTS[name](given, directory) for name, given in results.items() if given is not None]
