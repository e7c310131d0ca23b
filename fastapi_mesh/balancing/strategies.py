"""Load-balancing strategies.

``CustomStrategy`` is the extension point: any object with ``choose(candidates, key)`` may be set as a
balancer's ``strategy``; it is then handed the eligible endpoints on each pick (O(n)).

The built-in strategies are ``PoolStrategy`` objects, one per pool of endpoints (a service's endpoints, or
a subset or zone of them), rebuilt when discovery changes the pool, never per pick. A pick first calls
``pick(ok, now, first)``, which asks ``ok`` (healthy, not ejected, under its connection limit, not tried in
this call) about the strategy's next choices:

- ``random``, ``least-response-time`` and ``p2c-ewma`` make a bounded number of random tries;
- ``least-connections`` looks at a bounded number of endpoints, from the lowest in-flight count up;
- ``round-robin`` and ``weighted`` go on along their rotation until an endpoint is ``ok``, and every endpoint
  passed over by a first attempt loses its turn: a run of L ineligible endpoints costs L checks once per
  rotation, not per pick, so a pick is O(1) (O(log n) for ``weighted``) amortised.

Only when ``pick`` finds nothing (most of the pool is out) does the balancer collect the eligible endpoints
and call ``scan(candidates, now)``, which is O(n).

``first`` is False for a call's retries and hedges: they take an endpoint without using up its turn in a
rotation. Otherwise each call to a failing endpoint would use two turns, and with two endpoints the
rotation would start every call on the failing one.

``now`` is the clock reading when an endpoint is in slow start or the strategy needs time (``p2c-ewma``),
else infinity; ``state.warm_until > now`` tells a strategy that ``state`` is still warming up.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from collections.abc import Callable, Sequence
from typing import Protocol

from .endpoint import EndpointState, Moved

__all__ = [
    "CustomStrategy",
    "IpHash",
    "LeastConnections",
    "LeastResponseTime",
    "P2CEwma",
    "PoolStrategy",
    "RandomChoice",
    "RoundRobin",
    "Weighted",
    "build_strategy",
]

#: Random tries of the fast path before a pick falls back to scanning the pool.
MAX_TRIES = 8
#: ``least-connections``: endpoints a pick looks at before it falls back to scanning the pool.
MAX_LOOKS = 4 * MAX_TRIES
#: Weighted: deadlines are integers, 1 / weight in units of 2**-32; the low bits of a heap key hold the index.
_SCALE = 1 << 32
_INDEX_BITS = 24
_INDEX_MASK = (1 << _INDEX_BITS) - 1

Eligible = Callable[["EndpointState"], bool]


class CustomStrategy(Protocol):
    """A custom strategy, set as ``balancer.strategy``: picks one of ``candidates`` (never empty; ejected,
    full and -- on a retry -- already tried endpoints are left out while another is available). ``key`` is
    the call's affinity key (``affinity_key=``, else the inbound caller's address), or None."""

    def choose(self, candidates: Sequence[EndpointState], key: str | None) -> EndpointState: ...


class PoolStrategy(Protocol):
    """A built-in strategy, one per pool. ``moved`` is set by strategies that follow in-flight counts."""

    @property
    def moved(self) -> Moved | None:
        """Called as ``moved(state, old, new)`` after ``state.in_flight`` went from ``old`` to ``new``; or None."""

    def rebuild(self, members: list[EndpointState], previous: PoolStrategy | None) -> None:
        """Take ``members`` as the pool; ``previous`` is the pool's strategy before (its state carries over)."""

    def pick(self, ok: Eligible, now: float, first: bool) -> EndpointState | None:
        """A bounded number of tries; None when none of them was ``ok``."""

    def scan(self, candidates: Sequence[EndpointState], now: float) -> EndpointState:
        """One of ``candidates`` (all eligible, never empty): the slow path."""


def _warm_accepts(state: EndpointState, now: float, rng: random.Random) -> bool:
    """During slow start an endpoint is passed over with probability 1 - its warmth."""
    return rng.random() < state.warmth(now)


