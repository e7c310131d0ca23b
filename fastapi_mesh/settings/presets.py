"""Environment presets and the ``mode: istio`` profile: values laid under, or over, the global settings.

Effective policy for an upstream = built-in defaults <- environment preset <- global settings <-
``services[name]``, and with ``mode: istio``, ``ISTIO_MODE`` over all of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel

__all__ = ["ISTIO_MODE", "PRESETS", "Environment", "apply_preset", "merge_fields"]

Environment = Literal["development", "staging", "production"]

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

#: What ``mode: istio`` sets in every service's effective policy, over everything else: the sidecar retries
#: (``render istio`` hands it these retry settings), ejects outliers and checks endpoints.
ISTIO_MODE: dict[str, dict[str, Any]] = {
    "retry": {"max_retries": 0, "hedge_delay": None},
    "outlier_detection": {"enabled": False},
    "active_health_check": {"enabled": False},
}


def merge_fields(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """A section's fields with ``over``'s replacing ``base``'s, whole: a dict-valued field such as
    ``routing.split`` given in ``over`` replaces the base's dict (``{}`` clears it), it is not merged."""
    return {**base, **over}


def apply_preset(data: Any) -> Any:
    """``data`` (the raw settings input) with its environment's preset laid under each section it names: a
    section given as a mapping or a model keeps the fields it sets, the preset fills the others."""
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
            merged[section] = merge_fields(values, given)
        elif isinstance(given, BaseModel):
            merged[section] = merge_fields(values, given.model_dump(exclude_unset=True))
    return merged
