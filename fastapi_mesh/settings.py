"""Settings: one validated model for the whole mesh, read from code or from ``MESH_*`` variables.

Effective policy for an upstream = built-in defaults <- environment preset <- global settings <-
``services[name]``. Preset values show on the settings object wherever nothing overrides them::

    >>> MeshSettings(environment="production").circuit_breaker.failure_threshold
    20
    >>> MeshSettings(services={"pay": {"retry": {"max_retries": 0}}}).for_service("pay").retry.max_retries
    0

Durations are float seconds and also accept ``"500ms"``, ``"3s"``, ``"2m"``, ``"1h"``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import warnings
from collections.abc import Mapping
from types import UnionType
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

import httpx
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

__all__ = [
    "ActiveHealthCheckConfig",
    "BulkheadConfig",
    "CircuitBreakerConfig",
    "ConnectionConfig",
    "DiscoveryConfig",
    "EndpointConfig",
    "HealthCheckConfig",
    "LoadBalancerConfig",
    "MeshSettings",
    "MtlsConfig",
    "ObservabilityConfig",
    "OutlierDetectionConfig",
    "RetryConfig",
    "RouteMatch",
    "RouteRule",
    "RoutingConfig",
    "ServiceMtlsConfig",
    "ServicePolicy",
    "get_service_config",
    "parse_duration",
]

ENV_PREFIX = "MESH_"
ENV_NESTED_DELIMITER = "__"

Environment = Literal["development", "staging", "production"]
DiscoveryBackend = Literal["static", "consul", "kubernetes-dns", "kubernetes", "custom"]
Strategy = Literal[
    "round-robin", "random", "weighted", "least-connections", "least-response-time", "ip-hash", "p2c-ewma"
]
BackoffStrategy = Literal["exponential", "fibonacci", "linear", "fixed", "decorrelated-jitter"]
Jitter = Literal["none", "full", "equal"]

_DURATION_RE = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?)\s*(ms|s|m|h)?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> Any:
    """Turn ``"500ms"``, ``"3s"``, ``"2m"``, ``"1h"`` or a number into float seconds.

    >>> parse_duration("500ms"), parse_duration("2m"), parse_duration(3)
    (0.5, 120.0, 3.0)

    Anything else is handed on unchanged for pydantic to reject with its own message.
    """
    if isinstance(value, bool):
        raise PydanticCustomError("duration", "not a duration: {value}", {"value": repr(value)})
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match is None:
            raise PydanticCustomError(
                "duration",
                "not a duration: {value} (use seconds, or a number with ms, s, m or h, e.g. '500ms')",
                {"value": repr(value)},
            )
        unit = match.group(2).lower() if match.group(2) else None
        return float(match.group(1)) * _UNIT_SECONDS[unit]
    return value


PositiveDuration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0, allow_inf_nan=False)]
NonNegativeDuration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0, allow_inf_nan=False)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------------- discovery

DEFAULT_REFRESH_INTERVAL = 30.0
DEFAULT_CONSUL_URL = "http://127.0.0.1:8500"
DEFAULT_NAMESPACE = "default"
DEFAULT_CLUSTER_DOMAIN = "cluster.local"
DEFAULT_PORT_NAME = "http"
DEFAULT_DNS_TIMEOUT = 5.0
DEFAULT_EMPTY_GRACE = 30.0
DEFAULT_INITIAL_SYNC_TIMEOUT = 5.0
DEFAULT_DISCOVERY_BACKOFF = 1.0
DEFAULT_DISCOVERY_MAX_BACKOFF = 30.0
DEFAULT_CONSUL_WAIT = 300.0
DEFAULT_CHECK_INTERVAL = 10.0
DEFAULT_DEREGISTER_AFTER = 60.0
#: An RFC 1123 DNS label, the form of Kubernetes namespace and Service names.
DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class EndpointConfig(_Section):
    """One upstream replica: ``{"url": "http://10.0.0.2:8080", "weight": 3, "metadata": {...}, "zone": "a"}``."""

    url: str
    weight: int = Field(default=1, ge=0, le=10_000)
    metadata: dict[str, str] = Field(default_factory=dict)
    zone: str | None = None

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return check_endpoint_url(value)


def check_endpoint_url(value: str) -> str:
    """Validate an endpoint URL: ``http``/``https``, a host, an optional port, no path beyond ``/``."""
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        raise ValueError(f"malformed endpoint URL {value!r}: whitespace or control characters")
    try:
        parts = urlsplit(value)
        port = parts.port
        httpx.URL(value)
    except (ValueError, httpx.InvalidURL) as exc:
        raise ValueError(f"malformed endpoint URL {value!r}: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"malformed endpoint URL {value!r}: the scheme must be http or https")
    if not parts.hostname:
        raise ValueError(f"malformed endpoint URL {value!r}: no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"malformed endpoint URL {value!r}: give only scheme://host[:port]")
    if port == 0:
        raise ValueError(f"malformed endpoint URL {value!r}: port 0")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            f"malformed endpoint URL {value!r}: no user or password in an endpoint (they would show in "
            "/mesh/status and metrics); use mTLS or pass credentials per call"
        )
    host = parts.hostname
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"malformed endpoint URL {value!r}: bad IPv6 address") from None
    elif _LOOKS_IPV4.match(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"malformed endpoint URL {value!r}: bad IPv4 address") from None
    elif not _HOSTNAME.match(host):
        raise ValueError(f"malformed endpoint URL {value!r}: bad host name {host!r}")
    return value.rstrip("/")


_LOOKS_IPV4 = re.compile(r"^[0-9.]+$")
_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}\.?$){_LABEL}(\.{_LABEL})*\.?$")


def _coerce_endpoint(value: Any) -> Any:
    return {"url": value} if isinstance(value, str) else value


with warnings.catch_warnings():
    # ``register`` is the setting's public name; pydantic notes that the metaclass (ABCMeta) has a
    # ``register`` too, which instances never see, so the field reads as expected.
    warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)

    class DiscoveryConfig(_Section):
        """Where endpoints come from. ``static`` reads ``endpoints``; the others are separate backends."""

        backend: DiscoveryBackend = "static"
        endpoints: dict[str, list[Annotated[EndpointConfig, BeforeValidator(_coerce_endpoint)]]] = Field(
            default_factory=dict
        )
        consul_url: str = DEFAULT_CONSUL_URL
        #: ACL token sent to Consul as ``X-Consul-Token`` (backend ``consul``); never shown in status or logs.
        consul_token: SecretStr | None = None
        #: Consul datacenter to ask (``?dc=``); ``null``: the agent's own.
        datacenter: str | None = None
        #: Only endpoints carrying every one of these tags (backend ``consul``); self-registration sends them too.
        tags: list[str] = Field(default_factory=list)
        #: CA bundle (PEM) that an ``https`` ``consul_url`` is verified against; ``null``: ``mtls.ca_path`` when mTLS
        #: is on, else the system's. With mTLS on, the client certificate is presented to Consul as well.
        consul_ca_path: str | None = None
        #: How long one Consul blocking query may wait for a change (Consul caps it at 10 minutes).
        consul_wait: Annotated[float, BeforeValidator(parse_duration), Field(gt=0, le=600, allow_inf_nan=False)] = (
            DEFAULT_CONSUL_WAIT
        )
        #: Register this service with the Consul agent at start-up and deregister it at shutdown.
        register: bool = False
        #: The address other services reach this one at (self-registration); ``null``: this host's name.
        service_address: str | None = None
        #: The port other services reach this one at (self-registration; needed when ``register`` is on).
        service_port: int | None = Field(default=None, ge=1, le=65535)
        #: The registration's unique ID; ``null``: ``<service_name>-<host name>-<port>``.
        service_id: str | None = None
        #: Service meta sent with the registration (``weight``, ``version`` and ``zone`` are read by callers).
        service_meta: dict[str, str] = Field(default_factory=dict)
        #: How often Consul calls the registration's HTTP check on ``/health/ready``.
        check_interval: PositiveDuration = DEFAULT_CHECK_INTERVAL
        #: Consul removes the registration after its check has been critical this long (a crashed process).
        deregister_critical_after: PositiveDuration = DEFAULT_DEREGISTER_AFTER
        namespace: str = DEFAULT_NAMESPACE
        cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
        #: Named port to look up: the SRV record ``_<port_name>._<protocol>.<service>.<namespace>.svc.<domain>``
        #: (backend ``kubernetes-dns``) or the EndpointSlice port (backend ``kubernetes``). ``null``: A/AAAA records
        #: of a headless service, on ``port`` (``kubernetes-dns``), or the slice's only port (``kubernetes``).
        port_name: str | None = DEFAULT_PORT_NAME
        #: The SRV record's protocol label (backend ``kubernetes-dns``).
        protocol: Literal["tcp", "udp", "sctp"] = "tcp"
        #: The port used with A/AAAA records when ``port_name`` is ``null`` (backend ``kubernetes-dns``).
        port: int | None = Field(default=None, ge=1, le=65535)
        #: DNS servers as ``host:port`` (``[v6addr]:port`` for IPv6); empty: those of ``/etc/resolv.conf``.
        nameservers: list[str] = Field(default_factory=list)
        #: How long one DNS lookup may take in all, every try and nameserver (backend ``kubernetes-dns``); one
        #: try to one nameserver gets at most 2 s of it.
        dns_timeout: PositiveDuration = DEFAULT_DNS_TIMEOUT
        #: Path of a kubeconfig file (backend ``kubernetes``); ``null``: the in-cluster service account when
        #: running in a pod, else ``$KUBECONFIG`` or ``~/.kube/config``.
        kubeconfig: str | None = None
        #: ``module:Class`` or ``module.Class`` of a ``Discovery`` implementation (backend ``custom``), built with
        #: no arguments or with the ``DiscoveryConfig``.
        custom_class: str | None = None
        refresh_interval: PositiveDuration = DEFAULT_REFRESH_INTERVAL
        #: An empty answer for a service that had endpoints is believed only after it has lasted this long.
        empty_grace: NonNegativeDuration = DEFAULT_EMPTY_GRACE
        #: Services this one cannot work without: the startup probe waits for their first sync and readiness
        #: fails while one of them has no endpoints. Other services never affect the probes.
        critical_services: list[str] = Field(default_factory=list)
        #: A call to a service whose first sync has not come yet waits at most this long (and never past the
        #: call's deadline), then fails with ``NoHealthyEndpoints``.
        initial_sync_timeout: PositiveDuration = DEFAULT_INITIAL_SYNC_TIMEOUT
        #: First delay before a failed discovery query is retried; it doubles (with jitter) up to ``max_backoff``.
        backoff: PositiveDuration = DEFAULT_DISCOVERY_BACKOFF
        #: Upper bound of the delay between retries of a failing discovery query.
        max_backoff: PositiveDuration = DEFAULT_DISCOVERY_MAX_BACKOFF

        @field_validator("consul_url")
        @classmethod
        def _check_consul_url(cls, value: str) -> str:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(
                    f"consul_url must be an http:// or https:// URL with a host, e.g. {DEFAULT_CONSUL_URL}"
                )
            return value.rstrip("/")

        @field_validator("port_name", mode="before")
        @classmethod
        def _null_port_name(cls, value: Any) -> Any:
            # From the environment, MESH_DISCOVERY__PORT_NAME=null arrives as the string "null".
            return None if isinstance(value, str) and value.strip().lower() in ("null", "none") else value

        @field_validator("nameservers")
        @classmethod
        def _check_nameservers(cls, value: list[str]) -> list[str]:
            for item in value:
                split_nameserver(item)
            return value

        @field_validator("namespace")
        @classmethod
        def _check_namespace(cls, value: str) -> str:
            if not DNS_LABEL.match(value):
                raise ValueError(f"namespace {value!r} is not a Kubernetes namespace name (a DNS label)")
            return value

        @field_validator("custom_class")
        @classmethod
        def _check_custom_class(cls, value: str | None) -> str | None:
            if value is not None and not re.match(r"^[A-Za-z_][\w.]*[.:][A-Za-z_]\w*$", value):
                raise ValueError(f"custom_class {value!r} must be a dotted path, e.g. 'myapp.discovery:MyDiscovery'")
            return value

        @model_validator(mode="after")
        def _check_backend_needs(self) -> DiscoveryConfig:
            if self.register and self.backend == "consul" and self.service_port is None:
                raise ValueError("discovery.register needs discovery.service_port (the port Consul tells callers)")
            if self.backend == "kubernetes-dns" and self.port_name is None and self.port is None:
                raise ValueError("kubernetes-dns without port_name (A/AAAA records) needs discovery.port")
            if self.max_backoff < self.backoff:
                raise ValueError("discovery.max_backoff must not be below discovery.backoff")
            return self


def split_nameserver(value: str) -> tuple[str, int]:
    """``"10.0.0.10:53"`` -> ``("10.0.0.10", 53)``; ``"[fd00::a]:5353"`` -> ``("fd00::a", 5353)``.

    >>> split_nameserver("127.0.0.1:5353")
    ('127.0.0.1', 5353)
    """
    match = re.match(r"^(?:\[([0-9A-Fa-f:.]+)\]|([^:\[\]]+)):(\d{1,5})$", value.strip())
    if match is None:
        raise ValueError(f"nameserver {value!r} must be host:port (e.g. 10.96.0.10:53, or [fd00::a]:53)")
    host = match.group(1) or match.group(2)
    port = int(match.group(3))
    if not 1 <= port <= 65535:
        raise ValueError(f"nameserver {value!r}: port {port} is out of range")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"nameserver {value!r}: {host!r} is not an IP address") from None
    return host, port


# --------------------------------------------------------------------------------------------- balancing

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


class LoadBalancerConfig(_Section):
    """How one endpoint is picked per attempt, and how many calls one endpoint may carry at once."""

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
            raise ValueError(
                f"affinity_key {value!r} is not 'client-ip', 'header:<name>' or 'cookie:<name>'"
            )
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


class RouteMatch(_Section):
    """What a rule matches on: outbound request headers, each equal to the value given."""

    #: Header names (any case) and the exact values they must have; every one must match.
    headers: dict[str, str] = Field(default_factory=dict)


class RouteRule(_Section):
    """``{"match": {"headers": {"x-canary": "true"}}, "subset": "v2"}``: matching calls go to ``subset``."""

    match: RouteMatch = Field(default_factory=RouteMatch)
    subset: str = Field(min_length=1)


class RoutingConfig(_Section):
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


# ---------------------------------------------------------------------------------------------- breaker

DEFAULT_FAILURE_THRESHOLD = 5
DEFAULT_FAILURE_THRESHOLD_PERCENTAGE = 50.0
DEFAULT_ATTEMPT_TIMEOUT = 10.0
DEFAULT_RESET_TIMEOUT = 30.0
DEFAULT_SLIDING_WINDOW_SIZE = 100
DEFAULT_HALF_OPEN_MAX_CALLS = 1
DEFAULT_MAX_RESET_TIMEOUT = 300.0
DEFAULT_QUEUE_TIMEOUT = 1.0


class CircuitBreakerConfig(_Section):
    """Per-service breaker. ``timeout`` is the per-attempt timeout (connect, read, write and pool)."""

    failure_threshold: int = Field(default=DEFAULT_FAILURE_THRESHOLD, ge=1)
    failure_threshold_percentage: float = Field(default=DEFAULT_FAILURE_THRESHOLD_PERCENTAGE, gt=0, le=100)
    timeout: PositiveDuration = DEFAULT_ATTEMPT_TIMEOUT
    reset_timeout: PositiveDuration = DEFAULT_RESET_TIMEOUT
    fallback_enabled: bool = True
    enabled: bool = True
    sliding_window_type: Literal["count", "time"] = "count"
    #: The last N calls (``count``) or the last N seconds (``time``).
    sliding_window_size: int = Field(default=DEFAULT_SLIDING_WINDOW_SIZE, ge=1, le=100_000)
    slow_call_duration: PositiveDuration | None = None
    slow_call_rate_threshold: float = Field(default=100.0, gt=0, le=100)
    half_open_max_calls: int = Field(default=DEFAULT_HALF_OPEN_MAX_CALLS, ge=1, le=1000)
    #: Each consecutive trip multiplies the open period by this, up to ``max_reset_timeout``.
    reset_timeout_multiplier: float = Field(default=1.0, ge=1.0, le=100.0)
    max_reset_timeout: PositiveDuration = DEFAULT_MAX_RESET_TIMEOUT
    failure_on_status: list[Annotated[int, Field(ge=100, le=599)]] = Field(
        default_factory=lambda: list(range(500, 600))
    )

    @model_validator(mode="after")
    def _reset_ordered(self) -> CircuitBreakerConfig:
        if self.sliding_window_type == "count" and self.failure_threshold > self.sliding_window_size:
            raise ValueError(
                f"failure_threshold ({self.failure_threshold}) is larger than the count window "
                f"sliding_window_size ({self.sliding_window_size}): the breaker could never open"
            )
        if self.max_reset_timeout < self.reset_timeout:
            raise ValueError(
                f"max_reset_timeout ({self.max_reset_timeout}s) is smaller than reset_timeout "
                f"({self.reset_timeout}s)"
            )
        return self


# ------------------------------------------------------------------------------------ outlier detection

DEFAULT_CONSECUTIVE_FAILURES = 5
DEFAULT_BASE_EJECTION_TIME = 30.0
DEFAULT_MAX_EJECTION_TIME = 300.0


class OutlierDetectionConfig(_Section):
    """Per-endpoint ejection, as Envoy: N failures in a row eject an endpoint for a growing time."""

    enabled: bool = True
    consecutive_failures: int = Field(default=DEFAULT_CONSECUTIVE_FAILURES, ge=1)
    base_ejection_time: PositiveDuration = DEFAULT_BASE_EJECTION_TIME
    max_ejection_time: PositiveDuration = DEFAULT_MAX_EJECTION_TIME
    max_ejection_percent: float = Field(default=100.0, ge=0, le=100)

    @model_validator(mode="after")
    def _ejection_ordered(self) -> OutlierDetectionConfig:
        if self.max_ejection_time < self.base_ejection_time:
            raise ValueError(
                f"max_ejection_time ({self.max_ejection_time}s) is smaller than base_ejection_time "
                f"({self.base_ejection_time}s)"
            )
        return self


# ---------------------------------------------------------------------------------- active health checks

DEFAULT_ACTIVE_CHECK_PATH = "/health/ready"
DEFAULT_ACTIVE_CHECK_INTERVAL = 10.0
DEFAULT_ACTIVE_CHECK_TIMEOUT = 1.0
DEFAULT_HEALTHY_THRESHOLD = 2
DEFAULT_UNHEALTHY_THRESHOLD = 3
DEFAULT_ACTIVE_CHECK_JITTER = 0.1
DEFAULT_EXPECTED_STATUSES = (200, 400)  # 200-399
_STATUS_RANGE = re.compile(r"^\s*(\d{3})\s*(?:-\s*(\d{3})\s*)?$")


def _expand_statuses(value: Any) -> Any:
    """``"200-399"`` or ``[200, "300-302"]`` -> a sorted list of status codes; anything else unchanged.

    >>> _expand_statuses(["204", "200-202"])
    [200, 201, 202, 204]
    """
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        return value
    statuses: set[Any] = set()
    for item in items:
        if not isinstance(item, str):
            statuses.add(item)
            continue
        match = _STATUS_RANGE.match(item)
        low = int(match.group(1)) if match else 0
        high = int(match.group(2) or low) if match else 0
        if match is None or high < low:
            raise PydanticCustomError(
                "status_range",
                "not a status or a range of statuses: {value} (e.g. 204 or '200-399')",
                {"value": repr(item)},
            )
        statuses.update(range(low, high + 1))
    if all(isinstance(s, int) and not isinstance(s, bool) for s in statuses):
        return sorted(statuses)
    return list(statuses)


class ActiveHealthCheckConfig(_Section):
    """Envoy-style active health checks: a periodic ``GET path`` on every endpoint of a service.

    An endpoint is marked down after ``unhealthy_threshold`` failed checks in a row and back up after
    ``healthy_threshold`` passes in a row; the balancer skips endpoints marked down (see ``panic_threshold``).
    """

    #: Probe this service's endpoints (off by default; turn it on globally or per service).
    enabled: bool = False
    #: The path (and query) each probe GETs, sent with the endpoint's ``Host``.
    path: str = DEFAULT_ACTIVE_CHECK_PATH
    #: Time between two probes of one endpoint, from the start of one to the start of the next (plus jitter).
    interval: PositiveDuration = DEFAULT_ACTIVE_CHECK_INTERVAL
    #: A probe with no complete answer within this time has failed.
    timeout: PositiveDuration = DEFAULT_ACTIVE_CHECK_TIMEOUT
    #: Passed probes in a row that bring an endpoint marked down back.
    healthy_threshold: int = Field(default=DEFAULT_HEALTHY_THRESHOLD, ge=1, le=1000)
    #: Failed probes in a row (connect error, timeout, unexpected status) that mark an endpoint down.
    unhealthy_threshold: int = Field(default=DEFAULT_UNHEALTHY_THRESHOLD, ge=1, le=1000)
    #: Each wait between probes is ``interval`` plus a random share of it up to this fraction, and an
    #: endpoint's first probe comes at a random point within that share, so replicas are not probed in
    #: lock step. 0: exactly every ``interval``.
    jitter: float = Field(default=DEFAULT_ACTIVE_CHECK_JITTER, ge=0, le=1)
    #: Response statuses that pass; anything else fails. Ranges may be written as strings: ``["200-399"]``.
    expected_statuses: Annotated[
        list[Annotated[int, Field(ge=100, le=599)]], BeforeValidator(_expand_statuses), Field(min_length=1)
    ] = Field(default_factory=lambda: list(range(*DEFAULT_EXPECTED_STATUSES)))

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"path {value!r} must start with '/' (e.g. {DEFAULT_ACTIVE_CHECK_PATH!r})")
        if any(ch.isspace() or not ch.isprintable() for ch in value) or "#" in value:
            raise ValueError(f"path {value!r}: no whitespace, control characters or fragment")
        return value


# --------------------------------------------------------------------------------------------- bulkhead


class BulkheadConfig(_Section):
    """Per upstream service: at most ``max_concurrent`` calls at once (None: no limit), ``max_queue`` waiting."""

    max_concurrent: int | None = Field(default=None, ge=1)
    max_queue: int = Field(default=0, ge=0)
    queue_timeout: PositiveDuration = DEFAULT_QUEUE_TIMEOUT


# ------------------------------------------------------------------------------------------------ retry

DEFAULT_MAX_RETRIES = 2
DEFAULT_INITIAL_DELAY = 0.1
DEFAULT_MAX_DELAY = 2.0
DEFAULT_RETRY_ON_STATUS = (502, 503, 504)
DEFAULT_BUDGET_PERCENT = 20.0
DEFAULT_BUDGET_TTL = 10.0
DEFAULT_MIN_RETRIES_PER_SECOND = 10.0
DEFAULT_MAX_BODY_BYTES = 1 << 20


class RetryConfig(_Section):
    """Retries of one call: how many, how far apart; ``max_elapsed`` is the default overall deadline."""

    max_retries: int = Field(default=DEFAULT_MAX_RETRIES, ge=0, le=100)
    initial_delay: NonNegativeDuration = DEFAULT_INITIAL_DELAY
    max_delay: PositiveDuration = DEFAULT_MAX_DELAY
    backoff_strategy: BackoffStrategy = "exponential"
    jitter: Jitter = "full"
    max_elapsed: PositiveDuration | None = None
    retry_on_status: list[Annotated[int, Field(ge=100, le=599)]] = Field(
        default_factory=lambda: list(DEFAULT_RETRY_ON_STATUS)
    )
    #: Retry budget: retries may add at most this share of the requests of the last ``budget_ttl`` ...
    budget_percent: float = Field(default=DEFAULT_BUDGET_PERCENT, ge=0, le=1000)
    budget_ttl: PositiveDuration = DEFAULT_BUDGET_TTL
    #: ... plus this many retries per second, so a quiet service can still retry.
    min_retries_per_second: float = Field(default=DEFAULT_MIN_RETRIES_PER_SECOND, ge=0)
    #: Request bodies up to this size are kept so they can be sent again; larger ones are not retried.
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=0)
    #: Hedging for idempotent calls: a second attempt after this delay (seconds, or "p95"); None: off.
    hedge_delay: PositiveDuration | Literal["p95"] | None = None

    @model_validator(mode="after")
    def _delays_ordered(self) -> RetryConfig:
        if self.initial_delay > self.max_delay:
            raise ValueError(
                f"initial_delay ({self.initial_delay}s) is larger than max_delay ({self.max_delay}s)"
            )
        return self


# ----------------------------------------------------------------------------------------------- health

DEFAULT_LIVENESS_INTERVAL = 10.0
DEFAULT_READINESS_INTERVAL = 5.0
DEFAULT_HEALTH_FAILURE_THRESHOLD = 3
DEFAULT_CHECK_TIMEOUT = 2.0


DEFAULT_LOOP_LAG_THRESHOLD = 1.0
DEFAULT_STUCK_TASK_THRESHOLD = 60.0
DEFAULT_DRAIN_DELAY = 5.0
DEFAULT_SHUTDOWN_GRACE = 20.0


class HealthCheckConfig(_Section):
    """How often registered checks run, how many results in a row change a probe, and how shutdown drains."""

    liveness_interval: PositiveDuration = DEFAULT_LIVENESS_INTERVAL
    readiness_interval: PositiveDuration = DEFAULT_READINESS_INTERVAL
    failure_threshold: int = Field(default=DEFAULT_HEALTH_FAILURE_THRESHOLD, ge=1)
    #: Passes in a row that bring a failed check back (a check's own ``success_threshold`` wins).
    success_threshold: int = Field(default=1, ge=1)
    check_timeout: PositiveDuration = DEFAULT_CHECK_TIMEOUT
    #: Liveness fails when the event loop falls this far behind (a blocking call in async code); ``null``:
    #: no event-loop check.
    event_loop_lag_threshold: PositiveDuration | None = DEFAULT_LOOP_LAG_THRESHOLD
    #: Liveness fails when a check has been running this long (a sync check stuck in its thread); a health
    #: loop that has stopped fails it at once.
    stuck_task_threshold: PositiveDuration = DEFAULT_STUCK_TASK_THRESHOLD
    #: On SIGTERM, readiness answers 503 this long before the server stops taking connections, so that
    #: Kubernetes endpoints and load balancers stop sending new requests first.
    drain_delay: NonNegativeDuration = DEFAULT_DRAIN_DELAY
    #: After the drain, requests in flight get this long to complete before they are cancelled.
    shutdown_grace: NonNegativeDuration = DEFAULT_SHUTDOWN_GRACE


# ------------------------------------------------------------------------------------------------- mtls


#: What ``mtls.plain_port`` serves by default: the probes and the metrics.
DEFAULT_PLAIN_PATHS = ("/health/live", "/health/ready", "/health/startup", "/metrics")


#: The SPIFFE trust domain servers must be in when no identities are expected by name.
DEFAULT_TRUST_DOMAIN = "cluster.local"
#: Seconds between two looks at the certificate, key and CA files.
DEFAULT_MTLS_RELOAD_INTERVAL = 10.0
_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]+$")


def _check_identities(entries: list[str]) -> list[str]:
    """Expected server identities: SPIFFE IDs or DNS names, each with at most one ``*``, at its start or end."""
    for entry in entries:
        body = entry[1:] if entry.startswith("*") else entry[:-1] if entry.endswith("*") else entry
        if entry != "*" and (not body or "*" in body or any(c.isspace() for c in entry)):
            raise ValueError(
                f"expected_identities entry {entry!r} is not a SPIFFE ID (spiffe://<trust-domain>/...) or a DNS "
                "name with at most one '*', at its start or end ('*' alone: any identity)"
            )
    return entries


class MtlsConfig(_Section):
    """Client certificate and CA for outbound calls to ``https`` endpoints."""

    enabled: bool = False
    cert_path: str | None = None
    key_path: str | None = None
    ca_path: str | None = None
    #: Caller identities (SPIFFE IDs) allowed to call this service at all, checked by ``fastapi-mesh serve`` on
    #: every request of its mTLS port. An entry ending in ``*`` allows a prefix
    #: (``"spiffe://cluster.local/ns/default/*"``); ``"*"`` allows any caller with a SPIFFE ID. Empty: any caller
    #: whose certificate the CA signed. Routes narrow it with ``@mesh.policy(allow=[...])``.
    allow: list[str] = Field(default_factory=list)
    #: ``fastapi-mesh serve`` also listens on this port without TLS, for ``plain_paths`` only (kubelet probes and
    #: Prometheus present no client certificate); every other path there answers 403. ``null``: no plain port.
    plain_port: int | None = Field(default=None, ge=1, le=65535)
    #: The exact paths (no prefixes, the query ignored) the plain port serves.
    plain_paths: list[str] = Field(default_factory=lambda: list(DEFAULT_PLAIN_PATHS))
    #: The mesh's SPIFFE trust domain. An upstream with no ``expected_identities`` must present an identity in it
    #: (a URI SAN ``spiffe://<trust_domain>/...``, or a DNS SAN ending in ``.<trust_domain>``) signed by the CA.
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    #: Server identities outbound calls accept from every upstream (``services.<name>.mtls.expected_identities``
    #: replaces it for one): SPIFFE IDs (``spiffe://cluster.local/ns/default/sa/payments``, matched against URI
    #: SANs) or DNS names (matched against DNS SANs); ``*`` at the end matches a prefix, at the start a suffix,
    #: alone any identity. Empty: any identity in ``trust_domain``. A server presenting none of them is refused
    #: before the request is sent, and the attempt moves to another endpoint.
    expected_identities: list[str] = Field(default_factory=list)
    #: How often the certificate, key and CA files are looked at for changes. Changed files are loaded for new
    #: connections (open ones finish on the old); a half-written or mismatched set keeps the last good one.
    reload_interval: PositiveDuration = DEFAULT_MTLS_RELOAD_INTERVAL

    @field_validator("allow")
    @classmethod
    def _check_allow(cls, value: list[str]) -> list[str]:
        for entry in value:
            body = entry[:-1] if entry.endswith("*") else entry
            if entry != "*" and (not body.startswith("spiffe://") or "*" in body):
                raise ValueError(
                    f"mtls.allow entry {entry!r} is not a SPIFFE ID (spiffe://<trust-domain>/...), a prefix of one "
                    "ending in '*', or '*'"
                )
        return value

    @field_validator("plain_paths")
    @classmethod
    def _check_plain_paths(cls, value: list[str]) -> list[str]:
        for path in value:
            if not path.startswith("/"):
                raise ValueError(f"mtls.plain_paths entry {path!r} must start with '/'")
        return value

    @field_validator("trust_domain")
    @classmethod
    def _check_trust_domain(cls, value: str) -> str:
        if not _TRUST_DOMAIN.match(value):
            raise ValueError(
                f"mtls.trust_domain {value!r} is not a SPIFFE trust domain (lower-case letters, digits, '.', '-', '_')"
            )
        return value

    @field_validator("expected_identities")
    @classmethod
    def _check_expected(cls, value: list[str]) -> list[str]:
        return _check_identities(value)

    @model_validator(mode="after")
    def _paths_when_enabled(self) -> MtlsConfig:
        if self.enabled:
            missing = [n for n in ("cert_path", "key_path", "ca_path") if not getattr(self, n)]
            if missing:
                raise ValueError(f"mtls is enabled but {', '.join(missing)} not set")
        return self


class ServiceMtlsConfig(_Section):
    """``services.<name>.mtls``: which server identities one upstream may present, e.g.
    ``{"expected_identities": ["spiffe://cluster.local/ns/payments/sa/payments"]}``."""

    #: Replaces ``mtls.expected_identities`` for this upstream (same forms); ``null``: the global list.
    expected_identities: list[str] | None = None

    @field_validator("expected_identities")
    @classmethod
    def _check_expected(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _check_identities(value)


# ---------------------------------------------------------------------------------------- observability


class ObservabilityConfig(_Section):
    """What the mesh measures and shows: Prometheus metrics, OpenTelemetry traces, status and dashboard."""

    #: Record per-call metrics: each call's duration (``mesh_upstream_request_duration_seconds``) and, with
    #: ``MeshMiddleware``, each inbound request (``mesh_inbound_*``). ``false``: calls skip every observation;
    #: ``/metrics`` keeps the counters and gauges of the state the mesh keeps anyway (requests, breakers, ...).
    metrics: bool = True
    #: Emit OpenTelemetry spans (a client span per outbound call, a server span per inbound request with
    #: ``MeshMiddleware``) and propagate W3C ``traceparent``/``tracestate``. Off by default.
    tracing: bool = False
    #: Serve ``GET /mesh/status`` (JSON state of every upstream service).
    status: bool = True
    #: Serve ``GET /mesh/dashboard`` (a self-contained HTML page refreshing from ``/mesh/status``).
    dashboard: bool = True


# ------------------------------------------------------------------------------------------- connection

ConnectionBackend = Literal["httpcore", "aiohttp"]
DEFAULT_CONNECTION_BACKEND: ConnectionBackend = "aiohttp"
_PROXY_SCHEMES = ("http", "https")


class ConnectionConfig(_Section):
    """The innermost layer: how connections to endpoints are opened, pooled and secured, e.g.
    ``{"backend": "httpcore", "http2": true}`` (see the architecture's *Connection layer*)."""

    #: ``httpcore``: one httpx/httpcore pool per endpoint (HTTP/1.1, or HTTP/2 with ``http2``). ``aiohttp``:
    #: aiohttp's connector and C parser under the same httpx interface (HTTP/1.1 only). Both give the same
    #: responses, timeouts, errors and retry decisions; they differ in CPU per call.
    backend: ConnectionBackend = DEFAULT_CONNECTION_BACKEND
    #: Offer HTTP/2 to ``https`` endpoints (ALPN; HTTP/1.1 when the endpoint does not take it). Backend
    #: ``httpcore`` only, and needs the ``h2`` package (``pip install 'fastapi-mesh[http2]'``).
    http2: bool = False
    #: Egress proxy for every outbound call: ``http://[user:password@]host:port`` (or ``https://``); never shown
    #: in status or ``fastapi-mesh config`` output. ``null``: none, unless ``trust_env`` takes one from the
    #: environment.
    proxy: SecretStr | None = None
    #: Take the egress proxy from ``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``ALL_PROXY`` (honouring ``NO_PROXY``)
    #: when ``proxy`` is not set. Off by default: a process's environment does not reroute its calls.
    trust_env: bool = False

    @field_validator("proxy")
    @classmethod
    def _check_proxy(cls, secret: SecretStr | None) -> SecretStr | None:
        if secret is None:
            return None
        value = secret.get_secret_value().strip()
        shown = _without_password(value)
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError as exc:
            raise ValueError(f"proxy {shown!r} is not a URL: {exc}") from None
        if parts.scheme not in _PROXY_SCHEMES or not parts.hostname:
            raise ValueError(f"proxy {shown!r} must be http://host:port or https://host:port")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"proxy {shown!r} must have no path, query or fragment")
        return SecretStr(value)

    @field_validator("http2")
    @classmethod
    def _http2_needs_httpcore(cls, value: bool, info: ValidationInfo) -> bool:
        backend = info.data.get("backend")
        if value and backend is not None and backend != "httpcore":
            raise ValueError(f"http2 needs backend 'httpcore'; backend {backend!r} speaks HTTP/1.1 only")
        return value