class Weighted:
    """Weighted round robin, earliest deadline first: endpoint i gets weight_i of every sum(weights) picks.

    Picks are interleaved, O(log n) each. Each endpoint has a deadline in a heap; a pick takes the earliest
    and moves it on by 1 / weight (the weight it has now, so slow start ramps it up). An ineligible endpoint
    loses its turn, and the pick takes the next. Weight 0: no turns while an endpoint with a weight is
    eligible.
    """

    __slots__ = ("_heap", "_members", "_steps", "moved")

    def __init__(self) -> None:
        # Heap keys are ints, ``deadline << _INDEX_BITS | index``: compared in C, ties go in member order.
        self._heap: list[int] = []
        self._members: list[EndpointState] = []
        self._steps: list[int] = []  # per member: 1 / weight in deadline units, shifted into place
        self.moved = None

    def rebuild(self, members: list[EndpointState], previous: PoolStrategy | None) -> None:
        deadlines: dict[EndpointState, int] = {}
        base = 0
        if isinstance(previous, Weighted) and previous._heap:
            old = previous._members
            deadlines = {old[key & _INDEX_MASK]: key >> _INDEX_BITS for key in previous._heap}
            base = previous._heap[0] >> _INDEX_BITS  # a newcomer starts as if it had just had a turn
        scheduled = [s for s in members if s.weight > 0] or members
        heap: list[int] = []
        steps: list[int] = []
        for i, state in enumerate(scheduled):
            step = max(_SCALE // (state.weight or 1), 1)
            deadline = deadlines.get(state)
            heap.append((base + step if deadline is None else deadline) << _INDEX_BITS | i)
            steps.append(step << _INDEX_BITS)
        heapq.heapify(heap)
        self._heap, self._members, self._steps = heap, scheduled, steps

    @staticmethod
    def _warm_step(state: EndpointState, now: float) -> int:
        return max(int(_SCALE / ((state.weight or 1) * state.warmth(now))), 1) << _INDEX_BITS

    def pick(self, ok: Eligible, now: float, first: bool) -> EndpointState | None:
        heap = self._heap
        members = self._members
        if not first:  # the earliest eligible near the front of the schedule, its turn kept
            best = -1
            for j in range(min(MAX_TRIES, len(heap))):
                key = heap[j]
                if (best < 0 or key < best) and ok(members[key & _INDEX_MASK]):
                    best = key
            return None if best < 0 else members[best & _INDEX_MASK]
        steps = self._steps
        replace = heapq.heapreplace
        for _ in range(len(heap)):  # each endpoint passed over loses its turn: a run costs once per rotation
            key = heap[0]
            i = key & _INDEX_MASK
            state = members[i]
            replace(heap, key + (self._warm_step(state, now) if state.warm_until > now else steps[i]))
            if ok(state):
                return state
        return None

    def scan(self, candidates: Sequence[EndpointState], now: float) -> EndpointState:
        wanted = set(candidates)
        members = self._members
        heap = self._heap
        best = -1
        best_at = -1
        for at, key in enumerate(heap):
            if (best < 0 or key < best) and members[key & _INDEX_MASK] in wanted:
                best, best_at = key, at
        if best < 0:  # only weight-0 endpoints are eligible
            return candidates[0]
        i = best & _INDEX_MASK
        state = members[i]
        heap[best_at] = best + (self._warm_step(state, now) if state.warm_until > now else self._steps[i])
        heapq.heapify(heap)
        return state


class RoundRobin:
    """Each endpoint in turn (with unequal weights, or slow start on, the EDF schedule of ``weighted``)."""

    __slots__ = ("_edf", "_members", "_next", "_slow_start", "moved")

    def __init__(self, slow_start: bool = False) -> None:
        self._slow_start = slow_start
        self._members: list[EndpointState] = []
        self._next = 0
        self._edf: Weighted | None = None
        self.moved: Moved | None = None

    def rebuild(self, members: list[EndpointState], previous: PoolStrategy | None) -> None:
        self._members = members
        if isinstance(previous, RoundRobin):
            self._next = previous._next
        if self._slow_start or len({s.weight for s in members}) > 1:
            edf = Weighted()
            edf.rebuild(members, previous._edf if isinstance(previous, RoundRobin) else None)
            self._edf = edf
        else:
            self._edf = None

    def pick(self, ok: Eligible, now: float, first: bool) -> EndpointState | None:
        if self._edf is not None:
            return self._edf.pick(ok, now, first)
        members = self._members
        n = len(members)
        start = self._next
        for step in range(n):  # the endpoints passed over lose their turn: a run costs once per rotation
            state = members[(start + step) % n]
            if ok(state):
                if first:
                    self._next = start + step + 1  # a counter that only grows
                return state
        return None

    def scan(self, candidates: Sequence[EndpointState], now: float) -> EndpointState:
        if self._edf is not None:
            return self._edf.scan(candidates, now)
        index = self._next
        self._next += 1
        return candidates[index % len(candidates)]


class RandomChoice:
    """At random, in proportion to endpoint weight.

    Vose's alias table: O(1) per pick."""

    __slots__ = ("_alias", "_members", "_prob", "_rng", "moved")

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._members: list[EndpointState] = []
        self._prob: list[float] | None = None
        self._alias: list[int] | None = None
        self.moved: Moved | None = None

    def rebuild(self, members: list[EndpointState], previous: PoolStrategy | None) -> None:
        self._members = members
        weights = [float(s.weight) for s in members]
        n = len(weights)
        if n == 0 or len(set(weights)) <= 1 or not any(weights):
            self._prob = self._alias = None
            return
        total = sum(weights)
        scaled = [w * n / total for w in weights]
        prob = [0.0] * n
        alias = list(range(n))
        small = [i for i, p in enumerate(scaled) if p < 1.0]
        large = [i for i, p in enumerate(scaled) if p >= 1.0]
        while small and large:
            s, g = small.pop(), large.pop()
            prob[s] = scaled[s]
            alias[s] = g
            scaled[g] -= 1.0 - scaled[s]
            (small if scaled[g] < 1.0 else large).append(g)
        for i in large + small:
            prob[i] = 1.0
        self._prob, self._alias = prob, alias

    def pick(self, ok: Eligible, now: float, first: bool) -> EndpointState | None:
        members = self._members
        n = len(members)
        rnd = self._rng.random
        prob, alias = self._prob, self._alias
        for _ in range(MAX_TRIES):
            u = rnd() * n
            i = int(u)
            if prob is not None and alias is not None and u - i >= prob[i]:
                i = alias[i]
            state = members[i]
            if state.warm_until > now and not _warm_accepts(state, now, self._rng):
                continue
            if ok(state):
                return state
        return None

    def scan(self, candidates: Sequence[EndpointState], now: float) -> EndpointState:
        weights = [s.weight * (s.warmth(now) if s.warm_until > now else 1.0) for s in candidates]
        if not any(weights):
            return candidates[int(self._rng.random() * len(candidates))]
        return self._rng.choices(candidates, weights)[0]


class LeastConnections:
    """Fewest calls in flight; ties broken at random.

    Buckets of endpoints by in-flight count, and the sorted list of the counts whose bucket is not empty
    (kept by binary search when a bucket empties or fills): O(1) per pick and per change of a count. A pick
    goes up the non-empty buckets from the lowest, looking at ``MAX_LOOKS`` endpoints at most: a bucket that
    fits in what is left is searched whole from a random start, a larger one is sampled at random
    (``MAX_TRIES``) before the pick moves on to the next, so a crowd of idle ejected endpoints in the lowest
    bucket costs a few looks, not a scan. Weights do not apply; slow start does: a warming endpoint is
    passed over with probability 1 - its warmth.
    """

    __slots__ = ("_buckets", "_members", "_occupied", "_pos", "_rng", "moved")

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._members: list[EndpointState] = []
        self._buckets: list[list[EndpointState]] = []
        self._occupied: list[int] = []  # sorted in-flight counts whose bucket is not empty
        self._pos: dict[EndpointState, int] = {}
        self.moved: Moved | None = self._moved

    def rebuild(self, members: list[EndpointState], previous: PoolStrategy | None) -> None:
        self._members = members
        buckets: list[list[EndpointState]] = [[]]
        pos: dict[EndpointState, int] = {}
        for state in members:
            k = max(state.in_flight, 0)
            while len(buckets) <= k:
                buckets.append([])
            pos[state] = len(buckets[k])
            buckets[k].append(state)
        self._buckets = buckets
        self._pos = pos
        self._occupied = [k for k, bucket in enumerate(buckets) if bucket]

    def _moved(self, state: EndpointState, old: int, new: int) -> None:
        buckets = self._buckets
        pos = self._pos
        i = pos.get(state)
        if i is None or old >= len(buckets) or i >= len(buckets[old]) or buckets[old][i] is not state:
            self.rebuild(self._members, None)  # a count changed behind the balancer's back: start over
            return
        bucket = buckets[old]
        last = bucket.pop()
        if last is not state:
            bucket[i] = last
            pos[last] = i
        occupied = self._occupied
        if not bucket:
            del occupied[bisect.bisect_left(occupied, old)]
        while len(buckets) <= new:
            buckets.append([])
        target = buckets[new]
        if not target:
            bisect.insort(occupied, new)
        pos[state] = len(target)
        target.append(state)

    def pick(self, ok: Eligible, now: float, first: bool) -> EndpointState | None:
        buckets = self._buckets
        rng = self._rng
        rnd = rng.random
        left = MAX_LOOKS
        for k in self._occupied:
            bucket = buckets[k]
            m = len(bucket)
            if m <= left:  # the whole bucket, from a random start
                start = int(rnd() * m) if m > 1 else 0
                for j in range(m):
                    state = bucket[(start + j) % m]
                    if state.warm_until > now and not _warm_accepts(state, now, rng):
                        continue
                    if ok(state):
                        return state
                left -= m
            else:  # a sample, then on to the next bucket
                for _ in range(MAX_TRIES):
                    state = bucket[int(rnd() * m)]
                    if state.warm_until > now and not _warm_accepts(state, now, rng):
                        continue
                    if ok(state):
                        return state
                left -= MAX_TRIES
            if left <= 0:
                break
        return None

    def scan(self, candidates: Sequence[EndpointState], now: float) -> EndpointState:
        rng = self._rng
        accepted = [s for s in candidates if s.warm_until <= now or _warm_accepts(s, now, rng)] or candidates
        low = min(s.in_flight for s in accepted)
        ties = [s for s in accepted if s.in_flight == low]
        return ties[int(rng.random() * len(ties))]


class LeastResponseTime:
    """Power of two choices over the latency moving average (so many clients don't herd onto one)."""

    __slots__ = ("_members", "_rng", "moved")

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._members: list[EndpointState] = []
        self.moved: Moved | None = None

    def rebuild(self, members: list[EndpointState], previous: PoolStrategy | None) -> None:
        self._members = members

    def cost(self, state: EndpointState, now: float) -> float:
        """The lower, the better. ``now`` is for subclasses whose cost changes with time (``p2c-ewma``)."""
        if state.requests:
            return state.ewma
        # No answer yet: free while idle, but not a target for a herd while its first calls are pending.
        return 0.0 if state.in_flight == 0 else math.inf

    def _ready(self, state: EndpointState, ok: Eligible, now: float) -> bool:
        if state.warm_until > now and not _warm_accepts(state, now, self._rng):
            return False
        return ok(state)

    def pick(self, ok: Eligible, now: float, first: bool) -> EndpointState | None:
        members = self._members
        n = len(members)
        if n == 1:
            state = members[0]
            return state if ok(state) else None
        rnd = self._rng.random
        ready = self._ready
        for _ in range(MAX_TRIES // 2):
            i = int(rnd() * n)
            j = int(rnd() * (n - 1))
            if j >= i:
                j += 1
            a = members[i]
            b = members[j]
            if ready(a, ok, now):
                if ready(b, ok, now):
                    return a if self.cost(a, now) <= self.cost(b, now) else b
                return a
            if ready(b, ok, now):
                return b
        return None

    def scan(self, candidates: Sequence[EndpointState], now: float) -> EndpointState:
        if len(candidates) == 1:
            return candidates[0]
        a, b = self._rng.sample(candidates, 2)
        return a if self.cost(a, now) <= self.cost(b, now) else b


class P2CEwma(LeastResponseTime):
    """Power of two choices over peak-EWMA latency x (in flight + 1), as Linkerd balances.

    The latency estimate jumps to a slower sample at once and otherwise moves towards new samples with a
    time constant of ``peak_ewma_decay``; read without new samples it decays towards zero at the same pace,
    so an endpoint that was slow gets tried again once it has rested. A new endpoint starts at
    ``DEFAULT_RTT``.
    """

    __slots__ = ("_decay",)

    def __init__(self, rng: random.Random, decay: float) -> None:
        super().__init__(rng)
        self._decay = decay

    def cost(self, state: EndpointState, now: float) -> float:
        age = now - state.peak_at
        estimate = state.peak * math.exp(-age / self._decay) if age > 0 else state.peak
        return estimate * (state.in_flight + 1)


class IpHash(RoundRobin):
    """Consistent hashing (bounded load) of the caller's address or affinity key; round robin without either."""

    __slots__ = ()


def build_strategy(
    name: str, rng: random.Random, *, slow_start: bool = False, peak_ewma_decay: float = 10.0
) -> PoolStrategy:
    """The strategy ``load_balancer.strategy`` names, for one pool."""
    if name == "round-robin":
        return RoundRobin(slow_start)
    if name == "random":
        return RandomChoice(rng)
    if name == "weighted":
        return Weighted()
    if name == "least-connections":
        return LeastConnections(rng)
    if name == "least-response-time":
        return LeastResponseTime(rng)
    if name == "p2c-ewma":
        return P2CEwma(rng, peak_ewma_decay)
    if name == "ip-hash":
        return IpHash(slow_start)
    raise ValueError(f"unknown load_balancer.strategy {name!r}")
