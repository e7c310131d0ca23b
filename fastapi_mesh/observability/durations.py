"""Histograms without locks or label objects: the call durations each ``ServiceState`` keeps, the inbound
request durations ``InboundMetrics`` keeps; ``metrics`` exposes them when Prometheus scrapes.

>>> durations = CallDurations()
>>> durations.observe_call("GET", 200, 0.004)
>>> durations.observe_call("get", None, 0.2)          # no response: code_class "error"
>>> sorted(durations.series)
[('GET', '2xx'), ('GET', 'error')]
"""

from __future__ import annotations

from bisect import bisect_left

from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

__all__ = ["INBOUND_BUCKETS", "METHOD_LABELS", "NO_RESPONSE", "UPSTREAM_BUCKETS", "CallDurations", "Durations"]

#: Seconds; from a call answered on loopback to the longest a call should be allowed to take.
UPSTREAM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Seconds; from a fast in-process answer to the slowest a route should take.
INBOUND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Methods kept as label values; any other is counted as ``OTHER`` (the label set stays bounded).
METHOD_LABELS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: ``code_class`` of a call that got no response (it ended in a ``MeshError``).
NO_RESPONSE = "error"
_CODE_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
_METHODS = {**{m: m for m in METHOD_LABELS}, **{m.lower(): m for m in METHOD_LABELS}}


class Durations:
    """A histogram without locks or label objects: per label tuple, counts per bucket and their sum.

    ``series[labels]`` is ``[count in bucket 0, ..., count above the last bound, sum of the values]``.

    >>> d = Durations((0.1, 1.0))
    >>> d.observe(("x",), 0.05); d.observe(("x",), 0.5); d.observe(("x",), 3.0)
    >>> d.series[("x",)], d.cumulative(("x",))
    ([1.0, 1.0, 1.0, 3.55], [1.0, 2.0, 3.0])
    """

    __slots__ = ("buckets", "series")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.series: dict[tuple[str, ...], list[float]] = {}

    def observe(self, labels: tuple[str, ...], seconds: float) -> None:
        row = self.series.get(labels)
        if row is None:
            row = self.series[labels] = [0.0] * (len(self.buckets) + 2)
        row[bisect_left(self.buckets, seconds)] += 1
        row[-1] += seconds

    def cumulative(self, labels: tuple[str, ...]) -> list[float]:
        """Counts at or below each bound, ``+Inf`` last, as Prometheus exposes them."""
        total = 0.0
        counts = []
        for count in self.series[labels][:-1]:
            total += count
            counts.append(total)
        return counts

    def add_to(self, family: HistogramMetricFamily, prefix: tuple[str, ...] = ()) -> None:
        """Each series as a sample of ``family``, its label values after ``prefix``."""
        bounds = [floatToGoString(b) for b in self.buckets] + ["+Inf"]  # type: ignore[no-untyped-call]
        for labels, row in list(self.series.items()):
            family.add_metric([*prefix, *labels], list(zip(bounds, self.cumulative(labels), strict=True)), row[-1])

    def merged(self) -> list[float]:
        """Every series added up: ``[count per bucket ..., sum]`` (zeros when there is none)."""
        total = [0.0] * (len(self.buckets) + 2)
        for row in self.series.values():
            for i, value in enumerate(row):
                total[i] += value
        return total


class CallDurations(Durations):
    """One upstream service's call durations by ``(method, code_class)``, observed once per call: from its
    start to its final answer (after retries and hedges; for a stream, when the response head arrives)."""

    __slots__ = ("_rows",)

    def __init__(self) -> None:
        super().__init__(UPSTREAM_BUCKETS)
        #: The series row of each (method, status) seen, so that a call does one lookup (bounded: methods
        #: and statuses beyond ``_ROWS_KEPT`` pairs take the longer way, never more memory).
        self._rows: dict[tuple[str, int | None], list[float]] = {}

    def observe_call(self, method: str, status: int | None, seconds: float) -> None:
        """Note one call; ``status`` None: it ended without a response (``code_class="error"``)."""
        row = self._rows.get((method, status))
        if row is None:
            row = self._row(method, status)
        row[bisect_left(self.buckets, seconds)] += 1
        row[-1] += seconds

    def _row(self, method: str, status: int | None) -> list[float]:
        name = _METHODS.get(method)
        if name is None:
            name = method.upper() if method.upper() in METHOD_LABELS else "OTHER"
        code = NO_RESPONSE if status is None else _CODE_CLASSES.get(status // 100, "other")
        row = self.series.get((name, code))
        if row is None:
            row = self.series[(name, code)] = [0.0] * (len(self.buckets) + 2)
        if len(self._rows) < _ROWS_KEPT:
            self._rows[(method, status)] = row
        return row


#: (method, status) pairs whose row a ``CallDurations`` keeps at hand.
_ROWS_KEPT = 64
