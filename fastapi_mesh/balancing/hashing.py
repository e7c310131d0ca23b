"""Consistent hashing: a hash ring per pool of endpoints, and a stable hash of affinity keys.

Each endpoint puts ``points`` pseudo-random points on a 32-bit ring (derived from its URL alone, so every
process builds the same ring from the same set, whatever the order of discovery events); a key belongs to
the first point at or after its own hash, clockwise: a binary search, O(log n). When an endpoint leaves,
exactly the keys on its points move (about 1/n of them) and no other key does; when one joins, it takes
about 1/(n+1) of the keys, each from whichever endpoint had it.

Points per endpoint: ``RING_POINTS_PER_ENDPOINT`` (128: each endpoint's share of keys is within about 10% of
1/n), halved as the pool grows so that the ring holds at most about ``RING_MAX_POINTS`` (which bounds the
build at ~0.2 s and the memory at 6 bytes a point). A pool keeps its count until it has doubled past the
bound or halved below it; only such a change, and a change of the smallest weight, move keys wholesale.
Weights: an endpoint of weight ``w`` gets ``w / smallest weight`` times the points (weight 0: none).

>>> from fastapi_mesh.discovery.base import Endpoint
>>> from fastapi_mesh.balancing.balancer import EndpointState
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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .balancer import EndpointState

__all__ = ["RING_MAX_POINTS", "RING_POINTS_PER_ENDPOINT", "Ring", "key_hash", "points_per_endpoint"]

#: Ring points per endpoint (of the smallest weight) in pools of up to RING_MAX_POINTS / this endpoints.
RING_POINTS_PER_ENDPOINT = 128
#: About the most points a ring holds; larger pools get fewer points per endpoint (at least 4).
RING_MAX_POINTS = 1 << 18
#: Recent affinity keys whose hash is kept (the same callers come back: a hit costs ~0.1 us, a hash ~1 us).
KEY_HASH_CACHE = 4096

_OWNER_BITS = 24
_OWNER_MASK = (1 << _OWNER_BITS) - 1
_BLOCK = struct.Struct("<16I")  # one 64-byte BLAKE2b digest: 16 ring points


@functools.lru_cache(maxsize=KEY_HASH_CACHE)
def key_hash(key: str) -> int:
    """A 64-bit hash of ``key`` that is the same in every process (``hash()`` is salted per process), so
    every replica of a client pins a key to the same endpoint."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def points_per_endpoint(endpoints: int, current: int | None = None) -> int:
    """Ring points per endpoint for a pool of ``endpoints``: ``current`` while the ring stays between a
    quarter of and twice ``RING_MAX_POINTS`` (so small changes of the pool move no key wholesale).

    >>> points_per_endpoint(10), points_per_endpoint(10_000), points_per_endpoint(2_500, current=128)
    (128, 16, 128)
    """
    n = max(endpoints, 1)
    if current is not None:
        too_many = n * current > 2 * RING_MAX_POINTS and current > 4
        too_few = n * current * 4 < RING_MAX_POINTS and current < RING_POINTS_PER_ENDPOINT
        if not too_many and not too_few:
            return current
    points = RING_POINTS_PER_ENDPOINT
    while points > 4 and n * points > RING_MAX_POINTS:
        points //= 2
    return points


class Ring:
    """The hash ring of one pool: sorted 32-bit ``points``, and the index in ``members`` owning each."""

    __slots__ = ("members", "owners", "per_endpoint", "points")

    def __init__(
        self, members: Sequence[EndpointState], weights: Sequence[float], per_endpoint: int | None = None
    ) -> None:
        self.members = members
        n = len(members)
        self.per_endpoint = per = per_endpoint or points_per_endpoint(n)
        positive = [w for w in weights if w > 0]
        smallest = min(positive) if positive else 1.0
        combined: list[int] = []
        for index, state in enumerate(members):
            weight = weights[index] if positive else 1.0
            if weight <= 0:
                continue
            count = max(1, round(per * weight / smallest))
            url = state.endpoint.url
            for block in range((count + 15) // 16):
                digest = hashlib.blake2b(f"{url}#{block}".encode(), digest_size=64).digest()
                values = _BLOCK.unpack(digest)[: count - 16 * block]
                combined.extend(v << _OWNER_BITS | index for v in values)
        combined.sort()
        self.points = array("I", [c >> _OWNER_BITS for c in combined])
        self.owners = array("H" if n <= 0xFFFF else "I", [c & _OWNER_MASK for c in combined])

    def _start(self, h: int) -> int:
        points = self.points
        i = bisect.bisect_left(points, h >> 32)
        return 0 if i == len(points) else i

    def lookup(self, h: int) -> EndpointState:
        """The endpoint that owns key hash ``h``."""
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