def _without_password(url: str) -> str:
    """``url`` with the password of its user info replaced by ``***`` (for error messages)."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"


# ---------------------------------------------------------------------------------------------- presets

#: Values each environment preset puts under the global settings. Development answers fast and forgives;
#: staging is in between; production carries the seed's values.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "development": {
        "discovery": {"refresh_interval": 5.0},
        "load_balancer": {
            "strategy": "round-robin",
            "session_affinity": False,
            "max_connections_per_instance": 100,
        },
        "circuit_breaker": {
            "failure_threshold": 5,
            "failure_threshold_percentage": 50.0,
            "timeout": 10.0,
            "reset_timeout": 10.0,
            "fallback_enabled": True,
        },
        "retry": {
            "max_retries": 2,
            "initial_delay": 0.1,
            "max_delay": 1.0,
            "backoff_strategy": "exponential",
            "max_elapsed": 15.0,
        },
        "health_check": {
            "liveness_interval": 10.0,
            "readiness_interval": 5.0,
            "failure_threshold": 3,
            "drain_delay": 0.0,
            "shutdown_grace": 5.0,
        },
    },
    "staging": {
        "discovery": {"refresh_interval": 10.0},
        "load_balancer": {
            "strategy": "least-response-time",
            "session_affinity": True,
            "max_connections_per_instance": 200,
        },
        "circuit_breaker": {
            "failure_threshold": 10,
            "failure_threshold_percentage": 40.0,
            "timeout": 5.0,
            "reset_timeout": 60.0,
            "fallback_enabled": True,
        },
        "retry": {
            "max_retries": 3,
            "initial_delay": 0.2,
            "max_delay": 5.0,
            "backoff_strategy": "exponential",
            "max_elapsed": 20.0,
        },
        "health_check": {
            "liveness_interval": 5.0,
            "readiness_interval": 3.0,
            "failure_threshold": 3,
            "drain_delay": 5.0,
            "shutdown_grace": 20.0,
        },
    },
    "production": {
        "discovery": {"refresh_interval": 15.0},
        "load_balancer": {
            "strategy": "least-response-time",
            "session_affinity": True,
            "max_connections_per_instance": 500,
        },
        "circuit_breaker": {
            "failure_threshold": 20,
            "failure_threshold_percentage": 30.0,
            "timeout": 3.0,
            "reset_timeout": 120.0,
            "fallback_enabled": True,
        },
        "retry": {
            "max_retries": 10,
            "initial_delay": 0.5,
            "max_delay": 30.0,
            "backoff_strategy": "fibonacci",
            "max_elapsed": 30.0,
        },
        "health_check": {
            "liveness_interval": 5.0,
            "readiness_interval": 3.0,
            "failure_threshold": 5,
            "drain_delay": 10.0,
            "shutdown_grace": 20.0,
        },
    },
}

#: The sections a ``services[name]`` entry may override, with their models.
POLICY_SECTIONS: dict[str, type[_Section]] = {
    "load_balancer": LoadBalancerConfig,
    "circuit_breaker": CircuitBreakerConfig,
    "retry": RetryConfig,
    "outlier_detection": OutlierDetectionConfig,
    "active_health_check": ActiveHealthCheckConfig,
    "bulkhead": BulkheadConfig,
    "routing": RoutingConfig,
}


def _partial(model: type[_Section]) -> type[BaseModel]:
    """The same section with every field optional: what a per-service override may give."""
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        annotation: Any = info.annotation
        if info.metadata:
            annotation = Annotated[(annotation, *info.metadata)]
        fields[name] = (annotation | None, None)
    return create_model(
        f"Partial{model.__name__}", __config__=ConfigDict(extra="forbid", frozen=True), **fields
    )


_PARTIALS = {name: _partial(model) for name, model in POLICY_SECTIONS.items()}


if TYPE_CHECKING:

    class ServiceOverride(_Section):
        """Partial overrides for one upstream: ``{"retry": {"max_retries": 0}}``. Merged over the globals."""

        load_balancer: BaseModel | None
        circuit_breaker: BaseModel | None
        retry: BaseModel | None
        outlier_detection: BaseModel | None
        active_health_check: BaseModel | None
        bulkhead: BaseModel | None
        routing: BaseModel | None
        mtls: ServiceMtlsConfig | None

else:
    ServiceOverride = create_model(
        "ServiceOverride",
        __base__=_Section,
        __doc__='Partial overrides for one upstream: ``{"retry": {"max_retries": 0}}``. Merged over the globals.',
        **{name: (partial | None, None) for name, partial in _PARTIALS.items()},
        mtls=(ServiceMtlsConfig | None, None),
    )


class ServicePolicy(_Section):
    """The effective policy for one upstream service (what ``for_service`` returns)."""

    service: str
    load_balancer: LoadBalancerConfig
    circuit_breaker: CircuitBreakerConfig
    retry: RetryConfig
    outlier_detection: OutlierDetectionConfig
    active_health_check: ActiveHealthCheckConfig
    bulkhead: BulkheadConfig
    routing: RoutingConfig


def _merge_fields(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """A section's fields with ``over``'s replacing ``base``'s, whole: a dict-valued field such as
    ``routing.split`` given in ``over`` replaces the base's dict (``{}`` clears it), it is not merged."""
    return {**base, **over}


