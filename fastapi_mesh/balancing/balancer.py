"""The endpoint set of one service and the per-endpoint state that outlives discovery refreshes.

A pick, in order:

1. **Subset** (``routing``, ``route``): the first rule matching the outbound request's headers names a subset,
   else the weighted split does (by the affinity key's hash when the call has one, so a key stays on one
   subset). The caller keeps the ``Group`` chosen for the call's first attempt and passes it back: a retry or
   hedge stays where the first attempt went, a subset or all endpoints. A subset without endpoints falls
   back to all of them.
2. **Zone**: with ``zone_aware`` and the mesh's ``zone`` set, the endpoints of the local zone are preferred
   while at least ``zone_min_healthy_percent`` of them are available (healthy and not ejected); when none
   of them can take the call (full, or all tried) it goes to any zone.
3. **Panic**: when fewer than ``panic_threshold`` percent of the pool pass their active health checks
   (``EndpointState.healthy``), unhealthy endpoints are picked too. Outlier ejections never count.
4. **Endpoint** (``pick``): with an affinity key (``ip-hash``, or ``session_affinity``), consistent hashing
   with bounded load; otherwise the strategy. Either way an endpoint is skipped while it is unhealthy (outside panic),
   at ``max_connections_per_instance``, ejected, or already tried in this call -- the last two only while
   another is available. Every endpoint full: ``BulkheadFull`` at once (each pool counts its full
   endpoints, so this costs O(1)).

The inputs are plain: the call's affinity key (where it comes from is ``affinity``: the caller reads it from
the call), the endpoints already tried in the call, and the group; the balancer knows nothing of the call.

Discovery updates are incremental: membership is compared by URL and content (a reordered identical set is
no change), only the pools whose members changed are rebuilt, and their hash rings keep the points of the
endpoints that stay (see ``hashing``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence

from ..clock import Clock, MonotonicClock
from ..discovery.base import Endpoint
from ..errors import BulkheadFull, NoHealthyEndpoints
from ..resilience.outlier import OutlierDetector
from ..settings import LoadBalancerConfig, RoutingConfig
from .endpoint import EndpointState
from .hashing import Ring, key_hash
from .routing import AffinityKey, Router
from .strategies import MAX_TRIES, CustomStrategy, PoolStrategy, build_strategy

__all__ = ["Balancer", "Group"]

#: Consistent hashing: ring points the fast path looks at before the slow path (the rest of the ring, each
#: endpoint asked about once, the load bound still applied).
MAX_HASH_WALK = 4 * MAX_TRIES

_INF = math.inf
_NO_TRIED: Sequence[EndpointState] = ()
#: Eligibility levels a pick may relax to, by (any endpoint tried in this call, any endpoint ejected):
#: 0 strict; 1 endpoints tried in this call allowed; 2 ejected endpoints too (at least one always stays).
_STRICT: tuple[int, ...] = (0,)
_LEVELS: tuple[tuple[tuple[int, ...], ...], ...] = ((_STRICT, (0, 2)), ((0, 1), (0, 1, 2)))
_SPLIT_SCALE = 2.0**-32  # the low 32 bits of a key hash, as a fraction: the ring uses the high 32


class _Pool:
    """Endpoints a pick chooses among (all of a service's, or one subset or zone of them), with counts:
    ``healthy`` (passing health checks), ``in_flight`` (when tracked) and ``full`` (at the connection limit)."""

    __slots__ = ("full", "healthy", "in_flight", "members", "moved", "ring", "size", "strategy")

    def __init__(self, members: list[EndpointState], strategy: PoolStrategy, ring: Ring | None, limit: int) -> None:
        self.members = members
        self.size = len(members)
        self.strategy = strategy
        self.moved = strategy.moved
        self.ring = ring
        self.healthy = sum(1 for s in members if s._healthy)
        self.in_flight = sum(s.in_flight for s in members)
        self.full = sum(1 for s in members if s.in_flight >= limit)


class Group:
    """One subset (``name``; None: all endpoints): its pool, and its pool of the local zone when that is a
    proper part. ``stale`` once a discovery update replaced it (a call's retries then look it up again).
    Opaque outside the balancer: ``route`` gives one, ``pick`` takes it back."""

    __slots__ = ("all", "local", "name", "stale")

    def __init__(self, name: str | None, all: _Pool, local: _Pool | None) -> None:
        self.name = name
        self.all = all
        self.local = local
        self.stale = False


class Balancer:
    """Holds a service's current endpoints (pushed by discovery) and picks one per attempt.

    ``Balancer(service, config, rng, outlier, *, clock=None, zone=None, routing=None)``: ``clock`` drives
    slow start and peak-EWMA decay (default ``MonotonicClock``); ``zone`` is the caller's zone
    (``MeshSettings.zone``); ``routing`` is the service's traffic split. The outlier detector never ejects
    the last endpoint; in-flight counts go through ``acquire`` and ``release``.

    Per attempt: ``keyed`` says whether a pick uses an affinity key (``affinity`` says where the call's comes
    from when the call gives none); ``routed`` whether the service has routing, and then ``route`` chooses
    the call's ``Group`` (or keeps the one it is given); ``pick(key, tried, group)`` returns the endpoint.
    """

    __slots__ = (
        "_by_url",
        "_c",
        "_check_ejected",
        "_clock",
        "_custom",
        "_decay",
        "_groups",
        "_hashing",
        "_level",
        "_limit",
        "_marked",
        "_marked_counts",
        "_needs_clock",
        "_ok",
        "_panic",
        "_panic_pct",
        "_populated",
        "_rng",
        "_root",
        "_router",
        "_track",
        "_tried",
        "_warming_until",
        "_window",
        "_zone",
        "_zone_pct",
        "affinity",
        "config",
        "endpoints",
        "keyed",
        "outlier",
        "routed",
        "routing",
        "service",
        "zone",
    )

    def __init__(
        self,
        service: str,
        config: LoadBalancerConfig,
        rng: random.Random,
        outlier: OutlierDetector,
        *,
        clock: Clock | None = None,
        zone: str | None = None,
        routing: RoutingConfig | None = None,
    ) -> None:
        self.service = service
        self.config = config
        self.outlier = outlier
        self.zone = zone
        self.routing = routing
        self._rng = rng
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._limit = config.max_connections_per_instance
        self._panic_pct = config.panic_threshold
        self._zone = zone if config.zone_aware else None
        self._zone_pct = config.zone_min_healthy_percent
        self._window = config.slow_start_window
        self._decay = config.peak_ewma_decay
        self._hashing = config.strategy == "ip-hash" or config.session_affinity
        self._c = config.hash_balance_factor
        #: Where a call's affinity key comes from when the call gives none (``load_balancer.affinity_key``).
        self.affinity = AffinityKey(config)
        self._router = Router(routing) if routing is not None and (routing.split or routing.rules) else None
        #: Whether the service has routing: then ``route`` chooses each call's group.
        self.routed = self._router is not None
        self._needs_clock = config.strategy == "p2c-ewma"
        self._track = config.strategy == "least-connections" or (self._hashing and self._c is not None)
        self.endpoints: list[EndpointState] = []
        self._by_url: dict[str, EndpointState] = {}
        self._root = self._group(None, [], None, set(), {})
        self._groups: dict[str, Group] = {}
        self._custom: CustomStrategy | None = None
        #: Whether picks use the call's affinity key (hashing, or a custom strategy, which is handed it).
        self.keyed = self._hashing
        self._populated = False
        self._warming_until = 0.0
        self._marked: list[EndpointState] = []  # endpoints seen ejected, for the zone's availability
        #: Per pool: (what the count depends on, ejected members, when the first of those ejections ends).
        self._marked_counts: dict[_Pool, tuple[tuple[int, int, int], int, float]] = {}
        # Per-pick scratch, read by ``_eligible``. A pick never awaits, so no other pick can interleave.
        self._tried: Sequence[EndpointState] = _NO_TRIED
        self._panic = False
        self._level = 0
        self._check_ejected = False
        self._ok = self._eligible

    # --------------------------------------------------------------------------------------- updates

    def update(self, endpoints: Sequence[Endpoint]) -> bool:
        """Replace the endpoint set; returns whether it changed: an endpoint came or went, or changed its
        weight, zone or metadata (the order does not count: DNS and Consul answers rotate; of a URL listed
        twice, the last entry counts). State of
        endpoints that stay (in flight, latency) is kept. Only the pools whose members changed are rebuilt
        (O(their size)); the others, their rotations and rings, stay as they are."""
        by_url = self._by_url
        fresh: dict[str, EndpointState] = {}
        dirty: set[EndpointState] = set()  # new, or changed weight, zone or metadata
        warming = self._populated and self._window > 0
        now: float | None = None
        latest = {endpoint.url: endpoint for endpoint in endpoints}  # a URL listed twice: the last entry counts
        for url, endpoint in latest.items():
            state = by_url.get(url)
            if state is None:
                if now is None:
                    now = self._clock.now()
                state = EndpointState(endpoint, now)
                if warming:
                    state.warm_start = now
                    state.warm_until = now + self._window
                    self._warming_until = max(self._warming_until, state.warm_until)
                dirty.add(state)
            elif state.endpoint != endpoint:  # Endpoint equality is by URL and content
                state.endpoint = endpoint
                state.weight = endpoint.weight
                dirty.add(state)
            fresh[url] = state
        removed = [state for url, state in by_url.items() if url not in fresh]
        if not dirty and not removed:
            return False
        for state in removed:
            self.outlier.forget(state.url)
            state.pools = ()
        self._by_url = fresh
        self.endpoints = list(fresh.values())
        self._rebuild(dirty)
        if self.endpoints:
            self._populated = True
        return True

    def _rebuild(self, dirty: set[EndpointState]) -> None:
        members = self.endpoints
        memberships: dict[EndpointState, list[_Pool]] = {s: [] for s in members}
        old_root, old_groups = self._root, self._groups
        root = self._group(None, members, old_root, dirty, memberships)
        groups: dict[str, Group] = {}
        router = self._router
        if router is not None:
            key = router.subset_key
            for name in sorted(router.names):
                subset = [s for s in members if s.endpoint.metadata.get(key) == name]
                if subset:
                    groups[name] = self._group(name, subset, old_groups.get(name), dirty, memberships)
        if old_root is not root:
            old_root.stale = True
        for name, old in old_groups.items():
            if groups.get(name) is not old:
                old.stale = True
        self._root, self._groups = root, groups
        for state, pools in memberships.items():
            state.pools = tuple(pools)
        self._marked = [s for s in self._marked if s.pools]
        self._marked_counts = {}

    def _group(
        self,
        name: str | None,
        members: list[EndpointState],
        old: Group | None,
        dirty: set[EndpointState],
        memberships: dict[EndpointState, list[_Pool]],
    ) -> Group:
        all_pool = self._pool(members, old.all if old is not None else None, dirty, memberships)
        local_pool = None
        if self._zone is not None:
            local = [s for s in members if s.endpoint.zone == self._zone]
            if 0 < len(local) < len(members):
                local_pool = self._pool(local, old.local if old is not None else None, dirty, memberships)
        if old is not None and old.all is all_pool and old.local is local_pool:
            return old
        return Group(name, all_pool, local_pool)

    def _pool(
        self,
        members: list[EndpointState],
        old: _Pool | None,
        dirty: set[EndpointState],
        memberships: dict[EndpointState, list[_Pool]],
    ) -> _Pool:
        if old is not None and old.size == len(members) and dirty.isdisjoint(members):
            # No member is new or changed, and membership follows content: the same members (maybe reordered).
            pool = old
        else:
            config = self.config
            strategy = build_strategy(
                config.strategy, self._rng, slow_start=self._window > 0, peak_ewma_decay=self._decay
            )
            strategy.rebuild(members, old.strategy if old is not None else None)
            ring = None
            if self._hashing and members:
                weights = [float(s.weight) for s in members]
                previous = old.ring if old is not None else None
                ring = Ring(members, weights) if previous is None else previous.rebuilt(members, weights)
            pool = _Pool(members, strategy, ring, self._limit)
        for state in pool.members:
            memberships[state].append(pool)
        return pool

    @property
    def strategy(self) -> PoolStrategy | CustomStrategy:
        """The strategy: the built-in one of the whole pool, or a ``CustomStrategy`` set here. A custom one
        is asked ``choose(candidates, key)`` with the eligible endpoints of the pool a pick has chosen."""
        return self._custom if self._custom is not None else self._root.all.strategy

    @strategy.setter
    def strategy(self, strategy: CustomStrategy) -> None:
        self._custom = strategy
        self.keyed = True

    # ------------------------------------------------------------------------------------------ picks

    def route(self, group: Group | None, key: str | None, headers: Mapping[str, str] | None) -> Group | None:
        """The group of a call's next attempt (with routing; see ``routed``): ``group``, the one its first
        attempt went to, while discovery has not replaced it; else the routing's choice now for the call's
        affinity ``key`` and the outbound request's ``headers``. With no endpoints, ``group`` as it is."""
        if group is not None and not group.stale:
            return group
        if not self.endpoints:
            return group
        if group is not None:  # the endpoints changed since the first attempt: that subset as it is now
            name = group.name
        else:
            router = self._router
            if router is None:
                return None
            name = router.rule_subset(headers)
            if name is None and router.has_split:
                if key is not None and self._hashing:
                    u = (key_hash(key) & 0xFFFFFFFF) * _SPLIT_SCALE
                else:
                    u = self._rng.random()
                name = router.split_subset(u)
        return self._root if name is None else self._groups.get(name, self._root)

    def pick(
        self, key: str | None = None, tried: Sequence[EndpointState] = _NO_TRIED, group: Group | None = None
    ) -> EndpointState:
        """The endpoint for an attempt: ``key`` is the call's affinity key (or None), ``tried`` the endpoints
        the call has tried, ``group`` what ``route`` chose for it (None: all endpoints). Raises
        ``NoHealthyEndpoints`` or ``BulkheadFull``."""
        h = key_hash(key) if key is not None and self._hashing else None
        if not self.endpoints:
            raise NoHealthyEndpoints(self.service, "no endpoints discovered (is the service name right?)")
        if group is None:
            group = self._root
        self._tried = tried
        check_ejected = self._check_ejected = self.outlier.any_ejected
        now = self._now()
        local = group.local
        if local is not None and local.full < local.size and self._local_available(local):
            state = self._pick_in(local, key, h, now, _STRICT)  # other zones before a tried or ejected local one
            if state is not None:
                return state
        pool = group.all
        if pool.full == pool.size:
            raise BulkheadFull(self.service, f"every endpoint is at max_connections_per_instance ({self._limit})")
        if not pool.healthy and not self._panic_pct:
            raise NoHealthyEndpoints(self.service, f"all {pool.size} endpoints are unhealthy")
        state = self._pick_in(pool, key, h, now, _LEVELS[bool(tried)][check_ejected])
        if state is None:
            raise self._exhausted(pool)
        return state

    def _now(self) -> float:
        """The clock when a strategy needs time or an endpoint is warming up; otherwise infinity (no read)."""
        if self._warming_until:
            now = self._clock.now()
            if now >= self._warming_until:
                self._warming_until = 0.0
            return now
        return self._clock.now() if self._needs_clock else _INF

    def _pick_in(
        self, pool: _Pool, key: str | None, h: int | None, now: float, levels: tuple[int, ...]
    ) -> EndpointState | None:
        """The fast path (a bounded number of checks), then the slow path: every endpoint, strictly eligible
        first; then, as ``levels`` allow, 1: endpoints tried in this call; 2: ejected ones too (at least one
        endpoint always stays)."""
        self._panic = pool.healthy * 100.0 < self._panic_pct * pool.size
        self._level = 0
        ok = self._ok
        ring = pool.ring if h is not None else None
        hashed = h or 0  # the key's hash, when ``ring`` is set
        capacity = _INF
        if ring is not None:
            c = self._c
            if c is not None:
                capacity = math.ceil(c * (pool.in_flight + 1) / pool.size)
            state = ring.walk(hashed, ok, capacity, MAX_HASH_WALK)
        elif self._custom is not None:
            state = None  # a custom strategy is handed the eligible endpoints
        else:
            state = pool.strategy.pick(ok, now, not self._tried)
        if state is not None:
            return state
        for level in levels:
            self._level = level
            if ring is not None:
                state = ring.search(hashed, ok, capacity if level == 0 else _INF)
                if state is not None:
                    return state
                continue
            candidates = [s for s in pool.members if ok(s)]
            if candidates:
                custom = self._custom
                if custom is None:
                    return pool.strategy.scan(candidates, now)
                return candidates[0] if len(candidates) == 1 else custom.choose(candidates, key)
        return None

    def _eligible(self, state: EndpointState) -> bool:
        if state.in_flight >= self._limit:
            return False
        if not state._healthy and not self._panic:
            return False
        level = self._level
        if level < 1:
            tried = self._tried
            if tried and state in tried:
                return False
        return not (level < 2 and self._check_ejected and self.outlier.is_ejected(state.endpoint.url))

    def _exhausted(self, pool: _Pool) -> Exception:
        if self._panic or pool.healthy:
            return BulkheadFull(self.service, f"every endpoint is at max_connections_per_instance ({self._limit})")
        return NoHealthyEndpoints(self.service, f"all {pool.size} endpoints are unhealthy")

    def _local_available(self, pool: _Pool) -> bool:
        available = pool.healthy
        if self._check_ejected and self._marked:
            available -= self._ejected_in(pool)
        return available * 100.0 >= self._zone_pct * pool.size

    def _ejected_in(self, pool: _Pool) -> int:
        """How many of ``pool``'s healthy members are ejected. The count is kept until something it depends
        on changes (an ejection, a return, a health change) or the first of its ejections ends, so a pick
        pays for the walk over the ejected endpoints only then, not every time."""
        outlier = self.outlier
        cached = self._marked_counts.get(pool)
        if (
            cached is not None
            and cached[0] == (len(self._marked), outlier.ejected_now, pool.healthy)
            and self._clock.now() < cached[2]
        ):
            return cached[1]
        marked = self._marked
        is_ejected = outlier.is_ejected
        count = 0
        first_return = _INF
        for i in range(len(marked) - 1, -1, -1):
            state = marked[i]
            url = state.endpoint.url
            if not is_ejected(url):
                del marked[i]
            elif pool in state.pools and state._healthy:
                count += 1
                first_return = min(first_return, outlier.ejected_until(url))
        self._marked_counts[pool] = ((len(marked), outlier.ejected_now, pool.healthy), count, first_return)
        return count

    # ------------------------------------------------------------------------------------- accounting

    def acquire(self, state: EndpointState) -> None:
        """One more call in flight on ``state`` (the balancer layer calls this right after ``pick``)."""
        new = state.in_flight + 1
        state.in_flight = new
        if new == self._limit:
            for pool in state.pools:
                pool.full += 1
        if self._track:
            for pool in state.pools:
                pool.in_flight += 1
                moved = pool.moved
                if moved is not None:
                    moved(state, new - 1, new)

    def release(self, state: EndpointState) -> None:
        """A call on ``state`` ended (its response body was read or its stream closed)."""
        old = state.in_flight
        if old <= 0:
            return
        state.in_flight = old - 1
        if old == self._limit:
            for pool in state.pools:
                pool.full -= 1
        if self._track:
            for pool in state.pools:
                pool.in_flight -= 1
                moved = pool.moved
                if moved is not None:
                    moved(state, old, old - 1)

    def record(self, state: EndpointState, ok: bool, latency: float) -> None:
        """One attempt's outcome on ``state``: its own counters and latency, and the outlier detector.
        An attempt that ends after its endpoint left discovery counts for nothing: the endpoint is gone."""
        if not state.pools:
            return
        latency = state.record(ok, latency)
        if self._needs_clock:
            state.observe_peak(ok, latency, self._clock.now(), self._decay)
        url = state.endpoint.url
        outlier = self.outlier
        outlier.record(url, ok, len(self.endpoints))
        if not ok and state.pools and state not in self._marked and outlier.is_ejected(url):
            self._marked.append(state)

    def as_dict(self) -> dict[str, object]:
        ejections = self.outlier.as_dict()
        config = self.config
        return {
            "strategy": config.strategy,
            "session_affinity": config.session_affinity,
            "affinity_key": config.affinity_key,
            "max_connections_per_instance": config.max_connections_per_instance,
            "zone": self._zone,
            "panic": self._root.all.healthy * 100.0 < self._panic_pct * self._root.all.size,
            "subsets": {name: group.all.size for name, group in self._groups.items()},
            "endpoints": [s.as_dict() | {"outlier": ejections.get(s.url)} for s in self.endpoints],
        }
