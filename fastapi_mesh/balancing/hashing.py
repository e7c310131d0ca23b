"""Consistent hashing: a hash ring per pool of endpoints, and a stable hash of affinity keys.

Each endpoint puts pseudo-random points on a 32-bit ring, derived from its URL alone (so every process builds
the same ring from the same set, whatever the order of discovery events); a key belongs to the first point at
or after its own hash, clockwise: a binary search, O(log n). When an endpoint leaves, exactly the keys on its
points move (about 1/n of them) and no other key does; when one joins, it takes about 1/(n+1) of the keys,
each from whichever endpoint had it. An endpoint's first ``k`` points are the same whatever ``k`` is (its
points are generated in a fixed sequence), so a change of its count moves only the keys on the points gained
or lost.

**Points.** A pool has a budget of ``RING_POINTS_PER_ENDPOINT`` (128: each endpoint's share of keys is within
about 10% of 1/n) points per endpoint, halved as the pool grows so that the ring holds at most about
``RING_MAX_POINTS`` (5 to 8 bytes a point). The budget is shared by weight: an endpoint of weight ``w`` gets
``budget x w / sum(weights)`` points, at least 1 (weight 0: none). The resulting points per unit of weight
(``scale``) are kept from one ring of a pool to the next unless the ring would pass twice
``RING_MAX_POINTS``, or fall under a quarter of it while under 32 points (a quarter of the budget) per
endpoint on average. So a join, a leave or a weight change alters the count of no other endpoint, with
unequal weights too; only such a rescale moves keys wholesale.

**Rebuilds** are incremental (``Ring.rebuilt``): the points of every endpoint whose count did not change
are kept; only the points that come or go are hashed and merged in, the rest copied over as slices.

>>> from fastapi_mesh.discovery.base import Endpoint
>>> from fastapi_mesh.balancing.endpoint import EndpointState
>>> states = [EndpointState(Endpoint(f"http://10.0.0.{i}:80")) for i in range(1, 4)]
>>> ring = Ring(states, [1.0, 1.0, 1.0])
>>> len(ring.points), ring.lookup(key_hash("10.1.2.3")) is ring.lookup(key_hash("10.1.2.3"))
(384, True)
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import struct
from array import array
from collections.abc import Callable, Sequence

from .endpoint import EndpointState

__all__ = ["RING_MAX_POINTS", "RING_POINTS_PER_ENDPOINT", "Ring", "key_hash", "points_per_endpoint"]

#: Ring points per endpoint of average weight in pools of up to RING_MAX_POINTS / this endpoints.
RING_POINTS_PER_ENDPOINT = 128
#: About the most points a ring holds; larger pools get fewer points per endpoint (at least 4 on average).
RING_MAX_POINTS = 1 << 18
#: Recent affinity keys whose hash is kept (the same callers come back: a hit costs ~0.1 us, a hash ~1 us).
KEY_HASH_CACHE = 4096

_OWNER_BITS = 24
_OWNER_MASK = (1 << _OWNER_BITS) - 1
_BLOCK = struct.Struct("<16I")  # one 64-byte BLAKE2b digest: 16 ring points


@functools.lru_cache(maxsize=KEY_HASH_CACHE)
def key_hash(key: str) -> int:
    """A 64-bit hash of ``key`` that is the same in every process (``hash()`` is salted per process), so
    every replica of a client pins a key to the same endpoint. Its high 32 bits place the key on a ring;
    its low 32 bits are left for the traffic split (independent of the ring position)."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _keeps(total: int, endpoints: int) -> bool:
    """Whether a ring of ``total`` points over ``endpoints`` is within the bounds that keep its scale."""
    too_many = total > 2 * RING_MAX_POINTS and total > 4 * endpoints
    too_few = total * 4 < RING_MAX_POINTS and total * 4 < RING_POINTS_PER_ENDPOINT * endpoints
    return not too_many and not too_few


def points_per_endpoint(endpoints: int, current: int | None = None) -> int:
    """Ring points per endpoint (of average weight) for a pool of ``endpoints``: ``current`` while the ring
    stays between a quarter of and twice ``RING_MAX_POINTS`` (so small changes of the pool move no key
    wholesale).

    >>> points_per_endpoint(10), points_per_endpoint(10_000), points_per_endpoint(2_500, current=128)
    (128, 16, 128)
    """
    n = max(endpoints, 1)
    if current is not None and _keeps(n * current, n):
        return current
    points = RING_POINTS_PER_ENDPOINT
    while points > 4 and n * points > RING_MAX_POINTS:
        points //= 2
    return points