#: What ``mode: istio`` sets in every service's effective policy, over everything else: the sidecar retries
#: (``render istio`` hands it these retry settings), ejects outliers and checks endpoints.
ISTIO_MODE: dict[str, dict[str, Any]] = {
    "retry": {"max_retries": 0, "hedge_delay": None},
    "outlier_detection": {"enabled": False},
    "active_health_check": {"enabled": False},
}


class MeshSettings(BaseSettings):
    """All of the mesh's settings. ``MeshSettings()`` reads ``MESH_*`` variables (nested with ``__``).

    >>> s = MeshSettings(service_name="api-gateway", environment="production",
    ...                  discovery={"endpoints": {"user-service": ["http://10.0.0.1:8080"]}})
    >>> s.retry.backoff_strategy, s.discovery.endpoints["user-service"][0].url
    ('fibonacci', 'http://10.0.0.1:8080')

    A bad value fails here, naming the field, and the ``MESH_...`` variable when one set it.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    service_name: str = Field(default="app", min_length=1)
    environment: Environment = "development"
    #: ``library``: fastapi-mesh balances, retries and (with ``mtls``) encrypts calls itself. ``istio``: an Envoy
    #: sidecar does those, and every service's effective policy makes no retries or hedges (the sidecar's
    #: retries would multiply them) and leaves outlier detection and active health checks to the sidecar;
    #: deadlines, bulkheads, breakers, fallbacks and route policies stay. ``fastapi-mesh render istio`` writes
    #: the sidecar's side from these settings.
    mode: Literal["library", "istio"] = "library"
    zone: str | None = None
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    load_balancer: LoadBalancerConfig = Field(default_factory=LoadBalancerConfig)
    circuit_breaker: CircuitBreakerConfig = Field(default_factory=CircuitBreakerConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    outlier_detection: OutlierDetectionConfig = Field(default_factory=OutlierDetectionConfig)
    active_health_check: ActiveHealthCheckConfig = Field(default_factory=ActiveHealthCheckConfig)
    bulkhead: BulkheadConfig = Field(default_factory=BulkheadConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    health_check: HealthCheckConfig = Field(default_factory=HealthCheckConfig)
    mtls: MtlsConfig = Field(default_factory=MtlsConfig)
    connection: ConnectionConfig = Field(default_factory=ConnectionConfig)
    observability: ObservabilityConfig = Field(default_factory=ObservabilityConfig)
    services: dict[str, ServiceOverride] = Field(default_factory=dict)

    _policies: dict[str, ServicePolicy] = PrivateAttr(default_factory=dict)

    def __init__(self, **values: Any) -> None:
        _reject_unknown_env()
        try:
            super().__init__(**values)
            for name in self.services:
                self.for_service(name)  # surface merge errors (e.g. delays out of order) at start-up
        except ValidationError as exc:
            raise _with_env_names(exc, values) from None
        except SettingsError as exc:  # a MESH_ variable pydantic-settings could not even decode
            raise ValueError(_undecodable_env(exc)) from None

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        environment = data.get("environment", "development")
        preset = PRESETS.get(environment) if isinstance(environment, str) else None
        if preset is None:
            return data  # the Literal check reports the bad environment
        merged = dict(data)
        for section, values in preset.items():
            given = data.get(section)
            if given is None:
                merged[section] = dict(values)
            elif isinstance(given, Mapping):
                merged[section] = _merge_fields(values, given)
            elif isinstance(given, BaseModel):
                merged[section] = _merge_fields(values, given.model_dump(exclude_unset=True))
        return merged

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> MeshSettings:
        """A copy; with ``update``, validated as a new ``MeshSettings`` would be (no ``MESH_`` variables are
        read again), and its per-service policies are worked out afresh.

        ``environment`` cannot change here: the preset's values are already part of the settings, so build
        ``MeshSettings(environment=...)`` instead."""
        if not update:
            copied = super().model_copy(deep=deep)
            copied._policies = {}
            return copied
        if "environment" in update and update["environment"] != self.environment:
            raise ValueError(
                "model_copy cannot change environment (the current preset's values are already applied); "
                "build MeshSettings(environment=...) instead"
            )
        copied = type(self).model_validate({**self.model_dump(exclude_unset=True), **update})
        for name in copied.services:
            copied.for_service(name)
        return copied

    def for_service(self, name: str) -> ServicePolicy:
        """The effective policy for upstream ``name``: globals with ``services[name]`` merged over them."""
        policy = self._policies.get(name)
        if policy is not None:
            return policy
        override = self.services.get(name)
        sections: dict[str, Any] = {}
        for section in POLICY_SECTIONS:
            base: BaseModel = getattr(self, section)
            partial = getattr(override, section, None) if override is not None else None
            if partial is None:
                sections[section] = base
                continue
            data = _merge_fields(base.model_dump(), partial.model_dump(exclude_unset=True))
            try:
                sections[section] = POLICY_SECTIONS[section].model_validate(data)
            except ValidationError as exc:
                raise _relocate(exc, ("services", name, section)) from None
        if self.mode == "istio":
            for section, values in ISTIO_MODE.items():
                sections[section] = sections[section].model_copy(update=values)
        policy = ServicePolicy(service=name, **sections)
        self._policies[name] = policy
        return policy


def get_service_config(name: str, settings: MeshSettings | None = None) -> ServicePolicy:
    """Seed-style: the effective policy for ``name`` (``settings`` defaults to ``MeshSettings()``).

    >>> get_service_config("payment-service").retry.max_retries >= 0
    True
    """
    return (settings if settings is not None else MeshSettings()).for_service(name)


# ---------------------------------------------------------------------------------------- error naming


def _env_names(loc: tuple[Any, ...]) -> list[str]:
    """The ``MESH_...`` variables that set the value at ``loc`` (or, for a whole section, its fields)."""
    environ = {k.upper(): k for k in os.environ}
    for end in range(len(loc), 0, -1):
        candidate = ENV_PREFIX + ENV_NESTED_DELIMITER.join(str(p) for p in loc[:end]).upper()
        if candidate in environ:
            return [environ[candidate]]
    if loc:
        section = ENV_PREFIX + ENV_NESTED_DELIMITER.join(str(p) for p in loc).upper() + ENV_NESTED_DELIMITER
        return sorted(original for upper, original in environ.items() if upper.startswith(section))
    return []


def _given_in_code(values: Mapping[str, Any], loc: tuple[Any, ...]) -> bool:
    """Whether the value at ``loc`` came from the constructor's arguments (which win over variables)."""
    node: Any = values
    for part in loc:
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, BaseModel) and part in node.model_fields_set:
            node = getattr(node, part)
        else:
            return False
    return True


