"""Several worker processes behind one port (``uvicorn --workers N``, gunicorn): Prometheus multiprocess mode.

With ``PROMETHEUS_MULTIPROC_DIR`` set to a directory (shared by the workers, emptied before the server
starts, as ``prometheus_client`` requires), each worker writes the mesh's series into files of its own
there, every ``SYNC_INTERVAL`` seconds and right before it answers a scrape, and ``/metrics`` answers
from every worker's files through ``prometheus_client``'s ``MultiProcessCollector``: counters and
histograms are summed over the workers (those of workers that have exited included, so counters never go
back), gauges combined as ``GAUGE_MODES`` says. A worker that stops cleanly removes its gauge files; for
one that died, call ``mark_process_dead(pid)`` (gunicorn: in the ``child_exit`` hook), as for
``prometheus_client``'s own.

The files have ``prometheus_client``'s format, named ``<type>_<pid>-mesh.db`` (``-mesh2`` ... for a second
Mesh in the process), next to (never shared with) the files ``prometheus_client`` metric objects write in
multiprocess mode.

``Mesh`` does all this when the variable is set; without it, nothing here runs:

>>> multiprocess_dir() if MULTIPROC_ENV not in os.environ else None
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import itertools
import logging
import os
from collections.abc import Iterable, Sequence

from prometheus_client import multiprocess
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.registry import Collector

__all__ = [
    "GAUGE_MODES",
    "MULTIPROC_ENV",
    "SYNC_INTERVAL",
    "MultiprocessWriter",
    "mark_process_dead",
    "multiprocess_dir",
]

logger = logging.getLogger("fastapi_mesh.observability")

#: The variable ``prometheus_client`` reads: the directory that turns multiprocess mode on.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Seconds between two writes of a worker's series (a scrape also writes the answering worker's first).
SYNC_INTERVAL = 1.0
#: How a gauge is combined over the workers, by family name; any other gauge takes ``livemax``.
#: ``livesum``: what is in progress in each worker adds up; ``livemax``: the state the workers share
#: (endpoints, breaker state, discovery), where a worker that sees it counts.
GAUGE_MODES: dict[str, str] = {
    "mesh_upstream_in_flight": "livesum",
    "mesh_bulkhead_in_flight": "livesum",
    "mesh_inbound_requests_in_progress": "livesum",
}
_DEFAULT_MODE = "livemax"
_SUFFIX = "-mesh"
#: Writers made in this process so far: a second Mesh in one process writes files of its own.
_made = itertools.count()


def multiprocess_dir() -> str | None:
    """The multiprocess directory when ``PROMETHEUS_MULTIPROC_DIR`` is set (else None); one that is not an
    existing directory raises ``ValueError`` naming it."""
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return None
    if not os.path.isdir(path):
        raise ValueError(f"{MULTIPROC_ENV}={path!r} is not a directory: create it (empty) before the server starts")
    return path


def mark_process_dead(pid: int, path: str | None = None) -> None:
    """Forget the gauges of worker ``pid``, which has exited: the mesh's and ``prometheus_client``'s."""
    path = path if path is not None else os.environ.get(MULTIPROC_ENV)
    if not path:
        return
    for name in glob.glob(os.path.join(path, f"gauge_live*_{pid}{_SUFFIX}*.db")):
        with contextlib.suppress(FileNotFoundError):
            os.remove(name)
    multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


class MultiprocessWriter:
    """Writes what ``collectors`` collect into this process's files under ``path``.

    ``write()`` stores the current value of every series (a counter's total, a gauge's value, a
    histogram's count per bucket); a gauge series that has gone (an endpoint that left discovery) leaves
    the file with it. ``start()`` writes every ``interval`` seconds until ``stop()``, which writes once more
    and removes this process's gauge files.
    """

    def __init__(self, collectors: Sequence[Collector], path: str, interval: float = SYNC_INTERVAL) -> None:
        self.collectors = list(collectors)
        self.path = path
        self.interval = interval
        self._pid = os.getpid()
        number = next(_made)
        self._suffix = _SUFFIX if number == 0 else f"{_SUFFIX}{number + 1}"
        self._files: dict[str, MmapedDict] = {}
        self._keys: dict[str, set[str]] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def ident(self) -> str:
        """What this writer's file names end with (before ``.db``): the pid, then ``-mesh``."""
        return f"{os.getpid()}{self._suffix}"

    def write(self) -> None:
        if os.getpid() != self._pid:  # forked after it was made (gunicorn --preload): start over, own files
            self._pid = os.getpid()
            self._files = {}
            self._keys = {}
        rows: dict[str, dict[str, float]] = {}
        for collector in self.collectors:
            for family in collector.collect():
                for prefix, key, value in _rows(family):
                    rows.setdefault(prefix, {})[key] = value
        for prefix in set(self._keys) - set(rows):
            if prefix.startswith("gauge_"):
                rows[prefix] = {}  # every series of the file is gone: empty it
        for prefix, values in rows.items():
            self._store(prefix, values)

    def _store(self, prefix: str, values: dict[str, float]) -> None:
        name = os.path.join(self.path, f"{prefix}_{self.ident}.db")
        known = self._keys.get(prefix, set())
        file = self._files.get(prefix)
        if prefix.startswith("gauge_") and not known.issubset(values):
            # Some series went away: write a new file beside the old one and swap it in at once.
            if file is not None:
                file.close()  # type: ignore[no-untyped-call]
            with contextlib.suppress(FileNotFoundError):
                os.remove(name + ".new")  # left by a worker that died while swapping
            fresh = MmapedDict(name + ".new")  # type: ignore[no-untyped-call]
            for key, value in values.items():
                fresh.write_value(key, value, 0.0)  # type: ignore[no-untyped-call]
            os.replace(name + ".new", name)
            self._files[prefix] = fresh
            self._keys[prefix] = set(values)
            return
        if file is None:
            file = self._files[prefix] = MmapedDict(name)  # type: ignore[no-untyped-call]
        for key, value in values.items():
            file.write_value(key, value, 0.0)  # type: ignore[no-untyped-call]
        known.update(values)
        self._keys[prefix] = known

    def start(self) -> None:
        """Write now and then every ``interval`` seconds (on the running loop) until ``stop()``."""
        self.write()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.write()
            except Exception:  # a full disk must not stop the worker; the next round tries again
                logger.exception("could not write the mesh's metrics to %s", self.path)

    async def stop(self) -> None:
        """Write a last time (counters keep their totals), then remove this process's gauge files."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.write()
        for prefix, file in list(self._files.items()):
            file.close()  # type: ignore[no-untyped-call]
            if prefix.startswith("gauge_"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(self.path, f"{prefix}_{self.ident}.db"))
        self._files = {}
        self._keys = {}


def _rows(family: Metric) -> Iterable[tuple[str, str, float]]:
    """``(file prefix, key, value)`` for each sample of ``family``, as ``prometheus_client`` would store it."""
    help_text = family.documentation
    if family.type == "counter":
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                yield "counter", _key(family.name, sample.name, sample.labels, help_text), sample.value
    elif family.type in ("gauge", "info"):
        mode = GAUGE_MODES.get(family.name, _DEFAULT_MODE)
        for sample in family.samples:
            # an info family "mesh" has the sample "mesh_info": stored as the gauge it is on the wire
            name = sample.name if family.type == "info" else family.name
            yield f"gauge_{mode}", _key(name, sample.name, sample.labels, help_text), sample.value
    elif family.type == "histogram":
        below: dict[tuple[tuple[str, str], ...], float] = {}
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                labels = {k: v for k, v in sample.labels.items() if k != "le"}
                series = tuple(sorted(labels.items()))
                count = sample.value - below.get(series, 0.0)  # stored per bucket, not cumulative
                below[series] = sample.value
                yield "histogram", _key(family.name, sample.name, sample.labels, help_text), count
            elif sample.name.endswith("_sum"):
                yield "histogram", _key(family.name, sample.name, sample.labels, help_text), sample.value


def _key(metric: str, name: str, labels: dict[str, str], help_text: str) -> str:
    return mmap_key(metric, name, list(labels), list(labels.values()), help_text)
