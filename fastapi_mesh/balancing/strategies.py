"""Load-balancing strategies: each picks one endpoint from the eligible candidates of one attempt."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .balancer import EndpointState

__all__ = [
    "IpHash",
    "LeastConnections",
    "LeastResponseTime",
    "P2CEwma",
    "RandomChoice",
    "RoundRobin",
    "Strategy",
    "Weighted",
    "build_strategy",
    "rendezvous",
]


class Strategy(Protocol):
    """Picks one of ``candidates`` (never empty). ``key`` is the call's affinity key, when it has one."""

    def choose(self, candidates: Sequence[EndpointState], key: str | None) -> EndpointState: ...


class RoundRobin:
    """Each endpoint in turn."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def choose(self, candidates: Sequence[EndpointState], key: str | None) -> EndpointState:
        # A counter that only grows: a retry's shorter candidate list must not reset the rotation.
        index = self._next % len(candidates)
        self._next += 1
        return candidates[index]


class RandomChoice:
    """Uniformly at random, weighted by endpoint weight."""

    __slots__ = ("_rng",)

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def choose(self, candidates: Sequence[EndpointState], key: str | None) -> EndpointState:
        weights = [max(c.endpoint.weight, 0) for c in candidates]
        if not any(weights):
            return self._rng.choice(candidates)
        return self._rng.choices(candidates, weights)[0]


class Weighted:
    """Smooth weighted round robin: endpoint i gets weight_i of every sum(weights) picks, interleaved."""

    __slots__ = ("_current",)

    def __init__(self) -> None:
        self._current: dict[str, int] = {}

    def choose(self, candidates: Sequence[EndpointState], key: str | None) -> EndpointState:
        total = 0
        best: EndpointState | None = None
        best_value = 0
        current = self._current
        for c in candidates:
            weight = max(c.endpoint.weight, 0)
            total += weight
            value = current.get(c.url, 0) + weight
            current[c.url] = value
            if best is None or value > best_value:
                best, best_value = c, value
        assert best is not None
        current[best.url] = best_value - total
        return best


class LeastConnections:
    """Fewest calls in flight; ties broken at random."""

    __slots__ = ("_rng",)

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def choose(self, candidates: Sequence[EndpointState], key: str | None) -> EndpointState:
        low = min(c.in_flight for c in candidates)
        return self._rng.choice([c for c in candidates if c.in_flight == low])


class LeastResponseTime:
    """Power of two choices over the latency moving average (so many clients don't herd onto one)."""

    __slots__ = ("_rng",)

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def choose(self, candidates: Sequence[EndpointState], key: str | None) -> EndpointState:
        a, b = self._rng.sample(candidates, 2)
        return a if self.cost(a) <= self.cost(b) else b

    @staticmethod
    def cost(state: EndpointState) -> float:
        return state.ewma


class P2CEwma(LeastResponseTime):
    """Power of two choices over latency x (in flight + 1), as Linkerd balances."""

    __slots__ = ()

    @staticmethod
    def cost(state: EndpointState) -> float:
        return state.ewma * (state.in_flight + 1)


class IpHash:
    """Consistent (rendezvous) hashing of the caller's address or affinity key; round robin without one."""

    __slots__ = ("_fallback",)

    def __init__(self) -> None:
        self._fallback = RoundRobin()

    def choose(self, candidates: Sequence[EndpointState], key: str | None) -> EndpointState:
        if key is None:
            return self._fallback.choose(candidates, None)
        return rendezvous(candidates, key)


def rendezvous(candidates: Sequence[EndpointState], key: str) -> EndpointState:
    """Highest-random-weight hashing: when one of n endpoints leaves, only its ~1/n of keys move."""
    best = candidates[0]
    best_score = b""
    for c in candidates:
        score = hashlib.blake2b(f"{key}|{c.url}".encode(), digest_size=8).digest()
        if score > best_score:
            best, best_score = c, score
    return best


def build_strategy(name: str, rng: random.Random) -> Strategy:
    """The strategy ``load_balancer.strategy`` names."""
    if name == "round-robin":
        return RoundRobin()
    if name == "random":
        return RandomChoice(rng)
    if name == "weighted":
        return Weighted()
    if name == "least-connections":
        return LeastConnections(rng)
    if name == "least-response-time":
        return LeastResponseTime(rng)
    if name == "p2c-ewma":
        return P2CEwma(rng)
    if name == "ip-hash":
        return IpHash()
    raise ValueError(f"unknown load_balancer.strategy {name!r}")
