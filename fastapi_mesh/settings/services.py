"""Per-service overrides: the sections ``services[name]`` may override, the partial models such an entry is
validated against, and ``ServicePolicy``, the effective policy for one upstream."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, create_model

from .balancing import LoadBalancerConfig, RoutingConfig
from .health import ActiveHealthCheckConfig
from .resilience import BulkheadConfig, CircuitBreakerConfig, OutlierDetectionConfig, RetryConfig
from .security import ServiceMtlsConfig
from .types import Section

__all__ = ["POLICY_SECTIONS", "ServiceOverride", "ServicePolicy"]

#: The sections a ``services[name]`` entry may override, with their models.
POLICY_SECTIONS: dict[str, type[Section]] = {
    "load_balancer": LoadBalancerConfig,
    "circuit_breaker": CircuitBreakerConfig,
    "retry": RetryConfig,
    "outlier_detection": OutlierDetectionConfig,
    "active_health_check": ActiveHealthCheckConfig,
    "bulkhead": BulkheadConfig,
    "routing": RoutingConfig,
}


def _partial(model: type[Section]) -> type[BaseModel]:
    """The same section with every field optional: what a per-service override may give."""
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        annotation: Any = info.annotation
        if info.metadata:
            annotation = Annotated[(annotation, *info.metadata)]
        fields[name] = (annotation | None, None)
    return create_model(f"Partial{model.__name__}", __config__=ConfigDict(extra="forbid", frozen=True), **fields)


_PARTIALS = {name: _partial(model) for name, model in POLICY_SECTIONS.items()}


if TYPE_CHECKING:

    class ServiceOverride(Section):
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
        __base__=Section,
        __doc__='Partial overrides for one upstream: ``{"retry": {"max_retries": 0}}``. Merged over the globals.',
        **{name: (partial | None, None) for name, partial in _PARTIALS.items()},
        mtls=(ServiceMtlsConfig | None, None),
    )


class ServicePolicy(Section):
    """The effective policy for one upstream service (what ``for_service`` returns)."""

    service: str
    load_balancer: LoadBalancerConfig
    circuit_breaker: CircuitBreakerConfig
    retry: RetryConfig
    outlier_detection: OutlierDetectionConfig
    active_health_check: ActiveHealthCheckConfig
    bulkhead: BulkheadConfig
    routing: RoutingConfig
