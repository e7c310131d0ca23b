"""Hedging's state: a service's recent attempt latencies, for ``retry.hedge_delay: "p95"``.

The hedge delay is fixed (``retry.hedge_delay: 0.05``) or the service's observed p95 latency
(``retry.hedge_delay: "p95"``, from the last ``LATENCY_SAMPLES`` successful attempts; no hedging until
``MIN_SAMPLES`` have been seen). The retry layer sends the hedges (``layers.hedge``).
"""

from __future__ import annotations

__all__ = ["LATENCY_SAMPLES", "MIN_SAMPLES", "LatencyWindow"]

LATENCY_SAMPLES = 128
MIN_SAMPLES = 20
#: The p95 is recomputed every this many samples, not on every call.
RECOMPUTE_EVERY = 16


class LatencyWindow:
    """The last ``LATENCY_SAMPLES`` attempt latencies of a service, and their 95th percentile.

    >>> window = LatencyWindow()
    >>> for ms in range(1, 113):  # the p95 is recomputed every 16 samples: here, at the 112th
    ...     window.add(ms / 1000)
    >>> round(window.p95 or 0, 3)
    0.106
    """

    __slots__ = ("_count", "_next", "_p95", "_samples")

    def __init__(self) -> None:
        self._samples: list[float] = []
        self._next = 0
        self._count = 0
        self._p95: float | None = None

    def add(self, seconds: float) -> None:
        if len(self._samples) < LATENCY_SAMPLES:
            self._samples.append(seconds)
        else:
            self._samples[self._next] = seconds
            self._next = (self._next + 1) % LATENCY_SAMPLES
        self._count += 1
        if self._count >= MIN_SAMPLES and (self._p95 is None or self._count % RECOMPUTE_EVERY == 0):
            ordered = sorted(self._samples)
            self._p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95) - 1)]

    @property
    def p95(self) -> float | None:
        return self._p95
