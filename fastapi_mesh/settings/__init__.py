"""Settings: one validated model for the whole mesh, read from code or from ``MESH_*`` variables.

Effective policy for an upstream = built-in defaults <- environment preset <- global settings <-
``services[name]``. Preset values show on the settings object wherever nothing overrides them::

    >>> MeshSettings(environment="production").circuit_breaker.failure_threshold
    20
    >>> MeshSettings(services={"pay": {"retry": {"max_retries": 0}}}).for_service("pay").retry.max_retries
    0

Durations are float seconds and also accept ``"500ms"``, ``"3s"``, ``"2m"``, ``"1h"``.

The package splits by concern: ``types`` (durations and the other shared value types), one module per group
of sections (``discovery``, ``balancing``, ``resilience``, ``health``, ``security``, ``connection``,
``observability``), ``services`` (per-service overrides), ``presets``, and ``env`` (``MESH_`` variables and
the errors that name them). Every public name is importable from ``fastapi_mesh.settings``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field, PrivateAttr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

# Every public name of the package's modules, importable from here as before the split; ``X as X`` marks
# a name outside ``__all__`` as exported.
from .balancing import DEFAULT_AFFINITY_KEY as DEFAULT_AFFINITY_KEY
from .balancing import DEFAULT_HASH_BALANCE_FACTOR as DEFAULT_HASH_BALANCE_FACTOR
from .balancing import DEFAULT_MAX_CONNECTIONS_PER_INSTANCE as DEFAULT_MAX_CONNECTIONS_PER_INSTANCE
from .balancing import DEFAULT_PANIC_THRESHOLD as DEFAULT_PANIC_THRESHOLD
from .balancing import DEFAULT_PEAK_EWMA_DECAY as DEFAULT_PEAK_EWMA_DECAY
from .balancing import DEFAULT_SLOW_START_WINDOW as DEFAULT_SLOW_START_WINDOW
from .balancing import DEFAULT_STRATEGY as DEFAULT_STRATEGY
from .balancing import DEFAULT_SUBSET_KEY as DEFAULT_SUBSET_KEY
from .balancing import DEFAULT_ZONE_MIN_HEALTHY_PERCENT as DEFAULT_ZONE_MIN_HEALTHY_PERCENT
from .balancing import LoadBalancerConfig, RouteMatch, RouteRule, RoutingConfig
from .balancing import Strategy as Strategy
from .connection import DEFAULT_CONNECTION_BACKEND as DEFAULT_CONNECTION_BACKEND
from .connection import ConnectionBackend as ConnectionBackend
from .connection import ConnectionConfig
from .discovery import DEFAULT_CHECK_INTERVAL as DEFAULT_CHECK_INTERVAL
from .discovery import DEFAULT_CLUSTER_DOMAIN as DEFAULT_CLUSTER_DOMAIN
from .discovery import DEFAULT_CONSUL_URL as DEFAULT_CONSUL_URL
from .discovery import DEFAULT_CONSUL_WAIT as DEFAULT_CONSUL_WAIT
from .discovery import DEFAULT_DEREGISTER_AFTER as DEFAULT_DEREGISTER_AFTER
from .discovery import DEFAULT_DISCOVERY_BACKOFF as DEFAULT_DISCOVERY_BACKOFF
from .discovery import DEFAULT_DISCOVERY_MAX_BACKOFF as DEFAULT_DISCOVERY_MAX_BACKOFF
from .discovery import DEFAULT_DNS_TIMEOUT as DEFAULT_DNS_TIMEOUT
from .discovery import DEFAULT_EMPTY_GRACE as DEFAULT_EMPTY_GRACE
from .discovery import DEFAULT_INITIAL_SYNC_TIMEOUT as DEFAULT_INITIAL_SYNC_TIMEOUT
from .discovery import DEFAULT_NAMESPACE as DEFAULT_NAMESPACE
from .discovery import DEFAULT_PORT_NAME as DEFAULT_PORT_NAME
from .discovery import DEFAULT_REFRESH_INTERVAL as DEFAULT_REFRESH_INTERVAL
from .discovery import DiscoveryBackend as DiscoveryBackend
from .discovery import DiscoveryConfig, EndpointConfig
from .env import ENV_NESTED_DELIMITER as ENV_NESTED_DELIMITER
from .env import ENV_PREFIX as ENV_PREFIX
from .env import reject_unknown_env, relocate, undecodable_env, with_env_names
from .health import DEFAULT_ACTIVE_CHECK_INTERVAL as DEFAULT_ACTIVE_CHECK_INTERVAL
from .health import DEFAULT_ACTIVE_CHECK_JITTER as DEFAULT_ACTIVE_CHECK_JITTER
from .health import DEFAULT_ACTIVE_CHECK_PATH as DEFAULT_ACTIVE_CHECK_PATH
from .health import DEFAULT_ACTIVE_CHECK_TIMEOUT as DEFAULT_ACTIVE_CHECK_TIMEOUT
from .health import DEFAULT_CHECK_TIMEOUT as DEFAULT_CHECK_TIMEOUT
from .health import DEFAULT_DRAIN_DELAY as DEFAULT_DRAIN_DELAY
from .health import DEFAULT_EXPECTED_STATUSES as DEFAULT_EXPECTED_STATUSES
from .health import DEFAULT_HEALTH_FAILURE_THRESHOLD as DEFAULT_HEALTH_FAILURE_THRESHOLD
from .health import DEFAULT_HEALTHY_THRESHOLD as DEFAULT_HEALTHY_THRESHOLD
from .health import DEFAULT_LIVENESS_INTERVAL as DEFAULT_LIVENESS_INTERVAL
from .health import DEFAULT_LOOP_LAG_THRESHOLD as DEFAULT_LOOP_LAG_THRESHOLD
from .health import DEFAULT_READINESS_INTERVAL as DEFAULT_READINESS_INTERVAL
from .health import DEFAULT_SHUTDOWN_GRACE as DEFAULT_SHUTDOWN_GRACE
from .health import DEFAULT_STUCK_TASK_THRESHOLD as DEFAULT_STUCK_TASK_THRESHOLD
from .health import DEFAULT_UNHEALTHY_THRESHOLD as DEFAULT_UNHEALTHY_THRESHOLD
from .health import ActiveHealthCheckConfig, HealthCheckConfig
from .observability import ObservabilityConfig
from .presets import ISTIO_MODE as ISTIO_MODE
from .presets import PRESETS as PRESETS
from .presets import Environment as Environment
from .presets import apply_preset, merge_fields
from .resilience import DEFAULT_ATTEMPT_TIMEOUT as DEFAULT_ATTEMPT_TIMEOUT
from .resilience import DEFAULT_BASE_EJECTION_TIME as DEFAULT_BASE_EJECTION_TIME
from .resilience import DEFAULT_BUDGET_PERCENT as DEFAULT_BUDGET_PERCENT
from .resilience import DEFAULT_BUDGET_TTL as DEFAULT_BUDGET_TTL
from .resilience import DEFAULT_CONSECUTIVE_FAILURES as DEFAULT_CONSECUTIVE_FAILURES
from .resilience import DEFAULT_FAILURE_THRESHOLD as DEFAULT_FAILURE_THRESHOLD
from .resilience import DEFAULT_FAILURE_THRESHOLD_PERCENTAGE as DEFAULT_FAILURE_THRESHOLD_PERCENTAGE
from .resilience import DEFAULT_HALF_OPEN_MAX_CALLS as DEFAULT_HALF_OPEN_MAX_CALLS
from .resilience import DEFAULT_INITIAL_DELAY as DEFAULT_INITIAL_DELAY
from .resilience import DEFAULT_MAX_BODY_BYTES as DEFAULT_MAX_BODY_BYTES
from .resilience import DEFAULT_MAX_DELAY as DEFAULT_MAX_DELAY
from .resilience import DEFAULT_MAX_EJECTION_TIME as DEFAULT_MAX_EJECTION_TIME
from .resilience import DEFAULT_MAX_RESET_TIMEOUT as DEFAULT_MAX_RESET_TIMEOUT
from .resilience import DEFAULT_MAX_RETRIES as DEFAULT_MAX_RETRIES
from .resilience import DEFAULT_MIN_RETRIES_PER_SECOND as DEFAULT_MIN_RETRIES_PER_SECOND
from .resilience import DEFAULT_QUEUE_TIMEOUT as DEFAULT_QUEUE_TIMEOUT
from .resilience import DEFAULT_RESET_TIMEOUT as DEFAULT_RESET_TIMEOUT
from .resilience import DEFAULT_RETRY_ON_STATUS as DEFAULT_RETRY_ON_STATUS
from .resilience import DEFAULT_SLIDING_WINDOW_SIZE as DEFAULT_SLIDING_WINDOW_SIZE
from .resilience import BackoffStrategy as BackoffStrategy
from .resilience import BulkheadConfig, CircuitBreakerConfig, OutlierDetectionConfig, RetryConfig
from .resilience import Jitter as Jitter
from .security import DEFAULT_MTLS_RELOAD_INTERVAL as DEFAULT_MTLS_RELOAD_INTERVAL
from .security import DEFAULT_PLAIN_PATHS as DEFAULT_PLAIN_PATHS
from .security import DEFAULT_TRUST_DOMAIN as DEFAULT_TRUST_DOMAIN
from .security import MtlsConfig, ServiceMtlsConfig
from .services import POLICY_SECTIONS as POLICY_SECTIONS
from .services import ServiceOverride as ServiceOverride
from .services import ServicePolicy
from .types import DNS_LABEL as DNS_LABEL
from .types import NonNegativeDuration as NonNegativeDuration
from .types import PositiveDuration as PositiveDuration
from .types import check_endpoint_url as check_endpoint_url
from .types import parse_duration
from .types import split_nameserver as split_nameserver

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

    #: This service's own name. It appears in probe bodies (``service``), in the ``mesh_info`` metric and in
    #: ``/mesh/status``.
    service_name: str = Field(default="app", min_length=1)
    #: Selects the preset whose values sit under the global settings (see the preset columns). Also reported by
    #: ``mesh_info`` and ``/mesh/status``.
    environment: Environment = "development"
    #: ``library``: fastapi-mesh balances, retries and (with ``mtls``) encrypts calls itself. ``istio``: an Envoy
    #: sidecar does those, and every service's effective policy makes no retries or hedges (the sidecar's
    #: retries would multiply them) and leaves outlier detection and active health checks to the sidecar;
    #: deadlines, bulkheads, breakers, fallbacks and route policies stay. ``fastapi-mesh render istio`` writes
    #: the sidecar's side from these settings.
    mode: Literal["library", "istio"] = "library"
    #: The zone this service runs in.
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
        reject_unknown_env(MeshSettings)
        try:
            super().__init__(**values)
            for name in self.services:
                self.for_service(name)  # surface merge errors (e.g. delays out of order) at start-up
        except ValidationError as exc:
            raise with_env_names(exc, values) from None
        except SettingsError as exc:  # a MESH_ variable pydantic-settings could not even decode
            raise ValueError(undecodable_env(exc, MeshSettings)) from None

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        return apply_preset(data)

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
            data = merge_fields(base.model_dump(), partial.model_dump(exclude_unset=True))
            try:
                sections[section] = POLICY_SECTIONS[section].model_validate(data)
            except ValidationError as exc:
                raise relocate(exc, ("services", name, section)) from None
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
