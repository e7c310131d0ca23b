"""Retry budget, as Finagle and Linkerd: retries may add only a share of the traffic, plus a small floor.

>>> from fastapi_mesh.clock import ManualClock
>>> budget = RetryBudget(percent=20.0, ttl=10.0, min_per_second=0.0, clock=ManualClock())
>>> for _ in range(10):
...     budget.record_request()
>>> budget.try_withdraw(), budget.try_withdraw(), budget.try_withdraw()
(True, True, False)
>>> budget.exhausted_count
1

The rule: a retry at time ``t`` is allowed when, counting it, the retries of the last ``ttl`` seconds stay
within ``percent``% of the original requests of the last ``ttl`` seconds plus ``min_per_second * ttl``.
A retry needs a whole token, so the bound is exact: no rounding up.

Time is cut into ``buckets`` slots of ``width = ttl / buckets`` seconds (at most one second each, at
least ``MIN_BUCKETS`` of them). The window is counted conservatively on both sides: requests only from the
``buckets`` slots that lie wholly inside ``(t - ttl, t]``, retries from those plus the slot before, which
covers ``[t - ttl, t]``. So for every allowed retry at ``t``, retries in ``[t - ttl, t]`` (itself included)
<= percent/100 * requests in ``(t - ttl, t]`` + min_per_second * ttl, with no quantisation error; a deposit
counts for between ``ttl - width`` and ``ttl`` seconds.
"""

from __future__ import annotations

import math

from ..clock import Clock

__all__ = ["MAX_BUCKETS", "MAX_BUCKET_WIDTH", "MIN_BUCKETS", "RetryBudget"]

#: The window has at least this many slots (finer than a second for a short ttl) ...
MIN_BUCKETS = 8
#: ... each at most this many seconds wide ...
MAX_BUCKET_WIDTH = 1.0
#: ... unless the ttl is so long that this many would be needed (then slots get wider).
MAX_BUCKETS = 3600


class RetryBudget:
    """Deposits (original requests) and withdrawals (retries) over a sliding ``ttl`` window.

    ``record_request`` and ``try_withdraw`` are O(1) amortised: each slot is cleared once as time moves,
    and a jump longer than the window clears it in one pass of at most ``buckets + 1`` slots.
    """

    __slots__ = (
        "_current",
        "_floor",
        "_request_sum",
        "_requests",
        "_retries",
        "_retry_sum",
        "_size",
        "buckets",
        "clock",
        "exhausted_count",
        "min_per_second",
        "percent",
        "ttl",
        "width",
    )

    def __init__(self, percent: float, ttl: float, min_per_second: float, clock: Clock) -> None:
        if percent < 0 or min_per_second < 0:
            raise ValueError(f"retry budget: percent ({percent}) and min_per_second ({min_per_second}) must be >= 0")
        if not ttl > 0 or math.isinf(ttl):
            raise ValueError(f"retry budget: ttl ({ttl}s) must be a positive number of seconds")
        self.percent = percent
        self.ttl = ttl
        self.min_per_second = min_per_second
        self.clock = clock
        self.buckets = min(max(MIN_BUCKETS, math.ceil(ttl / MAX_BUCKET_WIDTH)), MAX_BUCKETS)
        self.width = ttl / self.buckets
        #: Retries refused because the budget was spent.
        self.exhausted_count = 0
        # The floor in hundredths of a retry, the unit ``percent * requests`` comes in (no division needed).
        self._floor = min_per_second * ttl * 100.0
        # One slot more than the window: the oldest slot still counts for retries, no longer for requests.
        self._size = self.buckets + 1
        self._requests = [0] * self._size
        self._retries = [0] * self._size
        self._request_sum = 0
        self._retry_sum = 0
        self._current = self._slot_of(clock.now())

    # ------------------------------------------------------------------------------------------ hot path

    def record_request(self) -> None:
        """Note one original request (a deposit)."""
        if self.clock.now() // self.width > self._current:  # a new slot: age out what left the window
            self._advance()
        self._requests[self._current % self._size] += 1
        self._request_sum += 1

    def try_withdraw(self) -> bool:
        """Ask for one retry: True (and counted) when the budget allows it, else False (and counted refused)."""
        self._advance()
        if (self._retry_sum + 1) * 100.0 <= self._request_sum * self.percent + self._floor:
            self._retries[self._current % self._size] += 1
            self._retry_sum += 1
            return True
        self.exhausted_count += 1
        return False

    # --------------------------------------------------------------------------------------- inspection

    def available(self) -> int:
        """How many retries the budget would allow now."""
        self._advance()
        cap = self._request_sum * self.percent + self._floor
        allowance = math.floor(cap / 100.0)
        # the division may round across a whole number: settle on try_withdraw's own comparison
        while allowance > 0 and allowance * 100.0 > cap:
            allowance -= 1
        while (allowance + 1) * 100.0 <= cap:
            allowance += 1
        return max(allowance - self._retry_sum, 0)

    def as_dict(self) -> dict[str, object]:
        available = self.available()
        return {
            "percent": self.percent,
            "ttl": self.ttl,
            "min_per_second": self.min_per_second,
            "requests": self._request_sum,
            "retries": self._retry_sum,
            "available": available,
            "exhausted": self.exhausted_count,
        }

    # ---------------------------------------------------------------------------------------- internals

    def _slot_of(self, now: float) -> int:
        return math.floor(now / self.width)

    def _advance(self) -> None:
        """Move the window to the clock's slot, dropping what has aged out."""
        target = self._slot_of(self.clock.now())
        current = self._current
        if target <= current:  # same slot (or a clock that went backwards: stay)
            return
        size = self._size
        if target - current >= size:
            for i in range(size):
                self._requests[i] = 0
                self._retries[i] = 0
            self._request_sum = 0
            self._retry_sum = 0
            self._current = target
            return
        requests = self._requests
        retries = self._retries
        buckets = self.buckets
        for slot in range(current + 1, target + 1):
            # slot - buckets leaves the request window; slot - buckets - 1 (same index as slot) leaves both
            self._request_sum -= requests[(slot - buckets) % size]
            index = slot % size
            self._retry_sum -= retries[index]
            requests[index] = 0
            retries[index] = 0
        self._current = target
