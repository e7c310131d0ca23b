"""The ``load_balancer`` and ``routing`` sections: how an endpoint is picked, and traffic split between
subsets of a service's endpoints."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator

from .types import NonNegativeDuration, PositiveDuration, Section

__all__ = [
    "DEFAULT_AFFINITY_KEY",
    "DEFAULT_HASH_BALANCE_FACTOR",
    "DEFAULT_MAX_CONNECTIONS_PER_INSTANCE",
    "DEFAULT_PANIC_THRESHOLD",
    "DEFAULT_PEAK_EWMA_DECAY",
    "DEFAULT_SLOW_START_WINDOW",
    "DEFAULT_STRATEGY",
    "DEFAULT_SUBSET_KEY",
    "DEFAULT_ZONE_MIN_HEALTHY_PERCENT",
    "LoadBalancerConfig",
    "RouteMatch",
    "RouteRule",
    "RoutingConfig",
    "Strategy",
]

Strategy = Literal[
    "round-robin", "random", "weighted", "least-connections", "least-response-time", "ip-hash", "p2c-ewma"
]

DEFAULT_STRATEGY: Strategy = "round-robin"
DEFAULT_MAX_CONNECTIONS_PER_INSTANCE = 100
DEFAULT_AFFINITY_KEY = "client-ip"
DEFAULT_HASH_BALANCE_FACTOR = 1.25
DEFAULT_PANIC_THRESHOLD = 50.0
DEFAULT_SLOW_START_WINDOW = 0.0
DEFAULT_ZONE_MIN_HEALTHY_PERCENT = 70.0
DEFAULT_PEAK_EWMA_DECAY = 10.0
DEFAULT_SUBSET_KEY = "version"

# RFC 9110 token characters: what a header or cookie name may be made of.
_AFFINITY_KEY_RE = re.compile(r"^(?:client-ip|(header|cookie):([!#$%&'*+.^_`|~0-9A-Za-z-]+))$")


class LoadBalancerConfig(Section):
    """How one endpoint is picked per attempt, and how many calls one endpoint may carry at once."""

    #: How one endpoint is picked among the eligible ones for each attempt.
    strategy: Strategy = DEFAULT_STRATEGY
    #: When true and a call has an affinity key (see ``affinity_key``), the endpoint is chosen by consistent
    #: hashing of that key with bounded load, whatever the strategy; calls without a key use the strategy.
    session_affinity: bool = False
    #: Where a call's affinity key comes from when the call gives no ``affinity_key=``: ``client-ip`` (the
    #: inbound caller's address), ``header:<name>`` or ``cookie:<name>`` (of the inbound request). Used by
    #: ``session_affinity`` and by the ``ip-hash`` strategy.
    affinity_key: str = DEFAULT_AFFINITY_KEY
    #: Consistent hashing with bounded load: an endpoint carrying more than this many times the average
    #: in-flight calls passes the key on to the next one. ``null``: no bound (pure consistent hashing).
    hash_balance_factor: float | None = Field(default=DEFAULT_HASH_BALANCE_FACTOR, ge=1.0, le=100.0)
    #: Calls one endpoint may carry at once. A full endpoint is skipped; when every healthy endpoint is full the
    #: call fails with ``BulkheadFull``.
    max_connections_per_instance: int = Field(default=DEFAULT_MAX_CONNECTIONS_PER_INSTANCE, ge=1)
    #: Proxies (CIDRs) whose ``X-Forwarded-For`` is believed when working out the caller's address.
    trusted_proxies: list[str] = Field(default_factory=list)
    #: Percent: when fewer than this share of endpoints pass their active health checks, balance across all
    #: of them (outlier ejections never count). 0: never.
    panic_threshold: float = Field(default=DEFAULT_PANIC_THRESHOLD, ge=0, le=100)
    #: A newly discovered endpoint's weight ramps up linearly over this window (0: off).
    slow_start_window: NonNegativeDuration = DEFAULT_SLOW_START_WINDOW
    #: Prefer endpoints in this service's own ``zone`` while enough of them are available.
    zone_aware: bool = True
    #: Percent of the local zone's endpoints that must be available for the zone to be preferred.
    zone_min_healthy_percent: float = Field(default=DEFAULT_ZONE_MIN_HEALTHY_PERCENT, ge=0, le=100)
    #: ``p2c-ewma``: how fast the peak latency estimate forgets (decays towards newer samples, and towards
    #: zero while an endpoint gets no traffic).
    peak_ewma_decay: PositiveDuration = DEFAULT_PEAK_EWMA_DECAY

    @field_validator("affinity_key")
    @classmethod
    def _check_affinity_key(cls, value: str) -> str:
        match = _AFFINITY_KEY_RE.match(value.strip())
        if match is None:
            raise ValueError(f"affinity_key {value!r} is not 'client-ip', 'header:<name>' or 'cookie:<name>'")
        kind, name = match.groups()
        return f"header:{name.lower()}" if kind == "header" else value.strip()

    @field_validator("trusted_proxies")
    @classmethod
    def _check_trusted_proxies(cls, value: list[str]) -> list[str]:
        networks = []
        for item in value:
            try:
                networks.append(str(ipaddress.ip_network(item.strip(), strict=False)))
            except ValueError:
                raise ValueError(f"trusted_proxies: {item!r} is not an IP address or CIDR") from None
        return networks


class RouteMatch(Section):
    """What a rule matches on: outbound request headers, each equal to the value given."""

    #: Header names (any case) and the exact values they must have; every one must match.
    headers: dict[str, str] = Field(default_factory=dict)


class RouteRule(Section):
    """``{"match": {"headers": {"x-canary": "true"}}, "subset": "v2"}``: matching calls go to ``subset``."""

    #: What an outbound request must carry for the rule to apply: ``{"headers": {...}}``, each header (name in
    #: any case) equal to the value given.
    match: RouteMatch = Field(default_factory=RouteMatch)
    #: The subset matching calls go to: a value of the endpoints' ``metadata[subset_key]``; with a ``split``, one
    #: of its subsets.
    subset: str = Field(min_length=1)


class RoutingConfig(Section):
    """Traffic split and canary routing between subsets of a service's endpoints.

    A subset is the endpoints whose ``metadata[subset_key]`` has one value. The first rule whose match fits
    the outbound request picks the subset; otherwise ``split`` does (weights). An empty subset falls back
    to all endpoints.
    """

    #: The endpoint metadata key whose value names an endpoint's subset.
    subset_key: str = Field(default=DEFAULT_SUBSET_KEY, min_length=1)
    #: Relative weight per subset (``{"v1": 90, "v2": 10}``); empty: no split.
    split: dict[str, Annotated[float, Field(ge=0, allow_inf_nan=False)]] = Field(default_factory=dict)
    #: Checked in order before the split; the first match wins.
    rules: list[RouteRule] = Field(default_factory=list)

    @field_validator("split")
    @classmethod
    def _split_not_zero(cls, value: dict[str, float]) -> dict[str, float]:
        if value and not any(value.values()):
            raise ValueError("split: every weight is 0; give at least one subset a weight above 0")
        return value

    @field_validator("rules")
    @classmethod
    def _rule_subsets_known(cls, value: list[RouteRule], info: ValidationInfo) -> list[RouteRule]:
        split = info.data.get("split")
        if split:
            for i, rule in enumerate(value):
                if rule.subset not in split:
                    raise ValueError(
                        f"rules.{i}.subset: {rule.subset!r} is not one of the split's subsets "
                        f"({', '.join(sorted(split))})"
                    )
        return value