def endpoint_points(url: str, count: int) -> tuple[int, ...]:
    """The first ``count`` ring points of the endpoint at ``url`` (32-bit values, in generation order)."""
    values: list[int] = []
    for block in range((count + 15) // 16):
        digest = hashlib.blake2b(f"{url}#{block}".encode(), digest_size=64).digest()
        values.extend(_BLOCK.unpack(digest))
    return tuple(values[:count])


def _counts(weights: Sequence[float], scale: float) -> list[int]:
    return [max(1, round(scale * w)) if w > 0 else 0 for w in weights]


def _typecode(slots: int) -> str:
    return "B" if slots <= 0xFF else "H" if slots <= 0xFFFF else "I"


class Ring:
    """The hash ring of one pool: sorted 32-bit ``points``, and for each the slot in ``members`` owning it.

    ``Ring(members, weights, scale=None)`` builds a ring with ``scale`` points per unit of weight (default:
    ``points_per_endpoint`` per endpoint of average weight); ``ring.rebuilt(members, weights)`` is the ring
    for the pool's next members. All weights 0 count as equal weights. Members of weight 0 have no points: they are
    ``unplaced``, for ``search`` to fall back on.

    ``members`` are slots, not the pool's order: an endpoint keeps its slot from one ring of the pool to the
    next; the slot of one that left (listed in ``free``, still holding it, but owning no point) goes to the
    next newcomer. A ring is never changed once built.
    """

    __slots__ = ("counts", "free", "members", "owners", "placed", "points", "scale", "unplaced")

    def __init__(self, members: Sequence[EndpointState], weights: Sequence[float], scale: float | None = None) -> None:
        n = len(members)
        weights = _some_weight(weights)
        if scale is None:
            total = sum(w for w in weights if w > 0)
            scale = points_per_endpoint(n) * n / total if total else 1.0
        # Slots in URL order: equal points (32-bit collisions) go to the smaller URL first, in every process.
        order = sorted(range(n), key=lambda i: members[i].endpoint.url)
        slots = [members[i] for i in order]
        counts = _counts([weights[i] for i in order], scale)
        keys: list[int] = []
        for slot, state in enumerate(slots):
            if counts[slot]:
                keys.extend(v << _OWNER_BITS | slot for v in endpoint_points(state.endpoint.url, counts[slot]))
        keys.sort()
        points = array("I", [key >> _OWNER_BITS for key in keys])
        owners = array(_typecode(n), [key & _OWNER_MASK for key in keys])
        self._set(slots, counts, scale, [], points, owners)

    def _set(
        self,
        members: list[EndpointState],
        counts: Sequence[int],
        scale: float,
        free: list[int],
        points: array[int],
        owners: array[int],
    ) -> None:
        self.members = members
        #: Points per slot (0 for a free slot or a weight-0 member).
        self.counts = array("I", counts)
        #: Points per unit of weight; kept by the pool's next ring while its size stays in bounds.
        self.scale = scale
        self.free = free
        self.points = points
        self.owners = owners
        freed = set(free)
        self.unplaced = tuple(s for i, s in enumerate(members) if not counts[i] and i not in freed)
        #: How many endpoints own points.
        self.placed = sum(1 for count in counts if count)

    def rebuilt(self, members: Sequence[EndpointState], weights: Sequence[float]) -> Ring:
        """The ring for the pool's new ``members``, made from this one: the points of endpoints that stay
        with the same count are kept, and only the points that come or go are hashed (a newcomer's, a
        leaver's, the ones a count change adds or drops) and merged in by position, copying the rest as
        slices: O(points) in C plus O(changed points x log points). A rescale builds afresh."""
        n = len(members)
        weights = _some_weight(weights)
        counts = _counts(weights, self.scale)
        if not _keeps(sum(counts), n):
            return Ring(members, weights)
        free = list(self.free)
        freed = set(free)
        slots = list(self.members)
        slot_of = {state: slot for slot, state in enumerate(slots) if slot not in freed}
        new_counts = list(self.counts)
        removals: list[tuple[int, int]] = []  # (point, slot)
        additions: list[tuple[int, int]] = []
        present = set(members)
        for state, slot in slot_of.items():
            if state not in present:
                if new_counts[slot]:
                    removals.extend((v, slot) for v in endpoint_points(state.endpoint.url, new_counts[slot]))
                    new_counts[slot] = 0
                free.append(slot)
        for i, state in enumerate(members):
            count = counts[i]
            found = slot_of.get(state)
            if found is None:
                if free:
                    slot = free.pop()
                    slots[slot] = state
                else:
                    slot = len(slots)
                    slots.append(state)
                    new_counts.append(0)
            else:
                slot = found
            old = new_counts[slot]
            if count != old:
                values = endpoint_points(state.endpoint.url, max(count, old))
                if count > old:
                    additions.extend((v, slot) for v in values[old:count])
                else:
                    removals.extend((v, slot) for v in values[count:old])
                new_counts[slot] = count
        ring = Ring.__new__(Ring)
        points, owners = self.points, self.owners
        if removals or additions:
            points, owners = _merge(points, owners, slots, removals, additions)
        ring._set(slots, new_counts, self.scale, free, points, owners)
        return ring

    def _start(self, h: int) -> int:
        points = self.points
        i = bisect.bisect_left(points, h >> 32)
        return 0 if i == len(points) else i

    def lookup(self, h: int) -> EndpointState:
        """The endpoint that owns key hash ``h``, whatever its state (for tools and tests; picks ``walk``)."""
        return self.members[self.owners[self._start(h)]]

    def walk(self, h: int, ok: Callable[[EndpointState], bool], capacity: float, steps: int) -> EndpointState | None:
        """From the point of ``h`` on, clockwise, the first endpoint that is ``ok`` and carries fewer than
        ``capacity`` calls, looking at no more than ``steps`` points. A key whose endpoint is out (ejected,
        full, over its load bound) thus always moves to the same next endpoint, and back when it returns."""
        owners = self.owners
        members = self.members
        size = len(owners)
        i = self._start(h)
        for _ in range(min(steps, size)):
            state = members[owners[i]]
            if state.in_flight < capacity and ok(state):
                return state
            i += 1
            if i == size:
                i = 0
        return None

    def search(self, h: int, ok: Callable[[EndpointState], bool], capacity: float) -> EndpointState | None:
        """The slow path of ``walk``: the whole ring from the point of ``h`` on, asking ``ok`` once per
        endpoint. The first ``ok`` endpoint under ``capacity``; else the first ``ok`` one over it; else the
        first ``ok`` unplaced (weight-0) member; else None. Stops once every placed endpoint was seen."""
        owners = self.owners
        members = self.members
        size = len(owners)
        placed = self.placed
        seen: set[int] = set()
        over: EndpointState | None = None
        i = self._start(h) if size else 0
        for _ in range(size):
            owner = owners[i]
            if owner not in seen:
                seen.add(owner)
                state = members[owner]
                if ok(state):
                    if state.in_flight < capacity:
                        return state
                    if over is None:
                        over = state
                if len(seen) == placed:
                    break
            i += 1
            if i == size:
                i = 0
        if over is not None:
            return over
        for state in self.unplaced:
            if ok(state):
                return state
        return None


def _some_weight(weights: Sequence[float]) -> Sequence[float]:
    """``weights``, or all 1 when none is above 0."""
    return weights if any(w > 0 for w in weights) else [1.0] * len(weights)


def _merge(
    points: array[int],
    owners: array[int],
    slots: Sequence[EndpointState],
    removals: list[tuple[int, int]],
    additions: list[tuple[int, int]],
) -> tuple[array[int], array[int]]:
    """New ``points`` and ``owners`` arrays without the ``removals`` and with the ``additions`` (``(point,
    slot)`` pairs; ``slots`` are the new ring's), still sorted, equal points in URL order: the unchanged runs
    between edits are copied as slices."""
    typecode = _typecode(len(slots))
    if owners.typecode != typecode:
        owners = array(typecode, owners)
    size = len(points)
    # (position, 0: insert before it / 1: remove it, point, URL, slot), in the order to apply them
    events: list[tuple[int, int, int, str, int]] = []
    claimed: set[int] = set()
    for value, slot in removals:
        i = bisect.bisect_left(points, value)
        while owners[i] != slot or i in claimed:  # equal points of other endpoints (rare)
            i += 1
        claimed.add(i)
        events.append((i, 1, value, "", slot))
    for value, slot in additions:
        url = slots[slot].endpoint.url
        i = bisect.bisect_left(points, value)
        while i < size and points[i] == value and slots[owners[i]].endpoint.url < url:
            i += 1
        events.append((i, 0, value, url, slot))
    events.sort()
    new_points: array[int] = array("I")
    new_owners: array[int] = array(typecode)
    done = 0
    for position, remove, value, _, slot in events:
        if position > done:
            new_points += points[done:position]
            new_owners += owners[done:position]
            done = position
        if remove:
            done = position + 1
        else:
            new_points.append(value)
            new_owners.append(slot)
    new_points += points[done:]
    new_owners += owners[done:]
    return new_points, new_owners
