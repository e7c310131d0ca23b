"""Builders for balancer tests: endpoints, a balancer with a manual clock and seeded rng, call contexts, and
the pick the balancer layer makes for a call."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any, cast

from fastapi_mesh.balancing import Balancer, EndpointState
from fastapi_mesh.clock import ManualClock
from fastapi_mesh.context import CallContext, InboundContext
from fastapi_mesh.discovery.base import Endpoint
from fastapi_mesh.resilience.outlier import OutlierDetector
from fastapi_mesh.services import ServiceState
from fastapi_mesh.settings import LoadBalancerConfig, OutlierDetectionConfig, RoutingConfig


def endpoints(
    n: int,
    *,
    weights: Sequence[int] | None = None,
    zones: Sequence[str | None] | None = None,
    metadata: Sequence[Mapping[str, str]] | None = None,
    start: int = 1,
) -> list[Endpoint]:
    """``n`` endpoints ``http://10.0.0.<i>:8080`` (i from ``start``), with optional weights, zones, metadata."""
    return [
        Endpoint(
            f"http://10.0.{(start + i) // 250}.{(start + i) % 250}:8080",
            weight=weights[i] if weights else 1,
            zone=zones[i] if zones else None,
            metadata=metadata[i] if metadata else None,
        )
        for i in range(n)
    ]


def balancer(
    eps: Sequence[Endpoint] = (),
    *,
    clock: ManualClock | None = None,
    seed: int = 1,
    zone: str | None = None,
    routing: Mapping[str, Any] | None = None,
    outlier: Mapping[str, Any] | None = None,
    **load_balancer: Any,
) -> Balancer:
    """A balancer over ``eps`` for service ``svc``; ``load_balancer`` are LoadBalancerConfig fields."""
    clock = clock or ManualClock()
    detector = OutlierDetector("svc", OutlierDetectionConfig(**(outlier or {})), clock)
    b = Balancer(
        "svc",
        LoadBalancerConfig(**load_balancer),
        random.Random(seed),
        detector,
        clock=clock,
        zone=zone,
        routing=RoutingConfig(**routing) if routing is not None else None,
    )
    if eps:
        b.update(eps)
    return b


def call(
    *,
    client: str | None = None,
    key: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    tried: Sequence[EndpointState] = (),
) -> CallContext:
    """A call context: ``client`` is the inbound caller's address, ``headers`` the inbound request's."""
    inbound = None
    if client is not None or headers:
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        inbound = InboundContext.from_headers(client, raw, 0.0)
    ctx = CallContext(cast(ServiceState, None), None, inbound, key)
    ctx.tried.extend(tried)
    return ctx


def pick(b: Balancer, ctx: CallContext, headers: Mapping[str, str] | None = None) -> EndpointState:
    """What the balancer layer asks ``b`` for the next attempt of ``ctx``: the affinity key (the call's, else
    its inbound request's, read only when ``b`` uses one), the routing group of the call (kept on ``ctx``
    for its retries) for the outbound ``headers``, and the endpoints the call has tried."""
    key = None
    if b.keyed:
        key = ctx.affinity_key
        if key is None and ctx.inbound is not None:
            key = ctx.inbound.affinity_key(b.affinity)
    if b.routed:
        ctx.group = b.route(ctx.group, key, headers)
    return b.pick(key, ctx.tried, ctx.group)


def count_checks(b: Balancer) -> list[int]:
    """Count the balancer's eligibility checks from now on: the returned list's one item is the count."""
    counter = [0]
    eligible = b._eligible

    def counting(state: EndpointState) -> bool:
        counter[0] += 1
        return eligible(state)

    b._ok = counting
    return counter


def host(state: EndpointState) -> str:
    """``10.0.0.3`` for ``http://10.0.0.3:8080``."""
    return state.endpoint.host


def chi_square(observed: Sequence[float], expected: Sequence[float]) -> float:
    return sum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True))


#: Chi-square critical values at p = 0.001 by degrees of freedom.
CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 9: 27.88}