def _with_env_names(exc: ValidationError, values: Mapping[str, Any]) -> ValidationError:
    details: list[InitErrorDetails] = []
    for err in exc.errors():
        message = err["msg"]
        names = [] if _given_in_code(values, err["loc"]) else _env_names(err["loc"])
        if names:
            message += " (set by " + ", ".join(f"{name}={os.environ[name]!r}" for name in names) + ")"
        details.append(_detail(err, message, err["loc"]))
    return ValidationError.from_exception_data(exc.title, details)


def _relocate(exc: ValidationError, prefix: tuple[str, ...]) -> ValidationError:
    details = [_detail(err, err["msg"], (*prefix, *err["loc"])) for err in exc.errors()]
    return ValidationError.from_exception_data("MeshSettings", details)


def _detail(err: Any, message: str, loc: tuple[Any, ...]) -> InitErrorDetails:
    return InitErrorDetails(
        type=PydanticCustomError(err["type"], "{message}", {"message": message}),
        loc=loc,
        input=err.get("input"),
    )


def _mesh_variables() -> list[tuple[str, list[str]]]:
    """Each ``MESH_`` variable with the setting path it names (upper case, split at ``__``)."""
    return [
        (key, key.upper()[len(ENV_PREFIX) :].split(ENV_NESTED_DELIMITER))
        for key in os.environ
        if key.upper().startswith(ENV_PREFIX)
    ]


