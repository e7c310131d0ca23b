"""Backoff delays between attempts: the strategy gives the base, jitter spreads it, max_delay caps it."""

from __future__ import annotations

import random
from email.utils import parsedate_to_datetime

from ..settings import RetryConfig

__all__ = ["backoff_delay", "parse_retry_after"]


def _fibonacci(n: int) -> int:
    a, b = 1, 1
    for _ in range(n - 1):
        a, b = b, a + b
    return a


def backoff_delay(config: RetryConfig, retry: int, rng: random.Random, previous: float = 0.0) -> float:
    """Seconds to wait before retry number ``retry`` (1 for the first retry).

    >>> cfg = RetryConfig(initial_delay=0.5, max_delay=30, backoff_strategy="fibonacci", jitter="none")
    >>> [backoff_delay(cfg, n, random.Random(0)) for n in range(1, 7)]
    [0.5, 0.5, 1.0, 1.5, 2.5, 4.0]
    """
    initial, cap = config.initial_delay, config.max_delay
    strategy = config.backoff_strategy
    if strategy == "decorrelated-jitter":
        # AWS's "decorrelated jitter": random between the initial delay and 3x the previous one.
        upper = max(initial, (previous or initial) * 3)
        return min(cap, rng.uniform(initial, upper))
    if strategy == "exponential":
        base = initial * (2.0 ** min(retry - 1, 62))
    elif strategy == "fibonacci":
        base = initial * _fibonacci(min(retry, 90))
    elif strategy == "linear":
        base = initial * retry
    else:
        base = initial
    base = min(base, cap)
    jitter = config.jitter
    if jitter == "full":
        return rng.uniform(0.0, base)
    if jitter == "equal":
        return base / 2 + rng.uniform(0.0, base / 2)
    return base


def parse_retry_after(value: str | None, now_epoch: float) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or None if unusable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now_epoch)
