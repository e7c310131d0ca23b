"""Traffic split and canary routing between subsets, and where a call's affinity key comes from.

>>> from fastapi_mesh.settings import RoutingConfig
>>> router = Router(RoutingConfig(split={"v1": 90, "v2": 10},
...                 rules=[{"match": {"headers": {"x-canary": "true"}}, "subset": "v2"}]))
>>> router.rule_subset({"x-canary": "true"}), router.rule_subset({}), router.split_subset(0.95)
('v2', None, 'v2')
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Literal

import httpx
from starlette.datastructures import Headers as StarletteHeaders

from ..settings import DEFAULT_SUBSET_KEY, LoadBalancerConfig, MeshSettings, RoutingConfig

__all__ = ["AffinityKey", "AffinitySource", "IPNetwork", "Router", "affinity_cookie_names", "parse_affinity_key"]

AffinitySource = Literal["client-ip", "header", "cookie"]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Header mappings whose ``get`` ignores case; any other mapping is lower-cased before rules look at it.
_CASELESS = (httpx.Headers, StarletteHeaders)


class Router:
    """A service's ``routing`` section, compiled: rules as tuples, the split as cumulative weights."""

    __slots__ = ("_cumulative", "_total", "names", "rules", "subset_key")

    def __init__(self, config: RoutingConfig) -> None:
        self.subset_key = config.subset_key or DEFAULT_SUBSET_KEY
        self.rules: tuple[tuple[tuple[tuple[str, str], ...], str], ...] = tuple(
            (tuple((name.lower(), value) for name, value in rule.match.headers.items()), rule.subset)
            for rule in config.rules
        )
        cumulative: list[tuple[float, str]] = []
        total = 0.0
        for name, weight in config.split.items():
            if weight > 0:
                total += weight
                cumulative.append((total, name))
        self._cumulative = tuple(cumulative)
        self._total = total
        #: Every subset name the routing can choose.
        self.names = frozenset(config.split) | {subset for _, subset in self.rules}

    @property
    def has_split(self) -> bool:
        return self._total > 0

    def rule_subset(self, headers: Mapping[str, str] | None) -> str | None:
        """The subset of the first rule whose headers all match ``headers`` (outbound; names in any case,
        also in a plain dict), or None."""
        if headers is None or not self.rules:
            return None
        if not isinstance(headers, _CASELESS):
            headers = {name.lower(): value for name, value in headers.items()}
        for match, subset in self.rules:
            for name, value in match:
                if headers.get(name) != value:
                    break
            else:
                return subset
        return None

    def split_subset(self, u: float) -> str | None:
        """The subset a uniform ``u`` in [0, 1) falls into under the split's weights (None: no split)."""
        point = u * self._total
        for bound, name in self._cumulative:
            if point < bound:
                return name
        return self._cumulative[-1][1] if self._cumulative else None


class AffinityKey:
    """Where a call's affinity key comes from when the call gives no ``affinity_key=``, from
    ``load_balancer.affinity_key`` and ``trusted_proxies``: ``kind`` (``client-ip``, ``header`` or
    ``cookie``), the header or cookie ``name``, and the proxies whose ``X-Forwarded-For`` is believed.

    >>> source = AffinityKey(LoadBalancerConfig(affinity_key="header:X-User"))
    >>> source.kind, source.name
    ('header', 'x-user')
    """

    __slots__ = ("kind", "name", "trusted")

    def __init__(self, config: LoadBalancerConfig) -> None:
        self.kind, self.name = parse_affinity_key(config.affinity_key)
        self.trusted: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n) for n in config.trusted_proxies)


def parse_affinity_key(value: str) -> tuple[AffinitySource, str]:
    """``"client-ip"`` -> ``("client-ip", "")``; ``"header:x-user"`` -> ``("header", "x-user")``; cookies alike.

    >>> parse_affinity_key("cookie:session")
    ('cookie', 'session')
    """
    if value == "client-ip":
        return "client-ip", ""
    kind, _, name = value.partition(":")
    if kind == "header":
        return "header", name.lower()
    if kind == "cookie":
        return "cookie", name
    raise ValueError(f"affinity_key {value!r} is not 'client-ip', 'header:<name>' or 'cookie:<name>'")


def affinity_cookie_names(settings: MeshSettings) -> tuple[str, ...]:
    """The cookies that some upstream's affinity is keyed on (global settings and every ``services`` entry):
    the ones ``MeshMiddleware`` sets on a response when the request came without them."""
    sections = [settings.load_balancer, *(settings.for_service(name).load_balancer for name in settings.services)]
    names: list[str] = []
    for lb in sections:
        if lb.session_affinity or lb.strategy == "ip-hash":
            kind, name = parse_affinity_key(lb.affinity_key)
            if kind == "cookie" and name not in names:
                names.append(name)
    return tuple(names)