def _target(annotation: Any) -> Any:
    """What a field holds, without ``Optional`` and ``Annotated``: a model class, ``dict``, ``list`` or a
    scalar type."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return origin or annotation


def _resolve(path: list[str]) -> tuple[bool, Any]:
    """Whether ``path`` names a setting, and what that setting holds. Keys below a free-form map (a
    service name under ``services``, say) are taken as given."""
    holder: Any = MeshSettings
    for i, part in enumerate(path):
        if holder is dict:
            return True, dict
        if not (isinstance(holder, type) and issubclass(holder, BaseModel)):
            return False, None
        fields = {name.upper(): info for name, info in holder.model_fields.items()}
        info = fields.get(part)
        if info is None:
            return False, None
        holder = _target(info.annotation)
        if i == len(path) - 1:
            return True, holder
    return False, None


def _reject_unknown_env() -> None:
    """A ``MESH_`` variable that names no setting is a typo; say so instead of ignoring it."""
    for key, path in _mesh_variables():
        known, _ = _resolve(path)
        if not known:
            top = sorted(name for name in MeshSettings.model_fields)
            raise ValueError(
                f"unknown setting in environment variable {key}: "
                f"{'.'.join(p.lower() for p in path)!r} names no setting (top-level settings: {', '.join(top)})"
            )


def _undecodable_env(exc: Exception) -> str:
    """The message for a ``MESH_`` variable whose value could not be decoded: which one, and why."""
    culprits = []
    for key, path in _mesh_variables():
        _, holder = _resolve(path)
        complex_value = holder in (dict, list, set, tuple) or (
            isinstance(holder, type) and issubclass(holder, BaseModel)
        )
        if not complex_value:
            continue
        try:
            json.loads(os.environ[key])
        except ValueError:
            culprits.append(f"{'.'.join(p.lower() for p in path)} (set by {key}={os.environ[key]!r})")
    if not culprits:
        return f"a MESH_ environment variable could not be read: {exc}"
    return (
        f"{'; '.join(culprits)}: not valid JSON. Lists and dicts in MESH_ variables are JSON, "
        "for example MESH_RETRY__RETRY_ON_STATUS='[502, 503]'"
    )

